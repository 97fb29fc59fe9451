/* What every HTTP exchange with the fuzz server must look like: the
 * server answered and closed (no stall), every response starts with a
 * status line, no status is 500 (every error a client can cause is a
 * 4xx naming the problem; see src/http/http.c), and no 413 is libevent's
 * HTML page. */
#ifndef KUMOD_FUZZ_HTTP_CHECK_H
#define KUMOD_FUZZ_HTTP_CHECK_H
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "support/fuzz_util.h"
#include "support/inproc.h"

static inline void http_check_responses(const inproc_result *r)
{
    FUZZ_CHECK(r->closed_by_server, "kumod did not end the connection (stall); it sent: %.*s",
               (int)(r->reply_len > 2000 ? 2000 : r->reply_len), r->reply);
    /* Walk the responses by their framing (status line, headers,
     * Content-Length bytes of body): an error body may quote the client's
     * own bytes, "HTTP/1.0" at the start of a line included. */
    const char *p = r->reply, *end = r->reply + r->reply_len;
    while (p < end && strncmp(p, "HTTP/1.", 7) == 0) {
        /* evhttp answers in the client's minor version, whatever it was
         * ("HTTP/1.11 404", "HTTP/1.-1 400"): only the code is ours */
        const char *sp = p + 7 + strcspn(p + 7, " \r\n");
        FUZZ_CHECK(*sp == ' ' && strspn(sp + 1, "0123456789") == 3, "bad status line: %.40s", p);
        FUZZ_CHECK(strncmp(sp + 1, "500", 3) != 0, "500 answer: %.2000s", r->reply);
        const char *hend = strstr(p, "\r\n\r\n");
        if (!hend)
            break; /* the server closed inside the headers: nothing more to check */
        long clen = -1;
        for (const char *h = p; h < hend; h = strstr(h, "\r\n") + 2)
            if (strncasecmp(h, "Content-Length:", 15) == 0)
                clen = strtol(h + 15, NULL, 10);
        if (clen < 0)
            break; /* no length: the body runs to the close */
        /* a body over the limit is KumoMTA's plain-text 413, never
         * libevent's HTML page (src/http/errpage.c) */
        FUZZ_CHECK(strncmp(sp + 1, "413", 3) != 0 || clen > (long)(end - hend - 4) ||
                       !memmem(hend + 4, (size_t)clen, "<HTML>", 6),
                   "libevent's own 413 page: %.2000s", p);
        p = hend + 4 + clen;
    }
}

#endif
