-- kumo.digest: the reference pages' examples, known vectors for every
-- algorithm, the BinaryResult fields, multiple and non-string arguments,
-- KeySources for the HMACs, and the errors.
local kumo = require 'kumo'
local utils = require 'lib2_util'

-- kumo.digest/index.md
local d = kumo.digest.sha1 'hello'
assert(tostring(d) == d.hex)
assert(d.hex == 'aaf4c61ddcc5e8a2dabede0f3b482cd9aea9434d')
assert(
  d.bytes
    == '\xaa\xf4\xc6\x1d\xdc\xc5\xe8\xa2\xda\xbe\xde\x0f\x3b\x48\x2c\xd9\xae\xa9\x43\x4d'
)
assert(d.base32 == 'VL2MMHO4YXUKFWV63YHTWSBM3GXKSQ2N')
assert(d.base32_nopad == 'VL2MMHO4YXUKFWV63YHTWSBM3GXKSQ2N')
assert(d.base32hex == 'LBQCC7ESONKA5MLURO7JMI1CR6NAIGQD')
assert(d.base64 == 'qvTGHdzF6KLavt4PO0gs2a6pQ00=')
assert(d.base64_nopad == 'qvTGHdzF6KLavt4PO0gs2a6pQ00')
assert(d.base64url == 'qvTGHdzF6KLavt4PO0gs2a6pQ00=')
assert(d.base64url_nopad == 'qvTGHdzF6KLavt4PO0gs2a6pQ00')
assert(d.nonexistent == nil)
assert(#d == 20)

-- one vector per algorithm (FIPS 180-4 / FIPS 202 values for "hello")
local vectors = {
  sha224 = 'ea09ae9cc6768c50fcee903ed054556e5bfc8347907f12598aa24193',
  sha256 = '2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824',
  sha384 = '59e1748777448c69de6b800d7a33bbfb9ff1b463e44354c3553bcdb9c666fa90125a3c79f90397bdf5f6a13de828684f',
  sha512 = '9b71d224bd62f3785d96d46ad3ea3d73319bfbc2890caadae2dff72519673ca72323c3d99ba5c11d7c7acc6e14b8c5da0c4663475c2e5c3adef46f73bcdec043',
  sha512_256 = 'e30d87cfa2a75db545eac4d61baf970366a8357c7f72fa95b52d0accb698f13a',
  sha3_256 = '3338be694f50c5f338814986cdf0686453a888b84f424d792af4b9202398f392',
  sha3_384 = '720aea11019ef06440fbf05d87aa24680a2153df3907b23631e7177ce620fa1330ff07c0fddee54699a4c3ee0ee9d887',
  sha3_512 = '75d527c368f2efe848ecf6b073a36767800805e9eef2b1857d5f984f036eb6df891d75f72d9b154518c1cd58835286d1da9a38deba3de98b5a53e5ed78a84976',
  crc32 = '3610a686',
}
for name, hex in pairs(vectors) do
  utils.assert_eq(kumo.digest[name]('hello').hex, hex, name)
end

-- several arguments are one stream; other types go in as JSON text
utils.assert_eq(kumo.digest.crc32('hello', 'world').hex, 'f9eb20ad')
utils.assert_eq(
  kumo.digest.sha256('hello', { 1, 2, 3 }, 42, true).hex,
  kumo.digest.sha256('hello[1,2,3]42true').hex
)
-- no argument: the digest of nothing
utils.assert_eq(
  kumo.digest.sha256().hex,
  'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'
)
-- binary and invalid UTF-8 input is fine
utils.assert_eq(#kumo.digest.sha1('\xff\xfe\x00\x80').bytes, 20)
-- a value JSON cannot represent
utils.assert_error({ 'kumo.digest.sha256', 'argument #2', 'function' }, kumo.digest.sha256, 'x', print)

-- the BinaryResult pages' HMAC examples (kumo.digest/hmac_*.md)
local key_bytes = { key_data = 'your key' }
utils.assert_eq(
  kumo.digest.hmac_sha1(key_bytes, 'your message').hex,
  '317d0dfd868a5c06c9444ac1328aa3e2bfd29fb2'
)
utils.assert_eq(
  kumo.digest.hmac_sha224(key_bytes, 'your message').hex,
  '991ff8089bd2a781d10c0568cbf2717794ac7b7fbcc9db049f19fc61'
)
utils.assert_eq(
  kumo.digest.hmac_sha256(key_bytes, 'your message').hex,
  '87fc1cec5c02f0991ae80f50e98eb2eb5213d07fc40417682a74448ac1deb07c'
)
-- The hmac_sha384 page prints this value cut short (its last 16 digits are
-- replaced by '|'); the full value agrees with the page's prefix.
local h384 = kumo.digest.hmac_sha384(key_bytes, 'your message').hex
assert(h384:sub(1, 86) == 'cd274957b95ce192d41dd52f83fd2eb9277aa2fa210ec798ee16e978801a89b7e7b956af3976d1a50a60ec')
utils.assert_eq(
  h384,
  'cd274957b95ce192d41dd52f83fd2eb9277aa2fa210ec798ee16e978801a89b7e7b956af3976d1a50a60ece87c7b2a66'
)
utils.assert_eq(
  kumo.digest.hmac_sha512(key_bytes, 'your message').hex,
  '2f5ddcdbd062a5392f07b0cd0262bf52c21bfb3db513296240cca8d5accc09d18d96be0a94995be4494c032f1eda946ad549fb61ccbe985d160f0b2f9588d34b'
)
-- RFC 4231 test case 2
utils.assert_eq(
  kumo.digest.hmac_sha256({ key_data = 'Jefe' }, 'what do ya want for nothing?').hex,
  '5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843'
)

-- a key from a file, and from an event handler
local path = os.tmpname()
local f = assert(io.open(path, 'wb'))
f:write 'your key'
f:close()
utils.assert_eq(kumo.digest.hmac_sha1(path, 'your message').hex, '317d0dfd868a5c06c9444ac1328aa3e2bfd29fb2')
os.remove(path)
kumo.on('test-digest-key', function(a, b)
  kumo.sleep(0.001) -- the key source handler may wait
  return a .. ' ' .. b
end)
utils.assert_eq(
  kumo.digest.hmac_sha1({ event_name = 'test-digest-key', event_args = { 'your', 'key' } }, 'your message').hex,
  '317d0dfd868a5c06c9444ac1328aa3e2bfd29fb2'
)

-- errors name the function, the argument and this file's line
local err = utils.assert_error({ 'kumo.digest.hmac_sha256', 'argument #2', 'string' }, function()
  local r = kumo.digest.hmac_sha256(key_bytes, 42) -- not a tail call: this line is named
  return r
end)
assert(err:find('test_digest.lua:%d+:'), err)
err = utils.assert_error({ 'kumo.digest.hmac_sha256', 'argument #1', 'cannot open key file' }, function()
  local r = kumo.digest.hmac_sha256('/nonexistent/key', 'x')
  return r
end)
assert(err:find('test_digest.lua:%d+:'), err)
utils.assert_error({ 'kumo.digest.hmac_sha1', 'argument #1', 'KeySource' }, kumo.digest.hmac_sha1, 42, 'x')
utils.assert_error({ 'no handler', 'nope' }, kumo.digest.hmac_sha1, { event_name = 'nope' }, 'x')
utils.assert_error('HTTP client', kumo.digest.hmac_sha1, { vault_mount = 'secret', vault_path = 'k' }, 'x')
