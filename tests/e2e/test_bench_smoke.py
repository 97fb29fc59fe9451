"""The benchmark harness keeps working: `bench/run --smoke` (N=500,
M=5,000) relays through kumod and a private Postfix instance, measures
every scenario and writes its JSON. Nothing is timed against a target
here; the figures only have to exist and be positive."""
import json
import os
import subprocess
import sys

import pytest

import kumod_harness as kh

sys.path.insert(0, os.path.join(kh.REPO, "bench"))
import policies as bench_policies  # noqa: E402

BENCH = os.path.join(kh.REPO, "bench", "run")

# every scenario the table must have, and whether Postfix takes part in it
EXPECTED = {
    "relay -s 10 N=500": True,
    "relay -s 50 N=500": True,
    "relay -s 10 N=500 kumod --threads 1": True,
    "relay -s 50 N=500 kumod --threads 1": True,
    "held -s 50 N=500 (dest. unreachable)": True,
    "memory M=5000": False,
    "restart (SIGTERM) M=5000": False,
    "restart (SIGKILL) M=5000": False,
    "memory M=5000 tenant meta": False,
    "restart (SIGTERM) M=5000 tenant meta": False,
    "restart (SIGKILL) M=5000 tenant meta": False,
    "policy -s 10 N=500 bare relay (1)": True,
    "policy -s 10 N=500 example policy (2)": True,
    "policy -s 10 N=500 example + DKIM RSA-2048 (3)": True,
    "policy -s 10 N=500 example + DKIM ed25519 (3)": True,
    "policy -s 10 N=500 example + RSA + webhook (4)": True,
    "latency bare relay (1), 50% load": True,
    "latency example + DKIM RSA (3) vs Postfix + OpenDKIM, 50% load": True,
    "latency generator -> smtp-sink (floor)": False,
    "latency 50 ms handler": False,
    "latency 50 ms handler, deferred_queue": False,
}


def _positive(v):
    return isinstance(v, (int, float)) and not isinstance(v, bool) and v > 0


@pytest.mark.skipif(os.geteuid() != 0, reason="the private Postfix instance needs root")
@pytest.mark.skipif(not all(os.access(p, os.X_OK) for p in
                            ("/usr/sbin/smtp-source", "/usr/sbin/smtp-sink", "/usr/sbin/postfix")),
                    reason="Postfix (smtp-source, smtp-sink) is not installed")
def test_bench_smoke(tmp_path):
    out = tmp_path / "smoke.json"
    p = subprocess.run([sys.executable, BENCH, "--smoke", "--also-threads", "1",
                        "--kumod", kh.kumod_bin(),
                        "--out", str(out), "--tmpdir", str(tmp_path)],
                       capture_output=True, text=True, timeout=600 * kh.SLOW)
    assert p.returncode == 0, f"bench/run --smoke failed:\n{p.stdout[-4000:]}\n{p.stderr[-6000:]}"
    doc = json.loads(out.read_text())
    assert doc["mode"] == "smoke"
    assert doc["errors"] == []

    rows = {}
    for r in doc["table"]:
        rows.setdefault(r["scenario"], []).append(r)
    assert set(EXPECTED) <= set(rows), f"missing scenarios: {set(EXPECTED) - set(rows)}"
    for scenario, with_postfix in EXPECTED.items():
        for r in rows[scenario]:
            what = f"{scenario} / {r['metric']}"
            assert _positive(r["kumod"]), f"{what}: kumod = {r['kumod']}"
            if with_postfix:
                assert _positive(r["postfix"]), f"{what}: Postfix = {r['postfix']}"
                assert _positive(r["ratio"]), f"{what}: ratio = {r['ratio']}"

    sc = doc["scenarios"]
    for key in ("relay_s010", "relay_s050"):
        for kind in ("ceiling", "kumod", "postfix", "kumod_t1"):
            run = sc[key]["runs"][kind][0]
            assert run["source_exit"] == 0 and run["sink_count"] >= 500, (key, kind, run)
            assert run["command"].startswith("/usr/sbin/smtp-source ")
    pol = sc["policies"]
    # every signing MTA's signatures verified (dkimpy) before the timing
    assert pol["probe"] == {"example_rsa": 3, "example_ed25519": 3, "postfix_dkim": 3}
    for kind in ("bare", "example", "example_rsa", "example_ed25519", "example_rsa_hook",
                 "postfix", "postfix_dkim"):
        run = pol["runs"][kind][0]
        assert run["source_exit"] == 0 and run["sink_count"] >= 500, (kind, run)
        if kind.startswith("example_"):
            assert run["signatures"] >= 500, (kind, run)
    # the webhook got Reception and Delivery of every message
    assert pol["runs"]["example_rsa_hook"][0]["hook_records"] >= 1000
    for key in ("memory", "memory_tenants"):
        for how in ("term", "kill"):
            assert sc[key]["restarts"][how]["enumerated"] == 5000, key
    # the tenant variant's messages carried the queue helper's meta: one
    # scheduled queue per campaign:tenant of the mix, none for the default
    assert sc["memory_tenants"]["memory"]["queues"] == sorted(
        f"{c}:{t}@example.com" for t, c, _, _ in bench_policies.TENANT_MIX)
    lat = sc["latency"]
    assert lat["generator"].startswith("bench/latgen.c")
    for v in ("sink", "kumod", "postfix", "kumod_example_rsa", "postfix_dkim", "kumod_handler",
              "kumod_handler_deferred"):
        assert lat[v]["errors"] == 0 and lat[v]["delivered"] >= lat[v]["messages"] > 0, (v, lat[v])
    # issue 8: deferred_queue hides the 50 ms handler from the injector
    assert lat["kumod_handler"]["p50_ms"] >= 50
