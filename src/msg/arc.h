/* ARC, the Authenticated Received Chain (RFC 8617): the ARC sets of a
 * message (ARC-Authentication-Results, ARC-Message-Signature and ARC-Seal
 * with the same i= instance), their structure, the validation of the chain
 * (cv=none/pass/fail with the first reason, and the oldest-pass), and the
 * sealing of a new set. An ARC signature is a DKIM signature under another
 * name: parsing, canonicalization, hashing, key records and signing are
 * those of dkim.c and dkim_verify.c. Pure functions with no I/O: the caller
 * fetches the keys (src/lua/lib/arc.c) and hands them in through a
 * callback. Any thread. */
#ifndef KUMOD_MSG_ARC_H
#define KUMOD_MSG_ARC_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "msg/dkim.h"
#include "msg/headers.h"

#define ARC_MAX_INSTANCE DKIM_ARC_MAX_INSTANCE /* 50 (RFC 8617 §4.2.1) */

enum arc_cv { ARC_CV_NONE = 0, ARC_CV_PASS, ARC_CV_FAIL };
const char *arc_cv_name(int cv); /* "none", "pass", "fail" */

typedef struct arc_set {
    const hdr_field *aar, *ams, *as; /* fields of the index the chain was built from */
    dkim_sig ams_sig, as_sig;        /* parsed; tags point into the message */
} arc_set;

typedef struct arc_chain {
    size_t n;                       /* sets 1..n (n: the highest instance found) */
    arc_set sets[ARC_MAX_INSTANCE]; /* sets[i - 1] is instance i */
    bool any;                       /* the message has some ARC header field */
    bool broken;                    /* a structural issue: the chain fails */
    int cv;                         /* enum arc_cv, once validated */
    int oldest_pass;                /* RFC 8617 §5.2 step 6; 0: every AMS validates */
    char reason[320];               /* the first issue found ("" without one) */
} arc_chain;

/* The instance of an ARC-Authentication-Results value ("i=N; authserv-id
 * ..."): 1..50, KERR_RANGE for another number, KERR_PARSE when the value
 * does not start with i=N; and an authserv-id. */
int arc_aar_instance(const char *value, size_t len);

/* Collects the ARC sets of the message whose header index is ix into *c
 * (a zeroed chain, about 200 KB: allocate it) and checks their structure
 * (RFC 8617 §5.2 steps 1 to 3: parse, one of each field per instance,
 * instances 1..N without gaps, cv= none for 1 and pass above). Never
 * fails: issues are recorded (c->broken, c->reason). */
void arc_collect(const hdr_index *ix, arc_chain *c);

/* Hands out the TXT records of sig's key: 0 with recs/lens/n set (valid
 * during the call to arc_validate), or DKIM_TEMPERROR / DKIM_PERMERROR with
 * the reason. */
typedef int (*arc_key_fn)(void *ctx, const dkim_sig *sig, const char *const **recs,
                          const size_t **lens, size_t *n, char *reason, size_t rlen);

/* Validates the chain (steps 4 to 8: the newest AMS, the oldest-pass, each
 * AS newest first) of data (the message c was collected from) at time now.
 * Sets c->cv, c->oldest_pass and, on failure, c->reason. */
void arc_validate(arc_chain *c, const char *data, size_t len, const hdr_index *ix,
                  arc_key_fn keys, void *ctx, int64_t now);

/* Seals the message: with the AAR field aar (a whole "ARC-Authentication-
 * Results: i=N; ...\r\n" for N = c->n + 1), signs an ARC-Message-Signature
 * with p and k over aar + data, then an ARC-Seal (cv=none for the first set,
 * pass after) over the sets of c and the new AAR and AMS. c must not have
 * failed. Returns the new message, "ARC-Seal, ARC-Message-Signature, AAR,
 * data", malloc'd, or NULL with err. Both signatures are made on the
 * calling thread. */
char *arc_seal(const arc_chain *c, const dkim_sign_params *p, dkim_key *k, const char *aar,
               size_t aar_len, const char *data, size_t len, int64_t now, size_t *out_len,
               char *err, size_t errlen);

#endif
