-- kumo.dns: the pages of lookup_txt, lookup_ptr, ptr_host, reverse_ip,
-- rbl_lookup, define_resolver, configure_unbound_resolver, load_resolv_conf
-- and set_mta_sts_enabled, with their examples answered by test zones (the
-- real-network side is tests/e2e/test_dns_lookups.py, against dnsmasq).
local kumo = require 'kumo'
local utils = require 'lib2_util'

-- ptr_host.md / reverse_ip.md: pure string manipulation
utils.assert_eq(kumo.dns.ptr_host '127.0.0.1', '1.0.0.127.in-addr.arpa')
utils.assert_eq(
  kumo.dns.ptr_host '::1',
  '1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.ip6.arpa'
)
utils.assert_eq(kumo.dns.reverse_ip '127.0.0.1', '1.0.0.127')
utils.assert_eq(
  kumo.dns.reverse_ip '::1',
  '1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0'
)
utils.assert_eq(
  kumo.dns.reverse_ip '2001:db8::ab',
  'b.a.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.8.b.d.0.1.0.0.2'
)
utils.assert_error({ 'kumo.dns.ptr_host', 'argument #1', "'10.0.0' is not an IP address" }, kumo.dns.ptr_host, '10.0.0')
utils.assert_error({ 'kumo.dns.reverse_ip', 'argument #1', 'must be a string' }, kumo.dns.reverse_ip, 42)
utils.assert_error({ 'kumo.dns.reverse_ip', 'not an IP address' }, kumo.dns.reverse_ip, '[::1]')

-- the default resolver answers from these zones alone
kumo.dns.configure_test_resolver {
  [[
$ORIGIN gmail.com.
@ 300 IN TXT "v=spf1 redirect=_spf.google.com"
@ 300 IN TXT "globalsign-smime-dv=CDYX+XFHUw2wml6/Gb8+59BsH31KzUr6c1l2BPvqKX8="
split 300 IN TXT "part one, " "part two"
nothing 300 IN A 10.9.9.9
]],
  [[
$ORIGIN 0.0.127.in-addr.arpa.
1 30 IN PTR localhost.
1 30 IN PTR loopback.example.
]],
  [[
$ORIGIN bl.spamcop.net.
2.0.0.127 300 IN A 127.0.0.2
2.0.0.127 300 IN TXT "Blocked - see https://www.spamcop.net/bl.shtml?127.0.0.2"
1.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0 300 IN A 127.0.0.4
]],
}

-- lookup_txt.md: the page's assertion, byte for byte
assert(
  kumo.serde.json_encode(kumo.dns.lookup_txt 'gmail.com')
    == '["v=spf1 redirect=_spf.google.com","globalsign-smime-dv=CDYX+XFHUw2wml6/Gb8+59BsH31KzUr6c1l2BPvqKX8="]'
)
-- a record's character-strings are joined; a name without TXT is an empty list
utils.assert_eq(kumo.dns.lookup_txt 'split.gmail.com', { 'part one, part two' })
utils.assert_eq(kumo.dns.lookup_txt 'nothing.gmail.com', {})
-- "Raises an error if the domain doesn't exist"
utils.assert_error({ 'kumo.dns.lookup_txt', 'nowhere.example', 'NXDOMAIN' }, kumo.dns.lookup_txt, 'nowhere.example')
utils.assert_error({ 'kumo.dns.lookup_txt', 'argument #1', 'must be a string' }, kumo.dns.lookup_txt, nil)
utils.assert_error({ 'kumo.dns.lookup_txt', 'resolver nope is not defined' }, kumo.dns.lookup_txt, 'gmail.com', 'nope')

