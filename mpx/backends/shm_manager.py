"""Manager transport over shared-memory rings, for clients on the same machine.

Mechanism only (the Manager itself is ``mpx.managers``). A client meets the
server on a unix socket (created 0o600, see ``_stream.UnixListener``), and
both prove they hold the authkey exactly as on the ``unix`` transport. The
client then creates two rings (``mpx._ext.ring``) in anonymous memfds, one
for requests and one for replies, and passes their descriptors to the server
over the socket (SCM_RIGHTS). From then on every frame is one ring message:
no system call on the fast path. A reader spins briefly (only when a core is
free, and in the server only while a single client keeps it busy), then
sleeps on a futex "doorbell" in the ring (see ShmConnection).

The socket stays open as the liveness signal: a side that finds no message
for ``_POLL`` seconds checks whether its peer hung up, so a client or server
killed by SIGKILL is noticed within that time. A clean close shuts the rings
down, which wakes the other side at once. The rings are memfds: nothing
appears in /dev/shm, and the kernel frees them with the last descriptor.
"""

import os
import socket
import time

from . import _stream

FAMILIES = ("Manager",)
NAME = "shm"

__all__ = ["FAMILIES", "Listener", "connect", "default_address", "check_address",
           "cleanup", "unavailable", "ShmConnection", "RING_CAPACITY"]

check_address = _stream.check_unix_address
cleanup = _stream.unix_cleanup

# Room for ordinary requests and replies; a larger message goes through the
# ring's overflow extent (same memfd) instead, so this is not a size limit.
RING_CAPACITY = 1 << 16
# How often a waiting side checks that its peer is still there.
_POLL = 1.0
# Longest wait for a message spent spinning before sleeping (adapted below
# this, and skipped when the machine has more runnable tasks than cores).
_SPIN = 50e-6
# The client's first bytes after authenticating, sent with the two ring
# descriptors. Read as a frame header they announce an impossible length, so
# a unix-socket (stream) manager refuses them at once instead of waiting.
_RING_HELLO = b"\xff" * 7 + b"\x02"
_READY = b"\x02"


def unavailable():
    try:
        _ring_module()
    except ImportError as e:
        return f"the shared-memory ring extension is not built ({e})"
    if not hasattr(os, "memfd_create"):
        return "needs memfd_create (Linux 3.17 or later)"
    if not hasattr(socket, "send_fds"):
        return "needs socket.send_fds (Python 3.9 or later)"
    return None


def default_address():
    return None


def _ring_module():
    from .._ext import ring
    return ring


def _new_ring():
    Ring = _ring_module().Ring
    fd = os.memfd_create("mpx-manager", os.MFD_CLOEXEC)
    try:
        # A memfd has no path, but /proc/PID/fd/N reaches it: owner only.
        os.fchmod(fd, 0o600)
        return Ring.create(fd, RING_CAPACITY)
    except BaseException:
        os.close(fd)
        raise


def _attach(fd):
    try:
        return _ring_module().Ring.attach(fd)
    except BaseException:
        os.close(fd)
        raise


# Aux words of each ring used for sleeping (see ShmConnection.recv).
_SLEEPERS = 0   # readers asleep (or about to sleep) on the doorbell
_DOORBELL = 1   # bumped by the writer after every message and at shutdown


