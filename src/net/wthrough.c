/* Write-through for plain bufferevents; see wthrough.h. */
#include "net/wthrough.h"

#include <event2/buffer.h>
#include <event2/bufferevent.h>

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
