"""kumo.http.connect_websocket (docs/reference/kumo.http/connect_websocket.md)
against a WebSocket server written here (RFC 6455, socket module only) on a
loopback port: the page's flow (the 101 answer as a Response, recv of text
and binary, recv_batch collecting within a duration, {} when nothing comes,
an error when the peer went away with nothing received), fragments, ping
answered by a pong, Close answered by a Close, an oversized message refused
with 1009, bad schemes, a 200 answer and a wrong accept key refused, wss
with certificate verification (refused by default, accepted when the test's
certificate is trusted through SSL_CERT_FILE, refused for another name),
and a server that never answers does not hold the reactor: SMTP is served
meanwhile and kumod stops cleanly with streams parked."""
import base64
import hashlib
import os
import socket
import ssl
import struct
import subprocess
import threading
import time

import kumod_harness as kh

GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"


def accept_key(key):
    return base64.b64encode(hashlib.sha1(key + GUID).digest()).decode()


def frame(op, payload=b"", fin=True, length=None):
    n = len(payload) if length is None else length
    head = bytes([(0x80 if fin else 0) | op])
    if n < 126:
        head += bytes([n])
    elif n <= 0xFFFF:
        head += bytes([126]) + struct.pack("!H", n)
    else:
        head += bytes([127]) + struct.pack("!Q", n)
    return head + payload


def read_exact(conn, n):
    b = b""
    while len(b) < n:
        c = conn.recv(n - len(b))
        if not c:
            raise EOFError
        b += c
    return b


def read_frame(conn):
    """A client frame: (opcode, payload, masked)."""
    h = read_exact(conn, 2)
    op = h[0] & 0x0F
    masked = bool(h[1] & 0x80)
    n = h[1] & 0x7F
    if n == 126:
        n = struct.unpack("!H", read_exact(conn, 2))[0]
    elif n == 127:
        n = struct.unpack("!Q", read_exact(conn, 8))[0]
    mask = read_exact(conn, 4) if masked else b"\0\0\0\0"
    data = bytes(b ^ mask[i % 4] for i, b in enumerate(read_exact(conn, n)))
    return op, data, masked


class Server:
    """Serves each connection by the path of its upgrade request; what the
    client sent back is recorded in `seen[path]`."""

    def __init__(self, tls_ctx=None):
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.tls_ctx = tls_ctx
        self.seen = {}
        self.requests = []
        self.conns = []
        self.closing = False
        threading.Thread(target=self._loop, daemon=True).start()

    def close(self):
        self.closing = True
        self.sock.close()
        for c in self.conns:
            try:
                c.close()
            except OSError:
                pass

    def _loop(self):
        while not self.closing:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.conns.append(conn)
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        try:
            if self.tls_ctx:
                conn = self.tls_ctx.wrap_socket(conn, server_side=True)
            self._handle(conn)
        except (OSError, EOFError, ssl.SSLError):
            pass
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def _handle(self, conn):
        head = b""
        while b"\r\n\r\n" not in head:
            c = conn.recv(4096)
            if not c:
                return
            head += c
        lines = head.split(b"\r\n\r\n")[0].decode().split("\r\n")
        path = lines[0].split()[1]
        hdrs = {l.split(":", 1)[0].strip().lower(): l.split(":", 1)[1].strip()
                for l in lines[1:] if ":" in l}
        self.requests.append((path, hdrs))
        seen = self.seen.setdefault(path, [])
        if path == "/silent":
            time.sleep(120)
            return
        if path == "/200":
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            time.sleep(0.5)
            return
        accept = accept_key(hdrs.get("sec-websocket-key", "").encode())
        if path == "/badaccept":
            accept = accept_key(b"something else")
        conn.sendall(("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n"
                      "Connection: Upgrade\r\nSec-WebSocket-Accept: %s\r\n"
                      "X-Test: Value1\r\n\r\n" % accept).encode())
        if path in ("/flow", "/tls"):
            conn.sendall(frame(1, b'{"n":1}') + frame(2, b"\x00\xff\x01bin"))
            time.sleep(0.3)
            for i in range(3):
                conn.sendall(frame(1, b"b%d" % (i + 1)))
                time.sleep(0.05)
            self._until_close(conn, seen)
        elif path == "/frag":
            # a text message in three frames with a ping between them
            conn.sendall(frame(1, b"hello ", fin=False) + frame(0, "wörl".encode(), fin=False))
            conn.sendall(frame(9, b"pp"))
            op, data, masked = read_frame(conn)
            seen.append(("pong", op, data, masked))
            conn.sendall(frame(0, b"d!", fin=True))
            conn.sendall(frame(2, b"after"))
            self._until_close(conn, seen)
        elif path == "/close":
            conn.sendall(frame(1, b"last") + frame(8, struct.pack("!H", 4001) + b"bye now"))
            op, data, masked = read_frame(conn)
            seen.append(("close", op, data, masked))
        elif path == "/drop":
            time.sleep(0.1)
        elif path == "/dropafter":
            conn.sendall(frame(1, b"m1") + frame(1, b"m2"))
            time.sleep(0.1)
        elif path == "/big":
            conn.sendall(frame(2, b"x" * 1000, length=16 * 1024 * 1024 + 1))
            op, data, masked = read_frame(conn)
            seen.append(("close", op, data, masked))
        elif path == "/large":
            conn.sendall(frame(2, b"y" * (2 * 1024 * 1024)) + frame(1, b"z" * 300))
            self._until_close(conn, seen)
        elif path in ("/badutf8", "/masked"):
            if path == "/badutf8":
                conn.sendall(frame(1, b"ok") + frame(1, b"\xff\xfe"))
            else:  # §5.1: a server must not mask
                conn.sendall(frame(1, b"ok") + bytes([0x81, 0x82, 1, 2, 3, 4, 0x60, 0x6b]))
            op, data, masked = read_frame(conn)
            seen.append(("close", op, data, masked))
        elif path == "/quiet":
            time.sleep(120)

    def _until_close(self, conn, seen):
        while True:
            op, data, masked = read_frame(conn)
            seen.append(("frame", op, data, masked))
            if op == 8:
                return


