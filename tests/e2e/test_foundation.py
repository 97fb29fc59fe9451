"""Issue 2 (foundation): command line, --validate, the Lua policy engine
(init once, handlers on every VM, kumo.on rules, chained events), coroutine
sleep that does not block its reactor, SIGTERM and SIGHUP."""
import os
import re
import select
import signal
import socket
import subprocess
import time

import pytest

import kumod_harness as kh
from kumod_harness import default_policy, wait_until

APPEND_LUA = """
local function append(name, line)
  local f = assert(io.open('{dir}/' .. name, 'a'))
  f:write(line .. '\\n')
  f:close()
end
"""


def run_kumod(args, timeout=60, env=None):
    e = dict(os.environ)
    e.setdefault("ASAN_OPTIONS", "detect_leaks=0")
    e.update(env or {})
    return subprocess.run([kh.kumod_bin()] + args, capture_output=True, timeout=timeout * kh.SLOW,
                          env=e, stdin=subprocess.DEVNULL)


def validate(k):
    return run_kumod(["--policy", k.policy_path, "--validate"])


def read_lines(path):
    if not os.path.exists(path):
        return []
    with open(path) as f:
        return [l.rstrip("\n") for l in f]


def port_closed(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) != 0


# ---- command line and --validate ------------------------------------------------------------


def test_validate_good_policy_opens_nothing(kumod_factory):
    k = kumod_factory(start=False)
    r = validate(k)
    assert r.returncode == 0, r.stderr.decode()
    assert r.stdout.decode() == f"kumod: policy {k.policy_path} is valid\n"
    # no listener, no spool: --validate only loads the policy and runs init
    assert port_closed(k.smtp_port)
    assert not os.path.exists(k.spool)


def test_validate_syntax_error_names_file_and_line(kumod_factory):
    k = kumod_factory(start=False, policy="""local kumo = require 'kumo'
kumo.on('init', function()
  local x =
end)
""")
    r = validate(k)
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert re.search(r"policy\.lua:4: unexpected symbol near 'end'", err), err
    assert r.stdout == b""


def test_validate_runtime_error_in_init_names_file_and_line(kumod_factory):
    k = kumod_factory(start=False, policy="""local kumo = require 'kumo'
kumo.on('init', function()
  local t = nil
  error('boom in init')
end)
""")
    r = validate(k)
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert re.search(r"policy\.lua:4: boom in init", err), err


def test_start_with_runtime_error_in_init_fails(kumod_factory):
    k = kumod_factory(start=False, policy="""local kumo = require 'kumo'
kumo.on('init', function()
  local t = nil
  return t.field
end)
""")
    r = run_kumod(["--policy", k.policy_path, "--threads", "2"], timeout=30)
    err = r.stderr.decode()
    assert r.returncode != 0, err
    assert re.search(r"policy\.lua:4: attempt to index a nil value", err), err


def test_validate_error_in_listener_config_names_the_key(kumod_factory):
    k = kumod_factory(start=False, listener="no_such_key = 1,")
    r = validate(k)
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert "unknown field 'no_such_key'" in err, err
    assert re.search(r"policy\.lua:\d+:", err), err


def test_missing_policy_file(tmp_path):
    path = str(tmp_path / "nope.lua")
    for extra in ([], ["--validate"]):
        r = run_kumod(["--policy", path] + extra)
        err = r.stderr.decode()
        assert r.returncode != 0
        assert f"cannot read policy file {path}: No such file or directory" in err, err


def test_unknown_option(tmp_path):
    r = run_kumod(["--no-such-option"])
    err = r.stderr.decode()
    assert r.returncode != 0
    assert "unknown option --no-such-option" in err, err
    assert "usage: kumod --policy FILE" in err


def test_bad_threads_value(tmp_path):
    r = run_kumod(["--threads", "zero", "--policy", "/dev/null"])
    assert r.returncode != 0
    assert "--threads zero" in r.stderr.decode()


def test_kumod_threads_env_sets_reactor_count(kumod_factory):
    # the command line wins over the environment...
    k = kumod_factory(start=False, threads=3, env={"KUMOD_THREADS": "5"})
    k.start()
    k.wait_diag(r"kumod started: policy=\S+ threads=3 ")
    k.stop()
    # ...and the environment is used without --threads
    k.threads = None
    k.start()
    k.wait_diag(r"kumod started: policy=\S+ threads=5 ")


# ---- the policy engine --------------------------------------------------------------------


