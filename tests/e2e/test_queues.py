"""Issue 4 (queues and routing) end to end: the seed pages' examples as written
(make_queue_config max_age / max_retry_interval, the Maildir protocol, the
custom_lua `make.webhook` protocol, the requeue_message smart-host example),
retry timing with short intervals, expiry, egress pools, a kill -9 restart with
1,000 queued messages, and bad policy input.

Every test checks the exact log records against what KumoMTA writes for the
same situation (crates/kumod/src/lua_deliver.rs, ready_queue.rs, queue/queue.rs,
queue/manager.rs). Where kumod differs, the correct test is kept as a strict
xfail whose reason starts with "BUG:".

Scenarios that need the same daemon run once per module (module-scoped
fixtures) and several tests assert on what they produced."""
import json
import os
import re
import time

import pytest

import kumod_harness as kh
from kumod_harness import default_policy, parse_ids, wait_until
from records import RECORD_KEYS, UUID_RX, check_stored, enhanced, rfc3339_unix, uuid1_unix

SENDER = "sender@src.example"
EHLO = "queues.e2e.test"

# Lua shared by the policies: append a line to a file in the instance
# directory, and a per-key counter kept in files (each reactor has its own Lua
# VM, so a Lua global would not be shared).
LUA_HELPERS = """
local function append(name, line)
  local f = assert(io.open('{dir}/' .. name, 'a'))
  f:write(line .. '\\n')
  f:close()
end
local function bump(key)
  local path = '{dir}/count-' .. key
  local n = 0
  local f = io.open(path, 'r')
  if f then
    n = tonumber(f:read('a')) or 0
    f:close()
  end
  n = n + 1
  f = assert(io.open(path, 'w'))
  f:write(tostring(n))
  f:close()
  return n
end
"""

# ---- the seed pages, verbatim ---------------------------------------------------------------

SEED_MAX_AGE = """kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
return kumo.make_queue_config {
-- Age out messages after being in the queue for 20 minutes
max_age = '20 minutes',
}
end)
"""

SEED_MAX_RETRY_INTERVAL = """kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
return kumo.make_queue_config {
-- Retry at most every hour
max_retry_interval = '1 hour',
}
end)
"""

# The only change to the seed's text is the path: every test has its own directory.
SEED_MAILDIR = """kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
if domain == 'maildir.example.com' then
-- Store this domain into a maildir, rather than attempting
-- to deliver via SMTP
return kumo.make_queue_config {
protocol = {
maildir_path = '{dir}/kumo-maildir',
},
}
end
-- Otherwise, just use the defaults
return kumo.make_queue_config {}
end)
"""

SEED_WEBHOOK = """kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
if domain == 'webhook' then
-- Use the `make.webhook` event to handle delivery
-- of webhook log records
return kumo.make_queue_config {
protocol = {
custom_lua = {
-- this will cause an event called `make.webhook` to trigger.
-- You can pick any name for this event, so long as it doesn't
-- collide with a pre-defined event, and so long as you bind
-- to it with a kumo.on call
constructor = 'make.webhook',
},
},
}
end
return kumo.make_queue_config {}
end)
-- This event will be called each time we need to make a connection.
-- It needs to return a lua object with a `send` method
kumo.on('make.webhook', function(domain, tenant, campaign)
-- Create the connection object
local connection = {}
-- define a send method on the connection object.
-- The return value is the disposition string for a successful
-- delivery; that string will get logged in the resulting log record.
-- If the delivery failed, you can use `kumo.reject` to raise the
-- error with an appropriate 400 or 500 code.
-- 400 codes will be retried later. 500 codes will log a permanent
-- failure and no further delivery attempts will be made for the message.
function connection:send(message)
print(message:get_data())
if failed then
kumo.reject(400, 'failed for some reason')
end
return 'OK'
end
return connection
end)
"""

SEED_REQUEUE = """local SMART_HOST = '[10.0.0.1]'

kumo.on(
  'requeue_message',
  function(msg, smtp_response, insert_context, increment_attempts, delay)
    local queue = msg:queue_name()
    if queue ~= SMART_HOST and msg:num_attempts() >= 2 then
      -- Re-route to alternative infra to manage the rest of the send
      msg:set_meta('queue', SMART_HOST)
      -- clear any scheduling constraints, as they do not apply
      -- when sending via a smart host
      msg:set_scheduling(nil)
    end
  end
)
"""

# Delivers everything a seed queue config gets through a Lua protocol that
# always fails transiently, so the seed's make_queue_config text stays as
# written and its effect on retries and expiry can be observed.
ALWAYS_DOWN = """
local seed_make_queue_config = kumo.make_queue_config
kumo.make_queue_config = function(params)
  params.protocol = { custom_lua = { constructor = 'make.down' } }
  return seed_make_queue_config(params)
end
kumo.on('make.down', function(domain, tenant, campaign)
  local connection = {}
  function connection:send(message)
    kumo.reject(400, 'destination is down')
  end
  return connection
end)
"""


# ---- helpers ---------------------------------------------------------------------------------


def send(k, rcpt, subject="queues", extra=b"", sender=SENDER):
    """One message with one recipient; returns (id, original bytes)."""
    original = (f"From: <{sender}>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n".encode() + extra +
                b"\r\nHello from the queue tests.\r\n")
    s = k.smtp(ehlo=EHLO)
    try:
        assert s.mail(sender)[0] == 250
        assert s.rcpt(rcpt)[0] == 250
        code, text = s.data(original)
        assert code == 250, (code, text)
        [id] = parse_ids(text.decode())
    finally:
        s.quit()
    return id, original


def send_batch(k, rcpts, subject="batch"):
    """One transaction with many recipients: one message (id) per recipient."""
    original = f"From: <{SENDER}>\r\nSubject: {subject}\r\n\r\nbatch body\r\n".encode()
    s = k.smtp(ehlo=EHLO)
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


def of(rs, id, type=None):
    return [r for r in rs if r["id"] == id and (type is None or r["type"] == type)]


def t(rec):
    """The record's event time, unix seconds (float)."""
    return rfc3339_unix(rec["event_time"])


def spooled(k, id):
    return id in k.local_disk_ids("data")


def wait_gone(k, id, timeout=10.0):
    wait_until(lambda: not spooled(k, id), timeout, what=f"{id} to leave the spool")


def read_lines(k, name):
    p = k.path(name)
    if not os.path.exists(p):
        return []
    with open(p) as f:
        return [l.rstrip("\n") for l in f]


def line_of(k, marker):
    """1-based line of the policy file holding a `-- @marker` comment."""
    with open(k.policy_path) as f:
        for n, line in enumerate(f, 1):
            if f"-- @{marker}" in line:
                return n
    raise AssertionError(f"marker {marker} not in the policy")


