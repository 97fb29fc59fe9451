/* Diagnostic log filter and writer. The active filter is an immutable
 * struct published through an atomic pointer, so checks take no lock;
 * replaced filters are retired to a list and freed at diag_shutdown(). Each
 * line is formatted into a stack buffer and written with one write(2), so
 * lines from different threads never interleave. */
#include "core/diag.h"

#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "core/kerr.h"

#define DIAG_MAX_RULES 32

struct diag_rule {
    char module[64]; /* "" matches everything */
    int level;
};

struct diag_filter {
    struct diag_filter *retired_next;
    int n;
    struct diag_rule rules[DIAG_MAX_RULES];
};

static struct diag_filter diag_default = {.n = 1, .rules = {{"", DIAG_INFO}}};
static _Atomic(struct diag_filter *) diag_active = &diag_default;
static pthread_mutex_t diag_retire_lock = PTHREAD_MUTEX_INITIALIZER;
static struct diag_filter *diag_retired;

static int diag_parse_level(const char *s, size_t n)
{
    static const char *const names[] = {"off", "error", "warn", "info", "debug", "trace"};
    for (int i = 0; i < 6; i++)
        if (strlen(names[i]) == n && strncasecmp(s, names[i], n) == 0)
            return i;
    return -1;
}

int diag_set_filter(const char *spec)
{
    struct diag_filter *f = calloc(1, sizeof(*f));
    if (!f)
        return KERR_NOMEM;
    f->rules[f->n++] = (struct diag_rule){"", DIAG_ERROR};
    const char *p = spec;
    while (*p) {
        const char *end = strchr(p, ',');
        size_t len = end ? (size_t)(end - p) : strlen(p);
        while (len && (*p == ' ')) {
            p++;
            len--;
        }
        while (len && p[len - 1] == ' ')
            len--;
        if (len) {
            const char *eq = memchr(p, '=', len);
            struct diag_rule r = {"", 0};
            if (eq) {
                size_t mlen = (size_t)(eq - p);
                if (mlen == 0 || mlen >= sizeof(r.module))
                    goto bad;
                memcpy(r.module, p, mlen);
                r.level = diag_parse_level(eq + 1, len - mlen - 1);
            } else {
                r.level = diag_parse_level(p, len);
                if (r.level < 0) {
                    /* a bare module name means "trace for it", as EnvFilter does */
                    if (len >= sizeof(r.module))
                        goto bad;
                    memcpy(r.module, p, len);
                    r.level = DIAG_TRACE;
                }
            }
            if (r.level < 0 || f->n >= DIAG_MAX_RULES)
                goto bad;
            if (r.module[0] == 0)
                f->rules[0].level = r.level;
            else
                f->rules[f->n++] = r;
        }
        if (!end)
            break;
        p = end + 1;
    }
    struct diag_filter *old = atomic_exchange(&diag_active, f);
    if (old != &diag_default) {
        pthread_mutex_lock(&diag_retire_lock);
        old->retired_next = diag_retired;
        diag_retired = old;
        pthread_mutex_unlock(&diag_retire_lock);
    }
    return 0;
bad:
    free(f);
    return KERR_PARSE;
}

bool diag_enabled(const char *module, int level)
{
    const struct diag_filter *f = atomic_load_explicit(&diag_active, memory_order_acquire);
    int best_level = f->rules[0].level;
    size_t best_len = 0;
    for (int i = 1; i < f->n; i++) {
        size_t ml = strlen(f->rules[i].module);
        if (ml > best_len && strncmp(module, f->rules[i].module, ml) == 0 &&
            (module[ml] == 0 || module[ml] == ':')) {
            best_len = ml;
            best_level = f->rules[i].level;
        }
    }
    return level <= best_level;
}

void diag_log(const char *module, int level, const char *fmt, ...)
{
    static const char *const lvl[] = {"", "ERROR", " WARN", " INFO", "DEBUG", "TRACE"};
    char buf[4096];
    struct timespec ts;
    struct tm tm;
    clock_gettime(CLOCK_REALTIME, &ts);
    gmtime_r(&ts.tv_sec, &tm);
    int n = snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%06ldZ %s %s: ",
                     tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour, tm.tm_min,
                     tm.tm_sec, ts.tv_nsec / 1000, lvl[level < 1 || level > 5 ? 1 : level],
                     module);
    if (n < 0)
        return;
    va_list ap;
    va_start(ap, fmt);
    int m = vsnprintf(buf + n, sizeof(buf) - (size_t)n - 1, fmt, ap);
    va_end(ap);
    size_t len = (size_t)n + (m < 0 ? 0 : (size_t)m);
    if (len > sizeof(buf) - 2)
        len = sizeof(buf) - 2;
    /* one line per event: fold any newline the message carried */
    for (size_t i = (size_t)n; i < len; i++)
        if (buf[i] == '\n' || buf[i] == '\r')
            buf[i] = ' ';
    buf[len++] = '\n';
    ssize_t w = write(STDERR_FILENO, buf, len);
    (void)w;
}

void diag_shutdown(void)
{
    pthread_mutex_lock(&diag_retire_lock);
    while (diag_retired) {
        struct diag_filter *n = diag_retired->retired_next;
        free(diag_retired);
        diag_retired = n;
    }
    pthread_mutex_unlock(&diag_retire_lock);
}
