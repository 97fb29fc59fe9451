"""Issue 16/21: the events smtp_server_rewrite_response,
smtp_client_rewrite_delivery_status and shutdown_logging fire as their
KumoMTA reference pages say (docs/reference/events/), checked through real
sockets: smtplib and a raw socket in, an aiosmtpd peer out."""
import json
import smtplib
import socket

import pytest

import kumod_harness as kh
from smtpdeliv_peers import SmtpPeer

PEER_HOST = "127.0.0.81"

# the page's own example, verbatim
REWRITE_EXAMPLE = """
kumo.on(
  'smtp_server_rewrite_response',
  function(status, response, command, conn_meta)
    if command == 'DATA' and status == 250 then
      return 250, 'super fantastic!\\n' .. response
    end

    -- leave the status and response unchanged
  end
)
"""


def raw_session(k, lines):
    """Sends each line and returns every reply (a list of raw reply lines)."""
    out = []
    with socket.create_connection(("127.0.0.1", k.smtp_port), timeout=10) as s:
        f = s.makefile("rb")

        def reply():
            got = []
            while True:
                try:
                    line = f.readline()
                except ConnectionResetError:
                    # kumod closed after a 421 while our next line was on its
                    # way: the kernel answers that line with a reset
                    return got
                if not line:
                    return got
                got.append(line.decode())
                if line[3:4] == b" ":
                    return got
        out.append(reply())
        for line in lines:
            try:
                s.sendall(line.encode() + b"\r\n")
            except (BrokenPipeError, ConnectionResetError):
                out.append([])  # closed: no reply
                continue
            out.append(reply())
    return out


def test_server_rewrite_response_page_example(kumod_factory):
    k = kumod_factory(handlers=REWRITE_EXAMPLE)
    replies = raw_session(k, ["EHLO e2e.test", "MAIL FROM:<a@src.example>",
                              "RCPT TO:<b@dst.example>", "DATA",
                              "Subject: x\r\n\r\nbody\r\n.", "QUIT"])
    data = replies[5]
    assert data[0] == "250-super fantastic!\r\n", data
    assert data[1].startswith("250 OK ids="), data
    # every other reply is as it was
    assert replies[2] == ['250 OK EnvelopeAddress("a@src.example")\r\n'], replies
    assert replies[4][0].startswith("354 "), replies


def test_server_rewrite_response_arguments_and_421(kumod_factory):
    """command is nil for the banner and for the replies KumoMTA sends
    without one (EHLO, NOOP, RSET, QUIT), the command line otherwise;
    conn_meta is the connection's meta; a rewrite to 421 closes the
    connection; the Rejection record has the rewritten reply."""
    handlers = """
kumo.on('smtp_server_rewrite_response', function(status, response, command, conn_meta)
  if command == nil and status == 220 then
    return nil, 'hello from ' .. conn_meta:get_meta('received_from') .. '\\nsecond line'
  end
  if command and command:find('^MAIL') and status == 250 then
    return 550, '5.7.1 not today'
  end
  if command and command:find('^RCPT') then
    return 421, '4.7.0 ' .. command .. ' said ' .. status .. ' ' .. response
  end
end)
"""
    k = kumod_factory(handlers=handlers, start=False)
    k.start(wait=False)
    kh.wait_until(lambda: (k.banner() or b"").startswith(b"220-"), 30, what="the banner")
    replies = raw_session(k, ["EHLO e2e.test", "MAIL FROM:<a@src.example>",
                              "RCPT TO:<b@dst.example>", "QUIT"])
    assert replies[0][0].startswith("220-hello from 127.0.0.1"), replies[0]
    assert replies[0][1] == "220 second line\r\n", replies[0]
    assert replies[2] == ["550 5.7.1 not today\r\n"], replies
    # the page's warning: a rewritten status does not change the transaction
    # (MAIL was accepted, whatever the client was told)
    assert replies[3] == ['421 4.7.0 RCPT TO:<b@dst.example> said 250 OK '
                          'EnvelopeAddress("b@dst.example")\r\n'], replies
    assert replies[4] == [], "the connection stays open after a 421"
    [rej] = k.wait_records(lambda r: r["type"] == "Rejection" and
                           r["response"]["code"] == 550, timeout=10)
    assert rej["response"]["content"] == "not today", rej
    assert rej["response"]["enhanced_code"] == {"class": 5, "subject": 7, "detail": 1}, rej
    assert rej["response"]["command"].startswith("MAIL FROM:<a@src.example>"), rej


