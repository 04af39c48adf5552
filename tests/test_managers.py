"""mpx.managers: behaviour against the stdlib manager as the oracle, plus
what mpx adds (lifetime of proxies in flight, lambdas, remote traceback).

Behaviour tests run over every start method (``ctx``) and every
implementation: the stdlib's SyncManager ("stdlib") and each mpx Manager
transport. Process targets are module-level (spawn imports this file).
"""

import copy
import gc
import multiprocessing
import multiprocessing.managers as std_managers
import os
import pickle
import queue
import signal
import socket
import threading
import time

import pytest

import mpx
import mpx.managers as mm
from mpx.backends._common import stream as _stream
from conftest import backends_for, wait_for

MPX_BACKENDS = backends_for("Manager")
IMPLS = ["stdlib"] + MPX_BACKENDS
TIMEOUT = 30



def start_manager(ctx, impl, cls=None, **kw):
    if impl == "stdlib":
        cls = cls or std_managers.SyncManager
        m = cls(ctx=ctx.stdlib_context(), **kw)
    else:
        cls = cls or mm.SyncManager
        m = cls(ctx=ctx, backend=impl, **kw)
    m.start()
    return m


@pytest.fixture(params=IMPLS)
def impl(request):
    return request.param


@pytest.fixture(params=MPX_BACKENDS)
def backend(request):
    return request.param


@pytest.fixture
def manager(ctx, impl):
    m = start_manager(ctx, impl)
    try:
        yield m
    finally:
        m.shutdown()


@pytest.fixture
def mpx_manager(ctx, backend):
    m = ctx.Manager(backend=backend)
    try:
        yield m
    finally:
        m.shutdown()


# --- Process targets ---------------------------------------------------------

def square(x):
    return x * x


def add_under_lock(lock, counter, n):
    for _ in range(n):
        with lock:
            counter.value = counter.value + 1


def wait_then_set(start_ev, done_ev, ns):
    if start_ev.wait(TIMEOUT):
        ns.seen = True
        done_ev.set()


def barrier_party(barrier, results):
    results.append(barrier.wait(TIMEOUT))


def condition_waiter(cond, flag, out):
    with cond:
        ok = cond.wait_for(lambda: flag.value == 1, TIMEOUT)
    out.put(("woke", ok))


def use_later(d, go, out):
    # The parent drops its own proxy before `go`; the referent must survive.
    if go.wait(TIMEOUT):
        try:
            d["child"] = os.getpid()
            out.put(("ok", dict(d.items())))
        except Exception as e:
            out.put(("error", repr(e)))


def read_from_queue(q, out):
    d = q.get(timeout=TIMEOUT)
    try:
        d["seen"] = True
        out.put(("ok", d.get("x")))
    except Exception as e:
        out.put(("error", repr(e)))


def hold_forever(d, ready):
    d["held"] = True
    ready.set()
    time.sleep(TIMEOUT)


def put_items(q, items):
    for x in items:
        q.put(x)


def blocked_wait(ev, ready, out):
    try:
        ready.set()
        ev.wait()
    except KeyboardInterrupt:
        out.put("interrupted")


_inherited = None


def use_inherited(go, out):
    if go.wait(TIMEOUT):
        try:
            out.put(("ok", _inherited["x"]))
        except Exception as e:
            out.put(("error", repr(e)))


# --- containers --------------------------------------------------------------

