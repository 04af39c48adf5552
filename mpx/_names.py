"""mpx's own record of the named objects it has created on this machine.

Some kernel objects cannot be listed by name (/dev/mqueue is usually not
mounted, SysV ids carry keys, not names, FIFOs live anywhere), so every
backend that creates a named object records it here and forgets it on
unlink. ``python -m mpx ls`` reads this record and asks each backend whether
the object still exists.

The record is a directory (``$MPX_NAMES_DIR``, default ``/tmp/mpx-names``,
sticky and world-writable like /tmp so every user can record) holding one
small JSON file per object. A file is owned by the user who created the
object, which is how ``ls`` shows the owner and ``rm --all`` finds "mine".
"""

import json
import os
import stat
import time
import urllib.parse

__all__ = ["record", "forget", "entries", "names_dir"]


def names_dir():
    return os.environ.get("MPX_NAMES_DIR", "/tmp/mpx-names")


def _ensure_dir():
    path = names_dir()
    try:
        os.mkdir(path, 0o1777)
        os.chmod(path, 0o1777)   # mkdir's mode is filtered by the umask
    except FileExistsError:
        pass
    return path


def _filename(backend, kind, name):
    # Names may hold '/', which a file name cannot; quote everything unusual.
    return f"{backend}.{kind}.{urllib.parse.quote(name, safe='')}.json"


def record(kind, backend, name, module, **meta):
    """Note that `backend` created the `kind` object called `name`.

    `module` is the dotted name of the module whose ``describe(entry)`` and
    ``remove(entry)`` functions ``python -m mpx ls/rm`` call for this entry.
    `meta` is anything JSON can hold that ``ls`` should show (capacity,
    shape, path, key, ...). Recording never fails the caller's operation: an
    object works even where the record cannot be written.
    """
    entry = {"kind": kind, "backend": backend, "name": name, "module": module,
             "created": time.time(), "pid": os.getpid(), "meta": meta}
    try:
        path = os.path.join(_ensure_dir(), _filename(backend, kind, name))
        tmp = f"{path}.{os.getpid()}.tmp"
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        with os.fdopen(fd, "w") as f:
            json.dump(entry, f)
        os.replace(tmp, path)
    except OSError:
        pass


def forget(kind, backend, name):
    """Remove the record of an object (no error if there is none)."""
    try:
        os.unlink(os.path.join(names_dir(), _filename(backend, kind, name)))
    except OSError:
        pass


def entries():
    """Every recorded object as a dict: kind, backend, name, created, pid,
    meta, plus uid and owner (user name) of the record file."""
    import pwd
    out = []
    path = names_dir()
    try:
        files = sorted(os.listdir(path))
    except FileNotFoundError:
        return out
    for fname in files:
        if not fname.endswith(".json"):
            continue
        full = os.path.join(path, fname)
        try:
            st = os.stat(full)
            if not stat.S_ISREG(st.st_mode):
                continue
            with open(full) as f:
                entry = json.load(f)
        except (OSError, ValueError):
            continue
        entry["uid"] = st.st_uid
        try:
            entry["owner"] = pwd.getpwuid(st.st_uid).pw_name
        except KeyError:
            entry["owner"] = str(st.st_uid)
        out.append(entry)
    return out
