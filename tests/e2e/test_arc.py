"""ARC (RFC 8617) and DKIM interoperability end to end (issue 18), through
real sockets, with every key published by dnsmasq on a loopback address
(127.0.18.53, port 53, so that OpenDKIM's resolver can reach it too):

- kumod signs with DKIM (RSA relaxed and simple, with and without l=,
  over-signed headers, Ed25519); the copy a real SMTP peer received
  verifies with OpenDKIM (the `opendkim` milter in test mode, -t) and with
  dkimpy; the same copy tampered fails in both.
- OpenDKIM (the milter in test mode, signing) and dkimpy sign; kumod's
  msg:dkim_verify passes them, and fails them tampered with the right
  result.
- ARC: chains made by dkimpy (one and two sets) verify in kumod, which
  seals on top, and dkimpy verifies the mixed chain; kumod's seals (RSA,
  Ed25519) verify in dkimpy; two kumod hops (A seals and relays to B, B
  verifies and seals again, the sink checks with dkimpy).
- Bad input: malformed ARC sets (missing instance, duplicate i=, i > 50,
  broken seal), bad and revoked keys, a DNS lookup that times out: the
  documented fail with its reason / temperror / permerror, and kumod keeps
  relaying.
"""
import base64
import os
import re
import socket
import subprocess
import time
from types import SimpleNamespace

import dkim
import dns.resolver
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

from kumod_harness import default_policy, wait_until
from smtpdeliv_peers import DNSMASQ, SmtpPeer, free_port_on

# dkimpy's ARC signer reads Authentication-Results with the `authres`
# package (python3-authres), which this machine does not have; the only use
# is finding the signer's own results and its arc= verdict (the cv= of the
# new seal). This stand-in does exactly that; the signing itself is dkimpy's.
try:
    import authres  # noqa: F401
except ImportError:
    class _ARHeader:
        def __init__(self, serv, results):
            self.authserv_id, self.results = serv, results

        @classmethod
        def parse(cls, text):
            parts = [p.strip() for p in text.split(":", 1)[1].split(";")]
            results = []
            for p in parts[1:]:
                m = re.match(r"([\w.-]+)(?:/\d+)?\s*=\s*(\w+)", p)
                if m:
                    results.append(SimpleNamespace(method=m.group(1), result=m.group(2)))
            return cls(parts[0], results)

    dkim.authres = SimpleNamespace(AuthenticationResultsHeader=_ARHeader,
                                   core=SimpleNamespace(SyntaxError=ValueError),
                                   AuthresNotFoundError=ImportError)

PEER_IP = "127.0.18.62"
DOMAIN = "arc.example"
OPENDKIM = "/usr/sbin/opendkim"

POLICY = """
local RSA = [[{rsa_pem}]]
local ED = [[{ed_pem}]]
local function signer(kind, opts)
  local p = {{ domain = '{domain}', selector = kind == 'ed' and 'ed' or 'rsa',
              headers = {{ 'From', 'To', 'Subject', 'Date' }},
              key = {{ key_data = kind == 'ed' and ED or RSA }} }}
  for k, v in pairs(opts or {{}}) do p[k] = v end
  if kind == 'ed' then return kumo.dkim.ed25519_signer(p) end
  return kumo.dkim.rsa_sha256_signer(p)
end
local SIGN = {{
  ['rsa-relaxed'] = {{ 'rsa' }},
  ['rsa-simple'] = {{ 'rsa', {{ header_canonicalization = 'Simple', body_canonicalization = 'Simple' }} }},
  ['rsa-len'] = {{ 'rsa', {{ body_length = true }} }},
  ['rsa-simple-len'] = {{ 'rsa', {{ body_length = true, body_canonicalization = 'Simple' }} }},
  ['rsa-over'] = {{ 'rsa', {{ over_sign = true }} }},
  ['ed-relaxed'] = {{ 'ed' }},
  ['ed-simple'] = {{ 'ed', {{ header_canonicalization = 'Simple', body_canonicalization = 'Simple' }} }},
}}
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    retry_interval = '2s',
    protocol = {{ smtp = {{ mx_list = {{ '[{next_ip}]' }} }} }},
  }}
end)
kumo.on('get_egress_path_config', function(domain, source, site)
  return kumo.make_egress_path {{ prohibited_hosts = {{}}, smtp_port = {next_port},
    enable_tls = 'OpportunisticInsecure' }}
end)
kumo.on('smtp_server_message_received', function(msg)
  local case = msg:get_first_named_header_value('X-Case') or ''
  local me = '{me}'
  local arc = msg:arc_verify()
  msg:append_header('X-ARC-' .. me, arc.result .. '|' .. (arc.reason or '') .. '|' ..
    (arc.props['header.oldest-pass'] or ''))
  local parts = {{}}
  for i, r in ipairs(msg:dkim_verify()) do
    parts[i] = r.result .. '|' .. (r.reason or '') .. '|' .. (r.props['header.s'] or '')
  end
  msg:append_header('X-DKIM-' .. me, table.concat(parts, ' ;; '))
  local s = SIGN[case:match('^sign:(.*)$') or '']
  if s then msg:dkim_sign(signer(s[1], s[2])) end
  local seal = case:match('^seal:(%w+)$') or (case == 'hop' and 'rsa')
    or (case == 'hop-ed' and (me == 'A' and 'ed' or 'rsa'))
  if seal then
    local results = msg:dkim_verify()
    table.insert(results, arc)
    msg:arc_seal(signer(seal), msg:get_meta 'hostname', results)
  end
end)
"""


