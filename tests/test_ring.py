"""The shared-memory ring itself (mpx._ext.ring): layout checks, FIFO order
across wrap-around, blocking and timeouts, overflow extents, shutdown, task
accounting, and every repair path after a process is SIGKILLed at a chosen
point (the ring's test-only crash points)."""

import multiprocessing
import os
import random
import signal
import struct
import threading
import time
import zlib

import pytest

from mpx._ext import ring as ringmod
from mpx._ext.ring import Ring, RingEmpty, RingError, RingFull, RingShutdown

FORK = multiprocessing.get_context("fork")
HDR = ringmod.HEADER_SIZE


def new_ring(capacity=4096, **kw):
    return Ring.create(os.memfd_create("test-ring", os.MFD_CLOEXEC), capacity, **kw)


def twin(ring):
    """A second attachment to the same ring (as another process would have)."""
    return Ring.attach(os.dup(ring.fd))


def allocated(ring):
    """Bytes of memory the ring's file really holds."""
    return os.fstat(ring.fd).st_blocks * 512


def spilled(ring):
    """Bytes still allocated in the spill region (past the ring and the
    overflow area, whose pages are kept for reuse), found with SEEK_DATA."""
    total = 0
    size = os.fstat(ring.fd).st_size
    pos = ring.info()["spill_base"]
    while pos < size:
        try:
            pos = os.lseek(ring.fd, pos, os.SEEK_DATA)
        except OSError:             # ENXIO: no data from here on
            break
        end = os.lseek(ring.fd, pos, os.SEEK_HOLE)
        total += end - pos
        pos = end
    return total


def run_child(target, *args, timeout=30):
    p = FORK.Process(target=target, args=args)
    p.start()
    p.join(timeout)
    if p.is_alive():
        p.kill()
        p.join()
        pytest.fail("child did not finish in time")
    return p.exitcode


# ------------------------------------------------------------ the header

def test_create_rounds_capacity_and_reports_header():
    r = new_ring(5000, maxsize=7, kind=3, ring_id=99)
    info = r.info()
    assert r.capacity == 8192 and info["capacity"] == 8192
    assert info["version"] == ringmod.LAYOUT_VERSION
    assert (info["maxsize"], info["kind"], info["ring_id"]) == (7, 3, 99)
    assert info["messages"] == 0 and not info["shutdown"]
    assert info["file_size"] == HDR + 8192
    assert allocated(r) == HDR              # ring pages come with use
    r.put(b"x" * 100)
    assert r.info()["ring_allocated"] == 8192 and allocated(r) == HDR + 8192
    r.close()
    assert r.closed


@pytest.mark.parametrize("bad", [0, -5, ringmod.MAX_CAPACITY + 1])
def test_create_rejects_bad_capacity(bad):
    fd = os.memfd_create("x")
    try:
        with pytest.raises(ValueError, match="capacity"):
            Ring.create(fd, bad)
    finally:
        os.close(fd)


def test_create_rejects_bad_maxsize_and_nonempty_file():
    fd = os.memfd_create("x")
    try:
        with pytest.raises(ValueError, match="maxsize"):
            Ring.create(fd, 4096, maxsize=-1)
        os.write(fd, b"x")
        with pytest.raises(RingError, match="empty file"):
            Ring.create(fd, 4096)
    finally:
        os.close(fd)


def _attach_error(data):
    fd = os.memfd_create("x")
    try:
        os.write(fd, data)
        with pytest.raises(RingError) as e:
            Ring.attach(fd)
        return str(e.value)
    finally:
        os.close(fd)


def test_attach_refuses_foreign_segments():
    assert "smaller than a ring header" in _attach_error(b"")
    assert "smaller than a ring header" in _attach_error(b"abc")
    assert "magic" in _attach_error(b"\x7fELF" + b"\0" * 9000)


def test_attach_refuses_other_layout_version():
    r = new_ring()
    os.pwrite(r.fd, struct.pack("<I", ringmod.LAYOUT_VERSION + 1), 8)
    fd = os.dup(r.fd)
    with pytest.raises(RingError, match=r"layout version \d+; this mpx reads version"):
        Ring.attach(fd)
    os.close(fd)
    r.close()


def test_attach_refuses_damaged_header():
    r = new_ring()
    os.pwrite(r.fd, struct.pack("<Q", 12345), 16)       # capacity: not a power of 2
    fd = os.dup(r.fd)
    with pytest.raises(RingError, match="impossible values"):
        Ring.attach(fd)
    os.close(fd)
    r.close()


def test_attach_sees_the_same_ring():
    r = new_ring(8192, maxsize=3)
    r2 = twin(r)
    r.put(b"one")
    assert r2.qsize() == 1 and r2.maxsize == 3 and r2.get() == b"one"
    r2.close()
    r.close()


# ----------------------------------------------------------- put and get

def test_parts_tags_and_empty_messages():
    r = new_ring()
    r.put(b"plain")
    r.put([b"a", b"bc", bytearray(b"def")], tag=7)
    r.put(b"", tag=0)
    r.put([], tag=9)
    r.put(memoryview(b"view"), tag=1)
    assert r.get() == b"plain"
    tag, parts = r.get()
    assert tag == 7 and parts == [b"a", b"bc", b"def"]
    assert type(parts[0]) is bytes and type(parts[1]) is bytearray
    assert r.get() == b""
    assert r.get() == (9, [])
    assert r.get() == (1, [b"view"])
    with pytest.raises(ValueError, match="tag"):
        r.put(b"x", tag=256)
    with pytest.raises(TypeError):
        r.put(12345)
    assert r.qsize() == 0
    r.close()


