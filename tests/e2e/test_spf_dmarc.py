"""SPF and DMARC end to end (issue 18): a dnsmasq on a loopback address
serves the SPF and DMARC records (TXT), MX, A and PTR; a SERVFAIL upstream
behind it makes one zone fail. kumod's listener checks the HELO identity
with kumo.spf.check_host in smtp_server_ehlo, then, for each message,
kumo.spf.check_msg, msg:dkim_verify and kumo.dmarc.check_msg in
smtp_server_message_received; it adds the Authentication-Results header
and rejects what DMARC's policy says to reject. Clients connect from
different 127.0.0.x addresses. The test parses the header of the copy a
real SMTP peer received with RFC 8601's grammar and checks every result:
SPF pass, fail, softfail, neutral, none, temperror, permerror, include,
mx, ptr, exists with macros, the lookup and void-lookup limits; DMARC
pass (relaxed), fail under a strict policy (quarantine: delivered),
reject (550 at the SMTP level), none, temperror."""
import smtplib
import socket
import threading

import pytest

from kumod_harness import default_policy, wait_until
from smtpdeliv_peers import Dns, SmtpPeer, free_port_on
from test_dkim_verify import header, parse_ar

PEER_IP = "127.0.0.63"
GOOD_IP = "127.0.0.5"
OTHER_IP = "127.0.0.9"

POLICY = """
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    retry_interval = '2s',
    protocol = {{ smtp = {{ mx_list = {{ '[{peer}]' }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function(domain, source, site)
  return kumo.make_egress_path {{ prohibited_hosts = {{}}, smtp_port = {port} }}
end)
kumo.on('smtp_server_ehlo', function(domain, conn_meta)
  -- the HELO identity (RFC 7208 section 2.3), as the reference page's example
  local r = kumo.spf.check_host(domain, conn_meta)
  conn_meta:set_meta('spf_helo', r.disposition)
end)
kumo.on('smtp_server_message_received', function(msg, conn_meta)
  local spf = kumo.spf.check_msg(msg)
  local dkim = msg:dkim_verify()
  local dmarc = kumo.dmarc.check_msg(msg, dkim, nil, spf.result, false)
  msg:add_authentication_results('mx.e2e.test', {{ spf.result, dmarc.result }})
  msg:append_header('X-SPF-HELO', conn_meta:get_meta('spf_helo') or 'unset')
  msg:append_header('X-DMARC-Disposition', dmarc.disposition)
  if dmarc.disposition == 'Reject' then
    kumo.reject(550, '5.7.1 rejected by the DMARC policy of ' .. dmarc.result.props['header.from'])
  end
end)
"""

ELEVEN = " ".join(f"a:n{i}.limit.test" for i in range(1, 12))
TXT = [
    ("pass.test", f"v=spf1 ip4:{GOOD_IP} -all"),
    ("soft.test", f"v=spf1 ip4:{GOOD_IP} ~all"),
    ("neutral.test", "v=spf1 ?all"),
    ("mx.test", "v=spf1 mx -all"),
    ("ptr.test", "v=spf1 ptr:ptr.test -all"),
    ("inc.test", "v=spf1 include:pass.test -all"),
    ("macro.test", "v=spf1 exists:%{l}.%{ir}.x.macro.test -all"),
    ("limit.test", f"v=spf1 {ELEVEN} +all"),
    ("voids.test", "v=spf1 a:v1.voids.test a:v2.voids.test a:v3.voids.test +all"),
    ("perm.test", "v=spf1 ip4:1.2.3.400 -all"),
    ("exp.test", "v=spf1 -all exp=why.exp.test"),
    ("why.exp.test", "%{i} may not send for %{d}"),
    ("helo.test", "v=spf1 a -all"),
    # DMARC
    ("relaxed.test", "v=spf1 +all"),
    ("bounce.relaxed.test", f"v=spf1 ip4:{GOOD_IP} -all"),
    ("_dmarc.relaxed.test", "v=DMARC1; p=reject; rua=mailto:dmarc@relaxed.test"),
    ("bounce.strict.test", f"v=spf1 ip4:{GOOD_IP} -all"),
    ("_dmarc.strict.test", "v=DMARC1; p=quarantine; aspf=s"),
    ("_dmarc.pass.test", "v=DMARC1; p=reject"),
]
A = [("mail.mx.test", "127.0.0.6"), ("host.ptr.test", "127.0.0.7"),
     ("alice.5.0.0.127.x.macro.test", "127.0.0.2"), ("helo.test", GOOD_IP),
     ("nospf.test", "127.0.0.5")] + [(f"n{i}.limit.test", "10.0.0.1") for i in range(1, 12)]
