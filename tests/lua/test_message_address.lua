-- msg:from_header / to_header / get_address_header and the AddressHeader
-- object (docs/reference/message/from_header.md, to_header.md,
-- get_address_header.md, docs/reference/addressheader/*, address/user.md).
local function mk(data)
  return kumo.make_message('sender@example.com', 'rcpt@example.com', data)
end
local function eq(a, b, what)
  if a ~= b then
    error(string.format('%s: got %q, want %q', what, tostring(a), tostring(b)), 2)
  end
end
local function errs(fn, pattern, what)
  local ok, err = pcall(fn)
  assert(not ok, what .. ': expected an error')
  assert(tostring(err):find(pattern, 1, true), what .. ': error was ' .. tostring(err))
end

local msg = mk(
  'From: John Smith <first.last@example.com>\r\n'
    .. 'To: user@example.com, "Smith, Jane" <jane@example.com>,\r\n'
    .. ' The A Team: bodie@example.com, Doyle <doyle@example.com>;\r\n'
    .. 'Cc: "info@"@example.com\r\n'
    .. 'Reply-To: =?UTF-8?q?Andr=C3=A9?= <andre@example.com>\r\n'
    .. 'Sender: undisclosed-recipients:;\r\n'
    .. 'X-Broken: John Smith\r\n'
    .. '\r\nbody\r\n'
)

-- addressheader fields on a single address (page examples)
local from = msg:from_header()
eq(from.user, 'first.last', 'from.user')
eq(from.domain, 'example.com', 'from.domain')
eq(from.email, 'first.last@example.com', 'from.email')
eq(from.name, 'John Smith', 'from.name')
eq(
  tostring(from),
  '[{"Address":{"name":"John Smith","address":"first.last@example.com"}}]',
  'tostring(from)'
)

-- the list field flattens groups; entries have the same fields
local to = msg:to_header()
local list = to.list
eq(#list, 4, 'to.list length')
eq(tostring(list[1]), '{"name":null,"address":"user@example.com"}', 'list[1]')
eq(tostring(list[2]), '{"name":"Smith, Jane","address":"jane@example.com"}', 'list[2]')
eq(list[2].name, 'Smith, Jane', 'list[2].name')
eq(list[3].user, 'bodie', 'group member user')
eq(list[4].domain, 'example.com', 'group member domain')
eq(list[4].name, 'Doyle', 'group member name')
-- single-address accessors refuse lists and groups
errs(function() return to.user end, 'is not a simple single address', 'to.user')
errs(function() return to.email end, 'is not a simple single address', 'to.email')
local sender = msg:get_address_header('Sender')
errs(function() return sender.domain end, 'is not a simple address', 'group.domain')
eq(#sender.list, 0, 'empty group list')

-- quoted local part: user is normalized, email re-quoted
local cc = msg:get_address_header('cc')
eq(cc.user, 'info@', 'quoted user')
eq(cc.email, '"info@"@example.com', 'quoted email')
-- RFC 2047 display names are decoded
eq(msg:get_address_header('Reply-To').name, 'André', 'encoded name')
-- absent header: nil; malformed: an error naming the method
eq(msg:get_address_header('Bcc'), nil, 'absent')
errs(function() msg:get_address_header('X-Broken') end, 'get_address_header: invalid X-Broken header', 'malformed')
eq(mk('Subject: x\r\n\r\n'):from_header(), nil, 'no From')
eq(mk('To: <>\r\n\r\n'):to_header().email, nil, 'no email')

-- EnvelopeAddress.user normalization (address/user.md table)
for _, row in ipairs {
  { 'foo@example.com', 'foo' },
  { '"foo"@example.com', 'foo' },
  { '"f\\oo"@example.com', 'foo' },
  { '"info@"@example.com', 'info@' },
} do
  local m = kumo.make_message(row[1], 'r@example.com', 'Subject: x\r\n\r\n')
  eq(m:sender().user, row[2], 'user of ' .. row[1])
  eq(m:sender().domain, 'example.com', 'domain of ' .. row[1])
end

-- hostile input: invalid UTF-8, huge lists, deep comments: results or errors, never a crash
msg = mk('From: \xff\xfe <u\xa4@x.y>\r\nTo: ' .. string.rep('a@b.c, ', 20000) .. 'z@b.c\r\n'
  .. 'Cc: ' .. string.rep('(', 100000) .. 'a@b.c\r\n\r\n')
eq(msg:from_header().user, 'u\u{FFFD}', 'repaired user')
eq(#msg:to_header().list, 20001, 'huge list')
errs(function() msg:get_address_header('Cc') end, 'unterminated comment', 'deep comment')
errs(function() kumo.make_message('s\xff@x', 'r@x', '') end, 'not valid UTF-8', 'make_message utf-8')
