/* Per-second counts of the last hour (see ratering.h). Pure arithmetic on
 * an embedded struct: no allocation, no locks, no clock of its own (the
 * caller passes the second), so it is tested with made-up times. */
#include "metrics/ratering.h"

#include <stdbool.h>
#include <string.h>

static const char *const kind_names[RATE__COUNT] = {"received", "delivered", "transient",
                                                    "bounced", "expired"};

const char *ratering_kind_name(int kind)
{
    return kind >= 0 && kind < RATE__COUNT ? kind_names[kind] : "?";
}

void ratering_init(ratering *r)
{
    memset(r, 0, sizeof(*r));
}

static uint32_t *slot_of(ratering *r, int64_t s)
{
    return r->slot[(uint64_t)s % RATERING_SECONDS];
}

void ratering_sample(ratering *r, int64_t now_s, const uint64_t totals[RATE__COUNT])
{
    if (r->last_s == 0) {
        r->last_s = now_s;
        memcpy(r->last_total, totals, sizeof(r->last_total));
        return;
    }
    if (now_s <= r->last_s) {
        /* the same second again: what arrived since goes into it */
        if (now_s == r->last_s) {
            uint32_t *cur = slot_of(r, now_s);
            for (int k = 0; k < RATE__COUNT; k++) {
                uint64_t d = totals[k] >= r->last_total[k] ? totals[k] - r->last_total[k]
                                                           : totals[k];
                cur[k] += (uint32_t)(d > UINT32_MAX - cur[k] ? UINT32_MAX - cur[k] : d);
                r->last_total[k] = totals[k];
            }
        }
        return;
    }
    int64_t gap = now_s - r->last_s;
    /* seconds that left the window are cleared as they are reused */
    int64_t span = gap > RATERING_SECONDS ? RATERING_SECONDS : gap;
    for (int64_t s = now_s - span + 1; s <= now_s; s++)
        memset(slot_of(r, s), 0, sizeof(r->slot[0]));
    for (int k = 0; k < RATE__COUNT; k++) {
        uint64_t d = totals[k] >= r->last_total[k] ? totals[k] - r->last_total[k] : totals[k];
        r->last_total[k] = totals[k];
        if (gap > RATERING_SECONDS) /* only the window's share of the gap is kept */
            d = d / (uint64_t)gap * RATERING_SECONDS;
        uint64_t each = d / (uint64_t)span, rest = d % (uint64_t)span;
        for (int64_t i = 0; i < span; i++) {
            /* the remainder goes to the most recent seconds */
            uint64_t v = each + ((uint64_t)(span - 1 - i) < rest ? 1 : 0);
            slot_of(r, now_s - span + 1 + i)[k] = v > UINT32_MAX ? UINT32_MAX : (uint32_t)v;
        }
    }
    r->last_s = now_s;
}

size_t ratering_series(const ratering *r, int kind, int64_t now_s, uint32_t *out, size_t n)
{
    if (kind < 0 || kind >= RATE__COUNT)
        return 0;
    if (n > RATERING_SECONDS)
        n = RATERING_SECONDS;
    for (size_t i = 0; i < n; i++) {
        int64_t s = now_s - (int64_t)(n - 1 - i);
        /* a second after the last sample has not been counted yet; one
         * more than an hour before it has been overwritten */
        bool known = r->last_s && s <= r->last_s && s > r->last_s - RATERING_SECONDS;
        out[i] = known ? r->slot[(uint64_t)s % RATERING_SECONDS][kind] : 0;
    }
    return n;
}

uint64_t ratering_sum(const ratering *r, int kind, int64_t now_s, size_t n)
{
    if (kind < 0 || kind >= RATE__COUNT)
        return 0;
    if (n > RATERING_SECONDS)
        n = RATERING_SECONDS;
    uint64_t sum = 0;
    for (size_t i = 0; i < n; i++) {
        int64_t s = now_s - (int64_t)i;
        if (r->last_s && s <= r->last_s && s > r->last_s - RATERING_SECONDS)
            sum += r->slot[(uint64_t)s % RATERING_SECONDS][kind];
    }
    return sum;
}
