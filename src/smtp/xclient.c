/* XCLIENT attribute parsing (see xclient.h). Values are decoded from xtext
 * and checked: ADDR and DESTADDR are IPv4 or IPv6 addresses (Postfix's
 * "IPV6:" prefix is accepted), PORT and DESTPORT decimal 0..65535, HELO a
 * domain or address literal of at most 255 bytes, LOGIN a UTF-8 name;
 * "[UNAVAILABLE]" clears HELO and LOGIN. NAME and PROTO are refused as
 * KumoMTA refuses every attribute it does not support. Pure; any thread. */
#include "smtp/xclient.h"

#include <arpa/inet.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "core/kerr.h"
#include "core/utf8.h"

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    if (c >= 'A' && c <= 'F')
        return c - 'A' + 10;
    return -1;
}

/* xtext: printable ASCII without space; "+HH" stands for a byte. */
static int xtext_decode(const char *in, size_t n, char *out, size_t cap)
{
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)in[i];
        if (c < 0x21 || c > 0x7e)
            return -1;
        if (c == '+') {
            if (i + 2 >= n)
                return -1;
            int hi = hexval(in[i + 1]), lo = hexval(in[i + 2]);
            if (hi < 0 || lo < 0)
                return -1;
            c = (unsigned char)(hi << 4 | lo);
            i += 2;
        }
        if (o + 1 >= cap)
            return -1;
        out[o++] = (char)c;
    }
    out[o] = 0;
    if (memchr(out, 0, o) || !utf8_valid(out, o))
        return -1;
    return (int)o;
}

static bool parse_ip(const char *v, struct sockaddr_storage *out)
{
    memset(out, 0, sizeof(*out));
    if (strncasecmp(v, "IPV6:", 5) == 0)
        v += 5;
    struct sockaddr_in *a4 = (struct sockaddr_in *)out;
    struct sockaddr_in6 *a6 = (struct sockaddr_in6 *)out;
    if (inet_pton(AF_INET, v, &a4->sin_addr) == 1) {
        a4->sin_family = AF_INET;
        return true;
    }
    if (inet_pton(AF_INET6, v, &a6->sin6_addr) == 1) {
        a6->sin6_family = AF_INET6;
        return true;
    }
    return false;
}

static bool parse_port(const char *v, int *out)
{
    if (!*v || strlen(v) > 5)
        return false;
    for (const char *p = v; *p; p++)
        if (*p < '0' || *p > '9')
            return false;
    long n = strtol(v, NULL, 10);
    if (n > 65535)
        return false;
    *out = (int)n;
    return true;
}

static bool is_unavailable(const char *v)
{
    return strcasecmp(v, "[UNAVAILABLE]") == 0;
}

static bool valid_helo(const char *v)
{
    size_t n = strlen(v);
    if (n == 0 || n > 255)
        return false;
    for (size_t i = 0; i < n; i++)
        if ((unsigned char)v[i] <= ' ')
            return false;
    return true;
}

int xclient_parse(const char *args, xclient_req *out, char *reply, size_t replylen)
{
    memset(out, 0, sizeof(*out));
    const char *p = args;
    int count = 0;
    while (*p) {
        while (*p == ' ' || *p == '\t')
            p++;
        if (!*p)
            break;
        size_t len = strcspn(p, " \t");
        const char *eq = memchr(p, '=', len);
        if (!eq || eq == p || eq - p > 32) {
            snprintf(reply, replylen, "Syntax error in command or arguments");
            return KERR_PARSE;
        }
        char name[33];
        snprintf(name, sizeof(name), "%.*s", (int)(eq - p), p);
        char value[512];
        const char *raw = eq + 1;
        size_t rawlen = len - (size_t)(eq + 1 - p);
        if (rawlen == 0 || xtext_decode(raw, rawlen, value, sizeof(value)) < 0) {
            snprintf(reply, replylen, "Syntax error in command or arguments");
            return KERR_PARSE;
        }
        count++;
        if (strcasecmp(name, "ADDR") == 0 || strcasecmp(name, "DESTADDR") == 0) {
            bool dest = name[0] == 'D' || name[0] == 'd';
            if (!parse_ip(value, dest ? &out->destaddr : &out->addr)) {
                snprintf(reply, replylen, "%s %.200s is invalid", dest ? "DESTADDR" : "ADDR",
                         value);
                return KERR_PARSE;
            }
            *(dest ? &out->has_destaddr : &out->has_addr) = true;
        } else if (strcasecmp(name, "PORT") == 0 || strcasecmp(name, "DESTPORT") == 0) {
            bool dest = name[0] == 'D' || name[0] == 'd';
            if (!parse_port(value, dest ? &out->destport : &out->port)) {
                snprintf(reply, replylen, "%s %.200s is invalid", dest ? "DESTPORT" : "PORT",
                         value);
                return KERR_PARSE;
            }
            *(dest ? &out->has_destport : &out->has_port) = true;
        } else if (strcasecmp(name, "HELO") == 0) {
            if (!is_unavailable(value) && !valid_helo(value)) {
                snprintf(reply, replylen, "HELO %.200s is invalid", value);
                return KERR_PARSE;
            }
            snprintf(out->helo, sizeof(out->helo), "%.255s", is_unavailable(value) ? "" : value);
            out->has_helo = true;
        } else if (strcasecmp(name, "LOGIN") == 0) {
            if (strlen(value) > 255) {
                snprintf(reply, replylen, "LOGIN %.200s is invalid", value);
                return KERR_PARSE;
            }
            snprintf(out->login, sizeof(out->login), "%.255s", is_unavailable(value) ? "" : value);
            out->has_login = true;
        } else {
            snprintf(reply, replylen, "parameter %s is not supported", name);
            return KERR_PARSE;
        }
        p += len;
    }
    if (count == 0) {
        snprintf(reply, replylen, "Syntax error in command or arguments");
        return KERR_PARSE;
    }
    return 0;
}
