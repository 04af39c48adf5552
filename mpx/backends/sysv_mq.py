"""Backend "sysv", queues: System V message queues (``msgget``, via sysv_ipc).

Families: Queue, SimpleQueue, JoinableQueue, PriorityQueue.

Names and keys
--------------
SysV objects have 32-bit keys, not names. A queue named N (``"jobs"`` or
``"/jobs"``; the rules are the POSIX backend's) uses the key

    key = first 4 bytes, big-endian, of BLAKE2b("mpx-sysv:" + N), top bit cleared
          (0, which is IPC_PRIVATE, becomes 1)

for three objects: the message queue, a 4 KiB shared-memory *tag* and, for a
bounded queue, a semaphore (the three kinds of SysV object have separate key
spaces). The tag holds the name the queue was created with, so a different
name that hashes to the same key is refused with an error naming both, and a
foreign object on the key is refused as "not an mpx queue". Anonymous
queues use a random free key.

Limits
------
- A kernel message holds at most ``MSGMAX`` bytes (``/proc/sys/kernel/msgmax``,
  8 KiB by default) and a queue at most ``msg_qbytes`` bytes (``MSGMNB``,
  16 KiB by default; ``capacity=`` asks for more, which needs
  CAP_SYS_RESOURCE beyond MSGMNB). ``msgsize`` (default and ceiling:
  ``min(MSGMAX, capacity)``) is the largest message sent inline; larger ones
  travel through a side segment in /dev/shm.
- ``maxsize`` counts messages exactly, like the stdlib, although the kernel
  only limits bytes: a bounded put holds a SysV semaphore (with SEM_UNDO, so
  a process killed while holding it releases it) while it checks the count
  and sends. ``maxsize=0`` (the default) needs no lock; ``put`` then blocks
  only when the kernel's byte limit is reached.
- PriorityQueue priorities run from 0 to 32767, higher first, FIFO among
  equals, exactly like the POSIX backend: priority p is sent as message type
  ``32768 - p`` and received with ``msgtyp = -32768``, which takes the oldest
  message of the lowest type.

Waiting without a timed receive
-------------------------------
SysV has no ``msgrcv`` with a timeout. ``get()``/``put()`` that wait for ever
block in the kernel (GIL released, EINTR retried after the signal handlers
ran). A wait with a timeout sleeps on a futex in the tag: a waiter registers
in a waiter count, re-checks the queue and sleeps on a sequence word; a put
(or get) that finds the opposite count non-zero bumps the word and wakes the
sleepers. The check is one shared-memory load per operation, no system call.
Because the kernel serializes msgsnd/msgrcv on the queue's lock, a put whose
load misses a waiter's registration happened before that waiter's re-check,
which then finds the message: no lost wake-ups between mpx processes. Each
sleep is still capped at 50 ms so that a process killed between its send and
its bump, or a sender that is not mpx, delays a waiter by at most that:
no polling loop, no core burnt.
"""

import errno
import hashlib
import os
import time

import sysv_ipc

from .. import _names
from ._mq_common import (
    MIN_MSGSIZE, OPEN_WAIT, Empty, Full, FLAG_ANONYMOUS, KIND_OF_FAMILY, TAG_SIZE,
    JoinableMixin, MessageQueueBase, NotAnMpxQueue, PriorityMixin, SideStore, Tag,
    check_compatible, check_limit, count_sides, forget_all, half_created, ls_columns,
    normalize_name, open_queue, queue_args, read_int, settled_header, side_prefix,
    sweep_prefix, SHM_DIR, PRIORITY_MAX, OFF_DATA_WAITERS, OFF_SPACE_WAITERS)
from ._mq_common import PRIORITY_MIN  # noqa: F401  (documented here too)

FAMILIES = ("Queue", "SimpleQueue", "JoinableQueue", "PriorityQueue")

BACKEND = "sysv"
TYPE_BASE = PRIORITY_MAX + 1    # priority p travels as message type TYPE_BASE - p
FIFO_TYPE = 1
WAIT_CAP = 0.05             # longest single futex sleep of a timed wait (see above)
DATA_WAITERS = OFF_DATA_WAITERS // 4      # indexes into Tag.words; the hot paths
SPACE_WAITERS = OFF_SPACE_WAITERS // 4    # spell them as literals (a global costs 20 ns)
assert (DATA_WAITERS, SPACE_WAITERS) == (5, 7)

