/* kcli trace-smtp-server and trace-smtp-client, as KumoMTA's kcli has
 * them: opens a websocket (RFC 6455) to /api/admin/trace-smtp-server/v1
 * or /api/admin/trace-smtp-client/v1 of the endpoint, sends the
 * TraceSmtpV1Request / TraceSmtpClientV1Request built from the options,
 * and prints every event as it arrives: "[conn] delta === ..." lines with
 * "->" / "<-" arrows for what was read and written, and the changes of
 * the connection meta, the way KumoMTA's kcli renders them (--json: each
 * event's JSON as received, one per line).
 *
 * The websocket is written here over a blocking socket (OpenSSL for
 * https://), with the frame code kumod itself uses (net/websocket.c):
 * a command-line tool that only waits for the next event needs no loop.
 * Fails with one line on stderr and exit status 1 (connection refused,
 * an HTTP answer other than 101, a malformed frame); the stream ending
 * is exit status 0. */
#include "trace.h"

#include "cliopt.h"

#include <arpa/inet.h>
#include <errno.h>
#include <getopt.h>
#include <jansson.h>
#include <netdb.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#include "net/websocket.h"
#include "net/cidr.h"

static const char *cmd_name;

static void fail(const char *fmt, ...) __attribute__((format(printf, 1, 2), noreturn));
static void fail(const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    fprintf(stderr, "kcli: %s: ", cmd_name);
    vfprintf(stderr, fmt, ap);
    fputc('\n', stderr);
    va_end(ap);
    exit(1);
}

/* ---- the connection -------------------------------------------------------------------------- */

typedef struct conn {
    int fd;
    SSL_CTX *ctx;
    SSL *ssl;
    uint8_t *buf; /* bytes read and not yet used */
    size_t len, cap;
} conn;

static void conn_write(conn *c, const void *p, size_t n)
{
    const char *s = p;
    while (n) {
        ssize_t w;
        if (c->ssl) {
            int r = SSL_write(c->ssl, s, n > INT32_MAX ? INT32_MAX : (int)n);
            w = r > 0 ? r : -1;
        } else {
            w = send(c->fd, s, n, MSG_NOSIGNAL);
        }
        if (w < 0) {
            if (!c->ssl && errno == EINTR)
                continue;
            fail("writing to kumod: %s", c->ssl ? "TLS error" : strerror(errno));
        }
        s += w;
        n -= (size_t)w;
    }
}

/* Reads more into c->buf; returns false at the end of the stream. */
static bool conn_fill(conn *c)
{
    if (c->cap - c->len < 65536) {
        size_t ncap = c->cap ? c->cap * 2 : 131072;
        uint8_t *nb = realloc(c->buf, ncap);
        if (!nb)
            fail("out of memory");
        c->buf = nb;
        c->cap = ncap;
    }
    for (;;) {
        ssize_t r;
        if (c->ssl) {
            int n = SSL_read(c->ssl, c->buf + c->len, (int)(c->cap - c->len));
            if (n <= 0) {
                int e = SSL_get_error(c->ssl, n);
                if (e == SSL_ERROR_ZERO_RETURN || e == SSL_ERROR_SYSCALL)
                    return false;
                fail("reading from kumod: TLS error");
            }
            r = n;
        } else {
            r = recv(c->fd, c->buf + c->len, c->cap - c->len, 0);
            if (r < 0 && errno == EINTR)
                continue;
            if (r < 0)
                fail("reading from kumod: %s", strerror(errno));
            if (r == 0)
                return false;
        }
        c->len += (size_t)r;
        return true;
    }
}

static void conn_consume(conn *c, size_t n)
{
    memmove(c->buf, c->buf + n, c->len - n);
    c->len -= n;
}