def test_dict_list_namespace_value_array(manager):
    d = manager.dict({"a": 1})
    d["b"] = 2
    d.update(c=3)
    assert d["a"] == 1 and len(d) == 3 and "b" in d
    assert sorted(d.keys()) == ["a", "b", "c"]
    assert sorted(d.items()) == [("a", 1), ("b", 2), ("c", 3)]
    assert d.get("zz", 7) == 7 and d.setdefault("e", 5) == 5
    assert d.pop("e") == 5
    assert sorted(iter(d)) == ["a", "b", "c"]
    assert d.copy() == {"a": 1, "b": 2, "c": 3}
    assert copy.deepcopy(d) == {"a": 1, "b": 2, "c": 3}
    del d["a"]
    assert "a" not in d
    assert str(d) == str({"b": 2, "c": 3})
    with pytest.raises(KeyError):
        d["missing"]

    lst = manager.list([3, 1, 2])
    lst.append(4)
    lst.extend([5])
    lst += [6]
    lst.sort()
    assert lst[:] == [1, 2, 3, 4, 5, 6] and lst[0] == 1 and len(lst) == 6
    assert lst.index(3) == 2 and lst.count(1) == 1 and lst.pop() == 6
    lst.reverse()
    assert list(lst) == [5, 4, 3, 2, 1]
    lst *= 2
    assert len(lst) == 10
    with pytest.raises(IndexError):
        lst[100]

    ns = manager.Namespace(x=1)
    ns.y = "two"
    assert ns.x == 1 and ns.y == "two"
    del ns.x
    with pytest.raises(AttributeError):
        ns.x

    v = manager.Value("i", 5)
    v.value += 2
    assert v.value == 7 and v.get() == 7

    a = manager.Array("d", [1.0, 2.0, 3.0])
    a[1] = 5.0
    assert len(a) == 3 and a[1] == 5.0 and list(a[:]) == [1.0, 5.0, 3.0]


def test_queues(manager):
    q = manager.Queue()
    q.put("x")
    assert q.get(timeout=TIMEOUT) == "x"
    with pytest.raises(queue.Empty):
        q.get(timeout=0.05)
    with pytest.raises(queue.Empty):
        q.get_nowait()
    small = manager.Queue(1)
    small.put(1)
    with pytest.raises(queue.Full):
        small.put(2, timeout=0.05)
    assert small.full() and small.qsize() == 1
    jq = manager.JoinableQueue()
    jq.put(1)
    assert jq.get(timeout=TIMEOUT) == 1
    jq.task_done()
    jq.join()
    with pytest.raises(ValueError):
        jq.task_done()


def test_sync_primitives_in_one_process(manager):
    lock = manager.Lock()
    assert lock.acquire(timeout=1)
    assert not lock.acquire(False)
    lock.release()
    with pytest.raises(RuntimeError):
        lock.release()
    rlock = manager.RLock()
    with rlock:
        with rlock:
            pass
    sem = manager.Semaphore(2)
    assert sem.acquire() and sem.acquire() and not sem.acquire(timeout=0.05)
    bsem = manager.BoundedSemaphore(1)
    bsem.acquire()
    bsem.release()
    with pytest.raises(ValueError):
        bsem.release()
    ev = manager.Event()
    assert not ev.is_set() and not ev.wait(0.05)
    ev.set()
    assert ev.wait(1) and ev.is_set()
    b = manager.Barrier(1)
    assert b.parties == 1 and b.wait(1) == 0 and not b.broken
    cond = manager.Condition()
    with cond:
        assert not cond.wait(0.05)
        cond.notify_all()


def test_sync_across_processes(ctx, manager):
    lock = manager.Lock()
    counter = manager.Value("i", 0)
    procs = [ctx.Process(target=add_under_lock, args=(lock, counter, 50)) for _ in range(2)]
    start, done = manager.Event(), manager.Event()
    ns = manager.Namespace(seen=False)
    procs.append(ctx.Process(target=wait_then_set, args=(start, done, ns)))
    barrier = manager.Barrier(2)
    results = manager.list()
    procs.append(ctx.Process(target=barrier_party, args=(barrier, results)))
    for p in procs:
        p.start()
    add_under_lock(lock, counter, 50)
    start.set()
    assert done.wait(TIMEOUT) and ns.seen
    results.append(barrier.wait(TIMEOUT))
    for p in procs:
        p.join(TIMEOUT)
        assert p.exitcode == 0
    assert counter.value == 150
    assert sorted(results) == [0, 1]


