/* SMTP delivery. open() builds the connection plan: the smart hosts of
 * mx_list in order, or the MX hosts of the routing domain by preference,
 * each resolved to addresses per ip_lookup_strategy. An address may carry a
 * port (mx_list 'host:port', {addr='ip:port'}, a routing domain
 * 'domain:port' or '[ip]:port'); the port connected to is, as in KumoMTA,
 * the egress source's remote_port, else the address's port, else the
 * egress path's smtp_port, and the record's peer_address shows the
 * address with its own port. prohibited_hosts stops
 * the whole ready queue (550 5.4.4), skip_hosts removes entries. It then
 * connects to each address in turn until one greets and completes EHLO (and
 * STARTTLS per enable_tls). send() runs one transaction and maps each
 * recipient's reply: 2xx delivered, 4xx/3xx/503 transient, other 5xx
 * permanent. A broken connection ends the dispatcher after the current
 * message. Runs on the ready queue's reactor; all I/O is asynchronous. */
#include "delivery/smtp_deliver.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "core/diag.h"
#include "core/duration.h"
#include "core/kerr.h"
#include "core/reactor.h"
#include "delivery/rewrite_status.h"
#include "net/cidr.h"
#include "net/dns.h"
#include "msg/queue_name.h"
#include "net/sockaddr.h"
#include "msg/queue_name.h"
#include "queue/dispatch.h"
#include "smtp/client.h"
#include "smtp/trace.h"

#define SMOD "kumod::smtp_client"

typedef struct target {
    char *name; /* MX host name (for SNI and peer_address.name) */
    dns_addr addr;
    uint16_t port; /* carried by the address (mx_list, routing domain); 0: none */
} target;

typedef struct sconn {
    dispatcher *d;
    target *targets;
    size_t n_targets, cap_targets;
    size_t next_target;
    size_t pending_lookups;
    char **hosts; /* host names still to resolve, in order */
    char **names; /* display names (mx_list {name=, addr=}); NULL: the host */
    uint16_t *host_ports;
    size_t n_hosts;
    size_t resolved; /* index of the next host result to merge */
    dns_addrs **host_results;
    smtpcli *cli;
    char ehlo[256];
    /* the failure of every candidate tried, joined with ", " (KumoMTA's
     * "failed to connect to any candidate hosts: ..." names them all) */
    char errors[2048];
    int last_code;
    bool dead;
    bool lookups_cancelled;
    struct sconn_ref *ref;
    message *cur;     /* the message being sent (reference held) */
    /* pipelining: the next message (disp_prefetch), reference held; queued
     * in the client behind cur when ahead_queued */
    message *ahead;
    bool ahead_queued;
    trace_conn *trace; /* kcli trace-smtp-client; NULL when nobody traces */
    size_t batch_off; /* first recipient of the current transaction */
} sconn;

/* Lookups may complete after the dispatcher went away: they hold this. */
typedef struct sconn_ref {
    sconn *c; /* NULL once the connection state is gone */
    int refs;
} sconn_ref;

static void ref_drop(sconn_ref *r)
{
    if (--r->refs == 0)
        free(r);
}

static void sconn_free(sconn *c)
{
    for (size_t i = 0; i < c->n_targets; i++)
        free(c->targets[i].name);
    free(c->targets);
    for (size_t i = 0; i < c->n_hosts; i++) {
        free(c->hosts[i]);
        if (c->names)
            free(c->names[i]);
        if (c->host_results && c->host_results[i])
            free(c->host_results[i]);
    }
    message_unref(c->cur);
    message_unref(c->ahead);
    trace_conn_unref(c->trace);
    free(c->hosts);
    free(c->names);
    free(c->host_ports);
    free(c->host_results);
    c->ref->c = NULL;
    ref_drop(c->ref);
    free(c);
}

static void add_target(sconn *c, const char *name, const dns_addr *a, uint16_t port)
{

    if (c->n_targets == c->cap_targets) {
        c->cap_targets = c->cap_targets ? c->cap_targets * 2 : 8;
        c->targets = realloc(c->targets, c->cap_targets * sizeof(target));
        if (!c->targets)
            abort();
    }
    target *t = &c->targets[c->n_targets++];
    t->name = strdup(name);
    t->addr = *a;
    t->port = port;
}

static void try_next_target(sconn *c);
static void on_body(smtpcli *cli, void *ud);

