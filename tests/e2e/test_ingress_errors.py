"""Issue 3 (ingress), bad input and refusals: each gets its documented reply
and (except 421 4.3.2 notices) a Rejection record, and the daemon keeps
serving. One kumod with several listeners, one per limit under test."""
import re
import time

import pytest

import kumod_harness as kh
from kumod_harness import HOSTNAME, parse_ids, unverified_tls, wait_until
from records import RECORD_KEYS, by_ehlo, check_reception, check_rejection, check_times

ERROR_MARK = "-- E2E: the deliberate policy error is on this line"

HANDLERS = f"""
kumo.on('smtp_server_mail_from', function(sender, conn_meta)
  local u = sender.user
  if u == 'reject550' then kumo.reject(550, 'go away') end
  if u == 'reject421' then kumo.reject(421, '4.7.0 closing now') end
  if u == 'luaerror' then error('deliberate mail_from error') end
end)
kumo.on('smtp_server_rcpt_to', function(rcpt, conn_meta)
  if rcpt.user == 'reject550' then kumo.reject(550, '5.7.1 go away') end
  if rcpt.user == 'reject451' then kumo.reject(451, '4.7.1 try later') end
end)
kumo.on('smtp_server_message_received', function(msg, conn_meta)
  if msg:get_first_named_header_value('Subject') == 'policy error' then
    local t = nil
    return t.boom {ERROR_MARK}
  end
end)
kumo.on('smtp_server_data', function(msg, conn_meta)
  if msg:get_first_named_header_value('Subject') == 'slow data' then
    kumo.time.sleep(2)
  end
end)
kumo.on('get_listener_domain', function(domain, listener, conn_meta)
  if domain == 'relay.example' then
    return kumo.make_listener_domain {{ relay_to = true }}
  end
end)
"""

# Several listeners: the main one (limits), and one per special setting.
EXTRA_LISTENERS = """
  kumo.start_esmtp_listener { listen = '127.0.0.1:{port:allow}', hostname = '{hostname}',
                              invalid_line_endings = 'Allow' }
  kumo.start_esmtp_listener { listen = '127.0.0.1:{port:fix}', hostname = '{hostname}',
                              invalid_line_endings = 'Fix' }
  kumo.start_esmtp_listener { listen = '127.0.0.1:{port:idle}', hostname = '{hostname}',
                              client_timeout = '1s' }
  kumo.start_esmtp_listener { listen = '127.0.0.1:{port:maxconn}', hostname = '{hostname}',
                              max_connections = 2 }
  kumo.start_esmtp_listener { listen = '127.0.0.1:{port:dpt}', hostname = '{hostname}',
                              data_processing_timeout = '1s' }
  kumo.start_esmtp_listener { listen = '127.0.0.1:{port:norelay}', hostname = '{hostname}',
                              relay_hosts = { '10.99.99.99' } }
"""

MAIN_LISTENER = """
    line_length_hard_limit = 200,
    max_message_size = 100000,
    max_recipients_per_message = 3,
"""


@pytest.fixture(scope="module")
def k(module_kumod_factory):
    return module_kumod_factory(listener=MAIN_LISTENER, init=EXTRA_LISTENERS, handlers=HANDLERS)


def session(k, ehlo, port=None):
    s = k.raw(port=k.port(port) if port else None)
    assert s.banner == (220, f"{HOSTNAME} KumoMTA")
    assert s.cmd(f"EHLO {ehlo}")[0] == 250
    return s


def still_serving(s):
    assert s.cmd("NOOP") == (250, "the goggles do nothing")


def rejections(k, ehlo, count=1):
    recs = k.wait_records(by_ehlo(ehlo), type="Rejection", count=count)
    assert len(recs) == count, recs
    return recs


def body(subject, text=b"hello\r\n"):
    return (b"From: <a@a.example>\r\nSubject: " + subject.encode() + b"\r\n\r\n" + text)


# ---- line length ----------------------------------------------------------------------------


