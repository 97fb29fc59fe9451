#!/usr/bin/python3
"""What the live dashboard costs the relay: smtp-source -> kumod ->
smtp-sink, N messages per round, with no dashboard open and with K
server-sent-event clients reading /api/admin/dashboard/v1/events (as K
browsers would: each reads and parses every update), in ONE kumod process,
rounds alternated in pairs whose order flips each time (none/sse,
sse/none, ...) so that drift on a shared machine falls on both sides.

Two figures per round: relay throughput (messages per second from the
first message sent to the last one the sink got) and kumod's CPU time per
message (/proc utime+stime over the round; it does not move with what
other processes do to the wall clock, so it is the steadier of the two on
a shared machine). Prints the medians, the ratio of the medians and the
median of the per-pair ratios, and writes bench/results/<UTC date>-dashboard.json.

    bench/dashboard_sse.py [--kumod build/kumod] [-n 20000] [--clients 5] [--rounds 4]
"""
import argparse
import datetime
import json
import os
import statistics
import sys
import tempfile
import threading
import time
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchlib as bl  # noqa: E402


class SseClient(threading.Thread):
    """One streaming client: reads the event stream and parses every
    state event's JSON, as the page does."""

    def __init__(self, port):
        super().__init__(daemon=True)
        self.url = f"http://127.0.0.1:{port}/api/admin/dashboard/v1/events"
        self.stop = threading.Event()
        self.events = 0
        self.bytes = 0
        self.first = threading.Event()

    def run(self):
        with urllib.request.urlopen(self.url, timeout=30) as r:
            buf = b""
            while not self.stop.is_set():
                chunk = r.read1(1 << 16)
                if not chunk:
                    return
                self.bytes += len(chunk)
                buf += chunk
                while b"\n\n" in buf:
                    frame, buf = buf.split(b"\n\n", 1)
                    for line in frame.split(b"\n"):
                        if line.startswith(b"data: "):
                            json.loads(line[6:])
                            self.events += 1
                            self.first.set()


def one_round(k, sink, n, sessions, clients):
    readers = [SseClient(k.http_port) for _ in range(clients)]
    for t in readers:
        t.start()
    for t in readers:
        if not t.first.wait(15):
            raise RuntimeError("an SSE client got no first event")
    ev0 = [t.events for t in readers]
    c0 = sink.count
    sink.expect(c0 + n)
    cpu0 = k.cpu()
    t0 = time.monotonic()
    secs, rc, err = bl.run_source(bl.source_cmd(k.port, n, sessions, 2000), timeout=600)
    done = sink.wait(600)
    cpu = k.cpu() - cpu0
    if rc != 0 or done is None:
        raise RuntimeError(f"round failed: rc={rc} {err}")
    wall = done - t0
    got = [t.events - e for t, e in zip(readers, ev0)]
    for t in readers:
        t.stop.set()
    for t in readers:
        t.join(5)
    return {"rate": n / wall, "cpu_us_per_msg": cpu / n * 1e6, "wall_s": wall,
            "events_per_client": got}


