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
MXSuffix value or equals a HostName value. "automation" arrays hold the
rules of Traffic Shaping Automation (arrays of tables DOMAIN.automation: regex, action,
trigger, duration, match_internal); they are checked here and evaluated by
the TSA daemon (kumod --tsa, see setup_with_automation below and
mod.load, which is kumo.shaping.load).

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

-- Traffic Shaping Automation rules ([[DOMAIN.automation]]): each must
-- have a regex (string or list) that compiles, one action or a list of
-- them, a duration, and optionally a trigger and match_internal.
local SIMPLE_ACTIONS = {
  Suspend = true,
  SuspendTenant = true,
  SuspendCampaign = true,
  Bounce = true,
  BounceTenant = true,
  BounceCampaign = true,
}
local RULE_KEYS = { regex = true, action = true, trigger = true, duration = true, match_internal = true }

local function check_action(a)
  if type(a) == 'string' then
    if SIMPLE_ACTIONS[a] then
      return nil
    end
    return string.format(
      "unknown action '%s' (Suspend, SuspendTenant, SuspendCampaign, Bounce, BounceTenant, "
        .. 'BounceCampaign, {SetConfig={name, value}}, {SetDomainConfig={name, value}})',
      a
    )
  end
  if type(a) ~= 'table' then
    return 'an action is a string or a table such as {SetConfig={name="...", value="..."}}'
  end
  local kind, body
  for k, v in pairs(a) do
    if kind then
      return 'an action table must have exactly one key'
    end
    kind, body = k, v
  end
  if kind ~= 'SetConfig' and kind ~= 'SetDomainConfig' then
    return string.format("unknown action '%s'", tostring(kind))
  end
  if type(body) ~= 'table' or type(body.name) ~= 'string' or body.value == nil then
    return kind .. ' needs {name = "OPTION", value = VALUE}'
  end
  for k in pairs(body) do
    if k ~= 'name' and k ~= 'value' then
      return string.format("%s: unknown key '%s'", kind, tostring(k))
    end
  end
  local ok, err = pcall(kumo.make_egress_path, { [body.name] = body.value })
  if not ok then
    return string.format('%s %s: %s', kind, body.name, D.clean_error(err))
  end
end

-- Checks one rule; returns the key and the problem, or nil.
local function check_rule(rule)
  if type(rule) ~= 'table' then
    return nil, 'an automation rule is a table'
  end
  for k in pairs(rule) do
    if not RULE_KEYS[k] then
      return tostring(k), 'unknown key (regex, action, trigger, duration, match_internal)'
    end
  end
  local regexes = rule.regex
  if type(regexes) == 'string' then
    regexes = { regexes }
  end
  if type(regexes) ~= 'table' or #regexes == 0 then
    return 'regex', 'required: a regular expression or a list of them'
  end
  for _, r in ipairs(regexes) do
    if type(r) ~= 'string' then
      return 'regex', 'expected a string'
    end
    local ok, err = pcall(kumo.regex.compile, r)
    if not ok then
      return 'regex', D.clean_error(err)
    end
  end
  if rule.action == nil then
    return 'action', 'required'
  end
  local actions = rule.action
  if type(actions) ~= 'table' or #actions == 0 then
    actions = { actions }
  end
  for _, a in ipairs(actions) do
    local p = check_action(a)
    if p then
      return 'action', p
    end
  end
  if rule.duration == nil then
    return 'duration', 'required (a duration such as "2 hours")'
  end
  local secs, derr = kumo.shaping._parse_duration(rule.duration)
  if not secs then
    return 'duration', derr
  end
  local t = rule.trigger
  if t ~= nil and t ~= 'Immediate' then
    if type(t) ~= 'table' or type(t.Threshold) ~= 'string' then
      return 'trigger', 'expected "Immediate" or {Threshold = "N/period"}'
    end
    for k in pairs(t) do
      if k ~= 'Threshold' then
        return 'trigger', string.format("unknown kind '%s'", tostring(k))
      end
    end
    local limit, perr = kumo.shaping._parse_threshold(t.Threshold)
    if not limit then
      return 'trigger', perr
    end
  end
  if rule.match_internal ~= nil and type(rule.match_internal) ~= 'boolean' then
    return 'match_internal', 'expected a boolean'
  end
