"""mpx.Pool(backend="ray"): the local pool's API and rules, over worker
actors on a real local Ray instance (one per run, see ray_helpers)."""

import os
import signal
import textwrap
import threading
import time

import pytest

import mpx
import ray_tasks
from mpx.pool import BrokenPoolError, PoolTerminatedError, RemoteTraceback, WorkerLostError
from ray_helpers import gcs_address, ray_instance, run_driver  # noqa: F401

pytestmark = pytest.mark.usefixtures("ray_instance")


@pytest.fixture
def pool():
    with mpx.Pool(2, backend="ray") as p:
        yield p


def test_map_starmap_apply_imap(pool):
    assert pool.map(ray_tasks.square, range(100)) == [x * x for x in range(100)]
    assert pool.map(ray_tasks.square, range(100), chunksize=7) == [x * x for x in range(100)]
    assert pool.map(ray_tasks.square, []) == []
    assert pool.starmap(ray_tasks.add, [(1, 2), (3, 4)]) == [3, 7]
    assert pool.apply(ray_tasks.add, (1,), {"b": 5}) == 6
    assert list(pool.imap(ray_tasks.square, range(50))) == [x * x for x in range(50)]
    assert list(pool.imap(ray_tasks.square, iter(range(50)), chunksize=4)) == \
        [x * x for x in range(50)]
    assert sorted(pool.imap_unordered(ray_tasks.square, range(50))) == \
        sorted(x * x for x in range(50))
    assert list(pool.imap(ray_tasks.square, range(20), buffersize=3)) == \
        [x * x for x in range(20)]


def test_lambdas_and_closures_travel(pool):
    k = 3
    assert pool.map(lambda x: x + k, range(5)) == [3, 4, 5, 6, 7]
    assert pool.apply(lambda: "closure") == "closure"


def test_async_results_and_callbacks(pool):
    got, errors = [], []
    r = pool.map_async(ray_tasks.square, range(10), callback=got.append)
    assert r.get(timeout=60) == [x * x for x in range(10)]
    assert got == [[x * x for x in range(10)]]
    e = pool.apply_async(ray_tasks.fail, (1,), error_callback=errors.append)
    e.wait(60)
    assert e.ready() and not e.successful()
    assert isinstance(errors[0], ValueError)
    slow = pool.apply_async(ray_tasks.slow_square, (3, 2.0))
    with pytest.raises(mpx.TimeoutError):
        slow.get(timeout=0.1)
    assert slow.get(timeout=60) == 9


def test_exception_carries_the_remote_traceback(pool):
    with pytest.raises(ValueError, match="task failed on 4") as info:
        pool.map(ray_tasks.fail, [4])
    cause = info.value.__cause__
    assert isinstance(cause, RemoteTraceback)
    assert "ray_tasks.py" in str(cause) and "raise ValueError" in str(cause)


def test_unserializable_argument_raises_in_the_caller(pool):
    with pytest.raises(TypeError):
        pool.apply_async(ray_tasks.square, (threading.Lock(),))
    assert pool.map(ray_tasks.square, [2]) == [4]


def test_initializer_runs_in_every_worker():
    with mpx.Pool(2, initializer=ray_tasks.set_state, initargs=("ready",),
                  backend="ray") as p:
        assert set(p.map(ray_tasks.get_state, range(20), chunksize=1)) == {"ready"}


def test_initializer_that_raises_breaks_the_pool():
    with mpx.Pool(1, initializer=ray_tasks.raise_in_init, backend="ray") as p:
        with pytest.raises(BrokenPoolError, match="initializer") as info:
            p.map(ray_tasks.square, range(4))
        assert isinstance(info.value.__cause__, RuntimeError)
        with pytest.raises(BrokenPoolError):
            p.apply(ray_tasks.square, (1,))


def test_maxtasksperchild_replaces_workers():
    with mpx.Pool(1, maxtasksperchild=3, backend="ray") as p:
        pids = p.map(ray_tasks.pid_of, range(9), chunksize=1)
    assert len(set(pids)) == 3
    assert all(pids[i] == pids[i - i % 3] for i in range(9))


