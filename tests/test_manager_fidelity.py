"""The Manager where the stdlib's behaviour shows: creation errors and logging.

- A managed object's constructor that fails: the stdlib raises RemoteError
  (CPython's test_make_pool expects it), mpx the constructor's own error
  with the server's traceback; what mpx raises is both. A method that fails
  raises its own exception type, in both.
- ``mpx.log_to_stderr()``: the Manager logs what the stdlib's does, at the
  same levels, through ``mpx.get_logger()`` (the stdlib's logger).
"""

import logging
import os
import pickle
import subprocess
import sys
import textwrap

import pytest

import mpx
import mpx.managers
from multiprocessing.managers import RemoteError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


class NeedsTwo(Exception):
    """An exception whose __init__ takes two arguments and sets an attribute."""

    def __init__(self, a, b):
        super().__init__(a, b)
        self.first = a


def _missing_file():
    raise FileNotFoundError(2, "no such thing", "/nowhere/at/all")


def _needs_two():
    raise NeedsTwo("one", "two")


class Failing(mpx.managers.BaseManager):
    pass


Failing.register("missing_file", _missing_file)
Failing.register("needs_two", _needs_two)


@pytest.fixture
def manager():
    with mpx.Manager() as m:
        yield m


@pytest.fixture
def failing():
    with Failing() as m:
        yield m


def test_a_failed_creation_is_both_remoteerror_and_its_own_type(manager):
    for n in (-1, 0):
        with pytest.raises(ValueError) as info:
            manager.Pool(n)
        e = info.value
        assert isinstance(e, RemoteError) and isinstance(e, mpx.managers.RemoteError)
        assert str(e) == "Number of processes must be at least 1"
        # The better traceback stays: the server's, as the cause.
        assert isinstance(e.__cause__, mpx.managers.RemoteTraceback)
        assert "Number of processes must be at least 1" in e.__cause__.tb
    with pytest.raises(RemoteError):
        manager.Pool(-1)


def test_the_two_sided_error_keeps_attributes_and_pickles(failing):
    with pytest.raises(FileNotFoundError) as info:
        failing.missing_file()
    e = info.value
    assert isinstance(e, RemoteError)
    assert (e.errno, e.strerror, e.filename) == (2, "no such thing", "/nowhere/at/all")
    with pytest.raises(NeedsTwo) as info:
        failing.needs_two()
    e = info.value
    assert isinstance(e, RemoteError)
    assert e.args == ("one", "two") and e.first == "one"
    back = pickle.loads(pickle.dumps(e))
    assert type(back) is type(e) and back.args == e.args and back.first == "one"


def test_a_failing_method_raises_its_own_type_only(manager):
    d = manager.dict()
    with pytest.raises(KeyError) as info:
        d["absent"]
    assert not isinstance(info.value, RemoteError)


LOGGED = textwrap.dedent(r'''
    import logging, sys
    import mpx, mpx.managers

    if __name__ == "__main__":
        mpx.set_start_method(sys.argv[1])
        mpx.log_to_stderr(logging.DEBUG)
        m = mpx.Manager()
        d = m.dict()
        d[1] = 2
        del d
        m.shutdown()
''')


@pytest.mark.timeout(120)
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_the_manager_logs_what_the_stdlibs_logs(method, tmp_path):
    script = tmp_path / "logged.py"
    script.write_text(LOGGED)
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    out = subprocess.run([sys.executable, str(script), method], capture_output=True,
                         text=True, timeout=100, env=env)
    assert out.returncode == 0, out.stderr
    log = out.stderr
    for level, text in [
            ("INFO/SyncManager-", "created temp directory"),
            ("INFO/SyncManager-", "manager serving at"),
            ("DEBUG/MainProcess", "requesting creation of a shared 'dict' object"),
            ("DEBUG/SyncManager-", "'dict' callable returned object with id"),
            ("DEBUG/MainProcess", "INCREF"),
            ("DEBUG/MainProcess", "DECREF"),
            ("INFO/MainProcess", "sending shutdown message to manager"),
            ("DEBUG/SyncManager-", "manager received shutdown message")]:
        assert any(level in line and text in line for line in log.splitlines()), \
            (level, text, log)


def test_mpx_warnings_have_their_own_logger():
    # Library warnings go to "mpx" (NullHandler: silent unless configured);
    # the stdlib-style messages go to mpx.get_logger(), "multiprocessing".
    assert mpx.get_logger() is logging.getLogger("multiprocessing")
    own = logging.getLogger("mpx")
    assert own is not mpx.get_logger()
    assert any(isinstance(h, logging.NullHandler) for h in own.handlers)


def test_a_remote_exception_is_freed_without_the_cycle_collector(manager):
    # CPython gh-106558 (its TestManagerExceptions): the frames that raise
    # a server's exception keep no reference to it.
    import gc
    import queue
    import weakref
    q = manager.Queue()
    enabled = gc.isenabled()
    gc.disable()
    try:
        try:
            q.get_nowait()
        except queue.Empty as e:
            ref = weakref.ref(e)
        assert ref() is None
        try:
            manager.Pool(0)
        except ValueError as e:
            ref = weakref.ref(e)
        assert ref() is None
    finally:
        if enabled:
            gc.enable()
