"""mpx.Pool's crash matrix (in the style of loky's): each way a worker or a
task can fail, paired with exactly what the caller gets, and never a hang.

| failure                                  | the caller gets                        |
|------------------------------------------|----------------------------------------|
| idle worker killed (before any task)     | nothing fails; a new worker starts     |
| worker SIGKILLed during a task           | that task: WorkerLostError (-9)        |
| os._exit(3) during a task                | that task: WorkerLostError (3)         |
| segfault in C code during a task         | that task: WorkerLostError (-11)       |
| worker killed just after a task          | the result; nothing fails              |
| killed while sending a result            | that task: WorkerLostError             |
| killed in the initializer (once)         | nothing fails; a new worker starts     |
| killed in the initializer (always)       | BrokenPoolError, for pending and later |
| unpicklable argument                     | TypeError from the submitting call     |
| unpicklable result                       | MaybeEncodingError for that task       |
| exception that cannot be unpickled       | MaybeEncodingError for that task       |
| BaseException in a task                  | that exception for that task           |
| pipe transport: worker killed            | BrokenPoolError, for pending and later |
| random kills during a long imap          | each task once: its result or          |
|                                          | WorkerLostError, no more than kills    |

The tasks a dead worker had taken but not started run on another worker.
"""

import ctypes
import faulthandler
import os
import random
import signal
import threading
import time

import pytest

import mpx
from mpx.pool import BrokenPoolError, MaybeEncodingError, WorkerLostError
from conftest import wait_for

T = 60


def identity(x):
    return x


def die_on(x, target, how):
    if x == target:
        if how == "kill":
            os.kill(os.getpid(), signal.SIGKILL)
        elif how == "exit":
            os._exit(3)
        elif how == "segv":
            faulthandler.disable()       # (no stack dump from the test's handler)
            ctypes.string_at(0)
    return x


def die_after_returning(x):
    threading.Timer(0.05, os.kill, (os.getpid(), signal.SIGKILL)).start()
    return x


class ExitWhenPickled:
    def __reduce__(self):
        os._exit(5)


def exit_while_sending(_):
    return ExitWhenPickled()


def whoami(_=None):
    return os.getpid()