static void bulk(sconn *c, disp_outcome o, int code, int cls, int sub, int det,
                 const char *content, const char *reason)
{
    disp_response r = {code, cls, sub, det, content, NULL};
    disp_bulk_fail(c->d, o, &r, reason);
}

/* All host lookups are in: filter and connect. */
static void plan_ready(sconn *c)
{
    const egress_path_config *pc = disp_path_config(c->d);
    for (size_t h = 0; h < c->n_hosts; h++) {
        dns_addrs *res = c->host_results[h];
        if (!res)
            continue;
        for (size_t i = 0; i < res->n_addrs; i++) {
            const dns_addr *a = &res->addrs[i];
            if (cidr_list_match_str(&pc->prohibited_hosts, a->text)) {
                char content[600];
                snprintf(content, sizeof(content),
                         "%s:%s is on the list of prohibited_hosts", c->hosts[h], a->text);
                bulk(c, OUTCOME_PERMANENT, 550, 5, 4, 4, content, "MxWasProhibited");
                return;
            }
            if (cidr_list_match_str(&pc->skip_hosts, a->text))
                continue;
            add_target(c, c->names[h] ? c->names[h] : c->hosts[h], a,
                       c->host_ports[h] ? c->host_ports[h] : res->port);
        }
    }
    if (c->n_targets == 0) {
        bool any = false;
        for (size_t h = 0; h < c->n_hosts; h++)
            any |= c->host_results[h] && c->host_results[h]->n_addrs > 0;
        if (any)
            bulk(c, OUTCOME_TRANSIENT, 451, 4, 4, 4,
                 "KumoMTA internal: MX consisted solely of hosts on the skip_hosts list",
                 "MxWasSkipped");
        else
            bulk(c, OUTCOME_TRANSIENT, 451, 4, 4, 4, "MX didn't resolve to any hosts",
                 "MxResolvedToZeroHosts");
        return;
    }
    try_next_target(c);
}

/* dns_addrs is borrowed in the callback: keep a flat copy. */
static dns_addrs *copy_addrs(const dns_addrs *res)
{
    dns_addrs *cp = calloc(1, sizeof(*cp) + res->n_addrs * sizeof(dns_addr));
    if (!cp)
        abort();
    dns_addr *arr = (dns_addr *)(cp + 1);
    memcpy(arr, res->addrs, res->n_addrs * sizeof(dns_addr));
    cp->status = res->status;
    cp->addrs = arr;
    cp->n_addrs = res->n_addrs;
    cp->port = res->port;
    return cp;
}

struct addr_job {
    sconn_ref *ref;
    size_t idx;
};

/* A lookup dropped unanswered at shutdown: only the reference goes. */
static void drop_addr_job(void *ud)
{
    struct addr_job *j = ud;
    ref_drop(j->ref);
    free(j);
}

static void drop_mx_ref(void *ud)
{
    ref_drop(ud);
}

static void on_addrs(const dns_addrs *res, void *ud)
{
    struct addr_job *j = ud;
    sconn *c = j->ref->c;
    size_t idx = j->idx;
    ref_drop(j->ref);
    free(j);
    if (!c)
        return;
    c->host_results[idx] = copy_addrs(res);
    if (--c->pending_lookups == 0)
        plan_ready(c);
}

static void resolve_hosts(sconn *c)
{
    const egress_path_config *pc = disp_path_config(c->d);
    int strategy;
    switch (pc->ip_lookup_strategy) {
    case 0:
        strategy = DNS_IPV4_ONLY;
        break;
    case 1:
        strategy = DNS_IPV6_ONLY;
        break;
    case 3:
        strategy = DNS_IPV6_THEN_IPV4;
        break;
    case 4:
        strategy = DNS_IPV4_THEN_IPV6;
        break;
    default:
        strategy = DNS_IPV4_AND_IPV6;
    }
    c->host_results = calloc(c->n_hosts ? c->n_hosts : 1, sizeof(dns_addrs *));
    c->pending_lookups = c->n_hosts;
    if (c->n_hosts == 0) {
        plan_ready(c);
        return;
    }
    for (size_t i = 0; i < c->n_hosts; i++) {
        struct addr_job *j = malloc(sizeof(*j));
        if (!j)
            abort();
        j->ref = c->ref;
        j->ref->refs++;
        j->idx = i;
        if (dns_lookup_addrs_owned(c->hosts[i], strategy, on_addrs, j, drop_addr_job) != 0) {
            /* counted as a host without addresses */
            ref_drop(j->ref);
            free(j);
            if (--c->pending_lookups == 0)
                plan_ready(c);
        }
    }
}

