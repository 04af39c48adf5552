"""File-backed shared memory for SharedArray: an mmap of a regular file.

Mechanism only (the array header and everything numpy is
``mpx.sharedarray``'s business): this module offers the segment API that
``mpx.backends._segment`` describes, with ``Segment.flush()`` writing the
pages to the file, and ``array_dir()`` besides.

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
import os
import stat
import tempfile

from .. import _names
from ._segment import (
    KIND, NAME_MAX, FdSegment, check_size, describe_file, new_segment, not_found,
    reattach_fd, record, remove_quietly, segment_or_close, unlink_recorded)

__all__ = ["FAMILIES", "HASHED_NAMES", "Segment", "canonical_name", "create",
           "attach", "reattach", "unlink", "describe", "remove", "array_dir"]

FAMILIES = ("SharedArray",)
BACKEND = "file"
HASHED_NAMES = False

DEFAULT_DIR = "/var/tmp/mpx-arrays"


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
    if name in (".", "..") or len(name.encode()) > NAME_MAX:
        raise ValueError(f"{name!r} is not a usable file name")
    return name


def _path_of(name):
    return name if "/" in name else os.path.join(array_dir(), name)


class Segment(FdSegment):
    """One mapping of a file in this process (``path``: where it is; None
    when anonymous)."""

    _label = "file"

    def __init__(self, name, fd, readonly, origin=()):
        self.path = _path_of(name) if name is not None else None
        super().__init__(name, fd, readonly, origin)

    def _check(self, name, st):
        if not stat.S_ISREG(st.st_mode):
            raise ValueError(f"{self.path if name else 'descriptor'} is not a regular file")

    def flush(self):
        """Write dirty pages to the file now (msync)."""
        if self._mmap is not None and not self.readonly:
            self._mmap.flush()

    def _shown(self):
        return repr(self.path)


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


def _reserver(what):
    """``reserve(fd, size)`` for `what` (said in the error)."""
    def reserve(fd, size):
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as e:
            if e.errno in (errno.EOPNOTSUPP, errno.EINVAL):
                os.ftruncate(fd, size)     # the filesystem cannot reserve; sparse it is
            else:
                raise OSError(e.errno, f"cannot reserve {size} bytes for {what}: "
                              f"{os.strerror(e.errno)}") from None
    return reserve


def _unlink_quietly(path):
    try:
        os.unlink(path)
    except OSError:
        pass


def create(name, size, *, mode=0o600, meta=None):
    size = check_size(size)
    if name is None:
        fd = _open_anonymous(_ensure_dir(), mode)
        return new_segment(Segment, None, fd, mode, size,
                           _reserver(f"an anonymous file-backed array in {array_dir()}"))
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
    segment = new_segment(Segment, name, fd, mode, size, _reserver(repr(path)),
                          lambda: _unlink_quietly(path))
    record(BACKEND, __name__, name, meta, path=path)
    return segment


def _not_found(name):
    return not_found("file-backed", name, f" (no file {_path_of(name)!r})")


def _open_existing(name, readonly):
    path = _path_of(name)
    flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC
    if "/" not in name:
        flags |= os.O_NOFOLLOW      # a shared sticky directory: never follow a planted link
    try:
        return os.open(path, flags)
    except FileNotFoundError:
        raise _not_found(name) from None


def attach(name, *, readonly=False):
    name = canonical_name(name)
    return segment_or_close(Segment, name, _open_existing(name, readonly), readonly)


def reattach(ref, *, readonly=False):
    # Any failure to open the path sends it to the holders: the path may have
    # become a link (which O_NOFOLLOW refuses) or something else, while the
    # holders still reach the file the handle names.
    return reattach_fd(ref, readonly, Segment, _open_existing, OSError,
                       "file-backed", "the file")


def unlink(name):
    name = canonical_name(name)

    def remove():
        try:
            os.unlink(_path_of(name))
        except FileNotFoundError:
            raise _not_found(name) from None
    unlink_recorded(BACKEND, name, remove)


def _recorded_path(entry):
    return (entry.get("meta") or {}).get("path") or _path_of(canonical_name(entry["name"]))


def describe(entry):
    return describe_file(entry, _recorded_path)


def remove(entry):
    path = (entry.get("meta") or {}).get("path")
    if path:
        # The path it was made at (the record's name may be a bare name
        # whose directory, $MPX_FILE_DIR, differs in this process).
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        _names.forget(KIND, BACKEND, entry["name"])
        return
    remove_quietly(unlink, entry["name"])
