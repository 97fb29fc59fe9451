/* kcli: the kumod administration client, command-compatible with
 * KumoMTA's kcli for the subcommands kumod serves (bounce, bounce-list,
 * bounce-cancel, suspend, suspend-list, suspend-cancel, suspend-ready-q,
 * suspend-ready-q-list, suspend-ready-q-cancel, rebind, inspect-message,
 * inspect-sched-q, inspect-ready-q, queue-summary, provider-summary,
 * abort-ready-q-conn, spool-compact, set-log-filter, top, trace-smtp-server,
 * trace-smtp-client, resolve-egress-path).
 *
 * It talks to the HTTP listener (--endpoint, KUMO_KCLI_ENDPOINT, default
 * http://127.0.0.1:8000) with libcurl's easy interface, one blocking
 * request at a time with a 60 s timeout: a command-line tool has nothing
 * else to do meanwhile. Output is a table or text for people, --json for
 * scripts. Every failure (daemon unreachable, non-2xx answer, unparsable
 * answer) prints one line naming the cause on stderr and exits 1; usage
 * errors exit 2. */
#include <curl/curl.h>
#include <getopt.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include "cliopt.h"
#include "explain.h"
#include "logs.h"
#include "trace.h"

#define DEFAULT_ENDPOINT "http://127.0.0.1:8000"
#define TIMEOUT_S 60L

static const char *endpoint = DEFAULT_ENDPOINT;

/* ---- small helpers ------------------------------------------------------------------ */

static void die(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void die(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fputs("kcli: ", stderr);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

typedef struct strbuf {
    char *p;
    size_t n, cap;
} strbuf;

static void sb_put(strbuf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap * 2 : 4096;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *np = realloc(b->p, cap);
        if (!np)
            die("out of memory");
        b->p = np;
        b->cap = cap;
    }
    memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

/* ---- HTTP --------------------------------------------------------------------------- */

typedef struct response {
    long status;
    strbuf body;
} response;

static size_t on_data(char *ptr, size_t size, size_t nmemb, void *ud)
{
    sb_put(ud, ptr, size * nmemb);
    return size * nmemb;
}

static const char *status_reason(long s)
{
    switch (s) {
    case 400:
        return "Bad Request";
    case 401:
        return "Unauthorized";
    case 403:
        return "Forbidden";
    case 404:
        return "Not Found";
    case 405:
        return "Method Not Allowed";
    case 413:
        return "Payload Too Large";
    case 422:
        return "Unprocessable Entity";
    case 500:
        return "Internal Server Error";
    case 503:
        return "Service Unavailable";
    default:
        return "";
    }
}

/* Performs method on path (with an already encoded query, may be NULL) and
 * body (JSON, may be NULL). Exits on transport errors and non-2xx. */
static response request(const char *method, const char *path, const char *query,
                        const json_t *body)
{
    CURL *c = curl_easy_init();
    if (!c)
        die("cannot initialise libcurl");
    strbuf url = {0};
    size_t el = strlen(endpoint);
    while (el && endpoint[el - 1] == '/')
        el--;
    sb_put(&url, endpoint, el);
    sb_put(&url, path, strlen(path));
    if (query && *query) {
        sb_put(&url, "?", 1);
        sb_put(&url, query, strlen(query));
    }
    response r = {0};
    char errbuf[CURL_ERROR_SIZE] = "";
    struct curl_slist *hdrs = NULL;
    char *payload = NULL;
    curl_easy_setopt(c, CURLOPT_URL, url.p);
    curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(c, CURLOPT_TIMEOUT, TIMEOUT_S);
    curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(c, CURLOPT_ERRORBUFFER, errbuf);
    curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(c, CURLOPT_WRITEDATA, &r.body);
    curl_easy_setopt(c, CURLOPT_USERAGENT, "kcli (kumod)");
    if (body) {
        payload = json_dumps(body, JSON_COMPACT);
        if (!payload)
            die("out of memory");
        hdrs = curl_slist_append(hdrs, "Content-Type: application/json");
        curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, payload);
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(payload));
    } else if (strcmp(method, "GET") != 0) {
        curl_easy_setopt(c, CURLOPT_POSTFIELDS, "");
        curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, 0L);
    }
    CURLcode rc = curl_easy_perform(c);
    if (rc != CURLE_OK)
        die("cannot reach kumod at %s: %s", endpoint, errbuf[0] ? errbuf : curl_easy_strerror(rc));
    curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r.status);
    curl_slist_free_all(hdrs);
    curl_easy_cleanup(c);
    free(payload);
    free(url.p);
    if (!r.body.p)
        sb_put(&r.body, "", 0);
    if (r.status < 200 || r.status >= 300)
        die("request status %ld: %s. Response body: %s", r.status, status_reason(r.status),
            r.body.p);
    return r;
}

static json_t *request_json(const char *method, const char *path, const char *query,
                            const json_t *body)
{
    response r = request(method, path, query, body);
    json_error_t jerr;
    json_t *j = json_loadb(r.body.p, r.body.n, JSON_DECODE_ANY, &jerr);
    if (!j)
        die("request status %ld: parsing response as json: %s: %s", r.status, jerr.text,
            r.body.p);
    free(r.body.p);
    return j;
}

json_t *kcli_request_json(const char *method, const char *path, const char *query,
                          const json_t *body)
{
    return request_json(method, path, query, body);
}

/* Appends name=value (URL-encoded) to a query string. */
static void query_add(strbuf *q, const char *name, const char *value)
{
    char *ev = curl_easy_escape(NULL, value, 0);
    if (!ev)
        die("out of memory");
    if (q->n)
        sb_put(q, "&", 1);
    sb_put(q, name, strlen(name));
    sb_put(q, "=", 1);
    sb_put(q, ev, strlen(ev));
    curl_free(ev);
}

static void print_json(const json_t *j)
{
    char *s = json_dumps(j, JSON_INDENT(2) | JSON_ENCODE_ANY);
    if (!s)
        die("out of memory");
    puts(s);
    free(s);
}

/* ---- tables ------------------------------------------------------------------------- */

typedef struct table {
    size_t ncols;
    const char **names;
    const bool *right;
    char **cells; /* rows * ncols, malloc'd strings */
    size_t nrows;
} table;

static size_t display_width(const char *s)
{
    size_t w = 0;
    for (const unsigned char *p = (const unsigned char *)s; *p; p++)
        if ((*p & 0xC0) != 0x80)
            w++;
    return w;
}

static void table_add(table *t, ...)
{
    t->cells = realloc(t->cells, (t->nrows + 1) * t->ncols * sizeof(char *));
    if (!t->cells)
        die("out of memory");
    va_list ap;
    va_start(ap, t);
    for (size_t i = 0; i < t->ncols; i++) {
        const char *s = va_arg(ap, const char *);
        t->cells[t->nrows * t->ncols + i] = strdup(s ? s : "");
    }
    va_end(ap);
    t->nrows++;
}

static void table_print(table *t)
{
    size_t *w = calloc(t->ncols, sizeof(size_t));
    if (!w)
        die("out of memory");
    for (size_t c = 0; c < t->ncols; c++)
        w[c] = display_width(t->names[c]);
    for (size_t r = 0; r < t->nrows; r++)
        for (size_t c = 0; c < t->ncols; c++) {
            size_t dw = display_width(t->cells[r * t->ncols + c]);
            if (dw > w[c])
                w[c] = dw;
        }
    for (size_t r = 0; r <= t->nrows; r++) {
        strbuf line = {0};
        for (size_t c = 0; c < t->ncols; c++) {
            const char *s = r == 0 ? t->names[c] : t->cells[(r - 1) * t->ncols + c];
            size_t pad = w[c] - display_width(s);
            bool last = c + 1 == t->ncols;
            if (c)
                sb_put(&line, "  ", 2);
            if (t->right[c])
                for (size_t k = 0; k < pad; k++)
                    sb_put(&line, " ", 1);
            sb_put(&line, s, strlen(s));
            if (!t->right[c] && !last)
                for (size_t k = 0; k < pad; k++)
                    sb_put(&line, " ", 1);
        }
        /* no trailing blanks */
        while (line.n && line.p[line.n - 1] == ' ')
            line.p[--line.n] = 0;
        puts(line.p ? line.p : "");
        free(line.p);
    }
    for (size_t i = 0; i < t->nrows * t->ncols; i++)
        free(t->cells[i]);
    free(t->cells);
    free(w);
}

/* 12345 -> "12,345", as KumoMTA's kcli formats counts. */
static void fmt_count(long long v, char *out, size_t len)
{
    char digits[32];
    int n = snprintf(digits, sizeof(digits), "%lld", v < 0 ? -v : v);
    size_t o = 0;
    if (v < 0 && o + 1 < len)
        out[o++] = '-';
    for (int i = 0; i < n && o + 2 < len; i++) {
        if (i && (n - i) % 3 == 0)
            out[o++] = ',';
        out[o++] = digits[i];
    }
    out[o] = 0;
}

static const char *jstr(const json_t *o, const char *k)
{
    return json_string_value(json_object_get(o, k));
}

static void criteria_text(const json_t *e, bool with_routing, char *out, size_t len)
{
    static const char *const keys[] = {"campaign", "tenant", "domain", "routing_domain"};
    size_t o = 0;
    out[0] = 0;
    for (int i = 0; i < 4; i++) {
        if (i == 3 && !with_routing)
            break;
        const char *v = jstr(e, keys[i]);
        if (v)
            o += (size_t)snprintf(out + o, o < len ? len - o : 0, "%s%s=%s", o ? ", " : "",
                                  keys[i], v);
    }
    const json_t *qn = json_object_get(e, "queue_names");
    size_t i;
    json_t *q;
    json_array_foreach(qn, i, q)
    {
        if (o < len)
            o += (size_t)snprintf(out + o, len - o, "%squeue=%s", o ? ", " : "",
                                  json_string_value(q) ? json_string_value(q) : "");
    }
    if (!out[0])
        snprintf(out, len, "everything");
}

