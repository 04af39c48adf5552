"""Hostile state for mpx's record of named objects and ``python -m mpx ls/rm``
(issue 19, items 1, 2, 12 and the record's part of 13).

The record is per user (see the notes at the top of ``mpx._names``). Each
case says, in its name or a comment, what it must give. The attacker's part
runs as a throwaway unprivileged user (the `attacker` fixture); what it
makes is removed by the test.

- Junk in one's own record: not JSON, too deep, too large, a directory, a
  FIFO, a symlink, another user's file, forged field types, hostile names,
  modules outside mpx. Skipped and counted, never fatal.
- Writing: a symlink planted at the temporary or the final record name is
  never followed; temporary files of killed writers are swept; ``record()``
  never raises (it logs), ``check_recordable()`` refuses before creation.
- The directory: a symlink, a world-writable folder, one another user made
  first at the default location: refused with the directory and its owner
  named, and ``rm`` touches nothing.
- Another user's records never reach root's ``rm``.
"""

import argparse
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
import types
import uuid

import pytest

from conftest import wait_for
from mpx import _names, _objects

PYTHON = sys.executable
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
FAKE = "mpx._test_hostile_records_kind"
VICTIM_TEXT = "root's precious file\n"


@pytest.fixture
def base():
    """A scratch directory, root's, that other users may enter."""
    path = tempfile.mkdtemp(prefix="mpx-hostile-records-")
    os.chmod(path, 0o755)
    yield path
    import shutil
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def records(base, monkeypatch):
    """The caller's own (private, 0700) record directory for this test."""
    path = os.path.join(base, "names")
    os.mkdir(path, 0o700)
    monkeypatch.setenv("MPX_NAMES_DIR", path)
    return path


@pytest.fixture
def victim(base):
    """A file of root's that nothing here may change or remove."""
    path = os.path.join(base, "victim")
    with open(path, "w") as f:
        f.write(VICTIM_TEXT)
    os.chmod(path, 0o644)
    return path


def victim_intact(path):
    with open(path) as f:
        return f.read() == VICTIM_TEXT and not os.path.islink(path)


@pytest.fixture
def widgets(monkeypatch):
    """A made-up kind following the describe/remove protocol; every call to
    remove() is noted."""
    alive, removed = set(), []
    module = types.ModuleType(FAKE)

    def describe(entry):
        return {"size": "1 widget"} if entry["name"] in alive else None

    def remove(entry):
        removed.append(entry["name"])
        alive.discard(entry["name"])
        _names.forget(entry["kind"], entry["backend"], entry["name"])

    module.describe, module.remove = describe, remove
    monkeypatch.setitem(sys.modules, FAKE, module)

    def make(name, **meta):
        alive.add(name)
        _names.record("Widget", "fake", name, module=FAKE, **meta)
    return types.SimpleNamespace(make=make, alive=alive, removed=removed)


def run(command, *argv):
    parser = argparse.ArgumentParser()
    getattr(_objects, f"add_{command}_arguments")(parser)
    return getattr(_objects, f"run_{command}")(parser.parse_args(list(argv)))


def mpx_cli(*args, env=None):
    env = dict(os.environ if env is None else env)
    env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([PYTHON, "-m", "mpx", *args], capture_output=True, text=True,
                          env=env, timeout=60)


def plant(directory, fname, value):
    """A record file written by hand (as the caller): `value` is JSON'd
    unless it is already bytes."""
    data = value if isinstance(value, bytes) else json.dumps(value).encode()
    with open(os.path.join(directory, fname), "wb") as f:
        f.write(data)


def good(name, **fields):
    entry = {"kind": "Widget", "backend": "fake", "name": name, "module": FAKE,
             "created": time.time(), "pid": os.getpid(), "meta": {}}
    entry.update(fields)
    return entry


# --- junk in one's own record (item 12) ---------------------------------------

