/* Unit tests for src/msg/headers.c: iterating RFC 5322 header fields with
 * folding (CRLF and bare LF), unfolded values, first-value lookup, and the
 * prepend/append/remove edits the Message methods are built on (RFC 5322
 * §2.2, §2.2.3 unfolding). */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "msg/headers.h"
#include "msg/message.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

/* ---- hdr_block_len ------------------------------------------------------------------ */

struct block_row {
    const char *data;
    size_t want;
};

static const struct block_row block_rows[] = {
    {"A: 1\r\nB: 2\r\n\r\nbody\r\n", 14},
    {"A: 1\nB: 2\n\nbody\n", 11},
    {"A: 1\r\nB: 2\r\n", 12}, /* no body: the whole buffer */
    {"A: 1\r\nB: 2", 10},     /* not even a final EOL */
    {"\r\nbody", 2},          /* no header fields at all */
    {"\nbody", 1},
    {"A: 1\r\n\r\n\r\nB: 2\r\n", 8}, /* the first blank line ends it */
    {"A: x\r\n y\r\n\r\nbody", 12},  /* folded field */
    {"", 0},
};

static void test_block_len(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(block_rows); i++) {
        const struct block_row *r = &block_rows[i];
        size_t got = hdr_block_len(r->data, strlen(r->data));
        if (got != r->want) {
            print_error("hdr_block_len(row %zu) = %zu; want %zu\n", i, got, r->want);
            fail();
        }
    }
}

/* ---- iteration and values --------------------------------------------------------------- */

struct field_want {
    const char *name;
    const char *value;
};

struct iter_row {
    const char *what;
    const char *data;
    struct field_want want[6];
    size_t n;
};

static const struct iter_row iter_rows[] = {
    {"CRLF",
     "From: <a@example.com>\r\nTo: <b@example.com>\r\nSubject: hello\r\n\r\nbody\r\nX-No: x\r\n",
     {{"From", "<a@example.com>"}, {"To", "<b@example.com>"}, {"Subject", "hello"}},
     3},
    {"bare LF",
     "From: <a@example.com>\nSubject: hello\n\nX-Body: not a header\n",
     {{"From", "<a@example.com>"}, {"Subject", "hello"}},
     2},
    {"folding with space and tab (CRLF)",
     "Subject: a long\r\n subject\r\n\tline\r\nX-A: 1\r\n\r\n",
     {{"Subject", "a long subject\tline"}, {"X-A", "1"}},
     2},
    {"folding (bare LF)",
     "Subject: a long\n subject\nX-A: 1\n\nbody",
     {{"Subject", "a long subject"}, {"X-A", "1"}},
     2},
    {"mixed line endings",
     "A: 1\r\nB: 2\nC: x\r\n y\n\r\nbody",
     {{"A", "1"}, {"B", "2"}, {"C", "x y"}},
     3},
    {"leading whitespace trimmed, trailing kept, no space after colon",
     "A:   spaced \r\nB:tight\r\nC:\t\ttabbed\r\n\r\n",
     {{"A", "spaced "}, {"B", "tight"}, {"C", "tabbed"}},
     3},
    {"empty values",
     "X-Empty:\r\nX-Space: \r\nX-Folded-Empty:\r\n \r\n\r\n",
     {{"X-Empty", ""}, {"X-Space", ""}, {"X-Folded-Empty", " "}},
     3},
    {"space before the colon is not part of the name",
     "Subject : spaced name\r\n\r\n",
     {{"Subject", "spaced name"}},
     1},
    {"colons in the value",
     "Date: Mon, 1 Jan 2024 10:00:00 +0000\r\nX-Url: http://x.example:80/a\r\n\r\n",
     {{"Date", "Mon, 1 Jan 2024 10:00:00 +0000"}, {"X-Url", "http://x.example:80/a"}},
     2},
    {"body-less message without final EOL", "A: 1\r\nB: last", {{"A", "1"}, {"B", "last"}}, 2},
    {"no header fields", "\r\nbody: like a header\r\n", {{NULL, NULL}}, 0},
    {"first line folded: the stray continuation is skipped",
     " stray\r\nA: 1\r\n\r\n",
     {{"A", "1"}},
     1},
};