def zone_chunks(value):
    return [value[i:i + 200] for i in range(0, len(value), 200)] or [""]


def free_dns_ip():
    for last in range(53, 90):
        ip = f"127.0.18.{last}"
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            s.bind((ip, 53))
            return ip
        except OSError:
            continue
        finally:
            s.close()
    pytest.skip("no loopback address with port 53 free")


class Zone:
    """dnsmasq on <ip>:53 serving the TXT records; names under
    slow.example are forwarded to a socket that never answers."""

    def __init__(self, workdir, txt):
        self.ip = free_dns_ip()
        self.silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.silent.bind(("127.0.0.1", 0))
        self.log = os.path.join(str(workdir), "dnsmasq.log")
        args = [DNSMASQ, "--no-resolv", "--no-hosts", "--port=53", f"--listen-address={self.ip}",
                "--bind-interfaces", "-k", "--conf-file=/dev/null", "--pid-file=",
                "--local=/example/", "--cache-size=0", "--log-queries",
                f"--log-facility={self.log}",
                f"--server=/slow.example/127.0.0.1#{self.silent.getsockname()[1]}"]
        for name, value in txt:
            args.append(f"--txt-record={name}," + ",".join(zone_chunks(value)))
        self.proc = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.PIPE)
        r = dns.resolver.Resolver(configure=False)
        r.nameservers = [self.ip]
        r.lifetime = 2
        self.resolver = r
        deadline = time.monotonic() + 10
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError("dnsmasq exited: " + self.proc.stderr.read().decode())
            try:
                r.resolve(f"rsa._domainkey.{DOMAIN}", "TXT")
                break
            except Exception:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def txt(self, name, timeout=5):
        """dkimpy's dnsfunc, through dnsmasq."""
        name = name.decode().rstrip(".")
        try:
            ans = self.resolver.resolve(name, "TXT")
        except Exception:
            return None
        return b"".join(b"".join(r.strings) for r in ans)

    def stop(self):
        self.proc.terminate()
        self.proc.wait(5)
        self.silent.close()


@pytest.fixture(scope="module")
def env(module_kumod_factory, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("arc")
    rk = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    ek = ed25519.Ed25519PrivateKey.generate()
    rsa_pem = rk.private_bytes(serialization.Encoding.PEM,
                               serialization.PrivateFormat.TraditionalOpenSSL,
                               serialization.NoEncryption())
    ed_pem = ek.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                              serialization.NoEncryption())
    ed_raw = base64.b64encode(ek.private_bytes(serialization.Encoding.Raw,
                                               serialization.PrivateFormat.Raw,
                                               serialization.NoEncryption()))
    rsa_pub = base64.b64encode(rk.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo)).decode()
    ed_pub = base64.b64encode(ek.public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)).decode()
    zone = Zone(tmp, [
        (f"rsa._domainkey.{DOMAIN}", f"v=DKIM1; k=rsa; p={rsa_pub}"),
        (f"ed._domainkey.{DOMAIN}", f"v=DKIM1; k=ed25519; p={ed_pub}"),
        (f"revoked._domainkey.{DOMAIN}", "v=DKIM1; k=rsa; p="),
        (f"bad._domainkey.{DOMAIN}", "v=DKIM1; k=rsa; p=AAAAAAAA"),
    ])
    keyfile = tmp / "rsa.pem"
    keyfile.write_bytes(rsa_pem)
    port = free_port_on(PEER_IP)
    peer = SmtpPeer(PEER_IP, port).start()
    init = (f"kumo.dns.configure_resolver {{ name_servers = {{ '{zone.ip}:53' }}, "
            "options = { timeout = '1s', attempts = 1 } }")

    def policy(me, next_ip, next_port):
        return default_policy(init=init, hostname=f"mx-{me.lower()}.arc.example",
                              handlers=POLICY.format(rsa_pem=rsa_pem.decode(),
                                                     ed_pem=ed_pem.decode(), domain=DOMAIN,
                                                     me=me, next_ip=next_ip, next_port=next_port))
    b = module_kumod_factory(policy("B", PEER_IP, port), name="arc_b")
    a = module_kumod_factory(policy("A", "127.0.0.1", b.smtp_port), name="arc_a")
    yield {"a": a, "b": b, "peer": peer, "zone": zone, "rsa": rsa_pem, "ed": ed_raw,
           "keyfile": str(keyfile), "tmp": tmp}
    peer.stop()
    zone.stop()


