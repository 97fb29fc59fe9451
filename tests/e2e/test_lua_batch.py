"""custom_lua batching (docs/reference/kumo/make_queue_config/protocol.md,
docs/userguide/operation/webhooks.md "batched hooks"; KumoMTA's
crates/kumod/src/lua_deliver.rs and ready_queue.rs obtain_message /
wait_for_message for the facts): with `batch_size` > 1 the constructor's
`send_batch(messages)` receives the messages of one ready queue together, at
most batch_size, waiting up to `max_batch_latency` for `min_batch_size`
(default 1: no waiting, whatever is ready goes). The result applies to every
message of the batch: a returned string is a Delivery for each, kumo.reject
4xx (or an error) a TransientFailure for each (each retried on its own),
kumo.reject 5xx a Bounce for each. The records name the ready queue
(`<source>-><domain>@lua:<constructor>`), the egress pool and source.

A log hook (policy-extras.log_hooks:new_json) with batch_size posts JSON
arrays of records to a local HTTP server."""
import json
import os
import time
import urllib.request

import pytest

import http_peer
import kumod_harness as kh
from kumod_harness import default_policy, parse_ids, wait_until
from records import UUID_RX, rfc3339_unix

SENDER = "sender@src.example"
LUA_PATH = os.path.join(kh.REPO, "share", "lua", "?.lua")

HANDLERS = """
local function append(name, line)
  local f = assert(io.open('{dir}/' .. name, 'a'))
  f:write(line .. '\\n')
  f:close()
end
-- once per key (the files are shared by the reactors' VMs)
local function first_time(key)
  local path = '{dir}/seen-' .. key
  local f = io.open(path, 'r')
  if f then
    f:close()
    return false
  end
  f = assert(io.open(path, 'w'))
  f:close()
  return true
end

local BATCH = {
  -- exact batches: wait up to 2s for 10
  ['exact.test'] = { batch_size = 10, min_batch_size = 10, max_batch_latency = '2s' },
  -- no minimum: whatever is ready goes at once
  ['nomin.test'] = { batch_size = 10 },
  ['slow.test'] = { batch_size = 10, min_batch_size = 10, max_batch_latency = '4s' },
  ['tempfail.test'] = { batch_size = 4, min_batch_size = 4, max_batch_latency = '5s' },
  ['bounce.test'] = { batch_size = 4, min_batch_size = 4, max_batch_latency = '5s' },
  ['error.test'] = { batch_size = 4, min_batch_size = 4, max_batch_latency = '5s' },
  ['nomethod.test'] = { batch_size = 3, min_batch_size = 3, max_batch_latency = '5s' },
}

kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  local b = BATCH[domain]
  if not b then
    return nil
  end
  local lua = { constructor = 'make.batch' }
  if domain == 'nomethod.test' then
    lua.constructor = 'make.nomethod'
  end
  for k, v in pairs(b) do
    lua[k] = v
  end
  return kumo.make_queue_config {
    retry_interval = '1s',
    max_retry_interval = '1s',
    egress_pool = 'pool1',
    protocol = { custom_lua = lua },
  }
end)
kumo.on('get_egress_pool', function(name)
  return kumo.make_egress_pool { name = name, entries = { { name = 'src1' } } }
end)
kumo.on('get_egress_source', function(name)
  return kumo.make_egress_source { name = name }
end)
kumo.on('get_egress_path_config', function(domain, source, site)
  return kumo.make_egress_path { connection_limit = 1 }
end)

kumo.on('make.batch', function(domain, tenant, campaign)
  local connection = {}
  function connection:send_batch(messages)
    local ids = {}
    for _, msg in ipairs(messages) do
      table.insert(ids, msg:id())
    end
    append('batches-' .. domain, table.concat(ids, ','))
    if domain == 'tempfail.test' and first_time(ids[1]) then
      kumo.reject(451, '4.3.0 batch endpoint busy')
    elseif domain == 'bounce.test' then
      kumo.reject(550, '5.7.1 batch refused')
    elseif domain == 'error.test' and first_time(ids[1]) then
      error('batch endpoint exploded')
    end
    return string.format('batch of %d', #messages)
  end
  function connection:send(message)
    error('send must not be called when batch_size > 1')
  end
  return connection
end)
kumo.on('make.nomethod', function(domain, tenant, campaign)
  local connection = {}
  function connection:send(message)
    return 'single'
  end
  return connection
end)
"""

