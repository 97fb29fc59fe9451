/* Unit tests for src/net/wthrough.c on real sockets (a loopback TCP pair,
 * non-blocking as the reactors use them): net_read_some reads what is there
 * in one go up to its limit, appends after unread bytes, reports EAGAIN,
 * end of stream and errors; net_write_through writes at once when it can and
 * hands the rest to the bufferevent when the socket is full. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <sys/socket.h>
#include <unistd.h>

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "net/wthrough.h"

typedef struct pair {
    int a, b; /* a connected loopback TCP pair; b is non-blocking */
} pair;

static void set_nonblock(int fd)
{
    int fl = fcntl(fd, F_GETFL);
    assert_int_not_equal(fl, -1);
    assert_int_equal(fcntl(fd, F_SETFL, fl | O_NONBLOCK), 0);
}

static int pair_setup(void **state)
{
    pair *p = calloc(1, sizeof(*p));
    assert_non_null(p);
    int l = socket(AF_INET, SOCK_STREAM, 0);
    assert_int_not_equal(l, -1);
    struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t sl = sizeof(sa);
    assert_int_equal(bind(l, (struct sockaddr *)&sa, sizeof(sa)), 0);
    assert_int_equal(listen(l, 1), 0);
    assert_int_equal(getsockname(l, (struct sockaddr *)&sa, &sl), 0);
    p->a = socket(AF_INET, SOCK_STREAM, 0);
    assert_int_equal(connect(p->a, (struct sockaddr *)&sa, sizeof(sa)), 0);
    p->b = accept(l, NULL, NULL);
    assert_int_not_equal(p->b, -1);
    close(l);
    set_nonblock(p->b);
    *state = p;
    return 0;
}

static int pair_teardown(void **state)
{
    pair *p = *state;
    if (p->a >= 0)
        close(p->a);
    if (p->b >= 0)
        close(p->b);
    free(p);
    return 0;
}

static void send_all(int fd, const void *buf, size_t n)
{
    const char *c = buf;
    while (n > 0) {
        ssize_t w = send(fd, c, n, 0);
        assert_true(w > 0);
        c += w;
        n -= (size_t)w;
    }
}

/* Waits until fd has at least n bytes queued (loopback delivers at once, but
 * do not rely on it). */
static void wait_queued(int fd, size_t n)
{
    for (int i = 0; i < 1000; i++) {
        char probe[65536];
        ssize_t r = recv(fd, probe, sizeof(probe) < n ? sizeof(probe) : n, MSG_PEEK);
        if (r >= 0 && (size_t)r >= n)
            return;
        usleep(1000);
    }
    fail_msg("%zu bytes never arrived", n);
}

static void test_reads_everything_queued_in_one_call(void **state)
{
    pair *p = *state;
    char msg[5000];
    for (size_t i = 0; i < sizeof(msg); i++)
        msg[i] = (char)('a' + i % 26);
    send_all(p->a, msg, sizeof(msg));
    wait_queued(p->b, sizeof(msg));
    struct evbuffer *in = evbuffer_new();
    assert_int_equal(net_read_some(in, p->b, 16000), (ssize_t)sizeof(msg));
    assert_int_equal(evbuffer_get_length(in), sizeof(msg));
    assert_memory_equal(evbuffer_pullup(in, -1), msg, sizeof(msg));
    evbuffer_free(in);
}

static void test_never_reads_more_than_max_and_appends(void **state)
{
    pair *p = *state;
    send_all(p->a, "0123456789", 10);
    wait_queued(p->b, 10);
    struct evbuffer *in = evbuffer_new();
    evbuffer_add(in, "old:", 4);
    assert_int_equal(net_read_some(in, p->b, 4), 4);
    assert_int_equal(net_read_some(in, p->b, 100), 6);
    assert_int_equal(evbuffer_get_length(in), 14);
    assert_memory_equal(evbuffer_pullup(in, -1), "old:0123456789", 14);
    evbuffer_free(in);
}

static void test_read_spanning_two_chains(void **state)
{
    /* the buffer's last chain has a little room left: the read fills it and
     * a second chain, in order */
    pair *p = *state;
    struct evbuffer *in = evbuffer_new();
    char filler[1000];
    memset(filler, 'x', sizeof(filler));
    evbuffer_add(in, filler, sizeof(filler));
    char msg[12000];
    for (size_t i = 0; i < sizeof(msg); i++)
        msg[i] = (char)('A' + i % 23);
    send_all(p->a, msg, sizeof(msg));
    wait_queued(p->b, sizeof(msg));
    size_t got = 0;
    while (got < sizeof(msg)) {
        ssize_t r = net_read_some(in, p->b, 16000);
        assert_true(r > 0);
        got += (size_t)r;
    }
    assert_int_equal(evbuffer_get_length(in), sizeof(filler) + sizeof(msg));
    const unsigned char *all = evbuffer_pullup(in, -1);
    assert_memory_equal(all, filler, sizeof(filler));
    assert_memory_equal(all + sizeof(filler), msg, sizeof(msg));
    evbuffer_free(in);
}