SCRIPT = r"""
local kumo = require 'kumo'
local base = assert(arg[1])
local function expect_error(pattern, f, ...)
  local ok, err = pcall(f, ...)
  if ok then error('expected an error matching ' .. pattern, 2) end
  if not tostring(err):find(pattern) then
    error('error "' .. tostring(err) .. '" lacks ' .. pattern, 2)
  end
end

-- the page's flow
local function flow()
local stream, response = kumo.http.connect_websocket(base .. '/flow')
assert(response:status_code() == 101, response:status_code())
assert(response:status_reason() == 'Switching Protocols', response:status_reason())
assert(response:status_is_informational() and not response:status_is_success())
local seen = {}
for k, v in pairs(response:headers()) do seen[k] = v end
assert(seen['x-test'] == 'Value1' and seen['upgrade'] == 'websocket', kumo.json_encode(seen))
assert(response:headers()['X-Test'] == 'Value1')
assert(response:text() == '' and response:bytes() == '')
assert(tostring(stream):find('WebSocketStream'))
local data = stream:recv()
assert(kumo.json_parse(data).n == 1, data)
assert(stream:recv() == '\0\255\1bin')
local batch = stream:recv_batch('1s')
assert(#batch == 3 and batch[1] == 'b1' and batch[3] == 'b3', kumo.json_encode(batch))
local quiet = stream:recv_batch(0.3)
assert(type(quiet) == 'table' and #quiet == 0 and next(quiet) == nil)
expect_error('duration', stream.recv_batch, stream, 'soon')
expect_error('duration', stream.recv_batch, stream, {})
expect_error('must be called as a method', stream.recv)
end
flow()
collectgarbage()   -- the stream is garbage: __gc closes, the server sees a Close

-- /etc/hosts names resolve without blocking
local s2 = kumo.http.connect_websocket((base:gsub('127%.0%.0%.1', 'localhost')) .. '/frag')
assert(s2:recv() == 'hello wörld!')
assert(s2:recv() == 'after')

-- a Close from the server: recv returns nil (KumoMTA's recv does), again
-- and again; recv_batch with nothing left raises, naming the close
local s3 = kumo.http.connect_websocket(base .. '/close')
assert(s3:recv() == 'last')
assert(s3:recv() == nil)
assert(s3:recv() == nil)
expect_error('4001', s3.recv_batch, s3, 1)
expect_error('bye now', s3.recv_batch, s3, 1)

-- gone without a message: recv_batch raises; after messages it returns them
local s4 = kumo.http.connect_websocket(base .. '/drop')
expect_error('closed', s4.recv_batch, s4, '2s')
local s5 = kumo.http.connect_websocket(base .. '/dropafter')
local b5 = s5:recv_batch(2)
assert(#b5 == 2 and b5[1] == 'm1' and b5[2] == 'm2', kumo.json_encode(b5))
expect_error('closed', s5.recv_batch, s5, 1)
expect_error('closed', s5.recv, s5)

-- an oversized message
local s6 = kumo.http.connect_websocket(base .. '/big')
expect_error('larger than 16777216 bytes', s6.recv, s6)

-- a large message (64-bit length) and one just past the 16-bit length
local s7 = kumo.http.connect_websocket(base .. '/large')
local big = s7:recv()
assert(#big == 2 * 1024 * 1024 and big:sub(1, 3) == 'yyy', #big)
assert(s7:recv() == string.rep('z', 300))
-- text that is not UTF-8, a masked server frame: Close 1007 / 1002, errors
local s8 = kumo.http.connect_websocket(base .. '/badutf8')
assert(s8:recv() == 'ok')
expect_error('close code 1007', s8.recv, s8)
local s9 = kumo.http.connect_websocket(base .. '/masked')
assert(s9:recv() == 'ok')
expect_error('close code 1002', s9.recv, s9)

-- refusals at connect
expect_error('ws:// or wss://', kumo.http.connect_websocket, (base:gsub('^ws', 'http')) .. '/flow')
expect_error('ws:// or wss://', kumo.http.connect_websocket, 'ftp://x/')
expect_error('no host', kumo.http.connect_websocket, 'ws:///path')
expect_error('invalid port', kumo.http.connect_websocket, 'ws://127.0.0.1:99999/')
expect_error('status 200', kumo.http.connect_websocket, base .. '/200')
expect_error('Accept', kumo.http.connect_websocket, base .. '/badaccept')
expect_error('cannot connect', kumo.http.connect_websocket, 'ws://127.0.0.1:' .. arg[2] .. '/')
expect_error('cannot resolve', kumo.http.connect_websocket, 'ws://no-such-host.invalid/')
print('websocket.lua: all passed')
"""

