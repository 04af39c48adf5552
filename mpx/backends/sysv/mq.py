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
SysV has no ``msgrcv`` with a timeout, and nothing can end a ``msgrcv``
blocked in the kernel from another thread of the same process (close()
must). So ``get()``/``put()`` never block in the kernel: they try without
waiting (one system call when there is a message, or room) and otherwise
sleep on a futex in the tag: a waiter registers in a waiter count, re-checks
the queue and sleeps on a sequence word; a put (or get) that finds the
opposite count non-zero bumps the word and wakes the sleepers. The check is
one shared-memory load per operation, no system call. Because the kernel
serializes msgsnd/msgrcv on the queue's lock, a put whose load misses a
waiter's registration happened before that waiter's re-check, which then
finds the message: no lost wake-ups between mpx processes. Each sleep is
still capped at 50 ms so that a process killed between its send and its
bump, a sender that is not mpx, or a close() in another thread delays a
waiter by at most that: no polling loop, no core burnt. EINTR is retried
after the signal handlers ran; an exception they raise gets through.

Trust
-----
``mode`` (default 0o600) is what new objects are created with (the owner
keeps read and write) and what an opener accepts (``mpx._trust``): the tag
segment, the message queue and the semaphore on the key must each have
owner *and* creator uid equal to this user or root, and grant group and
others nothing beyond ``mode``; otherwise PermissionError, before anything
is read from them (the tag is checked before it is even attached). A
``mode`` that grants group or others access opts in to queues other users
made.
"""

import errno
import hashlib
import os
import time

import sysv_ipc

from ... import _names, _trust
from .._common.mq import (
    MAGIC, MIN_MSGSIZE, NAME_MAX_BYTES, OFF_NAME, OPEN_WAIT, Empty, Full, FLAG_ANONYMOUS,
    KIND_OF_FAMILY, TAG_SIZE, CorruptTag, JoinableMixin, MessageQueueBase, NotAnMpxQueue,
    PriorityMixin, SideStore, Tag, check_compatible, check_header, check_limit, count_sides,
    entry_body, forget_all, half_created, ls_columns, normalize_name, open_queue, queue_args,
    read_int, settled_header, finish_removal, sweep_sides, SHM_DIR, PRIORITY_MAX,
    OFF_DATA_WAITERS, OFF_SPACE_WAITERS)
from .._common.mq import PRIORITY_MIN  # noqa: F401  (documented here too)

FAMILIES = ("Queue", "SimpleQueue", "JoinableQueue", "PriorityQueue")

BACKEND = "sysv"
TYPE_BASE = PRIORITY_MAX + 1    # priority p travels as message type TYPE_BASE - p
FIFO_TYPE = 1
WAIT_CAP = 0.05             # longest single futex sleep of a timed wait (see above)
SHM_DEST = 0o1000           # in a segment's mode: removed, alive while still attached
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


def _what(body):
    return f"mpx sysv queue {body!r}"


def _proc_row(kind, key):
    """The row of /proc/sysvipc/`kind` (shm, msg or sem) for `key`, as a dict
    of its columns (strings), or None when no object has that key. This is
    how a tag is checked before it is attached: sysv_ipc attaches a segment
    as soon as it opens it by key."""
    with open(f"/proc/sysvipc/{kind}") as f:
        columns = f.readline().split()
        for line in f:
            fields = line.split()
            if fields and int(fields[0]) == key:
                return dict(zip(columns, fields))
    return None


def _trust_ipc(what, uid, cuid, perm, mode):
    """The trust rule on a SysV object: its owner and its creator must pass
    (an owner may hand a SysV object to any uid with IPC_SET; the creator
    stays)."""
    _trust.check_owner(what, uids=(uid, cuid), perm=perm, mode=mode)


def _attach_tag(body, key, mode, readonly=False):
    """The tag segment on `key`, attached only after the trust rule admitted
    it (checked in /proc, then again on the attached segment, whose id is
    the one checked). FileNotFoundError (filename set) when there is none;
    NotAnMpxQueue when the segment is too small to be a tag."""
    what = f"{_what(body)} (its tag segment, key {key:#x})"
    row = _proc_row("shm", key)
    if row is None:
        raise FileNotFoundError(errno.ENOENT, "no tag", f"key {key:#x}")
    _trust_ipc(what, int(row["uid"]), int(row["cuid"]), int(row["perms"], 8), mode)
    if int(row["size"]) < TAG_SIZE:
        raise NotAnMpxQueue(f"SysV key {key:#x} (of {_what(body)}) holds a shared-memory "
                            "segment that is not an mpx queue tag; choose another name")
    try:
        shm = sysv_ipc.attach(int(row["shmid"]), flags=sysv_ipc.SHM_RDONLY if readonly else 0)
    except sysv_ipc.ExistentialError:
        raise FileNotFoundError(errno.ENOENT, "no tag", f"key {key:#x}") from None
    except sysv_ipc.PermissionsError:
        raise _permission_error(body, key, "its tag segment") from None
    try:
        _trust_ipc(what, shm.uid, shm.cuid, shm.mode, mode)
        if shm.size < TAG_SIZE:
            raise NotAnMpxQueue(f"SysV key {key:#x} holds a segment that is not an mpx tag")
    except BaseException:
        _drop_tag(shm, None)
        raise
    return shm


def _trust_kernel(body, key, mq, sem, mode):
    """The trust rule on the queue and the semaphore, before either is used."""
    _trust_ipc(f"{_what(body)} (its message queue, key {key:#x})", mq.uid, mq.cuid,
               mq.mode, mode)
    if sem is not None:
        _trust_ipc(f"{_what(body)} (its semaphore, key {key:#x})", sem.uid, sem.cuid,
                   sem.mode, mode)


# ---------------------------------------------------------------------------
# Opening and creating


class _Res:
    """What one process holds of one queue (the finalizer's view); `mode` is
    the opener's ``mode=``."""

    __slots__ = ("body", "key", "mq", "shm", "tag", "sem", "mode")

    def __init__(self, body, key, mq, shm, tag, sem, mode):
        self.body, self.key, self.mq, self.shm, self.tag, self.sem = body, key, mq, shm, tag, sem
        self.mode = mode


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
    return _Res(body, key, mq, shm, tag, sem, mode)


def _check_kernel(header, body, key, mq):
    """The tag's msgsize against the queue's byte limit: a receive buffer of
    msgsize bytes is allocated for every get, so a corrupt tag must not set
    it (nor can a message be larger than the queue)."""
    if header["msgsize"] > mq.max_size:
        raise CorruptTag(f"{_what(body)} (key {key:#x}): its tag is corrupt: msgsize "
                         f"{header['msgsize']} is more than the queue's {mq.max_size} bytes")


def _attach_existing(family, body, key, maxsize, msgsize, deadline, mode):
    """The queue's resources; None when it is being removed (retry); raises
    FileNotFoundError (with .filename set) when there is no tag."""
    shm = _attach_tag(body, key, mode)
    tag = Tag(shm)
    try:
        header = settled_header(
            tag, deadline, f"SysV key {key:#x} (of mpx sysv queue {body!r}) holds a segment "
            "that is not an mpx queue tag",
            lambda: half_created(BACKEND, family, body, __name__, key=key), _what(body))
        if header is None:
            _drop_tag(shm, tag)
            return None
        check_compatible(header, body, BACKEND, family, maxsize, msgsize)
        try:
            mq = sysv_ipc.MessageQueue(key)     # (no receive buffer yet: msgsize unchecked)
            sem = sysv_ipc.Semaphore(key) if header["maxsize"] else None
        except sysv_ipc.ExistentialError:
            raise OSError(errno.ENOENT, (
                f"mpx sysv queue {body!r} is damaged: its tag exists but its kernel queue or "
                "semaphore does not (removed outside mpx?); remove what is left with "
                f"`python -m mpx rm {body}`")) from None
        except sysv_ipc.PermissionsError:
            raise _permission_error(body, key, "the queue") from None
        _trust_kernel(body, key, mq, sem, mode)
        _check_kernel(header, body, key, mq)
        # Again, now with the receive buffer's size (checked above), and
        # only if it is still the queue that was checked.
        checked, mq = mq, sysv_ipc.MessageQueue(key, 0, 0o600, header["msgsize"])
        if mq.id != checked.id:
            raise _removed_error(body)
    except BaseException:
        _drop_tag(shm, tag)
        raise
    return _Res(body, key, mq, shm, tag, sem, mode)


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
                                                        deadline, mode),
                      OPEN_WAIT)


