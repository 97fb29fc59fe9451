"""Maildir as KumoMTA delivers it (docs/reference/kumo/make_queue_config/
protocol.md "Advanced Maildir Path"; KumoMTA's queue/queue.rs Maildir arm
for the facts): the path template is rendered for each recipient with meta,
queue, campaign, tenant, domain, routing_domain, local_part, domain_part,
email and the sender's parts; each recipient gets its own file; one
Delivery record lists the recipients written ("rcpt: wrote to maildir with
id=...", joined by ", "), one TransientFailure record those that failed,
and only those are retried. The scheduled queue writes the maildir itself:
no ready queue, so the records have no site, pool, source or peer.

An address part that would make an unsafe path component ('/' in a local
part) fails that recipient instead of writing outside the maildir root."""
import os
import re

import pytest

from kumod_harness import default_policy, parse_ids, wait_until
from records import UUID_RX

SENDER = "sender@src.example"

HANDLERS = """
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  if domain == 'maildir.example.com' then
    -- the page's example, rooted in the instance directory
    return kumo.make_queue_config {
      retry_interval = '1h',
      protocol = {
        maildir_path = '{dir}/maildirs/{{ domain_part }}/{{ local_part }}',
        dir_mode = tonumber('775', 8),
        file_mode = tonumber('664', 8),
      },
    }
  end
  if domain == 'vars.example.com' then
    return kumo.make_queue_config {
      protocol = {
        maildir_path = '{dir}/vars/{{meta.tag}}/{{ tenant }}/{{ campaign }}/{{ domain }}/'
          .. '{{ sender_local_part }}-at-{{ sender_domain_part }}/{{ email }}',
      },
    }
  end
end)
kumo.on('smtp_server_message_received', function(msg)
  local to = tostring(msg:recipient())
  if to:find '^multi@' then
    msg:set_recipient { 'ann@maildir.example.com', 'bob@maildir.example.com' }
  elseif to:find '^partial@' then
    msg:set_recipient { 'cat@maildir.example.com', 'blocked@maildir.example.com' }
  end
  if to:find '@vars%.example%.com$' then
    msg:set_meta('tag', 'T1')
    msg:set_meta('tenant', 'acme')
    msg:set_meta('campaign', 'spring')
  end
end)
"""


@pytest.fixture(scope="module")
def k(module_kumod_factory):
    k = module_kumod_factory(policy=default_policy(handlers=HANDLERS), name="mdpaths",
                             start=False)
    # a regular file where blocked's maildir should be: that one recipient fails
    os.makedirs(k.path("maildirs", "maildir.example.com"), exist_ok=True)
    with open(k.path("maildirs", "maildir.example.com", "blocked"), "w") as f:
        f.write("not a directory\n")
    k.start()
    return k


def send(k, rcpt, subject="maildir"):
    original = (f"From: <{SENDER}>\r\nTo: <{rcpt}>\r\nSubject: {subject}\r\n\r\n"
                "Hello maildir.\r\n").encode()
    s = k.smtp(ehlo="maildir.e2e.test")
    try:
        assert s.mail(SENDER)[0] == 250
        assert s.rcpt(rcpt)[0] == 250
        code, text = s.data(original)
        assert code == 250, (code, text)
        [id] = parse_ids(text.decode())
    finally:
        s.quit()
    return id


def files(path):
    new = os.path.join(path, "new")
    return sorted(os.listdir(new)) if os.path.isdir(new) else []


def check_direct(rec, queue):
    # KumoMTA's scheduled queue logs maildir outcomes without a ready queue
    assert rec["queue"] == queue, rec
    assert rec["site"] == "", rec
    assert rec["egress_pool"] is None and rec["egress_source"] is None, rec
    assert rec["peer_address"] is None, rec
    assert rec["delivery_protocol"] == "Maildir", rec
    assert UUID_RX.fullmatch(rec["session_id"]), rec


def test_the_pages_per_user_example(k):
    id = send(k, "alice@maildir.example.com")
    [d] = k.wait_records(lambda r: r["id"] == id, type="Delivery")
    box = k.path("maildirs", "maildir.example.com", "alice")
    [name] = files(box)
    check_direct(d, "maildir.example.com")
    assert d["response"]["content"] == f"alice@maildir.example.com: wrote to maildir with id={name}"
    for sub in ("cur", "new", "tmp"):
        assert os.path.isdir(os.path.join(box, sub))


def test_a_message_with_two_recipients_gets_a_file_each_and_one_record(k):
    id = send(k, "multi@maildir.example.com")
    [d] = k.wait_records(lambda r: r["id"] == id, type="Delivery")
    [ann] = files(k.path("maildirs", "maildir.example.com", "ann"))
    [bob] = files(k.path("maildirs", "maildir.example.com", "bob"))
    check_direct(d, "maildir.example.com")
    assert d["response"]["content"] == (
        f"ann@maildir.example.com: wrote to maildir with id={ann}, "
        f"bob@maildir.example.com: wrote to maildir with id={bob}")
    assert d["response"]["code"] == 200
    assert not [r for r in k.records() if r["id"] == id and r["type"] == "TransientFailure"]


def test_one_failed_recipient_of_two(k):
    """cat's maildir is written, blocked's cannot be created: a Delivery
    record for the one, a TransientFailure for the other, the message stays
    spooled (for blocked only)."""
    id = send(k, "partial@maildir.example.com")
    [d] = k.wait_records(lambda r: r["id"] == id, type="Delivery")
    [tf] = k.wait_records(lambda r: r["id"] == id, type="TransientFailure")
    [cat] = files(k.path("maildirs", "maildir.example.com", "cat"))
    check_direct(d, "maildir.example.com")
    check_direct(tf, "maildir.example.com")
    assert d["session_id"] == tf["session_id"]
    assert d["response"]["content"] == f"cat@maildir.example.com: wrote to maildir with id={cat}"
    assert tf["response"]["code"] == 400
    assert re.fullmatch(r"blocked@maildir\.example\.com: failed to write to maildir: .*"
                        r"Not a directory.*", tf["response"]["content"]), tf
    assert id in k.local_disk_ids("data")


def test_a_local_part_with_a_slash_does_not_leave_the_root(k):
    id = send(k, "a/..@maildir.example.com")
    [tf] = k.wait_records(lambda r: r["id"] == id, type="TransientFailure")
    check_direct(tf, "maildir.example.com")
    assert "not a safe path" in tf["response"]["content"], tf
    assert not os.path.exists(k.path("maildirs", "maildir.example.com", "a"))
    assert id in k.local_disk_ids("data")


def test_the_other_template_values(k):
    id = send(k, "Zed@vars.example.com")
    k.wait_records(lambda r: r["id"] == id, type="Delivery")
    box = k.path("vars", "T1", "acme", "spring", "vars.example.com", "sender-at-src.example",
                 "Zed@vars.example.com")
    wait_until(lambda: files(box), 5, what=f"a file in {box}")