-- lookup_ptr.md: the page's example, then what it prints
local ok, records = pcall(kumo.dns.lookup_ptr, '127.0.0.1')
assert(ok, records)
local printed = {}
for _, a in ipairs(records) do
  printed[#printed + 1] = a
end
utils.assert_eq(printed, { 'localhost.', 'loopback.example.' })
-- "The table may be empty"
utils.assert_eq(kumo.dns.lookup_ptr '127.0.0.9', {})
utils.assert_eq(kumo.dns.lookup_ptr '10.1.2.3', {}) -- no zone: NXDOMAIN is no records
utils.assert_error({ 'kumo.dns.lookup_ptr', "'localhost' is not an IP address" }, kumo.dns.lookup_ptr, 'localhost')

-- rbl_lookup.md: querying SpamCop's always-listed test address
local ip, reason = kumo.dns.rbl_lookup('127.0.0.2', 'bl.spamcop.net')
utils.assert_eq(ip, '127.0.0.2')
utils.assert_eq(reason, 'Blocked - see https://www.spamcop.net/bl.shtml?127.0.0.2')
-- a socket address with a port is accepted; not listed: both nil
ip, reason = kumo.dns.rbl_lookup('127.0.0.2:2525', 'bl.spamcop.net')
utils.assert_eq(ip, '127.0.0.2')
ip, reason = kumo.dns.rbl_lookup('127.0.0.3', 'bl.spamcop.net')
assert(ip == nil and reason == nil)
-- IPv6 (bracketed with a port too); listed without TXT records: the
-- reason is the empty join of none, as in KumoMTA
ip, reason = kumo.dns.rbl_lookup('[::1]:25', 'bl.spamcop.net.')
utils.assert_eq(ip, '127.0.0.4')
utils.assert_eq(reason, '')
utils.assert_error(
  { 'kumo.dns.rbl_lookup', 'mail.example.com is not a valid IpAddr or SocketAddr' },
  kumo.dns.rbl_lookup,
  'mail.example.com',
  'bl.spamcop.net'
)
utils.assert_error({ 'kumo.dns.rbl_lookup', 'argument #2' }, kumo.dns.rbl_lookup, '127.0.0.2', nil)
utils.assert_error({ 'not a valid IpAddr' }, kumo.dns.rbl_lookup, '1.2.3.4:99999', 'bl.spamcop.net')

-- define_resolver.md: a Test resolver named 'rbl', queried by name
kumo.dns.define_resolver('rbl', {
  Test = {
    zones = {
      [[
$ORIGIN rbl.domain.
1.0.0.10 30 IN A   127.0.0.2
1.0.0.10 300   TXT "Blocked for a very good reason!"
  ]],
    },
  },
})
ip, reason = kumo.dns.rbl_lookup('10.0.0.1', 'rbl.domain', 'rbl')
utils.assert_eq(ip, '127.0.0.2')
utils.assert_eq(reason, 'Blocked for a very good reason!')
-- the default resolver does not know rbl.domain; the named one not gmail.com
ip = kumo.dns.rbl_lookup('10.0.0.1', 'rbl.domain')
assert(ip == nil)
utils.assert_eq(kumo.dns.lookup_addr('1.0.0.10.rbl.domain', 'rbl'), { '127.0.0.2' })
utils.assert_error('NXDOMAIN', kumo.dns.lookup_txt, 'gmail.com', 'rbl')
utils.assert_eq(kumo.dns.lookup_txt('1.0.0.10.rbl.domain', 'rbl'), { 'Blocked for a very good reason!' })

-- the secure/servfail form, and lookup_mx through a named resolver
kumo.dns.define_resolver('secure-test', {
  Test = {
    zones = {
      {
        zone = [[
$ORIGIN dane.example.
@ 3600 IN MX 10 mx.dane.example.
mx 3600 IN A 127.0.0.1
  ]],
        secure = true,
      },
      [[
$ORIGIN insecure.example.
@ 3600 IN A 127.0.0.2
  ]],
    },
    servfail = { '_25._tcp.broken.example' },
  },
})
local mx = kumo.dns.lookup_mx('dane.example', 'secure-test')
utils.assert_eq(mx.hosts, { 'mx.dane.example.' })
assert(mx.is_secure == true)
utils.assert_eq(kumo.dns.lookup_addr('insecure.example', 'secure-test'), { '127.0.0.2' })
utils.assert_error('SERVFAIL', kumo.dns.lookup_txt, '_25._tcp.broken.example', 'secure-test')
utils.assert_error('resolver nope is not defined', kumo.dns.lookup_mx, 'dane.example', 'nope')
utils.assert_error('resolver nope is not defined', kumo.dns.lookup_addr, 'dane.example', 'nope')

-- redefining a name replaces it; lookups use the new definition
kumo.dns.define_resolver('rbl', { Test = { [[
$ORIGIN rbl.domain.
1.0.0.10 30 IN A 127.0.0.3
]] } })
utils.assert_eq(kumo.dns.rbl_lookup('10.0.0.1', 'rbl.domain', 'rbl'), '127.0.0.3')

-- the Hickory, Unbound and system forms define resolvers with name servers
kumo.dns.define_resolver('rbl-h', { Hickory = { name_servers = { '10.0.0.1:53' } } })
kumo.dns.define_resolver('rbl-u', { Unbound = { name_servers = { '10.0.0.1:53' } } })
kumo.dns.define_resolver('myresolver', 'HickorySystemConfig')
utils.assert_error({ 'kumo.dns.define_resolver', 'Aggregate', 'not supported' }, kumo.dns.define_resolver, 'aggregate', {
  Aggregate = { { Test = { zones = {} } }, 'HickorySystemConfig' },
})
utils.assert_error({ 'kumo.dns.define_resolver', 'argument #1' }, kumo.dns.define_resolver, nil, 'HickorySystemConfig')
utils.assert_error({ 'kumo.dns.define_resolver', 'expected one of' }, kumo.dns.define_resolver, 'x', { name_servers = {} })
utils.assert_error({ 'kumo.dns.define_resolver', "unknown resolver configuration 'Nope'" }, kumo.dns.define_resolver, 'x', 'Nope')
utils.assert_error({ 'kumo.dns.define_resolver', 'name server', 'not an IP address' }, kumo.dns.define_resolver, 'x', {
  Hickory = { name_servers = { 'dns.example:53' } },
})
utils.assert_error({ 'kumo.dns.define_resolver', 'zone 1' }, kumo.dns.define_resolver, 'x', { Test = { 'garbage line' } })

-- configure_unbound_resolver.md: the page's example asks for DNSSEC
-- validation, which kumod's resolver (c-ares) cannot do: refused by name
utils.assert_error(
  { 'kumo.dns.configure_unbound_resolver', 'options.validate', 'not supported' },
  kumo.dns.configure_unbound_resolver,
  { options = { validate = true } }
)
utils.assert_error(
  { 'kumo.dns.configure_unbound_resolver', 'options.trust_anchor_file', 'not supported' },
  kumo.dns.configure_unbound_resolver,
  { options = { trust_anchor_file = '/etc/unbound/root.key' } }
)
-- hickory-only options are configuration errors naming the field
utils.assert_error(
  { 'kumo.dns.configure_unbound_resolver', 'options.ndots', 'not meaningful' },
  kumo.dns.configure_unbound_resolver,
  { options = { ndots = 2 } }
)
utils.assert_error(
  { 'kumo.dns.configure_unbound_resolver', 'options.cache_size' },
  kumo.dns.configure_unbound_resolver,
  { options = { cache_size = 2 } }
)
utils.assert_error({ 'kumo.dns.configure_unbound_resolver', 'argument #1' }, kumo.dns.configure_unbound_resolver, 'x')
-- what it honours: name servers (protocol accepted, no effect), use_hosts_file
kumo.dns.configure_unbound_resolver {
  name_servers = { { socket_addr = '127.0.0.1:9', protocol = 'tcp' } },
  options = { validate = false, use_hosts_file = 'Never' },
}
-- a real resolver replaced the test one: localhost is not in the hosts file any more
-- (RFC 6761 still answers it) and nothing else is reachable on port 9
utils.assert_eq(kumo.dns.lookup_addr('localhost', nil, 'Ipv4Only'), { '127.0.0.1' })

-- load_resolv_conf.md: the page's example against a file of our own
local dir = os.getenv 'TMPDIR' or '/tmp'
local path = dir .. '/kumod-resolv-' .. kumo.uuid.new_v4().simple .. '.conf'
local f = assert(io.open(path, 'w'))
f:write [[
# a comment
domain example.com
search a.example b.example
nameserver 127.0.0.1
nameserver ::1
options ndots:2 timeout:3 attempts:4 edns0 rotate
]]
f:close()
local cfg = kumo.dns.load_resolv_conf(path)
utils.assert_eq(cfg.name_servers, { '127.0.0.1:53', '[::1]:53' })
utils.assert_eq(cfg.domain, 'example.com')
utils.assert_eq(cfg.search, { 'a.example', 'b.example' })
utils.assert_eq(cfg.options, { ndots = 2, timeout = '3s', attempts = 4, edns0 = true })
cfg.options.positive_min_ttl = '5min'
cfg.options.positive_max_ttl = '1h'
cfg.options.cache_size = 16384
kumo.dns.configure_resolver(cfg)
kumo.dns.define_resolver('from-file', { Hickory = kumo.dns.load_resolv_conf(path) })
os.remove(path)
-- no argument: /etc/resolv.conf
local sys = kumo.dns.load_resolv_conf()
assert(type(sys.name_servers) == 'table' and type(sys.options) == 'table')
utils.assert_error({ 'kumo.dns.load_resolv_conf', '/nonexistent/resolv.conf' }, kumo.dns.load_resolv_conf, '/nonexistent/resolv.conf')
utils.assert_error({ 'kumo.dns.load_resolv_conf', 'argument #1' }, kumo.dns.load_resolv_conf, 5)

-- set_mta_sts_enabled.md
kumo.dns.set_mta_sts_enabled(true)
kumo.dns.set_mta_sts_enabled(false)
utils.assert_error({ 'kumo.dns.set_mta_sts_enabled', 'boolean' }, kumo.dns.set_mta_sts_enabled, 'yes')