TLS_SCRIPT = r"""
local kumo = require 'kumo'
local url, want = arg[1], arg[2]
local ok, stream, response = pcall(kumo.http.connect_websocket, url)
if want == 'ok' then
  assert(ok, tostring(stream))
  assert(response:status_code() == 101)
  assert(stream:recv() == '{"n":1}')
  assert(stream:recv() == '\0\255\1bin')
  local batch = stream:recv_batch('2s')
  assert(#batch == 3, #batch)
else
  assert(not ok, 'connected although the certificate is not trusted')
  assert(tostring(stream):find(want), tostring(stream))
end
print('tls.lua: passed')
"""


def run_script(tmp_path, text, *args, env=None):
    p = tmp_path / "ws.lua"
    p.write_text(text)
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([kh.kumod_bin(), "--script", str(p), *args], capture_output=True,
                          text=True, timeout=120, env=e)


def test_websocket_client(tmp_path):
    srv = Server()
    try:
        closed = kh.free_port()
        r = run_script(tmp_path, SCRIPT, f"ws://127.0.0.1:{srv.port}", str(closed))
        assert r.returncode == 0, r.stdout + r.stderr
        assert "websocket.lua: all passed" in r.stdout
        kh.wait_until(lambda: all(srv.seen.get(p) for p in ("/big", "/badutf8", "/masked")),
                      what="the Close frames")
        assert struct.unpack("!H", srv.seen["/badutf8"][0][2][:2])[0] == 1007
        assert struct.unpack("!H", srv.seen["/masked"][0][2][:2])[0] == 1002
        # the client's frames are masked; the stream dropped by __gc said goodbye
        flow = srv.seen["/flow"]
        assert flow and flow[-1][1] == 8 and flow[-1][3], flow
        assert struct.unpack("!H", flow[-1][2][:2])[0] == 1001
        # the ping was answered by a masked pong with its payload
        assert srv.seen["/frag"][0] == ("pong", 10, b"pp", True)
        # a Close is answered by a Close with the same code
        op, data, masked = srv.seen["/close"][0][1:]
        assert op == 8 and masked and struct.unpack("!H", data[:2])[0] == 4001
        # an oversized message is refused with 1009 (message too big)
        op, data, masked = srv.seen["/big"][0][1:]
        assert op == 8 and struct.unpack("!H", data[:2])[0] == 1009
        # the handshake the client sent
        path, hdrs = srv.requests[0]
        assert path == "/flow" and hdrs["upgrade"] == "websocket"
        assert hdrs["sec-websocket-version"] == "13"
        assert len(base64.b64decode(hdrs["sec-websocket-key"])) == 16
        assert hdrs["host"] == f"127.0.0.1:{srv.port}"
    finally:
        srv.close()


def make_cert(tmp_path, name, san):
    cert, key = tmp_path / f"{name}.pem", tmp_path / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
                    "-subj", "/CN=" + name, "-addext", "subjectAltName=" + san,
                    "-keyout", str(key), "-out", str(cert)], check=True, capture_output=True)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(cert), str(key))
    return cert, ctx