INIT = "kumo.start_http_listener { listen = '127.0.0.1:{http_port}' }"


@pytest.fixture(scope="module")
def k(module_kumod_factory):
    return module_kumod_factory(policy=default_policy(handlers=HANDLERS, init=INIT),
                                name="luabatch")


def send_many(k, rcpts):
    """One transaction, one message (id) per recipient, all queued together."""
    original = f"From: <{SENDER}>\r\nSubject: batch\r\n\r\nbatch body\r\n".encode()
    s = k.smtp(ehlo="batch.e2e.test")
    try:
        assert s.mail(SENDER)[0] == 250
        for r in rcpts:
            assert s.rcpt(r)[0] == 250
        code, text = s.data(original)
        assert code == 250, (code, text)
        ids = parse_ids(text.decode())
    finally:
        s.quit()
    assert len(ids) == len(rcpts)
    return ids


def batches(k, domain):
    p = k.path(f"batches-{domain}")
    if not os.path.exists(p):
        return []
    with open(p) as f:
        return [l.strip().split(",") for l in f if l.strip()]


def t(rec):
    return rfc3339_unix(rec["event_time"])


def admin_get(k, path):
    with urllib.request.urlopen(f"http://127.0.0.1:{k.http_port}{path}", timeout=10) as r:
        return json.loads(r.read())


def rq_name(domain, ctor="make.batch"):
    return f"src1->{domain}@lua:{ctor}"


def check_lua_record(rec, *, type, domain, code, content, ctor="make.batch"):
    assert rec["type"] == type, rec
    assert rec["queue"] == domain, rec
    assert rec["site"] == rq_name(domain, ctor), rec
    assert rec["egress_pool"] == "pool1", rec
    assert rec["egress_source"] == "src1", rec
    assert rec["delivery_protocol"] == "Lua", rec
    assert rec["response"]["code"] == code, rec
    assert rec["response"]["content"] == content, rec
    assert rec["response"]["enhanced_code"] is None, rec
    assert UUID_RX.fullmatch(rec["session_id"]), rec


def test_batches_of_the_configured_size_within_the_latency(k):
    """batch_size = min_batch_size = 10, max_batch_latency = 2s,
    connection_limit = 1: 25 messages queued together go as 10, 10, then the
    last 5 once the latency is over (counted from their batch's first
    message)."""
    ids = send_many(k, [f"u{i}@exact.test" for i in range(25)])
    recs = k.wait_records(lambda r: r["id"] in ids, type="Delivery", count=25,
                          timeout=20 * kh.SLOW)
    got = batches(k, "exact.test")
    assert [len(b) for b in got] == [10, 10, 5], got
    assert sorted(i for b in got for i in b) == sorted(ids)
    by_id = {r["id"]: r for r in recs}
    assert len(by_id) == 25
    for b in got:
        bt = [t(by_id[i]) for i in b]
        # one send_batch: one result, one session, logged together
        assert max(bt) - min(bt) < 0.5 * kh.SLOW, bt
        assert len({by_id[i]["session_id"] for i in b}) == 1
        for i in b:
            check_lua_record(by_id[i], type="Delivery", domain="exact.test", code=200,
                             content=f"batch of {len(b)}")
            assert by_id[i]["peer_address"] == {"name": "Lua via make.batch",
                                                "addr": "0.0.0.0"}
    first, second, last = (min(t(by_id[i]) for i in b) for b in got)
    received = min(t(r) for r in k.records("Reception") if r["id"] in ids)
    # full batches do not wait for the latency
    assert first - received < 1.5 * kh.SLOW, (first, received)
    assert second - first < 1.5 * kh.SLOW, (second, first)
    # the partial batch waits max_batch_latency, and not much longer
    assert 1.9 <= last - second <= 2.0 + 1.5 * kh.SLOW, (last, second)


