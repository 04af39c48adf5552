"""Hostile state around the shm backend (issue 19): squatted names, planted
links, files cut short, damaged headers, forged records.

Each case says, in its name or a comment, the exact error it must give. None
may crash the process (the opener of a damaged file runs in a forked child
where a crash would be a SIGBUS/SIGSEGV) or leave anything behind. Ring
damage below the header (records, spill extents, the overflow area) is
covered by tests/test_ring.py ("damaged or truncated ring files").

The cross-user cases use the `attacker` fixture: another local user, who
can write /dev/shm like anyone. What they put in a queue is an object whose
__reduce__ writes a marker file: if root ever unpickled it, the marker would
be there.
"""

import errno
import fcntl
import os
import pickle
import stat
import struct

import pytest

import mpx
from mpx import _names
from mpx._ext import ring as ringmod
from mpx._ext.ring import RingError
from mpx.backends.shm import queues as shm

from conftest import backends_for, join_all

pytestmark = pytest.mark.skipif("shm" not in backends_for("Queue"),
                                reason="the shm backend is not available here")

HDR = ringmod.HEADER_SIZE
SHM = "/dev/shm"


def _plant(path):
    with open(path, "w") as f:
        f.write("unpickled")
    return "unpickled"


class Evil:
    """Unpickling this writes `path`: the stand-in for os.system."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (_plant, (self.path,))


@pytest.fixture
def named():
    """A fresh queue name; whatever is left at it is removed afterwards."""
    made = []

    def make():
        name = f"mpx-hostile-{os.getpid()}-{len(made)}-{os.urandom(4).hex()}"
        made.append(name)
        return name
    yield make
    for name in made:
        try:
            os.unlink(os.path.join(SHM, name))
        except FileNotFoundError:
            pass
        for family in shm.FAMILIES:
            _names.forget(family, "shm", name)


def in_child(func, *args):
    """func(*args) in a forked child: ("ok", result), ("raised", type name,
    message), or ("died", signal) if it crashed."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(r)
            try:
                out = ("ok", func(*args))
            except BaseException as e:
                out = ("raised", type(e).__name__, str(e))
            os.write(w, pickle.dumps(out))
        finally:
            os._exit(0)
    os.close(w)
    data = b""
    while True:
        chunk = os.read(r, 65536)
        if not chunk:
            break
        data += chunk
    os.close(r)
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        return ("died", os.WTERMSIG(status))
    return pickle.loads(data)


def _open_and_get(name, **kw):
    q = mpx.Queue(name=name, backend="shm", **kw)
    try:
        return q.qsize()
    finally:
        q.close()


# ------------------------------------------------- squatted names (item 3)

def _attacker_squats(name, mode, marker):
    q = mpx.Queue(name=name, backend="shm", mode=mode)
    q.put(Evil(marker))
    st = os.stat(os.path.join(SHM, name))
    q.close()
    return st.st_uid, stat.S_IMODE(st.st_mode)


@pytest.mark.parametrize("mode", [0o600, 0o666], ids=["0600", "0666"])
def test_squatted_name_is_refused_with_PermissionError_and_never_unpickled(
        attacker, named, tmp_path, mode):
    name, marker = named(), str(tmp_path / "marker")
    uid, made = attacker.run(_attacker_squats, name, mode, marker)
    assert (uid, made) == (attacker.uid, mode)
    for family in (mpx.Queue, mpx.SimpleQueue, mpx.JoinableQueue):
        with pytest.raises(PermissionError, match=f"owned by uid {attacker.uid}"):
            family(name=name, backend="shm")
    assert not os.path.exists(marker)
    # The file is the attacker's, untouched: nothing was created over it.
    assert os.stat(os.path.join(SHM, name)).st_uid == attacker.uid


