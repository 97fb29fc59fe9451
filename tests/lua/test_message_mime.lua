-- MIME: msg:parse_mime, kumo.mimepart (parse, new_*, builder), MimePart,
-- HeaderMap and Header objects, msg:check_fix_conformance,
-- append_text_plain/html, parse_rfc3464 (docs/reference/message/,
-- kumo.mimepart/, mimepart/, headermap/, header/).
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

-- kumo.mimepart.parse (page example) and an exact round trip
local p = kumo.mimepart.parse 'Subject: hello\r\n\r\nbody\r\n'
eq(p.headers:subject(), 'hello', 'parse subject')
eq(p.body, 'body\r\n', 'parse body')
eq(tostring(p), 'Subject: hello\r\n\r\nbody\r\n', 'round trip')
eq(p.id, '0', 'root id')

local multi = 'From: John <j@example.com>\r\nTo: a@b.c, G: x@y.z;\r\n'
  .. 'Subject: =?UTF-8?q?caf=C3=A9?=\r\nMessage-ID: <id1@example.com>\r\n'
  .. 'References: <r1@x> <r2@y>\r\nMime-Version: 1.0\r\n'
  .. 'Date: Tue, 1 Jul 2003 10:52:37 +0200\r\n'
  .. 'Content-Type: multipart/mixed; boundary="XX"\r\n\r\n'
  .. 'preamble\r\n--XX\r\nContent-Type: text/plain; charset=iso-8859-1\r\n'
  .. 'Content-Transfer-Encoding: quoted-printable\r\n\r\nna=EFve\r\n'
  .. '--XX\r\nContent-Type: text/html\r\n\r\n<html><body>hi</body></html>\r\n'
  .. '--XX\r\nContent-Type: application/pdf; name="doc.pdf"\r\n'
  .. 'Content-Disposition: attachment; filename="report.pdf"\r\n'
  .. 'Content-ID: <cid1>\r\nContent-Transfer-Encoding: base64\r\n\r\naGVsbG8=\r\n'
  .. '--XX--\r\nepilogue\r\n'