/* ---- option parsing ------------------------------------------------------------------- */

typedef struct cmd cmd;
struct cmd {
    const char *name;
    const char *summary;
    const char *usage; /* options text */
    int (*run)(const cmd *c, int argc, char **argv);
};

static bool wants_help(int argc, char **argv)
{
    for (int i = 1; i < argc; i++)
        if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0)
            return true;
    return false;
}

static void print_cmd_help(const cmd *c)
{
    printf("%s\n\nUsage: kcli %s %s\n", c->summary, c->name, c->usage);
}

/* Selection options shared by bounce, suspend and rebind. */
typedef struct selection {
    const char *domain, *routing_domain, *campaign, *tenant, *reason, *duration;
    json_t *queues;
    bool everything;
} selection;

static void selection_to_json(const selection *s, json_t *req, bool with_routing)
{
    if (s->domain)
        json_object_set_new(req, "domain", json_string(s->domain));
    if (with_routing && s->routing_domain)
        json_object_set_new(req, "routing_domain", json_string(s->routing_domain));
    if (s->campaign)
        json_object_set_new(req, "campaign", json_string(s->campaign));
    if (s->tenant)
        json_object_set_new(req, "tenant", json_string(s->tenant));
    if (json_array_size(s->queues))
        json_object_set(req, "queue_names", s->queues);
    if (s->reason)
        json_object_set_new(req, "reason", json_string(s->reason));
    if (s->duration)
        json_object_set_new(req, "duration", json_string(s->duration));
}

enum {
    O_DOMAIN = 1000, O_ROUTING, O_CAMPAIGN, O_TENANT, O_QUEUE, O_REASON, O_EVERYTHING,
    O_SUPPRESS, O_DURATION, O_JSON, O_ID, O_NAME, O_ALWAYS_FLUSH, O_TRIGGER, O_DATA, O_SET,
    O_WANT_BODY, O_LIMIT, O_NO_LIMIT, O_BY_VOLUME, O_SCHED_Q, O_BY_POOL, O_SHOW_DOMAINS
};

/* ---- commands ------------------------------------------------------------------------- */

static int parse_selection(const cmd *c, int argc, char **argv, selection *s, bool *json,
                           bool *suppress, bool allow_routing, bool allow_queue)
{
    static const struct option opts[] = {
        {"domain", required_argument, NULL, O_DOMAIN},
        {"routing-domain", required_argument, NULL, O_ROUTING},
        {"routing_domain", required_argument, NULL, O_ROUTING},
        {"campaign", required_argument, NULL, O_CAMPAIGN},
        {"tenant", required_argument, NULL, O_TENANT},
        {"queue", required_argument, NULL, O_QUEUE},
        {"reason", required_argument, NULL, O_REASON},
        {"everything", no_argument, NULL, O_EVERYTHING},
        {"suppress-logging", no_argument, NULL, O_SUPPRESS},
        {"duration", required_argument, NULL, O_DURATION},
        {"json", no_argument, NULL, O_JSON},
        {NULL, 0, NULL, 0},
    };
    s->queues = json_array();
    optind = 0;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
        switch (ch) {
        case O_DOMAIN:
            s->domain = optarg;
            break;
        case O_ROUTING:
            if (!allow_routing)
                kcli_usage_error(c->name, "unexpected option --routing-domain");
            s->routing_domain = optarg;
            break;
        case O_CAMPAIGN:
            s->campaign = optarg;
            break;
        case O_TENANT:
            s->tenant = optarg;
            break;
        case O_QUEUE:
            if (!allow_queue)
                kcli_usage_error(c->name, "unexpected option --queue");
            json_array_append_new(s->queues, json_string(optarg));
            break;
        case O_REASON:
            s->reason = optarg;
            break;
        case O_EVERYTHING:
            s->everything = true;
            break;
        case O_SUPPRESS:
            if (!suppress)
                kcli_usage_error(c->name, "unexpected option --suppress-logging");
            *suppress = true;
            break;
        case O_DURATION:
            s->duration = optarg;
            break;
        case O_JSON:
            *json = true;
            break;
        default:
            kcli_bad_option(c->name, ch, argv);
        }
    }
    kcli_no_more_args(c->name, argc, argv);
    if (!s->reason)
        kcli_usage_error(c->name, "--reason is required");
    bool any = s->domain || s->campaign || s->tenant || s->routing_domain ||
               json_array_size(s->queues);
    if (!any && !s->everything)
        die("No domain%s, campaign or tenant was specified. Use --everything if you intend to "
            "apply to all queues",
            allow_routing ? ", routing_domain" : "");
    if (any && s->everything)
        kcli_usage_error(c->name, "--everything cannot be combined with other selections");
    if (json_array_size(s->queues) && (s->domain || s->campaign || s->tenant || s->routing_domain))
        kcli_usage_error(c->name, "--queue cannot be combined with --domain, --campaign or --tenant");
    return 0;
}

static int run_bounce(const cmd *c, int argc, char **argv)
{
    selection s = {0};
    bool json = false, suppress = false;
    parse_selection(c, argc, argv, &s, &json, &suppress, true, true);
    json_t *req = json_object();
    selection_to_json(&s, req, true);
    if (suppress)
        json_object_set_new(req, "suppress_logging", json_true());
    json_t *res = request_json("POST", "/api/admin/bounce/v1", NULL, req);
    if (json) {
        print_json(res);
    } else {
        fprintf(stderr, "NOTE: the bounce is running async. Use the bounce-list command to "
                        "review ongoing status!\n");
        printf("%s\n", jstr(res, "id") ? jstr(res, "id") : "");
    }
    json_decref(req);
    json_decref(res);
    json_decref(s.queues);
    return 0;
}

static int run_suspend(const cmd *c, int argc, char **argv)
{
    selection s = {0};
    bool json = false;
    parse_selection(c, argc, argv, &s, &json, NULL, false, true);
    json_t *req = json_object();
    selection_to_json(&s, req, false);
    json_t *res = request_json("POST", "/api/admin/suspend/v1", NULL, req);
    if (json)
        print_json(res);
    else
        printf("%s\n", jstr(res, "id") ? jstr(res, "id") : "");
    json_decref(req);
    json_decref(res);
    json_decref(s.queues);
    return 0;
}

static int run_rebind(const cmd *c, int argc, char **argv)
{
    static const struct option opts[] = {
        {"domain", required_argument, NULL, O_DOMAIN},
        {"routing-domain", required_argument, NULL, O_ROUTING},
        {"routing_domain", required_argument, NULL, O_ROUTING},
        {"campaign", required_argument, NULL, O_CAMPAIGN},
        {"tenant", required_argument, NULL, O_TENANT},
        {"reason", required_argument, NULL, O_REASON},
        {"everything", no_argument, NULL, O_EVERYTHING},
        {"suppress-logging", no_argument, NULL, O_SUPPRESS},
        {"always-flush", no_argument, NULL, O_ALWAYS_FLUSH},
        {"trigger-rebind-event", no_argument, NULL, O_TRIGGER},
        {"data", required_argument, NULL, O_DATA},
        {"set", required_argument, NULL, O_SET},
        {"json", no_argument, NULL, O_JSON},
        {NULL, 0, NULL, 0},
    };
    selection s = {0};
    bool suppress = false, flush = false, trigger = false, json = false;
    json_t *data = json_object();
    optind = 0;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
        switch (ch) {
        case O_DOMAIN:
            s.domain = optarg;
            break;
        case O_ROUTING:
            s.routing_domain = optarg;
            break;
        case O_CAMPAIGN:
            s.campaign = optarg;
            break;
        case O_TENANT:
            s.tenant = optarg;
            break;
        case O_REASON:
            s.reason = optarg;
            break;
        case O_EVERYTHING:
            s.everything = true;
            break;
        case O_SUPPRESS:
            suppress = true;
            break;
        case O_ALWAYS_FLUSH:
            flush = true;
            break;
        case O_TRIGGER:
            trigger = true;
            break;
        case O_JSON:
            json = true;
            break;
        case O_DATA: {
            json_error_t jerr;
            json_t *d = json_loads(optarg, 0, &jerr);
            if (!json_is_object(d))
                kcli_usage_error(c->name, "--data: expected a JSON object of strings: %s",
                            d ? "not an object" : jerr.text);
            const char *k;
            json_t *v;
            json_object_foreach(d, k, v)
            {
                if (!json_is_string(v))
                    kcli_usage_error(c->name, "--data: the value of %s must be a string", k);
            }
            json_object_update(data, d);
            json_decref(d);
            break;
        }
        case O_SET: {
            const char *eq = strchr(optarg, '=');
            if (!eq || eq == optarg || !eq[1])
                kcli_usage_error(c->name, "--set: expected name=value, but got %s", optarg);
            char *k = strndup(optarg, (size_t)(eq - optarg));
            json_object_set_new(data, k, json_string(eq + 1));
            free(k);
            break;
        }
        default:
            kcli_bad_option(c->name, ch, argv);
        }
    }
    kcli_no_more_args(c->name, argc, argv);
    if (!s.reason)
        kcli_usage_error(c->name, "--reason is required");
    if (!s.domain && !s.campaign && !s.tenant && !s.routing_domain && !s.everything)
        die("No domain, routing_domain, campaign or tenant was specified. Use --everything if "
            "you intend to apply to all queues");
    json_t *req = json_object();
    selection_to_json(&s, req, true);
    json_object_set_new(req, "data", data);
    json_object_set_new(req, "always_flush", json_boolean(flush));
    json_object_set_new(req, "suppress_logging", json_boolean(suppress));
    json_object_set_new(req, "trigger_rebind_event", json_boolean(trigger));
    json_t *res = request_json("POST", "/api/admin/rebind/v1", NULL, req);
    if (json)
        print_json(res);
    else
        fprintf(stderr, "NOTE: Rebind always runs asynchronously\n");
    json_decref(req);
    json_decref(res);
    return 0;
}

