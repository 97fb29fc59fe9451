-- kumo.serde (docs/reference/kumo.serde) and the older kumo.json_* /
-- toml_* / yaml_* names.
local kumo = require 'kumo'

local function eq(a, b, what)
  if a ~= b then
    error(string.format('%s: expected %q, got %q', what or 'value', tostring(b), tostring(a)), 2)
  end
end

-- errors must name the function; msg is a plain substring
local function fails(fn, msg, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, 'expected an error containing ' .. msg)
  assert(tostring(err):find(msg, 1, true), 'error was: ' .. tostring(err))
end

local dir = os.getenv('TMPDIR') or '/tmp'
local function write(name, text)
  local path = dir .. '/kumod_test_serde_' .. name
  local f = assert(io.open(path, 'w'))
  f:write(text)
  f:close()
  return path
end

-- JSON: numbers as serde_json prints them
eq(kumo.serde.json_encode(1), '1')
eq(kumo.serde.json_encode(1.5), '1.5')
eq(kumo.serde.json_encode(3.0), '3.0')
eq(kumo.serde.json_encode(0.1), '0.1')
eq(kumo.serde.json_encode(1e20), '1e20')
eq(kumo.serde.json_encode(1.5e-7), '1.5e-7')
eq(kumo.serde.json_encode(0 / 0), 'null')
eq(kumo.serde.json_encode('a"b\\c\n\1'), '"a\\"b\\\\c\\n\\u0001"')
eq(kumo.serde.json_encode('héllo'), '"héllo"')
eq(kumo.serde.json_encode { 1, 2, 3 }, '[1,2,3]')
eq(kumo.serde.json_encode {}, '{}')
eq(kumo.serde.json_encode { a = { b = true } }, '{"a":{"b":true}}')
eq(kumo.serde.json_encode { [5] = 'x' }, '{"5":"x"}')
-- pretty: sorted keys, two spaces
eq(
  kumo.serde.json_encode_pretty { b = { 1, 2 }, a = {}, c = { x = 1 } },
  '{\n  "a": {},\n  "b": [\n    1,\n    2\n  ],\n  "c": {\n    "x": 1\n  }\n}'
)
-- parse, with the three comment styles of the reference page
local v = kumo.serde.json_parse [[
{
  /* block */ "a": 1, // line
  # shell
  "b": [true, null, "x // not a comment"],
  "c": 2.5
}
]]
eq(v.a, 1)
eq(math.type(v.a), 'integer')
eq(v.b[1], true)
eq(v.b[3], 'x // not a comment')
eq(v.c, 2.5)
local p = write('a.json', '{"k": [1, 2] /* c */}')
eq(kumo.serde.json_load(p).k[2], 2)
eq(kumo.json_load(p).k[1], 1)
eq(kumo.json_parse('"s"'), 's')
eq(kumo.json_decode('[1]')[1], 1)
eq(kumo.json_encode { 1 }, '[1]')
eq(kumo.json_encode_pretty { a = 1 }, '{\n  "a": 1\n}')
-- round trip
local doc = { name = 'x', list = { 1, 2, { y = 'z' } }, n = -12, f = 0.25 }
eq(kumo.serde.json_encode_pretty(kumo.serde.json_parse(kumo.serde.json_encode(doc))),
   kumo.serde.json_encode_pretty(doc))

fails(kumo.serde.json_parse, 'kumo.serde.json_parse: parsing argument #1 as json', '{')
fails(kumo.serde.json_parse, 'must be a string', nil)
fails(kumo.json_parse, 'kumo.json_parse:', '[1,')
fails(kumo.serde.json_parse, 'json', '"\255"') -- invalid UTF-8
fails(kumo.serde.json_encode, 'not valid UTF-8', '\255')
fails(kumo.serde.json_encode, 'cannot be converted to JSON', { f = print })
local cyc = {}
cyc.self = cyc
fails(kumo.serde.json_encode, 'nested too deeply', cyc)
fails(kumo.serde.json_load, 'kumo.serde.json_load: reading file', dir .. '/does/not/exist.json')

