"""SharedArray: numpy arrays whose memory is shared between processes.

``SharedArray(shape, dtype)`` is an ``ndarray`` subclass over a shared-memory
segment made by one of the SharedArray backends (``posix``: /dev/shm or a
memfd; ``sysv``: a SysV segment; ``file``: an mmap of a file). Every numpy
operation works on it; results of computations (``a + 1``, ``a.sum(0)``)
are ordinary arrays in private memory, views and slices stay shared.

Pickling a SharedArray, or any view of one, gives a small handle (backend,
how to reach the segment, byte offset, shape, strides, dtype), never the
data, so it costs the same for 1 KiB and 1 GiB through any queue, pipe,
Process argument or Pool task, and the receiver sees the same memory at the
same offset. A view whose memory is not in the segment (a copy, a fancy-index
result) is pickled by value, as a plain ndarray.

Lifetime
--------
A named array lives until someone calls ``unlink()`` (or ``python -m mpx rm``);
its memory stays valid for every process that has it mapped. An anonymous
array (``name=None``) is freed by the kernel when the last process mapping it
lets go; nothing here ever unlinks on behalf of a process that only attached,
and the stdlib's resource tracker is never involved. A handle is opened
through a process that holds the segment (see the backends' docstrings), so
the sender of an anonymous array must keep a reference until the receiver
has it (or the array needs a name).

Trust
-----
What a segment's header says is believed only after checking it: attaching
by name first applies ``mpx._trust``'s rule to the object itself (owned by
this user or root, granting group/others nothing beyond the opener's
``mode=``, default 0o600), then checks every header field against the
segment's real size, and refuses a dtype that holds Python objects at any
depth (its "objects" would be pointers made of the data bytes).
``unlink(name)`` and ``python -m mpx rm`` remove only this user's own
segments that start with the SharedArray magic (see the backends).

Segment layout (version 1), written by this module; backends map raw bytes
--------------------------------------------------------------------------
offset 0   8 bytes  magic b"MPXARRAY", written last, so a reader never takes
                    a half-written header for a valid one
       8   u32      layout version
      12   u32      length of the metadata text
      16   u64      data offset (a multiple of the page size)
      24   u64      data bytes
      32   16 bytes token: random, names this array in every process
      48   16 bytes reserved (zero)
      64   metadata: UTF-8 text of a Python literal dict with the dtype
           (``_encode_dtype``), shape, order, strides and name
data offset: the array's bytes, C or Fortran order.
All integers are little-endian.
"""

import ast
import errno
import math
import mmap
import operator
import os
import re
import secrets
import struct
import threading
import time
import weakref

import numpy as np

from . import _names
from . import _trust
from . import backends as _registry
from .backends._common.segment import MAGIC, InvalidSegmentError

__all__ = ["SharedArray", "InvalidSegmentError", "list_arrays", "unlink", "LAYOUT_VERSION"]

FAMILY = "SharedArray"
LAYOUT_VERSION = 1
# magic, layout version, metadata length, data offset, data bytes, token, reserved
_FIXED = struct.Struct("<8sIIQQ16s16x")
_MAX_META = 1 << 20
_HANDLE_VERSION = 1
# How long attach() waits for a named segment whose creator has not written
# its header yet (creation is a few system calls, so this is generous).
_ATTACH_WAIT = 2.0
_MAX_BYTES = 1 << 62
# numpy's limit on dimensions (NPY_MAXDIMS in numpy 2).
_MAX_DIMS = 64
# A header's dtype: plain kinds only (bool, integers, floats, complex,
# datetimes, bytes, str, raw void), nested at most this deep.
_PLAIN_KINDS = frozenset("biufcmMSUV")
_MAX_DTYPE_DEPTH = 32
_PLAIN_DTYPE = re.compile(r"[<>|=]?[a-zA-Z]\d{0,10}(\[\d{0,10}[a-zA-Z]{1,7}\])?\Z")

class _NotReady(Exception):
    """The segment exists but its creator has not published the header yet."""


# --- dtype <-> literal --------------------------------------------------------
# Structured dtypes keep their exact layout (offsets, itemsize, alignment,
# titles); ``np.lib.format`` would drop the aligned flag.

