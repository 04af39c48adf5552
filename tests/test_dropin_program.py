"""The foundation's 'done when': a multiprocessing program with its import
changed to mpx runs unchanged under every start method."""

import os
import subprocess
import sys

import pytest

PROGRAM = os.path.join(os.path.dirname(__file__), "programs", "classic.py")


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_classic_program(method):
    out = subprocess.run([sys.executable, PROGRAM, method], capture_output=True,
                         text=True, timeout=110)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == f"ok {method}"


def cube(x):
    return x ** 3


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_process_pool_executor_accepts_an_mpx_context(method):
    # concurrent.futures reaches into the queues its mp_context makes
    # (SimpleQueue()._reader, Queue internals); mpx contexts must keep that working.
    import concurrent.futures
    import mpx
    with concurrent.futures.ProcessPoolExecutor(2, mp_context=mpx.get_context(method)) as ex:
        assert list(ex.map(cube, range(8), timeout=60)) == [x ** 3 for x in range(8)]


@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_pool_from_an_mpx_context(method):
    import mpx
    with mpx.get_context(method).Pool(2) as pool:
        assert pool.map(cube, range(8)) == [x ** 3 for x in range(8)]
        assert pool.apply_async(cube, (3,)).get(timeout=60) == 27
