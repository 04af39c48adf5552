"""A pytest plugin: chosen modules get mpx when they import multiprocessing.

``python -m pytest -p mpx_substitute`` (with this folder on ``sys.path``)
and ``MPX_SUBSTITUTE=joblib,test_`` make every module whose name starts with
one of those prefixes (``MPX_SUBSTITUTE_EXCEPT=joblib.externals`` keeps
some out) see mpx where it imports ``multiprocessing``: ``import
multiprocessing as mp`` binds mpx, ``from multiprocessing import
connection`` gives ``mpx.connection``, ``from multiprocessing.pool import
Pool`` gives ``mpx.pool.Pool``. That is the one-line change a user makes
(``import mpx as multiprocessing``), made in a library and its tests
without editing them. Every other module, the stdlib's own included,
keeps the stdlib.

Used by ``benchmarks/third_party.py``.
"""

import builtins
import importlib
import os

import mpx

_PREFIXES = tuple(p for p in os.environ.get("MPX_SUBSTITUTE", "").split(",") if p)
_EXCEPT = tuple(p for p in os.environ.get("MPX_SUBSTITUTE_EXCEPT", "").split(",") if p)
_import = builtins.__import__


def _wanted(globals):
    name = (globals or {}).get("__name__") or ""
    return name.startswith(_PREFIXES) and not name.startswith(_EXCEPT)


def _substituting_import(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and (name == "multiprocessing" or name.startswith("multiprocessing.")) \
            and _wanted(globals):
        target = "mpx" + name[len("multiprocessing"):]
        module = importlib.import_module(target)
        if not fromlist:
            return mpx            # `import multiprocessing[.x]` binds the top package
        for attr in fromlist:
            if attr != "*" and not hasattr(module, attr):
                try:
                    importlib.import_module(f"{target}.{attr}")
                except ImportError:
                    pass          # a plain name: the import statement reports it
        return module
    return _import(name, globals, locals, fromlist, level)


if _PREFIXES:
    builtins.__import__ = _substituting_import


def pytest_report_header(config):
    if _PREFIXES:
        return [f"mpx substituted for multiprocessing in modules {list(_PREFIXES)}"
                f"{f' except {list(_EXCEPT)}' if _EXCEPT else ''}"]
    return ["mpx_substitute: MPX_SUBSTITUTE is empty, nothing substituted"]