def _unlink_held(res):
    """unlink() of a queue this process holds: removed by the ids it holds
    (no descriptor needed, and never a queue made since on the same key),
    once /proc shows that its tag is still the one on the key."""
    body, key = res.body, res.key
    try:
        removed = bool(res.shm.mode & SHM_DEST)     # (IPC_STAT by id: no descriptor)
    except sysv_ipc.ExistentialError:
        removed = True
    if removed:
        # Removed already; the record is this queue's unless the key has
        # another queue now.
        try:
            if _proc_row("shm", key) is None:
                forget_all(BACKEND, body)
        except OSError:
            pass
        return
    if res.tag is not None:
        res.tag.mark_dead()             # openers back off until the tag is gone
    _remove_ids(body, key, res.mq, res.sem, res.shm, None)


def _remove_ids(body, key, mq, sem, shm, uid):
    """Remove the queue, semaphore and tag segment held as `mq`, `sem`, `shm`
    (any may be None), the side segments (`uid`'s only, unless None); then
    forget the record (kept if the side segments could not be listed)."""
    for obj, what in ((mq, "the queue"), (sem, "its semaphore")):
        if obj is not None:
            try:
                obj.remove()
            except sysv_ipc.ExistentialError:
                pass
            except sysv_ipc.PermissionsError:
                raise _permission_error(body, key, what) from None
    swept = sweep_sides(BACKEND, body, uid)
    if shm is not None:
        try:
            shm.remove()
        except sysv_ipc.ExistentialError:
            pass
        except sysv_ipc.PermissionsError:
            raise _permission_error(body, key, "its tag segment") from None
    finish_removal(BACKEND, body, _what(body), swept)


