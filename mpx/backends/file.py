"""File-backed shared memory for SharedArray: an mmap of a regular file.

Mechanism only; the array header and everything numpy is
``mpx.sharedarray``'s business, and nothing here imports it.

The segment API is the one described in ``mpx.backends.posix_shm`` (the
three SharedArray backends offer the same functions and ``Segment``
attributes): ``canonical_name``, ``create``, ``attach``, ``reattach``,
``unlink``, ``HASHED_NAMES``, ``describe``, ``remove``.

Names: a name containing '/' is a file path (made absolute, so a handle means
the same file in a process with another working directory); a bare name is a
file in ``$MPX_FILE_DIR``, by default ``/var/tmp/mpx-arrays`` (/var/tmp, unlike
/tmp, survives a reboot; the directory is sticky and world-writable like
/tmp, and every file in it is created 0o600). The data survive a reboot
because they live in the file; ``Segment.flush()`` forces them to disk.

Creating a file reserves its blocks with ``posix_fallocate``: a sparse file on
a full disk would kill the writing process with SIGBUS; a reservation fails
with an OSError at creation instead (and costs little on extent filesystems).

Anonymous segments (name None) are unlinked files in that directory
(``O_TMPFILE``), reached from other processes through
``/proc/<pid>/fd/<fd>`` of a holder, with the inode checked, exactly as the
posix backend does with its memfds; see there. The disk space returns when
the last process holding the file lets go.
"""

import errno
import mmap
import os
import stat
import sys
import tempfile
import weakref

from .. import _names
from ._procfd import open_from_holders

__all__ = ["FAMILIES", "HASHED_NAMES", "Segment", "canonical_name", "create",
           "attach", "reattach", "unlink", "describe", "remove", "array_dir"]

FAMILIES = ("SharedArray",)
BACKEND = "file"
KIND = "SharedArray"
HASHED_NAMES = False

DEFAULT_DIR = "/var/tmp/mpx-arrays"
_MAX_HOLDERS = 4
# mmap.mmap keeps a duplicate of the descriptor unless told not to (3.13+);
# before that a mapping costs two descriptors.
_NO_DUP = {"trackfd": False} if sys.version_info >= (3, 13) else {}
_NAME_MAX = 255


def array_dir():
    """Where bare names and anonymous arrays live."""
    return os.environ.get("MPX_FILE_DIR") or DEFAULT_DIR


def _ensure_dir():
    path = array_dir()
    if path == DEFAULT_DIR:
        try:
            os.mkdir(path, 0o1777)
            os.chmod(path, 0o1777)      # shared by all users, like /tmp
        except FileExistsError:
            pass
    else:
        os.makedirs(path, 0o700, exist_ok=True)
    return path


def canonical_name(name):
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str):
        raise TypeError(f"a file-backed SharedArray name must be a str or path, "
                        f"not {type(name).__name__}")
    if not name or "\0" in name:
        raise ValueError(f"{name!r} is not a usable file name")
    if "/" in name:
        return os.path.abspath(name)
    if name in (".", "..") or len(name.encode()) > _NAME_MAX:
        raise ValueError(f"{name!r} is not a usable file name")
    return name


def _path_of(name):
    return name if "/" in name else os.path.join(array_dir(), name)


def _close_quietly(fd):
    try:
        os.close(fd)
    except OSError:
        pass


class Segment:
    """One mapping of a file in this process."""

    def __init__(self, name, fd, readonly, origin=()):
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{_path_of(name) if name else 'descriptor'} is not a regular file")
        self.name = name
        self.path = _path_of(name) if name is not None else None
        self.size = st.st_size
        self.readonly = readonly
        self.identity = (st.st_dev, st.st_ino)
        self._fd = fd
        self._origin = tuple(origin)
        if self.size == 0:
            self._mmap = None       # not sized yet by its creator; nothing to map
            self.buffer = memoryview(b"")
            _close_quietly(fd)
            return
        access = mmap.ACCESS_READ if readonly else mmap.ACCESS_WRITE
        self._mmap = mmap.mmap(fd, self.size, access=access, **_NO_DUP)
        # The descriptor lives as long as the mapping: it is how other
        # processes reach the file once its name is gone.
        closer = weakref.finalize(self._mmap, _close_quietly, fd)
        closer.atexit = False
        self.buffer = memoryview(self._mmap)

    @property
    def ref(self):
        holders = [(os.getpid(), self._fd)]
        for pid, fd in self._origin:
            if len(holders) >= _MAX_HOLDERS:
                break
            if all(pid != p for p, _ in holders):
                holders.append((pid, fd))
        return (self.identity, self.name, tuple(holders))

    def flush(self):
        """Write dirty pages to the file now (msync)."""
        if self._mmap is not None and not self.readonly:
            self._mmap.flush()

    def __repr__(self):
        what = repr(self.path) if self.name else "anonymous"
        return f"<file segment {what} {self.size} bytes{' read-only' if self.readonly else ''}>"