def message(tag, case=None, subject="ARC me"):
    """A message told apart by its Message-ID (tag); X-Case (case, or the
    tag) says what the policy does with it."""
    body = (b"Hello  there,\t \r\n\r\nA line with trailing space   \r\n"
            b"  inner   runs\r\n.a leading dot\r\n")
    return (f"From: Alice <alice@{DOMAIN}>\r\nTo: bob@dest.example\r\n"
            f"Subject: {subject}\r\nDate: Mon, 7 Dec 2026 10:00:00 +0000\r\n"
            f"Message-ID: <{tag.replace(':', '.')}@{DOMAIN}>\r\n"
            f"X-Case: {case or tag}\r\n\r\n").encode() + body


def send(k, data):
    s = k.smtp(ehlo="arc.e2e.example")
    try:
        assert s.mail(f"alice@{DOMAIN}")[0] == 250
        assert s.rcpt("bob@dest.example")[0] == 250
        code, text = s.data(data)
        assert code == 250, (code, text)
    finally:
        s.quit()


def delivered(env, case):
    mid = f"<{case.replace(':', '.')}@{DOMAIN}>".encode()

    def find():
        for m in env["peer"].received():
            if b"Message-ID: " + mid + b"\r\n" in m["data"]:
                return m["data"]
        return None
    return wait_until(find, timeout=30, what=f"delivery of {case}")


def header(data, name):
    m = re.search(rb"^" + name.encode() + rb": (.*?)\r\n(?![ \t])", data, re.S | re.M | re.I)
    assert m, (name, data[:800])
    return re.sub(r"\r\n[ \t]", " ", m.group(1).decode())


def through(env, case, data, via="b"):
    send(env[via], data)
    return delivered(env, case)


def arc_of(got, me="B"):
    return tuple(header(got, f"X-ARC-{me}").split("|"))


def dkim_of(got, me="B"):
    v = header(got, f"X-DKIM-{me}")
    return [tuple(p.strip().split("|")) for p in v.split(";;")] if v.strip() else []


def dkimpy_arc(env, data):
    cv, results, reason = dkim.arc_verify(data, dnsfunc=env["zone"].txt)
    return cv.decode() if cv else None, reason


def dkimpy_dkim(env, data, idx=0):
    try:
        return dkim.DKIM(data).verify(idx=idx, dnsfunc=env["zone"].txt)
    except dkim.DKIMException:
        return False


# ---- OpenDKIM (the milter in test mode) -------------------------------------------------------

