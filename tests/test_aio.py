"""The awaitable face: get_async/put_async/get_many_async/``async for`` on
every queue family of every local backend, and awaiting Pool results, on
asyncio's default loop and on uvloop. Nothing is lost to cancellation or
timeouts, and no thread is made per waiting coroutine."""

import asyncio
import os
import queue
import threading
import time

import pytest

import mpx
from conftest import backends_for, join_all
from mpx.queues import ShutDown

T = 60
LOOPS = ("asyncio", "uvloop")
QUEUES = [(family, backend) for family in ("Queue", "SimpleQueue", "JoinableQueue")
          for backend in backends_for(family)]
PRIORITY = [("PriorityQueue", b) for b in backends_for("PriorityQueue")]


def run(coro, loop_kind):
    """Run `coro` on a fresh loop of `loop_kind`, bounded in time."""
    if loop_kind == "uvloop":
        uvloop = pytest.importorskip("uvloop")
        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        return loop.run_until_complete(asyncio.wait_for(coro, T))
    finally:
        loop.close()


def make(family, backend, **kw):
    return getattr(mpx, family)(backend=backend, **kw)


def dispose(q):
    q.close()
    unlink = getattr(q, "unlink", None)
    if unlink is not None:
        try:
            unlink()
        except Exception:
            pass


def sync_put(q, item):
    q.put(item)


def _child_puts(q, n):
    for i in range(n):
        q.put(i)


def blocking_get(q):
    # The stdlib's SimpleQueue (the pipe backend's) takes no timeout.
    if type(q).__name__ == "PipeSimpleQueue":
        return q.get()
    return q.get(timeout=T)


def _child_gets(q, out, n):
    out.put(sorted(blocking_get(q) for _ in range(n)))


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("family,backend", QUEUES + PRIORITY)
def test_get_and_put_async_round_trip(family, backend, loop_kind):
    q = make(family, backend)

    async def main():
        async def producer():
            for i in range(20):
                if i % 5 == 0:
                    await asyncio.sleep(0.005)
                await q.put_async(i)
        task = asyncio.ensure_future(producer())
        got = [await q.get_async(timeout=T) for _ in range(20)]
        await task
        with pytest.raises(queue.Empty):
            await q.get_async(timeout=0.05)
        with pytest.raises(queue.Empty):
            await q.get_async(timeout=-1)
        return got

    try:
        got = run(main(), loop_kind)
        assert sorted(got) == list(range(20))
        if family != "PriorityQueue":
            assert got == list(range(20))
    finally:
        dispose(q)


@pytest.mark.parametrize("family,backend", QUEUES)
def test_the_first_look_of_an_awaited_get(family, backend):
    # get_async's first look (_aio_get_or; compiled for shm) returns its
    # default when nothing is there, the item when one is, and raises what
    # get_nowait raises once the queue is shut down or closed.
    q = make(family, backend)
    nothing = object()
    try:
        assert q._aio_get_or(nothing) is nothing
        sync_put(q, "x")
        wait_for_item(q)
        assert q._aio_get_or(nothing) == "x"
        assert q._aio_get_or(nothing) is nothing
        if hasattr(q, "shutdown"):
            q.shutdown()
            with pytest.raises(ShutDown):
                q._aio_get_or(nothing)
        q.close()
        with pytest.raises((ValueError, OSError)):
            q._aio_get_or(nothing)
    finally:
        dispose(q)


def wait_for_item(q):
    # The pipe backend's Queue has a feeder thread: the item is in the pipe
    # a moment after put() returns.
    deadline = time.monotonic() + T
    while q.empty() and time.monotonic() < deadline:
        time.sleep(0.001)


@pytest.mark.parametrize("family,backend", QUEUES)
def test_sync_and_async_users_mix_in_one_process(family, backend):
    q = make(family, backend)

    async def main():
        # A thread puts with the blocking API while the coroutine awaits.
        t = threading.Timer(0.1, sync_put, (q, "from a thread"))
        t.start()
        got = await q.get_async(timeout=T)
        t.join(T)
        await q.put_async("from a coroutine")
        return got

    try:
        assert run(main(), "asyncio") == "from a thread"
        assert blocking_get(q) == "from a coroutine"
    finally:
        dispose(q)


@pytest.mark.parametrize("family,backend", QUEUES)
def test_across_processes(family, backend):
    ctx = mpx.get_context("fork")
    q = make(family, backend)
    out = mpx.SimpleQueue()
    try:
        p = ctx.Process(target=_child_puts, args=(q, 50))
        p.start()

        async def take():
            return [await q.get_async(timeout=T) for _ in range(50)]
        assert sorted(run(take(), "asyncio")) == list(range(50))
        join_all([p])
        c = ctx.Process(target=_child_gets, args=(q, out, 30))
        c.start()

        async def give():
            for i in range(30):
                await q.put_async(i)
        run(give(), "asyncio")
        assert out.get(timeout=T) == list(range(30))
        join_all([c])
    finally:
        dispose(q)
        out.close()


