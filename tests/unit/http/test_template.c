/* Unit tests for src/http/template.c: the injection API's template
 * language. Expectations follow MiniJinja's behaviour as KumoMTA uses it
 * (crates/kumo-template; undefined variables render empty, HTML escaping in
 * .html templates, the trailing newline of the source dropped) and its
 * syntax error texts ("syntax error: ... (in name:line)"). Table-driven. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <cmocka.h>

#include "core/kerr.h"
#include "http/template.h"

#define ARRAY_LEN(a) (sizeof(a) / sizeof((a)[0]))

static const char VARS[] = "{\"name\": \"Ann\", \"email\": \"ann@example.com\", \"n\": 3, "
                           "\"half\": 0.5, \"two\": 2.0, \"yes\": true, \"no\": false, "
                           "\"nothing\": null, \"empty\": \"\", \"html\": \"<b>&'\\\"/\", "
                           "\"user\": {\"first\": \"Ann\", \"tags\": [\"a\", \"b\", \"c\"]}, "
                           "\"list\": [1, 2, 3], \"map\": {\"k1\": 1, \"k2\": 2}, "
                           "\"padded\": \"  x  \", \"mixed\": \"hELLO wORLD\"}";

struct render_row {
    const char *src;
    tmpl_dialect dialect;
    bool html;
    const char *want;
};

static const struct render_row render_rows[] = {
    {"Hello {{ name }}!", TMPL_JINJA, false, "Hello Ann!"},
    {"Hello {{name}}!", TMPL_JINJA, false, "Hello Ann!"},
    {"{{ user.first }} {{ user.tags.1 }} {{ user['first'] }} {{ user.tags[2] }}", TMPL_JINJA,
     false, "Ann b Ann c"},
    {"[{{ missing }}][{{ user.missing.deeper }}][{{ list.9 }}]", TMPL_JINJA, false, "[][][]"},
    {"{{ n }} {{ half }} {{ two }} {{ yes }} {{ no }} {{ nothing }}", TMPL_JINJA, false,
     "3 0.5 2.0 true false none"},
    {"{{ list }}|{{ map }}", TMPL_JINJA, false, "[1,2,3]|{\"k1\":1,\"k2\":2}"},
    /* the source's single trailing newline is dropped, others are kept */
    {"line\n", TMPL_JINJA, false, "line"},
    {"line\n\n", TMPL_JINJA, false, "line\n"},
    {"line\r\n", TMPL_JINJA, false, "line"},
    /* HTML escaping only in .html templates, and not for |safe */
    {"{{ html }}", TMPL_JINJA, false, "<b>&'\"/"},
    {"{{ html }}", TMPL_JINJA, true, "&lt;b&gt;&amp;&#x27;&quot;&#x2f;"},
    {"{{ html | safe }}", TMPL_JINJA, true, "<b>&'\"/"},
    {"{{ html | e }}", TMPL_JINJA, false, "&lt;b&gt;&amp;&#x27;&quot;&#x2f;"},
    {"<p>{{ name }}</p>", TMPL_JINJA, true, "<p>Ann</p>"},
    /* filters */
    {"{{ name | upper }} {{ name|lower }} {{ mixed | title }} {{ mixed | capitalize }}",
     TMPL_JINJA, false, "ANN ann Hello World Hello world"},
    {"[{{ padded | trim }}] {{ list | length }} {{ name | length }} {{ map | count }}",
     TMPL_JINJA, false, "[x] 3 3 2"},
    {"{{ missing | default('dflt') }} {{ name | d('x') }} {{ empty | default('e', true) }}",
     TMPL_JINJA, false, "dflt Ann e"},
    {"{{ user.tags | join(', ') }}", TMPL_JINJA, false, "a, b, c"},
    /* statements */
    {"{% if yes %}Y{% else %}N{% endif %}", TMPL_JINJA, false, "Y"},
    {"{% if no %}Y{% elif missing %}M{% else %}N{% endif %}", TMPL_JINJA, false, "N"},
    {"{% if not empty %}empty{% endif %}", TMPL_JINJA, false, "empty"},
    {"{% if name == 'Ann' and n == 3 %}match{% endif %}", TMPL_JINJA, false, "match"},
    {"{% if name != 'Ann' or no %}x{% else %}y{% endif %}", TMPL_JINJA, false, "y"},
    {"{% if n == 3.0 %}num{% endif %}", TMPL_JINJA, false, "num"},
    {"{% for t in user.tags %}{{ loop.index }}:{{ t }}{% if not loop.last %},{% endif %}"
     "{% endfor %}",
     TMPL_JINJA, false, "1:a,2:b,3:c"},
    {"{% for k in map %}{{ k }}{% endfor %}", TMPL_JINJA, false, "k1k2"},
    {"{% for x in missing %}x{% else %}none{% endfor %}", TMPL_JINJA, false, "none"},
    {"{% raw %}{{ name }}{% endraw %}", TMPL_JINJA, false, "{{ name }}"},
    {"a{# comment #}b", TMPL_JINJA, false, "ab"},
    /* whitespace control */
    {"a  {{- name -}}  b", TMPL_JINJA, false, "aAnnb"},
    {"<ul>\n  {%- for t in list %}\n  <li>{{ t }}</li>\n  {%- endfor %}\n</ul>", TMPL_JINJA,
     false, "<ul>\n  <li>1</li>\n  <li>2</li>\n  <li>3</li>\n</ul>"},
    /* quotes inside an expression may hold the closing delimiter */
    {"{{ missing | default('}}') }}", TMPL_JINJA, false, "}}"},
    /* Static: no templating at all */
    {"{{ name }} {% if %}\n", TMPL_STATIC, true, "{{ name }} {% if %}\n"},
    /* Handlebars */
    {"Hi {{name}}, {{user.first}}!{{! a comment }}", TMPL_HANDLEBARS, false, "Hi Ann, Ann!"},
    {"{{html}} {{{html}}}", TMPL_HANDLEBARS, true, "&lt;b&gt;&amp;&#x27;&quot;&#x2f; <b>&'\"/"},
    {"no tags at all", TMPL_JINJA, false, "no tags at all"},
    {"", TMPL_JINJA, false, ""},
    /* UTF-8 passes through */
    {"Grüße {{ name }} ☃", TMPL_JINJA, false, "Grüße Ann ☃"},
};