def test_close_join_finishes_the_work():
    p = mpx.Pool(2, backend="ray")
    r = p.map_async(ray_tasks.slow_square, range(10), chunksize=1)
    p.close()
    with pytest.raises(ValueError):
        p.apply(ray_tasks.square, (1,))
    p.join()
    assert r.get(timeout=0) == [x * x for x in range(10)]


def test_terminate_fails_what_is_pending():
    p = mpx.Pool(2, backend="ray")
    r = p.apply_async(ray_tasks.slow_square, (2, 30.0))
    time.sleep(0.5)
    t = time.monotonic()
    p.terminate()
    assert time.monotonic() - t < 20
    with pytest.raises(PoolTerminatedError):
        r.get(timeout=5)
    p.join()


def test_default_size_is_the_clusters_cpus(ray_instance):
    with mpx.Pool(backend="ray") as p:
        assert p._processes == int(ray_instance.cluster_resources()["CPU"]) == 2
        assert p.map(ray_tasks.square, range(8)) == [x * x for x in range(8)]
    assert ray_instance.is_initialized(), "mpx shut down a Ray the program started"


def test_killed_worker_fails_its_tasks_and_the_pool_goes_on(pool):
    # Both workers up (tasks go only to actors that exist, so the first
    # maps may all run on the first one ready).
    pids = set()
    deadline = time.monotonic() + 30
    while len(pids) < 2 and time.monotonic() < deadline:
        pids |= set(pool.map(ray_tasks.pid_of, range(20), chunksize=1))
    assert len(pids) == 2
    r = pool.apply_async(ray_tasks.slow_square, (5, 60.0))
    # Which worker runs it: the one busy for a minute.
    deadline = time.monotonic() + 30
    victim = None
    import psutil
    while victim is None and time.monotonic() < deadline:
        for pid in pids:
            try:
                if psutil.Process(pid).cpu_times() and _runs_sleep(pid):
                    victim = pid
            except psutil.Error:
                pass
        time.sleep(0.1)
    assert victim is not None
    os.kill(victim, signal.SIGKILL)
    with pytest.raises(WorkerLostError, match="lost") as info:
        r.get(timeout=60)
    assert info.value.pid == victim
    assert pool.map(ray_tasks.square, range(10), chunksize=1) == [x * x for x in range(10)]


def _runs_sleep(pid):
    # The worker in the middle of slow_square is sleeping (state S) with no
    # CPU use; the idle one is waiting too, so look at its stack instead.
    try:
        with open(f"/proc/{pid}/wchan") as f:
            wchan = f.read()
    except OSError:
        return False
    return "hrtimer" in wchan or "nanosleep" in wchan


def test_ray_options_only_for_the_ray_backend():
    with pytest.raises(TypeError, match="backend='ray'"):
        mpx.Pool(1, backend="pipe", ray_address="127.0.0.1:6379")


def test_local_objects_in_tasks_are_refused(pool):
    shm = mpx.Queue(backend="shm")
    try:
        with pytest.raises(TypeError, match="local to this machine"):
            pool.apply_async(ray_tasks.square, (shm,))
        with pytest.raises(TypeError, match="local to this machine"):
            pool.map(lambda x: shm.put(x), range(3))
    finally:
        shm.close()


def test_a_pool_shuts_down_only_the_ray_it_started(ray_instance):
    code = textwrap.dedent("""
        import ray, mpx, ray_tasks
        with mpx.Pool(2, backend="ray") as p:
            assert p.map(ray_tasks.square, range(4)) == [0, 1, 4, 9]
        print("after own pool:", ray.is_initialized())
        ray.init(address="auto")
        with mpx.Pool(2, backend="ray") as p:
            p.map(ray_tasks.square, range(4))
        print("after user's ray:", ray.is_initialized())
    """)
    # The second driver joins the run's instance through RAY_ADDRESS.
    rc, out, err = run_driver(code, RAY_ADDRESS=gcs_address(ray_instance))
    assert rc == 0, err[-3000:]
    assert "after own pool: False" in out and "after user's ray: True" in out
