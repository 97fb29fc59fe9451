"""Issue 21: the admin API and HTTP injection as KumoMTA's clients use them.

Every request body here is what KumoMTA's kcli sends: its request structs
(crates/kumo-api-types/src/lib.rs, rebind.rs) serialized by serde, so an
unset Option is `null`, an unset bool is `false`, an empty Vec and an unset
duration are left out. Each answer is checked against the shape documented
in docs/reference/http/kumod/ (and docs/ADMIN-API.md, whose examples are
checked here too). Injection: gzip and deflate bodies (Python's gzip and
zlib), 415 for other encodings, 413 on the decoded size, 422 template
errors, and the deferred_generation answer."""
import gzip
import json
import re
import time
import urllib.error
import urllib.request
import zlib

import pytest

import kumod_harness as kh
from records import UUID_RX

SENDER = "sender@src.example"
RFC3339 = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?Z")

POLICY = """
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool { name = 'data', path = '{spool}/data', kind = 'LocalDisk' }
  kumo.define_spool { name = 'meta', path = '{spool}/meta', kind = 'RocksDB' }
  kumo.configure_local_logs { log_dir = '{logs}' }
  kumo.start_esmtp_listener { listen = '127.0.0.1:{smtp_port}', hostname = '{hostname}' }
  kumo.dns.configure_resolver { name_servers = { '{dns}' } }
  kumo.start_http_listener { listen = '127.0.0.1:{http_port}', request_body_limit = 65536 }
end)

kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  if domain:match('%.hold%.test$') then
    return kumo.make_queue_config {
      retry_interval = '1h',
      protocol = { custom_lua = { constructor = 'make.hold' } },
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
"""


@pytest.fixture(scope="module")
def k(module_kumod_factory):
    return module_kumod_factory(policy=POLICY, name="admincompat")


def request(k, method, path, body=None, raw=None, headers=None):
    url = f"http://127.0.0.1:{k.http_port}{path}"
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    for name, value in (headers or {}).items():
        req.add_header(name, value)
    try:
        with urllib.request.urlopen(req, timeout=60 * kh.SLOW) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def ok_json(k, method, path, body=None):
    status, headers, data = request(k, method, path, body)
    assert status == 200, (status, data)
    assert headers["Content-Type"] == "application/json"
    return json.loads(data)


# What KumoMTA's kcli sends (serde of its request structs, nothing set but
# the options given on the command line).
def kumo_bounce(reason, domain=None, campaign=None, tenant=None, routing_domain=None,
                duration=None, suppress_logging=False, queue_names=()):
    b = {"campaign": campaign, "tenant": tenant, "domain": domain,
         "routing_domain": routing_domain, "reason": reason,
         "suppress_logging": suppress_logging}
    if duration is not None:
        b["duration"] = duration
    if queue_names:
        b["queue_names"] = list(queue_names)
    return b


def kumo_suspend(reason, domain=None, campaign=None, tenant=None, duration=None):
    b = {"campaign": campaign, "tenant": tenant, "domain": domain, "reason": reason}
    if duration is not None:
        b["duration"] = duration
    return b


def kumo_rebind(reason, data, domain=None):
    return {"campaign": None, "tenant": None, "domain": domain, "routing_domain": None,
            "reason": reason, "suppress_logging": False, "data": data,
            "trigger_rebind_event": False, "always_flush": False}


def hold(k, domain, n):
    body = {"envelope_sender": SENDER, "content": "Subject: held\r\n\r\nheld\r\n",
            "recipients": [{"email": f"u{i}@{domain}"} for i in range(n)]}
    res = ok_json(k, "POST", "/api/inject/v1", body)
    assert res["success_count"] == n, res
    recs = k.wait_records(lambda r: r["queue"] == domain, type="TransientFailure", count=n,
                          timeout=60)
    return sorted({r["id"] for r in recs})


