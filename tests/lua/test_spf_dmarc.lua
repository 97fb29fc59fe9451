-- kumo.spf.check_msg and kumo.dmarc.check_msg against records served by
-- kumo.dns.configure_test_resolver: every SPF result, include/redirect,
-- mx/ptr/exists, macros, IPv6, the lookup and void-lookup limits; DMARC
-- relaxed/strict alignment of SPF and DKIM, p/sp/pct, none, temperror,
-- permerror; the results feed msg:add_authentication_results.
local kumo = require 'kumo'

-- no name server is asked: every answer comes from the zones below
kumo.dns.configure_resolver { name_servers = { '127.0.0.1:9' }, options = { timeout = '1s', attempts = 1 } }
kumo.dns.configure_test_resolver {
  zones = {
    [[
$ORIGIN spf.example.
$TTL 300
pass      TXT "v=spf1 ip4:192.0.2.0/24 -all"
soft      TXT "v=spf1 ~all"
neutral   TXT "v=spf1 ?all"
nospf     TXT "google-site-verification=abc"
split     TXT "v=spf1 ip4:192.0.2.1" " -all"
syntax    TXT "v=spf1 ip4:192.0.2.300 -all"
inc       TXT "v=spf1 include:pass.spf.example -all"
redir     TXT "v=spf1 redirect=pass.spf.example"
mx        TXT "v=spf1 mx -all"
mx        MX 10 mail.spf.example.
mail      A 192.0.2.77
ptr       TXT "v=spf1 ptr:spf.example -all"
host      A 192.0.2.20
macro     TXT "v=spf1 exists:%{l}.%{ir}.allow.spf.example -all"
alice.1.2.0.192.allow A 127.0.0.2
v6        TXT "v=spf1 ip6:2001:db8::/32 -all"
helo      TXT "v=spf1 a -all"
helo      A 192.0.2.1
tempinc   TXT "v=spf1 include:flaky.spf.example -all"
limit     TXT "v=spf1 a:n1.spf.example a:n2.spf.example a:n3.spf.example a:n4.spf.example a:n5.spf.example a:n6.spf.example a:n7.spf.example a:n8.spf.example a:n9.spf.example a:n10.spf.example a:n11.spf.example +all"
voids     TXT "v=spf1 a:x1.spf.example a:x2.spf.example a:x3.spf.example +all"
n1 A 10.0.0.1
n2 A 10.0.0.1
n3 A 10.0.0.1
n4 A 10.0.0.1
n5 A 10.0.0.1
n6 A 10.0.0.1
n7 A 10.0.0.1
n8 A 10.0.0.1
n9 A 10.0.0.1
n10 A 10.0.0.1
n11 A 10.0.0.1
]],
    [[
$ORIGIN 2.0.192.in-addr.arpa.
20 PTR host.spf.example.
]],
    [[
$ORIGIN dmarc.example.
$TTL 300
_dmarc          TXT "v=DMARC1; p=reject; sp=quarantine; aspf=r; adkim=r"
strict          TXT "v=spf1 +all"
_dmarc.strict   TXT "v=DMARC1; p=quarantine; aspf=s; adkim=s"
sampled         TXT "v=spf1 +all"
_dmarc.sampled  TXT "v=DMARC1; p=reject; pct=0"
_dmarc.broken   TXT "v=DMARC1; p=maybe"
]],
    [[
$ORIGIN nodmarc.example.
@ TXT "v=spf1 +all"
]],
  },
  servfail = { 'flaky.spf.example', '_dmarc.flaky.example' },
}

local function msg_of(sender, ip, from)
  local m = kumo.make_message(sender, 'rcpt@dest.example',
    'From: ' .. (from or sender) .. '\r\nSubject: spf\r\n\r\nbody\r\n')
  m:set_meta('received_from', ip .. ':2525')
  m:set_meta('ehlo_domain', 'helo.spf.example')
  m:set_meta('hostname', 'mx.receiver.example')
  return m
end

