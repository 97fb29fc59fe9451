"""Pipelining across messages on one delivery connection (issue 24, RFC 2920).

With PIPELINING offered, kumod writes the next message's [RSET] MAIL, RCPT and
DATA right behind the previous message's final dot, so that the dot's reply
and the next envelope's replies come back together. These tests drive that
against ScriptedPeer, a raw-socket SMTP server written here: it answers
every command of every message on the connection from a script, logs every
read, and notes for each MAIL whether it arrived in the same read as the
previous message's dot (the proof that the client did not wait for the dot's
reply). Its banner waits until the test opens the gate, so that every message
is in the ready queue before the first transaction starts (connection_limit
1: one connection carries them all).

Each message must get exactly its own outcome and record: a 550 to message
3's RCPT bounces message 3 only, a 451 to message 4's dot is message 4's
transient failure only, a 421 to message 5's dot (and the close after it) is
message 5's, and message 6, whose commands went out behind message 5's dot
and were never answered, goes back to its queue without an attempt and is
delivered on the next connection with num_attempts 0.
"""
import re
import socket
import threading
import time

import pytest

from kumod_harness import default_policy, parse_ids, wait_until

SENDER = "sender@src.example"


class ScriptedPeer:
    """A raw SMTP server. script(conn_no, msg_no, what) -> reply line or
    None for the default ("what" is "MAIL", "RCPT <addr>", "DATA" or "DOT";
    msg_no counts MAIL commands on the connection from 1). A reply starting
    with "421" closes the connection after it is sent."""

    def __init__(self, pipelining=True, script=None):
        self.pipelining = pipelining
        self.script = script or (lambda conn, msg, what: None)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.port = self.sock.getsockname()[1]
        self.gate = threading.Event()
        self.lock = threading.Lock()
        self.conns = 0
        self.reads = []          # (conn, bytes) of every recv
        self.mail_with_dot = []  # (conn, msg_no, arrived in the read of the previous dot)
        self.delivered = []      # (conn, msg_no, rcpts, subject) of each dot answered 250
        self.commands = []       # (conn, line) in order
        self.stopped = False
        threading.Thread(target=self._accept, daemon=True).start()

    def stop(self):
        self.stopped = True
        self.sock.close()

    def _accept(self):
        while not self.stopped:
            try:
                c, _ = self.sock.accept()
            except OSError:
                return
            with self.lock:
                self.conns += 1
                n = self.conns
            threading.Thread(target=self._serve, args=(c, n), daemon=True).start()

    def _reply(self, conn, msg, what, default):
        r = self.script(conn, msg, what)
        return r if r is not None else default

    def _serve(self, c, conn):
        self.gate.wait(30)
        out = [b"220 scripted.test ESMTP\r\n"]
        buf = b""
        in_data = False
        body = []
        msg = 0
        rcpts = []
        dot_seen_in_read = False
        closing = False
        try:
            while True:
                if out:
                    c.sendall(b"".join(out))
                    out = []
                if closing:
                    break
                chunk = c.recv(65536)
                if not chunk:
                    break
                with self.lock:
                    self.reads.append((conn, chunk))
                buf += chunk
                dot_seen_in_read = False
                while b"\r\n" in buf and not closing:
                    line, buf = buf.split(b"\r\n", 1)
                    if in_data:
                        if line == b".":
                            in_data = False
                            dot_seen_in_read = True
                            r = self._reply(conn, msg, "DOT", "250 2.0.0 ok queued")
                            if r.startswith("250"):
                                subj = next((l[9:].decode() for l in body
                                             if l.lower().startswith(b"subject: ")), "")
                                with self.lock:
                                    self.delivered.append((conn, msg, list(rcpts), subj))
                            out.append(r.encode() + b"\r\n")
                            closing = r.startswith("421")
                        else:
                            body.append(line)
                        continue
                    text = line.decode("utf-8", "replace")
                    with self.lock:
                        self.commands.append((conn, text))
                    verb = text.split(" ", 1)[0].split(":", 1)[0].upper()
                    if verb == "EHLO":
                        caps = ["250-scripted.test", "250-8BITMIME"]
                        if self.pipelining:
                            caps.append("250-PIPELINING")
                        caps.append("250 ENHANCEDSTATUSCODES")
                        out.append("\r\n".join(caps).encode() + b"\r\n")
                    elif verb == "HELO":
                        out.append(b"250 scripted.test\r\n")
                    elif verb == "RSET":
                        rcpts = []
                        out.append(b"250 2.0.0 reset\r\n")
                    elif verb == "MAIL":
                        msg += 1
                        rcpts = []
                        with self.lock:
                            self.mail_with_dot.append((conn, msg, dot_seen_in_read))
                        r = self._reply(conn, msg, "MAIL", "250 2.1.0 sender ok")
                        out.append(r.encode() + b"\r\n")
                        closing = r.startswith("421")
                    elif verb == "RCPT":
                        addr = re.search(r"<([^>]*)>", text).group(1)
                        r = self._reply(conn, msg, "RCPT " + addr, "250 2.1.5 recipient ok")
                        if r.startswith("2"):
                            rcpts.append(addr)
                        out.append(r.encode() + b"\r\n")
                    elif verb == "DATA":
                        r = self._reply(conn, msg, "DATA", "354 go ahead" if rcpts
                                        else "554 5.5.1 no valid recipients")
                        if r.startswith("354"):
                            in_data = True
                            body = []
                        out.append(r.encode() + b"\r\n")
                    elif verb == "QUIT":
                        out.append(b"221 2.0.0 bye\r\n")
                        closing = True
                    else:
                        out.append(b"502 5.5.2 what\r\n")
        except OSError:
            pass
        finally:
            c.close()


