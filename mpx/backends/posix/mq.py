"""Backend "posix", queues: POSIX message queues (``mq_open``, via posix_ipc).

Families: Queue, SimpleQueue, JoinableQueue, PriorityQueue.

- Named queues (``name="jobs"`` or ``"/jobs"``) are opened by any process
  with the same call, created by the first; ``unlink()`` (or ``python -m mpx
  rm jobs``) removes them. Anonymous queues (``name=None``) get a private
  name, travel to children (fork, spawn, forkserver; or later, pickled), and
  are removed when the creating process's object is garbage-collected or the
  process exits. After removal, processes that already opened a queue keep
  using it (POSIX semantics) until they close it.
- ``maxsize`` is the kernel's ``mq_maxmsg``; 0 means as many as an
  unprivileged process may ask for (``/proc/sys/fs/mqueue/msg_max``, 10 by
  default). ``put`` blocks when that many messages wait, even with
  ``maxsize=0``: there is no hidden feeder thread to buffer them.
- ``msgsize`` is ``mq_msgsize`` (default: ``msgsize_max``, at most 8 KiB).
  Larger messages go through a side segment in /dev/shm, so there is no size
  limit for the user to know about. The kernel charges ``maxsize * msgsize``
  (plus a little) to the per-user ``RLIMIT_MSGQUEUE`` (``ulimit -q``, 800 KiB
  by default, about nine default queues): a smaller ``msgsize`` fits more
  queues.
- PriorityQueue priorities run from 0 to 32767 (``MQ_PRIO_MAX - 1``); higher
  comes out first, equal priorities in put order: the kernel's own order.
- ``mode`` (default 0o600) applies to the queue, its tag and its side
  segments, unaffected by the umask; the owner keeps read and write. It is
  also what the opener accepts (``mpx._trust``): an existing queue, tag or
  side segment must belong to this user or root and grant group and others
  nothing beyond ``mode``, or it is refused with PermissionError before
  anything is read from it. A ``mode`` that grants group or others access
  (e.g. 0o660) opts in to queues other users made.
- ``close()`` wakes this process's calls blocked on the queue at once (an
  eventfd beside the queue descriptor in their poll): they raise RingClosed,
  as the shm queue's do.

Every blocking call takes ``block``/``timeout`` like multiprocessing. The
queue descriptor is non-blocking and waits sleep in ``poll(2)`` on it, so
EINTR is retried after Python's signal handlers ran and any exception they
raise (Ctrl-C, an alarm-based timeout) gets through.
"""

import errno
import math
import mmap
import os
import resource
import select
import stat
import threading
import time

import posix_ipc

from ... import _names, _trust
from .._common.mq import (
    MAGIC, MIN_MSGSIZE, NAME_MAX_BYTES, OFF_NAME, OPEN_FOUND, OPEN_WAIT, Empty, Full,
    FLAG_ANONYMOUS, KIND_OF_FAMILY, SHM_DIR, TAG_SIZE, CorruptTag, JoinableMixin,
    MessageQueueBase, NotAnMpxQueue, PriorityMixin, SideStore, Tag, check_compatible,
    check_header, count_sides, entry_body, forget_all, half_created, ls_columns, open_queue,
    queue_args, read_int, settled_header, finish_removal, sweep_sides, symlink_refused,
    _unlink_quiet)
from .._common.mq import PRIORITY_MIN, PRIORITY_MAX  # noqa: F401  (documented here too)

FAMILIES = ("Queue", "SimpleQueue", "JoinableQueue", "PriorityQueue")

BACKEND = "posix"
DEFAULT_MSGSIZE = 8192
HARD_MSGMAX = 65536         # the kernel's ceiling even for privileged processes
HARD_MSGSIZEMAX = 16 * 1024 * 1024

_BusyError = posix_ipc.BusyError
POLL_MAX_MS = 86_400_000    # poll(2) takes a C int: a longer wait is several polls
_efd_lock = threading.Lock()


