"""Events out to message brokers (docs/reference/kumo.amqp/, kumo.nats/,
userguide/policy/amqp.md and nats.md): a real RabbitMQ (Debian's
rabbitmq-server) and a real NATS server with JetStream (nats-server -js),
each started once for this module on loopback ports with their own
directories; the tests read what arrived with clients of their own
(broker_peers.py).

- The reference pages' examples run as documented (build_client's
  publish/wait giving "NotRequested", basic_publish, nats connect/publish
  with the ack fields, close) and bad input gives clear errors.
- A kumod whose log hooks (policy-extras.log_hooks, custom_lua constructors
  as in the user guide) publish every Reception and Delivery record to
  RabbitMQ (basic_publish, publisher confirms, persistent messages) and to a
  JetStream stream (with Nats-Msg-Id, so the stream keeps each record once).
- Both brokers stopped in the middle of the stream: the records wait in the
  hooks' queues (TransientFailure, retried) and all arrive after the
  brokers come back; none is lost.
"""
import json
import os
import smtplib
import subprocess
import time
from email.message import EmailMessage

import pytest

import broker_peers as bp
import kumod_harness as kh

QUEUE = "kumod_events"
STREAM = "KUMOD"
SUBJECT = "kumod.events"


@pytest.fixture(scope="module")
def brokers(tmp_path_factory):
    base = str(tmp_path_factory.mktemp("brokers"))
    rabbit = bp.Rabbit(base)
    nats = bp.Nats(base)
    try:
        rabbit.start()
        nats.start()
        c = bp.AmqpClient(rabbit.port)
        c.queue_declare(QUEUE, durable=True)
        c.queue_declare("doc_examples", durable=False)
        c.close()
        n = bp.NatsClient(nats.port)
        n.create_stream(STREAM, [SUBJECT, "doc.>"])
        n.close()
        yield rabbit, nats
    finally:
        rabbit.close()
        nats.close()


def run_script(tmp_path, text, env=None):
    path = tmp_path / "script.lua"
    path.write_text(text)
    e = dict(os.environ)
    # the script's own allocations are checked for leaks (kumod e2e runs
    # turn LeakSanitizer off; a script run ends cleanly)
    e["ASAN_OPTIONS"] = "detect_leaks=1"
    e.update(env or {})
    pre = ["gdb", "-batch", "-ex", "run", "-ex", "thread apply all bt 8", "--args"] if os.environ.get("E2E_GDB") else []
    p = subprocess.run(pre + [kh.kumod_bin(), "--script", str(path)], capture_output=True, text=True,
                       timeout=120, env=e)
    return p


