--[[ policy-extras.dkim_sign: DKIM signing from data files.

  local dkim_sign = require 'policy-extras.dkim_sign'
  local dkim_signer = dkim_sign:setup { '/opt/kumomta/etc/policy/dkim_data.toml' }
  kumo.on('smtp_server_message_received', function(msg)
    dkim_signer(msg)     -- last: nothing may change the message after it
  end)

Data file (TOML, or JSON of the same shape; later files override earlier
ones key by key):

  [base]                       defaults for every signature
  selector = "s1"
  headers = ["From", "To", "Subject", "Date"]
  header_canonicalization = "relaxed"   body_canonicalization = "relaxed"
  expiration = 86400           seconds
  over_sign = true
  additional_signatures = ["esp"]       signatures added to every message
  vault_mount = "secret"       keys from HashiCorp Vault (kumod has no
  vault_path_prefix = "dkim"   Vault client: signing then fails)

  [domain."example.com"]       signs mail whose From domain is example.com
  selector = "s1"              (wildcards like "*.example.com" allowed)
  algo = "sha256"              "sha256" (RSA) or "ed25519"
  filename = "/path/key.pem"   default /opt/kumomta/etc/dkim/DOMAIN/SELECTOR.key
  policy = "Always"

  [signature."esp"]            an additional signature for another domain
  domain = "esp.example"
  policy = "Always"            or "OnlyIfMissingDomainBlock": only for
                               messages no [domain] block signed

The signer rejects a message without a From header (552 5.6.0). Signing
uses kumo.dkim.rsa_sha256_signer / ed25519_signer and msg:dkim_sign; when
this kumod lacks them, setup still succeeds and the signer raises an
error naming what is missing when it is called.
]]
local kumo = require 'kumo'
local D = require 'policy-extras.datafile'

local mod = {}
local HELPER = 'dkim_sign'
local DKIM_DIR = '/opt/kumomta/etc/dkim'

local function positive_number(v)
  if type(v) ~= 'number' or v <= 0 then
    return 'expected a positive number of seconds'
  end
end

local canon = D.one_of('relaxed', 'simple', 'Relaxed', 'Simple')
local CANON = { relaxed = 'Relaxed', simple = 'Simple', Relaxed = 'Relaxed', Simple = 'Simple' }

local COMMON = {
  selector = D.string,
  headers = D.string_list,
  expiration = positive_number,
  header_canonicalization = canon,
  body_canonicalization = canon,
  over_sign = D.bool,
}

local function with(extra)
  local s = {}
  for k, v in pairs(COMMON) do
    s[k] = v
  end
  for k, v in pairs(extra) do
    s[k] = v
  end
  return s
end

local BASE = with {
  vault_mount = D.string,
  vault_path_prefix = D.string,
  vault_key = D.string,
  additional_signatures = D.string_list,
  policy = D.one_of 'Always',
}
local DOMAIN = with {
  policy = D.one_of 'Always',
  algo = D.one_of('sha256', 'ed25519'),
  filename = D.string,
}
local SIGNATURE = with {
  domain = D.string,
  policy = D.one_of('Always', 'OnlyIfMissingDomainBlock'),
  algo = D.one_of('sha256', 'ed25519'),
  filename = D.string,
}

