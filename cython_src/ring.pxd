# The shared-memory ring: a multi-producer, multi-consumer FIFO of
# variable-size messages in one shared file (a memfd or a /dev/shm file).
#
# Mechanism only: it moves lists of byte buffers ("parts") with a small
# integer tag; it knows nothing of pickling or of the public API (that is
# the shm backend, mpx/backends/shm/). This file holds the shared layout and its inline
# helpers (other extension modules may `from ring cimport ...` them, as with
# sync.pxd: nothing is imported at run time); the Ring class itself is in
# ring.pyx, used from Python as mpx._ext.ring.Ring.
#
# File layout:  [header page][ring: capacity bytes][overflow area][spill extents...]
#
# Messages too big for the ring go to the overflow area, a second FIFO of
# contiguous extents whose pages are allocated on first use and then reused
# (page allocation and mapping cost far more than the copy on a VM), mapped
# once per process. Like the ring it has flow control: past `area_soft` live
# bytes, producers wait (so its memory follows a bounded backlog). Only a
# message bigger than the whole area goes to a "spill" extent of its own
# further on, allocated and freed per message.
#
# Concurrency design (why it survives SIGKILL at any instruction):
# - One robust, process-shared pthread mutex per side, held only while
#   copying: producers take `prod_lock` (guards the tail and the overflow
#   allocators), consumers take `cons_lock` (guards the head). A holder that
#   dies makes the next locker get EOWNERDEAD from the kernel at once (no pid
#   polling, no pid-reuse risk), which repairs and carries on.
# - A message becomes visible only when the producer publishes the tail word
#   with one atomic compare-and-swap after the full copy; it is consumed only
#   when a consumer publishes the head word after the full copy out. So a
#   killed producer leaves no half message and a killed consumer leaves its
#   message in place for the next consumer. Overflow-area extents are given
#   back only after the head has moved past their record.
# - `tail` and `head` each pack (message count, byte position, flags) into
#   one 64-bit word, so the message count (qsize, maxsize, task counts) is
#   published in the same atomic store as the position and can never drift.
# - Waiters spin briefly, then set the word's WAITERS bit and futex-sleep on
#   the word's low 32 bits (which change on every publish). A publish clears
#   the bit in the same compare-and-swap and, if it was set, wakes the word:
#   a busy pipeline makes no wake-up system call, no sleeper can miss the
#   change it sleeps on, and a sleeper killed in its sleep costs one spare
#   wake-up at most. A process must hold its side's wait lock (`prod_wait`,
#   `cons_wait`) to sleep on a word: one sleeper per word, the others queue
#   on the mutex, so a publish wakes one process rather than a herd.
# - Every sleep is cut into slices of at most a second, re-checking after
#   each: the bound on any stall a kill between publish and wake-up leaves.

