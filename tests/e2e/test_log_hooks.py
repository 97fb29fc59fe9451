"""Log hooks and webhooks (docs/userguide/operation/webhooks.md,
reference/kumo/configure_log_hook.md, events/should_enqueue_log_record.md):
policy-extras.log_hooks:new_json queues every log record as a message of
its own queue, delivered by a custom_lua protocol that POSTs it with
kumo.http to a local HTTP server.

- Reception, Delivery, TransientFailure and Bounce records arrive, one
  request per record, with the hook's headers and meta; the hook's own
  deliveries are never hooked again.
- The endpoint answers 500 for a while: the records wait in the hook's
  queue and arrive once it recovers.
- kill -9 in the middle of the stream: after a restart every record
  arrives (duplicates are possible for requests in flight at the kill, and
  are counted)."""
import json
import os
import smtplib
import time
import urllib.request
from email.message import EmailMessage

import http_peer
import kumod_harness as kh

LUA_PATH = os.path.join(kh.REPO, "share", "lua", "?.lua")

HANDLERS = """
local log_hooks = require 'policy-extras.log_hooks'
log_hooks:new_json {
  name = 'webhook',
  url = '%(url)s/log',
  log_parameters = { headers = { 'Subject' }, meta = { 'e2e_tag' } },
  queue_config = { retry_interval = '1s', max_retry_interval = '2s' },
}

-- the mail itself: delivered, bounced or deferred by the recipient's name
kumo.on('make.sink', function(domain, tenant, campaign)
  local connection = {}
  function connection:send(message)
    local rcpt = tostring(message:recipient())
    if rcpt:find '^bounce@' then
      kumo.reject(550, '5.1.1 no such user')
    elseif rcpt:find '^later@' then
      kumo.reject(451, '4.3.0 try again later')
    end
    return 'accepted'
  end
  return connection
end)
kumo.on('smtp_server_message_received', function(msg)
  msg:set_meta('e2e_tag', 'tagged')
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    retry_interval = '1 hour',
    protocol = { custom_lua = { constructor = 'make.sink' } },
  }
end)
"""


HTTP_LISTENER = """
  kumo.start_http_listener { listen = '127.0.0.1:{http_port}', trusted_hosts = { '127.0.0.1' } }
"""


def start(kumod_factory, peer, init=""):
    return kumod_factory(handlers=HANDLERS % {"url": peer.url}, init=init,
                         env={"KUMOD_LUA_PATH": LUA_PATH})


def send(k, rcpts, subject="hello"):
    with smtplib.SMTP("127.0.0.1", k.smtp_port, timeout=30) as s:
        for rcpt in rcpts:
            m = EmailMessage()
            m["From"] = "sender@origin.test"
            m["To"] = rcpt
            m["Subject"] = subject
            m.set_content("body\n")
            s.send_message(m, from_addr="sender@origin.test", to_addrs=[rcpt])


def key(r):
    return (r["type"], r["id"])


def inject(k, subject, rcpts):
    """One /api/inject/v1 request; its success_count."""
    body = json.dumps({
        "envelope_sender": "sender@origin.test",
        "content": f"Subject: {subject}\r\nFrom: sender@origin.test\r\n\r\nbody\r\n",
        "recipients": [{"email": r} for r in rcpts],
    }).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{k.http_port}/api/inject/v1", data=body,
                                 method="POST", headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as r:
        return json.loads(r.read())["success_count"]