def test_fifo_order_across_wraparound():
    rnd = random.Random(1)
    r = new_ring(4096)
    sent = []
    got = []
    for i in range(3000):
        if rnd.random() < 0.55:
            msg = rnd.randbytes(rnd.randrange(0, 900))
            try:
                r.put(msg, block=False)
                sent.append(msg)
            except RingFull:
                pass
        else:
            try:
                got.append(r.get(block=False))
            except RingEmpty:
                pass
    got.extend(r.get_many(block=False) if r.qsize() else [])
    assert got == sent
    r.close()


def test_nonblocking_and_timeouts():
    r = new_ring(4096)
    with pytest.raises(RingEmpty):
        r.get(block=False)
    t = time.monotonic()
    with pytest.raises(RingEmpty):
        r.get(timeout=0.1)
    assert 0.09 <= time.monotonic() - t < 2
    # Timeouts read as mpx._timeouts.seconds reads them: negative, no wait.
    with pytest.raises(RingEmpty):
        r.get(timeout=-1)
    while True:
        try:
            r.put(b"x" * 500, block=False)
        except RingFull:
            break
    assert r.is_full()
    t = time.monotonic()
    with pytest.raises(RingFull):
        r.put(b"x" * 500, timeout=0.1)
    assert 0.09 <= time.monotonic() - t < 2
    r.get()
    r.put(b"x" * 500, timeout=0.1)
    with pytest.raises(ValueError, match="NaN"):
        r.get(timeout=float("nan"))
    r.close()


def test_maxsize_counts_messages():
    r = new_ring(4096, maxsize=2)
    r.put(b"a")
    r.put(b"b")
    assert r.is_full()
    with pytest.raises(RingFull):
        r.put(b"c", block=False)
    assert r.put_many([b"c", b"d"], block=False) == 0
    assert r.get() == b"a"
    assert r.put_many([b"c", b"d"], block=False) == 1
    assert r.get_many() == [b"b", b"c"]
    r.close()


def test_put_many_and_get_many():
    r = new_ring(4096)
    assert r.put_many([b"m%d" % i for i in range(10)] + [(5, [b"p", b"q"])]) == 11
    assert r.qsize() == 11
    assert r.get_many(max_items=3) == [b"m0", b"m1", b"m2"]
    rest = r.get_many()
    assert rest[:-1] == [b"m%d" % i for i in range(3, 10)] and rest[-1] == (5, [b"p", b"q"])
    with pytest.raises(RingEmpty):
        r.get_many(block=False)
    with pytest.raises(ValueError):
        r.get_many(max_items=0)
    # A batch larger than the ring goes in pieces; without a consumer the
    # rest times out and the count says how far it got.
    n = r.put_many([b"z" * 100] * 100, timeout=0.05)
    assert 0 < n < 100 and r.qsize() == n
    # An item that is not a buffer fails before anything is put.
    r.drain()
    with pytest.raises(TypeError):
        r.put_many([b"ok", 42])
    assert r.qsize() == 0
    r.close()


# ---------------------------------------------------------- big messages

def test_spill_messages_of_any_size_and_their_memory():
    r = new_ring(8192, area=0)                  # no overflow area: all spill
    big = os.urandom(3_000_000)
    r.put(big)                                  # far larger than the ring
    r.put([b"head", big, b"tail"], tag=4)
    r.put(b"small")
    assert r.qsize() == 3 and spilled(r) > 2 * len(big)
    assert r.get() == big
    assert r.get() == (4, [b"head", big, b"tail"])
    assert r.get() == b"small"
    assert spilled(r) == 0                      # every extent was freed
    r.put(b"x" * 5000)                          # > inline_max (half the ring)
    assert r.info()["file_size"] > HDR + 8192
    assert r.get() == b"x" * 5000
    r.put(big)                                  # ring empty: the file shrinks back
    assert r.info()["spill_next"] == HDR + 8192 + len(big) + (-len(big)) % 4096
    assert r.get_many() == [big]
    assert spilled(r) == 0
    r.close()


def test_overflow_area_is_reused_and_bounded():
    r = new_ring(8192, area=256 * 1024)
    r.put(b"x")
    r.get()
    base = allocated(r)                         # header and ring
    msgs = [os.urandom(50_000 + i) for i in range(40)]
    for m in msgs:                              # 2 MB through a 256 KiB area
        r.put(m)
        assert r.get() == m
    info = r.info()
    assert info["area_used"] == 0
    assert base < allocated(r) <= base + 128 * 1024   # pages reused, not new ones
    # Flow control: past its backlog (here two messages of this size) the
    # area makes put() wait, as a full ring does; nothing spills.
    assert r.put_many(msgs[:8], timeout=0.2) == 2
    with pytest.raises(RingFull):
        r.put(msgs[2], block=False)
    assert spilled(r) == 0
    assert r.get_many() == msgs[:2]
    assert r.put_many(msgs[2:4], timeout=5) == 2
    assert r.get_many() == msgs[2:4]
    big = os.urandom(1_000_000)                 # bigger than the whole area: spills
    r.put(big)
    assert spilled(r) >= len(big)
    assert r.get() == big
    assert spilled(r) == 0
    r.close()


def _drain_slowly(r, n, out):
    got = []
    for _ in range(n):
        time.sleep(0.01)
        got.append(r.get(timeout=10))
    out.put(got)


def test_overflow_area_flow_control_across_processes():
    r = new_ring(8192, area=1 << 20, area_backlog=100_000)
    msgs = [os.urandom(40_000) for _ in range(30)]
    out = FORK.SimpleQueue()
    p = FORK.Process(target=_drain_slowly, args=(r, len(msgs), out))
    p.start()
    for m in msgs:
        r.put(m, timeout=10)                    # waits for the slow consumer
        assert r.info()["area_used"] <= 100_000 + 64
    assert out.get() == msgs
    p.join(10)
    assert r.info()["area_allocated"] <= 128 * 1024
    r.close()


