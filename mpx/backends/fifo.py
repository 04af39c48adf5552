"""Backend "fifo": named pipes (mkfifo), so unrelated processes can talk.

One call on each side::

    conn = mpx.Pipe(backend="fifo", path="/tmp/jobs", end=0)   # process A
    conn = mpx.Pipe(backend="fifo", path="/tmp/jobs", end=1)   # process B

creates the FIFO pair at `path` if it does not exist (a directory, mode
0o700, holding the FIFO ``to0`` that end 0 reads and ``to1`` that end 1
reads; ``duplex=False`` uses only ``to0``: end 0 reads, end 1 writes), then
waits (up to `timeout` seconds, ``None`` = forever) for the other end to
open, and returns a Connection with the whole stdlib API. Messages keep
their boundaries (the stdlib's length-prefixed framing). A vanished peer
gives ``EOFError`` on ``recv`` and ``BrokenPipeError`` on ``send``.
``conn.unlink()`` (or ``mpx.connection.unlink_fifo(path)``, or
``python -m mpx rm PATH``) removes the pair; connections already open keep
working.

Without `path`, ``mpx.Pipe(backend="fifo")`` returns a connected pair whose
FIFOs are removed from the file system at once: nothing is left behind.
"""

import errno
import os
import select
import shutil
import stat
import tempfile
import time

from .. import _names
from ._conn import SerializedConnection

FAMILIES = ("Pipe",)

_HELLO = b"\x01"     # written once by each side after opening, so each
#                      reader knows its peer's writer is there before EOF means anything
_KIND = "Pipe"


def _fifo_names(duplex):
    return ("to0", "to1") if duplex else ("to0",)


class FifoConnection(SerializedConnection):
    """A connection over one or two named FIFOs."""

    _path = None

    def unlink(self):
        """Remove the FIFO pair's path (open connections keep working)."""
        if self._path is None:
            raise ValueError("this FIFO connection has no path (it was made without path=)")
        unlink(self._path)

    @property
    def path(self):
        return self._path

    def _reduce_extra(self):
        return {"path": self._path}

    def _rebuild_extra(self, extra):
        self._path = extra["path"]

    def __repr__(self):
        return f"<mpx FIFO connection {self._path or '(anonymous)'} fd={self._handle}>"


def _check_mode(mode):
    if not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise ValueError(f"mode must be an int permission mask like 0o600, not {mode!r}")


def _create_or_check(path, duplex, mode):
    """Make the FIFO directory and FIFOs if missing; check them if present."""
    # The directory needs x wherever the FIFOs grant r or w.
    dir_mode = 0o700 | (0o010 if mode & 0o060 else 0) | (0o001 if mode & 0o006 else 0)
    created = False
    try:
        os.mkdir(path, 0o700)
        os.chmod(path, dir_mode)
        created = True
    except FileExistsError:
        pass
    if not os.path.isdir(path):
        raise FileExistsError(errno.EEXIST, f"{path} exists and is not an mpx FIFO pair "
                              "(expected a directory holding FIFOs)", path)
    for name in _fifo_names(duplex):
        fifo = os.path.join(path, name)
        try:
            os.mkfifo(fifo, 0o600)
            os.chmod(fifo, mode)
        except FileExistsError:
            pass
        if not stat.S_ISFIFO(os.stat(fifo).st_mode):
            raise FileExistsError(errno.EEXIST, f"{fifo} exists and is not a FIFO", fifo)
    if created:
        _names.record(_KIND, "fifo", path, __name__, duplex=duplex)


def _open_write(fifo, deadline, peer):
    """Open `fifo` for writing once a reader has it open (ENXIO until then)."""
    delay = 0.001
    while True:
        try:
            return os.open(fifo, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
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


def _open_end(path, end, duplex, serializer, timeout):
    deadline = None if timeout is None else time.monotonic() + timeout
    peer = f"the other end ({1 - end}) of FIFO pair {path}"
    fds = []
    try:
        if duplex:
            rfd = os.open(os.path.join(path, f"to{end}"), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            fds.append(rfd)
            wfd = _open_write(os.path.join(path, f"to{1 - end}"), deadline, peer)
            fds.append(wfd)
            os.write(wfd, _HELLO)
            _await_hello(rfd, deadline, peer)
            _blocking(rfd, wfd)
            conn = FifoConnection(rfd, True, True, serializer=serializer, write_handle=wfd)
        elif end == 0:
            rfd = os.open(os.path.join(path, "to0"), os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            fds.append(rfd)
            _await_hello(rfd, deadline, peer)
            _blocking(rfd)
            conn = FifoConnection(rfd, True, False, serializer=serializer)
        else:
            wfd = _open_write(os.path.join(path, "to0"), deadline, peer)
            fds.append(wfd)
            os.write(wfd, _HELLO)
            _blocking(wfd)
            conn = FifoConnection(wfd, False, True, serializer=serializer)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    conn._path = path
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
    _create_or_check(path, duplex, mode)
    return _open_end(path, end, duplex, serializer, timeout)


def unlink(path):
    """Remove the FIFO pair at `path` (FileNotFoundError if there is none)."""
    path = os.path.abspath(os.fspath(path))
    names = [n for n in os.listdir(path)]      # raises FileNotFoundError, naming path
    if not set(names) <= {"to0", "to1"}:
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
