/* libFuzzer harness for the inbound report parsers: src/msg/rfc3464.c
 * (DSN), src/msg/arf.c (ARF) and the field helpers they share
 * (report_fields.c), and the OOB record builder (src/log/oobrec.c). Any
 * bytes: no crash, no leak, and whatever parses is JSON of valid UTF-8 with
 * the required fields, from which every OOB record builds. */
#include <jansson.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "log/oobrec.h"
#include "msg/arf.h"
#include "msg/rfc3464.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *d = (const char *)data;
    char err[256];
    json_t *r = NULL;
    if (rfc3464_parse(d, size, &r, err, sizeof(err)) == 0 && r) {
        json_t *pm = json_object_get(r, "per_message");
        json_t *pr = json_object_get(r, "per_recipient");
        if (!json_is_object(json_object_get(pm, "reporting_mta")) || json_array_size(pr) < 1)
            abort();
        char *s = json_dumps(r, 0); /* jansson refuses invalid UTF-8: NULL */
        if (!s)
            abort();
        free(s);
        const char *rcpt0 = "bounces@example.com";
        logrec base = {0};
        base.type = LOGREC_RECEPTION;
        base.recipients = &rcpt0;
        base.n_recipients = 1;
        for (size_t i = 0; i < json_array_size(pr); i++) {
            json_t *e = json_array_get(pr, i);
            if (!json_is_object(json_object_get(e, "final_recipient")) ||
                !json_is_object(json_object_get(e, "status")))
                abort();
            logrec o;
            const char *rc;
            char content[512];
            if (oobrec_build(r, e, &base, &o, &rc, content, sizeof(content)) &&
                (!rc || o.response.code < 0 || o.response.code > 999))
                abort();
        }
        json_decref(r);
    }
    r = NULL;
    if (arf_parse(d, size, &r, err, sizeof(err)) == 0 && r) {
        if (!json_is_string(json_object_get(r, "feedback_type")))
            abort();
        char *s = json_dumps(r, 0);
        if (!s)
            abort();
        free(s);
        json_decref(r);
    }
    return 0;
}
