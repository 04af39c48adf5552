"""File-backed shared memory for SharedArray: an mmap of a regular file.

Mechanism only (the array header and everything numpy is
``mpx.sharedarray``'s business): this module offers the segment API that
``mpx.backends._common.segment`` describes, with ``Segment.flush()`` writing the
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
A named file is built complete (header included) as an unnamed O_TMPFILE in
its directory and then linked at its path, so the path never holds a
half-made array. An existing path is opened with O_NOFOLLOW (a planted link
is refused) and ``mpx._trust``'s rule is applied to the file before a byte
of it is read. The shared default directory must be root's or the caller's,
and sticky if others may write it; anything else is refused.

Truncation: a regular file cannot be sealed, so its owner (and anyone its
mode lets write) can shrink it under the processes that map it, killing
them with SIGBUS at their next access. mpx refuses files of other users and
files others may write (unless the opener's ``mode=`` opts in), and checks
the size against the header at attach; the rest is up to the owner.

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

from ._common.segment import (
    NAME_MAX, FdSegment, attach_fd, check_size, create_linked, describe_path, entry_meta,
    entry_name, new_segment, not_found, open_existing, reattach_fd, record,
    unlink_recorded, unlink_verified)

__all__ = ["FAMILIES", "HASHED_NAMES", "PUBLISHES_WHOLE", "Segment", "canonical_name",
           "create", "attach", "reattach", "unlink", "describe", "remove", "array_dir"]

FAMILIES = ("SharedArray",)
BACKEND = "file"
HASHED_NAMES = False
PUBLISHES_WHOLE = True

DEFAULT_DIR = "/var/tmp/mpx-arrays"


def array_dir():
    """Where bare names and anonymous arrays live."""
    return os.environ.get("MPX_FILE_DIR") or DEFAULT_DIR


def _check_dir(path):
    """Refuse a directory that another user could use against the caller: not
    a directory (a link, say), owned by someone other than root or the
    caller, or writable by others without the sticky bit."""
    st = os.stat(path, follow_symlinks=False)
    me = os.geteuid()
    if not stat.S_ISDIR(st.st_mode):
        raise PermissionError(errno.EACCES, f"refusing to use {path!r} for SharedArrays: "
                              f"it is not a directory (a symbolic link?)", path)
    if st.st_uid not in (me, 0):
        raise PermissionError(errno.EACCES, f"refusing to use {path!r} for SharedArrays: "
                              f"it is owned by uid {st.st_uid}, not by this user (uid "
                              f"{me}) or root (set $MPX_FILE_DIR to a directory of yours)",
                              path)
    if st.st_mode & 0o022 and not st.st_mode & stat.S_ISVTX:
        raise PermissionError(errno.EACCES, f"refusing to use {path!r} for SharedArrays: "
                              f"others may write it and it is not sticky (mode "
                              f"{stat.S_IMODE(st.st_mode):#o})", path)


def _ensure_dir():
    path = array_dir()
    if path == DEFAULT_DIR:
        try:
            os.mkdir(path, 0o700)
            # Shared by all users, like /tmp. chmod on the directory itself
            # (opened without following a link), never on what a name leads to.
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fchmod(fd, 0o1777)
            finally:
                os.close(fd)
        except FileExistsError:
            pass
    else:
        os.makedirs(path, 0o700, exist_ok=True)
    _check_dir(path)
    return path


def canonical_name(name):
    if isinstance(name, os.PathLike):
        name = os.fspath(name)
    if not isinstance(name, str):
        raise TypeError(f"a file-backed SharedArray name must be a str or path, "
                        f"not {type(name).__name__}")
    if not name or "\0" in name:
        raise ValueError(f"{name!r} is not a usable file name")
    try:
        raw = os.fsencode(name)
    except UnicodeEncodeError:
        raise ValueError(f"{name!r} cannot be a file name (it holds a lone surrogate)") from None
    if "/" in name:
        return os.path.abspath(name)
    if name in (".", "..") or len(raw) > NAME_MAX:
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

    def _shown_name(self, name):
        return repr(_path_of(name)) if name else "the descriptor"

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


def create(name, size, *, mode=0o600, meta=None, init=None):
    size = check_size(size)
    if name is None:
        fd = _open_anonymous(_ensure_dir(), mode)
        return new_segment(Segment, None, fd, mode, size,
                           _reserver(f"an anonymous file-backed array in {array_dir()}"),
                           init)
    name = canonical_name(name)
    if "/" in name:
        path = name
        directory = os.path.dirname(path)
        if not os.path.isdir(directory):
            raise FileNotFoundError(errno.ENOENT, f"cannot create {path!r}: its directory "
                                    f"does not exist", path)
    else:
        directory = _ensure_dir()
        path = os.path.join(directory, name)
    try:
        segment = create_linked(Segment, name, directory, path, mode, size,
                                _reserver(repr(path)), init)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, f"a file already exists at {path!r}", path) from None
    record(BACKEND, __name__, name, meta, path=path)
    return segment


def _what(path):
    return f"file-backed SharedArray {path!r}"


def _missing(name):
    return lambda: not_found("file-backed", name, f" (no file {_path_of(name)!r})")


def _open(name, readonly):
    path = _path_of(name)
    return open_existing(path, readonly, _what(path), _missing(name))


def attach(name, *, readonly=False, mode=0o600):
    name = canonical_name(name)
    path = _path_of(name)
    return attach_fd(Segment, name, path, readonly, mode, _what(path), _missing(name))


def reattach(ref, *, readonly=False):
    # Any failure to open the path sends it to the holders: the path may have
    # become a link (which O_NOFOLLOW refuses) or something else, while the
    # holders still reach the file the handle names.
    return reattach_fd(ref, readonly, Segment, _open, OSError, "file-backed", "the file")


def _unlink_at(name, path, identity=None):
    unlink_recorded(BACKEND, name,
                    lambda: unlink_verified(path, _what(path), _missing(name), identity))


def unlink(name, *, identity=None):
    name = canonical_name(name)
    _unlink_at(name, _path_of(name), identity)


def _entry_path(entry):
    """(canonical name, path) of a record, or None. The record is untrusted:
    a path name is its own path; a bare name may live in the creator's
    $MPX_FILE_DIR, so the recorded path is taken only if it is an absolute,
    normal path ending in that very name."""
    try:
        name = canonical_name(entry_name(entry))
    except (TypeError, ValueError):
        return None
    if "/" in name:
        return name, name
    path = entry_meta(entry).get("path")
    if (isinstance(path, str) and os.path.isabs(path) and os.path.normpath(path) == path
            and os.path.basename(path) == name and "\0" not in path):
        return name, path
    return name, _path_of(name)


def describe(entry):
    found = _entry_path(entry)
    return describe_path(entry, found[1] if found else None)


def remove(entry):
    """Remove the recorded file only if it is the caller's own mpx array
    (checked on the file, opened without following a link); see
    ``unlink_verified``."""
    found = _entry_path(entry)
    if found is None:
        raise ValueError(f"the record {entry!r:.200} has no usable file name")
    name, path = found
    try:
        _unlink_at(name, path)
    except FileNotFoundError:
        pass
