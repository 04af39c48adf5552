"""What the three SharedArray backends (``posix.segment``, ``sysv.segment``, ``file``) share.

Not a backend (the registry never loads it). Mechanism only: segments of raw
bytes; what lives in them is ``mpx.sharedarray``'s business.

Segment API (every SharedArray backend module offers it)
--------------------------------------------------------
``canonical_name(name) -> str``
    The name as ``Segment.name`` and the named-object record spell it;
    TypeError/ValueError saying why when this backend cannot use it.
``create(name, size, *, mode=0o600, meta=None, init=None) -> Segment``
    A new zero-filled segment of `size` bytes, mapped read-write. `name`
    None makes an anonymous segment (no name anywhere; freed when the last
    process mapping it lets go). FileExistsError naming it when the name is
    taken. ``init(buffer)`` writes the header; where the backend can
    (``PUBLISHES_WHOLE``), it runs before the name exists, so no process
    ever finds a named segment without its header. `meta` (a JSON-able
    dict) goes into the record of named objects (``mpx._names``) that
    ``python -m mpx ls`` shows.
``attach(name, *, readonly=False, mode=0o600) -> Segment``
    Map an existing named segment. FileNotFoundError naming it if none;
    PermissionError, before a byte of it is read, when ``mpx._trust``'s
    rule refuses it for the opener's `mode` (another user's, or open to
    others beyond `mode`); InvalidSegmentError when it is not a regular
    file (a FIFO, a socket) or is a symbolic link.
``reattach(ref, *, readonly=False) -> Segment``
    Map the exact segment that ``Segment.ref`` (made in any process, then
    pickled) describes, even when its name was unlinked meanwhile, as long as
    some process still has it mapped. FileNotFoundError when it is gone.
``unlink(name, *, identity=None)``
    Remove the name (FileNotFoundError if there is none) and forget its
    record. Every existing mapping stays valid. With `identity` (of a
    segment this process maps) the name is removed only if it still leads
    to that segment, checked without opening anything (so it works with no
    free descriptor); without it, the object itself is checked first: it
    must be owned by the caller's effective uid (PermissionError) and be an
    mpx segment, i.e. start with ``MAGIC`` (InvalidSegmentError; SysV also
    removes a segment whose creator died before writing the header).
``HASHED_NAMES``
    True when two names may land on the same kernel object (SysV keys are
    hashes of names), so the layer above must check the name it finds.
``PUBLISHES_WHOLE``
    True when a name appears only once its segment is complete (posix and
    file build it unnamed and link it into place); False for SysV, whose
    key exists from the first moment, so a reader may meet a zero header
    while its creator is still writing it.
``describe(entry)`` / ``remove(entry)``
    For the CLI's record of named objects (see ``mpx._names``). The record
    is untrusted (anyone may have written it): ``describe`` only looks
    (lstat, a read-only peek at the magic, never through a link, never a
    mapping) and returns None when the object is gone; ``remove`` removes
    only what ``unlink(name)`` would (the caller's own mpx segment, checked
    on the object itself).

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
- ``MAGIC`` and ``InvalidSegmentError``: the one thing the segment layer
  knows of what ``mpx.sharedarray`` writes (a published segment starts with
  ``MAGIC``), so that removal can check it without importing the layer above.
- The helpers all three backends use: the size check, the trust check of
  an opened descriptor, creation under no name then linking into place,
  the ``unlink`` and ``remove`` bookkeeping of the named-object record, the
  ``describe`` row, the error for a handle whose segment is gone.
- ``FdSegment`` and ``reattach_fd``: the descriptor-based segments of the
  ``posix`` and ``file`` backends (a /dev/shm object or memfd, a file or an
  O_TMPFILE). Each process keeps the descriptor open as long as its mapping,
  and a handle (``ref``) lists the processes holding it, so another process
  can reopen an anonymous (or already unlinked) one through
  ``/proc/<pid>/fd/<fd>`` (see ``procfd``). SysV segments are attached by id
  instead and need none of this.
"""

import errno
import mmap
import os
import stat
import sys
import weakref

from ... import _names
from ... import _trust
from .procfd import open_from_holders

KIND = "SharedArray"

