-- kumo.mpsc: the reference page's examples (a task consuming a queue with
-- recv and recv_many), bounded queues (send waits, send_timeout, try_send),
-- close, len/is_empty, the single-consumer rule, and the errors.
local kumo = require 'kumo'
local utils = require 'lib2_util'

local function get_queue()
  return kumo.mpsc.define 'my-example-queue'
end

-- the page's recv example: a task that loops until the queue closes
local received = {}
local finished = false
kumo.on('my.queue.task', function(args)
  local q = get_queue()
  while true do
    local item = q:recv()
    if item then
      received[#received + 1] = item
    else
      break
    end
  end
  finished = true
end)
kumo.spawn_task { event_name = 'my.queue.task', args = {} }
local q = get_queue()
kumo.sleep(0.01) -- the task is now parked in recv
q:send 'hello'
q:send { 1, 2, 3 }
q:send(true)
q:send { key = 'value' }
kumo.sleep(0.02)
utils.assert_eq(received, { 'hello', { 1, 2, 3 }, true, { key = 'value' } })
-- len / is_empty are refused while the consumer is parked
utils.assert_error({ 'queue:len', 'exclusive access' }, q.len, q)
utils.assert_error({ 'queue:recv', 'another task' }, q.recv, q)
q:close()
kumo.sleep(0.02)
assert(finished, 'recv returned nil after close')
assert(q:is_closed())
utils.assert_error({ 'queue:send', 'closed' }, q.send, q, 'x')
utils.assert_eq(q:try_send 'x', false)
-- the same name is the same queue
assert(kumo.mpsc.define('my-example-queue'):is_closed())

-- recv_many: batches of up to LIMIT, waiting only when empty
local batches = {}
kumo.on('batch.task', function()
  local bq = kumo.mpsc.define 'batch-queue'
  while true do
    local batch = bq:recv_many(3)
    if batch == nil then
      break
    end
    batches[#batches + 1] = batch
  end
end)
local bq = kumo.mpsc.define 'batch-queue'
for i = 1, 7 do
  bq:send(i)
end
utils.assert_eq(bq:len(), 7)
assert(not bq:is_empty())
kumo.spawn_task { event_name = 'batch.task' }
kumo.sleep(0.02)
utils.assert_eq(batches, { { 1, 2, 3 }, { 4, 5, 6 }, { 7 } })
bq:send(8)
kumo.sleep(0.02)
utils.assert_eq(batches[4], { 8 })
bq:close()
kumo.sleep(0.01)

-- try_recv never waits
local tq = kumo.mpsc.define 'try-queue'
utils.assert_eq(tq:try_recv(), nil)
tq:send 'a'
utils.assert_eq(tq:try_recv(), 'a')
assert(tq:is_empty())

-- bounded: try_send fails when full, send_timeout times out, send waits
local bounded = kumo.mpsc.define('bounded-queue', 2)
assert(bounded:try_send(1))
assert(bounded:try_send(2))
assert(not bounded:try_send(3))
local t0 = kumo.time.now()
utils.assert_error({ 'queue:send_timeout', 'timed out' }, bounded.send_timeout, bounded, 3, 0.05)
assert(t0.elapsed.seconds >= 0.04, 'waited ' .. t0.elapsed.seconds)
-- a later define with another limit returns the original queue
assert(not kumo.mpsc.define('bounded-queue', 100):try_send(3))
-- a waiting send completes once the consumer makes room
kumo.on('drain.task', function()
  kumo.sleep(0.03)
  kumo.mpsc.define('bounded-queue'):recv()
end)
kumo.spawn_task { event_name = 'drain.task' }
bounded:send(3) -- waits for drain.task
utils.assert_eq(bounded:len(), 2)
utils.assert_eq(bounded:recv_many(10), { 2, 3 })
-- send_timeout on an unbounded queue ignores the timeout
kumo.mpsc.define('unbounded'):send_timeout('x', 0)

-- errors
utils.assert_error({ 'queue:send', 'cannot be queued', 'function' }, tq.send, tq, print)
utils.assert_error({ 'kumo.mpsc.define', 'NAME' }, kumo.mpsc.define, 42)
utils.assert_error({ 'kumo.mpsc.define', 'OPTIONAL_LIMIT' }, kumo.mpsc.define, 'z', 0)
utils.assert_error({ 'queue:recv_many', 'LIMIT' }, tq.recv_many, tq, 0)
utils.assert_error({ 'queue:recv', 'method' }, tq.recv, {})

-- a task still parked in recv when the script ends is abandoned cleanly
kumo.on('forever.task', function()
  kumo.mpsc.define('never-sent'):recv()
end)
kumo.spawn_task { event_name = 'forever.task' }
kumo.sleep(0.01)
