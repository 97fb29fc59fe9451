/* The SMTP client session: one outbound connection to one SMTP server,
 * driven as an explicit state machine on the caller's libevent event_base
 * (one reactor thread; nothing here is thread-safe). It connects (optionally
 * from a source address), reads the banner, says EHLO (HELO when EHLO is
 * refused), does STARTTLS per enable_tls and AUTH PLAIN when configured,
 * and then runs transactions one at a time, pipelined (RFC 2920) when the
 * server offers it. DNS, MX choice, retries and connection reuse policy are
 * the dispatcher's business, not this module's.
 *
 * Callbacks run on the event_base's thread, never from inside the API call
 * that started the work. The owner releases a session with smtpcli_quit()
 * or smtpcli_abort() (both are safe inside any callback); after either, no
 * callback is called again and the memory is freed from the event loop. */
#ifndef KUMOD_SMTP_CLIENT_H
#define KUMOD_SMTP_CLIENT_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <sys/socket.h>

struct event_base;
struct evbuffer;
typedef struct ssl_ctx_st SSL_CTX;

typedef struct smtpcli smtpcli;
typedef struct trace_conn trace_conn; /* smtp/trace.h */

/* ---- configuration ------------------------------------------------------------------------ */

/* make_egress_path{enable_tls=...}. The *_INSECURE modes do not verify the
 * certificate; the others verify it against the trust store and the host
 * name. Opportunistic modes use STARTTLS when it is offered and continue in
 * clear text when it is not; a failed handshake fails the connection. */
typedef enum smtpcli_tls_mode {
    SMTPCLI_TLS_OPPORTUNISTIC,
    SMTPCLI_TLS_OPPORTUNISTIC_INSECURE,
    SMTPCLI_TLS_REQUIRED,
    SMTPCLI_TLS_REQUIRED_INSECURE,
    SMTPCLI_TLS_DISABLED,
} smtpcli_tls_mode;

/* "Opportunistic", "OpportunisticInsecure", "Required", "RequiredInsecure",
 * "Disabled". Returns 0 or KERR_PARSE. */
int smtpcli_tls_mode_parse(const char *s, smtpcli_tls_mode *out);
const char *smtpcli_tls_mode_name(smtpcli_tls_mode m);

/* Every per-command timeout of make_egress_path, in nanoseconds. A value
 * <= 0 disables that timer. */
typedef struct smtpcli_timeouts {
    int64_t connect_ns, banner_ns, ehlo_ns, mail_from_ns, rcpt_to_ns, data_ns, data_dot_ns, rset_ns,
        idle_ns, starttls_ns, auth_ns;
} smtpcli_timeouts;

typedef struct smtpcli_params {
    const char *ehlo_domain; /* required */
    /* The server's host name (MX name): SNI, certificate name check, logs.
     * NULL: the peer's IP address is used for all three. */
    const char *hostname;
    /* Names the connection in diagnostics and internal responses (the
     * dispatcher passes its ready queue name and session id); may be NULL. */
    const char *label;
    const char *session_id;
    smtpcli_tls_mode enable_tls;
    bool enable_pipelining;
    bool enable_rset;
    bool ignore_8bit_checks;
    smtpcli_timeouts timeouts;
    /* AUTH PLAIN after EHLO (and after STARTTLS) when username is set. */
    const char *auth_username;
    const char *auth_password;
    bool allow_smtp_auth_plain_without_tls;
    bool allow_smtp_auth_plain_without_valid_certificate;
    /* Bound before connecting when source_address_len > 0. */
    struct sockaddr_storage source_address;
    socklen_t source_address_len;
    /* Borrowed; must outlive the session. NULL: a context with the system
     * trust store is made for the session when STARTTLS happens. The
     * verification mode is set per connection, so one context serves every
     * enable_tls mode. */
    SSL_CTX *tls_ctx;
    /* Live trace of the session (kcli trace-smtp-client), or NULL; the
     * session takes a reference. */
    trace_conn *trace;
} smtpcli_params;

/* Fills p with KumoMTA's make_egress_path defaults (Opportunistic,
 * pipelining and RSET on, connect/banner 60s, ehlo/mail/rcpt/data/dot 300s,
 * rset/idle/starttls 5s, auth 60s) and ehlo_domain "localhost". */
void smtpcli_params_init(smtpcli_params *p);

/* A client TLS context trusting the system store plus ca_file (PEM, may be
 * NULL). Returns NULL with a message in err on failure. The caller frees it
 * with SSL_CTX_free. */
SSL_CTX *smtpcli_tls_ctx_new(const char *ca_file, char *err, size_t errlen);

/* ---- responses ---------------------------------------------------------------------------- */

/* One SMTP response, as a KumoMTA log record carries it. */
typedef struct smtpcli_response {
    int code; /* 0: none */
    /* Enhanced status code (RFC 3463) parsed from the first line;
     * enh_class == 0 when there is none. */
    int enh_class, enh_subject, enh_detail;
    char *content; /* one line: lines of a multi-line reply are joined by spaces */
    char *command; /* the command it answers, with its CRLF ("RCPT TO:<a@b>\r\n",
                      ".\r\n" for the final dot); NULL for the banner and for
                      responses made up by kumod */
} smtpcli_response;

