-- kumo.file_type: the reference pages' three examples, signatures of common
-- attachment types, the text/binary fallback, and the errors.
local kumo = require 'kumo'
local utils = require 'lib2_util'
local FT = kumo.file_type

-- kumo.file_type/from_bytes.md
utils.assert_eq(FT.from_bytes '\xCA\xFE\xBA\xBE', {
  name = 'Java class file',
  extensions = { 'class' },
  media_types = {
    'application/java',
    'application/java-byte-code',
    'application/java-vm',
    'application/x-httpd-java',
    'application/x-java',
    'application/x-java-class',
    'application/x-java-vm',
  },
})
-- kumo.file_type/from_extension.md
utils.assert_eq(FT.from_extension 'markdown', {
  {
    name = 'Q1193600',
    media_types = { 'text/markdown' },
    extensions = { 'markdown', 'md', 'mdown', 'mdtext', 'mdtxt', 'mkd' },
  },
})
-- kumo.file_type/from_media_type.md
utils.assert_eq(FT.from_media_type('image/png')[1], {
  name = 'Portable Network Graphics',
  media_types = { 'image/png' },
  extensions = { 'png' },
})

-- signatures
utils.assert_eq(FT.from_bytes('%PDF-1.7\n...').media_types[1], 'application/pdf')
utils.assert_eq(FT.from_bytes('PK\x03\x04rest').extensions[1], 'zip')
utils.assert_eq(FT.from_bytes('\xff\xd8\xff\xe0').media_types, { 'image/jpeg' })
utils.assert_eq(FT.from_bytes('GIF89a').name, 'Graphics Interchange Format')
utils.assert_eq(FT.from_bytes('MZ\x90\x00').extensions[1], 'exe')
utils.assert_eq(FT.from_bytes('RIFF\0\0\0\0WEBPVP8 ').media_types, { 'image/webp' })
-- fallbacks: text (valid UTF-8) or binary; always a result
utils.assert_eq(FT.from_bytes('hello, wörld\n').media_types, { 'text/plain' })
utils.assert_eq(FT.from_bytes('\0\1\2\xff').media_types, { 'application/octet-stream' })
utils.assert_eq(FT.from_bytes('').name, 'Plain text')
-- lookups are case-insensitive; several types may share an extension; none is {}
utils.assert_eq(#FT.from_extension 'PDF', 1)
utils.assert_eq(FT.from_extension('.md')[1].name, 'Q1193600')
utils.assert_eq(FT.from_extension 'nosuchext', {})
utils.assert_eq(FT.from_media_type 'application/x-unknown', {})

utils.assert_error({ 'kumo.file_type.from_bytes', 'argument #1' }, FT.from_bytes, nil)
utils.assert_error({ 'kumo.file_type.from_extension', 'argument #1' }, FT.from_extension, {})
utils.assert_error({ 'kumo.file_type.from_media_type', 'argument #1' }, FT.from_media_type, 1)
