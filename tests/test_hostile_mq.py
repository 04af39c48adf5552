"""Hostile state for the POSIX and SysV message-queue backends (issue 19).

Another local user must not reach root through a named queue, and no state
of a queue's objects may crash or hang the process that opens, lists or
removes it. Each case says, in its name or its table row, the error it must
give. The attacker's part runs as a throwaway unprivileged user (the
`attacker` fixture); everything it makes is removed by the test.

- Corrupt tags: every field of the tag header mutated in turn (opened,
  described, removed).
- Squatted names: another user's queue (mode 0600 and 0666, or handed to
  root with IPC_SET) holding a pickle whose ``__reduce__`` writes a marker
  file: root's open is a PermissionError and the marker never appears.
- Planted symbolic links at a POSIX tag path and at side-segment names.
- Forged records given to ``describe``/``remove``.
- ``unlink()`` in a process out of descriptors.
"""

import errno
import os
import re
import resource
import struct
import uuid

import posix_ipc
import pytest
import sysv_ipc

import mpx
from conftest import backends_for
from mpx import _names
from mpx.backends._common import mq as _mq_common
from mpx.backends.posix import mq as posix_mq
from mpx.backends.sysv import mq as sysv_mq

BACKENDS = [b for b in ("posix", "sysv") if b in backends_for("Queue")]
if not BACKENDS:
    pytest.skip("neither the posix nor the sysv backend is available", allow_module_level=True)

MODULES = {"posix": posix_mq, "sysv": sysv_mq}


# --- what the attacker plants ------------------------------------------------

def plant_marker(path):
    """What a malicious pickle runs when it is loaded: writes `path`."""
    with open(path, "w") as f:
        f.write("the attacker's code ran here\n")
    return "pwned"


