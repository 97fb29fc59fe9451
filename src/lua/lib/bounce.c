/* Bounce rule files and the classifier built from them (see bounce.h).
 *
 * Rules are checked one by one as a file is read: each pattern goes through
 * rx_translate (Rust regex syntax, RX_PLAIN) and is compiled alone, so an
 * error names the file, the category and the pattern.
 *
 * Building makes a list of PCRE2 programs tried in rule order; the first
 * that matches names the category. Consecutive rules that PCRE2 anchors by
 * itself (^..., \A...: the status-code rules) are joined into one anchored
 * program,
 *     (?:P0)(*MARK:0)|(?:P1)(*MARK:1)|...
 * in which PCRE2 tries the alternatives in order at offset 0, so the lowest
 * rule number that matches wins (KumoMTA's RegexSet semantics) and the mark
 * names it; a failing alternative costs one attempt. Every other rule is a
 * program of its own: a search for a phrase anywhere in the line costs
 * length x rules attempts inside a join (measured: ~140 us per line with
 * the shipped rules), while a pattern on its own keeps PCRE2's start-of-match
 * optimizations (first code unit, start bitmap, required character), ~15x
 * less. A join larger than PCRE2's compiled-size limit is split in halves
 * until it compiles; a pattern that sets the x flag is never joined (a #
 * comment would swallow the wrapper's closing parenthesis). The translator
 * refuses backtracking verbs and backreferences, so a joined pattern can
 * neither set a mark of its own nor refer to a group number the join shifts.
 *
 * Classification runs on any thread: the programs are immutable, and the
 * match data is per thread (a pthread key frees it when the thread ends). A
 * match that exceeds rx's backtracking limits counts as no match and is
 * counted (bounce_limit_hits), never a stall. */
#include "lua/lib/bounce.h"

#include <errno.h>
#include <stdarg.h>
#include <jansson.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/kerr.h"
#include "lua/lib/rx.h"
#include "lua/lib/toml_json.h"

#define BOUNCE_MAX_FILE (64u << 20)
#define BOUNCE_MAX_LABEL 128
#define BOUNCE_SHOWN 200 /* bytes of a pattern quoted in an error */

const char *const bounce_predefined[] = {
    "InvalidRecipient", "DNSFailure",      "SpamBlock",        "SpamContent",
    "ProhibitedAttachment", "RelayDenied", "AutoReply",        "TransientFailure",
    "Subscribe",        "Unsubscribe",     "ChallengeResponse", "BadConfiguration",
    "BadConnection",    "BadDomain",       "ContentRelated",   "InactiveMailbox",
    "InvalidSender",    "MessageExpired",  "NoAnswerFromHost", "PolicyRelated",
    "ProtocolErrors",   "QuotaIssues",     "RelayingIssues",   "RoutingErrors",
    "SpamRelated",      "VirusRelated",    "AuthenticationFailed", "TooManyRecipients",
    "Uncategorized",    NULL,
};

struct rule {
    size_t label;   /* index into labels */
    char *tpat;     /* translated (PCRE2 syntax) */
    size_t tlen;
    bool anchored;  /* PCRE2 anchors it by itself */
    bool alone;     /* never joined: unanchored, or sets the x flag */
};

struct bounce_rules {
    struct rule *v;
    size_t n, cap;
    char **labels;
    size_t n_labels, cap_labels;
};

struct program {
    pcre2_code *re;
    size_t rule; /* for a program of one unjoined rule: its number */
    bool joined; /* the rule comes from the mark */
};

struct bounce_classifier {
    struct program *p;
    size_t n_p;
    size_t n_rules;
    const char **rule_label; /* by rule number, into labels */
    char **labels;
    size_t n_labels;
};

static atomic_ulong limit_hits;

unsigned long bounce_limit_hits(void)
{
    return atomic_load_explicit(&limit_hits, memory_order_relaxed);
}

/* ---- rules ------------------------------------------------------------------ */

bounce_rules *bounce_rules_new(void)
{
    return calloc(1, sizeof(bounce_rules));
}

void bounce_rules_free(bounce_rules *rs)
{
    if (!rs)
        return;
    for (size_t i = 0; i < rs->n; i++)
        free(rs->v[i].tpat);
    free(rs->v);
    for (size_t i = 0; i < rs->n_labels; i++)
        free(rs->labels[i]);
    free(rs->labels);
    free(rs);
}

