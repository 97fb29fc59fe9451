/* Hashed timer wheel. Each slot is a circular doubly linked list whose head is
 * a sentinel entry, so an armed entry always has non-NULL links (that is what
 * wheel_entry_armed tests) and arm/cancel are a few pointer writes. An entry
 * lives in the slot of its due tick modulo the slot count; entries more than
 * one revolution away share that slot with nearer ones and are simply passed
 * over until their own turn, so the due time itself serves as the rounds
 * count and any horizon works. The wheel owns only its slot array; entries
 * are embedded in, and owned by, the objects they time. One reactor thread
 * drives a wheel; nothing here locks. The only failure is wheel_new returning
 * NULL, for a bad geometry or when memory runs out.
 *
 * Callbacks run from wheel_advance and may arm or cancel anything, so a slot
 * is first moved onto a list on the stack and entries are taken from its head
 * one at a time: whatever a callback unlinks or adds, the walk never holds a
 * pointer it has not just re-read. An entry armed from a callback for a time
 * at or before the clock of the advance under way goes on the wheel's "late"
 * list and fires on the next advance, never in this one: a callback that
 * re-arms itself "now" cannot loop, and one advance never fires an entry
 * twice. */
#include "core/wheel.h"

#include <stdlib.h>

struct wheel {
    wheel_entry *slots; /* sentinels, mask + 1 of them */
    size_t mask;
    int64_t tick_ms;
    /* The earliest tick whose slot may still hold due entries: the tick of the
     * last advance, revisited next time for entries due later in that tick. */
    int64_t cur_tick;
    size_t count;
    bool advancing;
    int64_t adv_now;  /* the clock of the advance under way */
    wheel_entry late; /* sentinel: armed during an advance, due by its clock */
};

static void list_init(wheel_entry *head)
{
    head->next = head->prev = head;
    head->due_ms = 0;
    head->fn = NULL;
}

static bool list_empty(const wheel_entry *head)
{
    return head->next == head;
}

static void list_append(wheel_entry *head, wheel_entry *e)
{
    e->prev = head->prev;
    e->next = head;
    head->prev->next = e;
    head->prev = e;
}

static void list_unlink(wheel_entry *e)
{
    e->prev->next = e->next;
    e->next->prev = e->prev;
    e->next = e->prev = NULL;
}

/* Moves every entry of from to the end of to; from is left empty. */
static void list_splice(wheel_entry *to, wheel_entry *from)
{
    if (list_empty(from))
        return;
    from->next->prev = to->prev;
    to->prev->next = from->next;
    from->prev->next = to;
    to->prev = from->prev;
    from->next = from->prev = from;
}

/* Floor division, so that times before the clock's zero still map to the tick
 * that contains them. */
static int64_t tick_of(const wheel *w, int64_t ms)
{
    int64_t q = ms / w->tick_ms;
    if (ms % w->tick_ms < 0)
        q--;
    return q;
}

static wheel_entry *slot_of(wheel *w, int64_t tick)
{
    return &w->slots[(uint64_t)tick & w->mask];
}

wheel *wheel_new(size_t slots, int64_t tick_ms, int64_t now_ms)
{
    if (slots == 0 || (slots & (slots - 1)) != 0 || tick_ms < 1)
        return NULL;
    wheel *w = calloc(1, sizeof(*w));
    if (!w)
        return NULL;
    w->slots = calloc(slots, sizeof(*w->slots));
    if (!w->slots) {
        free(w);
        return NULL;
    }
    for (size_t i = 0; i < slots; i++)
        list_init(&w->slots[i]);
    list_init(&w->late);
    w->mask = slots - 1;
    w->tick_ms = tick_ms;
    w->cur_tick = tick_of(w, now_ms);
    return w;
}

void wheel_free(wheel *w)
{
    if (!w)
        return;
    free(w->slots);
    free(w);
}

void wheel_arm(wheel *w, wheel_entry *e, int64_t due_ms)
{
    if (wheel_entry_armed(e))
        list_unlink(e);
    else
        w->count++;
    e->due_ms = due_ms;
    int64_t tick = tick_of(w, due_ms);
    if (w->advancing) {
        if (due_ms <= w->adv_now) {
            list_append(&w->late, e);
            return;
        }
        /* Otherwise due after this advance's clock, hence at or after the
         * last tick it visits, which becomes cur_tick: the natural slot is
         * safe. */
    } else if (tick < w->cur_tick) {
        /* Already due: the next advance starts at cur_tick's slot. */
        tick = w->cur_tick;
    }
    list_append(slot_of(w, tick), e);
}

void wheel_cancel(wheel *w, wheel_entry *e)
{
    if (!wheel_entry_armed(e))
        return;
    list_unlink(e);
    w->count--;
}

/* Fires the entries of one slot that are due by now_ms and puts the rest back. */
static size_t wheel_run_slot(wheel *w, wheel_entry *head, int64_t now_ms)
{
    wheel_entry pending;
    list_init(&pending);
    list_splice(&pending, head);
    size_t fired = 0;
    while (!list_empty(&pending)) {
        wheel_entry *e = pending.next;
        list_unlink(e);
        if (e->due_ms > now_ms) {
            list_append(head, e);
            continue;
        }
        w->count--;
        fired++;
        /* e is disarmed before its call: the callback may re-arm it. */
        if (e->fn)
            e->fn(e);
    }
    return fired;
}

size_t wheel_advance(wheel *w, int64_t now_ms)
{
    if (w->advancing)
        return 0; /* called from a callback: the outer advance covers it */
    int64_t first = w->cur_tick;
    int64_t last = tick_of(w, now_ms);
    if (last < first)
        last = first; /* the clock went back: still fire what is overdue */
    /* A jump of a revolution or more visits every slot once; the due-time
     * test in wheel_run_slot decides what fires. */
    if ((uint64_t)(last - first) > w->mask)
        first = last - (int64_t)w->mask;

    size_t fired = 0;
    w->advancing = true;
    w->adv_now = now_ms;
    for (int64_t t = first; t <= last; t++)
        fired += wheel_run_slot(w, slot_of(w, t), now_ms);
    w->advancing = false;
    w->cur_tick = last;
    list_splice(slot_of(w, last), &w->late);
    return fired;
}

int64_t wheel_next_timeout(const wheel *w, int64_t now_ms)
{
    if (w->count == 0)
        return -1;
    if (!list_empty(&w->late))
        return 0;
    int64_t now_tick = tick_of(w, now_ms);
    if (now_tick < w->cur_tick)
        now_tick = w->cur_tick;
    /* More than a revolution without an advance: anything may be due. */
    if ((uint64_t)(now_tick - w->cur_tick) > w->mask)
        return 0;

    /* Never sleep past the end of the current tick: entries in later slots may
     * be many revolutions away, and checking costs more than one wakeup per
     * tick. Only the slots from cur_tick to now can hold something due sooner;
     * look there for the exact time. */
    int64_t boundary = (now_tick + 1) * w->tick_ms;
    int64_t best = boundary - now_ms;
    if (best > w->tick_ms)
        best = w->tick_ms;
    for (int64_t t = w->cur_tick; t <= now_tick; t++) {
        const wheel_entry *head = &w->slots[(uint64_t)t & w->mask];
        for (const wheel_entry *e = head->next; e != head; e = e->next) {
            if (e->due_ms >= boundary)
                continue;
            int64_t wait = e->due_ms > now_ms ? e->due_ms - now_ms : 0;
            if (wait < best)
                best = wait;
        }
    }
    return best;
}

size_t wheel_count(const wheel *w)
{
    return w->count;
}