def test_server_rewrite_response_errors_keep_reply(kumod_factory):
    """An error, kumo.reject, a bad status or text: logged, reply unchanged."""
    handlers = """
kumo.on('smtp_server_rewrite_response', function(status, response, command, conn_meta)
  if command and command:find('^MAIL') then error('boom in rewrite') end
  if command and command:find('^RCPT') then kumo.reject(421, 'no') end
  if response == 'the goggles do nothing' then return 'abc', 'text' end
  if response == 'Reset state' then return 250, 'a\\rb' end
  if response:find('Aloha') then return 99, 'x' end
end)
"""
    k = kumod_factory(handlers=handlers)
    replies = raw_session(k, ["EHLO e2e.test", "MAIL FROM:<a@src.example>",
                              "RCPT TO:<b@dst.example>", "NOOP", "RSET", "QUIT"])
    assert replies[1][0].startswith("250-mx.e2e.test Aloha"), replies[1]
    assert replies[2] == ['250 OK EnvelopeAddress("a@src.example")\r\n'], replies
    assert replies[3] == ['250 OK EnvelopeAddress("b@dst.example")\r\n'], replies
    assert replies[4] == ["250 the goggles do nothing\r\n"], replies
    assert replies[5] == ["250 Reset state\r\n"], replies
    diag = k.diag()
    assert "boom in rewrite" in diag
    assert "bare CR" in diag
    assert "not an SMTP reply code" in diag


def test_server_rewrite_response_smtplib(kumod_factory):
    """A real client sees the rewritten multi-line DATA reply."""
    k = kumod_factory(handlers=REWRITE_EXAMPLE)
    with smtplib.SMTP("127.0.0.1", k.smtp_port, timeout=10) as s:
        s.ehlo("e2e.test")
        s.mail("a@src.example")
        s.rcpt("b@dst.example")
        code, text = s.data(b"Subject: x\r\n\r\nbody\r\n")
    assert code == 250
    assert text.decode().startswith("super fantastic!\nOK ids="), text


# ---- smtp_client_rewrite_delivery_status ----------------------------------------------------

@pytest.fixture(scope="module")
def peer():
    p = SmtpPeer(host=PEER_HOST)
    p.start()
    yield p
    p.stop()


def client_policy(peer, handler):
    return f"""
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    protocol = {{ smtp = {{ mx_list = {{ '[{PEER_HOST}]' }} }} }},
    retry_interval = '1h',
  }}
end)
kumo.on('get_egress_path_config', function(domain, source, site)
  return kumo.make_egress_path {{ smtp_port = {peer.port}, enable_tls = 'Disabled',
                                 prohibited_hosts = {{}} }}
end)
{handler}
"""


def send(k, rcpts, subject="hello", headers=""):
    with smtplib.SMTP("127.0.0.1", k.smtp_port, timeout=10) as s:
        s.ehlo("e2e.test")
        s.mail("sender@src.example")
        for r in rcpts:
            s.rcpt(r)
        code, text = s.data(f"Subject: {subject}\r\n{headers}\r\nbody\r\n".encode())
    assert code == 250, text
    return kh.parse_ids(text.decode())[0]