SCRIPT = r"""
local kumo = require 'kumo'
local AMQP = 'amqp://127.0.0.1:%(amqp)d'
local NATS = '127.0.0.1:%(nats)d'
local function expect_error(pattern, f, ...)
  local ok, err = pcall(f, ...)
  assert(not ok, 'expected an error matching ' .. pattern)
  assert(tostring(err):find(pattern), tostring(err))
  print('error: ' .. tostring(err))
end

-- build_client.md's example, with our broker's port
local client = kumo.amqp.build_client(AMQP)
local confirm = client:publish {
  routing_key = 'doc_examples',
  payload = 'w00t!',
}
local result = confirm:wait()
assert(result.status == 'NotRequested')
assert(result.reply_code == nil and result.reply_text == nil)
expect_error('confirmation already taken', confirm.wait, confirm)
local r = client:publish_with_timeout({ routing_key = 'doc_examples', payload = 'two',
  properties = { content_type = 'text/plain' } }, 5000)
assert(r.status == 'NotRequested')
client:close()
expect_error('already closed', client.close, client)
expect_error('client is closed', client.publish, client, { routing_key = 'x', payload = 'y' })

-- basic_publish.md: every property, confirmed by the broker
kumo.amqp.basic_publish {
  routing_key = 'doc_examples',
  payload = 'three',
  app_id = 'kumod', cluster_id = 'c1', content_encoding = 'identity',
  content_type = 'application/json', correlation_id = 'corr', delivery_mode = 2,
  expiration = '60000', headers = { tag = 'x', n = 7, flag = true, list = { 1, 2 } },
  message_id = 'mid', message_type = 'mt', priority = 5, reply_to = 'rt',
  timestamp = 1700000000, user_id = 'guest',
  connection = { host = '127.0.0.1', port = %(amqp)d, connection_name = 'e2e',
                 pool_size = 2, publish_timeout = '5s', connect_timeout = '5s' },
}
-- unroutable with mandatory: the broker returns it, and that is an error
expect_error('returned the message: 312 NO_ROUTE', kumo.amqp.basic_publish, {
  routing_key = 'no_such_queue', payload = 'x', mandatory = true,
  connection = { host = '127.0.0.1', port = %(amqp)d } })
expect_error("404 NOT_FOUND %%- no exchange 'nope'", kumo.amqp.basic_publish, {
  routing_key = 'doc_examples', payload = 'x', exchange = 'nope',
  connection = { host = '127.0.0.1', port = %(amqp)d } })
expect_error('403 ACCESS_REFUSED', kumo.amqp.basic_publish, {
  routing_key = 'doc_examples', payload = 'x',
  connection = { host = '127.0.0.1', port = %(amqp)d, password = 'wrong' } })
expect_error('cannot connect', kumo.amqp.basic_publish, {
  routing_key = 'doc_examples', payload = 'x', connection = { host = '127.0.0.1', port = 1 } })
expect_error('unknown field `routingkey`', kumo.amqp.basic_publish, {
  routingkey = 'x', payload = 'x', connection = { host = '127.0.0.1' } })
expect_error('`payload` is required', kumo.amqp.basic_publish, {
  routing_key = 'x', connection = { host = '127.0.0.1' } })
expect_error('connection.host` is required', kumo.amqp.basic_publish, {
  routing_key = 'x', payload = 'x', connection = {} })
expect_error('`priority` must be between 0 and 255', kumo.amqp.basic_publish, {
  routing_key = 'x', payload = 'x', priority = 300, connection = { host = '127.0.0.1' } })
expect_error('invalid AMQP URI', kumo.amqp.build_client, 'http://127.0.0.1/')
expect_error('cannot connect', kumo.amqp.build_client, 'amqp://127.0.0.1:1')
-- the pool is reused: many publishes, few connections
for i = 1, 300 do
  kumo.amqp.basic_publish { routing_key = 'doc_examples', payload = 'n' .. i,
    connection = { host = '127.0.0.1', port = %(amqp)d } }
end

-- connect.md / publish.md / close.md
local nats = kumo.nats.connect {
  servers = { NATS },
  name = 'nats-client',
}
local unique_id = 'unique-id-' .. tostring(kumo.uuid.new_v4())
local ack = nats:publish {
  subject = 'doc.subject',
  payload = 'payload',
  headers = {
    ['Nats-Msg-Id'] = unique_id,
  },
  await_ack = true,
}
assert(ack.stream == 'KUMOD', ack.stream)
assert(math.type(ack.sequence) == 'integer' and ack.sequence >= 1)
assert(ack.duplicate == false and ack.domain == '')
local again = nats:publish { subject = 'doc.subject', payload = 'payload',
  headers = { ['Nats-Msg-Id'] = unique_id } }
assert(again.duplicate == true and again.sequence == ack.sequence)
local noack = nats:publish { subject = 'doc.noack', payload = 'fire', await_ack = false }
assert(next(noack) == nil)
expect_error('No responders', nats.publish, nats, { subject = 'nostream', payload = 'x' })
expect_error('without spaces', nats.publish, nats, { subject = 'a b', payload = 'x' })
expect_error('must not contain CR', nats.publish, nats, { subject = 'doc.x', payload = 'x',
  headers = { X = 'a\r\nb' } })
expect_error('unknown field `subj`', nats.publish, nats, { subj = 'doc.x', payload = 'x' })
nats:close()
expect_error('client was closed', nats.publish, nats, { subject = 'doc.x', payload = 'x' })
-- the token example (keysource); nats-server without auth ignores it
local tok = kumo.nats.connect {
  servers = { NATS, NATS },
  name = 'nats-client',
  auth = { token = { key_data = 'token' } },
}
tok:close()
expect_error('cannot connect', kumo.nats.connect, { servers = { '127.0.0.1:1' } })
expect_error('both of username and password', kumo.nats.connect, { servers = { NATS },
  auth = { username = { key_data = 'u' } } })
expect_error('unknown field `server`', kumo.nats.connect, { server = { NATS } })
expect_error('tls_first', kumo.nats.connect, { servers = { NATS }, tls_first = true })
print('done')
"""


