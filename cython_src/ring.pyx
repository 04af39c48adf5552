# The shared-memory ring (see ring.pxd for the layout and the design).
#
# Python face, used by the shm backend (mpx/backends/shm/: its queues, and
# its Pipe with one ring per direction):
#
#   Ring.create(fd, capacity, ...)   initialise a new ring in the file `fd`
#   Ring.attach(fd)                  map an existing ring, validating its header
#   ring.put(msg, tag, block, timeout)        msg: bytes-like or list of parts
#   ring.put_many(items, block, timeout)      -> how many were put
#   ring.get(block, timeout)                  -> bytes, or (tag, [parts])
#   ring.get_many(max_items, block, timeout)  -> list of the above
#   ring.put_obj(obj, ...), ring.get_obj(...) the same through the enc_*/dec_*
#                                             hooks the policy layer sets
#   ring.wait_readable(timeout)               for Connection.poll
#   ring.shutdown(), ring.drain(), ring.ack(n), ring.wait_acked(timeout),
#   ring.aux_*(i, ...)                        15 spare 32-bit futex words
#   ring.send_obj(obj), ring.recv_obj()       a channel's send/recv (hooks on_*)
#   conn_send(conn, obj), conn_recv(conn)     the same as a Connection's methods
#   queue_put(q, obj, ...), queue_get(q, ...) put_obj/get_obj as a queue's methods
#   ring.close()                              blocked calls of this process raise
#                                             RingClosed (an OSError)
#
# The exceptions raised (empty_exc, full_exc, shutdown_exc) are set per ring
# by the policy layer. A message is a list of byte strings ("parts") plus an
# 8-bit tag. A single-part message with tag 0 comes back as plain `bytes`
# (the common case, kept cheap); anything else comes back as
# (tag, [part0, part1, ...]) where part0 is bytes and the later parts are
# writable bytearrays (so that numpy arrays rebuilt on them are writable, as
# after a stdlib queue).
#
# Every copy of a large message runs without the GIL. Records too big for
# the ring go to the overflow area or to spill extents of the same file
# (see ring.pxd): nothing ever lives outside the ring's own file, so an
# anonymous ring (a memfd) can never leave anything behind in /dev/shm.

from cpython.buffer cimport PyObject_GetBuffer, PyBuffer_Release, PyBUF_SIMPLE
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING
from cpython.bytearray cimport PyByteArray_FromStringAndSize, PyByteArray_AS_STRING
from cpython.exc cimport PyErr_CheckSignals
from cpython.mem cimport PyMem_Malloc, PyMem_Free
from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t, INT32_MAX
from libc.string cimport memcpy, memset
from libc.limits cimport LONG_MAX as PY_SSIZE_T_MAX
from posix.time cimport timespec
from posix.time cimport CLOCK_MONOTONIC

from sync cimport (mpx_load32, mpx_store32, mpx_add32, mpx_cas32,
                   mpx_load64, mpx_store64, mpx_add64, mpx_cas64,
                   mpx_cpu_relax, mpx_futex_wait, mpx_futex_wake, monotonic_ns,
                   sched_yield, mpx_crowded, EINTR, ETIMEDOUT)

from ring cimport (pthread_mutex_t, pthread_mutexattr_t, pthread_mutexattr_init,
                   pthread_mutexattr_destroy, pthread_mutexattr_setpshared,
                   pthread_mutexattr_setrobust, pthread_mutex_init,
                   pthread_mutex_trylock, pthread_mutex_clocklock,
                   pthread_mutex_unlock, pthread_mutex_consistent,
                   PTHREAD_PROCESS_SHARED, PTHREAD_MUTEX_ROBUST,
                   mpx_ring_header, mpx_rec_hdr, mpx_ovf_ref,
                   MPX_RING_MAGIC, MPX_RING_VERSION, MPX_RING_HDR_SIZE, MPX_HOLDERS,
                   MPX_F_SHUT, MPX_F_WAIT, MPX_F_MASK, MPX_POS_MOD, MPX_POS_MASK,
                   MPX_CNT_MASK, MPX_ACK_WAIT, MPX_MAX_CAPACITY,
                   MPX_REC_INLINE, MPX_REC_OVERFLOW, MPX_OVF_TAKEN, MPX_OVF_AREA,
                   mpx_pos, mpx_cnt, mpx_pack, mpx_used, mpx_count, mpx_lo32)

import operator
import os

include "compact.pxi"

cdef extern from *:
    """
    #include <errno.h>
    #include <fcntl.h>
    #include <signal.h>
    #include <string.h>
    #include <sys/mman.h>
    #include <sys/stat.h>
    #include <unistd.h>
    #if defined(__x86_64__)
    #include <emmintrin.h>
    #endif

    static inline int mpx_errno(void) { return errno; }

    static inline void mpx_punch(int fd, uint64_t off, uint64_t len) {
        if (len) (void)fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, (off_t)off, (off_t)len);
    }
    static inline int mpx_fallocate(int fd, uint64_t off, uint64_t len) {
        int r;
        do { r = fallocate(fd, 0, (off_t)off, (off_t)len); } while (r < 0 && errno == EINTR);
        return r < 0 ? errno : 0;
    }
    static inline int mpx_pid_gone(int pid) {
        return kill(pid, 0) < 0 && errno == ESRCH;
    }
    static inline void *mpx_map(size_t len, int prot, int fd, uint64_t off) {
        void *p = mmap(NULL, len, prot, MAP_SHARED | MAP_POPULATE, fd, (off_t)off);
        return p == MAP_FAILED ? NULL : p;
    }
    /* Give the unnamed file `fd` (opened with O_TMPFILE) the name `path`:
       0, or the errno. */
    static inline int mpx_flink(int fd, const char *path) {
        return linkat(fd, "", AT_FDCWD, path, AT_EMPTY_PATH) < 0 ? errno : 0;
    }
    /* Seal a file against shrinking, and its seals against change, where
       the file allows it (a memfd made with MFD_ALLOW_SEALING); elsewhere
       (a /dev/shm file, whose seals are closed from birth) nothing. */
    static inline void mpx_seal_size(int fd) {
    #if defined(F_ADD_SEALS) && defined(F_SEAL_SHRINK) && defined(F_SEAL_SEAL)
        (void)fcntl(fd, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_SEAL);
    #endif
    }
    /* The seals of `fd` (F_GET_SEALS), or -1 where it has none to tell. */
    static inline int mpx_get_seals(int fd) {
    #ifdef F_GET_SEALS
        return fcntl(fd, F_GET_SEALS);
    #else
        return -1;
    #endif
    }
    /* An eventfd bell: ring it (a saturated counter is rung anyway), and
       take a ring back (1 if there was one). */
    static inline void mpx_bell_ring(int fd) {
        uint64_t one = 1;
        while (write(fd, &one, 8) < 0 && errno == EINTR) {}
    }
    static inline int mpx_bell_take(int fd) {
        uint64_t v;
        ssize_t r;
        do { r = read(fd, &v, 8); } while (r < 0 && errno == EINTR);
        return r == 8;
    }
    /* Large messages and where their reader runs. With the reader on
       another core, plain stores must first take each cache line away from
       that core, which read it on the ring's last lap: a 1 MiB message
       cost its writer ~180 us here (6 GB/s for the pair). Non-temporal
       stores skip that and go to memory: 15 GB/s. With both on one core
       (the scheduler often puts a waker and its wakee together) the
       message is still in that core's cache, and plain stores win, 16
       against 8 GB/s. So each reader of a large message notes its core in
       the ring's own aux word, and each writer of one streams unless that
       core is its own. */
    #define MPX_STREAM_MIN (256u << 10)
    #define MPX_AUX_READER_CPU 14
    static inline void mpx_note_reader_cpu(uint32_t *word) {
        int cpu = sched_getcpu();
        uint32_t v = cpu < 0 ? 0 : (uint32_t)cpu + 1;
        if (__atomic_load_n(word, __ATOMIC_RELAXED) != v)
            __atomic_store_n(word, v, __ATOMIC_RELAXED);
    }
    static inline int mpx_reader_elsewhere(uint32_t *word) {
        int cpu = sched_getcpu();
        return cpu < 0 || __atomic_load_n(word, __ATOMIC_RELAXED) != (uint32_t)cpu + 1;
    }
    /* memcpy, or (stream, x86-64) non-temporal stores; the sfence orders
       them before the release store that publishes the message. */
    static inline void mpx_copy_for_reader(char *dst, const char *src, size_t n, int stream) {
    #if defined(__x86_64__)
        if (stream) {
            size_t head = (16 - ((uintptr_t)dst & 15)) & 15, i;
            if (head > n) head = n;
            memcpy(dst, src, head);
            dst += head; src += head; n -= head;
            for (i = 0; i + 64 <= n; i += 64) {
                __m128i a = _mm_loadu_si128((const __m128i *)(src + i));
                __m128i b = _mm_loadu_si128((const __m128i *)(src + i + 16));
                __m128i c = _mm_loadu_si128((const __m128i *)(src + i + 32));
                __m128i d = _mm_loadu_si128((const __m128i *)(src + i + 48));
                _mm_stream_si128((__m128i *)(dst + i), a);
                _mm_stream_si128((__m128i *)(dst + i + 16), b);
                _mm_stream_si128((__m128i *)(dst + i + 32), c);
                _mm_stream_si128((__m128i *)(dst + i + 48), d);
            }
            _mm_sfence();
            memcpy(dst + i, src + i, n - i);
            return;
        }
    #endif
        (void)stream;
        memcpy(dst, src, n);
    }
    static inline int64_t mpx_file_size(int fd) {
        struct stat st;
        if (fstat(fd, &st) < 0) return -1;
        return (int64_t)st.st_size;
    }

    /* This process's pid, kept current by a fork handler: getpid() is a
       system call (~0.2 us here, as much as a whole put), too slow for the
       entry of every ring call. pthread_atfork covers every fork() of the
       process (os.fork, multiprocessing, C code); children made by vfork or
       posix_spawn skip it but exec before running any of this. */
    static int mpx_pid_now;
    static void mpx_after_fork_child(void) { mpx_pid_now = (int)getpid(); }
    static int mpx_pid_init(void) {
        mpx_pid_now = (int)getpid();
        return pthread_atfork(NULL, NULL, mpx_after_fork_child);
    }
    """
    int mpx_errno() noexcept nogil
    void mpx_punch(int fd, uint64_t off, uint64_t length) noexcept nogil
    int mpx_fallocate(int fd, uint64_t off, uint64_t length) noexcept nogil
    int mpx_pid_gone(int pid) noexcept nogil
    void* mpx_map(size_t length, int prot, int fd, uint64_t off) noexcept nogil
    int64_t mpx_file_size(int fd) noexcept nogil
    void mpx_copy_for_reader(char* dst, const char* src, size_t n, bint stream) noexcept nogil
    void mpx_note_reader_cpu(uint32_t* word) noexcept nogil
    bint mpx_reader_elsewhere(uint32_t* word) noexcept nogil
    unsigned int MPX_STREAM_MIN
    int MPX_AUX_READER_CPU
    void mpx_bell_ring(int fd) noexcept nogil
    int mpx_bell_take(int fd) noexcept nogil
    void mpx_seal_size(int fd) noexcept nogil
    int mpx_get_seals(int fd) noexcept nogil
    int mpx_flink(int fd, const char* path) noexcept nogil
    int mpx_pid_now
    int mpx_pid_init() noexcept nogil
    int munmap(void* addr, size_t length) noexcept nogil
    void* mmap(void* addr, size_t length, int prot, int flags, int fd, long off) noexcept nogil
    void* MAP_FAILED
    int MAP_SHARED
    int ftruncate(int fd, long length) noexcept nogil
    int close(int fd) noexcept nogil
    int getpid() noexcept nogil
    long sysconf(int name) noexcept nogil
    int _SC_PAGESIZE
    int PROT_READ
    int PROT_WRITE
    int EBUSY
    int EOWNERDEAD
    int ENOTRECOVERABLE
    int ENOSPC
    int SIGKILL
    int kill(int pid, int sig) noexcept nogil


class RingError(ValueError):
    """A file is not a usable mpx ring (foreign, other version, damaged)."""


# Defined in Python, below every backend: the posix and sysv queues raise
# it too, and must not import this extension for it.
from mpx._exceptions import RingClosed


class RingEmpty(Exception):
    """Default exception of get() when nothing arrives in time."""


class RingFull(Exception):
    """Default exception of put() when no room appears in time."""


class RingShutdown(Exception):
    """Default exception after shutdown()."""


# Largest copy done while holding the GIL: releasing and re-taking it costs
# far less than a copy of this size, and other threads keep running.
cdef enum:
    NOGIL_COPY = 65536
# A sleeping waiter wakes at least this often and re-checks: the safety net
# for a wake-up lost with a process killed between publishing and waking.
cdef enum:
    MAX_SLEEP_NS = 1000000000
# Lock waits sleep in slices this long so Ctrl-C gets through promptly
# (a pthread mutex wait is not interrupted by signals).
cdef enum:
    LOCK_SLICE_NS = 20000000
cdef enum:
    MIN_CAPACITY = 4096
# Which lock _lock takes (its repair differs).
cdef enum:
    SIDE_PRODUCER = 1
    SIDE_CONSUMER = 2
    SIDE_WAIT = 3
# The ring's pages are allocated in chunks of this many bytes.
cdef enum:
    RING_CHUNK = 65536
# area_head's low bits are always 0 (extents are 64-byte aligned); bit 0
# flags producers sleeping on it, waiting for area room.
cdef enum:
    AREA_WAIT = 1
# Largest overflow area (virtual address space is mapped for all of it).
MAX_AREA = 1 << 36
# Longest spin on a contended lock before sleeping on it.
cdef enum:
    LOCK_SPIN_NS = 5000
# How long a call that must not wait (get/put with block=False or
# timeout <= 0) waits for a side lock another process holds, after which it
# answers Empty/Full as if the ring had nothing or no room (as the stdlib's
# get(block=False) does for its reader lock). Side locks are held only for
# a copy, so this is long enough for a holder that was merely preempted on
# a busy machine to finish (otherwise a put_nowait on a queue with room
# would fail whenever another producer was descheduled mid-copy), and short
# enough that a holder that stopped (SIGSTOP, a debugger) or copies a huge
# message never makes a non-blocking call block. A dead holder is repaired
# at once (the kernel reports it on the first try).
cdef enum:
    NOWAIT_LOCK_NS = 2000000