def check(rec, *, type, id, recipient, queue, site, code, content, num_attempts,
          protocol, pool, source, peer=None, enh=None, session=True, size=None,
          sender=SENDER, subject=None):
    """The exact record, KumoMTA's fields for a delivery-side disposition.
    content may be a compiled regex (fullmatch)."""
    keys = set(RECORD_KEYS) | ({"session_id"} if session else set())
    assert set(rec) == keys, \
        f"fields differ: extra {set(rec) - keys}, missing {keys - set(rec)}: {rec}"
    assert rec["type"] == type, rec
    assert rec["id"] == id
    assert rec["sender"] == sender
    assert rec["recipient"] == recipient
    assert rec["queue"] == queue, rec
    assert rec["site"] == site, rec
    resp = rec["response"]
    assert resp["code"] == code, rec
    assert resp["enhanced_code"] == enhanced(enh), rec
    if isinstance(content, re.Pattern):
        assert content.fullmatch(resp["content"]), rec
    else:
        assert resp["content"] == content, rec
    assert resp["command"] is None, rec
    assert rec["peer_address"] == peer, rec
    assert rec["num_attempts"] == num_attempts, rec
    assert rec["delivery_protocol"] == protocol, rec
    assert rec["egress_pool"] == pool, rec
    assert rec["egress_source"] == source, rec
    assert rec["bounce_classification"] == "Uncategorized"
    assert rec["source_address"] is None
    assert rec["feedback_report"] is None
    assert rec["reception_protocol"] == "ESMTP"
    assert UUID_RX.fullmatch(rec["nodeid"]), rec
    if session:
        assert UUID_RX.fullmatch(rec["session_id"]), rec
    assert isinstance(rec["timestamp"], int)
    assert int(t(rec)) == rec["timestamp"]
    assert rec["created"] == int(uuid1_unix(id))
    assert int(rfc3339_unix(rec["created_time"])) == rec["created"]
    assert rec["created"] <= rec["timestamp"]
    # the default policy logs meta received_from and the Subject / X-E2E-* headers
    assert list(rec["meta"]) == ["received_from"], rec
    assert re.fullmatch(r"127\.0\.0\.1:\d+", rec["meta"]["received_from"]), rec
    assert "Subject" in rec["headers"], rec
    if subject is not None:
        assert rec["headers"]["Subject"] == subject, rec
    if size is not None:
        assert rec["size"] == size, rec


def lua_peer(ctor):
    return {"name": f"Lua via {ctor}", "addr": "0.0.0.0"}


def reception_size(k, id):
    [r] = k.wait_records(lambda r: r["id"] == id, type="Reception")
    return r["size"]


def gaps(recs):
    ts = [t(r) for r in recs]
    return [round(b - a, 3) for a, b in zip(ts, ts[1:])]


def assert_gaps(got, want):
    """Attempt intervals follow the schedule within the jitter (5%) plus the
    time one attempt takes (load from the spool, run the Lua send)."""
    slack = 0.35 * kh.SLOW
    assert len(got) == len(want), (got, want)
    for g, w in zip(got, want):
        assert w * 0.95 <= g <= w * 1.05 + slack, (got, want)


# ---- the seed's max_age and max_retry_interval examples --------------------------------------


def test_seed_max_age_example_expires_at_the_first_retry_past_20_minutes(kumod_factory):
    """max_age = '20 minutes' with the default 20 minute retry_interval: the
    first retry is due 1200 s +/- 30 s of jitter after a failure at age ~0, so
    a message either expires at once (due > 20 minutes) or waits. Sixteen
    messages make "none expired" and "all expired" both vanishingly unlikely
    (about 0.52^16 and 0.48^16); with the default 7 day max_age none would
    ever expire."""
    k = kumod_factory(handlers=ALWAYS_DOWN + SEED_MAX_AGE)
    n = 16
    ids = send_batch(k, [f"u{i}@seed-age.example" for i in range(n)], subject="seed max_age")
    k.wait_records(lambda r: r["id"] in ids, type="TransientFailure", count=n, timeout=20)
    time.sleep(0.5 * kh.SLOW)
    rs = k.records()
    expired = {r["id"] for r in rs if r["type"] == "Expiration"}
    for i, id in enumerate(ids):
        [tf] = of(rs, id, "TransientFailure")
        check(tf, type="TransientFailure", id=id, recipient=f"u{i}@seed-age.example",
              queue="seed-age.example", site="unspecified->seed-age.example@lua:make.down",
              code=400, content="destination is down", num_attempts=0, protocol="Lua",
              pool="unspecified", source="unspecified", peer=lua_peer("make.down"))
        if id in expired:
            [ex] = of(rs, id, "Expiration")
            assert ex["queue"] == "seed-age.example"
            assert ex["site"] == ""
            assert ex["response"]["code"] == 551
            assert ex["response"]["enhanced_code"] == enhanced("5.4.7")
            assert re.fullmatch(r"Next delivery time would be 20m( \d+s)?( \d+ms)?( \d+us)?"
                                r"( \d+ns)? after creation, which exceeds max_age=20m",
                                ex["response"]["content"]), ex
            wait_gone(k, id)
        else:
            assert spooled(k, id)
    assert 1 <= len(expired) < n, f"{len(expired)} of {n} expired"
    assert not of(rs, ids[0], "Delivery")
    assert "ERROR" not in k.diag()


def test_seed_max_retry_interval_example_loads_and_keeps_retrying(kumod_factory):
    """max_retry_interval = '1 hour' loads as written; the message fails, is
    neither expired nor bounced, and waits in its queue (the cap itself is
    measured with short intervals in test_backoff_is_capped_by_max_retry_interval)."""
    k = kumod_factory(handlers=ALWAYS_DOWN + SEED_MAX_RETRY_INTERVAL)
    id, _ = send(k, "u@seed-retry.example")
    [tf] = k.wait_records(lambda r: r["id"] == id, type="TransientFailure")
    check(tf, type="TransientFailure", id=id, recipient="u@seed-retry.example",
          queue="seed-retry.example", site="unspecified->seed-retry.example@lua:make.down",
          code=400, content="destination is down", num_attempts=0, protocol="Lua",
          pool="unspecified", source="unspecified", peer=lua_peer("make.down"),
          size=reception_size(k, id))
    time.sleep(1.0)
    assert [r["type"] for r in k.records() if r["id"] == id] == ["Reception", "TransientFailure"]
    assert spooled(k, id)
    assert "ERROR" not in k.diag()


# ---- the Maildir protocol -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def maildir_run(module_kumod_factory):
    """The seed's Maildir example with two messages delivered."""
    k = module_kumod_factory(handlers=SEED_MAILDIR, name="maildir")
    sent = []
    for i in range(2):
        rcpt = f"user{i}@maildir.example.com"
        id, original = send(k, rcpt, subject=f"maildir {i}", extra=b"X-E2E-Tag: md\r\n")
        sent.append((id, rcpt, original, reception_size(k, id)))
    ids = [s[0] for s in sent]
    k.wait_records(lambda r: r["id"] in ids, type="Delivery", count=2)
    return k, sent