def test_condition_across_processes(ctx, manager):
    cond = manager.Condition()
    flag = manager.Value("i", 0)
    out = ctx.stdlib_context().Queue()
    p = ctx.Process(target=condition_waiter, args=(cond, flag, out))
    p.start()
    time.sleep(0.2)
    with cond:
        flag.value = 1
        cond.notify_all()
    assert out.get(timeout=TIMEOUT) == ("woke", True)
    p.join(TIMEOUT)
    assert p.exitcode == 0


def test_proxy_sent_through_a_queue(ctx, manager):
    d = manager.dict(x=41)
    q = ctx.stdlib_context().Queue()
    out = ctx.stdlib_context().Queue()
    p = ctx.Process(target=read_from_queue, args=(q, out))
    p.start()
    q.put(d)
    assert out.get(timeout=TIMEOUT) == ("ok", 41)
    p.join(TIMEOUT)
    assert d["seen"] is True


def test_pool(manager):
    pool = manager.Pool(2)
    try:
        assert pool.map(square, range(10)) == [x * x for x in range(10)]
        assert pool.apply(square, (4,)) == 16
        assert pool.apply_async(square, (3,)).get(timeout=TIMEOUT) == 9
        assert list(pool.imap(square, range(5))) == [0, 1, 4, 9, 16]
        assert sorted(pool.imap_unordered(square, range(5))) == [0, 1, 4, 9, 16]
        assert pool.starmap(pow, [(2, 3), (3, 2)]) == [8, 9]
        r = pool.map_async(square, range(3))
        assert r.get(timeout=TIMEOUT) == [0, 1, 4] and r.ready() and r.successful()
    finally:
        pool.terminate()


def test_context_manager_and_state(ctx, impl):
    cls = std_managers.SyncManager if impl == "stdlib" else mm.SyncManager
    kw = {"ctx": ctx.stdlib_context()} if impl == "stdlib" else {"ctx": ctx, "backend": impl}
    with cls(**kw) as m:
        d = m.dict(a=1)
        assert d["a"] == 1
        assert m.address is not None
        with pytest.raises(multiprocessing.ProcessError):
            m.start()
    with pytest.raises(multiprocessing.ProcessError):
        m.start()


# --- custom types, register() --------------------------------------------------

class UnpicklableError(Exception):
    pass


class Counter:
    def __init__(self, start=0):
        self.n = start

    def incr(self, k=1):
        self.n += k
        return self.n

    def get(self):
        return self.n

    def fail(self):
        raise ValueError(f"boom at {self.n}")

    def spawn_child(self):
        return Counter(self.n * 10)

    def unpicklable(self):
        return threading.Lock()

    def fail_unpicklably(self):
        raise UnpicklableError(threading.Lock())

    def _hidden(self):
        return "hidden"


def _counter_registry(manager_cls, proxy_base):
    class CounterProxy(proxy_base):
        _exposed_ = ("incr", "get", "fail", "spawn_child")
        _method_to_typeid_ = {"spawn_child": "ChildCounter"}

        def incr(self, k=1):
            return self._callmethod("incr", (k,))

        def get(self):
            return self._callmethod("get")

        def fail(self):
            return self._callmethod("fail")

        def spawn_child(self):
            return self._callmethod("spawn_child")

    manager_cls.register("Counter", Counter, CounterProxy)
    # Objects returned by spawn_child are served as they are (no callable).
    manager_cls.register("ChildCounter", proxytype=CounterProxy, create_method=False)
    manager_cls.register("AutoCounter", Counter)
    return CounterProxy


class StdCounterManager(std_managers.BaseManager):
    pass


class MpxCounterManager(mm.BaseManager):
    pass


StdCounterProxy = _counter_registry(StdCounterManager, std_managers.BaseProxy)
MpxCounterProxy = _counter_registry(MpxCounterManager, mm.BaseProxy)
StdCounterProxy.__qualname__ = StdCounterProxy.__name__ = "StdCounterProxy"
MpxCounterProxy.__qualname__ = MpxCounterProxy.__name__ = "MpxCounterProxy"


