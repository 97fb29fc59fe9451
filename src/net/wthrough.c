/* Write-through and direct reads for plain connections; see wthrough.h. */
#include "net/wthrough.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>
#include <sys/uio.h>

bool net_write_through(struct evbuffer *outq, struct bufferevent *bev)
{
    struct evbuffer *bout = bufferevent_get_output(bev);
    if (evbuffer_get_length(outq) == 0)
        return evbuffer_get_length(bout) == 0;
    if (evbuffer_get_length(bout) == 0)
        (void)evbuffer_write(outq, bufferevent_getfd(bev));
    if (evbuffer_get_length(outq) == 0)
        return true;
    /* the socket is full, or libevent is still writing earlier bytes */
    evbuffer_add_buffer(bout, outq);
    return false;
}

bool net_out_empty(const struct evbuffer *outq, struct bufferevent *bev)
{
    return evbuffer_get_length(bufferevent_get_output(bev)) == 0 &&
           (outq == NULL || evbuffer_get_length(outq) == 0);
}

ssize_t net_read_some(struct evbuffer *in, int fd, size_t max)
{
    struct evbuffer_iovec v[2];
    int n = evbuffer_reserve_space(in, (ev_ssize_t)max, v, 2);
    if (n <= 0)
        return -1;
    struct iovec iov[2];
    size_t left = max;
    for (int i = 0; i < n; i++) {
        size_t l = v[i].iov_len < left ? v[i].iov_len : left;
        iov[i].iov_base = v[i].iov_base;
        iov[i].iov_len = l;
        left -= l;
    }
    ssize_t r = readv(fd, iov, n);
    if (r <= 0)
        return r;
    size_t got = (size_t)r;
    int used = 0;
    while (got > 0) {
        size_t l = iov[used].iov_len < got ? iov[used].iov_len : got;
        v[used].iov_len = l;
        got -= l;
        used++;
    }
    return evbuffer_commit_space(in, v, used) == 0 ? r : -1;
}
