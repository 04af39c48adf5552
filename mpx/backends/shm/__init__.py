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
