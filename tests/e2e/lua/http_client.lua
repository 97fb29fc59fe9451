-- kumo.http against tests/e2e/http_peer.py; run by test_http_client.py as
-- `kumod --script http_client.lua BASE_URL`. Raises on the first mismatch.
local kumo = require 'kumo'
local base = assert(arg[1], 'usage: http_client.lua BASE_URL')

local function eq(got, want, what)
  if got ~= want then
    error(string.format('%s: got %s, want %s', what, tostring(got), tostring(want)), 2)
  end
end

local function errors_with(fn, pattern, what)
  local ok, err = pcall(fn)
  if ok then
    error(what .. ': expected an error', 2)
  end
  if not tostring(err):find(pattern) then
    error(string.format('%s: error %q does not match %q', what, tostring(err), pattern), 2)
  end
  return tostring(err)
end

local client = kumo.http.build_client { user_agent = 'kumod-test/1' }

-- GET, headers of the response (case-insensitive), status helpers
local resp = client:get(base .. '/echo?x=1'):header('X-One', 'uno'):send()
eq(resp:status_code(), 200, 'GET status')
eq(resp:status_reason(), 'OK', 'GET reason')
eq(resp:status_is_success(), true, 'is_success')
eq(resp:status_is_client_error(), false, 'is_client_error')
local h = resp:headers()
eq(h['x-peer'], 'echo', 'header lower')
eq(h['X-Peer'], 'echo', 'header mixed case')
eq(h['Content-Type'], 'application/json', 'content-type')
eq(h['set-cookie'], 'a=1, b=2', 'repeated header joined')
local n = 0
for k, v in pairs(h) do
  n = n + 1
  assert(k == k:lower(), 'iterated names are lowercase: ' .. k)