def test_init_runs_once_and_handlers_exist_on_all_reactors(kumod_factory):
    # Every VM loads the whole file (one "loads" line each, with a token
    # unique to that VM); init runs once; the ehlo handler answers on every
    # reactor, which we see from the set of VM tokens it reports.
    policy = APPEND_LUA + """
local kumo = require 'kumo'
local token = (tostring({}):gsub('^table: ', ''))
append('loads', token)
kumo.on('init', function()
  append('init', token)
  kumo.define_spool { name = 'data', path = '{spool}/data', kind = 'RocksDB' }
  kumo.define_spool { name = 'meta', path = '{spool}/meta', kind = 'RocksDB' }
  kumo.start_esmtp_listener { listen = '127.0.0.1:{smtp_port}', hostname = '{hostname}' }
end)
kumo.on('smtp_server_ehlo', function(domain, conn_meta)
  append('ehlo', token .. ' ' .. domain)
end)
"""
    k = kumod_factory(policy, threads=4)
    n = 48
    for i in range(n):
        s = k.smtp()
        code, _ = s.ehlo(f"c{i}.e2e.test")
        assert code == 250
        s.quit()
    loads = read_lines(k.path("loads"))
    assert len(loads) == 4 and len(set(loads)) == 4, loads
    assert len(read_lines(k.path("init"))) == 1
    ehlo = read_lines(k.path("ehlo"))
    assert sorted(l.split(" ")[1] for l in ehlo) == sorted(f"c{i}.e2e.test" for i in range(n))
    seen = {l.split(" ")[0] for l in ehlo}
    assert seen <= set(loads)
    # 48 connections spread over 4 accepting reactors: all of them served some
    assert seen == set(loads), f"only {len(seen)} of 4 reactors ran the handler"


def test_duplicate_registration_is_an_error_naming_the_event(kumod_factory):
    k = kumod_factory(start=False, handlers="""
kumo.on('smtp_server_mail_from', function() end)
kumo.on('smtp_server_mail_from', function() end)
""")
    r = validate(k)
    err = r.stderr.decode()
    assert r.returncode == 1, err
    assert "smtp_server_mail_from" in err, err
    assert re.search(r"policy\.lua:\d+: kumo\.on: event 'smtp_server_mail_from' already has a "
                     r"handler", err), err
    # the daemon refuses to start with it too
    r = run_kumod(["--policy", k.policy_path, "--threads", "1"], timeout=30)
    assert r.returncode != 0
    assert "smtp_server_mail_from" in r.stderr.decode()


def test_multi_handler_chain_order_pre_init_and_validate_config(kumod_factory):
    # Chained events call handlers in registration order until one returns
    # non-nil; a second registration is not an error for them.
    policy = APPEND_LUA + default_policy(handlers="""
kumo.on('pre_init', function() append('pre_init', 'a') end)
kumo.on('pre_init', function() append('pre_init', 'b'); return false end)
kumo.on('pre_init', function() append('pre_init', 'c') end)
kumo.on('validate_config', function() append('validate', 'x') end)
kumo.on('validate_config', function() append('validate', 'y') end)
kumo.on('validate_config', function() append('validate', 'z'); return true end)
kumo.on('validate_config', function() append('validate', 'never') end)
""", init="append('init', 'init')")
    k = kumod_factory(policy, start=False)
    r = validate(k)
    assert r.returncode == 0, r.stderr.decode()
    assert read_lines(k.path("pre_init")) == ["a", "b"]
    assert read_lines(k.path("validate")) == ["x", "y", "z"]
    assert read_lines(k.path("init")) == ["init"]
    # a running daemon: pre_init and init once each, before the listener
    os.remove(k.path("pre_init"))
    os.remove(k.path("init"))
    k.start()
    assert read_lines(k.path("pre_init")) == ["a", "b"]
    assert read_lines(k.path("init")) == ["init"]


def test_available_parallelism_and_json(kumod_factory):
    policy = APPEND_LUA + default_policy(init="""
append('par', tostring(kumo.available_parallelism()))
local v = kumo.json_decode('{"a":[1,2,{"b":"c"}],"d":true}')
append('json', v.a[3].b .. ' ' .. tostring(v.d) .. ' ' .. kumo.json_encode({x = 'y'}))
""")
    k = kumod_factory(policy, start=False, env={"KUMO_AVAILABLE_PARALLELISM": "7"})
    k.start()
    assert read_lines(k.path("par")) == ["7"]
    assert read_lines(k.path("json")) == ['c true {"x":"y"}']


# ---- coroutines ------------------------------------------------------------------------------


