/* DKIM signatures (RFC 6376, with RFC 8463 for Ed25519): signing keys,
 * the DKIM-Signature header of a message, and the tag-list parser that
 * verification and the fuzz harness use.
 *
 * Signing is split in three steps so that the costly one can run on a
 * worker thread without sharing the message: dkim_sign_prepare hashes the
 * body and the signed header fields (cheap, on the message's thread), then
 * dkim_sign_digest runs the private-key operation on the 32-byte digest
 * (about a millisecond for RSA-2048; any thread), then dkim_sign_finish
 * writes the header. Keys are parsed once (dkim_key_parse) and shared by
 * reference between threads; OpenSSL 3 allows concurrent signing with one
 * EVP_PKEY. Errors are KERR_* codes with a message in err. */
#ifndef KUMOD_MSG_DKIM_H
#define KUMOD_MSG_DKIM_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "msg/dkim_canon.h"

enum dkim_alg { DKIM_ALG_RSA_SHA256 = 0, DKIM_ALG_ED25519_SHA256 = 1 };

/* A private key of the given algorithm. */
typedef struct dkim_key dkim_key;

/* Parses key data: PEM (PKCS#1 "RSA PRIVATE KEY" or PKCS#8 "PRIVATE
 * KEY") or PKCS#8 DER (v1 or v2 for Ed25519). A key of another type than alg
 * is refused. *out holds one reference. */
int dkim_key_parse(enum dkim_alg alg, const void *data, size_t len, dkim_key **out, char *err,
                   size_t errlen);
void dkim_key_ref(dkim_key *k);
void dkim_key_unref(dkim_key *k); /* any thread; NULL is fine */
enum dkim_alg dkim_key_alg(const dkim_key *k);
/* Largest signature the key makes, in bytes. */
size_t dkim_key_sig_size(const dkim_key *k);

#define DKIM_MAX_SIG 1024 /* RSA-8192 */

/* What to sign and how. Strings are borrowed for the call. */
typedef struct dkim_sign_params {
    enum dkim_alg alg;
    enum dkim_canon header_canon, body_canon;
    const char *domain;         /* d= */
    const char *selector;       /* s= */
    const char *const *headers; /* h=, as configured (must include From) */
    size_t n_headers;
    bool over_sign;     /* sign each listed name once more than the message has it */
    bool body_length;   /* l= */
    bool reporting;     /* r=y (RFC 6651) */
    const char *auid;   /* i= or NULL */
    const char *atps;   /* atps= (RFC 6541) or NULL */
    const char *atpsh;  /* atpsh= ("sha1", "sha256", "none") or NULL */
    int64_t expiration; /* x = t + expiration when > 0 */
} dkim_sign_params;

/* Checks the parameters (From among the headers, tag values that fit a
 * tag list). 0 or KERR_INVAL with err. */
int dkim_sign_params_check(const dkim_sign_params *p, char *err, size_t errlen);

typedef struct dkim_sign_job {
    char *hdr; /* "DKIM-Signature: ...; b=" (folded), malloc'd */
    size_t hdr_len;
    size_t col; /* column at the end of hdr, for folding the signature */
    unsigned char digest[32];
} dkim_sign_job;

/* Step 1: canonicalizes and hashes data (a whole message) at time now
 * (seconds since the epoch). Fills *job (release with dkim_sign_job_fini). */
int dkim_sign_prepare(const dkim_sign_params *p, const char *data, size_t len, int64_t now,
                      dkim_sign_job *job, char *err, size_t errlen);
/* Step 2: the signature of digest; sig holds DKIM_MAX_SIG bytes. */
int dkim_sign_digest(dkim_key *k, const unsigned char digest[32], unsigned char *sig,
                     size_t *siglen, char *err, size_t errlen);
/* Step 3: the complete header field, folded, ending in CRLF; malloc'd. */
char *dkim_sign_finish(const dkim_sign_job *job, const unsigned char *sig, size_t siglen,
                       size_t *out_len);
void dkim_sign_job_fini(dkim_sign_job *job);

/* ARC (RFC 8617) headers are DKIM signatures under other names; the same
 * three steps make them. */
#define DKIM_ARC_MAX_INSTANCE 50

typedef struct dkim_arc_params {
    int instance;              /* i=, 1..DKIM_ARC_MAX_INSTANCE */
    const char *cv;            /* ARC-Seal: cv= ("none", "pass"); NULL: ARC-Message-Signature */
    const char *const *fields; /* ARC-Seal: the raw fields it seals, in order, without EOL */
    const size_t *field_lens;
    size_t n_fields;
} dkim_arc_params;

/* Step 1 for an ARC-Message-Signature (i=, a=, d=, s=, c=, t=, x=, bh=, h=
 * from p: no v=, AUID, l=, r= or ATPS; ARC-Seal is never in h=) or, when
 * arc->cv is set, an ARC-Seal (i=, cv=, a=, d=, s=, t=, x=; the header hash
 * covers arc->fields, relaxed, and data is not read). */
int dkim_arc_prepare(const dkim_sign_params *p, const dkim_arc_params *arc, const char *data,
                     size_t len, int64_t now, dkim_sign_job *job, char *err, size_t errlen);

/* All three steps on the calling thread. */
char *dkim_sign(const dkim_sign_params *p, dkim_key *k, const char *data, size_t len, int64_t now,
                size_t *out_len, char *err, size_t errlen);

/* ---- tag lists (RFC 6376 §3.2) ---- */

typedef struct dkim_tag {
    const char *name, *value;   /* point into the parsed text */
    size_t name_len, value_len; /* value without surrounding FWS */
} dkim_tag;

#define DKIM_MAX_TAGS 64

/* Parses a tag list; duplicate names and bad syntax are KERR_PARSE. */
int dkim_tags_parse(const char *s, size_t n, dkim_tag *tags, size_t max, size_t *count);
/* The tag named name, or NULL. */
const dkim_tag *dkim_tag_find(const dkim_tag *tags, size_t count, const char *name);

/* Which header a signature value comes from. */
enum dkim_sig_kind {
    DKIM_SIG_DKIM = 0, /* DKIM-Signature */
    DKIM_SIG_AMS,      /* ARC-Message-Signature: i= is the instance, no v= needed */
    DKIM_SIG_AS,       /* ARC-Seal: i=, cv=; no bh=, h= or c= (relaxed) */
};

/* A DKIM-Signature value checked as RFC 6376 §6.1.1 asks (or an ARC
 * header's, as RFC 8617 §4.1 asks). */
typedef struct dkim_sig {
    dkim_tag tags[DKIM_MAX_TAGS];
    size_t n_tags;
    enum dkim_sig_kind kind;
    int instance;        /* ARC: i= (1..50) */
    const dkim_tag *cv;  /* ARC-Seal: cv= */
    enum dkim_alg alg;
    enum dkim_canon header_canon, body_canon;
    const dkim_tag *d, *s, *h, *b, *bh, *i; /* h, bh NULL in a seal; i NULL in ARC */
    bool has_l;
    uint64_t l;
    int64_t t, x; /* -1 when absent */
} dkim_sig;

/* 0, or KERR_PARSE / KERR_INVAL with a reason in err (a permerror). */
int dkim_sig_parse(const char *value, size_t len, dkim_sig *out, char *err, size_t errlen);
/* The same for any kind; an ARC instance outside 1..50 is KERR_RANGE. */
int dkim_sig_parse_kind(enum dkim_sig_kind kind, const char *value, size_t len, dkim_sig *out,
                        char *err, size_t errlen);

#endif
