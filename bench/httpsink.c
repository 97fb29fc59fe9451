/* httpsink: the webhook endpoint of bench/run's policy scenarios.
 *
 * Accepts HTTP/1.1 POSTs on 127.0.0.1:PORT (keep-alive), answers 200 with
 * an empty body, and counts requests and log records: a body that starts
 * with '[' is a JSON array from a batching hook (its records are counted by
 * the top-level objects in it), anything else is one record. Every 100 ms
 * (and at SIGTERM) it prints "requests records" on stdout, which bench/run
 * reads. One thread, libevent's evhttp: fast enough that the endpoint is
 * never what limits the MTA (a few µs per request).
 *
 * Build: cc -O2 -o httpsink httpsink.c -levent */
#include <event2/buffer.h>
#include <event2/event.h>
#include <event2/http.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static unsigned long long n_requests, n_records;

/* Top-level objects of a JSON array: '{' at nesting depth 1, outside strings. */
static unsigned long long count_array(struct evbuffer *b)
{
    unsigned long long n = 0;
    int depth = 0;
    int in_str = 0, esc = 0;
    /* a batch of 100 records spans many chains: peek them all */
    int nv = evbuffer_peek(b, -1, NULL, NULL, 0);
    if (nv <= 0)
        return 0;
    struct evbuffer_iovec *v = calloc((size_t)nv, sizeof(*v));
    if (!v)
        return 0;
    nv = evbuffer_peek(b, -1, NULL, v, nv);
    for (int i = 0; i < nv; i++) {
        const char *p = v[i].iov_base;
        for (size_t j = 0; j < v[i].iov_len; j++) {
            char c = p[j];
            if (in_str) {
                if (esc)
                    esc = 0;
                else if (c == '\\')
                    esc = 1;
                else if (c == '"')
                    in_str = 0;
                continue;
            }
            if (c == '"')
                in_str = 1;
            else if (c == '[' || c == '{') {
                if (c == '{' && depth == 1)
                    n++;
                depth++;
            } else if (c == ']' || c == '}')
                depth--;
        }
    }
    free(v);
    return n;
}

static void on_request(struct evhttp_request *req, void *arg)
{
    (void)arg;
    struct evbuffer *in = evhttp_request_get_input_buffer(req);
    n_requests++;
    unsigned char first = 0;
    if (evbuffer_get_length(in) > 0)
        evbuffer_copyout(in, &first, 1);
    n_records += first == '[' ? count_array(in) : 1;
    evhttp_send_reply(req, 200, "OK", NULL);
}

static void on_tick(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    (void)arg;
    printf("%llu %llu\n", n_requests, n_records);
    fflush(stdout);
}

static void on_term(evutil_socket_t fd, short what, void *arg)
{
    (void)fd;
    (void)what;
    on_tick(-1, 0, NULL);
    event_base_loopbreak(arg);
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: httpsink PORT\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct event_base *base = event_base_new();
    struct evhttp *http = evhttp_new(base);
    if (!base || !http)
        return 1;
    evhttp_set_max_body_size(http, 64 << 20);
    evhttp_set_gencb(http, on_request, NULL);
    if (evhttp_bind_socket(http, "127.0.0.1", (ev_uint16_t)atoi(argv[1])) != 0) {
        perror("httpsink: bind");
        return 1;
    }
    struct timeval tick = {0, 100000};
    struct event *t = event_new(base, -1, EV_PERSIST, on_tick, NULL);
    event_add(t, &tick);
    struct event *term = evsignal_new(base, SIGTERM, on_term, base);
    event_add(term, NULL);
    event_base_dispatch(base);
    event_free(t);
    event_free(term);
    evhttp_free(http);
    event_base_free(base);
    return 0;
}
