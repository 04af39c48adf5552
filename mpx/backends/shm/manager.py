"""Manager transport over shared-memory rings, for clients on the same machine.

Mechanism only (the Manager itself is ``mpx.managers``). A client meets the
server on a unix socket (created 0o600, see ``_common.stream.UnixListener``), and
both prove they hold the authkey exactly as on the ``unix`` transport. The
client then creates two rings in anonymous memfds, one for requests and one
for replies, and an eventfd "bell" for each, and passes the four
descriptors to the server over the socket (SCM_RIGHTS). From then on every
frame is one ring message: no system call on the fast path.

The rings, the bells and the socket (kept open as the liveness signal) make a
``channel.Channel`` on each side, the mechanism the shm Pipe uses too:
a reader spins briefly, then sleeps in epoll on its bell and the socket, so
a message, a clean close (which shuts the rings down) and a client or server
killed by SIGKILL (its socket hangs up) all wake the other side at once.
The rings are memfds: nothing appears in /dev/shm, and the kernel frees
them with the last descriptor.
"""

import os
import socket

from ..._timeouts import seconds
from . import channel as _ring_channel
from .._common import stream as _stream

FAMILIES = ("Manager",)
NAME = "shm"

__all__ = ["FAMILIES", "Listener", "connect", "default_address", "check_address",
           "cleanup", "unavailable", "ShmConnection", "RING_CAPACITY"]

check_address = _stream.check_unix_address
cleanup = _stream.unix_cleanup

# Room for ordinary requests and replies; a larger message goes through the
# ring's overflow extent (same memfd) instead, so this is not a size limit.
RING_CAPACITY = 1 << 16
# The client's first bytes after authenticating, sent with the ring and
# bell descriptors. Read as a frame header they announce an impossible
# length, so a unix-socket (stream) manager refuses them at once instead of
# waiting.
_RING_HELLO = b"\xff" * 7 + b"\x03"
_READY = b"\x02"
# Descriptors the client sends: requests ring, replies ring, the server's
# bell (rung for requests), the client's bell (rung for replies).
_NFDS = 4


def unavailable():
    reason = _ring_channel.unavailable()
    if reason:
        return reason
    if not hasattr(socket, "send_fds"):
        return "needs socket.send_fds (Python 3.9 or later)"
    return None


def default_address():
    return None


class ShmConnection:
    """One end of the manager's ring channel, with the interface of
    ``_common.stream.Connection``: ``send(bytes)``, ``recv(spin, timeout) ->
    bytes``, ``shutdown()``, ``close()``.

    `spin` (the server asks for it only while a single client keeps it busy)
    lets the reader spin in the ring's compiled wait, without the GIL, before
    it sleeps; see ``channel`` for the waiting and the bell protocol.
    """

    __slots__ = ("_chan", "pid", "__weakref__")

    def __init__(self, chan):
        self._chan = chan
        self.pid = os.getpid()

    def send(self, data):
        chan = self._chan
        if chan.closed:
            raise ConnectionError("the connection to the manager is closed")
        chan.send(data)

    def recv(self, spin=True, timeout=None):
        chan = self._chan
        if chan.closed:
            raise ConnectionError("the connection to the manager is closed")
        if timeout is not None:
            timeout = seconds(timeout)
        try:
            msg = chan.recv(timeout, spin)
        except TimeoutError:
            raise TimeoutError("no reply from the manager in time") from None
        if type(msg) is not bytes:       # tagged or multi-part: not ours
            raise _stream.ProtocolError("unexpected message layout in the ring")
        return msg

    def fileno(self):
        return self._chan.fileno()

    @property
    def closed(self):
        return self._chan.closed

    # The two rings (tests look at their descriptors' modes).
    @property
    def _in(self):
        return self._chan._in

    @property
    def _out(self):
        return self._chan._out

    def shutdown(self):
        """Wake the threads of both sides blocked on this connection."""
        if self.pid != os.getpid():
            return      # a forked child never disturbs its parent's connection
        self._chan.shutdown()

    def close(self):
        chan = self._chan
        if chan.closed:
            return
        if self.pid == os.getpid():
            # Our side is gone: the peer's waits end now (the socket would
            # tell it too, but not while a forked child holds a copy).
            chan.shutdown_out()
        chan.close()

    def settimeout(self, timeout):
        pass            # every wait of a ring channel takes its own timeout

    def __repr__(self):
        return f"<mpx shm connection {'closed' if self.closed else 'open'}>"


class _PeerGone(EOFError, ConnectionError):
    """The other side shut its rings down or hung up."""


class Listener(_stream.UnixListener):
    """A unix-socket rendezvous whose connections carry their frames in rings."""

    def handshake(self, sock):
        try:
            _stream.server_handshake(sock, self._authkey, self.handshake_timeout)
            # An authenticated client sends its rings at once; one that
            # stalls here must not hold its handshake place for ever.
            sock.settimeout(self.handshake_timeout)
            head, fds, _flags, _addr = socket.recv_fds(sock, len(_RING_HELLO), _NFDS)
            if not fds:
                # A client of the plain unix transport: serve it over the
                # socket (its first bytes are the start of a frame).
                if not head:
                    raise EOFError("the client left after authenticating")
                sock.settimeout(None)
                conn = _stream.Connection(sock, max_frame=self.max_frame)
                conn._rbuf = head
                return conn
            if head != _RING_HELLO or len(fds) != _NFDS:
                for fd in fds:
                    os.close(fd)
                raise _stream.ProtocolError("the client did not send its rings and bells")
            requests_fd, replies_fd, server_bell, client_bell = fds
            try:
                for fd in (server_bell, client_bell):
                    # Bells must be eventfds: a regular file or pipe here
                    # would make the server block or misread.
                    if os.readlink(f"/proc/self/fd/{fd}") != "anon_inode:[eventfd]":
                        raise _stream.ProtocolError("the client's bells are not eventfds")
                os.set_blocking(server_bell, False)
            except BaseException:
                for fd in fds:
                    os.close(fd)
                raise
            chan = _ring_channel.Channel.from_fds(
                {"sock": sock, "in": requests_fd, "out": replies_fd,
                 "in_bell": server_bell, "out_bell": client_bell}, eof_exc=_PeerGone)
            try:
                sock.sendall(_READY)
                sock.settimeout(None)
            except BaseException:
                chan.close()
                raise
        except BaseException:
            try:
                sock.close()
            except OSError:
                pass
            raise
        # The server reads requests and writes replies.
        return ShmConnection(chan)


def connect(address, authkey, *, timeout=_stream.HANDSHAKE_TIMEOUT, **kwargs):
    """An authenticated connection to the manager at `address` over rings."""
    sock = _stream.unix_connect(address, authkey, timeout)
    made = []
    try:
        requests = _ring_channel.new_ring(RING_CAPACITY, "mpx-manager")
        made.append(requests)
        replies = _ring_channel.new_ring(RING_CAPACITY, "mpx-manager")
        made.append(replies)
        server_bell = _ring_channel.new_bell()
        made.append(server_bell)
        client_bell = _ring_channel.new_bell()
        made.append(client_bell)
        socket.send_fds(sock, [_RING_HELLO], [requests.fd, replies.fd, server_bell,
                                              client_bell])
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
        for obj in made:
            if isinstance(obj, int):
                os.close(obj)
            else:
                obj.close()
        raise
    return ShmConnection(_ring_channel.Channel(sock, replies, requests, client_bell,
                                               server_bell, eof_exc=_PeerGone))
