-- kumo.amqp and kumo.nats without a broker: argument checking and the
-- errors of an unreachable one (the e2e test test_events_out.py runs them
-- against real rabbitmq-server and nats-server).
local kumo = require 'kumo'

local function expect_error(pattern, f, ...)
  local ok, err = pcall(f, ...)
  assert(not ok, 'expected an error matching ' .. pattern)
  assert(tostring(err):find(pattern), tostring(err))
end

assert(require('kumo.amqp') == kumo.amqp)
assert(require('kumo.nats') == kumo.nats)

local conn = { host = '127.0.0.1', port = 1, connect_timeout = '2s' }
expect_error('expected a table of parameters', kumo.amqp.basic_publish, 'x')
expect_error('unknown field `bogus`', kumo.amqp.basic_publish,
  { routing_key = 'q', payload = 'p', connection = conn, bogus = 1 })
expect_error('connection: unknown field `hots`', kumo.amqp.basic_publish,
  { routing_key = 'q', payload = 'p', connection = { hots = 'x' } })
expect_error('`routing_key` is required', kumo.amqp.basic_publish,
  { payload = 'p', connection = conn })
expect_error('`routing_key` is longer than 255 bytes', kumo.amqp.basic_publish,
  { routing_key = string.rep('q', 256), payload = 'p', connection = conn })
expect_error('`delivery_mode` must be between 1 and 2', kumo.amqp.basic_publish,
  { routing_key = 'q', payload = 'p', connection = conn, delivery_mode = 3 })
expect_error('`headers`: a function cannot be sent', kumo.amqp.basic_publish,
  { routing_key = 'q', payload = 'p', connection = conn, headers = { f = print } })
expect_error('invalid duration', kumo.amqp.basic_publish,
  { routing_key = 'q', payload = 'p', connection = { host = 'h', publish_timeout = 'soon' } })
expect_error('Either both client_cert and client_private_key', kumo.amqp.basic_publish,
  { routing_key = 'q', payload = 'p', connection = { host = 'h', client_cert = '/c' } })
expect_error('127.0.0.1:1: cannot connect', kumo.amqp.basic_publish,
  { routing_key = 'q', payload = 'p', connection = conn })
expect_error('invalid AMQP URI', kumo.amqp.build_client, 'amqp://h/?heartbeat=5')
expect_error('invalid AMQP URI', kumo.amqp.build_client, 'localhost')
expect_error('cannot connect', kumo.amqp.build_client, 'amqp://127.0.0.1:1')

expect_error('`servers` must be a list', kumo.nats.connect, {})
expect_error('between 1 and 64 addresses', kumo.nats.connect, { servers = {} })
expect_error('unknown field `servres`', kumo.nats.connect, { servres = { 'x' } })
expect_error('auth: unknown field `user`', kumo.nats.connect,
  { servers = { '127.0.0.1:1' }, auth = { user = 'x' } })
expect_error('both of client_cert and client_key', kumo.nats.connect,
  { servers = { '127.0.0.1:1' }, client_cert = '/c' })
expect_error('cannot connect: No server available', kumo.nats.connect,
  { servers = { '127.0.0.1:1' }, connection_timeout = '1s' })
print 'ok'
