"""``python -m mpx ls`` and ``python -m mpx rm``.

They read mpx's record of named objects and ask each object's module
(``describe(entry)`` / ``remove(entry)``), so they work for any kind that
follows that protocol: real queues of the posix and sysv backends here, and a
made-up kind in-process.
"""

import argparse
import json
import os
import subprocess
import sys
import tempfile
import types
import uuid

import posix_ipc
import pytest
import sysv_ipc

import mpx
from conftest import backends_for
from mpx import _names, _objects
from mpx.backends.sysv import mq as sysv_mq

PYTHON = sys.executable
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BACKENDS = [b for b in ("posix", "sysv") if b in backends_for("Queue")]


NOBODY = 65534


@pytest.fixture
def names_dir(monkeypatch):
    """This test's record directory (private to root, as every user's is),
    emptied afterwards; beside it, one for the user nobody (nobody_names)."""
    base = tempfile.mkdtemp(prefix="mpx-cli-test-")
    path = os.path.join(base, "names")
    os.chmod(base, 0o755)               # nobody reaches its own directory in it
    os.mkdir(path, 0o700)
    os.mkdir(os.path.join(base, "nobody-names"), 0o700)
    os.chown(os.path.join(base, "nobody-names"), NOBODY, NOBODY)
    monkeypatch.setenv("MPX_NAMES_DIR", path)
    yield path
    for entry in _names.entries():              # remove whatever a test left
        try:
            _objects._module(entry).remove(entry)
        except Exception:
            pass
    import shutil
    shutil.rmtree(base, ignore_errors=True)


def nobody_names(names_dir):
    return os.path.join(os.path.dirname(names_dir), "nobody-names")


@pytest.fixture
def qname():
    return f"mpxcli-{uuid.uuid4().hex[:10]}"


def mpx_cli(*args, check=None):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    proc = subprocess.run([PYTHON, "-m", "mpx", *args], capture_output=True, text=True,
                          env=env, timeout=60)
    if check is not None:
        assert proc.returncode == check, (proc.returncode, proc.stdout, proc.stderr)
    return proc


def posix_exists(name):
    try:
        posix_ipc.MessageQueue("/" + name).close()
        return True
    except posix_ipc.ExistentialError:
        return False


def sysv_exists(name):
    try:
        sysv_ipc.MessageQueue(sysv_mq.key_for_name(name))
        return True
    except sysv_ipc.ExistentialError:
        return False


