-- message:parse_rfc3464 on the RFC 3464 examples and provider-style DSNs
-- (tests/e2e/data/reports), and kumo.generate_rfc3464_message as its page
-- (docs/reference/kumo/generate_rfc3464_message.md) describes it.
local function eq(a, b, what)
  if a ~= b then
    error(string.format('%s: got %q, want %q', what, tostring(a), tostring(b)), 2)
  end
end
local function read(name)
  local f = assert(io.open('../e2e/data/reports/' .. name, 'rb'))
  local d = f:read('a')
  f:close()
  return (d:gsub('\r?\n', '\r\n'))
end
local function mk(data, rcpt)
  return kumo.make_message('mailer-daemon@x.test', rcpt or 'bounces@example.com', data)
end

local r = mk(read 'rfc3464_b.eml'):parse_rfc3464()
eq(r.per_message.reporting_mta.name, 'cs.utk.edu', 'b reporting mta')
eq(#r.per_recipient, 3, 'b recipients')
eq(r.per_recipient[1].status.comment, '(permanent failure)', 'status comment')
eq(r.per_recipient[1].diagnostic_code.diagnostic,
   "550 'arathib@vnet.IBM.COM' is not a registered gateway user", 'unfolded diagnostic')
eq(r.per_recipient[2].action, 'delayed', 'delayed')
eq(r.per_recipient[3].remote_mta.name, 'sdcc13.ucsd.edu', 'remote mta')
assert(r.original_message:find('original message goes here', 1, true), 'original_message')

local g = mk(read 'gmail.eml'):parse_rfc3464()
eq(g.per_message.received_from_mta.name, 'mta1.example.com', 'received from')
eq(g.per_message.arrival_date, '2026-03-02T18:15:01Z', 'arrival date')
eq(g.per_message.extensions['x-original-message-id'][1], '<20260302181500.1234@example.com>',
   'per-message extension')
eq(g.per_recipient[1].final_recipient.recipient, 'no.such.user@gmail.com', 'gmail final')
eq(g.per_recipient[1].last_attempt_date, '2026-03-02T18:15:02Z', 'gmail last attempt')

local ms = mk(read 'microsoft.eml'):parse_rfc3464()
eq(ms.per_recipient[1].extensions['x-display-name'][1], 'someone', 'recipient extension')
assert(ms.original_message:find('^From: Billing'), 'headers-only original')

local y = mk(read 'yahoo.eml'):parse_rfc3464()
eq(y.per_recipient[1].original_recipient.recipient, 'gone.away@yahoo.com', 'angle brackets')
eq(y.per_recipient[2].will_retry_until, '2026-03-05T12:00:05Z', 'will retry')

-- an ARF is a report, but not a delivery status one
eq(mk(read 'jmrp.eml'):parse_rfc3464(), nil, 'arf is not a dsn')

-- generate_rfc3464_message: the page's bounce sample
local orig = mk('Content-Type: text/plain;\r\n  charset="us-ascii"\r\nSubject: Hello!\r\n\r\nhello there\r\n',
                'recip@target.example.com')
local params = {
  include_original_message = 'FullContent',
  enable_bounce = true,
  enable_expiration = true,
  reporting_mta = { mta_type = 'dns', name = 'mta1.example.com' },
  stable_content = true,
}
local rec = {
  type = 'Bounce', sender = 'sender@sender.example.com', recipient = 'recip@target.example.com',
  delivery_protocol = 'ESMTP',
  response = { code = 550, enhanced_code = { class = 5, subject = 7, detail = 1 },
               content = 'no thanks' },
  peer_address = { name = 'target.example.com', addr = '42.42.42.42' },
  created = 1057049557, timestamp = 1057056757,
}
local b = kumo.generate_rfc3464_message(params, orig, rec)
eq(tostring(b:sender()), '', 'null sender')
eq(tostring(b:recipient()), 'sender@sender.example.com', 'to the sender')
local text = b:get_data()
for _, want in ipairs {
  'Content-Type: multipart/report;\r\n  boundary="report-boundary";\r\n  report-type="delivery-status"\r\n',
  'Subject: Returned mail\r\n', 'Message-ID: <UUID@mta1.example.com>\r\n',
  'To: sender@sender.example.com\r\n',
  'From: Mail Delivery Subsystem <mailer-daemon@mta1.example.com>\r\n',
  'The message was received at Tue, 1 Jul 2003 08:52:37 +0000\r\n',
  'from sender@sender.example.com and addressed to recip@target.example.com.\r\n',
  'While communicating with target.example.com (42.42.42.42):\r\nResponse: 550 5.7.1 no thanks\r\n',
  'No further attempts will be made to deliver it.\r\n',
  'Reporting-MTA: dns; mta1.example.com\r\nArrival-Date: Tue, 1 Jul 2003 08:52:37 +0000\r\n',
  'Final-Recipient: rfc822;recip@target.example.com\r\nAction: failed\r\nStatus: 5.7.1 no thanks\r\n'
    .. 'Remote-MTA: dns; target.example.com\r\nDiagnostic-Code: smtp; 550 5.7.1 no thanks\r\n'
    .. 'Last-Attempt-Date: Tue, 1 Jul 2003 10:52:37 +0000\r\n',
  'Content-Type: message/rfc822\r\n\r\nContent-Type: text/plain;\r\n  charset="us-ascii"\r\nSubject: Hello!\r\n\r\nhello there\r\n--report-boundary--\r\n',
} do
  assert(text:find(want, 1, true), 'generated report lacks ' .. want .. '\n---\n' .. text)
end
-- the generated report reads back with the one parser
local back = b:parse_rfc3464()
eq(back.per_recipient[1].diagnostic_code.diagnostic, '550 5.7.1 no thanks', 'round trip')
eq(back.per_recipient[1].last_attempt_date, '2003-07-01T10:52:37Z', 'round trip date')

-- expiration, headers only
params.include_original_message = 'HeadersOnly'
rec.type = 'Expiration'
rec.response = { code = 551, enhanced_code = { class = 5, subject = 4, detail = 7 },
                 content = 'Next delivery time would be at SOME TIME which exceeds the expiry time EXPIRES configured via set_scheduling' }
local e = kumo.generate_rfc3464_message(params, orig, rec)
local et = e:get_data()
assert(et:find('Content-Type: text/rfc822-headers\r\n\r\nContent-Type: text/plain;', 1, true), et)
assert(not et:find('hello there', 1, true), 'headers only')
-- the page's expiration sample: ASCII parts, quoted-printable for the long lines
for _, want in ipairs {
  '--report-boundary\r\nContent-Type: text/plain;\r\n  charset="us-ascii"\r\n'
    .. 'Content-Transfer-Encoding: quoted-printable\r\n\r\n',
  'Status: 551 5.4.7 Next delivery time would be at SOME TIME which exceeds th=\r\n'
    .. 'e expiry time EXPIRES configured via set_scheduling\r\nThe message will be deleted',
  'Content-Type: message/delivery-status;\r\n  charset="us-ascii"\r\n',
  'Status: 5.4.7 Next delivery time would be at SOME TIME which exceeds the ex=\r\n'
    .. 'piry time EXPIRES configured via set_scheduling\r\n',
} do
  assert(et:find(want, 1, true), 'expiration report lacks ' .. want .. '\n---\n' .. et)
end
eq(e:parse_rfc3464().per_recipient[1].status.detail, 7, 'expiration status')

-- nil when not applicable: a disabled type, a non-ESMTP bounce, the null sender
params.enable_expiration = false
eq(kumo.generate_rfc3464_message(params, orig, rec), nil, 'expiration disabled')
rec.type = 'Bounce'
rec.delivery_protocol = 'Maildir'
eq(kumo.generate_rfc3464_message(params, orig, rec), nil, 'not ESMTP')
rec.delivery_protocol = 'ESMTP'
rec.sender = ''
eq(kumo.generate_rfc3464_message(params, orig, rec), nil, 'null sender')
rec.type = 'Delivery'
eq(kumo.generate_rfc3464_message(params, nil, rec), nil, 'delivery')

-- bad PARAMS
local function errs(fn, pattern)
  local ok, err = pcall(fn)
  assert(not ok, pattern .. ': expected an error')
  assert(tostring(err):find(pattern, 1, true), 'error was ' .. tostring(err))
end
errs(function() kumo.generate_rfc3464_message({ include_original_message = 'Some',
  reporting_mta = params.reporting_mta }, nil, rec) end, 'include_original_message must be')
errs(function() kumo.generate_rfc3464_message({ include_original_message = 'No' }, nil, rec) end,
  'reporting_mta is required')
errs(function() kumo.generate_rfc3464_message({ include_original_message = 'No', bogus = 1,
  reporting_mta = params.reporting_mta }, nil, rec) end, "unknown field 'bogus'")
rec.sender = 'a@b\r\nBcc: victim@x'
rec.type = 'Bounce'
errs(function() kumo.generate_rfc3464_message({ include_original_message = 'No', enable_bounce = true,
  reporting_mta = params.reporting_mta }, nil, rec) end, 'control character')
