/* ARC chains (see arc.h). Collection walks the header index once; each
 * ARC field is parsed where it stands (the first of its instance into the
 * set, later ones into a scratch signature, only to be counted), so a
 * message with thousands of ARC fields costs one parse each and no memory
 * past the 50 sets. Validation follows RFC 8617 §5.2 and stops at the first
 * failure, whose reason is kept; the signature checks are dkim_verify.c's.
 * Sealing builds the AMS and the AS with dkim.c's signer. Pure; any thread;
 * hostile input is an issue in the chain, never a crash. */
#include "msg/arc.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/kerr.h"
#include "msg/dkim_verify.h"

static const char *const AAR = "ARC-Authentication-Results";
static const char *const AMS = "ARC-Message-Signature";
static const char *const AS = "ARC-Seal";

const char *arc_cv_name(int cv)
{
    return cv == ARC_CV_PASS ? "pass" : cv == ARC_CV_FAIL ? "fail" : "none";
}

/* Records an issue: the chain fails; only the first reason is kept. */
static void issue(arc_chain *c, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void issue(arc_chain *c, const char *fmt, ...)
{
    if (!c->broken && c->cv != ARC_CV_FAIL) {
        va_list ap;
        va_start(ap, fmt);
        vsnprintf(c->reason, sizeof(c->reason), fmt, ap);
        va_end(ap);
    }
    c->broken = true;
    c->cv = ARC_CV_FAIL;
}

/* Skips whitespace, line folds and RFC 5322 comments (nested, with quoted
 * pairs); a comment left open runs to the end. */
static size_t skip_cfws(const char *s, size_t n, size_t i)
{
    while (i < n) {
        char ch = s[i];
        if (ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n') {
            i++;
        } else if (ch == '(') {
            int depth = 0;
            while (i < n) {
                if (s[i] == '\\' && i + 1 < n)
                    i++;
                else if (s[i] == '(')
                    depth++;
                else if (s[i] == ')' && --depth == 0) {
                    i++;
                    break;
                }
                i++;
            }
        } else {
            break;
        }
    }
    return i;
}

int arc_aar_instance(const char *v, size_t n)
{
    size_t i = skip_cfws(v, n, 0);
    if (i >= n || (v[i] != 'i' && v[i] != 'I'))
        return KERR_PARSE;
    i = skip_cfws(v, n, i + 1);
    if (i >= n || v[i] != '=')
        return KERR_PARSE;
    i = skip_cfws(v, n, i + 1);
    size_t d0 = i;
    unsigned long inst = 0;
    while (i < n && v[i] >= '0' && v[i] <= '9') {
        if (inst < 1000)
            inst = inst * 10 + (unsigned long)(v[i] - '0');
        i++;
    }
    if (i == d0)
        return KERR_PARSE;
    i = skip_cfws(v, n, i);
    if (i >= n || v[i] != ';')
        return KERR_PARSE;
    /* an authserv-id must follow (RFC 8601 §2.2) */
    i = skip_cfws(v, n, i + 1);
    if (i >= n || v[i] == ';')
        return KERR_PARSE;
    if (inst < 1 || inst > ARC_MAX_INSTANCE)
        return KERR_RANGE;
    return (int)inst;
}

void arc_collect(const hdr_index *ix, arc_chain *c)
{
    /* counts[instance - 1][0: AAR, 1: AMS, 2: AS] */
    unsigned counts[ARC_MAX_INSTANCE][3];
    memset(counts, 0, sizeof(counts));
    c->n = 0;
    c->any = c->broken = false;
    c->cv = ARC_CV_NONE;
    c->oldest_pass = 0;
    c->reason[0] = 0;
    dkim_sig *scratch = malloc(sizeof(*scratch));
    if (!scratch) {
        issue(c, "out of memory");
        return;
    }
    for (size_t i = 0; i < ix->n; i++) {
        const hdr_field *f = &ix->fields[i];
        int kind = hdr_name_eq(f, AAR) ? 0 : hdr_name_eq(f, AMS) ? 1 : hdr_name_eq(f, AS) ? 2 : -1;
        if (kind < 0)
            continue;
        c->any = true;
        const char *name = kind == 0 ? AAR : kind == 1 ? AMS : AS;
        const char *colon = memchr(f->raw, ':', f->raw_len);
        size_t off = colon ? (size_t)(colon + 1 - f->raw) : f->raw_len;
        int inst;
        char err[200] = "";
        if (kind == 0) {
            inst = arc_aar_instance(f->raw + off, f->raw_len - off);
            if (inst == KERR_RANGE) {
                issue(c, "An %s header has an invalid instance value", name);
                continue;
            }
            if (inst < 0) {
                issue(c, "An %s header could not be parsed", name);
                continue;
            }
        } else {
            /* the instance first, so that the first field of an instance
             * is parsed straight into its set */
            enum dkim_sig_kind k = kind == 1 ? DKIM_SIG_AMS : DKIM_SIG_AS;
            if (dkim_sig_parse_field_kind(k, f, scratch, err, sizeof(err)) != 0 &&
                scratch->instance == 0) {
                issue(c, "An %s header could not be parsed: %s", name, err);
                continue;
            }
            inst = scratch->instance;
            if (err[0]) {
                issue(c, "An %s header could not be parsed: %s", name, err);
                continue;
            }
        }
        arc_set *s = &c->sets[inst - 1];
        if (counts[inst - 1][kind]++ > 0)
            continue;
        if (kind == 0) {
            s->aar = f;
        } else if (kind == 1) {
            s->ams = f;
            dkim_sig_parse_field_kind(DKIM_SIG_AMS, f, &s->ams_sig, err, sizeof(err));
        } else {
            s->as = f;
            dkim_sig_parse_field_kind(DKIM_SIG_AS, f, &s->as_sig, err, sizeof(err));
        }
        if ((size_t)inst > c->n)
            c->n = (size_t)inst;
    }
    free(scratch);
    for (size_t i = 0; i < c->n; i++) {
        unsigned *k = counts[i];
        if (!k[0] && !k[1] && !k[2])
            continue;
        if (k[0] > 1 || k[1] > 1 || k[2] > 1) {
            char dup[100] = "";
            for (int j = 2; j >= 0; j--) /* in the order a set is written */
                if (k[j] > 1)
                    snprintf(dup + strlen(dup), sizeof(dup) - strlen(dup), "%s%s",
                             dup[0] ? ", " : "", j == 0 ? AAR : j == 1 ? AMS : AS);
            issue(c, "There are duplicate %s header(s) for instance %zu", dup, i + 1);
        } else if (!k[0] || !k[1] || !k[2]) {
            issue(c, "The ARC Set with instance %zu is missing some of its constituent headers",
                  i + 1);
        }
    }
    for (size_t i = 0; i + 1 < c->n; i++) {
        unsigned *k = counts[i];
        if (!k[0] && !k[1] && !k[2])
            issue(c, "The ARC Set with instance %zu is missing", i + 1);
    }
    if (c->broken)
        return;
    /* step 2: the newest seal says whether the chain already failed;
     * step 3.3: none for the first set, pass for the others */
    if (c->n && strncasecmp(c->sets[c->n - 1].as_sig.cv->value, "fail", 4) == 0) {
        issue(c, "The %s for instance %zu is marked as failing its chain validation", AS, c->n);
        return;
    }
    for (size_t i = 0; i < c->n; i++) {
        const dkim_tag *cv = c->sets[i].as_sig.cv;
        bool none = cv->value_len == 4 && strncasecmp(cv->value, "none", 4) == 0;
        bool pass = cv->value_len == 4 && strncasecmp(cv->value, "pass", 4) == 0;
        if (i == 0 && !none) {
            issue(c, "The %s for instance 1 is marked as cv=%.*s but that is invalid", AS,
                  (int)cv->value_len, cv->value);
            return;
        }
        if (i > 0 && !pass) {
            issue(c, "The %s for instance %zu is marked as cv=%.*s but that is invalid", AS, i + 1,
                  (int)cv->value_len, cv->value);
            return;
        }
    }
}

/* Verifies the AMS of set i (0-based); a dkim_result with the reason. */
static int check_ams(arc_chain *c, size_t i, const char *data, size_t len, const hdr_index *ix,
                     arc_key_fn keys, void *ctx, int64_t now, char *why, size_t wl)
{
    const arc_set *s = &c->sets[i];
    const char *const *recs = NULL;
    const size_t *lens = NULL;
    size_t n = 0;
    int r = keys(ctx, &s->ams_sig, &recs, &lens, &n, why, wl);
    if (r != 0)
        return r;
    return dkim_verify_field(data, len, ix, s->ams, &s->ams_sig, recs, lens, n, now, why, wl);
}

void arc_validate(arc_chain *c, const char *data, size_t len, const hdr_index *ix,
                  arc_key_fn keys, void *ctx, int64_t now)
{
    if (c->broken) {
        c->cv = ARC_CV_FAIL;
        return;
    }
    if (c->n == 0) {
        c->cv = ARC_CV_NONE;
        return;
    }
    char why[200];
    /* step 4: the newest AMS must validate */
    if (check_ams(c, c->n - 1, data, len, ix, keys, ctx, now, why, sizeof(why)) != DKIM_PASS) {
        issue(c, "The %s for instance %zu failed to validate: %s", AMS, c->n, why);
        return;
    }
    /* steps 5, 6: the oldest AMS that still validates, counting down */
    c->oldest_pass = 0;
    for (size_t i = c->n - 1; i-- > 0;) {
        if (check_ams(c, i, data, len, ix, keys, ctx, now, why, sizeof(why)) != DKIM_PASS) {
            c->oldest_pass = (int)i + 2;
            break;
        }
    }
    /* step 7: every AS, newest first, over the sets up to its own */
    const hdr_field *sealed[3 * ARC_MAX_INSTANCE];
    for (size_t i = c->n; i-- > 0;) {
        size_t ns = 0;
        for (size_t j = 0; j <= i; j++) {
            sealed[ns++] = c->sets[j].aar;
            sealed[ns++] = c->sets[j].ams;
            if (j < i)
                sealed[ns++] = c->sets[j].as;
        }
        const arc_set *s = &c->sets[i];
        const char *const *recs = NULL;
        const size_t *lens = NULL;
        size_t n = 0;
        int r = keys(ctx, &s->as_sig, &recs, &lens, &n, why, sizeof(why));
        if (r == 0)
            r = dkim_verify_seal(sealed, ns, s->as, &s->as_sig, recs, lens, n, now, why,
                                 sizeof(why));
        if (r != DKIM_PASS) {
            issue(c, "The %s for instance %zu failed to validate: %s", AS, i + 1, why);
            return;
        }
    }
    c->cv = ARC_CV_PASS;
}

/* The raw field of a whole header text ("Name: value\r\n"): without the
 * final line end. */
static size_t raw_len(const char *h, size_t n)
{
    while (n > 0 && (h[n - 1] == '\n' || h[n - 1] == '\r'))
        n--;
    return n;
}

/* One signature of the set: prepare, sign, finish. */
static char *sign_one(const dkim_sign_params *p, const dkim_arc_params *a, dkim_key *k,
                      const char *data, size_t len, int64_t now, size_t *out_len, char *err,
                      size_t errlen)
{
    dkim_sign_job job;
    if (dkim_arc_prepare(p, a, data, len, now, &job, err, errlen) != 0)
        return NULL;
    unsigned char sig[DKIM_MAX_SIG];
    size_t siglen = 0;
    char *h = NULL;
    if (dkim_sign_digest(k, job.digest, sig, &siglen, err, errlen) == 0) {
        h = dkim_sign_finish(&job, sig, siglen, out_len);
        if (!h)
            snprintf(err, errlen, "out of memory");
    }
    dkim_sign_job_fini(&job);
    return h;
}

char *arc_seal(const arc_chain *c, const dkim_sign_params *p, dkim_key *k, const char *aar,
               size_t aar_len, const char *data, size_t len, int64_t now, size_t *out_len,
               char *err, size_t errlen)
{
    if (c->broken || c->cv == ARC_CV_FAIL || c->n >= ARC_MAX_INSTANCE) {
        snprintf(err, errlen, "%s", c->n >= ARC_MAX_INSTANCE
                                        ? "the chain already has 50 ARC sets"
                                        : "the chain has failed; it cannot be sealed");
        return NULL;
    }
    if (p->alg != dkim_key_alg(k)) {
        snprintf(err, errlen, "the key does not match the signing algorithm");
        return NULL;
    }
    int inst = (int)c->n + 1;
    /* the AMS signs the message as it will be, with the new AAR on top */
    char *with_aar = malloc(aar_len + len + 1);
    if (!with_aar) {
        snprintf(err, errlen, "out of memory");
        return NULL;
    }
    memcpy(with_aar, aar, aar_len);
    memcpy(with_aar + aar_len, data, len);
    with_aar[aar_len + len] = 0;
    dkim_arc_params ap = {.instance = inst};
    size_t ams_len = 0, as_len = 0;
    char *ams = sign_one(p, &ap, k, with_aar, aar_len + len, now, &ams_len, err, errlen);
    char *as = NULL, *out = NULL;
    if (!ams)
        goto done;
    const char *fields[3 * ARC_MAX_INSTANCE];
    size_t lens[3 * ARC_MAX_INSTANCE], nf = 0;
    for (size_t i = 0; i < c->n; i++) {
        const hdr_field *fs[3] = {c->sets[i].aar, c->sets[i].ams, c->sets[i].as};
        for (int j = 0; j < 3; j++) {
            fields[nf] = fs[j]->raw;
            lens[nf++] = fs[j]->raw_len;
        }
    }
    fields[nf] = aar;
    lens[nf++] = raw_len(aar, aar_len);
    fields[nf] = ams;
    lens[nf++] = raw_len(ams, ams_len);
    dkim_arc_params sp = {.instance = inst,
                          .cv = c->n ? "pass" : "none",
                          .fields = fields,
                          .field_lens = lens,
                          .n_fields = nf};
    as = sign_one(p, &sp, k, NULL, 0, now, &as_len, err, errlen);
    if (!as)
        goto done;
    size_t total = as_len + ams_len + aar_len + len;
    out = malloc(total + 1);
    if (!out) {
        snprintf(err, errlen, "out of memory");
        goto done;
    }
    memcpy(out, as, as_len);
    memcpy(out + as_len, ams, ams_len);
    memcpy(out + as_len + ams_len, with_aar, aar_len + len);
    out[total] = 0;
    *out_len = total;
done:
    free(as);
    free(ams);
    free(with_aar);
    return out;
}