def _segment_or_close(name, fd, readonly, origin=()):
    try:
        return Segment(name, fd, readonly, origin)
    except BaseException:
        _close_quietly(fd)
        raise


def _open_anonymous(directory, mode):
    try:
        return os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, mode)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise
    # A filesystem without O_TMPFILE: a private temporary name, gone at once.
    fd, path = tempfile.mkstemp(prefix=".mpx-anon-", dir=directory)
    os.unlink(path)
    return fd


def _reserve(fd, size, what):
    try:
        os.posix_fallocate(fd, 0, size)
    except OSError as e:
        if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
            os.ftruncate(fd, size)     # the filesystem cannot reserve; sparse it is
        else:
            raise OSError(e.errno, f"cannot reserve {size} bytes for {what}: "
                          f"{os.strerror(e.errno)}") from None


def create(name, size, *, mode=0o600, meta=None):
    size = int(size)
    if size <= 0:
        raise ValueError(f"segment size must be positive, got {size}")
    if name is None:
        fd = _open_anonymous(_ensure_dir(), mode)
        try:
            os.fchmod(fd, mode)
            _reserve(fd, size, f"an anonymous file-backed array in {array_dir()}")
            return Segment(None, fd, False)
        except BaseException:
            os.close(fd)
            raise
    name = canonical_name(name)
    path = _path_of(name) if "/" in name else os.path.join(_ensure_dir(), name)
    flags = os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC
    try:
        fd = os.open(path, flags, mode)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, f"a file already exists at {path!r}", path) from None
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"cannot create {path!r}: its directory "
                                f"does not exist", path) from None
    try:
        os.fchmod(fd, mode)     # os.open's mode went through the umask
        _reserve(fd, size, repr(path))
        segment = Segment(name, fd, False)
    except BaseException:
        _close_quietly(fd)
        try:
            os.unlink(path)
        except OSError:
            pass
        raise
    _names.record(KIND, BACKEND, name, module=__name__, path=path, **(meta or {}))
    return segment


def _open_existing(name, readonly):
    path = _path_of(name)
    flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC
    if "/" not in name:
        flags |= os.O_NOFOLLOW      # a shared sticky directory: never follow a planted link
    try:
        return os.open(path, flags)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"no file-backed SharedArray named {name!r} "
                                f"(no file {path!r})", name) from None


def attach(name, *, readonly=False):
    name = canonical_name(name)
    return _segment_or_close(name, _open_existing(name, readonly), readonly)


def reattach(ref, *, readonly=False):
    identity, name, holders = ref
    if name is not None:
        try:
            fd = _open_existing(name, readonly)
        except OSError:
            pass
        else:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) == tuple(identity):
                return _segment_or_close(name, fd, readonly, holders)
            os.close(fd)    # the path now holds another file
    fd, denied = open_from_holders(holders, identity, readonly)
    if fd is not None:
        return _segment_or_close(name, fd, readonly, holders)
    pids = ", ".join(str(p) for p, _ in holders)
    if denied:
        raise PermissionError(errno.EACCES, f"no permission to open the file held by "
                              f"process(es) {pids}")
    what = f"the file-backed SharedArray {name!r} was unlinked and" if name else \
        "the anonymous file-backed SharedArray is gone:"
    raise FileNotFoundError(errno.ENOENT, f"{what} every process that had it mapped "
                            f"(pids {pids}) has let it go before this handle was opened; "
                            f"keep a reference in the sender until the receiver has it, "
                            f"or give the array a name", name)


def unlink(name):
    name = canonical_name(name)
    try:
        os.unlink(_path_of(name))
    except FileNotFoundError:
        _names.forget(KIND, BACKEND, name)
        raise FileNotFoundError(errno.ENOENT, f"no file-backed SharedArray named {name!r} "
                                f"(no file {_path_of(name)!r})", name) from None
    _names.forget(KIND, BACKEND, name)


def _human(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def describe(entry):
    meta = entry.get("meta") or {}
    try:
        path = meta.get("path") or _path_of(canonical_name(entry["name"]))
        st = os.stat(path)
    except (OSError, ValueError, TypeError):
        return None
    nbytes = meta.get("bytes", st.st_size)
    return {"size": _human(nbytes), "bytes": nbytes, "shape": meta.get("shape"),
            "dtype": meta.get("dtype"), "segment_bytes": st.st_size, "path": path}


def remove(entry):
    meta = entry.get("meta") or {}
    path = meta.get("path")
    if path:
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        _names.forget(KIND, BACKEND, entry["name"])
        return
    try:
        unlink(entry["name"])
    except FileNotFoundError:
        pass
