"""Connecting to Ray, and leaving it as found.

Facts this module is built on
-----------------------------
- A process has at most one Ray connection (``ray.init``); a second
  ``ray.init`` raises unless told to ignore it, so mpx looks first
  (``ray.is_initialized``) and uses whatever the program already set up.
- ``ray.init(address=...)`` (or the ``RAY_ADDRESS`` environment variable)
  joins a running cluster; ``ray.init()`` with neither starts a local
  instance whose processes end at ``ray.shutdown()`` or at the exit of the
  process that started it.
- mpx shuts Ray down only if mpx itself called ``ray.init`` and the last mpx
  object that counted on it let go: a Ray the program started, or one that
  an mpx object still uses, is never shut down under its feet.
- A Ray connection does not survive ``fork``: a forked child of a connected
  process sees ``ray.is_initialized()`` true with a core worker it cannot
  use (calls hang or crash). mpx remembers the pid that connected and
  refuses, with a clear error, to use Ray from such a child.
"""

import os
import threading

__all__ = ["ray_module", "acquire", "release", "check_process", "INSTALL_HINT"]

INSTALL_HINT = 'pip install "mpx[ray]"'

_lock = threading.Lock()
_users = 0          # acquire() calls not yet released
_ours = False       # mpx called ray.init in this process
_pid = None         # the process whose Ray connection mpx uses


def ray_module():
    """The ray package, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError as e:
        raise ImportError(f"mpx's 'ray' backend needs Ray: {INSTALL_HINT} ({e})") from e
    return ray


def check_process():
    """Refuse to use a Ray connection inherited through fork."""
    if _pid is not None and _pid != os.getpid():
        raise RuntimeError(
            "this process was forked from one connected to Ray, and a Ray connection "
            "does not survive fork: start it with the 'spawn' or 'forkserver' start "
            "method (or run it as a Ray task) to use mpx's ray objects there")


def acquire(address=None):
    """Make sure this process is connected to Ray and count one user.

    `address` (or ``$RAY_ADDRESS`` when None) names a running cluster;
    with neither, and no connection yet, a local instance starts. Returns
    the ray module."""
    global _users, _ours, _pid
    ray = ray_module()
    with _lock:
        check_process()
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS") or None
            kwargs = {} if address else {"include_dashboard": False}
            ray.init(address=address, **kwargs)
            _ours = True
            _users = 0
        _pid = os.getpid()
        _users += 1
    return ray


def release():
    """One user is done; shut Ray down if mpx started it and none is left."""
    global _users, _ours
    ray = ray_module()
    with _lock:
        if _pid != os.getpid():
            return
        _users = max(0, _users - 1)
        if _users == 0 and _ours:
            _ours = False
            if ray.is_initialized():
                ray.shutdown()


def connect_for_rebuild(address):
    """An unpickled queue in a process not yet connected joins the cluster
    the queue lives in (the address it was pickled with). No user is
    counted: the connection lasts as long as the process."""
    ray = ray_module()
    with _lock:
        check_process()
        if not ray.is_initialized():
            global _pid
            ray.init(address=address or os.environ.get("RAY_ADDRESS") or "auto")
            _pid = os.getpid()
    return ray


def gcs_address():
    """The address other processes join this cluster with (None if unknown)."""
    ray = ray_module()
    try:
        return ray.get_runtime_context().gcs_address
    except Exception:
        return None
