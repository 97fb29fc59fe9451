"""Issue 23, explain: GET /api/admin/explain/v1 and `kcli explain` tell one
message's story from kumod's logs and live queues; and issue 15's
inspect-message shows the last failure's response (read from the logs:
the queued record stays 96 bytes and no spool write is added per
failure). A real kumod delivers to an aiosmtpd peer that defers chosen
recipients."""
import json
import os
import smtplib
import subprocess
import urllib.error
import urllib.request

import pytest

import kumod_harness as kh
from kumod_harness import parse_ids, wait_until
from smtpdeliv_peers import SmtpPeer

PEER_HOST = "127.0.0.72"
TWICE = "twice.example"  # deferred twice, then accepted
SLOW = "slow.example"    # always deferred


@pytest.fixture(scope="module")
def peer():
    p = SmtpPeer(host=PEER_HOST)
    seen = {}

    def rcpt(addr):
        if addr.endswith("@" + SLOW):
            return "451 4.3.0 greylisted, come back later (e2e)"
        if addr.endswith("@" + TWICE):
            n = seen.get(addr, 0) + 1
            seen[addr] = n
            if n <= 2:
                return f"451 4.7.1 deferral number {n} (e2e)"
        return None
    p.rcpt_reply = rcpt
    p.start()
    yield p
    p.stop()


def policy_for(peer):
    return f"""
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    protocol = {{ smtp = {{ mx_list = {{ '[{PEER_HOST}]' }} }} }},
    retry_interval = domain == '{TWICE}' and '1s' or '1h',
    max_retry_interval = domain == '{TWICE}' and '2s' or '2h',
  }}
end)
kumo.on('get_egress_path_config', function(domain, source, site)
  return kumo.make_egress_path {{ smtp_port = {peer.port}, enable_tls = 'Disabled',
                                 prohibited_hosts = {{}} }}
end)
"""


INIT = "kumo.start_http_listener { listen = '127.0.0.1:{http_port}' }"


@pytest.fixture(scope="module")
def k(module_kumod_factory, peer):
    return module_kumod_factory(handlers=policy_for(peer), init=INIT)


def inject(k, rcpt):
    with smtplib.SMTP("127.0.0.1", k.smtp_port, timeout=10) as s:
        s.ehlo("explain.e2e.test")
        s.mail("sender@src.example")
        s.rcpt(rcpt)
        code, text = s.data(b"Subject: explain e2e\r\n\r\nbody\r\n")
    assert code == 250, text
    return parse_ids(text.decode())[0]


def get(k, path):
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{k.http_port}{path}", timeout=30) as r:
            return r.status, r.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.read().decode()


def explain(k, mid):
    st, body = get(k, f"/api/admin/explain/v1?id={mid}")
    assert st == 200, body
    return json.loads(body)


def kcli(k, *args):
    kc = os.environ.get("KCLI_BIN") or os.path.join(os.path.dirname(kh.kumod_bin()), "kcli")
    return subprocess.run([kc, "--endpoint", f"http://127.0.0.1:{k.http_port}"] + list(args),
                          capture_output=True, text=True, timeout=60)


def test_deferred_twice_then_delivered(k):
    mid = inject(k, f"user@{TWICE}")
    wait_until(lambda: any(r["id"] == mid for r in k.records("Delivery")), timeout=30,
               what="the delivery after two deferrals")
    ex = explain(k, mid)
    kinds = [e["kind"] for e in ex["events"]]
    assert kinds == ["Reception", "TransientFailure", "Wait", "TransientFailure", "Wait",
                     "Delivery"], kinds
    ev = ex["events"]
    assert ev[0]["queue"] == TWICE and "127.0.0.1" in ev[0]["peer"]
    assert "ESMTP" in ev[0]["summary"]
    assert ev[1]["response"] == "451 4.7.1 deferral number 1 (e2e)"
    assert ev[1]["attempt"] == 1 and "->" in ev[1]["ready_queue"]
    assert PEER_HOST in ev[1]["peer"]
    assert ev[3]["response"] == "451 4.7.1 deferral number 2 (e2e)"
    assert ev[3]["attempt"] == 2
    for w in (ev[2], ev[4]):
        assert w["cause"] == "retry backoff" and w["duration_s"] >= 0
    assert ev[5]["response"].startswith("250") and ev[5]["attempt"] == 3
    times = [e["time"] for e in ev]
    assert times == sorted(times)
    assert ex["outcome"].startswith("Delivery: 250")
    assert "live" not in ex
    # kcli lays out the same story
    p = kcli(k, "explain", mid)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    order = [out.index("Reception"), out.index("deferral number 1"), out.index("waited"),
             out.index("deferral number 2"), out.index("Delivery")]
    assert order == sorted(order), out
    assert "outcome: Delivery: 250" in out


