"""mpx on every supported Python: the contract suites under 3.10, 3.12, 3.13.

The main run covers the interpreter pytest runs on; this file builds mpx
for each other supported CPython found on the machine (pyenv's, or
``python3.X`` on PATH; ``MPX_OTHER_PYTHONS=/path/a:/path/b`` names them
instead) in a virtual environment beside the checkout (``.venv-3.X``, kept
for the next run) and runs the contract suites there. A version that is not
installed is skipped with the reason.
"""

import glob
import os
import shutil
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SUPPORTED = ("3.10", "3.11", "3.12", "3.13")
# (The executor oracle runs CPython's own test_concurrent_futures, which some
# Python builds here ship without; the others run it.)
SUITES = ("tests/test_surface.py", "tests/test_registry.py",
          "tests/test_queue_contract.py", "tests/test_pipe_contract.py",
          "tests/test_executor_oracle.py", "tests/test_pool.py")
OTHERS = [v for v in SUPPORTED if v != "%d.%d" % sys.version_info[:2]]

pytestmark = pytest.mark.timeout(1500)


def _find(version):
    named = os.environ.get("MPX_OTHER_PYTHONS")
    candidates = named.split(":") if named else []
    if not named:
        root = os.environ.get("PYENV_ROOT", os.path.expanduser("~/.pyenv"))
        candidates += sorted(glob.glob(os.path.join(root, "versions", f"{version}.*",
                                                    "bin", "python3")), reverse=True)
        candidates.append(shutil.which(f"python{version}") or "")
    for python in candidates:
        if not python or not os.access(python, os.X_OK):
            continue
        out = subprocess.run([python, "-c", "import sys; print('%d.%d' % sys.version_info[:2])"],
                             capture_output=True, text=True, timeout=60)
        if out.returncode == 0 and out.stdout.strip() == version:
            return python
    return None


def _run(cmd, timeout, env=None):
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout,
                         env=env)
    assert out.returncode == 0, (f"{' '.join(cmd)} failed ({out.returncode}):\n"
                                 f"{out.stdout[-6000:]}\n{out.stderr[-3000:]}")
    return out


@pytest.mark.parametrize("version", OTHERS)
def test_contract_suites_pass_on(version):
    python = _find(version)
    if python is None:
        pytest.skip(f"CPython {version} is not installed here")
    venv = os.path.join(ROOT, f".venv-{version}")
    vpython = os.path.join(venv, "bin", "python")
    if not os.path.exists(vpython):
        _run([python, "-m", "venv", venv], timeout=300)
    # Always reinstall: the compiled core must be this checkout's.
    _run([vpython, "-m", "pip", "install", "-q", "-e", ".[test]"], timeout=900)
    env = {k: v for k, v in os.environ.items()
           if k not in ("MPX_NAMES_DIR", "MPX_TEST_NAMES_OWNER", "PYTHONPATH")}
    out = _run([vpython, "-m", "pytest", "-q", "-p", "no:cacheprovider", *SUITES],
               timeout=1200, env=env)
    assert " passed" in out.stdout and " failed" not in out.stdout, out.stdout[-3000:]
