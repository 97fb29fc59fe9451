"""Issue 21, behaving as KumoMTA does: what a KumoMTA user sees in the log
records and the policy events, checked against KumoMTA's documented (and, for
record shapes, coded) behaviour."""
import json
import urllib.request

import pytest

import kumod_harness as kh
from kumod_harness import parse_ids
from smtpdeliv_peers import SmtpPeer

PEER_HOST = "127.0.0.70"


@pytest.fixture(scope="module")
def peer():
    p = SmtpPeer(host=PEER_HOST)
    p.start()
    yield p
    p.stop()


def policy_for(peer):
    return f"""
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  return kumo.make_queue_config {{
    protocol = {{ smtp = {{ mx_list = {{ '[{PEER_HOST}]' }} }} }},
    retry_interval = '1h',
  }}
end)
kumo.on('get_egress_path_config', function(domain, source, site)
  return kumo.make_egress_path {{ smtp_port = {peer.port}, enable_tls = 'Disabled',
                                 prohibited_hosts = {{}} }}
end)
"""


INIT = "kumo.start_http_listener { listen = '127.0.0.1:{http_port}' }"


def api(k, method, path, body=None):
    req = urllib.request.Request(f"http://127.0.0.1:{k.http_port}{path}", method=method,
                                 data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as r:
        body = r.read()
    try:
        return json.loads(body or b"null")
    except ValueError:
        return body.decode()


def inject(k, rcpt, subject):
    import smtplib
    with smtplib.SMTP("127.0.0.1", k.smtp_port, timeout=10) as s:
        s.ehlo("behaviour.e2e.test")
        s.mail("sender@src.example")
        s.rcpt(rcpt)
        code, text = s.data(f"Subject: {subject}\r\n\r\nbody\r\n".encode())
    assert code == 250, text
    return parse_ids(text.decode())[0]


def test_suspended_ready_queue_logs_transient_failure(kumod_factory, peer):
    """KumoMTA drains a suspended ready queue back into its scheduled queue,
    where no source is eligible: a TransientFailure (451 4.4.4 "KumoMTA
    internal: no sources for <queue> pool=`<pool>` are eligible for selection
    at this time"), not a Delayed record."""
    k = kumod_factory(handlers=policy_for(peer), init=INIT)
    first = inject(k, "a@suspend.example", "first")
    [d] = k.wait_records(lambda r: r["id"] == first and r["type"] == "Delivery", timeout=20)
    site = d["site"]
    api(k, "POST", "/api/admin/suspend-ready-q/v1",
        {"name": site, "reason": "testing", "duration": "10m"})
    second = inject(k, "b@suspend.example", "second")
    [tf] = k.wait_records(lambda r: r["id"] == second and r["type"] == "TransientFailure",
                          timeout=20)
    assert tf["response"]["code"] == 451, tf
    assert tf["response"]["enhanced_code"] == {"class": 4, "subject": 4, "detail": 4}, tf
    assert tf["response"]["content"] == (
        "KumoMTA internal: no sources for suspend.example pool=`unspecified` are eligible "
        "for selection at this time"), tf
    assert tf["egress_pool"] == "unspecified", tf
    assert tf["site"] == "", tf
    assert not [r for r in k.records() if r["id"] == second and r["type"] == "Delayed"]


# ---- kumo.disconnect (docs/reference/kumo/disconnect.md) --------------------------

DISCONNECT = """
kumo.on('smtp_server_mail_from', function(sender)
  local u = sender.user
  if u == 'go421' then kumo.disconnect(421, 'mta.example.com go away!') end
  if u == 'force451' then kumo.disconnect(451, 'no thank you') end
  if u == 'follow' then kumo.disconnect(451, 'no thank you', 'FollowWith421') end
  if u == 'if421' then kumo.disconnect(451, '4.7.1 not now', 'If421') end
  if u == 'if421b' then kumo.disconnect(421, '4.7.1 bye', 'If421') end
  if u == 'bad' then kumo.disconnect(451, 'x', 'Sometimes') end
end)
"""


@pytest.fixture(scope="module")
def kd(module_kumod_factory):
    return module_kumod_factory(handlers=DISCONNECT, name="disconnect")


def mail_from(k, user):
    s = k.raw()
    assert s.cmd("EHLO disconnect.e2e.test")[0] == 250
    return s, s.cmd(f"MAIL FROM:<{user}@src.example>")


@pytest.mark.parametrize("user,reply,closes", [
    ("go421", (421, "mta.example.com go away!"), True),
    ("force451", (451, "no thank you"), True),
    ("if421", (451, "4.7.1 not now"), False),
    ("if421b", (421, "4.7.1 bye"), True),
])
def test_disconnect_reply_and_session(kd, user, reply, closes):
    s, got = mail_from(kd, user)
    assert got == reply
    if closes:
        assert s.at_eof()
    else:
        assert s.cmd("MAIL FROM:<fine@src.example>")[0] == 250
    s.close()


def test_disconnect_follow_with_421(kd):
    s, got = mail_from(kd, "follow")
    assert got == (451, "no thank you")
    assert s.reply() == (421, f"{kh.HOSTNAME} disconnecting due to previous error")
    assert s.at_eof()


def test_disconnect_bad_mode_is_a_policy_error(kd):
    s, got = mail_from(kd, "bad")
    assert got[0] == 421 and "technical difficulties" in got[1], got
    kd.wait_diag(r"bad argument #3 to 'disconnect' \(invalid option 'Sometimes'\)")


# ---- rebind_message can read and change the message's data ------------------------

def test_rebind_message_event_edits_the_body(kumod_factory, peer):
    # hold.example goes to an address where nothing listens (a transient
    # failure, then a 1h retry); the rebind moves it to the peer
    handlers = f"""
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  local host = '{PEER_HOST}'
  if domain == 'hold.example' then host = '127.0.0.71' end
  return kumo.make_queue_config {{
    protocol = {{ smtp = {{ mx_list = {{ '[' .. host .. ']' }} }} }},
    retry_interval = '1h',
  }}
end)
kumo.on('get_egress_path_config', function(domain, source, site)
  return kumo.make_egress_path {{ smtp_port = {peer.port}, enable_tls = 'Disabled',
                                 prohibited_hosts = {{}} }}
end)
kumo.on('rebind_message', function(msg, data)
  assert(msg:get_first_named_header_value('Subject') == 'rebind me')
  msg:append_header('X-Rebound', data.why)
  msg:set_meta('queue', 'moved.example')
end)
"""
    k = kumod_factory(handlers=handlers, init=INIT)
    id = inject(k, "u@hold.example", "rebind me")
    k.wait_records(lambda r: r["id"] == id and r["type"] == "TransientFailure", timeout=20)
    api(k, "POST", "/api/admin/rebind/v1",
        {"reason": "moving", "domain": "hold.example", "trigger_rebind_event": True,
         "data": {"why": "testing rebind"}})
    [d] = k.wait_records(lambda r: r["id"] == id and r["type"] == "Delivery", timeout=20)
    assert d["queue"] == "moved.example", d
    got = [m["data"] for m in peer.messages if b"rebind me" in m["data"]]
    assert len(got) == 1 and b"X-Rebound: testing rebind\r\n" in got[0], got


# ---- a spool volume smaller than the journal ------------------------------------------

@pytest.mark.skipif(__import__("os").getuid() != 0, reason="mounting a tmpfs needs root")
def test_small_spool_volume_starts_without_the_journal_and_delivers(kumod_factory, peer, tmp_path):
    """An 8 MiB spool volume cannot hold the 16 MiB journal ring: kumod
    starts without it, says so in one line naming the real cause (no space),
    takes mail and delivers it."""
    import health_faults as hf
    m = hf.mount_tmpfs(str(tmp_path / "small"), size="8m")
    try:
        k = kumod_factory(handlers=policy_for(peer), init=INIT, data_kind="RocksDB",
                          meta_kind="RocksDB", start=False)
        k.spool = str(tmp_path / "small" / "spool")
        policy = open(k.policy_path).read().replace(str(tmp_path / "kumod0" / "spool"), k.spool)
        with open(k.policy_path, "w") as f:
            f.write(policy)
        assert k.spool in policy
        k.start()
        line = k.wait_diag(r"spool journal (\S+) \(16384 KiB\) not created: (.*); running "
                           r"without the journal")
        assert "no space left on device" in line.group(2).lower(), line.group(0)
        assert not (tmp_path / "small" / "spool" / "data" / "kumod-journal.new").exists()
        before = len(peer.messages)
        id = inject(k, "a@small.example", "small volume")
        k.wait_records(lambda r: r["id"] == id and r["type"] == "Delivery", timeout=20)
        assert len(peer.messages) == before + 1
        k.stop()
    finally:
        m.umount()


# ---- suspend-cancel releases what the suspension held (issue 15) ----------------------

def test_suspend_cancel_makes_the_held_messages_due_now(kumod_factory, peer):
    k = kumod_factory(handlers=policy_for(peer), init=INIT)
    entry = api(k, "POST", "/api/admin/suspend/v1",
                {"domain": "held.example", "reason": "maintenance", "duration": "1h"})
    held = inject(k, "u@held.example", "held")
    [tf] = k.wait_records(lambda r: r["id"] == held and r["type"] == "TransientFailure",
                          timeout=20)
    assert tf["response"]["content"] == ("KumoMTA internal: scheduled queue is suspended: "
                                         "maintenance"), tf
    # the retry interval is an hour: only the cancel can bring it out now
    api(k, "DELETE", "/api/admin/suspend/v1", {"id": entry["id"]})
    k.wait_records(lambda r: r["id"] == held and r["type"] == "Delivery", timeout=20)
