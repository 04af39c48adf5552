"""Contracts every named-queue backend keeps (DESIGN.md), written once and
run over every backend that offers named queues here (shm, posix, sysv):

- a queue created by name is opened by the same call in an unrelated
  program, and both sides see one queue; ``unlink()`` removes the name;
- a foreign object under the name (not an mpx queue) is refused with a
  clear ValueError, never a crash, and is left as it was;
- ``put_many`` is all or nothing when an object cannot be serialized;
- a producer killed with SIGKILL at a random moment never blocks the
  others, and every message it put is delivered exactly once, in order:
  only its own in-flight message may be lost.

Each backend plants its foreign object its own way (``FOREIGN``); the rest
is the public API. Backend-specific details (file modes, side segments,
overflow extents) are tested in that backend's own file.
"""

import os
import pickle
import queue
import random
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid

import pytest

import mpx
from conftest import backends_for
from mpx import backends as registry

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMED = [b for b in ("shm", "posix", "sysv") if b in backends_for("Queue")]
FORK = mpx.get_context("fork")


def _module(backend):
    return registry.resolve("Queue", backend)[1]


def _entry(backend, name):
    return {"kind": "Queue", "backend": backend, "name": name, "meta": {}}


def exists(backend, name):
    """Is there an mpx queue called `name` (the CLI's own question)?"""
    return _module(backend).describe(_entry(backend, name)) is not None


@pytest.fixture
def name(request):
    """A fresh queue name; whatever a test leaves under it is removed (as
    ``python -m mpx rm`` would)."""
    backend = request.node.callspec.params["backend"]
    made = []

    def new(tag="q"):
        made.append(f"mpxcontract-{tag}-{uuid.uuid4().hex[:10]}")
        return made[-1]
    yield new
    for each in made:
        try:
            _module(backend).remove(_entry(backend, each))
        except Exception:
            pass


# --- named objects between unrelated processes --------------------------------------

@pytest.mark.parametrize("backend", NAMED)
def test_named_queue_between_unrelated_processes(backend, name):
    jobs, results = name("jobs"), name("results")
    q = mpx.Queue(5, name=jobs, backend=backend)
    assert q.name == jobs and exists(backend, jobs)
    # The other side is a separate program: it opens both queues by name
    # (creating `results` if it gets there first).
    code = textwrap.dedent(f"""
        import mpx
        jobs = mpx.Queue(name={jobs!r}, backend={backend!r})
        results = mpx.Queue(name={results!r}, backend={backend!r})
        item = jobs.get(timeout=30)
        results.put(("seen", item, jobs.maxsize))
        results.put(b"L" * 200_000)          # larger than any kernel message
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], cwd=ROOT)
    try:
        q.put("hello")
        r = mpx.Queue(name=results, backend=backend)
        assert r.get(timeout=30) == ("seen", "hello", 5)
        assert r.get(timeout=30) == b"L" * 200_000
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    for each in (q, r):
        each.unlink()
        each.close()
    assert not exists(backend, jobs) and not exists(backend, results)


# --- a foreign object under the name ---------------------------------------------------

def _plant_shm(name):
    path = os.path.join("/dev/shm", name)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, b"not a queue" * 1000)
    os.close(fd)

    def untouched():
        with open(path, "rb") as f:
            return f.read() == b"not a queue" * 1000

    def remove():
        os.unlink(path)
    return untouched, remove


def _plant_posix(name):
    import posix_ipc
    mq = posix_ipc.MessageQueue("/" + name, posix_ipc.O_CREX, 0o600, 2, 128)
    mq.send(b"theirs")

    def untouched():
        return mq.current_messages == 1

    def remove():
        mq.unlink()
        mq.close()
    return untouched, remove


def _plant_sysv(name):
    import sysv_ipc
    from mpx.backends.sysv import mq as sysv_mq
    seg = sysv_ipc.SharedMemory(sysv_mq.key_for_name(name), sysv_ipc.IPC_CREX, 0o600, 4096)
    seg.write(b"not mpx at all")

    def untouched():
        return seg.read(14) == b"not mpx at all"

    def remove():
        seg.detach()
        seg.remove()
    return untouched, remove


FOREIGN = {"shm": _plant_shm, "posix": _plant_posix, "sysv": _plant_sysv}


@pytest.mark.parametrize("backend", NAMED)
def test_foreign_object_under_the_name_is_refused(backend, name):
    n = name("foreign")
    untouched, remove = FOREIGN[backend](n)
    try:
        with pytest.raises(ValueError, match="not an mpx queue"):
            mpx.Queue(name=n, backend=backend)
        assert untouched()
    finally:
        remove()


# --- put_many: all or nothing ----------------------------------------------------------

@pytest.mark.parametrize("backend", NAMED)
def test_put_many_is_all_or_nothing_on_serialization_errors(backend, name):
    q = mpx.Queue(name=name(), backend=backend)
    q.put("first")
    with pytest.raises((TypeError, pickle.PicklingError)):
        q.put_many([1, b"big" * 50_000, threading.Lock(), 4])
    assert q.qsize() == 1
    assert q.get(timeout=5) == "first"
    assert q.empty()
    q.put_many([1, b"big" * 50_000, 4])
    assert [q.get(timeout=5) for _ in range(3)] == [1, b"big" * 50_000, 4]
    q.unlink()
    q.close()


# --- a producer killed at a random moment ----------------------------------------------

def _produce_forever(qname, backend):
    q = mpx.Queue(name=qname, backend=backend)
    i = 0
    while True:
        # Now and then a message larger than a kernel message (a side
        # segment for posix and sysv, the overflow area for a small ring).
        q.put((i, b"x" * 60_000 if i % 7 == 3 else b""), timeout=30)
        i += 1


@pytest.mark.timeout(120)
@pytest.mark.parametrize("backend", NAMED)
def test_random_sigkill_of_a_producer_loses_nothing_it_put(backend, name):
    rng = random.Random(18)
    qname = name("kill")
    q = mpx.Queue(name=qname, backend=backend)
    for _ in range(5):
        p = FORK.Process(target=_produce_forever, args=(qname, backend))
        p.start()
        # Read while it writes, so that it is killed in the middle of puts
        # (and of the queue's own waits), not only while blocked on a full queue.
        got = []
        deadline = time.monotonic() + rng.uniform(0.05, 0.3)
        while time.monotonic() < deadline:
            try:
                got.append(q.get(timeout=0.05))
            except queue.Empty:
                pass
        os.kill(p.pid, signal.SIGKILL)
        p.join(30)
        assert p.exitcode == -signal.SIGKILL
        # Everything it put arrives, once, in order, intact: a prefix of
        # 0, 1, 2, ... (only the message in flight when it died may be lost).
        t0 = time.monotonic()
        while True:
            try:
                got.append(q.get(timeout=0.5))
            except queue.Empty:
                break
        assert time.monotonic() - t0 < 15          # nobody stayed blocked
        assert [i for i, _ in got] == list(range(len(got)))
        assert all(body == (b"x" * 60_000 if i % 7 == 3 else b"") for i, body in got)
        # The queue still works for the others.
        q.put(("after", len(got)), timeout=5)
        assert q.get(timeout=5) == ("after", len(got))
    q.unlink()
    q.close()
