-- kumo.jsonl (docs/reference/kumo.jsonl): the writer's page example, then
-- tailers reading what it wrote: batches, filters, checkpoints, several
-- consumers, segments rolled on size, plain and corrupt files, bad config.
local kumo = require 'kumo'

local function eq(a, b, what)
  if a ~= b then
    error(string.format('%s: expected %q, got %q', what or 'value', tostring(b), tostring(a)), 2)
  end
end
local function fails(fn, msg, ...)
  local ok, err = pcall(fn, ...)
  assert(not ok, 'expected an error containing ' .. msg)
  assert(tostring(err):find(msg, 1, true), 'error was: ' .. tostring(err))
end

local base = (os.getenv 'TMPDIR' or '/tmp') .. '/kumod-test-jsonl-' .. kumo.uuid.new_v4().simple
local dir = base .. '/json'
assert(os.execute('mkdir -p ' .. base))

-- the writer page's example (with our directory)
local writer = kumo.jsonl.new_writer {
  log_dir = dir,
  max_file_size = 268435456, -- 256 MiB
  max_segment_duration = '1h',
  compression_level = 3,
  suffix = '.zst',
}
writer:write_record { event = 'Delivery', id = 'abc123' }
writer:write_record { event = 'Bounce', id = 'def456' }
writer:close()

