"""Backend "fifo": named pipes (mkfifo), so unrelated processes can talk.

One call on each side::

    conn = mpx.Pipe(backend="fifo", path="/tmp/jobs", end=0)   # process A
    conn = mpx.Pipe(backend="fifo", path="/tmp/jobs", end=1)   # process B

creates the FIFO pair at `path` if it does not exist (a directory, mode
0o700, holding the FIFO ``to0`` that end 0 reads and ``to1`` that end 1
reads; ``duplex=False`` uses only ``to0``: end 0 reads, end 1 writes; and
the lock files ``end0.lock``/``end1.lock``), then waits (up to `timeout`
seconds, ``None`` = forever) for the other end to open, and returns a
Connection with the whole stdlib API. Messages keep their boundaries (the
stdlib's length-prefixed framing). A vanished peer gives ``EOFError`` on
``recv`` and ``BrokenPipeError`` on ``send``. ``conn.unlink()`` (or
``mpx.connection.unlink_fifo(path)``, or ``python -m mpx rm PATH``) removes
the pair; connections already open keep working.

Each end has one owner at a time: opening an end that another connection
holds (in any process) fails at once with ``OSError(EBUSY)``, before
anything is written. The end is free again when its connection is closed,
or when every process holding it (a child it was passed to included) exits.

A pair that exists already is used only if it is safe: `path` itself is
not a symbolic link, everything in it is owned by this user (or root), and
nothing grants group or others more than `mode` does (the FIFOs' mode,
default 0o600; the directory gets x for group/others where `mode` grants
them r or w). Pass the same `mode` on both sides. With a `mode` that grants
group or others access, a pair made by another user is accepted too (that
is how two users share one). Otherwise ``PermissionError`` says what is
wrong.

Without `path`, ``mpx.Pipe(backend="fifo")`` returns a connected pair whose
FIFOs are removed from the file system at once: nothing is left behind.
"""

import errno
import fcntl
import os
import select
import shutil
import stat
import tempfile
import time

from multiprocessing import reduction

from .. import _names
from ._conn import SerializedConnection

FAMILIES = ("Pipe",)

_HELLO = b"\x01"     # written once by each side after opening, so each
#                      reader knows its peer's writer is there before EOF means anything
_KIND = "Pipe"
_LOCKS = ("end0.lock", "end1.lock")    # flock()ed by the connection holding that end


def _fifo_names(duplex):
    return ("to0", "to1") if duplex else ("to0",)


class FifoConnection(SerializedConnection):
    """A connection over one or two named FIFOs."""

    _path = None
    _lock = None        # descriptor of the end's flock()ed lock file (named pairs)

    def unlink(self):
        """Remove the FIFO pair's path (open connections keep working)."""
        if self._path is None:
            raise ValueError("this FIFO connection has no path (it was made without path=)")
        unlink(self._path)

    @property
    def path(self):
        return self._path

    def _close(self, _close=os.close):
        try:
            super()._close(_close)
        finally:
            # The FIFOs first, then the lock: a new owner of this end never
            # finds the old one's descriptors still open.
            if self._lock is not None:
                lock, self._lock = self._lock, None
                _close(lock)

    def _reduce_extra(self):
        # The lock travels as a duplicate of the same open file, so the
        # flock is shared: a child holding the connection holds the end.
        lock = None if self._lock is None else reduction.DupFd(self._lock)
        return {"path": self._path, "lock": lock}

    def _rebuild_extra(self, extra):
        self._path = extra["path"]
        if extra.get("lock") is not None:
            self._lock = extra["lock"].detach()

    def __repr__(self):
        return f"<mpx FIFO connection {self._path or '(anonymous)'} fd={self._handle}>"


def _check_mode(mode):
    if not isinstance(mode, int) or isinstance(mode, bool) or not 0 <= mode <= 0o777:
        raise ValueError(f"mode must be an int permission mask like 0o600, not {mode!r}")


def _dir_mode(mode):
    # The directory needs x wherever the FIFOs grant r or w, and nothing else.
    return 0o700 | (0o010 if mode & 0o060 else 0) | (0o001 if mode & 0o006 else 0)


def _lock_mode(mode):
    # A lock file is opened read-only: whoever may write a FIFO may read it.
    return mode | ((mode & 0o222) << 1)


def _refuse(name, why):
    raise PermissionError(errno.EACCES, f"refusing to use {name}: {why}", name)


def _check_safe(name, st, allowed, mode):
    """Refuse `name` (stat `st`) unless this user (or root) owns it and it
    grants group/others nothing beyond `allowed`."""
    me = os.geteuid()
    if st.st_uid not in (me, 0) and not mode & 0o066:
        _refuse(name, f"it is owned by uid {st.st_uid}, not by this user (uid {me}) or root "
                "(pass a mode= that grants group or others access to share a pair "
                "another user made)")
    beyond = st.st_mode & 0o077 & ~allowed
    if beyond:
        _refuse(name, f"its mode {stat.S_IMODE(st.st_mode):#o} gives group/others more than "
                f"mode={mode:#o} allows (open it with the mode it was made with, or chmod it)")