static void add_host(sconn *c, const char *name, uint16_t port)
{
    c->names = realloc(c->names, (c->n_hosts + 1) * sizeof(char *));
    if (!c->names)
        abort();
    c->names[c->n_hosts] = NULL;
    c->hosts = realloc(c->hosts, (c->n_hosts + 1) * sizeof(char *));
    c->host_ports = realloc(c->host_ports, (c->n_hosts + 1) * sizeof(uint16_t));
    if (!c->hosts || !c->host_ports)
        abort();
    c->hosts[c->n_hosts] = strdup(name);
    c->host_ports[c->n_hosts] = port;
    c->n_hosts++;
}

static void on_mx(const dns_mx *mx, void *ud)
{
    sconn_ref *ref = ud;
    sconn *c = ref->c;
    ref_drop(ref);
    if (!c)
        return;
    if (mx->status == DNS_NULL_MX) {
        bulk(c, OUTCOME_PERMANENT, 556, 5, 1, 10, "Recipient address has a null MX",
             "FailedDueToNullMx");
        return;
    }
    if (mx->status != DNS_OK) {
        disp_resolve_fail(c->d, mx->error ? mx->error : dns_status_name(mx->status));
        return;
    }
    for (size_t i = 0; i < mx->n_hosts; i++) {
        /* "mx.example.com.:2525", "10.0.0.1:2525", "[::1]:2525": the name
         * connected to and shown is the host without its port */
        const char *h = mx->hosts[i].name;
        size_t hl = strlen(h);
        uint16_t port = 0;
        char host[300];
        const char *close = h[0] == '[' ? strstr(h, "]:") : NULL;
        if (close && dns_split_port(close + 1, &hl, &port)) {
            snprintf(host, sizeof(host), "%.*s", (int)(close - h - 1), h + 1);
        } else if (dns_split_port(h, &hl, &port)) {
            snprintf(host, sizeof(host), "%.*s", (int)hl, h);
        } else {
            snprintf(host, sizeof(host), "%s", h);
            port = 0;
        }
        add_host(c, host, port);
    }
    resolve_hosts(c);
}

/* Adds one candidate's failure to c->errors, without the "KumoMTA
 * internal: " the client put in front: the summary has it once. */
static void add_error(sconn *c, const char *why)
{
    static const char internal[] = "KumoMTA internal: ";
    if (strncmp(why, internal, sizeof(internal) - 1) == 0)
        why += sizeof(internal) - 1;
    size_t used = strlen(c->errors);
    if (used >= sizeof(c->errors) - 1)
        return;
    snprintf(c->errors + used, sizeof(c->errors) - used, "%s%s", used ? ", " : "", why);
}

static void on_ready(smtpcli *cli, int err, const smtpcli_response *resp, void *ud)
{
    sconn *c = ud;
    if (err) {
        const char *why = resp && resp->content ? resp->content : kerr_str(err);
        add_error(c, why);
        c->last_code = resp && resp->code ? resp->code : 400;
        DDEBUG(SMOD, "session=%s connection to %s failed: %s", disp_session_id(c->d),
               smtpcli_peer(cli), why);
        smtpcli_abort(cli);
        c->cli = NULL;
        try_next_target(c);
        return;
    }
    target *t = &c->targets[c->next_target - 1];
    /* KumoMTA logs the resolved address as planned: with the port it
     * carried, without the one smtp_port or remote_port supplied */
    char shown[INET6_ADDRSTRLEN + 16];
    if (!t->port)
        snprintf(shown, sizeof(shown), "%s", t->addr.text);
    else if (t->addr.family == AF_INET6)
        snprintf(shown, sizeof(shown), "[%s]:%u", t->addr.text, (unsigned)t->port);
    else
        snprintf(shown, sizeof(shown), "%s:%u", t->addr.text, (unsigned)t->port);
    disp_set_peer(c->d, t->name, shown);
    smtpcli_set_body_cb(cli, on_body, c);
    const smtpcli_tls_info *tls = smtpcli_tls(cli);
    if (tls && tls->cipher) {
        disp_set_tls(c->d, tls->cipher, tls->protocol_version);
        char subj[1024] = "";
        size_t o = 0;
        for (size_t i = 0; i < tls->n_subject_name && o < sizeof(subj) - 2; i++)
            o += (size_t)snprintf(subj + o, sizeof(subj) - o, "%s%s", i ? "\n" : "",
                                  tls->subject_name[i]);
        disp_set_tls_subject(c->d, tls->n_subject_name ? subj : NULL);
    }
    socklen_t ll = 0;
    const struct sockaddr *la = smtpcli_local_address(cli, &ll);
    if (la) {
        char ip[INET6_ADDRSTRLEN] = "", full[INET6_ADDRSTRLEN + 16];
        if (la->sa_family == AF_INET) {
            const struct sockaddr_in *s4 = (const struct sockaddr_in *)la;
            inet_ntop(AF_INET, &s4->sin_addr, ip, sizeof(ip));
            snprintf(full, sizeof(full), "%s:%u", ip, ntohs(s4->sin_port));
        } else {
            const struct sockaddr_in6 *s6 = (const struct sockaddr_in6 *)la;
            inet_ntop(AF_INET6, &s6->sin6_addr, ip, sizeof(ip));
            snprintf(full, sizeof(full), "[%s]:%u", ip, ntohs(s6->sin6_port));
        }
        disp_set_source_address(c->d, full);
    }
    disp_opened(c->d, true, NULL);
}