/* Connects to the endpoint's host and port (TLS for https://). */
static void conn_open(conn *c, const char *endpoint, char *host, size_t hostlen, bool *tls)
{
    *tls = strncmp(endpoint, "https://", 8) == 0;
    const char *p = endpoint + (*tls ? 8 : 7);
    size_t n = strcspn(p, "/?#");
    char hostport[300];
    if (n == 0 || n >= sizeof(hostport))
        kcli_usage_error(cmd_name, "invalid --endpoint '%s'", endpoint);
    memcpy(hostport, p, n);
    hostport[n] = 0;
    /* the Host header carries host and port as the URL wrote them */
    snprintf(host, hostlen, "%.*s", (int)(n < hostlen ? n : hostlen - 1), p);
    const char *port = *tls ? "443" : "80";
    char *h = hostport;
    if (*h == '[') {
        char *end = strchr(h, ']');
        if (!end)
            kcli_usage_error(cmd_name, "invalid --endpoint '%s'", endpoint);
        *end = 0;
        h++;
        if (end[1] == ':')
            port = end + 2;
    } else {
        char *colon = strrchr(h, ':');
        if (colon) {
            *colon = 0;
            port = colon + 1;
        }
    }
    struct addrinfo hints = {.ai_socktype = SOCK_STREAM}, *res = NULL;
    int gai = getaddrinfo(h, port, &hints, &res);
    if (gai != 0)
        fail("cannot reach kumod at %s: %s", endpoint, gai_strerror(gai));
    c->fd = -1;
    int err = 0;
    for (struct addrinfo *a = res; a && c->fd < 0; a = a->ai_next) {
        int fd = socket(a->ai_family, a->ai_socktype | SOCK_CLOEXEC, a->ai_protocol);
        if (fd < 0)
            continue;
        if (connect(fd, a->ai_addr, a->ai_addrlen) == 0) {
            c->fd = fd;
        } else {
            err = errno;
            close(fd);
        }
    }
    freeaddrinfo(res);
    if (c->fd < 0)
        fail("cannot reach kumod at %s: %s", endpoint, strerror(err));
    if (!*tls)
        return;
    c->ctx = SSL_CTX_new(TLS_client_method());
    if (!c->ctx || SSL_CTX_set_default_verify_paths(c->ctx) != 1)
        fail("cannot set up TLS");
    SSL_CTX_set_verify(c->ctx, SSL_VERIFY_PEER, NULL);
    c->ssl = SSL_new(c->ctx);
    if (!c->ssl || SSL_set_fd(c->ssl, c->fd) != 1 || SSL_set_tlsext_host_name(c->ssl, h) != 1 ||
        SSL_set1_host(c->ssl, h) != 1)
        fail("cannot set up TLS");
    if (SSL_connect(c->ssl) != 1) {
        char e[256];
        ERR_error_string_n(ERR_get_error(), e, sizeof(e));
        fail("TLS handshake with %s failed: %s", endpoint, e);
    }
}

/* The opening handshake (RFC 6455 §4.1). */
static void ws_handshake(conn *c, const char *host, const char *path)
{
    char key[25], want[29];
    if (ws_client_key(key) != 0)
        fail("no randomness for the websocket key");
    ws_accept_key(key, want);
    char req[1024];
    int n = snprintf(req, sizeof(req),
                     "GET %s HTTP/1.1\r\nHost: %s\r\nUser-Agent: kcli (kumod)\r\n"
                     "Upgrade: websocket\r\nConnection: Upgrade\r\n"
                     "Sec-WebSocket-Key: %s\r\nSec-WebSocket-Version: 13\r\n\r\n",
                     path, host, key);
    conn_write(c, req, (size_t)n);
    uint8_t *end = NULL;
    for (;;) {
        if (c->len >= 4)
            for (size_t i = 0; i + 4 <= c->len && !end; i++)
                if (memcmp(c->buf + i, "\r\n\r\n", 4) == 0)
                    end = c->buf + i + 4;
        if (end)
            break;
        if (c->len > 65536 || !conn_fill(c))
            fail("kumod closed the connection during the websocket handshake");
    }
    size_t hl = (size_t)(end - c->buf);
    char *head = strndup((char *)c->buf, hl);
    if (!head)
        fail("out of memory");
    int status = 0;
    sscanf(head, "HTTP/1.%*d %d", &status);
    if (status != 101) {
        /* an HTTP error: show its body (Content-Length bytes, or what came) */
        long clen = -1;
        for (char *l = strstr(head, "\r\n"); l; l = strstr(l + 2, "\r\n"))
            if (strncasecmp(l + 2, "Content-Length:", 15) == 0)
                clen = strtol(l + 17, NULL, 10);
        conn_consume(c, hl);
        while (clen >= 0 && c->len < (size_t)clen && c->len < 65536 && conn_fill(c))
            ;
        size_t bl = clen >= 0 && (size_t)clen < c->len ? (size_t)clen : c->len;
        fail("request status %d. Response body: %.*s", status, (int)bl, (char *)c->buf);
    }
    bool ok = false;
    for (char *l = strstr(head, "\r\n"); l; l = strstr(l + 2, "\r\n")) {
        if (strncasecmp(l + 2, "Sec-WebSocket-Accept:", 21) == 0) {
            const char *v = l + 23;
            while (*v == ' ')
                v++;
            ok = strncmp(v, want, 28) == 0;
        }
    }
    free(head);
    if (!ok)
        fail("the server's Sec-WebSocket-Accept does not match the key");
    conn_consume(c, hl);
}

