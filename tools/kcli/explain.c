/* kcli explain ID: prints what kumod knows of one message, in order:
 * reception, each attempt with its response, the waits between them, the
 * current state (queue, due time and why then) and the outcome; for a
 * sampled message, the policy's steps (handlers entered, meta set, the
 * queue chosen) with the policy file:line of each. The
 * story is built by kumod (GET /api/admin/explain/v1) from its logs and
 * live queues; kcli only lays it out, or prints it as JSON with --json. */
#include "explain.h"

#include <curl/curl.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const char *s(const json_t *o, const char *k)
{
    const char *v = json_string_value(json_object_get(o, k));
    return v ? v : "";
}

static int usage(const char *why)
{
    fprintf(stderr, "kcli: %s\nUsage: kcli explain [--json] MESSAGE_ID\n", why);
    return 2;
}

int kcli_explain(int argc, char **argv)
{
    bool json = false;
    const char *id = NULL;
    for (int i = 1; i < argc; i++) {
        if (strcmp(argv[i], "--json") == 0)
            json = true;
        else if (argv[i][0] == '-')
            return usage("unknown option");
        else if (id)
            return usage("one message id only");
        else
            id = argv[i];
    }
    if (!id)
        return usage("a message id is required");
    char *eid = curl_easy_escape(NULL, id, 0);
    char *query = NULL;
    if (!eid || asprintf(&query, "id=%s", eid) < 0) {
        fprintf(stderr, "kcli: out of memory\n");
        return 1;
    }
    curl_free(eid);
    json_t *res = kcli_request_json("GET", "/api/admin/explain/v1", query, NULL);
    free(query);
    if (json) {
        char *t = json_dumps(res, JSON_INDENT(2));
        puts(t ? t : "");
        free(t);
        json_decref(res);
        return 0;
    }
    printf("message %s (created %s)\n", s(res, "id"), s(res, "created"));
    const json_t *m = json_object_get(res, "message");
    if (m) {
        char *r = json_dumps(json_object_get(m, "recipient"), JSON_ENCODE_ANY);
        printf("  %s -> %s\n", s(m, "sender"), r ? r : "");
        free(r);
    }
    size_t i;
    json_t *e;
    json_array_foreach(json_object_get(res, "events"), i, e)
    {
        const char *kind = s(e, "kind");
        printf("\n%-20s %-16s %s\n", s(e, "time"), kind, s(e, "summary"));
        if (*s(e, "response"))
            printf("%37s response: %s\n", "", s(e, "response"));
        static const char *const extra[] = {"ready_queue", "peer", "source", "tls",
                                            "classification", "due", "queue", "where"};
        for (size_t k = 0; k < sizeof(extra) / sizeof(extra[0]); k++) {
            if (strcmp(kind, "Reception") == 0 && strcmp(extra[k], "queue") != 0)
                continue;
            if (*s(e, extra[k]))
                printf("%37s %s: %s\n", "", extra[k], s(e, extra[k]));
        }
    }
    printf("\noutcome: %s\n", s(res, "outcome"));
    if (json_is_true(json_object_get(res, "logs_incomplete")))
        printf("(the log scan stopped early: older records may be missing)\n");
    json_decref(res);
    return 0;
}
