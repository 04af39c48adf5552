"""What the POSIX and SysV message-queue backends share.

Not a backend (the registry never loads it): the queue API both backends
present, the message framing, the "tag" segment every queue carries and the
side segments that carry messages too large for a kernel queue. The backend
modules (``posix.mq``, ``sysv.mq``) add only what differs: how a kernel queue
is created, opened, sent to, received from and removed.

Framing
-------
The first byte of every kernel message says what it holds:

- ``0x80``: the whole message is the serialized object. Every pickle stream
  of protocol 2 or later starts with the PROTO opcode 0x80, so what the
  default serializer produces travels as it is: no copy to add a header on
  put, none to strip it on get.
- ``0x00``: the object is ``msg[1:]`` (a serializer whose output starts with
  another byte; a text serializer's ``str`` as UTF-8, see
  ``_serial.wire_bytes``).
- ``0x01``: ``msg[1:]`` is the ASCII suffix ``PID.N`` of a side segment
  ``/dev/shm/mpx-mqside.<TAG16>.PID.N`` that holds the serialized object. It
  is used when the object does not fit in one kernel message (POSIX
  ``mq_msgsize``, SysV ``MSGMAX``). The sender writes the segment completely
  before it sends the reference, so a sender killed mid-put leaves no half
  message visible; the receiver unlinks the segment as soon as it has opened
  it, so the window in which a killed receiver can leave one behind is a few
  system calls wide, and ``unlink()`` / ``python -m mpx rm`` sweep every
  segment of the queue by its prefix.
- ``0x02``: ``msg[1:]`` is the compact encoding (``cython_src/compact.pxi``,
  the one the shm rings use) of a small value made only of exact builtins.
  Only the pickle serializers use it: it gives back an object equal to the
  one pickle would, at a fraction of pickle's cost on both sides.

Priorities
----------
One range for both backends: ``PRIORITY_MIN`` (0) .. ``PRIORITY_MAX`` (32767,
POSIX ``MQ_PRIO_MAX - 1`` on Linux). Higher priorities come out first and
equal priorities come out first-in first-out, on both backends.

The tag
-------
A small shared segment beside the kernel queue (a /dev/shm file for POSIX, a
SysV shared-memory segment with the queue's key for SysV). It says that the
queue is an mpx queue and of which kind, holds the name it was created with
(so a SysV key that two names hash to is detected), the limits it was created
with, the creation state (so an opener never uses a half-made queue), the
JoinableQueue's unfinished-task counter and, for SysV, the wake-up words that
let a timed ``get``/``put`` sleep instead of polling.
"""

import errno
import functools
import hashlib
import itertools
import mmap
import operator
import os
import queue
import re
import stat
import struct
import threading
import time
import weakref

from ... import _names, _timeouts, _trust
from ..._aio import AsyncQueueMixin
from ..._exceptions import RingClosed
from ..._ext.compact import dumps_compact, loads_compact
from ..._ext.sync import SharedWord
from ..._serial import CloudpickleSerializer, PickleSerializer, loads_custom, wire_bytes

__all__ = ["PRIORITY_MIN", "PRIORITY_MAX", "normalize_name", "check_priority",
           "queue_args", "open_queue", "settled_header", "half_created", "check_header",
           "entry_body", "Tag", "SideStore", "NotAnMpxQueue", "CorruptTag",
           "MessageQueueBase", "JoinableMixin", "PriorityMixin"]

Empty = queue.Empty
Full = queue.Full

PRIORITY_MIN = 0
PRIORITY_MAX = 32767

# A name is at most this many bytes (UTF-8) after its optional leading '/'.
# NAME_MAX is 255 for mq names and /dev/shm files; the tag file adds a
# 7-byte prefix, and the margin keeps room for future companions.
NAME_MAX_BYTES = 200

SHM_DIR = "/dev/shm"

# The smallest msgsize (largest inline frame) a queue takes: room for a
# side-segment reference.
MIN_MSGSIZE = 64

RAW = b"\x80"        # first byte: the message is the serialized object itself
INLINE = b"\x00"     # first byte: the object follows
SIDE = b"\x01"       # first byte: the name of a side segment follows
COMPACT = b"\x02"    # first byte: the object's compact encoding follows

# How long an opener waits for a queue another process is creating (tag in
# state INIT) or removing (state DEAD) before it reports the problem.
OPEN_WAIT = 2.0

# The longest single sleep of a wait that close() in another thread must be
# able to end (join(), SysV waits): the waiter looks at its queue's closed
# flag at least this often, so close() wakes it within about this long.
CLOSE_POLL = 0.05

# ---------------------------------------------------------------------------
# Validation


def normalize_name(name):
    """The name without its optional leading '/', after checking the rules:
    not empty, no other '/', no NUL, not '.' or '..', at most
    NAME_MAX_BYTES bytes in UTF-8."""
    if not isinstance(name, str):
        raise TypeError(f"a queue name must be a str, not {type(name).__name__}")
    body = name[1:] if name.startswith("/") else name
    rule = ("queue names are 1 to %d bytes (UTF-8), optionally after one leading "
            "'/', with no other '/' and no NUL character" % NAME_MAX_BYTES)
    if not body:
        raise ValueError(f"queue name {name!r} is empty; {rule}")
    if "/" in body:
        raise ValueError(f"queue name {name!r} has a '/' after its first character; {rule}")
    if "\0" in body:
        raise ValueError(f"queue name {name!r} contains a NUL character; {rule}")
    if body in (".", ".."):
        raise ValueError(f"queue name {name!r} is not allowed; {rule}")
    try:
        size = len(body.encode("utf-8"))
    except UnicodeEncodeError:
        raise ValueError(f"queue name {name!r} cannot be encoded as UTF-8; {rule}") from None
    if size > NAME_MAX_BYTES:
        raise ValueError(f"queue name {name[:40]!r}... is {size} bytes long; {rule}")
    return body


