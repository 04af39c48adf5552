"""The drop-in surface: `import mpx as multiprocessing` must keep programs working."""

import importlib
import multiprocessing
import subprocess
import sys
import textwrap

import pytest

import mpx

# Names mpx implements itself; every other public name must be the stdlib's
# own object.
MPX_OWN = {"Queue", "SimpleQueue", "JoinableQueue", "Pipe", "Manager", "Pool",
           "get_context"}


def test_every_stdlib_public_name_is_reachable():
    missing = [n for n in multiprocessing.__all__ if not hasattr(mpx, n)]
    assert not missing, f"mpx lacks {missing}"
    assert set(multiprocessing.__all__) <= set(mpx.__all__)
    for extra in ("PriorityQueue", "SharedArray", "backends", "SerializationError",
                  "ShutDown"):
        assert extra in mpx.__all__


def test_one_shutdown_exception_for_every_queue():
    import queue

    from mpx.backends.shm import queues as shm
    assert mpx.ShutDown is mpx.queues.ShutDown is shm.ShutDown
    if hasattr(queue, "ShutDown"):          # Python 3.13: the stdlib's own
        assert mpx.ShutDown is queue.ShutDown


@pytest.mark.parametrize("name", sorted(multiprocessing.__all__))
def test_name_is_mpx_where_mpx_has_one_else_stdlib(name):
    ours, theirs = getattr(mpx, name), getattr(multiprocessing, name)
    if name in MPX_OWN:
        assert ours.__func__ is not theirs.__func__
        assert ours.__self__ is mpx.context.default_context
    else:
        assert ours is theirs


@pytest.mark.parametrize("sub", ["connection", "managers", "pool", "shared_memory",
                                 "sharedctypes", "queues", "context", "synchronize",
                                 "util", "process", "reduction", "dummy", "heap"])
def test_submodules_import(sub):
    mod = importlib.import_module(f"mpx.{sub}")
    std = importlib.import_module(f"multiprocessing.{sub}")
    # Every public name of the stdlib submodule is reachable through mpx's.
    names = getattr(std, "__all__", [n for n in vars(std) if not n.startswith("_")])
    missing = [n for n in names if not hasattr(mod, n)]
    assert not missing, f"mpx.{sub} lacks {missing}"
    assert getattr(mpx, sub) is mod


def test_stdlib_submodules_are_the_same_objects():
    import mpx.sharedctypes
    import mpx.shared_memory
    import mpx.dummy.connection
    assert mpx.sharedctypes is multiprocessing.sharedctypes
    assert mpx.shared_memory.SharedMemory is multiprocessing.shared_memory.SharedMemory
    assert mpx.dummy.connection is sys.modules["multiprocessing.dummy.connection"]
    # ...without their identity being rewritten.
    assert multiprocessing.sharedctypes.__spec__.name == "multiprocessing.sharedctypes"


def test_pool_module_is_mpx_with_every_stdlib_name():
    import multiprocessing.pool as std
    import mpx.pool
    assert mpx.pool is not std and mpx.pool.Pool is not std.Pool
    public = [n for n in vars(std) if not n.startswith("_")]
    assert not [n for n in public if not hasattr(mpx.pool, n)]
    # The stdlib's where mpx has no Pool-specific version.
    for name in ("ThreadPool", "RemoteTraceback", "MaybeEncodingError", "RUN", "CLOSE",
                 "TERMINATE", "INIT", "TimeoutError"):
        assert getattr(mpx.pool, name) is getattr(std, name)
    assert mpx.pool.AsyncResult is mpx.pool.ApplyResult


def test_get_context():
    for method in ("fork", "spawn", "forkserver"):
        ctx = mpx.get_context(method)
        assert ctx.get_start_method() == method
        assert isinstance(ctx, type(multiprocessing.get_context(method)))
        assert ctx.Process is multiprocessing.get_context(method).Process
        assert ctx.get_context() is ctx
    with pytest.raises(ValueError, match="fork"):
        mpx.get_context("teleport")
    assert mpx.get_context().get_start_method() == multiprocessing.get_start_method()


def test_set_start_method_is_shared_with_the_stdlib():
    code = textwrap.dedent("""
        import mpx, multiprocessing
        mpx.set_start_method("spawn")
        assert multiprocessing.get_start_method() == "spawn"
        assert mpx.get_start_method() == "spawn"
        assert mpx.get_context().get_start_method() == "spawn"
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "ok", out.stderr


def test_import_does_not_pull_in_numpy():
    code = "import sys, mpx; print('numpy' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == "False", out.stderr


def test_managers_public_names_live_under_mpx_managers():
    """mpx.managers is a package whose parts are private; every public name
    is importable from it, and mpx's own classes and functions carry its
    name (pickles of proxies name their type by it)."""
    import importlib
    mm = importlib.import_module("mpx.managers")
    for name in mm.__all__:
        obj = getattr(mm, name)
        module = getattr(obj, "__module__", None)
        if module and module.startswith("mpx."):
            assert module == "mpx.managers", (name, module)
    assert mm.MakeProxyType("Made", ("f",)).__module__ == "mpx.managers"
