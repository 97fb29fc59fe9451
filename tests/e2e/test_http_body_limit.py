"""request_body_limit on the HTTP listener (issue 21): a raw body over the
limit gets KumoMTA's plain-text 413, the answer a compressed body that
inflates past the limit gets (axum's length-limit rejection, KumoMTA's
integration test http_inject_size_limit.rs), on a plain and a TLS listener,
with Content-Length and with chunked transfer encoding; the connection is
closed after it (libevent has dropped the rest of the body). A body exactly
at the limit is accepted.

kumod makes every connection's bufferevent itself to replace libevent's own
HTML page (src/http/errpage.c), so this also checks that ordinary traffic
still works on those bufferevents: keep-alive and pipelined requests,
`Connection: close`, and endpoints that answer asynchronously (injection,
which saves to the spool; bounce; Basic authentication through a policy
event). All with raw sockets, to see the exact bytes and the close."""
import gzip
import json
import os
import socket
import ssl
import threading
import time

import pytest

import kumod_harness as kh

LIMIT = 4096
TEXT = b"Failed to buffer the request body: length limit exceeded"

POLICY = """
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool { name = 'data', path = '{spool}/data', kind = 'LocalDisk' }
  kumo.define_spool { name = 'meta', path = '{spool}/meta', kind = 'LocalDisk' }
  kumo.configure_local_logs { log_dir = '{logs}' }
  kumo.start_esmtp_listener { listen = '127.0.0.1:{smtp_port}', hostname = '{hostname}' }
  kumo.dns.configure_resolver { name_servers = { '{dns}' } }
  kumo.start_http_listener {
    listen = '127.0.0.1:{http_port}', hostname = 'http.e2e.test', request_body_limit = 4096,
  }
  kumo.start_http_listener {
    listen = '127.0.0.1:{port:https}', hostname = 'https.e2e.test', use_tls = true,
    request_body_limit = '4096',
  }
end)
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config { protocol = { maildir_path = '{dir}/md' } }
end)
kumo.on('http_server_validate_auth_basic', function(user, password)
  return user == 'daniel' and password == 'tiger'
end)
"""


@pytest.fixture(scope="module")
def k(module_kumod_factory):
    return module_kumod_factory(policy=POLICY, name="bodylimit")


@pytest.fixture(params=["http", "https"])
def scheme(request):
    return request.param


class Conn:
    """One client connection, raw bytes in and out."""

    def __init__(self, k, scheme):
        port = k.port("https") if scheme == "https" else k.http_port
        s = socket.create_connection(("127.0.0.1", port), timeout=30 * kh.SLOW)
        if scheme == "https":
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
            s = ctx.wrap_socket(s)
        self.sock = s
        self.buf = b""

    def send(self, data):
        self.sock.sendall(data)

    def _fill(self):
        try:
            data = self.sock.recv(65536)
        except (ConnectionResetError, ssl.SSLEOFError):
            data = b""
        if not data:
            raise EOFError
        self.buf += data

    def response(self):
        """(status, reason, {lowercased name: value}, body) of the next response."""
        while b"\r\n\r\n" not in self.buf:
            self._fill()
        head, self.buf = self.buf.split(b"\r\n\r\n", 1)
        lines = head.decode("latin-1").split("\r\n")
        version, status, reason = lines[0].split(" ", 2)
        assert version == "HTTP/1.1", lines[0]
        headers = {}
        for line in lines[1:]:
            name, value = line.split(":", 1)
            assert name.lower() not in headers, f"duplicate {name}"
            headers[name.lower()] = value.strip()
        n = int(headers["content-length"])
        while len(self.buf) < n:
            self._fill()
        body, self.buf = self.buf[:n], self.buf[n:]
        return int(status), reason, headers, body

    def closed(self):
        """True once the server has closed the connection (EOF or reset),
        with nothing more sent."""
        try:
            self._fill()
        except EOFError:
            return self.buf == b""
        return False

    def close(self):
        self.sock.close()


