"""What a throttle does to the messages it holds back, as KumoMTA's pages say.

- make_egress_path max_message_rate (max_message_rate.md): when the wait
  for the next message is longer than idle_timeout, the messages of the
  ready queue are delayed (back in their scheduled queue, due when the
  throttle opens, a Delayed record each), and the connection closes.
- make_queue_config max_message_rate: the message waits in its scheduled
  queue, counted in delayed_due_to_message_rate_throttle{queue} with a
  Delayed record (metrics/kumod/delayed_due_to_message_rate_throttle.md).
- throttle_insert_ready_queue: delayed_due_to_throttle_insert_ready{queue}
  and a Delayed record (delayed_due_to_throttle_insert_ready.md)."""
import re
import smtplib
import time
import urllib.request

import pytest

import kumod_harness as kh
from kumod_harness import wait_until
from smtpdeliv_peers import SmtpPeer

PEER_HOST = "127.0.0.1"


@pytest.fixture
def peer():
    p = SmtpPeer(host=PEER_HOST)
    p.start()
    yield p
    p.stop()


def policy(peer, queue_extra="", path_extra="", handlers=""):
    return kh.default_policy(init="""
  kumo.start_http_listener { listen = '127.0.0.1:{http_port}' }
""", handlers=f"""
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    protocol = {{ smtp = {{ mx_list = {{ '[{PEER_HOST}]' }} }} }},
    retry_interval = '1h', {queue_extra}
  }}
end)
kumo.on('get_egress_path_config', function(domain, source, site)
  return kumo.make_egress_path {{ smtp_port = {peer.port}, enable_tls = 'Disabled',
                                 prohibited_hosts = {{}}, {path_extra} }}
end)
{handlers}
""")


def inject(k, n, tag):
    with smtplib.SMTP("127.0.0.1", k.smtp_port, timeout=30) as s:
        for i in range(n):
            s.sendmail("sender@src.example", [f"rcpt{i}@example.com"],
                       f"Subject: {tag} {i}\r\n\r\nbody\r\n".encode())


def metric(k, name, queue):
    text = urllib.request.urlopen(f"http://127.0.0.1:{k.http_port}/metrics",
                                  timeout=10).read().decode()
    m = re.search(rf'{name}\{{queue="{re.escape(queue)}"\}} (\d+)', text)
    return int(m.group(1)) if m else 0


def delivered(peer):
    with peer.lock:
        return list(peer.messages)


def delayed_with(k, reason):
    return [r for r in k.records("Delayed") if reason in r["response"]["content"]]


def test_ready_queue_throttle_longer_than_idle_timeout(tmp_path, peer):
    pol = policy(peer, path_extra="max_message_rate = '2/6s', idle_timeout = '1s'")
    k = kh.Kumod(tmp_path / "k", policy=pol).start()
    t0 = time.monotonic()
    inject(k, 4, "R")
    wait_until(lambda: len(delivered(peer)) >= 2, timeout=10, what="the first 2")
    # the third waits 3 s > idle_timeout: the rest goes back to be scheduled
    recs = k.wait_records(lambda r: "MessageRateThrottle" in r["response"]["content"],
                          type="Delayed", count=2, timeout=10)
    for r in recs:
        assert r["response"]["code"] == 400
        assert re.search(r"Next due in \d+s", r["response"]["content"]), r["response"]
    wait_until(lambda: len(delivered(peer)) == 4, timeout=30, what="all 4")
    # 2 at once, then one every 3 s
    assert time.monotonic() - t0 >= 5.0
    at = sorted(m["at"] for m in delivered(peer))
    assert at[3] - at[1] >= 4.5, at
    # the connection closed instead of waiting: more than one was opened
    assert peer.connections >= 2, peer.connections
    assert not k.records("TransientFailure")
    k.stop()


def test_ready_queue_throttle_shorter_than_idle_timeout_waits(tmp_path, peer):
    pol = policy(peer, path_extra="max_message_rate = '4/s', idle_timeout = '5s', connection_limit = 1")
    k = kh.Kumod(tmp_path / "k", policy=pol).start()
    inject(k, 8, "W")
    wait_until(lambda: len(delivered(peer)) == 8, timeout=20, what="all 8")
    assert not delayed_with(k, "MessageRateThrottle")
    assert peer.connections == 1, peer.connections
    k.stop()


def test_scheduled_queue_rate_counts_and_logs(tmp_path, peer):
    pol = policy(peer, queue_extra="max_message_rate = '2/4s'")
    k = kh.Kumod(tmp_path / "k", policy=pol).start()
    inject(k, 4, "Q")
    wait_until(lambda: len(delivered(peer)) == 4, timeout=30, what="all 4")
    assert metric(k, "delayed_due_to_message_rate_throttle", "example.com") >= 2
    recs = delayed_with(k, "MessageRateThrottle")
    assert len(recs) >= 2, k.records("Delayed")
    assert all(r["queue"] == "example.com" for r in recs)
    k.stop()


def test_throttle_insert_ready_queue_logs_delayed(tmp_path, peer):
    pol = policy(peer, handlers="""
kumo.on('throttle_insert_ready_queue', function(msg)
  kumo.make_throttle('e2e-insert', '2/4s,max_burst=2'):delay_message_if_throttled(msg)
end)
""")
    k = kh.Kumod(tmp_path / "k", policy=pol).start()
    inject(k, 4, "I")
    wait_until(lambda: len(delivered(peer)) == 4, timeout=30, what="all 4")
    assert metric(k, "delayed_due_to_throttle_insert_ready", "example.com") >= 2
    recs = delayed_with(k, "ThrottledByThrottleInsertReadyQueue")
    assert len(recs) >= 2, k.records("Delayed")
    k.stop()
