-- The top-level kumo.* functions of src/lua/lib/misc.c: log_*, version,
-- traceback, get_event_registrars, spawn_task, config monitor globs, the
-- tuning knobs and memory limits, and their errors.
local kumo = require 'kumo'
local utils = require 'lib2_util'

-- kumo/version.md: "YYYY.MM.DD-hash"
assert(type(kumo.version) == 'string' and kumo.version:match '^%d%d%d%d%.%d%d%.%d%d%-%x+$' or kumo.version == '0.0.0-unknown', kumo.version)

-- kumo/log_*.md: any values, no error (the line goes to the diagnostic log;
-- tests/e2e checks the text)
kumo.log_error('Logging something', true, false, 42, { 1, 2, 3 })
kumo.log_warn('warn', nil)
kumo.log_info()
kumo.log_debug('not shown by default', '\xff\xfe invalid utf-8')

-- traceback: frame 1 is this file's chunk
local function where()
  return kumo.traceback(1)
end
local tb = where()
assert(tb[1].short_src:match 'test_misc%.lua$', tb[1].short_src)
assert(tb[1].what == 'Lua' and tb[1].curr_line > 0 and tb[1].source:match '^@', tb[1].source)
assert(tb[1].line_defined > 0 and tb[1].is_tail_call == false)
assert(tb[2].what == 'main', tb[2].what)
local tb0 = kumo.traceback(0)
utils.assert_eq(tb0[1].what, 'C')

-- get_event_registrars: the stacks of the kumo.on calls, as queue.lua uses them
kumo.on('test-registrar', function() end)
local reg = kumo.get_event_registrars 'test-registrar'
utils.assert_eq(#reg, 1)
assert(reg[1][1]:match 'test_misc%.lua:%d+$', reg[1][1])
utils.assert_eq(kumo.get_event_registrars 'never-registered', nil)
kumo.on('get_queue_config', function() end)
kumo.on('get_queue_config', function() end)
utils.assert_eq(#kumo.get_event_registrars 'get_queue_config', 2)
-- the wrapped kumo.on still refuses a second single handler
local on_err = utils.assert_error('already has a handler', function()
  kumo.on('test-registrar', function() end)
end)
assert(on_err:find('test_misc.lua:%d+: kumo.on'), on_err)

-- kumo/spawn_task.md: the handler runs in its own coroutine with args
local got
kumo.on('my.task', function(args)
  kumo.sleep(0.01)
  got = kumo.json_encode(args)
end)
kumo.spawn_task { event_name = 'my.task', args = { 'hello', 'there' } }
assert(got == nil, 'the task starts after the caller yields')
for _ = 1, 100 do
  if got then
    break
  end
  kumo.sleep(0.01)
end
utils.assert_eq(got, '["hello","there"]')
-- an error in a task is logged; the task stops, the caller is unaffected
kumo.on('failing.task', function()
  error 'task failure'
end)
kumo.spawn_task { event_name = 'failing.task' }
kumo.sleep(0.01)
utils.assert_error({ 'kumo.spawn_task', 'no handler', 'nope' }, kumo.spawn_task, { event_name = 'nope' })
utils.assert_error({ 'kumo.spawn_task', 'event_name' }, kumo.spawn_task, {})
utils.assert_error({ 'kumo.spawn_task', 'argument #1' }, kumo.spawn_task, 'my.task')

-- config monitor globs
local dir = os.tmpname()
os.remove(dir)
assert(os.execute('mkdir -p ' .. dir .. '/policy/sub'))
for _, p in ipairs { 'policy/init.lua', 'policy/sub/queues.toml', 'policy/notes.txt' } do
  local f = assert(io.open(dir .. '/' .. p, 'w'))
  f:write 'x'
  f:close()
end
kumo.set_config_monitor_globs { dir .. '/**/*.{lua,toml}', dir .. '/policy/*.lua' }
utils.assert_eq(kumo.eval_config_monitor_globs(), { dir .. '/policy/init.lua', dir .. '/policy/sub/queues.toml' })
kumo.set_config_monitor_globs {}
utils.assert_eq(kumo.eval_config_monitor_globs(), {})
utils.assert_error({ 'kumo.set_config_monitor_globs', 'GLOBS[2]' }, kumo.set_config_monitor_globs, { 'a', 3 })
utils.assert_error({ 'kumo.set_config_monitor_globs', 'GLOBS' }, kumo.set_config_monitor_globs, 'a')
os.execute('rm -rf ' .. dir)

-- tuning knobs (kumo/set_*_threads.md, set_max_*.md): accepted, checked
for _, name in ipairs {
  'set_smtpsrv_threads', 'set_readyq_threads', 'set_qmaint_threads', 'set_ready_qmaint_threads',
  'set_logging_threads', 'set_httpinject_threads', 'set_spoolin_threads',
} do
  kumo[name](12)
  utils.assert_error({ 'kumo.' .. name, 'at least 1' }, kumo[name], 0)
  utils.assert_error({ 'kumo.' .. name, 'integer' }, kumo[name], 'many')
  utils.assert_error({ 'kumo.' .. name, 'fraction' }, kumo[name], 1.5)
end
kumo.set_max_lua_context_age(300)
kumo.set_max_lua_context_use_count(1024)
kumo.set_max_spare_lua_contexts(8192)
utils.assert_error('kumo.set_max_lua_context_age', kumo.set_max_lua_context_age, -1)
kumo.set_lruttl_cache_capacity('dns_resolver_mx', 128000)
-- (kumo.set_lruttl_cache_capacity is memoize.c's, tested in test_memoize.lua)
utils.assert_error({ 'kumo.set_lruttl_cache_capacity', 'negative' }, kumo.set_lruttl_cache_capacity, 'x', -1)

-- memory limits: defaults from the machine, then what was set
local hard = kumo.get_memory_hard_limit()
assert(math.type(hard) == 'integer' and hard > 0, tostring(hard))
local soft = kumo.get_memory_soft_limit()
utils.assert_eq(soft, hard // 4 * 3)
utils.assert_eq(kumo.get_memory_low_thresh(), soft // 5 * 4)
kumo.set_memory_hard_limit(2 * 1024 * 1024 * 1024)
utils.assert_eq(kumo.get_memory_hard_limit(), 2 * 1024 * 1024 * 1024)
utils.assert_eq(kumo.get_memory_soft_limit(), 1610612736)
kumo.set_memory_soft_limit(1024 * 1024 * 1024)
kumo.set_memory_low_thresh(800 * 1024 * 1024)
utils.assert_eq(kumo.get_memory_soft_limit(), 1024 * 1024 * 1024)
utils.assert_eq(kumo.get_memory_low_thresh(), 800 * 1024 * 1024)
utils.assert_error({ 'kumo.set_memory_hard_limit', 'at least 1' }, kumo.set_memory_hard_limit, 0)

-- validation_failed takes no argument and only sets a flag (--validate
-- exits 1 then: tests/e2e)
kumo.validation_failed()
