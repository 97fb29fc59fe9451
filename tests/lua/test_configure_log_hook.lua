-- kumo.configure_log_hook: the keys of docs/reference/kumo/configure_log_hook.md
-- are accepted, anything else is refused by name.
local kumo = require 'kumo'

local function fails(params, pattern)
  local ok, err = pcall(kumo.configure_log_hook, params)
  assert(not ok, 'expected an error for ' .. pattern)
  assert(tostring(err):find(pattern, 1, true), tostring(err))
end

kumo.configure_log_hook {
  name = 'full',
  back_pressure = 1000,
  meta = { 'tenant' },
  headers = { 'Subject', 'X-Customer-ID' },
  per_record = {
    Reception = { enable = false },
    Any = { enable = true },
  },
  deferred_spool = false,
}
kumo.configure_log_hook { name = 'webhook', headers = { 'Subject', 'X-Customer-ID' } }

fails({ headers = {} }, 'missing field `name`')
fails({ name = 'x1', nope = true }, 'unknown field `nope`')
fails({ name = 'x2', deferred_spool = 'yes' }, '`deferred_spool` must be a boolean')
fails({ name = 'x3', per_record = { Nope = {} } }, 'unknown record type `Nope`')
fails({ name = 'x4', per_record = { Any = { template = '{{ id }}' } } }, 'templates are not supported')
fails({ name = 'x5', meta = 'tenant' }, '`meta` must be a list of strings')
fails({ name = 'x6', back_pressure = -1 }, '`back_pressure` must be a non-negative integer')
print 'configure_log_hook: ok'
