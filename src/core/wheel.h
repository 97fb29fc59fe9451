/* Hashed timer wheel with entries embedded in their owners: arm and cancel
 * are O(1) and allocate nothing. Owned and driven by one reactor thread;
 * not thread-safe. Resolution is the tick (milliseconds). Entries due beyond
 * one revolution carry a rounds count, so any horizon (7 days) works. */
#ifndef KUMOD_CORE_WHEEL_H
#define KUMOD_CORE_WHEEL_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct wheel_entry wheel_entry;
typedef void (*wheel_fn)(wheel_entry *e);

struct wheel_entry {
    wheel_entry *next, *prev; /* NULL when not armed */
    int64_t due_ms;           /* absolute, in the wheel's clock */
    wheel_fn fn;              /* called when due; owner recovers itself by container_of */
};

typedef struct wheel wheel;

/* slots must be a power of two; tick_ms >= 1; now_ms is the starting clock. */
wheel *wheel_new(size_t slots, int64_t tick_ms, int64_t now_ms);
/* Frees the wheel; armed entries are simply forgotten (owners free them). */
void wheel_free(wheel *w);

static inline void wheel_entry_init(wheel_entry *e, wheel_fn fn)
{
    e->next = e->prev = NULL;
    e->due_ms = 0;
    e->fn = fn;
}
static inline bool wheel_entry_armed(const wheel_entry *e)
{
    return e->next != NULL;
}
/* Arms (or re-arms) e to fire at due_ms; a due time in the past fires on the next advance. */
void wheel_arm(wheel *w, wheel_entry *e, int64_t due_ms);
/* Cancels e if armed; no-op otherwise. */
void wheel_cancel(wheel *w, wheel_entry *e);
/* Advances the clock to now_ms and calls fn of every entry now due, each
 * disarmed before its call (a callback may re-arm or cancel any entry,
 * including others). Returns the number fired. */
size_t wheel_advance(wheel *w, int64_t now_ms);
/* Milliseconds until the earliest possible expiry (bounded by one tick when
 * anything is armed), or -1 when empty. */
int64_t wheel_next_timeout(const wheel *w, int64_t now_ms);
size_t wheel_count(const wheel *w);

#endif
