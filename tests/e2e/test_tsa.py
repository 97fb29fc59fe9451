"""Issue 20 (Traffic Shaping Automation): the TSA daemon (kumod --tsa, the
tsa_init / tsa_load_shaping_data events, tsa.start_http_listener,
tsa.configure_tsa_db_path, kumo.shaping.load) and two kumod nodes using
shaping:setup_with_automation, all on loopback, delivering to an aiosmtpd
sink.

- The sink answers `421 4.7.28 ... rate limited`: node A's TransientFailure
  is published to the daemon, the [[automation]] rule (regex, Suspend,
  duration) fires, and within a second both nodes hold a ready-queue
  suspension of that site/source (admin API) and log the held messages
  as KumoMTA does; the daemon restarted in between still has the
  suspension (SQLite) and still publishes it to a new subscriber; after
  the duration both nodes deliver again.
- SetConfig (Threshold trigger) changes connection_limit on the other
  node (resolve-egress-path) through get_config_v1/shaping.toml.
- A daemon that is down: the node keeps delivering, says so, and
  reconnects once the daemon is up.
- Malformed rules: kumod --validate names the file, the table and the key.
"""
import base64
import json
import os
import smtplib
import socket
import struct
import subprocess
import time
import urllib.error
import urllib.request

import pytest

import kumod_harness as kh
from kumod_harness import wait_until
from smtpdeliv_peers import SmtpPeer

RATE_LIMITED = ("421 4.7.28 [127.0.0.1] Our system has detected an unusual rate of "
                "unsolicited mail originating from your IP address: rate limited")

SHAPING = r'''
["default"]
connection_limit = 10

["dest.example"]
mx_rollup = false

[["dest.example".automation]]
regex = "4\\.7\\.28"
action = "Suspend"
duration = "%(duration)s"

[["dest.example".automation]]
regex = "RL0000"
action = {SetConfig={name="connection_limit", value=2}}
trigger = {Threshold="2/hr"}
duration = "1 hour"

[["dest.example".automation]]
regex = "4\\.7\\.99"
action = "BounceTenant"
duration = "%(duration)s"

[["dest.example".automation]]
regex = "blocked for this campaign"
action = ["SuspendCampaign", "SuspendTenant"]
duration = "%(duration)s"
'''

TSA_INIT = '''
local tsa = require 'tsa'
local kumo = require 'kumo'
kumo.on('tsa_init', function()
  tsa.configure_tsa_db_path '%(db)s'
  tsa.start_http_listener {
    listen = '127.0.0.1:%(port)d',
    trusted_hosts = { '127.0.0.1', '::1' },
  }
end)
local cached_load_shaping_data = kumo.memoize(kumo.shaping.load, {
  name = 'tsa_load_shaping_data',
  ttl = '5 minutes',
  capacity = 4,
})
kumo.on('tsa_load_shaping_data', function()
  return cached_load_shaping_data { '%(shaping)s' }
end)
'''

NODE = '''
local shaping = require 'policy-extras.shaping'
shaper = shaping:setup_with_automation {
  publish = { 'http://127.0.0.1:%(tsa)d' },
  subscribe = { 'http://127.0.0.1:%(tsa)d' },
  no_default_files = true,
  extra_files = { '%(shaping)s' },
  tsa_queue_config = { retry_interval = '1s', max_retry_interval = '2s' },
}
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  if domain == 'dest.example' then
    return kumo.make_queue_config {
      protocol = { smtp = { mx_list = { '[127.0.0.1]' } } },
      retry_interval = '1s', max_retry_interval = '1s',
    }
  end
end)
kumo.on('get_egress_path_config', function(domain, source, site)
  local p = shaper.get_egress_path_config(domain, source, site, true)
  p.smtp_port = %(peer)d
  p.enable_tls = 'Disabled'
  p.prohibited_hosts = {}
  return kumo.make_egress_path(p)
end)
'''

