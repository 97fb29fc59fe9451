#!/usr/bin/python3
"""Round trips and sessions per relayed message, kumod A against kumod B.

smtp-source -> kumod -> bench/smtpcount.c (an SMTP sink that counts sessions,
messages, reply writes and pipelined envelopes; smtp-sink counts none of
these). Each reply write of the sink answers one batch of client input, so
writes per message is the number of round trips the delivering client
waited for (2 per message when MAIL/RCPT/DATA and the body each wait for
their replies, toward 1 when the next envelope rides behind the previous
dot). `behind` is the share of messages whose MAIL arrived in the same read
as the previous message's dot.

    bench/pipeline_count.py --kumod A --kumod-b B [--n 20000] [--sessions 10,50]
                            [--repeat 2] [--connection-limit L] [--out FILE]

Runs as root like bench/run (it uses benchlib's private copies), alternating
A and B in every round; prints one line per run and a JSON summary.
"""
import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


class CountSink:
    def __init__(self, workdir):
        self.bin = os.path.join(workdir, "smtpcount")
        if not os.path.exists(self.bin):
            subprocess.run(["cc", "-O2", "-o", self.bin, os.path.join(HERE, "smtpcount.c"),
                            "-levent"], check=True)
        self.port = bl.free_port()
        self.proc = subprocess.Popen([self.bin, str(self.port)], stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL, text=True)
        self.counts = (0, 0, 0, 0, 0)
        threading.Thread(target=self._read, daemon=True).start()
        time.sleep(0.2)

    def _read(self):
        for line in self.proc.stdout:
            try:
                self.counts = tuple(int(x) for x in line.split())
            except ValueError:
                pass

    def wait_msgs(self, n, timeout):
        deadline = time.monotonic() + timeout
        while self.counts[1] < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.counts[1] >= n

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()


def one(binary, tmp, n, sessions, size, tag, conn_limit=None):
    work = tempfile.mkdtemp(dir=tmp, prefix=f"{tag}-s{sessions}-")
    os.chmod(work, 0o755)
    sink = CountSink(tmp)
    k = bl.Kumod(binary, work, sink.port)
    if conn_limit:
        # the egress path's connection_limit (32 in benchlib's policy): a
        # small one, as shaping gives real destinations, keeps a backlog
        text = open(k.policy).read()
        assert "connection_limit = 32," in text
        with open(k.policy, "w") as f:
            f.write(text.replace("connection_limit = 32,", f"connection_limit = {conn_limit},"))
    k.start()
    try:
        base = sink.counts
        cpu0 = k.cpu()
        t0 = time.monotonic()
        secs, rc, err = bl.run_source(bl.source_cmd(k.port, n, sessions, size), timeout=600)
        if rc != 0:
            raise RuntimeError(f"smtp-source failed: {err}")
        ok = sink.wait_msgs(base[1] + n, 120)
        t1 = time.monotonic()
        cpu1 = k.cpu()
        time.sleep(0.3)
        c = sink.counts
        d = [c[i] - base[i] for i in range(5)]
        msgs = d[1] or 1
        return {"binary": binary, "tag": tag, "sessions": sessions, "n": n, "complete": ok,
                "connection_limit": conn_limit or 32,
                "e2e_per_s": round(n / (t1 - t0), 1),
                "cpu_s_per_1000": round((cpu1 - cpu0) / n * 1000, 3),
                "sink_sessions": d[0], "sink_msgs": d[1],
                "sink_reply_writes_per_msg": round((d[3] - d[0]) / msgs, 3),
                "mail_behind_dot_share": round(d[4] / msgs, 3),
                "load": os.getloadavg()}
    finally:
        k.stop()
        sink.stop()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kumod", required=True)
    ap.add_argument("--kumod-b", required=True)
    ap.add_argument("--n", type=int, default=20000)
    ap.add_argument("--size", type=int, default=5120)
    ap.add_argument("--sessions", default="10,50")
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--connection-limit", type=int, default=None)
    ap.add_argument("--out")
    a = ap.parse_args()
    tmp = tempfile.mkdtemp(prefix="mtpc-")
    os.chmod(tmp, 0o755)
    bindir = os.path.join(tmp, "bin")
    os.makedirs(bindir)
    A = a.kumod
    B = a.kumod_b
    rows = []
    for s in [int(x) for x in a.sessions.split(",")]:
        for r in range(a.repeat):
            order = [("A", A), ("B", B)] if r % 2 == 0 else [("B", B), ("A", A)]
            for tag, b in order:
                row = one(b, tmp, a.n, s, a.size, tag, a.connection_limit)
                rows.append(row)
                print(f"{tag} s{s}: {row['e2e_per_s']:,.0f} msg/s cpu/1000 "
                      f"{row['cpu_s_per_1000']}s sink sessions {row['sink_sessions']} "
                      f"reply writes/msg {row['sink_reply_writes_per_msg']} "
                      f"behind-dot {row['mail_behind_dot_share']} load {row['load'][0]:.1f}",
                      flush=True)
    if a.out:
        with open(a.out, "w") as f:
            json.dump({"kumod": a.kumod, "kumod_b": a.kumod_b, "rows": rows}, f, indent=1)
    subprocess.run(["rm", "-rf", tmp])


if __name__ == "__main__":
    main()