def test_register_custom_type(ctx, impl):
    cls = StdCounterManager if impl == "stdlib" else MpxCounterManager
    m = start_manager(ctx, impl, cls)
    try:
        c = m.Counter(5)
        assert c.incr() == 6 and c.incr(4) == 10 and c.get() == 10
        child = c.spawn_child()
        assert child.get() == 100 and child.incr() == 101 and c.get() == 10
        assert child.spawn_child().get() == 1010
        with pytest.raises(ValueError, match="boom at 10"):
            c.fail()
        auto = m.AutoCounter(1)
        assert auto.incr(2) == 3 and auto.get() == 3
        assert not hasattr(auto, "_hidden")
        # The stdlib wraps this AttributeError in a RemoteError; mpx raises it as is.
        with pytest.raises(std_managers.RemoteError if impl == "stdlib" else AttributeError):
            auto._callmethod("_hidden")
    finally:
        m.shutdown()


# --- a server in one process, clients in others (TCP) ------------------------

_remote_queue = None


def _get_remote_queue():
    global _remote_queue
    if _remote_queue is None:
        _remote_queue = queue.Queue()
    return _remote_queue


class StdQueueManager(std_managers.BaseManager):
    pass


class MpxQueueManager(mm.BaseManager):
    pass


StdQueueManager.register("get_queue", callable=_get_remote_queue)
MpxQueueManager.register("get_queue", callable=_get_remote_queue)


def serve_remote(cls, authkey, conn):
    m = cls(address=("127.0.0.1", 0), authkey=authkey)
    server = m.get_server()
    conn.send(server.address)
    conn.close()
    server.serve_forever()


def remote_client(cls, address, authkey, items):
    m = cls(address=address, authkey=authkey)
    m.connect()
    q = m.get_queue()
    for x in items:
        q.put(x)


@pytest.mark.parametrize("impl_", ["stdlib", "tcp"])
def test_server_and_clients_in_other_processes(ctx, impl_):
    if impl_ != "stdlib" and "tcp" not in MPX_BACKENDS:
        pytest.skip("tcp backend unavailable")
    cls = StdQueueManager if impl_ == "stdlib" else MpxQueueManager
    authkey = b"remote secret"
    reader, writer = ctx.stdlib_context().Pipe(duplex=False)
    server = ctx.Process(target=serve_remote, args=(cls, authkey, writer))
    server.start()
    try:
        assert reader.poll(TIMEOUT)
        address = reader.recv()
        client = ctx.Process(target=remote_client, args=(cls, address, authkey, [1, "two", 3.0]))
        client.start()
        client.join(TIMEOUT)
        assert client.exitcode == 0
        m = cls(address=address, authkey=authkey)
        m.connect()
        q = m.get_queue()
        assert [q.get(timeout=TIMEOUT) for _ in range(3)] == [1, "two", 3.0]
        with pytest.raises(multiprocessing.AuthenticationError):
            cls(address=address, authkey=b"wrong").connect()
        assert q.qsize() == 0     # still serving after the bad client
        del q
    finally:
        server.terminate()
        server.join(TIMEOUT)


# --- mpx's own guarantees ---------------------------------------------------------

def test_server_traceback_reaches_the_caller(mpx_manager):
    d = mpx_manager.dict()
    with pytest.raises(KeyError) as info:
        d["missing"]
    cause = info.value.__cause__
    assert isinstance(cause, mm.RemoteTraceback)
    assert "Traceback" in cause.tb and "KeyError: 'missing'" in cause.tb
    # The connection stays usable after an error.
    d["x"] = 1
    assert d["x"] == 1


def test_custom_exception_with_traceback(ctx, backend):
    with MpxCounterManager(ctx=ctx, backend=backend) as m:
        c = m.Counter(3)
        with pytest.raises(ValueError, match="boom at 3") as info:
            c.fail()
        assert "in fail" in info.value.__cause__.tb
        with pytest.raises(AttributeError, match="not in exposed"):
            c._callmethod("_hidden")
        auto = m.AutoCounter(1)
        with pytest.raises(mm.RemoteError, match="could not serialize the result"):
            auto.unpicklable()
        with pytest.raises(mm.RemoteError, match="(?s)in fail_unpicklably.*UnpicklableError"):
            auto.fail_unpicklably()
        assert auto.incr() == 2          # the connection is still in step


