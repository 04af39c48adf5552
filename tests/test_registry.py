"""The backend registry: mpx.backends(), resolve(), MPX_BACKEND, bad choices."""

import subprocess
import sys

import pytest

import mpx
from mpx import backends as registry


def test_table_lists_every_backend_with_its_families():
    rows = mpx.backends()
    names = [r["name"] for r in rows]
    assert names == list(registry.BACKENDS)
    for row in rows:
        assert set(row) == {"name", "available", "reason", "families", "description"}
        assert set(row["families"]) <= set(registry.FAMILIES)
        if not row["available"]:
            assert row["reason"], f"{row['name']} is unavailable without a reason"
    pipe = next(r for r in rows if r["name"] == "pipe")
    assert pipe["available"]
    assert {"Queue", "SimpleQueue", "JoinableQueue", "Pipe"} <= set(pipe["families"])


def test_unknown_backend_names_the_choices():
    with pytest.raises(ValueError, match="nope") as info:
        mpx.Queue(backend="nope")
    assert "pipe" in str(info.value)
    with pytest.raises(ValueError, match="pipe"):
        mpx.Pipe(backend=42)


def test_backend_that_does_not_provide_the_family():
    # Find a backend that exists but lacks Pipe.
    for row in mpx.backends():
        if "Pipe" not in row["families"]:
            with pytest.raises(ValueError, match=row["name"]):
                mpx.Pipe(backend=row["name"])
            return
    pytest.skip("every backend provides Pipe")


def test_default_is_the_first_available_in_preference_order():
    for family in registry.FAMILIES:
        order = [n for n in registry.PREFERENCE[family]
                 if n in registry.BACKENDS and family in next(
                     r for r in mpx.backends() if r["name"] == n)["families"]]
        if order:
            assert registry.default_backend(family) == order[0]


def test_bad_serializer_is_a_type_error():
    with pytest.raises(TypeError, match="dumps"):
        mpx.Queue(serializer=42)


def run(code, **env):
    import os
    full = dict(os.environ, **env)
    return subprocess.run([sys.executable, "-c", code], capture_output=True,
                          text=True, timeout=60, env=full)


def test_env_var_changes_the_default():
    out = run("from mpx import backends as r; print(r.default_backend('Queue'))",
              MPX_BACKEND="pipe")
    assert out.stdout.strip() == "pipe", out.stderr


def test_env_var_naming_an_unknown_backend_fails_loudly():
    out = run("import mpx; mpx.Queue()", MPX_BACKEND="nope")
    assert out.returncode != 0
    assert "MPX_BACKEND='nope'" in out.stderr


def test_env_var_for_a_backend_without_the_family_falls_back():
    # Some backend that has no Pipe: Pipe() still works with the default.
    for row in mpx.backends():
        if row["available"] and "Pipe" not in row["families"]:
            out = run("import mpx; a, b = mpx.Pipe(); a.send(1); print(b.recv())",
                      MPX_BACKEND=row["name"])
            assert out.stdout.strip() == "1", out.stderr
            return
    pytest.skip("no available backend lacks Pipe")


# --- every backend module provides exactly what it declares ----------------------------

def _backend_modules():
    import importlib
    for name, (_, modules) in registry.BACKENDS.items():
        for modname in modules:
            try:
                yield name, importlib.import_module(modname)
            except ImportError:
                pass        # a dependency not installed here: the table says so


@pytest.mark.parametrize("name,module", list(_backend_modules()),
                         ids=lambda v: v if isinstance(v, str) else v.__name__)
def test_backend_module_provides_exactly_what_it_declares(name, module):
    assert registry.check_module(module) == []


def test_preference_names_only_backends_that_offer_the_family():
    declared = {}
    for name, module in _backend_modules():
        declared.setdefault(name, set()).update(module.FAMILIES)
    assert set(registry.PREFERENCE) == set(registry.FAMILIES)
    for family, names in registry.PREFERENCE.items():
        for name in names:
            assert name in registry.BACKENDS, (family, name)
            if name in declared:
                assert family in declared[name], f"{name} does not offer {family}"


def test_a_module_that_breaks_its_declaration_is_refused(monkeypatch):
    import types
    fake = types.ModuleType("mpx.backends.fake_for_test")
    fake.FAMILIES = ("Queue", "Pipe", "Teapot")
    fake.Queue = lambda ctx: None
    fake.SimpleQueue = lambda ctx: None          # a factory it does not declare
    assert registry.check_module(fake) == [
        "lists the unknown family 'Teapot'",
        "lists Pipe but lacks Pipe",
        "has a SimpleQueue factory but does not list SimpleQueue"]
    shared = types.ModuleType("mpx.backends.fake_segment")
    shared.FAMILIES = ("SharedArray",)
    assert registry.check_module(shared)[0].startswith("lists SharedArray but lacks Segment")
    assert registry.check_module(types.ModuleType("x")) == ["has no FAMILIES tuple"]
    # Loaded through the registry, it is offered nowhere and says why.
    monkeypatch.setitem(sys.modules, fake.__name__, fake)
    monkeypatch.setitem(registry.BACKENDS, "fake", ("a broken backend", (fake.__name__,)))
    monkeypatch.setattr(registry, "_loaded", {})
    row = next(r for r in mpx.backends() if r["name"] == "fake")
    assert not row["available"] and "is broken: lists the unknown family" in row["reason"]
    with pytest.raises(ValueError, match="is broken"):
        registry.resolve("Queue", "fake")
