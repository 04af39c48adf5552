"""Framed, mutually authenticated byte streams over sockets.

The mechanism under the ``unix`` and ``tcp`` Manager transports (and the
handshake of the ``shm`` one). It knows nothing of pickling or of proxies: it
moves opaque frames between two ends that have proved to each other that
they hold the same authkey.

Wire format
-----------
Handshake, before a single byte is unpickled by either side::

    client -> server   b"MPXC"                     (at once, without waiting)
    server -> client   b"MPXM" version:u8 server_nonce:32
    client -> server   client_nonce:32 HMAC(key, b"mpx-client" sn cn):32
    server -> client   b"\\x00"                                   (rejected)
                    or b"\\x01" HMAC(key, b"mpx-server" cn sn):32   (accepted)

Both nonces are fresh random bytes, so neither side's answer can be replayed
or reflected; the two labels stop a server from using a client as an oracle
for its own proof. Every handshake message has a fixed length, so junk sent to
the port is read in bounded pieces and rejected; a peer that has not finished
the whole handshake after ``handshake_timeout`` seconds is cut off (a total
for the handshake, not a limit per read, so a peer trickling a byte at a time
is cut off too).

The client speaks first so that a server expecting TLS hears at once that
this client does not speak it: a TLS client's first byte is 0x16 (a
handshake record), never "M". Such a server answers b"MPXT" in plain text
and hangs up, and the client says the server expects TLS instead of waiting
for a greeting that never comes.

After the handshake each frame is ``length:u64 little-endian`` + payload.
A frame longer than ``max_frame`` closes the connection; a frame above
64 MiB is never allocated in one piece before its bytes arrive, so a lying
length prefix costs at most that much memory, and the wait.
"""

import hashlib
import hmac
import os
import select
import socket
import stat
import struct
import tempfile
import time
from multiprocessing import AuthenticationError, util

from ..._ext import sync as _sync
from ..._timeouts import seconds

__all__ = ["Connection", "StreamListener", "UnixListener", "ProtocolError",
           "client_handshake", "server_handshake", "unix_connect", "unix_cleanup",
           "check_unix_address", "MAX_FRAME", "HANDSHAKE_TIMEOUT"]

MAGIC = b"MPXM"
CLIENT_MAGIC = b"MPXC"
TLS_REQUIRED = b"MPXT"   # a TLS server's plain-text answer to a client without TLS
VERSION = 2              # 2: the client speaks first (CLIENT_MAGIC)
NONCE_SIZE = 32
DIGEST_SIZE = 32          # sha256
HANDSHAKE_TIMEOUT = 10.0  # seconds a peer may take to authenticate
# Frames larger than this are refused (the peer is broken or hostile): far
# above anything a sane RPC carries, far below what would exhaust memory
# through a single lying length prefix (memory only grows as bytes arrive).
MAX_FRAME = 1 << 36

_HDR = struct.Struct("<Q")
_RECV_SIZE = 1 << 16
# Above this, a frame is read into its own buffer instead of being assembled
# from recv() chunks.
_DIRECT_READ = 1 << 16
# Above this, the frame's buffer grows as data arrives instead of being
# allocated at once (a length prefix may lie).
_PREALLOC_LIMIT = 1 << 26

# Spinning (looking at the socket with poll(0) before sleeping in recv)
# replaces a kernel wake-up by a few microseconds of busy-waiting when the
# answer comes fast. On this kind of virtual machine an idle core halts and waking it
# costs 30-60 us (more over TCP), so a request/reply round trip where both
# ends spin is 3-8x faster than one where both sleep. It only pays when
# another core is free to produce that answer (see _crowded).
_SPIN_MAX = 60e-6
# A connection that stopped spinning (its answers were slow) tries again
# every this many waits: otherwise two ends that both gave up would stay
# asleep for good, each finding the other slow because it sleeps.
_PROBE_EVERY = 16
_CAN_SPIN = _sync.cpu_count() > 1


def _crowded():
    """True when more tasks are runnable than there are cores: then spinning
    only steals the time of the process we are waiting for. (The one test
    of this, shared with the ring: mpx_crowded in cython_src/sync.pxd.)"""
    return _sync.crowded()


class ProtocolError(ConnectionError):
    """The peer broke the framing or handshake rules; the connection is closed."""


def _mac(key, label, a, b):
    return hmac.new(key, label + a + b, hashlib.sha256).digest()


