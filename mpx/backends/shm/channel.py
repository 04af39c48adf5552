"""Two processes talking over a pair of shared-memory rings.

Not a backend: the one mechanism that the shm Pipe (``pipe``) and the
shm Manager transport (``manager``) share. A :class:`Channel` is one end:
it writes messages into one ring (``mpx._ext.ring``) and reads them from
another (a simplex end has only one of the two). Besides the rings each end
holds:

- a socket of a socketpair (or the manager's unix connection): the
  liveness signal. The kernel reports a hang-up on it (POLLRDHUP) once every
  copy of the peer's socket is closed, whether the peer closed it, exited
  or was killed, so a peer's death is seen at once. Messages never travel
  on it; file descriptors do (``send_fds``/``recv_fds``, which
  ``multiprocessing.reduction.send_handle``/``recv_handle`` use for a Pipe
  end), and since only a hang-up counts as the peer's end, descriptors
  waiting there to be received neither look like EOF nor wake a sleeper;
- per direction, an eventfd "bell" that a writer rings when the reader asked
  for it (see below). Reader and writer hold the same eventfd.

Everything lives in descriptors (the rings in memfds, mode 0o600, sealed
against shrinking so that nobody can truncate a ring under its users, which
would kill them with SIGBUS): nothing appears in /dev/shm, and the kernel
frees it all with the last descriptor.

Every wait (``recv(timeout)``, ``poll(timeout)``) reads its timeout as
``mpx._timeouts.seconds`` does: None or inf waits for ever, NaN is a
ValueError at once.

Waiting for a message
    The fast path makes no system call: a writer publishes into the ring and
    a reader that spins (in the ring's compiled wait, without the GIL, for
    at most ``spin`` seconds; yielding the CPU when the machine has more
    runnable tasks than cores) takes it. A reader that finds nothing after
    spinning sleeps in ``epoll_wait`` on its bell and its socket, so a
    message, a hang-up of the peer, or a signal (Ctrl-C) ends the sleep.
    Sleeps are cut into slices of a second (a safety net only).

    Spinning only pays while the peer runs on another core. Wake-ups often
    pull both ends onto one core while the other idles, and there a spin
    holds up the very process it waits for (a manager call measured 500 us
    instead of 5 us). So a waiting reader notes its core (aux word CPU of
    the ring it reads) and does not spin when its peer's last noted core is
    its own: it yields the core once, then sleeps.

The bell protocol (aux word ARMED of each ring; values IDLE, ARMED, RUNG)
    Writer, after publishing a message (the ring's publish is a locked
    compare-and-swap, a full barrier)::

        while ARMED == 1 and cas(ARMED, 1 -> 2):     # one writer per arming
            write(bell, 1)
            if the ring is readable: stop             # rung over a message
            if not read(bell): stop                   # the reader cleared it
            # the reader was quicker: we took our ring back; re-arm for
            # it (a wait() user never re-arms by itself) and look again,
            # since a writer that published meanwhile saw 2 and did not ring
            cas(ARMED, 2 -> 1)
            if the ring is empty: stop

    Reader, before sleeping (and whenever it wants the bell to reflect the
    ring, see "readiness" below)::

        n = read(bell)                                # clear it (non-blocking)
        cas(ARMED, any -> 1)                          # a locked op: full barrier
        if the ring is readable:                      # re-check AFTER arming
            if n and another reader may need it: write(bell, 1)
            do not sleep
        else: epoll_wait(bell, socket)

    No message is ever slept through: the reader arms before its last look
    at the ring and the writer looks at ARMED after publishing; with a full
    barrier on both sides (Dekker), either the reader sees the message or
    the writer sees ARMED == 1 and rings. Whoever clears the bell (the
    reader, or a writer taking back a late ring) re-checks the ring after
    clearing and rings again if it is readable, so a cleared ring never
    hides a message from another sleeper. A writer stuck or killed between
    its compare-and-swap and its write leaves the word at 2 with no ring:
    a sleeping reader finds the message at its next slice (1 s), a wait()
    user once its reader next takes a message or the writer's socket hangs
    up (the usual end of a killed writer); a sleeper killed in its sleep
    costs nothing.

Readiness (``fileno()``)
    ``fileno()`` is an epoll descriptor holding the bell and the socket: it
    is readable while the bell is rung or the peer has hung up. Once any
    process asked for it, the ring's WATCHED word is set for good and every
    reader keeps "bell rung <=> a message is there" true at rest: after a
    take that empties the ring it clears the bell, re-arms and re-checks as
    above, and a writer whose ring landed after the reader had taken the
    message takes it back. So ``multiprocessing.connection.wait`` sees the
    connection readable exactly while a message (or EOF) is waiting; with
    several readers sharing one end, as with a shared OS pipe, another
    reader may have taken the message by the time this one looks.

EOF
    A reader that finds the ring empty and the socket hung up looks at the
    ring once more (everything the peer put before closing is visible by
    then) and only then reports EOF. A writer learns that its reader is gone
    when the ring is full and the socket hung up (BrokenPipeError); until
    then sends succeed (unlike an OS pipe or socket, which fail at once:
    looking at the socket on every send would cost a system call on the
    fast path). Closing an end never
    shuts the rings down (other copies of it may live on in other
    processes); ``shutdown_out()`` does, for a transport that knows it is
    the only user (the manager).
"""