local function spf(sender, ip)
  if ip:find(':') then
    ip = '[' .. ip .. ']'
  end
  local out = kumo.spf.check_msg(msg_of(sender, ip))
  assert(out.result.method == 'spf')
  assert(out.result.result == out.disposition)
  return out
end

local cases = {
  { 'a@pass.spf.example', '192.0.2.1', 'pass', "matched 'ip4:192.0.2.0/24' directive" },
  { 'a@pass.spf.example', '198.51.100.1', 'fail', "matched '-all' directive" },
  { 'a@soft.spf.example', '198.51.100.1', 'softfail', "matched '~all' directive" },
  { 'a@neutral.spf.example', '198.51.100.1', 'neutral', "matched '?all' directive" },
  { 'a@nospf.spf.example', '192.0.2.1', 'none', 'no SPF records found for nospf.spf.example' },
  { 'a@missing.spf.example', '192.0.2.1', 'none', 'no SPF records found for missing.spf.example' },
  { 'a@flaky.spf.example', '192.0.2.1', 'temperror', 'SERVFAIL' },
  { 'a@syntax.spf.example', '192.0.2.1', 'permerror', 'failed to parse spf record' },
  { 'a@split.spf.example', '192.0.2.1', 'pass', "matched 'ip4:192.0.2.1' directive" },
  { 'a@inc.spf.example', '192.0.2.9', 'pass', "matched 'include:pass.spf.example' directive" },
  { 'a@inc.spf.example', '198.51.100.1', 'fail', nil },
  { 'a@redir.spf.example', '198.51.100.1', 'fail', "matched '-all' directive" },
  { 'a@mx.spf.example', '192.0.2.77', 'pass', "matched 'mx' directive" },
  { 'a@mx.spf.example', '192.0.2.78', 'fail', nil },
  { 'a@ptr.spf.example', '192.0.2.20', 'pass', "matched 'ptr:spf.example' directive" },
  { 'a@ptr.spf.example', '192.0.2.21', 'fail', nil },
  { 'alice@macro.spf.example', '192.0.2.1', 'pass', nil },
  { 'bob@macro.spf.example', '192.0.2.1', 'fail', nil },
  { 'a@v6.spf.example', '2001:db8::25', 'pass', "matched 'ip6:2001:db8::/32' directive" },
  { 'a@v6.spf.example', '2001:db9::25', 'fail', nil },
  { 'a@tempinc.spf.example', '192.0.2.1', 'temperror', 'temperror while evaluating include:flaky.spf.example' },
  { 'a@limit.spf.example', '192.0.2.1', 'permerror', 'DNS lookup limits exceeded' },
  { 'a@voids.spf.example', '192.0.2.1', 'permerror', 'void lookup limit exceeded' },
  -- a null reverse path is checked as postmaster@ the HELO domain
  { '', '192.0.2.1', 'pass', "matched 'a' directive" },
}
for i, c in ipairs(cases) do
  local out = spf(c[1], c[2])
  assert(out.disposition == c[3],
    string.format('case %d %s from %s: %s (%s)', i, c[1], c[2], out.disposition, tostring(out.result.reason)))
  if c[4] then
    assert(out.result.reason == c[4] or out.result.reason:find(c[4], 1, true),
      string.format('case %d: reason %s', i, out.result.reason))
  end
  if c[1] ~= '' then
    assert(out.result.props['smtp.mailfrom'] == c[1])
  else
    assert(out.result.props['smtp.mailfrom'] == nil)
  end
  assert(out.result.props['smtp.helo'] == 'helo.spf.example')
end

-- argument errors
local ok, err = pcall(kumo.spf.check_msg, msg_of('a@pass.spf.example', '192.0.2.1'), 'other')
assert(not ok and tostring(err):find('resolver other is not defined', 1, true), err)
local m = kumo.make_message('a@pass.spf.example', 'b@x.example', 'From: a@x.example\r\n\r\n')
ok, err = pcall(kumo.spf.check_msg, m)
assert(not ok and tostring(err):find('received_from missing from metadata', 1, true), err)

