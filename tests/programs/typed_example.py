"""Every mpx family, with its types written out.

tests/test_typing.py runs ``mypy --strict`` on this file, which must pass
without a single error, and then runs it: it must work, in a few seconds,
and leave nothing behind (named objects are unlinked, children joined).

Annotations of parameters are evaluated when a function is defined, so
``mpx.Queue[int]`` and friends below are also subscripted at run time.
"""

import os
import threading
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

import mpx
from mpx.connection import Connection, wait
from mpx.managers import SyncManager


def square_all(inbox: mpx.Queue[int], outbox: mpx.SimpleQueue[tuple[int, int]]) -> None:
    """Square numbers until a negative one comes."""
    while (n := inbox.get(timeout=30)) >= 0:
        outbox.put((n, n * n))


def shout(conn: Connection[str]) -> None:
    conn.send(conn.recv().upper())
    conn.close()


def relay(reader: mpx.connection.Connection[bytes],
          writer: mpx.connection.Connection[bytes]) -> bytes:
    writer.send_bytes(b"payload")
    assert reader.poll(5)
    return reader.recv_bytes()


def double(a: npt.NDArray[np.float64]) -> None:
    a *= 2


def total(a: mpx.SharedArray[np.float64]) -> float:
    return float(a.sum())


def queues(ctx: mpx.context.ForkContext) -> None:
    # A Queue and a SimpleQueue shared with a forked child.
    inbox = ctx.Queue[int](maxsize=8)
    outbox: mpx.SimpleQueue[tuple[int, int]] = ctx.SimpleQueue()
    child = ctx.Process(target=square_all, args=(inbox, outbox))
    child.start()
    inbox.put_many([2, 3, 4, -1], timeout=30)
    squares = sorted(outbox.get() for _ in range(3))
    child.join(30)
    assert child.exitcode == 0, child.exitcode
    assert squares == [(2, 4), (3, 9), (4, 16)], squares
    inbox.close()
    outbox.close()

    # mpx.Queue[int](...) is mpx.Queue(...); the type is for the checker.
    q = mpx.Queue[int](maxsize=3)
    q.put(1)
    q.put_nowait(2)
    assert q.get_many(timeout=5) == [1, 2]
    q.shutdown()
    try:
        q.put(3)
    except mpx.ShutDown:
        pass
    else:
        raise AssertionError("put after shutdown() did not raise ShutDown")
    q.close()

    anything = mpx.Queue[object]()
    try:
        anything.put(threading.Lock())
    except mpx.SerializationError:
        pass
    else:
        raise AssertionError("a lock went into a queue")
    anything.close()

    # A named queue: any process may open it by name, until unlink().
    name = f"mpx-typed-example-{os.getpid()}"
    named: mpx.Queue[str] = mpx.Queue(name=name)
    try:
        again = mpx.Queue[str](name=name)
        named.put("hello")
        assert again.get(timeout=5) == "hello"
        assert again.name == name
        again.close()
    finally:
        named.unlink()
        named.close()

    # Functions travel with the cloudpickle serializer.
    funcs = mpx.Queue[Callable[[int], int]](serializer="cloudpickle")
    k = 41
    funcs.put(lambda x: x + k)
    assert funcs.get(timeout=5)(1) == 42
    funcs.close()

    jobs = mpx.JoinableQueue[str]()
    jobs.put_many(["a", "b"])
    for _ in range(2):
        jobs.get(timeout=5)
        jobs.task_done()
    assert jobs.join(timeout=5)
    jobs.close()

    urgent = mpx.PriorityQueue[str]()
    urgent.put("later", priority=1)
    urgent.put("now", priority=9)
    assert urgent.get_with_priority(timeout=5) == ("now", 9)
    assert urgent.get(timeout=5) == "later"
    urgent.close()


def pipes(ctx: mpx.context.ForkContext) -> None:
    mine: Connection[str]
    theirs: Connection[str]
    mine, theirs = mpx.Pipe()
    child = ctx.Process(target=shout, args=(theirs,))
    child.start()
    theirs.close()
    mine.send("hi")
    assert wait([mine], timeout=30) == [mine]
    assert mine.recv() == "HI"
    child.join(30)
    assert child.exitcode == 0, child.exitcode
    mine.close()

    reader, writer = ctx.Pipe(duplex=False, backend="pipe")
    assert isinstance(reader, Connection) and isinstance(writer, mpx.connection.Connection)
    assert relay(reader, writer) == b"payload"
    reader.close()
    writer.close()


def arrays() -> None:
    name = f"mpx-typed-example-{os.getpid()}"
    arr = mpx.SharedArray((4,), np.float64, name=name)
    try:
        arr[:] = np.arange(4.0)
        same = mpx.SharedArray.attach(name)
        double(same)
        assert total(arr) == 12.0
        assert arr.name == name and arr.is_shared
    finally:
        arr.unlink()
    counts: mpx.SharedArray[np.int32] = mpx.SharedArray(3, np.int32)
    counts[:] += 1
    assert [int(x) for x in counts] == [1, 1, 1]


def managed() -> None:
    manager: SyncManager
    with mpx.Manager() as manager:
        stock = manager.dict({"apples": 3})
        stock["pears"] = 5
        assert sorted(stock.items()) == [("apples", 3), ("pears", 5)]
        log = manager.list([1.5])
        log.append(2.5)
        assert sum(log) == 4.0


def main() -> None:
    ctx = mpx.get_context("fork")
    queues(ctx)
    pipes(ctx)
    arrays()
    managed()
    available = {row["name"] for row in mpx.backends() if row["available"]}
    assert {"shm", "pipe"} <= available, available
    print("typed example: ok")


if __name__ == "__main__":
    main()