def test_records_arrive_one_request_per_record(kumod_factory):
    peer = http_peer.Peer()
    try:
        k = start(kumod_factory, peer)
        send(k, ["ok@sink.test", "bounce@sink.test", "later@sink.test"], subject="Webhook me")
        want = {"Reception": 3, "Delivery": 1, "Bounce": 1, "TransientFailure": 1}

        def complete(recs):
            got = {}
            for r in recs:
                got[r["type"]] = got.get(r["type"], 0) + 1
            return all(got.get(t, 0) >= n for t, n in want.items())

        recs = peer.wait_records(complete, timeout=30)
        time.sleep(1.0)  # nothing more may come: no record of a record
        recs = peer.log_records()
        types = sorted(r["type"] for r in recs)
        assert types == sorted(t for t, n in want.items() for _ in range(n)), types
        # one POST per record, JSON, nothing failed
        posts = [r for r in peer.requests if r[1] == "/log"]
        assert len(posts) == len(recs)
        assert all(r[0] == "POST" and r[2].get("Content-Type") == "application/json"
                   for r in posts)
        # the body is the record as the local logs have it (with the hook's
        # own meta and headers selection)
        local = {key(r): r for r in k.records()}
        for r in recs:
            assert r.get("reception_protocol") != "LogRecord"
            assert r["headers"] == {"Subject": "Webhook me"}, r
            assert r["meta"] == {"e2e_tag": "tagged"}, r
            lr = local[key(r)]
            for f in ("sender", "recipient", "queue", "response", "timestamp", "num_attempts"):
                assert r[f] == lr[f], (f, r, lr)
        bounce = next(r for r in recs if r["type"] == "Bounce")
        assert bounce["recipient"] == "bounce@sink.test"
        assert bounce["response"]["code"] == 550
        # the hook's own messages were delivered (logged locally) but not hooked
        hooked = [r for r in k.records() if r.get("reception_protocol") == "LogRecord"]
        assert {r["type"] for r in hooked} == {"Delivery"}, hooked
        assert all(r["queue"] == "webhook.log_hook" for r in hooked)
        assert len(hooked) == len(recs)
    finally:
        peer.close()


def test_failing_endpoint_records_wait_then_arrive(kumod_factory):
    peer = http_peer.Peer()
    peer.fail_status = 500
    try:
        k = start(kumod_factory, peer)
        send(k, [f"ok{i}@sink.test" for i in range(3)])
        # the endpoint refuses: the records are retried, not lost
        kh.wait_until(lambda: len([r for r in peer.requests if r[1] == "/log"]) >= 12,
                      timeout=30, what="retries against the failing endpoint")
        assert peer.log_records() == []
        tf = [r for r in k.records() if r.get("reception_protocol") == "LogRecord"
              and r["type"] == "TransientFailure"]
        assert tf and tf[0]["response"]["code"] == 400
        assert "500 Internal Server Error" in tf[0]["response"]["content"], tf[0]
        peer.fail_status = None
        recs = peer.wait_records(lambda rs: len(rs) >= 6, timeout=30)
        time.sleep(1.0)
        recs = peer.log_records()
        assert sorted(key(r) for r in recs) == sorted(
            key(r) for r in k.records() if r.get("reception_protocol") != "LogRecord"
            and r["type"] in ("Reception", "Delivery"))
        assert len(recs) == 6
    finally:
        peer.close()


def test_kill9_mid_stream_loses_no_record(kumod_factory):
    peer = http_peer.Peer()
    peer.delay = 0.1  # each POST takes a while: the stream is still flowing at the kill
    n = 20
    try:
        k = start(kumod_factory, peer)
        send(k, [f"ok{i}@sink.test" for i in range(n)])
        # every original is delivered (its Delivery record hooked and spooled)
        kh.wait_until(lambda: len([r for r in k.records() if r["type"] == "Delivery" and
                                   r.get("reception_protocol") != "LogRecord"]) == n,
                      timeout=30, what="the deliveries")
        expected = {key(r) for r in k.records() if r.get("reception_protocol") != "LogRecord"}
        assert len(expected) == 2 * n
        kh.wait_until(lambda: len(peer.log_records()) >= 3, timeout=30, what="some records")
        before = len(peer.log_records())
        assert before < 2 * n, "the stream must still be flowing at the kill"
        k.kill9()
        time.sleep(0.5)  # requests the server was still working on land now
        received_before_restart = {key(r) for r in peer.log_records()}
        peer.delay = 0
        k.start()
        recs = peer.wait_records(lambda rs: expected <= {key(r) for r in rs}, timeout=60,
                                 what="every record after the restart")
        time.sleep(1.0)
        recs = peer.log_records()
        dups = len(recs) - len({key(r) for r in recs})
        print(f"kill -9 after {before} of {2 * n} records: {len(recs)} received, "
              f"{dups} duplicates")
        assert {key(r) for r in recs} == expected
        # a record comes twice only when its first copy arrived before the
        # restart (in flight at the kill, or delivered but its removal not
        # yet on disk); never is one lost
        seen = set()
        for r in recs:
            if key(r) in seen:
                assert key(r) in received_before_restart, r
            seen.add(key(r))
    finally:
        peer.close()


