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
    assert "in no queue, no local log record" in body
    assert "no policy trace is kept for it" in body
    for bad in ("xyz", "0" * 31, "g" * 32, "%00" * 11):
        st, body = get(k, "/api/admin/explain/v1?id=" + bad)
        assert st == 400, (bad, body)
        assert "32 hex digits" in body
    st, body = get(k, "/api/admin/explain/v1")
    assert st == 400 and "missing query parameter `id`" in body
    p = kcli(k, "explain", "0" * 32)
    assert p.returncode == 1 and "404" in p.stderr and "no message with id" in p.stderr


# ---- policy traces of sampled messages (kumo.configure_explain_sampling) ----

OK_DOMAIN = "ok.example"

TRACED = """
kumo.configure_explain_sampling { rate = 1.0, max_traces = 4 }
kumo.on('smtp_server_message_received', function(msg)
  msg:set_meta('tenant', 'acme') -- L:tenant
  msg:append_header('X-Explained', 'yes') -- L:header
  if msg:recipient().user == 'renamed' then
    msg:set_recipient('moved@' .. msg:recipient().domain) -- L:rcpt
  end
  msg:set_meta('e2e_tag', { n = 1 }) -- L:tag
end)
"""


@pytest.fixture(scope="module")
def kt(module_kumod_factory, peer):
    return module_kumod_factory(handlers=policy_for(peer) + TRACED, init=INIT, name="traced")


def line_of(k, marker):
    with open(k.policy_path) as f:
        for n, line in enumerate(f, 1):
            if marker in line:
                return n
    raise AssertionError(marker)


def handler_line(k, event):
    return line_of(k, f"kumo.on('{event}'")


def test_sampled_message_shows_policy_steps_in_order(kt):
    mid = inject(kt, f"renamed@{OK_DOMAIN}")
    wait_until(lambda: any(r["id"] == mid for r in kt.records("Delivery")), timeout=30,
               what="the delivery")
    ex = explain(kt, mid)
    assert ex["trace"]["sampled"] is True and ex["trace"]["dropped"] == 0
    pol = [e for e in ex["events"] if e["kind"] == "Policy"]
    got = [(e["step"], e.get("where", "").rsplit("/", 1)[-1], e["detail"]) for e in pol]
    want = [
        ("handler", f"policy.lua:{handler_line(kt, 'smtp_server_message_received')}",
         "smtp_server_message_received"),
        ("set_meta", f"policy.lua:{line_of(kt, 'L:tenant')}", "meta tenant = \"acme\""),
        ("append_header", f"policy.lua:{line_of(kt, 'L:header')}", "X-Explained: yes"),
        ("set_recipient", f"policy.lua:{line_of(kt, 'L:rcpt')}",
         f"recipient = moved@{OK_DOMAIN}"),
        ("set_meta", f"policy.lua:{line_of(kt, 'L:tag')}", "meta e2e_tag = {\"n\":1}"),
        ("queue", "", f"into scheduled queue acme@{OK_DOMAIN} (Received)"),
    ]
    assert got == want, got
    # merged with the story by time: the handler ran before the Reception
    # record was written, the queue insert right after it, the delivery last
    kinds = [e["kind"] for e in ex["events"]]
    assert kinds == ["Policy"] * 5 + ["Reception", "Policy", "Delivery"], kinds
    ns = [e["time_ns"] for e in pol]
    assert ns == sorted(ns)
    assert pol[0]["summary"] == "handler for smtp_server_message_received entered"
    # kcli shows the steps with their file:line, in the same order
    p = kcli(kt, "explain", mid)
    assert p.returncode == 0, p.stderr
    out = p.stdout
    order = [out.index("handler for smtp_server_message_received"),
             out.index("meta tenant"), out.index("X-Explained: yes"),
             out.index("Reception"), out.index("into scheduled queue"), out.index("Delivery")]
    assert order == sorted(order), out
    assert f"policy.lua:{line_of(kt, 'L:tenant')}" in out


def test_unsampled_message_has_no_trace(k):
    mid = inject(k, f"user@{OK_DOMAIN}")
    wait_until(lambda: any(r["id"] == mid for r in k.records("Delivery")), timeout=30,
               what="the delivery")
    ex = explain(k, mid)
    assert ex["trace"] == {"sampled": False}
    assert [e["kind"] for e in ex["events"]] == ["Reception", "Delivery"]


def test_max_traces_evicts_the_oldest(kt):
    ids = [inject(kt, f"user{i}@{OK_DOMAIN}") for i in range(6)]
    wait_until(lambda: {r["id"] for r in kt.records("Delivery")} >= set(ids), timeout=30,
               what="the deliveries")
    # max_traces = 4: the first two lost their traces, the story stays
    for mid in ids[:2]:
        ex = explain(kt, mid)
        assert ex["trace"] == {"sampled": False}, mid
        assert [e["kind"] for e in ex["events"]] == ["Reception", "Delivery"]
    for mid in ids[2:]:
        ex = explain(kt, mid)
        assert ex["trace"]["sampled"] is True, mid
        assert ex["events"][0]["kind"] == "Policy"


def test_unknown_id_with_sampling_is_404(kt):
    st, body = get(kt, "/api/admin/explain/v1?id=" + "f" * 32)
    assert st == 404
    assert "no message with id ffffffffffffffffffffffffffffffff" in body
    assert "no policy trace is kept for it" in body


def test_bad_sampling_configuration_is_a_clear_error(tmp_path):
    for bad, err in (("{ rate = 2 }", "rate must be from 0 to 1"),
                     ("{ rate = 'x' }", "rate must be a number"),
                     ("{ max_traces = 0 }", "max_traces must be an integer"),
                     ("{ sample = 1 }", "unknown field 'sample'"),
                     ("(0.5)", "expects a table")):
        script = tmp_path / "s.lua"
        script.write_text(f"local kumo = require 'kumo'\nkumo.configure_explain_sampling {bad}\n")
        p = subprocess.run([kh.kumod_bin(), "--script", str(script)], capture_output=True,
                           text=True, timeout=30)
        assert p.returncode == 1 and err in p.stderr, (bad, p.stderr)