/* Parses only --json (and, when id is given, --id ID). */
static void parse_simple(const cmd *c, int argc, char **argv, bool *json, const char **id,
                         const char **positional)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, O_JSON},
        {"id", required_argument, NULL, O_ID},
        {NULL, 0, NULL, 0},
    };
    optind = 0;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
        if (ch == O_JSON && json)
            *json = true;
        else if (ch == O_ID && id)
            *id = optarg;
        else
            kcli_bad_option(c->name, ch, argv);
    }
    if (positional && optind < argc)
        *positional = argv[optind++];
    kcli_no_more_args(c->name, argc, argv);
    if (id && !*id)
        kcli_usage_error(c->name, "--id is required");
    if (positional && !*positional)
        kcli_usage_error(c->name, "a %s is required", strstr(c->usage, "FILTER") ? "FILTER" : "value");
}

static int run_cancel(const cmd *c, const char *path, int argc, char **argv)
{
    const char *id = NULL;
    parse_simple(c, argc, argv, NULL, &id, NULL);
    json_t *req = json_pack("{s:s}", "id", id);
    response r = request("DELETE", path, NULL, req);
    puts(r.body.n ? r.body.p : "OK");
    free(r.body.p);
    json_decref(req);
    return 0;
}

static int run_bounce_cancel(const cmd *c, int argc, char **argv)
{
    return run_cancel(c, "/api/admin/bounce/v1", argc, argv);
}

static int run_suspend_cancel(const cmd *c, int argc, char **argv)
{
    return run_cancel(c, "/api/admin/suspend/v1", argc, argv);
}

static int run_suspend_ready_q_cancel(const cmd *c, int argc, char **argv)
{
    return run_cancel(c, "/api/admin/suspend-ready-q/v1", argc, argv);
}

/* The list subcommands: GET path. With --json the answer is printed as is
 * and NULL returned; else the caller gets the array to show as a table. */
static json_t *get_list(const cmd *c, int argc, char **argv, const char *path)
{
    bool json = false;
    parse_simple(c, argc, argv, &json, NULL, NULL);
    json_t *res = request_json("GET", path, NULL, NULL);
    if (!json)
        return res;
    print_json(res);
    json_decref(res);
    return NULL;
}

static int run_bounce_list(const cmd *c, int argc, char **argv)
{
    json_t *res = get_list(c, argc, argv, "/api/admin/bounce/v1");
    if (!res)
        return 0;
    static const char *names[] = {"ID", "REASON", "REMAIN", "BOUNCED", "CRITERIA"};
    static const bool right[] = {false, false, false, true, false};
    table t = {.ncols = 5, .names = names, .right = right};
    size_t i;
    json_t *e;
    json_array_foreach(res, i, e)
    {
        char crit[1024], count[32];
        criteria_text(e, true, crit, sizeof(crit));
        fmt_count(json_integer_value(json_object_get(e, "total_bounced")), count, sizeof(count));
        table_add(&t, jstr(e, "id"), jstr(e, "reason"), jstr(e, "duration"), count, crit);
    }
    table_print(&t);
    json_decref(res);
    return 0;
}

static int run_logs(const cmd *c, int argc, char **argv)
{
    return kcli_logs(c->name, argc, argv);
}

/* A TOML value for --config: strings quoted, numbers and booleans as
 * they are; null has no TOML form and is left out by the caller. */
static void print_toml_value(const json_t *v)
{
    char *j = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    printf("%s", j ? j : "");
    free(j);
}

static void print_path_config_toml(const json_t *pc)
{
    const char *k;
    json_t *v;
    json_object_foreach((json_t *)pc, k, v)
    {
        if (json_is_null(v))
            continue;
        printf("%s = ", k);
        print_toml_value(v);
        printf("\n");
    }
}

static const char *ceiling_term(const json_t *src, const char *primary, char *buf, size_t len)
{
    const char *kind = jstr(src, "kind");
    const char *name = jstr(src, "name");
    if (kind && strcmp(kind, "primary") == 0)
        return primary;
    snprintf(buf, len, "%s%s%s", kind ? kind : "?", name ? " " : "", name ? name : "");
    return buf;
}

static void print_constraints(const json_t *cons)
{
    static const struct {
        const char *key, *label, *primary;
    } axes[] = {
        {"max_concurrent_dispatchers", "concurrency", "connection_limit"},
        {"max_message_rate", "message rate", "max_message_rate"},
        {"max_connection_rate", "connection rate", "max_connection_rate"},
        {"max_source_selection_rate", "source selection rate", "source_selection_rate"},
    };
    for (size_t i = 0; i < sizeof(axes) / sizeof(axes[0]); i++) {
        const json_t *c = json_object_get(cons, axes[i].key);
        char buf[200];
        if (!json_is_object(c)) {
            printf("%-22s unlimited\n", axes[i].label);
            continue;
        }
        printf("%-22s %s (%s)\n", axes[i].label, jstr(c, "display") ? jstr(c, "display") : "",
               ceiling_term(json_object_get(c, "source"), axes[i].primary, buf, sizeof(buf)));
    }
}

static int run_resolve_egress_path(const cmd *c, int argc, char **argv)
{
    enum { O_CONFIG = 500, O_CONSTRAINTS, O_RJSON, O_RTENANT, O_RCAMPAIGN, O_RROUTING };
    static const struct option opts[] = {
        {"config", no_argument, NULL, O_CONFIG},
        {"constraints", no_argument, NULL, O_CONSTRAINTS},
        {"json", no_argument, NULL, O_RJSON},
        {"tenant", required_argument, NULL, O_RTENANT},
        {"campaign", required_argument, NULL, O_RCAMPAIGN},
        {"routing-domain", required_argument, NULL, O_RROUTING},
        {NULL, 0, NULL, 0},
    };
    int mode = 0, nmodes = 0;
    const char *tenant = NULL, *campaign = NULL, *routing = NULL;
    optind = 0;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
        if (ch == O_CONFIG || ch == O_CONSTRAINTS || ch == O_RJSON) {
            mode = ch;
            nmodes++;
        } else if (ch == O_RTENANT) {
            tenant = optarg;
        } else if (ch == O_RCAMPAIGN) {
            campaign = optarg;
        } else if (ch == O_RROUTING) {
            routing = optarg;
        } else {
            kcli_bad_option(c->name, ch, argv);
        }
    }
    if (nmodes > 1)
        kcli_usage_error(c->name, "--config, --constraints and --json exclude each other");
    if (optind >= argc)
        kcli_usage_error(c->name, "a DOMAIN is required");
    const char *domain = argv[optind++];
    const char *source = optind < argc ? argv[optind++] : NULL;
    kcli_no_more_args(c->name, argc, argv);
    strbuf q = {0};
    query_add(&q, "domain", domain);
    if (source)
        query_add(&q, "source", source);
    if (tenant)
        query_add(&q, "tenant", tenant);
    if (campaign)
        query_add(&q, "campaign", campaign);
    if (routing)
        query_add(&q, "routing_domain", routing);
    json_t *res = request_json("GET", "/api/admin/resolve-egress-path/v1", q.p, NULL);
    free(q.p);
    if (mode == O_RJSON) {
        print_json(res);
    } else if (mode == O_CONFIG) {
        print_path_config_toml(json_object_get(res, "path_config"));
    } else if (mode == O_CONSTRAINTS) {
        print_constraints(json_object_get(res, "constraints"));
    } else {
        printf("domain: %s\nsource: %s\nqueue:  %s\n\n", jstr(res, "domain") ?: "",
               jstr(res, "source") ?: "", jstr(res, "queue_name") ?: "");
        const json_t *mx = json_object_get(res, "mx");
        if (json_is_object(mx)) {
            printf("mx: %s (site %s)%s%s\n", jstr(mx, "domain_name") ?: "",
                   jstr(mx, "site_name") ?: "",
                   json_is_true(json_object_get(mx, "is_mx")) ? "" : " (no MX: the domain itself)",
                   json_is_true(json_object_get(mx, "is_domain_literal")) ? " (literal)" : "");
            const char *pref;
            json_t *hosts;
            json_object_foreach(json_object_get(mx, "by_preference"), pref, hosts)
            {
                printf("  %5s:", pref);
                size_t i;
                json_t *h;
                json_array_foreach(hosts, i, h) printf(" %s", json_string_value(h) ?: "");
                printf("\n");
            }
        } else {
            printf("mx: <not resolved>\n");
        }
        const json_t *srcs = json_object_get(res, "sources");
        printf("\negress pool: %s\n", jstr(res, "egress_pool") ?: "unspecified");
        size_t i;
        json_t *e;
        json_array_foreach(srcs, i, e)
            printf("  source %s weight %lld\n", jstr(e, "name") ?: "",
                   (long long)json_integer_value(json_object_get(e, "weight")));
        printf("\n--- egress path config ---\n\n");
        print_path_config_toml(json_object_get(res, "path_config"));
        printf("\n--- effective ceilings ---\n\n");
        print_constraints(json_object_get(res, "constraints"));
    }
    json_decref(res);
    return 0;
}

static int run_trace_server(const cmd *c, int argc, char **argv)
{
    (void)c;
    return kcli_trace(endpoint, false, argc, argv);
}

