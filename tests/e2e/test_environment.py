"""The suite's external tools are installed and work (issue 15).

Every peer the end-to-end tests and the bench smoke use comes from a Debian
package that scripts/deps.sh installs. Each check below runs the tool the way
the suite does and, when it fails, names the package to add to deps.sh, so a
fresh machine that lacks one fails here with the fix in the message rather
than somewhere deep inside another test.
"""
import importlib
import os
import shutil
import subprocess

import pytest

# (what, Debian package, command that must exit 0, text its output must hold)
TOOLS = [
    ("swaks with TLS (STARTTLS tests)", "swaks libnet-ssleay-perl libio-socket-ssl-perl",
     ["swaks", "--support"], "=== TLS supported"),
    ("swaks with AUTH", "swaks", ["swaks", "--support"], "=== Basic AUTH supported"),
    ("postconf", "postfix", ["/usr/sbin/postconf", "-d", "mail_version"], "mail_version"),
    ("dnsmasq", "dnsmasq-base", ["/usr/sbin/dnsmasq", "--version"], "Dnsmasq version"),
    ("openssl", "openssl", ["openssl", "version"], "OpenSSL"),
    ("curl", "curl", ["curl", "--version"], "curl"),
    ("zstd", "zstd", ["zstd", "--version"], "Zstandard"),
]

PY_MODULES = [
    ("pytest", "python3-pytest"),
    ("aiosmtpd", "python3-aiosmtpd"),
    ("zstandard", "python3-zstandard"),
    ("prometheus_client", "python3-prometheus-client"),
]


def _run(cmd):
    try:
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           timeout=30, stdin=subprocess.DEVNULL)
    except FileNotFoundError:
        return None, ""
    return p.returncode, p.stdout.decode("utf-8", "replace")


@pytest.mark.parametrize("what,package,cmd,expect", TOOLS, ids=[t[0] for t in TOOLS])
def test_external_tool_works(what, package, cmd, expect):
    rc, out = _run(cmd)
    hint = f"{what} is missing or broken: install Debian package(s) {package} (scripts/deps.sh)"
    assert rc is not None, hint + f"\n{cmd[0]} not found"
    assert rc == 0, hint + "\n" + out
    if expect is not None:
        assert expect in out, hint + "\n" + out


def test_smtp_source_talks_to_smtp_sink(tmp_path):
    """Postfix's load tools, run as the bench smoke and the relay tests run them."""
    hint = "smtp-source/smtp-sink missing or broken: install Debian package postfix (scripts/deps.sh)"
    for tool in ("/usr/sbin/smtp-source", "/usr/sbin/smtp-sink"):
        assert os.access(tool, os.X_OK), hint + f"\n{tool} not found"
    import socket
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    root = ["-u", "nobody"] if os.getuid() == 0 else []
    sink = subprocess.Popen(["/usr/sbin/smtp-sink"] + root + ["-c", f"127.0.0.1:{port}", "10"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    try:
        import time
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.05)
        rc, out = _run(["/usr/sbin/smtp-source", "-m", "3", "-s", "1", "-l", "100",
                        "-f", "a@example.com", "-t", "b@example.com", f"127.0.0.1:{port}"])
        assert rc == 0, hint + "\n" + out
    finally:
        sink.terminate()
        out = sink.communicate(timeout=10)[0].decode("utf-8", "replace")
    # smtp-sink -c prints a running count of messages received
    assert "3" in out, hint + "\nsmtp-sink saw: " + out


@pytest.mark.parametrize("module,package", PY_MODULES, ids=[m[0] for m in PY_MODULES])
def test_python_module_present(module, package):
    try:
        importlib.import_module(module)
    except ImportError as e:
        pytest.fail(f"python module {module} missing: install Debian package {package} "
                    f"(scripts/deps.sh) for /usr/bin/python3 ({e})")


def test_suite_runs_debian_python():
    # PyPI is unreachable; the suite must run on Debian's interpreter, which
    # is where the python3-* packages install.
    import sys
    assert os.path.realpath(sys.executable).startswith("/usr/bin/"), (
        f"the suite runs under {sys.executable}; use /usr/bin/python3 (CMakeLists sets it)")


def test_deps_script_lists_every_package():
    """Each package named above appears in scripts/deps.sh, so the list cannot drift."""
    here = os.path.dirname(os.path.abspath(__file__))
    deps = open(os.path.join(here, "..", "..", "scripts", "deps.sh")).read().split()
    wanted = set()
    for t in TOOLS:
        wanted.update(t[1].split())
    wanted.update(p for _, p in PY_MODULES)
    missing = sorted(p for p in wanted if p not in deps)
    assert not missing, f"scripts/deps.sh does not install {missing}"
    assert shutil.which("swaks"), "swaks not on PATH"