def maildir_files(k):
    new = k.path("kumo-maildir", "new")
    return {name: open(os.path.join(new, name), "rb").read() for name in os.listdir(new)}


def test_maildir_example_stores_the_exact_bytes(maildir_run):
    k, sent = maildir_run
    root = k.path("kumo-maildir")
    assert sorted(os.listdir(root)) == ["cur", "new", "tmp"]
    assert os.listdir(os.path.join(root, "tmp")) == []
    assert os.listdir(os.path.join(root, "cur")) == []
    files = maildir_files(k)
    assert len(files) == 2
    by_id = {}
    for name, data in files.items():
        m = re.search(rb" id ([0-9a-f]{32}) for <", data)
        assert m, data[:400]
        by_id[m.group(1).decode()] = data
    for id, rcpt, original, size in sent:
        data = by_id[id]
        # the stored message: X-KumoRef, Received, then exactly the client's bytes
        check_stored(data, id=id, ehlo=EHLO, recipient=rcpt, original=original)
        assert len(data) == size
        wait_gone(k, id)


def test_maildir_delivery_record(maildir_run):
    k, sent = maildir_run
    rs = k.records()
    for id, rcpt, original, size in sent:
        [rec] = of(rs, id, "Delivery")
        assert rec["type"] == "Delivery"
        assert rec["queue"] == "maildir.example.com"
        assert rec["recipient"] == rcpt
        assert rec["sender"] == SENDER
        assert rec["response"]["code"] == 200
        assert rec["response"]["enhanced_code"] is None
        assert rec["response"]["command"] is None
        assert rec["delivery_protocol"] == "Maildir"
        assert rec["num_attempts"] == 0
        assert rec["size"] == size
        assert rec["headers"] == {"Subject": f"maildir {sent.index((id, rcpt, original, size))}",
                                  "X-E2E-Tag": "md"}
        assert [r["type"] for r in of(rs, id)] == ["Reception", "Delivery"]


def test_maildir_delivery_record_matches_kumomta(maildir_run):
    k, sent = maildir_run
    rs = k.records()
    files = maildir_files(k)
    for id, rcpt, original, size in sent:
        [rec] = of(rs, id, "Delivery")
        [name] = [n for n, d in files.items() if f" id {id} for <".encode() in d]
        check(rec, type="Delivery", id=id, recipient=rcpt, queue="maildir.example.com", site="",
              code=200, content=f"{rcpt}: wrote to maildir with id={name}", num_attempts=0,
              protocol="Maildir", pool=None, source=None, peer=None, size=size)


MAILDIR_BLOCKED = LUA_HELPERS + """
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  if domain == 'blocked.example.com' then
    return kumo.make_queue_config { protocol = { maildir_path = '{dir}/blocker/maildir' } }
  end
end)
kumo.on('requeue_message', function(msg, smtp_response, insert_context, increment_attempts, delay)
  append('requeued', msg:id() .. '|' .. table.concat(insert_context, ','))
end)
"""


def make_blocker(k):
    # a regular file where the maildir's parent directory should be: creating
    # the maildir fails with ENOTDIR even for root
    with open(k.path("blocker"), "w") as f:
        f.write("not a directory\n")


@pytest.fixture(scope="module")
def blocked_run(module_kumod_factory):
    """A Maildir whose parent directory cannot be created."""
    k = module_kumod_factory(handlers=MAILDIR_BLOCKED, name="blocked", start=False)
    make_blocker(k)
    k.start()
    id, _ = send(k, "u@blocked.example.com", subject="blocked")
    size = reception_size(k, id)
    k.wait_records(lambda r: r["id"] == id, type="TransientFailure")
    time.sleep(2.0)
    return k, id, size


def test_maildir_write_failure_is_a_transient_failure(blocked_run):
    k, id, size = blocked_run
    rs = k.records()
    [tf] = of(rs, id, "TransientFailure")
    rsp = tf["response"]
    assert tf["queue"] == "blocked.example.com"
    assert tf["recipient"] == "u@blocked.example.com"
    assert tf["delivery_protocol"] == "Maildir"
    assert tf["num_attempts"] == 0
    assert tf["size"] == size
    assert rsp["code"] == 400 and rsp["enhanced_code"] is None and rsp["command"] is None
    assert "Not a directory" in rsp["content"], rsp
    # the message is delayed, not bounced or lost; the retry is about a
    # minute away (test_maildir_write_failure_is_retried_about_a_minute_later)
    assert [r["type"] for r in of(rs, id)] == ["Reception", "TransientFailure"]
    assert spooled(k, id)


def test_maildir_failure_record_matches_kumomta(blocked_run):
    k, id, size = blocked_run
    [tf] = of(k.records(), id, "TransientFailure")
    check(tf, type="TransientFailure", id=id, recipient="u@blocked.example.com",
          queue="blocked.example.com", site="", code=400,
          content=re.compile(r"u@blocked\.example\.com: failed to write to maildir: "
                             r".*Not a directory.*"),
          num_attempts=0, protocol="Maildir", pool=None, source=None, peer=None, size=size)


def test_maildir_write_failure_fires_requeue_message(blocked_run):
    k, id, size = blocked_run
    lines = read_lines(k, "requeued")
    assert len(lines) == 1, lines
    mid, ctx = lines[0].split("|")
    assert mid == id
    assert "LoggedTransientFailure" in ctx.split(",")


# ---- the custom_lua protocol ---------------------------------------------------------------------

LUA_PROTOCOLS = LUA_HELPERS + """
local CTORS = {
  ['flaky.test'] = 'make.flaky',
  ['bounce.test'] = 'make.bounce',
  ['nosend.test'] = 'make.nosend',
  ['nilctor.test'] = 'make.nilctor',
  ['pool.test'] = 'make.webhook',
}
-- registered before the seed's handler, which answers for every other domain
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  local ctor = CTORS[domain]
  if ctor then
    local pool = nil
    if domain == 'pool.test' then
      pool = 'pool-a'
    end
    return kumo.make_queue_config {
      retry_interval = '1s',
      egress_pool = pool,
      protocol = { custom_lua = { constructor = ctor } },
    }
  end
end)
kumo.on('get_egress_pool', function(name)
  return kumo.make_egress_pool {
    name = name,
    entries = {
      { name = 'src-a', weight = 2 },
      { name = 'src-zero', weight = 0 },
      { name = 'src-b', weight = 1 },
    },
  }
end)
kumo.on('get_egress_source', function(name)
  return kumo.make_egress_source { name = name }
end)
kumo.on('make.flaky', function(domain, tenant, campaign)
  local connection = {}
  function connection:send(message)
    append('flaky', message:id() .. '|' .. message:num_attempts())
    if bump(message:id()) == 1 then
      kumo.reject(400, 'failed for some reason')
    end
    return 'OK'
  end
  return connection
end)
kumo.on('make.bounce', function(domain, tenant, campaign)
  local connection = {}
  function connection:send(message)
    append('bounce', message:id())
    kumo.reject(500, 'no such user here')
  end
  return connection
end)
kumo.on('make.nosend', function(domain, tenant, campaign)
  append('ctor-nosend', domain)
  return { close = function(self) end }
end)
kumo.on('make.nilctor', function(domain, tenant, campaign)
  append('ctor-nilctor', domain)
end)
""" + SEED_WEBHOOK