static void test_iterate_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(iter_rows); i++) {
        const struct iter_row *r = &iter_rows[i];
        size_t len = strlen(r->data), pos = 0, n = 0;
        hdr_field f;
        while (hdr_next(r->data, len, &pos, &f)) {
            if (n >= r->n) {
                print_error("%s: extra field '%.*s'\n", r->what, (int)f.name_len, f.name);
                fail();
            }
            char *v = hdr_value(&f);
            bool ok = f.name_len == strlen(r->want[n].name) &&
                      strncmp(f.name, r->want[n].name, f.name_len) == 0 &&
                      hdr_name_eq(&f, r->want[n].name) && v && strcmp(v, r->want[n].value) == 0;
            if (!ok) {
                print_error("%s: field %zu = '%.*s' '%s'; want '%s' '%s'\n", r->what, n,
                            (int)f.name_len, f.name, v ? v : "(null)", r->want[n].name,
                            r->want[n].value);
                free(v);
                fail();
            }
            free(v);
            /* offsets: the field's bytes, raw without its final EOL */
            assert_true(f.start < f.end && f.end <= len);
            assert_ptr_equal(f.raw, r->data + f.start);
            assert_true(f.raw_len <= f.end - f.start);
            assert_true(f.raw_len == 0 ||
                        (f.raw[f.raw_len - 1] != '\n' && f.raw[f.raw_len - 1] != '\r'));
            assert_int_equal(pos, f.end);
            n++;
        }
        if (n != r->n) {
            print_error("%s: %zu fields; want %zu\n", r->what, n, r->n);
            fail();
        }
    }
}

static void test_name_eq_is_case_insensitive(void **state)
{
    (void)state;
    const char *data = "X-KumoRef: abc\r\n\r\n";
    size_t pos = 0;
    hdr_field f;
    assert_true(hdr_next(data, strlen(data), &pos, &f));
    assert_true(hdr_name_eq(&f, "X-KumoRef"));
    assert_true(hdr_name_eq(&f, "x-kumoref"));
    assert_true(hdr_name_eq(&f, "X-KUMOREF"));
    assert_false(hdr_name_eq(&f, "X-Kumo"));
    assert_false(hdr_name_eq(&f, "X-KumoRefs"));
    assert_false(hdr_next(data, strlen(data), &pos, &f));
}

/* ---- get_first ----------------------------------------------------------------------- */

struct first_row {
    const char *data;
    const char *name;
    const char *want; /* NULL: absent */
};

static const struct first_row first_rows[] = {
    {"Subject: one\r\nSubject: two\r\n\r\n", "Subject", "one"},
    {"Subject: one\r\nSubject: two\r\n\r\n", "subject", "one"},
    {"A: 1\r\nSubject: x\r\n y\r\n\r\n", "SUBJECT", "x y"},
    {"A: 1\nSubject: lf\n folded\n\n", "Subject", "lf folded"},
    {"A: 1\r\n\r\nSubject: in the body\r\n", "Subject", NULL},
    {"A: 1\r\n\r\n", "B", NULL},
    {"Subjects: no\r\nSubject: yes\r\n\r\n", "Subject", "yes"},
    {"Sub: no\r\nSubject: yes\r\n\r\n", "Subject", "yes"},
    {"X-E2E-Tag: t1\r\n\r\n", "X-E2E-Tag", "t1"},
    {"", "A", NULL},
};

static void test_get_first_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(first_rows); i++) {
        const struct first_row *r = &first_rows[i];
        char *got = hdr_get_first(r->data, strlen(r->data), r->name);
        bool ok = r->want ? (got && strcmp(got, r->want) == 0) : got == NULL;
        if (!ok) {
            print_error("get_first(row %zu, %s) = %s; want %s\n", i, r->name, got ? got : "(null)",
                        r->want ? r->want : "(null)");
            free(got);
            fail();
        }
        free(got);
    }
}