import errno
import os
import select
import socket
import time
import weakref

from ..._timeouts import seconds
from . import DEFAULT_CAPACITY      # the ring size when none is given (also queues')

__all__ = ["Channel", "pair", "close_fds", "new_ring", "new_bell", "attach_ring",
           "unavailable", "check_capacity", "check_spin", "DEFAULT_CAPACITY",
           "DEFAULT_SPIN"]

# Longest spin before sleeping, in seconds (the ring adapts between a
# quarter of this and all of it). A cross-process wake-up costs ~40 us on
# the VMs mpx is tuned on; a spinning hand-off ~0.1 us.
DEFAULT_SPIN = 50e-6

# After its spin, a reader naps this long on the ring's own futex before the
# epoll sleep on its bell. The futex is woken by the writer's publish itself
# (no bell to arm and ring); without the nap, a ping-pong whose answers came
# just after the spin went through the bell every time (~56 us a round trip
# instead of ~6 us, in some runs). A nap costs no CPU; a hang-up of the
# peer is noticed at most that much later.
_NAP = 1e-3

# While a writer waits for room, how often it checks that its reader lives.
_POLL = 0.1
# Longest single sleep: the bound on how late a wake-up lost with a process
# killed between its compare-and-swap and its write (or a close() racing a
# sleeping thread of its own process) can be noticed.
_SLICE = 1.0

# What poll() reports once the peer's socket is gone (POLLHUP and POLLERR
# come unasked).
_HANGUP = select.POLLRDHUP | select.POLLHUP | select.POLLERR

# Aux words of each ring.
ARMED = 0      # IDLE / ARMED / RUNG, see the module docstring
WATCHED = 1    # 1 once some reader handed out fileno(): keep the bell exact
CPU = 2        # 1 + the core its reader last waited on (0: not known)
IDLE, ARMED_, RUNG = 0, 1, 2


def _cpu_getter():
    """sched_getcpu() (a vDSO call, ~0.2 us), or a stand-in returning -1."""
    try:
        import ctypes
        f = ctypes.CDLL(None).sched_getcpu
        f.restype, f.argtypes = ctypes.c_int, []
        f()
        return f
    except (OSError, AttributeError):
        return lambda: -1


_getcpu = _cpu_getter()

_ring = None


def _ring_module():
    global _ring
    if _ring is None:
        from ..._ext import ring
        _ring = ring
    return _ring


def unavailable():
    """Why rings cannot be used here (None when they can)."""
    try:
        _ring_module()
    except ImportError as e:
        return f"the shared-memory ring extension is not built ({e})"
    if not hasattr(os, "memfd_create"):
        return "needs memfd_create (Linux 3.17 or later)"
    if not hasattr(os, "eventfd"):
        return "needs os.eventfd (Python 3.10 or later on Linux)"
    if not hasattr(select, "epoll"):
        return "needs epoll (Linux)"
    return None


def check_capacity(capacity):
    """Bytes of ring per direction: an int (numpy integers welcome) the ring
    accepts, else TypeError/ValueError naming `capacity`."""
    return _ring_module().check_layout(capacity)["capacity"]


