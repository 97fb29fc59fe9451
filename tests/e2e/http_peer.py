"""A local HTTP server for the kumo.http and log hook tests.

Routes: /echo (JSON of the request), /status/N, /hang (never answers until
the server stops), /loop (redirects to itself), /redirect (302 to /echo),
/latin1 (an ISO-8859-1 body), /garbage (not HTTP), /log (log hook sink:
stores each JSON body; answers `fail_status` while that is set)."""
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Peer:
    def __init__(self):
        self.records = []  # parsed JSON bodies posted to /log
        self.requests = []  # (method, path, headers, body, client port) of every request
        self.fail_status = None
        self.delay = 0  # seconds /log waits before answering
        self.lock = threading.Lock()
        self.stopping = threading.Event()
        peer = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *a):
                pass

            def _body(self):
                n = int(self.headers.get("Content-Length") or 0)
                return self.rfile.read(n) if n else b""

            def _send(self, code, body=b"", ctype="text/plain", extra=()):
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in extra:
                    self.send_header(k, v)
                self.end_headers()
                if self.command != "HEAD":
                    self.wfile.write(body)

            def _handle(self):
                body = self._body()
                with peer.lock:
                    peer.requests.append((self.command, self.path, dict(self.headers), body,
                                          self.client_address[1]))
                p = self.path.split("?")[0]
                if p == "/echo":
                    doc = {"method": self.command, "path": self.path,
                           "headers": {k.lower(): v for k, v in self.headers.items()},
                           "body": body.decode("latin-1")}
                    self._send(200, json.dumps(doc).encode(), "application/json",
                               [("X-Peer", "echo"), ("Set-Cookie", "a=1"), ("Set-Cookie", "b=2")])
                elif p.startswith("/status/"):
                    code = int(p.rsplit("/", 1)[1])
                    self._send(code, f"status {code}".encode())
                elif p == "/hang":
                    peer.stopping.wait(120)
                elif p == "/loop":
                    self._send(302, b"", extra=[("Location", "/loop")])
                elif p == "/redirect":
                    self._send(302, b"", extra=[("Location", "/echo")])
                elif p == "/latin1":
                    self._send(200, "caf\u00e9".encode("latin-1"), "text/plain; charset=ISO-8859-1")
                elif p == "/garbage":
                    self.wfile.write(b"\x00\xffthis is not HTTP\r\n\r\n")
                    self.close_connection = True
                elif p == "/log":
                    if peer.delay:
                        time.sleep(peer.delay)
                    status = peer.fail_status
                    if status:
                        self._send(status, b"try later")
                        return
                    try:
                        doc = json.loads(body)
                    except ValueError:
                        self._send(400, b"bad json")
                        return
                    with peer.lock:
                        peer.records.append(doc)
                    self._send(200, b"ok")
                else:
                    self._send(404, b"no such route")

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_HEAD = _handle

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def log_records(self):
        with self.lock:
            return list(self.records)

    def wait_records(self, pred, timeout, what="records"):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if pred(self.log_records()):
                return self.log_records()
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}; have {len(self.log_records())}")

    def close(self):
        self.stopping.set()
        self.server.shutdown()
        self.server.server_close()