WATCHABLE = [fb for fb in QUEUES if fb[1] in ("shm", "pipe")]


@pytest.mark.parametrize("family,backend", WATCHABLE)
def test_get_async_on_a_watched_queue(family, backend):
    # Once someone holds the read end's descriptor (q._reader.fileno(), as
    # code written for the stdlib queue does), takes go the general way,
    # whose first look raises Empty: the awaited get must wait, not fail.
    q = make(family, backend)
    try:
        assert q._reader.fileno() >= 0

        async def main():
            with pytest.raises(queue.Empty):
                await q.get_async(timeout=0.05)
            threading.Timer(0.1, sync_put, (q, "late")).start()
            late = await q.get_async(timeout=T)
            for i in range(3):
                sync_put(q, i)
            return late, [await q.get_async(timeout=T) for _ in range(3)]

        assert run(main(), "asyncio") == ("late", [0, 1, 2])
    finally:
        dispose(q)


def _child_takes_until_none(q, out):
    got = []
    while True:
        item = blocking_get(q)
        if item is None:
            break
        got.append(item)
    out.put(got)


@pytest.mark.parametrize("family,backend", QUEUES)
def test_an_awaited_get_and_a_consumer_in_another_process_share_a_queue(family, backend):
    # Two consumers race for each item (the other one may take it between
    # the coroutine's look and its take): each item is taken exactly once.
    ctx = mpx.get_context("fork")
    q = make(family, backend)
    out = mpx.SimpleQueue()
    n = 300
    try:
        child = ctx.Process(target=_child_takes_until_none, args=(q, out))
        child.start()

        def produce():
            for i in range(n):
                q.put(i)
                if i % 10 == 0:
                    time.sleep(0.001)
            q.put(None)
            q.put(None)

        async def consume():
            got = []
            while True:
                item = await q.get_async(timeout=T)
                if item is None:
                    return got
                got.append(item)

        producer = threading.Thread(target=produce)
        producer.start()
        mine = run(consume(), "asyncio")
        producer.join(T)
        theirs = out.get(timeout=T)
        join_all([child])
        assert sorted(mine + theirs) == list(range(n))
        assert mine == sorted(mine) and theirs == sorted(theirs)   # FIFO each
    finally:
        dispose(q)
        out.close()


@pytest.mark.parametrize("family,backend", QUEUES)
def test_get_many_async(family, backend):
    q = make(family, backend)

    async def main():
        for i in range(5):
            await q.put_async(i)
        first = await q.get_many_async(max_items=3, timeout=T)
        rest = await q.get_many_async(timeout=T)
        return first, rest

    try:
        first, rest = run(main(), "asyncio")
        assert len(first) <= 3 and first + rest == list(range(len(first + rest)))
        # What is left (a pipe queue's items may arrive one by one) is there.
        left = []
        while len(first) + len(rest) + len(left) < 5:
            left.append(blocking_get(q))
        assert first + rest + left == list(range(5))
    finally:
        dispose(q)


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("family,backend", [fb for fb in QUEUES if fb[0] != "SimpleQueue"])
def test_put_async_waits_for_room_and_times_out(family, backend, loop_kind):
    q = make(family, backend, maxsize=1)

    async def main():
        await q.put_async("a")
        start = time.monotonic()
        with pytest.raises(queue.Full):
            await q.put_async("b", timeout=0.1)
        assert time.monotonic() - start < 5
        # Room made by another thread lets a waiting put_async through.
        threading.Timer(0.1, q.get).start()
        await q.put_async("c", timeout=T)

    try:
        run(main(), loop_kind)
        assert q.get(timeout=T) == "c"
    finally:
        dispose(q)


@pytest.mark.parametrize("family,backend", QUEUES)
def test_cancelled_waits_lose_nothing(family, backend):
    """wait_for timeouts and cancellations while items keep arriving: every
    item is taken exactly once, by a coroutine or afterwards."""
    q = make(family, backend)
    n = 200

    async def main():
        got = []

        async def producer():
            for i in range(n):
                await q.put_async(i)
                if i % 7 == 0:
                    await asyncio.sleep(0.001)

        async def consumer():
            while True:
                try:
                    got.append(await asyncio.wait_for(q.get_async(), 0.0005))
                except asyncio.TimeoutError:
                    pass

        prod = asyncio.ensure_future(producer())
        consumers = [asyncio.ensure_future(consumer()) for _ in range(4)]
        await prod
        await asyncio.sleep(0.05)
        for c in consumers:
            c.cancel()
        await asyncio.gather(*consumers, return_exceptions=True)
        return got

    try:
        got = run(main(), "asyncio")
        while len(got) < n:
            got.append(blocking_get(q))
        assert sorted(got) == list(range(n))
        assert q.empty()
    finally:
        dispose(q)