_Error = sysv_ipc.Error
_BusyError = sysv_ipc.BusyError


def unavailable():
    if not os.path.exists("/proc/sysvipc/msg"):
        return "this kernel has no System V IPC (no /proc/sysvipc/msg)"
    if not os.access(SHM_DIR, os.W_OK | os.X_OK):
        return f"{SHM_DIR} is not a writable directory (large messages travel there)"
    return None


def system_limits():
    """(MSGMAX, MSGMNB): bytes per message, default bytes per queue."""
    return (read_int("/proc/sys/kernel/msgmax", 8192),
            read_int("/proc/sys/kernel/msgmnb", 16384))


def key_for_name(name):
    """The SysV key of queue `name` (see the module docstring)."""
    body = normalize_name(name)
    digest = hashlib.blake2b(b"mpx-sysv:" + body.encode("utf-8"), digest_size=4).digest()
    return int.from_bytes(digest, "big") & 0x7FFFFFFF or 1


def _is_eintr(e):
    # sysv_ipc reports EINTR with its base class and no errno.
    return type(e) is _Error


def _permission_error(body, key, what):
    return PermissionError(
        errno.EACCES, f"permission denied opening mpx sysv queue {body!r} ({what} with key "
                      f"{key:#x} belongs to another user, or its mode forbids this user)")


def _removed_error(body):
    return OSError(errno.EIDRM, f"mpx sysv queue {body!r} was removed (unlinked) while "
                                "this process was using it")


# ---------------------------------------------------------------------------
# Opening and creating


class _Res:
    """What one process holds of one queue (the finalizer's view)."""

    __slots__ = ("body", "key", "mq", "shm", "tag", "sem")

    def __init__(self, body, key, mq, shm, tag, sem):
        self.body, self.key, self.mq, self.shm, self.tag, self.sem = body, key, mq, shm, tag, sem


def _drop_tag(shm, tag):
    try:
        if tag is not None:
            tag.release()
        shm.detach()
    except (BufferError, ValueError, _Error):
        pass


def _create(shm, key, family, body, anonymous, maxsize, msgsize, capacity, mode):
    """We hold a fresh tag segment on `key`: make the queue behind it."""
    tag = Tag(shm)
    tag.init(KIND_OF_FAMILY[family], maxsize, msgsize, FLAG_ANONYMOUS if anonymous else 0, body)
    _names.record(family, BACKEND, body, module=__name__, key=key, maxsize=maxsize,
                  msgsize=msgsize, anonymous=anonymous)
    sem = mq = None
    try:
        if maxsize:
            try:
                sem = sysv_ipc.Semaphore(key, sysv_ipc.IPC_CREX, mode, 1)
            except sysv_ipc.ExistentialError:
                raise NotAnMpxQueue(
                    f"SysV key {key:#x} (of mpx sysv queue {body!r}) already has a semaphore "
                    "that is not mpx's (left by a crash, or another program's); remove it "
                    f"(`ipcrm -S {key:#x}`) or choose another name") from None
        try:
            mq = sysv_ipc.MessageQueue(key, sysv_ipc.IPC_CREX, mode, msgsize)
        except sysv_ipc.ExistentialError:
            raise NotAnMpxQueue(
                f"SysV key {key:#x} (of mpx sysv queue {body!r}) already has a message queue "
                "that is not mpx's (left by a crash, or another program's); remove it "
                f"(`ipcrm -Q {key:#x}`) or choose another name") from None
        except OSError as e:
            raise OSError(e.errno or errno.ENOSPC, (
                f"cannot create SysV message queue for {body!r}: {e} (the machine-wide "
                f"limit is /proc/sys/kernel/msgmni = {read_int('/proc/sys/kernel/msgmni', '?')} "
                "queues)")) from None
        if capacity is not None and capacity != mq.max_size:
            try:
                mq.max_size = capacity
            except sysv_ipc.PermissionsError:
                msgmnb = system_limits()[1]
                raise ValueError(
                    f"cannot give mpx sysv queue {body!r} capacity={capacity} bytes: more "
                    f"than /proc/sys/kernel/msgmnb ({msgmnb}) needs CAP_SYS_RESOURCE; raise "
                    f"the default as root with `sysctl kernel.msgmnb={capacity}` or ask for "
                    "less") from None
    except BaseException:
        for obj in (mq, sem):
            if obj is not None:
                try:
                    obj.remove()
                except _Error:
                    pass
        tag.release()
        try:
            shm.remove()
        except _Error:
            pass
        _drop_tag(shm, None)
        forget_all(BACKEND, body)
        raise
    tag.publish()
    return _Res(body, key, mq, shm, tag, sem)