/* Responses that kumod makes up start "KumoMTA internal: ". Timeouts are
 * 421 4.4.2 "... Timed Out waiting <duration> for response to cmd=<cmd>";
 * other transport failures are 400 without an enhanced code. */

/* ---- sessions ------------------------------------------------------------------------------ */

/* err is 0 when the session is ready for smtpcli_send (resp is then the last
 * EHLO or AUTH response), or a negative KERR_* code with resp describing the
 * failure: KERR_REJECTED (the server refused: banner, EHLO/HELO, STARTTLS,
 * AUTH; or the TLS/AUTH policy forbids going on), KERR_TIMEDOUT or KERR_IO
 * (transport). resp is valid during the call only. After a failure the
 * owner still releases the session. */
typedef void (*smtpcli_ready_fn)(smtpcli *cli, int err, const smtpcli_response *resp, void *ud);

/* Starts connecting to addr (copied). params and everything it points to
 * are copied except tls_ctx. on_ready is called exactly once (unless the
 * session is released first). Returns NULL only when out of memory or on
 * invalid parameters. */
smtpcli *smtpcli_connect(struct event_base *base, const struct sockaddr *addr, socklen_t addrlen,
                         const smtpcli_params *params, smtpcli_ready_fn on_ready, void *ud);

typedef struct smtpcli_rcpt_result {
    const char *recipient;
    bool accepted;             /* the server accepted RCPT TO */
    smtpcli_response response; /* the outcome for this recipient */
} smtpcli_rcpt_result;

typedef struct smtpcli_result {
    const smtpcli_rcpt_result *rcpts; /* in the order given to smtpcli_send */
    size_t n_rcpts;
    /* The connection broke (timeout, reset, close, malformed reply) during
     * the transaction; it is not reusable. Recipients without a definite
     * answer carry a "KumoMTA internal" response. */
    bool transport_failed;
    /* With transport_failed: the transaction was queued behind another
     * (smtpcli_send_next) and the connection ended before any of its
     * commands was answered (e.g. the server said 421 after the previous
     * message's dot and closed): the server never acted on it, so it is
     * no attempt. */
    bool unanswered;
} smtpcli_result;

/* res and everything in it are valid during the call only. */
typedef void (*smtpcli_done_fn)(smtpcli *cli, const smtpcli_result *res, void *ud);

/* Runs one transaction: MAIL FROM:<sender> (BODY=8BITMIME / SMTPUTF8 when
 * the data / envelope needs them and the server offers them), RCPT TO for
 * each of the n recipients, DATA, the body (dot-stuffed, CRLF line endings,
 * ending CRLF.CRLF). RSET goes first on every transaction after the first
 * when enable_rset, and after any transaction that did not end cleanly.
 * sender, rcpts and data are copied before the call returns. Per recipient:
 * its own rejection if RCPT was refused, MAIL's response if MAIL was
 * refused, otherwise the response to DATA or to the final dot.
 * Returns 0 (done will be called exactly once), KERR_INVAL (a transaction
 * is in progress, n == 0, or CR/LF in an address) or KERR_IO (the session
 * is not usable: see smtpcli_usable). */
int smtpcli_send(smtpcli *cli, const char *sender, const char *const *rcpts, size_t n,
                 const char *data, size_t len, smtpcli_done_fn done, void *ud);

/* Whether transactions are pipelined on this session (enable_pipelining and
 * the server offered PIPELINING): smtpcli_send_next can be used. */
bool smtpcli_pipelines(const smtpcli *cli);

/* RFC 2920 across transactions: queues the next transaction while one is in
 * progress (one at most). Its [RSET] MAIL, RCPT... DATA are written right
 * behind the current transaction's final dot, in the same write when the
 * body is still to go out, so the dot's reply and theirs come back
 * together: one round trip per message. RSET goes first when enable_rset
 * (the server ends the current transaction with its reply to the dot,
 * whatever it is). If the current transaction ends before its body is sent
 * (MAIL, every RCPT or DATA refused), the queued one starts afterwards as
 * smtpcli_send would start it. done of the current transaction is called
 * first, then this one's; a failure of the current dot is the current
 * transaction's only. Arguments and copies as smtpcli_send. Returns 0,
 * KERR_INVAL (no transaction in progress, one already queued, bad
 * arguments) or KERR_IO (the session does not pipeline, or is closed). */
int smtpcli_send_next(smtpcli *cli, const char *sender, const char *const *rcpts, size_t n,
                      const char *data, size_t len, smtpcli_done_fn done, void *ud);

/* Called when a transaction's body is about to be written and no
 * transaction is queued behind it (pipelining sessions only): the last
 * moment for smtpcli_send_next to put the next envelope in the same write.
 * The callback may call smtpcli_send_next and nothing else of this API. */
typedef void (*smtpcli_body_fn)(smtpcli *cli, void *ud);
void smtpcli_set_body_cb(smtpcli *cli, smtpcli_body_fn fn, void *ud);

