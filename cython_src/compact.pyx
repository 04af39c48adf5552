# The compact codec as a module of its own, ``mpx._ext.compact``: the
# encoding of compact.pxi (see there) for the backends that are not the
# ring (the posix and sysv queues frame their messages in Python).

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from libc.stdint cimport uint32_t, uint64_t, int64_t
from libc.string cimport memcpy

include "compact.pxi"


def dumps_compact(obj):
    """The compact encoding of `obj` (bytes), or None when `obj` is not made
    only of exact None, bool, int (64-bit), float, str, bytes, tuple, list and
    dict, or pickle would keep something the encoding loses (see compact.pxi)."""
    return compact_dumps(obj)


def loads_compact(data):
    """The object a compact encoding stands for; ValueError if it is damaged."""
    return compact_loads(data)