def test_command_line_too_long(k):
    ehlo = "longcmd.e2e.test"
    s = session(k, ehlo)
    assert s.cmd("NOOP " + "x" * 300) == (500, "5.2.3 line too long")
    # exactly at the limit is fine (200 bytes without CRLF)
    assert s.cmd("NOOP " + "x" * 195) == (250, "the goggles do nothing")
    # a long line arriving in pieces is answered once, at its end
    s.send("MAIL FROM:<" + "y" * 150)
    time.sleep(0.05)
    s.send("z" * 150 + "@a.example>\r\n")
    assert s.reply() == (500, "5.2.3 line too long")
    still_serving(s)
    s.close()
    r1, r2 = rejections(k, ehlo, 2)
    check_rejection(r1, code=500, enhanced_code="5.2.3", content="line too long", command=None,
                    ehlo=ehlo)
    check_rejection(r2, code=500, enhanced_code="5.2.3", content="line too long", command=None,
                    ehlo=ehlo)


def test_data_line_too_long(k):
    ehlo = "longdata.e2e.test"
    s = session(k, ehlo)
    assert s.cmd("MAIL FROM:<ll@a.example>")[0] == 250
    assert s.cmd("RCPT TO:<r@d.example>")[0] == 250
    assert s.cmd("DATA")[0] == 354
    assert s.cmd(body("long", b"a" * 201 + b"\r\n") + b".") == (500, "5.2.3 line too long")
    still_serving(s)
    s.close()
    [r] = rejections(k, ehlo)
    check_rejection(r, code=500, enhanced_code="5.2.3", content="line too long", command="DATA",
                    ehlo=ehlo)
    assert [x for x in k.records("Reception") if x["sender"] == "ll@a.example"] == []


@pytest.mark.parametrize("what", ["too-big", "too-long"])
def test_data_phase_rejection_keeps_envelope(k, what):
    ehlo = f"envelope-{what}.e2e.test"
    s = session(k, ehlo)
    assert s.cmd("MAIL FROM:<env@a.example>")[0] == 250
    assert s.cmd("RCPT TO:<r1@d.example>")[0] == 250
    assert s.cmd("RCPT TO:<r2@d.example>")[0] == 250
    assert s.cmd("DATA")[0] == 354
    text = b"y" * 300 + b"\r\n" if what == "too-long" else (b"x" * 98 + b"\r\n") * 1500
    assert s.cmd(body("envelope", text) + b".")[0] in (500, 552)
    s.close()
    [r] = rejections(k, ehlo)
    assert (r["sender"], r["recipient"]) == ("env@a.example", "r2@d.example")


# ---- line endings ---------------------------------------------------------------------------

BARE_LF = b"From: <a@a.example>\r\nSubject: bare lf\r\n\r\nline one\nline two\r\nline three\n"


def send_bare_lf(k, ehlo, port):
    s = session(k, ehlo, port)
    assert s.cmd("MAIL FROM:<lf@a.example>")[0] == 250
    assert s.cmd("RCPT TO:<r@d.example>")[0] == 250
    assert s.cmd("DATA")[0] == 354
    reply = s.cmd(BARE_LF + b"\r\n.")
    still_serving(s)
    s.close()
    return reply


def stored_body(data):
    i = data.find(b"Subject: bare lf")
    assert i > 0, data
    return data[i:]


def test_bare_lf_deny(k):
    ehlo = "lfdeny.e2e.test"
    assert send_bare_lf(k, ehlo, None) == (552, "5.6.0 message data must use CRLF for line endings")
    [r] = rejections(k, ehlo)
    check_rejection(r, code=552, enhanced_code="5.6.0",
                    content="message data must use CRLF for line endings", command="DATA",
                    ehlo=ehlo)


def test_bare_lf_allow_stores_as_is(k):
    ehlo = "lfallow.e2e.test"
    code, text = send_bare_lf(k, ehlo, "allow")
    assert code == 250, text
    [id] = parse_ids(text)
    data = k.stored_data(id)
    assert stored_body(data) == BARE_LF[BARE_LF.find(b"Subject"):] + b"\r\n"
    rec = k.wait_records(lambda r: r["id"] == id, type="Reception")[0]
    assert rec["size"] == len(data)
    assert [x for x in k.records("Rejection") if by_ehlo(ehlo)(x)] == []