def test_still_queued_shows_due_time_and_reason(k):
    mid = inject(k, f"user@{SLOW}")
    wait_until(lambda: any(r["id"] == mid for r in k.records("TransientFailure")), timeout=20,
               what="the first deferral")
    ex = explain(k, mid)
    kinds = [e["kind"] for e in ex["events"]]
    assert kinds == ["Reception", "TransientFailure", "Wait", "Current"], kinds
    cur = ex["events"][-1]
    assert cur["queue"] == SLOW and cur["due"]
    assert "retry after transient failure number 1" in cur["reason"]
    assert "retry_interval 1h" in cur["reason"]
    assert "next attempt due in" in cur["summary"]
    assert ex["live"]["state"] == "scheduled" and ex["live"]["num_attempts"] == 1
    assert ex["message"]["recipient"] == f"user@{SLOW}"
    assert ex["outcome"].startswith("still queued")
    # inspect-message shows the last failure's response and the due time
    st, body = get(k, f"/api/admin/inspect-message/v1?id={mid}")
    assert st == 200, body
    msg = json.loads(body)["message"]
    assert msg["last_failure"]["response"] == "451 4.3.0 greylisted, come back later (e2e)"
    assert msg["last_failure"]["attempt"] == 1  # its num_attempts counts those before: 0
    assert msg["last_failure"]["num_attempts"] == 0
    assert msg["due"]
    p = kcli(k, "inspect-message", mid)
    assert p.returncode == 0, p.stderr
    assert "last_failure: 451 4.3.0 greylisted, come back later (e2e)" in p.stdout
    assert "due:" in p.stdout and "now" not in p.stdout.split("due:")[1].split("\n")[0]
    p = kcli(k, "explain", mid)
    assert "due:" in p.stdout and "why" not in p.stderr


def test_a_suspension_is_named_in_the_story(k):
    st, body = get(k, "/api/check-liveness/v1")
    req = urllib.request.Request(f"http://127.0.0.1:{k.http_port}/api/admin/suspend/v1",
                                 data=json.dumps({"domain": "held.example", "reason": "maintenance",
                                                  "duration": "1h"}).encode(),
                                 headers={"Content-Type": "application/json"}, method="POST")
    with urllib.request.urlopen(req, timeout=10) as r:
        sid = json.loads(r.read())["id"]
    try:
        mid = inject(k, "user@held.example")
        wait_until(lambda: any(r["id"] == mid for r in k.records("TransientFailure")),
                   timeout=20, what="the suspension's transient failure")
        ex = explain(k, mid)
        waits = [e for e in ex["events"] if e["kind"] == "Wait"]
        assert waits and waits[0]["cause"] == "suspension"
        cur = ex["events"][-1]
        assert cur["kind"] == "Current" and "suspended" in cur["reason"]
    finally:
        req = urllib.request.Request(f"http://127.0.0.1:{k.http_port}/api/admin/suspend/v1",
                                     data=json.dumps({"id": sid}).encode(),
                                     headers={"Content-Type": "application/json"},
                                     method="DELETE")
        urllib.request.urlopen(req, timeout=10).read()


def test_unknown_and_bad_ids(k):
    st, body = get(k, "/api/admin/explain/v1?id=" + "0" * 32)
    assert st == 404
    assert "no message with id 00000000000000000000000000000000" in body
    assert "in no queue and no local log record" in body
    for bad in ("xyz", "0" * 31, "g" * 32, "%00" * 11):
        st, body = get(k, "/api/admin/explain/v1?id=" + bad)
        assert st == 400, (bad, body)
        assert "32 hex digits" in body
    st, body = get(k, "/api/admin/explain/v1")
    assert st == 400 and "missing query parameter `id`" in body
    p = kcli(k, "explain", "0" * 32)
    assert p.returncode == 1 and "404" in p.stderr and "no message with id" in p.stderr