static void test_render(void **state)
{
    json_error_t jerr;
    json_t *vars = json_loads(VARS, 0, &jerr);
    assert_non_null(vars);
    for (size_t i = 0; i < ARRAY_LEN(render_rows); i++) {
        const struct render_row *r = &render_rows[i];
        tmpl *t = NULL;
        char err[300] = "";
        int rc = tmpl_compile(r->src, strlen(r->src), r->dialect, "t", r->html, &t, err,
                              sizeof(err));
        if (rc != 0)
            print_error("row %zu: %s: %s\n", i, r->src, err);
        assert_int_equal(rc, 0);
        size_t len = 0;
        char *out = tmpl_render(t, vars, &len, err, sizeof(err));
        assert_non_null(out);
        if (strcmp(out, r->want) != 0)
            print_error("row %zu: %s\n  got  [%s]\n  want [%s]\n", i, r->src, out, r->want);
        assert_string_equal(out, r->want);
        assert_int_equal(len, strlen(r->want));
        free(out);
        tmpl_free(t);
    }
    json_decref(vars);
}

struct error_row {
    const char *src;
    tmpl_dialect dialect;
    const char *want;
};

static const struct error_row error_rows[] = {
    {"Hello {{ name", TMPL_JINJA,
     "syntax error: unexpected end of input, expected end of variable block (in t.txt:1)"},
    {"line1\nline2 {% if x %}", TMPL_JINJA,
     "syntax error: unexpected end of input, expected 'endif' (in t.txt:2)"},
    {"{% for x in y %}", TMPL_JINJA,
     "syntax error: unexpected end of input, expected 'endfor' (in t.txt:1)"},
    {"{{ }}", TMPL_JINJA, "syntax error: expected an expression (in t.txt:1)"},
    {"{{ a b }}", TMPL_JINJA,
     "syntax error: unexpected 'b', expected end of expression (in t.txt:1)"},
    {"{{ a | nope }}", TMPL_JINJA, "syntax error: unknown filter 'nope' (in t.txt:1)"},
    {"{% frob %}", TMPL_JINJA, "syntax error: unknown statement 'frob' (in t.txt:1)"},
    {"{% endif %}", TMPL_JINJA, "syntax error: unknown statement 'endif' (in t.txt:1)"},
    {"{# open comment", TMPL_JINJA, "syntax error: unexpected end of comment (in t.txt:1)"},
    {"{{ 'unterminated }}", TMPL_JINJA,
     "syntax error: unexpected end of input, expected end of variable block (in t.txt:1)"},
    {"{% for 1 in x %}{% endfor %}", TMPL_JINJA,
     "syntax error: unexpected token, expected a loop variable (in t.txt:1)"},
    {"{{#each x}}{{/each}}", TMPL_HANDLEBARS,
     "syntax error: handlebars block helpers and partials are not supported (in t.txt:1)"},
    {"{{name", TMPL_HANDLEBARS, "syntax error: unexpected end of input, expected '}}' (in t.txt:1)"},
    /* found by tests/fuzz/fuzz_template.c: used to report "out of memory" */
    {"{{ '\xb0' }}", TMPL_JINJA, "syntax error: string literal is not valid UTF-8 (in t.txt:1)"},
};