/* Sends one masked frame (§5.3: clients mask everything). */
static void ws_send(conn *c, uint8_t op, const void *p, size_t n)
{
    uint8_t *f = malloc(n + 14);
    if (!f)
        fail("out of memory");
    size_t fl = ws_client_frame(f, op, p, n);
    if (fl == 0)
        fail("no randomness for the frame mask");
    conn_write(c, f, fl);
    free(f);
}

/* ---- rendering ---------------------------------------------------------------------------------- */

typedef struct opts {
    bool client, json, only_new, only_one, terse, color;
} opts;

static int64_t parse_when(const char *s)
{
    struct tm tm = {0};
    int y, mo, d, h, mi, sec;
    char frac[16] = "";
    if (!s || sscanf(s, "%d-%d-%dT%d:%d:%d.%15[0-9]", &y, &mo, &d, &h, &mi, &sec, frac) < 6)
        return 0;
    tm.tm_year = y - 1900;
    tm.tm_mon = mo - 1;
    tm.tm_mday = d;
    tm.tm_hour = h;
    tm.tm_min = mi;
    tm.tm_sec = sec;
    int64_t ns = 0;
    for (int i = 0; i < 9; i++)
        ns = ns * 10 + (frac[i] && i < (int)strlen(frac) ? frac[i] - '0' : 0);
    return (int64_t)timegm(&tm) * 1000000000 + ns;
}

/* chrono's Display of a DateTime<Utc>: "2024-05-01 12:00:00.123 UTC", the
 * fraction in 3, 6 or 9 digits (none when zero). */
static void when_display(const char *s, char *out, size_t len)
{
    int64_t ns = parse_when(s);
    time_t secs = (time_t)(ns / 1000000000);
    long frac = (long)(ns % 1000000000);
    struct tm tm;
    gmtime_r(&secs, &tm);
    char base[32], f[16] = "";
    strftime(base, sizeof(base), "%Y-%m-%d %H:%M:%S", &tm);
    if (frac % 1000000 == 0 && frac)
        snprintf(f, sizeof(f), ".%03ld", frac / 1000000);
    else if (frac % 1000 == 0 && frac)
        snprintf(f, sizeof(f), ".%06ld", frac / 1000);
    else if (frac)
        snprintf(f, sizeof(f), ".%09ld", frac);
    snprintf(out, len, "%s%s UTC", base, f);
}

/* Rust's `{:>5.0?}` of a Duration: the unit Debug picks (s, ms, µs, ns),
 * rounded to a whole number, right-aligned in 5 columns. */
static void delta_display(int64_t ns, char *out, size_t len)
{
    if (ns < 0)
        ns = 0;
    char v[32];
    if (ns >= 1000000000)
        snprintf(v, sizeof(v), "%llds", (long long)((ns + 500000000) / 1000000000));
    else if (ns >= 1000000)
        snprintf(v, sizeof(v), "%lldms", (long long)((ns + 500000) / 1000000));
    else if (ns >= 1000)
        snprintf(v, sizeof(v), "%lldµs", (long long)((ns + 500) / 1000));
    else
        snprintf(v, sizeof(v), "%lldns", (long long)ns);
    /* µ is two bytes and one column */
    int width = (int)strlen(v) - (strstr(v, "µ") ? 1 : 0);
    snprintf(out, len, "%*s%s", width < 5 ? 5 - width : 0, "", v);
}

/* Rust's str::escape_debug for one line. */
static void print_escaped(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char ch = (unsigned char)s[i];
        const char *esc = ch == '\t'   ? "\\t"
                          : ch == '\r' ? "\\r"
                          : ch == '\n' ? "\\n"
                          : ch == '\\' ? "\\\\"
                          : ch == '\'' ? "\\'"
                          : ch == '"'  ? "\\\""
                                       : NULL;
        if (esc)
            fputs(esc, stdout);
        else if (ch < 0x20 || ch == 0x7F)
            printf("\\u{%x}", ch);
        else
            putchar(ch);
    }
}

