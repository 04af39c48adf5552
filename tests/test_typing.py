"""The typed API: the stubs, what mypy makes of them, and the run-time side.

- tests/programs/typed_example.py uses every family with its types written
  out; ``mypy --strict`` must find nothing in it (or in the stubs), and the
  program must run.
- A snippet of deliberate mistakes must give exactly the errors marked in
  it, so the clean run above cannot be clean because nothing is checked.
- stubtest compares the stubs with the modules they describe.
- At run time the queue factories and mpx.connection.Connection take a
  type argument (``mpx.Queue[int]``) and otherwise behave as before.

How mypy is run: from the checkout (so ``import mpx`` is this tree) with
``--follow-imports=silent``. mpx's implementation modules are not
annotated (the ``.pyi`` stubs are its typed face) and an installed package
is always checked that way (mypy reports nothing inside site-packages);
the stubs themselves are named on the command line, so errors in them are
reported.
"""

import glob
import inspect
import os
import pickle
import re
import subprocess
import sys
import textwrap
import types

import pytest

import mpx
import mpx.connection

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
EXAMPLE = os.path.join(ROOT, "tests", "programs", "typed_example.py")
STUBS = sorted(os.path.relpath(p, ROOT)
               for p in glob.glob(os.path.join(ROOT, "mpx", "**", "*.pyi"), recursive=True))

needs_mypy = pytest.mark.skipif(
    __import__("importlib").util.find_spec("mypy") is None,
    reason="mypy is not installed (it is in the 'test' extra: pip install -e '.[test]')")


@pytest.fixture(scope="module")
def mypy_cache(tmp_path_factory):
    # One cache for the module's runs (typeshed and numpy's stubs are read
    # once), outside the checkout.
    return str(tmp_path_factory.mktemp("mypy-cache"))


def _mypy(cache, *files):
    cmd = [sys.executable, "-m", "mypy", "--strict", "--follow-imports=silent",
           "--cache-dir", cache, "--show-error-codes", "--no-color-output", *files]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)


@needs_mypy
def test_typed_example_and_stubs_pass_mypy_strict(mypy_cache):
    assert "mpx/__init__.pyi" in STUBS
    out = _mypy(mypy_cache, os.path.relpath(EXAMPLE, ROOT), *STUBS)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.startswith("Success: no issues found"), out.stdout


# Each line marked "# E: code" must give exactly that error, and no other
# line may give one.
MISTAKES = '''
import numpy as np

import mpx
from mpx.connection import Connection

q: mpx.Queue[int] = mpx.Queue()
q.put("x")  # E: arg-type
ctx = mpx.get_context("fork")
ctx.Queue[int]().put(b"x")  # E: arg-type
mpx.Queue[int](maxsize=3).put_many(["a"])  # E: list-item
text: str = mpx.JoinableQueue[int]().get()  # E: assignment
ctx.SimpleQueue[bytes]().put(1.5)  # E: arg-type
mpx.PriorityQueue[str]().put("job", priority="high")  # E: arg-type
item: bytes = mpx.PriorityQueue[str]().get_with_priority()[0]  # E: assignment
end: Connection[int]
end, _ = mpx.Pipe()
end.send("x")  # E: arg-type
mpx.Queue(backend=3)  # E: arg-type
mpx.Queue(serializer="json")  # E: arg-type
small: mpx.SharedArray[np.int8] = mpx.SharedArray(3)  # E: assignment
mpx.get_context("spawn").Manager().dict(1)  # E: call-overload
mpx.backends()[0]["nmae"]  # E: typeddict-item
'''


@needs_mypy
def test_mypy_finds_each_planted_mistake(mypy_cache, tmp_path):
    path = tmp_path / "mistakes.py"
    path.write_text(MISTAKES)
    expected = {(n, m.group(1)) for n, line in enumerate(MISTAKES.splitlines(), 1)
                if (m := re.search(r"# E: ([\w-]+)", line))}
    out = _mypy(mypy_cache, str(path))
    found = {(int(m.group(1)), m.group(2))
             for m in re.finditer(r"^[^:\n]*mistakes\.py:(\d+): error: .*\[([\w-]+)\]$",
                                  out.stdout, re.M)}
    assert out.returncode == 1, out.stdout + out.stderr
    assert found == expected, out.stdout


