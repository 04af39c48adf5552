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
wrong. The rule is mpx's one rule for named objects (``mpx._trust``).

`timeout` is read as everywhere in mpx: None or infinity wait for ever, a
negative number does not wait, NaN is a ValueError.

Without `path`, ``mpx.Pipe(backend="fifo")`` returns a connected pair whose
FIFOs are removed from the file system at once: nothing is left behind, also
when making it fails (out of descriptors, say).

Removing a pair (``unlink``, and ``remove`` for ``python -m mpx rm``) looks
at the pair itself, never through a symbolic link: only a directory holding
nothing but a pair's FIFOs and lock files is removed, and ``remove`` (whose
record anybody may have written) removes only a pair that this user owns.
"""

import errno
import fcntl
import os
import select
import stat
import tempfile
import time

from multiprocessing import reduction

from .. import _names
from .._timeouts import seconds
from .._trust import check_mode, check_owner
from ._common.conn import SerializedConnection

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

    def _handles_error(self):
        # multiprocessing.reduction.send_handle/recv_handle (see
        # mpx.connection): a FIFO carries bytes only, never descriptors.
        return OSError(errno.ENOTSOCK, "the fifo backend's Pipe cannot carry file "
                       "descriptors (a FIFO passes bytes only): send_handle/recv_handle "
                       "need a Pipe with backend='shm' (the default) or backend='pipe' "
                       "(duplex)")

    def __repr__(self):
        return f"<mpx FIFO connection {self._path or '(anonymous)'} fd={self._handle}>"


def _dir_mode(mode):
    # The directory needs x wherever the FIFOs grant r or w, and nothing else.
    return 0o700 | (0o010 if mode & 0o060 else 0) | (0o001 if mode & 0o006 else 0)


def _lock_mode(mode):
    # A lock file is opened read-only: whoever may write a FIFO may read it.
    return mode | ((mode & 0o222) << 1)


def _refuse(name, why):
    raise PermissionError(errno.EACCES, f"refusing to use {name}: {why}", name)


def _check_safe(name, st, allowed, mode):
    """Refuse `name` (stat `st`) unless mpx's rule for named objects admits
    it: this user (or root) owns it, or `mode` opts in to other users; and it
    grants group/others nothing beyond `allowed` (the directory and the lock
    files get other bits than the FIFOs for the same `mode`)."""
    check_owner(name, uids=(st.st_uid,), perm=st.st_mode, mode=mode, allowed=allowed)


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
    try:
        os.mkdir(path, 0o700)
    except FileExistsError:
        return _check_pair(path, duplex, mode, False)
    try:
        dfd = _check_pair(path, duplex, mode, True)
    except BaseException:
        # Nothing may stay behind that no record names: take back what was
        # made. (_check_pair did, through the directory's descriptor, if it
        # got one; out of descriptors, this goes by name.)
        _remove_made(path)
        raise
    _names.record(_KIND, "fifo", path, __name__, duplex=duplex)
    return dfd


def _remove_made(path, dfd=None):
    """Remove the pair this process just made at `path`: through `dfd`, the
    directory's descriptor, or else by name (which needs no free
    descriptor) if `path` is still a directory of this user's (not, say, a
    symbolic link put in its place)."""
    if dfd is None:
        try:
            st = os.lstat(path)
        except OSError:
            return
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            return
    for name in (*_fifo_names(True), *_LOCKS):
        try:
            if dfd is None:
                os.unlink(os.path.join(path, name))
            else:
                os.unlink(name, dir_fd=dfd)
        except FileNotFoundError:
            pass
        except OSError:
            return
    try:
        os.rmdir(path)
    except OSError:
        pass


def _check_pair(path, duplex, mode, created):
    """The directory's descriptor, once it and what is in it passed the
    checks (and, with `created`, once the FIFOs and locks are made)."""
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
        if created:
            _remove_made(path, dfd)
        os.close(dfd)
        raise
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
    names = _fifo_names(duplex)
    fds = {}
    try:
        for name in names:
            fifo = os.path.join(path, name)
            os.mkfifo(fifo, 0o600)
            # Readers first (non-blocking open), then writers find them there.
            fds["r" + name] = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        for name in names:
            fds["w" + name] = os.open(os.path.join(path, name), os.O_WRONLY | os.O_CLOEXEC)
        _blocking(*fds.values())
    except BaseException:
        # Out of descriptors, say: give back the ones opened so far.
        for fd in fds.values():
            os.close(fd)
        raise
    finally:
        # Open descriptors keep working without the names. By name, not
        # with shutil.rmtree, which needs descriptors of its own.
        _remove_made(path)
    if duplex:
        return (FifoConnection(fds["rto0"], True, True, serializer=serializer, write_handle=fds["wto1"]),
                FifoConnection(fds["rto1"], True, True, serializer=serializer, write_handle=fds["wto0"]))
    return (FifoConnection(fds["rto0"], True, False, serializer=serializer),
            FifoConnection(fds["wto0"], False, True, serializer=serializer))


def Pipe(ctx, duplex=True, *, serializer, path=None, end=None, timeout=None, mode=0o600):
    """See the module docstring."""
    timeout = seconds(timeout)
    if path is None:
        if end is not None:
            raise ValueError("end= is only meaningful with path=: each process opens "
                             "its end of a named FIFO pair by path")
        return _anonymous_pair(duplex, serializer)
    if end not in (0, 1) or isinstance(end, bool):
        raise ValueError(f"end must be 0 or 1 (which side of the FIFO pair this process "
                         f"opens), not {end!r}")
    mode = check_mode(mode)
    path = os.path.abspath(os.fspath(path))
    dfd = _open_pair(path, duplex, mode)
    try:
        return _open_end(path, dfd, end, duplex, serializer, timeout, mode)
    finally:
        os.close(dfd)


def unlink(path):
    """Remove the FIFO pair at `path` (FileNotFoundError if there is none).

    Only a directory holding nothing but a pair's FIFOs and lock files is
    removed, and nothing is followed through a symbolic link. Works without
    a free file descriptor too (by name, where the directory around the
    pair lets nobody else swap it meanwhile)."""
    path = os.path.abspath(os.fspath(path))
    _remove_pair(path, mine=False)
    _names.forget(_KIND, "fifo", path)


_PAIR_TYPES = {"to0": stat.S_ISFIFO, "to1": stat.S_ISFIFO,
               "end0.lock": stat.S_ISREG, "end1.lock": stat.S_ISREG}


def _remove_pair(path, mine):
    """Remove the pair at `path` after looking at the pair itself: a real
    directory (not a link to one) holding only a pair's entries, each of its
    type; with `mine`, one that holds a FIFO ``to0`` and that this user owns
    (root removes only root's). PermissionError or ValueError, naming the
    path, otherwise; FileNotFoundError if nothing is there."""
    st = os.lstat(path)                          # raises FileNotFoundError, naming path
    if stat.S_ISLNK(st.st_mode):
        raise ValueError(f"{path} is a symbolic link, not an mpx FIFO pair; not removing it")
    if not stat.S_ISDIR(st.st_mode):
        raise ValueError(f"{path} is not an mpx FIFO pair (not a directory); not removing it")
    try:
        dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.EMFILE, errno.ENFILE):
            return _remove_pair_by_name(path, mine)
        if e.errno in (errno.ELOOP, errno.ENOTDIR):
            raise ValueError(f"{path} was replaced by something else than an mpx FIFO "
                             "pair; not removing it") from None
        raise
    try:
        dst = os.fstat(dfd)
        if (dst.st_dev, dst.st_ino) != (st.st_dev, st.st_ino):
            raise ValueError(f"{path} was replaced while being removed; not removing it")
        _check_remover(path, dst, mine)
        try:
            names = os.listdir(dfd)
        except OSError as e:
            if e.errno not in (errno.EMFILE, errno.ENFILE):
                raise
            names = [n for n in _PAIR_TYPES if _exists_at(dfd, n)]
        _check_entries(path, names, mine,
                       lambda name: os.stat(name, dir_fd=dfd, follow_symlinks=False))
        for name in names:
            os.unlink(name, dir_fd=dfd)
    finally:
        os.close(dfd)
    # The directory is empty now; had someone swapped it meanwhile, rmdir
    # removes at worst their empty directory, or fails.
    os.rmdir(path)


def _exists_at(dfd, name):
    try:
        os.stat(name, dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return False
    return True


def _check_remover(path, st, mine):
    me = os.geteuid()
    if mine and st.st_uid != me:
        raise PermissionError(errno.EPERM, f"refusing to remove {path}: it is owned by uid "
                              f"{st.st_uid}, not by this user (uid {me})", path)


def _check_entries(path, names, mine, lstat_of):
    extra = sorted(set(names) - set(_PAIR_TYPES))
    if extra:
        raise ValueError(f"{path} holds more than an mpx FIFO pair ({extra}); "
                         "not removing it")
    for name in names:
        if not _PAIR_TYPES[name](lstat_of(name).st_mode):
            raise ValueError(f"{os.path.join(path, name)} is not what an mpx FIFO pair "
                             "holds there; not removing the pair")
    if mine and "to0" not in names:
        raise ValueError(f"{path} is not an mpx FIFO pair (it has no FIFO to0); "
                         "not removing it")


def _remove_pair_by_name(path, mine):
    """`_remove_pair` without a free descriptor: by path, which is safe only
    while nobody else can rename entries of the directory around the pair
    (it is this user's or root's, and others cannot write it or it is
    sticky, as /tmp is)."""
    parent = os.stat(os.path.dirname(path))
    me = os.geteuid()
    if parent.st_uid not in (me, 0) or (parent.st_mode & 0o022
                                         and not parent.st_mode & stat.S_ISVTX):
        raise OSError(errno.EMFILE, f"out of file descriptors, and removing {path} by name "
                      f"is not safe in a directory others may write", path)
    _check_remover(path, os.lstat(path), mine)
    names = [n for n in _PAIR_TYPES if os.path.lexists(os.path.join(path, n))]
    _check_entries(path, names, mine, lambda name: os.lstat(os.path.join(path, name)))
    for name in names:
        os.unlink(os.path.join(path, name))
    try:
        os.rmdir(path)
    except OSError as e:
        if e.errno != errno.ENOTEMPTY:
            raise
        raise ValueError(f"{path} holds more than an mpx FIFO pair; removed the pair's "
                         "entries, not the directory") from None


# --- the command line's view (see mpx._names) ------------------------------
# A record is untrusted input (another user may have written it): only its
# path is taken from it, and every decision is made on the pair itself.

def _entry_path(entry):
    name = entry.get("name") if isinstance(entry, dict) else None
    if not isinstance(name, str) or not os.path.isabs(name) or os.path.normpath(name) != name:
        raise ValueError(f"the record does not name a FIFO pair by its absolute path "
                         f"({name!r})")
    return name


def describe(entry):
    """What ``ls`` shows of the pair the record names; None when no pair is
    there (gone, or replaced by something else). Reads only: the directory
    is opened read-only and never through a symbolic link."""
    path = _entry_path(entry)
    try:
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode):
            return None
        dfd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        if e.errno in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            return None
        raise
    try:
        names = set(os.listdir(dfd))
        if not names <= set(_PAIR_TYPES):
            return None
        fifo = os.stat("to0", dir_fd=dfd, follow_symlinks=False)
    except FileNotFoundError:
        return None
    finally:
        os.close(dfd)
    if not stat.S_ISFIFO(fifo.st_mode):
        return None
    return {"size": "-", "path": path, "duplex": "to1" in names,
            "mode": f"{stat.S_IMODE(fifo.st_mode):#o}"}


def remove(entry):
    """Remove the pair the record names: only a pair this user owns, looked
    at on the pair itself (see _remove_pair); the record goes with it, or
    when nothing is there any more."""
    path = _entry_path(entry)
    try:
        _remove_pair(path, mine=True)
    except FileNotFoundError:
        pass
    _names.forget(_KIND, "fifo", path)