/* ---- prepend / append --------------------------------------------------------------------- */

struct edit_row {
    const char *what;
    const char *data;
    const char *name, *value;
    const char *want;
};

static const struct edit_row prepend_rows[] = {
    {"CRLF message", "A: 1\r\n\r\nbody\r\n", "X-New", "v", "X-New: v\r\nA: 1\r\n\r\nbody\r\n"},
    {"LF message: we always insert CRLF", "A: 1\n\nbody\n", "X-New", "v",
     "X-New: v\r\nA: 1\n\nbody\n"},
    {"empty message", "", "X-New", "v", "X-New: v\r\n"},
    {"header-less message", "\r\nbody", "Received", "from x", "Received: from x\r\n\r\nbody"},
    {"empty value", "A: 1\r\n\r\n", "X-Empty", "", "X-Empty: \r\nA: 1\r\n\r\n"},
};

static const struct edit_row append_rows[] = {
    {"CRLF message", "A: 1\r\nB: 2\r\n\r\nbody\r\n", "X-New", "v",
     "A: 1\r\nB: 2\r\nX-New: v\r\n\r\nbody\r\n"},
    {"LF message", "A: 1\n\nbody\n", "X-New", "v", "A: 1\nX-New: v\r\n\nbody\n"},
    {"after a folded last field", "A: 1\r\nB: x\r\n y\r\n\r\nbody", "X-New", "v",
     "A: 1\r\nB: x\r\n y\r\nX-New: v\r\n\r\nbody"},
    {"body-less message", "A: 1\r\n", "X-New", "v", "A: 1\r\nX-New: v\r\n"},
    {"last field without EOL", "A: 1", "X-New", "v", "A: 1\r\nX-New: v\r\n"},
    {"header-less message", "\r\nbody", "X-New", "v", "X-New: v\r\n\r\nbody"},
    {"blank lines in the body stay", "A: 1\r\n\r\nl1\r\n\r\nl2\r\n", "X-New", "v",
     "A: 1\r\nX-New: v\r\n\r\nl1\r\n\r\nl2\r\n"},
};

static void run_edits(const struct edit_row *rows, size_t n, bool append)
{
    for (size_t i = 0; i < n; i++) {
        const struct edit_row *r = &rows[i];
        size_t out_len = 12345;
        char *got = append ? hdr_append(r->data, strlen(r->data), r->name, r->value, &out_len)
                           : hdr_prepend(r->data, strlen(r->data), r->name, r->value, &out_len);
        assert_non_null(got);
        if (out_len != strlen(r->want) || memcmp(got, r->want, out_len) != 0) {
            print_error("%s %s:\n  got  \"%.*s\"\n  want \"%s\"\n", append ? "append" : "prepend",
                        r->what, (int)out_len, got, r->want);
            free(got);
            fail();
        }
        /* and the new field reads back */
        char *v = hdr_get_first(got, out_len, r->name);
        assert_non_null(v);
        assert_string_equal(v, r->value);
        free(v);
        free(got);
    }
}

static void test_prepend_table(void **state)
{
    (void)state;
    run_edits(prepend_rows, ARRAY_LEN(prepend_rows), false);
}

static void test_append_table(void **state)
{
    (void)state;
    run_edits(append_rows, ARRAY_LEN(append_rows), true);
}

/* A long value is folded at whitespace so lines stay within 78 columns, and
 * unfolds back to exactly the value. */
