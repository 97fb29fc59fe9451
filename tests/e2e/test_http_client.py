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