static int run_trace_client(const cmd *c, int argc, char **argv)
{
    (void)c;
    return kcli_trace(endpoint, true, argc, argv);
}

static int run_quarantine_list(const cmd *c, int argc, char **argv)
{
    json_t *res = get_list(c, argc, argv, "/api/admin/quarantine/v1");
    if (!res)
        return 0;
    static const char *names[] = {"ID", "META BYTES", "COPY"};
    static const bool right[] = {false, true, false};
    table t = {.ncols = 3, .names = names, .right = right};
    size_t i;
    json_t *e;
    json_array_foreach(res, i, e)
    {
        char size[32];
        fmt_count(json_integer_value(json_object_get(e, "meta_size")), size, sizeof(size));
        const char *copy = json_string_value(json_object_get(e, "copy"));
        table_add(&t, jstr(e, "id"), size, copy ? copy : "-");
    }
    table_print(&t);
    json_decref(res);
    return 0;
}

static int run_suspend_list(const cmd *c, int argc, char **argv)
{
    json_t *res = get_list(c, argc, argv, "/api/admin/suspend/v1");
    if (!res)
        return 0;
    static const char *names[] = {"ID", "REASON", "REMAIN", "CRITERIA"};
    static const bool right[] = {false, false, false, false};
    table t = {.ncols = 4, .names = names, .right = right};
    size_t i;
    json_t *e;
    json_array_foreach(res, i, e)
    {
        char crit[1024];
        criteria_text(e, false, crit, sizeof(crit));
        table_add(&t, jstr(e, "id"), jstr(e, "reason"), jstr(e, "duration"), crit);
    }
    table_print(&t);
    json_decref(res);
    return 0;
}

static int run_suspend_ready_q(const cmd *c, int argc, char **argv)
{
    static const struct option opts[] = {
        {"name", required_argument, NULL, O_NAME},
        {"reason", required_argument, NULL, O_REASON},
        {"duration", required_argument, NULL, O_DURATION},
        {"json", no_argument, NULL, O_JSON},
        {NULL, 0, NULL, 0},
    };
    const char *name = NULL, *reason = NULL, *duration = NULL;
    bool json = false;
    optind = 0;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
        if (ch == O_NAME)
            name = optarg;
        else if (ch == O_REASON)
            reason = optarg;
        else if (ch == O_DURATION)
            duration = optarg;
        else if (ch == O_JSON)
            json = true;
        else
            kcli_bad_option(c->name, ch, argv);
    }
    kcli_no_more_args(c->name, argc, argv);
    if (!name || !reason)
        kcli_usage_error(c->name, "--name and --reason are required");
    json_t *req = json_pack("{s:s,s:s}", "name", name, "reason", reason);
    if (duration)
        json_object_set_new(req, "duration", json_string(duration));
    json_t *res = request_json("POST", "/api/admin/suspend-ready-q/v1", NULL, req);
    if (json)
        print_json(res);
    else
        printf("%s\n", jstr(res, "id") ? jstr(res, "id") : "");
    json_decref(req);
    json_decref(res);
    return 0;
}

static int run_suspend_ready_q_list(const cmd *c, int argc, char **argv)
{
    json_t *res = get_list(c, argc, argv, "/api/admin/suspend-ready-q/v1");
    if (!res)
        return 0;
    static const char *names[] = {"ID", "NAME", "REASON", "REMAIN"};
    static const bool right[] = {false, false, false, false};
    table t = {.ncols = 4, .names = names, .right = right};
    size_t i;
    json_t *e;
    json_array_foreach(res, i, e)
        table_add(&t, jstr(e, "id"), jstr(e, "name"), jstr(e, "reason"), jstr(e, "duration"));
    table_print(&t);
    json_decref(res);
    return 0;
}

static void print_scalar(const char *label, const json_t *v)
{
    if (!v)
        return;
    char *s = json_is_string(v) ? strdup(json_string_value(v))
                                : json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
    printf("%-13s %s\n", label, s ? s : "");
    free(s);
}

static int run_inspect_message(const cmd *c, int argc, char **argv)
{
    static const struct option opts[] = {
        {"want-body", no_argument, NULL, O_WANT_BODY},
        {"json", no_argument, NULL, O_JSON},
        {NULL, 0, NULL, 0},
    };
    bool want_body = false, json = false;
    optind = 0;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
        if (ch == O_WANT_BODY)
            want_body = true;
        else if (ch == O_JSON)
            json = true;
        else
            kcli_usage_error(c->name, "unexpected argument %s", argv[optind - 1]);
    }
    if (optind >= argc)
        kcli_usage_error(c->name, "a message id is required");
    if (optind + 1 < argc)
        kcli_usage_error(c->name, "unexpected argument %s", argv[optind + 1]);
    strbuf q = {0};
    query_add(&q, "id", argv[optind]);
    if (want_body)
        query_add(&q, "want_body", "true");
    json_t *res = request_json("GET", "/api/admin/inspect-message/v1", q.p, NULL);
    free(q.p);
    if (json) {
        print_json(res);
        json_decref(res);
        return 0;
    }
    const json_t *m = json_object_get(res, "message");
    print_scalar("id:", json_object_get(res, "id"));
    print_scalar("sender:", json_object_get(m, "sender"));
    print_scalar("recipient:", json_object_get(m, "recipient"));
    const json_t *due = json_object_get(m, "due");
    printf("%-13s %s\n", "due:", json_is_string(due) ? json_string_value(due) : "now");
    print_scalar("num_attempts:", json_object_get(m, "num_attempts"));
    /* from kumod's logs (the queued record keeps no response) */
    const json_t *lf = json_object_get(m, "last_failure");
    if (json_is_object(lf))
        printf("%-13s %s (%s, attempt %lld)\n", "last_failure:",
               jstr(lf, "response") ? jstr(lf, "response") : "-",
               jstr(lf, "time") ? jstr(lf, "time") : "-", (long long)json_integer_value(json_object_get(lf, "attempt")));
    else
        printf("%-13s %s\n", "last_failure:", "none");
    print_scalar("scheduling:", json_object_get(m, "scheduling"));
    const json_t *meta = json_object_get(m, "meta");
    if (meta) {
        printf("meta:\n");
        char *s = json_dumps(meta, JSON_INDENT(2) | JSON_SORT_KEYS);
        printf("%s\n", s ? s : "");
        free(s);
    }
    const char *data = jstr(m, "data");
    if (data)
        printf("\n%s%s", data, data[0] && data[strlen(data) - 1] != '\n' ? "\n" : "");
    json_decref(res);
    return 0;
}

static int run_inspect_sched_q(const cmd *c, int argc, char **argv)
{
    static const struct option opts[] = {
        {"want-body", no_argument, NULL, O_WANT_BODY},
        {"limit", required_argument, NULL, O_LIMIT},
        {"no-limit", no_argument, NULL, O_NO_LIMIT},
        {"json", no_argument, NULL, O_JSON},
        {NULL, 0, NULL, 0},
    };
    bool want_body = false, json = false, no_limit = false;
    const char *limit = "5";
    optind = 0;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
        if (ch == O_WANT_BODY)
            want_body = true;
        else if (ch == O_JSON)
            json = true;
        else if (ch == O_NO_LIMIT)
            no_limit = true;
        else if (ch == O_LIMIT)
            limit = optarg;
        else
            kcli_bad_option(c->name, ch, argv);
    }
    if (optind + 1 != argc)
        kcli_usage_error(c->name, "exactly one queue name is required");
    strbuf q = {0};
    query_add(&q, "queue_name", argv[optind]);
    if (want_body)
        query_add(&q, "want_body", "true");
    if (!no_limit)
        query_add(&q, "limit", limit);
    json_t *res = request_json("GET", "/api/admin/inspect-sched-q/v1", q.p, NULL);
    free(q.p);
    if (json) {
        print_json(res);
        json_decref(res);
        return 0;
    }
    char count[32];
    fmt_count(json_integer_value(json_object_get(res, "num_scheduled")), count, sizeof(count));
    printf("queue: %s\nscheduled: %s\n", jstr(res, "queue_name") ? jstr(res, "queue_name") : "",
           count);
    const json_t *cfg = json_object_get(res, "queue_config");
    if (cfg) {
        char *s = json_dumps(cfg, JSON_COMPACT | JSON_SORT_KEYS);
        printf("config: %s\n", s ? s : "");
        free(s);
    }
    printf("\n");
    static const char *names[] = {"ID", "DUE", "ATTEMPTS", "SENDER", "RECIPIENT"};
    static const bool right[] = {false, false, true, false, false};
    table t = {.ncols = 5, .names = names, .right = right};
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(res, "messages"), i, e)
    {
        const json_t *m = json_object_get(e, "message");
        if (!m)
            m = e;
        char att[32];
        fmt_count(json_integer_value(json_object_get(m, "num_attempts")), att, sizeof(att));
        const json_t *rc = json_object_get(m, "recipient");
        char *rcs = json_is_string(rc) ? strdup(json_string_value(rc))
                    : rc                ? json_dumps(rc, JSON_COMPACT)
                                        : strdup("");
        const char *id = jstr(e, "id");
        table_add(&t, id ? id : "", jstr(m, "due") ? jstr(m, "due") : "now", att,
                  jstr(m, "sender"), rcs);
        free(rcs);
    }
    table_print(&t);
    json_decref(res);
    return 0;
}