def unavailable():
    if not getattr(posix_ipc, "MESSAGE_QUEUES_SUPPORTED", False):
        return "posix_ipc was built without POSIX message-queue support"
    if not os.path.isdir("/proc/sys/fs/mqueue"):
        return "this kernel has no POSIX message queues (no /proc/sys/fs/mqueue)"
    if not os.access(SHM_DIR, os.W_OK | os.X_OK):
        return f"{SHM_DIR} is not a writable directory (queue tags and large messages live there)"
    return None


def system_limits():
    """(msg_max, msgsize_max): what an unprivileged process may ask for."""
    return (read_int("/proc/sys/fs/mqueue/msg_max", 10),
            read_int("/proc/sys/fs/mqueue/msgsize_max", 8192))


def _tagpath(body):
    return f"{SHM_DIR}/mpx-mq.{body}"


# ---------------------------------------------------------------------------
# Errors that name the limit and the way out


def _permission_error(body, what):
    return PermissionError(
        errno.EACCES, f"permission denied opening mpx posix queue {body!r} ({what} belongs "
                      "to another user, or its mode forbids this user)")


def _over_limit(arg, value, hard, unit, sysctl, soft, what, then):
    """What is wrong with `arg`=`value` against the kernel's hard limit and
    the sysctl fs.mqueue.`sysctl` (`soft`), or None; `what` says what that
    limit means, `then` what happens with a smaller value."""
    if value > hard:
        return f"{arg}={value} is more than the kernel's hard limit of {hard} {unit}"
    if value > soft:
        return (f"{arg}={value} is more than /proc/sys/fs/mqueue/{sysctl} ({soft}){what}; "
                f"raise it as root with `sysctl fs.mqueue.{sysctl}={value}`, or use a smaller "
                f"{arg}{then}")
    return None


def _creation_error(e, body, maxmsg, msgsize):
    """Translate posix_ipc's error from mq_open(O_CREAT) into one that says
    which limit was hit and how to raise it."""
    mqname = "/" + body
    if isinstance(e, posix_ipc.ExistentialError):
        return NotAnMpxQueue(
            f"a POSIX message queue named {mqname!r} already exists but is not an mpx "
            "queue (it has no mpx tag); remove it (posix_ipc.unlink_message_queue) or "
            "choose another name")
    if isinstance(e, posix_ipc.PermissionsError):
        return _permission_error(body, "the queue")
    msg_max, msgsize_max = system_limits()
    if isinstance(e, ValueError):       # EINVAL: "Invalid parameter(s)"
        problems = [p for p in (
            _over_limit("maxsize", maxmsg, HARD_MSGMAX, "messages", "msg_max", msg_max,
                        ", the most messages a POSIX queue may hold for a process without "
                        "CAP_SYS_RESOURCE", ""),
            _over_limit("msgsize", msgsize, HARD_MSGSIZEMAX, "bytes", "msgsize_max",
                        msgsize_max, "", " (larger messages still go through, by a side "
                        "segment)")) if p]
        if not problems:
            problems.append(f"the kernel refused maxsize={maxmsg}, msgsize={msgsize}")
        return ValueError(f"cannot create POSIX message queue {mqname!r}: " + "; ".join(problems))
    if isinstance(e, OSError):
        text = str(e)
        if getattr(e, "errno", None) == errno.ENOSPC or "No space" in text:
            return OSError(errno.ENOSPC, (
                f"cannot create POSIX message queue {mqname!r}: the machine-wide limit "
                f"/proc/sys/fs/mqueue/queues_max ({read_int('/proc/sys/fs/mqueue/queues_max', '?')}) "
                "queues exist; remove unused ones (`python -m mpx ls` / `rm`) or raise it"))
        if getattr(e, "errno", None) == errno.EMFILE or "maximum number of files" in text:
            nofile = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
            try:
                open_fds = len(os.listdir("/proc/self/fd"))
            except OSError:
                open_fds = 0
            if nofile != resource.RLIM_INFINITY and open_fds >= nofile - 2:
                return OSError(errno.EMFILE, (
                    f"cannot create POSIX message queue {mqname!r}: this process has "
                    f"{open_fds} descriptors open, its limit (ulimit -n) is {nofile}"))
            qlimit = resource.getrlimit(resource.RLIMIT_MSGQUEUE)[0]
            need = maxmsg * (msgsize + 48) + min(maxmsg, 32768) * 40
            return OSError(errno.EMFILE, (
                f"cannot create POSIX message queue {mqname!r}: it needs about {need} bytes "
                "of the per-user message-queue memory limit RLIMIT_MSGQUEUE (`ulimit -q`: "
                f"{qlimit} bytes), which this user's existing queues already use up. Remove "
                "queues you no longer need (`python -m mpx ls`, `python -m mpx rm`), pass a "
                "smaller msgsize= or maxsize=, or raise the limit (`ulimit -q`, or "
                "`msgqueue` in /etc/security/limits.conf)"))
    return e


