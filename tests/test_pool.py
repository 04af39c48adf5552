"""mpx.Pool: the stdlib Pool's API over mpx queues, and what it does better.

CPython's own Pool tests run against mpx.Pool in tests/test_stdlib_oracle.py;
worker deaths are in tests/test_pool_crash.py. Here: the API on every
transport and start method, lambdas, serialization errors, exceptions and
their tracebacks, imap's buffersize, tqdm, numpy, maxtasksperchild and the
initializer, Ctrl-C, and that nothing is left behind (processes,
descriptors) after close, terminate, garbage collection or the parent's
death.
"""

import gc
import io
import itertools
import multiprocessing
import os
import pickle
import signal
import subprocess
import sys
import textwrap
import threading
import time
import warnings

import pytest

import mpx
import mpx.pool
from mpx.pool import BrokenPoolError, MaybeEncodingError, PoolTerminatedError
from conftest import START_METHODS, backends_for, wait_for

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
T = 60      # bound on any single wait in these tests


def sq(x):
    return x * x


def add(a, b):
    return a + b


def boom(x):
    raise ValueError(f"bad {x}")  # the line the remote traceback shows


def identity(x):
    return x


def slow_identity(x):
    time.sleep(0.01)
    return x


def whoami(_=None):
    return os.getpid()


_initialized = None


def set_initialized(value):
    global _initialized
    _initialized = value


def get_initialized(_=None):
    return _initialized


def raise_base(kind):
    raise {"exit": SystemExit, "interrupt": KeyboardInterrupt}[kind]("from the task")


def return_lock(_):
    return threading.Lock()


class NeedsTwoArgs(Exception):
    # CPython gh-79492: pickles, but does not unpickle (args is ("a b",)).
    def __init__(self, a, b):
        super().__init__(f"{a} {b}")


def raise_needs_two_args(_):
    raise NeedsTwoArgs("a", "b")


@pytest.fixture(params=backends_for("Pool"))
def backend(request):
    return request.param


# ------------------------------------------------------------------ the API

@pytest.mark.parametrize("method", START_METHODS)
def test_api_on_every_transport_and_start_method(method, backend):
    calls = []
    with mpx.get_context(method).Pool(2, backend=backend) as p:
        assert p._backend == backend and len(p._pool) == 2
        assert p.map(sq, range(10)) == [x * x for x in range(10)]
        assert p.map(sq, range(100), chunksize=7) == [x * x for x in range(100)]
        assert p.starmap(add, [(1, 2), (3, 4)]) == [3, 7]
        assert p.apply(add, (1,), {"b": 2}) == 3
        r = p.apply_async(sq, (9,), callback=calls.append)
        assert r.get(T) == 81 and r.ready() and r.successful()
        assert calls == [81]
        assert list(p.imap(sq, range(20))) == [x * x for x in range(20)]
        assert list(p.imap(sq, iter(range(20)), 3)) == [x * x for x in range(20)]
        assert sorted(p.imap_unordered(sq, range(20), 2)) == [x * x for x in range(20)]
        assert p.map(sq, []) == [] and list(p.imap(sq, [])) == []
        errors = []
        m = p.map_async(boom, [1, 2], error_callback=errors.append)
        m.wait(T)
        assert not m.successful() and isinstance(errors[0], ValueError)
        assert p.starmap_async(add, [(1, 1)]).get(T) == [2]
    assert p._state == mpx.pool.TERMINATE
    p.join()


def test_mpx_pool_is_mpx_on_every_context():
    assert mpx.Pool.__self__ is mpx.context.default_context
    for method in START_METHODS:
        assert "backend" in mpx.get_context(method).Pool.__doc__ + "backend"
    with mpx.Pool(1) as p:
        assert isinstance(p, mpx.pool.Pool)
        assert p._ctx.get_start_method() == multiprocessing.get_start_method()
    # A stdlib context picks the start method only.
    with mpx.pool.Pool(1, context=multiprocessing.get_context("fork")) as p:
        assert p._ctx is mpx.get_context("fork")
        assert p.apply(sq, (3,)) == 9
    assert "Pool" in next(r for r in mpx.backends() if r["name"] == "shm")["families"]


