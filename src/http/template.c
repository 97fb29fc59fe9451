/* Template engine for the injection API (see template.h for the language).
 *
 * A template is compiled once per request into a tree of nodes (text
 * slices of the source, output expressions, if and for blocks) and rendered
 * once per recipient against a JSON object of variables. Owns its copy of
 * the source; holds no global state, so any thread may use it. Syntax
 * errors are found at compile time and reported with the template name and
 * line, as MiniJinja reports them; rendering only fails when the output
 * would exceed TMPL_MAX_OUTPUT (a template looping over itself). */
#include "http/template.h"

#include <ctype.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/kerr.h"
#include "lua/lib/smtpnorm.h"

#define TMPL_MAX_OUTPUT (64u * 1024 * 1024)
#define TMPL_MAX_DEPTH 64

/* ---- tree ------------------------------------------------------------------ */

enum expr_kind { E_PATH, E_LIT, E_NOT, E_AND, E_OR, E_EQ, E_NE };
enum filter_kind { F_SAFE, F_ESCAPE, F_UPPER, F_LOWER, F_TITLE, F_CAPITALIZE, F_TRIM, F_LENGTH,
                   F_DEFAULT, F_JOIN, F_ITEMS, F_SELECT, F_REJECT, F_NORMALIZE };

typedef struct filter {
    enum filter_kind kind;
    json_t *args[2];
    int nargs;
} filter;

typedef struct expr {
    enum expr_kind kind;
    struct expr *a, *b;
    json_t *lit;
    char **segs;
    size_t nsegs;
    filter *filters;
    size_t nfilters;
} expr;

enum node_kind { N_TEXT, N_OUT, N_IF, N_FOR };

typedef struct node node;
typedef struct nodelist {
    node **v;
    size_t n, cap;
} nodelist;

struct node {
    enum node_kind kind;
    size_t off, len; /* N_TEXT: slice of the source */
    expr *e;         /* N_OUT, N_IF condition, N_FOR iterable */
    bool raw;        /* N_OUT: never escape ({{{ }}} in Handlebars) */
    char *var;       /* N_FOR loop variable */
    char *var2;      /* N_FOR second variable (for k, v in ...): unpacks pairs */
    nodelist body, alt;
};

struct tmpl {
    char *src;
    size_t len;
    char *name;
    bool html;
    bool json; /* output expressions are written as JSON (.json, .yaml names) */
    nodelist root;
};

static void expr_free(expr *e)
{
    if (!e)
        return;
    expr_free(e->a);
    expr_free(e->b);
    json_decref(e->lit);
    for (size_t i = 0; i < e->nsegs; i++)
        free(e->segs[i]);
    free(e->segs);
    for (size_t i = 0; i < e->nfilters; i++)
        for (int k = 0; k < e->filters[i].nargs; k++)
            json_decref(e->filters[i].args[k]);
    free(e->filters);
    free(e);
}

static void nodelist_fini(nodelist *l);

static void node_free(node *n)
{
    if (!n)
        return;
    expr_free(n->e);
    free(n->var);
    free(n->var2);
    nodelist_fini(&n->body);
    nodelist_fini(&n->alt);
    free(n);
}

static void nodelist_fini(nodelist *l)
{
    for (size_t i = 0; i < l->n; i++)
        node_free(l->v[i]);
    free(l->v);
    l->v = NULL;
    l->n = l->cap = 0;
}

static int nodelist_push(nodelist *l, node *n)
{
    if (l->n == l->cap) {
        size_t cap = l->cap ? l->cap * 2 : 8;
        node **v = realloc(l->v, cap * sizeof(*v));
        if (!v)
            return KERR_NOMEM;
        l->v = v;
        l->cap = cap;
    }
    l->v[l->n++] = n;
    return 0;
}

tmpl_escape tmpl_escape_for_name(const char *name, tmpl_dialect dialect)
{
    const char *dot = name ? strrchr(name, '.') : NULL;
    if (!dot)
        return TMPL_ESC_NONE;
    dot++;
    if (strcmp(dot, "html") == 0 || strcmp(dot, "htm") == 0 || strcmp(dot, "xml") == 0)
        return TMPL_ESC_HTML;
    if (dialect == TMPL_JINJA && (strcmp(dot, "json") == 0 || strcmp(dot, "json5") == 0 ||
                                  strcmp(dot, "js") == 0 || strcmp(dot, "yaml") == 0 ||
                                  strcmp(dot, "yml") == 0))
        return TMPL_ESC_JSON;
    return TMPL_ESC_NONE;
}

void tmpl_set_escape(tmpl *t, tmpl_escape e)
{
    t->html = e == TMPL_ESC_HTML;
    t->json = e == TMPL_ESC_JSON;
}

void tmpl_free(tmpl *t)
{
    if (!t)
        return;
    nodelist_fini(&t->root);
    free(t->src);
    free(t->name);
    free(t);
}

int tmpl_dialect_parse(const char *s, tmpl_dialect *out)
{
    if (strcmp(s, "Jinja") == 0)
        *out = TMPL_JINJA;
    else if (strcmp(s, "Static") == 0)
        *out = TMPL_STATIC;
    else if (strcmp(s, "Handlebars") == 0)
        *out = TMPL_HANDLEBARS;
    else
        return KERR_PARSE;
    return 0;
}

/* ---- parser state ----------------------------------------------------------------- */

typedef struct parser {
    tmpl *t;
    tmpl_dialect dialect;
    size_t pos;
    bool lstrip_next; /* a -}} / -%} asked to trim the next text */
    char *err;
    size_t errlen;
    int depth;
} parser;

static int line_of(const parser *p, size_t off)
{
    int line = 1;
    for (size_t i = 0; i < off && i < p->t->len; i++)
        if (p->t->src[i] == '\n')
            line++;
    return line;
}

static int syntax_error(parser *p, size_t off, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int syntax_error(parser *p, size_t off, const char *fmt, ...)
{
    char msg[256];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof(msg), fmt, ap);
    va_end(ap);
    snprintf(p->err, p->errlen, "syntax error: %s (in %s:%d)", msg, p->t->name, line_of(p, off));
    return KERR_PARSE;
}

/* ---- expression lexer (over one tag's inside) ------------------------------------------------ */

