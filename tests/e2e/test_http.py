"""Issue 6 (operate it) end to end: the HTTP listener, /api/inject/v1, the
admin API, /metrics and kcli, against a real kumod.

Injection is checked on the delivered bytes (a Maildir queue) and on the exact
Reception records; authentication with trusted hosts, Basic and Bearer
credentials validated by policy events, and ACLs from get_acl_definition;
metrics with Python's prometheus_client parser; the admin API through kcli
(bounce, suspend, rebind, inspection, queue-summary) with the AdminBounce and
AdminRebind records; bad input with the exact status and message, the daemon
still serving afterwards.

Expectations follow KumoMTA (crates/kumod/src/http_server/*.rs,
crates/kumo-server-common/src/http_server/auth.rs, crates/kcli/src/*.rs) except
where kumod deliberately differs: the built-in ACL also lets authenticated users reach admin and metrics (the
issue asks for it; a policy narrows it with get_acl_definition, as tested
here)."""
import base64
import calendar
import email
import email.header
import email.policy
import json
import os
import re
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

import kumod_harness as kh
from kumod_harness import decode_kumoref, header_fields, split_message, wait_until
from records import RECORD_KEYS, RFC2822, UUID_RX, check_times, uuid1_unix

SENDER = "sender@src.example"
HTTP_HOSTNAME = "http.e2e.test"
LOG_META = ["http_auth", "reception_protocol", "received_from", "received_via", "hostname",
            "extra", "gen_groups"]

POLICY = """
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool { name = 'data', path = '{spool}/data', kind = 'LocalDisk' }
  kumo.define_spool { name = 'meta', path = '{spool}/meta', kind = 'RocksDB' }
  kumo.configure_local_logs {
    log_dir = '{logs}',
    headers = { 'Subject', 'X-E2E-*' },
    meta = { 'http_auth', 'reception_protocol', 'received_from', 'received_via', 'hostname',
             'extra', 'gen_groups' },
  }
  kumo.start_esmtp_listener { listen = '127.0.0.1:{smtp_port}', hostname = '{hostname}' }
  kumo.dns.configure_resolver { name_servers = { '{dns}' } }
  kumo.start_http_listener { listen = '127.0.0.1:{http_port}', hostname = 'http.e2e.test' }
  kumo.start_http_listener {
    listen = '127.0.0.1:{port:untrusted}',
    hostname = 'untrusted.e2e.test',
    trusted_hosts = {},
    request_body_limit = 65536,
  }
end)

kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  if domain:match('%.hold%.test$') then
    -- every attempt fails transiently and the next one is an hour away:
    -- the messages wait in their scheduled queue for the admin tests
    return kumo.make_queue_config {
      retry_interval = '1h',
      protocol = { custom_lua = { constructor = 'make.hold' } },
    }
  end
  if domain == 'susp.example.com' then
    return kumo.make_queue_config {
      retry_interval = '1s',
      protocol = { maildir_path = '{dir}/md-susp' },
    }
  end
  return kumo.make_queue_config { protocol = { maildir_path = '{dir}/md' } }
end)

kumo.on('make.hold', function(domain, tenant, campaign)
  local connection = {}
  function connection:send(message)
    kumo.reject(400, 'held for the test')
  end
  return connection
end)

kumo.on('http_server_validate_auth_basic', function(user, password)
  if user == 'daniel' and password == 'tiger' then
    return true
  end
  if user == 'injector' and password == 'secret' then
    return {
      identities = { { identity = 'injector', context = 'HttpBasicAuth' } },
      groups = { 'injectors' },
    }
  end
  if user == 'broken' then
    error('the password database is down')
  end
  return false
end)

kumo.on('http_server_validate_auth_bearer', function(token)
  if token == 'tok-123' then
    return {
      identities = { { identity = 'svc', context = 'BearerToken' } },
      groups = { 'ops' },
    }
  end
  return false
end)

-- Admin: trusted hosts and authenticated users, except the injectors group.
local ADMIN_ACL = {}
for _, method in ipairs { 'GET', 'POST', 'DELETE' } do
  table.insert(ADMIN_ACL, {
    criteria = { Identity = { Group = 'kumomta:http-listener-trusted-ip' } },
    privilege = method,
    access = 'Allow',
  })
  table.insert(ADMIN_ACL, {
    criteria = { Identity = { Group = 'injectors' } },
    privilege = method,
    access = 'Deny',
  })
  table.insert(ADMIN_ACL, {
    criteria = { Identity = { Authenticated = {} } },
    privilege = method,
    access = 'Allow',
  })
end
local admin_acl = kumo.aaa.make_access_control_list(ADMIN_ACL)

kumo.on('get_acl_definition', function(resource)
  if resource == 'http_listener/*/api/admin' then
    return admin_acl
  end
  return nil
end)

kumo.on('http_message_generated', function(msg, auth_info)
  msg:set_meta('gen_groups', table.concat(auth_info.groups or {}, ','))
  local rcpt = msg:recipient()
  if rcpt.domain == 'reject.example.com' then
    kumo.reject(550, 'not for this domain')
  end
  if rcpt.user == 'blackhole' then
    msg:set_meta('queue', 'null')
  end
end)
"""


def kcli_bin():
    path = os.environ.get("KCLI_BIN") or os.path.join(os.path.dirname(kh.kumod_bin()), "kcli")
    return os.path.abspath(path)


@pytest.fixture(scope="module")
def k(module_kumod_factory):
    k = module_kumod_factory(policy=POLICY, name="http")
    try:
        status, _, _ = request(k, "GET", "/api/check-liveness/v1")
    except OSError as e:
        pytest.fail(f"kumod did not open its HTTP listener on {k.http_port} ({e}); is "
                    "http_start_listeners() called from main?")
    assert status == 200
    return k


def request(k, method, path, body=None, port=None, auth=None, raw=None, headers=None):
    """(status, headers, body bytes) of one HTTP request."""
    url = f"http://127.0.0.1:{port or k.http_port}{path}"
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if auth:
        req.add_header("Authorization", auth)
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=60 * kh.SLOW) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def inject(k, body, **kw):
    """(status, parsed JSON answer or, for an error, its text)"""
    status, headers, data = request(k, "POST", "/api/inject/v1", body, **kw)
    if status != 200:
        return status, {"error": error_of(data)}
    return status, json.loads(data) if data else None


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def error_of(data):
    """The message of an error answer: KumoMTA's AppError is text/plain
    "Error: <message>"; axum's own rejections (JSON syntax, 413, 422) have
    no prefix."""
    text = data.decode()
    return text[len("Error: "):] if text.startswith("Error: ") else text


def receptions(k, recipients, count=None):
    """The Reception records of these recipients, by recipient."""
    want = set(recipients)
    recs = k.wait_records(lambda r: r["recipient"] in want, type="Reception",
                          count=count if count is not None else len(want))
    return {r["recipient"]: r for r in recs}


