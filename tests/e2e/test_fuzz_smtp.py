"""Issue 25: a network fuzzer for the ESMTP listener. Random and mutated SMTP
sessions against one running kumod: every command with random and hostile
arguments and parameters, pipelined or one by one, bare CR and LF, NULs, long
lines, invalid UTF-8, DATA bodies with odd dot-stuffing and terminators, BDAT
(not offered: must be refused cleanly), STARTTLS at odd times (with a real
handshake or with garbage after it), AUTH with random tokens, and abrupt
closes (FIN or RST) at any point. kumod must stay up, and at the end a normal
session must still get 250 for a message; the conftest fails the test when
kumod died or a sanitizer reported anything on its stderr (run it against the
ASan build: KUMOD_BIN=build-asan/kumod).

    KUMOD_FUZZ_SMTP_SESSIONS   sessions to run (default 2,000; the issue's
                               acceptance run is 20,000)
    KUMOD_FUZZ_SEED            the RNG seed (default: random); printed, so a
                               failure is reproducible with the same value
    KUMOD_FUZZ_THREADS         concurrent sessions (default 8)

Each session's plan depends only on the seed and the session's number, so a
failing session can be replayed alone (`replay()` below, or set
KUMOD_FUZZ_ONLY=<n>).

Known defects of issue 25 being fixed elsewhere are kept out of the main run
and each has its own strict xfail test below (remove the marker with the fix):
defect 1 (a non-UTF-8 header value copied into meta aborts kumod) and
defect 2 (a non-UTF-8 MAIL FROM / RCPT TO is acknowledged, then lost at the
next start). The main run's policy copies X-Tenant into meta only when it is
UTF-8; non-UTF-8 envelopes are sent (they must not crash kumod) but nothing
checks what was stored for them."""
import base64
import collections
import os
import random
import socket
import ssl
import threading
import time

import pytest

import kumod_harness as kh
from kumod_harness import wait_until

SESSIONS = int(os.environ.get("KUMOD_FUZZ_SMTP_SESSIONS", "2000"))
SEED = int(os.environ.get("KUMOD_FUZZ_SEED") or random.SystemRandom().randrange(1 << 32))
THREADS = int(os.environ.get("KUMOD_FUZZ_THREADS", "8"))
ONLY = os.environ.get("KUMOD_FUZZ_ONLY")

# The example policy's handler (policy/init.lua), guarded for defect 1, plus
# handlers that exercise the Message header methods and the address accessors.
HANDLERS = """
kumo.on('smtp_server_mail_from', function(sender, conn_meta)
  if sender.user == 'reject' then kumo.reject(550, '5.7.1 no thanks') end
  local _ = tostring(sender) .. sender.domain
end)
kumo.on('smtp_server_rcpt_to', function(rcpt, conn_meta)
  if rcpt.user == 'defer' then kumo.reject(451, '4.7.1 try later') end
end)
kumo.on('smtp_server_message_received', function(msg, conn_meta)
  local tenant = msg:get_first_named_header_value('X-Tenant')
  -- issue 25 defect 1: a value that is not UTF-8 aborts kumod when set in meta
  if tenant and (GUARD == false or utf8.len(tenant)) then
    msg:set_meta('tenant', tenant)
  end
  for _, h in ipairs(msg:get_all_headers()) do local _ = h[1] end
  msg:remove_all_named_headers('X-Remove')
  msg:append_header('X-Fuzzed', 'yes')
  if msg:get_first_named_header_value('Subject') == 'keep' then return end
  msg:set_meta('queue', 'null')
end)
"""


def fuzz_policy(guard=False):
    return kh.default_policy(
        listener="relay_hosts = { '127.0.0.1' }, max_message_size = '1MiB',"
                 " client_timeout = '10s',",
        handlers=HANDLERS.replace("GUARD", "true" if guard else "false"))


@pytest.fixture(scope="module")
def kumod(module_kumod_factory):
    return module_kumod_factory(policy=fuzz_policy())


# ---- session plans -------------------------------------------------------------------------

