"""Hostile state around SharedArray (issue 19): forged headers, object dtypes,
segments cut short, squatted names, planted links, forged and junk records,
half-made arrays, no free descriptor.

Each case says, in its name or a comment, the exact error it must give. None
may crash the process: every attach of a damaged segment runs in a forked
child (``in_child``), where a segfault or SIGBUS shows as a failed test
instead of killing pytest. None may leave anything behind (the autouse
``no_leaks`` fixture checks /dev/shm, SysV ids and the record).

The cross-user cases use the `attacker` fixture: another local user. Their
objects are removed by the test (as root).
"""

import errno
import fcntl
import json
import mmap
import os
import pickle
import resource
import select
import signal
import stat
import struct
import subprocess
import sys
import tempfile
import time
import uuid

import numpy as np
import pytest

from mpx import _names
from mpx import sharedarray as sa
from mpx.backends._common import segment as _segment
from mpx.backends import file as file_backend
from mpx.backends.posix import segment as posix_shm
from mpx.backends.sysv import segment as sysv_shm
from mpx.sharedarray import InvalidSegmentError, SharedArray

BACKENDS = ["posix", "sysv", "file"]
MODULES = {"posix": posix_shm, "sysv": sysv_shm, "file": file_backend}
ipc = sysv_shm.sysv_ipc


@pytest.fixture(autouse=True)
def private_file_dir(tmp_path, monkeypatch):
    """Bare file-backend names go to a private directory, not /var/tmp."""
    d = tmp_path / "arrays"
    monkeypatch.setenv("MPX_FILE_DIR", str(d))
    return d


@pytest.fixture
def shared_dir():
    """A sticky directory every user may write, like /tmp (the attacker
    cannot reach pytest's tmp_path)."""
    d = tempfile.mkdtemp(prefix="mpx-test-sarray-")
    os.chmod(d, 0o1777)
    yield d
    for n in os.listdir(d):
        os.unlink(os.path.join(d, n))
    os.rmdir(d)


def new_name(backend, directory):
    tag = f"mpxh-{os.getpid()}-{uuid.uuid4().hex[:10]}"
    return os.path.join(str(directory), tag) if backend == "file" else tag


@pytest.fixture
def named(tmp_path):
    """Make named arrays; whatever is left under their names is removed."""
    made = []

    def make(backend, shape=(4,), dtype=np.int64, **kw):
        name = new_name(backend, tmp_path)
        a = SharedArray(shape, dtype, name=name, backend=backend, **kw)
        made.append((backend, a.name))
        return a
    yield make
    for backend, name in made:
        remove_by_force(backend, name)


def remove_by_force(backend, name):
    """Remove whatever is under `name`, whatever state it is in (cleanup)."""
    if backend == "sysv":
        try:
            shm = ipc.SharedMemory(sysv_shm.key_for(name), 0, mode=0)
        except ipc.ExistentialError:
            pass
        else:
            shm.remove()
            shm.detach()
    else:
        path = "/dev/shm/" + name if backend == "posix" else name
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
    _names.forget("SharedArray", backend, name)


# --- a forked child, so that a crash is a test failure ----------------------

class ChildDied(AssertionError):
    pass


