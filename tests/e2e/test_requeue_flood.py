"""A restart with more held messages than the ready queue takes: every
enumerated message comes due at once and most of them go back to their
scheduled queue without an attempt (ReadyQueueWasFull). Those requeues
load each message's meta, at most 1,024 at a time (requeue.c, issue 24:
unbounded, a million of them held hundreds of MB); the rest wait their
turn. None may be lost and each gets its Delayed record."""
import json
import re
import urllib.request

import kumod_harness as kh

N = 1500  # more than the 1,024 loads allowed at once

POLICY = kh.default_policy(init="kumo.start_http_listener { listen = '127.0.0.1:{http_port}' }",
                           handlers=r"""
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {
    protocol = { custom_lua = { constructor = 'flood_hold' } },
    retry_interval = '6 hours',
  }
end)
kumo.on('get_egress_path_config', function(domain, source, site)
  -- 1 once the test has made the file (for the restart), else room for all
  local small = io.open('{dir}/small-ready')
  if small then small:close() end
  return kumo.make_egress_path { max_ready = small and 1 or 5000, connection_limit = 1 }
end)
kumo.on('flood_hold', function(domain, tenant, campaign)
  local conn = {}
  function conn:send(msg)
    kumo.reject(400, '4.4.1 held by the test')
  end
  function conn:close() end
  return conn
end)
""")


def metric(k, name):
    with urllib.request.urlopen(f"http://127.0.0.1:{k.http_port}/metrics", timeout=10) as r:
        text = r.read().decode()
    return sum(float(m.group(1)) for m in
               re.finditer(r"^%s(?:\{[^}]*\})? ([0-9.eE+-]+)$" % name, text, re.M))


def test_restart_flood_of_ready_queue_overflows_loses_nothing(tmp_path):
    k = kh.Kumod(tmp_path / "k", policy=POLICY)
    k.start()
    try:
        body = {"envelope_sender": "flood@example.com",
                "content": "Subject: flood\r\nX-Tenant: t1\r\n\r\nflood\r\n",
                "recipients": [{"email": f"u{i}@flood.hold.test"} for i in range(N)]}
        req = urllib.request.Request(f"http://127.0.0.1:{k.http_port}/api/inject/v1",
                                     data=json.dumps(body).encode(), method="POST",
                                     headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(req, timeout=60 * kh.SLOW) as r:
            assert json.loads(r.read())["success_count"] == N
        k.wait_records(type="TransientFailure", count=N, timeout=120 * kh.SLOW)
        k.stop()
        open(k.path("small-ready"), "w").close()
        k.start()
        k.wait_diag(r"spool enumeration done: %d messages" % N, timeout=60 * kh.SLOW)
        # with max_ready 1 nearly all of them overflow the ready queue at once
        full = k.wait_records(lambda r: "ReadyQueueWasFull" in r["response"]["content"],
                              type="Delayed", count=N - 50, timeout=120 * kh.SLOW)
        ids = {r["id"] for r in full}
        assert len(ids) >= N - 50
        # every one is back in its scheduled queue (or on its way through the
        # one-message ready queue): nothing lost, nothing left loaded
        kh.wait_until(lambda: metric(k, "scheduled_count_total") + metric(k, "ready_count")
                      >= N - 1, timeout=60 * kh.SLOW, what="all messages requeued")
        kh.wait_until(lambda: metric(k, "message_count") < 100, timeout=60 * kh.SLOW,
                      what="requeued messages unloaded")
    finally:
        k.close()