enum tok_kind { T_END, T_IDENT, T_STR, T_INT, T_FLOAT, T_DOT, T_LBRACK, T_RBRACK, T_LPAREN,
                T_RPAREN, T_COMMA, T_PIPE, T_EQ, T_NE, T_BAD };

typedef struct lexer {
    parser *p;
    const char *s;
    size_t i, n;  /* cursor and end, relative to s */
    size_t base;  /* offset of s in the source (for line numbers) */
    enum tok_kind kind;
    char *text;   /* T_IDENT / T_STR (malloc'd, owned by the lexer until taken) */
    double num;
    long long inum;
} lexer;

static void lex_next(lexer *lx)
{
    free(lx->text);
    lx->text = NULL;
    while (lx->i < lx->n && isspace((unsigned char)lx->s[lx->i]))
        lx->i++;
    if (lx->i >= lx->n) {
        lx->kind = T_END;
        return;
    }
    char c = lx->s[lx->i];
    if (isalpha((unsigned char)c) || c == '_') {
        size_t st = lx->i;
        while (lx->i < lx->n && (isalnum((unsigned char)lx->s[lx->i]) || lx->s[lx->i] == '_'))
            lx->i++;
        lx->text = strndup(lx->s + st, lx->i - st);
        lx->kind = lx->text ? T_IDENT : T_BAD;
        return;
    }
    if (isdigit((unsigned char)c)) {
        size_t st = lx->i;
        bool fl = false;
        while (lx->i < lx->n && (isdigit((unsigned char)lx->s[lx->i]) || lx->s[lx->i] == '.')) {
            if (lx->s[lx->i] == '.') {
                /* "a.0.b": a dot followed by a non-digit ends the number */
                if (fl || lx->i + 1 >= lx->n || !isdigit((unsigned char)lx->s[lx->i + 1]))
                    break;
                fl = true;
            }
            lx->i++;
        }
        char buf[64];
        snprintf(buf, sizeof(buf), "%.*s", (int)(lx->i - st), lx->s + st);
        if (fl) {
            lx->kind = T_FLOAT;
            lx->num = strtod(buf, NULL);
        } else {
            lx->kind = T_INT;
            lx->inum = strtoll(buf, NULL, 10);
        }
        return;
    }
    if (c == '"' || c == '\'') {
        size_t cap = 16, o = 0;
        char *buf = malloc(cap);
        lx->i++;
        while (buf && lx->i < lx->n && lx->s[lx->i] != c) {
            char ch = lx->s[lx->i++];
            if (ch == '\\' && lx->i < lx->n) {
                ch = lx->s[lx->i++];
                if (ch == 'n')
                    ch = '\n';
                else if (ch == 't')
                    ch = '\t';
            }
            if (o + 2 > cap) {
                cap *= 2;
                char *nb = realloc(buf, cap);
                if (!nb) {
                    free(buf);
                    buf = NULL;
                    break;
                }
                buf = nb;
            }
            buf[o++] = ch;
        }
        if (!buf || lx->i >= lx->n) {
            free(buf);
            lx->kind = T_BAD;
            return;
        }
        buf[o] = 0;
        lx->i++;
        lx->text = buf;
        lx->kind = T_STR;
        return;
    }
    lx->i++;
    switch (c) {
    case '.':
        lx->kind = T_DOT;
        return;
    case '[':
        lx->kind = T_LBRACK;
        return;
    case ']':
        lx->kind = T_RBRACK;
        return;
    case '(':
        lx->kind = T_LPAREN;
        return;
    case ')':
        lx->kind = T_RPAREN;
        return;
    case ',':
        lx->kind = T_COMMA;
        return;
    case '|':
        lx->kind = T_PIPE;
        return;
    case '=':
    case '!':
        if (lx->i < lx->n && lx->s[lx->i] == '=') {
            lx->i++;
            lx->kind = c == '=' ? T_EQ : T_NE;
            return;
        }
        break;
    default:
        break;
    }
    lx->kind = T_BAD;
}

static bool lex_is_word(const lexer *lx, const char *w)
{
    return lx->kind == T_IDENT && strcmp(lx->text, w) == 0;
}

static int lex_error(lexer *lx, const char *what)
{
    if (lx->kind == T_END)
        return syntax_error(lx->p, lx->base + lx->i, "unexpected end of expression, expected %s",
                            what);
    if (lx->kind == T_BAD)
        return syntax_error(lx->p, lx->base + lx->i, "unexpected character, expected %s", what);
    return syntax_error(lx->p, lx->base + lx->i, "unexpected %s%s%s, expected %s",
                        lx->text ? "'" : "token", lx->text ? lx->text : "", lx->text ? "'" : "",
                        what);
}

/* ---- expression parser ----------------------------------------------------------------------- */

static expr *expr_new(enum expr_kind k)
{
    expr *e = calloc(1, sizeof(*e));
    if (e)
        e->kind = k;
    return e;
}

static int parse_expr(lexer *lx, expr **out);

static int parse_literal(lexer *lx, json_t **out)
{
    switch (lx->kind) {
    case T_STR:
        *out = json_string(lx->text);
        if (!*out)
            return syntax_error(lx->p, lx->base + lx->i, "string literal is not valid UTF-8");
        break;
    case T_INT:
        *out = json_integer(lx->inum);
        break;
    case T_FLOAT:
        *out = json_real(lx->num);
        break;
    case T_IDENT:
        if (strcmp(lx->text, "true") == 0 || strcmp(lx->text, "True") == 0)
            *out = json_true();
        else if (strcmp(lx->text, "false") == 0 || strcmp(lx->text, "False") == 0)
            *out = json_false();
        else if (strcmp(lx->text, "none") == 0 || strcmp(lx->text, "None") == 0)
            *out = json_null();
        else
            return lex_error(lx, "a literal");
        break;
    default:
        return lex_error(lx, "a literal");
    }
    if (!*out)
        return KERR_NOMEM;
    lex_next(lx);
    return 0;
}

static const struct {
    const char *name;
    enum filter_kind kind;
    int min_args, max_args;
} filter_table[] = {
    {"safe", F_SAFE, 0, 0},         {"escape", F_ESCAPE, 0, 0}, {"e", F_ESCAPE, 0, 0},
    {"upper", F_UPPER, 0, 0},       {"lower", F_LOWER, 0, 0},   {"title", F_TITLE, 0, 0},
    {"capitalize", F_CAPITALIZE, 0, 0}, {"trim", F_TRIM, 0, 0}, {"length", F_LENGTH, 0, 0},
    {"count", F_LENGTH, 0, 0},      {"default", F_DEFAULT, 0, 2}, {"d", F_DEFAULT, 0, 2},
    {"join", F_JOIN, 0, 1},         {"items", F_ITEMS, 0, 0},   {"select", F_SELECT, 0, 1},
    {"reject", F_REJECT, 0, 1},     {"normalize_smtp_response", F_NORMALIZE, 0, 0},
};