def test_junk_files_are_skipped_and_counted_never_fatal(records, widgets, victim, capsys):
    widgets.make("w1")
    plant(records, "garbage.json", b"\xff\xfe{ not json")              # -> "not JSON"
    plant(records, "deep.json", b"[" * 60000)                          # too deep -> "not JSON"
    plant(records, "list.json", [1, 2, 3])                             # -> "not an mpx record"
    plant(records, "nameless.json", good(5))                           # -> "not an mpx record"
    plant(records, "big.json", good("big", meta={"x": "y" * 70000}))   # -> over the limit
    os.mkdir(os.path.join(records, "dir.json"))                        # -> not a regular file
    os.mkfifo(os.path.join(records, "fifo.json"))                      # same, and no hang
    with open(victim + ".json", "w") as f:                             # a good record, elsewhere
        json.dump(good("via-link"), f)
    os.symlink(victim + ".json", os.path.join(records, "link.json"))   # -> a symbolic link
    plant(records, "theirs.json", good("theirs"))
    os.chown(os.path.join(records, "theirs.json"), 65534, 65534)       # -> owned by uid 65534
    plant(records, "README", b"hello")                                 # -> not a record file name
    plant(records, "odd-\udcff-name.json", good("w2"))               # byte 0xff in the name: read
    widgets.alive.add("w2")

    found = _names.scan()
    assert sorted(e["name"] for e in found.entries) == ["w1", "w2"]
    why = dict(found.skipped)
    assert why["garbage.json"] == "not JSON" and why["deep.json"] == "not JSON"
    assert why["list.json"] == "not an mpx record" and why["nameless.json"] == "not an mpx record"
    assert "over the 65536-byte limit" in why["big.json"]
    assert why["dir.json"] == why["fifo.json"] == "not a regular file"
    assert why["link.json"] == "a symbolic link"
    assert why["theirs.json"].startswith("owned by uid 65534")
    assert why["README"] == "not a record file name"
    assert len(found.skipped) == 10
    assert sorted(e["name"] for e in _names.entries()) == ["w1", "w2"]

    assert run("ls") == 0
    out, err = capsys.readouterr()
    assert " w1 " in out and " w2 " in out and "via-link" not in out and "theirs" not in out
    assert "skipped 10 file(s)" in err
    assert run("ls", "--json") == 0
    assert sorted(d["name"] for d in json.loads(capsys.readouterr().out)) == ["w1", "w2"]
    assert run("rm", "w1") == 0
    assert run("rm", "--all") == 0
    assert "removed Widget fake 'w2'" in capsys.readouterr().out
    assert sorted(widgets.removed) == ["w1", "w2"] and _names.entries() == []
    assert victim_intact(victim)
    try:
        import numpy  # noqa: F401
    except ImportError:                 # SharedArray needs numpy
        return
    plant(records, "garbage.json", b"\xff\xfe{ not json")
    from mpx import sharedarray
    assert sharedarray.list_arrays() == []


def test_junk_does_not_break_the_real_command_line(records):
    plant(records, "garbage.json", b"\x00\x01\x02")
    plant(records, "list.json", [])
    os.mkfifo(os.path.join(records, "fifo.json"))
    for args in (["ls"], ["ls", "--json"], ["rm", "--all"]):
        proc = mpx_cli(*args)
        assert proc.returncode == 0, (args, proc.stdout, proc.stderr)
        assert "skipped 3 file(s)" in proc.stderr and "Traceback" not in proc.stderr
    proc = mpx_cli("rm", "garbage")                   # -> exit 1, "no mpx object named"
    assert proc.returncode == 1 and "no mpx object named 'garbage'" in proc.stderr


