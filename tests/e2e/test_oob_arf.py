"""Inbound reports on listener domains (reference/kumo/make_listener_domain/
log_oob.md, log_arf.md; the OOB and Feedback records of
reference/log_record.md): RFC 3464 bounces and RFC 5965 feedback reports,
from the RFCs' own examples and in the shapes Gmail, Microsoft and Yahoo
send, through a real kumod listener.

- LogThenDrop: OOB records (one per failed recipient), no Reception, the
  message is not relayed; LogThenRelay: Reception, OOB records, delivered.
- ARF: a Feedback record instead of the Reception record, with the report
  parsed (supplemental trace decoded from our own X-KumoRef header).
- A message that is not a report, or a malformed one, to a domain that only
  logs reports: 550 relaying not permitted, a diagnostic line naming what
  is wrong, kumod unharmed.
- A log hook receives OOB and Feedback records like any other."""
import os
import smtplib
import time

import http_peer
import kumod_harness as kh

DATA = os.path.join(os.path.dirname(__file__), "data", "reports")
LUA_PATH = os.path.join(kh.REPO, "share", "lua", "?.lua")


def sample(name):
    with open(os.path.join(DATA, name), "rb") as f:
        return f.read().replace(b"\r\n", b"\n").replace(b"\n", b"\r\n")


HANDLERS = """
kumo.on('get_listener_domain', function(domain, listener, conn_meta)
  if domain == 'bounce.test' then
    return kumo.make_listener_domain { log_oob = 'LogThenDrop', log_arf = 'LogThenDrop' }
  elseif domain == 'relay.test' then
    return kumo.make_listener_domain { log_oob = true, log_arf = 'LogThenRelay' }
  elseif domain == 'ignore.test' then
    return kumo.make_listener_domain { log_oob = 'Ignore', log_arf = false, relay_to = true }
  end
end)
kumo.on('make.sink', function(domain, tenant, campaign)
  local connection = {}
  function connection:send(message) return 'accepted' end
  return connection
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  if domain == 'webhook' then return end
  return kumo.make_queue_config {
    protocol = { custom_lua = { constructor = 'make.sink' } },
  }
end)
"""

LISTENER = "relay_hosts = { '10.255.255.1' },"


def start(kumod_factory, extra="", pre=""):
    return kumod_factory(handlers=pre + HANDLERS + extra, listener=LISTENER,
                         env={"KUMOD_LUA_PATH": LUA_PATH})


def send(k, rcpt, data, sender="mailer-daemon@provider.test"):
    with smtplib.SMTP("127.0.0.1", k.smtp_port, timeout=30) as s:
        s.ehlo("mx.provider.test")
        try:
            s.sendmail(sender, [rcpt], data)
            return 250, ""
        except smtplib.SMTPDataError as e:
            return e.smtp_code, e.smtp_error.decode()


# sample -> the OOB records it yields: (recipient, code, enhanced, content start, site, peer name)
EXPECTED_OOB = {
    "rfc3464_a.eml": [("louisl@larry.slip.umd.edu", 426, (4, 0, 0), "connection timed out", "",
                       "cs.utk.edu")],
    "rfc3464_b.eml": [
        ("arathib@vnet.ibm.com", 550, (5, 0, 0),
         "'arathib@vnet.IBM.COM' is not a registered gateway user", "vnet.ibm.com", "cs.utk.edu"),
        ("wsnell@sdcc13.ucsd.edu", 550, (5, 0, 0), "user unknown", "sdcc13.ucsd.edu",
         "cs.utk.edu")],
    "gmail.eml": [("no.such.user@gmail.com", 550, (5, 1, 1),
                   "5.1.1 The email account that you tried to reach does not exist",
                   "gmail-smtp-in.l.google.com. (142.250.27.26, the server for the domain gmail.com.)",
                   "googlemail.com")],
    "microsoft.eml": [("someone@outlook.com", 550, (5, 5, 0),
                       "5.5.0 Requested action not taken: mailbox unavailable", "",
                       "AM0PR01MB0001.eurprd01.prod.exchangelabs.com")],
    "yahoo.eml": [("gone.away@yahoo.com", 554, (5, 0, 0),
                   "delivery error: dd This user doesn't have a yahoo.com account",
                   "mta7.am0.yahoodns.net", "mta1234.mail.gq1.yahoo.com")],
}


