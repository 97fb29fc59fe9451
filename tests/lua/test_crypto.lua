-- kumo.crypto: the reference pages' examples (AES with a key file, the
-- aws_sign_v4 examples), AWS's published SigV4 test vectors, FIPS-197 /
-- SP 800-38A AES vectors, and the errors.
local kumo = require 'kumo'
local utils = require 'lib2_util'
local C = kumo.crypto

-- kumo.crypto/aes_encrypt_block.md: a key stored in a file
local key_path = os.tmpname()
local f = assert(io.open(key_path, 'wb'))
f:write(kumo.encode.hex_decode '603deb1015ca71be2b73aef0857d7781' .. kumo.encode.hex_decode '1f352c073b6108d72d9810a30914dff4')
f:close()
local message = 'secret message'
local encrypted = C.aes_encrypt_block('Cbc', message, { key = key_path })
local decrypted = C.aes_decrypt_block('Cbc', encrypted.bytes, { key = key_path })
assert(decrypted == message)
-- the IV is random: two encryptions differ; IV + one padded block
assert(C.aes_encrypt_block('Cbc', message, { key = key_path }).bytes ~= encrypted.bytes)
utils.assert_eq(#encrypted.bytes, 32)
-- the BinaryResult itself may be passed back, and a bare KeySource works too
utils.assert_eq(C.aes_decrypt_block('Cbc', encrypted, key_path), message)
os.remove(key_path)

-- SP 800-38A F.1.1 (ECB-AES128), first block, plus the PKCS#7 padding block
local k128 = { key_data = kumo.encode.hex_decode '2b7e151628aed2a6abf7158809cf4f3c' }
local pt = kumo.encode.hex_decode '6bc1bee22e409f96e93d7e117393172a'
local ct = C.aes_encrypt_block('Ecb', pt, { key = k128 })
utils.assert_eq(ct.hex:sub(1, 32), '3ad77bb40d7a3660a89ecaf32466ef97')
utils.assert_eq(#ct.bytes, 32)
utils.assert_eq(C.aes_decrypt_block('Ecb', ct.bytes, { key = k128 }), pt)
-- binary (non-UTF-8) data and AES-256 (KumoMTA's own test values)
local binary = '\x00\x01\x02\x03\xff\xfe\xfd\xfc\x80\x90\xa0\xb0\xc0\xd0\xe0\xf0'
local k256 = { key_data = kumo.encode.hex_decode '2b7e151628aed2a6abf7158809cf4f3c2b7e151628aed2a6abf7158809cf4f3c' }
utils.assert_eq(C.aes_decrypt_block('Cbc', C.aes_encrypt_block('Cbc', binary, { key = k256 }).bytes, { key = k256 }), binary)
utils.assert_eq(C.aes_decrypt_block('Ecb', C.aes_encrypt_block('Ecb', '', { key = { key_data = '1234567890abcdef' } }), { key = { key_data = '1234567890abcdef' } }), '')

-- AES errors
utils.assert_error({ 'kumo.crypto.aes_encrypt_block', 'Key length must be 16 or 32' }, C.aes_encrypt_block, 'Cbc', 'x', { key = { key_data = 'short' } })
utils.assert_error({ 'kumo.crypto.aes_encrypt_block', "'Cbc' or 'Ecb'" }, C.aes_encrypt_block, 'Gcm', 'x', k128)
utils.assert_error({ 'kumo.crypto.aes_decrypt_block', 'prefixed by iv' }, C.aes_decrypt_block, 'Cbc', 'short', k128)
utils.assert_error({ 'kumo.crypto.aes_decrypt_block', 'Decryption failed' }, C.aes_decrypt_block, 'Ecb', string.rep('x', 16), k128)
utils.assert_error({ 'kumo.crypto.aes_decrypt_block', 'Decryption failed' }, C.aes_decrypt_block, 'Ecb', 'abc', k128)
utils.assert_error({ 'kumo.crypto.aes_encrypt_block', 'PLAINTEXT' }, C.aes_encrypt_block, 'Ecb', {}, k128)
utils.assert_error({ 'kumo.crypto.aes_encrypt_block', 'HTTP client' }, C.aes_encrypt_block, 'Ecb', 'x', { key = { vault_mount = 'secret', vault_path = 'keys/some-path' } })

-- AWS SigV4 test suite (docs.aws.amazon.com, "Signature Version 4 test suite"):
-- get-vanilla and post-vanilla
local aws = {
  access_key = { key_data = 'AKIDEXAMPLE' },
  secret_key = { key_data = 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY' },
  region = 'us-east-1',
  service = 'service',
  method = 'GET',
  uri = '/',
  headers = { Host = 'example.amazonaws.com' },
  timestamp = kumo.time.parse_rfc3339 '2015-08-30T12:36:00Z',
}
local r = C.aws_sign_v4(aws)
utils.assert_eq(
  r.canonical_request,
  'GET\n/\n\nhost:example.amazonaws.com\nx-amz-date:20150830T123600Z\n\nhost;x-amz-date\ne3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855'
)
utils.assert_eq(
  r.string_to_sign,
  'AWS4-HMAC-SHA256\n20150830T123600Z\n20150830/us-east-1/service/aws4_request\nbb579772317eb040ac9ed261061d46c1f17a8133879d6129b6e1c25292927e63'
)
utils.assert_eq(r.signature, '5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31')
utils.assert_eq(
  r.authorization,
  'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31'
)
utils.assert_eq(r.timestamp, '20150830T123600Z')
aws.method = 'POST'
utils.assert_eq(C.aws_sign_v4(aws).signature, '5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b')
-- get-vanilla-query-order-key-case: parameters are sorted
aws.method = 'GET'
aws.query_params = { Param2 = 'value2', Param1 = 'value1' }
local rq = C.aws_sign_v4(aws)
assert(rq.canonical_request:find('\nParam1=value1&Param2=value2\n', 1, true), rq.canonical_request)
utils.assert_eq(rq.signature, 'b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500')

-- kumo.crypto/aws_sign_v4.md: S3 GET (x-amz-content-sha256 signed) and SNS
-- POST, with the timestamp as an RFC 3339 string; the values agree with
-- KumoMTA's own test of this function
local s3 = C.aws_sign_v4 {
  access_key = { key_data = 'AKIAIOSFODNN7EXAMPLE' },
  secret_key = { key_data = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY' },
  region = 'us-east-1',
  service = 's3',
  method = 'GET',
  uri = '/test.txt',
  query_params = {},
  headers = { host = 'examplebucket.s3.amazonaws.com' },
  payload = '',
  timestamp = '2025-11-21T20:04:15Z',
}
utils.assert_eq(
  s3.authorization,
  'AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20251121/us-east-1/s3/aws4_request, SignedHeaders=host;x-amz-content-sha256;x-amz-date, Signature=b438a29cae8b5d9fd3634e7b70ea4fdedb1fea96260aae6a9cf2e6b0ad5a4028'
)
local sns = C.aws_sign_v4 {
  access_key = { key_data = 'AKIAIOSFODNN7EXAMPLE' },
  secret_key = { key_data = 'wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY' },
  region = 'us-east-1',
  service = 'sns',
  method = 'POST',
  uri = '/',
  query_params = {},
  headers = { host = 'sns.us-east-1.amazonaws.com', ['content-type'] = 'application/x-www-form-urlencoded' },
  payload = 'Action=Publish&Message=test&TopicArn=arn:aws:sns:us-east-1:123456789012:test',
  timestamp = '2025-11-21T20:04:15Z',
}
utils.assert_eq(
  sns.authorization,
  'AWS4-HMAC-SHA256 Credential=AKIAIOSFODNN7EXAMPLE/20251121/us-east-1/sns/aws4_request, SignedHeaders=content-type;host;x-amz-date, Signature=2b3db398c42cb0d2476ff7d66f97406a9d276d1404e219e2e6e3be8606a981ef'
)
-- session tokens are signed; header values are trimmed; paths encoded once
local st = C.aws_sign_v4 {
  access_key = { key_data = 'A' },
  secret_key = { key_data = 'S' },
  region = 'r',
  service = 'lambda',
  method = 'POST',
  uri = '/2015-03-31/functions/my function/invocations',
  headers = { host = 'h', ['X-Custom'] = '  a   b  ' },
  session_token = 'TOKEN',
}
assert(st.canonical_request:find('\n/2015-03-31/functions/my%20function/invocations\n', 1, true), st.canonical_request)
assert(st.canonical_request:find('\nx-custom:a b\n', 1, true), st.canonical_request)
assert(st.canonical_request:find('x-amz-security-token:TOKEN\n', 1, true), st.canonical_request)
assert(st.authorization:find('SignedHeaders=host;x-amz-date;x-amz-security-token;x-custom,', 1, true), st.authorization)
utils.assert_eq(#st.timestamp, 16)

-- aws_sign_v4 errors
utils.assert_error({ 'kumo.crypto.aws_sign_v4', "headers must include 'host'" }, C.aws_sign_v4, {
  access_key = { key_data = 'A' }, secret_key = { key_data = 'S' }, region = 'r', service = 's', method = 'GET', uri = '/',
})
utils.assert_error({ 'kumo.crypto.aws_sign_v4', "'region' must be a string" }, C.aws_sign_v4, {
  access_key = { key_data = 'A' }, secret_key = { key_data = 'S' }, service = 's', method = 'GET', uri = '/', headers = { host = 'h' },
})
utils.assert_error({ 'kumo.crypto.aws_sign_v4', 'secret_key' }, C.aws_sign_v4, {
  access_key = { key_data = 'A' }, secret_key = 42, region = 'r', service = 's', method = 'GET', uri = '/', headers = { host = 'h' },
})
utils.assert_error({ 'kumo.crypto.aws_sign_v4', 'argument #1 must be a table' }, C.aws_sign_v4, 'x')
utils.assert_error({ 'kumo.crypto.aws_sign_v4', 'timestamp' }, C.aws_sign_v4, {
  access_key = { key_data = 'A' }, secret_key = { key_data = 'S' }, region = 'r', service = 's', method = 'GET', uri = '/', headers = { host = 'h' }, timestamp = 'yesterday',
})
utils.assert_error({ 'kumo.crypto.aws_sign_v4', "'headers' must map strings to strings" }, C.aws_sign_v4, {
  access_key = { key_data = 'A' }, secret_key = { key_data = 'S' }, region = 'r', service = 's', method = 'GET', uri = '/', headers = { host = {} },
})