DOMAINS = [b"example.com", b"example.net", b"e2e.test", b"xn--caf-dma.example", b"[127.0.0.1]",
           b"[IPv6:::1]", b"localhost", b"a" * 300 + b".example", b"", b"ex\xa4mple.com",
           b"\xc3\xa9t\xc3\xa9.example"]
USERS = [b"user", b"first.last", b"reject", b"defer", b"\"quoted user\"", b"u+tag", b"postmaster",
         b"\xff\xfe", b"caf\xc3\xa9", b"a" * 200, b"", b"x@y", b"%", b"..", b"-"]
PARAMS = [b"SIZE=1000", b"SIZE=99999999999999999999", b"SIZE=", b"SIZE=-1", b"BODY=8BITMIME",
          b"BODY=7BIT", b"BODY=BINARYMIME", b"SMTPUTF8", b"NOTIFY=NEVER", b"RET=HDRS",
          b"ENVID=x", b"BOGUS=1", b"AUTH=<>", b"=", b"\xa4=\xa4", b"ORCPT=rfc822;a@b"]
VERBS = [b"EHLO", b"HELO", b"LHLO", b"MAIL", b"RCPT", b"DATA", b"BDAT", b"RSET", b"NOOP", b"QUIT",
         b"VRFY", b"EXPN", b"HELP", b"STARTTLS", b"AUTH", b"TURN", b"ETRN", b"XCLIENT", b"",
         b"ehlo", b"MaIl", b"GET", b"POST"]
HEADERS = [b"Subject", b"From", b"To", b"X-Tenant", b"X-Remove", b"Received", b"Message-ID",
           b"Content-Type", b"X-\xa4", b"", b" ", b"Subject "]


def rnd_address(r):
    u, d = r.choice(USERS), r.choice(DOMAINS)
    if r.random() < 0.1:
        return bytes(r.randrange(256) for _ in range(r.randrange(1, 40)))
    if r.random() < 0.1:
        return u
    return u + b"@" + d


def rnd_path(r):
    a = rnd_address(r)
    shape = r.random()
    if shape < 0.75:
        return b"<" + a + b">"
    if shape < 0.8:
        return b"<@relay.example,@r2.example:" + a + b">"
    if shape < 0.85:
        return b"<>"
    if shape < 0.9:
        return a  # no brackets
    return b"<" + a  # unclosed


def rnd_params(r):
    return b"".join(b" " + r.choice(PARAMS) for _ in range(r.choice([0, 0, 0, 1, 1, 2, 5])))


def rnd_body(r):
    """A message body as sent after DATA, without the terminator."""
    lines = []
    for _ in range(r.randrange(0, 6)):
        name = r.choice(HEADERS)
        value = r.choice([b"hello", b"caf\xc3\xa9", b"t\xa4", b"=?utf-8?q?x?=", b"a" * 1200,
                          b"folded\r\n continued", b"", b"\x00nul", b"keep", b"tenant-1"])
        lines.append(name + b": " + value)
    lines.append(b"")
    for _ in range(r.randrange(0, 8)):
        lines.append(r.choice([b"body text", b".", b"..", b".leading", b"..double", b". ",
                               b"x" * r.choice([10, 998, 999, 1000, 5000]),
                               b"\xff\xfe invalid", b"\x00\x00", b"line\rbare cr",
                               b"line\nbare lf", b"\r", b"\n.\n", b"\r.\r", b".\r", b"\x1b[0m"]))
    return b"\r\n".join(lines)


