/* SPF, RFC 7208: the record parser (§4.6, §12), macro expansion (§7) and
 * check_host() (§4, §5, §6) with the processing limits of §4.6.4 (10 DNS
 * mechanisms and redirects, 2 void lookups, 10 MX or PTR names).
 *
 * Pure code with no I/O: the caller answers DNS questions through a lookup
 * function. An evaluation that needs an answer the caller does not have yet
 * stops with SPF_PENDING and names the question; the caller fetches it
 * (asynchronously) and runs the evaluation again from the start with that
 * answer added. Evaluation is deterministic, so each run goes one question
 * further; with the limits above a check makes at most a few hundred
 * questions (src/lua/lib/spf_lua.c drives it on the reactor). Any thread. */
#ifndef KUMOD_MSG_SPF_H
#define KUMOD_MSG_SPF_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

/* RFC 7208 §2.6 results. */
enum spf_result {
    SPF_NONE = 0,
    SPF_NEUTRAL,
    SPF_PASS,
    SPF_FAIL,
    SPF_SOFTFAIL,
    SPF_TEMPERROR,
    SPF_PERMERROR,
};
/* "none", "neutral", "pass", "fail", "softfail", "temperror", "permerror". */
const char *spf_result_name(int r);

/* DNS question types, by their numbers. For SPF_Q_PTR the name is the
 * client address as text ("192.0.2.1", "2001:db8::1"). */
enum spf_qtype { SPF_Q_A = 1, SPF_Q_PTR = 12, SPF_Q_MX = 15, SPF_Q_TXT = 16, SPF_Q_AAAA = 28 };

enum spf_dns_status {
    SPF_DNS_OK = 0,   /* n > 0 */
    SPF_DNS_NXDOMAIN, /* RCODE 3 */
    SPF_DNS_NODATA,   /* RCODE 0, no answer of the type */
    SPF_DNS_FAIL,     /* anything else: timeout, SERVFAIL... (error says why) */
};

/* One answer, borrowed by the evaluation until spf_check_host returns.
 * TXT: the records (lens[i] bytes each; NUL bytes possible); A/AAAA:
 * addresses as text; MX: the exchange names ("." for a null MX); PTR: the
 * names. Names may carry a trailing dot. */
typedef struct spf_answer {
    int status; /* enum spf_dns_status */
    const char *const *items;
    const size_t *lens; /* TXT only; NULL: strlen */
    size_t n;
    const char *error; /* SPF_DNS_FAIL: why, or NULL */
} spf_answer;

/* Answers (qtype, name) into *out and returns 0, or returns SPF_PENDING
 * when the answer is not known yet. name is lower case without a trailing
 * dot. */
#define SPF_PENDING 1
typedef int (*spf_lookup_fn)(void *ud, int qtype, const char *name, spf_answer *out);

typedef struct spf_params {
    const char *domain;    /* the domain to check (MAIL FROM's or HELO's) */
    const char *sender;    /* MAIL FROM; NULL or "": "postmaster@" domain */
    const char *helo;      /* %{h}; NULL: "unknown" */
    const char *client_ip; /* "192.0.2.1", "2001:db8::1" (IPv4-mapped IPv6 is IPv4) */
    const char *receiver;  /* %{r} in explanations; NULL: "unknown" */
    int64_t now;           /* %{t}: seconds since the epoch */
} spf_params;

#define SPF_REASON_MAX 512

typedef struct spf_outcome {
    int result; /* enum spf_result */
    char reason[SPF_REASON_MAX];
    /* SPF_PENDING: the question to answer before running again */
    int need_qtype;
    char need_name[256];
    unsigned dns_mechanisms, void_lookups; /* counted on the way */
} spf_outcome;

/* Runs check_host(). Returns 0 with out->result and out->reason, or
 * SPF_PENDING with out->need_qtype / need_name; KERR_INVAL for a client_ip
 * that is not an address, KERR_NOMEM. */
int spf_check_host(const spf_params *p, spf_lookup_fn fn, void *ud, spf_outcome *out);

/* ---- the record, exposed for tests and fuzzing ---------------------------- */

#define SPF_MAX_TERMS 128

typedef struct spf_term {
    char kind;      /* mechanism: 'A'll 'I'nclude 'a' 'm'x 'p'tr '4' '6' 'e'xists;
                       modifier: 'R'edirect 'X'exp 'U'nknown */
    char qualifier; /* '+', '-', '~', '?' (mechanisms) */
    const char *text; /* the whole term as written */
    size_t text_len;
    const char *spec; /* domain-spec / network / modifier value, or NULL */
    size_t spec_len;
    int cidr4, cidr6; /* -1: none given */
} spf_term;

typedef struct spf_record {
    spf_term terms[SPF_MAX_TERMS];
    size_t n;
    int redirect, exp; /* term indexes, -1 when absent */
} spf_record;

/* True when txt[0..len) is an SPF record ("v=spf1" then a space or the end,
 * case-insensitive, §4.5). */
bool spf_is_record(const char *txt, size_t len);
/* Parses a record (it must pass spf_is_record). Terms point into txt.
 * Returns 0, or KERR_PARSE with the reason in err. */
int spf_record_parse(const char *txt, size_t len, spf_record *out, char *err, size_t errlen);
/* Checks a macro-string (§7.1) without expanding it; explain allows the
 * c, r and t letters and spaces (an explanation TXT record). */
bool spf_macro_valid(const char *s, size_t n, bool explain, bool domain_spec);

#endif