MX = [("mx.test", "mail.mx.test", 10)]
PTR = [("7.0.0.127.in-addr.arpa", "host.ptr.test")]


class ServfailDns:
    """A UDP name server that answers every query SERVFAIL: dnsmasq's
    upstream for flaky.test."""

    def __init__(self):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self):
        while True:
            try:
                pkt, peer = self.sock.recvfrom(4096)
            except OSError:
                return
            if len(pkt) >= 12:
                flags = 0x8082 | (pkt[2] & 0x01) << 8  # QR, RD echoed, RA, SERVFAIL
                self.sock.sendto(pkt[:2] + flags.to_bytes(2, "big") + pkt[4:6] + b"\0" * 6
                                 + pkt[12:], peer)

    def stop(self):
        self.sock.close()


@pytest.fixture(scope="module")
def run(module_kumod_factory, tmp_path_factory):
    upstream = ServfailDns()
    dns = Dns(tmp_path_factory.mktemp("spfdns"), mx=MX, a=A, txt=TXT, ptr=PTR,
              local=("test", "in-addr.arpa"),
              servers=[("flaky.test", f"127.0.0.1#{upstream.port}")]).start()
    port = free_port_on(PEER_IP)
    peer = SmtpPeer(PEER_IP, port).start()
    init = (f"kumo.dns.configure_resolver {{ name_servers = {{ '127.0.0.1:{dns.port}' }}, "
            "options = { timeout = '2s', attempts = 1 } }")
    k = module_kumod_factory(default_policy(handlers=POLICY.format(peer=PEER_IP, port=port),
                                            listener="relay_hosts = { '127.0.0.0/8' },",
                                            init=init), name="spfdmarc")
    yield {"k": k, "peer": peer, "dns": dns}
    peer.stop()
    dns.stop()
    upstream.stop()


def send(k, case, mail_from, from_hdr, src=GOOD_IP, ehlo="helo.test"):
    s = smtplib.SMTP(local_hostname=ehlo, timeout=30, source_address=(src, 0))
    s.connect("127.0.0.1", k.smtp_port)
    try:
        s.ehlo(ehlo)
        assert s.mail(mail_from)[0] == 250
        assert s.rcpt("bob@dest.example")[0] == 250
        data = (f"From: {from_hdr}\r\nTo: bob@dest.example\r\nSubject: {case}\r\n"
                f"X-Case: {case}\r\n\r\nbody\r\n").encode()
        return s.data(data)
    finally:
        s.quit()


def delivered(run, case):
    def find():
        for m in run["peer"].received():
            if f"X-Case: {case}\r\n".encode() in m["data"]:
                return m["data"]
        return None
    return wait_until(find, timeout=20, what=f"delivery of {case}")


def results_of(run, case, mail_from, from_hdr, src=GOOD_IP, ehlo="helo.test"):
    code, text = send(run["k"], case, mail_from, from_hdr, src, ehlo)
    assert code == 250, (code, text)
    data = delivered(run, case)
    serv, results = parse_ar(header(data, "Authentication-Results"))
    assert serv == "mx.e2e.test"
    by = {r["method"]: r for r in results}
    assert [r["method"] for r in results] == ["spf", "dmarc"], results
    return by, data