def maildir_by_recipient(k, sub="md", count=None, want=None):
    """Delivered Maildir files, keyed by the recipient in their X-KumoRef."""
    new = k.path(sub, "new")

    def load():
        if not os.path.isdir(new):
            return None
        out = {}
        for name in os.listdir(new):
            data = open(os.path.join(new, name), "rb").read()
            fields = header_fields(split_message(data)[0])
            ref = [v for n, v in fields if n == "X-KumoRef"]
            if ref:
                out[decode_kumoref(ref[0])["recipient"]] = data
        if want and not set(want) <= set(out):
            return None
        if count is not None and len(out) < count:
            return None
        return out
    return wait_until(load, 15, what=f"maildir files in {sub}")


def check_http_reception(rec, *, id, recipient, size, queue, meta, headers, t_before, t_after,
                         sender=SENDER):
    """The exact Reception record of an HTTP injection (KumoMTA's inject_v1.rs:
    peer_address {name: "", addr: peer}, response 250 with empty content, no
    session id)."""
    assert set(rec) == RECORD_KEYS, (set(rec) ^ RECORD_KEYS)
    assert rec["type"] == "Reception"
    assert rec["id"] == id
    assert rec["sender"] == sender
    assert rec["recipient"] == recipient
    assert rec["queue"] == queue
    assert rec["site"] == ""
    assert rec["size"] == size
    assert rec["response"] == {"code": 250, "enhanced_code": None, "content": "", "command": None}
    assert rec["peer_address"] == {"name": "", "addr": "127.0.0.1"}
    check_times(rec, t_before, t_after)
    assert rec["created"] == int(uuid1_unix(id))
    assert rec["num_attempts"] == 0
    assert rec["bounce_classification"] == "Uncategorized"
    assert rec["egress_pool"] is None
    assert rec["egress_source"] is None
    assert rec["source_address"] is None
    assert rec["feedback_report"] is None
    assert rec["meta"] == meta
    assert rec["headers"] == headers
    assert rec["delivery_protocol"] is None
    assert rec["reception_protocol"] == "HTTP"
    assert UUID_RX.fullmatch(rec["nodeid"]), rec["nodeid"]


def trusted_meta(k, **extra):
    meta = {"http_auth": "127.0.0.1", "reception_protocol": "HTTP",
            "received_from": "127.0.0.1", "received_via": "127.0.0.1",
            "hostname": HTTP_HOSTNAME, "gen_groups": "kumomta:http-listener-trusted-ip"}
    meta.update(extra)
    return meta


def body_text(part):
    """A text part's content with the file's CRLF line ends as \\n, without
    the final line end (the template's own final newline is dropped, as
    MiniJinja does)."""
    return part.get_content().replace("\r\n", "\n").rstrip("\n")


def kumoref(data):
    fields = header_fields(split_message(data)[0])
    assert fields[0][0] == "X-KumoRef", fields[:2]
    return decode_kumoref(fields[0][1]), data[data.index(b"\r\n", 0) + 2:]


# ---- injection: string content ---------------------------------------------------------------


def test_inject_string_content_with_substitutions(k):
    content = ("From: News <news@src.example>\n"
               "To: \"{{ name }}\" <{{ email }}>\n"
               "Subject: Hello {{ name }}, {{ campaign }}\n"
               "X-E2E-Code: {{ code }}\n"
               "\n"
               "Dear {{ name }},\n"
               "your code is {{ code }} ({{ tier.level }}).\n")
    body = {
        "envelope_sender": SENDER,
        "content": content,
        "substitutions": {"campaign": "Fall", "code": "GLOBAL", "tier": {"level": "gold"}},
        "recipients": [
            {"email": "ann@string.example", "name": "Ann",
             "substitutions": {"code": "A-1"}},
            {"email": "bob@string.example", "name": "Bob",
             "substitutions": {"code": "B-2", "tier": {"level": "silver"}},
             "metadata": {"campaign_id": "c-42", "n": 7}},
        ],
    }
    t_before = time.time()
    status, res = inject(k, body)
    t_after = time.time()
    assert status == 200, res
    assert res == {"success_count": 2, "fail_count": 0, "failed_recipients": [], "errors": []}
    recs = receptions(k, ["ann@string.example", "bob@string.example"])
    files = maildir_by_recipient(k, want=["ann@string.example", "bob@string.example"])
    for rcpt, name, code, level in (("ann@string.example", "Ann", "A-1", "gold"),
                                    ("bob@string.example", "Bob", "B-2", "silver")):
        ref, rest = kumoref(files[rcpt])
        assert ref == {"_@_": "\\_/", "recipient": rcpt}
        # exactly the expanded content, CRLF line ends, MIME-Version added
        # at the end of the header block, the trailing newline kept once
        expected = (f"From: News <news@src.example>\r\n"
                    f"To: \"{name}\" <{rcpt}>\r\n"
                    f"Subject: Hello {name}, Fall\r\n"
                    f"X-E2E-Code: {code}\r\n"
                    f"MIME-Version: 1.0\r\n"
                    f"\r\n"
                    f"Dear {name},\r\n"
                    f"your code is {code} ({level}).\r\n").encode()
        assert rest == expected
        rec = recs[rcpt]
        extra = {"extra": {"campaign_id": "c-42", "n": 7}} if name == "Bob" else {}
        check_http_reception(rec, id=rec["id"], recipient=rcpt, size=len(files[rcpt]),
                             queue="string.example", meta=trusted_meta(k, **extra),
                             headers={"Subject": f"Hello {name}, Fall", "X-E2E-Code": code},
                             t_before=t_before, t_after=t_after)


def test_inject_200_means_the_messages_are_in_the_spool(k):
    before = k.local_disk_ids()
    body = {"envelope_sender": SENDER, "content": "Subject: stored\r\n\r\nx\r\n",
            "recipients": [{"email": f"s{i}@stored.hold.test"} for i in range(3)]}
    status, res = inject(k, body)
    assert status == 200 and res["success_count"] == 3
    # no waiting: the saves completed (synced) before the answer
    new = k.local_disk_ids() - before
    assert len(new) == 3
    recs = receptions(k, [f"s{i}@stored.hold.test" for i in range(3)])
    assert {r["id"] for r in recs.values()} == new


def test_inject_bare_lf_becomes_crlf(k):
    body = {"envelope_sender": SENDER, "content": "Subject: lf\n\nline1\nline2\rline3\r\n",
            "recipients": [{"email": "lf@crlf.example"}]}
    status, res = inject(k, body)
    assert status == 200 and res["success_count"] == 1
    data = maildir_by_recipient(k, want=["lf@crlf.example"])["lf@crlf.example"]
    _, rest = kumoref(data)
    assert rest == b"Subject: lf\r\nMIME-Version: 1.0\r\n\r\nline1\r\nline2\r\nline3\r\n"
    assert b"\n" not in data.replace(b"\r\n", b"")