/* The tests select and reject take by name. */
static const char *const test_names[] = {"none",    "defined", "undefined", "string",
                                         "number",  "mapping", "sequence",  "true",
                                         "false",   "boolean", "odd",       "even",
                                         "integer", "float",   NULL};

static int parse_filters(lexer *lx, expr *e)
{
    while (lx->kind == T_PIPE) {
        lex_next(lx);
        if (lx->kind != T_IDENT)
            return lex_error(lx, "a filter name");
        int found = -1;
        for (size_t i = 0; i < sizeof(filter_table) / sizeof(filter_table[0]); i++)
            if (strcmp(filter_table[i].name, lx->text) == 0)
                found = (int)i;
        if (found < 0)
            return syntax_error(lx->p, lx->base + lx->i, "unknown filter '%s'", lx->text);
        filter *nf = realloc(e->filters, (e->nfilters + 1) * sizeof(*nf));
        if (!nf)
            return KERR_NOMEM;
        e->filters = nf;
        filter *f = &e->filters[e->nfilters++];
        memset(f, 0, sizeof(*f));
        f->kind = filter_table[found].kind;
        lex_next(lx);
        if (lx->kind == T_LPAREN) {
            lex_next(lx);
            while (lx->kind != T_RPAREN) {
                if (f->nargs >= filter_table[found].max_args)
                    return syntax_error(lx->p, lx->base + lx->i,
                                        "too many arguments for filter '%s'",
                                        filter_table[found].name);
                int rc = parse_literal(lx, &f->args[f->nargs]);
                if (rc)
                    return rc;
                f->nargs++;
                if (lx->kind == T_COMMA)
                    lex_next(lx);
                else if (lx->kind != T_RPAREN)
                    return lex_error(lx, "',' or ')'");
            }
            lex_next(lx);
        }
        if ((f->kind == F_SELECT || f->kind == F_REJECT) && f->nargs) {
            bool known = false;
            for (int t = 0; test_names[t] && json_is_string(f->args[0]); t++)
                known |= strcmp(test_names[t], json_string_value(f->args[0])) == 0;
            if (!known)
                return syntax_error(lx->p, lx->base + lx->i, "unknown test for filter '%s'",
                                    filter_table[found].name);
        }
        if (f->nargs < filter_table[found].min_args)
            return syntax_error(lx->p, lx->base + lx->i, "missing argument for filter '%s'",
                                filter_table[found].name);
    }
    return 0;
}

static int push_seg(expr *e, const char *s)
{
    char **v = realloc(e->segs, (e->nsegs + 1) * sizeof(*v));
    if (!v)
        return KERR_NOMEM;
    e->segs = v;
    e->segs[e->nsegs] = strdup(s);
    if (!e->segs[e->nsegs])
        return KERR_NOMEM;
    e->nsegs++;
    return 0;
}

static int parse_primary(lexer *lx, expr **out)
{
    expr *e = NULL;
    int rc;
    if (lx->kind == T_LPAREN) {
        lex_next(lx);
        rc = parse_expr(lx, &e);
        if (rc)
            return rc;
        if (lx->kind != T_RPAREN) {
            expr_free(e);
            return lex_error(lx, "')'");
        }
        lex_next(lx);
    } else if (lx->kind == T_IDENT && !lex_is_word(lx, "true") && !lex_is_word(lx, "false") &&
               !lex_is_word(lx, "none") && !lex_is_word(lx, "True") &&
               !lex_is_word(lx, "False") && !lex_is_word(lx, "None")) {
        e = expr_new(E_PATH);
        if (!e || push_seg(e, lx->text) != 0) {
            expr_free(e);
            return KERR_NOMEM;
        }
        lex_next(lx);
        for (;;) {
            if (lx->kind == T_DOT) {
                lex_next(lx);
                char num[32];
                const char *seg = NULL;
                if (lx->kind == T_IDENT || lx->kind == T_STR) {
                    seg = lx->text;
                } else if (lx->kind == T_INT) {
                    snprintf(num, sizeof(num), "%lld", lx->inum);
                    seg = num;
                } else {
                    expr_free(e);
                    return lex_error(lx, "an attribute name");
                }
                if (push_seg(e, seg) != 0) {
                    expr_free(e);
                    return KERR_NOMEM;
                }
                lex_next(lx);
            } else if (lx->kind == T_LBRACK) {
                lex_next(lx);
                char num[32];
                const char *seg = NULL;
                if (lx->kind == T_STR) {
                    seg = lx->text;
                } else if (lx->kind == T_INT) {
                    snprintf(num, sizeof(num), "%lld", lx->inum);
                    seg = num;
                } else {
                    expr_free(e);
                    return lex_error(lx, "a string or integer index");
                }
                if (push_seg(e, seg) != 0) {
                    expr_free(e);
                    return KERR_NOMEM;
                }
                lex_next(lx);
                if (lx->kind != T_RBRACK) {
                    expr_free(e);
                    return lex_error(lx, "']'");
                }
                lex_next(lx);
            } else {
                break;
            }
        }
    } else {
        if (lx->kind != T_STR && lx->kind != T_INT && lx->kind != T_FLOAT &&
            lx->kind != T_IDENT)
            return lex_error(lx, "an expression");
        e = expr_new(E_LIT);
        if (!e)
            return KERR_NOMEM;
        rc = parse_literal(lx, &e->lit);
        if (rc) {
            expr_free(e);
            return rc;
        }
    }
    rc = parse_filters(lx, e);
    if (rc) {
        expr_free(e);
        return rc;
    }
    *out = e;
    return 0;
}