def req(method, path, body=b"", headers=(), chunks=None):
    lines = [f"{method} {path} HTTP/1.1", "Host: kumod.e2e.test"]
    lines += list(headers)
    if chunks is not None:
        lines.append("Transfer-Encoding: chunked")
        body = b"".join(b"%x\r\n%s\r\n" % (len(c), c) for c in chunks) + b"0\r\n\r\n"
    elif body or method == "POST":
        lines.append(f"Content-Length: {len(body)}")
    if method == "POST":
        lines.append("Content-Type: application/json")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


def inject_body(size, rcpt="someone@dest.example"):
    """An /api/inject/v1 body of exactly size bytes."""
    def make(n):
        return json.dumps({"envelope_sender": "sender@src.example",
                           "recipients": [{"email": rcpt}],
                           "content": "Subject: limit\r\n\r\n" + "y" * n}).encode()
    base = len(make(0))
    body = make(size - base)
    assert len(body) == size
    return body


def check_413(status, reason, headers, body):
    assert (status, reason, body) == (413, "Payload Too Large", TEXT)
    assert headers["content-type"] == "text/plain; charset=utf-8"
    assert headers["content-length"] == str(len(TEXT))
    assert headers["connection"] == "close"
    assert "date" in headers


def liveness(c):
    c.send(req("GET", "/api/check-liveness/v1"))
    status, _, _, body = c.response()
    assert (status, body) == (200, b"OK")


def test_raw_body_one_byte_over_is_kumomta_413(k, scheme):
    c = Conn(k, scheme)
    c.send(req("POST", "/api/inject/v1", inject_body(LIMIT + 1)))
    check_413(*c.response())
    assert c.closed()
    assert k.alive()


def test_chunked_body_one_byte_over_is_kumomta_413(k, scheme):
    # one chunk past the limit, and chunks that only add up past it
    for chunks in ([inject_body(LIMIT + 1)], [b"x" * LIMIT, b"y"]):
        c = Conn(k, scheme)
        c.send(req("POST", "/api/inject/v1", chunks=chunks))
        check_413(*c.response())
        assert c.closed()


def test_keep_alive_client_sees_the_close_after_413(k, scheme):
    c = Conn(k, scheme)
    liveness(c)
    liveness(c)
    c.send(req("POST", "/api/inject/v1", b"z" * (LIMIT + 1)))
    check_413(*c.response())
    assert c.closed()


def test_expect_100_continue_over_the_limit(k, scheme):
    # announced too long: refused without a 100 (the client sent on anyway)
    c = Conn(k, scheme)
    body = inject_body(LIMIT + 100)
    c.send(b"POST /api/inject/v1 HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
           b"Content-Length: %d\r\n\r\n%s" % (len(body), body))
    check_413(*c.response())
    assert c.closed()
    # chunked: the 100 comes first, the 413 once the chunks pass the limit
    c = Conn(k, scheme)
    c.send(b"POST /api/inject/v1 HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
           b"Transfer-Encoding: chunked\r\n\r\n")
    while b"\r\n\r\n" not in c.buf:
        c._fill()
    assert c.buf == b"HTTP/1.1 100 Continue\r\n\r\n"
    c.buf = b""
    c.send(b"%x\r\n%s\r\n0\r\n\r\n" % (LIMIT + 1, b"c" * (LIMIT + 1)))
    check_413(*c.response())
    assert c.closed()


def test_http10_body_over_the_limit(k):
    c = Conn(k, "http")
    body = b"q" * (LIMIT + 1)
    c.send(b"POST /api/inject/v1 HTTP/1.0\r\nContent-Length: %d\r\n\r\n%s" % (len(body), body))
    check_413(*c.response())
    assert c.closed()


def test_body_at_the_limit_is_accepted(k, scheme):
    c = Conn(k, scheme)
    c.send(req("POST", "/api/inject/v1", inject_body(LIMIT, "at-limit@dest.example")))
    status, _, _, body = c.response()
    assert status == 200, body
    assert json.loads(body)["success_count"] == 1
    # chunked, in pieces
    raw = inject_body(LIMIT, "at-limit-chunked@dest.example")
    c.send(req("POST", "/api/inject/v1", chunks=[raw[:1000], raw[1000:3000], raw[3000:]]))
    status, _, _, body = c.response()
    assert status == 200, body
    assert json.loads(body)["success_count"] == 1
    liveness(c)


