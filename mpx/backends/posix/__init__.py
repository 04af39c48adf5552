"""The "posix" backend: POSIX message queues (``mq``) and POSIX shared
memory for SharedArray (``segment``), through posix_ipc. The registry
imports each module only when a family asks for it."""