ORIG_HEADERS = {
    "rfc3464_a.eml": {}, "rfc3464_b.eml": {},  # "[original message goes here]"
    "gmail.eml": {"Subject": "March newsletter", "X-E2E-Campaign": "spring"},
    "microsoft.eml": {"Subject": "Your invoice"},
    "yahoo.eml": {"Subject": "Weekly digest"},
}


def test_oob_log_then_drop_and_relay(kumod_factory):
    k = start(kumod_factory)
    for name in EXPECTED_OOB:
        assert send(k, "bounces@bounce.test", sample(name))[0] == 250, name
    assert send(k, "bounces@relay.test", sample("gmail.eml"))[0] == 250
    want = sum(len(v) for v in EXPECTED_OOB.values()) + 1
    oob = k.wait_records(type="OOB", count=want, timeout=15)
    by_rcpt = {}
    for r in oob:
        by_rcpt.setdefault(r["recipient"], []).append(r)
    for name, exp in EXPECTED_OOB.items():
        for rcpt, code, enh, content, site, peer in exp:
            r = by_rcpt[rcpt][0]
            assert r["sender"] == "bounces@bounce.test", r
            assert r["response"]["code"] == code, (name, r)
            e = r["response"]["enhanced_code"]
            assert (e["class"], e["subject"], e["detail"]) == enh, (name, r)
            # folded lines keep their white space, as unfolding leaves it
            got = " ".join(r["response"]["content"].split())
            assert got.startswith(content), (name, r["response"])
            assert r["site"] == site, (name, r)
            assert r["peer_address"]["name"] == peer, (name, r)
            assert r["peer_address"]["addr"].startswith("127.0.0.1"), r
            assert r["num_attempts"] == 0 and r["size"] == 0
            assert r["reception_protocol"] == "ESMTP"
            # the classifier's category (Uncategorized: none configured here)
            assert r["bounce_classification"] == "Uncategorized"
            # the original message's headers (when the report has them), as
            # the logger is configured (Subject, X-E2E-*)
            assert r["headers"] == ORIG_HEADERS[name], (name, r["headers"])
            assert r["meta"].get("received_from", "").startswith("127.0.0.1"), r["meta"]
    # delayed recipients (rfc3464_b johnh, yahoo full.box) give no record
    assert "johnh@hpnjld.njd.hp.com" not in by_rcpt
    assert "full.box@yahoo.com" not in by_rcpt
    # the RFC example's Last-Attempt-Date is the record's time
    assert by_rcpt["louisl@larry.slip.umd.edu"][0]["timestamp"] == 773615749
    # LogThenDrop: no Reception, nothing relayed; LogThenRelay: Reception + Delivery
    time.sleep(0.5)
    recs = k.records()
    recv = [r for r in recs if r["type"] == "Reception"]
    assert [r["recipient"] for r in recv] == ["bounces@relay.test"], recv
    k.wait_records(type="Delivery", count=1, timeout=15)
    assert len(by_rcpt["no.such.user@gmail.com"]) == 2


def test_oob_with_classifier(kumod_factory, tmp_path):
    rules = tmp_path / "rules.toml"
    rules.write_text('[rules]\nInvalidRecipient = ["^(550|554) .*(does not exist|user unknown|'
                     'doesn.t have)"]\n')
    k = kumod_factory(handlers=HANDLERS, listener=LISTENER,
                      init=f"kumo.configure_bounce_classifier {{ files = {{ '{rules}' }} }}",
                      env={"KUMOD_LUA_PATH": LUA_PATH})
    assert send(k, "bounces@bounce.test", sample("yahoo.eml"))[0] == 250
    r = k.wait_records(type="OOB", count=1)[0]
    assert r["bounce_classification"] == "InvalidRecipient", r


