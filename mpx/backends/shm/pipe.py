"""The ``shm`` backend's Pipe: ``multiprocessing.Pipe`` on shared-memory rings.

Each end is a :class:`Connection` with the whole API of
``multiprocessing.connection.Connection`` over a ``channel.Channel``
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
  connection, socket or sentinel;
- ``multiprocessing.reduction.send_handle``/``recv_handle`` pass file
  descriptors between the two ends, over the liveness socket, in the
  stdlib's framing (``mpx.connection`` routes those functions here, since
  ``fileno()`` is not that socket). Unlike a stdlib end, ``fileno()`` is no
  socket to write raw bytes into.

An end travels to other processes like a stdlib connection: its
descriptors go through ``multiprocessing.reduction.DupFd`` (inherited by a
child being started, or fetched from the sender's resource sharer later).
The rings live in memfds: nothing appears in /dev/shm.

Messages in the ring: see ``codec`` (shared with the shm queues);
``send_bytes`` data travels as TAG_PICKLE, as the stdlib cannot tell the
two apart either.
"""

import errno
from multiprocessing import reduction

from . import channel as _ring_channel, codec as _ring_codec
from .codec import TAG_PICKLE, TAG_TEXT
from ... import _aio, _serial, _timeouts
from ..._ext.ring import conn_recv, conn_send

__all__ = ["FAMILIES", "Pipe", "Connection", "unavailable"]

FAMILIES = ("Pipe",)


def unavailable():
    return _ring_channel.unavailable()


def _buffer_too_short(data):
    from multiprocessing import BufferTooShort
    return BufferTooShort(data)


class Connection(_aio.AsyncConnectionMixin):
    """One end of an shm Pipe (``multiprocessing.connection.Connection`` API)."""

    def __init__(self, chan, readable, writable, serializer):
        self._chan = chan
        self._readable = readable
        self._writable = writable
        self._serializer = serializer
        codec = _ring_codec.Codec(serializer)
        chan.codec(codec.decode, **codec.ring_hooks)
        self._bind()

    # send and recv are compiled functions of the ring extension, used as
    # this class's methods: the fast path runs without a Python frame, and,
    # being methods, they hold the end as the stdlib's do (`s = conn.send;
    # del conn; s(obj)` delivers; a thread blocked in recv() keeps its end).
    # They run the rings' send_obj/recv_obj, which call back into the
    # channel only to ring a bell, wait for room or sleep. When an end
    # cannot send or receive (closed, the wrong direction, or it stopped
    # reading), _send_ring/_recv_ring are None and they call _send/_recv,
    # which raise the stdlib's errors. A call racing a close() in another
    # thread gets the ring's RingClosed, an OSError like the stdlib's
    # "handle is closed".
    send = conn_send
    recv = conn_recv
    _send_ring = None
    _recv_ring = None

    def _bind(self):
        if self._writable:
            self._send_ring = self._chan.out_ring
        if self._readable:
            self._recv_ring = self._chan.in_ring

    def _unbind(self):
        self._send_ring = None
        self._recv_ring = None

    # --------------------------------------------------------------- state

    @property
    def closed(self):
        """True once :meth:`close` was called on this end."""
        return self._chan is None

    @property
    def readable(self):
        """True if this end can receive (False for the send end of a simplex pair)."""
        return self._readable

    @property
    def writable(self):
        """True if this end can send (False for the receive end of a simplex pair)."""
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
        """Close this end (idempotent). Once every copy of it is closed, or
        its processes died, the other end's recv raises EOFError."""
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

    def _send(self, obj):
        # send() when _send_ring is None (see _bind): raises, as the stdlib.
        self._writer().send_obj(obj)

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

    def _recv(self):
        # recv() when _recv_ring is None (see _bind): raises, as the stdlib.
        return self._reader().recv_obj()

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
            self._recv_ring = None
        else:
            self.close()
        raise OSError("bad message length")

    def poll(self, timeout=0.0):
        """Whether there is anything to read (a message, or EOF), waiting up
        to `timeout` seconds (None or inf: until there is). As with the
        stdlib, a negative timeout does not wait; NaN is a ValueError."""
        chan = self._reader()
        if timeout is not None:
            timeout = _timeouts.seconds(timeout)
        return chan.poll(timeout)

    async def _aio_send(self, obj):
        # (mpx._aio) A put that does not wait, retried while the ring is
        # full; a reader gone meanwhile ends it, as in send().
        chan = self._writer()
        await _aio.retry_while_full(lambda: self._writer().out_ring.put_obj(obj, False),
                                    chan._full, check=lambda: self._check_peer(chan))

    @staticmethod
    def _check_peer(chan):
        if not chan.peer_alive():
            raise BrokenPipeError(errno.EPIPE, "the other end of the pipe is closed "
                                  "(no reader)")

    # --------------------------------------------------------------- descriptors

    def _send_handle(self, handle, destination_pid=None):
        """``multiprocessing.reduction.send_handle(self, handle, pid)``: send
        a duplicate of descriptor `handle` to the other end (any direction:
        both ends hold the socket it travels on)."""
        self._live().send_fds([handle])

    def _recv_handle(self):
        """``multiprocessing.reduction.recv_handle(self)``: the descriptor the
        other end sent with send_handle (waiting for it); EOFError if the
        other end is gone, RuntimeError if what came was no descriptor."""
        return self._live().recv_fds(1)[0]

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
    # Checked before anything is made (errors name the option).
    if capacity is None:
        capacity = _ring_channel.DEFAULT_CAPACITY
    _ring_channel.check_capacity(capacity)
    _ring_channel.check_spin(spin)
    a, b = _ring_channel.pair(bool(duplex), capacity, eof_exc=EOFError, spin=spin)
    if duplex:
        return (Connection(a, True, True, serializer), Connection(b, True, True, serializer))
    return (Connection(a, True, False, serializer), Connection(b, False, True, serializer))