size_t bounce_rules_count(const bounce_rules *rs)
{
    return rs ? rs->n : 0;
}

static int fail(char *err, size_t errlen, int rc, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));
static int fail(char *err, size_t errlen, int rc, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(err, errlen, fmt, ap);
    va_end(ap);
    return rc;
}

/* A label is a name, not text: no control characters, bounded length. A
 * predefined name in the wrong case is a typo that would otherwise create a
 * category of its own silently. */
static int check_label(const char *src, const char *l, char *err, size_t errlen)
{
    size_t n = strlen(l);
    if (n == 0)
        return fail(err, errlen, KERR_INVAL, "%s: rules: a category name may not be empty", src);
    if (n > BOUNCE_MAX_LABEL)
        return fail(err, errlen, KERR_INVAL,
                    "%s: rules: category '%.40s...' is longer than %d bytes", src, l,
                    BOUNCE_MAX_LABEL);
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)l[i] < 0x20 || l[i] == 0x7f)
            return fail(err, errlen, KERR_INVAL,
                        "%s: rules: category names may not hold control characters", src);
    for (const char *const *p = bounce_predefined; *p; p++)
        if (strcasecmp(*p, l) == 0 && strcmp(*p, l) != 0)
            return fail(err, errlen, KERR_INVAL,
                        "%s: rules: unknown category '%s' (did you mean the predefined '%s'? "
                        "category names are case-sensitive)",
                        src, l, *p);
    return 0;
}

static int label_index(bounce_rules *rs, const char *l, size_t *out)
{
    for (size_t i = 0; i < rs->n_labels; i++)
        if (strcmp(rs->labels[i], l) == 0)
            return (void)(*out = i), 0;
    if (rs->n_labels == rs->cap_labels) {
        size_t cap = rs->cap_labels ? rs->cap_labels * 2 : 16;
        char **p = realloc(rs->labels, cap * sizeof(*p));
        if (!p)
            return KERR_NOMEM;
        rs->labels = p;
        rs->cap_labels = cap;
    }
    if (!(rs->labels[rs->n_labels] = strdup(l)))
        return KERR_NOMEM;
    *out = rs->n_labels++;
    return 0;
}

/* Conservative: "(?" followed by flag letters holding an x. A false positive
 * only costs a program of its own. */
static bool sets_x_flag(const char *t, size_t n)
{
    for (size_t i = 0; i + 2 < n; i++) {
        if (t[i] != '(' || t[i + 1] != '?')
            continue;
        for (size_t j = i + 2; j < n && (t[j] == '-' || (t[j] >= 'a' && t[j] <= 'z') ||
                                         (t[j] >= 'A' && t[j] <= 'Z'));
             j++)
            if (t[j] == 'x')
                return true;
    }
    return false;
}

static int add_rule(bounce_rules *rs, const char *src, const char *label, size_t li,
                    const char *pat, size_t plen, char *err, size_t errlen)
{
    char why[300];
    size_t tl;
    int shown = plen > BOUNCE_SHOWN ? BOUNCE_SHOWN : (int)plen;
    char *t = rx_translate(pat, plen, RX_PLAIN, &tl, why, sizeof(why));
    if (!t)
        return fail(err, errlen, KERR_PARSE, "%s: category '%s', pattern '%.*s': %s", src, label,
                    shown, pat, why);
    pcre2_code *re = rx_compile_pcre2(t, tl, 0, NULL, why, sizeof(why));
    if (!re) {
        free(t);
        return fail(err, errlen, KERR_PARSE, "%s: category '%s', pattern '%.*s': %s", src, label,
                    shown, pat, why);
    }
    uint32_t opts = 0;
    pcre2_pattern_info(re, PCRE2_INFO_ALLOPTIONS, &opts);
    pcre2_code_free(re);
    if (rs->n == rs->cap) {
        size_t cap = rs->cap ? rs->cap * 2 : 64;
        struct rule *v = realloc(rs->v, cap * sizeof(*v));
        if (!v) {
            free(t);
            return fail(err, errlen, KERR_NOMEM, "%s: out of memory", src);
        }
        rs->v = v;
        rs->cap = cap;
    }
    rs->v[rs->n++] = (struct rule){
        .label = li,
        .tpat = t,
        .tlen = tl,
        .anchored = (opts & PCRE2_ANCHORED) != 0,
        .alone = sets_x_flag(t, tl) || !((opts & PCRE2_ANCHORED) != 0),
    };
    return 0;
}