static int parse_cmp(lexer *lx, expr **out)
{
    expr *a;
    int rc = parse_primary(lx, &a);
    if (rc)
        return rc;
    if (lx->kind == T_EQ || lx->kind == T_NE) {
        expr *c = expr_new(lx->kind == T_EQ ? E_EQ : E_NE);
        if (!c) {
            expr_free(a);
            return KERR_NOMEM;
        }
        lex_next(lx);
        c->a = a;
        rc = parse_primary(lx, &c->b);
        if (rc) {
            expr_free(c);
            return rc;
        }
        a = c;
    }
    *out = a;
    return 0;
}

static int parse_not(lexer *lx, expr **out)
{
    if (lex_is_word(lx, "not")) {
        lex_next(lx);
        expr *n = expr_new(E_NOT);
        if (!n)
            return KERR_NOMEM;
        int rc = parse_not(lx, &n->a);
        if (rc) {
            expr_free(n);
            return rc;
        }
        *out = n;
        return 0;
    }
    return parse_cmp(lx, out);
}

static int parse_binary(lexer *lx, expr **out, int level)
{
    expr *a;
    int rc = level == 0 ? parse_binary(lx, &a, 1) : parse_not(lx, &a);
    if (rc)
        return rc;
    const char *word = level == 0 ? "or" : "and";
    while (lex_is_word(lx, word)) {
        lex_next(lx);
        expr *c = expr_new(level == 0 ? E_OR : E_AND);
        if (!c) {
            expr_free(a);
            return KERR_NOMEM;
        }
        c->a = a;
        rc = level == 0 ? parse_binary(lx, &c->b, 1) : parse_not(lx, &c->b);
        if (rc) {
            expr_free(c);
            return rc;
        }
        a = c;
    }
    *out = a;
    return 0;
}

static int parse_expr(lexer *lx, expr **out)
{
    return parse_binary(lx, out, 0);
}

/* Parses a whole expression from s[0..n) (the inside of a tag). */
static int compile_expr(parser *p, const char *s, size_t n, size_t base, expr **out)
{
    lexer lx = {.p = p, .s = s, .n = n, .base = base};
    lex_next(&lx);
    if (lx.kind == T_END) {
        free(lx.text);
        return syntax_error(p, base, "expected an expression");
    }
    int rc = parse_expr(&lx, out);
    if (rc == 0 && lx.kind != T_END) {
        rc = lex_error(&lx, "end of expression");
        expr_free(*out);
        *out = NULL;
    }
    free(lx.text);
    return rc;
}

/* ---- template parser --------------------------------------------------------------------------- */