def test_client_rewrite_page_example(kumod_factory, peer, tmp_path):
    """The page's example: a JSON file of patterns, kumo.memoize and
    kumo.regex_set_map; a 452 over-quota becomes a Bounce with code 500 and
    the note appended; a 451 that no pattern matches stays transient."""
    rules = tmp_path / "dsn_rewrite.json"
    rules.write_text(json.dumps({
        "4\\.2\\.1 <.+>: Recipient address rejected: this mailbox is inactive and has been "
        "disabled": 500,
        "4\\.2\\.2 The email account that you tried to reach is over quota\\.": 500,
    }))
    handler = """
local get_dsn_classifier = kumo.memoize(function()
  local data = kumo.json_load 'RULES'
  return kumo.regex_set_map.new(data)
end, {
  name = 'dsn_rewrite',
  ttl = '5 minutes',
  capacity = 1,
})

kumo.on(
  'smtp_client_rewrite_delivery_status',
  function(response, domain, tenant, campaign, routing_domain)
    local map = get_dsn_classifier()
    return map[response]
  end
)
""".replace("RULES", str(rules))
    k = kumod_factory(handlers=client_policy(peer, handler))
    over = "452 4.2.2 The email account that you tried to reach is over quota."
    peer.rcpt_reply = lambda a: over if a.startswith("full@") else (
        "451 4.3.0 try later" if a.startswith("later@") else None)
    try:
        a = send(k, ["full@quota.example"], "full")
        b = send(k, ["later@quota.example"], "later")
        c = send(k, ["ok@quota.example"], "ok")
        [bounce] = k.wait_records(lambda r: r["id"] == a and r["type"] == "Bounce", timeout=20)
        [tf] = k.wait_records(lambda r: r["id"] == b and r["type"] == "TransientFailure",
                              timeout=20)
        k.wait_records(lambda r: r["id"] == c and r["type"] == "Delivery", timeout=20)
    finally:
        peer.rcpt_reply = None
    assert bounce["response"]["code"] == 500, bounce
    assert bounce["response"]["content"] == (
        "The email account that you tried to reach is over quota. "
        "(kumomta: status was rewritten from 452 -> 500)"), bounce
    assert bounce["response"]["enhanced_code"] == {"class": 4, "subject": 2, "detail": 2}
    assert tf["response"]["code"] == 451, tf
    assert "rewritten" not in tf["response"]["content"], tf


def test_client_rewrite_arguments(kumod_factory, peer):
    """The queue name parts as arguments (tenant, campaign, routing_domain
    defaulting to the domain); a handler that waits; returning the same
    code changes nothing; an error keeps the response; 2xx never asks."""
    handler = """
kumo.on('smtp_server_message_received', function(msg)
  if msg:get_first_named_header_value('X-E2E-Tenant') then
    msg:set_meta('tenant', 'tnt')
    msg:set_meta('campaign', 'cmp')
  end
end)
kumo.on('smtp_client_rewrite_delivery_status',
  function(response, domain, tenant, campaign, routing_domain)
    kumo.sleep(0.05)
    local tag = string.format('%s|%s|%s|%s|%s', response, domain, tostring(tenant),
                              tostring(campaign), routing_domain)
    print('REWRITE-ARGS ' .. tag)
    if response:find('boom') then error('rewrite failed on purpose') end
    if response:find('same') then return 451 end
    return 550
  end)
"""
    k = kumod_factory(handlers=client_policy(peer, handler))
    peer.rcpt_reply = lambda a: ("451 4.1.1 box <%s> busy" % a) if a.startswith("x") else (
        "451 4.1.1 boom" if a.startswith("boom") else (
            "451 4.1.1 same" if a.startswith("same") else None))
    try:
        a = send(k, ["x1@args.example"], "args", "X-E2E-Tenant: yes\r\n")
        b = send(k, ["boom@args.example"], "boom")
        c = send(k, ["same@args.example"], "same")
        d = send(k, ["fine@args.example"], "fine")
        [bounce] = k.wait_records(lambda r: r["id"] == a and r["type"] == "Bounce", timeout=20)
        [tb] = k.wait_records(lambda r: r["id"] == b and r["type"] == "TransientFailure",
                              timeout=20)
        [tc] = k.wait_records(lambda r: r["id"] == c and r["type"] == "TransientFailure",
                              timeout=20)
        k.wait_records(lambda r: r["id"] == d and r["type"] == "Delivery", timeout=20)
    finally:
        peer.rcpt_reply = None
    assert bounce["response"]["code"] == 550
    assert bounce["response"]["content"].endswith("(kumomta: status was rewritten from 451 -> 550)")
    assert tb["response"]["content"] == "boom", tb
    assert tc["response"]["content"] == "same", tc
    diag = k.diag()
    assert ("REWRITE-ARGS 451 4.1.1 box <x1@args.example> busy|args.example|tnt|cmp|"
            "args.example") in diag, diag[-3000:]
    assert "REWRITE-ARGS 451 4.1.1 boom|args.example|nil|nil|args.example" in diag
    assert "rewrite failed on purpose" in diag
    assert "Preserving original DSN" in diag
    assert "fine@args.example" not in "".join(
        l for l in diag.splitlines() if "REWRITE-ARGS" in l)