def test_bare_lf_fix_stores_crlf(k):
    ehlo = "lffix.e2e.test"
    code, text = send_bare_lf(k, ehlo, "fix")
    assert code == 250, text
    [id] = parse_ids(text)
    data = k.stored_data(id)
    assert stored_body(data) == (b"Subject: bare lf\r\n\r\nline one\r\nline two\r\n"
                                 b"line three\r\n\r\n")
    rec = k.wait_records(lambda r: r["id"] == id, type="Reception")[0]
    assert rec["size"] == len(data)


# ---- sequence, syntax -------------------------------------------------------------------------


def test_commands_out_of_sequence(k):
    ehlo = "sequence.e2e.test"
    s = session(k, ehlo)
    expected = [
        ("RCPT TO:<r@d.example>", 503, "5.5.0 MAIL FROM must be issued first"),
        ("DATA", 503, "5.5.0 MAIL FROM must be issued first"),
        ("MAIL FROM:<seq@a.example>", 250, 'OK EnvelopeAddress("seq@a.example")'),
        ("DATA", 503, "5.5.0 RCPT TO must be issued first"),
        ("MAIL FROM:<seq2@a.example>", 503, "5.5.0 MAIL FROM already issued; you must RSET first"),
    ]
    for line, code, text in expected:
        assert s.cmd(line) == (code, text), line
    still_serving(s)
    s.close()
    recs = rejections(k, ehlo, 4)
    failing = [e for e in expected if e[1] >= 400]
    for rec, (line, code, text) in zip(recs, failing):
        enh, content = text.split(" ", 1)
        check_rejection(rec, code=code, enhanced_code=enh, content=content, command=line,
                        ehlo=ehlo)
    assert recs[0]["sender"] == "" and recs[2]["sender"] == "seq@a.example"


def test_unknown_command(k):
    ehlo = "unknown.e2e.test"
    s = session(k, ehlo)
    assert s.cmd("XYZZY plugh") == (502, "5.5.1 Command unimplemented")
    still_serving(s)
    s.close()
    [r] = rejections(k, ehlo)
    check_rejection(r, code=502, enhanced_code="5.5.1", content="Command unimplemented",
                    command="XYZZY plugh", ehlo=ehlo)


def test_nul_byte_in_command(k):
    ehlo = "nul.e2e.test"
    s = session(k, ehlo)
    code, text = s.cmd(b"MAIL FROM:<a\x00b@a.example>")
    assert code == 501, text
    # no transaction was started
    assert s.cmd("RCPT TO:<r@d.example>") == (503, "5.5.0 MAIL FROM must be issued first")
    still_serving(s)
    s.close()
    r = rejections(k, ehlo, 2)[0]
    assert r["type"] == "Rejection" and r["id"] == ""
    assert r["response"]["code"] == 501
    assert r["response"]["content"] == re.sub(r"^\d\.\d+\.\d+ ", "", text)


# ---- limits -----------------------------------------------------------------------------------


def test_oversized_message(k):
    ehlo = "toobig.e2e.test"
    s = session(k, ehlo)
    assert s.cmd("MAIL FROM:<big@a.example>")[0] == 250
    assert s.cmd("RCPT TO:<r@d.example>")[0] == 250
    assert s.cmd("DATA")[0] == 354
    line = b"x" * 98 + b"\r\n"
    assert s.cmd(body("too big", line * 1500) + b".") == (552, "5.3.4 message too big")
    still_serving(s)
    # a message under the limit on the same connection is fine
    assert s.cmd("RSET")[0] == 250
    assert s.cmd("MAIL FROM:<big@a.example>")[0] == 250
    assert s.cmd("RCPT TO:<r@d.example>")[0] == 250
    assert s.cmd("DATA")[0] == 354
    code, text = s.cmd(body("small enough", line * 900) + b".")
    assert code == 250, text
    s.close()
    [r] = rejections(k, ehlo)
    check_rejection(r, code=552, enhanced_code="5.3.4", content="message too big",
                    command="DATA", ehlo=ehlo)


