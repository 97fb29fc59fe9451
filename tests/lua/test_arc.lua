-- msg:arc_verify and msg:arc_seal (RFC 8617): the examples of
-- arc_verify.md and arc_seal.md, chains sealed and verified with RSA and
-- Ed25519 keys published through kumo.dns.configure_test_resolver, the
-- AuthenticationResult (method arc, none / pass / fail with the first
-- reason, header.oldest-pass), the ARC set written (AAR, AMS, AS with i=
-- and cv=), tampering, a DNS failure, malformed sets, a failed chain left
-- unsealed, and argument errors. Interoperability with dkimpy and two
-- kumod hops are tests/e2e/test_arc.py.
local kumo = require 'kumo'
local utils = require 'lib2_util'

local dir = os.tmpname()
os.remove(dir)
assert(os.execute('mkdir -p ' .. dir))
local function sh(cmd)
  assert(os.execute(cmd), cmd)
end
local function read(p)
  local f = assert(io.open(p, 'rb'))
  local d = f:read('a')
  f:close()
  return d
end
sh('openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out ' .. dir .. '/rsa.pem 2>/dev/null')
sh('openssl pkey -in ' .. dir .. '/rsa.pem -pubout -outform DER 2>/dev/null | base64 -w0 > ' .. dir .. '/rsa.pub')
sh('openssl genpkey -algorithm ed25519 -out ' .. dir .. '/ed.pem 2>/dev/null')
-- the raw 32-byte Ed25519 public key is the last 32 bytes of its DER form
sh('openssl pkey -in ' .. dir .. '/ed.pem -pubout -outform DER 2>/dev/null | tail -c 32 | base64 -w0 > ' .. dir .. '/ed.pub')
local rsa_pub, ed_pub = read(dir .. '/rsa.pub'), read(dir .. '/ed.pub')

kumo.dns.configure_test_resolver {
  zones = {
    '$ORIGIN example.com.\n'
      .. 'default._domainkey 300 IN TXT "v=DKIM1; k=rsa; p=' .. rsa_pub .. '"\n'
      .. 'ed._domainkey 300 IN TXT "v=DKIM1; k=ed25519; p=' .. ed_pub .. '"\n'
      .. 'revoked._domainkey 300 IN TXT "v=DKIM1; k=rsa; p="\n',
  },
  servfail = { 'flaky._domainkey.example.com' },
}

local function rsa(selector, extra)
  local p = {
    domain = 'example.com',
    selector = selector or 'default',
    headers = { 'From', 'To', 'Subject' },
    key = dir .. '/rsa.pem',
  }
  for k, v in pairs(extra or {}) do
    p[k] = v
  end
  return kumo.dkim.rsa_sha256_signer(p)
end
local ed = kumo.dkim.ed25519_signer {
  domain = 'example.com',
  selector = 'ed',
  headers = { 'From', 'To', 'Subject' },
  key = dir .. '/ed.pem',
  over_sign = true,
  header_canonicalization = 'Simple',
  body_canonicalization = 'Simple',
}

local TEXT = 'From: Alice <alice@example.com>\r\nTo: bob@example.org\r\nSubject: hello\r\n'
  .. '\r\nThe body  of\r\nthe message\r\n'
local function msg_of(text)
  local m = kumo.make_message('alice@example.com', 'bob@example.org', text or TEXT)
  m:set_meta('hostname', 'mx.example.com')
  return m
end

local function expect_error(f, pat)
  local ok, err = pcall(f)
  assert(not ok, 'expected an error matching ' .. pat)
  assert(tostring(err):find(pat, 1, true), tostring(err))
end

local function unfold(s)
  return (s:gsub('\r\n', ''):gsub('[ \t]+', ' '))
end

-- no ARC sets: none, no reason, no props
local m = msg_of()
local r = m:arc_verify()
utils.assert_eq(r.method, 'arc')
utils.assert_eq(r.result, 'none')
assert(r.reason == nil and r.method_version == nil)
assert(next(r.props) == nil)

