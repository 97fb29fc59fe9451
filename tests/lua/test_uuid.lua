-- kumo.uuid: the reference pages' examples, every field, each version's
-- version and variant bits and time ordering, and parse errors.
local kumo = require 'kumo'
local utils = require 'lib2_util'

-- kumo.uuid/index.md
local u = kumo.uuid.parse '69994630-3e27-11ef-91fc-cc28aa0a5c5a'
assert(tostring(u) == '69994630-3e27-11ef-91fc-cc28aa0a5c5a')
assert(u.hyphenated == '69994630-3e27-11ef-91fc-cc28aa0a5c5a')
assert(u.simple == '699946303e2711ef91fccc28aa0a5c5a')
assert(u.braced == '{69994630-3e27-11ef-91fc-cc28aa0a5c5a}')
assert(u.urn == 'urn:uuid:69994630-3e27-11ef-91fc-cc28aa0a5c5a')
assert(u.bytes == '\x69\x99\x46\x30\x3e\x27\x11\xef\x91\xfc\xcc\x28\xaa\x0a\x5c\x5a')
assert(kumo.encode.base64url_nopad_encode(u.bytes) == 'aZlGMD4nEe-R_MwoqgpcWg')

-- kumo.uuid/parse.md
local b = kumo.uuid.parse '{69994630-3e27-11ef-91fc-cc28aa0a5c5a}'
assert(b.hyphenated == '69994630-3e27-11ef-91fc-cc28aa0a5c5a')
-- every output form parses back, in either case
for _, form in ipairs { u.simple, u.braced, u.urn, u.hyphenated:upper(), 'URN:UUID:' .. u.simple } do
  utils.assert_eq(kumo.uuid.parse(form), u, form)
end
assert(u.nonexistent == nil)
utils.assert_eq(kumo.json_encode { id = u }, '{"id":"69994630-3e27-11ef-91fc-cc28aa0a5c5a"}')

local function version(x)
  return tonumber(x.hyphenated:sub(15, 15), 16)
end
local function variant_ok(x)
  return ('89ab'):find(x.hyphenated:sub(20, 20), 1, true) ~= nil
end

for v, fn in pairs { [1] = kumo.uuid.new_v1, [4] = kumo.uuid.new_v4, [6] = kumo.uuid.new_v6, [7] = kumo.uuid.new_v7 } do
  local a, b2 = fn(), fn()
  utils.assert_eq(version(a), v, 'version of new_v' .. v)
  assert(variant_ok(a), 'RFC 4122/9562 variant of new_v' .. v)
  assert(a ~= b2, 'two new_v' .. v .. ' are different')
  utils.assert_eq(#a.bytes, 16)
  utils.assert_eq(#a.simple, 32)
end

-- v1 and v6 carry the same clock and node; v6 and v7 sort by time
local v1 = kumo.uuid.new_v1()
local v6 = kumo.uuid.new_v6()
utils.assert_eq(v1.hyphenated:sub(20), v6.hyphenated:sub(20):gsub('^....', v1.hyphenated:sub(20, 23)), 'node of v1 and v6')
local function v1_time(x)
  local h = x.simple
  return tonumber(h:sub(14, 16) .. h:sub(9, 12) .. h:sub(1, 8), 16)
end
local function v6_time(x)
  local h = x.simple
  return tonumber(h:sub(1, 12) .. h:sub(14, 16), 16)
end
local dt = v6_time(v6) - v1_time(v1) -- 100 ns units
assert(dt >= 0 and dt < 10 * 1e7, 'v6 timestamp follows v1 timestamp: ' .. dt)
-- the v1 timestamp is the current time (100 ns since 1582-10-15)
local unix = (v1_time(v1) - 0x01B21DD213814000) / 1e7
assert(math.abs(unix - os.time()) < 5, 'v1 time ' .. unix)
local s7 = kumo.uuid.new_v7()
local ms = tonumber(s7.simple:sub(1, 12), 16)
assert(math.abs(ms / 1000 - os.time()) < 5, 'v7 time ' .. ms)
local prev = kumo.uuid.new_v6().simple
kumo.sleep(0.002)
assert(kumo.uuid.new_v6().simple > prev, 'v6 sorts by time')
prev = kumo.uuid.new_v7().simple
kumo.sleep(0.002)
assert(kumo.uuid.new_v7().simple > prev, 'v7 sorts by time')

-- errors
for _, bad in ipairs {
  '',
  '69994630-3e27-11ef-91fc-cc28aa0a5c5',
  '69994630-3e27-11ef-91fc-cc28aa0a5c5a0',
  '69994630x3e27-11ef-91fc-cc28aa0a5c5a',
  '{699946303e2711ef91fccc28aa0a5c5a}',
  '699946303e2711ef91fccc28aa0a5c5g',
  '\xff\xfe',
} do
  utils.assert_error({ 'kumo.uuid.parse', 'invalid UUID' }, kumo.uuid.parse, bad)
end
utils.assert_error({ 'kumo.uuid.parse', 'argument #1', 'table' }, kumo.uuid.parse, {})
utils.assert_error({ '...' }, kumo.uuid.parse, string.rep('a', 1000))
