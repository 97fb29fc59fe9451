/* DMARC evaluation (see dmarc.h). Stateless: each call reads the answers
 * it is given and fills an outcome; nothing is kept between calls. A
 * message whose From domain has no usable record anywhere gets "none"
 * (§6.6.3: DMARC does not apply), a DNS failure "temperror", a record that
 * cannot be read "permerror". */
#include "msg/dmarc.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/kerr.h"
#include "msg/psl.h"

/* snprintf into a fixed buffer where cutting a long name short is fine */
static void say(char *buf, size_t len, const char *fmt, ...) __attribute__((format(printf, 3, 4)));
static void say(char *buf, size_t len, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(buf, len, fmt, ap);
    va_end(ap);
}

const char *dmarc_result_name(int r)
{
    static const char *const n[] = {"none", "pass", "fail", "temperror", "permerror"};
    return r >= 0 && r <= DMARC_PERMERROR ? n[r] : "permerror";
}

const char *dmarc_policy_name(int p)
{
    static const char *const n[] = {"none", "quarantine", "reject"};
    return p >= 0 && p <= DMARC_P_REJECT ? n[p] : "none";
}

static int policy_of(const char *v, size_t n)
{
    if (n == 4 && strncasecmp(v, "none", 4) == 0)
        return DMARC_P_NONE;
    if (n == 10 && strncasecmp(v, "quarantine", 10) == 0)
        return DMARC_P_QUARANTINE;
    if (n == 6 && strncasecmp(v, "reject", 6) == 0)
        return DMARC_P_REJECT;
    return -1;
}