def rnd_line(r, tx):
    """One command line (without its line end) from a weighted grammar."""
    k = r.random()
    if k < 0.12:
        return r.choice([b"EHLO ", b"HELO ", b"LHLO ", b"ehlo "]) + r.choice(DOMAINS)
    if k < 0.27:
        tx["mail"] = True
        return b"MAIL FROM:" + r.choice([b"", b" "]) + rnd_path(r) + rnd_params(r)
    if k < 0.45:
        return b"RCPT TO:" + r.choice([b"", b" "]) + rnd_path(r) + rnd_params(r)
    if k < 0.5:
        return b"RSET"
    if k < 0.53:
        return b"NOOP" + r.choice([b"", b" anything"])
    if k < 0.57:
        verb = r.choice([b"VRFY ", b"EXPN ", b"HELP ", b"TURN", b"ETRN x", b"XCLIENT ADDR=1.2.3.4"])
        return verb + rnd_address(r)
    if k < 0.62:
        tok = base64.b64encode(bytes(r.randrange(256) for _ in range(r.randrange(0, 40))))
        return r.choice([b"AUTH PLAIN " + tok, b"AUTH PLAIN", b"AUTH LOGIN", b"AUTH CRAM-MD5",
                         b"AUTH PLAIN =", b"AUTH", tok, b"*"])
    if k < 0.66:
        return b"BDAT " + r.choice([b"10", b"0 LAST", b"99999999999", b"x", b""])
    if k < 0.75:
        v = r.choice(VERBS)
        junk = bytes(r.randrange(256) for _ in range(r.randrange(0, 30)))
        return v + r.choice([b" ", b"", b"\t"]) + junk
    long_line = b"A" * r.choice([511, 512, 1000, 4096, 20000])
    return r.choice([b"", b" ", b"\x00", b"QUIT extra", long_line])


def mutate(r, data):
    """Byte-level mutations of a whole planned stream."""
    data = bytearray(data)
    for _ in range(r.choice([0, 0, 1, 2, 4])):
        if not data:
            break
        i = r.randrange(len(data))
        op = r.randrange(7)
        if op == 0:
            data[i] ^= 1 << r.randrange(8)
        elif op == 1:
            data[i:i] = r.choice([b"\r", b"\n", b"\x00", b"\r\n", b"\r\n.\r\n", b"\xa4", b"\xc3"])
        elif op == 2:
            del data[i:i + r.randrange(1, 20)]
        elif op == 3:
            data[i:i] = data[r.randrange(len(data)):][:r.randrange(1, 200)]
        elif op == 4:
            data = data.replace(b"\r\n", b"\n", r.randrange(1, 5))
        elif op == 5:
            data = data[:i]
        else:
            data[i:i] = b"\r\n" + r.choice(VERBS) + b" " + bytes(r.randrange(256) for _ in range(8))
    return bytes(data)


class Plan:
    """What one session does: a list of chunks (each sent at once), how it
    ends, and how it reads."""

    def __init__(self, n):
        r = random.Random(f"{SEED}:{n}")
        self.n = n
        self.pipelined = r.random() < 0.5
        self.starttls = None  # index of the chunk after which STARTTLS is negotiated
        chunks = []
        tx = {}
        if r.random() < 0.85:
            chunks.append(b"EHLO fuzz.example\r\n")
        for _ in range(r.randrange(1, 12)):
            k = r.random()
            if k < 0.3:
                # a whole, mostly valid transaction
                sender = b"sender@example.com" if r.random() < 0.7 else rnd_address(r)
                chunks.append(b"MAIL FROM:<" + sender + b">" + rnd_params(r) + b"\r\n")
                for _ in range(r.randrange(0, 3)):
                    rcpt = b"rcpt@example.net" if r.random() < 0.7 else rnd_address(r)
                    chunks.append(b"RCPT TO:<" + rcpt + b">\r\n")
                chunks.append(b"DATA\r\n")
                chunks.append(rnd_body(r) + r.choice([b"\r\n.\r\n", b"\r\n.\r\n", b"\n.\n",
                                                      b"\r\n.", b".\r\n", b""]))
            elif k < 0.35:
                chunks.append(b"STARTTLS\r\n")
                if r.random() < 0.5 and self.starttls is None:
                    self.starttls = len(chunks) - 1
                elif r.random() < 0.5:
                    chunks.append(bytes(r.randrange(256) for _ in range(r.randrange(1, 300))))
            elif k < 0.4:
                chunks.append(b"DATA\r\n" + rnd_body(r) + b"\r\n.\r\n")
            else:
                end = r.choice([b"\r\n"] * 8 + [b"\n", b"\r", b"\r\r\n", b"", b"\n\r"])
                chunks.append(rnd_line(r, tx) + end)
        chunks = [mutate(r, c) if r.random() < 0.3 else c for c in chunks]
        self.ending = r.choice(["quit"] * 5 + ["close", "reset", "half"])
        if self.ending == "quit":
            chunks.append(b"QUIT\r\n")
        self.cut = r.randrange(len(chunks) + 1) if self.ending in ("close", "reset") else None
        self.chunks = chunks


