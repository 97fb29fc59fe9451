-- Issue 21, routing: names resolve through the hosts file and RFC 6761
-- before DNS (kumo.dns.lookup_addr('localhost') is the loopback), and
-- kumo.dns.configure_test_resolver answers MX, A, AAAA (with CNAMEs) from
-- zone text alone; make_queue_config checks mx_list {addr=}.
local kumo = require 'kumo'

local function eq(a, b, what)
  local sa, sb = kumo.serde.json_encode(a), kumo.serde.json_encode(b)
  assert(sa == sb, (what or '') .. ': expected ' .. sb .. ', got ' .. sa)
end

-- no name server is asked for these: the system's (or none) may be unreachable
kumo.dns.configure_resolver { name_servers = { '127.0.0.1:9' }, options = { timeout = '1s', attempts = 1 } }

-- the hosts file has localhost as 127.0.0.1 (Debian's file); RFC 6761 adds ::1
eq(kumo.dns.lookup_addr 'localhost', { '127.0.0.1', '::1' }, 'localhost')
eq(kumo.dns.lookup_addr('LocalHost.', nil, 'Ipv4Only'), { '127.0.0.1' }, 'localhost v4')
eq(kumo.dns.lookup_addr('localhost', nil, 'Ipv6Only'), { '::1' }, 'localhost v6')
eq(kumo.dns.lookup_addr 'foo.localhost', { '127.0.0.1', '::1' }, 'foo.localhost')
eq(kumo.dns.lookup_addr 'x.invalid', {}, 'invalid')
local mx = kumo.dns.lookup_mx 'localhost:2025'
eq(mx.hosts, { 'localhost.:2025' }, 'localhost mx')
assert(mx.is_mx == false)
assert(not pcall(kumo.dns.lookup_mx, 'nothing.invalid'))

-- configure_test_resolver: KumoMTA's list of zones, strings or {zone=, secure=}
kumo.dns.configure_test_resolver {
  [[
$ORIGIN example.com.
$TTL 300
@        IN MX 10 mx1            ; relative to the origin
         IN MX 20 mx2.example.com.
mx1      A     10.0.0.1
mx1      AAAA  2001:db8::1
mx2 600 IN A   10.0.0.2
www      CNAME mx1
txt      TXT   "v=spf1 -all" "second"
soa      SOA   ns hostmaster ( 1 ; serial
                 3600 600 86400 60 )
]],
  { zone = "$ORIGIN nomx.example.\n@ 60 A 192.0.2.7\n", secure = true },
  "$ORIGIN null.example.\n@ MX 0 .\n",
}
local mx = kumo.dns.lookup_mx 'example.com'
eq(mx.hosts, { 'mx1.example.com.', 'mx2.example.com.' }, 'zone mx')
eq(mx.site_name, '(mx1|mx2).example.com', 'zone site')
assert(mx.is_mx == true and mx.is_secure == false)
eq(kumo.dns.lookup_addr 'mx1.example.com', { '10.0.0.1', '2001:db8::1' }, 'a+aaaa')
eq(kumo.dns.lookup_addr('mx1.example.com', nil, 'Ipv6Only'), { '2001:db8::1' }, 'aaaa')
eq(kumo.dns.lookup_addr 'www.example.com.', { '10.0.0.1', '2001:db8::1' }, 'cname')
eq(kumo.dns.lookup_addr 'absent.example.com', {}, 'nodata')
local nomx = kumo.dns.lookup_mx 'nomx.example'
eq(nomx.hosts, { 'nomx.example.' }, 'implicit mx')
assert(nomx.is_mx == false and nomx.is_secure == true)
eq(kumo.dns.lookup_addr 'nomx.example', { '192.0.2.7' }, 'secure zone a')
eq(kumo.dns.lookup_mx('null.example').hosts, { '.' }, 'null mx')
local ok, err = pcall(kumo.dns.lookup_mx, 'elsewhere.org')
assert(not ok and tostring(err):find('MX lookup for elsewhere.org failed after .*: NXDOMAIN'), err)
-- the zones alone answer: no hosts file, no RFC 6761
eq(kumo.dns.lookup_addr 'localhost', {}, 'localhost under the test resolver')

-- the detailed form, with SERVFAIL names; a zone of the same origin replaces
kumo.dns.configure_test_resolver {
  zones = { "$ORIGIN example.com.\nmx1 A 10.9.9.9\n" },
  servfail = { 'broken.example.com' },
}
eq(kumo.dns.lookup_addr 'mx1.example.com', { '10.9.9.9' }, 'replaced')
local ok, err = pcall(kumo.dns.lookup_addr, 'broken.example.com')
assert(not ok and tostring(err):find('SERVFAIL', 1, true), err)
local ok, err = pcall(kumo.dns.lookup_mx, 'broken.example.com')
assert(not ok and tostring(err):find('SERVFAIL', 1, true), err)

-- configure_resolver{Test=...} is the same
kumo.dns.configure_resolver { Test = { "$ORIGIN t.example.\n@ A 198.51.100.1\n" } }
eq(kumo.dns.lookup_addr 't.example', { '198.51.100.1' }, 'Test form')

-- bad zones are errors naming the zone and the line; nothing is installed
for _, case in ipairs {
  { { "$ORIGIN x.\n@ A 1.2.3.4\n@ BOGUS 1\n" }, 'zone 1: line 3: unsupported record type `BOGUS`' },
  { { "ok A 1.2.3.4\n" }, 'zone 1: line 1: relative owner name `ok` before any $ORIGIN' },
  { { "$ORIGIN x.\n", "$ORIGIN y.\n@ A 1.2.3\n" }, 'zone 2: line 2: `1.2.3` is not an IPv4 address' },
  { { "$ORIGIN x.\n@ TXT \"open\n" }, 'zone 1: line 2: unterminated quoted string' },
  { { "$ORIGIN x.\n@ MX 70000 mx\n" }, 'MX preference `70000` is not a number 0-65535' },
  { { "$ORIGIN x.\n@ SOA ( a b 1 2 3 4 5\n" }, 'unbalanced parentheses' },
  { { "$INCLUDE /etc/passwd\n" }, 'directive $INCLUDE is not supported' },
  { { 42 }, 'zone 1 must be a string or {zone=, secure=}' },
  { { { zone = 'x', bogus = true } }, 'unknown field `bogus`' },
  { { zones = {}, servfail = { 'a..b' } }, 'servfail[1]: invalid name `a..b`' },
} do
  local ok, err = pcall(kumo.dns.configure_test_resolver, case[1])
  assert(not ok and tostring(err):find(case[2], 1, true), tostring(err) .. ' lacks ' .. case[2])
end
eq(kumo.dns.lookup_addr 't.example', { '198.51.100.1' }, 'still the last good set')

-- configure_resolver puts a real resolver back: the hosts file again
kumo.dns.configure_resolver { name_servers = { '127.0.0.1:9' }, options = { timeout = '1s', attempts = 1 } }
eq(kumo.dns.lookup_addr('localhost', nil, 'Ipv4Only'), { '127.0.0.1' }, 'hosts file back')
-- use_hosts_file = 'Never': localhost still has its RFC 6761 loopback
kumo.dns.configure_resolver {
  name_servers = { '127.0.0.1:9' },
  options = { timeout = '1s', attempts = 1, use_hosts_file = 'Never' },
}
eq(kumo.dns.lookup_addr('localhost', nil, 'Ipv4Only'), { '127.0.0.1' }, 'rfc 6761')

-- mx_list {addr=} is an address with an optional port (KumoMTA's ResolvedAddress)
for _, good in ipairs { '10.0.0.1', '10.0.0.1:2025', '::1', '[::1]', '[::1]:2025', '[10.0.0.1]' } do
  kumo.make_queue_config { protocol = { smtp = { mx_list = { { name = 'x', addr = good } } } } }
end
for _, bad in ipairs { 'relay.example', 'relay.example:25', '10.0.0.1:99999', '' } do
  local ok, err = pcall(kumo.make_queue_config, { protocol = { smtp = { mx_list = { { name = 'x', addr = bad } } } } })
  assert(not ok and tostring(err):find("addr '" .. bad .. "' is not an IP address", 1, true), tostring(err))
end
kumo.make_queue_config { protocol = { smtp = { mx_list = { 'localhost:2025', '[127.0.0.1]:2025', 'mx.example.com' } } } }