static void try_next_target(sconn *c)
{
    dispatcher *d = c->d;
    if (c->next_target >= c->n_targets) {
        char content[2200];
        snprintf(content, sizeof(content), "KumoMTA internal: failed to connect to any candidate "
                                           "hosts: %s",
                 c->errors[0] ? c->errors : "no candidates");
        disp_response r = {c->last_code && c->last_code != 421 ? c->last_code : 400, 0, 0, 0,
                           content, NULL};
        if (r.code < 400)
            r.code = 400;
        disp_opened(d, false, &r);
        return;
    }
    target *t = &c->targets[c->next_target++];
    const egress_path_config *pc = disp_path_config(d);
    const egress_source *src = disp_source(d);
    smtpcli_params p;
    smtpcli_params_init(&p);
    p.ehlo_domain = c->ehlo;
    /* MX names come fully qualified ("mx.example.com."); certificates and
     * SNI use the name without the root dot */
    char bare[300];
    snprintf(bare, sizeof(bare), "%s", t->name);
    size_t bl = strlen(bare);
    if (bl > 1 && bare[bl - 1] == '.')
        bare[bl - 1] = 0;
    p.hostname = bare;
    p.label = disp_readyq_name(d);
    p.session_id = disp_session_id(d);
    if (c->trace) {
        char shown[INET6_ADDRSTRLEN + 16];
        snprintf(shown, sizeof(shown), t->addr.family == AF_INET6 ? "[%s]:%u" : "%s:%u",
                 t->addr.text, (unsigned)(src && src->remote_port ? src->remote_port
                                          : t->port                ? t->port
                                                                   : pc->smtp_port));
        trace_conn_set(c->trace, "mx_host", json_string(bare));
        trace_conn_set(c->trace, "mx_address", json_string(shown));
        p.trace = c->trace;
    }
    p.enable_tls = (smtpcli_tls_mode)pc->enable_tls;
    p.enable_pipelining = pc->enable_pipelining;
    p.enable_rset = pc->enable_rset;
    p.timeouts.connect_ns = pc->connect_timeout_ns;
    p.timeouts.banner_ns = pc->banner_timeout_ns;
    p.timeouts.ehlo_ns = pc->ehlo_timeout_ns;
    p.timeouts.mail_from_ns = pc->mail_from_timeout_ns;
    p.timeouts.rcpt_to_ns = pc->rcpt_to_timeout_ns;
    p.timeouts.data_ns = pc->data_timeout_ns;
    p.timeouts.data_dot_ns = pc->data_dot_timeout_ns;
    p.timeouts.rset_ns = pc->rset_timeout_ns;
    p.timeouts.idle_ns = pc->idle_timeout_ns;
    p.timeouts.starttls_ns = pc->starttls_timeout_ns;
    p.timeouts.auth_ns = pc->auth_timeout_ns;
    p.auth_username = pc->auth_user;
    p.auth_password = pc->auth_password;
    p.allow_smtp_auth_plain_without_tls = pc->allow_auth_without_tls;
    if (src && src->source_address) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&p.source_address;
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&p.source_address;
        if (inet_pton(AF_INET, src->source_address, &s4->sin_addr) == 1) {
            s4->sin_family = AF_INET;
            p.source_address_len = sizeof(*s4);
        } else if (inet_pton(AF_INET6, src->source_address, &s6->sin6_addr) == 1) {
            s6->sin6_family = AF_INET6;
            p.source_address_len = sizeof(*s6);
        }
    }
    /* remote_port overrides the address's port, which overrides smtp_port
     * (make_egress_source remote_port, make_queue_config protocol) */
    uint16_t port = src && src->remote_port ? (uint16_t)src->remote_port
                    : t->port               ? t->port
                                            : (uint16_t)pc->smtp_port;
    struct sockaddr_storage ss = {0};
    socklen_t len;
    if (t->addr.family == AF_INET) {
        struct sockaddr_in *s4 = (struct sockaddr_in *)&ss;
        s4->sin_family = AF_INET;
        s4->sin_addr = t->addr.u.v4;
        s4->sin_port = htons(port);
        len = sizeof(*s4);
    } else {
        struct sockaddr_in6 *s6 = (struct sockaddr_in6 *)&ss;
        s6->sin6_family = AF_INET6;
        s6->sin6_addr = t->addr.u.v6;
        s6->sin6_port = htons(port);
        len = sizeof(*s6);
    }
    disp_set_phase(d, PHASE_ATTEMPTING_CONNECTION, t->name);
    c->cli = smtpcli_connect(reactor_base(reactor_current()), (struct sockaddr *)&ss, len, &p,
                             on_ready, c);
    if (!c->cli) {
        char why[INET6_ADDRSTRLEN + 64];
        snprintf(why, sizeof(why), "cannot create a connection to %s", t->addr.text);
        add_error(c, why);
        try_next_target(c);
    }
}

