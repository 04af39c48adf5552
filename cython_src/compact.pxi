# The compact codec: objects made only of exact builtin types, encoded and
# decoded in C. Written once, here, and included twice: into ring.pyx, so
# that put_obj/get_obj call it without a Python frame (and with no call
# through another module), and into compact.pyx, the module
# ``mpx._ext.compact`` that the posix and sysv queues (and the shm codec's
# Python side) import, so that no backend imports another's extension.
#
# Why: the common message (a tuple of an int, a str and a float) costs
# ~0.45 us to pickle.dumps and ~0.4 us to pickle.loads, which is most of what
# a message costs on the ring. This walks such an object in ~0.1 us each way.
#
# It only takes objects whose round trip gives back exactly what pickle
# would: exact None, bool, int (signed 64-bit), float, str, bytes, tuple,
# list and dict (no subclasses). It gives up (dumps_compact returns None, and
# the caller pickles) for anything else, and also where pickle keeps
# something this format would lose or where it would not pay:
#   - a list or dict met twice (shared or recursive): pickle keeps the
#     sharing, this format would make copies;
#   - more than COMPACT_MUTABLES lists and dicts, or nesting deeper than
#     COMPACT_DEPTH;
#   - an int outside 64 bits, a str that is not valid UTF-8 (lone surrogates);
#   - an encoding longer than COMPACT_MAX bytes (large data goes through the
#     pickle path, which can carry buffers out of band).
# Equal immutable objects met twice (the same str in two places) come back
# as two equal objects instead of one: only `is` can tell.
#
# Format (native byte order: a ring never leaves its machine): one value,
# then nothing.
#   'N' None   'T' True   'F' False
#   'i' int64                   'f' float64
#   's' u32 n, n bytes UTF-8    'b' u32 n, n bytes
#   't' u32 n, n values (tuple) 'l' u32 n, n values (list)
#   'd' u32 n, n key-value pairs (dict, in order)
# The decoder checks every length against the data it has and raises
# ValueError on anything inconsistent: a damaged message is an error, never a
# crash or a huge allocation.

from cpython.object cimport PyObject
from cpython.ref cimport Py_INCREF
from cpython.tuple cimport PyTuple_New, PyTuple_SET_ITEM
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.float cimport PyFloat_FromDouble, PyFloat_AS_DOUBLE
from cpython.long cimport PyLong_FromLongLong
from cpython.mem cimport PyMem_Realloc

