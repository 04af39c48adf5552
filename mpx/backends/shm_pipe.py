"""The ``shm`` backend's Pipe: ``multiprocessing.Pipe`` on shared-memory rings.

Each end is a :class:`Connection` with the whole API of
``multiprocessing.connection.Connection`` over a ``_ring_channel.Channel``
(one ring per direction, spin-then-sleep waiting, a socket as the liveness
signal; the channel's docstring has the protocol). Semantics follow the
stdlib's:

- ``recv`` raises EOFError once every copy of the other end is closed (or
  its process died) and what it sent has been read; ``send`` to an end
  whose reader is gone succeeds while the ring has room, then raises
  BrokenPipeError (an OS pipe raises at once);
- ``duplex=False`` gives ``(reader, writer)``; the wrong direction raises
  OSError; a closed end raises OSError;
- ``send_bytes(buf, offset, size)`` out of range raises ValueError;
  ``recv_bytes(maxlength)`` with a longer message raises OSError and the
  end stops reading (a duplex end) or closes (a read-only one);
- ``send`` serializes in the caller: an object that cannot be serialized
  raises there and nothing is sent;
- ``fileno()`` is readable exactly while a message or EOF is waiting, so
  ``multiprocessing.connection.wait`` takes these ends beside any other
  connection, socket or sentinel.

An end travels to other processes like a stdlib connection: its
descriptors go through ``multiprocessing.reduction.DupFd`` (inherited by a
child being started, or fetched from the sender's resource sharer later).
The rings live in memfds: nothing appears in /dev/shm.

Messages in the ring: see ``_ring_codec`` (shared with the shm queues);
``send_bytes`` data travels as TAG_PICKLE, as the stdlib cannot tell the
two apart either.
"""

import weakref
from multiprocessing import reduction

from . import _ring_channel, _ring_codec
from ._ring_codec import TAG_PICKLE, TAG_TEXT
from .. import _serial

__all__ = ["FAMILIES", "Pipe", "Connection", "unavailable"]

FAMILIES = ("Pipe",)


def unavailable():
    return _ring_channel.unavailable()


def _buffer_too_short(data):
    from multiprocessing import BufferTooShort
    return BufferTooShort(data)


