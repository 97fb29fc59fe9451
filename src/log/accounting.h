/* KumoMTA's accounting database (kumo.configure_accounting_db_path): the
 * total count of receptions and deliveries, kept in SQLite in KumoMTA's
 * schema (table accounting: event_time DATETIME PRIMARY KEY, received int,
 * delivered int; one row per calendar month, event_time
 * "YYYY-MM-01 00:00:00" UTC, as KumoMTA writes it).
 *
 * Counting is two atomic increments, on whatever thread logs the record;
 * a flusher thread (started by the first count) adds the counts to the
 * database every 5 minutes and once more at acct_shutdown, so no reactor
 * ever waits for SQLite. A failed write keeps the counts for the next
 * flush and is logged. */
#ifndef KUMOD_LOG_ACCOUNTING_H
#define KUMOD_LOG_ACCOUNTING_H
#include <stdint.h>

#define ACCT_DEFAULT_PATH "/var/spool/kumomta/accounting.db"

/* Sets the database path (copied); the next flush uses it. Any thread. */
void acct_set_path(const char *path);

/* A reception / a delivery, counted unless the protocol is "LogRecord"
 * (a log hook's delivery), as KumoMTA counts. protocol may be NULL. */
void acct_reception(const char *protocol);
void acct_delivery(const char *protocol);

/* Flushes now (for tests and shutdown). Returns 0 or a negative KERR. */
int acct_flush(void);

/* Stops the flusher, flushes what is left, frees everything. */
void acct_shutdown(void);

#endif
