"""Pieces of the kumod benchmark (see bench/README.md): smtp-sink with a
message counter, smtp-source runs, a kumod instance, a private Postfix
instance, and per-process CPU and memory accounting from /proc.

Only the Python standard library and the Debian packages installed by
scripts/deps.sh are used.
"""
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
import time

SMTP_SOURCE = "/usr/sbin/smtp-source"
SMTP_SINK = "/usr/sbin/smtp-sink"
POSTFIX = "/usr/sbin/postfix"
POSTCONF = "/usr/sbin/postconf"
TICK = os.sysconf("SC_CLK_TCK")
# The programs actually executed: private copies made by use_private_copies().
RUN_AS = {SMTP_SOURCE: SMTP_SOURCE, SMTP_SINK: SMTP_SINK}


def use_private_copies(bindir, kumod_bin):
    """Copies smtp-source, smtp-sink and kumod into bindir under neutral
    names (loadsource, countsink, mtad) and returns the kumod copy. The
    machine is shared: something that kills processes by name (pkill
    smtp-sink, pkill -f kumod) must not end a measurement half-way."""
    os.makedirs(bindir, exist_ok=True)
    for src, name in ((SMTP_SOURCE, "loadsource"), (SMTP_SINK, "countsink")):
        dst = os.path.join(bindir, name)
        shutil.copy2(src, dst)
        RUN_AS[src] = dst
    dst = os.path.join(bindir, "mtad")
    shutil.copy2(kumod_bin, dst)
    return dst
IS_ROOT = os.geteuid() == 0


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def closed_port():
    """A loopback port nobody listens on (connections are refused)."""
    return free_port()


# ---- /proc accounting -----------------------------------------------------

def _stat_fields(pid):
    with open(f"/proc/{pid}/stat") as f:
        s = f.read()
    # the command name may contain spaces; fields start after the last ')'
    rest = s[s.rindex(")") + 2:].split()
    return rest  # rest[0] is field 3 (state)


def proc_cpu(pid, children=False):
    """CPU seconds (user+system) of pid; with children=True also the CPU of
    its waited-for children (cutime+cstime)."""
    try:
        f = _stat_fields(pid)
    except (OSError, ValueError):
        return 0.0
    ticks = int(f[11]) + int(f[12])  # utime stime (fields 14, 15)
    if children:
        ticks += int(f[13]) + int(f[14])  # cutime cstime
    return ticks / TICK


def proc_ctxsw(pid):
    """Context switches (voluntary + involuntary) of each live thread of pid,
    as {thread name: count} (threads of one name are summed)."""
    out = {}
    try:
        tids = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return out
    for tid in tids:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                name, n = "?", 0
                for line in f:
                    if line.startswith("Name:"):
                        name = line.split(None, 1)[1].strip()
                    elif line.startswith(("voluntary_ctxt_switches", "nonvoluntary_ctxt_switches")):
                        n += int(line.split()[1])
                    if os.environ.get("BENCH_INVOL") and line.startswith("nonvoluntary_ctxt_switches"):
                        out[name + "/invol"] = out.get(name + "/invol", 0) + int(line.split()[1])
            out[name] = out.get(name, 0) + n
        except (OSError, ValueError):
            pass
    return out


def proc_ppid(pid):
    try:
        return int(_stat_fields(pid)[1])
    except (OSError, ValueError, IndexError):
        return None


def children_of(pid):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit() and proc_ppid(int(d)) == pid:
            out.append(int(d))
    return out