def test_lambdas_through_the_manager(ctx, backend):
    k = 3
    with ctx.Manager(backend=backend) as m:
        d = m.dict()
        d["f"] = lambda x: x + k
        assert d["f"](1) == 4
        pool = m.Pool(2)
        try:
            assert pool.map(lambda x: x * k, range(5)) == [0, 3, 6, 9, 12]
            assert pool.apply_async(lambda: k).get(timeout=TIMEOUT) == 3
        finally:
            pool.terminate()
    with ctx.Manager(backend=backend, serializer="cloudpickle") as m:
        d = m.dict()
        d["g"] = lambda: k * 2
        assert d["g"]() == 6


def test_referent_freed_when_the_last_proxy_goes(mpx_manager):
    m = mpx_manager
    d = m.dict(a=1)
    d2 = pickle.loads(pickle.dumps(d))       # a second proxy, in this process
    d3 = copy.copy(d)
    assert m._number_of_objects() == 1
    del d
    gc.collect()
    time.sleep(0.1)
    assert d2["a"] == 1 and d3["a"] == 1 and m._number_of_objects() == 1
    del d2, d3
    assert wait_for(lambda: m._number_of_objects() == 0)
    info = m._server_info()
    assert info["transits"] == 0 and info["refcount"] == {}


def test_nested_proxies_are_freed(mpx_manager):
    m = mpx_manager
    outer = m.list()
    outer.append(m.dict(x=1))
    outer[0]["y"] = 2
    assert outer[0]["y"] == 2 and outer[0]["x"] == 1
    assert m._number_of_objects() == 2
    # Many rounds of proxies going in and out of the server: its own
    # bookkeeping (posted by threads, flushed by another) must stay in order.
    for i in range(20):
        outer.append(m.dict(i=i))
        assert outer[-1]["i"] == i
        del outer[-1]
    assert wait_for(lambda: m._number_of_objects() == 2)
    del outer
    assert wait_for(lambda: m._number_of_objects() == 0)


def test_no_early_free_when_the_sender_drops_its_proxy(ctx, mpx_manager):
    m = mpx_manager
    d = m.dict(x=1)
    go = ctx.stdlib_context().Event()
    out = ctx.stdlib_context().Queue()
    p = ctx.Process(target=use_later, args=(d, go, out))
    p.start()
    p._args = ()          # the parent keeps no reference through the Process
    del d
    gc.collect()
    time.sleep(0.3)       # the parent's release has reached the server
    assert m._number_of_objects() == 1
    go.set()
    status, value = out.get(timeout=TIMEOUT)
    assert status == "ok", value
    assert value["x"] == 1
    p.join(TIMEOUT)
    assert wait_for(lambda: m._number_of_objects() == 0)


def test_no_early_free_through_a_queue(ctx, mpx_manager):
    m = mpx_manager
    q = ctx.stdlib_context().Queue()
    out = ctx.stdlib_context().Queue()
    d = m.dict(x=7)
    q.put(d)
    del d
    gc.collect()
    time.sleep(0.3)
    p = ctx.Process(target=read_from_queue, args=(q, out))
    p.start()
    assert out.get(timeout=TIMEOUT) == ("ok", 7)
    p.join(TIMEOUT)
    assert wait_for(lambda: m._number_of_objects() == 0)


def test_no_early_free_after_fork(backend):
    global _inherited
    ctx = mpx.get_context("fork")
    with ctx.Manager(backend=backend) as m:
        _inherited = m.dict(x=5)
        go = ctx.stdlib_context().Event()
        out = ctx.stdlib_context().Queue()
        p = ctx.Process(target=use_inherited, args=(go, out))
        p.start()
        _inherited = None
        gc.collect()
        time.sleep(0.3)
        assert m._number_of_objects() == 1
        go.set()
        assert out.get(timeout=TIMEOUT) == ("ok", 5)
        p.join(TIMEOUT)
        assert wait_for(lambda: m._number_of_objects() == 0)


