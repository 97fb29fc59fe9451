-- kumo.aaa: load_acl_map (file and inline KeySources, the page's TOML
-- examples, map:get), make_http_url_resource (the page's resource chain),
-- query_resource_access against those maps through get_acl_definition (as
-- get_acl_definition.md wires them), the built-in map, the two cache TTLs
-- (a check cache hit does not run get_acl_definition again), AuthInfo
-- tables (auth_info.md) and the errors.
local kumo = require 'kumo'
local utils = require 'lib2_util'
local aaa = kumo.aaa

-- load_acl_map.md: the inline form
local map = aaa.load_acl_map {
  key_data = [=[
[[acl."http_listener/*/api/admin/baz"]]
allow = true
privileges = ["GET"]
identity.Group = "kumomta:http-listener-trusted-ip"
    ]=],
}
utils.assert_eq(map:get 'http_listener/*/api/admin/baz', {
  rules = {
    {
      criteria = { Identity = { Group = 'kumomta:http-listener-trusted-ip' } },
      privilege = 'GET',
      access = 'Allow',
    },
  },
})
assert(map:get 'http_listener/*/nothing' == nil)

-- the file form, with the page's other examples (two rules on one
-- resource, identity.Any, criteria with AllOf/AnyOf/Not, Machine)
local path = (os.getenv 'TMPDIR' or '/tmp') .. '/kumod-acl-' .. kumo.uuid.new_v4().simple .. '.toml'
local f = assert(io.open(path, 'w'))
f:write [=[
# Explicitly allow blanket unauthenticated access to the health status endpoint
[[acl."http_listener/*/api/check-liveness"]]
allow = true
privileges = ["GET"]
identity.Any = {}

# Trusted ips can use the injection API
[[acl."http_listener/*/api/inject"]]
allow = true
privileges = ["POST"]
identity.Group = "kumomta:http-listener-trusted-ip"

# Allow injection by other authenticated users
[[acl."http_listener/*/api/inject"]]
allow = true
privileges = ["POST"]
identity.Authenticated = {}

[[acl."http_listener/*/api/admin"]]
allow = true
privileges = ["GET", "POST"]
criteria.AllOf = [ {Identity = { Group = 'admins' }}, {Identity={Machine = "10.0.0.1"}} ]

[[acl."http_listener/*/api/admin"]]
allow = false
privileges = ["GET"]
criteria.Not = {Identity = { Group = 'admins' }}

[[acl."http_listener/*/api/admin/suspend"]]
allow = true
privileges = ["GET"]
criteria.AnyOf = [ {Identity = { Individual = 'john.smith' }}, {Identity={MachineSet = ["192.0.2.0/24"]}} ]
]=]
f:close()
local file_map = aaa.load_acl_map(path)
os.remove(path)
utils.assert_eq(#file_map:get('http_listener/*/api/inject').rules, 2)
utils.assert_eq(#file_map:get('http_listener/*/api/admin').rules, 3) -- one per privilege
utils.assert_eq(file_map:get('http_listener/*/api/admin').rules[3].access, 'Deny')

-- make_http_url_resource.md: the page's chain of resource names
local resource = aaa.make_http_url_resource('127.0.0.1:8080', 'https://localhost/foo/bar/baz')
utils.assert_eq(resource.resources, {
  'http_listener/127.0.0.1:8080/foo/bar/baz',
  'http_listener/127.0.0.1:8080/foo/bar',
  'http_listener/127.0.0.1:8080/foo',
  'http_listener/127.0.0.1:8080',
  'http_listener/*/foo/bar/baz',
  'http_listener/*/foo/bar',
  'http_listener/*/foo',
  'http_listener',
})
utils.assert_eq(resource.resource_id, 'http_listener/127.0.0.1:8080/foo/bar/baz')
-- the host of the URL is ignored; IPv6 listeners are bracketed
utils.assert_eq(
  aaa.make_http_url_resource('[::1]:8000', 'http://example.com/api/admin?x=1').resources[1],
  'http_listener/[::1]:8000/api/admin'
)

-- query_resource_access: get_acl_definition answers from the loaded map
-- (get_acl_definition.md), falling back to the built-in map
local calls = 0
kumo.on('get_acl_definition', function(res)
  calls = calls + 1
  return file_map:get(res)
end)
local function q(url, auth, priv)
  return aaa.query_resource_access(aaa.make_http_url_resource('127.0.0.1:8000', url), auth, priv)
end
local admin_ok = q('http://x/api/admin/bounce/v1', {
  identities = { { identity = 'ann', context = 'HttpBasicAuth' } },
  groups = { 'admins' },
  peer_address = '10.0.0.1',
}, 'GET')
assert(admin_ok.allow == true, kumo.serde.json_encode(admin_ok))
utils.assert_eq(admin_ok.resource, 'http_listener/*/api/admin')
utils.assert_eq(admin_ok.rule.criteria.AllOf[2], { Identity = { Machine = '10.0.0.1' } })
-- an admin from elsewhere: neither rule of api/admin matches, and the
-- custom entry replaces the built-in one (no merging), so the walk goes on
-- to the parents and ends denied by default
local elsewhere = q('http://x/api/admin/bounce/v1', { groups = { 'admins' }, peer_address = '10.0.0.2' }, 'GET')
assert(elsewhere.allow == false and elsewhere.resource == nil)
-- not an admin: the explicit Deny rule
local denied = q('http://x/api/admin/bounce/v1', { peer_address = '10.0.0.1' }, 'GET')
assert(denied.allow == false)
utils.assert_eq(denied.resource, 'http_listener/*/api/admin')
utils.assert_eq(denied.rule.access, 'Deny')
-- MachineSet and Individual under AnyOf
assert(q('http://x/api/admin/suspend', { peer_address = '192.0.2.77' }, 'GET').allow)
assert(q('http://x/api/admin/suspend', {
  identities = { { identity = 'john.smith', context = 'GenericAuth' } },
}, 'GET').allow)
-- check-liveness is open to anyone; inject needs authentication or trust
assert(q('http://x/api/check-liveness/v1', {}, 'GET').allow)
assert(not q('http://x/api/inject/v1', {}, 'POST').allow)
assert(q('http://x/api/inject/v1', { groups = { 'kumomta:http-listener-trusted-ip' } }, 'POST').allow)
-- metrics: the custom map says nothing, so the built-in map decides
assert(q('http://x/metrics', { groups = { 'kumomta:http-listener-trusted-ip' } }, 'GET').allow)
assert(not q('http://x/metrics', {}, 'GET').allow)

-- the caches: the same question again is answered without Lua
local before = calls
assert(q('http://x/api/check-liveness/v1', {}, 'GET').allow)
utils.assert_eq(calls, before)
-- set_check_cache_ttl(0) disables the check cache; the ACL cache still
-- answers get_acl_definition for resources seen before
aaa.set_check_cache_ttl(0)
assert(q('http://x/api/check-liveness/v1', {}, 'GET').allow)
utils.assert_eq(calls, before)
aaa.set_acl_cache_ttl '0s'
assert(q('http://x/api/check-liveness/v2', {}, 'GET').allow)
assert(calls > before, 'with both caches off, get_acl_definition runs')
-- the pages' own forms
aaa.set_acl_cache_ttl '5 minutes'
aaa.set_check_cache_ttl '5 minutes'
aaa.set_check_cache_ttl(300)

-- errors
utils.assert_error({ 'kumo.aaa.load_acl_map', 'failed to parse acl map data' }, aaa.load_acl_map, { key_data = 'acl = [' })
utils.assert_error({ 'kumo.aaa.load_acl_map', 'unknown field `alow`' }, aaa.load_acl_map, {
  key_data = '[[acl."r"]]\nalow = true\nprivileges = ["GET"]\nidentity.Any = {}\n',
})
utils.assert_error({ 'kumo.aaa.load_acl_map', 'exactly one of `identity` and `criteria`' }, aaa.load_acl_map, {
  key_data = '[[acl."r"]]\nallow = true\nprivileges = ["GET"]\n',
})
utils.assert_error({ 'kumo.aaa.load_acl_map', 'Identity.Machine', 'not an IP address' }, aaa.load_acl_map, {
  key_data = '[[acl."r"]]\nallow = true\nprivileges = ["GET"]\nidentity.Machine = "nope"\n',
})
utils.assert_error({ 'kumo.aaa.load_acl_map', 'unknown Identity criteria' }, aaa.load_acl_map, {
  key_data = '[[acl."r"]]\nallow = true\nprivileges = ["GET"]\nidentity.Nobody = {}\n',
})
utils.assert_error({ 'kumo.aaa.load_acl_map' }, aaa.load_acl_map, '/nonexistent/acl.toml')
utils.assert_error({ 'kumo.aaa.make_http_url_resource', 'argument #1', 'not a socket address' }, aaa.make_http_url_resource, '127.0.0.1', 'http://x/')
utils.assert_error({ 'kumo.aaa.make_http_url_resource', 'argument #2', 'not a valid URL' }, aaa.make_http_url_resource, '127.0.0.1:80', 'no url')
utils.assert_error({ 'kumo.aaa.make_http_url_resource', 'argument #2' }, aaa.make_http_url_resource, '127.0.0.1:80', nil)
utils.assert_error({ 'kumo.aaa.query_resource_access', 'argument #1' }, aaa.query_resource_access, 'http_listener', {}, 'GET')
utils.assert_error({ 'kumo.aaa.query_resource_access', 'argument #2', '`user`' }, q, 'http://x/', { user = 'x' }, 'GET')
utils.assert_error({ 'kumo.aaa.query_resource_access', 'argument #3' }, q, 'http://x/', {}, nil)
utils.assert_error({ 'kumo.aaa.set_acl_cache_ttl', 'duration' }, aaa.set_acl_cache_ttl, 'soon')
utils.assert_error({ 'kumo.aaa.set_check_cache_ttl', 'duration' }, aaa.set_check_cache_ttl, {})
utils.assert_error({ 'map:get', 'argument #1' }, file_map.get, file_map, 42)
