"""The transports the benchmark compares: mpx's and its peers'.

Each contender is an :class:`Adapter`. The measurement process (see
``mpx.bench.worker``) calls ``setup(kind, case)`` before it forks its
children, each child calls ``open(role, index)`` and gets an :class:`End`
(``put``/``get`` and, where the transport has them, ``put_many``/``get_many``),
and the measurement process calls ``teardown()`` at the end.

Roles: ``producer``/``consumer`` for a one-way stream, ``ping``/``pong`` for a
round trip. Channels that must not cross a fork (zmq sockets) are made in
``open``, in the child; everything else is made in ``setup`` and inherited.

mpx contenders use only mpx's public API (``get_context(...).Queue(backend=)``
and friends), so every backend the registry offers is measured the way a user
would use it. Peers are used the way their own documentation recommends,
at their best (zmq sends raw bytes without pickling, numpy arrays as pickle
protocol 5 frames without copies), so that a ratio is never flattered by a
clumsy peer.
"""

import functools
import json
import os
import pickle

SENTINEL_SMALL = None      # ends a stream of small objects
SENTINEL_PAYLOAD = b""     # ends a stream of bytes or arrays (an empty payload)
BIG = 64 * 1024            # from here on, zero-copy sends pay off in zmq


def mpx_context():
    """mpx's fork context (the measurement process forks its children)."""
    import mpx
    return mpx.get_context("fork")


def std_context():
    import multiprocessing
    return multiprocessing.get_context("fork")


class End:
    """One process's end of a channel."""

    def __init__(self, put=None, get=None, put_many=None, get_many=None,
                 close=None, sentinel=None):
        self.put = put
        self.get = get
        self.put_many = put_many          # None: the transport has no batch call
        self.get_many = get_many          # called with no argument, returns a list
        self.sentinel = sentinel
        self._close = close

    def finish(self, n_sentinels, consumers_done, deadline):
        """Tell the consumers the stream is over."""
        for _ in range(n_sentinels):
            self.put(self.sentinel)

    def close(self):
        if self._close is not None:
            self._close()


class Adapter:
    """Base of every contender."""

    kinds = ("stream",)

    def __init__(self, spec, env):
        self.spec = spec          # the contender's entry from the case table
        self.env = env            # tmpdir, manifest path, timeout

    @property
    def timeout(self):
        return self.env["timeout"]

    def record(self, kind, ident):
        """Note a named object in the manifest before using it, so that the
        harness can remove it even if this process is killed."""
        with open(self.env["manifest"], "a") as f:
            f.write(json.dumps({"kind": kind, "id": ident}) + "\n")

    def setup(self, kind, case):
        if kind not in self.kinds:
            raise ValueError(f"{self.spec['name']} cannot run a {kind} case")
        self.kind = kind
        self.case = case
        self.sentinel = SENTINEL_SMALL if case["payload"] == "small" else SENTINEL_PAYLOAD

    def open(self, role, index):
        raise NotImplementedError

    def teardown(self):
        pass


# --- queues: objects in, objects out ----------------------------------------

class _QueueAdapter(Adapter):
    """A queue-like object per direction; a stream uses one, a round trip two."""

    kinds = ("stream", "rtt")

    def make(self):
        raise NotImplementedError

    def setup(self, kind, case):
        super().setup(kind, case)
        self.queues = [self.make() for _ in range(2 if kind == "rtt" else 1)]

    def end(self, q_out, q_in):
        return End(put=None if q_out is None else self.put_fn(q_out),
                   get=None if q_in is None else self.get_fn(q_in),
                   put_many=None if q_out is None else self.put_many_fn(q_out),
                   get_many=None if q_in is None else self.get_many_fn(q_in),
                   close=functools.partial(self.close_fn, q_out),
                   sentinel=self.sentinel)

    def open(self, role, index):
        qs = self.queues
        if role == "producer":
            return self.end(qs[0], None)
        if role == "consumer":
            return self.end(None, qs[0])
        if role == "ping":
            return self.end(qs[0], qs[1])
        if role == "pong":
            return self.end(qs[1], qs[0])
        raise ValueError(role)

    def put_fn(self, q):
        return q.put

    def get_fn(self, q):
        return q.get

    def put_many_fn(self, q):
        return None

    def get_many_fn(self, q):
        return None

    def close_fn(self, q_out):
        # Wait until what this process put has left it (feeder threads).
        if q_out is not None:
            for name in ("close", "join_thread"):
                method = getattr(q_out, name, None)
                if method is not None:
                    method()


