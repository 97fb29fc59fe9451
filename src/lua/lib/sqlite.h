/* require 'sqlite': KumoMTA's sqlite module (sqlite.open, db:execute,
 * db:close) over libsqlite3. Queries run on a small worker pool (the
 * "sqlite" threads) while the calling coroutine yields, so a slow disk or a
 * lock held by another process never stalls a reactor. */
#ifndef KUMOD_LUA_LIB_SQLITE_H
#define KUMOD_LUA_LIB_SQLITE_H

/* Registers the opener that makes require 'sqlite' available. */
void sqlite_lua_register(void);
/* Finishes the queries under way and stops the workers; call while the
 * reactors still run (their completions are posted to them). */
void sqlite_lua_stop_pool(void);

#endif
