"""Helpers that several backends share; no backend of its own.

- ``conn``: a Connection that sends through mpx's serializer (pipe, fifo).
- ``mq``: the queue classes over a kernel message queue (posix, sysv).
- ``segment``: the SharedArray segment format and its records (posix,
  sysv, file); ``procfd`` finds a deleted segment through /proc (segment).
- ``stream``: the Manager's RPC framing over a byte stream (shm, unix, tcp).

Nothing here imports a backend; the registry never lists these modules.
"""