def check_priority(priority):
    """`priority` as an int in PRIORITY_MIN..PRIORITY_MAX, or ValueError."""
    if type(priority) is not int:
        if isinstance(priority, bool):
            raise ValueError(f"priority must be an int from {PRIORITY_MIN} to "
                             f"{PRIORITY_MAX}, not a bool ({priority!r})")
        try:
            priority = operator.index(priority)     # numpy integers and the like
        except TypeError:
            raise ValueError(f"priority must be an int from {PRIORITY_MIN} to "
                             f"{PRIORITY_MAX}, not {type(priority).__name__} "
                             f"({priority!r})") from None
    if not PRIORITY_MIN <= priority <= PRIORITY_MAX:
        raise ValueError(f"priority {priority} is out of range: priorities run from "
                         f"{PRIORITY_MIN} (lowest) to {PRIORITY_MAX} (highest)")
    return priority


def check_timeout(block, timeout):
    """The timeout to use: 0 when not blocking, None for ever (``inf`` too),
    else seconds (a negative one: 0); NaN is a ValueError (the one rule of
    ``mpx._timeouts``)."""
    return _timeouts.seconds(timeout, block)


def check_limit(what, value):
    if value is None:
        return None
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an int, not {type(value).__name__}") from None
    if value < 0:
        raise ValueError(f"{what} must be >= 0, not {value}")
    if value > 0xFFFFFFFF:
        raise ValueError(f"{what}={value} is too large")
    return value


def check_mode(mode):
    """`mode` checked by the trust rule's reading (``mpx._trust``). The owner
    must keep read and write: a queue its own creator cannot write is a
    mistake (and SysV would map the tag read-only under a writer)."""
    return _trust.check_mode(mode, owner_rw=True)


def queue_args(name, maxsize, msgsize, mode):
    """The arguments every kernel-queue factory takes, checked:
    (body, anonymous, maxsize, msgsize, mode); `body` is the name without
    its leading '/', or a fresh private name when `name` is None."""
    maxsize = check_limit("maxsize", maxsize) or 0
    msgsize = check_limit("msgsize", msgsize)
    if msgsize is not None and msgsize < MIN_MSGSIZE:
        raise ValueError(f"msgsize must be at least {MIN_MSGSIZE} bytes, not {msgsize}")
    mode = check_mode(mode)
    if name is None:
        return anonymous_name(), True, maxsize, msgsize, mode
    return normalize_name(name), False, maxsize, msgsize, mode


def tag16(backend, name):
    """A short hex id of a queue, for side-segment file names (the name itself
    may hold '.' and so could not delimit a prefix unambiguously)."""
    return hashlib.blake2b(f"{backend}:{name}".encode(), digest_size=8).hexdigest()


def side_prefix(backend, body):
    """How the names of queue `body`'s side segments in SHM_DIR begin."""
    return f"mpx-mqside.{tag16(backend, body)}."


def anonymous_name():
    return f"mpx-anon.{os.getpid()}.{os.urandom(6).hex()}"


def read_int(path, default):
    try:
        with open(path) as f:
            return int(f.read().split()[0])
    except (OSError, ValueError, IndexError):
        return default


# ---------------------------------------------------------------------------
# The tag

MAGIC = b"MPXMQTAG"
LAYOUT_VERSION = 2      # 2: the framing gained COMPACT (a version-1 mpx could not read it)
TAG_SIZE = 4096

# magic, then 14 unsigned 32-bit words; the name follows at byte 64.
_HDR = struct.Struct("<8s14I")
OFF_STATE = 12          # u32: INIT, READY or DEAD (futex word: openers wait on it)
OFF_DATA_SEQ = 16       # u32: bumped by a put that saw sleeping getters (SysV)
OFF_DATA_WAITERS = 20   # u32: getters sleeping on DATA_SEQ (SysV timed get)
OFF_SPACE_SEQ = 24      # u32: bumped by a get that saw sleeping putters (SysV)
OFF_SPACE_WAITERS = 28  # u32: putters sleeping on SPACE_SEQ (SysV timed/bounded put)
OFF_UNFINISHED = 32     # u32: JoinableQueue tasks put and not yet task_done()
OFF_NAME = 64           # the queue's name, UTF-8, NAME_LEN bytes
# Other words (read once at open, never changed): 8 layout version, 36 kind,
# 40 maxsize, 44 msgsize (largest inline frame), 48 flags, 52 creator pid,
# 56 name length, 60 reserved.

STATE_INIT, STATE_READY, STATE_DEAD = 0, 1, 2
FLAG_ANONYMOUS = 1

KIND_FIFO, KIND_JOINABLE, KIND_PRIORITY = 1, 2, 3
KIND_OF_FAMILY = {"Queue": KIND_FIFO, "SimpleQueue": KIND_FIFO,
                  "JoinableQueue": KIND_JOINABLE, "PriorityQueue": KIND_PRIORITY}
