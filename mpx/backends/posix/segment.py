"""POSIX shared memory for SharedArray: named objects in /dev/shm, anonymous memfds.

Mechanism only: this module makes, maps and removes segments of raw bytes.
What lives in them (the array header, dtype, shape) is ``mpx.sharedarray``'s
business; nothing here imports it. The segment API, the same in
``posix.segment``, ``sysv.segment`` and ``file``, is described in ``_common.segment``.

How this backend does it
------------------------
Named segments are POSIX shared-memory objects, the files /dev/shm/NAME
that ``shm_open`` makes (opened here directly, as glibc does, with
O_NOFOLLOW); the name may be given with or without its leading slash.
Creating one reserves its pages with ``posix_fallocate``: /dev/shm is a
tmpfs of limited size, and a sparse object that outgrew it would kill the
process with SIGBUS at the first write; reserving turns that into an OSError
at creation. The object is built complete (header included) as an unnamed
O_TMPFILE in /dev/shm and then linked under its name, so the name never
holds a half-made array, whatever happens to its creator. Opening an
existing name applies ``mpx._trust``'s rule to the object before reading it.

Anonymous memfds are sealed against shrinking and growing (F_SEAL_SHRINK,
F_SEAL_GROW, then F_SEAL_SEAL): no process that reaches one can truncate it
under the others, which would kill them with SIGBUS. A named object cannot
be sealed (the kernel allows seals on memfds only): its owner, and anyone
its mode lets write, can still truncate it; mpx checks its size at attach.

Anonymous segments are ``memfd_create`` files: they have no name, so nothing
can leak in /dev/shm, and the kernel frees them when the last descriptor and
mapping are gone, even after SIGKILL. Another process (a spawn or forkserver
child, a Pool worker) reaches one by opening ``/proc/<pid>/fd/<fd>`` of a
process that holds it; ``ref`` lists the sender and the processes it got the
segment from, and the inode number is checked, so a reused pid or descriptor
is never mistaken for the segment. Each process therefore keeps a
descriptor open per segment it maps (named ones too: that is what lets a
handle reach a named segment whose name was already unlinked); it is closed
when the mapping goes. (Before Python 3.13 ``mmap.mmap`` holds a duplicate
of its own, so a mapping costs two descriptors there.) The limit: a handle can only be opened while some
process that had the segment is still holding it.
"""

import errno
import fcntl
import os

from .._common.segment import (
    NAME_MAX, FdSegment, attach_fd, check_size, create_linked, describe_path, entry_name,
    new_segment, not_found, open_existing, reattach_fd, record, remove_entry,
    unlink_recorded, unlink_verified)

__all__ = ["FAMILIES", "HASHED_NAMES", "PUBLISHES_WHOLE", "Segment", "canonical_name",
           "create", "attach", "reattach", "unlink", "describe", "remove", "unavailable"]

FAMILIES = ("SharedArray",)
BACKEND = "posix"
HASHED_NAMES = False
PUBLISHES_WHOLE = True

SHM_DIR = "/dev/shm"
_SEALS = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SEAL


def unavailable():
    if not hasattr(os, "memfd_create"):
        return "os.memfd_create is missing (needs Linux 3.17+)"
    if not os.path.isdir(SHM_DIR):
        return "/dev/shm is not mounted"
    return None


def canonical_name(name):
    if not isinstance(name, str):
        raise TypeError(f"a POSIX shared-memory name must be a str, not {type(name).__name__}")
    bare = name[1:] if name.startswith("/") else name
    if not bare or bare in (".", ".."):
        raise ValueError(f"{name!r} is not a usable POSIX shared-memory name")
    if "/" in bare or "\0" in bare:
        raise ValueError(f"POSIX shared-memory name {name!r} may not contain '/' "
                         f"(except one leading slash) or NUL; the file backend takes paths")
    try:
        raw = os.fsencode(bare)
    except UnicodeEncodeError:
        raise ValueError(f"POSIX shared-memory name {name!r} cannot be a file name "
                         f"(it holds a lone surrogate)") from None
    if len(raw) > NAME_MAX:
        raise ValueError(f"POSIX shared-memory name {name!r} is longer than {NAME_MAX} bytes")
    return bare


class Segment(FdSegment):
    """One mapping of a POSIX shared-memory object or memfd in this process."""

    _label = "posix"


def _path(name):
    return os.path.join(SHM_DIR, name)


def _what(name):
    return f"POSIX shared memory {name!r}"


def _missing(name):
    return lambda: not_found("POSIX shared-memory", name)


def _open(name, readonly):
    return open_existing(_path(name), readonly, _what(name), _missing(name))


def _seal(fd, size):
    os.ftruncate(fd, size)
    # Nobody who reaches this memfd (through /proc/<pid>/fd) may shrink it
    # under the processes that map it, nor change that (module docstring).
    fcntl.fcntl(fd, fcntl.F_ADD_SEALS, _SEALS)


def create(name, size, *, mode=0o600, meta=None, init=None):
    size = check_size(size)
    if name is None:
        # memfds live on the kernel's internal tmpfs, which has no size limit
        # of its own (memory limits apply): a sparse size is safe.
        fd = os.memfd_create("mpx-sharedarray", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        return new_segment(Segment, None, fd, mode, size, _seal, init)
    name = canonical_name(name)

    def reserve(fd, size):
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as e:
            raise OSError(e.errno, f"cannot reserve {size} bytes in /dev/shm for "
                          f"{name!r}: {os.strerror(e.errno)}") from None
    try:
        segment = create_linked(Segment, name, SHM_DIR, _path(name), mode, size, reserve, init)
    except FileExistsError:
        raise FileExistsError(errno.EEXIST, f"a POSIX shared-memory object named "
                              f"{name!r} already exists", name) from None
    record(BACKEND, __name__, name, meta)
    return segment


def attach(name, *, readonly=False, mode=0o600):
    name = canonical_name(name)
    return attach_fd(Segment, name, _path(name), readonly, mode, _what(name), _missing(name))


def reattach(ref, *, readonly=False):
    # Only a missing name sends it to the holders: a name this process may
    # not open is reported as such.
    return reattach_fd(ref, readonly, Segment, _open, FileNotFoundError, "POSIX",
                       "the shared memory")


def unlink(name, *, identity=None):
    name = canonical_name(name)

    def remove():
        try:
            unlink_verified(_path(name), _what(name), _missing(name), identity)
        except PermissionError as e:
            if e.errno != errno.EACCES and e.errno != errno.EPERM or e.filename is None:
                raise
            raise PermissionError(e.errno, f"no permission to unlink POSIX shared memory "
                                  f"{name!r} ({e.strerror})", name) from None
    unlink_recorded(BACKEND, name, remove)


def _entry_path(entry):
    try:
        return _path(canonical_name(entry_name(entry)))
    except (TypeError, ValueError):
        return None


def describe(entry):
    return describe_path(entry, _entry_path(entry))


def remove(entry):
    remove_entry(entry, canonical_name, unlink)