def _encode_dtype(dt):
    if dt.names is not None:
        fields = [dt.fields[n] for n in dt.names]
        return {"names": list(dt.names),
                "formats": [_encode_dtype(f[0]) for f in fields],
                "offsets": [f[1] for f in fields],
                "titles": [f[2] if len(f) > 2 else None for f in fields],
                "itemsize": dt.itemsize,
                "aligned": bool(dt.isalignedstruct)}
    if dt.subdtype is not None:
        base, shape = dt.subdtype
        return ("subarray", _encode_dtype(base), tuple(shape))
    return dt.str


class _ObjectDtype(ValueError):
    """A header's dtype holds Python objects."""


def _is_int(n):
    return isinstance(n, int) and not isinstance(n, bool)


def _int_list(value, what):
    if not isinstance(value, (list, tuple)) or not all(_is_int(n) for n in value):
        raise ValueError(f"{what} {value!r:.100} is not a list of integers")
    return list(value)


def _decode_dtype(enc, depth=0):
    """The dtype that `enc` (``_encode_dtype``'s form, read from a header that
    anyone able to write the segment may have written) describes. Only the
    shapes ``_encode_dtype`` makes are accepted, and only plain kinds:
    ValueError/TypeError otherwise, ``_ObjectDtype`` for Python objects."""
    if depth > _MAX_DTYPE_DEPTH:
        raise ValueError("dtype description nested too deeply")
    if isinstance(enc, str):
        if not _PLAIN_DTYPE.match(enc):
            raise ValueError(f"{enc!r:.100} is not the description of a plain dtype")
        dt = np.dtype(enc)
        if dt.hasobject or dt.kind == "O":
            raise _ObjectDtype(f"dtype {enc!r} holds Python objects")
        if dt.names is not None or dt.subdtype is not None or dt.kind not in _PLAIN_KINDS:
            raise ValueError(f"dtype {enc!r} is not a plain fixed-size dtype")
        return dt
    if isinstance(enc, tuple) and len(enc) == 3 and enc[0] == "subarray":
        shape = _int_list(enc[2], "subarray shape")
        if len(shape) > _MAX_DIMS or any(n < 0 for n in shape):
            raise ValueError(f"subarray shape {enc[2]!r:.100} is not a shape")
        return np.dtype((_decode_dtype(enc[1], depth + 1), tuple(shape)))
    if isinstance(enc, dict):
        if set(enc) != {"names", "formats", "offsets", "titles", "itemsize", "aligned"}:
            raise ValueError(f"structured dtype description with keys {sorted(map(repr, enc))}")
        names, formats, offsets, titles = (enc["names"], enc["formats"], enc["offsets"],
                                           enc["titles"])
        if not (isinstance(names, list) and all(isinstance(n, str) for n in names)
                and isinstance(formats, list) and isinstance(titles, list)
                and all(t is None or isinstance(t, str) for t in titles)
                and len(formats) == len(names) == len(titles)
                and _is_int(enc["itemsize"]) and isinstance(enc["aligned"], bool)):
            raise ValueError("malformed structured dtype description")
        spec = {"names": names,
                "formats": [_decode_dtype(f, depth + 1) for f in formats],
                "offsets": _int_list(offsets, "field offsets"), "itemsize": enc["itemsize"]}
        if len(spec["offsets"]) != len(names):
            raise ValueError("malformed structured dtype description")
        if any(t is not None for t in titles):
            spec["titles"] = titles
        dt = np.dtype(spec, align=enc["aligned"])
        if dt.hasobject:
            raise _ObjectDtype(f"structured dtype {dt} holds Python objects")
        return dt
    raise ValueError(f"unknown dtype description {enc!r:.100}")


# --- argument checks ----------------------------------------------------------

