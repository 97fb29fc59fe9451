-- kumo.memoize (docs/reference/kumo/memoize.md) and
-- kumo.set_lruttl_cache_capacity.
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

-- the page's shape: a cache hit does not call the function again
local calls = 0
local function auth_check(user, password)
  calls = calls + 1
  return user == 'daniel' and password == 'tiger'
end
local cached_auth_check = kumo.memoize(auth_check, {
  name = 'sqlite_auth',
  ttl = '5 minutes',
  capacity = 100,
})
eq(cached_auth_check('daniel', 'tiger'), true)
eq(calls, 1)
eq(cached_auth_check('daniel', 'tiger'), true)
eq(calls, 1)
eq(cached_auth_check('daniel', 'lion'), false)
eq(calls, 2)

-- every result is kept, nil included; arguments of every JSON type
local n = 0
local multi = kumo.memoize(function(...)
  n = n + 1
  return n, nil, select('#', ...)
end, { name = 'multi', ttl = 60, capacity = 10 })
local a, b, c = multi(1, nil)
eq(a, 1)
eq(b, nil)
eq(c, 2)
a, b, c = multi(1, nil)
eq(a, 1, 'cached')
eq(c, 2)
eq((multi(1)), 2) -- one argument fewer: another key
eq((multi('1')), 3) -- string and number differ
eq((multi { x = 1, y = { 2 } }), 4)
eq((multi { y = { 2 }, x = 1 }), 4) -- same table, other construction order
eq((multi('\255')), 5) -- invalid UTF-8 is a fine key
eq((multi('\255')), 5)

-- capacity: the least recently used entry goes
local m = 0
local small = kumo.memoize(function(k)
  m = m + 1
  return k
end, { name = 'small', ttl = '1h', capacity = 2 })
small 'a'
small 'b'
small 'a' -- a is now the most recent
small 'c' -- evicts b
eq(m, 3)
small 'a'
eq(m, 3)
small 'b'
eq(m, 4)
-- capacity 0 caches nothing
local z = 0
local none = kumo.memoize(function()
  z = z + 1
end, { name = 'none', ttl = '1h', capacity = 0 })
none()
none()
eq(z, 2)

-- ttl: entries expire (the callee may wait: memoized functions yield)
local t = 0
local short = kumo.memoize(function()
  t = t + 1
  kumo.sleep(0.01)
  return t
end, { name = 'short', ttl = '150ms', capacity = 10 })
eq(short(), 1)
eq(short(), 1)
kumo.sleep(0.2)
eq(short(), 2)

-- errors are not cached
local e = 0
local flaky = kumo.memoize(function()
  e = e + 1
  if e == 1 then
    error 'first call fails'
  end
  return 'ok'
end, { name = 'flaky', ttl = '1h', capacity = 10 })
fails(flaky, 'first call fails')
eq(flaky(), 'ok')
eq(flaky(), 'ok')
eq(e, 2)

-- the same name and parameters share the cache; other parameters replace it
local s = 0
local function f()
  s = s + 1
  return s
end
local p = { name = 'shared', ttl = '1h', capacity = 5 }
eq(kumo.memoize(f, p)(), 1)
eq(kumo.memoize(f, p)(), 1)
eq(kumo.memoize(f, { name = 'shared', ttl = '2h', capacity = 5 })(), 2)

-- optional parameters are accepted
kumo.memoize(f, {
  name = 'opts',
  ttl = '1m',
  capacity = 1,
  invalidate_with_epoch = true,
  populate_timeout = '10s',
  retry_on_populate_timeout = true,
  allow_stale_reads = false,
})

-- bad parameters
fails(kumo.memoize, 'kumo.memoize: argument #1 must be a function', 1, {})
fails(kumo.memoize, 'argument #2 must be a table', f)
fails(kumo.memoize, 'missing field `ttl`', f, { name = 'x', capacity = 1 })
fails(kumo.memoize, "field `ttl` of argument #2: 'soon' is not a duration", f,
      { name = 'x', ttl = 'soon', capacity = 1 })
fails(kumo.memoize, 'field `capacity` of argument #2 must be a non-negative integer', f,
      { name = 'x', ttl = '1m' })
fails(kumo.memoize, 'field `name` of argument #2 must be a string', f, { ttl = '1m', capacity = 1 })
fails(kumo.memoize, 'unknown field `tll`', f, { name = 'x', tll = '1m', capacity = 1 })
fails(kumo.memoize, 'must be a boolean', f, { name = 'x', ttl = '1m', capacity = 1, allow_stale_reads = 'yes' })
fails(kumo.memoize, 'cannot use name `dns_resolver_mx` for a memoize cache', f,
      { name = 'dns_resolver_mx', ttl = '1m', capacity = 1 })
local keyless = kumo.memoize(f, { name = 'k', ttl = '1m', capacity = 1 })
fails(keyless, 'kumo.memoize: the arguments cannot be used as a cache key', print)

-- set_lruttl_cache_capacity
kumo.set_lruttl_cache_capacity('dns_resolver_mx', 128000)
fails(kumo.set_lruttl_cache_capacity, 'could not set capacity for cache user.x as that is not a pre-defined lruttl cache name', 'user.x', 1)
fails(kumo.set_lruttl_cache_capacity, 'argument #2 must be an integer', 'dns_resolver_mx', 'x')
