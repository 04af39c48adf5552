"""The Queue/SimpleQueue/JoinableQueue contract, written once.

Each test runs over every start method and every backend that provides the
family (``backends_for``), and, where multiprocessing has the same object
and the test is about shared semantics, against the stdlib as the oracle
(backend id "stdlib").
"""

import queue
import threading
import time

import pytest

from conftest import backends_for, join_all

Q_BACKENDS = ["stdlib"] + backends_for("Queue")
SQ_BACKENDS = ["stdlib"] + backends_for("SimpleQueue")
JQ_BACKENDS = ["stdlib"] + backends_for("JoinableQueue")


def make(ctx, family, backend, *args):
    if backend == "stdlib":
        return getattr(ctx.stdlib_context(), family)(*args)
    return getattr(ctx, family)(*args, backend=backend)


# --- child process bodies (module level: spawn imports them) ----------------

def echo_child(inq, outq):
    """Get items until None, send each back doubled."""
    while True:
        item = inq.get(timeout=30)
        if item is None:
            break
        outq.put(item * 2 if not callable(item) else item(21))


def put_and_exit(q, items):
    for item in items:
        q.put(item)
    # No join_thread, no sleep: whatever put() accepted must survive the exit.


def put_later(q, delay, item):
    time.sleep(delay)
    q.put(item)


def joinable_worker(q, results):
    while True:
        item = q.get(timeout=30)
        results.put(item)
        q.task_done()
        if item is None:
            break


# --- Queue ---------------------------------------------------------------

@pytest.mark.parametrize("backend", Q_BACKENDS)
def test_fifo_in_one_process(ctx, backend):
    q = make(ctx, "Queue", backend)
    got = []
    # Batches of 5: a kernel message queue holds only msg_max (10 here)
    # messages, and with no reader running a put past that waits, correctly.
    for start in range(0, 100, 5):
        for i in range(start, start + 5):
            q.put(i)
        got += [q.get(timeout=10) for _ in range(5)]
    assert got == list(range(100))
    q.close()
    q.join_thread()


@pytest.mark.parametrize("backend", Q_BACKENDS)
def test_get_timeouts_and_nowait(ctx, backend):
    q = make(ctx, "Queue", backend)
    with pytest.raises(queue.Empty):
        q.get_nowait()
    with pytest.raises(queue.Empty):
        q.get(False)
    t = time.monotonic()
    with pytest.raises(queue.Empty):
        q.get(timeout=0.2)
    assert 0.15 < time.monotonic() - t < 5
    q.close()
    q.join_thread()


@pytest.mark.parametrize("backend", Q_BACKENDS)
def test_maxsize_counts_messages(ctx, backend):
    q = make(ctx, "Queue", backend, 3)
    for i in range(3):
        q.put(i, timeout=5)
    with pytest.raises(queue.Full):
        q.put_nowait(99)
    t = time.monotonic()
    with pytest.raises(queue.Full):
        q.put(99, timeout=0.2)
    assert 0.15 < time.monotonic() - t < 5
    deadline = time.monotonic() + 5    # the stdlib's feeder thread lags a little
    while not q.full() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert q.full() and q.qsize() == 3 and not q.empty()
    assert q.get(timeout=5) == 0
    q.put_nowait(3)
    assert [q.get(timeout=5) for _ in range(3)] == [1, 2, 3]
    assert q.empty()
    q.close()
    q.join_thread()


@pytest.mark.parametrize("backend", Q_BACKENDS)
def test_none_timeout_waits_forever(ctx, backend):
    q = make(ctx, "Queue", backend)
    p = ctx.Process(target=put_later, args=(q, 0.5, "late"))
    p.start()
    assert q.get() == "late"          # block=True, timeout=None
    join_all([p])
    q.close()
    q.join_thread()


@pytest.mark.parametrize("backend", Q_BACKENDS)
def test_round_trip_through_a_child(ctx, backend):
    inq, outq = make(ctx, "Queue", backend), make(ctx, "Queue", backend)
    p = ctx.Process(target=echo_child, args=(inq, outq))
    p.start()
    items = [1, "ab", (1, 2), b"x" * 100_000]
    for item in items:
        inq.put(item)
    inq.put(None)
    assert [outq.get(timeout=30) for _ in items] == [i * 2 for i in items]
    join_all([p])
    for q in (inq, outq):
        q.close()
        q.join_thread()