def check_spin(spin):
    """`spin` (seconds, None for DEFAULT_SPIN) as the ring reads it, else
    TypeError/ValueError naming `spin`."""
    return _ring_module().spin_ns(DEFAULT_SPIN if spin is None else spin)


def new_ring(capacity=DEFAULT_CAPACITY, label="mpx-channel"):
    """A new ring in an anonymous memfd (mode 0o600, sealed against
    shrinking by Ring.create)."""
    Ring = _ring_module().Ring
    fd = os.memfd_create(label, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        # A memfd has no path, but /proc/PID/fd/N reaches it: owner only.
        os.fchmod(fd, 0o600)
        ring_id = int.from_bytes(os.urandom(8), "little") or 1
        return Ring.create(fd, capacity, ring_id=ring_id)
    except BaseException:
        os.close(fd)        # Ring.create leaves `fd` to us when it fails
        raise


def attach_ring(fd):
    """Map the ring in `fd` (owned by the ring from now on, closed on failure)."""
    try:
        return _ring_module().Ring.attach(fd, holder=False)
    except BaseException:
        os.close(fd)
        raise


def new_bell():
    # Non-blocking: the bell is only ever read to clear it.
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


def _ring_the_bell(bell, _write=os.eventfd_write):
    try:
        _write(bell, 1)
    except BlockingIOError:       # the counter is saturated: it is rung anyway
        pass


def _clear(bell, _read=os.eventfd_read):
    """Clear the bell; True if it was rung."""
    try:
        return _read(bell) > 0
    except BlockingIOError:
        return False


def _weak(method):
    """`method` (of a channel) called through a weak reference: the hooks a
    channel sets on its rings must not keep it alive (it owns the rings, and
    its descriptors should close when it is dropped, not at the next cycle
    collection)."""
    ref = weakref.WeakMethod(method)

    def call(*args):
        bound = ref()
        if bound is None:
            raise OSError(errno.EBADF, "handle is closed")
        return bound(*args)
    return call


def _arm(ring):
    """ARMED := 1 with a locked instruction (a full barrier: the caller's
    next look at the ring cannot be ordered before it)."""
    cas, load = ring.aux_cas, ring.aux_load
    s = load(ARMED)
    while not cas(ARMED, s, ARMED_):
        s = load(ARMED)


class Channel:
    """One end of a pair of rings. `sock` is the liveness socket; `in_ring`
    and `in_bell` are read (None for a write-only end), `out_ring` and
    `out_bell` written (None for a read-only end). The channel owns all of
    them. `eof_exc` is raised by recv once the peer is gone and the ring
    drained (and is the rings' shutdown exception)."""

    __slots__ = ("_sock", "_sockfd", "_in", "_out", "_in_bell", "_out_bell",
                 "_ep", "_ep_pid", "_watched", "_sleepers", "_deferred", "_closed", "_empty",
                 "_full", "eof_exc", "spin", "pid", "decode", "__weakref__")

    def __init__(self, sock, in_ring, out_ring, in_bell, out_bell, *,
                 eof_exc=EOFError, spin=DEFAULT_SPIN):
        ring = _ring_module()
        self._empty, self._full = ring.RingEmpty, ring.RingFull
        self._sock = sock
        self._sockfd = sock.fileno()
        self._in, self._out = in_ring, out_ring
        self._in_bell, self._out_bell = in_bell, out_bell
        self._ep = None
        self._ep_pid = None
        self._watched = False
        self._sleepers = 0
        self._deferred = ()
        self._closed = False
        self.eof_exc = eof_exc
        self.pid = os.getpid()
        self.decode = None
        # The rings run send_obj/recv_obj's fast path themselves (compiled,
        # no frame of ours) and call back here only for the rest.
        if out_ring is not None:
            out_ring.bell_aux, out_ring.bell_value = ARMED, ARMED_
            out_ring.on_bell = _weak(self._ring_bell)
            out_ring.on_full = _weak(self._send_when_full)
        if in_ring is not None:
            in_ring.watch_aux = WATCHED
            in_ring.on_take = _weak(self._after_take)
            in_ring.on_empty = _weak(self._recv_when_empty)
        self.set_spin(spin)

    def set_spin(self, spin):
        if spin is None:
            spin = DEFAULT_SPIN
        ns = check_spin(spin)
        self.spin = float(spin)
        for r in (self._in, self._out):
            if r is not None:
                r.shutdown_exc = self.eof_exc
                r.spin_max_ns = ns
        if self._in is not None:
            # recv_obj spins, then naps on the ring's futex, before the
            # epoll sleep of _recv_when_empty.
            self._in.recv_wait = self.spin + _NAP if self.spin else 0.0

    # ------------------------------------------------------------ state

    @property
    def closed(self):
        return self._closed

    @property
    def readable(self):
        return self._in is not None

    @property
    def writable(self):
        return self._out is not None

    @property
    def in_ring(self):
        """The ring this end reads (None: write-only)."""
        return self._in

    @property
    def out_ring(self):
        """The ring this end writes (None: read-only)."""
        return self._out

    def _check_open(self):
        if self._closed:
            raise OSError(errno.EBADF, "handle is closed")

    def peer_alive(self):
        """False once every copy of the peer's socket is closed (its hang-up,
        not bytes waiting there: descriptors sent with send_fds may be)."""
        try:
            p = select.poll()
            p.register(self._sockfd, _HANGUP)
            return not p.poll(0)
        except (OSError, ValueError):
            return False

    # ------------------------------------------------------------ descriptors

    def send_fds(self, fds):
        """Send the descriptors `fds` to the peer end over the socket, framed
        as ``multiprocessing.reduction.sendfds`` frames them: one byte (their
        number modulo 256) carrying them as SCM_RIGHTS. The ring's messages
        are not involved: the two travel independently."""
        self._check_open()
        fds = list(fds)
        socket.send_fds(self._sock, [bytes([len(fds) % 256])], fds)

    def recv_fds(self, n):
        """Receive `n` descriptors sent with send_fds (waiting for them).
        EOFError if the peer hung up without sending any; RuntimeError if
        what came is not that (bytes without descriptors, or another number
        of them), as ``multiprocessing.reduction.recvfds``."""
        self._check_open()
        msg, fds, flags, _ = socket.recv_fds(self._sock, 1, n)
        if not msg and not fds:
            raise EOFError("the other end hung up before sending a descriptor")
        if len(fds) == n and len(fds) % 256 == msg[0] and not flags & socket.MSG_CTRUNC:
            return fds
        close_fds(fds)
        raise RuntimeError(f"expected {n} file descriptor(s) from the other end; got "
                           f"{len(fds)} with {len(msg)} byte(s) of data")

    # ------------------------------------------------------------ sending

    def send(self, msg, tag=0):
        """Put one message (a bytes-like object or a list of them) in the
        outgoing ring, waiting while it is full; BrokenPipeError if the
        reader is gone meanwhile."""
        out = self._out
        try:
            out.put(msg, tag, False)
        except self._full:
            self._send_when_full(msg, tag)
            return
        except (ValueError, AttributeError):
            self._check_open()
            raise
        # The put's compare-and-swap is a full barrier: this load cannot miss
        # a reader that armed before its last look at the ring.
        if out.aux_load(ARMED) == ARMED_:
            self._ring_bell()

    def send_obj(self, obj):
        """Put an object with the out ring's compiled encoder (its enc_*
        hooks, set by the policy layer, see codec()). The ring's send_obj
        does it all, calling back _ring_bell and _send_when_full."""
        try:
            self._out.send_obj(obj)
        except (ValueError, AttributeError):
            self._check_open()
            raise

    def _send_when_full(self, msg, tag):
        self._put_slow(msg, tag)
        if self._out.aux_load(ARMED) == ARMED_:
            self._ring_bell()

    def codec(self, decode, **hooks):
        """Set the object codec: the rings' enc_*/dec_* hooks (for their
        compiled send_obj/recv_obj) and `decode(msg) -> obj` (msg as the
        ring gives it), for the messages recv_obj takes after a sleep."""
        self.decode = decode
        for name, value in hooks.items():
            r = self._out if name.startswith("enc_") else self._in
            if r is not None:
                setattr(r, name, value)

    def _put_slow(self, msg, tag):
        out = self._out
        while True:
            try:
                out.put(msg, tag, True, _POLL)
                return
            except self._full:
                if self._closed:
                    self._check_open()
                if not self.peer_alive():
                    raise BrokenPipeError(errno.EPIPE, "the other end of the pipe "
                                          "is closed (no reader)") from None
            except ValueError:
                self._check_open()
                raise

    def _ring_bell(self):
        out, bell = self._out, self._out_bell
        # Each turn: this writer won the arming (ARMED -> RUNG) and rings.
        while out.aux_cas(ARMED, ARMED_, RUNG):
            _ring_the_bell(bell)
            if out.wait_readable(0) or not _clear(bell):
                return    # rung over a message, or the reader cleared it (and re-armed)
            # The reader took the message before our ring landed, and we
            # took the ring back (a rung bell over an empty ring would make
            # wait() report a message that is not there). The reader is
            # still waiting and a wait() user never re-arms by itself:
            # re-arm for it, then look again, since a writer that published
            # while the word said RUNG did not ring.
            out.aux_cas(ARMED, RUNG, ARMED_)
            if not out.wait_readable(0):
                return

    # ------------------------------------------------------------ receiving

    def recv(self, timeout=None, spin=True):
        """The next message, as the ring gives it (bytes, or (tag, parts)).
        Raises eof_exc once the peer is gone and the ring drained, and
        TimeoutError if `timeout` seconds pass first (None or inf: never)."""
        ring = self._in
        if timeout is not None:
            timeout = seconds(timeout)
        try:
            # (Looking first is cheaper than an exception from an empty ring.)
            if ring.wait_readable(0):
                try:
                    msg = ring.get(False)
                except self._empty:       # another reader was first
                    msg = self._recv_slow(timeout, spin)
            else:
                msg = self._recv_slow(timeout, spin)
        except (ValueError, AttributeError):
            self._check_open()    # closed meanwhile (by another thread)
            raise
        finally:
            self._after_take()
        return msg

    def _after_take(self):
        """Once some process watches fileno(), keep the bell exact: a take
        that emptied the ring clears it (see the module docstring)."""
        ring = self._in
        try:
            if not self._closed and (self._watched or ring.aux_load(WATCHED)):
                self._watched = True
                if not ring.wait_readable(0):
                    self._settle()
        except (ValueError, OSError):
            if not self._closed:
                raise
            # Closed by another thread meanwhile: there is no bell to keep,
            # and the message taken (or the error) must not be lost to this.

    def recv_obj(self):
        """recv(), decoded with the in ring's compiled decoder (see codec()).
        The ring's recv_obj spins and takes the message itself, calling back
        _after_take (once fileno() is watched) and _recv_when_empty."""
        try:
            return self._in.recv_obj()
        except (ValueError, AttributeError):
            self._check_open()
            raise

    def _recv_when_empty(self):
        """recv_obj after the ring's spin and nap found nothing: sleep."""
        try:
            return self.decode(self._recv_slow(None, False))
        finally:
            # (Also after a message that failed to decode: it was taken.)
            self._after_take()

    def _recv_slow(self, timeout, spin):
        ring = self._in
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if not self._wait(deadline, spin, True):
                raise TimeoutError("nothing arrived in time")
            try:
                return ring.get(False)
            except self._empty:
                if not ring.wait_readable(0) and not self.peer_alive():
                    # Hung up, and nothing left (looked at after the hang-up).
                    raise self.eof_exc("the other end of the pipe is closed") from None
                # Another reader was first: wait again.

    def poll(self, timeout=0.0):
        """True if a message (or EOF) is waiting, waiting up to `timeout`
        seconds (None or inf: for ever)."""
        self._check_open()
        if timeout is not None:
            timeout = seconds(timeout)
        try:
            if self._in.wait_readable(0):
                return True
            if timeout is not None and timeout <= 0:
                return not self.peer_alive()
            deadline = None if timeout is None else time.monotonic() + timeout
            return self._wait(deadline, True, False)
        except (ValueError, AttributeError):
            self._check_open()    # closed meanwhile (by another thread)
            raise

    def _wait(self, deadline, spin, consuming):
        """True once the ring is readable or the peer hung up, False when
        `deadline` (time.monotonic) passes first."""
        ring = self._in
        if spin and self.spin:
            # Spinning pays only while the peer runs on another core. The
            # scheduler sometimes puts both ends on one core (wake-ups pull
            # the wakee to the waker's core) while the other idles; a spin
            # there only delays the peer we wait for, by the whole budget at
            # each step (measured: a manager call went from 5 us to 500 us
            # until the two drifted apart again). So each waiting reader
            # notes its core in its ring, and one that finds the peer's last
            # noted core equal to its own yields the core instead.
            out = self._out
            me = _getcpu()
            if me >= 0:
                ring.aux_store(CPU, me + 1)
            if out is not None and me >= 0 and out.aux_load(CPU) == me + 1:
                os.sched_yield()
                if ring.wait_readable(0):
                    return True
            else:
                budget = self.spin + _NAP
                if deadline is not None:
                    budget = min(budget, deadline - time.monotonic())
                # Spin (and then nap on the ring's own futex for the rest of
                # the budget) in compiled code, without the GIL.
                if budget > 0 and ring.wait_readable(budget):
                    return True
        return self._sleep(deadline, consuming)

    def _sleep(self, deadline, consuming):
        self._check_open()        # before _poller() registers any descriptor
        ring, bell = self._in, self._in_bell
        ep = self._poller()
        sockfd = self._sockfd
        hung_up = False
        self._sleepers += 1
        try:
            while True:
                if self._closed:
                    # Closed by another thread of ours: its descriptors may
                    # already be reused, so touch nothing.
                    raise OSError(errno.EBADF, "handle is closed")
                rung = _clear(bell)
                _arm(ring)
                if ring.wait_readable(0):
                    # We may have cleared a ring another sleeper (another
                    # copy of this end) waits for: pass it on unless we take
                    # the only message there is.
                    if rung and (not consuming or ring.qsize() > 1):
                        _ring_the_bell(bell)
                    return True
                if hung_up:
                    return True
                wait = _SLICE
                if deadline is not None:
                    wait = deadline - time.monotonic()
                    if wait <= 0:
                        return False
                    wait = min(wait, _SLICE)
                for fd, _ in ep.poll(wait):
                    if fd == sockfd:
                        hung_up = True
        finally:
            self._sleepers -= 1
            if self._closed and not self._sleepers:
                self._close_deferred()

    def _close_deferred(self):
        """Close what close() left to the last sleeping thread."""
        ep, self._ep = self._ep, None
        if ep is not None:
            ep.close()
        for fd in self._deferred:
            try:
                os.close(fd)
            except OSError:
                pass
        self._deferred = ()

    def _settle(self):
        """Make the bell say whether a message is there (WATCHED rings, or
        before handing out fileno)."""
        ring, bell = self._in, self._in_bell
        _clear(bell)
        _arm(ring)
        if ring.wait_readable(0):
            _ring_the_bell(bell)

    def _poller(self):
        """This process's epoll on the bell and the socket (a forked child
        makes its own: sleepers of two processes never share one)."""
        if self._ep is None or self._ep_pid != os.getpid():
            if self._ep is not None:
                self._ep.close()      # the parent's instance: ours is a copy
            # Sleepers are counted per process: the parent's sleeping
            # threads do not exist in a forked child.
            self._sleepers = 0
            ep = select.epoll(2)
            try:
                ep.register(self._in_bell, select.EPOLLIN)
                # The socket's hang-up only: descriptors waiting on it
                # (send_fds) are no message.
                ep.register(self._sockfd, select.EPOLLRDHUP)
            except BaseException:
                ep.close()
                raise
            self._ep, self._ep_pid = ep, os.getpid()
        return self._ep

    def fileno(self):
        """A descriptor readable exactly while a message or EOF is waiting
        (reading ends); the socket for a write-only end."""
        self._check_open()
        if self._in is None:
            return self._sockfd
        ep = self._poller()
        ring = self._in
        if not self._watched:
            ring.aux_store(WATCHED, 1)
            self._watched = True
            self._settle()
        return ep.fileno()

    # ------------------------------------------------------------ ending

    def shutdown_out(self):
        """Shut the outgoing ring down and wake its reader: it gets what is
        in the ring, then eof_exc. Only for a transport that knows no other
        copy of this end writes (the manager)."""
        out = self._out
        if out is None or self._closed:
            return
        try:
            out.shutdown()
            _ring_the_bell(self._out_bell)
        except (ValueError, OSError):
            pass

    def shutdown(self):
        """Shut both rings and the socket down: every waiter on either side
        wakes (ours see eof_exc too)."""
        if self._closed:
            return
        for r, b in ((self._in, self._in_bell), (self._out, self._out_bell)):
            if r is not None:
                try:
                    r.shutdown()
                    _ring_the_bell(b)
                except (ValueError, OSError):
                    pass
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self):
        """Close this process's copy of the end. The peer sees EOF once every
        copy is closed (by the socket)."""
        if self._closed:
            return
        self._closed = True
        for r in (self._in, self._out):
            if r is not None:
                try:
                    r.close()
                except Exception:
                    pass
        bells = [fd for fd in (self._in_bell, self._out_bell) if fd is not None]
        if self._sleepers and self._ep_pid == os.getpid() and self._in_bell is not None:
            # Threads of ours asleep on this end: wake them to notice, and
            # leave the bell and the epoll for the last of them to close
            # (closed now, their numbers could be reused under them).
            _ring_the_bell(self._in_bell)
            self._deferred = (self._in_bell,)
            bells.remove(self._in_bell)
        elif self._ep is not None:
            self._ep.close()
            self._ep = None
        for fd in bells:
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            self._sock.close()
        except OSError:
            pass

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass

    # ------------------------------------------------------------ travel

    def fds(self):
        """The descriptors that make this end, for sending it to another
        process: {"sock", "in", "in_bell", "out", "out_bell"} (absent when
        this end has no such direction)."""
        self._check_open()
        out = {"sock": self._sockfd}
        if self._in is not None:
            out["in"], out["in_bell"] = self._in.fd, self._in_bell
        if self._out is not None:
            out["out"], out["out_bell"] = self._out.fd, self._out_bell
        return out

    @classmethod
    def from_fds(cls, fds, **kwargs):
        """An end made of the descriptors `fds` (as fds() names them; "sock"
        may be a socket object), which it owns from now on (the descriptors
        are closed if this fails; a socket object is left to the caller)."""
        owned = dict(fds)
        in_ring = out_ring = None
        try:
            sock = owned.pop("sock")
            if isinstance(sock, int):
                sock = socket.socket(fileno=sock)
            if "in" in owned:
                in_ring = attach_ring(owned.pop("in"))
            if "out" in owned:
                out_ring = attach_ring(owned.pop("out"))
            return cls(sock, in_ring, out_ring, owned.pop("in_bell", None),
                       owned.pop("out_bell", None), **kwargs)
        except BaseException:
            for r in (in_ring, out_ring):
                if r is not None:
                    r.close()
            close_fds(owned.values())
            raise

    def __repr__(self):
        return f"<mpx ring channel {'closed' if self._closed else 'open'}>"


