"""The shm backend's Queue, SimpleQueue and JoinableQueue.

The shared contract (tests/test_queue_contract.py) covers the basic API over
every backend; this file covers what the shm backend adds or must get right
on its own: the stdlib as oracle for finer API details, batches, shutdown,
messages of any size and out-of-band buffers, named queues for unrelated
processes, queues travelling to running processes and Pool workers, bad
input, and a stateful property test against queue.Queue.
"""

import gc
import os
import pickle
import queue
import stat
import threading
import time

import numpy as np
import pytest
from hypothesis import settings, strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import mpx
from mpx import _names
from mpx._ext import ring as ringmod
from mpx.backends.shm import queues as shm

from conftest import join_all

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)


def make(ctx, impl, family="Queue", *args, **kw):
    """A queue of `family` from the shm backend, or the stdlib (the oracle)."""
    if impl == "stdlib":
        return getattr(ctx.stdlib_context(), family)(*args)
    return getattr(ctx, family)(*args, backend="shm", **kw)


def unique_name(tag):
    return f"mpx-test-{tag}-{os.getpid()}-{time.monotonic_ns()}"


@pytest.fixture
def named():
    """Names handed out here are unlinked (and forgotten) after the test."""
    made = []

    def new(tag="q"):
        name = unique_name(tag)
        made.append(name)
        return name

    yield new
    for name in made:
        try:
            os.unlink(os.path.join("/dev/shm", name))
        except FileNotFoundError:
            pass
        for family in shm.FAMILIES:
            _names.forget(family, "shm", name)


# --- child process bodies (module level, so spawn can import them) --------

def child_reports_ring_fds(a, b):
    """Put (descriptors on an mpx ring, how many of them are inheritable)."""
    mine = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            if "mpx-queue" in os.readlink(f"/proc/self/fd/{fd}"):
                mine.append(int(fd))
        except OSError:
            pass
    b.put((len(mine), sum(os.get_inheritable(fd) for fd in mine)))


def child_echo(inq, outq, n):
    for _ in range(n):
        outq.put(inq.get(timeout=30))


def child_use_sent_queue(carrier):
    """Receive two queues through another queue, then use them."""
    inq, outq = carrier.get(timeout=30)
    outq.put(("from child", os.getpid()))
    outq.put(inq.get(timeout=30) * 2)


def child_task_worker(jq, n):
    for _ in range(n):
        jq.get(timeout=30)
        time.sleep(0.01)
        jq.task_done()


def child_block_on_get(q, out):
    try:
        q.get(timeout=30)
        out.put("got")
    except mpx.ShutDown:
        out.put("shutdown")


def pool_put(q, item):
    q.put(item)
    return os.getpid()


def child_hold(q, ready, done):
    ready.put(os.getpid())
    done.get(timeout=30)
    q.close()


class Poison:
    """Pickles fine, fails to unpickle."""

    def __reduce__(self):
        return (_explode, ())


def _explode():
    raise RuntimeError("cannot rebuild this")


# ------------------------------------------------- the stdlib as oracle

IMPLS = ["shm", "stdlib"]


@pytest.mark.parametrize("impl", IMPLS)
def test_sizes_and_nowait(ctx, impl):
    q = make(ctx, impl, "Queue", 2)
    assert q.empty() and not q.full() and q.qsize() == 0
    q.put_nowait("a")
    q.put("b", timeout=1)
    deadline = time.monotonic() + 5
    while not q.full() and time.monotonic() < deadline:   # stdlib: feeder thread
        time.sleep(0.01)
    assert q.full() and q.qsize() == 2
    with pytest.raises(queue.Full):
        q.put_nowait("c")
    with pytest.raises(queue.Full):
        q.put("c", block=True, timeout=0.05)
    assert q.get(timeout=5) == "a"
    assert q.get(timeout=5) == "b"
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(False)
    q.close()
    q.join_thread()