class MpxQueue(_QueueAdapter):
    """``mpx.Queue(backend=...)``, with put_many/get_many where it has them."""

    def make(self):
        return mpx_context().Queue(backend=self.spec["backend"])

    def put_many_fn(self, q):
        return getattr(q, "put_many", None)

    def get_many_fn(self, q):
        if not hasattr(q, "get_many"):
            return None
        batch = self.case["batch"] or 1
        return functools.partial(q.get_many, max_items=batch)


class StdQueue(_QueueAdapter):
    def make(self):
        return std_context().Queue()


class StdSimpleQueue(_QueueAdapter):
    def make(self):
        return std_context().SimpleQueue()

    def close_fn(self, q_out):
        pass     # no feeder thread: a put has reached the pipe when it returns


class FasterFifo(_QueueAdapter):
    """faster-fifo: a shared-memory circular buffer; a message must fit whole."""

    def make(self):
        import faster_fifo
        # The default buffer (1 MB) cannot hold one 1 MiB message; give room
        # for a few messages so that producer and consumer overlap.
        size = max(10 ** 6, 4 * (self.case["size"] + 4096))
        return faster_fifo.Queue(max_size_bytes=size)

    def put_fn(self, q):
        return functools.partial(q.put, block=True, timeout=self.timeout)

    def get_fn(self, q):
        return self._retrying(functools.partial(q.get, block=True, timeout=self.timeout))

    def put_many_fn(self, q):
        return functools.partial(q.put_many, block=True, timeout=self.timeout)

    def get_many_fn(self, q):
        return self._retrying(functools.partial(
            q.get_many, block=True, timeout=self.timeout,
            max_messages_to_get=self.case["batch"] or 1))

    def _retrying(self, get):
        """With several consumers, faster-fifo's blocking get sometimes
        raises Empty at once (another consumer took the message it was woken
        for); its users retry, and so do we, until the timeout. With one
        consumer the call is used as it is."""
        if self.case["consumers"] == 1:
            return get
        import queue
        import time
        timeout = self.timeout

        def retrying_get():
            deadline = None
            while True:
                try:
                    return get()
                except queue.Empty:
                    now = time.monotonic()
                    if deadline is None:
                        deadline = now + timeout
                    elif now > deadline:
                        raise
        return retrying_get

    def close_fn(self, q_out):
        pass     # no feeder thread; close() would mark the queue closed for all


class _PickledKernelQueue(_QueueAdapter):
    """A kernel message queue fed with ``pickle.dumps`` (protocol 5)."""

    def put_fn(self, q):
        send, dumps = q.send, pickle.dumps
        return lambda obj: send(dumps(obj, 5))

    def get_fn(self, q):
        receive, loads = q.receive, pickle.loads
        return lambda: loads(receive()[0])

    def close_fn(self, q_out):
        pass


class PosixIpc(_PickledKernelQueue):
    """Raw ``posix_ipc.MessageQueue`` with the system's default limits."""

    _count = 0

    def make(self):
        import posix_ipc
        PosixIpc._count += 1
        name = f"/mpxbench-{os.getpid()}-{PosixIpc._count}"
        self.record("posix_mq", name)
        return posix_ipc.MessageQueue(name, posix_ipc.O_CREX, mode=0o600)

    def teardown(self):
        for q in getattr(self, "queues", ()):
            q.close()
            q.unlink()


class SysvIpc(_PickledKernelQueue):
    """Raw ``sysv_ipc.MessageQueue`` (a message may be at most MSGMAX bytes)."""

    def make(self):
        import sysv_ipc
        q = sysv_ipc.MessageQueue(None, sysv_ipc.IPC_CREX, mode=0o600,
                                  max_message_size=8192)
        self.record("sysv_msg", q.key)
        return q

    def teardown(self):
        for q in getattr(self, "queues", ()):
            q.remove()


# --- pipes: two ends -----------------------------------------------------------