@pytest.fixture(scope="module")
def lua_k(module_kumod_factory):
    return module_kumod_factory(handlers=LUA_PROTOCOLS, name="lua")


def test_custom_lua_webhook_example(kumod_factory):
    """The seed's example as written: send is called (it prints the message)
    and its return string is the Delivery record's content."""
    k = kumod_factory(handlers=SEED_WEBHOOK)
    id, original = send(k, "hook@webhook", subject="webhook example")
    size = reception_size(k, id)
    [rec] = k.wait_records(lambda r: r["id"] == id, type="Delivery")
    check(rec, type="Delivery", id=id, recipient="hook@webhook", queue="webhook",
          site="unspecified->webhook@lua:make.webhook", code=200, content="OK",
          num_attempts=0, protocol="Lua", pool="unspecified", source="unspecified",
          peer=lua_peer("make.webhook"), size=size, subject="webhook example")
    wait_gone(k, id)
    assert [r["type"] for r in k.records() if r["id"] == id] == ["Reception", "Delivery"]
    # send printed the message it was given (stdout shares the diagnostic file,
    # and is flushed at the latest when the daemon exits)
    assert k.stop() == 0
    out = k.diag()
    assert f"with ESMTP id {id} for <hook@webhook>" in out, out[-3000:]
    assert "Subject: webhook example" in out
    assert "Hello from the queue tests." in out


def test_custom_lua_reject_400_is_retried(lua_k):
    k = lua_k
    id, _ = send(k, "u@flaky.test", subject="flaky")
    size = reception_size(k, id)
    [d] = k.wait_records(lambda r: r["id"] == id, type="Delivery", timeout=15)
    rs = k.records()
    [tf] = of(rs, id, "TransientFailure")
    common = dict(id=id, recipient="u@flaky.test", queue="flaky.test",
                  site="unspecified->flaky.test@lua:make.flaky", protocol="Lua",
                  pool="unspecified", source="unspecified", peer=lua_peer("make.flaky"),
                  size=size, subject="flaky")
    check(tf, type="TransientFailure", code=400, content="failed for some reason",
          num_attempts=0, **common)
    check(d, type="Delivery", code=200, content="OK", num_attempts=1, **common)
    assert [r["type"] for r in of(rs, id)] == ["Reception", "TransientFailure", "Delivery"]
    # retry_interval = '1s': the second attempt one second later
    assert_gaps(gaps([tf, d]), [1])
    assert [l for l in read_lines(k, "flaky") if l.startswith(id)] == [f"{id}|0", f"{id}|1"]
    wait_gone(k, id)


def test_custom_lua_reject_500_bounces(lua_k):
    k = lua_k
    id, _ = send(k, "u@bounce.test", subject="bounce")
    size = reception_size(k, id)
    [b] = k.wait_records(lambda r: r["id"] == id, type="Bounce")
    check(b, type="Bounce", id=id, recipient="u@bounce.test", queue="bounce.test",
          site="unspecified->bounce.test@lua:make.bounce", code=500,
          content="no such user here", num_attempts=0, protocol="Lua", pool="unspecified",
          source="unspecified", peer=lua_peer("make.bounce"), size=size, subject="bounce")
    wait_gone(k, id)
    time.sleep(1.5)  # past the retry interval: no further attempt
    assert [r["type"] for r in k.records() if r["id"] == id] == ["Reception", "Bounce"]
    assert read_lines(k, "bounce").count(id) == 1


@pytest.mark.parametrize("domain,ctor", [("nosend.test", "make.nosend"),
                                         ("nilctor.test", "make.nilctor")])
def test_constructor_without_send_is_transient_and_retried(lua_k, domain, ctor):
    """A constructor whose object has no `send` (or that returns nothing):
    each attempt is a TransientFailure with an internal response, and the
    message stays in the spool and is retried."""
    k = lua_k
    id, _ = send(k, f"u@{domain}", subject=ctor)
    tfs = k.wait_records(lambda r: r["id"] == id, type="TransientFailure", count=2, timeout=15)
    for n, tf in enumerate(tfs[:2]):
        assert tf["queue"] == domain
        assert tf["site"] == f"unspecified->{domain}@lua:{ctor}"
        assert tf["num_attempts"] == n
        assert tf["delivery_protocol"] == "Lua"
        assert tf["egress_pool"] == "unspecified" and tf["egress_source"] == "unspecified"
        rsp = tf["response"]
        assert rsp["code"] == 400 and rsp["enhanced_code"] is None, rsp
        assert rsp["content"].startswith("KumoMTA internal:"), rsp
    assert_gaps(gaps(tfs[:2]), [1])
    assert spooled(k, id)
    assert not of(k.records(), id, "Delivery") and not of(k.records(), id, "Bounce")
    assert read_lines(k, f"ctor-{ctor[5:]}")[:1] == [domain]


@pytest.mark.parametrize("domain,ctor", [("nosend.test", "make.nosend"),
                                         ("nilctor.test", "make.nilctor")])
def test_constructor_without_send_record_matches_kumomta(lua_k, domain, ctor):
    k = lua_k
    id, _ = send(k, f"v@{domain}", subject=ctor + " record")
    [tf] = k.wait_records(lambda r: r["id"] == id, type="TransientFailure")
    check(tf, type="TransientFailure", id=id, recipient=f"v@{domain}", queue=domain,
          site=f"unspecified->{domain}@lua:{ctor}", code=400,
          content=re.compile(r"KumoMTA internal: error in deliver_message: .+"), num_attempts=0,
          protocol="Lua", pool="unspecified", source="unspecified", peer=None)


