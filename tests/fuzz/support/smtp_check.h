/* What every SMTP conversation with the fuzz server must look like,
 * whatever the client sent: the server closed the connection once the
 * client had (no stall), and every line it sent is a well-formed reply
 * line ("ddd" then ' ' or '-', CRLF-terminated, no NUL, no bare CR or LF)
 * — a line break in echoed client text would let a client forge replies.
 * TLS records after a 220 to STARTTLS are not lines; checking stops there. */
#ifndef KUMOD_FUZZ_SMTP_CHECK_H
#define KUMOD_FUZZ_SMTP_CHECK_H
#include <ctype.h>

#include "support/fuzz_util.h"
#include "support/inproc.h"

static inline void smtp_check_replies(const inproc_result *r)
{
    FUZZ_CHECK(r->closed_by_server, "kumod did not end the session (stall); it sent: %.*s",
               (int)(r->reply_len > 2000 ? 2000 : r->reply_len), r->reply);
    const char *p = r->reply, *end = r->reply + r->reply_len;
    while (p < end) {
        const char *nl = memchr(p, '\n', (size_t)(end - p));
        size_t n = nl ? (size_t)(nl - p) + 1 : (size_t)(end - p);
        FUZZ_CHECK(nl != NULL, "unterminated reply line: %.*s", (int)n, p);
        FUZZ_CHECK(n >= 6 && p[n - 2] == '\r', "reply line too short or bare LF: %.*s", (int)n, p);
        FUZZ_CHECK(isdigit((unsigned char)p[0]) && isdigit((unsigned char)p[1]) &&
                       isdigit((unsigned char)p[2]) && (p[3] == ' ' || p[3] == '-'),
                   "not a reply line: %.*s", (int)n, p);
        FUZZ_CHECK(p[0] >= '2' && p[0] <= '5', "reply code %.3s", p);
        for (size_t i = 0; i + 2 < n; i++)
            FUZZ_CHECK(p[i] != 0 && p[i] != '\r' && p[i] != '\n', "control byte in reply: %.*s",
                       (int)n, p);
        bool tls = strncmp(p, "220 ", 4) == 0 && memmem(p, n, "TLS", 3) != NULL;
        p += n;
        if (tls)
            break;
    }
}

#endif
