"""Issue 21, routing to host:port: a real kumod relays to real SMTP peers
(aiosmtpd, smtpdeliv_peers.SmtpPeer) on 127.0.0.1 ports named in mx_list,
in a routing domain, through the hosts file and through
kumo.dns.configure_test_resolver zones, and each Delivery record is checked
against what KumoMTA writes (crates/kumod/src/smtp_dispatcher.rs: the port
connected to is the source's remote_port, else the address's port, else
smtp_port; peer_address is the planned ResolvedAddress, with the port the
address carried).

Every egress path's smtp_port is a port where nothing listens unless a case
says otherwise, so a delivery that ignored the port it was given fails.

Run "system": the default policy's resolver is a null DNS server (every name
NXDOMAIN), so names resolve only through the hosts file (CARES_HOSTS points
kumod at a file of the test's) or RFC 6761 (localhost).
Run "zones": configure_test_resolver zones answer everything.
"""
import re
import socket

import pytest

import kumod_harness as kh
from kumod_harness import default_policy, parse_ids
from smtpdeliv_peers import SmtpPeer, to_lua

SENDER = "sender@src.example"


free_port = kh.free_port


HANDLERS = """
local QUEUES = {queues}
local PATHS = {paths}
local ROUTES = {routes}
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  local q = QUEUES[domain] or {{}}
  q.retry_interval = '2s'
  return kumo.make_queue_config(q)
end)
kumo.on('get_egress_path_config', function(domain, source, site)
  local p = {{ prohibited_hosts = {{}}, smtp_port = {closed} }}
  for k, v in pairs(PATHS[domain] or {{}}) do p[k] = v end
  return kumo.make_egress_path(p)
end)
kumo.on('get_egress_pool', function(name)
  return kumo.make_egress_pool {{ name = name, entries = {{ {{ name = name .. '-src' }} }} }}
end)
kumo.on('get_egress_source', function(name)
  if name == 'remote-src' then
    return kumo.make_egress_source {{ name = name, remote_port = {remote_port} }}
  end
  return kumo.make_egress_source {{ name = name }}
end)
kumo.on('smtp_server_message_received', function(msg)
  local r = ROUTES[msg:recipient().domain]
  if r then
    msg:set_meta('routing_domain', r)
  end
end)
"""


def make_policy(queues, paths, routes, closed, remote_port=0, init=""):
    return default_policy(handlers=HANDLERS.format(
        queues=to_lua(queues), paths=to_lua(paths), routes=to_lua(routes), closed=closed,
        remote_port=remote_port), init=init)


def send(k, rcpt):
    s = k.smtp(ehlo="routing.e2e.test")
    try:
        assert s.mail(SENDER)[0] == 250
        assert s.rcpt(rcpt)[0] == 250
        code, text = s.data(f"From: <{SENDER}>\r\nSubject: {rcpt}\r\n\r\nrouting\r\n".encode())
        assert code == 250, (code, text)
        [id] = parse_ids(text.decode())
        return id
    finally:
        s.quit()


def delivery(run, rcpt):
    k, id = run["k"], run["ids"][rcpt]
    [rec] = k.wait_records(lambda r: r["id"] == id, type="Delivery", timeout=20)
    return rec


def check(rec, *, rcpt, queue, site, peer, pool="unspecified", source="unspecified"):
    """The fields of a Delivery record that routing decides, exactly."""
    assert rec["type"] == "Delivery", rec
    assert rec["recipient"] == rcpt, rec
    assert rec["queue"] == queue, rec
    assert rec["site"] == site, rec
    assert rec["peer_address"] == {"name": peer[0], "addr": peer[1]}, rec
    assert rec["response"]["code"] == 250, rec
    assert re.fullmatch(r"OK queued as m\d+", rec["response"]["content"]), rec
    assert rec["response"]["command"] == ".\r\n", rec
    assert rec["egress_pool"] == pool, rec
    assert rec["egress_source"] == source, rec
    assert rec["delivery_protocol"] == "ESMTP", rec
    assert rec["num_attempts"] == 0, rec


def got(peer, rcpt):
    return [m for m in peer.received() if rcpt in m["rcpt_tos"]]


# ---- run "system": mx_list ports, smtp_port, remote_port, hosts file, routing domains ------

