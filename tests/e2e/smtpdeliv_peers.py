"""Real peers for the SMTP delivery tests (test_smtp_delivery.py).

Dns        a dnsmasq on a free loopback port serving the MX/A/null-MX records
           the tests write (everything under .test is local: unknown names
           are NXDOMAIN).
SmtpPeer   an aiosmtpd server in its own thread, instrumented: it counts the
           TCP connections it accepts (and the most open at once), logs every
           read of each connection (to observe PIPELINING), can offer STARTTLS
           with a self-signed certificate, and can be scripted to answer MAIL,
           RCPT, the DATA command or the final dot with a given reply once, to
           reject chosen recipients, to never answer the final dot, or to hold
           every banner until the test opens its gate.
Silent     a TCP listener that accepts connections and never says a word.
make_cert  a self-signed certificate made by `openssl req -x509`.
to_lua     a Python value as a Lua constructor.
"""
import asyncio
import os
import socket
import subprocess
import threading
import time

from aiosmtpd.controller import Controller
from aiosmtpd.smtp import SMTP

import kumod_harness as kh

DNSMASQ = "/usr/sbin/dnsmasq"


def free_udp_port():
    """A port free for both UDP and TCP on 127.0.0.1 (dnsmasq binds both)."""
    for _ in range(50):
        u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        u.bind(("127.0.0.1", 0))
        port = u.getsockname()[1]
        t = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            t.bind(("127.0.0.1", port))
        except OSError:
            continue
        finally:
            t.close()
            u.close()
        return port
    raise RuntimeError("no free port for dnsmasq")


def free_port_on(*hosts):
    """A TCP port free on every one of the given loopback addresses."""
    for _ in range(100):
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((hosts[0], 0))
        port = s.getsockname()[1]
        ok = True
        others = []
        for h in hosts[1:]:
            o = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            try:
                o.bind((h, port))
            except OSError:
                ok = False
            others.append(o)
        for o in others:
            o.close()
        s.close()
        if ok and kh.claim_port(port):
            return port
    raise RuntimeError("no common free port")


def to_lua(v):
    """A Python value (dict, list, str, int, float, bool, None) as Lua source."""
    if v is None:
        return "nil"
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n") + '"'
    if isinstance(v, (list, tuple)):
        return "{" + ", ".join(to_lua(x) for x in v) + "}"
    if isinstance(v, dict):
        return "{" + ", ".join(f"[{to_lua(k)}] = {to_lua(x)}" for k, x in v.items()) + "}"
    raise TypeError(f"cannot express {v!r} in Lua")


# ---- DNS ------------------------------------------------------------------------------------


class Dns:
    """dnsmasq answering only from its command line. `mx` is a list of
    (domain, host, preference), `a` a list of (name, ipv4), `null_mx` a list
    of domains published with the RFC 7505 null MX (0 "."), `txt` a list of
    (name, text) (one record per entry; several entries for one name make
    several records), `ptr` a list of (reverse name, host), `servers` a list
    of (domain, "ip#port") forwarded to another server."""

    def __init__(self, workdir, mx=(), a=(), null_mx=(), local=("test",), txt=(), ptr=(),
                 servers=()):
        self.dir = str(workdir)
        os.makedirs(self.dir, exist_ok=True)
        self.port = free_udp_port()
        self.log_path = os.path.join(self.dir, "dnsmasq.log")
        self.args = [DNSMASQ, "--no-resolv", "--no-hosts", f"--port={self.port}",
                     "--listen-address=127.0.0.1", "--bind-interfaces", "-k",
                     "--conf-file=/dev/null", "--pid-file=", "--log-queries",
                     f"--log-facility={self.log_path}", "--cache-size=0"]
        for d in local:
            self.args.append(f"--local=/{d}/")
        for domain, host, pref in mx:
            self.args.append(f"--mx-host={domain},{host},{pref}")
        for name, ip in a:
            self.args.append(f"--host-record={name},{ip}")
        for domain in null_mx:
            # MX: preference 0, exchange "." (one zero byte)
            self.args.append(f"--dns-rr={domain},15,000000")
        for name, text in txt:
            # one character-string per 255 bytes (a comma would split it too)
            hexed = "".join(f"{len(c):02x}" + c.encode().hex()
                            for c in [text[i:i + 255] for i in range(0, len(text), 255)] or [""])
            self.args.append(f"--dns-rr={name},16,{hexed}")
        for name, host in ptr:
            self.args.append(f"--ptr-record={name},{host}")
        for domain, server in servers:
            self.args.append(f"--server=/{domain}/{server}")
        self.proc = None

    def start(self):
        self.proc = subprocess.Popen(self.args, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"dnsmasq exited: {self.proc.stderr.read().decode()}")
            if self._answers():
                return self
            time.sleep(0.05)
        raise RuntimeError("dnsmasq did not answer")

    def _answers(self):
        q = b"\x12\x34\x01\x00\x00\x01\x00\x00\x00\x00\x00\x00\x05probe\x04test\x00\x00\x01\x00\x01"
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.settimeout(0.2)
        try:
            s.sendto(q, ("127.0.0.1", self.port))
            return s.recv(512)[:2] == b"\x12\x34"
        except OSError:
            return False
        finally:
            s.close()

    def queries(self):
        """The query lines dnsmasq logged, e.g. 'query[MX] single.test from 127.0.0.1'."""
        try:
            with open(self.log_path) as f:
                return [l.split(": ", 1)[1].strip() for l in f if ": query[" in l]
        except OSError:
            return []

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ---- TLS material ---------------------------------------------------------------------------


