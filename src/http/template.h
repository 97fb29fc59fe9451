/* The template language of the injection API: a subset of Jinja (what
 * KumoMTA's default dialect, MiniJinja, understands) that covers what mail
 * templates use: {{ name }} with dotted paths and indexes, filters (safe,
 * escape/e, upper, lower, title, capitalize, trim, length, default/d,
 * items, select/reject with a test (none, defined, string, number, mapping,
 * ...), normalize_smtp_response),
 * {% if %}/{% elif %}/{% else %}/{% endif %} with not/and/or and ==/!=
 * comparisons against literals, {% for x in list %} and
 * {% for k, v in pairs %}...{% endfor %} with
 * loop.index/index0/first/last, {% raw %}, comments and the -}} / {{-
 * whitespace control. Undefined variables render as nothing, as MiniJinja
 * does. The Handlebars dialect supports {{name}}, {{{name}}} and {{! }};
 * the Static dialect copies the text. Pure code, any thread. */
#ifndef KUMOD_HTTP_TEMPLATE_H
#define KUMOD_HTTP_TEMPLATE_H
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

typedef enum tmpl_dialect { TMPL_JINJA, TMPL_STATIC, TMPL_HANDLEBARS } tmpl_dialect;

typedef struct tmpl tmpl;

/* Parses "Jinja", "Static" or "Handlebars". 0 or KERR_PARSE. */
int tmpl_dialect_parse(const char *s, tmpl_dialect *out);

/* Compiles src (len bytes, copied). name appears in error messages
 * ("text_body.txt:3"); html turns on HTML escaping of {{ }} output, as
 * MiniJinja does for templates whose name ends in .html. On a syntax error
 * returns KERR_PARSE and writes the reason into err. */
int tmpl_compile(const char *src, size_t len, tmpl_dialect dialect, const char *name, bool html,
                 tmpl **out, char *err, size_t errlen);

/* Renders t with the variables of vars (a JSON object, borrowed). Returns
 * malloc'd NUL-terminated text and its length in *len, or NULL with the
 * reason in err. */
char *tmpl_render(const tmpl *t, const json_t *vars, size_t *len, char *err, size_t errlen);

/* The output escaping MiniJinja picks from a template's name: HTML for
 * .html/.htm/.xml, JSON (each {{ }} written as a JSON value) for
 * .json/.json5/.js/.yaml/.yml in the Jinja dialect, none otherwise. */
typedef enum tmpl_escape { TMPL_ESC_NONE, TMPL_ESC_HTML, TMPL_ESC_JSON } tmpl_escape;
tmpl_escape tmpl_escape_for_name(const char *name, tmpl_dialect dialect);

/* Replaces the escaping chosen at compile time (html flag). */
void tmpl_set_escape(tmpl *t, tmpl_escape e);

void tmpl_free(tmpl *t);

#endif