def test_forged_fields_are_normalized_and_ls_never_raises(records, widgets, capsys):
    forged = {
        "module-int.json": good("module-int", module=5),               # -> module None
        "meta-list.json": good("meta-list", meta=[1, 2]),              # -> meta {}
        "meta-str.json": good("meta-str", meta="x"),
        "created-huge.json": good("created-huge", created=1e308),      # -> created None
        "created-bigint.json": good("created-bigint", created=10**300),
        "created-str.json": good("created-str", created="yesterday"),
        "pid-huge.json": good("pid-huge", pid=10**30),                 # -> pid None
        "pid-negative.json": good("pid-negative", pid=-1),
        "pid-bool.json": good("pid-bool", pid=True),
        "pid-float.json": good("pid-float", pid=1.5),
        "forged-owner.json": good("forged-owner", uid=12345, owner="someone"),
    }
    for fname, entry in forged.items():
        plant(records, fname, entry)
        widgets.alive.add(entry["name"])
    by_name = {e["name"]: e for e in _names.entries()}
    assert sorted(by_name) == sorted(e["name"] for e in forged.values())
    for entry in by_name.values():
        assert isinstance(entry["meta"], dict)
        assert entry["created"] is None or isinstance(entry["created"], float)
        assert entry["pid"] in (None, os.getpid())
        assert entry["uid"] == os.geteuid()             # the file's owner, not the record's word
    assert by_name["module-int"]["module"] is None
    assert by_name["created-huge"]["created"] is None
    assert by_name["created-bigint"]["created"] is None
    assert by_name["pid-huge"]["pid"] is None and by_name["pid-bool"]["pid"] is None
    assert by_name["forged-owner"]["owner"] != "someone"
    assert run("ls") == 0
    out = capsys.readouterr().out
    assert "record names no mpx module (None)" in out   # module-int: shown, not imported
    assert run("ls", "--json") == 0
    assert len(json.loads(capsys.readouterr().out)) == len(forged)
    assert run("rm", "--all") == 1                      # module-int cannot be removed: exit 1
    assert "cannot remove Widget fake 'module-int'" in capsys.readouterr().err
    os.unlink(os.path.join(records, "module-int.json"))


def test_unprintable_names_are_escaped_in_the_table(records, widgets, capsys):
    # A name may hold a newline, a terminal escape or a lone surrogate: the
    # table row stays one line, nothing raw reaches the terminal.
    names = ["evil\n\x1b[2Jfake row", "lone-\udcff-surrogate"]
    for name in names:
        widgets.make(name)
    assert sorted(e["name"] for e in _names.entries()) == sorted(names)
    assert run("ls") == 0
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\udcff" not in out
    assert "evil\\n\\x1b[2Jfake row" in out and "lone-\\udcff-surrogate" in out
    assert len(out.splitlines()) == 3
    assert run("ls", "--json") == 0
    assert sorted(d["name"] for d in json.loads(capsys.readouterr().out)) == sorted(names)
    assert run("rm", *names) == 0
    assert sorted(widgets.removed) == sorted(names) and _names.entries() == []


@pytest.mark.parametrize("module", ["os", "subprocess", "mpx..os", "mpx.", "mpx",
                                    "mpx.__main__", "mpx._bench.__main__", "xmpx.backends",
                                    "mpx.no_such_module", "mpx.backends.no_such_module",
                                    "mpx/../os", "mpx.backends.shm "])
def test_modules_outside_mpx_are_never_imported(records, module, capsys):
    # -> ls shows "record names no mpx module"; rm exits 1 ("cannot load")
    plant(records, "evil.json", good("evil", module=module))
    before = set(sys.modules)
    assert run("ls") == 0
    assert "record names no mpx module" in capsys.readouterr().out
    assert run("rm", "evil") == 1
    assert "cannot remove Widget fake 'evil': cannot load" in capsys.readouterr().err
    assert set(sys.modules) - before == set()
    os.unlink(os.path.join(records, "evil.json"))


def test_the_registrys_modules_are_accepted():
    from mpx.backends import BACKENDS
    for _, modules in BACKENDS.values():
        for modname in modules:
            try:
                __import__(modname)
            except Exception:
                continue                # not built here
            assert _objects._module({"module": modname}).__name__ == modname


def test_ls_of_a_missing_record_creates_nothing(base, monkeypatch, capsys):
    path = os.path.join(base, "not-yet")
    monkeypatch.setenv("MPX_NAMES_DIR", path)
    assert run("ls") == 0
    assert "no named mpx objects" in capsys.readouterr().out
    assert run("rm", "--all") == 0
    assert not os.path.exists(path)


# --- writing a record (items 2 and 13) ----------------------------------------

def test_symlink_at_the_temporary_record_name_is_not_followed(records, victim, monkeypatch,
                                                             caplog):
    # -> record() logs "not recording" (every temporary name it tries exists)
    #    and writes nothing through the link.
    token = _names._token
    monkeypatch.setattr(_names, "_token", lambda: "0" * 16)
    fname = _names._filename("fake", "Widget", "w")
    link = os.path.join(records, f"{fname}.{os.getpid()}.{'0' * 16}.tmp")
    os.symlink(victim, link)
    with caplog.at_level(logging.WARNING, logger="mpx"):
        _names.record("Widget", "fake", "w", module=FAKE)
    assert "not recording the Widget fake 'w'" in caplog.text
    assert victim_intact(victim) and os.path.islink(link)
    assert _names.entries() == []
    monkeypatch.setattr(_names, "_token", token)
    _names.record("Widget", "fake", "w", module=FAKE)       # a fresh name: recorded
    assert [e["name"] for e in _names.entries()] == ["w"] and victim_intact(victim)
    _names.forget("Widget", "fake", "w")
    os.unlink(link)