SYSTEM = {
    # rcpt: (queue config, path config, routing domain)
    "u@hostport.example": ({"protocol": {"smtp": {"mx_list": ["localhost:{p1}"]}}}, {}, None),
    "u@table.example": ({"protocol": {"smtp": {"mx_list": [
        {"name": "x", "addr": "127.0.0.1:{p1}"}]}}}, {}, None),
    # (not p1: "mx_list:127.0.0.1:P1" is table.example's site, whose plan names the peer x)
    "u@ipport.example": ({"protocol": {"smtp": {"mx_list": ["127.0.0.1:{p3}"]}}}, {}, None),
    "u@literalport.example": ({"protocol": {"smtp": {"mx_list": ["[127.0.0.1]:{p1}"]}}}, {},
                              None),
    "u@noport.example": ({"protocol": {"smtp": {"mx_list": ["localhost"]}}},
                         {"smtp_port": "{p3}"}, None),
    # the entry's port is where nothing listens: remote_port wins
    "u@remote.example": ({"egress_pool": "remote",
                          "protocol": {"smtp": {"mx_list": ["localhost:{closed}"]}}}, {}, None),
    # a path smtp_port too: the mx_list port wins over it
    "u@overpath.example": ({"protocol": {"smtp": {"mx_list": ["localhost:{p1}"]}}},
                           {"smtp_port": "{p3}"}, None),
    "u@hostsfile.example": ({"protocol": {"smtp": {"mx_list": ["relay.hosts.test:{p1}"]}}}, {},
                            None),
    "u@hostsnoport.example": ({"protocol": {"smtp": {"mx_list": ["relay.hosts.test"]}}},
                              {"smtp_port": "{p3}"}, None),
    "u@rl.example": ({}, {}, "[127.0.0.1]:{p1}"),
    "u@rh.example": ({}, {}, "localhost:{p1}"),
    "u@rhnoport.example": ({}, {"smtp_port": "{p3}"}, "localhost"),
}


def subst(v, ports):
    if isinstance(v, dict):
        return {k: subst(x, ports) for k, x in v.items()}
    if isinstance(v, list):
        return [subst(x, ports) for x in v]
    if isinstance(v, str):
        s = v.format(**ports)
        return int(s) if s.isdigit() and v.startswith("{") else s
    return v


@pytest.fixture(scope="module")
def system_run(module_kumod_factory, tmp_path_factory):
    ports = {"p1": free_port(), "p2": free_port(), "p3": free_port(), "closed": free_port()}
    peers = {n: SmtpPeer("127.0.0.1", ports[n]).start() for n in ("p1", "p2", "p3")}
    hosts = tmp_path_factory.mktemp("hosts") / "hosts"
    hosts.write_text("# test hosts file\n127.0.0.1   relay.hosts.test  other-alias\n"
                     "::1 ip6-localhost\n")
    queues, paths, routes = {}, {}, {}
    for rcpt, (q, p, r) in SYSTEM.items():
        d = rcpt.split("@")[1]
        queues[d] = subst(q, ports)
        if p:
            paths[subst(r, ports) if r else d] = subst(p, ports)
        if r:
            routes[d] = subst(r, ports)
    policy = make_policy(queues, paths, routes, ports["closed"], remote_port=ports["p2"])
    k = module_kumod_factory(policy, name="system", env={"CARES_HOSTS": str(hosts)})
    ids = {rcpt: send(k, rcpt) for rcpt in SYSTEM}
    yield {"k": k, "ids": ids, "ports": ports, "peers": peers}
    for p in peers.values():
        p.stop()


def test_mx_list_host_colon_port(system_run):
    """mx_list = {'localhost:P'}: localhost resolves without DNS, the port is
    the entry's, the peer is named as the entry names it."""
    p1 = system_run["ports"]["p1"]
    rec = delivery(system_run, "u@hostport.example")
    check(rec, rcpt="u@hostport.example", queue="hostport.example",
          site=f"unspecified->mx_list:localhost:{p1}@smtp_client",
          peer=("localhost", f"127.0.0.1:{p1}"))
    assert len(got(system_run["peers"]["p1"], "u@hostport.example")) == 1


def test_mx_list_name_addr_with_port(system_run):
    p1 = system_run["ports"]["p1"]
    rec = delivery(system_run, "u@table.example")
    check(rec, rcpt="u@table.example", queue="table.example",
          site=f"unspecified->mx_list:127.0.0.1:{p1}@smtp_client",
          peer=("x", f"127.0.0.1:{p1}"))
    assert len(got(system_run["peers"]["p1"], "u@table.example")) == 1