# ---------------------------------------------------------------------------
# Opening and creating


class _Res:
    """What one process holds of one queue (the finalizer's view): `ident`
    is the tag file's (st_dev, st_ino), how unlink() knows the tag under the
    name is still this queue's; `mode` the opener's ``mode=``; `efd` the
    eventfd close() writes to end this process's waits (made by the first
    wait, in process `efd_pid`)."""

    __slots__ = ("body", "mq", "mm", "tag", "ident", "mode", "efd", "efd_pid")

    def __init__(self, body, mq, mm, tag, ident, mode):
        self.body, self.mq, self.mm, self.tag = body, mq, mm, tag
        self.ident, self.mode = ident, mode
        self.efd = self.efd_pid = None


def _what(body):
    return f"mpx posix queue {body!r}"


def _open_tag(body, flags):
    """A descriptor of queue `body`'s tag file, opened with `flags` plus
    OPEN_FOUND (a symbolic link is refused, a FIFO does not block). The
    FileNotFoundError of a missing tag goes through as it is (filename set)."""
    tagpath = _tagpath(body)
    try:
        return os.open(tagpath, flags | OPEN_FOUND)
    except (FileNotFoundError, FileExistsError):
        raise
    except PermissionError:
        raise _permission_error(body, "its tag " + tagpath) from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise symlink_refused(f"{_what(body)} (its tag)", tagpath) from None
        raise


def _trust_tag(fd, body, mode):
    """The trust rule (``mpx._trust``) on the tag open as `fd`, before a byte
    of it is read; returns its stat."""
    tagpath = _tagpath(body)
    st = os.fstat(fd)
    _trust.check_owner(f"{_what(body)} (its tag {tagpath})", uids=(st.st_uid,),
                       perm=st.st_mode, mode=mode)
    if not stat.S_ISREG(st.st_mode):
        raise NotAnMpxQueue(f"{tagpath} exists but is not an mpx queue tag (not a "
                            "regular file)")
    return st


def _trust_queue(mq, body, mode):
    """The trust rule on the kernel queue, before a message is taken from it
    (an mqueue descriptor has an owner and a mode like a file)."""
    st = os.fstat(mq.mqd)
    _trust.check_owner(f"{_what(body)} (its kernel queue /{body})", uids=(st.st_uid,),
                       perm=st.st_mode, mode=mode)


def _check_kernel(header, mq, body):
    """The tag's limits against the kernel queue's own: a tag that disagrees
    is corrupt (the kernel's word is the one that holds)."""
    if header["msgsize"] != mq.max_message_size:
        raise CorruptTag(f"{_what(body)}: its tag is corrupt: msgsize {header['msgsize']}, "
                         f"but the kernel queue takes {mq.max_message_size}-byte messages")
    if header["maxsize"] not in (0, mq.max_messages):
        raise CorruptTag(f"{_what(body)}: its tag is corrupt: maxsize {header['maxsize']}, "
                         f"but the kernel queue holds {mq.max_messages} messages")


