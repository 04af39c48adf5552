"""mpx.SharedArray: numpy arrays in shared memory, over every backend.

Tests that start processes run over the start methods (``ctx``); every test
runs over the posix, sysv and file backends. The autouse ``no_leaks``
fixture checks that nothing is left in /dev/shm, SysV ids, the named-object
record or the process table.
"""

import gc
import os
import pickle
import stat
import subprocess
import sys
import threading
import time
import uuid

import numpy as np
import pytest

import mpx
from mpx import _serial
from mpx import sharedarray as sa
from mpx.backends import file as file_backend
from mpx.backends.posix import segment as posix_shm
from mpx.backends.sysv import segment as sysv_shm
from mpx.sharedarray import InvalidSegmentError, SharedArray

from conftest import join_all

BACKENDS = ["posix", "sysv", "file"]
MODULES = {"posix": posix_shm, "sysv": sysv_shm, "file": file_backend}
TIMEOUT = 60


@pytest.fixture(autouse=True)
def private_file_dir(tmp_path, monkeypatch):
    """Bare file-backend names go to a private directory, not /var/tmp."""
    d = tmp_path / "arrays"
    monkeypatch.setenv("MPX_FILE_DIR", str(d))
    return d


def unique_name(backend, tmp_path):
    """A fresh name; an absolute path for the file backend, so that children
    started by an older forkserver (with another MPX_FILE_DIR) agree on it."""
    tag = f"mpxt-{os.getpid()}-{uuid.uuid4().hex[:10]}"
    return str(tmp_path / tag) if backend == "file" else tag


@pytest.fixture
def named(tmp_path):
    """Make named arrays; unlink whatever the test left at the end."""
    made = []

    def make(backend, shape=(10,), dtype=float, **kw):
        name = unique_name(backend, tmp_path)
        a = SharedArray(shape, dtype, name=name, backend=backend, **kw)
        made.append((backend, a.name))
        return a
    yield make
    for backend, name in made:
        try:
            sa.unlink(name, backend=backend)
        except FileNotFoundError:
            pass


def data_ptr(a):
    return a.__array_interface__["data"][0]


# --- child process bodies (module level: spawn imports them) ---------------

def child_handoff(view, inq, outq, conn):
    """Write into the view it got as an argument and send it back; take the
    whole array from a queue, send slices back through a queue and a pipe."""
    view += 1000
    outq.put(view)
    whole = inq.get(timeout=TIMEOUT)
    whole[0, 0] = -1.0
    outq.put(whole[5:7, 1::2])
    conn.send(whole[::-1, ::-1])
    conn.send(whole + 0)        # a computed result: travels by value
    conn.close()


def child_mpx_carriers(q, conn):
    a = q.get(timeout=TIMEOUT)
    a[3] = 33.0
    q.put(a[2:5])
    b = conn.recv()
    b[:] = 7
    conn.send(b)


def child_create_named(name, backend, done):
    a = SharedArray((4, 4), np.int32, name=name, backend=backend)
    a[:] = np.arange(16).reshape(4, 4)
    done.put(a.name)


def child_attach_and_read(name, backend, out):
    a = SharedArray.attach(name, backend=backend)
    out.put(int(a.sum()))
    a[0] = 5


def child_hold_anonymous(a, attached, go, out):
    attached.put(float(a[0]))
    go.get(timeout=TIMEOUT)     # the parent has let go of its array by now
    a[1] = 2.0
    out.put(float(a.sum()))


def child_write_handle(a, out):
    a[:] = 9
    out.put(int(a.sum()))


def pool_task(view):
    view *= 2
    return view[:2]


# --- creation and numpy behaviour ------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_new_array_is_zero_filled_ndarray(backend):
    a = SharedArray((3, 4), np.float32, backend=backend)
    assert isinstance(a, np.ndarray) and isinstance(a, SharedArray)
    assert a.shape == (3, 4) and a.dtype == np.float32
    assert a.flags.c_contiguous and a.flags.writeable
    assert not a.any()
    assert a.name is None and a.backend == backend and a.is_shared
    a[:] = np.arange(12).reshape(3, 4)
    assert a.sum() == 66
    # Results of computations are plain private arrays; views stay shared.
    assert type(a + 1) is np.ndarray
    assert type(a.sum(axis=0)) is np.ndarray
    assert isinstance(a[1:], SharedArray) and a[1:].is_shared
    assert not a.copy().is_shared
    assert not a[[0, 2]].is_shared
    np.add(a, 1, out=a)
    assert a[0, 0] == 1