def test_egress_pool_weighted_round_robin(lua_k):
    """pool-a = src-a (2), src-zero (0), src-b (1): KumoMTA's selector starts
    at the second usable entry and then follows the weights; src-zero is never
    used. One message at a time so that the order is the selection order."""
    k = lua_k
    got = []
    for i in range(6):
        id, _ = send(k, f"u{i}@pool.test", subject=f"pool {i}")
        [d] = k.wait_records(lambda r: r["id"] == id, type="Delivery")
        src = d["egress_source"]
        check(d, type="Delivery", id=id, recipient=f"u{i}@pool.test", queue="pool.test",
              site=f"{src}->pool.test@lua:make.webhook", code=200, content="OK",
              num_attempts=0, protocol="Lua", pool="pool-a", source=src,
              peer=lua_peer("make.webhook"))
        got.append(src)
    assert got == ["src-b", "src-a", "src-a", "src-b", "src-a", "src-a"]


# ---- requeue_message -----------------------------------------------------------------------------

REQUEUE = LUA_HELPERS + """
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  if domain == '[10.0.0.1]' then
    return kumo.make_queue_config { protocol = { custom_lua = { constructor = 'make.smarthost' } } }
  end
  return kumo.make_queue_config {
    retry_interval = '1s',
    protocol = { custom_lua = { constructor = 'make.primary' } },
  }
end)
kumo.on('smtp_server_message_received', function(msg, conn_meta)
  if msg:get_first_named_header_value('X-E2E-Tag') == 'hold' then
    msg:set_scheduling { expires = '2099-01-01T00:00:00Z' }
  end
end)
kumo.on('make.primary', function(domain, tenant, campaign)
  local connection = {}
  function connection:send(msg)
    append('primary', msg:id() .. '|' .. msg:num_attempts())
    kumo.reject(400, 'primary is down')
  end
  return connection
end)
kumo.on('make.smarthost', function(domain, tenant, campaign)
  local connection = {}
  function connection:send(msg)
    append('smarthost', msg:id() .. '|' .. msg:num_attempts() .. '|' .. msg:queue_name())
    if msg:get_first_named_header_value('X-E2E-Tag') == 'hold' then
      kumo.reject(400, 'smart host holds it')
    end
    return 'relayed via smart host'
  end
  return connection
end)
-- observes every requeue first, and misbehaves for some queues
kumo.on('requeue_message', function(msg, smtp_response, insert_context, increment_attempts, delay)
  append('requeue-pre', table.concat({ msg:id(), msg:queue_name(), tostring(msg:num_attempts()),
    smtp_response, table.concat(insert_context, ','), tostring(increment_attempts),
    tostring(delay) }, '|'))
  local queue = msg:queue_name()
  if queue == 'rqreject.test' then
    kumo.reject(500, 'requeue refused by policy') -- @reject
  end
  if queue == 'rqerror.test' then
    error('requeue handler exploded') -- @error
  end
  if queue == 'rqnil.test' then
    return nil
  end
end)
""" + SEED_REQUEUE + """
-- and last, what the chain left behind
kumo.on('requeue_message', function(msg, smtp_response, insert_context, increment_attempts, delay)
  append('requeue-post', msg:id() .. '|' .. msg:queue_name() .. '|' .. tostring(msg:num_attempts()))
end)
"""


@pytest.fixture(scope="module")
def rq_run(module_kumod_factory):
    k = module_kumod_factory(handlers=REQUEUE, name="requeue", meta_kind="LocalDisk")
    ids = {
        "move": send(k, "u1@primary.test", subject="moves")[0],
        "hold": send(k, "u2@primary.test", subject="held", extra=b"X-E2E-Tag: hold\r\n")[0],
        "reject": send(k, "u@rqreject.test", subject="reject")[0],
        "error": send(k, "u@rqerror.test", subject="error")[0],
        "nil": send(k, "u@rqnil.test", subject="nil")[0],
    }
    # attempts at 0, 1 and 3 s; rqerror.test once more at 7 s
    k.wait_records(lambda r: r["id"] == ids["move"], type="Delivery", timeout=20)
    k.wait_records(lambda r: r["id"] == ids["error"], type="TransientFailure", count=4,
                   timeout=25)
    k.wait_records(lambda r: r["id"] == ids["nil"], type="TransientFailure", count=3,
                   timeout=20)
    time.sleep(1.0 * kh.SLOW)
    return k, ids


def pre_lines(k, id):
    return [l.split("|")[1:] for l in read_lines(k, "requeue-pre") if l.startswith(id + "|")]


def post_lines(k, id):
    return [l.split("|")[1:] for l in read_lines(k, "requeue-post") if l.startswith(id + "|")]


def test_requeue_smart_host_example(rq_run):
    """After the third transient failure the seed's handler sets meta queue to
    '[10.0.0.1]'; the message is delivered from that queue at once, with its
    attempt count incremented."""
    k, ids = rq_run
    id = ids["move"]
    rs = k.records()
    tfs = of(rs, id, "TransientFailure")
    [d] = of(rs, id, "Delivery")
    assert [r["type"] for r in of(rs, id)] == \
        ["Reception"] + ["TransientFailure"] * 3 + ["Delivery"]
    size = reception_size(k, id)
    for n, tf in enumerate(tfs):
        check(tf, type="TransientFailure", id=id, recipient="u1@primary.test",
              queue="primary.test", site="unspecified->primary.test@lua:make.primary", code=400,
              content="primary is down", num_attempts=n, protocol="Lua", pool="unspecified",
              source="unspecified", peer=lua_peer("make.primary"), size=size)
    check(d, type="Delivery", id=id, recipient="u1@primary.test", queue="[10.0.0.1]",
          site="unspecified->[10.0.0.1]@lua:make.smarthost", code=200,
          content="relayed via smart host", num_attempts=3, protocol="Lua", pool="unspecified",
          source="unspecified", peer=lua_peer("make.smarthost"), size=size)
    # retries at 1 s and 2 s, then the new queue makes it due immediately
    assert_gaps(gaps(tfs), [1, 2])
    assert t(d) - t(tfs[2]) < 0.5 * kh.SLOW, (t(d) - t(tfs[2]))
    assert [l for l in read_lines(k, "primary") if l.startswith(id)] == \
        [f"{id}|0", f"{id}|1", f"{id}|2"]
    assert [l for l in read_lines(k, "smarthost") if l.startswith(id)] == \
        [f"{id}|3|[10.0.0.1]"]
    wait_gone(k, id)


def test_requeue_message_parameters(rq_run):
    """num_attempts is one less than the count after the failure, the response
    is one line, increment_attempts is true and delay is nil; handlers run in
    registration order (the last one sees what the seed's handler changed)."""
    k, ids = rq_run
    id = ids["move"]
    pre = pre_lines(k, id)
    assert [p[:2] for p in pre] == [["primary.test", "0"], ["primary.test", "1"],
                                    ["primary.test", "2"]]
    for queue, attempts, response, context, increment, delay in pre:
        assert response == "400 primary is down"
        assert "LoggedTransientFailure" in context.split(","), context
        assert increment == "true"
        assert delay == "nil"
    assert post_lines(k, id) == [["primary.test", "0"], ["primary.test", "1"],
                                 ["[10.0.0.1]", "2"]]