def test_mx_list_ip_colon_port(system_run):
    p3 = system_run["ports"]["p3"]
    rec = delivery(system_run, "u@ipport.example")
    check(rec, rcpt="u@ipport.example", queue="ipport.example",
          site=f"unspecified->mx_list:127.0.0.1:{p3}@smtp_client",
          peer=("127.0.0.1", f"127.0.0.1:{p3}"))
    assert len(got(system_run["peers"]["p3"], "u@ipport.example")) == 1


def test_mx_list_bracketed_literal_colon_port(system_run):
    p1 = system_run["ports"]["p1"]
    rec = delivery(system_run, "u@literalport.example")
    check(rec, rcpt="u@literalport.example", queue="literalport.example",
          site=f"unspecified->mx_list:[127.0.0.1]:{p1}@smtp_client",
          peer=("[127.0.0.1]", f"127.0.0.1:{p1}"))


def test_mx_list_without_port_uses_smtp_port(system_run):
    """No port in the entry: the egress path's smtp_port; the peer address
    has no port, as KumoMTA logs it."""
    rec = delivery(system_run, "u@noport.example")
    check(rec, rcpt="u@noport.example", queue="noport.example",
          site="unspecified->mx_list:localhost@smtp_client", peer=("localhost", "127.0.0.1"))
    assert len(got(system_run["peers"]["p3"], "u@noport.example")) == 1


def test_mx_list_port_overrides_smtp_port(system_run):
    p1 = system_run["ports"]["p1"]
    rec = delivery(system_run, "u@overpath.example")
    check(rec, rcpt="u@overpath.example", queue="overpath.example",
          site=f"unspecified->mx_list:localhost:{p1}@smtp_client",
          peer=("localhost", f"127.0.0.1:{p1}"))
    assert len(got(system_run["peers"]["p1"], "u@overpath.example")) == 1
    assert not got(system_run["peers"]["p3"], "u@overpath.example")


def test_remote_port_overrides_mx_list_port(system_run):
    """The source's remote_port beats the entry's port (nothing listens
    there); the record still shows the planned address with the entry's
    port, as KumoMTA's does."""
    closed = system_run["ports"]["closed"]
    rec = delivery(system_run, "u@remote.example")
    check(rec, rcpt="u@remote.example", queue="remote.example",
          site=f"remote-src->mx_list:localhost:{closed}@smtp_client",
          peer=("localhost", f"127.0.0.1:{closed}"), pool="remote", source="remote-src")
    assert len(got(system_run["peers"]["p2"], "u@remote.example")) == 1


def test_hosts_file_name_in_mx_list(system_run):
    """relay.hosts.test exists only in the hosts file (the DNS server says
    NXDOMAIN to everything)."""
    p1 = system_run["ports"]["p1"]
    rec = delivery(system_run, "u@hostsfile.example")
    check(rec, rcpt="u@hostsfile.example", queue="hostsfile.example",
          site=f"unspecified->mx_list:relay.hosts.test:{p1}@smtp_client",
          peer=("relay.hosts.test", f"127.0.0.1:{p1}"))


def test_hosts_file_name_without_port(system_run):
    rec = delivery(system_run, "u@hostsnoport.example")
    check(rec, rcpt="u@hostsnoport.example", queue="hostsnoport.example",
          site="unspecified->mx_list:relay.hosts.test@smtp_client",
          peer=("relay.hosts.test", "127.0.0.1"))
    assert len(got(system_run["peers"]["p3"], "u@hostsnoport.example")) == 1


def test_routing_domain_literal_with_port(system_run):
    """routing_domain '[127.0.0.1]:P': the literal is the site; the peer is
    the address (KumoMTA's MailExchanger host "127.0.0.1:P")."""
    p1 = system_run["ports"]["p1"]
    rec = delivery(system_run, "u@rl.example")
    check(rec, rcpt="u@rl.example", queue=f"rl.example![127.0.0.1]:{p1}",
          site=f"unspecified->127.0.0.1:{p1}@smtp_client",
          peer=("127.0.0.1", f"127.0.0.1:{p1}"))
    assert len(got(system_run["peers"]["p1"], "u@rl.example")) == 1


def test_routing_domain_localhost_with_port(system_run):
    """routing_domain 'localhost:P': localhost has no MX (RFC 6761), so it
    is its own mail exchanger 'localhost.' with the port."""
    p1 = system_run["ports"]["p1"]
    rec = delivery(system_run, "u@rh.example")
    check(rec, rcpt="u@rh.example", queue=f"rh.example!localhost:{p1}",
          site=f"unspecified->localhost:{p1}@smtp_client",
          peer=("localhost.", f"127.0.0.1:{p1}"))