static void sd_open(dispatcher *d)
{
    sconn *c = calloc(1, sizeof(*c));
    if (!c)
        abort();
    c->d = d;
    c->ref = calloc(1, sizeof(*c->ref));
    if (!c->ref)
        abort();
    c->ref->c = c;
    c->ref->refs = 1;
    disp_set_driver_state(d, c);
    const egress_path_config *pc = disp_path_config(d);
    const egress_source *src = disp_source(d);
    if (trace_on(TRACE_CLIENT)) {
        const char *pool = disp_queue_config(d)->egress_pool;
        c->trace = trace_conn_new(json_pack(
            "{s:s,s:s,s:s,s:s}", "egress_pool", pool ? pool : "unspecified", "egress_source",
            src && src->name ? src->name : "unspecified", "id", disp_session_id(d),
            "ready_queue_name", disp_readyq_name(d)));
    }
    const char *ehlo = pc->ehlo_domain ? pc->ehlo_domain
                                       : (src && src->ehlo_domain ? src->ehlo_domain : NULL);
    if (ehlo)
        snprintf(c->ehlo, sizeof(c->ehlo), "%s", ehlo);
    else if (gethostname(c->ehlo, sizeof(c->ehlo) - 1) != 0)
        snprintf(c->ehlo, sizeof(c->ehlo), "[127.0.0.1]");
    const queue_config *qc = disp_queue_config(d);
    if (qc->mx_list) {
        size_t i;
        json_t *e;
        json_array_foreach(qc->mx_list, i, e) {
            if (json_is_string(e)) {
                /* 'host:port' (KumoMTA's has_colon_port): resolve host,
                 * which is also the peer name; '[ip]:port' likewise */
                const char *s = json_string_value(e);
                size_t hl;
                uint16_t port;
                if (dns_split_port(s, &hl, &port)) {
                    char host[300];
                    snprintf(host, sizeof(host), "%.*s", (int)hl, s);
                    add_host(c, host, port);
                } else {
                    add_host(c, s, 0);
                }
            } else {
                /* {name=, addr=}: connect to addr ("ip", "ip:port",
                 * "[ip6]:port"; config.c checked it), name it name */
                const char *name = json_string_value(json_object_get(e, "name"));
                const char *addr = json_string_value(json_object_get(e, "addr"));
                struct sockaddr_storage ss;
                socklen_t sl;
                if (net_parse_hostport(addr, &ss, &sl) == 0) {
                    char ip[INET6_ADDRSTRLEN];
                    net_format_addr((const struct sockaddr *)&ss, ip, sizeof(ip), NULL, 0);
                    add_host(c, ip, (uint16_t)net_sockaddr_port(&ss));
                } else {
                    add_host(c, addr, 0);
                }
                c->names[c->n_hosts - 1] = strdup(name);
            }
        }
        resolve_hosts(c);
        return;
    }
    const char *dom = disp_routing_domain(d) ? disp_routing_domain(d) : disp_domain(d);
    c->ref->refs++;
    disp_set_phase(d, PHASE_ATTEMPTING_CONNECTION, "resolving MX");
    if (dns_lookup_mx_owned(dom, on_mx, c->ref, drop_mx_ref) != 0) {
        ref_drop(c->ref);
        disp_resolve_fail(c->d, "the MX lookup could not be started");
    }
}