def _deadline(timeout):
    return None if timeout is None else time.monotonic() + timeout


def _left(sock, deadline):
    """Give `sock` what is left of the handshake's time (socket.timeout once
    it is all gone)."""
    if deadline is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise socket.timeout("the handshake took longer than its timeout")
        sock.settimeout(left)


def _recv_exact(sock, n, deadline=None):
    """Exactly `n` bytes from a blocking socket (EOFError if it closes first),
    by `deadline` (time.monotonic) if one is given."""
    buf = bytearray(n)
    view = memoryview(buf)
    got = 0
    while got < n:
        _left(sock, deadline)
        k = sock.recv_into(view[got:])
        if not k:
            raise EOFError(f"connection closed during the handshake "
                           f"(after {got} of {n} bytes)")
        got += k
    return bytes(buf)


def server_handshake(sock, authkey, timeout=HANDSHAKE_TIMEOUT):
    """Authenticate the client on `sock` and prove our key to it, all within
    `timeout` seconds.

    Raises AuthenticationError for a wrong key, ProtocolError/EOFError/OSError
    (socket.timeout included) for anything else; the caller closes `sock`.
    """
    deadline = _deadline(timeout)
    _left(sock, deadline)
    server_nonce = os.urandom(NONCE_SIZE)
    sock.sendall(MAGIC + bytes((VERSION,)) + server_nonce)
    if _recv_exact(sock, len(CLIENT_MAGIC), deadline) != CLIENT_MAGIC:
        raise ProtocolError("the client did not start the mpx handshake")
    answer = _recv_exact(sock, NONCE_SIZE + DIGEST_SIZE, deadline)
    client_nonce, digest = answer[:NONCE_SIZE], answer[NONCE_SIZE:]
    if not hmac.compare_digest(digest, _mac(authkey, b"mpx-client", server_nonce, client_nonce)):
        try:
            sock.sendall(b"\x00")
        except OSError:
            pass
        raise AuthenticationError("digest received was wrong")
    _left(sock, deadline)
    sock.sendall(b"\x01" + _mac(authkey, b"mpx-server", client_nonce, server_nonce))
    sock.settimeout(None)


def refuse_plaintext(sock, timeout=HANDSHAKE_TIMEOUT):
    """On a TLS server, before the TLS handshake: if the client's first byte
    shows it is not speaking TLS, tell it so in plain text (it is an mpx
    client without ``client_ssl_context``, or junk) and raise ProtocolError.
    Nothing secret is sent, and nothing is read but the client's magic."""
    sock.settimeout(timeout)
    first = sock.recv(1, socket.MSG_PEEK)
    if not first:
        raise EOFError("the client left before the TLS handshake")
    if first == b"\x16":                 # a TLS handshake record: go on
        return
    try:
        # Read what the client sent (its magic) before answering: closing a
        # socket with unread bytes resets it, and the reset could overtake
        # the answer.
        sock.recv(len(CLIENT_MAGIC))
        sock.sendall(TLS_REQUIRED)
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    raise ProtocolError("a client without TLS connected to this TLS manager "
                        "(it was told that TLS is required)")


def client_handshake(sock, authkey, timeout=HANDSHAKE_TIMEOUT, where="the server"):
    """Prove our key to the server on `sock` and check that it holds it too."""
    deadline = _deadline(timeout)
    _left(sock, deadline)
    sock.sendall(CLIENT_MAGIC)
    # The magic alone first: a peer speaking another protocol may send less
    # than a whole mpx greeting and then wait for us.
    magic = _recv_exact(sock, len(MAGIC), deadline)
    if magic == TLS_REQUIRED:
        raise ProtocolError(f"{where} expects TLS: connect with client_ssl_context= "
                            f"(an ssl.SSLContext, or a callable returning one, that "
                            f"trusts the manager's certificate)")
    if magic != MAGIC:
        raise ProtocolError(f"{where} is not an mpx manager (it did not answer "
                            f"with the mpx handshake)")
    hello = MAGIC + _recv_exact(sock, 1 + NONCE_SIZE, deadline)
    if hello[len(MAGIC)] != VERSION:
        raise ProtocolError(f"{where} speaks mpx manager protocol version "
                            f"{hello[len(MAGIC)]}, this mpx speaks {VERSION}")
    server_nonce = hello[len(MAGIC) + 1:]
    client_nonce = os.urandom(NONCE_SIZE)
    _left(sock, deadline)
    sock.sendall(client_nonce + _mac(authkey, b"mpx-client", server_nonce, client_nonce))
    verdict = _recv_exact(sock, 1, deadline)
    if verdict == b"\x00":
        raise AuthenticationError(f"digest sent was rejected by {where} (wrong authkey)")
    if verdict != b"\x01":
        raise ProtocolError(f"{where} sent an invalid handshake verdict")
    proof = _recv_exact(sock, DIGEST_SIZE, deadline)
    if not hmac.compare_digest(proof, _mac(authkey, b"mpx-server", client_nonce, server_nonce)):
        raise AuthenticationError(f"{where} does not hold the authkey (its digest was wrong)")
    sock.settimeout(None)


