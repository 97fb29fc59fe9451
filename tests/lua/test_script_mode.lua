-- kumod --script: the kumo module is there, functions that wait work at the
-- top level, and arg holds the script's name.
assert(type(kumo) == 'table', 'kumo module missing')
assert(type(kumo.on) == 'function')
assert(arg[0]:match('test_script_mode%.lua$'), 'arg[0] is ' .. tostring(arg[0]))
local t0 = os.clock()
kumo.sleep(0.01) -- yields the coroutine; resumed by the reactor
local ok, err = pcall(error, 'x')
assert(not ok and err == 'x')
assert(require('kumo') == kumo)