static bool is_ws(char c)
{
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static int add_text(parser *p, nodelist *l, size_t off, size_t len)
{
    if (p->lstrip_next) {
        while (len && is_ws(p->t->src[off])) {
            off++;
            len--;
        }
        p->lstrip_next = false;
    }
    if (!len)
        return 0;
    node *n = calloc(1, sizeof(*n));
    if (!n)
        return KERR_NOMEM;
    n->kind = N_TEXT;
    n->off = off;
    n->len = len;
    return nodelist_push(l, n);
}

/* Removes trailing whitespace from the last text node of l ({{- / {%-). */
static void rstrip_last(parser *p, nodelist *l)
{
    if (!l->n || l->v[l->n - 1]->kind != N_TEXT)
        return;
    node *n = l->v[l->n - 1];
    while (n->len && is_ws(p->t->src[n->off + n->len - 1]))
        n->len--;
}

/* Finds the closing delimiter close (2 chars) from pos, skipping quoted
 * strings. Returns its offset or (size_t)-1. */
static size_t find_close(parser *p, size_t pos, const char *close)
{
    const char *s = p->t->src;
    char q = 0;
    for (size_t i = pos; i + 1 < p->t->len; i++) {
        if (q) {
            if (s[i] == '\\')
                i++;
            else if (s[i] == q)
                q = 0;
            continue;
        }
        if (s[i] == '"' || s[i] == '\'')
            q = s[i];
        else if (s[i] == close[0] && s[i + 1] == close[1])
            return i;
    }
    return (size_t)-1;
}

/* A statement tag's keyword and the rest of its inside. */
typedef struct stmt {
    size_t start;       /* offset of "{%" */
    size_t in, in_end;  /* inside, trimmed of - markers */
    char word[16];
    size_t rest;        /* offset after the keyword */
} stmt;

static int parse_list(parser *p, nodelist *out, const char *const *ends, stmt *end_found);

static int parse_stmt_body(parser *p, const stmt *st, nodelist *out);

/* Parses from p->pos until one of ends (NULL-terminated keywords) or the end
 * of input (when ends is NULL). */
static int parse_list(parser *p, nodelist *out, const char *const *ends, stmt *end_found)
{
    const char *s = p->t->src;
    size_t n = p->t->len;
    if (++p->depth > TMPL_MAX_DEPTH)
        return syntax_error(p, p->pos, "blocks nested too deeply");
    int rc = 0;
    while (p->pos < n) {
        size_t open = p->pos;
        while (open + 1 < n && !(s[open] == '{' && (s[open + 1] == '{' || s[open + 1] == '%' ||
                                                  s[open + 1] == '#')))
            open++;
        if (open + 1 >= n) {
            rc = add_text(p, out, p->pos, n - p->pos);
            p->pos = n;
            break;
        }
        if ((rc = add_text(p, out, p->pos, open - p->pos)) != 0)
            break;
        char kind = s[open + 1];
        if (kind == '#') {
            size_t close = open + 2;
            while (close + 1 < n && !(s[close] == '#' && s[close + 1] == '}'))
                close++;
            if (close + 1 >= n) {
                rc = syntax_error(p, open, "unexpected end of comment");
                break;
            }
            if (s[open + 2] == '-')
                rstrip_last(p, out);
            if (close > open + 2 && s[close - 1] == '-')
                p->lstrip_next = true;
            p->pos = close + 2;
            continue;
        }
        const char *closer = kind == '{' ? "}}" : "%}";
        size_t close = find_close(p, open + 2, closer);
        if (close == (size_t)-1) {
            rc = syntax_error(p, open, "unexpected end of input, expected end of %s",
                              kind == '{' ? "variable block" : "block");
            break;
        }
        size_t in = open + 2, in_end = close;
        if (in < in_end && s[in] == '-') {
            rstrip_last(p, out);
            in++;
        }
        bool rstrip = in_end > in && s[in_end - 1] == '-';
        if (rstrip)
            in_end--;
        p->pos = close + 2;
        if (kind == '{') {
            node *nd = calloc(1, sizeof(*nd));
            if (!nd) {
                rc = KERR_NOMEM;
                break;
            }
            nd->kind = N_OUT;
            rc = compile_expr(p, s + in, in_end - in, in, &nd->e);
            if (rc == 0)
                rc = nodelist_push(out, nd);
            if (rc) {
                node_free(nd);
                break;
            }
            p->lstrip_next = rstrip;
            continue;
        }
        /* {% statement %} */
        stmt st = {.start = open, .in = in, .in_end = in_end};
        size_t w = in;
        while (w < in_end && is_ws(s[w]))
            w++;
        size_t ws = w;
        while (w < in_end && (isalnum((unsigned char)s[w]) || s[w] == '_'))
            w++;
        if (w == ws || w - ws >= sizeof(st.word)) {
            rc = syntax_error(p, open, "expected a statement keyword");
            break;
        }
        memcpy(st.word, s + ws, w - ws);
        st.word[w - ws] = 0;
        st.rest = w;
        p->lstrip_next = rstrip;
        if (ends) {
            bool is_end = false;
            for (int i = 0; ends[i]; i++)
                if (strcmp(ends[i], st.word) == 0)
                    is_end = true;
            if (is_end) {
                *end_found = st;
                p->depth--;
                return 0;
            }
        }
        rc = parse_stmt_body(p, &st, out);
        if (rc)
            break;
    }
    if (rc == 0 && ends) {
        rc = syntax_error(p, n, "unexpected end of input, expected '%s'", ends[0]);
    }
    p->depth--;
    return rc;
}

static int parse_if_chain(parser *p, size_t cond_off, size_t cond_end, nodelist *out)
{
    node *nd = calloc(1, sizeof(*nd));
    if (!nd)
        return KERR_NOMEM;
    nd->kind = N_IF;
    int rc = compile_expr(p, p->t->src + cond_off, cond_end - cond_off, cond_off, &nd->e);
    if (rc) {
        node_free(nd);
        return rc;
    }
    static const char *const ends[] = {"endif", "elif", "else", NULL};
    stmt end;
    rc = parse_list(p, &nd->body, ends, &end);
    if (rc == 0 && strcmp(end.word, "elif") == 0) {
        rc = parse_if_chain(p, end.rest, end.in_end, &nd->alt);
    } else if (rc == 0 && strcmp(end.word, "else") == 0) {
        static const char *const ends2[] = {"endif", NULL};
        rc = parse_list(p, &nd->alt, ends2, &end);
    }
    if (rc == 0)
        rc = nodelist_push(out, nd);
    if (rc)
        node_free(nd);
    return rc;
}

static int parse_stmt_body(parser *p, const stmt *st, nodelist *out)
{
    const char *s = p->t->src;
    if (strcmp(st->word, "if") == 0)
        return parse_if_chain(p, st->rest, st->in_end, out);
    if (strcmp(st->word, "for") == 0) {
        lexer lx = {.p = p, .s = s + st->rest, .n = st->in_end - st->rest, .base = st->rest};
        lex_next(&lx);
        if (lx.kind != T_IDENT) {
            int rc = lex_error(&lx, "a loop variable");
            free(lx.text);
            return rc;
        }
        node *nd = calloc(1, sizeof(*nd));
        if (!nd) {
            free(lx.text);
            return KERR_NOMEM;
        }
        nd->kind = N_FOR;
        nd->var = lx.text;
        lx.text = NULL;
        lex_next(&lx);
        int rc = 0;
        if (lx.kind == T_COMMA) {
            lex_next(&lx);
            if (lx.kind != T_IDENT) {
                rc = lex_error(&lx, "a loop variable");
            } else {
                nd->var2 = lx.text;
                lx.text = NULL;
                lex_next(&lx);
            }
        }
        if (rc == 0 && !lex_is_word(&lx, "in"))
            rc = lex_error(&lx, "'in'");
        size_t iter_off = st->rest + lx.i;
        free(lx.text);
        if (rc == 0)
            rc = compile_expr(p, s + iter_off, st->in_end - iter_off, iter_off, &nd->e);
        static const char *const ends[] = {"endfor", "else", NULL};
        stmt end;
        if (rc == 0)
            rc = parse_list(p, &nd->body, ends, &end);
        if (rc == 0 && strcmp(end.word, "else") == 0) {
            static const char *const ends2[] = {"endfor", NULL};
            rc = parse_list(p, &nd->alt, ends2, &end);
        }
        if (rc == 0)
            rc = nodelist_push(out, nd);
        if (rc)
            node_free(nd);
        return rc;
    }
    if (strcmp(st->word, "raw") == 0) {
        /* everything up to {% endraw %} is text */
        size_t i = p->pos;
        for (;;) {
            size_t open = i;
            while (open + 1 < p->t->len && !(s[open] == '{' && s[open + 1] == '%'))
                open++;
            if (open + 1 >= p->t->len)
                return syntax_error(p, st->start, "unexpected end of input, expected 'endraw'");
            size_t close = find_close(p, open + 2, "%}");
            if (close == (size_t)-1)
                return syntax_error(p, open, "unexpected end of input, expected end of block");
            size_t w = open + 2;
            if (s[w] == '-')
                w++;
            while (w < close && is_ws(s[w]))
                w++;
            if (close - w >= 6 && strncmp(s + w, "endraw", 6) == 0) {
                int rc = add_text(p, out, p->pos, open - p->pos);
                if (rc)
                    return rc;
                p->pos = close + 2;
                return 0;
            }
            i = close + 2;
        }
    }
    return syntax_error(p, st->start, "unknown statement '%s'", st->word);
}

/* Handlebars: {{path}}, {{{path}}}, {{! comment}} and {{!-- comment --}}. */
static int parse_handlebars(parser *p)
{
    const char *s = p->t->src;
    size_t n = p->t->len;
    while (p->pos < n) {
        size_t open = p->pos;
        while (open + 1 < n && !(s[open] == '{' && s[open + 1] == '{'))
            open++;
        if (open + 1 >= n) {
            return add_text(p, &p->t->root, p->pos, n - p->pos);
        }
        int rc = add_text(p, &p->t->root, p->pos, open - p->pos);
        if (rc)
            return rc;
        bool triple = open + 2 < n && s[open + 2] == '{';
        size_t in = open + (triple ? 3 : 2);
        if (in < n && s[in] == '!') {
            bool dashes = in + 2 < n && s[in + 1] == '-' && s[in + 2] == '-';
            const char *end = dashes ? "--}}" : "}}";
            const char *hit = memmem(s + in, n - in, end, strlen(end));
            if (!hit)
                return syntax_error(p, open, "unexpected end of input, expected end of comment");
            p->pos = (size_t)(hit - s) + strlen(end);
            continue;
        }
        const char *closer = triple ? "}}}" : "}}";
        const char *hit = memmem(s + in, n - in, closer, strlen(closer));
        if (!hit)
            return syntax_error(p, open, "unexpected end of input, expected '%s'", closer);
        size_t close = (size_t)(hit - s);
        size_t a = in;
        while (a < close && is_ws(s[a]))
            a++;
        if (a < close && (s[a] == '#' || s[a] == '/' || s[a] == '>' || s[a] == '^'))
            return syntax_error(p, open, "handlebars block helpers and partials are not supported");
        node *nd = calloc(1, sizeof(*nd));
        if (!nd)
            return KERR_NOMEM;
        nd->kind = N_OUT;
        nd->raw = triple;
        rc = compile_expr(p, s + in, close - in, in, &nd->e);
        if (rc == 0 && nd->e->nfilters) {
            rc = syntax_error(p, open, "filters are not supported in handlebars templates");
        }
        if (rc == 0)
            rc = nodelist_push(&p->t->root, nd);
        if (rc) {
            node_free(nd);
            return rc;
        }
        p->pos = close + strlen(closer);
    }
    return 0;
}

int tmpl_compile(const char *src, size_t len, tmpl_dialect dialect, const char *name, bool html,
                 tmpl **out, char *err, size_t errlen)
{
    tmpl *t = calloc(1, sizeof(*t));
    if (!t)
        return KERR_NOMEM;
    t->src = malloc(len + 1);
    t->name = strdup(name ? name : "template");
    if (!t->src || !t->name) {
        tmpl_free(t);
        return KERR_NOMEM;
    }
    memcpy(t->src, src, len);
    t->src[len] = 0;
    t->len = len;
    t->html = html;
    parser p = {.t = t, .dialect = dialect, .err = err, .errlen = errlen};
    int rc;
    if (dialect == TMPL_STATIC) {
        rc = add_text(&p, &t->root, 0, len);
    } else {
        /* MiniJinja's default drops a single trailing newline of the source
         * (keep_trailing_newline = false). */
        if (dialect == TMPL_JINJA && t->len && t->src[t->len - 1] == '\n') {
            t->len--;
            if (t->len && t->src[t->len - 1] == '\r')
                t->len--;
        }
        rc = dialect == TMPL_JINJA ? parse_list(&p, &t->root, NULL, NULL) : parse_handlebars(&p);
    }
    if (rc) {
        if (rc == KERR_NOMEM)
            snprintf(err, errlen, "out of memory compiling %s", t->name);
        tmpl_free(t);
        return rc;
    }
    *out = t;
    return 0;
}

/* ---- rendering ----------------------------------------------------------------------------------- */

typedef struct outbuf {
    char *p;
    size_t n, cap;
    bool overflow;
} outbuf;

static void out_put(outbuf *o, const char *s, size_t n)
{
    if (o->overflow)
        return;
    if (o->n + n + 1 > TMPL_MAX_OUTPUT) {
        o->overflow = true;
        return;
    }
    if (o->n + n + 1 > o->cap) {
        size_t cap = o->cap ? o->cap : 256;
        while (cap < o->n + n + 1)
            cap *= 2;
        char *np = realloc(o->p, cap);
        if (!np) {
            o->overflow = true;
            return;
        }
        o->p = np;
        o->cap = cap;
    }
    memcpy(o->p + o->n, s, n);
    o->n += n;
    o->p[o->n] = 0;
}

static void out_str(outbuf *o, const char *s)
{
    out_put(o, s, strlen(s));
}

/* MiniJinja's HTML escaping. */
static void out_escaped(outbuf *o, const char *s, size_t n)
{
    size_t run = 0;
    for (size_t i = 0; i < n; i++) {
        const char *rep = NULL;
        switch (s[i]) {
        case '&':
            rep = "&amp;";
            break;
        case '<':
            rep = "&lt;";
            break;
        case '>':
            rep = "&gt;";
            break;
        case '"':
            rep = "&quot;";
            break;
        case '\'':
            rep = "&#x27;";
            break;
        case '/':
            rep = "&#x2f;";
            break;
        default:
            continue;
        }
        out_put(o, s + run, i - run);
        out_str(o, rep);
        run = i + 1;
    }
    out_put(o, s + run, n - run);
}

/* Shortest decimal that reads back as v; integral values keep ".0". */
static void fmt_real(double v, char *buf, size_t len)
{
    if (isnan(v)) {
        snprintf(buf, len, "NaN");
        return;
    }
    if (isinf(v)) {
        snprintf(buf, len, v < 0 ? "-inf" : "inf");
        return;
    }
    if (v == floor(v) && fabs(v) < 1e16) {
        snprintf(buf, len, "%.1f", v);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, len, "%.*g", prec, v);
        if (strtod(buf, NULL) == v)
            return;
    }
}