static const char *jtype(const json_t *v)
{
    switch (json_typeof(v)) {
    case JSON_OBJECT:
        return "a table";
    case JSON_ARRAY:
        return "an array";
    case JSON_STRING:
        return "a string";
    case JSON_INTEGER:
        return "an integer";
    case JSON_REAL:
        return "a float";
    case JSON_TRUE:
    case JSON_FALSE:
        return "a boolean";
    default:
        return "null";
    }
}

static int add_doc(bounce_rules *rs, const json_t *doc, const char *src, char *err, size_t errlen)
{
    if (!json_is_object(doc))
        return fail(err, errlen, KERR_PARSE, "%s: a rule file must be a table with a 'rules' table",
                    src);
    const json_t *rules = json_object_get(doc, "rules");
    if (!rules)
        return fail(err, errlen, KERR_PARSE,
                    "%s: no 'rules' table (a rule file is [rules] CATEGORY = [\"pattern\", ...])",
                    src);
    if (!json_is_object(rules))
        return fail(err, errlen, KERR_PARSE, "%s: 'rules' must be a table, not %s", src,
                    jtype(rules));
    const char *label;
    const json_t *pats;
    json_object_foreach((json_t *)rules, label, pats)
    {
        int rc = check_label(src, label, err, errlen);
        if (rc)
            return rc;
        if (!json_is_array(pats))
            return fail(err, errlen, KERR_PARSE,
                        "%s: category '%s' must be an array of pattern strings, not %s", src, label,
                        jtype(pats));
        size_t li;
        if (label_index(rs, label, &li))
            return fail(err, errlen, KERR_NOMEM, "%s: out of memory", src);
        size_t i;
        const json_t *p;
        json_array_foreach(pats, i, p)
        {
            if (!json_is_string(p))
                return fail(err, errlen, KERR_PARSE,
                            "%s: category '%s', element %zu must be a pattern string, not %s", src,
                            label, i + 1, jtype(p));
            rc = add_rule(rs, src, label, li, json_string_value(p), json_string_length(p), err,
                          errlen);
            if (rc)
                return rc;
        }
    }
    return 0;
}

int bounce_rules_add_text(bounce_rules *rs, const char *text, size_t len, enum bounce_format fmt,
                          const char *source, char *err, size_t errlen)
{
    const char *src = source ? source : "(rules)";
    char why[400];
    json_t *doc;
    if (fmt == BOUNCE_JSON) {
        json_error_t je;
        doc = json_loadb(text, len, JSON_REJECT_DUPLICATES | JSON_ALLOW_NUL, &je);
        if (!doc)
            return fail(err, errlen, KERR_PARSE, "%s: line %d, column %d: %s", src, je.line,
                        je.column, je.text);
    } else {
        doc = toml_json_parse_ordered(text, len, NULL, why, sizeof(why));
        if (!doc)
            return fail(err, errlen, KERR_PARSE, "%s: %s", src, why);
    }
    size_t n0 = rs->n, l0 = rs->n_labels;
    int rc = add_doc(rs, doc, src, err, errlen);
    json_decref(doc);
    if (rc) {
        /* keep nothing of a bad document */
        for (size_t i = n0; i < rs->n; i++)
            free(rs->v[i].tpat);
        rs->n = n0;
        for (size_t i = l0; i < rs->n_labels; i++)
            free(rs->labels[i]);
        rs->n_labels = l0;
    }
    return rc;
}

static bool ends_with(const char *s, const char *suf)
{
    size_t n = strlen(s), m = strlen(suf);
    return n >= m && strcmp(s + n - m, suf) == 0;
}

