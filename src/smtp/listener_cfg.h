/* ESMTP listener parameters (kumo.start_esmtp_listener): parsing, the
 * per-connection overrides (`peer`, `via`, smtp_server_get_dynamic_parameters)
 * and the TLS contexts they name.
 *
 * A parameter table parses into an lcfg_block: the keys it sets, and its own
 * `peer` and `via` maps of nested blocks. A session's effective parameters
 * (lcfg_params) start from the defaults and have blocks applied to them as
 * KumoMTA does: the block's keys, then the `peer` block matching the peer's
 * address (recursively), then the `via` block matching the local address.
 * Blocks are immutable after parsing and are read by every reactor; the
 * strings and lists in lcfg_params point into the blocks applied. */
#ifndef KUMOD_SMTP_LISTENER_CFG_H
#define KUMOD_SMTP_LISTENER_CFG_H
#include <jansson.h>
#include <openssl/ssl.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdint.h>
#include <sys/socket.h>

#include "net/cidr.h"

enum lcfg_line_endings { LE_DENY, LE_ALLOW, LE_FIX };
enum lcfg_batch_handling { BATCH_BIFURCATE, BATCH_BY_DOMAIN };

typedef struct lcfg_block lcfg_block;

/* The effective parameters of one session. */
typedef struct lcfg_params {
    const char *hostname;
    const char *banner;
    const cidr_list *relay_hosts;
    bool relay_hosts_set;
    int64_t client_timeout_ns;
    int64_t data_processing_timeout_ns;
    long min_data_rate; /* bytes/s a DATA transfer must average (0: no floor) */
    long max_messages_per_connection;
    long max_recipients_per_message;
    uint64_t max_message_size;
    uint64_t data_buffer_size;
    enum lcfg_line_endings invalid_line_endings;
    long line_length_hard_limit;
    bool received_header, supplemental_header;
    const char *trace_header_name;
    const json_t *include_meta_names; /* array */
    const char *tls_certificate, *tls_private_key, *tls_required_client_ca;
    bool deferred_spool, deferred_queue;
    bool allow_xclient;
    enum lcfg_batch_handling batch_handling;
} lcfg_params;

/* One listener: what cannot be overridden per connection, and its base block. */
typedef struct listener_cfg {
    char *listen;
    long max_connections;
    lcfg_block *base;
    SSL_CTX *tls; /* the base parameters' context, built at start-up */
    struct sockaddr_storage addr;
    socklen_t addrlen;
    bool wildcard; /* any address or port 0: ask each socket for its local end */
    atomic_long active;
} listener_cfg;

/* Parses start_esmtp_listener's table. NULL with the reason in err. */
listener_cfg *lcfg_listener_from_json(const json_t *j, char *err, size_t errlen);
void lcfg_listener_free(listener_cfg *ln);

/* Parses a table of overridable parameters (what peer/via blocks and
 * smtp_server_get_dynamic_parameters hold: no listen, no max_connections). */
lcfg_block *lcfg_block_from_json(const json_t *j, char *err, size_t errlen);
void lcfg_block_free(lcfg_block *b);

void lcfg_defaults(lcfg_params *p);
/* Applies block b for a session from peer to local; the block's `meta`
 * keys and a `hostname` go into meta (may be NULL). */
void lcfg_apply(lcfg_params *p, const lcfg_block *b, const struct sockaddr *local,
                const struct sockaddr *peer, json_t *meta);
/* Whether a block has peer or via overrides (else every session of the
 * listener has the same parameters). */
bool lcfg_block_varies(const lcfg_block *b);

/* The TLS context for p's certificate, key, client CA and hostname, built
 * on first use and shared (any thread; the cache lives until
 * lcfg_tls_cache_clear). NULL with the reason in err. */
SSL_CTX *lcfg_tls_ctx(const lcfg_params *p, char *err, size_t errlen);
/* Builds the contexts of every block of ln (so that bad certificate files
 * fail start-up rather than a later STARTTLS) and sets ln->tls. */
int lcfg_listener_prepare_tls(listener_cfg *ln, char *err, size_t errlen);
void lcfg_tls_cache_clear(void);

#endif