def test_routing_domain_localhost_uses_smtp_port(system_run):
    rec = delivery(system_run, "u@rhnoport.example")
    check(rec, rcpt="u@rhnoport.example", queue="rhnoport.example!localhost",
          site="unspecified->localhost@smtp_client", peer=("localhost.", "127.0.0.1"))
    assert len(got(system_run["peers"]["p3"], "u@rhnoport.example")) == 1


# ---- run "zones": configure_test_resolver ----------------------------------------------------

ZONES = """
kumo.dns.configure_test_resolver {{
  [[
$ORIGIN zone.example.
@       300 IN MX 10 mx1
        300 IN MX 20 mx2.zone.example.
mx1     300 IN A  127.0.0.1
mx2     300 IN A  127.0.0.1
relay       A     127.0.0.1
alias       CNAME relay
]],
  {{ zone = [[
$ORIGIN other.example.
$TTL 60
@ A 127.0.0.1
]] }},
}}
"""

ZONED = {
    # rcpt: (queue config, path config)
    "u@zone.example": ({}, {"smtp_port": "{p1}"}),
    "u@other.example": ({}, {"smtp_port": "{p1}"}),
    "u@viaalias.example": ({"protocol": {"smtp": {"mx_list": ["alias.zone.example:{p1}"]}}}, {}),
    "u@missing.example": ({}, {}),
    "u@viahost.example": ({"protocol": {"smtp": {"mx_list": ["localhost:{p1}"]}}}, {}),
}


@pytest.fixture(scope="module")
def zones_run(module_kumod_factory):
    ports = {"p1": free_port(), "closed": free_port()}
    peer = SmtpPeer("127.0.0.1", ports["p1"]).start()
    queues = {r.split("@")[1]: subst(q, ports) for r, (q, p) in ZONED.items()}
    paths = {r.split("@")[1]: subst(p, ports) for r, (q, p) in ZONED.items() if p}
    k = module_kumod_factory(make_policy(queues, paths, {}, ports["closed"], init=ZONES.format()),
                             name="zones")
    ids = {rcpt: send(k, rcpt) for rcpt in ZONED}
    yield {"k": k, "ids": ids, "ports": ports, "peers": {"p1": peer}}
    peer.stop()


def test_zone_mx(zones_run):
    rec = delivery(zones_run, "u@zone.example")
    check(rec, rcpt="u@zone.example", queue="zone.example",
          site="unspecified->(mx1|mx2).zone.example@smtp_client",
          peer=("mx1.zone.example.", "127.0.0.1"))
    assert len(got(zones_run["peers"]["p1"], "u@zone.example")) == 1


def test_zone_without_mx_is_its_own_mx(zones_run):
    rec = delivery(zones_run, "u@other.example")
    check(rec, rcpt="u@other.example", queue="other.example",
          site="unspecified->other.example@smtp_client", peer=("other.example.", "127.0.0.1"))


def test_zone_cname_in_mx_list(zones_run):
    p1 = zones_run["ports"]["p1"]
    rec = delivery(zones_run, "u@viaalias.example")
    check(rec, rcpt="u@viaalias.example", queue="viaalias.example",
          site=f"unspecified->mx_list:alias.zone.example:{p1}@smtp_client",
          peer=("alias.zone.example", f"127.0.0.1:{p1}"))


def test_zone_nxdomain_is_a_transient_failure(zones_run):
    k, id = zones_run["k"], zones_run["ids"]["u@missing.example"]
    [rec] = k.wait_records(lambda r: r["id"] == id, type="TransientFailure", timeout=20)[:1]
    assert rec["response"]["code"] == 451, rec
    assert re.fullmatch(r"failed to resolve queue missing\.example: MX lookup for "
                        r"missing\.example failed after \S+: NXDOMAIN",
                        rec["response"]["content"]), rec
    assert rec["peer_address"] is None and rec["site"] == "", rec


def test_test_resolver_replaces_the_hosts_file(zones_run):
    """Under the test resolver only the zones answer, as in KumoMTA: the
    zones do not have localhost, so an mx_list 'localhost:P' has no hosts."""
    k, id = zones_run["k"], zones_run["ids"]["u@viahost.example"]
    [rec] = k.wait_records(lambda r: r["id"] == id, type="TransientFailure", timeout=20)[:1]
    assert rec["response"]["code"] == 451, rec
    assert rec["response"]["content"] == "MX didn't resolve to any hosts", rec
    assert not got(zones_run["peers"]["p1"], "u@viahost.example")