def test_requeue_message_insert_context_is_the_current_reason(rq_run):
    """KumoMTA passes the reasons of this one requeue: a dispatcher failure is
    exactly ["LoggedTransientFailure"] on every attempt (ready_queue.rs,
    InsertReason::LoggedTransientFailure.into())."""
    k, ids = rq_run
    contexts = [p[3] for p in pre_lines(k, ids["move"])]
    assert contexts == ["LoggedTransientFailure"] * 3


def test_requeue_smart_host_clears_scheduling(rq_run):
    """A message with set_scheduling moves the same way; in its new queue the
    spooled meta has the new queue and no schedule."""
    k, ids = rq_run
    id = ids["hold"]
    rs = k.records()
    tfs = of(rs, id, "TransientFailure")
    assert [r["queue"] for r in tfs] == ["primary.test"] * 3 + ["[10.0.0.1]"]
    assert [r["num_attempts"] for r in tfs] == [0, 1, 2, 3]
    assert tfs[3]["site"] == "unspecified->[10.0.0.1]@lua:make.smarthost"
    assert tfs[3]["response"]["content"] == "smart host holds it"
    assert not of(rs, id, "Delivery") and not of(rs, id, "Expiration")

    def meta():
        with open(k.local_disk_path(id, "meta"), "rb") as f:
            doc = json.loads(f.read())
        return doc if doc["meta"].get("queue") == "[10.0.0.1]" else None
    doc = wait_until(meta, 5, what="the moved message's meta in the spool")
    assert doc.get("schedule") is None, doc
    # the seed's handler does not move it again from the smart host queue
    assert pre_lines(k, id)[3][:2] == ["[10.0.0.1]", "3"]


def test_requeue_handler_reject_bounces(rq_run):
    k, ids = rq_run
    id = ids["reject"]
    rs = k.records()
    assert [r["type"] for r in of(rs, id)] == ["Reception", "TransientFailure", "Bounce"]
    [b] = of(rs, id, "Bounce")
    # a policy bounce: no site, pool, source, protocol or peer (manager.rs)
    check(b, type="Bounce", id=id, recipient="u@rqreject.test", queue="rqreject.test", site="",
          code=500, content="requeue refused by policy", num_attempts=0, protocol=None,
          pool=None, source=None, peer=None, session=False)
    wait_gone(k, id)
    assert len(pre_lines(k, id)) == 1
    assert post_lines(k, id) == []


def test_requeue_handler_error_keeps_the_original_queue(rq_run):
    k, ids = rq_run
    id = ids["error"]
    rs = k.records()
    tfs = of(rs, id, "TransientFailure")
    assert [r["queue"] for r in tfs[:4]] == ["rqerror.test"] * 4
    assert [r["num_attempts"] for r in tfs[:4]] == [0, 1, 2, 3]
    assert_gaps(gaps(tfs[:4]), [1, 2, 4])
    assert not of(rs, id, "Delivery") and not of(rs, id, "Bounce")
    assert spooled(k, id)
    line = line_of(k, "error")
    diag = k.diag()
    assert re.search(rf"policy\.lua:{line}: requeue handler exploded", diag), diag[-3000:]
    # the error stopped the chain: the seed's handler never moved it
    assert post_lines(k, id) == []


def test_requeue_handler_returning_nil_stops_the_chain(rq_run):
    """"...until one explicitly returns nil to signal that no more should be
    triggered": the handlers after it (the seed's, the last observer) are not
    called, so the message is not moved to the smart host."""
    k, ids = rq_run
    id = ids["nil"]
    rs = k.records()
    attempts = [r for r in of(rs, id) if r["type"] in ("TransientFailure", "Delivery")]
    assert [r["queue"] for r in attempts][:3] == ["rqnil.test"] * 3
    assert [r["type"] for r in attempts][:3] == ["TransientFailure"] * 3
    assert not of(rs, id, "Delivery")
    assert post_lines(k, id) == []
    assert spooled(k, id)


# ---- retry timing and expiry ---------------------------------------------------------------------

TIMING = LUA_HELPERS + """
local FAILS = { ['backoff.test'] = 3, ['capped.test'] = 4, ['expire.test'] = 1000 }
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  local p = { custom_lua = { constructor = 'make.failn' } }
  if domain == 'backoff.test' then
    return kumo.make_queue_config { retry_interval = '2s', protocol = p }
  end
  if domain == 'capped.test' then
    return kumo.make_queue_config { retry_interval = '2s', max_retry_interval = '3s', protocol = p }
  end
  if domain == 'expire.test' then
    return kumo.make_queue_config { retry_interval = '2s', max_age = '10s', protocol = p }
  end
end)
kumo.on('make.failn', function(domain, tenant, campaign)
  local connection = {}
  function connection:send(msg)
    if bump(msg:id()) <= FAILS[domain] then
      kumo.reject(400, 'not yet')
    end
    return 'finally'
  end
  return connection
end)
"""


@pytest.fixture(scope="module")
def timing_run(module_kumod_factory):
    k = module_kumod_factory(handlers=TIMING, name="timing")
    ids = {d: send(k, f"u@{d}.test", subject=d)[0] for d in ("backoff", "capped", "expire")}
    k.wait_records(lambda r: r["id"] == ids["backoff"], type="Delivery", timeout=30)
    k.wait_records(lambda r: r["id"] == ids["capped"], type="Delivery", timeout=30)
    k.wait_records(lambda r: r["id"] == ids["expire"], type="Expiration", timeout=30)
    time.sleep(0.5)
    return k, ids


def test_backoff_doubles_from_retry_interval(timing_run):
    """retry_interval = '2s': attempts 2, 4 and 8 s apart (the jitter of a 2 s
    interval is under a second and truncates to zero)."""
    k, ids = timing_run
    id = ids["backoff"]
    rs = k.records()
    tfs = of(rs, id, "TransientFailure")
    [d] = of(rs, id, "Delivery")
    assert [r["type"] for r in of(rs, id)] == ["Reception"] + ["TransientFailure"] * 3 + \
        ["Delivery"]  # no Delayed: each requeue follows a logged TransientFailure
    common = dict(id=id, recipient="u@backoff.test", queue="backoff.test",
                  site="unspecified->backoff.test@lua:make.failn", protocol="Lua",
                  pool="unspecified", source="unspecified", peer=lua_peer("make.failn"))
    for n, tf in enumerate(tfs):
        check(tf, type="TransientFailure", code=400, content="not yet", num_attempts=n, **common)
    check(d, type="Delivery", code=200, content="finally", num_attempts=3, **common)
    assert_gaps(gaps(tfs + [d]), [2, 4, 8])
    wait_gone(k, id)


