/* What every HTTP exchange with the fuzz server must look like: the
 * server answered and closed (no stall), every response starts with a
 * status line, and no status is 500 (every error a client can cause is a
 * 4xx naming the problem; see src/http/http.c). */
#ifndef KUMOD_FUZZ_HTTP_CHECK_H
#define KUMOD_FUZZ_HTTP_CHECK_H
#include "support/fuzz_util.h"
#include "support/inproc.h"

static inline void http_check_responses(const inproc_result *r)
{
    FUZZ_CHECK(r->closed_by_server, "kumod did not end the connection (stall); it sent: %.*s",
               (int)(r->reply_len > 2000 ? 2000 : r->reply_len), r->reply);
    for (const char *p = r->reply; (p = strstr(p, "HTTP/1.")) != NULL; p += 7) {
        if (p != r->reply && p[-1] != '\n')
            continue; /* inside a body */
        /* evhttp answers in the client's minor version, whatever it was
         * ("HTTP/1.11 404", "HTTP/1.-1 400"): only the code is ours */
        const char *sp = p + 7 + strcspn(p + 7, " \r\n");
        FUZZ_CHECK(*sp == ' ' && strspn(sp + 1, "0123456789") == 3, "bad status line: %.40s", p);
        FUZZ_CHECK(strncmp(sp + 1, "500", 3) != 0, "500 answer: %.2000s", r->reply);
    }
}

#endif