-- ---- DMARC -------------------------------------------------------------------

local function dkim(d, result)
  return { method = 'dkim', result = result or 'pass', props = { ['header.d'] = d } }
end

local function dmarc(from, dkims, spf_sender, spf_ip)
  local m = msg_of(spf_sender or 'x@nodmarc.example', spf_ip or '192.0.2.1', from)
  local s = kumo.spf.check_msg(m)
  local out = kumo.dmarc.check_msg(m, dkims or {}, nil, s.result, false)
  assert(out.result.method == 'dmarc')
  return out, s, m
end

local dcases = {
  -- From, DKIM results, MAIL FROM, result, disposition, reason
  { 'a@dmarc.example', { dkim 'dmarc.example' }, nil, 'pass', 'Pass', 'DKIM aligned' },
  { 'a@dmarc.example', { dkim 'sub.dmarc.example' }, nil, 'pass', 'Pass', nil }, -- adkim=r
  { 'a@dmarc.example', { dkim('dmarc.example', 'fail') }, nil, 'fail', 'Reject', nil },
  { 'a@dmarc.example', {}, 'b@strict.dmarc.example', 'pass', 'Pass', 'SPF aligned' }, -- aspf=r
  { 'a@dmarc.example', { dkim 'other.example' }, 'b@nodmarc.example', 'fail', 'Reject', nil },
  { 'a@sub.dmarc.example', {}, nil, 'fail', 'Quarantine', nil }, -- sp from the org domain
  { 'a@strict.dmarc.example', { dkim 'dmarc.example' }, 'b@sampled.dmarc.example', 'fail', 'Quarantine', 'adkim=s' },
  { 'a@strict.dmarc.example', { dkim 'strict.dmarc.example' }, nil, 'pass', 'Pass', nil },
  { 'a@strict.dmarc.example', {}, 'b@strict.dmarc.example', 'pass', 'Pass', 'SPF aligned' },
  { 'a@sampled.dmarc.example', {}, nil, 'fail', 'Quarantine', 'sampled out' }, -- pct=0
  { 'a@nodmarc.example', {}, nil, 'none', 'None', 'no DMARC records found for nodmarc.example' },
  { 'a@flaky.example', {}, nil, 'temperror', 'TempError', 'SERVFAIL' },
  { 'a@broken.dmarc.example', {}, nil, 'permerror', 'PermError', 'invalid p= tag' },
}
for i, c in ipairs(dcases) do
  local out = dmarc(c[1], c[2], c[3])
  assert(out.result.result == c[4] and out.disposition == c[5],
    string.format('dmarc case %d %s: %s/%s (%s)', i, c[1], out.result.result, out.disposition, tostring(out.result.reason)))
  if c[6] then
    assert(out.result.reason:find(c[6], 1, true), string.format('dmarc case %d: %s', i, out.result.reason))
  end
end

-- no usable From
local nf = kumo.make_message('a@x.example', 'b@y.example', 'Subject: none\r\n\r\n')
local out = kumo.dmarc.check_msg(nf, {}, nil, { method = 'spf', result = 'pass' }, false)
assert(out.result.result == 'none' and out.result.reason == "Only single 'From:' header supported")
ok, err = pcall(kumo.dmarc.check_msg, nf, {}, nil, {}, true)
assert(not ok and tostring(err):find('DMARC reporting missing required fields', 1, true), tostring(err))

-- the results make an Authentication-Results header that reads back
local d, s, msg = dmarc('a@dmarc.example', {}, 'b@nodmarc.example')
msg:add_authentication_results('mx.receiver.example', { s.result, d.result })
local ar = msg:get_first_named_header_value('Authentication-Results')
assert(ar:find('spf=pass', 1, true) and ar:find('smtp.mailfrom=b@nodmarc.example', 1, true), ar)
assert(ar:find('dmarc=fail', 1, true) and ar:find('header.from=dmarc.example', 1, true), ar)
assert(ar:find('policy.published-domain-policy=reject', 1, true), ar)
print('ok')