def test_bounce_with_nulls_as_kumomta_kcli_sends(k):
    ids = hold(k, "bounce.hold.test", 2)
    res = ok_json(k, "POST", "/api/admin/bounce/v1",
                  kumo_bounce("compat bounce", domain="bounce.hold.test"))
    assert set(res) == {"id", "bounced", "total_bounced"}
    assert re.fullmatch(UUID_RX, res["id"])
    recs = k.wait_records(lambda r: r["id"] in set(ids), type="AdminBounce", count=2)
    assert {r["response"]["content"] for r in recs} == {
        "Administrator bounced with reason: compat bounce"}
    listed = ok_json(k, "GET", "/api/admin/bounce/v1")
    entry = [e for e in listed if e["id"] == res["id"]][0]
    # BounceV1ListEntry
    assert set(entry) == {"id", "campaign", "tenant", "domain", "routing_domain", "reason",
                          "duration", "bounced", "total_bounced"}
    assert entry["domain"] == "bounce.hold.test" and entry["campaign"] is None
    assert entry["tenant"] is None and entry["routing_domain"] is None
    assert entry["bounced"] == {"bounce.hold.test": 2} and entry["total_bounced"] == 2
    assert re.fullmatch(r"4m \d+s.*", entry["duration"]), entry["duration"]
    # bounce-cancel: BounceV1CancelRequest, plain-text answers
    status, _, data = request(k, "DELETE", "/api/admin/bounce/v1", {"id": res["id"]})
    assert (status, data.decode()) == (200, f"removed {res['id']}")
    status, _, data = request(k, "DELETE", "/api/admin/bounce/v1", {"id": res["id"]})
    assert (status, data.decode()) == (404, f"bounce entry {res['id']} not found")


def test_bounce_refuses_unknown_fields_and_wrong_types(k):
    b = kumo_bounce("x", domain="nothing.example")
    b["frobnicate"] = 1
    status, _, data = request(k, "POST", "/api/admin/bounce/v1", b)
    assert status == 422
    assert data.decode().startswith("Failed to deserialize the JSON body into the target type: "
                                    "unknown field `frobnicate`, expected one of `campaign`")
    status, _, data = request(k, "POST", "/api/admin/bounce/v1",
                              kumo_bounce("x", domain=5))
    assert (status, data.decode()) == (422, "Failed to deserialize the JSON body into the target "
                                            "type: domain: invalid type: integer `5`, expected a "
                                            "string")
    status, _, data = request(k, "POST", "/api/admin/bounce/v1",
                              {"domain": "x.example", "reason": None})
    assert status == 422 and "reason: invalid type: null, expected a string" in data.decode()


@pytest.mark.parametrize("duration", ["1h", "1h 30m", 3600, 90.5])
def test_suspend_durations_and_list_shape(k, duration):
    res = ok_json(k, "POST", "/api/admin/suspend/v1",
                  kumo_suspend("compat", domain="susp.example", duration=duration))
    assert set(res) == {"id"}
    listed = ok_json(k, "GET", "/api/admin/suspend/v1")
    entry = [e for e in listed if e["id"] == res["id"]][0]
    # SuspendV1ListEntry
    assert set(entry) == {"id", "campaign", "tenant", "domain", "reason", "duration"}
    assert (entry["domain"], entry["campaign"], entry["tenant"]) == ("susp.example", None, None)
    status, _, data = request(k, "DELETE", "/api/admin/suspend/v1",
                              {"id": res["id"].upper()})
    assert (status, data.decode()) == (200, f"removed {res['id']}")


def test_suspend_ignores_unknown_fields_and_takes_expires(k):
    # SuspendV1Request has no deny_unknown_fields; expires is RFC 3339
    until = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(time.time() + 7200))
    res = ok_json(k, "POST", "/api/admin/suspend/v1",
                  {"domain": "exp.example", "reason": "r", "expires": until + ".5+00:00",
                   "future_field": True})
    entry = [e for e in ok_json(k, "GET", "/api/admin/suspend/v1") if e["id"] == res["id"]][0]
    assert re.fullmatch(r"(1h 59m|2h)( .*)?", entry["duration"]), entry
    request(k, "DELETE", "/api/admin/suspend/v1", {"id": res["id"]})


def test_suspend_ready_q_list_has_expires(k):
    name = "unspecified->nowhere.example@smtp_client"
    res = ok_json(k, "POST", "/api/admin/suspend-ready-q/v1",
                  {"name": name, "reason": "compat", "duration": "10m"})
    listed = ok_json(k, "GET", "/api/admin/suspend-ready-q/v1")
    entry = [e for e in listed if e["id"] == res["id"]][0]
    # SuspendReadyQueueV1ListEntry
    assert set(entry) == {"id", "name", "reason", "duration", "expires"}
    assert entry["name"] == name and RFC3339.fullmatch(entry["expires"])
    status, _, data = request(k, "DELETE", "/api/admin/suspend-ready-q/v1", {"id": res["id"]})
    assert (status, data.decode()) == (200, f"removed {res['id']}")
    status, _, data = request(k, "DELETE", "/api/admin/suspend-ready-q/v1", {"id": res["id"]})
    assert (status, data.decode()) == (404, f"suspend-ready-q entry {res['id']} not found")