# ---- running a session -----------------------------------------------------------------------

class Stats:
    def __init__(self):
        self.lock = threading.Lock()
        self.codes = collections.Counter()
        self.outcomes = collections.Counter()
        self.bytes_sent = 0
        self.tls = 0
        self.accepted = 0  # messages answered "250 OK ids=..."

    def add(self, codes, outcome, sent, tls, accepted):
        with self.lock:
            self.accepted += accepted
            self.codes.update(codes)
            self.outcomes[outcome] += 1
            self.bytes_sent += sent
            self.tls += tls


def read_some(sock, timeout):
    sock.settimeout(timeout)
    try:
        return sock.recv(65536)
    except socket.timeout:
        return None
    except (ConnectionResetError, ssl.SSLError, OSError):
        return b""


def run_session(port, plan, stats):
    """Runs one plan; returns the bytes received. Only a failure to connect
    at all is an error (kumod must be up): once connected, kumod may close
    or reset the connection whenever it likes."""
    st = {"got": bytearray(), "sent": 0, "tls": 0, "outcome": "timeout"}
    sock = socket.create_connection(("127.0.0.1", port), timeout=10 * kh.SLOW)
    try:
        sock = _converse(sock, plan, st)
    except OSError as e:
        st["outcome"] = f"server closed ({e.__class__.__name__})"
    finally:
        try:
            sock.close()
        except OSError:
            pass
        got = bytes(st["got"])
        codes = [line[:3].decode("latin-1") for line in got.split(b"\r\n")
                 if len(line) >= 4 and line[:3].isdigit()]
        stats.add(codes, st["outcome"], st["sent"], st["tls"], got.count(b"250 OK ids="))
    return bytes(st["got"])


def _converse(sock, plan, st):
    """The conversation of run_session; returns the socket (TLS-wrapped
    after a STARTTLS)."""
    step = 0.1 * kh.SLOW
    got = st["got"]
    got += read_some(sock, 5 * kh.SLOW) or b""  # the banner
    for i, chunk in enumerate(plan.chunks):
        if plan.cut is not None and i == plan.cut:
            if plan.ending == "reset":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\0\0\0\0\0\0\0")
            st["outcome"] = plan.ending
            return sock
        sock.sendall(chunk)
        st["sent"] += len(chunk)
        if not plan.pipelined or plan.starttls == i:
            data = read_some(sock, step)
            if data == b"":
                st["outcome"] = "server closed"
                return sock
            got += data or b""
        if plan.starttls == i and b"220 " in bytes(got).split(b"STARTTLS")[-1]:
            try:
                sock.settimeout(5 * kh.SLOW)
                sock = kh.unverified_tls().wrap_socket(sock)
                st["tls"] = 1
            except (ssl.SSLError, OSError):
                st["outcome"] = "tls failed"
                return sock
    if plan.ending == "half" and not st["tls"]:
        sock.shutdown(socket.SHUT_WR)
    # the replies to what was sent; kumod closes after QUIT (or errors)
    deadline = time.monotonic() + (1 if plan.ending == "quit" else 0.2) * kh.SLOW
    while time.monotonic() < deadline:
        data = read_some(sock, step)
        if data == b"":
            st["outcome"] = "server closed"
            break
        got += data or b""
    return sock


def replay(port, n):
    """Runs session n of the current seed alone (for a reproducer)."""
    return run_session(port, Plan(n), Stats())


def normal_message(k, subject="after the fuzzing"):
    s = k.smtp(ehlo="normal.example")
    try:
        s.mail("sender@example.com")
        s.rcpt("rcpt@example.com")
        code, resp = s.data(f"Subject: {subject}\r\nX-Tenant: ok\r\n\r\nhello\r\n".encode())
        s.quit()
    finally:
        s.close()
    return code, resp


