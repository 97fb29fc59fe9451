"""overall_max_message_rate of the queue helper (KumoMTA's user guide,
configuration/queuemanagement.md): one limit for every scheduled queue of
a tenant (whatever the campaign or destination domain), and per campaign,
set in the helper's TOML only. Messages over the limit wait in their
scheduled queue (throttle_insert_ready_queue) and are counted."""
import re
import smtplib
import time
import urllib.request

import pytest

import kumod_harness as kh
from kumod_harness import wait_until
from smtpdeliv_peers import SmtpPeer

PEER_HOST = "127.0.0.1"

QUEUES = """
tenant_header = "X-Tenant"
remove_tenant_header = true
campaign_header = "X-Campaign"
default_tenant = "other"

[tenant.'mytenant']
max_age = '24 hours'
overall_max_message_rate = '3/6s'

[tenant.'camptenant']
[tenant.'camptenant'.campaigns.'slow']
overall_max_message_rate = '2/6s'

[tenant.'other']

[queue.default]
retry_interval = '1h'

[queue.default.protocol.smtp]
mx_list = ['[127.0.0.1]']
"""


@pytest.fixture
def peer():
    p = SmtpPeer(host=PEER_HOST)
    p.start()
    yield p
    p.stop()


def start(tmp_path, peer):
    d = tmp_path / "k"
    d.mkdir()
    (d / "queues.toml").write_text(QUEUES)
    pol = kh.default_policy(init="""
  kumo.start_http_listener { listen = '127.0.0.1:{http_port}' }
""", handlers=f"""
local queue_module = require 'policy-extras.queue'
local queue_helper = queue_module:setup {{ '{d}/queues.toml' }}
kumo.on('smtp_server_message_received', function(msg)
  queue_helper:apply(msg)
end)
kumo.on('get_egress_path_config', function(domain, source, site)
  return kumo.make_egress_path {{ smtp_port = {peer.port}, enable_tls = 'Disabled',
                                 prohibited_hosts = {{}} }}
end)
""")
    return kh.Kumod(d, policy=pol).start()


def inject(k, tenant, n, tag, campaign=None):
    with smtplib.SMTP("127.0.0.1", k.smtp_port, timeout=30) as s:
        for i in range(n):
            hdr = f"X-Tenant: {tenant}\r\n"
            if campaign:
                hdr += f"X-Campaign: {campaign}\r\n"
            # several destination domains: several scheduled queues
            s.sendmail("sender@src.example", [f"rcpt{i}@d{i % 3}.example"],
                       f"Subject: {tag} {i}\r\n{hdr}\r\nbody\r\n".encode())


def delivered(peer, tag):
    with peer.lock:
        return [m for m in peer.messages if f"Subject: {tag} ".encode() in m["data"]]


def metrics(k):
    return urllib.request.urlopen(f"http://127.0.0.1:{k.http_port}/metrics",
                                  timeout=10).read().decode()


def test_tenant_overall_rate_across_queues(tmp_path, peer):
    k = start(tmp_path, peer)
    t0 = time.monotonic()
    inject(k, "mytenant", 6, "T")
    inject(k, "other", 4, "O")  # no overall limit: all at once
    wait_until(lambda: len(delivered(peer, "O")) == 4, timeout=10, what="the other tenant")
    wait_until(lambda: len(delivered(peer, "T")) >= 3, timeout=10, what="the burst of 3")
    time.sleep(0.5)
    assert len(delivered(peer, "T")) == 3  # 3 for the tenant, not 3 per domain
    wait_until(lambda: len(delivered(peer, "T")) == 6, timeout=30, what="the other 3")
    # one every 2 s after the burst
    assert time.monotonic() - t0 >= 4.0
    at = sorted(m["at"] for m in delivered(peer, "T"))
    assert at[5] - at[2] >= 3.5, at
    text = metrics(k)
    n = sum(int(v) for v in re.findall(
        r'delayed_due_to_throttle_insert_ready\{queue="mytenant@d\d\.example"\} (\d+)', text))
    assert n >= 3, text[-2000:]
    assert not re.search(r'delayed_due_to_throttle_insert_ready\{queue="other@', text)
    # the tenant header was removed (remove_tenant_header)
    assert all(b"X-Tenant" not in m["data"] for m in delivered(peer, "T"))
    k.stop()


def test_campaign_overall_rate(tmp_path, peer):
    k = start(tmp_path, peer)
    inject(k, "camptenant", 4, "C", campaign="slow")
    inject(k, "camptenant", 3, "F", campaign="fast")
    wait_until(lambda: len(delivered(peer, "F")) == 3, timeout=10, what="the unlimited campaign")
    wait_until(lambda: len(delivered(peer, "C")) >= 2, timeout=10, what="the burst of 2")
    time.sleep(0.5)
    assert len(delivered(peer, "C")) == 2
    wait_until(lambda: len(delivered(peer, "C")) == 4, timeout=30, what="the other 2")
    k.stop()