def _check_shape(shape):
    if isinstance(shape, (bool, np.bool_)):
        raise TypeError(f"shape must be an integer or a sequence of integers, not {shape!r}")
    try:
        dims = (operator.index(shape),)
    except TypeError:
        try:
            dims = tuple(shape)
        except TypeError:
            raise TypeError(f"shape must be an integer or a sequence of integers, "
                            f"not {type(shape).__name__}") from None
    out = []
    for d in dims:
        if isinstance(d, (bool, np.bool_)):
            raise TypeError(f"shape {dims!r} holds a bool; dimensions must be integers")
        try:
            n = operator.index(d)
        except TypeError:
            raise TypeError(f"shape {dims!r} holds {d!r} ({type(d).__name__}); "
                            f"dimensions must be integers") from None
        if n < 0:
            raise ValueError(f"negative dimension {n} in shape {tuple(dims)!r}")
        out.append(int(n))
    if len(out) > 64:
        raise ValueError(f"shape has {len(out)} dimensions; numpy allows at most 64")
    return tuple(out)


def _check_dtype(dtype):
    try:
        dt = np.dtype(dtype)
    except (TypeError, ValueError) as e:
        raise TypeError(f"unknown dtype {dtype!r}: {e}") from None
    if dt.hasobject:
        raise TypeError(f"dtype {dt} holds Python objects: they are pointers into one "
                        f"process's memory and cannot be shared; use a fixed-size dtype")
    if dt.itemsize == 0:
        raise ValueError(f"dtype {dt} has no size; give one (e.g. 'U10' or 'S16')")
    try:
        ok = _decode_dtype(_encode_dtype(dt)) == dt
    except (TypeError, ValueError, KeyError, OverflowError, RecursionError):
        ok = False
    if not ok:
        raise TypeError(f"dtype {dt!r} cannot be described in a shared segment")
    return dt


def _contiguous_strides(shape, itemsize, order):
    strides = [0] * len(shape)
    step = itemsize
    dims = range(len(shape) - 1, -1, -1) if order == "C" else range(len(shape))
    for i in dims:
        strides[i] = step
        step *= max(shape[i], 1)
    return tuple(strides)


def _span(shape, itemsize):
    """Bytes from the first element to past the last stride step: what the
    largest contiguous stride reaches (zero dimensions counted as one)."""
    return math.prod(max(n, 1) for n in shape) * itemsize


def _extent(offset, shape, strides, itemsize):
    """Byte range [lo, hi) that a view touches, or None when it is empty."""
    if 0 in shape:
        return None
    lo = hi = offset
    for n, s in zip(shape, strides):
        if s < 0:
            lo += (n - 1) * s
        else:
            hi += (n - 1) * s
    return lo, hi + itemsize


# --- header -------------------------------------------------------------------

class _Header:
    __slots__ = ("token", "name", "dtype", "shape", "order", "data_offset", "nbytes")