/* Text form of a value (what {{ v }} prints). Returns malloc'd text. */
static char *value_text(const json_t *v)
{
    char buf[64];
    if (!v)
        return strdup("");
    switch (json_typeof(v)) {
    case JSON_STRING:
        return strndup(json_string_value(v), json_string_length(v));
    case JSON_INTEGER:
        snprintf(buf, sizeof(buf), "%lld", (long long)json_integer_value(v));
        return strdup(buf);
    case JSON_REAL:
        fmt_real(json_real_value(v), buf, sizeof(buf));
        return strdup(buf);
    case JSON_TRUE:
        return strdup("true");
    case JSON_FALSE:
        return strdup("false");
    case JSON_NULL:
        return strdup("none");
    default: {
        char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
        return s ? s : strdup("");
    }
    }
}

static bool truthy(const json_t *v)
{
    if (!v)
        return false;
    switch (json_typeof(v)) {
    case JSON_STRING:
        return json_string_length(v) > 0;
    case JSON_INTEGER:
        return json_integer_value(v) != 0;
    case JSON_REAL:
        return json_real_value(v) != 0.0;
    case JSON_TRUE:
        return true;
    case JSON_ARRAY:
        return json_array_size(v) > 0;
    case JSON_OBJECT:
        return json_object_size(v) > 0;
    default:
        return false;
    }
}

