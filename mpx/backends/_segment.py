"""What the three SharedArray backends (``posix_shm``, ``sysv_shm``, ``file``) share.

Not a backend (the registry never loads it). Mechanism only: segments of raw
bytes; what lives in them is ``mpx.sharedarray``'s business.

Segment API (every SharedArray backend module offers it)
--------------------------------------------------------
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

What is here
------------
- The helpers all three backends use: the size check, the ``unlink`` and
  ``remove`` bookkeeping of the named-object record, the ``describe`` row, the
  error for a handle whose segment is gone.
- ``FdSegment`` and ``reattach_fd``: the descriptor-based segments of the
  ``posix`` and ``file`` backends (a /dev/shm object or memfd, a file or an
  O_TMPFILE). Each process keeps the descriptor open as long as its mapping,
  and a handle (``ref``) lists the processes holding it, so another process
  can reopen an anonymous (or already unlinked) one through
  ``/proc/<pid>/fd/<fd>`` (see ``_procfd``). SysV segments are attached by id
  instead and need none of this.
"""

import errno
import mmap
import os
import sys
import weakref

from .. import _names
from ._procfd import open_from_holders

KIND = "SharedArray"

# Longest file or shared-memory object name (NAME_MAX).
NAME_MAX = 255
# How many holders a ref lists: the sender first, then where it got it.
MAX_HOLDERS = 4
# mmap.mmap keeps a duplicate of the descriptor unless told not to (3.13+);
# before that a mapping costs two descriptors.
_NO_DUP = {"trackfd": False} if sys.version_info >= (3, 13) else {}


def check_size(size):
    size = int(size)
    if size <= 0:
        raise ValueError(f"segment size must be positive, got {size}")
    return size


def close_quietly(fd):
    try:
        os.close(fd)
    except OSError:
        pass


# ---------------------------------------------------------------------------
# Descriptor-based segments (posix, file)


class FdSegment:
    """One mapping, in this process, of a segment reached by a descriptor.

    A backend subclass sets ``_label`` (for repr) and may override
    ``_check(name, st)`` (refuse a descriptor of the wrong kind of file),
    ``flush()`` and ``_shown()`` (how repr shows a named segment).
    """

    _label = "?"

    def __init__(self, name, fd, readonly, origin=()):
        st = os.fstat(fd)
        self._check(name, st)
        self.name = name
        self.size = st.st_size
        self.readonly = readonly
        self.identity = (st.st_dev, st.st_ino)
        self._fd = fd
        self._origin = tuple(origin)
        if self.size == 0:
            # A named segment whose creator has not sized it yet: nothing to
            # map; the caller sees size 0 and may try again.
            self._mmap = None
            self.buffer = memoryview(b"")
            close_quietly(fd)
            return
        access = mmap.ACCESS_READ if readonly else mmap.ACCESS_WRITE
        self._mmap = mmap.mmap(fd, self.size, access=access, **_NO_DUP)
        # The descriptor lives exactly as long as the mapping: it is how
        # other processes reach the segment once its name is gone (or when it
        # never had one). In a fork child the inherited copy is closed there.
        closer = weakref.finalize(self._mmap, close_quietly, fd)
        closer.atexit = False
        self.buffer = memoryview(self._mmap)

    def _check(self, name, st):
        """Raise if the descriptor is not a segment this backend can map."""

    @property
    def ref(self):
        holders = [(os.getpid(), self._fd)]
        for pid, fd in self._origin:
            if len(holders) >= MAX_HOLDERS:
                break
            if all(pid != p for p, _ in holders):
                holders.append((pid, fd))
        return (self.identity, self.name, tuple(holders))

    def flush(self):
        """Nothing to write back (a tmpfs has no backing store)."""

    def _shown(self):
        return repr(self.name)

    def __repr__(self):
        what = self._shown() if self.name else "anonymous"
        return (f"<{self._label} segment {what} {self.size} bytes"
                f"{' read-only' if self.readonly else ''}>")


def segment_or_close(cls, name, fd, readonly, origin=()):
    """``cls(name, fd, ...)``; the descriptor is closed if that fails."""
    try:
        return cls(name, fd, readonly, origin)
    except BaseException:
        close_quietly(fd)
        raise