FAMILY_OF_KIND = {KIND_FIFO: "Queue", KIND_JOINABLE: "JoinableQueue",
                  KIND_PRIORITY: "PriorityQueue"}


class NotAnMpxQueue(ValueError):
    """A kernel object exists under the queue's name or key, but it is not an
    mpx queue (or is one of another layout version)."""


class CorruptTag(NotAnMpxQueue):
    """The tag starts with mpx's magic number and layout version, but a field
    of its header holds a value mpx never writes. ``mpx rm`` still removes
    such a queue when the caller owns it (the magic number says it is mpx's)."""


class Tag:
    """The tag segment of one queue, over a writable buffer of TAG_SIZE bytes."""

    def __init__(self, buf):
        self.buf = buf
        self.view = memoryview(buf)
        # The header as 32-bit words, for the hot paths' plain reads of the
        # waiter counts (an aligned 32-bit load is atomic; the system call
        # before it orders it). Index = offset // 4.
        self.words = self.view.cast("I")
        self.state = SharedWord(buf, OFF_STATE)
        self.data_seq = SharedWord(buf, OFF_DATA_SEQ)
        self.data_waiters = SharedWord(buf, OFF_DATA_WAITERS)
        self.space_seq = SharedWord(buf, OFF_SPACE_SEQ)
        self.space_waiters = SharedWord(buf, OFF_SPACE_WAITERS)
        self.unfinished = SharedWord(buf, OFF_UNFINISHED)

    def init(self, kind, maxsize, msgsize, flags, name):
        """Write a fresh header (state INIT); the creator publishes it with
        :meth:`publish` once the kernel queue exists."""
        raw = name.encode("utf-8")
        self.view[OFF_NAME:OFF_NAME + len(raw)] = raw
        self.view[:_HDR.size] = _HDR.pack(MAGIC, LAYOUT_VERSION, STATE_INIT, 0, 0, 0, 0, 0,
                                          kind, maxsize, msgsize, flags, os.getpid(),
                                          len(raw), 0)

    def publish(self):
        self.state.store(STATE_READY)
        self.state.wake()

    def mark_dead(self):
        self.state.store(STATE_DEAD)
        self.state.wake()

    def magic(self):
        return bytes(self.view[:8])

    def header(self):
        """The header as a dict; NotAnMpxQueue if the magic or version is
        wrong, CorruptTag if a field holds what mpx never writes."""
        return check_header(self.view)

    def wait_settled(self, deadline):
        """Wait until the creator published the tag (READY) or someone marked it
        DEAD; returns the state (INIT if `deadline` passed first)."""
        while True:
            magic = self.magic()
            if magic == MAGIC:
                st = self.state.load()
                if st != STATE_INIT:
                    return st
            elif magic != b"\0" * 8:
                raise NotAnMpxQueue("its tag segment does not start with mpx's magic number")
            left = deadline - time.monotonic()
            if left <= 0:
                return STATE_INIT
            self.state.wait(STATE_INIT, timeout=min(left, 0.01))

    def release(self):
        for word in (self.state, self.data_seq, self.data_waiters, self.space_seq,
                     self.space_waiters, self.unfinished):
            word.release()
        self.words.release()
        self.view.release()


def unpack_header(view):
    """The fields of the tag header at the start of `view`, unchecked (the
    name is left out: its length may be garbage). ``Tag.header`` checks them;
    ``python -m mpx ls`` shows them as they are."""
    (magic, version, state, _, _, _, _, unfinished, kind, maxsize, msgsize, flags,
     creator, name_len, _) = _HDR.unpack(view[:_HDR.size])
    return {"magic": magic, "version": version, "state": state, "kind": kind,
            "family": FAMILY_OF_KIND.get(kind, "?"), "maxsize": maxsize, "msgsize": msgsize,
            "flags": flags, "anonymous": bool(flags & FLAG_ANONYMOUS), "creator_pid": creator,
            "name_len": name_len, "unfinished": unfinished}


def check_header(view):
    """The checked header at the start of `view` (see ``Tag.header``). Every
    field is checked that an opener acts on; the counters (sequence words,
    waiter counts, unfinished tasks) can hold any value without harm. The
    backends check what only the kernel knows (msgsize, maxsize)."""
    h = unpack_header(view)
    if h["magic"] != MAGIC:
        raise NotAnMpxQueue("its tag segment does not start with mpx's magic number")
    if h["version"] != LAYOUT_VERSION:
        raise NotAnMpxQueue(f"its tag has layout version {h['version']}; this mpx "
                            f"reads version {LAYOUT_VERSION}")
    if h["state"] not in STATE_NAMES:
        raise CorruptTag(f"its tag is corrupt: state word {h['state']}")
    if h["kind"] not in FAMILY_OF_KIND:
        raise CorruptTag(f"its tag is corrupt: kind word {h['kind']}")
    if h["flags"] & ~FLAG_ANONYMOUS:
        raise CorruptTag(f"its tag is corrupt: flags word {h['flags']:#x}")
    if h["msgsize"] < MIN_MSGSIZE:
        raise CorruptTag(f"its tag is corrupt: msgsize {h['msgsize']} is below {MIN_MSGSIZE}")
    name_len = h.pop("name_len")
    if not 0 < name_len <= NAME_MAX_BYTES:
        raise CorruptTag(f"its tag is corrupt: name length {name_len}")
    raw = bytes(view[OFF_NAME:OFF_NAME + name_len])
    try:
        name = raw.decode("utf-8")
        if normalize_name(name) != name:
            raise ValueError
    except (UnicodeDecodeError, ValueError):
        raise CorruptTag(f"its tag is corrupt: the name {raw[:40]!r} is not a queue "
                         "name") from None
    h["name"] = name
    return h