/* Prints each line of data (Rust's str::lines: split at LF, a CR before
 * it dropped; no empty last line) as prefix + line + suffix. trim drops
 * trailing whitespace first. With terse_bytes, stops after the first line
 * and prints "=== bytes <verb>=N" instead of the rest. */
static void print_lines(const char *pre, const char *arrow, const char *color, const char *normal,
                        const char *data, bool trim, bool terse, const char *verb)
{
    size_t n = strlen(data);
    if (trim)
        while (n && (data[n - 1] == ' ' || data[n - 1] == '\t' || data[n - 1] == '\r' ||
                     data[n - 1] == '\n'))
            n--;
    size_t i = 0, idx = 0;
    while (i < n) {
        const char *lf = memchr(data + i, '\n', n - i);
        size_t e = lf ? (size_t)(lf - data) : n;
        size_t le = e;
        if (le > i && data[le - 1] == '\r')
            le--;
        if (idx > 0 && terse) {
            printf("%s === bytes %s=%zu\n", pre, verb, strlen(data));
            return;
        }
        printf("%s %s%s", pre, color, arrow);
        print_escaped(data + i, le - i);
        printf("%s\n", normal);
        idx++;
        i = lf ? e + 1 : n;
    }
}

typedef struct conn_state {
    char *key;
    json_t *meta;
    int64_t opened;
    struct conn_state *next;
} conn_state;

static conn_state *states;

static conn_state *state_get(const char *key)
{
    for (conn_state *s = states; s; s = s->next)
        if (strcmp(s->key, key) == 0)
            return s;
    return NULL;
}

static void state_remove(const char *key)
{
    for (conn_state **pp = &states; *pp; pp = &(*pp)->next) {
        if (strcmp((*pp)->key, key) == 0) {
            conn_state *s = *pp;
            *pp = s->next;
            free(s->key);
            json_decref(s->meta);
            free(s);
            return;
        }
    }
}

static int cmp_str(const void *a, const void *b)
{
    return strcmp(*(const char *const *)a, *(const char *const *)b);
}

/* Prints what changed in the connection meta, keys in order. */
static void print_meta_diff(const char *pre, const json_t *prior, const json_t *now)
{
    if (!json_is_object(prior) || !json_is_object(now)) {
        char *j = json_dumps(now, JSON_COMPACT | JSON_ENCODE_ANY);
        printf("%s === conn_meta updated to %s\n", pre, j ? j : "null");
        free(j);
        return;
    }
    size_t n = json_object_size(prior) + json_object_size(now), k = 0;
    const char **keys = calloc(n + 1, sizeof(*keys));
    if (!keys)
        fail("out of memory");
    const char *key;
    json_t *v;
    json_object_foreach((json_t *)prior, key, v) keys[k++] = key;
    qsort(keys, k, sizeof(*keys), cmp_str);
    for (size_t i = 0; i < k; i++) {
        json_t *nv = json_object_get(now, keys[i]);
        if (!nv) {
            printf("%s === conn_meta deleted %s\n", pre, keys[i]);
        } else if (!json_equal(nv, json_object_get(prior, keys[i]))) {
            char *j = json_dumps(nv, JSON_COMPACT | JSON_ENCODE_ANY);
            printf("%s === conn_meta %s=%s\n", pre, keys[i], j ? j : "null");
            free(j);
        }
    }
    k = 0;
    json_object_foreach((json_t *)now, key, v) if (!json_object_get(prior, key)) keys[k++] = key;
    qsort(keys, k, sizeof(*keys), cmp_str);
    for (size_t i = 0; i < k; i++) {
        char *j = json_dumps(json_object_get(now, keys[i]), JSON_COMPACT | JSON_ENCODE_ANY);
        printf("%s === conn_meta %s=%s\n", pre, keys[i], j ? j : "null");
        free(j);
    }
    free(keys);
}

static char *wanted_key;