-- TOML
local t = kumo.serde.toml_parse [==[
title = "TOML"
[owner]
dob = 1979-05-27T07:32:00-08:00
day = 1979-05-27
at = 07:32:00
[[points]]
x = 1
[[points]]
x = 2.5
]==]
eq(t.title, 'TOML')
eq(t.owner.dob, '1979-05-27T07:32:00-08:00')
eq(t.owner.day, '1979-05-27')
eq(t.owner.at, '07:32:00')
eq(t.points[1].x, 1)
eq(t.points[2].x, 2.5)
eq(kumo.serde.toml_encode { a = 1, b = { c = 'x' } }, 'a = 1\n\n[b]\nc = "x"\n')
eq(kumo.serde.toml_encode_pretty_compact { z = 1, a = {}, m = { k = true } },
   'a = {}\nz = 1\n\n[m]\nk = true\n')
local back = kumo.serde.toml_parse(kumo.serde.toml_encode_pretty(doc))
eq(kumo.serde.json_encode_pretty(back), kumo.serde.json_encode_pretty(doc))
p = write('a.toml', '[x]\ny = "z"\n')
eq(kumo.serde.toml_load(p).x.y, 'z')
eq(kumo.toml_load(p).x.y, 'z')
eq(kumo.toml_parse('a = 1').a, 1)
eq(kumo.toml_encode { a = 1 }, 'a = 1\n')
fails(kumo.serde.toml_parse, 'kumo.serde.toml_parse: parsing argument #1 as toml: line 1', 'a = ')
fails(kumo.serde.toml_parse, 'invalid utf-8', 'a = "\255"')
fails(kumo.serde.toml_parse, 'no JSON/Lua-table representation', 'a = inf')
fails(kumo.serde.toml_encode, 'a TOML document must be a table', 'x')
fails(kumo.serde.toml_encode, 'kumo.serde.toml_encode', { f = print })
fails(kumo.toml_load, 'kumo.toml_load: parsing', write('bad.toml', '[x'))

-- YAML
local y = kumo.serde.yaml_parse [[
a: 1
b: [1, 2.5, true, "3", x, ~]
c: &anchor {d: 1}
e: *anchor
f: 'yes'
g: 0x1f
h: |
  two
  lines
]]
eq(y.a, 1)
eq(y.b[2], 2.5)
eq(y.b[3], true)
eq(y.b[4], '3')
eq(y.b[5], 'x')
eq(y.b[6], nil)
eq(y.e.d, 1)
eq(y.f, 'yes')
eq(y.g, 31)
eq(y.h, 'two\nlines\n')
eq(kumo.serde.yaml_parse(''), nil)
eq(kumo.serde.yaml_encode { a = 1 }, 'a: 1\n')
eq(kumo.serde.yaml_encode { 'true', '1', 'x' }, "- 'true'\n- '1'\n- x\n")
eq(kumo.serde.yaml_encode { s = 'two\nlines' }, 's: |-\n  two\n  lines\n')
local yback = kumo.serde.yaml_parse(kumo.serde.yaml_encode(doc))
eq(kumo.serde.json_encode_pretty(yback), kumo.serde.json_encode_pretty(doc))
p = write('a.yaml', 'k: [a, b]\n')
eq(kumo.serde.yaml_load(p).k[2], 'b')
eq(kumo.yaml_parse('k: v').k, 'v')
fails(kumo.serde.yaml_parse, 'kumo.serde.yaml_parse: parsing argument #1 as yaml: line 2', 'a: [1\n')
fails(kumo.serde.yaml_parse, 'more than one document', 'a: 1\n---\nb: 2\n')
fails(kumo.serde.yaml_parse, 'unknown anchor', 'a: *nope\n')
fails(kumo.serde.yaml_parse, 'a mapping key must be a scalar', '? [1]\n: 2\n')
fails(kumo.serde.yaml_parse, 'yaml', 'a: "\255"\n')
-- "billion laughs": aliases may not expand without bound
local laughs = { 'a: &a ["x","x","x","x","x","x","x","x","x","x"]' }
for i = 2, 9 do
  local prev = string.char(96 + i - 1)
  local name = string.char(96 + i)
  local refs = {}
  for _ = 1, 10 do
    table.insert(refs, '*' .. prev)
  end
  table.insert(laughs, string.format('%s: &%s [%s]', name, name, table.concat(refs, ',')))
end
fails(kumo.serde.yaml_parse, 'too large after alias expansion', table.concat(laughs, '\n'))
-- deep nesting is an error, not a crash
fails(kumo.serde.yaml_parse, 'nested too deeply', string.rep('[', 100000))
fails(kumo.serde.toml_parse, 'toml', 'a = ' .. string.rep('[', 100000))
fails(kumo.serde.json_parse, 'json', string.rep('[', 100000))
