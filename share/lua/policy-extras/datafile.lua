--[[ kumod's own helper for the policy-extras modules: reading their TOML or
JSON data files and reporting what is wrong with them.

Every problem is raised as one line naming the helper, the file, the table
path inside it and the key, e.g.

  sources: /etc/kumod/sources.toml: [source.ip-1] source_adress: unknown key

so that `kumod --validate` (which prints the error of a policy that fails
to load, or of a validate_config handler) shows exactly what to fix.
Errors are raised with level 0: the position inside this file would only
hide the useful part of the message.

A "file" is either a path (".toml" is read as TOML, anything else as JSON)
or a Lua table holding the data itself (shown as "(inline table)").
]]
local kumo = require 'kumo'

local M = {}

-- A key as it is written in a TOML table header: bare when it can be.
function M.quote_key(k)
  k = tostring(k)
  if k:match '^[A-Za-z0-9_-]+$' then
    return k
  end
  return '"' .. k:gsub('\\', '\\\\'):gsub('"', '\\"') .. '"'
end

-- "[a.b.\"c.d\"]" for the path {'a', 'b', 'c.d'}; "(top level)" for {}.
function M.table_path(path)
  if #path == 0 then
    return '(top level)'
  end
  local parts = {}
  for i, p in ipairs(path) do
    parts[i] = M.quote_key(p)
  end
  return '[' .. table.concat(parts, '.') .. ']'
end

function M.file_label(file)
  if type(file) == 'table' then
    return '(inline table)'
  end
  return tostring(file)
end

-- A context carries the helper's name and the file being read, so that the
-- checks below can build the full message.
function M.context(helper, file)
  return { helper = helper, file = M.file_label(file) }
end

-- Raises: HELPER: FILE: [PATH] KEY: PROBLEM
function M.fail(ctx, path, key, problem)
  local where = M.table_path(path or {})
  if key ~= nil then
    where = where .. ' ' .. M.quote_key(key)
  end
  error(string.format('%s: %s: %s: %s', ctx.helper, ctx.file, where, problem), 0)
end

-- Raises a problem about the file as a whole (it cannot be read...).
function M.fail_file(ctx, problem)
  error(string.format('%s: %s: %s', ctx.helper, ctx.file, problem), 0)
end

-- The Lua error text of a kumo.* function, without the position of the
-- caller and the function's own name.
function M.clean_error(err)
  local s = tostring(err)
  s = s:gsub('^[^\n]-:%d+: ', '')
  s = s:gsub('^kumo%.[%w_.]+: ', '')
  return s
end

-- Loads one data file (path or inline table). Returns the data table.
function M.load(helper, file)
  local ctx = M.context(helper, file)
  if type(file) == 'table' then
    return file
  end
  if type(file) ~= 'string' then
    error(
      string.format(
        '%s: a data file must be a path or a table, got %s',
        helper,
        type(file)
      ),
      0
    )
  end
  local loader = kumo.serde.json_load
  if file:match '%.[Tt][Oo][Mm][Ll]$' then
    loader = kumo.serde.toml_load
  end
  local ok, data = pcall(loader, file)
  if not ok then
    M.fail_file(ctx, M.clean_error(data))
  end
  if type(data) ~= 'table' then
    M.fail_file(ctx, 'the file does not hold a table')
  end
  return data
end

-- The list of data files given to a setup function: a list of paths or
-- tables (a single path is accepted too).
function M.file_list(helper, files)
  if type(files) == 'string' then
    return { files }
  end
  if type(files) ~= 'table' then
    error(
      string.format(
        '%s: setup expects a list of data files, got %s',
        helper,
        type(files)
      ),
      0
    )
  end
  for i, f in ipairs(files) do
    if type(f) ~= 'string' and type(f) ~= 'table' then
      error(
        string.format(
          '%s: data file #%d must be a path or a table, got %s',
          helper,
          i,
          type(f)
        ),
        0
      )
    end
  end
  return files
end

-- ---- value checks: each returns nil when fine, or the problem --------

local function got(v)
  return 'got ' .. (math.type(v) or type(v))
end

function M.string(v)
  if type(v) ~= 'string' then
    return 'expected a string, ' .. got(v)
  end