static void send_batch(sconn *c);
static void on_sent(smtpcli *cli, const smtpcli_result *res, void *ud);

/* Recipients of m's transaction starting at off (max_recipients_per_batch). */
static size_t batch_len(sconn *c, const message *m, size_t off)
{
    int max = disp_path_config(c->d)->max_recipients_per_batch;
    size_t n = m->n_rcpts - off;
    return max > 0 && n > (size_t)max ? (size_t)max : n;
}

/* Pipelining: once cur's last transaction is under way, ask the dispatcher
 * for the next message, so that its commands can go out behind cur's dot.
 * Not while a policy may rewrite the responses (that waits for Lua, and
 * the next message's replies must not overtake it) or the session is
 * traced (the trace names one message at a time). */
static void maybe_prefetch(sconn *c)
{
    if (c->ahead || !c->cur || !c->cli || c->trace || !smtpcli_pipelines(c->cli) ||
        c->batch_off + batch_len(c, c->cur, c->batch_off) < c->cur->n_rcpts || rwst_wanted())
        return;
    disp_prefetch(c->d);
}

/* The body of cur is about to go out: a message that reached the ready
 * queue since cur's envelope was sent can still ride behind its dot. */
static void on_body(smtpcli *cli, void *ud)
{
    (void)cli;
    maybe_prefetch(ud);
}

static void sd_ahead(dispatcher *d, message *m)
{
    sconn *c = disp_driver_state(d);
    message_ref(m);
    c->ahead = m;
    c->ahead_queued = false;
    if (!c->cli)
        return;
    /* its first (and usually only) transaction goes behind cur's; a later
     * slice of max_recipients_per_batch is sent once it is current */
    size_t n = batch_len(c, m, 0);
    c->ahead_queued = smtpcli_send_next(c->cli, m->sender, (const char *const *)m->rcpts, n,
                                        m->data, m->data_len, on_sent, c) == 0;
}

/* cur was reported: the message ahead, if any, is the dispatcher's current
 * one now; it is already in the client (its replies follow) or is sent
 * now. */
static void take_ahead(sconn *c)
{
    message *m = c->ahead;
    if (!m)
        return;
    c->ahead = NULL;
    message_unref(c->cur);
    c->cur = m;
    c->batch_off = 0;
    if (c->ahead_queued) {
        c->ahead_queued = false;
        maybe_prefetch(c);
        return;
    }
    if (!c->cli || !smtpcli_usable(c->cli)) {
        /* never sent: back without an attempt */
        message_unref(c->cur);
        c->cur = NULL;
        disp_not_attempted(c->d);
        take_ahead(c);
        return;
    }
    send_batch(c);
}

/* The outcome of cur's last transaction (outcome -1: per recipient). */
static void report(sconn *c, int outcome, const disp_response *r)
{
    message_unref(c->cur);
    c->cur = NULL;
    disp_delivered(c->d, outcome, r);
    take_ahead(c);
}

/* The outcomes of one transaction: rs[i] is the response for recipient
 * batch_off + i. */
static void apply_results(sconn *c, const disp_response *rs, size_t n, bool broken)
{
    dispatcher *d = c->d;
    size_t base = c->batch_off;
    bool whole = base == 0 && n == c->cur->n_rcpts;
    for (size_t i = 0; i < n; i++) {
        const disp_response *r = &rs[i];
        disp_outcome o;
        if (r->code >= 200 && r->code < 300)
            o = OUTCOME_DELIVERED;
        else if (r->code >= 500 && r->code != 503)
            o = OUTCOME_PERMANENT;
        else
            o = OUTCOME_TRANSIENT;
        if (whole && n == 1) {
            report(c, (int)o, r);
            return;
        }
        disp_recipient_outcome(d, base + i, o, r);
    }
    /* max_recipients_per_batch: the next transaction takes the next slice */
    c->batch_off += n;
    if (c->batch_off < c->cur->n_rcpts && !broken) {
        send_batch(c);
        return;
    }
    report(c, -1, NULL);
}