def _map_tag(fd):
    mm = mmap.mmap(fd, TAG_SIZE)
    try:
        return mm, Tag(mm)
    except BaseException:
        mm.close()
        raise


def _drop_tag(mm, tag):
    try:
        tag.release()
        mm.close()
    except (BufferError, ValueError):
        pass


def _create(fd, family, body, anonymous, maxsize, msgsize, mode):
    tagpath = _tagpath(body)
    try:
        os.fchmod(fd, mode)             # the umask must not narrow the mode
        os.ftruncate(fd, TAG_SIZE)
        st = os.fstat(fd)
        mm, tag = _map_tag(fd)
    except BaseException:
        os.close(fd)
        _unlink_quiet(tagpath)
        raise
    os.close(fd)
    msg_max, msgsize_max = system_limits()
    maxmsg = maxsize or msg_max
    if msgsize is None:
        msgsize = max(min(msgsize_max, DEFAULT_MSGSIZE), MIN_MSGSIZE)
    tag.init(KIND_OF_FAMILY[family], maxsize, msgsize,
             FLAG_ANONYMOUS if anonymous else 0, body)
    # Recorded before the kernel queue exists, so that `mpx ls` shows (and
    # `mpx rm` removes) a queue whose creator died half-way.
    _names.record(family, BACKEND, body, module=__name__, maxsize=maxsize,
                  msgsize=msgsize, anonymous=anonymous)
    try:
        mq = posix_ipc.MessageQueue("/" + body, posix_ipc.O_CREX | posix_ipc.O_NONBLOCK, mode,
                                    maxmsg, msgsize)
    except BaseException as e:
        _drop_tag(mm, tag)
        _unlink_quiet(tagpath)
        forget_all(BACKEND, body)
        err = _creation_error(e, body, maxmsg, msgsize)
        if err is e:
            raise
        raise err from None
    try:
        os.fchmod(mq.mqd, mode)
    except OSError:
        pass
    tag.publish()
    return _Res(body, mq, mm, tag, (st.st_dev, st.st_ino), mode)


def _attach_existing(family, body, maxsize, msgsize, deadline, mode):
    """The queue's resources, or None when it is being removed (retry). The
    tag and then the kernel queue pass the trust rule before anything is
    read from them."""
    fd = _open_tag(body, os.O_RDWR)
    try:
        st = _trust_tag(fd, body, mode)
        while st.st_size < TAG_SIZE:
            if time.monotonic() > deadline:
                raise _half_created(family, body)
            time.sleep(0.001)           # the creator is between open and ftruncate
            st = os.fstat(fd)
        mm, tag = _map_tag(fd)
    finally:
        os.close(fd)
    try:
        header = settled_header(tag, deadline,
                                f"{_tagpath(body)} exists but is not an mpx queue tag",
                                lambda: _half_created(family, body), _what(body))
        if header is None:
            _drop_tag(mm, tag)
            return None
        check_compatible(header, body, BACKEND, family, maxsize, msgsize)
        try:
            mq = posix_ipc.MessageQueue("/" + body, posix_ipc.O_NONBLOCK)
        except posix_ipc.ExistentialError:
            raise FileNotFoundError(
                f"mpx posix queue {body!r} is damaged: its tag exists but its kernel queue "
                f"does not (was it removed outside mpx?); remove what is left with "
                f"`python -m mpx rm {body}`") from None
        except posix_ipc.PermissionsError:
            raise _permission_error(body, "the queue") from None
        try:
            _trust_queue(mq, body, mode)
            _check_kernel(header, mq, body)
        except BaseException:
            mq.close()
            raise
    except BaseException:
        _drop_tag(mm, tag)
        raise
    return _Res(body, mq, mm, tag, (st.st_dev, st.st_ino), mode)


def _half_created(family, body):
    return half_created(BACKEND, family, body, __name__)


