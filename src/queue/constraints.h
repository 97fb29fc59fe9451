/* EffectiveConstraints: the steady-state throughput ceilings a queue or
 * egress path configuration implies (kumo.compute_*_constraints, the
 * `constraints` of inspect-ready-q and resolve-egress-path, and the
 * `ceilings:` text block). Each axis keeps the term that produced it and a
 * display in the operator's own units. Pure functions; any thread. */
#ifndef KUMOD_QUEUE_CONSTRAINTS_H
#define KUMOD_QUEUE_CONSTRAINTS_H
#include <jansson.h>
#include <stdbool.h>

#include "queue/config.h"

typedef enum ceil_kind {
    CEIL_PRIMARY,
    CEIL_ADDITIONAL,         /* name: the entry of the additional_* map */
    CEIL_RECONNECT_CYCLING,  /* max_deliveries_per_connection x max_connection_rate */
    CEIL_OTHER,              /* name: the configuration layer it came from */
} ceil_kind;

typedef struct eff_ceiling {
    bool set;
    double value; /* events per second for rates, a count for concurrency */
    ceil_kind kind;
    char name[160];
    char display[160];
} eff_ceiling;

typedef struct eff_constraints {
    eff_ceiling dispatchers; /* always set */
    eff_ceiling message_rate;
    bool has_declared;
    char declared[96]; /* max_message_rate as configured, when another term wins */
    eff_ceiling connection_rate;
    eff_ceiling selection_rate;
} eff_constraints;

/* "100/s", "10000/h", "local:5/30s,max_burst=2": a throttle as KumoMTA
 * displays it (period 1s/60s/3600s/86400s as a unit, else seconds). */
void throttle_display(const throttle_spec *t, char *buf, size_t len);

void constraints_of_path(const egress_path_config *c, eff_constraints *out);
/* The scheduled queue's max_message_rate (tagged other: "scheduled queue
 * max_message_rate"); concurrency is an open ceiling (infinity, "∞"). */
void constraints_of_queue(const queue_config *c, eff_constraints *out);
/* Per-axis minimum of a and b into a; the declared annotation follows a
 * path rate that an outside term now beats. */
void constraints_merge(eff_constraints *a, const eff_constraints *b);
/* The `ceilings:` block of kcli inspect-ready-q. malloc'd. */
char *constraints_render(const eff_constraints *c);
/* As JSON (KumoMTA's EffectiveConstraints); an infinite value is null. */
json_t *constraints_to_json(const eff_constraints *c);
/* Reads the JSON shape back (NULL or null axes are unset); 0 or KERR_PARSE
 * with the reason in err. An infinite value can be given as a null value
 * only through the Lua binding, which converts itself. */
int constraints_from_json(const json_t *j, eff_constraints *out, char *err, size_t errlen);

#endif