# What stubtest may report, and why. Anything else it reports fails the test
# (a stub that no longer matches its module, or a new public name).
STUBTEST_ALLOWLIST = r"""
# Factories at run time, generic classes in the stubs (as in typeshed's
# multiprocessing): the whole point of the typed names.
mpx\.(Queue|SimpleQueue|JoinableQueue|PriorityQueue)
# Its metaclass makes Connection(handle) a stdlib connection and widens
# isinstance(); the stub declares the plain class, with the awaitable
# methods every end from mpx.Pipe() has (a Connection(handle) has not).
mpx\.connection\.Connection
mpx\.connection\.Connection\.(recv_async|send_async|poll_async)
# Registered manager methods are (self, *args, **kwds) at run time; the stub
# keeps typeshed's precise parameters.
mpx\.managers\.SyncManager\.\w+
# Not typed yet (Any through the stub's __getattr__).
mpx\.managers\.__all__
mpx\.managers\.(AcquirerProxy|Array|ArrayProxy|AutoProxy|BarrierProxy|BaseListProxy|BasePoolProxy|BaseProxy|ConditionProxy|DictProxy|EventProxy|IteratorProxy|ListProxy|MakeProxyType|NamespaceProxy|PoolProxy|RebuildProxy|RemoteTraceback|Server|State|Value|ValueProxy|all_methods|public_methods)
# The stdlib's own modules: "from multiprocessing.X import *" has no __all__.
mpx\.(dummy|forkserver|heap|pool|popen_fork|popen_forkserver|popen_spawn_posix|process|reduction|resource_sharer|resource_tracker|shared_memory|sharedctypes|spawn|synchronize|util)\.__all__
"""


def _unstubbed_modules():
    """mpx's modules that have no .pyi: stubtest would compare their source
    with itself (and stop at any that fails to import), so they are left
    out; the stubs are what this test is about."""
    for path in glob.glob(os.path.join(ROOT, "mpx", "**", "*.py"), recursive=True):
        if not os.path.exists(path + "i"):
            rel = os.path.splitext(os.path.relpath(path, ROOT))[0].split(os.sep)
            yield ".".join(rel[:-1] if rel[-1] == "__init__" else rel)


@needs_mypy
def test_stubs_match_the_runtime(tmp_path):
    allow = tmp_path / "allowlist.txt"
    allow.write_text(STUBTEST_ALLOWLIST + "".join(
        re.escape(m) + r"(\..*)?" + "\n" for m in sorted(_unstubbed_modules())))
    # The modules without stubs are not annotated: their errors would stop
    # stubtest before it compares anything.
    config = tmp_path / "mypy.ini"
    config.write_text("[mypy]\nfollow_imports = silent\n[mypy-mpx.*]\nignore_errors = True\n")
    cmd = [sys.executable, "-m", "mypy.stubtest", "mpx", "--allowlist", str(allow),
           "--ignore-unused-allowlist", "--mypy-config-file", str(config)]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-6000:] + out.stderr[-3000:]


def test_typed_example_runs():
    pytest.importorskip("numpy", reason="the example's SharedArray needs numpy")
    out = subprocess.run([sys.executable, EXAMPLE], capture_output=True, text=True,
                         timeout=90)
    assert out.returncode == 0, out.stdout + out.stderr
    assert out.stdout.strip() == "typed example: ok", out.stdout + out.stderr


# --- the run-time side ---------------------------------------------------

FACTORIES = ("Queue", "SimpleQueue", "JoinableQueue", "PriorityQueue")