def _build_header(name, dt, shape, order, nbytes):
    meta = {"name": name, "dtype": _encode_dtype(dt), "shape": shape, "order": order,
            "strides": _contiguous_strides(shape, dt.itemsize, order)}
    text = repr(meta).encode("utf-8")
    data_offset = -(-(_FIXED.size + len(text)) // mmap.PAGESIZE) * mmap.PAGESIZE
    token = secrets.token_bytes(16)
    fixed = _FIXED.pack(bytes(8), LAYOUT_VERSION, len(text), data_offset, nbytes, token)
    return fixed + text, data_offset, token


def _publish(root, header):
    """Write `header` into a fresh segment; the magic goes in last."""
    root[8:len(header)] = np.frombuffer(header, np.uint8)[8:]
    root[:8] = np.frombuffer(MAGIC, np.uint8)


def _parse_header(root, what):
    """The header of the segment mapped as `root` (uint8), every field checked
    against the others and the segment's real size before anything believes
    it; InvalidSegmentError naming the problem, ``_NotReady`` when the magic
    is not written yet."""
    size = len(root)
    if size == 0:
        raise _NotReady
    if size < _FIXED.size:
        raise InvalidSegmentError(f"{what} is not an mpx SharedArray (only {size} bytes)")
    magic, version, meta_len, data_offset, nbytes, token = _FIXED.unpack(root[:_FIXED.size].tobytes())
    if magic != MAGIC:
        if magic == bytes(8):
            raise _NotReady
        raise InvalidSegmentError(f"{what} is not an mpx SharedArray (it does not start "
                                  f"with the SharedArray header {MAGIC!r})")
    if version != LAYOUT_VERSION:
        raise InvalidSegmentError(f"{what} has SharedArray layout version {version}, but "
                                  f"this mpx reads version {LAYOUT_VERSION} only; open it "
                                  f"with the mpx release that made it")
    # Python integers: no sum or product below can overflow.
    if (meta_len > _MAX_META or _FIXED.size + meta_len > data_offset
            or data_offset > size or nbytes > size - data_offset):
        raise InvalidSegmentError(f"{what} has a damaged SharedArray header (sizes do not "
                                  f"fit: metadata {meta_len}, data at {data_offset} + "
                                  f"{nbytes} bytes, segment {size} bytes; was it truncated?)")
    h = _Header()
    try:
        meta = ast.literal_eval(root[_FIXED.size:_FIXED.size + meta_len].tobytes().decode("utf-8"))
        if not isinstance(meta, dict):
            raise ValueError(f"metadata is a {type(meta).__name__}, not a dict")
        h.dtype = dt = _decode_dtype(meta["dtype"])
        if dt.subdtype is not None or dt.itemsize <= 0:
            raise ValueError(f"dtype {dt} is not an element type")
        shape = _int_list(meta["shape"], "shape")
        if len(shape) > _MAX_DIMS or any(not 0 <= n <= _MAX_BYTES for n in shape):
            raise ValueError(f"shape {tuple(shape)!r:.200} is not a shape")
        h.shape = tuple(shape)
        h.order = meta["order"]
        if h.order not in ("C", "F"):
            raise ValueError(f"order {h.order!r:.50} is neither 'C' nor 'F'")
        h.name = meta["name"]
        if h.name is not None and not isinstance(h.name, str):
            raise ValueError(f"name {h.name!r:.100} is not a str")
        strides = tuple(_int_list(meta["strides"], "strides"))
        if math.prod(h.shape) * dt.itemsize != nbytes:
            raise ValueError(f"shape {h.shape} of {dt} does not fill {nbytes} bytes")
        if _span(h.shape, dt.itemsize) > _MAX_BYTES:
            raise ValueError(f"shape {h.shape} of {dt} is too large")
        if strides != _contiguous_strides(h.shape, dt.itemsize, h.order):
            raise ValueError(f"strides {strides} do not match shape and order")
    except _ObjectDtype as e:
        raise InvalidSegmentError(f"{what}'s header declares a dtype holding Python objects "
                                  f"({e}): refusing it, since its objects would be pointers "
                                  f"made of the data bytes") from None
    except (ValueError, TypeError, KeyError, IndexError, OverflowError, SyntaxError,
            UnicodeDecodeError, MemoryError, RecursionError) as e:
        raise InvalidSegmentError(f"{what} has a damaged SharedArray header "
                                  f"({type(e).__name__}: {e})") from None
    h.token = token
    h.data_offset = data_offset
    h.nbytes = nbytes
    return h


# --- mappings and the per-process cache ---------------------------------------

class _Mapping:
    """One mapping of a segment in this process, with its parsed header.

    Every SharedArray over the segment holds it (``_mpx_map``); the segment's
    memory is released when the last array and buffer over it are gone.
    """

    __slots__ = ("backend", "module", "segment", "root", "base_ptr", "token", "name",
                 "header_name", "dtype", "shape", "order", "data_offset", "nbytes", "readonly",
                 "unlinked", "__weakref__")

    def __init__(self, backend, module, segment, root, header):
        self.backend = backend
        self.module = module
        self.segment = segment
        self.root = root
        self.base_ptr = root.__array_interface__["data"][0]
        self.token = header.token
        # The name it is reached by now (a file may have been moved since it
        # was made); the header keeps the name it was made with.
        self.name = segment.name
        self.header_name = header.name
        self.dtype = header.dtype
        self.shape = header.shape
        self.order = header.order
        self.data_offset = header.data_offset
        self.nbytes = header.nbytes
        self.readonly = segment.readonly
        self.unlinked = False

    def view(self, cls, offset, shape, strides, dtype, writeable):
        dtype = np.dtype(dtype)
        if dtype.hasobject:
            raise InvalidSegmentError(f"a SharedArray handle asks for dtype {dtype}, which "
                                      f"holds Python objects; shared memory holds none")
        if not self._inside(offset, shape, strides, dtype.itemsize):
            raise InvalidSegmentError(f"a SharedArray handle points outside its array "
                                      f"(offset {offset}, shape {shape}, strides {strides})")
        a = np.ndarray.__new__(cls, shape, dtype, buffer=self.root, offset=offset,
                               strides=strides)
        a._mpx_map = self
        if not writeable:
            a.flags.writeable = False
        return a

    def _inside(self, offset, shape, strides, itemsize):
        """True when a view at byte `offset` of the segment touches only the
        array's data (an empty view: when its offset is in the data)."""
        start = self.data_offset
        end = start + self.nbytes
        span = _extent(offset, shape, strides, itemsize)
        if span is None:
            return start <= offset <= end
        return start <= span[0] and span[1] <= end

    def full(self, cls):
        strides = _contiguous_strides(self.shape, self.dtype.itemsize, self.order)
        return self.view(cls, self.data_offset, self.shape, strides, self.dtype,
                         not self.readonly)

    def handle_for(self, a):
        """The pickle handle of view `a`, or None if its memory is not ours."""
        ptr = a.__array_interface__["data"][0]
        offset = ptr - self.base_ptr
        if not self._inside(offset, a.shape, a.strides, a.itemsize):
            return None
        dt = a.dtype
        # A plain dtype travels as its short string: unpickling a dtype
        # object costs more than the rest of the handle.
        return (_HANDLE_VERSION, self.backend, self.segment.ref, self.token, self.readonly,
                offset, a.shape, a.strides, dt.str if dt.names is None else dt,
                bool(a.flags.writeable))

    def contains(self, a):
        return self.handle_for(a) is not None


# (backend, segment identity, token, readonly) -> _Mapping. The identity is
# part of the key because a copied file carries the token of its original.
_cache = weakref.WeakValueDictionary()
_lock = threading.Lock()


def _reset_lock():
    global _lock
    _lock = threading.Lock()


os.register_at_fork(after_in_child=_reset_lock)


def _adopt(backend, module, segment, what):
    """The mapping for `segment`: the cached one for the same array if this
    process has it already (the new segment is then simply dropped)."""
    root = np.frombuffer(segment.buffer, np.uint8)
    header = _parse_header(root, what)
    key = (backend, segment.identity, header.token, segment.readonly)
    with _lock:
        m = _cache.get(key)
        if m is None:
            m = _Mapping(backend, module, segment, root, header)
            _cache[key] = m
        return m


def _cached(backend, identity, token, writeable):
    m = _cache.get((backend, identity, token, False))
    if m is None and not writeable:
        m = _cache.get((backend, identity, token, True))
    return m


def _rebuild(version, backend, ref, token, readonly, offset, shape, strides, dtype, writeable):
    """Unpickle a handle (see ``_Mapping.handle_for``)."""
    if version != _HANDLE_VERSION:
        raise InvalidSegmentError(f"a SharedArray handle of version {version} reached an "
                                  f"mpx that reads version {_HANDLE_VERSION}")
    m = _cached(backend, ref[0], token, writeable)
    if m is None:
        _, module = _registry.resolve(FAMILY, backend)
        segment = module.reattach(ref, readonly=readonly)
        what = f"the {backend} SharedArray {segment.name or '(anonymous)'}"
        try:
            m = _adopt(backend, module, segment, what)
        except _NotReady:
            raise InvalidSegmentError(f"{what} has no SharedArray header any more") from None
        if m.token != token:
            raise FileNotFoundError(errno.ENOENT, f"{what} that this handle refers to is "
                                    f"gone (another array now has its place)")
    return m.view(SharedArray, offset, shape, strides, dtype, writeable)


def _candidates(backend):
    """[(name, module)] to look in for a name: the one asked for, or all."""
    if backend is not None:
        return [_registry.resolve(FAMILY, backend)]
    names = []
    try:
        names.append(_registry.default_backend(FAMILY))
    except ValueError:
        pass
    names += [n for n in _registry.PREFERENCE[FAMILY] if n not in names]
    found = []
    for n in names:
        try:
            found.append(_registry.resolve(FAMILY, n))
        except ValueError:
            continue
    return found


def _open_named(backend, module, name, readonly, mode):
    what = f"{backend} SharedArray {name!r}"
    deadline = time.monotonic() + _ATTACH_WAIT
    delay = 0.001
    while True:
        segment = module.attach(name, readonly=readonly, mode=mode)
        try:
            m = _adopt(backend, module, segment, what)
        except _NotReady:
            if module.PUBLISHES_WHOLE:
                # Such a backend links a name only to a finished segment.
                raise InvalidSegmentError(
                    f"{what} has no SharedArray header (it is "
                    f"{'empty' if segment.size == 0 else 'zero-filled'}): it is not an mpx "
                    f"array (mpx names a {backend} array only once its header is "
                    f"written)") from None
            gone = segment.creator_gone()
            del segment
            if gone or time.monotonic() >= deadline:
                raise InvalidSegmentError(
                    f"{what} has no SharedArray header: it is not an mpx array, or its "
                    f"creator died while making it (if it is yours, "
                    f"mpx.sharedarray.unlink({name!r}, backend={backend!r}) removes "
                    f"it)") from None
            time.sleep(delay)   # its creator is between create and publish
            delay = min(delay * 2, 0.05)
            continue
        if module.HASHED_NAMES and m.header_name != name:
            raise InvalidSegmentError(f"{what} shares its {backend} key with the array "
                                      f"{m.header_name!r} (two names hash to one key); use "
                                      f"another name or backend")
        return m


def _by_name(name, backend, action):
    """``action(backend name, module, canonical name)`` in the backend asked
    for; with none, in each SharedArray backend that can have such a name
    until one does not raise FileNotFoundError."""
    if not isinstance(name, (str, os.PathLike)):
        raise TypeError(f"a SharedArray name must be a str, not {type(name).__name__}")
    tried = []
    for bname, module in _candidates(backend):
        try:
            cname = module.canonical_name(name)
        except (TypeError, ValueError):
            if backend is not None:
                raise
            continue        # not a name this backend can have (e.g. a path)
        try:
            return action(bname, module, cname)
        except FileNotFoundError:
            if backend is not None:
                raise
            tried.append(bname)
    raise FileNotFoundError(errno.ENOENT, f"no SharedArray named {os.fspath(name)!r} "
                            f"(looked in the {', '.join(tried) or 'no'} backends)",
                            os.fspath(name))


def _find(name, backend, readonly, mode):
    """(mapping) of the named array, looking in every backend if none given."""
    return _by_name(name, backend, lambda bname, module, cname:
                    _open_named(bname, module, cname, readonly, mode))


def _mappings_of(backend, name):
    with _lock:
        return [m for m in list(_cache.values())
                if m.backend == backend and m.name == name and not m.unlinked]


def _unlink_name(backend, module, name):
    """Unlink the array named `name` (``unlink(name)``). When this process
    maps that very array, its identity is proof enough and nothing is opened
    (so it works with no free descriptor); otherwise the backend checks the
    object itself: the caller's own, an mpx segment."""
    for m in _mappings_of(backend, name):
        try:
            module.unlink(name, identity=m.segment.identity)
        except FileNotFoundError:
            break               # the name leads elsewhere now: check that one
        for other in _mappings_of(backend, name):
            if other.segment.identity == m.segment.identity:
                other.unlinked = True
        return
    module.unlink(name)


class SharedArray(np.ndarray):
    """A numpy array in memory shared between processes (zero-filled).

    ``SharedArray(shape, dtype=float, *, name=None, backend=None, order="C",
    mode=0o600, path=None)``

    - `name`: None makes an anonymous array, freed when the last process
      using it lets go; a name makes one any process can ``attach``, which
      lives until ``unlink()``. FileExistsError if the name is taken.
    - `backend`: "posix" (default), "sysv" or "file" (see
      :func:`mpx.backends.backends`); ``$MPX_BACKEND`` changes the default.
    - `path`: a file to map (implies ``backend="file"``); the array then
      survives a reboot. With the file backend a bare `name` is a file in
      ``$MPX_FILE_DIR`` (default /var/tmp/mpx-arrays).
    - `order`: "C" or "F"; `mode`: permission bits of a named array.

    Pickling the array or any view of it sends a handle, not the data.
    """

    def __new__(cls, shape, dtype=float, *, name=None, backend=None, order="C",
                mode=0o600, path=None):
        shape = _check_shape(shape)
        dt = _check_dtype(dtype)
        if dt.subdtype is not None:        # ('f8', (3,)) adds dimensions, as in numpy
            dt, sub = dt.subdtype
            shape = shape + tuple(sub)
        if order not in ("C", "F", "c", "f"):
            raise ValueError(f"order must be 'C' or 'F', not {order!r}")
        order = order.upper()
        mode = _trust.check_mode(mode, owner_rw=True)
        if path is not None:
            if name is not None:
                raise ValueError("give a name or a path, not both")
            if backend not in (None, "file"):
                raise ValueError(f"path= is for the file backend, not {backend!r}")
            backend, name = "file", path
        nbytes = math.prod(shape) * dt.itemsize
        if nbytes > _MAX_BYTES or _span(shape, dt.itemsize) > _MAX_BYTES:
            raise ValueError(f"an array of shape {shape} and dtype {dt} ({nbytes} bytes) "
                             f"is too large")
        bname, module = _registry.resolve(FAMILY, backend)
        if name is not None:
            name = module.canonical_name(name)
        header, data_offset, _ = _build_header(name, dt, shape, order, nbytes)
        # The backend writes the header before the name appears (where it
        # can), so nobody finds the array half-made.
        segment = module.create(name, data_offset + nbytes, mode=mode,
                                meta={"shape": list(shape), "dtype": str(dt),
                                      "bytes": nbytes, "order": order},
                                init=lambda buf: _publish(np.frombuffer(buf, np.uint8), header))
        try:
            m = _adopt(bname, module, segment, f"new {bname} SharedArray")
        except BaseException:
            if name is not None:
                try:
                    module.unlink(name, identity=segment.identity)
                except OSError:
                    pass
            raise
        return m.full(cls)

    # -- numpy subclass hooks

    def __array_finalize__(self, obj):
        # A view keeps the mapping; new memory (copies; base is None) does not.
        m = getattr(obj, "_mpx_map", None)
        self._mpx_map = m if m is not None and self.base is not None else None

    def __array_wrap__(self, arr, context=None, return_scalar=False):
        # Results of ufuncs live in fresh private memory: give them back as
        # plain arrays (as np.memmap does); an out= array is returned as is.
        if return_scalar:
            return arr[()]
        return arr

    # -- pickling: a handle, never the data

    def __reduce_ex__(self, protocol):
        m = getattr(self, "_mpx_map", None)
        if m is not None:
            handle = m.handle_for(self)
            if handle is not None:
                return (_rebuild, handle)
        return self.view(np.ndarray).__reduce_ex__(protocol)

    def __reduce__(self):
        return self.__reduce_ex__(2)

    # -- sharing API

    @classmethod
    def attach(cls, name, *, readonly=False, backend=None, mode=0o600):
        """Open the existing named array `name` (any process may).

        `backend` None looks in every SharedArray backend. `readonly` maps
        it read-only: writes raise ValueError. FileNotFoundError if there is
        no such array; InvalidSegmentError (a ValueError) if the name holds
        something that is not an mpx array of this layout version, or whose
        header does not fit the segment.

        `mode` is how widely the opener is willing to share (as in
        ``mpx._trust``): with the default 0o600, an array owned by another
        user (not root), or one that group or others may access, is refused
        with PermissionError before a byte of it is read; ``mode=0o660``
        accepts arrays shared with the group on purpose, and so on.
        """
        mode = _trust.check_mode(mode)
        return _find(name, backend, bool(readonly), mode).full(cls)

    @classmethod
    def from_array(cls, arr, name=None, *, backend=None, order=None, mode=0o600, path=None):
        """A new SharedArray holding a copy of `arr` (Fortran order is kept)."""
        src = np.asarray(arr)
        if order is None:
            order = "F" if src.flags.f_contiguous and not src.flags.c_contiguous else "C"
        out = cls(src.shape, src.dtype, name=name, backend=backend, order=order,
                  mode=mode, path=path)
        try:
            np.copyto(out, src)
        except BaseException:
            if out.name is not None:
                out.unlink()
            raise
        return out

    def unlink(self):
        """Remove the array's name; every process that has it keeps its memory.

        FileNotFoundError if it was already unlinked. An anonymous array has
        no name: it is freed when the last process lets go, and this does
        nothing.
        """
        m = self._mapping("unlink")
        if m.name is None:
            return
        if m.unlinked:
            raise FileNotFoundError(errno.ENOENT, f"the {m.backend} SharedArray {m.name!r} "
                                    f"was already unlinked", m.name)
        # Only if the name still leads to this very segment; checked without
        # opening anything, so it works when the process has no descriptor
        # left.
        m.module.unlink(m.name, identity=m.segment.identity)
        m.unlinked = True

    def flush(self):
        """Write the array's pages to its file now (file backend; elsewhere a no-op)."""
        self._mapping("flush").segment.flush()

    def _mapping(self, what):
        m = getattr(self, "_mpx_map", None)
        if m is None:
            raise ValueError(f"cannot {what}: this array is not in shared memory (it is a "
                             f"copy or the result of a computation)")
        return m

    @property
    def name(self):
        """The array's name, or None (anonymous, or not shared)."""
        m = getattr(self, "_mpx_map", None)
        return m.name if m is not None else None

    @property
    def backend(self):
        """"posix", "sysv" or "file"; None when this array is not shared."""
        m = getattr(self, "_mpx_map", None)
        return m.backend if m is not None else None

    @property
    def is_shared(self):
        """True when this array's memory lies in a shared segment (so pickling
        sends a handle, not the data)."""
        m = getattr(self, "_mpx_map", None)
        return m is not None and m.contains(self)


def unlink(name, *, backend=None):
    """Unlink the named SharedArray `name` without attaching it
    (FileNotFoundError if there is none). Only the caller's own mpx arrays
    are removed: PermissionError for another user's, InvalidSegmentError
    (and nothing is removed) for something that is not an mpx array. A SysV
    array whose creator died before writing its header is removed too."""
    _by_name(name, backend, _unlink_name)


def _owner_name(uid, fallback):
    if not isinstance(uid, int):
        return fallback if isinstance(fallback, str) else None
    import pwd
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)


