/* The diagnostic log: leveled, filtered at run time per module, one line per
 * event to stderr. Filter grammar follows tracing's EnvFilter as KumoMTA
 * uses it: "info", "kumod=info,kumod::smtp_server=debug" (the longest
 * matching module prefix wins). Set from KUMOD_LOG at start-up or
 * kumo.set_diagnostic_log_filter() later. Any thread. Delivery log records
 * are a separate stream (src/log). */
#ifndef KUMOD_CORE_DIAG_H
#define KUMOD_CORE_DIAG_H
#include <stdbool.h>

enum diag_level { DIAG_ERROR = 1, DIAG_WARN, DIAG_INFO, DIAG_DEBUG, DIAG_TRACE };

/* Replaces the filter. Returns 0 or KERR_PARSE (the old filter stays). */
int diag_set_filter(const char *spec);
bool diag_enabled(const char *module, int level);
void diag_log(const char *module, int level, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* Frees retired filters; call once at exit. */
void diag_shutdown(void);

#define DIAG(mod, lvl, ...)                                                                        \
    do {                                                                                           \
        if (diag_enabled((mod), (lvl)))                                                            \
            diag_log((mod), (lvl), __VA_ARGS__);                                                   \
    } while (0)
#define DERROR(mod, ...) DIAG(mod, DIAG_ERROR, __VA_ARGS__)
#define DWARN(mod, ...) DIAG(mod, DIAG_WARN, __VA_ARGS__)
#define DINFO(mod, ...) DIAG(mod, DIAG_INFO, __VA_ARGS__)
#define DDEBUG(mod, ...) DIAG(mod, DIAG_DEBUG, __VA_ARGS__)
#define DTRACE(mod, ...) DIAG(mod, DIAG_TRACE, __VA_ARGS__)

#endif