static void test_syntax_errors(void **state)
{
    for (size_t i = 0; i < ARRAY_LEN(error_rows); i++) {
        const struct error_row *r = &error_rows[i];
        tmpl *t = NULL;
        char err[300] = "";
        int rc = tmpl_compile(r->src, strlen(r->src), r->dialect, "t.txt", false, &t, err,
                              sizeof(err));
        if (rc != KERR_PARSE || strcmp(err, r->want) != 0)
            print_error("row %zu: %s\n  got  %d [%s]\n  want [%s]\n", i, r->src, rc, err,
                        r->want);
        assert_int_equal(rc, KERR_PARSE);
        assert_null(t);
        assert_string_equal(err, r->want);
    }
}

static void test_dialect_parse(void **state)
{
    tmpl_dialect d;
    assert_int_equal(tmpl_dialect_parse("Jinja", &d), 0);
    assert_int_equal(d, TMPL_JINJA);
    assert_int_equal(tmpl_dialect_parse("Static", &d), 0);
    assert_int_equal(d, TMPL_STATIC);
    assert_int_equal(tmpl_dialect_parse("Handlebars", &d), 0);
    assert_int_equal(d, TMPL_HANDLEBARS);
    assert_int_equal(tmpl_dialect_parse("jinja", &d), KERR_PARSE);
}

/* A template that expands to more than the output cap fails cleanly. */
static void test_output_cap(void **state)
{
    json_t *vars = json_object();
    json_t *big = json_array();
    for (int i = 0; i < 300; i++)
        json_array_append_new(big, json_integer(i));
    json_object_set_new(vars, "l", big);
    char chunk[4001];
    memset(chunk, 'x', 4000);
    chunk[4000] = 0;
    json_object_set_new(vars, "s", json_string(chunk));
    const char *src = "{% for a in l %}{% for b in l %}{% for c in l %}{{ s }}{% endfor %}"
                      "{% endfor %}{% endfor %}";
    tmpl *t;
    char err[300];
    assert_int_equal(tmpl_compile(src, strlen(src), TMPL_JINJA, "big", false, &t, err,
                                  sizeof(err)),
                     0);
    size_t len;
    char *out = tmpl_render(t, vars, &len, err, sizeof(err));
    assert_null(out);
    assert_non_null(strstr(err, "output larger than"));
    tmpl_free(t);
    json_decref(vars);
}

int main(void)
{
    const struct CMUnitTest tests[] = {
        cmocka_unit_test(test_render),
        cmocka_unit_test(test_syntax_errors),
        cmocka_unit_test(test_dialect_parse),
        cmocka_unit_test(test_output_cap),
    };
    return cmocka_run_group_tests(tests, NULL, NULL);
}
