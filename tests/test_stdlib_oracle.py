"""CPython's own multiprocessing test classes, passing against mpx.

``tests/stdlib_oracle.py`` installs the classes of the installed stdlib's
``test._test_multiprocessing`` with mpx underneath (its docstring says how);
this runs them, one subprocess per start method, each bounded in time.
Skipped with the reason where the Python running the suite was installed
without its ``test`` package. The classes are listed in
``stdlib_oracle.CLASSES``; the only tests left out are the deliberate
differences in ``stdlib_oracle.EXCLUDED`` (the README lists them).
``MPX_ORACLE_CLASSES=A,B`` runs only those classes.
"""

import os
import subprocess
import sys

import pytest

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
TIMEOUT = 240
NO_TESTS = 77


@pytest.mark.timeout(TIMEOUT + 60)
@pytest.mark.parametrize("method", ["fork", "spawn", "forkserver"])
def test_cpython_multiprocessing_tests_pass_with_mpx(method, tmp_path):
    env = dict(os.environ, MPX_ORACLE_METHOD=method,
               PYTHONPATH=os.pathsep.join([ROOT, HERE, os.environ.get("PYTHONPATH", "")]))
    cmd = [sys.executable, "-c", "import stdlib_oracle; stdlib_oracle.main()"]
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=TIMEOUT,
                             cwd=tmp_path, env=env)   # the tests write files in their cwd
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"CPython's multiprocessing tests under {method} ran past {TIMEOUT} s:\n"
                    f"{(e.stdout or b'')[-6000:]}\n{(e.stderr or b'')[-4000:]}")
    if out.returncode == NO_TESTS:
        pytest.skip(out.stdout.strip())
    report = out.stdout + "\n" + out.stderr
    assert out.returncode == 0, report[-12000:]
    summary = out.stdout.strip().splitlines()[-1]
    assert summary.startswith("ran=") and not summary.startswith("ran=0 "), summary