def init_die_once(flag):
    try:
        fd = os.open(flag, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
    except FileExistsError:
        return
    os.close(fd)
    os.kill(os.getpid(), signal.SIGKILL)


def init_die_always():
    os.kill(os.getpid(), signal.SIGKILL)


def nap(x):
    time.sleep(0.0005)
    return x


EXIT_CODES = {"kill": -signal.SIGKILL, "exit": 3, "segv": -signal.SIGSEGV}


@pytest.mark.parametrize("method", ["fork", "spawn"])
@pytest.mark.parametrize("how", ["kill", "exit", "segv"])
def test_worker_dies_during_a_task(method, how):
    with mpx.get_context(method).Pool(2) as p:
        results = [p.apply_async(die_on, (i, 3, how)) for i in range(8)]
        t0 = time.monotonic()
        outcomes = []
        for r in results:
            try:
                outcomes.append(r.get(T))
            except WorkerLostError as e:
                outcomes.append(e)
        assert time.monotonic() - t0 < 10
        err = outcomes[3]
        assert isinstance(err, WorkerLostError)
        assert err.exitcode == EXIT_CODES[how] and err.pid
        assert f"exit code {EXIT_CODES[how]}" in str(err) and "while running" in str(err)
        # Only the task it was running fails; what it had taken but not
        # started ran elsewhere.
        assert outcomes[:3] + outcomes[4:] == [0, 1, 2, 4, 5, 6, 7]
        # map: the pool reports the death and keeps working.
        with pytest.raises(WorkerLostError):
            p.starmap(die_on, [(i, 2, how) for i in range(6)], chunksize=1)
        assert p.map(identity, range(50)) == list(range(50))
        assert wait_for(lambda: len(p._pool) == 2 and all(w.is_alive() for w in p._pool))


def kill_on_first(a):
    if a[0] == 1:
        os.kill(os.getpid(), signal.SIGKILL)
    return a * 2


def test_worker_dies_holding_array_tasks():
    np = pytest.importorskip("numpy")
    arrays = [np.full(1 << 15, i, dtype=np.float64) for i in range(8)]   # 256 KiB each
    with mpx.get_context("fork").Pool(2) as p:
        outcomes = []
        for r in [p.apply_async(kill_on_first, (a,)) for a in arrays]:
            try:
                outcomes.append(r.get(T))
            except WorkerLostError as e:
                outcomes.append(e)
        assert isinstance(outcomes[1], WorkerLostError)
        assert all((o == 2 * i).all() for i, o in enumerate(outcomes) if i != 1)


def test_idle_worker_killed_is_replaced_and_nothing_fails():
    with mpx.get_context("fork").Pool(2) as p:
        victim = p._pool[0]
        os.kill(victim.pid, signal.SIGKILL)
        assert wait_for(lambda: victim not in p._pool and len(p._pool) == 2, timeout=10)
        assert p.map(identity, range(100), chunksize=1) == list(range(100))


def test_worker_killed_just_after_a_task_loses_nothing():
    with mpx.get_context("fork").Pool(2) as p:
        assert p.apply(die_after_returning, (7,)) == 7
        pids = {w.pid for w in p._pool}
        assert wait_for(lambda: {w.pid for w in p._pool} != pids, timeout=10)
        assert p.map(identity, range(20)) == list(range(20))


def test_worker_killed_while_sending_a_result():
    with mpx.get_context("fork").Pool(2) as p:
        with pytest.raises(WorkerLostError, match="exit code 5") as info:
            p.apply(exit_while_sending, (1,))
        assert info.value.exitcode == 5
        assert p.apply(identity, (3,)) == 3


def test_worker_killed_in_its_initializer_once(tmp_path):
    flag = str(tmp_path / "died")
    with mpx.get_context("fork").Pool(2, initializer=init_die_once, initargs=(flag,)) as p:
        assert p.map(identity, range(30), chunksize=1) == list(range(30))
        assert os.path.exists(flag)


def test_workers_that_always_die_in_the_initializer_break_the_pool():
    p = mpx.get_context("fork").Pool(2, initializer=init_die_always)
    try:
        t0 = time.monotonic()
        with pytest.raises(BrokenPoolError, match="keep dying before their initializer"):
            p.apply_async(identity, (1,)).get(T)
        assert time.monotonic() - t0 < 10
        with pytest.raises(BrokenPoolError):
            p.map(identity, [1])
    finally:
        p.terminate()
        p.join()


def test_serialization_failures_fail_only_their_task():
    with mpx.get_context("fork").Pool(2) as p:
        with pytest.raises(TypeError):
            p.apply_async(identity, (threading.Lock(),))        # from the call itself
        with pytest.raises(MaybeEncodingError):
            p.apply(lambda: threading.Lock())                  # unpicklable result
        with pytest.raises(MaybeEncodingError, match="cannot be unpickled|missing"):
            p.apply(_raise_unpicklable)                        # gh-79492
        with pytest.raises(SystemExit):
            p.apply(_raise_system_exit)                        # a BaseException
        assert p.map(identity, range(10)) == list(range(10))
        assert len(p._pool) == 2


class _Unpicklable(Exception):
    def __init__(self, a, b):
        super().__init__(a)


def _raise_unpicklable():
    raise _Unpicklable(1, 2)


def _raise_system_exit():
    raise SystemExit(4)


def test_pipe_transport_dead_worker_breaks_the_pool():
    p = mpx.get_context("fork").Pool(2, backend="pipe")
    try:
        pending = p.map_async(nap, range(10000), chunksize=1)
        with pytest.raises(BrokenPoolError, match="pipe") as info:
            p.apply(die_on, (1, 1, "kill"))
        assert "exit code -9" in str(info.value)
        with pytest.raises(BrokenPoolError):
            pending.get(T)
        with pytest.raises(BrokenPoolError):
            p.apply_async(identity, (1,))
    finally:
        p.terminate()
        p.join()


def test_random_kills_during_a_long_imap_give_each_task_once():
    n, kills = 4000, 6
    with mpx.get_context("fork").Pool(2) as p:
        stop = threading.Event()
        killed = []

        def killer():
            rng = random.Random(1234)
            while not stop.is_set() and len(killed) < kills:
                time.sleep(rng.uniform(0.02, 0.15))
                workers = [w for w in list(p._pool) if w.is_alive()]
                if workers:
                    victim = rng.choice(workers)
                    try:
                        os.kill(victim.pid, signal.SIGKILL)
                        killed.append(victim.pid)
                    except ProcessLookupError:
                        pass

        thread = threading.Thread(target=killer)
        thread.start()
        values, lost = [], []
        it = p.imap_unordered(nap, range(n))
        t0 = time.monotonic()
        try:
            while True:
                try:
                    values.append(it.next(T))
                except WorkerLostError as e:
                    lost.append(e)
                except StopIteration:
                    break
                assert time.monotonic() - t0 < T
        finally:
            stop.set()
            thread.join(T)
        assert len(values) == len(set(values))              # no task twice
        assert len(values) + len(lost) == n                 # every task once
        assert len(lost) <= len(killed)
        assert {e.exitcode for e in lost} <= {-signal.SIGKILL}
        assert p.map(identity, range(10)) == list(range(10))
