/* Start-up recovery: the spool enumeration that puts every message found
 * back into its scheduled queue (see recovery.c). */
#ifndef KUMOD_QUEUE_RECOVERY_H
#define KUMOD_QUEUE_RECOVERY_H
#include <jansson.h>

/* Marks the spool ready (listeners stop answering 421, injection stops
 * answering 503) and starts enumerating it in the background. The line
 * "spool enumeration done" is logged once every message found is back in
 * its scheduled queue. Call once, from the main thread, after queue_init()
 * and once the spool is open. Returns 0. */
int recovery_start(void);
/* The messages quarantined by this start-up's enumeration, as a JSON array
 * of {id, meta_size, copy}; the caller owns it. Any thread. */
json_t *recovery_quarantine_list(void);
/* Frees the quarantine list (at shutdown). */
void recovery_free(void);

#endif