@pytest.mark.parametrize("impl", IMPLS)
def test_close_semantics(ctx, impl):
    q = make(ctx, impl, "Queue")
    with pytest.raises(AssertionError):
        q.join_thread()                # not closed yet
    q.put(1)
    q.close()
    q.close()                          # twice is fine
    q.join_thread()
    q.cancel_join_thread()
    with pytest.raises(ValueError):
        q.put(2)
    with pytest.raises(ValueError):
        q.get(timeout=0.1)


@pytest.mark.parametrize("impl", IMPLS)
def test_joinable_queue_join_waits_for_a_child(ctx, impl):
    jq = make(ctx, impl, "JoinableQueue")
    for i in range(3):
        jq.put(i)
    p = ctx.Process(target=child_task_worker, args=(jq, 3))
    p.start()
    jq.join()                          # returns once the child marked all done
    join_all([p])
    with pytest.raises(ValueError):
        jq.task_done()


@pytest.mark.parametrize("impl", IMPLS)
def test_simple_queue_api(ctx, impl):
    q = make(ctx, impl, "SimpleQueue")
    assert q.empty()
    q.put([1, 2])
    assert not q.empty()
    assert q.get() == [1, 2]
    q.close()


# ------------------------------------------------------------ processes

def test_queue_given_at_start(ctx):
    a = ctx.Queue(backend="shm")
    b = ctx.Queue(backend="shm")
    p = ctx.Process(target=child_echo, args=(a, b, 3))
    p.start()
    for item in ("x", b"raw bytes", np.arange(5)):
        a.put(item)
    assert b.get(timeout=30) == "x"
    assert b.get(timeout=30) == b"raw bytes"
    assert (b.get(timeout=30) == np.arange(5)).all()
    join_all([p])


def test_a_child_holds_one_private_descriptor_per_queue_it_was_given(ctx):
    # One descriptor per ring in the child, none inheritable: a program the
    # child runs must not keep the queue's memory alive.
    if ctx.get_start_method() == "fork":
        pytest.skip("a forked child inherits every descriptor of the parent")
    a = ctx.Queue(backend="shm")
    b = ctx.Queue(backend="shm")
    p = ctx.Process(target=child_reports_ring_fds, args=(a, b))
    p.start()
    assert b.get(timeout=30) == (2, 0)
    join_all([p])


def test_queue_sent_through_another_queue_to_a_running_child(ctx):
    carrier = ctx.Queue(backend="shm")
    p = ctx.Process(target=child_use_sent_queue, args=(carrier,))
    p.start()
    inq = ctx.Queue(backend="shm")     # made after the child started
    outq = ctx.JoinableQueue(backend="shm")
    carrier.put((inq, outq))
    msg, pid = outq.get(timeout=30)
    assert msg == "from child" and pid == p.pid
    inq.put(21)
    assert outq.get(timeout=30) == 42
    join_all([p])


def test_queue_sent_to_a_pool_worker(ctx):
    q = ctx.Queue(backend="shm")
    with ctx.Pool(1) as pool:
        pid = pool.apply(pool_put, (q, "from the pool"))
        assert q.get(timeout=30) == "from the pool"
        assert pid != os.getpid()


def test_reopen_through_another_holder_after_the_pickler_closed():
    ctx = mpx.get_context("fork")
    q = ctx.Queue(backend="shm")
    ready, done = ctx.Queue(backend="shm"), ctx.Queue(backend="shm")
    p = ctx.Process(target=child_hold, args=(q, ready, done))
    p.start()
    child = ready.get()
    data = pickle.dumps(q)
    assert child in [pid for pid, _ in q._ring.holders()]
    q.put("kept")
    q.close()                          # the pickler's own fd is gone now
    q2 = pickle.loads(data)            # reopened through the child
    assert q2.get(timeout=5) == "kept"
    done.put(1)
    join_all([p])
    q2.close()
    gc.collect()
    with pytest.raises(FileNotFoundError, match="no process that held it"):
        pickle.loads(data)             # every holder is gone: a clear error


