"""mpx.Queue(backend="ray"): the queue contract over a real local Ray
instance (one per run, see ray_helpers), Ray tasks as the other processes,
named queues from a second driver, and what Ray cannot carry."""

import os
import queue
import signal
import textwrap
import threading
import time

import pytest

import mpx
import ray_tasks
from mpx.queues import ShutDown
from conftest import wait_for
from ray_helpers import gcs_address, ray_instance, run_driver  # noqa: F401

pytestmark = pytest.mark.usefixtures("ray_instance")


def remote(ray, func):
    return ray.remote(num_cpus=0)(func)


@pytest.fixture
def ray(ray_instance):
    return ray_instance


def test_fifo_and_timeouts():
    q = mpx.Queue(backend="ray")
    for i in range(20):
        q.put(i)
    assert [q.get(timeout=10) for _ in range(20)] == list(range(20))
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(False)
    t = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.3)
    assert 0.25 < time.monotonic() - t < 5
    with pytest.raises(ValueError):
        q.get(timeout=float("nan"))
    q.close()
    q.join_thread()


def test_maxsize_full_and_counts():
    q = mpx.Queue(3, backend="ray")
    assert q.maxsize == 3
    for i in range(3):
        q.put(i, timeout=5)
    with pytest.raises(queue.Full):
        q.put_nowait(99)
    t = time.monotonic()
    with pytest.raises(queue.Full):
        q.put(99, timeout=0.3)
    assert 0.25 < time.monotonic() - t < 5
    assert q.full() and q.qsize() == 3 and not q.empty()
    assert q.get(timeout=5) == 0
    q.put_nowait(3)
    assert [q.get(timeout=5) for _ in range(3)] == [1, 2, 3]
    assert q.empty()
    with pytest.raises(queue.Full) as info:
        q.put_many(range(5), timeout=0.2)
    assert info.value.put_count == 3
    assert q.get_many() == [0, 1, 2]


def test_more_waiters_than_the_actor_has_wait_threads():
    # 40 blocked gets against 32 wait threads: the calls beyond them start
    # when a slice ends, so every getter is served and none hangs.
    from mpx.backends.ray._queue import _WAITERS
    q = mpx.Queue(backend="ray")
    n = _WAITERS + 8
    got, errors = [], []

    def getter():
        try:
            got.append(q.get(timeout=60))
        except BaseException as e:
            errors.append(e)
    threads = [threading.Thread(target=getter) for _ in range(n)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    q.put_many(range(n))
    for t in threads:
        t.join(60)
    assert not errors and sorted(got) == list(range(n))
    q.close()


def test_a_wait_longer_than_one_slice_and_a_blocked_put_go_on():
    from mpx.backends.ray._queue import _SLICE
    q = mpx.Queue(1, backend="ray")
    t = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=_SLICE + 0.5)
    assert _SLICE + 0.4 < time.monotonic() - t < _SLICE + 5
    q.put("a")
    threading.Timer(_SLICE + 0.5, q.get).start()
    q.put("b", timeout=30)           # waits over a slice for the Timer's get
    assert q.get(timeout=5) == "b"
    q.close()


def test_ctrl_c_during_a_get_gives_back_what_the_call_took():
    # SIGINT while get() waits in the actor; the item a thread puts right
    # after is taken by that call, and must be back in the queue.
    q = mpx.Queue(backend="ray")
    pid = os.getpid()
    threading.Timer(0.3, os.kill, (pid, signal.SIGINT)).start()
    threading.Timer(0.6, q.put, ("taken",)).start()
    with pytest.raises(KeyboardInterrupt):
        q.get(timeout=30)
    assert q.get(timeout=10) == "taken"
    assert q.qsize() == 0
    q.close()


@pytest.mark.parametrize("how", ["blocking", "awaited"])
def test_abandoning_a_call_that_took_items_puts_them_back_in_order(ray, how):
    # What Ctrl-C and cancellation do once the waiting call has answered
    # with items (the abort came too late): they go back in front, in order,
    # before _abandon returns, and the stale abort harms no later call.
    import asyncio
    q = mpx.Queue(backend="ray")
    q.put_many(["a", "b", "c"])
    ref = q._actor.get_wait.remote(2, 5.0, "late")
    ready, _ = ray.wait([ref], timeout=10)
    assert ready                     # it took "a" and "b"
    if how == "blocking":
        q._abandon(ray, ref, "late")
    else:
        asyncio.run(q._abandon_async(ref, "late"))
    assert q.qsize() == 3
    assert q.get_many(timeout=5) == ["a", "b", "c"]
    q.put("d")
    assert q.get(timeout=5) == "d"
    q.close()