def test_client_rewrite_per_recipient(kumod_factory, peer):
    """Each refused recipient is offered on its own and gets its own
    outcome (one SMTP transaction, one message per recipient)."""
    handler = """
kumo.on('smtp_client_rewrite_delivery_status',
  function(response, domain, tenant, campaign, routing_domain)
    if response:find('<perm') then return 554 end
  end)
"""
    k = kumod_factory(handlers=client_policy(peer, handler))
    peer.rcpt_reply = lambda a: ("452 4.2.2 full <%s>" % a) if not a.startswith("ok") else None
    try:
        with smtplib.SMTP("127.0.0.1", k.smtp_port, timeout=10) as s:
            s.ehlo("e2e.test")
            s.mail("sender@src.example")
            for r in ["perm@multi.example", "temp@multi.example", "ok@multi.example"]:
                s.rcpt(r)
            code, text = s.data(b"Subject: multi\r\n\r\nbody\r\n")
        ids = set(kh.parse_ids(text.decode()))
        recs = k.wait_records(lambda r: r["id"] in ids and r["type"] in (
            "Bounce", "TransientFailure", "Delivery"), timeout=20, count=3)
    finally:
        peer.rcpt_reply = None
    by = {r["recipient"]: r for r in recs}
    assert by["perm@multi.example"]["type"] == "Bounce"
    assert by["perm@multi.example"]["response"]["code"] == 554
    assert by["temp@multi.example"]["type"] == "TransientFailure"
    assert by["temp@multi.example"]["response"]["code"] == 452
    assert by["ok@multi.example"]["type"] == "Delivery"


# ---- shutdown_logging ---------------------------------------------------------------------

def test_shutdown_logging_page_example(kumod_factory):
    """The page's example: a logger task loops on an mpsc queue; the
    shutdown_logging handler closes the queue, so the task ends and the
    daemon stops cleanly."""
    handlers = """
kumo.on('init', function()
  kumo.spawn_task {
    event_name = 'logger',
    args = {},
  }
end)

kumo.on('logger', function(args)
  local q = kumo.mpsc.define 'queue'
  while true do
    local batch = q:recv_many(100)
    if not batch then
      print 'logger loop done; shutting down'
      return
    end
  end
end)

kumo.on('shutdown_logging', function()
  print 'shutdown_logging fired'
  local q = kumo.mpsc.define 'queue'
  q:close()
end)
"""
    policy = kh.default_policy().replace("kumo.on('init', function()",
                                         "kumo.on('init', function()\n  INIT_HOOK()", 1)
    policy = "local function INIT_HOOK() end\n" + policy
    # two 'init' handlers are not allowed: fold the page's init into ours
    page_init, rest = handlers.split("kumo.on('logger'", 1)
    policy = policy.replace("local function INIT_HOOK() end",
                            "local function INIT_HOOK()\n  kumo.spawn_task { event_name = "
                            "'logger', args = {} }\nend")
    k = kumod_factory(policy=policy + "\nkumo.on('logger'" + rest)
    assert k.stop() == 0
    diag = k.diag()
    assert "shutdown_logging fired" in diag
    assert "logger loop done; shutting down" in diag
    assert diag.index("shutdown_logging fired") < diag.index("logger loop done")