def in_forked_child_as_nobody(fn, names_dir=None):
    """fn() run as nobody, whose record is `names_dir`; its exit code."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            if names_dir is not None:
                os.environ["MPX_NAMES_DIR"] = names_dir
            fn()
            code = 0
        finally:
            os._exit(code)
    return os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])


def main_quietly(argv):
    """(exit code, stdout, stderr) of ``python -m mpx ARGV`` run in-process."""
    import contextlib
    import io
    from mpx.__main__ import main
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        rc = main(argv)
    return rc, out.getvalue(), err.getvalue()


# ---------------------------------------------------------------------------

@pytest.mark.skipif(not BACKENDS, reason="no message-queue backend available")
def test_ls_lists_queues_of_every_backend_with_size_and_owner(names_dir, qname):
    specs = [("Queue", b, f"{qname}-{b}") for b in BACKENDS]
    specs += [("PriorityQueue", b, f"{qname}-{b}-prio") for b in BACKENDS]
    # Named objects outlive their creator: made in a process that has exited.
    code = "import mpx\n"
    for family, backend, name in specs:
        code += f"q = mpx.{family}(name={name!r}, backend={backend!r})\n"
        code += ("q.put('x', 5)\n" if family == "PriorityQueue" else "q.put(1)\nq.put(b'L' * 50000)\n")
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""))
    subprocess.run([PYTHON, "-c", code], check=True, env=env, timeout=60)

    out = mpx_cli("ls", check=0).stdout
    lines = out.splitlines()
    assert lines[0].split() == ["KIND", "BACKEND", "NAME", "SIZE", "OWNER", "DETAILS"]
    owner = __import__("pwd").getpwuid(os.geteuid()).pw_name
    for family, backend, name in specs:
        row = next(line for line in lines if f" {name} " in line)
        assert row.split()[:3] == [family, backend, name]
        assert owner in row.split()
    if "posix" in BACKENDS:
        row = next(line for line in lines if f" {qname}-posix " in line)
        assert "2/10 msgs" in row
    if "sysv" in BACKENDS:
        row = next(line for line in lines if f" {qname}-sysv " in line)
        assert "2 msgs" in row and "key=0x" in row

    data = json.loads(mpx_cli("ls", "--json", check=0).stdout)
    mine = {(d["kind"], d["backend"], d["name"]): d for d in data}
    for family, backend, name in specs:
        d = mine[(family, backend, name)]
        assert d["owner"] == owner and d["uid"] == os.geteuid()
        assert isinstance(d["size"], str) and d["messages"] >= 1
    # Filters.
    only = json.loads(mpx_cli("ls", "--json", "--kind", "PriorityQueue", check=0).stdout)
    assert {d["kind"] for d in only} == {"PriorityQueue"}
    only = json.loads(mpx_cli("ls", "--json", "--backend", BACKENDS[0], check=0).stdout)
    assert {d["backend"] for d in only} == {BACKENDS[0]}

    # rm NAME, with or without the leading '/'.
    first = specs[0]
    proc = mpx_cli("rm", "/" + first[2], check=0)
    assert f"removed {first[0]} {first[1]} {first[2]!r}" in proc.stdout
    assert not (posix_exists if first[1] == "posix" else sysv_exists)(first[2])
    assert f" {first[2]} " not in mpx_cli("ls", check=0).stdout
    # rm --all removes the rest (and their side segments).
    mpx_cli("rm", "--all", check=0)
    assert json.loads(mpx_cli("ls", "--json", check=0).stdout) == []
    for family, backend, name in specs:
        assert not (posix_exists if backend == "posix" else sysv_exists)(name)
    assert not [f for f in os.listdir("/dev/shm") if f.startswith("mpx-mqside.")]


def test_ls_with_nothing_recorded(names_dir):
    out = mpx_cli("ls", check=0).stdout
    assert "no named mpx objects" in out
    assert json.loads(mpx_cli("ls", "--json", check=0).stdout) == []


def test_rm_usage_errors(names_dir):
    proc = mpx_cli("rm", check=2)
    assert "--all" in proc.stderr
    mpx_cli("rm", "x", "--all", check=2)
    proc = mpx_cli("rm", "no-such-object-anywhere", check=1)
    assert "no mpx object named 'no-such-object-anywhere'" in proc.stderr


@pytest.mark.skipif("posix" not in BACKENDS, reason="posix backend unavailable")
def test_stale_records_are_dropped(names_dir, qname):
    _names.record("Queue", "posix", qname, module="mpx.backends.posix.mq", maxsize=0)
    assert [e["name"] for e in _names.entries()] == [qname]
    assert qname not in mpx_cli("ls", check=0).stdout
    assert _names.entries() == []


@pytest.mark.skipif(not BACKENDS, reason="no message-queue backend available")
def test_rm_all_leaves_other_users_objects_alone(names_dir, qname):
    # Each user has a record of their own: root's ls/rm see only root's.
    backend = BACKENDS[0]
    theirs, mine = qname + "-theirs", qname + "-mine"

    def make_theirs():
        mpx.Queue(name=theirs, backend=backend).put("theirs")
    assert in_forked_child_as_nobody(make_theirs, nobody_names(names_dir)) == 0
    q = mpx.Queue(name=mine, backend=backend)
    q.put("mine")
    assert [d["name"] for d in json.loads(mpx_cli("ls", "--json", check=0).stdout)] == [mine]
    mpx_cli("rm", "--all", check=0)
    assert json.loads(mpx_cli("ls", "--json", check=0).stdout) == []
    exists = posix_exists if backend == "posix" else sysv_exists
    assert exists(theirs) and not exists(mine)
    # root's `rm NAME` does not reach nobody's record either...
    proc = mpx_cli("rm", theirs, check=1)
    assert f"no mpx object named {theirs!r} in your record" in proc.stderr
    assert exists(theirs)

    # ...nobody removes it from its own.
    def rm_theirs():
        rc, out, err = main_quietly(["ls", "--json"])
        assert rc == 0 and [d["name"] for d in json.loads(out)] == [theirs], (rc, out, err)
        rc, out, err = main_quietly(["rm", theirs])
        assert rc == 0 and f"removed Queue {backend} {theirs!r}" in out, (rc, out, err)
    assert in_forked_child_as_nobody(rm_theirs, nobody_names(names_dir)) == 0
    assert not exists(theirs)
    assert os.listdir(nobody_names(names_dir)) == []
    q.close()


@pytest.mark.skipif(not BACKENDS, reason="no message-queue backend available")
def test_rm_of_another_users_object_without_permission_says_so(names_dir, qname):
    backend = BACKENDS[0]
    module = {"posix": "mpx.backends.posix.mq", "sysv": "mpx.backends.sysv.mq"}[backend]
    q = mpx.Queue(name=qname, backend=backend)

    def try_rm():
        # root's queue is not in nobody's record...
        rc, out, err = main_quietly(["rm", qname])
        assert rc == 1 and f"no mpx object named {qname!r}" in err, (rc, out, err)
        # ...and a record nobody writes for it is only nobody's word: the
        # backend checks the object and refuses.
        _names.record("Queue", backend, qname, module=module)
        rc, out, err = main_quietly(["rm", qname])
        assert rc == 1, (rc, out, err)
        assert "ermission denied" in err and qname in err, err
        _names.forget("Queue", backend, qname)
    assert in_forked_child_as_nobody(try_rm, nobody_names(names_dir)) == 0
    q.put("still here")
    assert q.get(timeout=5) == "still here"
    q.unlink()


@pytest.mark.skipif(not BACKENDS, reason="no message-queue backend available")
def test_anonymous_queues_are_listed_as_such(names_dir):
    q = mpx.Queue(backend=BACKENDS[0])
    data = json.loads(mpx_cli("ls", "--json", check=0).stdout)
    assert [d["name"] for d in data] == [q.name] and data[0]["anonymous"] is True
    assert "anonymous" in mpx_cli("ls", check=0).stdout
    del q
    import gc
    gc.collect()
    assert json.loads(mpx_cli("ls", "--json", check=0).stdout) == []


def test_hostile_record_names_are_refused(names_dir):
    _names.record("Queue", "posix", "../../../../tmp/x", module="mpx.backends.posix.mq")
    _names.record("Queue", "evil", "importme", module="os")
    out = mpx_cli("ls", check=0).stdout
    assert "'/' after its first character" in out
    assert "record names no mpx module" in out
    proc = mpx_cli("rm", "../../../../tmp/x", "importme", check=1)
    assert "cannot remove" in proc.stderr


def test_records_naming_the_modules_before_they_moved(names_dir, qname):
    """Records written by an mpx whose backends were flat modules
    (``mpx.backends.posix_mq``, ...) still list and remove their objects:
    the registry maps each old path to the module that does the work now."""
    import numpy as np

    from mpx.backends import RENAMED_MODULES
    old_name = {new: old for old, new in RENAMED_MODULES.items()}
    made = [mpx.Queue(name=qname + "-shm", backend="shm")]
    made += [mpx.Queue(name=f"{qname}-{b}", backend=b) for b in BACKENDS]
    made += [mpx.SharedArray((4,), np.int64, name=f"{qname}-a{b}", backend=b)
             for b in ("posix", "sysv") if b in backends_for("SharedArray")]
    # Rewrite each record as the older mpx wrote it.
    rewritten = set()
    for fname in os.listdir(names_dir):
        path = os.path.join(names_dir, fname)
        with open(path) as f:
            entry = json.load(f)
        if entry["module"] in old_name:
            entry["module"] = old_name[entry["module"]]
            rewritten.add(entry["module"])
            with open(path, "w") as f:
                json.dump(entry, f)
    expected = {"mpx.backends.shm"} | {f"mpx.backends.{b}_mq" for b in BACKENDS} | {
        f"mpx.backends.{b}_shm" for b in ("posix", "sysv") if b in backends_for("SharedArray")}
    assert rewritten == expected
    listed = json.loads(mpx_cli("ls", "--json", check=0).stdout)
    assert sorted(d["name"] for d in listed) == sorted(o.name for o in made)
    assert not [d for d in listed if d.get("error")], listed
    mpx_cli("rm", *[o.name for o in made], check=0)
    assert json.loads(mpx_cli("ls", "--json", check=0).stdout) == []
    assert _names.entries() == []
    for o in made:
        if hasattr(o, "close"):
            o.close()


# --- the protocol, with a made-up kind --------------------------------------

FAKE = "mpx._test_fake_kind"


@pytest.fixture
def fake_kind(monkeypatch, names_dir):
    objects = {"w1": 3, "w2": 7}
    removed = []
    module = types.ModuleType(FAKE)

    def describe(entry):
        n = objects.get(entry["name"])
        return None if n is None else {"size": f"{n} widgets", "colour": "blue"}

    def remove(entry):
        removed.append(entry["name"])
        objects.pop(entry["name"], None)
        _names.forget(entry["kind"], entry["backend"], entry["name"])

    module.describe, module.remove = describe, remove
    monkeypatch.setitem(sys.modules, FAKE, module)
    for n in ("w1", "w2", "gone"):
        _names.record("Widget", "fake", n, module=FAKE)
    return objects, removed


def run(command, argv):
    parser = argparse.ArgumentParser()
    getattr(_objects, f"add_{command}_arguments")(parser)
    return getattr(_objects, f"run_{command}")(parser.parse_args(argv))


def test_ls_and_rm_work_for_any_kind_following_the_protocol(fake_kind, capsys):
    objects, removed = fake_kind
    assert run("ls", []) == 0
    out = capsys.readouterr().out
    assert "Widget" in out and "3 widgets" in out and "colour=blue" in out
    assert "gone" not in out                            # describe() said it is gone...
    assert "gone" not in [e["name"] for e in _names.entries()]     # ...so dropped
    assert run("ls", ["--json", "--kind", "Widget"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert sorted((d["name"], d["size"]) for d in data) == [("w1", "3 widgets"),
                                                             ("w2", "7 widgets")]
    assert run("rm", ["w1"]) == 0
    assert removed == ["w1"] and "removed Widget fake 'w1'" in capsys.readouterr().out
    assert run("rm", ["--all", "--json"]) == 0
    assert json.loads(capsys.readouterr().out) == [
        {"kind": "Widget", "backend": "fake", "name": "w2"}]
    assert removed == ["w1", "w2"] and _names.entries() == []


def test_a_kind_whose_describe_fails_is_shown_not_hidden(fake_kind, capsys, monkeypatch):
    def broken(entry):
        raise RuntimeError("cannot look")
    monkeypatch.setattr(sys.modules[FAKE], "describe", broken)
    assert run("ls", []) == 0
    out = capsys.readouterr().out
    assert "RuntimeError: cannot look" in out and out.count("Widget") == 3
