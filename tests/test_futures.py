"""mpx.futures.ProcessPoolExecutor: concurrent.futures' executor API on
mpx's Pool, with the differences the module states (futures run from
submit on, a dead worker fails only its task and the executor goes on)."""

import concurrent.futures as cf
import gc
import os
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import mpx
import mpx.pool
from conftest import wait_for
from mpx.futures import BrokenPoolError, ProcessPoolExecutor, WorkerLostError

T = 60


def square(x):
    return x * x


def add(a, b):
    return a + b


def fail(x):
    raise ValueError(f"bad {x}")


def die(_=None):
    os.kill(os.getpid(), signal.SIGKILL)


def nap(seconds):
    time.sleep(seconds)
    return seconds


def pid(_=None):
    return os.getpid()


def exit_now(_=None):
    raise SystemExit(3)


_state = []


def remember(value):
    _state.append(value)


def recall():
    return list(_state)


def broken_init():
    raise RuntimeError("initializer failed")


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_submit_and_map_under_every_start_method(method):
    with ProcessPoolExecutor(2, mp_context=mpx.get_context(method)) as ex:
        assert ex.submit(square, 7).result(T) == 49
        assert list(ex.map(square, range(100), timeout=T)) == [x * x for x in range(100)]
        assert list(ex.map(lambda x: x + 1, range(5), timeout=T)) == [1, 2, 3, 4, 5]


def test_is_an_executor_with_the_stdlib_signature():
    with ProcessPoolExecutor(1) as ex:
        assert isinstance(ex, cf.Executor)
        assert ex._max_workers == 1


def test_submit_passes_args_and_kwargs_and_lambdas():
    with ProcessPoolExecutor(2) as ex:
        assert ex.submit(add, 1, b=2).result(T) == 3
        factor = 3
        assert ex.submit(lambda x: x * factor, 5).result(T) == 15
        # fn and the keyword named fn do not collide (fn is positional-only).
        assert ex.submit(dict, fn=1).result(T) == {"fn": 1}


def test_map_takes_several_iterables_and_chunksizes():
    with ProcessPoolExecutor(2) as ex:
        assert list(ex.map(add, range(10), range(10, 30))) == [a + b for a, b in
                                                               zip(range(10), range(10, 30))]
        for chunksize in (1, 3, 7, 100):
            assert list(ex.map(square, range(50), chunksize=chunksize)) == \
                [x * x for x in range(50)]
        assert list(ex.map(add, [1, 2, 3], [4, 5, 6], chunksize=2)) == [5, 7, 9]
        assert list(ex.map(square, [])) == []
        with pytest.raises(ValueError, match="chunksize"):
            ex.map(square, range(3), chunksize=0)


def test_map_reads_lazily_with_buffersize():
    def endless():
        n = 0
        while True:
            yield n
            n += 1

    with ProcessPoolExecutor(2) as ex:
        results = ex.map(square, endless(), buffersize=4)
        assert [next(results) for _ in range(20)] == [x * x for x in range(20)]
        results.close()


def test_a_task_exception_reaches_result_with_the_worker_traceback():
    with ProcessPoolExecutor(2) as ex:
        future = ex.submit(fail, 1)
        with pytest.raises(ValueError, match="bad 1") as info:
            future.result(T)
        assert "in fail" in str(info.value.__cause__)
        assert isinstance(future.exception(T), ValueError)
        # In map, the error comes where its result would be.
        results = ex.map(fail, [2])
        with pytest.raises(ValueError, match="bad 2"):
            next(results)
        # The executor goes on.
        assert ex.submit(square, 3).result(T) == 9


def test_map_timeout_raises_timeout_error():
    with ProcessPoolExecutor(1) as ex:
        results = ex.map(nap, [5.0], timeout=0.2)
        start = time.monotonic()
        with pytest.raises(cf.TimeoutError):
            next(results)
        assert time.monotonic() - start < 3
        with pytest.raises(cf.TimeoutError):
            ex.submit(nap, 5.0).result(0.1)
        ex.shutdown(cancel_futures=True)


def test_an_unserializable_argument_raises_from_submit():
    with ProcessPoolExecutor(1) as ex:
        with pytest.raises(Exception, match="lock|pickle"):
            ex.submit(square, threading.Lock())
        assert ex.submit(square, 4).result(T) == 16


def test_a_killed_worker_fails_its_task_and_the_executor_goes_on():
    with ProcessPoolExecutor(2) as ex:
        future = ex.submit(die)
        with pytest.raises(cf.process.BrokenProcessPool) as info:
            future.result(T)
        err = info.value
        assert isinstance(err, WorkerLostError)
        assert isinstance(err, mpx.pool.WorkerLostError)
        assert err.exitcode == -signal.SIGKILL
        assert "SIGKILL" in str(err)
        assert ex.submit(square, 5).result(T) == 25
        results = ex.map(die, [None])
        with pytest.raises(WorkerLostError):
            next(results)
        assert list(ex.map(square, range(10))) == [x * x for x in range(10)]


def test_a_base_exception_in_a_task_fails_that_task_only():
    with ProcessPoolExecutor(1) as ex:
        with pytest.raises(SystemExit):
            ex.submit(exit_now).result(T)
        assert ex.submit(square, 6).result(T) == 36


