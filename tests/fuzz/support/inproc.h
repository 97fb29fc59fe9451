/* An in-process kumod for the libFuzzer targets that speak SMTP or HTTP:
 * the same start-up as src/main.c (one reactor thread, the policy loaded
 * into its VM, pre_init and init, listeners, spool, enumeration) with a
 * policy the caller writes, on loopback ports picked here. It is started
 * once per fuzzing process and never stopped: every input is one new TCP
 * connection to it, so the code under test is exactly kumod's, sockets,
 * libevent callbacks, Lua events and spool included.
 *
 * Used from the fuzzer's thread; the server runs on its reactor thread. */
#ifndef KUMOD_FUZZ_INPROC_H
#define KUMOD_FUZZ_INPROC_H
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

typedef struct inproc_ports {
    int smtp, http;
} inproc_ports;

/* Writes the policy (text where "{dir}", "{smtp_port}" and "{http_port}"
 * are replaced by a fresh directory under /dev/shm or /tmp and two free
 * ports) and starts kumod with it. Exits the process with a message when
 * start-up fails. Call once, from LLVMFuzzerInitialize. */
void inproc_start(const char *policy_template, inproc_ports *out);

/* Adds -detect_leaks=0 to libFuzzer's arguments unless the command line
 * sets -detect_leaks itself. Call first thing in LLVMFuzzerInitialize
 * (libFuzzer parses its flags after it). Why: the server frees a session
 * on its own thread after the client has its answer, so most inputs end
 * with more mallocs than frees, and libFuzzer then runs a full leak scan
 * after each (8 ms: 100 execs/s instead of 2,000). Leaks are still
 * reported by LeakSanitizer when the process exits. */
void inproc_fuzzer_flags(int *argc, char ***argv);

/* What one connection exchanged. */
typedef struct inproc_result {
    char *reply; /* everything the server sent, NUL-terminated; malloc'd */
    size_t reply_len;
    bool closed_by_server; /* false: the deadline passed first */
} inproc_result;

/* Connects to 127.0.0.1:port, sends data (reading whatever comes back
 * meanwhile), then half-closes when half_close is set, and reads until the
 * server closes the connection or deadline_ms passes. Aborts on a failure
 * of the harness itself (no connection). */
void inproc_exchange(int port, const void *data, size_t len, bool half_close, int deadline_ms,
                     inproc_result *out);
void inproc_result_fini(inproc_result *r);

/* True when the environment variable is set to "1" (the harnesses' strict
 * switches for known defects). */
bool inproc_env_flag(const char *name);

#endif