@pytest.mark.parametrize("backend", BACKENDS)
def test_context_and_top_level_factory(ctx, backend):
    a = ctx.SharedArray((5,), np.int64, backend=backend)
    assert isinstance(a, mpx.SharedArray) and a.backend == backend
    b = mpx.SharedArray(2, backend=backend)
    assert b.shape == (2,) and b.dtype == np.float64


@pytest.mark.parametrize("backend", BACKENDS)
def test_default_backend_is_posix(backend, monkeypatch):
    monkeypatch.delenv("MPX_BACKEND", raising=False)
    assert SharedArray(3).backend == "posix"
    monkeypatch.setenv("MPX_BACKEND", backend)
    assert SharedArray(3).backend == backend


DTYPES = [
    np.float64, ">i4", "S5", "U3", "V7", "M8[ns]", "m8[s]", np.complex128, bool,
    np.dtype([("a", "<i4"), ("b", ">f8", (2, 3)), ("c", [("x", "u1"), ("y", "S3")])]),
    np.dtype([("a", "u1"), ("b", "f8")], align=True),
    np.dtype({"names": ["a", "b"], "formats": ["u1", "<f8"], "offsets": [0, 16],
              "itemsize": 32}),
    np.dtype([(("title A", "a"), "i2"), ("b", "f4")]),
]


@pytest.mark.parametrize("backend", BACKENDS)
def test_dtypes_round_trip_through_the_header(backend, named):
    for dtype in DTYPES:
        dt = np.dtype(dtype)
        a = named(backend, (2, 3), dt)
        raw = np.frombuffer(np.random.default_rng(0).bytes(a.nbytes), np.uint8)
        a.view(np.uint8).reshape(-1)[:] = raw
        b = SharedArray.attach(a.name, backend=backend)
        assert b.dtype == dt and b.dtype.isalignedstruct == dt.isalignedstruct
        assert b.dtype.fields == dt.fields
        assert b.shape == (2, 3)
        assert b.tobytes() == a.tobytes()
        a.unlink()


@pytest.mark.parametrize("backend", BACKENDS)
def test_order_zero_d_and_empty_shapes(backend, named):
    f = named(backend, (3, 5), np.int16, order="F")
    assert f.flags.f_contiguous and not f.flags.c_contiguous
    f[:] = np.arange(15).reshape(3, 5)
    g = SharedArray.attach(f.name, backend=backend)
    assert g.flags.f_contiguous and (g == np.arange(15).reshape(3, 5)).all()

    z = named(backend, (), np.float64)
    z[()] = 4.5
    assert SharedArray.attach(z.name, backend=backend)[()] == 4.5
    assert pickle.loads(pickle.dumps(z))[()] == 4.5

    for shape in [(0,), (0, 3), (4, 0, 2)]:
        e = named(backend, shape)
        assert e.shape == shape and e.size == 0
        assert SharedArray.attach(e.name, backend=backend).shape == shape
        assert pickle.loads(pickle.dumps(e)).shape == shape
    # A subarray dtype adds dimensions, as in numpy.
    s = SharedArray(2, ("f8", (3,)), backend=backend)
    assert s.shape == (2, 3) and s.dtype == np.float64