-- arc_seal.md's example, as written (kumo.spf.check_msg is used when kumod
-- has it; the key path points at this test's key)
local example = [[
kumo.on('smtp_server_message_received', function(msg, conn_meta)
  -- Collect together various authentication results.
  -- dkim verification returns a possibly empty list
  local results = msg:dkim_verify()
  local arc = msg:arc_verify()
  -- add the arc result to the list we got from dkim
  table.insert(results, arc)
  local spf = kumo.spf.check_msg(msg)
  -- add the spf result to the list we got from dkim
  table.insert(results, spf.result)

  local server_id = msg:get_meta 'hostname'

  -- Add a regular Authentication-Results header for the
  -- sake of consistency with ARC
  msg:add_authentication_results(server_id, results)

  -- Set up a signer; this is just an example that loads
  -- a key from a file on disk.
  local signer = kumo.dkim.rsa_sha256_signer {
    domain = msg:from_header().domain,
    selector = 'default',
    headers = { 'From', 'To', 'Subject' },
    key = 'example-private-dkim-key.pem',
  }

  -- Emits an ARC-Authentication-Results header,
  -- computes an ARC-Message-Signature header based on the settings
  -- in the signer, and then computes a final ARC-Seal header
  -- to seal the ARC chain of custody. Those 3 headers are
  -- added to the message.
  msg:arc_seal(signer, server_id, results)
end)
]]
example = example:gsub("'example%-private%-dkim%-key%.pem'", "'" .. dir .. "/rsa.pem'")
if not (kumo.spf and kumo.spf.check_msg) then
  example = example:gsub('  local spf = kumo.spf.check_msg%(msg%)\n', '')
    :gsub('  table.insert%(results, spf.result%)\n', '')
end
local handlers = {}
local env = setmetatable({
  kumo = setmetatable({ on = function(name, f) handlers[name] = f end }, { __index = kumo }),
}, { __index = _G })
assert(load(example, 'arc_seal.md', 't', env))()
local received = msg_of()
-- kumo.spf.check_msg reads where the message came from (the reception
-- meta an SMTP session sets)
received:set_meta('received_from', '192.0.2.1:4321')
received:set_meta('ehlo_domain', 'client.example.com')
handlers.smtp_server_message_received(received, {})
local data = received:get_data()
-- the three ARC headers on top (AS, AMS, AAR), then the Authentication-Results
assert(data:find('^ARC%-Seal: i=1; cv=none; a=rsa%-sha256; d=example%.com; s=default; t=%d+;'), data)
local ams = unfold(received:get_first_named_header_value('ARC-Message-Signature'))
assert(ams:find('^i=1; a=rsa%-sha256; d=example%.com; s=default; c=relaxed/relaxed; t=%d+; ' ..
  'bh=[%w+/=]+; h=from:to:subject; b=[%w+/= ]+$'), ams)
local aar = unfold(received:get_first_named_header_value('ARC-Authentication-Results'))
assert(aar:find('^i=1; mx%.example%.com; arc=none'), aar)
assert(data:find('\r\nAuthentication%-Results: mx%.example%.com;\r\n\tarc=none'), data)
-- and it verifies
r = received:arc_verify()
utils.assert_eq(r.result, 'pass', r.reason)
utils.assert_eq(r.props['header.oldest-pass'], '0')

-- arc_verify.md's example: a passing chain is let through, a failed one is
-- rejected with the documented response
assert(load([[
kumo.on('smtp_server_data', function(msg, conn_meta)
  local arc = msg:arc_verify()
  kumo.log_info('ARC result', kumo.serde.json_encode_pretty(arc))
  if arc.result == 'fail' then
    -- Please note that this is technically a "BAD" example, as
    -- RFC8617 says: a message with an Authenticated Received Chain
    -- with a Chain Validation Status of "fail" MUST be treated the
    -- same as a message with no Authenticated Received Chain
    kumo.reject(
      550,
      '5.7.29 ARC Validation failure: ' .. tostring(arc.reason)
    )
  end
end)
]], 'arc_verify.md', 't', env))()
handlers.smtp_server_data(received, {})
handlers.smtp_server_data(msg_of(), {})
local tampered = msg_of(data:gsub('the message', 'the massage'))
local ok, err = pcall(handlers.smtp_server_data, tampered, {})
assert(not ok)
utils.assert_eq(tostring(err), '550 5.7.29 ARC Validation failure: The ARC-Message-Signature for '
  .. 'instance 1 failed to validate: body hash did not verify')

-- a chain across hops: RSA, then Ed25519 with simple canonicalization and
-- over-signing, then RSA again; each hop verifies and seals what it got
m = msg_of()
local signers = { rsa(), ed, rsa(nil, { header_canonicalization = 'Simple' }) }
for i, s in ipairs(signers) do
  local before = m:arc_verify()
  utils.assert_eq(before.result, i == 1 and 'none' or 'pass', before.reason)
  m:arc_seal(s, 'hop' .. i .. '.example.net', { before })
  r = m:arc_verify()
  utils.assert_eq(r.result, 'pass', r.reason)
  local aar_i = unfold(m:get_first_named_header_value('ARC-Authentication-Results'))
  assert(aar_i:find('^i=' .. i .. '; hop' .. i .. '%.example%.net; arc=' .. before.result), aar_i)
  assert(m:get_data():find('^ARC%-Seal: i=' .. i .. '; cv=' .. (i == 1 and 'none' or 'pass')))
