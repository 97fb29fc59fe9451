"""source_selection_rate and additional_source_selection_rates of
make_egress_path (docs/reference/kumo/make_egress_path/
source_selection_rate.md, additional_source_selection_rates.md): a pool of
two sources, 'new' bound to 127.0.0.2 and 'established' bound to
127.0.0.1; the sink tells them apart by the peer address. The rate-limited
source is picked only as often as its selection rates allow and the
overflow goes to the other source; with no other source, the message gets
KumoMTA's "no sources ... are eligible" TransientFailure and is retried.
The same rates are shared by two nodes through a real redis-server."""
import os
import time

import pytest

import kumod_harness as kh
from kumod_harness import wait_until
from smtpdeliv_peers import SmtpPeer
from test_redis_throttles import REDIS, RedisServer

PEER_HOST = "127.0.0.1"


@pytest.fixture
def peer():
    p = SmtpPeer(host=PEER_HOST)
    p.start()
    yield p
    p.stop()


def policy(peer, new_path="", pool=("new", "established"), init=""):
    sources = {"new": "127.0.0.2", "established": "127.0.0.1"}
    entries = ", ".join(f"{{ name = '{s}', weight = 1 }}" for s in pool)
    return kh.default_policy(init=init, handlers=f"""
local SOURCES = {{ new = '{sources['new']}', established = '{sources['established']}' }}
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    protocol = {{ smtp = {{ mx_list = {{ '[{PEER_HOST}]' }} }} }},
    egress_pool = 'mypool',
    retry_interval = '1h',
  }}
end)
kumo.on('get_egress_pool', function(name)
  return kumo.make_egress_pool {{ name = name, entries = {{ {entries} }} }}
end)
kumo.on('get_egress_source', function(name)
  return kumo.make_egress_source {{ name = name, source_address = SOURCES[name] }}
end)
kumo.on('get_egress_path_config', function(domain, source_name, site_name)
  if source_name == 'new' then
    return kumo.make_egress_path {{ smtp_port = {peer.port}, enable_tls = 'Disabled',
                                   prohibited_hosts = {{}}, {new_path} }}
  end
  return kumo.make_egress_path {{ smtp_port = {peer.port}, enable_tls = 'Disabled',
                                 prohibited_hosts = {{}} }}
end)
""")


def inject(k, n, tag):
    import smtplib
    with smtplib.SMTP("127.0.0.1", k.smtp_port, timeout=30) as s:
        for i in range(n):
            s.sendmail("sender@src.example", [f"rcpt{i}@example.com"],
                       f"Subject: {tag} {i}\r\n\r\nbody\r\n".encode())


def by_source(peer):
    with peer.lock:
        msgs = list(peer.messages)
    out = {"127.0.0.1": 0, "127.0.0.2": 0}
    for m in msgs:
        out[m["peer"][0]] = out.get(m["peer"][0], 0) + 1
    return out


def test_selection_rate_overflow_goes_to_the_other_source(tmp_path, peer):
    # the page's example, scaled down: 3 a day, no clumping beyond the burst
    pol = policy(peer, "source_selection_rate = '3/day,max_burst=3'")
    k = kh.Kumod(tmp_path / "k", policy=pol).start()
    inject(k, 20, "S")
    wait_until(lambda: sum(by_source(peer).values()) == 20, timeout=30, what="all 20 delivered")
    counts = by_source(peer)
    assert counts["127.0.0.2"] == 3, counts  # 'new': exactly its rate
    assert counts["127.0.0.1"] == 17, counts  # the overflow: 'established'
    recs = k.records("Delivery")
    assert sorted(r["egress_source"] for r in recs).count("new") == 3
    # nothing was refused: the overflow had somewhere to go
    assert not [r for r in k.records("TransientFailure")]
    k.stop()


def test_additional_rates_smallest_first(tmp_path, peer):
    # the page's per-source overall limit, beside a larger per-site rate
    pol = policy(peer, "source_selection_rate = '5/day,max_burst=5', "
                       "additional_source_selection_rates = "
                       "{ [string.format('overall-source-limit-%s', source_name)] = "
                       "'2/day,max_burst=2' }")
    k = kh.Kumod(tmp_path / "k", policy=pol).start()
    inject(k, 12, "A")
    wait_until(lambda: sum(by_source(peer).values()) == 12, timeout=30, what="all 12 delivered")
    assert by_source(peer)["127.0.0.2"] == 2, by_source(peer)
    k.stop()


def test_no_eligible_source_is_a_transient_failure(tmp_path, peer):
    pol = policy(peer, "source_selection_rate = '2/day,max_burst=2'", pool=("new",))
    k = kh.Kumod(tmp_path / "k", policy=pol).start()
    inject(k, 5, "N")
    wait_until(lambda: sum(by_source(peer).values()) == 2, timeout=30, what="the first 2")
    recs = k.wait_records(type="TransientFailure", count=3, timeout=20)
    for r in recs:
        assert r["response"]["code"] == 451
        assert ("no sources for example.com pool=`mypool` are eligible for selection at this "
                "time") in r["response"]["content"], r["response"]
        assert r["egress_pool"] == "mypool"
    time.sleep(1)
    assert by_source(peer) == {"127.0.0.1": 0, "127.0.0.2": 2}
    k.stop()


@pytest.mark.skipif(not os.path.exists(REDIS), reason="redis-server not installed")
def test_selection_rate_shared_by_two_nodes(tmp_path, peer):
    r = RedisServer(tmp_path / "redis").start()
    try:
        init = f"kumo.configure_redis_throttles {{ node = 'redis://127.0.0.1:{r.port}/' }}"
        pol = policy(peer, "source_selection_rate = '4/day,max_burst=4'", init=init)
        a = kh.Kumod(tmp_path / "a", policy=pol).start()
        b = kh.Kumod(tmp_path / "b", policy=pol).start()
        for t in kh.run_threads([lambda: inject(a, 10, "A"), lambda: inject(b, 10, "B")]):
            t.join()
        wait_until(lambda: sum(by_source(peer).values()) == 20, timeout=40,
                   what="all 20 delivered")
        counts = by_source(peer)
        # 4 for the pair, not 4 each
        assert counts["127.0.0.2"] == 4, counts
        keys = r.cmd("--scan", "--pattern", "kumod:throttle:kumomta.source_selection_rate.*") or ""
        assert "kumod:throttle:kumomta.source_selection_rate.new->" in keys, keys
        a.stop()
        b.stop()
    finally:
        r.stop()
