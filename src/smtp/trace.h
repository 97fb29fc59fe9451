/* Live protocol traces of SMTP sessions (kcli trace-smtp-server and
 * trace-smtp-client): a process-wide registry of subscribers, the events
 * the SMTP server and client sessions emit into it, and per-subscriber
 * bounded queues that the subscriber drains on its own reactor.
 *
 * When nobody subscribes a hook costs one relaxed atomic load and a
 * branch (trace_on). A producer never blocks on a subscriber: an event
 * that does not fit in a subscriber's queue is dropped and counted, and
 * the subscriber later sees one "Tracer Lagged behind and missed N
 * events" diagnostic in its place, as KumoMTA reports it.
 *
 * Events are rendered as KumoMTA's TraceSmtpV1Event /
 * TraceSmtpClientV1Event JSON ({"conn_meta":..,"payload":..,"when":..})
 * on the subscriber's thread, not the producer's. */
#ifndef KUMOD_SMTP_TRACE_H
#define KUMOD_SMTP_TRACE_H
#include <jansson.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum trace_kind { TRACE_SERVER, TRACE_CLIENT, TRACE_KINDS } trace_kind;

typedef enum trace_type {
    TRACE_CONNECTED,
    TRACE_CLOSED,
    TRACE_READ,
    TRACE_WRITE,
    TRACE_DIAGNOSTIC,    /* data: the message; level: "INFO", "ERROR"... */
    TRACE_BEGIN_SESSION, /* client only */
    TRACE_MESSAGE_OBTAINED,
    TRACE_MESSAGE_DISPOSITION, /* server only; data: the payload object as JSON */
} trace_type;

extern atomic_int trace_active_[TRACE_KINDS];

/* True while at least one subscriber of kind k exists. */
static inline bool trace_on(trace_kind k)
{
    return __builtin_expect(atomic_load_explicit(&trace_active_[k], memory_order_relaxed) != 0,
                            0);
}

/* Emits one event with conn_meta (borrowed; serialized now) to every
 * subscriber of kind k whose filter it passes. level is for
 * TRACE_DIAGNOSTIC ("INFO", "WARN", "ERROR", "DEBUG"), else NULL. Any
 * thread; never blocks on a subscriber (only on the short registry and
 * queue locks). */
void trace_emit(trace_kind k, const json_t *conn_meta, trace_type t, const char *level,
                const char *data, size_t len);
void trace_emitf(trace_kind k, const json_t *conn_meta, const char *level, const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/* Helpers for the SMTP hooks (call them under trace_on(k)). */
/* A command or reply line without its line end; CRLF is added. */
void trace_smtp_line(trace_kind k, const json_t *conn_meta, trace_type t, const char *line);
/* A reply as the server writes it: "code-line" for every line but the
 * last, "code line" for the last (msg's lines are separated by '\n'). */
void trace_smtp_reply(const json_t *conn_meta, int code, const char *msg);
/* A message body as it crossed the wire (dot-stuffed, CRLF line ends);
 * ".\r\n" is added. A body over TRACE_DATA_MAX is cut there and a
 * Diagnostic gives its full size. */
void trace_smtp_data(trace_kind k, const json_t *conn_meta, trace_type t, const char *data,
                     size_t len);

/* ---- the client side: a tracer per delivery session ------------------------------------- */

/* The connection meta of one outbound session (KumoMTA's keys: id,
 * ready_queue_name, egress_pool, egress_source, mx_plan, then
 * source_address, mx_host, mx_address, and per message sender,
 * recipient, domain, routing_domain, campaign, tenant, queue_name,
 * message_id). Owned by the delivery session; the SMTP client borrows it.
 * Single-threaded (the session's reactor). */
typedef struct trace_conn trace_conn;

/* A tracer with meta_take (owned), emitting BeginSession; NULL when no
 * client trace subscriber exists (then meta_take is released), so that an
 * untraced session carries nothing. */
trace_conn *trace_conn_new(json_t *meta_take);
/* Reference counting: the delivery session holds one, the SMTP client
 * session another (it may outlive its owner while it says QUIT). Both on
 * the same reactor. trace_conn_unref(NULL) is fine. */
trace_conn *trace_conn_ref(trace_conn *tc);
void trace_conn_unref(trace_conn *tc);
/* Sets (value_take non-NULL) or removes a meta key. tc may be NULL. */
void trace_conn_set(trace_conn *tc, const char *key, json_t *value_take);
/* Emits an event with the current meta. tc may be NULL. */
void trace_conn_emit(trace_conn *tc, trace_type t, const char *level, const char *data,
                     size_t len);

/* ---- subscribers ---------------------------------------------------------------------------- */

typedef struct trace_sub trace_sub;
struct reactor;

/* Called on the subscriber's reactor when its queue turns non-empty. */
typedef void (*trace_wake_fn)(void *ud);

/* Subscribes on reactor r (the caller's). Events are queued from now on;
 * until trace_sub_set_request is called they are queued unfiltered and
 * filtered as they are taken. Returns NULL when too many subscribers
 * exist. */
trace_sub *trace_subscribe(trace_kind k, struct reactor *r, trace_wake_fn wake, void *ud);

/* Applies a TraceSmtpV1Request / TraceSmtpClientV1Request (borrowed). On
 * a bad request returns KERR_INVAL with the reason in err. */
int trace_sub_set_request(trace_sub *s, const json_t *req, char *err, size_t errlen);

/* Takes the next event as JSON text (malloc'd, *len set); NULL when the
 * queue is empty. Subscriber's reactor only. */
char *trace_sub_next(trace_sub *s, size_t *len);

/* Events this subscriber lost to a full queue, in all. */
uint64_t trace_sub_lagged_total(const trace_sub *s);

/* Ends the subscription and frees it. Subscriber's reactor only. */
void trace_unsubscribe(trace_sub *s);

/* Per-subscriber queue bounds (events, bytes). */
#define TRACE_SUB_MAX_EVENTS 4096
#define TRACE_SUB_MAX_BYTES (8u * 1024 * 1024)
#define TRACE_MAX_SUBSCRIBERS 64
/* A Read or Write longer than this is cut (message bodies). */
#define TRACE_DATA_MAX (64u * 1024)

/* Process-wide count of events dropped for lagging subscribers. */
uint64_t trace_dropped_total(void);

#endif
