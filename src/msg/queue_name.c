/* Queue-name rules (spec §1.4). Pure; allocation failure aborts. */
#include "msg/queue_name.h"

#include <ctype.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/kerr.h"

static char *xstrndup(const char *s, size_t n)
{
    char *p = strndup(s, n);
    if (!p)
        abort();
    return p;
}

/* A component taken from meta (campaign, tenant, routing domain) or from
 * the recipient may hold the characters that separate the components of a
 * name. Left as they are, a tenant of "x@evil.test!evil.test" would become
 * the domain of the queue (issue 25). Such characters are written as %XX;
 * '%' itself too, so that parsing gives back exactly what was built. A
 * component without them is written verbatim, as KumoMTA writes it. */
static bool is_special(char c, const char *specials)
{
    return c == '%' || strchr(specials, c) != NULL;
}

static size_t put_component(char *out, const char *s, const char *specials, bool lower)
{
    static const char hex[] = "0123456789ABCDEF";
    size_t o = 0;
    for (; *s; s++) {
        unsigned char c = (unsigned char)*s;
        if (is_special((char)c, specials)) {
            out[o++] = '%';
            out[o++] = hex[c >> 4];
            out[o++] = hex[c & 15];
        } else {
            out[o++] = lower ? (char)tolower(c) : (char)c;
        }
    }
    return o;
}

char *queue_name_build(const char *campaign, const char *tenant, const char *domain,
                       const char *routing_domain)
{
    size_t len = 3 * (strlen(domain) + (campaign ? strlen(campaign) : 0) +
                      (tenant ? strlen(tenant) : 0) +
                      (routing_domain ? strlen(routing_domain) : 0)) +
                 8;
    char *out = malloc(len);
    if (!out)
        abort();
    /* What each component escapes: the separators queue_name_parse looks
     * for before it reaches that component's end. Parsing splits at the first
     * '@', then the prefix at its first ':', then the rest at its first '!'. */
    bool prefix = campaign || tenant;
    size_t o = 0;
    if (prefix) {
        if (campaign) {
            o += put_component(out + o, campaign, ":@", false);
            out[o++] = ':';
        }
        if (tenant)
            o += put_component(out + o, tenant, campaign ? "@" : ":@", false);
        out[o++] = '@';
    }
    o += put_component(out + o, domain, prefix ? "!" : "@!", true);
    if (routing_domain) {
        out[o++] = '!';
        o += put_component(out + o, routing_domain, prefix ? "" : "@", false);
    }
    out[o] = 0;
    return out;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    c = (char)tolower((unsigned char)c);
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

/* A copy of s[0..n) with %XX decoded (a '%' not followed by two hex digits
 * stays as it is: names written by hand or by KumoMTA are taken verbatim). */
static char *unescape_ndup(const char *s, size_t n)
{
    char *out = malloc(n + 1);
    if (!out)
        abort();
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        int hi, lo;
        /* %00 stays as written: a NUL would cut the component short */
        if (s[i] == '%' && i + 2 < n && (hi = hexval(s[i + 1])) >= 0 &&
            (lo = hexval(s[i + 2])) >= 0 && (hi | lo) != 0) {
            out[o++] = (char)(hi << 4 | lo);
            i += 2;
        } else {
            out[o++] = s[i];
        }
    }
    out[o] = 0;
    return out;
}

int queue_name_parse(const char *name, queue_name_parts *out)
{
    memset(out, 0, sizeof(*out));
    if (!*name)
        return KERR_PARSE;
    const char *at = strchr(name, '@');
    const char *dom = name;
    if (at) {
        const char *colon = memchr(name, ':', (size_t)(at - name));
        /* "campaign:@domain" and "@domain" have an empty (not absent) tenant */
        if (colon) {
            out->campaign = unescape_ndup(name, (size_t)(colon - name));
            out->tenant = unescape_ndup(colon + 1, (size_t)(at - colon - 1));
        } else {
            out->tenant = unescape_ndup(name, (size_t)(at - name));
        }
        dom = at + 1;
    }
    const char *bang = strchr(dom, '!');
    if (bang) {
        out->domain = unescape_ndup(dom, (size_t)(bang - dom));
        out->routing_domain = unescape_ndup(bang + 1, strlen(bang + 1));
    } else {
        out->domain = unescape_ndup(dom, strlen(dom));
    }
    return 0;
}

void queue_name_parts_fini(queue_name_parts *p)
{
    free(p->campaign);
    free(p->tenant);
    free(p->domain);
    free(p->routing_domain);
    memset(p, 0, sizeof(*p));
}

static const char *meta_str(const message *m, const char *key)
{
    const char *s = json_string_value(json_object_get(m->meta, key));
    return (s && *s) ? s : NULL;
}

char *queue_name_of_message(const message *m)
{
    const char *q = meta_str(m, "queue");
    if (q)
        return xstrndup(q, strlen(q));
    const char *domain = m->n_rcpts ? address_domain(m->rcpts[0]) : "";
    return queue_name_build(meta_str(m, "campaign"), meta_str(m, "tenant"), domain,
                            meta_str(m, "routing_domain"));
}
