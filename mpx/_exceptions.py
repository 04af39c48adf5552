"""Exceptions that several layers raise, defined below all of them.

``ShutDown`` is raised by the shm queues (``mpx.backends.shm``) and by
``mpx.pool``; its public names are ``mpx.queues.ShutDown`` and
``mpx.ShutDown``. ``RingClosed`` is raised by the ring (``mpx._ext.ring``,
which exports it under that name) and by the posix and sysv queues. They
live here so that no backend imports the public surface above it, or
another backend's extension, to raise them.
"""

import queue as _queue

__all__ = ["ShutDown", "RingClosed"]

if hasattr(_queue, "ShutDown"):
    ShutDown = _queue.ShutDown
else:
    class ShutDown(Exception):
        """Raised by put() after shutdown(), and by get() once a shut-down
        queue is empty (Python 3.13's ``queue.ShutDown``, for older
        Pythons)."""

    # Where users meet it, in tracebacks and in pickles (the same class).
    ShutDown.__module__ = "mpx.queues"


class RingClosed(OSError, ValueError):
    """A call on a closed ring or queue. An OSError, as a stdlib Connection
    raises for a closed handle (the shm Pipe's send/recv are the ring's
    methods), and a ValueError, as closed files raise."""


# Where it was defined before it moved here (tracebacks show this name).
RingClosed.__module__ = "mpx._ext.ring"
