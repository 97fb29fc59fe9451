/* Start-up recovery: the spool enumeration that puts every message found
 * back into its scheduled queue (see recovery.c). */
#ifndef KUMOD_QUEUE_RECOVERY_H
#define KUMOD_QUEUE_RECOVERY_H

/* Marks the spool ready (listeners stop answering 421, injection stops
 * answering 503) and starts enumerating it in the background. The line
 * "spool enumeration done" is logged once every message found is back in
 * its scheduled queue. Call once, from the main thread, after queue_init()
 * and once the spool is open. Returns 0. */
int recovery_start(void);

#endif
