"""SysV shared memory for SharedArray (``shmget``/``shmat`` through ``sysv_ipc``).

Mechanism only (the array header and everything numpy is
``mpx.sharedarray``'s business): this module offers the segment API that
``mpx.backends._segment`` describes, with ``HASHED_NAMES`` true, and
``key_for(name)`` besides.

Names: SysV segments have integer keys, not names, so a name is hashed to a
key (BLAKE2b, 31 bits). Two names can share a key; ``HASHED_NAMES`` tells the
layer above to check the name stored in the segment, so such a collision
gives a clear error instead of someone else's array.

Anonymous segments use the Linux behaviour documented in shmctl(2): the
creator marks a fresh IPC_PRIVATE segment for removal (IPC_RMID) right after
attaching it, and Linux still lets any process with permission attach it by
id while at least one process has it attached. The kernel then frees it when
the last process detaches or exits (SIGKILL included), so an anonymous
segment can never leak. The same id-based attach lets a handle reach a named
segment whose name was already unlinked, while someone still has it.

``sysv_ipc`` gives the attached address but no way to tie the detach to the
lifetime of buffers taken from it, so a ctypes array over the attached bytes
owns the attachment: ``shmdt`` runs when that array, and every memoryview and
numpy array built on it, is gone.

Two details of ``sysv_ipc`` matter here: a newly created segment is filled
with ``init_character`` by a memset unless it is attached read-only, which is
why segments are created with mode 0o400, then given their real mode and
re-attached read-write (the kernel already zero-fills them, and a memset
would touch every page of a huge array at once); and opening by key attaches
read-only exactly when the requested mode lacks owner write (0o400), which is
how ``readonly`` attaches work.
"""

import ctypes
import errno
import hashlib
import time
import weakref

import sysv_ipc

from ._segment import (
    check_size, describe_row, gone_error, not_found, record, remove_quietly, unlink_recorded)

__all__ = ["FAMILIES", "HASHED_NAMES", "Segment", "canonical_name", "create",
           "attach", "reattach", "unlink", "describe", "remove", "key_for"]

FAMILIES = ("SharedArray",)
BACKEND = "sysv"
HASHED_NAMES = True


def canonical_name(name):
    if not isinstance(name, str):
        raise TypeError(f"a SysV SharedArray name must be a str, not {type(name).__name__}")
    if not name or "\0" in name:
        raise ValueError(f"{name!r} is not a usable SysV SharedArray name")
    return name


def key_for(name):
    """The SysV key a name maps to (positive, never IPC_PRIVATE)."""
    digest = hashlib.blake2b(canonical_name(name).encode("utf-8"), digest_size=8,
                             person=b"mpx.sarray").digest()
    return (int.from_bytes(digest[:4], "little") & 0x7FFFFFFF) or 1


def _detach(shm):
    try:
        shm.detach()
    except sysv_ipc.Error:
        pass


class Segment:
    """One attachment of a SysV segment in this process."""

    def __init__(self, shm, name, readonly):
        self.name = name
        self.key = key_for(name) if name is not None else None
        self.identity = shm.id
        self.size = shm.size
        self.readonly = readonly
        raw = (ctypes.c_ubyte * self.size).from_address(shm.address)
        # Detach when the last buffer over these bytes is gone (never
        # earlier: a view of a detached segment would crash). In a fork child
        # the inherited attachment is the child's own and is detached there.
        detacher = weakref.finalize(raw, _detach, shm)
        detacher.atexit = False
        view = memoryview(raw)
        self.buffer = view.toreadonly() if readonly else view

    @property
    def ref(self):
        return (self.identity, self.name)

    def flush(self):
        pass

    def __repr__(self):
        what = repr(self.name) if self.name else "anonymous"
        return (f"<sysv segment {what} id {self.identity} {self.size} bytes"
                f"{' read-only' if self.readonly else ''}>")


def _remove_quietly(shm):
    try:
        shm.remove()
    except sysv_ipc.Error:
        pass


def _segment_or_detach(shm, name, readonly):
    try:
        return Segment(shm, name, readonly)
    except BaseException:
        _detach(shm)
        raise


