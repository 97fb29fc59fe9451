/* Unit tests for src/net/zone.c: master-file parsing (directives, relative
 * names, omitted owners, TTL units, parentheses, comments, quoted strings
 * and escapes, every supported type), errors with their line, and lookups
 * as KumoMTA's test resolver answers them (closest zone, NXDOMAIN outside
 * every zone, empty NOERROR inside, CNAME chains, SERVFAIL names). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>

#include "core/kerr.h"
#include "net/zone.h"

static const char ZONE[] =
    "; a zone as KumoMTA's tests write them\n"
    "$ORIGIN Example.COM.\n"
    "$TTL 1h\n"
    "@        IN MX 10 mx1\n"
    "         IN 600 MX 20 mx2.example.com.\n"
    "mx1      A     10.0.0.1\n"
    "         AAAA  2001:db8::1\n"
    "mx2 30   A     10.0.0.2\n"
    "www      CNAME mx1\n"
    "w2       CNAME www\n"
    "loop1    CNAME loop2\n"
    "loop2    CNAME loop1\n"
    "txt      TXT   \"v=spf1 -all\" unquoted \"with \\\"quote\\\" and \\065\"\n"
    "spf      SPF   \"v=spf1 +all\"\n"
    "@        SOA   ns hostmaster.example.com. (\n"
    "                 2024010101 ; serial\n"
    "                 1h 10m 1w 60 )\n"
    "@        NS    ns\n"
    "_smtp._tcp SRV 10 5 25 mx1\n"
    "1.0.0.10.in-addr.arpa. PTR mx1\n"
    "$ORIGIN sub.example.com.\n"
    "deep     A     10.0.0.3\n";

static zone_set *make(void)
{
    zone_set *zs = zone_set_new();
    char err[256] = "";
    int rc = zone_set_add(zs, ZONE, strlen(ZONE), false, err, sizeof(err));
    if (rc)
        fail_msg("%s", err);
    return zs;
}

static const char *ip(const zone_rr *rr)
{
    static char text[INET6_ADDRSTRLEN];
    inet_ntop(rr->type == ZONE_A ? AF_INET : AF_INET6, rr->addr, text, sizeof(text));
    return text;
}

static void test_records(void **state)
{
    (void)state;
    zone_set *zs = make();
    zone_answer a;
    assert_int_equal(zone_set_lookup(zs, "example.com", ZONE_MX, &a), ZONE_NOERROR);
    assert_int_equal(a.n, 2);
    assert_string_equal(a.rrs[0]->owner, "example.com.");
    assert_int_equal(a.rrs[0]->pref, 10);
    assert_string_equal(a.rrs[0]->target, "mx1.example.com.");
    assert_int_equal(a.rrs[0]->ttl, 3600); /* $TTL 1h */
    assert_int_equal(a.rrs[1]->pref, 20);
    assert_string_equal(a.rrs[1]->target, "mx2.example.com.");
    assert_int_equal(a.rrs[1]->ttl, 600); /* TTL after the class */
    assert_false(a.secure);

    assert_int_equal(zone_set_lookup(zs, "MX1.example.com.", ZONE_A, &a), ZONE_NOERROR);
    assert_int_equal(a.n, 1);
    assert_string_equal(ip(a.rrs[0]), "10.0.0.1");
    assert_int_equal(zone_set_lookup(zs, "mx1.example.com", ZONE_AAAA, &a), ZONE_NOERROR);
    assert_int_equal(a.n, 1); /* the omitted owner is the previous one */
    assert_string_equal(ip(a.rrs[0]), "2001:db8::1");
    zone_set_lookup(zs, "mx2.example.com", ZONE_A, &a);
    assert_int_equal(a.rrs[0]->ttl, 30);

    assert_int_equal(zone_set_lookup(zs, "txt.example.com", ZONE_TXT, &a), ZONE_NOERROR);
    assert_int_equal(a.n, 1);
    assert_int_equal(a.rrs[0]->n_txt, 3);
    assert_string_equal(a.rrs[0]->txt[0], "v=spf1 -all");
    assert_string_equal(a.rrs[0]->txt[1], "unquoted");
    assert_string_equal(a.rrs[0]->txt[2], "with \"quote\" and A");
    zone_set_lookup(zs, "spf.example.com", ZONE_SPF, &a);
    assert_string_equal(a.rrs[0]->txt[0], "v=spf1 +all");
    assert_int_equal(zone_set_lookup(zs, "example.com", ZONE_NS, &a), ZONE_NOERROR);
    assert_string_equal(a.rrs[0]->target, "ns.example.com.");
    assert_int_equal(zone_set_lookup(zs, "example.com", ZONE_SOA, &a), ZONE_NOERROR);
    assert_int_equal(a.n, 1);
    zone_set_lookup(zs, "_smtp._tcp.example.com", ZONE_SRV, &a);
    assert_string_equal(a.rrs[0]->target, "mx1.example.com.");
    /* an absolute owner outside the origin is kept under this zone */
    zone_set_lookup(zs, "1.0.0.10.in-addr.arpa", ZONE_PTR, &a);
    assert_int_equal(a.rcode, ZONE_NXDOMAIN);
    /* the second $ORIGIN changes relative names, not the zone's name */
    assert_int_equal(zone_set_lookup(zs, "deep.sub.example.com", ZONE_A, &a), ZONE_NOERROR);
    assert_string_equal(ip(a.rrs[0]), "10.0.0.3");
    zone_set_free(zs);
}

