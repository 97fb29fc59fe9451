"""Bounce classification end to end (issue 19): kumod configured with
kumo.configure_bounce_classifier over its own share/bounce/rules.toml (and a
rule file of the test's own loaded first) delivers to real peers (aiosmtpd,
smtpdeliv_peers.SmtpPeer) that answer with scripted 4xx/5xx replies; the
Bounce and TransientFailure records carry the category the rules give,
Delivery and Reception records stay "Uncategorized". A rule file with a bad
pattern makes `kumod --validate` fail with a message naming the file, the
category and the pattern."""
import os
import subprocess

import pytest

import kumod_harness as kh
from kumod_harness import default_policy, parse_ids
from smtpdeliv_peers import Dns, SmtpPeer, free_port_on, to_lua

SENDER = "sender@src.example"
RULES = os.path.join(kh.REPO, "share", "bounce", "rules.toml")
CASES = {  # domain: (address, command, reply, record type, classification)
    "unknown.bc.test": ("127.0.0.61", "RCPT", "550 5.1.1 <u@unknown.bc.test>: Recipient address "
                        "rejected: User unknown in virtual mailbox table", "Bounce",
                        "InvalidRecipient"),
    "full.bc.test": ("127.0.0.62", "RCPT", "452 4.2.2 The email account that you tried to reach "
                     "is over quota.", "TransientFailure", "QuotaIssues"),
    "block.bc.test": ("127.0.0.63", "MAIL", "554 5.7.1 Service unavailable; Client host "
                      "[127.0.0.1] blocked using zen.spamhaus.org", "Bounce", "SpamBlock"),
    "grey.bc.test": ("127.0.0.64", "RCPT", "450 4.2.0 Greylisted, please try again later",
                     "TransientFailure", "TransientFailure"),
    "custom.bc.test": ("127.0.0.65", "DOT", "550 5.7.1 rejected: e2e-custom-marker",
                       "Bounce", "E2eCustomLabel"),
    "none.bc.test": ("127.0.0.66", "DOT", "554 xyzzy", "Bounce", "Uncategorized"),
}

HANDLERS = """
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config { retry_interval = '1h' }
end)
kumo.on('get_egress_path_config', function(domain, source, site)
  return kumo.make_egress_path { prohibited_hosts = {}, smtp_port = %d }
end)
"""


@pytest.fixture(scope="module")
def dns(tmp_path_factory):
    mx = [(d, f"mx.{d}", 10) for d in CASES] + [("ok.bc.test", "mx.ok.bc.test", 10)]
    a = [(f"mx.{d}", c[0]) for d, c in CASES.items()] + [("mx.ok.bc.test", "127.0.0.67")]
    d = Dns(tmp_path_factory.mktemp("dns"), mx=mx, a=a).start()
    yield d
    d.stop()


def send(k, rcpt):
    s = k.smtp(ehlo="bc.e2e.test")
    try:
        assert s.mail(SENDER)[0] == 250
        assert s.rcpt(rcpt)[0] == 250
        code, text = s.data(f"From: <{SENDER}>\r\nSubject: bc\r\n\r\nhello\r\n".encode())
        assert code == 250, (code, text)
        [id] = parse_ids(text.decode())
        return id
    finally:
        s.quit()


def test_records_carry_the_classification(kumod_factory, dns, tmp_path):
    ips = [c[0] for c in CASES.values()] + ["127.0.0.67"]
    port = free_port_on(*ips)
    peers = {}
    for domain, (ip, cmd, reply, _, _) in CASES.items():
        peers[domain] = SmtpPeer(ip, port).start()
        peers[domain].script(cmd, reply)
    ok_peer = SmtpPeer("127.0.0.67", port).start()
    custom = tmp_path / "custom.json"
    # a JSON rule file of our own first: its rules win over the shipped ones
    custom.write_text('{"rules": {"E2eCustomLabel": ["e2e-custom-marker"]}}')
    init = (f"kumo.dns.configure_resolver {{ name_servers = {{ '127.0.0.1:{dns.port}' }} }}\n"
            f"kumo.configure_bounce_classifier {{ files = {to_lua([str(custom), RULES])} }}\n")
    try:
        k = kumod_factory(default_policy(handlers=HANDLERS % port, init=init))
        ids = {d: send(k, f"u@{d}") for d in CASES}
        ok_id = send(k, "u@ok.bc.test")
        for domain, (_, _, reply, rtype, want) in CASES.items():
            [rec] = k.wait_records(lambda r, i=ids[domain]: r["id"] == i, type=rtype,
                                   timeout=15 * kh.SLOW)
            code, rest = reply.split(" ", 1)
            assert rec["response"]["code"] == int(code), rec
            assert rec["bounce_classification"] == want, (domain, rec["response"], rec)
        [dl] = k.wait_records(lambda r: r["id"] == ok_id, type="Delivery", timeout=15 * kh.SLOW)
        assert dl["bounce_classification"] == "Uncategorized"
        for r in k.records("Reception"):
            assert r["bounce_classification"] == "Uncategorized"
    finally:
        for p in list(peers.values()) + [ok_peer]:
            p.stop()


def validate(tmp_path, files):
    pol = tmp_path / "policy.lua"
    pol.write_text("local kumo = require 'kumo'\nkumo.on('init', function()\n"
                   f"  kumo.define_spool {{ name = 'data', path = '{tmp_path}/d' }}\n"
                   f"  kumo.define_spool {{ name = 'meta', path = '{tmp_path}/m' }}\n"
                   f"  kumo.configure_bounce_classifier {{ files = {to_lua(files)} }}\nend)\n")
    return subprocess.run([kh.kumod_bin(), "--validate", "--policy", str(pol)],
                          capture_output=True, text=True, timeout=60)


def test_validate_reports_a_bad_rule_file(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[rules]\nSpamBlock = ['spamhaus', 'blocked using (zen']\n")
    r = validate(tmp_path, [RULES, str(bad)])
    assert r.returncode == 1, (r.stdout, r.stderr)
    msg = r.stdout + r.stderr
    for part in ("kumo.configure_bounce_classifier", str(bad), "category 'SpamBlock'",
                 "pattern 'blocked using (zen'", "missing closing parenthesis"):
        assert part in msg, (part, msg)
    good = validate(tmp_path, [RULES])
    assert good.returncode == 0, (good.stdout, good.stderr)
