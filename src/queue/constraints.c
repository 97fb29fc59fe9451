/* Throughput ceilings of queue and egress path configurations (see
 * constraints.h). The rules are those of KumoMTA's documentation of
 * kumo.compute_egress_path_config_constraints: per axis the smallest
 * candidate wins; the message rate also has the reconnect-cycling ceiling
 * max_deliveries_per_connection x max_connection_rate; a configured
 * max_message_rate beaten by another term is kept as "declared". Pure;
 * any thread; nothing here fails except parsing a caller's table. */
#include "queue/constraints.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/duration.h"
#include "core/kerr.h"

void throttle_display(const throttle_spec *t, char *buf, size_t len)
{
    int64_t secs = t->period_ns / NS_PER_SEC;
    const char *unit = secs == 86400 ? "d" : secs == 3600 ? "h" : secs == 60 ? "m" : "s";
    char scale[32] = "";
    if (secs != 86400 && secs != 3600 && secs != 60 && secs != 1)
        snprintf(scale, sizeof(scale), "%lld", (long long)secs);
    char burst[48] = "";
    if (t->max_burst && t->max_burst != t->limit)
        snprintf(burst, sizeof(burst), ",max_burst=%llu", (unsigned long long)t->max_burst);
    snprintf(buf, len, "%s%llu/%s%s%s", t->local ? "local:" : "", (unsigned long long)t->limit,
             scale, unit, burst);
}

static double per_sec(const throttle_spec *t)
{
    return t->period_ns > 0 ? (double)t->limit * (double)NS_PER_SEC / (double)t->period_ns : 0;
}

static void set_ceiling(eff_ceiling *c, double value, ceil_kind kind, const char *name,
                        const char *display)
{
    c->set = true;
    c->value = value;
    c->kind = kind;
    snprintf(c->name, sizeof(c->name), "%s", name ? name : "");
    snprintf(c->display, sizeof(c->display), "%s", display);
}

static void throttle_ceiling(eff_ceiling *c, const throttle_spec *t, ceil_kind kind,
                             const char *name)
{
    char d[96];
    throttle_display(t, d, sizeof(d));
    set_ceiling(c, per_sec(t), kind, name, d);
}

/* candidate wins when strictly smaller (the first of equals stays) */
static void take_min(eff_ceiling *best, const eff_ceiling *cand)
{
    if (cand->set && (!best->set || cand->value < best->value))
        *best = *cand;
}

void constraints_of_path(const egress_path_config *c, eff_constraints *out)
{
    memset(out, 0, sizeof(*out));
    char d[96];
    snprintf(d, sizeof(d), "%ld", c->connection_limit);
    set_ceiling(&out->dispatchers, (double)c->connection_limit, CEIL_PRIMARY, NULL, d);
    for (size_t i = 0; i < c->n_add_limits; i++) {
        eff_ceiling e = {0};
        snprintf(d, sizeof(d), "%ld", c->add_limits[i].limit);
        set_ceiling(&e, (double)c->add_limits[i].limit, CEIL_ADDITIONAL, c->add_limits[i].name, d);
        take_min(&out->dispatchers, &e);
    }
    eff_ceiling e;
    if (c->has_max_message_rate) {
        throttle_ceiling(&e, &c->max_message_rate, CEIL_PRIMARY, NULL);
        take_min(&out->message_rate, &e);
    }
    for (size_t i = 0; i < c->n_add_rates; i++) {
        throttle_ceiling(&e, &c->add_rates[i].spec, CEIL_ADDITIONAL, c->add_rates[i].name);
        take_min(&out->message_rate, &e);
    }
    if (c->has_max_connection_rate) {
        /* each connection carries at most K messages: K x connection rate */
        unsigned long long k = (unsigned long long)c->max_deliveries_per_connection;
        throttle_spec total = c->max_connection_rate;
        total.limit = k * c->max_connection_rate.limit;
        total.max_burst = total.limit;
        char a[64], b[64], cyc[160];
        throttle_display(&c->max_connection_rate, a, sizeof(a));
        throttle_display(&total, b, sizeof(b));
        snprintf(cyc, sizeof(cyc), "%llu \xc3\x97 %.60s = %.60s", k, a, b);
        memset(&e, 0, sizeof(e));
        set_ceiling(&e, per_sec(&c->max_connection_rate) * (double)k, CEIL_RECONNECT_CYCLING,
                    NULL, cyc);
        take_min(&out->message_rate, &e);
        throttle_ceiling(&out->connection_rate, &c->max_connection_rate, CEIL_PRIMARY, NULL);
    }
    if (c->has_max_message_rate && out->message_rate.set && out->message_rate.kind != CEIL_PRIMARY) {
        out->has_declared = true;
        throttle_display(&c->max_message_rate, out->declared, sizeof(out->declared));
    }
    if (c->has_source_selection_rate) {
        throttle_ceiling(&e, &c->source_selection_rate, CEIL_PRIMARY, NULL);
        take_min(&out->selection_rate, &e);
    }
    for (size_t i = 0; i < c->n_add_selection_rates; i++) {
        throttle_ceiling(&e, &c->add_selection_rates[i].spec, CEIL_ADDITIONAL,
                         c->add_selection_rates[i].name);
        take_min(&out->selection_rate, &e);
    }
}

void constraints_of_queue(const queue_config *c, eff_constraints *out)
{
    memset(out, 0, sizeof(*out));
    set_ceiling(&out->dispatchers, INFINITY, CEIL_OTHER, "queue config", "\xe2\x88\x9e");
    if (c->has_max_message_rate)
        throttle_ceiling(&out->message_rate, &c->max_message_rate, CEIL_OTHER,
                         "scheduled queue max_message_rate");
}