def test_mode_opt_in_accepts_the_other_users_queue(attacker, named, tmp_path):
    # mode=0o666 on root's side means "I share queues with other users": it
    # accepts theirs, and so trusts them with what it unpickles (not done
    # here: get() would run the attacker's code, which is the point).
    name, marker = named(), str(tmp_path / "marker")
    attacker.run(_attacker_squats, name, 0o666, marker)
    assert _open_and_get(name, mode=0o666) == 1
    assert not os.path.exists(marker)
    # Opting in to the group only is not enough for a 0666 queue:
    # PermissionError naming its mode.
    with pytest.raises(PermissionError, match="mode 0o666"):
        _open_and_get(name, mode=0o660)


def _attacker_plants_link(path, target):
    os.symlink(target, path)


def test_planted_symlink_is_refused_with_PermissionError(attacker, named):
    name, victim = named(), named()
    q = mpx.Queue(name=victim, backend="shm")          # root's own queue
    q.put("root's")
    attacker.run(_attacker_plants_link, os.path.join(SHM, name), os.path.join(SHM, victim))
    with pytest.raises(PermissionError, match="symbolic link"):
        mpx.Queue(name=name, backend="shm")
    # A dangling link: the same refusal, and nothing is created at its target.
    os.unlink(os.path.join(SHM, name))
    attacker.run(_attacker_plants_link, os.path.join(SHM, name), os.path.join(SHM, named()))
    with pytest.raises(PermissionError, match="symbolic link"):
        mpx.Queue(name=name, backend="shm")
    assert q.get(timeout=5) == "root's"
    q.unlink()
    q.close()


def _attacker_replaces(name, marker):
    q = mpx.Queue(name=name, backend="shm", mode=0o666)
    q.put(Evil(marker))
    q.close()


def test_reopening_a_pickled_named_queue_skips_a_squatter(attacker, named, tmp_path):
    # A queue pickled by name is reopened by name first. If the name now
    # holds another user's queue, that file is refused before anything is
    # read from it, and the queue is found through its holders instead.
    name, marker = named(), str(tmp_path / "marker")
    q = mpx.Queue(name=name, backend="shm")
    q.put("mine")
    data = pickle.dumps(q)
    os.unlink(os.path.join(SHM, name))                  # the name goes...
    attacker.run(_attacker_replaces, name, marker)      # ...and is squatted
    q2 = pickle.loads(data)
    assert q2.get(timeout=5) == "mine"
    assert q2._ring.ring_id == q._ring.ring_id
    assert not os.path.exists(marker)
    q2.close()
    q.close()
    _names.forget("Queue", "shm", name)


# ------------------------------------------------------ modes, both ways

def test_named_queue_is_made_with_mode_and_opened_only_within_it(named):
    name = named()
    q = mpx.Queue(name=name, backend="shm", mode=0o660)
    assert stat.S_IMODE(os.stat(os.path.join(SHM, name)).st_mode) == 0o660
    # The default opener shares with nobody: PermissionError naming the mode.
    with pytest.raises(PermissionError, match="mode 0o660"):
        _open_and_get(name)
    assert _open_and_get(name, mode=0o660) == 0
    with pytest.raises(ValueError, match="owner read and write"):
        mpx.Queue(name=named(), backend="shm", mode=0o400)
    with pytest.raises(TypeError, match="mode must be an int"):
        mpx.Queue(name=named(), backend="shm", mode="0o600")
    q.unlink()
    q.close()


def test_anonymous_queue_memfd_is_owner_only():
    q = mpx.Queue(backend="shm")
    assert stat.S_IMODE(os.fstat(q._ring.fd).st_mode) == 0o600
    q.close()


# ------------------------------------------- truncation (item 8)

def test_anonymous_rings_are_sealed_against_shrinking():
    # ftruncate of a sealed memfd: PermissionError (EPERM), for everyone
    # who reaches it (here through /proc, as another process of ours would).
    want = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
    q = mpx.Queue(backend="shm")
    a, b = mpx.Pipe(backend="shm")
    rings = [q._ring, a._chan.out_ring, a._chan.in_ring]
    for ring in rings:
        assert ring.seals & want == want
        fd = os.open(f"/proc/self/fd/{ring.fd}", os.O_RDWR)
        try:
            with pytest.raises(PermissionError):
                os.ftruncate(fd, 0)
            os.ftruncate(fd, os.fstat(fd).st_size + 4096)       # growing stays allowed
        finally:
            os.close(fd)
    q.put(b"still fine")
    assert q.get(timeout=5) == b"still fine"
    a.send("x")
    assert b.recv() == "x"
    for obj in (q, a, b):
        obj.close()