def test_rebind_as_kumomta_kcli_sends(k):
    ids = hold(k, "rebind.hold.test", 2)
    res = ok_json(k, "POST", "/api/admin/rebind/v1",
                  kumo_rebind("compat move", {"queue": "moved.example"},
                              domain="rebind.hold.test"))
    assert res == {}  # RebindV1Response
    recs = k.wait_records(lambda r: r["id"] in set(ids), type="AdminRebind", count=2)
    assert {r["queue"] for r in recs} == {"moved.example"}
    status, _, data = request(k, "POST", "/api/admin/rebind/v1",
                              kumo_rebind("x", {"queue": 5}))
    assert status == 422 and "data.queue: invalid type: integer `5`" in data.decode()


def test_inspect_sched_q_and_message_shapes(k):
    ids = hold(k, "inspect.hold.test", 2)
    res = ok_json(k, "GET", "/api/admin/inspect-sched-q/v1?queue_name=inspect.hold.test"
                  "&want_body=true&limit=1")
    # InspectQueueV1Response
    assert set(res) == {"queue_name", "messages", "num_scheduled", "queue_config",
                        "delayed_metric", "now", "last_changed"}
    assert res["num_scheduled"] == 2 and len(res["messages"]) == 1
    assert RFC3339.fullmatch(res["now"]) and RFC3339.fullmatch(res["last_changed"])
    assert res["queue_config"]["retry_interval"] == "1h"
    m = res["messages"][0]
    assert set(m) == {"id", "message"} and m["id"] in ids
    info = m["message"]
    assert info["sender"] == SENDER and info["recipient"].endswith("@inspect.hold.test")
    assert info["data"].endswith("held\r\n") and info["num_attempts"] == 1
    assert RFC3339.fullmatch(info["due"])
    assert info["meta"]["reception_protocol"] == "HTTP"
    one = ok_json(k, "GET", f"/api/admin/inspect-message/v1?id={ids[0]}")
    # InspectMessageV1Response: data is null without want_body
    assert set(one) == {"id", "message"} and one["id"] == ids[0]
    assert one["message"]["data"] is None and one["message"]["sender"] == SENDER
    status, _, data = request(k, "GET", "/api/admin/inspect-sched-q/v1?queue_name=nope.example")
    assert (status, data.decode()) == (404, "Error: no such queue nope.example")


def ready_queue_names(k):
    status, _, data = request(k, "GET", "/metrics.json")
    doc = json.loads(data)
    rc = doc.get("ready_count", {})
    # the service label is "<protocol>:<ready queue name>"
    return [s.split(":", 1)[1] for s in (rc.get("value") or {}).get("service", {})]


def test_inspect_ready_q_shape(k):
    hold(k, "rq.hold.test", 1)
    names = [n for n in ready_queue_names(k) if "rq.hold.test" in n]
    assert names, ready_queue_names(k)
    name = names[0]
    res = ok_json(k, "GET", f"/api/admin/inspect-ready-q/v1?queue_name={name}"
                  "&include_scheduled_queues=true")
    # InspectReadyQV1Response
    assert set(res) == {"queue_name", "mx", "egress_source", "egress_pool", "protocol", "state",
                        "path_config", "constraints", "scheduled_queue_names", "dispatchers",
                        "now"}
    assert res["queue_name"] == name and res["egress_source"] == "unspecified"
    assert res["egress_pool"] == "unspecified" and res["protocol"] == name.rsplit("@", 1)[1]
    assert set(res["state"]) == {"ready_count", "connection_count", "connection_rate_throttled",
                                 "connection_limited", "suspended", "watchdog_threshold"}
    assert set(res["constraints"]) == {"max_concurrent_dispatchers", "max_message_rate",
                                       "max_message_rate_declared", "max_connection_rate",
                                       "max_source_selection_rate"}
    mcd = res["constraints"]["max_concurrent_dispatchers"]
    assert mcd["source"] == {"kind": "primary"}
    assert mcd["value"] == res["path_config"]["connection_limit"]
    assert res["scheduled_queue_names"] == ["rq.hold.test"]
    for d in res["dispatchers"]:
        assert set(d) == {"session_id", "started_at", "age", "phase", "detail",
                          "time_in_current_phase", "messages_delivered", "messages_transfailed",
                          "messages_failed", "delivered_this_connection",
                          "overall_rate_per_sec"}
    # suspended: the SuspendReadyQueueV1ListEntry; ready-q-states names it
    sid = ok_json(k, "POST", "/api/admin/suspend-ready-q/v1",
                  {"name": name, "reason": "look", "duration": None})["id"]
    res = ok_json(k, "GET", f"/api/admin/inspect-ready-q/v1?queue_name={name}")
    assert "scheduled_queue_names" not in res
    assert res["state"]["suspended"]["id"] == sid
    states = ok_json(k, "GET", "/api/admin/ready-q-states/v1")
    st = states["states_by_ready_queue"][name]["suspended"]
    assert st["context"] == "look" and RFC3339.fullmatch(st["since"])
    request(k, "DELETE", "/api/admin/suspend-ready-q/v1", {"id": sid})
    status, _, data = request(k, "GET", "/api/admin/inspect-ready-q/v1?queue_name=nope")
    assert status == 404


