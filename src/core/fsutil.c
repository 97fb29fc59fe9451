/* Directory trees and the registry of what kumod created; see fsutil.h. */
#include "core/fsutil.h"

#include <errno.h>
#include <stdbool.h>
#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "core/kerr.h"

typedef struct created {
    struct created *next;
    char path[];
} created;

static pthread_mutex_t reg_lock = PTHREAD_MUTEX_INITIALIZER;
static created *reg_head, **reg_tail = &reg_head;

static void remember(const char *path)
{
    size_t n = strlen(path);
    created *c = malloc(sizeof(*c) + n + 1);
    if (!c)
        return; /* only --user needs it; it then fails on the directory itself */
    memcpy(c->path, path, n + 1);
    c->next = NULL;
    pthread_mutex_lock(&reg_lock);
    *reg_tail = c;
    reg_tail = &c->next;
    pthread_mutex_unlock(&reg_lock);
}

int fs_mkdir_p(const char *path, mode_t leaf_mode)
{
    size_t len = strlen(path);
    char *buf = malloc(len + 1);
    if (!buf) {
        errno = ENOMEM;
        return KERR_IO;
    }
    memcpy(buf, path, len + 1);
    int rc = 0;
    for (size_t i = 1; i <= len && rc == 0; i++) {
        if (buf[i] != '/' && buf[i] != '\0')
            continue;
        if (buf[i - 1] == '/')
            continue;
        char c = buf[i];
        buf[i] = '\0';
        bool leaf = c == '\0' || (c == '/' && buf[i + 1] == '\0');
        mode_t mode = leaf ? leaf_mode : 0755;
        if (mkdir(buf, mode) == 0) {
            /* the umask must not make a parent untraversable */
            if (chmod(buf, mode) != 0)
                rc = KERR_IO;
            else
                remember(buf);
        } else if (errno != EEXIST) {
            rc = KERR_IO;
        }
        buf[i] = c;
    }
    int saved = errno;
    free(buf);
    errno = saved;
    return rc;
}

int fs_created_foreach(int (*fn)(const char *dir, void *ud), void *ud)
{
    pthread_mutex_lock(&reg_lock);
    int rc = 0;
    for (created *c = reg_head; c && rc == 0; c = c->next)
        rc = fn(c->path, ud);
    pthread_mutex_unlock(&reg_lock);
    return rc;
}
