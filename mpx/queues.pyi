# Types of mpx.queues: the stdlib's exceptions and queue classes, and
# ShutDown, which is queue.ShutDown on Python 3.13 and mpx's own class before.

import sys
from multiprocessing.queues import (
    JoinableQueue as JoinableQueue,
    Queue as Queue,
    SimpleQueue as SimpleQueue,
)
from queue import Empty as Empty, Full as Full

__all__ = ["Empty", "Full", "ShutDown", "Queue", "SimpleQueue", "JoinableQueue"]

if sys.version_info >= (3, 13):
    from queue import ShutDown as ShutDown
else:
    class ShutDown(Exception): ...