def _open(family, body, anonymous, maxsize, msgsize, mode, create):
    """(resources, created) for queue `body`, creating it if `create`."""
    def try_create():
        try:
            fd = os.open(_tagpath(body), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, mode)
        except FileExistsError:         # (a symbolic link too: O_EXCL never follows one)
            return None
        except PermissionError:
            raise _permission_error(body, "/dev/shm") from None
        return _create(fd, family, body, anonymous, maxsize, msgsize, mode)

    return open_queue(BACKEND, body, anonymous, try_create if create else None,
                      lambda deadline: _attach_existing(family, body, maxsize, msgsize,
                                                        deadline, mode),
                      OPEN_WAIT)


# ---------------------------------------------------------------------------
# Removing


def _unlink_held(res):
    """unlink() of a queue this process holds: the mapped tag and the tag's
    identity say which queue it is, so nothing is opened (this works in a
    process out of descriptors, and never touches a queue made since under
    the same name)."""
    body = res.body
    try:
        st = os.stat(_tagpath(body), follow_symlinks=False)
    except FileNotFoundError:
        forget_all(BACKEND, body)       # removed already
        return
    if (st.st_dev, st.st_ino) != res.ident:
        return                          # removed already; the name is another queue's now
    if res.tag is not None:
        res.tag.mark_dead()             # openers back off until the tag is gone
    _unlink_names(body, None)


def _unlink_names(body, uid):
    """Unlink the kernel queue, the side segments (`uid`'s only, unless
    None) and the tag of `body`, then forget its record (kept if the side
    segments could not be listed). By name: no descriptor is held."""
    tagpath = _tagpath(body)
    try:
        posix_ipc.unlink_message_queue("/" + body)
    except posix_ipc.ExistentialError:
        pass
    except posix_ipc.PermissionsError:
        raise _permission_error(body, "the queue") from None
    swept = sweep_sides(BACKEND, body, uid)
    try:
        _unlink_quiet(tagpath)
    except PermissionError:
        raise _permission_error(body, "its tag " + tagpath) from None
    finish_removal(BACKEND, body, _what(body), swept)


def _queue_owner(body):
    """The uid owning kernel queue /`body`, or None if there is none."""
    try:
        mq = posix_ipc.MessageQueue("/" + body, 0, read=True, write=False)
    except posix_ipc.ExistentialError:
        return None
    try:
        return os.fstat(mq.mqd).st_uid
    finally:
        mq.close()


def _remove_checked(body):
    """Remove queue `body` for `python -m mpx rm`, trusting only what the
    objects themselves say: the tag is a regular file (never a symlink)
    owned by the caller's euid and carries mpx's magic number (or is all
    zeros: a creator that died before writing it), and the kernel queue
    under the name is the caller's too."""
    me = os.geteuid()
    tagpath = _tagpath(body)

    def not_mine(what, uid):
        return PermissionError(errno.EPERM, (
            f"permission denied removing {_what(body)}: {what} belongs to uid {uid}; "
            f"`python -m mpx rm` removes only the caller's own objects (uid {me})"))

    try:
        fd = _open_tag(body, os.O_RDWR)
    except FileNotFoundError:
        fd = None
    if fd is None:
        if _queue_owner(body) is not None:
            raise NotAnMpxQueue(
                f"not removing POSIX message queue /{body}: it has no mpx tag ({tagpath}), "
                "so nothing shows it is mpx's (remove it with "
                f"posix_ipc.unlink_message_queue('/{body}') if it is yours)")
        _unlink_names(body, me)         # only leftovers: side segments, the record
        return
    try:
        st = os.fstat(fd)
        if st.st_uid != me:
            raise not_mine(f"its tag {tagpath}", st.st_uid)
        if not stat.S_ISREG(st.st_mode):
            raise NotAnMpxQueue(f"not removing {tagpath}: it is not a regular file, so "
                                "not an mpx queue tag")
        magic = os.pread(fd, len(MAGIC), 0) if st.st_size >= TAG_SIZE else b""
        if magic not in (MAGIC, b"", bytes(len(MAGIC))):
            raise NotAnMpxQueue(f"not removing {tagpath}: it does not start with mpx's "
                                "magic number, so it is not an mpx queue tag")
        owner = _queue_owner(body)
        if owner is not None and owner != me:
            raise not_mine(f"its kernel queue /{body}", owner)
        if magic == MAGIC:
            mm, tag = _map_tag(fd)
            tag.mark_dead()
            _drop_tag(mm, tag)
    finally:
        os.close(fd)
    _unlink_names(body, me)


