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
import secrets
import struct
import threading
import time
import weakref

import numpy as np

from . import _names
from . import backends as _registry

__all__ = ["SharedArray", "InvalidSegmentError", "list_arrays", "unlink", "LAYOUT_VERSION"]

FAMILY = "SharedArray"
MAGIC = b"MPXARRAY"
LAYOUT_VERSION = 1
# magic, layout version, metadata length, data offset, data bytes, token, reserved
_FIXED = struct.Struct("<8sIIQQ16s16x")
_MAX_META = 1 << 20
_HANDLE_VERSION = 1
# How long attach() waits for a named segment whose creator has not written
# its header yet (creation is a few system calls, so this is generous).
_ATTACH_WAIT = 2.0
_MAX_BYTES = 1 << 62


class InvalidSegmentError(ValueError):
    """A segment that is not an mpx SharedArray, is damaged, or was written by
    an mpx with another layout version."""


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


def _decode_dtype(enc):
    if isinstance(enc, str):
        return np.dtype(enc)
    if isinstance(enc, tuple) and len(enc) == 3 and enc[0] == "subarray":
        return np.dtype((_decode_dtype(enc[1]), tuple(enc[2])))
    if isinstance(enc, dict):
        spec = {"names": enc["names"],
                "formats": [_decode_dtype(f) for f in enc["formats"]],
                "offsets": enc["offsets"], "itemsize": enc["itemsize"]}
        if any(t is not None for t in enc["titles"]):
            spec["titles"] = enc["titles"]
        return np.dtype(spec, align=bool(enc["aligned"]))
    raise ValueError(f"unknown dtype description {enc!r}")


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
    except (TypeError, ValueError, KeyError):
        ok = False
    if not ok:
        raise TypeError(f"dtype {dt!r} cannot be described in a shared segment")
    return dt


def _check_mode(mode):
    if isinstance(mode, bool) or not isinstance(mode, int) or not 0 <= mode <= 0o777:
        raise ValueError(f"mode must be permission bits between 0 and 0o777, got {mode!r}")
    if mode & 0o600 != 0o600:
        raise ValueError(f"mode {mode:#o} must let the owner read and write (0o600): "
                         f"the creator writes the array's header")
    return mode


def _contiguous_strides(shape, itemsize, order):
    strides = [0] * len(shape)
    step = itemsize
    dims = range(len(shape) - 1, -1, -1) if order == "C" else range(len(shape))
    for i in dims:
        strides[i] = step
        step *= max(shape[i], 1)
    return tuple(strides)


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
    if (meta_len > _MAX_META or _FIXED.size + meta_len > data_offset
            or data_offset + nbytes > size):
        raise InvalidSegmentError(f"{what} has a damaged SharedArray header (sizes do not "
                                  f"fit: metadata {meta_len}, data at {data_offset} + "
                                  f"{nbytes} bytes, segment {size} bytes)")
    h = _Header()
    try:
        meta = ast.literal_eval(root[_FIXED.size:_FIXED.size + meta_len].tobytes().decode("utf-8"))
        h.dtype = _decode_dtype(meta["dtype"])
        h.shape = tuple(operator.index(n) for n in meta["shape"])
        h.order = meta["order"]
        h.name = meta["name"]
        strides = tuple(meta["strides"])
        if h.order not in ("C", "F") or any(n < 0 for n in h.shape):
            raise ValueError("bad order or shape")
        if math.prod(h.shape) * h.dtype.itemsize != nbytes:
            raise ValueError(f"shape {h.shape} of {h.dtype} does not fill {nbytes} bytes")
        if strides != _contiguous_strides(h.shape, h.dtype.itemsize, h.order):
            raise ValueError(f"strides {strides} do not match shape and order")
    except (ValueError, TypeError, KeyError, SyntaxError, UnicodeDecodeError,
            MemoryError, RecursionError) as e:
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