def opendkim(env, mode, data, name):
    """Runs `opendkim -t` on data; mode 'v' verifies (returns the verdict
    line), 's' signs (returns the DKIM-Signature field, CRLF-terminated)."""
    conf = env["tmp"] / f"opendkim-{name}.conf"
    lines = [f"Mode {mode}", f"Nameservers {env['zone'].ip}", "Syslog no",
             "RequireSafeKeys false", "SignatureAlgorithm rsa-sha256"]
    if mode == "s":
        lines += [f"Domain {DOMAIN}", "Selector rsa", f"KeyFile {env['keyfile']}",
                  "Canonicalization " + ("simple/simple" if "simple" in name else
                                         "relaxed/relaxed")]
    conf.write_text("\n".join(lines) + "\n")
    msgfile = env["tmp"] / f"{name}.eml"
    msgfile.write_bytes(data)
    r = subprocess.run([OPENDKIM, "-x", str(conf), "-t", str(msgfile)], capture_output=True,
                       timeout=60)
    out = (r.stdout + r.stderr).decode(errors="replace")
    if mode == "s":
        assert r.returncode == 0 and "DKIM-Signature:" in out, out
        field = out.split("DKIM-Signature:", 1)[1].rstrip()
        field = field.replace("\r\n", "\n").replace("\n", "\r\n")
        return ("DKIM-Signature:" + field + "\r\n").encode()
    m = re.search(r"verification \(([^)]*)\) (succeeded|failed[^\n]*)", out)
    assert m, out
    return m.group(2)


KUMOD_SIGNED = ["rsa-relaxed", "rsa-simple", "rsa-len", "rsa-simple-len", "rsa-over",
                "ed-relaxed", "ed-simple"]


@pytest.mark.parametrize("case", KUMOD_SIGNED)
def test_kumod_signatures_verify_in_opendkim_and_dkimpy(env, case):
    got = through(env, f"sign:{case}", message(f"sign:{case}"))
    sig = header(got, "DKIM-Signature")
    if "len" in case:
        assert re.search(r"\bl=\d+", sig), sig
    if case == "rsa-over":
        assert "from:from:to:to:subject:subject:date:date" in re.sub(r"\s", "", sig), sig
    assert dkimpy_dkim(env, got), "dkimpy rejects kumod's signature"
    assert opendkim(env, "v", got, f"v-{case}") == "succeeded"
    tampered = got.replace(b"inner   runs", b"inner   ruins")
    assert not dkimpy_dkim(env, tampered)
    verdict = opendkim(env, "v", tampered, f"vt-{case}")
    assert verdict.startswith("failed"), verdict


@pytest.mark.parametrize("canon", ["relaxed", "simple"])
def test_opendkim_signatures_verify_in_kumod(env, canon):
    case = f"od-{canon}"
    msg = message(case)
    signed = opendkim(env, "s", msg, f"s-{canon}") + msg
    assert f"c={canon}/{canon}" in signed.decode()
    got = through(env, case, signed)
    assert dkim_of(got) == [("pass", "", "rsa")], dkim_of(got)
    # tampered body and signed header
    case_b = f"odtb-{canon}"
    msg = message(case_b)
    signed = opendkim(env, "s", msg, f"sb-{canon}") + msg
    got = through(env, case_b, signed.replace(b"inner   runs", b"inner   ruins"))
    assert dkim_of(got) == [("fail", "body hash did not verify", "rsa")], dkim_of(got)
    case_h = f"odth-{canon}"
    msg = message(case_h)
    signed = opendkim(env, "s", msg, f"sh-{canon}") + msg
    got = through(env, case_h, signed.replace(b"Subject: ARC me", b"Subject: ARC you"))
    assert dkim_of(got) == [("fail", "signature did not verify", "rsa")], dkim_of(got)


def test_dkimpy_signature_verifies_in_kumod(env):
    msg = message("dkimpy-sig")
    signed = dkim.sign(msg, b"ed", DOMAIN.encode(), env["ed"],
                       signature_algorithm=b"ed25519-sha256",
                       include_headers=[b"from", b"to", b"subject"]) + msg
    got = through(env, "dkimpy-sig", signed)
    assert dkim_of(got) == [("pass", "", "ed")], dkim_of(got)


# ---- ARC ---------------------------------------------------------------------------------------

def dkimpy_seal(env, data, srv="relay.dkimpy.example", arc_result=None):
    """One ARC set by dkimpy (which seals only the results of its own
    authserv-id: an Authentication-Results header is added first)."""
    ar = f"Authentication-Results: {srv}; spf=pass smtp.mailfrom=alice@{DOMAIN}"
    if arc_result:
        ar += f"; arc={arc_result}"
    data = ar.encode() + b"\r\n" + data
    sets = dkim.arc_sign(data, b"rsa", DOMAIN.encode(), env["rsa"], srv.encode(),
                         include_headers=[b"from", b"to", b"subject", b"date"])
    assert len(sets) == 3, "dkimpy made no ARC set"
    return b"".join(sets) + data


