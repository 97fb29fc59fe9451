-- Prints every name kumod's Lua API offers, one per line, for
-- tools/api/status.py: "fn kumo.a.b" for functions (and callable tables or
-- object constructors), "msg name" for Message methods.
-- Run: kumod --script tools/api/names.lua
local seen = {}

local function callable(v)
  if type(v) == 'function' then
    return true
  end
  local mt = getmetatable(v)
  return type(mt) == 'table' and mt.__call ~= nil
end

local function walk(prefix, t, depth)
  if seen[t] or depth > 4 then
    return
  end
  seen[t] = true
  local keys = {}
  for k in pairs(t) do
    if type(k) == 'string' then
      keys[#keys + 1] = k
    end
  end
  table.sort(keys)
  for _, k in ipairs(keys) do
    local v = t[k]
    local name = prefix .. '.' .. k
    if callable(v) then
      print('fn ' .. name)
    end
    if type(v) == 'table' then
      walk(name, v, depth + 1)
    end
  end
end

walk('kumo', kumo, 1)

-- client methods that the reference documents as pages of their module
-- (kumo.nats: publish.md, close.md): read from the client's metatable, as
-- making a client needs a server
local registry = debug.getregistry()
for _, mod in ipairs { 'nats' } do
  local mt = registry['kumo.' .. mod .. '.Client']
  if type(mt) == 'table' and type(mt.__index) == 'table' then
    for k, v in pairs(mt.__index) do
      if type(v) == 'function' then
        print('fn kumo.' .. mod .. '.' .. k)
      end
    end
  end
end

for _, mod in ipairs { 'redis', 'sqlite' } do
  local ok, m = pcall(require, mod)
  if ok and type(m) == 'table' then
    for k, v in pairs(m) do
      if callable(v) then
        print(string.format("fn require('%s').%s", mod, k))
      end
    end
  end
end

if kumo.make_message then
  local msg = kumo.make_message('a@example.com', 'b@example.com', 'Subject: x\r\n\r\nx\r\n')
  local mt = getmetatable(msg)
  local index = type(mt) == 'table' and mt.__index
  if type(index) == 'table' then
    for k, v in pairs(index) do
      if type(v) == 'function' then
        print('msg ' .. k)
      end
    end
  end
end

-- Object types that no table holds: made for real, and listed when the
-- object has the documented methods.
local function has_methods(obj, names)
  for _, m in ipairs(names) do
    if type(obj[m]) ~= 'function' then
      return false
    end
  end
  return true
end

-- kumo.jsonl.LogBatch: a batch read back from a one-record segment
if kumo.jsonl and kumo.jsonl.new_writer then
  pcall(function()
    local dir = (os.getenv 'TMPDIR' or '/tmp') .. '/kumod-names-' .. kumo.uuid.new_v4().simple
    local w = kumo.jsonl.new_writer { log_dir = dir }
    w:write_record { x = 1 }
    w:close()
    local t = kumo.jsonl.new_tailer { directory = dir, max_batch_latency = '1ms' }
    for batch in t:batches() do
      if has_methods(batch, { 'records', 'iter_records', 'consumer_name', 'commit' }) then
        print 'fn kumo.jsonl.LogBatch'
      end
      t:close()
    end
    for _, f in ipairs(kumo.fs.uncached_glob(dir .. '/*')) do
      os.execute('chmod u+w ' .. f)
      os.remove(f)
    end
    os.remove(dir)
  end)
end

-- kumo.counter_series: the methods of a series (counter_series/*.md)
if kumo.counter_series and kumo.counter_series.define then
  pcall(function()
    local s = kumo.counter_series.define { name = 'kumod-names', num_buckets = 1, bucket_size = 1 }
    for _, m in ipairs { 'increment', 'delta', 'observe', 'sum', 'sum_over' } do
      if type(s[m]) == 'function' then
        print('fn kumo.counter_series.' .. m)
      end
    end
  end)
end

-- kumo.time.Time and TimeDelta: objects with their documented fields,
-- metamethods and method (Time.md, TimeDelta.md)
if kumo.time and kumo.time.now and kumo.time.parse_duration then
  pcall(function()
    local t = kumo.time.now()
    local d = kumo.time.parse_duration '10 seconds'
    local ok_t = type(t.format) == 'function'
      and type(t.unix_timestamp) == 'number'
      and type(t.rfc3339) == 'string'
      and tostring(t):find 'UTC'
      and (t + d) - t == d
      and getmetatable(t.elapsed) == getmetatable(d)
    if ok_t then
      print 'fn kumo.time.Time'
    end
    if (d + d).seconds == 20 and (d - d).nanoseconds == 0 and type(d.human) == 'string' then
      print 'fn kumo.time.TimeDelta'
    end
  end)
end

-- documented constants (kumo/version.md): listed when they hold a value of
-- the documented form
if type(kumo.version) == 'string' and kumo.version:match '^%d+%.%d+%.%d+%-%x+$' then
  print 'fn kumo.version'
end

-- kumo.http.Request and Response (Request.md, Response.md): object pages,
-- listed when the object type has every documented method. The metatables
-- are read from the registry: making a response needs a server.
for page, methods in pairs {
  Request = { 'header', 'headers', 'basic_auth', 'bearer_auth', 'body', 'form_url_encoded',
              'form_multipart_data', 'send', 'timeout', 'aws_sign_v4' },
  Response = { 'status_code', 'status_reason', 'status_is_informational', 'status_is_success',
               'status_is_redirection', 'status_is_client_error', 'status_is_server_error',
               'headers', 'content_length', 'bytes', 'text' },
} do
  local mt = registry['kumo.http.' .. page]
  if type(mt) == 'table' and type(mt.__index) == 'table' and has_methods(mt.__index, methods) then
    print('fn kumo.http.' .. page)
  end
end
