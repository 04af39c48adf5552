"""The shm Pipe beyond the shared contract (tests/test_pipe_contract.py runs
that over every backend, shm included): the readiness of fileno() for
wait(), the bell protocol under races, travel of ends to running processes,
messages larger than the ring, dead peers, and the shm Manager's use of the
same channel."""

import json
import os
import select
import signal
import socket
import stat
import threading
import time

import pytest

import mpx
import multiprocessing.connection as mpc
from multiprocessing import BufferTooShort

from conftest import backends_for

pytestmark = pytest.mark.skipif("shm" not in backends_for("Pipe"),
                                reason="shm Pipe unavailable")


def shm_pipe(ctx, duplex=True, **kw):
    return ctx.Pipe(duplex, backend="shm", **kw)


def readable_now(conn):
    """What select says about the descriptor right now (no waiting)."""
    r, _, _ = select.select([conn.fileno()], [], [], 0)
    return bool(r)


# ------------------------------------------------------------------ targets

def burst_writer(w, n, seed):
    """Send 0..n-1 in bursts separated by short random pauses, so that the
    reader is sometimes asleep, sometimes spinning, sometimes behind."""
    import random
    rnd = random.Random(seed)
    i = 0
    while i < n:
        for _ in range(rnd.choice((1, 1, 2, 5, 50))):
            if i == n:
                break
            w.send(i)
            i += 1
        pause = rnd.choice((0, 0, 0, 1e-5, 1e-4, 1e-3))
        if pause:
            time.sleep(pause)
    w.send(None)
    w.close()


def echo_until_none(conn):
    while True:
        obj = conn.recv()
        if obj is None:
            break
        conn.send(obj)
    conn.close()


def read_all_then_report(r, out, writer_copy):
    """Read until EOF; send what was read back on `out`."""
    writer_copy.close()   # inherited under fork: EOF needs every copy closed
    got = []
    while True:
        try:
            got.append(r.recv())
        except EOFError:
            break
    out.send(got)
    out.close()
    r.close()


def use_pipe_end_from_queue(q):
    conn = q.get(timeout=30)
    conn.send(("child got", conn.recv()))
    conn.close()


def use_pipe_end_from_pipe(carrier):
    conn = carrier.recv()
    carrier.close()
    for _ in range(3):
        conn.send(conn.recv() * 2)
    conn.close()


def big_echo(conn):
    for _ in range(3):
        conn.send_bytes(conn.recv_bytes())
    conn.send(conn.recv())
    conn.close()


def sleep_forever(conn):
    time.sleep(600)


def reader_reports_count(r, out, stop_at):
    n = 0
    while True:
        m = r.recv()
        if m is None:
            break
        n += 1
        out.send(m)
    out.send(("done", n))
    out.close()


# ------------------------------------------------------------------ basics

def test_default_pipe_is_shm_and_memfd_backed():
    a, b = mpx.Pipe()
    try:
        from mpx.backends.shm.pipe import Connection
        assert type(a) is Connection and type(b) is Connection
        chan = a._chan
        for ring in (chan._in, chan._out):
            target = os.readlink(f"/proc/self/fd/{ring.fd}")
            assert target.startswith("/memfd:"), target
            assert stat.S_IMODE(os.fstat(ring.fd).st_mode) == 0o600
    finally:
        a.close()
        b.close()


def test_closed_end_raises_oserror_everywhere():
    ctx = mpx.get_context("fork")
    a, b = shm_pipe(ctx)
    a.close()
    a.close()                           # twice is fine
    for call in (lambda: a.send(1), lambda: a.recv(), lambda: a.poll(),
                 lambda: a.fileno(), lambda: a.send_bytes(b"x"), lambda: a.recv_bytes(),
                 lambda: a.recv_bytes_into(bytearray(4))):
        with pytest.raises(OSError):
            call()
    assert a.closed and not b.closed
    b.close()


