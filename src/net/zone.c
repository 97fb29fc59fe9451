/* Zones from master-file text (RFC 1035 §5.1) and the lookups of KumoMTA's
 * test resolver over them.
 *
 * Owns: each zone's records, their strings (one allocation per string), and
 * the SERVFAIL names. The parser reads one logical entry at a time (a line,
 * or several joined by parentheses) as a list of tokens, and either applies
 * a directive or builds one record; any error abandons the whole zone, so a
 * zone_set never holds half a zone. Building runs on whichever thread calls
 * (a reactor running the policy, or the main thread); a built set is read
 * without locks. Allocation failure aborts: zones are the policy's text,
 * bounded by what the policy passed. */
#include "net/zone.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/kerr.h"
#include "core/xalloc.h"

#define ZNAME_MAX 255

struct zone {
    char *origin;
    bool secure;
    zone_rr *rrs;
    size_t n, cap;
};

struct zone_set {
    struct zone *zones;
    size_t n;
    char **servfail;
    size_t n_servfail;
};

static const struct {
    const char *name;
    uint16_t type;
} type_names[] = {
    {"A", ZONE_A},   {"NS", ZONE_NS},   {"CNAME", ZONE_CNAME}, {"SOA", ZONE_SOA}, {"PTR", ZONE_PTR},
    {"MX", ZONE_MX}, {"TXT", ZONE_TXT}, {"AAAA", ZONE_AAAA},   {"SRV", ZONE_SRV}, {"SPF", ZONE_SPF},
};

const char *zone_type_name(uint16_t type)
{
    for (size_t i = 0; i < sizeof(type_names) / sizeof(type_names[0]); i++)
        if (type_names[i].type == type)
            return type_names[i].name;
    return NULL;
}

static void rr_free(zone_rr *rr)
{
    free((char *)rr->owner);
    free((char *)rr->target);
    for (size_t i = 0; i < rr->n_txt; i++)
        free((char *)rr->txt[i]);
    free((void *)rr->txt);
}

static void zone_fini(struct zone *z)
{
    for (size_t i = 0; i < z->n; i++)
        rr_free(&z->rrs[i]);
    free(z->rrs);
    free(z->origin);
}

zone_set *zone_set_new(void)
{
    zone_set *zs = xrealloc(NULL, sizeof(*zs));
    memset(zs, 0, sizeof(*zs));
    return zs;
}

void zone_set_free(zone_set *zs)
{
    if (!zs)
        return;
    for (size_t i = 0; i < zs->n; i++)
        zone_fini(&zs->zones[i]);
    free(zs->zones);
    for (size_t i = 0; i < zs->n_servfail; i++)
        free(zs->servfail[i]);
    free(zs->servfail);
    free(zs);
}

/* ---- names ---------------------------------------------------------------------- */

/* Lower-cases name[0..len) into out (ZNAME_MAX + 2) as a fully qualified
 * name, appending origin when it is relative ("@" is origin itself).
 * Returns 0 or -1 (empty label, label over 63 bytes, name over 255, a
 * relative name without an origin). */
static int make_fqdn(const char *name, size_t len, const char *origin, char *out)
{
    if (len == 1 && name[0] == '@') {
        if (!origin)
            return -1;
        snprintf(out, ZNAME_MAX + 2, "%s", origin);
        return 0;
    }
    if (len == 1 && name[0] == '.') {
        strcpy(out, ".");
        return 0;
    }
    bool absolute = len > 0 && name[len - 1] == '.';
    size_t olen = 0;
    if (!absolute) {
        if (!origin)
            return -1;
        olen = strcmp(origin, ".") == 0 ? 0 : strlen(origin);
    }
    if (len == 0 || len + 1 + olen > ZNAME_MAX + 1)
        return -1;
    size_t o = 0, label = 0;
    for (size_t i = 0; i < len; i++) {
        char c = (char)tolower((unsigned char)name[i]);
        if (c == '.') {
            if (label == 0)
                return -1;
            label = 0;
        } else if (++label > 63) {
            return -1;
        }
        out[o++] = c;
    }
    if (!absolute) {
        out[o++] = '.';
        memcpy(out + o, origin, olen);
        o += olen;
    }
    out[o] = '\0';
    return 0;
}

/* name as a fully qualified lower-case key (for lookups). */
static int query_key(const char *name, char *out)
{
    size_t len = strlen(name);
    if (len == 0 || len > ZNAME_MAX)
        return -1;
    if (name[len - 1] == '.')
        return make_fqdn(name, len, NULL, out);
    char tmp[ZNAME_MAX + 2];
    memcpy(tmp, name, len);
    tmp[len] = '.';
    return make_fqdn(tmp, len + 1, NULL, out);
}

