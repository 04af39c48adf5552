"""The ``shm`` backend: Queue, SimpleQueue and JoinableQueue on a shared-memory ring.

This module is the policy on top of the mechanism in ``mpx._ext.ring``: it
turns objects into the ring's byte "parts" (through the queue's serializer),
gives the objects the ``multiprocessing`` API, names and finds queues, and
carries a queue to other processes.

Where the queue's memory lives
    An anonymous queue is a memfd: it never appears in /dev/shm and the
    kernel frees it when the last process holding it closes it or exits.
    A named queue is the file /dev/shm/<name>, made with ``mode=`` (default
    0o600). It is created race-free: the creator builds the complete ring in
    an unnamed O_TMPFILE and then links it under the name, so an opener
    never sees half a queue and a creator that dies leaves nothing. Only
    ``unlink()`` (or ``python -m mpx rm``) removes the name.

Who may open a named queue (``mpx._trust``)
    What comes out of a queue is unpickled, so opening a queue is trusting
    whoever can put into it. An existing /dev/shm/<name> is opened only if
    it is a regular file (not a symbolic link) owned by this user or root
    and granting group/others nothing beyond ``mode=``; this is checked on
    the opened descriptor before anything of it is read or mapped, and a
    refusal is a PermissionError. ``mode=0o660``/``0o666`` (the creator's
    and the openers' alike) shares a queue with the group or everyone on
    purpose: it also accepts queues that other users made, i.e. it trusts
    them with running code in this process.

Truncation
    A process whose mapped ring is cut short by ``ftruncate`` dies of
    SIGBUS when it touches the lost pages. An anonymous queue's memfd is
    sealed against shrinking (F_SEAL_SHRINK, F_SEAL_SEAL), so nobody can.
    A file in /dev/shm cannot be sealed (the kernel allows seals on memfds
    only): attach refuses a file shorter than its header says, and the
    rules above keep other users' and others-writable files out, but the
    owner of a named queue (or root) truncating it while it is in use
    still kills the processes using it.

How a queue travels to another process
    Handed to a child at start under spawn/forkserver, the descriptor goes
    with the child (the stdlib's ``duplicate_for_child``). Sent later (through
    another queue, a pipe, to a Pool worker), the pickle carries the name of
    a named queue, and for every queue the (pid, fd) of the processes that
    hold it; the receiver reopens the memfd through /proc/<pid>/fd/<fd> of
    any that is still alive, and checks the ring's random id to be sure it
    found the same queue.

Messages in the ring: see ``codec`` (shared with the shm Pipe).
"""

import collections
import errno
import operator
import os
import queue as _queue
import stat
import sys
import weakref

from ... import _names
from ... import _serial
from ... import _trust
from . import codec as _ring_codec, watch as _ring_watch
from ... import _timeouts
from ..._aio import AsyncQueueMixin
from ..._exceptions import ShutDown
from . import DEFAULT_CAPACITY      # the ring size when none is given (also pipes')

__all__ = ["FAMILIES", "Queue", "SimpleQueue", "JoinableQueue", "ShmQueue",
           "ShmSimpleQueue", "ShmJoinableQueue", "ShutDown", "describe", "remove",
           "unavailable", "DEFAULT_CAPACITY"]

# Pool: mpx.pool runs its tasks and results over these queues (the family is
# built above the backends; there is no factory here).
FAMILIES = ("Queue", "SimpleQueue", "JoinableQueue", "Pool")

SHM_DIR = "/dev/shm"

_KIND_CODES = {"Queue": 1, "SimpleQueue": 2, "JoinableQueue": 3}
_KIND_NAMES = {v: k for k, v in _KIND_CODES.items()}

try:
    from ..._ext import ring as _ring
    from ..._ext.ring import (queue_get as _queue_get, queue_get_nowait as _queue_get_nowait,
                             queue_get_or as _queue_get_or,
                             queue_put as _queue_put, queue_put_nowait as _queue_put_nowait)
except ImportError as _e:          # pragma: no cover - the build failed
    _ring = None
    _IMPORT_ERROR = str(_e)
    _queue_get = _queue_get_nowait = _queue_get_or = _queue_put = _queue_put_nowait = None
# The queues' base: the rings their compiled methods use, in C fields.
_QueueRings = object if _ring is None else _ring.QueueRings



class QueueClosedError(ValueError, OSError):
    """A call on a queue this process closed: a ValueError, as mpx's closed
    objects raise, and an OSError, as the stdlib's queue raises from
    ``empty()`` once closed (its read end is a closed connection)."""


def unavailable():
    if sys.platform != "linux":
        return "needs Linux (memfd, futexes, robust process-shared mutexes)"
    if _ring is None:
        return f"the compiled ring failed to import: {_IMPORT_ERROR}"
    if not hasattr(os, "memfd_create"):
        return "needs os.memfd_create (Linux 3.17+)"
    return None


