/* DMARC, RFC 7489: the policy record parser (§6.3, §6.4), identifier
 * alignment (§3.1, relaxed through the organizational domain of
 * msg/psl.h, or strict) and the evaluation of one message (§6.6): policy
 * discovery at the From domain then at its organizational domain, DKIM
 * and SPF alignment, p / sp / pct.
 *
 * Pure code with no I/O, driven like msg/spf.h: DNS TXT answers come from
 * a lookup function that may answer SPF_PENDING, and the caller runs
 * dmarc_check again once it has the answer (two questions at most). The
 * caller supplies the authenticated identifiers (the d= of each passing
 * DKIM signature, the domain SPF passed for). Any thread. */
#ifndef KUMOD_MSG_DMARC_H
#define KUMOD_MSG_DMARC_H
#include <stdbool.h>
#include <stddef.h>

#include "msg/spf.h"

enum dmarc_policy { DMARC_P_NONE = 0, DMARC_P_QUARANTINE, DMARC_P_REJECT };

typedef struct dmarc_record {
    int p;      /* enum dmarc_policy */
    int sp;     /* -1 when absent: p applies to subdomains */
    bool adkim_strict, aspf_strict;
    int pct;    /* 0..100 */
    bool p_defaulted; /* p was missing or invalid and rua made it "none" (§6.6.3 step 6) */
} dmarc_record;

/* Parses a record ("v=DMARC1; p=reject; ..."). Returns 0, or KERR_PARSE
 * with the reason in err (no v=DMARC1 first, p missing or invalid without
 * a rua= to fall back on). Bad optional tags take their defaults. */
int dmarc_record_parse(const char *txt, size_t len, dmarc_record *out, char *err, size_t errlen);

/* Whether identifier domain a is aligned with the From domain b: strict
 * is equality (case-insensitive), relaxed equal organizational domains. */
bool dmarc_aligned(const char *a, const char *b, bool strict);

/* RFC 7489 §11.2 results. */
enum dmarc_result { DMARC_NONE = 0, DMARC_PASS, DMARC_FAIL, DMARC_TEMPERROR, DMARC_PERMERROR };
const char *dmarc_result_name(int r); /* "none", "pass", ... */

typedef struct dmarc_input {
    const char *from_domain;
    const char *const *dkim_domains; /* d= of the DKIM signatures that passed */
    size_t n_dkim;
    const char *spf_domain; /* the domain SPF passed for, or NULL */
    int sample;             /* 0..99, against pct (§6.6.4) */
} dmarc_input;

typedef struct dmarc_outcome {
    int result;      /* enum dmarc_result */
    int disposition; /* after pct: enum dmarc_policy; for pass and errors -1 */
    int published;   /* the published policy that applied (p or sp), or -1 */
    char reason[300];
    bool have_record;
    dmarc_record rec;
    char policy_domain[260]; /* where the record was found */
    bool dkim_aligned, spf_aligned;
    /* SPF_PENDING: the TXT name to answer */
    char need_name[260];
} dmarc_outcome;

/* Returns 0 with out filled, or SPF_PENDING with out->need_name (a TXT
 * question). */
int dmarc_check(const dmarc_input *in, spf_lookup_fn fn, void *ud, dmarc_outcome *out);

const char *dmarc_policy_name(int p); /* "none", "quarantine", "reject" */

#endif