def test_too_many_recipients(k):
    ehlo = "manyrcpt.e2e.test"
    s = session(k, ehlo)
    assert s.cmd("MAIL FROM:<many@a.example>")[0] == 250
    for i in range(3):
        assert s.cmd(f"RCPT TO:<r{i}@d.example>") == (250, f'OK EnvelopeAddress("r{i}@d.example")')
    assert s.cmd("RCPT TO:<r3@d.example>") == (452, "4.5.3 too many recipients")
    assert s.cmd("DATA")[0] == 354
    code, text = s.cmd(body("three of four") + b".")
    assert code == 250
    assert len(parse_ids(text)) == 3
    s.close()
    [r] = rejections(k, ehlo)
    check_rejection(r, code=452, enhanced_code="4.5.3", content="too many recipients",
                    command="RCPT TO:<r3@d.example>", ehlo=ehlo, sender="many@a.example")
    assert r["recipient"] == "r2@d.example"


def test_max_connections(k):
    port = k.port("maxconn")

    def greeted():
        # the previous test's sessions may still be closing: retry
        try:
            s = kh.RawSMTP("127.0.0.1", port, 10)
        except OSError:
            return None
        if s.banner[0] == 220:
            return s
        s.close()
        return None

    a = wait_until(greeted, 10, what="a first session")
    b = wait_until(greeted, 10, what="a second session")
    c = kh.RawSMTP("127.0.0.1", port, 10)
    assert c.banner == (421, f"4.3.2 {HOSTNAME} too many concurrent sessions")
    assert c.at_eof()
    c.close()
    # the two admitted sessions work
    assert a.cmd("EHLO maxconn-a.e2e.test")[0] == 250
    assert b.cmd("EHLO maxconn-b.e2e.test")[0] == 250
    assert a.cmd("QUIT")[0] == 221
    a.close()
    d = wait_until(greeted, 10, what="a slot after one session quit")
    d.close()
    b.close()
    # 421 4.3.2 is a load notice, not a Rejection
    assert [r for r in k.records("Rejection") if "too many concurrent" in
            r["response"]["content"]] == []


def test_idle_past_client_timeout(k):
    ehlo = "idle.e2e.test"
    s = session(k, ehlo, "idle")
    t0 = time.monotonic()
    assert s.reply() == (421, f"4.3.2 {HOSTNAME} idle too long")
    elapsed = time.monotonic() - t0
    assert 0.8 <= elapsed < 10 * kh.SLOW, elapsed
    assert s.at_eof()
    s.close()
    # idle in the middle of DATA
    s = session(k, ehlo, "idle")
    assert s.cmd("MAIL FROM:<idle@a.example>")[0] == 250
    assert s.cmd("RCPT TO:<r@d.example>")[0] == 250
    assert s.cmd("DATA")[0] == 354
    s.send(b"Subject: never finished\r\n\r\nsome")
    assert s.reply() == (421, f"4.3.2 {HOSTNAME} idle too long")
    assert s.at_eof()
    s.close()
    assert [r for r in k.records("Rejection") if by_ehlo(ehlo)(r)] == []


def test_idle_after_starttls_gets_421(k):
    s = session(k, "idletls.e2e.test", "idle")
    assert s.cmd("STARTTLS") == (220, "Ready to Start TLS")
    tls = unverified_tls().wrap_socket(s.sock, server_hostname="127.0.0.1")
    s.sock = tls
    s.buf = b""
    assert s.cmd("EHLO idletls.e2e.test")[0] == 250
    assert s.reply() == (421, f"4.3.2 {HOSTNAME} idle too long")


