-- Example kumod policy: a loopback-only relay that accepts mail on
-- 127.0.0.1:2025, keeps it in a durable RocksDB spool under
-- /var/tmp/kumod, and writes JSON delivery logs. It is runnable as it is:
--   build/kumod --policy policy/init.lua
-- Mail for the test domain sink.test is delivered into a local maildir
-- (/var/tmp/kumod/maildir), so trying it out never sends anything to the
-- Internet:
--   swaks --server 127.0.0.1:2025 --to someone@sink.test
local kumo = require 'kumo'

local base = os.getenv('KUMOD_EXAMPLE_DIR') or '/var/tmp/kumod'
-- where to listen (the defaults suit a first try; the tests move them)
local smtp_listen = os.getenv('KUMOD_EXAMPLE_LISTEN') or '127.0.0.1:2025'
local http_listen = os.getenv('KUMOD_EXAMPLE_HTTP') or '127.0.0.1:8000'

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
    listen = smtp_listen,
    hostname = 'mx.example.test',
    -- only loopback clients may relay
    relay_hosts = { '127.0.0.1', '::1' },
  }

  -- the HTTP API (injection, /metrics, kcli) for loopback clients only
  kumo.start_http_listener {
    listen = http_listen,
    trusted_hosts = { '127.0.0.1', '::1' },
  }
end)

kumo.on('smtp_server_message_received', function(msg, conn_meta)
  -- tag every message with the tenant named in an X-Tenant header, if any
  -- (meta is stored as JSON: only a value that is UTF-8 text can go there;
  -- utf8.len returns nil for anything else)
  local tenant = msg:get_first_named_header_value('X-Tenant')
  if tenant and utf8.len(tenant) then
    msg:set_meta('tenant', tenant)
  end
end)

kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  if domain == 'sink.test' then
    return kumo.make_queue_config {
      protocol = { maildir_path = base .. '/maildir' },
    }
  end
  return kumo.make_queue_config {}
end)