def test_pickled_queue_is_the_same_queue_in_this_process():
    q = mpx.Queue(backend="shm")
    q2 = pickle.loads(pickle.dumps(q))
    q.put(1)
    assert q2.get(timeout=5) == 1 and q2.capacity == q.capacity
    q2.close()
    q.put(2)
    assert q.get(timeout=5) == 2


def test_shutdown_wakes_a_getter_in_another_process(ctx):
    q = ctx.Queue(backend="shm")
    out = ctx.Queue(backend="shm")
    p = ctx.Process(target=child_block_on_get, args=(q, out))
    p.start()
    time.sleep(0.3)
    q.shutdown()
    assert out.get(timeout=30) == "shutdown"
    join_all([p])


# ----------------------------------------------------------- batches

def test_put_many_get_many():
    q = mpx.Queue(backend="shm")
    q.put_many(range(10))
    assert q.qsize() == 10
    assert q.get_many(max_items=4) == [0, 1, 2, 3]
    assert q.get() == 4
    assert q.get_many() == [5, 6, 7, 8, 9]
    with pytest.raises(queue.Empty):
        q.get_many(block=False)
    with pytest.raises(queue.Empty):
        q.get_many(timeout=0.05)
    q.put_many([])
    assert q.empty()
    q.put_many([1, 2])
    for bad, exc in ((0, ValueError), (1.5, TypeError), ("3", TypeError)):
        with pytest.raises(exc):
            q.get_many(max_items=bad)
    assert q.get_many(max_items=2 ** 70) == [1, 2]      # a huge limit: all there are


# (put_many's all-or-nothing: tests/test_backend_contracts.py, for every
# named-queue backend.)


def test_put_many_reports_how_many_went_in():
    q = mpx.Queue(3, backend="shm")
    with pytest.raises(queue.Full) as e:
        q.put_many(range(5), timeout=0.05)
    assert e.value.put_count == 3 and q.get_many() == [0, 1, 2]


def test_get_many_loses_nothing_when_an_item_fails_to_unpickle():
    q = mpx.Queue(backend="shm")
    q.put_many([1, Poison(), 3, 4])
    with pytest.raises(RuntimeError, match="cannot rebuild"):
        q.get_many()
    assert q.qsize() == 3              # two still in this process, counted
    assert q.get() == 1
    assert q.get_many() == [3, 4]


# ----------------------------------------------------------- shutdown

def test_shutdown_semantics():
    q = mpx.Queue(backend="shm")
    q.put_many(["a", "b"])
    q.shutdown()
    assert q.is_shutdown
    with pytest.raises(mpx.ShutDown):
        q.put("c")
    with pytest.raises(mpx.ShutDown):
        q.put_many(["c"])
    assert q.get() == "a"
    assert q.get_many() == ["b"]
    with pytest.raises(mpx.ShutDown):
        q.get()
    with pytest.raises(mpx.ShutDown):
        q.get(block=False)
    q.shutdown()                       # again: no error


def test_shutdown_immediate_discards_and_releases_join():
    jq = mpx.JoinableQueue(backend="shm")
    jq.put_many([1, 2, 3])
    jq.get()                           # taken, not done
    joined = []
    th = threading.Thread(target=lambda: joined.append(jq.join(timeout=10)))
    th.start()
    time.sleep(0.1)
    jq.shutdown(immediate=True)
    assert jq.qsize() == 0
    with pytest.raises(mpx.ShutDown):
        jq.get(timeout=1)
    # Two drained, one still out: join returns once that one is done.
    jq.task_done()
    th.join(10)
    assert joined == [True]


def test_shutdown_wakes_a_blocked_put():
    q = mpx.Queue(1, backend="shm")
    q.put(0)
    errors = []

    def put():
        try:
            q.put(1, timeout=10)
        except mpx.ShutDown as e:
            errors.append(e)

    th = threading.Thread(target=put)
    th.start()
    time.sleep(0.1)
    q.shutdown()
    th.join(10)
    assert len(errors) == 1


# --------------------------------------------------- messages of any size

