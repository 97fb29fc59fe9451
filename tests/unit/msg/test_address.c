/* Unit tests for src/msg/address.c: RFC 5322 §3.4 address lists (display
 * names, quoted strings, groups, comments, domain literals), the obsolete
 * forms of §4.4, RFC 2047 display names, and malformed input that must fail
 * with a reason rather than crash. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/kerr.h"
#include "msg/address.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* Each row: input, then the expected rendering of the parsed list: entries
 * joined by " | ", a mailbox as name/local/domain ("-" for NULL), a group as
 * "G(name)[m1; m2]". */
struct row {
    const char *in;
    const char *want;
};

static const struct row ok_rows[] = {
    {"user@example.com", "-/user/example.com"},
    {"John Smith <john.smith@example.com>", "John Smith/john.smith/example.com"},
    {"\"Smith, John\" <js@example.com>", "Smith, John/js/example.com"},
    {"<a@b.c>", "-/a/b.c"},
    {"a@b.c, \"B\" <b@c.d>", "-/a/b.c | B/b/c.d"},
    {"\"info@\"@example.com", "-/info@/example.com"},
    {"\"f\\oo\"@example.com", "-/foo/example.com"},
    {"\"quoted local\"@example.com", "-/quoted local/example.com"},
    {"user@[192.0.2.1]", "-/user/[192.0.2.1]"},
    {"(comment) user (more) @ (x) example.com (end)", "-/user/example.com"},
    {"Joe (the (nested) guy) <joe@x.y>", "Joe/joe/x.y"},
    {"The A Team: bodie@example.com, Doyle <doyle@example.com>;",
     "G(The A Team)[-/bodie/example.com; Doyle/doyle/example.com]"},
    {"undisclosed-recipients:;", "G(undisclosed-recipients)[]"},
    {"a@b.c, Group: x@y.z;, d@e.f", "-/a/b.c | G(Group)[-/x/y.z] | -/d/e.f"},
    {"=?UTF-8?q?Andr=C3=A9?= Pirard <PIRARD@vm1.ulg.ac.be>", "André Pirard/PIRARD/vm1.ulg.ac.be"},
    {"=?ISO-8859-1?Q?Keld_J=F8rn?= =?ISO-8859-1?Q?_Simonsen?= <keld@dkuug.dk>",
     "Keld Jørn Simonsen/keld/dkuug.dk"},
    {"Pete(A nice \\) chap) <pete(his account)@silly.test(his host)>", "Pete/pete/silly.test"},
    {"<@route1,@route2:user@example.com>", "-/user/example.com"},
    {"a@b.c,,  , d@e.f", "-/a/b.c | -/d/e.f"},
    {"Mr. Smith <s@x.y>", "Mr. Smith/s/x.y"},
    {"first.last@sub.example.com", "-/first.last/sub.example.com"},
    {"\"\" <empty@name.x>", "/empty/name.x"},
    {"<>", "-/-/-"},
    {"J\xc3\xbcrgen <j@m\xc3\xbcller.de>", "J\xc3\xbcrgen/j/m\xc3\xbcller.de"},
    {"", ""},
    {"   ", ""},
};

static const char *const bad_rows[] = {
    "John Smith",                  /* a name without an address */
    "a@",                          /* no domain */
    "@example.com",                /* no local part */
    "<a@b.c",                      /* unterminated angle address */
    "\"unterminated@x.y",          /* unterminated quoted string */
    "(unterminated comment a@b.c", /* unterminated comment */
    "Group: a@b.c",                /* group without ';' */
    "a@b.c d@e.f",                 /* missing comma */
    "a@[1.2.3.4",                  /* unterminated literal */
    "Group: Inner: x@y.z;;",       /* nested group */
    "a@b.c>",
    ":;",
};

static void render_mbox(char *out, size_t len, const addr_mailbox *m)
{
    size_t o = strlen(out);
    snprintf(out + o, len - o, "%s/%s/%s", m->name ? m->name : "-", m->local ? m->local : "-",
             m->domain ? m->domain : "-");
}

static void render(char *out, size_t len, const addr_list *l)
{
    out[0] = 0;
    for (size_t i = 0; i < l->n; i++) {
        if (i)
            strncat(out, " | ", len - strlen(out) - 1);
        const addr_entry *e = &l->v[i];
        if (!e->is_group) {
            render_mbox(out, len, &e->mbox);
            continue;
        }
        size_t o = strlen(out);
        snprintf(out + o, len - o, "G(%s)[", e->group_name ? e->group_name : "-");
        for (size_t k = 0; k < e->n_members; k++) {
            if (k)
                strncat(out, "; ", len - strlen(out) - 1);
            render_mbox(out, len, &e->members[k]);
        }
        strncat(out, "]", len - strlen(out) - 1);
    }
}

