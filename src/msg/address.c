/* The RFC 5322 address-list parser (see address.h for the grammar). A
 * cursor over the bytes; each production consumes what it recognises or
 * fails with a reason naming the offset. Values are rebuilt into sbufs:
 * quoted strings lose their quotes and backslashes, display-name words are
 * joined by one space and then RFC 2047-decoded. Any thread; allocation
 * failure is KERR_NOMEM. */
#include "msg/address.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/kerr.h"
#include "msg/rfc2047.h"
#include "core/sbuf.h"

typedef struct cur {
    const char *s;
    size_t n, i;
    char *err;
    size_t errlen;
    bool failed;
} cur;

static bool fail(cur *c, const char *fmt, ...)
{
    if (c->failed)
        return false;
    c->failed = true;
    if (c->errlen) {
        va_list ap;
        va_start(ap, fmt);
        int o = vsnprintf(c->err, c->errlen, fmt, ap);
        va_end(ap);
        if (o >= 0 && (size_t)o < c->errlen)
            snprintf(c->err + o, c->errlen - (size_t)o, " at offset %zu", c->i);
    }
    return false;
}

static bool is_wsp(char ch)
{
    return ch == ' ' || ch == '\t' || ch == '\r' || ch == '\n';
}

/* atext (RFC 5322 §3.2.3) plus UTF-8 bytes (RFC 6532 §3.2) */
static bool is_atext(unsigned char ch)
{
    if (ch >= 0x80)
        return true;
    if ((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') || (ch >= '0' && ch <= '9'))
        return true;
    return ch && strchr("!#$%&'*+-/=?^_`{|}~", ch) != NULL;
}

/* Skips white space and (nested) comments. */
static bool skip_cfws(cur *c)
{
    for (;;) {
        while (c->i < c->n && is_wsp(c->s[c->i]))
            c->i++;
        if (c->i >= c->n || c->s[c->i] != '(')
            return true;
        size_t depth = 0;
        size_t start = c->i;
        while (c->i < c->n) {
            char ch = c->s[c->i++];
            if (ch == '\\' && c->i < c->n) {
                c->i++;
            } else if (ch == '(') {
                depth++;
            } else if (ch == ')') {
                if (--depth == 0)
                    break;
            }
        }
        if (depth != 0) {
            c->i = start;
            return fail(c, "unterminated comment");
        }
    }
}

static bool peek(cur *c, char ch)
{
    return c->i < c->n && c->s[c->i] == ch;
}

/* An atom: appends its text; false (without failing) when none is here. */
static bool atom(cur *c, sbuf *out)
{
    size_t st = c->i;
    while (c->i < c->n && is_atext((unsigned char)c->s[c->i]))
        c->i++;
    sbuf_put(out, c->s + st, c->i - st);
    return c->i > st;
}

/* A quoted string at c->i (which is '"'): appends its unquoted content. */
static bool quoted(cur *c, sbuf *out)
{
    size_t start = c->i++;
    while (c->i < c->n) {
        char ch = c->s[c->i++];
        if (ch == '"')
            return true;
        if (ch == '\\' && c->i < c->n) {
            sbuf_putc(out, c->s[c->i++]);
        } else if (ch == '\r' || ch == '\n') {
            continue; /* folding inside the string */
        } else {
            sbuf_putc(out, ch);
        }
    }
    c->i = start;
    return fail(c, "unterminated quoted string");
}

/* One word (atom or quoted string) of a phrase or local part. */
static bool word(cur *c, sbuf *out, bool *was_word)
{
    *was_word = false;
    if (peek(c, '"')) {
        if (!quoted(c, out))
            return false;
        *was_word = true;
        return true;
    }
    *was_word = atom(c, out);
    return true;
}

/* phrase = 1*(word / ".") separated by CFWS; words joined by one space. */
static bool phrase(cur *c, sbuf *out, size_t *nwords)
{
    *nwords = 0;
    for (;;) {
        if (!skip_cfws(c))
            return false;
        if (peek(c, '.')) {
            /* obs-phrase: "Mr. Smith" (the period stays with its word) */
            sbuf_putc(out, '.');
            c->i++;
            (*nwords)++;
            continue;
        }
        size_t mark = out->len;
        if (*nwords)
            sbuf_putc(out, ' ');
        bool w;
        if (!word(c, out, &w))
            return false;
        if (!w) {
            out->len = mark; /* drop the separator */
            if (out->p)
                out->p[mark] = 0;
            return true;
        }
        (*nwords)++;
    }
}

/* local-part = word *("." word), with CFWS around the dots (obs-local-part). */
static bool local_part(cur *c, sbuf *out)
{
    for (;;) {
        if (!skip_cfws(c))
            return false;
        bool w;
        if (!word(c, out, &w))
            return false;
        if (!w)
            return fail(c, "expected a local part");
        if (!skip_cfws(c))
            return false;
        if (!peek(c, '.'))
            return true;
        sbuf_putc(out, '.');
        c->i++;
    }
}

/* domain = atom *("." atom) / "[" *dtext "]" */
static bool domain(cur *c, sbuf *out)
{
    if (!skip_cfws(c))
        return false;
    if (peek(c, '[')) {
        size_t start = c->i;
        while (c->i < c->n && c->s[c->i] != ']') {
            if (c->s[c->i] == '[' && c->i > start)
                return fail(c, "'[' inside a domain literal");
            if (c->s[c->i] == '\\' && c->i + 1 < c->n)
                c->i++;
            c->i++;
        }
        if (c->i >= c->n) {
            c->i = start;
            return fail(c, "unterminated domain literal");
        }
        c->i++;
        sbuf_put(out, c->s + start, c->i - start);
        return skip_cfws(c);
    }
    for (;;) {
        if (!skip_cfws(c))
            return false;
        if (!atom(c, out))
            return fail(c, "expected a domain");
        if (!skip_cfws(c))
            return false;
        if (!peek(c, '.'))
            return true;
        sbuf_putc(out, '.');
        c->i++;
    }
}

static char *take(sbuf *b, bool *oom)
{
    char *p = sbuf_finish(b, NULL);
    if (!p)
        *oom = true;
    return p;
}

static void mbox_fini(addr_mailbox *m)
{
    free(m->name);
    free(m->local);
    free(m->domain);
    memset(m, 0, sizeof(*m));
}

/* addr-spec after its local part was read into lp. */
static bool finish_spec(cur *c, sbuf *lp, addr_mailbox *m, bool *oom)
{
    if (!peek(c, '@'))
        return fail(c, "expected '@'");
    c->i++;
    sbuf dom = {0};
    if (!domain(c, &dom)) {
        sbuf_fini(&dom);
        return false;
    }
    m->local = take(lp, oom);
    m->domain = take(&dom, oom);
    if (*oom)
        return false;
    /* 8-bit atoms that are not UTF-8 are repaired so that every value read
     * back (Lua strings, JSON) is valid UTF-8 */
    char **parts[2] = {&m->local, &m->domain};
    for (int k = 0; k < 2; k++) {
        if (utf8_valid(*parts[k], strlen(*parts[k])))
            continue;
        size_t l;
        char *fixed = utf8_lossy(*parts[k], strlen(*parts[k]), &l);
        if (!fixed) {
            *oom = true;
            return false;
        }
        free(*parts[k]);
        *parts[k] = fixed;
    }
    return true;
}

/* "<" [route] [addr-spec] ">" at c->i. */
static bool angle_addr(cur *c, addr_mailbox *m, bool *oom)
{
    c->i++; /* '<' */
    if (!skip_cfws(c))
        return false;
    if (peek(c, '>')) {
        c->i++; /* "<>": a mailbox without an address */
        return true;
    }
    if (peek(c, '@')) {
        /* obs-route: "@a,@b:" before the address */
        while (c->i < c->n && c->s[c->i] != ':' && c->s[c->i] != '>')
            c->i++;
        if (!peek(c, ':'))
            return fail(c, "malformed route in angle address");
        c->i++;
    }
    sbuf lp = {0};
    if (!local_part(c, &lp) || !finish_spec(c, &lp, m, oom)) {
        sbuf_fini(&lp);
        return false;
    }
    if (!peek(c, '>'))
        return fail(c, "expected '>'");
    c->i++;
    return true;
}

/* One mailbox; *nothing is set when the element is empty (obs-mbox-list). */
static bool mailbox(cur *c, addr_mailbox *m, bool allow_group_start, bool *is_group,
                    sbuf *group_name, bool *nothing, bool *oom)
{
    *nothing = false;
    if (is_group)
        *is_group = false;
    if (!skip_cfws(c))
        return false;
    size_t start = c->i;
    sbuf ph = {0};
    size_t nw;
    if (!phrase(c, &ph, &nw)) {
        sbuf_fini(&ph);
        return false;
    }
    if (!skip_cfws(c)) {
        sbuf_fini(&ph);
        return false;
    }
    if (peek(c, '<')) {
        if (nw) {
            size_t dl;
            m->name = rfc2047_decode(ph.p, ph.len, &dl);
            if (!m->name)
                *oom = true;
        }
        sbuf_fini(&ph);
        return !*oom && angle_addr(c, m, oom) && skip_cfws(c);
    }
    if (peek(c, ':') && allow_group_start) {
        if (!nw) {
            sbuf_fini(&ph);
            return fail(c, "group without a display name");
        }
        c->i++;
        *is_group = true;
        *group_name = ph;
        return true;
    }
    if (peek(c, '@') || peek(c, '.')) {
        /* it was the local part of an addr-spec: read it again as one */
        sbuf_fini(&ph);
        c->i = start;
        sbuf lp = {0};
        if (!local_part(c, &lp) || !finish_spec(c, &lp, m, oom)) {
            sbuf_fini(&lp);
            return false;
        }
        return true;
    }
    sbuf_fini(&ph);
    if (nw == 0 && (c->i >= c->n || peek(c, ',') || peek(c, ';'))) {
        *nothing = true;
        return true;
    }
    if (nw)
        return fail(c, "expected '<' or '@' after a name");
    return fail(c, "unexpected character '%c'", c->s[c->i]);
}

static bool push_mbox(addr_mailbox **v, size_t *n, size_t *cap, addr_mailbox *m, bool *oom)
{
    if (*n == *cap) {
        size_t nc = *cap ? *cap * 2 : 4;
        addr_mailbox *nv = realloc(*v, nc * sizeof(*nv));
        if (!nv) {
            *oom = true;
            return false;
        }
        *v = nv;
        *cap = nc;
    }
    (*v)[(*n)++] = *m;
    memset(m, 0, sizeof(*m));
    return true;
}

static bool push_entry(addr_list *l, size_t *cap, addr_entry *e, bool *oom)
{
    if (l->n == *cap) {
        size_t nc = *cap ? *cap * 2 : 4;
        addr_entry *nv = realloc(l->v, nc * sizeof(*nv));
        if (!nv) {
            *oom = true;
            return false;
        }
        l->v = nv;
        *cap = nc;
    }
    l->v[l->n++] = *e;
    memset(e, 0, sizeof(*e));
    return true;
}

static void entry_fini(addr_entry *e)
{
    mbox_fini(&e->mbox);
    free(e->group_name);
    for (size_t i = 0; i < e->n_members; i++)
        mbox_fini(&e->members[i]);
    free(e->members);
    memset(e, 0, sizeof(*e));
}

/* The members of a group, up to and including its ';'. */
static bool group_body(cur *c, addr_entry *e, bool *oom)
{
    size_t cap = 0;
    for (;;) {
        if (!skip_cfws(c))
            return false;
        if (peek(c, ';')) {
            c->i++;
            return skip_cfws(c);
        }
        if (c->i >= c->n)
            return fail(c, "group without its closing ';'");
        addr_mailbox m = {0};
        bool nothing;
        if (!mailbox(c, &m, false, NULL, NULL, &nothing, oom)) {
            mbox_fini(&m);
            return false;
        }
        if (!nothing && !push_mbox(&e->members, &e->n_members, &cap, &m, oom)) {
            mbox_fini(&m);
            return false;
        }
        if (!skip_cfws(c))
            return false;
        if (peek(c, ','))
            c->i++;
        else if (!peek(c, ';'))
            return c->i >= c->n ? fail(c, "group without its closing ';'")
                                : fail(c, "expected ',' or ';' in a group");
    }
}

int addr_list_parse(const char *s, size_t n, addr_list *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    if (errlen)
        err[0] = 0;
    cur c = {.s = s, .n = n, .err = err, .errlen = errlen};
    bool oom = false;
    size_t cap = 0;
    while (!c.failed && !oom) {
        if (!skip_cfws(&c))
            break;
        if (c.i >= c.n)
            break;
        if (peek(&c, ',')) {
            c.i++; /* obs-addr-list: an empty element */
            continue;
        }
        addr_entry e = {0};
        bool is_group = false, nothing = false;
        sbuf gname = {0};
        if (!mailbox(&c, &e.mbox, true, &is_group, &gname, &nothing, &oom)) {
            entry_fini(&e);
            break;
        }
        if (is_group) {
            e.is_group = true;
            if (gname.len) {
                size_t dl;
                e.group_name = rfc2047_decode(gname.p, gname.len, &dl);
                if (!e.group_name)
                    oom = true;
            }
            sbuf_fini(&gname);
            if (oom || !group_body(&c, &e, &oom)) {
                entry_fini(&e);
                break;
            }
        }
        if (!nothing && !push_entry(out, &cap, &e, &oom)) {
            entry_fini(&e);
            break;
        }
        if (!skip_cfws(&c))
            break;
        if (c.i >= c.n)
            break;
        if (!peek(&c, ',')) {
            fail(&c, "expected ',' between addresses");
            break;
        }
        c.i++;
    }
    if (c.failed || oom) {
        addr_list_fini(out);
        if (oom && errlen)
            snprintf(err, errlen, "out of memory");
        return oom ? KERR_NOMEM : KERR_PARSE;
    }
    return 0;
}

void addr_list_fini(addr_list *l)
{
    for (size_t i = 0; i < l->n; i++)
        entry_fini(&l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = 0;
}

/* True when s is a dot-atom (RFC 5322 §3.2.3): atoms joined by single dots. */
static bool is_dot_atom(const char *s)
{
    if (!*s || *s == '.')
        return false;
    char prev = 0;
    for (; *s; s++) {
        if (*s == '.') {
            if (prev == '.')
                return false;
        } else if (!is_atext((unsigned char)*s)) {
            return false;
        }
        prev = *s;
    }
    return prev != '.';
}

char *addr_spec_format(const char *local, const char *domain_)
{
    if (!local || !domain_)
        return NULL;
    sbuf b = {0};
    if (is_dot_atom(local)) {
        sbuf_puts(&b, local);
    } else {
        sbuf_putc(&b, '"');
        for (const char *p = local; *p; p++) {
            if (*p == '"' || *p == '\\')
                sbuf_putc(&b, '\\');
            sbuf_putc(&b, *p);
        }
        sbuf_putc(&b, '"');
    }
    sbuf_putc(&b, '@');
    sbuf_puts(&b, domain_);
    return sbuf_finish(&b, NULL);
}