def test_inject_trace_headers_received_and_custom_name(k):
    body = {"envelope_sender": SENDER, "content": "Subject: traced\r\n\r\nbody\r\n",
            "recipients": [{"email": "trace@trace.example"}],
            "trace_headers": {"received_header": True, "header_name": "X-E2E-Ref",
                              "include_meta_names": ["hostname"]}}
    status, res = inject(k, body)
    assert status == 200 and res["success_count"] == 1
    rec = receptions(k, ["trace@trace.example"])["trace@trace.example"]
    new = k.path("md", "new")
    data = wait_until(lambda: next((open(os.path.join(new, n), "rb").read()
                                    for n in os.listdir(new)
                                    if rec["id"].encode() in open(os.path.join(new, n), "rb").read()),
                                   None), 15, what="the traced message")
    fields = header_fields(split_message(data)[0])
    assert fields[0][0] == "X-E2E-Ref"
    assert decode_kumoref(fields[0][1]) == {"_@_": "\\_/", "recipient": "trace@trace.example",
                                            "hostname": HTTP_HOSTNAME}
    received = (f"Received: from src.example (127.0.0.1)\r\n  by {socket.gethostname()} "
                f"(KumoMTA)\r\n  with HTTP id {rec['id']} for <trace@trace.example>;\r\n  ").encode()
    i = data.index(b"Received: ")
    assert data[i:i + len(received)] == received
    date, _, tail = data[i + len(received):].partition(b"\r\n")
    assert re.fullmatch(RFC2822, date.decode()), date
    assert tail == b"Subject: traced\r\nMIME-Version: 1.0\r\n\r\nbody\r\n"
    assert rec["headers"]["Subject"] == "traced"
    assert decode_kumoref(rec["headers"]["X-E2E-Ref"].encode()) == decode_kumoref(fields[0][1])


def test_inject_without_supplemental_header_and_static_dialect(k):
    body = {"envelope_sender": SENDER, "template_dialect": "Static",
            "content": "Subject: {{ not a template }}\r\nX-E2E-Static: yes\r\n\r\n{{ name }}\r\n",
            "recipients": [{"email": "static@static.example", "name": "N"}],
            "trace_headers": {"supplemental_header": False}}
    status, res = inject(k, body)
    assert status == 200 and res["success_count"] == 1
    rec = receptions(k, ["static@static.example"])["static@static.example"]
    assert rec["headers"] == {"Subject": "{{ not a template }}", "X-E2E-Static": "yes"}
    new = k.path("md", "new")

    def find():
        for n in os.listdir(new):
            d = open(os.path.join(new, n), "rb").read()
            if b"X-E2E-Static" in d:
                return d
    data = wait_until(find, 15, what="the static message")
    assert data == (b"Subject: {{ not a template }}\r\nX-E2E-Static: yes\r\nMIME-Version: 1.0\r\n"
                    b"\r\n{{ name }}\r\n")
    assert rec["size"] == len(data)


# ---- injection: builder content ----------------------------------------------------------------


ATTACHMENT = bytes(range(256)) * 40 + b"\x00end"


def test_inject_builder_with_attachment_round_trips(k):
    body = {
        "envelope_sender": SENDER,
        "substitutions": {"campaign": "Winter"},
        "content": {
            "subject": "Report for {{ name }} – {{ campaign }} ☃",
            "from": {"email": "reports@src.example", "name": "Reports, Inc."},
            "reply_to": {"email": "help@src.example", "name": "Help Desk"},
            "headers": {"X-E2E-Tag": "{{ tag }}"},
            "text_body": "Hello {{ name }},\nyour report ({{ tag }}) is attached.\n"
                         + "A long line " + "x" * 120 + "\n",
            "html_body": "<p>Hello <b>{{ name }}</b> &amp; {{ tag }}</p><img src=\"cid:logo@e2e\">",
            "attachments": [
                {"data": base64.b64encode(ATTACHMENT).decode(), "base64": True,
                 "content_type": "application/octet-stream", "file_name": "report.bin"},
                {"data": "<svg/>", "content_type": "image/svg+xml", "content_id": "logo@e2e",
                 "file_name": "logo.svg"},
            ],
        },
        "recipients": [
            {"email": "zoe@builder.example", "name": "Zoë Ünicode", "substitutions": {"tag": "z<1>"}},
            {"email": "yan@builder.example", "substitutions": {"tag": "y2"}},
        ],
    }
    status, res = inject(k, body)
    assert status == 200, res
    assert res["success_count"] == 2
    recs = receptions(k, ["zoe@builder.example", "yan@builder.example"])
    files = maildir_by_recipient(k, want=["zoe@builder.example", "yan@builder.example"])
    for rcpt, name, tag in (("zoe@builder.example", "Zoë Ünicode", "z<1>"),
                            ("yan@builder.example", "", "y2")):
        raw = files[rcpt]
        assert b"\n" not in raw.replace(b"\r\n", b""), "bare LF in generated MIME"
        msg = email.message_from_bytes(raw, policy=email.policy.default)
        assert msg["Subject"] == f"Report for {name} – Winter ☃"
        assert msg["From"].addresses[0].display_name == "Reports, Inc."
        assert msg["From"].addresses[0].addr_spec == "reports@src.example"
        assert msg["Reply-To"].addresses[0].addr_spec == "help@src.example"
        assert msg["To"].addresses[0].addr_spec == rcpt
        assert msg["To"].addresses[0].display_name == name
        assert msg["X-E2E-Tag"] == tag
        assert msg["MIME-Version"] == "1.0"
        assert msg["Date"] is not None
        id = recs[rcpt]["id"]
        assert msg["Message-ID"] == f"<{id}@{HTTP_HOSTNAME}>"
        assert msg.get_content_type() == "multipart/mixed"
        related, attached = msg.get_payload()
        assert related.get_content_type() == "multipart/related"
        alternative, inline = related.get_payload()
        assert alternative.get_content_type() == "multipart/alternative"
        text, html = alternative.get_payload()
        assert text.get_content_type() == "text/plain"
        # the template's own final newline is dropped, as MiniJinja does
        assert body_text(text) == (f"Hello {name},\nyour report ({tag}) is "
                                                    "attached.\nA long line " + "x" * 120)
        assert html.get_content_type() == "text/html"
        escaped = tag.replace("<", "&lt;").replace(">", "&gt;")
        assert body_text(html) == (f"<p>Hello <b>{name}</b> &amp; {escaped}</p>"
                                                    "<img src=\"cid:logo@e2e\">")
        assert inline.get_content_type() == "image/svg+xml"
        assert inline["Content-ID"] == "<logo@e2e>"
        assert inline.get_content_disposition() == "inline"
        assert inline.get_payload(decode=True) == b"<svg/>"
        assert attached.get_content_type() == "application/octet-stream"
        assert attached.get_filename() == "report.bin"
        assert attached.get_content_disposition() == "attachment"
        assert attached.get_payload(decode=True) == ATTACHMENT
        logged = recs[rcpt]["headers"]
        assert set(logged) == {"Subject", "X-E2E-Tag"}
        assert str(email.header.make_header(email.header.decode_header(logged["Subject"]))) \
            == f"Report for {name} – Winter ☃"
        assert logged["X-E2E-Tag"] == tag
        assert recs[rcpt]["size"] == len(raw)


def test_inject_builder_text_only_is_a_single_part(k):
    body = {"envelope_sender": SENDER,
            "content": {"text_body": "just text", "subject": "plain"},
            "recipients": [{"email": "plain@builder2.example"}]}
    status, res = inject(k, body)
    assert status == 200 and res["success_count"] == 1
    raw = maildir_by_recipient(k, want=["plain@builder2.example"])["plain@builder2.example"]
    msg = email.message_from_bytes(raw, policy=email.policy.default)
    assert msg.get_content_type() == "text/plain"
    assert msg.get_content_charset() == "us-ascii"
    assert body_text(msg) == "just text"
    assert msg["To"] == "plain@builder2.example"


