/* Listening sockets shared by reactors: each reactor accepts on its own
 * SO_REUSEPORT socket for a listener, and the kernel spreads connections
 * over them. */
#ifndef KUMOD_NET_LISTEN_H
#define KUMOD_NET_LISTEN_H
#include <stdbool.h>
#include <sys/socket.h>

/* Opens, binds and listens a non-blocking SO_REUSEPORT socket on *addr.
 *
 * first: this is the listener's first socket. Then the address must be
 * free: SO_REUSEPORT would otherwise let it join a port that another
 * kumod listener (an SMTP and an HTTP listener configured on the same
 * port) or another process of the same user already listens on, and
 * connections would be shared silently between them. A probe bind without
 * SO_REUSEPORT finds that and fails with EADDRINUSE. With port 0, the port
 * the kernel picked is written back into *addr, so that later sockets of
 * the listener join it.
 *
 * nodelay sets TCP_NODELAY. Returns the descriptor, or -errno. */
int net_listen_reuseport(struct sockaddr_storage *addr, socklen_t len, bool first, bool nodelay);

/* The text for a failure of net_listen_reuseport (-rc is the errno). */
const char *net_listen_strerror(int rc);

#endif