def _open_at(dfd, name, flags, path):
    """os.open `name` in the pair's directory, never following a symlink."""
    try:
        return os.open(name, flags | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
    except OSError as e:
        if e.errno == errno.ELOOP:
            _refuse(os.path.join(path, name), "it is a symbolic link")
        raise


def _open_pair(path, duplex, mode):
    """Make the FIFO pair's directory, FIFOs and lock files where missing,
    check what was there already, and return a descriptor of the directory
    (so that what was checked is what gets opened)."""
    created = False
    try:
        os.mkdir(path, 0o700)
        created = True
    except FileExistsError:
        pass
    st = os.lstat(path)
    if stat.S_ISLNK(st.st_mode):
        _refuse(path, "it is a symbolic link (give the FIFO pair's real path)")
    if not stat.S_ISDIR(st.st_mode):
        raise FileExistsError(errno.EEXIST, f"{path} exists and is not an mpx FIFO pair "
                              "(expected a directory holding FIFOs)", path)
    try:
        dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno not in (errno.ENOTDIR, errno.ELOOP):
            raise
        _refuse(path, "it was replaced while being opened")
    try:
        if created:
            os.fchmod(dfd, _dir_mode(mode))       # exactly, whatever the umask
        _check_safe(path, os.fstat(dfd), _dir_mode(mode), mode)
        for name in _fifo_names(duplex):
            try:
                os.mkfifo(name, 0o600, dir_fd=dfd)
                # Nobody else can add or swap entries in a directory that
                # passed the check (group/others get x at most).
                os.chmod(name, mode, dir_fd=dfd)
            except FileExistsError:
                pass
            fst = os.stat(name, dir_fd=dfd, follow_symlinks=False)
            full = os.path.join(path, name)
            if stat.S_ISLNK(fst.st_mode):
                _refuse(full, "it is a symbolic link")
            if not stat.S_ISFIFO(fst.st_mode):
                raise FileExistsError(errno.EEXIST, f"{full} exists and is not a FIFO", full)
            _check_safe(full, fst, mode, mode)
        for name in _LOCKS:
            try:
                fd = os.open(name, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                             | os.O_CLOEXEC, 0o600, dir_fd=dfd)
            except FileExistsError:
                continue      # checked when its end opens it
            try:
                os.fchmod(fd, _lock_mode(mode))
            finally:
                os.close(fd)
    except BaseException:
        os.close(dfd)
        raise
    if created:
        _names.record(_KIND, "fifo", path, __name__, duplex=duplex)
    return dfd


def _lock_end(dfd, path, end, mode):
    """Take end `end` of the pair for this connection (a held flock on its
    lock file), or fail at once if another connection has it."""
    name = _LOCKS[end]
    fd = _open_at(dfd, name, os.O_RDONLY, path)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            _refuse(os.path.join(path, name), "it is not a regular file")
        _check_safe(os.path.join(path, name), st, _lock_mode(mode), mode)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OSError(errno.EBUSY, f"end {end} of FIFO pair {path} is in use by another "
                          "connection (each end has one owner; it is free again once that "
                          "connection is closed or its processes exit)", path) from None
    except BaseException:
        os.close(fd)
        raise
    return fd


def _open_write(dfd, name, deadline, peer, path):
    """Open FIFO `name` for writing once a reader has it open (ENXIO until then)."""
    delay = 0.001
    while True:
        try:
            return _open_at(dfd, name, os.O_WRONLY | os.O_NONBLOCK, path)
        except OSError as e:
            if e.errno != errno.ENXIO:
                raise
        _sleep_or_time_out(deadline, delay, peer)
        delay = min(delay * 2, 0.05)


def _await_hello(rfd, deadline, peer):
    """Wait until the peer's writer has said hello on `rfd`."""
    poller = select.poll()
    poller.register(rfd, select.POLLIN)
    delay = 0.001
    while True:
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        poller.poll(None if left is None else left * 1000)
        try:
            data = os.read(rfd, 1)
        except BlockingIOError:
            data = None
        if data == _HELLO:
            return
        if data:
            raise ConnectionError(f"{peer} sent {data!r} instead of the mpx FIFO hello")
        # b"" (no writer yet) or nothing to read: wait a little and look again.
        _sleep_or_time_out(deadline, delay, peer)
        delay = min(delay * 2, 0.05)


def _sleep_or_time_out(deadline, delay, peer):
    if deadline is not None:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError(f"{peer} did not open within the timeout")
        delay = min(delay, left)
    time.sleep(delay)


def _blocking(*fds):
    for fd in fds:
        os.set_blocking(fd, True)


def _open_end(path, dfd, end, duplex, serializer, timeout, mode):
    deadline = None if timeout is None else time.monotonic() + timeout
    peer = f"the other end ({1 - end}) of FIFO pair {path}"
    # The end is ours before anything is opened or written: a second
    # opener must not leave a hello in a connection that is running.
    lock = _lock_end(dfd, path, end, mode)
    fds = [lock]
    try:
        if duplex:
            rfd = _open_at(dfd, f"to{end}", os.O_RDONLY | os.O_NONBLOCK, path)
            fds.append(rfd)
            wfd = _open_write(dfd, f"to{1 - end}", deadline, peer, path)
            fds.append(wfd)
            os.write(wfd, _HELLO)
            _await_hello(rfd, deadline, peer)
            _blocking(rfd, wfd)
            conn = FifoConnection(rfd, True, True, serializer=serializer, write_handle=wfd)
        elif end == 0:
            rfd = _open_at(dfd, "to0", os.O_RDONLY | os.O_NONBLOCK, path)
            fds.append(rfd)
            _await_hello(rfd, deadline, peer)
            _blocking(rfd)
            conn = FifoConnection(rfd, True, False, serializer=serializer)
        else:
            wfd = _open_write(dfd, "to0", deadline, peer, path)
            fds.append(wfd)
            os.write(wfd, _HELLO)
            _blocking(wfd)
            conn = FifoConnection(wfd, False, True, serializer=serializer)
    except BaseException:
        for fd in reversed(fds):      # the lock last
            os.close(fd)
        raise
    conn._path = path
    conn._lock = lock
    return conn


def _anonymous_pair(duplex, serializer):
    path = tempfile.mkdtemp(prefix="mpx-fifo-")
    try:
        fds = {}
        for name in _fifo_names(duplex):
            fifo = os.path.join(path, name)
            os.mkfifo(fifo, 0o600)
            # Readers first (non-blocking open), then writers find them there.
            fds["r" + name] = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        for name in _fifo_names(duplex):
            fds["w" + name] = os.open(os.path.join(path, name), os.O_WRONLY | os.O_CLOEXEC)
        _blocking(*fds.values())
    finally:
        shutil.rmtree(path, ignore_errors=True)    # open descriptors keep working
    if duplex:
        return (FifoConnection(fds["rto0"], True, True, serializer=serializer, write_handle=fds["wto1"]),
                FifoConnection(fds["rto1"], True, True, serializer=serializer, write_handle=fds["wto0"]))
    return (FifoConnection(fds["rto0"], True, False, serializer=serializer),
            FifoConnection(fds["wto0"], False, True, serializer=serializer))


def Pipe(ctx, duplex=True, *, serializer, path=None, end=None, timeout=None, mode=0o600):
    """See the module docstring."""
    if path is None:
        if end is not None:
            raise ValueError("end= is only meaningful with path=: each process opens "
                             "its end of a named FIFO pair by path")
        return _anonymous_pair(duplex, serializer)
    if end not in (0, 1) or isinstance(end, bool):
        raise ValueError(f"end must be 0 or 1 (which side of the FIFO pair this process "
                         f"opens), not {end!r}")
    if timeout is not None and timeout < 0:
        raise ValueError("timeout must be >= 0 or None")
    _check_mode(mode)
    path = os.path.abspath(os.fspath(path))
    dfd = _open_pair(path, duplex, mode)
    try:
        return _open_end(path, dfd, end, duplex, serializer, timeout, mode)
    finally:
        os.close(dfd)


def unlink(path):
    """Remove the FIFO pair at `path` (FileNotFoundError if there is none)."""
    path = os.path.abspath(os.fspath(path))
    if stat.S_ISLNK(os.lstat(path).st_mode):       # raises FileNotFoundError, naming path
        raise ValueError(f"{path} is a symbolic link, not an mpx FIFO pair; not removing it")
    names = os.listdir(path)
    if not set(names) <= {"to0", "to1", *_LOCKS}:
        raise ValueError(f"{path} holds more than an mpx FIFO pair ({sorted(names)}); "
                         "not removing it")
    for name in names:
        os.unlink(os.path.join(path, name))
    os.rmdir(path)
    _names.forget(_KIND, "fifo", path)


# --- the command line's view (see mpx._names) ------------------------------

def describe(entry):
    path = entry["name"]
    if not os.path.isdir(path):
        return None
    return {"size": "-", "path": path}


def remove(entry):
    try:
        unlink(entry["name"])
    except FileNotFoundError:
        _names.forget(_KIND, "fifo", entry["name"])
