/* Numeric socket address parsing and formatting shared by the listeners. */
#include "net/sockaddr.h"

#include <arpa/inet.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/kerr.h"

int net_parse_hostport(const char *s, struct sockaddr_storage *ss, socklen_t *len)
{
    char host[256];
    const char *port;
    if (s[0] == '[') {
        const char *close = strchr(s, ']');
        if (!close || close[1] != ':')
            return KERR_PARSE;
        snprintf(host, sizeof(host), "%.*s", (int)(close - s - 1), s + 1);
        port = close + 2;
    } else {
        const char *colon = strrchr(s, ':');
        if (!colon)
            return KERR_PARSE;
        snprintf(host, sizeof(host), "%.*s", (int)(colon - s), s);
        port = colon + 1;
    }
    /* getaddrinfo takes "99999" and wraps it to another port: only 0-65535 */
    if (!*port || strspn(port, "0123456789") != strlen(port) || strlen(port) > 5 ||
        atol(port) > 65535)
        return KERR_PARSE;
    struct addrinfo hints = {.ai_flags = AI_NUMERICHOST | AI_NUMERICSERV | AI_PASSIVE,
                             .ai_socktype = SOCK_STREAM};
    struct addrinfo *res;
    if (getaddrinfo(host, port, &hints, &res) != 0)
        return KERR_PARSE;
    memcpy(ss, res->ai_addr, res->ai_addrlen);
    *len = res->ai_addrlen;
    freeaddrinfo(res);
    return 0;
}

void net_format_addr(const struct sockaddr *sa, char *ip, size_t iplen, char *full,
                        size_t fulllen)
{
    char tmp[INET6_ADDRSTRLEN] = "unknown";
    int port = 0;
    if (sa && sa->sa_family == AF_INET) {
        const struct sockaddr_in *in = (const struct sockaddr_in *)sa;
        inet_ntop(AF_INET, &in->sin_addr, tmp, sizeof(tmp));
        port = ntohs(in->sin_port);
        if (full)
            snprintf(full, fulllen, "%s:%d", tmp, port);
    } else if (sa && sa->sa_family == AF_INET6) {
        const struct sockaddr_in6 *in6 = (const struct sockaddr_in6 *)sa;
        inet_ntop(AF_INET6, &in6->sin6_addr, tmp, sizeof(tmp));
        port = ntohs(in6->sin6_port);
        if (full)
            snprintf(full, fulllen, "[%s]:%d", tmp, port);
    } else if (full) {
        snprintf(full, fulllen, "unknown");
    }
    if (ip)
        snprintf(ip, iplen, "%s", tmp);
}

int net_sockaddr_port(const struct sockaddr_storage *ss)
{
    if (ss->ss_family == AF_INET)
        return ntohs(((const struct sockaddr_in *)ss)->sin_port);
    if (ss->ss_family == AF_INET6)
        return ntohs(((const struct sockaddr_in6 *)ss)->sin6_port);
    return -1;
}

void net_sockaddr_set_port(struct sockaddr_storage *ss, int port)
{
    if (ss->ss_family == AF_INET)
        ((struct sockaddr_in *)ss)->sin_port = htons((uint16_t)port);
    else if (ss->ss_family == AF_INET6)
        ((struct sockaddr_in6 *)ss)->sin6_port = htons((uint16_t)port);
}