# ---------------------------------------------------------------------------
# The queue classes


class PosixQueue(MessageQueueBase):
    """A FIFO queue on a POSIX message queue (``multiprocessing.Queue`` API)."""

    _backend = BACKEND
    _family = "Queue"

    def __init__(self, res, serializer, created, anonymous, header_maxsize):
        self._mq = res.mq
        self._fd = res.mq.mqd
        self._msend = res.mq.send
        self._mrecv = res.mq.receive
        self._setup(res, serializer, res.body, anonymous, created, res.tag,
                    SideStore(BACKEND, res.body, os.fstat(res.mq.mqd).st_mode & 0o777,
                              res.mode),
                    res.mq.max_message_size, header_maxsize)

    @classmethod
    def _attach(cls, state, serializer):
        body, anonymous, mode = state
        res, created = _open(cls._family, body, anonymous, 0, None, mode, False)
        return cls(res, serializer, created, anonymous, res.tag.header()["maxsize"])

    def _state(self):
        # The opener's mode travels too: a child accepts what its parent did.
        return (self.name, self.anonymous, self._res.mode)

    def _aio_fd(self):
        # (mpx._aio) readable while a message waits.
        self._check_open()
        return self._fd

    # Every descriptor is opened O_NONBLOCK and waits happen in poll(2) on it
    # (an mqd is a pollable descriptor on Linux). posix_ipc's own blocking
    # calls run the signal handlers themselves and then discard whatever
    # exception a handler raised (all but KeyboardInterrupt), so an alarm-
    # based timeout could never interrupt them; Python's poll() retries
    # EINTR and lets every handler's exception through (PEP 475).
    #
    # The common case, block=True and timeout=None with a message that fits,
    # is one system call when the queue has room (put) or a message (get).
    def put(self, obj, block=True, timeout=None):
        if block and timeout is None:
            frame, suffix = self._encode(obj)
            if suffix is None:
                try:
                    return self._msend(frame)
                except _BusyError:
                    return self._send_wait(frame, 0, None)
            if self._closed:
                self._side.discard(suffix)      # (made before the check: the fast path's)
                self._check_open()
            return self._send_frame(frame, suffix, 0, None)
        self._put(obj, 0, block, timeout)

    def get(self, block=True, timeout=None):
        if block and timeout is None:
            try:
                msg = self._mrecv()[0]
            except _BusyError:
                msg = self._recv_wait(None)[0]
            return self._decode(msg)
        return super().get(block, timeout)

    # Fast paths of the base class's methods, which say what they do.
    put.__doc__ = MessageQueueBase.put.__doc__
    get.__doc__ = MessageQueueBase.get.__doc__

    def _waker(self):
        """This process's eventfd for the queue, made by the first wait.
        close() writes to it and nothing ever reads it, so every poll() on
        it ends at once from then on, whenever it started."""
        res = self._res
        pid = os.getpid()
        if res.efd_pid != pid:
            with _efd_lock:
                if res.efd_pid != pid:
                    if res.efd is not None:
                        os.close(res.efd)   # a forked child's copy of its parent's
                        res.efd = None
                    res.efd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
                    res.efd_pid = pid
        return res.efd

    def _when_ready(self, events, deadline, exc, call, *args):
        """Sleep until the descriptor reports `events`, then ``call(*args)``;
        again while another process gets there first (BusyError); raise `exc`
        once `deadline` (monotonic; None: never) has passed, RingClosed once
        another thread has closed the queue."""
        poller = select.poll()
        poller.register(self._fd, events)
        poller.register(self._waker(), select.POLLIN)
        while True:
            if self._closed:
                raise self._closed_while_waiting()
            if deadline is None:
                ms = None
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise exc
                ms = min(math.ceil(left * 1000), POLL_MAX_MS)
            poller.poll(ms)
            if self._closed:
                raise self._closed_while_waiting()
            try:
                return call(*args)
            except _BusyError:
                pass                    # another sender/receiver took the slot first
            except posix_ipc.Error:
                if self._closed:        # closed between the check and the call
                    raise self._closed_while_waiting() from None
                raise

    def _send(self, frame, prio, timeout):
        try:
            return self._mq.send(frame, None, prio)
        except _BusyError:
            if timeout == 0:
                raise Full from None
        self._send_wait(frame, prio, None if timeout is None else time.monotonic() + timeout)

    def _send_wait(self, frame, prio, deadline):
        return self._when_ready(select.POLLOUT, deadline, Full, self._mq.send, frame, None, prio)

    def _recv(self, timeout):
        try:
            return self._mq.receive()
        except _BusyError:
            if timeout == 0:
                raise Empty from None
        return self._recv_wait(None if timeout is None else time.monotonic() + timeout)

    def _recv_wait(self, deadline):
        return self._when_ready(select.POLLIN, deadline, Empty, self._mq.receive)

    def _qsize(self):
        return self._mq.current_messages

    def _full(self):
        mq = self._mq
        return mq.current_messages >= mq.max_messages

    @staticmethod
    def _close_handle(res):
        # Wake this process's waits first (see _waker); the eventfd itself
        # stays open until the object goes, as a wait may be just starting.
        if res.efd is not None and res.efd_pid == os.getpid():
            os.eventfd_write(res.efd, 1)
        if res.mq is not None:
            try:
                res.mq.close()
            except posix_ipc.Error:
                pass
            res.mq = None

    @staticmethod
    def _close_resources(res):
        PosixQueue._close_handle(res)
        if res.efd is not None:
            if res.efd_pid == os.getpid():
                os.close(res.efd)
            res.efd = res.efd_pid = None
        if res.tag is not None:
            _drop_tag(res.mm, res.tag)
            res.tag = res.mm = None

    @staticmethod
    def _unlink_resources(res):
        _unlink_held(res)


