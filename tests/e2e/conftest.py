"""Fixtures that start real kumod processes (see kumod_harness.py).

kumod_factory(**kw) -> a started Kumod in the test's tmp dir; pass
start=False to get it unstarted. Everything is stopped at teardown, which
also fails the test when the daemon died on its own or when a sanitizer
reported a problem on its stderr. A failing test shows the tail of the
stderr of every live instance.
"""
import os
import sys

import pytest

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import kumod_harness as kh  # noqa: E402


def pytest_configure(config):
    if not os.access(kh.kumod_bin(), os.X_OK):
        raise pytest.UsageError(
            f"kumod binary not found at {kh.kumod_bin()} (set KUMOD_BIN or build build/kumod)")


def _check(instances):
    problems = []
    for k in instances:
        if k.proc is not None and k.proc.poll() is not None and not k.expect_exit:
            problems.append(f"kumod in {k.dir} died during the test with exit code "
                            f"{k.proc.returncode}:\n{k.diag()[-6000:]}")
        k.close()
        report = k.sanitizer_report()
        if report and not k.own_sanitizer_check:
            problems.append(f"sanitizer report from kumod in {k.dir}:\n{report[-10000:]}")
    if problems:
        pytest.fail("\n\n".join(problems), pytrace=False)


class _Factory:
    def __init__(self, base):
        self.base = base
        self.made = []

    def __call__(self, policy=None, start=True, name=None, **kw):
        name = name or f"kumod{len(self.made)}"
        k = kh.Kumod(os.path.join(str(self.base), name), policy=policy, **kw)
        self.made.append(k)
        if start:
            k.start()
        return k


@pytest.fixture
def kumod_factory(tmp_path):
    f = _Factory(tmp_path)
    yield f
    _check(f.made)


@pytest.fixture(scope="module")
def module_kumod_factory(tmp_path_factory, request):
    f = _Factory(tmp_path_factory.mktemp(request.module.__name__.replace(".", "_")))
    yield f
    _check(f.made)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    rep = outcome.get_result()
    if rep.failed and not hasattr(rep, "wasxfail"):
        for k in list(kh.LIVE):
            if k.stderr_path and os.path.exists(k.stderr_path):
                rep.sections.append((f"kumod stderr ({k.dir})", k.diag(all_runs=True)[-8000:]))
