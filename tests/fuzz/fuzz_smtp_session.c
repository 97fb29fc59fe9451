/* libFuzzer harness for the ESMTP server session (src/smtp/server.c): the
 * command parser and the state machine behind it, fed the input as the
 * byte stream of one client connection to an in-process kumod (see
 * support/inproc.h; policy in support/smtp_policy.h). The input goes out
 * as fast as kumod reads it (pipelined), then the client half-closes.
 *
 * Checks (support/smtp_check.h): no crash or sanitizer report anywhere in
 * kumod, the session ends once the client is gone, and every reply line
 * is well formed.
 *
 * KNOWN DEFECTS (issue 25, being fixed elsewhere): see smtp_policy.h for
 * defect 1 (FUZZ_STRICT=1 turns the guard off). */
#include <stdint.h>

#include "support/fuzz_util.h"
#include "support/inproc.h"
#include "support/smtp_check.h"
#include "support/smtp_policy.h"

static inproc_ports ports;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    inproc_fuzzer_flags(argc, argv);
    inproc_start(FUZZ_POLICY, &ports);
    return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size > 512 * 1024)
        return 0;
    inproc_result r;
    inproc_exchange(ports.smtp, data, size, true, 20000, &r);
    smtp_check_replies(&r);
    inproc_result_fini(&r);
    return 0;
}