def in_child(func, *args, timeout=30, **kw):
    """func(*args, **kw) in a forked child: its result, or its exception re-raised
    as (type name, message) in a RuntimeError subclass of the same name. A
    child killed by a signal (SIGSEGV, SIGBUS) or hung fails the test."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(rfd)
            try:
                result = ("ok", func(*args, **kw))
            except BaseException as e:          # carried back to the test
                result = ("raised", type(e).__name__, str(e))
            with os.fdopen(wfd, "wb") as f:
                f.write(pickle.dumps(result))
        finally:
            os._exit(0)
    os.close(wfd)
    chunks = []
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([rfd], [], [], left)[0]:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                raise ChildDied(f"the child hung for {timeout} s")
            chunk = os.read(rfd, 1 << 16)
            if not chunk:
                break
            chunks.append(chunk)
    finally:
        os.close(rfd)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        raise ChildDied(f"the child was killed by {signal.Signals(os.WTERMSIG(status)).name}")
    result = pickle.loads(b"".join(chunks))
    if result[0] == "ok":
        return result[1]
    raise type(result[1], (RuntimeError,), {})(result[2])


def child_attach_sum(name, backend, **kw):
    """What a victim does: attach and read every element. The victim is
    another process: nothing this one has mapped is in its cache."""
    sa._cache.clear()
    a = SharedArray.attach(name, backend=backend, **kw)
    return str(a.sum() if a.dtype.names is None else a.tolist())


def refused_in_child(name, backend, match, error="InvalidSegmentError", **kw):
    with pytest.raises(RuntimeError, match=match) as info:
        in_child(child_attach_sum, name, backend, **kw)
    assert type(info.value).__name__ == error, info.value


# --- forging headers --------------------------------------------------------

def rewrite(a, meta=None, **fixed):
    """Rewrite the header of `a`'s segment in place: the metadata text
    (`meta`: a dict, or raw bytes) and fixed fields by name."""
    root = a._mpx_map.root
    offsets = {"version": ("<I", 8), "meta_len": ("<I", 12), "data_offset": ("<Q", 16),
               "nbytes": ("<Q", 24)}
    if meta is not None:
        text = meta if isinstance(meta, bytes) else repr(meta).encode()
        assert 64 + len(text) <= a._mpx_map.data_offset
        root[64:64 + len(text)] = np.frombuffer(text, np.uint8)
        struct.pack_into("<I", root, 12, len(text))
    for field, value in fixed.items():
        fmt, offset = offsets[field]
        struct.pack_into(fmt, root, offset, value)


def meta_of(a, **changes):
    meta = {"name": a.name, "dtype": a.dtype.str, "shape": a.shape, "order": "C",
            "strides": a.strides}
    meta.update(changes)
    return meta


def struct_enc(formats, itemsize):
    return {"names": [f"f{i}" for i in range(len(formats))], "formats": formats,
            "offsets": [8 * i for i in range(len(formats))],
            "titles": [None] * len(formats), "itemsize": itemsize, "aligned": False}


# (description, itemsize): shape and strides are made to fit the segment, so
# that only the dtype is wrong (an mpx that believed it would segfault).
OBJECT_DTYPES = {
    "top level": ("|O", 8),
    "top level, O8": ("|O8", 8),
    "struct field": (struct_enc(["<i8", "|O"], 16), 16),
    "subarray": (("subarray", "|O", (2,)), 16),
    "subarray in a struct field": (struct_enc([("subarray", "|O", (2,))], 16), 16),
    "nested three deep": (struct_enc([struct_enc([struct_enc(["|O"], 8)], 8)], 8), 8),
    "subarray of a struct with an object": (("subarray", struct_enc(["<f8", "|O"], 16), (1,)),
                                            16),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(OBJECT_DTYPES))
def test_object_dtype_in_header_is_InvalidSegmentError(backend, case, named):
    # The data bytes would be taken for PyObject pointers: 0x41414141...
    a = named(backend, (4,), np.dtype("V16"))
    a.view(np.uint8)[:] = 0x41
    enc, itemsize = OBJECT_DTYPES[case]
    n = 64 // itemsize
    rewrite(a, meta_of(a, dtype=enc, shape=(n,), strides=(itemsize,)))
    refused_in_child(a.name, backend, "Python objects")


@pytest.mark.parametrize("backend", BACKENDS)
def test_object_dtype_in_a_handle_is_InvalidSegmentError(backend):
    a = SharedArray(4, np.int64, backend=backend)
    m = a._mpx_map
    handle = list(m.handle_for(a))
    handle[8] = np.dtype(object)
    with pytest.raises(InvalidSegmentError, match="Python objects"):
        sa._rebuild(*handle)


# Header fields that do not agree with each other or with the segment's
# size: each must be InvalidSegmentError naming the problem, before any
# array is made. (a: a (4,) int64 array, one page of header + 32 bytes.)
BAD_HEADERS = {
    "data bytes beyond the segment": (dict(nbytes=1 << 40), None, "sizes do not fit"),
    "data bytes near 2**64": (dict(nbytes=(1 << 64) - 1), None, "sizes do not fit"),
    "data offset beyond the segment": (dict(data_offset=1 << 62), None, "sizes do not fit"),
    "data offset inside the metadata": (dict(data_offset=8), None, "sizes do not fit"),
    "metadata longer than its limit": (dict(meta_len=(1 << 32) - 1), None, "sizes do not fit"),
    "shape that does not fill the data": (None, dict(shape=(5,)), "does not fill"),
    "shape with a huge and a zero dimension": (dict(nbytes=0),
                                              dict(shape=(0, 1 << 62), strides=(1 << 65, 8)),
                                              "too large|not a shape"),
    "shape with a negative dimension": (None, dict(shape=(-4, -1)), "not a shape"),
    "shape of bools": (None, dict(shape=(True, 4)), "not a list of integers"),
    "shape of 65 dimensions": (None, dict(shape=(1,) * 63 + (2, 2)), "not a shape"),
    "shape not a list": (None, dict(shape="4"), "not a list of integers"),
    "strides that do not match": (None, dict(strides=(16,)), "strides"),
    "strides of floats": (None, dict(strides=(8.0,)), "not a list of integers"),
    "order neither C nor F": (None, dict(order="K"), "order"),
    "name not a str": (None, dict(name=5), "name"),
    "zero-size dtype": (None, dict(dtype="|V0"), "not an element type"),
    "top-level subarray dtype": (None, dict(dtype=("subarray", "<i8", (1,))),
                                 "not an element type"),
    "dtype as a free numpy string": (None, dict(dtype="i8,i8"), "not the description"),
}


def _nested(depth):
    enc = "<i8"
    for _ in range(depth):
        enc = ("subarray", enc, (1,))
    return enc


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", list(BAD_HEADERS))
def test_header_inconsistent_with_the_segment_is_InvalidSegmentError(backend, case, named):
    fixed, changes, match = BAD_HEADERS[case]
    a = named(backend)
    rewrite(a, meta_of(a, **changes) if changes else None, **(fixed or {}))
    refused_in_child(a.name, backend, match)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("text, match", [
    (b"[1, 2, 3]", "not a dict"),
    (b"{'name': None", "SyntaxError"),
    (b"\xff\xfe not utf-8", "UnicodeDecodeError"),
    (b"{}", "KeyError"),
    (repr({"name": None, "dtype": _nested(40), "shape": (4,), "order": "C",
           "strides": (8,)}).encode(), "nested too deeply"),
    (b"(" * 1500 + b")" * 1500, "SyntaxError|RecursionError|MemoryError"),
])
def test_unreadable_metadata_is_InvalidSegmentError(backend, text, match, named):
    a = named(backend)
    rewrite(a, text)
    refused_in_child(a.name, backend, match)


# --- segments cut short (item 8) --------------------------------------------

def segment_path(backend, name):
    return "/dev/shm/" + name if backend == "posix" else name


@pytest.mark.parametrize("backend", ["posix", "file"])
@pytest.mark.parametrize("length, match", [
    (4096 + 16, "sizes do not fit"),         # header intact, data cut short
    (30, "only 30 bytes"),
    (0, "no SharedArray header"),
])
def test_truncated_segment_is_InvalidSegmentError_at_attach(backend, length, match, named):
    a = named(backend, (1000,))
    name = a.name
    del a       # this process must not touch the cut pages (SIGBUS)
    os.truncate(segment_path(backend, name), length)
    refused_in_child(name, backend, match)
    sa.unlink(name, backend=backend) if length >= 8 else remove_by_force(backend, name)


def test_anonymous_posix_array_cannot_be_shrunk_or_grown_EPERM():
    a = SharedArray(1000, np.float64, backend="posix")
    fd = a._mpx_map.segment._fd
    seals = fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    assert seals & fcntl.F_SEAL_SHRINK and seals & fcntl.F_SEAL_GROW and seals & fcntl.F_SEAL_SEAL
    # Another process reaches it the way a handle does: /proc/<pid>/fd.
    other = os.open(f"/proc/self/fd/{fd}", os.O_RDWR)
    try:
        with pytest.raises(PermissionError):
            os.ftruncate(other, 0)
        with pytest.raises(PermissionError):
            os.ftruncate(other, 1 << 30)
    finally:
        os.close(other)
    a[:] = 1.0                  # every page still there
    assert a.sum() == 1000.0


# --- squatted names, others' objects, links (item 3) ------------------------

def attacker_creates(name, backend, mode):
    a = SharedArray((4,), np.int64, name=name, backend=backend, mode=mode)
    a[:] = 7
    return a._mpx_map.segment.identity


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", [0o666, 0o600])
def test_array_squatted_by_another_user_is_PermissionError(backend, mode, attacker, shared_dir):
    name = new_name(backend, shared_dir)
    attacker.run(attacker_creates, name, backend, mode)
    try:
        # Refused before a byte is read, for readers and writers alike.
        refused_in_child(name, backend, f"owned by uid {attacker.uid}",
                         error="PermissionError")
        refused_in_child(name, backend, f"owned by uid {attacker.uid}",
                         error="PermissionError", readonly=True)
        # Not this user's to remove either.
        with pytest.raises(PermissionError, match="owned by uid"):
            sa.unlink(name, backend=backend)
        if mode == 0o666:
            # Sharing with other users on purpose: the opener opts in.
            assert in_child(child_attach_sum, name, backend, mode=0o666) == "28"
    finally:
        remove_by_force(backend, name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_own_array_open_to_others_is_PermissionError_without_opt_in(backend, named):
    a = named(backend, mode=0o666)
    os.umask(os.umask(0))
    refused_in_child(a.name, backend, "lets group/others do more", error="PermissionError")
    assert in_child(child_attach_sum, a.name, backend, mode=0o666) == "0"
    b = named(backend, mode=0o640)
    refused_in_child(b.name, backend, "lets group/others do more", error="PermissionError")
    assert in_child(child_attach_sum, b.name, backend, mode=0o640) == "0"


def test_attach_mode_is_checked_TypeError_ValueError(named):
    a = named("posix")
    with pytest.raises(TypeError, match="mode"):
        SharedArray.attach(a.name, backend="posix", mode="0o600")
    with pytest.raises(ValueError, match="mode"):
        SharedArray.attach(a.name, backend="posix", mode=0o1000)


@pytest.mark.parametrize("backend", ["posix", "file"])
@pytest.mark.parametrize("readonly", [False, True])
def test_fifo_under_the_name_is_InvalidSegmentError_without_blocking(backend, readonly,
                                                                    tmp_path):
    name = new_name(backend, tmp_path)
    os.mkfifo(segment_path(backend, name), 0o600)
    try:
        # O_RDONLY on a FIFO blocks until a writer comes: never here.
        refused_in_child(name, backend, "not a regular file", readonly=readonly)
        with pytest.raises(InvalidSegmentError):
            sa.unlink(name, backend=backend)
    finally:
        os.unlink(segment_path(backend, name))


def test_file_path_that_is_a_link_is_PermissionError(named, tmp_path):
    target = named("file")
    target[:] = 3
    link = str(tmp_path / "link")
    os.symlink(target.name, link)
    refused_in_child(link, "file", "symbolic link", error="PermissionError")
    with pytest.raises(PermissionError, match="symbolic link"):
        sa.unlink(link, backend="file")
    # Creating at a link never writes through it.
    with pytest.raises(FileExistsError):
        SharedArray(4, name=link, backend="file")
    assert os.path.islink(link) and (SharedArray.attach(target.name) == 3).all()
    os.unlink(link)


def attacker_plants_link(link, target):
    os.symlink(target, link)


def test_link_planted_by_another_user_is_PermissionError(attacker, shared_dir, named):
    victim = named("file")
    victim[:] = 5
    link = os.path.join(shared_dir, "planted")
    attacker.run(attacker_plants_link, link, victim.name)
    refused_in_child(link, "file", "symbolic link", error="PermissionError")
    with pytest.raises(FileExistsError):
        SharedArray(4, name=link, backend="file")
    assert (victim == 5).all() and os.path.exists(victim.name)


def attacker_makes_dir(path):
    os.mkdir(path, 0o777)
    os.chmod(path, 0o777)


def test_array_dir_owned_by_another_user_is_PermissionError(attacker, shared_dir, monkeypatch):
    squatted = os.path.join(shared_dir, "arrays")
    attacker.run(attacker_makes_dir, squatted)
    monkeypatch.setenv("MPX_FILE_DIR", squatted)
    try:
        with pytest.raises(PermissionError, match=f"owned by uid {attacker.uid}"):
            SharedArray(4, name="bare", backend="file")
        with pytest.raises(PermissionError, match=f"owned by uid {attacker.uid}"):
            SharedArray(4, backend="file")
        assert os.listdir(squatted) == []
    finally:
        os.rmdir(squatted)


def test_array_dir_that_is_a_link_is_PermissionError(tmp_path, monkeypatch):
    real = tmp_path / "real"
    real.mkdir(mode=0o700)
    os.symlink(real, tmp_path / "link")
    monkeypatch.setenv("MPX_FILE_DIR", str(tmp_path / "link"))
    with pytest.raises(PermissionError, match="not a directory"):
        SharedArray(4, name="bare", backend="file")
    assert os.listdir(real) == []


# --- records: forged and junk (items 1, 12 for SharedArray) -----------------

def file_entry(name, path):
    return {"kind": "SharedArray", "backend": "file", "name": name,
            "module": "mpx.backends.file", "meta": {"path": path}}


@pytest.fixture
def victim_file(tmp_path):
    """A root-owned file that is not an mpx array."""
    path = tmp_path / "victim"
    path.write_bytes(b"precious " * 100)
    os.chmod(path, 0o644)
    return str(path)


def test_forged_record_to_a_victim_file_remove_is_InvalidSegmentError(victim_file):
    entry = file_entry(os.path.basename(victim_file), victim_file)
    with pytest.raises(InvalidSegmentError, match="not an mpx SharedArray"):
        file_backend.remove(entry)
    assert open(victim_file, "rb").read() == b"precious " * 100
    # A path name is its own path: a record giving another one is not used.
    entry = file_entry(victim_file + ".arr", victim_file)
    file_backend.remove(entry)                      # nothing there: nothing done
    assert os.path.exists(victim_file)
    # A bare name whose recorded path ends in another name: the path is not used.
    entry = file_entry("innocent", victim_file)
    file_backend.remove(entry)
    assert os.path.exists(victim_file)


def test_forged_record_through_a_link_remove_is_PermissionError(victim_file, tmp_path, named):
    mine = named("file")        # even a link to the caller's own mpx array
    for target in (victim_file, mine.name):
        link = str(tmp_path / f"link-{uuid.uuid4().hex[:6]}")
        os.symlink(target, link)
        with pytest.raises(PermissionError, match="symbolic link"):
            file_backend.remove(file_entry(link, link))
        assert os.path.islink(link) and os.path.exists(target)
        os.unlink(link)


def attacker_creates_and_forges(name, backend):
    a = SharedArray((4,), np.int64, name=name, backend=backend, mode=0o600)
    return a._mpx_map.segment.identity


@pytest.mark.parametrize("backend", BACKENDS)
def test_forged_record_of_another_users_array_remove_is_PermissionError(backend, attacker,
                                                                         shared_dir):
    name = new_name(backend, shared_dir)
    attacker.run(attacker_creates_and_forges, name, backend)
    entry = {"kind": "SharedArray", "backend": backend, "name": name,
             "module": MODULES[backend].__name__, "meta": {"path": name}}
    try:
        with pytest.raises(PermissionError, match=f"owned by uid {attacker.uid}"):
            MODULES[backend].remove(entry)
        assert MODULES[backend].describe(entry) is not None     # still there
    finally:
        remove_by_force(backend, name)


@pytest.mark.parametrize("backend", ["posix", "file"])
def test_non_mpx_object_under_a_recorded_name_remove_is_InvalidSegmentError(backend, tmp_path):
    name = new_name(backend, tmp_path)
    path = segment_path(backend, name)
    with open(path, "wb") as f:
        f.write(b"not an array" * 100)
    entry = {"kind": "SharedArray", "backend": backend, "name": name, "meta": {"path": path}}
    try:
        with pytest.raises(InvalidSegmentError, match="not an mpx SharedArray"):
            MODULES[backend].remove(entry)
        assert MODULES[backend].describe(entry)["error"] == "not an mpx SharedArray"
        assert os.path.exists(path)
    finally:
        os.unlink(path)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("junk", [
    {}, {"name": 5}, {"name": None}, {"name": ["x"]}, {"name": ""}, {"name": "a/../b"},
    {"name": "x", "meta": "not a dict"}, {"name": "x", "meta": {"path": 5}},
    {"name": "x", "meta": {"shape": "abc", "dtype": 5, "bytes": "big"}},
])
def test_junk_record_describe_is_None_remove_is_ValueError_or_nothing(backend, junk):
    module = MODULES[backend]
    entry = {"kind": "SharedArray", "backend": backend, **junk}
    assert module.describe(entry) is None
    try:
        module.remove(entry)
    except ValueError:
        pass
    assert module.describe("not even a dict") is None


def test_describe_of_a_forged_record_opens_nothing_writable_and_maps_nothing(
        victim_file, named, monkeypatch):
    mine = named("file")
    posix = named("posix")
    opened = []
    real_open = os.open

    def spy_open(path, flags, *args, **kw):
        opened.append((path, flags))
        return real_open(path, flags, *args, **kw)

    def no_mmap(*args, **kw):
        raise AssertionError("describe mapped something")
    monkeypatch.setattr(os, "open", spy_open)
    monkeypatch.setattr(mmap, "mmap", no_mmap)
    row = file_backend.describe(file_entry(os.path.basename(victim_file), victim_file))
    assert row["error"] == "not an mpx SharedArray"
    assert file_backend.describe(file_entry(mine.name, mine.name)).get("error") is None
    assert posix_shm.describe({"name": posix.name}).get("error") is None
    assert opened
    for path, flags in opened:
        assert flags & (os.O_WRONLY | os.O_RDWR) == 0, path
        assert flags & os.O_NOFOLLOW, path


def write_record(fname, content):
    path = os.path.join(_names.names_dir(), fname)
    with open(path, "w") as f:
        f.write(content)
    return path


def test_junk_and_forged_records_never_break_list_arrays(named, victim_file):
    real = named("posix", (3,), np.int16)
    os.makedirs(_names.names_dir(), exist_ok=True)
    junk = [
        ("a.SharedArray.junk1.json", "{not json"),
        ("a.SharedArray.junk0.json", "[1, 2]"),
        ("a.SharedArray.junk00.json", "5"),
        ("a.SharedArray.junk2.json", json.dumps({"kind": "SharedArray", "backend": 5})),
        ("a.SharedArray.junk3.json", json.dumps({"kind": "SharedArray", "backend": "posix",
                                                 "name": 5, "meta": []})),
        ("a.SharedArray.junk4.json", json.dumps({"kind": "SharedArray", "backend": "nope",
                                                 "name": "x"})),
        ("a.SharedArray.junk5.json", json.dumps({"kind": "SharedArray", "backend": "posix",
                                                 "name": real.name, "meta": "x"})),
        ("a.SharedArray.junk6.json", json.dumps({"kind": "SharedArray", "backend": "sysv",
                                                 "name": ["x"], "meta": {"shape": "abc"}})),
        ("a.SharedArray.forged.json", json.dumps(file_entry(os.path.basename(victim_file),
                                                            victim_file))),
    ]
    paths = [write_record(f, c) for f, c in junk]
    try:
        rows = sa.list_arrays()
    finally:
        for p in paths:
            os.unlink(p)
    names = [r["name"] for r in rows]
    assert real.name in names
    assert os.path.basename(victim_file) not in names
    for r in rows:
        assert isinstance(r["shape"], tuple)


# --- half-made arrays (item 13) ---------------------------------------------

def child_killed_before_the_header(name, backend):
    """Create a named array but die where the header is being written."""
    pid = os.fork()
    if pid == 0:
        sa._publish = lambda root, header: os.kill(os.getpid(), signal.SIGKILL)
        try:
            SharedArray((4,), np.int64, name=name, backend=backend)
        finally:
            os._exit(3)
    _, status = os.waitpid(pid, 0)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL


@pytest.mark.parametrize("backend", ["posix", "file"])
def test_creator_killed_before_the_header_leaves_no_name_FileNotFoundError(backend, tmp_path):
    shm_before = set(os.listdir("/dev/shm"))
    name = new_name(backend, tmp_path)
    child_killed_before_the_header(name, backend)
    with pytest.raises(FileNotFoundError):
        SharedArray.attach(name, backend=backend)
    assert not os.path.exists(segment_path(backend, name))
    assert set(os.listdir("/dev/shm")) <= shm_before
    assert not [n for n in os.listdir(tmp_path) if n.startswith(_segment.INIT_PREFIX)]
    _names.forget("SharedArray", backend, name)


@pytest.mark.parametrize("how", ["unlink", "remove", "mpx rm"])
def test_sysv_creator_killed_before_the_header_is_removable(how, monkeypatch):
    monkeypatch.setattr(sa, "_ATTACH_WAIT", 30)     # the creator's death ends the wait
    name = new_name("sysv", None)
    child_killed_before_the_header(name, "sysv")
    start = time.monotonic()
    with pytest.raises(InvalidSegmentError, match="died while making it"):
        SharedArray.attach(name, backend="sysv")
    assert time.monotonic() - start < 10
    if how == "unlink":
        sa.unlink(name, backend="sysv")
    elif how == "remove":
        # python -m mpx rm goes through the record, written before the header.
        entry = next(e for e in _names.entries() if e.get("name") == name)
        sysv_shm.remove(entry)
    else:
        out = subprocess.run([sys.executable, "-m", "mpx", "rm", name], capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0 and "removed" in out.stdout, (out.stdout, out.stderr)
    with pytest.raises(FileNotFoundError):
        SharedArray.attach(name, backend="sysv")
    assert not [e for e in _names.entries() if e.get("name") == name]


def test_sysv_segment_without_header_in_use_is_not_removed_InvalidSegmentError():
    # A creator still attached may be about to write its header.
    name = new_name("sysv", None)
    shm = ipc.SharedMemory(sysv_shm.key_for(name), ipc.IPC_CREX, mode=0o600, size=4096,
                           init_character=b"\0")
    try:
        with pytest.raises(InvalidSegmentError, match="still has it attached"):
            sa.unlink(name, backend="sysv")
    finally:
        shm.remove()
        shm.detach()


def lowest_free_fds_taken():
    """Set RLIMIT_NOFILE so that no descriptor is free: the limit just above
    the highest open one, and the holes below filled."""
    top = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    resource.setrlimit(resource.RLIMIT_NOFILE, (top + 1, hard))
    while True:
        try:
            os.dup(0)
        except OSError as e:
            assert e.errno == errno.EMFILE
            return


def child_unlinks_without_a_descriptor(names):
    arrays = [SharedArray((4,), np.int64, name=n, backend=b) for b, n in names]
    lowest_free_fds_taken()
    arrays[0].unlink()                                  # the array's own unlink()
    sa.unlink(names[1][1], backend=names[1][0])         # by name, mapped here
    arrays[2].unlink()
    sa.unlink(names[3][1], backend=names[3][0])
    arrays[4].unlink()
    sa.unlink(names[5][1], backend=names[5][0])
    return "ok"


def test_unlink_works_with_no_free_descriptor(tmp_path):
    names = [(b, new_name(b, tmp_path)) for b in BACKENDS for _ in range(2)]
    try:
        assert in_child(child_unlinks_without_a_descriptor, names) == "ok"
        for backend, name in names:
            with pytest.raises(FileNotFoundError):
                SharedArray.attach(name, backend=backend)
    finally:
        for backend, name in names:
            remove_by_force(backend, name)


def child_creates_until_EMFILE(names):
    """Create named arrays with ever fewer free descriptors; report what
    each attempt gave."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    outcomes = []
    made = []
    for k, (backend, name) in enumerate(names):
        lowest_free_fds_taken()
        soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft + k % 4, hard))   # k % 4 free
        try:
            made.append(SharedArray((4,), np.int64, name=name, backend=backend))
            outcomes.append("made")
        except OSError as e:
            outcomes.append(errno.errorcode.get(e.errno, str(e.errno)))
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return outcomes


