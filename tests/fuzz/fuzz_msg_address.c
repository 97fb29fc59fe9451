/* libFuzzer harness for src/msg/address.c: any bytes either parse into an
 * address list whose parts are valid UTF-8 and whose addr-specs format and
 * parse back to the same local part and domain, or fail with a reason.
 *
 *   clang -g -O1 -fsanitize=fuzzer,address,undefined -D_GNU_SOURCE -Isrc \
 *     tests/fuzz/fuzz_msg_address.c src/msg/address.c src/msg/rfc2047.c \
 *     src/core/kerr.c -o fuzz_msg_address */
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "core/kerr.h"
#include "msg/address.h"
#include "msg/rfc2047.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static void check_mbox(const addr_mailbox *m)
{
    if (m->name && !utf8_valid(m->name, strlen(m->name)))
        abort();
    if (!m->local)
        return;
    if (!utf8_valid(m->local, strlen(m->local)) || !utf8_valid(m->domain, strlen(m->domain)))
        abort();
    char *spec = addr_spec_format(m->local, m->domain);
    if (!spec)
        return;
    addr_list back;
    char err[128];
    /* a domain literal, or a local part with NUL bytes or CR/LF (folding
     * white space inside a quoted string, which parsing removes), may not
     * survive */
    if (strlen(m->local) && m->domain[0] != '[' && !strpbrk(m->local, "\r\n") &&
        addr_list_parse(spec, strlen(spec), &back, err, sizeof(err)) == 0) {
        if (back.n != 1 || back.v[0].is_group || strcmp(back.v[0].mbox.local, m->local) != 0 ||
            strcmp(back.v[0].mbox.domain, m->domain) != 0)
            abort();
        addr_list_fini(&back);
    }
    free(spec);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    addr_list l;
    char err[200];
    int rc = addr_list_parse((const char *)data, size, &l, err, sizeof(err));
    if (rc == KERR_PARSE) {
        if (!err[0] || l.n)
            abort();
        return 0;
    }
    if (rc != 0)
        return 0;
    for (size_t i = 0; i < l.n; i++) {
        if (!l.v[i].is_group)
            check_mbox(&l.v[i].mbox);
        for (size_t k = 0; k < l.v[i].n_members; k++)
            check_mbox(&l.v[i].members[k]);
    }
    addr_list_fini(&l);
    return 0;
}
