"""Issue 15: kcli trace-smtp-server / trace-smtp-client, live protocol
traces streamed from kumod over a websocket (KumoMTA's endpoints
/api/admin/trace-smtp-server/v1 and /api/admin/trace-smtp-client/v1, its
request and event JSON), and resolve-egress-path. The real kcli against a
real kumod receiving from smtplib and delivering to an aiosmtpd peer; a
raw-socket websocket client for the protocol edges and for a subscriber
that never reads."""
import base64
import hashlib
import json
import os
import queue
import re
import smtplib
import socket
import struct
import subprocess
import threading
import time

import pytest

import kumod_harness as kh
from kumod_harness import wait_until
from smtpdeliv_peers import SmtpPeer

PEER_HOST = "127.0.0.71"
INIT = "kumo.start_http_listener { listen = '127.0.0.1:{http_port}' }"


@pytest.fixture(scope="module")
def peer():
    p = SmtpPeer(host=PEER_HOST)
    p.start()
    yield p
    p.stop()


def policy_for(peer):
    return f"""
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    protocol = {{ smtp = {{ mx_list = {{ '[{PEER_HOST}]' }} }} }},
    retry_interval = '1h',
  }}
end)
kumo.on('get_egress_path_config', function(domain, source, site)
  return kumo.make_egress_path {{ smtp_port = {peer.port}, enable_tls = 'Disabled',
                                 prohibited_hosts = {{}}, connection_limit = 3,
                                 max_deliveries_per_connection = 7,
                                 max_message_rate = '100/s' }}
end)
"""


@pytest.fixture
def k(kumod_factory, peer):
    return kumod_factory(handlers=policy_for(peer), init=INIT)


def kcli_bin():
    return os.environ.get("KCLI_BIN") or os.path.join(os.path.dirname(kh.kumod_bin()), "kcli")


class Kcli:
    """A long-running kcli whose stdout lines are collected by a thread."""

    def __init__(self, k, *args):
        cmd = [kcli_bin(), "--endpoint", f"http://127.0.0.1:{k.http_port}"] + list(args)
        self.proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                     text=True)
        self.lines = []
        self.t = threading.Thread(target=self._read, daemon=True)
        self.t.start()

    def _read(self):
        for line in self.proc.stdout:
            self.lines.append(line.rstrip("\n"))

    def wait_line(self, pattern, timeout=15):
        rx = re.compile(pattern)
        return wait_until(lambda: any(rx.search(l) for l in self.lines), timeout=timeout,
                          what=f"kcli line {pattern!r}; have {self.lines[-30:]}")

    def stop(self):
        if self.proc.poll() is None:
            self.proc.terminate()
        self.proc.wait(timeout=10)
        self.t.join(timeout=5)
        return self.proc.stderr.read()


def subscribed(k, kind, n=1):
    wait_until(lambda: k.diag().count(f"trace-smtp-{kind} subscribed") >= n,
               what=f"trace-smtp-{kind} subscription")


def send_one(k, rcpt="someone@dest.example", body="Subject: trace\r\n\r\nhello\r\n"):
    with smtplib.SMTP("127.0.0.1", k.smtp_port, timeout=10) as s:
        s.ehlo("trace.e2e.test")
        s.mail("sender@src.example")
        s.rcpt(rcpt)
        code, text = s.data(body.encode())
        assert code == 250, text
        port = s.sock.getsockname()[1]
    return port


# ---- trace-smtp-server ------------------------------------------------------------------------


