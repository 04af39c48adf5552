"""POSIX shared memory for SharedArray: named objects in /dev/shm, anonymous memfds.

Mechanism only: this module makes, maps and removes segments of raw bytes.
What lives in them (the array header, dtype, shape) is ``mpx.sharedarray``'s
business; nothing here imports it.

Segment API (the same in ``posix_shm``, ``sysv_shm`` and ``file``)
------------------------------------------------------------------
``canonical_name(name) -> str``
    The name as ``Segment.name`` and the named-object record spell it;
    TypeError/ValueError saying why when this backend cannot use it.
``create(name, size, *, mode=0o600, meta=None) -> Segment``
    A new zero-filled segment of `size` bytes, mapped read-write. `name`
    None makes an anonymous segment (no name anywhere; freed when the last
    process mapping it lets go). FileExistsError naming it when the name is
    taken. `meta` (a JSON-able dict) goes into the record of named objects
    (``mpx._names``) that ``python -m mpx ls`` shows.
``attach(name, *, readonly=False) -> Segment``
    Map an existing named segment. FileNotFoundError naming it if none.
``reattach(ref, *, readonly=False) -> Segment``
    Map the exact segment that ``Segment.ref`` (made in any process, then
    pickled) describes, even when its name was unlinked meanwhile, as long as
    some process still has it mapped. FileNotFoundError when it is gone.
``unlink(name)``
    Remove the name (FileNotFoundError if there is none) and forget its
    record. Every existing mapping stays valid.
``HASHED_NAMES``
    True when two names may land on the same kernel object (SysV keys are
    hashes of names), so the layer above must check the name it finds.
``describe(entry)`` / ``remove(entry)``
    For the CLI's record of named objects (see ``mpx._names``).

A ``Segment`` has ``name`` (canonical, or None when anonymous), ``size``,
``readonly``, ``identity`` (a value naming this kernel object, equal in every
process that maps it), ``ref`` (a small tuple of builtins whose first item is
``identity``; ``reattach`` turns it into a mapping in another process),
``buffer`` (a memoryview of all ``size`` bytes, read-only when ``readonly``)
and ``flush()``. There is no close(): the mapping is released when the last
reference to ``buffer`` and to every buffer or array taken from it is gone, so
no view can ever point at unmapped memory.

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
import mmap
import os
import sys
import weakref

import posix_ipc

from .. import _names
from ._procfd import open_from_holders

__all__ = ["FAMILIES", "HASHED_NAMES", "Segment", "canonical_name", "create",
           "attach", "reattach", "unlink", "describe", "remove", "unavailable"]

FAMILIES = ("SharedArray",)
BACKEND = "posix"
KIND = "SharedArray"
HASHED_NAMES = False

# How many holders a ref lists: the sender first, then where it got it.
_MAX_HOLDERS = 4
# mmap.mmap keeps a duplicate of the descriptor unless told not to (3.13+);
# before that a mapping costs two descriptors.
_NO_DUP = {"trackfd": False} if sys.version_info >= (3, 13) else {}
_NAME_MAX = 255


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
    if len(bare.encode()) > _NAME_MAX:
        raise ValueError(f"POSIX shared-memory name {name!r} is longer than {_NAME_MAX} bytes")
    return bare


def _close_quietly(fd):
    try:
        os.close(fd)
    except OSError:
        pass


class Segment:
    """One mapping of a POSIX shared-memory object or memfd in this process."""

    def __init__(self, name, fd, readonly, origin=()):
        st = os.fstat(fd)
        self.name = name
        self.size = st.st_size
        self.readonly = readonly
        self.identity = (st.st_dev, st.st_ino)
        self._fd = fd
        self._origin = tuple(origin)
        if self.size == 0:
            # A named object whose creator has not sized it yet: nothing to
            # map; the caller sees size 0 and may try again.
            self._mmap = None
            self.buffer = memoryview(b"")
            _close_quietly(fd)
            return
        access = mmap.ACCESS_READ if readonly else mmap.ACCESS_WRITE
        self._mmap = mmap.mmap(fd, self.size, access=access, **_NO_DUP)
        # The descriptor lives exactly as long as the mapping (see the module
        # docstring); in a fork child the inherited copy is closed there.
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
        # tmpfs has no backing store to write to.
        pass

    def __repr__(self):
        what = repr(self.name) if self.name else "anonymous"
        return f"<posix segment {what} {self.size} bytes{' read-only' if self.readonly else ''}>"


def _not_found(name):
    return FileNotFoundError(errno.ENOENT,
                             f"no POSIX shared-memory SharedArray named {name!r}", name)


def _shm_open(name, flags, mode=0o600, readonly=False):
    """A new descriptor of /dev/shm/`name` (posix_ipc's is closed at once)."""
    try:
        shm = posix_ipc.SharedMemory("/" + name, flags, mode=mode, read_only=readonly)
    except posix_ipc.ExistentialError:
        if flags & posix_ipc.O_CREAT:
            raise FileExistsError(errno.EEXIST, f"a POSIX shared-memory object named "
                                  f"{name!r} already exists", name) from None
        raise _not_found(name) from None
    except posix_ipc.PermissionsError as e:
        raise PermissionError(errno.EACCES, f"no permission to open POSIX shared memory "
                              f"{name!r} ({e})", name) from None
    try:
        return os.dup(shm.fd)   # os.dup's copy is close-on-exec
    finally:
        shm.close_fd()


def create(name, size, *, mode=0o600, meta=None):
    size = int(size)
    if size <= 0:
        raise ValueError(f"segment size must be positive, got {size}")
    if name is None:
        fd = os.memfd_create("mpx-sharedarray", os.MFD_CLOEXEC)
        try:
            os.fchmod(fd, mode)
            # memfds live on the kernel's internal tmpfs, which has no size
            # limit of its own (memory limits apply): a sparse size is safe.
            os.ftruncate(fd, size)
            return Segment(None, fd, False)
        except BaseException:
            os.close(fd)
            raise
    name = canonical_name(name)
    fd = _shm_open(name, posix_ipc.O_CREX, mode)
    try:
        os.fchmod(fd, mode)     # shm_open's mode went through the umask
        try:
            os.posix_fallocate(fd, 0, size)
        except OSError as e:
            raise OSError(e.errno, f"cannot reserve {size} bytes in /dev/shm for "
                          f"{name!r}: {os.strerror(e.errno)}") from None
        segment = Segment(name, fd, False)
    except BaseException:
        _close_quietly(fd)
        try:
            posix_ipc.unlink_shared_memory("/" + name)
        except posix_ipc.Error:
            pass
        raise
    _names.record(KIND, BACKEND, name, module=__name__, **(meta or {}))
    return segment


def _segment_or_close(name, fd, readonly, origin=()):
    try:
        return Segment(name, fd, readonly, origin)
    except BaseException:
        _close_quietly(fd)
        raise


def attach(name, *, readonly=False):
    name = canonical_name(name)
    return _segment_or_close(name, _shm_open(name, 0, readonly=readonly), readonly)


def reattach(ref, *, readonly=False):
    identity, name, holders = ref
    if name is not None:
        try:
            fd = _shm_open(name, 0, readonly=readonly)
        except FileNotFoundError:
            pass
        else:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) == tuple(identity):
                return _segment_or_close(name, fd, readonly, holders)
            os.close(fd)    # the name now belongs to another object
    fd, denied = open_from_holders(holders, identity, readonly)
    if fd is not None:
        return _segment_or_close(name, fd, readonly, holders)
    pids = ", ".join(str(p) for p, _ in holders)
    if denied:
        raise PermissionError(errno.EACCES, f"no permission to open the shared memory held "
                              f"by process(es) {pids}")
    what = f"the POSIX SharedArray {name!r} was unlinked and" if name else \
        "the anonymous POSIX SharedArray is gone:"
    raise FileNotFoundError(errno.ENOENT, f"{what} every process that had it mapped "
                            f"(pids {pids}) has let it go before this handle was opened; "
                            f"keep a reference in the sender until the receiver has it, "
                            f"or give the array a name", name)


def unlink(name):
    name = canonical_name(name)
    try:
        posix_ipc.unlink_shared_memory("/" + name)
    except posix_ipc.ExistentialError:
        _names.forget(KIND, BACKEND, name)
        raise _not_found(name) from None
    except posix_ipc.PermissionsError as e:
        raise PermissionError(errno.EPERM, f"no permission to unlink POSIX shared memory "
                              f"{name!r} ({e})", name) from None
    _names.forget(KIND, BACKEND, name)


def _human(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def describe(entry):
    try:
        st = os.stat("/dev/shm/" + canonical_name(entry["name"]))
    except (OSError, ValueError, TypeError):
        return None
    meta = entry.get("meta") or {}
    nbytes = meta.get("bytes", st.st_size)
    return {"size": _human(nbytes), "bytes": nbytes, "shape": meta.get("shape"),
            "dtype": meta.get("dtype"), "segment_bytes": st.st_size,
            "path": "/dev/shm/" + canonical_name(entry["name"])}


def remove(entry):
    try:
        unlink(entry["name"])
    except FileNotFoundError:
        pass