def _attach_existing(family, body, key, maxsize, msgsize, deadline):
    """The queue's resources; None when it is being removed (retry); raises
    FileNotFoundError (with .filename set) when there is no tag."""
    try:
        shm = sysv_ipc.SharedMemory(key)
    except sysv_ipc.ExistentialError:
        raise FileNotFoundError(errno.ENOENT, "no tag", f"key {key:#x}") from None
    except sysv_ipc.PermissionsError:
        raise _permission_error(body, key, "its tag segment") from None
    if shm.size < TAG_SIZE:
        _drop_tag(shm, None)
        raise NotAnMpxQueue(f"SysV key {key:#x} (of mpx sysv queue {body!r}) holds a shared-"
                            "memory segment that is not an mpx queue tag; choose another name")
    tag = Tag(shm)
    try:
        header = settled_header(
            tag, deadline, f"SysV key {key:#x} (of mpx sysv queue {body!r}) holds a segment "
            "that is not an mpx queue tag",
            lambda: half_created(BACKEND, family, body, __name__, key=key))
        if header is None:
            _drop_tag(shm, tag)
            return None
        check_compatible(header, body, BACKEND, family, maxsize, msgsize)
        try:
            mq = sysv_ipc.MessageQueue(key, 0, 0o600, header["msgsize"])
            sem = sysv_ipc.Semaphore(key) if header["maxsize"] else None
        except sysv_ipc.ExistentialError:
            raise OSError(errno.ENOENT, (
                f"mpx sysv queue {body!r} is damaged: its tag exists but its kernel queue or "
                "semaphore does not (removed outside mpx?); remove what is left with "
                f"`python -m mpx rm {body}`")) from None
        except sysv_ipc.PermissionsError:
            raise _permission_error(body, key, "the queue") from None
    except BaseException:
        _drop_tag(shm, tag)
        raise
    return _Res(body, key, mq, shm, tag, sem)


def _open(family, body, key, anonymous, maxsize, msgsize, capacity, mode, create):
    """(resources, created) for the queue `body` on `key` (None: pick a free
    random key and create)."""
    msgmax, msgmnb = system_limits()
    if create:
        room = capacity if capacity is not None else msgmnb
        ceiling = min(msgmax, room)
        if msgsize is not None and msgsize > ceiling:
            if msgsize > msgmax:
                raise ValueError(
                    f"msgsize={msgsize} is more than /proc/sys/kernel/msgmax ({msgmax}), the "
                    "largest SysV message; raise it as root with `sysctl kernel.msgmax="
                    f"{msgsize}`, or use a smaller msgsize (larger messages still go through, "
                    "by a side segment)")
            raise ValueError(f"msgsize={msgsize} is more than the queue's capacity of {room} "
                             "bytes; ask for a larger capacity= or a smaller msgsize")
        create_msgsize = msgsize if msgsize is not None else ceiling

    def try_create():
        while True:
            k = key if key is not None else (int.from_bytes(os.urandom(4), "big") & 0x7FFFFFFF or 1)
            try:
                shm = sysv_ipc.SharedMemory(k, sysv_ipc.IPC_CREX, mode, TAG_SIZE, b"\0")
            except sysv_ipc.ExistentialError:
                if key is None:
                    continue            # that random key is taken: draw another
                return None
            except sysv_ipc.PermissionsError:
                raise _permission_error(body, k, "a segment") from None
            except OSError as e:
                raise OSError(e.errno, f"cannot create the tag segment of mpx sysv queue "
                                       f"{body!r}: {e}") from None
            return _create(shm, k, family, body, anonymous, maxsize, create_msgsize,
                           capacity, mode)

    return open_queue(BACKEND, body, anonymous, try_create if create else None,
                      lambda deadline: _attach_existing(family, body, key, maxsize, msgsize,
                                                        deadline),
                      OPEN_WAIT)


