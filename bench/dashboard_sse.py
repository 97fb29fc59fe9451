#!/usr/bin/python3
"""What the live dashboard costs the relay: smtp-source -> kumod ->
smtp-sink, N messages per run, with no dashboard open and with K
server-sent-event clients reading /api/admin/dashboard/v1/events (as K
browsers would), runs alternated so that drift on a shared machine falls
on both sides. Prints messages per second for each and the ratio, and
writes bench/results/<UTC date>-dashboard.json.

    bench/dashboard_sse.py [--kumod build/kumod] [-n 20000] [--clients 5] [--runs 3]
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


def sse_reader(port, stop, counts, i):
    url = f"http://127.0.0.1:{port}/api/admin/dashboard/v1/events"
    with urllib.request.urlopen(url, timeout=30) as r:
        while not stop.is_set():
            chunk = r.read1(65536)
            if not chunk:
                return
            counts[i] += chunk.count(b"event: state")


def one_run(binary, sink, n, sessions, clients, workdir):
    k = bl.Kumod(binary, workdir, sink.port).start()
    stop = threading.Event()
    counts = [0] * clients
    readers = [threading.Thread(target=sse_reader, args=(k.http_port, stop, counts, i),
                                daemon=True) for i in range(clients)]
    for t in readers:
        t.start()
    time.sleep(1.5 if clients else 0)
    c0 = sink.count
    sink.expect(c0 + n)
    t0 = time.monotonic()
    secs, rc, err = bl.run_source(bl.source_cmd(k.port, n, sessions, 2000), timeout=600)
    done = sink.wait(600)
    stop.set()
    k.proc.terminate()
    k.proc.wait(60)
    if rc != 0 or done is None:
        raise RuntimeError(f"run failed: rc={rc} {err}")
    return n / (done - t0), sum(counts)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--kumod", default=os.environ.get("KUMOD_BIN", "build/kumod"))
    ap.add_argument("-n", type=int, default=20000)
    ap.add_argument("--sessions", type=int, default=50)
    ap.add_argument("--clients", type=int, default=5)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    sink = bl.Sink().start()
    res = {"none": [], "sse": [], "events": []}
    try:
        with tempfile.TemporaryDirectory() as d:
            for r in range(a.runs):
                for mode in ("none", "sse"):
                    rate, ev = one_run(a.kumod, sink, a.n, a.sessions,
                                       a.clients if mode == "sse" else 0,
                                       os.path.join(d, f"{mode}{r}"))
                    res[mode].append(rate)
                    if mode == "sse":
                        res["events"].append(ev)
                    print(f"run {r + 1} {mode:5s} {rate:9.0f} msg/s"
                          + (f"  ({ev} events to {a.clients} clients)" if mode == "sse" else ""),
                          flush=True)
    finally:
        sink.proc.terminate()
    none, sse = statistics.median(res["none"]), statistics.median(res["sse"])
    print(f"\nmedian: no dashboard {none:.0f} msg/s, {a.clients} SSE clients {sse:.0f} msg/s, "
          f"ratio {sse / none:.3f} ({(1 - sse / none) * 100:+.1f}% cost)")
    out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results",
                       datetime.datetime.utcnow().strftime("%Y-%m-%d") + "-dashboard.json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"n": a.n, "sessions": a.sessions, "clients": a.clients, "runs": res,
                   "median_none": none, "median_sse": sse, "loadavg": os.getloadavg()}, f,
                  indent=1)
    print("wrote", out)


if __name__ == "__main__":
    main()