def test_kill9_right_after_250_keeps_every_reception_record(kumod_factory):
    """The 250 to DATA waits until the Reception record's hook message is in
    the spool: a kill -9 the moment the client has its 250 loses no record
    of a message kumod acknowledged."""
    peer = http_peer.Peer()
    peer.fail_status = 500  # nothing leaves before the kill: the records are only spooled
    try:
        k = start(kumod_factory, peer)
        ids = []
        with smtplib.SMTP("127.0.0.1", k.smtp_port, timeout=30) as s:
            s.ehlo("client.test")
            for i in range(40):
                assert s.mail("sender@origin.test")[0] == 250
                assert s.rcpt(f"ok{i}@sink.test")[0] == 250
                code, text = s.data(f"Subject: n{i}\r\n\r\nbody\r\n".encode())
                assert code == 250, text
                ids.append(text.decode().split("ids=")[1].strip())
            k.kill9()  # at once: no QUIT, no grace
        peer.fail_status = None
        k.start()
        want = {("Reception", i) for i in ids}
        peer.wait_records(lambda rs: want <= {key(r) for r in rs}, timeout=60,
                          what="the Reception record of every acknowledged message")
    finally:
        peer.close()


def test_kill9_right_after_inject_200_keeps_every_reception_record(kumod_factory):
    """The same for HTTP injection: the 200 waits for the hook messages."""
    peer = http_peer.Peer()
    peer.fail_status = 500
    try:
        k = start(kumod_factory, peer, init=HTTP_LISTENER)
        n = 20
        for i in range(n):
            assert inject(k, f"inj{i}", [f"ok{i}@sink.test"]) == 1
        k.kill9()
        peer.fail_status = None
        k.start()
        want = {f"inj{i}" for i in range(n)}
        peer.wait_records(
            lambda rs: want <= {r["headers"].get("Subject") for r in rs
                                if r["type"] == "Reception"},
            timeout=60, what="the Reception record of every injected message")
    finally:
        peer.close()


def test_injected_reception_record_same_in_hook_and_local_log(kumod_factory):
    """HTTP injection hands the hook its Reception record ahead of the
    save (one group commit for both), the local log after it: the two are
    the same record."""
    peer = http_peer.Peer()
    try:
        k = start(kumod_factory, peer, init=HTTP_LISTENER)
        assert inject(k, "same", [f"ok{i}@sink.test" for i in range(3)]) == 3
        rs = peer.wait_records(
            lambda rs: len([r for r in rs if r["type"] == "Reception"]) == 3, timeout=30,
            what="three Reception records")
        hooked = {r["id"]: r for r in rs if r["type"] == "Reception"}
        local = kh.wait_until(
            lambda: (lambda got: got if set(hooked) <= set(got) else None)(
                {r["id"]: r for r in k.records("Reception")}),
            timeout=30, what="the local Reception records")
        for mid, r in hooked.items():
            l = local[mid]
            for field in ("timestamp", "created", "recipient", "sender", "queue", "size",
                          "peer_address", "reception_protocol"):
                assert r.get(field) == l.get(field), (field, r, l)
            assert r["reception_protocol"] == "HTTP"
    finally:
        peer.close()
