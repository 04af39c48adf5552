"""Test conventions for mpx (see shared DESIGN.md, "Tests").

- `start_method` / `ctx`: behaviour tests take the `ctx` fixture and run once
  per start method (fork, spawn, forkserver).
- `backends_for(family)`: the backends that offer a family, for
  ``pytest.mark.parametrize``; `MPX_TEST_BACKENDS=a,b` narrows them.
- `join_all(procs)`: join children with a bound, kill any that hung, and
  fail unless every one exited 0.
- `wait_for(predicate)`: poll a condition until it holds or time runs out.
- Every test is bounded (pytest-timeout, set in pytest.ini) and faulthandler
  dumps the stacks of a hung test.
- `no_leaks` (autouse) fails a test that leaves files in /dev/shm or
  /dev/mqueue, SysV ids, records of named objects, or child processes.
"""

import faulthandler
import os
import sys
import tempfile
import time

import pytest

faulthandler.enable()

# Named-object records of the test run go to a private directory, so tests
# never see (or disturb) the machine's real record.
_NAMES_DIR = tempfile.mkdtemp(prefix="mpx-test-names-")
os.environ["MPX_NAMES_DIR"] = _NAMES_DIR

import mpx  # noqa: E402  (after MPX_NAMES_DIR is set)
from mpx import backends as _registry  # noqa: E402

START_METHODS = ("fork", "spawn", "forkserver")


def backends_for(family):
    """Names of the available backends that provide `family`."""
    names = [row["name"] for row in _registry.backends()
             if row["available"] and family in row["families"]]
    only = os.environ.get("MPX_TEST_BACKENDS")
    if only:
        names = [n for n in names if n in only.split(",")]
    return names


def join_all(procs, timeout=60):
    """Join `procs` (each within `timeout` s); kill and fail on a hung one,
    and fail unless every exit code is 0."""
    for p in procs:
        p.join(timeout)
    hung = [p for p in procs if p.is_alive()]
    for p in hung:
        p.kill()
        p.join(5)
    assert not hung, f"{len(hung)} child process(es) hung"
    assert [p.exitcode for p in procs] == [0] * len(procs), [p.exitcode for p in procs]


def wait_for(predicate, timeout=10.0, interval=0.02):
    """True as soon as `predicate()` is; its last value after `timeout` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()


@pytest.fixture(params=START_METHODS)
def start_method(request):
    return request.param


@pytest.fixture
def ctx(start_method):
    return mpx.get_context(start_method)


# --- leak checks -----------------------------------------------------------

def _listdir(path):
    try:
        return set(os.listdir(path))
    except OSError:
        return set()


def _sysv_ids():
    ids = set()
    for kind in ("msg", "shm", "sem"):
        try:
            with open(f"/proc/sysvipc/{kind}") as f:
                next(f)
                for line in f:
                    fields = line.split()
                    if fields:
                        ids.add((kind, fields[1]))   # (kind, id)
        except OSError:
            pass
    return ids


def _children():
    import psutil
    kids = []
    for p in psutil.Process().children(recursive=True):
        try:
            cmd = " ".join(p.cmdline())
        except psutil.Error:
            continue
        # The forkserver and the resource tracker are long-lived helpers the
        # stdlib starts once per parent on purpose; they are not leaks.
        if "forkserver" in cmd or "resource_tracker" in cmd:
            continue
        if p.status() == psutil.STATUS_ZOMBIE:
            continue
        kids.append(p)
    return kids


# /dev/mqueue is usually not mounted here, so per test a leaked POSIX queue
# shows up only through mpx's named-object record. Once per session, as
# root, the kernel's real list is read through an mqueue mount made in a
# private mount namespace (gone with it), so nothing unrecorded slips by.
_MQUEUE_VIEW = ("mount -t tmpfs none /mnt && mkdir /mnt/q && "
                "mount -t mqueue none /mnt/q && ls -A /mnt/q")


def _all_posix_queues():
    """Every POSIX message queue's name, or None where they cannot be listed."""
    import shutil
    import subprocess
    if os.path.ismount("/dev/mqueue"):
        return _listdir("/dev/mqueue")
    if os.geteuid() != 0 or not shutil.which("unshare"):
        return None
    out = subprocess.run(["unshare", "-m", "sh", "-c", _MQUEUE_VIEW],
                         capture_output=True, text=True, timeout=30)
    return set(out.stdout.split()) if out.returncode == 0 else None


def pytest_sessionstart(session):
    session.config._mpx_queues_before = _all_posix_queues()


def _snapshot():
    return {
        "/dev/shm": _listdir("/dev/shm"),
        "/dev/mqueue": _listdir("/dev/mqueue"),
        "SysV ids": _sysv_ids(),
        "named-object records": _listdir(_NAMES_DIR),
    }


@pytest.fixture(autouse=True)
def no_leaks(request):
    before = _snapshot()
    yield
    if request.node.get_closest_marker("allow_leaks"):
        return
    # Anonymous objects are freed by finalizers and exiting children: give
    # them a moment, then report what is still there.
    deadline = time.monotonic() + 5
    while True:
        import gc
        gc.collect()
        after = _snapshot()
        new = {k: after[k] - before[k] for k in after}
        kids = _children()
        if (not any(new.values()) and not kids) or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    problems = [f"{k}: {sorted(v)}" for k, v in new.items() if v]
    if kids:
        problems.append("child processes: " + ", ".join(
            f"{p.pid} {' '.join(p.cmdline())[:80]}" for p in kids))
        for p in kids:
            try:
                p.kill()
            except Exception:
                pass
    if problems:
        pytest.fail("test left behind: " + "; ".join(problems), pytrace=False)


def pytest_configure(config):
    config.addinivalue_line("markers", "allow_leaks: skip the leak check (only for tests "
                            "that clean up in a module-level finalizer)")
    config.addinivalue_line("markers", "slow: long soak tests, run with --soak")


def pytest_addoption(parser):
    parser.addoption("--soak", action="store_true", default=False,
                     help="run the long fault/soak tests at full length")


def pytest_sessionfinish(session, exitstatus):
    import shutil
    shutil.rmtree(_NAMES_DIR, ignore_errors=True)
    before = getattr(session.config, "_mpx_queues_before", None)
    after = _all_posix_queues() if before is not None else None
    if after is not None and after - before:
        sys.stderr.write(f"\nmpx tests left POSIX message queues behind: {sorted(after - before)}\n")
        session.exitstatus = 1
