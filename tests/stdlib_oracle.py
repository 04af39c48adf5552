"""CPython's own multiprocessing tests, run against mpx's objects.

The installed stdlib ``test._test_multiprocessing`` writes each test once
(``_TestQueue``, ``_TestConnection``, ...) and ``install_tests_in_module_dict``
turns it into concrete classes per object type (``WithProcessesTestQueue``
uses ``multiprocessing.Queue``, ``WithManagerTestQueue`` a Manager's) in a
module per start method (``test.test_multiprocessing_fork`` and co.).

This module is such a per-start-method module with mpx underneath: when
``MPX_ORACLE_METHOD`` is set at import, it makes the test module's global
``multiprocessing`` mpx (the tests call ``multiprocessing.Pipe()``,
``multiprocessing.Manager()``, ``multiprocessing.connection.Client`` ... at
run time), points the mixins' class attributes (``Queue``, ``Pipe``, ...,
bound at the test module's import) at mpx's factories, and installs the
concrete classes here. Spawned and forkserver children unpickle test
targets as ``stdlib_oracle.WithProcessesTestQueue._test_put``: they import
this module with the same environment and so get the same classes.

Run one start method with ``python -c "import stdlib_oracle as o; o.main()"``
(``tests/`` on ``sys.path``; ``tests/test_stdlib_oracle.py`` does this, one
subprocess per start method). ``main`` prints one ``class <name> ...``
line per class and a final ``ran=... failures=... errors=... skipped=...``
summary; exit status 0 when every selected test passed, 77 when the Python
running it has no stdlib test package.

To run more of CPython's classes, add their generated names to ``CLASSES``
(a name the installed version lacks is reported and skipped). Only the
deliberate differences documented in the README may go in ``EXCLUDED``, each
with its reason.
"""

import os
import sys
import time
import unittest

NO_TESTS = 77

# Generated class names (``With<Type><base without the leading _>``, or the
# plain TestCase's own name), grouped by what they exercise. Names absent
# from the installed Python's test module are reported and skipped.
CLASSES = {
    "Queue": ["WithProcessesTestQueue", "TestSimpleQueue"],
    "Connection": ["WithProcessesTestConnection"],
    "Poll": ["WithProcessesTestPoll"],
    "PicklingConnections": ["WithProcessesTestPicklingConnections"],
    "ListenerClient": ["WithProcessesTestListener", "WithProcessesTestListenerClient"],
    "Manager": ["WithManagerTestQueue", "WithManagerTestLock", "WithManagerTestSemaphore",
                "WithManagerTestCondition", "WithManagerTestEvent", "WithManagerTestBarrier",
                "WithManagerTestContainers", "WithManagerTestMyManager",
                "WithManagerTestRemoteManager", "WithManagerTestManagerRestart",
                "WithManagerTestPool",
                "TestSyncManagerTypes", "TestManagerExceptions"],
    "Pool": ["WithProcessesTestPool", "WithProcessesTestPoolWorkerErrors",
             "WithProcessesTestPoolWorkerLifetime"],
}

# (class name, test name) -> why mpx differs on purpose (README, "Differences
# from multiprocessing").
EXCLUDED = {
    ("WithProcessesTestPoolWorkerErrors", "test_unpickleable_result"):
        "deliberate: a task may return a lambda (mpx's serializer falls back to "
        "cloudpickle); the stdlib gives MaybeEncodingError. A result nothing can "
        "serialize still gives MaybeEncodingError (tests/test_pool_crash.py)",
    ("WithProcessesTestQueue", "test_queue_feeder_donot_stop_onexc"):
        "deliberate: an object that cannot be pickled raises from put() itself; "
        "the stdlib's feeder thread prints the error and drops the item",
    ("WithProcessesTestConnection", "test_missing_fd_transfer"):
        "deliberate: an shm Pipe end's fileno() is a readiness descriptor (epoll), "
        "not a socket, so the test's os.write(conn.fileno(), ...) fails in the child "
        "and the parent's recv_handle waits for ever; recv_handle's RuntimeError for "
        "bytes without a descriptor is tested in tests/test_fd_transfer.py",
}


