-- Errors raised by the library name the policy line that made the call
-- (lualib_error): directly from a function, through pcall, from a nested
-- function, and from an event handler run by kumod's dispatcher.
local kumo = require 'kumo'
local me = debug.getinfo(1, 'S').short_src

local function expect_line(err, line, what)
  err = tostring(err)
  local want = me .. ':' .. line .. ': '
  assert(err:sub(1, #want) == want, what .. ': expected ' .. want .. ' in front of: ' .. err)
end

-- called directly from a Lua function: that function's line
local function split_five()
  return kumo.string.split(5) -- LINE_A
end
local LINE_A = debug.getinfo(split_five, 'S').linedefined + 1
local ok, err = pcall(split_five)
assert(not ok)
expect_line(err, LINE_A, 'direct call in a function')
assert(tostring(err):find('kumo.string.split', 1, true), err)

-- through pcall itself: the line that called pcall
local line_b = debug.getinfo(1, 'l').currentline + 1
ok, err = pcall(kumo.string.split, 5)
assert(not ok)
expect_line(err, line_b, 'pcall(kumo.string.split, 5)')

-- a function called from a function called from pcall: the innermost caller
local function inner()
  return kumo.serde.json_parse('{') -- LINE_C
end
local LINE_C = debug.getinfo(inner, 'S').linedefined + 1
local function outer()
  local r = inner()
  return r
end
ok, err = pcall(outer)
assert(not ok)
expect_line(err, LINE_C, 'nested')

-- at the top level of the script (no function in between)
local line_d = debug.getinfo(1, 'l').currentline + 1
ok, err = pcall(function() return kumo.string.split(5) end)
assert(not ok)
expect_line(err, line_d, 'anonymous function')

-- a handler run by the event dispatcher (through kumo.invoke_get_queue_config,
-- which calls the get_queue_config handlers as kumod does): the handler's line
local line_e
kumo.on('get_queue_config', function(domain)
  line_e = debug.getinfo(1, 'l').currentline + 1
  return kumo.string.split(5)
end)
ok, err = pcall(kumo.invoke_get_queue_config, 'example.com')
assert(not ok)
expect_line(err, line_e, 'event handler')
print('ok')
