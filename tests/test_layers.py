"""The layering of DESIGN.md, checked on the import statements: nothing
imports a layer above it, backends never import each other, and nothing in
the library imports the benchmark harness."""

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PKG = os.path.join(ROOT, "mpx")

# The modules above the backends (built from them, or the public surface).
ABOVE = {"mpx", "mpx.queues", "mpx.connection", "mpx.context", "mpx.pool", "mpx.managers",
         "mpx.sharedarray", "mpx.bench", "mpx.futures"}
# Private modules that belong to a layer above (the ray pool's core is
# mpx.pool's, for backend="ray"); other private modules are below.
PRIVATE_ABOVE = {"mpx._ray_pool"}


def _modules():
    for dirpath, _, files in os.walk(PKG):
        for f in files:
            if f.endswith(".py"):
                path = os.path.join(dirpath, f)
                rel = os.path.splitext(os.path.relpath(path, ROOT))[0].split(os.sep)
                if rel[-1] == "__init__":
                    rel = rel[:-1]
                yield ".".join(rel), path, f == "__init__.py"


def _imports(modname, path, is_package):
    """Every module `modname` imports, as an absolute dotted name (a
    ``from X import name`` counts as X and as X.name)."""
    tree = ast.parse(open(path).read())
    package = modname if is_package else modname.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")
                parts = parts[:len(parts) - (node.level - 1)]
                base = ".".join(parts + ([base] if base else []))
            yield base
            for alias in node.names:
                yield f"{base}.{alias.name}"


def _under(name, top):
    return name == top or name.startswith(top + ".")


def _backend_of(modname):
    """The backend a module of mpx.backends belongs to, None for the
    registry and the shared helpers."""
    parts = modname.split(".")
    if len(parts) < 3 or parts[2].startswith("_"):
        return None
    return parts[2]


MODULES = sorted(_modules())


@pytest.mark.parametrize("modname,path,is_package", MODULES, ids=[m[0] for m in MODULES])
def test_no_import_reaches_up(modname, path, is_package):
    if modname == "mpx" or _under(modname, "mpx.bench") or modname == "mpx.__main__":
        return                          # the surface, the harness and the CLI are on top
    below_backends = (_under(modname, "mpx.backends")
                      or (modname.split(".")[1].startswith("_") and modname not in PRIVATE_ABOVE))
    bad = []
    for name in set(_imports(modname, path, is_package)):
        if _under(name, "mpx.bench"):
            bad.append(name)
        elif below_backends and name in ABOVE - {"mpx"}:
            bad.append(name)
        elif below_backends and any(_under(name, a) for a in ABOVE - {"mpx"}):
            bad.append(name)
        elif _under(modname, "mpx.backends") and _under(name, "mpx.backends"):
            mine, theirs = _backend_of(modname), _backend_of(name)
            if mine and theirs and mine != theirs:
                bad.append(name)            # backends never import each other
    assert not bad, f"{modname} imports {sorted(bad)}"


@pytest.mark.parametrize("modname,path,is_package", MODULES, ids=[m[0] for m in MODULES])
def test_only_the_shm_backend_imports_the_ring(modname, path, is_package):
    """The ring extension is the shm backend's mechanism; code that others
    share (the compact codec, RingClosed) lives in modules of its own."""
    if _under(modname, "mpx.backends.shm"):
        return
    bad = [n for n in set(_imports(modname, path, is_package)) if _under(n, "mpx._ext.ring")]
    assert not bad, f"{modname} imports {sorted(bad)}"