static bool is_wsp(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

int dmarc_record_parse(const char *txt, size_t len, dmarc_record *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    out->sp = -1;
    out->pct = 100;
    bool first = true, have_p = false, bad_p = false, bad_sp = false, have_rua = false;
    size_t i = 0;
    while (i < len) {
        size_t e = i;
        while (e < len && txt[e] != ';')
            e++;
        size_t a = i, b = e;
        while (a < b && is_wsp(txt[a]))
            a++;
        while (b > a && is_wsp(txt[b - 1]))
            b--;
        i = e + 1;
        if (a == b) {
            if (first)
                break;
            continue;
        }
        const char *eq = memchr(txt + a, '=', b - a);
        if (!eq) {
            if (first)
                break;
            continue; /* §6.3: unknown or bad tags are ignored */
        }
        size_t nb = (size_t)(eq - txt), ve = b, vs = nb + 1;
        while (nb > a && is_wsp(txt[nb - 1]))
            nb--;
        while (vs < ve && is_wsp(txt[vs]))
            vs++;
        const char *name = txt + a, *val = txt + vs;
        size_t nl = nb - a, vl = ve - vs;
        if (first) {
            if (nl != 1 || name[0] != 'v' || vl != 6 || memcmp(val, "DMARC1", 6) != 0)
                break;
            first = false;
            continue;
        }
        if (nl == 1 && name[0] == 'p') {
            have_p = true;
            out->p = policy_of(val, vl);
            bad_p = out->p < 0;
        } else if (nl == 2 && memcmp(name, "sp", 2) == 0) {
            out->sp = policy_of(val, vl);
            bad_sp = out->sp < 0;
        } else if (nl == 5 && memcmp(name, "adkim", 5) == 0) {
            out->adkim_strict = vl == 1 && (val[0] == 's' || val[0] == 'S');
        } else if (nl == 4 && memcmp(name, "aspf", 4) == 0) {
            out->aspf_strict = vl == 1 && (val[0] == 's' || val[0] == 'S');
        } else if (nl == 3 && memcmp(name, "pct", 3) == 0) {
            int v = 0;
            bool ok = vl > 0 && vl <= 3;
            for (size_t k = 0; ok && k < vl; k++) {
                ok = isdigit((unsigned char)val[k]);
                v = v * 10 + (val[k] - '0');
            }
            out->pct = ok && v <= 100 ? v : 100;
        } else if (nl == 3 && memcmp(name, "rua", 3) == 0) {
            have_rua = vl > 7 && strncasecmp(val, "mailto:", 7) == 0;
        }
    }
    if (first) {
        snprintf(err, errlen, "record does not start with v=DMARC1");
        return KERR_PARSE;
    }
    if (!have_p || bad_p || bad_sp) {
        /* §6.6.3 step 6 */
        if (!have_rua) {
            snprintf(err, errlen, "%s", !have_p  ? "missing p= tag"
                                        : bad_p ? "invalid p= tag"
                                                : "invalid sp= tag");
            return KERR_PARSE;
        }
        out->p = DMARC_P_NONE;
        out->sp = -1;
        out->p_defaulted = true;
    }
    return 0;
}

static void lower_copy(const char *s, char *out, size_t outlen)
{
    size_t n = strlen(s);
    if (n > 0 && s[n - 1] == '.')
        n--;
    if (n >= outlen)
        n = outlen - 1;
    for (size_t i = 0; i < n; i++)
        out[i] = (char)tolower((unsigned char)s[i]);
    out[n] = 0;
}

bool dmarc_aligned(const char *a, const char *b, bool strict)
{
    char x[256], y[256];
    lower_copy(a, x, sizeof(x));
    lower_copy(b, y, sizeof(y));
    if (!x[0] || !y[0])
        return false;
    if (strcmp(x, y) == 0)
        return true;
    if (strict)
        return false;
    char ox[256], oy[256];
    if (!psl_org_domain(x, ox, sizeof(ox)) || !psl_org_domain(y, oy, sizeof(oy)))
        return false;
    return strcmp(ox, oy) == 0;
}

enum { FOUND = 0, NOTHING, MULTIPLE, TEMP, PEND };

/* Looks for the one DMARC record at _dmarc.domain. */
static int discover(const char *domain, spf_lookup_fn fn, void *ud, dmarc_outcome *out,
                    const char **txt, size_t *txt_len)
{
    char name[270];
    say(name, sizeof(name), "_dmarc.%s", domain);
    spf_answer a;
    memset(&a, 0, sizeof(a));
    if (fn(ud, SPF_Q_TXT, name, &a) == SPF_PENDING) {
        say(out->need_name, sizeof(out->need_name), "%s", name);
        return PEND;
    }
    if (a.status == SPF_DNS_FAIL) {
        say(out->reason, sizeof(out->reason), "DNS records could not be resolved for %s: %s",
                 name, a.error ? a.error : "DNS failure");
        return TEMP;
    }
    size_t found = 0;
    for (size_t i = 0; a.status == SPF_DNS_OK && i < a.n; i++) {
        size_t l = a.lens ? a.lens[i] : strlen(a.items[i]);
        /* §6.6.3 step 3: records that do not start with "v=DMARC1" are dropped */
        size_t k = 0;
        if (l >= 8 && memcmp(a.items[i], "v=DMARC1", 8) == 0) {
            k = 8;
            while (k < l && is_wsp(a.items[i][k]))
                k++;
            if (k == l || a.items[i][k] == ';') {
                found++;
                *txt = a.items[i];
                *txt_len = l;
            }
        }
    }
    say(out->policy_domain, sizeof(out->policy_domain), "%s", domain);
    return found == 0 ? NOTHING : found == 1 ? FOUND : MULTIPLE;
}

int dmarc_check(const dmarc_input *in, spf_lookup_fn fn, void *ud, dmarc_outcome *out)
{
    memset(out, 0, sizeof(*out));
    out->disposition = out->published = -1;
    char from[256], org[256];
    lower_copy(in->from_domain ? in->from_domain : "", from, sizeof(from));
    if (!from[0] || !strchr(from, '.')) {
        out->result = DMARC_NONE;
        say(out->reason, sizeof(out->reason), "invalid From domain '%.200s'", from);
        return 0;
    }
    const char *txt = NULL;
    size_t txt_len = 0;
    bool at_org = false;
    int d = discover(from, fn, ud, out, &txt, &txt_len);
    if (d == NOTHING && psl_org_domain(from, org, sizeof(org)) && strcmp(org, from) != 0) {
        at_org = true;
        d = discover(org, fn, ud, out, &txt, &txt_len);
    }
    switch (d) {
    case PEND:
        return SPF_PENDING;
    case TEMP:
        out->result = DMARC_TEMPERROR;
        return 0;
    case NOTHING:
        out->result = DMARC_NONE;
        say(out->reason, sizeof(out->reason), "no DMARC records found for %s", from);
        return 0;
    case MULTIPLE:
        out->result = DMARC_NONE;
        say(out->reason, sizeof(out->reason), "multiple DMARC records found for %s",
                 out->policy_domain);
        return 0;
    }
    char err[120];
    if (dmarc_record_parse(txt, txt_len, &out->rec, err, sizeof(err)) != 0) {
        out->result = DMARC_PERMERROR;
        say(out->reason, sizeof(out->reason), "invalid DMARC record at _dmarc.%s: %s",
                 out->policy_domain, err);
        return 0;
    }
    out->have_record = true;
    for (size_t i = 0; i < in->n_dkim && !out->dkim_aligned; i++)
        out->dkim_aligned = in->dkim_domains[i] &&
                            dmarc_aligned(in->dkim_domains[i], from, out->rec.adkim_strict);
    out->spf_aligned = in->spf_domain && dmarc_aligned(in->spf_domain, from, out->rec.aspf_strict);
    if (out->dkim_aligned || out->spf_aligned) {
        out->result = DMARC_PASS;
        say(out->reason, sizeof(out->reason), "%s%s%s aligned with %s",
                 out->dkim_aligned ? "DKIM" : "", out->dkim_aligned && out->spf_aligned ? " and " : "",
                 out->spf_aligned ? "SPF" : "", from);
        return 0;
    }
    out->result = DMARC_FAIL;
    int pol = at_org && out->rec.sp >= 0 ? out->rec.sp : out->rec.p;
    out->published = pol;
    /* §6.6.4: pct selects the share of failing mail the policy applies to;
     * the rest gets the next policy down */
    bool sampled_out = in->sample >= out->rec.pct;
    out->disposition = !sampled_out                   ? pol
                       : pol == DMARC_P_REJECT      ? DMARC_P_QUARANTINE
                                                    : DMARC_P_NONE;
    say(out->reason, sizeof(out->reason),
             "neither DKIM (adkim=%c) nor SPF (aspf=%c) is aligned with %s%s",
             out->rec.adkim_strict ? 's' : 'r', out->rec.aspf_strict ? 's' : 'r', from,
             sampled_out ? "; policy sampled out by pct" : "");
    return 0;
}