def test_without_min_batch_size_nothing_waits(k):
    """batch_size 10 alone (min_batch_size defaults to 1): what is ready goes
    at once, never more than 10 per batch, and a lone message is not held."""
    ids = send_many(k, [f"n{i}@nomin.test" for i in range(23)])
    k.wait_records(lambda r: r["id"] in ids, type="Delivery", count=23, timeout=20 * kh.SLOW)
    got = batches(k, "nomin.test")
    assert all(1 <= len(b) <= 10 for b in got), got
    assert sorted(i for b in got for i in b) == sorted(ids)
    assert len(got) < 23, got  # they were batched
    [one] = send_many(k, ["lone@nomin.test"])
    sent = time.time()
    [d] = k.wait_records(lambda r: r["id"] == one, type="Delivery", timeout=10 * kh.SLOW)
    assert t(d) - sent < 1.0 * kh.SLOW
    assert batches(k, "nomin.test")[-1] == [one]


def test_inspect_ready_q_shows_the_accumulating_batch(k):
    """While a partial batch waits, the dispatcher's phase is KumoMTA's
    AccumulatingBatch {have, want}; the ready queue is named
    <source>-><domain>@lua:<constructor> in the admin API and the metrics."""
    ids = send_many(k, [f"s{i}@slow.test" for i in range(3)])
    name = rq_name("slow.test")

    def accumulating():
        try:
            res = admin_get(k, f"/api/admin/inspect-ready-q/v1?queue_name={name}")
        except Exception:
            return None
        phases = [d["phase"] for d in res["dispatchers"]]
        return res if {"AccumulatingBatch": {"have": 3, "want": 10}} in phases else None

    res = wait_until(accumulating, 3 * kh.SLOW, what="an accumulating dispatcher")
    assert res["queue_name"] == name
    assert res["egress_source"] == "src1" and res["egress_pool"] == "pool1"
    assert res["protocol"] == "lua:make.batch"
    assert res["path_config"]["connection_limit"] == 1
    with urllib.request.urlopen(f"http://127.0.0.1:{k.http_port}/metrics", timeout=10) as r:
        metrics = r.read().decode()
    assert f'service="lua:{name}"' in metrics
    # the latency is over: the three go together
    k.wait_records(lambda r: r["id"] in ids, type="Delivery", count=3, timeout=10 * kh.SLOW)
    assert batches(k, "slow.test") == [ids] or sorted(batches(k, "slow.test")[0]) == sorted(ids)


def test_transient_rejection_applies_to_every_message_of_the_batch(k):
    """kumo.reject(451) from send_batch: a TransientFailure for each message
    of the batch, each requeued and retried on its own; then delivered."""
    ids = send_many(k, [f"t{i}@tempfail.test" for i in range(4)])
    tfs = k.wait_records(lambda r: r["id"] in ids, type="TransientFailure", count=4,
                         timeout=10 * kh.SLOW)
    assert len({r["id"] for r in tfs}) == 4
    for r in tfs:
        check_lua_record(r, type="TransientFailure", domain="tempfail.test", code=451,
                         content="4.3.0 batch endpoint busy")
        assert r["num_attempts"] == 0
    assert len({r["session_id"] for r in tfs}) == 1
    ds = k.wait_records(lambda r: r["id"] in ids, type="Delivery", count=4,
                        timeout=20 * kh.SLOW)
    for r in ds:
        assert r["num_attempts"] == 1, r
        assert r["response"]["content"].startswith("batch of "), r
    assert sorted(batches(k, "tempfail.test")[0]) == sorted(ids)


def test_permanent_rejection_bounces_every_message_of_the_batch(k):
    ids = send_many(k, [f"b{i}@bounce.test" for i in range(4)])
    bs = k.wait_records(lambda r: r["id"] in ids, type="Bounce", count=4, timeout=10 * kh.SLOW)
    for r in bs:
        check_lua_record(r, type="Bounce", domain="bounce.test", code=550,
                         content="5.7.1 batch refused")
    assert len(batches(k, "bounce.test")) == 1
    wait_until(lambda: not (set(i.lower() for i in ids) & k.local_disk_ids("data")),
               10 * kh.SLOW, what="the bounced messages to leave the spool")


