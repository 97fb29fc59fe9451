/* libFuzzer harness for the SMTP client's parsers and encoder in
 * src/smtp/client.c: the reply parser (what a hostile or broken server
 * sends back) and the DATA body encoder (dot-stuffing).
 *
 * Every input is parsed as server replies, one after another: each parse
 * is OK (spanning at least one byte, a code from 100 to 599, text that is
 * NUL-terminated within the buffer), AGAIN (and then also AGAIN on every
 * shorter prefix of the rest) or INVALID. The same bytes as a message
 * body encode to CRLF lines ending "\r\n.\r\n", and undoing the stuffing
 * gives the body with its line ends made CRLF. */
#include <event2/buffer.h>
#include <stdint.h>

#include "smtp/client.h"
#include "support/fuzz_util.h"

static void check_replies(const char *buf, size_t len)
{
    static smtpcli_reply r;
    size_t off = 0;
    while (off < len) {
        size_t used = 0;
        int rc = smtpcli_parse_reply(buf + off, len - off, &used, &r);
        if (rc == SMTPCLI_PARSE_OK) {
            FUZZ_CHECK(used > 0 && used <= len - off, "used %zu of %zu", used, len - off);
            FUZZ_CHECK(r.code >= 100 && r.code <= 599, "code %d", r.code);
            FUZZ_CHECK(r.text_len < sizeof(r.text) && r.text[r.text_len] == 0 &&
                           strlen(r.text) <= r.text_len,
                       "text_len %zu", r.text_len);
            FUZZ_CHECK(r.n_lines >= 1, "no lines");
            off += used;
            continue;
        }
        FUZZ_CHECK(rc == SMTPCLI_PARSE_AGAIN || rc == SMTPCLI_PARSE_INVALID, "rc %d", rc);
        if (rc == SMTPCLI_PARSE_AGAIN && len - off > 0) {
            /* a prefix of an incomplete reply is incomplete (or already bad) */
            int rc2 = smtpcli_parse_reply(buf + off, (len - off) / 2, &used, &r);
            FUZZ_CHECK(rc2 != SMTPCLI_PARSE_OK, "a prefix parsed while the whole is AGAIN");
        }
        break;
    }
}

static void check_body(const char *d, size_t n)
{
    struct evbuffer *out = evbuffer_new();
    bool eightbit = false;
    FUZZ_CHECK(smtpcli_encode_body(out, d, n, &eightbit) == 0, "encode");
    size_t ol = evbuffer_get_length(out);
    const char *o = (const char *)evbuffer_pullup(out, -1);
    FUZZ_CHECK(ol >= 3 && memcmp(o + ol - 3, ".\r\n", 3) == 0, "no final dot");
    FUZZ_CHECK(ol == 3 || (ol >= 5 && memcmp(o + ol - 5, "\r\n.\r\n", 5) == 0),
               "the final dot is not on a line of its own");
    /* the expected body: every CR, LF or CRLF becomes CRLF, a final CRLF */
    char *want = malloc(2 * n + 3);
    size_t w = 0;
    bool high = false;
    for (size_t i = 0; i < n; i++) {
        high |= (unsigned char)d[i] >= 0x80;
        if (d[i] == '\r' || d[i] == '\n') {
            if (d[i] == '\r' && i + 1 < n && d[i + 1] == '\n')
                i++;
            want[w++] = '\r';
            want[w++] = '\n';
        } else {
            want[w++] = d[i];
        }
    }
    if (w > 0 && !(w >= 2 && want[w - 2] == '\r' && want[w - 1] == '\n')) {
        want[w++] = '\r';
        want[w++] = '\n';
    }
    FUZZ_CHECK(eightbit == high, "8bit flag %d, body has high bytes: %d", eightbit, high);
    /* undo: drop the terminator, and the first dot of each line that has one */
    size_t body_len = ol - 3;
    char *got = malloc(body_len + 1);
    size_t g = 0;
    bool line_start = true;
    for (size_t i = 0; i < body_len; i++) {
        if (line_start && o[i] == '.') {
            FUZZ_CHECK(i + 1 < body_len && o[i + 1] == '.', "unstuffed dot at %zu", i);
            i++;
        }
        FUZZ_CHECK(o[i] != '\n' || (i > 0 && o[i - 1] == '\r'), "bare LF at %zu", i);
        FUZZ_CHECK(o[i] != '\r' || (i + 1 < body_len && o[i + 1] == '\n'), "bare CR at %zu", i);
        got[g++] = o[i];
        line_start = o[i] == '\n';
    }
    FUZZ_CHECK(g == w && memcmp(got, want, w) == 0, "body changed by the encoding");
    free(got);
    free(want);
    evbuffer_free(out);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    check_replies((const char *)data, size);
    check_body((const char *)data, size);
    return 0;
}