/* Renders one event; returns false when --only-one is satisfied. */
static bool render(const opts *o, const char *text, size_t len)
{
    json_error_t jerr;
    json_t *ev = json_loadb(text, len, 0, &jerr);
    if (!ev)
        fail("unparsable event from kumod: %s", jerr.text);
    json_t *meta = json_object_get(ev, "conn_meta");
    json_t *payload = json_object_get(ev, "payload");
    const char *when = json_string_value(json_object_get(ev, "when"));
    char key[600] = "";
    if (meta && !json_is_null(meta)) {
        if (o->client) {
            const char *id = json_string_value(json_object_get(meta, "id"));
            if (!id)
                fail("conn_meta is missing id");
            snprintf(key, sizeof(key), "%s", id);
        } else {
            const char *from = json_string_value(json_object_get(meta, "received_from"));
            const char *via = json_string_value(json_object_get(meta, "received_via"));
            if (!from || !via)
                fail("conn_meta is missing received_from or received_via");
            snprintf(key, sizeof(key), "%s->%s", from, via);
        }
    }
    const char *unit = json_string_value(payload); /* "Connected", "Closed"... */
    const char *first = o->client ? "BeginSession" : "Connected";
    if (wanted_key && strcmp(wanted_key, key) != 0 && key[0]) {
        json_decref(ev);
        return true;
    }
    int64_t now = parse_when(when);
    conn_state *st = state_get(key);
    char delta[64];
    if (st) {
        delta_display(now - st->opened, delta, sizeof(delta));
    } else {
        if (o->only_new && !(unit && strcmp(unit, first) == 0)) {
            json_decref(ev);
            return true;
        }
        if (o->only_one && !wanted_key)
            wanted_key = strdup(key);
        st = calloc(1, sizeof(*st));
        if (!st || !(st->key = strdup(key)))
            fail("out of memory");
        st->meta = json_object();
        st->opened = now;
        st->next = states;
        states = st;
        snprintf(delta, sizeof(delta), "     ");
    }
    const char *cyan = o->color ? "\033[36m" : "", *green = o->color ? "\033[32m" : "";
    const char *red = o->color ? "\033[31m" : "", *normal = o->color ? "\033[0m" : "";
    char pre[700];
    snprintf(pre, sizeof(pre), "[%s] %s", key, delta);
    bool go_on = true, closed = false;
    json_t *v;
    char wd[64];
    if (o->json) {
        /* the event as it came, after the --only-* selection */
        fwrite(text, 1, len, stdout);
        putchar('\n');
        fflush(stdout);
        if (unit && strcmp(unit, "Closed") == 0) {
            state_remove(key);
            go_on = !o->only_one;
        }
        json_decref(ev);
        return go_on;
    }
    if (unit) {
        if (strcmp(unit, "Connected") == 0 && !o->client) {
            when_display(when, wd, sizeof(wd));
            printf("%s === Connected %s\n", pre, wd);
        } else if (strcmp(unit, "BeginSession") == 0) {
            when_display(when, wd, sizeof(wd));
            printf("%s === BeginSession %s\n", pre, wd);
        } else if (strcmp(unit, "Closed") == 0) {
            state_remove(key);
            st = NULL;
            closed = true;
            printf("%s === Closed\n", pre);
            go_on = !o->only_one;
        } else {
            printf("%s === %s\n", pre, unit);
        }
    } else if ((v = json_object_get(payload, "Read"))) {
        if (o->client)
            print_lines(pre, " <- ", cyan, normal, json_string_value(v) ?: "", false, false,
                        "read");
        else
            print_lines(pre, " -> ", green, normal, json_string_value(v) ?: "", true, o->terse,
                        "read");
    } else if ((v = json_object_get(payload, "Write"))) {
        if (o->client)
            print_lines(pre, "->  ", green, normal, json_string_value(v) ?: "", true, o->terse,
                        "written");
        else
            print_lines(pre, "<-  ", cyan, normal, json_string_value(v) ?: "", false, false,
                        "written");
    } else if ((v = json_object_get(payload, "AbbreviatedRead")) ||
               (v = json_object_get(payload, "AbbreviatedWrite"))) {
        bool rd = json_object_get(payload, "AbbreviatedRead") != NULL;
        const char *sn = json_string_value(json_object_get(v, "snippet"));
        printf("%s %s%s", pre, rd ? green : green, rd ? " -> " : "->  ");
        print_escaped(sn ? sn : "", sn ? strlen(sn) : 0);
        printf("%s\n%s === bytes %s=%lld\n", normal, pre, rd ? "read" : "written",
               (long long)json_integer_value(json_object_get(v, "len")));
    } else if ((v = json_object_get(payload, "Diagnostic"))) {
        const char *level = json_string_value(json_object_get(v, "level"));
        const char *msg = json_string_value(json_object_get(v, "message"));
        bool err = level && strcmp(level, "ERROR") == 0;
        printf("%s === %s%s: %s%s\n", pre, err ? red : normal, level ? level : "",
               msg ? msg : "", normal);
    } else {
        char *j = json_dumps(payload, JSON_COMPACT | JSON_ENCODE_ANY);
        printf("%s === %s\n", pre, j ? j : "?");
        free(j);
    }
    if (!closed && st && meta && !json_equal(st->meta, meta)) {
        print_meta_diff(pre, st->meta, meta);
        json_decref(st->meta);
        st->meta = json_incref(meta);
    }
    fflush(stdout);
    json_decref(ev);
    return go_on;
}

