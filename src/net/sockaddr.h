/* Socket addresses as listeners and logs spell them: "ip:port",
 * "[ipv6]:port". Pure functions, any thread. */
#ifndef KUMOD_NET_SOCKADDR_H
#define KUMOD_NET_SOCKADDR_H
#include <stddef.h>
#include <sys/socket.h>

/* Parses a numeric "ip:port" or "[ip6]:port". 0 or KERR_PARSE. */
int net_parse_hostport(const char *s, struct sockaddr_storage *ss, socklen_t *len);
/* The port of an AF_INET/AF_INET6 address (-1 for other families). */
int net_sockaddr_port(const struct sockaddr_storage *ss);
void net_sockaddr_set_port(struct sockaddr_storage *ss, int port);
/* Writes the address alone into ip and "ip:port" / "[ip6]:port" into full
 * (either may be NULL); "unknown" for other families. */
void net_format_addr(const struct sockaddr *sa, char *ip, size_t iplen, char *full,
                     size_t fulllen);

#endif