@pytest.mark.parametrize("n", [1, 2])
def test_dkimpy_chain_verifies_in_kumod_and_mixed_chain_in_dkimpy(env, n):
    mid_case = f"dkimpy-chain-{n}"
    data = message(mid_case, "seal:rsa")
    data = dkimpy_seal(env, data)
    if n == 2:
        assert dkimpy_arc(env, data)[0] == "pass"
        data = dkimpy_seal(env, data, srv="second.dkimpy.example", arc_result="pass")
    assert dkimpy_arc(env, data) == ("pass", "success")
    got = through(env, mid_case, data)
    assert arc_of(got) == ("pass", "", "0"), arc_of(got)
    # kumod sealed on top: i = n + 1, cv=pass, and dkimpy agrees
    seal = header(got, "ARC-Seal")
    assert re.match(rf"i={n + 1}; cv=pass; a=rsa-sha256; d={DOMAIN}; s=rsa;", seal), seal
    assert header(got, "ARC-Authentication-Results").startswith(f"i={n + 1}; mx-b.arc.example;")
    assert dkimpy_arc(env, got) == ("pass", "success")


@pytest.mark.parametrize("alg", ["rsa", "ed"])
def test_kumod_seal_verifies_in_dkimpy(env, alg):
    """dkimpy's ARC verifier knows rsa-sha256 only: an Ed25519 seal is
    checked for what dkimpy says of it (unknown algorithm, not a bad
    signature) and by kumod itself (test_two_kumod_hops_ed25519)."""
    case = f"kumod-seal-{alg}"
    data = message(case, f"seal:{alg}")
    got = through(env, case, data)
    assert arc_of(got) == ("none", "", ""), arc_of(got)
    seal = header(got, "ARC-Seal")
    a = "rsa-sha256" if alg == "rsa" else "ed25519-sha256"
    assert re.match(rf"i=1; cv=none; a={a}; d={DOMAIN}; s={alg};", seal), seal
    assert header(got, "ARC-Authentication-Results") == (
        "i=1; mx-b.arc.example; arc=none")
    if alg == "ed":
        assert dkimpy_arc(env, got) == ("fail", "unknown signature algorithm: b'ed25519-sha256'")
        return
    assert dkimpy_arc(env, got) == ("pass", "success")
    cv, reason = dkimpy_arc(env, got.replace(b"inner   runs", b"inner   ruins"))
    assert cv == "fail", reason


def test_two_kumod_hops_ed25519(env):
    """kumod A seals with Ed25519, kumod B verifies that chain and seals
    with RSA; the sink's copy verifies in kumod B's verdict (dkimpy cannot
    check Ed25519 ARC)."""
    got = through(env, "hop-ed", message("hop-ed"), via="a")
    assert arc_of(got, "A") == ("none", "", "")
    assert arc_of(got, "B") == ("pass", "", "0"), arc_of(got, "B")
    seals = re.findall(rb"^ARC-Seal: (i=\d+; cv=\w+; a=[\w-]+)", got, re.M)
    assert seals == [b"i=2; cv=pass; a=rsa-sha256", b"i=1; cv=none; a=ed25519-sha256"], seals


def test_two_kumod_hops(env):
    """kumod A seals and relays to kumod B, which verifies the chain, seals
    again and delivers; the sink checks with dkimpy."""
    got = through(env, "hop", message("hop"), via="a")
    assert arc_of(got, "A") == ("none", "", "")
    assert arc_of(got, "B") == ("pass", "", "0"), arc_of(got, "B")
    seals = re.findall(rb"^ARC-Seal: (i=\d+; cv=\w+; a=[\w-]+)", got, re.M)
    assert seals == [b"i=2; cv=pass; a=rsa-sha256", b"i=1; cv=none; a=rsa-sha256"], seals
    aars = [re.sub(r"\s+", " ", a.decode()) for a in
            re.findall(rb"^ARC-Authentication-Results: (i=\d+; [\w.-]+;[^:]*?arc=\w+)", got,
                       re.M | re.S)]
    assert aars[0].startswith("i=2; mx-b.arc.example;") and aars[0].endswith("arc=pass"), aars
    assert aars[1].startswith("i=1; mx-a.arc.example;") and aars[1].endswith("arc=none"), aars
    cv, results, reason = dkim.arc_verify(got, dnsfunc=env["zone"].txt)
    assert (cv, reason) == (b"pass", "success"), reason
    assert [r["instance"] for r in results] == [2, 1]
    assert all(r["ams-valid"] and r["as-valid"] for r in results)


