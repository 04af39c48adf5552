"""mpx queues whose items live in a Ray actor.

Facts this module is built on
-----------------------------
- One actor per queue holds the items (bytes made by the mpx serializer in
  the caller's process, so an object that cannot be serialized raises from
  ``put`` and the queue is unchanged, and lambdas travel).
- It is a threaded actor with two concurrency groups. Calls that never wait
  (a put with room, a get with items, qsize, ...) run on its default
  thread; calls that must wait run in the "wait" group's threads. A plain
  (threaded) actor call costs about 1.5 ms here, against about 2 ms for an
  asyncio actor's (as ``ray.util.queue.Queue``'s is): measured with Ray
  2.60, 600-700 put+get pairs a second against 450-550.
- A waiting call waits at most ``_SLICE`` seconds, then answers "not yet"
  and the caller calls again (keeping its own deadline), so every call
  comes back (with items, or saying Empty/Full/ShutDown) and the caller
  never gives up on a call whose answer may hold items. The slices also
  bound how long a call waits for a free "wait" thread when more than
  ``_WAITERS`` callers wait at once: it starts within a slice of one of
  them, so its timeout can run late by up to ``_SLICE`` per ``_WAITERS``
  callers ahead of it, and nothing waits for ever behind them.
- One actor call per ``put_many``/``get_many`` moves any number of items:
  the call costs about a millisecond, the items almost nothing, which is
  why one call per item (``ray.util.queue.Queue``, or put/get here) is slow
  and the batch calls are not.
- Every queue is a *named* actor in the namespace ``"mpx"``, so a pickled
  queue is just its name (and the cluster's address): it opens again in a
  Ray task or actor, and in any process that can join the cluster. A queue
  made with ``name=`` is detached (it outlives its creator until
  ``unlink()``); an anonymous one gets a unique name, is not detached, and
  Ray ends it with its creator (or when no handle to it is left).
- The actor lives on the creator's node. If that node is lost, the queue
  is lost with it: calls then raise ConnectionError.
- A caller that dies while the answer to its ``get`` is on its way loses
  those items (the killed process's own in-flight message, as for the local
  backends); items whose ``put`` returned are never lost while the actor
  lives. Ctrl-C during a ``get``, or a cancelled ``get_async``, tells the
  actor to end the waiting call (each carries a token for that), waits for
  its answer and puts the items it took back at the front of the queue.
- Coroutines await the same calls (Ray object refs are awaitable): the
  series of calls of a put or get is written once, as a generator that
  the blocking and the awaiting driver both run.
"""

import asyncio
import collections
import itertools
import threading
import time
import uuid
from queue import Empty, Full

from ..._aio import AsyncIterMixin
from ..._exceptions import ShutDown
from ..._timeouts import seconds
from . import _portable, _runtime

__all__ = ["RayQueue", "RaySimpleQueue", "RayJoinableQueue", "make", "NAMESPACE"]

NAMESPACE = "mpx"
_PREFIX = "mpx-queue:"

# Status words of the actor's answers.
_OK, _EMPTY, _FULL, _SHUT = 0, 1, 2, 3

_WAITERS = 32       # threads of a queue's actor that may wait at once
_SLICE = 1.0        # the longest one waiting call holds one of them
_FORGET = 600.0     # how long an abort for a call that already answered is kept

_server_class = None


