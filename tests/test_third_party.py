"""Start methods that other libraries register, and their suites with mpx.

loky (inside joblib) registers "loky" in
``multiprocessing.context._concrete_contexts`` and sets it as the start
method of its workers; any library may do the same. mpx accepts every start
method the stdlib knows, with mpx's objects on top of that method's context.

The tests with a made-up registered start method always run. The real
libraries' own suites (joblib's ``test_parallel -k multiprocessing``,
pebble's) are not installed by the test extra; ``benchmarks/third_party.py``
runs them with mpx substituted, and this file runs that script when the
libraries are importable here (skipped with the reason otherwise).
"""

import multiprocessing
import multiprocessing.context as std_context
import os
import pickle
import subprocess
import sys

import pytest

import mpx
import mpx.context

from conftest import join_all

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE = "mpx-test-fake"


class FakeProcess(std_context.ForkProcess):
    """A Process of the made-up start method (fork underneath)."""
    _start_method = FAKE


class FakeContext(std_context.BaseContext):
    """What a library registers: its own Process, its own Queue."""
    _name = FAKE
    Process = FakeProcess

    def __init__(self):
        self.marker = "the library's own state"

    def Queue(self, maxsize=0, reducers=None):
        raise AssertionError("mpx's Queue must win over the library's")


@pytest.fixture
def fake_method(monkeypatch):
    """FAKE registered with the stdlib for one test; mpx's made contexts and
    the start method are put back afterwards."""
    monkeypatch.setitem(std_context._concrete_contexts, FAKE, FakeContext())
    monkeypatch.setattr(mpx.context, "_CONTEXTS", dict(mpx.context._CONTEXTS))
    before = multiprocessing.get_start_method(allow_none=True)
    yield FAKE
    multiprocessing.set_start_method(before, force=True)


def _put_pid(q):
    q.put(os.getpid())


def test_get_context_takes_a_registered_start_method(fake_method):
    ctx = mpx.get_context(fake_method)
    assert isinstance(ctx, FakeContext) and isinstance(ctx, mpx.context.MpxContext)
    assert ctx.get_start_method() == fake_method
    assert ctx.Process is FakeProcess
    assert ctx.marker == "the library's own state"
    assert ctx.stdlib_context() is std_context._concrete_contexts[fake_method]
    assert mpx.get_context(fake_method) is ctx          # made once
    assert pickle.loads(pickle.dumps(ctx)) is ctx
    q = ctx.Queue()
    assert type(q).__module__.startswith("mpx.")
    p = ctx.Process(target=_put_pid, args=(q,))
    p.start()
    try:
        assert q.get(timeout=30) == p.pid
    finally:
        join_all([p])
        q.close()


def test_default_context_follows_a_registered_start_method(fake_method):
    mpx.set_start_method(fake_method, force=True)
    assert mpx.get_start_method() == fake_method
    assert isinstance(mpx.get_context(), FakeContext)
    q = mpx.Queue()
    r, w = mpx.Pipe(duplex=False)
    try:
        q.put("x")
        assert q.get(timeout=10) == "x"
        w.send(1)
        assert r.recv() == 1
    finally:
        q.close()
        r.close()
        w.close()


def test_unknown_start_method_is_a_valueerror_naming_it():
    with pytest.raises(ValueError, match="no-such-method"):
        mpx.get_context("no-such-method")
    with pytest.raises(ValueError, match="no-such-method"):
        mpx.context.get_context("no-such-method")


# --- the libraries' own suites ------------------------------------------

def _suite(name, timeout):
    out = subprocess.run(
        [sys.executable, os.path.join(ROOT, "benchmarks", "third_party.py"), "--installed",
         "--no-stdlib", "--only", name, "--cache", os.path.join(ROOT, "build", "third-party")],
        capture_output=True, text=True, timeout=timeout, cwd=ROOT)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-4000:]


@pytest.mark.timeout(300)
def test_joblibs_multiprocessing_tests_pass_with_mpx():
    pytest.importorskip("joblib", reason="joblib is not installed here (not in the test "
                        "extra): `python benchmarks/third_party.py` installs it in a "
                        "cache folder and runs its suite with mpx")
    _suite("joblib", 240)


@pytest.mark.timeout(900)
def test_pebbles_suite_passes_with_mpx():
    pytest.importorskip("pebble", reason="pebble is not installed here (not in the test "
                        "extra): `python benchmarks/third_party.py` installs it in a "
                        "cache folder and runs its suite with mpx")
    # pebble's tests come from its sdist (fetched once into build/third-party).
    _suite("pebble", 840)
