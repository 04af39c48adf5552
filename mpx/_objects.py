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
"""

import importlib
import json
import os
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


def _module(entry):
    modname = entry.get("module")
    if not isinstance(modname, str) or not modname.startswith("mpx."):
        # Records are files anyone can write in a world-writable directory:
        # never import a module a record names unless it is one of mpx's own.
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
    _names.forget(entry.get("kind"), entry.get("backend"), entry.get("name"))


def collect(args=None, drop_stale=True):
    """[(entry, info)] for every recorded object that still exists (and
    passes the filters in `args`); stale records are dropped."""
    rows = []
    for entry in _names.entries():
        if not all(isinstance(entry.get(k), str) for k in ("kind", "backend", "name")):
            continue                    # not a record mpx wrote
        if args is not None and not _matches(entry, args):
            continue
        if args is not None and getattr(args, "mine", False) and entry.get("uid") != os.geteuid():
            continue
        info = _describe(entry)
        if info is None:
            if drop_stale:
                _forget(entry)
            continue
        rows.append((entry, info))
    return rows


def _alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError, TypeError):
        return True
    return True


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
            value = json.dumps(value)
        parts.append(f"{key}={value}")
    return ", ".join(parts)


def _table(rows):
    header = ("KIND", "BACKEND", "NAME", "SIZE", "OWNER", "DETAILS")
    lines = [header]
    for entry, info in rows:
        lines.append((entry["kind"], entry["backend"], entry["name"], str(info.get("size", "?")),
                      str(entry.get("owner", "?")), _details(entry, info)))
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


def run_ls(args):
    rows = collect(args)
    rows.sort(key=lambda r: (r[0]["backend"], r[0]["kind"], r[0]["name"]))
    if args.json:
        print(json.dumps([_as_json(e, i) for e, i in rows], indent=2, default=str))
    elif rows:
        print(_table(rows))
    else:
        print("no named mpx objects" + (" matching the filters" if (
            args.backend or args.kind or args.mine) else "") + f" (record: {_names.names_dir()})")
    return 0


def _strip(name):
    return name[1:] if name.startswith("/") else name


def run_rm(args):
    if not args.names and not args.all:
        print("mpx rm: name the objects to remove, or pass --all to remove every mpx "
              "object you own", file=sys.stderr)
        return 2
    if args.names and args.all:
        print("mpx rm: give NAMEs or --all, not both", file=sys.stderr)
        return 2
    entries = [e for e in _names.entries()
               if all(isinstance(e.get(k), str) for k in ("kind", "backend", "name"))
               and _matches(e, args)]
    failed = False
    targets = []
    if args.all:
        targets = [e for e in entries if e.get("uid") == os.geteuid()]
    else:
        for name in args.names:
            found = [e for e in entries if e["name"] == name or _strip(e["name"]) == _strip(name)]
            if not found:
                print(f"mpx rm: no mpx object named {name!r}"
                      + (" matching the filters" if (args.backend or args.kind) else ""),
                      file=sys.stderr)
                failed = True
            targets += [e for e in found if e not in targets]
    removed = []
    for entry in targets:
        what = f"{entry['kind']} {entry['backend']} {entry['name']!r}"
        try:
            remove = _module(entry).remove
        except Exception as e:
            print(f"mpx rm: cannot remove {what}: cannot load {entry.get('module')}: {e}",
                  file=sys.stderr)
            failed = True
            continue
        try:
            remove(entry)
        except PermissionError as e:
            print(f"mpx rm: cannot remove {what}: {e}", file=sys.stderr)
            failed = True
            continue
        except Exception as e:
            print(f"mpx rm: cannot remove {what}: {type(e).__name__}: {e}", file=sys.stderr)
            failed = True
            continue
        _forget(entry)                  # remove() forgets too; this covers a sloppy one
        removed.append(entry)
        if not args.json:
            print(f"removed {what}")
    if args.json:
        print(json.dumps([{"kind": e["kind"], "backend": e["backend"], "name": e["name"]}
                          for e in removed], indent=2))
    elif args.all and not targets:
        print("no mpx objects of yours to remove")
    return 1 if failed else 0
