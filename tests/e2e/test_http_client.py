"""kumo.http (docs/reference/kumo.http/): the Lua checks in lua/http_client.lua
run against a local HTTP server (GET/POST/PUT, headers, auth, forms,
non-2xx, redirects and a redirect loop, timeouts, garbage, build_url); and
a request that hangs does not stop the reactor: with one reactor thread,
SMTP sessions are served while the request waits, the timeout is reported
as an error, and kumod shuts down cleanly with a request in flight."""
import os
import subprocess
import time

import http_peer
import kumod_harness as kh

HERE = os.path.dirname(os.path.abspath(__file__))


def test_http_client_lua_checks():
    peer = http_peer.Peer()
    try:
        r = subprocess.run([kh.kumod_bin(), "--script", os.path.join(HERE, "lua", "http_client.lua"),
                            peer.url], capture_output=True, text=True, timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "http_client.lua: all passed" in r.stdout
        # a client reuses its connections: far fewer connections than requests
        assert len(peer.requests) >= 20
        conns = {r[4] for r in peer.requests}
        assert len(conns) * 2 < len(peer.requests), (len(conns), len(peer.requests))
    finally:
        peer.close()


def test_hanging_request_does_not_block_smtp(kumod_factory):
    peer = http_peer.Peer()
    try:
        handlers = f"""
kumo.on('hang.task', function(args)
  local ok, err = pcall(function()
    return kumo.http.build_client({{}}):get('{peer.url}/hang'):timeout(args.t):send()
  end)
  kumo.log_error('HANG RESULT', ok, tostring(err))
end)
kumo.on('smtp_server_ehlo', function()
  kumo.spawn_task {{ event_name = 'hang.task', args = {{ t = '4s' }} }}
end)
"""
        k = kumod_factory(threads=1, handlers=handlers)
        t0 = time.monotonic()
        with k.smtp() as s:
            code, _ = s.ehlo("client.test")
            assert code == 250
        # the request hangs on the only reactor; SMTP is still served at once
        for _ in range(5):
            t1 = time.monotonic()
            with k.smtp() as s:
                assert s.noop()[0] == 250
            assert time.monotonic() - t1 < 1.0
        line = k.wait_diag(r"HANG RESULT", timeout=20)
        assert time.monotonic() - t0 >= 3.5
        diag = k.diag()
        assert "HANG RESULT false" in diag and "timed out" in diag, diag[-2000:]
        assert f"{peer.url}/hang" in diag
        # a request in flight at shutdown is abandoned; the daemon stops cleanly
        with k.smtp() as s:
            s.ehlo("again.test")
        time.sleep(0.3)
        k.stop()
        assert k.proc.returncode == 0, k.diag()[-3000:]
    finally:
        peer.close()


SIGV4_SCRIPT = """
local kumo = require 'kumo'
local url = assert(arg[1], "usage: sigv4.lua BASE_URL")
local payload = '{"StreamName":"s","Data":"aGk="}'
local client = kumo.http.build_client {}
local req = client:post(url .. '/echo?Action=Put%20Record&b=x+y&a=1')
local same = req:header('content-type', 'application/x-amz-json-1.1')
  :header('x-amz-target', 'Kinesis_20131202.PutRecord')
  :body(payload)
  :aws_sign_v4 {
    access_key = { key_data = 'AKIDEXAMPLE' },
    secret_key = { key_data = 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY' },
    region = 'us-east-1',
    service = 'kinesis',
    headers = { ['content-type'] = 'application/x-amz-json-1.1' },
    payload = payload,
    timestamp = '2026-01-02T03:04:05Z',
  }
assert(same == req, 'aws_sign_v4 returns the request')
local resp = req:send()
assert(resp:status_code() == 200, resp:status_code())
-- a missing required field is an error naming it
local ok, err = pcall(function()
  return client:get(url .. '/echo'):aws_sign_v4 {
    access_key = { key_data = 'a' }, secret_key = { key_data = 'b' }, service = 's3',
  }
end)
assert(not ok and tostring(err):find('region'), tostring(err))
ok, err = pcall(function() return client:get(url .. '/echo'):aws_sign_v4 'nope' end)
assert(not ok and tostring(err):find('expected a table'), tostring(err))
print('sigv4: all passed')
"""


def sigv4_expected(method, path, query, headers, payload, amz_date, region, service, akid,
                   secret):
    """AWS Signature Version 4 computed here from the request as received
    (docs.aws.amazon.com, "Create a signed AWS API request")."""
    import hashlib
    import hmac
    from urllib.parse import parse_qsl, quote

    def enc(s):
        return quote(s, safe="-_.~")
    cq = "&".join(f"{enc(k)}={enc(v)}" for k, v in sorted(parse_qsl(query, keep_blank_values=True)))
    names = sorted(headers)
    ch = "".join(f"{n}:{' '.join(headers[n].split())}\n" for n in names)
    signed = ";".join(names)
    creq = "\n".join([method, quote(path, safe="/-_.~"), cq, ch, signed,
                      hashlib.sha256(payload).hexdigest()])
    scope = f"{amz_date[:8]}/{region}/{service}/aws4_request"
    sts = "\n".join(["AWS4-HMAC-SHA256", amz_date, scope,
                     hashlib.sha256(creq.encode()).hexdigest()])
    k = ("AWS4" + secret).encode()
    for part in (amz_date[:8], region, service, "aws4_request"):
        k = hmac.new(k, part.encode(), hashlib.sha256).digest()
    sig = hmac.new(k, sts.encode(), hashlib.sha256).hexdigest()
    return f"AWS4-HMAC-SHA256 Credential={akid}/{scope}, SignedHeaders={signed}, Signature={sig}"


def test_request_aws_sign_v4_signs_what_is_sent(tmp_path):
    """request:aws_sign_v4 (Request.md): method, path and query from the
    request's URL, host from the URL without its port, the caller's extra
    headers; Authorization and X-Amz-Date set on the request. Checked
    against SigV4 computed independently from the request the server got."""
    peer = http_peer.Peer()
    try:
        script = tmp_path / "sigv4.lua"
        script.write_text(SIGV4_SCRIPT)
        r = subprocess.run([kh.kumod_bin(), "--script", str(script), peer.url],
                           capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "sigv4: all passed" in r.stdout
        [(method, path, headers, body, _)] = [q for q in peer.requests if q[0] == "POST"]
        h = {k.lower(): v for k, v in headers.items()}
        assert h["x-amz-date"] == "20260102T030405Z"
        p, _, q = path.partition("?")
        want = sigv4_expected(method, p, q,
                              {"host": "127.0.0.1", "content-type": h["content-type"],
                               "x-amz-date": h["x-amz-date"]},
                              body, h["x-amz-date"], "us-east-1", "kinesis", "AKIDEXAMPLE",
                              "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY")
        assert h["authorization"] == want, (h["authorization"], want)
    finally:
        peer.close()