def _other_queues(header, key):
    """True when a well-formed tag on `key` that names another queue may
    really be that queue's: an anonymous one (random key) or one whose name
    hashes to this key. Otherwise the name in it is damage."""
    return bool(header["anonymous"]) or key_for_name(header["name"]) == key


def _remove_checked(body, key):
    """Remove queue `body` on `key` for `python -m mpx rm`, trusting only
    what the objects on the key say: the tag segment's owner and creator are
    the caller's euid, it carries mpx's magic number (or is all zeros: a
    creator that died before writing it), and so are the queue's and the
    semaphore's. A corrupt tag (magic right, a field wrong) is removed too."""
    me = os.geteuid()

    def not_mine(what, uid, cuid):
        return PermissionError(errno.EPERM, (
            f"permission denied removing {_what(body)}: {what} (key {key:#x}) belongs to "
            f"uid {uid} (creator uid {cuid}); `python -m mpx rm` removes only the caller's "
            f"own objects (uid {me})"))

    def kernel_object(cls, what, needed):
        """The queue or semaphore on the key, if any, once checked to be the
        caller's. One of another user's is refused where the queue needs it
        (`needed`), left alone where it does not (a semaphore on the key of
        an unbounded queue is not the queue's)."""
        try:
            obj = cls(key)
        except sysv_ipc.ExistentialError:
            return None
        if (obj.uid, obj.cuid) != (me, me):
            if needed:
                raise not_mine(what, obj.uid, obj.cuid)
            return None
        return obj

    row = _proc_row("shm", key)
    if row is None:
        if _proc_row("msg", key) is not None or _proc_row("sem", key) is not None:
            raise NotAnMpxQueue(
                f"not removing the SysV objects on key {key:#x} (of {_what(body)}): there "
                "is no mpx tag segment on the key, so nothing shows they are mpx's (remove "
                f"them with `ipcrm -Q {key:#x}` / `ipcrm -S {key:#x}` if they are yours)")
        _remove_ids(body, key, None, None, None, me)    # only leftovers: segments, record
        return
    if (int(row["uid"]), int(row["cuid"])) != (me, me):
        raise not_mine("its tag segment", int(row["uid"]), int(row["cuid"]))
    if int(row["size"]) < TAG_SIZE:
        raise NotAnMpxQueue(f"not removing the SysV segment on key {key:#x}: it is too small "
                            "to be an mpx queue tag")
    try:
        shm = sysv_ipc.attach(int(row["shmid"]))
    except sysv_ipc.ExistentialError:
        forget_all(BACKEND, body)       # removed meanwhile
        return
    tag = None
    try:
        if (shm.uid, shm.cuid) != (me, me):
            raise not_mine("its tag segment", shm.uid, shm.cuid)
        tag = Tag(shm)
        magic = tag.magic()
        # All zeros: its creator died before writing the header (and so
        # before making a queue; one of the caller's on the key goes too).
        half = magic == bytes(len(MAGIC))
        if not half and magic != MAGIC:
            raise NotAnMpxQueue(f"not removing the SysV segment on key {key:#x}: it does "
                                "not start with mpx's magic number, so it is not an mpx tag")
        header = None
        if not half:
            try:
                header = tag.header()
            except NotAnMpxQueue:
                pass                    # corrupt, or another layout version: still mpx's
            if header is not None and header["name"] != body and _other_queues(header, key):
                forget_all(BACKEND, body)   # the key is another queue's; ours is long gone
                return
        mq = kernel_object(sysv_ipc.MessageQueue, "its message queue", not half)
        sem = kernel_object(sysv_ipc.Semaphore, "its semaphore",
                            not half and (header is None or bool(header["maxsize"])))
        if not half:
            tag.mark_dead()
        _remove_ids(body, key, mq, sem, shm, me)
    finally:
        _drop_tag(shm, tag)


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
                    SideStore(BACKEND, res.body, res.mq.mode & 0o777, res.mode),
                    header["msgsize"], header["maxsize"])

    @classmethod
    def _attach(cls, state, serializer):
        body, key, anonymous, mode = state
        res, created = _open(cls._family, body, key, anonymous, 0, None, None, mode, False)
        return cls(res, serializer, created, anonymous, res.tag.header())

    def _state(self):
        # The opener's mode travels too: a child accepts what its parent did.
        return (self.name, self._res.key, self.anonymous, self._res.mode)

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
                    self._msend(frame, False)   # no wait, type=1 (FIFO_TYPE)
                except _Error as e:
                    self._transient(e)          # no room (or EINTR): wait below
                    self._check_open()
                    return self._send(frame, 0, None)
                except OSError as e:
                    raise self._translate(e) from None
                if self._words[5]:                 # DATA_WAITERS (literal: hot path)
                    self._ring(self._data_seq)
                return
            if self._closed:
                self._side.discard(suffix)      # (made before the check: the fast path's)
                self._check_open()
            return self._send_frame(frame, suffix, 0, None)
        self._put(obj, 0, block, timeout)

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
                msg = self._mrecv(False)[0]     # no wait, type=0: the oldest
            except _Error as e:
                self._transient(e)              # empty (or EINTR): wait below
                self._check_open()
                msg = self._recv(None)[0]
            else:
                if self._words[7]:                 # SPACE_WAITERS
                    self._ring(self._space_seq)
            return self._decode(msg)
        return super().get(block, timeout)

    # -- general path ----------------------------------------------------

    # Fast paths of the base class's methods, which say what they do.
    put.__doc__ = MessageQueueBase.put.__doc__
    get.__doc__ = MessageQueueBase.get.__doc__

    def _translate(self, e):
        if isinstance(e, sysv_ipc.ExistentialError):
            return _removed_error(self.name)
        if isinstance(e, sysv_ipc.PermissionsError):
            return _permission_error(self.name, self._res.key, "the queue")
        if type(e) is OSError and e.errno in (errno.EINVAL, errno.EIDRM):
            # msgsnd on a removed queue's id says EINVAL (sysv_ipc passes it
            # on as a plain OSError); that is "removed" if the id is gone.
            try:
                self._mq.current_messages
            except sysv_ipc.ExistentialError:
                return _removed_error(self.name)
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
            if self._closed:
                raise self._closed_while_waiting()
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
        except OSError as e:
            raise self._translate(e) from None
        self._wake_getters()
        return True

    def _send(self, frame, prio, timeout):
        mtype = self._mtype(prio)
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
        _unlink_held(res)


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
    """The key of record `entry`: its meta's (anonymous queues have random
    keys) when that is a valid key, else the name's. Untrusted either way:
    describe/remove check what is on the key before acting on it."""
    meta = entry.get("meta") if isinstance(entry, dict) else None
    key = meta.get("key") if isinstance(meta, dict) else None
    if isinstance(key, int) and not isinstance(key, bool) and 0 < key <= 0x7FFFFFFF:
        return key
    return key_for_name(entry_body(entry))