def proc_status_kb(pid, key="VmRSS"):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(key + ":"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def proc_pss_kb(pid):
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return _stat_fields(pid)[0] != "Z"
    except (OSError, ValueError):
        return False


def system_busy():
    """(busy, total) jiffies of all CPUs from /proc/stat."""
    with open("/proc/stat") as f:
        v = [int(x) for x in f.readline().split()[1:]]
    idle = v[3] + (v[4] if len(v) > 4 else 0)  # idle + iowait
    return sum(v) - idle, sum(v)


def quiesce(max_busy=0.25, quiet_s=0.5, timeout=15.0):
    """Before a measurement: writes back dirty pages (the previous MTA's
    spool and logs), then waits until the whole machine is at most
    max_busy busy over quiet_s (or timeout). Returns (seconds waited,
    last busy fraction)."""
    t0 = time.monotonic()
    os.sync()
    frac = 1.0
    while time.monotonic() - t0 < timeout:
        b0, t_0 = system_busy()
        time.sleep(quiet_s)
        b1, t_1 = system_busy()
        frac = (b1 - b0) / max(1, t_1 - t_0)
        if frac <= max_busy:
            break
    return time.monotonic() - t0, frac


def loadavg():
    with open("/proc/loadavg") as f:
        return [float(x) for x in f.read().split()[:3]]


def smtp_greeting(port, timeout=2.0):
    """The first reply line of the server on 127.0.0.1:port, or None."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            f = s.makefile("rb")
            line = f.readline()
            try:
                s.sendall(b"QUIT\r\n")
            except OSError:
                pass
            return line.decode("latin-1").strip() or None
    except OSError:
        return None


def wait_greeting(port, timeout, want="220", interval=0.01):
    """Polls until the server greets with `want`; returns seconds waited
    and the time the first TCP connect succeeded (or None)."""
    t0 = time.monotonic()
    first_accept = None
    while True:
        g = smtp_greeting(port, timeout=1.0)
        now = time.monotonic()
        if g is not None and first_accept is None:
            first_accept = now - t0
        if g is not None and g.startswith(want):
            return now - t0, first_accept
        if now - t0 > timeout:
            raise RuntimeError(f"no {want} greeting on port {port} within {timeout}s (last: {g})")
        time.sleep(interval)


# ---- smtp-sink --------------------------------------------------------------

class Sink:
    """smtp-sink with running counters (-c). A reader thread parses
    "mesg=N" and records when the count first reaches a target."""

    def __init__(self, port=None, backlog=1024, extra=()):
        self.port = port or free_port()
        self.cmd = [RUN_AS[SMTP_SINK]] + (["-u", "nobody"] if IS_ROOT else []) + list(extra) + \
            ["-c", f"127.0.0.1:{self.port}", str(backlog)]
        self.count = 0
        self.sessions = 0  # SMTP sessions the sink has seen (connections)
        self.other = []  # the last lines that were not counters (errors)
        self._target = None
        self._target_time = None
        self._cv = threading.Condition()
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(self.cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     stdin=subprocess.DEVNULL)
        self._thr = threading.Thread(target=self._reader, daemon=True)
        self._thr.start()
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                    break
            except OSError:
                if self.proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"smtp-sink did not start: {self.cmd}")
                time.sleep(0.02)
        # the probe connection counts as a session, not a message
        return self

    def _reader(self):
        buf = b""
        rx = re.compile(rb"mesg=(\d+)")
        rxs = re.compile(rb"sess=(\d+)")
        fd = self.proc.stdout.fileno()
        while True:
            try:
                chunk = os.read(fd, 65536)
            except OSError:
                break
            if not chunk:
                break
            buf += chunk
            cut = max(buf.rfind(b"\r"), buf.rfind(b"\n"))
            if cut < 0:
                continue
            done, buf = buf[:cut], buf[cut + 1:]
            for ln in re.split(rb"[\r\n]+", done):
                if ln and not ln.startswith(b"sess="):
                    self.other.append(ln.decode("latin-1"))
                    del self.other[:-20]
            m = None
            for m in rx.finditer(done):
                pass
            if m is None:
                continue
            ms = None
            for ms in rxs.finditer(done):
                pass
            now = time.monotonic()
            with self._cv:
                if ms is not None:
                    self.sessions = max(self.sessions, int(ms.group(1)))
                self.count = max(self.count, int(m.group(1)))
                if self._target is not None and self._target_time is None and \
                        self.count >= self._target:
                    self._target_time = now
                    self._cv.notify_all()

    def expect(self, target):
        """Arms the recorder: the time the count reaches target is kept."""
        with self._cv:
            self._target = target
            self._target_time = time.monotonic() if self.count >= target else None

    def wait(self, timeout):
        """Waits for the armed target; returns its monotonic time or None."""
        deadline = time.monotonic() + timeout
        with self._cv:
            while self._target_time is None:
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                if self.proc.poll() is not None:
                    raise RuntimeError(f"smtp-sink exited ({self.proc.returncode}): "
                                       f"{' | '.join(self.other)}")
                self._cv.wait(min(left, 0.5))
            return self._target_time

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---- smtp-source ------------------------------------------------------------

def source_cmd(port, n, sessions, size, rcpt_domain="example.com", extra=()):
    # -F FILE (a pre-formatted message) and -l (a generated body) exclude each other
    size_opt = [] if "-F" in extra else ["-l", str(size)]
    return [SMTP_SOURCE, "-s", str(sessions), "-m", str(n)] + size_opt + [
            "-M", "source.bench.test", "-f", "bench@source.bench.test",
            "-t", f"rcpt@{rcpt_domain}"] + list(extra) + [f"127.0.0.1:{port}"]


def run_source(cmd, timeout):
    """Runs smtp-source; returns (seconds, returncode, stderr tail)."""
    cmd = [RUN_AS.get(cmd[0], cmd[0])] + list(cmd[1:])
    t0 = time.monotonic()
    p = subprocess.run(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                       stderr=subprocess.PIPE, timeout=timeout)
    return time.monotonic() - t0, p.returncode, p.stderr.decode("latin-1")[-2000:]


def renice_tree(pids, nice):
    """Sets the nice value of every thread of the given processes and of
    their descendants (Linux: nice is per thread; later children and
    threads inherit it)."""
    seen = set()
    todo = list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.add(pid)
        try:
            tids = [int(t) for t in os.listdir(f"/proc/{pid}/task")]
        except OSError:
            continue
        for tid in tids:
            try:
                os.setpriority(os.PRIO_PROCESS, tid, nice)
            except OSError:
                pass
        todo += children_of(pid)


def run_sources(cmds, timeout):
    """Runs several smtp-source commands at once (one per message file of
    a mix); returns (seconds until the last ended, first non-zero
    returncode or 0, stderr tails)."""
    t0 = time.monotonic()
    procs = [subprocess.Popen([RUN_AS.get(c[0], c[0])] + list(c[1:]), stdin=subprocess.DEVNULL,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in cmds]
    rc, errs = 0, []
    for p in procs:
        try:
            _, err = p.communicate(timeout=max(1.0, timeout - (time.monotonic() - t0)))
        except subprocess.TimeoutExpired:
            p.kill()
            _, err = p.communicate()
            rc = rc or "timeout"
        rc = rc or p.returncode
        if err:
            errs.append(err.decode("latin-1")[-500:])
    return time.monotonic() - t0, rc, " | ".join(errs)[-2000:]


class Latgen:
    """bench/latgen.c (open-loop latency generator), built on first use
    into bindir with `cc -O2 -o latgen latgen.c -lm`."""

    def __init__(self, bindir):
        self.bin = os.path.join(bindir, "latgen")
        if not os.path.exists(self.bin):
            subprocess.run(["cc", "-O2", "-o", self.bin,
                            os.path.join(os.path.dirname(os.path.abspath(__file__)), "latgen.c"),
                            "-lm"], check=True)

    def command(self, port, rate, duration, conns=32, size=5120,
                sender="bench@loadgen.bench.test", rcpt="rcpt@example.com", poisson=False,
                nice=None):
        cmd = (["nice", "-n", str(nice)] if nice is not None else []) + [self.bin, "--port", str(port), "--rate", str(rate), "--duration", str(duration),
               "--conns", str(conns), "--size", str(size), "--sender", sender, "--rcpt", rcpt]
        if poisson:
            cmd.append("--poisson")
        if IS_ROOT:
            cmd.append("--fifo")  # its own wake-ups do not queue behind other work
        return cmd

    def run(self, *args, **kw):
        cmd = self.command(*args, **kw)
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True,
                           timeout=float(cmd[cmd.index("--duration") + 1]) + 120)
        if p.returncode != 0:
            raise RuntimeError(f"latgen exit {p.returncode}: {p.stderr[-1000:]}")
        import json
        res = json.loads(p.stdout)
        res["command"] = " ".join(cmd)
        return res


# ---- kumod ------------------------------------------------------------------

KUMOD_POLICY = r"""
-- generated by bench/run
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool { name = 'data', path = '{dir}/spool/data', kind = 'RocksDB', {spool} }
  kumo.define_spool { name = 'meta', path = '{dir}/spool/meta', kind = 'RocksDB', {spool} }
  kumo.configure_local_logs { log_dir = '{dir}/logs' }
  kumo.start_esmtp_listener {
    listen = '127.0.0.1:{port}',
    hostname = 'kumod.bench.test',
    relay_hosts = { '127.0.0.1' },
    {listener}
  }
  kumo.start_http_listener { listen = '127.0.0.1:{http_port}' }
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    protocol = {protocol},
    {queue}
  }