cdef extern from "Python.h":
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow) except? -1
    bint PyUnicode_IS_COMPACT_ASCII(object o)
    void* PyUnicode_DATA(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    object PyUnicode_AsUTF8String(object o)
    object PyUnicode_DecodeUTF8(const char* s, Py_ssize_t size, const char* errors)
    Py_ssize_t PyBytes_GET_SIZE(object o)
    int PyDict_Next(object d, Py_ssize_t* pos, PyObject** key, PyObject** value)
    Py_ssize_t PyDict_GET_SIZE(object o)
    Py_ssize_t PyTuple_GET_SIZE(object o)
    Py_ssize_t PyList_GET_SIZE(object o)
    PyObject* PyTuple_GET_ITEM(object o, Py_ssize_t i)
    PyObject* PyList_GET_ITEM(object o, Py_ssize_t i)
    int PyDict_SetItem(object d, object k, object v) except -1

cdef enum:
    COMPACT_MAX = 65536         # longest encoding (bytes)
    COMPACT_DEPTH = 32          # deepest nesting of containers
    COMPACT_MUTABLES = 64       # most lists and dicts in one object
    COMPACT_STACK = 256         # encodings up to this long need no malloc

cdef struct _CEnc:
    char* buf
    Py_ssize_t length
    Py_ssize_t cap
    char* stack                 # the caller's COMPACT_STACK bytes
    PyObject* seen[COMPACT_MUTABLES]
    int nseen

# _c_value and friends: 0 encoded, 1 give up (not encodable), -1 error.

cdef int _c_room(_CEnc* e, Py_ssize_t n) except -1:
    """Make room for `n` more bytes (1: the encoding would be too long)."""
    cdef Py_ssize_t cap
    cdef char* p
    if e.length + n <= e.cap:
        return 0
    if e.length + n > COMPACT_MAX:
        return 1
    cap = e.cap * 4
    while cap < e.length + n:
        cap *= 2
    if cap > COMPACT_MAX:
        cap = COMPACT_MAX
    if e.buf == e.stack:
        p = <char*>PyMem_Malloc(cap)
        if p != NULL:
            memcpy(p, e.buf, e.length)
    else:
        p = <char*>PyMem_Realloc(e.buf, cap)
    if p == NULL:
        raise MemoryError()
    e.buf = p
    e.cap = cap
    return 0


cdef inline int _c_head(_CEnc* e, char op, uint32_t n) except -1:
    """An opcode and a 32-bit count (5 bytes)."""
    if _c_room(e, 5):
        return 1
    e.buf[e.length] = op
    memcpy(e.buf + e.length + 1, &n, 4)
    e.length += 5
    return 0


cdef int _c_data(_CEnc* e, char op, const char* data, Py_ssize_t n) except -1:
    if n > COMPACT_MAX or _c_head(e, op, <uint32_t>n) or _c_room(e, n):
        return 1
    memcpy(e.buf + e.length, data, n)
    e.length += n
    return 0


cdef int _c_word(_CEnc* e, char op, const void* word) except -1:
    """An opcode and 8 bytes."""
    if _c_room(e, 9):
        return 1
    e.buf[e.length] = op
    memcpy(e.buf + e.length + 1, word, 8)
    e.length += 9
    return 0


cdef int _c_mutable(_CEnc* e, object o) except -1:
    """Note a list or dict (1: met before, or too many)."""
    cdef int i
    cdef PyObject* p = <PyObject*>o
    for i in range(e.nseen):
        if e.seen[i] == p:
            return 1
    if e.nseen == COMPACT_MUTABLES:
        return 1
    e.seen[e.nseen] = p
    e.nseen += 1
    return 0


cdef int _c_value(_CEnc* e, object o, int depth) except -1:
    cdef type tp = type(o)
    cdef long long i
    cdef int overflow = 0
    cdef double f
    cdef Py_ssize_t n, k, pos
    cdef PyObject* key
    cdef PyObject* value
    if tp is int:
        i = PyLong_AsLongLongAndOverflow(o, &overflow)
        if overflow:
            return 1
        return _c_word(e, b'i', &i)
    if tp is str:
        if PyUnicode_IS_COMPACT_ASCII(o):
            return _c_data(e, b's', <const char*>PyUnicode_DATA(o), PyUnicode_GET_LENGTH(o))
        # (A UTF-8 copy; PyUnicode_AsUTF8AndSize would keep one in the
        # caller's string for as long as it lives.)
        if PyUnicode_GET_LENGTH(o) > COMPACT_MAX:
            return 1
        try:
            utf8 = PyUnicode_AsUTF8String(o)
        except UnicodeEncodeError:
            return 1        # lone surrogates: pickle carries them
        return _c_data(e, b's', PyBytes_AS_STRING(utf8), PyBytes_GET_SIZE(utf8))
    if tp is float:
        f = PyFloat_AS_DOUBLE(o)
        return _c_word(e, b'f', &f)
    if o is None:
        if _c_room(e, 1):
            return 1
        e.buf[e.length] = b'N'
        e.length += 1
        return 0
    if tp is bool:
        if _c_room(e, 1):
            return 1
        e.buf[e.length] = b'T' if o is True else b'F'
        e.length += 1
        return 0
    if tp is bytes:
        return _c_data(e, b'b', PyBytes_AS_STRING(o), PyBytes_GET_SIZE(o))
    if depth >= COMPACT_DEPTH:
        return 1
    if tp is tuple:
        n = PyTuple_GET_SIZE(o)
        if n > COMPACT_MAX or _c_head(e, b't', <uint32_t>n):
            return 1
        for k in range(n):
            if _c_value(e, <object>PyTuple_GET_ITEM(o, k), depth + 1):
                return 1
        return 0
    if tp is list:
        n = PyList_GET_SIZE(o)
        if n > COMPACT_MAX or _c_mutable(e, o) or _c_head(e, b'l', <uint32_t>n):
            return 1
        # Nothing here runs Python code, so the list cannot change under us.
        for k in range(n):
            if _c_value(e, <object>PyList_GET_ITEM(o, k), depth + 1):
                return 1
        return 0
    if tp is dict:
        n = PyDict_GET_SIZE(o)
        if n > COMPACT_MAX or _c_mutable(e, o) or _c_head(e, b'd', <uint32_t>n):
            return 1
        pos = 0
        while PyDict_Next(o, &pos, &key, &value):
            if _c_value(e, <object>key, depth + 1) or _c_value(e, <object>value, depth + 1):
                return 1
        return 0
    return 1


cdef object compact_dumps(object obj):
    """The compact encoding of `obj` (bytes), or None if it has none."""
    cdef char stack[COMPACT_STACK]
    cdef _CEnc e
    e.buf = e.stack = stack
    e.length = 0
    e.cap = COMPACT_STACK
    e.nseen = 0
    try:
        if _c_value(&e, obj, 0):
            return None
        return PyBytes_FromStringAndSize(e.buf, e.length)
    finally:
        if e.buf != e.stack:
            PyMem_Free(e.buf)


cdef struct _CDec:
    const char* p
    const char* end


cdef object _d_corrupt(str why):
    raise ValueError(f"corrupt compact message: {why}")


cdef inline uint32_t _d_count(_CDec* d) except? 0xffffffff:
    """A 32-bit count of things that each take at least one more byte."""
    cdef uint32_t n
    if d.end - d.p < 4:
        _d_corrupt("truncated")
    memcpy(&n, d.p, 4)
    d.p += 4
    if n > <uint64_t>(d.end - d.p):
        _d_corrupt("a length runs past the end")
    return n


cdef object _d_value(_CDec* d, int depth):
    cdef char op
    cdef long long i
    cdef double f
    cdef uint32_t n, k
    cdef object out, item, key
    if d.p >= d.end:
        _d_corrupt("truncated")
    op = d.p[0]
    d.p += 1
    if op == b'i' or op == b'f':
        if d.end - d.p < 8:
            _d_corrupt("truncated")
        if op == b'i':
            memcpy(&i, d.p, 8)
            d.p += 8
            return PyLong_FromLongLong(i)
        memcpy(&f, d.p, 8)
        d.p += 8
        return PyFloat_FromDouble(f)
    if op == b's' or op == b'b':
        n = _d_count(d)
        d.p += n
        if op == b's':
            return PyUnicode_DecodeUTF8(d.p - n, n, NULL)
        return PyBytes_FromStringAndSize(d.p - n, n)
    if op == b'N':
        return None
    if op == b'T':
        return True
    if op == b'F':
        return False
    if depth >= COMPACT_DEPTH:
        _d_corrupt("nested too deep")
    if op == b't':
        n = _d_count(d)
        out = PyTuple_New(n)
        for k in range(n):
            item = _d_value(d, depth + 1)
            Py_INCREF(item)
            PyTuple_SET_ITEM(out, k, item)
        return out
    if op == b'l':
        n = _d_count(d)
        out = PyList_New(n)
        for k in range(n):
            item = _d_value(d, depth + 1)
            Py_INCREF(item)
            PyList_SET_ITEM(out, k, item)
        return out
    if op == b'd':
        n = _d_count(d)
        out = {}
        for k in range(n):
            key = _d_value(d, depth + 1)
            item = _d_value(d, depth + 1)
            PyDict_SetItem(out, key, item)
        return out
    _d_corrupt(f"unknown type code {op & 0xff}")


cdef object compact_loads_from(const char* data, Py_ssize_t n):
    cdef _CDec d
    d.p = data
    d.end = data + n
    out = _d_value(&d, 0)
    if d.p != d.end:
        _d_corrupt("bytes left after the value")
    return out


cdef object compact_loads(object data):
    """The object a compact encoding (any bytes-like object) stands for."""
    cdef Py_buffer view
    if type(data) is bytes:
        return compact_loads_from(PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
    PyObject_GetBuffer(data, &view, PyBUF_SIMPLE)
    try:
        return compact_loads_from(<const char*>view.buf, view.len)
    finally:
        PyBuffer_Release(&view)