class Connection:
    """One end of an shm Pipe (``multiprocessing.connection.Connection`` API)."""

    def __init__(self, chan, readable, writable, serializer):
        self._chan = chan
        self._readable = readable
        self._writable = writable
        self._serializer = serializer
        codec = _ring_codec.Codec(serializer)
        chan.codec(codec.decode, **codec.ring_hooks)
        self._bind()

    def _bind(self):
        # As the shm queue does: send/recv are then the rings' compiled
        # send_obj/recv_obj, with no Python frame on the fast path (they
        # call back into the channel only to ring a bell, wait for room or
        # sleep). The class's methods (which raise the stdlib's errors) come
        # back when an end stops reading or is closed; a call racing a
        # close() in another thread gets the ring's RingClosed, an OSError
        # like the stdlib's "handle is closed".
        # Each ring keeps this end alive for the length of a send_obj or
        # recv_obj call (ring.owner), as a bound method of the class would:
        # a thread blocked in recv() of an end the program has dropped gets
        # the next message instead of the end closing under it (__del__).
        me = weakref.ref(self)
        if self._writable:
            self._chan.out_ring.owner = me
            self.send = self._chan.out_ring.send_obj
        if self._readable:
            self._chan.in_ring.owner = me
            self.recv = self._chan.in_ring.recv_obj

    def _unbind(self):
        self.__dict__.pop("send", None)
        self.__dict__.pop("recv", None)

    # --------------------------------------------------------------- state

    @property
    def closed(self):
        return self._chan is None

    @property
    def readable(self):
        return self._readable

    @property
    def writable(self):
        return self._writable

    def _live(self):
        chan = self._chan
        if chan is None:
            raise OSError("handle is closed")
        return chan

    def _reader(self):
        chan = self._live()
        if not self._readable:
            raise OSError("connection is write-only")
        return chan

    def _writer(self):
        chan = self._live()
        if not self._writable:
            raise OSError("connection is read-only")
        return chan

    def fileno(self):
        """A descriptor that is readable exactly while a message or EOF is
        waiting (for ``multiprocessing.connection.wait``, select, ...)."""
        return self._live().fileno()

    def close(self):
        chan, self._chan = self._chan, None
        self._unbind()
        if chan is not None:
            chan.close()

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_value, exc_tb):
        self.close()

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    def __repr__(self):
        state = "closed" if self._chan is None else (
            "duplex" if self._readable and self._writable else
            "read-only" if self._readable else "write-only")
        return f"<mpx.shm Connection {state}>"

    # --------------------------------------------------------------- sending

    def send_bytes(self, buf, offset=0, size=None):
        """Send `size` bytes of the bytes-like `buf` from `offset` as one
        message (the stdlib's argument checks)."""
        chan = self._writer()
        m = memoryview(buf)
        if m.itemsize > 1:
            m = m.cast("B")
        n = m.nbytes
        if offset < 0:
            raise ValueError("offset is negative")
        if n < offset:
            raise ValueError("buffer length < offset")
        if size is None:
            size = n - offset
        elif size < 0:
            raise ValueError("size is negative")
        elif offset + size > n:
            raise ValueError("buffer length < offset + size")
        if offset or size != n:
            m = m[offset:offset + size]
        chan.send(m, TAG_PICKLE)

    def send(self, obj):
        """Send a serialized object. It is serialized here first: one that
        cannot be raises and nothing is sent."""
        chan = self._chan
        if chan is None or not self._writable:
            chan = self._writer()         # raises
        chan.send_obj(obj)

    # --------------------------------------------------------------- receiving

    def _as_bytes(self, msg):
        """The bytes a stdlib pipe would have carried for `msg`."""
        if type(msg) is bytes:
            return msg
        tag, parts = msg
        if tag in (TAG_PICKLE, TAG_TEXT) and len(parts) == 1:
            return parts[0]
        # An object sent with send(): what the serializer makes of it in band.
        return self._serializer.dumps(self._chan.decode(msg))

    def recv(self):
        """Receive a serialized object; EOFError once the other end is closed
        and everything it sent has been read."""
        chan = self._chan
        if chan is None or not self._readable:
            chan = self._reader()         # raises
        return chan.recv_obj()

    def recv_bytes(self, maxlength=None):
        """Receive one message as bytes. A message longer than `maxlength`
        raises OSError and this end stops reading, as with the stdlib."""
        chan = self._reader()
        if maxlength is not None and maxlength < 0:
            raise ValueError("negative maxlength")
        data = self._as_bytes(chan.recv())
        if maxlength is not None and len(data) > maxlength:
            self._bad_message_length()
        return data

    def recv_bytes_into(self, buf, offset=0):
        """Receive one message into the writable buffer `buf` from byte
        `offset`; returns its length. BufferTooShort (holding the message)
        if it does not fit."""
        chan = self._reader()
        with memoryview(buf) as m:
            itemsize = m.itemsize
            bytesize = itemsize * len(m)
            if offset < 0:
                raise ValueError("negative offset")
            elif offset > bytesize:
                raise ValueError("offset too large")
            data = self._as_bytes(chan.recv())
            size = len(data)
            if bytesize < offset + size:
                raise _buffer_too_short(data)
            with m.cast("B") as b:
                b[offset:offset + size] = data
            return size

    def _bad_message_length(self):
        # As the stdlib: the duplex end keeps writing, a read-only one closes.
        if self._writable:
            self._readable = False
            self.__dict__.pop("recv", None)
        else:
            self.close()
        raise OSError("bad message length")

    def poll(self, timeout=0.0):
        """Whether there is anything to read (a message, or EOF), waiting up
        to `timeout` seconds (None: until there is)."""
        return self._reader().poll(timeout)

    # --------------------------------------------------------------- travel

    def __reduce__(self):
        chan = self._live()
        fds = {k: reduction.DupFd(fd) for k, fd in chan.fds().items()}
        return (_rebuild, (fds, self._readable, self._writable, self._serializer,
                           chan.spin))


def _rebuild(fds, readable, writable, serializer, spin):
    owned = {}
    try:
        for k, dup in fds.items():
            owned[k] = dup.detach()
    except BaseException:
        _ring_channel.close_fds(owned.values())
        raise
    chan = _ring_channel.Channel.from_fds(owned, eof_exc=EOFError, spin=spin)
    return Connection(chan, readable, writable, serializer)


def Pipe(ctx, duplex=True, *, serializer=None, capacity=None, spin=None):
    """Two connected ends: ``(conn1, conn2)``, both ways when `duplex`, else
    ``(reader, writer)``.

    capacity: bytes of ring per direction (rounded up to a power of two;
    default 4 MiB). Bigger messages still go through (the ring's overflow
    area). spin: seconds a receiver spins before sleeping (default 50 us;
    0 never spins).
    """
    serializer = _serial.get_serializer(serializer)
    if capacity is None:
        capacity = _ring_channel.DEFAULT_CAPACITY
    elif isinstance(capacity, bool) or not isinstance(capacity, int):
        raise TypeError(f"capacity must be an int (bytes), not {type(capacity).__name__}")
    elif capacity < 1:
        raise ValueError(f"capacity must be a positive number of bytes, not {capacity}")
    if spin is not None and not (isinstance(spin, (int, float)) and spin >= 0):
        raise ValueError(f"spin must be a number of seconds >= 0, not {spin!r}")
    a, b = _ring_channel.pair(bool(duplex), capacity, eof_exc=EOFError, spin=spin)
    if duplex:
        return (Connection(a, True, True, serializer), Connection(b, True, True, serializer))
    return (Connection(a, True, False, serializer), Connection(b, False, True, serializer))
