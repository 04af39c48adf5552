"""Bound methods of the shm queues and of the shm Pipe travel as the stdlib's do.

``q.put`` of an shm queue is a compiled function of the ring extension used
as the queue class's method; it must still report the queue as its
``__self__`` and pickle as "this queue's put", so that
``ctx.Process(target=q.put, args=(42,))`` works under spawn and forkserver
(where the target is pickled) exactly as with ``multiprocessing.Queue``.
"""

import pickle

import pytest

import mpx

METHODS = ("fork", "spawn", "forkserver")
FAMILIES = ("Queue", "SimpleQueue", "JoinableQueue")
JOIN = 60


def _make(family):
    return getattr(mpx, family)(backend="shm")


def _call(fn, *args):
    fn(*args)


def _relay(get, put):
    # Both arguments are bound methods: a get of one queue, a put of another.
    put(("got", get()))


@pytest.mark.parametrize("family", FAMILIES)
def test_bound_methods_name_the_queue_and_pickle(family):
    q = _make(family)
    try:
        names = ["put", "get", "put_many", "get_many"]
        if family != "SimpleQueue":
            names += ["put_nowait", "get_nowait"]
        for name in names:
            m = getattr(q, name)
            assert m.__self__ is q, name
            assert m.__name__ == name
            back = pickle.loads(pickle.dumps(m))
            assert back.__name__ == name and type(back.__self__) is type(q)
            back.__self__.close()
        q.put(1)
        put = pickle.loads(pickle.dumps(q.put))
        put(2)
        get = pickle.loads(pickle.dumps(q.get))
        assert [get(timeout=10), get(timeout=10)] == [1, 2]
        put.__self__.close()
        get.__self__.close()
    finally:
        q.close()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("family", FAMILIES)
def test_a_process_runs_a_queues_bound_put_and_get(method, family):
    ctx = mpx.get_context(method)
    q, out = _make(family), _make(family)
    try:
        p = ctx.Process(target=q.put, args=(42,))
        p.start()
        p.join(JOIN)
        assert p.exitcode == 0
        assert q.get(timeout=JOIN) == 42
        q.put("hello")
        p = ctx.Process(target=_relay, args=(q.get, out.put))
        p.start()
        p.join(JOIN)
        assert p.exitcode == 0
        assert out.get(timeout=JOIN) == ("got", "hello")
    finally:
        q.close()
        out.close()


@pytest.mark.parametrize("method", METHODS)
def test_a_process_runs_a_pipes_bound_send(method):
    ctx = mpx.get_context(method)
    a, b = mpx.Pipe()
    try:
        assert a.send.__self__ is a
        p = ctx.Process(target=a.send, args=("over the pipe",))
        p.start()
        p.join(JOIN)
        assert p.exitcode == 0
        assert b.poll(JOIN) and b.recv() == "over the pipe"
        p = ctx.Process(target=_call, args=(b.send, 7))
        p.start()
        p.join(JOIN)
        assert p.exitcode == 0
        assert a.poll(JOIN) and a.recv() == 7
    finally:
        a.close()
        b.close()


def test_methods_of_a_closed_queue_raise():
    q = _make("Queue")
    put, get = q.put, q.get
    q.close()
    with pytest.raises(ValueError):
        put(1)
    with pytest.raises(ValueError):
        get(False)