def create(name, size, *, mode=0o600, meta=None):
    size = check_size(size)
    if name is None:
        key = sysv_ipc.IPC_PRIVATE
    else:
        name = canonical_name(name)
        key = key_for(name)
    try:
        # Read-only at first so sysv_ipc skips its memset (module docstring).
        shm = sysv_ipc.SharedMemory(key, sysv_ipc.IPC_CREX, mode=0o400, size=size)
    except sysv_ipc.ExistentialError:
        raise FileExistsError(errno.EEXIST, f"a SysV shared-memory segment with key "
                              f"{key:#x} (the key of the name {name!r}) already exists",
                              name) from None
    except ValueError:
        raise ValueError(f"the kernel refused a SysV segment of {size} bytes "
                         f"(see /proc/sys/kernel/shmmax and shmall)") from None
    except sysv_ipc.Error as e:
        raise OSError(f"cannot create a SysV shared-memory segment: {e}") from None
    try:
        shm.mode = mode
        shm.detach()
        shm.attach()
        if name is None:
            shm.remove()    # freed by the kernel at the last detach (docstring)
        segment = Segment(shm, name, False)
    except BaseException:
        _remove_quietly(shm)
        _detach(shm)
        raise
    if name is not None:
        record(BACKEND, __name__, name, meta, key=key)
    return segment


def _not_found(name):
    return not_found("SysV", name, f" (no segment with key {key_for(name):#x})")


def _open_by_key(name, mode):
    for attempt in range(10):
        try:
            return sysv_ipc.SharedMemory(key_for(name), 0, mode=mode)
        except sysv_ipc.ExistentialError:
            raise _not_found(name) from None
        except sysv_ipc.PermissionsError as e:
            # A new segment has mode 0o400 for the few microseconds before its
            # creator sets the real mode (module docstring): retry briefly
            # before calling it a real permission problem.
            if attempt == 9:
                raise PermissionError(errno.EACCES, f"no permission to attach SysV "
                                      f"segment {name!r} ({e})", name) from None
            time.sleep(0.005)


def attach(name, *, readonly=False):
    name = canonical_name(name)
    return _segment_or_detach(_open_by_key(name, 0o400 if readonly else 0o600), name, readonly)


def reattach(ref, *, readonly=False):
    shmid, name = ref
    try:
        shm = sysv_ipc.attach(int(shmid), flags=sysv_ipc.SHM_RDONLY if readonly else 0)
    except ValueError:      # EINVAL: no such id any more
        raise gone_error("SysV", name, f"had it attached (segment id {shmid})") from None
    except sysv_ipc.PermissionsError as e:
        raise PermissionError(errno.EACCES, f"no permission to attach SysV segment id "
                              f"{shmid} ({e})") from None
    return _segment_or_detach(shm, name, readonly)


def unlink(name):
    name = canonical_name(name)

    def remove():
        # sysv_ipc can only find a segment's id by attaching it; mode 0 asks
        # for no permission and attaches read-only, briefly.
        shm = _open_by_key(name, 0)
        try:
            shm.remove()
        except sysv_ipc.PermissionsError as e:
            raise PermissionError(errno.EPERM, f"no permission to remove SysV segment "
                                  f"{name!r} ({e})", name) from None
        finally:
            _detach(shm)
    unlink_recorded(BACKEND, name, remove)


def _segments():
    """{key: (shmid, size)} of the SysV segments on this machine."""
    found = {}
    try:
        with open("/proc/sysvipc/shm") as f:
            next(f)
            for line in f:
                fields = line.split()
                if len(fields) >= 4:
                    found[int(fields[0])] = (int(fields[1]), int(fields[3]))
    except (OSError, ValueError, StopIteration):
        pass
    return found


def describe(entry):
    try:
        key = key_for(entry["name"])
    except (TypeError, ValueError, KeyError):
        return None
    seg = _segments().get(key)
    if seg is None:
        return None
    shmid, segment_bytes = seg
    return describe_row(entry, segment_bytes, key=f"{key:#x}", id=shmid)


def remove(entry):
    remove_quietly(unlink, entry["name"])