static void test_long_values_fold(void **state)
{
    (void)state;
    char value[2048] = "";
    for (int i = 0; i < 60; i++)
        snprintf(value + strlen(value), sizeof(value) - strlen(value), "%sword%02d", i ? " " : "",
                 i);
    const char *msg = "A: 1\r\n\r\nbody\r\n";
    for (int append = 0; append < 2; append++) {
        size_t len;
        char *out = append ? hdr_append(msg, strlen(msg), "X-Long", value, &len)
                           : hdr_prepend(msg, strlen(msg), "X-Long", value, &len);
        assert_non_null(out);
        /* every line of the header block is at most 78 characters */
        size_t block = hdr_block_len(out, len);
        int lines = 0;
        for (size_t i = 0; i < block;) {
            const char *nl = memchr(out + i, '\n', block - i);
            size_t end = nl ? (size_t)(nl - out) : block;
            size_t l = end - i;
            if (l && out[end - 1] == '\r')
                l--;
            assert_true(l <= 78);
            lines++;
            i = end + 1;
        }
        assert_true(lines >= 6); /* it was folded */
        char *v = hdr_get_first(out, len, "X-Long");
        assert_non_null(v);
        assert_string_equal(v, value);
        free(v);
        /* the body is untouched */
        assert_memory_equal(out + len - 6, "body\r\n", 6);
        free(out);
    }
    /* a single word longer than a line cannot be folded and is kept whole */
    char word[200];
    memset(word, 'x', 150);
    word[150] = 0;
    size_t len;
    char *out = hdr_prepend(msg, strlen(msg), "X-Word", word, &len);
    char *v = hdr_get_first(out, len, "X-Word");
    assert_string_equal(v, word);
    assert_int_equal(len, strlen("X-Word: ") + 150 + 2 + strlen(msg));
    free(v);
    free(out);
}

/* ---- remove --------------------------------------------------------------------------- */

struct remove_row {
    const char *what;
    const char *data;
    const char *name;
    bool prefix;
    const char *want;
};

static const struct remove_row remove_rows[] = {
    {"every instance, case-insensitive", "A: 1\r\nX-Tag: a\r\nB: 2\r\nx-tag: b\r\n\r\nbody\r\n",
     "X-Tag", false, "A: 1\r\nB: 2\r\n\r\nbody\r\n"},
    {"with its folded lines", "A: 1\r\nX-Tag: a\r\n b\r\n\tc\r\nB: 2\r\n\r\n", "x-tag", false,
     "A: 1\r\nB: 2\r\n\r\n"},
    {"bare LF", "A: 1\nX-Tag: a\n b\nB: 2\n\nbody\n", "X-Tag", false, "A: 1\nB: 2\n\nbody\n"},
    {"not in the body", "A: 1\r\n\r\nX-Tag: in body\r\n", "X-Tag", false,
     "A: 1\r\n\r\nX-Tag: in body\r\n"},
    {"exact name only", "X-Tag: a\r\nX-Tags: b\r\nX-Ta: c\r\n\r\n", "X-Tag", false,
     "X-Tags: b\r\nX-Ta: c\r\n\r\n"},
    {"absent: unchanged", "A: 1\r\n\r\nbody", "X-Tag", false, "A: 1\r\n\r\nbody"},
    {"first field", "X-Tag: a\r\nA: 1\r\n\r\n", "X-Tag", false, "A: 1\r\n\r\n"},
    {"last field of a body-less message without EOL", "A: 1\r\nX-Tag: a", "X-Tag", false,
     "A: 1\r\n"},
    {"prefix: every X- header (remove_x_headers)",
     "X-A: 1\r\nFrom: f\r\nx-b: 2\r\nX-C: 3\r\n  folded\r\nSubject: s\r\nXY: no\r\n\r\nX-Body: "
     "kept\r\n",
     "X-", true, "From: f\r\nSubject: s\r\nXY: no\r\n\r\nX-Body: kept\r\n"},
    {"prefix of a longer name", "X-KumoRef: a\r\nX-Kumo: b\r\nX-Other: c\r\n\r\n", "X-Kumo", true,
     "X-Other: c\r\n\r\n"},
    {"everything", "A: 1\r\nA: 2\r\n\r\nbody", "A", false, "\r\nbody"},
};

static void test_remove_table(void **state)
{
    (void)state;
    for (size_t i = 0; i < ARRAY_LEN(remove_rows); i++) {
        const struct remove_row *r = &remove_rows[i];
        size_t out_len = 999;
        char *got = hdr_remove(r->data, strlen(r->data), r->name, r->prefix, &out_len);
        assert_non_null(got);
        if (out_len != strlen(r->want) || memcmp(got, r->want, out_len) != 0) {
            print_error("remove %s:\n  got  \"%.*s\"\n  want \"%s\"\n", r->what, (int)out_len, got,
                        r->want);
            free(got);
            fail();
        }
        assert_int_equal(got[out_len], 0); /* NUL-terminated for convenience */
        free(got);
    }
}