def test_symlink_at_the_record_name_is_replaced_not_followed(records, victim):
    # -> the record replaces the link; the file it pointed to is unchanged.
    fname = _names._filename("fake", "Widget", "w")
    os.symlink(victim, os.path.join(records, fname))
    _names.record("Widget", "fake", "w", module=FAKE)
    assert victim_intact(victim)
    assert not os.path.islink(os.path.join(records, fname))
    assert [e["name"] for e in _names.entries()] == ["w"]
    _names.forget("Widget", "fake", "w")
    assert os.listdir(records) == []


def test_record_files_are_private(records):
    _names.record("Widget", "fake", "w", module=FAKE)
    (fname,) = os.listdir(records)
    assert os.stat(os.path.join(records, fname)).st_mode & 0o777 == 0o600
    _names.forget("Widget", "fake", "w")


def test_temporary_records_of_killed_writers_are_swept(records):
    # A writer killed between writing its temporary file and renaming it
    # leaves "<record>.json.<pid>.<token>.tmp": the next read removes it.
    pid = os.fork()
    if pid == 0:
        try:
            os.rename = lambda *a, **k: time.sleep(60)      # stop right before the rename
            _names.record("Widget", "fake", "killed", module=FAKE)
        finally:
            os._exit(1)
    try:
        assert wait_for(lambda: any(f.endswith(".tmp") for f in os.listdir(records)))
    finally:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
    (tmp,) = os.listdir(records)
    assert tmp.startswith(_names._filename("fake", "Widget", "killed") + f".{pid}.")
    # The older "<record>.json.<pid>.tmp" form of a dead writer goes too;
    # a live writer's (ours) stays and is not reported as junk.
    old = _names._filename("fake", "Widget", "old") + f".{pid}.tmp"
    live = _names._filename("fake", "Widget", "live") + f".{os.getpid()}.{'a' * 16}.tmp"
    plant(records, old, b"{")
    plant(records, live, b"{")
    found = _names.scan()
    assert found.entries == [] and found.skipped == []
    assert os.listdir(records) == [live]
    os.unlink(os.path.join(records, live))


def test_record_never_raises_and_logs_why(records, caplog):
    with caplog.at_level(logging.WARNING, logger="mpx"):
        _names.record("Widget", "fake", None, module=FAKE)             # -> "must be a str"
        _names.record("Widget", "fake", "huge", module=FAKE, blob="x" * 70000)  # -> over the limit
    assert "the name must be a str, not NoneType" in caplog.text
    assert "over the 65536-byte limit" in caplog.text
    assert _names.entries() == []
    caplog.clear()
    # Meta JSON does not know is written as what it stands for, not refused.
    _names.record("Widget", "fake", "odd-meta", module=FAKE, thing=object(),
                  numbers={1, 2}, big=2**70)
    (entry,) = _names.entries()
    assert entry["meta"]["numbers"] == [1, 2] and entry["meta"]["big"] == 2**70
    assert entry["meta"]["thing"].startswith("<object object")
    _names.forget("Widget", "fake", "odd-meta")
    try:
        import numpy as np
    except ImportError:
        pass
    else:
        _names.record("Widget", "fake", "np-meta", module=FAKE, shape=np.array([2, 3]),
                      capacity=np.int64(8192))
        (entry,) = _names.entries()
        assert entry["meta"] == {"shape": [2, 3], "capacity": 8192}
        _names.forget("Widget", "fake", "np-meta")
    assert caplog.text == ""