class Connection:
    """One end of an authenticated, framed stream.

    ``send(data)`` writes one frame; ``recv()`` returns the next frame as
    bytes (EOFError when the peer closed cleanly). Not thread-safe: one
    thread uses a connection at a time, which is how the manager uses it.

    ``steady=True`` (a server's end) keeps spinning at full length however
    slow the peer is; the other end (a client) spins less after slow
    answers, so a client waiting on a slow call (``Queue.get``) does not burn
    its core, and probes now and then. A server only asks for a spin while
    one client keeps it busy, and the client's probe only succeeds if the
    server is spinning: the two together find the fast mode again after a
    hiccup, which two adapting ends would not.
    """

    __slots__ = ("_sock", "_rbuf", "_spin", "_can_spin", "_steady", "_idle", "_sendmsg", "_poll",
                 "max_frame", "pid", "__weakref__")

    def __init__(self, sock, *, max_frame=MAX_FRAME, spin=True, steady=False):
        self._sock = sock
        self._rbuf = b""
        # A TLS socket may hold decrypted bytes that poll() cannot see, and
        # it refuses sendmsg: it never spins, and sends with sendall.
        tls = hasattr(sock, "getpeercert")
        self._can_spin = bool(spin) and _CAN_SPIN and not tls
        self._spin = _SPIN_MAX if self._can_spin else 0.0
        self._steady = bool(steady)
        self._idle = 0
        self._poll = None        # bound poll() of a select.poll on the socket
        self._sendmsg = None if tls else sock.sendmsg
        self.max_frame = max_frame
        self.pid = os.getpid()

    # -- writing ----------------------------------------------------------
    def send(self, data):
        sock = self._sock
        if sock is None:
            raise ConnectionError("the connection to the manager is closed")
        n = len(data)
        if n < _DIRECT_READ:
            # One system call per frame: the header and the payload in one
            # buffer (copying a small payload costs less than a second
            # write, which over TCP would also be a second segment).
            sock.sendall(_HDR.pack(n) + data)
        elif self._sendmsg is not None:
            self._send_large(_HDR.pack(n), data)
        else:
            sock.sendall(_HDR.pack(n))
            sock.sendall(data)

    def _send_large(self, header, data):
        """Header and payload with sendmsg (no copy of the payload), going
        on where a partial write stopped."""
        view = memoryview(data).cast("B")
        sendmsg = self._sendmsg
        sent = sendmsg((header, view))
        if sent < len(header):
            self._sock.sendall(header[sent:])
            sent = len(header)
        sent -= len(header)
        while sent < len(view):
            sent += sendmsg((view[sent:],))

    # -- reading ----------------------------------------------------------
    def _recv_some(self, spin):
        sock = self._sock
        if sock is None:
            raise ConnectionError("the connection to the manager is closed")
        if not spin or not self._can_spin:
            return sock.recv(_RECV_SIZE)
        budget = self._spin
        if not budget:
            self._idle += 1
            if self._idle >= _PROBE_EVERY:
                self._idle = 0
                budget = _SPIN_MAX
        if budget and not _crowded():
            # poll(0) is the cheapest look at the socket (about a third of a
            # failed recv with MSG_DONTWAIT, which also raises), and unlike
            # recv it never locks a TCP socket against the arriving data.
            poll = self._poll
            if poll is None:
                p = select.poll()
                p.register(sock, select.POLLIN)
                poll = self._poll = p.poll
            if not poll(0):
                clock = time.perf_counter
                deadline = clock() + budget
                while not poll(0):
                    if clock() > deadline:
                        # The answer was slow: spin less next time (down to
                        # not at all; a failed probe leaves it there),
                        # unless this end spins whatever the peer does.
                        if not self._steady:
                            self._spin = budget * 0.5 if self._spin > 4e-6 else 0.0
                        return sock.recv(_RECV_SIZE)
            self._spin = _SPIN_MAX
            return sock.recv(_RECV_SIZE)
        return self._sleep_recv(sock)

    def _sleep_recv(self, sock):
        # Not spinning at the moment: if the answer turns out to come fast
        # even though we slept, start spinning again.
        t0 = time.perf_counter()
        chunk = sock.recv(_RECV_SIZE)
        if time.perf_counter() - t0 < _SPIN_MAX:
            self._spin = _SPIN_MAX
        return chunk

    def recv(self, spin=True, timeout=None):
        """The next frame, as bytes (TimeoutError after `timeout` seconds)."""
        if timeout is not None:
            timeout = seconds(timeout)
        if timeout is not None:
            sock = self._sock
            if sock is None:
                raise ConnectionError("the connection to the manager is closed")
            sock.settimeout(timeout)
            try:
                return self.recv(False)
            finally:
                if self._sock is not None:
                    sock.settimeout(None)
        buf = self._rbuf
        if not buf:
            # The common case: one whole frame in one read.
            buf = self._recv_some(spin)
            if len(buf) >= 8 and len(buf) == _HDR.unpack_from(buf)[0] + 8:
                return buf[8:]
            if not buf:
                raise EOFError("connection closed by the peer")
        while True:
            if len(buf) >= 8:
                n = _HDR.unpack_from(buf)[0]
                end = 8 + n
                if len(buf) >= end:
                    self._rbuf = buf[end:]
                    return buf[8:end]
                if n > self.max_frame:
                    self._rbuf = b""
                    raise ProtocolError(f"frame of {n} bytes announced, more than "
                                        f"the limit of {self.max_frame}")
                if n >= _DIRECT_READ:
                    self._rbuf = b""
                    return self._read_large(bytes(buf[8:]), n)
            chunk = self._recv_some(spin)
            if not chunk:
                self._rbuf = b""
                if buf:
                    raise ProtocolError("connection closed in the middle of a frame")
                raise EOFError("connection closed by the peer")
            buf = buf + chunk if buf else chunk

    def _read_large(self, head, n):
        sock = self._sock
        if n <= _PREALLOC_LIMIT:
            out = bytearray(n)
            view = memoryview(out)
            got = min(len(head), n)
            view[:got] = head[:got]
            self._rbuf = head[n:]
            while got < n:
                k = sock.recv_into(view[got:], min(n - got, 1 << 22))
                if not k:
                    raise ProtocolError("connection closed in the middle of a frame")
                got += k
            return out
        parts = [head]
        got = len(head)
        while got < n:
            chunk = sock.recv(min(n - got, 1 << 20))
            if not chunk:
                raise ProtocolError("connection closed in the middle of a frame")
            parts.append(chunk)
            got += len(chunk)
        return b"".join(parts)

    # -- misc -------------------------------------------------------------
    def fileno(self):
        return self._sock.fileno()

    @property
    def closed(self):
        return self._sock is None

    def close(self):
        """Close our end. In a forked child this only closes the child's
        copy of the descriptor; it never shuts down the parent's stream."""
        sock, self._sock = self._sock, None
        if sock is not None:
            try:
                sock.close()
            except OSError:
                pass

    def shutdown(self):
        """Wake up a thread blocked reading this connection (it gets EOF)."""
        sock = self._sock
        if sock is not None:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

    def settimeout(self, timeout):
        self._sock.settimeout(timeout)

    def __repr__(self):
        state = "closed" if self._sock is None else f"fd={self._sock.fileno()}"
        return f"<mpx stream connection {state}>"