def test_reference_examples_and_errors(brokers, tmp_path):
    rabbit, nats = brokers
    p = run_script(tmp_path, SCRIPT % {"amqp": rabbit.port, "nats": nats.port})
    assert p.returncode == 0, p.stdout + p.stderr
    assert "done" in p.stdout
    assert "ERROR: LeakSanitizer" not in p.stderr, p.stderr
    c = bp.AmqpClient(rabbit.port)
    got = c.drain("doc_examples")
    c.close()
    bodies = [b for b, _ in got]
    assert bodies[:3] == [b"w00t!", b"two", b"three"], bodies[:5]
    assert got[1][1] == {"content_type": "text/plain"}
    assert got[2][1] == {
        "app_id": "kumod", "cluster_id": "c1", "content_encoding": "identity",
        "content_type": "application/json", "correlation_id": "corr", "delivery_mode": 2,
        "expiration": "60000", "headers": {"tag": "x", "n": 7, "flag": True, "list": [1, 2]},
        "message_id": "mid", "type": "mt", "priority": 5, "reply_to": "rt",
        "timestamp": 1700000000, "user_id": "guest"}
    assert bodies[3:] == [b"n%d" % i for i in range(1, 301)]
    n = bp.NatsClient(nats.port)
    msgs = [(s, d) for _, s, _, d in n.stream_messages(STREAM) if s.startswith("doc.")]
    n.close()
    assert msgs == [("doc.subject", b"payload"), ("doc.noack", b"fire")]


