"""SysV shared memory for SharedArray (``shmget``/``shmat`` through ``sysv_ipc``).

Mechanism only (the array header and everything numpy is
``mpx.sharedarray``'s business): this module offers the segment API that
``mpx.backends._common.segment`` describes, with ``HASHED_NAMES`` true, and
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
attached a second time read-write before the first attachment goes (the
kernel already zero-fills them, and a memset would touch every page of a
huge array at once); and opening by key attaches read-only exactly when the
requested mode lacks owner write (0o400), which is how ``readonly`` attaches
work.

Trust and leftovers: a key exists from its first moment, so unlike the
posix and file backends a SysV name can hold a segment whose header is not
written yet (``PUBLISHES_WHOLE`` is False). Its creator stays attached from
``shmget`` until the header is written, and the named-object record is
written before the header, so a segment with a zero header that nobody else
has attached (or whose creator is dead) is one whose creator died making
it: ``unlink(name)`` and ``python -m mpx rm`` remove it when it is the
caller's (owner and creator uid). Attaching applies ``mpx._trust``'s rule to
the segment's uid, cuid and mode before reading a byte of it.
"""

import ctypes
import errno
import hashlib
import os
import time
import weakref

import sysv_ipc

from ... import _names
from ... import _trust
from .._common.segment import (
    KIND, InvalidSegmentError, check_magic, check_removable, check_size, describe_row,
    entry_name, gone_error, not_found, record, remove_entry, unlink_recorded)

__all__ = ["FAMILIES", "HASHED_NAMES", "PUBLISHES_WHOLE", "Segment", "canonical_name",
           "create", "attach", "reattach", "unlink", "describe", "remove", "key_for"]

FAMILIES = ("SharedArray",)
BACKEND = "sysv"
HASHED_NAMES = True
PUBLISHES_WHOLE = False


def canonical_name(name):
    if not isinstance(name, str):
        raise TypeError(f"a SysV SharedArray name must be a str, not {type(name).__name__}")
    if not name or "\0" in name:
        raise ValueError(f"{name!r} is not a usable SysV SharedArray name")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        raise ValueError(f"SysV SharedArray name {name!r} holds a lone surrogate") from None
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


def _pid_gone(pid):
    if pid <= 0:
        return False        # not visible from here (another pid namespace): unknown
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        pass
    return False


def _abandoned(shm):
    """True when a segment with no header will never get one: its creator is
    dead, or nobody but this one attachment has it (a creator stays attached
    until its header is written)."""
    try:
        return _pid_gone(shm.creator_pid) or shm.number_attached <= 1
    except sysv_ipc.Error:
        return False


class Segment:
    """One attachment of a SysV segment in this process."""

    def __init__(self, shm, name, readonly):
        self.name = name
        self.key = key_for(name) if name is not None else None
        self.identity = shm.id
        self.size = shm.size
        self.readonly = readonly
        self._shm = shm
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

    def creator_gone(self):
        """True when the process that created the segment has died: a zero
        header will never be written."""
        try:
            return _pid_gone(self._shm.creator_pid)
        except sysv_ipc.Error:
            return False

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


def create(name, size, *, mode=0o600, meta=None, init=None):
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
    rw = None
    try:
        if name is not None:
            # Recorded before the header, so that python -m mpx rm finds a
            # segment whose creator dies before writing it.
            record(BACKEND, __name__, name, meta, key=key)
        shm.mode = mode
        # The read-write attachment is made before the read-only one goes:
        # the segment is never without its creator attached until the
        # header is written (see _abandoned).
        rw = sysv_ipc.attach(shm.id)
        _detach(shm)
        if name is None:
            rw.remove()     # freed by the kernel at the last detach (docstring)
        segment = Segment(rw, name, False)
        if init is not None:
            init(segment.buffer)
    except BaseException:
        _remove_quietly(shm)
        _detach(shm)
        if rw is not None:
            _detach(rw)
        if name is not None:
            _names.forget(KIND, BACKEND, name)
        raise
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


def _what(name):
    return f"SysV SharedArray {name!r} (key {key_for(name):#x})"


def attach(name, *, readonly=False, mode=0o600):
    name = canonical_name(name)
    shm = _open_by_key(name, 0o400 if readonly else 0o600)
    try:
        # Nothing is read before the owner, creator and mode pass the rule.
        _trust.check_owner(_what(name), uids=(shm.uid, shm.cuid), perm=shm.mode, mode=mode)
    except BaseException:
        _detach(shm)
        raise
    return _segment_or_detach(shm, name, readonly)


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


def unlink(name, *, identity=None):
    name = canonical_name(name)
    what = _what(name)

    def remove():
        # sysv_ipc can only find a segment's id by attaching it; mode 0 asks
        # for no write permission and attaches read-only, briefly. SysV
        # needs no file descriptor for any of this.
        shm = _open_by_key(name, 0)
        try:
            if identity is not None:
                if shm.id != identity:
                    raise FileNotFoundError(errno.ENOENT, f"the {what} was already unlinked "
                                            f"(the name now belongs to another object)", name)
            else:
                check_removable(what, (shm.uid, shm.cuid))
                head = shm.read(8, 0) if shm.size >= 8 else b""
                if head == bytes(8):
                    if not _abandoned(shm):
                        raise InvalidSegmentError(
                            f"refusing to remove {what}: it has no SharedArray header yet "
                            f"and its creator (pid {shm.creator_pid}) or another process "
                            f"still has it attached; try again once it is finished")
                else:
                    check_magic(what, head)
            try:
                shm.remove()
            except sysv_ipc.PermissionsError as e:
                raise PermissionError(errno.EPERM, f"no permission to remove {what} ({e})",
                                      name) from None
        finally:
            _detach(shm)
    unlink_recorded(BACKEND, name, remove)


def _segments():
    """{key: (shmid, size, owner uid, attached)} of the SysV segments here."""
    found = {}
    try:
        with open("/proc/sysvipc/shm") as f:
            next(f)
            for line in f:
                fields = line.split()
                if len(fields) >= 8:
                    found[int(fields[0])] = (int(fields[1]), int(fields[3]), int(fields[7]),
                                             int(fields[6]))
    except (OSError, ValueError, StopIteration):
        pass
    return found


def describe(entry):
    try:
        key = key_for(entry_name(entry))
    except (TypeError, ValueError):
        return None
    seg = _segments().get(key)
    if seg is None:
        return None
    shmid, segment_bytes, uid, attached = seg
    return describe_row(entry, segment_bytes, key=f"{key:#x}", id=shmid, owner_uid=uid,
                        attached=attached)


def remove(entry):
    remove_entry(entry, canonical_name, unlink)
