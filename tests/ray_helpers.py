"""What the Ray tests share (tests/test_ray*.py import it).

- `ray_instance` (session): one local Ray instance for the whole run
  (``num_cpus=2``, no dashboard), started on first use and shut down at
  the end of the session. Its processes are registered with conftest's
  leak check as session helpers, and removed from it once they are gone.
  Workers get the tests directory on their path, so test functions pickled
  by reference import there. Skips (with the reason) where Ray is not
  installed: Ray has no wheel for every Python mpx supports.
- `run_driver(code)`: `code` in a second Python process (a second Ray
  driver joins the instance through RAY_ADDRESS), bounded in time, killed
  with its process group if it overruns.
"""

import os
import signal
import subprocess
import sys

import pytest

import conftest

TESTS = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(TESTS)


def ray_or_skip():
    try:
        import ray
    except ImportError:
        pytest.skip(f"ray not installed for Python {sys.version_info.major}."
                    f"{sys.version_info.minor} (pip install \"mpx[ray]\" where Ray has a "
                    "wheel)")
    return ray


def _ray_processes(ray):
    """The instance's own processes: the node's (gcs, raylet, ...), which
    start the workers as their children."""
    import psutil
    return {p.pid for p in psutil.Process().children()}


_started = []       # the instance, once a test module's copy of the fixture made it


@pytest.fixture(scope="session")
def ray_instance():
    # Each test module imports this fixture, which makes it one fixture per
    # module for pytest: the first starts Ray, the others reuse it, and the
    # first one's teardown (at the end of the session) stops it.
    ray = ray_or_skip()
    if _started:
        yield ray
        return
    _started.append(True)
    import psutil
    before = {p.pid for p in psutil.Process().children()}
    path = os.environ.get("PYTHONPATH")
    os.environ["PYTHONPATH"] = os.pathsep.join([TESTS, ROOT] + ([path] if path else []))
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False,
             namespace="mpx-tests")
    helpers = _ray_processes(ray) - before
    conftest.SESSION_HELPERS.update(helpers)
    try:
        yield ray
    finally:
        ray.shutdown()
        for pid in helpers:
            try:
                psutil.Process(pid).wait(10)
            except psutil.Error:
                pass
        conftest.SESSION_HELPERS.difference_update(helpers)
        if path is None:
            os.environ.pop("PYTHONPATH", None)
        else:
            os.environ["PYTHONPATH"] = path


def gcs_address(ray):
    return ray.get_runtime_context().gcs_address


def run_driver(code, timeout=90, **env):
    """Run `code` with this Python in a new session; (returncode, stdout,
    stderr). Killed with its whole process group if it overruns."""
    full = dict(os.environ, **env)
    full["PYTHONPATH"] = os.pathsep.join([TESTS, ROOT] + (
        [full["PYTHONPATH"]] if full.get("PYTHONPATH") else []))
    p = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE,
                         stderr=subprocess.PIPE, text=True, env=full,
                         start_new_session=True)
    try:
        out, err = p.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(p.pid, signal.SIGKILL)
        out, err = p.communicate()
        raise AssertionError(f"driver overran {timeout} s:\n{out}\n{err[-3000:]}")
    return p.returncode, out, err
