/* kumo.fs (glob, uncached_glob, read_dir, metadata_for_path,
 * symlink_metadata_for_path, open) and the deprecated kumo.glob,
 * kumo.uncached_glob and kumo.read_dir. */
#ifndef KUMOD_LUA_LIB_FS_H
#define KUMOD_LUA_LIB_FS_H
#include <lua.h>
#include <stddef.h>

/* Expands pattern (glob(7) wildcards, {a,b} alternatives, and "**" for any
 * number of directories) and pushes a sorted array of the matching paths,
 * with the prefix relative_to/ removed where present (NULL: none). Paths
 * that cannot be read are skipped silently. Returns 0, or -1 with an error
 * message pushed instead (a pattern too complex to expand). */
int fs_glob_push(lua_State *L, const char *pattern, const char *relative_to);

void fs_lua_register(void);

#endif