# The first 8 bytes of every published segment. ``mpx.sharedarray`` writes it
# (last, after the rest of its header); removal checks it here.
MAGIC = b"MPXARRAY"
# Longest file or shared-memory object name (NAME_MAX).
NAME_MAX = 255
# How many holders a ref lists: the sender first, then where it got it.
MAX_HOLDERS = 4
# mmap.mmap keeps a duplicate of the descriptor unless told not to (3.13+);
# before that a mapping costs two descriptors.
_NO_DUP = {"trackfd": False} if sys.version_info >= (3, 13) else {}
# Opening an existing object: never through a planted link, and never blocking
# (a FIFO planted under the name would block an O_RDONLY open for ever).
_OPEN_FLAGS = os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK
# Temporary names of segments being built where an unnamed file cannot be
# linked into place; the pid of the creator follows, so stale ones are swept.
INIT_PREFIX = ".mpx-sarray-init."


class InvalidSegmentError(ValueError):
    """A segment that is not an mpx SharedArray, is damaged, or was written by
    an mpx with another layout version."""


InvalidSegmentError.__module__ = "mpx.sharedarray"     # where users import it


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


def entry_name(entry):
    """The name field of an untrusted record, or None when it has none."""
    name = entry.get("name") if isinstance(entry, dict) else None
    return name if isinstance(name, str) else None


def entry_meta(entry):
    meta = entry.get("meta") if isinstance(entry, dict) else None
    return meta if isinstance(meta, dict) else {}


# ---------------------------------------------------------------------------
# Opening and checking existing objects


def open_existing(path, readonly, what, missing):
    """A descriptor of the existing object at `path`, opened without following
    a link there. `missing()` makes the FileNotFoundError."""
    try:
        return os.open(path, (os.O_RDONLY if readonly else os.O_RDWR) | _OPEN_FLAGS)
    except FileNotFoundError:
        raise missing() from None
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise PermissionError(errno.EACCES, f"refusing to open {what}: {path!r} is a "
                                  f"symbolic link (mpx never follows a link to a segment; "
                                  f"give the real path)", path) from None
        if e.errno == errno.ENXIO:          # a socket
            raise InvalidSegmentError(f"{what} is not a regular file") from None
        raise


def trust_fd(fd, what, mode):
    """fstat of the opened object, after ``mpx._trust``'s rule for the
    opener's `mode` and the check that it is a regular file."""
    st = os.fstat(fd)
    _trust.check_owner(what, uids=(st.st_uid,), perm=st.st_mode, mode=mode)
    if not stat.S_ISREG(st.st_mode):
        raise InvalidSegmentError(f"{what} is not a regular file, so not an mpx SharedArray")
    return st


def check_removable(what, uids):
    """Removal (``unlink(name)``, ``python -m mpx rm``) is for the caller's own
    objects only: every uid in `uids` (owner, and creator where the kernel
    keeps one) must be the effective uid; root too removes only root's."""
    me = os.geteuid()
    for uid in uids:
        if uid != me:
            raise PermissionError(errno.EPERM, f"refusing to remove {what}: it is owned "
                                  f"by uid {uid}, not by this user (uid {me}); only its "
                                  f"owner removes it")


def check_magic(what, head):
    if head[:len(MAGIC)] != MAGIC:
        raise InvalidSegmentError(f"refusing to remove {what}: it is not an mpx SharedArray "
                                  f"(it does not start with {MAGIC!r})")


