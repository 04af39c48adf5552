"""The "shm" backend: everything built on the shared-memory ring
(``mpx._ext.ring``).

- ``queues``: Queue, SimpleQueue, JoinableQueue on one ring;
- ``pipe``: Pipe, a ring each way;
- ``manager``: the Manager's transport over a pair of rings;
- ``codec``: how objects become ring messages (the Python side of the
  hooks the ring calls);
- ``channel``: a byte channel over a ring (pipe and manager);
- ``watch``: a readiness descriptor for a ring (``connection.wait``, asyncio).

The registry imports ``queues``, ``manager`` and ``pipe``; this package
imports none of them, so a first Queue does not pay for the others.
"""

# Ring size of a queue, and of each direction of a pipe, when none is given:
# room for ~80000 small messages, and for 1 MiB messages (numpy arrays
# included) to stream through the ring itself, whose pages stay warm, rather
# than through the overflow area, whose pages go cold between uses. Pages
# are only allocated as the ring is first used, so a ring that carries
# little costs little.
DEFAULT_CAPACITY = 4 << 20
