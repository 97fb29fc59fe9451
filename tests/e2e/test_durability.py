"""Issue 3 (ingress), durability: 10 concurrent clients inject up to 2,000
messages, kumod is killed with SIGKILL in the middle, and after a restart on
the same spool every message that got a 250 is enumerated again."""
import glob
import os
import smtplib
import threading

import pytest

from kumod_harness import NullDns, parse_ids, run_threads, wait_until

CLIENTS = 10
TOTAL = 2000
KILL_AFTER = 800

HANDLERS = """
kumo.on('spool_message_enumerated', function(msg)
  local f = assert(io.open('{dir}/enumerated', 'a'))
  f:write(msg:id() .. '\\n')
  f:close()
end)
"""

BODY = (b"From: <dur@a.example>\r\nSubject: durability\r\n\r\n" +
        b"0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef012345\r\n" * 40)


class Injector:
    def __init__(self, k):
        self.k = k
        self.lock = threading.Lock()
        self.acked = set()
        self.attempted = 0
        self.errors = []
        self.enough = threading.Event()

    def client(self, n):
        try:
            s = self.k.smtp(ehlo=f"dur{n}.e2e.test")
            for i in range(TOTAL // CLIENTS):
                assert s.mail(f"dur{n}@a.example")[0] == 250
                assert s.rcpt(f"r{n}-{i}@d.example")[0] == 250
                with self.lock:
                    self.attempted += 1
                code, text = s.data(BODY)
                if code != 250:
                    self.errors.append((code, text))
                    return
                ids = parse_ids(text.decode())
                with self.lock:
                    self.acked.update(ids)
                    if len(self.acked) >= KILL_AFTER:
                        self.enough.set()
        except (smtplib.SMTPException, OSError):
            pass  # the daemon was killed under us
        except AssertionError as e:
            self.errors.append(repr(e))


def read_ids(path):
    try:
        with open(path) as f:
            return [l.strip() for l in f if l.strip()]
    except FileNotFoundError:
        return []


def assert_all_enumerated(k, acked):
    """After a restart: the enumeration finds no unreadable entry, every
    enumerated message is announced once, and no acknowledged one is
    missing. Returns (n, enumerated ids)."""
    m = k.wait_diag(r"spool enumeration done: (\d+) messages \((\d+) unreadable\)")
    n, unreadable = int(m.group(1)), int(m.group(2))
    assert unreadable == 0
    enumerated = wait_until(lambda: (lambda ids: ids if len(ids) >= n else None)(
        read_ids(k.path("enumerated"))), 30, what=f"{n} spool_message_enumerated events")
    assert len(enumerated) == n == len(set(enumerated))
    missing = acked - set(enumerated)
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:3]}"
    return n, enumerated


def inject_then_kill9(k):
    """CLIENTS sessions inject; kumod gets SIGKILL once KILL_AFTER messages
    are acknowledged. Returns the injector and the acknowledged ids."""
    inj = Injector(k)
    threads = run_threads([lambda n=n: inj.client(n) for n in range(CLIENTS)])
    inj.enough.wait(timeout=300)
    k.kill9()
    for t in threads:
        t.join(60)
        assert not t.is_alive()
    assert inj.errors == []
    acked = set(inj.acked)
    assert len(acked) >= KILL_AFTER
    assert len(acked) < TOTAL, "the kill came too late to test anything"
    return inj, acked


