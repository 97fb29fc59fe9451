--[[ policy-extras.shaping: egress path configuration (traffic shaping)
from data files.

  local shaping = require 'policy-extras.shaping'
  kumo.on('get_egress_path_config', shaping:setup {
    '/usr/share/kumod/lua/policy-extras/shaping.toml',  -- optional: kumod's own
    '/opt/kumomta/etc/policy/shaping.toml',
  })

With no files (or nil), kumod's own shaping.toml (next to this module) is
used. Files are TOML, or JSON of the same shape, read in order; each table
is merged key by key over what earlier files said about the same name,
unless it sets replace_base = true.

  ["default"]                  every kumo.make_egress_path option
  connection_limit = 10
  ["example.com"]              rules for the MX site of example.com (its
  max_message_rate = "50/s"    site name: every domain with the same MX
                               hosts shares them) ...
  ["other.example"]
  mx_rollup = false            ... or for this destination domain alone
  ["example.com".sources."ip-1"]   for one egress source only
  connection_limit = 2
  [provider."bigmail"]         rules for every destination whose MX hosts
  match = [{MXSuffix = ".bigmail.example"}, {DomainSuffix = ".bm.example"},
           {HostName = "mx.bigmail.example"}]
  provider_connection_limit = 5     one connection limit and one message
  provider_max_message_rate = "100/s" rate shared by every site matched
  [provider."bigmail".sources."ip-1"]

A destination matches a provider when its domain ends with one of the
DomainSuffix values, or when every one of its MX hosts ends with an
MXSuffix value or equals a HostName value. "automation" arrays (rules for
Traffic Shaping Automation) are accepted and checked for their shape but
not acted upon here.

Options are resolved in this order, each step overriding the previous:
default, matching providers, their per-source tables, the site's table,
the domain's own (mx_rollup = false) table, the site's per-source table,
the domain's per-source table. additional_connection_limits and
additional_message_rate_throttles are merged rather than replaced.

setup reads and checks every file at once and raises an error naming the
file, the table and the key of the first problem. MX lookups for the site
names happen on the first get_egress_path_config call (and again every 5
minutes); a domain whose MX cannot be resolved has its rollup rules
ignored, as KumoMTA does by default.
]]
local kumo = require 'kumo'
local D = require 'policy-extras.datafile'

local mod = {}
local HELPER = 'shaping'

local MAP_KEYS = {
  additional_connection_limits = true,
  additional_message_rate_throttles = true,
  additional_source_selection_rates = true,
}

local probe_path = D.probe(kumo.make_egress_path, {})

local function automation_list(v)
  if type(v) ~= 'table' then
    return 'expected a list of automation rules, got ' .. type(v)
  end
  for i, rule in ipairs(v) do
    if type(rule) ~= 'table' then
      return string.format('automation rule %d is not a table', i)
    end
    if rule.regex == nil or rule.action == nil then
      return string.format('automation rule %d needs regex and action', i)
    end
  end
end

local function match_list(v)
  if type(v) ~= 'table' or #v == 0 then
    return 'expected a non-empty list such as [{MXSuffix = ".example.com"}]'
  end
  for i, m in ipairs(v) do
    if type(m) ~= 'table' then
      return string.format('match item %d is not a table', i)
    end
    local n = 0
    for k, s in pairs(m) do
      n = n + 1
      if k ~= 'MXSuffix' and k ~= 'DomainSuffix' and k ~= 'HostName' then
        return string.format(
          "match item %d: unknown kind '%s' (MXSuffix, DomainSuffix or HostName)",
          i,
          tostring(k)
        )
      end
      if type(s) ~= 'string' or s == '' then
        return string.format('match item %d: %s must be a non-empty string', i, k)
      end
    end
    if n ~= 1 then
      return string.format('match item %d must have exactly one key', i)
    end
  end
end

-- Checks one table of egress path options plus the entry keys in extra.
local function check_entry(ctx, path, tbl, extra)
  D.check_record(ctx, path, tbl, extra, function(k, v)
    return probe_path(k, v)
  end)
  local params = {}
  for k, v in pairs(tbl) do
    if not extra[k] then
      params[k] = v
    end
  end
  local ok, err = pcall(kumo.make_egress_path, params)
  if not ok then
    D.fail(ctx, path, nil, D.clean_error(err))
  end
end

