-- kumo.invoke_get_queue_config / invoke_get_egress_path_config /
-- invoke_get_egress_source / invoke_get_egress_pool,
-- kumo.compute_egress_path_config_constraints, compute_queue_config_constraints,
-- format_egress_path_config_constraints, format_egress_path_config_toml,
-- format_queue_config_toml: the examples of their reference pages.
local kumo = require 'kumo'

local function eq(a, b, what)
  assert(a == b, string.format('%s: expected %s, got %s', what, tostring(b), tostring(a)))
end

-- without handlers: what kumod itself would use
local q = kumo.invoke_get_queue_config 'example.com'
eq(q.retry_interval, '20m', 'default retry_interval')
eq(q.max_age, '7days', 'default max_age')
eq(q.reap_interval, '10m', 'default reap_interval')
eq(q.refresh_interval, '1m', 'default refresh_interval')
eq(q.refresh_strategy, 'Ttl', 'default refresh_strategy')
eq(q.strategy, 'SingletonTimerWheel', 'default strategy')
assert(type(q.protocol.smtp) == 'table', 'default protocol smtp')
eq(q.egress_pool, nil, 'no egress_pool')

local p = kumo.invoke_get_egress_path_config('example.com', 'unspecified', 'example.com')
eq(p.connection_limit, 32, 'default connection_limit')
eq(p.max_ready, 1024, 'max_ready')
eq(p.enable_tls, 'Opportunistic', 'enable_tls')
eq(p.enable_mta_sts, true, 'enable_mta_sts')
eq(p.smtp_port, 25, 'smtp_port')
eq(p.idle_timeout, '5s', 'idle_timeout')
eq(p.ehlo_timeout, '5m', 'ehlo_timeout')
eq(p.max_deliveries_per_connection, 1024, 'max_deliveries_per_connection')
eq(p.max_recipients_per_batch, 100, 'max_recipients_per_batch')
eq(p.max_message_rate, nil, 'no max_message_rate')
eq(#p.prohibited_hosts, 4, 'prohibited_hosts')
eq(p.openssl_options, nil, 'openssl_options does not round-trip')

local s = kumo.invoke_get_egress_source 'unspecified'
eq(s.name, 'unspecified', 'unspecified source')
eq(s.ttl, '1m', 'source ttl')
local pool = kumo.invoke_get_egress_pool 'unspecified'
eq(pool.name, 'unspecified', 'unspecified pool')
eq(pool.entries[1].name, 'unspecified', 'unspecified pool entry')
eq(pool.entries[1].weight, 1, 'unspecified pool weight')
local ok, err = pcall(kumo.invoke_get_egress_pool, 'mypool')
assert(not ok and tostring(err):find('no get_egress_pool handler', 1, true), err)

-- with handlers, called with the arguments kumod passes
local seen = {}
kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  seen.queue = { domain, tenant, campaign, routing_domain }
  if domain == 'bad.example' then
    return kumo.make_queue_config { no_such_key = 1 }
  end
  return kumo.make_queue_config {
    egress_pool = 'pool-' .. (tenant or 'none'),
    retry_interval = '10 minutes',
    max_message_rate = '3600/hr',
  }
end)
kumo.on('get_egress_path_config', function(routing_domain, source, site)
  seen.path = { routing_domain, source, site }
  -- a handler may wait: it runs in the caller's coroutine
  kumo.sleep(0.01)
  return kumo.make_egress_path {
    connection_limit = 'local:8',
    max_message_rate = '1000/s',
    max_connection_rate = '10/s',
    max_deliveries_per_connection = 10,
    additional_message_rate_throttles = { ['shared-limit'] = '50/s' },
    connect_timeout = 30,
  }
end)
kumo.on('get_egress_source', function(name)
  if name == 'missing' then
    return nil
  end
  return kumo.make_egress_source { name = name, source_address = '10.0.0.1' }
end)
kumo.on('get_egress_pool', function(name)
  return kumo.make_egress_pool { name = name, entries = { { name = 'ip-1' }, { name = 'ip-2', weight = 3 } } }
end)

q = kumo.invoke_get_queue_config 'camp:tenant1@example.com!routed.example'
eq(seen.queue[1], 'example.com', 'domain passed')
eq(seen.queue[2], 'tenant1', 'tenant passed')
eq(seen.queue[3], 'camp', 'campaign passed')
eq(seen.queue[4], 'routed.example', 'routing_domain passed')
eq(q.egress_pool, 'pool-tenant1', 'egress_pool')
eq(q.retry_interval, '10m', 'retry_interval canonical')
eq(q.max_message_rate, '3600/h', 'max_message_rate canonical')
eq(q.max_age, '7days', 'max_age default kept')
ok, err = pcall(kumo.invoke_get_queue_config, 'bad.example')
assert(not ok and tostring(err):find("unknown field 'no_such_key'", 1, true), err)

p = kumo.invoke_get_egress_path_config('example.com', 'ip-1', 'mx.example')
eq(seen.path[1], 'example.com', 'routing_domain')
eq(seen.path[2], 'ip-1', 'source')
eq(seen.path[3], 'mx.example', 'site')
eq(p.connection_limit, 'local:8', 'connection_limit')
eq(p.connect_timeout, '30s', 'connect_timeout canonical')
eq(p.additional_message_rate_throttles['shared-limit'], '50/s', 'additional throttle')
eq(p.enable_pipelining, true, 'default pipelining')