def test_names_a_file_name_cannot_hold_are_recorded_and_forgotten(records):
    # A lone surrogate (a name made from undecodable bytes), '/', '..', and a
    # name longer than a file name may be: all recorded, found, forgotten.
    names = ["lone-\udcff", "a/b/../../c", "..", "x" * 1000, "\udcff" * 300]
    for name in names:
        _names.record("Widget", "fake", name, module=FAKE)
    assert sorted(e["name"] for e in _names.entries()) == sorted(names)
    assert all(len(f.encode("utf-8", "surrogateescape")) <= 255 for f in os.listdir(records))
    for name in names:
        _names.forget("Widget", "fake", name)
    assert os.listdir(records) == []


def test_record_in_a_directory_that_cannot_be_made_logs(base, monkeypatch, caplog):
    # -> a logged warning, no exception, nothing created.
    monkeypatch.setenv("MPX_NAMES_DIR", os.path.join(base, "missing", "names"))
    with caplog.at_level(logging.WARNING, logger="mpx"):
        _names.record("Widget", "fake", "w", module=FAKE)
    assert "not recording the Widget fake 'w'" in caplog.text
    assert not os.path.exists(os.path.join(base, "missing"))


@pytest.mark.parametrize("name, error, match", [
    ("lone-\udcff", ValueError, "lone surrogate"),
    ("a\0b", ValueError, "NUL character"),
    (b"bytes", TypeError, "must be a str, not bytes"),
    (None, TypeError, "must be a str, not NoneType"),
])
def test_check_recordable_refuses_before_anything_is_made(name, error, match):
    with pytest.raises(error, match=match):
        _names.check_recordable(name)


def test_check_recordable_accepts_ordinary_names():
    for name in ("q", "/q", "a/b", "ünïcødé", "x" * 1000):
        _names.check_recordable(name)


# --- the record directory (items 1 and 2) ------------------------------------

def refused(capsys, *needles):
    """ls, rm NAME and rm --all all stop with exit 1 and an error naming
    the directory (and `needles`)."""
    for argv in (["ls"], ["ls", "--json"], ["rm", "w"], ["rm", "--all"]):
        assert run(*argv) == 1, argv
        out, err = capsys.readouterr()
        assert "refusing the record directory " + _names.names_dir() in err, err
        for needle in needles:
            assert needle in err, (needle, err)
        assert out == ""
    assert _names.entries() == []
    return True


def test_a_world_writable_record_directory_is_refused(base, monkeypatch, caplog, capsys):
    # The old shared layout (one 1777 folder): -> "lets group or others write".
    path = os.path.join(base, "shared")
    os.mkdir(path)
    os.chmod(path, 0o1777)
    monkeypatch.setenv("MPX_NAMES_DIR", path)
    plant(path, "fake.Widget.w.json", good("w"))
    with caplog.at_level(logging.WARNING, logger="mpx"):
        _names.record("Widget", "fake", "mine", module=FAKE)
    assert "lets group or others write" in caplog.text
    assert os.listdir(path) == ["fake.Widget.w.json"]
    assert refused(capsys, "its mode 0o1777 lets group or others write")


def test_a_record_directory_that_is_a_symlink_is_refused(base, records, monkeypatch, caplog,
                                                         capsys):
    # Even to a directory of the caller's: -> "it is a symbolic link".
    link = os.path.join(base, "link")
    os.symlink(records, link)
    monkeypatch.setenv("MPX_NAMES_DIR", link)
    with caplog.at_level(logging.WARNING, logger="mpx"):
        _names.record("Widget", "fake", "w", module=FAKE)
    assert "it is a symbolic link" in caplog.text
    assert os.listdir(records) == []
    assert refused(capsys, "it is a symbolic link")


def test_where_records_live_by_default(base, monkeypatch):
    monkeypatch.delenv("MPX_NAMES_DIR")
    monkeypatch.setattr(tempfile, "tempdir", base)
    me = os.geteuid()
    fallback = os.path.join(base, f"mpx-names-{me}")
    runtime = os.path.join(base, "run")
    os.mkdir(runtime, 0o700)
    monkeypatch.setenv("XDG_RUNTIME_DIR", runtime)
    assert _names.names_dir() == os.path.join(runtime, "mpx-names")
    os.chmod(runtime, 0o755)                    # others may look in: not private
    assert _names.names_dir() == fallback
    os.chmod(runtime, 0o700)
    os.chown(runtime, 65534, 65534)             # sudo keeps the invoking user's folder
    assert _names.names_dir() == fallback
    monkeypatch.setenv("XDG_RUNTIME_DIR", "relative/run")
    assert _names.names_dir() == fallback
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert _names.names_dir() == fallback
    _names.record("Widget", "fake", "w", module=FAKE)
    st = os.stat(fallback)
    assert st.st_uid == me and st.st_mode & 0o777 == 0o700
    assert [e["name"] for e in _names.entries()] == ["w"]
    _names.forget("Widget", "fake", "w")


