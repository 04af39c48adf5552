"""concurrent.futures on mpx contexts: the executor's result queue is an shm
ring, waited on through the queue's ``_reader`` descriptor.

The stdlib's ProcessPoolExecutor makes ``mp_context.SimpleQueue()`` for its
results, waits on its ``_reader`` with ``multiprocessing.connection.wait``
beside the workers' sentinels, and then calls ``_reader.recv()``. These
tests check that an mpx context gives it the shm SimpleQueue, that the
descriptor is readable exactly while an item (or a shutdown) is there, and
that a killed worker breaks the pool as with the stdlib.
"""

import concurrent.futures as cf
import os
import signal
import threading
import time
from multiprocessing import connection

import pytest

import mpx
from mpx.backends.shm import queues as shm

METHODS = ("fork", "spawn", "forkserver")
T = 60


def square(x):
    return x * x


def die(_):
    os.kill(os.getpid(), signal.SIGKILL)


def _put_later(q, value, delay):
    time.sleep(delay)
    q.put(value)


def _watchers():
    return [t for t in threading.enumerate() if t.name.startswith("mpx-queue-watch")]


def test_the_default_simple_queue_is_the_shm_ring():
    q = mpx.SimpleQueue()
    try:
        assert isinstance(q, shm.ShmSimpleQueue)
    finally:
        q.close()


@pytest.mark.parametrize("family", ["SimpleQueue", "Queue", "JoinableQueue"])
def test_reader_fileno_is_readable_exactly_while_an_item_waits(family):
    q = getattr(mpx, family)(backend="shm")
    r = q._reader
    try:
        assert connection.wait([r], timeout=0.05) == []
        q.put(1)
        q.put(2)
        assert connection.wait([r], timeout=T) == [r]
        assert r.recv() == 1
        assert connection.wait([r], timeout=T) == [r]
        assert q.get() == 2
        assert connection.wait([r], timeout=0.05) == []
        assert not r.poll()
        # A put from another thread while we sleep in wait() wakes it.
        t = threading.Thread(target=_put_later, args=(q, 3, 0.2))
        t.start()
        assert connection.wait([r], timeout=T) == [r]
        t.join(T)
        assert r.poll(0) and r.recv() == 3
        # get_many takes count too.
        q.put_many([4, 5])
        assert connection.wait([r], timeout=T) == [r]
        assert q.get_many() == [4, 5]
        assert connection.wait([r], timeout=0.05) == []
    finally:
        q.close()
    assert r.closed


def test_reader_of_a_shut_down_queue_is_readable():
    q = mpx.Queue()
    r = q._reader
    try:
        r.fileno()
        q.shutdown()
        assert connection.wait([r], timeout=T) == [r]
        with pytest.raises(mpx.ShutDown):
            r.recv()
    finally:
        q.close()


@pytest.mark.parametrize("method", METHODS)
def test_a_put_in_another_process_wakes_a_wait(method):
    ctx = mpx.get_context(method)
    q = ctx.SimpleQueue()
    r = q._reader
    try:
        r.fileno()                       # the watcher exists before the child
        p = ctx.Process(target=_put_later, args=(q, "from the child", 0.3))
        p.start()
        assert connection.wait([r, p.sentinel], timeout=T)[0] is r
        assert r.recv() == "from the child"
        p.join(T)
        assert p.exitcode == 0
    finally:
        q.close()


def test_closing_the_queue_ends_its_watcher_thread():
    before = len(_watchers())
    q = mpx.SimpleQueue()
    q._reader.fileno()
    assert len(_watchers()) == before + 1
    q.close()
    deadline = time.monotonic() + T
    while len(_watchers()) > before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert len(_watchers()) == before


@pytest.mark.parametrize("method", METHODS)
def test_an_executor_on_an_mpx_context_uses_the_shm_simple_queue(method):
    with cf.ProcessPoolExecutor(2, mp_context=mpx.get_context(method)) as ex:
        assert isinstance(ex._result_queue, shm.ShmSimpleQueue)
        assert list(ex.map(square, range(50), timeout=T)) == [x * x for x in range(50)]
        assert ex.submit(square, 7).result(timeout=T) == 49


@pytest.mark.parametrize("method", METHODS)
def test_a_killed_worker_breaks_the_pool_as_with_the_stdlib(method):
    ex = cf.ProcessPoolExecutor(2, mp_context=mpx.get_context(method))
    try:
        assert ex.submit(square, 3).result(timeout=T) == 9
        fut = ex.submit(die, None)
        with pytest.raises(cf.process.BrokenProcessPool):
            fut.result(timeout=T)
        with pytest.raises(cf.process.BrokenProcessPool):
            ex.submit(square, 2)
    finally:
        ex.shutdown(wait=True)


def _put_through(carrier, value):
    q = carrier.get(timeout=T)          # reopened here without the bell
    q.put(value)
    q.close()


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_holder_without_the_bell_still_wakes_a_wait(method):
    # A queue sent after the child started is reopened through /proc, where
    # its eventfd bell cannot follow: the reader's watcher thread rings.
    ctx = mpx.get_context(method)
    q, carrier = ctx.SimpleQueue(), ctx.Queue()
    r = q._reader
    try:
        r.fileno()
        p = ctx.Process(target=_put_through, args=(carrier, "no bell"))
        p.start()
        carrier.put(q)
        assert r in connection.wait([r], timeout=T)
        assert r.recv() == "no bell"
        p.join(T)
        assert p.exitcode == 0
        assert connection.wait([r], timeout=0.05) == []
    finally:
        q.close()
        carrier.close()