def test_timeouts_and_not_ready():
    with mpx.get_context("fork").Pool(1) as p:
        r = p.apply_async(time.sleep, (0.5,))
        with pytest.raises(ValueError, match="not ready"):
            r.successful()
        with pytest.raises(multiprocessing.TimeoutError):
            r.get(0.01)
        with pytest.raises(multiprocessing.TimeoutError):
            r.get(-1)                       # negative: no wait, as in the stdlib
        with pytest.raises(ValueError, match="NaN"):
            r.get(float("nan"))
        it = p.imap(time.sleep, [0.5])
        with pytest.raises(multiprocessing.TimeoutError):
            it.next(0.01)
        assert r.get(T) is None and it.next(T) is None
        with pytest.raises(StopIteration):
            it.next(T)


def test_bad_arguments_give_the_stdlibs_errors():
    with pytest.raises(ValueError, match="at least 1"):
        mpx.Pool(0)
    with pytest.raises(ValueError, match="at least 1"):
        mpx.Pool(-1)
    for bad in (0, -1, 0.5, "12"):
        with pytest.raises(ValueError, match="maxtasksperchild"):
            mpx.Pool(1, maxtasksperchild=bad)
    with pytest.raises(TypeError, match="initializer must be a callable"):
        mpx.Pool(1, initializer=42)
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        mpx.Pool(1, backend="nope")
    with pytest.raises(ValueError, match="'posix' does not provide Pool"):
        mpx.Pool(1, backend="posix")
    p = mpx.get_context("fork").Pool(1)
    try:
        with pytest.raises(ValueError, match="Chunksize must be 1\\+"):
            p.imap(sq, [1], 0)
        with pytest.raises(ValueError, match="Chunksize must be 1\\+"):
            p.map(sq, [1], chunksize=0)
        with pytest.raises(TypeError, match="buffersize must be an integer"):
            p.imap(sq, [1], buffersize=1.5)
        with pytest.raises(ValueError, match="buffersize must be None or > 0"):
            p.imap_unordered(sq, [1], buffersize=0)
        with pytest.raises(ValueError, match="Pool is still running"):
            p.join()
        with pytest.raises(NotImplementedError):
            pickle.dumps(p)
        assert repr(p) == "<mpx.pool.Pool state=RUN pool_size=1>"
    finally:
        p.close()
    with pytest.raises(ValueError, match="Pool not running"):
        p.apply_async(sq, (1,))
    with pytest.raises(ValueError, match="Pool not running"):
        p.imap(sq, [1])
    p.join()
    with pytest.raises(ValueError, match="Pool not running"):
        p.__enter__()


# ------------------------------------------------ serialization and errors

@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_lambdas_and_closures_travel(method):
    k = 3
    with mpx.get_context(method).Pool(2) as p:
        assert p.map(lambda x: x + k, range(5)) == [3, 4, 5, 6, 7]
        adders = p.map(lambda x: (lambda y: x + y), [10, 20])  # results
        assert [f(1) for f in adders] == [11, 21]
        assert p.apply(lambda f: f(2), (lambda x: x * k,)) == 6  # arguments
        assert list(p.imap_unordered(lambda x: -x, [1])) == [-1]
    p.join()


def test_unserializable_argument_raises_from_the_call(backend):
    lock = threading.Lock()
    with mpx.get_context("fork").Pool(2, backend=backend) as p:
        with pytest.raises(TypeError, match="lock"):
            p.apply_async(identity, (lock,))
        with pytest.raises(TypeError, match="lock"):
            p.map_async(identity, [1, lock, 3])
        with pytest.raises(TypeError, match="lock"):
            p.map(identity, [1, 2, lock])
        # imap reads its input lazily: the error is that item's result.
        it = p.imap(identity, [1, lock, 3])
        assert next(it) == 1
        with pytest.raises(TypeError, match="lock"):
            next(it)
        assert next(it) == 3
        assert p.map(sq, range(5)) == [0, 1, 4, 9, 16]     # unaffected