end
local ams2 = m:get_all_named_header_values('ARC-Message-Signature')[2]:gsub('%s', '')
assert(ams2:find('c=simple/simple;', 1, true) and ams2:find('h=from:from:to:to:subject:subject;', 1, true), ams2)
local three = m:get_data()

-- a header the newest AMS signs, changed after sealing
tampered = msg_of((three:gsub('Subject: hello', 'Subject: HELLO')))
r = tampered:arc_verify()
utils.assert_eq(r.result, 'fail')
utils.assert_eq(r.reason, 'The ARC-Message-Signature for instance 3 failed to validate: ' ..
  'signature did not verify')
-- a changed AAR breaks the seals over it
tampered = msg_of((three:gsub('hop1%.example%.net', 'hop1.example.bad')))
r = tampered:arc_verify()
utils.assert_eq(r.result, 'fail')
utils.assert_eq(r.reason, 'The ARC-Seal for instance 3 failed to validate: signature did not verify')
utils.assert_eq(r.props['header.oldest-pass'], '0')
-- sealing a failed chain leaves the message as it was
tampered:arc_seal(rsa(), 'mx.example.com', { r })
utils.assert_eq(tampered:get_data(), (three:gsub('hop1%.example%.net', 'hop1.example.bad')))

-- keys: a DNS failure, a revoked key, no key
for _, case in ipairs {
  { 'flaky', 'key unavailable: ' },
  { 'revoked', 'key revoked' },
  { 'absent', 'no key for signature' },
} do
  m = msg_of()
  m:arc_seal(rsa(case[1]), 'mx.example.com', {})
  r = m:arc_verify()
  utils.assert_eq(r.result, 'fail')
  local want = 'The ARC-Message-Signature for instance 1 failed to validate: ' .. case[2]
  utils.assert_eq(r.reason:sub(1, #want), want)
end
-- with no results, the AAR says none
aar = unfold(m:get_first_named_header_value('ARC-Authentication-Results'))
utils.assert_eq(aar, 'i=1; mx.example.com; none')

-- malformed sets: the documented fail with the first reason
local AS1 = 'ARC-Seal: i=1; cv=none; a=rsa-sha256; d=example.com; s=default; b=AAAA\r\n'
local AMS1 = 'ARC-Message-Signature: i=1; a=rsa-sha256; d=example.com; s=default; h=from; bh=AAAA; b=AAAA\r\n'
local AAR1 = 'ARC-Authentication-Results: i=1; mx.example.com; none\r\n'
for _, case in ipairs {
  { AS1 .. AMS1, 'The ARC Set with instance 1 is missing some of its constituent headers' },
  { AS1 .. AS1 .. AMS1 .. AAR1, 'There are duplicate ARC-Seal header(s) for instance 1' },
  { AS1:gsub('i=1', 'i=2'):gsub('none', 'pass') .. AMS1:gsub('i=1', 'i=2') .. AAR1:gsub('i=1', 'i=2'),
    'The ARC Set with instance 1 is missing' },
  { AS1:gsub('i=1', 'i=51') .. AMS1 .. AAR1,
    'An ARC-Seal header could not be parsed: ARC instance tag is invalid' },
  { AS1 .. AMS1 .. AAR1, 'The ARC-Message-Signature for instance 1 failed to validate: ' ..
    'signature syntax error: bh= is not a SHA-256 hash' },
} do
  r = msg_of(case[1] .. TEXT):arc_verify()
  utils.assert_eq(r.result, 'fail')
  utils.assert_eq(r.reason, case[2])
end

-- argument errors
m = msg_of()
expect_error(function() m:arc_verify(42) end, 'msg:arc_verify: argument #1 must be a resolver name')
expect_error(function() m:arc_verify('other') end, 'resolver other is not defined')
expect_error(function() m:arc_seal('signer', 'mx', {}) end,
  'msg:arc_seal: argument #1 (signer) must be a signer made by kumo.dkim.rsa_sha256_signer')
expect_error(function() m:arc_seal(rsa(), nil, {}) end, 'argument #2 (server_id) must be a string')
expect_error(function() m:arc_seal(rsa(), 'mx', 'pass') end, 'argument #3 (results) must be an array')
expect_error(function() m:arc_seal(rsa(), 'mx', { 'pass' }) end, 'results[1] must be a table')
expect_error(function() m:arc_seal(rsa(), 'mx', {}, 'other') end, 'resolver other is not defined')
utils.assert_eq(m:get_data(), TEXT)
print('ok')
