/* Reactor threads and their mailboxes. A mailbox is a mutex-protected list
 * that the owner swaps out in one step and drains, woken through an eventfd
 * only when the list goes from empty to non-empty, so a burst of posts costs
 * one wakeup. The tick timer of the wheel runs only while something is armed.
 * Fails only at start-up (thread/eventfd creation), which is fatal. */
#include "core/reactor.h"

#include <errno.h>
#include <event2/event.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/eventfd.h>
#include <time.h>
#include <unistd.h>

#include "core/diag.h"
#include "core/kerr.h"

#define REACTOR_TICK_MS 20

struct mail {
    struct mail *next;
    reactor_fn fn;
    void *arg;
};

struct reactor {
    int idx;
    pthread_t thread;
    struct event_base *base;
    int efd;
    struct event *mail_ev;
    struct event *more_ev; /* the rest of a long mailbox, after the next poll */
    struct mail *bl_head, *bl_tail; /* taken from the mailbox, not run yet; this thread only */
    struct event *tick_ev;
    pthread_mutex_t lock;
    struct mail *head, *tail;
    bool stopping;
    wheel *wheel;
    void *slots[REACTOR_SLOT_MAX];
};

static reactor **reactors;
static int n_reactors;
static __thread reactor *tls_reactor;

int64_t clock_mono_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

int64_t clock_mono_ms(void)
{
    return clock_mono_ns() / 1000000LL;
}

int64_t clock_wall_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

/* Time given to mailbox jobs per turn of the loop. A flood of posts (a
 * million messages coming back from the spool at start-up) must not keep
 * sockets waiting: past this, the rest runs after the next poll for I/O. */
#define MAIL_TURN_NS (10 * 1000 * 1000)

static void reactor_drain(evutil_socket_t fd, short what, void *arg)
{
    reactor *r = arg;
    uint64_t v;
    if ((what & EV_READ) && read(fd, &v, sizeof(v)) < 0 && errno != EAGAIN)
        DERROR("kumod::reactor", "reactor=%d eventfd read failed: %s", r->idx, strerror(errno));
    pthread_mutex_lock(&r->lock);
    struct mail *head = r->head, *tail = r->tail;
    r->head = r->tail = NULL;
    bool stop = r->stopping;
    pthread_mutex_unlock(&r->lock);
    if (head) {
        if (r->bl_tail)
            r->bl_tail->next = head;
        else
            r->bl_head = head;
        r->bl_tail = tail;
    }
    if (!r->bl_head) {
        /* leave the loop soon, but let zero-delay work (deferred frees)
         * scheduled by the last jobs run first */
        if (stop) {
            struct timeval tv = {0, 50000};
            event_base_loopexit(r->base, &tv);
        }
        return;
    }
    int64_t until = clock_mono_ns() + MAIL_TURN_NS;
    while (r->bl_head) {
        struct mail *m = r->bl_head;
        r->bl_head = m->next;
        if (!r->bl_head)
            r->bl_tail = NULL;
        m->fn(m->arg);
        free(m);
        if (clock_mono_ns() > until)
            break;
    }
    /* the rest (or the stop) after the next poll: a zero timer, unlike
     * event_active, lets I/O in first */
    if (r->bl_head || stop) {
        struct timeval zero = {0, 0};
        evtimer_add(r->more_ev, &zero);
    }
}

static void reactor_drain_more(evutil_socket_t fd, short what, void *arg)
{
    reactor_drain(-1, 0, arg);
}

static void reactor_tick(evutil_socket_t fd, short what, void *arg)
{
    reactor *r = arg;
    int64_t now = clock_mono_ms();
    wheel_advance(r->wheel, now);
    int64_t next = wheel_next_timeout(r->wheel, clock_mono_ms());
    if (next >= 0) {
        struct timeval tv = {next / 1000, (next % 1000) * 1000};
        event_add(r->tick_ev, &tv);
    }
}

int reactor_pool_init(int n)
{
    reactors = calloc((size_t)n, sizeof(*reactors));
    if (!reactors)
        return KERR_NOMEM;
    for (int i = 0; i < n; i++) {
        reactor *r = calloc(1, sizeof(*r));
        if (!r)
            return KERR_NOMEM;
        r->idx = i;
        /* The epoll changelist folds the add/remove of EV_WRITE around each
         * reply into at most one epoll_ctl per loop iteration. (Its caveat,
         * dup()ed descriptors, does not apply: nothing here dups a socket.) */
        struct event_config *ecfg = event_config_new();
        if (!ecfg)
            return KERR_NOMEM;
        event_config_set_flag(ecfg, EVENT_BASE_FLAG_EPOLL_USE_CHANGELIST);
        r->base = event_base_new_with_config(ecfg);
        event_config_free(ecfg);
        r->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
        if (!r->base || r->efd < 0)
            return KERR_IO;
        pthread_mutex_init(&r->lock, NULL);
        r->mail_ev = event_new(r->base, r->efd, EV_READ | EV_PERSIST, reactor_drain, r);
        r->tick_ev = evtimer_new(r->base, reactor_tick, r);
        r->more_ev = evtimer_new(r->base, reactor_drain_more, r);
        r->wheel = wheel_new(4096, REACTOR_TICK_MS, clock_mono_ms());
        if (!r->mail_ev || !r->tick_ev || !r->more_ev || !r->wheel)
            return KERR_NOMEM;
        event_add(r->mail_ev, NULL);
        reactors[i] = r;
        n_reactors = i + 1;
    }
    return 0;
}