s = kumo.invoke_get_egress_source 'ip-1'
eq(s.source_address, '10.0.0.1', 'source_address')
ok, err = pcall(kumo.invoke_get_egress_source, 'missing')
assert(not ok and tostring(err):find("returned no source", 1, true), err)
pool = kumo.invoke_get_egress_pool 'pool-tenant1'
eq(#pool.entries, 2, 'pool entries')
eq(pool.entries[1].weight, 1, 'default weight')
eq(pool.entries[2].weight, 3, 'weight')

-- compute_egress_path_config_constraints: the page's example
local c = kumo.compute_egress_path_config_constraints(kumo.make_egress_path {
  max_message_rate = '1000/s',
  max_connection_rate = '10/s',
  max_deliveries_per_connection = 10,
})
eq(c.max_concurrent_dispatchers.value, 32, 'dispatchers value')
eq(c.max_concurrent_dispatchers.source.kind, 'primary', 'dispatchers source')
eq(c.max_concurrent_dispatchers.display, '32', 'dispatchers display')
eq(c.max_message_rate.value, 100, 'message rate value')
eq(c.max_message_rate.source.kind, 'reconnect_cycling', 'message rate source')
eq(c.max_message_rate.display, '10 × 10/s = 100/s', 'message rate display')
eq(c.max_message_rate_declared, '1000/s', 'declared')
eq(c.max_connection_rate.value, 10, 'connection rate')
eq(c.max_connection_rate.display, '10/s', 'connection rate display')
eq(c.max_source_selection_rate, nil, 'no selection rate')

-- format_egress_path_config_constraints: the page's example output
eq(kumo.format_egress_path_config_constraints(c), [[
ceilings:
  concurrent dispatchers: 32
    source: connection_limit
  message rate:           10 × 10/s = 100/s
    source: max_deliveries_per_connection × max_connection_rate
    declared: max_message_rate = 1000/s ← effectively unreachable
  connection rate:        10/s
    source: max_connection_rate
]], 'rendered ceilings')

-- additional entries win when tighter, and are named
c = kumo.compute_egress_path_config_constraints(p)
eq(c.max_message_rate.source.kind, 'additional', 'additional wins')
eq(c.max_message_rate.source.name, 'shared-limit', 'additional name')
eq(c.max_message_rate.value, 50, 'additional value')
eq(c.max_message_rate_declared, '1000/s', 'declared when additional wins')
eq(c.max_concurrent_dispatchers.value, 8, 'local:8')

-- compute_queue_config_constraints, folded in as `additional`
local qc = kumo.compute_queue_config_constraints(kumo.make_queue_config { max_message_rate = '20/s' })
eq(qc.max_message_rate.value, 20, 'queue rate')
eq(qc.max_message_rate.source.kind, 'other', 'queue rate kind')
eq(qc.max_message_rate.source.name, 'scheduled queue max_message_rate', 'queue rate name')
eq(qc.max_concurrent_dispatchers.value, math.huge, 'queue concurrency is open')
c = kumo.compute_egress_path_config_constraints(p, qc)
eq(c.max_message_rate.value, 20, 'merged minimum')
eq(c.max_message_rate.source.name, 'scheduled queue max_message_rate', 'merged source')
eq(c.max_concurrent_dispatchers.value, 8, 'open ceiling loses')
local text = kumo.format_egress_path_config_constraints(c)
assert(text:find('source: scheduled queue max_message_rate', 1, true), text)
assert(text:find('declared: max_message_rate = 1000/s', 1, true), text)
eq(kumo.compute_queue_config_constraints(kumo.make_queue_config {}).max_message_rate, nil, 'no queue rate')

-- format_*_toml: every key, and it round-trips through toml_parse into the makers
local t = kumo.format_egress_path_config_toml(p)
assert(t:find('connect_timeout = "30s"', 1, true), t)
assert(t:find('enable_mta_sts = true', 1, true), t)
assert(t:find('additional_connection_limits = {}', 1, true), t)
local back = kumo.serde.toml_parse(t)
kumo.make_egress_path(back)
eq(back.connection_limit, 'local:8', 'round trip connection_limit')
eq(back.additional_message_rate_throttles['shared-limit'], '50/s', 'round trip map')
eq(kumo.format_egress_path_config_toml(back), t, 'stable')
t = kumo.format_queue_config_toml(q)
assert(t:find('retry_interval = "10m"', 1, true), t)
assert(t:find('max_age = "7days"', 1, true), t)
back = kumo.serde.toml_parse(t)
kumo.make_queue_config(back)
eq(kumo.format_queue_config_toml(back), t, 'queue stable')

-- bad input names the function
for _, f in ipairs {
  { kumo.format_egress_path_config_toml, { connection_limit = 'lots' }, 'kumo.format_egress_path_config_toml' },
  { kumo.format_queue_config_toml, 5, 'kumo.format_queue_config_toml' },
  { kumo.compute_egress_path_config_constraints, { nope = 1 }, 'kumo.compute_egress_path_config_constraints' },
  { kumo.format_egress_path_config_constraints, { max_concurrent_dispatchers = 3 }, 'kumo.format_egress_path_config_constraints' },
  { kumo.invoke_get_queue_config, {}, 'kumo.invoke_get_queue_config' },
} do
  ok, err = pcall(f[1], f[2])
  assert(not ok and tostring(err):find(f[3], 1, true), tostring(err))
end
print 'ok'
