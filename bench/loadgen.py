#!/usr/bin/python3
"""A paced SMTP load generator for latency measurements.

`threads` threads each keep one ESMTP session open and send one message
every threads/rate seconds on a fixed schedule (the threads are staggered),
so the offered load is `rate` messages per second no matter how fast the
server answers, as long as it keeps up. The latency of a transaction is the
time from sending MAIL FROM to the 250 reply after the final dot (smtplib
sendmail: MAIL, RCPT, DATA, body). A transaction that falls behind its
schedule starts at once; the report says how many did.

    bench/loadgen.py --port 2025 --rate 50 --duration 10
"""
import argparse
import json
import smtplib
import threading
import time


def make_body(size, i, sender="bench@loadgen.bench.test"):
    head = (f"From: <{sender}>\r\nTo: <rcpt@example.com>\r\n"
            f"Subject: latency probe {i}\r\nMessage-ID: <{i}.{time.time_ns()}@loadgen.bench.test>\r\n"
            f"\r\n")
    line = ("x" * 76 + "\r\n")
    body = (line * (size // len(line) + 1))[:size]
    return (head + body).encode()


def percentile(sorted_vals, p):
    if not sorted_vals:
        return None
    k = max(0, min(len(sorted_vals) - 1, int(round(p / 100.0 * len(sorted_vals) + 0.5)) - 1))
    return sorted_vals[k]


def run(port, rate, duration, threads=8, size=5120, host="127.0.0.1",
        rcpt="rcpt@example.com", sender="bench@loadgen.bench.test"):
    interval = threads / float(rate)
    per_thread = max(1, int(round(duration / interval)))
    lat, errors, late = [], [], [0]
    lock = threading.Lock()
    body = make_body(size, 0, sender)
    t0 = time.monotonic() + 0.2

    def worker(idx):
        smtp = None
        next_t = t0 + idx * interval / threads
        for k in range(per_thread):
            now = time.monotonic()
            if next_t > now:
                time.sleep(next_t - now)
            elif now - next_t > interval:
                with lock:
                    late[0] += 1
            next_t += interval
            try:
                if smtp is None:
                    smtp = smtplib.SMTP(host, port, local_hostname="loadgen.bench.test",
                                        timeout=60)
                    smtp.ehlo()
                a = time.perf_counter()
                smtp.sendmail(sender, [rcpt], body)
                b = time.perf_counter()
                with lock:
                    lat.append(b - a)
            except (smtplib.SMTPException, OSError) as e:
                with lock:
                    errors.append(repr(e)[:200])
                try:
                    if smtp is not None:
                        smtp.close()
                except OSError:
                    pass
                smtp = None
        if smtp is not None:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                pass

    ts = [threading.Thread(target=worker, args=(i,), daemon=True) for i in range(threads)]
    start = time.monotonic()
    for t in ts:
        t.start()
    for t in ts:
        t.join()
    elapsed = time.monotonic() - start
    lat.sort()
    return {
        "offered_msgs_per_s": rate,
        "threads": threads,
        "size": size,
        "messages": len(lat),
        "errors": len(errors),
        "error_samples": errors[:5],
        "late_starts": late[0],
        "achieved_msgs_per_s": len(lat) / elapsed if elapsed > 0 else 0.0,
        "p50_ms": percentile(lat, 50) * 1000 if lat else None,
        "p90_ms": percentile(lat, 90) * 1000 if lat else None,
        "p99_ms": percentile(lat, 99) * 1000 if lat else None,
        "max_ms": lat[-1] * 1000 if lat else None,
        "mean_ms": sum(lat) / len(lat) * 1000 if lat else None,
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--host", default="127.0.0.1")
    ap.add_argument("--port", type=int, required=True)
    ap.add_argument("--rate", type=float, default=50.0, help="offered messages per second")
    ap.add_argument("--duration", type=float, default=10.0, help="seconds")
    ap.add_argument("--threads", type=int, default=8)
    ap.add_argument("--size", type=int, default=5120, help="body bytes")
    a = ap.parse_args()
    print(json.dumps(run(a.port, a.rate, a.duration, a.threads, a.size, a.host), indent=2))


if __name__ == "__main__":
    main()