#
# The hooks: where the ring stops and Python begins.
# For speed the ring turns the common objects into messages and back in C
# (Ring.put_obj/get_obj/put_many_obj/send_obj/recv_obj, the Connection's
# conn_send/conn_recv and the queue's queue_put/queue_get); for the rest it
# calls hooks, public attributes of each Ring that the shm backend sets
# (mpx/backends/shm/codec.py builds the enc_*/dec_* set, channel.py the on_*
# set). A ring with no hooks set turns no object into a message (put_obj
# raises TypeError); put() and get() of ready messages need none. The
# contract, hook by hook:
# - Encoding, in this order, for each object (Ring._encode_obj):
#   1. exact bytes, if enc_bytes_tag >= 0: the object is the message, with
#      that tag (no call);
#   2. exact None, bool, int, float, str, tuple, list or dict, if
#      enc_compact_tag >= 0: compact.pxi's encoding, with that tag, unless
#      it gives up (no call);
#   3. a type in the set enc_plain: enc_dumps(obj) -> bytes, sent with tag 0
#      when shorter than enc_big_size, else enc_big(obj, those bytes) ->
#      (msg, tag) decides (to re-pickle with buffers out of band);
#   4. anything else: enc_other(obj) -> (msg, tag).
#   Every encoding hook runs before any lock is taken and before anything
#   is written: it may raise (the caller gets its exception and the ring is
#   unchanged; put_many_obj encodes every object first, so one failure puts
#   nothing), and it may release the GIL or use other rings. It must not
#   keep `msg` for later changes: the ring copies it after the hook returns.
#   enc_plain is looked up, never copied: the policy may add types to it.
# - Decoding, for each message taken (Ring._decode_msg), after the take has
#   been published (the message is no longer in the ring):
#   1. a bytes message (one part, tag 0): dec_loads(bytes) -> object;
#   2. a one-part message with tag dec_compact_tag: compact.pxi's decoder;
#   3. anything else: dec_other((tag, parts)) -> object.
#   A decoding hook that raises loses that message only; its exception
#   reaches the caller of get (get_many's decode_into keeps the objects
#   decoded before it).
# - Channel hooks, after the ring's own work is done and no lock is held:
#   on_bell() after a send whose publish found aux word bell_aux holding
#   bell_value (the reader is asleep and wants a wake-up; with bell_fd >= 0
#   the ring rings that eventfd itself instead); on_full(msg, tag) when
#   send_obj finds no room (the hook waits its own way and puts the encoded
#   message; the object is not encoded again); on_take() after a take while
#   aux word watch_aux is non-zero (the writer waits for room), before the
#   message is decoded; on_empty() -> object when recv_obj has waited
#   recv_wait seconds in the ring (it sleeps its own way and returns what
#   arrives). They may raise; the ring's state is complete either way.
#
# Files, and what a ring can and cannot defend against:
# - attach refuses a file shorter than its header's size plus its capacity,
#   or whose header holds impossible values, having mapped only the header
#   page. Whose file may be opened at all is the policy layer's rule
#   (mpx._trust), applied to the descriptor before attach.
# - create seals a file that allows it (a memfd made with MFD_ALLOW_SEALING)
#   against shrinking (F_SEAL_SHRINK, F_SEAL_SEAL): nobody can truncate the
#   ring under its users. The file may still grow (the overflow area and
#   spill extents extend it). A /dev/shm file cannot be sealed: its owner
#   (or root) cutting it short kills the processes using it with SIGBUS
#   when they touch the ring's lost pages (overflow-area and spill records
#   check the file's size first and raise RingError instead).
#
# Python-facing boundary beyond the Ring class (ring.pyx): check_layout()
# and spin_ns() read options exactly as create and the spin budget do, so
# the policy layer checks them before it creates anything; conn_send and
# conn_recv are a Connection's send/recv as methods of its class (the
# connection names its rings in _send_ring/_recv_ring, and its own
# _send/_recv raise when there is none); queue_put, queue_get,
# queue_put_nowait, queue_get_nowait and queue_get_or (get_nowait with a
# default instead of queue.Empty) are a queue's likewise (rings in
# _put_ring/_get_ring, C fields of QueueRings, the queues' base class; None
# there calls its _put/_get); a queue's ring may own an eventfd `bell_fd`
# that put_obj/put_many_obj ring while aux word bell_aux is armed (the
# shm Pipe's bell protocol, in C); header_info() reads a copy of a
# header without mapping anything (for ls/rm).

from libc.stdint cimport uint8_t, uint16_t, uint32_t, uint64_t, int64_t
from posix.types cimport clockid_t
from posix.time cimport timespec

cdef extern from "<pthread.h>" nogil:
    ctypedef struct pthread_mutex_t:
        pass
    ctypedef struct pthread_mutexattr_t:
        pass
    int pthread_mutexattr_init(pthread_mutexattr_t* a)
    int pthread_mutexattr_destroy(pthread_mutexattr_t* a)
    int pthread_mutexattr_setpshared(pthread_mutexattr_t* a, int v)
    int pthread_mutexattr_setrobust(pthread_mutexattr_t* a, int v)
    int pthread_mutex_init(pthread_mutex_t* m, const pthread_mutexattr_t* a)
    int pthread_mutex_trylock(pthread_mutex_t* m)
    int pthread_mutex_clocklock(pthread_mutex_t* m, clockid_t c, const timespec* t)
    int pthread_mutex_unlock(pthread_mutex_t* m)
    int pthread_mutex_consistent(pthread_mutex_t* m)
    enum:
        PTHREAD_PROCESS_SHARED
        PTHREAD_MUTEX_ROBUST

