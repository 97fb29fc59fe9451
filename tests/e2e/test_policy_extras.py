"""Issue 17: kumod's policy-extras helpers (share/lua/policy-extras) end to
end, configured through their TOML files only.

One kumod whose policy only calls the helpers' setup functions: dnsmasq
gives the destination domains MX hosts under .bigmail.test (127.0.0.70),
where an aiosmtpd peer listens. Two tenants (X-Tenant header) have pools
whose sources bind 127.0.0.1 and 127.0.0.2, and the peer sees those
addresses; the shaping file's provider block (matched by MX suffix) sets
connection_limit 1 and max_message_rate 2/s, which the peer observes; the
listener accepts relaying only as listener_domains.toml allows; the same
kumod signs with dkim_sign (dkim_data.toml; dkimpy verifies at the peer)
and posts its log records to a JSON webhook (log_hooks:new_json), so the
issue's whole acceptance scenario runs in one daemon. Then
`kumod --validate` on bad data of each kind, and the shipped example
policy (policy/example.lua) delivering into its maildir.
"""
import os
import smtplib
import subprocess
import time

import pytest

import http_peer
import kumod_harness as kh
from kumod_harness import wait_until
from smtpdeliv_peers import Dns, SmtpPeer, free_port_on

PEER_IP = "127.0.0.70"
MX = [("big.test", "mx1.bigmail.test", 10), ("other.big.test", "mx2.bigmail.test", 10)]
A = [("mx1.bigmail.test", PEER_IP), ("mx2.bigmail.test", PEER_IP)]

SOURCES = """
[source."s1"]
source_address = "127.0.0.1"
ehlo_domain = "s1.e2e.test"

[source."s2"]
source_address = "127.0.0.2"
ehlo_domain = "s2.e2e.test"

[pool."pool-a"]
[pool."pool-a"."s1"]

[pool."pool-b"]
[pool."pool-b"."s2"]
weight = 3
"""

QUEUES = """
tenant_header = "X-Tenant"
remove_tenant_header = true
campaign_header = "X-Campaign"
remove_campaign_header = true
default_tenant = "ta"

[tenant."ta"]
egress_pool = "pool-a"

[tenant."tb"]
egress_pool = "pool-b"

[queue.default]
max_age = "1 hour"
retry_interval = "1 minute"
"""

SHAPING = """
["default"]
connection_limit = 4
prohibited_hosts = []
smtp_port = {peer_port}

[provider."bigmail"]
match = [{{MXSuffix = ".bigmail.test"}}]
connection_limit = 1
max_message_rate = "2/s"
"""

LISTENER_DOMAINS = """
["*"]
relay_to = false

["big.test"]
relay_to = true

["other.big.test"]
relay_to = true

["relay-from.test"]
relay_from = ["127.0.0.0/8"]

["*.wild.test"]
relay_to = true

["no.wild.test"]
relay_to = false
"""

DKIM_DATA = """
[base]
selector = "s1"
headers = ["From", "To", "Subject", "Date", "Message-ID"]

[domain."src.e2e.test"]
filename = "{key}"
"""

POLICY = """
local kumo = require 'kumo'
local sources = require 'policy-extras.sources'
local queue_module = require 'policy-extras.queue'
local shaping = require 'policy-extras.shaping'
local listener_domains = require 'policy-extras.listener_domains'
local dkim_sign = require 'policy-extras.dkim_sign'
local log_hooks = require 'policy-extras.log_hooks'

-- first: the hook answers get_queue_config for its own queue
log_hooks:new_json {
  name = 'webhook',
  url = 'HOOK_URL/log',
  log_parameters = { headers = { 'Subject' }, meta = { 'tenant' } },
}
sources:setup { '{dir}/sources.toml' }
local signer = dkim_sign:setup { '{dir}/dkim_data.toml' }
local queue_helper = queue_module:setup { '{dir}/queues.toml' }
kumo.on('get_egress_path_config', shaping:setup { '{dir}/shaping.toml' })
kumo.on('get_listener_domain', listener_domains:setup { '{dir}/listener_domains.toml' })

kumo.on('init', function()
  kumo.define_spool { name = 'data', path = '{spool}/data', kind = 'LocalDisk' }
  kumo.define_spool { name = 'meta', path = '{spool}/meta', kind = 'RocksDB' }
  kumo.configure_local_logs { log_dir = '{logs}', meta = { 'tenant', 'campaign' } }
  kumo.start_esmtp_listener {
    listen = '127.0.0.1:{smtp_port}',
    hostname = 'mx.e2e.test',
    -- no client is a relay host: the listener domains decide
    relay_hosts = { '192.0.2.1' },
  }
  kumo.dns.configure_resolver { name_servers = { '127.0.0.1:DNS_PORT' } }
end)

kumo.on('smtp_server_message_received', function(msg)
  queue_helper:apply(msg)
  signer(msg)
end)
"""