# _lock's deadline for "a call that must not wait" (see NOWAIT_LOCK_NS).
cdef enum:
    LOCK_NOWAIT = -2

# Test hooks: a ring whose crash_point is set SIGKILLs its own process at
# that point, so tests can check every repair path deterministically.
cdef enum:
    CRASH_PRODUCER_BEFORE_PUBLISH = 1   # record written, tail not published
    CRASH_PRODUCER_AFTER_PUBLISH = 2    # tail published, pending extent not cleared
    CRASH_CONSUMER_AFTER_COPY = 3       # message copied out, head not published
    CRASH_CONSUMER_AFTER_TAKEN = 4      # overflow record marked taken, extent not freed
    CRASH_CONSUMER_AFTER_HEAD = 5       # head published, area extents not given back
CRASH_POINTS = {"producer_before_publish": 1, "producer_after_publish": 2,
                "consumer_after_copy": 3, "consumer_after_taken": 4,
                "consumer_after_head": 5}

# The tuning variables below are read once, at import. A value that is not
# understood is an error naming the variable and the value, rather than
# being ignored: a typo would otherwise leave the default in place (or, for
# a negative spin, silently turn spinning off) with nobody told, and the
# error comes at the first import of mpx, where it is easy to trace.

def _env_spin_us():
    raw = os.environ.get("MPX_SPIN_US", "50")
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= 10_000_000:
        raise ValueError(f"the environment variable MPX_SPIN_US must be a whole number "
                         f"of microseconds from 0 to 10000000, not {raw!r}")
    return value


def _env_spin_yield():
    raw = os.environ.get("MPX_SPIN_YIELD", "auto")
    if raw not in ("auto", "0", "1"):
        raise ValueError(f"the environment variable MPX_SPIN_YIELD must be 'auto', "
                         f"'0' or '1', not {raw!r}")
    return raw


# Spin budget before sleeping, in microseconds. A cross-process futex wake
# costs ~40 us on the VMs mpx is tuned on while a spinning handoff costs
# ~0.1 us, so a pipeline that keeps both sides busy should never sleep.
DEFAULT_SPIN_US = _env_spin_us()

# Whether a spinning waiter yields its core: "auto" (when more tasks are
# runnable than there are cores), "1" always, "0" never.
_SPIN_YIELD = _env_spin_yield()
cdef int _yield_mode = 1 if _SPIN_YIELD == "1" else (0 if _SPIN_YIELD == "0" else -1)


# mpx_pid_now: see the C block above (Ring._enter counts calls per process).
if mpx_pid_init() != 0:
    raise OSError("mpx ring: pthread_atfork failed")


cdef inline bint crowded() noexcept nogil:
    """Whether a spinning waiter yields its core: MPX_SPIN_YIELD's answer,
    or by default sync's (more tasks runnable than cores)."""
    if _yield_mode >= 0:
        return _yield_mode
    return mpx_crowded(monotonic_ns())


cdef inline uint64_t round8(uint64_t n) noexcept nogil:
    return (n + 7) & ~(<uint64_t>7)


cdef inline void copy_in(char* base, uint64_t mask, uint64_t pos, const char* src,
                         uint64_t n, bint stream=False) noexcept nogil:
    """Copy n bytes to ring position pos (mask == 0: base is linear memory);
    `stream`: with non-temporal stores (see mpx_copy_for_reader)."""
    cdef uint64_t i, first
    if mask == 0:
        mpx_copy_for_reader(base + pos, src, n, stream)
        return
    i = pos & mask
    first = mask + 1 - i
    if n <= first:
        mpx_copy_for_reader(base + i, src, n, stream)
    else:
        mpx_copy_for_reader(base + i, src, first, stream)
        mpx_copy_for_reader(base, src + first, n - first, stream)


cdef inline void copy_out(char* dst, const char* base, uint64_t mask, uint64_t pos,
                          uint64_t n) noexcept nogil:
    cdef uint64_t i, first
    if mask == 0:
        memcpy(dst, base + pos, n)
        return
    i = pos & mask
    first = mask + 1 - i
    if n <= first:
        memcpy(dst, base + i, n)
    else:
        memcpy(dst, base + i, first)
        memcpy(dst + first, base, n - first)


cdef object _seconds = None


cdef double timeout_seconds(object timeout) except? -2.0:
    """`timeout` (not None) read by mpx._timeouts.seconds, the one rule of
    every mpx wait (NaN: ValueError; not a number: TypeError; negative: no
    wait; inf: for ever): its seconds, or -1.0 for ever."""
    global _seconds
    if _seconds is None:
        from mpx._timeouts import seconds
        _seconds = seconds
    cdef object s = _seconds(timeout)
    return -1.0 if s is None else <double>s


cdef inline int64_t to_deadline(bint block, object timeout) except? -2:
    """-1: wait forever; otherwise an absolute monotonic time in ns.

    `timeout` means what mpx._timeouts.seconds says. Plain floats and small
    ints are read here (a get(timeout=5) makes no Python call for it); every
    other value, and every value that is an error, goes through seconds()
    itself, so the rule and its messages are written once."""
    cdef double t
    if not block:
        return 0
    if timeout is None:
        return -1
    if type(timeout) is float:
        t = <double>timeout
        if not t >= 0:          # NaN or negative: seconds() decides
            t = timeout_seconds(timeout)
    elif type(timeout) is int and 0 <= timeout <= 1000000000:
        t = <double>timeout
    else:
        t = timeout_seconds(timeout)
    if t < 0 or t > 1e9:    # for ever (inf, None from seconds, or decades)
        return -1
    if t == 0:
        return 0
    return monotonic_ns() + <int64_t>(t * 1e9)


cdef inline bint expired(int64_t deadline) noexcept nogil:
    return deadline >= 0 and monotonic_ns() >= deadline


cdef inline int64_t _slice(int64_t deadline) noexcept nogil:
    """How long the next sleep may last: until `deadline` (monotonic ns; -1
    none), but at most MAX_SLEEP_NS, so that every sleeper looks around
    (at a close() from its own process, a dead peer) at least that often.
    0 when the deadline has passed."""
    cdef int64_t left = MAX_SLEEP_NS
    if deadline >= 0:
        left = deadline - monotonic_ns()
        if left <= 0:
            return 0
        if left > MAX_SLEEP_NS:
            left = MAX_SLEEP_NS
    return left


cdef inline int64_t _lock_deadline(bint block, int64_t deadline) noexcept nogil:
    """How long to wait for a side lock: a blocking call as long as it may
    wait at all (its deadline, or forever); a call that must not wait
    (block=False, timeout <= 0) only NOWAIT_LOCK_NS (see there)."""
    return LOCK_NOWAIT if not block or deadline == 0 else deadline


cdef inline uint64_t body_length(Py_buffer* bufs, Py_ssize_t n) noexcept nogil:
    cdef uint64_t total = 8 * <uint64_t>n if n > 1 else 0
    cdef Py_ssize_t i
    for i in range(n):
        total += <uint64_t>bufs[i].len
    return total


cdef void write_body(char* base, uint64_t mask, uint64_t pos, Py_buffer* bufs,
                     Py_ssize_t n, bint stream=False) noexcept nogil:
    cdef Py_ssize_t i
    cdef uint64_t ln
    if n > 1:
        for i in range(n):
            ln = <uint64_t>bufs[i].len
            copy_in(base, mask, pos, <char*>&ln, 8)
            pos += 8
    for i in range(n):
        copy_in(base, mask, pos, <char*>bufs[i].buf, <uint64_t>bufs[i].len, stream)
        pos += <uint64_t>bufs[i].len


cdef object read_body(const char* base, uint64_t mask, uint64_t pos, uint64_t body_len,
                      int nparts, int tag):
    """Copy one message body out of the ring (or an extent) into new objects."""
    cdef uint64_t ln, total, p
    cdef uint64_t* lens
    cdef char** dsts
    cdef int i
    cdef object obj
    cdef list parts
    cdef char* dst
    if nparts == 1:
        obj = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>body_len)
        dst = PyBytes_AS_STRING(obj)
        if body_len >= NOGIL_COPY:
            with nogil:
                copy_out(dst, base, mask, pos, body_len)
        else:
            copy_out(dst, base, mask, pos, body_len)
        if tag == 0:
            return obj
        return (tag, [obj])
    if nparts == 0:
        if body_len != 0:
            raise RingError("corrupt ring record: empty message with a body")
        return (tag, [])
    lens = <uint64_t*>PyMem_Malloc(nparts * (sizeof(uint64_t) + sizeof(char*)))
    if lens == NULL:
        raise MemoryError()
    dsts = <char**>(lens + nparts)
    try:
        total = 8 * <uint64_t>nparts
        for i in range(nparts):
            copy_out(<char*>&lens[i], base, mask, pos + 8 * <uint64_t>i, 8)
            total += lens[i]
        if total != body_len:
            raise RingError("corrupt ring record: part lengths do not add up")
        parts = []
        for i in range(nparts):
            # The first part is the serializer's stream; the others are
            # out-of-band buffers, writable so that arrays rebuilt on them are.
            if i == 0:
                obj = PyBytes_FromStringAndSize(NULL, <Py_ssize_t>lens[i])
                dsts[i] = PyBytes_AS_STRING(obj)
            else:
                obj = PyByteArray_FromStringAndSize(NULL, <Py_ssize_t>lens[i])
                dsts[i] = PyByteArray_AS_STRING(obj)
            parts.append(obj)
        p = pos + 8 * <uint64_t>nparts
        if body_len >= NOGIL_COPY:
            with nogil:
                for i in range(nparts):
                    copy_out(dsts[i], base, mask, p, lens[i])
                    p += lens[i]
        else:
            for i in range(nparts):
                copy_out(dsts[i], base, mask, p, lens[i])
                p += lens[i]
        return (tag, parts)
    finally:
        PyMem_Free(lens)


cdef class _Parts:
    """Buffers of a message being put, released however put ends."""
    cdef Py_buffer* bufs
    cdef Py_ssize_t n
    cdef Py_buffer one

    def __dealloc__(self):
        cdef Py_ssize_t i
        for i in range(self.n):
            PyBuffer_Release(&self.bufs[i])
        if self.bufs != &self.one and self.bufs != NULL:
            PyMem_Free(self.bufs)

    cdef int fill(self, object msg) except -1:
        cdef Py_ssize_t i, n
        if isinstance(msg, (list, tuple)):
            n = len(msg)
            if n > 65535:
                raise ValueError(f"a message may have at most 65535 parts, not {n}")
            if n == 1:
                self.bufs = &self.one
            else:
                self.bufs = <Py_buffer*>PyMem_Malloc((n if n else 1) * sizeof(Py_buffer))
                if self.bufs == NULL:
                    raise MemoryError()
            for i in range(n):
                PyObject_GetBuffer(msg[i], &self.bufs[i], PyBUF_SIMPLE)
                self.n += 1
        else:
            self.bufs = &self.one
            PyObject_GetBuffer(msg, &self.one, PyBUF_SIMPLE)
            self.n = 1
        return 0


cdef class Ring     # (defined below; _Batch.fill encodes with one)


cdef class _Batch:
    """Buffers of the messages of one put_many, in C arrays (no Python object
    per message), released however put_many ends."""
    cdef Py_buffer* bufs        # every part of every message, in order
    cdef Py_ssize_t nbufs       # buffers acquired so far
    cdef Py_ssize_t* first      # index in bufs of each message's first part
    cdef uint16_t* nparts       # parts of each message
    cdef uint8_t* tags          # tag of each message
    cdef Py_ssize_t n           # messages

    def __dealloc__(self):
        cdef Py_ssize_t i
        for i in range(self.nbufs):
            PyBuffer_Release(&self.bufs[i])
        PyMem_Free(self.bufs)
        PyMem_Free(self.first)
        PyMem_Free(self.nparts)
        PyMem_Free(self.tags)

    cdef int fill(self, object items, Ring encoder=None) except -1:
        """Take the messages of `items`: (tag, msg) pairs or bytes-like
        objects, or with `encoder`, objects its enc_* hooks turn into
        messages."""
        cdef list msgs = []
        cdef Py_ssize_t total = 0, i, k, m
        cdef int tag
        items = list(items)
        m = len(items)
        self.first = <Py_ssize_t*>PyMem_Malloc((m + 1) * sizeof(Py_ssize_t))
        self.nparts = <uint16_t*>PyMem_Malloc((m + 1) * sizeof(uint16_t))
        self.tags = <uint8_t*>PyMem_Malloc(m + 1)
        if self.first == NULL or self.nparts == NULL or self.tags == NULL:
            raise MemoryError()
        for i in range(m):
            item = items[i]
            if encoder is not None:
                msg = encoder._encode_obj(item, &tag)
            elif type(item) is tuple:
                if len(item) != 2:
                    raise ValueError("a put_many item is a bytes-like object or a "
                                     "(tag, message) pair")
                tag = item[0]
                check_tag(tag)
                msg = item[1]
            else:
                tag = 0
                msg = item
            if type(msg) is list or type(msg) is tuple:
                if len(msg) > 65535:
                    raise ValueError(f"a message may have at most 65535 parts, not {len(msg)}")
                self.nparts[i] = <uint16_t>len(msg)
            else:
                self.nparts[i] = 1
                msg = (msg,)
            self.tags[i] = <uint8_t>tag
            self.first[i] = total
            total += self.nparts[i]
            msgs.append(msg)
        self.bufs = <Py_buffer*>PyMem_Malloc((total + 1) * sizeof(Py_buffer))
        if self.bufs == NULL:
            raise MemoryError()
        for i in range(m):
            for part in msgs[i]:
                PyObject_GetBuffer(part, &self.bufs[self.nbufs], PyBUF_SIMPLE)
                self.nbufs += 1
        self.n = m
        return 0


