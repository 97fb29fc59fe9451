/* Unit tests for src/net/hosts.c: the hosts-file parser (comments, aliases,
 * case, trailing dots, IPv4 before IPv6, duplicates, malformed lines,
 * hostile input) and the process-wide copy re-read when the file changes. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include <arpa/inet.h>
#include <fcntl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "net/hosts.h"

static hosts_table *parse(const char *s)
{
    return hosts_parse(s, strlen(s));
}

/* The addresses of name as "a,b,c", or "-" when name is absent. */
static const char *addrs(const hosts_table *t, const char *name, int family)
{
    static char out[512];
    hosts_addr a[8];
    int n = hosts_table_lookup(t, name, family, a, 8);
    if (n < 0)
        return "-";
    out[0] = '\0';
    for (int i = 0; i < n && i < 8; i++) {
        char text[INET6_ADDRSTRLEN];
        inet_ntop(a[i].family, a[i].raw, text, sizeof(text));
        strcat(out, i ? "," : "");
        strcat(out, text);
    }
    return out;
}

static void test_parse(void **state)
{
    (void)state;
    hosts_table *t = parse("# comment line\n"
                           "127.0.0.1\tlocalhost\n"
                           "::1     localhost ip6-localhost ip6-loopback\n"
                           "10.0.0.1 Relay.Example.COM. relay   # trailing comment\n"
                           "  10.0.0.2 relay\n"
                           "10.0.0.1 relay\n"      /* duplicate: kept once */
                           "fe80::1%eth0 scoped\n" /* zone index: line dropped */
                           "300.1.1.1 bad\n"       /* not an address */
                           "10.0.0.3\n"            /* no name */
                           "not-an-address name\n"
                           "10.0.0.4 last-line-without-newline");
    assert_int_equal(hosts_table_names(t), 6);
    assert_string_equal(addrs(t, "localhost", AF_UNSPEC), "127.0.0.1,::1");
    assert_string_equal(addrs(t, "LOCALHOST.", AF_INET), "127.0.0.1");
    assert_string_equal(addrs(t, "localhost", AF_INET6), "::1");
    assert_string_equal(addrs(t, "ip6-loopback", AF_INET), "");
    assert_string_equal(addrs(t, "relay.example.com", AF_UNSPEC), "10.0.0.1");
    assert_string_equal(addrs(t, "relay", AF_UNSPEC), "10.0.0.1,10.0.0.2");
    assert_string_equal(addrs(t, "last-line-without-newline", AF_INET), "10.0.0.4");
    assert_string_equal(addrs(t, "scoped", AF_UNSPEC), "-");
    assert_string_equal(addrs(t, "bad", AF_UNSPEC), "-");
    assert_string_equal(addrs(t, "name", AF_UNSPEC), "-");
    assert_string_equal(addrs(t, "comment", AF_UNSPEC), "-");
    assert_string_equal(addrs(t, "", AF_UNSPEC), "-");
    assert_string_equal(addrs(t, ".", AF_UNSPEC), "-");
    hosts_table_free(t);
}

static void test_ipv4_first_and_many(void **state)
{
    (void)state;
    char buf[8192];
    size_t o = 0;
    o += (size_t)snprintf(buf + o, sizeof(buf) - o, "::2 many\n");
    for (int i = 1; i <= 20; i++)
        o += (size_t)snprintf(buf + o, sizeof(buf) - o, "10.1.0.%d many\n", i);
    hosts_table *t = parse(buf);
    hosts_addr a[4];
    /* the count is the name's, the copy stops at max */
    assert_int_equal(hosts_table_lookup(t, "many", AF_UNSPEC, a, 4), 21);
    assert_int_equal(a[0].family, AF_INET);
    assert_int_equal(a[0].raw[3], 1);
    assert_int_equal(hosts_table_lookup(t, "many", AF_INET6, a, 4), 1);
    assert_int_equal(a[0].family, AF_INET6);
    hosts_table_free(t);
}