def test_initializer_and_max_tasks_per_child():
    with ProcessPoolExecutor(1, initializer=remember, initargs=("ready",)) as ex:
        assert ex.submit(recall).result(T) == ["ready"]
    with ProcessPoolExecutor(1, max_tasks_per_child=2) as ex:
        pids = [ex.submit(pid).result(T) for _ in range(6)]
    assert len(set(pids)) == 3


def test_a_failing_initializer_breaks_the_executor():
    # Once the pool knows, submit raises; before, the future fails.
    with ProcessPoolExecutor(1, initializer=broken_init) as ex:
        for _ in range(2):
            with pytest.raises(cf.process.BrokenProcessPool) as info:
                ex.submit(square, 2).result(T)
            assert isinstance(info.value, BrokenPoolError)
            assert "initializer failed" in str(info.value)
        with pytest.raises(BrokenPoolError):
            list(ex.map(square, [1]))


def test_bad_arguments_raise_the_stdlib_errors():
    with pytest.raises(ValueError, match="max_workers must be greater than 0"):
        ProcessPoolExecutor(0)
    with pytest.raises(TypeError, match="max_tasks_per_child must be an integer"):
        ProcessPoolExecutor(1, max_tasks_per_child=1.5)
    with pytest.raises(ValueError, match="max_tasks_per_child must be >= 1"):
        ProcessPoolExecutor(1, max_tasks_per_child=0)
    with pytest.raises(TypeError, match="initializer must be a callable"):
        ProcessPoolExecutor(1, initializer=3)


def test_shutdown_waits_for_pending_work_then_refuses_more():
    ex = ProcessPoolExecutor(2)
    futures = [ex.submit(nap, 0.05) for _ in range(6)]
    ex.shutdown(wait=True)
    assert all(f.done() and f.result() == 0.05 for f in futures)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.submit(square, 1)
    with pytest.raises(RuntimeError, match="after shutdown"):
        ex.map(square, [1])
    ex.shutdown()                       # twice is fine


def test_shutdown_without_wait_still_runs_what_was_submitted():
    ex = ProcessPoolExecutor(2)
    futures = [ex.submit(nap, 0.05) for _ in range(4)]
    ex.shutdown(wait=False)
    assert [f.result(T) for f in futures] == [0.05] * 4
    ex._pool.join()


def test_shutdown_cancel_futures_stops_the_workers():
    ex = ProcessPoolExecutor(1)
    running = ex.submit(nap, 30)
    queued = [ex.submit(nap, 30) for _ in range(3)]
    start = time.monotonic()
    ex.shutdown(cancel_futures=True)
    assert time.monotonic() - start < 15
    for f in [running] + queued:
        with pytest.raises(cf.CancelledError):
            f.result(T)


def test_futures_run_from_submit_on_and_cannot_be_cancelled():
    with ProcessPoolExecutor(1) as ex:
        future = ex.submit(nap, 0.1)
        assert future.running()
        assert not future.cancel()
        assert future.result(T) == 0.1


def test_as_completed_wait_and_done_callbacks():
    with ProcessPoolExecutor(2) as ex:
        futures = [ex.submit(square, i) for i in range(20)]
        assert sorted(f.result() for f in cf.as_completed(futures, timeout=T)) == \
            sorted(i * i for i in range(20))
        done, not_done = cf.wait(futures, timeout=T)
        assert len(done) == 20 and not not_done
        seen = threading.Event()
        ex.submit(square, 3).add_done_callback(lambda f: f.result() == 9 and seen.set())
        assert seen.wait(T)


def test_a_collected_executor_finishes_its_work_and_leaves_no_process():
    ex = ProcessPoolExecutor(2)
    future = ex.submit(nap, 0.2)
    pids = [p.pid for p in ex._pool._pool]
    del ex
    gc.collect()
    assert future.result(T) == 0.2
    # (The workers are the pool's to join: here they only must be gone,
    # reaped, within the pool's 5 s terminate grace.)
    assert wait_for(lambda: not any(os.path.exists(f"/proc/{pid}") for pid in pids), T)


def test_exit_waits_for_pending_futures_as_the_stdlib_does(tmp_path):
    # A script that submits work and neither shuts down nor waits: the work
    # still completes before the interpreter exits.
    out = tmp_path / "out.txt"
    script = textwrap.dedent(f"""
        import time
        from mpx.futures import ProcessPoolExecutor

        def write(path):
            time.sleep(0.3)
            with open(path, "w") as f:
                f.write("done")

        if __name__ == "__main__":
            ex = ProcessPoolExecutor(1)
            ex.submit(write, {str(out)!r})
    """)
    path = tmp_path / "prog.py"
    path.write_text(script)
    subprocess.run([sys.executable, str(path)], check=True, timeout=T)
    assert out.read_text() == "done"


@pytest.mark.parametrize("backend", ["shm", "pipe"])
def test_backends(backend):
    with ProcessPoolExecutor(2, backend=backend) as ex:
        assert list(ex.map(square, range(30), chunksize=4)) == [x * x for x in range(30)]
        assert ex.submit(add, 2, 3).result(T) == 5