end

-- A checked rule in the form the TSA evaluates: regexes compiled.
local function compile_rule(rule, was_rollup)
  local regexes = type(rule.regex) == 'string' and { rule.regex } or rule.regex
  local actions = rule.action
  if type(actions) ~= 'table' or #actions == 0 then
    actions = { actions }
  end
  local compiled = {}
  for i, r in ipairs(regexes) do
    compiled[i] = kumo.regex.compile(r)
  end
  return {
    regex = regexes,
    action = actions,
    trigger = rule.trigger or 'Immediate',
    duration = kumo.shaping._parse_duration(rule.duration),
    match_internal = rule.match_internal == true,
    was_rollup = was_rollup,
    _re = compiled,
  }
end

local function automation_list(ctx, path)
  return function(v)
    if type(v) ~= 'table' then
      return 'expected a list of automation rules, got ' .. type(v)
    end
    for i, rule in ipairs(v) do
      local key, problem = check_rule(rule)
      if problem then
        local p = { table.unpack(path) }
        p[#p + 1] = 'automation'
        p[#p + 1] = tostring(i)
        D.fail(ctx, p, key, problem)
      end
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
            automation = automation_list(ctx, path),
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
          automation = automation_list(ctx, path),
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
          automation = {},
        }
        acc = by_site[site]
      end
      local e = data.rollup[domain]
      merge_params(e.params, acc.params)
      for src, sp in pairs(e.sources) do
        acc.sources[src] = acc.sources[src] or {}
        merge_params(sp, acc.sources[src])
      end
      for _, rule in ipairs(e.automation) do
        acc.automation[#acc.automation + 1] = rule
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

-- ---- Traffic Shaping Automation ------------------------------------------

-- The configuration overrides the TSA daemon published (its
-- get_config_v1/shaping.toml, fetched by the subscriber every second) over
-- params: a table for the destination's own domain, or for a domain whose
-- rules roll up to the same site, then its per-source table.
local function apply_overrides(params, domain, source, site_name)
  local fn = kumo.shaping and kumo.shaping.automation_overrides
  local over = fn and fn()
  if type(over) ~= 'table' then
    return params
  end
  for _, odomain in ipairs(D.sorted_keys(over)) do
    local entry = over[odomain]
    if type(entry) == 'table' then
      local applies = norm(odomain) == norm(domain)
      if not applies and entry.mx_rollup ~= false and site_name then
        local mx = lookup_hosts(odomain)
        applies = mx ~= nil and mx.site_name == site_name
      end
      if applies and type(entry.sources) == 'table' then
        local sp = entry.sources[source]
        if type(sp) == 'table' then
          merge_params(sp, params)
        end
      end
    end
  end
  return params
end

-- Reads one shaping document from an http(s) URL (a TSA daemon's
-- get_config_v1/shaping.toml, or shared rules).
local function load_url(url, timeout)
  local client = kumo.http.build_client { timeout = timeout or '5s' }
  local response = client:get(url):send()
  if not response:status_is_success() then
    error(string.format('%s: %d %s', url, response:status_code(), response:status_reason() or ''), 0)
  end
  local text = response:text()
  if url:match '%.toml$' then
    return kumo.serde.toml_parse(text)
  end
  return kumo.serde.json_parse(text)
end

local LEVELS = { Ignore = true, Warn = true, Error = true }

-- A Shaping object (kumo.shaping.load): the merged data of the files, the
-- automation rules compiled, and the problems found while loading.
local Shaping = {}
Shaping.__index = Shaping

function Shaping:get_errors()
  return self._errors
end

function Shaping:get_warnings()
  return self._warnings
end

function Shaping:hash()
  return self._hash
end

function Shaping:get_egress_path_config(domain, egress_source, site_name)
  return resolve(self._data, domain, egress_source, site_name)
end

-- "421 4.7.28 text": the response as one line, as the rules see it.
local function single_line(response)
  if type(response) ~= 'table' then
    return tostring(response or ''), false
  end
  local content = tostring(response.content or ''):gsub('\r?\n', ' ')
  local line = tostring(response.code or '')
  local e = response.enhanced_code
  if type(e) == 'table' and e.class then
    line = string.format('%s %s.%s.%s', line, e.class, e.subject, e.detail)
  end
  line = line .. ' ' .. content
  return line, content:sub(1, 18) == 'KumoMTA internal: '
end

local function rule_out(rule)
  return {
    regex = rule.regex,
    action = rule.action,
    trigger = rule.trigger,
    duration = rule.duration,
    match_internal = rule.match_internal,
    was_rollup = rule.was_rollup,
  }
end

-- The automation rules that match a log record (a table as in the logs):
-- those of "default", of the providers matching the recipient's domain, of
-- the record's site and of the domain itself (mx_rollup = false).
function Shaping:match_rules(record)
  local rcpt = record.recipient
  if type(rcpt) == 'table' then
    rcpt = rcpt[1]
  end
  if type(rcpt) ~= 'string' then
    return {}
  end
  local domain = rcpt:gsub('^<', ''):gsub('>$', ''):match '@([^@]+)$'
  if not domain then
    return {} -- postmaster: no automation
  end
  local source = record.egress_source or 'unspecified'
  local site_name = tostring(record.site or '')
  if site_name:sub(1, #source + 2) == source .. '->' then
    site_name = site_name:sub(#source + 3)
  end
  site_name = site_name:gsub('@[%w_]+$', '')
  local line, internal = single_line(record.response)
  local out = {}
  local function consider(rules, rollup)
    for _, rule in ipairs(rules or {}) do
      if not internal or rule.match_internal then
        for _, re in ipairs(rule._re) do
          if re:is_match(line) then
            local r = rule_out(rule)
            if rollup ~= nil then
              r.was_rollup = rollup
            end
            out[#out + 1] = r
            break
          end
        end
      end
    end
  end
  local data = self._data
  consider(data.compiled.default, true)
  if looks_like_domain(domain) then
    for _, name in ipairs(data.provider_order) do
      if provider_matches(data.providers[name], domain) then
        consider(data.compiled.providers[name], true)
      end
    end
  end
  if data.by_site and data.by_site[site_name] then
    consider(data.by_site[site_name].compiled, true)
  end
  consider(data.compiled.domains[norm(domain)], false)
  return out
end

local function compile_all(data)
  local function list(entry, rollup)
    local out = {}
    for i, rule in ipairs(entry.automation) do
      out[i] = compile_rule(rule, rollup)
    end
    return out
  end
  data.compiled = { default = list(data.default, true), providers = {}, domains = {} }
  for name, e in pairs(data.providers) do
    data.compiled.providers[name] = list(e, true)
  end
  for name, e in pairs(data.domains) do
    data.compiled.domains[norm(name)] = list(e, false)
  end
  for _, site in pairs(data.by_site or {}) do
    site.compiled = list(site, true)
  end
end

-- kumo.shaping.load(files, options): local files (TOML or JSON) and
-- http(s) URLs, merged in order; options as KumoMTA documents them
-- (local_load, remote_load, skip_remote, http_timeout, ...).
function mod.load(files, options)
  options = options or {}
  if type(files) == 'string' then
    files = { files }
  end
  if type(files) ~= 'table' then
    error('kumo.shaping.load: expected a list of file names or URLs', 2)
  end
  for _, k in ipairs {
    'aliased_site',
    'dns_fail',
    'local_load',
    'null_mx',
    'provider_overlap',
    'remote_load',
  } do
    if options[k] ~= nil and not LEVELS[options[k]] then
      error(string.format("kumo.shaping.load: %s must be 'Ignore', 'Warn' or 'Error'", k), 2)
    end
  end
  local local_level = options.local_load or 'Error'
  local remote_level = options.remote_load or 'Ignore'
  local errors, warnings = {}, {}
  local docs = {}
  local function report(level, msg)
    if level == 'Error' then
      errors[#errors + 1] = msg
    elseif level == 'Warn' then
      warnings[#warnings + 1] = msg
    end
  end
  for _, f in ipairs(files) do
    if type(f) == 'string' and f:match '^https?://' then
      if not options.skip_remote then
        local ok, doc = pcall(load_url, f, options.http_timeout)
        if ok and type(doc) == 'table' then
          -- a generated document is checked like a file
          local ok2, err = pcall(parse_files, { doc })
          if ok2 then
            docs[#docs + 1] = doc
          else
            report(remote_level, string.format('%s: %s', f, tostring(err)))
          end
        else
          report(remote_level, string.format('%s: %s', f, tostring(doc)))
        end
      end
    else
      local ok, err = pcall(parse_files, { f })
      if ok then
        docs[#docs + 1] = f
      elseif local_level == 'Error' then
        error(err, 0)
      else
        report(local_level, tostring(err))
      end
    end
  end
  local data = load_data(docs)
  compile_all(data)
  local h = {}
  for _, f in ipairs(files) do
    h[#h + 1] = tostring(f)
  end
  local self = setmetatable({
    _data = data,
    _errors = errors,
    _warnings = warnings,
    _hash = kumo.serde.json_encode { files = h, n = #docs },
  }, Shaping)
  return self
end

-- Log records that say nothing about a destination's answers.
local UNINTERESTING_LOG_RECORD_TYPES = {
  'AdminRebind',
  'DeferredInjectionRebind',
  'Delayed',
  'Reception',
  'Rejection',
  'XferIn',
  'XferOut',
}

local AUTOMATION_OPTIONS = {
  publish = true,
  subscribe = true,
  extra_files = true,
  no_default_files = true,
  tsa_queue_config = true,
  back_pressure = true,
  load_validation_options = true,
  validation_options = true,
  pre_filter = true,
  skip_log_record_types = true,
  additional_skip_log_record_types = true,
  cache_ttl = true,
  publish_timeout = true,
  publish_pool_idle_timeout = true,
  publish_connection_verbose = true,
  retry_shaping_data_fetch_on_populate_timeout = true,
  shaping_data_populate_timeout = true,
  allow_stale_shaping_data = true,
}

local function url_list(options, key)
  local v = options[key]
  if v == nil then
    return {}
  end
  if type(v) ~= 'table' then
    error(string.format('shaping:setup_with_automation: %s must be a list of URLs', key), 3)
  end
  for _, u in ipairs(v) do
    if type(u) ~= 'string' or not u:match '^https?://[^/]+' then
      error(
        string.format(
          "shaping:setup_with_automation: %s: '%s' is not an http:// or https:// URL",
          key,
          tostring(u)
        ),
        3
      )
    end
  end
  return v
end

--[[ shaping:setup_with_automation { publish = {URL...}, subscribe = {URL...},
extra_files = {...}, no_default_files, tsa_queue_config, back_pressure,
pre_filter, skip_log_record_types, additional_skip_log_record_types, ... }

Returns { get_egress_path_config, setup_publish, load_shaping_data }.
setup_publish (call it from init) configures one log hook per publish URL
whose records (TransientFailure, Bounce, ...: not the uninteresting types)
are POSTed to URL/publish_log_v1, and subscribes to every subscribe URL:
suspensions arrive on its websocket (subscribe_event_v1) and are applied
at once through the admin suspensions; configuration overrides
(get_config_v1/shaping.toml) are fetched every second and merged over the
shaping rules (the config epoch is bumped when they change). ]]
function mod:setup_with_automation(options)
  if mod.CONFIGURED then
    error('shaping: setup was already called', 2)
  end
  if type(options) ~= 'table' then
    error('shaping:setup_with_automation: expected a table of options', 2)
  end
  for k in pairs(options) do
    if not AUTOMATION_OPTIONS[k] then
      error(string.format("shaping:setup_with_automation: unknown option '%s'", tostring(k)), 2)
    end
  end
  local publish_urls = url_list(options, 'publish')
  local subscribe_urls = url_list(options, 'subscribe')
  local files = {}
  if not options.no_default_files then
    files[#files + 1] = mod.default_file()
  end
  for _, f in ipairs(options.extra_files or {}) do
    files[#files + 1] = f
  end
  files = D.file_list(HELPER, files)
  parse_files(files)

  local pre_filter = options.pre_filter
  if pre_filter == nil then
    pre_filter = true
  end
  local skip = {}
  for _, t in ipairs(options.skip_log_record_types or UNINTERESTING_LOG_RECORD_TYPES) do
    skip[t] = true
  end
  for _, t in ipairs(options.additional_skip_log_record_types or {}) do
    skip[t] = true
  end

  local cached = kumo.memoize(function(f)
    return mod.load(f, options.load_validation_options)
  end, {
    name = 'policy-extras.shaping.automation',
    ttl = options.cache_ttl or '5 minutes',
    capacity = 4,
    invalidate_with_epoch = true,
  })
  local function load_shaping_data()
    return cached(files)
  end
  local function get_data()
    return load_shaping_data()._data
  end

  -- one log hook and one queue per TSA daemon
  local publish = {}
  for i, url in ipairs(publish_urls) do
    local base = url:gsub('/+$', '')
    local hook_name = string.format('tsa%d.tsa.kumomta', i)
    publish[hook_name] = { endpoint = base, hook_name = hook_name, constructor = 'make.' .. hook_name }
    kumo.on('make.' .. hook_name, function(domain, tenant, campaign)
      local client = kumo.http.build_client {
        timeout = options.publish_timeout or '1 minute',
      }
      local connection = {}
      function connection:send(message)
        local response = client
          :post(base .. '/publish_log_v1')
          :header('Content-Type', 'application/json')
          :body(message:get_data())
          :send()
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
      return connection
    end)
  end

  kumo.on('get_queue_config', function(domain, tenant, campaign, routing_domain)
    local p = publish[domain]
    if not p then
      return nil
    end
    local params = { retry_interval = '1m', max_retry_interval = '20m' }
    for k, v in pairs(options.tsa_queue_config or {}) do
      params[k] = v
    end
    params.protocol = { custom_lua = { constructor = p.constructor } }
    return kumo.make_queue_config(params)
  end)

  kumo.on('should_enqueue_log_record', function(msg, hook_name)
    if not publish[hook_name] then
      return nil -- another hook's record
    end
    local record = msg:get_meta 'log_record'
    if record.reception_protocol == 'LogRecord' or publish[record.queue] or skip[record.type] then
      return false
    end
    if pre_filter then
      local ok, matched = pcall(function()
        return #load_shaping_data():match_rules(record) > 0
      end)
      if not ok or not matched then
        return false
      end
    end
    msg:set_meta('queue', hook_name)
    return true
  end)

  local function setup_publish()
    local per_record = {}
    for t in pairs(skip) do
      per_record[t] = { enable = false }
    end
    for name in pairs(publish) do
      kumo.configure_log_hook {
        name = name,
        per_record = per_record,
        back_pressure = options.back_pressure,
      }
    end
    for _, url in ipairs(subscribe_urls) do
      kumo.shaping.subscribe_automation(url)
    end
  end

  local function get_egress_path_config(domain, egress_source, site_name, skip_make)
    local params = resolve(get_data(), domain, egress_source, site_name)
    apply_overrides(params, domain, egress_source, site_name)
    if skip_make then
      return params
    end
    return kumo.make_egress_path(params)
  end

  mod.CONFIGURED = {
    files = files,
    get_data = get_data,
    get_egress_path_config = get_egress_path_config,
    setup_publish = setup_publish,
    load_shaping_data = load_shaping_data,
  }
  return mod.CONFIGURED
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
    local params = resolve(get_data(), domain, egress_source, site_name)
    return kumo.make_egress_path(apply_overrides(params, domain, egress_source, site_name))
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

-- KumoMTA's Shaping:get_referenced_sources(): { source = { "domain:X",
-- "provider:Y", "site:Z", "default", ... } }, which KumoMTA's own shaping
-- helper checks against its sources helper.
function Shaping:get_referenced_sources()
  local out = {}
  local function add(kind, name, entry)
    for src in pairs(entry.source_where or {}) do
      out[src] = out[src] or {}
      table.insert(out[src], name and (kind .. ':' .. name) or kind)
    end
  end
  local data = self._data
  add('default', nil, data.default)
  for name, e in pairs(data.providers) do
    add('provider', name, e)
  end
  for name, e in pairs(data.domains) do
    add('domain', name, e)
  end
  for name, e in pairs(data.rollup) do
    add('site', name, e)
  end
  for _, refs in pairs(out) do
    table.sort(refs)
  end
  return out
end

-- kumod --validate: per-source tables must name sources the sources helper
-- defines; a one-label domain name is almost always a TOML quoting mistake.
-- (kumo.shaping.load may require this module from inside an event, in the
-- TSA daemon, where no handler can be added; there is nothing to validate
-- there)
local function validate_config()
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
end
pcall(kumo.on, 'validate_config', validate_config)


return mod
