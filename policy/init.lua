-- Example kumod policy: a loopback-only relay that accepts mail on
-- 127.0.0.1:2025, keeps it in a durable RocksDB spool under
-- /var/tmp/kumod, and writes JSON delivery logs. It is runnable as it is:
--   build/kumod --policy policy/init.lua
local kumo = require 'kumo'

local base = os.getenv('KUMOD_EXAMPLE_DIR') or '/var/tmp/kumod'

kumo.on('init', function()
  kumo.define_spool {
    name = 'data',
    path = base .. '/spool/data',
    kind = 'RocksDB',
  }
  kumo.define_spool {
    name = 'meta',
    path = base .. '/spool/meta',
    kind = 'RocksDB',
  }

  kumo.configure_local_logs {
    log_dir = base .. '/logs',
    max_segment_duration = '1 minute',
  }

  kumo.start_esmtp_listener {
    listen = '127.0.0.1:2025',
    hostname = 'mx.example.test',
    -- only loopback clients may relay
    relay_hosts = { '127.0.0.1', '::1' },
  }
end)

kumo.on('smtp_server_message_received', function(msg, conn_meta)
  -- tag every message with the tenant named in an X-Tenant header, if any
  local tenant = msg:get_first_named_header_value('X-Tenant')
  if tenant then
    msg:set_meta('tenant', tenant)
  end
end)
