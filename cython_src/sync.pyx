# Python face of sync.pxd: lets tests (and Python code that needs a one-off
# cross-process word) drive the futex helpers on any writable buffer, such as
# an mmap shared between processes.
#
# wait_word() is the spin-then-sleep wait every mpx waiter uses: spin briefly
# (cheap on a busy pipeline, where the value usually changes within
# microseconds), then sleep in the kernel so an idle waiter costs no CPU.

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_WRITABLE
from cpython.exc cimport PyErr_CheckSignals, PyErr_SetFromErrno
from libc.stdint cimport uint32_t, int64_t, uintptr_t
from sync cimport (mpx_load32, mpx_store32, mpx_add32, mpx_cas32, mpx_cpu_relax,
                   mpx_futex_wait, mpx_futex_wake, monotonic_ns, sched_yield,
                   mpx_crowded, mpx_ncpu, EINTR, ETIMEDOUT)

import os

# How many pause-loop iterations a waiter spins before it sleeps in the kernel.
# A cross-process futex round trip costs ~40 us on this kind of VM, a spin
# round trip ~0.1 us, so a few thousand iterations pay for themselves.
DEFAULT_SPIN = int(os.environ.get("MPX_SPIN", "2000"))


def crowded():
    """True when more tasks are runnable than this process has cores (see
    mpx_crowded in sync.pxd): then a waiter should sleep, not spin."""
    return mpx_crowded(monotonic_ns())


def cpu_count():
    """The cores this process may run on (its affinity mask)."""
    return mpx_ncpu()


def monotonic():
    """Seconds on the monotonic clock (the clock every mpx timeout uses)."""
    return monotonic_ns() / 1e9


def monotonic_ns_():
    """Nanoseconds on the monotonic clock."""
    return monotonic_ns()


cdef class SharedWord:
    """A 32-bit word at `offset` inside a writable buffer (usually shared memory).

    The buffer must stay alive and unmoved while the word is used; SharedWord
    keeps a buffer reference for exactly that reason.
    """
    cdef Py_buffer view
    cdef uint32_t* addr
    cdef bint held

    def __cinit__(self, buf, Py_ssize_t offset=0):
        PyObject_GetBuffer(buf, &self.view, PyBUF_WRITABLE)
        self.held = True
        if offset < 0 or offset + 4 > self.view.len:
            raise ValueError(f"offset {offset} is outside the {self.view.len}-byte buffer")
        if (<uintptr_t>self.view.buf + offset) % 4:
            raise ValueError("a futex word must be 4-byte aligned")
        self.addr = <uint32_t*>(<char*>self.view.buf + offset)

    def __dealloc__(self):
        if self.held:
            PyBuffer_Release(&self.view)

    def release(self):
        """Drop the buffer reference (after this the word must not be used)."""
        if self.held:
            PyBuffer_Release(&self.view)
            self.held = False
            self.addr = NULL

    cdef inline uint32_t* _addr(self) except NULL:
        if self.addr == NULL:
            raise ValueError("SharedWord has been released")
        return self.addr

    def load(self):
        return mpx_load32(self._addr())

    def store(self, uint32_t value):
        mpx_store32(self._addr(), value)

    def add(self, uint32_t delta):
        """Atomically add `delta`; returns the previous value."""
        return mpx_add32(self._addr(), delta)

    def compare_exchange(self, uint32_t expected, uint32_t desired):
        """Atomically set to `desired` if equal to `expected`; True if it was."""
        return mpx_cas32(self._addr(), expected, desired)

    def wake(self, int n=2147483647):
        """Wake up to `n` processes sleeping on this word; returns how many woke."""
        cdef int r = mpx_futex_wake(self._addr(), n)
        if r < 0:
            import errno as _errno
            raise OSError(-r, os.strerror(-r))
        return r

    def wait(self, uint32_t expected, timeout=None, int spin=-1):
        """Block while the word equals `expected`.

        Returns True once the value differs, False if `timeout` (seconds)
        passes first. `timeout` is read by mpx._timeouts.seconds, as every
        mpx wait reads it: None or inf waits forever, a negative timeout does
        not wait, NaN is a ValueError at once. Signals are honoured: a
        KeyboardInterrupt raised by a handler comes through.
        """
        cdef uint32_t* addr = self._addr()
        cdef int64_t deadline = -1
        cdef double t
        if timeout is not None:
            from mpx._timeouts import seconds
            left = seconds(timeout)
            # (Converting a NaN, an inf or anything past 2**63 ns to int64 is
            # undefined in C: only a finite wait below ~30 years is a deadline.)
            if left is not None and left <= 1e9:
                t = left
                deadline = monotonic_ns() + <int64_t>(t * 1e9)
        return wait_word(addr, expected, deadline, DEFAULT_SPIN if spin < 0 else spin) == 1


cdef int wait_word(uint32_t* addr, uint32_t expected, int64_t deadline, int spin) except -1:
    """Spin, then futex-sleep, while *addr == expected. deadline < 0: forever.

    Returns 1 when the value changed, 0 on timeout. The GIL is released while
    spinning and sleeping; EINTR runs the Python signal handlers and retries.
    """
    cdef int i, r
    cdef int64_t left
    with nogil:
        for i in range(spin):
            if mpx_load32(addr) != expected:
                return 1
            mpx_cpu_relax()
    while True:
        if mpx_load32(addr) != expected:
            return 1
        if deadline >= 0:
            left = deadline - monotonic_ns()
            if left <= 0:
                return 0
        else:
            left = -1
        with nogil:
            r = mpx_futex_wait(addr, expected, left)
        if r == EINTR:
            PyErr_CheckSignals()    # raises KeyboardInterrupt etc.
        elif r != 0 and r != ETIMEDOUT:
            import errno as _errno
            raise OSError(r, os.strerror(r))