def dkim_key(d):
    """An RSA-2048 key file and its DKIM key record."""
    import base64
    key = os.path.join(str(d), "s1.key")
    subprocess.run(["openssl", "genrsa", "-out", key, "2048"], check=True, capture_output=True)
    pub = subprocess.run(["openssl", "rsa", "-in", key, "-pubout", "-outform", "DER"],
                         check=True, capture_output=True).stdout
    return key, b"v=DKIM1; k=rsa; p=" + base64.b64encode(pub)


def write_files(k, peer_port, key="/nonexistent.key", **override):
    files = {"sources.toml": SOURCES, "queues.toml": QUEUES,
             "shaping.toml": SHAPING.format(peer_port=peer_port),
             "listener_domains.toml": LISTENER_DOMAINS,
             "dkim_data.toml": DKIM_DATA.format(key=key)}
    files.update(override)
    for name, text in files.items():
        with open(k.path(name), "w") as f:
            f.write(text)


@pytest.fixture(scope="module")
def env(tmp_path_factory, module_kumod_factory):
    base = tmp_path_factory.mktemp("extras")
    dns = Dns(base / "dns", mx=MX, a=A).start()
    port = free_port_on(PEER_IP)
    peer = SmtpPeer(PEER_IP, port).start()
    hook = http_peer.Peer()
    key, record = dkim_key(base)
    k = module_kumod_factory(policy=POLICY.replace("DNS_PORT", str(dns.port))
                             .replace("HOOK_URL", hook.url), start=False)
    write_files(k, port, key=key)
    k.start()
    k.hook, k.dkim_record = hook, record
    yield k, peer
    peer.stop()
    hook.close()
    dns.stop()


def send(k, rcpt, headers="", sender="sender@src.e2e.test", subject="hello"):
    body = f"From: {sender}\r\nTo: {rcpt}\r\nSubject: {subject}\r\n{headers}\r\nbody\r\n"
    with smtplib.SMTP("127.0.0.1", k.smtp_port, timeout=10 * kh.SLOW) as s:
        s.sendmail(sender, [rcpt], body)


def test_tenants_go_out_through_their_pools_sources(env):
    k, peer = env
    send(k, "a1@big.test", "X-Tenant: ta\r\n", subject="tenant-a")
    send(k, "b1@big.test", "X-Tenant: tb\r\nX-Campaign: spring\r\n", subject="tenant-b")
    send(k, "d1@big.test", subject="default-tenant")  # default_tenant = ta
    wait_until(lambda: len([m for m in peer.received() if b"tenant\r\n" in m["data"]
                            or b"Subject: tenant-" in m["data"]]) >= 3,
               timeout=30, what="three messages at the peer")
    by_subject = {}
    for m in peer.received():
        for subj in (b"tenant-a", b"tenant-b", b"default-tenant"):
            if b"Subject: " + subj + b"\r\n" in m["data"]:
                by_subject[subj] = m
    a, b, d = by_subject[b"tenant-a"], by_subject[b"tenant-b"], by_subject[b"default-tenant"]
    assert a["peer"][0] == "127.0.0.1" and a["ehlo"] == "s1.e2e.test"
    assert d["peer"][0] == "127.0.0.1" and d["ehlo"] == "s1.e2e.test"
    assert b["peer"][0] == "127.0.0.2" and b["ehlo"] == "s2.e2e.test"
    # the tenant and campaign headers were removed (remove_*_header = true)
    for m in (a, b, d):
        assert b"X-Tenant" not in m["data"] and b"X-Campaign" not in m["data"]
    # the delivery records name the pools, sources and the tenant meta
    def deliveries():
        # (the webhook's own deliveries are records too: not these)
        recs = [r for r in kh.read_log_records(k.logs, "Delivery")
                if r.get("reception_protocol") != "LogRecord"]
        return recs if len(recs) >= 3 else None
    recs = wait_until(deliveries, timeout=20, what="delivery records")
    by_rcpt = {r["recipient"]: r for r in recs}
    assert by_rcpt["b1@big.test"]["egress_pool"] == "pool-b"
    assert by_rcpt["b1@big.test"]["egress_source"] == "s2"
    assert by_rcpt["b1@big.test"]["meta"]["tenant"] == "tb"
    assert by_rcpt["b1@big.test"]["meta"]["campaign"] == "spring"
    assert by_rcpt["a1@big.test"]["egress_pool"] == "pool-a"
    assert by_rcpt["d1@big.test"]["meta"]["tenant"] == "ta"


def test_unknown_tenant_is_rejected(env):
    k, _ = env
    with pytest.raises(smtplib.SMTPDataError) as e:
        send(k, "x@big.test", "X-Tenant: nobody\r\n")
    assert e.value.smtp_code == 500 and b"nobody" in e.value.smtp_error


