/* MIME trees (RFC 2045-2047, 2049): parsing a message into parts, reading
 * and replacing transfer-decoded bodies, editing part headers, building new
 * parts, serialising, the conformance checks of
 * message:check_fix_conformance and the "rebuild" that fixes them.
 *
 * A part keeps its header fields and its body as the bytes it was parsed
 * from, so an untouched part serialises to exactly what was read (a policy
 * that edits one part of a signed message changes only that part). Parts
 * are reference counted: a parent holds one reference on each child, a Lua
 * handle one on the part it names. Not thread-safe; one owner at a time.
 * Allocation failure returns NULL / KERR_NOMEM; malformed MIME never fails
 * the parse (it degrades to a leaf part and sets a conformance flag).
 * Parsing is linear in the input times the nesting depth, which is capped
 * at MPART_MAX_DEPTH (deeper parts stay unparsed leaves). */
#ifndef KUMOD_MSG_MIME_H
#define KUMOD_MSG_MIME_H
#include <stdbool.h>
#include <stddef.h>

#define MPART_MAX_DEPTH 16

/* Conformance issues (names as message:check_fix_conformance spells them). */
#define MCONF_MAP(X)                                                                               \
    X(MISSING_COLON_VALUE, 1u << 0)                                                                \
    X(NON_CANONICAL_LINE_ENDINGS, 1u << 1)                                                         \
    X(NAME_ENDS_WITH_SPACE, 1u << 2)                                                               \
    X(LINE_TOO_LONG, 1u << 3)                                                                      \
    X(NEEDS_TRANSFER_ENCODING, 1u << 4)                                                            \
    X(MISSING_DATE_HEADER, 1u << 5)                                                                \
    X(MISSING_MESSAGE_ID_HEADER, 1u << 6)                                                          \
    X(MISSING_MIME_VERSION, 1u << 7)                                                               \
    X(INVALID_MIME_HEADERS, 1u << 8)
enum {
#define MCONF_ENUM_(name, bit) MCONF_##name = bit,
    MCONF_MAP(MCONF_ENUM_)
#undef MCONF_ENUM_
};
#define MCONF_MISSING_HEADERS                                                                      \
    (MCONF_MISSING_DATE_HEADER | MCONF_MISSING_MESSAGE_ID_HEADER | MCONF_MISSING_MIME_VERSION)

/* "A|B" (empty string ok) -> flags. KERR_PARSE naming the unknown flag and
 * the possible values in err. */
int mconf_parse(const char *s, unsigned *out, char *err, size_t errlen);
/* The names of flags, sorted, joined by '|'. malloc'd. */
char *mconf_format(unsigned flags);

typedef struct mpart_hdr {
    char *raw; /* the whole field without its final line ending; folds kept */
    size_t raw_len;
    size_t name_len; /* 0 when the line has no colon */
} mpart_hdr;

typedef struct mpart mpart;
struct mpart {
    int refs;
    mpart_hdr *h;
    size_t nh, caph;
    /* leaf: the body as on the wire (transfer-encoded). multipart: NULL */
    char *body;
    size_t body_len;
    /* multipart: bytes before the first delimiter and after the last */
    char *preamble, *epilogue;
    size_t pre_len, epi_len;
    mpart **kids;
    size_t nkids, capk;
    bool multipart;
    char *boundary;       /* multipart only */
    char id[64];          /* position at parse time: "0", "0.1", ... */
    unsigned conformance; /* issues found in this part (and below, for the root) */
};

/* Parses a whole message. Never fails on malformed MIME. */
int mpart_parse(const char *data, size_t len, mpart **out);
mpart *mpart_new(void); /* empty part, one reference; NULL on OOM */
void mpart_ref(mpart *p);
void mpart_unref(mpart *p);
/* Appends child (taking a new reference). */
int mpart_add_child(mpart *p, mpart *child);

/* Serialises p and its children. malloc'd (NUL-terminated). */
char *mpart_serialize(const mpart *p, size_t *len);

/* Headers. Names compare case-insensitively. Values given to the setters
 * are the wire form (already encoded); set replaces the first field of
 * that name and removes the others, or appends. */
long mpart_hdr_find(const mpart *p, const char *name, size_t from);
/* The value of field i: unfolded, leading white space trimmed. malloc'd. */
char *mpart_hdr_value(const mpart *p, size_t i);
int mpart_hdr_insert(mpart *p, size_t at, const char *name, const char *value);
int mpart_hdr_set(mpart *p, const char *name, const char *value);
void mpart_hdr_remove_all(mpart *p, const char *name);

/* Content-Type and friends, as MIME parameters (RFC 2045 §5.1, RFC 2231
 * continuations and charsets). */
typedef struct mparams {
    char *value; /* lower-cased: "text/plain" */
    char **names, **values;
    size_t n;
} mparams;
int mparams_parse(const char *s, size_t n, mparams *out);
void mparams_fini(mparams *mp);
const char *mparams_get(const mparams *mp, const char *name);
/* "value; name=\"v\"" with values quoted as needed. malloc'd. */
char *mparams_format(const mparams *mp);

/* The part's content type ("text/plain" when absent, RFC 2045 §5.2),
 * lower-cased, into buf. */
void mpart_content_type(const mpart *p, char *buf, size_t len);
/* The transfer-decoded body (base64, quoted-printable or as is). For text
 * parts (text=true on return) the bytes are converted from the charset
 * parameter to UTF-8 (lossy). malloc'd. NULL for a multipart part. */
char *mpart_body_decoded(const mpart *p, size_t *len, bool *text);
/* Replaces the body of a leaf: text bodies go out as 7bit when ASCII with
 * short lines, else quoted-printable UTF-8 (charset set accordingly);
 * binary bodies as base64. content_type NULL keeps the current one. */
int mpart_set_body(mpart *p, const char *data, size_t len, bool text, const char *content_type);

/* New parts as kumo.mimepart makes them. */
mpart *mpart_new_text(const char *content_type, const char *text, size_t len);
mpart *mpart_new_binary(const char *content_type, const char *data, size_t len,
                        const char *file_name, bool is_inline, const char *content_id);
mpart *mpart_new_multipart(const char *content_type, const char *boundary);

/* Conformance issues of the message data (line endings, line lengths,
 * 8-bit bytes) and of the parsed headers; the root's flags include all
 * of them. */
unsigned mpart_conformance(const mpart *root);
/* A new tree built from p's content: headers unfolded and re-encoded
 * (RFC 2047 for non-ASCII), name spaces trimmed, lines without a colon
 * dropped, bodies decoded and re-encoded (text as UTF-8 with CRLF), line
 * ends canonical. from_charset (may be NULL) names the charset assumed for
 * 8-bit text that is not UTF-8 (else it is repaired lossily). */
mpart *mpart_rebuild(const mpart *p, const char *from_charset);

/* Base64 and quoted-printable (RFC 2045 §6.7, §6.8), for the builders and
 * tests. Encoders wrap at 76 columns with CRLF. malloc'd. */
char *mpart_b64enc(const unsigned char *d, size_t n, size_t *outlen);
char *mpart_b64dec(const char *s, size_t n, size_t *outlen);
char *mpart_qpenc(const char *s, size_t n, size_t *outlen);
char *mpart_qpdec(const char *s, size_t n, size_t *outlen);

#endif