@pytest.mark.parametrize("backend", BACKENDS)
def test_from_array(backend, named):
    src = np.asfortranarray(np.arange(12.0).reshape(3, 4))
    a = SharedArray.from_array(src, backend=backend)
    assert a.flags.f_contiguous and (a == src).all() and not np.shares_memory(a, src)
    rec = np.array([(1, b"x"), (2, b"yz")], dtype=[("n", "i4"), ("s", "S2")])
    name = named(backend).name          # taken: from_array must refuse it
    with pytest.raises(FileExistsError):
        SharedArray.from_array(rec, name, backend=backend)
    b = SharedArray.from_array(rec, name + "-2", backend=backend)
    try:
        assert (SharedArray.attach(name + "-2", backend=backend) == rec).all()
    finally:
        b.unlink()
    with pytest.raises(TypeError, match="Python objects"):
        SharedArray.from_array(np.array([1, None], dtype=object), backend=backend)


# --- bad input -------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_bad_arguments(backend):
    with pytest.raises(ValueError, match="negative dimension -1"):
        SharedArray((3, -1), backend=backend)
    with pytest.raises(TypeError, match="integers"):
        SharedArray((2.0, 3), backend=backend)
    with pytest.raises(TypeError, match="integers"):
        SharedArray("abc", backend=backend)
    with pytest.raises(TypeError, match="bool"):
        SharedArray((True, 3), backend=backend)
    with pytest.raises(TypeError, match="unknown dtype 'nonsense'"):
        SharedArray(3, "nonsense", backend=backend)
    with pytest.raises(TypeError, match="Python objects"):
        SharedArray(3, object, backend=backend)
    with pytest.raises(TypeError, match="Python objects"):
        SharedArray(3, [("a", "i4"), ("o", "O")], backend=backend)
    with pytest.raises(ValueError, match="no size"):
        SharedArray(3, "U", backend=backend)
    with pytest.raises(ValueError, match="order"):
        SharedArray(3, order="K", backend=backend)
    with pytest.raises(ValueError, match="mode"):
        SharedArray(3, name="x", mode=0o400, backend=backend)
    with pytest.raises(ValueError, match="too large"):
        SharedArray((1 << 40, 1 << 40), backend=backend)
    with pytest.raises(TypeError, match="name"):
        SharedArray.attach(12, backend=backend)


def test_bad_backend_and_path_arguments(tmp_path):
    with pytest.raises(ValueError, match="unknown backend 'nope'"):
        SharedArray(3, backend="nope")
    with pytest.raises(ValueError, match="file backend"):
        SharedArray(3, backend="posix", path=str(tmp_path / "x"))
    with pytest.raises(ValueError, match="not both"):
        SharedArray(3, name="a", path=str(tmp_path / "x"))
    with pytest.raises(ValueError, match="'/'"):
        SharedArray(3, name="a/b", backend="posix")


@pytest.mark.parametrize("backend", BACKENDS)
def test_missing_and_existing_names(backend, named, tmp_path):
    missing = unique_name(backend, tmp_path)
    with pytest.raises(FileNotFoundError, match=missing.rsplit("/", 1)[-1]):
        SharedArray.attach(missing, backend=backend)
    with pytest.raises(FileNotFoundError, match="no SharedArray named"):
        SharedArray.attach(missing)
    a = named(backend)
    with pytest.raises(FileExistsError, match="already exists"):
        SharedArray((3,), name=a.name, backend=backend)
    a.unlink()
    with pytest.raises(FileNotFoundError, match="already unlinked"):
        a.unlink()
    with pytest.raises(FileNotFoundError):
        sa.unlink(a.name, backend=backend)
    with pytest.raises(FileNotFoundError):
        SharedArray.attach(a.name, backend=backend)


def test_attach_without_backend_finds_each(named, tmp_path):
    for backend in BACKENDS:
        a = named(backend, (2,), np.int8)
        a[:] = [1, 2]
        b = SharedArray.attach(a.name)
        assert b.backend == backend and list(b) == [1, 2]


@pytest.mark.parametrize("backend", BACKENDS)
def test_readonly_attach(backend, named):
    a = named(backend, (4,))
    a[:] = 3
    r = SharedArray.attach(a.name, readonly=True, backend=backend)
    assert not r.flags.writeable and (r == 3).all()
    with pytest.raises(ValueError, match="read-only"):
        r[0] = 1
    with pytest.raises(ValueError):
        r.flags.writeable = True
    with pytest.raises(ValueError):
        r[1:].flags.writeable = True
    back = pickle.loads(pickle.dumps(r[1:]))
    assert not back.flags.writeable and (back == 3).all()
    a[2] = 8        # the read-only view still sees the shared memory
    assert r[2] == 8 and back[1] == 8