def test_trace_smtp_server_shows_commands_and_replies(k):
    t = Kcli(k, "trace-smtp-server", "--color", "no")
    try:
        subscribed(k, "server")
        port = send_one(k, body="Subject: trace\r\nX-Esc: a\tb \"q\" 'x' \\ \x01\r\n\r\n"
                                "hello\r\n")
        key = re.escape(f"[127.0.0.1:{port}->127.0.0.1:{k.smtp_port}]")
        t.wait_line(key + r" +\S+ === Closed$")
    finally:
        t.stop()
    mine = [l for l in t.lines if l.startswith(f"[127.0.0.1:{port}->")]
    text = "\n".join(mine)
    # KumoMTA's rendering: the first line has a blank delta and the time
    assert re.match(key + r"       === Connected \d{4}-\d\d-\d\d \d\d:\d\d:\d\d(\.\d+)? UTC$",
                    mine[0]), mine[0]
    # then the meta as it is first seen
    assert re.search(key + r"       === conn_meta received_from=\"127\.0\.0\.1:%d\"" % port, text)
    # what the client wrote ( -> ) and what kumod answered (<-  ); smtplib
    # writes its verbs in lower case
    for pat in [r"  -> ehlo trace\.e2e\.test$", r" <-  250-", r"  -> mail FROM:<sender@src\.example>",
                r"  -> rcpt TO:<someone@dest\.example>", r"  -> data$", r" <-  354 ",
                r"  -> Subject: trace$", r"  -> hello$",
                # Rust's escape_debug of a line
                r"  -> X-Esc: a\\tb \\\"q\\\" \\'x\\' \\\\ \\u\{1\}$", r"  -> \.$", r" <-  250 OK ids=",
                r"  -> QUIT$", r" <-  221 ", r" === INFO: Message from=<sender@src\.example>",
                r" <-  220 "]:
        assert re.search("^" + key + r" *\S*" + pat, text, re.M), (pat, text)
    # the order of a session
    idx = [next(i for i, l in enumerate(mine) if p in l)
           for p in ("=== Connected", "<-  220 ", "-> ehlo", "-> mail", "-> data", "-> QUIT",
                     "=== Closed")]
    assert idx == sorted(idx), mine


