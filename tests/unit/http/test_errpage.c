/* Unit tests for src/http/errpage.c: libevent 2.1.12's 413 page, written
 * into a bufferevent's output the way evhttp_make_header writes it, is
 * replaced by KumoMTA's plain-text 413; anything else (another status, a
 * 120-byte body that is not the page, a page without evhttp's headers) is
 * left alone; a 100 Continue still waiting in the buffer stays; and the
 * frozen start a socket bufferevent keeps between writes is restored. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>
#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/event.h>

#include "http/errpage.h"

static const char PAGE[] = "<HTML><HEAD>\n"
                           "<TITLE>413 Request Entity Too Large</TITLE>\n"
                           "</HEAD><BODY>\n"
                           "<H1>Request Entity Too Large</H1>\n"
                           "</BODY></HTML>\n";

static const char HEAD[] = "HTTP/1.1 413 Request Entity Too Large\r\n"
                           "Content-Type: text/html\r\n"
                           "Connection: close\r\n"
                           "Date: Mon, 07 Dec 2026 21:55:18 GMT\r\n"
                           "Content-Length: 120\r\n"
                           "\r\n";

static const char WANT[] = "HTTP/1.1 413 Payload Too Large\r\n"
                           "Content-Type: text/plain; charset=utf-8\r\n"
                           "Connection: close\r\n"
                           "Date: Mon, 07 Dec 2026 21:55:18 GMT\r\n"
                           "Content-Length: 56\r\n"
                           "\r\n"
                           "Failed to buffer the request body: length limit exceeded";

static size_t rewrite(const char *in, char *out, size_t cap)
{
    return http_errpage_rewrite(in, strlen(in), out, cap);
}

static void test_rewrite(void **state)
{
    (void)state;
    char in[1024], out[1024];
    snprintf(in, sizeof(in), "%s%s", HEAD, PAGE);
    size_t n = rewrite(in, out, sizeof(out));
    assert_int_equal(n, strlen(WANT));
    assert_memory_equal(out, WANT, n);
    /* not enough room: left alone */
    assert_int_equal(rewrite(in, out, strlen(WANT) - 1), 0);
    assert_int_equal(rewrite(in, out, strlen(WANT)), strlen(WANT));
    /* a 100 Continue not yet sent stays in front */
    snprintf(in, sizeof(in), "HTTP/1.1 100 Continue\r\n\r\n%s%s", HEAD, PAGE);
    n = rewrite(in, out, sizeof(out));
    assert_int_equal(n, 25 + strlen(WANT));
    assert_memory_equal(out, "HTTP/1.1 100 Continue\r\n\r\n", 25);
    assert_memory_equal(out + 25, WANT, strlen(WANT));
    /* evhttp prints the client's own version numbers */
    snprintf(in, sizeof(in), "HTTP/1.11 100 Continue\r\n\r\nHTTP/1.11%s%s", HEAD + 8, PAGE);
    n = rewrite(in, out, sizeof(out));
    assert_int_equal(n, 26 + 1 + strlen(WANT));
    assert_memory_equal(out, "HTTP/1.11 100 Continue\r\n\r\nHTTP/1.11", 35);
    assert_memory_equal(out + 35, WANT + 8, strlen(WANT) - 8);
}