# --- segments that are not ours --------------------------------------------

def make_foreign(backend, name, data):
    """A segment of `data` bytes under `name` that mpx did not make."""
    if backend == "posix":
        path = "/dev/shm/" + name
    elif backend == "file":
        path = name
    else:
        shm = sysv_shm.sysv_ipc.SharedMemory(sysv_shm.key_for(name), sysv_shm.sysv_ipc.IPC_CREX,
                                             size=max(len(data), 1))
        shm.write(data or b"\0")
        shm.detach()
        return lambda: shm.remove()
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, data)
    os.close(fd)
    return lambda: os.unlink(path)


@pytest.mark.parametrize("backend", BACKENDS)
def test_foreign_segments_are_refused(backend, tmp_path, monkeypatch):
    monkeypatch.setattr(sa, "_ATTACH_WAIT", 0.2)
    cases = [(b"hello, this is not an array" * 300, "not an mpx SharedArray"),
             (b"MPX", "not an mpx SharedArray"),
             (bytes(8192), "no SharedArray header")]
    for data, message in cases:
        name = unique_name(backend, tmp_path)
        cleanup = make_foreign(backend, name, data)
        removed = False
        try:
            with pytest.raises(InvalidSegmentError, match=message):
                SharedArray.attach(name, backend=backend)
            if backend == "sysv" and not any(data):
                # A SysV key with a zero header that nobody has attached is
                # what a creator killed before its header leaves: its owner
                # may remove it (posix and file never name such a segment).
                sa.unlink(name, backend=backend)
                removed = True
            else:
                with pytest.raises(InvalidSegmentError):
                    sa.unlink(name, backend=backend)    # never removes what is not ours
        finally:
            if not removed:
                cleanup()


@pytest.mark.parametrize("backend", BACKENDS)
def test_other_layout_version_and_damaged_header_are_refused(backend, named):
    a = named(backend, (8,))
    root = a._mpx_map.root
    saved = root[:64].copy()
    root[8] = 2                                     # layout version 1 -> 2
    with pytest.raises(InvalidSegmentError, match="layout version 2"):
        SharedArray.attach(a.name, backend=backend)
    root[:64] = saved
    root[24] = 99                                   # data bytes no longer fit
    with pytest.raises(InvalidSegmentError, match="damaged"):
        SharedArray.attach(a.name, backend=backend)
    root[:64] = saved
    assert SharedArray.attach(a.name, backend=backend).shape == (8,)


def test_attach_waits_for_a_header_being_written():
    # A SysV key exists before its header is written (posix and file link a
    # finished segment only): attach waits while the creator is alive.
    name = f"mpxt-wait-{uuid.uuid4().hex[:10]}"
    header, data_offset, _ = sa._build_header(name, np.dtype(np.int64), (16,), "C", 128)
    ipc = sysv_shm.sysv_ipc
    shm = ipc.SharedMemory(sysv_shm.key_for(name), ipc.IPC_CREX, mode=0o600,
                           size=data_offset + 128, init_character=b"\0")
    try:
        timer = threading.Timer(0.2, shm.write, (sa.MAGIC + header[8:], 0))
        timer.start()
        b = SharedArray.attach(name, backend="sysv")
        timer.join()
        assert b.shape == (16,) and not b.any()
    finally:
        shm.remove()
        shm.detach()


def test_sysv_key_collision_is_detected(named, tmp_path, monkeypatch):
    monkeypatch.setattr(sysv_shm, "key_for", lambda name: 0x5EED)
    a = SharedArray(3, name="first-" + uuid.uuid4().hex, backend="sysv")
    try:
        with pytest.raises(InvalidSegmentError, match="hash"):
            SharedArray.attach("second", backend="sysv")
        with pytest.raises(FileExistsError):
            SharedArray(3, name="second", backend="sysv")
    finally:
        a.unlink()


# --- permissions, records, listing -----------------------------------------

