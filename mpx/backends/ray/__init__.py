"""Backend "ray": queues and pools on a Ray cluster (``pip install "mpx[ray]"``).

Ray is imported only when a ray object is made: loading this module (which
``mpx.backends()`` does) only looks whether Ray is installed. Connecting
follows ``_runtime``: an explicit address, else ``$RAY_ADDRESS``, else a
local instance that mpx starts and shuts down again; a Ray the program
started itself is used as it is and left running.

- Queue, SimpleQueue, JoinableQueue: ``_queue`` (items in a Ray actor;
  ``name=`` makes a named queue any driver of the cluster opens).
- Pool: built above the backends (``mpx._ray_pool``, chosen by
  ``mpx.pool.Pool`` for ``backend="ray"``): worker actors fed batches of
  tasks. No factory here, as for the other backends' pools.
"""

import importlib.util

from ._runtime import INSTALL_HINT

__all__ = ["FAMILIES", "unavailable", "Queue", "SimpleQueue", "JoinableQueue"]

FAMILIES = ("Queue", "SimpleQueue", "JoinableQueue", "Pool")


def unavailable():
    """Why the backend cannot work here (None when it can)."""
    try:
        found = importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        return f"needs Ray, which is not installed: {INSTALL_HINT}"
    return None


def _make(family, maxsize, serializer, name, create, ray_address):
    from . import _queue
    return _queue.make(family, maxsize, serializer, name=name, create=create,
                       address=ray_address)


def Queue(ctx, maxsize=0, *, serializer, name=None, create=True, ray_address=None):
    return _make("Queue", maxsize, serializer, name, create, ray_address)


def SimpleQueue(ctx, *, serializer, name=None, create=True, ray_address=None):
    return _make("SimpleQueue", 0, serializer, name, create, ray_address)


def JoinableQueue(ctx, maxsize=0, *, serializer, name=None, create=True, ray_address=None):
    return _make("JoinableQueue", maxsize, serializer, name, create, ray_address)