POLICY = """
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    protocol = { smtp = { mx_list = { '[127.0.0.1]' } } }, retry_interval = '1h' }
end)
kumo.on('get_egress_path_config', function(domain, source, site)
  return kumo.make_egress_path {
    prohibited_hosts = {}, smtp_port = {port:peer}, enable_tls = 'Disabled',
    connection_limit = 1, idle_timeout = '1s', enable_rset = {rset},
  }
end)
"""


def start(kumod_factory, peer, rset=True):
    k = kumod_factory(start=False,
                      policy=default_policy(handlers=POLICY.replace("{rset}",
                                                                    "true" if rset else "false")))
    k.ports["peer"] = peer.port
    k.write_policy(default_policy(handlers=POLICY.replace("{rset}", "true" if rset else "false")))
    k.start()
    return k


def inject(k, n, rcpts_of=lambda i: [f"user{i}@dest.test"]):
    ids = []
    for i in range(1, n + 1):
        s = k.smtp()
        try:
            assert s.mail(SENDER)[0] == 250
            for r in rcpts_of(i):
                assert s.rcpt(r)[0] == 250
            code, text = s.data(f"From: <{SENDER}>\r\nSubject: msg{i}\r\n\r\nbody {i}\r\n"
                                .encode())
            assert code == 250, (code, text)
            ids.append(parse_ids(text.decode())[0])
        finally:
            s.quit()
    return ids


def recs(k, id):
    return [r for r in k.records() if r["id"] == id and r["type"] != "Reception"]


@pytest.fixture
def peers():
    made = []

    def make(**kw):
        p = ScriptedPeer(**kw)
        made.append(p)
        return p
    yield make
    for p in made:
        p.stop()


