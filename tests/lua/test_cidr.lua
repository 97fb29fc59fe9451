-- kumo.cidr.make_map (docs/reference/kumo.cidr/make_map.md).
local kumo = require 'kumo'

local function eq(a, b, what)
  if a ~= b then
    error(string.format('%s: expected %q, got %q', what or 'value', tostring(b), tostring(a)), 2)
  end
end
local function fails(fn, msg, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, 'expected an error containing ' .. msg)
  assert(tostring(err):find(msg, 1, true), 'error was: ' .. tostring(err))
end

-- the page's examples
do
  local cmap = kumo.cidr.make_map()
  cmap['127.0.0.1'] = 'bar'
  assert(cmap['127.0.0.1'] == 'bar')
  assert(cmap['not.set'] == nil)
end
do
  local cmap = kumo.cidr.make_map()
  cmap['10.0.0.0/24'] = '10. block'
  assert(cmap['10.0.0.1'] == '10. block')
  assert(cmap['10.0.0.42'] == '10. block')
  assert(cmap['100.0.0.100'] == nil)
end
do
  local cmap = kumo.cidr.make_map {
    ['127.0.0.0/24'] = 'loopback',
    ['10.0.0.0/24'] = 'lan',
  }
  cmap['4.2.4.2'] = 4242
  eq(cmap['4.2.4.2'], 4242)
  eq(cmap['127.0.0.200'], 'loopback')
end
local SOURCE_CLASSIFICATION = kumo.cidr.make_map {
  ['127.0.0.0/24'] = 'loopback',
  ['10.0.0.0/24'] = 'lan',
}
eq(SOURCE_CLASSIFICATION['127.0.0.1:25'], 'loopback')
eq(SOURCE_CLASSIFICATION['[127.0.0.1]'], 'loopback')
eq(SOURCE_CLASSIFICATION['[10.0.0.9]:2525'], 'lan')

-- longest prefix wins, IPv4 and IPv6
local m = kumo.cidr.make_map {
  ['0.0.0.0/0'] = 'v4 default',
  ['10.0.0.0/8'] = 'ten',
  ['10.1.0.0/16'] = 'ten-one',
  ['10.1.2.3'] = 'host',
  ['::/0'] = 'v6 default',
  ['2001:db8::/32'] = 'doc',
  ['2001:db8:1::/48'] = 'doc-1',
}
eq(m['10.2.3.4'], 'ten')
eq(m['10.1.9.9'], 'ten-one')
eq(m['10.1.2.3'], 'host')
eq(m['192.0.2.1'], 'v4 default')
eq(m['2001:db8:1::5'], 'doc-1')
eq(m['2001:db8:2::5'], 'doc')
eq(m['[2001:db8::1]:25'], 'doc')
eq(m['::1'], 'v6 default')
eq(m['::ffff:10.1.2.3'], 'host') -- IPv4-mapped IPv6 looks up as IPv4
eq(m['10.1.0.0/24'], 'ten-one') -- a block: the longest entry containing it
-- replacing and removing
m['10.1.0.0/16'] = 'changed'
eq(m['10.1.9.9'], 'changed')
m['10.1.0.0/16'] = nil
eq(m['10.1.9.9'], 'ten')
-- lookups with junk give nil, never an error
for _, k in ipairs { '', 'x', '999.1.1.1', '10.0.0.0/33', '[', ':', '[::1', 42, true } do
  eq(m[k], nil, tostring(k))
end
-- inserting junk is an error naming the key
fails(function()
  m['10.0.0.1/24'] = 1
end, '10.0.0.1/24 is not a valid CIDR: host part of address was not zero. Did you mean 10.0.0.0/24?')
fails(function()
  m['not an ip'] = 1
end, 'not an ip is not a valid CIDR')
fails(function()
  m['[nope]:25'] = 1
end, "failed to parse 'nope', the []-enclosed portion of '[nope]:25', as an IP address")
fails(kumo.cidr.make_map, 'kumo.cidr.make_map: 300.0.0.0/8 is not a valid CIDR', { ['300.0.0.0/8'] = 1 })
fails(kumo.cidr.make_map, 'kumo.cidr.make_map: argument #1 must be a table', 'x')
fails(kumo.cidr.make_map, 'keys must be address or CIDR strings', { 'x' })
