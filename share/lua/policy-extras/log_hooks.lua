-- policy-extras.log_hooks: log records delivered through KumoMTA's own
-- queues (docs/userguide/operation/webhooks.md).
--
-- log_hooks:new { name, constructor, log_parameters?, queue_config?,
--                 batch_size?, min_batch_size?, max_batch_latency?, filter? }
--   * configures kumo.configure_log_hook { name = NAME, <log_parameters> }
--     in pre_init;
--   * in should_enqueue_log_record, takes the records of hook NAME (never
--     those of log-record messages: that would loop), asks `filter(msg,
--     hook_name)` (true = drop it), and queues the record to the domain
--     NAME.log_hook;
--   * answers get_queue_config for that domain with <queue_config>
--     (retry_interval '1m' and max_retry_interval '20m' unless given) and
--     the custom_lua protocol whose constructor is the event
--     make.NAME.log_hook, bound to `constructor(domain, tenant, campaign)`.
--
-- log_hooks:new_json { name, url, log_parameters?, queue_config?,
--                      batch_size?, min_batch_size?, max_batch_latency?,
--                      filter? }
--   the same, with a constructor that POSTs each record (the message body,
--   Content-Type application/json) to url with kumo.http; with batch_size
--   > 1 its send_batch POSTs a JSON array of the records. A 2xx answer is
--   a delivery; anything else, and any transport error, is a transient
--   failure, so the record stays queued and is retried until the queue's
--   max_age: an endpoint that is down or failing only grows the hook's
--   queue.
--
-- Call these at the top level of the policy, before helpers that also
-- answer get_queue_config for every domain (the first answer wins).
local kumo = require 'kumo'

local mod = { CONFIGURED = {} }

local function check_options(options, fields, what)
  if type(options) ~= 'table' then
    error(string.format('%s: expected a table of options, got %s', what, type(options)), 3)
  end
  for k, v in pairs(options) do
    local want = fields[k]
    if want == nil then
      local names = {}
      for name in pairs(fields) do
        table.insert(names, name)
      end
      table.sort(names)
      error(
        string.format(
          '%s: unknown option `%s`, expected one of %s',
          what,
          tostring(k),
          table.concat(names, ', ')
        ),
        3
      )
    end
    if type(v) ~= want.type then
      error(
        string.format('%s: `%s` must be a %s, got %s', what, k, want.type, type(v)),
        3
      )
    end
  end
  for k, want in pairs(fields) do
    if want.required and options[k] == nil then
      error(string.format('%s: `%s` is required', what, k), 3)
    end
  end
end

local HOOK_FIELDS = {
  name = { type = 'string', required = true },
  constructor = { type = 'function', required = true },
  log_parameters = { type = 'table' },
  queue_config = { type = 'table' },
  batch_size = { type = 'number' },
  min_batch_size = { type = 'number' },
  max_batch_latency = { type = 'string' },
  filter = { type = 'function' },
}

function mod:new(options)
  check_options(options, HOOK_FIELDS, 'log_hooks:new')
  local name = options.name
  if mod.CONFIGURED[name] then
    error(string.format("log_hook with name '%s' has already been configured", name), 2)
  end
  mod.CONFIGURED[name] = options

  kumo.on('pre_init', function()
    local params = {}
    for k, v in pairs(options.log_parameters or {}) do
      params[k] = v
    end
    params.name = name
    kumo.configure_log_hook(params)
  end)

  -- ".log_hook" is no real top-level domain: the hook's queue never meets
  -- a real destination's.
  local domain = name .. '.log_hook'
  local constructor_event = 'make.' .. domain

  kumo.on('should_enqueue_log_record', function(msg, hook_name)
    if hook_name ~= name then
      return nil -- another hook's record: let its handler decide
    end
    -- kumod never offers the records of log-record messages to this event
    -- (they would loop), so the record need not be turned into a Lua table
    -- here to check its reception_protocol as a KumoMTA policy does.
    if options.filter and options.filter(msg, hook_name) then
      return false
    end
    msg:set_meta('queue', domain)
    return true
  end)

  local queue_config = {
    retry_interval = '1m',
    max_retry_interval = '20m',
  }
  for k, v in pairs(options.queue_config or {}) do
    queue_config[k] = v
  end
  queue_config.protocol = {
    custom_lua = {
      constructor = constructor_event,
      batch_size = options.batch_size or 1,
      min_batch_size = options.min_batch_size,
      max_batch_latency = options.max_batch_latency,
    },
  }

  kumo.on('get_queue_config', function(queue_domain, tenant, campaign, routing_domain)
    if queue_domain ~= domain then
      return nil
    end
    return kumo.make_queue_config(queue_config)
  end)

  kumo.on(constructor_event, options.constructor)
end

local JSON_FIELDS = {
  name = { type = 'string', required = true },
  url = { type = 'string', required = true },
  log_parameters = { type = 'table' },
  queue_config = { type = 'table' },
  batch_size = { type = 'number' },
  min_batch_size = { type = 'number' },
  max_batch_latency = { type = 'string' },
  filter = { type = 'function' },
}

-- The outcome of one POST: the disposition text on success, otherwise a
-- transient rejection (the records are retried).
local function outcome(response)
  local disposition = string.format(
    '%d %s: %s',
    response:status_code(),
    response:status_reason() or '',
    response:text()
  )
  if response:status_is_success() then
    return disposition
  end
  kumo.reject(400, disposition)
end

function mod:new_json(options)
  check_options(options, JSON_FIELDS, 'log_hooks:new_json')
  local url = options.url
  local hook = {}
  for k, v in pairs(options) do
    if k ~= 'url' then
      hook[k] = v
    end
  end

  hook.constructor = function(domain, tenant, campaign)
    local client = kumo.http.build_client {}
    local connection = {}

    function connection:send(message)
      return outcome(
        client
          :post(url)
          :header('Content-Type', 'application/json')
          :body(message:get_data())
          :send()
      )
    end

    function connection:send_batch(messages)
      -- each message's data is its record's JSON text (kumod's hooks have
      -- no per-record templates): joined, they are the array's text, with
      -- no decoding into Lua tables and encoding back
      local records = {}
      for i, msg in ipairs(messages) do
        records[i] = msg:get_data()
      end
      return outcome(
        client
          :post(url)
          :header('Content-Type', 'application/json')
          :body('[' .. table.concat(records, ',') .. ']')
          :send()
      )
    end

    function connection:close()
      client:close()
    end

    return connection
  end

  return self:new(hook)
end

return mod