def test_shaping_limits_hold_at_the_peer(env):
    k, peer = env
    wait_until(lambda: peer.open == 0, timeout=30, what="idle peer")
    peer.reset_counts()
    before = len(peer.received())
    n = 8
    for i in range(n):
        send(k, f"r{i}@other.big.test", "X-Tenant: ta\r\n", subject=f"rate-{i}")
    got = wait_until(lambda: [m for m in peer.received()[before:] if b"Subject: rate-" in m["data"]]
                     if len(peer.received()) >= before + n else None,
                     timeout=40, what="the rate-limited messages")
    # connection_limit = 1 (provider block): never two connections at once
    assert peer.peak == 1, peer.peak
    # max_message_rate = 2/s with its default burst of 2: 8 messages take
    # at least (8 - 2) / 2 = 3 s
    span = max(m["at"] for m in got) - min(m["at"] for m in got)
    assert span >= 2.7, span


def rcpt_reply(k, sender, rcpt):
    with smtplib.SMTP("127.0.0.1", k.smtp_port, timeout=10 * kh.SLOW) as s:
        s.ehlo("client.e2e.test")
        s.mail(sender)
        code, _ = s.rcpt(rcpt)
        s.rset()
        return code


@pytest.mark.parametrize("sender,rcpt,code", [
    ("s@src.e2e.test", "u@big.test", 250),          # relay_to = true
    ("s@src.e2e.test", "u@elsewhere.test", 550),     # "*": relay_to = false
    ("s@relay-from.test", "u@elsewhere.test", 250),  # relay_from 127.0.0.0/8
    ("s@src.e2e.test", "u@x.wild.test", 250),        # wildcard
    ("s@src.e2e.test", "u@no.wild.test", 550),       # exact entry beats the wildcard
    ("s@src.e2e.test", "u@wild.test", 550),          # "*.wild.test" is not wild.test
])
def test_listener_domains_decide_relaying(env, sender, rcpt, code):
    k, _ = env
    assert rcpt_reply(k, sender, rcpt) == code


# ---- kumod --validate on bad data ------------------------------------------------------------

BAD = [
    ("sources.toml", SOURCES.replace("source_address = \"127.0.0.2\"", "source_adress = \"127.0.0.2\""),
     'sources: {dir}/sources.toml: [source.s2] source_adress: unknown key'),
    ("sources.toml", SOURCES.replace("weight = 3", "weight = \"heavy\""),
     'sources: {dir}/sources.toml: [pool.pool-b.s2] weight: expected a non-negative integer, got string'),
    ("sources.toml", SOURCES + '\n[pool."pool-c"."s9"]\n',
     "sources: {dir}/sources.toml: [pool.pool-c.s9]: source 's9' is not defined in any sources file"),
    ("sources.toml", None, "sources: {dir}/sources.toml: reading file {dir}/sources.toml: No such file"),
    ("queues.toml", QUEUES.replace('egress_pool = "pool-b"', 'egress_pool = "pool-z"'),
     "queue: {dir}/queues.toml: [tenant.tb] egress_pool: pool 'pool-z' is not defined by the sources helper"),
    ("queues.toml", QUEUES.replace("\ntenant_header =", "\ntenant_heder ="),
     "queue: {dir}/queues.toml: (top level) tenant_heder: unknown key"),
    ("queues.toml", QUEUES.replace('max_age = "1 hour"', 'max_age = "for ever"'),
     "queue: {dir}/queues.toml: [queue.default] max_age: invalid duration"),
    ("shaping.toml", SHAPING.replace("connection_limit = 4", "conection_limit = 4"),
     "shaping: {dir}/shaping.toml: [default] conection_limit: unknown key"),
    ("shaping.toml", SHAPING.replace('"2/s"', '"quickly"'),
     "shaping: {dir}/shaping.toml: [provider.bigmail] max_message_rate: invalid throttle"),
    ("shaping.toml", SHAPING + '\n["big.test".sources."s7"]\nconnection_limit = 1\n',
     "shaping: {dir}/shaping.toml: [\"big.test\".sources] s7: egress source 's7' is not defined "
     "by the sources helper"),
    ("listener_domains.toml", LISTENER_DOMAINS.replace("relay_to = true", "relay_to = 1", 1),
     "listener_domains: {dir}/listener_domains.toml: [\"big.test\"] relay_to: expected true or "
     "false, got integer"),
]


