-- Helpers for the tests of the kumo.* library modules (not a test itself:
-- the name does not start with test_). assert_eq compares tables deeply, as
-- KumoMTA's policy_utils.assert_eq does in the reference pages' examples.
local M = {}

local function deep_eq(a, b)
  if a == b then
    return true
  end
  if type(a) ~= 'table' or type(b) ~= 'table' then
    return false
  end
  for k, v in pairs(a) do
    if not deep_eq(v, b[k]) then
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

local function show(v)
  if type(v) == 'table' then
    local ok, s = pcall(kumo.json_encode, v)
    if ok then
      return s
    end
  end
  if type(v) == 'string' then
    return string.format('%q', v)
  end
  return tostring(v)
end

function M.assert_eq(a, b, what)
  if not deep_eq(a, b) then
    error(
      string.format('%sexpected %s, got %s', what and (what .. ': ') or '', show(b), show(a)),
      2
    )
  end
end

-- Calls f(...) and checks that it raises an error whose text contains each
-- of the plain substrings in wants (a string or a list).
function M.assert_error(wants, f, ...)
  local ok, err = pcall(f, ...)
  if ok then
    error('expected an error, but the call succeeded', 2)
  end
  err = tostring(err)
  if type(wants) == 'string' then
    wants = { wants }
  end
  for _, w in ipairs(wants) do
    if not err:find(w, 1, true) then
      error(string.format('error %q does not contain %q', err, w), 2)
    end
  end
  return err
end

return M
