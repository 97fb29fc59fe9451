/* Unit tests for src/net/dns.c and src/lua/dns_lua.c: the site_name table
 * (KumoMTA's own cases), port splitting and strategy names as pure
 * functions; then live lookups against a real dnsmasq on a free loopback
 * port, driven through a one-reactor pool: MX sorting and site names, the
 * no-MX fallback, NXDOMAIN, null MX, literals, A/AAAA per strategy, shared
 * queries, the MX deadline, reconfiguration, kumo.dns from a Lua event, and
 * answers served from the cache once dnsmasq is gone. */
#include <setjmp.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "core/kerr.h"
#include "core/reactor.h"
#include "lua/dns_lua.h"
#include "lua/klua.h"
#include "net/dns.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))
#define DNSMASQ "/usr/sbin/dnsmasq"

/* ---- pure functions ---------------------------------------------------------------- */

static void test_site_name_table(void **state)
{
    static const struct {
        const char *hosts[6];
        const char *want;
    } cases[] = {
        {{"mx.example.com."}, "mx.example.com"},
        {{"do.havedane.net."}, "do.havedane.net"},
        {{"mta5.am0.yahoodns.net", "mta6.am0.yahoodns.net", "mta7.am0.yahoodns.net"},
         "(mta5|mta6|mta7).am0.yahoodns.net"},
        /* case is normalised */
        {{"mta5.AM0.yahoodns.net", "mta6.am0.yAHOodns.net", "mta7.am0.yahoodns.net"},
         "(mta5|mta6|mta7).am0.yahoodns.net"},
        /* different lengths: '?' after the column some hosts lack */
        {{"gmail-smtp-in.l.google.com.", "alt1.gmail-smtp-in.l.google.com.",
          "alt2.gmail-smtp-in.l.google.com.", "alt3.gmail-smtp-in.l.google.com.",
          "alt4.gmail-smtp-in.l.google.com."},
         "(alt1|alt2|alt3|alt4)?.gmail-smtp-in.l.google.com"},
        {{"alt1.gmail-smtp-in.l.google.com.", "alt2.gmail-smtp-in.l.google.com."},
         "(alt1|alt2).gmail-smtp-in.l.google.com"},
        {{"mx1.a.example.", "b.example."}, "mx1?.(a|b).example"},
        /* totally different hosts */
        {{"aspmx.l.google.com.", "mx.other.net."}, "aspmx?.(l|mx).(google|other).(com|net)"},
        /* order of first appearance, not sorted */
        {{"example-com.mail.protection.outlook.com.", "mx-biz.mail.am0.yahoodns.net.",
          "mx-biz.mail.am0.yahoodns.net."},
         "(example-com|mx-biz).mail.(protection|am0).(outlook|yahoodns).(com|net)"},
        {{"mx-biz.mail.am0.yahoodns.net.", "mx-biz.mail.am0.yahoodns.net.",
          "example-com.mail.protection.outlook.com."},
         "(mx-biz|example-com).mail.(am0|protection).(yahoodns|outlook).(net|com)"},
        /* ports stick to the last label */
        {{"mta5.am0.yahoodns.net:123", "mta6.am0.yahoodns.net:123", "mta7.am0.yahoodns.net:123"},
         "(mta5|mta6|mta7).am0.yahoodns.net:123"},
        {{"mta5.am0.yahoodns.net:123", "mta6.am0.yahoodns.net:456", "mta7.am0.yahoodns.net:123"},
         "(mta5|mta6|mta7).am0.yahoodns.(net:123|net:456)"},
        /* null MX and invalid names */
        {{"."}, ""},
        {{"a..b", "mx.example.com"}, "mx.example.com"},
        {{NULL}, ""},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        size_t n = 0;
        while (n < ARRAY_LEN(cases[i].hosts) && cases[i].hosts[n])
            n++;
        char *got = dns_site_name(cases[i].hosts, n);
        assert_non_null(got);
        if (strcmp(got, cases[i].want) != 0)
            fail_msg("case %zu: got '%s', want '%s'", i, got, cases[i].want);
        free(got);
    }
}

static void test_split_port(void **state)
{
    static const struct {
        const char *in;
        bool ok;
        size_t len;
        uint16_t port;
    } cases[] = {
        {"example.com:25", true, 11, 25},
        {"example.com", false, 0, 0},
        {"::1", false, 0, 0},
        {"[::1]:25", false, 0, 0},
        {"10.0.0.1:2525", true, 8, 2525},
        {"host:65536", false, 0, 0},
        {"host:", false, 0, 0},
        {"host:+7", true, 4, 7},
        {"host:x1", false, 0, 0},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        size_t len = 0;
        uint16_t port = 0;
        bool ok = dns_split_port(cases[i].in, &len, &port);
        assert_int_equal(ok, cases[i].ok);
        if (ok) {
            assert_int_equal(len, cases[i].len);
            assert_int_equal(port, cases[i].port);
        }
    }
}