# ---- bad input ---------------------------------------------------------------------------------

AS1 = f"ARC-Seal: i=1; cv=none; a=rsa-sha256; d={DOMAIN}; s=rsa; b=AAAA\r\n"
AMS1 = f"ARC-Message-Signature: i=1; a=rsa-sha256; d={DOMAIN}; s=rsa; h=from; bh=AAAA; b=AAAA\r\n"
AAR1 = "ARC-Authentication-Results: i=1; mx.example.com; none\r\n"


def test_malformed_arc_sets(env):
    cases = {
        "missing": (AS1 + AMS1).encode(),
        "gap": (AS1 + AMS1 + AAR1).replace("i=1", "i=2").replace("cv=none", "cv=pass").encode(),
        "dup": (AS1 + AS1 + AMS1 + AAR1).encode(),
        "i51": (AS1.replace("i=1", "i=51") + AMS1 + AAR1).encode(),
        "hseal": (AS1.replace("b=AAAA", "h=from; b=AAAA") + AMS1 + AAR1).encode(),
        "cvfail": None,
        "brokenseal": None,
    }
    want = {
        "missing": "The ARC Set with instance 1 is missing some of its constituent headers",
        "gap": "The ARC Set with instance 1 is missing",
        "dup": "There are duplicate ARC-Seal header(s) for instance 1",
        "i51": "An ARC-Seal header could not be parsed: ARC instance tag is invalid",
        "hseal": "An ARC-Seal header could not be parsed: h= is not allowed in an ARC-Seal",
        "cvfail": "The ARC-Seal for instance 1 is marked as failing its chain validation",
        "brokenseal": "The ARC-Seal for instance 1 failed to validate: signature did not verify",
    }
    for name in cases:
        case = f"bad-{name}"
        base = message(case, "seal:rsa")
        if name == "cvfail":
            data = dkimpy_seal(env, base).replace(b"cv=none", b"cv=fail")
        elif name == "brokenseal":
            s = dkimpy_seal(env, base)
            line = re.search(rb"^ARC-Seal: .*?\r\n(?![ \t])", s, re.S | re.M).group(0)
            m = re.search(rb"b=\s*(\S)", line)
            flip = b"B" if m.group(1) != b"B" else b"C"
            data = s.replace(line, line[:m.start(1)] + flip + line[m.end(1):])
        else:
            data = cases[name] + base
        got = through(env, case, data)
        v = arc_of(got)
        assert v[:2] == ("fail", want[name]), (name, v)
        # a failed chain is not sealed by kumod: no set of its own
        assert b"mx-b.arc.example" not in b"".join(
            re.findall(rb"^ARC-Authentication-Results: [^\r]*", got, re.M)), name


def test_bad_keys_and_dns_timeout(env):
    """ARC: the key problems are a fail with the DKIM reason; DKIM: a
    permerror for a revoked or unusable key, a temperror for a lookup that
    times out (dnsmasq forwards slow.example to a socket that never
    answers)."""
    base = message("badkeys")
    signed = b""
    for sel, d in (("revoked", DOMAIN), ("bad", DOMAIN), ("slow", "slow.example")):
        signed = dkim.sign(base if not signed else signed, sel.encode(), d.encode(), env["rsa"],
                           include_headers=[b"from", b"to", b"subject"]) + (
            base if not signed else signed)
    t0 = time.monotonic()
    got = through(env, "badkeys", signed)
    assert time.monotonic() - t0 < 25
    v = sorted(dkim_of(got), key=lambda r: r[2])
    assert v[0] == ("permerror", "key syntax error: p= is not a RSA public key", "bad"), v
    assert v[1] == ("permerror", "key revoked", "revoked"), v
    assert v[2][0] == "temperror" and v[2][1].startswith("key unavailable"), v
    # the same for an ARC chain whose key lookup times out
    arcmsg = message("arc-slow")
    sets = dkim.arc_sign(b"Authentication-Results: r.example; spf=pass\r\n" + arcmsg, b"slow",
                         b"slow.example", env["rsa"], b"r.example",
                         include_headers=[b"from", b"to", b"subject"])
    got = through(env, "arc-slow", b"".join(sets) + b"Authentication-Results: r.example; "
                  b"spf=pass\r\n" + arcmsg)
    v = arc_of(got)
    assert v[0] == "fail" and v[1].startswith(
        "The ARC-Message-Signature for instance 1 failed to validate: key unavailable"), v
