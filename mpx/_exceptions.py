"""Exceptions that several layers raise, defined below all of them.

``ShutDown`` is raised by the shm queues (``mpx.backends.shm``) and by
``mpx.pool``; its public names are ``mpx.queues.ShutDown`` and
``mpx.ShutDown``. It lives here so that a backend never imports the public
surface above it to raise it.
"""

import queue as _queue

__all__ = ["ShutDown"]

if hasattr(_queue, "ShutDown"):
    ShutDown = _queue.ShutDown
else:
    class ShutDown(Exception):
        """Raised by put() after shutdown(), and by get() once a shut-down
        queue is empty (Python 3.13's ``queue.ShutDown``, for older
        Pythons)."""

    # Where users meet it, in tracebacks and in pickles (the same class).
    ShutDown.__module__ = "mpx.queues"
