-- kumo.shaping.load (reference/kumo.shaping/load.md) and the Shaping object
-- the TSA daemon evaluates records with: the documented example files
-- (merging, replace_base, per-source rules, automation rules), match_rules
-- on log records, the options, and the errors of malformed rules. No
-- network: domains use mx_rollup = false or DomainSuffix providers.
local kumo = require 'kumo'

local function write(name, text)
  local path = os.tmpname() .. name
  local f = assert(io.open(path, 'w'))
  f:write(text)
  f:close()
  return path
end

local function fails(fn, expect)
  local ok, err = pcall(fn)
  assert(not ok, 'expected an error containing: ' .. expect)
  assert(tostring(err):find(expect, 1, true), 'error was: ' .. tostring(err))
end

-- the page's merging example: default + gmail.com
local base = write(
  '.toml',
  [==[
["default"]
connection_limit = 10
enable_tls = "Opportunistic"

["gmail.com"]
mx_rollup = false
connection_limit = 100

["example.com"]
mx_rollup = false
["example.com".sources."my source name"]
connection_limit = 5

["yahoo.com"]
mx_rollup = false
max_deliveries_per_connection = 20

[["yahoo.com".automation]]
regex = "\\[TS04\\]"
action = "Suspend"
duration = "2 hours"

[provider."bigmail"]
match = [{DomainSuffix = ".bigmail.test"}]
[[provider."bigmail".automation]]
regex = ["RL0000", "RL0001"]
action = [{SetConfig={name="max_connection_rate", value="10000/h"}}, "SuspendTenant"]
trigger = {Threshold="2/hr"}
duration = "2 hours"
]==]
)
-- a later file: replace_base for gmail.com
local over = write(
  '.toml',
  [[
["gmail.com"]
mx_rollup = false
replace_base = true
connection_limit = 10
]]
)

local s = kumo.shaping.load { base }
assert(#s:get_errors() == 0 and #s:get_warnings() == 0)
-- what KumoMTA's own shaping helper checks against its sources helper
local refs = s:get_referenced_sources()
assert(refs['my source name'] and refs['my source name'][1] == 'domain:example.com',
  kumo.serde.json_encode(refs))
local p = s:get_egress_path_config('gmail.com', 'unspecified', 'gmail.com')
assert(p.connection_limit == 100 and p.enable_tls == 'Opportunistic', kumo.serde.json_encode(p))
p = s:get_egress_path_config('example.com', 'my source name', 'example.com')
assert(p.connection_limit == 5)
p = s:get_egress_path_config('example.com', 'other', 'example.com')
assert(p.connection_limit == 10)

local s2 = kumo.shaping.load { base, over }
p = s2:get_egress_path_config('gmail.com', 'unspecified', 'gmail.com')
assert(p.connection_limit == 10, kumo.serde.json_encode(p))
assert(p.enable_tls == 'Opportunistic') -- default still applies under replace_base
assert(s:hash() ~= s2:hash())

-- match_rules: the yahoo rule, per record
local function record(rcpt, code, content, site)
  return {
    type = 'TransientFailure',
    recipient = rcpt,
    site = site or 'unspecified->mx.example@smtp_client',
    egress_source = 'unspecified',
    queue = 'tenant1@' .. (rcpt:match '@(.*)' or 'local'),
    response = {
      code = code,
      enhanced_code = { class = 4, subject = 7, detail = 0 },
      content = content,
      command = nil,
    },
    timestamp = os.time(),
  }
end
local m = s:match_rules(record('u@yahoo.com', 421, '[TS04] Messages from 10.0.0.1 deferred'))
assert(#m == 1, kumo.serde.json_encode(m))
assert(m[1].regex[1] == '\\[TS04\\]' and m[1].action[1] == 'Suspend')
assert(m[1].duration == 7200 and m[1].trigger == 'Immediate' and m[1].was_rollup == false)
assert(#s:match_rules(record('u@yahoo.com', 421, 'other trouble')) == 0)
assert(#s:match_rules(record('u@gmail.com', 421, '[TS04]')) == 0)
-- internal responses do not match unless match_internal
assert(#s:match_rules(record('u@yahoo.com', 451, 'KumoMTA internal: [TS04] held')) == 0)
-- postmaster: no automation
assert(#s:match_rules(record('postmaster', 421, '[TS04]')) == 0)
-- the provider's rule: a list of regexes, several actions, a threshold
m = s:match_rules(record('x@mx.bigmail.test', 421, 'RL0001 slow down'))
assert(#m == 1 and #m[1].regex == 2 and #m[1].action == 2)
assert(m[1].trigger.Threshold == '2/hr' and m[1].was_rollup == true)
assert(m[1].action[1].SetConfig.name == 'max_connection_rate')
-- the response is matched as one line: "code enhanced content"
assert(#s:match_rules(record('u@yahoo.com', 421, 'x')) == 0)

-- options: a missing local file is an error unless local_load says otherwise
fails(function()
  kumo.shaping.load { '/nonexistent/shaping.toml' }
end, '/nonexistent/shaping.toml')
local w = kumo.shaping.load({ '/nonexistent/shaping.toml', base }, { local_load = 'Warn' })
assert(#w:get_warnings() == 1 and #w:get_errors() == 0)
assert(#w:match_rules(record('u@yahoo.com', 421, '[TS04]')) == 1)
fails(function()
  kumo.shaping.load({ base }, { local_load = 'Loud' })
end, "local_load must be 'Ignore', 'Warn' or 'Error'")
-- a remote file that cannot be fetched is ignored by default (skip_remote
-- avoids even trying)
local r = kumo.shaping.load({ base, 'http://127.0.0.1:9/shaping.toml' }, { skip_remote = true })
assert(#r:get_errors() == 0)

-- malformed rules name the file, the table and the key
local function bad(text, expect)
  local path = write('.toml', text)
  fails(function()
    kumo.shaping.load { path }
  end, 'shaping: ' .. path .. ': ' .. expect)
end
bad('[["a.example".automation]]\nregex = "("\naction = "Suspend"\nduration = "1h"\n', '["a.example".automation.1] regex:')
bad('[["a.example".automation]]\nregex = "x"\naction = "Nope"\nduration = "1h"\n', "[\"a.example\".automation.1] action: unknown action 'Nope'")
bad('[["a.example".automation]]\nregex = "x"\naction = "Suspend"\n', '["a.example".automation.1] duration: required')
bad('[["a.example".automation]]\naction = "Suspend"\nduration = "1h"\n', '["a.example".automation.1] regex: required')
bad(
  '[["a.example".automation]]\nregex = "x"\naction = "Suspend"\nduration = "1h"\ntrigger = {Threshold = "lots"}\n',
  '["a.example".automation.1] trigger:'
)
bad(
  '[["a.example".automation]]\nregex = "x"\naction = {SetConfig={name="connection_limit", value="many"}}\nduration = "1h"\n',
  '["a.example".automation.1] action: SetConfig connection_limit'
)
bad(
  '[["a.example".automation]]\nregex = "x"\naction = "Suspend"\nduration = "1h"\nmatch_internal = "yes"\n',
  '["a.example".automation.1] match_internal: expected a boolean'
)
-- the 'tsa' module exists only in the TSA daemon (kumod --tsa)
assert(not pcall(require, 'tsa'))
print 'ok'