static void test_valid_lists(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(ok_rows); i++) {
        addr_list l;
        char err[200], got[1024];
        int rc = addr_list_parse(ok_rows[i].in, strlen(ok_rows[i].in), &l, err, sizeof(err));
        if (rc != 0) {
            print_error("row %zu (%s): %s\n", i, ok_rows[i].in, err);
            fail();
        }
        render(got, sizeof(got), &l);
        if (strcmp(got, ok_rows[i].want) != 0) {
            print_error("row %zu (%s): got '%s', want '%s'\n", i, ok_rows[i].in, got,
                        ok_rows[i].want);
            fail();
        }
        addr_list_fini(&l);
    }
}

static void test_invalid_lists(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(bad_rows); i++) {
        addr_list l;
        char err[200];
        int rc = addr_list_parse(bad_rows[i], strlen(bad_rows[i]), &l, err, sizeof(err));
        if (rc != KERR_PARSE || err[0] == 0 || l.n != 0) {
            print_error("row %zu (%s): rc %d, err '%s'\n", i, bad_rows[i], rc, err);
            fail();
        }
    }
}

static void test_invalid_utf8_is_repaired(void **state)
{
    (void)state;
    const char *in = "\xff\xfe <u\xa4@x.y>";
    addr_list l;
    char err[200];
    assert_int_equal(addr_list_parse(in, strlen(in), &l, err, sizeof(err)), 0);
    assert_int_equal(l.n, 1);
    assert_string_equal(l.v[0].mbox.local, "u\xef\xbf\xbd");
    assert_string_equal(l.v[0].mbox.name, "\xef\xbf\xbd\xef\xbf\xbd");
    addr_list_fini(&l);
}

/* Hostile sizes: deep comment nesting and long lists stay linear and never
 * recurse (the parser has no recursion to overflow). */
static void test_hostile_sizes(void **state)
{
    (void)state;
    size_t depth = 200000;
    char *s = malloc(depth * 2 + 16);
    memset(s, '(', depth);
    memset(s + depth, ')', depth);
    strcpy(s + 2 * depth, "a@b.c");
    addr_list l;
    char err[200];
    assert_int_equal(addr_list_parse(s, strlen(s), &l, err, sizeof(err)), 0);
    assert_int_equal(l.n, 1);
    addr_list_fini(&l);
    s[depth] = 'x'; /* unbalanced now */
    s[2 * depth - 1] = 'y';
    assert_int_equal(addr_list_parse(s, strlen(s), &l, err, sizeof(err)), KERR_PARSE);
    free(s);

    size_t n = 20000;
    s = malloc(n * 8 + 1);
    s[0] = 0;
    size_t o = 0;
    for (size_t i = 0; i < n; i++)
        o += (size_t)sprintf(s + o, "%sa@b.c", i ? ", " : "");
    assert_int_equal(addr_list_parse(s, o, &l, err, sizeof(err)), 0);
    assert_int_equal(l.n, n);
    addr_list_fini(&l);
    free(s);
}

static void test_spec_format(void **state)
{
    (void)state;
    static const char *const rows[][3] = {
        {"user", "example.com", "user@example.com"},
        {"first.last", "x.y", "first.last@x.y"},
        {"info@", "example.com", "\"info@\"@example.com"},
        {"with space", "x.y", "\"with space\"@x.y"},
        {"q\"uote", "x.y", "\"q\\\"uote\"@x.y"},
        {".dot", "x.y", "\".dot\"@x.y"},
        {"a..b", "x.y", "\"a..b\"@x.y"},
    };
    for (size_t i = 0; i < ARRAY_LEN(rows); i++) {
        char *s = addr_spec_format(rows[i][0], rows[i][1]);
        assert_string_equal(s, rows[i][2]);
        free(s);
    }
    assert_null(addr_spec_format(NULL, "x"));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_valid_lists),
        cmocka_unit_test(test_invalid_lists),
        cmocka_unit_test(test_invalid_utf8_is_repaired),
        cmocka_unit_test(test_hostile_sizes),
        cmocka_unit_test(test_spec_format),
    };
    return cmocka_run_group_tests_name("msg/address", tests, NULL, NULL);
}
