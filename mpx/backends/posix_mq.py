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
  segments, unaffected by the umask.

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
import time

import posix_ipc

from .. import _names
from ._mq_common import (
    MAGIC, MIN_MSGSIZE, OPEN_WAIT, Empty, Full, FLAG_ANONYMOUS, KIND_OF_FAMILY, SHM_DIR,
    TAG_SIZE, JoinableMixin, MessageQueueBase, NotAnMpxQueue, PriorityMixin, SideStore, Tag,
    check_compatible, count_sides, forget_all, half_created, ls_columns, normalize_name,
    open_queue, queue_args, read_int, settled_header, side_prefix, sweep_prefix,
    unpack_header, _unlink_quiet)
from ._mq_common import PRIORITY_MIN, PRIORITY_MAX  # noqa: F401  (documented here too)

FAMILIES = ("Queue", "SimpleQueue", "JoinableQueue", "PriorityQueue")

BACKEND = "posix"
DEFAULT_MSGSIZE = 8192
HARD_MSGMAX = 65536         # the kernel's ceiling even for privileged processes
HARD_MSGSIZEMAX = 16 * 1024 * 1024

_BusyError = posix_ipc.BusyError


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
    """What one process holds of one queue (the finalizer's view)."""

    __slots__ = ("body", "mq", "mm", "tag")

    def __init__(self, body, mq, mm, tag):
        self.body, self.mq, self.mm, self.tag = body, mq, mm, tag


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
    return _Res(body, mq, mm, tag)


def _attach_existing(family, body, maxsize, msgsize, deadline):
    """The queue's resources, or None when it is being removed (retry)."""
    tagpath = _tagpath(body)
    try:
        fd = os.open(tagpath, os.O_RDWR | os.O_CLOEXEC)
    except PermissionError:
        raise _permission_error(body, "its tag " + tagpath) from None
    try:
        while True:
            size = os.fstat(fd).st_size
            if size >= TAG_SIZE:
                break
            if time.monotonic() > deadline:
                raise _half_created(family, body)
            time.sleep(0.001)           # the creator is between open and ftruncate
        mm, tag = _map_tag(fd)
    finally:
        os.close(fd)
    try:
        header = settled_header(tag, deadline, f"{tagpath} exists but is not an mpx queue tag",
                                lambda: _half_created(family, body))
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
    except BaseException:
        _drop_tag(mm, tag)
        raise
    return _Res(body, mq, mm, tag)


def _half_created(family, body):
    return half_created(BACKEND, family, body, __name__)


def _open(family, body, anonymous, maxsize, msgsize, mode, create):
    """(resources, created) for queue `body`, creating it if `create`."""
    def try_create():
        try:
            fd = os.open(_tagpath(body), os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         mode)
        except FileExistsError:
            return None
        except PermissionError:
            raise _permission_error(body, "/dev/shm") from None
        return _create(fd, family, body, anonymous, maxsize, msgsize, mode)

    return open_queue(BACKEND, body, anonymous, try_create if create else None,
                      lambda deadline: _attach_existing(family, body, maxsize, msgsize,
                                                        deadline),
                      OPEN_WAIT)


def _remove(body):
    """Remove queue `body`: mark its tag dead (openers back off), unlink the
    kernel queue, sweep its side segments, unlink the tag, forget the record."""
    tagpath = _tagpath(body)
    try:
        fd = os.open(tagpath, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = None
    except PermissionError:
        raise _permission_error(body, "its tag " + tagpath) from None
    if fd is not None:
        try:
            if os.fstat(fd).st_size >= TAG_SIZE:
                mm, tag = _map_tag(fd)
                tag.mark_dead()
                _drop_tag(mm, tag)
        finally:
            os.close(fd)
    try:
        posix_ipc.unlink_message_queue("/" + body)
    except posix_ipc.ExistentialError:
        pass
    except posix_ipc.PermissionsError:
        raise _permission_error(body, "the queue") from None
    sweep_prefix(side_prefix(BACKEND, body))
    try:
        _unlink_quiet(tagpath)
    except PermissionError:
        raise _permission_error(body, "its tag " + tagpath) from None
    forget_all(BACKEND, body)


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
                    SideStore(BACKEND, res.body, os.fstat(res.mq.mqd).st_mode & 0o777),
                    res.mq.max_message_size, header_maxsize)

    @classmethod
    def _attach(cls, state, serializer):
        body, anonymous = state
        res, created = _open(cls._family, body, anonymous, 0, None, 0o600, False)
        return cls(res, serializer, created, anonymous, res.tag.header()["maxsize"])

    def _state(self):
        return (self.name, self.anonymous)

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

    def _when_ready(self, events, deadline, exc, call, *args):
        """Sleep until the descriptor reports `events`, then ``call(*args)``;
        again while another process gets there first (BusyError); raise `exc`
        once `deadline` (monotonic; None: never) has passed."""
        poller = select.poll()
        poller.register(self._fd, events)
        while True:
            if deadline is None:
                ms = None
            else:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise exc
                ms = math.ceil(left * 1000)
            poller.poll(ms)
            try:
                return call(*args)
            except _BusyError:
                pass                    # another sender/receiver took the slot first

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
        if res.mq is not None:
            try:
                res.mq.close()
            except posix_ipc.Error:
                pass
            res.mq = None

    @staticmethod
    def _close_resources(res):
        PosixQueue._close_handle(res)
        if res.tag is not None:
            _drop_tag(res.mm, res.tag)
            res.tag = res.mm = None

    @staticmethod
    def _unlink_resources(res):
        _remove(res.body)


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
    """What `mpx ls` shows of a recorded posix queue, or None if it is gone."""
    body = normalize_name(entry["name"])    # records are world-writable: re-check
    info = {}
    try:
        fd = os.open(_tagpath(body), os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        fd = None
    except PermissionError:
        fd = None
        info["note"] = "tag not readable"
    if fd is not None:
        try:
            if os.fstat(fd).st_size >= TAG_SIZE:
                mm = mmap.mmap(fd, TAG_SIZE, prot=mmap.PROT_READ)
                try:
                    view = memoryview(mm)
                    try:
                        header = unpack_header(view)
                    finally:
                        view.release()
                    info.update(ls_columns(header) if header["magic"] == MAGIC
                                else {"state": "not an mpx tag"})
                finally:
                    mm.close()
            else:
                info["state"] = "half-created"
        finally:
            os.close(fd)
    try:
        mq = posix_ipc.MessageQueue("/" + body, 0, read=True, write=False)
    except posix_ipc.ExistentialError:
        if "state" not in info:
            return None         # neither tag nor queue: the record is stale
        info["size"] = "(no kernel queue)"
        return info
    except posix_ipc.PermissionsError:
        info["size"] = "?"
        info["note"] = "permission denied"
        return info
    try:
        cur, cap = mq.current_messages, mq.max_messages
        info.update(messages=cur, capacity=cap, msgsize=mq.max_message_size,
                    size=f"{cur}/{cap} msgs")
    finally:
        mq.close()
    sides = count_sides(BACKEND, body)
    if sides:
        info["side_segments"] = sides
    return info


def remove(entry):
    """Remove a recorded posix queue (for `mpx rm`), and forget it."""
    _remove(normalize_name(entry["name"]))
