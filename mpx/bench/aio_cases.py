"""The benchmark's asyncio cases: awaiting mpx queues from coroutines.

- ``aio-roundtrip``: a small object goes to an echo process and back, both
  ends coroutines on their own event loops. mpx's ``Queue[shm]`` awaited
  (``put_async``/``get_async``) against the stdlib way (``mp.Queue`` with
  ``get`` run in the loop's default executor, ``put`` called directly since
  it never blocks), and against mpx's own blocking round trip (no event
  loop), which the awaited one should stay within 2x of.
- ``aio-wakeups``: 1,000 coroutines of one process await one ``Queue[shm]``
  that another process fills; the figure is items taken per second, and the
  measurement fails if the process gained more than one thread meanwhile
  (there is no thread per waiting coroutine).

Each measurement runs in the harness's fresh measurement process and forks
its echo or producer process from it.
"""

import asyncio
import multiprocessing
import threading
import time

__all__ = ["PEERS", "cases", "measure"]

PEERS = {
    "mp.Queue+run_in_executor": (None, None, "multiprocessing.Queue, get() awaited through "
                                 "loop.run_in_executor"),
}

SMALL = ("payload", 3.14)
WAITERS = 1000
_FORK = multiprocessing.get_context("fork")


def cases(make):
    """The asyncio cases, made with the harness's case constructor."""
    common = dict(kind="aio", families=(), max_reps=None, timeout=60.0, min_duration=0.25)
    return [
        make("aio-roundtrip", "asyncio: round trip of a small object, both ends awaiting",
             unit="us", peers=("mp.Queue+run_in_executor",),
             mpx=("mpx.Queue[shm] awaited", "mpx.Queue[shm] blocking"), quick=True,
             op="rtt", smoke=20, pilot=200, min=200, max=500_000, **common),
        make("aio-wakeups", f"asyncio: {WAITERS} coroutines awaiting one Queue[shm]",
             unit="msg/s", peers=(), mpx=("mpx.Queue[shm] awaited",), quick=False,
             op="wakeups", smoke=WAITERS, pilot=20_000, min=20_000, max=20_000_000, **common),
    ]


class _Failed(Exception):
    pass


def measure(job):
    """One measurement of an asyncio case (in a fresh measurement process)."""
    case, name, n = job["case"], job["contender"]["name"], job["count"]
    if case["op"] == "rtt":
        seconds = _roundtrip(name, n)
        return {"count": n, "elapsed": seconds, "rate": n / seconds,
                "figure": seconds / n * 1e6}
    seconds = _wakeups(n)
    return {"count": n, "elapsed": seconds, "rate": n / seconds, "figure": n / seconds}


# ------------------------------------------------------------ round trip

def _style(name):
    if name.endswith("awaited"):
        return "awaited"
    if name.endswith("blocking"):
        return "blocking"
    return "executor"


def _queues(style):
    if style == "executor":
        return _FORK.Queue(), _FORK.Queue()
    import mpx
    return mpx.Queue(backend="shm"), mpx.Queue(backend="shm")


def _echo(ping, pong, style):
    if style == "blocking":
        while True:
            item = ping.get()
            if item is None:
                return
            pong.put(item)

    async def loop():
        running = asyncio.get_running_loop()
        while True:
            if style == "awaited":
                item = await ping.get_async()
            else:
                item = await running.run_in_executor(None, ping.get)
            if item is None:
                return
            if style == "awaited":
                await pong.put_async(item)
            else:
                pong.put(item)
    asyncio.run(loop())


def _roundtrip(name, n):
    style = _style(name)
    ping, pong = _queues(style)
    child = _FORK.Process(target=_echo, args=(ping, pong, style), daemon=True)
    child.start()
    try:
        if style == "blocking":
            seconds = _ping_blocking(ping, pong, n)
        else:
            seconds = asyncio.run(_ping_async(ping, pong, n, style))
        ping.put(None)
        child.join(30)
        if child.exitcode != 0:
            raise _Failed(f"the echo process ended with exit code {child.exitcode}")
    finally:
        if child.is_alive():
            child.kill()
            child.join(5)
        ping.close()
        pong.close()
    return seconds


def _ping_blocking(ping, pong, n):
    ping.put((-1,) + SMALL)
    pong.get()
    t0 = time.monotonic_ns()
    for i in range(n):
        ping.put((i,) + SMALL)
        if pong.get()[0] != i:
            raise _Failed(f"round trip {i} came back as another message")
    return (time.monotonic_ns() - t0) / 1e9


async def _ping_async(ping, pong, n, style):
    loop = asyncio.get_running_loop()

    async def get():
        if style == "awaited":
            return await pong.get_async()
        return await loop.run_in_executor(None, pong.get)

    async def put(item):
        if style == "awaited":
            await ping.put_async(item)
        else:
            ping.put(item)

    await put((-1,) + SMALL)
    await get()
    t0 = time.monotonic_ns()
    for i in range(n):
        await put((i,) + SMALL)
        if (await get())[0] != i:
            raise _Failed(f"round trip {i} came back as another message")
    return (time.monotonic_ns() - t0) / 1e9


# ------------------------------------------------------------ many waiters

def _produce(q, start, n, waiters):
    start.wait(60)
    batch = 256
    for first in range(0, n, batch):
        q.put_many(list(range(first, min(n, first + batch))))
    q.put_many([None] * waiters)


def _wakeups(n):
    import mpx
    q = mpx.Queue(backend="shm")
    start = _FORK.Event()
    child = _FORK.Process(target=_produce, args=(q, start, n, WAITERS), daemon=True)
    child.start()
    try:
        seconds, total, threads = asyncio.run(_wait_many(q, start))
        child.join(30)
    finally:
        if child.is_alive():
            child.kill()
            child.join(5)
        q.close()
    if total != n * (n - 1) // 2:
        raise _Failed("the items taken are not the items put (lost or repeated)")
    if threads > 1:
        raise _Failed(f"{threads} threads were started for {WAITERS} waiting coroutines")
    return seconds


async def _wait_many(q, start):
    before = threading.active_count()

    async def waiter():
        total = 0
        while True:
            item = await q.get_async()
            if item is None:
                return total
            total += item

    tasks = [asyncio.ensure_future(waiter()) for _ in range(WAITERS)]
    await asyncio.sleep(0.05)            # every waiter is waiting
    threads = threading.active_count() - before
    t0 = time.monotonic_ns()
    start.set()
    totals = await asyncio.gather(*tasks)
    seconds = (time.monotonic_ns() - t0) / 1e9
    return seconds, sum(totals), max(threads, threading.active_count() - before)