class _PipeAdapter(Adapter):
    """A Pipe: ``send``/``recv`` objects, or ``send_bytes``/``recv_bytes``
    when the case carries bytes."""

    kinds = ("stream", "rtt")

    def make(self, duplex):
        raise NotImplementedError

    def setup(self, kind, case):
        super().setup(kind, case)
        if kind == "rtt":
            self.a, self.b = self.make(True)
        else:
            self.a, self.b = self.make(False)      # (reader, writer)

    def _end(self, conn, writes, reads):
        raw = self.case["payload"] == "bytes"
        return End(put=(conn.send_bytes if raw else conn.send) if writes else None,
                   get=(conn.recv_bytes if raw else conn.recv) if reads else None,
                   close=conn.close, sentinel=self.sentinel)

    def open(self, role, index):
        if role == "producer":
            return self._end(self.b, True, False)
        if role == "consumer":
            return self._end(self.a, False, True)
        if role == "ping":
            return self._end(self.a, True, True)
        if role == "pong":
            return self._end(self.b, True, True)
        raise ValueError(role)


class MpxPipe(_PipeAdapter):
    def make(self, duplex):
        return mpx_context().Pipe(duplex, backend=self.spec["backend"])


class StdPipe(_PipeAdapter):
    def make(self, duplex):
        return std_context().Pipe(duplex)


# --- zmq over ipc:// -------------------------------------------------------------

class _ZmqAdapter(Adapter):
    """pyzmq over an ipc:// endpoint in the run's temporary directory.

    Objects travel with ``send_pyobj``; bytes as raw frames (no pickling at
    all, zero-copy from 64 KiB up); numpy arrays as pickle protocol 5 with the
    array's buffer as its own frame (the pattern pyzmq's docs recommend).

    libzmq (4.3 here) can drop the last messages of a sender that closes its
    socket right after sending, LINGER notwithstanding: the benchmark saw
    streams lose their final tenth. So a sender closes only once every
    receiver has said it is done (a shared counter), as zmq programs that
    need every message do; that wait is after the timed part.
    """

    kinds = ("stream", "rtt")
    _count = 0

    def setup(self, kind, case):
        super().setup(kind, case)
        _ZmqAdapter._count += 1
        self.address = "ipc://" + os.path.join(
            self.env["tmpdir"], f"zmq-{os.getpid()}-{_ZmqAdapter._count}")
        self.receivers_done = std_context().Value("i", 0)
        self.receivers = 1 if kind == "rtt" else case["consumers"]

    def _close(self, sock, receiver):
        import time
        if receiver:
            with self.receivers_done.get_lock():
                self.receivers_done.value += 1
        else:
            deadline = time.monotonic() + self.timeout
            while self.receivers_done.value < self.receivers:
                if time.monotonic() > deadline:
                    break        # the receiver is gone: the measurement reports it
                time.sleep(0.001)
        sock.close()
        self.zctx.term()

    def socket(self, kind, bind):
        import zmq
        self.zctx = zmq.Context()
        sock = self.zctx.socket(kind)
        # Bounded exit: undelivered messages of a dead peer never hold us.
        sock.setsockopt(zmq.LINGER, int(self.timeout * 1000))
        if bind:
            sock.bind(self.address)
        else:
            # Connect once the endpoint exists: a connect that comes first is
            # retried only every 100 ms, which would land in the timed part.
            import time
            path = self.address[len("ipc://"):]
            deadline = time.monotonic() + self.timeout
            while not os.path.exists(path) and time.monotonic() < deadline:
                time.sleep(0.001)
            sock.connect(self.address)
        return sock

    def _funcs(self, sock):
        """(send(obj, flags=0), recv()) for this case's payload."""
        payload, size = self.case["payload"], self.case["size"]
        copy = size < BIG
        if payload == "bytes":
            def send(obj, flags=0):
                sock.send(obj, flags, copy=copy)
            if copy:
                recv = sock.recv
            else:
                def recv():
                    return sock.recv(copy=False).buffer
            return send, recv
        if payload == "numpy":
            def send(obj, flags=0):
                buffers = []
                head = pickle.dumps(obj, 5, buffer_callback=buffers.append)
                sock.send_multipart([head] + [b.raw() for b in buffers], flags,
                                    copy=copy)

            def recv():
                frames = sock.recv_multipart(copy=copy)
                if copy:
                    return pickle.loads(frames[0], buffers=frames[1:])
                return pickle.loads(frames[0].buffer,
                                    buffers=[f.buffer for f in frames[1:]])
            return send, recv
        return sock.send_pyobj, sock.recv_pyobj