def run_fuzz(k, sessions, label):
    stats = Stats()
    print(f"\n{label}: seed={SEED} sessions={sessions} threads={THREADS} "
          f"(reproduce: KUMOD_FUZZ_SEED={SEED})")
    numbers = [int(ONLY)] if ONLY else list(range(sessions))
    lock = threading.Lock()
    failures = []
    t0 = time.monotonic()

    def worker():
        while True:
            with lock:
                if not numbers or failures:
                    return
                n = numbers.pop()
            try:
                run_session(k.smtp_port, Plan(n), stats)
            except OSError as e:
                with lock:
                    failures.append(f"session {n} (seed {SEED}): cannot connect: {e}")
            if n % 200 == 0 and not k.alive():
                with lock:
                    failures.append(f"kumod died at or before session {n} (seed {SEED})")

    threads = kh.run_threads([worker] * THREADS)
    for t in threads:
        t.join()
    elapsed = time.monotonic() - t0
    print(f"{label}: {sessions} sessions in {elapsed:.1f}s, {stats.bytes_sent} bytes sent, "
          f"{stats.tls} with TLS, {stats.accepted} messages accepted; "
          f"outcomes {dict(stats.outcomes)}; "
          f"reply codes {dict(stats.codes.most_common())}")
    return stats, failures


def test_random_and_mutated_sessions_leave_kumod_serving(kumod):
    stats, failures = run_fuzz(kumod, SESSIONS, "smtp fuzz")
    assert not failures, "\n".join(failures)
    assert kumod.alive(), f"kumod died (seed {SEED})"
    code, resp = normal_message(kumod)
    assert code == 250, (code, resp)
    # the fuzzing reached every stage of a session
    for c in ("220", "250", "354", "501", "503"):
        assert stats.codes[c] > 0, f"no {c} reply in {SESSIONS} sessions: {dict(stats.codes)}"
    assert stats.accepted > 0, "no message was accepted"


# ---- issue 25 defects 1 and 2: regression tests (strict xfails until the fix) ----------

def _died(k):
    """True when kumod is down; then the conftest's own check is told that
    this test has seen it (the xfail covers it, not a teardown error)."""
    if k.alive():
        return False
    k.expect_exit = True
    k.own_sanitizer_check = True
    return True


def test_non_utf8_header_copied_into_meta_leaves_kumod_serving(kumod_factory):
    k = kumod_factory(policy=fuzz_policy(guard=False))
    r = random.Random(SEED)
    for _ in range(20):
        value = bytes(r.randrange(256) for _ in range(8)).replace(b"\r", b"").replace(b"\n", b"")
        try:
            raw = k.raw()
            for line in (b"EHLO x.example", b"MAIL FROM:<a@example.com>",
                         b"RCPT TO:<b@example.com>", b"DATA"):
                raw.cmd(line)
            raw.send(b"X-Tenant: t" + value + b"\xa4\r\nSubject: keep\r\n\r\nbody\r\n.\r\n")
            raw.reply()
            raw.close()
        except (OSError, ValueError):
            pass  # kumod went away mid-session: checked below
        time.sleep(0.05)
        if _died(k):
            break
    assert not _died(k), "kumod died on a non-UTF-8 X-Tenant header"
    code, _ = normal_message(k)
    assert code == 250


def test_non_utf8_envelope_acknowledged_is_kept_across_a_restart(kumod_factory):
    k = kumod_factory(policy=fuzz_policy())
    raw = k.raw()
    raw.cmd(b"EHLO x.example")
    mail = raw.cmd(b"MAIL FROM:<s\xa4@example.com>")
    rcpt = raw.cmd(b"RCPT TO:<r@example.com>")
    raw.cmd(b"DATA")
    raw.send(b"Subject: keep\r\n\r\nbody\r\n.\r\n")
    code, _ = raw.reply()
    raw.close()
    if code != 250:
        # refused (553 5.6.7 or similar) at MAIL, RCPT or the end of DATA: nothing was promised
        assert mail[0] != 250 or rcpt[0] != 250 or code // 100 in (4, 5)
        return
    k.restart()
    assert "unreadable meta" not in k.diag(), "an acknowledged message was dropped at start-up"