def make_cert(workdir, cn="mx.tls.test", sans=("mx.tls.test", "*.tls.test")):
    """(cert path, key path) of a fresh self-signed RSA certificate."""
    cert = os.path.join(str(workdir), "cert.pem")
    key = os.path.join(str(workdir), "key.pem")
    san = ",".join(f"DNS:{s}" for s in sans)
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", key,
                    "-out", cert, "-days", "2", "-subj", f"/CN={cn}",
                    "-addext", f"subjectAltName={san}"],
                   check=True, capture_output=True)
    return cert, key


# ---- SMTP ------------------------------------------------------------------------------------


class _Proto(SMTP):
    """aiosmtpd's SMTP with counters and a read log."""

    def __init__(self, peer, *args, **kw):
        super().__init__(*args, **kw)
        self._peer = peer
        self._cid = None

    def connection_made(self, transport):
        self._cid = self._peer._opened()
        super().connection_made(transport)

    def connection_lost(self, exc):
        self._peer._closed()
        super().connection_lost(exc)

    def data_received(self, data):
        self._peer._read(self._cid, data)
        super().data_received(data)

    async def _handle_client(self):
        # hold the banner while the gate is closed
        while not self._peer.gate.is_set():
            await asyncio.sleep(0.02)
        await super()._handle_client()

    async def smtp_DATA(self, arg):
        r = self._peer._take("DATA")
        if r is not None and self.envelope.rcpt_tos:
            await self.push(r)
            return
        await super().smtp_DATA(arg)


class _Handler:
    def __init__(self, peer):
        self.peer = peer

    async def handle_EHLO(self, server, session, envelope, hostname, responses):
        session.host_name = hostname
        self.peer.ehlos.append(hostname)
        if self.peer.pipelining:
            responses.insert(1, "250-PIPELINING")
        return responses

    async def handle_MAIL(self, server, session, envelope, address, mail_options):
        r = self.peer._take("MAIL")
        if r is not None:
            return r
        envelope.mail_from = address
        envelope.mail_options.extend(mail_options)
        return "250 2.1.0 sender ok"

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        r = self.peer._take("RCPT")
        if r is None and self.peer.rcpt_reply:
            r = self.peer.rcpt_reply(address)
        if r is not None:
            return r
        envelope.rcpt_tos.append(address)
        envelope.rcpt_options.extend(rcpt_options)
        return "250 2.1.5 recipient ok"

    async def handle_DATA(self, server, session, envelope):
        peer = self.peer
        with peer.lock:
            hang = peer.hang_dots > 0
            if hang:
                peer.hang_dots -= 1
                peer.hung += 1
        if hang:
            # accept the content and never answer the final dot
            await asyncio.sleep(3600)
        r = peer._take("DOT")
        if r is not None:
            return r
        tr = server.transport
        cipher = tr.get_extra_info("cipher") if tr is not None else None
        with peer.lock:
            peer.messages.append({
                "mail_from": envelope.mail_from, "rcpt_tos": list(envelope.rcpt_tos),
                "data": envelope.original_content or envelope.content,
                "ehlo": session.host_name, "peer": session.peer, "tls": cipher,
                "conn": getattr(server, "_cid", None), "at": time.monotonic()})
            n = len(peer.messages)
        return f"250 2.0.0 OK queued as m{n}"


