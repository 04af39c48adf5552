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
- `attacker` (session): another local user, created for the run with
  useradd and removed after it; ``attacker.run(func, *args)`` runs `func` in
  a forked child that has dropped to that user (the interpreter of the test
  run cannot be exec'd by other users here: /root is 0700) and returns its
  result or re-raises its exception. Skips with the reason where users
  cannot be created.
- `no_leaks` (autouse) fails a test that leaves files in /dev/shm or
  /dev/mqueue, SysV ids, records of named objects, or child processes.
"""

import faulthandler
import os
import ssl
import subprocess
import sys
import tempfile
import time

import pytest

faulthandler.enable()

# Named-object records of the test run go to a private directory, so tests
# never see (or disturb) the machine's real record. Spawned children import
# this file too: they inherit the parent's directory instead of making one.
_OWN_NAMES_DIR = "MPX_NAMES_DIR" not in os.environ or not os.environ.get("MPX_TEST_NAMES_OWNER")
if _OWN_NAMES_DIR:
    _NAMES_DIR = tempfile.mkdtemp(prefix="mpx-test-names-")
    os.environ["MPX_NAMES_DIR"] = _NAMES_DIR
    os.environ["MPX_TEST_NAMES_OWNER"] = str(os.getpid())
else:
    _NAMES_DIR = os.environ["MPX_NAMES_DIR"]

import mpx  # noqa: E402  (after MPX_NAMES_DIR is set)
from mpx import backends as _registry  # noqa: E402

START_METHODS = ("fork", "spawn", "forkserver")


# Backends that wrap an engine are tested by their own files against an
# instance those start (tests/test_ray*.py), not by the generic suites: these
# hand objects to forked children, and a Ray connection does not survive fork.
ENGINE_BACKENDS = ("ray",)


def backends_for(family):
    """Names of the available backends that provide `family`."""
    names = [row["name"] for row in _registry.backends()
             if row["available"] and family in row["families"]
             and row["name"] not in ENGINE_BACKENDS]
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


# Pids of long-lived helpers that a session fixture started on purpose (the
# Ray instance of tests/ray_helpers.py): they and their descendants are not
# leaks. The fixture removes them again once it stopped them.
SESSION_HELPERS = set()


def _helper_pids():
    import psutil
    pids = set()
    for pid in SESSION_HELPERS:
        try:
            pids.add(pid)
            pids.update(c.pid for c in psutil.Process(pid).children(recursive=True))
        except psutil.Error:
            pass
    return pids


def _children():
    import psutil
    kids = []
    helpers = _helper_pids() if SESSION_HELPERS else ()
    for p in psutil.Process().children(recursive=True):
        if p.pid in helpers:
            continue
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


def pytest_unconfigure(config):
    # The last guard against a stalled CI: a test that failed half-way can
    # leave a non-daemon thread or an atexit hook (concurrent.futures joins
    # its manager threads at exit) waiting for ever after the summary is
    # printed. Past this point nothing should take long, so a run still
    # alive a minute later prints every thread's stack and exits non-zero.
    faulthandler.dump_traceback_later(60, exit=True)


def pytest_sessionfinish(session, exitstatus):
    import shutil
    if _OWN_NAMES_DIR:
        shutil.rmtree(_NAMES_DIR, ignore_errors=True)
    before = getattr(session.config, "_mpx_queues_before", None)
    after = _all_posix_queues() if before is not None else None
    if after is not None and after - before:
        sys.stderr.write(f"\nmpx tests left POSIX message queues behind: {sorted(after - before)}\n")
        session.exitstatus = 1


# --- another local user, for the cross-user (attacker) tests ---------------

class OtherUser:
    """A throwaway unprivileged user: name, uid, gid, and run()."""

    def __init__(self, name, uid, gid, names_dir):
        self.name, self.uid, self.gid, self.names_dir = name, uid, gid, names_dir

    def run(self, func, *args, timeout=60):
        """func(*args) in a forked child running as this user; its return
        value (pickled back), or its exception re-raised here."""
        import pickle
        import select
        import signal
        rfd, wfd = os.pipe()
        pid = os.fork()
        if pid == 0:                            # the attacker
            code = 1
            try:
                os.close(rfd)
                os.setgroups([])
                os.setresgid(self.gid, self.gid, self.gid)
                os.setresuid(self.uid, self.uid, self.uid)
                os.environ["MPX_NAMES_DIR"] = self.names_dir
                os.environ["HOME"] = self.names_dir
                try:
                    result = ("ok", func(*args))
                except BaseException as e:      # carried back to the test
                    result = ("raised", e)
                try:
                    data = pickle.dumps(result)
                except Exception as e:
                    data = pickle.dumps(("raised", RuntimeError(
                        f"attacker's result cannot be pickled: {e!r}")))
                with os.fdopen(wfd, "wb") as f:
                    f.write(data)
                code = 0
            finally:
                os._exit(code)
        os.close(wfd)
        chunks = []
        deadline = time.monotonic() + timeout
        try:
            while True:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([rfd], [], [], left)[0]:
                    os.kill(pid, signal.SIGKILL)
                    raise TimeoutError(f"the attacker's part did not finish in {timeout} s")
                chunk = os.read(rfd, 1 << 16)
                if not chunk:
                    break
                chunks.append(chunk)
        finally:
            os.close(rfd)
            os.waitpid(pid, 0)
        if not chunks:
            raise RuntimeError("the attacker's process died without a result")
        how, value = pickle.loads(b"".join(chunks))
        if how == "raised":
            raise value
        return value


@pytest.fixture(scope="session")
def attacker():
    import shutil
    import subprocess
    if os.geteuid() != 0:
        pytest.skip("cross-user tests need root to create a throwaway user")
    if not shutil.which("useradd") or not shutil.which("userdel"):
        pytest.skip("cross-user tests need useradd/userdel to create a throwaway user")
    import pwd
    name = f"mpxatk{os.getpid() % 100000}"
    out = subprocess.run(["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin",
                          "--user-group", name], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        pytest.skip(f"cannot create a throwaway user here: {out.stderr.strip()}")
    try:
        pw = pwd.getpwnam(name)
        names_dir = tempfile.mkdtemp(prefix="mpx-test-attacker-")
        os.chown(names_dir, pw.pw_uid, pw.pw_gid)
        try:
            yield OtherUser(name, pw.pw_uid, pw.pw_gid, names_dir)
        finally:
            shutil.rmtree(names_dir, ignore_errors=True)
    finally:
        subprocess.run(["userdel", name], capture_output=True, timeout=60)


# --- TLS for the Manager tests ---------------------------------------------

@pytest.fixture(scope="session")
def certificate(tmp_path_factory):
    """A self-signed certificate for 127.0.0.1 and its key: (cert, key) paths."""
    d = tmp_path_factory.mktemp("tls")
    cert, key = str(d / "cert.pem"), str(d / "key.pem")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes",
                    "-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=IP:127.0.0.1"],
                   check=True, capture_output=True, timeout=60)
    return cert, key


def server_context(cert, key):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert, key)
    return ctx


def client_context(cert):
    return ssl.create_default_context(cafile=cert)