def test_messages_larger_than_the_ring():
    q = mpx.Queue(backend="shm", capacity=4096)
    blobs = [os.urandom(n) for n in (0, 1, 2047, 2048, 4096, 100_000, 3_000_000)]
    for b in blobs:
        q.put(b, timeout=5)            # never Full forever, never a hang
    for b in blobs:
        assert q.get(timeout=5) == b


def test_big_message_put_before_any_consumer_exists(ctx):
    q = ctx.Queue(backend="shm", capacity=8192)
    out = ctx.Queue(backend="shm")
    big = os.urandom(2_000_000)
    q.put(big, timeout=5)              # returns at once: nobody reads yet
    p = ctx.Process(target=child_echo, args=(q, out, 1))
    p.start()
    assert out.get(timeout=30) == big
    join_all([p])


def test_numpy_and_buffers_out_of_band():
    q = mpx.Queue(backend="shm")
    arr = np.arange(300_000, dtype=np.float64).reshape(600, 500)
    fortran = np.asfortranarray(arr[:, :7])
    ba = bytearray(os.urandom(70_000))
    for obj in (arr, fortran, ba, memoryview(b"abc"), (7, arr), {"a": arr[:2]}):
        q.put(obj)
    out = q.get()
    assert out.dtype == arr.dtype and out.shape == arr.shape and (out == arr).all()
    assert out.flags.writeable
    out[0, 0] = -1                     # ours to change
    assert arr[0, 0] == 0
    f = q.get()
    assert (f == fortran).all()
    assert q.get() == ba
    assert bytes(q.get()) == b"abc"
    n, a2 = q.get()
    assert n == 7 and (a2 == arr).all()
    assert (q.get()["a"] == arr[:2]).all()


class CountingPickle(mpx._serial.PickleSerializer):
    """Pickle, counting its calls by kind."""

    def __init__(self):
        self.calls = []

    def dumps(self, obj):
        self.calls.append("dumps")
        return super().dumps(obj)

    def dumps_oob(self, obj):
        self.calls.append("dumps_oob")
        return super().dumps_oob(obj)


def test_bytearrays_and_large_containers_are_pickled_at_most_once():
    from mpx.backends.shm import codec
    ser = CountingPickle()
    ba = bytearray(os.urandom(1 << 20))
    msg, tag = codec.encode(ser, True, ba)
    # The bytearray itself is the ring's part (one copy in); what the ring
    # hands back as that part is a fresh bytearray (one copy out).
    assert tag == codec.TAG_BYTEARRAY and msg[1] is ba and ser.calls == []
    big_bytes = (1, b"x" * (1 << 20))
    codec.encode(ser, True, big_bytes)
    assert ser.calls == ["dumps"]                       # in band, once
    ser.calls.clear()
    msg, tag = codec.encode(ser, True, (1, np.zeros(1 << 17)))
    assert tag == codec.TAG_OOB and ser.calls == ["dumps", "dumps_oob"]
    q = mpx.Queue(backend="shm")
    for obj in (ba, bytearray(), (2, ba)):
        q.put(obj)
        back = q.get(timeout=5)
        assert back == obj and type(back) is type(obj)
    q.put(ba)
    back = q.get(timeout=5)
    back[0] ^= 1                                       # writable, and ours
    assert back[0] != ba[0]


class TaggedArray(np.ndarray):
    """An ndarray subclass: pickled, so it comes back as itself."""