EXPECTED_ARF = {
    "rfc5965_b.eml": dict(feedback_type="abuse", user_agent="SomeGenerator/1.0", version="1",
                          original_mail_from="somespammer@example.net",
                          original_rcpto_to=["user@example.com"], source_ip="192.0.2.1",
                          reporting_mta={"mta_type": "dns", "name": "mail.example.com"},
                          reported_domain=["example.net"],
                          reported_uri=["http://example.net/earn_money.html",
                                        "mailto:user@example.com"],
                          authentication_results=[
                              "mail.example.com; spf=fail smtp.mail=somespammer@example.com"],
                          extensions={"removal-recipient": ["user@example.com"]},
                          incidents=None, supplemental_trace=None),
    "jmrp.eml": dict(feedback_type="abuse", user_agent="Hotmail FBL", version="0.1",
                     original_mail_from="bounce-123@bounce.example.com",
                     original_rcpto_to=["jane@outlook.com"], source_ip="198.51.100.7",
                     arrival_date="2026-03-05T18:00:00Z", reported_domain=["example.com"],
                     supplemental_trace={"recipient": "jane@outlook.com", "campaign": "spring"}),
    "yahoo_arf.eml": dict(feedback_type="abuse", user_agent="Yahoo!-Mail-Feedback/2.0",
                          original_rcpto_to=["reader@yahoo.com"], incidents=1,
                          arrival_date="2026-03-06T03:10:00Z", reporting_mta=None),
}


def test_arf_feedback_records(kumod_factory):
    k = start(kumod_factory)
    for name in EXPECTED_ARF:
        assert send(k, "fbl@bounce.test", sample(name))[0] == 250, name
    assert send(k, "fbl@relay.test", sample("yahoo_arf.eml"))[0] == 250
    fb = k.wait_records(type="Feedback", count=len(EXPECTED_ARF) + 1, timeout=15)
    by_agent = {}
    for r in fb:
        by_agent.setdefault(r["feedback_report"]["user_agent"], []).append(r)
    for name, exp in EXPECTED_ARF.items():
        r = by_agent[exp["user_agent"]][0]
        rep = r["feedback_report"]
        for f, v in exp.items():
            assert rep[f] == v, (name, f, rep[f])
        assert r["sender"] == "mailer-daemon@provider.test"
        assert isinstance(rep["original_message"], str)
    assert by_agent["SomeGenerator/1.0"][0]["feedback_report"]["original_message"].startswith(
        "From: <somespammer@example.net>\nReceived:")
    # no Reception for any of them (Feedback replaces it); the relayed one delivers
    time.sleep(0.5)
    assert not [r for r in k.records() if r["type"] == "Reception"]
    k.wait_records(type="Delivery", count=1, timeout=15)
    assert len(by_agent["Yahoo!-Mail-Feedback/2.0"]) == 2


def dsn_with(ds_body, ct="message/delivery-status", extra=b""):
    return (b"From: MAILER-DAEMON@x.test\r\nSubject: bounce\r\nMIME-Version: 1.0\r\n"
            b"Content-Type: multipart/report; report-type=delivery-status; boundary=BB\r\n\r\n"
            b"--BB\r\nContent-Type: text/plain\r\n\r\nhuman\r\n--BB\r\nContent-Type: "
            + ct.encode() + b"\r\n\r\n" + ds_body + b"\r\n--BB--\r\n" + extra)


GOOD_DS = (b"Reporting-MTA: dns; mx.x.test\r\n\r\nFinal-Recipient: rfc822; a@x.test\r\n"
           b"Action: failed\r\nStatus: 5.1.1\r\n")