# ---- injection: per-recipient outcomes -------------------------------------------------------------


def test_inject_policy_rejection_and_bad_address_are_per_recipient(k):
    body = {"envelope_sender": SENDER, "content": "Subject: mixed\r\n\r\nx\r\n",
            "recipients": [{"email": "ok@mixed.example"},
                           {"email": "no@reject.example.com"},
                           {"email": "not an address"},
                           {"email": "blackhole@mixed.example"}]}
    status, res = inject(k, body)
    assert status == 200
    assert res == {"success_count": 2, "fail_count": 2,
                   "failed_recipients": ["no@reject.example.com", "not an address"],
                   "errors": ["no@reject.example.com: 550 not for this domain",
                              "not an address: recipient email not an address: invalid address"]}
    receptions(k, ["ok@mixed.example"])
    time.sleep(0.5)
    recipients = {r["recipient"] for r in k.records("Reception")}
    # the null queue is accepted but neither stored, logged nor delivered
    assert "blackhole@mixed.example" not in recipients
    assert "no@reject.example.com" not in recipients


# ---- authentication and authorization ------------------------------------------------------------------


def untrusted(k):
    return k.port("untrusted")


def test_untrusted_peer_without_credentials_is_refused(k):
    for method, path in (("POST", "/api/inject/v1"), ("GET", "/api/admin/bounce/v1"),
                         ("GET", "/metrics"), ("GET", "/metrics.json")):
        body = {"envelope_sender": SENDER, "content": "x", "recipients": []} \
            if method == "POST" else None
        status, headers, data = request(k, method, path, body, port=untrusted(k))
        assert status == 401, (path, data)
        assert headers["WWW-Authenticate"] == 'Basic realm="kumod"'
        assert error_of(data) == (f"<Unauthenticated> from 127.0.0.1 not permitted {method} on "
                                  f"http_listener/127.0.0.1:{untrusted(k)}{path}")
    # liveness is open to anyone
    status, _, data = request(k, "GET", "/api/check-liveness/v1", port=untrusted(k))
    assert (status, data) == (200, b"OK")


def test_basic_auth_accepted_and_refused_by_the_policy_event(k):
    body = {"envelope_sender": SENDER, "content": "Subject: authed\r\n\r\nx\r\n",
            "recipients": [{"email": "authed@auth.example"}]}
    status, res = inject(k, body, port=untrusted(k), auth=basic("daniel", "tiger"))
    assert status == 200 and res["success_count"] == 1
    rec = receptions(k, ["authed@auth.example"])["authed@auth.example"]
    assert rec["meta"]["http_auth"] == "daniel"
    assert rec["meta"]["hostname"] == "untrusted.e2e.test"
    assert rec["meta"]["gen_groups"] == ""
    status, headers, data = request(k, "POST", "/api/inject/v1", body, port=untrusted(k),
                                    auth=basic("daniel", "wrong"))
    assert status == 401
    assert error_of(data) == "HttpBasicAuth Authentication Failed for daniel"
    # an error in the event is a 500 that names nothing internal
    status, _, data = request(k, "POST", "/api/inject/v1", body, port=untrusted(k),
                              auth=basic("broken", "x"))
    assert status == 500 and error_of(data) == "try again later"
    k.wait_diag(r"the password database is down")


def test_bearer_token_with_auth_info(k):
    body = {"envelope_sender": SENDER, "content": "Subject: bearer\r\n\r\nx\r\n",
            "recipients": [{"email": "bearer@auth.example"}]}
    status, res = inject(k, body, port=untrusted(k), auth="Bearer tok-123")
    assert status == 200 and res["success_count"] == 1
    rec = receptions(k, ["bearer@auth.example"])["bearer@auth.example"]
    assert rec["meta"]["http_auth"] == "svc"
    assert rec["meta"]["gen_groups"] == "ops"
    status, _, data = request(k, "POST", "/api/inject/v1", body, port=untrusted(k),
                              auth="Bearer nope")
    assert status == 401 and error_of(data) == "BearerToken Authentication Failed for "


def test_malformed_authorization_header(k):
    for value in ("Digest abc", "Basic !!!notbase64", "Basic"):
        status, _, data = request(k, "GET", "/api/admin/bounce/v1", port=untrusted(k),
                                  auth=value)
        assert status == 400, value
        assert error_of(data) == "Malformed or unsupported Authorization header"


def test_admin_refused_for_authenticated_untrusted_user_when_the_policy_says_so(k):
    port = untrusted(k)
    # daniel is authenticated: the policy's ACL lets authenticated users in
    status, _, data = request(k, "GET", "/api/admin/bounce/v1", port=port,
                              auth=basic("daniel", "tiger"))
    assert status == 200 and isinstance(json.loads(data), list)
    # injector is authenticated too, but in a group the ACL denies
    status, headers, data = request(k, "GET", "/api/admin/bounce/v1", port=port,
                                    auth=basic("injector", "secret"))
    assert status == 403
    assert "WWW-Authenticate" not in headers
    assert error_of(data) == (f"injector from 127.0.0.1 denied GET on "
                              f"http_listener/127.0.0.1:{port}/api/admin/bounce/v1")
    # ... while it may still inject (the ACL of /api/inject is the built-in one)
    status, res = inject(k, {"envelope_sender": SENDER, "content": "Subject: i\r\n\r\nx\r\n",
                             "recipients": [{"email": "inj@auth.example"}]},
                         port=port, auth=basic("injector", "secret"))
    assert status == 200 and res["success_count"] == 1
    rec = receptions(k, ["inj@auth.example"])["inj@auth.example"]
    assert rec["meta"]["http_auth"] == "injector"
    assert rec["meta"]["gen_groups"] == "injectors"
    # metrics: authenticated users are allowed by the built-in ACL
    status, _, data = request(k, "GET", "/metrics", port=port, auth=basic("daniel", "tiger"))
    assert status == 200 and b"# TYPE" in data


def test_trusted_peer_needs_no_credentials(k):
    status, _, data = request(k, "GET", "/api/admin/suspend/v1")
    assert status == 200 and isinstance(json.loads(data), list)


# ---- bad input --------------------------------------------------------------------------------------


DESER = r"Failed to deserialize the JSON body into the target type: "