/* ---- the command ------------------------------------------------------------------------------ */

enum {
    O_SOURCE = 1000,
    O_MX_ADDR,
    O_MX_HOST,
    O_DOMAIN,
    O_ROUTING,
    O_CAMPAIGN,
    O_TENANT,
    O_POOL,
    O_EGRESS_SOURCE,
    O_MAIL_FROM,
    O_RCPT_TO,
    O_READY_QUEUE,
    O_COLOR,
    O_ONLY_NEW,
    O_ONLY_ONE,
    O_TERSE,
    O_JSON,
};

/* Request field of each list option of trace-smtp-client. */
static const char *list_field(int ch)
{
    switch (ch) {
    case O_MX_HOST:
        return "mx_host";
    case O_DOMAIN:
        return "domain";
    case O_ROUTING:
        return "routing_domain";
    case O_CAMPAIGN:
        return "campaign";
    case O_TENANT:
        return "tenant";
    case O_POOL:
        return "egress_pool";
    case O_EGRESS_SOURCE:
        return "egress_source";
    case O_MAIL_FROM:
        return "mail_from";
    case O_RCPT_TO:
        return "rcpt_to";
    case O_READY_QUEUE:
        return "ready_queue";
    default:
        return NULL;
    }
}

static void add_cidr(json_t *req, const char *field, const char *v, const char *opt)
{
    cidr c;
    if (cidr_parse(v, &c) != 0)
        fail("invalid %s value(s): '%s' is not an address or CIDR block", opt, v);
    json_t *a = json_object_get(req, field);
    if (!a) {
        a = json_array();
        json_object_set_new(req, field, a);
    }
    json_array_append_new(a, json_string(v));
}

