"""A real kumod for end-to-end tests.

`Kumod` writes a policy into a private directory, picks free loopback ports,
starts the daemon with its stderr in a file, waits until the SMTP listener
greets with 220 (it answers 421 "waiting for spool startup" first), and
stops it again. Helpers read the zstd log segments, find stored messages in
a LocalDisk spool, and talk SMTP at the byte level.

Policy text may contain these placeholders (plain text replacement, so Lua
braces need no escaping):

    {dir}         the instance directory
    {spool}       the spool directory ({spool}/data and {spool}/meta by default)
    {logs}        the local log directory
    {smtp_port}   the main SMTP listener port
    {http_port}   a spare port for an HTTP listener
    {port:NAME}   another free port, allocated on first use (see port(NAME))
    {hostname}    the listener hostname used by default_policy()
    {dns}         "127.0.0.1:PORT" of this process's NullDns (every name is
                  NXDOMAIN), which default_policy() resolves through, so that
                  no test ever queries the machine's own resolver
"""
import base64
import glob
import json
import os
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import tempfile
import threading
import time

import zstandard

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))
HOSTNAME = "mx.e2e.test"
# kumod's policy-extras helpers from the source tree (share/lua), ahead of
# any installed copy.
LUA_PATH = f"{REPO}/share/lua/?.lua;{REPO}/share/lua/?/init.lua"

# Every live instance, so that a failing test can show their diagnostics.
LIVE = []


def kumod_bin():
    path = os.environ.get("KUMOD_BIN") or os.path.join(REPO, "build", "kumod")
    return os.path.abspath(path)


def is_sanitized():
    """True when KUMOD_BIN is an ASan/TSan build: timeouts get more room."""
    try:
        out = subprocess.run(["nm", "-D", kumod_bin()], capture_output=True, timeout=20).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return b"__asan_init" in out or b"__tsan_init" in out


# Timeout multiplier: sanitizer builds are several times slower.
SLOW = float(os.environ.get("KUMOD_E2E_SLOW", "0")) or (3.0 if is_sanitized() else 1.0)


_given_ports = set()
PORT_CLAIMS = os.path.join(tempfile.gettempdir(), "kumod-e2e-ports")
PORT_CLAIM_TTL = 900  # seconds a claim keeps a port from other test processes


def claim_port(port):
    """True when no test process on this machine (ctest runs several at
    once) was given port in the last PORT_CLAIM_TTL seconds; the port is
    then claimed for this one. A port is free again for the kernel as soon
    as its probe socket closes, so without this two processes can be given
    the same one (and kumod refuses a port already listened on)."""
    if port in _given_ports:
        return False
    os.makedirs(PORT_CLAIMS, exist_ok=True)
    path = os.path.join(PORT_CLAIMS, str(port))
    for _ in range(2):
        try:
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            _given_ports.add(port)
            return True
        except FileExistsError:
            try:
                if time.time() - os.stat(path).st_mtime < PORT_CLAIM_TTL:
                    return False
                os.unlink(path)  # stale: retry once
            except FileNotFoundError:
                pass
    return False


def free_port():
    """A loopback TCP port nothing listens on, never given twice to this or
    another test process within PORT_CLAIM_TTL (claim_port)."""
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        if claim_port(port):
            return port


class NullDns:
    """A DNS server on a loopback UDP port that answers every query with
    NXDOMAIN (the question echoed, no records), after `delay(n)` seconds for
    the n-th query (0, 1, ...). Runs in a daemon thread; `queries` lists the
    names asked, in order."""

    def __init__(self, delay=None):
        self.delay = delay
        self.queries = []
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.addr = f"127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        threading.Thread(target=self._serve, daemon=True).start()

    @staticmethod
    def _qname(pkt):
        labels, i = [], 12
        while i < len(pkt) and pkt[i]:
            labels.append(pkt[i + 1:i + 1 + pkt[i]].decode("ascii", "replace"))
            i += 1 + pkt[i]
        return ".".join(labels), i + 5  # the zero label, QTYPE, QCLASS

    def _answer(self, pkt, peer):
        try:
            self.sock.sendto(pkt, peer)
        except OSError:
            pass

    def _serve(self):
        while True:
            try:
                pkt, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            if len(pkt) < 17:
                continue
            name, end = self._qname(pkt)
            with self.lock:
                n = len(self.queries)
                self.queries.append(name)
            flags = 0x8083 | (pkt[2] & 0x01) << 8  # QR, RD echoed, RA, NXDOMAIN
            reply = pkt[:2] + flags.to_bytes(2, "big") + b"\x00\x01\x00\x00\x00\x00\x00\x00" \
                + pkt[12:end]
            d = self.delay(n) if self.delay else 0
            if d > 0:
                threading.Timer(d, self._answer, (reply, peer)).start()
            else:
                self._answer(reply, peer)