class _QueueServer:
    """The actor's body (wrapped with ``ray.remote`` on first use). The
    ``*_wait`` methods run in the "wait" group's threads, the others on
    the actor's default thread; one lock guards the state."""

    def __init__(self, family, maxsize):
        self._family = family
        self._maxsize = maxsize
        self._counts_tasks = family == "JoinableQueue"
        self._items = collections.deque()
        self._shut = False
        self._unfinished = 0
        self._changed = threading.Condition()
        self._aborted = {}          # token of a waiting call -> when abort() came

    def info(self):
        return self._family, self._maxsize

    # -- calls that never wait ------------------------------------------

    def put(self, items):
        """Append what fits of `items`; returns (status, how many went in)."""
        with self._changed:
            return self._put_locked(items)

    def get(self, max_items):
        """Take up to `max_items` (None: all): a list of items, or a status
        word (_EMPTY, _SHUT) when there are none."""
        with self._changed:
            return self._get_locked(max_items)

    def unget(self, items):
        """Put back at the front what an interrupted get took."""
        with self._changed:
            self._items.extendleft(reversed(items))
            self._changed.notify_all()

    def qsize(self):
        return len(self._items)

    def full(self):
        with self._changed:
            room = self._room()
        return room is not None and room <= 0

    def shutdown(self, immediate):
        with self._changed:
            self._shut = True
            if immediate:
                self._unfinished = max(0, self._unfinished - len(self._items))
                self._items.clear()
            self._changed.notify_all()

    def is_shutdown(self):
        return self._shut

    def abort(self, token):
        """The caller of the waiting call `token` gave up (Ctrl-C, a
        cancelled coroutine): that call answers now, with what it has. An
        abort that comes after its call answered is forgotten in a while."""
        with self._changed:
            now = time.monotonic()
            # Tokens are unique, so insertion order is age order: the
            # stale ones are at the front.
            while self._aborted:
                oldest, when = next(iter(self._aborted.items()))
                if now - when <= _FORGET:
                    break
                del self._aborted[oldest]
            self._aborted[token] = now
            self._changed.notify_all()

    def task_done(self):
        with self._changed:
            if self._unfinished <= 0:
                return False
            self._unfinished -= 1
            if self._unfinished == 0:
                self._changed.notify_all()
            return True

    # -- calls that may wait (at most `wait` <= _SLICE seconds) -----------

    def put_wait(self, items, wait, token):
        with self._changed:
            deadline = time.monotonic() + wait
            done = 0
            if self._aborted.pop(token, None) is not None:
                return _FULL, 0          # given up before it started
            while True:
                status, n = self._put_locked(items[done:] if done else items)
                done += n
                if status != _FULL or not self._sleep(deadline, token):
                    return status, done

    def get_wait(self, max_items, wait, token):
        with self._changed:
            deadline = time.monotonic() + wait
            if self._aborted.pop(token, None) is not None:
                return _EMPTY            # given up before it started
            while True:
                out = self._get_locked(max_items)
                if out != _EMPTY or not self._sleep(deadline, token):
                    return out

    def join_wait(self, wait):
        """True once every item put was task_done(); False if `wait` ran out."""
        with self._changed:
            deadline = time.monotonic() + wait
            while self._unfinished:
                if not self._sleep(deadline):
                    return False
            return True

    # -- with the lock held -------------------------------------------------

    def _sleep(self, deadline, token=None):
        """Wait for a change; False once `deadline` has passed or the call
        `token` was aborted."""
        left = deadline - time.monotonic()
        if left <= 0 or self._aborted.pop(token, None) is not None:
            return False
        self._changed.wait(left)
        return True

    def _room(self):
        if self._maxsize <= 0:
            return None
        return self._maxsize - len(self._items)

    def _put_locked(self, items):
        if self._shut:
            return _SHUT, 0
        room = self._room()
        n = len(items) if room is None else max(0, min(room, len(items)))
        if n:
            self._items.extend(items if n == len(items) else items[:n])
            if self._counts_tasks:
                self._unfinished += n
            self._changed.notify_all()
        return (_OK if n == len(items) else _FULL), n

    def _get_locked(self, max_items):
        items = self._items
        if not items:
            return _SHUT if self._shut else _EMPTY
        n = len(items) if max_items is None else min(max_items, len(items))
        out = [items.popleft() for _ in range(n)]
        if self._maxsize > 0:
            self._changed.notify_all()      # room for waiting puts
        return out


def _server(ray):
    global _server_class
    if _server_class is None:
        for method in ("put_wait", "get_wait", "join_wait"):
            ray.method(concurrency_group="wait")(getattr(_QueueServer, method))
        # Items wait in the actor, not CPUs: it takes no CPU, so a queue
        # never waits for a free one.
        _server_class = ray.remote(num_cpus=0, max_restarts=0,
                                   concurrency_groups={"wait": _WAITERS})(_QueueServer)
    return _server_class


def _local_node(ray):
    # On the creator's node, so its calls stay local. Not "soft": with
    # soft=True Ray 2.60 placed a zero-CPU actor on another node about half
    # the time (measured with two nodes), and the queue then died with a
    # node its creator never used.
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy
    node = ray.get_runtime_context().get_node_id()
    return NodeAffinitySchedulingStrategy(node_id=node, soft=False)