@pytest.mark.parametrize("family,backend", QUEUES)
def test_a_thousand_coroutines_wait_without_a_thread_each(family, backend):
    q = make(family, backend)
    n = 1000

    async def main():
        waiters = [asyncio.ensure_future(q.get_async(timeout=T)) for _ in range(n)]
        await asyncio.sleep(0.1)
        threads = threading.active_count()
        for i in range(n):
            await q.put_async(i)
        got = await asyncio.gather(*waiters)
        return threads, got

    before = threading.active_count()
    try:
        threads, got = run(main(), "asyncio")
        # At most one helper thread (the SysV poller, or the shm watcher).
        assert threads <= before + 1
        assert sorted(got) == list(range(n))
        # Their registration left with them: the next get_async may wait in
        # place again (see mpx._aio's notes on spinning).
        assert mpx._aio._nobody_waits(q)
    finally:
        dispose(q)


@pytest.mark.parametrize("family,backend", QUEUES)
def test_closing_the_queue_ends_waiting_coroutines(family, backend):
    q = make(family, backend)

    async def main():
        waiter = asyncio.ensure_future(q.get_async())
        await asyncio.sleep(0.05)
        closer = threading.Timer(0.05, q.close)
        closer.start()
        start = time.monotonic()
        with pytest.raises((ValueError, OSError)):
            await waiter
        took = time.monotonic() - start
        # (The waiter may wake while close() is half done: a stdlib
        # SimpleQueue closes its reader, then its writer.)
        closer.join(T)
        return took

    try:
        assert run(main(), "asyncio") < 5
    finally:
        dispose(q)


def test_async_for_ends_at_shutdown():
    q = mpx.Queue(backend="shm")

    async def main():
        async def producer():
            for i in range(10):
                await q.put_async(i)
            q.shutdown()
        task = asyncio.ensure_future(producer())
        got = [item async for item in q]
        await task
        return got

    try:
        assert run(main(), "asyncio") == list(range(10))
    finally:
        q.close()


@pytest.mark.parametrize("family,backend", QUEUES)
def test_async_for_ends_when_closed_in_this_process(family, backend):
    q = make(family, backend)

    async def main():
        got = []

        async def consume():
            async for item in q:
                got.append(item)
        task = asyncio.ensure_future(consume())
        for i in range(3):
            await q.put_async(i)
        while len(got) < 3:
            await asyncio.sleep(0.01)
        q.close()
        await task
        return got

    try:
        assert run(main(), "asyncio") == [0, 1, 2]
    finally:
        dispose(q)


def test_priority_put_async_takes_a_priority():
    backend = PRIORITY[0][1] if PRIORITY else pytest.skip("no PriorityQueue backend")
    q = mpx.PriorityQueue(backend=backend)

    async def main():
        await q.put_async("low", priority=1)
        await q.put_async("high", priority=5)
        return [await q.get_async(timeout=T) for _ in range(2)]

    try:
        assert run(main(), "asyncio") == ["high", "low"]
    finally:
        dispose(q)


# ------------------------------------------------------------ the Pool

def square(x):
    return x * x


def fail(x):
    raise ValueError(f"bad {x}")


@pytest.mark.parametrize("loop_kind", LOOPS)
def test_pool_results_are_awaitable(loop_kind):
    async def main(pool):
        assert await pool.apply_async(square, (7,)) == 49
        assert await pool.map_async(square, range(10)) == [x * x for x in range(10)]
        assert await pool.starmap_async(pow, [(2, 3), (3, 2)]) == [8, 9]
        with pytest.raises(ValueError, match="bad 1"):
            await pool.apply_async(fail, (1,))
        assert [x async for x in pool.imap(square, range(20))] == [x * x for x in range(20)]
        assert [x async for x in pool.imap(square, range(20), chunksize=3)] == \
            [x * x for x in range(20)]
        assert sorted([x async for x in pool.imap_unordered(square, range(20))]) == \
            sorted(x * x for x in range(20))
        with pytest.raises(ValueError, match="bad 0"):
            [x async for x in pool.imap(fail, range(3))]
        # Awaiting does not block the loop: other coroutines run meanwhile.
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.01)
        t = asyncio.ensure_future(ticker())
        await pool.apply_async(time.sleep, (0.3,))
        t.cancel()
        assert ticks >= 5

    with mpx.Pool(2) as pool:
        run(main(pool), loop_kind)