@pytest.mark.parametrize("kind", ["RocksDB", "LocalDisk"])
def test_kill9_loses_no_acknowledged_message(kumod_factory, kind):
    k = kumod_factory(data_kind=kind, meta_kind=kind, handlers=HANDLERS, threads=2)
    inj, acked = inject_then_kill9(k)

    k.start()
    n, enumerated = assert_all_enumerated(k, acked)
    # nothing beyond what was sent: at most the messages in flight at the kill
    print(f"{kind}: acked={len(acked)} enumerated={n} attempted={inj.attempted}")
    assert n <= inj.attempted
    if kind == "LocalDisk":
        # no message is half-present: every meta entry has its data
        meta_ids = k.local_disk_ids("meta")
        data_ids = k.local_disk_ids("data")
        assert meta_ids == set(enumerated)
        assert meta_ids <= data_ids
    # and the restarted daemon takes mail again
    s = k.smtp(ehlo="after-restart.e2e.test")
    assert s.mail("after@a.example")[0] == 250
    assert s.rcpt("r@d.example")[0] == 250
    code, text = s.data(BODY)
    assert code == 250 and len(parse_ids(text.decode())) == 1
    s.quit()


HOLD_THEN_MAILDIR = """
-- first run: every message is tried once and held (400, retry in an hour);
-- once {dir}/release exists (the second run), queues deliver to a maildir
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  local f = io.open('{dir}/release', 'r')
  if f then
    f:close()
    return kumo.make_queue_config { protocol = { maildir_path = '{dir}/maildir' } }
  end
  return kumo.make_queue_config {
    protocol = { custom_lua = { constructor = 'hold' } }, retry_interval = '1 hour',
  }
end)
kumo.on('hold', function(domain, tenant, campaign)
  local conn = {}
  function conn:send(msg) kumo.reject(400, '4.4.1 held by the test') end
  function conn:close() end
  return conn
end)
"""


def maildir_ids(path):
    import os
    import re
    out = []
    for sub in ("new", "cur"):
        d = os.path.join(path, sub)
        for name in os.listdir(d) if os.path.isdir(d) else []:
            m = re.search(r"_([0-9a-f]{32})\.", name)
            assert m, name
            out.append(m.group(1))
    return out


def test_kill9_then_enumeration_without_handler_delivers_every_acknowledged_message(
        kumod_factory):
    """No spool_message_enumerated handler: start-up takes the fast path
    (meta scanned, not parsed into messages; batches straight to the queue
    owners). Every acknowledged message must still reach its queue and be
    delivered exactly once after the restart."""
    k = kumod_factory(data_kind="RocksDB", meta_kind="RocksDB", handlers=HOLD_THEN_MAILDIR,
                      threads=2)
    inj, acked = inject_then_kill9(k)

    open(k.path("release"), "w").close()
    k.start()
    m = k.wait_diag(r"spool enumeration done: (\d+) messages \((\d+) unreadable\)")
    n, unreadable = int(m.group(1)), int(m.group(2))
    assert unreadable == 0
    assert len(acked) <= n <= inj.attempted
    delivered = wait_until(lambda: (lambda ids: ids if len(ids) >= n else None)(
        maildir_ids(k.path("maildir"))), 60, what=f"{n} maildir deliveries")
    assert len(delivered) == n == len(set(delivered)), "a message was delivered twice"
    missing = acked - set(delivered)
    assert not missing, f"{len(missing)} acknowledged messages lost, e.g. {sorted(missing)[:3]}"


def test_journal_brings_back_what_the_stores_lost(kumod_factory):
    """The spool journal (one fdatasync per group commit; the RocksDB stores
    are written unsynced and synced when it wraps): kill -9 in the middle of
    the injection, then delete both stores' WAL files, which is what a power
    loss can take from writes that were never synced. Every acknowledged
    message must come back from the journal at the restart, and nothing
    that was never sent."""
    k = kumod_factory(data_kind="RocksDB", meta_kind="RocksDB", handlers=HANDLERS, threads=2)
    inj, acked = inject_then_kill9(k)
    assert os.path.getsize(os.path.join(k.spool, "data", "kumod-journal")) == 16 << 20
    wals = glob.glob(os.path.join(k.spool, "*", "*.log"))
    assert len(wals) >= 2, wals
    for w in wals:
        os.unlink(w)

    k.start()
    m = k.wait_diag(r"spool journal \S+ \(16384 KiB(?:, direct I/O)?\): "
                    r"replayed (\d+) records \((\d+) operations\)")
    assert int(m.group(1)) > 0 and int(m.group(2)) >= len(acked)
    n, enumerated = assert_all_enumerated(k, acked)
    assert n <= inj.attempted
    # an orderly stop checkpoints: the next start has nothing to replay
    k.stop()
    k.start()
    m = k.wait_diag(r"spool journal \S+ \(16384 KiB(?:, direct I/O)?\): replayed (\d+) records")
    assert m.group(1) == "0", m.group(0)
    k.wait_diag(r"spool enumeration done: %d messages" % n)


