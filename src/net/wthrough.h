/* Write-through and direct reads for plain (not TLS-filtered) connections,
 * shared by the SMTP server and client.
 *
 * Replies and commands collect in the connection's own evbuffer (outq; a
 * bufferevent's output cannot be drained from outside while libevent owns
 * it) and leave with one writev as soon as a command or a pipelined group is
 * complete, instead of arming EV_WRITE and waiting for the next loop turn:
 * no epoll_ctl pair and no extra wake-up per reply. Whatever the kernel does
 * not take, or anything that would overtake bytes libevent is still
 * writing, moves to the bufferevent's output, which finishes the job with
 * EV_WRITE and its write timeout. */
#ifndef KUMOD_NET_WTHROUGH_H
#define KUMOD_NET_WTHROUGH_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/types.h>

struct bufferevent;
struct evbuffer;

/* Reading side: one readv of up to max bytes straight into in. libevent's
 * evbuffer_read asks the kernel how much is queued (ioctl FIONREAD) before
 * every read and then takes at most 4 KiB; connections that read for
 * themselves (their own EV_READ event) skip that probe and take a whole
 * command group or body segment at once. Returns the bytes read, 0 at end
 * of stream, -1 with errno (EAGAIN: nothing yet). */
ssize_t net_read_some(struct evbuffer *in, int fd, size_t max);

/* Writes outq to bev's socket now when bev's output is empty; moves what is
 * left to bev's output. True when all of outq left at once (nothing is
 * pending in either buffer); false when the caller must let libevent
 * finish (enable EV_WRITE when it keeps it off between replies). */
bool net_write_through(struct evbuffer *outq, struct bufferevent *bev);

/* Nothing of ours waits to be written: neither outq (ignored when NULL, for
 * a TLS-filtered connection that writes through the filter) nor bev's
 * output. */
bool net_out_empty(const struct evbuffer *outq, struct bufferevent *bev);

#endif
