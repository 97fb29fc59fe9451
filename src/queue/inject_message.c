/* kumo.inject_message(MSG [, DEFERRED_SPOOL]): a message the policy built
 * (kumo.make_message, kumo.generate_rfc3464_message) enters the queues as
 * a received one: its queue is resolved from its meta and recipient, it is
 * saved to the spool (synced, through msg:save, so the call waits) unless
 * DEFERRED_SPOOL, and inserted with the reason "Received". After that the
 * queue owns it (it may be delivered and gone at once). The "null" queue
 * discards it without saving. Reactor threads; errors are Lua errors that
 * pcall can trap, as documented. */
#include <lauxlib.h>
#include <stdlib.h>
#include <string.h>

#include "lua/klua.h"
#include "lua/message_lua.h"
#include "msg/queue_name.h"
#include "queue/queue.h"

#define FN "kumo.inject_message"

/* After the save (or at once when deferred): the insert. */
static int insert_k(lua_State *L, int status, lua_KContext ctx)
{
    (void)status;
    (void)ctx;
    message *m = klua_check_message(L, 1);
    char *queue = queue_name_of_message(m);
    if (!queue)
        return luaL_error(L, "%s: cannot determine the queue of the message", FN);
    message_ref(m);
    int rc = queue_insert(m, queue, "Received");
    if (rc != 0) {
        lua_pushfstring(L, "%s: failed to insert into queue %s", FN, queue);
        free(queue);
        return lua_error(L);
    }
    free(queue);
    return 0;
}

static int l_inject_message(lua_State *L)
{
    message *m = klua_check_message(L, 1);
    bool deferred = lua_toboolean(L, 2);
    lua_settop(L, 1);
    char *queue = queue_name_of_message(m);
    if (!queue)
        return luaL_error(L, "%s: cannot determine the queue of the message", FN);
    bool null_queue = strcmp(queue, "null") == 0;
    free(queue);
    if (null_queue)
        return 0;
    if (!m->data && !m->in_spool)
        return luaL_error(L, "%s: the message has no data", FN);
    if (deferred)
        return insert_k(L, LUA_OK, 0);
    /* msg:save(): durable before the queue sees it; it waits for the sync */
    lua_getfield(L, 1, "save");
    lua_pushvalue(L, 1);
    lua_callk(L, 1, 0, 0, insert_k);
    return insert_k(L, LUA_OK, 0);
}

static void inject_message_open(lua_State *L)
{
    lua_pushcfunction(L, l_inject_message);
    lua_setfield(L, -2, "inject_message");
}

void queue_inject_message_register(void)
{
    klua_register_opener(inject_message_open);
}
