--[[ policy-extras.rollup: other ways than the MX site name to group
destinations into ready queues.

  rollup.reroute_based_on_mx_host_suffix(msg, {
    ['.olc.protection.outlook.com.'] = 'outlook.com',
  })
      when every MX host of the recipient's domain ends with one of the
      suffixes, the message's routing_domain becomes that suffix's domain,
      so that all those domains share one ready queue (and its shaping).

  rollup.reroute_using_ip_rollup(msg, { ['.mail.protection.outlook.com.'] = 'outlook.ip_rollup' })
  rollup.apply_ip_rollup_to_queue_config(domain, routing_domain, params)
      when the most preferred MX host of the recipient's domain ends with a
      suffix, the routing_domain becomes the mapped name, and the queue
      config (in get_queue_config) sends to that host's IP addresses:
      mx_list = { '[ip]', ... }. All domains with the same addresses then
      share one ready queue.

Names are compared without case and without trailing dots. A domain whose
MX cannot be resolved is left alone.
]]
local kumo = require 'kumo'

local mod = {}

local function norm(s)
  return (tostring(s):lower():gsub('%.+$', ''))
end

local function ends_with(name, suffix)
  name, suffix = norm(name), norm(suffix)
  return suffix ~= '' and #name >= #suffix and name:sub(-#suffix) == suffix
end

local function mx_of(domain)
  local ok, mx = pcall(kumo.dns.lookup_mx, domain)
  if ok and type(mx) == 'table' then
    return mx
  end
  return nil
end

local function recipient_domain(msg)
  local r = msg:recipient_list()[1]
  return r and r.domain
end

-- The mapped value for a suffix every host matches, or nil.
local function all_hosts_match(hosts, mapping)
  if not hosts or #hosts == 0 then
    return nil
  end
  for suffix, target in pairs(mapping) do
    local all = true
    for _, h in ipairs(hosts) do
      if not ends_with(h, suffix) then
        all = false
        break
      end
    end
    if all then
      return target
    end
  end
  return nil
end

function mod.reroute_based_on_mx_host_suffix(msg, mapping)
  local domain = recipient_domain(msg)
  if not domain then
    return
  end
  local mx = mx_of(domain)
  local target = mx and all_hosts_match(mx.hosts, mapping)
  if target and norm(target) ~= norm(domain) then
    msg:set_meta('routing_domain', target)
  end
end

-- The most preferred MX host name of a domain, or nil.
local function first_host(mx)
  if mx.by_pref then
    local best
    for pref, hosts in pairs(mx.by_pref) do
      local p = tonumber(pref)
      if p and (best == nil or p < best.pref) and #hosts > 0 then
        best = { pref = p, host = hosts[1] }
      end
    end
    if best then
      return best.host
    end
  end
  return mx.hosts and mx.hosts[1]
end

function mod.reroute_using_ip_rollup(msg, mapping)
  local domain = recipient_domain(msg)
  if not domain then
    return
  end
  local mx = mx_of(domain)
  if not mx then
    return
  end
  local host = first_host(mx)
  if not host then
    return
  end
  for suffix, target in pairs(mapping) do
    if ends_with(host, suffix) then
      msg:set_meta('routing_domain', target)
      return
    end
  end
end

-- In get_queue_config: for a queue routed by reroute_using_ip_rollup,
-- point params.protocol at the first MX host's addresses.
function mod.apply_ip_rollup_to_queue_config(domain, routing_domain, params)
  if not routing_domain or not tostring(routing_domain):find('.ip_rollup', 1, true) then
    return params
  end
  local mx = mx_of(domain)
  local host = mx and first_host(mx)
  if not host then
    return params
  end
  local ok, addrs = pcall(kumo.dns.lookup_addr, norm(host))
  if not ok or type(addrs) ~= 'table' or #addrs == 0 then
    return params
  end
  local list = {}
  for _, a in ipairs(addrs) do
    list[#list + 1] = '[' .. tostring(a) .. ']'
  end
  table.sort(list)
  params.protocol = { smtp = { mx_list = list } }
  return params
end

return mod