/* The responses of a transaction while smtp_client_rewrite_delivery_status
 * looks at them (the result of smtpcli_send lives only during on_sent). */
typedef struct rewrite_wait {
    sconn_ref *ref;
    rwst_resp *rs;
    size_t n;
    bool broken;
} rewrite_wait;

static void rewrite_done(void *ud)
{
    rewrite_wait *w = ud;
    sconn *c = w->ref->c; /* NULL: the dispatcher went away meanwhile */
    if (c && c->cur) {
        disp_response *dr = calloc(w->n, sizeof(*dr));
        if (!dr)
            abort();
        for (size_t i = 0; i < w->n; i++)
            dr[i] = (disp_response){w->rs[i].code,          w->rs[i].enh_class,
                                    w->rs[i].enh_subject,   w->rs[i].enh_detail,
                                    w->rs[i].content,       w->rs[i].command};
        apply_results(c, dr, w->n, w->broken);
        free(dr);
    }
    for (size_t i = 0; i < w->n; i++) {
        free(w->rs[i].content);
        free(w->rs[i].command);
    }
    free(w->rs);
    ref_drop(w->ref);
    free(w);
}

static void on_sent(smtpcli *cli, const smtpcli_result *res, void *ud)
{
    sconn *c = ud;
    /* (with a pipelined transaction behind this one the session is busy,
     * not broken) */
    bool broken = res->transport_failed || !smtpcli_alive(cli);
    if (broken)
        disp_close_after_this(c->d);
    if (res->unanswered && c->batch_off == 0) {
        /* pipelined behind the previous message, and the connection ended
         * before the server answered any of it: not an attempt */
        message_unref(c->cur);
        c->cur = NULL;
        disp_not_attempted(c->d);
        take_ahead(c);
        return;
    }
    bool rewrite = false;
    for (size_t i = 0; i < res->n_rcpts && !rewrite; i++)
        rewrite = rwst_eligible(res->rcpts[i].response.code, res->rcpts[i].response.content);
    if (rewrite && rwst_wanted()) {
        /* the policy may reclassify the refusals first (it may wait) */
        rewrite_wait *w = calloc(1, sizeof(*w));
        rwst_resp *rs = calloc(res->n_rcpts, sizeof(*rs));
        char *queue = queue_name_of_message(c->cur);
        if (!w || !rs || !queue)
            abort();
        for (size_t i = 0; i < res->n_rcpts; i++) {
            const smtpcli_response *r = &res->rcpts[i].response;
            rs[i] = (rwst_resp){r->code, r->enh_class, r->enh_subject, r->enh_detail,
                                strdup(r->content ? r->content : ""),
                                r->command ? strdup(r->command) : NULL};
            if (!rs[i].content || (r->command && !rs[i].command))
                abort();
        }
        w->ref = c->ref;
        w->ref->refs++;
        w->rs = rs;
        w->n = res->n_rcpts;
        w->broken = broken;
        rwst_run(rs, res->n_rcpts, queue, rewrite_done, w);
        free(queue);
        return;
    }
    disp_response dr_small[8];
    disp_response *dr = res->n_rcpts <= 8 ? dr_small : calloc(res->n_rcpts, sizeof(*dr));
    if (!dr)
        abort();
    for (size_t i = 0; i < res->n_rcpts; i++) {
        const smtpcli_response *r = &res->rcpts[i].response;
        dr[i] = (disp_response){r->code,       r->enh_class, r->enh_subject,
                                r->enh_detail, r->content,   r->command};
    }
    apply_results(c, dr, res->n_rcpts, broken);
    if (dr != dr_small)
        free(dr);
}

static void send_batch(sconn *c)
{
    dispatcher *d = c->d;
    message *m = c->cur;
    size_t n = batch_len(c, m, c->batch_off);
    if (!c->cli || !smtpcli_usable(c->cli) ||
        smtpcli_send(c->cli, m->sender, (const char *const *)m->rcpts + c->batch_off, n, m->data,
                     m->data_len, on_sent, c) != 0) {
        disp_close_after_this(d);
        disp_response r = {421, 4, 4, 2, "KumoMTA internal: connection is no longer usable",
                           NULL};
        if (m->n_rcpts == 1 || c->batch_off == 0) {
            report(c, OUTCOME_TRANSIENT, &r);
        } else {
            for (size_t i = c->batch_off; i < m->n_rcpts; i++)
                disp_recipient_outcome(d, i, OUTCOME_TRANSIENT, &r);
            report(c, -1, NULL);
        }
        return;
    }
    maybe_prefetch(c);
}