# --- another user (items 1 and 2, across users) --------------------------------

def attacker_writes_into(path):
    """As the attacker: record into root's record directory, then try
    planting a file there by hand. Returns what the hand-made try raised."""
    os.environ["MPX_NAMES_DIR"] = path
    _names.record("Widget", "fake", "planted", module=FAKE)    # must not raise
    try:
        os.open(os.path.join(path, "fake.Widget.w.json"), os.O_WRONLY | os.O_CREAT, 0o644)
    except OSError as e:
        return type(e).__name__
    return "created"


def attacker_lists(path):
    """As the attacker: ls and rm --all on root's record directory."""
    import contextlib
    import io
    os.environ["MPX_NAMES_DIR"] = path
    results = []
    for argv in (["ls"], ["rm", "--all"]):
        err = io.StringIO()
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
            results.append((run(*argv), err.getvalue()))
    return results


def test_the_attacker_cannot_write_roots_record(attacker, records):
    # -> the kernel says PermissionError; record() swallows it.
    assert attacker.run(attacker_writes_into, records) == "PermissionError"
    assert os.listdir(records) == []
    # -> the attacker's ls/rm pointed at it: exit 1, "may not open it", with
    #    the directory's owner.
    for rc, err in attacker.run(attacker_lists, records):
        assert rc == 1 and f"refusing the record directory {records}" in err, err
        assert "may not open it: it is owned by uid 0 (root), mode 0o700" in err, err


def attacker_plants_in_shared(path, record_name, victim, root_pid):
    """As the attacker, in a folder every user may write (the old layout):
    a record of root's name whose path is `victim`, and symlinks to
    `victim` at the temporary and final names root's record would use."""
    fname = _names._filename("file", "SharedArray", record_name)
    plant(path, _names._filename("file", "SharedArray", record_name + "-x"),
          {"kind": "SharedArray", "backend": "file", "name": record_name,
           "module": "mpx.backends.file", "meta": {"path": victim}})
    for pid in range(root_pid - 3, root_pid + 40):
        os.symlink(victim, os.path.join(path, f"{fname}.{pid}.tmp"))
    os.symlink(victim, os.path.join(path, fname))
    return sorted(os.listdir(path))


def test_records_planted_in_a_shared_folder_are_never_acted_on(attacker, base, victim,
                                                                monkeypatch, caplog, capsys):
    # The attack of items 1 and 2 on the old layout (/tmp/mpx-names, 1777):
    # -> root's record() writes nothing (it used to write through the
    #    planted symlink), and ls/rm exit 1 "lets group or others write"
    #    (rm used to unlink the record's path).
    shared = os.path.join(base, "mpx-names")
    os.mkdir(shared)
    os.chmod(shared, 0o1777)
    monkeypatch.setenv("MPX_NAMES_DIR", shared)
    name = "data-" + uuid.uuid4().hex[:8]
    planted = attacker.run(attacker_plants_in_shared, shared, name, victim, os.getpid())
    with caplog.at_level(logging.WARNING, logger="mpx"):
        _names.record("SharedArray", "file", name, module="mpx.backends.file",
                      path=os.path.join(base, "mine"))
    assert "lets group or others write" in caplog.text
    assert victim_intact(victim) and sorted(os.listdir(shared)) == planted
    assert refused(capsys, "lets group or others write")
    proc = mpx_cli("rm", name)
    assert proc.returncode == 1 and "refusing the record directory" in proc.stderr
    assert victim_intact(victim) and sorted(os.listdir(shared)) == planted


