/* The system hosts file for the resolver (src/net/dns.c): a parser into an
 * open-addressing table keyed by lower-cased name, and the process-wide
 * copy of the file kept fresh off the reactors.
 *
 * Owns: the current table (replaced whole, under a mutex), the path and the
 * watcher thread. The watcher stats the file once a second and re-reads it
 * when its mtime, size or inode changed; a reactor's hosts_lookup() only
 * copies addresses out of the table under the mutex, so the hot path never
 * does file I/O. A file that cannot be read is an empty table (the watcher
 * keeps trying); a file over 64 MiB is read up to that size. Allocation
 * failure aborts: the file is the administrator's, not a client's. */
#include "net/hosts.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "core/diag.h"
#include "core/xalloc.h"

#define HMOD "kumod::dns"
#define HOSTS_MAX_BYTES (64u << 20)
#define HOSTS_MAX_NAME 255

/* ---- the table -------------------------------------------------------------- */

struct hentry {
    char *name; /* NULL: empty slot */
    hosts_addr *addrs;
    size_t n4, n6; /* IPv4 first in addrs, then IPv6 */
    size_t cap;
};

struct hosts_table {
    struct hentry *slots;
    size_t nslots; /* a power of two */
    size_t n;
};

static uint64_t name_hash(const char *s)
{
    uint64_t h = 1469598103934665603ull; /* FNV-1a */
    for (; *s; s++) {
        h ^= (unsigned char)*s;
        h *= 1099511628211ull;
    }
    return h;
}

/* Lower-cases name without a trailing dot into out (HOSTS_MAX_NAME + 1).
 * Returns false for an empty or over-long name. */
static bool name_key(const char *name, size_t len, char *out)
{
    if (len > 0 && name[len - 1] == '.')
        len--;
    if (len == 0 || len > HOSTS_MAX_NAME)
        return false;
    for (size_t i = 0; i < len; i++)
        out[i] = (char)tolower((unsigned char)name[i]);
    out[len] = '\0';
    return true;
}

static struct hentry *slot_for(const hosts_table *t, const char *key)
{
    size_t mask = t->nslots - 1;
    for (size_t i = (size_t)name_hash(key) & mask;; i = (i + 1) & mask) {
        struct hentry *e = &t->slots[i];
        if (!e->name || strcmp(e->name, key) == 0)
            return e;
    }
}

static void grow(hosts_table *t)
{
    struct hentry *old = t->slots;
    size_t oldn = t->nslots;
    t->nslots = oldn ? oldn * 2 : 64;
    t->slots = xrealloc(NULL, t->nslots * sizeof(*t->slots));
    memset(t->slots, 0, t->nslots * sizeof(*t->slots));
    for (size_t i = 0; i < oldn; i++)
        if (old[i].name)
            *slot_for(t, old[i].name) = old[i];
    free(old);
}

static void entry_add(struct hentry *e, const hosts_addr *a)
{
    size_t n = e->n4 + e->n6;
    for (size_t i = 0; i < n; i++)
        if (e->addrs[i].family == a->family &&
            memcmp(e->addrs[i].raw, a->raw, a->family == AF_INET ? 4 : 16) == 0)
            return;
    if (n == e->cap) {
        e->cap = e->cap ? e->cap * 2 : 2;
        e->addrs = xrealloc(e->addrs, e->cap * sizeof(*e->addrs));
    }
    if (a->family == AF_INET) {
        /* keep IPv4 ahead of IPv6, each in file order */
        memmove(e->addrs + e->n4 + 1, e->addrs + e->n4, e->n6 * sizeof(*e->addrs));
        e->addrs[e->n4++] = *a;
    } else {
        e->addrs[n] = *a;
        e->n6++;
    }
}

static void table_add(hosts_table *t, const char *name, size_t len, const hosts_addr *a)
{
    char key[HOSTS_MAX_NAME + 1];
    if (!name_key(name, len, key))
        return;
    if ((t->n + 1) * 4 > t->nslots * 3)
        grow(t);
    struct hentry *e = slot_for(t, key);
    if (!e->name) {
        e->name = xrealloc(NULL, strlen(key) + 1);
        strcpy(e->name, key);
        t->n++;
    }
    entry_add(e, a);
}