def test_a_cancelled_await_leaves_the_task_running():
    async def main(pool):
        result = pool.apply_async(time.sleep, (0.2,))
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(asyncio.ensure_future(_awaited(result)), 0.01)
        assert await result is None
        assert result.successful()

    with mpx.Pool(1) as pool:
        run(main(pool), "asyncio")


async def _awaited(result):
    return await result


def test_no_thread_per_awaited_result():
    async def main(pool):
        before = threading.active_count()
        results = [pool.apply_async(square, (i,)) for i in range(500)]
        values = await asyncio.gather(*(_awaited(r) for r in results))
        assert threading.active_count() <= before
        return values

    with mpx.Pool(2) as pool:
        assert run(main(pool), "asyncio") == [i * i for i in range(500)]
        assert os.getpid()  # (the pool is closed by the with block)


# ------------------------------------------------------------ connections

PIPES = [(backend, duplex) for backend in backends_for("Pipe") for duplex in (True, False)]


def _child_sends(conn, n):
    for i in range(n):
        conn.send(i)
        if i % 10 == 0:
            time.sleep(0.001)
    conn.close()


def _child_waits(conn):
    time.sleep(60)


@pytest.mark.parametrize("loop_kind", LOOPS)
@pytest.mark.parametrize("backend,duplex", PIPES)
def test_connection_round_trip_in_one_loop(backend, duplex, loop_kind):
    a, b = mpx.Pipe(duplex, backend=backend)
    big = os.urandom(9 << 20)      # larger than an shm ring, and than a pipe

    async def main():
        async def sender():
            for i in range(3):
                await b.send_async(i)
            await b.send_async(big)
            await b.send_async("after")
        task = asyncio.ensure_future(sender())
        got = [await a.recv_async() for _ in range(3)]
        blob = await a.recv_async()
        after = await a.recv_async()
        await task
        assert not await a.poll_async(0.05)
        b.close()
        assert await a.poll_async(T)           # EOF counts as readable
        with pytest.raises(EOFError):
            await a.recv_async()
        return got, blob, after

    try:
        got, blob, after = run(main(), loop_kind)
        assert got == [0, 1, 2] and blob == big and after == "after"
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("backend,duplex", PIPES)
def test_cancelled_recv_async_loses_nothing(backend, duplex):
    ctx = mpx.get_context("fork")
    a, b = mpx.Pipe(duplex, backend=backend)
    n = 300
    p = ctx.Process(target=_child_sends, args=(b, n))
    p.start()
    b.close()

    async def main():
        got = []
        while True:
            try:
                got.append(await asyncio.wait_for(a.recv_async(), 0.0005))
            except asyncio.TimeoutError:
                continue
            except EOFError:
                return got

    try:
        assert run(main(), "asyncio") == list(range(n))
        join_all([p])
    finally:
        a.close()


@pytest.mark.parametrize("backend,duplex", PIPES)
def test_a_peer_killed_while_recv_async_awaits_gives_eof(backend, duplex):
    ctx = mpx.get_context("fork")
    a, b = mpx.Pipe(duplex, backend=backend)
    p = ctx.Process(target=_child_waits, args=(b,))
    p.start()
    b.close()

    async def main():
        waiter = asyncio.ensure_future(a.recv_async())
        await asyncio.sleep(0.2)
        p.kill()
        start = time.monotonic()
        with pytest.raises(EOFError):
            await waiter
        return time.monotonic() - start

    try:
        assert run(main(), "asyncio") < 10
    finally:
        p.join(T)
        a.close()


@pytest.mark.parametrize("backend", backends_for("Pipe"))
def test_send_async_waits_for_a_slow_reader_without_blocking_the_loop(backend):
    a, b = mpx.Pipe(backend=backend)
    chunk = b"y" * (1 << 20)

    async def main():
        ticks = 0

        async def ticker():
            nonlocal ticks
            while True:
                ticks += 1
                await asyncio.sleep(0.005)

        async def reader():
            got = 0
            for _ in range(12):
                await asyncio.sleep(0.02)
                got += len(await a.recv_async())
            return got

        t = asyncio.ensure_future(ticker())
        r = asyncio.ensure_future(reader())
        for _ in range(12):                      # 12 MiB: more than any buffer
            await b.send_async(chunk)
        got = await r
        t.cancel()
        return got, ticks

    try:
        got, ticks = run(main(), "asyncio")
        assert got == 12 << 20 and ticks >= 10
    finally:
        a.close()
        b.close()


def test_an_unserializable_object_raises_from_send_async():
    for backend in backends_for("Pipe"):
        a, b = mpx.Pipe(backend=backend)
        try:
            with pytest.raises(Exception, match="pickle|lock"):
                run(b.send_async(threading.Lock()), "asyncio")
            b.send("still fine")
            assert a.recv() == "still fine"
        finally:
            a.close()
            b.close()