@pytest.mark.parametrize("family", FACTORIES)
def test_factories_take_a_type_argument(family):
    factory = getattr(mpx, family)
    assert factory[int] is factory
    assert factory[tuple[int, str]] is factory
    ctx = mpx.get_context("spawn")
    for make in (factory, getattr(ctx, family)):
        a, b = make(), make[int]()
        try:
            assert type(a) is type(b)
        finally:
            a.close()
            b.close()


def test_subscripted_queue_is_the_same_queue():
    plain, typed = mpx.Queue(maxsize=3), mpx.Queue[int](maxsize=3)
    try:
        assert type(plain) is type(typed)
        assert plain.maxsize == typed.maxsize == 3
    finally:
        plain.close()
        typed.close()


def test_factory_keeps_the_bound_method_interface():
    ctx = mpx.context.default_context
    q = mpx.Queue
    method = types.MethodType(q.__func__, ctx)
    assert q.__self__ is ctx and callable(q)
    assert q.__name__ == "Queue" and q.__qualname__ == method.__qualname__
    assert q.__doc__ == method.__doc__ and "FIFO" in q.__doc__
    assert inspect.signature(q) == inspect.signature(method)
    assert "backend" in inspect.signature(q).parameters
    assert q == ctx.Queue and hash(q) == hash(ctx.Queue)
    assert q != mpx.get_context("fork").Queue
    # Stored on a class it stays bound, as a bound method does.
    holder = type("Holder", (), {"make": q})
    assert holder().make == q
    # On the class, the plain function (as for any method).
    assert mpx.context.MpxContext.Queue is q.__func__
    assert "<bound factory" in repr(q)
    import pydoc
    assert "Queue(maxsize=0, *, backend=None" in pydoc.render_doc(q, renderer=pydoc.plaintext)


def test_factory_pickles_as_an_attribute_of_its_context():
    for factory in (mpx.Queue, mpx.PriorityQueue, mpx.get_context("spawn").JoinableQueue):
        again = pickle.loads(pickle.dumps(factory))
        assert again == factory and again.__self__ is factory.__self__
    assert pickle.loads(pickle.dumps(mpx.context.default_context)) is mpx.context.default_context


def test_connection_class_builds_stdlib_connections():
    import multiprocessing.connection as std
    r, w = os.pipe()
    reader = mpx.connection.Connection(r, writable=False)
    writer = mpx.connection.Connection[bytes](w, readable=False)
    try:
        # Exactly the stdlib's class: pickling finds its reducer by exact type.
        assert type(reader) is std.Connection and type(writer) is std.Connection
        writer.send_bytes(b"x")
        assert reader.recv_bytes() == b"x"
    finally:
        reader.close()
        writer.close()
    alias = mpx.connection.Connection[bytes]
    assert alias.__origin__ is mpx.connection.Connection and alias.__args__ == (bytes,)
    assert pickle.loads(pickle.dumps(mpx.connection.Connection)) is mpx.connection.Connection


@pytest.mark.parametrize("backend", ["shm", "pipe", "fifo"])
def test_every_pipe_end_is_a_connection(backend):
    import multiprocessing.connection as std
    a, b = mpx.Pipe(backend=backend)
    try:
        assert isinstance(a, mpx.connection.Connection)
        assert issubclass(type(b), mpx.connection.Connection)
        # As before for the stdlib's own check: the ends that are stdlib
        # connections (pipe, fifo) still are.
        assert isinstance(a, std.Connection) == (backend != "shm")
    finally:
        a.close()
        b.close()
    assert not isinstance(3, mpx.connection.Connection)
    assert not issubclass(int, mpx.connection.Connection)


def test_connection_subclass_builds_itself():
    r, w = os.pipe()
    os.close(w)

    class Mine(mpx.connection.Connection):
        pass

    conn = Mine(r)
    try:
        assert type(conn) is Mine and isinstance(conn, Mine)
        other = mpx.connection.Connection(os.dup(r))
        assert not isinstance(other, Mine)
        other.close()
    finally:
        conn.close()
