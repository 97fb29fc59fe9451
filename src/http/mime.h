/* Building RFC 5322 / MIME messages for the injection API's builder form:
 * text and HTML alternatives, inline (multipart/related) and attached
 * (multipart/mixed) parts, RFC 2047 header encoding, quoted-printable and
 * base64 bodies, CRLF line ends. Pure code, any thread. */
#ifndef KUMOD_HTTP_MIME_H
#define KUMOD_HTTP_MIME_H
#include <stdbool.h>
#include <stddef.h>

typedef struct mime_header {
    const char *name;
    const char *value; /* UTF-8; encoded as needed */
    bool encoded;      /* value is already in wire form (mime_mailbox output) */
} mime_header;

typedef struct mime_attachment {
    const unsigned char *data;
    size_t len;
    const char *content_type;
    const char *file_name;  /* may be NULL */
    const char *content_id; /* may be NULL; makes the part inline */
} mime_attachment;

typedef struct mime_spec {
    const char *text, *html, *amp_html; /* bodies (UTF-8), NULL when absent */
    const mime_header *headers;         /* top-level headers, in order */
    size_t n_headers;
    const mime_attachment *attachments;
    size_t n_attachments;
    const char *message_id; /* "<...>" added when no Message-ID header is given; may be NULL */
} mime_spec;

/* Builds the whole message. Date and MIME-Version are added unless given.
 * Returns malloc'd bytes (NUL-terminated) and the length in *len, or NULL
 * with the reason in err. */
char *mime_build(const mime_spec *spec, size_t *len, char *err, size_t errlen);

/* A mailbox for From/To/Reply-To: "Name <addr>", the name quoted or RFC 2047
 * encoded as needed, or just "addr". malloc'd. */
char *mime_mailbox(const char *name, const char *addr);

/* True when addr looks like local@domain (no spaces, brackets or controls). */
bool mime_addr_valid(const char *addr);

/* Standard base64 (RFC 4648) with or without padding; whitespace is
 * skipped. Returns 0 and a malloc'd buffer, or KERR_PARSE. */
int mime_b64_decode(const char *in, size_t inlen, unsigned char **out, size_t *outlen);
/* Base64 without line breaks. malloc'd, NUL-terminated. */
char *mime_b64_encode(const unsigned char *in, size_t len);

/* Copies buf turning bare LF and bare CR into CRLF. malloc'd; *outlen set. */
char *mime_normalize_crlf(const char *buf, size_t len, size_t *outlen);

/* RFC 5322 date of now: "Tue, 1 Jul 2003 10:52:37 +0000". */
void mime_date_now(char *buf, size_t len);

#endif
