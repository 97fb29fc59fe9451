/* A policy coroutine waiting for work done elsewhere, and the hand-back of
 * its result: kumo.amqp and kumo.nats jobs run on threads of their own and
 * post their completion to the reactor of the call; kumo.http transfers
 * run on the reactor's own curl multi. Each embeds a waiter, parks it when
 * the work is submitted and finishes it on the call's reactor when the
 * result is in, then pushes its results and resumes.
 *
 * Shutdown (klua_drop_waits) may abandon a parked wait: it calls the
 * cancel callback given to waiter_park, on the reactor, and never resumes.
 * With cancel NULL the waiter is only marked: the work is still out on
 * another thread, its completion comes all the same, and waiter_finish
 * then returns NULL so that the owner only frees itself.
 *
 * Reactor thread of the call only. */
#ifndef KUMOD_LUA_LIB_WAITER_H
#define KUMOD_LUA_LIB_WAITER_H
#include <lua.h>
#include <stdbool.h>

#include "lua/klua.h"

typedef struct waiter {
    klua_wait w; /* first: a cancel callback casts back to its owner */
    klua_call *call;
    bool cancelled;
} waiter;

/* Parks the coroutine running L (klua_wait_begin + klua_wait_park); the
 * caller then yields, and nothing it does before may raise. cancel: see
 * above (its klua_wait * is &wt->w; put the waiter first in the owner to
 * cast back). Returns false, with nothing parked, when L is not an event
 * coroutine (callers that checked klua_current_call first never see it). */
bool waiter_park(waiter *wt, lua_State *L, void (*cancel)(klua_wait *w));

/* Ends the wait once the result is in: unparks and returns the call, whose
 * coroutine (klua_call_thread) has room for 4 more values; the owner may
 * be freed from here on. The caller pushes its results and calls
 * klua_wait_resume(call, n). NULL when shutdown cancelled the wait
 * (cancel NULL): nothing is to be resumed. */
klua_call *waiter_finish(waiter *wt);

#endif