MALFORMED = [
    ("plain", b"Subject: hi\r\n\r\njust a message\r\n", None),
    ("no status part", dsn_with(GOOD_DS, ct="text/plain"), "delivery-status part missing"),
    ("no per-recipient", dsn_with(b"Reporting-MTA: dns; mx.x.test\r\n"), "no per-recipient"),
    ("bad status", dsn_with(GOOD_DS.replace(b"5.1.1", b"five")), "invalid status"),
    ("no reporting mta", dsn_with(GOOD_DS.replace(b"Reporting-MTA", b"X-MTA")),
     "Reporting-MTA is missing"),
    ("twice", dsn_with(GOOD_DS + b"Status: 5.1.2\r\n"), "only a single value"),
    ("huge field", dsn_with(GOOD_DS + b"X-Huge: " + (b"a" * 70 + b"\r\n ") * 3000 + b"\r\n"), "longer than"),
    ("bad date", dsn_with(GOOD_DS + b"Last-Attempt-Date: yesterday\r\n"), "invalid date"),
    ("arf missing part", sample("yahoo_arf.eml").replace(b"message/feedback-report",
                                                          b"text/plain"),
     "feedback-report part missing"),
    ("arf no agent", sample("yahoo_arf.eml").replace(b"User-Agent:", b"X-Agent:"),
     "user-agent is missing"),
]


def test_malformed_reports_are_rejected_with_diagnostic(kumod_factory):
    k = start(kumod_factory)
    for what, data, diag in MALFORMED:
        code, text = send(k, "bounces@bounce.test", data)
        assert code == 550 and "relaying not permitted" in text, (what, code, text)
        if diag:
            k.wait_diag(diag)
    # non-UTF-8 bytes in an otherwise valid report: parsed (U+FFFD), logged
    bad = dsn_with(GOOD_DS.replace(b"Status: 5.1.1", b"Status: 5.1.1 caf\xe9 \xff")
                   + b"Diagnostic-Code: smtp; 550 5.1.1 \xc3\x28 gone\r\n")
    assert send(k, "bounces@bounce.test", bad)[0] == 250
    r = k.wait_records(type="OOB", count=1)[0]
    assert r["recipient"] == "a@x.test"
    assert "\ufffd" in r["response"]["content"]
    # with Ignore, a report is an ordinary message (relayed, Reception only)
    assert send(k, "bounces@ignore.test", sample("gmail.eml"))[0] == 250
    k.wait_records(type="Reception", count=1)
    assert len(k.records("OOB")) == 1
    assert k.alive()


def test_make_listener_domain_values(kumod_factory):
    k = start(kumod_factory, extra="""
kumo.on('smtp_server_ehlo', function(domain)
  local ok, err = pcall(kumo.make_listener_domain, { log_oob = 'yes' })
  if ok then kumo.reject(550, 'accepted yes') end
  if not tostring(err):find("expected a boolean value or one of 'Ignore', 'LogThenDrop' or 'LogThenRelay'", 1, true) then
    kumo.reject(550, 'bad message ' .. tostring(err))
  end
end)
""")
    with smtplib.SMTP("127.0.0.1", k.smtp_port, timeout=30) as s:
        code, msg = s.ehlo("x.test")
        assert code == 250, msg


def test_log_hook_receives_oob_and_feedback(kumod_factory):
    peer = http_peer.Peer()
    try:
        hook = """
local log_hooks = require 'policy-extras.log_hooks'
log_hooks:new_json { name = 'webhook', url = '%s/log' }
""" % peer.url
        k = start(kumod_factory, pre=hook)  # its get_queue_config answers first
        assert send(k, "bounces@bounce.test", sample("rfc3464_b.eml"))[0] == 250
        assert send(k, "fbl@bounce.test", sample("jmrp.eml"))[0] == 250

        def complete(recs):
            types = [r["type"] for r in recs]
            return types.count("OOB") >= 2 and types.count("Feedback") >= 1

        recs = peer.wait_records(complete, timeout=30)
        oob = sorted(r["recipient"] for r in recs if r["type"] == "OOB")
        assert oob == ["arathib@vnet.ibm.com", "wsnell@sdcc13.ucsd.edu"]
        fb = next(r for r in recs if r["type"] == "Feedback")
        assert fb["feedback_report"]["supplemental_trace"]["campaign"] == "spring"
    finally:
        peer.close()