/* Called at most once, when a ready, idle session ends by itself: the server
 * closed it or sent a 421, or idle_timeout passed (the session then says
 * QUIT). why is valid during the call only. */
typedef void (*smtpcli_closed_fn)(smtpcli *cli, const smtpcli_response *why, void *ud);
void smtpcli_set_closed_cb(smtpcli *cli, smtpcli_closed_fn fn, void *ud);

/* Releases the session: a ready session says QUIT, waits up to idle_timeout
 * for the answer and closes; any other is dropped at once. NULL is fine. */
void smtpcli_quit(smtpcli *cli);
/* Releases the session dropping the connection now (the dispatcher
 * watchdog). NULL is fine. */
void smtpcli_abort(smtpcli *cli);

/* ---- introspection (the dispatcher and its watchdog) ------------------------------------- */

/* A static name: "Connecting", "Banner", "Ehlo", "Helo", "StartTls",
 * "TlsHandshake", "Auth", "Ready", "Rset", "MailFrom", "RcptTo", "Data",
 * "SendingBody", "DataDot", "Quit", "Closed". */
const char *smtpcli_state_name(const smtpcli *cli);
/* What the session waits for, e.g. "RCPT TO:<a@b> (2/3)"; never NULL. */
const char *smtpcli_detail(const smtpcli *cli);
/* clock_mono_ns() of the last state change, reply, or body write progress. */
int64_t smtpcli_last_progress_ns(const smtpcli *cli);
/* clock_mono_ns() when the current state was entered. */
int64_t smtpcli_state_since_ns(const smtpcli *cli);
/* Ready, idle and the connection intact. */
bool smtpcli_usable(const smtpcli *cli);
/* The connection is up (ready, or in a transaction) and not released. */
bool smtpcli_alive(const smtpcli *cli);
/* "ip:port" of the server. */
const char *smtpcli_peer(const smtpcli *cli);
/* The local address of the connection (after connecting), else NULL. */
const struct sockaddr *smtpcli_local_address(const smtpcli *cli, socklen_t *len);

typedef struct smtpcli_caps {
    bool pipelining, starttls, auth_plain, eightbitmime, smtputf8, enhancedstatuscodes;
    bool esmtp;        /* EHLO (not HELO) was accepted */
    uint64_t max_size; /* SIZE parameter; 0: none advertised or unlimited */
} smtpcli_caps;
/* The capabilities of the last EHLO. */
const smtpcli_caps *smtpcli_capabilities(const smtpcli *cli);

typedef struct smtpcli_tls_info {
    const char *cipher;           /* IANA name, e.g. "TLS_AES_256_GCM_SHA384" */
    const char *protocol_version; /* e.g. "TLSv1.3" */
    const char *provider_name;    /* "openssl" */
    /* The peer certificate's subject, "CN=mx.example.com" style entries. */
    const char *const *subject_name;
    size_t n_subject_name;
    bool authenticated; /* the certificate was verified */
} smtpcli_tls_info;
/* NULL unless TLS is up. */
const smtpcli_tls_info *smtpcli_tls(const smtpcli *cli);

/* ---- pieces exposed for unit tests and fuzzing ----------------------------------------------- */

enum { SMTPCLI_PARSE_OK = 0, SMTPCLI_PARSE_AGAIN = 1, SMTPCLI_PARSE_INVALID = 2 };
#define SMTPCLI_LINE_MAX 4096  /* longest reply line, as KumoMTA */
#define SMTPCLI_REPLY_MAX 8192 /* text kept of one reply; the rest is dropped */

/* One parsed reply. text holds its lines without code and separator,
 * joined by '\n', with the enhanced code removed from the first line (and
 * from later lines that repeat it); NUL-terminated. */
typedef struct smtpcli_reply {
    int code;
    int enh_class, enh_subject, enh_detail;
    size_t n_lines;
    size_t text_len;
    char text[SMTPCLI_REPLY_MAX];
} smtpcli_reply;

/* Parses one complete reply from buf (LF or CRLF line ends). Returns
 * SMTPCLI_PARSE_OK with *used set to the bytes it spans, SMTPCLI_PARSE_AGAIN
 * when the reply is not complete yet, or SMTPCLI_PARSE_INVALID (malformed
 * line, code mismatch between lines, or a line longer than
 * SMTPCLI_LINE_MAX) with a reason in out->text. Allocates nothing. */
int smtpcli_parse_reply(const char *buf, size_t len, size_t *used, smtpcli_reply *out);

/* Appends data to out as a DATA body: CR, LF and CRLF line ends become
 * CRLF, lines starting with '.' get another '.', a last line without an
 * end gets CRLF, then ".\r\n". Sets *eightbit when a byte >= 0x80 occurs.
 * Returns 0 or KERR_NOMEM. */
int smtpcli_encode_body(struct evbuffer *out, const char *data, size_t len, bool *eightbit);

/* Formats a duration as Rust's Debug for std::time::Duration does ("5s",
 * "1.5s", "300ms", "10µs"), as KumoMTA's timeout messages show it. */
void smtpcli_format_duration(int64_t ns, char *buf, size_t buflen);

#endif
