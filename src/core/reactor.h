/* Reactors: N threads, each running its own libevent event_base, with a
 * mailbox through which any thread hands it work, and a timer wheel for
 * long-lived timers (queued messages). Everything a reactor owns is touched
 * only on its thread; what crosses is a function and an owned argument. */
#ifndef KUMOD_CORE_REACTOR_H
#define KUMOD_CORE_REACTOR_H
#include <stdbool.h>
#include <stdint.h>

#include "core/wheel.h"

struct event_base;
typedef struct reactor reactor;
typedef void (*reactor_fn)(void *arg);

/* Creates n reactors (threads not yet running). */
int reactor_pool_init(int n);
/* Starts every reactor's thread. */
int reactor_pool_start(void);
/* Asks every reactor to leave its loop once its mailbox is empty, and joins
 * the threads. */
void reactor_pool_stop(void);
void reactor_pool_free(void);

int reactor_count(void);
reactor *reactor_get(int idx);
/* The reactor running the calling thread, or NULL off-reactor. */
reactor *reactor_current(void);
int reactor_index(const reactor *r);
struct event_base *reactor_base(reactor *r);
wheel *reactor_wheel(reactor *r);

/* Queues fn(arg) to run on r's thread; arg's ownership moves with it. Any
 * thread, never blocks. Calls from one thread run in the order posted. */
void reactor_post(reactor *r, reactor_fn fn, void *arg);
/* Runs fn(arg) on r's thread and returns once it has returned. For start-up
 * and shutdown from the main thread; never from r's own thread. */
void reactor_call_sync(reactor *r, reactor_fn fn, void *arg);

/* Arms a wheel entry on the current reactor, keeping its tick timer running. */
void reactor_timer_arm(reactor *r, wheel_entry *e, int64_t due_ms);
void reactor_timer_cancel(reactor *r, wheel_entry *e);

/* Per-thread opaque slots for the layers above (the Lua VM, metrics...). */
void *reactor_get_slot(reactor *r, int slot);
void reactor_set_slot(reactor *r, int slot, void *value);
enum {
    REACTOR_SLOT_LUA,
    REACTOR_SLOT_QUEUES,
    REACTOR_SLOT_DNS,
    REACTOR_SLOT_REDIS,
    REACTOR_SLOT_MAX = 8
};

/* Monotonic and wall clocks. */
int64_t clock_mono_ms(void);
int64_t clock_mono_ns(void);
int64_t clock_wall_ns(void);

#endif