def test_compressed_body_over_the_limit_same_answer(k, scheme):
    raw = gzip.compress(inject_body(LIMIT + 1))
    assert len(raw) < LIMIT
    c = Conn(k, scheme)
    c.send(req("POST", "/api/inject/v1", raw, headers=["Content-Encoding: gzip"]))
    status, reason, headers, body = c.response()
    assert (status, reason, body) == (413, "Payload Too Large", TEXT)
    assert headers["content-type"] == "text/plain; charset=utf-8"
    # the whole body was read: the connection stays usable
    liveness(c)


def test_pipelined_and_async_requests_still_work(k, scheme):
    c = Conn(k, scheme)
    bounce = json.dumps({"domain": "nothing.example", "reason": "e2e body limit",
                         "duration": "1s"}).encode()
    auth = "Authorization: Basic ZGFuaWVsOnRpZ2Vy"  # daniel:tiger, checked by a policy event
    c.send(req("GET", "/api/check-liveness/v1")
           + req("POST", "/api/inject/v1", inject_body(600, "pipe1@dest.example"))
           + req("POST", "/api/admin/bounce/v1", bounce, headers=[auth])
           + req("POST", "/api/inject/v1", inject_body(700, "pipe2@dest.example"), headers=[auth])
           + req("GET", "/api/nope/v1"))
    status, _, _, body = c.response()
    assert (status, body) == (200, b"OK")
    status, _, _, body = c.response()
    assert status == 200 and json.loads(body)["success_count"] == 1, body
    status, _, _, body = c.response()
    assert status == 200 and "id" in json.loads(body), body
    status, _, _, body = c.response()
    assert status == 200 and json.loads(body)["success_count"] == 1, body
    status, _, _, body = c.response()
    assert status == 404
    # one at a time on the same connection
    for i in range(3):
        c.send(req("POST", "/api/inject/v1", inject_body(500, f"ka{i}@dest.example")))
        status, _, headers, body = c.response()
        assert status == 200 and json.loads(body)["success_count"] == 1, body
        assert "connection" not in headers
    # an asynchronous reply to a request that asks for the close
    c.send(req("POST", "/api/inject/v1", inject_body(800, "close@dest.example"),
               headers=["Connection: close"]))
    status, _, headers, body = c.response()
    assert status == 200 and json.loads(body)["success_count"] == 1, body
    assert headers["connection"] == "close"
    assert c.closed()
    c = Conn(k, scheme)
    c.send(req("GET", "/api/check-liveness/v1", headers=["Connection: close"]))
    status, _, headers, body = c.response()
    assert (status, body, headers["connection"]) == (200, b"OK", "close")
    assert c.closed()


def test_malformed_request_still_answered_by_libevent(k, scheme):
    # a request line libevent cannot parse: its own 400, then the close
    c = Conn(k, scheme)
    c.send(b"NOT A REQUEST\r\n\r\n")
    status, _, headers, _ = c.response()
    assert status == 400 and headers["connection"] == "close"
    assert c.closed()


