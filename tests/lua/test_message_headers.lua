-- Message header methods (docs/reference/message/*header*.md,
-- import_x_headers.md, remove_x_headers.md) and the header index: a message
-- of 64,000 header lines is read and edited in linear time (issue 25,
-- defect 3: it took 28.7 s when every lookup rescanned the block).
local function mk(data)
  return kumo.make_message('sender@example.com', 'rcpt@example.com', data)
end

local function eq(a, b, what)
  if a ~= b then
    error(string.format('%s: got %q, want %q', what, tostring(a), tostring(b)), 2)
  end
end

-- get_all_headers (page example)
local msg = mk(
  'Subject: The Subject\r\nDate: Sun Feb 26 02:45:02 PM MST 2023\r\n\r\nbody\r\n'
)
local h = msg:get_all_headers()
eq(#h, 2, 'get_all_headers count')
eq(h[1][1], 'Subject', 'h1 name')
eq(h[1][2], 'The Subject', 'h1 value')
eq(h[2][1], 'Date', 'h2 name')
eq(h[2][2], 'Sun Feb 26 02:45:02 PM MST 2023', 'h2 value')

-- decoding to UTF-8: encoded words, folding, invalid bytes
msg = mk(
  'Subject: =?UTF-8?q?caf=C3=A9?= =?ISO-8859-1?Q?_na=EFve?=\r\n'
    .. 'X-Folded: one\r\n two\r\n'
    .. 'X-Bad: t\xa4x\r\n\r\nbody'
)
eq(msg:get_first_named_header_value('subject'), 'café naïve', 'rfc2047')
eq(msg:get_first_named_header_value('X-Folded'), 'one two', 'unfolded')
eq(msg:get_first_named_header_value('X-Bad'), 't\u{FFFD}x', 'lossy utf-8')
eq(msg:get_first_named_header_value('Missing'), nil, 'absent header')

-- get_all_named_header_values / remove_all_named_headers
msg = mk('Received: a\r\nX-A: 1\r\nreceived: b\r\n\r\nbody')
local r = msg:get_all_named_header_values('Received')
eq(#r, 2, 'all named count')
eq(r[1] .. r[2], 'ab', 'all named values')
eq(#msg:get_all_named_header_values('Nope'), 0, 'all named empty')
msg:remove_all_named_headers('RECEIVED')
eq(msg:get_data(), 'X-A: 1\r\n\r\nbody', 'remove_all_named_headers')

-- prepend / append, with and without ENCODE
msg = mk('Subject: s\r\n\r\nbody')
msg:prepend_header('X-First', 'one')
msg:append_header('X-Last', 'two')
eq(msg:get_data(), 'X-First: one\r\nSubject: s\r\nX-Last: two\r\n\r\nbody', 'insert')
msg:append_header('X-Enc', 'caf\u{e9}', true)
eq(msg:get_first_named_header_value('X-Enc'), 'caf\u{e9}', 'encoded round trip')
assert(not msg:get_data():find('caf\xc3\xa9', 1, true), 'ENCODE must not leave 8-bit bytes')
assert(not pcall(msg.append_header, msg, 'Bad: Name', 'v'), 'invalid header name')

-- import_x_headers / remove_x_headers (page examples)
local body = 'X-Campaign-ID: 12345\r\nX-Mailer: foobar\r\nSubject: the subject\r\n\r\nThe body\r\n'
msg = mk(body)
msg:import_x_headers()
eq(msg:get_meta('x_campaign_id'), '12345', 'import all')
eq(msg:get_meta('x_mailer'), 'foobar', 'import all 2')
msg = mk(body)
msg:import_x_headers { 'x-campaign-id' }
eq(msg:get_meta('x_campaign_id'), '12345', 'import list')
eq(msg:get_meta('x_mailer'), nil, 'import list excludes')
msg = mk(body)
msg:remove_x_headers()
eq(msg:get_data(), 'Subject: the subject\r\n\r\nThe body\r\n', 'remove all x')
msg = mk(body)
msg:remove_x_headers { 'x-campaign-id' }
eq(msg:get_data(), 'X-Mailer: foobar\r\nSubject: the subject\r\n\r\nThe body\r\n', 'remove list')

-- huge header block: every method stays linear
local n = 64000
local parts = {}
for i = 1, n do
  parts[#parts + 1] = string.format('X-H%d: value %d\r\n', i % 97, i)
end
parts[#parts + 1] = 'Subject: last\r\n\r\nbody\r\n'
local huge = table.concat(parts)
msg = mk(huge)
local t0 = os.clock()
for _ = 1, 50 do
  eq(msg:get_first_named_header_value('Subject'), 'last', 'huge lookup')
end
eq(#msg:get_all_headers(), n + 1, 'huge get_all_headers')
eq(#msg:get_all_named_header_values('X-H5'), math.floor((n - 5) / 97) + 1, 'huge named')
msg:import_x_headers()
msg:remove_all_named_headers('X-H1')
msg:append_header('X-End', 'e')
msg:prepend_header('X-Begin', 'b')
eq(msg:get_first_named_header_value('X-End'), 'e', 'after edits')
msg:remove_x_headers()
eq(msg:get_data(), 'Subject: last\r\n\r\nbody\r\n', 'huge remove_x_headers')
local elapsed = os.clock() - t0
-- a generous bound: the quadratic code took 28 s for one pass of this size
assert(elapsed < 2.0, string.format('64,000 headers took %.2f s of CPU', elapsed))
print(string.format('64,000 header lines: %.3f s of CPU', elapsed))