static int run_inspect_ready_q(const cmd *c, int argc, char **argv)
{
    bool json = false;
    const char *name = NULL;
    parse_simple(c, argc, argv, &json, NULL, &name);
    strbuf q = {0};
    query_add(&q, "queue_name", name);
    json_t *res = request_json("GET", "/api/admin/inspect-ready-q/v1", q.p, NULL);
    free(q.p);
    if (json) {
        print_json(res);
        json_decref(res);
        return 0;
    }
    /* InspectReadyQV1Response */
    const json_t *st = json_object_get(res, "state");
    const json_t *pc = json_object_get(res, "path_config");
    char ready[32], conns[32], limit[32], max_ready[32];
    fmt_count(json_integer_value(json_object_get(st, "ready_count")), ready, sizeof(ready));
    fmt_count(json_integer_value(json_object_get(st, "connection_count")), conns, sizeof(conns));
    fmt_count(json_integer_value(json_object_get(pc, "connection_limit")), limit, sizeof(limit));
    fmt_count(json_integer_value(json_object_get(pc, "max_ready")), max_ready, sizeof(max_ready));
    printf("queue: %s\n", jstr(res, "queue_name") ? jstr(res, "queue_name") : name);
    printf("source: %s  pool: %s  protocol: %s\n\n",
           jstr(res, "egress_source") ? jstr(res, "egress_source") : "",
           jstr(res, "egress_pool") ? jstr(res, "egress_pool") : "",
           jstr(res, "protocol") ? jstr(res, "protocol") : "");
    printf("ready: %s (max %s)\n", ready, max_ready);
    printf("connections: %s (limit %s)\n", conns, limit);
    const json_t *susp = json_object_get(st, "suspended");
    if (json_is_object(susp))
        printf("suspended: %s (%s left)\n", jstr(susp, "reason") ? jstr(susp, "reason") : "",
               jstr(susp, "duration") ? jstr(susp, "duration") : "");
    if (jstr(st, "watchdog_threshold"))
        printf("watchdog: %s\n", jstr(st, "watchdog_threshold"));
    const json_t *ds = json_object_get(res, "dispatchers");
    if (json_array_size(ds)) {
        printf("\n");
        static const char *names[] = {"SESSION",   "PHASE",     "AGE",
                                      "DELIVERED", "TRANSFAIL", "FAILED"};
        static const bool right[] = {false, false, false, true, true, true};
        table t = {.ncols = 6, .names = names, .right = right};
        size_t i;
        json_t *e;
        json_array_foreach(ds, i, e)
        {
            char dv[32], tf[32], fl[32];
            fmt_count(json_integer_value(json_object_get(e, "messages_delivered")), dv, sizeof(dv));
            fmt_count(json_integer_value(json_object_get(e, "messages_transfailed")), tf,
                      sizeof(tf));
            fmt_count(json_integer_value(json_object_get(e, "messages_failed")), fl, sizeof(fl));
            const json_t *ph = json_object_get(e, "phase");
            const char *phase = json_string_value(ph);
            if (!phase && json_is_object(ph)) {
                void *it = json_object_iter((json_t *)ph);
                phase = it ? json_object_iter_key(it) : "";
            }
            table_add(&t, jstr(e, "session_id"), phase ? phase : "", jstr(e, "age"), dv, tf, fl);
        }
        table_print(&t);
    }
    json_decref(res);
    return 0;
}

static int run_set_log_filter(const cmd *c, int argc, char **argv)
{
    const char *filter = NULL;
    parse_simple(c, argc, argv, NULL, NULL, &filter);
    json_t *req = json_pack("{s:s}", "filter", filter);
    response r = request("POST", "/api/admin/set_diagnostic_log_filter/v1", NULL, req);
    puts(r.body.n ? r.body.p : "OK");
    free(r.body.p);
    json_decref(req);
    return 0;
}

/* ---- queue-summary --------------------------------------------------------------------- */

/* The value of series label=value in a one-label family of /metrics.json
 * ({"name": {"value": {"label": {"v1": N, ...}}}}), as an object. */
static const json_t *family_series(const json_t *metrics, const char *family, const char *label)
{
    const json_t *f = json_object_get(metrics, family);
    const json_t *v = json_object_get(f, "value");
    return json_object_get(v, label);
}

typedef struct rq_row {
    const char *name;
    long long delivered, transfail, conns, queued;
    bool have_d, have_t;
    char status[512];
} rq_row;

static int cmp_rq(const void *a, const void *b)
{
    return strcmp(((const rq_row *)a)->name, ((const rq_row *)b)->name);
}

static int cmp_rq_volume(const void *a, const void *b)
{
    const rq_row *x = a, *y = b;
    long long vx = x->delivered + x->transfail + x->conns + x->queued;
    long long vy = y->delivered + y->transfail + y->conns + y->queued;
    if (vx != vy)
        return vx > vy ? -1 : 1;
    return strcmp(x->name, y->name);
}

typedef struct sq_row {
    const char *name;
    long long count;
    char status[512];
} sq_row;

static int cmp_sq(const void *a, const void *b)
{
    return strcmp(((const sq_row *)a)->name, ((const sq_row *)b)->name);
}

static int cmp_sq_volume(const void *a, const void *b)
{
    const sq_row *x = a, *y = b;
    if (x->count != y->count)
        return x->count > y->count ? -1 : 1;
    return strcmp(x->name, y->name);
}

/* Splits "<source>-><site>@<proto>" into its parts. */
static void readyq_parts(const char *name, char *source, char *site, char *proto, size_t len)
{
    const char *arrow = strstr(name, "->");
    const char *s = arrow ? arrow + 2 : name;
    snprintf(source, len, "%.*s", arrow ? (int)(arrow - name) : 0, name);
    const char *at = strrchr(s, '@');
    snprintf(site, len, "%.*s", at ? (int)(at - s) : (int)strlen(s), s);
    snprintf(proto, len, "%s", at ? at + 1 : "");
}

/* Does an admin entry (campaign/tenant/domain) match scheduled queue q? */
static bool entry_matches(const json_t *e, const char *q)
{
    const json_t *qn = json_object_get(e, "queue_names");
    if (json_array_size(qn)) {
        size_t i;
        json_t *v;
        json_array_foreach(qn, i, v) if (json_is_string(v) && strcmp(json_string_value(v), q) == 0)
            return true;
        return false;
    }
    /* campaign:tenant@domain!routing */
    char campaign[256] = "", tenant[256] = "", domain[256] = "";
    const char *at = strchr(q, '@');
    const char *dom = at ? at + 1 : q;
    size_t dl = strcspn(dom, "!");
    snprintf(domain, sizeof(domain), "%.*s", (int)dl, dom);
    if (at) {
        const char *colon = memchr(q, ':', (size_t)(at - q));
        if (colon) {
            snprintf(campaign, sizeof(campaign), "%.*s", (int)(colon - q), q);
            snprintf(tenant, sizeof(tenant), "%.*s", (int)(at - colon - 1), colon + 1);
        } else {
            snprintf(tenant, sizeof(tenant), "%.*s", (int)(at - q), q);
        }
    }
    const char *c = jstr(e, "campaign"), *t = jstr(e, "tenant"), *d = jstr(e, "domain");
    return (!c || strcmp(c, campaign) == 0) && (!t || strcmp(t, tenant) == 0) &&
           (!d || strcasecmp(d, domain) == 0);
}