def test_unserializable_result_and_exception_fail_their_task_only(backend):
    with mpx.get_context("fork").Pool(2, backend=backend) as p:
        for _ in range(3):
            with pytest.raises(MaybeEncodingError, match="lock"):
                p.apply(return_lock, (1,))
            # gh-79492: the stdlib's result handler dies on this one.
            with pytest.raises(MaybeEncodingError, match="NeedsTwoArgs") as info:
                p.apply(raise_needs_two_args, (1,))
            assert "raise NeedsTwoArgs" in str(info.value.__cause__)
        with pytest.raises(MaybeEncodingError):
            p.map(return_lock, [1, 2], chunksize=1)
        it = p.imap(lambda x: threading.Lock() if x == 2 else x, range(4))
        assert [next(it), next(it)] == [0, 1]
        with pytest.raises(MaybeEncodingError):
            next(it)
        assert list(it) == [3]
        assert len(p._pool) == 2 and p.map(sq, [3]) == [9]


def test_exceptions_carry_the_workers_traceback():
    with mpx.get_context("fork").Pool(1) as p:
        with pytest.raises(ValueError, match="bad 7") as info:
            p.apply(boom, (7,))
        cause = info.value.__cause__
        assert type(cause) is multiprocessing.pool.RemoteTraceback
        assert 'raise ValueError(f"bad {x}")  # the line the remote traceback shows' in str(cause)
        with pytest.raises(ValueError, match="bad 2"):
            list(p.imap(boom, [2]))


@pytest.mark.parametrize("kind,exc", [("exit", SystemExit), ("interrupt", KeyboardInterrupt)])
def test_base_exception_in_a_task_fails_that_task(kind, exc):
    with mpx.get_context("fork").Pool(1) as p:
        pid = p._pool[0].pid
        r = p.apply_async(raise_base, (kind,))
        r.wait(T)
        assert r.ready() and not r.successful()
        assert isinstance(r._value, exc)
        # The worker lives on; the pool was not terminated by the task.
        assert p.apply(whoami) == pid and p._state == mpx.pool.RUN


# --------------------------------------------------------------- imap

def test_imap_buffersize_reads_the_input_lazily():
    pulled = itertools.count()

    def endless():
        for i in itertools.count():
            next(pulled)
            yield i

    with mpx.get_context("fork").Pool(2) as p:
        for imap in (p.imap, p.imap_unordered):
            before = next(pulled)
            it = imap(sq, endless(), buffersize=4)
            got = [next(it) for _ in range(20)]
            if imap == p.imap:
                assert got == [x * x for x in range(20)]
            time.sleep(0.2)     # the pool has all the time it wants to read ahead
            read = next(pulled) - before - 1
            assert 20 <= read <= 20 + 4, read
        # Chunks count as one: at most 4 chunks of 3 ahead.
        before = next(pulled)
        it = p.imap(sq, endless(), 3, buffersize=4)
        assert [next(it) for _ in range(9)] == [x * x for x in range(9)]
        time.sleep(0.2)
        assert next(pulled) - before - 1 <= 9 + 4 * 3


def test_imap_input_error_comes_at_its_position():
    def gen():
        yield 1
        yield 2
        raise KeyError("input")

    with mpx.get_context("fork").Pool(2) as p:
        it = p.imap(sq, gen())
        assert [next(it), next(it)] == [1, 4]
        with pytest.raises(KeyError, match="input"):
            next(it)
        with pytest.raises(StopIteration):
            next(it)


def test_tqdm_over_imap():
    tqdm = pytest.importorskip("tqdm").tqdm
    out = io.StringIO()
    with mpx.get_context("fork").Pool(2) as p:
        got = list(tqdm(p.imap(sq, range(50)), total=50, file=out, mininterval=0))
        assert got == [x * x for x in range(50)]
        got = sorted(tqdm(p.imap_unordered(sq, range(50), 5), total=50, file=out))
        assert got == [x * x for x in range(50)]
    assert "50/50" in out.getvalue()


# --------------------------------------------------------------- numpy