class ZmqPushPull(_ZmqAdapter):
    """PUSH/PULL: the side with one process binds, the others connect."""

    kinds = ("stream",)

    def open(self, role, index):
        import zmq
        many_producers = self.case["producers"] > 1
        if role == "producer":
            sock = self.socket(zmq.PUSH, bind=not many_producers)
            send, _ = self._funcs(sock)
            end = _ZmqPushEnd(put=send, close=functools.partial(self._close, sock, False),
                              sentinel=self.sentinel)
            end.send_nowait = functools.partial(send, self.sentinel, zmq.NOBLOCK)
            return end
        sock = self.socket(zmq.PULL, bind=many_producers)
        _, recv = self._funcs(sock)
        return End(get=recv, close=functools.partial(self._close, sock, True),
                   sentinel=self.sentinel)


class _ZmqPushEnd(End):
    def finish(self, n_sentinels, consumers_done, deadline):
        """PUSH deals messages round-robin to peers that are not full, so one
        end-of-stream per consumer may land twice on the same consumer. With
        several consumers, keep offering end markers until every consumer
        has said it is done (extra markers go to sockets that are closing)."""
        if n_sentinels <= 1:
            return End.finish(self, n_sentinels, consumers_done, deadline)
        import time
        import zmq
        for _ in range(n_sentinels):
            self.put(self.sentinel)
        while consumers_done.value < n_sentinels:
            if time.monotonic() > deadline:
                raise TimeoutError("zmq consumers did not all see the end of the stream")
            try:
                self.send_nowait()
            except zmq.Again:
                pass
            time.sleep(0.001)


class ZmqPair(_ZmqAdapter):
    """PAIR: exactly two peers (a pipe's or a round trip's two ends)."""

    def open(self, role, index):
        import zmq
        sock = self.socket(zmq.PAIR, bind=role in ("producer", "ping"))
        send, recv = self._funcs(sock)
        return End(put=send if role != "consumer" else None,
                   get=recv if role != "producer" else None,
                   close=functools.partial(self._close, sock, role in ("consumer", "pong")),
                   sentinel=self.sentinel)


# --- managers ----------------------------------------------------------------------

class MpxManager(Adapter):
    kinds = ("manager",)

    def start(self):
        return mpx_context().Manager(backend=self.spec["backend"])


class StdManager(Adapter):
    kinds = ("manager",)

    def start(self):
        return std_context().Manager()


class StdManagerTcp(Adapter):
    kinds = ("manager",)

    def start(self):
        from multiprocessing.managers import SyncManager
        manager = SyncManager(address=("127.0.0.1", 0), ctx=std_context())
        manager.start()
        return manager


# --- array hand-off ----------------------------------------------------------------

class MpxSharedArray(Adapter):
    """An ``mpx.SharedArray`` sent through ``mpx.Queue()`` (default backend)."""

    kinds = ("handoff",)
    shares_memory = True

    def make_array(self, n):
        import numpy as np
        return mpx_context().SharedArray((n,), np.float64, backend=self.spec["backend"])

    def queues(self):
        ctx = mpx_context()
        return ctx.Queue(), ctx.Queue()


class StdQueueNdarray(Adapter):
    """A plain ndarray through ``multiprocessing.Queue``: pickled both ways."""

    kinds = ("handoff",)
    shares_memory = False

    def make_array(self, n):
        import numpy as np
        return np.empty(n, np.float64)

    def queues(self):
        ctx = std_context()
        return ctx.Queue(), ctx.Queue()


# --- pools and executors: a function mapped over tasks -----------------------------

def pool_echo(x):
    """The task of the pool cases: gives back its argument (module level, so
    that every pool can find it by name in its workers)."""
    return x


class _PoolAdapter(Adapter):
    """A pool of worker processes: start(n) -> pool, then map or
    imap_unordered over it, stop(pool). chunksize None: the pool's default."""

    kinds = ("pool",)

    def start(self, workers):
        raise NotImplementedError

    def map(self, pool, fn, items, chunksize):
        if chunksize is None:
            return pool.map(fn, items)
        return pool.map(fn, items, chunksize)

    def imap_unordered(self, pool, fn, items, chunksize):
        return list(pool.imap_unordered(fn, items, chunksize or 1))

    def stop(self, pool):
        pool.close()
        pool.join()