def test_creation_out_of_descriptors_leaves_no_half_made_array(tmp_path):
    names = [(b, new_name(b, tmp_path)) for b in ("posix", "file") for _ in range(8)]
    try:
        outcomes = in_child(child_creates_until_EMFILE, names)
        assert "EMFILE" in outcomes, outcomes
        for (backend, name), outcome in zip(names, outcomes):
            if outcome == "made":
                assert SharedArray.attach(name, backend=backend).shape == (4,)
                sa.unlink(name, backend=backend)
            else:
                # Never a name without its header: nothing at all.
                assert not os.path.exists(segment_path(backend, name)), (name, outcome)
    finally:
        for backend, name in names:
            remove_by_force(backend, name)


# --- creation modes (item 6 for SharedArray) --------------------------------

@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", [0o400, 0o000, 0o444, 0o200])
def test_mode_without_owner_read_write_is_ValueError_and_leaves_nothing(backend, mode,
                                                                        tmp_path):
    name = new_name(backend, tmp_path)
    with pytest.raises(ValueError, match="owner read and write"):
        SharedArray(3, name=name, backend=backend, mode=mode)
    with pytest.raises(FileNotFoundError):
        SharedArray.attach(name, backend=backend)


@pytest.mark.parametrize("mode, error", [(True, TypeError), ("0o600", TypeError),
                                         (0o1600, ValueError), (-1, ValueError)])
def test_bad_creation_mode_is_TypeError_or_ValueError(mode, error):
    with pytest.raises(error, match="mode"):
        SharedArray(3, name="never-made", backend="posix", mode=mode)


def test_numpy_integer_mode_is_accepted(named):
    a = named("posix", mode=np.int64(0o600))
    assert stat.S_IMODE(os.stat("/dev/shm/" + a.name).st_mode) == 0o600