cdef extern from *:
    """
    #include <stdint.h>
    #include <stddef.h>
    #include <pthread.h>

    #if __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
    #error "mpx's ring futex-waits on the low half of a 64-bit word: little-endian only"
    #endif

    #define MPX_RING_MAGIC    0x00676e697278706dULL  /* "mpxring\\0" read as a little-endian u64 */
    #define MPX_RING_VERSION  1u                      /* bump on any layout change */
    #define MPX_RING_HDR_SIZE 4096u                   /* header page; the data area follows */
    #define MPX_HOLDERS       32                      /* slots of the holders table */

    /* Packed tail/head words: bits 0-2 flags, 3-35 byte position (always a
       multiple of 8, counted modulo 2^36), 36-63 message count modulo 2^28. */
    #define MPX_F_SHUT     1ULL                       /* shutdown() was called */
    #define MPX_F_WAIT     2ULL                       /* someone sleeps on this word */
    #define MPX_F_MASK     7ULL
    #define MPX_POS_MOD    (1ULL << 36)
    #define MPX_POS_MASK   ((MPX_POS_MOD - 1) & ~MPX_F_MASK)
    #define MPX_CNT_SHIFT  36
    #define MPX_CNT_MASK   ((1ULL << 28) - 1)
    #define MPX_ACK_WAIT   0x80000000u                /* joiners sleep on `acked` */
    #define MPX_MAX_CAPACITY (1ULL << 30)   /* so 8-byte records never wrap the 28-bit count */

    /* Record kinds (first byte after the record's length). */
    #define MPX_REC_INLINE   1   /* the body follows in the ring */
    #define MPX_REC_OVERFLOW 2   /* the body is in an overflow extent of the file */

    /* The header page. Lines that different sides write are 64 bytes apart
       so producers and consumers do not bounce one cache line. */
    typedef struct {
        /* line 0: written once by the creator before `magic`, then read-only */
        uint64_t magic;          /* MPX_RING_MAGIC, stored last at creation */
        uint32_t version;        /* MPX_RING_VERSION of the creator */
        uint32_t header_size;    /* bytes before the data area (MPX_RING_HDR_SIZE) */
        uint64_t capacity;       /* data area size in bytes, a power of two */
        uint64_t inline_max;     /* largest record kept in the ring; bigger ones overflow */
        uint64_t ring_id;        /* random id telling two rings apart */
        uint32_t maxsize;        /* most messages allowed at once, 0 = no limit */
        uint32_t kind;           /* what the policy layer made (queue family code) */
        uint32_t creator_pid;    /* pid of the creating process (information only) */
        uint32_t page_size;      /* page size the overflow extents are aligned to */
        uint64_t area_size;      /* bytes of the overflow area after the ring (0 = none) */
        uint64_t area_soft;      /* live area bytes beyond which producers wait (flow control) */
        /* line 1: producers publish, consumers read */
        _Alignas(64) uint64_t tail;   /* packed: messages put, end byte position, SHUT|WAIT */
        /* line 2: consumers publish, producers read */
        _Alignas(64) uint64_t head;   /* packed: messages taken, start byte position, SHUT|WAIT */
        /* line 3: task accounting and words the policy layer may use */
        _Alignas(64) uint32_t acked;  /* tasks acknowledged (task_done) mod 2^28, bit 31 = joiners wait */
        uint32_t aux[15];             /* 0-13: free words for the policy layer (atomics/futex); 14: the ring's (the core of the last reader of a large message, +1) */
        /* lines 4-5: producer lock and the state it guards */
        _Alignas(64) pthread_mutex_t prod_lock;  /* robust mutex of the producers */
        uint64_t ovf_next;            /* next free file offset for a spill extent */
        uint64_t ovf_pending_off;     /* spill extent being filled by the lock holder */
        uint64_t ovf_pending_len;     /* its length, 0 when none */
        uint64_t ovf_pending_tail;    /* tail the holder will publish for it */
        uint64_t area_next;           /* overflow area: next free position (a running total) */
        uint64_t area_alloc;          /* overflow area: bytes from its start that have pages */
        uint64_t ring_alloc;          /* ring: bytes from its start that have pages (first lap) */
        uint64_t area_gap_start;      /* overflow area: start of the bytes skipped by the last lap change */
        uint64_t area_gap_end;        /* ... and their end (the lap start); ignored once head is past */
        uint64_t area_pend;           /* 1 while the lock holder claims area space (undo below) */
        uint64_t area_pend_tail;      /* the tail it will publish with the claim */
        uint64_t area_undo_next;      /* area_next before the claim */
        uint64_t area_undo_gap_start; /* area_gap_start before the claim */
        uint64_t area_undo_gap_end;   /* area_gap_end before the claim */
        /* lines 6-7: consumer lock */
        _Alignas(64) pthread_mutex_t cons_lock;  /* robust mutex of the consumers */
        uint64_t repairs;             /* times a lock was taken over from a dead owner */
        uint64_t area_head;           /* overflow area: end of the last extent consumed (running
                                         total, a multiple of 64); bit 0 = producers wait on it */
        uint64_t area_cpend;          /* 1 while the consumer-lock holder frees area space */
        uint64_t area_cpend_head;     /* the head it publishes with it */
        uint64_t area_cpend_value;    /* the area_head it will then store */
        /* waiting: a process that must wait for room (or for a message)
           first takes its side's wait lock, so at most one process per side
           sleeps on the ring word and the others queue on the mutex; the
           side locks above are then only ever held for a copy. */
        _Alignas(64) pthread_mutex_t prod_wait;  /* robust mutex of producers waiting for room */
        _Alignas(64) pthread_mutex_t cons_wait;  /* robust mutex of consumers waiting for a message */
        /* holders: hints for reopening an anonymous ring in another process */
        _Alignas(64) uint64_t holders[MPX_HOLDERS];  /* pid << 32 | fd of processes that hold it */
    } mpx_ring_header;

    _Static_assert(sizeof(mpx_ring_header) <= MPX_RING_HDR_SIZE, "ring header outgrew its page");
    _Static_assert(sizeof(pthread_mutex_t) <= 48, "pthread_mutex_t larger than its slot");

    /* Every record starts 8-byte aligned with this 8-byte header; records
       may wrap around the end of the data area (only the header never
       splits, as capacity is a multiple of 8). */
    typedef struct {
        uint32_t len;            /* body bytes after this header (before padding to 8) */
        uint8_t kind;            /* MPX_REC_INLINE or MPX_REC_OVERFLOW */
        uint8_t tag;             /* policy layer's tag, carried untouched */
        uint16_t nparts;         /* number of parts in the message body */
    } mpx_rec_hdr;

    /* Body of an overflow record: where its message body lives in the file. */
    typedef struct {
        uint64_t offset;         /* spill: file offset (page aligned); area: running position */
        uint64_t length;         /* bytes of message body in the extent */
        uint64_t flags;          /* MPX_OVF_TAKEN | MPX_OVF_AREA */
    } mpx_ovf_ref;
    #define MPX_OVF_TAKEN 1ULL   /* spill extent copied out and freed by a consumer */
    #define MPX_OVF_AREA  2ULL   /* the body is in the overflow area, not a spill extent */

    static inline uint64_t mpx_pos(uint64_t w) { return w & MPX_POS_MASK; }
    static inline uint64_t mpx_cnt(uint64_t w) { return w >> MPX_CNT_SHIFT; }
    static inline uint64_t mpx_pack(uint64_t cnt, uint64_t pos, uint64_t flags) {
        return ((cnt & MPX_CNT_MASK) << MPX_CNT_SHIFT) | (pos & MPX_POS_MASK) | (flags & MPX_F_MASK);
    }
    static inline uint64_t mpx_used(uint64_t tail, uint64_t head) {
        return (mpx_pos(tail) - mpx_pos(head)) & (MPX_POS_MOD - 1);
    }
    static inline uint64_t mpx_count(uint64_t tail, uint64_t head) {
        return (mpx_cnt(tail) - mpx_cnt(head)) & MPX_CNT_MASK;
    }
    static inline uint32_t *mpx_lo32(uint64_t *w) { return (uint32_t *)w; }
    """
    uint64_t MPX_RING_MAGIC
    uint32_t MPX_RING_VERSION
    uint32_t MPX_RING_HDR_SIZE
    int MPX_HOLDERS
    uint64_t MPX_F_SHUT
    uint64_t MPX_F_WAIT
    uint64_t MPX_F_MASK
    uint64_t MPX_POS_MOD
    uint64_t MPX_POS_MASK
    uint64_t MPX_CNT_MASK
    uint32_t MPX_ACK_WAIT
    uint64_t MPX_MAX_CAPACITY
    int MPX_REC_INLINE
    int MPX_REC_OVERFLOW
    uint64_t MPX_OVF_TAKEN
    uint64_t MPX_OVF_AREA

    ctypedef struct mpx_ring_header:
        uint64_t magic              # MPX_RING_MAGIC, stored last at creation
        uint32_t version            # layout version of the creator
        uint32_t header_size        # bytes before the data area
        uint64_t capacity           # data area size in bytes, a power of two
        uint64_t inline_max         # largest record kept in the ring
        uint64_t ring_id            # random id telling two rings apart
        uint32_t maxsize            # most messages at once, 0 = no limit
        uint32_t kind               # policy layer's object kind
        uint32_t creator_pid        # pid of the creator (information only)
        uint32_t page_size          # alignment of overflow extents
        uint64_t area_size          # bytes of the overflow area (0 = none)
        uint64_t area_soft          # live area bytes beyond which producers wait
        uint64_t tail               # packed count/position/flags, producers publish
        uint64_t head               # packed count/position/flags, consumers publish
        uint32_t acked              # tasks acknowledged mod 2^28, bit 31 = joiners wait
        uint32_t aux[15]            # 0-13 the policy layer's, 14 the ring's (reader's core)
        pthread_mutex_t prod_lock   # robust mutex of the producers
        uint64_t ovf_next           # next free file offset for a spill extent
        uint64_t ovf_pending_off    # spill extent being filled by the producer-lock holder
        uint64_t ovf_pending_len    # its length, 0 when none
        uint64_t ovf_pending_tail   # tail the holder will publish with it
        uint64_t area_next          # overflow area: next free position (running total)
        uint64_t area_alloc         # overflow area: bytes from its start that have pages
        uint64_t ring_alloc         # ring: bytes from its start that have pages
        uint64_t area_gap_start     # overflow area: start of the bytes the last lap change skipped
        uint64_t area_gap_end       # ... and their end
        uint64_t area_pend          # 1 while the producer-lock holder claims area space
        uint64_t area_pend_tail     # the tail it will publish with the claim
        uint64_t area_undo_next     # area_next before the claim
        uint64_t area_undo_gap_start  # area_gap_start before the claim
        uint64_t area_undo_gap_end  # area_gap_end before the claim
        pthread_mutex_t cons_lock   # robust mutex of the consumers
        uint64_t repairs            # lock take-overs from dead owners
        uint64_t area_head          # overflow area: end of the last extent consumed; bit 0 = waiters
        uint64_t area_cpend         # 1 while the consumer-lock holder frees area space
        uint64_t area_cpend_head    # the head it publishes with it
        uint64_t area_cpend_value   # the area_head it will then store
        pthread_mutex_t prod_wait   # robust mutex of producers waiting for room
        pthread_mutex_t cons_wait   # robust mutex of consumers waiting for a message
        uint64_t holders[32]        # pid << 32 | fd hints for reopening

    ctypedef struct mpx_rec_hdr:
        uint32_t len                # body bytes after the header
        uint8_t kind                # MPX_REC_INLINE or MPX_REC_OVERFLOW
        uint8_t tag                 # policy tag, carried untouched
        uint16_t nparts             # parts in the message body

    ctypedef struct mpx_ovf_ref:
        uint64_t offset             # spill: file offset; area: running position
        uint64_t length             # message body bytes in the extent
        uint64_t flags              # MPX_OVF_TAKEN | MPX_OVF_AREA

    uint64_t mpx_pos(uint64_t w) noexcept nogil
    uint64_t mpx_cnt(uint64_t w) noexcept nogil
    uint64_t mpx_pack(uint64_t cnt, uint64_t pos, uint64_t flags) noexcept nogil
    uint64_t mpx_used(uint64_t tail, uint64_t head) noexcept nogil
    uint64_t mpx_count(uint64_t tail, uint64_t head) noexcept nogil
    uint32_t* mpx_lo32(uint64_t* w) noexcept nogil