class PosixSimpleQueue(PosixQueue):
    """``multiprocessing.SimpleQueue`` API (and the rest of the Queue API)."""

    _family = "SimpleQueue"


class PosixJoinableQueue(JoinableMixin, PosixQueue):
    """Queue plus task_done()/join() that work across unrelated processes."""

    _family = "JoinableQueue"


class PosixPriorityQueue(PriorityMixin, PosixQueue):
    """put(item, priority=0, ...): the highest priority comes out first."""

    _family = "PriorityQueue"


_CLASSES = {"Queue": PosixQueue, "SimpleQueue": PosixSimpleQueue,
            "JoinableQueue": PosixJoinableQueue, "PriorityQueue": PosixPriorityQueue}


def _make(family, maxsize, serializer, name, mode, msgsize, create):
    body, anonymous, maxsize, msgsize, mode = queue_args(name, maxsize, msgsize, mode)
    res, created = _open(family, body, anonymous, maxsize, msgsize, mode, create)
    header_maxsize = maxsize if created else res.tag.header()["maxsize"]
    return _CLASSES[family](res, serializer, created, anonymous, header_maxsize)


# ---------------------------------------------------------------------------
# The registry's factories


def Queue(ctx, maxsize=0, *, serializer, name=None, mode=0o600, msgsize=None, create=True):
    """A FIFO queue on a POSIX message queue; see the module docstring."""
    return _make("Queue", maxsize, serializer, name, mode, msgsize, create)


