/* kumo.amqp (docs/reference/kumo.amqp/): basic_publish{...} over pooled
 * connections, and build_client(URI) with client:publish{...} (a Confirm
 * whose wait() gives the disposition), client:publish_with_timeout and
 * client:close(). The connections run on threads of their own
 * (lua/lib/amqp_pool.h); a call parks its coroutine and yields until the
 * publish is done. */
#ifndef KUMOD_LUA_LIB_AMQP_H
#define KUMOD_LUA_LIB_AMQP_H

/* Registers the opener that installs kumo.amqp into every VM. */
void amqp_lua_register(void);
/* Shutdown, before the reactors stop: fails what is queued, closes the
 * connections and joins their threads (amqp_pools_stop). */
void amqp_lua_stop(void);

#endif
