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
    #include <fcntl.h>
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

    /* Whether the machine is crowded: more tasks runnable right now than
       this process has cores. Then a spinning waiter only steals time from
       the process it waits for (which may be waiting for its core), so
       every spin-then-sleep wait of mpx (the ring's, the Manager's stream
       transports') asks this before spinning. The count (the 4th field of
       /proc/loadavg, "running/total") is of one instant and flickers (a
       process starting, a kernel worker), so it is sampled every 20 ms,
       and a crowded answer is looked at again after 4 ms: a passing crowd
       costs a few hundred slow waits, not a thousand. `now_ns` is the
       monotonic clock. Each extension that compiles this in keeps its own
       sample; that costs one read of /proc/loadavg per 20 ms each. */
    static int mpx_ncpu(void) {
        static int n = 0;
        if (n == 0) {
            cpu_set_t set;
            n = sched_getaffinity(0, sizeof(set), &set) == 0 ? CPU_COUNT(&set) : 0;
            if (n <= 0) n = (int)sysconf(_SC_NPROCESSORS_ONLN);
            if (n <= 0) n = 1;
        }
        return n;
    }
    static int mpx_nr_running(void) {   /* -1 if unknown */
        char buf[128];
        int fd = open("/proc/loadavg", O_RDONLY | O_CLOEXEC);
        if (fd < 0) return -1;
        ssize_t n = read(fd, buf, sizeof(buf) - 1);
        close(fd);
        if (n <= 0) return -1;
        buf[n] = 0;
        char *p = buf;
        for (int spaces = 0; *p && spaces < 3; p++)
            if (*p == ' ') spaces++;
        int r = 0, digits = 0;
        while (*p >= '0' && *p <= '9') { r = r * 10 + (*p - '0'); p++; digits++; }
        return digits ? r : -1;
    }
    static int mpx_crowded(int64_t now_ns) {
        static int64_t checked = 0;
        static int crowded = 0;
        if (now_ns - checked > (crowded ? 4000000 : 20000000)) {
            checked = now_ns;
            crowded = mpx_nr_running() > mpx_ncpu();
        }
        return crowded;
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
    int mpx_ncpu() noexcept nogil
    bint mpx_crowded(int64_t now_ns) noexcept nogil


cdef inline int64_t monotonic_ns() noexcept nogil:
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return <int64_t>ts.tv_sec * 1000000000 + ts.tv_nsec
