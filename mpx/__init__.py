"""mpx: Python's multiprocessing, extended and faster.

``import mpx as multiprocessing`` keeps a program working: every name in
``multiprocessing.__all__`` is here, with the same semantics. Where mpx has
its own version (Queue, SimpleQueue, JoinableQueue, Pipe, Manager,
get_context, Pool) it is mpx's; everything else is the stdlib's own object.
Beyond the stdlib: ``backend=`` and ``serializer=`` on every factory,
``PriorityQueue``, ``SharedArray`` and :func:`backends`.

The stdlib submodules people import (``mpx.shared_memory``,
``mpx.synchronize``, ...) are the stdlib's modules themselves unless mpx has
its own (``mpx.context``, ``mpx.connection``, ``mpx.queues``,
``mpx.managers``, ``mpx.pool``).

Typed: the ``.pyi`` stubs beside the modules (and ``py.typed``) give every
name its type, and the queue factories take the item type at run time as
well: ``q: mpx.Queue[int] = mpx.Queue[int](maxsize=8)``.
"""

import importlib
import importlib.abc
import importlib.util
import logging as _logging
import multiprocessing as _mp
import sys

from . import connection, context as _context, queues
from . import backends   # callable: mpx.backends() is the table
from ._serial import SerializationError
from .queues import ShutDown
from ._version import __version__

# mpx's own warnings (a named object it could not record, a refused
# connection, ...) go to the "mpx" logger; as a library, mpx prints nothing
# unless the program configures logging.
_logging.getLogger("mpx").addHandler(_logging.NullHandler())

_default = _context.default_context

__all__ = sorted(set(_mp.__all__) | {"PriorityQueue", "SharedArray", "backends",
                                     "SerializationError", "ShutDown"})

# The names mpx implements itself; every other public name is the stdlib's
# own object (the same function, class or bound method), so it shares the
# stdlib's state (start method, logger, ...) exactly.
_OWN = ("Queue", "SimpleQueue", "JoinableQueue", "Pipe", "Manager", "Pool", "get_context")

for _name in _mp.__all__:
    globals()[_name] = getattr(_default if _name in _OWN else _mp, _name)
PriorityQueue = _default.PriorityQueue
del _name


def __getattr__(name):
    # SharedArray needs numpy; import it (and numpy) only when first used.
    if name == "SharedArray":
        SharedArray = _context.sharedarray_class()
        globals()["SharedArray"] = SharedArray
        return SharedArray
    raise AttributeError(f"module 'mpx' has no attribute {name!r}")


# --- stdlib submodules served as they are --------------------------------
# mpx.X for these is multiprocessing.X itself (the same module object), so
# their classes, registries and globals are shared with the stdlib.
_STDLIB_SUBMODULES = frozenset({
    "dummy", "forkserver", "heap", "popen_fork", "popen_forkserver",
    "popen_spawn_posix", "process", "reduction", "resource_sharer",
    "resource_tracker", "shared_memory", "sharedctypes", "spawn",
    "synchronize", "util",
})


class _StdlibSubmodules(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """Makes ``import mpx.X`` give ``multiprocessing.X`` for the names above."""

    def find_spec(self, fullname, path=None, target=None):
        parts = fullname.split(".")
        if parts[0] == __name__ and len(parts) > 1 and parts[1] in _STDLIB_SUBMODULES:
            return importlib.util.spec_from_loader(fullname, self)
        return None

    def create_module(self, spec):
        module = importlib.import_module("multiprocessing." + spec.name.split(".", 1)[1])
        # The import system is about to stamp our spec on the module; keep
        # the stdlib's, which exec_module puts back.
        spec.loader_state = module.__spec__
        return module

    def exec_module(self, module):
        # The stdlib module is already executed: only undo the spec stamp.
        module.__spec__ = module.__spec__.loader_state


if not any(isinstance(f, _StdlibSubmodules) for f in sys.meta_path):
    sys.meta_path.insert(0, _StdlibSubmodules())