def test_pipelined_outcomes_belong_to_their_own_message(kumod_factory, peers):
    def script(conn, msg, what):
        if conn != 1:
            return None
        if msg == 3 and what == "RCPT user3@dest.test":
            return "550 5.1.1 no such user here"
        if msg == 4 and what == "DOT":
            return "451 4.3.0 try again later"
        if msg == 5 and what == "DOT":
            return "421 4.3.2 shutting down"
        return None

    peer = peers(script=script)
    k = start(kumod_factory, peer)
    ids = inject(k, 6)
    peer.gate.set()
    # 1, 2 delivered on the first connection, 6 on the second (requeued at once)
    k.wait_records(lambda r: r["id"] in (ids[0], ids[1], ids[5]), type="Delivery", count=3,
                   timeout=30)
    k.wait_records(lambda r: r["id"] == ids[2], type="Bounce", timeout=10)
    k.wait_records(lambda r: r["id"] in (ids[3], ids[4]), type="TransientFailure", count=2,
                   timeout=10)
    time.sleep(0.5)  # nothing else may follow

    by = {i: recs(k, id) for i, id in enumerate(ids, 1)}
    for i in (1, 2):
        [r] = by[i]
        assert r["type"] == "Delivery" and r["response"]["code"] == 250, r
        assert r["num_attempts"] == 0
    [r3] = by[3]
    assert r3["type"] == "Bounce" and r3["response"]["code"] == 550
    assert r3["response"]["command"] == "RCPT TO:<user3@dest.test>\r\n"
    assert r3["response"]["content"] == "no such user here"
    [r4] = by[4]
    assert r4["type"] == "TransientFailure" and r4["response"]["code"] == 451
    assert r4["response"]["command"] == ".\r\n"
    assert r4["response"]["content"] == "try again later"
    [r5] = by[5]
    assert r5["type"] == "TransientFailure" and r5["response"]["code"] == 421
    assert r5["response"]["command"] == ".\r\n"
    # message 6 went out behind 5's dot, was never answered: no record on the
    # first connection, delivered on the next one, not counted as an attempt
    [r6] = by[6]
    assert r6["type"] == "Delivery" and r6["response"]["code"] == 250
    assert r6["num_attempts"] == 0, r6

    # what the peer saw: one connection for 1-5 (+6's unanswered envelope),
    # a second one delivering 6
    assert peer.conns == 2
    first = [(m, d) for c, m, d in peer.mail_with_dot if c == 1]
    assert [m for m, _ in first] == [1, 2, 3, 4, 5]
    # message 6's envelope went out with message 5's dot (the peer closed
    # without reading it as commands)
    [last] = [chunk for c, chunk in peer.reads if c == 1 and b"Subject: msg5" in chunk]
    assert last.endswith(b"\r\n.\r\nRSET\r\nMAIL FROM:<sender@src.example>\r\n"
                         b"RCPT TO:<user6@dest.test>\r\nDATA\r\n"), last
    # every MAIL after the first came in the same read as the previous dot
    # (message 4's follows message 3's aborted transaction, whose DATA got
    # no body: it starts after the reply to that lone dot or DATA)
    assert first[0][1] is False
    for m, with_dot in first[1:]:
        if m == 4:
            continue
        assert with_dot, (m, peer.mail_with_dot)
    got = sorted((c, s) for c, _, _, s in peer.delivered)
    assert got == [(1, "msg1"), (1, "msg2"), (2, "msg6")]
    # RSET before each pipelined MAIL (enable_rset), never before the first
    cmds = [t for c, t in peer.commands if c == 1]
    assert cmds[0].startswith("EHLO") and cmds[1].startswith("MAIL")
    for i, t in enumerate(cmds):
        if t.startswith("MAIL") and i > 1:
            assert cmds[i - 1] == "RSET", cmds


def test_without_pipelining_the_client_waits_for_each_reply(kumod_factory, peers):
    peer = peers(pipelining=False)
    k = start(kumod_factory, peer)
    ids = inject(k, 4)
    peer.gate.set()
    k.wait_records(lambda r: r["id"] in ids, type="Delivery", count=4, timeout=30)
    assert peer.conns == 1
    assert [m for _, m, _ in peer.mail_with_dot] == [1, 2, 3, 4]
    assert not any(d for _, _, d in peer.mail_with_dot), peer.mail_with_dot
    # lock-step: every read holds exactly one command line (or the body)
    for c, chunk in peer.reads:
        if not chunk.startswith(b"From:") and b"\r\n.\r\n" not in chunk:
            assert chunk.count(b"\r\n") == 1, chunk


def test_pipelining_without_rset(kumod_factory, peers):
    """enable_rset = false: MAIL follows the dot directly (the reply to the
    dot ends the transaction either way, RFC 5321 4.1.1.4), and a refused
    dot does not spill onto the next message."""
    def script(conn, msg, what):
        if conn == 1 and msg == 2 and what == "DOT":
            return "554 5.7.1 content rejected"
        return None

    peer = peers(script=script)
    k = start(kumod_factory, peer, rset=False)
    ids = inject(k, 3)
    peer.gate.set()
    k.wait_records(lambda r: r["id"] in (ids[0], ids[2]), type="Delivery", count=2, timeout=30)
    k.wait_records(lambda r: r["id"] == ids[1], type="Bounce", timeout=10)
    assert peer.conns == 1
    assert "RSET" not in [t for _, t in peer.commands]
    assert [d for _, _, d in peer.mail_with_dot] == [False, True, True]
    [r2] = recs(k, ids[1])
    assert r2["response"]["code"] == 554 and r2["response"]["command"] == ".\r\n"