STATE_NAMES = {STATE_INIT: "half-created", STATE_READY: "ready", STATE_DEAD: "being removed"}


def ls_columns(header):
    """What ``python -m mpx ls`` shows of a tag header."""
    out = {"state": STATE_NAMES.get(header["state"], "?"), "family": header["family"],
           "maxsize": header["maxsize"], "creator_pid": header["creator_pid"],
           "anonymous": header["anonymous"]}
    if header["kind"] == KIND_JOINABLE:
        out["unfinished"] = header["unfinished"]
    return out


def settled_header(tag, deadline, not_a_tag, half_created_error, what):
    """The header of a queue's tag once its creator has published it, or None
    when the queue is being removed (the caller lets go and tries again).
    `not_a_tag` begins the message of the NotAnMpxQueue raised when the tag
    is something else, `what` (the queue) that of one whose header is
    corrupt or of another version; ``half_created_error()`` is raised when
    the creator has not published it by `deadline`."""
    try:
        state = tag.wait_settled(deadline)
    except NotAnMpxQueue as e:
        raise NotAnMpxQueue(f"{not_a_tag}: {e}") from None
    if state == STATE_DEAD:
        return None
    if state == STATE_INIT:
        raise half_created_error()
    try:
        return tag.header()
    except NotAnMpxQueue as e:
        raise type(e)(f"{what}: {e}") from None


def half_created(backend, family, body, module, **meta):
    """The error for a queue whose tag was never published. The queue is
    recorded here too (with `meta`), in case its creator died before it could,
    so that ``python -m mpx rm`` finds it."""
    _names.record(family, backend, body, module=module, **meta, half_created=True)
    return RuntimeError(
        f"mpx {backend} queue {body!r} was left half-created (its creator died while "
        f"creating it?); remove it with `python -m mpx rm {body}` and try again")


def open_queue(backend, body, anonymous, try_create, attach_existing, wait):
    """(resources, created) of queue `body`, for the backends' ``_open``.

    ``try_create()`` (None: do not create) makes the queue and returns its
    resources, or returns None when it exists already. ``attach_existing(
    deadline)`` opens the existing queue: its resources, or None while
    another process is removing it (then this waits and starts over), or a
    FileNotFoundError whose ``filename`` is set when there is nothing there
    (one without, a damaged queue, goes on to the caller). `wait`: how many
    seconds a queue being created or removed may take (OPEN_WAIT)."""
    spare_fd()                          # for unlink() when descriptors run out
    deadline = time.monotonic() + wait
    while True:
        if try_create is not None:
            res = try_create()
            if res is not None:
                return res, True
        try:
            res = attach_existing(deadline)
        except FileNotFoundError as e:
            if e.filename is None:      # the backend's "damaged" error, not a missing tag
                raise
            if try_create is None:
                if anonymous:
                    raise FileNotFoundError(
                        f"anonymous mpx {backend} queue {body!r} no longer exists: the process "
                        "that created it has dropped it or exited") from None
                raise FileNotFoundError(
                    f"no mpx {backend} queue named {body!r} (create=False)") from None
            res = None                  # removed meanwhile: create it afresh
        if res is not None:
            return res, False
        if time.monotonic() > deadline:
            raise RuntimeError(f"mpx {backend} queue {body!r} is being removed by another "
                               "process and did not go away; try again, or remove it with "
                               f"`python -m mpx rm {body}`")
        time.sleep(0.002)


def check_compatible(header, name, backend, family, maxsize, msgsize):
    """Refuse to open an existing queue as another kind or with other limits
    than the caller asked for explicitly (maxsize 0 / msgsize None: any)."""
    if header["name"] != name:
        raise ValueError(
            f"the {backend} queue name {name!r} maps to a kernel object that mpx queue "
            f"{header['name']!r} already uses; choose another name")
    want = KIND_OF_FAMILY[family]
    if header["kind"] != want:
        raise ValueError(f"mpx {backend} queue {name!r} exists as a {header['family']}; "
                         f"it cannot be opened as a {family}")
    if (maxsize and maxsize != header["maxsize"]) or (
            msgsize is not None and msgsize != header["msgsize"]):
        asked = []
        if maxsize and maxsize != header["maxsize"]:
            asked.append(f"maxsize={maxsize}")
        if msgsize is not None and msgsize != header["msgsize"]:
            asked.append(f"msgsize={msgsize}")
        raise ValueError(
            f"mpx {backend} queue {name!r} already exists with maxsize={header['maxsize']} "
            f"and msgsize={header['msgsize']}; this call asked for {' and '.join(asked)} "
            f"(pass maxsize=0 and no msgsize to open it with whatever limits it has, or "
            f"unlink it first)")


# ---------------------------------------------------------------------------
# Side segments

_SUFFIX = re.compile(rb"\A[0-9]+\.[0-9]+\Z")

# Descriptors: open flags for files mpx finds in /dev/shm. O_NOFOLLOW: a
# symbolic link there is another user's trap, never followed. O_NONBLOCK: a
# FIFO planted under the name must not block the open (fstat then refuses it).
OPEN_FOUND = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def symlink_refused(what, path):
    """The error for a symbolic link found where mpx keeps a file."""
    return PermissionError(errno.EACCES, f"refusing to open {what}: {path} is a symbolic "
                                         "link (mpx never makes one; another user may have "
                                         "planted it), remove it")