def SimpleQueue(ctx, *, serializer, name=None, mode=0o600, msgsize=None, create=True):
    return _make("SimpleQueue", 0, serializer, name, mode, msgsize, create)


def JoinableQueue(ctx, maxsize=0, *, serializer, name=None, mode=0o600, msgsize=None,
                  create=True):
    return _make("JoinableQueue", maxsize, serializer, name, mode, msgsize, create)


def PriorityQueue(ctx, maxsize=0, *, serializer, name=None, mode=0o600, msgsize=None,
                  create=True):
    """A priority queue: ``put(item, priority=0)`` with priorities 0..32767,
    highest first, FIFO among equals; ``get_with_priority()``."""
    return _make("PriorityQueue", maxsize, serializer, name, mode, msgsize, create)


# ---------------------------------------------------------------------------
# `python -m mpx ls/rm`


def describe(entry):
    """What `mpx ls` shows of a recorded posix queue, or None if it is gone.
    The record is anyone's word, so only its name is used (checked like a
    constructor's); the tag is read with pread (never mapped: another user's
    file could shrink under a mapping) through a read-only descriptor that
    follows no symlink, and the kernel queue is opened read-only."""
    body = entry_body(entry)
    tagpath = _tagpath(body)
    info = {}
    try:
        fd = os.open(tagpath, os.O_RDONLY | OPEN_FOUND)
    except FileNotFoundError:
        fd = None
    except PermissionError:
        fd = None
        info["note"] = "tag not readable"
    except OSError as e:
        fd = None
        info["state"] = "not an mpx tag"
        info["error"] = ("the tag is a symbolic link" if e.errno == errno.ELOOP
                         else f"cannot open the tag: {e.strerror}")
    header = None
    if fd is not None:
        try:
            header, columns = _describe_tag(fd, body)
            info.update(columns)
        finally:
            os.close(fd)
    try:
        mq = posix_ipc.MessageQueue("/" + body, 0, read=True, write=False)
    except posix_ipc.ExistentialError:
        sides = count_sides(BACKEND, body)
        if "state" not in info and "note" not in info:
            if not sides:
                return None     # neither tag nor queue: the record is stale
            info["state"] = "removed"
        info["size"] = "(no kernel queue)"
        if sides:
            info["side_segments"] = sides
        return info
    except posix_ipc.PermissionsError:
        info["size"] = "?"
        info["note"] = "permission denied"
        return info
    try:
        cur, cap = mq.current_messages, mq.max_messages
        info.update(messages=cur, capacity=cap, msgsize=mq.max_message_size,
                    size=f"{cur}/{cap} msgs")
        if header is not None:
            try:
                _check_kernel(header, mq, body)
            except CorruptTag as e:
                info.update(state="corrupt", error=str(e))
    finally:
        mq.close()
    sides = count_sides(BACKEND, body)
    if sides:
        info["side_segments"] = sides
    return info


def _describe_tag(fd, body):
    """(header or None, `mpx ls` columns) of the tag open as `fd`; a damaged
    tag is described (with ``error``), not hidden."""
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        return None, {"state": "not an mpx tag", "error": "the tag is not a regular file"}
    if st.st_size < TAG_SIZE:
        return None, {"state": "half-created"}
    data = os.pread(fd, OFF_NAME + NAME_MAX_BYTES, 0)
    if data[:len(MAGIC)] == bytes(len(MAGIC)):
        return None, {"state": "half-created"}
    try:
        header = check_header(data)
    except NotAnMpxQueue as e:
        state = "corrupt" if data[:len(MAGIC)] == MAGIC else "not an mpx tag"
        return None, {"state": state, "error": str(e)}
    if header["name"] != body:
        return None, {"state": "corrupt",
                      "error": f"its tag is corrupt: it names the queue {header['name']!r}"}
    return header, ls_columns(header)


def remove(entry):
    """Remove a recorded posix queue (for `mpx rm`), and forget it: only the
    caller's own, after checking the objects themselves (``_remove_checked``)."""
    _remove_checked(entry_body(entry))
