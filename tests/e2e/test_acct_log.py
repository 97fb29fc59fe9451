"""kumo.aaa.configure_acct_log (configure_acct_log.md) end to end: an HTTP
admin request that is allowed and one that is denied each write the page's
Authorization record, and Basic credentials that are accepted and refused
each write its Authentication record, into acct-* zstd segments under
log_dir; the log_* switches leave records out."""
import base64
import glob
import os
import re
import urllib.error
import urllib.request

import pytest

import kumod_harness as kh

POLICY = """
local kumo = require 'kumo'
kumo.on('init', function()
  kumo.define_spool { name = 'data', path = '{spool}/data', kind = 'LocalDisk' }
  kumo.define_spool { name = 'meta', path = '{spool}/meta', kind = 'RocksDB' }
  kumo.configure_local_logs { log_dir = '{logs}' }
  kumo.aaa.configure_acct_log { log_dir = '{dir}/acct', log_authn_ok = false }
  kumo.start_esmtp_listener { listen = '127.0.0.1:{smtp_port}' }
  kumo.start_http_listener { listen = '127.0.0.1:{http_port}' }
  kumo.start_http_listener { listen = '127.0.0.1:{port:untrusted}', trusted_hosts = {} }
end)

kumo.on('http_server_validate_auth_basic', function(user, password)
  if user == 'injector' and password == 'secret' then
    return {
      identities = { { identity = 'injector', context = 'HttpBasicAuth' } },
      groups = { 'injectors' },
    }
  end
  return false
end)

local admin_acl = kumo.aaa.make_access_control_list {
  {
    criteria = { Identity = { Group = 'kumomta:http-listener-trusted-ip' } },
    privilege = 'GET',
    access = 'Allow',
  },
  { criteria = { Identity = { Group = 'injectors' } }, privilege = 'GET', access = 'Deny' },
}
kumo.on('get_acl_definition', function(resource)
  if resource == 'http_listener/*/api/admin' then
    return admin_acl
  end
  return nil
end)
"""

TS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d{3}|\.\d{6}|\.\d{9})?Z$")


@pytest.fixture(scope="module")
def k(module_kumod_factory):
    return module_kumod_factory(policy=POLICY, name="acct")


def get(k, path, port, auth=None):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if auth:
        req.add_header("Authorization",
                       "Basic " + base64.b64encode(auth.encode()).decode())
    try:
        with urllib.request.urlopen(req, timeout=30 * kh.SLOW) as r:
            return r.status
    except urllib.error.HTTPError as e:
        return e.code


def acct(k, pred, count=1):
    d = os.path.join(k.dir, "acct")

    def found():
        rs = [r for r in kh.read_log_records(d) if pred(r)]
        return rs if len(rs) >= count else None
    return kh.wait_until(found, 10, interval=0.05, what="accounting records")


def chain(listen, path):
    """The resources the listener walks, most specific first, the listener's
    own address before the * form (make_http_url_resource.md)."""
    parts = path.strip("/").split("/")
    out = []
    for host in (listen, "*"):
        for i in range(len(parts), -1, -1):
            out.append(f"http_listener/{host}" + ("/" + "/".join(parts[:i]) if i else ""))
    return out + ["http_listener"]


def test_allowed_admin_request_is_logged(k):
    path = "/api/admin/bounce/v1"
    assert get(k, path, k.http_port) == 200
    target = f"http_listener/127.0.0.1:{k.http_port}{path}"
    (rec,) = acct(k, lambda r: r.get("target_resource") == target)
    assert list(rec) == ["type", "timestamp", "target_resource", "privilege", "access",
                         "matching_resource", "rule", "auth_info", "considered_resources"]
    assert rec["type"] == "Authorization" and TS.match(rec["timestamp"]), rec
    assert rec["privilege"] == "GET" and rec["access"] == "Allow"
    assert rec["matching_resource"] == "http_listener/*/api/admin"
    assert rec["rule"] == {"criteria": {"Identity": {"Group": "kumomta:http-listener-trusted-ip"}},
                           "privilege": "GET", "access": "Allow"}
    assert rec["auth_info"] == {"peer_address": "127.0.0.1", "identities": [],
                                "groups": ["kumomta:http-listener-trusted-ip"]}
    want = chain(f"127.0.0.1:{k.http_port}", path)
    assert rec["considered_resources"] == want[:want.index("http_listener/*/api/admin")]
    # the segment is named as KumoMTA names it
    names = [os.path.basename(p) for p in glob.glob(os.path.join(k.dir, "acct", "*"))]
    assert names and all(re.fullmatch(r"acct-\d{8}-\d{6}(\.\d+)?", n) for n in names), names


def test_denied_admin_request_and_authentication_are_logged(k):
    port = k.port("untrusted")
    path = "/api/admin/suspend/v1"
    assert get(k, path, port, auth="injector:secret") == 403
    target = f"http_listener/127.0.0.1:{port}{path}"
    (rec,) = acct(k, lambda r: r.get("target_resource") == target)
    assert rec["type"] == "Authorization" and rec["access"] == "Deny"
    assert rec["matching_resource"] == "http_listener/*/api/admin"
    assert rec["rule"] == {"criteria": {"Identity": {"Group": "injectors"}},
                           "privilege": "GET", "access": "Deny"}
    assert rec["auth_info"] == {"peer_address": "127.0.0.1",
                                "identities": [{"identity": "injector",
                                                "context": "HttpBasicAuth"}],
                                "groups": ["injectors"]}
    # a refused password: an Authentication record with success false
    assert get(k, path, port, auth="daniel:wrong") == 401
    (fail,) = acct(k, lambda r: r["type"] == "Authentication")
    assert list(fail) == ["type", "timestamp", "attempted_identity", "success", "auth_info"]
    assert TS.match(fail["timestamp"])
    assert fail["attempted_identity"] == {"identity": "daniel", "context": "HttpBasicAuth"}
    assert fail["success"] is False
    assert fail["auth_info"] == {"peer_address": "127.0.0.1", "identities": [], "groups": []}
    # log_authn_ok = false: the accepted injector login left no record
    assert all(r["success"] is False for r in kh.read_log_records(os.path.join(k.dir, "acct"))
               if r["type"] == "Authentication")
    # no rule for an unauthenticated peer on metrics: Deny with no matching rule
    assert get(k, "/metrics", port) == 401
    target = f"http_listener/127.0.0.1:{port}/metrics"
    (rec,) = acct(k, lambda r: r.get("target_resource") == target)
    assert rec["access"] == "Deny"