def idle_cost(k, clients, seconds, windows):
    """kumod's CPU per second with no traffic, with and without the
    clients, windows alternated: what the dashboard itself costs (its
    one-second tick, snapshot, JSON and writes), measurable to 0.05 % of a
    core over 20 s where the relay figures are not."""
    out = {"none": [], "sse": []}
    for w in range(windows):
        for mode in (("none", "sse") if w % 2 == 0 else ("sse", "none")):
            readers = [SseClient(k.http_port) for _ in range(clients if mode == "sse" else 0)]
            for t in readers:
                t.start()
            for t in readers:
                t.first.wait(15)
            c0, t0 = k.cpu(), time.monotonic()
            time.sleep(seconds)
            out[mode].append((k.cpu() - c0) / (time.monotonic() - t0))
            for t in readers:
                t.stop.set()
            for t in readers:
                t.join(5)
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kumod", default=os.environ.get("KUMOD_BIN", "build/kumod"))
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--rounds", type=int, default=4, help="pairs of rounds (one of each)")
    ap.add_argument("--idle-seconds", type=float, default=20)
    ap.add_argument("--idle-windows", type=int, default=4)
    a = ap.parse_args()
    a.kumod = os.path.abspath(a.kumod)  # kumod runs in its work directory
    sink = bl.Sink().start()
    res = {"none": [], "sse": []}
    pairs = []
    try:
        with tempfile.TemporaryDirectory() as d:
            k = bl.Kumod(a.kumod, d, sink.port).start()
            try:
                # warm-up: queues, connections and the allocator reach their steady state
                one_round(k, sink, a.n // 4, a.sessions, 0)
                for r in range(a.rounds):
                    order = ("none", "sse") if r % 2 == 0 else ("sse", "none")
                    pair = {}
                    for mode in order:
                        k.wait_idle(quiet_s=0.5)
                        x = one_round(k, sink, a.n, a.sessions,
                                      a.clients if mode == "sse" else 0)
                        res[mode].append(x)
                        pair[mode] = x
                        extra = ""
                        if mode == "sse":
                            extra = (f"  events per client {x['events_per_client']} in "
                                     f"{x['wall_s']:.1f}s")
                        print(f"round {r + 1} {mode:5s} {x['rate']:8.0f} msg/s "
                              f"{x['cpu_us_per_msg']:7.1f} us CPU/msg{extra}", flush=True)
                    pairs.append(pair)
                k.wait_idle(quiet_s=1.0)
                idle = idle_cost(k, a.clients, a.idle_seconds, a.idle_windows)
            finally:
                k.stop()
    finally:
        sink.stop()
    med = {m: statistics.median(x["rate"] for x in res[m]) for m in res}
    cpu = {m: statistics.median(x["cpu_us_per_msg"] for x in res[m]) for m in res}
    pair_rate = statistics.median(p["sse"]["rate"] / p["none"]["rate"] for p in pairs)
    pair_cpu = statistics.median(p["sse"]["cpu_us_per_msg"] / p["none"]["cpu_us_per_msg"]
                                 for p in pairs)
    print(f"\nthroughput: no dashboard {med['none']:.0f} msg/s, {a.clients} SSE clients "
          f"{med['sse']:.0f} msg/s; ratio of medians {med['sse'] / med['none']:.3f}, "
          f"median pair ratio {pair_rate:.3f}")
    print(f"kumod CPU per message: {cpu['none']:.1f} us vs {cpu['sse']:.1f} us; ratio of medians "
          f"{cpu['sse'] / cpu['none']:.3f}, median pair ratio {pair_cpu:.3f}")
    inone, isse = statistics.median(idle["none"]), statistics.median(idle["sse"])
    busy = med["none"] * cpu["none"] / 1e6  # kumod's CPU seconds per second while relaying
    direct = max(0.0, isse - inone)
    print(f"idle kumod: {inone * 100:.2f} % of a core without clients, {isse * 100:.2f} % with "
          f"{a.clients}: the dashboard's own cost {direct * 100:.2f} % of a core, "
          f"{direct / busy * 100:.2f} % of kumod's CPU while relaying at {med['none']:.0f} msg/s")
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       datetime.datetime.utcnow().strftime("%Y-%m-%dT%H%M%SZ") + "-dashboard.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"n": a.n, "sessions": a.sessions, "clients": a.clients, "rounds": res,
                   "median_rate": med, "median_cpu_us_per_msg": cpu,
                   "pair_rate_ratio": pair_rate, "pair_cpu_ratio": pair_cpu,
                   "idle_cpu_per_s": idle, "direct_cost_share_of_relay_cpu": direct / busy,
                   "loadavg": os.getloadavg()}, f, indent=1)
    print("wrote", out)


if __name__ == "__main__":
    main()
