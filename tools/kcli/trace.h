/* kcli trace-smtp-server / trace-smtp-client: live SMTP traces streamed
 * from kumod over a websocket (see trace.c). */
#ifndef KUMOD_KCLI_TRACE_H
#define KUMOD_KCLI_TRACE_H
#include <stdbool.h>

/* Runs the command with its own argv (argv[0] is the command name) against
 * endpoint (http:// or https://). client selects trace-smtp-client.
 * Returns the exit status: 0 (the stream ended), 1 (failure), 2 (usage). */
int kcli_trace(const char *endpoint, bool client, int argc, char **argv);

#endif