class StreamListener:
    """A listening socket; `accept()` returns raw sockets, `handshake()`
    authenticates one (call it in the thread that will serve it, so a slow
    or hostile peer never holds up the accept loop)."""

    family = None

    def __init__(self, sock, address, authkey, *, handshake_timeout=HANDSHAKE_TIMEOUT,
                 max_frame=MAX_FRAME):
        self._sock = sock
        self.address = address
        self._authkey = bytes(authkey)
        self.handshake_timeout = handshake_timeout
        self.max_frame = max_frame

    def accept(self):
        sock, _ = self._sock.accept()
        return sock

    def _wrap(self, sock):
        """Hook for transports that wrap the raw socket (TLS)."""
        return sock

    def handshake(self, sock):
        """Authenticate `sock`; return a Connection or raise (and close it)."""
        try:
            sock = self._wrap(sock)
            server_handshake(sock, self._authkey, self.handshake_timeout)
        except BaseException:
            try:
                sock.close()
            except OSError:
                pass
            raise
        return Connection(sock, max_frame=self.max_frame, steady=True)

    def fileno(self):
        return self._sock.fileno()

    def close(self):
        sock, self._sock = self._sock, None
        if sock is not None:
            # shutdown() wakes a thread blocked in accept(); close() alone
            # would leave it sleeping on a descriptor number that may be
            # reused.
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
            try:
                sock.close()
            except OSError:
                pass