def test_overflow_area_wraps_without_splitting_extents():
    r = new_ring(4096, area=64 * 1024, area_backlog=40_000)
    rnd = random.Random(5)
    pending = []
    full = 0
    for _ in range(600):
        if rnd.random() < 0.6:
            m = rnd.randbytes(rnd.randrange(3000, 30_000))
            try:
                r.put(m, block=False)
                pending.append(m)
            except RingFull:                # the area's backlog is full
                full += 1
                assert r.info()["area_used"] > 0
        elif pending:
            assert r.get() == pending.pop(0)
        assert r.info()["area_used"] <= max(40_000, 2 * 30_064)
    rest = r.get_many() if pending else []
    assert rest == pending
    assert full > 0 and spilled(r) == 0
    r.close()


def test_large_copies_release_the_gil():
    r = new_ring(1 << 22)
    big = bytes(3 << 20)
    ticks = []
    stop = threading.Event()

    def ticker():
        while not stop.is_set():
            ticks.append(1)
            time.sleep(0.0005)

    th = threading.Thread(target=ticker)
    th.start()
    try:
        for _ in range(20):
            r.put(big)
            r.get()
    finally:
        stop.set()
        th.join(5)
    assert ticks
    r.close()


# ---------------------------------------------------------- shutdown, acks

def test_shutdown_drains_then_refuses():
    r = new_ring()
    r2 = twin(r)
    r.put(b"left")
    r2.shutdown()
    assert r.is_shutdown
    with pytest.raises(RingShutdown):
        r.put(b"more")
    assert r.put_many([b"x"]) == 0
    assert r.get() == b"left"
    with pytest.raises(RingShutdown):
        r.get()
    with pytest.raises(RingShutdown):
        r.get_many(block=False)
    r.close()
    r2.close()


def test_shutdown_wakes_blocked_callers():
    r = new_ring(4096)
    r.put(b"y" * 1500)
    r.put(b"y" * 1500)            # the next one of this size does not fit
    errors = []

    def blocked(fn):
        try:
            fn()
        except Exception as e:              # noqa: BLE001 - recorded and checked
            errors.append(type(e))

    ths = [threading.Thread(target=blocked, args=(lambda: r.put(b"z" * 1500),))]
    r2 = new_ring(4096)
    ths.append(threading.Thread(target=blocked, args=(r2.get,)))
    for th in ths:
        th.start()
    time.sleep(0.2)
    r.shutdown()
    r2.shutdown()
    for th in ths:
        th.join(5)
        assert not th.is_alive()
    assert errors == [RingShutdown, RingShutdown]
    r.close()
    r2.close()


def test_nonblocking_calls_never_wait_behind_a_waiter():
    # A producer blocked for room for a big message must not make a small
    # put_nowait wait (there is room for that one), and a consumer blocked
    # for a message must not make get(timeout=0) wait.
    r = new_ring(4096)
    r.put(b"y" * 1500)
    r.put(b"y" * 1500)
    big = threading.Thread(target=lambda: r.put(b"z" * 1500, timeout=10))
    big.start()
    time.sleep(0.1)
    t = time.monotonic()
    r.put(b"s" * 100, block=False)
    r.put(b"s" * 100, timeout=0)
    assert time.monotonic() - t < 0.5
    r.drain()
    big.join(10)
    r.drain()
    waiter = threading.Thread(target=lambda: pytest.raises(RingEmpty, r.get, timeout=1))
    waiter.start()
    time.sleep(0.1)
    t = time.monotonic()
    with pytest.raises(RingEmpty):
        r.get(timeout=0)
    with pytest.raises(RingEmpty):
        r.get(block=False)
    assert time.monotonic() - t < 0.5
    waiter.join(10)
    r.close()


def test_ack_counts_against_puts():
    r = new_ring()
    assert r.unacked() == 0 and r.wait_acked(0)
    r.put_many([b"a", b"b", b"c"])
    assert r.unacked() == 3
    assert r.ack(2) and r.unacked() == 1
    assert not r.ack(2) and r.unacked() == 1       # too many: nothing changes
    assert not r.wait_acked(timeout=0.05)
    th = threading.Timer(0.1, r.ack)
    th.start()
    assert r.wait_acked(timeout=5)
    th.join()
    r.put(b"d")
    assert r.ack(5, True) and r.unacked() == 0     # clamped
    r.close()


