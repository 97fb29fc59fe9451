#!/usr/bin/python3
"""Relay throughput with Redis-shared throttles vs in-process throttles
(issue 20): smtp-source -> kumod -> smtp-sink on loopback, N messages, the
egress path with max_message_rate and additional_message_rate_throttles
high enough never to bite, connection_limit 32. The same run once with
kumo.configure_redis_throttles (a redis-server started here) and once
without, alternating for ROUNDS rounds (the order flips each round, so a
change in the shared machine's load hits both alike). Prints messages/s of
each round, the medians, their ratio, the EVALSHA calls per message and
the load average before and after (the machine may be shared).

    bench/redis_throttle.py [N] [ROUNDS]      (KUMOD_BIN or build/kumod)
"""
import os
import re
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "..", "tests", "e2e"))
import kumod_harness as kh  # noqa: E402

N = int(sys.argv[1]) if len(sys.argv) > 1 else 20000
ROUNDS = int(sys.argv[2]) if len(sys.argv) > 2 else 3


def delivered(k):
    text = urllib.request.urlopen(f"http://127.0.0.1:{k.http_port}/metrics", timeout=10).read().decode()
    return sum(int(float(v)) for v in re.findall(r'^total_messages_delivered\{[^}]*\} (\S+)$', text, re.M))


def run(workdir, redis_port):
    sink_port = kh.free_port()
    sink = subprocess.Popen(["/usr/sbin/smtp-sink", "-u", "nobody", f"127.0.0.1:{sink_port}", "256"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    shared = (f"kumo.configure_redis_throttles {{ node = 'redis://127.0.0.1:{redis_port}/' }}"
              if redis_port else "")
    pol = kh.default_policy(init=f"""
  {shared}
  kumo.start_http_listener {{ listen = '127.0.0.1:{{http_port}}' }}
""", handlers=f"""
kumo.on('get_queue_config', function()
  return kumo.make_queue_config {{ protocol = {{ smtp = {{ mx_list = {{ '[127.0.0.1]' }} }} }} }}
end)
kumo.on('get_egress_path_config', function()
  return kumo.make_egress_path {{ smtp_port = {sink_port}, enable_tls = 'Disabled',
    prohibited_hosts = {{}}, connection_limit = 32,
    max_message_rate = '1,000,000/s',
    additional_message_rate_throttles = {{ ['global-rate'] = '2,000,000/s' }},
    additional_connection_limits = {{ ['global-conns'] = 64 }} }}
end)
""")
    k = kh.Kumod(workdir, policy=pol, threads=2).start()
    t0 = time.monotonic()
    subprocess.run(["/usr/sbin/smtp-source", "-s", "32", "-m", str(N), "-l", "1000",
                    "-f", "from@bench.example", "-t", "to@dest.example",
                    f"127.0.0.1:{k.smtp_port}"], check=True, stdout=subprocess.DEVNULL)
    while delivered(k) < N:
        time.sleep(0.05)
    elapsed = time.monotonic() - t0
    k.stop()
    sink.kill()
    return N / elapsed


def evalsha_calls(rport):
    info = subprocess.run(["redis-cli", "-p", str(rport), "INFO", "commandstats"],
                          capture_output=True, text=True).stdout
    m = re.search(r"cmdstat_evalsha:calls=(\d+)", info)
    return int(m.group(1)) if m else 0


def main():
    import statistics
    load0 = os.getloadavg()
    with tempfile.TemporaryDirectory() as d:
        rport = kh.free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1",
                                  "--save", "", "--appendonly", "no", "--dir", d],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        for _ in range(100):
            ping = subprocess.run(["redis-cli", "-p", str(rport), "PING"],
                                  capture_output=True, text=True).stdout.strip()
            if ping == "PONG":
                break
            time.sleep(0.05)
        local, shared = [], []
        calls = 0
        try:
            for r in range(ROUNDS):
                order = ["local", "shared"] if r % 2 == 0 else ["shared", "local"]
                for kind in order:
                    wd = os.path.join(d, f"{kind}{r}")
                    if kind == "local":
                        local.append(run(wd, None))
                    else:
                        before = evalsha_calls(rport)
                        shared.append(run(wd, rport))
                        calls += evalsha_calls(rport) - before
                print(f"round {r + 1}: in-process {local[-1]:.0f} msg/s  "
                      f"redis-shared {shared[-1]:.0f} msg/s", flush=True)
        finally:
            redis.kill()
    load1 = os.getloadavg()
    lm, sm = statistics.median(local), statistics.median(shared)
    # each round's pair ran back to back: its ratio is what the load swings
    # disturb least
    rr = statistics.median(s_ / l_ for s_, l_ in zip(shared, local))
    print(f"N={N} x {ROUNDS} rounds: median in-process {lm:.0f} msg/s, redis-shared "
          f"{sm:.0f} msg/s, ratio of medians {sm / lm:.3f}, median per-round ratio "
          f"{rr:.3f}; EVALSHA calls per message "
          f"{calls / (N * ROUNDS):.4f}; load average before {load0[0]:.2f} {load0[1]:.2f} "
          f"{load0[2]:.2f}, after {load1[0]:.2f} {load1[1]:.2f} {load1[2]:.2f} "
          f"({os.cpu_count()} CPUs, shared machine)")


if __name__ == "__main__":
    main()