def test_numpy_arrays_take_the_plain_path():
    np = pytest.importorskip("numpy")
    assert mpx.pool._plain(np.zeros(3)) and mpx.pool._plain(np.zeros((2, 2), "<u2"))
    assert not mpx.pool._plain(np.array([None, 1], dtype=object))
    assert not mpx.pool._plain(np.zeros(3).view(np.matrix))
    # A large array travels as an ndarray view that pickles as the message
    # tuple, its data out of band (copied once in and once out of the ring).
    big = np.arange(1 << 16, dtype=np.float64)
    message = mpx.pool._message((1, 2), big)
    assert isinstance(message, np.ndarray) and np.shares_memory(message, big)
    buffers = []
    stream = pickle.dumps(message, 5, buffer_callback=buffers.append)
    assert len(buffers) == 1 and len(stream) < 1000
    header_1, header_2, back = pickle.loads(stream, buffers=buffers)
    assert (header_1, header_2) == (1, 2) and type(back) is np.ndarray and (back == big).all()
    assert type(mpx.pool._message((1,), np.zeros(3))) is tuple       # small: a tuple
    arrays = [np.full((256, 1024), i, dtype=np.float32) for i in range(6)]   # 1 MiB each
    with mpx.get_context("fork").Pool(2) as p:
        out = p.map(np.negative, arrays, chunksize=1)
        assert all(type(o) is np.ndarray and o.dtype == np.float32 and o.shape == (256, 1024)
                   and (o == -i).all() for i, o in enumerate(out))
        assert out[0].flags.writeable
        out = list(p.imap(np.sum, arrays, 2))
        assert out == [a.sum() for a in arrays]


# -------------------------------------------- workers, initializer, lifetime

def test_maxtasksperchild_replaces_workers_and_initializer_runs_in_each():
    with mpx.get_context("fork").Pool(2, initializer=set_initialized, initargs=("yes",),
                                      maxtasksperchild=3) as p:
        first = {w.pid for w in p._pool}
        pids = p.map(whoami, range(30), chunksize=1)
        assert len(set(pids)) >= 10 and first & set(pids)
        assert set(p.map(get_initialized, range(10), chunksize=1)) == {"yes"}
        assert wait_for(lambda: len(p._pool) == 2 and all(_alive(w) for w in list(p._pool)))


def _alive(worker):
    # (The pool's handler closes a retired worker's Process object while we
    # look: "process object is closed" then means it is gone.)
    try:
        return worker.is_alive()
    except ValueError:
        return False


def test_initializer_as_a_lambda_under_spawn():
    with mpx.get_context("spawn").Pool(1, initializer=lambda: set_initialized("lambda")) as p:
        assert p.apply(get_initialized) == "lambda"
    p.join()


def test_initializer_that_raises_breaks_the_pool():
    p = mpx.get_context("fork").Pool(2, initializer=boom, initargs=(5,))
    try:
        # (The pool may be broken before apply_async or after: either raises.)
        with pytest.raises(BrokenPoolError, match="initializer raised") as info:
            p.apply_async(sq, (2,)).get(T)
        assert isinstance(info.value.__cause__, ValueError)
        with pytest.raises(BrokenPoolError, match="bad 5"):
            p.apply_async(sq, (2,))
    finally:
        p.close()
        p.join()


def test_close_lets_queued_work_finish_and_join_waits():
    p = mpx.get_context("fork").Pool(2)
    r = p.map_async(slow_identity, range(40), chunksize=1)
    p.close()
    p.join()
    assert r.get(0) == list(range(40))
    assert p._pool == []


def test_terminate_fails_pending_work():
    errors = []
    with mpx.get_context("fork").Pool(2) as p:
        r = p.map_async(time.sleep, [5] * 10, chunksize=1, error_callback=errors.append)
        it = p.imap(time.sleep, [5] * 10)
        time.sleep(0.1)
    with pytest.raises(PoolTerminatedError):
        r.get(T)
    with pytest.raises(PoolTerminatedError):
        next(it)
    assert isinstance(errors[0], PoolTerminatedError)
    p.join()


def test_callbacks_may_submit_and_a_raising_callback_is_reported(capfd):
    with mpx.get_context("fork").Pool(2) as p:
        chained = []
        p.apply_async(sq, (2,), callback=lambda v: chained.append(p.apply_async(sq, (v,))))
        assert wait_for(lambda: chained, timeout=T)
        assert chained[0].get(T) == 16

        def bad_callback(_):
            raise RuntimeError("callback failed")
        p.apply_async(sq, (1,), callback=bad_callback).wait(T)
        assert p.apply(sq, (3,)) == 9
    assert "callback failed" in capfd.readouterr().err


