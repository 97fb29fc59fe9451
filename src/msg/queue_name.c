/* Queue-name rules (spec §1.4). Pure; allocation failure aborts. */
#include "msg/queue_name.h"

#include <ctype.h>
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

char *queue_name_build(const char *campaign, const char *tenant, const char *domain,
                       const char *routing_domain)
{
    size_t len = strlen(domain) + (campaign ? strlen(campaign) : 0) +
                 (tenant ? strlen(tenant) : 0) + (routing_domain ? strlen(routing_domain) : 0) +
                 8;
    char *out = malloc(len);
    if (!out)
        abort();
    size_t o = 0;
    if (campaign || tenant) {
        if (campaign)
            o += (size_t)sprintf(out + o, "%s:", campaign);
        if (tenant)
            o += (size_t)sprintf(out + o, "%s", tenant);
        out[o++] = '@';
    }
    for (const char *p = domain; *p; p++)
        out[o++] = (char)tolower((unsigned char)*p);
    out[o] = 0;
    if (routing_domain)
        sprintf(out + o, "!%s", routing_domain);
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
            out->campaign = xstrndup(name, (size_t)(colon - name));
            out->tenant = xstrndup(colon + 1, (size_t)(at - colon - 1));
        } else {
            out->tenant = xstrndup(name, (size_t)(at - name));
        }
        dom = at + 1;
    }
    const char *bang = strchr(dom, '!');
    if (bang) {
        out->domain = xstrndup(dom, (size_t)(bang - dom));
        out->routing_domain = xstrndup(bang + 1, strlen(bang + 1));
    } else {
        out->domain = xstrndup(dom, strlen(dom));
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
