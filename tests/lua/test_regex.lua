-- kumo.regex (docs/reference/regex) and kumo.regex_set_map
-- (docs/reference/kumo.regex_set_map): the pages' examples, the Rust-syntax
-- checks of src/lua/lib/rx.h, limits and bad arguments.
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

-- compile.md examples
do
  local re = kumo.regex.compile "'([^']+)'\\s+\\((\\d{4})\\)"
  local cap = re:captures "Not my favorite movie: 'Citizen Kane' (1941)."
  assert(cap[0] == "'Citizen Kane' (1941)")
  assert(cap[1] == 'Citizen Kane')
  assert(cap[2] == '1941')
end
do
  local re = kumo.regex.compile "'(?<title>[^']+)'\\s+\\((?<year>\\d{4})\\)"
  local cap = re:captures "Not my favorite movie: 'Citizen Kane' (1941)."
  assert(cap[0] == "'Citizen Kane' (1941)")
  assert(cap.title == 'Citizen Kane')
  assert(cap.year == '1941')
end
do
  local re = kumo.regex.compile 'oo'
  assert(re:is_match 'foo')
end
do
  local re = kumo.regex.compile 'o+'
  assert(re:find 'food' == 'oo')
  assert(re:find 'fooood' == 'oooo')
end
do
  local re = kumo.regex.compile '\\b\\w{13}\\b'
  local res = re:find_all 'Retroactively relinquishing remunerations is reprehensible.'
  assert(kumo.json_encode(res) == '["Retroactively","relinquishing","remunerations","reprehensible"]')
end
do
  local re = kumo.regex.compile '[^01]+'
  assert(re:replace('1078910', '') == '1010')
end
do
  local re = kumo.regex.compile '(?P<last>[^,\\s]+),\\s+(?P<first>\\S+)'
  assert(re:replace('Springsteen, Bruce', '$first $last') == 'Bruce Springsteen')
end
do
  local re = kumo.regex.compile '[ \\t]+'
  local res = re:split 'a b \t  c\td    e'
  assert(kumo.json_encode(res) == '["a","b","c","d","e"]')
end

-- replacement syntax: $N, ${N}, longest name, $$, unknown groups
local re = kumo.regex.compile '(\\w)(\\d)'
eq(re:replace_all('a1 b2 c3', '$2$1'), '1a 2b 3c')
eq(re:replacen('a1 b2 c3', 2, '[$0]'), '[a1] [b2] c3')
eq(re:replacen('a1 b2 c3', 0, 'x'), 'x x x')
eq(re:replace('a1', '$1a'), '') -- $1a is the (missing) group named 1a
eq(re:replace('a1', '${1}a'), 'aa')
eq(re:replace('a1', '$$1'), '$1')
eq(re:replace('a1', '$9'), '')
eq(re:replace('a1', 'cost: $'), 'cost: $')
eq(re:replace('zzz', 'x'), 'zzz') -- no match: unchanged
-- captures: unmatched optional groups are absent; no match is nil
local opt = kumo.regex.compile '(a)(b)?(?<c>c)?'
local cap = opt:captures 'a'
eq(cap[1], 'a')
eq(cap[2], nil)
eq(cap.c, nil)
eq(opt:captures 'zzz', nil)
eq(opt:find 'zzz', nil)
-- Rust semantics that PCRE2 needs options for
assert(not kumo.regex.compile('a$'):is_match 'a\n') -- $ is end of text only
assert(kumo.regex.compile('(?m)a$'):is_match 'a\nb')
assert(kumo.regex.compile('^\\w+$'):is_match 'héllo') -- Unicode \w
assert(kumo.regex.compile('^\\d$'):is_match '٣') -- Unicode \d
assert(kumo.regex.compile('(?i)É'):is_match 'é')
assert(kumo.regex.compile('^.$'):is_match 'é') -- . is a character, not a byte
assert(not kumo.regex.compile('.'):is_match '\n')
assert(kumo.regex.compile('\\u00e9\\u{e9}'):is_match 'éé')
assert(kumo.regex.compile('^\\v$'):is_match '\v') -- Rust \v: the vertical tab only
assert(not kumo.regex.compile('^\\v$'):is_match '\n')
-- fancy-regex extensions, same meaning in PCRE2
assert(kumo.regex.compile('(\\w)\\1'):is_match 'hello')
assert(kumo.regex.compile('foo(?=bar)'):find 'foobar' == 'foo')
assert(kumo.regex.compile('(?<=\\$)\\d+'):find 'cost $42' == '42')
assert(kumo.regex.compile('(?>a+)b'):is_match 'aab')
assert(not kumo.regex.compile('a++a'):is_match 'aaa')
-- empty matches advance one character (not one byte)
eq(kumo.json_encode(kumo.regex.compile('x*'):split 'aé'), '["","a","é",""]')
eq(kumo.json_encode(kumo.regex.compile('a*'):find_all 'baaac'), '["","aaa","",""]')
-- invalid UTF-8 haystacks never match there, and never fail
assert(kumo.regex.compile('b'):is_match '\255b')
assert(not kumo.regex.compile('^.$'):is_match '\255')
eq(kumo.regex.compile('x'):replace_all('\255x\255', 'y'), '\255y\255')
-- escape
eq(kumo.regex.escape 'a.b*c(d)[e]{f}|g^h$i#j&k-l~m\\', 'a\\.b\\*c\\(d\\)\\[e\\]\\{f\\}\\|g\\^h\\$i\\#j\\&k\\-l\\~m\\\\')
local lit = 'price: $5.00 (approx) [a-z]'
assert(kumo.regex.compile('^' .. kumo.regex.escape(lit) .. '$'):is_match(lit))

