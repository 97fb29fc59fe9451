"""Issue 20 (Redis part): throttles and connection limits shared by several
kumod nodes through a real redis-server (started here on a free loopback
port, no persistence), as kumo.configure_redis_throttles documents.

Two nodes deliver to one aiosmtpd sink: max_message_rate = '60/m' and
connection_limit = 3 hold for the pair (the sink sees the combined rate and
never more than 3 connections); a node killed with -9 while it holds the
only lease gives it up when the lease lapses; Redis stopped mid-run: the
nodes fall back to in-process throttles (a loud diagnostic), nothing is
lost, and they share again once it is back. require('redis') and
kumo.make_throttle against the same server. A Redis Cluster of 3 masters
serves the same throttle."""
import os
import shutil
import smtplib
import socket
import subprocess
import time

import pytest

import kumod_harness as kh
from kumod_harness import wait_until
from smtpdeliv_peers import SmtpPeer

PEER_HOST = "127.0.0.1"
REDIS = shutil.which("redis-server") or "/usr/bin/redis-server"
REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"

pytestmark = pytest.mark.skipif(not os.path.exists(REDIS), reason="redis-server not installed")


class RedisServer:
    def __init__(self, workdir, port=None, extra=()):
        self.dir = str(workdir)
        os.makedirs(self.dir, exist_ok=True)
        self.port = port or kh.free_port()
        self.extra = list(extra)
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(
            [REDIS, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", self.dir] + self.extra,
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        wait_until(lambda: self.cmd("PING") == "PONG", timeout=10, what="redis PING")
        return self

    def cmd(self, *args):
        try:
            p = subprocess.run([REDIS_CLI, "-p", str(self.port)] + list(args),
                               capture_output=True, text=True, timeout=5)
        except subprocess.TimeoutExpired:
            return None
        return p.stdout.strip() if p.returncode == 0 else None

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def cluster_port():
    """A free port whose cluster bus port (+10000) is free and valid too."""
    import random
    for _ in range(200):
        port = random.randint(20000, 50000)
        ok = True
        for p in (port, port + 10000):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", p))
            except OSError:
                ok = False
            finally:
                s.close()
        if ok:
            return port
    raise RuntimeError("no free port pair")


@pytest.fixture
def redis(tmp_path):
    r = RedisServer(tmp_path / "redis").start()
    yield r
    r.stop()


@pytest.fixture
def peer():
    p = SmtpPeer(host=PEER_HOST)
    p.start()
    yield p
    p.stop()


def policy(peer, redis_port, path_extra=""):
    return kh.default_policy(init=f"""
  kumo.configure_redis_throttles {{ node = 'redis://127.0.0.1:{redis_port}/' }}
""", handlers=f"""
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    protocol = {{ smtp = {{ mx_list = {{ '[{PEER_HOST}]' }} }} }},
    retry_interval = '1s',
  }}
end)
kumo.on('get_egress_path_config', function(domain, source, site)
  return kumo.make_egress_path {{ smtp_port = {peer.port}, enable_tls = 'Disabled',
                                 prohibited_hosts = {{}}, {path_extra} }}
end)
""")


def inject(k, n, tag):
    with smtplib.SMTP("127.0.0.1", k.smtp_port, timeout=30) as s:
        for i in range(n):
            s.sendmail("sender@src.example", [f"rcpt{i}@dest.example"],
                       f"Subject: {tag} {i}\r\nX-E2E-Tag: {tag}\r\n\r\nbody\r\n".encode())


def delivered(peer, tag=None):
    with peer.lock:
        return [m for m in peer.messages
                if tag is None or f"Subject: {tag} ".encode() in m["data"]]


def test_two_nodes_share_rate_and_connection_limit(tmp_path, redis, peer):
    pol = policy(peer, redis.port, "max_message_rate = '60/m', connection_limit = 3")
    a = kh.Kumod(tmp_path / "a", policy=pol).start()
    b = kh.Kumod(tmp_path / "b", policy=pol).start()
    # 35 each: 70 in all. With its own '60/m' each node could send its 35 at
    # once (the burst is 60); shared, 60 go at once and the rest at 1/s.
    t0 = time.monotonic()
    for t in kh.run_threads([lambda: inject(a, 35, "A"), lambda: inject(b, 35, "B")]):
        t.join()
    wait_until(lambda: len(delivered(peer)) >= 60, timeout=30, what="the first 60")
    time.sleep(3)
    n = len(delivered(peer))
    elapsed = time.monotonic() - t0
    assert n <= 60 + elapsed + 2, (n, elapsed)  # not 70: the throttle is shared
    assert n < 70, n
    wait_until(lambda: len(delivered(peer)) == 70, timeout=40, what="all 70 delivered")
    assert len(delivered(peer, "A")) == 35 and len(delivered(peer, "B")) == 35
    at = sorted(m["at"] for m in delivered(peer))
    # the last ten came at about one a second (the combined '60/m')
    assert at[-1] - at[59] >= 8.0, at[-1] - at[59]
    assert peer.peak <= 3, peer.peak
    keys = redis.cmd("--scan", "--pattern", "kumod:*") or ""
    assert "kumod:throttle:kumomta.max_message_rate.unspecified->" in keys, keys
    assert "kumod:lease:kumomta.connection_limit.unspecified->" in keys, keys
    a.stop()
    b.stop()


def test_killed_node_gives_up_its_lease(tmp_path, redis, peer):
    pol = policy(peer, redis.port, "connection_limit = 1")
    a = kh.Kumod(tmp_path / "a", policy=pol).start()
    b = kh.Kumod(tmp_path / "b", policy=pol).start()
    peer.hang_dots = 1  # a's connection hangs on its message: it holds the lease
    inject(a, 1, "A")
    wait_until(lambda: peer.hung == 1, timeout=10, what="a's connection to hang")
    inject(b, 2, "B")
    time.sleep(4)  # b polls every 3 s and is refused: the lease is a's
    assert delivered(peer, "B") == []
    assert peer.peak == 1
    a.kill9()
    t_kill = time.monotonic()
    wait_until(lambda: len(delivered(peer, "B")) == 2, timeout=30, what="b to deliver")
    waited = time.monotonic() - t_kill
    # the lease lapses 10 s after its last renewal (every 3 s)
    assert waited >= 5.0, waited
    assert peer.peak == 1 or peer.open <= 1
    b.stop()


def test_redis_down_falls_back_and_recovers(tmp_path, redis, peer):
    pol = policy(peer, redis.port, "max_message_rate = '1000/s', connection_limit = 2")
    a = kh.Kumod(tmp_path / "a", policy=pol).start()
    inject(a, 5, "one")
    wait_until(lambda: len(delivered(peer, "one")) == 5, timeout=20, what="shared phase")
    assert "kumod:throttle:" in (redis.cmd("--scan", "--pattern", "kumod:*") or "")
    redis.stop()
    # tokens taken ahead are good for a second: after that the next
    # message asks redis again
    time.sleep(1.5)
    inject(a, 5, "two")
    wait_until(lambda: len(delivered(peer, "two")) == 5, timeout=30, what="fallback phase")
    a.wait_diag(r"unavailable: .*in-process", timeout=10)
    redis.start()  # same port
    wait_until(lambda: redis.cmd("PING") == "PONG", timeout=10)
    time.sleep(1.5)  # the client retries a down node after a second
    inject(a, 5, "three")
    wait_until(lambda: len(delivered(peer, "three")) == 5, timeout=30, what="shared again")
    wait_until(lambda: "kumod:throttle:" in (redis.cmd("--scan", "--pattern", "kumod:*") or ""),
               timeout=10, what="shared state back in redis")
    a.wait_diag(r"redis answers again", timeout=10)
    assert len(delivered(peer)) == 15
    a.stop()


LUA_REDIS = """
local redis = require 'redis'
local conn = redis.open {{ node = 'redis://127.0.0.1:{port}/' }}
conn:query('DEL', 'test-count')
assert(conn:query('INCR', 'test-count') == 1)
assert(conn:query('INCRBY', 'test-count', 2) == 3)
assert(conn:query('SET', 'k', 'v') == 'OK')
assert(conn:query('GET', 'k') == 'v')
assert(conn:query('GET', 'nokey') == nil)
local t = conn:query('MGET', 'k', 'nokey', 'test-count')
assert(t[1] == 'v' and t[2] == nil and t[3] == '3')
local ok, err = pcall(conn.query, conn, 'NOSUCHCMD')
assert(not ok and tostring(err):find('unknown command'), err)
local ok2, err2 = pcall(redis.open, {{ node = 'http://x/' }})
assert(not ok2 and tostring(err2):find('not a redis:// url'), err2)
local ok3, err3 = pcall(redis.open, {{ nodes = 'redis://x/' }})
assert(not ok3 and tostring(err3):find("unknown field 'nodes'"), err3)

kumo.configure_redis_throttles {{ node = 'redis://127.0.0.1:{port}/' }}
local th = kumo.make_throttle('lua-e2e', '3/s')
for i = 1, 3 do
  local r = th:throttle()
  assert(not r.throttled and r.limit == 3 and r.remaining == 3 - i, i)
end
local r = th:throttle()
assert(r.throttled and r.retry_after > 0 and r.retry_after <= 0.34, r.retry_after)
assert(conn:query('EXISTS', 'kumod:throttle:lua-e2e') == 1)
-- the same name is the same throttle, whichever object
assert(kumo.make_throttle('lua-e2e', '3/s'):throttle().throttled)
assert(th:sleep_if_throttled() == true)
-- it slept until a token came: the next one needs another wait
assert(th:throttle().throttled)
-- local: never in redis
local lt = kumo.make_throttle('lua-e2e-local', 'local:2/s')
assert(not lt:throttle().throttled)
assert(conn:query('EXISTS', 'kumod:throttle:lua-e2e-local') == 0)
print('ok')
"""


def run_script(tmp_path, text):
    path = tmp_path / "t.lua"
    path.write_text(text)
    env = dict(os.environ, KUMOD_LUA_PATH=kh.LUA_PATH)
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
    return subprocess.run([kh.kumod_bin(), "--script", str(path)], capture_output=True,
                          text=True, timeout=60 * kh.SLOW, env=env)


def test_lua_redis_and_make_throttle(tmp_path, redis):
    p = run_script(tmp_path, LUA_REDIS.format(port=redis.port))
    assert p.returncode == 0 and "ok" in p.stdout, (p.stdout, p.stderr)


def test_redis_cluster_of_three_masters(tmp_path):
    nodes = []
    try:
        for i in range(3):
            r = RedisServer(tmp_path / f"c{i}", port=cluster_port(), extra=[
                "--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{i}.conf",
                "--cluster-node-timeout", "2000"])
            nodes.append(r.start())
        p = subprocess.run([REDIS_CLI, "--cluster", "create"] +
                           [f"127.0.0.1:{r.port}" for r in nodes] + ["--cluster-yes"],
                           capture_output=True, text=True, timeout=60)
        assert p.returncode == 0, p.stdout + p.stderr
        # every node must agree before the first query (a node that has not
        # yet heard of all the slots answers CLUSTERDOWN)
        wait_until(lambda: all("cluster_state:ok" in (r.cmd("CLUSTER", "INFO") or "")
                               for r in nodes),
                   timeout=30, what="cluster ok on every node")
        urls = ", ".join(f"'redis://127.0.0.1:{r.port}/'" for r in nodes)
        script = f"""
local redis = require 'redis'
local conn = redis.open {{ node = {{ {urls} }} }}
-- keys on every master: MOVED redirections are followed
for i = 1, 30 do assert(conn:query('SET', 'key' .. i, tostring(i)) == 'OK') end
for i = 1, 30 do assert(conn:query('GET', 'key' .. i) == tostring(i)) end
kumo.configure_redis_throttles {{ node = {{ {urls} }} }}
for _, name in ipairs {{ 'alpha', 'beta', 'gamma', 'delta' }} do
  local th = kumo.make_throttle(name, '2/m')
  assert(not th:throttle().throttled)
  assert(not th:throttle().throttled)
  assert(th:throttle().throttled, name)
end
print('ok')
"""
        p = run_script(tmp_path, script)
        assert p.returncode == 0 and "ok" in p.stdout, (p.stdout, p.stderr)
        # the throttle keys landed on more than one master
        owners = sum(1 for r in nodes if (r.cmd("--scan", "--pattern", "kumod:throttle:*") or ""))
        assert owners >= 2, owners
    finally:
        for r in nodes:
            r.stop()


def test_throttle_insert_ready_queue_delays(tmp_path, redis, peer):
    """The documented example: a per-tenant make_throttle in
    throttle_insert_ready_queue, shared through redis; messages over the
    limit wait in their scheduled queue and are counted."""
    pol = kh.default_policy(init=f"""
  kumo.configure_redis_throttles {{ node = 'redis://127.0.0.1:{redis.port}/' }}
  kumo.start_http_listener {{ listen = '127.0.0.1:{{http_port}}' }}
""", handlers=f"""
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    protocol = {{ smtp = {{ mx_list = {{ '[{PEER_HOST}]' }} }} }},
    retry_interval = '1s',
  }}
end)
kumo.on('get_egress_path_config', function(domain, source, site)
  return kumo.make_egress_path {{ smtp_port = {peer.port}, enable_tls = 'Disabled',
                                 prohibited_hosts = {{}} }}
end)
kumo.on('smtp_server_message_received', function(msg)
  msg:set_meta('tenant', 'acme')
end)
kumo.on('throttle_insert_ready_queue', function(msg)
  local tenant = msg:get_meta 'tenant'
  local throttle = kumo.make_throttle(
    string.format('tenant-send-limit-%s', tenant),
    '3/5s,max_burst=3'
  )
  throttle:delay_message_if_throttled(msg)
end)
""")
    a = kh.Kumod(tmp_path / "a", policy=pol).start()
    t0 = time.monotonic()
    inject(a, 5, "T")
    wait_until(lambda: len(delivered(peer, "T")) >= 3, timeout=10, what="the first 3")
    time.sleep(0.5)
    assert len(delivered(peer, "T")) == 3
    wait_until(lambda: len(delivered(peer, "T")) == 5, timeout=20, what="the delayed two")
    assert time.monotonic() - t0 >= 1.5
    assert redis.cmd("EXISTS", "kumod:throttle:tenant-send-limit-acme") == "1"
    import urllib.request
    body = urllib.request.urlopen(f"http://127.0.0.1:{a.http_port}/metrics", timeout=10).read()
    text = body.decode()
    import re
    m = re.search(r'delayed_due_to_throttle_insert_ready\{queue="acme@dest.example"\} (\d+)', text)
    assert m and int(m.group(1)) >= 2, text[-3000:]
    assert "redis_operation_latency_count" in text
    a.stop()


def test_orderly_shutdown_releases_leases(tmp_path, redis, peer):
    """A node stopped with SIGTERM gives its connection-limit leases back at
    once: the other node does not wait for them to lapse."""
    pol = policy(peer, redis.port, "connection_limit = 1")
    a = kh.Kumod(tmp_path / "a", policy=pol).start()
    b = kh.Kumod(tmp_path / "b", policy=pol).start()
    peer.hang_dots = 1  # a's connection hangs on its message: it holds the lease
    inject(a, 1, "A")
    wait_until(lambda: peer.hung == 1, timeout=10, what="a's connection to hang")
    keys = [k for k in (redis.cmd("--scan", "--pattern", "kumod:lease:*") or "").split() if k]
    assert len(keys) == 1, keys
    assert redis.cmd("ZCARD", keys[0]) == "1"
    a.stop()
    # released, not lapsed (a lapse takes up to 10 s)
    assert redis.cmd("ZCARD", keys[0]) == "0", redis.cmd("ZRANGE", keys[0], "0", "-1")
    t_stop = time.monotonic()
    inject(b, 2, "B")
    wait_until(lambda: len(delivered(peer, "B")) == 2, timeout=30, what="b to deliver")
    assert time.monotonic() - t_stop < 5.0
    b.stop()