def describe(entry):
    """What `mpx ls` shows of a recorded sysv queue, or None if it is gone.
    The tag segment is looked up in /proc and attached read-only (a SysV
    segment cannot shrink under a mapping); a corrupt tag is shown with its
    error, not hidden."""
    body, key = entry_body(entry), _entry_key(entry)
    row = _proc_row("shm", key)
    if row is None or int(row["size"]) < TAG_SIZE:
        sides = count_sides(BACKEND, body)
        if row is None and sides:   # removed, but large-message segments are left
            return {"state": "removed", "size": "(no kernel queue)", "key": f"{key:#x}",
                    "side_segments": sides}
        return None                 # gone, or the key holds something else now
    try:
        shm = sysv_ipc.attach(int(row["shmid"]), flags=sysv_ipc.SHM_RDONLY)
    except sysv_ipc.ExistentialError:
        return None
    except sysv_ipc.PermissionsError:
        return {"size": "?", "key": f"{key:#x}", "note": "permission denied"}
    try:
        data = shm.read(OFF_NAME + NAME_MAX_BYTES, 0)
    finally:
        _drop_tag(shm, None)
    info = {"key": f"{key:#x}"}
    if data[:len(MAGIC)] == bytes(len(MAGIC)):
        info["state"] = "half-created"
        header = None
    else:
        try:
            header = check_header(data)
        except NotAnMpxQueue as e:
            if data[:len(MAGIC)] != MAGIC:
                return None         # not mpx's: the key holds something else now
            header = None
            info.update(state="corrupt", error=str(e))
    if header is not None:
        if header["name"] != body:
            if _other_queues(header, key):
                return None         # the key is another queue's now
            info.update(state="corrupt",
                        error=f"its tag is corrupt: it names the queue {header['name']!r}")
            header = None
        else:
            info.update(ls_columns(header))
    try:
        mq = sysv_ipc.MessageQueue(key)
        cur, qbytes = mq.current_messages, mq.max_size
        bound = header["maxsize"] if header is not None else 0
        info.update(messages=cur, capacity_bytes=qbytes,
                    size=f"{cur} msgs" + (f"/{bound}" if bound else ""))
        if header is not None:
            try:
                _check_kernel(header, body, key, mq)
            except CorruptTag as e:
                info.update(state="corrupt", error=str(e))
    except sysv_ipc.ExistentialError:
        info["size"] = "(no kernel queue)"
    except sysv_ipc.PermissionsError:
        info["size"] = "?"
    sides = count_sides(BACKEND, body)
    if sides:
        info["side_segments"] = sides
    return info


def remove(entry):
    """Remove a recorded sysv queue (for `mpx rm`), and forget it: only the
    caller's own, after checking the objects on the key (``_remove_checked``)."""
    _remove_checked(entry_body(entry), _entry_key(entry))