int bounce_rules_add_file(bounce_rules *rs, const char *path, char *err, size_t errlen)
{
    enum bounce_format fmt;
    if (ends_with(path, ".toml"))
        fmt = BOUNCE_TOML;
    else if (ends_with(path, ".json"))
        fmt = BOUNCE_JSON;
    else
        return fail(err, errlen, KERR_INVAL,
                    "%s: classifier files must have either .toml or .json filename extension",
                    path);
    FILE *f = fopen(path, "rb");
    if (!f)
        return fail(err, errlen, KERR_IO, "%s: %s", path, strerror(errno));
    char *buf = NULL;
    size_t n = 0, cap = 0;
    for (;;) {
        if (n == cap) {
            if (cap >= BOUNCE_MAX_FILE) {
                free(buf);
                fclose(f);
                return fail(err, errlen, KERR_TOOBIG, "%s: larger than %u bytes", path,
                            BOUNCE_MAX_FILE);
            }
            cap = cap ? cap * 2 : 8192;
            char *p = realloc(buf, cap);
            if (!p) {
                free(buf);
                fclose(f);
                return fail(err, errlen, KERR_NOMEM, "%s: out of memory", path);
            }
            buf = p;
        }
        size_t got = fread(buf + n, 1, cap - n, f);
        n += got;
        if (got == 0)
            break;
    }
    bool bad = ferror(f);
    int e = errno;
    fclose(f);
    if (bad) {
        free(buf);
        return fail(err, errlen, KERR_IO, "%s: %s", path, strerror(e));
    }
    int rc = bounce_rules_add_text(rs, buf ? buf : "", n, fmt, path, err, errlen);
    free(buf);
    return rc;
}

/* ---- building ---------------------------------------------------------------- */

void bounce_classifier_free(bounce_classifier *c)
{
    if (!c)
        return;
    for (size_t i = 0; i < c->n_p; i++)
        pcre2_code_free(c->p[i].re);
    free(c->p);
    free(c->rule_label);
    for (size_t i = 0; i < c->n_labels; i++)
        free(c->labels[i]);
    free(c->labels);
    free(c);
}

size_t bounce_classifier_programs(const bounce_classifier *c)
{
    return c ? c->n_p : 0;
}

static int push_program(bounce_classifier *c, pcre2_code *re, size_t rule, bool joined)
{
    struct program *p = realloc(c->p, (c->n_p + 1) * sizeof(*p));
    if (!p) {
        pcre2_code_free(re);
        return KERR_NOMEM;
    }
    c->p = p;
    c->p[c->n_p++] = (struct program){.re = re, .rule = rule, .joined = joined};
    return 0;
}

static int build_alone(bounce_classifier *c, const struct rule *r, size_t i, char *err,
                       size_t errlen)
{
    pcre2_code *re = rx_compile_pcre2(r->tpat, r->tlen, 0, NULL, err, errlen);
    if (!re)
        return KERR_PARSE; /* compiled when it was added: only memory */
    return push_program(c, re, i, false);
}

/* Joins rules [lo, hi) into one program; halves the range when PCRE2 will
 * not compile the join (too large, too many groups...). */
static int build_joined(bounce_classifier *c, const struct rule *v, size_t lo, size_t hi,
                        char *err, size_t errlen)
{
    if (hi - lo == 1)
        return build_alone(c, &v[lo], lo, err, errlen);
    size_t len = 0;
    for (size_t i = lo; i < hi; i++)
        len += v[i].tlen + 48;
    char *j = malloc(len + 1);
    if (!j)
        return KERR_NOMEM;
    size_t o = 0;
    for (size_t i = lo; i < hi; i++) {
        if (i > lo)
            j[o++] = '|';
        if (!v[i].anchored) {
            memcpy(j + o, "(?s:.*?)", 8);
            o += 8;
        }
        memcpy(j + o, "(?:", 3);
        o += 3;
        memcpy(j + o, v[i].tpat, v[i].tlen);
        o += v[i].tlen;
        o += (size_t)snprintf(j + o, len + 1 - o, ")(*MARK:%zu)", i);
    }
    char why[300];
    pcre2_code *re = rx_compile_pcre2(j, o, PCRE2_ANCHORED | PCRE2_DUPNAMES, NULL, why,
                                      sizeof(why));
    free(j);
    if (re)
        return push_program(c, re, lo, true);
    size_t mid = lo + (hi - lo) / 2;
    int rc = build_joined(c, v, lo, mid, err, errlen);
    return rc ? rc : build_joined(c, v, mid, hi, err, errlen);
}