def test_methods_taken_before_close_raise_oserror_after_it():
    # send/recv are the rings' compiled methods while the end is open; one
    # held across close() (as a thread racing close does) must still raise
    # the stdlib's OSError, not crash or write into an unmapped ring.
    ctx = mpx.get_context("fork")
    a, b = shm_pipe(ctx)
    send, recv = a.send, b.recv
    a.close()
    b.close()
    with pytest.raises(OSError):
        send(1)
    with pytest.raises(OSError):
        recv()


def test_a_dropped_pipe_is_freed_without_the_cycle_collector():
    # The rings call back into their channel (bell, full, empty): those
    # hooks must not form a cycle that keeps channel and rings alive.
    import gc
    import weakref
    gc.disable()
    try:
        a, b = mpx.Pipe(backend="shm")
        a.send((1, "x"))
        assert b.recv() == (1, "x")
        refs = [weakref.ref(a._chan), weakref.ref(b._chan)]
        del a, b
        assert [r() for r in refs] == [None, None]
    finally:
        gc.enable()


def test_recv_bytes_into_and_buffer_too_short():
    ctx = mpx.get_context("fork")
    a, b = shm_pipe(ctx)
    a.send_bytes(b"0123456789")
    buf = bytearray(8)
    with pytest.raises(BufferTooShort) as info:
        b.recv_bytes_into(buf)
    assert info.value.args[0] == b"0123456789"
    import array
    arr = array.array("i", [0] * 4)
    a.send_bytes(b"\x01\x00\x00\x00\x02\x00\x00\x00")
    assert b.recv_bytes_into(arr, 4) == 8
    assert list(arr) == [0, 1, 2, 0]
    with pytest.raises(ValueError):
        b.recv_bytes_into(arr, 17)
    with pytest.raises(ValueError):
        b.recv_bytes_into(arr, -1)
    a.close()
    b.close()


def test_objects_sent_and_received_as_bytes_like_the_stdlib():
    """recv_bytes of something sent with send() is the pickle the stdlib
    would have carried (bytes and out-of-band arrays travel specially)."""
    import pickle
    np = pytest.importorskip("numpy")
    ctx = mpx.get_context("fork")
    a, b = shm_pipe(ctx)
    for obj in (b"raw bytes", (1, "two"), bytearray(b"x" * 300_000),
                np.arange(100_000, dtype=np.float64)):
        a.send(obj)
        data = b.recv_bytes()
        back = pickle.loads(data)
        if isinstance(obj, np.ndarray):
            assert (back == obj).all()
        else:
            assert back == obj
    arr = np.arange(1 << 18, dtype=np.float64)
    a.send([arr, arr * 2])
    x, y = b.recv()
    assert (x == arr).all() and (y == arr * 2).all() and x.flags.writeable
    a.close()
    b.close()


def test_custom_text_serializer():
    ctx = mpx.get_context("fork")
    a, b = ctx.Pipe(backend="shm", serializer=json)
    a.send({"k": [1, 2]})
    assert b.recv() == {"k": [1, 2]}
    a.send([3])
    assert b.recv_bytes() == b"[3]"
    a.close()
    b.close()


def test_unpicklable_object_sends_nothing():
    ctx = mpx.get_context("fork")
    a, b = shm_pipe(ctx)
    with pytest.raises(TypeError):
        a.send(threading.Lock())
    assert not b.poll(0.05)
    a.close()
    b.close()


def test_bad_arguments():
    ctx = mpx.get_context("fork")
    with pytest.raises(ValueError):
        shm_pipe(ctx, capacity=0)
    with pytest.raises(TypeError):
        shm_pipe(ctx, capacity="big")
    with pytest.raises(ValueError):
        shm_pipe(ctx, spin=-1)
    with pytest.raises(TypeError):
        ctx.Pipe(backend="shm", nonsense=1)


# ------------------------------------------------------------------ readiness

