"""kumo.dns against a real name server (dnsmasq on a loopback port):
lookup_txt, lookup_ptr and rbl_lookup through a resolver defined with
define_resolver (Hickory and Unbound forms) and through the default resolver
set by configure_unbound_resolver; each query must reach dnsmasq (its query
log is checked), and a server that never answers gives an error naming the
function after the configured timeout."""
import os
import subprocess

import kumod_harness as kh
from smtpdeliv_peers import Dns


def start_dns(tmp_path):
    dns = Dns(tmp_path / "dns", local=("test", "2.0.192.in-addr.arpa"))
    dns.args += [
        '--txt-record=spf.example.test,v=spf1 -all',
        '--txt-record=multi.example.test,one,two',
        "--ptr-record=5.2.0.192.in-addr.arpa,mail.example.test",
        "--host-record=2.0.0.127.rbl.test,127.0.0.2",
        '--txt-record=2.0.0.127.rbl.test,Listed: see https://rbl.test/127.0.0.2',
    ]
    return dns.start()


def run_script(tmp_path, text):
    path = tmp_path / "script.lua"
    path.write_text(text)
    env = dict(os.environ)
    env.setdefault("ASAN_OPTIONS", "detect_leaks=1")
    return subprocess.run([kh.kumod_bin(), "--script", str(path)], capture_output=True,
                          text=True, timeout=60, env=env)


def test_lookups_through_named_and_default_resolvers(tmp_path):
    dns = start_dns(tmp_path)
    try:
        ns = f"127.0.0.1:{dns.port}"
        r = run_script(tmp_path, f"""
local kumo = require 'kumo'
local function eq(a, b)
  local sa, sb = kumo.serde.json_encode(a), kumo.serde.json_encode(b)
  assert(sa == sb, 'expected ' .. sb .. ', got ' .. sa)
end
kumo.dns.define_resolver('local', {{ Hickory = {{ name_servers = {{ '{ns}' }} }} }})
eq(kumo.dns.lookup_txt('spf.example.test', 'local'), {{ 'v=spf1 -all' }})
eq(kumo.dns.lookup_txt('multi.example.test', 'local'), {{ 'onetwo' }})
local ok, err = pcall(kumo.dns.lookup_txt, 'missing.example.test', 'local')
assert(not ok and err:find('NXDOMAIN', 1, true), err)
eq(kumo.dns.lookup_ptr('192.0.2.5', 'local'), {{ 'mail.example.test.' }})
eq(kumo.dns.lookup_ptr('192.0.2.6', 'local'), {{}})
local ip, reason = kumo.dns.rbl_lookup('127.0.0.2', 'rbl.test', 'local')
eq({{ ip, reason }}, {{ '127.0.0.2', 'Listed: see https://rbl.test/127.0.0.2' }})
ip, reason = kumo.dns.rbl_lookup('127.0.0.3:25', 'rbl.test', 'local')
assert(ip == nil and reason == nil)

-- the Unbound form and configure_unbound_resolver use the same server
kumo.dns.define_resolver('ub', {{ Unbound = {{ name_servers = {{ '{ns}' }} }} }})
eq(kumo.dns.lookup_txt('spf.example.test', 'ub'), {{ 'v=spf1 -all' }})
kumo.dns.configure_unbound_resolver {{ name_servers = {{ '{ns}' }} }}
eq(kumo.dns.lookup_ptr '192.0.2.5', {{ 'mail.example.test.' }})
eq(kumo.dns.lookup_txt 'multi.example.test', {{ 'onetwo' }})

-- a server that does not answer: an error naming the function, after the timeout
kumo.dns.define_resolver('dead', {{ Hickory = {{ name_servers = {{ '127.0.0.1:9' }},
  options = {{ timeout = '300ms', attempts = 1 }} }} }})
ok, err = pcall(kumo.dns.lookup_txt, 'spf.example.test', 'dead')
assert(not ok and err:find('kumo.dns.lookup_txt', 1, true), err)

print('OK')
""")
        assert r.returncode == 0, r.stderr[-3000:]
        assert "OK" in r.stdout
        q = dns.queries()
        assert any("query[TXT] spf.example.test" in l for l in q), q
        assert any("query[PTR] 5.2.0.192.in-addr.arpa" in l for l in q), q
        assert any("query[A] 2.0.0.127.rbl.test" in l for l in q), q
        assert any("query[TXT] 2.0.0.127.rbl.test" in l for l in q), q
    finally:
        dns.stop()