@pytest.mark.parametrize("backend", backends_for("Queue"))
def test_lambda_travels_to_a_child(ctx, backend):
    inq, outq = make(ctx, "Queue", backend), make(ctx, "Queue", backend)
    p = ctx.Process(target=echo_child, args=(inq, outq))
    p.start()
    k = 21
    inq.put(lambda x: x + k)
    inq.put(None)
    assert outq.get(timeout=30) == 42
    join_all([p])


@pytest.mark.parametrize("backend", Q_BACKENDS)
def test_nothing_lost_when_the_producer_exits_at_once(ctx, backend):
    q = make(ctx, "Queue", backend)
    items = list(range(200))
    p = ctx.Process(target=put_and_exit, args=(q, items))
    p.start()
    got = [q.get(timeout=30) for _ in items]
    join_all([p])
    assert got == items


@pytest.mark.parametrize("backend", backends_for("Queue"))
def test_unpicklable_object_raises_from_put_and_leaves_queue_unchanged(ctx, backend):
    q = make(ctx, "Queue", backend)
    q.put("before")
    with pytest.raises(TypeError, match="lock"):
        q.put(threading.Lock())
    q.put("after")
    assert [q.get(timeout=5), q.get(timeout=5)] == ["before", "after"]
    with pytest.raises(queue.Empty):
        q.get(timeout=0.1)


@pytest.mark.parametrize("backend", Q_BACKENDS)
def test_put_after_close_raises_value_error(ctx, backend):
    q = make(ctx, "Queue", backend)
    q.close()
    with pytest.raises(ValueError):
        q.put(1)
    q.join_thread()


@pytest.mark.parametrize("backend", backends_for("Queue"))
def test_put_many_get_many(ctx, backend):
    q = make(ctx, "Queue", backend)
    q.put_many(range(10))
    got = []
    while len(got) < 10:
        batch = q.get_many(max_items=4, timeout=5)
        assert 1 <= len(batch) <= 4
        got += batch
    assert got == list(range(10))
    with pytest.raises(queue.Empty):
        q.get_many(max_items=5, timeout=0.1)
    with pytest.raises(TypeError):
        q.put_many([1, threading.Lock(), 3])     # serialized before anything is sent
    with pytest.raises(queue.Empty):
        q.get(timeout=0.1)


# --- SimpleQueue ---------------------------------------------------------

@pytest.mark.parametrize("backend", SQ_BACKENDS)
def test_simple_queue(ctx, backend):
    q = make(ctx, "SimpleQueue", backend)
    assert q.empty()
    inq = make(ctx, "SimpleQueue", backend)
    p = ctx.Process(target=put_and_exit, args=(q, ["a", "b", "c"]))
    p.start()
    assert [q.get() for _ in range(3)] == ["a", "b", "c"]
    join_all([p])
    assert q.empty()
    q.close()
    inq.close()


# --- JoinableQueue -------------------------------------------------------

@pytest.mark.parametrize("backend", JQ_BACKENDS)
def test_joinable_queue_task_done_and_join(ctx, backend):
    q = make(ctx, "JoinableQueue", backend)
    results = make(ctx, "Queue", "stdlib")
    p = ctx.Process(target=joinable_worker, args=(q, results))
    p.start()
    for i in range(20):
        q.put(i)
    q.put(None)
    done = threading.Event()
    t = threading.Thread(target=lambda: (q.join(), done.set()), daemon=True)
    t.start()
    assert done.wait(30), "join() did not return after every task_done()"
    assert sorted(results.get(timeout=10) for _ in range(20)) == list(range(20))
    assert results.get(timeout=10) is None
    join_all([p])


@pytest.mark.parametrize("backend", JQ_BACKENDS)
def test_too_many_task_done_is_a_value_error(ctx, backend):
    q = make(ctx, "JoinableQueue", backend)
    q.put(1)
    q.get(timeout=5)
    q.task_done()
    with pytest.raises(ValueError):
        q.task_done()
    q.close()
    q.join_thread()
