-- kumod's policy-extras helpers (share/lua/policy-extras): their data files'
-- checks and merging, without network (no MX lookups: shaping rules here
-- use mx_rollup = false and DomainSuffix providers). The end-to-end tests
-- are in tests/e2e/test_policy_extras.py.
local kumo = require 'kumo'
local utils = require 'policy-extras.policy_utils'
local toml = kumo.serde.toml_parse

local function fails(fn, expect)
  local ok, err = pcall(fn)
  assert(not ok, 'expected an error containing: ' .. expect)
  assert(tostring(err):find(expect, 1, true), 'error was: ' .. tostring(err))
end

-- policy_utils
utils.assert_eq(utils.merge_into({ a = 1 }, { a = 0, b = 2 }), { a = 1, b = 2 })
utils.assert_eq(
  utils.recursive_merge_into({ t = { x = 1 } }, { t = { y = 2 } }),
  { t = { x = 1, y = 2 } }
)
assert(utils.table_contains({ 'a', 'b' }, 'b') and not utils.table_contains({}, 'a'))
assert(utils.table_is_empty {} and not utils.table_is_empty { 1 })
assert(select(1, utils.split_ip_port '[::1]:25') == '::1')
assert(select(2, utils.split_ip_port '10.0.0.1:2525') == '2525')
assert(utils.starts_with('abc', 'ab') and utils.ends_with('abc', 'bc'))

