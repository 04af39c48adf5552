"""mpx's own record of the named objects it has created, kept per user.

Some kernel objects cannot be listed by name (/dev/mqueue is usually not
mounted, SysV ids carry keys, not names, FIFOs live anywhere), so every
backend that creates a named object records it here and forgets it on
unlink. ``python -m mpx ls`` reads this record and asks each backend whether
the object still exists; ``python -m mpx rm`` asks the backend to remove it.

Trust model: where records live and what they are worth
-------------------------------------------------------
- Every user has a record of their own; there is no shared folder. A folder
  that all users may write is one where another user plants records that
  root then acts on (and plants symlinks that root then writes through).
  The directory is the first of:

  1. ``$MPX_NAMES_DIR``, when set;
  2. ``$XDG_RUNTIME_DIR/mpx-names``, when ``XDG_RUNTIME_DIR`` is set to a
     directory that the caller's effective uid owns and that grants group
     and others nothing (a login's ``/run/user/<uid>``; under ``sudo`` it
     still names the invoking user's folder, which fails this test);
  3. ``<tempfile.gettempdir()>/mpx-names-<euid>``.

- The directory is created with mode 0o700. Every time it is used it is
  opened with O_DIRECTORY|O_NOFOLLOW and checked on that descriptor: it must
  be owned by the caller's effective uid and must not let group or others
  write. Anything else (a directory another user made first at that name,
  a symlink, a world-writable folder) is refused: recording is skipped with
  a warning on ``logging.getLogger("mpx")`` (the object itself still works),
  and ``ls``/``rm`` stop with an error naming the directory and its owner.
  Every file operation then goes through that directory's descriptor
  (``dir_fd=``), so a path swapped meanwhile cannot redirect it.
- A record is written to a temporary file with a random name, created with
  O_CREAT|O_EXCL|O_NOFOLLOW and mode 0o600 (a planted file or symlink makes
  the create fail; it is never followed), then renamed into place.
  Temporary files whose writer has died (killed between the two steps) are
  swept whenever the record is read.
- A record file is read only when it is a regular file owned by the caller,
  opened with O_NOFOLLOW (and O_NONBLOCK, so a FIFO cannot stall the
  reader), at most ``MAX_RECORD`` bytes, holding a JSON object whose kind,
  backend and name are strings. Anything else is skipped and counted, never
  fatal: one bad file cannot break ``ls``, ``rm`` or ``list_arrays()``.
- A record is a hint, not an authority. ``rm`` only hands the caller's own
  records to the module that made the object, and that module's
  ``remove(entry)`` checks the object itself (it exists, it is an mpx object
  of that kind, the caller owns it) before removing anything.
- ``record()`` never raises into the caller: the object it describes has
  already been made. A backend that wants to refuse a name it could not
  record faithfully calls ``check_recordable(name)`` before creating
  anything.
"""

import collections
import errno
import hashlib
import json
import logging
import math
import numbers
import operator
import os
import re
import secrets
import stat
import tempfile
import time
import urllib.parse

__all__ = ["record", "forget", "forget_entry", "entries", "scan", "names_dir",
           "check_recordable", "RecordDirError", "MAX_RECORD"]

# A record is a few hundred bytes; anything far larger is not one of ours and
# is not read into memory.
MAX_RECORD = 64 * 1024

# Record file names stay under this length so that the temporary name (the
# final one plus ".<pid>.<16 hex>.tmp") still fits the usual 255-byte limit.
_MAX_FILENAME = 200

_log = logging.getLogger("mpx")

# "<record>.json.<pid>.<token>.tmp", and the older "<record>.json.<pid>.tmp".
_TMP = re.compile(r"^.+\.json\.([0-9]{1,10})(?:\.[0-9a-f]{1,64})?\.tmp$")

Scan = collections.namedtuple("Scan", "path entries skipped")
Scan.__doc__ = """What reading the record found: the directory's path, the
entries (dicts), and the files skipped as [(file name, why)]."""


class RecordDirError(PermissionError):
    """The record directory exists but is not one this user may trust."""


def names_dir():
    """The path of the caller's record directory (see the module's notes)."""
    path = os.environ.get("MPX_NAMES_DIR")
    if path:
        return path
    euid = os.geteuid()
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime):
        try:
            st = os.stat(runtime)
        except OSError:
            st = None
        if (st is not None and stat.S_ISDIR(st.st_mode) and st.st_uid == euid
                and not st.st_mode & 0o077):
            return os.path.join(runtime, "mpx-names")
    return os.path.join(tempfile.gettempdir(), f"mpx-names-{euid}")