static int run_queue_summary(const cmd *c, int argc, char **argv)
{
    static const struct option opts[] = {
        {"limit", required_argument, NULL, O_LIMIT},
        {"by-volume", no_argument, NULL, O_BY_VOLUME},
        {"domain", required_argument, NULL, O_DOMAIN},
        {"json", no_argument, NULL, O_JSON},
        {NULL, 0, NULL, 0},
    };
    long limit = -1;
    bool by_volume = false, json = false;
    const char *domain = NULL;
    optind = 0;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
        if (ch == O_LIMIT) {
            char *end;
            limit = strtol(optarg, &end, 10);
            if (*end || limit < 0)
                kcli_usage_error(c->name, "--limit: expected a number, got %s", optarg);
        } else if (ch == O_BY_VOLUME) {
            by_volume = true;
        } else if (ch == O_DOMAIN) {
            domain = optarg;
        } else if (ch == O_JSON) {
            json = true;
        } else {
            kcli_bad_option(c->name, ch, argv);
        }
    }
    kcli_no_more_args(c->name, argc, argv);

    json_t *suspended = request_json("GET", "/api/admin/suspend/v1", NULL, NULL);
    json_t *bounced = request_json("GET", "/api/admin/bounce/v1", NULL, NULL);
    json_t *susp_rq = request_json("GET", "/api/admin/suspend-ready-q/v1", NULL, NULL);
    json_t *states = request_json("GET", "/api/admin/ready-q-states/v1", NULL, NULL);
    json_t *metrics = request_json("GET", "/metrics.json", NULL, NULL);

    /* ready queues: services "<proto>:<ready queue name>" */
    const json_t *ready = family_series(metrics, "ready_count", "service");
    const json_t *conns = family_series(metrics, "connection_count", "service");
    const json_t *deliv = family_series(metrics, "total_messages_delivered", "service");
    const json_t *tf = family_series(metrics, "total_messages_transfail", "service");
    size_t cap = json_object_size(ready) + json_object_size(conns) + 1, nr = 0;
    rq_row *rows = calloc(cap, sizeof(*rows));
    const json_t *sources[2] = {ready, conns};
    for (int s = 0; s < 2; s++) {
        const char *svc;
        json_t *v;
        json_object_foreach((json_t *)sources[s], svc, v)
        {
            const char *colon = strchr(svc, ':');
            if (!colon)
                continue;
            const char *name = colon + 1;
            bool seen = false;
            for (size_t i = 0; i < nr; i++)
                if (strcmp(rows[i].name, name) == 0)
                    seen = true;
            if (seen)
                continue;
            rq_row *r = &rows[nr++];
            r->name = name;
            r->queued = (long long)json_number_value(json_object_get(ready, svc));
            r->conns = (long long)json_number_value(json_object_get(conns, svc));
            json_t *d = json_object_get(deliv, svc), *t = json_object_get(tf, svc);
            r->have_d = d != NULL;
            r->have_t = t != NULL;
            r->delivered = (long long)json_number_value(d);
            r->transfail = (long long)json_number_value(t);
            size_t sl = 0;
            size_t i;
            json_t *e;
            json_array_foreach(susp_rq, i, e)
            {
                if (jstr(e, "name") && strcmp(jstr(e, "name"), name) == 0 && sl < sizeof(r->status))
                    sl += (size_t)snprintf(r->status + sl, sizeof(r->status) - sl,
                                           "%ssuspend: %s", sl ? ", " : "",
                                           jstr(e, "reason") ? jstr(e, "reason") : "");
            }
            const json_t *st =
                json_object_get(json_object_get(states, "states_by_ready_queue"), name);
            const char *key;
            json_t *sv;
            json_object_foreach((json_t *)st, key, sv)
            {
                if (strcmp(key, "suspended") == 0 && sl)
                    continue; /* already shown with its reason */
                if (sl < sizeof(r->status)) {
                    const char *ctx = jstr(sv, "context");
                    sl += (size_t)snprintf(r->status + sl, sizeof(r->status) - sl, "%s%s%s%s",
                                           sl ? ", " : "", key, ctx ? ": " : "", ctx ? ctx : "");
                }
            }
        }
    }
    if (domain) {
        size_t o = 0;
        for (size_t i = 0; i < nr; i++) {
            char src[512], site[512], proto[512];
            readyq_parts(rows[i].name, src, site, proto, sizeof(src));
            if (strcasestr(site, domain))
                rows[o++] = rows[i];
        }
        nr = o;
    }
    qsort(rows, nr, sizeof(*rows), by_volume ? cmp_rq_volume : cmp_rq);
    if (limit >= 0 && (size_t)limit < nr)
        nr = (size_t)limit;

    /* scheduled queues */
    const json_t *sched = family_series(metrics, "scheduled_count", "queue");
    size_t ns = 0;
    sq_row *srows = calloc(json_object_size(sched) + 1, sizeof(*srows));
    const char *qname;
    json_t *qv;
    json_object_foreach((json_t *)sched, qname, qv)
    {
        if (domain) {
            const char *at = strchr(qname, '@');
            const char *dom = at ? at + 1 : qname;
            size_t dl = strcspn(dom, "!");
            if (strlen(domain) != dl || strncasecmp(dom, domain, dl) != 0)
                continue;
        }
        sq_row *r = &srows[ns++];
        r->name = qname;
        r->count = (long long)json_number_value(qv);
        size_t i;
        json_t *e;
        json_array_foreach(bounced, i, e)
        {
            if (!r->status[0] && entry_matches(e, qname))
                snprintf(r->status, sizeof(r->status), "bounce: %s",
                         jstr(e, "reason") ? jstr(e, "reason") : "");
        }
        json_array_foreach(suspended, i, e)
        {
            if (!r->status[0] && entry_matches(e, qname))
                snprintf(r->status, sizeof(r->status), "suspend: %s",
                         jstr(e, "reason") ? jstr(e, "reason") : "");
        }
    }
    qsort(srows, ns, sizeof(*srows), by_volume ? cmp_sq_volume : cmp_sq);
    if (limit >= 0 && (size_t)limit < ns)
        ns = (size_t)limit;

    if (json) {
        json_t *out = json_pack("{s:[],s:[]}", "ready", "scheduled");
        for (size_t i = 0; i < nr; i++) {
            char src[512], site[512], proto[512];
            readyq_parts(rows[i].name, src, site, proto, sizeof(src));
            json_t *o = json_pack("{s:s,s:s,s:s,s:s,s:I,s:I,s:s}", "name", rows[i].name, "site",
                                  site, "source", src, "protocol", proto, "connections",
                                  (json_int_t)rows[i].conns, "queued", (json_int_t)rows[i].queued,
                                  "status", rows[i].status);
            if (rows[i].have_d)
                json_object_set_new(o, "delivered", json_integer(rows[i].delivered));
            if (rows[i].have_t)
                json_object_set_new(o, "transfail", json_integer(rows[i].transfail));
            json_array_append_new(json_object_get(out, "ready"), o);
        }
        for (size_t i = 0; i < ns; i++)
            json_array_append_new(json_object_get(out, "scheduled"),
                                  json_pack("{s:s,s:I,s:s}", "name", srows[i].name, "count",
                                            (json_int_t)srows[i].count, "status",
                                            srows[i].status));
        print_json(out);
        json_decref(out);
    } else {
        static const char *rnames[] = {"SITE", "SOURCE", "PROTO", "D", "T", "C", "Q", ""};
        static const bool rright[] = {false, false, false, true, true, true, true, false};
        table t = {.ncols = 8, .names = rnames, .right = rright};
        for (size_t i = 0; i < nr; i++) {
            char src[512], site[512], proto[512], d[32] = "-", tt[32] = "-", cc[32], q[32];
            readyq_parts(rows[i].name, src, site, proto, sizeof(src));
            if (rows[i].have_d)
                fmt_count(rows[i].delivered, d, sizeof(d));
            if (rows[i].have_t)
                fmt_count(rows[i].transfail, tt, sizeof(tt));
            fmt_count(rows[i].conns, cc, sizeof(cc));
            fmt_count(rows[i].queued, q, sizeof(q));
            table_add(&t, site, src, proto, d, tt, cc, q, rows[i].status);
        }
        table_print(&t);
        printf("\n");
        static const char *snames[] = {"SCHEDULED QUEUE", "COUNT", ""};
        static const bool sright[] = {false, true, false};
        table st = {.ncols = 3, .names = snames, .right = sright};
        for (size_t i = 0; i < ns; i++) {
            char cnt[32];
            fmt_count(srows[i].count, cnt, sizeof(cnt));
            table_add(&st, srows[i].name, cnt, srows[i].status);
        }
        table_print(&st);
    }
    free(rows);
    free(srows);
    json_decref(suspended);
    json_decref(bounced);
    json_decref(susp_rq);
    json_decref(states);
    json_decref(metrics);
    return 0;
}

/* ---- abort-ready-q-conn, spool-compact -------------------------------------------------- */

static int run_abort_ready_q_conn(const cmd *c, int argc, char **argv)
{
    static const struct option opts[] = {
        {"json", no_argument, NULL, O_JSON},
        {NULL, 0, NULL, 0},
    };
    bool json = false;
    optind = 0;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
        if (ch == O_JSON)
            json = true;
        else
            kcli_usage_error(c->name, "unexpected argument %s", argv[optind - 1]);
    }
    if (optind + 2 != argc)
        kcli_usage_error(c->name, "a ready queue name and a session id are required");
    json_t *req = json_pack("{s:s,s:s}", "queue_name", argv[optind], "session_id", argv[optind + 1]);
    response r = request("POST", "/api/admin/abort-ready-q-conn/v1", NULL, req);
    json_decref(req);
    if (json) {
        json_t *out = json_pack("{s:s,s:s,s:b}", "queue_name", argv[optind], "session_id",
                                argv[optind + 1], "aborted", 1);
        print_json(out);
        json_decref(out);
    } else {
        printf("aborted session %s of %s\n", argv[optind + 1], argv[optind]);
    }
    free(r.body.p);
    return 0;
}

static int run_spool_compact(const cmd *c, int argc, char **argv)
{
    static const struct option opts[] = {
        {"name", required_argument, NULL, O_NAME},
        {"json", no_argument, NULL, O_JSON},
        {NULL, 0, NULL, 0},
    };
    bool json = false;
    const char *name = NULL;
    optind = 0;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
        if (ch == O_JSON)
            json = true;
        else if (ch == O_NAME)
            name = optarg;
        else
            kcli_bad_option(c->name, ch, argv);
    }
    kcli_no_more_args(c->name, argc, argv);
    if (!name)
        kcli_usage_error(c->name, "--name is required");
    json_t *req = json_pack("{s:s}", "name", name);
    struct timespec t0, t1;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    response r = request("POST", "/api/admin/spool-compact/v1", NULL, req);
    clock_gettime(CLOCK_MONOTONIC, &t1);
    json_decref(req);
    double took = (double)(t1.tv_sec - t0.tv_sec) + (t1.tv_nsec - t0.tv_nsec) / 1e9;
    if (json) {
        json_t *out = json_pack("{s:s,s:b,s:f}", "name", name, "compacted", 1, "seconds", took);
        print_json(out);
        json_decref(out);
    } else {
        printf("spool %s compacted in %.3fs\n", name, took);
    }
    free(r.body.p);
    return 0;
}

/* ---- provider-summary ------------------------------------------------------------------- */

typedef struct prov_row {
    char *provider, *pool;
    double d, t, f, c, q;
    char domains[512];
} prov_row;

static double prov_volume(const prov_row *r)
{
    return r->d + r->t + r->f + r->q;
}

static int cmp_prov(const void *a, const void *b)
{
    const prov_row *x = a, *y = b;
    double vx = prov_volume(x), vy = prov_volume(y);
    if (vx != vy)
        return vx > vy ? -1 : 1;
    int c = strcmp(x->provider, y->provider);
    return c ? c : strcmp(x->pool, y->pool);
}

/* The row of (prov, pool), added when new. */
static prov_row *prov_find(prov_row **rows, size_t *n, const char *prov, const char *pool)
{
    for (size_t i = 0; i < *n; i++)
        if (strcmp((*rows)[i].provider, prov) == 0 && strcmp((*rows)[i].pool, pool) == 0)
            return &(*rows)[i];
    prov_row *nr = realloc(*rows, (*n + 1) * sizeof(**rows));
    if (!nr)
        die("out of memory");
    *rows = nr;
    prov_row *r = &nr[(*n)++];
    memset(r, 0, sizeof(*r));
    r->provider = strdup(prov);
    r->pool = strdup(pool);
    return r;
}