def sysv_mode(shmid):
    with open("/proc/sysvipc/shm") as f:
        next(f)
        for line in f:
            fields = line.split()
            if int(fields[1]) == shmid:
                return int(fields[2], 8) & 0o777
    return None


def segment_mode(a):
    seg = a._mpx_map.segment
    if a.backend == "sysv":
        return sysv_mode(seg.identity)
    return stat.S_IMODE(os.fstat(seg._fd).st_mode)


@pytest.mark.parametrize("backend", BACKENDS)
def test_mode_is_0600_by_default(backend, named):
    old = os.umask(0)
    try:
        assert segment_mode(named(backend)) == 0o600
        assert segment_mode(SharedArray(3, backend=backend)) == 0o600
        assert segment_mode(named(backend, mode=0o640)) == 0o640
    finally:
        os.umask(old)


@pytest.mark.parametrize("backend", BACKENDS)
def test_list_describe_remove(backend, named):
    a = named(backend, (3, 2), np.int16)
    rows = [r for r in sa.list_arrays() if r["name"] == a.name]
    assert len(rows) == 1
    row = rows[0]
    assert row["backend"] == backend and row["shape"] == (3, 2)
    assert row["dtype"] == "int16" and row["bytes"] == 12
    entry = next(e for e in mpx._names.entries() if e["name"] == a.name)
    module = MODULES[backend]
    info = module.describe(entry)
    assert info["size"] == "12 B"
    module.remove(entry)
    assert module.describe(entry) is None
    assert not [r for r in sa.list_arrays() if r["name"] == a.name]
    with pytest.raises(FileNotFoundError):
        SharedArray.attach(a.name, backend=backend)
    assert a.sum() == 0         # still mapped here


def test_file_backend_keeps_data_in_the_file(tmp_path, private_file_dir):
    path = tmp_path / "keep.arr"
    a = SharedArray((4,), np.int32, path=str(path))
    try:
        assert a.backend == "file" and a.name == str(path)
        a[:] = [1, 2, 3, 4]
        a.flush()
        raw = path.read_bytes()
        offset = a._mpx_map.data_offset
        assert np.frombuffer(raw[offset:offset + 16], np.int32).tolist() == [1, 2, 3, 4]
        # A bare name lives in $MPX_FILE_DIR.
        b = SharedArray(2, name="bare", backend="file")
        assert (private_file_dir / "bare").exists()
        b.unlink()
    finally:
        a.unlink()
    assert not path.exists()


# --- pickling --------------------------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_pickle_sends_a_small_handle_for_every_view(backend):
    a = SharedArray((256, 512), np.float64, backend=backend)
    a[:] = np.arange(a.size).reshape(a.shape)
    small = SharedArray(128, backend=backend)
    views = [a, a[3:9], a[::-3, 5::7], a.T, a[7], a[7, 9:10], a[..., 3],
             a.view(np.uint8)[5:100], a[2:2]]
    for protocol in range(pickle.HIGHEST_PROTOCOL + 1):
        for v in views:
            data = pickle.dumps(v, protocol)
            assert len(data) < 400
            back = pickle.loads(data)
            assert type(back) is SharedArray and back.is_shared
            assert back.shape == v.shape and back.strides == v.strides
            assert back.dtype == v.dtype and data_ptr(back) == data_ptr(v)
            assert np.array_equal(back, v)
    # The same cost for 1 KiB as for 1 MiB: only shape and strides differ.
    assert abs(len(pickle.dumps(a, 5)) - len(pickle.dumps(small, 5))) <= 16
    # Protocol 5 takes nothing out of band, and neither does mpx's serializer.
    buffers = []
    pickle.dumps(a, 5, buffer_callback=buffers.append)
    assert buffers == []
    stream, oob = _serial.get_serializer(None).dumps_oob(a[1:])
    assert oob == [] and np.shares_memory(_serial.get_serializer(None).loads_oob(stream, oob), a)