static void test_strategy_names(void **state)
{
    assert_int_equal(dns_ip_strategy_parse("Ipv4AndIpv6"), DNS_IPV4_AND_IPV6);
    assert_int_equal(dns_ip_strategy_parse("Ipv4Only"), DNS_IPV4_ONLY);
    assert_int_equal(dns_ip_strategy_parse("Ipv6Only"), DNS_IPV6_ONLY);
    assert_int_equal(dns_ip_strategy_parse("Ipv6ThenIpv4"), DNS_IPV6_THEN_IPV4);
    assert_int_equal(dns_ip_strategy_parse("Ipv4ThenIpv6"), DNS_IPV4_THEN_IPV6);
    assert_int_equal(dns_ip_strategy_parse("Ipv6thenIpv4"), DNS_IPV6_THEN_IPV4);
    assert_int_equal(dns_ip_strategy_parse("ipv4only"), KERR_INVAL);
    for (int s = DNS_IPV4_AND_IPV6; s <= DNS_IPV4_THEN_IPV6; s++)
        assert_int_equal(dns_ip_strategy_parse(dns_ip_strategy_name(s)), s);
    assert_string_equal(dns_status_name(DNS_NULL_MX), "NullMx");
}

static void test_configure_rejects(void **state)
{
    const char *bad[] = {"not-an-ip:53"};
    char err[256];
    dns_config c = {.name_servers = bad, .n_name_servers = 1};
    assert_int_equal(dns_configure_ex(&c, err, sizeof(err)), KERR_INVAL);
    assert_non_null(strstr(err, "not-an-ip:53"));
    const char *bad_port[] = {"127.0.0.1:99999"};
    c.name_servers = bad_port;
    assert_int_equal(dns_configure_ex(&c, err, sizeof(err)), KERR_INVAL);
    /* and off a reactor nothing can be looked up */
    assert_int_equal(dns_lookup_mx("example.com", NULL, NULL), KERR_INVAL);
}

/* ---- the live fixture ------------------------------------------------------------------ */

static struct {
    pid_t dnsmasq;
    int port;
    char logpath[64];
    char policy[64];
    int dead_fd; /* a UDP socket that never answers */
    int dead_port;
} fx = {.dnsmasq = -1, .dead_fd = -1};