def test_backoff_is_capped_by_max_retry_interval(timing_run):
    """retry_interval = '2s', max_retry_interval = '3s': 2, 3, 3, 3."""
    k, ids = timing_run
    id = ids["capped"]
    rs = k.records()
    tfs = of(rs, id, "TransientFailure")
    [d] = of(rs, id, "Delivery")
    assert [r["num_attempts"] for r in tfs] == [0, 1, 2, 3]
    assert d["num_attempts"] == 4
    assert d["site"] == "unspecified->capped.test@lua:make.failn"
    assert_gaps(gaps(tfs + [d]), [2, 3, 3, 3])


EXPIRY_CONTENT = re.compile(r"Next delivery time would be 1[3-5]s( \d+ms)?( \d+us)?( \d+ns)? "
                            r"after creation, which exceeds max_age=10s")


def test_max_age_expiry(timing_run):
    """max_age = '10s': attempts at 0, 2 and 6 s; the next would be 8 s later,
    14 s after creation, so the third failure expires the message: exactly one
    Expiration (551 5.4.7) and the spool is empty."""
    k, ids = timing_run
    id = ids["expire"]
    rs = k.records()
    assert [r["type"] for r in of(rs, id)] == ["Reception"] + ["TransientFailure"] * 3 + \
        ["Expiration"]
    tfs = of(rs, id, "TransientFailure")
    [ex] = of(rs, id, "Expiration")
    assert [r["num_attempts"] for r in tfs] == [0, 1, 2]
    assert_gaps(gaps(tfs), [2, 4])
    assert 0 <= t(ex) - t(tfs[2]) < 0.5 * kh.SLOW
    assert ex["queue"] == "expire.test"
    assert ex["site"] == ""
    assert ex["response"]["code"] == 551
    assert ex["response"]["enhanced_code"] == enhanced("5.4.7")
    assert EXPIRY_CONTENT.fullmatch(ex["response"]["content"]), ex
    assert ex["delivery_protocol"] is None
    assert ex["egress_pool"] is None and ex["egress_source"] is None
    assert ex["peer_address"] is None
    wait_gone(k, id)
    time.sleep(1.0)
    assert len(of(k.records(), id, "Expiration")) == 1


def test_max_age_expiration_record_matches_kumomta(timing_run):
    k, ids = timing_run
    id = ids["expire"]
    [ex] = of(k.records(), id, "Expiration")
    check(ex, type="Expiration", id=id, recipient="u@expire.test", queue="expire.test", site="",
          code=551, enh="5.4.7", content=EXPIRY_CONTENT, num_attempts=3, protocol=None,
          pool=None, source=None, peer=None, session=False)


# ---- restart with 1,000 queued messages ----------------------------------------------------------

RESTART_DOWN = LUA_HELPERS + """
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    retry_interval = '1h',
    protocol = { custom_lua = { constructor = 'make.restart' } },
  }
end)
kumo.on('make.restart', function(domain, tenant, campaign)
  local connection = {}
  function connection:send(msg)
    kumo.reject(400, 'come back later')
  end
  return connection
end)
"""

RESTART_UP = RESTART_DOWN.replace("kumo.reject(400, 'come back later')",
                                  "return 'delivered after restart'").replace("'1h'", "'2s'")


def infer_attempts(retry, age):
    """KumoMTA's QueueConfig::infer_num_attempts: the largest n with
    sum(retry * 2^i for i < n) <= age."""
    n, elapsed = 0, 0
    while elapsed + retry * 2 ** n <= age:
        elapsed += retry * 2 ** n
        n += 1
    return n


def test_restart_with_1000_queued_messages(kumod_factory):
    """1,000 messages wait after a transient failure (retry in an hour); kill
    -9; the restarted daemon, whose protocol now works and whose
    retry_interval is 2 s, finds them all in the spool and delivers each
    exactly once. Attempts are inferred from the age at start-up
    (infer_num_attempts with the new retry_interval), the due time is now."""
    k = kumod_factory(handlers=RESTART_DOWN)
    ids = []
    for b in range(20):
        ids += send_batch(k, [f"r{b}-{i}@restart{b % 3}.test" for i in range(50)],
                          subject=f"restart {b}")
    assert len(set(ids)) == 1000
    k.wait_records(type="TransientFailure", count=1000, timeout=120)
    assert len(k.local_disk_ids("data")) == 1000
    # let the youngest be older than one retry_interval of the new policy
    youngest = max(uuid1_unix(i) for i in ids)
    time.sleep(max(0.0, youngest + 3.0 - time.time()))
    k.kill9()
    k.write_policy(default_policy(handlers=RESTART_UP))
    t_restart = time.time()
    k.start()
    delivered = k.wait_records(type="Delivery", count=1000, timeout=120)
    time.sleep(1.0)
    rs = k.records()
    deliveries = [r for r in rs if r["type"] == "Delivery"]
    counts = {}
    for r in deliveries:
        counts[r["id"]] = counts.get(r["id"], 0) + 1
    assert set(counts) == set(ids), "lost or unknown messages"
    assert [i for i, c in counts.items() if c != 1] == [], "duplicates"
    assert len(deliveries) == 1000 == len(delivered)
    for r in deliveries:
        created = uuid1_unix(r["id"])
        ages = range(int(t_restart - created) - 1, int(r["timestamp"] - created) + 2)
        allowed = {infer_attempts(2, a) for a in ages}
        assert r["num_attempts"] in allowed, (r["num_attempts"], allowed, r)
        assert r["num_attempts"] >= 1
        assert r["response"]["content"] == "delivered after restart"
        assert r["site"] == f"unspecified->{r['queue']}@lua:make.restart"
        assert r["delivery_protocol"] == "Lua"
    tfs = [r for r in rs if r["type"] == "TransientFailure"]
    assert len(tfs) == 1000 and {r["id"] for r in tfs} == set(ids)
    assert all(r["num_attempts"] == 0 for r in tfs)
    # enumerated messages are due at once: no Delayed, Bounce or Expiration
    assert not [r for r in rs if r["type"] in ("Bounce", "Expiration", "Delayed")]
    wait_until(lambda: not k.local_disk_ids("data"), 20, what="an empty spool")


# ---- bad policy input ----------------------------------------------------------------------------