def make(family, maxsize, serializer, name=None, create=True, address=None):
    """A new or existing queue of `family` ("Queue", "SimpleQueue",
    "JoinableQueue")."""
    maxsize = int(maxsize or 0)
    cls = _CLASSES[family]
    ray = _runtime.acquire(address)
    try:
        if name is None:
            actor_name = _PREFIX + "anon-" + uuid.uuid4().hex
            actor = _server(ray).options(
                name=actor_name, namespace=NAMESPACE,
                scheduling_strategy=_local_node(ray)).remote(family, maxsize)
        else:
            if not isinstance(name, str) or not name:
                raise ValueError(f"a ray queue's name must be a non-empty str, not {name!r}")
            actor_name = _PREFIX + name
            if create:
                actor = _server(ray).options(
                    name=actor_name, namespace=NAMESPACE, lifetime="detached",
                    get_if_exists=True,
                    scheduling_strategy=_local_node(ray)).remote(family, maxsize)
            else:
                actor = _find(ray, actor_name, name)
            kind, size = ray.get(actor.info.remote())
            if kind != family:
                raise ValueError(f"the ray queue {name!r} is a {kind}, not a {family}")
            if maxsize and size != maxsize:
                raise ValueError(f"the ray queue {name!r} has maxsize {size}, not {maxsize}")
            maxsize = size
    except BaseException:
        _runtime.release()
        raise
    return cls(actor, actor_name, name, maxsize, serializer, _runtime.gcs_address(),
               counted=True)


def _find(ray, actor_name, name):
    try:
        return ray.get_actor(actor_name, namespace=NAMESPACE)
    except ValueError:
        raise FileNotFoundError(f"no ray queue named {name!r} in this Ray cluster") from None