BAD_BODIES = [
    (b"{not json", 400, r"Failed to parse the request body as JSON: .* at line 1 column \d+"),
    (b"[1, 2]", 400, r"the request body must be a JSON object"),
    (b"", 400, r"Failed to parse the request body as JSON: .*"),
    # shape errors: 422 as axum's Json extractor answers (serde's message
    # behind the path of the value; kumod leaves out serde_json's position)
    (json.dumps({"recipients": [], "content": "x"}).encode(), 422,
     DESER + r"missing field `envelope_sender`"),
    (json.dumps({"envelope_sender": SENDER, "content": "x"}).encode(), 422,
     DESER + r"missing field `recipients`"),
    (json.dumps({"envelope_sender": SENDER, "recipients": []}).encode(), 422,
     DESER + r"missing field `content`"),
    (json.dumps({"envelope_sender": 42, "recipients": [], "content": "x"}).encode(), 422,
     DESER + r"envelope_sender: invalid type: integer `42`, expected a string"),
    (json.dumps({"envelope_sender": SENDER, "recipients": {"email": "a@b.c"},
                 "content": "x"}).encode(), 422,
     DESER + r"recipients: invalid type: map, expected a sequence"),
    (json.dumps({"envelope_sender": SENDER, "recipients": [{"email": 5}],
                 "content": "x"}).encode(), 422,
     DESER + r"recipients\[0\]\.email: invalid type: integer `5`, expected a string"),
    (json.dumps({"envelope_sender": SENDER, "recipients": [{"name": "x"}],
                 "content": "x"}).encode(), 422, DESER + r"recipients\[0\]: missing field `email`"),
    (json.dumps({"envelope_sender": SENDER, "recipients": [], "content": 12}).encode(), 422,
     DESER + r"content: data did not match any variant of untagged enum Content"),
    (json.dumps({"envelope_sender": SENDER, "recipients": [], "content": "x",
                 "colour": "red"}).encode(), 422,
     DESER + r"unknown field `colour`, expected one of `envelope_sender`, `recipients`, `content`, "
     r"`substitutions`, `deferred_spool`, `deferred_generation`, `trace_headers`, "
     r"`template_dialect`"),
    (json.dumps({"envelope_sender": SENDER, "recipients": [{"email": "a@b.c", "x": 1}],
                 "content": "x"}).encode(), 422,
     DESER + r"recipients\[0\]: unknown field `x`, expected one of `email`, `name`, "
     r"`substitutions`, `metadata`"),
    (json.dumps({"envelope_sender": SENDER, "recipients": [], "content": "x",
                 "template_dialect": "Mustache"}).encode(), 422,
     DESER + r"template_dialect: unknown variant `Mustache`, expected one of `Jinja`, `Static`, "
     r"`Handlebars`"),
    (json.dumps({"envelope_sender": SENDER, "recipients": [], "content": "x",
                 "deferred_spool": "yes"}).encode(), 422,
     DESER + r'deferred_spool: invalid type: string "yes", expected a boolean'),
    (json.dumps({"envelope_sender": SENDER, "recipients": [], "content": "x",
                 "substitutions": []}).encode(), 422,
     DESER + r"substitutions: invalid type: sequence, expected a map"),
    (json.dumps({"envelope_sender": SENDER, "recipients": [],
                 "content": {"text_body": "x", "attachments": [{"data": 1}]}}).encode(), 422,
     DESER + r"content: data did not match any variant of untagged enum Content"),
    (json.dumps({"envelope_sender": SENDER, "recipients": [],
                 "content": "Subject: {{ name \n\nx"}).encode(), 422,
     r"failed parsing field 'content' as template: syntax error: unexpected end of input, "
     r"expected end of variable block \(in content:1\)"),
    (json.dumps({"envelope_sender": SENDER, "recipients": [],
                 "content": {"text_body": "{% if x %}no end"}}).encode(), 422,
     r"failed parsing field 'content.text_body' as template: syntax error: unexpected end of "
     r"input, expected 'endif' \(in text_body.txt:1\)"),
    (json.dumps({"envelope_sender": SENDER, "recipients": [],
                 "content": {"text_body": "{{ x | nosuchfilter }}"}}).encode(), 422,
     r"failed parsing field 'content.text_body' as template: syntax error: unknown filter "
     r"'nosuchfilter' \(in text_body.txt:1\)"),
    (json.dumps({"envelope_sender": SENDER, "recipients": [],
                 "content": {"subject": "no body"}}).encode(), 422,
     r"at least one of text_body and/or html_body must be given"),
    (json.dumps({"envelope_sender": SENDER, "recipients": [],
                 "content": {"text_body": "x", "attachments": [
                     {"data": "***", "base64": True, "content_type": "a/b"}]}}).encode(), 422,
     r"content\.attachments\[0\]\.data: invalid base64"),
    (json.dumps({"envelope_sender": SENDER, "recipients": [],
                 "content": {"text_body": "x", "from": {"email": "nope"}}}).encode(), 422,
     r"failed parsing content\.from: invalid address 'nope'"),
]


@pytest.mark.parametrize("raw,status,pattern", BAD_BODIES)
def test_inject_bad_input(k, raw, status, pattern):
    got, _, data = request(k, "POST", "/api/inject/v1", raw=raw)
    assert got == status, data
    assert re.fullmatch(pattern, error_of(data)), error_of(data)


def test_unknown_endpoint_and_wrong_method(k):
    status, _, data = request(k, "GET", "/api/nope/v1")
    assert status == 404 and error_of(data) == "no such endpoint: /api/nope/v1"
    status, headers, data = request(k, "GET", "/api/inject/v1")
    assert status == 405 and headers["Allow"] == "POST"
    assert error_of(data) == "method GET is not allowed on /api/inject/v1 (allowed: POST)"
    status, headers, data = request(k, "PUT", "/api/admin/bounce/v1", raw=b"{}")
    assert status == 405 and headers["Allow"] == "GET, POST, DELETE"


def test_huge_body_is_413_and_the_daemon_keeps_serving(k):
    # the untrusted listener's limit is 64 KiB; the main one has the 2 MiB default
    big = json.dumps({"envelope_sender": SENDER, "recipients": [],
                      "content": "x" * (3 * 1024 * 1024)}).encode()
    # KumoMTA's answer (axum's length-limit rejection), not libevent's HTML page
    too_big = (413, "text/plain; charset=utf-8",
               b"Failed to buffer the request body: length limit exceeded")
    status, headers, data = request(k, "POST", "/api/inject/v1", raw=big)
    assert (status, headers["Content-Type"], data) == too_big
    small_big = json.dumps({"envelope_sender": SENDER, "recipients": [],
                            "content": "x" * 70000}).encode()
    status, headers, data = request(k, "POST", "/api/inject/v1", raw=small_big,
                                    port=untrusted(k), auth=basic("daniel", "tiger"))
    assert (status, headers["Content-Type"], data) == too_big
    # and a body just under the limit is fine
    ok = {"envelope_sender": SENDER, "recipients": [], "content": "Subject: s\n\n" + "y" * 60000}
    status, res = inject(k, ok, port=untrusted(k), auth=basic("daniel", "tiger"))
    assert status == 200 and res["success_count"] == 0
    status, _, data = request(k, "GET", "/api/check-liveness/v1")
    assert (status, data) == (200, b"OK")
    assert k.alive()


def test_admin_bad_input(k):
    status, _, data = request(k, "POST", "/api/admin/bounce/v1", {"domain": "x.example"})
    assert (status, data.decode()) == (422, "Failed to deserialize the JSON body into the "
                                            "target type: missing field `reason`")
    status, _, data = request(k, "DELETE", "/api/admin/bounce/v1", {})
    assert (status, data.decode()) == (422, "Failed to deserialize the JSON body into the "
                                            "target type: missing field `id`")
    status, _, data = request(k, "DELETE", "/api/admin/suspend/v1",
                              {"id": "00000000-0000-0000-0000-000000000000"})
    assert status == 404
    assert error_of(data) == "suspend entry 00000000-0000-0000-0000-000000000000 not found"
    status, _, data = request(k, "GET", "/api/admin/inspect-message/v1")
    assert status == 400 and error_of(data) == "missing query parameter `id`"
    status, _, data = request(k, "GET", "/api/admin/inspect-message/v1?id=xyz")
    assert status == 400
    status, _, data = request(k, "GET", "/api/admin/inspect-sched-q/v1?queue_name=a&limit=-3")
    assert status == 400 and error_of(data) == "limit: expected a non-negative integer, found '-3'"
    status, _, data = request(k, "POST", "/api/admin/set_diagnostic_log_filter/v1",
                              {"filter": "kumod=nonsense"})
    assert status == 400


