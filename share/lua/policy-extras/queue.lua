--[[ policy-extras.queue: tenants, campaigns and queue configuration from
data files.

  local queue_module = require 'policy-extras.queue'
  local queue_helper = queue_module:setup { '/opt/kumomta/etc/policy/queues.toml' }
  kumo.on('smtp_server_message_received', function(msg)
    queue_helper:apply(msg)
  end)

Data file (TOML, or JSON of the same shape; later files override earlier
ones key by key):

  scheduling_header = "X-Schedule"      msg:import_scheduling_header(H, true)
  tenant_header = "X-Tenant"            the tenant comes from this header
  remove_tenant_header = true           ... which is then removed
  campaign_header = "X-Campaign"
  remove_campaign_header = true
  default_tenant = "default-tenant"     when the header is absent

  [tenant.NAME]                         egress_pool and any
  egress_pool = "pool-1"                kumo.make_queue_config option, plus
  require_authz = ["user"]              only these SMTP AUTH identities may
                                        name the tenant
  overall_max_message_rate = "100/s"    one throttle over all the tenant's
                                        queues
  [tenant.NAME.campaigns.CAMPAIGN]      overall_max_message_rate per campaign

  [queue.default]                       options for every queue
  [queue.'DOMAIN']                      options for one destination domain
                                        (wildcards like '*.example.com');
  routing_domain = "[10.0.0.1]"         also sets the message's routing_domain
  [queue.'DOMAIN'.'TENANT']             ... for that tenant
  [queue.'DOMAIN'.'TENANT'.'CAMPAIGN']  ... and that campaign

get_queue_config merges, in this order: queue.default, queue.DOMAIN,
tenant.TENANT, queue.DOMAIN.TENANT, queue.DOMAIN.TENANT.CAMPAIGN.

setup checks every file at once (and, when the sources helper is set up,
that every egress_pool is one of its pools) and raises an error naming the
file, the table and the key of the first problem.
]]
local kumo = require 'kumo'
local D = require 'policy-extras.datafile'

local mod = {}
local HELPER = 'queue'

-- Keys that are the helper's own, never passed to make_queue_config.
local TOP_SCHEMA = {
  scheduling_header = D.string,
  tenant_header = D.string,
  remove_tenant_header = D.bool,
  campaign_header = D.string,
  remove_campaign_header = D.bool,
  default_tenant = D.string,
  tenant = D.table,
  queue = D.table,
}

local probe_queue = D.probe(kumo.make_queue_config, {})

-- Whether (k, v) is a make_queue_config option: nil (yes), 'unknown', or
-- the problem with the value.
local function queue_option(k, v)
  if k == 'refresh_strategy' and v == nil then
    return nil
  end
  return probe_queue(k, v)
end
mod.is_queue_config_option = function(k, v)
  return queue_option(k, v) == nil
end

