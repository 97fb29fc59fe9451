-- kumo.string (docs/reference/string): every page's example, then edge
-- cases with Rust's str semantics and bad arguments.
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
local J = kumo.json_encode

-- the reference pages' examples
assert(kumo.string.ends_with('hello world', 'world'))
assert(kumo.string.starts_with('hello world', 'hello'))
assert(kumo.string.psl_domain 'www.example.com' == 'example.com')
assert(kumo.string.psl_suffix 'www.example.com' == 'com')
assert(kumo.string.replace('this is old', 'old', 'new') == 'this is new')
assert(kumo.string.replacen('foo foo 123 foo', 'foo', 'new', 2) == 'new new 123 foo')
assert(J(kumo.string.rsplit('Mary had a little lamb', ' ')) == '["lamb","little","a","had","Mary"]')
assert(J(kumo.string.rsplitn('Mary had a little lamb', 3, ' ')) == '["lamb","little","Mary had a"]')
assert(J(kumo.string.split('Mary had a little lamb', ' ')) == '["Mary","had","a","little","lamb"]')
assert(J(kumo.string.split_ascii_whitespace 'Mary had a little lamb') == '["Mary","had","a","little","lamb"]')
assert(J(kumo.string.split_whitespace 'Mary had a little lamb') == '["Mary","had","a","little","lamb"]')
assert(J(kumo.string.splitn('Mary had a little lamb', 3, ' ')) == '["Mary","had","a little lamb"]')
assert(kumo.string.trim '\n Hello\tworld\t\n' == 'Hello\tworld')
assert(kumo.string.trim_end '\n Hello\tworld\t\n' == '\n Hello\tworld')
assert(kumo.string.trim_start '\n Hello\tworld\t\n' == 'Hello\tworld\t\n')
eq(kumo.string.wrap 'hello', 'hello')
eq(kumo.string.wrap(string.rep('A', 200), 75, 100), string.rep('A', 100) .. '\r\n\t' .. string.rep('A', 100))
eq(
  kumo.string.wrap(string.rep('hello there ', 10), 75, 100),
  'hello there hello there hello there hello there hello there hello there\r\n'
    .. '\thello there hello there hello there hello there'
)

-- wrap with small limits (soft 10, hard 15)
for _, case in ipairs {
  { 'foo', 'foo' },
  { 'hi there', 'hi there' },
  { 'hello world', 'hello\r\n\tworld' },
  { 'hello world ', 'hello\r\n\tworld' },
  { 'hello world foo bar baz woot woot', 'hello\r\n\tworld foo\r\n\tbar baz\r\n\twoot woot' },
  { 'hi there breakmepleaseIamtoolong', 'hi there\r\n\tbreakmepleaseIa\r\n\tmtoolong' },
} do
  eq(kumo.string.wrap(case[1], 10, 15), case[2], case[1])
end
eq(kumo.string.wrap(''), '')

-- Rust semantics: empty patterns, limits, non-ASCII
eq(J(kumo.string.split('abc', '')), '["","a","b","c",""]')
eq(J(kumo.string.rsplit('abc', '')), '["","c","b","a",""]')
eq(J(kumo.string.split('', ',')), '[""]')
eq(J(kumo.string.split('a,,b', ',')), '["a","","b"]')
eq(J(kumo.string.split('é,ü', '')), '["","é",",","ü",""]')
eq(J(kumo.string.splitn('a,b,c', 1, ',')), '["a,b,c"]')
eq(J(kumo.string.splitn('a,b,c', 0, ',')), '{}') -- no pieces: an empty table
eq(J(kumo.string.rsplitn('a,b,c', 2, ',')), '["c","a,b"]')
eq(kumo.string.replace('abc', '', '-'), '-a-b-c-')
eq(kumo.string.replace('', '', '-'), '-')
eq(kumo.string.replacen('abc', '', '-', 2), '-a-bc')
eq(kumo.string.replacen('aaa', 'a', 'b', 0), 'aaa')
eq(kumo.string.trim '\u{3000}\u{a0}x\u{2029}', 'x') -- Unicode White_Space
eq(kumo.string.trim '\u{200b}x', '\u{200b}x') -- zero width space is not White_Space
eq(J(kumo.string.split_whitespace 'a\u{3000}b\u{85}c'), '["a","b","c"]')
eq(J(kumo.string.split_ascii_whitespace 'a\u{3000}b\vc'), '["a\u{3000}b\\u000bc"]')
assert(not kumo.string.starts_with('he', 'hello'))
assert(kumo.string.ends_with('x', ''))
-- the PSL: wildcards, exceptions, case, trailing dot, unknown TLDs
eq(kumo.string.psl_suffix 'www.example.co.uk', 'co.uk')
eq(kumo.string.psl_domain 'a.b.example.co.uk', 'example.co.uk')
eq(kumo.string.psl_domain 'WWW.Example.COM.', 'example.com')
eq(kumo.string.psl_domain 'com', nil)
eq(kumo.string.psl_suffix 'foo.unknowntld', 'unknowntld')
eq(kumo.string.psl_domain 'foo.unknowntld', 'foo.unknowntld')
eq(kumo.string.psl_suffix 'x.y.kawasaki.jp', 'y.kawasaki.jp') -- *.kawasaki.jp
eq(kumo.string.psl_domain 'www.city.kawasaki.jp', 'city.kawasaki.jp') -- !city.kawasaki.jp
eq(kumo.string.psl_domain '', nil)

-- invalid UTF-8 never crashes: bytes are single characters
eq(kumo.string.trim ' \255 ', '\255')
eq(#kumo.string.split('\255\254', ''), 4)
eq(kumo.string.replace('\255a\255', '\255', 'x'), 'xax')
eq(kumo.string.wrap('\255\254\253 x', 2, 2), '\255\254\r\n\t\253\r\n\tx')

-- bad arguments name the function and the argument
fails(kumo.string.split, 'kumo.string.split: argument #1 must be a string, not nil', nil, ',')
fails(kumo.string.split, 'argument #2 must be a string, not table', 'a', {})
fails(kumo.string.splitn, 'kumo.string.splitn: argument #2 must be an integer', 'a', 'x', ',')
fails(kumo.string.splitn, 'must not be negative', 'a', -1, ',')
fails(kumo.string.replacen, 'kumo.string.replacen: argument #4', 'a', 'b', 'c')
fails(kumo.string.wrap, 'kumo.string.wrap: argument #2 must be an integer', 'x', 'y')
fails(kumo.string.trim, 'kumo.string.trim: argument #1', {})
fails(kumo.string.psl_domain, 'kumo.string.psl_domain: argument #1', nil)
-- the module is reachable by require too
assert(require('kumo.string') == kumo.string)
