"""How objects become ring messages, for every object of the shm backend
(its queues in ``queues``, its Pipe in ``pipe``).

A ring message (``mpx._ext.ring``) is a list of byte strings ("parts") and
an 8-bit tag that says how to read them:

    TAG_PICKLE  one part: the serializer's stream (a Pipe's send_bytes data
                too: as with the stdlib, recv() unpickles whatever came)
    TAG_OOB     the stream, then pickle protocol-5 out-of-band buffers,
                copied straight from the object into the ring and straight
                out into the buffers the object is rebuilt on
    TAG_BYTES   one part: a ``bytes`` object, carried without pickling
    TAG_TEXT    one part: a custom serializer's ``str`` output, UTF-8 encoded
    TAG_NDARRAY a plain numpy array: "dtype shape" as ASCII, then its data
                (pickling an array costs ~10 us of global and dtype lookups;
                this costs ~1 us, and the data is copied as with TAG_OOB)
    TAG_COMPACT one part: the compact encoding of an object made only of
                exact None, bool, int, float, str, bytes, tuple, list and dict
                (cython_src/compact.pxi: ~0.15 us each way where pickle takes
                ~0.45; pickle remains for everything it does not take)
    TAG_BYTEARRAY  an empty part, then a ``bytearray``'s data: the ring hands
                back every part after the first as a fresh bytearray, so
                this is one copy each way (pickle keeps a bytearray in band:
                two copies each way and a temporary of its size)

The shortcuts (bytes unpickled, buffers out of band, raw arrays, compact
objects) are taken only with the pickle-based serializers ("pickle", and
"cloudpickle", which pickles these objects exactly as pickle does), where
they give back exactly what pickle would; a custom serializer sees every
object.
"""

import functools
import pickle

from ... import _serial
from ..._ext.compact import loads_compact

__all__ = ["TAG_PICKLE", "TAG_OOB", "TAG_BYTES", "TAG_TEXT", "TAG_NDARRAY",
           "TAG_COMPACT", "TAG_BYTEARRAY", "OOB_RETRY", "Codec"]

TAG_PICKLE = 0
TAG_OOB = 1
TAG_BYTES = 2
TAG_TEXT = 3
TAG_NDARRAY = 4
TAG_COMPACT = 5
TAG_BYTEARRAY = 6

# A tuple, list or dict whose plain stream is at least this long, and that
# holds an array directly, is pickled again with out-of-band buffers.
OOB_RETRY = 256 << 10

# Types whose objects never carry large raw buffers: they are pickled in
# band on the fast path. Grows as puts meet new types (shared with the
# compiled put via Ring.enc_plain, so it is mutated, never replaced).
plain_types = {tuple, list, dict, set, frozenset, int, float, str, bool, complex,
               type(None)}
_oob_types = {bytearray, memoryview, pickle.PickleBuffer}


def wants_oob(tp):
    """Should an object of type `tp` go out of band (large raw buffers)?"""
    if tp in _oob_types:
        return True
    if tp in plain_types:
        return False
    # numpy arrays (and subclasses of the buffer types) pickle their data
    # as a PickleBuffer under protocol 5; checking by name keeps numpy from
    # being imported for this.
    answer = issubclass(tp, (bytearray, memoryview, pickle.PickleBuffer)) or any(
        c.__module__ == "numpy" and c.__name__ == "ndarray" for c in tp.__mro__)
    if len(plain_types) + len(_oob_types) < 2000:
        (_oob_types if answer else plain_types).add(tp)
    return answer


def _goes_out_of_band(tp):
    """Does pickle protocol 5 put an object of type `tp` out of band? (numpy
    arrays and PickleBuffers do; bytearrays and memoryviews do not.)"""
    return wants_oob(tp) and not issubclass(tp, (bytearray, memoryview))


# numpy dtype kinds whose items are plain bytes: a copy of the data is the
# array (not objects 'O' or numpy 2's variable-width strings 'T', whose
# items point elsewhere).
_RAW_DTYPE_KINDS = frozenset("biufcmMSUV")


def _ndarray_message(obj):
    """The TAG_NDARRAY parts of `obj`, or None when it must be pickled: only
    a C-contiguous, non-empty array of the exact ndarray type whose dtype is
    fully named by its ``str`` (no fields, sub-arrays or metadata), so the
    receiver rebuilds exactly what pickle would give."""
    dt = obj.dtype
    if (type(obj).__name__ != "ndarray" or not obj.flags.c_contiguous or not obj.nbytes
            or dt.kind not in _RAW_DTYPE_KINDS or dt.fields is not None
            or dt.subdtype is not None or dt.metadata is not None):
        return None
    head = " ".join([dt.str] + [str(n) for n in obj.shape]).encode("ascii")
    return [head, obj]