static void test_lookup_rules(void **state)
{
    (void)state;
    zone_set *zs = make();
    zone_answer a;
    /* inside the zone, unknown name or type: empty NOERROR */
    assert_int_equal(zone_set_lookup(zs, "nothing.example.com", ZONE_A, &a), ZONE_NOERROR);
    assert_int_equal(a.n, 0);
    assert_int_equal(zone_set_lookup(zs, "mx1.example.com", ZONE_MX, &a), ZONE_NOERROR);
    assert_int_equal(a.n, 0);
    /* outside every zone */
    assert_int_equal(zone_set_lookup(zs, "example.org", ZONE_A, &a), ZONE_NXDOMAIN);
    assert_int_equal(zone_set_lookup(zs, "com", ZONE_A, &a), ZONE_NXDOMAIN);
    /* CNAME chains, followed for other types; a CNAME query gets the CNAME */
    assert_int_equal(zone_set_lookup(zs, "w2.example.com", ZONE_A, &a), ZONE_NOERROR);
    assert_int_equal(a.n, 1);
    assert_string_equal(ip(a.rrs[0]), "10.0.0.1");
    assert_string_equal(a.canon, "mx1.example.com.");
    assert_int_equal(zone_set_lookup(zs, "www.example.com", ZONE_CNAME, &a), ZONE_NOERROR);
    assert_string_equal(a.rrs[0]->target, "mx1.example.com.");
    /* a loop ends, empty */
    assert_int_equal(zone_set_lookup(zs, "loop1.example.com", ZONE_A, &a), ZONE_NOERROR);
    assert_int_equal(a.n, 0);
    assert_int_equal(zone_set_lookup(zs, "a..b", ZONE_A, &a), ZONE_BADNAME);

    /* SERVFAIL names; a secure zone; a zone of the same name replaces */
    assert_int_equal(zone_set_add_servfail(zs, "Broken.example.com."), 0);
    assert_int_equal(zone_set_add_servfail(zs, ""), KERR_INVAL);
    assert_int_equal(zone_set_lookup(zs, "broken.example.com", ZONE_MX, &a), ZONE_SERVFAIL);
    char err[256];
    static const char sec[] = "$ORIGIN secure.example.\n@ A 192.0.2.1\n";
    assert_int_equal(zone_set_add(zs, sec, strlen(sec), true, err, sizeof(err)), 0);
    zone_set_lookup(zs, "secure.example", ZONE_A, &a);
    assert_true(a.secure);
    static const char repl[] = "$ORIGIN example.com.\nmx1 A 10.9.9.9\n";
    assert_int_equal(zone_set_add(zs, repl, strlen(repl), false, err, sizeof(err)), 0);
    zone_set_lookup(zs, "mx1.example.com", ZONE_A, &a);
    assert_string_equal(ip(a.rrs[0]), "10.9.9.9");
    assert_int_equal(zone_set_lookup(zs, "example.com", ZONE_MX, &a), ZONE_NOERROR);
    assert_int_equal(a.n, 0);
    zone_set_free(zs);
}