bounce_classifier *bounce_classifier_build(const bounce_rules *rs, char *err, size_t errlen)
{
    bounce_classifier *c = calloc(1, sizeof(*c));
    if (!c)
        goto oom;
    c->n_rules = rs->n;
    c->rule_label = calloc(rs->n ? rs->n : 1, sizeof(*c->rule_label));
    c->labels = calloc(rs->n_labels ? rs->n_labels : 1, sizeof(*c->labels));
    if (!c->rule_label || !c->labels)
        goto oom;
    for (size_t i = 0; i < rs->n_labels; i++) {
        if (!(c->labels[i] = strdup(rs->labels[i])))
            goto oom;
        c->n_labels++;
    }
    for (size_t i = 0; i < rs->n; i++)
        c->rule_label[i] = c->labels[rs->v[i].label];
    size_t i = 0;
    while (i < rs->n) {
        size_t j = i;
        while (j < rs->n && !rs->v[j].alone)
            j++;
        int rc = 0;
        if (j > i)
            rc = build_joined(c, rs->v, i, j, err, errlen);
        if (!rc && j < rs->n)
            rc = build_alone(c, &rs->v[j], j, err, errlen), j++;
        if (rc == KERR_NOMEM)
            goto oom;
        if (rc) {
            bounce_classifier_free(c);
            return NULL;
        }
        i = j;
    }
    return c;
oom:
    bounce_classifier_free(c);
    snprintf(err, errlen, "out of memory building the bounce classifier");
    return NULL;
}

/* ---- classifying ------------------------------------------------------------- */

static pthread_key_t md_key;
static pthread_once_t md_once = PTHREAD_ONCE_INIT;

static void md_free(void *p)
{
    pcre2_match_data_free(p);
}

static void md_key_make(void)
{
    (void)pthread_key_create(&md_key, md_free);
}

static pcre2_match_data *thread_md(void)
{
    static __thread pcre2_match_data *md;
    if (md)
        return md;
    pthread_once(&md_once, md_key_make);
    /* one pair: only whether and where, the mark says which rule */
    md = pcre2_match_data_create(1, NULL);
    if (md)
        (void)pthread_setspecific(md_key, md);
    return md;
}

const char *bounce_classify_line(const bounce_classifier *c, const char *line, size_t len)
{
    if (!c || !c->n_p)
        return NULL;
    pcre2_match_data *md = thread_md();
    if (!md)
        return NULL;
    for (size_t i = 0; i < c->n_p; i++) {
        const struct program *p = &c->p[i];
        int rc = rx_exec(p->re, line, len, 0, 0, md);
        if (rc == RX_ELIMIT) {
            atomic_fetch_add_explicit(&limit_hits, 1, memory_order_relaxed);
            continue;
        }
        if (rc < 0)
            continue;
        size_t rule = p->rule;
        if (p->joined) {
            PCRE2_SPTR m = pcre2_get_mark(md);
            if (!m)
                continue;
            rule = 0;
            for (; *m >= '0' && *m <= '9'; m++)
                rule = rule * 10 + (size_t)(*m - '0');
        }
        return rule < c->n_rules ? c->rule_label[rule] : NULL;
    }
    return NULL;
}

const char *bounce_classify(const bounce_classifier *c, int code, int cls, int subject, int detail,
                            const char *content)
{
    if (!c || !c->n_p)
        return NULL;
    if (!content)
        content = "";
    char stack[1024];
    char *buf = stack;
    int n = cls ? snprintf(stack, sizeof(stack), "%d %d.%d.%d %s", code, cls, subject, detail,
                           content)
                : snprintf(stack, sizeof(stack), "%d %s", code, content);
    if (n < 0)
        return NULL;
    if ((size_t)n >= sizeof(stack)) {
        buf = malloc((size_t)n + 1);
        if (!buf)
            return NULL;
        if (cls)
            snprintf(buf, (size_t)n + 1, "%d %d.%d.%d %s", code, cls, subject, detail, content);
        else
            snprintf(buf, (size_t)n + 1, "%d %s", code, content);
    }
    const char *r = bounce_classify_line(c, buf, (size_t)n);
    if (buf != stack)
        free(buf);
    return r;
}
