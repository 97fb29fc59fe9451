-- msg:import_headers, import_scheduling_header, set_due, save, shrink
-- (docs/reference/message/import_headers.md, import_scheduling_header.md,
-- set_due.md, save.md, shrink.md, shrink_data.md).
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

local data = 'X-Campaign-Id: 42\r\nReceived: one\r\nX-Mailer: m\r\n'
  .. 'Received: two\r\nSubject: hello\r\nX-Tenant: t1\r\nX-Tenant: t2\r\n\r\nbody\r\n'

-- Import all X- headers and strip them
local msg = mk(data)
msg:import_headers { { name = 'X-*', remove = true } }
eq(msg:get_meta('x_campaign_id'), '42', 'x-* import')
eq(msg:get_meta('x_mailer'), 'm', 'x-* import 2')
eq(msg:get_meta('x_tenant'), 't2', 'default match is last')
eq(msg:get_data(), 'Received: one\r\nReceived: two\r\nSubject: hello\r\n\r\nbody\r\n', 'removed')

-- Every Received as an array, and the subject
msg = mk(data)
msg:import_headers { { name = 'Received', match = 'all' }, { name = 'Subject' } }
local rec = msg:get_meta('received')
eq(#rec, 2, 'all count')
eq(rec[1] .. ',' .. rec[2], 'one,two', 'all values')
eq(msg:get_meta('subject'), 'hello', 'subject')
eq(msg:get_data(), data, 'nothing removed')

-- precise rule first, wildcard catch-all after it; first match
msg = mk(data)
msg:import_headers {
  { name = 'X-Campaign-Id', target = 'campaign_id' },
  { name = 'X-Tenant', match = 'first' },
  { name = 'X-*' },
}
eq(msg:get_meta('campaign_id'), '42', 'target')
eq(msg:get_meta('x_campaign_id'), nil, 'first spec wins')
eq(msg:get_meta('x_tenant'), 't1', 'match first')
eq(msg:get_meta('x_mailer'), 'm', 'catch-all')

-- naming styles
for transform, key in pairs {
  snake_case = 'x_campaign_id',
  kebab_case = 'x-campaign-id',
  camel_case = 'xCampaignId',
  pascal_case = 'XCampaignId',
} do
  msg = mk(data)
  msg:import_headers { { name = 'X-Campaign-*', transform = transform } }
  eq(msg:get_meta(key), '42', transform)
end

-- no match: nothing written, not even an empty array
msg = mk(data)
msg:import_headers { { name = 'Nonexistent', match = 'all' } }
eq(msg:get_meta('nonexistent'), nil, 'no match')

-- invalid specs
msg = mk(data)
errs(function() msg:import_headers { { name = '*' } } end, 'bare', 'bare *')
errs(function() msg:import_headers { { name = '*-Id' } } end, 'trailing', 'leading *')
errs(function() msg:import_headers { { name = 'X-*-Id' } } end, 'trailing', 'interior *')
errs(function() msg:import_headers { { name = 'X-*', target = 'oops' } } end, 'target', 'target with *')
errs(function() msg:import_headers { { name = 'X-A', bogus = 1 } } end, "unknown field 'bogus'", 'unknown')
errs(function() msg:import_headers { { match = 'all' } } end, "'name' must be a string", 'no name')
errs(function() msg:import_headers { { name = 'A', match = 'most' } } end, 'invalid match', 'match')
errs(function() msg:import_headers { 'X-*' } end, 'not a table', 'spec type')
eq(msg:get_data(), data, 'errors leave the message alone')

-- import_scheduling_header (page example)
msg = mk(
  'X-Schedule: {"dow":"Mon,Wed","tz":"America/Phoenix","start":"09:00:00","end":"17:00:00"}\r\n'
    .. 'Subject: hello\r\n\r\nThis message should only be delivered during working hours\r\n'
)
local sched = msg:import_scheduling_header('X-Schedule', true)
eq(sched.dow, 'Mon,Wed', 'returned table')
eq(msg:get_scheduling().tz, 'America/Phoenix', 'applied')
eq(msg:get_first_named_header_value('X-Schedule'), nil, 'removed')
eq(msg:import_scheduling_header('X-Schedule'), nil, 'absent header -> nil')
msg = mk('X-Schedule: {"expires":"2030-01-01T00:00:00Z"}\r\n\r\n')
msg:import_scheduling_header('X-Schedule', false)
eq(msg:get_first_named_header_value('X-Schedule'), '{"expires":"2030-01-01T00:00:00Z"}', 'kept')
errs(function() mk('X-Schedule: {nope\r\n\r\n'):import_scheduling_header('X-Schedule') end,
  'not valid JSON', 'invalid json')
errs(function() mk('X-Schedule: {"bogus":1}\r\n\r\n'):import_scheduling_header('X-Schedule') end,
  "unknown field 'bogus'", 'invalid field')
errs(function() mk('X-Schedule: {"dow":"Mon"}\r\n\r\n'):import_scheduling_header('X-Schedule') end,
  'must be given together', 'partial window')

-- set_due
msg = mk('Subject: x\r\n\r\n')
msg:set_due('2024-03-08T17:51:42.481711Z')
msg:set_due('2024-03-08T17:51:42+01:00')
msg:set_due(nil)
errs(function() msg:set_due('next tuesday') end, 'set_due', 'bad date')
errs(function() msg:set_due('2024-02-30T00:00:00Z') end, 'set_due', 'impossible date')

-- save / shrink need the spool, which script mode does not open
errs(function() msg:save() end, 'save: the spool is not open', 'save without spool')
errs(function() msg:shrink() end, 'shrink: the spool is not open', 'shrink without spool')
errs(function() msg:shrink_data() end, 'shrink_data: the spool is not open', 'shrink_data')