@pytest.mark.parametrize("arr", [
    np.arange(10.0),
    np.arange(12, dtype=">i4").reshape(3, 4),          # byte order kept
    np.array(5.0),                                      # 0-d
    np.array(["ab", "c"]),
    np.array([b"x", b"yz"]),
    np.array(["2020-01-01"], dtype="M8[ns]"),
    np.arange(1 << 18, dtype=np.complex128),
    np.array([True, False]),
    # these must keep going through pickle, which describes them fully:
    np.zeros(0),
    np.zeros((2, 0, 3)),
    np.arange(6).reshape(2, 3).T,                       # not C-contiguous
    np.arange(3).view(TaggedArray),                     # a subclass
    np.array([1, "a"], dtype=object),
    np.zeros(3, dtype=[("a", "i4"), ("b", "f8")]),      # fields
    np.zeros(2, dtype=np.dtype("i4", metadata={"unit": "m"})),
], ids=lambda a: f"{type(a).__name__}-{a.dtype}-{a.shape}")
def test_numpy_arrays_come_back_exactly_as_pickle_gives_them(arr):
    # Plain arrays skip pickle (raw dtype, shape and data); the result must
    # not be told apart from what pickle rebuilds.
    q = mpx.Queue(backend="shm")
    q.put(arr)
    out = q.get(timeout=10)
    ref = pickle.loads(pickle.dumps(arr, 5))
    assert type(out) is type(ref)
    # (some numpy versions unpickle datetime dtypes with empty metadata)
    assert out.dtype == ref.dtype
    assert (out.dtype.metadata or None) == (ref.dtype.metadata or None)
    assert out.shape == ref.shape and out.strides == ref.strides
    assert out.flags.writeable
    assert out.tolist() == ref.tolist()


def test_bytes_skip_pickling_only_with_the_pickle_serializer():
    import json

    q = mpx.Queue(backend="shm")
    q.put(b"raw")
    assert q.get() == b"raw"
    jq = mpx.Queue(backend="shm", serializer=json)
    jq.put({"k": [1, 2]})
    assert jq.get() == {"k": [1, 2]}
    with pytest.raises(TypeError):
        jq.put(b"json cannot do bytes")
    assert jq.empty()


def test_unpicklable_object_leaves_the_queue_unchanged():
    q = mpx.Queue(backend="shm")
    q.put("first")
    with pytest.raises((TypeError, pickle.PicklingError)) as e:
        q.put(threading.Lock())
    assert "lock" in str(e.value).lower()
    assert q.qsize() == 1 and q.get() == "first"


# -------------------------------------------------------- named queues

# (A named queue between unrelated programs: tests/test_backend_contracts.py.)

def test_named_queue_file_is_private_and_outlives_its_name(named):
    jobs = named("jobs")
    q = mpx.Queue(name=jobs, backend="shm", maxsize=5)
    path = os.path.join("/dev/shm", jobs)
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    q.unlink()
    assert not os.path.exists(path)
    q.put("still works after unlink")
    assert q.get(timeout=5) == "still works after unlink"


def _open_same_name(name, out):
    q = mpx.Queue(name=name, backend="shm")
    q.put(os.getpid())
    out.put(q._ring_id)


def test_named_create_or_open_is_race_free(named):
    ctx = mpx.get_context("fork")
    name = named()
    out = ctx.SimpleQueue()
    procs = [ctx.Process(target=_open_same_name, args=(name, out)) for _ in range(6)]
    for p in procs:
        p.start()
    join_all(procs)
    ids = {out.get() for _ in procs}
    assert len(ids) == 1               # they all found one and the same queue
    q = mpx.Queue(name=name, backend="shm")
    assert sorted(q.get_many()) == sorted(p.pid for p in procs)
    q.unlink()


def test_named_queue_record_describe_remove(named):
    name = named()
    q = mpx.JoinableQueue(name=name, backend="shm", capacity=8192)
    q.put_many([1, 2])
    entries = [e for e in _names.entries() if e["name"] == name]
    assert len(entries) == 1 and entries[0]["module"] == "mpx.backends.shm.queues"
    info = shm.describe(entries[0])
    assert info["size"] == "2 msgs" and info["capacity"] == 8192
    assert info["kind"] == "JoinableQueue"
    shm.remove(entries[0])
    assert shm.describe(entries[0]) is None
    assert not [e for e in _names.entries() if e["name"] == name]
    assert q.get() == 1                # our mapping is still fine


