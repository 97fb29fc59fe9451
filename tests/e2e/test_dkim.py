"""DKIM signing end to end (issue 18): kumod receives mail over SMTP, signs
it in smtp_server_message_received with kumo.dkim signers (RSA-SHA256 from
PKCS#8 and PKCS#1 PEM, Ed25519 from PKCS#8 DER and PEM; relaxed and simple;
with and without body_length; over-signed headers; i=, x=, r=, atps), and
delivers it to a real SMTP peer; the test verifies what the peer received
with dkimpy (python3-dkim), the public keys served by its dnsfunc, and
checks that tampered copies fail. Runs twice: signing inline on the
reactor (KumoMTA's default) and on the dkimsign pool
(kumo.dkim.set_signing_threads)."""
import base64
import os
import re
import subprocess

import dkim
import pytest
from cryptography.hazmat.primitives import serialization

from kumod_harness import default_policy, parse_ids, wait_until
from smtpdeliv_peers import SmtpPeer, free_port_on, to_lua

PEER_IP = "127.0.0.61"
DOMAIN = "signing.example"

# case name: signer constructor, parameters (key filled in by the fixture)
CASES = {
    "rsa-relaxed": ("rsa_sha256_signer", {"selector": "rsa8", "key": "rsa8.pem",
                                          "headers": ["From", "To", "Subject"]}),
    "rsa-simple": ("rsa_sha256_signer", {"selector": "rsa1", "key": "rsa1.pem",
                                         "headers": ["From", "To", "Subject", "Date"],
                                         "header_canonicalization": "Simple",
                                         "body_canonicalization": "Simple"}),
    "rsa-length": ("rsa_sha256_signer", {"selector": "rsa8", "key": "rsa8.pem",
                                         "headers": ["From", "Subject"], "body_length": True,
                                         "header_canonicalization": "Simple"}),
    "rsa-oversign": ("rsa_sha256_signer", {"selector": "rsa8", "key": "rsa8.pem",
                                           "headers": ["From", "To", "Subject", "Reply-To"],
                                           "over_sign": True, "expiration": 3600,
                                           "reporting": True,
                                           "agent_user_identifier": "bob@mail." + DOMAIN,
                                           "atps": "thirdparty.example", "atpsh": "Sha256",
                                           "ttl": "5 mins"}),
    "ed-relaxed": ("ed25519_signer", {"selector": "ed", "key": "ed.der",
                                      "headers": ["From", "To", "Subject"]}),
    "ed-simple-length": ("ed25519_signer", {"selector": "edpem", "key": "ed.pem",
                                            "headers": ["From", "To", "Subject"],
                                            "over_sign": True, "body_length": True,
                                            "header_canonicalization": "Simple",
                                            "body_canonicalization": "Simple"}),
}

BODY = ("Hello  there,\t \r\n\r\nA line with trailing space   \r\n"
        "  leading and   inner   runs\r\n.a leading dot\r\n\r\n\r\n")

POLICY = """
local CASES = {cases}
kumo.on('pre_init', function()
  {pre_init}
end)
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
  local c = CASES[case]
  if c then
    msg:dkim_sign(kumo.dkim[c[1]](c[2]))
    -- a second signer object from the cache for the same parameters
    if case == 'rsa-relaxed' then
      local again = kumo.dkim[c[1]](c[2])
      assert(tostring(again) == 'DkimSigner(rsa-sha256, d={domain}, s=rsa8)')
    end
  end
end)
"""


def keygen(d):
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)
    run("openssl", "genpkey", "-algorithm", "RSA", "-pkeyopt", "rsa_keygen_bits:2048",
        "-out", f"{d}/rsa8.pem")
    run("openssl", "genrsa", "-traditional", "-out", f"{d}/rsa1.pem", "2048")
    run("openssl", "genpkey", "-algorithm", "ed25519", "-out", f"{d}/ed.pem")
    run("openssl", "pkey", "-in", f"{d}/ed.pem", "-outform", "DER", "-out", f"{d}/ed.der")
    with open(f"{d}/rsa1.pem") as f:
        assert f.read().startswith("-----BEGIN RSA PRIVATE KEY-----")


def txt_record(path):
    data = open(path, "rb").read()
    if b"BEGIN" in data:
        k = serialization.load_pem_private_key(data, None)
    else:
        k = serialization.load_der_private_key(data, None)
    pub = k.public_key()
    try:
        raw = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        kt = b"ed25519"
    except ValueError:
        raw = pub.public_bytes(serialization.Encoding.DER,
                               serialization.PublicFormat.SubjectPublicKeyInfo)
        kt = b"rsa"
    return b"v=DKIM1; k=" + kt + b"; p=" + base64.b64encode(raw)


@pytest.fixture(scope="module")
def keys(tmp_path_factory):
    d = str(tmp_path_factory.mktemp("keys"))
    keygen(d)
    zone = {}
    for sel, f in (("rsa8", "rsa8.pem"), ("rsa1", "rsa1.pem"), ("ed", "ed.der"),
                   ("edpem", "ed.pem")):
        zone[f"{sel}._domainkey.{DOMAIN}."] = txt_record(os.path.join(d, f))
    return d, zone


@pytest.fixture(scope="module", params=["inline", "pool"])
def run(request, module_kumod_factory, keys):
    kdir, zone = keys
    port = free_port_on(PEER_IP)
    peer = SmtpPeer(PEER_IP, port).start()
    cases = {}
    for name, (ctor, params) in CASES.items():
        p = dict(params, domain=DOMAIN, key=os.path.join(kdir, params["key"]))
        cases[name] = [ctor, p]
    # set twice: a reload with the same size is accepted
    pre_init = "kumo.dkim.set_signing_threads(2) kumo.dkim.set_signing_threads(2)" if request.param == "pool" else ""
    text = POLICY.format(cases=to_lua(cases), pre_init=pre_init, peer=PEER_IP, port=port,
                         domain=DOMAIN)
    k = module_kumod_factory(default_policy(handlers=text), name=f"dkim-{request.param}")
    yield {"k": k, "peer": peer, "zone": zone}
    peer.stop()


