-- kumo.aaa.configure_acct_log (configure_acct_log.md): the parameters the
-- page lists, with its examples' values, its errors (unknown field, a
-- missing log_dir, a wrong type, a second call). The records themselves
-- are checked end to end in tests/e2e/test_acct_log.py.
local kumo = require 'kumo'

local dir = (os.getenv 'TMPDIR' or '/tmp') .. '/kumod-acct-' .. kumo.uuid.new_v4().simple

local function fails(params, want)
  local ok, err = pcall(kumo.aaa.configure_acct_log, params)
  assert(not ok, 'expected an error for ' .. want)
  assert(tostring(err):find(want, 1, true), tostring(err))
end

fails({ log_dir = dir, bogus = 1 }, 'unknown field `bogus`')
fails({ log_authn_ok = false }, 'missing field `log_dir`')
fails({ log_dir = dir, log_authz_allow = 'yes' }, '`log_authz_allow` must be a boolean')
fails({ log_dir = dir, compression_level = 'high' }, '`compression_level` must be an integer')
fails({ log_dir = dir, max_segment_duration = 'soon' }, 'invalid duration')
fails({ log_dir = dir, min_free_space = 'lots' }, '`min_free_space` must be a percentage')
fails('nope', 'argument #1 (params) must be a table')

-- the page's minimal example (an init handler, as it shows; --script does
-- not fire init, so the handler is also called here; --script, like
-- --validate, checks the parameters without starting the writer) plus each parameter
-- section's example value
local function init()
  kumo.aaa.configure_acct_log {
    log_dir = dir,
    -- log_authn_ok = false,
    -- log_authz_allow = false,
    back_pressure = 128000,
    compression_level = 3,
    max_file_size = 1000000000,
    max_segment_duration = '5 minutes',
    min_free_space = '10%',
    min_free_inodes = '10%',
    log_authz_allow = true,
    log_authz_deny = true,
    log_authn_ok = true,
    log_authn_fail = true,
  }
end
kumo.on('init', init)
init()

-- "Calling it multiple times is an error."
fails({ log_dir = dir }, 'already configured')