static int run_provider_summary(const cmd *c, int argc, char **argv)
{
    static const struct option opts[] = {
        {"by-pool", no_argument, NULL, O_BY_POOL},
        {"show-domains", no_argument, NULL, O_SHOW_DOMAINS},
        {"limit", required_argument, NULL, O_LIMIT},
        {"json", no_argument, NULL, O_JSON},
        {NULL, 0, NULL, 0},
    };
    bool by_pool = false, show_domains = false, json = false;
    long limit = -1;
    optind = 0;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
        if (ch == O_BY_POOL) {
            by_pool = true;
        } else if (ch == O_SHOW_DOMAINS) {
            show_domains = true;
        } else if (ch == O_JSON) {
            json = true;
        } else if (ch == O_LIMIT) {
            char *end;
            limit = strtol(optarg, &end, 10);
            if (*end || limit < 0)
                kcli_usage_error(c->name, "--limit: expected a number, got %s", optarg);
        } else {
            kcli_bad_option(c->name, ch, argv);
        }
    }
    kcli_no_more_args(c->name, argc, argv);
    json_t *m = request_json("GET", "/metrics.json", NULL, NULL);
    static const char *const one[] = {
        "total_messages_delivered_by_provider", "total_messages_transfail_by_provider",
        "total_messages_fail_by_provider", "connection_count_by_provider",
        "queued_count_by_provider"};
    static const char *const two[] = {"total_messages_delivered_by_provider_and_source",
                                      "total_messages_transfail_by_provider_and_source",
                                      "total_messages_fail_by_provider_and_source",
                                      "connection_count_by_provider_and_pool",
                                      "queued_count_by_provider_and_pool"};
    prov_row *rows = NULL;
    size_t n = 0;
    /* /metrics.json renders a one-label family as {"value": {label: {v: n}}}
     * and a two-label one as {"value": [{"provider": p, "pool": q, "@": n}]} */
    for (int k = 0; k < 5; k++) {
        const json_t *v = json_object_get(json_object_get(m, by_pool ? two[k] : one[k]), "value");
        if (by_pool) {
            size_t i;
            json_t *s;
            json_array_foreach(v, i, s)
            {
                const char *p = jstr(s, "provider"), *pool = jstr(s, "pool");
                if (!p)
                    continue;
                prov_row *r = prov_find(&rows, &n, p, pool ? pool : "");
                double *f[] = {&r->d, &r->t, &r->f, &r->c, &r->q};
                *f[k] += json_number_value(json_object_get(s, "@"));
            }
        } else {
            const char *p;
            json_t *x;
            json_object_foreach(json_object_get(v, "provider"), p, x)
            {
                prov_row *r = prov_find(&rows, &n, p, "");
                double *f[] = {&r->d, &r->t, &r->f, &r->c, &r->q};
                *f[k] += json_number_value(x);
            }
        }
    }
    if (show_domains) {
        /* the metrics do not say which site a scheduled queue's domain
         * routes to: every row lists the domains with delayed messages
         * (as KumoMTA, only domains with scheduled messages are known) */
        const json_t *sched = family_series(m, "scheduled_count", "queue");
        for (size_t i = 0; i < n; i++) {
            size_t l = 0;
            const char *q;
            json_t *x;
            json_object_foreach((json_t *)sched, q, x)
            {
                if (json_number_value(x) <= 0)
                    continue;
                const char *at = strchr(q, '@');
                const char *dom = at ? at + 1 : q;
                if (l < sizeof(rows[i].domains))
                    l += (size_t)snprintf(rows[i].domains + l, sizeof(rows[i].domains) - l,
                                          "%s%.*s", l ? ", " : "", (int)strcspn(dom, "!"), dom);
            }
        }
    }
    qsort(rows, n, sizeof(*rows), cmp_prov);
    if (limit >= 0 && (size_t)limit < n)
        n = (size_t)limit;
    if (json) {
        json_t *out = json_array();
        for (size_t i = 0; i < n; i++) {
            json_t *o = json_pack("{s:s,s:I,s:I,s:I,s:I,s:I}", "provider", rows[i].provider,
                                  "delivered", (json_int_t)rows[i].d, "transfail",
                                  (json_int_t)rows[i].t, "failed", (json_int_t)rows[i].f,
                                  "connections", (json_int_t)rows[i].c, "queued",
                                  (json_int_t)rows[i].q);
            if (by_pool)
                json_object_set_new(o, "pool", json_string(rows[i].pool));
            if (show_domains)
                json_object_set_new(o, "domains", json_string(rows[i].domains));
            json_array_append_new(out, o);
        }
        print_json(out);
        json_decref(out);
    } else {
        const char *names[8];
        bool right[8];
        int nc = 0;
        names[nc] = "PROVIDER";
        right[nc++] = false;
        if (by_pool) {
            names[nc] = "POOL";
            right[nc++] = false;
        }
        static const char *const num[] = {"D", "T", "F", "C", "Q"};
        for (int k = 0; k < 5; k++) {
            names[nc] = num[k];
            right[nc++] = true;
        }
        if (show_domains) {
            names[nc] = "DOMAINS";
            right[nc++] = false;
        }
        table t = {.ncols = nc, .names = names, .right = right};
        for (size_t i = 0; i < n; i++) {
            char v[5][32];
            double *f[] = {&rows[i].d, &rows[i].t, &rows[i].f, &rows[i].c, &rows[i].q};
            for (int k = 0; k < 5; k++)
                fmt_count((long long)*f[k], v[k], sizeof(v[k]));
            if (by_pool && show_domains)
                table_add(&t, rows[i].provider, rows[i].pool, v[0], v[1], v[2], v[3], v[4],
                          rows[i].domains);
            else if (by_pool)
                table_add(&t, rows[i].provider, rows[i].pool, v[0], v[1], v[2], v[3], v[4]);
            else if (show_domains)
                table_add(&t, rows[i].provider, v[0], v[1], v[2], v[3], v[4], rows[i].domains);
            else
                table_add(&t, rows[i].provider, v[0], v[1], v[2], v[3], v[4]);
        }
        table_print(&t);
    }
    for (size_t i = 0; i < n; i++) {
        free(rows[i].provider);
        free(rows[i].pool);
    }
    free(rows);
    json_decref(m);
    return 0;
}

/* ---- top --------------------------------------------------------------------------------- */

/* The sum of a family's series in /metrics.json (a number, a one-label
 * object, or a list of series), or -1 when the family is absent. */
static double family_total(const json_t *metrics, const char *family)
{
    const json_t *v = json_object_get(json_object_get(metrics, family), "value");
    if (!v)
        return -1;
    if (json_is_number(v))
        return json_number_value(v);
    double sum = 0;
    if (json_is_object(v)) {
        const char *label;
        json_t *series;
        json_object_foreach((json_t *)v, label, series)
        {
            const char *lv;
            json_t *n;
            json_object_foreach(series, lv, n) sum += json_number_value(n);
        }
    } else if (json_is_array(v)) {
        size_t i;
        json_t *s;
        json_array_foreach(v, i, s) sum += json_number_value(json_object_get(s, "@"));
    }
    return sum;
}

typedef struct top_row {
    const char *name;
    double value;
} top_row;

static int cmp_top(const void *a, const void *b)
{
    const top_row *x = a, *y = b;
    if (x->value != y->value)
        return x->value > y->value ? -1 : 1;
    return strcmp(x->name, y->name);
}

static void print_top_queues(const json_t *series, const char *title, bool strip_proto)
{
    size_t n = json_object_size(series), k = 0;
    top_row *rows = calloc(n ? n : 1, sizeof(*rows));
    const char *name;
    json_t *v;
    json_object_foreach((json_t *)series, name, v)
    {
        const char *colon = strip_proto ? strchr(name, ':') : NULL;
        rows[k].name = colon ? colon + 1 : name;
        rows[k++].value = json_number_value(v);
    }
    qsort(rows, k, sizeof(*rows), cmp_top);
    static const char *names[2];
    static const bool right[] = {false, true};
    names[0] = title;
    names[1] = "COUNT";
    table t = {.ncols = 2, .names = names, .right = right};
    for (size_t i = 0; i < k && i < 10; i++) {
        char c[32];
        fmt_count((long long)rows[i].value, c, sizeof(c));
        table_add(&t, rows[i].name, c);
    }
    table_print(&t);
    free(rows);
}