-- One level of [queue.X...]: its options, its routing_domain and its
-- sub-levels (tables under keys that are not options), when allowed.
local function parse_level(ctx, path, tbl, depth)
  local p = D.table(tbl)
  if p then
    D.fail(ctx, { table.unpack(path, 1, #path - 1) }, path[#path], p)
  end
  local level = { opts = {}, sub = {} }
  for _, k in ipairs(D.sorted_keys(tbl)) do
    local v = tbl[k]
    if k == 'routing_domain' then
      local p2 = D.string(v)
      if p2 then
        D.fail(ctx, path, k, p2)
      end
      level.routing_domain = v
    elseif k == 'overall_max_message_rate' then
      local p2 = D.throttle(v)
      if p2 then
        D.fail(ctx, path, k, p2)
      end
      level.overall_max_message_rate = v
    else
      local problem = queue_option(k, v)
      if problem == nil then
        level.opts[k] = v
      elseif problem == 'unknown' and type(v) == 'table' and depth < 3 then
        local subpath = { table.unpack(path) }
        subpath[#subpath + 1] = k
        level.sub[k] = parse_level(ctx, subpath, v, depth + 1)
      elseif problem == 'unknown' then
        D.fail(ctx, path, k, 'unknown key')
      else
        D.fail(ctx, path, k, problem)
      end
    end
  end
  return level
end

local function merge_level(src, dest)
  for k, v in pairs(src.opts) do
    dest.opts[k] = v
  end
  dest.routing_domain = src.routing_domain or dest.routing_domain
  dest.overall_max_message_rate = src.overall_max_message_rate
    or dest.overall_max_message_rate
  for k, sub in pairs(src.sub) do
    dest.sub[k] = dest.sub[k] or { opts = {}, sub = {} }
    merge_level(sub, dest.sub[k])
  end
  dest.ctx = src.ctx or dest.ctx
end

local function parse_tenant(ctx, name, tbl)
  local path = { 'tenant', name }
  local p = D.table(tbl)
  if p then
    D.fail(ctx, { 'tenant' }, name, p)
  end
  local t = { opts = {}, campaigns = {}, ctx = ctx }
  for _, k in ipairs(D.sorted_keys(tbl)) do
    local v = tbl[k]
    if k == 'require_authz' then
      local p2 = D.string_list(v)
      if p2 then
        D.fail(ctx, path, k, p2)
      end
      t.require_authz = v
    elseif k == 'overall_max_message_rate' then
      local p2 = D.throttle(v)
      if p2 then
        D.fail(ctx, path, k, p2)
      end
      t.overall_max_message_rate = v
    elseif k == 'campaigns' then
      local p2 = D.table(v)
      if p2 then
        D.fail(ctx, path, k, p2)
      end
      for _, c in ipairs(D.sorted_keys(v)) do
        D.check_record(
          ctx,
          { 'tenant', name, 'campaigns', c },
          v[c],
          { overall_max_message_rate = D.throttle }
        )
        t.campaigns[c] = { overall_max_message_rate = v[c].overall_max_message_rate }
      end
    else
      local problem = queue_option(k, v)
      if problem == 'unknown' then
        D.fail(ctx, path, k, 'unknown key')
      elseif problem then
        D.fail(ctx, path, k, problem)
      end
      t.opts[k] = v
    end
  end
  return t
end

local function load_one(file, cfg)
  local data = D.load(HELPER, file)
  local ctx = D.context(HELPER, file)
  D.check_record(ctx, {}, data, TOP_SCHEMA)
  for k, v in pairs(data) do
    if k ~= 'tenant' and k ~= 'queue' then
      cfg[k] = v
    end
  end
  for _, name in ipairs(D.sorted_keys(data.tenant or {})) do
    local t = parse_tenant(ctx, name, data.tenant[name])
    local dest = cfg.tenants[name]
    if not dest then
      cfg.tenants[name] = t
    else
      for k, v in pairs(t.opts) do
        dest.opts[k] = v
      end
      for c, cv in pairs(t.campaigns) do
        dest.campaigns[c] = cv
      end
      dest.require_authz = t.require_authz or dest.require_authz
      dest.overall_max_message_rate = t.overall_max_message_rate
        or dest.overall_max_message_rate
      dest.ctx = ctx
    end
  end
  for _, domain in ipairs(D.sorted_keys(data.queue or {})) do
    local level = parse_level(ctx, { 'queue', domain }, data.queue[domain], 1)
    level.ctx = ctx
    cfg.queues[domain] = cfg.queues[domain] or { opts = {}, sub = {} }
    merge_level(level, cfg.queues[domain])
  end
end

local function cross_check(cfg)
  local sources = package.loaded['policy-extras.sources']
  if sources and sources.CONFIGURED then
    for _, name in ipairs(D.sorted_keys(cfg.tenants)) do
      local t = cfg.tenants[name]
      local pool = t.opts.egress_pool
      if pool and not sources.has_pool(pool) then
        D.fail(
          t.ctx,
          { 'tenant', name },
          'egress_pool',
          string.format("pool '%s' is not defined by the sources helper", pool)
        )
      end
    end
    local function walk(level, path)
      local pool = level.opts.egress_pool
      if pool and not sources.has_pool(pool) then
        D.fail(
          level.ctx or { helper = HELPER, file = '?' },
          path,
          'egress_pool',
          string.format("pool '%s' is not defined by the sources helper", pool)
        )
      end
      for k, sub in pairs(level.sub) do
        sub.ctx = sub.ctx or level.ctx
        local p = { table.unpack(path) }
        p[#p + 1] = k
        walk(sub, p)
      end
    end
    for _, domain in ipairs(D.sorted_keys(cfg.queues)) do
      walk(cfg.queues[domain], { 'queue', domain })
    end
  end
  -- a tenant given as the default must exist
  if cfg.default_tenant and not cfg.tenants[cfg.default_tenant] then
    error(
      string.format(
        "%s: default_tenant: tenant '%s' has no [tenant.%s] table in any queue file",
        HELPER,
        cfg.default_tenant,
        D.quote_key(cfg.default_tenant)
      ),
      0
    )
  end
end

local function has_overall_throttles(cfg)
  for _, t in pairs(cfg.tenants) do
    if t.overall_max_message_rate then
      return true
    end
    for _, c in pairs(t.campaigns) do
      if c.overall_max_message_rate then
        return true
      end
    end
  end
  return false
end

local function load_data(files)
  local cfg = { tenants = {}, queues = {} }
  for _, file in ipairs(files) do
    load_one(file, cfg)
  end
  cross_check(cfg)
  cfg.default = cfg.queues.default
  cfg.map = kumo.domain_map.new()
  for domain, level in pairs(cfg.queues) do
    if domain ~= 'default' then
      cfg.map[domain] = level
    end
  end
  return cfg
end
mod.load_data = load_data

-- The merged queue options and routing_domain for a queue.
local function resolve(cfg, domain, tenant, campaign)
  local params = {}
  local routing_domain
  local function add(level)
    if level then
      for k, v in pairs(level.opts) do
        params[k] = v
      end
      routing_domain = level.routing_domain or routing_domain
    end
  end
  add(cfg.default)
  local dlevel = domain and cfg.map[domain]
  add(dlevel)
  local t = tenant and cfg.tenants[tenant]
  if t then
    for k, v in pairs(t.opts) do
      params[k] = v
    end
  end
  if dlevel and tenant then
    local tlevel = dlevel.sub[tenant]
    add(tlevel)
    if tlevel and campaign then
      add(tlevel.sub[campaign])
    end
  end
  return params, routing_domain
end

function mod:setup(files)
  return self:setup_with_options { file_names = files }
end

function mod:setup_with_options(options)
  if mod.CONFIGURED then
    error('queue: setup was already called', 2)
  end
  D.check_record(
    { helper = HELPER, file = 'setup_with_options' },
    {},
    options,
    {
      file_names = D.table,
      skip_queue_config_hook = D.bool,
      invalidate_with_epoch = D.bool,
    }
  )
  local files = D.file_list(HELPER, options.file_names)
  local first = load_data(files)
  local cached = kumo.memoize(load_data, {
    name = 'policy-extras.queue',
    ttl = '1 minute',
    capacity = 4,
    invalidate_with_epoch = options.invalidate_with_epoch ~= false,
  })
  local function get_data()
    return cached(files)
  end

  local helper = { file_names = files }

  -- The make_queue_config parameters for a queue (a table), as the hook
  -- would use them.
  function helper:resolve_config(domain, tenant, campaign)
    local params = resolve(get_data(), domain, tenant, campaign)
    params.refresh_strategy = params.refresh_strategy or 'Epoch'
    local shaping = package.loaded['policy-extras.shaping']
    if params.provider_name == nil and shaping and shaping.provider_for_domain then
      params.provider_name = shaping.provider_for_domain(domain)
    end
    return params
  end

  function helper:apply(msg)
    local cfg = get_data()
    if cfg.scheduling_header then
      msg:import_scheduling_header(cfg.scheduling_header, true)
    end
    if cfg.campaign_header then
      local campaign = msg:get_first_named_header_value(cfg.campaign_header)
      if campaign then
        msg:set_meta('campaign', campaign)
        if cfg.remove_campaign_header then
          msg:remove_all_named_headers(cfg.campaign_header)
        end
      end
    end
    local tenant, from_where
    if cfg.tenant_header then
      tenant = msg:get_first_named_header_value(cfg.tenant_header)
      if tenant then
        from_where = string.format("the '%s' header", cfg.tenant_header)
        if cfg.remove_tenant_header then
          msg:remove_all_named_headers(cfg.tenant_header)
        end
      end
    end
    if not tenant and cfg.default_tenant then
      tenant = cfg.default_tenant
      from_where = 'default_tenant'
    end
    if tenant then
      local t = cfg.tenants[tenant]
      if not t then
        kumo.reject(
          500,
          string.format('tenant %q named by %s is not a known tenant', tenant, from_where)
        )
      end
      if t.require_authz then
        local authz = msg:get_meta 'authz_id'
        if not authz then
          kumo.reject(500, string.format('tenant %q requires SMTP AUTH', tenant))
        end
        local allowed = false
        for _, a in ipairs(t.require_authz) do
          if a == authz then
            allowed = true
          end
        end
        if not allowed then
          kumo.reject(
            500,
            string.format('%q may not send as tenant %q', authz, tenant)
          )
        end
      end
      msg:set_meta('tenant', tenant)
    end
    local recip = msg:recipient_list()[1]
    if recip then
      local _, routing_domain =
        resolve(cfg, recip.domain, msg:get_meta 'tenant', msg:get_meta 'campaign')
      if routing_domain then
        msg:set_meta('routing_domain', routing_domain)
      end
    end
  end

  mod.CONFIGURED = { options = options, files = files, get_data = get_data, helper = helper }

  if not options.skip_queue_config_hook then
    kumo.on('get_queue_config', function(domain, tenant, campaign, _routing_domain)
      return kumo.make_queue_config(helper:resolve_config(domain, tenant, campaign))
    end)
  end

  -- overall_max_message_rate: one throttle over every scheduled queue of
  -- the tenant (or of its campaign), checked as a message is about to move
  -- to its ready queue; a message over the limit waits in its scheduled
  -- queue (counted in delayed_due_to_throttle_insert_ready). The names are
  -- KumoMTA's, so a cluster shares them through configure_redis_throttles.
  -- Installed only when the data has such a rate (the event costs a meta
  -- load per message); data that gains one later takes effect when the
  -- policy is reloaded (SIGHUP or a config epoch bump re-runs setup).
  if has_overall_throttles(first) then
    kumo.on('throttle_insert_ready_queue', function(msg)
      local tenant = msg:get_meta 'tenant'
      if not tenant then
        return
      end
      local t = get_data().tenants[tenant]
      if not t then
        return
      end
      if t.overall_max_message_rate then
        local th = kumo.make_throttle(
          string.format('queue-helper-tenant-overall_max_message_rate-%s', tenant),
          t.overall_max_message_rate
        )
        if th:delay_message_if_throttled(msg) then
          return
        end
      end
      local campaign = msg:get_meta 'campaign'
      local c = campaign and t.campaigns[campaign]
      if c and c.overall_max_message_rate then
        local th = kumo.make_throttle(
          string.format(
            'queue-helper-tenant-campaign-overall_max_message_rate-%s-%s',
            tenant,
            campaign
          ),
          c.overall_max_message_rate
        )
        th:delay_message_if_throttled(msg)
      end
    end)
  end

  return helper
end

-- The sources helper may be set up after this one: check the pools again
-- once the whole policy is loaded.
kumo.on('validate_config', function()
  if mod.CONFIGURED then
    cross_check(load_data(mod.CONFIGURED.files))
  end
end)

return mod