# ---- metrics ------------------------------------------------------------------------------------------


def samples(text):
    """{(family, labels): value} and {family: type}, by prometheus_client's
    parser (which names counter samples <family>_total)."""
    from prometheus_client.parser import text_string_to_metric_families
    out = {}
    types = {}
    for fam in text_string_to_metric_families(text):
        types[fam.name] = fam.type
        for s in fam.samples:
            if fam.type == "histogram":
                assert s.name in (fam.name + "_bucket", fam.name + "_sum", fam.name + "_count")
                out[(s.name, tuple(sorted(s.labels.items())))] = s.value
                continue
            assert s.name in (fam.name, fam.name + "_total"), (fam.name, s.name)
            out[(fam.name, tuple(sorted(s.labels.items())))] = s.value
    return out, types


def test_metrics_parse_and_count_what_was_injected_and_delivered(kumod_factory):
    """A fresh daemon: 3 injected over HTTP, all delivered to a Maildir."""
    k = kumod_factory(policy=POLICY)
    body = {"envelope_sender": SENDER, "content": "Subject: m\r\n\r\nx\r\n",
            "recipients": [{"email": f"m{i}@metrics.example"} for i in range(3)]}
    status, res = inject(k, body)
    assert status == 200 and res["success_count"] == 3
    k.wait_records(type="Delivery", count=3)
    # the spool monitor samples twice a second; before that it reports nothing
    wait_until(lambda: b"disk_free_bytes{" in request(k, "GET", "/metrics")[2], 10,
               what="the spool monitor's first sample")
    status, headers, data = request(k, "GET", "/metrics")
    assert status == 200
    assert headers["Content-Type"] == "text/plain; version=0.0.4; charset=utf-8"
    text = data.decode()
    values, types = samples(text)
    assert values[("total_messages_received", (("service", "http_listener"),))] == 3
    assert values[("total_messages_received", (("service", "esmtp_listener"),))] == 0
    assert values[("total_messages_delivered", (("service", "all"),))] == 3
    assert values[("total_messages_transfail", (("service", "all"),))] == 0
    assert values[("total_messages_fail", (("service", "all"),))] == 0
    assert values[("scheduled_count_total", ())] == 0
    assert values[("dispatcher_watchdog_aborted", (("service", "all"),))] == 0
    # the spool monitor's numbers: both spools' disks, RocksDB gauges for the meta spool
    assert values[("disk_free_bytes", (("name", "data spool"),))] > 0
    assert 0 < values[("disk_free_percent", (("name", "meta spool"),))] <= 100
    rocks = {labels for (name, labels) in values if name == "rocks_spool_mem_table_total"}
    assert rocks == {(("path", k.path("spool", "meta")),)}, rocks
    assert values[("rocks_spool_load_shed_active", (("path", k.path("spool", "meta")),))] == 0
    assert types["total_messages_received"] == "counter"
    assert types["scheduled_count_total"] == "gauge"
    assert "# HELP total_messages_received total number of messages ever received" in text
    # /metrics.json carries the same numbers
    status, headers, data = request(k, "GET", "/metrics.json")
    assert status == 200 and headers["Content-Type"].startswith("application/json")
    doc = json.loads(data)
    assert doc["total_messages_received"]["type"] == "counter"
    assert doc["total_messages_received"]["value"]["service"]["http_listener"] == 3
    assert doc["total_messages_delivered"]["value"]["service"]["all"] == 3


def test_metrics_show_held_messages_per_queue(k):
    body = {"envelope_sender": SENDER, "content": "Subject: held\r\n\r\nx\r\n",
            "recipients": [{"email": f"h{i}@metrics.hold.test"} for i in range(4)]}
    status, res = inject(k, body)
    assert status == 200 and res["success_count"] == 4
    k.wait_records(lambda r: r["queue"] == "metrics.hold.test", type="TransientFailure", count=4)

    def counted():
        values, _ = samples(request(k, "GET", "/metrics")[2].decode())
        return values.get(("scheduled_count", (("queue", "metrics.hold.test"),))) == 4
    wait_until(counted, 10, what="scheduled_count for metrics.hold.test")


# ---- kcli ---------------------------------------------------------------------------------------------


def kcli(k, *args, check=True, env=None, endpoint=True):
    cmd = [kcli_bin()]
    if endpoint:
        cmd += ["--endpoint", f"http://127.0.0.1:{k.http_port}"]
    cmd += list(args)
    e = dict(os.environ)
    e.update(env or {})
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=120 * kh.SLOW, env=e)
    if check:
        assert p.returncode == 0, (args, p.returncode, p.stdout, p.stderr)
    return p


def hold(k, domain, n, prefix="u"):
    """Injects n messages for domain (held: a 400 on every attempt, retry in
    an hour) and waits until every one has failed once. Returns their ids."""
    body = {"envelope_sender": SENDER, "content": "Subject: held\r\n\r\nheld\r\n",
            "recipients": [{"email": f"{prefix}{i}@{domain}"} for i in range(n)]}
    status, res = inject(k, body)
    assert status == 200 and res["success_count"] == n, res
    recs = k.wait_records(lambda r: r["queue"] == domain, type="TransientFailure", count=n,
                          timeout=60)
    return sorted({r["id"] for r in recs})


def test_kcli_help(k):
    p = kcli(k, "--help", endpoint=False)
    assert "Usage: kcli [--endpoint URL] COMMAND [OPTIONS]" in p.stdout
    for name in ("bounce", "bounce-list", "bounce-cancel", "suspend", "suspend-list",
                 "suspend-cancel", "suspend-ready-q", "rebind", "inspect-message",
                 "inspect-sched-q", "inspect-ready-q", "queue-summary", "set-log-filter"):
        assert re.search(rf"^  {re.escape(name)} ", p.stdout, re.M), name
    p = kcli(k, "bounce", "--help", endpoint=False)
    assert p.stdout.startswith("Administratively bounce messages in matching queues\n\n"
                               "Usage: kcli bounce --reason REASON")
    p = kcli(k, "frobnicate", check=False, endpoint=False)
    assert p.returncode == 2 and "unknown command 'frobnicate'" in p.stderr


def test_kcli_unreachable_daemon_is_a_clear_error(k):
    port = kh.free_port()
    p = kcli(k, "bounce-list", check=False, endpoint=False,
             env={"KUMO_KCLI_ENDPOINT": f"http://127.0.0.1:{port}"})
    assert p.returncode == 1
    assert p.stdout == ""
    assert p.stderr.startswith(f"kcli: cannot reach kumod at http://127.0.0.1:{port}: ")
    assert len(p.stderr.strip().splitlines()) == 1


def test_kcli_uses_the_environment_endpoint(k):
    p = kcli(k, "bounce-list", "--json", endpoint=False,
             env={"KUMO_KCLI_ENDPOINT": f"http://127.0.0.1:{k.http_port}"})
    assert isinstance(json.loads(p.stdout), list)


