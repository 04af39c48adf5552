"""The backend registry: which backends exist, what they provide, which is used.

A backend is one or more modules in this package (one per mechanism: the
"posix" backend has its message queues in ``posix.mq`` and its shared memory
in ``posix.segment``). A backend with several modules has a folder of its
own (``shm/``, ``posix/``, ``sysv/``); helpers that several backends share
live in ``_common/``, which the registry never lists. A module provides some of the object families below as
module-level factory functions with the family's name, called as
``module.Queue(ctx, *args, serializer=..., **kwargs)`` where ``ctx`` is the
mpx context asking (for the start method and the stdlib context) and
``serializer`` is an ``mpx._serial.Serializer``. It lists them in
``FAMILIES`` and may define ``unavailable()`` returning a reason string when
it cannot work on this machine (``None`` when it can).

Three families are built above the backends instead: ``SharedArray`` (the
class in ``mpx.sharedarray`` uses the segment API its backend modules share),
``Manager`` (``mpx.managers`` uses the transport its backend modules share)
and ``Pool`` (``mpx.pool`` moves tasks and results over the backend's
queues). Their modules list the family in ``FAMILIES`` but have no factory,
since a backend must never import the layer above it.

Backends never import each other; only this registry knows them all.
"""

import importlib
import os
import sys
import types

__all__ = ["FAMILIES", "BACKENDS", "PREFERENCE", "BackendTable", "backends", "resolve", "default_backend"]

# The object families, in the order the docs list them.
FAMILIES = ("Queue", "SimpleQueue", "JoinableQueue", "PriorityQueue",
            "Pipe", "Pool", "SharedArray", "Manager")

# name -> (one line for the table, its modules). Add a line when a backend lands.
BACKENDS = {
    "shm": ("shared-memory ring buffer (Cython), spin-then-futex waits",
            ("mpx.backends.shm.queues", "mpx.backends.shm.manager", "mpx.backends.shm.pipe")),
    "pipe": ("OS pipes: the stdlib's objects with mpx's serializer",
             ("mpx.backends.pipe",)),
    "fifo": ("named pipes (mkfifo) that unrelated processes open by path",
             ("mpx.backends.fifo",)),
    "posix": ("POSIX message queues and shared memory (posix_ipc)",
              ("mpx.backends.posix.mq", "mpx.backends.posix.segment")),
    "sysv": ("SysV message queues and shared memory (sysv_ipc)",
             ("mpx.backends.sysv.mq", "mpx.backends.sysv.segment")),
    "file": ("mmap of a file path (survives a reboot)",
             ("mpx.backends.file",)),
    "unix": ("Manager RPC over unix-domain sockets",
             ("mpx.backends.unix",)),
    "tcp": ("Manager RPC over TCP (optionally TLS)",
            ("mpx.backends.tcp",)),
    "ray": ("a Ray cluster: queues in actors, a pool of worker actors",
            ("mpx.backends.ray",)),
}

# Records of named objects (``mpx._names``) name the module that made each
# object, and ``python -m mpx ls``/``rm`` import it to describe or remove
# the object. Records written before the backends moved into folders name
# the old paths; this maps them to the modules that do that work now.
RENAMED_MODULES = {
    "mpx.backends.shm": "mpx.backends.shm.queues",
    "mpx.backends.shm_pipe": "mpx.backends.shm.pipe",
    "mpx.backends.shm_manager": "mpx.backends.shm.manager",
    "mpx.backends.posix_mq": "mpx.backends.posix.mq",
    "mpx.backends.posix_shm": "mpx.backends.posix.segment",
    "mpx.backends.sysv_mq": "mpx.backends.sysv.mq",
    "mpx.backends.sysv_shm": "mpx.backends.sysv.segment",
}

