"""mpx._ext.sync: futex wait/wake on shared words and the monotonic clock."""

import mmap
import os
import signal
import time

import pytest

from mpx._ext import sync


@pytest.fixture
def shared():
    m = mmap.mmap(-1, 4096)       # MAP_SHARED | MAP_ANONYMOUS: survives fork
    yield m
    m.close()


def test_monotonic_advances():
    a = sync.monotonic()
    time.sleep(0.01)
    b = sync.monotonic()
    assert 0.009 < b - a < 1.0
    assert abs(sync.monotonic() - time.monotonic()) < 0.01


def test_atomic_ops(shared):
    w = sync.SharedWord(shared, 8)
    assert w.load() == 0
    w.store(41)
    assert w.add(1) == 41 and w.load() == 42
    assert not w.compare_exchange(0, 7) and w.load() == 42
    assert w.compare_exchange(42, 7) and w.load() == 7
    w.store(0xFFFFFFFF)
    assert w.add(1) == 0xFFFFFFFF and w.load() == 0     # wraps like a uint32
    w.release()


def test_bad_word_arguments(shared):
    with pytest.raises(ValueError, match="aligned"):
        sync.SharedWord(shared, 2)
    with pytest.raises(ValueError, match="outside"):
        sync.SharedWord(shared, 4094)
    with pytest.raises(BufferError, match="not writable"):
        sync.SharedWord(b"read-only bytes", 0)
    w = sync.SharedWord(shared, 0)
    w.release()
    with pytest.raises(ValueError, match="released"):
        w.load()
    assert sync.SharedWord(shared, 0).wait(0, timeout=-1) is False   # no wait


def test_wait_returns_at_once_when_value_differs(shared):
    w = sync.SharedWord(shared, 0)
    w.store(3)
    t = time.monotonic()
    assert w.wait(2, timeout=5) is True
    assert time.monotonic() - t < 0.5


@pytest.mark.parametrize("spin", [0, 1000])
def test_wait_times_out(shared, spin):
    w = sync.SharedWord(shared, 0)
    t = time.monotonic()
    assert w.wait(0, timeout=0.05, spin=spin) is False
    assert 0.045 <= time.monotonic() - t < 1.0


def test_wake_across_processes(shared):
    w = sync.SharedWord(shared, 0)
    pid = os.fork()
    if pid == 0:       # child: wait for the value to change, then answer
        try:
            ok = w.wait(0, timeout=10, spin=0)
            sync.SharedWord(shared, 4).store(1 if ok else 2)
            sync.SharedWord(shared, 4).wake()
        finally:
            os._exit(0)
    try:
        time.sleep(0.05)          # let the child fall asleep in the kernel
        w.store(1)
        w.wake()
        answer = sync.SharedWord(shared, 4)
        assert answer.wait(0, timeout=10) is True
        assert answer.load() == 1
    finally:
        os.waitpid(pid, 0)


def test_wake_with_no_sleepers_returns_zero(shared):
    assert sync.SharedWord(shared, 0).wake() == 0


def test_keyboard_interrupt_gets_through_a_wait(shared):
    w = sync.SharedWord(shared, 0)

    def interrupt(signum, frame):
        raise KeyboardInterrupt

    old = signal.signal(signal.SIGALRM, interrupt)
    signal.setitimer(signal.ITIMER_REAL, 0.1)
    try:
        t = time.monotonic()
        with pytest.raises(KeyboardInterrupt):
            w.wait(0, timeout=None, spin=0)     # forever, but for the signal
        assert time.monotonic() - t < 5
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


def test_signal_handler_that_returns_does_not_end_the_wait(shared):
    w = sync.SharedWord(shared, 0)
    hits = []
    old = signal.signal(signal.SIGALRM, lambda s, f: hits.append(s))
    signal.setitimer(signal.ITIMER_REAL, 0.02)
    try:
        t = time.monotonic()
        assert w.wait(0, timeout=0.2, spin=0) is False   # EINTR retried
        assert time.monotonic() - t >= 0.19
        assert hits
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
