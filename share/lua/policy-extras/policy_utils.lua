--[[ policy-extras.policy_utils: small functions the other helpers and
policies share (kumod's own version of KumoMTA's module of that name, with
the same function names).

  merge_into(src, dest)            copy src's keys over dest (shallow)
  recursive_merge_into(src, dest)  the same, descending into tables found
                                   on both sides
  table_contains(list, v), table_keys(t), table_is_empty(t)
  load_json_or_toml_file(file)     a path (.toml is TOML, else JSON) or an
                                   inline table, returned as a table
  starts_with(s, prefix), ends_with(s, suffix)
  split_ip_port("1.2.3.4:25")      -> "1.2.3.4", "25" ("[::1]:25" too)
  equals(a, b), assert_eq, assert_ne, assert_matches, dumps(v)
]]
local kumo = require 'kumo'

local mod = {}

function mod.merge_into(src, dest)
  for k, v in pairs(src or {}) do
    dest[k] = v
  end
  return dest
end

function mod.recursive_merge_into(src, dest)
  for k, v in pairs(src or {}) do
    if type(v) == 'table' and type(dest[k]) == 'table' then
      mod.recursive_merge_into(v, dest[k])
    else
      dest[k] = v
    end
  end
  return dest
end

function mod.table_contains(list, value)
  for _, v in pairs(list or {}) do
    if v == value then
      return true
    end
  end
  return false
end

function mod.table_keys(t)
  local keys = {}
  for k in pairs(t or {}) do
    keys[#keys + 1] = k
  end
  return keys
end

function mod.table_is_empty(t)
  return next(t or {}) == nil
end

function mod.load_json_or_toml_file(file)
  if type(file) == 'table' then
    return file
  end
  if tostring(file):match '%.[Tt][Oo][Mm][Ll]$' then
    return kumo.serde.toml_load(file)
  end
  return kumo.serde.json_load(file)
end

function mod.starts_with(s, prefix)
  return type(s) == 'string' and s:sub(1, #prefix) == prefix
end

function mod.ends_with(s, suffix)
  return type(s) == 'string' and (suffix == '' or s:sub(-#suffix) == suffix)
end

-- "ADDR:PORT" or "[ADDR]:PORT" -> ADDR, PORT; a bare address -> ADDR, nil
function mod.split_ip_port(s)
  if type(s) ~= 'string' then
    return nil, nil
  end
  local addr, port = s:match '^%[(.*)%]:(%d+)$'
  if addr then
    return addr, port
  end
  addr, port = s:match '^([^:]*):(%d+)$'
  if addr then
    return addr, port
  end
  return s:match '^%[(.*)%]$' or s, nil
end

-- Deep equality of plain values and tables (metatables are ignored).
function mod.equals(a, b)
  if a == b then
    return true
  end
  if type(a) ~= 'table' or type(b) ~= 'table' then
    return false
  end
  for k, v in pairs(a) do
    if not mod.equals(v, b[k]) then
      return false
    end
  end
  for k in pairs(b) do
    if a[k] == nil then
      return false
    end
  end
  return true
end

local function dump(v, indent, seen)
  if type(v) == 'string' then
    return string.format('%q', v)
  end
  if type(v) ~= 'table' then
    return tostring(v)
  end
  if seen[v] then
    return '<cycle>'
  end
  seen[v] = true
  local keys = mod.table_keys(v)
  table.sort(keys, function(x, y)
    return tostring(x) < tostring(y)
  end)
  if #keys == 0 then
    seen[v] = nil
    return '{}'
  end
  local pad = string.rep('  ', indent + 1)
  local lines = {}
  for _, k in ipairs(keys) do
    local kk = type(k) == 'string' and k:match '^[%a_][%w_]*$' and k
      or '[' .. dump(k, 0, seen) .. ']'
    lines[#lines + 1] = pad .. kk .. ' = ' .. dump(v[k], indent + 1, seen) .. ','
  end
  seen[v] = nil
  return '{\n' .. table.concat(lines, '\n') .. '\n' .. string.rep('  ', indent) .. '}'
end

function mod.dumps(v)
  return dump(v, 0, {})
end

function mod.assert_eq(a, b, message)
  if not mod.equals(a, b) then
    error(
      string.format(
        '%s: expected %s, got %s',
        message or 'assert_eq',
        mod.dumps(b),
        mod.dumps(a)
      ),
      2
    )
  end
end

function mod.assert_ne(a, b, message)
  if mod.equals(a, b) then
    error(
      string.format('%s: both are %s', message or 'assert_ne', mod.dumps(a)),
      2
    )
  end
end

function mod.assert_matches(s, pattern, message)
  if not tostring(s):find(pattern) then
    error(
      string.format(
        '%s: %q does not match %q',
        message or 'assert_matches',
        tostring(s),
        pattern
      ),
      2
    )
  end
end

return mod