static void test_nothing_yet_is_eagain(void **state)
{
    pair *p = *state;
    struct evbuffer *in = evbuffer_new();
    errno = 0;
    assert_int_equal(net_read_some(in, p->b, 1024), -1);
    assert_true(errno == EAGAIN || errno == EWOULDBLOCK);
    assert_int_equal(evbuffer_get_length(in), 0);
    evbuffer_free(in);
}

static void test_end_of_stream_after_the_last_bytes(void **state)
{
    pair *p = *state;
    send_all(p->a, "QUIT\r\n", 6);
    shutdown(p->a, SHUT_WR);
    wait_queued(p->b, 6);
    struct evbuffer *in = evbuffer_new();
    assert_int_equal(net_read_some(in, p->b, 1024), 6);
    ssize_t r;
    for (int i = 0; i < 1000 && (r = net_read_some(in, p->b, 1024)) < 0 && errno == EAGAIN; i++)
        usleep(1000);
    assert_int_equal(r, 0);
    assert_int_equal(evbuffer_get_length(in), 6);
    evbuffer_free(in);
}

static void test_reset_is_an_error_with_errno(void **state)
{
    pair *p = *state;
    struct linger lg = {1, 0}; /* close with RST */
    assert_int_equal(setsockopt(p->a, SOL_SOCKET, SO_LINGER, &lg, sizeof(lg)), 0);
    close(p->a);
    p->a = -1;
    struct evbuffer *in = evbuffer_new();
    ssize_t r;
    for (int i = 0; i < 1000 && (r = net_read_some(in, p->b, 1024)) < 0 && errno == EAGAIN; i++)
        usleep(1000);
    assert_int_equal(r, -1);
    assert_int_equal(errno, ECONNRESET);
    evbuffer_free(in);
}

static void test_write_through_and_the_rest_to_the_bufferevent(void **state)
{
    pair *p = *state;
    struct event_base *base = event_base_new();
    struct bufferevent *bev = bufferevent_socket_new(base, p->b, 0);
    assert_non_null(bev);
    struct evbuffer *outq = evbuffer_new();
    /* a short reply leaves at once */
    evbuffer_add(outq, "250 ok\r\n", 8);
    assert_true(net_write_through(outq, bev));
    assert_true(net_out_empty(outq, bev));
    char got[16];
    wait_queued(p->a, 8);
    assert_int_equal(recv(p->a, got, sizeof(got), 0), 8);
    assert_memory_equal(got, "250 ok\r\n", 8);
    /* more than the socket takes: the rest waits in the bufferevent */
    int small = 4096;
    setsockopt(p->b, SOL_SOCKET, SO_SNDBUF, &small, sizeof(small));
    size_t big = 8u << 20;
    char *blob = malloc(big);
    assert_non_null(blob);
    memset(blob, 'z', big);
    evbuffer_add(outq, blob, big);
    assert_false(net_write_through(outq, bev));
    assert_int_equal(evbuffer_get_length(outq), 0);
    assert_true(evbuffer_get_length(bufferevent_get_output(bev)) > 0);
    assert_false(net_out_empty(outq, bev));
    /* with bytes still pending in the bufferevent, new ones queue behind */
    evbuffer_add(outq, "tail", 4);
    assert_false(net_write_through(outq, bev));
    assert_int_equal(evbuffer_get_length(outq), 0);
    free(blob);
    evbuffer_free(outq);
    bufferevent_free(bev);
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test_setup_teardown(test_reads_everything_queued_in_one_call, pair_setup,
                                        pair_teardown),
        cmocka_unit_test_setup_teardown(test_never_reads_more_than_max_and_appends, pair_setup,
                                        pair_teardown),
        cmocka_unit_test_setup_teardown(test_read_spanning_two_chains, pair_setup,
                                        pair_teardown),
        cmocka_unit_test_setup_teardown(test_nothing_yet_is_eagain, pair_setup, pair_teardown),
        cmocka_unit_test_setup_teardown(test_end_of_stream_after_the_last_bytes, pair_setup,
                                        pair_teardown),
        cmocka_unit_test_setup_teardown(test_reset_is_an_error_with_errno, pair_setup,
                                        pair_teardown),
        cmocka_unit_test_setup_teardown(test_write_through_and_the_rest_to_the_bufferevent,
                                        pair_setup, pair_teardown),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