def _ndarray_from(head, data):
    import numpy
    dtype, *shape = head.decode("ascii").split(" ")
    # `data` is a fresh bytearray: the array is writable, as after pickle.
    return numpy.frombuffer(data, dtype=dtype).reshape([int(n) for n in shape])


def encode(serializer, raw, obj):
    """(msg, tag) for the ring: raises, touching nothing, if obj cannot be
    serialized. `raw`: the serializer is pickle, so the shortcuts apply.

    This is the second half of one decision tree; the first is the ring's
    compiled encoder (``Ring._encode_obj`` in ring.pyx, through the hooks
    of ``Codec.ring_hooks``), which takes bytes (TAG_BYTES) and objects with
    a compact encoding (TAG_COMPACT) itself, pickles types of
    ``plain_types`` in band (handing large streams to ``big``), and calls
    this for every other object. So neither bytes nor compact objects are
    looked for here."""
    tp = type(obj)
    if raw:
        if tp is bytearray:
            return [b"", obj], TAG_BYTEARRAY
        if wants_oob(tp):
            if tp.__module__ == "numpy":
                msg = _ndarray_message(obj)
                if msg is not None:
                    return msg, TAG_NDARRAY
            stream, buffers = serializer.dumps_oob(obj)
            if buffers:
                return [stream] + buffers, TAG_OOB
            return stream, TAG_PICKLE
    data = serializer.dumps(obj)
    if raw and len(data) >= OOB_RETRY:
        return big(serializer, obj, data)
    if type(data) is str:
        return data.encode("utf-8"), TAG_TEXT
    return data, TAG_PICKLE


def big(serializer, obj, data):
    """A large in-band stream: a container holding arrays (numpy's, or
    PickleBuffers: what pickle puts out of band) pickles again with them
    out of band (one copy less on each side); anything else keeps the stream
    it has, without a second pickling. Only the container's own items are
    looked at: deeper arrays stay in band."""
    tp = type(obj)
    if tp is tuple or tp is list or tp is dict:
        items = obj.values() if tp is dict else obj
        if any(_goes_out_of_band(type(item)) for item in items):
            stream, buffers = serializer.dumps_oob(obj)
            if buffers:
                return [stream] + buffers, TAG_OOB
    if type(data) is str:
        return data.encode("utf-8"), TAG_TEXT
    return data, TAG_PICKLE


def decode(serializer, msg):
    """The object a message (as the ring's get() returns it) stands for."""
    if type(msg) is bytes:
        return serializer.loads(msg)
    tag, parts = msg
    if tag == TAG_COMPACT and len(parts) == 1:
        return loads_compact(parts[0])
    if tag == TAG_OOB and parts:
        return serializer.loads_oob(parts[0], parts[1:])
    if tag == TAG_BYTES and len(parts) == 1:
        return parts[0]
    if tag == TAG_BYTEARRAY and len(parts) == 2:
        return parts[1]
    if tag == TAG_NDARRAY and len(parts) == 2:
        return _ndarray_from(parts[0], parts[1])
    if tag == TAG_TEXT and len(parts) == 1:
        return serializer.loads(parts[0].decode("utf-8"))
    if tag == TAG_PICKLE and len(parts) == 1:
        return serializer.loads(parts[0])
    raise ValueError(f"message with unknown tag {tag} ({len(parts)} parts) in the ring "
                     "(written by another program or mpx version?)")


class Codec:
    """One serializer's encode/decode, and the hooks that let a ring's
    compiled ``put_obj``/``get_obj`` run the common cases without a Python
    frame (``ring_hooks``: Ring attribute name -> value)."""

    __slots__ = ("serializer", "raw", "encode", "decode", "ring_hooks")

    def __init__(self, serializer):
        self.serializer = serializer
        # Bytes skip pickling only where pickling would give back equal
        # bytes; other serializers take the general path (they may return str).
        raw = self.raw = isinstance(serializer, _serial.PickleSerializer)
        # Plain functions of the serializer: no reference back to the queue
        # or connection, so those are freed without the cycle collector.
        self.encode = functools.partial(encode, serializer, raw)
        self.decode = functools.partial(decode, serializer)
        self.ring_hooks = {
            "enc_plain": plain_types if raw else frozenset(),
            "enc_dumps": serializer.dumps,
            "enc_big": functools.partial(big, serializer),
            "enc_big_size": OOB_RETRY if raw else 0,
            "enc_other": self.encode,
            "enc_bytes_tag": TAG_BYTES if raw else -1,
            "enc_compact_tag": TAG_COMPACT if raw else -1,
            "dec_compact_tag": TAG_COMPACT,
            "dec_loads": serializer.loads,
            "dec_other": self.decode,
        }
