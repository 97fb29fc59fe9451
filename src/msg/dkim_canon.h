/* DKIM canonicalization (RFC 6376 §3.4): the "simple" and "relaxed"
 * algorithms for header fields and for the body. The body canonicalizer is
 * a streaming state machine: it is fed the body in pieces of any size and
 * hands runs of canonical bytes to a sink (a digest update) straight from
 * the caller's buffer, holding back only what it cannot decide yet (pending
 * line ends, a run of whitespace, a CR). Bare LF counts as a line end, as on
 * the wire the message will be sent with CRLF. Pure; no allocation. */
#ifndef KUMOD_MSG_DKIM_CANON_H
#define KUMOD_MSG_DKIM_CANON_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

enum dkim_canon { DKIM_CANON_SIMPLE = 0, DKIM_CANON_RELAXED = 1 };

/* Receives canonical bytes; p is only valid during the call. */
typedef void (*dkim_sink_fn)(void *ctx, const char *p, size_t n);

typedef struct dkim_bodyc {
    enum dkim_canon canon;
    dkim_sink_fn sink;
    void *ctx;
    uint64_t limit;      /* stop after this many canonical bytes (l=); UINT64_MAX: none */
    uint64_t emitted;    /* canonical bytes passed to the sink (at most limit) */
    uint64_t total;      /* canonical length of the whole body, ignoring limit */
    size_t crlf_pending; /* line ends seen but not emitted (maybe trailing empty lines) */
    bool wsp_pending;    /* relaxed: whitespace seen inside the current line */
    bool cr_pending;     /* a CR was the last byte: a line end if LF follows */
    bool any_content;    /* some non-line-end byte was emitted */
    bool line_open;      /* the current line has content */
} dkim_bodyc;

void dkim_bodyc_init(dkim_bodyc *b, enum dkim_canon canon, uint64_t limit, dkim_sink_fn sink,
                     void *ctx);
void dkim_bodyc_update(dkim_bodyc *b, const char *p, size_t n);
/* Ends the body: emits the final line end (or the CRLF of an empty simple
 * body). The total canonical length is then in b->total. */
void dkim_bodyc_final(dkim_bodyc *b);

/* One header field (raw: "Name: value" with its folding, without the final
 * line end) in canonical form. Simple passes it unchanged (bare LF made
 * CRLF); relaxed lower-cases the name, unfolds, collapses whitespace runs to
 * one SP and drops whitespace around the colon and at the end. crlf: append
 * CRLF (every field but the signature header itself). */
void dkim_canon_header(enum dkim_canon canon, const char *raw, size_t len, bool crlf,
                       dkim_sink_fn sink, void *ctx);

#endif