def test_journal_size_zero_keeps_no_journal_and_loses_nothing(kumod_factory):
    """journal_size = 0 on the spools: no journal file, and every
    acknowledged message still survives kill -9 (the stores' WALs are then
    synced by each group commit)."""
    k = kumod_factory(data_kind="RocksDB", meta_kind="RocksDB", handlers=HANDLERS, threads=2,
                      spool="journal_size = 0")
    inj, acked = inject_then_kill9(k)
    assert not os.path.exists(os.path.join(k.spool, "data", "kumod-journal"))
    k.start()
    m = k.wait_diag(r"spool enumeration done: (\d+) messages \((\d+) unreadable\)")
    n = int(m.group(1))
    enumerated = wait_until(lambda: (lambda ids: ids if len(ids) >= n else None)(
        read_ids(k.path("enumerated"))), 30, what=f"{n} spool_message_enumerated events")
    assert not acked - set(enumerated)
    assert "spool journal" not in k.diag()


def test_sigterm_while_enumerated_messages_churn_exits_cleanly(kumod_factory):
    """Regression: thousands of enumerated messages cycling through a busy
    custom_lua queue (tried, held, requeued) when SIGTERM arrives. Steps
    still pending for dispatchers must die with them: exit 0, no crash, and
    every message is still there for the next start."""
    import subprocess
    k = kumod_factory(data_kind="RocksDB", meta_kind="RocksDB", handlers=HOLD_THEN_MAILDIR,
                      threads=2)
    r = subprocess.run(["smtp-source", "-s", "10", "-m", "3000", "-l", "512", "-f",
                        "src@a.example", "-t", "rcpt@d.example", "-M", "churn.e2e.test",
                        f"127.0.0.1:{k.smtp_port}"], capture_output=True, timeout=300)
    assert r.returncode == 0, r
    for round in range(3):
        assert k.stop() == 0, k.diag()
        k.start()
        m = k.wait_diag(r"spool enumeration done: (\d+) messages \((\d+) unreadable\)", 60)
        assert (int(m.group(1)), int(m.group(2))) == (3000, 0), m.group(0)
    assert k.stop() == 0, k.diag()


def sigterm_rounds(k, tag, rounds=4, n=40):
    """Starts k, sends n messages to n new domains ("r@<tag><round>-<i>.example"),
    stops it with SIGTERM a little later each round (0, 50, 100... ms) and
    asserts a clean exit. Returns how many messages were acknowledged."""
    import time
    for rnd in range(rounds):
        k.start()
        s = k.smtp(ehlo=f"{tag}.e2e.test")
        for i in range(n):
            assert s.sendmail("src@a.example", [f"r@{tag}{rnd}-{i}.example"],
                              f"Subject: {tag}\r\n\r\nbody\r\n".encode()) == {}
        s.close()
        time.sleep(0.05 * rnd)
        assert k.stop() == 0, k.diag()
    return rounds * n