class SideStore:
    """Side segments of one queue: /dev/shm/mpx-mqside.<tag16>.<pid>.<n>
    (see ``side_prefix``). `mode`: what new segments are created with (the
    queue's own mode); `trust`: the opener's ``mode=``, which a segment read
    back must pass like the queue itself did (``mpx._trust``)."""

    def __init__(self, backend, body, mode, trust=0o600):
        self.prefix = side_prefix(backend, body)
        self.what = f"a large message of mpx {backend} queue {body!r}"
        self.mode = mode
        self.trust = trust
        self.counter = itertools.count()

    def put(self, data):
        """Write `data` into a new segment; returns (frame, suffix)."""
        data = memoryview(data).cast("B")
        while True:
            suffix = f"{os.getpid()}.{next(self.counter)}"
            path = f"{SHM_DIR}/{self.prefix}{suffix}"
            try:
                fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
                             | os.O_NOFOLLOW, self.mode)
            except FileExistsError:
                continue        # an old segment of a reused pid (or a trap): the next number
            except OSError as e:
                raise OSError(e.errno, f"cannot create the side segment {path} for a "
                                       f"{len(data)}-byte message: {e.strerror}") from None
            try:
                os.fchmod(fd, self.mode)        # the umask must not narrow the mode
                done = 0
                while done < len(data):
                    done += os.write(fd, data[done:])
            except BaseException as e:
                os.close(fd)
                _unlink_quiet(path)
                if isinstance(e, OSError) and e.errno == errno.ENOSPC:
                    raise OSError(errno.ENOSPC, f"no room in {SHM_DIR} for a {len(data)}-byte "
                                                f"message (side segment {path})") from None
                raise
            os.close(fd)
            return SIDE + suffix.encode(), suffix

    def discard(self, suffix):
        _unlink_quiet(f"{SHM_DIR}/{self.prefix}{suffix}")

    def take(self, ref, loads):
        """Read, free and deserialize the segment named by frame body `ref`.
        The segment passes the trust rule before a byte of it is read."""
        if not _SUFFIX.match(ref):
            raise ValueError(f"malformed large-message reference {bytes(ref[:40])!r}; "
                             "was something other than mpx writing to this queue?")
        path = f"{SHM_DIR}/{self.prefix}{ref.decode()}"
        try:
            try:
                fd = os.open(path, os.O_RDWR | OPEN_FOUND)
            except PermissionError:
                fd = os.open(path, os.O_RDONLY | OPEN_FOUND)
        except FileNotFoundError:
            raise FileNotFoundError(
                f"the payload of a large message ({path}) is gone: the queue was "
                "unlinked (or `mpx rm` swept it) while the message was in flight") from None
        except OSError as e:
            if e.errno == errno.ELOOP:
                raise symlink_refused(self.what, path) from None
            raise
        freed = regular = False
        try:
            st = os.fstat(fd)
            _trust.check_owner(f"{self.what} ({path})", uids=(st.st_uid,), perm=st.st_mode,
                               mode=self.trust)
            if not stat.S_ISREG(st.st_mode):
                raise ValueError(f"the payload of a large message ({path}) is not a "
                                 "regular file")
            regular = True
            try:
                os.unlink(path)     # from here on the kernel frees it when fd closes
                freed = True
            except PermissionError:
                pass                # another user's segment in sticky /dev/shm
            size = os.fstat(fd).st_size
            if size == 0:
                raise ValueError(f"the payload of a large message ({path}) is empty")
            mm = mmap.mmap(fd, size, flags=mmap.MAP_PRIVATE | mmap.MAP_POPULATE,
                           prot=mmap.PROT_READ)
            try:
                return loads(mm)
            finally:
                mm.close()
        finally:
            if regular and not freed:
                try:
                    os.ftruncate(fd, 0)     # at least give the memory back
                except OSError:
                    pass
            os.close(fd)

    def sweep(self):
        """Remove every side segment of this queue; returns how many."""
        return sweep_prefix(self.prefix)


def count_sides(backend, body):
    """How many side segments of queue `body` exist now (for ``python -m mpx ls``)."""
    prefix = side_prefix(backend, body)
    try:
        return sum(1 for f in os.listdir(SHM_DIR) if f.startswith(prefix))
    except OSError:
        return 0


def sweep_prefix(prefix, uid=None):
    """Unlink every file in SHM_DIR whose name starts with `prefix` (and,
    with `uid`, that this uid owns); returns how many. Files this user may
    not remove (another user's, in sticky /dev/shm) are left to their owner.
    OSError when SHM_DIR cannot be listed."""
    n = 0
    for fname in os.listdir(SHM_DIR):
        if fname.startswith(prefix):
            path = f"{SHM_DIR}/{fname}"
            if uid is not None:
                try:
                    if os.stat(path, follow_symlinks=False).st_uid != uid:
                        continue
                except FileNotFoundError:
                    continue
            try:
                if _unlink_quiet(path):
                    n += 1
            except PermissionError:
                pass
    return n


# One spare descriptor per process: unlink() must work in a process that has
# run out of descriptors (EMFILE). Removing a queue needs a descriptor for
# two things only, one at a time: the listing of SHM_DIR that finds its side
# segments, and the record directory. The spare is closed to make room for
# them and opened again after (a forked child holds its own copy; exec
# closes it).
_spare = None
_spare_lock = threading.Lock()