def test_many_small_jobs_and_a_full_ring():
    # More tasks than the ring holds at once: the rest is fed as it drains.
    with mpx.get_context("fork").Pool(2) as p:
        results = [p.apply_async(add, (i, i)) for i in range(2000)]
        assert [r.get(T) for r in results] == [2 * i for i in range(2000)]
        big = [b"x" * 4096] * 3000     # 12 MiB of tasks
        assert p.map(len, big, chunksize=1) == [4096] * 3000


# ------------------------------------------------- nothing left behind

def _fds():
    return set(os.listdir("/proc/self/fd"))


def test_no_processes_or_descriptors_left_after_close_terminate_and_gc():
    ctx = mpx.get_context("fork")
    with ctx.Pool(2) as p:                  # warm-up: imports, the stdlib's helpers
        p.map(sq, range(10))
    p.join()
    before = _fds()
    for end in ("close", "terminate", "gc"):
        pids, warned = _use_and_end_a_pool(ctx, end)
        # As the stdlib's, a running pool collected says so.
        assert warned == (end == "gc")
        assert wait_for(lambda: not any(_not_zombie(pid) for pid in pids)), end
        assert wait_for(lambda: _fds() <= before), (end, _fds() - before)


def _use_and_end_a_pool(ctx, end):
    # (In a function of its own, so that nothing in the test's frame keeps
    # the pool alive.)
    p = ctx.Pool(2)
    result = p.map(sq, range(100))
    assert result == [x * x for x in range(100)]
    pids = [w.pid for w in p._pool]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if end == "close":
            p.close()
            p.join()
        elif end == "terminate":
            p.terminate()
            p.join()
        del p
        gc.collect()
    # (The warning's record holds the pool: it is freed with the record.)
    warned = any(issubclass(w.category, ResourceWarning) for w in caught)
    del caught
    gc.collect()
    return pids, warned


def _not_zombie(pid):
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


SCRIPT_CTRL_C = textwrap.dedent("""
    import os, signal, sys, threading, time
    sys.path.insert(0, {root!r})
    import mpx

    def nap(x):
        time.sleep(30)

    if __name__ == "__main__":
        pool = mpx.get_context({method!r}).Pool(2)
        print(" ".join(str(w.pid) for w in pool._pool), flush=True)
        threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT)).start()
        pool.map(nap, range(4))
""")


@pytest.mark.parametrize("method", ["fork", "forkserver"])
def test_ctrl_c_during_map_ends_the_workers(method):
    code = SCRIPT_CTRL_C.format(root=ROOT, method=method)
    t0 = time.monotonic()
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=T)
    assert time.monotonic() - t0 < 20
    assert "KeyboardInterrupt" in out.stderr, out.stderr
    assert out.returncode != 0
    pids = [int(x) for x in out.stdout.split()]
    assert len(pids) == 2
    assert wait_for(lambda: not any(_not_zombie(pid) for pid in pids), timeout=10)


SCRIPT_ORPHANS = textwrap.dedent("""
    import os, signal, sys
    sys.path.insert(0, {root!r})
    import mpx

    if __name__ == "__main__":
        pool = mpx.get_context("fork").Pool(2)
        print(" ".join(str(w.pid) for w in pool._pool), flush=True)
        os.kill(os.getpid(), signal.SIGKILL)
""")


def test_workers_exit_when_the_pools_process_is_killed():
    out = subprocess.run([sys.executable, "-c", SCRIPT_ORPHANS.format(root=ROOT)],
                         capture_output=True, text=True, timeout=T)
    assert out.returncode == -signal.SIGKILL
    pids = [int(x) for x in out.stdout.split()]
    assert len(pids) == 2
    assert wait_for(lambda: not any(_not_zombie(pid) for pid in pids), timeout=10)


def test_a_subclass_overriding_the_stdlib_pools_internals_is_refused():
    # Such a subclass (joblib's pools override _setup_queues) would be
    # silently ignored: mpx's Pool has no such hook.
    with pytest.raises(TypeError, match="_setup_queues.*subclass multiprocessing.pool.Pool"):
        class Custom(mpx.pool.Pool):
            def _setup_queues(self):
                pass

    class Fine(mpx.pool.Pool):          # a public override is fine
        def map(self, func, iterable, chunksize=None):
            return super().map(func, iterable, chunksize)

    with Fine(1) as pool:
        assert pool.map(abs, [-1, -2]) == [1, 2]