def unlink_verified(path, what, missing, identity=None):
    """Unlink `path` if it leads to the caller's own mpx segment (or, with
    `identity`, to that very segment, checked without a descriptor).

    The checks are made on the object itself, opened without following a
    link, and the name is removed only if it still leads to the inode that
    was checked. Whoever could swap the name between the check and the
    unlink can write its directory, and so could remove the name anyway.
    """
    try:
        st = os.stat(path, follow_symlinks=False)
    except FileNotFoundError:
        raise missing() from None
    if identity is not None:
        if (st.st_dev, st.st_ino) != tuple(identity):
            raise FileNotFoundError(errno.ENOENT, f"{what} was already unlinked (the name "
                                    f"now belongs to another object)", path)
    else:
        if stat.S_ISLNK(st.st_mode):
            raise PermissionError(errno.EPERM, f"refusing to remove {what}: {path!r} is a "
                                  f"symbolic link, not an mpx segment")
        check_removable(what, (st.st_uid,))
        try:
            fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
        except FileNotFoundError:
            raise missing() from None
        except OSError as e:
            if e.errno in (errno.EMFILE, errno.ENFILE):
                raise OSError(e.errno, f"cannot check that {what} is an mpx SharedArray "
                              f"before removing it: no free file descriptor (unlink() on "
                              f"an array this process maps needs none)") from None
            raise
        try:
            opened = os.fstat(fd)
            head = os.pread(fd, len(MAGIC), 0) if stat.S_ISREG(opened.st_mode) else b""
        finally:
            os.close(fd)
        if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
            raise FileNotFoundError(errno.ENOENT, f"{what} changed while being checked; "
                                    f"not removing it", path)
        check_magic(what, head)
    os.unlink(path)


def probe(path):
    """(lstat result, whether it starts with MAGIC) of `path`, for ``describe``:
    a read-only look that follows no link and maps nothing; None if gone."""
    try:
        st = os.stat(path, follow_symlinks=False)
    except (OSError, ValueError):
        return None
    if not stat.S_ISREG(st.st_mode):
        return st, False
    try:
        fd = os.open(path, os.O_RDONLY | _OPEN_FLAGS)
    except OSError:
        return st, None         # exists, but this user may not read it
    try:
        opened = os.fstat(fd)
        if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino):
            return st, None     # replaced meanwhile: say nothing about it
        return st, os.pread(fd, len(MAGIC), 0) == MAGIC
    except OSError:
        return st, None
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------
# Descriptor-based segments (posix, file)


class FdSegment:
    """One mapping, in this process, of a segment reached by a descriptor.

    A backend subclass sets ``_label`` (for repr) and may override
    ``flush()`` and ``_shown()`` (how repr shows a named segment).
    """

    _label = "?"

    def __init__(self, name, fd, readonly, origin=()):
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise InvalidSegmentError(f"{self._shown_name(name)} is not a regular file")
        self.name = name
        self.size = st.st_size
        self.readonly = readonly
        self.identity = (st.st_dev, st.st_ino)
        self._fd = fd
        self._origin = tuple(origin)
        if self.size == 0:
            # An empty file: nothing to map; the layer above finds no header.
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

    def _shown_name(self, name):
        return repr(name) if name else "the descriptor"

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

    def discard(self):
        """Let go of a segment that was never handed out (a creation that
        lost the race for its name): unmap it now if nothing uses the
        memory, else when the last user goes."""
        try:
            self.buffer.release()
            if self._mmap is not None:
                self._mmap.close()      # its finalizer closes the descriptor
        except BufferError:
            pass

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


def attach_fd(cls, name, path, readonly, mode, what, missing):
    """``attach`` for descriptor-based segments: open `path` without following
    a link, apply the trust rule to the object, then map it."""
    fd = open_existing(path, readonly, what, missing)
    try:
        trust_fd(fd, what, mode)
    except BaseException:
        close_quietly(fd)
        raise
    return segment_or_close(cls, name, fd, readonly)


def new_segment(cls, name, fd, mode, size, reserve, init=None, undo=None):
    """Give the fresh descriptor `fd` its mode and `size` bytes (``reserve(fd,
    size)``), map it and run ``init(buffer)``. On failure the descriptor is
    closed and `undo()` (which removes a name just created) runs."""
    try:
        os.fchmod(fd, mode)     # the mode given at open went through the umask
        reserve(fd, size)
        segment = cls(name, fd, False)
    except BaseException:
        close_quietly(fd)
        if undo is not None:
            undo()
        raise
    if init is not None:
        try:
            init(segment.buffer)
        except BaseException:
            segment.discard()
            if undo is not None:
                undo()
            raise
    return segment