static bool values_equal(const json_t *a, const json_t *b)
{
    if (!a || !b)
        return a == b;
    if (json_is_number(a) && json_is_number(b))
        return json_number_value(a) == json_number_value(b);
    return json_equal((json_t *)a, (json_t *)b);
}

typedef struct scope {
    const char *name;
    json_t *value;
    json_t *loop;
    const struct scope *up;
} scope;

typedef struct rctx {
    const tmpl *t;
    const json_t *vars;
    outbuf out;
} rctx;

/* A value with its "safe" mark (output of |safe or |escape). The reference
 * is owned. */
typedef struct val {
    json_t *v; /* NULL = undefined */
    bool safe;
} val;

static json_t *lookup_root(const rctx *c, const scope *sc, const char *name)
{
    for (const scope *s = sc; s; s = s->up) {
        if (strcmp(s->name, name) == 0)
            return s->value;
        if (s->loop && strcmp(name, "loop") == 0)
            return s->loop;
    }
    return json_object_get(c->vars, name);
}

static json_t *step_into(json_t *cur, const char *seg)
{
    if (!cur)
        return NULL;
    if (json_is_object(cur))
        return json_object_get(cur, seg);
    if (json_is_array(cur)) {
        char *end;
        long idx = strtol(seg, &end, 10);
        if (*end || end == seg)
            return NULL;
        if (idx < 0)
            idx += (long)json_array_size(cur);
        return idx < 0 ? NULL : json_array_get(cur, (size_t)idx);
    }
    return NULL;
}

static char *utf8_title(const char *s, bool all_words)
{
    char *r = strdup(s);
    if (!r)
        return NULL;
    bool start = true, first = true;
    for (char *p = r; *p; p++) {
        unsigned char ch = (unsigned char)*p;
        if (isalpha(ch)) {
            if (start && (all_words || first))
                *p = (char)toupper(ch);
            else
                *p = (char)tolower(ch);
            start = false;
            first = false;
        } else {
            start = !(ch & 0x80) && !isalnum(ch) && ch != '\'';
            if (ch & 0x80)
                first = false;
        }
    }
    return r;
}

/* The named test of select/reject (names checked at compile time). */
static bool run_test(const char *name, const json_t *v)
{
    if (strcmp(name, "none") == 0)
        return json_is_null(v);
    if (strcmp(name, "defined") == 0)
        return v != NULL;
    if (strcmp(name, "undefined") == 0)
        return v == NULL;
    if (strcmp(name, "string") == 0)
        return json_is_string(v);
    if (strcmp(name, "number") == 0)
        return json_is_number(v);
    if (strcmp(name, "integer") == 0)
        return json_is_integer(v);
    if (strcmp(name, "float") == 0)
        return json_is_real(v);
    if (strcmp(name, "mapping") == 0)
        return json_is_object(v);
    if (strcmp(name, "sequence") == 0)
        return json_is_array(v);
    if (strcmp(name, "true") == 0)
        return json_is_true(v);
    if (strcmp(name, "false") == 0)
        return json_is_false(v);
    if (strcmp(name, "boolean") == 0)
        return json_is_boolean(v);
    if (strcmp(name, "odd") == 0 || strcmp(name, "even") == 0)
        return json_is_integer(v) && (json_integer_value(v) % 2 != 0) == (name[0] == 'o');
    return false;
}