def close_fds(fds):
    """Close every descriptor of `fds`, ignoring those already closed."""
    for fd in fds:
        try:
            os.close(fd)
        except OSError:
            pass


def pair(duplex=True, capacity=DEFAULT_CAPACITY, **kwargs):
    """Two connected ends: duplex, or (read-only end, write-only end)."""
    made = []
    try:
        s1, s2 = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        made += [s1, s2]
        if duplex:
            ab, ba = new_ring(capacity), new_ring(capacity)
            made += [ab, ba]
            ab2, ba2 = attach_ring(os.dup(ab.fd)), attach_ring(os.dup(ba.fd))
            made += [ab2, ba2]
            bell_a, bell_b = new_bell(), new_bell()
            made += [bell_a, bell_b]
            bell_a2, bell_b2 = os.dup(bell_a), os.dup(bell_b)
            made += [bell_a2, bell_b2]
            a = Channel(s1, ba, ab, bell_a, bell_b, **kwargs)
            b = Channel(s2, ab2, ba2, bell_b2, bell_a2, **kwargs)
        else:
            ring = new_ring(capacity)
            made.append(ring)
            ring2 = attach_ring(os.dup(ring.fd))
            made.append(ring2)
            bell = new_bell()
            made.append(bell)
            bell2 = os.dup(bell)
            made.append(bell2)
            a = Channel(s1, ring, None, bell, None, **kwargs)
            b = Channel(s2, None, ring2, None, bell2, **kwargs)
        return a, b
    except BaseException:
        for obj in made:
            try:
                if isinstance(obj, int):
                    os.close(obj)
                else:
                    obj.close()
            except Exception:
                pass
        raise
