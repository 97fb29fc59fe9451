-- kumo.apply_supplemental_trace_header (docs/reference/kumo/
-- apply_supplemental_trace_header.md) with the page's two equivalent
-- examples, kumo.set_httpinject_recipient_rate_limit's argument checks (its
-- page's example value), and the errors of kumo.inject_message and
-- kumo.api.inject.inject_v1 that need no spool.
local u = dofile(arg[0]:match('^(.*)/') .. '/lib2_util.lua')

local function mk()
  return kumo.make_message('sender@example.com', 'rcpt@example.com',
    'Subject: hello\r\n\r\nbody\r\n')
end

local function decoded(msg, name)
  local v = msg:get_first_named_header_value(name)
  assert(v, 'no ' .. name .. ' header')
  return kumo.serde.json_parse(kumo.encode.base64_decode((v:gsub('%s', ''))))
end

-- example 1: the defaults
local a = mk()
kumo.apply_supplemental_trace_header(a)
-- example 2: the same parameters spelled out
local b = mk()
kumo.apply_supplemental_trace_header(b, {
  supplemental_header = true,
  header_name = 'X-KumoRef',
  include_meta_names = {},
})
u.assert_eq(a:get_data(), b:get_data())
u.assert_eq(decoded(a, 'X-KumoRef'), { ['_@_'] = '\\_/', recipient = 'rcpt@example.com' })
assert(a:get_data():find('^X%-KumoRef: '), 'the header goes first')
assert(a:get_data():find('\r\n\r\nbody\r\n$'), 'the body is kept')

-- a header name of our own and meta values
local c = mk()
c:set_meta('tenant', 'acme')
c:set_meta('n', 42)
kumo.apply_supplemental_trace_header(c, {
  header_name = 'X-Trace',
  include_meta_names = { 'tenant', 'n', 'absent' },
})
u.assert_eq(decoded(c, 'X-Trace'),
  { ['_@_'] = '\\_/', recipient = 'rcpt@example.com', tenant = 'acme', n = 42 })
assert(c:get_first_named_header_value('X-KumoRef') == nil)
-- every folded line stays short
for line in c:get_data():gmatch('[^\r\n]+') do
  assert(#line <= 78, 'line too long: ' .. line)
end

-- supplemental_header = false: nothing is added
local d = mk()
kumo.apply_supplemental_trace_header(d, { supplemental_header = false })
u.assert_eq(d:get_data(), 'Subject: hello\r\n\r\nbody\r\n')

-- bad parameters name the key
local function err_of(f, ...)
  local ok, e = pcall(f, ...)
  assert(not ok, 'expected an error')
  return tostring(e)
end
assert(err_of(kumo.apply_supplemental_trace_header, mk(), { colour = 'red' })
  :find("unknown parameter 'colour'"))
assert(err_of(kumo.apply_supplemental_trace_header, mk(), { header_name = 'X Bad' })
  :find('header_name: expected a header name'))
assert(err_of(kumo.apply_supplemental_trace_header, mk(), { include_meta_names = { 1 } })
  :find('include_meta_names%[1%]'))
assert(err_of(kumo.apply_supplemental_trace_header, mk(), 'x'):find('argument #2'))
assert(err_of(kumo.apply_supplemental_trace_header, 'not a message'))

-- set_httpinject_recipient_rate_limit: the page's value, nil clears, junk is an error
kumo.set_httpinject_recipient_rate_limit 'local:10,000/s'
kumo.set_httpinject_recipient_rate_limit(nil)
assert(err_of(kumo.set_httpinject_recipient_rate_limit, 'ten per second')
  :find('invalid throttle'))
assert(err_of(kumo.set_httpinject_recipient_rate_limit, 5):find('throttle specification'))

-- inject_v1 and inject_message: argument errors
assert(err_of(kumo.api.inject.inject_v1, 'x'):find('the request must be a table'))
assert(type(require('kumo.api.inject').inject_v1) == 'function')
assert(err_of(kumo.inject_message, 'x'))

-- kumo.version looks like KumoMTA's (date-hash)
assert(type(kumo.version) == 'string' and kumo.version ~= '', 'kumo.version')
print('ok')