def send(k, case, extra_headers=""):
    msg = (f"From: Alice <alice@{DOMAIN}>\r\nTo: bob@dest.example\r\n"
           f"Subject:  DKIM   case\r\n {case}\r\nDate: Mon, 1 Jan 2024 00:00:00 +0000\r\n"
           f"X-Case: {case}\r\n{extra_headers}\r\n{BODY}").encode()
    s = k.smtp(ehlo="dkim.e2e.test")
    try:
        assert s.mail(f"alice@{DOMAIN}")[0] == 250
        assert s.rcpt("bob@dest.example")[0] == 250
        code, text = s.data(msg)
        assert code == 250, (code, text)
        return parse_ids(text.decode())[0]
    finally:
        s.quit()


def received(peer, case):
    def find():
        for m in peer.received():
            if f"X-Case: {case}\r\n".encode() in m["data"]:
                return m["data"]
        return None
    return wait_until(find, timeout=20, what=f"delivery of {case}")


def verify(zone, data):
    return dkim.verify(data, dnsfunc=lambda name, timeout=5: zone.get(name.decode(), None))


def sig_tags(data):
    m = re.search(rb"^DKIM-Signature: (.*?)\r\n(?![ \t])", data, re.S | re.M)
    assert m, data[:400]
    value = re.sub(rb"\r\n[ \t]", b" ", m.group(1)).decode()
    return {k.strip(): v.strip() for k, v in (t.split("=", 1) for t in value.split(";") if t.strip())}


@pytest.mark.parametrize("case", list(CASES))
def test_signed_message_verifies_with_dkimpy(run, case):
    send(run["k"], case)
    data = received(run["peer"], case)
    # the signature is the first header kumod's policy added (delivery adds
    # X-KumoRef above it, as KumoMTA does)
    head = data[:data.index(b"\r\n\r\n")]
    assert re.match(rb"(X-KumoRef: [^\r]*\r\n)?DKIM-Signature: ", head), data[:200]
    assert head.count(b"DKIM-Signature:") == 1
    assert verify(run["zone"], data), data.decode(errors="replace")
    # tampering with the body or a signed header breaks the signature
    body_at = data.index(b"\r\n\r\n") + 4
    assert not verify(run["zone"], data[:body_at] + data[body_at:].replace(b"inner", b"outer"))
    assert not verify(run["zone"], data.replace(b"DKIM   case", b"DKIM   kase"))


def test_signature_tags(run):
    send(run["k"], "rsa-oversign")
    tags = sig_tags(received(run["peer"], "rsa-oversign"))
    assert tags["v"] == "1" and tags["a"] == "rsa-sha256" and tags["d"] == DOMAIN
    assert tags["s"] == "rsa8" and tags["c"] == "relaxed/relaxed"
    # over_sign: From, To, Subject present once each are signed twice; the
    # absent Reply-To once, so none can be added
    assert tags["h"].replace(" ", "") == "from:from:to:to:subject:subject:reply-to"
    assert int(tags["x"]) - int(tags["t"]) == 3600
    assert tags["r"] == "y" and tags["i"] == f"bob@mail.{DOMAIN}"
    assert tags["atps"] == "thirdparty.example" and tags["atpsh"] == "sha256"
    assert "l" not in tags


def test_over_signing_refuses_an_added_header(run):
    send(run["k"], "rsa-oversign")
    data = received(run["peer"], "rsa-oversign")
    assert verify(run["zone"], data)
    # a second From or a Reply-To slipped in after signing fails
    body_at = data.index(b"\r\n\r\n")
    assert not verify(run["zone"], data[:body_at] + b"\r\nReply-To: evil@x.example" +
                      data[body_at:])
    assert not verify(run["zone"], data[:body_at] + b"\r\nFrom: evil@x.example" + data[body_at:])


def test_body_length_allows_appended_text_only(run):
    send(run["k"], "rsa-length")
    data = received(run["peer"], "rsa-length")
    tags = sig_tags(data)
    body = data[data.index(b"\r\n\r\n") + 4:]
    # l= is the relaxed canonical length: trailing empty lines dropped
    canon = re.sub(rb"[ \t]+", b" ", body)
    canon = re.sub(rb" \r\n", b"\r\n", canon).rstrip(b"\r\n") + b"\r\n"
    assert int(tags["l"]) == len(canon)
    assert verify(run["zone"], data + b"appended after signing\r\n")
    assert not verify(run["zone"], data.replace(b"leading dot", b"leading dog"))


def test_unsigned_headers_may_change(run):
    send(run["k"], "ed-relaxed", extra_headers="X-Unsigned: one\r\n")
    data = received(run["peer"], "ed-relaxed")
    assert verify(run["zone"], data.replace(b"X-Unsigned: one", b"X-Unsigned: two"))


def test_signing_threads_run_only_when_configured(request, run):
    """set_signing_threads starts the dkimsign pool; without it there is none
    and signing happens on the reactor (KumoMTA's documented default)."""
    pid = run["k"].proc.pid
    names = []
    for t in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{t}/comm") as f:
            names.append(f.read().strip())
    pool = "pool" in request.node.callspec.id
    assert names.count("dkimsign") == (2 if pool else 0), names