static void test_large_and_hostile(void **state)
{
    (void)state;
    /* 5000 names force the table to grow several times */
    size_t cap = 5000 * 40, o = 0;
    char *buf = malloc(cap);
    assert_non_null(buf);
    for (int i = 0; i < 5000; i++)
        o += (size_t)snprintf(buf + o, cap - o, "10.%d.%d.1 host%d.example\n", i / 256, i % 256, i);
    hosts_table *t = hosts_parse(buf, o);
    assert_int_equal(hosts_table_names(t), 5000);
    assert_string_equal(addrs(t, "host4999.example", AF_INET), "10.19.135.1");
    hosts_table_free(t);
    /* NULs, invalid UTF-8, an over-long name and address: no crash */
    static const char junk[] = "10.0.0.1 a\0b\n\xff\xfe 10.0.0.1\n10.0.0.1 \xc3\x28name\n";
    t = hosts_parse(junk, sizeof(junk) - 1);
    memset(buf, 'a', 300);
    memcpy(buf, "10.0.0.1 ", 9);
    buf[300] = '\0';
    hosts_table_free(t);
    t = parse(buf);
    assert_int_equal(hosts_table_names(t), 0);
    hosts_table_free(t);
    memset(buf, '1', 100);
    strcpy(buf + 100, " x\n");
    t = parse(buf);
    assert_int_equal(hosts_table_names(t), 0);
    hosts_table_free(t);
    free(buf);
}

static void write_file(const char *path, const char *text)
{
    FILE *f = fopen(path, "w");
    assert_non_null(f);
    fputs(text, f);
    fclose(f);
}

static void test_reload_on_change(void **state)
{
    (void)state;
    char path[] = "/tmp/kumod-hosts-XXXXXX";
    int fd = mkstemp(path);
    assert_true(fd >= 0);
    close(fd);
    write_file(path, "10.0.0.1 relay.test\n");
    hosts_addr a[4];
    assert_int_equal(hosts_lookup("relay.test", AF_INET, a, 4), -1); /* not started */
    hosts_set_path(path);
    assert_int_equal(hosts_refresh(), 1);
    assert_int_equal(hosts_lookup("relay.test", AF_INET, a, 4), 1);
    assert_int_equal(a[0].raw[3], 1);
    assert_int_equal(hosts_refresh(), 0); /* unchanged: not re-read */

    /* a new mtime (and size): re-read */
    write_file(path, "10.0.0.2 relay.test\n10.0.0.3 other.test\n");
    struct timespec ts[2] = {{0, UTIME_NOW}, {time(NULL) + 5, 0}};
    assert_int_equal(utimensat(AT_FDCWD, path, ts, 0), 0);
    assert_int_equal(hosts_refresh(), 1);
    assert_int_equal(hosts_lookup("relay.test", AF_INET, a, 4), 1);
    assert_int_equal(a[0].raw[3], 2);
    assert_int_equal(hosts_lookup("other.test", AF_UNSPEC, a, 4), 1);

    /* the file goes away: an empty table, and back when it returns */
    unlink(path);
    assert_int_equal(hosts_refresh(), 1);
    assert_int_equal(hosts_lookup("relay.test", AF_INET, a, 4), -1);
    assert_int_equal(hosts_refresh(), 0);
    write_file(path, "10.0.0.9 relay.test\n");
    assert_int_equal(hosts_refresh(), 1);
    assert_int_equal(hosts_lookup("relay.test", AF_INET, a, 4), 1);
    assert_int_equal(a[0].raw[3], 9);

    /* the watcher thread notices a change by itself within a few seconds */
    hosts_start();
    write_file(path, "10.0.0.10 relay.test\n");
    struct timespec ts2[2] = {{0, UTIME_NOW}, {time(NULL) + 10, 0}};
    assert_int_equal(utimensat(AT_FDCWD, path, ts2, 0), 0);
    int seen = 0;
    for (int i = 0; i < 60 && !seen; i++) {
        if (hosts_lookup("relay.test", AF_INET, a, 4) == 1 && a[0].raw[3] == 10)
            seen = 1;
        else
            usleep(100000);
    }
    assert_true(seen);
    hosts_stop();
    assert_int_equal(hosts_lookup("relay.test", AF_INET, a, 4), -1);
    unlink(path);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_parse),
        cmocka_unit_test(test_ipv4_first_and_many),
        cmocka_unit_test(test_large_and_hostile),
        cmocka_unit_test(test_reload_on_change),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