static int free_port(void)
{
    for (int tries = 0; tries < 50; tries++) {
        int u = socket(AF_INET, SOCK_DGRAM, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
        socklen_t al = sizeof(a);
        if (u < 0 || bind(u, (struct sockaddr *)&a, sizeof(a)) != 0 ||
            getsockname(u, (struct sockaddr *)&a, &al) != 0) {
            if (u >= 0)
                close(u);
            continue;
        }
        int t = socket(AF_INET, SOCK_STREAM, 0);
        int one = 1;
        setsockopt(t, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
        bool ok = t >= 0 && bind(t, (struct sockaddr *)&a, sizeof(a)) == 0;
        if (t >= 0)
            close(t);
        close(u);
        if (ok)
            return ntohs(a.sin_port);
    }
    return -1;
}

static bool dnsmasq_ready(int port)
{
    int s = socket(AF_INET, SOCK_STREAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET,
                            .sin_port = htons((uint16_t)port),
                            .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    bool ok = connect(s, (struct sockaddr *)&a, sizeof(a)) == 0;
    close(s);
    return ok;
}

static pid_t start_dnsmasq(int port, const char *logpath)
{
    char portopt[32], logopt[96];
    snprintf(portopt, sizeof(portopt), "--port=%d", port);
    snprintf(logopt, sizeof(logopt), "--log-facility=%s", logpath);
    char *const argv[] = {
        DNSMASQ,
        "--keep-in-foreground",
        "--conf-file=/dev/null",
        "--pid-file=",
        "--no-resolv",
        "--no-hosts",
        portopt,
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--local=/test/",
        "--local-ttl=300",
        "--log-queries",
        logopt,
        "--mx-host=multi.test,mx1.multi.test,10",
        "--mx-host=multi.test,mx0.multi.test,10",
        "--mx-host=multi.test,mx2.multi.test,20",
        "--mx-host=shared.test,mx.shared.test,5",
        "--mx-host=lua.test,mx.lua.test,10",
        "--host-record=nomx.test,127.0.0.5",
        "--host-record=host.test,127.0.0.7,::7",
        "--host-record=v4only.test,127.0.0.8",
        "--host-record=v6only.test,::8",
        /* RFC 7505 null MX: preference 0, exchange the root */
        "--dns-rr=nullmx.test,15,000000",
        NULL,
    };
    pid_t pid = fork();
    if (pid == 0) {
        int devnull = open("/dev/null", 0);
        if (devnull >= 0) {
            dup2(devnull, 0);
            close(devnull);
        }
        execv(DNSMASQ, argv);
        _exit(127);
    }
    if (pid < 0)
        return -1;
    for (int i = 0; i < 500; i++) {
        if (dnsmasq_ready(port))
            return pid;
        int st;
        if (waitpid(pid, &st, WNOHANG) == pid)
            return -1;
        usleep(10000);
    }
    kill(pid, SIGKILL);
    waitpid(pid, NULL, 0);
    return -1;
}

static void stop_dnsmasq(void)
{
    if (fx.dnsmasq > 0) {
        kill(fx.dnsmasq, SIGTERM);
        waitpid(fx.dnsmasq, NULL, 0);
        fx.dnsmasq = -1;
    }
}

static void use_dnsmasq(void)
{
    char server[32];
    snprintf(server, sizeof(server), "127.0.0.1:%d", fx.port);
    const char *servers[] = {server};
    assert_int_equal(dns_configure(servers, 1), 0);
}

static int group_setup(void **state)
{
    if (access(DNSMASQ, X_OK) != 0) {
        fprintf(stderr, "test_dns: %s is not installed\n", DNSMASQ);
        return -1;
    }
    signal(SIGPIPE, SIG_IGN);
    snprintf(fx.logpath, sizeof(fx.logpath), "/tmp/kumod-test-dns-%d.log", (int)getpid());
    fx.port = free_port();
    if (fx.port < 0)
        return -1;
    fx.dnsmasq = start_dnsmasq(fx.port, fx.logpath);
    if (fx.dnsmasq < 0) {
        fprintf(stderr, "test_dns: dnsmasq did not start on port %d\n", fx.port);
        return -1;
    }
    /* a server that takes queries and never answers */
    fx.dead_fd = socket(AF_INET, SOCK_DGRAM, 0);
    struct sockaddr_in a = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
    socklen_t al = sizeof(a);
    if (fx.dead_fd < 0 || bind(fx.dead_fd, (struct sockaddr *)&a, sizeof(a)) != 0 ||
        getsockname(fx.dead_fd, (struct sockaddr *)&a, &al) != 0)
        return -1;
    fx.dead_port = ntohs(a.sin_port);

    dns_lua_register();
    if (reactor_pool_init(1) != 0 || reactor_pool_start() != 0)
        return -1;
    char server[32];
    snprintf(server, sizeof(server), "127.0.0.1:%d", fx.port);
    const char *servers[] = {server};
    return dns_configure(servers, 1);
}

static void free_resolver(void *arg)
{
    dns_reactor_free(reactor_current());
}

static int group_teardown(void **state)
{
    stop_dnsmasq();
    /* on the reactor's own thread, as a running kumod would */
    reactor_post(reactor_get(0), free_resolver, NULL);
    reactor_pool_stop();
    dns_reactor_free(reactor_get(0)); /* no-op by now */
    reactor_pool_free();
    dns_shutdown();
    if (fx.dead_fd >= 0)
        close(fx.dead_fd);
    unlink(fx.logpath);
    if (fx.policy[0])
        unlink(fx.policy);
    return 0;
}

static int test_setup(void **state)
{
    dns_cache_clear();
    return 0;
}

/* ---- waiting for a lookup on the reactor ---------------------------------------------------- */

struct waitbox {
    pthread_mutex_t m;
    pthread_cond_t cv;
    int done;
};

static void wb_init(struct waitbox *wb)
{
    pthread_mutex_init(&wb->m, NULL);
    pthread_cond_init(&wb->cv, NULL);
    wb->done = 0;
}

static void wb_signal(struct waitbox *wb)
{
    pthread_mutex_lock(&wb->m);
    wb->done++;
    pthread_cond_broadcast(&wb->cv);
    pthread_mutex_unlock(&wb->m);
}

static void wb_wait(struct waitbox *wb, int n)
{
    struct timespec dl;
    clock_gettime(CLOCK_REALTIME, &dl);
    dl.tv_sec += 20;
    pthread_mutex_lock(&wb->m);
    int rc = 0;
    while (wb->done < n && rc == 0)
        rc = pthread_cond_timedwait(&wb->cv, &wb->m, &dl);
    int done = wb->done;
    pthread_mutex_unlock(&wb->m);
    if (done < n)
        fail_msg("timed out waiting for %d lookups (%d done)", n, done);
    pthread_cond_destroy(&wb->cv);
    pthread_mutex_destroy(&wb->m);
}

struct mx_res {
    const char *domain;
    int rc;
    bool in_call, called_inline;
    int status;
    char error[512];
    char domain_name[256];
    char site_name[512];
    size_t n;
    char hosts[8][128];
    int prefs[8];
    bool literal, is_mx;
    uint16_t port;
    uint32_t ttl;
    struct waitbox *wb;
};

static void mx_cb(const dns_mx *mx, void *ud)
{
    struct mx_res *r = ud;
    r->called_inline = r->in_call;
    r->status = mx->status;
    snprintf(r->error, sizeof(r->error), "%s", mx->error ? mx->error : "");
    snprintf(r->domain_name, sizeof(r->domain_name), "%s", mx->domain_name);
    snprintf(r->site_name, sizeof(r->site_name), "%s", mx->site_name);
    r->n = mx->n_hosts;
    for (size_t i = 0; i < mx->n_hosts && i < 8; i++) {
        snprintf(r->hosts[i], sizeof(r->hosts[i]), "%s", mx->hosts[i].name);
        r->prefs[i] = mx->hosts[i].pref;
    }
    r->literal = mx->is_domain_literal;
    r->is_mx = mx->is_mx;
    r->port = mx->port;
    r->ttl = mx->ttl;
    wb_signal(r->wb);
}

struct mx_batch {
    struct mx_res *res;
    size_t n;
};

static void post_mx_batch(void *arg)
{
    struct mx_batch *b = arg;
    for (size_t i = 0; i < b->n; i++) {
        struct mx_res *r = &b->res[i];
        r->in_call = true;
        r->rc = dns_lookup_mx(r->domain, mx_cb, r);
        r->in_call = false;
        if (r->rc != 0)
            wb_signal(r->wb);
    }
}

/* The entry points' refusals, on the reactor (lookup_begin, dns_lookup.c):
 * a missing callback or name, a bad strategy or PTR address is
 * KERR_INVAL, an undefined named resolver KERR_NOTFOUND; none calls back. */
struct refusals {
    struct waitbox *wb;
    int rc[9];
};

static void never_mx(const dns_mx *mx, void *ud)
{
    (void)mx;
    (void)ud;
    fail_msg("a refused MX lookup called back");
}

static void never_txt(const dns_txt *t, void *ud)
{
    (void)t;
    (void)ud;
    fail_msg("a refused TXT/PTR lookup called back");
}

static void never_addr(const dns_addrs *a, void *ud)
{
    (void)a;
    (void)ud;
    fail_msg("a refused address lookup called back");
}

static void post_refusals(void *arg)
{
    struct refusals *r = arg;
    r->rc[0] = dns_lookup_mx_via(NULL, "example.com", NULL, NULL, NULL);
    r->rc[1] = dns_lookup_mx_via("no-such-resolver", "example.com", never_mx, NULL, NULL);
    r->rc[2] = dns_lookup_txt_via(NULL, NULL, never_txt, NULL, NULL);
    r->rc[3] = dns_lookup_txt_via("no-such-resolver", "example.com", never_txt, NULL, NULL);
    r->rc[4] = dns_lookup_ptr(NULL, "not-an-ip", never_txt, NULL, NULL);
    r->rc[5] = dns_lookup_ptr("no-such-resolver", "192.0.2.1", never_txt, NULL, NULL);
    r->rc[6] = dns_lookup_addrs_via(NULL, "example.com", 99, never_addr, NULL, NULL);
    r->rc[7] = dns_lookup_addrs_via("no-such-resolver", "example.com", DNS_IPV4_ONLY, never_addr,
                                    NULL, NULL);
    r->rc[8] = dns_lookup_ptr(NULL, "192.0.2.1", NULL, NULL, NULL);
    wb_signal(r->wb);
}

static void test_lookup_refusals(void **state)
{
    (void)state;
    struct waitbox wb;
    wb_init(&wb);
    struct refusals r = {.wb = &wb};
    reactor_post(reactor_get(0), post_refusals, &r);
    wb_wait(&wb, 1);
    static const int want[9] = {KERR_INVAL,    KERR_NOTFOUND, KERR_INVAL,
                                KERR_NOTFOUND, KERR_INVAL,    KERR_NOTFOUND,
                                KERR_INVAL,    KERR_NOTFOUND, KERR_INVAL};
    for (int i = 0; i < 9; i++)
        assert_int_equal(r.rc[i], want[i]);
}

static void lookup_mx_many(struct mx_res *res, size_t n)
{
    struct waitbox wb;
    wb_init(&wb);
    for (size_t i = 0; i < n; i++)
        res[i].wb = &wb;
    struct mx_batch b = {res, n};
    reactor_post(reactor_get(0), post_mx_batch, &b);
    wb_wait(&wb, (int)n);
    for (size_t i = 0; i < n; i++) {
        assert_int_equal(res[i].rc, 0);
        assert_false(res[i].called_inline);
    }
}

static void lookup_mx(const char *domain, struct mx_res *r)
{
    memset(r, 0, sizeof(*r));
    r->domain = domain;
    lookup_mx_many(r, 1);
}

struct addr_res {
    const char *host;
    int strategy;
    int rc;
    bool in_call, called_inline;
    int status;
    char error[512];
    char joined[256]; /* addresses joined by ',' */
    uint32_t ttl;
    struct waitbox wb;
};

static void addr_cb(const dns_addrs *res, void *ud)
{
    struct addr_res *r = ud;
    r->called_inline = r->in_call;
    r->status = res->status;
    snprintf(r->error, sizeof(r->error), "%s", res->error ? res->error : "");
    r->joined[0] = '\0';
    for (size_t i = 0; i < res->n_addrs; i++) {
        if (i)
            strcat(r->joined, ",");
        strcat(r->joined, res->addrs[i].text);
    }
    r->ttl = res->ttl;
    wb_signal(&r->wb);
}

static void post_addr(void *arg)
{
    struct addr_res *r = arg;
    r->in_call = true;
    r->rc = dns_lookup_addrs(r->host, r->strategy, addr_cb, r);
    r->in_call = false;
    if (r->rc != 0)
        wb_signal(&r->wb);
}

static void lookup_addrs(const char *host, int strategy, struct addr_res *r)
{
    memset(r, 0, sizeof(*r));
    r->host = host;
    r->strategy = strategy;
    wb_init(&r->wb);
    reactor_post(reactor_get(0), post_addr, r);
    wb_wait(&r->wb, 1);
    assert_int_equal(r->rc, 0);
    assert_false(r->called_inline);
}

static int count_queries(const char *needle)
{
    FILE *f = fopen(fx.logpath, "r");
    if (!f)
        return -1;
    char line[512];
    int n = 0;
    while (fgets(line, sizeof(line), f))
        if (strstr(line, needle))
            n++;
    fclose(f);
    return n;
}

/* ---- live MX ------------------------------------------------------------------------------ */

static void test_mx_sorted(void **state)
{
    struct mx_res r;
    lookup_mx("Multi.Test", &r);
    assert_int_equal(r.status, DNS_OK);
    assert_string_equal(r.domain_name, "multi.test.");
    assert_int_equal(r.n, 3);
    assert_string_equal(r.hosts[0], "mx0.multi.test.");
    assert_string_equal(r.hosts[1], "mx1.multi.test.");
    assert_string_equal(r.hosts[2], "mx2.multi.test.");
    assert_int_equal(r.prefs[0], 10);
    assert_int_equal(r.prefs[1], 10);
    assert_int_equal(r.prefs[2], 20);
    assert_string_equal(r.site_name, "(mx0|mx1|mx2).multi.test");
    assert_true(r.is_mx);
    assert_false(r.literal);
    assert_int_equal(r.ttl, 300);

    /* a port rides along on every host and on the site */
    lookup_mx("multi.test:2525", &r);
    assert_int_equal(r.status, DNS_OK);
    assert_int_equal(r.port, 2525);
    assert_string_equal(r.hosts[0], "mx0.multi.test.:2525");
    assert_string_equal(r.site_name, "(mx0|mx1|mx2).multi.test:2525");
}

static void test_mx_fallback_to_domain(void **state)
{
    struct mx_res r;
    lookup_mx("nomx.test", &r);
    assert_int_equal(r.status, DNS_OK);
    assert_int_equal(r.n, 1);
    assert_string_equal(r.hosts[0], "nomx.test.");
    assert_int_equal(r.prefs[0], 1);
    assert_false(r.is_mx);
    assert_string_equal(r.site_name, "nomx.test");
    assert_string_equal(r.domain_name, "nomx.test.");
}

static void test_mx_nxdomain(void **state)
{
    struct mx_res r;
    lookup_mx("nx.test", &r);
    assert_int_equal(r.status, DNS_NXDOMAIN);
    assert_int_equal(r.n, 0);
    assert_true(strncmp(r.error, "MX lookup for nx.test failed after ", 35) == 0);
    assert_non_null(strstr(r.error, ": NXDOMAIN"));

    /* the negative cache answers the second time: dnsmasq sees one query */
    lookup_mx("nx.test", &r);
    assert_int_equal(r.status, DNS_NXDOMAIN);
    usleep(100000);
    assert_int_equal(count_queries("query[MX] nx.test "), 1);
}

static void test_mx_null(void **state)
{
    struct mx_res r;
    lookup_mx("nullmx.test", &r);
    assert_int_equal(r.status, DNS_NULL_MX);
    assert_int_equal(r.n, 1);
    assert_string_equal(r.hosts[0], ".");
    assert_int_equal(r.prefs[0], 0);
    assert_string_equal(r.site_name, "");
    assert_true(r.is_mx);
}

static void test_mx_literals(void **state)
{
    struct mx_res r;
    lookup_mx("[127.0.0.1]", &r);
    assert_int_equal(r.status, DNS_OK);
    assert_true(r.literal);
    assert_false(r.is_mx);
    assert_string_equal(r.domain_name, "[127.0.0.1]");
    assert_int_equal(r.n, 1);
    assert_string_equal(r.hosts[0], "127.0.0.1");
    assert_string_equal(r.site_name, "127.0.0.1");

    lookup_mx("[IPv6:::1]", &r);
    assert_int_equal(r.status, DNS_OK);
    assert_string_equal(r.hosts[0], "::1");
    assert_string_equal(r.site_name, "::1");

    lookup_mx("[127.0.0.1]:2525", &r);
    assert_string_equal(r.hosts[0], "127.0.0.1:2525");
    assert_int_equal(r.port, 2525);

    lookup_mx("[127.0.0.1", &r);
    assert_int_equal(r.status, DNS_FAIL);
    assert_non_null(strstr(r.error, "malformed literal"));

    lookup_mx("bad..name", &r);
    assert_int_equal(r.status, DNS_FAIL);
}

static void test_mx_shared_query(void **state)
{
    /* twenty lookups started together: one query, twenty answers */
    struct mx_res r[20];
    memset(r, 0, sizeof(r));
    for (size_t i = 0; i < ARRAY_LEN(r); i++)
        r[i].domain = "shared.test";
    lookup_mx_many(r, ARRAY_LEN(r));
    for (size_t i = 0; i < ARRAY_LEN(r); i++) {
        assert_int_equal(r[i].status, DNS_OK);
        assert_string_equal(r[i].hosts[0], "mx.shared.test.");
    }
    usleep(100000);
    assert_int_equal(count_queries("query[MX] shared.test "), 1);
}

/* ---- live addresses ------------------------------------------------------------------------ */

static void test_addrs_strategies(void **state)
{
    static const struct {
        const char *host;
        int strategy;
        int status;
        const char *want;
    } cases[] = {
        {"host.test", DNS_IPV4_AND_IPV6, DNS_OK, "127.0.0.7,::7"},
        {"host.test.", DNS_IPV4_ONLY, DNS_OK, "127.0.0.7"},
        {"host.test", DNS_IPV6_ONLY, DNS_OK, "::7"},
        {"host.test", DNS_IPV6_THEN_IPV4, DNS_OK, "::7"},
        {"host.test", DNS_IPV4_THEN_IPV6, DNS_OK, "127.0.0.7"},
        {"v4only.test", DNS_IPV6_THEN_IPV4, DNS_OK, "127.0.0.8"},
        {"v6only.test", DNS_IPV4_THEN_IPV6, DNS_OK, "::8"},
        {"v4only.test", DNS_IPV4_AND_IPV6, DNS_OK, "127.0.0.8"},
        {"v4only.test", DNS_IPV6_ONLY, DNS_NO_RECORDS, ""},
        {"nx.test", DNS_IPV4_AND_IPV6, DNS_NXDOMAIN, ""},
        {"127.0.0.9", DNS_IPV6_ONLY, DNS_OK, "127.0.0.9"},
        {"[IPv6:::1]", DNS_IPV4_ONLY, DNS_OK, "::1"},
        {"[10.0.0.1]", DNS_IPV4_AND_IPV6, DNS_OK, "10.0.0.1"},
        {"bad..name", DNS_IPV4_AND_IPV6, DNS_FAIL, ""},
    };
    for (size_t i = 0; i < ARRAY_LEN(cases); i++) {
        struct addr_res r;
        lookup_addrs(cases[i].host, cases[i].strategy, &r);
        if (r.status != cases[i].status || strcmp(r.joined, cases[i].want) != 0)
            fail_msg("case %zu (%s %s): got %s '%s' (%s), want %s '%s'", i, cases[i].host,
                     dns_ip_strategy_name(cases[i].strategy), dns_status_name(r.status), r.joined,
                     r.error, dns_status_name(cases[i].status), cases[i].want);
    }
    struct addr_res r;
    lookup_addrs("host.test", DNS_IPV4_ONLY, &r);
    assert_int_equal(r.ttl, 300);
}

/* ---- failures, deadlines and reconfiguration --------------------------------------------- */

static void test_mx_deadline_and_reconfigure(void **state)
{
    char dead[32];
    snprintf(dead, sizeof(dead), "127.0.0.1:%d", fx.dead_port);
    const char *servers[] = {dead};
    /* c-ares would give up after 2 s; the MX deadline comes first */
    dns_config c = {
        .name_servers = servers, .n_name_servers = 1, .timeout_ms = 2000, .attempts = 1};
    char err[256];
    assert_int_equal(dns_configure_ex(&c, err, sizeof(err)), 0);
    dns_set_mx_timeout_ms(300);

    int64_t t0 = clock_mono_ms();
    struct mx_res r;
    lookup_mx("slow.test", &r);
    int64_t took = clock_mono_ms() - t0;
    assert_int_equal(r.status, DNS_FAIL);
    assert_non_null(strstr(r.error, "MX lookup for slow.test failed after "));
    assert_non_null(strstr(r.error, ": deadline has elapsed"));
    assert_true(took >= 250 && took < 5000);

    /* an address lookup fails with c-ares' own timeout; the channel with
     * the abandoned MX query retires once c-ares lets go of it */
    c.timeout_ms = 200;
    assert_int_equal(dns_configure_ex(&c, err, sizeof(err)), 0);
    struct addr_res a;
    lookup_addrs("host.test", DNS_IPV4_ONLY, &a);
    assert_int_equal(a.status, DNS_FAIL);
    assert_non_null(strstr(a.error, "host.test"));

    /* a failed MX lookup is cached for the negative TTL, as in KumoMTA */
    use_dnsmasq();
    dns_set_mx_timeout_ms(5000);
    lookup_mx("slow.test", &r);
    assert_int_equal(r.status, DNS_FAIL);

    /* the new servers apply to the existing resolver at once */
    lookup_mx("multi.test", &r);
    assert_int_equal(r.status, DNS_OK);
    lookup_addrs("host.test", DNS_IPV4_ONLY, &a);
    assert_int_equal(a.status, DNS_OK);
    dns_cache_clear();
    lookup_mx("slow.test", &r);
    assert_int_equal(r.status, DNS_NXDOMAIN);
}

static void test_mx_concurrency_limit(void **state)
{
    /* with one slot, lookups of different names queue and all complete */
    dns_set_mx_concurrency_limit(1);
    struct mx_res r[4];
    memset(r, 0, sizeof(r));
    r[0].domain = "multi.test";
    r[1].domain = "nomx.test";
    r[2].domain = "nullmx.test";
    r[3].domain = "nx.test";
    lookup_mx_many(r, ARRAY_LEN(r));
    dns_set_mx_concurrency_limit(128);
    assert_int_equal(r[0].status, DNS_OK);
    assert_int_equal(r[1].status, DNS_OK);
    assert_int_equal(r[2].status, DNS_NULL_MX);
    assert_int_equal(r[3].status, DNS_NXDOMAIN);
}

/* ---- kumo.dns from a Lua event ----------------------------------------------------------- */

struct lua_run {
    const char *event;
    const char *arg;
    char result[1024];
    int status;
    struct waitbox wb;
    klua *vm;
};

static void lua_done(klua_call *c, int status, void *ud)
{
    struct lua_run *lr = ud;
    lr->status = status;
    lua_State *co = klua_call_thread(c);
    const char *s = status == KLUA_OK ? lua_tostring(co, 1) : klua_call_error(c);
    snprintf(lr->result, sizeof(lr->result), "%s", s ? s : "(nil)");
    wb_signal(&lr->wb);
}

static void post_lua(void *arg)
{
    struct lua_run *lr = arg;
    klua_call *c;
    lua_State *co = klua_call_begin(lr->vm, lr->event, &c);
    lua_pushstring(co, lr->arg);
    klua_call_run(c, 1, lua_done, lr);
}

static void post_load(void *arg)
{
    struct lua_run *lr = arg;
    char err[512];
    lr->vm = klua_load(fx.policy, 0, err, sizeof(err));
    if (!lr->vm)
        snprintf(lr->result, sizeof(lr->result), "%s", err);
    wb_signal(&lr->wb);
}

static void post_unload(void *arg)
{
    struct lua_run *lr = arg;
    klua_unref(lr->vm);
    wb_signal(&lr->wb);
}

static const char *run_event(struct lua_run *lr, const char *event, const char *arg)
{
    lr->event = event;
    lr->arg = arg;
    wb_init(&lr->wb);
    reactor_post(reactor_get(0), post_lua, lr);
    wb_wait(&lr->wb, 1);
    return lr->result;
}

static void test_lua_dns(void **state)
{
    snprintf(fx.policy, sizeof(fx.policy), "/tmp/kumod-test-dns-%d.lua", (int)getpid());
    FILE *f = fopen(fx.policy, "w");
    assert_non_null(f);
    fprintf(f,
            "local kumo = require 'kumo'\n"
            "kumo.dns.configure_resolver { name_servers = { '127.0.0.1:%d',\n"
            "  { socket_addr = '127.0.0.1:%d', protocol = 'udp_then_tcp' } },\n"
            "  options = { timeout = '2s', attempts = 2, edns0 = false } }\n"
            "kumo.on('mx', function(domain)\n"
            "  local mx = kumo.dns.lookup_mx(domain)\n"
            "  local prefs = {}\n"
            "  for pref, hosts in pairs(mx.by_pref) do\n"
            "    prefs[#prefs + 1] = pref .. '=' .. table.concat(hosts, '+')\n"
            "  end\n"
            "  table.sort(prefs)\n"
            "  return string.format('%%s|%%s|%%s|%%s|%%s|%%s|%%s', mx.site_name, mx.domain_name,\n"
            "    table.concat(mx.hosts, ','), table.concat(prefs, ';'), tostring(mx.is_mx),\n"
            "    tostring(mx.is_domain_literal), tostring(mx.is_secure))\n"
            "end)\n"
            "kumo.on('mx_err', function(domain)\n"
            "  local ok, err = pcall(kumo.dns.lookup_mx, domain)\n"
            "  return tostring(ok) .. '|' .. tostring(err)\n"
            "end)\n"
            "kumo.on('addr', function(name)\n"
            "  return table.concat(kumo.dns.lookup_addr(name), ',')\n"
            "end)\n"
            "kumo.on('addr6', function(name)\n"
            "  return table.concat(kumo.dns.lookup_addr(name, nil, 'Ipv6Only'), ',')\n"
            "end)\n"
            "kumo.on('cfg', function(what)\n"
            "  local cfgs = {\n"
            "    unknown = { name_servers = { '127.0.0.1:53' }, bogus = 1 },\n"
            "    badopt = { name_servers = { '127.0.0.1:53' }, options = { tiemout = '1s' } },\n"
            "    badns = { name_servers = { { socket_addr = '127.0.0.1:53', proto = 'tcp' } } },\n"
            "    badaddr = { name_servers = { 'dns.example:53' } },\n"
            "  }\n"
            "  local ok, err = pcall(kumo.dns.configure_resolver, cfgs[what])\n"
            "  return tostring(ok) .. '|' .. tostring(err)\n"
            "end)\n",
            fx.port, fx.port);
    fclose(f);

    struct lua_run lr;
    memset(&lr, 0, sizeof(lr));
    wb_init(&lr.wb);
    reactor_post(reactor_get(0), post_load, &lr);
    wb_wait(&lr.wb, 1);
    if (!lr.vm)
        fail_msg("policy did not load: %s", lr.result);

    assert_string_equal(run_event(&lr, "mx", "lua.test"),
                        "mx.lua.test|lua.test.|mx.lua.test.|10=mx.lua.test.|true|false|false");
    assert_string_equal(run_event(&lr, "mx", "multi.test"),
                        "(mx0|mx1|mx2).multi.test|multi.test.|mx0.multi.test.,mx1.multi.test.,"
                        "mx2.multi.test.|10=mx0.multi.test.+mx1.multi.test.;20=mx2.multi.test.|"
                        "true|false|false");
    assert_string_equal(run_event(&lr, "mx", "[127.0.0.1]"),
                        "127.0.0.1|[127.0.0.1]|127.0.0.1|1=127.0.0.1|false|true|false");
    assert_string_equal(run_event(&lr, "mx", "nullmx.test"),
                        "|nullmx.test.|.|0=.|true|false|false");
    const char *e = run_event(&lr, "mx_err", "nx.test");
    assert_true(strncmp(e, "false|MX lookup for nx.test failed after ", 41) == 0);
    assert_non_null(strstr(e, ": NXDOMAIN"));
    assert_string_equal(run_event(&lr, "addr", "host.test"), "127.0.0.7,::7");
    assert_string_equal(run_event(&lr, "addr6", "host.test"), "::7");
    assert_string_equal(run_event(&lr, "addr", "nx.test"), "");

    e = run_event(&lr, "cfg", "unknown");
    assert_non_null(strstr(e, "false|"));
    assert_non_null(strstr(e, "unknown field `bogus`"));
    e = run_event(&lr, "cfg", "badopt");
    assert_non_null(strstr(e, "unknown field `tiemout` in options"));
    e = run_event(&lr, "cfg", "badns");
    assert_non_null(strstr(e, "unknown field `proto` in a name_servers entry"));
    e = run_event(&lr, "cfg", "badaddr");
    assert_non_null(strstr(e, "name server 'dns.example:53'"));

    wb_init(&lr.wb);
    reactor_post(reactor_get(0), post_unload, &lr);
    wb_wait(&lr.wb, 1);
    /* the policy's configuration stays: it names the same dnsmasq */
}

/* ---- the cache outlives the server (last: it stops dnsmasq) ------------------------------ */

static void test_cache_after_server_gone(void **state)
{
    struct mx_res r;
    lookup_mx("multi.test", &r);
    assert_int_equal(r.status, DNS_OK);
    struct addr_res a;
    lookup_addrs("host.test", DNS_IPV4_AND_IPV6, &a);
    assert_string_equal(a.joined, "127.0.0.7,::7");

    stop_dnsmasq();
    /* fail fast from now on */
    char server[32];
    snprintf(server, sizeof(server), "127.0.0.1:%d", fx.port);
    const char *servers[] = {server};
    dns_config c = {.name_servers = servers, .n_name_servers = 1, .timeout_ms = 200, .attempts = 1};
    char err[256];
    assert_int_equal(dns_configure_ex(&c, err, sizeof(err)), 0);

    lookup_mx("multi.test", &r);
    assert_int_equal(r.status, DNS_OK);
    assert_string_equal(r.site_name, "(mx0|mx1|mx2).multi.test");
    lookup_addrs("host.test", DNS_IPV4_AND_IPV6, &a);
    assert_int_equal(a.status, DNS_OK);
    assert_string_equal(a.joined, "127.0.0.7,::7");

    /* and what was never asked cannot be answered */
    lookup_mx("gone.test", &r);
    assert_int_equal(r.status, DNS_FAIL);
    lookup_addrs("gone.test", DNS_IPV4_ONLY, &a);
    assert_int_equal(a.status, DNS_FAIL);
}

int main(void)
{
    const struct CMUnitTest pure[] = {
        cmocka_unit_test(test_site_name_table),
        cmocka_unit_test(test_split_port),
        cmocka_unit_test(test_strategy_names),
        cmocka_unit_test(test_configure_rejects),
    };
    const struct CMUnitTest live[] = {
        cmocka_unit_test_setup(test_lookup_refusals, test_setup),
        cmocka_unit_test_setup(test_mx_sorted, test_setup),
        cmocka_unit_test_setup(test_mx_fallback_to_domain, test_setup),
        cmocka_unit_test_setup(test_mx_nxdomain, test_setup),
        cmocka_unit_test_setup(test_mx_null, test_setup),
        cmocka_unit_test_setup(test_mx_literals, test_setup),
        cmocka_unit_test_setup(test_mx_shared_query, test_setup),
        cmocka_unit_test_setup(test_addrs_strategies, test_setup),
        cmocka_unit_test_setup(test_mx_deadline_and_reconfigure, test_setup),
        cmocka_unit_test_setup(test_mx_concurrency_limit, test_setup),
        cmocka_unit_test_setup(test_lua_dns, test_setup),
        cmocka_unit_test_setup(test_cache_after_server_gone, test_setup),
    };
    int failed = cmocka_run_group_tests_name("dns pure", pure, NULL, NULL);
    failed += cmocka_run_group_tests_name("dns live", live, group_setup, group_teardown);
    return failed;
}
