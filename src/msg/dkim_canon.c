/* DKIM canonicalization, RFC 6376 §3.4 (see dkim_canon.h). The body state
 * machine passes runs of ordinary bytes to the sink straight from the
 * caller's buffer; only line ends, whitespace runs and a trailing CR are
 * held back until the next byte says what they are. Pure; any thread. */
#include "msg/dkim_canon.h"

#include <string.h>

static const char crlfs[] = "\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n\r\n";

static void emit(dkim_bodyc *b, const char *p, size_t n)
{
    b->total += n;
    if (b->emitted >= b->limit)
        return;
    uint64_t room = b->limit - b->emitted;
    if (n > room)
        n = (size_t)room;
    b->emitted += n;
    if (n)
        b->sink(b->ctx, p, n);
}

/* Content follows: the held line ends were not trailing empty lines, and a
 * held whitespace run (relaxed) was inside the line. */
static void before_content(dkim_bodyc *b)
{
    while (b->crlf_pending) {
        size_t k =
            b->crlf_pending < (sizeof(crlfs) - 1) / 2 ? b->crlf_pending : (sizeof(crlfs) - 1) / 2;
        emit(b, crlfs, 2 * k);
        b->crlf_pending -= k;
    }
    if (b->wsp_pending) {
        emit(b, " ", 1);
        b->wsp_pending = false;
    }
    b->any_content = true;
    b->line_open = true;
}

static void line_end(dkim_bodyc *b)
{
    b->crlf_pending++;
    /* relaxed: whitespace at the end of a line goes */
    b->wsp_pending = false;
    b->line_open = false;
}

void dkim_bodyc_init(dkim_bodyc *b, enum dkim_canon canon, uint64_t limit, dkim_sink_fn sink,
                     void *ctx)
{
    memset(b, 0, sizeof(*b));
    b->canon = canon;
    b->limit = limit;
    b->sink = sink;
    b->ctx = ctx;
}

void dkim_bodyc_update(dkim_bodyc *b, const char *p, size_t n)
{
    bool relaxed = b->canon == DKIM_CANON_RELAXED;
    size_t run = 0;
    bool in_run = false;
    for (size_t i = 0; i < n; i++) {
        char c = p[i];
        if (b->cr_pending) {
            b->cr_pending = false;
            if (c == '\n') {
                line_end(b);
                continue;
            }
            /* a lone CR is an ordinary byte */
            before_content(b);
            emit(b, "\r", 1);
        }
        bool plain = c != '\r' && c != '\n' && !(relaxed && (c == ' ' || c == '\t'));
        if (plain) {
            if (!in_run) {
                before_content(b);
                run = i;
                in_run = true;
            }
            continue;
        }
        if (in_run) {
            emit(b, p + run, i - run);
            in_run = false;
        }
        if (c == '\r')
            b->cr_pending = true;
        else if (c == '\n')
            line_end(b); /* bare LF: a line end, as it will be sent */
        else
            b->wsp_pending = true;
    }
    if (in_run)
        emit(b, p + run, n - run);
}

void dkim_bodyc_final(dkim_bodyc *b)
{
    if (b->cr_pending) {
        b->cr_pending = false;
        before_content(b);
        emit(b, "\r", 1);
    }
    /* trailing empty lines are dropped; the last line with content ends
     * with exactly one CRLF (added when the body lacked it) */
    if (b->any_content || b->canon == DKIM_CANON_SIMPLE)
        emit(b, "\r\n", 2);
    b->crlf_pending = 0;
    b->wsp_pending = false;
}

static void canon_simple(const char *raw, size_t len, dkim_sink_fn sink, void *ctx)
{
    size_t run = 0;
    for (size_t i = 0; i < len; i++) {
        if (raw[i] == '\n' && (i == 0 || raw[i - 1] != '\r')) {
            if (i > run)
                sink(ctx, raw + run, i - run);
            sink(ctx, "\r\n", 2);
            run = i + 1;
        }
    }
    if (len > run)
        sink(ctx, raw + run, len - run);
}

static void canon_relaxed(const char *raw, size_t len, dkim_sink_fn sink, void *ctx)
{
    const char *colon = memchr(raw, ':', len);
    size_t nlen = colon ? (size_t)(colon - raw) : len;
    size_t nend = nlen;
    while (nend > 0 && (raw[nend - 1] == ' ' || raw[nend - 1] == '\t'))
        nend--;
    char lower[64];
    for (size_t i = 0; i < nend; i += sizeof(lower)) {
        size_t k = nend - i < sizeof(lower) ? nend - i : sizeof(lower);
        for (size_t j = 0; j < k; j++) {
            char c = raw[i + j];
            lower[j] = (c >= 'A' && c <= 'Z') ? (char)(c + 32) : c;
        }
        sink(ctx, lower, k);
    }
    if (!colon)
        return;
    sink(ctx, ":", 1);
    bool wsp = false, started = false, in_run = false;
    size_t run = 0;
    for (size_t i = nlen + 1; i < len; i++) {
        char c = raw[i];
        bool plain = c != ' ' && c != '\t' && c != '\r' && c != '\n';
        if (plain) {
            if (!in_run) {
                if (wsp && started)
                    sink(ctx, " ", 1);
                wsp = false;
                started = true;
                run = i;
                in_run = true;
            }
            continue;
        }
        if (in_run) {
            sink(ctx, raw + run, i - run);
            in_run = false;
        }
        /* unfolding removes CR and LF; whitespace collapses; leading and
         * trailing whitespace of the value goes */
        if (c == ' ' || c == '\t')
            wsp = true;
    }
    if (in_run)
        sink(ctx, raw + run, len - run);
}

void dkim_canon_header(enum dkim_canon canon, const char *raw, size_t len, bool crlf,
                       dkim_sink_fn sink, void *ctx)
{
    if (canon == DKIM_CANON_RELAXED)
        canon_relaxed(raw, len, sink, ctx);
    else
        canon_simple(raw, len, sink, ctx);
    if (crlf)
        sink(ctx, "\r\n", 2);
}