def spare_fd():
    """Make sure this process holds its spare descriptor (queues call it when
    they open; failing to get one is not an error)."""
    global _spare
    if _spare is None:
        with _spare_lock:
            if _spare is None:
                try:
                    _spare = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
                except OSError:
                    pass


def with_spare_fd(func, *args):
    """``func(*args)``; when this process has no free descriptor, with the
    spare given back for the length of the call."""
    global _spare
    try:
        os.close(os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC))
    except OSError as e:
        if e.errno not in (errno.EMFILE, errno.ENFILE):
            raise
    else:
        return func(*args)
    with _spare_lock:
        if _spare is not None:
            os.close(_spare)
            _spare = None
        try:
            return func(*args)
        finally:
            try:
                _spare = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                pass


def _unlink_quiet(path):
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False


# ---------------------------------------------------------------------------
# Records for `python -m mpx ls/rm`

RECORD_KINDS = ("Queue", "SimpleQueue", "JoinableQueue", "PriorityQueue")


def entry_body(entry):
    """The queue name of record `entry` (untrusted input: anyone could have
    written it), checked like a name passed to a constructor."""
    name = entry.get("name") if isinstance(entry, dict) else None
    if not isinstance(name, str):
        raise ValueError(f"the record holds no queue name (found {name!r})")
    return normalize_name(name)


def forget_all(backend, name):
    """Forget the record of `name` under every family (an object created as a
    Queue may be unlinked through a SimpleQueue that opened it)."""
    for kind in RECORD_KINDS:
        _names.forget(kind, backend, name)


def sweep_sides(backend, body, uid):
    """Unlink the side segments of queue `body` (`uid`'s only, unless None).
    Returns None, or the OSError that kept SHM_DIR from being listed: the
    caller removes the rest of the queue first, then passes it to
    :func:`finish_removal`."""
    try:
        sweep_prefix(side_prefix(backend, body), uid)
    except OSError as e:
        return e
    return None


def finish_removal(backend, body, what, swept):
    """The last step of removing queue `body` (described as `what`): forget
    its record, or, when its side segments could not be listed (`swept`,
    from :func:`sweep_sides`), keep the record, so that ``mpx rm`` can
    finish the job, and raise the error that says so."""
    if swept is not None:
        raise OSError(swept.errno, f"{what} was removed, but its large-message "
                                   f"segments in {SHM_DIR} could not be listed ({swept}); "
                                   f"`python -m mpx rm {body}` removes them")
    forget_all(backend, body)


# ---------------------------------------------------------------------------
# The queue API


_RAW_SERIALIZERS = (PickleSerializer, CloudpickleSerializer)


def _no_compact(obj):
    """The compact encoder of a queue whose serializer is not pickle."""
    return None