def test_broken_chunked_framing_is_the_same_413(k):
    # libevent reports broken chunk framing as "data too long" (documented)
    c = Conn(k, "http")
    c.send(b"POST /api/inject/v1 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"zz\r\nxx\r\n0\r\n\r\n")
    check_413(*c.response())
    assert c.closed()


def test_oversized_header_block_is_libevents_400(k):
    # not a body: the header limit (64 KiB) is libevent's 400, left as it is
    c = Conn(k, "http")
    c.send(b"GET /api/check-liveness/v1 HTTP/1.1\r\nHost: h\r\nX-Big: "
           + b"a" * (70 * 1024) + b"\r\n\r\n")
    status, _, headers, _ = c.response()
    assert status == 400 and headers["connection"] == "close"
    assert c.closed()


def test_expect_100_continue_over_the_limit_answers_without_the_body(k, scheme):
    """A client that announces a body over the limit and waits for the 100
    gets the 413 at once (libevent's own lingering close would first wait
    for the whole body, which this client never sends)."""
    c = Conn(k, scheme)
    c.sock.settimeout(5 * kh.SLOW)
    c.send(b"POST /api/inject/v1 HTTP/1.1\r\nHost: h\r\nExpect: 100-continue\r\n"
           b"Content-Type: application/json\r\nContent-Length: %d\r\n\r\n" % (LIMIT + 100))
    t = time.monotonic()
    check_413(*c.response())
    assert time.monotonic() - t < 2 * kh.SLOW
    assert c.closed()


def send_in_background(c, data):
    def run():
        try:
            c.sock.sendall(data)
        except OSError:
            pass  # the server may close once it has drained enough
    t = threading.Thread(target=run, daemon=True)
    t.start()
    return t


def test_large_body_still_being_sent_gets_the_413(k):
    """The 413 goes out while the client is still sending megabytes: kumod
    drains the rest after evhttp closed the connection, so the client sees
    the answer, not a reset. (Plain HTTP only: the test writes and reads
    one socket from two threads, which Python's TLS sockets do not allow.)"""
    scheme = "http"
    body = b"z" * (4 << 20)
    for chunked in (False, True):
        for _ in range(5):
            c = Conn(k, scheme)
            if chunked:
                data = (b"POST /api/inject/v1 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked"
                        b"\r\n\r\n" + b"".join(b"%x\r\n%s\r\n" % (65536, body[i:i + 65536])
                                               for i in range(0, len(body), 65536)) + b"0\r\n\r\n")
            else:
                data = (b"POST /api/inject/v1 HTTP/1.1\r\nHost: h\r\nContent-Length: %d\r\n\r\n"
                        % len(body)) + body
            send_in_background(c, data)
            check_413(*c.response())
            c.close()


def open_fds(k):
    return len(os.listdir(f"/proc/{k.proc.pid}/fd"))


def test_lingering_connection_is_closed(k, scheme):
    """After the 413 the drained socket is closed when the client closes,
    and after a few idle seconds (2) when it does not."""
    time.sleep(2.5)  # what earlier tests left draining is closed by now
    base = open_fds(k)
    c = Conn(k, scheme)
    c.send(req("POST", "/api/inject/v1", b"w" * (LIMIT + 1)))
    check_413(*c.response())
    c.close()
    kh.wait_until(lambda: open_fds(k) <= base, timeout=5, what="the drained socket closed")
    # a client that stays connected and silent: closed after the idle time
    c = Conn(k, scheme)
    c.send(b"POST /api/inject/v1 HTTP/1.1\r\nHost: h\r\nTransfer-Encoding: chunked\r\n\r\n"
           b"%x\r\n%s\r\n" % (LIMIT + 1, b"c" * (LIMIT + 1)))
    check_413(*c.response())
    t = time.monotonic()
    assert c.closed()  # the FIN after the 413
    assert open_fds(k) >= base + 1  # the socket kumod still drains
    kh.wait_until(lambda: open_fds(k) <= base, timeout=10, what="the idle drained socket closed")
    assert time.monotonic() - t >= 1.5
    c.close()


def test_unparsable_request_gets_its_400_not_a_reset(k):
    """libevent answers a request line it cannot parse (here HTTP/2.0) with
    400 and closes while the rest of the request is unread: that is drained
    too, so the client's own shutdown and read see the 400, not a reset."""
    body = b"".join(b"7\r\n%s\r\n" % (b"x" * 7) for _ in range(600)) + b"0\r\n\r\n"
    raw = (b"POST /api/inject/v1 HTTP/2.0\r\nHost: h\r\nTransfer-Encoding: chunked\r\n"
           b"Connection: close\r\n\r\n" + body)
    for _ in range(50):
        with socket.create_connection(("127.0.0.1", k.http_port), timeout=10 * kh.SLOW) as s:
            s.sendall(raw)
            s.shutdown(socket.SHUT_WR)
            got = b""
            while True:
                data = s.recv(65536)
                if not data:
                    break
                got += data
        assert got.startswith(b"HTTP/1.1 400 Bad Request\r\n"), got[:200]
