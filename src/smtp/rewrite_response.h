/* The smtp_server_rewrite_response event: the policy may change a reply
 * (status and text) just before the SMTP server sends it. Runs on the
 * session's reactor, inside sess_reply. */
#ifndef KUMOD_SMTP_REWRITE_RESPONSE_H
#define KUMOD_SMTP_REWRITE_RESPONSE_H
#include <jansson.h>
#include <stdbool.h>

/* Calls the event (when the policy has a handler) with *code, msg (lines
 * separated by '\n', no status prefixes), command (the command answered,
 * NULL for unilateral replies) and the connection's meta (borrowed).
 * Returns true when the handler changed something: *code holds the new
 * status and *out_msg a new text (malloc'd, owned by the caller) or NULL
 * when only the status changed. Any failure (a Lua error, a handler that
 * waits, a status that is not an SMTP reply code, a text with NUL or bare
 * CR) is logged and leaves the reply unchanged, as documented. */
bool smtpsrv_rewrite_response(int *code, const char *msg, const char *command, json_t *meta,
                              char **out_msg);

#endif