def test_killed_client_releases_its_references(ctx, mpx_manager):
    m = mpx_manager
    d = m.dict()
    ready = ctx.stdlib_context().Event()
    p = ctx.Process(target=hold_forever, args=(d, ready))
    p.start()
    assert ready.wait(TIMEOUT)
    p._args = ()
    del d
    gc.collect()
    time.sleep(0.2)
    assert m._number_of_objects() == 1        # the child still holds it
    os.kill(p.pid, signal.SIGKILL)
    p.join(TIMEOUT)
    assert wait_for(lambda: m._number_of_objects() == 0)


def test_unclaimed_transit_expires(ctx, backend):
    with ctx.Manager(backend=backend, transit_timeout=0.3) as m:
        d = m.dict(x=1)
        data = pickle.dumps(d)
        del d
        gc.collect()
        time.sleep(0.1)
        assert m._number_of_objects() == 1    # kept alive by the pickle
        assert wait_for(lambda: m._number_of_objects() == 0, 5)
        stale = pickle.loads(data)
        with pytest.raises(ReferenceError):
            stale["x"]


def test_threads_share_a_manager(mpx_manager):
    lock = mpx_manager.Lock()
    counter = mpx_manager.Value("i", 0)
    errors = []

    def work():
        try:
            add_under_lock(lock, counter, 100)
        except Exception as e:   # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(TIMEOUT)
    assert not errors and counter.value == 400


def test_manager_surface():
    assert mpx.managers is mm
    assert mm.SyncManager.register is not None
    # Names mpx does not implement come from the stdlib.
    assert mm.SharedMemoryManager is std_managers.SharedMemoryManager
    assert mm.dispatch is std_managers.dispatch
    assert issubclass(mm.Token, std_managers.Token)
    with pytest.raises(AttributeError):
        mm.no_such_name
    with pytest.raises(ValueError, match="serializer"):
        mm.SyncManager(serializer="xmlrpclib")
    with pytest.raises(ValueError, match="backend"):
        mpx.Manager(backend="nope")
    with pytest.raises(ValueError, match="address"):
        mm.SyncManager(address=("host", "port"))
    with pytest.raises(TypeError, match="authkey"):
        mm.SyncManager(authkey="text")


def test_server_that_fails_to_start_reports_why(ctx, backend):
    m = mm.SyncManager(ctx=ctx, backend=backend)
    with pytest.raises(multiprocessing.ProcessError, match="initializer failed"):
        m.start(initializer=_failing_initializer)


def _failing_initializer():
    raise RuntimeError("initializer failed")


def test_shutdown_leaves_nothing_behind(ctx, backend):
    m = ctx.Manager(backend=backend)
    address = m.address
    d = m.dict(a=1)
    pid = m._process.pid
    m.shutdown()
    assert not m._process.is_alive()
    if backend in ("unix", "shm"):
        assert not os.path.exists(address)
        assert not os.path.exists(os.path.dirname(address))
    with pytest.raises((OSError, EOFError)):
        d["a"]
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)


def test_killed_server_leaves_nothing_behind(backend):
    m = mpx.get_context("fork").Manager(backend=backend)
    d = m.dict(a=1)
    os.kill(m._process.pid, signal.SIGKILL)
    m._process.join(TIMEOUT)
    with pytest.raises((OSError, EOFError)):
        d["a"]
    m.shutdown()
    if backend in ("unix", "shm"):
        assert not os.path.exists(m.address)
        assert not os.path.exists(os.path.dirname(m.address))


