/* The TSA daemon's state (kumod --tsa): the suspensions, bounces and
 * configuration overrides its automation rules decided, the event history
 * of Threshold triggers, and their SQLite copy (tsa.configure_tsa_db_path)
 * that survives a restart. Process-wide behind one mutex: any reactor's
 * HTTP handler evaluates records and exports; the SQLite writes go to a
 * thread of their own so no reactor waits on the disk. */
#ifndef KUMOD_TSA_TSA_STATE_H
#define KUMOD_TSA_TSA_STATE_H
#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

/* The database path (default /var/spool/kumomta/tsa.db; ":memory:" and
 * sqlite URI names work). Before tsa_state_open. */
void tsa_state_set_db_path(const char *path);
const char *tsa_state_db_path(void);

/* Opens (creating) the database, loads what has not expired and starts
 * the writer thread. Main thread, once. 0 or KERR_IO with err. */
int tsa_state_open(char *err, size_t errlen);
/* Flushes the pending writes and closes. Main thread. */
void tsa_state_close(void);

/* Evaluates one published log record against the rules that matched it
 * (a JSON array as Shaping:match_rules returns them: regex, action,
 * trigger, duration (seconds), match_internal, was_rollup). Returns the
 * subscription items it generated (a new JSON array, possibly empty):
 * {"ReadyQSuspension":{...}}, {"SchedQSuspension":{...}},
 * {"SchedQBounce":{...}}; config overrides only change the state. */
json_t *tsa_state_evaluate(const json_t *record, const json_t *rules, int64_t now_s);

/* {"ready_q":[ReadyQSuspension...], "sched_q":[SchedQSuspension...]} */
json_t *tsa_state_suspensions(int64_t now_s);
/* [SchedQBounce...] */
json_t *tsa_state_bounces(int64_t now_s);
/* The subscription items for the current state (what a new subscriber
 * gets first). legacy: the old {"ReadyQ":..}/{"SchedQ":..} forms. */
json_t *tsa_state_current_items(int64_t now_s, int legacy);
/* The configuration overrides as shaping TOML (get_config_v1). malloc'd. */
char *tsa_state_config_toml(int64_t now_s);

/* Counters for /metrics. */
uint64_t tsa_state_records_total(void);
uint64_t tsa_state_actions_total(void);

/* RFC 3339 UTC ("2026-12-07T19:11:37Z") of unix seconds. */
void tsa_format_time(int64_t s, char out[32]);

#endif