void constraints_merge(eff_constraints *a, const eff_constraints *b)
{
    char declared[96] = "";
    if (a->message_rate.set && a->message_rate.kind == CEIL_PRIMARY)
        snprintf(declared, sizeof(declared), "%.90s", a->message_rate.display);
    else if (a->has_declared)
        snprintf(declared, sizeof(declared), "%s", a->declared);
    take_min(&a->dispatchers, &b->dispatchers);
    take_min(&a->message_rate, &b->message_rate);
    take_min(&a->connection_rate, &b->connection_rate);
    take_min(&a->selection_rate, &b->selection_rate);
    if (a->message_rate.set && a->message_rate.kind != CEIL_PRIMARY && declared[0]) {
        a->has_declared = true;
        snprintf(a->declared, sizeof(a->declared), "%s", declared);
    }
}

static const char *source_text(const eff_ceiling *c, const char *primary)
{
    switch (c->kind) {
    case CEIL_PRIMARY:
        return primary;
    case CEIL_RECONNECT_CYCLING:
        return "max_deliveries_per_connection \xc3\x97 max_connection_rate";
    default:
        return c->name;
    }
}

static void axis(FILE *f, const char *label, const eff_ceiling *c, const char *primary)
{
    fprintf(f, "  %-24s%s\n", label, c->display);
    fprintf(f, "    source: %s\n", source_text(c, primary));
}

char *constraints_render(const eff_constraints *c)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    if (!f)
        abort();
    fputs("ceilings:\n", f);
    axis(f, "concurrent dispatchers:", &c->dispatchers, "connection_limit");
    if (c->message_rate.set) {
        axis(f, "message rate:", &c->message_rate, "max_message_rate");
        if (c->has_declared)
            fprintf(f, "    declared: max_message_rate = %s \xe2\x86\x90 effectively unreachable\n",
                    c->declared);
    }
    if (c->connection_rate.set)
        axis(f, "connection rate:", &c->connection_rate, "max_connection_rate");
    if (c->selection_rate.set)
        axis(f, "source selection rate:", &c->selection_rate,
             "source_selection_rate");
    fclose(f);
    return buf;
}

static const char *const kind_names[] = {"primary", "additional", "reconnect_cycling", "other"};

static json_t *ceiling_json(const eff_ceiling *c)
{
    if (!c->set)
        return json_null();
    json_t *src = json_pack("{s:s}", "kind", kind_names[c->kind]);
    if (c->kind == CEIL_ADDITIONAL || c->kind == CEIL_OTHER)
        json_object_set_new(src, "name", json_string(c->name));
    return json_pack("{s:o,s:o,s:s}", "value", isfinite(c->value) ? json_real(c->value) : json_null(),
                     "source", src, "display", c->display);
}

json_t *constraints_to_json(const eff_constraints *c)
{
    json_t *o = json_object();
    json_object_set_new(o, "max_concurrent_dispatchers", ceiling_json(&c->dispatchers));
    json_object_set_new(o, "max_message_rate", ceiling_json(&c->message_rate));
    json_object_set_new(o, "max_message_rate_declared",
                        c->has_declared ? json_string(c->declared) : json_null());
    json_object_set_new(o, "max_connection_rate", ceiling_json(&c->connection_rate));
    json_object_set_new(o, "max_source_selection_rate", ceiling_json(&c->selection_rate));
    return o;
}

static int ceiling_from_json(const json_t *j, const char *axis_name, eff_ceiling *out, char *err,
                             size_t errlen)
{
    memset(out, 0, sizeof(*out));
    if (!j || json_is_null(j))
        return 0;
    const json_t *v = json_object_get(j, "value"), *src = json_object_get(j, "source");
    const char *disp = json_string_value(json_object_get(j, "display"));
    const char *kind = json_string_value(json_object_get(src, "kind"));
    if (!json_is_object(j) || !(json_is_number(v) || json_is_null(v)) || !disp || !kind) {
        snprintf(err, errlen, "%s: expected {value=, source={kind=}, display=}", axis_name);
        return KERR_PARSE;
    }
    int k = -1;
    for (int i = 0; i < 4; i++)
        if (strcmp(kind, kind_names[i]) == 0)
            k = i;
    const char *name = json_string_value(json_object_get(src, "name"));
    if (k < 0 || ((k == CEIL_ADDITIONAL || k == CEIL_OTHER) && !name)) {
        snprintf(err, errlen, "%s: source: unknown kind '%.40s' or missing name", axis_name, kind);
        return KERR_PARSE;
    }
    set_ceiling(out, json_is_null(v) ? INFINITY : json_number_value(v), (ceil_kind)k, name, disp);
    return 0;
}

int constraints_from_json(const json_t *j, eff_constraints *out, char *err, size_t errlen)
{
    memset(out, 0, sizeof(*out));
    if (!json_is_object(j)) {
        snprintf(err, errlen, "expected a constraints table");
        return KERR_PARSE;
    }
    static const char *const axes[] = {"max_concurrent_dispatchers", "max_message_rate",
                                       "max_connection_rate", "max_source_selection_rate"};
    eff_ceiling *dst[] = {&out->dispatchers, &out->message_rate, &out->connection_rate,
                          &out->selection_rate};
    for (int i = 0; i < 4; i++)
        if (ceiling_from_json(json_object_get(j, axes[i]), axes[i], dst[i], err, errlen) != 0)
            return KERR_PARSE;
    if (!out->dispatchers.set) {
        snprintf(err, errlen, "max_concurrent_dispatchers is required");
        return KERR_PARSE;
    }
    const char *d = json_string_value(json_object_get(j, "max_message_rate_declared"));
    if (d) {
        out->has_declared = true;
        snprintf(out->declared, sizeof(out->declared), "%s", d);
    }
    return 0;
}
