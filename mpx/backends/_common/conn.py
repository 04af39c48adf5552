"""What descriptor-based connection backends (pipe, fifo) share.

Not a backend: a base class. A :class:`SerializedConnection` is the stdlib's
``multiprocessing.connection.Connection`` (its framing, bounds checks,
``poll``, ``recv_bytes(maxlength)`` rules and ``wait`` support) whose
``send``/``recv`` run mpx's serializer in the caller, and which may read and
write through two different descriptors (a FIFO pair has one per direction).

Pickling hands the descriptors over with the stdlib's ``DupFd``, which works
both for a child being spawned and, later, through any queue or pipe.
"""

import collections
import copyreg
import errno
import multiprocessing.connection as _mpc
import os
import stat
import struct

from multiprocessing import reduction

from ... import _aio, _serial
from ..._serial import loads_custom, wire_bytes
from ..._timeouts import seconds

__all__ = ["SerializedConnection"]


class SerializedConnection(_aio.AsyncConnectionMixin, _mpc.Connection):
    """A stdlib Connection speaking mpx's serializer.

    `handle` is the descriptor read from (and written to, unless
    `write_handle` names another one).
    """

    def __init__(self, handle, readable=True, writable=True, *, serializer,
                 write_handle=None):
        super().__init__(handle, readable, writable)
        self._serializer = serializer
        self._write_handle = write_handle
        # Pickle serializers read a memoryview of the message as it is; a
        # custom one gets bytes (or text: see loads_custom).
        self._custom = not isinstance(serializer, _serial.PickleSerializer)
        # Messages recv_async read whole but did not return (it was
        # cancelled): (ok, BytesIO of the data or the error), for the
        # next receive.
        self._aio_stash = collections.deque()

    def send(self, obj):
        self._check_closed()
        self._check_writable()
        data = self._serializer.dumps(obj)
        self._send_bytes(data if type(data) is bytes else wire_bytes(self._serializer, data))

    async def _aio_send(self, obj):
        # (mpx._aio) The stdlib's framing, written without blocking the loop.
        self._check_closed()
        self._check_writable()
        data = self._serializer.dumps(obj)
        if type(data) is not bytes:
            data = wire_bytes(self._serializer, data)
        n = len(data)
        if n > 0x7fffffff:
            header = struct.pack("!i", -1) + struct.pack("!Q", n)
        else:
            header = struct.pack("!i", n)
        fd = self._handle if self._write_handle is None else self._write_handle
        await _aio.write_frame(fd, [header + data] if n <= 16384 else [header, data])

    def poll(self, timeout=0.0):
        if self._aio_stash:
            self._check_closed()
            self._check_readable()
            return True
        return super().poll(seconds(timeout, what="poll's timeout"))

    def _recv_bytes(self, maxsize=None):
        if self._aio_stash:
            ok, value = self._aio_stash.popleft()
            if not ok:
                raise value
            if maxsize is not None and len(value.getbuffer()) > maxsize:
                raise OSError("bad message length")
            return value
        return super()._recv_bytes(maxsize)

    async def recv_async(self):
        # (mpx._aio) A message is read whole without blocking the loop, into
        # the stash, then returned as recv() would.
        self._check_closed()
        self._check_readable()
        if not self._aio_stash:
            await _aio.read_frame(self._handle, self._aio_stash)
        return self.recv()

    def recv(self):
        self._check_closed()
        self._check_readable()
        buf = self._recv_bytes().getbuffer()
        if self._custom:
            return loads_custom(self._serializer, buf)
        return self._serializer.loads(buf)

    def _send(self, buf, write=os.write):
        if self._write_handle is None:
            return super()._send(buf, write)
        # The stdlib's loop writes to self._handle; do the same to the
        # write-side descriptor.
        remaining = len(buf)
        while remaining:
            n = write(self._write_handle, buf)
            remaining -= n
            buf = buf[n:]

    def _close(self, _close=os.close):
        if self._write_handle is not None:
            _close(self._write_handle)
            self._write_handle = None
        super()._close(_close)

    def __reduce__(self):
        self._check_closed()
        read = reduction.DupFd(self.fileno())
        write = None if self._write_handle is None else reduction.DupFd(self._write_handle)
        return (_rebuild, (type(self), read, write, self.readable, self.writable,
                           self._serializer, self._reduce_extra()))

    def _handles_error(self):
        """Why multiprocessing.reduction.send_handle/recv_handle cannot use
        this end (an OSError), or None: descriptors travel on a socket only,
        and a simplex pipe-backend end is an OS pipe (see mpx.connection)."""
        try:
            if stat.S_ISSOCK(os.fstat(self.fileno()).st_mode):
                return None
        except OSError:
            return None            # closed: the stdlib's own error says so
        return OSError(errno.ENOTSOCK, "this end of a simplex Pipe (duplex=False, "
                       "backend='pipe') is an OS pipe, which cannot carry file "
                       "descriptors: send_handle/recv_handle need a duplex Pipe or "
                       "backend='shm' (the default)")

    def _reduce_extra(self):
        """Extra state a subclass carries across processes (a dict)."""
        return {}

    def _rebuild_extra(self, extra):
        pass


def _rebuild(cls, read, write, readable, writable, serializer, extra):
    conn = cls(read.detach(), readable, writable, serializer=serializer,
               write_handle=None if write is None else write.detach())
    conn._rebuild_extra(extra)
    return conn


def _reduce(conn):
    return conn.__reduce__()


# The stdlib pickles Process arguments with ForkingPickler, whose table
# knows the stdlib Connection; register ours (subclasses included) so its
# __reduce__ wins there too.
reduction.register(SerializedConnection, _reduce)
copyreg.pickle(SerializedConnection, _reduce)
