-- kumod's example policy built on the policy-extras helpers, laid out as
-- KumoMTA's user guide example (userguide/configuration/example.md): the
-- helpers are set up first from the TOML files beside this file, then the
-- init event and the message events use them. It runs as it is:
--   build/kumod --policy policy/example.lua
-- (from a build tree, also set KUMOD_LUA_PATH="$PWD/share/lua/?.lua").
-- It listens on 127.0.0.1:2025 and keeps its spool, logs and maildir under
-- /var/tmp/kumod (KUMOD_EXAMPLE_DIR moves them). Mail for the test domain
-- sink.test goes into a local maildir, so trying it out sends nothing to
-- the Internet:
--   swaks --server 127.0.0.1:2025 --to someone@sink.test --header 'X-Tenant: mytenant'
-- Check your edits with: kumod --policy policy/example.lua --validate
local kumo = require 'kumo'

-- where this file and its TOML files live
local here = debug.getinfo(1, 'S').source:match '^@(.*)/[^/]*$' or '.'
local base = os.getenv 'KUMOD_EXAMPLE_DIR' or '/var/tmp/kumod'
local smtp_listen = os.getenv 'KUMOD_EXAMPLE_LISTEN' or '127.0.0.1:2025'
local http_listen = os.getenv 'KUMOD_EXAMPLE_HTTP' or '127.0.0.1:8000'

-- Load the policy helpers
local shaping = require 'policy-extras.shaping'
local queue_module = require 'policy-extras.queue'
local listener_domains = require 'policy-extras.listener_domains'
local sources = require 'policy-extras.sources'
local dkim_sign = require 'policy-extras.dkim_sign'

-- START SETUP

-- Sending IPs and pools (sources.toml). Pools do nothing until queues use
-- them: queues.toml assigns one to each tenant.
sources:setup { here .. '/sources.toml' }

-- DKIM signing (dkim_data.toml): mail From a domain listed there is signed.
local dkim_signer = dkim_sign:setup { here .. '/dkim_data.toml' }

-- Traffic shaping: kumod's own rules for the large mailbox providers, then
-- yours (shaping.toml), which override them. (KumoMTA's example uses
-- shaping:setup_with_automation for Traffic Shaping Automation, which
-- kumod does not have yet; log_hooks webhooks are not there yet either.)
local get_egress_path_config = shaping:setup {
  shaping.default_file(),
  here .. '/shaping.toml',
}

-- Tenants, campaigns and queue settings (queues.toml). The helper's own
-- get_queue_config hook is replaced by the one below, which adds the
-- maildir delivery of the local test domain to the helper's settings.
local queue_helper = queue_module:setup_with_options {
  file_names = { here .. '/queues.toml' },
  skip_queue_config_hook = true,
}

-- END SETUP

-- START EVENT HANDLERS

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
    headers = { 'Subject' },
    meta = { 'tenant', 'campaign' },
  }

  kumo.start_http_listener {
    listen = http_listen,
    trusted_hosts = { '127.0.0.1', '::1' },
  }

  kumo.start_esmtp_listener {
    listen = smtp_listen,
    hostname = 'mx.sink.test',
    -- loopback clients may relay anywhere; others only as
    -- listener_domains.toml allows
    relay_hosts = { '127.0.0.1', '::1' },
  }
end)

-- Relaying, bounce and feedback reports for other clients
-- (listener_domains.toml)
kumo.on(
  'get_listener_domain',
  listener_domains:setup { here .. '/listener_domains.toml' }
)

kumo.on('get_egress_path_config', get_egress_path_config)

kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
  local params = queue_helper:resolve_config(domain, tenant, campaign)
  if domain == 'sink.test' then
    params.protocol = { maildir_path = base .. '/maildir' }
  end
  return kumo.make_queue_config(params)
end)

-- Messages arriving over SMTP
kumo.on('smtp_server_message_received', function(msg)
  -- refuse bare LF line endings (SMTP smuggling)
  local failed = msg:check_fix_conformance('NON_CANONICAL_LINE_ENDINGS', '')
  if failed then
    kumo.reject(552, string.format('5.6.0 %s', failed))
  end
  queue_helper:apply(msg)
  -- signing comes last: any later change would break the signature
  dkim_signer(msg)
end)

-- Messages injected over HTTP
kumo.on('http_message_generated', function(msg)
  queue_helper:apply(msg)
  dkim_signer(msg)
end)

-- END OF EVENT HANDLERS