def test_fileno_readable_exactly_while_a_message_or_eof_waits():
    ctx = mpx.get_context("fork")
    a, b = shm_pipe(ctx)
    assert not readable_now(b)
    for n in (1, 3):
        for i in range(n):
            a.send(i)
        for i in range(n):
            assert readable_now(b)
            assert mpc.wait([b], timeout=5) == [b]
            assert b.recv() == i
        assert not readable_now(b)
        assert mpc.wait([b], timeout=0.05) == []
    # Messages sent before fileno() was first asked for count too.
    c, d = shm_pipe(ctx)
    c.send("early")
    assert readable_now(d) and d.recv() == "early" and not readable_now(d)
    # EOF makes it readable, for good.
    a.send("last")
    a.close()
    assert readable_now(b) and b.recv() == "last"
    assert readable_now(b)
    with pytest.raises(EOFError):
        b.recv()
    assert mpc.wait([b], timeout=5) == [b]
    for conn in (b, c, d):
        conn.close()


@pytest.mark.parametrize("spin", [None, 0])
def test_wait_loop_against_a_bursty_writer_never_misses_or_spins(spin):
    """A reader that only ever blocks in wait() (as a select loop does)
    against a writer in another process: every message arrives in order,
    no wait hangs, and wait() almost never reports the pipe ready with
    nothing to read (a persistent false positive would make this spin)."""
    ctx = mpx.get_context("fork")
    n = 3000
    r, w = shm_pipe(ctx, duplex=False, spin=spin)
    other_r, other_w = ctx.stdlib_context().Pipe(duplex=False)
    p = ctx.Process(target=burst_writer, args=(w, n, 7))
    p.start()
    w.close()
    expect = 0
    waits = spurious = 0
    done = False
    deadline = time.monotonic() + 60
    while not done:
        assert time.monotonic() < deadline, f"stuck after {expect} messages"
        ready = mpc.wait([other_r, r, p.sentinel], timeout=30)
        assert ready, f"wait() timed out after {expect} of {n} messages"
        if r not in ready:
            continue                    # the writer exited; its data still counts
        waits += 1
        if not r.poll():
            spurious += 1
            continue
        while r.poll():
            m = r.recv()
            if m is None:
                done = True
                break
            assert m == expect
            expect += 1
    assert expect == n
    assert spurious <= max(5, waits // 100), (spurious, waits)
    p.join(30)
    assert p.exitcode == 0
    with pytest.raises(EOFError):
        r.recv()
    for c in (r, other_r, other_w):
        c.close()


def test_bell_taken_back_by_a_late_writer_is_re_armed_for_wait():
    # The interleaving a reviewer found, done by hand: the reader takes a
    # message before its writer looks at the arm word; the writer then
    # rings, finds the ring empty and takes the ring back. The arm must be
    # restored, or the next send never rings and wait() sleeps over it.
    from mpx.backends.shm import channel as rc

    r, w = mpx.get_context("fork").Pipe(duplex=False, backend="shm")
    try:
        r.fileno()                              # watched: the bell mirrors the ring
        w._chan._out.put_obj(1, False)          # send() without its bell step
        assert r.recv() == 1                    # taken before the writer looks
        assert w._chan._out.aux_load(rc.ARMED) == rc.ARMED_
        w._chan._ring_bell()                    # the writer's late bell step
        assert mpc.wait([r], timeout=0.05) == []
        w.send(2)
        assert mpc.wait([r], timeout=5) == [r]
        assert r.recv() == 2
    finally:
        r.close()
        w.close()


def test_a_forked_child_closing_its_copy_does_not_ring_the_parents_bell():
    # A child forked while a parent thread slept in recv() inherits the
    # count of sleepers; its close() must not take them for its own.
    a, b = mpx.get_context("fork").Pipe(backend="shm")
    try:
        b.fileno()
        got = []
        t = threading.Thread(target=lambda: got.append(b.recv()), daemon=True)
        t.start()
        time.sleep(0.3)                         # asleep in recv()
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            try:
                os.read(go_r, 1)                # until the parent's thread left
                b.close()
            finally:
                os._exit(0)
        try:
            a.send("x")
            t.join(10)
            assert got == ["x"]
        finally:
            os.write(go_w, b"1")
            os.waitpid(pid, 0)
            os.close(go_r)
            os.close(go_w)
        assert mpc.wait([b], timeout=0.2) == []  # nothing there, nothing rung
        assert not b.poll(0)
    finally:
        a.close()
        b.close()


def test_mpx_wait_mixes_shm_stdlib_sockets_and_sentinels():
    ctx = mpx.get_context("fork")
    a, b = shm_pipe(ctx)
    c, d = ctx.stdlib_context().Pipe()
    s1, s2 = socket.socketpair()
    from mpx.connection import wait
    assert wait([b, d, s2], timeout=0.05) == []
    s1.send(b"x")
    assert wait([b, d, s2], timeout=5) == [s2]
    s2.recv(1)
    c.send(1)
    a.send(2)
    assert set(wait([b, d, s2], timeout=5)) == {b, d}
    assert b.recv() == 2 and d.recv() == 1
    p = ctx.Process(target=time.sleep, args=(0.05,))
    p.start()
    assert wait([b, d, s2, p.sentinel], timeout=30) == [p.sentinel]
    p.join(5)
    for x in (a, b, c, d, s1, s2):
        x.close()


@pytest.mark.parametrize("duplex", [True, False])
def test_sleeping_round_trips_exercise_the_bell(duplex):
    """spin=0: every receive sleeps, so every message goes through the bell
    protocol on both sides (thousands of chances to lose a wake-up)."""
    ctx = mpx.get_context("fork")
    if duplex:
        a, b = shm_pipe(ctx, spin=0)
        p = ctx.Process(target=echo_until_none, args=(b,))
        p.start()
        b.close()
        for i in range(2000):
            a.send(i)
            assert a.poll(30), f"no echo of {i}"
            assert a.recv() == i
        a.send(None)
        a.close()
    else:
        r, w = shm_pipe(ctx, duplex=False, spin=0)
        out_r, out_w = ctx.Pipe(duplex=False)
        p = ctx.Process(target=read_all_then_report, args=(r, out_w, w))
        p.start()
        r.close()
        out_w.close()
        for i in range(2000):
            w.send(i)
            if i % 7 == 0:
                time.sleep(0)
        w.close()
        assert out_r.poll(30)
        assert out_r.recv() == list(range(2000))
        out_r.close()
    p.join(30)
    assert p.exitcode == 0


def test_two_readers_on_one_end_get_everything_once():
    """Copies of one reading end in two processes (as with a shared OS
    pipe): every message reaches exactly one of them, none sleeps through
    a message the other left behind."""
    ctx = mpx.get_context("fork")
    r, w = shm_pipe(ctx, duplex=False)
    out_r, out_w = ctx.Pipe(duplex=False)
    procs = [ctx.Process(target=reader_reports_count, args=(r, out_w, None))
             for _ in range(2)]
    for p in procs:
        p.start()
    r.close()
    out_w.close()
    n = 2000
    for i in range(n):
        w.send(i)
        if i % 50 == 0:
            time.sleep(0.001)
    w.send(None)
    w.send(None)
    seen, done = [], 0
    while done < 2:
        assert out_r.poll(30), f"readers stalled after {len(seen)} of {n}"
        m = out_r.recv()
        if isinstance(m, tuple):
            done += 1
        else:
            seen.append(m)
    assert sorted(seen) == list(range(n))
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    w.close()
    out_r.close()


# ------------------------------------------------------------------ travel

@pytest.mark.parametrize("carrier", ["shm queue", "shm pipe"])
def test_end_sent_to_a_running_child_then_eof(ctx, carrier):
    a, b = shm_pipe(ctx)
    if carrier == "shm queue":
        q = ctx.Queue(backend="shm")
        p = ctx.Process(target=use_pipe_end_from_queue, args=(q,))
        p.start()
        q.put(b)
        b.close()          # the shm queue pickled it in put(): our copy may go
        a.send("hello")
        assert a.poll(30)
        assert a.recv() == ("child got", "hello")
    else:
        c1, c2 = shm_pipe(ctx)
        p = ctx.Process(target=use_pipe_end_from_pipe, args=(c2,))
        p.start()
        c2.close()
        c1.send(b)
        b.close()
        for i in range(3):
            a.send(i + 1)
            assert a.poll(30)
            assert a.recv() == (i + 1) * 2
        c1.close()
    # The child closed the only other copy of b: EOF, not a hang.
    assert a.poll(30)
    with pytest.raises(EOFError):
        a.recv()
    p.join(30)
    assert p.exitcode == 0
    a.close()
    if carrier == "shm queue":
        q.close()


def test_messages_bigger_than_the_ring_both_ways(ctx):
    a, b = shm_pipe(ctx, capacity=4096)
    p = ctx.Process(target=big_echo, args=(b,))
    p.start()
    b.close()
    for size in (100_000, 3 << 20, 17 << 20):
        data = os.urandom(1024) * (size // 1024)
        a.send_bytes(data)
        assert a.poll(60)
        assert a.recv_bytes() == data
    obj = {"big": list(range(200_000))}
    a.send(obj)
    assert a.poll(60) and a.recv() == obj
    p.join(30)
    assert p.exitcode == 0
    a.close()


# ------------------------------------------------------------------ dead peers

def test_writer_to_a_killed_reader_gets_broken_pipe():
    ctx = mpx.get_context("fork")
    r, w = shm_pipe(ctx, duplex=False, capacity=4096)
    p = ctx.Process(target=sleep_forever, args=(r,))
    p.start()
    r.close()
    w.send_bytes(b"x" * 100)           # room: fine, as with a socket buffer
    p.kill()
    p.join(30)
    t = time.monotonic()
    with pytest.raises(BrokenPipeError):
        for _ in range(10_000):
            w.send_bytes(b"x" * 1000)
    assert time.monotonic() - t < 10
    w.close()


def test_reader_sees_eof_at_once_when_the_writer_exits_without_closing():
    ctx = mpx.get_context("fork")
    r, w = shm_pipe(ctx, duplex=False)
    p = ctx.Process(target=os._exit, args=(0,))
    p.start()
    w.close()
    t = time.monotonic()
    with pytest.raises(EOFError):
        r.recv()
    assert time.monotonic() - t < 5
    p.join(30)
    r.close()


# ------------------------------------------------------------------ threads and signals

@pytest.mark.parametrize("spin, wait", [(None, 0.1), (0.5, 0.05)],
                         ids=["asleep", "in_the_spin"])
def test_close_wakes_a_thread_blocked_in_recv(spin, wait):
    # Whether the reader sleeps in epoll already or (long spin) is still in
    # the ring's compiled wait, a close from another thread wakes it at once
    # with an OSError, as with a stdlib connection's closed handle.
    ctx = mpx.get_context("fork")
    a, b = shm_pipe(ctx, spin=spin)
    errors = []

    def blocked():
        try:
            b.recv()
        except Exception as e:
            errors.append(e)

    t = threading.Thread(target=blocked)
    t.start()
    time.sleep(wait)
    start = time.monotonic()
    b.close()
    t.join(10)
    assert not t.is_alive()
    assert errors and isinstance(errors[0], OSError), errors
    assert time.monotonic() - start < 0.3
    a.close()


def test_a_blocked_recv_keeps_its_end_alive():
    # As with any Python object (and a stdlib Connection), the bound method
    # a thread is blocked in keeps the end alive when the program drops it:
    # the thread gets the next message, not a "closed" error.
    import gc
    ctx = mpx.get_context("fork")
    a, b = shm_pipe(ctx)
    got = []

    def run(recv):
        try:
            got.append(recv())
        except Exception as e:
            got.append(e)

    t = threading.Thread(target=run, args=(b.recv,))
    t.start()
    time.sleep(0.2)                 # blocked in recv
    del b
    gc.collect()
    a.send("hello")
    t.join(10)
    assert not t.is_alive()
    assert got == ["hello"]
    a.close()

def test_ctrl_c_interrupts_a_blocked_recv():
    ctx = mpx.get_context("fork")
    a, b = shm_pipe(ctx)
    old = signal.signal(signal.SIGINT, signal.default_int_handler)
    timer = threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGINT))
    try:
        timer.start()
        t = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            b.recv()
        assert time.monotonic() - t < 10
    finally:
        timer.cancel()
        signal.signal(signal.SIGINT, old)
    # Still usable afterwards.
    a.send(1)
    assert b.recv() == 1
    a.close()
    b.close()


