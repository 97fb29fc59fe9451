--[[ policy-extras.listener_domains: which recipient and sender domains a
listener accepts from clients that are not relay hosts, from data files.

  local listener_domains = require 'policy-extras.listener_domains'
  kumo.on('get_listener_domain',
    listener_domains:setup { '/opt/kumomta/etc/policy/listener_domains.toml' })

Data file (TOML, or JSON of the same shape):

  ["*"]                        defaults for any domain without its own entry
  log_oob = true
  ["example.com"]              mail TO example.com may be relayed by anyone
  relay_to = true
  ["send.example.com"]         mail FROM send.example.com may be relayed
  relay_from = ["10.0.0.0/24"] by these client addresses...
  relay_from_authz = ["user"]  ... or by clients authenticated as these
  ["*.example.com"]            wildcard: any subdomain without its own entry
  log_arf = "LogThenDrop"      (log_oob, log_arf: true, false, "Ignore",
                               "LogThenRelay" or "LogThenDrop")
  [listener."127.0.0.1:25"."*.example.com"]
  log_oob = false              entries that apply to one listener only

For a domain the handler takes the first entry found among: the
listener's own entry for the domain, the general entry for the domain
(exact name first, then the nearest wildcard), and the general "*" entry.
Entries for the same domain in several files are merged key by key, later
files winning.

setup checks every file at once and raises an error naming the file, the
table and the key of the first problem; the handler re-reads the files at
most every 5 minutes (and after a configuration epoch bump).
]]
local kumo = require 'kumo'
local D = require 'policy-extras.datafile'

local mod = {}
local HELPER = 'listener_domains'

local log_mode = function(v)
  if type(v) == 'boolean' then
    return nil
  end
  return D.one_of('Ignore', 'LogThenRelay', 'LogThenDrop')(v)
end

local function relay_from(v)
  local p = D.string_list(v)
  if p then
    return p
  end
  local ok, err = pcall(kumo.make_listener_domain, { relay_from = v })
  if not ok then
    return (D.clean_error(err):gsub('^relay_from: ', ''))
  end
end

local SCHEMA = {
  relay_to = D.bool,
  relay_from = relay_from,
  relay_from_authz = D.string_list,
  log_oob = log_mode,
  log_arf = log_mode,
}

local function add_entries(ctx, path, entries, by_listener, listener)
  local p = D.table(entries)
  if p then
    D.fail(ctx, { table.unpack(path, 1, #path - 1) }, path[#path], p)
  end
  local target = by_listener[listener] or {}
  by_listener[listener] = target
  for _, domain in ipairs(D.sorted_keys(entries)) do
    local params = entries[domain]
    local dpath = { table.unpack(path) }
    dpath[#dpath + 1] = domain
    D.check_record(ctx, dpath, params, SCHEMA)
    local dest = target[domain] or {}
    for k, v in pairs(params) do
      dest[k] = v
    end
    target[domain] = dest
  end
end

local function load_data(files)
  local by_listener = {}
  for _, file in ipairs(files) do
    local data = D.load(HELPER, file)
    local ctx = D.context(HELPER, file)
    local general = {}
    for k, v in pairs(data) do
      if k ~= 'listener' then
        general[k] = v
      end
    end
    add_entries(ctx, {}, general, by_listener, '*')
    if data.listener ~= nil then
      local p = D.table(data.listener)
      if p then
        D.fail(ctx, {}, 'listener', p)
      end
      for _, listener in ipairs(D.sorted_keys(data.listener)) do
        add_entries(ctx, { 'listener', listener }, data.listener[listener], by_listener, listener)
      end
    end
  end
  -- compile: a domain map per listener; the bare "*" is kept aside
  local compiled = {}
  for listener, entries in pairs(by_listener) do
    local c = { map = kumo.domain_map.new(), star = entries['*'] }
    for domain, params in pairs(entries) do
      if domain ~= '*' then
        c.map[domain] = params
      end
    end
    compiled[listener] = c
  end
  return compiled
end
mod.load_data = load_data

-- The entry for a domain (a table of options), or nil.
local function find(data, domain, listener)
  local own = listener and data[listener]
  if own and listener ~= '*' then
    local e = own.map[domain]
    if e then
      return e
    end
  end
  local general = data['*']
  if general then
    return general.map[domain] or general.star
  end
  return nil
end

-- The make_listener_domain parameters for an entry and a connection:
-- relay_from_authz becomes relay_from = {the client's address} when the
-- client authenticated as one of the listed identities.
local function to_params(entry, conn_meta)
  local params = {}
  for k, v in pairs(entry) do
    if k ~= 'relay_from_authz' then
      params[k] = v
    end
  end
  if entry.relay_from_authz and conn_meta then
    local authz = conn_meta:get_meta 'authz_id'
    local allowed = false
    for _, a in ipairs(entry.relay_from_authz) do
      if authz ~= nil and a == authz then
        allowed = true
      end
    end
    if allowed then
      local peer = conn_meta:get_meta 'received_from'
      local utils = require 'policy-extras.policy_utils'
      local ip = utils.split_ip_port(peer)
      if ip then
        params.relay_from = { ip }
      end
    end
  end
  return params
end
mod.find = find

function mod:setup(files)
  if mod.CONFIGURED then
    error('listener_domains: setup was already called', 2)
  end
  files = D.file_list(HELPER, files)
  load_data(files)
  local cached = kumo.memoize(load_data, {
    name = 'policy-extras.listener_domains',
    ttl = '5 minutes',
    capacity = 4,
    invalidate_with_epoch = true,
  })
  mod.CONFIGURED = { files = files }
  return function(domain, listener, conn_meta)
    local entry = find(cached(files), domain, listener)
    if entry then
      return kumo.make_listener_domain(to_params(entry, conn_meta))
    end
    return nil
  end
end

return mod
