"""Queue exceptions and classes, as ``multiprocessing.queues`` has them.

``Empty`` and ``Full`` are the ``queue`` module's, as in the stdlib.
``ShutDown`` (raised after ``shutdown()``) is Python 3.13's
``queue.ShutDown``, or the same class defined here on older Pythons; every
mpx queue with ``shutdown()`` raises this one class. The
stdlib's queue classes (constructed with ``ctx=``) are reachable here for
code that subclasses them; mpx's own queues come from ``mpx.Queue(...)``.
"""

import multiprocessing.queues as _std
from queue import Empty, Full

from ._exceptions import ShutDown

__all__ = ["Empty", "Full", "ShutDown", "Queue", "SimpleQueue", "JoinableQueue"]

Queue = _std.Queue
SimpleQueue = _std.SimpleQueue
JoinableQueue = _std.JoinableQueue


def __getattr__(name):
    try:
        return getattr(_std, name)
    except AttributeError:
        raise AttributeError(f"module 'mpx.queues' has no attribute {name!r}") from None