BAD_INPUT = """
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  local p = { custom_lua = { constructor = 'make.ok' } }
  if domain == 'badq.test' then
    return kumo.make_queue_config { retry_intervall = '5m', protocol = p } -- @queue_key
  end
  if domain == 'baddur.test' then
    return kumo.make_queue_config { retry_interval = 'soon', protocol = p } -- @duration
  end
  if domain == 'raise.test' then
    error('get_queue_config exploded') -- @raise
  end
  if domain == 'badpool.test' then
    return kumo.make_queue_config { egress_pool = 'badpool', protocol = p }
  end
  if domain == 'badsrc.test' then
    return kumo.make_queue_config { egress_pool = 'goodpool', protocol = p }
  end
  return kumo.make_queue_config { protocol = p }
end)
kumo.on('get_egress_pool', function(name)
  if name == 'badpool' then
    return kumo.make_egress_pool { name = name, entries = {}, entires = {} } -- @pool_key
  end
  return kumo.make_egress_pool { name = name, entries = { { name = 'badsrc' } } }
end)
kumo.on('get_egress_source', function(name)
  return kumo.make_egress_source { name = name, source_addr = '127.0.0.1' } -- @source_key
end)
kumo.on('get_egress_path_config', function(routing_domain, egress_source, site_name)
  if routing_domain == 'badpath.test' then
    return kumo.make_egress_path { conection_limit = 5 } -- @path_key
  end
  return kumo.make_egress_path {}
end)
kumo.on('make.ok', function(domain, tenant, campaign)
  return { send = function(self, msg) return 'ok' end }
end)
"""


@pytest.fixture(scope="module")
def bad_run(module_kumod_factory):
    k = module_kumod_factory(handlers=BAD_INPUT, name="bad")
    ids = {d: send(k, f"u@{d}.test", subject=d)[0]
           for d in ("badq", "baddur", "raise", "badpool", "badsrc", "badpath", "good")}
    k.wait_records(lambda r: r["id"] == ids["good"], type="Delivery")
    time.sleep(0.5 * kh.SLOW)
    return k, ids


@pytest.mark.parametrize("domain,marker,maker,key", [
    ("badq", "queue_key", "make_queue_config", "retry_intervall"),
    ("baddur", "duration", "make_queue_config", "retry_interval"),
    ("badpool", "pool_key", "make_egress_pool", "entires"),
    ("badsrc", "source_key", "make_egress_source", "source_addr"),
    ("badpath", "path_key", "make_egress_path", "conection_limit"),
])
def test_bad_maker_input_is_named_with_file_and_line(bad_run, domain, marker, maker, key):
    k, ids = bad_run
    line = line_of(k, marker)
    diag = k.diag()
    hits = [l for l in diag.splitlines()
            if f"{k.policy_path}:{line}:" in l and maker in l and key in l]
    assert hits, f"no diagnostic naming {maker}, {key} and policy.lua:{line}:\n{diag[-4000:]}"
    assert " ERROR " in hits[0]
    # the message is safe in the spool, nothing was logged for it but its reception
    id = ids[domain]
    assert spooled(k, id)
    assert [r["type"] for r in k.records() if r["id"] == id] == ["Reception"]


def test_get_queue_config_that_raises(bad_run):
    k, ids = bad_run
    line = line_of(k, "raise")
    diag = k.diag()
    assert re.search(rf"queue=raise\.test .*{re.escape(k.policy_path)}:{line}: "
                     r"get_queue_config exploded", diag), diag[-4000:]
    id = ids["raise"]
    assert spooled(k, id)
    assert [r["type"] for r in k.records() if r["id"] == id] == ["Reception"]
    # other queues are unaffected
    [d] = of(k.records(), ids["good"], "Delivery")
    assert d["site"] == "unspecified->good.test@lua:make.ok"


# ---- what happens a minute later (slow) ----------------------------------------------------------

ONE_MINUTE = LUA_HELPERS + """
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  if domain == 'blocked.example.com' then
    return kumo.make_queue_config { protocol = { maildir_path = '{dir}/blocker/maildir' } }
  end
  if domain == 'raise.test' then
    error('not configured yet') -- @raise
  end
end)
"""

ONE_MINUTE_FIXED = ONE_MINUTE.replace(
    "error('not configured yet') -- @raise",
    "return kumo.make_queue_config { protocol = { maildir_path = '{dir}/fixed-maildir' } }")


@pytest.fixture(scope="module")
def one_minute_run(module_kumod_factory):
    """A Maildir write that fails once and a get_queue_config that raises
    until the policy is fixed; both are observed for up to 80 s."""
    k = module_kumod_factory(handlers=ONE_MINUTE, name="one_minute", start=False)
    make_blocker(k)
    k.start()
    md_id, md_original = send(k, "u@blocked.example.com", subject="maildir retry")
    [tf] = k.wait_records(lambda r: r["id"] == md_id, type="TransientFailure")
    os.unlink(k.path("blocker"))  # the next attempt can write
    rq_id, rq_original = send(k, "u@raise.test", subject="raise then fixed")
    k.wait_diag(r"queue=raise\.test .*not configured yet")
    t_raise = time.time()
    k.write_policy(default_policy(handlers=ONE_MINUTE_FIXED))
    k.sighup()
    k.wait_diag(r"policy reloaded")
    k.wait_records(lambda r: r["id"] in (md_id, rq_id), type="Delivery", count=2, timeout=80)
    return k, dict(md=(md_id, md_original, tf), rq=(rq_id, rq_original, t_raise))


@pytest.mark.slow
def test_maildir_write_failure_is_retried_about_a_minute_later(one_minute_run):
    """"Failures to write to the maildir will cause the message to be delayed
    and retried approximately 1 minute later. The normal message retry
    schedule does not apply." (the queue's retry_interval is the default 20
    minutes)."""
    k, runs = one_minute_run
    id, original, tf = runs["md"]
    rs = k.records()
    [d] = of(rs, id, "Delivery")
    assert [r["type"] for r in of(rs, id)] == ["Reception", "TransientFailure", "Delivery"]
    assert 55 <= t(d) - t(tf) <= 75, t(d) - t(tf)
    assert d["queue"] == "blocked.example.com"
    assert d["delivery_protocol"] == "Maildir"
    assert d["num_attempts"] == 1
    new = k.path("blocker", "maildir", "new")
    [name] = os.listdir(new)
    with open(os.path.join(new, name), "rb") as f:
        check_stored(f.read(), id=id, ehlo=EHLO, recipient="u@blocked.example.com",
                     original=original)
    wait_gone(k, id)


@pytest.mark.slow
def test_message_of_a_raising_get_queue_config_is_delivered_after_the_fix(one_minute_run):
    """The message stayed in the spool while get_queue_config raised; after
    the policy is fixed and reloaded it is configured again and delivered."""
    k, runs = one_minute_run
    id, original, t_raise = runs["rq"]
    rs = k.records()
    [d] = of(rs, id, "Delivery")
    assert [r["type"] for r in of(rs, id)] == ["Reception", "Delivery"]
    assert d["queue"] == "raise.test"
    assert d["delivery_protocol"] == "Maildir"
    assert t(d) - t_raise <= 75
    new = k.path("fixed-maildir", "new")
    [name] = os.listdir(new)
    with open(os.path.join(new, name), "rb") as f:
        check_stored(f.read(), id=id, ehlo=EHLO, recipient="u@raise.test", original=original)
    wait_gone(k, id)