@pytest.mark.parametrize("backend", BACKENDS)
def test_pickle_of_private_memory_sends_the_data(backend):
    a = SharedArray((4, 4), backend=backend)
    for v in [a + 1, a.copy(), a[[0, 2]], a.T.reshape(-1)]:
        back = pickle.loads(pickle.dumps(v, 5))
        assert type(back) is np.ndarray and not np.shares_memory(back, a)
        assert np.array_equal(back, v)


@pytest.mark.parametrize("backend", BACKENDS)
def test_handle_of_a_freed_anonymous_array_gives_a_clear_error(backend):
    a = SharedArray(1000, backend=backend)
    data = pickle.dumps(a[10:])
    del a
    gc.collect()
    with pytest.raises(FileNotFoundError, match="let it go"):
        pickle.loads(data)


# --- lifetime --------------------------------------------------------------

def memfd_count():
    """How many distinct memfds or unlinked files this process holds open."""
    found = set()
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
            st = os.stat(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if "mpx-sharedarray" in target or "(deleted)" in target:
            found.add((st.st_dev, st.st_ino))
    return len(found)


@pytest.mark.parametrize("backend", BACKENDS)
def test_anonymous_array_is_freed_when_released(backend):
    before = memfd_count()
    a = SharedArray(1 << 20, backend=backend)
    view = a[10:20]
    shmid = a._mpx_map.segment.identity
    if backend == "sysv":
        assert sysv_mode(shmid) is not None
    else:
        assert memfd_count() == before + 1
    del a
    gc.collect()
    assert view.sum() == 0          # a surviving view keeps the memory
    del view
    gc.collect()
    if backend == "sysv":
        assert sysv_mode(shmid) is None
    else:
        assert memfd_count() == before


@pytest.mark.parametrize("backend", BACKENDS)
def test_named_array_outlives_its_creator(backend, tmp_path):
    ctx = mpx.get_context("spawn")
    name = unique_name(backend, tmp_path)
    done = ctx.stdlib_context().Queue()
    p = ctx.Process(target=child_create_named, args=(name, backend, done))
    p.start()
    canonical = done.get(timeout=TIMEOUT)
    join_all([p])
    a = SharedArray.attach(canonical, backend=backend)
    try:
        assert a.sum() == 120
    finally:
        a.unlink()


@pytest.mark.parametrize("backend", BACKENDS)
def test_attaching_process_never_unlinks(ctx, backend, named):
    a = named(backend, (10,), np.int64)
    a[:] = 2
    out = ctx.stdlib_context().Queue()
    p = ctx.Process(target=child_attach_and_read, args=(a.name, backend, out))
    p.start()
    assert out.get(timeout=TIMEOUT) == 20
    join_all([p])
    b = SharedArray.attach(a.name, backend=backend)      # still there
    assert b[0] == 5 and b.sum() == 23


@pytest.mark.parametrize("backend", BACKENDS)
def test_anonymous_memory_stays_valid_after_the_creator_lets_go(ctx, backend):
    std = ctx.stdlib_context()
    attached, go, out = std.Queue(), std.Queue(), std.Queue()
    a = SharedArray(4, backend=backend)
    a[0] = 1.0
    p = ctx.Process(target=child_hold_anonymous, args=(a, attached, go, out))
    p.start()
    assert attached.get(timeout=TIMEOUT) == 1.0
    p._args = p._kwargs = None      # the stdlib keeps the arguments under fork
    del a
    gc.collect()
    go.put(True)
    assert out.get(timeout=TIMEOUT) == 3.0
    join_all([p])


@pytest.mark.parametrize("backend", BACKENDS)
def test_handle_reaches_a_named_array_after_unlink(backend, named):
    ctx = mpx.get_context("spawn")
    a = named(backend, (6,), np.int64)
    a.unlink()                  # gone by name; still held here
    # The name now belongs to another array: the handle must not land there.
    other = SharedArray((6,), np.int64, name=a.name, backend=backend)
    other[:] = 1
    out = ctx.stdlib_context().Queue()
    p = ctx.Process(target=child_write_handle, args=(a[1:], out))
    p.start()
    assert out.get(timeout=TIMEOUT) == 45
    join_all([p])
    assert a.tolist() == [0, 9, 9, 9, 9, 9]
    assert other.tolist() == [1] * 6
    other.unlink()


@pytest.mark.parametrize("backend", BACKENDS)
def test_unlink_never_removes_a_successor(backend, named):
    a = named(backend, (3,))
    sa.unlink(a.name, backend=backend)          # someone else unlinks it ...
    b = SharedArray(3, name=a.name, backend=backend)    # ... and reuses the name
    with pytest.raises(FileNotFoundError, match="already unlinked"):
        a.unlink()
    assert SharedArray.attach(a.name, backend=backend).shape == (3,)
    b.unlink()


def test_unrelated_process_attaches_by_name(named):
    a = named("posix", (5,), np.int32)
    a[:] = 3
    code = ("from mpx.sharedarray import SharedArray\n"
            f"a = SharedArray.attach({a.name!r})\n"
            "print(int(a.sum()))\n"
            "a[0] = 100\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=TIMEOUT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "15"
    assert a[0] == 100


# --- hand-off between processes ---------------------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
def test_handoff_through_process_args_queues_and_pipes(ctx, backend):
    std = ctx.stdlib_context()
    a = SharedArray((20, 8), np.float64, backend=backend)
    a[:] = np.arange(160).reshape(20, 8)
    view = a[10:20:2, ::3]
    inq, outq = std.Queue(), std.Queue()
    recv, send = std.Pipe(duplex=False)
    p = ctx.Process(target=child_handoff, args=(view, inq, outq, send))
    p.start()
    send.close()
    back = outq.get(timeout=TIMEOUT)
    assert data_ptr(back) == data_ptr(view) and back.strides == view.strides
    assert (a[10:20:2, ::3] == np.arange(160).reshape(20, 8)[10:20:2, ::3] + 1000).all()
    inq.put(a)
    part = outq.get(timeout=TIMEOUT)
    assert data_ptr(part) == data_ptr(a[5:7, 1::2]) and part.shape == (2, 4)
    assert a[0, 0] == -1.0
    assert recv.poll(TIMEOUT)
    rev = recv.recv()
    assert np.shares_memory(rev, a) and rev[-1, -1] == -1.0
    rev[0, 0] = 12345.0
    assert a[-1, -1] == 12345.0
    assert recv.poll(TIMEOUT)
    computed = recv.recv()
    assert type(computed) is np.ndarray and not np.shares_memory(computed, a)
    join_all([p])


@pytest.mark.parametrize("backend", BACKENDS)
def test_handoff_through_mpx_queue_and_pipe(ctx, backend):
    try:
        q = ctx.Queue()
        mine, theirs = ctx.Pipe()
    except (ValueError, ImportError, NotImplementedError) as e:
        pytest.skip(f"mpx Queue/Pipe not available here: {e}")
    a = SharedArray(10, backend=backend)
    p = ctx.Process(target=child_mpx_carriers, args=(q, theirs))
    p.start()
    q.put(a)
    deadline = time.monotonic() + TIMEOUT
    while a[3] != 33.0 and time.monotonic() < deadline:
        time.sleep(0.01)
    back = q.get(timeout=TIMEOUT)
    assert data_ptr(back) == data_ptr(a[2:5]) and back[1] == 33.0
    mine.send(a[6:])
    assert mine.poll(TIMEOUT)
    b = mine.recv()
    assert data_ptr(b) == data_ptr(a[6:]) and (a[6:] == 7).all()
    join_all([p])
    for obj in (q, mine, theirs):
        close = getattr(obj, "close", None)
        if close is not None:
            close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_pool_workers_share_the_memory(ctx, backend):
    a = SharedArray(40, np.int64, backend=backend)
    a[:] = 1
    pool = ctx.Pool(1)
    try:
        results = pool.map(pool_task, [a[0:10], a[10:20], a[30:40]], chunksize=1)
    finally:
        pool.terminate()
        pool.join()
    assert a.tolist() == [2] * 20 + [1] * 10 + [2] * 10
    for r, start in zip(results, (0, 10, 30)):
        assert type(r) is SharedArray and data_ptr(r) == data_ptr(a[start:])