class MessageQueueBase(AsyncQueueMixin):
    """The queue API over one kernel message queue.

    A backend subclass sets ``_backend`` and provides ``_send(frame, prio,
    timeout)`` (raise Full), ``_recv(timeout) -> (msg, prio)`` (raise Empty),
    ``_qsize()``, ``_full()``, ``_state()`` (what a child needs to open the
    queue again), the class method ``_attach(state, serializer)``, and the
    static methods ``_close_resources(res)`` / ``_unlink_resources(res)``
    (and optionally ``_close_handle(res)``, what close() releases early)
    that act on the per-process resource holder `res` (they never see the
    queue object, so the finalizer does not keep it alive). It may speed up
    ``put``/``get``; such fast paths call the kernel through ``_msend`` /
    ``_mrecv`` without checking ``_closed`` (close() replaces both with a
    function that raises). ``timeout`` there is 0 (do not wait), None (wait
    for ever) or seconds.
    """

    _backend = "?"
    _family = "Queue"

    def _aio_fd(self):
        # (mpx._aio) No descriptor (SysV): coroutines are woken by the
        # poller thread; PosixQueue has one.
        self._check_open()
        return None

    # -- set-up ---------------------------------------------------------

    def _setup(self, res, serializer, name, anonymous, creator, tag, side, limit, maxsize):
        self._res = res             # what the finalizer closes/unlinks (never self)
        self._serializer = serializer
        self._dumps = serializer.dumps
        if isinstance(serializer, PickleSerializer):
            self._loads = self._side_loads = serializer.loads
        else:
            # Bytes or text (wire_bytes on the way in): see loads_custom.
            self._loads = self._side_loads = functools.partial(loads_custom, serializer)
        # The pickle serializers send small values of exact builtins as
        # COMPACT frames (see Framing); dumps_compact returns None for the
        # rest, which are pickled.
        raw = type(serializer) in _RAW_SERIALIZERS
        self._dumps_compact = dumps_compact if raw else _no_compact
        self.name = name
        self.anonymous = anonymous
        self._maxsize = maxsize
        self._tag = tag
        self._side = side
        self._limit = limit         # longest frame a kernel message takes
        self._closed = False
        # Per-process clean-up: close this process's descriptors; the process
        # that created an anonymous queue also removes it (pid check: a forked
        # child's copy of the object never does).
        self._finalizer = weakref.finalize(
            self, _finalize, type(self)._close_resources, type(self)._unlink_resources,
            res, os.getpid() if (anonymous and creator) else None)

    # -- framing --------------------------------------------------------

    def _frame(self, data):
        """(frame, side suffix or None) for serialized `data`."""
        if type(data) is not bytes:
            data = wire_bytes(self._serializer, data)
        if data[:1] == RAW:
            if len(data) <= self._limit:
                return data, None
        elif len(data) < self._limit:
            return INLINE + data, None
        return self._side.put(data)

    def _encode(self, obj):
        """(frame, side suffix or None) for `obj`; serialization errors raise
        here, before anything is sent."""
        body = self._dumps_compact(obj)
        if body is not None and len(body) < self._limit:
            return COMPACT + body, None
        return self._frame(self._dumps(obj))

    def _send_frame(self, frame, suffix, prio, timeout):
        """Send `frame`; the side segment `suffix` made for it (if not None)
        is removed again if the send fails (Full, timeout, Ctrl-C)."""
        if suffix is None:
            return self._send(frame, prio, timeout)
        try:
            self._send(frame, prio, timeout)
        except BaseException:
            self._side.discard(suffix)
            raise

    def _decode(self, msg):
        """The object in kernel message `msg` (see Framing)."""
        kind = msg[:1]                  # (an empty message is not mpx's: said below)
        if kind == COMPACT:
            return loads_compact(msg[1:])
        if kind == RAW:                 # the message is the pickle stream
            return self._loads(msg)
        if kind == INLINE:
            return self._loads(msg[1:])
        if kind == SIDE:
            return self._side.take(msg[1:], self._side_loads)
        raise ValueError(f"received a message that mpx did not write "
                         f"({len(msg)} bytes, first byte {bytes(kind)!r})")

    def _check_open(self):
        if self._closed:
            raise ValueError(f"{self!r} is closed")

    def _closed_while_waiting(self):
        """What a call blocked in this object raises when another thread
        closes it: the shm queue's RingClosed (an OSError and a ValueError),
        so that one ``except`` serves every backend."""
        return RingClosed(f"{self!r} was closed (by another thread) while this call waited")

    # -- the API ----------------------------------------------------------

    def put(self, obj, block=True, timeout=None):
        """Put `obj`; wait for room if `block` (for ever if `timeout` is None,
        else at most `timeout` seconds) and raise ``queue.Full`` otherwise."""
        self._put(obj, 0, block, timeout)

    def _put(self, obj, prio, block, timeout):
        self._check_open()
        timeout = check_timeout(block, timeout)
        self._send_frame(*self._encode(obj), prio, timeout)

    def get(self, block=True, timeout=None):
        """Remove and return the next item; wait like :meth:`put`, raising
        ``queue.Empty`` when nothing comes."""
        self._check_open()
        return self._decode(self._recv(check_timeout(block, timeout))[0])

    def put_nowait(self, obj):
        """``put(obj, block=False)``: queue.Full at once when there is no room."""
        return self.put(obj, False)

    def get_nowait(self):
        """``get(block=False)``: queue.Empty at once when nothing waits."""
        return self.get(False)

    def put_many(self, objs, block=True, timeout=None):
        """Put every object of `objs` in order. All are serialized first, so
        one that cannot be serialized raises before anything is sent. If the
        queue stays full past `timeout`, ``queue.Full`` is raised and its
        ``put_count`` attribute says how many objects went in (those stay)."""
        self._check_open()
        timeout = check_timeout(block, timeout)
        return self._put_many_encoded(self._encode_all(objs), 0, timeout)

    def _encode_all(self, objs):
        frames = []
        try:
            for obj in objs:
                frames.append(self._encode(obj))
        except BaseException:
            for _, suffix in frames:
                if suffix is not None:
                    self._side.discard(suffix)
            raise
        return frames

    def _put_many_encoded(self, frames, prio, timeout):
        deadline = None if not timeout else time.monotonic() + timeout
        for i, (frame, suffix) in enumerate(frames):
            left = timeout if deadline is None else max(deadline - time.monotonic(), 0.0)
            try:
                self._send(frame, prio, left)
            except BaseException as e:
                for _, s in frames[i:]:
                    if s is not None:
                        self._side.discard(s)
                if isinstance(e, Full):
                    e.put_count = i
                raise
        return len(frames)

    def get_many(self, max_items=None, block=True, timeout=None):
        """Wait like :meth:`get` for the first item, then take whatever else is
        ready without waiting, up to `max_items` items in all; returns a list."""
        if max_items is not None and max_items < 1:
            raise ValueError(f"max_items must be at least 1, not {max_items}")
        items = [self.get(block, timeout)]
        while max_items is None or len(items) < max_items:
            try:
                items.append(self.get(False))
            except Empty:
                break
        return items

    def qsize(self):
        """Messages in the queue now (exact: the kernel's count)."""
        self._check_open()
        return self._qsize()

    def empty(self):
        """True when no message waits now (exact, as :meth:`qsize`)."""
        return self.qsize() == 0

    def full(self):
        """True when a put_nowait would raise Full for lack of message slots."""
        self._check_open()
        return self._full()

    @property
    def maxsize(self):
        """The most messages the queue holds (0: only the kernel's limit)."""
        return self._maxsize

    def close(self):
        """Close this process's handle on the queue (the queue itself stays;
        see :meth:`unlink`). Idempotent. The tag stays mapped until the
        object is garbage-collected: another thread may still be waiting on
        one of its words."""
        if not self._closed:
            self._closed = True
            self._close_handle(self._res)
        self._msend = self._mrecv = _closed_call(self)

    @staticmethod
    def _close_handle(res):
        """Close the kernel descriptor, if the backend has one."""

    def join_thread(self):
        """No-op, for ``multiprocessing.Queue`` compatibility: there is no
        feeder thread; a message is in the kernel when put() returns."""

    def cancel_join_thread(self):
        """No-op, for ``multiprocessing.Queue`` compatibility."""

    def unlink(self):
        """Remove the queue from the system: its kernel queue, its tag, every
        side segment, its record. Processes that still have it open may see
        errors (SysV) or keep what they hold (POSIX). Idempotent; works in a
        process that has run out of descriptors."""
        with_spare_fd(self._unlink_resources, self._res)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def __reduce__(self):
        return (_rebuild, (type(self), self._state(), self._serializer))

    def __repr__(self):
        what = "anonymous" if self.anonymous else "name"
        state = " closed" if self._closed else ""
        return (f"<mpx {self._backend} {type(self)._family} {what}={self.name!r}"
                f" maxsize={self._maxsize}{state}>")