def attacker_takes_the_default_dir(path, how, target, record_name, victim):
    """As the attacker: be first at root's default record path. `how`: a
    world-writable folder, a private one, or a symlink to one; in it, a
    record of root's name pointing at `victim`, and symlinks to `victim` at
    every temporary name root might use."""
    real = path if how != "symlink" else target
    os.mkdir(real, 0o777)
    os.chmod(real, 0o700 if how == "private" else 0o777)
    if how == "symlink":
        os.symlink(real, path)
    fname = _names._filename("file", "SharedArray", record_name)
    plant(real, fname, {"kind": "SharedArray", "backend": "file", "name": record_name,
                        "module": "mpx.backends.file", "created": 0, "pid": 1,
                        "meta": {"path": victim}})
    for pid in range(1, 70000, 1):      # the old "<record>.<pid>.tmp" names
        if pid % 997 == 0 or pid < 400:
            os.symlink(victim, os.path.join(real, f"{fname}.{pid}.tmp"))
    return sorted(os.listdir(real))


@pytest.mark.parametrize("how", ["world-writable", "private", "symlink"])
def test_a_default_dir_another_user_made_first_is_refused(attacker, base, victim, how,
                                                          monkeypatch, caplog, capsys):
    # -> record() skips with a warning; ls/rm exit 1 naming the directory
    #    and the attacker; the victim is untouched and so is the attacker's
    #    folder.
    sticky = os.path.join(base, "tmp")           # stands for /tmp
    os.mkdir(sticky)
    os.chmod(sticky, 0o1777)
    monkeypatch.delenv("MPX_NAMES_DIR")
    monkeypatch.delenv("XDG_RUNTIME_DIR", raising=False)
    monkeypatch.setattr(tempfile, "tempdir", sticky)
    path = _names.names_dir()
    assert path == os.path.join(sticky, f"mpx-names-{os.geteuid()}")
    name = "data-" + uuid.uuid4().hex[:8]
    planted = attacker.run(attacker_takes_the_default_dir, path, how,
                           os.path.join(sticky, "elsewhere"), name, victim)
    real = path if how != "symlink" else os.path.join(sticky, "elsewhere")

    with caplog.at_level(logging.WARNING, logger="mpx"):
        _names.record("SharedArray", "file", name, module="mpx.backends.file",
                      path=os.path.join(base, "mine"))
    assert "refusing the record directory" in caplog.text
    assert victim_intact(victim) and sorted(os.listdir(real)) == planted
    needle = "it is a symbolic link" if how == "symlink" else f"({attacker.name})"
    if how == "world-writable":
        needle = f"owned by uid {attacker.uid} ({attacker.name})"
    assert refused(capsys, needle)
    # The real command line, finding the same folder through TMPDIR.
    env = {k: v for k, v in os.environ.items() if k not in ("MPX_NAMES_DIR", "XDG_RUNTIME_DIR")}
    env["TMPDIR"] = sticky
    for argv in (["rm", name], ["rm", "--all"], ["ls"]):
        proc = mpx_cli(*argv, env=env)
        assert proc.returncode == 1 and f"refusing the record directory {path}" in proc.stderr, \
            (argv, proc.stdout, proc.stderr)
    assert victim_intact(victim) and sorted(os.listdir(real)) == planted


def attacker_forges_in_own_record(name, victim):
    """As the attacker: a record in its own directory with root's object's
    name, the file backend, and the victim as the path."""
    _names.record("Widget", "fake", name, module="mpx.backends.file", path=victim)
    return [e["name"] for e in _names.entries()]


def test_another_users_records_never_reach_roots_rm(attacker, records, widgets, victim,
                                                    monkeypatch, capsys):
    # -> root's rm NAME / rm --all act on root's own record only: the file
    #    backend's remove() is never called with the attacker's entry.
    import mpx.backends.file as file_backend
    called = []
    monkeypatch.setattr(file_backend, "remove", lambda entry: called.append(entry))
    name = "shared-" + uuid.uuid4().hex[:8]
    assert attacker.run(attacker_forges_in_own_record, name, victim) == [name]
    widgets.make(name)
    assert run("ls", "--json") == 0
    assert [(d["name"], d["uid"]) for d in json.loads(capsys.readouterr().out)] == [
        (name, os.geteuid())]
    assert run("rm", name) == 0 and widgets.removed == [name]
    widgets.make(name + "-2")
    assert run("rm", "--all") == 0 and widgets.removed == [name, name + "-2"]
    assert called == [] and victim_intact(victim)
    for fname in os.listdir(attacker.names_dir):     # the attacker's leftovers
        os.unlink(os.path.join(attacker.names_dir, fname))