end
assert(n >= 4, 'headers iterate')
eq(resp:content_length(), #resp:bytes(), 'content_length')
local doc = kumo.json_decode(resp:text())
eq(doc.method, 'GET', 'method')
eq(doc.path, '/echo?x=1', 'path')
eq(doc.headers['x-one'], 'uno', 'request header')
eq(doc.headers['user-agent'], 'kumod-test/1', 'user agent')

-- POST with a body, several headers, basic auth
resp = client
  :post(base .. '/echo')
  :headers { ['Content-Type'] = 'application/json', ['X-Two'] = 'dos' }
  :basic_auth('user', 'secret')
  :body(kumo.json_encode { key = 'value' })
  :send()
doc = kumo.json_decode(resp:text())
eq(doc.method, 'POST', 'POST method')
eq(doc.body, '{"key":"value"}', 'POST body')
eq(doc.headers['content-type'], 'application/json', 'POST content-type')
eq(doc.headers['x-two'], 'dos', 'headers{}')
eq(doc.headers['authorization'], 'Basic ' .. kumo.encode.base64_encode 'user:secret', 'basic auth')
eq(doc.headers['expect'], nil, 'no Expect header')

-- a body without a Content-Type gets none (curl would add a form type)
resp = client:put(base .. '/echo'):body('raw'):bearer_auth('tok3n'):send()
doc = kumo.json_decode(resp:text())
eq(doc.method, 'PUT', 'PUT method')
eq(doc.body, 'raw', 'PUT body')
eq(doc.headers['content-type'], nil, 'no implicit content type')
eq(doc.headers['authorization'], 'Bearer tok3n', 'bearer auth')

-- form encodings
resp = client:post(base .. '/echo'):form_url_encoded { key = 'value', other_key = 'a b&c' }:send()
doc = kumo.json_decode(resp:text())
eq(doc.body, 'key=value&other_key=a+b%26c', 'form_url_encoded body')
eq(doc.headers['content-type'], 'application/x-www-form-urlencoded', 'form content-type')
resp = client:post(base .. '/echo'):form_multipart_data { key = 'value', bin = '\xff\x00' }:send()
doc = kumo.json_decode(resp:text())
assert(doc.headers['content-type']:find '^multipart/form%-data; boundary=', 'multipart type')
assert(doc.body:find 'Content%-Disposition: form%-data; name="key"\r\n\r\nvalue\r\n', doc.body)
assert(doc.body:find 'name="bin"\r\nContent%-Type: application/octet%-stream', doc.body)

-- non-2xx is a response, not an error
resp = client:get(base .. '/status/503'):send()
eq(resp:status_code(), 503, '503 status')
eq(resp:status_reason(), 'Service Unavailable', '503 reason')
eq(resp:status_is_server_error(), true, 'is_server_error')
eq(resp:text(), 'status 503', '503 body')
resp = client:get(base .. '/status/404'):send()
eq(resp:status_is_client_error(), true, '404 client error')
resp = client:get(base .. '/status/299'):send()
eq(resp:status_reason(), nil, 'unknown reason is nil')
eq(resp:status_is_success(), true, '299 success')

-- redirects are followed; a loop is an error
resp = client:get(base .. '/redirect'):send()
eq(kumo.json_decode(resp:text()).path, '/echo', 'followed redirect')
errors_with(function()
  client:get(base .. '/loop'):send()
end, 'redirect', 'redirect loop')

-- charset conversion in text(), bytes() untouched
resp = client:get(base .. '/latin1'):send()
eq(resp:text(), 'caf\u{e9}', 'latin-1 text')
eq(resp:bytes(), 'caf\xe9', 'latin-1 bytes')

-- a hanging server: the request timeout is an error, in about that time
local t0 = kumo.time.now()
local err = errors_with(function()
  client:get(base .. '/hang'):timeout '500ms':send()
end, 'timed out', 'request timeout')
local took = (kumo.time.now() - t0).seconds
assert(took >= 0.4 and took < 5, 'timeout took ' .. took)
assert(err:find(base .. '/hang', 1, true), 'error names the url: ' .. err)
-- the client-wide timeout
local quick = kumo.http.build_client { timeout = 0.3 }
errors_with(function()
  quick:get(base .. '/hang'):send()
end, 'timed out', 'client timeout')

-- garbage from the server, a refused connection
errors_with(function()
  client:get(base .. '/garbage'):send()
end, 'error sending request', 'garbage response')
errors_with(function()
  client:get('http://127.0.0.1:1/'):send()
end, 'error sending request', 'connection refused')

-- bad arguments
errors_with(function()
  client:get 'ftp://example.com/'
end, 'only http and https', 'ftp URL')
errors_with(function()
  client:get 'not a url'
end, 'invalid URL', 'bad URL')
errors_with(function()
  client:get(base):header('Bad\nName', 'x')
end, 'invalid header name', 'bad header name')
errors_with(function()
  client:get(base):header('X-Ok', 'a\r\nInjected: 1')
end, 'CR, LF', 'header injection')
errors_with(function()
  kumo.http.build_client { nope = 1 }
end, 'unknown field `nope`', 'unknown client key')

-- several requests at once on one client, from concurrent tasks: all are
local results = kumo.mpsc.define 'http.results'
kumo.on('http.concurrent', function(args)
  local r = args.client:get(args.base .. '/echo?task=' .. args.i):send()
  results:send(kumo.json_decode(r:text()).path)
end)
for i = 1, 5 do
  kumo.spawn_task {
    event_name = 'http.concurrent',
    args = { base = base, i = i, client = client },
  }
end
local seen = {}
for _ = 1, 5 do
  seen[results:recv()] = true
end
for i = 1, 5 do
  assert(seen['/echo?task=' .. i], 'task ' .. i .. ' answered')
end

-- close: later use is an error
client:close()
errors_with(function()
  client:get(base .. '/echo')
end, 'closed', 'closed client')

-- build_url
eq(
  kumo.http.build_url('https://example.com/?existing=value', { a = 1, b = 2 }),
  'https://example.com/?existing=value&a=1&b=2',
  'build_url'
)
eq(
  kumo.http.build_url('http://example.com/p', { q = 'a b&c' }),
  'http://example.com/p?q=a+b%26c',
  'build_url escapes'
)
print 'http_client.lua: all passed'