end

function M.bool(v)
  if type(v) ~= 'boolean' then
    return 'expected true or false, ' .. got(v)
  end
end

function M.integer(v)
  if math.type(v) ~= 'integer' then
    return 'expected an integer, ' .. got(v)
  end
end

function M.non_negative_integer(v)
  if math.type(v) ~= 'integer' or v < 0 then
    return 'expected a non-negative integer, ' .. (math.type(v) and tostring(v) or got(v))
  end
end

function M.number(v)
  if type(v) ~= 'number' then
    return 'expected a number, ' .. got(v)
  end
end

function M.table(v)
  if type(v) ~= 'table' then
    return 'expected a table, ' .. got(v)
  end
end

function M.string_list(v)
  if type(v) ~= 'table' then
    return 'expected a list of strings, ' .. got(v)
  end
  local n = 0
  for k, x in pairs(v) do
    n = n + 1
    if math.type(k) ~= 'integer' then
      return 'expected a list of strings, got a table with key ' .. tostring(k)
    end
    if type(x) ~= 'string' then
      return string.format('expected a list of strings, item %d is a %s', k, type(x))
    end
  end
  if n ~= #v then
    return 'expected a list of strings'
  end
end

function M.one_of(...)
  local allowed = { ... }
  return function(v)
    for _, a in ipairs(allowed) do
      if v == a then
        return nil
      end
    end
    return string.format(
      'expected one of %s, got %s',
      table.concat(allowed, ', '),
      type(v) == 'string' and ("'" .. v .. "'") or got(v)
    )
  end
end

-- A throttle spec ("100/s", "local:5,000/hour"): checked through
-- kumo.make_queue_config, whose max_message_rate takes the same grammar.
function M.throttle(v)
  local p = M.string(v)
  if p then
    return p
  end
  local ok, err = pcall(kumo.make_queue_config, { max_message_rate = v })
  if not ok then
    return (M.clean_error(err):gsub('^max_message_rate: ', ''))
  end
end

-- Checks each key of the table tbl (at path) against schema, a map from
-- key to check function. Keys missing from the schema are passed to
-- dynamic(key, value) when given: it returns nil (fine), 'unknown', or a
-- problem. Raises on the first problem.
function M.check_record(ctx, path, tbl, schema, dynamic)
  local problem = M.table(tbl)
  if problem then
    M.fail(ctx, path, nil, problem)
  end
  local keys = {}
  for k in pairs(tbl) do
    keys[#keys + 1] = k
  end
  table.sort(keys, function(a, b)
    return tostring(a) < tostring(b)
  end)
  for _, k in ipairs(keys) do
    local v = tbl[k]
    local check = schema[k]
    if check then
      local p = check(v)
      if p then
        M.fail(ctx, path, k, p)
      end
    elseif dynamic then
      local p = dynamic(k, v)
      if p == 'unknown' then
        M.fail(ctx, path, k, 'unknown key')
      elseif p then
        M.fail(ctx, path, k, p)
      end
    else
      M.fail(ctx, path, k, 'unknown key')
    end
  end
end

-- A dynamic key check through a kumo constructor: calls ctor with base
-- plus {key = value} and sorts its complaint into 'unknown' or a problem.
function M.probe(ctor, base)
  return function(k, v)
    local p = {}
    for bk, bv in pairs(base or {}) do
      p[bk] = bv
    end
    p[k] = v
    local ok, err = pcall(ctor, p)
    if ok then
      return nil
    end
    local msg = M.clean_error(err)
    if msg:find('unknown field', 1, true) then
      return 'unknown'
    end
    -- "KEY: problem" -> "problem"
    local prefix = tostring(k) .. ': '
    if msg:sub(1, #prefix) == prefix then
      msg = msg:sub(#prefix + 1)
    end
    return msg
  end
end

-- Sorted keys of a table (data files are unordered; sorting keeps
-- messages and merges deterministic).
function M.sorted_keys(t)
  local keys = {}
  for k in pairs(t) do
    keys[#keys + 1] = k
  end
  table.sort(keys, function(a, b)
    return tostring(a) < tostring(b)
  end)
  return keys
end

return M