NODE_INIT = '''
  shaper.setup_publish()
  kumo.start_http_listener { listen = '127.0.0.1:{http_port}', trusted_hosts = { '127.0.0.1' } }
'''


def http_get(url, timeout=5):
    with urllib.request.urlopen(url, timeout=timeout) as r:
        return r.status, r.read().decode()


def admin(k, path):
    return json.loads(http_get(f"http://127.0.0.1:{k.http_port}{path}")[1])


class Tsa:
    """The TSA daemon: a kumod --tsa with its own policy, database and port."""

    def __init__(self, factory, tmp, shaping, port=None):
        self.dir = str(tmp / "tsa")
        os.makedirs(self.dir, exist_ok=True)
        self.port = port or kh.free_port()
        policy = TSA_INIT % {"db": os.path.join(self.dir, "tsa.db"), "port": self.port,
                             "shaping": shaping}
        self.k = factory(policy=policy, start=False, name="tsa", args=("--tsa",), threads=1)

    @property
    def url(self):
        return f"http://127.0.0.1:{self.port}"

    def start(self):
        self.k.start(wait=False)

        def up():
            assert self.k.alive(), self.k.diag()
            try:
                return http_get(self.url + "/tsa/status", timeout=1) == (200, "TSA Daemon OK")
            except OSError:
                return False
        wait_until(up, timeout=20, what="the TSA daemon")
        return self

    def suspensions(self):
        return json.loads(http_get(self.url + "/get_suspension_v1/suspended.json")[1])