/* One line (no newline): address, then names up to a '#'. */
static void parse_line(hosts_table *t, const char *p, const char *end)
{
    const char *hash = memchr(p, '#', (size_t)(end - p));
    if (hash)
        end = hash;
    bool have_addr = false;
    hosts_addr a = {0};
    while (p < end) {
        while (p < end && isspace((unsigned char)*p))
            p++;
        if (p == end)
            break;
        const char *s = p;
        while (p < end && !isspace((unsigned char)*p))
            p++;
        if (!have_addr) {
            char text[64];
            size_t l = (size_t)(p - s);
            if (l >= sizeof(text))
                return;
            memcpy(text, s, l);
            text[l] = '\0';
            /* a zone index ("fe80::1%eth0") cannot be kept: drop the line */
            if (inet_pton(AF_INET, text, a.raw) == 1)
                a.family = AF_INET;
            else if (inet_pton(AF_INET6, text, a.raw) == 1)
                a.family = AF_INET6;
            else
                return;
            have_addr = true;
            continue;
        }
        table_add(t, s, (size_t)(p - s), &a);
    }
}

hosts_table *hosts_parse(const char *text, size_t len)
{
    hosts_table *t = xrealloc(NULL, sizeof(*t));
    memset(t, 0, sizeof(*t));
    grow(t);
    const char *p = text, *end = text + len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        const char *le = nl ? nl : end;
        parse_line(t, p, le);
        p = nl ? nl + 1 : end;
    }
    return t;
}

void hosts_table_free(hosts_table *t)
{
    if (!t)
        return;
    for (size_t i = 0; i < t->nslots; i++) {
        free(t->slots[i].name);
        free(t->slots[i].addrs);
    }
    free(t->slots);
    free(t);
}

size_t hosts_table_names(const hosts_table *t)
{
    return t ? t->n : 0;
}

int hosts_table_lookup(const hosts_table *t, const char *name, int family, hosts_addr *out,
                       size_t max)
{
    char key[HOSTS_MAX_NAME + 1];
    if (!t || !name || !name_key(name, strlen(name), key))
        return -1;
    const struct hentry *e = slot_for(t, key);
    if (!e->name)
        return -1;
    const hosts_addr *from = e->addrs;
    size_t n = e->n4 + e->n6;
    if (family == AF_INET) {
        n = e->n4;
    } else if (family == AF_INET6) {
        from = e->addrs + e->n4;
        n = e->n6;
    }
    for (size_t i = 0; i < n && i < max; i++)
        out[i] = from[i];
    return n > INT32_MAX ? INT32_MAX : (int)n;
}

/* ---- the process-wide file ------------------------------------------------------ */

static struct {
    pthread_mutex_t lock; /* table, path, the file's identity */
    pthread_cond_t wake;
    hosts_table *table;
    char *path;
    bool have_stat;
    struct stat st;
    bool running, stopping;
    pthread_t thread;
} hf = {.lock = PTHREAD_MUTEX_INITIALIZER, .wake = PTHREAD_COND_INITIALIZER};

static const char *default_path(void)
{
    const char *env = getenv("CARES_HOSTS");
    return env && *env ? env : "/etc/hosts";
}

static char *read_file(const char *path, size_t *len)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return NULL;
    size_t cap = 8192, n = 0;
    char *buf = xrealloc(NULL, cap);
    for (;;) {
        if (n == cap) {
            if (cap >= HOSTS_MAX_BYTES)
                break;
            cap *= 2;
            buf = xrealloc(buf, cap);
        }
        ssize_t r = read(fd, buf + n, cap - n);
        if (r < 0 && errno == EINTR)
            continue;
        if (r < 0) {
            free(buf);
            close(fd);
            return NULL;
        }
        if (r == 0)
            break;
        n += (size_t)r;
    }
    close(fd);
    *len = n;
    return buf;
}