@pytest.mark.parametrize("size", [256 << 10, (256 << 10) + 1, 300_001, (1 << 20) + 13])
@pytest.mark.parametrize("offset", [0, 8, 40, 1000])
def test_large_messages_streamed_to_the_reader_arrive_intact(size, offset):
    # A ring whose reader has taken no large message yet streams the next
    # one (non-temporal stores, see mpx_copy_for_reader): every size, every
    # alignment of its start, and a message split by the ring's wrap-around
    # (the small first message moves where the large one starts).
    r = new_ring(2 << 20)
    reader = twin(r)
    try:
        for lap in range(3):
            if offset:
                r.put(b"f" * offset)
                assert reader.get(False) == b"f" * offset
            data = random.Random(size + offset + lap).randbytes(size)
            r.put(data)
            got = reader.get(False)
            assert len(got) == size and got == data
            r.put([b"x", data[:size // 3], data], 7)     # several parts
            assert reader.get(False) == (7, [b"x", data[:size // 3], data])
    finally:
        reader.close()
        r.close()


def test_aux_words():
    r = new_ring()
    assert r.aux_load(0) == 0
    assert r.aux_add(0, 5) == 0 and r.aux_load(0) == 5
    assert r.aux_cas(0, 5, 7) and not r.aux_cas(0, 5, 9)
    r.aux_store(13, 3)
    assert r.aux_load(13) == 3
    for outside in (14, 15, -1):      # 14 is the ring's own (the reader's core)
        with pytest.raises(IndexError):
            r.aux_load(outside)
    assert not r.aux_wait(1, 0, timeout=0.02)
    th = threading.Timer(0.05, lambda: (r.aux_store(1, 1), r.aux_wake(1)))
    th.start()
    assert r.aux_wait(1, 0, timeout=5)
    th.join()
    r.close()


# ---------------------------------------------------- close, threads, signals

def test_close_while_another_thread_waits():
    r = new_ring()
    seen = []

    def waiter():
        try:
            r.get(timeout=10)
        except ValueError as e:
            seen.append(str(e))

    th = threading.Thread(target=waiter)
    th.start()
    time.sleep(0.2)
    r.close()
    th.join(5)
    assert not th.is_alive() and seen and "closed" in seen[0]
    with pytest.raises(ValueError, match="closed"):
        r.put(b"x")
    r.close()                                       # twice is fine


def test_ctrl_c_gets_through_a_blocked_get():
    r = new_ring()

    class Interrupted(Exception):
        pass

    def handler(signum, frame):
        raise Interrupted

    old = signal.signal(signal.SIGALRM, handler)
    signal.setitimer(signal.ITIMER_REAL, 0.2)
    t = time.monotonic()
    try:
        with pytest.raises(Interrupted):
            r.get()                                 # would wait forever
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert time.monotonic() - t < 3
    r.close()


def _note_holder(r, out):
    r.register_holder()
    out.put((os.getpid(), r.fd))


def test_holders_table():
    r = new_ring()
    assert r.holders() == [(os.getpid(), r.fd)]
    r2 = twin(r)
    assert r2.holders() == [(os.getpid(), r2.fd)]   # one slot per process
    r2.close()                                      # its entry goes with it
    assert r.holders() == []
    r.register_holder()
    out = FORK.SimpleQueue()
    assert run_child(_note_holder, r, out) == 0
    child = out.get()
    assert sorted(r.holders()) == sorted([(os.getpid(), r.fd), child])
    r.close()


# ------------------------------------------------------- across processes

def _echo(r_in, r_out, n, spin):
    r_in.spin_max_ns = spin
    r_out.spin_max_ns = spin
    for _ in range(n):
        r_out.put(r_in.get(timeout=10))


@pytest.mark.parametrize("spin", [0, 50_000], ids=["futex-only", "spin"])
def test_ping_pong_never_loses_a_wakeup(spin):
    a, b = new_ring(), new_ring()
    a.spin_max_ns = b.spin_max_ns = spin
    p = FORK.Process(target=_echo, args=(a, b, 300, spin))
    p.start()
    worst = 0
    for i in range(300):
        t = time.monotonic()
        a.put(b"%d" % i)
        assert b.get(timeout=10) == b"%d" % i
        worst = max(worst, time.monotonic() - t)
    p.join(10)
    assert p.exitcode == 0
    # A lost wake-up costs a whole safety-net slice (1 s).
    assert worst < 0.5
    a.close()
    b.close()


def _batch_consumer(r, n, out):
    got = 0
    slow = 0
    while got < n:
        t = time.monotonic()
        got += len(r.get_many(max_items=100, timeout=10))
        slow = max(slow, time.monotonic() - t)
    out.put(slow)


def test_batches_never_stall():
    # Regression: a consumer that found the WAITERS bit already set used to
    # sleep through the producer's clearing of it (a 1 s stall per batch).
    r = new_ring(1 << 20)
    out = FORK.SimpleQueue()
    p = FORK.Process(target=_batch_consumer, args=(r, 20000, out))
    p.start()
    for _ in range(200):
        assert r.put_many([b"payload-123"] * 100, timeout=10) == 100
        time.sleep(0.0005)
    p.join(30)
    assert p.exitcode == 0
    assert out.get() < 0.5
    r.close()


def _producer(r, pid, n, size):
    rnd = random.Random(pid)
    for i in range(n):
        body = rnd.randbytes(rnd.randrange(size))
        r.put(struct.pack("<III", pid, i, zlib.crc32(body)) + body, timeout=20)


def _consumer(r, results):
    got = []
    while True:
        try:
            msg = r.get(timeout=20)
        except RingShutdown:
            break
        pid, i, crc = struct.unpack_from("<III", msg)
        assert zlib.crc32(msg[12:]) == crc
        got.append((pid, i))
    results.put(got)


def test_many_producers_many_consumers_exactly_once():
    r = new_ring(8192, maxsize=50)
    results = FORK.SimpleQueue()
    n, size = 400, 3000       # some messages overflow (inline_max is 4096)
    prods = [FORK.Process(target=_producer, args=(r, k, n, size)) for k in range(3)]
    cons = [FORK.Process(target=_consumer, args=(r, results)) for _ in range(3)]
    for p in prods + cons:
        p.start()
    for p in prods:
        p.join(60)
        assert p.exitcode == 0
    r.shutdown()
    got = [results.get() for _ in cons]
    for p in cons:
        p.join(30)
        assert p.exitcode == 0
    everything = [x for g in got for x in g]
    assert sorted(everything) == sorted((k, i) for k in range(3) for i in range(n))
    for g in got:                       # each producer's messages stay in order
        for k in range(3):
            mine = [i for pid, i in g if pid == k]
            assert mine == sorted(mine)
    r.close()


# -------------------------------------------- close racing blocked calls

def _blocked_call(call, closer, join=5):
    """Run `call` in a thread, wait until it is blocked, run `closer`;
    returns (the exception the call raised or its result, seconds it took to
    finish after the close)."""
    out = []

    def run():
        try:
            out.append(call())
        except BaseException as e:                  # noqa: BLE001 - returned and checked
            out.append(e)

    th = threading.Thread(target=run)
    th.start()
    time.sleep(0.2)
    assert not out, f"the call did not block: {out}"
    t = time.monotonic()
    closer()
    th.join(join)
    assert not th.is_alive(), "the blocked call did not wake"
    return out[0], time.monotonic() - t


def _close_under_blocked_call(r, what):
    # In a forked child: a thread of the child blocks in the ring and the
    # main thread closes it. The call must raise RingClosed, not find the
    # memory unmapped under it (SIGSEGV): the busy count is per process.
    if what == "get":
        call = lambda: r.get(timeout=10)                        # noqa: E731
    else:
        while True:
            try:
                r.put(b"f" * 1000, block=False)
            except RingFull:
                break
        call = lambda: r.put(b"f" * 1000, timeout=10)           # noqa: E731
    err, took = _blocked_call(call, r.close)
    assert isinstance(err, ringmod.RingClosed), repr(err)
    assert took < 3


@pytest.mark.parametrize("what", ["get", "put"])
def test_close_in_a_forked_child_while_its_thread_waits(what):
    r = new_ring(4096)
    assert run_child(_close_under_blocked_call, r, what) == 0
    r.close()


def _close_with_parents_count(r, fd):
    # Forked while a thread of the parent was inside the ring: that thread
    # does not exist here, so close() must unmap and close at once rather
    # than wait for it to leave.
    r.close()
    assert r.closed
    with pytest.raises(OSError):
        os.fstat(fd)


def test_a_forked_child_does_not_inherit_the_parents_busy_calls():
    r = new_ring()
    got = []
    th = threading.Thread(target=lambda: got.append(r.get(timeout=10)))
    th.start()
    time.sleep(0.1)                                 # the parent's thread is in get()
    assert run_child(_close_with_parents_count, r, r.fd) == 0
    r.put(b"wake")
    th.join(5)
    assert got == [b"wake"]
    r.close()


def test_close_during_a_long_spin_raises_ringclosed_at_once():
    # A call spinning (here for up to half a second) must notice close()
    # at once and raise RingClosed: an OSError, as the shm Pipe's recv (this
    # ring's recv_obj) must raise for a closed end.
    r = new_ring()
    r.spin_max_ns = 500_000_000
    err, took = _blocked_call(lambda: r.get(timeout=10), r.close)
    assert isinstance(err, ringmod.RingClosed) and isinstance(err, OSError), repr(err)
    assert took < 0.3


def test_close_wakes_wait_acked_and_aux_wait():
    r = new_ring()
    r.put(b"task")
    err, took = _blocked_call(lambda: r.wait_acked(timeout=10), r.close)
    assert isinstance(err, ringmod.RingClosed), repr(err)
    assert took < 0.5
    r = new_ring()
    err, took = _blocked_call(lambda: r.aux_wait(3, 0), r.close)   # no timeout
    assert isinstance(err, ringmod.RingClosed), repr(err)
    assert took < 0.5


class _End:
    """A connection as the compiled conn_send/conn_recv see one."""

    send = ringmod.conn_send
    recv = ringmod.conn_recv

    def __init__(self, ring, log):
        self._send_ring = self._recv_ring = ring
        self._log = log

    def _send(self, obj):
        self._log.append(("slow send", obj))

    def _recv(self):
        self._log.append("slow recv")
        return "slow"

    def __del__(self):
        self._log.append("gone")


def test_conn_recv_is_a_method_that_holds_its_end_for_the_call():
    # (It replaces the ring's `owner` weakref: as a method of the class, the
    # bound method holds the end, as a stdlib Connection's would.)
    import gc

    r = new_ring()
    r.dec_loads = bytes
    r.recv_wait = 10.0
    log = []
    end = _End(r, log)
    got = []
    th = threading.Thread(target=lambda: got.append(end.recv()))
    th.start()
    time.sleep(0.2)                                 # blocked in recv
    del end
    gc.collect()
    assert "gone" not in log                        # the call holds it
    r.put(b"x")
    th.join(10)
    gc.collect()
    assert got == [b"x"] and "gone" in log          # released with the call
    r.close()


def test_conn_send_bound_method_outlives_its_name():
    # s = conn.send; del conn; s(x) delivers, as with the stdlib (issue 19,
    # item 14): the bound method holds the end.
    r = new_ring()
    r.dec_loads = bytes
    r.enc_bytes_tag = -1
    r.enc_plain = frozenset({bytes})
    r.enc_dumps = bytes
    r.enc_big = r.enc_other = lambda obj, *rest: (bytes(obj), 0)
    log = []
    end = _End(r, log)
    s = end.send
    del end
    assert "gone" not in log
    s(b"hello")
    assert r.get(timeout=5) == b"hello"
    del s
    assert "gone" in log
    # With no ring to use, the call goes to the end's own _send/_recv.
    end = _End(None, log)
    end.send(1)
    assert end.recv() == "slow" and ("slow send", 1) in log
    with pytest.raises(TypeError):
        _End(object(), log).send(1)                 # not a Ring: refused, no crash
    r.close()


# ------------------------------------- a lock held by a live process

def _hold_lock_until(r, producer, held, release):
    r._test_hold_lock(producer)
    held.set()
    release.wait(20)
    r._test_release_lock(producer)


@pytest.mark.parametrize("producer", [True, False], ids=["producer", "consumer"])
def test_nonblocking_calls_do_not_wait_for_a_held_lock(producer):
    # Another process holds the side's lock (stopped mid-copy, say): a call
    # that must not block answers Full/Empty at once, a timed call within
    # its timeout; once the lock is free, both work again.
    r = new_ring(8192)
    r.put(b"m")
    held, release = FORK.Event(), FORK.Event()
    p = FORK.Process(target=_hold_lock_until, args=(r, producer, held, release))
    p.start()
    try:
        assert held.wait(10)
        if producer:
            calls = [(RingFull, lambda: r.put(b"n", block=False)),
                     (RingFull, lambda: r.put(b"n", timeout=0)),
                     (RingFull, lambda: r.put(b"n", timeout=0.2))]
        else:
            calls = [(RingEmpty, lambda: r.get(block=False)),
                     (RingEmpty, lambda: r.get(timeout=0)),
                     (RingEmpty, lambda: r.get_many(block=False)),
                     (RingEmpty, lambda: r.get(timeout=0.2))]
        for exc, call in calls:
            t = time.monotonic()
            with pytest.raises(exc):
                call()
            assert time.monotonic() - t < 0.6
        if producer:
            t = time.monotonic()
            assert r.put_many([b"n"], block=False) == 0
            assert time.monotonic() - t < 0.6
    finally:
        release.set()
        p.join(10)
    assert p.exitcode == 0
    if producer:
        r.put(b"n", block=False)
        assert r.get_many() == [b"m", b"n"]
    else:
        assert r.get(block=False) == b"m"
    r.close()


# ------------------------------------ damaged or truncated ring files

# File offset of the overflow reference {offset, length, flags} of a fresh
# ring's first record (its 8-byte header sits at the start of the data area).
REF = HDR + 8


def _get_fails_cleanly(r, match):
    # Run in a child: before the checks, reading such a record was a SIGBUS.
    with pytest.raises(RingError, match=match):
        r.get(timeout=2)


def _put_fails_cleanly(r, msg, match):
    with pytest.raises(RingError, match=match):
        r.put(msg, timeout=2)


@pytest.mark.parametrize("offset", ["past_end", "header", "unaligned"])
def test_a_corrupt_spill_record_is_an_error_not_a_crash(offset):
    r = new_ring(4096, area=0)
    r.put(b"x" * 10_000)                            # spills
    off, length, flags = struct.unpack("<QQQ", os.pread(r.fd, 24, REF))
    assert length == 10_000 and flags == 0
    bad = {"past_end": off + (1 << 30), "header": 0, "unaligned": off + 8}[offset]
    os.pwrite(r.fd, struct.pack("<Q", bad), REF)
    header = os.pread(r.fd, 64, 0)
    assert run_child(_get_fails_cleanly, r, "corrupt ring record") == 0
    assert os.pread(r.fd, 64, 0) == header          # nothing punched in the header
    assert r.qsize() == 1                           # the record stays (its error too)
    with pytest.raises(RingError, match="corrupt ring record"):
        r.get(timeout=1)
    assert r.drain() == 1                           # drain discards it, punches nothing
    assert os.pread(r.fd, 64, 0) == header
    r.put(b"after")
    assert r.get() == b"after"
    r.close()


def test_an_area_record_in_a_ring_without_area_is_an_error():
    r = new_ring(4096, area=0)
    r.put(b"x" * 10_000)
    os.pwrite(r.fd, struct.pack("<Q", 2), REF + 16)     # flags: MPX_OVF_AREA
    with pytest.raises(RingError, match="corrupt ring record"):
        r.get(timeout=1)
    r.close()


@pytest.mark.parametrize("area", [None, 0], ids=["area", "spill"])
def test_a_truncated_ring_file_is_an_error_not_a_crash(area):
    r = new_ring(4096, area=area)
    r.put(b"y" * 10_000)                            # in the area, or a spill extent
    os.ftruncate(r.fd, HDR + 4096 + 4096)          # cuts into the extent
    assert run_child(_get_fails_cleanly, r, "corrupt ring record") == 0
    r.close()


def test_a_producer_never_writes_into_a_truncated_area():
    r = new_ring(4096)
    r.put(b"y" * 10_000)
    assert r.get() == b"y" * 10_000                 # the area now has pages...
    os.ftruncate(r.fd, HDR + 4096)                 # ...which another process cut off
    assert run_child(_put_fails_cleanly, r, b"z" * 3000, "shorter") == 0
    r.close()


# ------------------------------------------------------------ is_full

def test_is_full_when_no_real_message_fits():
    # Two records leave 8 bytes free: room for an empty message only, which
    # no queue sends (an object's encoding is never empty). Every put of a
    # real message would wait, so the ring is full.
    r = new_ring(4096)
    r.put(b"a" * 2040)                              # record: 8 + 2040
    assert not r.is_full()
    r.put(b"b" * 2032)                              # record: 8 + 2032; 8 bytes left
    assert r.used_bytes() == 4088
    assert r.is_full()
    with pytest.raises(RingFull):
        r.put(b"c", block=False)
    r.get()
    assert not r.is_full()
    r.close()


# --------------------------------------------------------- environment

@pytest.mark.parametrize("var, value", [("MPX_SPIN_US", "abc"), ("MPX_SPIN_US", "-5"),
                                        ("MPX_SPIN_YIELD", "sometimes")])
def test_a_bad_tuning_variable_is_a_clear_error(var, value):
    import subprocess
    import sys
    env = dict(os.environ, **{var: value})
    p = subprocess.run([sys.executable, "-c", "import mpx._ext.ring"], env=env,
                       capture_output=True, text=True, timeout=60)
    assert p.returncode != 0
    last = p.stderr.strip().splitlines()[-1]
    assert var in last and repr(value) in last, last


# ------------------------------------------------ kills at chosen points

def _crash_put(r, point, msg):
    r.crash_point = ringmod.CRASH_POINTS[point]
    r.put(msg)


def _crash_get(r, point):
    r.crash_point = ringmod.CRASH_POINTS[point]
    r.get(timeout=10)


def _hold_and_die(r, producer):
    r._test_hold_lock(producer)
    os.kill(os.getpid(), signal.SIGKILL)


OVERFLOWS = [(100, None), (50_000, None), (50_000, 0)]
OVERFLOW_IDS = ["inline", "area", "spill"]


@pytest.mark.parametrize("size, area", OVERFLOWS, ids=OVERFLOW_IDS)
def test_producer_killed_before_publishing_leaves_nothing(size, area):
    r = new_ring(16384, area=area)
    r.put(b"before")
    assert run_child(_crash_put, r, "producer_before_publish", b"k" * size) == -signal.SIGKILL
    assert r.qsize() == 1
    r.put(b"after", timeout=5)                  # the lock is taken over
    assert r.info()["repairs"] == 1
    assert r.info()["area_used"] == 0           # a claim in the area is undone
    assert r.get_many() == [b"before", b"after"]
    # A half-written spill extent is freed; a claimed piece of the area is
    # given back with the next area message consumed.
    assert spilled(r) == 0
    r.put(b"a" * 50_000)
    assert r.get() == b"a" * 50_000
    assert r.info()["area_used"] == 0
    r.close()


@pytest.mark.parametrize("area", [0, None], ids=["spill", "area"])
def test_producer_killed_after_publishing_keeps_its_message(area):
    r = new_ring(16384, area=area)
    big = os.urandom(50_000)
    assert run_child(_crash_put, r, "producer_after_publish", big) == -signal.SIGKILL
    r.put(b"after", timeout=5)
    assert r.info()["repairs"] == 1
    assert r.get() == big                       # the repair did not free it
    assert r.get() == b"after"
    r.close()


@pytest.mark.parametrize("size, area", OVERFLOWS, ids=OVERFLOW_IDS)
def test_consumer_killed_after_copying_leaves_the_message(size, area):
    r = new_ring(16384, area=area)
    msg = os.urandom(size)
    r.put(msg)
    r.put(b"second")
    assert run_child(_crash_get, r, "consumer_after_copy") == -signal.SIGKILL
    assert r.get(timeout=5) == msg              # exactly once: still there
    assert r.info()["repairs"] == 1
    assert r.get() == b"second"
    r.close()


def test_consumer_killed_between_head_and_area_gives_the_extent_back():
    r = new_ring(16384, area=1 << 20)
    msg = os.urandom(50_000)
    r.put(msg)
    r.put(b"second")
    assert run_child(_crash_get, r, "consumer_after_head") == -signal.SIGKILL
    assert r.info()["area_used"] > 0           # consumed, extent still held
    assert r.get(timeout=5) == b"second"        # the take-over finishes the job
    assert r.info()["area_used"] == 0 and r.info()["repairs"] == 1
    r.close()


def _put_two_big(r, msgs, out):
    try:
        for m in msgs:
            r.put(m, timeout=10)
        out.put("done")
    except RingFull:
        out.put("stuck")


def test_producer_waiting_for_area_room_repairs_a_dead_consumer():
    # The area holds one message (backlog 0 and room for two of this size
    # means the second waits until the first is given back); the consumer
    # that took the first dies before giving it back, and no other consumer
    # comes: the waiting producer must repair it on its own.
    r = new_ring(16384, area=128 * 1024, area_backlog=0)
    a, b, c = (os.urandom(60_000) for _ in range(3))
    r.put(a)
    r.put(b)
    assert run_child(_crash_get, r, "consumer_after_head") == -signal.SIGKILL
    out = FORK.SimpleQueue()
    p = FORK.Process(target=_put_two_big, args=(r, [c], out))
    p.start()
    assert out.get() == "done"                  # not stuck behind the dead one
    p.join(10)
    assert r.get_many() == [b, c]
    r.close()


def test_consumer_killed_after_taking_a_spilled_message():
    r = new_ring(16384, area=0)
    r.put(os.urandom(50_000))
    r.put(b"second")
    assert run_child(_crash_get, r, "consumer_after_taken") == -signal.SIGKILL
    # Its message went with it; the next consumer frees the extent, skips it.
    assert r.get(timeout=5) == b"second"
    assert r.qsize() == 0 and spilled(r) == 0
    r.close()


@pytest.mark.parametrize("block", [True, False], ids=["timed", "nonblocking"])
@pytest.mark.parametrize("producer", [True, False], ids=["producer", "consumer"])
def test_lock_holder_killed_does_not_wedge(producer, block):
    # A dead holder is repaired at the first try, also by a call that must
    # not wait (which otherwise gives up on a held lock).
    r = new_ring()
    r.put(b"m")
    assert run_child(_hold_and_die, r, producer) == -signal.SIGKILL
    t = time.monotonic()
    if producer:
        r.put(b"n", block=block, timeout=5 if block else None)
        assert r.get_many() == [b"m", b"n"]
    else:
        assert r.get(block=block, timeout=5 if block else None) == b"m"
    assert time.monotonic() - t < 1
    assert r.info()["repairs"] == 1
    r.close()


def _out_of_memory(out):
    import resource

    # fallocate past RLIMIT_FSIZE fails the way a full /dev/shm does; the
    # overflow area and spill extents lie beyond the limit.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (HDR + 65536,) * 2)
    r = new_ring(65536, area=1 << 20)
    results = []
    r.put(b"fits")
    for size in (100_000, 5_000_000):          # too big for the ring: area, then spill
        try:
            r.put(os.urandom(size))
        except OSError as e:
            results.append(e.errno)
    results.append((r.qsize(), r.get()))
    r.put(b"still works")
    results.append(r.get())
    out.put(results)


def test_running_out_of_shared_memory_is_an_error_not_a_crash():
    out = FORK.SimpleQueue()
    assert run_child(_out_of_memory, out) == 0
    assert out.get() == [27, 27, (1, b"fits"), b"still works"]      # EFBIG, cleanly


# ------------------------------------------- issue 19 (items 9, 11)

@pytest.mark.parametrize("kw, exc, error", [
    ({"inline_max": -1}, ValueError, "inline_max must be"),
    ({"inline_max": 2 ** 70}, ValueError, "inline_max must be"),
    ({"area_backlog": 2 ** 70}, ValueError, "area_backlog must be"),
    ({"area": "x"}, TypeError, "area must be an int"),
    ({"maxsize": -1}, ValueError, "maxsize must be"),
    ({"kind": 2 ** 32}, ValueError, "kind must be"),
    ({"ring_id": -1}, ValueError, "ring_id must be"),
    ({"capacity": 2.5}, TypeError, "capacity must be an int"),
])
def test_failed_create_leaves_the_descriptor_to_the_caller_untouched(kw, exc, error):
    # Checked before the file is touched: the error names the argument, the
    # descriptor is still open (the caller closes it, once) and still empty.
    fd = os.memfd_create("test-ring", os.MFD_CLOEXEC)
    try:
        args = {"capacity": 4096, **kw}
        with pytest.raises(exc, match=error):
            Ring.create(fd, args.pop("capacity"), **args)
        assert os.fstat(fd).st_size == 0
        Ring.create(os.dup(fd), 4096).close()          # still usable
    finally:
        os.close(fd)


def test_check_layout_is_what_create_makes():
    lay = ringmod.check_layout(5000, 7, inline_max=10, area=1, area_backlog=0)
    assert lay == {"capacity": 8192, "maxsize": 7, "inline_max": 64,
                   "area": os.sysconf("SC_PAGESIZE"), "area_backlog": 0}
    r = new_ring(5000, maxsize=7, inline_max=10, area=1, area_backlog=0)
    info = r.info()
    assert (info["capacity"], info["maxsize"], info["inline_max"], info["area_size"]) == \
        (8192, 7, 64, os.sysconf("SC_PAGESIZE"))
    r.close()


def test_only_sealable_files_are_sealed():
    import fcntl
    want = fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
    r = Ring.create(os.memfd_create("t", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING), 4096)
    assert r.seals & want == want
    with pytest.raises(PermissionError):
        os.ftruncate(r.fd, 0)
    r.close()
    r = new_ring()                      # no MFD_ALLOW_SEALING: left as it is
    assert not r.seals & fcntl.F_SEAL_SHRINK
    r.close()


@pytest.mark.parametrize("wait", ["get", "put", "put_many", "get_many", "wait_readable",
                                  "wait_acked", "aux_wait"])
def test_ring_waits_refuse_nan_and_do_not_wait_on_negative_timeouts(wait):
    r = new_ring(4096, maxsize=1)
    if wait in ("put", "put_many", "wait_acked"):
        r.put(b"x")                      # full, and not acked: these would wait
    calls = {
        "get": lambda t: r.get(timeout=t),
        "put": lambda t: r.put(b"y", timeout=t),
        "put_many": lambda t: r.put_many([b"y"], timeout=t),
        "get_many": lambda t: r.get_many(timeout=t),
        "wait_readable": lambda t: r.wait_readable(t),
        "wait_acked": lambda t: r.wait_acked(t),
        "aux_wait": lambda t: r.aux_wait(0, 0, t),
    }
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="NaN"):
        calls[wait](float("nan"))
    try:
        assert not calls[wait](-1)       # the wait ends at once, unmet
    except (RingEmpty, RingFull):
        pass
    with pytest.raises(TypeError, match="timeout must be"):
        calls[wait]("1")
    assert time.monotonic() - t0 < 1
    r.close()


def test_ring_waits_take_inf_and_huge_timeouts_as_for_ever():
    r = new_ring()
    for timeout in (float("inf"), 1e300, 10 ** 30, 10 ** 9 + 0.5):
        threading.Timer(0.1, r.put, (b"late",)).start()
        assert r.get(timeout=timeout) == b"late"
    threading.Timer(0.1, r.aux_store, (0, 1)).start()
    threading.Timer(0.15, r.aux_wake, (0,)).start()
    assert r.aux_wait(0, 0, float("inf")) is True
    r.close()


def test_shared_word_wait_reads_timeouts_as_every_mpx_wait():
    # (sync.pyx's wait converted timeout * 1e9 to int64: undefined for NaN,
    # inf or anything huge, a hang in practice.)
    import mmap
    from mpx._ext import sync
    buf = mmap.mmap(-1, 4096)
    w = sync.SharedWord(buf, 0)
    t0 = time.monotonic()
    with pytest.raises(ValueError, match="NaN"):
        w.wait(0, timeout=float("nan"))
    assert w.wait(0, timeout=-1) is False
    assert w.wait(0, timeout=0.05) is False
    assert time.monotonic() - t0 < 1
    for timeout in (float("inf"), 1e300, 10 ** 30):
        threading.Timer(0.1, lambda: (w.store(1), w.wake())).start()
        assert w.wait(0, timeout=timeout) is True
        w.store(0)
    w.release()
    buf.close()