def test_unix_clients_can_use_an_shm_manager():
    if not {"shm", "unix"} <= set(MPX_BACKENDS):
        pytest.skip("needs the shm and unix backends")
    with mpx.get_context("fork").Manager(backend="shm") as m:
        d = m.dict(a=1)
        other = mm.SyncManager(address=m.address, authkey=bytes(m._authkey))
        other.connect()                      # an address string means unix
        assert other._backend == "unix"
        other.dict(b=2)
        assert d["a"] == 1
    with mpx.get_context("fork").Manager(backend="unix") as m:
        with pytest.raises(ConnectionError, match="does not serve over shared memory"):
            mm.SyncManager(address=m.address, authkey=bytes(m._authkey),
                           backend="shm").connect()
        m.dict()                             # and it keeps serving


def test_ctrl_c_interrupts_a_blocked_call(backend):
    ctx = mpx.get_context("fork")
    with ctx.Manager(backend=backend) as m:
        ev = m.Event()
        ready, out = ctx.stdlib_context().Event(), ctx.stdlib_context().Queue()
        p = ctx.Process(target=blocked_wait, args=(ev, ready, out))
        p.start()
        assert ready.wait(TIMEOUT)
        time.sleep(0.3)
        os.kill(p.pid, signal.SIGINT)
        assert out.get(timeout=TIMEOUT) == "interrupted"
        p.join(TIMEOUT)
        assert p.exitcode == 0
        d = m.dict(a=1)
        assert d["a"] == 1 and not ev.is_set()


# --- the stream transport (unix and tcp) -----------------------------------------

FRAME_SIZES = [0, 1, 7, 8, 9, 100, 65535 - 8, 65535, 65536, 65537, (1 << 20) + 3]


def stream_pair(kind):
    """Two connected raw sockets, as the transports make them."""
    if kind == "unix":
        return socket.socketpair()
    with socket.create_server(("127.0.0.1", 0)) as listener:
        a = socket.create_connection(listener.getsockname(), timeout=TIMEOUT)
        b, _ = listener.accept()
    for s in (a, b):
        s.settimeout(None)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return a, b


