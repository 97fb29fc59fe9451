/* Fast reading of the spool meta document for start-up enumeration. */
#ifndef KUMOD_MSG_META_SCAN_H
#define KUMOD_MSG_META_SCAN_H
#include <stdbool.h>
#include <stddef.h>

/* The queue name the message would get from queue_name_of_message() and
 * whether the document carries a "schedule" object. 0 on success (*queue_out
 * malloc'd); KERR_AGAIN when the document is outside the subset read here
 * (the caller then parses it fully, which also reports real corruption). */
int meta_scan_queue(const char *buf, size_t len, char **queue_out, bool *has_schedule);

#endif
