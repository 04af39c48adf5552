"""The POSIX and SysV message-queue backends: what the shared Queue contract
(test_queue_contract.py) does not cover. Named queues between unrelated
processes, PriorityQueue, large messages through side segments, the kernel's
limits, bad input, permissions, and faults (a receiver or sender killed
mid-message, a lock holder killed).

Tests that only need one process run once; tests with children run under
every start method where the start method matters.
"""

import gc
import json
import os
import pickle
import queue
import resource
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import posix_ipc
import pytest
import sysv_ipc

import mpx
from conftest import backends_for
from mpx import _names
from mpx._ext.ring import RingClosed
from mpx.backends._common import mq as _mq_common
from mpx.backends.posix import mq as posix_mq
from mpx.backends.sysv import mq as sysv_mq

BACKENDS = [b for b in ("posix", "sysv") if b in backends_for("Queue")]
if not BACKENDS:
    pytest.skip("neither the posix nor the sysv backend is available", allow_module_level=True)

MODULES = {"posix": posix_mq, "sysv": sysv_mq}
PYTHON = sys.executable
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


# --- helpers ---------------------------------------------------------------

@pytest.fixture
def name(request):
    """A fresh queue name; whatever a test leaves under it is removed."""
    n = f"mpxtest-{uuid.uuid4().hex[:12]}"
    yield n
    for each in (n, n + "-b", n + "-other"):
        for module in (posix_mq, sysv_mq):
            try:
                module.remove({"name": each})
            except Exception:
                pass


def kernel_queue_exists(backend, q_or_name, key=None):
    """Whether the kernel object behind a queue still exists (the leak
    fixture cannot see POSIX queues: /dev/mqueue is not mounted here)."""
    if backend == "posix":
        try:
            posix_ipc.MessageQueue("/" + q_or_name).close()
            return True
        except posix_ipc.ExistentialError:
            return False
    try:
        sysv_ipc.MessageQueue(key)
        return True
    except sysv_ipc.ExistentialError:
        return False


def side_segments():
    return sorted(f for f in os.listdir("/dev/shm") if f.startswith("mpx-mqside."))


def run_python(code, env_extra=None, timeout=60, check=True):
    """Run `code` in a fresh, unrelated interpreter; returns stdout."""
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.update(env_extra or {})
    proc = subprocess.run([PYTHON, "-c", textwrap.dedent(code)], capture_output=True,
                          text=True, timeout=timeout, env=env)
    if check and proc.returncode != 0:
        raise AssertionError(f"child failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}")
    return proc


