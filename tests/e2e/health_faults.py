"""Real spool faults for the spool health tests (test_spool_health.py).

Everything here acts on the real kernel: small tmpfs file systems that are
filled up (blocks or inodes), read-only bind mounts,
immutable flags (root ignores permission bits, not FS_IMMUTABLE_FL), and
RocksDB files deleted or overwritten under a running kumod. Nothing in
kumod is mocked. The tests need root; the helpers unmount lazily so a busy
mount never outlives a test.
"""
import glob
import json
import os
import re
import socket
import subprocess
import time

import kumod_harness as kh

GATE_LATCHED = re.compile(r"spool health gate latched: ([^\n]*)")
GATE_CLEARED = re.compile(r"spool health gate cleared after (\d+)s without new errors")
BANNER_421 = "421 4.3.2 {host} the spool is not accepting writes. Try later"
HOLD_CONTENT = ("KumoMTA internal: delivery suspended: spool unhealthy: "
                "the spool is not accepting writes")
TF_PREFIX = "KumoMTA internal: error in deliver_message: "


def is_root():
    return os.geteuid() == 0


def run(*cmd, check=True):
    p = subprocess.run(list(cmd), capture_output=True, text=True)
    if check and p.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({p.returncode}): {p.stderr.strip()}")
    return p


# ---- file systems ----------------------------------------------------------------------------


class Mount:
    """One mount made by a test; umount() is idempotent and lazy when busy."""

    def __init__(self, where, kind):
        self.where = where
        self.kind = kind
        self.mounted = True

    def remount(self, opts):
        return run("mount", "-o", f"remount,{opts}", self.where, check=False)

    def umount(self):
        if not self.mounted:
            return
        self.mounted = False
        if run("umount", self.where, check=False).returncode != 0:
            run("umount", "-l", self.where, check=False)

    def statvfs(self):
        return os.statvfs(self.where)


def mount_tmpfs(where, size="4m", nr_inodes=None):
    os.makedirs(where, exist_ok=True)
    opts = f"size={size}" + (f",nr_inodes={nr_inodes}" if nr_inodes else "")
    run("mount", "-t", "tmpfs", "-o", opts, "tmpfs", where)
    return Mount(where, "tmpfs")


def fill_space(where, leave_bytes=0, name="filler"):
    """Writes a file until only about leave_bytes stay available (0: until
    ENOSPC). Returns the path."""
    path = os.path.join(where, name)
    st = os.statvfs(where)
    avail = st.f_bavail * st.f_frsize
    chunk = b"\0" * 65536
    want = max(0, avail - leave_bytes)
    written = 0
    with open(path, "wb") as f:
        try:
            while leave_bytes == 0 or written < want:
                n = len(chunk) if leave_bytes == 0 else min(len(chunk), want - written)
                if n <= 0:
                    break
                f.write(chunk[:n])
                f.flush()
                written += n
        except OSError:
            pass
    return path


def fill_inodes(where, leave=0, name="inodes"):
    """Creates empty files until only `leave` inodes stay free (0: until
    ENOSPC). Returns the directory holding them."""
    d = os.path.join(where, name)
    os.makedirs(d, exist_ok=True)
    i = 0
    while True:
        if leave and os.statvfs(where).f_favail <= leave:
            break
        try:
            with open(os.path.join(d, f"f{i}"), "wb"):
                pass
        except OSError:
            break
        i += 1
    return d


def remove_tree(path):
    run("rm", "-rf", path)


def set_immutable(paths, on):
    """chattr +i/-i: root cannot create, delete or write through an
    immutable inode either."""
    paths = list(paths)
    if paths:
        run("chattr", "+i" if on else "-i", *paths)


def rocks_files(path, pattern="*"):
    return sorted(glob.glob(os.path.join(path, pattern)))


# ---- policy ----------------------------------------------------------------------------------

POLICY = r"""
local kumo = require 'kumo'
local function append(name, line)
  local f = assert(io.open('{dir}/' .. name, 'a'))
  f:write(line .. '\n')
  f:close()
end

kumo.on('init', function()
  kumo.define_spool {
    name = 'data', path = '%(data_path)s', kind = '%(data_kind)s',
    error_latch_duration = '%(latch)s', error_unlatch_duration = '%(unlatch)s',
    min_free_space = '%(min_free_space)s', min_free_inodes = '%(min_free_inodes)s',
    %(data_extra)s
  }
  kumo.define_spool {
    name = 'meta', path = '%(meta_path)s', kind = '%(meta_kind)s',
    error_latch_duration = '%(latch)s', error_unlatch_duration = '%(unlatch)s',
    min_free_space = '%(min_free_space)s', min_free_inodes = '%(min_free_inodes)s',
    %(meta_extra)s
  }
  kumo.configure_local_logs { log_dir = '{logs}', max_segment_duration = '1s' }
  kumo.start_esmtp_listener { listen = '127.0.0.1:{smtp_port}', hostname = '{hostname}' }
  kumo.dns.configure_resolver { name_servers = { '{dns}' } }
  if kumo.start_http_listener then
    kumo.start_http_listener { listen = '127.0.0.1:{http_port}', trusted_hosts = { '127.0.0.1' } }
    append('http-enabled', 'yes')
  end
  %(init)s
end)

kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    retry_interval = '%(retry)s',
    protocol = { custom_lua = { constructor = 'make.sink' } },
  }
end)

-- Appends every delivered id to {dir}/delivered (a normal file system, so
-- delivery works while the spool is sick). The first attempt of each
-- message fails when {dir}/first-fails exists, which parks the messages in
-- their scheduled queue on a known retry schedule.
kumo.on('make.sink', function(domain, tenant, campaign)
  local connection = {}
  function connection:send(message)
    local id = message:id()
    append('attempts', id .. ' ' .. tostring(message:num_attempts()))
    local ff = io.open('{dir}/first-fails', 'r')
    if ff then
      ff:close()
      if message:num_attempts() == 0 then
        kumo.reject(400, 'first attempt fails')
      end
    end
    append('delivered', id)
    return 'OK'
  end
  return connection
end)
%(handlers)s
"""