def ws_first_message(url_base, path, timeout=5):
    """Connects to a websocket endpoint and returns the first text message."""
    host, port = url_base.replace("http://", "").split(":")
    s = socket.create_connection((host, int(port)), timeout=timeout)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall((f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        buf += s.recv(4096)
    head, buf = buf.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 101"), head
    while True:
        while len(buf) < 2:
            buf += s.recv(4096)
        op, ln = buf[0] & 0x0F, buf[1] & 0x7F
        off = 2
        if ln == 126:
            while len(buf) < 4:
                buf += s.recv(4096)
            ln = struct.unpack(">H", buf[2:4])[0]
            off = 4
        elif ln == 127:
            while len(buf) < 10:
                buf += s.recv(4096)
            ln = struct.unpack(">Q", buf[2:10])[0]
            off = 10
        while len(buf) < off + ln:
            buf += s.recv(65536)
        payload, buf = buf[off:off + ln], buf[off + ln:]
        if op == 1:
            s.close()
            return json.loads(payload)


def inject(k, rcpt, tag, tenant=None, campaign=None):
    hdr = f"X-Tenant: {tenant}\r\n" if tenant else ""
    hdr += f"X-Campaign: {campaign}\r\n" if campaign else ""
    with smtplib.SMTP("127.0.0.1", k.smtp_port, timeout=30) as s:
        s.sendmail("sender@src.example", [rcpt],
                   f"Subject: {tag}\r\n{hdr}X-E2E-Tag: {tag}\r\n\r\nbody\r\n".encode())


@pytest.fixture
def peer():
    p = SmtpPeer()
    p.start()
    yield p
    p.stop()


def write_shaping(tmp, duration):
    path = str(tmp / "shaping.toml")
    with open(path, "w") as f:
        f.write(SHAPING % {"duration": duration})
    return path


TENANT_META = """
kumo.on('smtp_server_message_received', function(msg)
  local t = msg:get_first_named_header_value('X-Tenant')
  if t then msg:set_meta('tenant', t) end
  local c = msg:get_first_named_header_value('X-Campaign')
  if c then msg:set_meta('campaign', c) end
end)
"""


def make_node(factory, name, tsa_port, shaping, peer):
    handlers = NODE % {"tsa": tsa_port, "shaping": shaping, "peer": peer.port} + TENANT_META
    return factory(name=name, handlers=handlers, init=NODE_INIT,
                   logs="max_segment_duration = '1s',")


def readyq_suspensions(k):
    return admin(k, "/api/admin/suspend-ready-q/v1")


def test_rate_limited_site_suspended_on_both_nodes(kumod_factory, tmp_path, peer):
    shaping = write_shaping(tmp_path, "12 seconds")
    tsa = Tsa(kumod_factory, tmp_path, shaping).start()
    a = make_node(kumod_factory, "a", tsa.port, shaping, peer)
    b = make_node(kumod_factory, "b", tsa.port, shaping, peer)
    wait_until(lambda: "connected" in a.diag() and "connected" in b.diag(), timeout=10,
               what="both nodes subscribed")
    peer.rcpt_reply = lambda addr: RATE_LIMITED
    inject(a, "user1@dest.example", "first")

    # the daemon decides, both nodes apply it
    wait_until(lambda: tsa.suspensions()["ready_q"], timeout=15, what="a TSA suspension")
    t_decided = time.monotonic()
    sus = tsa.suspensions()["ready_q"][0]
    assert sus["reason"] == "automation rule: 4\\.7\\.28"
    assert sus["source"] == "unspecified"
    site = sus["site_name"]
    assert site.startswith("unspecified->") and site.endswith("@smtp_client"), sus

    def applied(k):
        return [s for s in readyq_suspensions(k) if s["name"] == site]
    wait_until(lambda: applied(a) and applied(b), timeout=1.0, interval=0.02,
               what="both nodes suspended within a second")
    lag = time.monotonic() - t_decided
    for k in (a, b):
        e = applied(k)[0]
        assert "automation rule: 4\\.7\\.28" in e["reason"] and "rule_hash=" in e["reason"], e
    # the TransientFailure that triggered it came from node A, through the hook
    tf = a.wait_records(lambda r: "rate limited" in r["response"]["content"],
                        type="TransientFailure")
    assert tf[0]["response"]["code"] == 421
    assert tf[0]["site"] == site

    # the daemon's counters
    metrics = http_get(tsa.url + "/metrics")[1]
    assert "tsa_subscribers 2" in metrics, metrics
    assert any(l.startswith("tsa_records_total ") and float(l.split()[1]) >= 1
               for l in metrics.splitlines()), metrics
    assert any(l.startswith("tsa_actions_total ") and float(l.split()[1]) >= 1
               for l in metrics.splitlines()), metrics

    # node B holds new mail for that site: no connection, a record that says so
    peer.reset_counts()
    inject(b, "user2@dest.example", "held")
    held = b.wait_records(lambda r: "eligible for selection" in r["response"]["content"],
                          type="TransientFailure", timeout=15)
    assert held[0]["response"]["content"].startswith("KumoMTA internal: "), held[0]
    assert peer.connections == 0
    # those internal records do not feed the rule again (match_internal = false)

    # restart the daemon: the suspension is still there and still published
    tsa.k.stop()
    tsa.start()
    assert [s["site_name"] for s in tsa.suspensions()["ready_q"]] == [site]
    first = ws_first_message(tsa.url, "/subscribe_event_v1")
    assert first["ReadyQSuspension"]["site_name"] == site, first
    legacy = ws_first_message(tsa.url, "/subscribe_suspension_v1")
    assert legacy["ReadyQ"]["site_name"] == site, legacy
    # the nodes reconnect (the daemon answers them the current state again)
    wait_until(lambda: a.diag().count("connected") >= 2 and b.diag().count("connected") >= 2,
               timeout=15, what="both nodes reconnected")
    assert len(applied(a)) == 1 and len(applied(b)) == 1

    # after the duration: resumed on both nodes
    peer.rcpt_reply = None
    wait_until(lambda: not applied(a) and not applied(b), timeout=20, what="expiry")
    wait_until(lambda: not tsa.suspensions()["ready_q"], timeout=5, what="TSA expiry")
    inject(b, "user3@dest.example", "after")
    wait_until(lambda: any("user3@dest.example" in m["rcpt_tos"] for m in peer.messages),
               timeout=20, what="delivery after the suspension")
    print(f"suspension applied on both nodes {lag * 1000:.0f} ms after the daemon decided")


def test_setconfig_threshold_changes_connection_limit(kumod_factory, tmp_path, peer):
    shaping = write_shaping(tmp_path, "5 seconds")
    tsa = Tsa(kumod_factory, tmp_path, shaping).start()
    a = make_node(kumod_factory, "a", tsa.port, shaping, peer)
    b = make_node(kumod_factory, "b", tsa.port, shaping, peer)

    def limit(k):
        r = admin(k, "/api/admin/resolve-egress-path/v1?domain=dest.example")
        return json.dumps(r)
    assert '"connection_limit": 10' in limit(b)
    # Threshold 2/hr: one matching answer is not enough
    peer.script("RCPT", "421 4.7.0 RL0000 slow down")
    inject(a, "one@dest.example", "rl1")
    a.wait_records(lambda r: "RL0000" in r["response"]["content"], type="TransientFailure")
    wait_until(lambda: any("one@dest.example" in m["rcpt_tos"] for m in peer.messages),
               timeout=15, what="the retry delivered")
    time.sleep(1.0)
    assert "Number of entries: 0" in http_get(tsa.url + "/get_config_v1/shaping.toml")[1]
    # the second one within the hour triggers it
    peer.script("RCPT", "421 4.7.0 RL0000 slow down")
    inject(a, "two@dest.example", "rl2")
    wait_until(lambda: "Number of entries: 1" in
               http_get(tsa.url + "/get_config_v1/shaping.toml")[1], timeout=15,
               what="the config override")
    toml = http_get(tsa.url + "/get_config_v1/shaping.toml")[1]
    assert '["dest.example".sources.unspecified]' in toml and "connection_limit = 2" in toml
    assert "# reason: automation rule: RL0000" in toml
    t0 = time.monotonic()
    wait_until(lambda: '"connection_limit": 2' in limit(b), timeout=3, what="override on node B")
    print(f"override visible on node B after {(time.monotonic() - t0) * 1000:.0f} ms")


def test_suspend_campaign_and_tenant_on_both_nodes(kumod_factory, tmp_path, peer):
    shaping = write_shaping(tmp_path, "30 seconds")
    tsa = Tsa(kumod_factory, tmp_path, shaping).start()
    a = make_node(kumod_factory, "a", tsa.port, shaping, peer)
    b = make_node(kumod_factory, "b", tsa.port, shaping, peer)
    wait_until(lambda: "connected" in a.diag() and "connected" in b.diag(), timeout=10,
               what="both nodes subscribed")
    peer.script("RCPT", "451 4.7.1 blocked for this campaign")
    inject(a, "u1@dest.example", "camp", tenant="t1", campaign="c1")
    wait_until(lambda: len(tsa.suspensions()["sched_q"]) == 2, timeout=15,
               what="two scheduled-queue suspensions")
    sq = sorted(tsa.suspensions()["sched_q"], key=lambda x: x["campaign"] or "")
    assert [(x["tenant"], x["domain"], x["campaign"]) for x in sq] == \
        [("t1", "dest.example", None), ("t1", "dest.example", "c1")], sq
    assert sq[1]["reason"] == ("automation rule: blocked for this campaign tenant=t1 "
                               "domain=dest.example campaign=c1")

    def entries(k):
        return sorted((e.get("tenant"), e.get("domain"), e.get("campaign") or "")
                      for e in admin(k, "/api/admin/suspend/v1"))
    want = [("t1", "dest.example", ""), ("t1", "dest.example", "c1")]
    wait_until(lambda: entries(a) == want and entries(b) == want, timeout=1.0, interval=0.02,
               what="both nodes suspended the tenant and the campaign within a second")
    # on node B, tenant t1 waits (a record says so); tenant t2 is delivered
    inject(b, "u2@dest.example", "t1-held", tenant="t1", campaign="c2")
    inject(b, "u3@dest.example", "t2-sent", tenant="t2")
    held = b.wait_records(lambda r: "scheduled queue is suspended" in r["response"]["content"],
                          type="TransientFailure", timeout=15)
    assert held[0]["queue"] == "c2:t1@dest.example", held[0]
    wait_until(lambda: any("u3@dest.example" in m["rcpt_tos"] for m in peer.messages),
               timeout=15, what="the other tenant delivered")
    assert not any("u2@dest.example" in m["rcpt_tos"] for m in peer.messages)


def test_bounce_tenant_on_both_nodes(kumod_factory, tmp_path, peer):
    shaping = write_shaping(tmp_path, "30 seconds")
    tsa = Tsa(kumod_factory, tmp_path, shaping).start()
    a = make_node(kumod_factory, "a", tsa.port, shaping, peer)
    b = make_node(kumod_factory, "b", tsa.port, shaping, peer)
    wait_until(lambda: "connected" in a.diag() and "connected" in b.diag(), timeout=10,
               what="both nodes subscribed")
    peer.script("RCPT", "451 4.7.99 this tenant is not welcome")
    inject(a, "u1@dest.example", "bounce-me", tenant="t9")
    wait_until(lambda: json.loads(http_get(tsa.url + "/get_bounce_v1/bounced.json")[1]),
               timeout=15, what="a TSA bounce")
    bounce = json.loads(http_get(tsa.url + "/get_bounce_v1/bounced.json")[1])[0]
    assert (bounce["domain"], bounce["tenant"], bounce["campaign"]) == ("dest.example", "t9", None)

    def has(k):
        return [e for e in admin(k, "/api/admin/bounce/v1")
                if e.get("tenant") == "t9" and e.get("domain") == "dest.example"]
    wait_until(lambda: has(a) and has(b), timeout=1.0, interval=0.02,
               what="both nodes bounce the tenant within a second")
    inject(b, "u2@dest.example", "bounced-on-b", tenant="t9")
    rec = b.wait_records(lambda r: r["recipient"] == "u2@dest.example", type="AdminBounce",
                         timeout=15)
    assert "automation rule: 4\\.7\\.99" in rec[0]["response"]["content"], rec[0]
    inject(b, "u3@dest.example", "other-tenant", tenant="t8")
    wait_until(lambda: any("u3@dest.example" in m["rcpt_tos"] for m in peer.messages),
               timeout=15, what="the other tenant delivered")


def test_tsa_down_nodes_keep_sending_and_reconnect(kumod_factory, tmp_path, peer):
    shaping = write_shaping(tmp_path, "5 seconds")
    port = kh.free_port()
    a = make_node(kumod_factory, "a", port, shaping, peer)
    a.wait_diag(r"TSA subscription http://127\.0\.0\.1:\d+: .*retrying", timeout=10)
    inject(a, "ok@dest.example", "while-down")
    a.wait_records(type="Delivery", timeout=15)
    tsa = Tsa(kumod_factory, tmp_path, shaping, port=port).start()
    a.wait_diag(r"TSA subscription http://127\.0\.0\.1:\d+: connected", timeout=20)
    # and it works from then on
    peer.rcpt_reply = lambda addr: RATE_LIMITED
    inject(a, "x@dest.example", "after-up")
    wait_until(lambda: readyq_suspensions(a), timeout=15, what="suspension after reconnect")
    assert tsa.suspensions()["ready_q"]


def validate(tmp_path, rules):
    path = tmp_path / "bad.toml"
    path.write_text(rules)
    policy = tmp_path / "policy.lua"
    policy.write_text(f'''
local kumo = require 'kumo'
local shaping = require 'policy-extras.shaping'
local shaper = shaping:setup_with_automation {{
  publish = {{ 'http://127.0.0.1:9' }}, subscribe = {{ 'http://127.0.0.1:9' }},
  no_default_files = true, extra_files = {{ '{path}' }},
}}
kumo.on('init', function()
  kumo.define_spool {{ name = 'data', path = '{tmp_path}/s/data' }}
  kumo.define_spool {{ name = 'meta', path = '{tmp_path}/s/meta' }}
  shaper.setup_publish()
end)
''')
    env = dict(os.environ, KUMOD_LUA_PATH=kh.LUA_PATH, ASAN_OPTIONS="detect_leaks=0")
    p = subprocess.run([kh.kumod_bin(), "--validate", "--policy", str(policy)],
                       capture_output=True, text=True, timeout=60, env=env)
    return p.returncode, p.stdout + p.stderr, str(path)


@pytest.mark.parametrize("rules,expect", [
    ('[["x.example".automation]]\nregex = "("\naction = "Suspend"\nduration = "1h"\n',
     '["x.example".automation.1] regex:'),
    ('[["x.example".automation]]\nregex = "a"\naction = "Suspen"\nduration = "1h"\n',
     "[\"x.example\".automation.1] action: unknown action 'Suspen'"),
    ('[["x.example".automation]]\nregex = "a"\naction = "Suspend"\n',
     '["x.example".automation.1] duration: required'),
    ('[["x.example".automation]]\nregex = "a"\naction = "Suspend"\nduration = "soon"\n',
     '["x.example".automation.1] duration:'),
    ('[["x.example".automation]]\nregex = "a"\naction = "Suspend"\nduration = "1h"\n'
     'trigger = {Threshold="often"}\n', '["x.example".automation.1] trigger:'),
    ('[["x.example".automation]]\nregex = "a"\nduration = "1h"\n'
     'action = {SetConfig={name="connection_limt", value=2}}\n',
     '["x.example".automation.1] action: SetConfig connection_limt'),
    ('[[provider.big.automation]]\nregex = "a"\naction = "Suspend"\nduration = "1h"\n'
     'durration = "2h"\n[provider.big]\nmatch=[{DomainSuffix=".big"}]\n',
     "[provider.big.automation.1] durration: unknown key"),
])
def test_validate_names_file_and_key(tmp_path, rules, expect):
    rc, out, path = validate(tmp_path, rules)
    assert rc != 0, out
    assert f"shaping: {path}: {expect}" in out, out


def test_validate_accepts_documented_rules(tmp_path):
    rc, out, _ = validate(tmp_path, r'''
[["gmail.com".automation]]
regex = "This message does not have authentication information"
action = "SuspendTenant"
duration = "3 hours"

[[provider."yahoo".automation]]
regex = "\\[TS04\\]"
action = "Suspend"
duration = "2 hours"

[provider."yahoo"]
match = [{MXSuffix = ".yahoodns.net"}]

[["comcast.net".automation]]
regex = "RL0000"
action = {SetConfig={name="max_connection_rate", value="10000/h"}}
trigger = {Threshold="2/hr"}
duration = "2 hours"
''')
    assert rc == 0, out


def test_kumo_tsa_name_and_bad_requests(tmp_path):
    """The binary under the name kumo-tsa is the daemon; hostile requests get
    a clear HTTP status; a policy without tsa_load_shaping_data is a 500
    that says so (the node retries the record)."""
    port = kh.free_port()
    policy = tmp_path / "tsa_init.lua"
    policy.write_text(f'''
local tsa = require 'tsa'
kumo.on('tsa_init', function()
  tsa.configure_tsa_db_path ':memory:'
  tsa.start_http_listener {{ listen = '127.0.0.1:{port}', trusted_hosts = {{ '127.0.0.1' }} }}
end)
''')
    exe = os.path.join(os.path.dirname(kh.kumod_bin()), "kumo-tsa")
    env = dict(os.environ, KUMOD_LUA_PATH=kh.LUA_PATH, ASAN_OPTIONS="detect_leaks=0")
    out = subprocess.run([exe, "--policy", str(policy), "--validate"], capture_output=True,
                         text=True, timeout=60, env=env)
    assert out.returncode == 0 and "is valid" in out.stdout, out
    p = subprocess.Popen([exe, "--policy", str(policy), "--threads", "1"], env=env,
                         stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    base = f"http://127.0.0.1:{port}"
    try:
        wait_until(lambda: _status(base + "/tsa/status") == 200, timeout=20, what="kumo-tsa")

        def post(body, path="/publish_log_v1"):
            req = urllib.request.Request(base + path, data=body, method="POST",
                                         headers={"Content-Type": "application/json"})
            try:
                with urllib.request.urlopen(req, timeout=5) as r:
                    return r.status, r.read().decode()
            except urllib.error.HTTPError as e:
                return e.code, e.read().decode()
        assert post(b"{not json")[0] == 400
        assert post(b"[1, 2]")[0] == 400
        assert post(b'{"recipient": "\xff\xfe@x"}')[0] == 400
        st, text = post(b'{"recipient": "a@b.example", "response": {"content": "x"}}')
        assert st == 500 and "tsa_load_shaping_data must return a Shaping object" in text, text
        # kumod's own API is not served by the daemon
        assert post(b"{}", "/api/inject/v1")[0] == 404
        assert _status(base + "/subscribe_event_v1") == 400  # not an upgrade
        assert _error_text(base + "/subscribe_event_v1") == (
            "Error: this endpoint is a websocket: Connection: upgrade and Upgrade: websocket are "
            "required")
        _subscriber_websocket_protocol(port)
        assert _status(base + "/get_suspension_v1/suspended.json") == 200
        assert p.poll() is None
    finally:
        p.terminate()
        _, err = p.communicate(timeout=30)
    assert p.returncode == 0, err.decode()[-3000:]
    assert b"ERROR: AddressSanitizer" not in err and b"runtime error" not in err


def _error_text(url):
    try:
        urllib.request.urlopen(url, timeout=5)
    except urllib.error.HTTPError as e:
        return e.read().decode().strip()
    raise AssertionError(f"{url} answered 2xx")


def _subscriber_websocket_protocol(port):
    """The subscriber endpoints speak RFC 6455 as the trace endpoints do
    (one implementation, http/ws_conn.c): pings answered, a Close echoed
    with its status, a frame the RFC forbids ends in Close 1002 naming the
    reason, and a frame sent right behind the handshake is read."""
    from test_trace import WS
    w = WS(port, "/subscribe_event_v1")
    assert w.status == 101
    w.send(0x9, b"still there?")
    assert w.frame() == (0xA, b"still there?")
    w.send(0x9, b"x", mask=False)
    op, p = w.frame()
    assert op == 0x8 and struct.unpack("!H", p[:2])[0] == 1002 and p[2:] == b"malformed frame", p
    w = WS(port, "/subscribe_suspension_v1")
    assert w.status == 101
    w.send(0x8, struct.pack("!H", 1001) + b"going")
    op, p = w.frame()
    assert op == 0x8 and struct.unpack("!H", p[:2])[0] == 1001, p
    # a ping in the same packet as the upgrade request
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    key = base64.b64encode(os.urandom(16)).decode()
    mask = os.urandom(4)
    ping = bytes([0x89, 0x80 | 2]) + mask + bytes(b ^ mask[i] for i, b in enumerate(b"hi"))
    s.sendall((f"GET /subscribe_event_v1 HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\n"
               f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
               "Sec-WebSocket-Version: 13\r\n\r\n").encode() + ping)
    buf = b""
    while b"\r\n\r\n" not in buf or not buf.endswith(b"\x8a\x02hi"):
        chunk = s.recv(4096)
        assert chunk, buf
        buf += chunk
    assert buf.startswith(b"HTTP/1.1 101"), buf
    s.close()


def _status(url):
    try:
        with urllib.request.urlopen(url, timeout=5) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return None
