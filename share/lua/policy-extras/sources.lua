--[[ policy-extras.sources: egress sources and pools from data files.

  local sources = require 'policy-extras.sources'
  sources:setup { '/opt/kumomta/etc/policy/sources.toml' }

Data files (TOML, or JSON of the same shape; later files add to and
override earlier ones):

  [source."ip-1"]           any kumo.make_egress_source option
  source_address = "10.0.0.1"
  ehlo_domain = "mta1.example.com"

  [pool."pool-1"]           a pool; empty is allowed (nothing is eligible)
  [pool."pool-1"."ip-1"]    a member of the pool
  weight = 2                optional, default 1

setup reads and checks every file at once and raises an error naming the
file, the table and the key of the first problem (unknown key, wrong type,
a pool member that is not a defined source). It then installs the
get_egress_source and get_egress_pool handlers, which re-read the files
at most every 5 minutes (and after a configuration epoch bump).
]]
local kumo = require 'kumo'
local D = require 'policy-extras.datafile'

local mod = {}
local HELPER = 'sources'

local function load_one(file, target)
  local data = D.load(HELPER, file)
  local ctx = D.context(HELPER, file)
  D.check_record(ctx, {}, data, { source = D.table, pool = D.table })

  for _, name in ipairs(D.sorted_keys(data.source or {})) do
    local params = data.source[name]
    local path = { 'source', name }
    D.check_record(
      ctx,
      path,
      params,
      {},
      D.probe(kumo.make_egress_source, { name = name })
    )
    local merged = target.sources[name] or { name = name }
    for k, v in pairs(params) do
      merged[k] = v
    end
    merged.name = name
    -- the combination must hold too
    local ok, err = pcall(kumo.make_egress_source, merged)
    if not ok then
      D.fail(ctx, path, nil, D.clean_error(err))
    end
    target.sources[name] = merged
    target.where[name] = ctx
  end

  for _, pool_name in ipairs(D.sorted_keys(data.pool or {})) do
    local members = data.pool[pool_name]
    local path = { 'pool', pool_name }
    local p = D.table(members)
    if p then
      D.fail(ctx, { 'pool' }, pool_name, p)
    end
    local pool = target.pools[pool_name] or { name = pool_name, members = {} }
    for _, src in ipairs(D.sorted_keys(members)) do
      local entry = members[src]
      local p2 = D.table(entry)
      if p2 then
        D.fail(ctx, path, src, p2 .. ' (a pool member is a table such as [pool.X.SOURCE])')
      end
      D.check_record(
        ctx,
        { 'pool', pool_name, src },
        entry,
        { weight = D.non_negative_integer }
      )
      pool.members[src] = { weight = entry.weight, ctx = ctx }
    end
    target.pools[pool_name] = pool
  end
end

-- Reads all files; returns { sources = {name -> params},
-- pools = {name -> make_egress_pool params} }.
local function load_data(files)
  local target = { sources = {}, pools = {}, where = {} }
  for _, file in ipairs(files) do
    load_one(file, target)
  end
  local pools = {}
  for _, pool_name in ipairs(D.sorted_keys(target.pools)) do
    local pool = target.pools[pool_name]
    local entries = {}
    for _, src in ipairs(D.sorted_keys(pool.members)) do
      local m = pool.members[src]
      if not target.sources[src] then
        D.fail(
          m.ctx,
          { 'pool', pool_name, src },
          nil,
          string.format("source '%s' is not defined in any sources file", src)
        )
      end
      entries[#entries + 1] = { name = src, weight = m.weight }
    end
    pools[pool_name] = { name = pool_name, entries = entries }
    local ok, err = pcall(kumo.make_egress_pool, pools[pool_name])
    if not ok then
      error(
        string.format('%s: [pool.%s]: %s', HELPER, D.quote_key(pool_name), D.clean_error(err)),
        0
      )
    end
  end
  return { sources = target.sources, pools = pools }
end

mod.load_data = load_data

function mod:setup(files)
  if mod.CONFIGURED then
    error('sources: setup was already called', 2)
  end
  files = D.file_list(HELPER, files)
  -- check now, so that a bad file stops the policy from loading
  load_data(files)
  local cached = kumo.memoize(load_data, {
    name = 'policy-extras.sources',
    ttl = '5 minutes',
    capacity = 4,
    invalidate_with_epoch = true,
  })
  local function get_data()
    return cached(files)
  end
  mod.CONFIGURED = { files = files, get_data = get_data }

  kumo.on('get_egress_source', function(source_name)
    local params = get_data().sources[source_name]
    if not params then
      error(
        string.format("sources: egress source '%s' is not defined", source_name),
        0
      )
    end
    return kumo.make_egress_source(params)
  end)

  kumo.on('get_egress_pool', function(pool_name)
    local params = get_data().pools[pool_name]
    if not params then
      error(
        string.format("sources: egress pool '%s' is not defined", pool_name),
        0
      )
    end
    return kumo.make_egress_pool(params)
  end)
end

-- Whether a pool of that name is defined (for the queue helper's checks).
function mod.has_pool(pool_name)
  return mod.CONFIGURED ~= nil
    and mod.CONFIGURED.get_data().pools[pool_name] ~= nil
end

return mod
