"""Refuse, with a clear error, what cannot travel to another Ray node.

mpx's local objects (shared-memory queues and pipes, kernel message queues,
SharedArray, the stdlib's connections) pickle as a reference to something
on this machine: a descriptor to duplicate, a /dev/shm name, a kernel id.
Sent to a task on another node they would fail there, with an error about
a missing file. Their pickles all name a rebuilding function in one of a
few modules, so the serialized bytes are checked for those names: a
substring search (as fast as memchr, costs nothing for ordinary data) and,
only on a hit, a walk over the pickle's opcodes to confirm it is a global
reference and not a string that happens to contain it.
"""

import pickletools

__all__ = ["check"]

# Module prefixes of objects local to one machine. Every mpx backend but
# this one is (their module paths may move inside mpx.backends).
_LOCAL = ("mpx.backends.", "mpx.sharedarray", "multiprocessing.resource_sharer")
_PORTABLE = ("mpx.backends.ray",)
_NEEDLES = (b"mpx.backends.", b"mpx.sharedarray", b"resource_sharer")


def _local_module(module):
    return module.startswith(_LOCAL) and not module.startswith(_PORTABLE)


def _globals(data):
    """Module names of the globals a pickle stream refers to."""
    strings = []
    try:
        for op, arg, _ in pickletools.genops(data):
            if op.name == "GLOBAL":
                yield arg.split(" ", 1)[0]
            elif op.name == "STACK_GLOBAL" and len(strings) >= 2:
                yield strings[-2]
            elif isinstance(arg, str) and "UNICODE" in op.name:
                strings.append(arg)
    except Exception:
        return          # not a pickle stream (a custom serializer's output)


def check(data, what):
    """Raise TypeError if serialized `data` refers to an object local to
    this machine; `what` names it in the message ("a task's arguments")."""
    if type(data) is str:
        return
    view = bytes(data) if not isinstance(data, bytes) else data
    if not any(n in view for n in _NEEDLES):
        return
    for module in _globals(view):
        if _local_module(module):
            raise TypeError(
                f"{what} holds an mpx object local to this machine (it pickles through "
                f"{module}: shared memory, a kernel queue or a descriptor), which Ray "
                "cannot carry to other nodes. On Ray, use mpx.Queue(backend='ray') "
                "(MPX_BACKEND=ray makes it the default), or send the data instead")