# --- unix-domain sockets (the unix transport, and the shm transport's
# --- rendezvous) ------------------------------------------------------------

def check_unix_address(address):
    """Return `address` as a unix socket path, or raise ValueError."""
    if isinstance(address, bytes):
        address = os.fsdecode(address)
    if not isinstance(address, str) or not address:
        raise ValueError(f"a unix-socket manager address must be a non-empty path "
                         f"string, not {address!r}")
    if len(os.fsencode(address)) > 107:
        raise ValueError(f"unix socket path is too long ({len(address)} characters; "
                         f"the kernel allows 107): {address!r}")
    return address


class UnixListener(StreamListener):
    """Listens on a unix socket created 0o600 (inside a fresh 0o700
    directory when mpx picks the path). ``close()`` removes what it created.
    A path starting with NUL names Linux's abstract namespace (no file, no
    permissions: the authkey alone guards it)."""

    def __init__(self, address, authkey, *, backlog=128, **kwargs):
        self._dir = None
        if address is None:
            self._dir = tempfile.mkdtemp(prefix="mpx-manager-")   # mode 0o700
            util.info("created temp directory %s", self._dir)
            address = os.path.join(self._dir, "socket")
        address = check_unix_address(address)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.bind(address)
            self._inode = None
            if not address.startswith("\0"):
                # Nobody can connect between bind and listen, so tightening
                # the mode here leaves no window.
                os.chmod(address, 0o600)
                self._inode = os.stat(address).st_ino
            sock.listen(backlog)
        except BaseException:
            sock.close()
            if self._dir is not None:
                _remove_socket(address, None, self._dir)
            raise
        self._path = address
        self._pid = os.getpid()
        super().__init__(sock, address, authkey, **kwargs)

    def close(self):
        super().close()
        # Only the process that bound the socket removes it, and only if the
        # file is still the one it created.
        if getattr(self, "_pid", None) == os.getpid():
            _remove_socket(self._path, self._inode, self._dir)
            self._pid = None


def _remove_socket(path, inode, directory):
    if not path.startswith("\0"):
        try:
            st = os.lstat(path)
            if stat.S_ISSOCK(st.st_mode) and (inode is None or st.st_ino == inode):
                os.unlink(path)
        except OSError:
            pass
    if directory is not None:
        try:
            os.rmdir(directory)
        except OSError:
            pass


def unix_cleanup(address):
    """Remove the socket file (and mpx's private directory around it) that
    a server killed before it could close its listener left behind."""
    if isinstance(address, str) and not address.startswith("\0"):
        directory = os.path.dirname(address)
        mine = os.path.basename(directory).startswith("mpx-manager-") and \
            os.path.basename(address) == "socket"
        _remove_socket(address, None, directory if mine else None)


def unix_connect(address, authkey, timeout=HANDSHAKE_TIMEOUT):
    """A unix socket connected to `address` and authenticated both ways."""
    address = check_unix_address(address)
    deadline = _deadline(timeout)
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        _unix_connect(sock, address, deadline)
        client_handshake(sock, bytes(authkey), timeout, where=f"the manager at {address!r}")
    except BaseException:
        sock.close()
        raise
    return sock


def _unix_connect(sock, address, deadline):
    """Connect, waiting while the server's backlog is full (a busy server,
    or one that a flood of connections keeps busy): with a timeout set, a
    unix socket's connect fails with EAGAIN then instead of waiting."""
    delay = 0.001
    while True:
        _left(sock, deadline)
        try:
            sock.connect(address)
            return
        except BlockingIOError:
            pass
        if deadline is not None and time.monotonic() + delay > deadline:
            raise socket.timeout(f"the manager at {address!r} did not accept the "
                                 f"connection in time (its backlog stayed full)")
        time.sleep(delay)
        delay = min(delay * 2, 0.05)
