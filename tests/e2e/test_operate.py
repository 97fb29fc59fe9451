"""Issue 15, running kumod as a service: --version, --validate catching what a
start would fail on, one shared ephemeral port, systemd readiness on
$NOTIFY_SOCKET, a second SIGTERM during shutdown, --user with private file
modes."""
import json
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
    # kumo/version.md: kumo.version is the string `kumod --version` reports
    m = re.match(r"kumod (\S+)\n", out)
    assert m and re.fullmatch(r"(\d{4}\.\d\d\.\d\d-[0-9a-f]+|0\.0\.0-unknown)", m.group(1)), out
    with tempfile.NamedTemporaryFile("w", suffix=".lua") as f:
        f.write("print(kumo.version)\n")
        f.flush()
        rc, lua_out = run_kumod("--script", f.name)
    assert rc == 0, lua_out
    assert lua_out.strip() == m.group(1), (lua_out, out)
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
        # the spool and log directories and all below them (their parents
        # only hold directories and stay traversable)
        for top in (os.path.join(k.spool, "data"), os.path.join(k.spool, "meta"), k.logs):
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


@pytest.mark.skipif(os.getuid() != 0, reason="--user needs root")
def test_installed_kumod_runs_the_installed_example_as_an_unprivileged_user():
    """cmake --install to a fresh prefix; the installed kumod, with the
    installed example policy, as user nobody: READY=1 on NOTIFY_SOCKET, a
    message to sink.test lands in the example's maildir, the records are in
    the logs, and nothing under the spool or logs is readable by others."""
    build = os.path.dirname(os.path.abspath(kh.kumod_bin()))
    top = tempfile.mkdtemp(prefix="kumod-inst-", dir="/var/tmp")
    os.chmod(top, 0o755)
    try:
        prefix = os.path.join(top, "prefix")
        p = subprocess.run(["cmake", "--install", build, "--prefix", prefix],
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=120)
        assert p.returncode == 0, p.stdout.decode()
        for f in ("sbin/kumod", "bin/kcli", "share/man/man8/kumod.8", "share/man/man1/kcli.1",
                  "share/kumod/policy/init.lua", "lib/systemd/system/kumod.service"):
            assert os.path.exists(os.path.join(prefix, f)), f
        unit = open(os.path.join(prefix, "lib/systemd/system/kumod.service")).read()
        assert "Type=notify" in unit and "/sbin/kumod --policy" in unit and "--user kumod" in unit
        # the installed kumod finds its Lua share directory beside itself
        script = os.path.join(top, "path.lua")
        with open(script, "w") as f:
            f.write("print(package.path)\n")
        out = subprocess.run([os.path.join(prefix, "sbin/kumod"), "--script", script],
                             stdout=subprocess.PIPE, timeout=30).stdout.decode()
        assert f"{prefix}/share/kumod/lua/?.lua" in out and "/opt/kumomta/share/?.lua" in out

        run = os.path.join(top, "run")  # created for nobody by kumod --user
        notify = os.path.join(top, "notify.sock")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(notify)
        os.chmod(notify, 0o777)
        sock.settimeout(60)
        smtp_port, http_port = kh.free_port(), kh.free_port()
        env = dict(os.environ, KUMOD_EXAMPLE_DIR=run, NOTIFY_SOCKET=notify,
                   KUMOD_EXAMPLE_LISTEN=f"127.0.0.1:{smtp_port}",
                   KUMOD_EXAMPLE_HTTP=f"127.0.0.1:{http_port}", ASAN_OPTIONS="detect_leaks=0")
        errlog = open(os.path.join(top, "stderr.log"), "wb")
        proc = subprocess.Popen([os.path.join(prefix, "sbin/kumod"), "--policy",
                                 os.path.join(prefix, "share/kumod/policy/init.lua"),
                                 "--user", "nobody"], env=env, stdout=errlog, stderr=errlog)
        try:
            got = sock.recv(4096).decode()
            assert "READY=1" in got.split("\n"), got
            with smtplib.SMTP("127.0.0.1", smtp_port, timeout=10) as s:
                s.sendmail("me@example.com", ["someone@sink.test"],
                           b"Subject: installed\r\n\r\nhello\r\n")
            new = os.path.join(run, "maildir", "new")
            wait_until(lambda: os.path.isdir(new) and os.listdir(new), 30,
                       what="delivery into the example's maildir")
            # kumod runs as nobody
            with open(f"/proc/{proc.pid}/status") as f:
                uids = [l for l in f if l.startswith("Uid:")][0].split()[1:]
            assert set(uids) == {"65534"}, uids
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(60) == 0, open(os.path.join(top, "stderr.log")).read()
            sock.close()
        records = kh.read_log_records(os.path.join(run, "logs"))
        types = {r["type"] for r in records}
        assert {"Reception", "Delivery"} <= types, types
        for top_dir in (os.path.join(run, "spool", "data"), os.path.join(run, "spool", "meta"),
                        os.path.join(run, "logs")):
            for dirpath, dirs, files in os.walk(top_dir):
                st = os.stat(dirpath)
                assert st.st_uid == 65534 and stat.S_IMODE(st.st_mode) & 0o077 == 0, dirpath
                for f in files:
                    st = os.lstat(os.path.join(dirpath, f))
                    assert st.st_uid == 65534 and stat.S_IMODE(st.st_mode) & 0o077 == 0, f
    finally:
        shutil.rmtree(top, ignore_errors=True)