def test_trace_smtp_server_json_and_source_filter(k):
    j = Kcli(k, "trace-smtp-server", "--json")
    other = Kcli(k, "trace-smtp-server", "--json", "--source", "10.0.0.0/8")
    try:
        subscribed(k, "server", 2)
        port = send_one(k)
        j.wait_line(r'"Closed"')
    finally:
        j.stop()
        other.stop()
    events = [json.loads(l) for l in j.lines]
    mine = [e for e in events
            if e["conn_meta"] and e["conn_meta"]["received_from"] == f"127.0.0.1:{port}"]
    assert mine[0]["payload"] == "Connected"
    assert mine[-1]["payload"] == "Closed"
    reads = [e["payload"]["Read"] for e in mine if isinstance(e["payload"], dict)
             and "Read" in e["payload"]]
    writes = [e["payload"]["Write"] for e in mine if isinstance(e["payload"], dict)
              and "Write" in e["payload"]]
    assert "ehlo trace.e2e.test\r\n" in reads
    assert "mail FROM:<sender@src.example>\r\n" in reads
    assert any(r.startswith("Subject: trace\r\n") and r.endswith("\r\n.\r\n") for r in reads)
    assert writes[0].startswith("220 ")
    assert any(w.startswith("250 OK ids=") for w in writes)
    for e in mine:
        assert re.match(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{9}Z$", e["when"]), e["when"]
        assert e["conn_meta"]["received_via"] == f"127.0.0.1:{k.smtp_port}"
    # a source filter that excludes 127.0.0.1 sees nothing of the session
    assert not [l for l in other.lines if f"127.0.0.1:{port}" in l], other.lines


def test_trace_smtp_server_terse(k):
    t = Kcli(k, "trace-smtp-server", "--json", "--terse")
    try:
        subscribed(k, "server")
        send_one(k, body="Subject: terse\r\n\r\nline one\r\nline two\r\n")
        t.wait_line(r'"Closed"')
    finally:
        t.stop()
    ab = [json.loads(l)["payload"]["AbbreviatedRead"] for l in t.lines
          if "AbbreviatedRead" in l]
    assert {"snippet": "Subject: terse", "len": len("Subject: terse\r\n\r\nline one\r\n"
                                                   "line two\r\n.\r\n")} in ab, t.lines


# ---- trace-smtp-client ------------------------------------------------------------------------


def test_trace_smtp_client_shows_delivery_session(k, peer):
    t = Kcli(k, "trace-smtp-client", "--color", "no")
    j = Kcli(k, "trace-smtp-client", "--json", "--domain", "dest.example")
    none = Kcli(k, "trace-smtp-client", "--json", "--domain", "elsewhere.example")
    try:
        subscribed(k, "client", 3)
        send_one(k, rcpt="client@dest.example")
        wait_until(lambda: any(m.get("rcpt") == ["client@dest.example"] or
                               "client@dest.example" in str(m) for m in peer.messages),
                   what="delivery to the peer")
        t.wait_line(r"->  MAIL FROM:<sender@src\.example>")
        t.wait_line(r" <- 250 ")
        j.wait_line(r'"MessageObtained"')
        j.wait_line(r'"Write":"MAIL FROM:<sender@src.example>')
    finally:
        t.stop()
        j.stop()
        none.stop()
    text = "\n".join(t.lines)
    assert re.search(r"^\[\S+\]       === BeginSession \d{4}-", text, re.M), text
    assert re.search(r"=== conn_meta ready_queue_name=\"unspecified->", text), text
    assert re.search(r"=== Connected$", text, re.M), text
    assert re.search(r"=== conn_meta mx_address=\"%s:%d\"" % (re.escape(PEER_HOST), peer.port),
                     text), text
    assert re.search(r" <- 220 ", text), text
    assert re.search(r"->  EHLO ", text), text
    assert re.search(r"=== MessageObtained$", text, re.M), text
    assert re.search(r"=== conn_meta domain=\"dest\.example\"", text), text
    assert re.search(r"->  RCPT TO:<client@dest\.example>", text), text
    events = [json.loads(l) for l in j.lines]
    assert events and all(e["conn_meta"]["domain"] == "dest.example" for e in events
                          if "domain" in e["conn_meta"])
    # the domain filter passes events before the domain is known, and none after
    assert not [l for l in none.lines if '"domain":"dest.example"' in l], none.lines


# ---- the websocket itself -----------------------------------------------------------------------


class WS:
    """A minimal RFC 6455 client over a raw socket."""

    def __init__(self, port, path="/api/admin/trace-smtp-server/v1", rcvbuf=None):
        self.s = socket.socket()
        if rcvbuf:
            self.s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.s.connect(("127.0.0.1", port))
        self.s.settimeout(20)
        key = base64.b64encode(os.urandom(16)).decode()
        self.s.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
                        "Upgrade: websocket\r\nConnection: keep-alive, Upgrade\r\n"
                        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n").encode())
        self.buf = b""
        while b"\r\n\r\n" not in self.buf:
            chunk = self.s.recv(4096)
            assert chunk, self.buf
            self.buf += chunk
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        self.head = head.decode()
        want = base64.b64encode(hashlib.sha1(
            (key + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").encode()).digest()).decode()
        self.status = int(self.head.split()[1])
        if self.status == 101:
            assert f"Sec-WebSocket-Accept: {want}" in self.head, self.head

    def send(self, op, payload=b"", mask=True, fin=True):
        h = bytes([(0x80 if fin else 0) | op])
        n = len(payload)
        mbit = 0x80 if mask else 0
        if n < 126:
            h += bytes([mbit | n])
        elif n < 65536:
            h += bytes([mbit | 126]) + struct.pack("!H", n)
        else:
            h += bytes([mbit | 127]) + struct.pack("!Q", n)
        if mask:
            m = os.urandom(4)
            h += m
            payload = bytes(b ^ m[i % 4] for i, b in enumerate(payload))
        self.s.sendall(h + payload)

    def frame(self):
        def need(n):
            while len(self.buf) < n:
                chunk = self.s.recv(65536)
                if not chunk:
                    raise EOFError
                self.buf += chunk
        need(2)
        op, n = self.buf[0] & 0x0F, self.buf[1] & 0x7F
        assert not self.buf[1] & 0x80, "server frames are not masked"
        h = 2
        if n == 126:
            need(4)
            n, h = struct.unpack("!H", self.buf[2:4])[0], 4
        elif n == 127:
            need(10)
            n, h = struct.unpack("!Q", self.buf[2:10])[0], 10
        need(h + n)
        payload, self.buf = self.buf[h:h + n], self.buf[h + n:]
        return op, payload


def test_websocket_handshake_errors_and_protocol(k):
    # not an upgrade: a plain GET is a 400 naming the reason
    import urllib.request
    import urllib.error
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://127.0.0.1:{k.http_port}/api/admin/trace-smtp-server/v1")
    assert e.value.code == 400
    assert "upgrade" in e.value.read().decode()
    # ping is answered with a pong carrying the same data
    w = WS(k.http_port)
    assert w.status == 101
    w.send(0x9, b"are you there")
    assert w.frame() == (0xA, b"are you there")
    # the request may come in fragments
    w.send(0x1, b'{"source_addr":', fin=False)
    w.send(0x0, b' null}', fin=True)
    subscribed(k, "server")
    send_one(k)
    seen = []
    while True:
        op, p = w.frame()
        assert op == 0x1
        seen.append(json.loads(p))
        if seen[-1]["payload"] == "Closed":
            break
    assert seen[0]["payload"] == "Connected"
    # an unmasked client frame is a protocol error: Close 1002
    w.send(0x9, b"x", mask=False)
    op, p = w.frame()
    assert op == 0x8 and struct.unpack("!H", p[:2])[0] == 1002
    # a bad request is refused with Close 1008 naming the field
    w2 = WS(k.http_port, "/api/admin/trace-smtp-client/v1")
    w2.send(0x1, b'{"mx_addr": ["not-an-address"]}')
    op, p = w2.frame()
    assert op == 0x8 and struct.unpack("!H", p[:2])[0] == 1008 and b"mx_addr" in p, p
    # a clean close is echoed
    w3 = WS(k.http_port)
    w3.send(0x8, struct.pack("!H", 1000) + b"bye")
    op, p = w3.frame()
    assert op == 0x8 and struct.unpack("!H", p[:2])[0] == 1000
    # kcli shows an HTTP refusal as an error
    p = subprocess.run([kcli_bin(), "--endpoint", f"http://127.0.0.1:{k.http_port}/",
                        "trace-smtp-server", "--source", "nonsense"], capture_output=True,
                       text=True, timeout=30)
    assert p.returncode == 1 and "--source" in p.stderr, p.stderr


def test_subscriber_that_never_reads_does_not_hold_up_mail(k, peer):
    w = WS(k.http_port, rcvbuf=4096)
    assert w.status == 101
    w.send(0x1, b"{}")
    subscribed(k, "server")
    body = "Subject: big\r\n\r\n" + ("x" * 76 + "\r\n") * 700  # ~55 KB a message
    n = 200
    t0 = time.monotonic()
    with smtplib.SMTP("127.0.0.1", k.smtp_port, timeout=30) as s:
        s.ehlo("stuck.e2e.test")
        for i in range(n):
            s.mail("sender@src.example")
            s.rcpt(f"stuck{i}@dest.example")
            code, text = s.data(body.encode())
            assert code == 250, text
    took = time.monotonic() - t0
    wait_until(lambda: sum(1 for m in peer.messages if "stuck" in str(m)) >= n, timeout=60,
               what="all messages delivered")
    # the queue stayed bounded: events were dropped, and the subscriber is
    # told how many once it reads again
    lagged = None
    deadline = time.monotonic() + 30
    while lagged is None and time.monotonic() < deadline:
        op, p = w.frame()
        if op != 0x1:
            continue
        e = json.loads(p)
        if isinstance(e["payload"], dict) and "Diagnostic" in e["payload"]:
            m = re.match(r"Tracer Lagged behind and missed (\d+) events",
                         e["payload"]["Diagnostic"]["message"])
            if m:
                lagged = int(m.group(1))
                assert e["conn_meta"] is None
                assert e["payload"]["Diagnostic"]["level"] == "ERROR"
    assert lagged and lagged > 0
    assert took < 60 * kh.SLOW, took


# ---- resolve-egress-path ----------------------------------------------------------------------

RESOLVE_POLICY = """
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  if domain == 'smart.example' then
    return kumo.make_queue_config {
      protocol = { smtp = { mx_list = { '127.0.0.5:2525' } } },
    }
  end
  return kumo.make_queue_config {
    egress_pool = tenant == 'gold' and 'gold-pool' or 'plain-pool',
    retry_interval = '7m',
  }
end)
kumo.on('get_egress_pool', function(name)
  if name == 'gold-pool' then
    return kumo.make_egress_pool { name = name, entries = {
      { name = 'ip-1', weight = 2 }, { name = 'ip-2', weight = 1 } } }
  end
  return kumo.make_egress_pool { name = name, entries = { { name = 'ip-3' } } }
end)
kumo.on('get_egress_source', function(name)
  return kumo.make_egress_source { name = name }
end)
kumo.on('get_egress_path_config', function(domain, source, site)
  if site == '(mx1|mx2).zone.example' and source == 'ip-1' then
    return kumo.make_egress_path { connection_limit = 3, max_message_rate = '100/s',
                                   max_connection_rate = '10/m', smtp_port = 2525 }
  end
  return kumo.make_egress_path { connection_limit = 9 }
end)
"""

RESOLVE_INIT = INIT + """
kumo.dns.configure_test_resolver {
  [[
$ORIGIN zone.example.
@       300 IN MX 10 mx1
        300 IN MX 20 mx2.zone.example.
mx1     300 IN A  127.0.0.1
mx2     300 IN A  127.0.0.1
]],
}
"""


def kcli_run(k, *args, check=True):
    p = subprocess.run([kcli_bin(), "--endpoint", f"http://127.0.0.1:{k.http_port}"] + list(args),
                       capture_output=True, text=True, timeout=60)
    if check:
        assert p.returncode == 0, (args, p.stdout, p.stderr)
    return p


def test_resolve_egress_path(kumod_factory):
    k = kumod_factory(handlers=RESOLVE_POLICY, init=RESOLVE_INIT)
    r = json.loads(kcli_run(k, "resolve-egress-path", "--json", "--tenant", "gold",
                            "zone.example", "ip-1").stdout)
    assert r["domain"] == "zone.example" and r["source"] == "ip-1"
    assert r["queue_name"] == "ip-1->(mx1|mx2).zone.example@smtp_client"
    assert r["mx"]["site_name"] == "(mx1|mx2).zone.example"
    assert r["mx"]["by_preference"] == {"10": ["mx1.zone.example."], "20": ["mx2.zone.example."]}
    assert r["mx"]["is_mx"] is True and r["mx"]["is_domain_literal"] is False
    assert r["queue_config"]["egress_pool"] == "gold-pool"
    assert r["queue_config"]["retry_interval"] == "7m"
    assert r["egress_pool"] == "gold-pool"
    assert r["sources"] == [{"name": "ip-1", "weight": 2}, {"name": "ip-2", "weight": 1}]
    pc = r["path_config"]
    assert pc["connection_limit"] == 3 and pc["smtp_port"] == 2525
    assert pc["max_message_rate"] == "100/s" and pc["max_connection_rate"] == "10/m"
    c = r["constraints"]
    assert c["max_concurrent_dispatchers"] == {"value": 3.0, "source": {"kind": "primary"},
                                               "display": "3"}
    assert c["max_message_rate"]["value"] == 100.0
    assert abs(c["max_connection_rate"]["value"] - 10 / 60) < 1e-9
    # another source, another tenant: the other branches of the policy
    r2 = json.loads(kcli_run(k, "resolve-egress-path", "--json", "zone.example").stdout)
    assert r2["source"] == "unspecified" and r2["egress_pool"] == "plain-pool"
    assert r2["sources"] == [{"name": "ip-3", "weight": 1}]
    assert r2["path_config"]["connection_limit"] == 9
    # smart hosts: no MX lookup, the site is named after them
    r3 = json.loads(kcli_run(k, "resolve-egress-path", "--json", "smart.example").stdout)
    assert r3["mx"] is None
    assert r3["queue_name"] == "unspecified->mx_list:127.0.0.5:2525@smtp_client"
    # the text renderings
    text = kcli_run(k, "resolve-egress-path", "--tenant", "gold", "zone.example", "ip-1").stdout
    assert "queue:  ip-1->(mx1|mx2).zone.example@smtp_client" in text
    assert "--- egress path config ---" in text and "connection_limit = 3" in text
    assert re.search(r"concurrency +3 \(connection_limit\)", text), text
    assert "source ip-1 weight 2" in text
    cfg = kcli_run(k, "resolve-egress-path", "--config", "--tenant", "gold", "zone.example",
                   "ip-1").stdout
    assert 'max_message_rate = "100/s"' in cfg and "---" not in cfg
    cons = kcli_run(k, "resolve-egress-path", "--constraints", "zone.example").stdout
    assert re.search(r"concurrency +9 \(connection_limit\)", cons), cons
    # errors: no domain; mutually exclusive modes
    p = kcli_run(k, "resolve-egress-path", check=False)
    assert p.returncode == 2
    p = kcli_run(k, "resolve-egress-path", "--json", "--config", "x.example", check=False)
    assert p.returncode == 2
    import urllib.request
    import urllib.error
    with pytest.raises(urllib.error.HTTPError) as e:
        urllib.request.urlopen(f"http://127.0.0.1:{k.http_port}/api/admin/resolve-egress-path/v1")
    assert e.value.code == 400 and b"domain is required" in e.value.read()
