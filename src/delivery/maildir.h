/* The maildir delivery protocol (a direct protocol: see queue/dispatch.h). */
#ifndef KUMOD_DELIVERY_MAILDIR_H
#define KUMOD_DELIVERY_MAILDIR_H

/* Registers the driver for QPROTO_MAILDIR. Call at start-up, before the
 * first message is queued. */
void maildir_register(void);

#endif
