"""What descriptor-based connection backends (pipe, fifo) share.

Not a backend: a base class. A :class:`SerializedConnection` is the stdlib's
``multiprocessing.connection.Connection`` (its framing, bounds checks,
``poll``, ``recv_bytes(maxlength)`` rules and ``wait`` support) whose
``send``/``recv`` run mpx's serializer in the caller, and which may read and
write through two different descriptors (a FIFO pair has one per direction).

Pickling hands the descriptors over with the stdlib's ``DupFd``, which works
both for a child being spawned and, later, through any queue or pipe.
"""

import copyreg
import errno
import multiprocessing.connection as _mpc
import os
import stat

from multiprocessing import reduction

from ... import _serial
from ..._serial import loads_custom, wire_bytes
from ..._timeouts import seconds

__all__ = ["SerializedConnection"]


class SerializedConnection(_mpc.Connection):
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

    def send(self, obj):
        self._check_closed()
        self._check_writable()
        data = self._serializer.dumps(obj)
        self._send_bytes(data if type(data) is bytes else wire_bytes(self._serializer, data))

    def poll(self, timeout=0.0):
        return super().poll(seconds(timeout, what="poll's timeout"))

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
