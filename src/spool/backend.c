/* What every spool backend (rocks.c, local_disk.c) takes from below
 * instead of from the facade: the common part of a store and creating its
 * directory. The backends implement the vtable of backend.h; the facade
 * (spool.c) calls them only through it and their openers.
 *
 * Threads: called while a store opens or closes (the main thread). Failures:
 * spool__mkdir_p returns KERR_IO with errno telling why; a store whose
 * name or path could not be copied has them NULL (out of memory). */
#include "spool/backend.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/fsutil.h"
#include "core/kerr.h"

int spool__mkdir_p(const char *path)
{
    return fs_mkdir_p(path, 0700);
}

void spool__store_init(spool_store *st, const spool__backend *be, const spool_params *p)
{
    st->be = be;
    st->kind = p->kind;
    st->name = strdup(p->name);
    st->path = strdup(p->path);
    st->sync_all = false;
    st->params = *p;
    st->params.name = NULL;
    st->params.path = NULL;
    st->params.rocks_params = NULL;
}

void spool__store_fini(spool_store *st)
{
    free(st->name);
    free(st->path);
    st->name = st->path = NULL;
}
