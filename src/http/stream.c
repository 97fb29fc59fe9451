/* Streaming HTTP replies (see stream.h): the server-sent events of the
 * dashboard.
 *
 * A stream owns its evhttp_request from http_stream_start until
 * http_stream_end. libevent reports a client that goes away through the
 * connection's close callback, and what happens to the request then
 * depends on why: after an EOF or a write error it is detached from the
 * connection and stays ours to free (evhttp_send_reply_end frees a
 * detached request); when the listener itself is freed, the connection
 * frees the request right after the callback, so the stream forgets it.
 * The socket's read timeout is lifted (an event stream is quiet in that
 * direction for ever) and its write timeout bounds a client that stops
 * reading. Runs on the reactor that accepted the request; the stream
 * counts as a request in flight, so an orderly shutdown waits for its
 * owner to end it. */
#include "http/stream.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <event2/http.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>

#define STREAM_WRITE_TIMEOUT_S 30
#define STREAM_MAX_BACKLOG (4u << 20)

struct http_stream {
    struct evhttp_request *req; /* NULL once libevent has freed it */
    http_req *hr;               /* released at the end (in-flight accounting) */
    bool gone;
    char peer[64];
};

static void on_close(struct evhttp_connection *evcon, void *arg)
{
    (void)evcon;
    http_stream *s = arg;
    s->gone = true;
    /* still attached: the connection frees it after this callback */
    if (s->req && evhttp_request_get_connection(s->req) != NULL)
        s->req = NULL;
}

http_stream *http_stream_start(http_req *hr, const char *content_type)
{
    http_stream *s = calloc(1, sizeof(*s));
    if (!s) {
        http_reply_error(hr, 500, "out of memory");
        return NULL;
    }
    s->req = hr->req;
    s->hr = hr;
    snprintf(s->peer, sizeof(s->peer), "%s", hr->peer_ip);
    struct evkeyvalq *h = evhttp_request_get_output_headers(hr->req);
    evhttp_add_header(h, "Content-Type", content_type);
    evhttp_add_header(h, "Cache-Control", "no-store");
    evhttp_add_header(h, "X-Accel-Buffering", "no");
    struct evhttp_connection *evcon = evhttp_request_get_connection(hr->req);
    if (evcon) {
        evhttp_connection_set_closecb(evcon, on_close, s);
        struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
        struct timeval wt = {STREAM_WRITE_TIMEOUT_S, 0};
        if (bev)
            bufferevent_set_timeouts(bev, NULL, &wt);
    } else {
        s->gone = true;
    }
    evhttp_send_reply_start(hr->req, 200, "OK");
    return s;
}

bool http_stream_alive(const http_stream *s)
{
    return s && !s->gone && s->req;
}

const char *http_stream_peer(const http_stream *s)
{
    return s->peer;
}

bool http_stream_send(http_stream *s, const char *data, size_t len)
{
    if (!http_stream_alive(s))
        return false;
    struct evhttp_connection *evcon = evhttp_request_get_connection(s->req);
    if (!evcon) {
        s->gone = true;
        return false;
    }
    struct bufferevent *bev = evhttp_connection_get_bufferevent(evcon);
    if (bev && evbuffer_get_length(bufferevent_get_output(bev)) > STREAM_MAX_BACKLOG) {
        s->gone = true;
        return false;
    }
    struct evbuffer *b = evbuffer_new();
    if (!b)
        return false;
    evbuffer_add(b, data, len);
    evhttp_send_reply_chunk(s->req, b);
    evbuffer_free(b);
    return true;
}

void http_stream_end(http_stream *s)
{
    if (!s)
        return;
    if (s->req) {
        struct evhttp_connection *evcon = evhttp_request_get_connection(s->req);
        if (evcon)
            evhttp_connection_set_closecb(evcon, NULL, NULL);
        /* ends the chunked reply, or frees a request already detached */
        evhttp_send_reply_end(s->req);
    }
    http__req_release(s->hr);
    free(s);
}
