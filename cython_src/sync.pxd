# Low-level synchronisation shared by every mpx extension module: atomics on
# words in shared memory, Linux futex wait/wake (process-shared, so NOT the
# FUTEX_PRIVATE variants) and the monotonic clock.
#
# Everything here is `cdef inline` so that other modules (the ring) compile it
# in directly: no cross-module C-API import is needed at run time.

from libc.stdint cimport uint32_t, uint64_t, int64_t
from libc.errno cimport errno, EINTR, EAGAIN, ETIMEDOUT
from posix.time cimport timespec, clock_gettime, CLOCK_MONOTONIC

cdef extern from *:
    """
    #include <stdint.h>
    #include <sched.h>
    #include <unistd.h>
    #include <sys/syscall.h>
    #include <linux/futex.h>

    static inline uint32_t mpx_load32(uint32_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void mpx_store32(uint32_t *p, uint32_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline uint32_t mpx_add32(uint32_t *p, uint32_t v) { return __atomic_fetch_add(p, v, __ATOMIC_ACQ_REL); }
    static inline int mpx_cas32(uint32_t *p, uint32_t expected, uint32_t desired) {
        return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
    static inline uint64_t mpx_load64(uint64_t *p) { return __atomic_load_n(p, __ATOMIC_ACQUIRE); }
    static inline void mpx_store64(uint64_t *p, uint64_t v) { __atomic_store_n(p, v, __ATOMIC_RELEASE); }
    static inline uint64_t mpx_add64(uint64_t *p, uint64_t v) { return __atomic_fetch_add(p, v, __ATOMIC_ACQ_REL); }
    static inline int mpx_cas64(uint64_t *p, uint64_t expected, uint64_t desired) {
        return __atomic_compare_exchange_n(p, &expected, desired, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE);
    }
    static inline void mpx_cpu_relax(void) {
    #if defined(__x86_64__) || defined(__i386__)
        __builtin_ia32_pause();
    #elif defined(__aarch64__)
        __asm__ __volatile__("yield");
    #endif
    }
    /* Returns 0 when woken or when *addr no longer held `expected`,
       otherwise the errno (ETIMEDOUT, EINTR). timeout_ns < 0 waits forever. */
    static inline int mpx_futex_wait(uint32_t *addr, uint32_t expected, int64_t timeout_ns) {
        struct timespec ts, *pts = NULL;
        if (timeout_ns >= 0) {
            ts.tv_sec = (time_t)(timeout_ns / 1000000000LL);
            ts.tv_nsec = (long)(timeout_ns % 1000000000LL);
            pts = &ts;
        }
        if (syscall(SYS_futex, addr, FUTEX_WAIT, expected, pts, NULL, 0) == 0)
            return 0;
        return errno == EAGAIN ? 0 : errno;
    }
    static inline int mpx_futex_wake(uint32_t *addr, int n) {
        long r = syscall(SYS_futex, addr, FUTEX_WAKE, n, NULL, NULL, 0);
        return r < 0 ? -errno : (int)r;
    }
    """
    uint32_t mpx_load32(uint32_t* p) noexcept nogil
    void mpx_store32(uint32_t* p, uint32_t v) noexcept nogil
    uint32_t mpx_add32(uint32_t* p, uint32_t v) noexcept nogil
    bint mpx_cas32(uint32_t* p, uint32_t expected, uint32_t desired) noexcept nogil
    uint64_t mpx_load64(uint64_t* p) noexcept nogil
    void mpx_store64(uint64_t* p, uint64_t v) noexcept nogil
    uint64_t mpx_add64(uint64_t* p, uint64_t v) noexcept nogil
    bint mpx_cas64(uint64_t* p, uint64_t expected, uint64_t desired) noexcept nogil
    void mpx_cpu_relax() noexcept nogil
    int mpx_futex_wait(uint32_t* addr, uint32_t expected, int64_t timeout_ns) noexcept nogil
    int mpx_futex_wake(uint32_t* addr, int n) noexcept nogil
    int sched_yield() noexcept nogil


cdef inline int64_t monotonic_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec
