-- kumo.dkim signers: the reference pages' parameters (every key, the
-- KeySource forms: a file, inline key_data, an event handler), the signer
-- cache (a handler-provided key is fetched once for repeated calls), and
-- the errors. Signing itself is tested end to end (tests/e2e/test_dkim.py).
local kumo = require 'kumo'
local utils = require 'lib2_util'
local D = kumo.dkim

local dir = os.tmpname()
os.remove(dir)
assert(os.execute('mkdir -p ' .. dir))
local function sh(cmd)
  assert(os.execute(cmd .. ' >/dev/null 2>&1'), cmd)
end
sh('openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:1024 -out ' .. dir .. '/rsa.pem')
sh('openssl genrsa -traditional -out ' .. dir .. '/rsa1.pem 1024')
sh('openssl genpkey -algorithm ed25519 -out ' .. dir .. '/ed.pem')
sh('openssl pkey -in ' .. dir .. '/ed.pem -outform DER -out ' .. dir .. '/ed.der')
local function read(p)
  local f = assert(io.open(p, 'rb'))
  local d = f:read('a')
  f:close()
  return d
end

-- rsa_sha256_signer.md: the example, with a key file (PKCS#8 and PKCS#1 PEM)
local s = D.rsa_sha256_signer {
  domain = 'example.com',
  selector = 'default',
  headers = { 'From', 'To', 'Subject' },
  key = dir .. '/rsa.pem',
}
utils.assert_eq(tostring(s), 'DkimSigner(rsa-sha256, d=example.com, s=default)')
assert(D.rsa_sha256_signer { domain = 'example.com', selector = 'p1', headers = { 'From' }, key = dir .. '/rsa1.pem' })
-- every documented key
local all = D.rsa_sha256_signer {
  domain = 'example.com',
  selector = 'all',
  headers = { 'From', 'To', 'Subject' },
  atps = 'third.example',
  atpsh = 'Sha256',
  agent_user_identifier = 'bob@news.example.com',
  body_length = true,
  reporting = true,
  header_canonicalization = 'Simple',
  body_canonicalization = 'Relaxed',
  expiration = 86400,
  key = { key_data = read(dir .. '/rsa.pem') },
  over_sign = true,
  ttl = '5 mins',
}
utils.assert_eq(tostring(all), 'DkimSigner(rsa-sha256, d=example.com, s=all)')
assert(D.rsa_sha256_signer { domain = 'example.com', selector = 't', headers = { 'From' }, key = dir .. '/rsa.pem', ttl = 60 })

-- ed25519_signer.md: PKCS#8 DER and PEM
local e = D.ed25519_signer {
  domain = 'example.com',
  selector = 'default',
  headers = { 'From', 'To', 'Subject' },
  key = dir .. '/ed.der',
}
utils.assert_eq(tostring(e), 'DkimSigner(ed25519-sha256, d=example.com, s=default)')
assert(D.ed25519_signer { domain = 'example.com', selector = 'pem', headers = { 'From' }, key = dir .. '/ed.pem' })

-- a KeySource served by an event handler; the signer cache means the
-- handler runs once for the same parameters
local fetched = 0
kumo.on('dkim-test-key', function(name)
  fetched = fetched + 1
  utils.assert_eq(name, 'selector1')
  return read(dir .. '/ed.der')
end)
local params = {
  domain = 'example.com', selector = 'ev', headers = { 'From' },
  key = { event_name = 'dkim-test-key', event_args = { 'selector1' } },
}
assert(D.ed25519_signer(params))
assert(D.ed25519_signer(params))
utils.assert_eq(fetched, 1)
-- a different parameter is another signer, but the key comes from the key cache
params.over_sign = true
assert(D.ed25519_signer(params))
utils.assert_eq(fetched, 1)

-- errors
local function P(t)
  local p = { domain = 'example.com', selector = 'x', headers = { 'From' }, key = dir .. '/rsa.pem' }
  for k, v in pairs(t) do
    if v == 'nil' then p[k] = nil else p[k] = v end
  end
  return p
end
local R = D.rsa_sha256_signer
utils.assert_error({ 'kumo.dkim.rsa_sha256_signer', "missing required field 'domain'" }, R, P { domain = 'nil' })
utils.assert_error({ "missing required field 'selector'" }, R, P { selector = 'nil' })
utils.assert_error({ "field 'headers' must be a list" }, R, P { headers = 'nil' })
utils.assert_error({ "missing required field 'key'" }, R, P { key = 'nil' })
utils.assert_error({ 'missing From in signed headers' }, R, P { headers = { 'To' } })
utils.assert_error({ "unknown field 'oversign'" }, R, P { oversign = true })
utils.assert_error({ "field 'header_canonicalization' must be \"Relaxed\" or \"Simple\"" }, R, P { header_canonicalization = 'fancy' })
utils.assert_error({ "field 'atpsh' must be" }, R, P { atps = 'a.example', atpsh = 'md5' })
utils.assert_error({ 'atpsh needs atps' }, R, P { atpsh = 'Sha1' })
utils.assert_error({ 'agent_user_identifier must be an address at the signing domain' }, R, P { agent_user_identifier = 'u@other.example' })
utils.assert_error({ "field 'expiration' must be a number of seconds" }, R, P { expiration = -1 })
utils.assert_error({ "field 'ttl'" }, R, P { ttl = 'soon' })
utils.assert_error({ "field 'body_length' must be a boolean" }, R, P { body_length = 'yes' })
utils.assert_error({ 'domain must be a non-empty domain name' }, R, P { domain = 'a;b' })
utils.assert_error({ 'key: the key is not an RSA key' }, R, P { key = dir .. '/ed.pem' })
utils.assert_error({ 'key: the key is not an Ed25519 key' }, D.ed25519_signer, P { key = dir .. '/rsa.pem' })
utils.assert_error({ 'key: cannot parse the private key' }, R, P { key = { key_data = 'not a key' } })
utils.assert_error({ 'cannot open key file' }, R, P { key = dir .. '/missing.pem' })
utils.assert_error({ 'not supported yet' }, R, P { key = { vault_mount = 'secret', vault_path = 'dkim' } })
utils.assert_error({ 'argument #1 must be a table' }, R, 'example.com')

-- errors name the policy's line, also when the key fails to load
local ok, err = pcall(function() local r = R(P { domain = 'nil' }) return r end)
assert(not ok and err:find('test_dkim.lua:%d+: kumo.dkim.rsa_sha256_signer'), err)
ok, err = pcall(function() local r = R(P { key = dir .. '/missing.pem' }) return r end)
assert(not ok and err:find('test_dkim.lua:%d+: kumo.dkim.rsa_sha256_signer'), err)

-- set_signing_threads
utils.assert_error({ 'kumo.dkim.set_signing_threads', 'between 1 and 1024' }, D.set_signing_threads, 0)
D.set_signing_threads(1)
D.set_signing_threads(1)
utils.assert_error({ 'dkimsign pool is already configured' }, D.set_signing_threads, 2)

-- require 'kumo.dkim' is the same table
assert(require('kumo.dkim') == D)

os.execute('rm -rf ' .. dir)