def _remove(body, key):
    """Remove queue `body` on `key` (if the tag there is really its own): mark
    the tag dead, remove queue and semaphore, sweep side segments, remove the
    tag, forget the record."""
    try:
        shm = sysv_ipc.SharedMemory(key)
    except sysv_ipc.ExistentialError:
        forget_all(BACKEND, body)
        return
    except sysv_ipc.PermissionsError:
        raise _permission_error(body, key, "its tag segment") from None
    tag = None
    try:
        if shm.size < TAG_SIZE:
            raise NotAnMpxQueue(f"SysV key {key:#x} holds a segment that is not an mpx tag")
        tag = Tag(shm)
        if tag.magic() == bytes(8):
            # Its creator died before writing anything: only the tag exists.
            shm.remove()
            forget_all(BACKEND, body)
            return
        header = tag.header()
        if header["name"] != body:
            # The key is another queue's now; ours is long gone.
            forget_all(BACKEND, body)
            return
        tag.mark_dead()
        try:
            sysv_ipc.MessageQueue(key).remove()
        except sysv_ipc.ExistentialError:
            pass
        except sysv_ipc.PermissionsError:
            raise _permission_error(body, key, "the queue") from None
        if header["maxsize"]:
            try:
                sysv_ipc.Semaphore(key).remove()
            except sysv_ipc.ExistentialError:
                pass
        sweep_prefix(side_prefix(BACKEND, body))
        try:
            shm.remove()
        except sysv_ipc.ExistentialError:
            pass
        except sysv_ipc.PermissionsError:
            raise _permission_error(body, key, "its tag segment") from None
    finally:
        _drop_tag(shm, tag)
    forget_all(BACKEND, body)


# ---------------------------------------------------------------------------
# The queue classes