-- one complete, read-only segment named <UTC time>.zst
local files = kumo.fs.uncached_glob(dir .. '/*.zst')
eq(#files, 1, 'segments')
assert(files[1]:match '/%d%d%d%d%d%d%d%d%-%d%d%d%d%d%d[%.%d]*%.zst$', files[1])

-- the tailer page's example, shortened: read, then commit
local tailer = kumo.jsonl.new_tailer {
  directory = dir,
  pattern = '*.zst',
  max_batch_size = 500,
  max_batch_latency = '20ms',
  checkpoint_name = 'delivery-processor',
}
local ids = {}
for batch in tailer:batches() do
  eq(batch:consumer_name(), 'default', 'single consumer name')
  for record in batch:iter_records() do
    table.insert(ids, record.id)
  end
  eq(#batch:records(), 2, 'records()')
  batch:commit()
  eq(#batch:records(), 0, 'records() after commit')
  eq(batch:consumer_name(), '', 'consumer_name() after commit')
  fails(batch.commit, 'batch has already been committed', batch)
  tailer:close()
end
eq(table.concat(ids, ','), 'abc123,def456', 'records in order')
local cp = kumo.serde.json_load(dir .. '/.delivery-processor')
eq(cp.line, 2, 'checkpoint line')
eq(cp.file, files[1], 'checkpoint file')

-- writing after close opens a new segment; a tailer resuming from the
-- checkpoint sees only what is new, and the filter runs on each record
writer:write_line '{"event":"Delivery","id":"ghi789"}'
writer:write_line '{"event":"Bounce","id":"jkl012"}\n'
writer:write_record { event = 'Delivery', id = 'mno345' }
writer:close()
eq(#kumo.fs.uncached_glob(dir .. '/*.zst'), 2, 'second segment')
tailer = kumo.jsonl.new_tailer({
  directory = dir,
  max_batch_latency = '20ms',
  checkpoint_name = 'delivery-processor',
}, function(record)
  return record.event == 'Delivery'
end)
ids = {}
for batch in tailer:batches() do
  for _, r in ipairs(batch:records()) do
    table.insert(ids, r.id)
  end
  batch:commit()
  tailer:close()
end
eq(table.concat(ids, ','), 'ghi789,mno345', 'resumed and filtered')
cp = kumo.serde.json_load(dir .. '/.delivery-processor')
eq(cp.line, 3, 'checkpoint advanced past filtered records')

-- several consumers, each with its own filter and batch size
local mt = kumo.jsonl.new_multi_tailer {
  directory = dir,
  pattern = '*.zst',
  consumers = {
    {
      name = 'deliveries',
      checkpoint_name = 'cp-del',
      max_batch_size = 200,
      max_batch_latency = '20ms',
      filter = function(record)
        return record.event == 'Delivery'
      end,
    },
    {
      name = 'bounces',
      max_batch_size = 1,
      max_batch_latency = '5s',
      filter = function(record)
        return record.event == 'Bounce'
      end,
    },
  },
}
local seen = { deliveries = {}, bounces = {} }
local rounds = 0
for batches in mt:batches() do
  rounds = rounds + 1
  for _, batch in ipairs(batches) do
    local name = batch:consumer_name()
    for record in batch:iter_records() do
      table.insert(seen[name], record.id)
    end
    batch:commit()
  end
  if #seen.deliveries == 3 and #seen.bounces == 2 then
    mt:close()
  end
end
eq(table.concat(seen.deliveries, ','), 'abc123,ghi789,mno345', 'deliveries consumer')
eq(table.concat(seen.bounces, ','), 'def456,jkl012', 'bounces consumer (batches of 1)')
assert(rounds >= 2, 'bounces came in batches of one')

-- a filter's error reaches the caller
tailer = kumo.jsonl.new_tailer({ directory = dir }, function()
  error 'filter says no'
end)
fails(function()
  for _ in tailer:batches() do
  end
end, 'filter says no')
tailer:close()

-- many records over segments rolled on size, read in bounded steps
local big = base .. '/big'
writer = kumo.jsonl.new_writer { log_dir = big, max_file_size = 20000 }
for i = 1, 5000 do
  writer:write_record { n = i, pad = string.rep('x', 40) }
end
writer:close()
assert(#kumo.fs.uncached_glob(big .. '/*') > 5, 'rolled on size')
tailer = kumo.jsonl.new_tailer { directory = big, max_batch_size = 1000, max_batch_latency = '20ms' }
local n, sizes = 0, {}
for batch in tailer:batches() do
  table.insert(sizes, #batch:records())
  for r in batch:iter_records() do
    n = n + 1
    eq(r.n, n, 'order across segments')
  end
  if n == 5000 then
    tailer:close()
  end
end
eq(n, 5000, 'all records')
eq(sizes[1], 1000, 'max_batch_size')

-- tail = true starts at the newest segment only
local all = kumo.fs.uncached_glob(big .. '/*')
table.sort(all)
tailer = kumo.jsonl.new_tailer { directory = big, tail = true, max_batch_latency = '10ms' }
for batch in tailer:batches() do
  local first = batch:records()[1].n
  assert(first > 4000, 'tail starts at the newest segment, got ' .. first)
  tailer:close()
end

-- plain (uncompressed) segments, lines that are not JSON, a corrupt zstd
-- segment: the bad parts are skipped, the reader goes on
local plain = base .. '/plain'
assert(os.execute('mkdir -p ' .. plain))
local f = assert(io.open(plain .. '/a', 'w'))
f:write '{"id":1}\nnot json\n\n{"id":2}' -- no final newline
f:close()
f = assert(io.open(plain .. '/b', 'w'))
f:write '\x28\xb5\x2f\xfd garbage that is not a zstd frame'
f:close()
f = assert(io.open(plain .. '/c', 'w'))
f:write '{"id":3}\n'
f:close()
assert(os.execute('chmod a-w ' .. plain .. '/a ' .. plain .. '/b ' .. plain .. '/c'))
tailer = kumo.jsonl.new_tailer { directory = plain, max_batch_latency = '20ms', max_batch_size = 3 }
ids = {}
for batch in tailer:batches() do
  for r in batch:iter_records() do
    table.insert(ids, r.id)
  end
  if #ids == 3 then
    tailer:close()
  end
end
eq(table.concat(ids, ','), '1,2,3', 'plain, bad lines and corrupt segment')

-- bad configuration
fails(kumo.jsonl.new_writer, 'kumo.jsonl.new_writer', 'x')
fails(kumo.jsonl.new_writer, "missing required field 'log_dir'", {})
fails(kumo.jsonl.new_writer, 'compression_level', { log_dir = dir, compression_level = 30 })
fails(kumo.jsonl.new_writer, 'max_segment_duration', { log_dir = dir, max_segment_duration = 'soon' })
fails(kumo.jsonl.new_tailer, "missing required field 'directory'", {})
fails(kumo.jsonl.new_tailer, 'cannot read directory', { directory = base .. '/nope' })
fails(kumo.jsonl.new_tailer, 'argument #2 (filter) must be a function', { directory = dir }, 5)
fails(kumo.jsonl.new_multi_tailer, "field 'consumers'", { directory = dir })
fails(kumo.jsonl.new_multi_tailer, 'used twice',
  { directory = dir, consumers = { { name = 'a' }, { name = 'a' } } })
fails(kumo.jsonl.new_multi_tailer, "missing required field 'name'",
  { directory = dir, consumers = { {} } })
f = assert(io.open(dir .. '/.broken', 'w'))
f:write 'nope'
f:close()
fails(kumo.jsonl.new_tailer, 'checkpoint', { directory = dir, checkpoint_name = 'broken' })

-- live: a task writes while the tailer follows the open segment; the task
-- only runs because the tailer yields to the reactor between steps
local live = base .. '/live'
local lw = kumo.jsonl.new_writer { log_dir = live }
lw:write_record { n = 1 }
kumo.on('jsonl.live.writer', function()
  for i = 2, 20 do
    kumo.sleep(0.005)
    lw:write_record { n = i }
  end
end)
kumo.spawn_task { event_name = 'jsonl.live.writer' }
tailer = kumo.jsonl.new_tailer { directory = live, max_batch_latency = '10ms', poll_watcher = '5ms' }
n = 0
local steps = 0
for batch in tailer:batches() do
  steps = steps + 1
  for r in batch:iter_records() do
    n = n + 1
    eq(r.n, n, 'live order')
  end
  if n == 20 then
    tailer:close()
  end
end
eq(n, 20, 'live records')
assert(steps > 1, 'records arrived while tailing')
lw:close()

assert(os.execute('chmod -R u+w ' .. base .. ' && rm -rf ' .. base))