_NULL_DNS = None


def null_dns():
    """The process-wide NullDns that default_policy() resolves through."""
    global _NULL_DNS
    if _NULL_DNS is None:
        _NULL_DNS = NullDns()
    return _NULL_DNS


def wait_until(pred, timeout=10.0, interval=0.02, what="condition"):
    """Polls pred() until it returns a true value, which is returned."""
    deadline = time.monotonic() + timeout * SLOW
    while True:
        v = pred()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout * SLOW:.1f}s waiting for {what}")
        time.sleep(interval)


def lua_str(s):
    """A Lua string literal."""
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'


def default_policy(listener="", handlers="", data_kind="LocalDisk", meta_kind="RocksDB",
                   logs="", init="", hostname=HOSTNAME, spool=""):
    """The usual policy: a data and a meta spool, local logs with a Subject
    header and some meta, one listener on {smtp_port}. `listener` is extra
    Lua table fields for start_esmtp_listener (e.g. "client_timeout='1s',"),
    `logs` extra fields for configure_local_logs, `init` more Lua run in
    init, `handlers` more top-level Lua (kumo.on calls), `spool` extra
    fields for both define_spool calls."""
    return f"""
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool {{ name = 'data', path = '{{spool}}/data', kind = '{data_kind}', {spool} }}
  kumo.define_spool {{ name = 'meta', path = '{{spool}}/meta', kind = '{meta_kind}', {spool} }}
  kumo.configure_local_logs {{
    log_dir = '{{logs}}',
    headers = {{ 'Subject', 'X-E2E-*' }},
    meta = {{ 'received_from', 'e2e_tag' }},
    {logs}
  }}
  kumo.start_esmtp_listener {{
    listen = '127.0.0.1:{{smtp_port}}',
    hostname = '{hostname}',
    {listener}
  }}
  kumo.dns.configure_resolver {{ name_servers = {{ '{{dns}}' }} }}
  {init}
end)
{handlers}
"""