local msg = mk(multi)
local root = msg:parse_mime()
eq(tostring(root), multi, 'multipart round trip is exact')
local h = root.headers
eq(h:subject(), 'café', 'subject decoded')
eq(h:message_id(), 'id1@example.com', 'message_id')
eq(h:references()[2], 'r2@y', 'references')
eq(h:mime_version(), '1.0', 'mime_version')
eq(h:from()[1].name, 'John', 'from name')
eq(h:from()[1].address.local_part, 'j', 'from local_part')
eq(h:to()[2].name, 'G', 'group name')
eq(h:to()[2].entries[1].address.domain, 'y.z', 'group entry')
eq(h:content_type().value, 'multipart/mixed', 'content_type value')
eq(h:content_type().parameters.boundary, 'XX', 'content_type boundary')
eq(h:cc(), nil, 'absent header')
eq(h:sender(), nil, 'sender missing is nil')
local s = msg:parse_mime():get_simple_structure()
eq(s.text_part.body, 'naïve', 'text part decoded from latin-1')
eq(s.html_part.body, '<html><body>hi</body></html>', 'html part')
eq(#s.attachments, 1, 'one attachment')
eq(s.attachments[1].file_name, 'report.pdf', 'file_name from disposition')
eq(s.attachments[1].content_type, 'application/pdf', 'attachment content_type')
eq(s.attachments[1].content_id, 'cid1', 'content_id')
eq(s.attachments[1].inline, false, 'inline')
eq(s.attachments[1].part.body, 'hello', 'attachment decoded')
eq(s.text_part.id, '0.0', 'child id')

-- header objects and iteration
local names = {}
for hdr in h:iter() do
  names[#names + 1] = hdr.name
end
eq(table.concat(names, ','), 'From,To,Subject,Message-ID,References,Mime-Version,Date,Content-Type', 'iter')
local n = 0
for hdr in h:iter 'to' do
  n = n + 1
  eq(hdr.value[1].address.local_part, 'a', 'header.value typed by name')
  eq(hdr.raw_value, 'a@b.c, G: x@y.z;', 'raw_value')
end
eq(n, 1, 'iter by name')
local subj = h:get_first_named('subject')
eq(subj.unstructured, 'café', 'unstructured')
eq(subj.value, 'café', 'value for Subject')
eq(h:get_first_named('content-type').mime_params.parameters.boundary, 'XX', 'mime_params')
errs(function() return subj.mailbox_list end, 'header.mailbox_list', 'not an address')
eq(h:get_first_named('nope'), nil, 'get_first_named nil')

-- header map edits and setters
h:set_subject('Grüße')
eq(h:subject(), 'Grüße', 'set_subject encodes')
assert(not h:get_first_named('subject').raw_value:find('\xc3'), 'encoded on the wire')
h:set_to { { name = 'Smith, J', address = { local_part = 'js', domain = 'x.y' } } }
eq(h:get_first_named('to').raw_value, '"Smith, J" <js@x.y>', 'set_to table')
h:set_cc('a@b.c, d@e.f')
eq(#h:cc(), 2, 'set_cc string')
errs(function() h:set_cc('not an address') end, 'set_cc', 'set_cc validates')
h:set_references { 'a@b', 'c@d' }
eq(h:get_first_named('references').raw_value, '<a@b> <c@d>', 'set_references')
h:set_content_type { value = 'multipart/mixed', parameters = { boundary = 'XX' } }
eq(h:content_type().parameters.boundary, 'XX', 'set_content_type table')
h:append('X-Test', 'v1')
h:prepend('X-First', 'v0')
eq(h:get_first_named('X-Test').value, 'v1', 'append')
h:remove_all_named('x-test')
eq(h:get_first_named('X-Test'), nil, 'remove_all_named')
assert(tostring(h):find('^X%-First: v0\r\n'), 'tostring(headermap)')

-- body assignment and replace_body (structure example: prepend to both parts)
msg = mk(multi)
root = msg:parse_mime()
s = root:get_simple_structure()
s.text_part.body = 'PREPENDED!\r\n' .. s.text_part.body
s.html_part.body = '<B>PREPENDED!</B>\r\n' .. s.html_part.body
msg:set_data(tostring(root))
s = msg:parse_mime():get_simple_structure()
eq(s.text_part.body, 'PREPENDED!\r\nnaïve', 'text prepended and re-encoded')
eq(s.html_part.body, '<B>PREPENDED!</B>\r\n<html><body>hi</body></html>', 'html prepended')
eq(#s.attachments, 1, 'attachment kept')
local leaf = kumo.mimepart.parse 'Content-Type: text/plain\r\n\r\nold'
leaf:replace_body('changed content', 'text/plain')
eq(leaf.body, 'changed content', 'replace_body')
leaf:replace_body('\xff\x00binary', 'application/octet-stream')
eq(leaf.body, '\xff\x00binary', 'binary body round trip')
eq(leaf.headers:content_transfer_encoding().value, 'base64', 'binary uses base64')

-- constructors (page examples)
local part = kumo.mimepart.new_text_plain 'Hello!'
eq(part.headers:content_type().value, 'text/plain', 'new_text_plain')
eq(part.body, 'Hello!', 'new_text_plain body')
eq(kumo.mimepart.new_html('<b>Hello</b>!').headers:content_type().value, 'text/html', 'new_html')
eq(kumo.mimepart.new_text('text/markdown', 'Some markdown text').body, 'Some markdown text', 'new_text')
errs(function() kumo.mimepart.new_text_plain('\xff') end, 'UTF-8', 'new_text_plain utf-8')
local bin = kumo.mimepart.new_binary('application/octet-stream', '\xbb\xaa', { file_name = 'binary.dat' })
eq(bin.headers:content_disposition().parameters.filename, 'binary.dat', 'new_binary file_name')
eq(bin.body, '\xbb\xaa', 'new_binary body')
assert(tostring(bin):find('u6o=', 1, true), 'base64 of bbaa')
local main = kumo.mimepart.new_text_plain 'Hello, I am the main message content'
local mm = kumo.mimepart.new_multipart('multipart/mixed', { main, bin }, 'S53NSUR9QJam33WHBKAceA')
local text = tostring(mm)
assert(text:find('--S53NSUR9QJam33WHBKAceA\r\nContent-Type: text/plain', 1, true), 'multipart text')
assert(text:find('--S53NSUR9QJam33WHBKAceA--', 1, true), 'close delimiter')
local back = kumo.mimepart.parse(text):get_simple_structure()
eq(back.text_part.body, 'Hello, I am the main message content', 'reparsed text')
eq(back.attachments[1].file_name, 'binary.dat', 'reparsed attachment')
local container = kumo.mimepart.new_multipart('multipart/mixed', {})
container:append_part(kumo.mimepart.new_text_plain 'appended')
eq(container:get_simple_structure().text_part.body, 'appended', 'append_part')
errs(function() part:append_part(bin) end, 'not a multipart', 'append_part to a leaf')

-- builder (page example, stable content)
local builder = kumo.mimepart.builder()
builder:text_plain 'Hello, plain'
builder:text_html '<b>Hello, html</b>'
builder:attach('text/plain', 'I am a plain text file with no options specified')
builder:attach('application/octet-stream', '\xaa\xbb', { file_name = 'binary.dat' })
builder:set_stable_content(true)
local built = builder:build()
local out = tostring(built)
for _, want in ipairs {
  'boundary="mm-boundary"', 'boundary="ma-boundary"', 'Mime-Version: 1.0',
  'Date: Tue, 1 Jul 2003 10:52:37 +0200', '--ma-boundary\r\nContent-Type: text/plain',
  'Hello, plain\r\n--ma-boundary\r\n', '<b>Hello, html</b>\r\n--ma-boundary--',
  'SSBhbSBhIHBsYWluIHRleHQgZmlsZSB3aXRoIG5vIG9wdGlvbnMgc3BlY2lmaWVk', 'qrs=',
  'filename="binary.dat"', '--mm-boundary--',
} do
  assert(out:find(want, 1, true), 'builder output lacks ' .. want .. '\n' .. out)
end
errs(function() builder:build() end, 'already built', 'builder consumed')
local st = kumo.mimepart.parse(out):get_simple_structure()
eq(st.text_part.body, 'Hello, plain', 'built text')
eq(st.html_part.body, '<b>Hello, html</b>', 'built html')
eq(#st.attachments, 2, 'built attachments')

-- parse_mime attachment-extraction example
for _, attachment in ipairs(mk(multi):parse_mime():get_simple_structure().attachments) do
  eq(attachment.file_name .. attachment.content_type .. attachment.part.body,
    'report.pdfapplication/pdfhello', 'attachment loop')
end

-- append_text_plain / append_text_html
msg = mk(multi)
eq(msg:append_text_plain('\r\n-- footer'), true, 'append_text_plain found')
eq(msg:parse_mime():get_simple_structure().text_part.body, 'naïve\r\n-- footer', 'appended text')
eq(msg:append_text_html('<img src="http://10.0.0.1/img_tracker.jpg" alt="open tracking pixel">'), true, 'html')
eq(msg:parse_mime():get_simple_structure().html_part.body,
  '<html><body>hi<img src="http://10.0.0.1/img_tracker.jpg" alt="open tracking pixel"></body></html>',
  'inserted before </body>')
msg = mk('Content-Type: text/html\r\n\r\n<p>no body tag</p>')
msg:append_text_html('<hr>')
eq(msg:parse_mime().body, '<p>no body tag</p><hr>', 'appended without body tag')
eq(mk('Content-Type: image/png\r\n\r\nxx'):append_text_plain('x'), false, 'no text part')

-- check_fix_conformance
local clean = 'From: a@example.com\r\nDate: Tue, 1 Jul 2003 10:52:37 +0200\r\n'
  .. 'Message-ID: <x@example.com>\r\nMime-Version: 1.0\r\nSubject: ok\r\n\r\nbody\r\n'
msg = mk(clean)
eq(msg:check_fix_conformance('MISSING_COLON_VALUE|LINE_TOO_LONG', ''), nil, 'clean passes')
eq(msg:get_data(), clean, 'clean untouched')
msg = mk('Subject: hi\r\n\r\nbody\r\n')
eq(msg:check_fix_conformance('MISSING_MESSAGE_ID_HEADER', ''),
  'Message has conformance issues: MISSING_MESSAGE_ID_HEADER', 'check message')
eq(msg:check_fix_conformance('MISSING_DATE_HEADER|MISSING_MIME_VERSION', ''),
  'Message has conformance issues: MISSING_DATE_HEADER|MISSING_MIME_VERSION', 'sorted names')
-- fixing missing headers only adds them
eq(msg:check_fix_conformance('MISSING_COLON_VALUE',
  'MISSING_DATE_HEADER|MISSING_MESSAGE_ID_HEADER|MISSING_MIME_VERSION'), nil, 'fix headers')
local fixed = msg:parse_mime().headers
assert(fixed:get_first_named('Date'), 'Date added')
eq(fixed:mime_version(), '1.0', 'Mime-Version added')
eq(fixed:message_id(), msg:id() .. '@example.com', 'Message-ID from id and sender domain')
eq(msg:check_fix_conformance('MISSING_DATE_HEADER|MISSING_MESSAGE_ID_HEADER|MISSING_MIME_VERSION', ''), nil, 'now conforming')
-- what is fixed raises no error (the page example)
msg = mk('Subject : spaced\r\nX-Long: ' .. string.rep('w ', 60) .. '\r\n\r\nline one\nlong '
  .. string.rep('x', 100) .. '\r\ncaf\xc3\xa9 and \xff\r\n')
local failed = msg:check_fix_conformance('MISSING_COLON_VALUE',
  'LINE_TOO_LONG|NAME_ENDS_WITH_SPACE|NEEDS_TRANSFER_ENCODING|NON_CANONICAL_LINE_ENDINGS|MISSING_DATE_HEADER|MISSING_MESSAGE_ID_HEADER|MISSING_MIME_VERSION')
eq(failed, nil, 'fixed')
eq(msg:check_fix_conformance('LINE_TOO_LONG|NAME_ENDS_WITH_SPACE|NEEDS_TRANSFER_ENCODING|NON_CANONICAL_LINE_ENDINGS|MISSING_DATE_HEADER|MISSING_MESSAGE_ID_HEADER|MISSING_MIME_VERSION', ''), nil, 'fixed message conforms')
local d = msg:get_data()
assert(not d:find('[\x80-\xff]'), 'no 8-bit bytes left')
assert(not d:find('[^\r]\n'), 'CRLF only')
eq(msg:get_first_named_header_value('Subject'), 'spaced', 'name space trimmed')
eq(msg:parse_mime().body, 'line one\r\nlong ' .. string.rep('x', 100) .. '\r\ncafé and \u{FFFD}\r\n',
  'body decoded back (lossy for the invalid byte)')
-- MISSING_COLON_VALUE is detected
eq(mk('Subject\r\nDate: x\r\n\r\nb'):check_fix_conformance('MISSING_COLON_VALUE', ''),
  'Message has conformance issues: MISSING_COLON_VALUE', 'missing colon')
errs(function() mk(clean):check_fix_conformance('BOGUS', '') end,
  "invalid MessageConformance flag 'BOGUS'", 'unknown flag')
-- detect_encoding with an include list: latin-1 text becomes UTF-8
msg = mk('Subject: x\r\nContent-Type: text/plain\r\n\r\ncaf\xe9\r\n')
msg:check_fix_conformance('', 'NEEDS_TRANSFER_ENCODING', {
  detect_encoding = true,
  include_encodings = { 'iso-8859-1' },
  exclude_encodings = {},
})
eq(msg:parse_mime().body, 'café\r\n', 'latin-1 converted')
errs(function() mk(clean):check_fix_conformance('', '', { bogus = 1 }) end, "unknown setting 'bogus'", 'settings')

-- parse_rfc3464 (page example report)
local dsn = 'From: MAILER-DAEMON@cs.utk.edu\r\nMime-Version: 1.0\r\n'
  .. 'Content-Type: multipart/report; report-type=delivery-status; boundary="RAA14128.773615765/CS.UTK.EDU"\r\n\r\n'
  .. '--RAA14128.773615765/CS.UTK.EDU\r\n\r\nhuman text\r\n'
  .. '--RAA14128.773615765/CS.UTK.EDU\r\ncontent-type: message/delivery-status\r\n\r\n'
  .. 'Reporting-MTA: dns; cs.utk.edu\r\n\r\n'
  .. 'Original-Recipient: rfc822;louisl@larry.slip.umd.edu\r\n'
  .. 'Final-Recipient: rfc822;louisl@larry.slip.umd.edu\r\nAction: failed\r\nStatus: 4.0.0\r\n'
  .. 'Diagnostic-Code: smtp; 426 connection timed out\r\n'
  .. 'Last-Attempt-Date: Thu, 7 Jul 1994 17:15:49 -0400\r\n\r\n'
  .. '--RAA14128.773615765/CS.UTK.EDU--\r\n'
local report = mk(dsn):parse_rfc3464()
eq(report.per_message.reporting_mta.mta_type, 'dns', 'mta_type')
eq(report.per_message.reporting_mta.name, 'cs.utk.edu', 'mta name')
local r1 = report.per_recipient[1]
eq(r1.original_recipient.recipient_type, 'rfc822', 'recipient_type')
eq(r1.final_recipient.recipient, 'louisl@larry.slip.umd.edu', 'recipient')
eq(r1.action, 'failed', 'action')
eq(r1.status.class .. '.' .. r1.status.subject .. '.' .. r1.status.detail, '4.0.0', 'status')
eq(r1.diagnostic_code.diagnostic_type, 'smtp', 'diagnostic_type')
eq(r1.diagnostic_code.diagnostic, '426 connection timed out', 'diagnostic')
eq(r1.last_attempt_date, '1994-07-07T21:15:49Z', 'last_attempt_date')
eq(mk(clean):parse_rfc3464(), nil, 'not a report')
errs(function() mk(dsn:gsub('Status: 4.0.0', 'Status: bogus')):parse_rfc3464() end, 'invalid status', 'bad status')
errs(function() mk(dsn:gsub('Final%-Recipient', 'X-Final')):parse_rfc3464() end, 'Final-Recipient', 'no final')

-- hostile MIME: missing boundaries, unterminated parts, deep nesting, junk
for _, bad in ipairs {
  'Content-Type: multipart/mixed\r\n\r\nno boundary param',
  'Content-Type: multipart/mixed; boundary=b\r\n\r\nno delimiter at all',
  'Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nunterminated',
  'Content-Type: multipart/mixed; boundary=""\r\n\r\n--\r\n',
  'Content-Type: text/plain; charset=x-unknown-charset\r\n\r\n\xff\xfe',
  'Content-Transfer-Encoding: base64\r\n\r\n!!!not base64===',
  'Content-Transfer-Encoding: quoted-printable\r\n\r\n=ZZ=\r\n=4',
  'Content-Type: text/plain; name*0*=utf-8\'\'%E2%82; name*1*=%AC\r\n\r\nx',
  '\xff\xfe\r\n\r\n',
  '',
  string.rep('Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\n', 200),
} do
  local m = mk(bad)
  local ok, err = pcall(function()
    local r = m:parse_mime()
    local st = r:get_simple_structure()
    tostring(r)
    if st.text_part then local _ = st.text_part.body end
    for _, a in ipairs(st.attachments) do local _ = a.part.body end
    m:check_fix_conformance('', 'LINE_TOO_LONG|NEEDS_TRANSFER_ENCODING|NON_CANONICAL_LINE_ENDINGS|MISSING_DATE_HEADER')
    m:append_text_plain('x')
    m:parse_rfc3464()
  end)
  assert(ok or type(err) == 'string', 'hostile input raised a non-string error')
end
local unterminated = mk('Content-Type: multipart/mixed; boundary=b\r\n\r\n--b\r\nContent-Type: text/plain\r\n\r\nlast part')
eq(unterminated:parse_mime():get_simple_structure().text_part.body, 'last part', 'missing close delimiter')
eq(mk('Content-Type: multipart/mixed\r\n\r\nraw'):parse_mime().body, 'raw', 'no boundary -> leaf')