def selected():
    """Every class name in CLASSES, in order."""
    return [name for names in CLASSES.values() for name in names]


def _install(method):
    import mpx
    # mpx.X for the stdlib's submodules comes from importing them; the tests
    # reach these through the module global ``multiprocessing``.
    import mpx.connection, mpx.dummy, mpx.heap, mpx.managers, mpx.pool  # noqa: E401,F401
    import mpx.process, mpx.queues, mpx.reduction, mpx.sharedctypes  # noqa: E401,F401
    import mpx.synchronize, mpx.util  # noqa: E401,F401
    try:
        import mpx.shared_memory  # noqa: F401
    except ImportError:
        pass
    import test._test_multiprocessing as tm
    tm.multiprocessing = mpx
    # Class attributes the test module bound to the stdlib's objects when it
    # was imported.
    for attr in ("Pipe", "Queue", "JoinableQueue", "Pool"):
        setattr(tm.ProcessesMixin, attr, staticmethod(getattr(mpx, attr)))
    tm.ProcessesMixin.connection = mpx.connection
    if getattr(tm.TestSyncManagerTypes, "manager_class", None) is not None:
        tm.TestSyncManagerTypes.manager_class = mpx.managers.SyncManager
    tm.install_tests_in_module_dict(globals(), method)
    for (cls_name, test_name), reason in EXCLUDED.items():
        cls = globals().get(cls_name)
        if cls is not None and hasattr(cls, test_name):
            setattr(cls, test_name, unittest.skip(reason)(getattr(cls, test_name)))


_METHOD = os.environ.get("MPX_ORACLE_METHOD")
if _METHOD:
    try:
        _install(_METHOD)
        _MISSING = None
    except ImportError as e:          # a Python built without its test package
        _MISSING = e


class _Result(unittest.TextTestResult):
    # Counts per class, for the summary lines.
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.per_class = {}

    def _note(self, test, kind):
        name = type(test).__name__
        counts = self.per_class.setdefault(name, {"passed": 0, "failed": 0, "skipped": 0})
        counts[kind] += 1

    def addSuccess(self, test):
        super().addSuccess(test)
        self._note(test, "passed")

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._note(test, "failed")

    def addError(self, test, err):
        super().addError(test, err)
        # setUpClass errors arrive as a _ErrorHolder, not a test of the class.
        self._note(test, "failed")

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._note(test, "skipped")

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._note(test, "passed")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._note(test, "failed")


def main(names=None):
    """Run the classes `names` (default: every class in CLASSES, or those in
    ``MPX_ORACLE_CLASSES``, comma-separated) under ``MPX_ORACLE_METHOD``."""
    if not _METHOD:
        sys.exit("set MPX_ORACLE_METHOD to fork, spawn or forkserver")
    if _MISSING is not None:
        print(f"this Python has no stdlib test._test_multiprocessing ({_MISSING})")
        sys.exit(NO_TESTS)
    if names is None:
        only = os.environ.get("MPX_ORACLE_CLASSES")
        names = only.split(",") if only else selected()
    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    for name in names:
        cls = globals().get(name)
        if cls is None:
            print(f"class {name} absent from this Python's test module: skipped")
            continue
        suite.addTests(loader.loadTestsFromTestCase(cls))
    started = time.monotonic()
    runner = unittest.TextTestRunner(stream=sys.stdout, verbosity=1, resultclass=_Result)
    result = runner.run(suite)
    for name, counts in result.per_class.items():
        print(f"class {name} passed={counts['passed']} failed={counts['failed']} "
              f"skipped={counts['skipped']}")
    print(f"ran={result.testsRun} failures={len(result.failures)} "
          f"errors={len(result.errors)} skipped={len(result.skipped)} "
          f"seconds={time.monotonic() - started:.1f}")
    sys.stdout.flush()
    sys.exit(0 if result.wasSuccessful() else 1)