class ShmConnection:
    """One end of a pair of rings, with the socket kept as a liveness signal.
    Same interface as ``_stream.Connection``.

    Waiting for a message: first a short adaptive spin on the ring (only
    when the caller allows it and the machine has a core to spare), then a
    futex sleep on a "doorbell" word of the ring, which the writer bumps and
    wakes only when a reader announced itself in the "sleepers" word. The
    reader announces itself *before* its last look at the ring and the writer
    checks for sleepers *after* publishing (an atomic add, and a
    compare-and-swap: full barriers on x86), so a message is never left
    unnoticed by a sleeping reader. The ring's own waiting (spin, then a
    futex on its WAIT flag) is not used: its spin yields the CPU on a crowded
    machine, and its flag can lose a wake-up (see the ring's notes).
    """

    __slots__ = ("_sock", "_out", "_in", "pid", "_closed", "_empty", "_full",
                 "_spin", "__weakref__")

    def __init__(self, sock, out_ring, in_ring):
        ring = _ring_module()
        self._empty, self._full = ring.RingEmpty, ring.RingFull
        self._sock = sock
        self._out = out_ring
        self._in = in_ring
        # A connection error, not the ring's own exceptions, is what the
        # manager expects from a transport.
        for r in (out_ring, in_ring):
            r.shutdown_exc = _PeerGone
            # Waiting is done here (spin, then the doorbell), never by the
            # ring's own spin-then-futex.
            r.spin_max_ns = 0
        self._spin = _SPIN
        self.pid = os.getpid()
        self._closed = False

    def _peer_alive(self):
        try:
            return self._sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
        except BlockingIOError:
            return True
        except OSError:
            return False

    def send(self, data):
        if self._closed:
            raise ConnectionError("the connection to the manager is closed")
        out = self._out
        try:
            out.put(data, False)
        except self._full:
            while True:
                try:
                    out.put(data, timeout=_POLL)
                    break
                except self._full:
                    if not self._peer_alive():
                        raise _PeerGone("the peer closed the connection") from None
        # The put's compare-and-swap is a full barrier, so this load cannot
        # miss a reader that announced itself before its last look at the
        # ring (and one that announces itself later sees the message).
        if out.aux_load(_SLEEPERS):
            out.aux_add(_DOORBELL, 1)
            out.aux_wake(_DOORBELL)

    def recv(self, spin=True, timeout=None):
        if self._closed:
            raise ConnectionError("the connection to the manager is closed")
        ring = self._in
        ready = ring.wait_readable      # with 0: a non-blocking look, no exception
        bell = ring.aux_load(_DOORBELL)
        if not ready(0):
            if spin and self._spin:
                # Spin here, not in the ring: its spin yields the CPU when
                # the machine is crowded, which can cost a whole time slice
                # per call. This one holds the GIL, so the server only asks
                # for it while a single client keeps it busy.
                clock = time.perf_counter
                now = clock()
                if not _stream._crowded(now):
                    end = now + self._spin
                    while not ready(0):
                        if clock() > end:
                            # Slow answers: spin less next time (down to not at all).
                            self._spin = self._spin * 0.5 if self._spin > 4e-6 else 0.0
                            break
            if not ready(0):
                self._sleep(ring, bell, timeout, spin)
        msg = ring.get(False)     # readable, or shut down (raises _PeerGone)
        if type(msg) is not bytes:       # tagged or multi-part: not ours
            raise _stream.ProtocolError("unexpected message layout in the ring")
        return msg

    def _sleep(self, ring, bell, timeout, spin):
        """Sleep on the doorbell until the ring is readable. `bell` was read
        before the caller's last look at the ring."""
        ready = ring.wait_readable
        start = time.monotonic()
        deadline = None if timeout is None else start + timeout
        while True:
            ring.aux_add(_SLEEPERS, 1)
            try:
                if ready(0):
                    break
                wait = _POLL
                if deadline is not None:
                    wait = deadline - time.monotonic()
                    if wait <= 0:
                        raise TimeoutError("no reply from the manager in time")
                    wait = min(wait, _POLL)
                if not ring.aux_wait(_DOORBELL, bell, wait) and not self._peer_alive():
                    raise EOFError("the peer closed the connection") from None
            finally:
                ring.aux_add(_SLEEPERS, 0xFFFFFFFF)     # -1
            bell = ring.aux_load(_DOORBELL)
            if ready(0):
                break
        if spin and time.monotonic() - start < _SPIN:
            self._spin = _SPIN        # answers come fast again: spin

    def fileno(self):
        return self._sock.fileno()

    @property
    def closed(self):
        return self._closed

    def _shut(self, r):
        try:
            r.shutdown()
            r.aux_add(_DOORBELL, 1)
            r.aux_wake(_DOORBELL)
        except Exception:
            pass

    def shutdown(self):
        """Wake the threads of both sides blocked on this connection."""
        if self.pid != os.getpid():
            return      # a forked child never disturbs its parent's connection
        self._shut(self._in)
        self._shut(self._out)
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self):
        if self._closed:
            return
        self._closed = True
        if self.pid == os.getpid():
            # Our side is gone: the peer's waits end now, not at its next poll.
            self._shut(self._out)
        for r in (self._in, self._out):
            try:
                r.close()
            except Exception:
                pass
        try:
            self._sock.close()
        except OSError:
            pass

    def settimeout(self, timeout):
        self._sock.settimeout(timeout)

    def __repr__(self):
        return f"<mpx shm connection {'closed' if self._closed else 'open'}>"


class _PeerGone(EOFError, ConnectionError):
    """The other side shut its rings down or hung up."""


class Listener(_stream.UnixListener):
    """A unix-socket rendezvous whose connections carry their frames in rings."""

    def handshake(self, sock):
        try:
            _stream.server_handshake(sock, self._authkey, self.handshake_timeout)
            head, fds, _flags, _addr = socket.recv_fds(sock, len(_RING_HELLO), 2)
            if not fds:
                # A client of the plain unix transport: serve it over the
                # socket (its first bytes are the start of a frame).
                if not head:
                    raise EOFError("the client left after authenticating")
                sock.settimeout(None)
                conn = _stream.Connection(sock, max_frame=self.max_frame)
                conn._rbuf = head
                return conn
            if head != _RING_HELLO or len(fds) != 2:
                for fd in fds:
                    os.close(fd)
                raise _stream.ProtocolError("the client did not send its two rings")
            try:
                requests = _attach(fds[0])
            except BaseException:
                os.close(fds[1])
                raise
            replies = _attach(fds[1])
            sock.sendall(_READY)
            sock.settimeout(None)
        except BaseException:
            try:
                sock.close()
            except OSError:
                pass
            raise
        # The server reads requests and writes replies.
        return ShmConnection(sock, replies, requests)


def connect(address, authkey, *, timeout=_stream.HANDSHAKE_TIMEOUT, **kwargs):
    """An authenticated connection to the manager at `address` over rings."""
    sock = _stream.unix_connect(address, authkey, timeout)
    try:
        requests, replies = _new_ring(), _new_ring()
        socket.send_fds(sock, [_RING_HELLO], [requests.fd, replies.fd])
        try:
            ready = _stream._recv_exact(sock, 1)
        except EOFError:
            ready = b""
        if ready != _READY:
            raise _stream.ProtocolError(
                f"the manager at {address!r} does not serve over shared memory "
                f"(is it a backend='unix' manager?)")
        sock.settimeout(None)
    except BaseException:
        sock.close()
        raise
    return ShmConnection(sock, requests, replies)
