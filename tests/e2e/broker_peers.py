"""Real message brokers for the e2e tests, started on loopback ports in a
temporary directory, and small clients for them written with the standard
library (Debian 12 has python3-pika but it is not installed here, and no
NATS client package):

- Rabbit: Debian's rabbitmq-server (its own node name, ports, epmd, mnesia
  and log dirs), stop()/start() keep its data (durable queues survive).
- AmqpClient: AMQP 0-9-1 over a socket: declare a queue, basic.get, ack.
- Nats: nats-server with JetStream (file storage), stop()/start() keep it.
- NatsClient: the NATS text protocol: request/reply, JetStream's API
  (stream create, message get), publish, subscribe.
"""
import base64
import json
import os
import shutil
import signal
import socket
import struct
import subprocess
import time

import kumod_harness as kh

RABBITMQ_SERVER = "/usr/lib/rabbitmq/bin/rabbitmq-server"
NATS_SERVER = shutil.which("nats-server") or "/usr/sbin/nats-server"
EPMD = shutil.which("epmd") or "/usr/bin/epmd"


def _port_open(port):
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return True
    except OSError:
        return False


class Rabbit:
    def __init__(self, base):
        self.dir = os.path.join(base, "rabbitmq")
        os.makedirs(os.path.join(self.dir, "home"), exist_ok=True)
        self.port = kh.free_port()
        self.dist_port = kh.free_port()
        self.epmd_port = kh.free_port()
        self.node = f"kumodtest{self.port}@localhost"
        with open(os.path.join(self.dir, "rabbitmq.conf"), "w") as f:
            f.write(f"listeners.tcp.1 = 127.0.0.1:{self.port}\n"
                    "log.console = true\nlog.file = false\n")
        with open(os.path.join(self.dir, "enabled_plugins"), "w") as f:
            f.write("[].\n")
        self.env = dict(os.environ)
        self.env.update({
            "HOME": os.path.join(self.dir, "home"),
            "RABBITMQ_NODENAME": self.node,
            "RABBITMQ_NODE_IP_ADDRESS": "127.0.0.1",
            "RABBITMQ_NODE_PORT": str(self.port),
            "RABBITMQ_DIST_PORT": str(self.dist_port),
            "ERL_EPMD_PORT": str(self.epmd_port),
            "ERL_EPMD_ADDRESS": "127.0.0.1",
            "RABBITMQ_MNESIA_BASE": os.path.join(self.dir, "mnesia"),
            "RABBITMQ_LOG_BASE": os.path.join(self.dir, "log"),
            "RABBITMQ_CONFIG_FILE": os.path.join(self.dir, "rabbitmq"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": os.path.join(self.dir, "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": os.path.join(self.dir, "no-env.conf"),
            "RABBITMQ_PID_FILE": os.path.join(self.dir, "pid"),
        })
        self.epmd = None
        self.proc = None
        self.starts = 0

    def start(self, timeout=120):
        # our own epmd in the foreground, so that nothing outlives the test
        if self.epmd is None or self.epmd.poll() is not None:
            self.epmd = subprocess.Popen([EPMD, "-port", str(self.epmd_port), "-address",
                                          "127.0.0.1"], env=self.env,
                                         stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.starts += 1
        self.log = open(os.path.join(self.dir, f"server{self.starts}.log"), "w")
        self.proc = subprocess.Popen([RABBITMQ_SERVER], env=self.env, cwd=self.dir,
                                     stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"rabbitmq-server exited with {self.proc.returncode}:\n"
                                   + self.tail())
            if _port_open(self.port):
                return
            time.sleep(0.2)
        raise RuntimeError("rabbitmq-server did not start:\n" + self.tail())

    def tail(self):
        with open(self.log.name) as f:
            return f.read()[-4000:]

    def stop(self, timeout=60):
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait()
        # the disk monitor and other port programs share the session
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError, AttributeError):
            pass
        if self.log:
            self.log.close()

    def close(self):
        self.stop()
        if self.epmd and self.epmd.poll() is None:
            self.epmd.terminate()
            self.epmd.wait(10)


# ---- AMQP 0-9-1 ----------------------------------------------------------------------------

FRAME_METHOD, FRAME_HEADER, FRAME_BODY, FRAME_HEARTBEAT = 1, 2, 3, 8


def _shortstr(s):
    b = s.encode()
    return struct.pack("B", len(b)) + b


def _longstr(b):
    if isinstance(b, str):
        b = b.encode()
    return struct.pack(">I", len(b)) + b


def _table(d):
    out = b""
    for k, v in d.items():
        out += _shortstr(k)
        if isinstance(v, bool):
            out += b"t" + struct.pack("B", v)
        elif isinstance(v, int):
            out += b"l" + struct.pack(">q", v)
        else:
            out += b"S" + _longstr(v)
    return _longstr(out)


class _Reader:
    def __init__(self, b):
        self.b, self.o = b, 0

    def take(self, n):
        v = self.b[self.o:self.o + n]
        self.o += n
        return v

    def u8(self):
        return self.take(1)[0]

    def u16(self):
        return struct.unpack(">H", self.take(2))[0]

    def u32(self):
        return struct.unpack(">I", self.take(4))[0]

    def u64(self):
        return struct.unpack(">Q", self.take(8))[0]

    def shortstr(self):
        return self.take(self.u8()).decode()

    def longstr(self):
        return self.take(self.u32())

    def value(self):
        kind = chr(self.u8())
        if kind == "t":
            return bool(self.u8())
        if kind == "b":
            return struct.unpack(">b", self.take(1))[0]
        if kind == "s":
            return struct.unpack(">h", self.take(2))[0]
        if kind == "I":
            return struct.unpack(">i", self.take(4))[0]
        if kind == "l":
            return struct.unpack(">q", self.take(8))[0]
        if kind == "d":
            return struct.unpack(">d", self.take(8))[0]
        if kind == "f":
            return struct.unpack(">f", self.take(4))[0]
        if kind == "S":
            return self.longstr().decode()
        if kind == "x":
            return self.longstr()
        if kind == "T":
            return self.u64()
        if kind == "F":
            return self.table()
        if kind == "A":
            r = _Reader(self.longstr())
            out = []
            while r.o < len(r.b):
                out.append(r.value())
            return out
        if kind == "V":
            return None
        raise ValueError(f"field kind {kind!r}")

    def table(self):
        r = _Reader(self.longstr())
        out = {}
        while r.o < len(r.b):
            k = r.shortstr()
            out[k] = r.value()
        return out


class AmqpError(Exception):
    pass


class AmqpClient:
    """Channel 1 of one connection; every call waits for its answer."""

    def __init__(self, port, host="127.0.0.1", user="guest", password="guest", timeout=10):
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self.buf = b""
        self.sock.sendall(b"AMQP\x00\x00\x09\x01")
        self._expect(10, 10)  # connection.start
        resp = b"\x00" + user.encode() + b"\x00" + password.encode()
        self._method(0, 10, 11, _table({"product": "kumod-e2e"}) + _shortstr("PLAIN")
                     + _longstr(resp) + _shortstr("en_US"))
        _, args = self._expect(10, 30)  # connection.tune
        r = _Reader(args)
        chmax, fmax = r.u16(), r.u32()
        self.frame_max = fmax or 131072
        self._method(0, 10, 31, struct.pack(">HIH", chmax, self.frame_max, 0))
        self._method(0, 10, 40, _shortstr("/") + _shortstr("") + b"\x00")
        self._expect(10, 41)
        self._method(1, 20, 10, _shortstr(""))
        self._expect(20, 11)

    def _frame(self, ftype, channel, payload):
        self.sock.sendall(struct.pack(">BHI", ftype, channel, len(payload)) + payload + b"\xce")

    def _method(self, channel, cls, mid, args):
        self._frame(FRAME_METHOD, channel, struct.pack(">HH", cls, mid) + args)

    def _recv_frame(self):
        while True:
            while len(self.buf) < 7:
                d = self.sock.recv(65536)
                if not d:
                    raise AmqpError("connection closed by the broker")
                self.buf += d
            ftype, channel, size = struct.unpack(">BHI", self.buf[:7])
            while len(self.buf) < 8 + size:
                d = self.sock.recv(65536)
                if not d:
                    raise AmqpError("connection closed by the broker")
                self.buf += d
            payload = self.buf[7:7 + size]
            self.buf = self.buf[8 + size:]
            if ftype == FRAME_HEARTBEAT:
                self._frame(FRAME_HEARTBEAT, 0, b"")
                continue
            return ftype, channel, payload

    def _expect(self, cls, mid):
        ftype, channel, payload = self._recv_frame()
        if ftype != FRAME_METHOD:
            raise AmqpError(f"expected a method, got frame type {ftype}")
        c, m = struct.unpack(">HH", payload[:4])
        if (c, m) in ((10, 50), (20, 40)):
            r = _Reader(payload[4:])
            raise AmqpError(f"closed by the broker: {r.u16()} {r.shortstr()}")
        if (c, m) != (cls, mid):
            raise AmqpError(f"expected method {cls}.{mid}, got {c}.{m}")
        return channel, payload[4:]

    def queue_declare(self, name, durable=True):
        self._method(1, 50, 10, b"\x00\x00" + _shortstr(name)
                     + struct.pack("B", 2 if durable else 0) + _table({}))
        _, args = self._expect(50, 11)
        r = _Reader(args)
        return r.shortstr(), r.u32()  # name, message count

    def basic_get(self, queue):
        """(body, properties) of the next message, acked, or None when empty."""
        self._method(1, 60, 70, b"\x00\x00" + _shortstr(queue) + b"\x00")
        ftype, _, payload = self._recv_frame()
        c, m = struct.unpack(">HH", payload[:4])
        if (c, m) == (60, 72):  # get-empty
            return None
        if (c, m) != (60, 71):
            raise AmqpError(f"basic.get: unexpected {c}.{m}")
        r = _Reader(payload[4:])
        tag = r.u64()
        # the content header and the body frames
        _, _, hdr = self._recv_frame()
        hr = _Reader(hdr)
        hr.u16(), hr.u16()
        size = hr.u64()
        flags = hr.u16()
        props = {}
        names = ["content_type", "content_encoding", "headers", "delivery_mode", "priority",
                 "correlation_id", "reply_to", "expiration", "message_id", "timestamp",
                 "type", "user_id", "app_id", "cluster_id"]
        for i, name in enumerate(names):
            if not flags & (1 << (15 - i)):
                continue
            if name == "headers":
                props[name] = hr.table()
            elif name in ("delivery_mode", "priority"):
                props[name] = hr.u8()
            elif name == "timestamp":
                props[name] = hr.u64()
            else:
                props[name] = hr.shortstr()
        body = b""
        while len(body) < size:
            _, _, chunk = self._recv_frame()
            body += chunk
        self._method(1, 60, 80, struct.pack(">Q", tag) + b"\x00")  # basic.ack
        return body, props

    def drain(self, queue):
        out = []
        while True:
            m = self.basic_get(queue)
            if m is None:
                return out
            out.append(m)

    def close(self):
        try:
            self._method(0, 10, 50, struct.pack(">H", 200) + _shortstr("bye") + b"\x00\x00\x00\x00")
            self._expect(10, 51)
        except (OSError, AmqpError):
            pass
        self.sock.close()


# ---- NATS ----------------------------------------------------------------------------------

class Nats:
    def __init__(self, base):
        self.dir = os.path.join(base, "nats")
        os.makedirs(self.dir, exist_ok=True)
        self.port = kh.free_port()
        self.proc = None
        self.starts = 0

    @property
    def address(self):
        return f"127.0.0.1:{self.port}"

    def start(self, timeout=30):
        self.starts += 1
        self.log = open(os.path.join(self.dir, f"server{self.starts}.log"), "w")
        self.proc = subprocess.Popen([NATS_SERVER, "-a", "127.0.0.1", "-p", str(self.port),
                                      "-js", "-sd", os.path.join(self.dir, "js")],
                                     stdout=self.log, stderr=subprocess.STDOUT)
        deadline = time.time() + timeout
        while time.time() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"nats-server exited with {self.proc.returncode}")
            if _port_open(self.port):
                return
            time.sleep(0.05)
        raise RuntimeError("nats-server did not start")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(30)
        if self.log:
            self.log.close()

    close = stop


