/* libevent's own "413 Request Entity Too Large" HTML page on the HTTP
 * listener, answered with KumoMTA's plain-text 413 instead. */
#ifndef KUMOD_HTTP_ERRPAGE_H
#define KUMOD_HTTP_ERRPAGE_H
#include <stddef.h>

struct bufferevent;

/* KumoMTA's answer to a request body over request_body_limit (axum's
 * length-limit rejection): status 413 with this body and content type. */
#define HTTP_BODY_LIMIT_TEXT "Failed to buffer the request body: length limit exceeded"
#define HTTP_BODY_LIMIT_TYPE "text/plain; charset=utf-8"

/* Watches the output of bev, a server connection's bufferevent that
 * evhttp has not yet used: when evhttp writes its own 413 page there, the
 * page is replaced by KumoMTA's 413 before any of it is sent. bev stays
 * the caller's. Returns 0, or KERR_NOMEM (then evhttp's page stays). */
int http_errpage_watch(struct bufferevent *bev);

/* Closes the connections this reactor keeps open after a 413 to drain the
 * client's input (see errpage.c), at shutdown. Reactor thread. */
void http_errpage_linger_stop(void);
/* How many such connections are open (all reactors). */
int http_errpage_lingering(void);

/* The rewrite itself, on a copy of the output buffer (len bytes): when buf
 * ends with a complete evhttp 413 page (status line, headers with its
 * Content-Length and Connection: close, ERR_FORMAT body), possibly after
 * interim 1xx responses not yet sent, writes to out the same bytes with
 * that response replaced and returns their length; else (or if cap is too
 * small) returns 0. */
size_t http_errpage_rewrite(const char *buf, size_t len, char *out, size_t cap);

#endif