def payload(n, seed):
    return bytes((seed + i * 7) & 0xFF for i in range(min(n, 4096))) * (n // 4096) + \
        bytes((seed + i * 7) & 0xFF for i in range(n % 4096))


def run_writer(target, *args):
    errors = []

    def body():
        try:
            target(*args)
        except BaseException as e:      # reported by the test
            errors.append(e)

    t = threading.Thread(target=body, daemon=True)
    t.start()
    return t, errors


@pytest.mark.parametrize("kind", ["unix", "tcp"])
@pytest.mark.parametrize("steady", [False, True])
def test_stream_frames_of_every_size(kind, steady):
    """Frames of every size around the edges travel intact both ways, back
    to back (several in one read) and big ones through partial writes."""
    a, b = stream_pair(kind)
    ca, cb = _stream.Connection(a), _stream.Connection(b, steady=steady)
    try:
        frames = [payload(n, i) for i, n in enumerate(FRAME_SIZES)]
        t, errors = run_writer(lambda: [ca.send(f) for f in frames])
        got = [cb.recv() for _ in frames]
        t.join(TIMEOUT)
        assert not errors and [len(g) for g in got] == FRAME_SIZES
        assert all(g == f for g, f in zip(got, frames))
        t, errors = run_writer(lambda: [cb.send(f) for f in reversed(frames)])
        got = [ca.recv() for _ in frames]
        t.join(TIMEOUT)
        assert not errors and got == frames[::-1]
        ca.close()
        with pytest.raises(EOFError):
            cb.recv()
    finally:
        ca.close()
        cb.close()


def test_stream_large_frame_through_a_small_send_buffer():
    """sendmsg writes header and payload together; a small socket buffer
    makes it stop part way (even inside the header), and the rest follows."""
    a, b = socket.socketpair()
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ca, cb = _stream.Connection(a), _stream.Connection(b)
    try:
        big = payload(3 << 20, 5)
        t, errors = run_writer(ca.send, big)
        assert cb.recv() == big
        t.join(TIMEOUT)
        assert not errors
        # A header cut short: the sender's first write gets 3 of its bytes
        # out, then the rest.
        calls = []
        real = ca._sendmsg

        def stingy(buffers):
            if not calls:
                calls.append(1)
                return real([bytes(memoryview(buffers[0])[:3])])
            return real(buffers)

        ca._sendmsg = stingy
        t, errors = run_writer(ca.send, big)
        assert cb.recv() == big
        t.join(TIMEOUT)
        assert not errors and calls
    finally:
        ca.close()
        cb.close()


def test_stream_frame_trickling_in_byte_by_byte():
    a, b = socket.socketpair()
    cb = _stream.Connection(b)
    try:
        data = b"".join(struct_frame(payload(n, n)) for n in (0, 5, 70000, 3))

        # Bytes one by one near the frame edges, the middle in bulk.
        def send_all():
            head, tail = data[:200], data[len(data) - 50:]
            for i in range(len(head)):
                a.send(head[i:i + 1])
            a.sendall(data[200:len(data) - 50])
            for i in range(len(tail)):
                a.send(tail[i:i + 1])

        t, errors = run_writer(send_all)
        got = [cb.recv() for _ in range(4)]
        t.join(TIMEOUT)
        assert not errors
        assert got == [payload(n, n) for n in (0, 5, 70000, 3)]
    finally:
        a.close()
        cb.close()


def struct_frame(body):
    return _stream._HDR.pack(len(body)) + body


def test_stream_spin_adapts(monkeypatch):
    """A client connection spins less after each slow answer, down to not at
    all, probes every _PROBE_EVERY waits, and spins in full again once an
    answer comes fast; a steady (server) connection never gives up."""
    if not _stream._CAN_SPIN:
        pytest.skip("one CPU: connections never spin")
    monkeypatch.setattr(_stream, "_crowded", lambda: False)
    slow = 0.05          # far longer than any spin
    a, b = socket.socketpair()
    client, steady = _stream.Connection(a), _stream.Connection(b, steady=True)
    try:
        def late(conn, data):
            time.sleep(slow)
            conn.send(data)

        def slow_answer(reader, writer):
            t, errors = run_writer(late, writer, b"x")
            assert reader.recv() == b"x"
            t.join(TIMEOUT)
            assert not errors

        spins = []
        for _ in range(5):
            slow_answer(client, steady)
            spins.append(client._spin)
        assert spins[0] == _stream._SPIN_MAX / 2 and spins[-1] == 0.0
        assert all(x > y for x, y in zip(spins, spins[1:]))
        # Sleeping now; a failed probe leaves it asleep.
        for _ in range(_stream._PROBE_EVERY):
            slow_answer(client, steady)
            assert client._spin == 0.0
        # An answer already there when the probe looks: full spin again.
        for i in range(_stream._PROBE_EVERY):
            steady.send(b"y")
            assert client.recv() == b"y"
            if client._spin:
                break
        assert client._spin == _stream._SPIN_MAX
        # The steady end keeps its full spin however slow the other is.
        for _ in range(3):
            slow_answer(steady, client)
        assert steady._spin == _stream._SPIN_MAX
        # Not spinning when told not to, nor on a crowded machine (where a
        # slow answer then costs no spin either).
        client._spin, idle = 0.0, client._idle
        steady.send(b"z")
        assert client.recv(spin=False) == b"z" and client._idle == idle
        monkeypatch.setattr(_stream, "_crowded", lambda: True)
        client._spin = _stream._SPIN_MAX
        slow_answer(client, steady)
        assert client._spin == _stream._SPIN_MAX
    finally:
        client.close()
        steady.close()


def test_large_values_through_the_manager(mpx_manager):
    """Requests and replies above the direct-read size (sendmsg, the
    preallocated read) both ways."""
    d = mpx_manager.dict()
    for n in (65536 - 100, 65536, 70000, 3 << 20):
        value = payload(n, n & 0xFF)
        d[n] = value
        assert d[n] == value
    assert len(d) == 4
