"""Issue 15, kcli as KumoMTA users know it: provider-summary,
resolve-egress-path, abort-ready-q-conn, spool-compact; the columns of
inspect-sched-q, queue-summary and inspect-message show real values; every
admin action leaves one `kumod::audit` line naming who asked and what it
matched. The real kcli binary against a real kumod delivering to an
aiosmtpd peer."""
import json
import os
import re
import smtplib
import subprocess

import pytest

import kumod_harness as kh
from kumod_harness import parse_ids, wait_until
from smtpdeliv_peers import SmtpPeer

PEER_HOST = "127.0.0.70"
TF_DOMAIN = "tf.example"      # every RCPT gets a 451: transient failures
OK_DOMAIN = "ok.example"


@pytest.fixture(scope="module")
def peer():
    p = SmtpPeer(host=PEER_HOST)
    p.rcpt_reply = lambda addr: ("451 4.3.0 try again later (e2e)"
                                 if addr.endswith("@" + TF_DOMAIN) else None)
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
                                 prohibited_hosts = {{}}, connection_limit = 3 }}
end)
"""


INIT = "kumo.start_http_listener { listen = '127.0.0.1:{http_port}' }"


def kcli_bin():
    return os.environ.get("KCLI_BIN") or os.path.join(os.path.dirname(kh.kumod_bin()), "kcli")


def kcli(k, *args, check=True):
    cmd = [kcli_bin(), "--endpoint", f"http://127.0.0.1:{k.http_port}"] + list(args)
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=60 * kh.SLOW)
    if check:
        assert p.returncode == 0, (args, p.returncode, p.stdout, p.stderr)
    return p


def inject(k, rcpt, subject="kcli e2e", sender="sender@src.example"):
    with smtplib.SMTP("127.0.0.1", k.smtp_port, timeout=10) as s:
        s.ehlo("kcli.e2e.test")
        s.mail(sender)
        s.rcpt(rcpt)
        code, text = s.data(f"Subject: {subject}\r\n\r\nbody\r\n".encode())
    assert code == 250, text
    return parse_ids(text.decode())[0]


@pytest.fixture
def k(kumod_factory, peer):
    return kumod_factory(handlers=policy_for(peer), init=INIT)


def test_inspect_sched_q_shows_sender_and_recipient(k):
    ids = [inject(k, f"u{i}@{TF_DOMAIN}", sender=f"s{i}@src.example") for i in range(2)]
    k.wait_records(lambda r: r["id"] in ids, type="TransientFailure", count=2, timeout=20)
    p = kcli(k, "inspect-sched-q", TF_DOMAIN)
    print(p.stdout)
    for i, id in enumerate(ids):
        [row] = [l for l in p.stdout.splitlines() if l.startswith(id)]
        assert f"s{i}@src.example" in row and f"u{i}@{TF_DOMAIN}" in row, p.stdout



def readyq_name():
    return f"unspecified->mx_list:[{PEER_HOST}]@smtp_client"


def test_queue_summary_and_provider_summary_count_outcomes(k):
    ok = [inject(k, f"v{i}@{OK_DOMAIN}") for i in range(3)]
    tf = [inject(k, f"u{i}@{TF_DOMAIN}") for i in range(2)]
    k.wait_records(lambda r: r["id"] in ok, type="Delivery", count=3, timeout=20)
    k.wait_records(lambda r: r["id"] in tf, type="TransientFailure", count=2, timeout=20)
    p = kcli(k, "queue-summary")
    [row] = [l.split() for l in p.stdout.splitlines() if l.startswith(f"mx_list:[{PEER_HOST}]")]
    # SITE SOURCE PROTO D T C Q
    assert row[3] == "3" and row[4] == "2", p.stdout
    js = json.loads(kcli(k, "queue-summary", "--json").stdout)
    [r] = [r for r in js["ready"] if r["name"] == readyq_name()]
    assert (r["delivered"], r["transfail"]) == (3, 2), js
    p = kcli(k, "provider-summary")
    lines = p.stdout.splitlines()
    assert lines[0].split() == ["PROVIDER", "D", "T", "F", "C", "Q"], p.stdout
    [row] = [l.split() for l in lines[1:] if l.startswith(f"mx_list:[{PEER_HOST}]")]
    # the two held messages wait in tf.example's scheduled queue (same site)
    assert row[1:4] == ["3", "2", "0"] and row[5] == "2", p.stdout
    js = json.loads(kcli(k, "provider-summary", "--by-pool", "--show-domains", "--json").stdout)
    [r] = [r for r in js if r["provider"] == f"mx_list:[{PEER_HOST}]"]
    assert r["pool"] == "unspecified" and r["delivered"] == 3 and r["queued"] == 2, js
    assert TF_DOMAIN in r["domains"], js


def test_inspect_message_shows_the_next_due_time(k):
    id = inject(k, f"w@{TF_DOMAIN}")
    k.wait_records(lambda r: r["id"] == id, type="TransientFailure", timeout=20)
    p = kcli(k, "inspect-message", id)
    fields = dict(l.split(":", 1) for l in p.stdout.splitlines() if ":" in l and l[0] != " ")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", fields["due"].strip()), p.stdout
    js = json.loads(kcli(k, "inspect-message", "--json", id).stdout)
    assert js["message"]["num_attempts"] == 1, js


def audit_lines(k, action):
    return [l for l in k.diag().splitlines()
            if "kumod::audit" in l and f"action={action} " in l]


def wait_audit(k, action):
    return wait_until(lambda: audit_lines(k, action), 10, what=f"audit line for {action}")


def test_every_admin_action_is_audited(k):
    held = [inject(k, f"a{i}@{TF_DOMAIN}") for i in range(2)]
    k.wait_records(lambda r: r["id"] in held, type="TransientFailure", count=2, timeout=20)
    sid = json.loads(kcli(k, "suspend", "--domain", "s.example", "--reason", "pause",
                          "--json").stdout)["id"]
    kcli(k, "suspend-cancel", "--id", sid)
    rid = json.loads(kcli(k, "suspend-ready-q", "--name", readyq_name(), "--reason", "rq pause",
                          "--json").stdout)["id"]
    kcli(k, "suspend-ready-q-cancel", "--id", rid)
    kcli(k, "rebind", "--domain", TF_DOMAIN, "--reason", "move", "--set", "queue=hold.example")
    kcli(k, "bounce", "--domain", "hold.example", "--reason", "purge")
    kcli(k, "set-log-filter", "kumod=info")
    p = kcli(k, "bounce-cancel", "--id", "00000000-0000-0000-0000-000000000000", check=False)
    assert p.returncode == 1
    kcli(k, "spool-compact", "--name", "meta")
    kcli(k, "abort-ready-q-conn", readyq_name(), "00000000-0000-0000-0000-000000000001",
         check=False)
    peer_re = r"peer=127\.0\.0\.1 user=- "
    [l] = wait_audit(k, "suspend")
    assert re.search(peer_re + r"status=200 request=.*\"domain\":\"s\.example\".* id=" + sid, l), l
    [l] = wait_audit(k, "suspend-cancel")
    assert re.search(peer_re + "status=200 id=" + sid, l), l
    [l] = wait_audit(k, "suspend-ready-q")
    assert readyq_name() in l and "id=" + rid in l and re.search(peer_re, l), l
    [l] = wait_audit(k, "suspend-ready-q-cancel")
    assert "id=" + rid in l, l
    [l] = wait_audit(k, "rebind")
    assert re.search(peer_re + r"status=200 .*\"domain\":\"tf\.example\".* rebound=2$", l), l
    [l] = wait_audit(k, "bounce")
    assert re.search(peer_re + r"status=200 .*\"reason\":\"purge\".* bounced=2$", l), l
    [l] = wait_audit(k, "set-log-filter")
    assert re.search(peer_re + r'status=200 filter="kumod=info"', l), l
    [l] = wait_audit(k, "bounce-cancel")
    assert re.search(peer_re + r"status=404 id=00000000-0000-0000-0000-000000000000", l), l
    [l] = wait_audit(k, "spool-compact")
    assert re.search(peer_re + r'status=200 name="meta" took=', l), l
    [l] = wait_audit(k, "abort-ready-q-conn")
    assert re.search(peer_re + r"status=404 queue_name=", l), l
    # the rebind's response keeps KumoMTA's shape
    assert "kumod_rebound" not in kcli(k, "rebind", "--domain", "x.example", "--reason", "r",
                                       "--json").stdout


def test_spool_compact(k):
    for i in range(5):
        inject(k, f"c{i}@{TF_DOMAIN}")
    p = kcli(k, "spool-compact", "--name", "meta")
    assert re.fullmatch(r"spool meta compacted in \d+\.\d{3}s\n", p.stdout), p.stdout
    k.wait_diag(r"spool meta compacted in \S+: ok")
    js = json.loads(kcli(k, "spool-compact", "--name", "data", "--json").stdout)
    assert js["name"] == "data" and js["compacted"] is True, js  # LocalDisk: nothing to do
    p = kcli(k, "spool-compact", "--name", "nope", check=False)
    assert p.returncode == 1 and "404" in p.stderr and "no spool named nope" in p.stderr, p.stderr
    # the spool still serves after the compaction
    id = inject(k, f"after@{OK_DOMAIN}")
    k.wait_records(lambda r: r["id"] == id, type="Delivery", timeout=20)


def test_abort_ready_q_conn(k, peer):
    peer.hang_dots = 1
    try:
        id = inject(k, f"hang@{OK_DOMAIN}")

        def session():
            js = json.loads(kcli(k, "inspect-ready-q", "--json", readyq_name()).stdout)
            busy = [d for d in js["dispatchers"] if d["phase"] != "Idle"]
            return busy[0]["session_id"] if busy and peer.hung else None
        sid = wait_until(session, 20, what="a dispatcher stuck on the final dot")
        p = kcli(k, "abort-ready-q-conn", readyq_name(), sid)
        assert p.stdout == f"aborted session {sid} of {readyq_name()}\n"
        [d] = k.wait_records(lambda r: r["id"] == id, type="Delayed", timeout=20)
        assert f"administrator aborted task; phase=" in d["response"]["content"], d
        assert f"session={sid}" in d["response"]["content"], d
        l = wait_audit(k, "abort-ready-q-conn")[0]
        assert f"status=200 queue_name=\"{readyq_name()}\" session_id={sid}" in l, l
        js = json.loads(kcli(k, "inspect-ready-q", "--json", readyq_name()).stdout)
        assert all(x["session_id"] != sid for x in js["dispatchers"]), js
        p = kcli(k, "abort-ready-q-conn", readyq_name(), sid, check=False)
        assert p.returncode == 1 and "404" in p.stderr, p.stderr
        p = kcli(k, "abort-ready-q-conn", "no->such@smtp_client", sid, check=False)
        assert p.returncode == 1 and "no such ready queue" in p.stderr, p.stderr
    finally:
        peer.hang_dots = 0


@pytest.mark.parametrize("args, message", [
    (["suspend", "--domain"], "option --domain needs a value"),
    (["suspend", "--reason", "x", "--bogus"], "unexpected argument --bogus"),
    (["suspend", "--reason", "x", "extra"], "unexpected argument extra"),
    (["trace-smtp-server", "--source"], "option --source needs a value"),
    (["trace-smtp-server", "--bogus"], "unexpected argument --bogus"),
    (["trace-smtp-client", "left-over"], "unexpected argument left-over"),
])
def test_usage_errors_name_the_argument(k, args, message):
    """Every subcommand ends its option parsing the same way: a usage error
    on stderr naming the argument, a pointer at its --help, exit status 2."""
    p = kcli(k, *args, check=False)
    assert p.returncode == 2, (p.returncode, p.stderr)
    assert p.stderr == f"kcli: {message}\nRun 'kcli {args[0]} --help' for usage.\n", p.stderr
