"""The parts of the kumo library that show outside Lua: kumo.log_* lines in
the diagnostic log (level, module "lua", the policy's file:line, the
KUMOD_LOG filter), kumo.validation_failed() making --validate fail, and
kumo.spawn_task not starting tasks under --validate."""
import os
import subprocess

import kumod_harness as kh


def run(args, tmp_path, policy, env=None):
    path = tmp_path / "policy.lua"
    path.write_text(policy)
    e = dict(os.environ)
    e.update(env or {})
    return subprocess.run([kh.kumod_bin()] + args + [str(path)], capture_output=True, text=True,
                          timeout=60, env=e)


def test_log_functions_carry_level_and_line(tmp_path):
    policy = ("local kumo = require 'kumo'\n"
              "kumo.log_error('Logging something', true, false, 42)\n"
              "kumo.log_warn('w')\n"
              "kumo.log_info('i')\n"
              "kumo.log_debug('d')\n")
    r = run(["--script"], tmp_path, policy)
    assert r.returncode == 0, r.stderr
    lines = r.stderr.splitlines()
    err = [l for l in lines if "Logging something" in l]
    assert len(err) == 1 and " ERROR lua: " in err[0], lines
    assert err[0].endswith("policy.lua:2: Logging something true false 42"), err[0]
    assert any(" WARN lua: " in l and l.endswith("policy.lua:3: w") for l in lines), lines
    assert any(" INFO lua: " in l and l.endswith("policy.lua:4: i") for l in lines), lines
    assert not any(l.endswith(": d") for l in lines), "debug is filtered out by default"
    r = run(["--script"], tmp_path, policy, env={"KUMOD_LOG": "info,lua=debug"})
    assert any(" DEBUG lua: " in l and l.endswith("policy.lua:5: d") for l in r.stderr.splitlines())
    r = run(["--script"], tmp_path, policy, env={"KUMOD_LOG": "lua=error"})
    assert "policy.lua:3: w" not in r.stderr and "Logging something" in r.stderr


# --validate requires both spools to be defined (what a start would need)
SPOOLS = ("kumo.define_spool { name = 'data', path = '/nonexistent/d', kind = 'RocksDB' } "
          "kumo.define_spool { name = 'meta', path = '/nonexistent/m', kind = 'RocksDB' } ")


def test_validation_failed_fails_validate(tmp_path):
    ok = ("local kumo = require 'kumo'\n"
          f"kumo.on('init', function() {SPOOLS} end)\n")
    r = run(["--validate", "--policy"], tmp_path, ok)
    assert r.returncode == 0, r.stderr
    bad = ("local kumo = require 'kumo'\n"
           f"kumo.on('init', function() {SPOOLS} end)\n"
           "kumo.on('validate_config', function() kumo.validation_failed() end)\n")
    r = run(["--validate", "--policy"], tmp_path, bad)
    assert r.returncode == 1
    assert "failed validation" in r.stderr


def test_spawn_task_does_not_run_under_validate(tmp_path):
    marker = tmp_path / "ran"
    policy = ("local kumo = require 'kumo'\n"
              f"kumo.on('init', function() {SPOOLS} "
              "kumo.spawn_task { event_name = 't', args = {} } end)\n"
              f"kumo.on('t', function() io.open('{marker}', 'w'):close() end)\n")
    r = run(["--validate", "--policy"], tmp_path, policy)
    assert r.returncode == 0, r.stderr
    assert not marker.exists()
