"""Issue 15, running kumod as a service: --version, --validate catching what a
start would fail on, one shared ephemeral port, systemd readiness on
$NOTIFY_SOCKET, a second SIGTERM during shutdown, --user with private file
modes."""
import os
import re
import shutil
import signal
import smtplib
import socket
import stat
import subprocess
import tempfile
import threading
import time

import pytest

import kumod_harness as kh
from kumod_harness import default_policy, wait_until


def run_kumod(*args, timeout=60):
    p = subprocess.run([kh.kumod_bin()] + list(args), stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, timeout=timeout,
                       env=dict(os.environ, ASAN_OPTIONS="detect_leaks=0"))
    return p.returncode, p.stdout.decode("utf-8", "replace")


def test_version_names_kumod_and_its_libraries():
    rc, out = run_kumod("--version")
    assert rc == 0, out
    assert re.match(r"kumod \d+\.\d+\.\d+ \(\S+\)\n", out), out
    for lib in ("Lua 5.4", "libevent 2.1", "RocksDB ", "OpenSSL 3", "c-ares 1.", "jansson 2.",
                "zstd 1."):
        assert lib in out, (lib, out)


BAD_POLICIES = [
    ("listen port out of range",
     "kumo.start_esmtp_listener { listen = '127.0.0.1:99999' }", r"listen"),
    ("listen not an address",
     "kumo.start_esmtp_listener { listen = 'somewhere' }", r"listen"),
    ("bad duration",
     "kumo.start_esmtp_listener { listen = '127.0.0.1:2525', client_timeout = 'soon' }",
     r"client_timeout"),
    ("unknown listener key",
     "kumo.start_esmtp_listener { listen = '127.0.0.1:2525', no_such_key = 1 }", r"no_such_key"),
]


@pytest.mark.parametrize("what,line,rx", BAD_POLICIES, ids=[b[0] for b in BAD_POLICIES])
def test_validate_names_the_policy_line(tmp_path, what, line, rx):
    policy = tmp_path / "bad.lua"
    policy.write_text(f"""local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool {{ name = 'data', path = '{tmp_path}/d', kind = 'RocksDB' }}
  kumo.define_spool {{ name = 'meta', path = '{tmp_path}/m', kind = 'RocksDB' }}
  {line}
end)
""")
    rc, out = run_kumod("--validate", "--policy", str(policy))
    assert rc == 1, out
    assert "bad.lua:5:" in out, out  # the line of the faulty call
    assert re.search(rx, out), out
    assert "kumod stopped" not in out


def test_validate_requires_the_spools(tmp_path):
    policy = tmp_path / "nospool.lua"
    policy.write_text("local kumo = require 'kumo'\nkumo.on('init', function() end)\n")
    rc, out = run_kumod("--validate", "--policy", str(policy))
    assert rc == 1, out
    assert "no spool named 'data' is defined" in out, out


def test_validate_of_a_good_policy_is_quiet(tmp_path):
    here = os.path.dirname(os.path.abspath(__file__))
    rc, out = run_kumod("--validate", "--policy", os.path.join(here, "..", "..", "policy",
                                                               "init.lua"))
    assert rc == 0, out
    assert "is valid" in out and "kumod stopped" not in out