class RayQueue(AsyncIterMixin):
    """``multiprocessing.Queue``'s API (plus put_many/get_many, shutdown,
    unlink, and the awaitable get_async, put_async, get_many_async and
    ``async for`` of the local queues) over a Ray actor; see the module's
    notes."""

    _family = "Queue"

    def __init__(self, actor, actor_name, name, maxsize, serializer, address, counted=False):
        self._actor = actor
        self._actor_name = actor_name
        self.name = name
        self.anonymous = name is None
        self._maxsize = maxsize
        self._serializer = serializer
        self._dumps = serializer.dumps
        self._loads = serializer.loads
        self._address = address
        self._counted = counted      # holds a use of this process's Ray (see _runtime)
        self._closed = False

    # -- calls to the actor ----------------------------------------------

    def _ray(self):
        if self._closed:
            raise ValueError(f"{self!r} is closed")
        _runtime.check_process()
        return _runtime.ray_module()

    def _call(self, ray, ref):
        try:
            return ray.get(ref)
        except ray.exceptions.RayActorError as e:
            raise self._gone(e) from e

    def _gone(self, e):
        return ConnectionError(f"{self!r} is gone: its Ray actor died or was removed "
                               f"(unlink(), or its node was lost): {e}")

    # A put or get is a series of actor calls: one that never waits, then,
    # while the queue is full (empty) and time is left, waiting ones of at
    # most a slice each. The series is written once, as a generator that
    # yields (the call's ref, its token: None for a call that never waits)
    # and is sent each answer; _run drives it blocking, _run_async awaiting.

    def _put_calls(self, datas, block, timeout):
        actor = self._actor
        deadline = _Deadline(seconds(timeout, block))
        status, done = yield actor.put.remote(datas), None
        while status == _FULL:
            wait = deadline.slice()
            if wait is None:
                break
            token = _token()
            status, n = yield actor.put_wait.remote(datas[done:], wait, token), token
            done += n
        if status == _OK:
            return
        err = ShutDown() if status == _SHUT else Full()
        err.put_count = done
        raise err

    def _get_calls(self, max_items, block, timeout):
        actor = self._actor
        deadline = _Deadline(seconds(timeout, block))
        out = yield actor.get.remote(max_items), None
        while out == _EMPTY:
            wait = deadline.slice()
            if wait is None:
                raise Empty
            token = _token()
            out = yield actor.get_wait.remote(max_items, wait, token), token
        if out == _SHUT:
            raise ShutDown
        return out

    def _run(self, calls):
        ray = self._ray()
        ref, token = next(calls)
        while True:
            try:
                answer = self._call(ray, ref)
            except KeyboardInterrupt:
                self._abandon(ray, ref, token)
                raise
            try:
                ref, token = calls.send(answer)
            except StopIteration as done:
                return done.value

    async def _run_async(self, calls):
        ray = self._ray()
        ref, token = next(calls)
        while True:
            try:
                answer = await ref
            except ray.exceptions.RayActorError as e:
                raise self._gone(e) from e
            except asyncio.CancelledError:
                await _finish_anyway(self._abandon_async(ref, token))
                raise
            try:
                ref, token = calls.send(answer)
            except StopIteration as done:
                return done.value

    def _abandon(self, ray, ref, token):
        # The caller gives up on call `ref` (Ctrl-C): a waiting call is told
        # to answer now, and what it took goes back in front.
        actor = self._actor
        try:
            if token is not None:
                actor.abort.remote(token)
            out = ray.get(ref, timeout=_SLICE + 10)
            if isinstance(out, list):
                # Waited for: the program may exit right after Ctrl-C.
                ray.get(actor.unget.remote(out), timeout=10)
        except Exception:
            return

    async def _abandon_async(self, ref, token):
        # _abandon for a cancelled coroutine (it waits without the loop).
        actor = self._actor
        try:
            if token is not None:
                actor.abort.remote(token)
            out = await asyncio.wait_for(_awaited(ref), _SLICE + 10)
            if isinstance(out, list):
                # Back in the queue before the cancellation is seen.
                await asyncio.wait_for(_awaited(actor.unget.remote(out)), 10)
        except Exception:
            return

    # -- the API ----------------------------------------------------------

    def put(self, obj, block=True, timeout=None):
        """Put `obj`; wait for room if `block` (for ever if `timeout` is
        None); queue.Full when there is none in time, ShutDown after
        shutdown()."""
        self._check_open()
        data = self._dumps(obj)
        _portable.check(data, "the item put in a ray queue")
        self._run(self._put_calls([data], block, timeout))

    def get(self, block=True, timeout=None):
        """Remove and return the next item; queue.Empty when none comes in
        time, ShutDown once a shut-down queue is empty."""
        return self._loads(self._run(self._get_calls(1, block, timeout))[0])

    def put_nowait(self, obj):
        return self.put(obj, False)

    def get_nowait(self):
        return self.get(False)

    def put_many(self, objs, block=True, timeout=None):
        """Put every object of `objs` in order, in one actor call. All are
        serialized first (one that cannot be raises before anything is
        put). queue.Full (or ShutDown) with ``put_count``, the number that
        went in (those stay), when room does not come in time."""
        self._check_open()
        datas = [self._dumps(o) for o in objs]
        for data in datas:
            _portable.check(data, "an item put in a ray queue")
        self._run(self._put_calls(datas, block, timeout))

    def get_many(self, max_items=None, block=True, timeout=None):
        """Wait like get() for the first item, then take what else is there,
        up to `max_items` (None: all), in one actor call; returns a list."""
        if max_items is not None and max_items < 1:
            raise ValueError(f"max_items must be at least 1, not {max_items}")
        loads = self._loads
        return [loads(d) for d in self._run(self._get_calls(max_items, block, timeout))]

    # -- for coroutines (the local queues' names; Ray's queue has the first two)

    async def get_async(self, timeout=None):
        """``get()`` for coroutines: the next item, awaited without blocking
        the event loop; queue.Empty once `timeout` seconds pass (None: wait
        for ever). Cancelled, it has taken nothing: a waiting call is told
        to stop, and what it took goes back in front."""
        datas = await self._run_async(self._get_calls(1, True, timeout))
        return self._loads(datas[0])

    async def get_many_async(self, max_items=None, timeout=None):
        """``get_many()`` for coroutines (one actor call for all)."""
        if max_items is not None and max_items < 1:
            raise ValueError(f"max_items must be at least 1, not {max_items}")
        loads = self._loads
        return [loads(d) for d in await self._run_async(
            self._get_calls(max_items, True, timeout))]

    async def put_async(self, obj, timeout=None):
        """``put()`` for coroutines: waits for room without blocking the
        event loop; queue.Full once `timeout` seconds pass. Cancelled, it
        has put the item or not, and puts nothing afterwards."""
        self._check_open()
        data = self._dumps(obj)
        _portable.check(data, "the item put in a ray queue")
        await self._run_async(self._put_calls([data], True, timeout))

    def qsize(self):
        """Items in the queue now (exact, as the actor counts them)."""
        ray = self._ray()
        return self._call(ray, self._actor.qsize.remote())

    def empty(self):
        return self.qsize() == 0

    def full(self):
        ray = self._ray()
        return self._call(ray, self._actor.full.remote())

    @property
    def maxsize(self):
        return self._maxsize

    def shutdown(self, immediate=False):
        """Shut the queue down for every user (``queue.Queue.shutdown`` of
        Python 3.13): put() raises ShutDown from now on; get() returns what
        is left, then raises ShutDown (with `immediate`, what is left is
        dropped at once)."""
        ray = self._ray()
        self._call(ray, self._actor.shutdown.remote(bool(immediate)))

    @property
    def is_shutdown(self):
        ray = self._ray()
        return self._call(ray, self._actor.is_shutdown.remote())

    def close(self):
        """This object is done with the queue (the queue stays for its other
        users; see unlink()). Idempotent."""
        if not self._closed:
            self._closed = True
            self._actor = None
            if self._counted:
                self._counted = False
                _runtime.release()

    def _check_open(self):
        if self._closed:
            raise ValueError(f"{self!r} is closed")

    def join_thread(self):
        """No-op: there is no feeder thread (an item is in the actor when
        put() returns)."""

    def cancel_join_thread(self):
        """No-op, for ``multiprocessing.Queue`` compatibility."""

    def unlink(self):
        """Remove the queue from the cluster (its actor ends; other users'
        calls then raise ConnectionError). Idempotent."""
        ray = _runtime.ray_module()
        _runtime.check_process()
        actor = self._actor
        if actor is None:
            try:
                actor = ray.get_actor(self._actor_name, namespace=NAMESPACE)
            except ValueError:
                return
        try:
            ray.kill(actor, no_restart=True)
        except Exception:
            pass

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __reduce__(self):
        return (_rebuild, (type(self), self._actor_name, self.name, self._maxsize,
                           self._serializer, self._address))

    def __repr__(self):
        what = "anonymous" if self.anonymous else f"name={self.name!r}"
        state = " closed" if self._closed else ""
        return f"<mpx ray {self._family} {what} maxsize={self._maxsize}{state}>"