class Kumod:
    """One kumod process with its own directory, ports, spool and logs."""

    def __init__(self, workdir, policy=None, threads=2, env=None, args=(), **policy_kw):
        self.dir = str(workdir)
        os.makedirs(self.dir, exist_ok=True)
        self.spool = os.path.join(self.dir, "spool")
        self.logs = os.path.join(self.dir, "logs")
        os.makedirs(self.logs, exist_ok=True)
        self.policy_path = os.path.join(self.dir, "policy.lua")
        self.hostname = policy_kw.get("hostname", HOSTNAME)
        self.threads = threads
        self.args = list(args)
        self.env = dict(env or {})
        self.ports = {"smtp": free_port(), "http": free_port()}
        self.proc = None
        self.runs = 0
        self.stderr_path = None
        self.expect_exit = False
        self.own_sanitizer_check = False  # the test inspects sanitizer output itself
        self.write_policy(policy if policy is not None else default_policy(**policy_kw))

    # ---- configuration -------------------------------------------------

    @property
    def smtp_port(self):
        return self.ports["smtp"]

    @property
    def http_port(self):
        return self.ports["http"]

    def port(self, name):
        if name not in self.ports:
            self.ports[name] = free_port()
        return self.ports[name]

    def fill(self, text):
        text = re.sub(r"\{port:([A-Za-z0-9_]+)\}", lambda m: str(self.port(m.group(1))), text)
        for k, v in (("{dir}", self.dir), ("{spool}", self.spool), ("{logs}", self.logs),
                     ("{smtp_port}", str(self.smtp_port)), ("{http_port}", str(self.http_port)),
                     ("{hostname}", self.hostname), ("{dns}", null_dns().addr)):
            text = text.replace(k, v)
        return text

    def write_policy(self, text):
        tmp = self.policy_path + ".tmp"
        with open(tmp, "w") as f:
            f.write(self.fill(text))
        os.replace(tmp, self.policy_path)

    def path(self, *parts):
        return os.path.join(self.dir, *parts)

    # ---- process -------------------------------------------------------

    def command(self):
        threads = ["--threads", str(self.threads)] if self.threads is not None else []
        return [kumod_bin(), "--policy", self.policy_path] + threads + self.args

    def start(self, wait=True, timeout=30.0):
        assert self.proc is None or self.proc.poll() is not None, "already running"
        env = dict(os.environ)
        env.setdefault("ASAN_OPTIONS", "detect_leaks=0")
        env.setdefault("UBSAN_OPTIONS", "print_stacktrace=1")
        env.setdefault("KUMOD_LUA_PATH", LUA_PATH)
        env.update(self.env)
        self.stderr_path = os.path.join(self.dir, f"stderr.{self.runs}.log")
        self.runs += 1
        self.expect_exit = False
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(self.command(), stdin=subprocess.DEVNULL,
                                         stdout=err, stderr=err, env=env, cwd=self.dir)
        if self not in LIVE:
            LIVE.append(self)
        if wait:
            self.wait_ready(timeout)
        return self

    def banner(self, timeout=5.0):
        """Connects once and returns the first reply line (bytes), or None."""
        try:
            with socket.create_connection(("127.0.0.1", self.smtp_port), timeout=timeout) as s:
                f = s.makefile("rb")
                line = f.readline()
                if line.startswith(b"220"):
                    s.sendall(b"QUIT\r\n")
                    f.readline()
                return line
        except OSError:
            return None

    def wait_ready(self, timeout=30.0):
        def ready():
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"kumod exited with {self.proc.returncode} during start-up:\n{self.diag()}")
            line = self.banner()
            return line is not None and line.startswith(b"220 ")
        wait_until(ready, timeout, interval=0.05, what="kumod to greet with 220")

    def alive(self):
        return self.proc is not None and self.proc.poll() is None

    def signal(self, sig):
        self.proc.send_signal(sig)

    def sighup(self):
        self.signal(signal.SIGHUP)

    def stop(self, timeout=15.0):
        """SIGTERM, then SIGKILL after timeout. Returns the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.expect_exit = True
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout * SLOW)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def kill9(self):
        self.expect_exit = True
        self.proc.kill()
        self.proc.wait()

    def restart(self, wait=True, timeout=30.0):
        if self.alive():
            self.stop()
        return self.start(wait=wait, timeout=timeout)

    def close(self):
        if self.proc is not None and self.proc.poll() is None:
            self.stop()
        if self in LIVE:
            LIVE.remove(self)

    def diag(self, all_runs=False):
        """The diagnostic log (stderr) of the current run, or of all runs."""
        paths = sorted(glob.glob(os.path.join(self.dir, "stderr.*.log"))) if all_runs \
            else [self.stderr_path] if self.stderr_path else []
        out = []
        for p in paths:
            with open(p, "rb") as f:
                out.append(f.read().decode("utf-8", "replace"))
        return "".join(out)

    def wait_diag(self, pattern, timeout=10.0):
        """Waits for a regex to appear in the current run's stderr; returns the match."""
        rx = re.compile(pattern)
        return wait_until(lambda: rx.search(self.diag()), timeout, what=f"/{pattern}/ on stderr")

    def sanitizer_report(self):
        text = self.diag(all_runs=True)
        for marker in ("ERROR: AddressSanitizer", "ERROR: LeakSanitizer", "runtime error:",
                       "WARNING: ThreadSanitizer"):
            if marker in text:
                return text
        return None

    # ---- SMTP ----------------------------------------------------------

    def smtp(self, ehlo=None, timeout=30.0, port=None):
        """An smtplib.SMTP connected (banner read); EHLO sent when `ehlo` is given."""
        s = smtplib.SMTP(local_hostname=ehlo or "client.e2e.test", timeout=timeout * SLOW)
        code, msg = s.connect("127.0.0.1", port or self.smtp_port)
        s._host = "127.0.0.1"  # starttls() needs a server_hostname
        s.banner_reply = (code, msg)
        if ehlo:
            s.ehlo(ehlo)
        return s

    def raw(self, timeout=30.0, port=None):
        """A byte-level SMTP client; the banner is read into .banner."""
        return RawSMTP("127.0.0.1", port or self.smtp_port, timeout * SLOW)

    # ---- logs ----------------------------------------------------------

    def records(self, type=None):
        """Every complete JSON record in every zstd segment under the log
        dir, oldest segment first (see read_log_records)."""
        return read_log_records(self.logs, type)

    def wait_records(self, pred=None, timeout=10.0, type=None, count=1):
        """Waits until at least `count` records (of `type`) satisfy pred;
        returns those records."""
        def found():
            rs = [r for r in self.records(type) if pred is None or pred(r)]
            return rs if len(rs) >= count else None
        return wait_until(found, timeout, interval=0.05,
                          what=f"{count} log record(s) of type {type}")

    # ---- spool -----------------------------------------------------------

    def local_disk_path(self, spool_id, which="data"):
        """Where a LocalDisk spool (at {spool}/<which>) keeps an entry:
        <path>/data/aa/bb/cc/dd/<24 hex>."""
        h = spool_id.lower()
        assert re.fullmatch(r"[0-9a-f]{32}", h), spool_id
        return os.path.join(self.spool, which, "data", h[0:2], h[2:4], h[4:6], h[6:8], h[8:])

    def stored_data(self, spool_id):
        with open(self.local_disk_path(spool_id, "data"), "rb") as f:
            return f.read()

    def local_disk_ids(self, which="data"):
        root = os.path.join(self.spool, which, "data")
        ids = set()
        for p in glob.glob(os.path.join(root, "*", "*", "*", "*", "*")):
            rel = os.path.relpath(p, root).replace(os.sep, "")
            if re.fullmatch(r"[0-9a-f]{32}", rel):
                ids.add(rel)
        return ids