@pytest.mark.parametrize("sleep_fn", ["kumo.time.sleep", "kumo.sleep"])
def test_sleeping_handler_does_not_block_its_reactor(kumod_factory, sleep_fn):
    # One reactor: a handler sleeping 2 s for one session must not delay
    # another session's MAIL FROM on the same thread.
    k = kumod_factory(threads=1, handlers=APPEND_LUA + f"""
kumo.on('smtp_server_mail_from', function(sender, conn_meta)
  if tostring(sender):find('^slow@') then
    append('sleeping', 'yes')
    {sleep_fn}(2)
  end
end)
""")
    slow = k.raw()
    fast = k.raw()
    assert slow.cmd("EHLO slow.e2e.test")[0] == 250
    assert fast.cmd("EHLO fast.e2e.test")[0] == 250
    t0 = time.monotonic()
    slow.send("MAIL FROM:<slow@a.example>\r\n")
    # the slow handler is asleep before the other session asks
    wait_until(lambda: os.path.exists(k.path("sleeping")), 5, what="the handler to sleep")
    code, text = fast.cmd("MAIL FROM:<fast@a.example>")
    fast_elapsed = time.monotonic() - t0
    assert (code, text) == (250, 'OK EnvelopeAddress("fast@a.example")')
    assert fast_elapsed < 1.2, f"MAIL FROM of the other session took {fast_elapsed:.2f}s"
    r, _, _ = select.select([slow.sock], [], [], 0)
    assert not r, "the sleeping session answered early"
    code, text = slow.reply()
    slow_elapsed = time.monotonic() - t0
    assert (code, text) == (250, 'OK EnvelopeAddress("slow@a.example")')
    assert slow_elapsed >= 1.9
    # and the fast session kept working meanwhile
    assert fast.cmd("RCPT TO:<r@b.example>")[0] == 250
    slow.close()
    fast.close()


# ---- signals --------------------------------------------------------------------------------


def test_sigterm_exits_zero_within_5s(kumod_factory):
    # with an idle session, one inside a transaction and one whose handler
    # is asleep for much longer than the 5 s allowed
    k = kumod_factory(handlers=APPEND_LUA + """
kumo.on('smtp_server_mail_from', function(sender, conn_meta)
  if sender.user == 'sleepy' then
    append('sleeping', 'yes')
    kumo.time.sleep(30)
  end
end)
""")
    idle = k.raw()
    busy = k.raw()
    assert busy.cmd("EHLO busy.e2e.test")[0] == 250
    assert busy.cmd("MAIL FROM:<a@a.example>")[0] == 250
    sleepy = k.raw()
    assert sleepy.cmd("EHLO sleepy.e2e.test")[0] == 250
    sleepy.send("MAIL FROM:<sleepy@a.example>\r\n")
    wait_until(lambda: os.path.exists(k.path("sleeping")), 5, what="the handler to sleep")
    t0 = time.monotonic()
    k.expect_exit = True
    k.signal(signal.SIGTERM)
    rc = k.proc.wait(timeout=30)
    elapsed = time.monotonic() - t0
    assert rc == 0, k.diag()
    assert elapsed < 5.0, f"SIGTERM took {elapsed:.2f}s"
    assert port_closed(k.smtp_port)
    for s in (idle, busy, sleepy):
        s.close()


def mail_from_reply(k, sender="a@a.example"):
    s = k.raw()
    try:
        assert s.cmd("EHLO hup.e2e.test")[0] == 250
        return s.cmd(f"MAIL FROM:<{sender}>")
    finally:
        s.close()


def reject_policy(tag, extra=""):
    return APPEND_LUA + default_policy(init="append('init', 'init')", handlers=f"""
kumo.on('smtp_server_mail_from', function(sender, conn_meta)
  kumo.reject(550, '5.7.1 policy {tag}')
end)
{extra}
""")


def test_sighup_reloads_changed_handler(kumod_factory):
    k = kumod_factory(reject_policy("v1"))
    assert mail_from_reply(k) == (550, "5.7.1 policy v1")
    held = k.raw()
    assert held.cmd("EHLO held.e2e.test")[0] == 250
    k.write_policy(reject_policy("v2"))
    k.sighup()
    wait_until(lambda: mail_from_reply(k) == (550, "5.7.1 policy v2"), 10,
               what="the reloaded handler to answer")
    k.wait_diag(r"(?s)(policy reloaded.*){2}")
    # the session opened before the reload is still served
    assert held.cmd("NOOP")[0] == 250
    assert held.cmd("MAIL FROM:<h@a.example>") == (550, "5.7.1 policy v2")
    held.close()
    # init ran once per process, not again on reload
    assert read_lines(k.path("init")) == ["init"]