def test_poll_timeouts_are_honoured():
    ctx = mpx.get_context("fork")
    a, b = shm_pipe(ctx)
    for timeout in (0, 0.001, 0.05):
        t = time.monotonic()
        assert not b.poll(timeout)
        assert time.monotonic() - t < timeout + 2
    threading.Timer(0.1, a.send, ("late",)).start()
    assert b.poll(None)
    assert b.recv() == "late"
    a.close()
    b.close()


# ------------------------------------------------------------------ the manager's channel

def test_shm_manager_sees_a_killed_client_and_keeps_serving():
    if "shm" not in backends_for("Manager"):
        pytest.skip("shm Manager unavailable")
    ctx = mpx.get_context("fork")
    with ctx.Manager(backend="shm") as m:
        d = m.dict()
        p = ctx.Process(target=_touch_and_die, args=(d,))
        p.start()
        p.join(30)
        assert p.exitcode == -signal.SIGKILL
        d["after"] = 1
        assert d["killed"] == 1 and d["after"] == 1


def _touch_and_die(d):
    d["killed"] = 1
    os.kill(os.getpid(), signal.SIGKILL)


# ------------------------------------------------- issue 19 (items 11, 14)

def test_send_bound_method_outlives_its_end_as_with_the_stdlib():
    # s = conn.send; del conn; s(x) delivers: the bound method holds the end
    # (it used to be the ring's method, and the end closed under it).
    ctx = mpx.get_context("fork")
    a, b = shm_pipe(ctx)
    s, r = a.send, b.recv
    del a, b
    s("through a bound method")
    assert r() == "through a bound method"
    # Once the last reference goes, the end closes at once (no cycle keeps
    # it for the garbage collector): the peer sees EOF.
    c, d = shm_pipe(ctx)
    recv = d.recv
    del d, r
    c.send(1)
    del c, s
    assert recv() == 1
    with pytest.raises(EOFError):
        recv()