def test_unlink_leaves_a_newer_queue_of_the_same_name_alone(named):
    name = named()
    old = mpx.Queue(name=name, backend="shm")
    os.unlink(os.path.join("/dev/shm", name))
    new = mpx.Queue(name=name, backend="shm")
    old.unlink()                       # not its file any more
    assert os.path.exists(os.path.join("/dev/shm", name))
    new.unlink()
    assert not os.path.exists(os.path.join("/dev/shm", name))


def test_pickled_named_queue_opens_by_name(named):
    name = named()
    q = mpx.Queue(name=name, backend="shm")
    q2 = pickle.loads(pickle.dumps(q))
    assert q2.name == name
    q2.put("x")
    assert q.get(timeout=5) == "x"
    q.unlink()


def test_foreign_segment_readable_by_others_is_refused_unread(named):
    # (A foreign file refused: tests/test_backend_contracts.py. Here: one
    # that others may read is refused before anything is read.)
    name = named()
    path = os.path.join("/dev/shm", name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"not a queue" * 1000)
    os.close(fd)
    with pytest.raises(ringmod.RingError):      # a ValueError, as the contract says
        mpx.Queue(name=name, backend="shm")
    os.chmod(path, 0o644)
    with pytest.raises(PermissionError, match="mode 0o644"):
        mpx.Queue(name=name, backend="shm")


def test_other_layout_version_is_refused(named):
    name = named()
    q = mpx.Queue(name=name, backend="shm")
    with open(os.path.join("/dev/shm", name), "r+b") as f:
        f.seek(8)
        f.write((ringmod.LAYOUT_VERSION + 7).to_bytes(4, "little"))
    with pytest.raises(ringmod.RingError, match="layout version"):
        mpx.Queue(name=name, backend="shm")
    q.unlink()


def test_named_queue_with_other_settings_is_refused(named):
    name = named()
    q = mpx.Queue(3, name=name, backend="shm", capacity=8192)
    with pytest.raises(ValueError, match="maxsize=3"):
        mpx.Queue(4, name=name, backend="shm")
    with pytest.raises(ValueError, match="capacity=8192"):
        mpx.Queue(name=name, backend="shm", capacity=1 << 20)
    same = mpx.Queue(name=name, backend="shm")      # defaults accept what is there
    assert same.maxsize == 3
    simple = mpx.SimpleQueue(name=name, backend="shm")   # the same ring format
    with pytest.raises(ValueError, match="exists as a Queue.*JoinableQueue"):
        mpx.JoinableQueue(name=name, backend="shm")
    simple.close()
    q.unlink()
    joinable = mpx.JoinableQueue(name=name, backend="shm")
    with pytest.raises(ValueError, match="exists as a JoinableQueue.*as a Queue"):
        mpx.Queue(name=name, backend="shm")
    joinable.unlink()


# --------------------------------------------------------- bad input

@pytest.mark.parametrize("kwargs, exc, text", [
    ({"capacity": 0}, ValueError, "capacity"),
    ({"capacity": "big"}, TypeError, "capacity"),
    ({"capacity": 1 << 40}, ValueError, "limit"),
    ({"maxsize": 1 << 40}, ValueError, "maxsize"),
    ({"maxsize": True}, TypeError, "maxsize"),
    ({"name": ""}, ValueError, "invalid queue name"),
    ({"name": "a/b"}, ValueError, "invalid queue name"),
    ({"name": 5}, TypeError, "name"),
    ({"spin": -1}, ValueError, "spin"),
])
def test_bad_arguments(kwargs, exc, text):
    with pytest.raises(exc, match=text):
        mpx.Queue(backend="shm", **kwargs)


def test_repr_and_properties():
    q = mpx.Queue(7, backend="shm", capacity=10_000, spin=0)
    assert "anonymous" in repr(q) and q.name is None
    assert q.maxsize == 7 and q.capacity == 16384
    q.put(1)
    assert q.get(timeout=5) == 1       # works without any spinning
    q.close()
    assert "closed" in repr(q)