def _report_seals(q, out):
    out.put(q._ring.seals)
    later = q.get(timeout=30)            # a queue sent later: through /proc
    out.put(later._ring.seals)


def test_sealed_queue_travels_by_dup_and_by_proc(ctx):
    # The descriptor-passing paths (inherited or dup'ed at start, reopened
    # through /proc/<pid>/fd later) still open a sealed ring, seals kept.
    want = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
    q, out, later = (ctx.Queue(backend="shm") for _ in range(3))
    p = ctx.Process(target=_report_seals, args=(q, out))
    p.start()
    assert out.get(timeout=60) & want == want
    q.put(later)
    assert out.get(timeout=60) & want == want
    join_all([p])
    for obj in (q, out, later):
        obj.close()


def _cut(path, size):
    os.truncate(path, size)


@pytest.mark.parametrize("size, error", [
    (0, "smaller than a ring header"),
    (100, "smaller than a ring header"),
    (HDR - 1, "smaller than a ring header"),
    (HDR, "impossible values"),                     # the header says HDR + capacity
    (HDR + 4096, "impossible values"),
])
def test_named_ring_cut_below_its_header_is_refused_at_attach(named, size, error):
    # RingError naming the damage, in a fresh opener, and never a SIGBUS.
    name = named()
    q = mpx.Queue(name=name, backend="shm", capacity=8192)
    q.put("x")
    q.close()                          # (a process still mapping it would die)
    _cut(os.path.join(SHM, name), size)
    out = in_child(_open_and_get, name)
    assert out[0] == "raised" and out[1] == "RingError" and error in out[2], out
    _names.forget("Queue", "shm", name)


# ------------------------------------------------ damaged headers at open

def _header_field(offset, fmt, value):
    return lambda path: _poke(path, offset, fmt, value)


def _poke(path, offset, fmt, value):
    fd = os.open(path, os.O_RDWR)
    try:
        os.pwrite(fd, struct.pack(fmt, value), offset)
    finally:
        os.close(fd)


# (offset, format, value, the RingError it must give)
DAMAGE = {
    "magic zeroed": (0, "<Q", 0, "magic number"),
    "magic of something else": (0, "<Q", 0x7f454c46, "magic number"),
    "other layout version": (8, "<I", ringmod.LAYOUT_VERSION + 1, "layout version"),
    "header size 0": (12, "<I", 0, "impossible values"),
    "header size huge": (12, "<I", 1 << 31, "impossible values"),
    "capacity 0": (16, "<Q", 0, "impossible values"),
    "capacity not a power of 2": (16, "<Q", 12345, "impossible values"),
    "capacity past the file": (16, "<Q", 1 << 20, "impossible values"),
    "capacity past the limit": (16, "<Q", 1 << 40, "impossible values"),
    "capacity 2**64-1": (16, "<Q", (1 << 64) - 1, "impossible values"),
    "inline_max past capacity": (24, "<Q", 1 << 20, "impossible values"),
    "page size 0": (52, "<I", 0, "impossible values"),
    "page size not a power of 2": (52, "<I", 4095, "impossible values"),
    "area past the limit": (56, "<Q", 1 << 40, "impossible values"),
    "area not whole pages": (56, "<Q", 4097, "impossible values"),
}


@pytest.mark.parametrize("case", list(DAMAGE))
def test_damaged_header_is_refused_with_RingError(named, case):
    offset, fmt, value, error = DAMAGE[case]
    name = named()
    q = mpx.Queue(name=name, backend="shm", capacity=8192)
    _poke(os.path.join(SHM, name), offset, fmt, value)
    out = in_child(_open_and_get, name)
    assert out[0] == "raised" and out[1] == "RingError" and error in out[2], out
    q.unlink()
    q.close()