int kcli_trace(const char *endpoint, bool client, int argc, char **argv)
{
    cmd_name = client ? "trace-smtp-client" : "trace-smtp-server";
    static const struct option server_opts[] = {
        {"source", required_argument, NULL, O_SOURCE},
        {"color", required_argument, NULL, O_COLOR},
        {"only-new", no_argument, NULL, O_ONLY_NEW},
        {"only-one", no_argument, NULL, O_ONLY_ONE},
        {"terse", no_argument, NULL, O_TERSE},
        {"json", no_argument, NULL, O_JSON},
        {NULL, 0, NULL, 0},
    };
    static const struct option client_opts[] = {
        {"source", required_argument, NULL, O_SOURCE},
        {"mx-addr", required_argument, NULL, O_MX_ADDR},
        {"mx-host", required_argument, NULL, O_MX_HOST},
        {"domain", required_argument, NULL, O_DOMAIN},
        {"routing-domain", required_argument, NULL, O_ROUTING},
        {"campaign", required_argument, NULL, O_CAMPAIGN},
        {"tenant", required_argument, NULL, O_TENANT},
        {"egress-pool", required_argument, NULL, O_POOL},
        {"egress-source", required_argument, NULL, O_EGRESS_SOURCE},
        {"mail-from", required_argument, NULL, O_MAIL_FROM},
        {"rcpt-to", required_argument, NULL, O_RCPT_TO},
        {"ready-queue", required_argument, NULL, O_READY_QUEUE},
        {"color", required_argument, NULL, O_COLOR},
        {"only-new", no_argument, NULL, O_ONLY_NEW},
        {"only-one", no_argument, NULL, O_ONLY_ONE},
        {"terse", no_argument, NULL, O_TERSE},
        {"json", no_argument, NULL, O_JSON},
        {NULL, 0, NULL, 0},
    };
    opts o = {.client = client, .color = isatty(1)};
    json_t *req = json_object();
    if (client) {
        static const char *const lists[] = {"campaign",      "tenant",    "domain",
                                            "routing_domain", "egress_pool", "egress_source",
                                            "mail_from",     "rcpt_to",   "mx_host",
                                            "ready_queue"};
        for (size_t i = 0; i < sizeof(lists) / sizeof(lists[0]); i++)
            json_object_set_new(req, lists[i], json_array());
    }
    optind = 0;
    opterr = 0;
    int ch;
    while ((ch = getopt_long(argc, argv, ":", client ? client_opts : server_opts, NULL)) != -1) {
        const char *lf = list_field(ch);
        if (ch == O_SOURCE) {
            add_cidr(req, "source_addr", optarg, "--source");
        } else if (ch == O_MX_ADDR) {
            add_cidr(req, "mx_addr", optarg, "--mx-addr");
        } else if (lf) {
            json_array_append_new(json_object_get(req, lf), json_string(optarg));
        } else if (ch == O_COLOR) {
            if (strcmp(optarg, "tty") == 0)
                o.color = isatty(1);
            else if (strcmp(optarg, "yes") == 0)
                o.color = true;
            else if (strcmp(optarg, "no") == 0)
                o.color = false;
            else
                kcli_usage_error(cmd_name, "invalid value '%s' for '--color <COLOR>' (possible: tty, yes, no)", optarg);
        } else if (ch == O_ONLY_NEW) {
            o.only_new = true;
        } else if (ch == O_ONLY_ONE) {
            o.only_one = true;
        } else if (ch == O_TERSE) {
            o.terse = true;
        } else if (ch == O_JSON) {
            o.json = true;
        } else {
            kcli_bad_option(cmd_name, ch, argv);
        }
    }
    kcli_no_more_args(cmd_name, argc, argv);
    if (o.terse)
        json_object_set_new(req, "terse", json_true());
    if (o.json)
        o.color = false;

    conn c = {.fd = -1};
    char host[300];
    bool tls;
    conn_open(&c, endpoint, host, sizeof(host), &tls);
    ws_handshake(&c, host,
                 client ? "/api/admin/trace-smtp-client/v1" : "/api/admin/trace-smtp-server/v1");
    char *rq = json_dumps(req, JSON_COMPACT);
    json_decref(req);
    if (!rq)
        fail("out of memory");
    ws_send(&c, WS_OP_TEXT, rq, strlen(rq));
    free(rq);

    ws_msg msg = {.max = 64u * 1024 * 1024};
    int status = 0;
    for (bool go = true; go;) {
        ws_frame f;
        long used = ws_parse_frame(c.buf, c.len, false, msg.max, &f);
        if (used == WS_AGAIN) {
            if (!conn_fill(&c))
                break; /* the stream ended */
            continue;
        }
        if (used < 0)
            fail("malformed websocket frame from kumod (close code %ld)", -used);
        int r = ws_msg_feed(&msg, &f, c.buf + f.hdr_len);
        if (r < 0)
            fail("malformed websocket message from kumod (close code %d)", -r);
        if (r == WS_MSG_DATA) {
            go = render(&o, (char *)msg.data, msg.len);
            ws_msg_reset(&msg);
        } else if (r == WS_MSG_CONTROL) {
            if (f.opcode == WS_OP_PING) {
                ws_send(&c, WS_OP_PONG, c.buf + f.hdr_len, (size_t)f.len);
            } else if (f.opcode == WS_OP_CLOSE) {
                unsigned code = f.len >= 2 ? (unsigned)c.buf[f.hdr_len] << 8 | c.buf[f.hdr_len + 1]
                                           : WS_CLOSE_NORMAL;
                if (code != WS_CLOSE_NORMAL) {
                    fprintf(stderr, "kcli: %s: kumod closed the trace: %u %.*s\n", cmd_name, code,
                            f.len > 2 ? (int)f.len - 2 : 0, (char *)c.buf + f.hdr_len + 2);
                    status = 1;
                }
                uint8_t p[2] = {(uint8_t)(code >> 8), (uint8_t)code};
                ws_send(&c, WS_OP_CLOSE, p, 2);
                go = false;
            }
        }
        conn_consume(&c, (size_t)used);
    }
    ws_msg_fini(&msg);
    if (c.ssl)
        SSL_free(c.ssl);
    if (c.ctx)
        SSL_CTX_free(c.ctx);
    close(c.fd);
    free(c.buf);
    free(wanted_key);
    while (states)
        state_remove(states->key);
    return status;
}