def _closed_call(queue):
    # Holds the queue's repr, not the queue: a reference back to it would
    # make a cycle and delay the clean-up of an anonymous queue until the
    # cyclic garbage collector happens to run.
    what = repr(queue)

    def closed(*args):
        raise ValueError(f"{what} is closed")
    return closed


def _rebuild(cls, state, serializer):
    return cls._attach(state, serializer)


def _finalize(close, unlink, res, owner_pid):
    # Unlink first: it uses what this process still holds (the mapped tag,
    # the kernel ids), so it needs no new descriptor.
    try:
        if owner_pid is not None and owner_pid == os.getpid():
            with_spare_fd(unlink, res)
    finally:
        close(res)


class JoinableMixin:
    """task_done()/join() across processes: a counter in the tag, raised
    before each put (so a fast consumer can never task_done() an item the
    counter does not know yet) and lowered by task_done(); join() sleeps on
    the counter's futex until it reads zero. As with the stdlib, a consumer
    that dies between get() and task_done() (or a producer killed between
    raising the counter and sending) leaves the count too high, and join()
    then waits until its timeout."""

    _family = "JoinableQueue"

    def put(self, obj, block=True, timeout=None):
        """Put `obj` and count it as an unfinished task (see :meth:`join`)."""
        self._put(obj, 0, block, timeout)

    def _put(self, obj, prio, block, timeout):
        self._check_open()
        unfinished = self._tag.unfinished
        unfinished.add(1)
        try:
            super()._put(obj, prio, block, timeout)
        except BaseException:
            self._task_release(1)
            raise

    def put_many(self, objs, block=True, timeout=None):
        """Put every object of `objs`, in order, each an unfinished task."""
        self._check_open()
        timeout = check_timeout(block, timeout)
        frames = self._encode_all(objs)
        self._tag.unfinished.add(len(frames))
        try:
            return self._put_many_encoded(frames, 0, timeout)
        except Full as e:
            self._task_release(len(frames) - e.put_count)
            raise
        except BaseException:
            self._task_release(len(frames))
            raise

    def _task_release(self, n):
        word = self._tag.unfinished
        if n and word.add((-n) & 0xFFFFFFFF) == n:
            word.wake()

    def task_done(self):
        """Say that an item taken with get() has been processed; ValueError
        if called more times than items were put."""
        self._check_open()
        word = self._tag.unfinished
        while True:
            v = word.load()
            if v == 0:
                raise ValueError("task_done() called too many times")
            if word.compare_exchange(v, v - 1):
                if v == 1:
                    word.wake()
                return

    def join(self, timeout=None):
        """Block until every item put has been task_done(). Returns True, or
        False if `timeout` seconds passed first."""
        self._check_open()
        timeout = _timeouts.seconds(timeout)
        word = self._tag.unfinished
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            v = word.load()
            if v == 0:
                return True
            if self._closed:
                raise self._closed_while_waiting()
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                return False
            # Capped, so that a close() in another thread is seen in time.
            word.wait(v, timeout=CLOSE_POLL if left is None else min(left, CLOSE_POLL))


class PriorityMixin:
    """put(item, priority=0, ...) and get_with_priority()."""

    _family = "PriorityQueue"
    PRIORITY_MIN = PRIORITY_MIN
    PRIORITY_MAX = PRIORITY_MAX

    def put(self, item, priority=0, block=True, timeout=None):
        """Put `item` with `priority` (PRIORITY_MIN..PRIORITY_MAX, higher comes
        out first; equal priorities come out in put order)."""
        self._put(item, check_priority(priority), block, timeout)

    def put_nowait(self, item, priority=0):
        """``put(item, priority, block=False)``."""
        return self.put(item, priority, False)

    def put_many(self, objs, block=True, timeout=None, priority=0):
        """put_many with one priority for every object."""
        priority = check_priority(priority)
        self._check_open()
        timeout = check_timeout(block, timeout)
        return self._put_many_encoded(self._encode_all(objs), priority, timeout)

    def get(self, block=True, timeout=None):
        """The item of the highest priority (the oldest among equals)."""
        return self.get_with_priority(block, timeout)[0]

    def get_with_priority(self, block=True, timeout=None):
        """(item, priority) of the next item."""
        self._check_open()
        msg, prio = self._recv(check_timeout(block, timeout))
        return self._decode(msg), prio
