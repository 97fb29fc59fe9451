/* The XCLIENT command (Postfix's XCLIENT extension: a trusted client
 * tells the server whom it speaks for): parsing of its attributes.
 * Pure; any thread. The session applies the result (smtp/server.c). */
#ifndef KUMOD_SMTP_XCLIENT_H
#define KUMOD_SMTP_XCLIENT_H
#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

/* What EHLO lists after XCLIENT: KumoMTA's four, and HELO and LOGIN. */
#define XCLIENT_EHLO "XCLIENT ADDR PORT DESTADDR DESTPORT HELO LOGIN"

typedef struct xclient_req {
    bool has_addr, has_port, has_destaddr, has_destport, has_helo, has_login;
    struct sockaddr_storage addr, destaddr; /* port 0: only the address */
    int port, destport;
    char helo[256];  /* "" with has_helo: [UNAVAILABLE] (forget it) */
    char login[256]; /* "" with has_login: [UNAVAILABLE] (not authenticated) */
} xclient_req;

/* Parses what follows "XCLIENT ": name=xtext pairs separated by spaces
 * (names case-insensitive; values xtext-decoded, RFC 3461 §4). Returns 0,
 * or KERR_PARSE with the text of the 501 reply in reply. */
int xclient_parse(const char *args, xclient_req *out, char *reply, size_t replylen);

#endif