static int run_top(const cmd *c, int argc, char **argv)
{
    static const struct option opts[] = {
        {"interval", required_argument, NULL, O_LIMIT},
        {"count", required_argument, NULL, O_ID},
        {NULL, 0, NULL, 0},
    };
    double interval = 2;
    long frames = -1;
    optind = 0;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, ":", opts, NULL)) != -1) {
        char *end;
        if (ch == O_LIMIT) {
            interval = strtod(optarg, &end);
            if (*end || interval <= 0)
                kcli_usage_error(c->name, "--interval: expected a positive number of seconds");
        } else if (ch == O_ID) {
            frames = strtol(optarg, &end, 10);
            if (*end || frames <= 0)
                kcli_usage_error(c->name, "--count: expected a positive number");
        } else {
            kcli_bad_option(c->name, ch, argv);
        }
    }
    kcli_no_more_args(c->name, argc, argv);
    static const struct {
        const char *family, *label;
    } totals[] = {
        {"total_messages_received", "received"},  {"total_messages_delivered", "delivered"},
        {"total_messages_transfail", "transfail"}, {"total_messages_fail", "failed"},
        {"scheduled_count_total", "scheduled"},   {"ready_count", "ready"},
        {"connection_count", "connections"},
    };
    enum { NT = sizeof(totals) / sizeof(totals[0]) };
    double prev[NT];
    struct timespec prev_t = {0};
    bool tty = isatty(STDOUT_FILENO);
    for (long frame = 0; frames < 0 || frame < frames; frame++) {
        if (frame)
            usleep((useconds_t)(interval * 1e6));
        json_t *m = request_json("GET", "/metrics.json", NULL, NULL);
        struct timespec now;
        clock_gettime(CLOCK_MONOTONIC, &now);
        double dt = (double)(now.tv_sec - prev_t.tv_sec) + (now.tv_nsec - prev_t.tv_nsec) / 1e9;
        if (tty)
            fputs("\033[H\033[2J", stdout);
        time_t wall = time(NULL);
        char when[64];
        strftime(when, sizeof(when), "%Y-%m-%d %H:%M:%S", localtime(&wall));
        printf("kumod at %s  %s\n\n", endpoint, when);
        static const char *names[] = {"", "TOTAL", "PER SEC"};
        static const bool right[] = {false, true, true};
        table t = {.ncols = 3, .names = names, .right = right};
        for (int i = 0; i < NT; i++) {
            double v = family_total(m, totals[i].family);
            char tot[32] = "-", rate[32] = "";
            if (v >= 0)
                fmt_count((long long)v, tot, sizeof(tot));
            bool counter = strncmp(totals[i].family, "total_", 6) == 0;
            if (counter && frame && v >= 0 && prev[i] >= 0 && dt > 0)
                snprintf(rate, sizeof(rate), "%.1f", (v - prev[i]) / dt);
            table_add(&t, totals[i].label, tot, rate);
            prev[i] = v;
        }
        table_print(&t);
        printf("\n");
        print_top_queues(family_series(m, "scheduled_count", "queue"), "SCHEDULED QUEUE", false);
        printf("\n");
        print_top_queues(family_series(m, "ready_count", "service"), "READY QUEUE", true);
        fflush(stdout);
        prev_t = now;
        json_decref(m);
    }
    return 0;
}

static int run_explain(const cmd *c, int argc, char **argv)
{
    (void)c;
    return kcli_explain(argc, argv);
}

/* ---- main ------------------------------------------------------------------------------ */

static const cmd commands[] = {
    {"bounce", "Administratively bounce messages in matching queues",
     "--reason REASON [--domain D] [--routing-domain D] [--campaign C] [--tenant T]\n"
     "                   [--queue NAME]... [--everything] [--suppress-logging] [--duration DUR] "
     "[--json]",
     run_bounce},
    {"bounce-list", "List the active administrative bounces", "[--json]", run_bounce_list},
    {"bounce-cancel", "Cancel an administrative bounce", "--id ID", run_bounce_cancel},
    {"suspend", "Administratively suspend messages in matching scheduled queues",
     "--reason REASON [--domain D] [--campaign C] [--tenant T] [--queue NAME]...\n"
     "                    [--everything] [--duration DUR] [--json]",
     run_suspend},
    {"suspend-list", "List the active scheduled-queue suspensions", "[--json]", run_suspend_list},
    {"suspend-cancel", "Cancel a scheduled-queue suspension", "--id ID", run_suspend_cancel},
    {"suspend-ready-q", "Administratively suspend a ready queue",
     "--name READY_QUEUE --reason REASON [--duration DUR] [--json]", run_suspend_ready_q},
    {"suspend-ready-q-list", "List the active ready-queue suspensions", "[--json]",
     run_suspend_ready_q_list},
    {"suspend-ready-q-cancel", "Cancel a ready-queue suspension", "--id ID",
     run_suspend_ready_q_cancel},
    {"rebind", "Rebind messages from matching queues into different queue(s)",
     "--reason REASON [--domain D] [--routing-domain D] [--campaign C] [--tenant T]\n"
     "                   [--everything] [--always-flush] [--suppress-logging]\n"
     "                   [--trigger-rebind-event] [--data JSON] [--set KEY=VALUE]... [--json]",
     run_rebind},
    {"inspect-message", "Show a queued message: envelope, meta, due time and attempts",
     "[--want-body] [--json] ID", run_inspect_message},
    {"inspect-sched-q", "Show a scheduled queue and a sample of its messages",
     "[--want-body] [--limit N | --no-limit] [--json] QUEUE_NAME", run_inspect_sched_q},
    {"inspect-ready-q", "Show a ready queue: counts, limits, suspension and its messages",
     "[--json] READY_QUEUE_NAME", run_inspect_ready_q},
    {"explain", "Tell one message's story: reception, attempts, waits, state, outcome",
     "[--json] MESSAGE_ID", run_explain},
    {"queue-summary", "Summarise the ready and scheduled queues (from /metrics.json)",
     "[--limit N] [--by-volume] [--domain D] [--json]", run_queue_summary},
    {"logs", "Print, follow and filter the local delivery logs (reads the segments itself)",
     "[--dir LOG_DIR] [-f|--follow] [--type TYPE]... [--queue NAME]\n"
     "                 [--since DURATION|TIME] [--json]",
     run_logs},
    {"quarantine-list", "List the spooled messages start-up could not read (kept, not delivered)",
     "[--json]", run_quarantine_list},
    {"provider-summary", "Summarise the queues by provider (or site), busiest first",
     "[--by-pool] [--show-domains] [--limit N] [--json]", run_provider_summary},
    {"abort-ready-q-conn", "Abort a ready queue's dispatcher (connection) by its session id",
     "[--json] READY_QUEUE_NAME SESSION_ID", run_abort_ready_q_conn},
    {"spool-compact", "Flush and compact a spool's whole key range (RocksDB; no-op otherwise)",
     "--name SPOOL_NAME [--json]", run_spool_compact},
    {"set-log-filter", "Change the diagnostic log filter of the running kumod", "FILTER",
     run_set_log_filter},
    {"resolve-egress-path",
     "Resolve the egress path config, MX, sources and ceilings the policy gives a domain",
     "[--config | --constraints | --json] [--tenant T] [--campaign C]\n"
     "                   [--routing-domain D] DOMAIN [SOURCE]",
     run_resolve_egress_path},
    {"trace-smtp-server", "Trace incoming SMTP sessions live (commands and replies)",
     "[--source CIDR]... [--color tty|yes|no] [--only-new] [--only-one] [--terse] [--json]",
     run_trace_server},
    {"trace-smtp-client", "Trace kumod's outgoing SMTP sessions live",
     "[--source CIDR]... [--mx-addr CIDR]... [--mx-host H]... [--domain D]...\n"
     "                   [--routing-domain D]... [--campaign C]... [--tenant T]...\n"
     "                   [--egress-pool P]... [--egress-source S]... [--mail-from A]...\n"
     "                   [--rcpt-to A]... [--ready-queue Q]... [--color tty|yes|no]\n"
     "                   [--only-new] [--only-one] [--terse] [--json]",
     run_trace_client},
    {"top", "A live view of message rates and the largest queues (from /metrics.json)",
     "[--interval SECONDS] [--count FRAMES]", run_top},
};

static void usage(FILE *f)
{
    fprintf(f, "kcli: administer a running kumod through its HTTP API.\n\n"
               "Usage: kcli [--endpoint URL] COMMAND [OPTIONS]\n\n"
               "  --endpoint URL  the kumod HTTP listener (env KUMO_KCLI_ENDPOINT; default "
               "%s)\n"
               "  --help          show this text; 'kcli COMMAND --help' for a command\n\n"
               "Commands:\n",
            DEFAULT_ENDPOINT);
    for (size_t i = 0; i < sizeof(commands) / sizeof(commands[0]); i++)
        fprintf(f, "  %-24s %s\n", commands[i].name, commands[i].summary);
}

int main(int argc, char **argv)
{
    const char *env = getenv("KUMO_KCLI_ENDPOINT");
    if (env && *env)
        endpoint = env;
    int i = 1;
    for (; i < argc; i++) {
        if (strcmp(argv[i], "--endpoint") == 0) {
            if (i + 1 >= argc)
                kcli_usage_error(NULL, "option --endpoint needs a value");
            endpoint = argv[++i];
        } else if (strncmp(argv[i], "--endpoint=", 11) == 0) {
            endpoint = argv[i] + 11;
        } else if (strcmp(argv[i], "--help") == 0 || strcmp(argv[i], "-h") == 0) {
            usage(stdout);
            return 0;
        } else if (argv[i][0] == '-') {
            fprintf(stderr, "kcli: unknown option %s\n\n", argv[i]);
            usage(stderr);
            return 2;
        } else {
            break;
        }
    }
    if (i >= argc) {
        usage(stderr);
        return 2;
    }
    if (strncmp(endpoint, "http://", 7) != 0 && strncmp(endpoint, "https://", 8) != 0)
        kcli_usage_error(NULL, "--endpoint must be an http:// or https:// URL, got '%s'", endpoint);
    const cmd *c = NULL;
    for (size_t k = 0; k < sizeof(commands) / sizeof(commands[0]); k++)
        if (strcmp(commands[k].name, argv[i]) == 0)
            c = &commands[k];
    if (!c) {
        fprintf(stderr, "kcli: unknown command '%s'\n\n", argv[i]);
        usage(stderr);
        return 2;
    }
    int sub_argc = argc - i;
    char **sub_argv = argv + i;
    if (wants_help(sub_argc, sub_argv)) {
        print_cmd_help(c);
        return 0;
    }
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != 0)
        die("cannot initialise libcurl");
    int rc = c->run(c, sub_argc, sub_argv);
    curl_global_cleanup();
    return rc;
}