def _open_named(backend, module, name, readonly):
    what = f"{backend} SharedArray {name!r}"
    deadline = time.monotonic() + _ATTACH_WAIT
    delay = 0.001
    while True:
        segment = module.attach(name, readonly=readonly)
        try:
            m = _adopt(backend, module, segment, what)
        except _NotReady:
            del segment
            if time.monotonic() >= deadline:
                raise InvalidSegmentError(f"{what} has no SharedArray header: it is not an "
                                          f"mpx array, or its creator died while making it")
            time.sleep(delay)   # its creator is between create and publish
            delay = min(delay * 2, 0.05)
            continue
        if module.HASHED_NAMES and m.header_name != name:
            raise InvalidSegmentError(f"{what} shares its {backend} key with the array "
                                      f"{m.name!r} (two names hash to one key); use "
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


def _find(name, backend, readonly):
    """(mapping) of the named array, looking in every backend if none given."""
    return _by_name(name, backend,
                    lambda bname, module, cname: _open_named(bname, module, cname, readonly))


def _unlink(backend, module, name, token=None):
    """Unlink `name` if it holds an mpx array (the one with `token`, if given)."""
    try:
        segment = module.attach(name, readonly=True)
    except FileNotFoundError:
        raise FileNotFoundError(errno.ENOENT, f"the {backend} SharedArray {name!r} does not "
                                f"exist (already unlinked?)", name) from None
    what = f"{backend} SharedArray {name!r}"
    try:
        header = _parse_header(np.frombuffer(segment.buffer, np.uint8), what)
    except _NotReady:
        header = None
    except InvalidSegmentError:
        if token is None:
            raise
        header = None
    del segment
    if token is not None:
        if header is None or header.token != token:
            raise FileNotFoundError(errno.ENOENT, f"the {what} was already unlinked (the "
                                    f"name now belongs to another object)", name)
    elif header is None:
        raise InvalidSegmentError(f"{what} has no SharedArray header; not removing it "
                                  f"(python -m mpx rm removes what mpx recorded)")
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
        mode = _check_mode(mode)
        if path is not None:
            if name is not None:
                raise ValueError("give a name or a path, not both")
            if backend not in (None, "file"):
                raise ValueError(f"path= is for the file backend, not {backend!r}")
            backend, name = "file", path
        nbytes = math.prod(shape) * dt.itemsize
        if nbytes > _MAX_BYTES:
            raise ValueError(f"an array of shape {shape} and dtype {dt} ({nbytes} bytes) "
                             f"is too large")
        bname, module = _registry.resolve(FAMILY, backend)
        if name is not None:
            name = module.canonical_name(name)
        header, data_offset, _ = _build_header(name, dt, shape, order, nbytes)
        segment = module.create(name, data_offset + nbytes, mode=mode,
                                meta={"shape": list(shape), "dtype": str(dt),
                                      "bytes": nbytes, "order": order})
        try:
            root = np.frombuffer(segment.buffer, np.uint8)
            _publish(root, header)
            m = _adopt(bname, module, segment, f"new {bname} SharedArray")
        except BaseException:
            if name is not None:
                module.unlink(name)
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
    def attach(cls, name, *, readonly=False, backend=None):
        """Open the existing named array `name` (any process may).

        `backend` None looks in every SharedArray backend. `readonly` maps
        it read-only: writes raise ValueError. FileNotFoundError if there is
        no such array; InvalidSegmentError (a ValueError) if the name holds
        something that is not an mpx array of this layout version.
        """
        return _find(name, backend, bool(readonly)).full(cls)

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
        _unlink(m.backend, m.module, m.name, m.token)
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
    (FileNotFoundError if there is none; InvalidSegmentError, and nothing is
    removed, if the name holds something that is not an mpx array)."""
    _by_name(name, backend, _unlink)


def list_arrays():
    """The named SharedArrays on this machine that mpx made and that still
    exist: a list of dicts with name, backend, shape, dtype, bytes, owner,
    created (a time.time() value) and, where there is one, path."""
    rows = []
    for entry in _names.entries():
        if entry.get("kind") != FAMILY:
            continue
        try:
            # The module comes from the registry, never from the record file.
            _, module = _registry.resolve(FAMILY, entry.get("backend"))
        except ValueError:
            continue
        info = module.describe(entry)
        if info is None:
            continue
        meta = entry.get("meta") or {}
        rows.append({"name": entry["name"], "backend": entry["backend"],
                     "shape": tuple(meta.get("shape") or ()), "dtype": meta.get("dtype"),
                     "bytes": info.get("bytes"), "owner": entry.get("owner"),
                     "created": entry.get("created"), "path": info.get("path")})
    rows.sort(key=lambda r: (r["backend"], r["name"]))
    return rows