def _username(uid):
    import pwd
    try:
        return pwd.getpwuid(uid).pw_name
    except (KeyError, OverflowError):
        return None


def _user(uid):
    name = _username(uid)
    return f"uid {uid}" if name is None else f"uid {uid} ({name})"


def _refuse(path, why):
    raise RecordDirError(errno.EACCES, f"refusing the record directory {path}: {why}; "
                         "mpx keeps each user's record in a directory only that user "
                         "owns and may write (remove it or set MPX_NAMES_DIR to one)", path)


def _open_dir(create):
    """(path, descriptor of the checked record directory). The descriptor
    is None when the directory does not exist and `create` is false."""
    path = names_dir()
    if create:
        try:
            os.mkdir(path, 0o700)       # the umask can only take bits away
        except FileExistsError:
            pass
    try:
        fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        if create:
            raise
        return path, None
    except OSError as e:
        if e.errno not in (errno.ELOOP, errno.ENOTDIR, errno.EACCES):
            raise
        try:
            st = os.lstat(path)
        except OSError:
            raise e from None
        if e.errno == errno.EACCES:
            _refuse(path, f"this user ({_user(os.geteuid())}) may not open it: it is owned "
                    f"by {_user(st.st_uid)}, mode {stat.S_IMODE(st.st_mode):#o}")
        kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a directory"
        _refuse(path, f"it is {kind}, owned by {_user(st.st_uid)}")
    try:
        st = os.fstat(fd)
        me = os.geteuid()
        if st.st_uid != me:
            _refuse(path, f"it is owned by {_user(st.st_uid)}, not by this user "
                    f"({_user(me)}); another user may have made it first")
        if st.st_mode & 0o022:
            _refuse(path, f"its mode {stat.S_IMODE(st.st_mode):#o} lets group or others "
                    "write in it")
    except BaseException:
        os.close(fd)
        raise
    return path, fd


# --- file names ---------------------------------------------------------------

def _quote(text):
    # Names may hold '/', which a file name cannot, and lone surrogates (names
    # that came from undecodable bytes), which UTF-8 cannot: quote the bytes.
    return urllib.parse.quote(text.encode("utf-8", "surrogatepass"), safe="")


def _filename(backend, kind, name):
    head = f"{_quote(backend)}.{_quote(kind)}."
    body = _quote(name)
    if len(head) + len(body) + len(".json") > _MAX_FILENAME:
        # Too long for a file name: a digest stands in ("%h" is no escape
        # quote() ever writes, so it cannot meet a quoted name).
        body = "%h" + hashlib.sha256(name.encode("utf-8", "surrogatepass")).hexdigest()
    return f"{head}{body}.json"


def check_recordable(name):
    """Raise unless `name` can name an object in the record and be given
    back to ``python -m mpx rm`` on a command line. For backends to call
    BEFORE creating anything: TypeError for a name that is not a str,
    ValueError for one holding a lone surrogate (not text: it cannot be
    written down or typed back) or a NUL character (no argument can hold it).
    """
    if not isinstance(name, str):
        raise TypeError(f"a name must be a str, not {type(name).__name__}")
    if "\0" in name:
        raise ValueError(f"name {name!r} holds a NUL character, which no "
                         "object name can")
    try:
        name.encode("utf-8")
    except UnicodeEncodeError as e:
        raise ValueError(f"name {name!r} is not valid text: it holds a lone surrogate "
                         f"({name[e.start]!r} at index {e.start})") from None


# --- writing --------------------------------------------------------------------

def _jsonable(value):
    # json.dumps' fallback for meta values it does not know: numpy scalars
    # and arrays, other integers and reals, sets; the text of anything else.
    tolist = getattr(value, "tolist", None)
    if callable(tolist):
        try:
            return tolist()
        except Exception:
            pass
    try:
        return operator.index(value)
    except TypeError:
        pass
    if isinstance(value, numbers.Real):
        return float(value)
    if isinstance(value, (set, frozenset)):
        return sorted(value, key=repr)
    return str(value)


def _token():
    return secrets.token_hex(8)