end)
kumo.on('get_egress_path_config', function(domain, source, site)
  return kumo.make_egress_path {
    smtp_port = {sink_port},
    prohibited_hosts = {},
    enable_tls = 'Disabled',
    connection_limit = 32,
  }
end)
{handlers}
"""

# issue 8: a 50 ms post-DATA policy step. With deferred_queue = true the
# listener skips smtp_server_message_received and the same work runs later
# in smtp_server_message_deferred_inject.
SLOW_HANDLER = r"""
local function slow_policy(msg)
  kumo.sleep({delay})
end
kumo.on('smtp_server_message_received', function(msg, conn_meta) slow_policy(msg) end)
kumo.on('smtp_server_message_deferred_inject', function(msg, conn_meta) slow_policy(msg) end)
"""


# A destination that is never reached and never churns: every attempt is a
# transient failure at once, and the message waits for its retry_interval.
HOLD_PROTOCOL = "{ custom_lua = { constructor = 'bench_hold' } }"
HOLD_HANDLER = r"""
kumo.on('bench_hold', function(domain, tenant, campaign)
  local conn = {}
  function conn:send(msg)
    kumo.reject(400, '4.4.1 held by the benchmark')
  end
  function conn:close() end
  return conn
end)
"""


class Kumod:
    def __init__(self, binary, workdir, sink_port, listener="", queue="", handlers="",
                 threads=None, env=None, protocol="{ smtp = { mx_list = { '[127.0.0.1]' } } }",
                 spool=""):
        self.binary = binary
        self.dir = workdir
        os.makedirs(os.path.join(workdir, "logs"), exist_ok=True)
        self.port = free_port()
        self.http_port = free_port()
        self.sink_port = sink_port
        self.threads = threads
        self.env = env or {}
        self.policy = os.path.join(workdir, "policy.lua")
        text = KUMOD_POLICY
        for k, v in (("{dir}", workdir), ("{port}", str(self.port)),
                     ("{sink_port}", str(sink_port)), ("{listener}", listener),
                     ("{queue}", queue), ("{protocol}", protocol),
                     ("{handlers}", handlers), ("{spool}", spool),
                     ("{http_port}", str(self.http_port))):
            text = text.replace(k, v)
        with open(self.policy, "w") as f:
            f.write(text)
        self.proc = None
        self.runs = 0
        self.stderr_path = None

    @property
    def pid(self):
        return self.proc.pid

    def command(self):
        cmd = [self.binary, "--policy", self.policy]
        if self.threads:
            cmd += ["--threads", str(self.threads)]
        return cmd

    def start(self, wait=True, timeout=120, prefix=()):
        env = dict(os.environ)
        env.update(self.env)
        self.stderr_path = os.path.join(self.dir, f"stderr.{self.runs}.log")
        self.runs += 1
        self.t_start = time.monotonic()
        with open(self.stderr_path, "wb") as err:
            self.proc = subprocess.Popen(list(prefix) + self.command(), stdin=subprocess.DEVNULL,
                                         stdout=err, stderr=err, env=env, cwd=self.dir)
        if wait:
            self.wait_ready(timeout)
        return self

    def wait_ready(self, timeout=120):
        try:
            return wait_greeting(self.port, timeout)
        except RuntimeError:
            raise RuntimeError(f"kumod did not become ready:\n{self.diag()[-3000:]}")

    def diag(self):
        try:
            with open(self.stderr_path, errors="replace") as f:
                return f.read()
        except (OSError, TypeError):
            return ""

    def cpu(self):
        return proc_cpu(self.proc.pid)

    def ctxsw(self):
        return proc_ctxsw(self.proc.pid)

    def spool_stats(self):
        """The spool counters kumod prints when it shuts down in order
        ("spool stats: saves=.. syncs=.. synced_saves=.. (x saves per sync)
        removes=.. loads=.. errors=.."), or None."""
        m = None
        for m in re.finditer(r"spool stats: (.*)", self.diag()):
            pass
        if not m:
            return None
        out = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}
        if out.get("syncs"):
            out["saves_per_sync"] = out.get("synced_saves", 0) / out["syncs"]
        return out

    def save_latency(self):
        """(count, mean seconds) of kumod's message_save_latency histogram
        (ESMTP end of data -> spool save durable), from /metrics; None
        when it cannot be read."""
        import urllib.request
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}/metrics",
                                        timeout=5) as r:
                text = r.read().decode()
        except OSError:
            return None
        vals = {}
        for line in text.splitlines():
            m = re.match(r"message_save_latency_(sum|count)(?:\{[^}]*\})? ([0-9.eE+-]+)$", line)
            if m:
                vals[m.group(1)] = float(m.group(2))
        if not vals.get("count"):
            return None
        return int(vals["count"]), vals["sum"] / vals["count"]

    def rss_kb(self):
        return proc_status_kb(self.proc.pid, "VmRSS")

    def _get(self, path):
        import urllib.request
        with urllib.request.urlopen(f"http://127.0.0.1:{self.http_port}{path}", timeout=10) as r:
            return r.read().decode()

    def queue_counts(self):
        """{scheduled queue: messages} from /metrics (scheduled_count), or None."""
        try:
            text = self._get("/metrics")
        except OSError:
            return None
        return {m.group(1): int(float(m.group(2))) for m in
                re.finditer(r'^scheduled_count\{queue="([^"]*)"\} ([0-9.eE+]+)$', text, re.M)}

    def sample_meta(self):
        """The meta of the first message in kumod's logs (inspect-message),
        or None: shows what a queued message carries."""
        import glob
        import json
        for path in sorted(glob.glob(os.path.join(self.dir, "logs", "*"))):
            try:
                out = subprocess.run(["zstdcat", path], capture_output=True, timeout=30).stdout
                mid = json.loads(out.split(b"\n", 1)[0])["id"]
                return json.loads(self._get(f"/api/admin/inspect-message/v1?id={mid}"))[
                    "message"]["meta"]
            except (OSError, ValueError, KeyError, subprocess.SubprocessError):
                continue
        return None

    def running(self):
        return self.proc is not None and self.proc.poll() is None

    def stop(self, sig=signal.SIGTERM, timeout=60):
        if not self.running():
            return None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            return "killed"

    def wait_idle(self, quiet_s=1.0, cpu_eps=0.03, timeout=120):
        """Waits until the process used less than cpu_eps CPU seconds over
        quiet_s seconds; returns seconds waited."""
        return wait_idle(self.cpu, quiet_s, cpu_eps, timeout)


