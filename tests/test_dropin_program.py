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
