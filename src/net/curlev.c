/* curl multi on a libevent base (see curlev.h). Owns the multi handle, one
 * event per socket curl watches, one timer event, and a small record per
 * transfer (its callback and curl's error buffer). Runs on the thread of
 * the base. curl never blocks here: name resolution uses curl's threaded
 * resolver, and every socket is non-blocking and polled by the base.
 *
 * Re-entrancy: a done callback may start requests or free the curlev (a
 * Lua coroutine resumed by it may call client:close()). curl's own
 * callbacks must not see the multi handle go away under them, so a free
 * asked for while curl is on the stack only marks the curlev; the last
 * frame to leave finishes it. */
#include "net/curlev.h"

#include <event2/event.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "core/diag.h"
#include "core/kerr.h"

#define CMOD "kumod::http_client"

struct xfer {
    struct xfer *next, *prev;
    CURL *easy;
    curlev_done_fn done;
    void *ud;
    char errbuf[CURL_ERROR_SIZE];
};

struct sockev {
    struct sockev *next, *prev;
    curlev *cv;
    curl_socket_t fd;
    struct event *ev;
};

struct curlev {
    struct event_base *base;
    CURLM *multi;
    struct event *timer;
    struct xfer *xfers;
    struct sockev *socks;
    int n_active;
    int busy;   /* frames of ours on the stack that called into curl */
    bool dying; /* curlev_free was asked while busy */
};

static void finish_free(curlev *cv);

static void xfer_unlink(curlev *cv, struct xfer *x)
{
    if (x->prev)
        x->prev->next = x->next;
    else
        cv->xfers = x->next;
    if (x->next)
        x->next->prev = x->prev;
    cv->n_active--;
}

static void sockev_free(curlev *cv, struct sockev *s)
{
    if (s->prev)
        s->prev->next = s->next;
    else
        cv->socks = s->next;
    if (s->next)
        s->next->prev = s->prev;
    if (s->ev)
        event_free(s->ev);
    free(s);
}

/* Hands finished transfers back to their owners. */
static void reap(curlev *cv)
{
    CURLMsg *msg;
    int left;
    while (!cv->dying && (msg = curl_multi_info_read(cv->multi, &left))) {
        if (msg->msg != CURLMSG_DONE)
            continue;
        CURL *easy = msg->easy_handle;
        CURLcode rc = msg->data.result;
        struct xfer *x = NULL;
        curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&x);
        curl_multi_remove_handle(cv->multi, easy);
        if (!x)
            continue;
        xfer_unlink(cv, x);
        char errbuf[CURL_ERROR_SIZE];
        memcpy(errbuf, x->errbuf, sizeof(errbuf));
        errbuf[sizeof(errbuf) - 1] = '\0';
        curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, NULL);
        curl_easy_setopt(easy, CURLOPT_PRIVATE, NULL);
        curlev_done_fn done = x->done;
        void *ud = x->ud;
        free(x);
        done(easy, rc, errbuf, ud);
    }
}

static void drive(curlev *cv, curl_socket_t fd, int action)
{
    int running;
    cv->busy++;
    CURLMcode mc = curl_multi_socket_action(cv->multi, fd, action, &running);
    if (mc != CURLM_OK)
        DERROR(CMOD, "curl_multi_socket_action: %s", curl_multi_strerror(mc));
    reap(cv);
    cv->busy--;
    if (cv->dying && cv->busy == 0)
        finish_free(cv);
}

static void on_socket_event(evutil_socket_t fd, short what, void *arg)
{
    struct sockev *s = arg;
    int action = ((what & EV_READ) ? CURL_CSELECT_IN : 0) | ((what & EV_WRITE) ? CURL_CSELECT_OUT : 0);
    drive(s->cv, (curl_socket_t)fd, action);
}

static void on_timer(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    drive(arg, CURL_SOCKET_TIMEOUT, 0);
}

/* CURLMOPT_SOCKETFUNCTION: curl tells us what to watch on a socket. */
static int socket_cb(CURL *easy, curl_socket_t fd, int what, void *userp, void *socketp)
{
    (void)easy;
    curlev *cv = userp;
    struct sockev *s = socketp;
    if (what == CURL_POLL_REMOVE) {
        if (s) {
            curl_multi_assign(cv->multi, fd, NULL);
            sockev_free(cv, s);
        }
        return 0;
    }
    if (!s) {
        s = calloc(1, sizeof(*s));
        if (!s)
            return -1;
        s->cv = cv;
        s->fd = fd;
        s->next = cv->socks;
        if (s->next)
            s->next->prev = s;
        cv->socks = s;
        curl_multi_assign(cv->multi, fd, s);
    }
    short flags = EV_PERSIST | ((what & CURL_POLL_IN) ? EV_READ : 0) |
                  ((what & CURL_POLL_OUT) ? EV_WRITE : 0);
    if (s->ev)
        event_free(s->ev);
    s->ev = event_new(cv->base, fd, flags, on_socket_event, s);
    if (!s->ev || event_add(s->ev, NULL) != 0) {
        DERROR(CMOD, "cannot watch a socket of an HTTP request");
        return -1;
    }
    return 0;
}