def unq(v):
    return v[1:-1].replace('\\"', '"').replace("\\\\", "\\") if v and v[0] == '"' else v


SPF_CASES = [
    # case, MAIL FROM, client address, result, reason (part)
    ("spf-pass", "a@pass.test", GOOD_IP, "pass", f"matched 'ip4:{GOOD_IP}' directive"),
    ("spf-fail", "a@pass.test", OTHER_IP, "fail", "matched '-all' directive"),
    ("spf-softfail", "a@soft.test", OTHER_IP, "softfail", "matched '~all' directive"),
    ("spf-neutral", "a@neutral.test", OTHER_IP, "neutral", "matched '?all' directive"),
    ("spf-none", "a@nospf.test", GOOD_IP, "none", "no SPF records found for nospf.test"),
    ("spf-temperror", "a@flaky.test", GOOD_IP, "temperror", "flaky.test"),
    ("spf-permerror", "a@perm.test", GOOD_IP, "permerror", "failed to parse spf record"),
    ("spf-include", "a@inc.test", GOOD_IP, "pass", "matched 'include:pass.test' directive"),
    ("spf-mx", "a@mx.test", "127.0.0.6", "pass", "matched 'mx' directive"),
    ("spf-ptr", "a@ptr.test", "127.0.0.7", "pass", "matched 'ptr:ptr.test' directive"),
    ("spf-ptr-fail", "a@ptr.test", OTHER_IP, "fail", None),
    ("spf-macro", "alice@macro.test", GOOD_IP, "pass", "exists:%{l}.%{ir}.x.macro.test"),
    ("spf-macro-fail", "bob@macro.test", GOOD_IP, "fail", None),
    ("spf-limit", "a@limit.test", GOOD_IP, "permerror", "DNS lookup limits exceeded"),
    ("spf-voids", "a@voids.test", GOOD_IP, "permerror", "void lookup limit exceeded"),
    ("spf-exp", "a@exp.test", GOOD_IP, "fail", f"{GOOD_IP} may not send for exp.test"),
]


@pytest.mark.parametrize("case,mail_from,src,want,reason", SPF_CASES)
def test_spf_results(run, case, mail_from, src, want, reason):
    by, data = results_of(run, case, mail_from, "Alice <alice@nodmarc.test>", src=src)
    spf = by["spf"]
    assert spf["result"] == want, spf
    if reason:
        assert reason in unq(spf["reason"]), spf
    assert spf["props"]["smtp.mailfrom"] == mail_from
    assert spf["props"]["smtp.helo"] == "helo.test"
    # the HELO identity checked at EHLO: helo.test allows only GOOD_IP
    assert f"X-SPF-HELO: {'pass' if src == GOOD_IP else 'fail'}\r\n".encode() in data
    assert by["dmarc"]["result"] == "none"


def test_dmarc_relaxed_pass(run):
    by, data = results_of(run, "dmarc-relaxed", "b@bounce.relaxed.test", "a@relaxed.test")
    assert by["spf"]["result"] == "pass"
    d = by["dmarc"]
    assert d["result"] == "pass" and "SPF aligned with relaxed.test" in unq(d["reason"]), d
    assert d["props"]["header.from"] == "relaxed.test"
    assert b"X-DMARC-Disposition: Pass\r\n" in data


def test_dmarc_strict_fail_quarantine(run):
    # SPF passes for bounce.strict.test, which aspf=s does not align with strict.test
    by, data = results_of(run, "dmarc-strict", "b@bounce.strict.test", "a@strict.test")
    assert by["spf"]["result"] == "pass"
    d = by["dmarc"]
    assert d["result"] == "fail", d
    assert "aspf=s" in unq(d["reason"])
    assert d["props"]["policy.published-domain-policy"] == "quarantine"
    assert b"X-DMARC-Disposition: Quarantine\r\n" in data


def test_dmarc_reject_at_smtp(run):
    code, text = send(run["k"], "dmarc-reject", "x@soft.test", "a@pass.test", src=OTHER_IP)
    assert code == 550, (code, text)
    assert b"5.7.1 rejected by the DMARC policy of pass.test" in text


