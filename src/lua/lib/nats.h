/* kumo.nats (docs/reference/kumo.nats/): connect{...} -> client,
 * client:publish{subject, payload, headers, await_ack} (JetStream
 * acknowledgement) and client:close(), over libnats. Each client has a
 * thread of its own for libnats's blocking calls (connect, publish when its
 * buffers are full); acknowledgements arrive on libnats's threads. Both
 * post their results to the reactor of the waiting coroutine. */
#ifndef KUMOD_LUA_LIB_NATS_H
#define KUMOD_LUA_LIB_NATS_H

/* Registers the opener that installs kumo.nats into every VM. */
void nats_lua_register(void);
/* Shutdown, before the reactors stop: fails what is queued or unacked,
 * closes every connection and joins the client threads. */
void nats_lua_stop(void);
/* Last, once the VMs are closed: releases libnats. */
void nats_lua_shutdown(void);

#endif