def test_kcli_http_error_is_reported(k):
    p = kcli(k, "bounce-cancel", "--id", "00000000-0000-0000-0000-000000000000", check=False)
    assert p.returncode == 1
    assert p.stderr.strip() == ("kcli: request status 404: Not Found. Response body: "
                                "bounce entry 00000000-0000-0000-0000-000000000000 not found")


def test_kcli_bounce_500_queued_messages(k):
    ids = hold(k, "bounce.hold.test", 500)
    assert len(ids) == 500
    assert set(ids) <= k.local_disk_ids()
    p = kcli(k, "bounce", "--domain", "bounce.hold.test", "--reason", "purge test")
    bounce_id = p.stdout.strip()
    assert UUID_RX.fullmatch(bounce_id), p.stdout
    assert p.stderr.startswith("NOTE: the bounce is running async.")
    recs = k.wait_records(lambda r: r["queue"] == "bounce.hold.test", type="AdminBounce",
                          count=500, timeout=60)
    got = [r["id"] for r in recs]
    assert sorted(got) == ids, "each message gets exactly one AdminBounce"
    for r in recs:
        assert r["response"] == {"code": 551,
                                 "enhanced_code": {"class": 5, "subject": 7, "detail": 1},
                                 "content": "Administrator bounced with reason: purge test",
                                 "command": None}
    wait_until(lambda: not (set(ids) & k.local_disk_ids()), 30, what="the spool to empty")
    # the bounce is listed while active, with its count
    p = kcli(k, "bounce-list")
    lines = p.stdout.splitlines()
    assert re.fullmatch(r"ID\s+REASON\s+REMAIN\s+BOUNCED\s+CRITERIA", lines[0]), lines
    row = [line for line in lines if line.startswith(bounce_id)]
    assert len(row) == 1 and re.search(r"purge test\s+\S.*\s500\s+domain=bounce\.hold\.test$",
                                       row[0]), row
    listed = json.loads(kcli(k, "bounce-list", "--json").stdout)
    entry = [e for e in listed if e["id"] == bounce_id][0]
    assert entry["domain"] == "bounce.hold.test" and entry["total_bounced"] == 500
    # new arrivals are bounced too while the bounce is active
    body = {"envelope_sender": SENDER, "content": "Subject: late\r\n\r\nx\r\n",
            "recipients": [{"email": "late@bounce.hold.test"}]}
    status, res = inject(k, body)
    assert status == 200 and res["success_count"] == 1
    k.wait_records(lambda r: r["recipient"] == "late@bounce.hold.test", type="AdminBounce")
    p = kcli(k, "bounce-cancel", "--id", bounce_id)
    assert p.stdout.strip() == f"removed {bounce_id}"
    assert all(e["id"] != bounce_id for e in json.loads(kcli(k, "bounce-list", "--json").stdout))


def test_kcli_suspend_then_cancel(k):
    p = kcli(k, "suspend", "--domain", "susp.example.com", "--reason", "maintenance",
             "--duration", "10m")
    sid = p.stdout.strip()
    assert UUID_RX.fullmatch(sid), p.stdout
    p = kcli(k, "suspend-list")
    assert re.fullmatch(r"ID\s+REASON\s+REMAIN\s+CRITERIA", p.stdout.splitlines()[0])
    row = [line for line in p.stdout.splitlines() if line.startswith(sid)]
    assert len(row) == 1 and row[0].endswith("domain=susp.example.com"), row
    assert "maintenance" in row[0]
    body = {"envelope_sender": SENDER, "content": "Subject: susp\r\n\r\nx\r\n",
            "recipients": [{"email": "s@susp.example.com"}]}
    status, res = inject(k, body)
    assert status == 200 and res["success_count"] == 1
    tf = k.wait_records(lambda r: r["recipient"] == "s@susp.example.com",
                        type="TransientFailure")[0]
    assert "suspended" in tf["response"]["content"] and "maintenance" in tf["response"]["content"]
    assert not [r for r in k.records("Delivery") if r["recipient"] == "s@susp.example.com"]
    p = kcli(k, "suspend-cancel", "--id", sid)
    assert p.stdout.strip() == f"removed {sid}"
    assert json.loads(kcli(k, "suspend-list", "--json").stdout) == []
    k.wait_records(lambda r: r["recipient"] == "s@susp.example.com", type="Delivery",
                   timeout=30)


def test_kcli_suspend_ready_q_list_and_cancel(k):
    name = "unspecified->example.invalid@smtp_client"
    p = kcli(k, "suspend-ready-q", "--name", name, "--reason", "site trouble")
    sid = p.stdout.strip()
    assert UUID_RX.fullmatch(sid), p.stdout
    p = kcli(k, "suspend-ready-q-list")
    row = [line for line in p.stdout.splitlines() if line.startswith(sid)]
    assert len(row) == 1 and name in row[0] and "site trouble" in row[0]
    p = kcli(k, "suspend-ready-q-cancel", "--id", sid)
    assert p.stdout.strip() == f"removed {sid}"
    assert json.loads(kcli(k, "suspend-ready-q-list", "--json").stdout) == []


def test_kcli_rebind_100_messages(k):
    ids = hold(k, "rebind.hold.test", 100)
    p = kcli(k, "rebind", "--domain", "rebind.hold.test", "--reason", "move them",
             "--set", "queue=rebound.example")
    assert p.stderr.strip() == "NOTE: Rebind always runs asynchronously"
    recs = k.wait_records(lambda r: r["id"] in set(ids), type="AdminRebind", count=100,
                          timeout=60)
    assert sorted(r["id"] for r in recs) == ids
    for r in recs:
        assert r["queue"] == "rebound.example"
    delivered = k.wait_records(lambda r: r["id"] in set(ids), type="Delivery", count=100,
                               timeout=60)
    assert sorted(r["id"] for r in delivered) == ids
    assert all(r["queue"] == "rebound.example" for r in delivered)


def test_kcli_inspect_shows_due_time_and_attempts(k):
    ids = hold(k, "inspect.hold.test", 2, prefix="i")
    t0 = time.time()
    p = kcli(k, "inspect-message", ids[0])
    lines = dict(re.match(r"(\S+):\s+(.*)", line).groups() for line in p.stdout.splitlines()
                 if re.match(r"(id|sender|recipient|due|num_attempts):\s", line))
    assert lines["id"] == ids[0]
    assert lines["sender"] == SENDER
    assert lines["recipient"].endswith("@inspect.hold.test")
    assert lines["num_attempts"] == "1"
    due = lines["due"]
    m = re.fullmatch(r"(\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d)(\.\d+)?Z", due)
    assert m, due
    due_unix = calendar.timegm(time.strptime(m.group(1), "%Y-%m-%dT%H:%M:%S"))
    # the next attempt is one retry_interval (an hour) after the first
    assert 3000 < due_unix - t0 < 4000, due
    doc = json.loads(kcli(k, "inspect-message", "--json", ids[0]).stdout)
    assert doc["id"] == ids[0] and doc["message"]["num_attempts"] == 1
    p = kcli(k, "inspect-message", "--want-body", ids[0])
    assert p.stdout.rstrip().endswith("held")
    p = kcli(k, "inspect-sched-q", "inspect.hold.test")
    out = p.stdout.splitlines()
    assert out[0] == "queue: inspect.hold.test"
    assert out[1] == "scheduled: 2"
    header = [i for i, line in enumerate(out) if line.startswith("ID")][0]
    assert re.fullmatch(r"ID\s+DUE\s+ATTEMPTS\s+SENDER\s+RECIPIENT", out[header])
    rows = out[header + 1:]
    assert sorted(r.split()[0] for r in rows) == ids
    for r in rows:
        assert r.split()[2] == "1"
    doc = json.loads(kcli(k, "inspect-sched-q", "--json", "inspect.hold.test").stdout)
    assert doc["queue_name"] == "inspect.hold.test" and doc["num_scheduled"] == 2


