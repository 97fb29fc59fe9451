/* SO_REUSEPORT listening sockets, with a check that the port is ours. */
#include "net/listen.h"

#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <string.h>
#include <unistd.h>

#include "net/sockaddr.h"

/* 0 when nothing listens on addr; -EADDRINUSE when something does. A
 * socket in TIME_WAIT does not count (SO_REUSEADDR), a listening one
 * does, whatever its options. */
static int probe_free(const struct sockaddr_storage *addr, socklen_t len)
{
    int fd = socket(addr->ss_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1, rc = 0;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        bind(fd, (const struct sockaddr *)addr, len) != 0)
        rc = -errno;
    close(fd);
    return rc;
}

int net_listen_reuseport(struct sockaddr_storage *addr, socklen_t len, bool first, bool nodelay)
{
    if (first && net_sockaddr_port(addr) != 0) {
        int rc = probe_free(addr, len);
        if (rc != 0)
            return rc;
    }
    int fd = socket(addr->ss_family, SOCK_STREAM | SOCK_NONBLOCK | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return -errno;
    int one = 1;
    if (setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)) != 0 ||
        setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)) != 0 ||
        (nodelay && setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)) != 0) ||
        bind(fd, (const struct sockaddr *)addr, len) != 0 || listen(fd, 1024) != 0) {
        int rc = -errno;
        close(fd);
        return rc;
    }
    /* Port 0: the kernel picked one for the first socket; the others join
     * that same port, so the listener is one port, as configured. */
    if (net_sockaddr_port(addr) == 0) {
        struct sockaddr_storage bound;
        socklen_t bl = sizeof(bound);
        if (getsockname(fd, (struct sockaddr *)&bound, &bl) == 0)
            net_sockaddr_set_port(addr, net_sockaddr_port(&bound));
    }
    return fd;
}

const char *net_listen_strerror(int rc)
{
    if (rc == -EADDRINUSE)
        return "address already in use (another listener of this kumod or another process "
               "listens on it)";
    return strerror(-rc);
}