def wait_idle(cpu_fn, quiet_s=1.0, cpu_eps=0.03, timeout=120):
    t0 = time.monotonic()
    last = cpu_fn()
    while time.monotonic() - t0 < timeout:
        time.sleep(quiet_s)
        now = cpu_fn()
        if now - last < cpu_eps:
            break
        last = now
    return time.monotonic() - t0


# ---- Postfix ------------------------------------------------------------------

class PostfixError(RuntimeError):
    pass


class Postfix:
    """A private Postfix instance under `workdir`: its own config_directory,
    queue_directory and data_directory, smtpd on 127.0.0.1:port only,
    relaying everything to [127.0.0.1]:relay_port. Durability as shipped."""

    def __init__(self, workdir, relay_port, dest_concurrency=32):
        self.dir = workdir
        self.etc = os.path.join(workdir, "etc")
        self.queue = os.path.join(workdir, "queue")
        self.data = os.path.join(workdir, "data")
        self.maillog = os.path.join(workdir, "maillog")
        self.port = free_port()
        self.relay_port = relay_port
        self.master_pid = None
        os.makedirs(self.etc, exist_ok=True)
        os.makedirs(self.queue, exist_ok=True)
        os.makedirs(self.data, exist_ok=True)
        shutil.chown(self.data, "postfix", "postfix")
        os.chmod(workdir, 0o755)
        for f in ("main.cf", "master.cf"):
            shutil.copy(os.path.join("/etc/postfix", f), os.path.join(self.etc, f))
        self.settings = {
            "queue_directory": self.queue,
            "data_directory": self.data,
            "meta_directory": "/etc/postfix",
            "inet_interfaces": "127.0.0.1",
            "inet_protocols": "ipv4",
            "myhostname": "postfix.bench.test",
            "mydestination": "",
            "relayhost": f"[127.0.0.1]:{relay_port}",
            "mynetworks": "127.0.0.0/8",
            "smtpd_relay_restrictions": "permit_mynetworks, reject",
            "alias_maps": "",
            "alias_database": "",
            "local_transport": "error:5.1.1 no local delivery in the benchmark",
            "maillog_file": self.maillog,
            "maillog_file_prefixes": workdir,
            "smtp_destination_concurrency_limit": str(dest_concurrency),
            "multi_instance_enable": "no",
            "smtp_tls_security_level": "none",
            "smtpd_tls_security_level": "none",
        }
        self.postconf(**self.settings)
        self._write_master()

    def postconf(self, **kv):
        args = [f"{k}={v}" for k, v in kv.items()]
        self._run([POSTCONF, "-c", self.etc, "-e"] + args)

    def _write_master(self):
        path = os.path.join(self.etc, "master.cf")
        out = []
        with open(path) as f:
            for line in f:
                fields = line.split()
                if line[:1] in (" ", "\t", "#", "\n") or len(fields) < 8:
                    out.append(line)
                    continue
                if fields[1] == "inet":
                    if fields[0] != "smtp":
                        out.append("#" + line)  # only our one listener
                        continue
                    fields[0] = str(self.port)  # 127.0.0.1:PORT via inet_interfaces
                fields[4] = "n"  # no chroot
                out.append(" ".join(fields) + "\n")
        with open(path, "w") as f:
            f.write("".join(out))

    def _run(self, cmd, check=True):
        p = subprocess.run(cmd, stdin=subprocess.DEVNULL, capture_output=True, text=True)
        if check and p.returncode != 0:
            # Postfix commands log fatal errors to syslog unless stderr is a
            # tty: rerun under script(1) to see why.
            why = ""
            if shutil.which("script"):
                q = subprocess.run(["script", "-qec", " ".join(cmd), "/dev/null"],
                                   stdin=subprocess.DEVNULL, capture_output=True, text=True)
                why = q.stdout + q.stderr
            raise PostfixError(f"{' '.join(cmd)} failed ({p.returncode}): "
                               f"{p.stdout}{p.stderr}{why}"[-2000:])
        return p

    def start(self, timeout=30):
        self._run([POSTFIX, "-c", self.etc, "check"])
        self._run([POSTFIX, "-c", self.etc, "start"])
        pidfile = os.path.join(self.queue, "pid", "master.pid")
        deadline = time.monotonic() + timeout
        while True:
            try:
                with open(pidfile) as f:
                    self.master_pid = int(f.read().strip())
                break
            except (OSError, ValueError):
                if time.monotonic() > deadline:
                    raise PostfixError("postfix master did not write its pid file")
                time.sleep(0.05)
        wait_greeting(self.port, timeout)
        return self

    def pids(self):
        if self.master_pid is None:
            return []
        return [self.master_pid] + children_of(self.master_pid)

    def cpu(self):
        """CPU seconds of master (incl. reaped children) + live children."""
        if self.master_pid is None:
            return 0.0
        total = proc_cpu(self.master_pid, children=True)
        for c in children_of(self.master_pid):
            total += proc_cpu(c, children=True)
        return total

    def pss_kb(self):
        return sum(proc_pss_kb(p) for p in self.pids())

    def rss_kb(self):
        return sum(proc_status_kb(p) for p in self.pids())

    def queue_files(self, *queues):
        n = 0
        for q in queues or ("incoming", "active", "deferred", "hold", "maildrop"):
            for _, _, files in os.walk(os.path.join(self.queue, q)):
                n += len(files)
        return n

    def stop(self, timeout=20):
        pids = self.pids()
        if not pids:
            return
        self._run([POSTFIX, "-c", self.etc, "stop"], check=False)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline and any(alive(p) for p in pids):
            time.sleep(0.1)
        for p in pids:  # what did not go away on its own, by PID
            if alive(p):
                try:
                    os.kill(p, signal.SIGKILL)
                except ProcessLookupError:
                    pass
        self.master_pid = None


def postfix_version():
    try:
        return subprocess.run([POSTCONF, "-d", "-h", "mail_version"], capture_output=True,
                              text=True).stdout.strip()
    except OSError:
        return None