def test_anonymous_queue_never_touches_dev_shm():
    before = set(os.listdir("/dev/shm"))
    q = mpx.Queue(backend="shm", capacity=4096)
    q.put(os.urandom(1_000_000))
    assert set(os.listdir("/dev/shm")) == before
    assert len(q.get()) == 1_000_000
    q.close()


# ------------------------------------------- stateful test vs queue.Queue

class QueueModel(RuleBasedStateMachine):
    """The shm queue against queue.Queue, single process: sizes, FIFO order,
    Full/Empty, batches, across ring wrap-around and overflow extents."""

    def __init__(self):
        super().__init__()
        self.maxsize = 6
        self.model = queue.Queue(self.maxsize)
        self.q = mpx.Queue(self.maxsize, backend="shm", capacity=16384, inline_max=1024)

    items = st.one_of(st.integers(), st.text(max_size=20),
                      st.binary(max_size=3000),
                      st.tuples(st.integers(), st.binary(max_size=2000)))

    @rule(item=items)
    def put_nowait(self, item):
        try:
            self.model.put_nowait(item)
        except queue.Full:
            with pytest.raises(queue.Full):
                self.q.put_nowait(item)
        else:
            self.q.put_nowait(item)

    @rule()
    def get_nowait(self):
        try:
            expected = self.model.get_nowait()
        except queue.Empty:
            with pytest.raises(queue.Empty):
                self.q.get_nowait()
        else:
            assert self.q.get_nowait() == expected

    @precondition(lambda self: self.model.qsize() <= 3)
    @rule(batch=st.lists(items, max_size=3))
    def put_many(self, batch):
        self.q.put_many(batch, block=False)
        for item in batch:
            self.model.put_nowait(item)

    @rule(n=st.integers(min_value=1, max_value=4))
    def get_many(self, n):
        expected = []
        while len(expected) < n and not self.model.empty():
            expected.append(self.model.get_nowait())
        if not expected:
            with pytest.raises(queue.Empty):
                self.q.get_many(max_items=n, block=False)
        else:
            assert self.q.get_many(max_items=n, block=False) == expected

    @invariant()
    def same_size(self):
        assert self.q.qsize() == self.model.qsize()
        assert self.q.empty() == self.model.empty()
        assert self.q.full() == self.model.full()

    def teardown(self):
        self.q.close()


QueueModel.TestCase.settings = settings(max_examples=60, stateful_step_count=40,
                                        deadline=None)
test_queue_against_queue_queue = QueueModel.TestCase


# ------------------------------------------------------ issue 19 (items 9, 11, 14)

BAD_LAYOUTS = [
    ({"inline_max": -1}, ValueError, "inline_max must be"),
    ({"inline_max": 2 ** 70}, ValueError, "inline_max must be"),
    ({"area_backlog": 2 ** 70}, ValueError, "area_backlog must be"),
    ({"area": "x"}, TypeError, "area must be an int"),
    ({"spin": "x"}, TypeError, "spin must be"),
]


@pytest.mark.parametrize("kw, exc, error", BAD_LAYOUTS)
def test_bad_layout_gives_its_own_error_not_EBADF(kw, exc, error):
    open_before = set(os.listdir("/proc/self/fd"))
    with pytest.raises(exc, match=error):
        mpx.Queue(backend="shm", **kw)
    assert set(os.listdir("/proc/self/fd")) <= open_before      # nothing leaked


def test_failed_creation_never_closes_a_descriptor_it_does_not_own():
    # The failed create used to close its descriptor twice: a file another
    # thread opened meanwhile under that number lost its descriptor.
    with open(__file__, "rb") as f:
        fd = f.fileno()
        stop, errors = threading.Event(), []

        def churn():
            while not stop.is_set():
                try:
                    n = os.open(__file__, os.O_RDONLY)
                    os.fstat(n)
                    os.close(n)
                except OSError as e:
                    errors.append(e)

        th = threading.Thread(target=churn)
        th.start()
        try:
            deadline = time.monotonic() + 1.0
            while time.monotonic() < deadline:
                for kw, exc, error in BAD_LAYOUTS:
                    with pytest.raises(exc, match=error):
                        mpx.Queue(backend="shm", **kw)
        finally:
            stop.set()
            th.join(10)
        os.fstat(fd)                     # still ours
        assert f.read(3) == b'"""'
    assert not errors, errors[:3]