# --------------------------------------------------------------- helpers

def _check_name(name):
    if not isinstance(name, str):
        raise TypeError(f"a queue name must be a str, not {type(name).__name__}")
    bare = name[1:] if name.startswith("/") else name
    if not bare or bare in (".", "..") or "/" in bare or "\0" in bare or len(bare) > 250:
        raise ValueError(f"invalid queue name {name!r}: use 1-250 characters without '/' "
                         "(one leading '/' is allowed, as with shm_open)")
    try:
        # The name is a file name and goes into the record of named
        # objects: one that has no UTF-8 form (a lone surrogate) would be
        # linked in /dev/shm and then fail to be recorded.
        bare.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"invalid queue name {name!r}: it cannot be encoded as UTF-8 "
                         "(it holds a lone surrogate)") from None
    return bare


def _path(bare):
    return os.path.join(SHM_DIR, bare)


def _check_maxsize(maxsize):
    if isinstance(maxsize, bool):
        raise TypeError("maxsize must be an int, not bool")
    try:
        maxsize = operator.index(maxsize)
    except TypeError:
        raise TypeError(f"maxsize must be an int, not {type(maxsize).__name__}") from None
    # As in multiprocessing: maxsize <= 0 means no limit.
    if maxsize <= 0:
        return 0
    if maxsize > 0x7fffffff:
        raise ValueError(f"maxsize {maxsize} is too large (at most 2**31-1)")
    return maxsize


def _check_options(capacity, maxsize, inline_max, area, area_backlog, spin, mode):
    """Every option checked (errors name it) before anything is created:
    (layout for Ring.create, the ring's check_layout of it, mode)."""
    maxsize = _check_maxsize(maxsize)
    layout = {"inline_max": inline_max, "area": area, "area_backlog": area_backlog}
    checked = _ring.check_layout(DEFAULT_CAPACITY if capacity is None else capacity,
                                 maxsize, **layout)
    _ring.spin_ns(spin)
    mode = _trust.check_mode(mode, owner_rw=True)
    return layout, checked, mode


def _new_ring(fd, capacity, maxsize, kind, layout, mode):
    # Exactly `mode`, whatever the umask (a memfd has no path, but
    # /proc/PID/fd/N reaches it).
    os.fchmod(fd, mode)
    ring_id = int.from_bytes(os.urandom(8), "little") or 1
    return _ring.Ring.create(fd, capacity, maxsize=maxsize, kind=kind,
                             ring_id=ring_id, **layout)