static void *reactor_main(void *arg)
{
    reactor *r = arg;
    char name[16];
    snprintf(name, sizeof(name), "reactor-%d", r->idx);
    pthread_setname_np(pthread_self(), name);
    tls_reactor = r;
    /* Run until asked to stop; EVLOOP_NO_EXIT_ON_EMPTY keeps an idle reactor alive. */
    event_base_loop(r->base, EVLOOP_NO_EXIT_ON_EMPTY);
    return NULL;
}

int reactor_pool_start(void)
{
    for (int i = 0; i < n_reactors; i++) {
        if (pthread_create(&reactors[i]->thread, NULL, reactor_main, reactors[i]) != 0)
            return KERR_IO;
    }
    return 0;
}

void reactor_pool_stop(void)
{
    for (int i = 0; i < n_reactors; i++) {
        reactor *r = reactors[i];
        pthread_mutex_lock(&r->lock);
        r->stopping = true;
        pthread_mutex_unlock(&r->lock);
        uint64_t one = 1;
        ssize_t w = write(r->efd, &one, sizeof(one));
        (void)w;
    }
    for (int i = 0; i < n_reactors; i++)
        pthread_join(reactors[i]->thread, NULL);
}

void reactor_pool_free(void)
{
    for (int i = 0; i < n_reactors; i++) {
        reactor *r = reactors[i];
        for (int l = 0; l < 2; l++) {
            struct mail *m = l ? r->bl_head : r->head;
            while (m) {
                struct mail *n = m->next;
                free(m);
                m = n;
            }
        }
        event_free(r->mail_ev);
        event_free(r->tick_ev);
        event_free(r->more_ev);
        wheel_free(r->wheel);
        event_base_free(r->base);
        close(r->efd);
        pthread_mutex_destroy(&r->lock);
        free(r);
    }
    free(reactors);
    reactors = NULL;
    n_reactors = 0;
}

int reactor_count(void)
{
    return n_reactors;
}

reactor *reactor_get(int idx)
{
    return (idx >= 0 && idx < n_reactors) ? reactors[idx] : NULL;
}

reactor *reactor_current(void)
{
    return tls_reactor;
}

int reactor_index(const reactor *r)
{
    return r->idx;
}

struct event_base *reactor_base(reactor *r)
{
    return r->base;
}

wheel *reactor_wheel(reactor *r)
{
    return r->wheel;
}

void reactor_post(reactor *r, reactor_fn fn, void *arg)
{
    struct mail *m = malloc(sizeof(*m));
    if (!m) {
        fprintf(stderr, "kumod: out of memory posting to reactor %d\n", r->idx);
        abort();
    }
    m->next = NULL;
    m->fn = fn;
    m->arg = arg;
    pthread_mutex_lock(&r->lock);
    bool was_empty = r->head == NULL;
    if (r->tail)
        r->tail->next = m;
    else
        r->head = m;
    r->tail = m;
    pthread_mutex_unlock(&r->lock);
    if (was_empty) {
        if (r == tls_reactor) {
            /* posting to ourselves: no syscall, just run the drain soon
             * (not as EV_READ: the drain would read the empty eventfd) */
            event_active(r->mail_ev, EV_TIMEOUT, 0);
            return;
        }
        uint64_t one = 1;
        ssize_t w = write(r->efd, &one, sizeof(one));
        (void)w;
    }
}

struct sync_call {
    reactor_fn fn;
    void *arg;
    pthread_mutex_t lock;
    pthread_cond_t cond;
    bool done;
};

static void sync_call_run(void *arg)
{
    struct sync_call *c = arg;
    c->fn(c->arg);
    pthread_mutex_lock(&c->lock);
    c->done = true;
    pthread_cond_signal(&c->cond);
    pthread_mutex_unlock(&c->lock);
}

void reactor_call_sync(reactor *r, reactor_fn fn, void *arg)
{
    struct sync_call c = {.fn = fn, .arg = arg};
    pthread_mutex_init(&c.lock, NULL);
    pthread_cond_init(&c.cond, NULL);
    reactor_post(r, sync_call_run, &c);
    pthread_mutex_lock(&c.lock);
    while (!c.done)
        pthread_cond_wait(&c.cond, &c.lock);
    pthread_mutex_unlock(&c.lock);
    pthread_mutex_destroy(&c.lock);
    pthread_cond_destroy(&c.cond);
}

void reactor_timer_arm(reactor *r, wheel_entry *e, int64_t due_ms)
{
    wheel_arm(r->wheel, e, due_ms);
    if (!evtimer_pending(r->tick_ev, NULL)) {
        struct timeval tv = {0, REACTOR_TICK_MS * 1000};
        event_add(r->tick_ev, &tv);
    }
}

void reactor_timer_cancel(reactor *r, wheel_entry *e)
{
    wheel_cancel(r->wheel, e);
}

void *reactor_get_slot(reactor *r, int slot)
{
    return r->slots[slot];
}

void reactor_set_slot(reactor *r, int slot, void *value)
{
    r->slots[slot] = value;
}