# Fastest first: a family's default is the first available backend here that
# provides it. (The stdlib's own code reaches into the SimpleQueue its
# context makes: concurrent.futures' ProcessPoolExecutor waits on
# ``SimpleQueue()._reader`` with ``multiprocessing.connection.wait``. The shm
# queues' ``_reader`` has a descriptor for that, so shm is the default here
# too.)
PREFERENCE = {
    "Queue": ("shm", "pipe", "posix", "sysv", "ray"),
    "SimpleQueue": ("shm", "pipe", "posix", "sysv", "ray"),
    "JoinableQueue": ("shm", "pipe", "posix", "sysv", "ray"),
    "PriorityQueue": ("posix", "sysv"),
    "Pipe": ("shm", "pipe", "fifo"),
    "Pool": ("shm", "pipe", "ray"),
    "SharedArray": ("posix", "sysv", "file"),
    "Manager": ("shm", "unix", "tcp"),
}

ENV_VAR = "MPX_BACKEND"

# What a backend module must have for each family it lists in FAMILIES (the
# model is pyzmq's zmq/backend/select.py: one list, checked when a backend
# loads). Five families are factories named after the family. The three
# built above the backends need what their builders call instead: mpx.pool
# makes the backend's Queues, mpx.sharedarray uses the segment API and
# mpx.managers the transport.
API = {
    "Queue": ("Queue",),
    "SimpleQueue": ("SimpleQueue",),
    "JoinableQueue": ("JoinableQueue",),
    "PriorityQueue": ("PriorityQueue",),
    "Pipe": ("Pipe",),
    "Pool": ("Queue",),
    "SharedArray": ("Segment", "canonical_name", "create", "attach", "reattach", "unlink",
                    "describe", "HASHED_NAMES", "PUBLISHES_WHOLE"),
    "Manager": ("Listener", "connect", "default_address", "check_address"),
}
_FACTORIES = ("Queue", "SimpleQueue", "JoinableQueue", "PriorityQueue", "Pipe")


def check_module(module):
    """The ways `module` does not provide exactly what its FAMILIES declare
    (an empty list when it does): a family it lists without the API, an
    unknown family, or a factory for a family it does not list (which the
    registry would never offer, so it is dead or the list is wrong)."""
    declared = getattr(module, "FAMILIES", None)
    if not isinstance(declared, tuple):
        return ["has no FAMILIES tuple"]
    problems = [f"lists the unknown family {f!r}" for f in declared if f not in FAMILIES]
    for family in declared:
        missing = [n for n in API.get(family, ()) if not hasattr(module, n)]
        if missing:
            problems.append(f"lists {family} but lacks {', '.join(missing)}")
    for family in _FACTORIES:
        if family not in declared and callable(getattr(module, family, None)):
            problems.append(f"has a {family} factory but does not list {family}")
    return problems

_loaded = {}
# modname -> FAMILIES of a module that imports but is unavailable here (the
# ray backend without Ray): $MPX_BACKEND naming it must fail, not fall back.
_declared = {}


def _load_module(modname):
    """(module or None, reason it is unavailable or None)."""
    if modname not in _loaded:
        try:
            module = importlib.import_module(modname)
        except ModuleNotFoundError as e:
            if e.name == modname:
                result = (None, "not built yet in this version of mpx")
            else:
                result = (None, f"needs the module {e.name!r}, which is not installed")
        except ImportError as e:
            result = (None, f"failed to import: {e}")
        else:
            problems = check_module(module)
            if problems:
                # A bug in mpx, not in the machine: say so wherever the
                # backend would have been offered.
                result = (None, f"{modname} is broken: {'; '.join(problems)}")
            else:
                check = getattr(module, "unavailable", None)
                reason = check() if check is not None else None
                result = (None, reason) if reason else (module, None)
                if reason:
                    _declared[modname] = tuple(getattr(module, "FAMILIES", ()))
        _loaded[modname] = result
    return _loaded[modname]


def _modules(name):
    """[(module or None, reason)] for every module of backend `name`."""
    return [_load_module(m) for m in BACKENDS[name][1]]


