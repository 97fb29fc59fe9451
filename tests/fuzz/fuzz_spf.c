/* libFuzzer harness for src/msg/spf.c and src/msg/dmarc.c: any bytes as
 * an SPF record (parser: terms inside the input, a reason on failure), as
 * a macro-string in both grammars, and as the TXT answer of every name in
 * a whole check_host() evaluation (include/redirect back to the same
 * record, macros expanded against a fixed sender and client, A/MX/PTR
 * answers fixed), which must end with a result and a reason within the
 * lookup limits; and as a DMARC record and its evaluation.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Isrc \
 *     tests/fuzz/fuzz_spf.c src/msg/spf.c src/msg/dmarc.c src/msg/psl.c \
 *     src/core/kerr.c -o fuzz_spf
 */
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/kerr.h"
#include "msg/dmarc.h"
#include "msg/spf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

typedef struct fz {
    const char *rec;
    size_t len;
    unsigned asked;
} fz;

static int lookup(void *ud, int qtype, const char *name, spf_answer *out)
{
    fz *f = ud;
    static const char *v4[] = {"192.0.2.1", "10.0.0.1"};
    static const char *v6[] = {"2001:db8::1"};
    static const char *names[] = {"mail.example.com", "host.example.org."};
    static const char *items[1];
    static size_t lens[1];
    f->asked++;
    if (strlen(name) > 255)
        abort(); /* names asked are normalized */
    switch (qtype) {
    case SPF_Q_TXT:
        items[0] = f->rec;
        lens[0] = f->len;
        out->items = items;
        out->lens = lens;
        out->n = 1;
        out->status = SPF_DNS_OK;
        break;
    case SPF_Q_A:
        out->items = v4;
        out->n = name[0] == 'n' ? 0 : 2;
        out->status = out->n ? SPF_DNS_OK : SPF_DNS_NXDOMAIN;
        break;
    case SPF_Q_AAAA:
        out->items = v6;
        out->n = 1;
        out->status = SPF_DNS_OK;
        break;
    case SPF_Q_MX:
    case SPF_Q_PTR:
        out->items = names;
        out->n = 2;
        out->status = name[0] == 'f' ? SPF_DNS_FAIL : SPF_DNS_OK;
        break;
    default:
        abort();
    }
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    const char *s = (const char *)data;
    static spf_record r;
    char err[300];
    err[0] = 0;
    if (spf_is_record(s, size)) {
        if (spf_record_parse(s, size, &r, err, sizeof(err)) == 0) {
            for (size_t i = 0; i < r.n; i++) {
                const spf_term *t = &r.terms[i];
                if (t->text < s || t->text + t->text_len > s + size)
                    abort();
                if (t->spec && (t->spec < s || t->spec + t->spec_len > s + size))
                    abort();
                if (!strchr("AIamp46eRXU", t->kind))
                    abort();
            }
        } else if (!err[0]) {
            abort();
        }
    }
    spf_macro_valid(s, size, true, false);
    spf_macro_valid(s, size, false, true);

    /* the input as every name's record, from IPv4 and IPv6 clients */
    static const char *ips[] = {"192.0.2.1", "2001:db8::1"};
    for (int k = 0; k < 2; k++) {
        fz f = {s, size, 0};
        spf_params p = {.domain = "example.com",
                        .sender = "strong-bad@example.com",
                        .helo = "helo.example.net",
                        .client_ip = ips[k],
                        .receiver = "mx.example.org",
                        .now = 1700000000};
        spf_outcome o;
        if (spf_check_host(&p, lookup, &f, &o) != 0)
            abort();
        if (o.result < SPF_NONE || o.result > SPF_PERMERROR || !o.reason[0] ||
            !memchr(o.reason, 0, sizeof(o.reason)))
            abort();
        /* §4.6.4: bounded work, whatever the record says */
        if (o.dns_mechanisms > 11 || f.asked > 100000)
            abort();
    }

    dmarc_record dr;
    if (dmarc_record_parse(s, size, &dr, err, sizeof(err)) == 0) {
        if (dr.p < 0 || dr.p > DMARC_P_REJECT || dr.pct < 0 || dr.pct > 100 ||
            dr.sp > DMARC_P_REJECT)
            abort();
        const char *dk[] = {"mail.example.com"};
        dmarc_input in = {"news.example.com", dk, 1, "example.org", 50};
        dmarc_outcome o;
        fz f = {s, size, 0};
        if (dmarc_check(&in, lookup, &f, &o) != 0 || !o.reason[0])
            abort();
    }
    return 0;
}
