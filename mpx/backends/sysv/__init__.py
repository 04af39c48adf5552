"""The "sysv" backend: SysV message queues (``mq``) and SysV shared memory
for SharedArray (``segment``), through sysv_ipc. The registry imports each
module only when a family asks for it."""