class NatsClient:
    def __init__(self, port, timeout=10):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=timeout)
        self.buf = b""
        self.sid = 0
        self.info = json.loads(self._line()[5:])
        self.sock.sendall(b"CONNECT " + json.dumps({
            "verbose": False, "pedantic": False, "headers": True, "no_responders": True,
            "lang": "python", "version": "e2e", "protocol": 1}).encode() + b"\r\nPING\r\n")
        self._until_pong()

    def _line(self):
        while b"\r\n" not in self.buf:
            d = self.sock.recv(65536)
            if not d:
                raise ConnectionError("nats: connection closed")
            self.buf += d
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line.decode()

    def _bytes(self, n):
        while len(self.buf) < n + 2:
            d = self.sock.recv(65536)
            if not d:
                raise ConnectionError("nats: connection closed")
            self.buf += d
        b, self.buf = self.buf[:n], self.buf[n + 2:]
        return b

    def _until_pong(self):
        while True:
            line = self._line()
            if line == "PONG":
                return
            if line.startswith("-ERR"):
                raise RuntimeError(line)

    def next_msg(self):
        """(subject, headers bytes, payload) of the next MSG/HMSG."""
        while True:
            line = self._line()
            if line == "PING":
                self.sock.sendall(b"PONG\r\n")
                continue
            if line.startswith(("+OK", "PONG", "INFO")):
                continue
            if line.startswith("-ERR"):
                raise RuntimeError(line)
            parts = line.split()
            if parts[0] == "MSG":
                size = int(parts[-1])
                return parts[1], b"", self._bytes(size)
            if parts[0] == "HMSG":
                hsize, size = int(parts[-2]), int(parts[-1])
                data = self._bytes(size)
                return parts[1], data[:hsize], data[hsize:]
            raise RuntimeError(f"nats: unexpected {line!r}")

    def request(self, subject, payload):
        self.sid += 1
        inbox = f"_INBOX.e2e.{self.sid}"
        if isinstance(payload, str):
            payload = payload.encode()
        self.sock.sendall(f"SUB {inbox} {self.sid}\r\nUNSUB {self.sid} 1\r\n"
                          f"PUB {subject} {inbox} {len(payload)}\r\n".encode()
                          + payload + b"\r\n")
        _, hdrs, data = self.next_msg()
        if hdrs and b" 503" in hdrs.split(b"\r\n")[0]:
            raise RuntimeError(f"nats: no responders for {subject}")
        return data

    def js(self, api, body):
        r = json.loads(self.request("$JS.API." + api, json.dumps(body)))
        if "error" in r:
            raise RuntimeError(f"JetStream {api}: {r['error']}")
        return r

    def create_stream(self, name, subjects):
        return self.js(f"STREAM.CREATE.{name}", {"name": name, "subjects": subjects,
                                                 "storage": "file", "num_replicas": 1})

    def stream_messages(self, name):
        """Every message of stream name: [(seq, subject, headers, data)]."""
        info = self.js(f"STREAM.INFO.{name}", {})
        out = []
        for seq in range(info["state"]["first_seq"], info["state"]["last_seq"] + 1):
            r = json.loads(self.request(f"$JS.API.STREAM.MSG.GET.{name}",
                                        json.dumps({"seq": seq})))
            if "error" in r:
                continue  # deleted
            m = r["message"]
            out.append((m["seq"], m["subject"],
                        base64.b64decode(m["hdrs"]) if m.get("hdrs") else b"",
                        base64.b64decode(m.get("data", ""))))
        return out

    def subscribe(self, subject):
        self.sid += 1
        self.sock.sendall(f"SUB {subject} {self.sid}\r\nPING\r\n".encode())
        self._until_pong()
        return self.sid

    def close(self):
        self.sock.close()