static void test_left_alone(void **state)
{
    (void)state;
    char in[1024], out[1024];
    static const char *heads[] = {
        /* another status */
        "HTTP/1.1 400 Bad Request\r\nContent-Type: text/html\r\nConnection: close\r\n"
        "Content-Length: 120\r\n\r\n",
        "HTTP/1.1 200 OK\r\nContent-Length: 120\r\n\r\n",
        /* no Connection: close, another length, no length, two lengths */
        "HTTP/1.1 413 Request Entity Too Large\r\nContent-Length: 120\r\n\r\n",
        "HTTP/1.1 413 Request Entity Too Large\r\nConnection: close\r\nContent-Length: 121\r\n\r\n",
        "HTTP/1.1 413 Request Entity Too Large\r\nConnection: close\r\n\r\n",
        "HTTP/1.1 413 Request Entity Too Large\r\nConnection: close\r\nContent-Length: 120\r\n"
        "Content-Length: 120\r\n\r\n",
        /* another reason than evhttp's own, a bad version */
        "HTTP/1.1 413 Too Big\r\nConnection: close\r\nContent-Length: 120\r\n\r\n",
        "HTTP/x 413 Request Entity Too Large\r\nConnection: close\r\nContent-Length: 120\r\n\r\n",
        "HTTP/ 413 Request Entity Too Large\r\nConnection: close\r\nContent-Length: 120\r\n\r\n",
        /* something else before it than an interim response */
        "HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\nHTTP/1.1 413 Request Entity Too Large\r\n"
        "Connection: close\r\nContent-Length: 120\r\n\r\n",
        /* not the end of a header block */
        "HTTP/1.1 413 Request Entity Too Large\r\nConnection: close\r\nContent-Length: 120\r\n",
    };
    for (size_t i = 0; i < sizeof(heads) / sizeof(heads[0]); i++) {
        snprintf(in, sizeof(in), "%s%s", heads[i], PAGE);
        assert_int_equal(rewrite(in, out, sizeof(out)), 0);
    }
    /* the page's length but other bytes */
    snprintf(in, sizeof(in), "%s%.*sX", HEAD, (int)strlen(PAGE) - 1, PAGE);
    assert_int_equal(rewrite(in, out, sizeof(out)), 0);
    assert_int_equal(rewrite(PAGE, out, sizeof(out)), 0);
    assert_int_equal(rewrite("", out, sizeof(out)), 0);
}

/* The adds of evhttp_make_header: the status line, each header, the blank
 * line, then the body moved in with evbuffer_add_buffer. */
static void evhttp_like_write(struct evbuffer *out, const char *head, const char *body)
{
    const char *p = head;
    while (*p) {
        const char *e = strstr(p, "\r\n");
        evbuffer_add(out, p, (size_t)(e + 2 - p));
        p = e + 2;
    }
    struct evbuffer *b = evbuffer_new();
    evbuffer_add(b, body, strlen(body));
    evbuffer_add_buffer(out, b);
    evbuffer_free(b);
}

/* the bytes of out, read with evbuffer_peek (copyout fails on a frozen start) */
static char *contents(struct evbuffer *out)
{
    size_t len = evbuffer_get_length(out), off = 0;
    char *s = malloc(len + 1);
    struct evbuffer_iovec v[16];
    int n = evbuffer_peek(out, -1, NULL, v, 16);
    assert_true(n >= 0 && n <= 16);
    for (int i = 0; i < n; i++) {
        memcpy(s + off, v[i].iov_base, v[i].iov_len);
        off += v[i].iov_len;
    }
    assert_int_equal(off, len);
    s[len] = 0;
    return s;
}

static void test_on_a_bufferevent(void **state)
{
    (void)state;
    struct event_base *base = event_base_new();
    struct bufferevent *bev = bufferevent_socket_new(base, -1, 0);
    assert_non_null(bev);
    assert_int_equal(http_errpage_watch(bev), 0);
    struct evbuffer *out = bufferevent_get_output(bev);
    /* a socket bufferevent without its socket keeps its output frozen at
     * the start, as one does between its writes */
    evhttp_like_write(out, HEAD, PAGE);
    char *s = contents(out);
    assert_string_equal(s, WANT);
    free(s);
    /* still frozen for anyone but the bufferevent */
    assert_int_equal(evbuffer_drain(out, 1), -1);
    evbuffer_unfreeze(out, 1);
    evbuffer_drain(out, evbuffer_get_length(out));

    /* thawed (as after bufferevent_setfd): replaced, and left thawed */
    evhttp_like_write(out, HEAD, PAGE);
    s = contents(out);
    assert_string_equal(s, WANT);
    free(s);
    assert_int_equal(evbuffer_drain(out, evbuffer_get_length(out)), 0);

    /* a 200 whose body happens to have the page's length: untouched */
    char body[121];
    memset(body, 'b', 120);
    body[120] = 0;
    static const char ok[] = "HTTP/1.1 200 OK\r\nContent-Length: 120\r\n\r\n";
    evhttp_like_write(out, ok, body);
    s = contents(out);
    assert_int_equal(strlen(s), strlen(ok) + 120);
    assert_memory_equal(s, ok, strlen(ok));
    free(s);

    bufferevent_free(bev);
    event_base_free(base);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_rewrite),
        cmocka_unit_test(test_left_alone),
        cmocka_unit_test(test_on_a_bufferevent),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