HANDLERS = """
local log_hooks = require 'policy-extras.log_hooks'
local NATS = '127.0.0.1:%(nats)d'

log_hooks:new {
  name = 'amqp',
  queue_config = { retry_interval = '1s', max_retry_interval = '2s' },
  constructor = function(domain, tenant, campaign)
    local sender = {}
    function sender:send(message)
      kumo.amqp.basic_publish {
        routing_key = '%(queue)s',
        payload = message:get_data(),
        content_type = 'application/json',
        delivery_mode = 2,
        connection = { host = '127.0.0.1', port = %(amqp)d,
                       connect_timeout = '3s', publish_timeout = '3s' },
      }
      return 'published to amqp'
    end
    function sender:close() end
    return sender
  end,
}

-- one client per Lua VM, made on first use (the user guide's example makes
-- it in init, which runs on one reactor only)
local nats
log_hooks:new {
  name = 'nats',
  queue_config = { retry_interval = '1s', max_retry_interval = '2s' },
  constructor = function(domain, tenant, campaign)
    local sender = {}
    function sender:send(message)
      if not nats then
        nats = kumo.nats.connect { servers = { NATS }, name = 'kumod-e2e',
                                   request_timeout = '2s', connection_timeout = '2s' }
      end
      local record = kumo.serde.json_parse(message:get_data())
      local ack = nats:publish {
        subject = '%(subject)s',
        payload = message:get_data(),
        -- JetStream keeps one copy of a record that is sent again
        headers = { ['Nats-Msg-Id'] = record.type .. ':' .. record.id },
      }
      return 'published to nats stream ' .. ack.stream .. ' seq ' .. ack.sequence
    end
    function sender:close() end
    return sender
  end,
}

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


def send(k, rcpts):
    with smtplib.SMTP("127.0.0.1", k.smtp_port, timeout=30) as s:
        for rcpt in rcpts:
            m = EmailMessage()
            m["From"] = "sender@origin.test"
            m["To"] = rcpt
            m["Subject"] = "events out"
            m.set_content("body\n")
            s.send_message(m, from_addr="sender@origin.test", to_addrs=[rcpt])


def key(r):
    return (r["type"], r["id"])


class Collector:
    """What arrived at both brokers so far."""

    def __init__(self, rabbit, nats):
        self.rabbit, self.nats = rabbit, nats
        self.amqp = []

    def poll_amqp(self):
        try:
            c = bp.AmqpClient(self.rabbit.port)
        except OSError:
            return self.amqp
        try:
            for body, props in c.drain(QUEUE):
                assert props.get("content_type") == "application/json"
                assert props.get("delivery_mode") == 2
                self.amqp.append(json.loads(body))
        finally:
            c.close()
        return self.amqp

    def nats_records(self):
        n = bp.NatsClient(self.nats.port)
        try:
            return [json.loads(d) for _, s, _, d in n.stream_messages(STREAM) if s == SUBJECT]
        finally:
            n.close()


def originals(k):
    return {key(r) for r in k.records()
            if r.get("reception_protocol") != "LogRecord" and r["type"] in ("Reception",
                                                                              "Delivery")}


def test_log_hooks_publish_records_and_survive_broker_restarts(brokers, kumod_factory):
    rabbit, nats = brokers
    col = Collector(rabbit, nats)
    col.poll_amqp()  # earlier tests' leftovers, if any
    col.amqp.clear()
    k = kumod_factory(handlers=HANDLERS % {"amqp": rabbit.port, "nats": nats.port,
                                           "queue": QUEUE, "subject": SUBJECT})
    # 1. both brokers up: every record arrives, once per hook
    send(k, [f"ok{i}@sink.test" for i in range(3)])
    kh.wait_until(lambda: len(originals(k)) == 6, timeout=30, what="the mail's records")
    want = originals(k)
    kh.wait_until(lambda: {key(r) for r in col.poll_amqp()} >= want, timeout=30,
                  what="the records in RabbitMQ")
    kh.wait_until(lambda: {key(r) for r in col.nats_records()} >= want, timeout=30,
                  what="the records in the JetStream stream")
    local = {key(r): r for r in k.records()}
    for r in col.amqp + col.nats_records():
        lr = local[key(r)]
        for f in ("sender", "recipient", "queue", "timestamp", "response"):
            assert r[f] == lr[f], (f, r, lr)
    # the hooks' own deliveries are logged, with what the brokers answered
    hooked = [r for r in k.records() if r.get("reception_protocol") == "LogRecord"
              and r["type"] == "Delivery"]
    assert {r["queue"] for r in hooked} == {"amqp.log_hook", "nats.log_hook"}
    assert any("published to nats stream KUMOD seq" in r["response"]["content"]
               for r in hooked), hooked

    # 2. both brokers stop; mail goes on; the records wait in the hooks' queues
    rabbit.stop()
    nats.stop()
    send(k, [f"later{i}@sink.test" for i in range(5)])
    kh.wait_until(lambda: len(originals(k)) == 16, timeout=30, what="the new mail's records")

    def failures():
        return {r["queue"] for r in k.records() if r.get("reception_protocol") == "LogRecord"
                and r["type"] == "TransientFailure"}

    kh.wait_until(lambda: failures() >= {"amqp.log_hook", "nats.log_hook"}, timeout=60,
                  what="transient failures of both hooks while the brokers are down")
    tf = [r for r in k.records() if r.get("reception_protocol") == "LogRecord"
          and r["type"] == "TransientFailure"]
    texts = " | ".join(r["response"]["content"] for r in tf)
    assert "kumo.amqp.basic_publish" in texts and "cannot connect" in texts, texts
    assert "client:publish" in texts or "kumo.nats.connect" in texts, texts

    # 3. the brokers come back: every record arrives, none is lost
    nats.start()
    rabbit.start()
    want = originals(k)
    assert len(want) == 16
    kh.wait_until(lambda: {key(r) for r in col.poll_amqp()} >= want, timeout=120,
                  what="every record in RabbitMQ after its restart")
    kh.wait_until(lambda: {key(r) for r in col.nats_records()} >= want, timeout=120,
                  what="every record in JetStream after the restart")
    time.sleep(1.0)
    amqp = col.poll_amqp()
    assert {key(r) for r in amqp} == want
    dups = len(amqp) - len(want)
    print(f"RabbitMQ: {len(amqp)} records for {len(want)}, {dups} duplicates")
    nrec = col.nats_records()
    # the Nats-Msg-Id header makes JetStream keep each record once
    assert sorted(key(r) for r in nrec) == sorted(want)