-- refused: constructs whose meaning differs between Rust and PCRE2
for _, p in ipairs {
  '[a-z&&[^aeiou]]', '[a--b]', '[[:alpha:][0-9]]', '\\Z', '\\h', '\\R', '\\X', '\\K', '\\G',
  '\\Qa.b\\E', '\\e', '\\cA', '\\g1', '\\o{7}', '\\0', '\\12', '\\b{start}', '\\<', '(?#c)',
  '(?|a|b)', '(?R)', '(?1)', '(?&n)', '(?P>n)', '(?C1)', '(*SKIP)', "(?'n'a)", 'a{,3}', '(?n)',
  '(?J)', '(?xx)', '(?R)a', '(?u)a',
} do
  fails(kumo.regex.compile, 'kumo.regex.compile: invalid pattern: unsupported', p)
end
assert(kumo.regex.compile('[[:alpha:]]'):is_match 'x') -- POSIX classes are the same in both
fails(kumo.regex.compile, 'kumo.regex.compile: invalid pattern: missing closing parenthesis', '(a')
fails(kumo.regex.compile, 'must be a string, not nil', nil)
fails(kumo.regex.compile, 'backslash', 'a\\')
-- catastrophic backtracking is an error, not a stall
local evil = kumo.regex.compile '(a+)+$'
fails(function()
  evil:is_match(string.rep('a', 40) .. 'b')
end, 'regex:is_match: the pattern backtracked too much')
fails(function()
  evil:replace_all(string.rep('a', 40) .. 'b', 'x')
end, 'backtracked too much')
-- methods need a regex and strings
fails(function()
  re.find('x', 'y')
end, 'regex:find: must be called as a method')
fails(function()
  re:find(nil)
end, 'regex:find: argument #2 must be a string')
fails(function()
  re:replacen('x', 'y', 'z')
end, 'regex:replacen: argument #3 must be an integer')
assert(require('kumo.regex') == kumo.regex)

-- regex_set_map: the page's example
do
  local map = kumo.regex_set_map.new {
    hello = 'hello',
    bye = 'bye',
    later = 'bye',
    ['Good day'] = 'hello',
  }
  assert(map['hello there'] == 'hello')
  assert(map['goodbye'] == 'bye')
  assert(map['see you later'] == 'bye')
  assert(map['not.set'] == nil)
  assert(map['Good day to you'] == 'hello')
  assert(map[42] == nil)
end
do
  -- alternations and flags stay inside their own pattern
  local map = kumo.regex_set_map.new { ['^(?i)a|b$'] = 1, ['^c$'] = 2 }
  eq(map['Axx'], 1)
  eq(map['xxb'], 1)
  eq(map['c'], 2)
  eq(map['xc'], nil)
  local empty = kumo.regex_set_map.new()
  eq(empty['x'], nil)
  fails(function()
    empty['x'] = 1
  end, 'immutable')
end
-- the plain regex crate has no fancy extensions: refused by name
fails(kumo.regex_set_map.new, "pattern '(?=x)': unsupported at offset 0: look-ahead", { ['(?=x)'] = 1 })
fails(kumo.regex_set_map.new, 'backreferences', { ['(a)\\1'] = 1 })
fails(kumo.regex_set_map.new, 'atomic groups', { ['(?>a)'] = 1 })
fails(kumo.regex_set_map.new, 'possessive', { ['a++'] = 1 })
fails(kumo.regex_set_map.new, "compiling rules: pattern '(a'", { ['(a'] = 1 })
fails(kumo.regex_set_map.new, 'argument #1 must be a table', 'x')
fails(kumo.regex_set_map.new, 'keys of argument #1 must be pattern strings', { 'x' })
