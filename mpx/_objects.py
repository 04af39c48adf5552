"""``python -m mpx ls`` and ``python -m mpx rm``: the named mpx objects here.

Both read mpx's record of the objects it created (:mod:`mpx._names`) and ask
the module that made each object about it, through two functions every such
module provides:

- ``describe(entry)`` -> a dict with at least ``"size"`` (a short string:
  messages or bytes), or None when the object no longer exists;
- ``remove(entry)`` -> removes the object and forgets its record.

So ``ls``/``rm`` work for every kind (queues of every backend, shared arrays,
FIFOs, ...) without knowing any of them. A record whose object is gone is
dropped when ``ls`` or ``rm`` meets it.

What they trust (see :mod:`mpx._names` for the record itself): only the
caller's own record directory, only the caller's own records in it, and only
mpx's own modules, named in the backend registry (or already loaded). A
record is the caller's word about a name; the module's ``remove(entry)``
checks the object itself before removing it. Junk in the record is skipped
and counted; names are printed with anything unprintable escaped, so a name
cannot rewrite the terminal or break the table.
"""

import importlib
import importlib.util
import json
import os
import re
import sys

from . import _names

__all__ = ["add_ls_arguments", "run_ls", "add_rm_arguments", "run_rm", "collect"]


def _add_filters(parser):
    parser.add_argument("--backend", action="append", metavar="NAME",
                        help="only objects of this backend (may be repeated)")
    parser.add_argument("--kind", action="append", metavar="KIND",
                        help="only objects of this kind, e.g. Queue, PriorityQueue, "
                             "SharedArray (may be repeated)")


def add_ls_arguments(parser):
    parser.add_argument("--json", action="store_true",
                        help="print a JSON list of objects instead of a table")
    parser.add_argument("--mine", action="store_true",
                        help="only the objects the caller owns")
    _add_filters(parser)


def add_rm_arguments(parser):
    parser.add_argument("names", nargs="*", metavar="NAME",
                        help="name of an object to remove (a leading '/' is optional)")
    parser.add_argument("--all", action="store_true",
                        help="remove every mpx object the caller owns (anonymous ones "
                             "that running programs use included)")
    parser.add_argument("--json", action="store_true",
                        help="print what was removed as JSON")
    _add_filters(parser)


# ---------------------------------------------------------------------------


_MODULE_NAME = re.compile(r"^mpx(\.[A-Za-z_][A-Za-z0-9_]*)+$")


def _known_modules():
    from .backends import BACKENDS
    return {m for _, modules in BACKENDS.values() for m in modules}


def _current_name(modname):
    """The module that handles records naming `modname` today (records
    written by an older mpx may name a module that has since moved)."""
    from .backends import RENAMED_MODULES
    return RENAMED_MODULES.get(modname, modname)


def _module(entry):
    """The module a record names, if it is one of mpx's own: a backend
    module of the registry, or an mpx module that exists (a kind defined
    above the backends). Never a module outside mpx: a record is only its
    writer's word, and importing is running code."""
    modname = entry.get("module") if isinstance(entry, dict) else None
    if not isinstance(modname, str) or not _MODULE_NAME.match(modname) \
            or modname.endswith(".__main__"):
        raise ImportError(f"record names no mpx module ({modname!r})")
    modname = _current_name(modname)
    if modname in _known_modules() or modname in sys.modules:
        return importlib.import_module(modname)
    try:
        spec = importlib.util.find_spec(modname)
    except (ImportError, ValueError):
        spec = None
    if spec is None:
        raise ImportError(f"record names no mpx module ({modname!r})")
    return importlib.import_module(modname)


def _describe(entry):
    """The object's description, None if it is gone; a failure to find out
    is shown rather than hidden."""
    try:
        describe = _module(entry).describe
    except Exception as e:              # the module is not built, not installed, ...
        return {"size": "?", "error": f"cannot ask {entry.get('module')}: {e}"}
    try:
        info = describe(entry)
    except Exception as e:
        return {"size": "?", "error": f"{type(e).__name__}: {e}"}
    if info is not None and not isinstance(info, dict):
        return {"size": "?", "error": f"describe() returned {type(info).__name__}"}
    return info


def _matches(entry, args):
    if args.backend and entry.get("backend") not in args.backend:
        return False
    if args.kind and entry.get("kind") not in args.kind:
        return False
    return True


def _forget(entry):
    _names.forget_entry(entry)


def _own_records():
    """The Scan of the caller's record, keeping only well-formed records the
    caller owns (the record reads nothing else; checked again because the
    decision to act on a record is taken here)."""
    found = _names.scan()
    me = os.geteuid()
    keep = [e for e in found.entries
            if all(isinstance(e.get(k), str) for k in ("kind", "backend", "name"))
            and e.get("uid") == me]
    return found._replace(entries=keep)


def _gather(args=None, drop_stale=True):
    found = _own_records()
    rows = []
    for entry in found.entries:
        if args is not None and not _matches(entry, args):
            continue
        info = _describe(entry)
        if info is None:
            if drop_stale:
                _forget(entry)
            continue
        rows.append((entry, info))
    return found, rows


def collect(args=None, drop_stale=True):
    """[(entry, info)] for every object in the caller's record that still
    exists (and passes the filters in `args`); stale records are dropped.
    Raises mpx._names.RecordDirError when the record directory is refused."""
    return _gather(args, drop_stale)[1]


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (OSError, OverflowError, TypeError, ValueError):
        return True
    return True


def _printable(text):
    """`text` with every character that is not printable escaped: a name may
    hold newlines, terminal escapes or lone surrogates."""
    text = str(text)
    if text.isprintable():
        return text
    return "".join(c if c.isprintable() else ascii(c)[1:-1] for c in text)