static bool same_file(const struct stat *a, const struct stat *b)
{
    return a->st_dev == b->st_dev && a->st_ino == b->st_ino && a->st_size == b->st_size &&
           a->st_mtim.tv_sec == b->st_mtim.tv_sec && a->st_mtim.tv_nsec == b->st_mtim.tv_nsec;
}

int hosts_refresh(void)
{
    pthread_mutex_lock(&hf.lock);
    char *path = strdup(hf.path ? hf.path : default_path());
    bool had = hf.have_stat;
    struct stat old = hf.st;
    bool loaded = hf.table != NULL;
    pthread_mutex_unlock(&hf.lock);
    if (!path)
        abort();

    struct stat st;
    bool ok = stat(path, &st) == 0;
    if (loaded && ok == had && (!ok || same_file(&st, &old))) {
        free(path);
        return 0;
    }
    size_t len = 0;
    char *text = ok ? read_file(path, &len) : NULL;
    hosts_table *t = hosts_parse(text ? text : "", text ? len : 0);
    free(text);
    if (ok && !text)
        DWARN(HMOD, "cannot read the hosts file %s: %s", path, strerror(errno));
    DDEBUG(HMOD, "hosts file %s loaded: %zu names", path, hosts_table_names(t));

    pthread_mutex_lock(&hf.lock);
    hosts_table *prev = hf.table;
    hf.table = t;
    hf.have_stat = ok && text;
    if (hf.have_stat)
        hf.st = st;
    pthread_mutex_unlock(&hf.lock);
    hosts_table_free(prev);
    free(path);
    return 1;
}

static void *watcher(void *arg)
{
    (void)arg;
    pthread_mutex_lock(&hf.lock);
    while (!hf.stopping) {
        struct timespec ts;
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_sec += 1;
        pthread_cond_timedwait(&hf.wake, &hf.lock, &ts);
        if (hf.stopping)
            break;
        pthread_mutex_unlock(&hf.lock);
        hosts_refresh();
        pthread_mutex_lock(&hf.lock);
    }
    pthread_mutex_unlock(&hf.lock);
    return NULL;
}

void hosts_start(void)
{
    hosts_refresh();
    pthread_mutex_lock(&hf.lock);
    if (!hf.running) {
        hf.stopping = false;
        if (pthread_create(&hf.thread, NULL, watcher, NULL) == 0)
            hf.running = true;
        else
            DWARN(HMOD, "cannot start the hosts file watcher: changes to the hosts file will "
                        "not be seen");
    }
    pthread_mutex_unlock(&hf.lock);
}

void hosts_stop(void)
{
    pthread_mutex_lock(&hf.lock);
    bool running = hf.running;
    hf.stopping = true;
    pthread_cond_broadcast(&hf.wake);
    pthread_mutex_unlock(&hf.lock);
    if (running)
        pthread_join(hf.thread, NULL);
    pthread_mutex_lock(&hf.lock);
    hf.running = false;
    hosts_table *t = hf.table;
    hf.table = NULL;
    hf.have_stat = false;
    free(hf.path);
    hf.path = NULL;
    pthread_mutex_unlock(&hf.lock);
    hosts_table_free(t);
}

int hosts_lookup(const char *name, int family, hosts_addr *out, size_t max)
{
    pthread_mutex_lock(&hf.lock);
    int n = hosts_table_lookup(hf.table, name, family, out, max);
    pthread_mutex_unlock(&hf.lock);
    return n;
}

void hosts_set_path(const char *path)
{
    pthread_mutex_lock(&hf.lock);
    free(hf.path);
    hf.path = path ? strdup(path) : NULL;
    if (path && !hf.path)
        abort();
    hf.have_stat = false; /* a different file: reload on the next refresh */
    hosts_table *t = hf.table;
    hf.table = NULL;
    pthread_mutex_unlock(&hf.lock);
    hosts_table_free(t);
}
