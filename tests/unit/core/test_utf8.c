/* Unit tests for src/core/utf8.c: valid and invalid sequences (RFC 3629,
 * Unicode's maximal-subpart rule). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <string.h>

#include <cmocka.h>

#include "core/utf8.h"

static const struct {
    const char *s;
    size_t invalid_at; /* (size_t)-1: valid */
} rows[] = {
    {"", (size_t)-1},
    {"plain ascii", (size_t)-1},
    {"caf\xc3\xa9", (size_t)-1},
    {"\xe2\x82\xac euro", (size_t)-1},
    {"\xf0\x9f\x98\x80", (size_t)-1},           /* U+1F600 */
    {"\xf4\x8f\xbf\xbf", (size_t)-1},           /* U+10FFFF */
    {"t\xa4", 1},                               /* the X-Tenant byte */
    {"ab\xc3", 2},                              /* truncated */
    {"\xc0\xaf", 0},                            /* overlong '/' */
    {"\xe0\x80\xaf", 0},                        /* overlong 3-byte */
    {"x\xed\xa0\x80", 1},                       /* surrogate U+D800 */
    {"\xf4\x90\x80\x80", 0},                    /* above U+10FFFF */
    {"\xf5\x80\x80\x80", 0},
    {"ok\xff", 2},
    {"\xe2\x82", 0},
};

static void test_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < sizeof(rows) / sizeof(rows[0]); i++) {
        size_t n = strlen(rows[i].s);
        size_t want = rows[i].invalid_at == (size_t)-1 ? n : rows[i].invalid_at;
        if (utf8_invalid_at(rows[i].s, n) != want)
            print_error("row %zu: got %zu want %zu\n", i, utf8_invalid_at(rows[i].s, n), want);
        assert_int_equal(utf8_invalid_at(rows[i].s, n), want);
        assert_int_equal(utf8_valid(rows[i].s, n), rows[i].invalid_at == (size_t)-1);
    }
}

static void test_maximal_subpart(void **state)
{
    (void)state;
    /* E2 82 followed by ASCII: one replacement for the two bytes */
    assert_int_equal(utf8_seq((const unsigned char *)"\xe2\x82x", 3), -2);
    assert_int_equal(utf8_seq((const unsigned char *)"\xff", 1), -1);
    assert_int_equal(utf8_seq((const unsigned char *)"\xc3\xa9", 2), 2);
    /* NUL is a valid (one-byte) character */
    assert_true(utf8_valid("a\0b", 3));
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_table),
        cmocka_unit_test(test_maximal_subpart),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