def test_data_processing_timeout(k):
    ehlo = "dpt.e2e.test"
    s = session(k, ehlo, "dpt")
    assert s.cmd("MAIL FROM:<dpt@a.example>")[0] == 250
    assert s.cmd("RCPT TO:<r@d.example>")[0] == 250
    assert s.cmd("DATA")[0] == 354
    t0 = time.monotonic()
    assert s.cmd(body("slow data") + b".") == (451, "4.4.5 data_processing_timeout exceeded (rx)")
    elapsed = time.monotonic() - t0
    assert 0.8 <= elapsed < 1.9, elapsed
    still_serving(s)
    # the session goes on; the abandoned handler finishing later does no harm
    assert s.cmd("MAIL FROM:<dpt@a.example>")[0] == 250
    assert s.cmd("RCPT TO:<r@d.example>")[0] == 250
    assert s.cmd("DATA")[0] == 354
    code, text = s.cmd(body("quick data") + b".")
    assert code == 250, text
    # nothing to poll for: wait until the cancelled 2 s sleep has run out
    time.sleep(max(0.0, t0 + 2.3 - time.monotonic()))
    still_serving(s)
    s.close()
    [r] = rejections(k, ehlo)
    check_rejection(r, code=451, enhanced_code="4.4.5",
                    content="data_processing_timeout exceeded (rx)", command="DATA", ehlo=ehlo)
    assert [x["headers"]["Subject"] for x in k.records("Reception") if by_ehlo(ehlo)(x)] == \
        ["quick data"]


# ---- relaying -------------------------------------------------------------------------------


def test_untrusted_peer_may_not_relay(k):
    ehlo = "norelay.e2e.test"
    s = session(k, ehlo, "norelay")
    cport = s.sock.getsockname()[1]
    assert s.cmd("MAIL FROM:<nr@a.example>")[0] == 250
    assert s.cmd("RCPT TO:<r@d.example>") == (
        550, f"5.7.1 relaying not permitted for 127.0.0.1:{cport}")
    # with no recipient accepted there is nothing to send
    assert s.cmd("DATA") == (503, "5.5.0 RCPT TO must be issued first")
    still_serving(s)
    s.close()
    r = rejections(k, ehlo, 2)[0]
    check_rejection(r, code=550, enhanced_code="5.7.1",
                    content=f"relaying not permitted for 127.0.0.1:{cport}",
                    command="RCPT TO:<r@d.example>", ehlo=ehlo, sender="nr@a.example")


def test_listener_domain_relay_to_lets_untrusted_peer_relay(k):
    ehlo = "relayto.e2e.test"
    s = session(k, ehlo, "norelay")
    cport = s.sock.getsockname()[1]
    t0 = time.time()
    assert s.cmd("MAIL FROM:<rt@a.example>")[0] == 250
    assert s.cmd("RCPT TO:<in@relay.example>") == (250, 'OK EnvelopeAddress("in@relay.example")')
    assert s.cmd("RCPT TO:<out@d.example>") == (
        550, f"5.7.1 relaying not permitted for 127.0.0.1:{cport}")
    assert s.cmd("DATA")[0] == 354
    code, text = s.cmd(body("relay to") + b".")
    t1 = time.time()
    assert code == 250, text
    [id] = parse_ids(text)
    s.close()
    [rec] = k.wait_records(lambda r: r["id"] == id, type="Reception")
    check_reception(rec, id=id, sender="rt@a.example", recipient="in@relay.example", ehlo=ehlo,
                    size=len(k.stored_data(id)), queue="relay.example",
                    meta={"received_from": f"127.0.0.1:{cport}"},
                    headers={"Subject": "relay to"}, t_before=t0, t_after=t1)


# ---- policy rejections and errors -----------------------------------------------------------


def test_reject_550_in_mail_from_and_rcpt_to(k):
    ehlo = "reject550.e2e.test"
    s = session(k, ehlo)
    assert s.cmd("MAIL FROM:<reject550@a.example>") == (550, "go away")
    assert s.cmd("MAIL FROM:<ok@a.example>")[0] == 250
    assert s.cmd("RCPT TO:<reject550@d.example>") == (550, "5.7.1 go away")
    assert s.cmd("RCPT TO:<reject451@d.example>") == (451, "4.7.1 try later")
    assert s.cmd("RCPT TO:<fine@d.example>")[0] == 250
    assert s.cmd("DATA")[0] == 354
    code, text = s.cmd(body("after rejects") + b".")
    assert code == 250 and len(parse_ids(text)) == 1
    s.close()
    r1, r2, r3 = rejections(k, ehlo, 3)
    check_rejection(r1, code=550, enhanced_code=None, content="go away",
                    command="MAIL FROM:<reject550@a.example>", ehlo=ehlo)
    check_rejection(r2, code=550, enhanced_code="5.7.1", content="go away",
                    command="RCPT TO:<reject550@d.example>", ehlo=ehlo, sender="ok@a.example")
    check_rejection(r3, code=451, enhanced_code="4.7.1", content="try later",
                    command="RCPT TO:<reject451@d.example>", ehlo=ehlo, sender="ok@a.example")


