-- kumo.domain_map.new (docs/reference/kumo.domain_map/new.md).
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
  local dmap = kumo.domain_map.new()
  dmap['foo'] = 'bar'
  assert(dmap['foo'] == 'bar')
  assert(dmap['not.set'] == nil)
end
do
  local dmap = kumo.domain_map.new()
  dmap['*.example.com'] = 'wildcard'
  assert(dmap['example.com'] == nil)
  assert(dmap['foo.example.com'] == 'wildcard')
  dmap['explicit.example.com'] = 'explicit'
  assert(dmap['explicit.example.com'] == 'explicit')
end
do
  local dmap = kumo.domain_map.new {
    ['*.woot.com'] = 123,
    ['example.com'] = 24,
  }
  dmap['*.example.com'] = 42
  assert(dmap['lemon.example.com'] == 42)
  assert(dmap['example.com'] == 24)
  assert(dmap['woot.com'] == nil)
  assert(dmap['aa.woot.com'] == 123)
end

-- deeper names fall back to the most specific wildcard
local m = kumo.domain_map.new {
  ['*.example.com'] = 'outer',
  ['*.b.example.com'] = 'inner',
  ['a.b.example.com'] = 'exact',
}
eq(m['a.b.example.com'], 'exact')
eq(m['x.b.example.com'], 'inner')
eq(m['y.x.b.example.com'], 'inner')
eq(m['b.example.com'], 'outer')
eq(m['q.r.example.com'], 'outer')
eq(m['example.org'], nil)
eq(m[''], nil)
eq(m['.'], nil)
eq(m[42], nil)
-- a "*" key answers for every name nothing else covers
m['*'] = 'any'
eq(m['example.org'], 'any')
eq(m['x.b.example.com'], 'inner')
-- values of any type; nil removes
m['t.example.com'] = { 1, 2 }
eq(m['t.example.com'][2], 2)
m['t.example.com'] = nil
eq(m['t.example.com'], 'outer')
-- keys are compared as written (as KumoMTA does)
eq(m['A.B.EXAMPLE.COM'], 'any')
-- pairs walks the stored keys
local n = 0
for k, v in pairs(kumo.domain_map.new { a = 1, ['*.b'] = 2 }) do
  n = n + 1
  assert((k == 'a' and v == 1) or (k == '*.b' and v == 2))
end
eq(n, 2)
-- a long name and invalid UTF-8 are just keys
eq(m[string.rep('x.', 1000) .. 'example.com'], 'outer')
eq(m[string.rep('x.', 1000) .. 'example.net'], 'any')
eq(m['\255.example.com'], 'outer')
-- bad arguments
fails(kumo.domain_map.new, 'kumo.domain_map.new: argument #1 must be a table, not string', 'x')
fails(kumo.domain_map.new, 'keys of argument #1 must be domain strings, not number', { 'x' })
fails(function()
  m[1] = 2
end, 'keys must be domain strings')
-- memoize can return one (the policy-extras helpers do this)
local build = kumo.memoize(function()
  return kumo.domain_map.new { ['*.x'] = 1 }
end, { name = 'test.dmap', ttl = '1 minute', capacity = 2 })
eq(build()['a.x'], 1)
assert(build() == build())
