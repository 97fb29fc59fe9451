-- kumo.string.eval_template and kumo.string.normalize_smtp_response
-- (docs/reference/string): the pages' examples, the escaping chosen by the
-- template name, the dialects, and bad arguments.
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
local T = kumo.string.eval_template

-- the page's first example: a .json name writes values as JSON
eq(T('example.json', [[{{name}}]], { name = 'John' }), '"John"', 'json escaping')

-- the page's second example: a log record rendered as a JSON object
local log_record = kumo.serde.json_parse [=[
{
    "type": "Delivery",
    "id": "1d98076abbbc11ed940250ebf67f93bd",
    "sender": "user@sender.example.com",
    "size": 1047,
    "response": {"code": 250, "enhanced_code": {"class": 2, "subject": 0, "detail": 0},
                 "content": "OK ids=8a5475ccbbc611eda12250ebf67f93bd", "command": "."},
    "feedback_report": null,
    "meta": {"a": [1, "two"]},
    "tls_peer_subject_name": ["C=US","ST=CA"],
    "bogus": null
}
]=]
local out = T(
  'log.json',
  [[{
{%- for key, value in log_record | items | reject("none") -%}
{{key}}: {{value }}
{%- if not loop.last %},{% endif %}
{%- endfor -%}
}
]],
  { log_record = log_record }
)
local back = kumo.serde.json_parse(out)
eq(back.type, 'Delivery', 'type')
eq(back.size, 1047, 'size')
eq(back.response.enhanced_code.class, 2, 'nested')
eq(back.meta.a[2], 'two', 'array in map')
eq(back.tls_peer_subject_name[1], 'C=US', 'array')
eq(back.bogus, nil, 'null rejected')
-- keys come out sorted; no trailing comma, no trailing newline
assert(out:sub(1, 8) == '{"id": "', out)
assert(out:sub(-1) == '}', out)

-- escaping by name, and the dialects (as KumoMTA's own tests)
eq(T('example.html', [[{{ name }}]], { name = 'John & Co' }), 'John &amp; Co', 'html')
eq(T('example.txt', [[{{ name }}]], { name = 'John & Co' }), 'John & Co', 'txt')
eq(T('example.txt', [[{{ name }}]], { name = 'John & Co' }, 'Jinja'), 'John & Co', 'Jinja')
eq(T('example.txt', [[{{ name }}]], { name = 'John & Co' }, 'Static'), '{{ name }}', 'Static')
eq(T('example.json', [[{{ name }}]], { name = 'John' }, 'Handlebars'), 'John', 'hbs json')
eq(T('example.html', [[{{ name }}]], { name = 'John & Co' }, 'Handlebars'), 'John &amp; Co', 'hbs html')
eq(T('something.html', [[{{{ name }}}]], { name = 'A&B' }, 'Handlebars'), 'A&B', 'hbs raw')
eq(T('x.json', [[{{ n }} {{ b }} {{ m | safe }} {{ missing }}]], { n = 1.5, b = true, m = 'raw' }),
  '1.5 true raw ', 'json of other types')
eq(T('x.txt', [[{% for k, v in t | items %}{{k}}={{v}};{% endfor %}]], { t = { b = 2, a = 1 } }),
  'a=1;b=2;', 'items sorted')
eq(T('x.txt', [[{{ l | select("odd") | join(",") }}|{{ l | reject("odd") | join(",") }}]],
  { l = { 1, 2, 3, 4 } }), '1,3|2,4', 'select/reject')
eq(T('x.txt', [[{{ x }}]]), '', 'no context')
eq(T('something.txt', [[{{ response | normalize_smtp_response }}]],
  { response = '250 OK ids=8a5475ccbbc611eda12250ebf67f93bd' }, 'Jinja'),
  '250 OK ids={uuid}', 'normalize filter')

-- bad input: a Lua error naming the function and the argument
fails(T, 'kumo.string.eval_template: argument #1 (NAME) must be a string', nil, 'x', {})
fails(T, 'argument #2 (SOURCE) must be a string', 'n', {}, {})
fails(T, 'argument #3 (CONTEXT) must be a table', 'n', 'x', 5)
fails(T, "unknown dialect 'Mustache'", 'n', 'x', {}, 'Mustache')
fails(T, 'bad.txt', 'bad.txt', '{% for %}', {})
fails(T, "unknown test", 'bad.txt', '{{ l | reject("weird") }}', {})
fails(T, 'unknown filter', 'bad.txt', '{{ l | nosuch }}', {})
-- invalid UTF-8 in the context is refused, not crashed on
assert(not pcall(T, 'n.txt', '{{ x }}', { x = '\xff\xfe' }))

-- normalize_smtp_response: the page's example
local N = kumo.string.normalize_smtp_response
eq(
  N [[550 5.1.1 The email account that you tried to reach does not exist.
Please try double-checking the recipient's email address for typos
or unnecessary spaces. For more information, go to
https://support.google.com/mail/?p=NoSuchUser 41be03b00d2f7-b93bf44f0c0si6882731a12.803 - gsmtp]],
  "550 5.1.1 The email account that you tried to reach does not exist. "
    .. "Please try double-checking the recipient's email address for typos "
    .. 'or unnecessary spaces. For more information, go to '
    .. 'https://support.google.com/mail/?p=NoSuchUser {hash} - gsmtp',
  'page example'
)
-- one per documented rule
eq(N 'retry at 2025-11-06T17:11:34.261306612Z', 'retry at {timestamp}', 'timestamp')
eq(N 'id 10aa5da5-3f3b-4176-beb9-32875830f082', 'id {uuid}', 'uuid')
eq(N 'from 10.0.0.1 and 2001:db8::1', 'from {ipaddr} and {ipaddr}', 'ip')
eq(N 'blob aGVsbG8uCg==', 'blob {base64}', 'base64')
eq(N 'for some.body@gmail.com', 'for {email}', 'email')
eq(N 'OK id=41be03b00d2f7-b93bf44f0c0si', 'OK id={hash}', 'lhs=rhs')
eq(N 'in 11s 999ms', 'in {duration}', 'duration')
eq(N '', '', 'empty')
eq(N '\xff\xfe bytes', '\xff\xfe bytes', 'invalid UTF-8 kept')
fails(N, 'kumo.string.normalize_smtp_response: argument #1 (TEXT) must be a string', {})