class MpxPool(_PoolAdapter):
    """``mpx.get_context("fork").Pool``: mpx's own pool once it is there."""

    def start(self, workers):
        return mpx_context().Pool(workers)


class StdPool(_PoolAdapter):
    def start(self, workers):
        return std_context().Pool(workers)


class _ExecutorAdapter(_PoolAdapter):
    def map(self, pool, fn, items, chunksize):
        return list(pool.map(fn, items, chunksize=chunksize or 1))

    def imap_unordered(self, pool, fn, items, chunksize):
        import concurrent.futures as cf
        futures = [pool.submit(fn, x) for x in items]
        return [f.result() for f in cf.as_completed(futures)]

    def stop(self, pool):
        pool.shutdown(wait=True)


class MpxExecutor(_ExecutorAdapter):
    """mpx's executor (mpx.futures: concurrent.futures' API on mpx.Pool)."""

    def start(self, workers):
        from mpx.futures import ProcessPoolExecutor
        return ProcessPoolExecutor(workers, mp_context=mpx_context())


class StdExecutorMpxContext(_ExecutorAdapter):
    """The stdlib's ProcessPoolExecutor with an mpx context as mp_context."""

    def start(self, workers):
        import concurrent.futures as cf
        return cf.ProcessPoolExecutor(workers, mp_context=mpx_context())


class StdExecutor(_ExecutorAdapter):
    def start(self, workers):
        import concurrent.futures as cf
        return cf.ProcessPoolExecutor(workers, mp_context=std_context())


class Loky(_ExecutorAdapter):
    def start(self, workers):
        import loky
        return loky.ProcessPoolExecutor(max_workers=workers)


class Mpire(_PoolAdapter):
    def start(self, workers):
        import mpire
        return mpire.WorkerPool(n_jobs=workers, start_method="fork", keep_alive=True)

    def map(self, pool, fn, items, chunksize):
        return pool.map(fn, items, chunk_size=chunksize, concatenate_numpy_output=False)

    def imap_unordered(self, pool, fn, items, chunksize):
        return list(pool.imap_unordered(fn, items, chunk_size=chunksize or 1))

    def stop(self, pool):
        pool.stop_and_join()


ADAPTERS = {
    "mpx.Pool": MpxPool,
    "mpx.futures.ProcessPoolExecutor": MpxExecutor,
    "mp.ProcessPoolExecutor(mpx context)": StdExecutorMpxContext,
    "mp.Pool": StdPool,
    "mp.ProcessPoolExecutor": StdExecutor,
    "loky": Loky,
    "mpire": Mpire,
    "mpx.Queue": MpxQueue,
    "mpx.Pipe": MpxPipe,
    "mpx.Manager": MpxManager,
    "mpx.SharedArray": MpxSharedArray,
    "mp.Queue": StdQueue,
    "mp.SimpleQueue": StdSimpleQueue,
    "mp.Pipe": StdPipe,
    "mp.Manager": StdManager,
    "mp.Manager(tcp)": StdManagerTcp,
    "mp.Queue(ndarray)": StdQueueNdarray,
    "faster-fifo": FasterFifo,
    "zmq PUSH/PULL": ZmqPushPull,
    "zmq PAIR": ZmqPair,
    "posix_ipc+pickle": PosixIpc,
    "sysv_ipc+pickle": SysvIpc,
}


def make(spec, env):
    return ADAPTERS[spec["adapter"]](spec, env)


def cleanup(manifest_path):
    """Remove every named object a (possibly killed) measurement recorded;
    return the entries."""
    try:
        with open(manifest_path) as f:
            entries = [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []
    for entry in entries:
        try:
            if entry["kind"] == "posix_mq":
                import posix_ipc
                posix_ipc.unlink_message_queue(entry["id"])
            elif entry["kind"] == "sysv_msg":
                import sysv_ipc
                sysv_ipc.remove_message_queue(
                    sysv_ipc.MessageQueue(entry["id"]).id)
        except Exception:
            pass      # already removed by the measurement itself
    return entries


def exists(entry):
    """Whether a recorded named object is still there (for the tests)."""
    try:
        if entry["kind"] == "posix_mq":
            import posix_ipc
            posix_ipc.MessageQueue(entry["id"]).close()
        elif entry["kind"] == "sysv_msg":
            import sysv_ipc
            sysv_ipc.MessageQueue(entry["id"])
        return True
    except Exception:
        return False
