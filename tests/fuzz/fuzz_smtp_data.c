/* libFuzzer harness for the ESMTP server's DATA reader (src/smtp/server.c:
 * the CRLF.CRLF search across reads, dot-unstuffing, line endings, line
 * and size limits) and what follows the end of DATA (the reception events
 * with the Message header methods, the spool save, the log record). The
 * input is the body of one message after a fixed envelope; the harness
 * ends it with CRLF.CRLF and QUIT, so every input reaches the end of DATA
 * (inputs that contain their own terminator go on as commands). The
 * client does not half-close: the QUIT at the end must close the session.
 *
 * Checks: as fuzz_smtp_session, and the transaction is answered: the
 * server replied to the end of DATA (with 250, 4xx or 5xx) before QUIT.
 *
 * KNOWN DEFECTS: see support/smtp_policy.h (defect 1). */
#include <stdint.h>

#include "support/fuzz_util.h"
#include "support/inproc.h"
#include "support/smtp_check.h"
#include "support/smtp_policy.h"

static inproc_ports ports;

static const char head[] = "EHLO client.fuzz.test\r\n"
                           "MAIL FROM:<sender@example.com>\r\n"
                           "RCPT TO:<rcpt@example.net>\r\n"
                           "DATA\r\n";
static const char tail[] = "\r\n.\r\nQUIT\r\n";

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
    size_t hl = sizeof(head) - 1, tl = sizeof(tail) - 1;
    char *buf = malloc(hl + size + tl);
    memcpy(buf, head, hl);
    memcpy(buf + hl, data, size);
    memcpy(buf + hl + size, tail, tl);
    inproc_result r;
    /* no half-close: kumod drops a session at end of stream even while
     * its last replies are pending, and QUIT ends every session anyway */
    inproc_exchange(ports.smtp, buf, hl + size + tl, false, 20000, &r);
    smtp_check_replies(&r);
    /* banner, EHLO, MAIL, RCPT, 354 and then an answer to the body */
    const char *p = strstr(r.reply, "\r\n354 ");
    FUZZ_CHECK(p != NULL, "no 354 to DATA: %s", r.reply);
    p = strchr(p + 2, '\n');
    FUZZ_CHECK(p && p[1] && strchr("245", p[1]), "no answer to the end of DATA: %s", r.reply);
    inproc_result_fini(&r);
    free(buf);
    return 0;
}