def policy(data_path="{spool}/data", meta_path="{spool}/meta", data_kind="LocalDisk",
           meta_kind="RocksDB", latch="1s", unlatch="3s", min_free_space="10%",
           min_free_inodes="10%", retry="2s", init="", handlers="", data_extra="",
           meta_extra=""):
    return POLICY % dict(data_path=data_path, meta_path=meta_path, data_kind=data_kind,
                         meta_kind=meta_kind, latch=latch, unlatch=unlatch,
                         min_free_space=min_free_space, min_free_inodes=min_free_inodes,
                         retry=retry, init=init, handlers=handlers, data_extra=data_extra,
                         meta_extra=meta_extra)


# ---- observations ----------------------------------------------------------------------------


def lines(k, name):
    p = k.path(name)
    if not os.path.exists(p):
        return []
    with open(p) as f:
        return [l.rstrip("\n") for l in f if l.strip()]


def delivered(k):
    return lines(k, "delivered")


def latch_events(k):
    return GATE_LATCHED.findall(k.diag())


def clear_events(k):
    return GATE_CLEARED.findall(k.diag())


def wait_latched(k, timeout, after=0):
    """Waits until the diag log shows more than `after` latch events; returns
    the monotonic time it was seen."""
    kh.wait_until(lambda: len(latch_events(k)) > after, timeout, interval=0.02,
                  what="'spool health gate latched' on kumod's stderr")
    return time.monotonic()


def wait_cleared(k, timeout, after=0):
    kh.wait_until(lambda: len(clear_events(k)) > after, timeout, interval=0.05,
                  what="'spool health gate cleared' on kumod's stderr")
    return time.monotonic()


def banner(k):
    line = k.banner()
    return line.decode().rstrip("\r\n") if line is not None else None


def send_many(k, rcpts, ehlo="health.e2e.test", sender="sender@src.example", subject="health",
              body="spool health test"):
    """One transaction with one message per recipient. Returns (code, text,
    ids) where ids is [] unless the DATA reply was 250."""
    s = k.raw()
    try:
        assert s.banner[0] == 220, s.banner
        assert s.cmd(f"EHLO {ehlo}")[0] == 250
        assert s.cmd(f"MAIL FROM:<{sender}>")[0] == 250
        for r in rcpts:
            assert s.cmd(f"RCPT TO:<{r}>")[0] == 250
        assert s.cmd("DATA")[0] == 354
        code, text = s.cmd(f"From: <{sender}>\r\nSubject: {subject}\r\n\r\n{body}\r\n.")
        ids = kh.parse_ids(text) if code == 250 else []
        s.cmd("QUIT")
        return code, text, ids
    finally:
        s.close()


class OpenSession:
    """An SMTP session opened (and taken up to DATA's 354) while the spool
    is still healthy, so its message is saved after a fault is applied."""

    def __init__(self, k, rcpt, ehlo="inflight.e2e.test", sender="sender@src.example"):
        self.s = k.raw()
        assert self.s.banner[0] == 220, self.s.banner
        assert self.s.cmd(f"EHLO {ehlo}")[0] == 250
        assert self.s.cmd(f"MAIL FROM:<{sender}>")[0] == 250
        assert self.s.cmd(f"RCPT TO:<{rcpt}>")[0] == 250
        assert self.s.cmd("DATA")[0] == 354
        self.sender = sender

    def finish(self):
        code, text = self.s.cmd(f"From: <{self.sender}>\r\nSubject: in flight\r\n\r\nbody\r\n.")
        try:
            self.s.cmd("QUIT")
        except OSError:
            pass
        self.s.close()
        return code, text


def http_get(port, path, timeout=5.0):
    """(status, body) of a plain HTTP/1.0 GET, or (None, None) when nothing listens."""
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall(f"GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n".encode())
            buf = b""
            while True:
                c = s.recv(65536)
                if not c:
                    break
                buf += c
    except OSError:
        return None, None
    head, _, body = buf.partition(b"\r\n\r\n")
    m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    return (int(m.group(1)) if m else None), body.decode("utf-8", "replace")


def http_post_json(port, path, obj, timeout=10.0):
    data = json.dumps(obj).encode()
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
            s.sendall((f"POST {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n"
                       f"Content-Type: application/json\r\nContent-Length: {len(data)}\r\n\r\n")
                      .encode() + data)
            buf = b""
            while True:
                c = s.recv(65536)
                if not c:
                    break
                buf += c
    except OSError:
        return None, None
    head, _, body = buf.partition(b"\r\n\r\n")
    m = re.match(rb"HTTP/1\.[01] (\d{3})", head)
    return (int(m.group(1)) if m else None), body.decode("utf-8", "replace")


def http_enabled(k):
    return bool(lines(k, "http-enabled"))