class Evil:
    """Pickles (in the attacker's process) to a call of plant_marker."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (plant_marker, (self.path,))


def attacker_squat(backend, name, mode, item):
    """As the attacker: create queue `name` first, with `mode`, holding `item`."""
    q = mpx.Queue(name=name, backend=backend, mode=mode)
    q.put(item)
    q.close()
    return os.geteuid()


def attacker_squat_handed_to_root(name, item):
    """As the attacker: a SysV queue whose owner is then set to root (IPC_SET
    lets an owner hand an object to any uid; its creator stays the attacker)."""
    q = mpx.Queue(name=name, backend="sysv")
    q.put(item)
    res = q._res
    res.shm.uid = 0
    res.mq.uid = 0
    q.close()
    return res.shm.cuid


def attacker_unlink(backend, name):
    """As the attacker: remove its own queue (accepting it whatever its mode)."""
    q = mpx.Queue(name=name, backend=backend, mode=0o666, create=False)
    q.unlink()
    q.close()


def attacker_posix_kernel_queue(name, payload):
    """As the attacker: a bare POSIX queue under the name, holding `payload`."""
    mq = posix_ipc.MessageQueue("/" + name, posix_ipc.O_CREX, 0o666, 10, 8192)
    mq.send(payload)
    mq.close()


def attacker_sysv_kernel_queue(key, payload):
    """As the attacker: a bare SysV queue on the key, holding `payload`."""
    mq = sysv_ipc.MessageQueue(key, sysv_ipc.IPC_CREX, 0o666)
    mq.send(payload, False, 1)


def evil_payload(marker):
    """The bytes an mpx queue carries for Evil(marker): a raw pickle frame."""
    import pickle
    return pickle.dumps(Evil(str(marker)), protocol=5)


# --- helpers ------------------------------------------------------------------

def tagpath(name):
    return f"/dev/shm/mpx-mq.{name}"


sysv_row = sysv_mq._proc_row     # the row of /proc/sysvipc/`kind` for `key`, or None


def scrub(name):
    """Remove, as root and by hand, whatever any user left under `name` on
    either backend (the attacker's objects included) and its records."""
    try:
        posix_ipc.unlink_message_queue("/" + name)
    except posix_ipc.Error:
        pass
    for prefix in (f"mpx-mq.{name}", _mq_common.side_prefix("posix", name),
                   _mq_common.side_prefix("sysv", name)):
        for fname in os.listdir("/dev/shm"):
            if fname == prefix or (prefix.endswith(".") and fname.startswith(prefix)):
                try:
                    os.unlink(f"/dev/shm/{fname}")
                except OSError:
                    pass                    # (gone, or not this user's to remove)
    key = sysv_mq.key_for_name(name)
    for kind, remove in (("shm", sysv_ipc.remove_shared_memory),
                         ("msg", sysv_ipc.remove_message_queue),
                         ("sem", sysv_ipc.remove_semaphore)):
        row = sysv_row(kind, key)
        if row is not None:
            try:
                remove(int(row[{"shm": "shmid", "msg": "msqid", "sem": "semid"}[kind]]))
            except sysv_ipc.Error:
                pass
    _mq_common.forget_all("posix", name)
    _mq_common.forget_all("sysv", name)


@pytest.fixture
def name():
    n = f"mpxhostile-{uuid.uuid4().hex[:12]}"
    yield n
    scrub(n)


def gone(backend, name):
    """Nothing of queue `name` is left: kernel queue, tag, side segments, record."""
    if any(e.get("name") == name for e in _names.entries()):
        return False
    sides = _mq_common.side_prefix(backend, name)
    if any(f.startswith(sides) for f in os.listdir("/dev/shm")):
        return False
    if backend == "posix":
        if os.path.lexists(tagpath(name)):
            return False
        try:
            posix_ipc.MessageQueue("/" + name).close()
            return False
        except posix_ipc.ExistentialError:
            return True
    key = sysv_mq.key_for_name(name)
    return all(sysv_row(kind, key) is None for kind in ("shm", "msg", "sem"))


def names_the(name, e):
    assert repr(name) in str(e) or name in str(e), str(e)


# ---------------------------------------------------------------------------
# Corrupt tags: every header field, mutated


U32 = struct.Struct("<I")

# (id, offset, new value: an int for a 32-bit word, bytes for raw bytes, or a
#  function of the queue name), then what opening the queue must give:
#  "works" (the field is a counter or a note: any value is harmless), or
#  (exception, message pattern) per backend.
CORRUPTIONS = [
    ("magic", 0, b"NOTMPX!!", (ValueError, "magic number")),
    ("magic-zeroed", 0, bytes(8), (RuntimeError, "half-created")),
    ("version", 8, 99, (ValueError, "layout version 99")),
    ("state-init", 12, 0, (RuntimeError, "half-created")),
    ("state-dead", 12, 2, (RuntimeError, "being removed")),
    ("state-junk", 12, 7, (ValueError, "corrupt: state word 7")),
    ("data-seq", 16, 0xFFFFFFFF, "works"),
    ("data-waiters", 20, 0xFFFFFFFF, "works"),
    ("space-seq", 24, 12345, "works"),
    ("space-waiters", 28, 0xFFFFFFFF, "works"),
    ("unfinished", 32, 0xFFFFFFFF, "works"),
    ("kind-junk", 36, 99, (ValueError, "corrupt: kind word 99")),
    ("kind-other", 36, _mq_common.KIND_PRIORITY, (ValueError, "exists as a PriorityQueue")),
    ("maxsize", 40, 5, {"posix": (ValueError, "corrupt: maxsize 5"),
                        "sysv": (OSError, "damaged")}),
    ("maxsize-huge", 40, 0xFFFFFFFF, {"posix": (ValueError, "corrupt: maxsize 4294967295"),
                                      "sysv": (OSError, "damaged")}),
    ("msgsize-small", 44, 10, (ValueError, "corrupt: msgsize 10 is below")),
    ("msgsize-other", 44, 100, {"posix": (ValueError, "corrupt: msgsize 100"),
                                "sysv": "works"}),
    ("msgsize-huge", 44, 0xFFFFFFFF, (ValueError, "corrupt: msgsize 4294967295")),
    ("flags", 48, 0x80, (ValueError, "corrupt: flags word 0x80")),
    ("creator-pid", 52, 0xFFFFFFFF, "works"),
    ("name-len-zero", 56, 0, (ValueError, "corrupt: name length 0")),
    ("name-len-huge", 56, 0xFFFFFFFF, (ValueError, "corrupt: name length 4294967295")),
    ("name-len-short", 56, lambda n: len(n) - 1, (ValueError, "already uses")),
    ("reserved", 60, 0xFFFFFFFF, "works"),
    ("name-not-utf8", 64, b"\xff", (ValueError, "is not a queue name")),
    ("name-slash", 64, b"/", (ValueError, "is not a queue name")),
]


def _mutate(view, offset, value, name):
    if callable(value):
        value = value(name)
    raw = U32.pack(value) if isinstance(value, int) else value
    view[offset:offset + len(raw)] = raw


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("field, offset, value, expect", CORRUPTIONS,
                         ids=[c[0] for c in CORRUPTIONS])
def test_corrupt_tag_field(backend, field, offset, value, expect, name, monkeypatch):
    module = MODULES[backend]
    monkeypatch.setattr(module, "OPEN_WAIT", 0.2)
    q = mpx.Queue(name=name, backend=backend)
    q.put("kept")
    original = bytes(q._tag.view[:_mq_common.OFF_NAME + len(name)])
    _mutate(q._tag.view, offset, value, name)
    if isinstance(expect, dict):
        expect = expect[backend]
    entry = {"name": name}

    if expect == "works":
        other = mpx.Queue(name=name, backend=backend)
        assert other.get(timeout=5) == "kept"
        other.put(b"L" * 20_000)            # through a side segment
        assert q.get(timeout=5) == b"L" * 20_000
        other.close()
        assert module.describe(entry)["state"] == "ready"
        q.unlink()
        assert gone(backend, name)
        return

    exc, pattern = expect
    with pytest.raises(exc, match=pattern) as info:
        mpx.Queue(name=name, backend=backend)
    assert not isinstance(info.value, PermissionError)
    # `mpx ls` shows the queue (a damaged one with its error) and never dies.
    described = module.describe(entry)
    assert isinstance(described, dict) or (backend == "sysv" and field == "magic")
    magic_kept = bytes(q._tag.view[:8]) == _mq_common.MAGIC
    if magic_kept and exc is ValueError and field != "kind-other":
        assert described["state"] == "corrupt" and described["error"], described
    if field == "magic":
        # Not mpx's (by its own word): `mpx rm` refuses it and removes nothing.
        with pytest.raises(ValueError, match="magic number"):
            module.remove(entry)
        assert q.get(timeout=5) == "kept"
        q._tag.view[:len(original)] = original
        q.unlink()
    else:
        # mpx's, and the caller's own: `mpx rm` removes it, corrupt or not.
        module.remove(entry)
    assert gone(backend, name)
    q.close()


def test_posix_truncated_tag_is_half_created_and_rm_removes_it(name, monkeypatch):
    # RuntimeError ("half-created") on open; `mpx ls` says half-created; rm works.
    monkeypatch.setattr(posix_mq, "OPEN_WAIT", 0.2)
    q = mpx.Queue(name=name, backend="posix")
    q.close()
    del q
    import gc
    gc.collect()                            # nothing maps the tag any more
    os.truncate(tagpath(name), 100)
    with pytest.raises(RuntimeError, match="half-created"):
        mpx.Queue(name=name, backend="posix")
    assert posix_mq.describe({"name": name})["state"] == "half-created"
    posix_mq.remove({"name": name})
    assert gone("posix", name)


def test_sysv_too_small_segment_on_the_key_is_not_an_mpx_queue(name):
    # ValueError ("not an mpx queue tag"), and `mpx rm` leaves it alone.
    key = sysv_mq.key_for_name(name)
    foreign = sysv_ipc.SharedMemory(key, sysv_ipc.IPC_CREX, 0o600, 100)
    try:
        with pytest.raises(ValueError, match="not an mpx queue tag"):
            mpx.Queue(name=name, backend="sysv")
        with pytest.raises(ValueError, match="too small"):
            sysv_mq.remove({"name": name})
        assert sysv_row("shm", key) is not None
    finally:
        foreign.detach()
        foreign.remove()


# ---------------------------------------------------------------------------
# Squatted names: another user's queue under the name root asks for


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("mode", [0o600, 0o666], ids=["attacker-0600", "attacker-0666"])
@pytest.mark.parametrize("create", [True, False], ids=["create", "open-only"])
def test_squatted_name_is_a_permission_error_and_the_pickle_never_runs(
        backend, mode, create, name, attacker, tmp_path):
    marker = tmp_path / "pwned"
    attacker.run(attacker_squat, backend, name, mode, Evil(str(marker)))
    try:
        with pytest.raises(PermissionError) as info:
            q = mpx.Queue(name=name, backend=backend, create=create)
            q.get(timeout=1)                # (never reached)
        names_the(name, info.value)
        assert f"uid {attacker.uid}" in str(info.value)
        assert not marker.exists()
        # The same for the other families and for a pickled state.
        with pytest.raises(PermissionError):
            mpx.JoinableQueue(name=name, backend=backend)
        assert not marker.exists()
        # root's `mpx rm` removes only root's objects: refused, nothing touched.
        with pytest.raises(PermissionError, match="only the caller's own"):
            MODULES[backend].remove({"name": name})
        assert not gone(backend, name)
    finally:
        attacker.run(attacker_unlink, backend, name)
    assert gone(backend, name)
    assert not marker.exists()


@pytest.mark.parametrize("backend", BACKENDS)
def test_opting_in_with_mode_0666_accepts_another_users_queue(backend, name, attacker):
    # No error: mode=0o666 says "queues other users made are welcome".
    attacker.run(attacker_squat, backend, name, 0o666, "hello from another user")
    try:
        q = mpx.Queue(name=name, backend=backend, mode=0o666)
        assert q.get(timeout=5) == "hello from another user"
        q.put(b"B" * 50_000)                # through a side segment of root's...
        assert q.get(timeout=5) == b"B" * 50_000    # ...read back under the same rule
        q.close()
        # Opting in to group access only is not enough for others' 0666.
        with pytest.raises(PermissionError, match="0o666"):
            mpx.Queue(name=name, backend=backend, mode=0o660)
    finally:
        attacker.run(attacker_unlink, backend, name)
    assert gone(backend, name)


def test_sysv_queue_handed_to_root_is_refused_by_its_creator_uid(name, attacker, tmp_path):
    # PermissionError naming the creator's uid: IPC_SET made root the owner.
    marker = tmp_path / "pwned"
    cuid = attacker.run(attacker_squat_handed_to_root, name, Evil(str(marker)))
    assert cuid == attacker.uid
    row = sysv_row("shm", sysv_mq.key_for_name(name))
    assert (int(row["uid"]), int(row["cuid"])) == (0, attacker.uid)
    with pytest.raises(PermissionError, match=f"uid {attacker.uid}") as info:
        mpx.Queue(name=name, backend="sysv").get(timeout=1)
    names_the(name, info.value)
    assert not marker.exists()
    with pytest.raises(PermissionError):
        sysv_mq.remove({"name": name})
    attacker.run(scrub, name)               # its creator may still remove it (and its record)
    assert gone("sysv", name)


def test_posix_roots_tag_with_the_attackers_kernel_queue_is_refused(name, attacker, tmp_path):
    # root's queue lost its kernel queue (removed outside mpx); the attacker
    # made one under the name with a pickle in it: PermissionError naming
    # the kernel queue, the pickle never runs.
    marker = tmp_path / "pwned"
    q = mpx.Queue(name=name, backend="posix")
    q.close()
    posix_ipc.unlink_message_queue("/" + name)
    attacker.run(attacker_posix_kernel_queue, name, evil_payload(marker))
    with pytest.raises(PermissionError, match="kernel queue") as info:
        mpx.Queue(name=name, backend="posix").get(timeout=1)
    names_the(name, info.value)
    assert not marker.exists()
    with pytest.raises(PermissionError, match="kernel queue"):
        posix_mq.remove({"name": name})
    posix_ipc.unlink_message_queue("/" + name)     # (root removes the attacker's)
    posix_mq.remove({"name": name})
    assert gone("posix", name)


def test_sysv_roots_tag_with_the_attackers_message_queue_is_refused(name, attacker, tmp_path):
    # The same on SysV: PermissionError naming the message queue.
    marker = tmp_path / "pwned"
    q = mpx.Queue(name=name, backend="sysv")
    key = q._res.key
    q._mq.remove()
    q.close()
    attacker.run(attacker_sysv_kernel_queue, key, evil_payload(marker))
    with pytest.raises(PermissionError, match="message queue") as info:
        mpx.Queue(name=name, backend="sysv").get(timeout=1)
    names_the(name, info.value)
    assert not marker.exists()
    with pytest.raises(PermissionError, match="message queue"):
        sysv_mq.remove({"name": name})
    sysv_ipc.remove_message_queue(int(sysv_row("msg", key)["msqid"]))
    sysv_mq.remove({"name": name})
    assert gone("sysv", name)


def attacker_sysv_semaphore(key):
    """As the attacker: a semaphore on the key, taken (value 0) for good."""
    sysv_ipc.Semaphore(key, sysv_ipc.IPC_CREX, 0o666, 0)


def test_sysv_bounded_queue_with_the_attackers_semaphore_is_refused(name, attacker):
    # root's bounded queue lost its semaphore (removed outside mpx); the
    # attacker made one on the key, held for ever: PermissionError naming
    # the semaphore, rather than puts that never get the lock.
    q = mpx.Queue(2, name=name, backend="sysv")
    key = q._res.key
    q._sem.remove()
    q.close()
    attacker.run(attacker_sysv_semaphore, key)
    with pytest.raises(PermissionError, match="semaphore") as info:
        mpx.Queue(name=name, backend="sysv")
    names_the(name, info.value)
    with pytest.raises(PermissionError, match="semaphore"):
        sysv_mq.remove({"name": name})
    sysv_ipc.remove_semaphore(int(sysv_row("sem", key)["semid"]))
    sysv_mq.remove({"name": name})
    assert gone("sysv", name)


@pytest.mark.parametrize("backend", BACKENDS)
def test_attackers_bare_kernel_queue_under_the_name_is_not_an_mpx_queue(
        backend, name, attacker, tmp_path):
    # ValueError ("not an mpx queue"/"not mpx's"); root's half-made tag is
    # taken back, the pickle never runs.
    marker = tmp_path / "pwned"
    if backend == "posix":
        attacker.run(attacker_posix_kernel_queue, name, evil_payload(marker))
    else:
        attacker.run(attacker_sysv_kernel_queue, sysv_mq.key_for_name(name),
                     evil_payload(marker))
    with pytest.raises(ValueError, match="not an mpx queue|not mpx's") as info:
        mpx.Queue(name=name, backend=backend)
    assert not isinstance(info.value, PermissionError)
    assert not marker.exists()
    assert not os.path.lexists(tagpath(name))
    if backend == "sysv":
        assert sysv_row("shm", sysv_mq.key_for_name(name)) is None
    # Without a tag nothing shows the kernel queue is mpx's: rm leaves it.
    with pytest.raises(ValueError, match="no mpx tag"):
        MODULES[backend].remove({"name": name})
    scrub(name)
    assert gone(backend, name)


# ---------------------------------------------------------------------------
# Planted symbolic links


def test_symlink_at_the_posix_tag_path_is_refused_and_never_followed(name, attacker, tmp_path):
    # PermissionError ("symbolic link") from open, create=False, and `mpx rm`;
    # `mpx ls` shows it with its error; the file it points to is untouched.
    victim = tmp_path / "victim"
    victim.write_bytes(b"V" * 8192)
    os.chmod(victim, 0o644)
    before = (victim.read_bytes(), os.stat(victim).st_mode)
    attacker.run(os.symlink, str(victim), tagpath(name))
    try:
        for create in (True, False):
            with pytest.raises(PermissionError, match="symbolic link") as info:
                mpx.Queue(name=name, backend="posix", create=create)
            names_the(name, info.value)
        with pytest.raises(PermissionError, match="symbolic link"):
            posix_mq.remove({"name": name})
        described = posix_mq.describe({"name": name})
        assert described["state"] == "not an mpx tag" and "symbolic link" in described["error"]
        assert (victim.read_bytes(), os.stat(victim).st_mode) == before
        assert os.path.islink(tagpath(name))
    finally:
        os.unlink(tagpath(name))            # (root removes the attacker's link)
        _mq_common.forget_all("posix", name)
    assert gone("posix", name)


def attacker_plant_side_links(prefix, pid, target):
    for n in range(20):
        os.symlink(target, f"/dev/shm/{prefix}{pid}.{n}")


@pytest.mark.parametrize("backend", BACKENDS)
def test_symlinks_at_the_next_side_segment_names_are_skipped(backend, name, attacker,
                                                             tmp_path):
    # No error: the sender never follows them (O_EXCL|O_NOFOLLOW), the
    # message goes through another name, the target is untouched.
    victim = tmp_path / "victim"
    victim.write_bytes(b"V" * 100)
    q = mpx.Queue(name=name, backend=backend)
    prefix = _mq_common.side_prefix(backend, name)
    attacker.run(attacker_plant_side_links, prefix, os.getpid(), str(victim))
    try:
        q.put(b"S" * 100_000)
        assert q.get(timeout=5) == b"S" * 100_000
        assert victim.read_bytes() == b"V" * 100
    finally:
        q.unlink()                          # sweeps the links too (root may)
        q.close()
    assert gone(backend, name)


# ---------------------------------------------------------------------------
# Forged records given to describe/remove


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("entry, error", [
    ("not a dict", ValueError),
    ({}, ValueError),
    ({"name": 42}, ValueError),
    ({"name": "../../etc/passwd"}, ValueError),
    ({"name": "x\0y"}, ValueError),
    ({"name": "bad\udcff"}, ValueError),
], ids=["not-a-dict", "no-name", "int-name", "path", "nul", "surrogate"])
def test_forged_record_fields_are_value_errors(backend, entry, error):
    module = MODULES[backend]
    with pytest.raises(error):
        module.describe(entry)
    with pytest.raises(error):
        module.remove(entry)


def test_sysv_forged_key_pointing_at_another_users_queue(name, attacker):
    # remove: PermissionError, their queue untouched; describe: reads it
    # read-only and calls the record stale (it names another queue).
    theirs = name + "-other"
    attacker.run(attacker_squat, "sysv", theirs, 0o600, "theirs")
    key = sysv_mq.key_for_name(theirs)
    forged = {"name": name, "meta": {"key": key}}
    try:
        with pytest.raises(PermissionError, match="only the caller's own"):
            sysv_mq.remove(forged)
        assert sysv_mq.describe(forged) is None
        assert sysv_row("msg", key) is not None
        for bad_key in (True, -5, 2**40, "0x10", None):
            # An invalid key falls back to the name's own, where their queue is.
            with pytest.raises(PermissionError):
                sysv_mq.remove({"name": theirs, "meta": {"key": bad_key}})
    finally:
        attacker.run(attacker_unlink, "sysv", theirs)
    assert gone("sysv", theirs)


def test_posix_forged_record_naming_roots_non_mpx_queue(name):
    # ValueError ("no mpx tag"): root's own queue that mpx did not make stays.
    mq = posix_ipc.MessageQueue("/" + name, posix_ipc.O_CREX, 0o600, 2, 128)
    try:
        with pytest.raises(ValueError, match="no mpx tag"):
            posix_mq.remove({"name": name})
        posix_ipc.MessageQueue("/" + name).close()          # still there
    finally:
        mq.unlink()
        mq.close()


def test_sysv_forged_record_naming_roots_non_mpx_segment(name):
    # ValueError ("magic number"): root's own segment that mpx did not make stays.
    key = sysv_mq.key_for_name(name)
    shm = sysv_ipc.SharedMemory(key, sysv_ipc.IPC_CREX, 0o600, 8192)
    try:
        shm.write(b"someone else's data")
        with pytest.raises(ValueError, match="magic number"):
            sysv_mq.remove({"name": name})
        assert sysv_mq.describe({"name": name}) is None
        assert shm.read(19) == b"someone else's data"
    finally:
        shm.detach()
        shm.remove()


# ---------------------------------------------------------------------------
# Out of descriptors


@pytest.mark.parametrize("backend", BACKENDS)
def test_unlink_works_without_a_free_descriptor(backend, name):
    # No error: the queue, its tag, its side segment and its record all go.
    q = mpx.Queue(name=name, backend=backend)
    q.put(b"L" * 100_000)                   # a side segment in flight
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    highest = max(int(fd) for fd in os.listdir("/proc/self/fd"))
    fillers = []
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (highest + 16, hard))
        with pytest.raises(OSError) as info:
            while True:
                fillers.append(os.open(os.devnull, os.O_RDONLY))
        assert info.value.errno == errno.EMFILE
        q.unlink()
    finally:
        for fd in fillers:
            os.close(fd)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    q.close()
    assert gone(backend, name)


# (Names: a lone surrogate cannot be recorded, so it is refused before
# anything exists.)
@pytest.mark.parametrize("backend", BACKENDS)
def test_unrecordable_name_is_a_value_error_before_anything_is_made(backend):
    with pytest.raises(ValueError, match=re.escape("cannot be encoded as UTF-8")):
        mpx.Queue(name="lone\udcffsurrogate", backend=backend)