def test_none_timeout_waits_for_a_task(ray):
    q = mpx.Queue(backend="ray")
    ref = remote(ray, ray_tasks.put_later).remote(q, 0.5, "late")
    assert q.get() == "late"
    ray.get(ref, timeout=30)


def test_round_trip_through_a_task_and_a_lambda(ray):
    inq, outq = mpx.Queue(backend="ray"), mpx.Queue(backend="ray")
    items = [1, "ab", (1, 2), b"x" * 100_000]
    ref = remote(ray, ray_tasks.echo).remote(inq, outq, len(items) + 1)
    for item in items:
        inq.put(item)
    k = 21
    inq.put_many([lambda x: x + k])       # a closure travels (cloudpickle fallback)
    assert [outq.get(timeout=30) for _ in items] == [i * 2 for i in items]
    assert outq.get(timeout=30) == 42
    assert ray.get(ref, timeout=30) == len(items) + 1


def test_unpicklable_object_raises_from_put_and_leaves_queue_unchanged():
    q = mpx.Queue(backend="ray")
    q.put("before")
    with pytest.raises(TypeError, match="lock"):
        q.put(threading.Lock())
    with pytest.raises(TypeError):
        q.put_many([1, threading.Lock(), 3])
    q.put("after")
    assert q.get_many(timeout=5) == ["before", "after"]


def test_put_many_get_many():
    q = mpx.Queue(backend="ray")
    q.put_many(range(10))
    got = []
    while len(got) < 10:
        batch = q.get_many(max_items=4, timeout=5)
        assert 1 <= len(batch) <= 4
        got += batch
    assert got == list(range(10))
    with pytest.raises(queue.Empty):
        q.get_many(max_items=5, timeout=0.1)
    with pytest.raises(ValueError):
        q.get_many(max_items=0)


def test_after_close_calls_raise_value_error():
    q = mpx.Queue(backend="ray")
    q.close()
    q.close()
    with pytest.raises(ValueError):
        q.put(1)
    with pytest.raises(ValueError):
        q.get(False)
    with pytest.raises(ValueError):
        q.qsize()


def test_shutdown():
    q = mpx.Queue(backend="ray")
    q.put_many([1, 2])
    q.shutdown()
    assert q.is_shutdown
    with pytest.raises(ShutDown):
        q.put(3)
    assert q.get_many() == [1, 2]
    with pytest.raises(ShutDown):
        q.get(timeout=5)
    q2 = mpx.Queue(backend="ray")
    q2.put_many([1, 2])
    q2.shutdown(immediate=True)
    assert q2.qsize() == 0
    with pytest.raises(ShutDown):
        q2.get(timeout=5)


def test_shutdown_wakes_a_blocked_get():
    q = mpx.Queue(backend="ray")
    errors = []

    def blocked():
        try:
            q.get(timeout=30)
        except BaseException as e:
            errors.append(e)
    t = threading.Thread(target=blocked)
    t.start()
    time.sleep(0.5)
    q.shutdown()
    t.join(10)
    assert not t.is_alive() and isinstance(errors[0], ShutDown)


def test_simple_queue():
    q = mpx.SimpleQueue(backend="ray")
    assert q.empty()
    q.put("a")
    q.put_many(["b", "c"])
    assert [q.get() for _ in range(3)] == ["a", "b", "c"]
    assert q.empty()
    q.close()


def test_joinable_queue(ray):
    q = mpx.JoinableQueue(backend="ray")
    q.put_many(range(5))
    assert q.join(timeout=0.2) is False
    for _ in range(5):
        q.get(timeout=5)
        q.task_done()
    assert q.join(timeout=5) is True
    with pytest.raises(ValueError):
        q.task_done()


