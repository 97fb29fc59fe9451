/* The smtp_client_rewrite_delivery_status event: the policy may change the
 * status code of a destination's rejection (MAIL FROM or RCPT TO refused,
 * DATA or the final dot not accepted) before kumod classifies it. Runs on
 * the dispatcher's reactor; the calls may wait. */
#ifndef KUMOD_DELIVERY_REWRITE_STATUS_H
#define KUMOD_DELIVERY_REWRITE_STATUS_H
#include <stdbool.h>
#include <stddef.h>

/* One response, owned by the caller's array: content may be replaced
 * (the old one is freed; malloc'd). */
typedef struct rwst_resp {
    int code;
    int enh_class, enh_subject, enh_detail; /* class 0: none */
    char *content;                          /* malloc'd */
    char *command;                          /* malloc'd or NULL */
} rwst_resp;

/* True when the policy handles the event (else nothing needs copying). */
bool rwst_wanted(void);
/* True for a response the event applies to: a refusal that came from the
 * destination (not 2xx, not one that kumod made up). */
bool rwst_eligible(int code, const char *content);

typedef void (*rwst_done_fn)(void *ud);
/* Calls the event once per eligible response of rs[0..n) in turn, with the
 * single-line response and the parts of queue_name (the message's
 * scheduled queue). A returned code that differs is applied and the
 * content gets " (kumomta: status was rewritten from OLD -> NEW)"; nil, the
 * same code or a failure (logged) keep the response. done(ud) runs once
 * when all are done (possibly before this returns). rs must stay valid
 * until then. */
void rwst_run(rwst_resp *rs, size_t n, const char *queue_name, rwst_done_fn done, void *ud);

#endif