static const struct {
    const char *text;
    const char *err;
} bad[] = {
    {"$ORIGIN x.\n@ A 1.2.3.4\n@ BOGUS 1\n", "line 3: unsupported record type `BOGUS`"},
    {"www A 1.2.3.4\n", "line 1: relative owner name `www` before any $ORIGIN"},
    {"@ A 1.2.3.4\n", "line 1: relative owner name `@` before any $ORIGIN"},
    {"a.example. A 1.2.3.4\n", "the zone has no $ORIGIN"},
    {"$ORIGIN x.\n  A 1.2.3.4\n", "line 2: a record without an owner name comes first"},
    {"$ORIGIN x.\n@ A 1.2.3\n", "line 2: `1.2.3` is not an IPv4 address"},
    {"$ORIGIN x.\n@ AAAA 1.2.3.4\n", "`1.2.3.4` is not an IPv6 address"},
    {"$ORIGIN x.\n@ A 1.2.3.4 5.6.7.8\n", "A takes 1 field, found 2"},
    {"$ORIGIN x.\n@ MX 10\n", "MX takes 2 fields, found 1"},
    {"$ORIGIN x.\n@ MX 70000 mx\n", "MX preference `70000` is not a number 0-65535"},
    {"$ORIGIN x.\n@ MX 10 a..b\n", "invalid name `a..b`"},
    {"$ORIGIN x.\n\n\n@ TXT \"open\n", "line 4: unterminated quoted string"},
    {"$ORIGIN x.\n@ TXT\n", "TXT needs at least one string"},
    {"$ORIGIN x.\n@ SOA ( a b 1 2 3 4 5\n", "unbalanced parentheses"},
    {"$ORIGIN x.\n@ A 1.2.3.4 )\n", "line 2: unbalanced parentheses"},
    {"$ORIGIN x.\n@ CH A 1.2.3.4\n", "class CH is not supported (only IN)"},
    {"$ORIGIN x.\n@ 1z A 1.2.3.4\n", "unsupported record type `1z`"},
    {"$ORIGIN x.\n@ IN\n", "record has no type"},
    {"$INCLUDE /etc/passwd\n", "line 1: directive $INCLUDE is not supported"},
    {"$TTL\n", "$TTL takes one TTL"},
    {"$ORIGIN a..b.\n", "invalid $ORIGIN `a..b.`"},
    {"$ORIGIN x.\n@ TXT \"\\999\"\n", "\\999 is not a byte"},
    {"$ORIGIN x.\n@ SRV 1 2 port t\n", "SRV priority, weight and port must be numbers"},
    {"$ORIGIN x.\n@ SOA a b 1 2 3 4 z\n", "SOA field `z` is not a number"},
    {"$ORIGIN x.\n"
     "a234567890123456789012345678901234567890123456789012345678901234 A 1.2.3.4\n",
     "invalid owner name"},
};

static void test_errors(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
        zone_set *zs = zone_set_new();
        char err[256] = "";
        assert_int_equal(
            zone_set_add(zs, bad[i].text, strlen(bad[i].text), false, err, sizeof(err)),
            KERR_PARSE);
        if (!strstr(err, bad[i].err))
            fail_msg("case %zu: '%s' lacks '%s'", i, err, bad[i].err);
        /* nothing of a bad zone is kept */
        zone_answer a;
        assert_int_equal(zone_set_lookup(zs, "x", ZONE_A, &a), ZONE_NXDOMAIN);
        zone_set_free(zs);
    }
}

static void test_hostile(void **state)
{
    (void)state;
    /* NULs, invalid UTF-8, a 255-byte TXT string is fine, 256 is not */
    zone_set *zs = zone_set_new();
    char err[256];
    static const char junk[] = "$ORIGIN x.\n@ TXT \"a\0b\" \xff\xfe\n";
    assert_int_equal(zone_set_add(zs, junk, sizeof(junk) - 1, false, err, sizeof(err)), 0);
    zone_answer a;
    zone_set_lookup(zs, "x", ZONE_TXT, &a);
    assert_int_equal(a.n, 1);
    assert_memory_equal(a.rrs[0]->txt[0], "a\0b", 3);
    char big[400];
    int n = snprintf(big, sizeof(big), "$ORIGIN y.\n@ TXT \"%0255d\"\n", 0);
    assert_int_equal(zone_set_add(zs, big, (size_t)n, false, err, sizeof(err)), 0);
    n = snprintf(big, sizeof(big), "$ORIGIN y.\n@ TXT \"%0256d\"\n", 0);
    assert_int_equal(zone_set_add(zs, big, (size_t)n, false, err, sizeof(err)), KERR_PARSE);
    assert_non_null(strstr(err, "longer than 255 bytes"));
    /* many records */
    static char many[200000];
    size_t o = (size_t)snprintf(many, sizeof(many), "$ORIGIN m.\n");
    for (int i = 0; i < 5000; i++)
        o +=
            (size_t)snprintf(many + o, sizeof(many) - o, "h%d A 10.0.%d.%d\n", i, i / 256, i % 256);
    assert_int_equal(zone_set_add(zs, many, o, false, err, sizeof(err)), 0);
    zone_set_lookup(zs, "h4999.m", ZONE_A, &a);
    assert_string_equal(ip(a.rrs[0]), "10.0.19.135");
    zone_set_free(zs);
    assert_string_equal(zone_type_name(ZONE_AAAA), "AAAA");
    assert_null(zone_type_name(999));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_records),
        cmocka_unit_test(test_lookup_rules),
        cmocka_unit_test(test_errors),
        cmocka_unit_test(test_hostile),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