def _module_for(name, family):
    """The module of backend `name` that makes `family`, or None. (Imports
    the backend's modules only up to the one that has it: a first Queue or
    Pool does not pay for the Manager's and the Pipe's modules.)"""
    for modname in BACKENDS[name][1]:
        module, _ = _load_module(modname)
        if module is not None and family in module.FAMILIES:
            return module
    return None


def _provides(name):
    return tuple(f for f in FAMILIES if _module_for(name, f) is not None)


class BackendTable(list):
    """``mpx.backends()``'s value: a list of row dicts (data for programs)
    that prints as a table (for people)."""

    def __str__(self):
        defaults = {}
        for family in FAMILIES:
            try:
                defaults.setdefault(default_backend(family), []).append(family)
            except ValueError:
                pass
        header = ("BACKEND", "FAMILIES", "DEFAULT FOR", "ABOUT")
        lines = [header]
        for row in self:
            note = row["description"] if row["available"] else (
                "unavailable: " + (row["reason"] or "provides nothing here"))
            lines.append((row["name"], ", ".join(row["families"]) or "-",
                          ", ".join(defaults.get(row["name"], ())) or "-", note))
        widths = [max(len(line[i]) for line in lines) for i in range(len(header) - 1)]
        return "\n".join("  ".join([c.ljust(w) for c, w in zip(line, widths)] + [line[-1]])
                         .rstrip() for line in lines)

    __repr__ = __str__


def backends():
    """The registry as a list of rows, one per known backend:
    ``{"name", "available", "reason", "families", "description"}``; printed,
    it is a table with each family's default backend here."""
    rows = BackendTable()
    for name, (description, _) in BACKENDS.items():
        families = _provides(name)
        reasons = [r for _, r in _modules(name) if r]
        rows.append({
            "name": name,
            "available": bool(families),
            "reason": "; ".join(reasons) or None,
            "families": families,
            "description": description,
        })
    return rows


def _choices(family):
    return [n for n in BACKENDS if family in _provides(n)]


def default_backend(family):
    """The backend `family` uses when none is named: $MPX_BACKEND if it
    provides the family, otherwise the fastest available one."""
    forced = os.environ.get(ENV_VAR)
    if forced:
        if forced not in BACKENDS:
            raise ValueError(f"{ENV_VAR}={forced!r} is not an mpx backend; "
                             f"choose one of {sorted(BACKENDS)}")
        if _module_for(forced, family) is not None:
            return forced
        for modname in BACKENDS[forced][1]:
            module, reason = _load_module(modname)
            if module is None and family in _declared.get(modname, ()):
                # The program asked to run on it: running elsewhere
                # silently would be wrong.
                raise ValueError(f"{ENV_VAR}={forced!r}: backend {forced!r} provides "
                                 f"{family} but is not available here ({reason})")
    for name in PREFERENCE[family]:
        if name in BACKENDS and _module_for(name, family) is not None:
            return name
    raise ValueError(f"no available backend provides {family} in this build of mpx; "
                     f"see mpx.backends() for what each backend offers")


def resolve(family, backend=None):
    """Return ``(name, module)`` of the backend that makes `family` objects."""
    if family not in FAMILIES:
        raise ValueError(f"unknown object family {family!r}")
    name = default_backend(family) if backend is None else backend
    if not isinstance(name, str) or name not in BACKENDS:
        raise ValueError(f"unknown backend {name!r} for {family}; choose one of "
                         f"{_choices(family)} (all backends: {sorted(BACKENDS)})")
    module = _module_for(name, family)
    if module is None:
        reasons = "; ".join(r for _, r in _modules(name) if r)
        why = f"is not available here ({reasons})" if reasons else f"does not provide {family}"
        raise ValueError(f"backend {name!r} {why}; {family} can use {_choices(family)}")
    return name, module


class _CallableRegistry(types.ModuleType):
    """``mpx.backends`` is this package AND the function users call:
    ``mpx.backends()`` returns the table, ``mpx.backends.resolve`` etc. stay
    reachable, and ``import mpx.backends`` keeps working."""

    def __call__(self):
        return backends()


sys.modules[__name__].__class__ = _CallableRegistry