def _print(text, file=None):
    file = sys.stdout if file is None else file
    try:
        print(text, file=file)
    except UnicodeEncodeError:          # a terminal that cannot show some name
        encoding = getattr(file, "encoding", None) or "ascii"
        print(text.encode(encoding, "backslashreplace").decode(encoding, "replace"),
              file=file)


def _error(command, text):
    _print(f"mpx {command}: {_printable(text)}", sys.stderr)


def _details(entry, info):
    parts = []
    for key, value in info.items():
        if key in ("size",) or value is None or value == "":
            continue
        if key == "anonymous":
            if value:
                pid = info.get("creator_pid") or entry.get("pid")
                parts.append("anonymous" + ("" if pid is None or _alive(pid)
                                            else f" (creator {pid} is gone)"))
            continue
        if key == "creator_pid":
            continue
        if isinstance(value, (dict, list, tuple)):
            value = json.dumps(value, default=str)
        parts.append(f"{key}={value}")
    return _printable(", ".join(parts))


def _table(rows):
    header = ("KIND", "BACKEND", "NAME", "SIZE", "OWNER", "DETAILS")
    lines = [header]
    for entry, info in rows:
        lines.append(tuple(_printable(cell) for cell in (
            entry["kind"], entry["backend"], entry["name"], info.get("size", "?"),
            entry.get("owner", "?"))) + (_details(entry, info),))
    widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
    out = []
    for line in lines:
        cells = [cell.ljust(width) for cell, width in zip(line, widths)]
        out.append("  ".join(cells + [line[-1]]).rstrip())
    return "\n".join(out)


def _as_json(entry, info):
    out = {"kind": entry["kind"], "backend": entry["backend"], "name": entry["name"],
           "owner": entry.get("owner"), "uid": entry.get("uid"), "pid": entry.get("pid"),
           "created": entry.get("created"), "meta": entry.get("meta", {})}
    out.update(info)
    return out


def _report_skipped(command, found):
    """One line on stderr for the files of the record that were skipped."""
    if not found.skipped:
        return
    shown = "; ".join(f"{_printable(f)}: {why}" for f, why in found.skipped[:5])
    more = f"; and {len(found.skipped) - 5} more" if len(found.skipped) > 5 else ""
    _error(command, f"skipped {len(found.skipped)} file(s) in {_printable(found.path)} that "
           f"are not mpx records ({shown}{more})")


def _read_records(cmd, read):
    """`read()`, or None after saying why the record could not be read."""
    try:
        return read()
    except _names.RecordDirError as e:
        _error(cmd, e.strerror)
    except OSError as e:
        _error(cmd, f"cannot read the record of named objects in {_names.names_dir()}: {e}")
    return None


def run_ls(args):
    read = _read_records("ls", lambda: _gather(args))
    if read is None:
        return 1
    found, rows = read
    if args.mine:                       # every record read is the caller's own
        rows = [r for r in rows if r[0].get("uid") == os.geteuid()]
    rows.sort(key=lambda r: (r[0]["backend"], r[0]["kind"], r[0]["name"]))
    if args.json:
        print(json.dumps([_as_json(e, i) for e, i in rows], indent=2, default=str))
    elif rows:
        _print(_table(rows))
    else:
        _print("no named mpx objects" + (" matching the filters" if (
            args.backend or args.kind or args.mine) else "")
            + f" (record: {_printable(found.path)})")
    _report_skipped("ls", found)
    return 0


def _strip(name):
    return name[1:] if name.startswith("/") else name


def run_rm(args):
    if not args.names and not args.all:
        _error("rm", "name the objects to remove, or pass --all to remove every mpx "
               "object you own")
        return 2
    if args.names and args.all:
        _error("rm", "give NAMEs or --all, not both")
        return 2
    found = _read_records("rm", _own_records)
    if found is None:
        return 1
    entries = [e for e in found.entries if _matches(e, args)]
    failed = False
    targets = []
    if args.all:
        targets = entries
    else:
        for name in args.names:
            found_here = [e for e in entries
                          if e["name"] == name or _strip(e["name"]) == _strip(name)]
            if not found_here:
                _error("rm", f"no mpx object named {name!r} in your record"
                       + (" matching the filters" if (args.backend or args.kind) else ""))
                failed = True
            targets += [e for e in found_here if e not in targets]
    removed = []
    for entry in targets:
        what = f"{entry['kind']} {entry['backend']} {entry['name']!r}"
        try:
            remove = _module(entry).remove
        except Exception as e:
            _error("rm", f"cannot remove {what}: cannot load {entry.get('module')!r}: {e}")
            failed = True
            continue
        try:
            remove(entry)
        except PermissionError as e:
            _error("rm", f"cannot remove {what}: {e}")
            failed = True
            continue
        except Exception as e:
            # Kept in the record (it may be a damaged object of the caller's
            # that ls must go on showing); say where, for one that is junk.
            _error("rm", f"cannot remove {what}: {type(e).__name__}: {e} (its record, "
                   f"{os.path.join(found.path, entry.get('record_file') or '?')}, is kept)")
            failed = True
            continue
        _forget(entry)                  # remove() forgets too; this covers a sloppy one
        removed.append(entry)
        if not args.json:
            _print(f"removed {_printable(what)}")
    if args.json:
        print(json.dumps([{"kind": e["kind"], "backend": e["backend"], "name": e["name"]}
                          for e in removed], indent=2))
    elif args.all and not targets:
        _print("no mpx objects of yours to remove")
    _report_skipped("rm", found)
    return 1 if failed else 0