local function load_data(files)
  local data = { base = {}, domain = {}, signature = {}, where = {} }
  for _, file in ipairs(files) do
    local raw = D.load(HELPER, file)
    local ctx = D.context(HELPER, file)
    D.check_record(ctx, {}, raw, { base = D.table, domain = D.table, signature = D.table })
    if raw.base then
      D.check_record(ctx, { 'base' }, raw.base, BASE)
      for k, v in pairs(raw.base) do
        data.base[k] = v
      end
      data.where.base = ctx
    end
    for _, kind in ipairs { 'domain', 'signature' } do
      local schema = kind == 'domain' and DOMAIN or SIGNATURE
      for _, name in ipairs(D.sorted_keys(raw[kind] or {})) do
        D.check_record(ctx, { kind, name }, raw[kind][name], schema)
        local dest = data[kind][name] or {}
        for k, v in pairs(raw[kind][name]) do
          dest[k] = v
        end
        data[kind][name] = dest
        data.where[kind .. ':' .. name] = ctx
      end
    end
  end
  for _, sig in ipairs(data.base.additional_signatures or {}) do
    if not data.signature[sig] then
      D.fail(
        data.where.base,
        { 'base' },
        'additional_signatures',
        string.format("signature '%s' has no [signature.%s] table", sig, D.quote_key(sig))
      )
    end
  end
  for _, name in ipairs(D.sorted_keys(data.signature)) do
    if not data.signature[name].domain then
      D.fail(data.where['signature:' .. name], { 'signature', name }, 'domain', 'missing (the signing domain)')
    end
  end
  for _, kind in ipairs { 'domain', 'signature' } do
    for _, name in ipairs(D.sorted_keys(data[kind])) do
      if not data[kind][name].headers and not data.base.headers then
        D.fail(
          data.where[kind .. ':' .. name],
          { kind, name },
          'headers',
          'missing, and [base] has no headers either'
        )
      end
      if not data[kind][name].selector and not data.base.selector then
        D.fail(
          data.where[kind .. ':' .. name],
          { kind, name },
          'selector',
          'missing, and [base] has no selector either'
        )
      end
    end
  end
  data.map = kumo.domain_map.new()
  for name, params in pairs(data.domain) do
    data.map[name] = params
  end
  return data
end
mod.load_data = load_data

-- The signer parameters for one block (domain or signature).
local function signer_params(base, block, signing_domain)
  local p = {
    domain = signing_domain,
    selector = block.selector or base.selector,
    headers = block.headers or base.headers,
    expiration = block.expiration or base.expiration,
    header_canonicalization = CANON[block.header_canonicalization or base.header_canonicalization or ''],
    body_canonicalization = CANON[block.body_canonicalization or base.body_canonicalization or ''],
  }
  local over_sign = block.over_sign
  if over_sign == nil then
    over_sign = base.over_sign
  end
  p.over_sign = over_sign
  if base.vault_mount then
    p.key = {
      vault_mount = base.vault_mount,
      vault_path = block.filename
        or string.format('%s/%s/%s', base.vault_path_prefix or 'dkim', p.domain, p.selector),
      vault_key = base.vault_key,
    }
  else
    p.key = block.filename or string.format('%s/%s/%s.key', DKIM_DIR, p.domain, p.selector)
  end
  return p
end
mod.signer_params = signer_params

local function make_signer(params, algo)
  local dkim = kumo.dkim
  if type(dkim) ~= 'table' then
    error('dkim_sign: this kumod has no kumo.dkim module, so it cannot sign messages', 0)
  end
  local ctor = (algo or 'sha256') == 'ed25519' and dkim.ed25519_signer or dkim.rsa_sha256_signer
  if not ctor then
    error(string.format('dkim_sign: kumo.dkim has no signer for algo %s', algo or 'sha256'), 0)
  end
  return ctor(params)
end

local function sign_with(msg, params, algo)
  local signer = make_signer(params, algo)
  msg:dkim_sign(signer)
end

-- Signs msg as the data says. Returns the list of signing domains used.
local function sign(msg, data)
  local from = msg:from_header()
  if not from then
    kumo.reject(552, '5.6.0 the message has no From header, which DKIM signing needs')
  end
  local signed = {}
  local from_domain = from.domain
  local block = data.map[from_domain]
  if block then
    sign_with(msg, signer_params(data.base, block, from_domain), block.algo)
    signed[#signed + 1] = from_domain
  end
  for _, name in ipairs(data.base.additional_signatures or {}) do
    local sig = data.signature[name]
    if not (sig.policy == 'OnlyIfMissingDomainBlock' and block) then
      sign_with(msg, signer_params(data.base, sig, sig.domain), sig.algo)
      signed[#signed + 1] = sig.domain
    end
  end
  return signed
end

function mod:setup(files)
  if mod.CONFIGURED then
    error('dkim_sign: setup was already called', 2)
  end
  files = D.file_list(HELPER, files)
  load_data(files)
  local cached = kumo.memoize(load_data, {
    name = 'policy-extras.dkim_sign',
    ttl = '5 minutes',
    capacity = 4,
    invalidate_with_epoch = true,
  })
  mod.CONFIGURED = { files = files }
  return function(msg)
    return sign(msg, cached(files))
  end
end

return mod
