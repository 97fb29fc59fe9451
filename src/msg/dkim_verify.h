/* DKIM verification (RFC 6376 §6, RFC 8463 for Ed25519, RFC 8301 key
 * sizes): the public-key record parser (selector._domainkey TXT) and the
 * check of one DKIM-Signature field of a message against the keys found.
 * Pure functions with no I/O: the caller looks the keys up (src/lua/lib/
 * dkim_verify.c on the reactor) and hands the TXT records in. The outcome
 * is an RFC 8601 result with a reason; a failure never aborts. Any thread. */
#ifndef KUMOD_MSG_DKIM_VERIFY_H
#define KUMOD_MSG_DKIM_VERIFY_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "msg/dkim.h"
#include "msg/headers.h"

/* RFC 8601 §2.7.1 results. */
enum dkim_result {
    DKIM_PASS = 0,
    DKIM_FAIL,      /* the signature or body hash does not verify */
    DKIM_NEUTRAL,
    DKIM_TEMPERROR, /* the key could not be fetched (DNS failure) */
    DKIM_PERMERROR, /* malformed signature, no or unusable key, expired */
    DKIM_NONE,
};
const char *dkim_result_name(int r); /* "pass", "fail", ... */

/* One public key record (RFC 6376 §3.6.1). */
typedef struct dkim_pubkey dkim_pubkey;

/* Parses a key record. Returns 0 with *out set, or a result (DKIM_PERMERROR)
 * with the reason in err: syntax, v= other than DKIM1, k= unknown, h=
 * without sha256, s= without email or *, p= missing, empty (revoked) or not
 * a key, RSA under 1024 bits. */
int dkim_pubkey_parse(const char *txt, size_t len, dkim_pubkey **out, char *err, size_t errlen);
void dkim_pubkey_free(dkim_pubkey *k);
enum dkim_alg dkim_pubkey_alg(const dkim_pubkey *k);

#define DKIM_MAX_VERIFY 10 /* signatures checked per message, as KumoMTA */

/* The query name of sig's key, "selector._domainkey.domain", into out.
 * false when d= or s= cannot be a DNS name (a permerror). */
bool dkim_key_name(const dkim_sig *sig, char *out, size_t outlen);

/* Checks signature field f of data (a whole message; f from its header
 * index ix) whose value parsed into sig, against the TXT records of its key
 * (recs/lens, n of them; a key verifying is enough), at time now. Returns a
 * dkim_result with the reason in reason ("" for pass). */
int dkim_verify_field(const char *data, size_t len, const hdr_index *ix, const hdr_field *f,
                      const dkim_sig *sig, const char *const *recs, const size_t *lens, size_t n,
                      int64_t now, char *reason, size_t rlen);

/* Checks ARC-Seal field f (parsed into sig, kind DKIM_SIG_AS) over the
 * fields it seals (the ARC sets up to its own, each AAR, AMS, AS in
 * instance order, without f itself), relaxed, as RFC 8617 §5.1.1 says.
 * Same keys and results as dkim_verify_field; no body is read. */
int dkim_verify_seal(const hdr_field *const *sealed, size_t n_sealed, const hdr_field *f,
                     const dkim_sig *sig, const char *const *recs, const size_t *lens, size_t n,
                     int64_t now, char *reason, size_t rlen);

/* Parses the value of field f (after "Name:") into sig, whose tags then
 * point into data. 0 or KERR_* with the reason (a permerror). */
int dkim_sig_parse_field(const hdr_field *f, dkim_sig *sig, char *err, size_t errlen);
/* The same for an ARC-Message-Signature or ARC-Seal field. */
int dkim_sig_parse_field_kind(enum dkim_sig_kind kind, const hdr_field *f, dkim_sig *sig,
                              char *err, size_t errlen);

/* The header.b property (RFC 6008): the first 8 characters of the b= value
 * without whitespace, longer by 2 while another of the n signatures
 * shares that prefix. Writes into out (NUL-terminated). */
void dkim_header_b(const dkim_sig *const *all, size_t n, size_t self, char *out, size_t outlen);

#endif
