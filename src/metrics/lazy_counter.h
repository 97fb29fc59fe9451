/* A counter family with one label, registered the first time it is
 * counted: for the "delayed_due_to_..." style counters that a module
 * bumps by queue name from a code path that may never run. Declare one
 * static per counter with METRICS_LAZY_COUNTER and call
 * metrics_lazy_counter_inc from any thread.
 *
 * If registration fails (a name clash with another family: a bug) the
 * counter stays silent; counting never fails or aborts. The family lives
 * until metrics_shutdown; a lazy counter must not be used after it. */
#ifndef KUMOD_METRICS_LAZY_COUNTER_H
#define KUMOD_METRICS_LAZY_COUNTER_H
#include <stdatomic.h>

#include "metrics/metrics.h"

typedef struct metrics_lazy_counter {
    const char *name; /* static strings: the family's name, help and label */
    const char *help;
    const char *label;
    metrics_family *family; /* set before done */
    atomic_int done;
} metrics_lazy_counter;

#define METRICS_LAZY_COUNTER(name, help, label)                                                    \
    {                                                                                              \
        (name), (help), (label), NULL, 0                                                           \
    }

/* Adds one to the series whose label value is value (copied). */
void metrics_lazy_counter_inc(metrics_lazy_counter *lc, const char *value);

#endif