# ---- kcli logs -------------------------------------------------------------------------

def kcli_path():
    return os.environ.get("KCLI_BIN") or os.path.join(os.path.dirname(kh.kumod_bin()), "kcli")


def _send(k, subject):
    with smtplib.SMTP("127.0.0.1", k.smtp_port, timeout=10) as s:
        s.ehlo("logs.e2e.test")
        s.mail("a@a.example")
        s.rcpt("b@held.example")
        code, text = s.data(f"Subject: {subject}\r\n\r\nbody\r\n".encode())
    assert code == 250, text
    return kh.parse_ids(text.decode())[0]


def test_kcli_logs_reads_the_open_segment_filters_and_follows(kumod_factory):
    k = kumod_factory()
    first = _send(k, "one")
    k.wait_records(lambda r: r["id"] == first and r["type"] == "Reception")
    # kumod is running: the segment is still open (zstdcat would say
    # "premature end"); kcli reads what is there
    p = subprocess.run([kcli_path(), "logs", "--dir", k.logs, "--json", "--type", "Reception"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, timeout=30)
    assert p.returncode == 0, p.stderr.decode()
    recs = [json.loads(l) for l in p.stdout.decode().splitlines()]
    assert [r["id"] for r in recs] == [first], recs
    # the text form: one line per record
    p = subprocess.run([kcli_path(), "logs", "--dir", k.logs, "--since", "1h"],
                       stdout=subprocess.PIPE, timeout=30)
    assert re.search(rf"Reception +{first} ", p.stdout.decode()), p.stdout.decode()
    # --since in the future shows nothing; --queue filters
    p = subprocess.run([kcli_path(), "logs", "--dir", k.logs, "--since", "2099-01-01T00:00:00Z"],
                       stdout=subprocess.PIPE, timeout=30)
    assert p.stdout == b""
    p = subprocess.run([kcli_path(), "logs", "--dir", k.logs, "--queue", "nope.example"],
                       stdout=subprocess.PIPE, timeout=30)
    assert p.stdout == b""
    # --follow prints what arrives later
    f = subprocess.Popen([kcli_path(), "logs", "--dir", k.logs, "-f", "--json", "--type",
                          "Reception"], stdout=subprocess.PIPE)
    try:
        assert json.loads(f.stdout.readline())["id"] == first
        second = _send(k, "two")
        assert json.loads(f.stdout.readline())["id"] == second
    finally:
        f.terminate()
        f.wait(10)
    # bad input: a clear message
    p = subprocess.run([kcli_path(), "logs", "--dir", "/nonexistent"], stderr=subprocess.PIPE,
                       timeout=30)
    assert p.returncode == 1 and b"/nonexistent" in p.stderr
