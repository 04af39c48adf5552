"""Backend "pipe": the stdlib's pipe-based objects, speaking mpx's serializer.

Semantics are exactly ``multiprocessing``'s because the objects ARE the
stdlib's (subclasses): the same locks, semaphores, feeder thread and
inheritance rules. The only change is what goes down the pipe: each object is
serialized by the mpx serializer in the caller's own ``put``/``send``, so

- an object that cannot be serialized raises from ``put`` itself (the stdlib
  raises it later, in the feeder thread, and the item is lost), and
- lambdas and closures travel (cloudpickle fallback).

The feeder thread then only moves ready-made bytes, and the stdlib flushes it
at process exit, so nothing that ``put`` accepted is lost there.

A custom serializer may speak text (``serializer=json``): the Pipe and the
SimpleQueue, which frame raw bytes, send its ``str`` as UTF-8 (see
``_serial.wire_bytes`` and ``_serial.loads_custom``); Queue and JoinableQueue
pickle what it returns, so a ``str`` travels as one.
"""

import multiprocessing.queues as _mpq
import os
import socket

from .. import _serial
from .._serial import loads_custom, wire_bytes
from .._aio import AsyncQueueMixin
from .._timeouts import seconds
from ._common.conn import SerializedConnection

# Pool: mpx.pool runs its tasks and results over these queues (the family is
# built above the backends; there is no factory here).
FAMILIES = ("Queue", "SimpleQueue", "JoinableQueue", "Pipe", "Pool")


class _Serialized(AsyncQueueMixin):
    """Mixin for the queue classes: (de)serialize around the stdlib's put/get.

    The stdlib pickles what it is given; given bytes, that is one cheap
    framing step, so the queue machinery below stays untouched.
    """

    def _set_serializer(self, serializer):
        self._serializer = serializer

    # Timeouts are read by mpx's rule (mpx._timeouts) before the stdlib sees
    # them: NaN is a ValueError, infinity waits for ever.

    def put(self, obj, block=True, timeout=None):
        data = self._serializer.dumps(obj)
        super().put(data, block, seconds(timeout) if block else timeout)

    def get(self, block=True, timeout=None):
        timeout = seconds(timeout) if block else timeout
        return self._serializer.loads(super().get(block, timeout))

    def put_many(self, objs, block=True, timeout=None):
        """Put every object of `objs`, in order (all are serialized first, so
        an unserializable one raises before anything is enqueued)."""
        timeout = seconds(timeout) if block else timeout
        for data in [self._serializer.dumps(o) for o in objs]:
            super().put(data, block, timeout)

    def get_many(self, max_items=None, block=True, timeout=None):
        """Wait like :meth:`get` for the first item, then take what else is
        ready, up to `max_items`."""
        items = [self.get(block, timeout)]
        while max_items is None or len(items) < max_items:
            try:
                items.append(self.get(False))
            except _mpq.Empty:
                break
        return items

    def __getstate__(self):
        return super().__getstate__(), self._serializer

    def __setstate__(self, state):
        base, self._serializer = state
        super().__setstate__(base)

    def _aio_fd(self):
        # (mpx._aio) the pipe's read end: readable while bytes wait.
        return self._reader.fileno()


class PipeQueue(_Serialized, _mpq.Queue):
    """``multiprocessing.Queue`` with mpx serialization."""


class PipeJoinableQueue(_Serialized, _mpq.JoinableQueue):
    """``multiprocessing.JoinableQueue`` with mpx serialization."""


class PipeSimpleQueue(AsyncQueueMixin, _mpq.SimpleQueue):
    """``multiprocessing.SimpleQueue`` with mpx serialization."""

    def put(self, obj):
        data = wire_bytes(self._serializer, self._serializer.dumps(obj))
        with self._wlock:    # never None on POSIX
            self._writer.send_bytes(data)

    def get(self):
        with self._rlock:
            data = self._reader.recv_bytes()
        return self._load(data)

    def _load(self, data):
        if isinstance(self._serializer, _serial.PickleSerializer):
            return self._serializer.loads(data)
        return loads_custom(self._serializer, data)

    # (mpx._aio) A SimpleQueue has no get_nowait: take the read lock and a
    # waiting message only if both are there now.
    def _aio_get(self):
        if not self._rlock.acquire(False):
            raise _mpq.Empty
        try:
            if not self._reader.poll(0):
                raise _mpq.Empty
            data = self._reader.recv_bytes()
        finally:
            self._rlock.release()
        return self._load(data)

    def _aio_put(self, obj):
        self.put(obj)

    def _aio_fd(self):
        return self._reader.fileno()

    def _aio_closed(self):
        return self._reader.closed

    def put_many(self, objs):
        """Put every object of `objs` in order, serialized before any is sent."""
        for data in [wire_bytes(self._serializer, self._serializer.dumps(o)) for o in objs]:
            with self._wlock:
                self._writer.send_bytes(data)

    def __getstate__(self):
        return super().__getstate__(), self._serializer

    def __setstate__(self, state):
        base, self._serializer = state
        super().__setstate__(base)


def Queue(ctx, maxsize=0, *, serializer):
    q = PipeQueue(maxsize, ctx=ctx.stdlib_context())
    q._set_serializer(serializer)
    return q


def JoinableQueue(ctx, maxsize=0, *, serializer):
    q = PipeJoinableQueue(maxsize, ctx=ctx.stdlib_context())
    q._set_serializer(serializer)
    return q


def SimpleQueue(ctx, *, serializer):
    q = PipeSimpleQueue(ctx=ctx.stdlib_context())
    q._serializer = serializer
    return q


def Pipe(ctx, duplex=True, *, serializer):
    if duplex:
        s1, s2 = socket.socketpair()
        s1.setblocking(True)
        s2.setblocking(True)
        ends = [(s1.detach(), True, True), (s2.detach(), True, True)]
    else:
        r, w = os.pipe()
        ends = [(r, True, False), (w, False, True)]
    return tuple(SerializedConnection(fd, readable, writable, serializer=serializer)
                 for fd, readable, writable in ends)
