-- kumo.encode: RFC 4648 §10 test vectors for every codec, the lenient
-- padding of the decoders, binary data, charsets, and the errors.
local kumo = require 'kumo'
local utils = require 'lib2_util'
local E = kumo.encode

-- RFC 4648 §10
local inputs = { '', 'f', 'fo', 'foo', 'foob', 'fooba', 'foobar' }
local expect = {
  base64 = { '', 'Zg==', 'Zm8=', 'Zm9v', 'Zm9vYg==', 'Zm9vYmE=', 'Zm9vYmFy' },
  base32 = { '', 'MY======', 'MZXQ====', 'MZXW6===', 'MZXW6YQ=', 'MZXW6YTB', 'MZXW6YTBOI======' },
  base32hex = { '', 'CO======', 'CPNG====', 'CPNMU===', 'CPNMUOG=', 'CPNMUOJ1', 'CPNMUOJ1E8======' },
  hex = { '', '66', '666f', '666f6f', '666f6f62', '666f6f6261', '666f6f626172' },
}
for codec, outs in pairs(expect) do
  for i, input in ipairs(inputs) do
    local enc = E[codec .. '_encode'](input)
    utils.assert_eq(enc, outs[i], codec .. ' ' .. input)
    utils.assert_eq(E[codec .. '_decode'](enc), input, codec .. ' decode ' .. enc)
    if codec ~= 'hex' then
      local nopad = outs[i]:gsub('=', '')
      utils.assert_eq(E[codec .. '_nopad_encode'](input), nopad)
      utils.assert_eq(E[codec .. '_nopad_decode'](nopad), input)
      -- the padded decoders also take unpadded and over-padded text
      utils.assert_eq(E[codec .. '_decode'](nopad), input)
      utils.assert_eq(E[codec .. '_decode'](enc .. '=='), input)
    end
  end
end

-- base64url: the two characters that differ
local bin = '\xfb\xff\xbf'
utils.assert_eq(E.base64_encode(bin), '+/+/')
utils.assert_eq(E.base64url_encode(bin), '-_-_')
utils.assert_eq(E.base64url_decode '-_-_', bin)
utils.assert_eq(E.base64url_nopad_encode '\xff', '_w')
utils.assert_eq(E.base64url_encode '\xff', '_w==')

-- the uuid page's example (kumo.uuid/index.md)
utils.assert_eq(
  E.base64url_nopad_encode '\x69\x99\x46\x30\x3e\x27\x11\xef\x91\xfc\xcc\x28\xaa\x0a\x5c\x5a',
  'aZlGMD4nEe-R_MwoqgpcWg'
)

-- hex and base32 decode either case; every byte value round-trips
utils.assert_eq(E.hex_decode 'DEADbeef', '\xde\xad\xbe\xef')
utils.assert_eq(E.base32_decode 'mzxw6ytboi', 'foobar')
local all = {}
for i = 0, 255 do
  all[#all + 1] = string.char(i)
end
all = table.concat(all)
for _, c in ipairs { 'hex', 'base32', 'base32_nopad', 'base32hex', 'base64', 'base64url_nopad' } do
  utils.assert_eq(E[c .. '_decode'](E[c .. '_encode'](all)), all, c)
end
-- padding is optional and may be repeated
utils.assert_eq(E.base64_decode 'MmVtYWlsLmxvZwAuY3N2', '2email.log\0.csv')
utils.assert_eq(E.base64_decode 'MmVtYWlsLmxvZwAuY3N2==', '2email.log\0.csv')

-- errors: bad characters, impossible lengths, non-canonical trailing bits
utils.assert_error({ 'kumo.encode.base64_decode', 'not valid base64', 'byte 2' }, E.base64_decode, 'Zm*v')
utils.assert_error({ 'kumo.encode.hex_decode', 'byte' }, E.hex_decode, 'abc')
utils.assert_error('kumo.encode.hex_decode', E.hex_decode, 'zz')
utils.assert_error('kumo.encode.base64_decode', E.base64_decode, 'Z')
utils.assert_error('kumo.encode.base64_decode', E.base64_decode, 'Zh==') -- 'Zg==' is canonical
utils.assert_error('kumo.encode.base32_decode', E.base32_decode, 'MZX')
utils.assert_error('kumo.encode.base32_decode', E.base32_decode, 'MY=====M')
utils.assert_error('kumo.encode.base64url_decode', E.base64url_decode, '+/+/')
utils.assert_error('kumo.encode.base64_decode', E.base64_decode, '\xff\xfe')
utils.assert_error({ 'kumo.encode.base64_encode', 'argument #1', 'string', 'table' }, E.base64_encode, {})
utils.assert_error({ 'kumo.encode.hex_decode', 'argument #1', 'no value' }, E.hex_decode)
local err = utils.assert_error('kumo.encode.hex_decode', function()
  local r = E.hex_decode 'x'
  return r
end)
assert(err:find('test_encode.lua:%d+:'), err)

-- charsets
utils.assert_eq(E.charset_decode('iso-8859-1', 'caf\xe9'), 'café')
utils.assert_eq(E.charset_encode('iso-8859-1', 'café'), 'caf\xe9')
utils.assert_eq(E.charset_decode('shift_jis', '\x93\xfa\x96\x7b'), '日本')
utils.assert_eq(E.charset_encode('euc-jp', '日本'), '\xc6\xfc\xcb\xdc')
utils.assert_eq(E.charset_decode('koi8-r', '\xf0\xd2\xc9\xd7\xc5\xd4'), 'Привет')
utils.assert_eq(E.charset_encode('windows-1251', 'Привет'), '\xcf\xf0\xe8\xe2\xe5\xf2')
utils.assert_eq(E.charset_decode('utf-16le', 'h\0i\0'), 'hi')
-- characters the charset lacks: dropped by default or with true, an error with false
utils.assert_eq(E.charset_encode('iso-8859-1', 'a日b'), 'ab')
utils.assert_eq(E.charset_encode('iso-8859-1', 'a日b', true), 'ab')
utils.assert_error({ 'kumo.encode.charset_encode', 'did not encode into iso-8859-1' }, E.charset_encode, 'iso-8859-1', 'a日b', false)
utils.assert_error({ 'kumo.encode.charset_decode', 'did not decode from utf-8' }, E.charset_decode, 'utf-8', 'a\xffb')
utils.assert_error({ 'kumo.encode.charset_decode', 'did not decode from shift_jis' }, E.charset_decode, 'shift_jis', '\x93')
utils.assert_error({ 'unknown charset', 'no-such-charset' }, E.charset_decode, 'no-such-charset', 'x')
utils.assert_error({ 'unknown charset' }, E.charset_encode, 'no-such-charset', 'x')
utils.assert_error({ 'not valid UTF-8' }, E.charset_encode, 'iso-8859-1', 'a\xffb')
utils.assert_error({ 'argument #2' }, E.charset_decode, 'utf-8', nil)