def test_queue_of_another_family_is_refused_with_ValueError(named):
    name = named()
    q = mpx.JoinableQueue(name=name, backend="shm")
    with pytest.raises(ValueError, match="exists as a JoinableQueue"):
        mpx.Queue(name=name, backend="shm")
    q.unlink()
    q.close()


@pytest.mark.parametrize("what, error", [
    ("fifo", "not a regular file"),               # RingError
    ("directory", "Is a directory"),              # IsADirectoryError
])
def test_name_held_by_something_else_is_refused(named, what, error):
    name = named()
    path = os.path.join(SHM, name)
    if what == "fifo":
        os.mkfifo(path, 0o600)
    else:
        os.mkdir(path, 0o700)
    try:
        out = in_child(_open_and_get, name)      # (a FIFO must not block it)
        assert out[0] == "raised" and error in out[2], out
    finally:
        (os.unlink if what == "fifo" else os.rmdir)(path)


@pytest.mark.parametrize("offset, fmt, value, error", [
    (HDR, "<I", 0xfffffff0, "a record runs past the tail"),
    (HDR + 4, "<B", 77, "unknown record kind 77"),
    (HDR + 6, "<H", 65535, "part lengths do not add up"),
])
def test_damaged_record_is_a_RingError_on_get(named, offset, fmt, value, error):
    name = named()
    q = mpx.Queue(name=name, backend="shm", capacity=8192)
    q.put(b"x" * 100)
    _poke(os.path.join(SHM, name), offset, fmt, value)
    out = in_child(lambda: mpx.Queue(name=name, backend="shm").get(timeout=1))
    assert out[0] == "raised" and out[1] == "RingError" and error in out[2], out
    q.unlink()
    q.close()


# ------------------------------------------- options refused up front

def _shm_names():
    # (Only ours: other tests of the machine may come and go meanwhile.)
    return {n for n in os.listdir(SHM)
            if n.startswith("mpx-hostile") or n.startswith(shm._INIT_PREFIX)}


@pytest.mark.parametrize("kw, exc, error", [
    ({"spin": float("inf")}, ValueError, "spin must be"),
    ({"spin": float("nan")}, ValueError, "spin must be"),
    ({"spin": -1}, ValueError, "spin must be"),
    ({"spin": "x"}, TypeError, "spin must be"),
    ({"area": "x"}, TypeError, "area must be"),
    ({"area": -1}, ValueError, "area must be"),
    ({"area_backlog": 2 ** 70}, ValueError, "area_backlog must be"),
    ({"inline_max": -1}, ValueError, "inline_max must be"),
    ({"inline_max": 2 ** 70}, ValueError, "inline_max must be"),
    ({"capacity": "x"}, TypeError, "capacity must be"),
    ({"capacity": 0}, ValueError, "capacity must be"),
    ({"maxsize": 2 ** 40}, ValueError, "maxsize"),
    ({"mode": 0o1000}, ValueError, "mode must be"),
])
def test_bad_option_of_a_named_queue_creates_and_records_nothing(named, kw, exc, error):
    name = named()
    before = _shm_names()
    with pytest.raises(exc, match=error):
        mpx.Queue(name=name, backend="shm", **kw)
    assert not os.path.exists(os.path.join(SHM, name))
    assert _shm_names() <= before
    assert not [e for e in _names.entries() if e.get("name") == name]


def test_lone_surrogate_name_is_a_ValueError_before_anything_is_made():
    before = _shm_names()
    with pytest.raises(ValueError, match="UTF-8"):
        mpx.Queue(name="mpx-hostile-\udc80", backend="shm")
    assert _shm_names() <= before
    assert not [e for e in _names.entries() if "hostile" in str(e.get("name"))]