def listening_ports(pid):
    """TCP ports the process listens on, from /proc (no ss/netstat needed)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        m = re.fullmatch(r"socket:\[(\d+)\]", link)
        if m:
            inodes.add(m.group(1))
    ports = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            next(f)
            for row in f:
                cols = row.split()
                if cols[3] == "0A" and cols[9] in inodes:  # LISTEN
                    ports.append(int(cols[1].split(":")[1], 16))
    return ports


def test_port_zero_is_one_port_shared_by_every_reactor(kumod_factory):
    policy = default_policy().replace("listen = '127.0.0.1:{smtp_port}'",
                                      "listen = '127.0.0.1:0'")
    k = kumod_factory(policy=policy, threads=3, start=False)
    k.start(wait=False)
    m = k.wait_diag(r"esmtp listener on 127\.0\.0\.1:(\d+) ")
    port = int(m.group(1))
    assert port != 0
    k.ports["smtp"] = port
    k.wait_ready()
    # three reactors, three sockets, one port
    ports = listening_ports(k.proc.pid)
    assert ports.count(port) == 3 and set(ports) == {port}, ports
    with smtplib.SMTP("127.0.0.1", port, timeout=10) as s:
        assert s.noop()[0] == 250


def test_readiness_on_notify_socket(kumod_factory, tmp_path):
    path = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(path)
    sock.settimeout(30)
    k = kumod_factory(env={"NOTIFY_SOCKET": path}, start=False)
    k.start(wait=False)
    got = sock.recv(4096).decode()
    assert "READY=1" in got.split("\n"), got
    assert f"MAINPID={k.proc.pid}" in got, got
    # ready means ready: the listener answers
    assert k.banner().startswith(b"220 ")
    k.signal(signal.SIGTERM)
    got = sock.recv(4096).decode()
    assert "STOPPING=1" in got.split("\n"), got
    k.proc.wait(30)
    k.expect_exit = True
    sock.close()


def test_second_sigterm_under_load_loses_nothing(kumod_factory):
    k = kumod_factory(data_kind="RocksDB", meta_kind="RocksDB")
    acked = []
    stop = threading.Event()

    def inject():
        try:
            with smtplib.SMTP("127.0.0.1", k.smtp_port, timeout=10) as s:
                while not stop.is_set():
                    s.sendmail("a@a.example", ["b@held.example"],
                               b"Subject: sigterm\r\n\r\nbody\r\n")
                    acked.append(1)
        except (smtplib.SMTPException, OSError):
            pass

    threads = [threading.Thread(target=inject, daemon=True) for _ in range(4)]
    for t in threads:
        t.start()
    wait_until(lambda: len(acked) >= 100, 60, what="100 messages acknowledged")
    k.signal(signal.SIGTERM)
    time.sleep(0.05)
    k.signal(signal.SIGTERM)
    assert k.proc.wait(60) == 0
    k.expect_exit = True
    stop.set()
    for t in threads:
        t.join(10)
    diag = k.diag()
    assert "kumod stopped" in diag
    n = len(acked)
    # a clean spool: nothing for the journal to replay, everything back
    k.start()
    m = k.wait_diag(r"spool journal .*: replayed (\d+) records")
    assert m.group(1) == "0", k.diag()
    m = k.wait_diag(r"spool enumeration done: (\d+) messages \((\d+) unreadable\)")
    assert int(m.group(1)) >= n and m.group(2) == "0"


@pytest.mark.skipif(os.getuid() != 0, reason="--user needs root")
def test_user_owns_private_spool_and_logs():
    # outside pytest's 0700 tmp dir, so that nobody can reach it
    base = tempfile.mkdtemp(prefix="kumod-user-", dir="/var/tmp")
    os.chmod(base, 0o755)
    try:
        k = kh.Kumod(base, args=["--user", "nobody"], data_kind="RocksDB", meta_kind="RocksDB")
        k.start()
        with smtplib.SMTP("127.0.0.1", k.smtp_port, timeout=10) as s:
            s.sendmail("a@a.example", ["b@held.example"], b"Subject: private\r\n\r\nbody\r\n")
        k.wait_records(lambda r: r["type"] == "Reception")
        k.stop()
        nobody = 65534
        for top in (k.spool, k.logs):
            for dirpath, dirs, files in os.walk(top):
                st = os.stat(dirpath)
                assert st.st_uid == nobody, dirpath
                assert stat.S_IMODE(st.st_mode) == 0o700, (dirpath, oct(st.st_mode))
                for f in files:
                    st = os.lstat(os.path.join(dirpath, f))
                    assert st.st_uid == nobody, f
                    assert stat.S_IMODE(st.st_mode) & 0o077 == 0, (f, oct(st.st_mode))
        assert "cannot" not in k.diag().lower() or "ERROR" not in k.diag()
        k.close()
    finally:
        shutil.rmtree(base, ignore_errors=True)