def test_dmarc_subdomain_relaxed_spf(run):
    # From a subdomain of pass.test, MAIL FROM pass.test: relaxed alignment, org policy
    by, _ = results_of(run, "dmarc-sub", "a@pass.test", "a@news.pass.test")
    assert by["dmarc"]["result"] == "pass", by["dmarc"]


def test_dmarc_temperror(run):
    by, data = results_of(run, "dmarc-temperror", "a@pass.test", "a@flaky.test")
    assert by["dmarc"]["result"] == "temperror", by["dmarc"]
    assert b"X-DMARC-Disposition: TempError\r\n" in data


def test_dns_went_through_dnsmasq(run):
    qs = run["dns"].queries()
    assert any("query[TXT] pass.test" in q for q in qs), qs[:20]
    assert any("query[PTR] 7.0.0.127.in-addr.arpa" in q for q in qs), qs[:20]
    assert any("query[MX] mx.test" in q for q in qs), qs[:20]
    assert any("query[TXT] _dmarc.relaxed.test" in q for q in qs), qs[:20]


# The two reference pages' examples (docs/reference/kumo.spf/check_host.md
# and check_msg.md), verbatim, in one policy.
DOC_EXAMPLES = """
kumo.on('smtp_server_ehlo', function(domain, conn_meta)
  -- Check the SPF policy for the domain and return the results.
  local result = kumo.spf.check_host(domain, conn_meta)
  print('spf', kumo.json_encode_pretty(result))
  if result.disposition ~= 'pass' then
    kumo.reject(420, 'go away')
  end
end)

kumo.on('smtp_server_message_received', function(msg, conn_meta)
  -- Check the SPF policy for the domain and return the results.
  local result = kumo.spf.check_msg(msg)
  print('spf', kumo.json_encode_pretty(result))
  if result.disposition ~= 'pass' then
    kumo.reject(420, 'go away')
  end
end)
"""


@pytest.fixture(scope="module")
def docs_kumod(module_kumod_factory, run):
    init = (f"kumo.dns.configure_resolver {{ name_servers = {{ '127.0.0.1:{run['dns'].port}' }} }}")
    return module_kumod_factory(default_policy(handlers=DOC_EXAMPLES, init=init,
                                               listener="relay_hosts = { '127.0.0.0/8' },"),
                                name="spfdocs")


def test_reference_page_examples(docs_kumod):
    k = docs_kumod
    # check_host: helo.test allows only GOOD_IP
    s = smtplib.SMTP(local_hostname="helo.test", timeout=30, source_address=(OTHER_IP, 0))
    s.connect("127.0.0.1", k.smtp_port)
    code, text = s.ehlo("helo.test")
    assert (code, text) == (420, b"go away"), (code, text)
    s.close()
    # accepted at EHLO; check_msg then judges MAIL FROM's domain
    for mail_from, want in (("a@pass.test", 250), ("a@neutral.test", 420)):
        s = smtplib.SMTP(local_hostname="helo.test", timeout=30, source_address=(GOOD_IP, 0))
        s.connect("127.0.0.1", k.smtp_port)
        assert s.ehlo("helo.test")[0] == 250
        assert s.mail(mail_from)[0] == 250
        assert s.rcpt("bob@dest.example")[0] == 250
        code, text = s.data(b"From: a@pass.test\r\nSubject: doc\r\n\r\nbody\r\n")
        assert code == want, (mail_from, code, text)
        s.quit()
    # the printed object: disposition and an authenticationresult
    def printed():
        with open(k.stderr_path, "rb") as f:
            t = f.read().decode(errors="replace")
        return t if '"smtp.mailfrom": "a@neutral.test"' in t else None
    out = wait_until(printed, what="the printed SPF result")
    assert '"disposition": "neutral"' in out and '"method": "spf"' in out, out[-2000:]
    assert "matched '?all' directive" in out, out[-2000:]