def test_closed_or_wrong_direction_ends_raise_the_stdlib_errors():
    ctx = mpx.get_context("fork")
    r, w = shm_pipe(ctx, duplex=False)
    with pytest.raises(OSError, match="read-only"):
        r.send(1)
    with pytest.raises(OSError, match="write-only"):
        w.recv()
    send = w.send
    w.close()
    with pytest.raises(OSError, match="closed"):
        send(1)
    r.close()
    with pytest.raises(OSError, match="closed"):
        r.recv()


def test_capacity_takes_any_integer_type_and_errors_name_the_option():
    import numpy as np
    ctx = mpx.get_context("fork")
    a, b = shm_pipe(ctx, capacity=np.int64(8192))
    assert a._chan.out_ring.capacity == 8192
    a.close()
    b.close()
    with pytest.raises(TypeError, match="capacity must be an int"):
        shm_pipe(ctx, capacity=8192.0)
    with pytest.raises(TypeError, match="spin must be"):
        shm_pipe(ctx, spin="x")
    with pytest.raises(ValueError, match="spin must be"):
        shm_pipe(ctx, spin=float("inf"))


def test_poll_and_channel_waits_read_timeouts_as_every_mpx_wait():
    # NaN: ValueError at once; inf: for ever; a negative poll does not wait
    # (the stdlib's reading, kept), nor does a negative recv timeout.
    ctx = mpx.get_context("fork")
    a, b = shm_pipe(ctx)
    t = time.monotonic()
    with pytest.raises(ValueError, match="NaN"):
        b.poll(float("nan"))
    with pytest.raises(ValueError, match="NaN"):
        b._chan.recv(timeout=float("nan"))
    with pytest.raises(TimeoutError):
        b._chan.recv(timeout=-1)
    with pytest.raises(TypeError, match="timeout must be"):
        b.poll("soon")
    assert time.monotonic() - t < 1
    assert b.poll(-5) is False
    threading.Timer(0.2, a.send, ("late",)).start()
    assert b.poll(float("inf")) is True
    assert b.recv() == "late"
    threading.Timer(0.2, a.send, ("later",)).start()
    assert b.poll(10 ** 30) is True            # past a float's range: for ever too
    assert b.recv() == "later"
    a.close()
    b.close()