/* prepend then remove gives back the original bytes */
static void test_edit_round_trip(void **state)
{
    (void)state;
    static const char *const msgs[] = {"A: 1\r\nB: x\r\n y\r\n\r\nbody\r\n", "A: 1\n\nbody\n",
                                       "\r\nbody", "A: 1\r\n"};
    for (size_t i = 0; i < ARRAY_LEN(msgs); i++) {
        size_t l1, l2;
        char *p = hdr_prepend(msgs[i], strlen(msgs[i]), "X-RT", "some value here", &l1);
        char *back = hdr_remove(p, l1, "X-RT", false, &l2);
        assert_int_equal(l2, strlen(msgs[i]));
        assert_memory_equal(back, msgs[i], l2);
        free(p);
        free(back);
        char *a = hdr_append(msgs[i], strlen(msgs[i]), "X-RT", "v", &l1);
        back = hdr_remove(a, l1, "x-rt", false, &l2);
        assert_int_equal(l2, strlen(msgs[i]));
        assert_memory_equal(back, msgs[i], l2);
        free(a);
        free(back);
    }
}

/* ---- the index ----------------------------------------------------------------------- */

static void test_index_matches_iteration(void **state)
{
    (void)state;
    static const char *const msgs[] = {
        "A: 1\r\nB: x\r\n y\r\n\r\nbody\r\n",
        "A: 1\nB: 2\n\nbody\n",
        "A: 1\r\nB: 2",
        " stray\r\nA: 1\r\n\r\nbody",
        "NoColon\r\nA: 1\r\n\r\n",
        "\r\nbody",
        "",
    };
    for (size_t i = 0; i < ARRAY_LEN(msgs); i++) {
        const char *d = msgs[i];
        size_t len = strlen(d);
        hdr_index ix;
        assert_int_equal(hdr_index_build(d, len, &ix), 0);
        assert_int_equal(ix.block_len, hdr_block_len(d, len));
        size_t pos = 0, k = 0, last_end = 0;
        hdr_field f;
        while (hdr_next(d, len, &pos, &f)) {
            assert_true(k < ix.n);
            assert_int_equal(ix.fields[k].start, f.start);
            assert_int_equal(ix.fields[k].end, f.end);
            assert_int_equal(ix.fields[k].name_len, f.name_len);
            last_end = f.end;
            k++;
        }
        assert_int_equal(k, ix.n);
        assert_int_equal(ix.append_at, last_end);
        hdr_index_fini(&ix);
    }
}

static void test_index_edits(void **state)
{
    (void)state;
    const char *d = "A: 1\r\nB: 2\r\na: 3\r\n\r\nbody";
    size_t len = strlen(d), ol;
    hdr_index ix;
    assert_int_equal(hdr_index_build(d, len, &ix), 0);
    assert_int_equal(hdr_index_find(&ix, "a", 0), 0);
    assert_int_equal(hdr_index_find(&ix, "a", 1), 2);
    assert_int_equal(hdr_index_find(&ix, "c", 0), -1);
    bool drop[3] = {true, false, true};
    char *out = hdr_index_remove(&ix, d, len, drop, &ol);
    assert_string_equal(out, "B: 2\r\n\r\nbody");
    free(out);
    out = hdr_index_insert(&ix, d, len, true, "Z: 9\r\n", 6, &ol);
    assert_string_equal(out, "A: 1\r\nB: 2\r\na: 3\r\nZ: 9\r\n\r\nbody");
    free(out);
    out = hdr_index_insert(&ix, d, len, false, "Z: 9\r\n", 6, &ol);
    assert_string_equal(out, "Z: 9\r\nA: 1\r\nB: 2\r\na: 3\r\n\r\nbody");
    free(out);
    hdr_index_fini(&ix);
    /* a body-less message whose last field has no line ending */
    d = "A: 1";
    assert_int_equal(hdr_index_build(d, 4, &ix), 0);
    out = hdr_index_insert(&ix, d, 4, true, "Z: 9\r\n", 6, &ol);
    assert_string_equal(out, "A: 1\r\nZ: 9\r\n");
    free(out);
    hdr_index_fini(&ix);
}