def _create_anonymous(capacity, maxsize, kind, layout, mode):
    # Sealable: Ring.create seals it against shrinking (see "Truncation").
    fd = os.memfd_create("mpx-queue", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        return _new_ring(fd, capacity, maxsize, kind, layout, mode)
    except BaseException:
        os.close(fd)        # Ring.create leaves `fd` to us when it fails
        raise


def _check_file(fd, what, mode):
    """The trust rule (mpx._trust) on the opened descriptor `fd`, before
    anything of it is read: PermissionError for another user's file or one
    others may write beyond `mode`, RingError for what is not a file."""
    st = os.fstat(fd)
    _trust.check_owner(what, uids=(st.st_uid,), perm=st.st_mode, mode=mode)
    if not stat.S_ISREG(st.st_mode):
        raise _ring.RingError(f"{what} is not an mpx queue: not a regular file")
    return st


def _attach_fd(fd, expect_id=None, what=None, mode=None):
    """Attach the ring in `fd` (owned by the Ring on success, closed on
    failure). With `mode`, the file must pass the trust rule first."""
    try:
        if mode is not None:
            _check_file(fd, what, mode)
        elif not stat.S_ISREG(os.fstat(fd).st_mode):
            raise _ring.RingError("not an mpx queue: not a regular file")
        ring = _ring.Ring.attach(fd)
    except BaseException:
        os.close(fd)
        raise
    if expect_id is not None and ring.ring_id != expect_id:
        ring.close()
        return None
    return ring


# Opening an existing queue: never through a symbolic link, never blocking
# (whatever squats the name), never as a controlling terminal.
_OPEN_FLAGS = os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY


def _open_existing(bare, mode, expect_id=None):
    """Attach the existing /dev/shm/<bare> under the trust rule.
    FileNotFoundError if there is none; None if `expect_id` is given and
    the ring there is another one."""
    path = _path(bare)
    try:
        fd = os.open(path, _OPEN_FLAGS)
    except OSError as e:
        if e.errno == errno.ELOOP:
            _trust.refuse(f"the shm queue {path}",
                          "it is a symbolic link (an mpx queue never is; another user "
                          "may have planted it to redirect you)")
        raise
    try:
        return _attach_fd(fd, expect_id, f"the shm queue {path}", mode)
    except _ring.RingError as e:
        raise _ring.RingError(f"{path}: {e}") from None


def _open_named(bare, capacity, maxsize, kind, layout, mode, create=True):
    """Open /dev/shm/<bare>, creating it if absent: (ring, created)."""
    path = _path(bare)
    for _ in range(1000):
        try:
            return _open_existing(bare, mode), False
        except FileNotFoundError:
            if not create:
                raise FileNotFoundError(errno.ENOENT, f"no mpx queue named {bare!r}",
                                        path) from None
        ring = _create_linked(bare, path, capacity, maxsize, kind, layout, mode)
        if ring is not None:
            return ring, True
        # Someone else created it first: open theirs.
    raise OSError(f"could not create or open the queue {bare!r} (it keeps "
                  "appearing and disappearing)")


def _create_linked(bare, path, capacity, maxsize, kind, layout, mode):
    """Build a complete ring in an unnamed file, then give it the name in one
    step: openers never see a half-made queue, and a creator that dies before
    the link leaves nothing behind. None if the name was taken meanwhile."""
    try:
        fd = os.open(SHM_DIR, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise OSError(e.errno, f"cannot create a named queue in {SHM_DIR}: "
                                   f"{e.strerror}") from None
        return _create_renamed(bare, path, capacity, maxsize, kind, layout, mode)
    try:
        ring = _new_ring(fd, capacity, maxsize, kind, layout, mode)
    except BaseException:
        os.close(fd)
        raise
    try:
        try:
            _ring.flink(ring.fd, path)
        except FileExistsError:
            raise
        except OSError:
            # linkat(AT_EMPTY_PATH) needs CAP_DAC_READ_SEARCH before Linux
            # 6.10; the /proc link does the same for everyone (but not on
            # every mount setup).
            try:
                os.link(f"/proc/self/fd/{ring.fd}", path, follow_symlinks=True)
            except FileExistsError:
                raise
            except OSError:
                ring.close()
                return _create_renamed(bare, path, capacity, maxsize, kind, layout, mode)
    except FileExistsError:
        ring.close()
        return None
    except BaseException:
        ring.close()
        raise
    return ring


_INIT_PREFIX = ".mpx-init."


def _create_renamed(bare, path, capacity, maxsize, kind, layout, mode):
    """Fallback where an unnamed file cannot be linked: build the ring under
    a hidden temporary name, then link it into place. The temporary name is
    always removed; one left by a creator that was killed is swept by the
    next creator (its pid is in the name)."""
    _sweep_init_files()
    tmp = os.path.join(SHM_DIR, f"{_INIT_PREFIX}{os.getpid()}.{os.urandom(6).hex()}")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                 0o600)
    try:
        try:
            ring = _new_ring(fd, capacity, maxsize, kind, layout, mode)
        except BaseException:
            os.close(fd)
            raise
        try:
            os.link(tmp, path)
        except FileExistsError:
            ring.close()
            return None
        except BaseException:
            ring.close()
            raise
        return ring
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def _sweep_init_files():
    try:
        names = os.listdir(SHM_DIR)
    except OSError:
        return
    me = os.geteuid()
    for n in names:
        if not n.startswith(_INIT_PREFIX):
            continue
        full = os.path.join(SHM_DIR, n)
        try:
            pid = int(n[len(_INIT_PREFIX):].split(".")[0])
            # Only our own leftovers: another user's file of that name is
            # theirs to sweep, whatever its name says.
            st = os.lstat(full)
            if st.st_uid != me or not stat.S_ISREG(st.st_mode):
                continue
            os.kill(pid, 0)
        except ProcessLookupError:
            try:
                os.unlink(full)
            except OSError:
                pass
        except (ValueError, OSError):
            pass


def _reopen(handle, name, ring_id, mode):
    """Find the ring a pickled queue refers to, in this process. Whatever is
    found by name or through /proc must pass the trust rule for `mode` (the
    queue's own) before it is attached, and carry the queue's random id."""
    how = handle[0]
    if how == "dup":
        # Handed over at process start: the descriptor came with us, and is
        # ours now (so is the bell's, see watch.py). (spawn passes them
        # inheritable; a program this process runs must not get them.)
        fd = handle[1].detach()
        os.set_inheritable(fd, False)
        bell = handle[2].detach() if len(handle) > 2 and handle[2] is not None else None
        if bell is not None:
            os.set_inheritable(bell, False)
        try:
            ring = _attach_fd(fd, ring_id)
        except BaseException:
            if bell is not None:
                os.close(bell)
            raise
        if ring is not None:
            if bell is not None:
                _ring_watch.arm_queue(ring, bell)
            else:
                _ring_watch.note_bellless(ring)
            return ring
        if bell is not None:
            os.close(bell)
        raise _ring.RingError("the descriptor passed at start is not the expected queue")
    ring = _reopen_elsewhere(handle, name, ring_id, mode)
    # Reopened by name or through /proc: the bell cannot come along.
    _ring_watch.note_bellless(ring)
    return ring


def _reopen_elsewhere(handle, name, ring_id, mode):
    _, holders = handle
    if name is not None:
        try:
            ring = _open_existing(name, mode, ring_id)
        except (OSError, _ring.RingError):
            ring = None          # gone, replaced, or not to be trusted
        if ring is not None:
            return ring
    for pid, fd in holders:
        # Any live process that holds the queue lets us reopen it.
        what = f"the queue held by pid {pid} as descriptor {fd}"
        try:
            fd = os.open(f"/proc/{int(pid)}/fd/{int(fd)}",
                         os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY)
        except (OSError, TypeError, ValueError):
            continue
        try:
            ring = _attach_fd(fd, ring_id, what, mode)
        except (OSError, _ring.RingError):
            continue
        if ring is not None:
            return ring
    what = f"the queue {name!r}" if name else "an anonymous queue"
    raise FileNotFoundError(
        errno.ENOENT, f"cannot reopen {what}: no process that held it is alive any "
        "more (an anonymous queue lives only as long as some process holds it)")


def _rebuild(cls, name, handle, ring_id, serializer, kind, options):
    ring = _reopen(handle, name, ring_id, options.get("mode", 0o600))
    obj = cls.__new__(cls)
    obj._setup(ring, name, False, serializer, options)
    return obj


# Every live queue of this process, so that a forked child notes itself as
# holding them (a handle pickled later may then be reopened through it).
_live = weakref.WeakSet()


def _after_fork_in_child():
    for q in list(_live):
        ring = q._ring
        if ring is not None:
            try:
                ring.register_holder()
            except ValueError:
                pass
        watch, q._watch = q._watch, None
        if watch is not None:
            # The parent's watcher thread is not in this process.
            watch.forget()
            if ring is not None:
                q._bind()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# ------------------------------------------------------------- the queues

class _RingQueue(_QueueRings, AsyncQueueMixin):
    """What every shm queue shares: the ring, serialization, names, pickling."""

    _family = "Queue"
    _ring = None
    _used_when_closed = True    # set by close(): had anything been put?

    def __init__(self, ctx=None, maxsize=0, *, serializer=None, capacity=None, name=None,
                 inline_max=None, spin=None, area=None, area_backlog=None, mode=0o600):
        serializer = _serial.get_serializer(serializer)
        # Everything is checked before anything is created or recorded.
        layout, checked, mode = _check_options(capacity, maxsize, inline_max, area,
                                               area_backlog, spin, mode)
        maxsize = checked["maxsize"]
        cap = checked["capacity"]
        kind = _KIND_CODES[self._family]
        bare = None if name is None else _check_name(name)
        if bare is None:
            ring = _create_anonymous(cap, maxsize, kind, layout, mode)
            created = True
            self._give_bell(ring)
        else:
            ring, created = _open_named(bare, cap, maxsize, kind, layout, mode)
            try:
                if not created:
                    self._check_same(ring, bare, self._family,
                                     None if capacity is None else cap, maxsize)
            except BaseException:
                ring.close()
                raise
            if created:
                self._give_bell(ring)
                _names.record(self._family, "shm", bare, module=__name__,
                              capacity=ring.capacity, maxsize=ring.maxsize)
            else:
                _ring_watch.note_bellless(ring)
        self._setup(ring, bare, created, serializer, {"spin": spin, "mode": mode})

    @staticmethod
    def _give_bell(ring):
        try:
            bell = _ring_watch.new_bell()
        except BaseException:
            ring.close()
            raise
        _ring_watch.arm_queue(ring, bell)

    @staticmethod
    def _check_same(ring, bare, family, capacity, maxsize):
        # Queue and SimpleQueue share a ring format; a JoinableQueue's puts
        # and gets also count tasks, which the others would not do.
        joinable = _KIND_CODES["JoinableQueue"]
        if (ring.kind == joinable) != (family == "JoinableQueue"):
            raise ValueError(f"the shm queue {bare!r} exists as a "
                             f"{_KIND_NAMES.get(ring.kind, '?')}; it cannot be opened "
                             f"as a {family}")
        if maxsize and ring.maxsize != maxsize:
            raise ValueError(f"the queue {bare!r} exists with maxsize={ring.maxsize}, "
                             f"not {maxsize}")
        if capacity is not None:          # (as check_layout rounded it)
            if ring.capacity != capacity:
                raise ValueError(f"the queue {bare!r} exists with capacity="
                                 f"{ring.capacity}, not {capacity}")

    def _setup(self, ring, bare, created, serializer, options):
        ring.empty_exc = _queue.Empty
        ring.full_exc = _queue.Full
        ring.shutdown_exc = ShutDown
        spin = options.get("spin")
        if spin is not None:
            ring.spin_max_ns = _ring.spin_ns(spin)
        self._ring = ring
        self._name = bare
        self._created = created
        self._options = options
        self._opid = os.getpid()
        st = os.fstat(ring.fd)
        self._ident = (st.st_dev, st.st_ino)
        self._ring_id = ring.ring_id
        self._stash = collections.deque()   # taken by get_many, not yet returned
        self._watch = None                  # this process's fileno() watcher
        self._set_serializer(serializer)
        _live.add(self)

    def _set_serializer(self, serializer):
        self._serializer = serializer
        codec = _ring_codec.Codec(serializer)
        self._decode = codec.decode
        # The compiled put/get run the common case through these hooks.
        for name, value in codec.ring_hooks.items():
            setattr(self._ring, name, value)
        self._bind()

    # put, get, put_nowait and get_nowait are compiled functions of the ring
    # extension used as this class's methods (as the shm Pipe's send/recv):
    # the common case runs without a Python frame, and being methods of the
    # queue, `q.put.__self__` is the queue and `q.put` pickles as "this
    # queue's put" (Process(target=q.put) under spawn). They use the rings
    # named in _put_ring/_get_ring (C fields of the base class, QueueRings,
    # so no attribute lookup per call); None there sends the call to
    # _put/_get below, the general path: after close(), while get_many has
    # left items in the stash, and while a fileno() watcher must be kept
    # exact.
    put = _queue_put
    get = _queue_get
    put_nowait = _queue_put_nowait
    get_nowait = _queue_get_nowait

    def _bind(self):
        ring = self._ring
        self._put_ring = ring
        self._get_ring = None if (self._stash or self._exact_watch()) else ring

    def _unbind(self):
        self._put_ring = None
        self._get_ring = None

    # ------------------------------------------- waiting with other objects

    def _watched(self):
        watch = self._watch
        return watch is not None and watch.pid == os.getpid()

    def _exact_watch(self):
        # fileno() was handed out (_reader): every take settles the bell.
        return self._watched() and self.__dict__.get("_exact", False)

    @property
    def _reader(self):
        """What code written for a stdlib queue uses of its read end:
        ``fileno()`` (readable while an item is there or the queue is shut
        down, for ``multiprocessing.connection.wait``), ``recv()`` (get) and
        ``poll(timeout)``. concurrent.futures' ProcessPoolExecutor waits on
        its SimpleQueue's this way."""
        reader = self.__dict__.get("_reader_end")
        if reader is None:
            reader = self.__dict__["_reader_end"] = _Reader(self)
        return reader

    @property
    def _writer(self):
        """The write end's face, for code written for a stdlib queue:
        ``send(obj)`` (put) and ``closed``."""
        return _Writer(self)

    # (the awaitable face, see mpx._aio) A coroutine waits only through the
    # loop's registration, so the bell need be exact only when a wait begins:
    # settle it then, and let takes in between keep the compiled fast path
    # (settling on every take costs ~2 us here).
    def _aio_fd(self):
        bell = self._bell(exact=False)
        self._watch.settle()
        return bell

    def _aio_closed(self):
        return self._ring is None

    # (the compiled functions themselves: no Python frame per awaited call)
    _aio_get = _queue_get_nowait
    _aio_get_or = _queue_get_or
    _aio_put = _queue_put_nowait

    def _aio_get_in_place(self, seconds):
        return self.get(True, seconds)

    def _fileno(self):
        return self._bell(exact=True)

    def _bell(self, exact):
        ring = self._live_ring()
        if not self._watched():
            watch = _ring_watch.Watch(ring, _ring.Ring.attach)
            self._watch = watch
            self.__dict__["_exact"] = False
            weakref.finalize(self, watch.stop)
        if exact and not self.__dict__["_exact"]:
            self.__dict__["_exact"] = True
            self._get_ring = None        # takes settle the watch (see _get)
        return self._watch.bell

    def _poll(self, timeout):
        ring = self._live_ring()
        if self._stash:
            return True
        ready = ring.wait_readable(_timeouts.seconds(timeout))
        if not ready and self._watched():
            self._watch.settle()
        return ready

    # --------------------------------------------------------- pickling

    def __reduce__(self):
        ring = self._live_ring()
        from multiprocessing import context
        popen = context.get_spawning_popen()
        if popen is not None:
            bell = ring.bell_fd
            handle = ("dup", popen.DupFd(popen.duplicate_for_child(ring.fd)),
                      popen.DupFd(popen.duplicate_for_child(bell)) if bell >= 0 else None)
        else:
            ring.register_holder()        # this process may be a forked child
            holders = ring.holders()
            me = (os.getpid(), ring.fd)
            handle = ("proc", [me] + [h for h in holders if h != me])
        return (_rebuild, (type(self), self._name, handle, self._ring_id,
                           self._serializer, self._family, self._options))

    # ---------------------------------------------------------- helpers

    def _live_ring(self):
        ring = self._ring
        if ring is None:
            raise QueueClosedError(f"{self!r} is closed")
        return ring

    # ------------------------------------------------------- the API

    def _put(self, obj, block, timeout):
        # put() when _put_ring is None: a closed queue raises ValueError.
        self._live_ring().put_obj(obj, block, timeout)

    def _get(self, block, timeout):
        # get() when _get_ring is None: the stash first, then the ring; a
        # watched queue keeps its fileno() exact after the take.
        ring = self._live_ring()
        if self._stash:
            item = self._unstash()
            if not self._stash:
                self._bind()
            return item
        if not self._exact_watch():
            return ring.get_obj(block, timeout)
        watch = self._watch
        try:
            return ring.get_obj(block, timeout)
        finally:
            watch.settle()

    def put_many(self, items, block=True, timeout=None):
        """Put every item of `items`, in order, with one synchronisation (lock
        round and at most one wake-up) for as many as fit at once.

        All items are serialized first: one that cannot be raises and nothing
        is put. Blocks like put() until all are in; if room does not appear
        in time, raises queue.Full with ``put_count`` set to how many went in
        (those stay in the queue). Raises ShutDown likewise after shutdown().
        """
        ring = self._live_ring()
        if not isinstance(items, (list, tuple)):
            items = list(items)
        n = ring.put_many_obj(items, block, timeout)
        if n < len(items):
            err = ShutDown() if ring.is_shutdown else _queue.Full()
            err.put_count = n
            raise err

    def get_many(self, max_items=None, block=True, timeout=None):
        """Remove and return a list of up to `max_items` items (None: all that
        are there) for one synchronisation. Waits like get() until at least
        one item is there; raises queue.Empty if none comes in time."""
        ring = self._live_ring()
        if max_items is not None:
            # An int (TypeError for 1.5, as list slicing says); past 2**63 is
            # "all there are" anyway.
            max_items = min(operator.index(max_items), 1 << 63)
        if self._stash:
            out = []
            while self._stash and (max_items is None or len(out) < max_items):
                out.append(self._unstash())
            if not self._stash:
                self._bind()
            return out
        msgs = ring.get_many(max_items, block, timeout)
        if self._exact_watch():
            self._watch.settle()
        out = []
        try:
            ring.decode_into(msgs, out)
        except BaseException:
            # Like get(), the bad item is consumed and its error raised;
            # nothing else is lost: the items before and after it are
            # returned by this process's next get()/get_many().
            self._stash.extend((True, o) for o in out)
            self._stash.extend((False, m) for m in msgs[len(out) + 1:])
            if self._stash:
                self._get_ring = None    # get() must look in the stash first
            raise
        return out

    def _unstash(self):
        ready, value = self._stash.popleft()
        return value if ready else self._decode(value)

    def qsize(self):
        """Number of items in the queue (exact; counts what other processes
        put and got up to now)."""
        return self._live_ring().qsize() + len(self._stash)

    def empty(self):
        """True when no item waits now (exact, as :meth:`qsize`)."""
        if self._ring is None and not self._used_when_closed:
            # As the stdlib's (Python 3.13 tests it): a queue closed before
            # anything was put in it is still empty.
            return True
        return self.qsize() == 0

    def full(self):
        """True when a put would wait now: `maxsize` items are queued, or
        the ring has no room for a small message."""
        return self._live_ring().is_full()

    def shutdown(self, immediate=False):
        """Shut the queue down for every process (``queue.Queue.shutdown`` of
        Python 3.13): put() raises ShutDown from now on, blocked puts and gets
        wake; get() returns what is left, then raises ShutDown. With
        `immediate`, what is left is discarded at once, and counted as done
        for join()."""
        ring = self._live_ring()
        ring.shutdown()
        if ring.bell_fd >= 0:
            # A shut-down queue is readable to wait() (see watch.py).
            _ring_watch.ring_the_bell(ring.bell_fd)
        if immediate:
            self._stash.clear()
            n = ring.drain()
            ring.ack(n, True)

    @property
    def is_shutdown(self):
        """True once any process called :meth:`shutdown` on the queue."""
        return self._live_ring().is_shutdown

    def close(self):
        """Release this process's hold on the queue (other processes keep
        using it; the memory goes when no process holds it). Later calls on
        this object raise ValueError."""
        ring, self._ring = self._ring, None
        if ring is not None:
            self._used_when_closed = ring.info()["put_count"] != 0 or bool(self._stash)
        self._unbind()
        watch, self._watch = self._watch, None
        if watch is not None:
            watch.stop()
        if ring is not None:
            ring.close()

    def join_thread(self):
        """For the multiprocessing API: there is no feeder thread to join
        (every put() is in shared memory when it returns); like the stdlib's,
        it requires a closed queue."""
        if self._ring is not None:
            raise AssertionError(f"Queue {self!r} not closed")

    def cancel_join_thread(self):
        """For the multiprocessing API: nothing to cancel (no feeder thread,
        so exiting never waits for buffered items or loses them)."""

    # ------------------------------------------------------- names

    @property
    def name(self):
        """The queue's name (None for an anonymous queue)."""
        return self._name

    @property
    def capacity(self):
        """Size of the ring in bytes."""
        return self._live_ring().capacity

    @property
    def maxsize(self):
        """The most items the queue holds (0: as many as the ring has room for)."""
        return self._live_ring().maxsize

    def unlink(self):
        """Remove the queue's name (processes that have it open keep using
        it). Does nothing for an anonymous queue, or if the name is gone or
        now belongs to another queue."""
        if self._name is None:
            return
        path = _path(self._name)
        try:
            st = os.stat(path, follow_symlinks=False)
        except FileNotFoundError:
            _names.forget(self._family, "shm", self._name)
            return
        if (st.st_dev, st.st_ino) == self._ident:
            try:
                os.unlink(path)
            except FileNotFoundError:
                pass
            _forget_all(self._name)

    def __repr__(self):
        what = f"name={self._name!r}" if self._name else "anonymous"
        state = "" if self._ring is not None else " closed"
        return f"<mpx.shm.{self._family} {what}{state}>"


class ShmQueue(_RingQueue):
    """``multiprocessing.Queue`` on the shm ring (no feeder thread)."""

    _family = "Queue"


class ShmJoinableQueue(ShmQueue):
    """``multiprocessing.JoinableQueue`` on the shm ring. The count of
    unfinished tasks is the ring's count of messages put minus task_done()
    calls, so a process killed at any point never makes it drift."""

    _family = "JoinableQueue"

    def task_done(self):
        """Mark one item as done; ValueError if called more times than items
        were put."""
        if not self._live_ring().ack(1):
            raise ValueError("task_done() called too many times")

    def join(self, timeout=None):
        """Block until every item put has been marked done. (`timeout`, an
        mpx addition: returns False if it passes first, else True.)"""
        return self._live_ring().wait_acked(timeout)


class ShmSimpleQueue(_RingQueue):
    """``multiprocessing.SimpleQueue`` on the shm ring."""

    _family = "SimpleQueue"

    def empty(self):
        """True when no item waits now (exact, as :meth:`qsize`). Once
        closed, it raises, used or not (as the stdlib's SimpleQueue)."""
        return self.qsize() == 0

    def __init__(self, ctx=None, *, serializer=None, capacity=None, name=None,
                 inline_max=None, spin=None, area=None, area_backlog=None, mode=0o600):
        super().__init__(ctx, 0, serializer=serializer, capacity=capacity, name=name,
                         inline_max=inline_max, spin=spin, area=area,
                         area_backlog=area_backlog, mode=mode)



class _Reader:
    """An shm queue's ``_reader`` (see _RingQueue._reader)."""

    __slots__ = ("_queue",)

    def __init__(self, queue):
        self._queue = queue

    def fileno(self):
        """A descriptor readable while the queue holds an item or is shut
        down (see mpx.backends.shm.watch)."""
        return self._queue._fileno()

    def recv(self):
        """The queue's get()."""
        return self._queue.get()

    def poll(self, timeout=0.0):
        """Whether get() would not wait, waiting up to `timeout` seconds
        (None: for ever) for that."""
        return self._queue._poll(timeout)

    @property
    def closed(self):
        """True once the queue was closed in this process."""
        return self._queue._ring is None

    def __repr__(self):
        return f"<reader of {self._queue!r}>"


class _Writer:
    """An shm queue's ``_writer`` (see _RingQueue._writer)."""

    __slots__ = ("_queue",)

    def __init__(self, queue):
        self._queue = queue

    def send(self, obj):
        """The queue's put()."""
        self._queue.put(obj)

    @property
    def closed(self):
        """True once the queue was closed in this process."""
        return self._queue._ring is None

    def __repr__(self):
        return f"<writer of {self._queue!r}>"


def _forget_all(bare):
    for family in FAMILIES:
        _names.forget(family, "shm", bare)


# ---------------------------------------------------------- factories

def Queue(ctx, maxsize=0, *, serializer=None, capacity=None, name=None, **kwargs):
    """A Queue on the shared-memory ring.

    capacity: ring size in bytes (rounded up to a power of two; default
    4 MiB). Messages bigger than half the ring go to an overflow area of
    `area` bytes (default max(16 x capacity, 256 MiB), given pages only when
    big messages need them and kept for reuse; `area_backlog` bytes of them,
    default 4 x capacity, may wait there before put() waits too), and beyond
    that to extents of their own: any size goes through.
    name: open the named queue /dev/shm/<name>, creating it if it does not
    exist. mode: the permissions a named queue is created with (default
    0o600), and what an existing one may grant: one owned by another user,
    or granting group/others more than `mode`, is refused (PermissionError)
    unless `mode` grants group/others access, which trusts those users with
    what this process unpickles (see mpx._trust). spin: seconds a waiter
    spins before sleeping (default 50 us; 0 never spins; at most 10).
    """
    return ShmQueue(ctx, maxsize, serializer=serializer, capacity=capacity, name=name,
                    **kwargs)


def SimpleQueue(ctx, *, serializer=None, capacity=None, name=None, **kwargs):
    """A SimpleQueue on the shared-memory ring (see Queue for the options)."""
    return ShmSimpleQueue(ctx, serializer=serializer, capacity=capacity, name=name,
                          **kwargs)


def JoinableQueue(ctx, maxsize=0, *, serializer=None, capacity=None, name=None, **kwargs):
    """A JoinableQueue on the shared-memory ring (see Queue for the options)."""
    return ShmJoinableQueue(ctx, maxsize, serializer=serializer, capacity=capacity,
                            name=name, **kwargs)


# ------------------------------------------- the CLI's view of named queues

def _entry_name(entry):
    """The queue name of a record (untrusted input: checked like any name)."""
    name = entry.get("name") if isinstance(entry, dict) else None
    return _check_name(name)


# Looking at a queue for ls/rm: read-only, never through a symbolic link,
# never blocking on whatever squats the name.
_PEEK_FLAGS = os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY


def describe(entry):
    """For ``python -m mpx ls``: None if the named queue is gone, else a
    dict. Reads a copy of the header (os.pread of a read-only descriptor):
    nothing is mapped, nothing is opened for writing."""
    try:
        bare = _entry_name(entry)
    except (TypeError, ValueError) as e:
        return {"size": "?", "error": f"unusable record: {e}"}
    try:
        fd = os.open(_path(bare), _PEEK_FLAGS)
    except FileNotFoundError:
        return None
    except OSError as e:
        why = "a symbolic link, not a queue" if e.errno == errno.ELOOP else e.strerror
        return {"size": "?", "error": why}
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return {"size": "?", "error": "not a regular file"}
        data = os.pread(fd, _ring.HEADER_SIZE, 0)
    except OSError as e:
        return {"size": "?", "error": e.strerror}
    finally:
        os.close(fd)
    try:
        info = _ring.header_info(data)
    except _ring.RingError as e:
        return {"size": "?", "error": str(e)}
    return {"size": f"{info['messages']} msgs",
            "capacity": info["capacity"], "maxsize": info["maxsize"],
            "kind": _KIND_NAMES.get(info["kind"], "?"),
            "shutdown": info["shutdown"]}


def remove(entry):
    """For ``python -m mpx rm``: unlink the named queue and forget it.

    The record only says which name to look at; the file there is removed
    only if it is a regular file (not a link), owned by this user (root
    removes only root's), and starts with the ring's magic number:
    PermissionError or ValueError naming the file otherwise."""
    bare = _entry_name(entry)
    path = _path(bare)
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        _forget_all(bare)
        return
    if not stat.S_ISREG(st.st_mode):
        raise ValueError(f"{path} is not an mpx queue (not a regular file); not removed")
    me = os.geteuid()
    if st.st_uid != me:
        raise PermissionError(errno.EPERM, f"not removing {path}: it is owned by uid "
                              f"{st.st_uid}, not by this user (uid {me})")
    fd = os.open(path, _PEEK_FLAGS)
    try:
        now = os.fstat(fd)
        magic = os.pread(fd, 8, 0)
    finally:
        os.close(fd)
    if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
        raise PermissionError(errno.EPERM, f"not removing {path}: it was replaced "
                              "while being checked")
    if len(magic) != 8 or int.from_bytes(magic, "little") != _ring.MAGIC:
        raise ValueError(f"{path} is not an mpx queue (it does not start with the ring's "
                         "magic number); not removed")
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    _forget_all(bare)