/* CURLMOPT_TIMERFUNCTION: curl wants to be called after timeout_ms (-1:
 * never). Never call curl from here: the timer event does it. */
static int timer_cb(CURLM *multi, long timeout_ms, void *userp)
{
    (void)multi;
    curlev *cv = userp;
    if (timeout_ms < 0) {
        evtimer_del(cv->timer);
        return 0;
    }
    struct timeval tv = {timeout_ms / 1000, (timeout_ms % 1000) * 1000};
    return evtimer_add(cv->timer, &tv) == 0 ? 0 : -1;
}

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static void global_init(void)
{
    /* curl_global_init is not thread-safe; the first client of the process
     * runs it once. */
    curl_global_init(CURL_GLOBAL_DEFAULT);
}

curlev *curlev_new(struct event_base *base)
{
    pthread_once(&global_once, global_init);
    curlev *cv = calloc(1, sizeof(*cv));
    if (!cv)
        return NULL;
    cv->base = base;
    cv->multi = curl_multi_init();
    cv->timer = evtimer_new(base, on_timer, cv);
    if (!cv->multi || !cv->timer) {
        if (cv->multi)
            curl_multi_cleanup(cv->multi);
        if (cv->timer)
            event_free(cv->timer);
        free(cv);
        return NULL;
    }
    curl_multi_setopt(cv->multi, CURLMOPT_SOCKETFUNCTION, socket_cb);
    curl_multi_setopt(cv->multi, CURLMOPT_SOCKETDATA, cv);
    curl_multi_setopt(cv->multi, CURLMOPT_TIMERFUNCTION, timer_cb);
    curl_multi_setopt(cv->multi, CURLMOPT_TIMERDATA, cv);
    return cv;
}

int curlev_add(curlev *cv, CURL *easy, curlev_done_fn done, void *ud)
{
    if (cv->dying)
        return KERR_SHUTDOWN;
    struct xfer *x = calloc(1, sizeof(*x));
    if (!x)
        return KERR_NOMEM;
    x->easy = easy;
    x->done = done;
    x->ud = ud;
    curl_easy_setopt(easy, CURLOPT_PRIVATE, (char *)x);
    curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, x->errbuf);
    CURLMcode mc = curl_multi_add_handle(cv->multi, easy);
    if (mc != CURLM_OK) {
        DERROR(CMOD, "curl_multi_add_handle: %s", curl_multi_strerror(mc));
        curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, NULL);
        curl_easy_setopt(easy, CURLOPT_PRIVATE, NULL);
        free(x);
        return mc == CURLM_OUT_OF_MEMORY ? KERR_NOMEM : KERR_IO;
    }
    x->next = cv->xfers;
    if (x->next)
        x->next->prev = x;
    cv->xfers = x;
    cv->n_active++;
    return 0;
}

void curlev_remove(curlev *cv, CURL *easy)
{
    struct xfer *x = NULL;
    curl_easy_getinfo(easy, CURLINFO_PRIVATE, (char **)&x);
    cv->busy++;
    curl_multi_remove_handle(cv->multi, easy);
    cv->busy--;
    curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, NULL);
    curl_easy_setopt(easy, CURLOPT_PRIVATE, NULL);
    if (x) {
        xfer_unlink(cv, x);
        free(x);
    }
    if (cv->dying && cv->busy == 0)
        finish_free(cv);
}

int curlev_active(const curlev *cv)
{
    return cv->n_active;
}

static void finish_free(curlev *cv)
{
    /* curl may tell socket_cb to forget sockets while it cleans up */
    curl_multi_cleanup(cv->multi);
    while (cv->socks)
        sockev_free(cv, cv->socks);
    event_free(cv->timer);
    free(cv);
}

void curlev_free(curlev *cv)
{
    if (!cv || cv->dying)
        return;
    cv->dying = true;
    /* Abandon what is under way; its owners hear about it (a done callback
     * may not add to a dying curlev). */
    cv->busy++;
    while (cv->xfers) {
        struct xfer *x = cv->xfers;
        CURL *easy = x->easy;
        curl_multi_remove_handle(cv->multi, easy);
        xfer_unlink(cv, x);
        curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, NULL);
        curl_easy_setopt(easy, CURLOPT_PRIVATE, NULL);
        curlev_done_fn done = x->done;
        void *ud = x->ud;
        free(x);
        done(easy, CURLE_ABORTED_BY_CALLBACK, "the HTTP client was closed", ud);
    }
    cv->busy--;
    if (cv->busy == 0)
        finish_free(cv);
}
