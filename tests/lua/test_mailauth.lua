-- msg:dkim_verify and msg:add_authentication_results: argument errors,
-- results that need no DNS (no signature, malformed, expired), and the
-- Authentication-Results header as KumoMTA writes it.
local kumo = require 'kumo'

local function msg_of(text)
  return kumo.make_message('a@example.com', 'b@example.com', text)
end

local function expect_error(f, pat)
  local ok, err = pcall(f)
  assert(not ok, 'expected an error matching ' .. pat)
  assert(tostring(err):find(pat, 1, true), tostring(err))
end

local m = msg_of 'From: a@example.com\r\nSubject: hi\r\n\r\nbody\r\n'
-- no signature: no results; the header says none
local r = m:dkim_verify()
assert(type(r) == 'table' and #r == 0)
m:add_authentication_results('mx.example.com', r)
local none = 'Authentication-Results: mx.example.com; none\r\n'
assert(m:get_data():sub(1, #none) == none, m:get_data())

-- malformed and expired signatures need no key
local s = msg_of('DKIM-Signature: v=1; a=rsa-sha256; nonsense\r\n'
  .. 'DKIM-Signature: v=1; a=rsa-sha256; d=example.com; s=sel; h=from; x=5; bh=AAAA; b=AAAAAAAAAAAA\r\n'
  .. 'From: a@example.com\r\n\r\nbody\r\n')
r = s:dkim_verify()
assert(#r == 2)
assert(r[1].result == 'permerror' and r[1].reason == 'signature tag list is malformed', r[1].reason)
assert(r[2].result == 'permerror' and r[2].reason == 'signature expired', r[2].reason)
assert(r[2].method == 'dkim' and r[2].method_version == nil)
assert(r[2].props['header.d'] == 'example.com' and r[2].props['header.i'] == '@example.com')
assert(r[2].props['header.s'] == 'sel' and r[2].props['header.x'] == '5')
assert(r[2].props['header.b'] == 'AAAAAAAA', r[2].props['header.b'])

-- the header: results in order, props sorted, values quoted when not tokens
local h = msg_of 'From: a@example.com\r\n\r\nx\r\n'
h:add_authentication_results('mx.example.com', {
  { method = 'dkim', result = 'pass', props = { ['header.s'] = 'sel', ['header.d'] = 'example.com',
    ['header.b'] = 'ab/cd+ef' } },
  { method = 'spf', method_version = 1, result = 'fail', reason = 'matched "-all"' },
})
local want = 'Authentication-Results: mx.example.com;\r\n\tdkim=pass\r\n\theader.b="ab/cd+ef"'
  .. '\r\n\theader.d=example.com\r\n\theader.s=sel;\r\n\tspf/1=fail reason="matched \\"-all\\""\r\n'
assert(h:get_data():sub(1, #want) == want, h:get_data())
-- the header parses back through the header object
local ar = h:get_first_named_header_value('Authentication-Results')
assert(ar:find('spf/1=fail', 1, true))

-- argument errors
expect_error(function() m:dkim_verify(42) end, 'msg:dkim_verify')
expect_error(function() m:dkim_verify('nope') end, 'resolver nope is not defined')
expect_error(function() m:add_authentication_results(nil, {}) end,
  'argument #1 (server_id) must be a string')
expect_error(function() m:add_authentication_results('x', 'pass') end,
  'argument #2 (results) must be an array')
expect_error(function() m:add_authentication_results('x', { 'pass' }) end,
  'results[1] must be a table')
expect_error(function() m:add_authentication_results('x', { { method = 'dkim' } }) end,
  'results[1].result must be a string')
expect_error(function() m:add_authentication_results('x', { { method = 'dkim', result = 'pass',
  method_version = 'one' } }) end, 'method_version must be a non-negative integer')
expect_error(function() m:add_authentication_results('x', { { method = 'dkim', result = 'pass',
  props = { 1, 2 } } }) end, 'props must map strings to strings')
print('ok')