def new_segment(cls, name, fd, mode, size, reserve, undo=None):
    """Give the fresh descriptor `fd` its mode and `size` bytes (``reserve(fd,
    size)``) and map it. On failure the descriptor is closed and `undo()`
    (which removes the name just created) runs."""
    try:
        os.fchmod(fd, mode)     # the mode given at open went through the umask
        reserve(fd, size)
        return cls(name, fd, False)
    except BaseException:
        close_quietly(fd)
        if undo is not None:
            undo()
        raise


def reattach_fd(ref, readonly, cls, open_named, retry_on, label, thing):
    """``reattach`` for descriptor-based segments: the name first, if it still
    leads to the same inode, else a holder's /proc/<pid>/fd/<fd>.

    `open_named(name, readonly)` opens the name; an error of a type in
    `retry_on` means "try the holders". `label` names the backend in the
    errors ("POSIX", "file-backed"), `thing` what a holder holds ("the
    shared memory", "the file")."""
    identity, name, holders = ref
    if name is not None:
        try:
            fd = open_named(name, readonly)
        except retry_on:
            pass
        else:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino) == tuple(identity):
                return segment_or_close(cls, name, fd, readonly, holders)
            os.close(fd)    # the name now belongs to another object
    fd, denied = open_from_holders(holders, identity, readonly)
    if fd is not None:
        return segment_or_close(cls, name, fd, readonly, holders)
    pids = ", ".join(str(p) for p, _ in holders)
    if denied:
        raise PermissionError(errno.EACCES, f"no permission to open {thing} held "
                              f"by process(es) {pids}")
    raise gone_error(label, name, f"had it mapped (pids {pids})")


# ---------------------------------------------------------------------------
# Errors and the named-object record (all three backends)


def gone_error(label, name, held):
    """The FileNotFoundError for a handle whose segment nobody holds any more;
    `held` says how processes held it ("had it mapped (pids 1, 2)")."""
    what = f"the {label} SharedArray {name!r} was unlinked and" if name else \
        f"the anonymous {label} SharedArray is gone:"
    return FileNotFoundError(errno.ENOENT, f"{what} every process that {held} has let it "
                             f"go before this handle was opened; keep a reference in the "
                             f"sender until the receiver has it, or give the array a name",
                             name)


def record(backend, module, name, meta, **where):
    """Add a new named segment to the record of named objects; `module` is
    the backend module (its ``describe``/``remove`` serve the CLI), `meta` the
    caller's JSON-able dict, `where` the backend's own fields."""
    _names.record(KIND, backend, name, module=module, **where, **(meta or {}))


def not_found(label, name, detail=""):
    """The FileNotFoundError for a name no segment has."""
    return FileNotFoundError(errno.ENOENT, f"no {label} SharedArray named {name!r}{detail}",
                             name)


def unlink_recorded(backend, name, remove):
    """``remove()`` the segment named `name`, then forget its record. When
    there is no such segment (``remove`` raises FileNotFoundError) the record
    is forgotten too and the error goes on; any other error keeps it."""
    try:
        remove()
    except FileNotFoundError:
        _names.forget(KIND, backend, name)
        raise
    _names.forget(KIND, backend, name)


def remove_quietly(unlink, name):
    """For the CLI's ``remove(entry)``: unlink `name`; already gone is fine."""
    try:
        unlink(name)
    except FileNotFoundError:
        pass


def human(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def describe_file(entry, path_of):
    """``describe`` for a segment that is a file at ``path_of(entry)``;
    None when there is none (or the record's name is not one)."""
    try:
        path = path_of(entry)
        st = os.stat(path)
    except (OSError, ValueError, TypeError):
        return None
    return describe_row(entry, st.st_size, path=path)


def describe_row(entry, segment_bytes, **where):
    """What ``python -m mpx ls`` shows of a SharedArray whose segment exists
    and holds `segment_bytes`; `where` adds the backend's own columns."""
    meta = entry.get("meta") or {}
    nbytes = meta.get("bytes", segment_bytes)
    return {"size": human(nbytes), "bytes": nbytes, "shape": meta.get("shape"),
            "dtype": meta.get("dtype"), "segment_bytes": segment_bytes, **where}