def test_sighup_with_broken_policy_keeps_the_old_one(kumod_factory):
    k = kumod_factory(reject_policy("v1"))
    assert mail_from_reply(k) == (550, "5.7.1 policy v1")
    broken = reject_policy("v2").rstrip("\n").split("\n")
    broken.append("this is not lua")
    k.write_policy("\n".join(broken) + "\n")
    bad_line = len(broken)
    k.sighup()
    m = k.wait_diag(r"policy reload failed, keeping the previous policy: .*")
    assert re.search(rf"policy\.lua:{bad_line}:", m.group(0)), m.group(0)
    assert mail_from_reply(k) == (550, "5.7.1 policy v1")
    assert k.alive()
    # a fixed policy loads on the next SIGHUP
    k.write_policy(reject_policy("v3"))
    k.sighup()
    wait_until(lambda: mail_from_reply(k) == (550, "5.7.1 policy v3"), 10,
               what="the fixed policy to load")


# ---- sanitizers ------------------------------------------------------------------------------


@pytest.mark.skipif(not kh.is_sanitized(), reason="KUMOD_BIN is not an ASan build")
def test_no_leaks_after_sessions_and_shutdown(kumod_factory):
    k = kumod_factory(start=False, env={"ASAN_OPTIONS": "detect_leaks=1"})
    k.own_sanitizer_check = True
    k.start()
    s = k.smtp(ehlo="leaks.e2e.test")
    s.sendmail("a@a.example", ["r1@d.example", "r2@d.example"], b"Subject: leaks\r\n\r\nhi\r\n")
    s.quit()
    r = k.raw()
    r.cmd("EHLO leaks2.e2e.test")
    r.cmd("BOGUS")
    r.cmd("MAIL FROM:<a@a.example>")
    r.close()
    rc = k.stop()
    report = k.sanitizer_report()
    assert report is None, report[-6000:]
    assert rc == 0


def test_sighup_while_a_handler_sleeps(kumod_factory):
    # the call in flight finishes on the policy it started with; new calls
    # use the new one
    def policy(tag):
        return APPEND_LUA + default_policy(handlers=f"""
kumo.on('smtp_server_mail_from', function(sender, conn_meta)
  if sender.user == 'sleepy' then
    append('sleeping', '{tag}')
    kumo.time.sleep(1.5)
  end
  kumo.reject(550, '5.7.1 policy {tag}')
end)
""")
    k = kumod_factory(policy("v1"), threads=1)
    s = k.raw()
    assert s.cmd("EHLO sleepy.e2e.test")[0] == 250
    s.send("MAIL FROM:<sleepy@a.example>\r\n")
    wait_until(lambda: os.path.exists(k.path("sleeping")), 5, what="the handler to sleep")
    k.write_policy(policy("v2"))
    k.sighup()
    k.wait_diag(r"policy reloaded")
    assert mail_from_reply(k) == (550, "5.7.1 policy v2")
    assert s.reply() == (550, "5.7.1 policy v1")
    assert s.cmd("MAIL FROM:<other@a.example>") == (550, "5.7.1 policy v2")
    s.close()


# ---- listening ports are exclusive ------------------------------------------------------------

def test_smtp_and_http_listener_on_one_port_is_refused(kumod_factory):
    # SO_REUSEPORT would let both join the port and share its connections
    port = kh.free_port()
    k = kumod_factory(start=False, policy=f"""local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool {{ name = 'data', path = '{{spool}}/data', kind = 'LocalDisk' }}
  kumo.define_spool {{ name = 'meta', path = '{{spool}}/meta', kind = 'LocalDisk' }}
  kumo.start_esmtp_listener {{ listen = '127.0.0.1:{port}' }}
  kumo.start_http_listener {{ listen = '127.0.0.1:{port}' }}
end)
""")
    r = run_kumod(["--policy", k.policy_path, "--threads", "2"], timeout=30)
    err = r.stderr.decode()
    assert r.returncode != 0, err
    assert f"cannot listen on 127.0.0.1:{port}: address already in use" in err, err


def test_port_held_by_another_reuseport_process_is_refused(kumod_factory):
    # a socket of the same user with SO_REUSEPORT: the kernel would let
    # kumod join it, and the two processes would split the connections
    with socket.socket() as other:
        other.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        other.bind(("127.0.0.1", 0))
        other.listen(8)
        port = other.getsockname()[1]
        k = kumod_factory(start=False, policy=f"""local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool {{ name = 'data', path = '{{spool}}/data', kind = 'LocalDisk' }}
  kumo.define_spool {{ name = 'meta', path = '{{spool}}/meta', kind = 'LocalDisk' }}
  kumo.start_esmtp_listener {{ listen = '127.0.0.1:{port}' }}
end)
""")
        r = run_kumod(["--policy", k.policy_path, "--threads", "2"], timeout=30)
        err = r.stderr.decode()
        assert r.returncode != 0, err
        assert "address already in use" in err, err