/* ---- tokens ---------------------------------------------------------------------- */

typedef struct tok {
    char *s; /* unescaped text */
    size_t len;
    bool quoted;
} tok;

typedef struct entry {
    tok *t;
    size_t n, cap;
    bool indented; /* began with white space: the owner is the previous one */
    int line;      /* where it began */
} entry;

static void entry_clear(entry *e)
{
    for (size_t i = 0; i < e->n; i++)
        free(e->t[i].s);
    e->n = 0;
}

static void entry_push(entry *e, char *s, size_t len, bool quoted)
{
    if (e->n == e->cap) {
        e->cap = e->cap ? e->cap * 2 : 8;
        e->t = xrealloc(e->t, e->cap * sizeof(*e->t));
    }
    e->t[e->n++] = (tok){s, len, quoted};
}

typedef struct lexer {
    const char *p, *end;
    int line;
    char *err;
    size_t errlen;
} lexer;

static int lex_fail(lexer *lx, int line, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int lex_fail(lexer *lx, int line, const char *fmt, ...)
{
    char why[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(why, sizeof(why), fmt, ap);
    va_end(ap);
    snprintf(lx->err, lx->errlen, "line %d: %s", line, why);
    return KERR_PARSE;
}

/* Reads a token's characters (quoted or not), undoing \X and \DDD. */
static int lex_word(lexer *lx, entry *e)
{
    bool quoted = *lx->p == '"';
    int start_line = lx->line;
    if (quoted)
        lx->p++;
    size_t cap = 32, n = 0;
    char *buf = xrealloc(NULL, cap);
    for (;;) {
        if (lx->p == lx->end) {
            if (quoted) {
                free(buf);
                return lex_fail(lx, start_line, "unterminated quoted string");
            }
            break;
        }
        char c = *lx->p;
        if (quoted && c == '"') {
            lx->p++;
            break;
        }
        if (!quoted && (isspace((unsigned char)c) || c == ';' || c == '(' || c == ')' || c == '"'))
            break;
        if (c == '\n')
            lx->line++;
        lx->p++;
        if (c == '\\') {
            if (lx->p == lx->end) {
                free(buf);
                return lex_fail(lx, lx->line, "a backslash ends the text");
            }
            if (lx->end - lx->p >= 3 && isdigit((unsigned char)lx->p[0]) &&
                isdigit((unsigned char)lx->p[1]) && isdigit((unsigned char)lx->p[2])) {
                int v = (lx->p[0] - '0') * 100 + (lx->p[1] - '0') * 10 + (lx->p[2] - '0');
                if (v > 255) {
                    free(buf);
                    return lex_fail(lx, lx->line, "\\%.3s is not a byte", lx->p);
                }
                c = (char)v;
                lx->p += 3;
            } else {
                c = *lx->p++;
            }
        }
        if (n + 1 >= cap) {
            cap *= 2;
            buf = xrealloc(buf, cap);
        }
        buf[n++] = c;
    }
    buf[n] = '\0';
    entry_push(e, buf, n, quoted);
    return 0;
}

/* Reads the next logical entry. Returns 1 with e filled, 0 at the end of
 * the text, or KERR_PARSE. */
static int lex_entry(lexer *lx, entry *e)
{
    entry_clear(e);
    int paren = 0;
    bool at_line_start = true;
    for (;;) {
        if (lx->p == lx->end) {
            if (paren)
                return lex_fail(lx, e->line, "unbalanced parentheses");
            return e->n ? 1 : 0;
        }
        char c = *lx->p;
        if (c == '\n') {
            lx->p++;
            lx->line++;
            if (!paren && e->n)
                return 1;
            at_line_start = true;
            continue;
        }
        if (isspace((unsigned char)c)) {
            if (at_line_start && !paren && e->n == 0) {
                e->indented = true;
                e->line = lx->line;
            }
            at_line_start = false;
            lx->p++;
            continue;
        }
        if (c == ';') {
            while (lx->p < lx->end && *lx->p != '\n')
                lx->p++;
            continue;
        }
        if (e->n == 0 && at_line_start && !paren) {
            e->indented = false;
            e->line = lx->line;
        }
        at_line_start = false;
        if (c == '(') {
            if (e->n == 0 && !paren)
                e->line = lx->line;
            paren++;
            lx->p++;
            continue;
        }
        if (c == ')') {
            if (!paren)
                return lex_fail(lx, lx->line, "unbalanced parentheses");
            paren--;
            lx->p++;
            continue;
        }
        int rc = lex_word(lx, e);
        if (rc)
            return rc;
    }
}

/* ---- records ---------------------------------------------------------------------- */

/* "3600", "1h30m", "1w" (BIND units s m h d w). Returns 0 or -1. */
static int parse_ttl(const char *s, uint32_t *out)
{
    if (!*s || !isdigit((unsigned char)*s))
        return -1;
    uint64_t total = 0, cur = 0;
    bool digits = false;
    for (; *s; s++) {
        if (isdigit((unsigned char)*s)) {
            cur = cur * 10 + (uint64_t)(*s - '0');
            digits = true;
            if (cur > UINT32_MAX)
                return -1;
            continue;
        }
        uint64_t mul;
        switch (tolower((unsigned char)*s)) {
        case 's':
            mul = 1;
            break;
        case 'm':
            mul = 60;
            break;
        case 'h':
            mul = 3600;
            break;
        case 'd':
            mul = 86400;
            break;
        case 'w':
            mul = 604800;
            break;
        default:
            return -1;
        }
        if (!digits)
            return -1;
        total += cur * mul;
        cur = 0;
        digits = false;
        if (total > UINT32_MAX)
            return -1;
    }
    total += cur;
    if (total > UINT32_MAX)
        return -1;
    *out = (uint32_t)total;
    return 0;
}

static int parse_u16(const char *s, uint16_t *out)
{
    if (!*s)
        return -1;
    unsigned long v = 0;
    for (; *s; s++) {
        if (!isdigit((unsigned char)*s))
            return -1;
        v = v * 10 + (unsigned long)(*s - '0');
        if (v > 65535)
            return -1;
    }
    *out = (uint16_t)v;
    return 0;
}

static int type_of(const char *s)
{
    for (size_t i = 0; i < sizeof(type_names) / sizeof(type_names[0]); i++)
        if (strcasecmp(s, type_names[i].name) == 0)
            return type_names[i].type;
    return -1;
}

typedef struct pstate {
    lexer lx;
    char *origin;    /* current $ORIGIN, or NULL */
    char *zone_name; /* the first $ORIGIN */
    char owner[ZNAME_MAX + 2];
    bool have_owner;
    uint32_t default_ttl, last_ttl;
    bool have_default_ttl, have_last_ttl;
    struct zone z;
} pstate;

static int rdata_name(pstate *ps, const entry *e, size_t i, char **out)
{
    char fq[ZNAME_MAX + 2];
    if (i >= e->n)
        return lex_fail(&ps->lx, e->line, "missing a name in the record data");
    if (make_fqdn(e->t[i].s, e->t[i].len, ps->origin, fq) != 0)
        return lex_fail(&ps->lx, e->line, "invalid name `%s`", e->t[i].s);
    *out = xstrndup(fq, strlen(fq));
    return 0;
}

static int want_fields(pstate *ps, const entry *e, size_t at, size_t n, const char *type)
{
    if (e->n - at != n)
        return lex_fail(&ps->lx, e->line, "%s takes %zu field%s, found %zu", type, n,
                        n == 1 ? "" : "s", e->n - at);
    return 0;
}

static int add_record(pstate *ps, const entry *e)
{
    size_t i = 0;
    if (!e->indented) {
        if (make_fqdn(e->t[0].s, e->t[0].len, ps->origin, ps->owner) != 0)
            return lex_fail(&ps->lx, e->line,
                            ps->origin ? "invalid owner name `%s`"
                                       : "relative owner name `%s` before any $ORIGIN",
                            e->t[0].s);
        ps->have_owner = true;
        i = 1;
    } else if (!ps->have_owner) {
        return lex_fail(&ps->lx, e->line, "a record without an owner name comes first");
    }
    uint32_t ttl = 0;
    bool have_ttl = false, have_class = false;
    int type = -1;
    for (; i < e->n && type < 0; i++) {
        const char *s = e->t[i].s;
        if (!have_ttl && parse_ttl(s, &ttl) == 0) {
            have_ttl = true;
        } else if (!have_class && strcasecmp(s, "IN") == 0) {
            have_class = true;
        } else if (!have_class && (strcasecmp(s, "CH") == 0 || strcasecmp(s, "HS") == 0 ||
                                   strcasecmp(s, "CS") == 0)) {
            return lex_fail(&ps->lx, e->line, "class %s is not supported (only IN)", s);
        } else if ((type = type_of(s)) < 0) {
            return lex_fail(&ps->lx, e->line, "unsupported record type `%s`", s);
        }
    }
    if (type < 0)
        return lex_fail(&ps->lx, e->line, "record has no type");
    if (!have_ttl) {
        if (ps->have_default_ttl)
            ttl = ps->default_ttl;
        else if (ps->have_last_ttl)
            ttl = ps->last_ttl;
    } else {
        ps->last_ttl = ttl;
        ps->have_last_ttl = true;
    }

    zone_rr rr;
    memset(&rr, 0, sizeof(rr));
    rr.type = (uint16_t)type;
    rr.ttl = ttl;
    const char *tname = zone_type_name(rr.type);
    int rc = 0;
    switch (type) {
    case ZONE_A:
    case ZONE_AAAA:
        if ((rc = want_fields(ps, e, i, 1, tname)))
            return rc;
        if (inet_pton(type == ZONE_A ? AF_INET : AF_INET6, e->t[i].s, rr.addr) != 1)
            return lex_fail(&ps->lx, e->line, "`%s` is not an %s address", e->t[i].s,
                            type == ZONE_A ? "IPv4" : "IPv6");
        break;
    case ZONE_MX:
        if ((rc = want_fields(ps, e, i, 2, tname)))
            return rc;
        if (parse_u16(e->t[i].s, &rr.pref) != 0)
            return lex_fail(&ps->lx, e->line, "MX preference `%s` is not a number 0-65535",
                            e->t[i].s);
        if ((rc = rdata_name(ps, e, i + 1, (char **)&rr.target)))
            return rc;
        break;
    case ZONE_CNAME:
    case ZONE_PTR:
    case ZONE_NS:
        if ((rc = want_fields(ps, e, i, 1, tname)))
            return rc;
        if ((rc = rdata_name(ps, e, i, (char **)&rr.target)))
            return rc;
        break;
    case ZONE_SRV: {
        if ((rc = want_fields(ps, e, i, 4, tname)))
            return rc;
        uint16_t w, port;
        if (parse_u16(e->t[i].s, &rr.pref) || parse_u16(e->t[i + 1].s, &w) ||
            parse_u16(e->t[i + 2].s, &port))
            return lex_fail(&ps->lx, e->line, "SRV priority, weight and port must be numbers");
        if ((rc = rdata_name(ps, e, i + 3, (char **)&rr.target)))
            return rc;
        break;
    }
    case ZONE_SOA: {
        if ((rc = want_fields(ps, e, i, 7, tname)))
            return rc;
        char fq[ZNAME_MAX + 2];
        for (size_t k = 0; k < 2; k++)
            if (make_fqdn(e->t[i + k].s, e->t[i + k].len, ps->origin, fq) != 0)
                return lex_fail(&ps->lx, e->line, "invalid SOA name `%s`", e->t[i + k].s);
        for (size_t k = 2; k < 7; k++) {
            uint32_t v;
            if (parse_ttl(e->t[i + k].s, &v) != 0)
                return lex_fail(&ps->lx, e->line, "SOA field `%s` is not a number", e->t[i + k].s);
        }
        break;
    }
    case ZONE_TXT:
    case ZONE_SPF: {
        if (i >= e->n)
            return lex_fail(&ps->lx, e->line, "%s needs at least one string", tname);
        rr.n_txt = e->n - i;
        const char **txt = xrealloc(NULL, rr.n_txt * sizeof(char *));
        for (size_t k = 0; k < rr.n_txt; k++) {
            if (e->t[i + k].len > 255) {
                for (size_t j = 0; j < k; j++)
                    free((char *)txt[j]);
                free(txt);
                return lex_fail(&ps->lx, e->line, "a %s string is longer than 255 bytes", tname);
            }
            txt[k] = xstrndup(e->t[i + k].s, e->t[i + k].len);
        }
        rr.txt = txt;
        break;
    }
    }
    rr.owner = xstrndup(ps->owner, strlen(ps->owner));
    struct zone *z = &ps->z;
    if (z->n == z->cap) {
        z->cap = z->cap ? z->cap * 2 : 16;
        z->rrs = xrealloc(z->rrs, z->cap * sizeof(*z->rrs));
    }
    z->rrs[z->n++] = rr;
    return 0;
}

static int directive(pstate *ps, const entry *e)
{
    const char *d = e->t[0].s;
    if (strcasecmp(d, "$ORIGIN") == 0) {
        if (e->n != 2)
            return lex_fail(&ps->lx, e->line, "$ORIGIN takes one name");
        char fq[ZNAME_MAX + 2];
        if (make_fqdn(e->t[1].s, e->t[1].len, ps->origin, fq) != 0)
            return lex_fail(&ps->lx, e->line, "invalid $ORIGIN `%s`", e->t[1].s);
        free(ps->origin);
        ps->origin = xstrndup(fq, strlen(fq));
        if (!ps->zone_name)
            ps->zone_name = xstrndup(fq, strlen(fq));
        return 0;
    }
    if (strcasecmp(d, "$TTL") == 0) {
        if (e->n != 2 || parse_ttl(e->t[1].s, &ps->default_ttl) != 0)
            return lex_fail(&ps->lx, e->line, "$TTL takes one TTL");
        ps->have_default_ttl = true;
        return 0;
    }
    return lex_fail(&ps->lx, e->line, "directive %s is not supported", d);
}

int zone_set_add(zone_set *zs, const char *text, size_t len, bool secure, char *err, size_t errlen)
{
    pstate ps;
    memset(&ps, 0, sizeof(ps));
    ps.lx = (lexer){text, text + len, 1, err, errlen};
    entry e = {0};
    int rc;
    while ((rc = lex_entry(&ps.lx, &e)) == 1) {
        if (!e.indented && !e.t[0].quoted && e.t[0].s[0] == '$')
            rc = directive(&ps, &e);
        else
            rc = add_record(&ps, &e);
        if (rc)
            break;
    }
    entry_clear(&e);
    free(e.t);
    if (rc == 0 && !ps.zone_name)
        rc = lex_fail(&ps.lx, ps.lx.line, "the zone has no $ORIGIN");
    free(ps.origin);
    if (rc < 0) {
        zone_fini(&ps.z);
        free(ps.zone_name);
        return KERR_PARSE;
    }
    ps.z.origin = ps.zone_name;
    ps.z.secure = secure;
    for (size_t i = 0; i < zs->n; i++)
        if (strcmp(zs->zones[i].origin, ps.z.origin) == 0) {
            zone_fini(&zs->zones[i]);
            zs->zones[i] = ps.z;
            return 0;
        }
    zs->zones = xrealloc(zs->zones, (zs->n + 1) * sizeof(*zs->zones));
    zs->zones[zs->n++] = ps.z;
    return 0;
}

int zone_set_add_servfail(zone_set *zs, const char *name)
{
    char key[ZNAME_MAX + 2];
    if (!name || query_key(name, key) != 0)
        return KERR_INVAL;
    zs->servfail = xrealloc(zs->servfail, (zs->n_servfail + 1) * sizeof(char *));
    zs->servfail[zs->n_servfail++] = xstrndup(key, strlen(key));
    return 0;
}

/* ---- lookups ------------------------------------------------------------------------ */

static const struct zone *find_zone(const zone_set *zs, const char *key)
{
    /* the closest enclosing zone: walk up one label at a time, stopping
     * before the root as KumoMTA's test resolver does */
    const char *p = key;
    for (;;) {
        for (size_t i = 0; i < zs->n; i++)
            if (strcmp(zs->zones[i].origin, p) == 0)
                return &zs->zones[i];
        const char *dot = strchr(p, '.');
        if (!dot || !dot[1] || !strchr(dot + 1, '.'))
            return NULL;
        p = dot + 1;
    }
}

static int lookup_key(const zone_set *zs, const char *key, uint16_t type, zone_answer *out,
                      int depth)
{
    for (size_t i = 0; i < zs->n_servfail; i++)
        if (strcmp(zs->servfail[i], key) == 0)
            return out->rcode = ZONE_SERVFAIL;
    const struct zone *z = find_zone(zs, key);
    if (!z)
        return out->rcode = ZONE_NXDOMAIN;
    out->secure = z->secure;
    const zone_rr *cname = NULL;
    for (size_t i = 0; i < z->n; i++) {
        const zone_rr *rr = &z->rrs[i];
        if (strcmp(rr->owner, key) != 0)
            continue;
        if (rr->type == type) {
            if (out->n < ZONE_MAX_ANSWER)
                out->rrs[out->n++] = rr;
        } else if (rr->type == ZONE_CNAME && !cname) {
            cname = rr;
        }
    }
    if (out->n > 0 || type == ZONE_CNAME || !cname || depth >= 8)
        return out->rcode = ZONE_NOERROR;
    bool secure = z->secure;
    snprintf(out->canon, sizeof(out->canon), "%s", cname->target);
    int rc = lookup_key(zs, cname->target, type, out, depth + 1);
    out->secure = out->secure && secure;
    return rc;
}

int zone_set_lookup(const zone_set *zs, const char *name, uint16_t type, zone_answer *out)
{
    memset(out, 0, sizeof(*out));
    char key[ZNAME_MAX + 2];
    if (!name || query_key(name, key) != 0)
        return out->rcode = ZONE_BADNAME;
    return lookup_key(zs, key, type, out, 0);
}
