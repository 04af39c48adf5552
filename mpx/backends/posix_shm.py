"""POSIX shared memory for SharedArray: named objects in /dev/shm, anonymous memfds.

Mechanism only: this module makes, maps and removes segments of raw bytes.
What lives in them (the array header, dtype, shape) is ``mpx.sharedarray``'s
business; nothing here imports it. The segment API, the same in
``posix_shm``, ``sysv_shm`` and ``file``, is described in ``_segment``.

How this backend does it
------------------------
Named segments are ``posix_ipc`` shared-memory objects (/dev/shm/NAME); the
name may be given with or without its leading slash. Creating one reserves
its pages with ``posix_fallocate``: /dev/shm is a tmpfs of limited size, and
a sparse object that outgrew it would kill the process with SIGBUS at the
first write; reserving turns that into an OSError at creation.

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
import os

import posix_ipc

from ._segment import (
    NAME_MAX, FdSegment, check_size, describe_file, new_segment, not_found, reattach_fd,
    record, remove_quietly, segment_or_close, unlink_recorded)

__all__ = ["FAMILIES", "HASHED_NAMES", "Segment", "canonical_name", "create",
           "attach", "reattach", "unlink", "describe", "remove", "unavailable"]

FAMILIES = ("SharedArray",)
BACKEND = "posix"
HASHED_NAMES = False


def unavailable():
    if not hasattr(os, "memfd_create"):
        return "os.memfd_create is missing (needs Linux 3.17+)"
    if not os.path.isdir("/dev/shm"):
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
    if len(bare.encode()) > NAME_MAX:
        raise ValueError(f"POSIX shared-memory name {name!r} is longer than {NAME_MAX} bytes")
    return bare


class Segment(FdSegment):
    """One mapping of a POSIX shared-memory object or memfd in this process."""

    _label = "posix"


def _shm_open(name, flags, mode=0o600, readonly=False):
    """A new descriptor of /dev/shm/`name` (posix_ipc's is closed at once)."""
    try:
        shm = posix_ipc.SharedMemory("/" + name, flags, mode=mode, read_only=readonly)
    except posix_ipc.ExistentialError:
        if flags & posix_ipc.O_CREAT:
            raise FileExistsError(errno.EEXIST, f"a POSIX shared-memory object named "
                                  f"{name!r} already exists", name) from None
        raise not_found("POSIX shared-memory", name) from None
    except posix_ipc.PermissionsError as e:
        raise PermissionError(errno.EACCES, f"no permission to open POSIX shared memory "
                              f"{name!r} ({e})", name) from None
    try:
        return os.dup(shm.fd)   # os.dup's copy is close-on-exec
    finally:
        shm.close_fd()


def _unlink_quietly(name):
    try:
        posix_ipc.unlink_shared_memory("/" + name)
    except posix_ipc.Error:
        pass


def create(name, size, *, mode=0o600, meta=None):
    size = check_size(size)
    if name is None:
        # memfds live on the kernel's internal tmpfs, which has no size limit
        # of its own (memory limits apply): a sparse size is safe.
        return new_segment(Segment, None, os.memfd_create("mpx-sharedarray", os.MFD_CLOEXEC),
                           mode, size, os.ftruncate)
    name = canonical_name(name)

    def reserve(fd, size):
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as e:
            raise OSError(e.errno, f"cannot reserve {size} bytes in /dev/shm for "
                          f"{name!r}: {os.strerror(e.errno)}") from None
    segment = new_segment(Segment, name, _shm_open(name, posix_ipc.O_CREX, mode), mode, size,
                          reserve, lambda: _unlink_quietly(name))
    record(BACKEND, __name__, name, meta)
    return segment


def attach(name, *, readonly=False):
    name = canonical_name(name)
    return segment_or_close(Segment, name, _shm_open(name, 0, readonly=readonly), readonly)


def reattach(ref, *, readonly=False):
    # Only a missing name sends it to the holders: a name this process may
    # not open is reported as such.
    return reattach_fd(ref, readonly, Segment,
                       lambda name, readonly: _shm_open(name, 0, readonly=readonly),
                       FileNotFoundError, "POSIX", "the shared memory")


def unlink(name):
    name = canonical_name(name)

    def remove():
        try:
            posix_ipc.unlink_shared_memory("/" + name)
        except posix_ipc.ExistentialError:
            raise not_found("POSIX shared-memory", name) from None
        except posix_ipc.PermissionsError as e:
            raise PermissionError(errno.EPERM, f"no permission to unlink POSIX shared memory "
                                  f"{name!r} ({e})", name) from None
    unlink_recorded(BACKEND, name, remove)


def describe(entry):
    return describe_file(entry, lambda entry: "/dev/shm/" + canonical_name(entry["name"]))


def remove(entry):
    remove_quietly(unlink, entry["name"])