def test_reject_421_disconnects(k):
    ehlo = "reject421.e2e.test"
    s = session(k, ehlo)
    assert s.cmd("MAIL FROM:<reject421@a.example>") == (421, "4.7.0 closing now")
    assert s.at_eof()
    s.close()
    [r] = rejections(k, ehlo)
    check_rejection(r, code=421, enhanced_code="4.7.0", content="closing now",
                    command="MAIL FROM:<reject421@a.example>", ehlo=ehlo)


def policy_line(k, mark):
    with open(k.policy_path) as f:
        for n, line in enumerate(f, 1):
            if mark in line:
                return n
    raise AssertionError(mark)


def test_policy_error_in_message_received(k):
    ehlo = "policyerror.e2e.test"
    s = session(k, ehlo)
    assert s.cmd("MAIL FROM:<pe@a.example>")[0] == 250
    assert s.cmd("RCPT TO:<r@d.example>")[0] == 250
    assert s.cmd("DATA")[0] == 354
    assert s.cmd(body("policy error") + b".") == (421, f"4.3.0 {HOSTNAME} technical difficulties")
    assert s.at_eof()
    s.close()
    line = policy_line(k, ERROR_MARK)
    m = k.wait_diag(r".*smtp_server_message_received.*")
    assert re.search(rf"policy\.lua:{line}: attempt to index a nil value", m.group(0)), m.group(0)
    assert "ERROR" in m.group(0)
    [r] = rejections(k, ehlo)
    assert r["response"]["code"] == 421
    assert r["response"]["enhanced_code"] == {"class": 4, "subject": 3, "detail": 0}
    assert r["response"]["content"] == f"{HOSTNAME} technical difficulties"
    assert [x for x in k.records("Reception") if x["sender"] == "pe@a.example"] == []
    # and the daemon serves the next client
    s = session(k, "after-error.e2e.test")
    still_serving(s)
    s.close()


def test_policy_error_in_mail_from(k):
    ehlo = "mailfromerror.e2e.test"
    s = session(k, ehlo)
    assert s.cmd("MAIL FROM:<luaerror@a.example>") == (
        421, f"4.3.0 {HOSTNAME} technical difficulties")
    assert s.at_eof()
    s.close()
    m = k.wait_diag(r".*deliberate mail_from error.*")
    assert re.search(r"policy\.lua:\d+: deliberate mail_from error", m.group(0)), m.group(0)


def test_rejection_record_exact_shape(k):
    ehlo = "shape.e2e.test"
    s = session(k, ehlo)
    cport = s.sock.getsockname()[1]
    t0 = time.time()
    assert s.cmd("RCPT TO:<r@d.example>")[0] == 503
    t1 = time.time()
    s.close()
    [r] = rejections(k, ehlo)
    assert set(r) == RECORD_KEYS | {"session_id"}
    check_times(r, t0, t1)
    expect = {
        "type": "Rejection", "id": "", "sender": "", "recipient": "", "queue": "", "site": "",
        "size": 0,
        "response": {"code": 503, "enhanced_code": {"class": 5, "subject": 5, "detail": 0},
                     "content": "MAIL FROM must be issued first",
                     "command": "RCPT TO:<r@d.example>"},
        "peer_address": {"name": ehlo, "addr": "127.0.0.1"},
        "num_attempts": 0, "bounce_classification": "Uncategorized", "egress_pool": None,
        "egress_source": None, "source_address": None, "feedback_report": None,
        "meta": {"received_from": f"127.0.0.1:{cport}"}, "headers": {},
        "delivery_protocol": None, "reception_protocol": None,
    }
    got = {key: r[key] for key in expect}
    assert got == expect