/* Issue 25, defect 3: a 64,000-field block. The bytes examined by a full
 * iteration and by an index build are counted, not timed: both must stay
 * within a small multiple of the block's size (the quadratic scan examined
 * about fields x block / 2 bytes, 10^10 here). */
static void test_scans_are_linear(void **state)
{
    (void)state;
    const size_t n = 64000;
    char *d = malloc(n * 32 + 64);
    assert_non_null(d);
    size_t len = 0;
    for (size_t i = 0; i < n; i++)
        len += (size_t)sprintf(d + len, "X-H%zu: value %zu\r\n", i % 97, i);
    len += (size_t)sprintf(d + len, "Subject: last\r\n\r\nbody\r\n");

    unsigned long long before = hdr_bytes_scanned();
    size_t pos = 0, k = 0;
    hdr_field f;
    while (hdr_next(d, len, &pos, &f))
        k++;
    assert_int_equal(k, n + 1);
    unsigned long long iter = hdr_bytes_scanned() - before;
    assert_true(iter <= 2 * (unsigned long long)len);

    before = hdr_bytes_scanned();
    hdr_index ix;
    assert_int_equal(hdr_index_build(d, len, &ix), 0);
    assert_int_equal(ix.n, n + 1);
    assert_true(hdr_bytes_scanned() - before <= 2 * (unsigned long long)len);
    assert_int_equal(hdr_index_find(&ix, "subject", 0), (long)n);
    hdr_index_fini(&ix);

    /* the old edits (hdr_remove, hdr_get_first) ride on hdr_next: linear too */
    before = hdr_bytes_scanned();
    size_t ol;
    char *out = hdr_remove(d, len, "X-H1", false, &ol);
    free(out);
    char *v = hdr_get_first(d, len, "Subject");
    assert_string_equal(v, "last");
    free(v);
    assert_true(hdr_bytes_scanned() - before <= 4 * (unsigned long long)len);
    free(d);
}

/* A message's header reads share one index until its data changes. */
static void test_message_index_is_shared(void **state)
{
    (void)state;
    const char *rcpt = "r@example.com";
    message *m = message_new(NULL, "s@example.com", &rcpt, 1);
    assert_int_equal(message_set_data(m, "A: 1\r\n\r\nbody", 13), 0);
    unsigned long b0 = message_header_index_builds();
    const hdr_index *ix = message_headers(m);
    assert_non_null(ix);
    assert_int_equal(ix->n, 1);
    for (int i = 0; i < 100; i++)
        assert_ptr_equal(message_headers(m), ix);
    assert_int_equal(message_header_index_builds() - b0, 1);
    assert_int_equal(message_set_data(m, "A: 1\r\nB: 2\r\n\r\n", 14), 0);
    ix = message_headers(m);
    assert_int_equal(ix->n, 2);
    assert_int_equal(message_header_index_builds() - b0, 2);
    message_unref(m);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_block_len),
        cmocka_unit_test(test_iterate_table),
        cmocka_unit_test(test_name_eq_is_case_insensitive),
        cmocka_unit_test(test_get_first_table),
        cmocka_unit_test(test_prepend_table),
        cmocka_unit_test(test_append_table),
        cmocka_unit_test(test_long_values_fold),
        cmocka_unit_test(test_remove_table),
        cmocka_unit_test(test_edit_round_trip),
        cmocka_unit_test(test_index_matches_iteration),
        cmocka_unit_test(test_index_edits),
        cmocka_unit_test(test_scans_are_linear),
        cmocka_unit_test(test_message_index_is_shared),
    };
    return cmocka_run_group_tests_name("msg/headers", tests, NULL, NULL);
}
