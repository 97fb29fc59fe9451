/* Creating directory trees, and remembering which ones kumod created.
 * Any thread (the registry is under a lock).
 *
 * kumod --user starts as root, creates its log directories while the
 * policy's init runs, then gives every directory it created to the user
 * before dropping privileges (main.c): fs_created_foreach lists them. */
#ifndef KUMOD_CORE_FSUTIL_H
#define KUMOD_CORE_FSUTIL_H
#include <sys/types.h>

/* mkdir -p: missing parents are created with mode 0755 and the last
 * component with leaf_mode, whatever the umask. Returns 0, or KERR_IO with
 * errno set. Each directory created is remembered. */
int fs_mkdir_p(const char *path, mode_t leaf_mode);
/* Calls fn for every directory fs_mkdir_p created in this process, parents
 * first; stops at and returns the first non-zero result. */
int fs_created_foreach(int (*fn)(const char *dir, void *ud), void *ud);

#endif