def test_named_queue_is_found_by_a_second_driver(ray):
    name = f"jobs-{time.monotonic_ns()}"
    q = mpx.Queue(backend="ray", name=name)
    try:
        q.put_many(["from the first driver", 1, 2])
        code = textwrap.dedent(f"""
            import mpx
            q = mpx.Queue(backend="ray", name={name!r}, create=False)
            print(q.get_many(timeout=30))
            q.put("from the second driver")
        """)
        rc, out, err = run_driver(code, RAY_ADDRESS=gcs_address(ray))
        assert rc == 0, err[-3000:]
        assert "['from the first driver', 1, 2]" in out
        assert q.get(timeout=30) == "from the second driver"
        with pytest.raises(ValueError, match="not a JoinableQueue"):
            mpx.JoinableQueue(backend="ray", name=name)
    finally:
        q.unlink()
    assert wait_for(lambda: _gone(ray, name), 20)
    with pytest.raises(FileNotFoundError):
        mpx.Queue(backend="ray", name=name, create=False)
    with pytest.raises(ConnectionError):
        q.get(timeout=5)
    q.unlink()                       # idempotent


def _gone(ray, name):
    try:
        ray.get_actor("mpx-queue:" + name, namespace="mpx")
    except ValueError:
        return True
    return False


def test_named_queue_outlives_its_creator_anonymous_does_not(ray):
    name = f"kept-{time.monotonic_ns()}"
    code = textwrap.dedent(f"""
        import mpx
        named = mpx.Queue(backend="ray", name={name!r})
        named.put("still here")
        anon = mpx.Queue(backend="ray")
        anon.put("gone with me")
        print(anon._actor_name)
    """)
    rc, out, err = run_driver(code, RAY_ADDRESS=gcs_address(ray))
    assert rc == 0, err[-3000:]
    anon_name = out.strip().splitlines()[-1][len("mpx-queue:"):]
    q = mpx.Queue(backend="ray", name=name, create=False)
    try:
        assert q.get(timeout=30) == "still here"
    finally:
        q.unlink()
    assert wait_for(lambda: _gone(ray, anon_name), 30), \
        "the anonymous queue's actor outlived the driver that made it"


def test_queue_passed_to_a_task_as_an_argument_by_pickle(ray):
    import pickle
    q = mpx.Queue(backend="ray")
    again = pickle.loads(pickle.dumps(q))
    again.put("same queue")
    assert q.get(timeout=10) == "same queue"


def test_local_objects_are_refused_with_the_reason():
    q = mpx.Queue(backend="ray")
    shm = mpx.Queue(backend="shm")
    try:
        with pytest.raises(TypeError, match="local to this machine.*backend='ray'"):
            q.put(shm)
        with pytest.raises(TypeError, match="local to this machine"):
            q.put_many([1, {"q": shm}])
        assert q.empty()
        q.put(b"mpx.backends.shm")     # data that merely looks like it travels
        assert q.get(timeout=5) == b"mpx.backends.shm"
    finally:
        shm.close()


def test_mpx_backend_env_moves_an_unchanged_program(ray):
    code = textwrap.dedent("""
        import mpx
        q = mpx.Queue()
        print(type(q).__name__)
        q.put_many(range(3))
        with mpx.Pool(2) as pool:
            print(pool.map(abs, [-1, -2, q.get(timeout=30)]))
    """)
    rc, out, err = run_driver(code, RAY_ADDRESS=gcs_address(ray), MPX_BACKEND="ray")
    assert rc == 0, err[-3000:]
    assert out.split() == ["RayQueue", "[1,", "2,", "0]"]


def test_fork_child_gets_a_clear_error(ray):
    import multiprocessing
    q = mpx.Queue(backend="ray")
    ctx = multiprocessing.get_context("fork")
    r, w = ctx.Pipe(duplex=False)

    def child():
        try:
            q.put(1)
            w.send("no error")
        except RuntimeError as e:
            w.send(str(e))
    p = ctx.Process(target=child)
    p.start()
    assert r.poll(30)
    assert "does not survive fork" in r.recv()
    p.join(10)
    assert p.exitcode == 0


def test_spawned_child_joins_the_cluster_to_use_a_queue(ray):
    # A child of another start method unpickles the queue by name and joins
    # the cluster by itself (RAY_ADDRESS is not needed: the queue carries it).
    import multiprocessing
    q = mpx.Queue(backend="ray")
    p = multiprocessing.get_context("spawn").Process(target=ray_tasks.put_later,
                                                     args=(q, 0, "from a spawned child"))
    p.start()
    try:
        assert q.get(timeout=60) == "from a spawned child"
    finally:
        p.join(60)
        if p.is_alive():
            p.kill()
            p.join(5)
    assert p.exitcode == 0


