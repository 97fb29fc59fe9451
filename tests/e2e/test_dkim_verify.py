"""DKIM verification end to end (issue 18): messages signed by dkimpy
(python3-dkim), with their public keys published through
kumo.dns.configure_test_resolver zones, reach kumod over SMTP; the policy
calls msg:dkim_verify() in smtp_server_message_received, adds the
Authentication-Results header (msg:add_authentication_results) and records
each result in an X-Verify header; the test reads both from the copy a
real SMTP peer received. Covers pass (RSA and Ed25519, relaxed and simple,
l=, two signatures), fail (tampered body, tampered signed header),
permerror (malformed signature, no key, revoked key, bad key, wrong key
type, l= past the body, expired, strict key with a subdomain i=),
temperror (SERVFAIL), no signature at all ("none"), and kumod's own
signatures verified by kumod."""
import base64
import re

import dkim
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from kumod_harness import default_policy, wait_until
from smtpdeliv_peers import SmtpPeer, free_port_on

PEER_IP = "127.0.0.62"
DOMAIN = "verify.example"
BODY = (b"Hello  there,\t \r\n\r\nA line with trailing space   \r\n"
        b"  inner   runs\r\n.a leading dot\r\n\r\n")

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
kumo.on('smtp_server_message_received', function(msg)
  local case = msg:get_first_named_header_value('X-Case')
  if case == 'self' then
    msg:dkim_sign(kumo.dkim.rsa_sha256_signer {{
      domain = '{domain}', selector = 'rsa', key = {{ key_data = [[{rsa_pem}]] }},
      headers = {{ 'From', 'To', 'Subject' }} }})
  elseif case == 'self-ed' then
    msg:dkim_sign(kumo.dkim.ed25519_signer {{
      domain = '{domain}', selector = 'ed', key = {{ key_data = [[{ed_pem}]] }},
      headers = {{ 'From', 'To', 'Subject' }} }})
  end
  local results = msg:dkim_verify()
  local parts = {{}}
  for i, r in ipairs(results) do
    assert(r.method == 'dkim')
    parts[i] = string.format('%s|%s|%s|%s', r.result, r.reason or '',
                             r.props['header.d'] or '', r.props['header.b'] or '')
  end
  msg:add_authentication_results('mx.verify.test', results)
  msg:append_header('X-Verify', table.concat(parts, ' ;; '))
end)
"""


def zone_txt(name, value):
    chunks = [value[i:i + 200] for i in range(0, len(value), 200)] or [""]
    return f'{name} 300 IN TXT ( ' + " ".join(f'"{c}"' for c in chunks) + " )\n"


@pytest.fixture(scope="module")
def keys():
    rk = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ek = ed25519.Ed25519PrivateKey.generate()
    small = rsa.generate_private_key(public_exponent=65537, key_size=512) \
        if False else None  # cryptography refuses keys under 1024 bits
    rsa_pem = rk.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                               serialization.NoEncryption())
    ed_pem = ek.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    ed_raw = ek.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                              serialization.NoEncryption())
    rsa_pub = base64.b64encode(rk.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    ed_pub = base64.b64encode(ek.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()
    zone = "$ORIGIN verify.example.\n$TTL 300\n@ A 127.0.0.1\n"
    zone += zone_txt("rsa._domainkey", f"v=DKIM1; k=rsa; p={rsa_pub}")
    zone += zone_txt("ed._domainkey", f"v=DKIM1; k=ed25519; p={ed_pub}")
    zone += zone_txt("revoked._domainkey", "v=DKIM1; k=rsa; p=")
    zone += zone_txt("bad._domainkey", "v=DKIM1; k=rsa; p=AAAAAAAA")
    zone += zone_txt("wrongtype._domainkey", f"v=DKIM1; k=rsa; p={rsa_pub}")
    zone += zone_txt("strict._domainkey", f"v=DKIM1; k=rsa; t=s; p={rsa_pub}")
    zone += zone_txt("garbage._domainkey", "this is not ; a = = key")
    zone += zone_txt("rotate._domainkey", "v=DKIM1; k=rsa; p=")
    zone += zone_txt("rotate._domainkey", f"v=DKIM1; k=rsa; p={rsa_pub}")
    return {"rsa": rsa_pem, "ed_pem": ed_pem, "ed": base64.b64encode(ed_raw), "zone": zone}


@pytest.fixture(scope="module")
def run(module_kumod_factory, keys):
    port = free_port_on(PEER_IP)
    peer = SmtpPeer(PEER_IP, port).start()
    init = ("kumo.dns.configure_test_resolver { zones = { [[\n" + keys["zone"] +
            "]] }, servfail = { 'flaky._domainkey.verify.example' } }")
    text = POLICY.format(peer=PEER_IP, port=port, domain=DOMAIN,
                         rsa_pem=keys["rsa"].decode(), ed_pem=keys["ed_pem"].decode())
    k = module_kumod_factory(default_policy(handlers=text, init=init), name="dkimverify")
    yield {"k": k, "peer": peer, "keys": keys}
    peer.stop()


def message(case, subject="Verify me", extra=b""):
    return (f"From: Alice <alice@{DOMAIN}>\r\nTo: bob@dest.example\r\n"
            f"Subject: {subject}\r\nX-Case: {case}\r\n").encode() + extra + b"\r\n" + BODY


def sign(keys, msg, selector="rsa", alg="rsa", **kw):
    kw.setdefault("include_headers", [b"from", b"to", b"subject"])
    if alg == "ed":
        sig = dkim.sign(msg, selector.encode(), DOMAIN.encode(), keys["ed"],
                        signature_algorithm=b"ed25519-sha256", **kw)
    else:
        sig = dkim.sign(msg, selector.encode(), DOMAIN.encode(), keys["rsa"], **kw)
    return sig + msg


def send(k, data):
    s = k.smtp(ehlo="verify.e2e.test")
    try:
        assert s.mail(f"alice@{DOMAIN}")[0] == 250
        assert s.rcpt("bob@dest.example")[0] == 250
        code, text = s.data(data)
        assert code == 250, (code, text)
    finally:
        s.quit()


def delivered(run, case):
    def find():
        for m in run["peer"].received():
            if f"X-Case: {case}\r\n".encode() in m["data"]:
                return m["data"]
        return None
    return wait_until(find, timeout=20, what=f"delivery of {case}")


def header(data, name):
    m = re.search(rb"^" + name.encode() + rb": (.*?)\r\n(?![ \t])", data, re.S | re.M | re.I)
    assert m, (name, data[:600])
    return m.group(1).decode()


def verdicts(run, case, data):
    send(run["k"], data)
    got = delivered(run, case)
    v = re.sub(r"\r\n[ \t]", " ", header(got, "X-Verify"))
    out = [tuple(p.strip().split("|")) for p in v.split(";;")] if v.strip() else []
    return out, got


# RFC 8601 §2.2 grammar, enough to parse our header back: authserv-id, then
# resinfo*: method[/version]=result [reason=value] (ptype.property=pvalue)*
TOKEN = r"[!#$%&'*+\-.0-9A-Z^_`a-z{|}~@]+"
VALUE = rf'(?:{TOKEN}|"(?:[^"\\]|\\.)*")'


def parse_ar(value):
    value = re.sub(r"\r\n[ \t]", " ", value)
    m = re.match(rf"\s*({VALUE})\s*(.*)$", value, re.S)
    assert m, value
    serv, rest = m.group(1), m.group(2)
    if re.fullmatch(r";\s*none\s*", rest):
        return serv, []
    results = []
    for part in re.split(r";", rest)[1:]:
        m = re.fullmatch(rf"\s*({TOKEN})(?:/(\d+))?=({TOKEN})(?:\s+reason=({VALUE}))?((?:\s+{TOKEN}\.{TOKEN}={VALUE})*)\s*",
                         part, re.S)
        assert m, ("not RFC 8601 resinfo", part)
        props = dict(re.findall(rf"({TOKEN}\.{TOKEN})=({VALUE})", m.group(5)))
        results.append({"method": m.group(1), "result": m.group(3),
                        "reason": m.group(4), "props": props})
    return serv, results


PASSES = {
    "rsa-relaxed": dict(canonicalize=(b"relaxed", b"relaxed")),
    "rsa-simple": dict(canonicalize=(b"simple", b"simple")),
    "rsa-default": dict(),
    "ed-relaxed": dict(alg="ed", selector="ed", canonicalize=(b"relaxed", b"relaxed")),
    "ed-simple": dict(alg="ed", selector="ed", canonicalize=(b"simple", b"simple")),
    "rotated-key": dict(selector="rotate"),
}


@pytest.mark.parametrize("case", list(PASSES))
def test_dkimpy_signatures_pass(run, case):
    kw = dict(PASSES[case])
    msg = message(case)
    data = sign(run["keys"], msg, **kw)
    # dkimpy agrees with itself first
    v, got = verdicts(run, case, data)
    assert v == [("pass", "", DOMAIN, v[0][3])], v
    serv, ar = parse_ar(header(got, "Authentication-Results"))
    assert serv == "mx.verify.test"
    assert ar[0]["method"] == "dkim" and ar[0]["result"] == "pass"
    assert ar[0]["props"]["header.d"] == DOMAIN
    assert ar[0]["props"]["header.i"] == "@" + DOMAIN
    assert ar[0]["props"]["header.s"] == kw.get("selector", "rsa")
    assert ar[0]["props"]["header.a"] == ("ed25519-sha256" if kw.get("alg") == "ed"
                                          else "rsa-sha256")
    b = re.sub(r"\s", "", re.search(rb"b=([^;]*)$", data.split(b"\r\nFrom:")[0]).group(1).decode())
    assert b.startswith(ar[0]["props"]["header.b"].strip('"'))
    assert len(ar[0]["props"]["header.b"].strip('"')) >= 8


def test_body_length_allows_appended_text(run):
    msg = message("len")
    data = sign(run["keys"], msg, length=True) + b"appended by a list\r\n"
    v, _ = verdicts(run, "len", data)
    assert v[0][0] == "pass", v


def test_tampered_body_fails(run):
    data = sign(run["keys"], message("tbody")).replace(b"inner   runs", b"inner   ruins")
    v, _ = verdicts(run, "tbody", data)
    assert v[0][:2] == ("fail", "body hash did not verify"), v


def test_tampered_header_fails(run):
    data = sign(run["keys"], message("thdr")).replace(b"Subject: Verify me",
                                                      b"Subject: Verify you")
    v, _ = verdicts(run, "thdr", data)
    assert v[0][:2] == ("fail", "signature did not verify"), v


def test_two_signatures_give_two_results(run):
    msg = message("two")
    once = sign(run["keys"], msg, alg="ed", selector="ed")
    twice = sign(run["keys"], once)
    v, got = verdicts(run, "two", twice)
    assert [x[0] for x in v] == ["pass", "pass"], v
    assert v[0][3] != v[1][3]
    _, ar = parse_ar(header(got, "Authentication-Results"))
    assert [r["result"] for r in ar] == ["pass", "pass"]


@pytest.mark.parametrize("case,selector,alg,result,reason", [
    ("nokey", "absent", "rsa", "permerror", "no key for signature"),
    ("revoked", "revoked", "rsa", "permerror", "key revoked"),
    ("badkey", "bad", "rsa", "permerror", "key syntax error: p= is not a RSA public key"),
    ("garbage", "garbage", "rsa", "permerror", "key syntax error"),
    ("wrongtype", "wrongtype", "ed", "permerror", "inappropriate key algorithm"),
    ("servfail", "flaky", "rsa", "temperror", None),
])
def test_key_problems(run, case, selector, alg, result, reason):
    data = sign(run["keys"], message(case), selector=selector, alg=alg)
    v, _ = verdicts(run, case, data)
    assert v[0][0] == result, v
    if reason:
        assert v[0][1] == reason, v
    else:
        assert v[0][1].startswith("key unavailable:") and "SERVFAIL" in v[0][1], v


def test_strict_key_refuses_a_subdomain_identity(run):
    data = sign(run["keys"], message("strict"), selector="strict",
                identity=b"bob@sub." + DOMAIN.encode())
    v, _ = verdicts(run, "strict", data)
    assert v[0][0] == "permerror" and "strict" in v[0][1], v


def test_huge_body_length_is_permerror(run):
    data = sign(run["keys"], message("hugel"), length=True)
    data = re.sub(rb"l=\d+", b"l=999999999999999", data, count=1)
    v, _ = verdicts(run, "hugel", data)
    assert v[0][0] == "permerror" and "exceeds" in v[0][1], v
    data = re.sub(rb"l=\d+", b"l=" + b"9" * 80, sign(run["keys"], message("hugel2"), length=True),
                  count=1)
    v, _ = verdicts(run, "hugel2", data)
    assert v[0][0] == "permerror" and "l=" in v[0][1], v


@pytest.mark.parametrize("case,sig,reason", [
    ("malformed", b"v=1; a=rsa-sha256; this is not a tag list", "signature tag list is malformed"),
    ("missing-bh", b"v=1; a=rsa-sha256; d=verify.example; s=rsa; h=from; b=AAAA",
     "signature missing required tag bh="),
    ("bad-alg", b"v=1; a=rsa-md5; d=verify.example; s=rsa; h=from; bh=AAAA; b=AAAA",
     "unsupported signature algorithm rsa-md5"),
    ("no-from", b"v=1; a=rsa-sha256; d=verify.example; s=rsa; h=to; bh=AAAA; b=AAAA",
     "From field not signed"),
    ("expired", b"v=1; a=rsa-sha256; d=verify.example; s=rsa; h=from; x=1; bh=AAAA; b=AAAA",
     "signature expired"),
    ("bad-b64", b"v=1; a=rsa-sha256; d=verify.example; s=rsa; h=from; "
                b"bh=47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=; b=!!!!",
     None),
    ("bad-domain", b"v=1; a=rsa-sha256; d=verify example; s=rsa; h=from; bh=AAAA; b=AAAA",
     "signature syntax error: d= or s= is not a domain name"),
])
def test_malformed_signatures_are_permerror(run, case, sig, reason):
    data = b"DKIM-Signature: " + sig + b"\r\n" + message(case)
    v, got = verdicts(run, case, data)
    assert v[0][0] == "permerror", v
    if reason:
        assert v[0][1] == reason, v
    parse_ar(header(got, "Authentication-Results"))


def test_many_signatures_are_capped_at_ten(run):
    msg = message("many")
    for _ in range(12):
        msg = sign(run["keys"], msg)
    v, _ = verdicts(run, "many", msg)
    assert len(v) == 10 and all(x[0] == "pass" for x in v), v


def test_unsigned_message_has_no_results(run):
    v, got = verdicts(run, "unsigned", message("unsigned"))
    assert v == []
    assert re.sub(r"\s+", " ", header(got, "Authentication-Results")) == "mx.verify.test; none"


@pytest.mark.parametrize("case", ["self", "self-ed"])
def test_kumod_signatures_verify_in_kumod(run, case):
    v, got = verdicts(run, case, message(case))
    assert v[0][0] == "pass", v
    # and dkimpy agrees
    zone_recs = {}
    for name, val in re.findall(r'^(\S+)\s+300 IN TXT \( (.*?) \)$', run["keys"]["zone"], re.M):
        zone_recs[f"{name}.{DOMAIN}."] = "".join(re.findall(r'"([^"]*)"', val)).encode()
    # the signature is below the Authentication-Results header kumod added first
    signed = got[got.index(b"DKIM-Signature:"):]
    assert dkim.verify(signed, dnsfunc=lambda n, timeout=5: zone_recs.get(n.decode()))