def read_log_records(logs, type=None):
    """Every complete JSON record in every zstd segment under logs, oldest
    segment first. Open segments are zstd streams without an end: whatever
    decompresses is used and a trailing partial line is ignored."""
    out = []
    files = [p for p in glob.glob(os.path.join(logs, "**", "*"), recursive=True)
             if os.path.isfile(p)]
    for p in sorted(files, key=lambda p: (os.path.basename(p), p)):
        with open(p, "rb") as f:
            raw = f.read()
        text = zstd_decompress_partial(raw)
        lines = text.split(b"\n")
        for line in lines[:-1]:
            if line.strip():
                out.append(json.loads(line))
    if type is not None:
        out = [r for r in out if r.get("type") == type]
    return out


def zstd_decompress_partial(raw):
    """Decompresses concatenated zstd frames, the last possibly unfinished."""
    out = []
    while raw:
        d = zstandard.ZstdDecompressor().decompressobj()
        try:
            out.append(d.decompress(raw))
        except zstandard.ZstdError:
            break
        raw = d.unused_data
        if not d.eof:
            break
    return b"".join(out)


class RawSMTP:
    """Sends bytes and reads replies, for what smtplib will not send."""

    def __init__(self, host, port, timeout):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.banner = self.reply()

    def send(self, data):
        if isinstance(data, str):
            data = data.encode()
        self.sock.sendall(data)

    def line(self):
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                if self.buf:
                    rest, self.buf = self.buf, b""
                    return rest
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self):
        """Returns (code, text) with continuation lines joined by "\\n", or
        (None, None) at EOF."""
        lines = []
        while True:
            line = self.line()
            if line is None:
                if lines:
                    break
                return None, None
            lines.append(line)
            if len(line) < 4 or line[3:4] != b"-":
                break
        code = int(lines[0][:3])
        return code, "\n".join(l[4:].decode("utf-8", "replace") for l in lines)

    def cmd(self, line):
        self.send(line + "\r\n" if isinstance(line, str) else line + b"\r\n")
        return self.reply()

    def replies(self, n):
        return [self.reply() for _ in range(n)]

    def at_eof(self, timeout=5.0):
        """True when the server closes the connection (after any pending replies)."""
        self.sock.settimeout(timeout * SLOW)
        try:
            while True:
                chunk = self.sock.recv(65536)
                if not chunk:
                    return True
                self.buf += chunk
        except socket.timeout:
            return False
        except ConnectionResetError:
            return True

    def close(self):
        try:
            self.sock.close()
        except OSError:
            pass


def parse_ids(reply_text):
    """'OK ids=a b' -> ['a', 'b']"""
    m = re.fullmatch(r"OK ids=([0-9a-f]{32}(?: [0-9a-f]{32})*)", reply_text)
    assert m, f"not a 250 OK ids= reply: {reply_text!r}"
    return m.group(1).split(" ")


def split_message(data):
    """(header block bytes incl. final CRLF, body bytes) of a stored message."""
    i = data.find(b"\r\n\r\n")
    if i < 0:
        return data, b""
    return data[:i + 2], data[i + 4:]


def header_fields(header_block):
    """[(name, raw value with folding)] in order."""
    fields = []
    for line in header_block.split(b"\r\n"):
        if not line:
            continue
        if line[:1] in (b" ", b"\t"):
            name, value = fields[-1]
            fields[-1] = (name, value + b"\r\n" + line)
        else:
            name, _, value = line.partition(b":")
            fields.append((name.decode(), value.lstrip(b" ")))
    return fields


def decode_kumoref(value):
    """The JSON object carried by the X-KumoRef supplemental header."""
    token = re.sub(rb"\s+", b"", value)
    return json.loads(base64.b64decode(token))


def unverified_tls():
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def run_threads(fns):
    ts = [threading.Thread(target=f, daemon=True) for f in fns]
    for t in ts:
        t.start()
    return ts