# -- for coroutines ------------------------------------------------------

LOOPS = ("asyncio", "uvloop")


def run_loop(coro, loop_kind):
    """Run `coro` on a fresh loop of `loop_kind`, bounded in time."""
    import asyncio
    if loop_kind == "uvloop":
        loop = pytest.importorskip("uvloop").new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro, 60))
    finally:
        loop.close()


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_awaited_put_get_get_many_and_async_for(ray, loop_kind):
    q = mpx.Queue(2, backend="ray")

    async def main():
        await q.put_async(1)
        await q.put_async(lambda x: x + 1)       # lambdas travel, as with put
        assert await q.get_async(timeout=10) == 1
        assert (await q.get_async(timeout=10))(1) == 2
        with pytest.raises(queue.Empty):
            await q.get_async(timeout=0.2)
        await q.put_async("a")
        await q.put_async("b")
        with pytest.raises(queue.Full):
            await q.put_async("c", timeout=0.2)
        assert await q.get_many_async(timeout=10) == ["a", "b"]
        ref = remote(ray, ray_tasks.put_later).remote(q, 0.3, "from a task")
        got = [item async for item in _until_shutdown(q, ray, ref)]
        return got

    assert run_loop(main(), loop_kind) == ["from a task"]
    q.close()


async def _until_shutdown(q, ray, ref):
    # The task's item, then the queue is shut down: async for ends.
    async for item in q:
        yield item
        await ref
        q.shutdown()


def test_a_cancelled_get_async_loses_nothing(ray):
    # Items arrive from a thread around the moment each waiting get_async is
    # cancelled: every item is either returned or still in the queue.
    import asyncio
    q = mpx.Queue(backend="ray")
    n = 12

    async def main():
        got = []
        for i in range(n):
            task = asyncio.ensure_future(q.get_async())
            await asyncio.sleep(0.05)
            threading.Timer(0.02 * (i % 4), q.put, (i,)).start()
            await asyncio.sleep(0.02 * (i % 3))
            task.cancel()
            try:
                got.append(await task)
            except asyncio.CancelledError:
                pass
        return got

    got = run_loop(main(), "asyncio")
    time.sleep(0.5)                 # the last Timer's put
    rest = q.get_many(timeout=10) if len(got) < n else []
    assert sorted(got + rest) == list(range(n))
    q.close()


def test_wait_for_times_out_and_a_cancelled_put_puts_nothing_later(ray):
    import asyncio
    q = mpx.Queue(1, backend="ray")
    q.put("first")

    empty = mpx.Queue(backend="ray")   # made here: not inside the 0.3 s

    async def main():
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(q.put_async("second"), 0.3)
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(empty.get_async(), 0.3)

    run_loop(main(), "asyncio")
    empty.put("x")
    assert empty.get(timeout=10) == "x"   # the cancelled get took nothing
    empty.close()
    assert q.get(timeout=10) == "first"
    time.sleep(1.5)                 # longer than a waiting call's slice
    assert q.qsize() == 0           # the cancelled put did not go in later
    q.close()


def test_abort_ends_a_waiting_call_at_once(ray):
    # What cancellation and Ctrl-C rely on: the actor's waiting call answers
    # as soon as its caller says it gave up, not at the end of its wait.
    q = mpx.Queue(backend="ray")
    ref = q._actor.get_wait.remote(1, 30.0, "tok")
    time.sleep(0.3)
    q._actor.abort.remote("tok")
    from mpx.backends.ray._queue import _EMPTY
    assert ray.get(ref, timeout=10) == _EMPTY
    q.close()


def test_a_queue_removed_while_a_coroutine_awaits_it_raises_connection_error(ray):
    import asyncio
    q = mpx.Queue(backend="ray", name=f"gone-{time.monotonic_ns()}")

    async def main():
        waiting = asyncio.ensure_future(q.get_async())
        await asyncio.sleep(0.3)
        q.unlink()
        with pytest.raises(ConnectionError, match="is gone"):
            await waiting

    run_loop(main(), "asyncio")
    q.close()