def test_sigterm_while_queues_wait_for_their_mx_exits_cleanly(kumod_factory):
    """Regression: SIGTERM while scheduled queues are still resolving their
    MX. The queues are freed at shutdown while the reactors still run (the
    spool drains after them); an answer arriving in between must not reach a
    freed queue (it did: SIGSEGV in sched_site_resolved). A NullDns holds its
    NXDOMAIN answers back 0-400 ms, staggered, so that some land inside that
    window in each of the rounds; every message is still there afterwards."""
    dns = NullDns(delay=lambda n: 0.01 * (n % 40))
    k = kumod_factory(start=False, threads=2,
                      init=f"kumo.dns.configure_resolver {{ name_servers = {{ '{dns.addr}' }} }}")
    total = sigterm_rounds(k, "wait")
    k.start()
    m = k.wait_diag(r"spool enumeration done: (\d+) messages \((\d+) unreadable\)", 60)
    assert (int(m.group(1)), int(m.group(2))) == (total, 0), m.group(0)
    assert any(q.startswith("wait") for q in dns.queries), dns.queries[:5]
    assert k.stop() == 0, k.diag()


@pytest.mark.parametrize("event", ["get_queue_config", "get_egress_path_config"])
def test_sigterm_while_a_queue_handler_sleeps_exits_cleanly(kumod_factory, event):
    """Regression, the same window as above for a scheduled queue whose
    get_queue_config, or a ready queue whose get_egress_path_config, is still
    waiting (kumo.sleep, staggered 0-400 ms) when the queues are freed: the
    handler's completion must not reach the freed queue."""
    # one site per domain (so one ready queue each), at a port nobody serves
    handlers = f"""
local n, sites = 0, 0
local function nap() n = n + 1; kumo.sleep(0.01 * (n % 40)) end
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  {'nap()' if event == 'get_queue_config' else ''}
  sites = sites + 1
  local addr = '127.0.' .. (1 + sites // 200) .. '.' .. (1 + sites % 200)
  return kumo.make_queue_config {{
    protocol = {{ smtp = {{ mx_list = {{ {{ name = 'mx.' .. domain, addr = addr }} }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function(domain, source, site)
  {'nap()' if event == 'get_egress_path_config' else ''}
  return kumo.make_egress_path {{ smtp_port = {{port:closed}} }}
end)
"""
    k = kumod_factory(start=False, threads=2, handlers=handlers)
    sigterm_rounds(k, "cfg")


def spool_stats(k):
    """The counters kumod logs when it stops in order."""
    import re
    m = re.search(r"spool stats: (.*)", k.diag())
    assert m, "no spool stats line in the diagnostic log"
    return {key: int(v) for key, v in re.findall(r"(\w+)=(\d+)", m.group(1))}


@pytest.mark.parametrize("spool,syncs", [
    ("commit_delay = '100ms', commit_siblings = 1", 1),
    ("commit_delay = 0, commit_siblings = 1", 2),
    ("commit_delay = '100ms'", 2),  # default commit_siblings = 4: one body is too few
])
def test_commit_delay_lets_a_body_in_progress_share_the_sync(kumod_factory, spool, syncs):
    """commit_delay and commit_siblings (kumod's own define_spool keys):
    session B has sent its whole message while session A is still sending
    its body. With a 100 ms window and one sibling enough, B's group commit
    waits for A (announced since A's 354), and both 250s come from one sync;
    with commit_delay = 0, or fewer announced bodies than commit_siblings,
    B is synced on its own. A lone client is never delayed."""
    import time
    k = kumod_factory(spool=spool + ",")
    body = b"Subject: window\r\n\r\nbody\r\n.\r\n"
    a, b = k.smtp(ehlo="a.e2e.test"), k.smtp(ehlo="b.e2e.test")
    for s, who in ((a, "a"), (b, "b")):
        assert s.mail(f"{who}@a.example")[0] == 250
        assert s.rcpt("r@d.example")[0] == 250
        assert s.docmd("DATA")[0] == 354
    b.send(body)            # B's save is queued now...
    time.sleep(0.02)
    a.send(body)            # ...A's 20 ms later
    for s in (a, b):
        code, reply = s.getreply()
        assert code == 250, reply
        s.quit()
    assert k.stop() == 0
    st = spool_stats(k)
    assert st["saves"] == 2, st
    assert st["syncs"] == syncs, st
    assert st["delayed_groups"] == (1 if syncs == 1 else 0), st