def _unlink_without_descriptors(name):
    import resource
    q = mpx.Queue(name=name, backend="shm")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (64, hard))
    held = []
    try:
        while True:
            held.append(os.open("/dev/null", os.O_RDONLY))
    except OSError as e:
        assert e.errno == errno.EMFILE
    q.unlink()                      # no descriptor to spare: must still work
    return os.path.exists(os.path.join(SHM, name))


def test_unlink_works_without_a_free_descriptor(named):
    # No error, and the name is gone from /dev/shm.
    name = named()
    assert in_child(_unlink_without_descriptors, name) == ("ok", False)


def test_unlink_without_a_free_descriptor_also_forgets_the_record(named):
    name = named()
    assert in_child(_unlink_without_descriptors, name) == ("ok", False)
    assert not [e for e in _names.entries() if e.get("name") == name]


# -------------------------------------- describe/remove (ls and rm)

def _entry(name):
    return {"kind": "Queue", "backend": "shm", "name": name, "module": shm.__name__,
            "meta": {}}


@pytest.mark.parametrize("entry", [None, [], {}, {"name": 3}, {"name": "a/b"},
                                   {"name": ".."}, {"name": "x\udc80"}])
def test_describe_and_remove_refuse_unusable_records(entry):
    # describe: an "error" dict; remove: TypeError/ValueError naming it.
    assert "error" in shm.describe(entry)
    with pytest.raises((TypeError, ValueError)):
        shm.remove(entry)


def test_describe_never_follows_a_link_and_never_maps(named):
    name, victim = named(), named()
    q = mpx.Queue(name=victim, backend="shm")
    q.put(1)
    os.symlink(os.path.join(SHM, victim), os.path.join(SHM, name))
    assert shm.describe(_entry(name))["error"] == "a symbolic link, not a queue"
    info = shm.describe(_entry(victim))
    assert info["size"] == "1 msgs" and info["kind"] == "Queue"
    assert shm.describe(_entry(named())) is None            # gone: None
    q.unlink()
    q.close()


def _describe_read_only(name):
    q = mpx.Queue(name=name, backend="shm")
    q.put(1)
    q.close()
    os.chmod(os.path.join(SHM, name), 0o400)     # its owner may read, not write
    try:
        return shm.describe(_entry(name))
    finally:
        os.unlink(os.path.join(SHM, name))
        _names.forget("Queue", "shm", name)


def test_describe_opens_read_only(attacker, named):
    # As a user root's bypass does not hide: a read-write open of the 0400
    # file would fail with EACCES.
    info = attacker.run(_describe_read_only, named())
    assert info["size"] == "1 msgs", info


def test_remove_refuses_another_users_queue_with_PermissionError(attacker, named, tmp_path):
    name = named()
    attacker.run(_attacker_squats, name, 0o600, str(tmp_path / "marker"))
    with pytest.raises(PermissionError, match=f"owned by uid {attacker.uid}"):
        shm.remove(_entry(name))
    assert os.path.exists(os.path.join(SHM, name))


def test_remove_refuses_what_is_not_a_queue_with_ValueError(named):
    name, link = named(), named()
    path = os.path.join(SHM, name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"\0" * HDR)
    os.close(fd)
    with pytest.raises(ValueError, match="magic number"):
        shm.remove(_entry(name))
    os.symlink(path, os.path.join(SHM, link))
    with pytest.raises(ValueError, match="not a regular file"):
        shm.remove(_entry(link))
    assert os.path.exists(path) and os.path.islink(os.path.join(SHM, link))


def test_remove_removes_the_callers_own_queue_and_its_record(named):
    name = named()
    q = mpx.Queue(name=name, backend="shm")
    assert [e for e in _names.entries() if e.get("name") == name]
    shm.remove(_entry(name))
    assert not os.path.exists(os.path.join(SHM, name))
    assert not [e for e in _names.entries() if e.get("name") == name]
    shm.remove(_entry(name))                    # gone: nothing to do, no error
    q.close()