def test_capacity_takes_any_integer_type():
    q = mpx.Queue(backend="shm", capacity=np.int64(8192), maxsize=np.int32(3))
    assert q.capacity == 8192 and q.maxsize == 3
    q.close()
    with pytest.raises(TypeError, match="capacity must be an int"):
        mpx.Queue(backend="shm", capacity=8192.0)


def test_bound_put_and_get_outlive_the_queue_object():
    # p = q.put; del q; p(1) works, as with the stdlib's queues.
    q = mpx.Queue(backend="shm")
    p, g = q.put, q.get
    del q
    gc.collect()
    p(1)
    assert g(timeout=5) == 1
    sq = mpx.SimpleQueue(backend="shm")
    p, g = sq.put, sq.get
    del sq
    gc.collect()
    p("x")
    assert g() == "x"


NAN, INF = float("nan"), float("inf")


@pytest.mark.parametrize("call", ["get", "put", "put_many", "get_many", "join",
                                  "get_nowait_ignores"])
def test_nan_timeout_is_a_ValueError_at_once(call):
    q = mpx.JoinableQueue(1, backend="shm")
    if call in ("put", "put_many", "join"):
        q.put(0)                         # full, and a task not done: they would wait
    t = time.monotonic()
    if call == "get_nowait_ignores":
        # block=False reads no timeout, as seconds() and the stdlib do.
        with pytest.raises(queue.Empty):
            q.get(False, NAN)
    else:
        with pytest.raises(ValueError, match="NaN"):
            {"get": lambda: q.get(timeout=NAN),
             "put": lambda: q.put(1, timeout=NAN),
             "put_many": lambda: q.put_many([1], timeout=NAN),
             "get_many": lambda: q.get_many(timeout=NAN),
             "join": lambda: q.join(timeout=NAN)}[call]()
    assert time.monotonic() - t < 1
    q.close()


def test_inf_and_huge_timeouts_wait_for_ever_and_negatives_do_not_wait():
    q = mpx.JoinableQueue(backend="shm")
    for timeout in (INF, 10 ** 30, 1e300):
        threading.Timer(0.1, q.put, ("late",)).start()
        assert q.get(timeout=timeout) == "late"
        threading.Timer(0.1, q.task_done).start()
        assert q.join(timeout=timeout) is True
    with pytest.raises(queue.Empty):
        q.get(timeout=-1)
    q.put("unfinished")
    assert q.join(timeout=-0.5) is False
    with pytest.raises(TypeError, match="timeout must be"):
        q.get(timeout="1")
    q.close()


@pytest.mark.parametrize("family", ["Queue", "JoinableQueue"])
def test_closed_queue_empty_is_true_until_used_then_raises(family):
    # As the stdlib's (CPython 3.13's test_closed_queue_empty_exceptions):
    # closing an unused queue leaves empty() True; once something was put,
    # a closed queue raises an error that is both OSError and ValueError.
    q = getattr(mpx, family)(backend="shm")
    q.close()
    assert q.empty()
    q = getattr(mpx, family)(backend="shm")
    q.put("x")
    q.close()
    with pytest.raises(OSError, match="is closed") as info:
        q.empty()
    assert isinstance(info.value, ValueError)
    with pytest.raises(ValueError, match="is closed"):
        q.put("y")


def test_closed_simple_queue_raises_from_empty_and_its_ends_say_closed():
    q = mpx.SimpleQueue(backend="shm")
    writer, reader = q._writer, q._reader
    writer.send(5)
    assert reader.recv() == 5
    assert not writer.closed and not reader.closed
    q.close()
    assert writer.closed and reader.closed
    with pytest.raises(OSError, match="is closed"):
        q.empty()