class _Controller(Controller):
    def __init__(self, peer, *args, **kw):
        self._peer = peer
        super().__init__(*args, **kw)

    def factory(self):
        return _Proto(self._peer, self.handler, **self.SMTP_kwargs)


class SmtpPeer:
    """An instrumented aiosmtpd on host:port. tls=(cert, key) offers STARTTLS.
    script(cmd, reply) answers the next `cmd` (MAIL, RCPT, DATA, DOT) with
    `reply` once; rcpt_reply(addr) may return a reply for a recipient."""

    def __init__(self, host="127.0.0.1", port=None, tls=None, pipelining=True,
                 ident="e2e peer"):
        self.host = host
        self.port = port or free_port_on(host)
        self.pipelining = pipelining
        self.lock = threading.Lock()
        self.messages = []
        self.ehlos = []
        self.reads = []          # (connection number, bytes)
        self.connections = 0     # accepted TCP connections
        self.open = 0
        self.peak = 0
        self.scripts = {"MAIL": [], "RCPT": [], "DATA": [], "DOT": []}
        self.rcpt_reply = None
        self.hang_dots = 0
        self.hung = 0
        self.gate = threading.Event()  # clear: connections wait for their banner
        self.gate.set()
        kw = {}
        if tls:
            import ssl
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            ctx.load_cert_chain(*tls)
            kw["tls_context"] = ctx
            kw["require_starttls"] = False
        self.controller = _Controller(self, _Handler(self), hostname=host, port=self.port,
                                      ident=ident, ready_timeout=10, **kw)

    # called from the server thread
    def _opened(self):
        with self.lock:
            self.connections += 1
            self.open += 1
            self.peak = max(self.peak, self.open)
            return self.connections

    def _closed(self):
        with self.lock:
            self.open -= 1

    def _read(self, cid, data):
        with self.lock:
            self.reads.append((cid, bytes(data)))

    def _take(self, cmd):
        with self.lock:
            q = self.scripts[cmd]
            return q.pop(0) if q else None

    # test side
    def script(self, cmd, reply):
        with self.lock:
            self.scripts[cmd].append(reply)

    def start(self):
        self.controller.start()
        # aiosmtpd's start() makes a connection of its own to test the server
        time.sleep(0.05)
        self.reset_counts()
        return self

    def reset_counts(self):
        with self.lock:
            self.connections = 0
            self.peak = self.open
            self.reads = []

    def stop(self):
        try:
            self.controller.stop(no_assert=True)
        except Exception:
            pass

    def received(self):
        with self.lock:
            return list(self.messages)

    def wait_messages(self, n, timeout=20.0):
        from kumod_harness import wait_until
        return wait_until(lambda: self.received() if len(self.received()) >= n else None,
                          timeout, what=f"{n} message(s) at {self.host}:{self.port}")


class Silent:
    """Accepts TCP connections on host:port and never sends a byte."""

    def __init__(self, host="127.0.0.1", port=None):
        self.host = host
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind((host, port or 0))
        self.port = self.sock.getsockname()[1]
        self.sock.listen(64)
        self.conns = []
        self.accepted = 0
        self.closed_by_peer = 0
        self._stop = False
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        self.sock.settimeout(0.1)
        while not self._stop:
            try:
                c, _ = self.sock.accept()
            except socket.timeout:
                pass
            except OSError:
                return
            else:
                self.accepted += 1
                c.setblocking(False)
                self.conns.append(c)
            for c in list(self.conns):
                try:
                    if c.recv(4096) == b"":
                        self.closed_by_peer += 1
                        self.conns.remove(c)
                        c.close()
                except BlockingIOError:
                    pass
                except OSError:
                    self.closed_by_peer += 1
                    self.conns.remove(c)
                    c.close()

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self._stop = True
        self.thread.join(2)
        for c in self.conns:
            c.close()
        self.sock.close()
