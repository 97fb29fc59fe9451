/* Delivery log records (KumoMTA's JSON records) and the local log
 * destinations that kumo.configure_local_logs{} creates. Records are built on
 * the calling thread (any reactor) and written by one logger thread per
 * destination into zstd-compressed segment files. Diagnostics never go here. */
#ifndef KUMOD_LOG_LOGS_H
#define KUMOD_LOG_LOGS_H
#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef enum logrec_type {
    LOGREC_RECEPTION,
    LOGREC_DELIVERY,
    LOGREC_BOUNCE,
    LOGREC_TRANSIENT_FAILURE,
    LOGREC_EXPIRATION,
    LOGREC_ADMIN_BOUNCE,
    LOGREC_OOB,
    LOGREC_FEEDBACK,
    LOGREC_REJECTION,
    LOGREC_ADMIN_REBIND,
    LOGREC_DEFERRED_INJECTION_REBIND,
    LOGREC_DELAYED,
    LOGREC_XFER_OUT,
    LOGREC_XFER_IN,
    LOGREC__COUNT
} logrec_type;

/* "Reception", "TransientFailure", ... */
const char *logrec_type_name(logrec_type t);
/* Parses a type name (and "Any" as LOGREC__COUNT). 0 or KERR_PARSE. */
int logrec_type_parse(const char *name, logrec_type *out);

typedef struct logrec_response {
    int code;
    /* enhanced code; class 0 means null */
    int enh_class, enh_subject, enh_detail;
    const char *content; /* single line */
    const char *command; /* NULL -> null */
} logrec_response;

/* Every field is borrowed for the duration of logs_record(). NULL strings
 * become JSON null unless noted. */
typedef struct logrec {
    logrec_type type;
    const char *id; /* 32 hex; "" for Rejection */
    const char *sender;
    const char *const *recipients; /* one -> string, several -> array */
    size_t n_recipients;
    const char *queue;
    const char *site; /* "" when not applicable */
    size_t size;
    logrec_response response;
    const char *peer_name, *peer_addr; /* both NULL -> peer_address null */
    int64_t timestamp_ns;              /* event time; 0 -> now */
    int64_t created_ns;                /* from the spool id; 0 -> now */
    uint32_t num_attempts;
    const char *bounce_classification; /* NULL -> "Uncategorized" */
    const char *egress_pool, *egress_source;
    const char *source_address; /* NULL -> null; else {address, server?, protocol?} */
    const char *delivery_protocol, *reception_protocol;
    const char *nodeid;
    /* omitted when NULL: (tls_peer_subject_name holds one subject entry
     * per line, "C=US\nCN=mx.example.com", logged as an array of them) */
    const char *tls_cipher, *tls_protocol_version, *tls_peer_subject_name;
    const char *provider_name, *session_id;
    const json_t *feedback_report; /* Feedback only; NULL -> null */
    /* The message's meta object (all of it; each destination picks the keys
     * it was configured to log) and the raw message bytes for header
     * extraction. Either may be NULL. */
    const json_t *msg_meta;
    const char *msg_data;
    size_t msg_data_len;
} logrec;

struct message;
/* The fields every Reception record of m has: its id (written into hex,
 * which must outlive the record), sender, recipients, queue, size, the
 * 250, creation time, meta and data. The caller adds the protocol and the
 * peer. */
void logrec_reception(logrec *r, char hex[33], const struct message *m, const char *queue);

/* Adds a local log destination from the JSON form of the Lua table given to
 * kumo.configure_local_logs{}: log_dir (required), max_file_size
 * (1000000000), max_segment_duration (none), compression_level (0),
 * back_pressure (128000), meta ([]), headers ([], trailing '*' = prefix),
 * per_record ({<Type|Any> = {suffix, log_dir, enable, segment_header}}),
 * min_free_space, min_free_inodes. Unknown keys are an error naming the
 * key. Thread-safe; usually called from init. */
int logs_add_local_from_json(const json_t *params, char *err, size_t errlen);

/* The bounce classifier, set by the Lua layer when a policy configures one
 * (kumo.configure_bounce_classifier): returns the category of a response,
 * a string that stays valid for the life of the process, or NULL for
 * "Uncategorized". It is called by logs_record() on the logging thread
 * (any reactor), so it must be thread-safe and must not block. */
typedef const char *(*logs_classify_fn)(const logrec_response *resp);
void logs_set_classifier(logs_classify_fn fn);
/* The category the configured classifier gives resp, or NULL
 * ("Uncategorized", also when none is configured). Any thread. */
const char *logs_classify(const logrec_response *resp);
/* Whether records of type t carry a bounce classification: Bounce,
 * TransientFailure, Expiration, AdminBounce, OOB, Feedback, Rejection. */
bool logrec_type_classifiable(logrec_type t);

/* Builds the record once per destination and submits it. A classifiable
 * record without a bounce_classification gets one from the classifier. Blocks while a
 * destination's queue holds back_pressure records. Any thread. */
void logs_record(const logrec *r);
/* One half of logs_record: LOGS_LOCAL (the local logs and the accounting
 * counts) and/or LOGS_HOOKS (the log hooks). The SMTP server hands a
 * Reception record to the hooks while the message is being saved, so that
 * the hook's message joins the same spool group commit, and to the local
 * logs once the save succeeded; both halves then carry the same
 * timestamp_ns, which the caller sets. */
#define LOGS_LOCAL 1u
#define LOGS_HOOKS 2u
void logs_record_parts(const logrec *r, unsigned parts);

/* True once a local log destination or a log hook extracts headers: a
 * record of a message whose data is not resident then needs it loaded
 * first (KumoMTA's logger loads it to extract the headers, and the
 * record's size is then the message's). Any thread. */
bool logs_records_want_data(void);

/* Serialises one record as a single JSON line (no newline), with meta and
 * headers filtered by the given key lists (NULL lists -> empty objects).
 * Returns malloc'd text. Exposed for tests and for log hooks. */
char *logrec_to_json(const logrec *r, const char *const *meta_keys, size_t n_meta,
                     const char *const *header_names, size_t n_headers, size_t *len_out);
/* The same record as a JSON object (a new reference), or NULL when it
 * cannot be built; logrec_to_json is its text. */
json_t *logrec_to_object(const logrec *r, const char *const *meta_keys, size_t n_meta,
                         const char *const *header_names, size_t n_headers);

/* Makes every destination write out and zstd-flush what it has, so readers
 * of the open segment see every record submitted before this call. */
void logs_flush(void);
/* Calls fn for every log directory configured so far (a directory may come
 * more than once); stops at and returns the first non-zero result. */
int logs_foreach_dir(int (*fn)(const char *dir, void *ud), void *ud);
/* Flushes, closes every segment (marking it read-only), stops the threads. */
void logs_shutdown(void);

typedef struct logs_stats {
    uint64_t submitted, written, submit_full;
} logs_stats;
void logs_get_stats(logs_stats *out);

#endif