def _write(dfd, fname, data):
    """Write `data` to `fname` in the directory `dfd`: a new file of a random
    name (never an existing file or symlink) renamed into place."""
    for _ in range(16):
        tmp = f"{fname}.{os.getpid()}.{_token()}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
                         | os.O_CLOEXEC, 0o600, dir_fd=dfd)
        except FileExistsError:
            continue                    # planted, or a clash: another name
        break
    else:
        raise FileExistsError(errno.EEXIST, "every temporary record name tried exists", fname)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
        finally:
            os.close(fd)
        os.rename(tmp, fname, src_dir_fd=dfd, dst_dir_fd=dfd)
    except BaseException:
        try:
            os.unlink(tmp, dir_fd=dfd)
        except OSError:
            pass
        raise


_warned = set()


def _warn(what, error):
    # A refused directory would otherwise warn once per object created.
    key = (names_dir(), type(error), str(error)) if isinstance(error, RecordDirError) else None
    if key is not None and key in _warned:
        _log.debug("mpx: not recording %s: %s", what, error)
        return
    if key is not None:
        _warned.add(key)
    _log.warning("mpx: not recording %s (python -m mpx ls will not show it): %s", what, error)


def record(kind, backend, name, module, **meta):
    """Note that `backend` created the `kind` object called `name`.

    `module` is the dotted name of the module whose ``describe(entry)`` and
    ``remove(entry)`` functions ``python -m mpx ls/rm`` call for this entry.
    `meta` is anything JSON can hold that ``ls`` should show (capacity,
    shape, path, key, ...; numpy numbers are welcome). Recording never fails
    the caller's operation: an object works even where the record cannot be
    written, and any failure is logged on ``logging.getLogger("mpx")``.
    """
    try:
        for field, value in (("kind", kind), ("backend", backend), ("name", name)):
            if not isinstance(value, str):
                raise TypeError(f"the {field} must be a str, not {type(value).__name__}")
        entry = {"kind": kind, "backend": backend, "name": name, "module": module,
                 "created": time.time(), "pid": os.getpid(), "meta": meta}
        data = json.dumps(entry, default=_jsonable).encode("ascii")
        if len(data) > MAX_RECORD:
            raise ValueError(f"the record would be {len(data)} bytes, over the "
                             f"{MAX_RECORD}-byte limit (meta too large)")
        fname = _filename(backend, kind, name)
        _, dfd = _open_dir(create=True)
        try:
            _write(dfd, fname, data)
        finally:
            os.close(dfd)
    except Exception as e:
        try:
            _warn(f"the {kind} {backend} {name!r}", e)
        except Exception:
            pass


def _unlink(fname):
    try:
        _, dfd = _open_dir(create=False)
    except OSError as e:
        if e.errno in (errno.EMFILE, errno.ENFILE):
            # Out of descriptors (an unlink() made at the limit): check the
            # directory by path instead, so the record goes with its object.
            _unlink_by_path(fname)
        else:
            _log.debug("mpx: cannot forget %r: %s", fname, e)
        return
    if dfd is None:
        return
    try:
        os.unlink(fname, dir_fd=dfd)    # a symlink is unlinked, not followed
    except OSError:
        pass
    finally:
        os.close(dfd)


def _unlink_by_path(fname):
    """_unlink without a free descriptor: lstat takes none. Only a directory
    that is this user's and closed to group/other writes is touched, and
    unlink never follows a symlink at the file's own name."""
    path = names_dir()
    try:
        st = os.lstat(path)
        if (stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
                and not st.st_mode & 0o022):
            os.unlink(os.path.join(path, fname))
    except OSError:
        pass


def forget(kind, backend, name):
    """Remove the record of an object (no error if there is none)."""
    if all(isinstance(v, str) for v in (kind, backend, name)):
        _unlink(_filename(backend, kind, name))


def _plain_filename(fname):
    return (isinstance(fname, str) and fname.endswith(".json") and "/" not in fname
            and "\0" not in fname)


def forget_entry(entry):
    """Remove the record `entry` (from ``entries()``) came from, and any
    record filed under its kind, backend and name."""
    if not isinstance(entry, dict):
        return
    fname = entry.get("record_file")
    if _plain_filename(fname):
        _unlink(fname)
    forget(entry.get("kind"), entry.get("backend"), entry.get("name"))


# --- reading --------------------------------------------------------------------

def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, ValueError):
        return True
    return True


