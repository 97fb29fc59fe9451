/* Streaming HTTP replies (server-sent events): a handler takes its
 * request over, sends the status and headers at once, then chunks for as
 * long as it likes, on the reactor that accepted the request. Internal to
 * src/http. */
#ifndef KUMOD_HTTP_STREAM_H
#define KUMOD_HTTP_STREAM_H
#include <stdbool.h>
#include <stddef.h>

#include "http/request.h"

typedef struct http_stream http_stream;

/* Answers 200 with content_type and a chunked body still to come, and
 * frees hr (the stream keeps what it needs: the peer address is copied).
 * Returns NULL (hr answered 500 and freed) when memory runs out. */
http_stream *http_stream_start(http_req *hr_take, const char *content_type);

/* Sends one chunk. Returns false once the client has gone (nothing is
 * sent; end the stream). Output waiting in the socket buffer beyond
 * max_backlog bytes is also treated as gone: a client that does not read
 * must not grow kumod's memory. */
bool http_stream_send(http_stream *s, const char *data, size_t len);

/* True while the client is connected. */
bool http_stream_alive(const http_stream *s);

/* The peer address ("127.0.0.1"). */
const char *http_stream_peer(const http_stream *s);

/* Ends the reply (when the client is still there) and frees s. */
void http_stream_end(http_stream *s);

#endif