local function sources_table(ctx, path)
  return function(v)
    local p = D.table(v)
    if p then
      return p
    end
    for _, src in ipairs(D.sorted_keys(v)) do
      local sp = { table.unpack(path) }
      sp[#sp + 1] = 'sources'
      sp[#sp + 1] = src
      check_entry(ctx, sp, v[src], {})
    end
  end
end

-- Merges options: map-valued throttles and limits are merged, the rest
-- replaced.
local function merge_params(src, dest)
  for k, v in pairs(src) do
    if MAP_KEYS[k] and type(v) == 'table' and type(dest[k]) == 'table' then
      local m = {}
      for mk, mv in pairs(dest[k]) do
        m[mk] = mv
      end
      for mk, mv in pairs(v) do
        m[mk] = mv
      end
      dest[k] = m
    else
      dest[k] = v
    end
  end
end

local ENTRY_KEYS = { mx_rollup = true, replace_base = true, sources = true, automation = true }
local PROVIDER_KEYS = {
  match = true,
  replace_base = true,
  sources = true,
  automation = true,
  provider_connection_limit = true,
  provider_max_message_rate = true,
  provider_source_selection_rate = true,
}

-- An accumulated entry: { params, sources = {name -> params}, automation,
-- where = {ctx, path} for messages }
local function new_entry()
  return { params = {}, sources = {}, automation = {}, match = {} }
end

local function merge_entry(raw, acc, keys, ctx, path)
  if raw.replace_base then
    acc = new_entry()
  end
  local params = {}
  for k, v in pairs(raw) do
    if not keys[k] then
      params[k] = v
    end
  end
  merge_params(params, acc.params)
  for src, sp in pairs(raw.sources or {}) do
    acc.sources[src] = acc.sources[src] or {}
    merge_params(sp, acc.sources[src])
    acc.source_where = acc.source_where or {}
    acc.source_where[src] = { ctx = ctx, path = path }
  end
  for _, rule in ipairs(raw.automation or {}) do
    acc.automation[#acc.automation + 1] = rule
  end
  for _, m in ipairs(raw.match or {}) do
    acc.match[#acc.match + 1] = m
  end
  for _, k in ipairs {
    'provider_connection_limit',
    'provider_max_message_rate',
    'provider_source_selection_rate',
  } do
    if raw[k] ~= nil then
      acc[k] = raw[k]
    end
  end
  acc.where = { ctx = ctx, path = path }
  return acc
end

-- Reads and checks the files; no DNS. Returns
-- { default, providers = {name -> entry}, provider_order = {...},
--   domains = {domain -> entry (mx_rollup=false)},
--   rollup = {domain -> entry (mx_rollup=true)}, rollup_order = {...} }
local function parse_files(files)
  local data = {
    default = new_entry(),
    providers = {},
    provider_order = {},
    domains = {},
    rollup = {},
    rollup_order = {},
  }
  for _, file in ipairs(files) do
    local raw = D.load(HELPER, file)
    local ctx = D.context(HELPER, file)
    for _, name in ipairs(D.sorted_keys(raw)) do
      local tbl = raw[name]
      if name == 'provider' then
        local p = D.table(tbl)
        if p then
          D.fail(ctx, {}, name, p)
        end
        for _, prov in ipairs(D.sorted_keys(tbl)) do
          local path = { 'provider', prov }
          local ptbl = tbl[prov]
          local p2 = D.table(ptbl)
          if p2 then
            D.fail(ctx, { 'provider' }, prov, p2)
          end
          check_entry(ctx, path, ptbl, {
            match = match_list,
            replace_base = D.bool,
            sources = sources_table(ctx, path),
            automation = automation_list,
            provider_connection_limit = D.non_negative_integer,
            provider_max_message_rate = D.throttle,
            provider_source_selection_rate = D.throttle,
          })
          if not data.providers[prov] then
            data.provider_order[#data.provider_order + 1] = prov
          end
          data.providers[prov] =
            merge_entry(ptbl, data.providers[prov] or new_entry(), PROVIDER_KEYS, ctx, path)
          if #data.providers[prov].match == 0 then
            D.fail(ctx, path, 'match', 'a provider needs a match list')
          end
        end
      else
        local path = { name }
        local p = D.table(tbl)
        if p then
          D.fail(ctx, {}, name, p)
        end
        check_entry(ctx, path, tbl, {
          mx_rollup = D.bool,
          replace_base = D.bool,
          sources = sources_table(ctx, path),
          automation = automation_list,
        })
        if name == 'default' then
          data.default = merge_entry(tbl, data.default, ENTRY_KEYS, ctx, path)
        elseif tbl.mx_rollup == false then
          data.domains[name] = merge_entry(tbl, data.domains[name] or new_entry(), ENTRY_KEYS, ctx, path)
        else
          if not data.rollup[name] then
            data.rollup_order[#data.rollup_order + 1] = name
          end
          data.rollup[name] = merge_entry(tbl, data.rollup[name] or new_entry(), ENTRY_KEYS, ctx, path)
        end
      end
    end
  end
  -- the merged result of each table must still be valid
  local function final_check(entry)
    local ok, err = pcall(kumo.make_egress_path, entry.params)
    if not ok then
      D.fail(entry.where.ctx, entry.where.path, nil, D.clean_error(err) .. ' (after merging)')
    end
  end
  final_check(data.default)
  for _, e in pairs(data.domains) do
    final_check(e)
  end
  for _, e in pairs(data.rollup) do
    final_check(e)
  end
  return data
end
mod.parse_files = parse_files

local function norm(name)
  return (tostring(name):lower():gsub('%.+$', ''))
end

local function suffix_matches(name, suffix)
  name, suffix = norm(name), norm(suffix)
  return suffix ~= '' and #name >= #suffix and name:sub(-#suffix) == suffix
end

local function looks_like_domain(s)
  return type(s) == 'string' and s:match '^[%w%-_%.]+$' ~= nil and s:find('.', 1, true) ~= nil
end

local function lookup_hosts(domain)
  local ok, mx = pcall(kumo.dns.lookup_mx, domain)
  if not ok or type(mx) ~= 'table' then
    return nil
  end
  return mx
end

-- Whether a provider entry matches a destination domain.
local function provider_matches(entry, domain)
  local need_mx = false
  for _, m in ipairs(entry.match) do
    if m.DomainSuffix and suffix_matches(domain, m.DomainSuffix) then
      return true
    end
    if m.MXSuffix or m.HostName then
      need_mx = true
    end
  end
  if not need_mx then
    return false
  end
  local mx = lookup_hosts(domain)
  if not mx or not mx.hosts or #mx.hosts == 0 then
    return false
  end
  for _, host in ipairs(mx.hosts) do
    local ok = false
    for _, m in ipairs(entry.match) do
      if m.MXSuffix and suffix_matches(host, m.MXSuffix) then
        ok = true
      elseif m.HostName and norm(host) == norm(m.HostName) then
        ok = true
      end
    end
    if not ok then
      return false
    end
  end
  return true
end

-- The options a provider implies for a source: its name, and its shared
-- limits as named additional limits.
local function provider_implied(name, entry, source, params)
  local implied = { provider_name = name }
  if entry.provider_connection_limit then
    implied.additional_connection_limits = {
      [string.format('shaping-provider-%s-%s-limit', name, source)] = entry.provider_connection_limit,
    }
  end
  if entry.provider_max_message_rate then
    implied.additional_message_rate_throttles = {
      [string.format('shaping-provider-%s-%s-rate', name, source)] = entry.provider_max_message_rate,
    }
  end
  if entry.provider_source_selection_rate then
    implied.additional_source_selection_rates = {
      [string.format('shaping-provider-%s-%s-selection-rate', name, source)] = entry.provider_source_selection_rate,
    }
  end
  merge_params(implied, params)
end

-- Adds site names to parsed data (needs DNS: runs in an event handler).
local function resolve_sites(data)
  local by_site = {}
  for _, domain in ipairs(data.rollup_order) do
    local mx = lookup_hosts(domain)
    local site = mx and mx.site_name
    if site and site ~= '' then
      local acc = by_site[site]
      if not acc then
        by_site[site] = {
          params = {},
          sources = {},
        }
        acc = by_site[site]
      end
      local e = data.rollup[domain]
      merge_params(e.params, acc.params)
      for src, sp in pairs(e.sources) do
        acc.sources[src] = acc.sources[src] or {}
        merge_params(sp, acc.sources[src])
      end
    end
  end
  data.by_site = by_site
  return data
end

local function load_data(files)
  return resolve_sites(parse_files(files))
end

-- The merged options for (domain, source, site_name).
local function resolve(data, domain, source, site_name)
  local params = {}
  merge_params(data.default.params, params)
  if looks_like_domain(domain) then
    local matched = {}
    for _, name in ipairs(data.provider_order) do
      local entry = data.providers[name]
      if provider_matches(entry, domain) then
        merge_params(entry.params, params)
        provider_implied(name, entry, source, params)
        matched[#matched + 1] = name
      end
    end
    for _, name in ipairs(matched) do
      local entry = data.providers[name]
      local sp = entry.sources[source]
      if sp then
        merge_params(sp, params)
        provider_implied(name, entry, source, params)
      end
    end
  end
  local site = site_name and data.by_site and data.by_site[site_name]
  if site then
    merge_params(site.params, params)
  end
  local dom = data.domains[domain]
  if dom then
    merge_params(dom.params, params)
  end
  if site and site.sources[source] then
    merge_params(site.sources[source], params)
  end
  if dom and dom.sources[source] then
    merge_params(dom.sources[source], params)
  end
  return params
end

-- kumod's own shaping.toml: next to this module.
function mod.default_file()
  local path = package.searchpath('policy-extras.shaping', package.path)
  if path then
    return (path:gsub('%.lua$', '.toml'))
  end
  return nil
end

function mod:setup(files)
  if mod.CONFIGURED then
    error('shaping: setup was already called', 2)
  end
  if files == nil then
    files = { mod.default_file() }
  end
  files = D.file_list(HELPER, files)
  parse_files(files)
  local cached = kumo.memoize(load_data, {
    name = 'policy-extras.shaping',
    ttl = '5 minutes',
    capacity = 4,
    invalidate_with_epoch = true,
  })
  local function get_data()
    return cached(files)
  end
  mod.CONFIGURED = { files = files, get_data = get_data }

  local function get_egress_path_config(domain, egress_source, site_name)
    return kumo.make_egress_path(resolve(get_data(), domain, egress_source, site_name))
  end
  mod.CONFIGURED.get_egress_path_config = get_egress_path_config
  return get_egress_path_config
end

-- The resolved options (a table) for a destination, as the handler would
-- use them: for tests and for other helpers.
function mod.resolve_params(domain, egress_source, site_name)
  assert(mod.CONFIGURED, 'shaping: setup has not been called')
  return resolve(mod.CONFIGURED.get_data(), domain, egress_source, site_name)
end

-- The name of the first provider matching a domain, or nil (the queue
-- helper fills provider_name with it).
function mod.provider_for_domain(domain)
  if not mod.CONFIGURED or not looks_like_domain(domain) then
    return nil
  end
  local data = mod.CONFIGURED.get_data()
  for _, name in ipairs(data.provider_order) do
    if provider_matches(data.providers[name], domain) then
      return name
    end
  end
  return nil
end

-- Every egress source named in a sources table, with where it was named.
local function referenced_sources(data)
  local refs = {}
  local function add(entry)
    for src, w in pairs(entry.source_where or {}) do
      refs[#refs + 1] = { source = src, where = w }
    end
  end
  add(data.default)
  for _, e in pairs(data.providers) do
    add(e)
  end
  for _, e in pairs(data.domains) do
    add(e)
  end
  for _, e in pairs(data.rollup) do
    add(e)
  end
  table.sort(refs, function(a, b)
    return a.source < b.source
  end)
  return refs
end

-- kumod --validate: per-source tables must name sources the sources helper
-- defines; a one-label domain name is almost always a TOML quoting mistake.
kumo.on('validate_config', function()
  if not mod.CONFIGURED then
    return
  end
  local data = parse_files(mod.CONFIGURED.files)
  for _, e in pairs(data.rollup) do
    local name = e.where.path[1]
    if not name:find('.', 1, true) then
      D.fail(
        e.where.ctx,
        {},
        name,
        string.format(
          'a domain with a single label; write ["%s.com"] (quoted) rather than [%s.com], '
            .. 'which makes a nested table',
          name,
          name
        )
      )
    end
  end
  local sources = package.loaded['policy-extras.sources']
  if sources and sources.CONFIGURED then
    local defined = sources.CONFIGURED.get_data().sources
    for _, r in ipairs(referenced_sources(data)) do
      if not defined[r.source] then
        local p = { table.unpack(r.where.path) }
        p[#p + 1] = 'sources'
        D.fail(
          r.where.ctx,
          p,
          r.source,
          string.format("egress source '%s' is not defined by the sources helper", r.source)
        )
      end
    end
  end
end)

return mod