def _sweep(dfd, fname, pid):
    """Unlink the temporary file `fname` if its writer (`pid`) is dead:
    it was killed between writing the record and renaming it into place."""
    if _alive(pid):
        return
    try:
        st = os.stat(fname, dir_fd=dfd, follow_symlinks=False)
        if st.st_uid == os.geteuid() or stat.S_ISLNK(st.st_mode):
            os.unlink(fname, dir_fd=dfd)
    except OSError:
        pass


def _number(value, low, high, kind):
    if isinstance(value, bool) or not isinstance(value, kind):
        return None
    try:
        if not math.isfinite(value) or not low <= value <= high:
            return None
    except (OverflowError, ValueError):
        return None
    return value


def _normalize(raw):
    """The entry a record file's JSON value stands for, or None when it is
    not a record mpx wrote. Every field is of the type readers expect."""
    if not isinstance(raw, dict):
        return None
    if not all(isinstance(raw.get(k), str) for k in ("kind", "backend", "name")):
        return None
    module, meta = raw.get("module"), raw.get("meta")
    return {"kind": raw["kind"], "backend": raw["backend"], "name": raw["name"],
            "module": module if isinstance(module, str) else None,
            "created": _number(raw.get("created"), 0, 1e11, numbers.Real),
            "pid": _number(raw.get("pid"), 1, 2**31 - 1, int),
            "meta": meta if isinstance(meta, dict) else {}}


def _read(dfd, fname, me):
    """(entry, None) for a good record file, else (None, why it was skipped)."""
    try:
        st = os.stat(fname, dir_fd=dfd, follow_symlinks=False)
    except OSError as e:
        return None, f"cannot stat it: {e.strerror}"
    # Looked at before opening, so nothing but a regular file is ever opened.
    if stat.S_ISLNK(st.st_mode):
        return None, "a symbolic link"
    if not stat.S_ISREG(st.st_mode):
        return None, "not a regular file"
    if st.st_uid != me:
        return None, f"owned by {_user(st.st_uid)}"
    if st.st_size > MAX_RECORD:
        return None, f"{st.st_size} bytes, over the {MAX_RECORD}-byte limit"
    try:
        fd = os.open(fname, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY
                     | os.O_CLOEXEC, dir_fd=dfd)
    except OSError as e:
        return None, f"cannot open it: {e.strerror}"
    try:
        st = os.fstat(fd)               # what was opened, not what was looked at
        if not stat.S_ISREG(st.st_mode) or st.st_uid != me:
            return None, "changed while being read"
        chunks, size = [], 0
        while size <= MAX_RECORD:
            chunk = os.read(fd, MAX_RECORD + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as e:
        return None, f"cannot read it: {e.strerror}"
    finally:
        os.close(fd)
    if size > MAX_RECORD:
        return None, f"over the {MAX_RECORD}-byte limit"
    try:
        raw = json.loads(b"".join(chunks).decode("utf-8"))
    except (ValueError, RecursionError):
        return None, "not JSON"
    entry = _normalize(raw)
    if entry is None:
        return None, "not an mpx record"
    return entry, None


def scan():
    """Read the caller's record: a Scan of (path, entries, skipped).

    Each entry is a dict with kind, backend, name, module, created, pid and
    meta (each of the expected type, or None / {} when the file had
    something else), plus uid and owner (always the caller) and record_file.
    Raises RecordDirError when the directory exists but is not to be
    trusted; a missing directory is an empty record."""
    path, dfd = _open_dir(create=False)
    found, skipped = [], []
    if dfd is None:
        return Scan(path, found, skipped)
    me = os.geteuid()
    try:
        owner = _username(me) or str(me)
        for fname in sorted(os.listdir(dfd)):
            tmp = _TMP.match(fname)
            if tmp and 0 < int(tmp.group(1)) < 2**31:
                _sweep(dfd, fname, int(tmp.group(1)))
                continue
            if not fname.endswith(".json"):
                skipped.append((fname, "not a record file name"))
                continue
            entry, why = _read(dfd, fname, me)
            if entry is None:
                skipped.append((fname, why))
                continue
            entry.update(uid=me, owner=owner, record_file=fname)
            found.append(entry)
    finally:
        os.close(dfd)
    return Scan(path, found, skipped)


def entries():
    """Every recorded object of the caller's (see ``scan``). Never raises:
    when the record directory is refused or unreadable, logs why and
    returns []."""
    try:
        return scan().entries
    except Exception as e:
        _log.warning("mpx: cannot read the record of named objects: %s", e)
        return []
