"""CPython's own concurrent.futures process-pool tests, with mpx contexts.

``concurrent.futures.ProcessPoolExecutor(mp_context=ctx)`` reaches into what
its context makes (``ctx.SimpleQueue()._reader``, ``ctx.Process``, the start
method). This runs the process-pool test classes of the installed stdlib
``test.test_concurrent_futures`` (a package from Python 3.12, a module
before) with every ``mp_context`` those tests make replaced by
``mpx.get_context(<the same start method>)``: one subprocess per start
method, bounded in time (to keep the run near a minute and a half here,
fork runs every process-pool class but wait()'s, which mostly sleep, and
spawn and forkserver the executor, deadlock and shutdown classes;
``MPX_EXECUTOR_ORACLE=all`` runs every class under every method). Where the Python running the suite was installed
without its ``test`` package (or without that test), this is skipped with
the reason; ``tests/test_pythons.py`` runs it on the other Pythons too.
"""

import os
import subprocess
import sys
import textwrap

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TIMEOUT = 300
NO_TESTS = 77

DRIVER = textwrap.dedent(r'''
import importlib, os, sys, unittest


# Under spawn and forkserver every test starts its workers afresh (about 2 s
# a test here), so those two run the classes where the transport shows: the
# executor's own tests, worker deaths and shutdown; fork runs them all.
CORE = ("ProcessPoolExecutorTest", "ExecutorDeadlockTest", "ProcessPoolShutdownTest")
# wait()'s tests mostly sleep (up to 8 s a test): fork leaves them out too.
# MPX_EXECUTOR_ORACLE=all runs every process-pool class under every method.
SLEEPY = ("WaitTest", "WaitTests")


# Under spawn and forkserver the workers import __main__: only the
# process that runs the tests may run them.
def main():
    method = sys.argv[1]
    every = os.environ.get("MPX_EXECUTOR_ORACLE") == "all"
    try:
        import test.test_concurrent_futures as pkg
    except ImportError as e:
        print(f"the stdlib test package has no test_concurrent_futures here ({e})")
        sys.exit(77)
    import mpx
    if hasattr(pkg, "__path__"):                 # a package (3.12+)
        util = importlib.import_module(pkg.__name__ + ".util")
        names = ["test_process_pool", "test_as_completed", "test_wait", "test_init",
                 "test_deadlock", "test_shutdown"]
        modules = [importlib.import_module(f"{pkg.__name__}.{n}") for n in names]
    else:                                        # one module (3.10, 3.11)
        util = pkg
        modules = [pkg]
    mixin = {"fork": util.ProcessPoolForkMixin, "spawn": util.ProcessPoolSpawnMixin,
             "forkserver": util.ProcessPoolForkserverMixin}[method]

    # Every context those tests ask for goes through ExecutorMixin.get_context
    # (after the start method's own skip checks in the mixins): mpx's instead.
    util.ExecutorMixin.get_context = lambda self: mpx.get_context(self.ctx)

    # Note what the executors got for their results, to show the rings ran.
    from concurrent.futures import process
    kinds = set()
    init = process.ProcessPoolExecutor.__init__
    def noting_init(self, *args, **kwargs):
        init(self, *args, **kwargs)
        kinds.add(type(self._result_queue).__module__ + "." +
                  type(self._result_queue).__name__)
    process.ProcessPoolExecutor.__init__ = noting_init

    loader = unittest.TestLoader()
    suite = unittest.TestSuite()
    seen = set()
    for m in modules:
        for name in sorted(vars(m)):
            cls = getattr(m, name)
            if (isinstance(cls, type) and issubclass(cls, mixin)
                    and issubclass(cls, unittest.TestCase) and cls not in seen
                    and (every or name.endswith(CORE)
                         or (method == "fork" and not name.endswith(SLEEPY)))):
                seen.add(cls)
                suite.addTests(loader.loadTestsFromTestCase(cls))
    setup = getattr(util, "setup_module", None)
    if setup is not None:
        setup()
    result = unittest.TextTestRunner(verbosity=1, stream=sys.stdout).run(suite)
    print(f"result queues: {sorted(kinds)}")
    print(f"ran={result.testsRun} failures={len(result.failures)} "
          f"errors={len(result.errors)} skipped={len(result.skipped)}")
    if "mpx.backends.shm.queues.ShmSimpleQueue" not in kinds:
        print("no executor got mpx's shm SimpleQueue: the substitution did not work")
        sys.exit(1)
    sys.exit(0 if result.wasSuccessful() else 1)


if __name__ == "__main__":
    main()
''')


@pytest.mark.timeout(TIMEOUT + 60)
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_cpython_process_pool_tests_pass_with_mpx_contexts(method):
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    try:
        out = subprocess.run([sys.executable, "-c", DRIVER, method], capture_output=True,
                             text=True, timeout=TIMEOUT, cwd=ROOT, env=env)
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"CPython's executor tests under {method} ran past {TIMEOUT} s:\n"
                    f"{(e.stdout or b'')[-4000:]}")
    if out.returncode == NO_TESTS:
        pytest.skip(out.stdout.strip())
    assert out.returncode == 0, (out.stdout[-6000:] + "\n" + out.stderr[-6000:])
    summary = out.stdout.strip().splitlines()[-1]
    assert summary.startswith("ran=") and not summary.startswith("ran=0 "), summary