def test_set_log_filter_as_kumomta_sends(k):
    status, _, data = request(k, "POST", "/api/admin/set_diagnostic_log_filter/v1",
                              {"filter": "kumod=info"})
    assert status == 200
    status, _, data = request(k, "POST", "/api/admin/set_diagnostic_log_filter/v1", {})
    assert (status, data.decode()) == (422, "Failed to deserialize the JSON body into the target "
                                            "type: missing field `filter`")


INJECT = {"envelope_sender": SENDER, "content": "Subject: zipped\r\n\r\nhello\r\n",
          "recipients": [{"email": "z@zip.example"}]}


@pytest.mark.parametrize("encoding,compress", [
    ("gzip", gzip.compress),
    ("deflate", zlib.compress),
    ("deflate", lambda b: zlib.compress(b)[2:-4]),  # raw deflate, as some clients send
    ("identity", lambda b: b),
])
def test_inject_compressed_body(k, encoding, compress):
    raw = compress(json.dumps(INJECT).encode())
    status, _, data = request(k, "POST", "/api/inject/v1", raw=raw,
                              headers={"Content-Encoding": encoding})
    assert status == 200, data
    assert json.loads(data) == {"success_count": 1, "fail_count": 0, "failed_recipients": [],
                                "errors": []}


def test_inject_unsupported_encoding_is_415(k):
    status, headers, data = request(k, "POST", "/api/inject/v1", raw=b"xx",
                                    headers={"Content-Encoding": "br"})
    assert status == 415 and data == b""
    assert headers["Accept-Encoding"] == "gzip,deflate,identity"


def test_inject_decoded_size_limit_is_413(k):
    big = dict(INJECT, content="Subject: big\r\n\r\n" + "z" * 200000)
    raw = gzip.compress(json.dumps(big).encode())
    assert len(raw) < 65536
    status, headers, data = request(k, "POST", "/api/inject/v1", raw=raw,
                                    headers={"Content-Encoding": "gzip"})
    assert (status, data) == (413, b"Failed to buffer the request body: length limit exceeded")
    status, _, data = request(k, "POST", "/api/inject/v1", raw=b"\x1f\x8bnot gzip",
                              headers={"Content-Encoding": "gzip"})
    assert status == 400 and data.decode() == ("Failed to buffer the request body: "
                                               "invalid gzip data")
    assert k.alive()


def test_inject_template_error_is_422_text(k):
    body = dict(INJECT, content="Subject: {{ oops\r\n\r\nx")
    status, headers, data = request(k, "POST", "/api/inject/v1", body)
    assert status == 422 and headers["Content-Type"].startswith("text/plain")
    assert data.decode().startswith("Error: ")


def test_inject_deferred_generation_counts_are_zero(k):
    body = dict(INJECT, deferred_generation=True,
                recipients=[{"email": "d1@defer.example"}, {"email": "d2@defer.example"}])
    res = ok_json(k, "POST", "/api/inject/v1", body)
    # documented: success_count is always 0 with deferred_generation
    assert res == {"success_count": 0, "fail_count": 0, "failed_recipients": [], "errors": []}
    recs = k.wait_records(lambda r: r["recipient"].endswith("@defer.example"),
                          type="Delivery", count=2)
    assert len(recs) == 2


def doc_examples():
    """(method, path, status, request, answer or None) of each example in
    docs/ADMIN-API.md."""
    import os
    path = os.path.join(os.path.dirname(__file__), "..", "..", "docs", "ADMIN-API.md")
    text = open(path).read()
    rx = re.compile(r"<!-- example: (\w+) (\S+) (\d+) -->\n```json\n(.*?)```\n"
                    r"(?:<!-- answer -->\n```json\n(.*?)```\n)?", re.S)
    return [(m[1], m[2], int(m[3]), json.loads(m[4]), json.loads(m[5]) if m[5] else None)
            for m in rx.finditer(text)]


def test_documented_examples_are_found():
    assert len(doc_examples()) == 7


@pytest.mark.parametrize("method,path,status,body,answer", doc_examples())
def test_documented_example(k, method, path, status, body, answer):
    got, headers, data = request(k, method, path, body)
    assert got == status, data
    if answer is not None:
        doc = json.loads(data)
        assert set(doc) == set(answer)
        for key, value in answer.items():
            if key != "id":
                assert doc[key] == value, key
            else:
                assert re.fullmatch(UUID_RX, doc["id"])
