/* CIDR lists ("127.0.0.1", "10.0.0.0/8", "::1", "fe80::/10") and matching
 * of socket addresses against them. Immutable after parsing; any thread. */
#ifndef KUMOD_NET_CIDR_H
#define KUMOD_NET_CIDR_H
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

typedef struct cidr {
    int family; /* AF_INET or AF_INET6 */
    uint8_t addr[16];
    int prefix;
} cidr;

typedef struct cidr_list {
    cidr *items;
    size_t n;
} cidr_list;

int cidr_parse(const char *s, cidr *out);
/* From a JSON array of strings (or a single string). On error writes the
 * offending entry into err. */
int cidr_list_from_json(const json_t *j, cidr_list *out, char *err, size_t errlen);
int cidr_list_add(cidr_list *l, const char *s);
void cidr_list_fini(cidr_list *l);
bool cidr_list_match(const cidr_list *l, const struct sockaddr *sa);
bool cidr_list_match_str(const cidr_list *l, const char *ip);

#endif
