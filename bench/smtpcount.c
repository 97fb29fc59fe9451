/* smtpcount: an SMTP sink that counts what a delivering MTA costs it.
 *
 * What: accepts SMTP on 127.0.0.1:PORT (argv[1]), offers PIPELINING and
 * 8BITMIME, accepts every message, and counts sessions, messages, reads
 * (each wake-up with new input; with a client that waits for replies this
 * is the number of round trips), reply writes, and pipelined envelopes: a
 * MAIL that arrived in the same read as the previous message's final dot
 * (the client did not wait for the dot's reply). Prints one line "sessions
 * messages reads writes mail_behind_dot" to stdout whenever the figures
 * changed, at most every 100 ms, and at SIGTERM.
 *
 * Thread: one, libevent. Built by bench/pipeline_count.py with
 * `cc -O2 smtpcount.c -levent`. Failure: a connection that misbehaves is
 * closed; the sink never exits on its own. */
#include <arpa/inet.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>
#include <event2/listener.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

static unsigned long long n_sessions, n_msgs, n_reads, n_writes, n_behind;
static unsigned long long last_printed[5] = {~0ULL};

typedef struct conn {
    bool in_data;
    bool dot_in_this_read;
} conn;

static void print_counts(void)
{
    unsigned long long now[5] = {n_sessions, n_msgs, n_reads, n_writes, n_behind};
    if (memcmp(now, last_printed, sizeof(now)) == 0)
        return;
    memcpy(last_printed, now, sizeof(now));
    printf("%llu %llu %llu %llu %llu\n", now[0], now[1], now[2], now[3], now[4]);
    fflush(stdout);
}

static void tick_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what, (void)arg;
    print_counts();
}

static void stop_cb(evutil_socket_t fd, short what, void *arg)
{
    (void)fd, (void)what;
    print_counts();
    event_base_loopexit(arg, NULL);
}

static void close_conn(struct bufferevent *bev, conn *c)
{
    bufferevent_free(bev);
    free(c);
}

static void read_cb(struct bufferevent *bev, void *arg)
{
    conn *c = arg;
    struct evbuffer *in = bufferevent_get_input(bev);
    struct evbuffer *out = evbuffer_new();
    n_reads++;
    c->dot_in_this_read = false;
    bool quit = false;
    size_t len;
    char *line;
    while (!quit && (line = evbuffer_readln(in, &len, EVBUFFER_EOL_CRLF)) != NULL) {
        if (c->in_data) {
            if (len == 1 && line[0] == '.') {
                c->in_data = false;
                c->dot_in_this_read = true;
                n_msgs++;
                evbuffer_add_printf(out, "250 2.0.0 Ok: queued\r\n");
            }
        } else if (strncasecmp(line, "EHLO", 4) == 0) {
            evbuffer_add_printf(out, "250-smtpcount\r\n250-PIPELINING\r\n250-8BITMIME\r\n"
                                     "250 ENHANCEDSTATUSCODES\r\n");
        } else if (strncasecmp(line, "HELO", 4) == 0) {
            evbuffer_add_printf(out, "250 smtpcount\r\n");
        } else if (strncasecmp(line, "MAIL", 4) == 0) {
            if (c->dot_in_this_read)
                n_behind++;
            evbuffer_add_printf(out, "250 2.1.0 Ok\r\n");
        } else if (strncasecmp(line, "RCPT", 4) == 0) {
            evbuffer_add_printf(out, "250 2.1.5 Ok\r\n");
        } else if (strncasecmp(line, "DATA", 4) == 0) {
            c->in_data = true;
            evbuffer_add_printf(out, "354 End data with <CR><LF>.<CR><LF>\r\n");
        } else if (strncasecmp(line, "RSET", 4) == 0 || strncasecmp(line, "NOOP", 4) == 0) {
            evbuffer_add_printf(out, "250 2.0.0 Ok\r\n");
        } else if (strncasecmp(line, "QUIT", 4) == 0) {
            evbuffer_add_printf(out, "221 2.0.0 Bye\r\n");
            quit = true;
        } else {
            evbuffer_add_printf(out, "502 5.5.2 Error: command not recognized\r\n");
        }
        free(line);
    }
    if (evbuffer_get_length(out)) {
        n_writes++;
        /* a blocking-free write straight to the socket: replies are small */
        bufferevent_write_buffer(bev, out);
    }
    evbuffer_free(out);
    if (quit) {
        bufferevent_flush(bev, EV_WRITE, BEV_FLUSH);
        close_conn(bev, c);
    }
}

static void event_cb(struct bufferevent *bev, short what, void *arg)
{
    if (what & (BEV_EVENT_EOF | BEV_EVENT_ERROR))
        close_conn(bev, arg);
}

static void accept_cb(struct evconnlistener *l, evutil_socket_t fd, struct sockaddr *sa, int sl,
                      void *arg)
{
    (void)l, (void)sa, (void)sl;
    struct event_base *base = arg;
    struct bufferevent *bev = bufferevent_socket_new(base, fd, BEV_OPT_CLOSE_ON_FREE);
    conn *c = calloc(1, sizeof(*c));
    if (!bev || !c)
        abort();
    n_sessions++;
    bufferevent_set_max_single_read(bev, 65536);
    bufferevent_setcb(bev, read_cb, NULL, event_cb, c);
    bufferevent_enable(bev, EV_READ | EV_WRITE);
    bufferevent_write(bev, "220 smtpcount ESMTP\r\n", 21);
    n_writes++;
}

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: smtpcount PORT\n");
        return 2;
    }
    signal(SIGPIPE, SIG_IGN);
    struct event_base *base = event_base_new();
    struct sockaddr_in sin = {.sin_family = AF_INET, .sin_port = htons((uint16_t)atoi(argv[1]))};
    sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    struct evconnlistener *l =
        evconnlistener_new_bind(base, accept_cb, base, LEV_OPT_REUSEABLE | LEV_OPT_CLOSE_ON_FREE,
                                512, (struct sockaddr *)&sin, sizeof(sin));
    if (!l) {
        perror("listen");
        return 1;
    }
    struct event *tick = event_new(base, -1, EV_PERSIST, tick_cb, NULL);
    struct timeval tv = {0, 100000};
    event_add(tick, &tv);
    struct event *stop = evsignal_new(base, SIGTERM, stop_cb, base);
    event_add(stop, NULL);
    print_counts();
    event_base_dispatch(base);
    return 0;
}