def test_an_error_in_send_batch_is_a_transient_failure_for_every_message(k):
    ids = send_many(k, [f"e{i}@error.test" for i in range(4)])
    tfs = k.wait_records(lambda r: r["id"] in ids, type="TransientFailure", count=4,
                         timeout=10 * kh.SLOW)
    for r in tfs:
        assert r["response"]["code"] == 400, r
        c = r["response"]["content"]
        assert c.startswith("KumoMTA internal: error in deliver_message: "), r
        assert "batch endpoint exploded" in c, r
        assert r["egress_pool"] == "pool1" and r["egress_source"] == "src1"
        # as KumoMTA's dispatcher logs a failed deliver_message: no peer
        assert r["peer_address"] is None, r
    ds = k.wait_records(lambda r: r["id"] in ids, type="Delivery", count=4,
                        timeout=20 * kh.SLOW)
    # the failure closed the connection: the retry is another session
    assert {r["session_id"] for r in ds}.isdisjoint({r["session_id"] for r in tfs})


def test_a_connection_without_send_batch(k):
    """batch_size > 1 and an object with only send: KumoMTA's
    "sender:send_batch method not found", a transient failure for each."""
    ids = send_many(k, [f"m{i}@nomethod.test" for i in range(3)])
    tfs = k.wait_records(lambda r: r["id"] in ids, type="TransientFailure", count=3,
                         timeout=10 * kh.SLOW)
    for r in tfs:
        check_lua_record(r, type="TransientFailure", domain="nomethod.test", code=400,
                         ctor="make.nomethod",
                         content="KumoMTA internal: error in deliver_message: "
                                 "sender:send_batch method not found")
        assert r["peer_address"] is None, r


# ---- a log hook with send_batch -------------------------------------------------------------------

HOOK = """
local log_hooks = require 'policy-extras.log_hooks'
log_hooks:new_json {
  name = 'webhook',
  url = '%(url)s/log',
  batch_size = 5,
  min_batch_size = 5,
  max_batch_latency = '1s',
  queue_config = { retry_interval = '1s', max_retry_interval = '2s' },
}
kumo.on('get_egress_path_config', function(domain, source, site)
  return kumo.make_egress_path { connection_limit = 1 }
end)
kumo.on('make.sink', function(domain, tenant, campaign)
  local connection = {}
  function connection:send(message)
    return 'accepted'
  end
  return connection
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    protocol = { custom_lua = { constructor = 'make.sink' } },
  }
end)
"""


def test_log_hook_with_send_batch_posts_batches(kumod_factory):
    """Every Reception and Delivery record arrives, in POSTs of JSON arrays
    of at most batch_size records; batches wait for min_batch_size up to
    max_batch_latency; the hook's own deliveries name the ready queue
    unspecified->webhook.log_hook@lua:make.webhook.log_hook."""
    peer = http_peer.Peer()
    try:
        k = kumod_factory(handlers=HOOK % {"url": peer.url}, env={"KUMOD_LUA_PATH": LUA_PATH})
        n = 12
        ids = send_many(k, [f"h{i}@sink.test" for i in range(n)])

        def flat(docs):
            return [r for d in docs for r in (d if isinstance(d, list) else [d])]

        peer.wait_records(lambda docs: len(flat(docs)) >= 2 * n, timeout=30 * kh.SLOW)
        time.sleep(1.5)  # nothing more may come
        docs = peer.log_records()
        assert all(isinstance(d, list) for d in docs), docs
        sizes = [len(d) for d in docs]
        assert all(1 <= s <= 5 for s in sizes), sizes
        assert 5 in sizes, sizes
        assert len(docs) < 2 * n, sizes
        recs = flat(docs)
        got = sorted((r["type"], r["id"]) for r in recs)
        assert got == sorted([("Reception", i) for i in ids] + [("Delivery", i) for i in ids])
        hooked = [r for r in k.records() if r.get("reception_protocol") == "LogRecord"]
        assert len(hooked) == 2 * n
        assert {r["type"] for r in hooked} == {"Delivery"}
        site = "unspecified->webhook.log_hook@lua:make.webhook.log_hook"
        assert {r["site"] for r in hooked} == {site}
        assert {(r["egress_pool"], r["egress_source"]) for r in hooked} == \
            {("unspecified", "unspecified")}
    finally:
        peer.close()
