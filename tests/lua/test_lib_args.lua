-- Every function of the library modules called with arguments of the wrong
-- types (and hostile strings): each call either succeeds or raises a string
-- error that names the function; none crashes (the suite runs under ASan).
local kumo = require 'kumo'

local values = { 'nil', 1, -1, 1.5, 'x', '\xff\xfe\0', {}, { key_data = 1 }, true, print, string.rep('{', 5000) }
local function val(v)
  if v == 'nil' then
    return nil
  end
  return v
end

local skip = { sleep = true, log_error = true, log_warn = true, log_info = true, log_debug = true }
local modules = { 'digest', 'encode', 'crypto', 'uuid', 'time', 'fs', 'file_type', 'secrets', 'counter_series', 'mpsc' }
local fns = {}
for _, m in ipairs(modules) do
  for name, f in pairs(kumo[m]) do
    if type(f) == 'function' and not skip[name] then
      fns[#fns + 1] = { 'kumo.' .. m .. '.' .. name, f, m, name }
    end
  end
end
for _, name in ipairs {
  'spawn_task', 'traceback', 'get_event_registrars', 'set_config_monitor_globs',
  'set_smtpsrv_threads', 'set_max_lua_context_age', 'set_lruttl_cache_capacity',
  'set_memory_hard_limit', 'glob', 'uncached_glob', 'read_dir',
} do
  fns[#fns + 1] = { 'kumo.' .. name, kumo[name], nil, name }
end

local calls, errors = 0, 0
local unnamed = {}
for _, entry in ipairs(fns) do
  local fname, f, mod, short = entry[1], entry[2], entry[3], entry[4]
  for i = 1, #values do
    for j = 1, #values do
      local a, b = val(values[i]), val(values[j])
      -- never create files or directories from here
      if not (mod == 'fs' and short == 'open' and type(b) == 'string') then
        calls = calls + 1
        local ok, err = pcall(f, a, b, a)
        if not ok then
          errors = errors + 1
          assert(type(err) == 'string', fname .. ' raised a ' .. type(err))
          if not (err:find(short, 1, true)) then
            unnamed[fname .. ': ' .. err] = true
          end
        end
      end
    end
  end
end
local list = {}
for k in pairs(unnamed) do
  list[#list + 1] = k
end
table.sort(list)
assert(#list == 0, 'errors that do not name their function:\n' .. table.concat(list, '\n'))
assert(calls > 1000 and errors > 500, calls .. ' calls, ' .. errors .. ' errors')
kumo.set_config_monitor_globs {}