def list_arrays():
    """The named SharedArrays on this machine that mpx made and that still
    exist: a list of dicts with name, backend, shape, dtype, bytes, owner,
    created (a time.time() value) and, where there is one, path.

    The records behind it are untrusted (see ``mpx._names``): a record of
    the wrong shape, one naming no SharedArray backend, or one whose object
    is not an mpx array is left out; none stops the listing.
    """
    rows = []
    for entry in _names.entries():
        if not isinstance(entry, dict) or entry.get("kind") != FAMILY:
            continue
        name, backend = entry.get("name"), entry.get("backend")
        if not isinstance(name, str) or not isinstance(backend, str):
            continue
        try:
            # The module comes from the registry, never from the record file.
            _, module = _registry.resolve(FAMILY, backend)
            info = module.describe(entry)
        except Exception:
            continue        # a record this mpx cannot make sense of
        if not isinstance(info, dict) or info.get("error"):
            continue
        created = entry.get("created")
        rows.append({"name": name, "backend": backend,
                     "shape": tuple(info.get("shape") or ()), "dtype": info.get("dtype"),
                     "bytes": info.get("bytes"),
                     "owner": _owner_name(info.get("owner_uid"), entry.get("owner")),
                     "created": created if isinstance(created, (int, float)) else None,
                     "path": info.get("path")})
    rows.sort(key=lambda r: (r["backend"], r["name"]))
    return rows