def test_wss_verification(tmp_path):
    cert, ctx = make_cert(tmp_path, "localhost", "DNS:localhost,IP:127.0.0.1")
    srv = Server(tls_ctx=ctx)
    other_cert, other_ctx = make_cert(tmp_path, "other.test", "DNS:other.test")
    other = Server(tls_ctx=other_ctx)
    try:
        for host in ("localhost", "127.0.0.1"):
            url = f"wss://{host}:{srv.port}/tls"
            r = run_script(tmp_path, TLS_SCRIPT, url, "certificate verification failed")
            assert r.returncode == 0 and "passed" in r.stdout, r.stdout + r.stderr
            r = run_script(tmp_path, TLS_SCRIPT, url, "ok", env={"SSL_CERT_FILE": str(cert)})
            assert r.returncode == 0 and "passed" in r.stdout, r.stdout + r.stderr
        # a trusted certificate for another name is refused
        r = run_script(tmp_path, TLS_SCRIPT, f"wss://localhost:{other.port}/tls",
                       "certificate verification failed",
                       env={"SSL_CERT_FILE": str(other_cert)})
        assert r.returncode == 0 and "passed" in r.stdout, r.stdout + r.stderr
    finally:
        srv.close()
        other.close()


def test_silent_server_does_not_block_smtp(kumod_factory):
    srv = Server()
    try:
        base = f"ws://127.0.0.1:{srv.port}"
        handlers = f"""
kumo.on('ws.silent', function()
  local ok, err = pcall(kumo.http.connect_websocket, '{base}/silent')
  kumo.log_error('SILENT RESULT', ok, tostring(err))
end)
kumo.on('ws.quiet', function()
  local stream = kumo.http.connect_websocket('{base}/quiet')
  QUIET = stream
  kumo.spawn_task {{ event_name = 'ws.second', args = {{}} }}
  local b = stream:recv_batch('1500ms')
  kumo.log_error('QUIET BATCH', #b)
  kumo.log_error('QUIET RECV', pcall(stream.recv, stream))
end)
kumo.on('ws.second', function()
  kumo.log_error('SECOND RECV', pcall(QUIET.recv, QUIET))
end)
kumo.on('smtp_server_ehlo', function()
  kumo.spawn_task {{ event_name = 'ws.silent', args = {{}} }}
  kumo.spawn_task {{ event_name = 'ws.quiet', args = {{}} }}
end)
"""
        k = kumod_factory(threads=1, handlers=handlers)
        with k.smtp() as s:
            assert s.ehlo("client.test")[0] == 250
        kh.wait_until(lambda: "/silent" in srv.seen and "/quiet" in srv.seen,
                      what="both connections")
        # both tasks wait on the only reactor; SMTP is still served at once
        for _ in range(5):
            t1 = time.monotonic()
            with k.smtp() as s:
                assert s.noop()[0] == 250
            assert time.monotonic() - t1 < 1.0
        k.wait_diag(r"QUIET BATCH\s+0", timeout=20)
        # one waiter per stream: a second coroutine is told, not queued
        assert "another coroutine is already waiting" in k.diag()
        assert "SILENT RESULT" not in k.diag()
        # shutdown with one task parked in connect and one in recv
        k.stop()
        assert k.proc.returncode == 0, k.diag()[-3000:]
    finally:
        srv.close()


def test_page_example(kumod_factory):
    """The page's example as a policy: init spawns the task, which prints
    the 101 answer and then every message (kumo.json.parse, which KumoMTA's
    reference documents nowhere, is kumo.serde.json_parse here). When the
    server closes, recv returns nil (as KumoMTA's does) and the loop ends
    with the error of using it."""
    srv = Server()
    try:
        handlers = """
kumo.on('my.websocket.task', function()
  local stream, response = kumo.http.connect_websocket 'ws://127.0.0.1:%d/close'

  print(response:status_code(), response:status_reason())
  for k, v in pairs(response:headers()) do
    print('Header', k, v)
  end
  print(response:text())

  while true do
    local data = stream:recv()
    print('DATA', data, kumo.serde.json_parse('"' .. data .. '"'))
  end
end)
""" % srv.port
        # the page's init handler, inside the harness's one
        init = "kumo.spawn_task { event_name = 'my.websocket.task' }"
        k = kumod_factory(threads=1, handlers=handlers, init=init)
        k.wait_diag(r"attempt to concatenate a nil value \(local 'data'\)", timeout=20)
        diag = k.diag()
        assert "101\tSwitching Protocols" in diag
        assert "Header\tx-test\tValue1" in diag and "Header\tupgrade\twebsocket" in diag
        assert "DATA\tlast\tlast" in diag
        assert srv.seen["/close"][0][1] == 8
    finally:
        srv.close()
