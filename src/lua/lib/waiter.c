/* Parking and finishing a coroutine's wait for a kumo.* binding
 * (waiter.h), the one way kumo.amqp, kumo.nats and kumo.http hand a
 * result back to the policy. Reactor thread of the call; nothing here
 * fails (klua_wait_begin's refusal is returned to the caller). */
#include "lua/lib/waiter.h"

static void mark_cancelled(klua_wait *w)
{
    /* the work is still out on another thread: its completion frees the
     * owner (waiter_finish returns NULL) */
    ((waiter *)w)->cancelled = true;
}

bool waiter_park(waiter *wt, lua_State *L, void (*cancel)(klua_wait *w))
{
    wt->cancelled = false;
    wt->call = klua_wait_begin(L);
    if (!wt->call)
        return false;
    klua_wait_park(&wt->w, wt->call, cancel ? cancel : mark_cancelled);
    return true;
}

klua_call *waiter_finish(waiter *wt)
{
    if (wt->cancelled)
        return NULL;
    klua_wait_unpark(&wt->w);
    klua_call *call = wt->call;
    lua_checkstack(klua_call_thread(call), 4);
    return call;
}
