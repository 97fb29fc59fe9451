-- kumo.configure_bounce_classifier (issue 19): the reference page's example
-- and its iana.toml excerpt load; kumod's own share/bounce/rules.toml loads;
-- bad parameters and bad rule files are Lua errors that name the file, the
-- category and the pattern. (The classification table itself is the cmocka
-- test tests/unit/lua/test_bounce.c; records are tests/e2e/
-- test_bounce_classification.py.)
local kumo = require 'kumo'

local function write(name, text)
  local path = os.tmpname() .. name
  local f = assert(io.open(path, 'w'))
  f:write(text)
  f:close()
  return path
end

local function fails(params, ...)
  local ok, err = pcall(kumo.configure_bounce_classifier, params)
  assert(not ok, 'expected an error')
  err = tostring(err)
  for _, part in ipairs { ... } do
    assert(err:find(part, 1, true), string.format('%q lacks %q', err, part))
  end
  assert(err:find('kumo.configure_bounce_classifier', 1, true), err)
end

-- the excerpt of iana.toml on the reference page, as written there
local iana = write('-iana.toml', [[
# This file contains rules that match SMTP ENHANCEDSTATUSCODES
# codes as defined in the IANA registry:
# https://www.iana.org/assignments/smtp-enhanced-status-codes/smtp-enhanced-status-codes.xhtml
# to bounce classifications.
[rules]
InvalidRecipient = [
  "^(451|550) [45]\\.1\\.[1234] ",
  "^45[02] [45]\\.2\\.4 ", # Mailing list expansion
  "^5\\d{2} [45]\\.7\\.17 ", # RRVS: Mailbox owner has changed
]
BadDomain = [
  "^(451|550) [45]\\.1\\.10 ", # NULL MX
  "^5\\d{2} [45]\\.7\\.18 ", # RRVS: domain owner has changed
]
InactiveMailbox = [
  "^(451|550) [45]\\.1\\.[6] ",
  "^[45]\\d{2} [45]\\.2\\.1 ",
  "^525 [45]\\.7\\.13 ", # User account disabled
]
InvalidSender = [
  "^(451|550) [45]\\.1\\.[78] ",
  "^\\d{3} [45]\\.7\\.27 ", # Send address has NULL MX
]
QuotaIssues = [
  "^552 [45]\\.2\\.2 ",
  "^552 [45]\\.2\\.3 ",
  "^452 [45]\\.3\\.1 ", # Mail System Full
  "^55[24] [45]\\.3\\.4 ", # Message too large for system
]
]])

-- the page's example (with the excerpt in place of the installed file)
kumo.configure_bounce_classifier {
  files = { iana },
}
-- kumod's own rules, with every documented parameter
kumo.configure_bounce_classifier {
  files = { '../../share/bounce/rules.toml' },
  back_pressure = 131072,
  pool_size = 2,
  cache_size = 1024,
  uncategorized_cache_size = 1024,
}
-- JSON files too, and user-defined labels
local json = write('-mine.json', '{"rules": {"MyLabel": ["custom"]}}')
kumo.configure_bounce_classifier { files = { json, '../../share/bounce/rules.toml' } }
kumo.configure_bounce_classifier { files = {} }

-- parameters
fails(nil, 'must be a table')
fails({}, "'files' must be an array")
fails({ files = 'x.toml' }, "'files' must be an array")
fails({ files = { 1 } }, 'files[1] must be a path string')
fails({ files = {}, pool = 1 }, "unknown field 'pool'")
fails({ files = {}, cache_size = 'big' }, "'cache_size' must be an integer")
fails({ files = {}, pool_size = -1 }, "'pool_size' may not be negative")

-- files
fails({ files = { '/nonexistent/rules.toml' } }, '/nonexistent/rules.toml')
fails({ files = { (iana:gsub('%.toml$', '.txt')) } }, '.toml or .json filename extension')
local bad = write('-bad.toml', "[rules]\nSpamBlock = ['ok', 'listed at (rbl']\n")
fails({ files = { iana, bad } }, bad, "category 'SpamBlock'", "pattern 'listed at (rbl'",
  'missing closing parenthesis')
local refused = write('-refused.toml', "[rules]\nBadDomain = ['a\\Kb']\n")
fails({ files = { refused } }, refused, "category 'BadDomain'", "pattern 'a\\Kb'")
local wrongtype = write('-type.toml', "[rules]\nQuotaIssues = '552'\n")
fails({ files = { wrongtype } }, wrongtype, "category 'QuotaIssues' must be an array")
local elem = write('-elem.toml', "[rules]\nQuotaIssues = ['552', true]\n")
fails({ files = { elem } }, elem, "category 'QuotaIssues', element 2", 'not a boolean')
local typo = write('-typo.toml', "[rules]\nSpamblock = ['x']\n")
fails({ files = { typo } }, typo, "unknown category 'Spamblock'", "'SpamBlock'")
local norules = write('-norules.toml', "[rule]\nSpamBlock = ['x']\n")
fails({ files = { norules } }, norules, "no 'rules' table")
local syntax = write('-syntax.toml', "[rules\n")
fails({ files = { syntax } }, syntax, 'line 1')

for _, p in ipairs { iana, json, bad, refused, wrongtype, elem, typo, norules, syntax } do
  os.remove(p)
end
print('ok')