def _sweep_init_files(directory):
    """Remove this user's temporary build names left by killed creators."""
    try:
        names = os.listdir(directory)
    except OSError:
        return
    me = os.geteuid()
    for n in names:
        if not n.startswith(INIT_PREFIX):
            continue
        path = os.path.join(directory, n)
        try:
            pid = int(n[len(INIT_PREFIX):].split(".")[0])
            if os.stat(path, follow_symlinks=False).st_uid != me:
                continue
            os.kill(pid, 0)
        except ProcessLookupError:
            try:
                os.unlink(path)
            except OSError:
                pass
        except (OSError, ValueError):
            continue


def create_linked(cls, name, directory, path, mode, size, reserve, init):
    """A new named segment, built complete with no name, then linked at
    `path` in one step: a reader never finds it without its header, and a
    creator that dies (or runs out of descriptors) leaves nothing under the
    name. FileExistsError when `path` is taken."""
    def taken():
        return FileExistsError(errno.EEXIST, f"{path!r} already exists", path)

    try:
        fd = os.open(directory, os.O_TMPFILE | os.O_RDWR | os.O_CLOEXEC, 0o600)
    except OSError as e:
        if e.errno not in (errno.EOPNOTSUPP, errno.EISDIR, errno.EINVAL):
            raise OSError(e.errno, f"cannot create {path!r}: {e.strerror}", path) from None
        fd = None
    if fd is not None:
        segment = new_segment(cls, name, fd, mode, size, reserve, init)
        try:
            # linkat(AT_EMPTY_PATH) needs CAP_DAC_READ_SEARCH; following the
            # /proc link does the same for every user.
            os.link(f"/proc/self/fd/{segment._fd}", path, follow_symlinks=True)
            return segment
        except FileExistsError:
            segment.discard()
            raise taken() from None
        except OSError:
            segment.discard()       # no /proc here: build it under a temporary name
    _sweep_init_files(directory)
    tmp = os.path.join(directory, f"{INIT_PREFIX}{os.getpid()}.{os.urandom(6).hex()}")
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW,
                 0o600)
    try:
        segment = new_segment(cls, name, fd, mode, size, reserve, init)
        try:
            os.link(tmp, path, follow_symlinks=False)
        except FileExistsError:
            segment.discard()
            raise taken() from None
        return segment
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


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


def remove_entry(entry, canonical_name, unlink):
    """``remove(entry)`` for the CLI: the record names the object, and
    ``unlink(name)`` checks the object itself (the caller's own mpx segment)
    before removing it; already gone is fine. ValueError for a record
    without a usable name."""
    name = entry_name(entry)
    if name is None:
        raise ValueError(f"the record {entry!r:.200} has no name")
    try:
        name = canonical_name(name)
    except (TypeError, ValueError) as e:
        raise ValueError(f"the record's name {name!r} is not a SharedArray name: {e}") from None
    try:
        unlink(name)
    except FileNotFoundError:
        pass


def human(n):
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024


def describe_path(entry, path):
    """``describe`` for a segment that is a file at `path` (None: the name is
    not usable, or nothing is there). A read-only look (see ``probe``)."""
    if path is None:
        return None
    found = probe(path)
    if found is None:
        return None
    st, is_mpx = found
    row = describe_row(entry, st.st_size, path=path, owner_uid=st.st_uid)
    if stat.S_ISLNK(st.st_mode):
        row["error"] = "a symbolic link, not an mpx SharedArray"
    elif is_mpx is False:
        row["error"] = "not an mpx SharedArray"
    return row


def describe_row(entry, segment_bytes, **where):
    """What ``python -m mpx ls`` shows of a SharedArray whose segment exists
    and holds `segment_bytes`; `where` adds the backend's own columns. The
    record's own fields are shown only when they have the right types."""
    meta = entry_meta(entry)
    nbytes = meta.get("bytes")
    if isinstance(nbytes, bool) or not isinstance(nbytes, int) or nbytes < 0:
        nbytes = segment_bytes
    shape = meta.get("shape")
    if not (isinstance(shape, list) and len(shape) <= 64
            and all(isinstance(n, int) and not isinstance(n, bool) for n in shape)):
        shape = None
    dtype = meta.get("dtype")
    if not isinstance(dtype, str):
        dtype = None
    return {"size": human(nbytes), "bytes": nbytes, "shape": shape,
            "dtype": dtype[:200] if dtype else dtype, "segment_bytes": segment_bytes, **where}
