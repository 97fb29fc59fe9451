/* kcli explain: one message's story (GET /api/admin/explain/v1; see
 * explain.c). */
#ifndef KUMOD_KCLI_EXPLAIN_H
#define KUMOD_KCLI_EXPLAIN_H
#include <jansson.h>

/* kcli.c: one admin API request whose 2xx JSON answer is returned (owned
 * by the caller); any other answer ends kcli with the server's message. */
json_t *kcli_request_json(const char *method, const char *path, const char *query,
                          const json_t *body);

/* Runs the command with its own argv (argv[0] is the command name).
 * Returns the exit status (usage errors exit 2). */
int kcli_explain(int argc, char **argv);

#endif
