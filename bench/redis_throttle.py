#!/usr/bin/python3
"""Relay throughput with Redis-shared throttles vs in-process throttles
(issue 20): smtp-source -> kumod -> smtp-sink on loopback, N messages, the
egress path with max_message_rate and additional_message_rate_throttles
high enough never to bite, connection_limit 32. The same run once with
kumo.configure_redis_throttles (a redis-server started here) and once
without. Prints messages/s of each and the ratio.

    bench/redis_throttle.py [N]      (KUMOD_BIN or build/kumod)
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


def main():
    with tempfile.TemporaryDirectory() as d:
        rport = kh.free_port()
        redis = subprocess.Popen(["redis-server", "--port", str(rport), "--bind", "127.0.0.1",
                                  "--save", "", "--appendonly", "no", "--dir", d],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        time.sleep(0.5)
        try:
            local = run(os.path.join(d, "local"), None)
            shared = run(os.path.join(d, "shared"), rport)
            calls = subprocess.run(["redis-cli", "-p", str(rport), "INFO", "commandstats"],
                                   capture_output=True, text=True).stdout
        finally:
            redis.kill()
    evs = re.search(r"cmdstat_evalsha:calls=(\d+)", calls)
    print(f"N={N} in-process: {local:.0f} msg/s  redis-shared: {shared:.0f} msg/s  "
          f"ratio {shared / local:.3f}  EVALSHA calls: {evs.group(1) if evs else '?'}")


if __name__ == "__main__":
    main()