def test_kcli_queue_summary(k):
    hold(k, "summary.hold.test", 3, prefix="q")
    p = kcli(k, "queue-summary")
    ready_part, _, sched_part = p.stdout.partition("\n\n")
    assert re.match(r"SITE\s+SOURCE\s+PROTO\s+D\s+T\s+C\s+Q", ready_part)
    lines = sched_part.splitlines()
    assert re.fullmatch(r"SCHEDULED QUEUE\s+COUNT", lines[0]), lines
    row = [line for line in lines if line.startswith("summary.hold.test ")]
    assert len(row) == 1 and re.fullmatch(r"summary\.hold\.test\s+3", row[0]), row
    doc = json.loads(kcli(k, "queue-summary", "--json").stdout)
    assert {"name": "summary.hold.test", "count": 3, "status": ""} in doc["scheduled"]
    # a suspension shows in the status column
    sid = kcli(k, "suspend", "--domain", "summary.hold.test", "--reason", "look").stdout.strip()
    p = kcli(k, "queue-summary", "--domain", "summary.hold.test")
    lines = p.stdout.partition("\n\n")[2].splitlines()
    assert lines[1:] == [l for l in lines[1:] if l.startswith("summary.hold.test")]
    assert re.fullmatch(r"summary\.hold\.test\s+3\s+suspend: look", lines[1]), lines
    kcli(k, "suspend-cancel", "--id", sid)


def test_kcli_top(k):
    hold(k, "top.hold.test", 2, prefix="t")
    p = kcli(k, "top", "--count", "2", "--interval", "0.2")
    frames = p.stdout.split(f"kumod at http://127.0.0.1:{k.http_port}  ")
    assert len(frames) == 3, p.stdout
    last = frames[2].splitlines()
    assert re.fullmatch(r"\s+TOTAL\s+PER SEC", last[2]), last
    rows = {line.split()[0]: line.split()[1:] for line in last[3:10]}
    assert set(rows) == {"received", "delivered", "transfail", "failed", "scheduled", "ready",
                         "connections"}
    assert int(rows["received"][0].replace(",", "")) >= 2
    # the second frame has rates for the counters
    assert re.fullmatch(r"-?\d+\.\d", rows["received"][1]), rows
    sched = last[last.index("", 3) + 1:]
    assert re.fullmatch(r"SCHEDULED QUEUE\s+COUNT", sched[0])
    assert any(re.fullmatch(r"top\.hold\.test\s+2", line) for line in sched), sched


def test_kcli_inspect_ready_q(k):
    name = "unspecified->no.such.queue@smtp_client"
    p = kcli(k, "inspect-ready-q", name, check=False)
    assert p.returncode == 1 and "request status 404" in p.stderr


def test_kcli_set_log_filter(k):
    p = kcli(k, "set-log-filter", "kumod=info,kumod::http_server=debug")
    assert p.stdout.strip() == "OK"
    request(k, "GET", "/api/check-liveness/v1")
    k.wait_diag(r"DEBUG kumod::http_server: peer=127\.0\.0\.1 GET /api/check-liveness/v1 -> 200")
    kcli(k, "set-log-filter", "kumod=info")
    p = kcli(k, "set-log-filter", "kumod=bogus", check=False)
    assert p.returncode == 1 and "request status 400" in p.stderr


def test_bump_config_epoch(k):
    status, _, data = request(k, "POST", "/api/admin/bump-config-epoch")
    assert (status, data) == (200, b"")
    k.wait_diag(r"config epoch bump requested")


# ---- listener and ACL parameters --------------------------------------------------------------------


BAD_PARAMS = [
    ("kumo.start_http_listener { listen = '127.0.0.1:{http_port}', colour = 'red' }",
     r"kumo\.start_http_listener: unknown field 'colour'"),
    ("kumo.start_http_listener { listen = 'nope' }",
     r"kumo\.start_http_listener: listen: 'nope' is not an IP:port address"),
    ("kumo.start_http_listener { listen = '127.0.0.1:{http_port}', trusted_hosts = { 'x/y' } }",
     r"kumo\.start_http_listener: trusted_hosts: "),
    ("kumo.start_http_listener { listen = '127.0.0.1:{http_port}', use_tls = 'yes' }",
     r"kumo\.start_http_listener: use_tls: expected a boolean"),
    ("kumo.start_http_listener { listen = '127.0.0.1:{http_port}', tls_certificate = '/x.pem' }",
     r"kumo\.start_http_listener: tls_certificate and tls_private_key must be given together"),
    ("kumo.start_http_listener { listen = '127.0.0.1:{http_port}', request_body_limit = 'lots' }",
     r"kumo\.start_http_listener: request_body_limit: expected a positive number of bytes"),
    ("kumo.aaa.make_access_control_list { { criteria = { Identity = { Frob = 1 } }, "
     "privilege = 'GET', access = 'Allow' } }",
     r"kumo\.aaa\.make_access_control_list: rule 1: unknown Identity criteria 'Frob'"),
    ("kumo.aaa.make_access_control_list { { criteria = { Identity = { Any = {} } }, "
     "privilege = 'GET', access = 'Perhaps' } }",
     r"kumo\.aaa\.make_access_control_list: rule 1: access must be 'Allow' or 'Deny'"),
]


@pytest.mark.parametrize("lua,pattern", BAD_PARAMS)
def test_bad_parameters_are_named(kumod_factory, lua, pattern):
    k = kumod_factory(start=False, policy=f"""local kumo = require 'kumo'
kumo.on('init', function()
  {lua}
end)
""")
    e = dict(os.environ)
    e.setdefault("ASAN_OPTIONS", "detect_leaks=0")
    r = subprocess.run([kh.kumod_bin(), "--policy", k.policy_path, "--validate"],
                       capture_output=True, timeout=60 * kh.SLOW, env=e,
                       stdin=subprocess.DEVNULL)
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert re.search(r"policy\.lua:3: " + pattern, err), err


def test_validate_opens_no_http_listener(kumod_factory):
    k = kumod_factory(start=False, policy=POLICY)
    e = dict(os.environ)
    e.setdefault("ASAN_OPTIONS", "detect_leaks=0")
    r = subprocess.run([kh.kumod_bin(), "--policy", k.policy_path, "--validate"],
                       capture_output=True, timeout=60 * kh.SLOW, env=e,
                       stdin=subprocess.DEVNULL)
    assert r.returncode == 0, r.stderr.decode()
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", k.http_port)) != 0