-- sources: the user guide's file
local sources = require 'policy-extras.sources'
local sdata = sources.load_data {
  toml [[
[source."ip-1"]
source_address = "10.0.0.1"
ehlo_domain = 'mta1.examplecorp.com'
[source."ip-2"]
source_address = "10.0.0.2"
[source."ip-3"]
source_address = "10.0.0.3"
[pool."pool-1"]
[pool."pool-1"."ip-1"]
[pool."pool-2"]
[pool."pool-2"."ip-2"]
weight = 2
[pool."pool-2"."ip-3"]
weight = 1
[pool."empty"]
]],
}
utils.assert_eq(sdata.pools['pool-2'].entries, {
  { name = 'ip-2', weight = 2 },
  { name = 'ip-3', weight = 1 },
})
utils.assert_eq(#sdata.pools.empty.entries, 0)
-- a later file overrides a source's keys
local s2 = sources.load_data {
  toml '[source.a]\nsource_address = "10.0.0.1"\nehlo_domain = "a.example"',
  toml '[source.a]\nsource_address = "10.0.0.9"',
}
utils.assert_eq(s2.sources.a, { name = 'a', source_address = '10.0.0.9', ehlo_domain = 'a.example' })
fails(function()
  sources.load_data { toml '[source.a]\nsource_adress = "1.2.3.4"' }
end, 'sources: (inline table): [source.a] source_adress: unknown key')
fails(function()
  sources.load_data { toml '[pool.p.nobody]' }
end, "[pool.p.nobody]: source 'nobody' is not defined")
fails(function()
  sources.load_data { '/nonexistent/sources.toml' }
end, 'sources: /nonexistent/sources.toml: ')

-- queue: resolution order and the user guide's file
local queue = require 'policy-extras.queue'
local qdata = queue.load_data {
  toml [[
default_tenant = "t"
[tenant.t]
egress_pool = "p"
max_age = "10 hours"
[queue.default]
max_age = "24 hours"
retry_interval = "1 hour"
[queue."gmail.com"]
max_age = "22 hours"
retry_interval = "17 mins"
routing_domain = "[10.0.0.1]"
[queue."gmail.com".t]
max_message_rate = "100/s"
[queue."gmail.com".t.welcome]
retry_interval = "5 mins"
[queue."*.wild.example"]
max_age = "1 hour"
]],
}
assert(qdata.map['gmail.com'].sub.t.sub.welcome.opts.retry_interval == '5 mins')
assert(qdata.map['x.wild.example'].opts.max_age == '1 hour')
fails(function()
  queue.load_data { toml '[tenant.t]\nmax_agee = "1h"' }
end, '[tenant.t] max_agee: unknown key')
fails(function()
  queue.load_data { toml 'remove_tenant_header = "yes"' }
end, '(top level) remove_tenant_header: expected true or false, got string')
fails(function()
  queue.load_data { toml 'default_tenant = "ghost"' }
end, "tenant 'ghost'")

-- listener_domains: lookups as the user guide describes them
local ld = require 'policy-extras.listener_domains'
local ldata = ld.load_data {
  toml [==[
["*"]
log_oob = true
["example.com"]
relay_to = true
["*.example.com"]
relay_to = true
log_arf = true
["www.example.com"]
relay_to = false
[listener."127.0.0.1:25"."*.example.com"]
log_oob = false
]==],
}
utils.assert_eq(ld.find(ldata, 'example.com', '127.0.0.1:2025'), { relay_to = true })
utils.assert_eq(ld.find(ldata, 'a.example.com', '127.0.0.1:2025'), { relay_to = true, log_arf = true })
utils.assert_eq(ld.find(ldata, 'a.example.com', '127.0.0.1:25'), { log_oob = false })
utils.assert_eq(ld.find(ldata, 'www.example.com', '10.0.0.1:25'), { relay_to = false })
utils.assert_eq(ld.find(ldata, 'other.org', '10.0.0.1:25'), { log_oob = true })
fails(function()
  ld.load_data { toml '["a.com"]\nlog_oob = "Sometimes"' }
end, '["a.com"] log_oob: expected one of Ignore, LogThenRelay, LogThenDrop')

-- shaping: the rollups page's example (foo.com on IP-1), replace_base,
-- map merging, providers by domain suffix
local shaping = require 'policy-extras.shaping'
local get = shaping:setup {
  toml [==[
["default"]
connection_limit = 10
max_connection_rate = "100/min"
max_deliveries_per_connection = 100
max_message_rate = "100/s"
additional_connection_limits = { a = 1 }
["foo.com"]
mx_rollup = false
max_deliveries_per_connection = 50
connection_limit = 3
additional_connection_limits = { b = 2 }
["foo.com".sources."IP-1"]
max_deliveries_per_connection = 5
["bar.com"]
mx_rollup = false
connection_limit = 7
[provider."dom"]
match = [{DomainSuffix = ".provider.example"}]
provider_connection_limit = 4
connection_limit = 6
[provider."dom".sources."IP-1"]
connection_limit = 8
]==],
  toml [==[
["bar.com"]
mx_rollup = false
replace_base = true
max_message_rate = "1/s"
]==],
}
utils.assert_eq(shaping.resolve_params('foo.com', 'IP-1', 'foo-site'), {
  connection_limit = 3,
  max_deliveries_per_connection = 5,
  max_connection_rate = '100/min',
  max_message_rate = '100/s',
  additional_connection_limits = { a = 1, b = 2 },
})
utils.assert_eq(shaping.resolve_params('bar.com', 'IP-2', 'bar-site').connection_limit, 10)
utils.assert_eq(shaping.resolve_params('bar.com', 'IP-2', 'bar-site').max_message_rate, '1/s')
local p = shaping.resolve_params('x.provider.example', 'IP-1', 'site')
utils.assert_eq(p.provider_name, 'dom')
utils.assert_eq(p.connection_limit, 8)
utils.assert_eq(p.additional_connection_limits['shaping-provider-dom-IP-1-limit'], 4)
assert(get('foo.com', 'IP-1', 'foo-site'))
fails(function()
  shaping.parse_files { toml '["default"]\nconection_limit = 3' }
end, 'shaping: (inline table): [default] conection_limit: unknown key')
fails(function()
  shaping.parse_files { toml '[provider.x]\nmatch = [{MXSufix = ".a"}]' }
end, "[provider.x] match: match item 1: unknown kind 'MXSufix'")
-- kumod's own shaping.toml is valid
shaping.parse_files { shaping.default_file() }

-- rollup: the module loads and leaves a queue without ip_rollup alone
local rollup = require 'policy-extras.rollup'
utils.assert_eq(rollup.apply_ip_rollup_to_queue_config('a.com', nil, { x = 1 }), { x = 1 })

-- dkim_sign: the data file's checks (signing itself: test_policy_extras_dkim)
local dkim_sign = require 'policy-extras.dkim_sign'
local ddata = dkim_sign.load_data {
  toml [[
[base]
selector = "s1"
headers = ["From", "To", "Subject"]
additional_signatures = ["esp"]
[domain."example.com"]
algo = "ed25519"
[signature."esp"]
domain = "esp.example"
policy = "OnlyIfMissingDomainBlock"
]],
}
utils.assert_eq(
  dkim_sign.signer_params(ddata.base, ddata.domain['example.com'], 'example.com').key,
  '/opt/kumomta/etc/dkim/example.com/s1.key'
)
fails(function()
  dkim_sign.load_data { toml '[base]\nadditional_signatures = ["nope"]\nselector = "s"' }
end, "[base] additional_signatures: signature 'nope' has no [signature.nope] table")
fails(function()
  dkim_sign.load_data { toml '[domain."a.com"]\nselector = "s"\nheaders = ["From"]\nalgo = "md5"' }
end, '[domain."a.com"] algo: expected one of sha256, ed25519')
fails(function()
  dkim_sign.load_data { toml '[domain."a.com"]\nheaders = ["From"]' }
end, '[domain."a.com"] selector: missing')
print 'policy-extras ok'