cdef object _as_int(object value, str what):
    """`value` as an int (numpy integers and other __index__ types welcome;
    bool is not a size), else TypeError naming `what`."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int, not bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an int, not {type(value).__name__}") from None


cdef object _as_uint(object value, str what, object limit):
    """`value` as an int 0..limit, else TypeError/ValueError naming `what`."""
    value = _as_int(value, what)
    if not 0 <= value <= limit:
        raise ValueError(f"{what} must be between 0 and {limit}, not {value}")
    return value


def check_layout(capacity, maxsize=0, inline_max=None, area=None, area_backlog=None):
    """The ring layout Ring.create makes of these arguments, as a dict of
    ints (capacity, maxsize, inline_max, area, area_backlog), or the error
    (TypeError/ValueError naming the argument) it would raise. Policy layers
    call it before they create anything, so that a bad option never leaves a
    half-made object behind.

    capacity: bytes, 1..MAX_CAPACITY, rounded up to a power of two (4096 at
    least). maxsize: messages, 0 (no limit)..2**31-1. inline_max: largest
    record kept in the ring, 0..MAX_CAPACITY (None: half the ring; values
    below 64 mean 64, above the capacity the capacity). area: bytes of
    overflow area, 0..MAX_AREA, rounded up to whole pages (None: max(16 x
    capacity, 256 MiB)). area_backlog: bytes of big messages that may wait
    in the area before producers wait, 0..MAX_AREA (None: 4 x capacity)."""
    cdef uint64_t cap = MIN_CAPACITY
    cdef object page = sysconf(_SC_PAGESIZE)
    if capacity is None:
        raise ValueError("capacity must be a positive number of bytes, not None")
    capacity = _as_int(capacity, "capacity")
    if capacity < 1:
        raise ValueError(f"capacity must be a positive number of bytes, not {capacity!r}")
    if capacity > MPX_MAX_CAPACITY:
        raise ValueError(f"capacity {capacity} is above the ring's limit of "
                         f"{MPX_MAX_CAPACITY} bytes (larger messages still go "
                         "through: they overflow into the queue's file)")
    while cap < <uint64_t>capacity:
        cap <<= 1
    if maxsize is None:
        maxsize = 0
    maxsize = _as_uint(maxsize, "maxsize", 0x7fffffff)
    if inline_max is None:
        inline_max = cap // 2
    else:
        inline_max = min(max(_as_uint(inline_max, "inline_max", MPX_MAX_CAPACITY), 64), cap)
    if area is None:
        area = max(16 * cap, 256 << 20)
    area = _as_uint(area, "area", MAX_AREA)
    area = (area + page - 1) // page * page
    if area_backlog is None:
        area_backlog = 4 * cap
    area_backlog = _as_uint(area_backlog, "area_backlog", MAX_AREA)
    return {"capacity": cap, "maxsize": maxsize, "inline_max": inline_max,
            "area": area, "area_backlog": area_backlog}


def spin_ns(spin, what="spin"):
    """Nanoseconds of a spin budget given in seconds: a real number from 0
    to 10 (the limit MPX_SPIN_US has too), else TypeError/ValueError naming
    `what`. None: the default (DEFAULT_SPIN_US)."""
    if spin is None:
        return DEFAULT_SPIN_US * 1000
    kind = type(spin)
    if isinstance(spin, (bool, str, bytes, bytearray)) or not (
            hasattr(kind, "__float__") or hasattr(kind, "__index__")):
        raise TypeError(f"{what} must be a number of seconds, not {kind.__name__}")
    try:
        value = float(spin)
    except OverflowError:
        value = float("inf")
    if not 0 <= value <= 10:
        raise ValueError(f"{what} must be a number of seconds from 0 to 10, not {spin!r}")
    return int(value * 1e9)


cdef inline int check_tag(int tag) except -1:
    if tag < 0 or tag > 255:
        raise ValueError(f"tag must be in 0..255, not {tag}")
    return 0


cdef class Ring:
    """A mapped shared-memory ring. Use Ring.create() or Ring.attach()."""
    cdef mpx_ring_header* hdr       # mapped header page
    cdef char* data                 # mapped data area (hdr + header_size)
    cdef size_t map_len             # bytes mapped (header + data area)
    cdef readonly int fd            # the ring's file descriptor (owned)
    cdef uint64_t cap               # capacity (cached from the header)
    cdef uint64_t mask              # cap - 1
    cdef uint64_t inline_max        # cached from the header
    cdef uint32_t maxsize           # cached from the header
    cdef uint64_t page              # page size for overflow extents
    cdef uint64_t area_size         # overflow area size (cached from the header)
    cdef uint64_t area_base         # file offset of the overflow area
    cdef uint64_t spill_base        # file offset where spill extents start
    cdef char* area                 # this process's mapping of the area (lazy)
    cdef uint64_t area_taken_end    # end of the last area extent _take copied
    cdef uint64_t area_soft         # cached from the header
    cdef uint64_t area_seen         # area_head as the last refused _area_put saw it
    cdef uint64_t pend_tail         # the tail _put_once will publish (for _area_put's undo)
    cdef int my_pid                 # pid that mapped this object
    cdef int64_t spin_ns            # current adaptive spin budget
    cdef public int64_t spin_max_ns # largest spin budget (0 disables spinning)
    cdef public object empty_exc    # raised by get when nothing arrives in time
    cdef public object full_exc     # raised by put when no room appears in time
    cdef public object shutdown_exc # raised after shutdown()
    cdef public int crash_point     # tests only: SIGKILL this process at that point
    # Object hooks, set by the policy layer (the ring never looks inside):
    # put_obj/get_obj run the common case of "object -> bytes -> ring" in
    # compiled code and hand every other case back to the policy. When each
    # is called and what it may do: "The hooks" in ring.pxd.
    cdef public object enc_plain    # set of types enc_dumps handles (membership only)
    cdef public object enc_dumps    # obj -> bytes, for types in enc_plain
    cdef public object enc_big      # (obj, bytes) -> (msg, tag) for a stream >= enc_big_size
    cdef public Py_ssize_t enc_big_size
    cdef public object enc_other    # obj -> (msg, tag) for every other object
    cdef public int enc_bytes_tag   # bytes objects travel as themselves with this tag (-1: no)
    cdef public int enc_compact_tag # objects with a compact encoding travel so with this tag (-1: no)
    cdef public int dec_compact_tag # single-part messages with this tag are compact encodings
    cdef public object dec_loads    # bytes -> obj, for single-part tag-0 messages
    cdef public object dec_other    # message -> obj, for every other message
    # Channel hooks, for send_obj/recv_obj (set by mpx/backends/shm/channel.py):
    cdef public int bell_aux        # after a send: aux word to look at (-1: none)...
    cdef public uint32_t bell_value # ...and if it holds this, call on_bell()
    cdef public object on_bell
    cdef public int watch_aux       # after a take: if this aux word is set (-1: none),
    cdef public object on_take      # call on_take()
    cdef public object on_full      # send_obj found the ring full: on_full(msg, tag) puts it
    cdef public object on_empty     # recv_obj waited recv_wait seconds: on_empty() -> object
    cdef public object recv_wait
    cdef public int bell_fd         # a queue's eventfd bell, which put_obj rings itself
                                    # (-1: none; owned: closed with the ring)
    cdef int busy                   # calls of process busy_pid inside the ring now
    cdef int busy_pid               # the process whose calls `busy` counts
    cdef bint closing               # close() was called while calls were inside
    cdef uint16_t aux_waiters[15]   # threads of this process in aux_wait(i), per word

    def __cinit__(self):
        self.hdr = NULL
        self.fd = -1
        self.empty_exc = RingEmpty
        self.full_exc = RingFull
        self.shutdown_exc = RingShutdown
        self.spin_max_ns = DEFAULT_SPIN_US * 1000
        self.spin_ns = self.spin_max_ns
        self.enc_plain = frozenset()
        self.enc_bytes_tag = -1
        self.enc_compact_tag = -1
        self.dec_compact_tag = -1
        self.bell_aux = -1
        self.bell_fd = -1
        self.watch_aux = -1
        self.recv_wait = 0.0
        self.enc_big_size = PY_SSIZE_T_MAX

    def __dealloc__(self):
        cdef uint64_t entry
        cdef int i
        if self.hdr != NULL and self.fd >= 0 and getpid() == self.my_pid:
            # Dropped without close(): still take our hint out of the table.
            entry = (<uint64_t>self.my_pid << 32) | <uint32_t>self.fd
            for i in range(MPX_HOLDERS):
                mpx_cas64(&self.hdr.holders[i], entry, 0)
        self._unmap(True)

    # ----------------------------------------------------------- life cycle

    @staticmethod
    def create(int fd, capacity, *, maxsize=0, kind=0, ring_id=0, inline_max=None,
               area=None, area_backlog=None):
        """Initialise a new ring in the empty file `fd` (which the Ring then
        owns and closes; if create raises, the caller still owns `fd`, and
        must close it). The arguments are read by check_layout() (see there)
        before anything touches the file; `kind` (0..2**32-1) and `ring_id`
        (0..2**64-1) are the policy layer's, stored as given.

        A file that allows sealing (a memfd made with MFD_ALLOW_SEALING) is
        sealed against shrinking once sized (F_SEAL_SHRINK, then F_SEAL_SEAL):
        nobody can then truncate the ring under the processes that map it,
        which would kill them with SIGBUS. Growing stays allowed (the
        overflow area and spill extents extend the file)."""
        cdef Ring self
        cdef pthread_mutexattr_t attr
        cdef int64_t size
        cdef int r, m
        cdef mpx_ring_header* h
        # Every argument is checked and converted before the file is touched
        # or mapped: an error (naming its argument) leaves `fd` to the
        # caller, as it came. (Converting during the header's initialisation
        # raised with the file mapped, and the mapping's owner then closed
        # `fd` as the caller did too: a double close.)
        cdef uint64_t cap, c_inline, c_area, c_backlog, c_id
        cdef uint32_t c_max, c_kind
        lay = check_layout(capacity, maxsize, inline_max, area, area_backlog)
        cap = lay["capacity"]
        c_max = lay["maxsize"]
        c_inline = lay["inline_max"]
        c_area = lay["area"]
        c_backlog = lay["area_backlog"]
        c_kind = _as_uint(kind, "kind", 0xffffffff)
        c_id = _as_uint(ring_id, "ring_id", 0xffffffffffffffff)
        size = mpx_file_size(fd)
        if size < 0:
            raise OSError(mpx_errno(), os.strerror(mpx_errno()))
        if size != 0:
            raise RingError("Ring.create needs an empty file")
        size = MPX_RING_HDR_SIZE + cap
        if ftruncate(fd, size) < 0:
            raise OSError(mpx_errno(), os.strerror(mpx_errno()))
        mpx_seal_size(fd)
        # Only the header gets its page now; the ring's pages are allocated
        # as the first lap of the tail reaches them (a queue that carries
        # little costs little). Allocating explicitly, never by touching,
        # makes a full /dev/shm an error in put(), never a SIGBUS.
        r = mpx_fallocate(fd, 0, MPX_RING_HDR_SIZE)
        if r:
            raise OSError(r, f"cannot allocate shared memory for the queue: "
                             f"{os.strerror(r)}")
        self = Ring.__new__(Ring)
        self._map(fd, size)
        h = self.hdr
        h.version = MPX_RING_VERSION
        h.header_size = MPX_RING_HDR_SIZE
        h.capacity = cap
        h.inline_max = c_inline
        h.ring_id = c_id
        h.maxsize = c_max
        h.kind = c_kind
        h.creator_pid = getpid()
        h.page_size = <uint32_t>sysconf(_SC_PAGESIZE)
        h.area_size = c_area
        h.area_soft = c_backlog
        h.tail = 0
        h.head = 0
        h.acked = 0
        h.ovf_next = size + c_area
        h.ovf_pending_len = 0
        h.area_next = 0
        h.area_alloc = 0
        h.area_head = 0
        h.ring_alloc = 0
        h.area_gap_start = 0
        h.area_gap_end = 0
        h.area_pend = 0
        h.area_cpend = 0
        for m in range(4):
            pthread_mutexattr_init(&attr)
            pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED)
            pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST)
            r = pthread_mutex_init(&h.prod_lock if m == 0 else &h.cons_lock if m == 1
                                   else &h.prod_wait if m == 2 else &h.cons_wait, &attr)
            pthread_mutexattr_destroy(&attr)
            if r:
                self.fd = -1      # the caller still owns fd on failure
                self._unmap(False)
                raise OSError(r, f"pthread_mutex_init: {os.strerror(r)}")
        # The magic goes in last: a reader that sees it sees a complete header.
        mpx_store64(&h.magic, MPX_RING_MAGIC)
        self._cache()
        self.register_holder()
        return self

    @staticmethod
    def attach(int fd, *, bint holder=True):
        """Map the ring in file `fd` (which the Ring then owns), refusing
        anything that is not a complete ring of this layout version.
        `holder`: note this process in the holders table."""
        cdef Ring self
        cdef int64_t size = mpx_file_size(fd)
        cdef mpx_ring_header* h
        cdef uint64_t cap
        if size < 0:
            raise OSError(mpx_errno(), os.strerror(mpx_errno()))
        if size < MPX_RING_HDR_SIZE:
            raise RingError(f"not an mpx queue: the segment is {size} bytes, smaller "
                            f"than a ring header ({MPX_RING_HDR_SIZE})")
        self = Ring.__new__(Ring)
        self._map(fd, MPX_RING_HDR_SIZE)
        h = self.hdr
        try:
            if mpx_load64(&h.magic) != MPX_RING_MAGIC:
                raise RingError("not an mpx queue: the segment does not start with the "
                                "mpx ring magic number (it belongs to something else, "
                                "or its creator died before finishing it)")
            if h.version != MPX_RING_VERSION:
                raise RingError(f"the queue was made by an mpx with ring layout version "
                                f"{h.version}; this mpx reads version {MPX_RING_VERSION}")
            cap = h.capacity
            if (h.header_size != MPX_RING_HDR_SIZE or cap < MIN_CAPACITY or
                    cap > MPX_MAX_CAPACITY or (cap & (cap - 1)) or
                    <uint64_t>size < MPX_RING_HDR_SIZE + cap or h.inline_max > cap or
                    h.page_size == 0 or (h.page_size & (h.page_size - 1)) or
                    h.area_size > MAX_AREA or h.area_size % h.page_size):
                raise RingError("damaged mpx queue: its header holds impossible values")
        except BaseException:
            self.fd = -1     # the caller still owns fd on failure
            self._unmap(False)
            raise
        self._unmap(False)
        self._map(fd, MPX_RING_HDR_SIZE + cap)
        self._cache()
        if holder:
            self.register_holder()
        return self

    cdef int _check(self) except -1:
        if self.hdr == NULL or self.closing:
            raise RingClosed("the ring is closed")
        return 0

    # Calls that may release the GIL count themselves in `busy`, so that
    # close() from another thread never unmaps memory under a sleeping call:
    # the last call to leave unmaps instead.
    #
    # The count belongs to one process (busy_pid). A forked child inherits
    # this object with the parent's count but none of the threads it counts
    # (only the forking thread goes on), so the first call in the child
    # starts the count afresh, and close() in a process whose count is not
    # its own unmaps at once: the threads blocked in the ring are exactly
    # those this process counted. _enter returns the pid it counted the call
    # under and _leave only uncounts from that same count.
    cdef inline int _enter(self) except -1:
        cdef int pid = mpx_pid_now
        if self.hdr == NULL or self.closing:
            raise RingClosed("the ring is closed")
        if self.busy_pid != pid:
            self.busy_pid = pid
            self.busy = 0
        self.busy += 1
        return pid

    cdef inline void _leave(self, int pid) noexcept:
        if self.busy_pid != pid:
            return          # counted in the parent before a fork: not ours
        self.busy -= 1
        if self.closing and self.busy <= 0:
            self._unmap(True)

    cdef int _closed_while_waiting(self) except -1:
        raise RingClosed("the ring was closed (by another thread) while this call waited")

    # (Errors of rare paths are raised out of line: formatting them inside
    # the hot functions makes the C compiler stop inlining copy_in/copy_out
    # there, which costs every put ~10%.)
    cdef int _corrupt_spill_next(self, uint64_t off) except -1:
        raise RingError(f"corrupt ring header: the next spill extent would start at "
                        f"byte {off}, outside the spill region (from {self.spill_base})")

    cdef int _map(self, int fd, size_t length) except -1:
        # No MAP_POPULATE here: it would give every page of the ring a page.
        cdef void* p = mmap(NULL, length, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0)
        if p == MAP_FAILED:
            raise OSError(mpx_errno(), f"cannot map the queue: {os.strerror(mpx_errno())}")
        self.hdr = <mpx_ring_header*>p
        self.map_len = length
        self.data = <char*>p + MPX_RING_HDR_SIZE
        self.fd = fd
        self.my_pid = getpid()
        return 0

    cdef char* _area_map(self) except NULL:
        """This process's mapping of the overflow area, made on first use and
        kept: pages then fault in once per process, not once per message."""
        cdef void* p
        if self.area == NULL:
            p = mmap(NULL, self.area_size, PROT_READ | PROT_WRITE, MAP_SHARED,
                     self.fd, self.area_base)
            if p == MAP_FAILED:
                raise OSError(mpx_errno(), "cannot map the queue's overflow area: "
                              + os.strerror(mpx_errno()))
            self.area = <char*>p
        return self.area

    cdef void _cache(self) noexcept:
        self.cap = self.hdr.capacity
        self.mask = self.cap - 1
        self.inline_max = self.hdr.inline_max
        self.maxsize = self.hdr.maxsize
        self.page = self.hdr.page_size
        self.area_size = self.hdr.area_size
        self.area_soft = self.hdr.area_soft
        self.area_base = MPX_RING_HDR_SIZE + self.cap
        self.spill_base = self.area_base + self.area_size

    cdef void _unmap(self, bint close_fd) noexcept:
        if self.area != NULL:
            munmap(self.area, self.area_size)
            self.area = NULL
        if self.hdr != NULL:
            munmap(self.hdr, self.map_len)
            self.hdr = NULL
            self.data = NULL
        if close_fd and self.fd >= 0:
            close(self.fd)
        self.fd = -1
        if close_fd and self.bell_fd >= 0:
            close(self.bell_fd)
        self.bell_fd = -1

    def close(self):
        """Unmap the ring and close its descriptor (this process only). Calls
        blocked in other threads of this process (get, put, waits for acks
        or aux words, waits for the ring's locks) wake and raise RingClosed;
        the last of them to leave unmaps."""
        cdef int i
        if self.hdr == NULL or self.closing:
            return
        self.unregister_holder()
        if self.busy > 0 and self.busy_pid == mpx_pid_now:
            self.closing = True
            # Make this process's blocked calls look again (and notice): the
            # wake-up is spurious for other processes, which just re-check.
            # (Lock waits notice within a lock slice, LOCK_SLICE_NS.)
            mpx_futex_wake(mpx_lo32(&self.hdr.tail), INT32_MAX)
            mpx_futex_wake(mpx_lo32(&self.hdr.head), INT32_MAX)
            mpx_futex_wake(&self.hdr.acked, INT32_MAX)
            mpx_futex_wake(mpx_lo32(&self.hdr.area_head), INT32_MAX)
            for i in range(15):
                if self.aux_waiters[i]:
                    mpx_futex_wake(&self.hdr.aux[i], INT32_MAX)
        else:
            self._unmap(True)

    @property
    def seals(self):
        """The file's seals (F_GET_SEALS; fcntl.F_SEAL_* bits), -1 where the
        file cannot tell (not a sealable file)."""
        self._check()
        return mpx_get_seals(self.fd)

    @property
    def closed(self):
        return self.hdr == NULL or self.closing

    # ------------------------------------------------------------- holders

    def register_holder(self):
        """Note (pid, fd) of this process in the header, so that a process
        unpickling a handle to an anonymous ring can reopen it through
        /proc/<pid>/fd/<fd> of any live holder. The table only holds hints."""
        self._check()
        cdef int pid = getpid()
        cdef uint64_t entry = (<uint64_t>pid << 32) | <uint32_t>self.fd
        cdef uint64_t cur
        cdef int i
        for i in range(MPX_HOLDERS):
            cur = mpx_load64(&self.hdr.holders[i])
            if cur == entry:
                return
            if (cur >> 32) == <uint64_t>pid:
                mpx_store64(&self.hdr.holders[i], entry)
                return
        for i in range(MPX_HOLDERS):
            cur = mpx_load64(&self.hdr.holders[i])
            if cur == 0 or mpx_pid_gone(<int>(cur >> 32)):
                if mpx_cas64(&self.hdr.holders[i], cur, entry):
                    return
        mpx_store64(&self.hdr.holders[pid % MPX_HOLDERS], entry)

    def unregister_holder(self):
        if self.hdr == NULL or self.fd < 0:
            return
        cdef uint64_t entry = (<uint64_t>getpid() << 32) | <uint32_t>self.fd
        cdef int i
        for i in range(MPX_HOLDERS):
            mpx_cas64(&self.hdr.holders[i], entry, 0)

    def holders(self):
        """[(pid, fd)] of the processes noted as holding the ring."""
        self._check()
        cdef uint64_t e
        out = []
        for i in range(MPX_HOLDERS):
            e = mpx_load64(&self.hdr.holders[i])
            if e:
                out.append((<int>(e >> 32), <int>(e & 0xffffffff)))
        return out

    # ---------------------------------------------------------- information

    @property
    def capacity(self):
        self._check()
        return self.cap

    @property
    def maxsize(self):
        self._check()
        return self.maxsize

    @property
    def kind(self):
        self._check()
        return self.hdr.kind

    @property
    def ring_id(self):
        self._check()
        return self.hdr.ring_id

    @property
    def inline_max(self):
        self._check()
        return self.inline_max

    def qsize(self):
        """Messages in the ring now."""
        self._check()
        return mpx_count(mpx_load64(&self.hdr.tail), mpx_load64(&self.hdr.head))

    cdef int _holds_nothing(self) except -1:
        """No message now and not shut down (a get would raise Empty). Reads
        two words with the GIL held, so no other thread can unmap meanwhile."""
        self._check()
        cdef uint64_t t = mpx_load64(&self.hdr.tail)
        return mpx_pos(t) == mpx_pos(mpx_load64(&self.hdr.head)) and not (t & MPX_F_SHUT)

    def used_bytes(self):
        self._check()
        return mpx_used(mpx_load64(&self.hdr.tail), mpx_load64(&self.hdr.head))

    def is_full(self):
        """True when a put of the smallest real message would wait now:
        maxsize messages are in the ring, or fewer than 16 bytes of it are
        free (a record of 1 to 8 bytes of body takes 16; a queue never sends
        an empty body, which alone would still fit in 8). False does not
        promise that every message fits: a bigger one may still wait for
        ring bytes or for overflow-area room (its size is not known here)."""
        self._check()
        cdef uint64_t t = mpx_load64(&self.hdr.tail), h = mpx_load64(&self.hdr.head)
        if self.maxsize and mpx_count(t, h) >= self.maxsize:
            return True
        return self.cap - mpx_used(t, h) < 16

    @property
    def is_shutdown(self):
        self._check()
        return bool(mpx_load64(&self.hdr.tail) & MPX_F_SHUT)

    def info(self):
        """The header's fields, for tests and `python -m mpx ls`."""
        self._check()
        cdef mpx_ring_header* h = self.hdr
        cdef uint64_t t = mpx_load64(&h.tail)
        hd = mpx_load64(&h.head)
        return {
            "version": h.version, "capacity": h.capacity, "inline_max": h.inline_max,
            "ring_id": h.ring_id, "maxsize": h.maxsize, "kind": h.kind,
            "creator_pid": h.creator_pid, "messages": mpx_count(t, hd),
            "used_bytes": mpx_used(t, hd), "shutdown": bool(t & MPX_F_SHUT),
            "put_count": mpx_cnt(t), "get_count": mpx_cnt(hd),
            "acked": mpx_load32(&h.acked) & MPX_CNT_MASK,
            "ring_allocated": h.ring_alloc,
            "spill_next": h.ovf_next,
            "spill_base": self.spill_base,
            "area_size": h.area_size, "area_allocated": h.area_alloc,
            "area_used": self._area_backlog(h.area_next, h.area_head & ~(<uint64_t>AREA_WAIT)),
            "repairs": mpx_load64(&h.repairs),
            "file_size": mpx_file_size(self.fd),
        }

    # ----------------------------------------------------- locks and waits

    cdef int _lock(self, pthread_mutex_t* m, int64_t deadline, int side) except -1:
        """Take a side's robust mutex: 1 when held, 0 when `deadline` (-1:
        none; LOCK_NOWAIT: NOWAIT_LOCK_NS from now) passed.

        A dead owner is reported by the kernel as EOWNERDEAD to the next
        locker, which repairs the side and marks the mutex consistent.
        """
        cdef int r = pthread_mutex_trylock(m)
        cdef int64_t end, now, until
        cdef int k
        cdef timespec ts
        if r == EBUSY:
            if deadline == LOCK_NOWAIT:
                deadline = monotonic_ns() + NOWAIT_LOCK_NS
            # Contended: the holder is in the middle of a short copy, or it is
            # a waiter that may wait long; spin only for about a copy's time.
            if self.spin_max_ns > 0 and not crowded():
                with nogil:
                    end = monotonic_ns() + (LOCK_SPIN_NS if self.spin_max_ns > LOCK_SPIN_NS
                                            else self.spin_max_ns)
                    while r == EBUSY and monotonic_ns() < end:
                        for k in range(16):
                            mpx_cpu_relax()
                        r = pthread_mutex_trylock(m)
            while r == EBUSY:
                now = monotonic_ns()
                if deadline >= 0 and now >= deadline:
                    return 0
                until = now + LOCK_SLICE_NS
                if deadline >= 0 and deadline < until:
                    until = deadline
                ts.tv_sec = until // 1000000000
                ts.tv_nsec = until % 1000000000
                with nogil:
                    r = pthread_mutex_clocklock(m, CLOCK_MONOTONIC, &ts)
                if r == ETIMEDOUT:
                    r = EBUSY
                    PyErr_CheckSignals()
                    if self.closing:
                        self._closed_while_waiting()
        if r == 0:
            return 1
        if r == EOWNERDEAD:
            self._repair(side)
            pthread_mutex_consistent(m)
            return 1
        if r == ENOTRECOVERABLE:
            raise RingError("the queue's lock is unrecoverable (a process died holding "
                            "it and the repair did not complete)")
        raise OSError(r, f"cannot lock the queue: {os.strerror(r)}")

    cdef void _area_undo(self) noexcept nogil:
        """Producer lock held: give back an area claim whose record was never
        published (its producer died, or shutdown came first)."""
        cdef mpx_ring_header* h = self.hdr
        cdef uint64_t head = mpx_load64(&h.area_head) & ~(<uint64_t>AREA_WAIT)
        h.area_gap_start = h.area_undo_gap_start
        h.area_gap_end = h.area_undo_gap_end
        # If it had moved area_head up (starting over in an empty area), the
        # area is empty at that point: next = head.
        h.area_next = h.area_undo_next if h.area_undo_next > head else head

    cdef void _area_cfree(self, uint64_t value) noexcept nogil:
        """Consumer lock held, head published: store area_head = value, and
        wake producers that wait for area room."""
        cdef uint64_t old = mpx_load64(&self.hdr.area_head)
        while not mpx_cas64(&self.hdr.area_head, old, value):
            old = mpx_load64(&self.hdr.area_head)
        if old & AREA_WAIT:
            mpx_futex_wake(mpx_lo32(&self.hdr.area_head), INT32_MAX)

    cdef void _repair(self, int side) noexcept nogil:
        """Run by whoever takes a lock over from a dead owner. The published
        head and tail are always consistent; only a spill extent that a dead
        producer was filling may need freeing (the wait locks guard nothing)."""
        cdef mpx_ring_header* h = self.hdr
        cdef uint64_t t
        mpx_add64(&h.repairs, 1)
        if side == SIDE_PRODUCER and mpx_load64(&h.area_pend):
            if (mpx_load64(&h.tail) & ~MPX_F_MASK) != h.area_pend_tail:
                self._area_undo()           # its record was never published
            mpx_store64(&h.area_pend, 0)
        if side == SIDE_CONSUMER and mpx_load64(&h.area_cpend):
            if (mpx_load64(&h.head) & ~MPX_F_MASK) == h.area_cpend_head:
                # It moved the head past area records, then died before
                # giving their extents back: finish that for it.
                self._area_cfree(h.area_cpend_value)
            mpx_store64(&h.area_cpend, 0)
        if side == SIDE_PRODUCER and mpx_load64(&h.ovf_pending_len):
            t = mpx_load64(&h.tail) & ~MPX_F_MASK
            if t != h.ovf_pending_tail and h.ovf_pending_off >= self.spill_base:
                # Its record was never published: nobody will read the extent.
                # (Never below the spill region, whatever the header says.)
                mpx_punch(self.fd, h.ovf_pending_off, h.ovf_pending_len)
            mpx_store64(&h.ovf_pending_len, 0)

    # Every sleep of the ring, whatever word it sleeps on, is these two
    # steps: _slice() says how long (the deadline's rest, at most
    # MAX_SLEEP_NS, or 0 when the deadline has passed); the caller then sets
    # its word's WAIT flag (each word keeps its own) and _sleep() sleeps.

    cdef int _sleep(self, uint32_t* addr, uint32_t expected, int64_t left) except -1:
        """Sleep on the futex at `addr` while it holds `expected`, for at
        most `left` ns, without the GIL. Returns the futex's answer: 0
        (woken, or the word had changed), ETIMEDOUT (the slice ended) or
        EINTR (a signal: its Python handler has run, and Ctrl-C raises
        here). Raises RingClosed if another thread of this process closes
        the ring before or during the sleep: close() wakes the word, and the
        slice (at most MAX_SLEEP_NS) bounds the rare close that lands between
        the look at `closing` and the sleep."""
        cdef int r
        if self.closing:
            self._closed_while_waiting()
        with nogil:
            r = mpx_futex_wait(addr, expected, left)
        if self.closing:
            self._closed_while_waiting()
        if r == EINTR:
            PyErr_CheckSignals()
        return r

    cdef int _wait(self, uint64_t* word, uint64_t seen, int64_t deadline) except -1:
        """Wait until *word no longer equals `seen`: spin briefly, then sleep
        on the futex in the word's low half. Returns 1 to make the caller
        look again (changed, woken or a safety-net slice ended) and 0 once
        `deadline` has passed. The GIL is released throughout."""
        cdef int64_t spin = self.spin_ns, end, left
        cdef uint64_t cur
        cdef bint changed = False, yielding
        cdef int k, r
        cdef uint32_t* closing = <uint32_t*>&self.closing
        if self.spin_max_ns > 0 and spin > 0:
            # With more runnable tasks than cores, the process we wait for
            # may be waiting for our core: spin with sched_yield() so it
            # runs, instead of burning the time slice on pause loops.
            yielding = crowded()
            with nogil:
                end = monotonic_ns() + spin
                if deadline >= 0 and deadline < end:
                    end = deadline
                while not changed:
                    if yielding:
                        if mpx_load64(word) != seen:
                            changed = True
                            break
                        sched_yield()
                    else:
                        for k in range(32):
                            if mpx_load64(word) != seen:
                                changed = True
                                break
                            mpx_cpu_relax()
                    if not changed and monotonic_ns() >= end:
                        break
                    # close() from another thread of ours: stop at once (a
                    # spin may be long, e.g. a Pipe's spin=0.5).
                    if mpx_load32(closing):
                        break
            if self.closing:
                self._closed_while_waiting()
            # Adapt: spinning that pays off is kept up; spinning that keeps
            # failing (a trickle of messages) costs CPU for nothing, so it
            # shrinks, but only to a quarter: below the peer's usual response
            # time it would never succeed again, and never grow back.
            if changed:
                self.spin_ns = self.spin_ns * 2 + 1000
                if self.spin_ns > self.spin_max_ns:
                    self.spin_ns = self.spin_max_ns
                return 1
            self.spin_ns = self.spin_ns // 2
            if self.spin_ns < self.spin_max_ns // 4:
                self.spin_ns = self.spin_max_ns // 4
        cur = mpx_load64(word)
        if cur != seen:
            return 1
        left = _slice(deadline)
        if left == 0:
            return 0
        if not (cur & MPX_F_WAIT):
            if not mpx_cas64(word, cur, cur | MPX_F_WAIT):
                return 1
            cur |= MPX_F_WAIT
        r = self._sleep(mpx_lo32(word), <uint32_t>cur, left)
        if r == ETIMEDOUT and expired(deadline):
            return 0
        return 1

    cdef int _wait_readable(self, int64_t deadline) except -1:
        """Wait until a message is there or the ring is shut down: 1, else 0."""
        cdef uint64_t t, h
        while True:
            t = mpx_load64(&self.hdr.tail)
            h = mpx_load64(&self.hdr.head)
            if mpx_pos(t) != mpx_pos(h) or (t & MPX_F_SHUT):
                return 1
            if deadline == 0 or not self._wait(&self.hdr.tail, t, deadline):
                return 0

    def wait_readable(self, timeout=None):
        """True once get() would not block (a message, or shut down); False
        if `timeout` passes first (for Connection.poll)."""
        cdef int pid = self._enter()
        try:
            return bool(self._wait_readable(to_deadline(True, timeout)))
        finally:
            self._leave(pid)

    # ------------------------------------------------------------------ put

    cdef int _room(self, uint64_t need, uint64_t* t_out, uint64_t* hd_out) noexcept nogil:
        """Is there room for a `need`-byte record (and, under maxsize, one more
        message)? 1 yes, 0 no, -1 shut down. Exact under the producer lock,
        a hint without it."""
        cdef uint64_t t = mpx_load64(&self.hdr.tail)
        cdef uint64_t hd = mpx_load64(&self.hdr.head)
        t_out[0] = t
        hd_out[0] = hd
        if t & MPX_F_SHUT:
            return -1
        if self.cap - mpx_used(t, hd) >= need and (
                self.maxsize == 0 or mpx_count(t, hd) < self.maxsize):
            return 1
        return 0

    cdef int _wait_room(self, uint64_t need, int64_t deadline) except -1:
        """Without the producer lock: wait until a `need`-byte record may fit
        or the ring is shut down (1), or until `deadline` (0). Waiters take
        the wait lock first: one producer at a time sleeps on the head word,
        the others on the mutex, so a get wakes one process, not all."""
        cdef mpx_ring_header* h = self.hdr
        cdef uint64_t t, hd
        cdef int r = 1
        if not self._lock(&h.prod_wait, deadline, SIDE_WAIT):
            return 0
        try:
            while self._room(need, &t, &hd) == 0:
                if not self._wait(&h.head, hd, deadline):
                    r = 0
                    break
        finally:
            pthread_mutex_unlock(&h.prod_wait)
        return r

    cdef int _put_bufs(self, Py_buffer* bufs, Py_ssize_t nparts, int tag,
                       int64_t deadline, bint block) except -2:
        """Put one message: 1 done, 0 no room in time, -1 shut down."""
        cdef int r
        while True:
            r = self._put_once(bufs, nparts, tag, deadline, block)
            if r != 2:
                return r
            # The overflow area has no room now: wait until a consumer frees
            # an extent (area_head moves), then try again.
            if not block or deadline == 0 or not self._wait_area(self.area_seen, deadline):
                return 0

    cdef int _put_once(self, Py_buffer* bufs, Py_ssize_t nparts, int tag,
                       int64_t deadline, bint block) except -2:
        """One attempt of _put_bufs: 1 done, 0 no room in time, -1 shut down,
        2 the overflow area has no room (area_seen holds the head it saw)."""
        cdef mpx_ring_header* h = self.hdr
        cdef uint64_t body = body_length(bufs, nparts)
        cdef uint64_t rec = 8 + round8(body)
        cdef bint overflow = rec > self.inline_max or body > 0xffffffff
        cdef uint64_t need = 8 + sizeof(mpx_ovf_ref) if overflow else rec
        cdef uint64_t t, hd, nt, ext_off = 0, ext_len = 0, base
        cdef mpx_rec_hdr rh
        cdef mpx_ovf_ref ref
        cdef char* ext
        cdef int r, err = 0
        cdef int in_area
        while True:
            if not block or deadline == 0:
                # Answer at once when there is no room, whoever waits for it.
                r = self._room(need, &t, &hd)
                if r != 1:
                    return r
            if not self._lock(&h.prod_lock, _lock_deadline(block, deadline), SIDE_PRODUCER):
                return 0
            r = self._room(need, &t, &hd)
            if r == 1:
                break
            pthread_mutex_unlock(&h.prod_lock)
            if r < 0:
                return -1
            if not block or not self._wait_room(need, deadline):
                return 0
        # Holding the producer lock, with room for the record.
        err = self._ring_pages(mpx_pos(t), need)
        if err:
            pthread_mutex_unlock(&h.prod_lock)
            raise OSError(err, f"no shared memory left for the queue: {os.strerror(err)}")
        rh.len = <uint32_t>(sizeof(mpx_ovf_ref) if overflow else body)
        rh.kind = MPX_REC_OVERFLOW if overflow else MPX_REC_INLINE
        rh.tag = tag
        rh.nparts = <uint16_t>nparts
        nt = mpx_pack(mpx_cnt(t) + 1, mpx_pos(t) + 8 + round8(rh.len), 0)
        self.pend_tail = nt
        in_area = 0
        if overflow:
            try:
                in_area = self._area_put(bufs, nparts, body, &ref)
            except BaseException:
                pthread_mutex_unlock(&h.prod_lock)     # never leave it held
                raise
            if in_area == 2:
                pthread_mutex_unlock(&h.prod_lock)
                return 2
        if in_area:
            copy_in(self.data, self.mask, mpx_pos(t) + 8, <char*>&ref, sizeof(ref))
            overflow = False           # nothing pending to clean up at publish
        elif overflow:
            base = self.spill_base
            if mpx_pos(t) == mpx_pos(hd) and h.ovf_next != base:
                # Ring empty, so no extent is in use: start again at the base
                # and give back whatever the file grew by.
                h.ovf_next = base
                ftruncate(self.fd, base)
            ext_len = (body + self.page - 1) & ~(self.page - 1)
            ext_off = h.ovf_next
            if ext_off < base or (ext_off & (self.page - 1)) or ext_off + ext_len < ext_off:
                pthread_mutex_unlock(&h.prod_lock)
                self._corrupt_spill_next(ext_off)
            h.ovf_pending_off = ext_off
            h.ovf_pending_tail = nt
            mpx_store64(&h.ovf_pending_len, ext_len)
            h.ovf_next = ext_off + ext_len
            with nogil:
                err = mpx_fallocate(self.fd, ext_off, ext_len)
                if not err:
                    ext = <char*>mpx_map(ext_len, PROT_READ | PROT_WRITE, self.fd, ext_off)
                    if ext == NULL:
                        err = mpx_errno()
                    else:
                        write_body(ext, 0, 0, bufs, nparts)
                        munmap(ext, ext_len)
                if err:
                    mpx_punch(self.fd, ext_off, ext_len)
                    mpx_store64(&h.ovf_pending_len, 0)
            if err:
                pthread_mutex_unlock(&h.prod_lock)
                raise OSError(err, f"no room for a {body}-byte message in shared "
                                   f"memory: {os.strerror(err)}")
            ref.offset = ext_off
            ref.length = body
            ref.flags = 0
            copy_in(self.data, self.mask, mpx_pos(t) + 8, <char*>&ref, sizeof(ref))
        elif body >= NOGIL_COPY:
            with nogil:
                write_body(self.data, self.mask, mpx_pos(t) + 8, bufs, nparts,
                           body >= MPX_STREAM_MIN and
                           mpx_reader_elsewhere(&h.aux[MPX_AUX_READER_CPU]))
        else:
            write_body(self.data, self.mask, mpx_pos(t) + 8, bufs, nparts)
        copy_in(self.data, self.mask, mpx_pos(t), <char*>&rh, 8)
        if self.crash_point == CRASH_PRODUCER_BEFORE_PUBLISH:
            kill(getpid(), SIGKILL)
        r = self._publish_tail(t, nt, overflow)
        if in_area:
            if r < 0:
                self._area_undo()          # shut down meanwhile: give it back
            mpx_store64(&h.area_pend, 0)
        pthread_mutex_unlock(&h.prod_lock)
        if r == 2:
            mpx_futex_wake(mpx_lo32(&h.tail), INT32_MAX)
        return 1 if r > 0 else -1

    cdef inline uint64_t _area_backlog(self, uint64_t nxt, uint64_t head) noexcept nogil:
        """Bytes of live extents in the area: [head, next) less the bytes the
        last lap change skipped, while head has not passed them. (Only one
        such gap can be pending: the producer cannot finish a lap while the
        head is still in the one before. A gap recorded by a producer killed
        before claiming its extent lies past `next` and is ignored.)"""
        cdef mpx_ring_header* h = self.hdr
        cdef uint64_t used = nxt - head, gs = h.area_gap_start, ge = h.area_gap_end
        if ge <= nxt and head <= gs and gs < ge and used >= ge - gs:
            used -= ge - gs
        return used

    cdef int _wait_area(self, uint64_t seen, int64_t deadline) except -1:
        """Without the producer lock: wait until area_head is no longer `seen`
        (a consumer freed an extent: the answer may change) or the ring is
        shut down (1), or until `deadline` (0)."""
        cdef mpx_ring_header* h = self.hdr
        cdef uint64_t a
        cdef int64_t left
        cdef int r = 1
        if not self._lock(&h.prod_wait, deadline, SIDE_WAIT):
            return 0
        try:
            while True:
                a = mpx_load64(&h.area_head)
                if (a & ~(<uint64_t>AREA_WAIT)) != seen or (mpx_load64(&h.tail) & MPX_F_SHUT):
                    break
                left = _slice(deadline)
                if left == 0:
                    r = 0
                    break
                if mpx_load64(&h.area_cpend) and self._poke_consumers():
                    continue
                if not (a & AREA_WAIT):
                    if not mpx_cas64(&h.area_head, a, a | AREA_WAIT):
                        continue
                    a |= AREA_WAIT
                self._sleep(mpx_lo32(&h.area_head), <uint32_t>a, left)
        finally:
            pthread_mutex_unlock(&h.prod_wait)
        return r

    cdef bint _poke_consumers(self) noexcept nogil:
        """A consumer may have died between moving the head and giving area
        extents back; its repair would wait for the next consumer to lock,
        which may never come while producers wait for that very room. So a
        waiting producer tries the consumer lock (never waiting for it) and,
        if its owner is dead, runs the repair itself. True if it did."""
        cdef mpx_ring_header* h = self.hdr
        cdef int r = pthread_mutex_trylock(&h.cons_lock)
        if r == EOWNERDEAD:
            self._repair(SIDE_CONSUMER)
            pthread_mutex_consistent(&h.cons_lock)
            pthread_mutex_unlock(&h.cons_lock)
            return True
        if r == 0:
            pthread_mutex_unlock(&h.cons_lock)
        return False

    cdef int _ring_pages(self, uint64_t pos, uint64_t n) noexcept nogil:
        """Producer lock held: make sure the ring bytes [pos, pos+n) have
        pages (only ever allocates during the tail's first lap). 0 or errno."""
        cdef mpx_ring_header* h = self.hdr
        cdef uint64_t end = (pos & self.mask) + n, alloc = h.ring_alloc
        cdef int err
        if end > self.cap:
            end = self.cap                  # wraps: needs the whole ring
        if end <= alloc:
            return 0
        end = (end + RING_CHUNK - 1) & ~(<uint64_t>RING_CHUNK - 1)
        if end > self.cap:
            end = self.cap
        err = mpx_fallocate(self.fd, MPX_RING_HDR_SIZE + alloc, end - alloc)
        if err:
            return err
        mpx_store64(&h.ring_alloc, end)
        return 0

    cdef int _area_put(self, Py_buffer* bufs, Py_ssize_t nparts, uint64_t body,
                       mpx_ovf_ref* ref) except -1:
        """Producer lock held: place a message body in the overflow area.
        1: done; 0: it cannot go there (bigger than the area, or no memory),
        the caller spills it; 2: the area has no room now, wait for it."""
        cdef mpx_ring_header* h = self.hdr
        cdef uint64_t A = self.area_size, L = body, s, s2, at, head, alloc, grow = 0
        cdef uint64_t allowed, a
        cdef char* area
        cdef int err
        cdef bint empty
        if L == 0 or L > A:
            return 0
        # Positions are running totals; an extent lives at (position % A) and
        # never wraps. The live extents are [head, next): a new one fits if
        # it ends at most A past head. Going on to the next lap (offset 0)
        # counts the skipped bytes as used until the extent after them is
        # consumed. Preference: pages that already exist, at the current
        # place, then at the start of the area; only then new pages. So the
        # area's memory follows the backlog, not the traffic.
        s = h.area_next
        head = mpx_load64(&h.area_head) & ~(<uint64_t>AREA_WAIT)
        empty = head == s               # nothing live: any place is free
        if h.area_alloc > A:
            # Every write below stays inside [0, area_alloc) or [0, A).
            raise RingError("damaged mpx ring: its header says more of the overflow area "
                            "has pages than the area holds")
        # Flow control: a bounded backlog keeps the area's memory (and the
        # producers' lead) small; a message always gets in beside one other
        # of its size, so even huge ones are double-buffered.
        allowed = 2 * ((L + 63) & ~(<uint64_t>63))     # two of its size, aligned
        if allowed < self.area_soft:
            allowed = self.area_soft
        self.area_seen = head
        if not empty and self._area_backlog(s, head) + L > allowed:
            return 2
        at = s % A
        s2 = s + (A - at) if at else s  # the start of the next lap (or this one)
        alloc = h.area_alloc
        if at + L <= alloc and s + L - head <= A:
            pass
        elif L <= alloc and (empty or s2 + L - head <= A):
            s = s2
            at = 0
        elif empty or s2 + L - head <= A:
            s = s2                      # grow from the start: fewest new pages
            at = 0
            grow = L
        elif at + L <= A and s + L - head <= A:
            grow = at + L
        else:
            return 2                    # no room in the area right now: wait
        # Pages first (nothing shared has changed yet if this fails; extra
        # pages are harmless).
        area = self._area_map()
        if grow > alloc:
            # First use of these pages: allocate them now, so that a full
            # /dev/shm is an error here and never a SIGBUS in the copy.
            grow = (grow + self.page - 1) & ~(self.page - 1)   # A is page-aligned
            err = mpx_fallocate(self.fd, self.area_base + alloc, grow - alloc)
            if err:
                return 0
            h.area_alloc = grow
        # Pages the header says exist must really be there: the file may
        # have been cut short from outside, and writing to a mapped page
        # past its end is a SIGBUS (see _check_file_covers). One fstat per
        # message too big for the ring costs nothing next to its copy.
        if mpx_file_size(self.fd) < <int64_t>(self.area_base + at + L):
            raise RingError(f"damaged mpx ring: its file is shorter than its overflow area "
                            f"claims ({mpx_file_size(self.fd)} bytes; truncated by another "
                            f"program?)")
        # From here on shared state changes: note how to undo it, for whoever
        # takes the lock over if we are killed before publishing.
        h.area_undo_next = h.area_next
        h.area_undo_gap_start = h.area_gap_start
        h.area_undo_gap_end = h.area_gap_end
        h.area_pend_tail = self.pend_tail
        mpx_store64(&h.area_pend, 1)
        if s != h.area_next and not empty:
            # A lap change with extents still live: note the skipped bytes,
            # which are no backlog (see _area_backlog).
            h.area_gap_start = h.area_next
            h.area_gap_end = s
        if empty and s != h.area_next:
            # Starting over at offset 0 of an empty area: move area_head up
            # too, so the skipped rest of the old lap does not count as
            # backlog. Safe: with nothing live, no consumer writes area_head
            # until a record placed after this point is consumed.
            a = mpx_load64(&h.area_head)
            while not mpx_cas64(&h.area_head, a, s | (a & AREA_WAIT)):
                a = mpx_load64(&h.area_head)
            if a & AREA_WAIT:
                mpx_futex_wake(mpx_lo32(&h.area_head), INT32_MAX)
        end = at + L
        # Claimed before the record is published; a producer killed before
        # publishing has it undone by the next lock holder (area_pend).
        h.area_next = (s + L + 63) & ~(<uint64_t>63)
        if body >= NOGIL_COPY:
            with nogil:
                write_body(area, 0, at, bufs, nparts)
        else:
            write_body(area, 0, at, bufs, nparts)
        ref.offset = s
        ref.length = body
        ref.flags = MPX_OVF_AREA
        return 1

    cdef int _publish_tail(self, uint64_t t, uint64_t nt, bint clear_pending) noexcept nogil:
        """Publish the new tail (producer lock held). 1: done; 2: done, and a
        consumer sleeps, so wake the tail word (after unlocking); -1:
        shutdown() came first and the message is not put.

        The publish clears the WAITERS bit in the same atomic step, and a
        set bit means "wake everyone sleeping on this word": a sleeper can
        never miss the change it sleeps on, and a sleeper that was killed
        costs one spare wake-up at most."""
        cdef mpx_ring_header* h = self.hdr
        while True:
            if t & MPX_F_SHUT:
                # shutdown() came while we copied: the message is not put
                # (nothing of it is visible).
                if clear_pending:
                    mpx_punch(self.fd, h.ovf_pending_off, h.ovf_pending_len)
                    mpx_store64(&h.ovf_pending_len, 0)
                return -1
            if mpx_cas64(&h.tail, t, nt):
                break
            t = mpx_load64(&h.tail)     # only the flags can have changed
        if self.crash_point == CRASH_PRODUCER_AFTER_PUBLISH:
            kill(getpid(), SIGKILL)
        if clear_pending:
            mpx_store64(&h.ovf_pending_len, 0)
        return 2 if t & MPX_F_WAIT else 1

    def put(self, msg, int tag=0, bint block=True, timeout=None):
        """Put one message: `msg` is a bytes-like object or a list of them.
        Raises full_exc if no room appears in time, shutdown_exc after
        shutdown()."""
        cdef int pid = self._enter()
        try:
            self._put_msg(msg, tag, block, timeout)
        finally:
            self._leave(pid)

    cdef int _put_msg(self, object msg, int tag, bint block, object timeout) except -1:
        cdef int r = self._try_put(msg, tag, block, timeout)
        if r == 1:
            return 0
        if r == 0:
            raise self.full_exc()
        raise self.shutdown_exc()

    cdef int _try_put(self, object msg, int tag, bint block, object timeout) except -2:
        """Put one message: 1 put, 0 no room in time, -1 shut down."""
        cdef Py_buffer buf
        cdef _Parts parts
        cdef int64_t deadline
        if tag:
            check_tag(tag)
        deadline = to_deadline(block, timeout)
        if type(msg) is bytes:
            PyObject_GetBuffer(msg, &buf, PyBUF_SIMPLE)
            try:
                return self._put_bufs(&buf, 1, tag, deadline, block)
            finally:
                PyBuffer_Release(&buf)
        parts = _Parts()
        parts.fill(msg)
        return self._put_bufs(parts.bufs, parts.n, tag, deadline, block)

    def put_obj(self, obj, block=True, timeout=None):
        """Turn `obj` into a message with the enc_* hooks and put it (the
        arguments and errors of put()); then, as send_obj, call on_bell() if
        aux word bell_aux holds bell_value.""" 
        self._put_obj(obj, block, timeout)

    cdef int _put_obj(self, object obj, bint block, object timeout) except -1:
        cdef int tag = 0
        cdef bint bell
        cdef int pid = self._enter()
        try:
            msg = self._encode_obj(obj, &tag)
            self._put_msg(msg, tag, block, timeout)
            bell = self._bell_due()
        finally:
            self._leave(pid)
        if bell:
            self._ring_bell()
        return 0

    cdef int _ring_bell(self) except -1:
        """A publish found aux word bell_aux at bell_value (armed): with a
        bell_fd, ring it as a channel's writer does (channel.py's module
        docstring: one writer per arming, and a ring the reader was quicker
        than is taken back); otherwise call on_bell()."""
        cdef uint32_t* armed
        cdef uint32_t v = self.bell_value
        cdef uint64_t t, h
        if self.bell_fd < 0:
            self.on_bell()
            return 0
        if self.hdr == NULL:
            return 0                # closed by another thread meanwhile
        armed = &self.hdr.aux[_aux(self.bell_aux)]
        while mpx_load32(armed) == v and mpx_cas32(armed, v, v + 1):
            mpx_bell_ring(self.bell_fd)
            t = mpx_load64(&self.hdr.tail)
            h = mpx_load64(&self.hdr.head)
            if mpx_pos(t) != mpx_pos(h) or (t & MPX_F_SHUT):
                return 0            # rung over a message
            if not mpx_bell_take(self.bell_fd):
                return 0            # the reader cleared it
            # The reader took the message first: we took our ring back;
            # re-arm for it and look again.
            mpx_cas32(armed, v + 1, v)
            t = mpx_load64(&self.hdr.tail)
            h = mpx_load64(&self.hdr.head)
            if mpx_pos(t) == mpx_pos(h) and not (t & MPX_F_SHUT):
                return 0
        return 0

    cdef inline bint _bell_due(self) noexcept:
        # After a publish (a locked compare-and-swap, a full barrier): does
        # aux word bell_aux ask for on_bell()? (See send_obj; a queue with a
        # fileno() reader uses the same bell.)
        return self.bell_aux >= 0 and self.hdr != NULL and \
            mpx_load32(&self.hdr.aux[_aux(self.bell_aux)]) == self.bell_value

    cdef object _encode_obj(self, object obj, int* tag):
        """The message for `obj` (its tag in `tag`), by the enc_* hooks."""
        cdef object tp = type(obj)
        cdef object msg
        cdef int t
        if tp is bytes and self.enc_bytes_tag >= 0:
            tag[0] = self.enc_bytes_tag
            return obj
        if self.enc_compact_tag >= 0 and (tp is tuple or tp is int or tp is str or tp is float
                                          or tp is list or tp is dict or obj is None
                                          or tp is bool):
            msg = compact_dumps(obj)
            if msg is not None:
                tag[0] = self.enc_compact_tag
                return msg
        if tp in self.enc_plain:
            msg = self.enc_dumps(obj)
            if type(msg) is bytes and len(<bytes>msg) < self.enc_big_size:
                tag[0] = 0
                return msg
            msg, t = self.enc_big(obj, msg)
        else:
            msg, t = self.enc_other(obj)
        tag[0] = t
        return msg

    def get_obj(self, block=True, timeout=None):
        """Take a message and turn it back into an object with the dec_*
        hooks (the arguments and errors of get())."""
        return self._get_obj(block, timeout)

    cdef object _get_obj(self, bint block, object timeout):
        cdef list out = self._get(1, block, timeout)
        return self._decode_msg(out[0])

    cdef object _decode_msg(self, object msg):
        cdef list parts
        if type(msg) is bytes:
            return self.dec_loads(msg)
        if (<tuple>msg)[0] == self.dec_compact_tag:
            parts = (<tuple>msg)[1]
            if len(parts) == 1:
                return compact_loads(parts[0])
        return self.dec_other(msg)

    def decode_into(self, msgs, list out):
        """Append to `out` the object of each message of `msgs` (as get_many
        gives them), by the dec_* hooks. If one fails to decode, its error is
        raised and `out` holds the objects of the messages before it."""
        for msg in msgs:
            out.append(self._decode_msg(msg))

    # ------------------------------------------------- channel send/recv

    def send_obj(self, obj):
        """A channel's send: put_obj(obj) without waiting, then the bell
        check (if aux word bell_aux holds bell_value, call on_bell()). A
        full ring hands the message to on_full(msg, tag), which waits for
        room its own way (and rings the bell itself)."""
        self._send_obj(obj)

    cdef int _send_obj(self, object obj) except -1:
        cdef int tag = 0, r
        cdef bint bell
        cdef int pid = self._enter()
        try:
            msg = self._encode_obj(obj, &tag)
            r = self._try_put(msg, tag, False, None)
            # The publish's compare-and-swap is a full barrier: this load
            # cannot miss a reader that armed before its last look.
            bell = r == 1 and self.bell_aux >= 0 and \
                mpx_load32(&self.hdr.aux[_aux(self.bell_aux)]) == self.bell_value
        finally:
            self._leave(pid)
        if r == 0:
            self.on_full(msg, tag)
        elif r < 0:
            raise self.shutdown_exc()
        elif bell:
            self.on_bell()
        return 0

    def recv_obj(self):
        """A channel's recv: get_obj(), waiting in the ring at most
        recv_wait seconds; after that, the object on_empty() returns (it
        sleeps its own way). A take while aux word watch_aux is set calls
        on_take() first (also when the message then fails to decode)."""
        return self._recv_obj()

    cdef object _recv_obj(self):
        cdef list out
        cdef bint watched
        try:
            out = self._get(1, True, self.recv_wait)
        except self.empty_exc:
            return self.on_empty()
        # (No other thread can close the ring while we hold the GIL.)
        watched = self.watch_aux >= 0 and self.hdr != NULL and not self.closing and \
            mpx_load32(&self.hdr.aux[_aux(self.watch_aux)]) != 0
        if watched:
            self.on_take()
        return self._decode_msg(out[0])

    def put_many_obj(self, objs, bint block=True, timeout=None):
        """put_many() of objects, each turned into a message as by put_obj().
        All are encoded first: one that cannot be raises and nothing is put."""
        cdef _Batch batch = _Batch()
        cdef bint bell = False
        cdef int pid = self._enter()
        try:
            batch.fill(objs, self)
            n = self._put_batch(batch, to_deadline(block, timeout), block)
            bell = n > 0 and self._bell_due()
        finally:
            self._leave(pid)
        if bell:
            self._ring_bell()
        return n

    def put_many(self, items, bint block=True, timeout=None):
        """Put several messages with as few lock rounds and wake-ups as room
        allows (one, when they all fit). Each item is a bytes-like object
        (tag 0) or a (tag, msg) pair, msg being a bytes-like object or a list
        of them. Returns how many were put: fewer than len(items) when no
        room appeared in time or the ring was shut down (see is_shutdown).
        An item that is not a buffer raises before anything is put."""
        cdef _Batch batch = _Batch()
        cdef int pid = self._enter()
        try:
            batch.fill(items)
            return self._put_batch(batch, to_deadline(block, timeout), block)
        finally:
            self._leave(pid)

    cdef Py_ssize_t _put_batch(self, _Batch batch, int64_t deadline, bint block) except -1:
        cdef mpx_ring_header* h = self.hdr
        cdef Py_ssize_t i = 0, n = batch.n, start
        cdef uint64_t t, hd, pos, free, body, rec, used_msgs
        cdef Py_buffer* bufs
        cdef Py_ssize_t nb
        cdef mpx_rec_hdr rh
        cdef int r, tag, err = 0
        cdef bint big
        while i < n:
            bufs = batch.bufs + batch.first[i]
            nb = batch.nparts[i]
            body = body_length(bufs, nb)
            rec = 8 + round8(body)
            if rec > self.inline_max or body > 0xffffffff:
                # Overflow messages go one at a time.
                r = self._put_bufs(bufs, nb, batch.tags[i], deadline, block)
                if r != 1:
                    return i
                i += 1
                continue
            if (not block or deadline == 0) and self._room(rec, &t, &hd) != 1:
                return i
            if not self._lock(&h.prod_lock, _lock_deadline(block, deadline), SIDE_PRODUCER):
                return i
            r = self._room(rec, &t, &hd)
            if r != 1:
                pthread_mutex_unlock(&h.prod_lock)
                if r < 0 or not block or not self._wait_room(rec, deadline):
                    return i
                continue
            free = self.cap - mpx_used(t, hd)
            used_msgs = mpx_count(t, hd)
            pos = mpx_pos(t)
            start = i
            # Write as many consecutive inline messages as fit now.
            while i < n:
                if i > start:
                    bufs = batch.bufs + batch.first[i]
                    nb = batch.nparts[i]
                    body = body_length(bufs, nb)
                    rec = 8 + round8(body)
                    if rec > self.inline_max or body > 0xffffffff:
                        break
                    if rec > free or (self.maxsize and used_msgs >= self.maxsize):
                        break
                err = self._ring_pages(pos, rec)
                if err:
                    break                   # no memory: put what is written so far
                rh.len = <uint32_t>body
                rh.kind = MPX_REC_INLINE
                rh.tag = batch.tags[i]
                rh.nparts = <uint16_t>nb
                if body >= NOGIL_COPY:
                    with nogil:
                        write_body(self.data, self.mask, pos + 8, bufs, nb)
                else:
                    write_body(self.data, self.mask, pos + 8, bufs, nb)
                copy_in(self.data, self.mask, pos, <char*>&rh, 8)
                pos += rec
                free -= rec
                used_msgs += 1
                i += 1
            if i == start:
                pthread_mutex_unlock(&h.prod_lock)
                raise OSError(err, f"no shared memory left for the queue: {os.strerror(err)}")
            r = self._publish_tail(t, mpx_pack(mpx_cnt(t) + (i - start), pos, 0), False)
            pthread_mutex_unlock(&h.prod_lock)
            if r == 2:
                mpx_futex_wake(mpx_lo32(&h.tail), INT32_MAX)
            elif r < 0:
                return start
        return i

    # ------------------------------------------------------------------ get

    # Overflow records come from shared memory that any process holding the
    # file can write (or a damaged /dev/shm file): their extents are checked
    # before anything touches them, against the layout (an extent never
    # overlaps the header, the ring or, for a spill, the overflow area) and
    # against the file's size now (fstat: a mapped page past the end of the
    # file is a SIGBUS, not an error). What cannot be checked with mmap is a
    # file truncated by another process AFTER this check, during the copy:
    # that still raises SIGBUS, as does a file cut short inside the ring
    # itself after attach() checked its size (checking that on every call
    # would cost a system call per message). Only an mpx ring file damaged
    # from outside (ftruncate by hand, another program) can come to that;
    # mpx itself only ever shrinks a file past its live extents, under the
    # producer lock.

    cdef int _check_file_covers(self, uint64_t end) except -1:
        """The file must extend to `end` bytes for an extent to be read."""
        cdef int64_t size = mpx_file_size(self.fd)
        if size < 0:
            raise OSError(mpx_errno(), os.strerror(mpx_errno()))
        if <uint64_t>size < end:
            raise RingError(f"corrupt ring record: a large message's extent ends at byte "
                            f"{end} of the file, which has only {size} (truncated by "
                            f"another program?)")
        return 0

    cdef int _check_area_extent(self, mpx_ovf_ref* ref) except -1:
        """An overflow-area record's extent: inside the area, and inside the
        file."""
        cdef uint64_t at
        if self.area_size == 0 or ref.length > self.area_size or \
                (ref.offset % self.area_size) + ref.length > self.area_size:
            raise RingError("corrupt ring record: an overflow record points outside "
                            "the overflow area")
        at = ref.offset % self.area_size
        self._check_file_covers(self.area_base + at + ref.length)
        return 0

    cdef uint64_t _check_spill_extent(self, mpx_ovf_ref* ref, bint reading) except? 0:
        """A spill record's extent: page-aligned, past the ring and the area
        (so a punch or a read never touches them), not wrapping around; and,
        when it is to be read, inside the file. Returns its length in pages'
        bytes."""
        cdef uint64_t off = ref.offset
        cdef uint64_t ext_len = (ref.length + self.page - 1) & ~(self.page - 1)
        if off < self.spill_base or (off & (self.page - 1)) or ext_len < ref.length \
                or off + ext_len < off:
            raise RingError(f"corrupt ring record: a spill record points at bytes "
                            f"{off}..+{ref.length} of the file, outside the spill region "
                            f"(from byte {self.spill_base}, page-aligned)")
        if reading:
            self._check_file_covers(off + ref.length)
        return ext_len

    cdef object _take(self, uint64_t hd, uint64_t* adv):
        """Copy the record at the head out (consumer lock held). Sets *adv to
        the bytes it occupies. Returns the message, or None for the remains
        of a message whose reader died after freeing its extent."""
        cdef mpx_ring_header* h = self.hdr
        cdef uint64_t pos = mpx_pos(hd), ext_len
        cdef mpx_rec_hdr rh
        cdef mpx_ovf_ref ref
        cdef char* ext
        cdef object msg
        copy_out(<char*>&rh, self.data, self.mask, pos, 8)
        adv[0] = 8 + round8(rh.len)
        if adv[0] > mpx_used(mpx_load64(&h.tail), hd) or adv[0] > self.cap:
            raise RingError("corrupt ring record: a record runs past the tail")
        if rh.kind == MPX_REC_INLINE:
            if rh.len >= MPX_STREAM_MIN:
                mpx_note_reader_cpu(&h.aux[MPX_AUX_READER_CPU])
            msg = read_body(self.data, self.mask, pos + 8, rh.len, rh.nparts, rh.tag)
            if self.crash_point == CRASH_CONSUMER_AFTER_COPY:
                kill(getpid(), SIGKILL)
            return msg
        if rh.kind != MPX_REC_OVERFLOW or rh.len != sizeof(mpx_ovf_ref):
            raise RingError(f"corrupt ring record: unknown record kind {rh.kind}")
        copy_out(<char*>&ref, self.data, self.mask, pos + 8, sizeof(ref))
        if ref.flags & MPX_OVF_AREA:
            self._check_area_extent(&ref)
            msg = read_body(self._area_map(), 0, ref.offset % self.area_size, ref.length,
                            rh.nparts, rh.tag)
            if self.crash_point == CRASH_CONSUMER_AFTER_COPY:
                kill(getpid(), SIGKILL)
            # Freed only after the head has moved past the record (see
            # _get_locked): a consumer killed before that leaves the message
            # intact for the next one.
            self.area_taken_end = (ref.offset + ref.length + 63) & ~(<uint64_t>63)
            return msg
        ext_len = self._check_spill_extent(&ref, not (ref.flags & MPX_OVF_TAKEN))
        if ref.flags & MPX_OVF_TAKEN:
            # A consumer copied this out and died before moving the head:
            # its message is lost with it; make sure the extent is freed.
            mpx_punch(self.fd, ref.offset, ext_len)
            return None
        if ext_len == 0:
            msg = read_body(self.data, 0, 0, 0, rh.nparts, rh.tag)
        else:
            with nogil:
                ext = <char*>mpx_map(ext_len, PROT_READ, self.fd, ref.offset)
            if ext == NULL:
                raise OSError(mpx_errno(), "cannot map a large message: "
                              + os.strerror(mpx_errno()))
            try:
                msg = read_body(ext, 0, 0, ref.length, rh.nparts, rh.tag)
            finally:
                munmap(ext, ext_len)
        if self.crash_point == CRASH_CONSUMER_AFTER_COPY:
            kill(getpid(), SIGKILL)
        # Copied out: mark it taken before freeing, so a consumer killed
        # from here on never makes the next one read a freed extent.
        ref.flags |= MPX_OVF_TAKEN
        copy_in(self.data, self.mask, pos + 8 + 16, <char*>&ref.flags, 8)
        if self.crash_point == CRASH_CONSUMER_AFTER_TAKEN:
            kill(getpid(), SIGKILL)
        mpx_punch(self.fd, ref.offset, ext_len)
        return msg

    cdef bint _publish_head(self, uint64_t old, uint64_t adv, uint64_t nmsgs) noexcept nogil:
        """Move the head past consumed records (consumer lock held). Returns
        True when a producer sleeps on the head word and must be woken (after
        unlocking); the WAITERS bit is cleared in the same step."""
        cdef mpx_ring_header* h = self.hdr
        cdef uint64_t nh = mpx_pack(mpx_cnt(old) + nmsgs, mpx_pos(old) + adv, 0)
        while not mpx_cas64(&h.head, old, nh | (old & MPX_F_SHUT)):
            old = mpx_load64(&h.head)
        return (old & MPX_F_WAIT) != 0

    cdef list _get_locked(self, uint64_t limit, bint* wake):
        """Consumer lock held: take up to `limit` messages (none if another
        consumer was first)."""
        cdef mpx_ring_header* h = self.hdr
        cdef uint64_t t, hd, adv, total, got
        cdef object msg
        cdef list out = []
        hd = mpx_load64(&h.head)
        t = mpx_load64(&h.tail)
        total = 0
        got = 0
        try:
            while (mpx_pos(hd) + total) & (MPX_POS_MOD - 1) != mpx_pos(t) and <uint64_t>len(out) < limit:
                msg = self._take(mpx_pack(mpx_cnt(hd) + got, mpx_pos(hd) + total, 0), &adv)
                total += adv
                got += 1
                if msg is not None:
                    out.append(msg)
        except BaseException:
            # The record that failed stays at the head (its error comes back
            # on the next call); those taken before it are returned now.
            if not out:
                raise
        finally:
            if got and self._consume(hd, total, got):
                wake[0] = True
            self.area_taken_end = 0
        return out

    cdef bint _consume(self, uint64_t hd, uint64_t total, uint64_t got) noexcept nogil:
        """Consumer lock held: publish the head past `got` records (`total`
        bytes), then give back the area extents they used. A consumer killed
        between the two leaves area_cpend for the next one to finish."""
        cdef mpx_ring_header* h = self.hdr
        cdef bint wake
        cdef uint64_t value = self.area_taken_end
        if value:
            h.area_cpend_head = mpx_pack(mpx_cnt(hd) + got, mpx_pos(hd) + total, 0)
            h.area_cpend_value = value
            mpx_store64(&h.area_cpend, 1)
        wake = self._publish_head(hd, total, got)
        if self.crash_point == CRASH_CONSUMER_AFTER_HEAD:
            kill(getpid(), SIGKILL)
        if value:
            self.area_taken_end = 0
            self._area_cfree(value)
            mpx_store64(&h.area_cpend, 0)
        return wake

    def get(self, bint block=True, timeout=None):
        """Take the oldest message: bytes (single part, tag 0) or
        (tag, [parts]). Raises empty_exc if none arrives in time and
        shutdown_exc once the ring is shut down and empty."""
        cdef list out = self._get(1, block, timeout)
        return out[0]

    def get_many(self, max_items=None, bint block=True, timeout=None):
        """Take up to `max_items` messages (None: all there are) for one lock
        round: waits like get() for the first, then takes what is there."""
        cdef uint64_t limit
        if max_items is None:
            limit = <uint64_t>-1
        else:
            if max_items < 1:
                raise ValueError(f"max_items must be at least 1, not {max_items}")
            limit = max_items
        return self._get(limit, block, timeout)

    cdef list _get(self, uint64_t limit, bint block, object timeout):
        cdef mpx_ring_header* h
        cdef int64_t deadline
        cdef uint64_t t
        cdef bint wake = False
        cdef list out
        cdef int pid = self._enter()
        try:
            h = self.hdr
            deadline = to_deadline(block, timeout)
            while True:
                t = mpx_load64(&h.tail)
                if mpx_pos(t) == mpx_pos(mpx_load64(&h.head)):
                    if t & MPX_F_SHUT:
                        raise self.shutdown_exc()
                    if not block or expired(deadline) or not self._wait_message(deadline):
                        raise self.empty_exc()
                    continue
                if not self._lock(&h.cons_lock, _lock_deadline(block, deadline), SIDE_CONSUMER):
                    raise self.empty_exc()
                try:
                    out = self._get_locked(limit, &wake)
                finally:
                    pthread_mutex_unlock(&h.cons_lock)
                    if wake:
                        mpx_futex_wake(mpx_lo32(&h.head), INT32_MAX)
                        wake = False
                if out:
                    return out
                # Another consumer was first, or only the remains of a dead
                # consumer's message were there: look again.
        finally:
            self._leave(pid)

    cdef int _wait_message(self, int64_t deadline) except -1:
        """Without the consumer lock: wait until a message is there or the ring
        is shut down (1), or until `deadline` (0). As for producers, one
        consumer at a time sleeps on the tail word; the rest on the wait lock."""
        cdef mpx_ring_header* h = self.hdr
        cdef uint64_t t
        cdef int r = 1
        if not self._lock(&h.cons_wait, deadline, SIDE_WAIT):
            return 0
        try:
            while True:
                t = mpx_load64(&h.tail)
                if mpx_pos(t) != mpx_pos(mpx_load64(&h.head)) or (t & MPX_F_SHUT):
                    break
                if not self._wait(&h.tail, t, deadline):
                    r = 0
                    break
        finally:
            pthread_mutex_unlock(&h.cons_wait)
        return r

    # ------------------------------------------------------------- shutdown

    def shutdown(self):
        """Mark the ring shut down and wake every waiter: later puts fail,
        gets drain what is there and then fail."""
        cdef mpx_ring_header* h = self.hdr
        cdef uint64_t w
        cdef int pid = self._enter()
        try:
            for word in (0, 1):
                while True:
                    w = mpx_load64(&h.tail if word == 0 else &h.head)
                    if w & MPX_F_SHUT:
                        break
                    if mpx_cas64(&h.tail if word == 0 else &h.head, w, w | MPX_F_SHUT):
                        break
            mpx_futex_wake(mpx_lo32(&h.tail), INT32_MAX)
            mpx_futex_wake(mpx_lo32(&h.head), INT32_MAX)
            mpx_futex_wake(&h.acked, INT32_MAX)
            mpx_futex_wake(mpx_lo32(&h.area_head), INT32_MAX)
        finally:
            self._leave(pid)

    def drain(self):
        """Discard every message in the ring; returns how many."""
        cdef mpx_ring_header* h = self.hdr
        cdef uint64_t hd, t, pos, adv, ext_len, n = 0
        cdef bint wake = False
        cdef mpx_rec_hdr rh
        cdef mpx_ovf_ref ref
        cdef int pid = self._enter()
        try:
            self._lock(&h.cons_lock, -1, SIDE_CONSUMER)
            try:
                hd = mpx_load64(&h.head)
                t = mpx_load64(&h.tail)
                pos = mpx_pos(hd)
                while pos != mpx_pos(t):
                    copy_out(<char*>&rh, self.data, self.mask, pos, 8)
                    adv = 8 + round8(rh.len)
                    if adv > ((mpx_pos(t) - pos) & (MPX_POS_MOD - 1)) or adv > self.cap:
                        raise RingError("corrupt ring record: a record runs past the tail")
                    if rh.kind == MPX_REC_OVERFLOW and rh.len == sizeof(mpx_ovf_ref):
                        # A damaged record is discarded like the others, but
                        # its extent is left alone: it may name any bytes of
                        # the file, the header included.
                        copy_out(<char*>&ref, self.data, self.mask, pos + 8, sizeof(ref))
                        if ref.flags & MPX_OVF_AREA:
                            if self.area_size and ref.length <= self.area_size and \
                                    (ref.offset % self.area_size) + ref.length <= self.area_size:
                                self.area_taken_end = (ref.offset + ref.length + 63) & ~(<uint64_t>63)
                            n += 1
                        else:
                            try:
                                ext_len = self._check_spill_extent(&ref, False)
                            except RingError:
                                ext_len = 0
                            else:
                                mpx_punch(self.fd, ref.offset, ext_len)
                            if not (ref.flags & MPX_OVF_TAKEN):   # else gone with a dead consumer
                                n += 1
                    else:
                        n += 1
                    pos = (pos + adv) & (MPX_POS_MOD - 1)
                if pos != mpx_pos(hd):
                    wake = self._consume(hd, (pos - mpx_pos(hd)) & (MPX_POS_MOD - 1),
                                         mpx_count(t, hd))
            finally:
                pthread_mutex_unlock(&h.cons_lock)
                if wake:
                    mpx_futex_wake(mpx_lo32(&h.head), INT32_MAX)
            return n
        finally:
            self._leave(pid)

    # ----------------------------------------------------- task accounting

    def unacked(self):
        """Messages put and not yet acknowledged (JoinableQueue's unfinished
        tasks): the tail's message count minus `acked`, so a put and its
        count can never disagree."""
        self._check()
        return (mpx_cnt(mpx_load64(&self.hdr.tail)) -
                (mpx_load32(&self.hdr.acked) & MPX_CNT_MASK)) & MPX_CNT_MASK

    def ack(self, uint32_t n=1, bint clamp=False):
        """Acknowledge `n` messages. Returns False (and changes nothing) if
        fewer than n are unacknowledged, unless `clamp`, which acknowledges
        as many as there are. Wakes joiners when none is left."""
        self._check()
        cdef mpx_ring_header* h = self.hdr
        cdef uint32_t a, na, k
        cdef uint64_t un
        while True:
            a = mpx_load32(&h.acked)
            un = (mpx_cnt(mpx_load64(&h.tail)) - (a & MPX_CNT_MASK)) & MPX_CNT_MASK
            k = n
            if un < n:
                if not clamp:
                    return False
                k = <uint32_t>un
            na = <uint32_t>(((a & MPX_CNT_MASK) + k) & MPX_CNT_MASK)
            if un != k:
                na |= a & MPX_ACK_WAIT
            if mpx_cas32(&h.acked, a, na):
                break
        if un == k and (a & MPX_ACK_WAIT):
            mpx_futex_wake(&h.acked, INT32_MAX)
        return True

    def wait_acked(self, timeout=None):
        """Block until every message put has been acknowledged; False if
        `timeout` passes first."""
        cdef mpx_ring_header* h = self.hdr
        cdef int64_t deadline = to_deadline(True, timeout), left
        cdef uint32_t a
        cdef int pid = self._enter()
        try:
            while True:
                a = mpx_load32(&h.acked)
                if ((mpx_cnt(mpx_load64(&h.tail)) - (a & MPX_CNT_MASK)) & MPX_CNT_MASK) == 0:
                    return True
                left = _slice(deadline)
                if left == 0:
                    return False
                if not (a & MPX_ACK_WAIT):
                    if not mpx_cas32(&h.acked, a, a | MPX_ACK_WAIT):
                        continue
                    a |= MPX_ACK_WAIT
                # (close() from another thread wakes `acked`: see close.)
                self._sleep(&h.acked, a, left)
        finally:
            self._leave(pid)

    def _test_hold_lock(self, bint producer):
        """Tests only: take a side's lock and keep it (to be killed holding it)."""
        self._check()
        self._lock(&self.hdr.prod_lock if producer else &self.hdr.cons_lock, -1,
                   SIDE_PRODUCER if producer else SIDE_CONSUMER)

    def _test_release_lock(self, bint producer):
        self._check()
        pthread_mutex_unlock(&self.hdr.prod_lock if producer else &self.hdr.cons_lock)

    # ------------------------------------------------------------ aux words

    def aux_load(self, int i):
        self._check()
        return mpx_load32(&self.hdr.aux[_aux(i)])

    def aux_store(self, int i, uint32_t value):
        self._check()
        mpx_store32(&self.hdr.aux[_aux(i)], value)

    def aux_add(self, int i, uint32_t delta):
        """Atomic add; returns the previous value."""
        self._check()
        return mpx_add32(&self.hdr.aux[_aux(i)], delta)

    def aux_cas(self, int i, uint32_t expected, uint32_t desired):
        self._check()
        return mpx_cas32(&self.hdr.aux[_aux(i)], expected, desired)

    def aux_wake(self, int i, int n=INT32_MAX):
        self._check()
        return mpx_futex_wake(&self.hdr.aux[_aux(i)], n)

    def aux_wait(self, int i, uint32_t expected, timeout=None):
        """Sleep while aux word i equals `expected`: True when it differs
        (or on a wake-up), False on timeout. Raises RingClosed if another
        thread closes the ring meanwhile."""
        cdef int k = _aux(i)
        cdef uint32_t* w
        cdef int64_t deadline = to_deadline(True, timeout), left
        cdef int pid = self._enter()
        w = &self.hdr.aux[k]
        self.aux_waiters[k] += 1     # so that close() wakes this word
        try:
            while mpx_load32(w) == expected:
                left = _slice(deadline)
                if left == 0:
                    return False
                if self._sleep(w, expected, left) == 0:
                    return True
            return True
        finally:
            if self.aux_waiters[k]:
                self.aux_waiters[k] -= 1
            self._leave(pid)


# A Connection's send and recv, compiled (the shm Pipe puts these two
# functions in its class: `conn.send(obj)` then runs without a Python frame).
# As methods of the class they behave as the stdlib's do: `s = conn.send`
# holds the connection, so `del conn; s(obj)` still delivers, and a thread
# blocked in recv() keeps its end alive. The connection says which ring to
# use in `_send_ring` / `_recv_ring`; None there (closed, or the wrong
# direction) hands the call to its `_send(obj)` / `_recv()`, which raise the
# stdlib's errors.

def conn_send(conn, obj):
    """Send a serialized object. It is serialized here first: one that
    cannot be raises and nothing is sent."""
    ring = conn._send_ring
    if ring is None:
        return conn._send(obj)
    (<Ring?>ring)._send_obj(obj)


def conn_recv(conn):
    """Receive a serialized object; EOFError once the other end is closed
    and everything it sent has been read."""
    ring = conn._recv_ring
    if ring is None:
        return conn._recv()
    return (<Ring?>ring)._recv_obj()


# The same for a queue: put, get, put_nowait and get_nowait of the shm queue
# classes are these four functions. The queue names its ring in `_put_ring`
# / `_get_ring`; None there (closed, items waiting in its stash, or a
# fileno() watcher to keep exact) hands the call to its `_put(obj, block,
# timeout)` / `_get(block, timeout)`, the general path in Python.

cdef class QueueRings:
    """Base of the shm queue classes: the rings their compiled methods use,
    in C fields (read without an attribute lookup)."""
    cdef public object _put_ring
    cdef public object _get_ring


def queue_put(QueueRings q, obj, block=True, timeout=None):
    """Put `obj` in the queue; it is in shared memory when put returns.
    Raises queue.Full if no room appears in time, ShutDown after
    shutdown(), and the serializer's error (the queue unchanged) if `obj`
    cannot be serialized."""
    ring = q._put_ring
    if ring is None:
        return q._put(obj, block, timeout)
    (<Ring?>ring)._put_obj(obj, block, timeout)


def queue_get(QueueRings q, block=True, timeout=None):
    """Remove and return the oldest item. Raises queue.Empty if none
    arrives in time; after shutdown(), ShutDown once the queue is empty."""
    ring = q._get_ring
    if ring is None:
        return q._get(block, timeout)
    return (<Ring?>ring)._get_obj(block, timeout)


def queue_put_nowait(QueueRings q, obj):
    """put(obj, False): queue.Full at once if there is no room."""
    ring = q._put_ring
    if ring is None:
        return q._put(obj, False, None)
    (<Ring?>ring)._put_obj(obj, False, None)


def queue_get_nowait(QueueRings q):
    """get(False): queue.Empty at once if there is no item."""
    ring = q._get_ring
    if ring is None:
        return q._get(False, None)
    return (<Ring?>ring)._get_obj(False, None)


def queue_get_or(QueueRings q, default):
    """get(False) for a caller that often finds nothing (an awaited get's
    first look): `default` instead of queue.Empty when the ring holds no
    message, since raising costs about a microsecond. If another consumer
    takes the last message between the look and the take, queue.Empty."""
    ring = q._get_ring
    if ring is None:
        return q._get(False, None)
    if (<Ring?>ring)._holds_nothing():
        return default
    return (<Ring>ring)._get_obj(False, None)


# A bound method pickles as getattr(its __self__, its function's __name__):
# give each function the name it has in the classes, so that `conn.send` or
# `q.put` sent to another process (Process(target=q.put) under spawn) comes
# back as that object's method.
for _f, _name in ((conn_send, "send"), (conn_recv, "recv"), (queue_put, "put"),
                  (queue_get, "get"), (queue_put_nowait, "put_nowait"),
                  (queue_get_nowait, "get_nowait")):
    _f.__name__ = _name
    _f.__qualname__ = _name
del _f, _name


def header_info(data):
    """The fields of a ring header from `data`, a copy of a file's first
    bytes (os.pread): for looking at a ring without mapping it (``python -m
    mpx ls``/``rm``). RingError if `data` is not a complete ring header of
    this layout version; a dict like Ring.info()'s otherwise (capacity,
    maxsize, kind, ring_id, messages, shutdown, ...). The values are a
    snapshot, and only as true as the file's owner keeps them."""
    cdef const unsigned char[:] view = memoryview(data).cast("B")
    cdef mpx_ring_header h
    if view.shape[0] < <Py_ssize_t>sizeof(mpx_ring_header):
        raise RingError(f"not an mpx queue: {view.shape[0]} bytes, smaller than a ring "
                        f"header ({MPX_RING_HDR_SIZE})")
    memcpy(&h, &view[0], sizeof(mpx_ring_header))
    if h.magic != MPX_RING_MAGIC:
        raise RingError("not an mpx queue: it does not start with the mpx ring magic number")
    if h.version != MPX_RING_VERSION:
        raise RingError(f"the queue was made by an mpx with ring layout version "
                        f"{h.version}; this mpx reads version {MPX_RING_VERSION}")
    if (h.header_size != MPX_RING_HDR_SIZE or h.capacity < MIN_CAPACITY or
            h.capacity > MPX_MAX_CAPACITY or (h.capacity & (h.capacity - 1))):
        raise RingError("damaged mpx queue: its header holds impossible values")
    return {"version": h.version, "capacity": h.capacity, "inline_max": h.inline_max,
            "ring_id": h.ring_id, "maxsize": h.maxsize, "kind": h.kind,
            "creator_pid": h.creator_pid, "messages": mpx_count(h.tail, h.head),
            "shutdown": bool(h.tail & MPX_F_SHUT), "area_size": h.area_size}


cdef inline int _aux(int i) except -1:
    # (aux word 14 is the ring's own: MPX_AUX_READER_CPU)
    if i < 0 or i >= 14:
        raise IndexError(f"aux word index {i} is outside 0..13")
    return i


def flink(int fd, path):
    """Link the unnamed (O_TMPFILE) file `fd` at `path` (linkat with
    AT_EMPTY_PATH). Raises FileExistsError if the name is taken, OSError
    otherwise (e.g. EPERM where the kernel wants CAP_DAC_READ_SEARCH)."""
    cdef bytes p = os.fsencode(path)
    cdef int r = mpx_flink(fd, p)
    if r:
        raise OSError(r, os.strerror(r), path)


HEADER_SIZE = MPX_RING_HDR_SIZE
LAYOUT_VERSION = MPX_RING_VERSION
MAGIC = MPX_RING_MAGIC
MAX_CAPACITY = MPX_MAX_CAPACITY