def in_forked_child(fn, timeout=30):
    """Run fn() in a forked child; returns (exit code, what fn returned or the
    repr of what it raised). Used to drop privileges without exec (python
    itself is under /root, which an unprivileged user cannot enter)."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.close(r)
        code = 0
        try:
            result = ("ok", fn())
        except BaseException as e:      # report anything, never run pytest's code here
            result = ("raised", f"{type(e).__name__}: {e}")
            code = 1
        try:
            os.write(w, json.dumps(result, default=repr).encode())
        finally:
            os._exit(code)
    os.close(w)
    deadline = time.monotonic() + timeout
    while True:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        if time.monotonic() > deadline:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            raise AssertionError("forked child hung")
        time.sleep(0.01)
    with os.fdopen(r) as f:
        data = f.read()
    return os.waitstatus_to_exitcode(status), (json.loads(data) if data else None)


def become_nobody():
    os.setgroups([])
    os.setgid(65534)
    os.setuid(65534)


def open_q(backend, *args, family="Queue", **kw):
    return getattr(mpx.get_context("fork"), family)(*args, backend=backend, **kw)


# --- child process bodies (module level: spawn imports them) -----------------

def put_items(name, backend, items, family="Queue"):
    q = getattr(mpx, family)(name=name, backend=backend)
    for item in items:
        if family == "PriorityQueue":
            q.put(*item)
        else:
            q.put(item)
    q.close()


def get_and_report(q, out):
    try:
        out.put(("ok", q.get(timeout=20)))
    except BaseException as e:
        out.put(("raised", type(e).__name__, str(e)))


def hammer_bounded(name, backend, n, out):
    q = mpx.Queue(name=name, backend=backend)
    for i in range(n):
        q.put((os.getpid(), i), timeout=30)
    out.put("done")


def take_reference_and_die(name, backend):
    """Take a large message's reference out of the kernel queue, as a get()
    does first, and die before freeing its side segment."""
    q = mpx.Queue(name=name, backend=backend)
    if backend == "posix":
        q._mq.receive(1.0)
    else:
        q._mq.receive(False)
    os.kill(os.getpid(), signal.SIGKILL)


def put_huge(name, backend, size):
    q = mpx.Queue(name=name, backend=backend)
    q.put(b"h" * size)


def hold_lock_and_die(name):
    q = mpx.Queue(name=name, backend="sysv")
    q._sem.acquire()
    os.kill(os.getpid(), signal.SIGKILL)


# ---------------------------------------------------------------------------
# Named queues between unrelated processes

@pytest.mark.parametrize("backend", BACKENDS)
def test_side_segment_of_another_process_and_a_leading_slash(backend, name):
    # (The same call in an unrelated program: tests/test_backend_contracts.py.)
    q = mpx.Queue(name=name, backend=backend)
    run_python(f"""
        import mpx
        q = mpx.Queue(name={name!r}, backend={backend!r})
        q.put(b"L" * 300_000)       # a side segment made by another process
        q.close()
    """)
    assert q.get(timeout=10) == b"L" * 300_000
    assert side_segments() == []
    # A leading '/' names the same queue.
    q2 = mpx.Queue(name="/" + name, backend=backend)
    q2.put("x")
    assert q.get(timeout=5) == "x"
    q2.close()
    q.unlink()
    q.close()
    key = sysv_mq.key_for_name(name) if backend == "sysv" else None
    assert not kernel_queue_exists(backend, name, key)


@pytest.mark.parametrize("backend", BACKENDS)
def test_create_false_opens_only(backend, name):
    with pytest.raises(FileNotFoundError, match=name):
        mpx.Queue(name=name, backend=backend, create=False)
    q = mpx.Queue(name=name, backend=backend)
    q2 = mpx.Queue(name=name, backend=backend, create=False)
    q2.put(1)
    assert q.get(timeout=5) == 1
    q2.close()
    q.unlink()


@pytest.mark.parametrize("backend", BACKENDS)
def test_close_does_not_unlink_and_unlink_is_idempotent(backend, name):
    q = mpx.Queue(name=name, backend=backend)
    q.put("kept")
    q.close()
    q.close()
    with pytest.raises(ValueError, match="closed"):
        q.put(1)
    with pytest.raises(ValueError, match="closed"):
        q.get()
    q2 = mpx.Queue(name=name, backend=backend)
    assert q2.get(timeout=5) == "kept"
    q2.unlink()
    q2.unlink()
    q.unlink()
    q2.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_named_joinable_queue_between_unrelated_processes(backend, name):
    q = mpx.JoinableQueue(name=name, backend=backend)
    for i in range(10):
        q.put(i)
    assert q.join(timeout=0.1) is False
    run_python(f"""
        import mpx
        q = mpx.JoinableQueue(name={name!r}, backend={backend!r})
        for _ in range(10):
            q.get(timeout=10)
            q.task_done()
    """)
    assert q.join(timeout=10) is True
    with pytest.raises(ValueError, match="too many"):
        q.task_done()
    q.unlink()
    q.close()


# ---------------------------------------------------------------------------
# PriorityQueue

@pytest.mark.parametrize("backend", BACKENDS)
def test_priority_order_is_the_same_on_both_backends(backend):
    q = open_q(backend, family="PriorityQueue")
    puts = [("a", 1), ("b", 5), ("c", 1), ("d", 32767), ("e", 0), ("f", 5), ("g", 0)]
    for item, prio in puts:
        q.put(item, prio)
    got = [q.get_with_priority(timeout=5) for _ in puts]
    assert got == [("d", 32767), ("b", 5), ("f", 5), ("a", 1), ("c", 1), ("e", 0), ("g", 0)]
    q.put("big", priority=7, timeout=5)
    q.put(b"B" * 200_000, priority=9)          # a side segment keeps its priority
    assert q.get(timeout=5) == b"B" * 200_000
    assert q.get(timeout=5) == "big"
    q.put_many(["x", "y"], priority=3)
    q.put_nowait("z", 4)
    assert q.get_many(max_items=5, timeout=5) == ["z", "x", "y"]
    with pytest.raises(queue.Empty):
        q.get_with_priority(timeout=0.05)
    assert (q.PRIORITY_MIN, q.PRIORITY_MAX) == (0, 32767)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad", [-1, 32768, 1.5, "3", None, True, 10**20])
def test_bad_priority_is_a_value_error_and_nothing_is_put(backend, bad):
    q = open_q(backend, family="PriorityQueue")
    with pytest.raises(ValueError, match="priorit"):
        q.put("item", bad)
    with pytest.raises(ValueError, match="priorit"):
        q.put_many(["item"], priority=bad)
    assert q.qsize() == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_numpy_integer_priorities_are_accepted(backend):
    np = pytest.importorskip("numpy")
    q = open_q(backend, family="PriorityQueue")
    q.put("low", np.int64(1))
    q.put("high", np.uint16(2))
    assert q.get_with_priority(timeout=5) == ("high", 2)


@pytest.mark.parametrize("backend", BACKENDS)
def test_named_priority_queue_from_an_unrelated_process(backend, name):
    q = mpx.PriorityQueue(name=name, backend=backend)
    run_python(f"""
        import mpx
        q = mpx.PriorityQueue(name={name!r}, backend={backend!r})
        for item, prio in [("low", 1), ("high", 9), ("mid", 5), ("high2", 9)]:
            q.put(item, prio)
    """)
    assert [q.get(timeout=5) for _ in range(4)] == ["high", "high2", "mid", "low"]
    q.unlink()


# ---------------------------------------------------------------------------
# Anonymous queues

@pytest.mark.parametrize("backend", BACKENDS)
def test_anonymous_queue_is_removed_when_its_creator_drops_it(backend):
    q = open_q(backend)
    qname, key = q.name, getattr(q._res, "key", None)
    q.put(b"z" * 100_000)           # an undelivered large message too
    assert kernel_queue_exists(backend, qname, key)
    del q
    gc.collect()
    assert not kernel_queue_exists(backend, qname, key)
    assert side_segments() == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_anonymous_queue_is_removed_at_exit(backend):
    out = run_python(f"""
        import mpx
        q = mpx.Queue(backend={backend!r})
        q.put(b"y" * 100_000)
        print(q.name, getattr(q._res, "key", None))
    """).stdout.split()
    key = None if out[1] == "None" else int(out[1])
    assert not kernel_queue_exists(backend, out[0], key)
    assert side_segments() == []


def _drop_forked_copy(q):
    del q
    gc.collect()
    return "dropped"


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_forked_childs_copy_never_removes_the_queue(backend):
    q = open_q(backend)
    code, result = in_forked_child(lambda: _drop_forked_copy(q))
    assert code == 0, result
    q.put("still here")
    assert q.get(timeout=5) == "still here"


@pytest.mark.parametrize("backend", BACKENDS)
def test_anonymous_queue_goes_to_a_child_at_start(ctx, backend):
    q = ctx.Queue(backend=backend)
    out = ctx.stdlib_context().Queue()
    p = ctx.Process(target=get_and_report, args=(q, out))
    p.start()
    q.put({"k": [1, 2]})
    assert out.get(timeout=30) == ("ok", {"k": [1, 2]})
    p.join(30)
    assert p.exitcode == 0


# ---------------------------------------------------------------------------
# Large messages and side segments

@pytest.mark.parametrize("backend", BACKENDS)
def test_messages_around_the_kernel_limit(backend):
    q = open_q(backend, maxsize=5)
    limit = q._limit
    sizes = [0, 1, limit - 40, limit - 20, limit, limit + 1, 3 * limit, 2_000_000]
    for size in sizes:
        q.put(b"s" * size, timeout=10)
        assert q.get(timeout=10) == b"s" * size
    assert side_segments() == []


@pytest.mark.parametrize("backend", BACKENDS)
def test_receiver_killed_with_a_side_segment_in_flight(backend, name):
    q = mpx.Queue(name=name, backend=backend)
    q.put(b"big" * 100_000)
    q.put("small")
    q.put(b"second big" * 50_000)
    p = mpx.get_context("fork").Process(target=take_reference_and_die, args=(name, backend))
    p.start()
    p.join(30)
    assert p.exitcode == -signal.SIGKILL
    orphans = side_segments()
    assert len(orphans) == 2            # the taken one, and the one still queued
    # The other messages are intact.
    assert q.get(timeout=5) == "small"
    assert q.get(timeout=5) == b"second big" * 50_000
    assert len(side_segments()) == 1
    q.unlink()                          # reclaims the orphan
    assert side_segments() == []
    q.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_mpx_rm_reclaims_an_orphaned_side_segment(backend, name):
    q = mpx.Queue(name=name, backend=backend)
    q._side.put(b"x" * 100_000)         # a sender died between writing and sending
    q.put("intact")
    assert len(side_segments()) == 1
    assert q.get(timeout=5) == "intact"
    with pytest.raises(queue.Empty):    # no half message is visible
        q.get(timeout=0.1)
    env = {"MPX_NAMES_DIR": _names.names_dir()}
    proc = subprocess.run([PYTHON, "-m", "mpx", "rm", name], capture_output=True, text=True,
                          env=dict(os.environ, **env), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert side_segments() == []
    q.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_sender_killed_mid_put_leaves_no_half_message(backend, name):
    q = mpx.Queue(name=name, backend=backend)
    ctx = mpx.get_context("fork")
    size = 30_000_000
    for delay in (0.0, 0.005, 0.02, 0.05):
        p = ctx.Process(target=put_huge, args=(name, backend, size))
        p.start()
        time.sleep(delay)
        p.kill()
        p.join(30)
        try:
            data = q.get(timeout=0.2)
        except queue.Empty:
            continue
        assert data == b"h" * size      # all of it, or nothing
    with pytest.raises(queue.Empty):
        q.get(timeout=0.1)
    q.unlink()
    assert side_segments() == []
    q.close()


# ---------------------------------------------------------------------------
# Limits

@pytest.mark.parametrize("backend", BACKENDS)
def test_maxsize_is_exact_with_concurrent_producers(backend, name):
    q = mpx.Queue(3, name=name, backend=backend)
    ctx = mpx.get_context("fork")
    out = ctx.stdlib_context().Queue()
    procs = [ctx.Process(target=hammer_bounded, args=(name, backend, 40, out)) for _ in range(3)]
    for p in procs:
        p.start()
    seen = []
    deadline = time.monotonic() + 60
    while len(seen) < 120 and time.monotonic() < deadline:
        assert q.qsize() <= 3
        seen.append(q.get(timeout=30))
        if len(seen) % 10 == 0:
            time.sleep(0.01)            # let the producers fill it up
    for p in procs:
        p.join(30)
    assert sorted(seen) == sorted((p.pid, i) for p in procs for i in range(40))
    q.unlink()


def test_sysv_lock_holder_killed_does_not_wedge_the_queue(name):
    q = mpx.Queue(2, name=name, backend="sysv")
    p = mpx.get_context("fork").Process(target=hold_lock_and_die, args=(name,))
    p.start()
    p.join(30)
    t = time.monotonic()
    q.put("after", timeout=5)           # SEM_UNDO gave the lock back
    assert time.monotonic() - t < 2
    assert q.get(timeout=5) == "after"
    q.unlink()


def test_posix_unbounded_means_the_kernels_msg_max(name):
    msg_max = posix_mq.system_limits()[0]
    q = mpx.Queue(name=name, backend="posix")
    for i in range(msg_max):
        q.put_nowait(i)
    assert q.full() and q.qsize() == msg_max
    with pytest.raises(queue.Full):
        q.put_nowait("one too many")
    assert q.get() == 0
    q.unlink()


def _create_posix(maxsize=0, msgsize=None, name=None):
    q = mpx.Queue(maxsize, name=name, backend="posix", msgsize=msgsize)
    q.unlink()
    return "created"


@pytest.mark.parametrize("maxsize,msgsize,limit", [
    (1000, None, "msg_max"), (None, 1 << 20, "msgsize_max")])
def test_posix_limit_error_for_an_unprivileged_user(maxsize, msgsize, limit, name):
    # An unprivileged user (no CAP_SYS_RESOURCE), whatever this test runs as.
    def child():
        become_nobody()
        return _create_posix(maxsize or 0, msgsize, name)
    code, result = in_forked_child(child)
    assert code == 1 and result[0] == "raised", result
    message = result[1]
    assert message.startswith("ValueError")
    assert f"/proc/sys/fs/mqueue/{limit}" in message and "sysctl" in message
    assert "Invalid parameter" not in message
    assert not [f for f in os.listdir("/dev/shm") if name in f]


def test_posix_rlimit_msgqueue_error_names_the_limit(name):
    def child():
        resource.setrlimit(resource.RLIMIT_MSGQUEUE, (1000, 1000))
        return _create_posix(name=name)
    code, result = in_forked_child(child)
    assert code == 1, result
    assert "RLIMIT_MSGQUEUE" in result[1] and "ulimit -q" in result[1]
    assert not [f for f in os.listdir("/dev/shm") if name in f]


def test_sysv_capacity_beyond_msgmnb_error_for_an_unprivileged_user(name):
    def child():
        become_nobody()
        q = mpx.Queue(name=name, backend="sysv", capacity=10 * sysv_mq.system_limits()[1])
        q.unlink()
    code, result = in_forked_child(child)
    assert code == 1, result
    assert "kernel.msgmnb" in result[1] and "CAP_SYS_RESOURCE" in result[1]
    assert not kernel_queue_exists("sysv", name, sysv_mq.key_for_name(name))


def test_sysv_msgsize_beyond_msgmax_is_refused():
    msgmax = sysv_mq.system_limits()[0]
    with pytest.raises(ValueError, match="kernel.msgmax"):
        open_q("sysv", msgsize=msgmax + 1)


@pytest.mark.parametrize("backend", BACKENDS)
def test_reopening_with_other_limits_names_both(backend, name):
    q = mpx.Queue(4, name=name, backend=backend, msgsize=1024)
    with pytest.raises(ValueError, match=r"maxsize=4.*msgsize=1024.*asked for maxsize=5"):
        mpx.Queue(5, name=name, backend=backend)
    with pytest.raises(ValueError, match=r"asked for msgsize=2048"):
        mpx.Queue(name=name, backend=backend, msgsize=2048)
    same = mpx.Queue(4, name=name, backend=backend, msgsize=1024)    # the same limits: fine
    other = mpx.Queue(name=name, backend=backend)                   # no limits given: fine
    assert other.maxsize == 4
    with pytest.raises(ValueError, match="exists as a Queue.*cannot be opened as a PriorityQueue"):
        mpx.PriorityQueue(name=name, backend=backend)
    with pytest.raises(ValueError, match="cannot be opened as a JoinableQueue"):
        mpx.JoinableQueue(name=name, backend=backend)
    q.put("intact")
    assert other.get(timeout=5) == "intact"
    for x in (same, other):
        x.close()
    q.unlink()


# ---------------------------------------------------------------------------
# Names, keys and foreign objects

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad,rule", [
    ("", "empty"), ("/", "empty"), ("a/b", "'/' after its first"), ("//a", "'/' after"),
    ("x" * 201, "bytes long"), ("é" * 101, "bytes long"), ("a\0b", "NUL"), ("..", "not allowed")])
def test_bad_names_are_value_errors_saying_the_rule(backend, bad, rule):
    with pytest.raises(ValueError, match=rule) as info:
        mpx.Queue(name=bad, backend=backend)
    assert "1 to 200 bytes" in str(info.value)


@pytest.mark.parametrize("backend", BACKENDS)
def test_non_string_name_is_a_type_error(backend):
    with pytest.raises(TypeError, match="name must be a str"):
        mpx.Queue(name=b"bytes", backend=backend)


def test_longest_name_works(name):
    long_name = name + "x" * (200 - len(name))
    for backend in BACKENDS:
        q = mpx.Queue(name=long_name, backend=backend)
        q.put(b"L" * 50_000)            # side-segment names stay short (hashed)
        assert q.get(timeout=5) == b"L" * 50_000
        q.unlink()


def test_sysv_key_is_documented_hash():
    import hashlib
    digest = hashlib.blake2b(b"mpx-sysv:jobs", digest_size=4).digest()
    assert sysv_mq.key_for_name("jobs") == int.from_bytes(digest, "big") & 0x7FFFFFFF
    assert sysv_mq.key_for_name("/jobs") == sysv_mq.key_for_name("jobs")


def test_sysv_key_collision_is_refused(name, monkeypatch):
    first = mpx.Queue(name=name, backend="sysv")
    other = name + "-other"
    monkeypatch.setattr(sysv_mq, "key_for_name", lambda n: first._res.key)
    with pytest.raises(ValueError, match=f"{other!r}.*{name!r}"):
        mpx.Queue(name=other, backend="sysv")
    first.put("untouched")
    assert first.get(timeout=5) == "untouched"
    monkeypatch.undo()
    first.unlink()


# (A foreign queue or segment under the name is refused, for every backend:
# tests/test_backend_contracts.py. Here: the posix refusal leaves no side
# store behind.)

def test_posix_refusing_a_foreign_queue_creates_nothing(name):
    foreign = posix_ipc.MessageQueue("/" + name, posix_ipc.O_CREX, 0o600, 2, 128)
    try:
        with pytest.raises(ValueError, match="not an mpx queue"):
            mpx.Queue(name=name, backend="posix")
        assert not os.path.exists(f"/dev/shm/mpx-mq.{name}")
    finally:
        foreign.unlink()
        foreign.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_another_layout_version_is_refused(backend, name):
    q = mpx.Queue(name=name, backend=backend)
    q._tag.view[8:12] = (99).to_bytes(4, "little")      # the layout version word
    with pytest.raises(ValueError, match="layout version 99"):
        mpx.Queue(name=name, backend=backend)
    q._tag.view[8:12] = (_mq_common.LAYOUT_VERSION).to_bytes(4, "little")
    mpx.Queue(name=name, backend=backend).close()
    q.unlink()


@pytest.mark.parametrize("backend", BACKENDS)
def test_half_created_queue_is_reported_and_rm_removes_it(backend, name, monkeypatch):
    module = MODULES[backend]
    monkeypatch.setattr(module, "OPEN_WAIT", 0.2)
    # A creator that died right after making the tag.
    if backend == "posix":
        fd = os.open(f"/dev/shm/mpx-mq.{name}", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
        os.ftruncate(fd, _mq_common.TAG_SIZE)
        os.close(fd)
        key = None
    else:
        key = sysv_mq.key_for_name(name)
        shm = sysv_ipc.SharedMemory(key, sysv_ipc.IPC_CREX, 0o600, _mq_common.TAG_SIZE, b"\0")
        shm.detach()
    with pytest.raises(RuntimeError, match="half-created.*mpx rm"):
        mpx.Queue(name=name, backend=backend)
    # The opener recorded it, so `mpx rm` finds it.
    proc = subprocess.run([PYTHON, "-m", "mpx", "rm", name], capture_output=True, text=True,
                          env=dict(os.environ, MPX_NAMES_DIR=_names.names_dir()), timeout=60)
    assert proc.returncode == 0, proc.stderr
    q = mpx.Queue(name=name, backend=backend)      # usable again
    q.unlink()


@pytest.mark.parametrize("backend", BACKENDS)
def test_creator_killed_after_the_tag_header(backend, name, monkeypatch):
    module = MODULES[backend]
    monkeypatch.setattr(module, "OPEN_WAIT", 0.2)
    # The creator wrote the header (and its record), then died before
    # making the kernel queue.
    monkeypatch.setattr(_mq_common.Tag, "publish", lambda self: os._exit(0))
    pid = os.fork()
    if pid == 0:
        try:
            mpx.Queue(name=name, backend=backend)
        finally:
            os._exit(1)
    assert os.waitpid(pid, 0)[1] == 0
    monkeypatch.undo()
    monkeypatch.setattr(module, "OPEN_WAIT", 0.2)
    with pytest.raises(RuntimeError, match="half-created"):
        mpx.Queue(name=name, backend=backend)
    entries = [e for e in _names.entries() if e["name"] == name]
    assert entries
    module.remove(entries[0])
    assert not [e for e in _names.entries() if e["name"] == name]
    key = sysv_mq.key_for_name(name) if backend == "sysv" else None
    assert not kernel_queue_exists(backend, name, key)
    assert not [f for f in os.listdir("/dev/shm") if name in f]


# ---------------------------------------------------------------------------
# Permissions and modes

@pytest.mark.parametrize("backend", BACKENDS)
def test_permission_denied_is_a_permission_error_naming_the_queue(backend, name):
    q = mpx.Queue(name=name, backend=backend)

    def child():
        become_nobody()
        mpx.Queue(name=name, backend=backend)
    code, result = in_forked_child(child)
    assert code == 1
    assert result[1].startswith("PermissionError") and name in result[1], result
    q.put("unharmed")
    assert q.get(timeout=5) == "unharmed"
    q.unlink()


@pytest.mark.parametrize("backend", BACKENDS)
def test_mode_lets_another_user_in(backend, name):
    # Both sides say so: the creator with the mode it creates, the other
    # user with the mode it accepts (see mpx._trust).
    q = mpx.Queue(name=name, backend=backend, mode=0o666)

    def child():
        become_nobody()
        other = mpx.Queue(name=name, backend=backend, mode=0o666)
        other.put("from nobody")
        other.put(b"N" * 100_000)
        return "ok"
    code, result = in_forked_child(child)
    assert code == 0, result
    assert q.get(timeout=5) == "from nobody"
    assert q.get(timeout=5) == b"N" * 100_000
    q.unlink()


@pytest.mark.parametrize("backend", BACKENDS)
def test_named_objects_are_0600_by_default_whatever_the_umask(backend, name):
    old = os.umask(0o077)
    try:
        q = mpx.Queue(name=name, backend=backend)
        q2 = mpx.Queue(name=name + "-b", backend=backend, mode=0o660)
    finally:
        os.umask(old)
    try:
        for obj, want in ((q, 0o600), (q2, 0o660)):
            if backend == "posix":
                assert os.stat(f"/dev/shm/mpx-mq.{obj.name}").st_mode & 0o777 == want
                assert os.fstat(obj._mq.mqd).st_mode & 0o777 == want
            else:
                assert obj._mq.mode & 0o777 == want
                assert obj._res.shm.mode & 0o777 == want
            assert obj._side.mode == want
    finally:
        q.unlink()
        q2.unlink()


def test_bad_mode_and_limits():
    with pytest.raises(ValueError, match="mode"):
        open_q("posix", mode=0o1777)
    with pytest.raises(TypeError, match="mode"):
        open_q("sysv", mode="rw")
    with pytest.raises(ValueError, match="maxsize"):
        open_q("posix", -1)
    with pytest.raises(ValueError, match="msgsize must be at least"):
        open_q("sysv", msgsize=10)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", [0o400, 0o000, 0o444, 0o200, 0o066])
def test_a_mode_the_owner_cannot_read_and_write_is_a_value_error_at_once(backend, mode, name):
    # ValueError before anything exists (the leak check sees no tag or
    # id). SysV used to attach such a tag read-only and crash writing its
    # header, leaving the segment behind.
    with pytest.raises(ValueError, match="owner read and write"):
        mpx.Queue(name=name, backend=backend, mode=mode)
    with pytest.raises(ValueError, match="owner read and write"):
        open_q(backend, mode=mode)


def put_from_child(q):
    q.put("from the child")


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_child_accepts_the_shared_queue_its_parent_opened(ctx, backend, name):
    # The opener's mode= travels with the queue: a spawned child accepts
    # the 0o660 queue its parent opened with mode=0o660 (with the default
    # 0o600 it would refuse it as too open).
    q = mpx.Queue(name=name, backend=backend, mode=0o660)
    p = ctx.Process(target=put_from_child, args=(q,))
    p.start()
    assert q.get(timeout=30) == "from the child"
    p.join(30)
    assert p.exitcode == 0
    q.unlink()


# ---------------------------------------------------------------------------
# Waiting: timeouts, signals, no busy loop

@pytest.mark.parametrize("backend", BACKENDS)
def test_timed_get_sleeps_instead_of_spinning(backend):
    q = open_q(backend)
    cpu = time.process_time()
    t = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.5)
    assert 0.45 < time.monotonic() - t < 5
    assert time.process_time() - cpu < 0.1


@pytest.mark.parametrize("backend", BACKENDS)
def test_timed_get_wakes_up_at_once(backend):
    q = open_q(backend)
    delays = []
    for _ in range(5):
        t0 = []
        timer = threading.Timer(0.05, lambda: (t0.append(time.monotonic()), q.put("now")))
        timer.start()
        assert q.get(timeout=10) == "now"
        delays.append(time.monotonic() - t0[0])
        timer.join()
    assert min(delays) < 0.02, delays    # woken, not found by a 50 ms poll


@pytest.mark.parametrize("backend", BACKENDS)
def test_timed_put_on_a_full_queue_wakes_when_room_appears(backend):
    q = open_q(backend, 1)
    q.put("first")
    timer = threading.Timer(0.1, q.get)
    timer.start()
    t = time.monotonic()
    q.put("second", timeout=10)
    assert time.monotonic() - t < 5
    timer.join()
    assert q.get(timeout=5) == "second"


class _Alarm(Exception):
    pass


def _raise_alarm(signum, frame):
    raise _Alarm()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call", ["get", "get_timeout", "put_full"])
def test_a_signal_handlers_exception_interrupts_a_wait(backend, call):
    # posix_ipc discards such exceptions inside its own blocking calls; mpx
    # must not wait there.
    q = open_q(backend, 1)
    if call == "put_full":
        q.put("fill")
    old = signal.signal(signal.SIGALRM, _raise_alarm)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.2)
        t = time.monotonic()
        with pytest.raises(_Alarm):
            if call == "get":
                q.get()
            elif call == "get_timeout":
                q.get(timeout=20)
            else:
                q.put("blocked")
        assert time.monotonic() - t < 5
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    if call == "put_full":
        assert q.get_nowait() == "fill"
    with pytest.raises(queue.Empty):
        q.get_nowait()


@pytest.mark.parametrize("backend", BACKENDS)
def test_eintr_from_a_harmless_signal_is_retried(backend):
    q = open_q(backend)
    old = signal.signal(signal.SIGALRM, lambda *a: None)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.05, 0.05)
        threading.Timer(0.4, lambda: q.put("done")).start()
        assert q.get() == "done"
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def _blocked_until_closed(q, call):
    """Run `call` in a thread, close `q` from here once it waits; returns
    (whether the thread still waits, what it raised, seconds after close)."""
    errors = []

    def run():
        try:
            call()
        except BaseException as e:
            errors.append(e)
    th = threading.Thread(target=run, daemon=True)
    th.start()
    time.sleep(0.2)
    t0 = time.monotonic()
    q.close()
    th.join(10)
    return th.is_alive(), errors, time.monotonic() - t0


BLOCKING_CALLS = {
    # call: (family, prepare(q), the blocking call(q)); timeouts of 30 s
    # stand for "until something happens".
    "get": ("Queue", None, lambda q: q.get()),
    "get-timeout": ("Queue", None, lambda q: q.get(timeout=30)),
    "get_many": ("Queue", None, lambda q: q.get_many(timeout=30)),
    "put-full": ("Queue", lambda q: q.put(0), lambda q: q.put(1)),
    "put-full-timeout": ("Queue", lambda q: q.put(0), lambda q: q.put(1, timeout=30)),
    "put-large-full": ("Queue", lambda q: q.put(0), lambda q: q.put(b"L" * 50_000)),
    "put_many-full": ("Queue", lambda q: q.put(0), lambda q: q.put_many([1, 2])),
    "priority-get": ("PriorityQueue", None, lambda q: q.get_with_priority()),
    "join": ("JoinableQueue", lambda q: q.put(0), lambda q: q.join()),
    "join-timeout": ("JoinableQueue", lambda q: q.put(0), lambda q: q.join(timeout=30)),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call", list(BLOCKING_CALLS))
def test_close_wakes_a_call_blocked_in_another_thread(backend, call):
    # The blocked call raises RingClosed, what a blocked call of an shm
    # queue raises when another thread closes it: an OSError and a
    # ValueError (like a closed queue's). Well before its own timeout; no
    # side segment is left behind.
    family, prepare, blocking = BLOCKING_CALLS[call]
    q = open_q(backend, 1, family=family)
    if prepare is not None:
        prepare(q)
    alive, errors, took = _blocked_until_closed(q, lambda: blocking(q))
    assert not alive, f"{call} still blocked after close()"
    assert len(errors) == 1 and isinstance(errors[0], RingClosed), errors
    assert isinstance(errors[0], OSError) and isinstance(errors[0], ValueError)
    assert "closed" in str(errors[0])
    assert took < 5
    with pytest.raises(ValueError, match="closed"):
        blocking(q)                         # and any later call: the closed-queue error
    del q
    gc.collect()
    assert not side_segments()


NAN = float("nan")
NAN_CALLS = {
    # call: (family, prepare(q), call(q)); on an empty queue for a get and a
    # full one for a put, so a NaN that slipped through would wait.
    "get": ("Queue", None, lambda q: q.get(timeout=NAN)),
    "get-block-false": ("Queue", None, lambda q: q.get(False, NAN)),
    "get_many": ("Queue", None, lambda q: q.get_many(timeout=NAN)),
    "put": ("Queue", lambda q: q.put(0), lambda q: q.put(1, timeout=NAN)),
    "put_many": ("Queue", lambda q: q.put(0), lambda q: q.put_many([1], timeout=NAN)),
    "priority-put": ("PriorityQueue", lambda q: q.put(0),
                     lambda q: q.put(1, priority=3, timeout=NAN)),
    "priority-get": ("PriorityQueue", None, lambda q: q.get_with_priority(timeout=NAN)),
    "join": ("JoinableQueue", lambda q: q.put(0), lambda q: q.join(timeout=NAN)),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("call", list(NAN_CALLS))
def test_nan_timeout_is_a_value_error_at_once(backend, call):
    # ValueError naming the timeout, before any wait (SysV used to wait for
    # ever, spinning; POSIX raised "cannot convert float NaN to integer").
    family, prepare, bad = NAN_CALLS[call]
    q = open_q(backend, 1, family=family)
    if prepare is not None:
        prepare(q)
    if call == "get-block-false":
        # block=False never waits, whatever the timeout says (as the stdlib).
        with pytest.raises(queue.Empty):
            bad(q)
        return
    with pytest.raises(ValueError, match="timeout.*NaN"):
        bad(q)
    with pytest.raises(TypeError, match="timeout"):
        q.get(timeout="1")


@pytest.mark.parametrize("backend", BACKENDS)
def test_an_infinite_timeout_waits_for_ever(backend):
    inf = float("inf")
    q = open_q(backend, 1)
    timer = threading.Timer(0.2, lambda: q.put("late"))
    timer.start()
    assert q.get(timeout=inf) == "late"
    timer.join()
    q.put("now", timeout=inf)
    timer = threading.Timer(0.2, q.get)
    timer.start()
    q.put("after room appeared", timeout=inf)      # full until the timer's get
    timer.join()
    assert q.get(True, 1e300) == "after room appeared"
    assert q.get_many(timeout=inf) if q.put("m") is None else False
    jq = open_q(backend, family="JoinableQueue")
    assert jq.join(timeout=inf) is True


def test_sysv_queue_removed_under_a_waiting_getter(name):
    q = mpx.Queue(name=name, backend="sysv")
    ctx = mpx.get_context("fork")
    out = ctx.stdlib_context().Queue()
    p = ctx.Process(target=get_and_report, args=(q, out))
    p.start()
    time.sleep(0.3)
    q.unlink()
    result = out.get(timeout=30)
    p.join(30)
    assert result[0] == "raised" and result[1] == "OSError" and "removed" in result[2], result


# ---------------------------------------------------------------------------
# Errors leave the queue as it was

@pytest.mark.parametrize("backend", BACKENDS)
def test_failed_puts_change_nothing(backend):
    q = open_q(backend, 2)
    q.put("a")
    with pytest.raises(TypeError):
        q.put(threading.Lock())
    with pytest.raises(TypeError):
        q.put_many(["b", threading.Lock()])
    q.put("b")
    with pytest.raises(queue.Full) as info:
        q.put_many(["c", b"D" * 100_000], timeout=0.1)
    assert info.value.put_count == 0
    assert side_segments() == []        # the unsent large message's segment is gone
    assert [q.get(timeout=5), q.get(timeout=5)] == ["a", "b"]
    q.put_many(["c", b"D" * 100_000], timeout=5)
    with pytest.raises(queue.Full) as info:
        q.put_many(["e", "f"], block=False)
    assert info.value.put_count == 0
    assert q.get_many(timeout=5) == ["c", b"D" * 100_000]
    with pytest.raises(queue.Empty):
        q.get(timeout=-1)                 # a negative timeout does not wait
    with pytest.raises(ValueError, match="max_items"):
        q.get_many(max_items=0)


@pytest.mark.parametrize("backend", BACKENDS)
def test_joinable_counts_survive_a_failed_put(backend):
    q = open_q(backend, 1, family="JoinableQueue")
    q.put(1)
    with pytest.raises(queue.Full):
        q.put(2, timeout=0.05)
    with pytest.raises(queue.Full):
        q.put_many([3, 4], block=False)
    q.get(timeout=5)
    q.task_done()
    assert q.join(timeout=5) is True


class JsonBytes:
    """A serializer that is not pickle: its output never starts with 0x80."""

    @staticmethod
    def dumps(obj):
        return json.dumps(obj).encode()

    @staticmethod
    def loads(data):
        return json.loads(bytes(data))


class TextOnly:
    """A serializer that speaks str both ways (its loads refuses bytes)."""

    dumps = staticmethod(json.dumps)

    @staticmethod
    def loads(text):
        if not isinstance(text, str):
            raise TypeError("text only")
        return json.loads(text)


class ReturnsInt:
    dumps = staticmethod(len)
    loads = staticmethod(int)


@pytest.mark.parametrize("backend", BACKENDS)
def test_custom_serializer(backend):
    bad = open_q(backend, serializer=ReturnsInt())
    with pytest.raises(TypeError, match="returned int, not bytes or str"):
        bad.put("abc")
    for text in (json, TextOnly()):               # str travels as UTF-8, inline or aside
        tq = open_q(backend, serializer=text)
        tq.put({"a": "\u00e9"})
        tq.put({"big": "y" * 100_000})
        assert tq.get(timeout=5) == {"a": "\u00e9"}
        assert tq.get(timeout=5) == {"big": "y" * 100_000}
    q = open_q(backend, serializer=JsonBytes())
    q.put({"a": [1, 2]})
    q.put({"big": "x" * 100_000})
    assert q.get(timeout=5) == {"a": [1, 2]}
    assert q.get(timeout=5) == {"big": "x" * 100_000}


def first_byte_on_the_wire(q, obj, **put_kw):
    """Put `obj`, take the raw kernel message back, and return its first
    byte and the object it decodes to."""
    q.put(obj, **put_kw)
    msg = q._mrecv()[0]
    return msg[0], q._decode(msg)


@pytest.mark.parametrize("backend", BACKENDS)
def test_small_builtin_values_travel_compact_the_rest_pickled(backend):
    # With the pickle serializers a small value made only of exact builtins
    # is a COMPACT frame (0x02); anything else is pickled (0x80), and past
    # the kernel's message size it goes to a side segment (0x01).
    q = open_q(backend)
    for value in [(12345, "payload", 3.14), None, True, -0.0, 2 ** 63 - 1,
                  {"k": [1, b"b", ("t",)]}, "\u00e9" * 10, b"x" * 1000]:
        for kw in ({}, {"timeout": 5}):      # the fast path and the general one
            first, back = first_byte_on_the_wire(q, value, **kw)
            assert first == 0x02 and back == value and type(back) is type(value)
    shared = [1]
    for value in [2 ** 64, [shared, shared], queue.Empty(), {1: frozenset()}]:
        first, back = first_byte_on_the_wire(q, value)
        assert first == 0x80, value
    assert back == {1: frozenset()}
    first, back = first_byte_on_the_wire(q, [shared, shared])
    assert back[0] is back[1]            # pickle keeps the sharing
    first, back = first_byte_on_the_wire(q, list(range(3000)))   # > 8 KiB either way
    assert first == 0x01 and back == list(range(3000))
    q.put_many([(1, "a"), 2 ** 64])
    assert q.get_many(timeout=5) == [(1, "a"), 2 ** 64]
    custom = open_q(backend, serializer=JsonBytes())
    first, back = first_byte_on_the_wire(custom, (1, "a"))
    assert first == 0x00 and back == [1, "a"]    # never COMPACT: JSON's own answer


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_compact_message_reads_under_any_serializer_and_damage_raises(backend, name):
    writer = open_q(backend, name=name)
    reader = open_q(backend, name=name, serializer=JsonBytes())
    writer.put((1, "a"))
    assert reader.get(timeout=5) == (1, "a")     # decoded as written, not as JSON
    writer._msend(b"\x02t\xff\xff\xff\x7f")   # a tuple claiming 2**31-1 items
    with pytest.raises(ValueError):
        reader.get(timeout=5)
    writer.put("after")
    assert reader.get(timeout=5) == "after"
    writer.unlink()


@pytest.mark.parametrize("backend", BACKENDS)
def test_repr_and_compatibility_no_ops(backend):
    q = open_q(backend)
    assert backend in repr(q) and "anonymous" in repr(q)
    q.join_thread()
    q.cancel_join_thread()
    with q:
        q.put(1)
        assert q.get(timeout=5) == 1
    assert "closed" in repr(q)
    original = open_q(backend)
    copy = pickle.loads(pickle.dumps(original))
    copy.put("via the copy")
    assert original.get(timeout=5) == "via the copy"
    copy.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_queue_travels_through_another_queue(backend):
    carrier = open_q(backend)
    inner = open_q(backend)
    carrier.put(inner)
    copy = carrier.get(timeout=5)
    copy.put("through the copy")
    assert inner.get(timeout=5) == "through the copy"
    copy.close()


# ---------------------------------------------------------------------------
# Random SIGKILLs

def producer_loop(name, backend, start, committed):
    q = mpx.Queue(name=name, backend=backend)
    i = start
    while True:
        payload = b"P" * 60_000 if i % 5 == 0 else b""     # every fifth through a side segment
        q.put((start, i, payload), timeout=30)
        committed.value = i                 # put() returned: this one must arrive
        i += 1


def consumer_loop(name, backend, log):
    # Reports by appending to a file: one small O_APPEND write is atomic, and
    # unlike a multiprocessing queue it has no lock a killed consumer could
    # leave held.
    q = mpx.Queue(name=name, backend=backend)
    fd = os.open(log, os.O_WRONLY | os.O_APPEND)
    while True:
        start, i, payload = q.get(timeout=30)
        os.write(fd, f"{start} {i} {len(payload)}\n".encode())


@pytest.mark.parametrize("backend", BACKENDS)
def test_random_sigkills_lose_nothing_committed_and_duplicate_nothing(backend, name, request,
                                                                     tmp_path):
    import random
    rounds = 60 if request.config.getoption("--soak") else 12
    rng = random.Random(1234)
    ctx = mpx.get_context("fork")
    log = str(tmp_path / "delivered")
    open(log, "w").close()
    q = mpx.Queue(4, name=name, backend=backend)
    committed_max = {}
    consumer_kills = 0
    consumer = ctx.Process(target=consumer_loop, args=(name, backend, log))
    consumer.start()
    try:
        for r in range(rounds):
            start = r * 100_000
            committed = ctx.Value("q", start - 1, lock=False)
            p = ctx.Process(target=producer_loop, args=(name, backend, start, committed))
            p.start()
            time.sleep(rng.uniform(0.01, 0.08))
            p.kill()
            p.join(30)
            committed_max[start] = committed.value
            if r % 4 == 3:                  # now and then kill the consumer too
                consumer.kill()
                consumer.join(30)
                consumer_kills += 1
                consumer = ctx.Process(target=consumer_loop, args=(name, backend, log))
                consumer.start()
        # Let the consumer drain the queue, then stop it.
        deadline = time.monotonic() + 30
        size = -1
        while time.monotonic() < deadline:
            time.sleep(0.1)
            now = os.path.getsize(log)
            if q.qsize() == 0 and now == size:
                break
            size = now
    finally:
        consumer.kill()
        consumer.join(30)
    got = [tuple(map(int, line.split())) for line in open(log)]
    keys = [(s, i) for s, i, _ in got]
    assert len(keys) == len(set(keys)), "a message was delivered twice"
    for s, i, size in got:
        assert size == (60_000 if i % 5 == 0 else 0)
    delivered = set(keys)
    missing = [(s, i) for s, last in committed_max.items() for i in range(s, last + 1)
               if (s, i) not in delivered]
    # Only a killed consumer's own in-flight message may be lost.
    assert len(missing) <= consumer_kills, missing
    assert sum(last - s + 1 for s, last in committed_max.items()) > 100    # it did run
    q.unlink()
    q.close()
    assert side_segments() == []