class SysvQueue(MessageQueueBase):
    """A FIFO queue on a SysV message queue (``multiprocessing.Queue`` API)."""

    _backend = BACKEND
    _family = "Queue"
    _recv_type = 0              # FIFO: the oldest message, whatever its type

    def __init__(self, res, serializer, created, anonymous, header):
        self._mq = res.mq
        self._msend = res.mq.send
        self._mrecv = res.mq.receive
        self._sem = res.sem
        if res.sem is not None:
            res.sem.undo = True     # the kernel releases the lock of a killed holder
        tag = res.tag
        self._data_seq, self._data_waiters = tag.data_seq, tag.data_waiters
        self._space_seq, self._space_waiters = tag.space_seq, tag.space_waiters
        self._words = tag.words
        self._bounded = header["maxsize"]
        self._setup(res, serializer, res.body, anonymous, created, tag,
                    SideStore(BACKEND, res.body, res.mq.mode & 0o777),
                    header["msgsize"], header["maxsize"])

    @classmethod
    def _attach(cls, state, serializer):
        body, key, anonymous = state
        res, created = _open(cls._family, body, key, anonymous, 0, None, None, 0o600, False)
        return cls(res, serializer, created, anonymous, res.tag.header())

    def _state(self):
        return (self.name, self._res.key, self.anonymous)

    def _mtype(self, prio):
        return FIFO_TYPE

    def _prio(self, mtype):
        return 0

    # -- fast path: unbounded, wait for ever, a message that fits -----------

    def put(self, obj, block=True, timeout=None):
        if block and timeout is None and not self._bounded:   # (bounded: a lock)
            frame, suffix = self._encode(obj)
            if suffix is None:
                try:
                    self._msend(frame)          # block=True, type=1 (FIFO_TYPE)
                except _Error as e:
                    self._retry(e, self._msend, frame)
                if self._words[5]:                 # DATA_WAITERS (literal: hot path)
                    self._ring(self._data_seq)
                return
            self._check_open()
            return self._send_frame(frame, suffix, 0, None)
        self._put(obj, 0, block, timeout)

    def _retry(self, e, call, *args):
        """The blocking ``call(*args)`` raised `e`: call it again after EINTR
        (the signal handlers have run by now), translate anything else."""
        if not _is_eintr(e):
            raise self._translate(e) from None
        return self._blocking(call, *args)

    def _blocking(self, call, *args):
        """``call(*args)``, a blocking sysv_ipc call, repeated while EINTR
        interrupts it; any other error translated."""
        while True:
            try:
                return call(*args)
            except _Error as e:
                if not _is_eintr(e):
                    raise self._translate(e) from None

    # PriorityQueue overrides get(); this fast path is the FIFO families'.
    def get(self, block=True, timeout=None):
        if block and timeout is None:
            try:
                msg = self._mrecv()[0]          # block=True, type=0: the oldest
            except _Error as e:
                msg = self._retry(e, self._mrecv)[0]
            if self._words[7]:                     # SPACE_WAITERS
                self._ring(self._space_seq)
            return self._decode(msg)
        return super().get(block, timeout)

    # -- general path ----------------------------------------------------

    def _translate(self, e):
        if isinstance(e, sysv_ipc.ExistentialError):
            return _removed_error(self.name)
        if isinstance(e, sysv_ipc.PermissionsError):
            return _permission_error(self.name, self._res.key, "the queue")
        return e

    @staticmethod
    def _ring(seq):
        seq.add(1)
        seq.wake()

    def _wake_getters(self):
        """After a put: wake the getters sleeping in a timed wait, if any."""
        if self._data_waiters.load():
            self._ring(self._data_seq)

    def _wake_putters(self):
        """After a get: wake the putters sleeping in a timed wait, if any."""
        if self._space_waiters.load():
            self._ring(self._space_seq)

    def _transient(self, e):
        """After a non-blocking call raised sysv_ipc error `e`: return if
        trying again later makes sense (no room or no message, or EINTR);
        raise the translated error otherwise."""
        if not (isinstance(e, _BusyError) or _is_eintr(e)):
            raise self._translate(e) from None

    def _wait(self, attempt, waiters, seq, timeout, exc):
        """Repeat ``attempt()`` until it returns a result, sleeping between
        tries (see the module docstring): register in `waiters`, re-try, and
        if it still fails sleep on `seq` until woken, the deadline, or
        WAIT_CAP. Raises `exc` once `timeout` seconds (None: never) passed."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            if deadline is not None and time.monotonic() >= deadline:
                raise exc
            waiters.add(1)
            try:
                expected = seq.load()
                result = attempt()
                if result is not None:
                    return result
                left = WAIT_CAP if deadline is None else min(deadline - time.monotonic(),
                                                             WAIT_CAP)
                if left > 0:
                    seq.wait(expected, timeout=left)
            finally:
                waiters.add(0xFFFFFFFF)

    def _try_send(self, frame, mtype):
        """One attempt without waiting: True if sent, None if no room."""
        try:
            if self._bounded:
                sem = self._sem
                self._blocking(sem.acquire)
                try:
                    if self._mq.current_messages >= self._bounded:
                        return None
                    self._mq.send(frame, False, mtype)
                finally:
                    sem.release()
            else:
                self._mq.send(frame, False, mtype)
        except _Error as e:
            self._transient(e)
            return None
        self._wake_getters()
        return True

    def _send(self, frame, prio, timeout):
        mtype = self._mtype(prio)
        if timeout is None and not self._bounded:
            self._blocking(self._mq.send, frame, True, mtype)
            self._wake_getters()
            return
        if self._try_send(frame, mtype):
            return
        if timeout == 0:
            raise Full
        self._wait(lambda: self._try_send(frame, mtype), self._space_waiters, self._space_seq,
                   timeout, Full)

    def _try_recv(self):
        """One attempt without waiting: (msg, priority), or None if empty."""
        try:
            msg, mtype = self._mq.receive(False, self._recv_type)
        except _Error as e:
            self._transient(e)
            return None
        self._wake_putters()
        return msg, self._prio(mtype)

    def _recv(self, timeout):
        if timeout is None:
            msg, mtype = self._blocking(self._mq.receive, True, self._recv_type)
            self._wake_putters()
            return msg, self._prio(mtype)
        got = self._try_recv()
        if got is not None:
            return got
        if timeout == 0:
            raise Empty
        return self._wait(self._try_recv, self._data_waiters, self._data_seq, timeout, Empty)

    def _qsize(self):
        try:
            return self._mq.current_messages
        except _Error as e:
            raise self._translate(e) from None

    def _full(self):
        return bool(self._bounded) and self._qsize() >= self._bounded

    @staticmethod
    def _close_resources(res):
        res.mq = res.sem = None         # SysV queues have no descriptor to close
        if res.tag is not None:
            _drop_tag(res.shm, res.tag)
            res.tag = None

    @staticmethod
    def _unlink_resources(res):
        _remove(res.body, res.key)


class SysvSimpleQueue(SysvQueue):
    """``multiprocessing.SimpleQueue`` API (and the rest of the Queue API)."""

    _family = "SimpleQueue"


class SysvJoinableQueue(JoinableMixin, SysvQueue):
    """Queue plus task_done()/join() that work across unrelated processes."""

    _family = "JoinableQueue"


class SysvPriorityQueue(PriorityMixin, SysvQueue):
    """put(item, priority=0, ...): the highest priority comes out first."""

    _family = "PriorityQueue"
    _recv_type = -TYPE_BASE     # the oldest message of the lowest type = highest priority

    def _mtype(self, prio):
        return TYPE_BASE - prio

    def _prio(self, mtype):
        return TYPE_BASE - mtype


_CLASSES = {"Queue": SysvQueue, "SimpleQueue": SysvSimpleQueue,
            "JoinableQueue": SysvJoinableQueue, "PriorityQueue": SysvPriorityQueue}


def _make(family, maxsize, serializer, name, mode, msgsize, capacity, create):
    capacity = check_limit("capacity", capacity)
    if capacity is not None and capacity < MIN_MSGSIZE:
        raise ValueError(f"capacity must be at least {MIN_MSGSIZE} bytes, not {capacity}")
    body, anonymous, maxsize, msgsize, mode = queue_args(name, maxsize, msgsize, mode)
    key = None if anonymous else key_for_name(body)
    res, created = _open(family, body, key, anonymous, maxsize, msgsize, capacity, mode, create)
    return _CLASSES[family](res, serializer, created, anonymous, res.tag.header())


# ---------------------------------------------------------------------------
# The registry's factories


def Queue(ctx, maxsize=0, *, serializer, name=None, mode=0o600, msgsize=None, capacity=None,
          create=True):
    """A FIFO queue on a SysV message queue; see the module docstring."""
    return _make("Queue", maxsize, serializer, name, mode, msgsize, capacity, create)


def SimpleQueue(ctx, *, serializer, name=None, mode=0o600, msgsize=None, capacity=None,
                create=True):
    return _make("SimpleQueue", 0, serializer, name, mode, msgsize, capacity, create)


def JoinableQueue(ctx, maxsize=0, *, serializer, name=None, mode=0o600, msgsize=None,
                  capacity=None, create=True):
    return _make("JoinableQueue", maxsize, serializer, name, mode, msgsize, capacity, create)


def PriorityQueue(ctx, maxsize=0, *, serializer, name=None, mode=0o600, msgsize=None,
                  capacity=None, create=True):
    """A priority queue: ``put(item, priority=0)`` with priorities 0..32767,
    highest first, FIFO among equals; ``get_with_priority()``."""
    return _make("PriorityQueue", maxsize, serializer, name, mode, msgsize, capacity, create)


# ---------------------------------------------------------------------------
# `python -m mpx ls/rm`


def _entry_key(entry):
    key = (entry.get("meta") or {}).get("key")
    if isinstance(key, int) and not isinstance(key, bool) and 0 < key <= 0x7FFFFFFF:
        return key
    return key_for_name(entry["name"])


def describe(entry):
    """What `mpx ls` shows of a recorded sysv queue, or None if it is gone."""
    body, key = normalize_name(entry["name"]), _entry_key(entry)
    try:
        shm = sysv_ipc.SharedMemory(key)
    except sysv_ipc.ExistentialError:
        return None
    except sysv_ipc.PermissionsError:
        return {"size": "?", "key": f"{key:#x}", "note": "permission denied"}
    tag = None
    try:
        if shm.size < TAG_SIZE:
            return None             # the key holds something else now
        tag = Tag(shm)
        try:
            header = tag.header()
        except NotAnMpxQueue:
            return None
        if header["name"] != body:
            return None             # the key is another queue's now
        info = {"key": f"{key:#x}", **ls_columns(header)}
    finally:
        _drop_tag(shm, tag)
    try:
        mq = sysv_ipc.MessageQueue(key)
        cur, qbytes = mq.current_messages, mq.max_size
        info.update(messages=cur, capacity_bytes=qbytes,
                    size=f"{cur} msgs" + (f"/{info['maxsize']}" if info["maxsize"] else ""))
    except sysv_ipc.ExistentialError:
        info["size"] = "(no kernel queue)"
    except sysv_ipc.PermissionsError:
        info["size"] = "?"
    sides = count_sides(BACKEND, body)
    if sides:
        info["side_segments"] = sides
    return info


def remove(entry):
    """Remove a recorded sysv queue (for `mpx rm`), and forget it."""
    _remove(normalize_name(entry["name"]), _entry_key(entry))