def _rebuild(cls, actor_name, name, maxsize, serializer, address):
    ray = _runtime.connect_for_rebuild(address)
    try:
        actor = ray.get_actor(actor_name, namespace=NAMESPACE)
    except ValueError:
        what = f"named {name!r}" if name else "(anonymous)"
        raise ConnectionError(f"the ray queue {what} is gone (unlinked, or its creator "
                              "ended)") from None
    return cls(actor, actor_name, name, maxsize, serializer, address)


class RaySimpleQueue(RayQueue):
    """``multiprocessing.SimpleQueue``'s API (and the rest of RayQueue's)."""

    _family = "SimpleQueue"


class RayJoinableQueue(RayQueue):
    """A RayQueue with ``task_done()``/``join()``: the actor counts the
    unfinished items (raised in the same call that puts them)."""

    _family = "JoinableQueue"

    def task_done(self):
        """An item taken with get() is processed; ValueError if called more
        times than items were put."""
        ray = self._ray()
        if not self._call(ray, self._actor.task_done.remote()):
            raise ValueError("task_done() called too many times")

    def join(self, timeout=None):
        """Block until every item put has been task_done(); True, or False
        if `timeout` seconds passed first."""
        ray = self._ray()
        deadline = _Deadline(seconds(timeout))
        while True:
            wait = deadline.slice()
            if self._call(ray, self._actor.join_wait.remote(wait or 0.0)):
                return True
            if wait is None:
                return False


# Tokens name waiting calls (for abort): this process's random prefix and a count.
_tokens = itertools.count()
_token_prefix = uuid.uuid4().hex


def _token():
    return f"{_token_prefix}-{next(_tokens)}"


async def _awaited(ref):
    return await ref


# Tasks of _finish_anyway still running: the loop keeps only weak
# references to tasks, and one whose canceller gave up must still finish.
_finishing = set()


async def _finish_anyway(coro):
    """Run `coro` to its end even if the awaiting coroutine is cancelled
    again meanwhile (it then goes on as a task)."""
    task = asyncio.ensure_future(coro)
    _finishing.add(task)
    task.add_done_callback(_finishing.discard)
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        pass


class _Deadline:
    """A caller's deadline, waited for in actor calls of at most _SLICE
    seconds each."""

    __slots__ = ("end",)

    def __init__(self, timeout):
        self.end = None if timeout is None else time.monotonic() + timeout

    def slice(self):
        """How long the next call may wait; None once the deadline passed."""
        if self.end is None:
            return _SLICE
        left = self.end - time.monotonic()
        return min(left, _SLICE) if left > 0 else None


_CLASSES = {"Queue": RayQueue, "SimpleQueue": RaySimpleQueue,
            "JoinableQueue": RayJoinableQueue}