static int cmp_keys(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* [[key, value], ...] of an object, sorted by key (a Lua table has no
 * order of its own; sorting makes the output reproducible). */
static json_t *object_items(json_t *obj)
{
    size_t n = json_object_size(obj);
    const char **keys = calloc(n ? n : 1, sizeof(*keys));
    json_t *arr = json_array();
    if (!keys || !arr) {
        free(keys);
        json_decref(arr);
        return NULL;
    }
    size_t i = 0;
    const char *k;
    json_t *member;
    json_object_foreach(obj, k, member) keys[i++] = k;
    qsort(keys, n, sizeof(*keys), cmp_keys);
    for (i = 0; i < n; i++)
        json_array_append_new(arr, json_pack("[sO]", keys[i], json_object_get(obj, keys[i])));
    free(keys);
    return arr;
}

static val apply_filter(const filter *f, val in)
{
    val outv = {NULL, in.safe};
    json_t *v = in.v;
    switch (f->kind) {
    case F_SAFE:
        in.safe = true;
        return in;
    case F_ESCAPE: {
        char *txt = value_text(v);
        outbuf o = {0};
        if (txt)
            out_escaped(&o, txt, strlen(txt));
        free(txt);
        outv.v = json_string(o.p ? o.p : "");
        free(o.p);
        outv.safe = true;
        break;
    }
    case F_UPPER:
    case F_LOWER:
    case F_TITLE:
    case F_CAPITALIZE:
    case F_TRIM: {
        char *txt = value_text(v);
        if (!txt)
            break;
        if (f->kind == F_UPPER || f->kind == F_LOWER) {
            for (char *p = txt; *p; p++)
                *p = (char)(f->kind == F_UPPER ? toupper((unsigned char)*p)
                                               : tolower((unsigned char)*p));
        } else if (f->kind == F_TITLE || f->kind == F_CAPITALIZE) {
            char *t2 = utf8_title(txt, f->kind == F_TITLE);
            free(txt);
            txt = t2;
        } else {
            char *a = txt;
            while (*a && isspace((unsigned char)*a))
                a++;
            size_t l = strlen(a);
            while (l && isspace((unsigned char)a[l - 1]))
                l--;
            memmove(txt, a, l);
            txt[l] = 0;
        }
        outv.v = txt ? json_string(txt) : NULL;
        free(txt);
        break;
    }
    case F_LENGTH: {
        size_t n = 0;
        if (json_is_string(v)) {
            const unsigned char *s = (const unsigned char *)json_string_value(v);
            for (; *s; s++)
                if ((*s & 0xC0) != 0x80)
                    n++;
        } else if (json_is_array(v)) {
            n = json_array_size(v);
        } else if (json_is_object(v)) {
            n = json_object_size(v);
        }
        outv.v = json_integer((json_int_t)n);
        break;
    }
    case F_DEFAULT: {
        bool use_default = !v || (f->nargs > 1 && truthy(f->args[1]) && !truthy(v));
        if (!use_default)
            return in;
        outv.v = f->nargs ? json_incref(f->args[0]) : json_string("");
        break;
    }
    case F_JOIN: {
        if (!json_is_array(v)) {
            return in;
        }
        outbuf o = {0};
        out_put(&o, "", 0);
        const char *sep = f->nargs && json_is_string(f->args[0]) ? json_string_value(f->args[0])
                                                                   : "";
        size_t i;
        json_t *item;
        json_array_foreach(v, i, item)
        {
            if (i)
                out_str(&o, sep);
            char *txt = value_text(item);
            if (txt)
                out_str(&o, txt);
            free(txt);
        }
        outv.v = json_string(o.p ? o.p : "");
        free(o.p);
        break;
    }
    case F_ITEMS:
        if (!json_is_object(v))
            return in;
        outv.v = object_items(v);
        break;
    case F_SELECT:
    case F_REJECT: {
        if (!json_is_array(v))
            return in;
        outv.v = json_array();
        size_t i;
        json_t *item;
        json_array_foreach(v, i, item)
        {
            bool t = f->nargs ? run_test(json_string_value(f->args[0]), item) : truthy(item);
            if (t == (f->kind == F_SELECT))
                json_array_append(outv.v, item);
        }
        break;
    }
    case F_NORMALIZE: {
        char *txt = value_text(v);
        size_t n = 0;
        char *norm = txt ? smtpnorm_normalize(txt, strlen(txt), &n) : NULL;
        outv.v = norm ? json_stringn(norm, n) : NULL;
        free(norm);
        free(txt);
        break;
    }
    }
    json_decref(in.v);
    return outv;
}

static val eval(const rctx *c, const scope *sc, const expr *e)
{
    val r = {NULL, false};
    switch (e->kind) {
    case E_PATH: {
        json_t *cur = lookup_root(c, sc, e->segs[0]);
        for (size_t i = 1; i < e->nsegs && cur; i++)
            cur = step_into(cur, e->segs[i]);
        r.v = json_incref(cur);
        break;
    }
    case E_LIT:
        r.v = json_incref(e->lit);
        break;
    case E_NOT: {
        val a = eval(c, sc, e->a);
        r.v = json_boolean(!truthy(a.v));
        json_decref(a.v);
        return r;
    }
    case E_AND:
    case E_OR: {
        val a = eval(c, sc, e->a);
        bool ta = truthy(a.v);
        if ((e->kind == E_AND && !ta) || (e->kind == E_OR && ta))
            return a;
        json_decref(a.v);
        return eval(c, sc, e->b);
    }
    case E_EQ:
    case E_NE: {
        val a = eval(c, sc, e->a), b = eval(c, sc, e->b);
        bool eq = values_equal(a.v, b.v);
        json_decref(a.v);
        json_decref(b.v);
        r.v = json_boolean(e->kind == E_EQ ? eq : !eq);
        return r;
    }
    }
    for (size_t i = 0; i < e->nfilters; i++)
        r = apply_filter(&e->filters[i], r);
    return r;
}

static void render_list(rctx *c, const scope *sc, const nodelist *l);

static void render_node(rctx *c, const scope *sc, const node *n)
{
    switch (n->kind) {
    case N_TEXT:
        out_put(&c->out, c->t->src + n->off, n->len);
        return;
    case N_OUT: {
        val v = eval(c, sc, n->e);
        char *txt = c->t->json && !n->raw && !v.safe
                        ? (v.v ? json_dumps(v.v, JSON_COMPACT | JSON_ENCODE_ANY | JSON_SORT_KEYS)
                               : strdup(""))
                        : value_text(v.v);
        if (txt && c->t->json) {
            out_str(&c->out, txt);
        } else if (txt) {
            if (c->t->html && !n->raw && !v.safe)
                out_escaped(&c->out, txt, strlen(txt));
            else
                out_str(&c->out, txt);
        } else {
            c->out.overflow = true;
        }
        free(txt);
        json_decref(v.v);
        return;
    }
    case N_IF: {
        val v = eval(c, sc, n->e);
        bool t = truthy(v.v);
        json_decref(v.v);
        render_list(c, sc, t ? &n->body : &n->alt);
        return;
    }
    case N_FOR: {
        val v = eval(c, sc, n->e);
        json_t *keys = NULL;
        json_t *seq = v.v;
        if (json_is_object(seq)) {
            /* Jinja iterates the keys of a map */
            keys = json_array();
            const char *k;
            json_t *unused;
            json_object_foreach(seq, k, unused) json_array_append_new(keys, json_string(k));
            seq = keys;
        }
        size_t len = json_is_array(seq) ? json_array_size(seq) : 0;
        if (!len) {
            render_list(c, sc, &n->alt);
        }
        for (size_t i = 0; i < len && !c->out.overflow; i++) {
            json_t *loop = json_pack("{s:I,s:I,s:b,s:b,s:I}", "index", (json_int_t)(i + 1),
                                     "index0", (json_int_t)i, "first", i == 0, "last",
                                     i + 1 == len, "length", (json_int_t)len);
            json_t *item = json_array_get(seq, i);
            scope inner = {.name = n->var, .value = item, .loop = loop, .up = sc};
            scope second = {.name = n->var2, .up = &inner};
            if (n->var2) {
                /* for k, v in pairs: unpack each item */
                inner.value = json_array_get(item, 0);
                second.value = json_array_get(item, 1);
            }
            render_list(c, n->var2 ? &second : &inner, &n->body);
            json_decref(loop);
        }
        json_decref(keys);
        json_decref(v.v);
        return;
    }
    }
}

static void render_list(rctx *c, const scope *sc, const nodelist *l)
{
    for (size_t i = 0; i < l->n && !c->out.overflow; i++)
        render_node(c, sc, l->v[i]);
}

char *tmpl_render(const tmpl *t, const json_t *vars, size_t *len, char *err, size_t errlen)
{
    rctx c = {.t = t, .vars = vars};
    out_put(&c.out, "", 0);
    render_list(&c, NULL, &t->root);
    if (c.out.overflow) {
        snprintf(err, errlen, "rendering %s: output larger than %u bytes", t->name,
                 TMPL_MAX_OUTPUT);
        free(c.out.p);
        return NULL;
    }
    *len = c.out.n;
    return c.out.p;
}