/* KumoMTA's per-message keys of the trace meta, then MessageObtained. */
static void trace_message(sconn *c, const message *m)
{
    char id[SPOOLID_HEX_LEN + 1];
    spoolid_to_hex(&m->id, id);
    trace_conn_set(c->trace, "message_id", json_string(id));
    trace_conn_set(c->trace, "sender", json_string(m->sender));
    size_t rl = 1;
    for (size_t i = 0; i < m->n_rcpts; i++)
        rl += strlen(m->rcpts[i]) + 2;
    char *rcpts = malloc(rl);
    if (rcpts) {
        size_t o = 0;
        for (size_t i = 0; i < m->n_rcpts; i++)
            o += (size_t)sprintf(rcpts + o, "%s%s", i ? ", " : "", m->rcpts[i]);
        rcpts[o] = 0;
        trace_conn_set(c->trace, "recipient", json_string(rcpts));
        free(rcpts);
    }
    char *q = queue_name_of_message(m);
    queue_name_parts qp;
    if (q && queue_name_parse(q, &qp) == 0) {
        trace_conn_set(c->trace, "domain", qp.domain ? json_string(qp.domain) : NULL);
        trace_conn_set(c->trace, "routing_domain",
                       qp.routing_domain ? json_string(qp.routing_domain) : json_null());
        trace_conn_set(c->trace, "campaign", qp.campaign ? json_string(qp.campaign) : NULL);
        trace_conn_set(c->trace, "tenant", qp.tenant ? json_string(qp.tenant) : NULL);
        trace_conn_set(c->trace, "queue_name", json_string(q));
        queue_name_parts_fini(&qp);
    }
    free(q);
    trace_conn_emit(c->trace, TRACE_MESSAGE_OBTAINED, NULL, NULL, 0);
}

static void sd_send(dispatcher *d, message *m)
{
    sconn *c = disp_driver_state(d);
    disp_set_phase(d, PHASE_DELIVERING_MESSAGE, "smtp: send");
    message_ref(m);
    message_unref(c->cur);
    c->cur = m;
    c->batch_off = 0;
    if (c->trace)
        trace_message(c, m);
    send_batch(c);
}

static void sd_close(dispatcher *d)
{
    sconn *c = disp_driver_state(d);
    if (!c)
        return;
    disp_set_driver_state(d, NULL);
    if (c->cli)
        smtpcli_quit(c->cli);
    sconn_free(c);
}

static void sd_abort(dispatcher *d)
{
    sconn *c = disp_driver_state(d);
    if (!c)
        return;
    disp_set_driver_state(d, NULL);
    if (c->cli)
        smtpcli_abort(c->cli);
    sconn_free(c);
}

static bool sd_usable(dispatcher *d)
{
    sconn *c = disp_driver_state(d);
    return c && c->cli && smtpcli_usable(c->cli);
}

/* The watchdog's default for SMTP: max(2 x the longest per-command
 * timeout, 60 s). */
static int64_t sd_watchdog_ns(const egress_path_config *cfg)
{
    int64_t m = cfg->mail_from_timeout_ns;
    if (cfg->rcpt_to_timeout_ns > m)
        m = cfg->rcpt_to_timeout_ns;
    if (cfg->data_timeout_ns > m)
        m = cfg->data_timeout_ns;
    if (cfg->data_dot_timeout_ns > m)
        m = cfg->data_dot_timeout_ns;
    return 2 * m > 60 * NS_PER_SEC ? 2 * m : 60 * NS_PER_SEC;
}

static const disp_driver smtp_driver = {
    .usable = sd_usable,
    .delivery_protocol = "ESMTP",
    .open = sd_open,
    .send = sd_send,
    .ahead = sd_ahead,
    .close = sd_close,
    .abort = sd_abort,
    .watchdog_ns = sd_watchdog_ns,
};

void smtp_deliver_register(void)
{
    dispatch_register_driver(QPROTO_SMTP, &smtp_driver);
}
