/* Lazily registered one-label counters (lazy_counter.h). Any thread: the
 * first callers may race to register, which is harmless because
 * registering the same family twice returns the one family; done is
 * stored after family, so a caller that sees done sees the family.
 * Failure: a family that cannot be registered leaves the counter silent. */
#include "metrics/lazy_counter.h"

void metrics_lazy_counter_inc(metrics_lazy_counter *lc, const char *value)
{
    if (!atomic_load(&lc->done)) {
        const char *const labels[] = {lc->label};
        metrics_family *nf = NULL;
        if (metrics_counter_family(&nf, lc->name, lc->help, labels, 1) == 0)
            lc->family = nf;
        atomic_store(&lc->done, 1);
    }
    if (!lc->family)
        return;
    metrics_counter *c = metrics_counter_get(lc->family, value, NULL);
    if (c) {
        metrics_counter_inc(c);
        metrics_counter_unref(c);
    }
}