@pytest.mark.parametrize("name,text,expect", BAD, ids=[f"{b[0]}-{i}" for i, b in enumerate(BAD)])
def test_validate_reports_bad_data(kumod_factory, name, text, expect):
    k = kumod_factory(policy=POLICY.replace("DNS_PORT", "53"), start=False)
    write_files(k, 2525)
    if text is None:
        os.unlink(k.path(name))
    else:
        with open(k.path(name), "w") as f:
            f.write(text.format(peer_port=2525) if name == "shaping.toml" else text)
    env = dict(os.environ, KUMOD_LUA_PATH=kh.LUA_PATH)
    r = subprocess.run(k.command() + ["--validate"], capture_output=True, text=True, env=env,
                       cwd=k.dir, timeout=60 * kh.SLOW)
    assert r.returncode == 1, (r.stdout, r.stderr)
    assert expect.format(dir=k.dir) in r.stderr, r.stderr


def test_validate_accepts_good_data(kumod_factory):
    k = kumod_factory(policy=POLICY.replace("DNS_PORT", "53"), start=False)
    write_files(k, 2525)
    env = dict(os.environ, KUMOD_LUA_PATH=kh.LUA_PATH)
    r = subprocess.run(k.command() + ["--validate"], capture_output=True, text=True, env=env,
                       cwd=k.dir, timeout=60 * kh.SLOW)
    assert r.returncode == 0, r.stderr


# ---- the shipped example policy ---------------------------------------------------------------

EXAMPLE = os.path.join(kh.REPO, "policy", "example.lua")


def test_example_policy_validates():
    env = dict(os.environ, KUMOD_LUA_PATH=kh.LUA_PATH, KUMOD_EXAMPLE_DIR="/nonexistent")
    r = subprocess.run([kh.kumod_bin(), "--policy", EXAMPLE, "--validate"], capture_output=True,
                       text=True, env=env, timeout=60 * kh.SLOW)
    assert r.returncode == 0, r.stderr


def test_example_policy_delivers_to_the_sink_maildir(tmp_path):
    smtp, http = kh.free_port(), kh.free_port()
    env = {"KUMOD_EXAMPLE_DIR": str(tmp_path), "KUMOD_EXAMPLE_LISTEN": f"127.0.0.1:{smtp}",
           "KUMOD_EXAMPLE_HTTP": f"127.0.0.1:{http}"}
    k = kh.Kumod(tmp_path / "run", policy="-- unused\n", env=env)
    k.policy_path = EXAMPLE
    k.ports["smtp"] = smtp
    try:
        k.start()
        send(k, "someone@sink.test", "X-Tenant: mytenant\r\nX-Campaign: welcome\r\n",
             subject="example")
        maildir = tmp_path / "maildir" / "new"
        files = wait_until(lambda: list(maildir.glob("*")) if maildir.exists() else None,
                           timeout=20, what="a message in the example's maildir")
        data = files[0].read_bytes()
        assert b"Subject: example" in data
        assert b"X-Tenant" not in data and b"X-Campaign" not in data
        # an unknown tenant is refused by the queue helper
        with pytest.raises(smtplib.SMTPDataError):
            send(k, "someone@sink.test", "X-Tenant: stranger\r\n")
    finally:
        k.close()


# ---- the whole scenario: pools, DKIM and the webhook in one daemon ------------------------------

def test_signed_through_the_pool_and_every_record_reaches_the_webhook(env):
    import dkim
    k, peer = env
    send(k, "sig1@big.test", "X-Tenant: tb\r\nX-Campaign: autumn\r\n", subject="signed-tb")
    m = wait_until(lambda: next((m for m in peer.received()
                                 if b"Subject: signed-tb\r\n" in m["data"]), None),
                   timeout=30, what="the signed message at the peer")
    # tenant tb's pool: source s2 on 127.0.0.2
    assert m["peer"][0] == "127.0.0.2" and m["ehlo"] == "s2.e2e.test"
    data = m["data"]
    assert data.startswith(b"DKIM-Signature:") or b"\r\nDKIM-Signature:" in data

    def dnsfunc(name, timeout=5):
        return k.dkim_record if name == b"s1._domainkey.src.e2e.test." else None
    assert dkim.verify(data, dnsfunc=dnsfunc)
    # the tenant header went before signing: the signature covers what was sent
    assert b"X-Tenant" not in data
    # the webhook got the message's Reception and Delivery records, with
    # the hook's header and meta selection
    recs = k.hook.wait_records(
        lambda rs: {"Reception", "Delivery"} <= {r["type"] for r in rs
                                                 if r.get("recipient") == "sig1@big.test"},
        timeout=30, what="Reception and Delivery of sig1@big.test")
    mine = [r for r in recs if r.get("recipient") == "sig1@big.test"]
    delivery = next(r for r in mine if r["type"] == "Delivery")
    assert delivery["egress_pool"] == "pool-b" and delivery["egress_source"] == "s2"
    assert delivery["headers"]["Subject"] == "signed-tb"
    assert delivery["meta"]["tenant"] == "tb"
