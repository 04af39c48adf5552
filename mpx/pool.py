"""mpx.pool: ``multiprocessing.pool`` with mpx's own process Pool.

``mpx.Pool`` keeps the stdlib's API and semantics (apply, map, imap, ...,
callbacks, chunksize rules, close/terminate/join, the context manager,
maxtasksperchild, initializer) and moves tasks and results over mpx queues:
shared-memory rings by default, ``backend="pipe"`` for the stdlib's pipes.
``ThreadPool``, ``RemoteTraceback``, ``MaybeEncodingError`` and the state
names are the stdlib's own objects.

Facts this module is built on
-----------------------------
Transport. One task queue that every worker takes from (so a slow task never
holds up the others, as in the stdlib) and one result queue that the parent
takes from; no per-worker pipes. A task is one message
``(seq, job, index, function, kind, payload)``; a result is
``(seq, status, value)``. The function travels as the bytes the pool's
serializer made of it once per job (a worker unpickles it once per job and
keeps it), so a lambda or closure costs one cloudpickle per call of ``map``,
not one per task. Payloads and results made only of exact builtins (or a
plain numpy array) travel as they are, which the shm ring encodes without
pickle (its compact encoding; a numpy array's data is copied out of band);
anything else travels as bytes the serializer made, so that a value which
fails to unpickle on the other side fails its own task, with its sequence
number still readable, instead of the transport.

Batching. Workers take up to 256 tasks per lock round of the ring
(``get_many``); how many they take adapts to how long tasks run (about
half a millisecond of work per batch, one task at a time once a task takes
that long) and is never more than a fair share of what is queued, so a
trivial function is not dominated by wake-ups and slow or large tasks are
not hoarded by one worker. Each result is put as soon as it is computed (batching
results gained nothing measurable on the ring, and a dead worker then
loses no finished result). The parent puts tasks in batches too, from the
calling thread while the ring has room, then from its one handler thread.

One handler thread (the stdlib has three): it takes results and completes
jobs (callbacks run there, as in the stdlib), feeds what did not fit in the
ring, and looks at the workers every 0.1 s.

Dead workers. Every worker has a slot in a small shared table where, before
it runs a batch, it writes the sequence numbers it took (a seqlock: an odd
generation word means "being written"). A worker that exits without saying
goodbye (SIGKILL, ``os._exit``, a segfault) is found by the handler within
0.1 s; the tasks in its slot that have no result fail with
:class:`WorkerLostError`, which names its pid and exit code, and a new
worker takes its place. On the shm transport the ring's own count of
messages taken (``qsize``) also tells which tasks were taken at all: a task
taken but in no slot (the worker died between taking it and writing its
slot) fails too, after a second's grace for live workers to record theirs.
A message a killed worker was copying out stays in the ring for the next
worker (the ring publishes a take only after the copy). The pipe transport
has neither guarantee (a worker killed while holding the pipe's lock leaves
it held), so there a dead worker makes the pool broken: every pending task
fails with :class:`BrokenPoolError`, as does every later submission.

An initializer that raises makes the pool broken too (each new worker would
fail the same way); so do workers that keep dying before their initializer
returns.
"""

import collections
import itertools
import mmap
import multiprocessing
import os
import signal
import sys
import threading
import time
import traceback
import types
import warnings
from multiprocessing import connection as _mp_connection, util as _util
from multiprocessing.context import TimeoutError
from multiprocessing.pool import (CLOSE, INIT, RUN, TERMINATE, MaybeEncodingError,
                                  RemoteTraceback, ThreadPool)
from queue import Empty, Full as _Full

from . import _aio, _serial
from . import backends as _registry
from ._timeouts import seconds as _seconds
from ._exceptions import ShutDown

__all__ = ["Pool", "ThreadPool"]

# The stdlib's job counter is shared by its pools; mpx's jobs count apart.
job_counter = itertools.count()

# ------------------------------------------------------------ the errors


class WorkerLostError(multiprocessing.ProcessError):
    """The worker process running a task died (killed by a signal, os._exit,
    a crash in C code) before it could send the result. ``pid`` and
    ``exitcode`` say which worker and how (a negative exit code is the
    signal that killed it, as for ``Process.exitcode``)."""

    def __init__(self, message, pid=None, exitcode=None):
        super().__init__(message, pid, exitcode)
        self.pid = pid
        self.exitcode = exitcode

    def __str__(self):
        return self.args[0]


class BrokenPoolError(multiprocessing.ProcessError):
    """The pool cannot run tasks any more: its initializer raised, its
    workers kept dying while starting, or (on the pipe transport) a worker
    died. Pending tasks fail with it and so does every later submission;
    ``__cause__`` holds the original error where there is one."""


class PoolTerminatedError(multiprocessing.ProcessError):
    """The pool was terminated (``terminate()``, leaving a ``with`` block,
    Ctrl-C in a call that waited on it, garbage collection) before this
    task finished."""


def _describe_exit(exitcode):
    if exitcode is None:
        return "still running"
    if exitcode < 0:
        try:
            name = signal.Signals(-exitcode).name
        except ValueError:
            name = f"signal {-exitcode}"
        return f"exit code {exitcode}: killed by {name}"
    return f"exit code {exitcode}"


# ------------------------------------------------------- message formats

# Task kinds: how a worker calls the function on the payload (times two;
# the low bit says the payload is serializer bytes).
_CALL_APPLY = 0      # func(*args, **kwds), payload (args, kwds)
_CALL_ONE = 1        # func(x)
_CALL_STAR = 2       # func(*x)
_CALL_MAP = 3        # [func(x) for x in chunk]
_CALL_STARMAP = 4    # [func(*x) for x in chunk]

# Result statuses.
_R_OK = 0            # value as it is
_R_OKP = 1           # value as serializer bytes
_R_ERR = 2           # (exception, traceback text) as serializer bytes

# Control messages (first item negative).
_CTRL = -1           # from a worker: (_CTRL, what, slot, data, pid)
_WAKE = -2           # from the parent to its own handler: (_WAKE, 0, None)
_C_EXIT = 0          # the worker exits cleanly; data: why (_X_*)
_C_INITFAIL = 1      # the initializer raised; data: serialized (exc, tb)
_X_STOPPED = 1       # no more tasks (the pool was closed)
_X_MAXTASKS = 2      # maxtasksperchild reached
_X_ORPHAN = 3        # the pool's process is gone

_WAKE_MSG = (_WAKE, 0, None)

# Values that travel as they are (the shm ring encodes them without pickle,
# and they can never fail to unpickle).
_SCALARS = frozenset({int, float, str, bytes, bool, type(None)})


def _plain(v, depth=2):
    """Is `v` made only of exact builtins (or a plain numpy array), so that
    it may travel unwrapped? Containers of more than 256 items are not
    looked through (that costs as much as pickling them): they travel as
    serializer bytes."""
    t = type(v)
    if t in _SCALARS:
        return True
    if t is tuple or t is list:
        if len(v) > 256:
            return False
        if set(map(type, v)) <= _SCALARS:
            return True
        return depth > 1 and len(v) <= 64 and all(_plain(x, depth - 1) for x in v)
    if t is dict:
        return (len(v) <= 64 and set(map(type, v)) <= _SCALARS
                and (set(map(type, v.values())) <= _SCALARS
                     or (depth > 1 and all(_plain(x, depth - 1) for x in v.values()))))
    return (t.__name__ == "ndarray" and t.__module__ == "numpy"
            and not v.dtype.hasobject)


# An array at least this large travels as an "array message" (below).
_ARRAY_MIN = 1 << 16
_array_message_class = None


def _message(header, last):
    """The tuple ``header + (last,)`` to put in a queue. When `last` is a
    large plain numpy array, an ndarray subclass view of it instead, which
    pickles (``__reduce_ex__``) as that very tuple: the shm ring's codec
    sends an array's data out of band, copied once into the ring and once
    out, while a tuple holding one is first pickled whole (a copy of the
    data into a fresh buffer, as slow as the rest together)."""
    t = type(last)
    if (t.__name__ != "ndarray" or t.__module__ != "numpy" or last.nbytes < _ARRAY_MIN
            or last.dtype.hasobject or not last.flags.c_contiguous):
        return header + (last,)
    cls = _array_message_class or _make_array_message_class()
    message = last.view(cls)
    message._header = header
    return message


def _make_array_message_class():
    global _array_message_class
    import numpy

    class _ArrayMessage(numpy.ndarray):
        def __reduce_ex__(self, protocol):
            return (_rebuild_message, (self._header, self.view(numpy.ndarray)))

    _array_message_class = _ArrayMessage
    return _ArrayMessage


def _rebuild_message(header, array):
    return header + (array,)


def _traceback_text(exc):
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    # As the stdlib shows a worker's traceback.
    return '\n"""\n' + tb + '"""'


def _dump_error(ser, exc):
    """Serializer bytes of (exc, its traceback text). An exception that
    cannot be serialized, or that does not unpickle again (CPython gh-79492:
    an __init__ that does not take its own args), is replaced by a
    MaybeEncodingError that says so."""
    text = _traceback_text(exc)
    try:
        data = ser.dumps((exc, text))
        ser.loads(data)
        return data
    except Exception as e:
        try:
            stand_in = MaybeEncodingError(e, exc)
        except Exception:
            stand_in = MaybeEncodingError(e, f"<{type(exc).__name__} object>")
        return ser.dumps((stand_in, text))


# ------------------------------------------------------- the slot table

# Per worker, one 64-byte line of int64 words in shared memory.
_SLOT_WORDS = 8
_S_PID = 0           # the worker's pid
_S_GEN = 1           # seqlock generation: odd while FIRST/COUNT are written
_S_FIRST = 2         # sequence number of the first task of its current batch
_S_COUNT = 3         # number of tasks in that batch
_S_STATE = 4         # _ST_*
_S_CUR = 5           # index in the batch of the task running (or last run)
_S_SENT = 6          # tasks of the batch whose results are in the result queue
_ST_STARTING = 0     # the initializer has not returned yet
_ST_WORKING = 1
_ST_STOPPED = 2      # exiting: no more tasks (1 + _X_STOPPED)
_ST_RETIRED = 3      # exiting: maxtasksperchild reached (1 + _X_MAXTASKS)
_ST_ORPHAN = 4       # exiting: the pool's process is gone (1 + _X_ORPHAN)


class _SlotTable:
    """The workers' shared slots: a memfd, mapped in the pool's process and
    in every worker (inherited under fork, its descriptor sent along under
    spawn and forkserver). Gone with the last process that maps it."""

    def __init__(self, n, fd=None):
        size = n * _SLOT_WORDS * 8
        if fd is None:
            fd = os.memfd_create("mpx-pool-slots", os.MFD_CLOEXEC)
            try:
                os.ftruncate(fd, size)
            except BaseException:
                os.close(fd)
                raise
        try:
            self._map = mmap.mmap(fd, size)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        self._n = n
        self.words = memoryview(self._map).cast("q")

    def __reduce__(self):
        from multiprocessing import reduction
        return (_SlotTable._rebuild, (reduction.DupFd(self._fd), self._n))

    @staticmethod
    def _rebuild(dupfd, n):
        return _SlotTable(n, dupfd.detach())

    def reset(self, slot):
        base = slot * _SLOT_WORDS
        for i in range(_SLOT_WORDS):
            self.words[base + i] = 0

    def state(self, slot):
        return self.words[slot * _SLOT_WORDS + _S_STATE]

    def progress(self, slot):
        """(running, sent) of the slot's batch (see _S_CUR, _S_SENT)."""
        base = slot * _SLOT_WORDS
        return self.words[base + _S_CUR], self.words[base + _S_SENT]

    def batch(self, slot):
        """(first, count) of the slot's current batch, or None while the
        worker is writing it."""
        w = self.words
        base = slot * _SLOT_WORDS
        for i in range(1000):
            g = w[base + _S_GEN]
            if g & 1:
                if i >= 100:
                    os.sched_yield()     # the writer may be off its CPU
                continue
            first, count = w[base + _S_FIRST], w[base + _S_COUNT]
            if w[base + _S_GEN] == g:
                return first, count
        return None

    def close(self):
        if self._fd < 0:
            return
        self.words.release()
        self._map.close()
        os.close(self._fd)
        self._fd = -1

    def __del__(self):
        try:
            self.close()
        except Exception:
            pass


# ------------------------------------------------------------- the worker

_IDLE_CHECK = 1.0          # seconds between checks that the pool's process lives
_TAKE_MAX = 256            # most tasks a worker takes at once
_BATCH_TIME = 0.0005       # aim: this much work per batch


def _run(msg, funcs, ser):
    """One task message -> its result message."""
    seq, job, _, fbytes, kind, payload = msg
    try:
        func = funcs.get(job)
        if func is None:
            func = ser.loads(fbytes)
            if len(funcs) >= 16:
                funcs.clear()
            funcs[job] = func
        if kind & 1:
            payload = ser.loads(payload)
        call = kind >> 1
        if call == _CALL_ONE:
            value = func(payload)
        elif call == _CALL_MAP:
            value = list(map(func, payload))
        elif call == _CALL_APPLY:
            value = func(*payload[0], **payload[1])
        elif call == _CALL_STAR:
            value = func(*payload)
        else:
            value = list(itertools.starmap(func, payload))
    except BaseException as e:
        # BaseException too: SystemExit or KeyboardInterrupt raised by a
        # task fails that task instead of killing the worker.
        return (seq, _R_ERR, _dump_error(ser, e))
    if type(value) in _SCALARS or _plain(value):
        return _message((seq, _R_OK), value)
    try:
        return (seq, _R_OKP, ser.dumps(value))
    except Exception as e:
        return (seq, _R_ERR, _dump_error(ser, MaybeEncodingError(e, value)))


def _run_initializer(ser, initializer, initargs):
    """Run a worker's initializer (None, a callable, or serializer bytes of
    one); None if it returned, else the serialized error to report."""
    if initializer is None:
        return None
    try:
        if type(initializer) is bytes:
            initializer = ser.loads(initializer)
        initializer(*initargs)
    except BaseException as e:
        return _dump_error(ser, e)
    return None


def _worker_main(tasks, results, table, slot, ser, initializer, initargs, maxtasks,
                 take_max, workers):
    """A pool worker's life (runs in the child)."""
    # Ctrl-C at a terminal signals the whole process group: the pool's
    # process decides (it terminates the workers), the workers do not die
    # half-way through a task on their own.
    try:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    except (ValueError, OSError):
        pass
    w = table.words
    base = slot * _SLOT_WORDS
    w[base + _S_PID] = os.getpid()
    failed = _run_initializer(ser, initializer, initargs)
    if failed is not None:
        results.put((_CTRL, _C_INITFAIL, slot, failed, os.getpid()))
        sys.exit(1)
    w[base + _S_STATE] = _ST_WORKING
    parent = multiprocessing.parent_process()
    get_many, put = tasks.get_many, results.put
    perf = time.perf_counter
    funcs = {}
    done = 0
    take = 1
    gen = 0
    why = _X_MAXTASKS
    while maxtasks is None or done < maxtasks:
        n = take if maxtasks is None else min(take, maxtasks - done)
        if n > 1:
            # No more than a fair share of what is queued: a few large tasks
            # must not all go to one worker while the others wait.
            n = min(n, max(1, tasks.qsize() // workers))
        try:
            batch = get_many(n, True, _IDLE_CHECK)
        except Empty:
            if parent is not None and not parent.is_alive():
                why = _X_ORPHAN
                break
            continue
        except ShutDown:
            why = _X_STOPPED
            break
        if batch[0] is None:           # the pipe transport's stop message
            why = _X_STOPPED
            break
        count = len(batch)
        gen += 2
        w[base + _S_GEN] = gen - 1
        w[base + _S_FIRST] = batch[0][0]
        w[base + _S_COUNT] = count
        w[base + _S_CUR] = 0
        w[base + _S_SENT] = 0
        w[base + _S_GEN] = gen
        start = perf()
        i = 0
        for msg in batch:
            w[base + _S_CUR] = i
            put(_run(msg, funcs, ser))
            i += 1
            w[base + _S_SENT] = i
        # Nothing of a finished batch stays alive while waiting for the next.
        batch = msg = None
        done += count
        elapsed = perf() - start
        if elapsed < _BATCH_TIME:
            take = min(take * 2, take_max)
        elif elapsed > 2 * _BATCH_TIME and take > 1:
            take //= 2
    w[base + _S_STATE] = 1 + why
    try:
        results.put((_CTRL, _C_EXIT, slot, why, os.getpid()))
    except Exception:
        pass


# ------------------------------------------------------------- the results

def _call_back(callback, value):
    # Callbacks run in the pool's handler thread, as the stdlib's do; one
    # that raises is reported and the pool carries on.
    try:
        callback(value)
    except Exception:
        print(f"Exception in the callback {callback!r} of an mpx.Pool job:", file=sys.stderr)
        traceback.print_exc()


def _interruptible(core, wait, *args):
    """Run a wait of the calling thread; Ctrl-C there ends the pool's
    workers (no orphan keeps running) before KeyboardInterrupt goes on."""
    try:
        return wait(*args)
    except KeyboardInterrupt:
        core.interrupted()
        raise


class ApplyResult:
    """The result of ``apply_async`` (``AsyncResult``): ``get(timeout)``,
    ``wait(timeout)``, ``ready()``, ``successful()``, as the stdlib's."""

    def __init__(self, pool, callback=None, error_callback=None):
        core = pool._core
        self._pool = pool            # kept alive until the result is in
        self._core = core
        self._event = threading.Event()
        self._job = next(job_counter)
        self._cache = core.jobs
        self._callback = callback
        self._error_callback = error_callback
        self._success = None
        self._value = None
        self._finished = False       # the outcome is known (set under the pool's lock)
        self._async_waiters = []     # (loop, future) of coroutines awaiting it

    def ready(self):
        """True once the task has finished (or failed)."""
        return self._event.is_set()

    def successful(self):
        """Whether the task returned without raising; ValueError before it is ready."""
        if not self.ready():
            raise ValueError(f"{self!r} not ready")
        return self._success

    def wait(self, timeout=None):
        """Wait until the result is ready, or `timeout` seconds pass."""
        _interruptible(self._core, self._event.wait, _seconds(timeout))

    def get(self, timeout=None):
        """The result; the task's exception if it raised (its ``__cause__``
        holds the worker's traceback); multiprocessing.TimeoutError if
        `timeout` seconds pass first."""
        self.wait(timeout)
        if not self.ready():
            raise TimeoutError
        if self._success:
            return self._value
        raise self._value

    def __await__(self):
        """``await result``: get() for coroutines, without blocking the loop
        (cancelling the await does not cancel the task)."""
        return self._get_async().__await__()

    async def _get_async(self):
        if not self._event.is_set():
            await _aio.wait_until(self._async_waiters, self._event.is_set)
        return self.get(0)

    # --- called by the pool (under its lock unless said otherwise)

    def _set(self, i, ok, value):
        """Record an outcome; True when the job just finished."""
        if self._finished:
            return False
        self._success = ok
        self._value = value
        return self._finish()

    def _finish(self):
        self._finished = True
        self._cache.pop(self._job, None)
        return True

    def _fail(self, exc):
        if self._finished:
            return False
        self._success = False
        self._value = exc
        return self._finish()

    def _complete(self):
        # Outside the lock: the callback first (so get() returns after it
        # ran, as in the stdlib), then the waiters.
        callback = self._callback if self._success else self._error_callback
        self._callback = self._error_callback = None
        if callback is not None:
            _call_back(callback, self._value)
        self._event.set()
        _aio.wake_all(self._async_waiters)
        self._pool = None

    __class_getitem__ = classmethod(types.GenericAlias)


AsyncResult = ApplyResult


class MapResult(ApplyResult):
    """The result of ``map_async``/``starmap_async``: a list in input order."""

    def __init__(self, pool, chunksize, length, callback=None, error_callback=None):
        super().__init__(pool, callback, error_callback)
        self._success = True
        self._value = [None] * length
        self._chunksize = chunksize
        self._length = length
        if chunksize <= 0:
            self._number_left = 0
        else:
            self._number_left = length // chunksize + bool(length % chunksize)

    def _set(self, i, ok, value):
        if self._finished:
            return False
        self._number_left -= 1
        if ok:
            if self._success:
                size = self._chunksize
                if size == 1:
                    self._value[i] = value
                else:
                    self._value[i * size:(i + 1) * size] = value
        elif self._success:
            # The first error is the job's; it is ready once every chunk is in.
            self._success = False
            self._value = value
        if self._number_left <= 0:
            return self._finish()
        return False

    def _expect(self, chunks):
        """Only `chunks` chunks will ever come (the input ended early)."""
        expected = self._length // self._chunksize + bool(self._length % self._chunksize)
        self._number_left -= expected - chunks
        if self._number_left <= 0 and not self._finished:
            return self._finish()
        return False

    def _fail(self, exc):
        if self._finished:
            return False
        if self._success:
            self._success = False
            self._value = exc
        return self._finish()


class IMapIterator:
    """What ``imap`` returns (for chunksize 1): results in input order;
    ``next(timeout)`` raises multiprocessing.TimeoutError when nothing came
    in time."""

    _ordered = True

    def __init__(self, pool):
        core = pool._core
        self._pool = pool
        self._core = core
        self._cond = threading.Condition(core.lock)
        self._job = next(job_counter)
        self._cache = core.jobs
        self._items = collections.deque()   # (ok, value) ready to be taken, in order
        self._index = 0                     # results received in order so far
        self._unsorted = {}
        self._length = None                 # number of results, once the input ended
        self._taken = 0
        self._feeder = None
        self._finished = False
        self._async_waiters = []            # (loop, future) of coroutines waiting

    def __iter__(self):
        return self

    def __aiter__(self):
        return self

    async def __anext__(self):
        """The next result for ``async for``, without blocking the loop."""
        while True:
            try:
                return self.next(0)
            except TimeoutError:
                pass
            except StopIteration:
                raise StopAsyncIteration from None
            await _aio.wait_until(self._async_waiters, self._has_news)

    def _has_news(self):
        return bool(self._items) or (self._length is not None and self._taken >= self._length)

    def next(self, timeout=None):
        """The next result (raising the task's exception if it failed)."""
        wait = _seconds(timeout)
        deadline = None if wait is None else time.monotonic() + wait
        core = self._core
        try:
            with self._cond:
                while not self._items:
                    if self._length is not None and self._taken >= self._length:
                        self._pool = None
                        raise StopIteration
                    if deadline is None:
                        self._cond.wait()
                    else:
                        left = deadline - time.monotonic()
                        if left <= 0:
                            raise TimeoutError
                        self._cond.wait(left)
                ok, value = self._items.popleft()
                self._taken += 1
                wake = core.credit_locked(self._feeder)
        except KeyboardInterrupt:
            core.interrupted()
            raise
        if wake:
            core.wake()
        if ok:
            return value
        raise value

    __next__ = next

    # --- called by the pool under its lock

    def _set(self, i, ok, value):
        if self._finished:
            return False
        if self._ordered:
            if i == self._index:
                self._items.append((ok, value))
                self._index += 1
                unsorted = self._unsorted
                while self._index in unsorted:
                    self._items.append(unsorted.pop(self._index))
                    self._index += 1
                self._cond.notify()
            else:
                self._unsorted[i] = (ok, value)
        else:
            self._items.append((ok, value))
            self._index += 1
            self._cond.notify()
        _aio.wake_all(self._async_waiters)
        if self._length is not None and self._index >= self._length:
            self._retire()
        return False

    def _set_length(self, length):
        self._length = length
        if self._index >= length:
            self._retire()
        self._cond.notify_all()
        _aio.wake_all(self._async_waiters)
        return False

    def _retire(self):
        self._finished = True
        self._cache.pop(self._job, None)
        self._cond.notify_all()
        _aio.wake_all(self._async_waiters)

    def _fail(self, exc):
        if self._finished:
            return False
        self._unsorted.clear()
        self._items.append((False, exc))
        self._length = self._taken + len(self._items)
        self._index = self._length
        self._retire()
        return False

    def _complete(self):
        pass


class IMapUnorderedIterator(IMapIterator):
    """What ``imap_unordered`` returns: results as they come."""

    _ordered = False


class _Flattened:
    """What imap/imap_unordered return for chunksize > 1: the items of each
    chunk's result list, with ``next(timeout)`` and ``async for`` as the
    chunksize-1 iterators have."""

    def __init__(self, chunks):
        self._chunks = chunks
        self._rest = iter(())

    def __iter__(self):
        return self

    def next(self, timeout=None):
        while True:
            for item in self._rest:
                return item
            self._rest = iter(self._chunks.next(timeout))

    __next__ = next

    def __aiter__(self):
        return self

    async def __anext__(self):
        while True:
            for item in self._rest:
                return item
            self._rest = iter(await self._chunks.__anext__())


# ------------------------------------------------------------ the feeding

_FEED_STEP = 256           # tasks built and put per lock round
_REAP_EVERY = 0.1          # seconds between looks at the workers
_GRACE = 1.0               # seconds a live worker has to record what it took
_JOIN_WAIT = 5.0           # seconds terminate() gives a worker after SIGTERM


def _chunks(iterable, size):
    """The payloads of a job's tasks: the items themselves for size 1, else
    tuples (list slices for a list) of `size` items."""
    if size == 1:
        yield from iterable
    elif type(iterable) in (list, tuple):
        for i in range(0, len(iterable), size):
            yield iterable[i:i + size]
    else:
        it = iter(iterable)
        while True:
            chunk = tuple(itertools.islice(it, size))
            if not chunk:
                return
            yield chunk


class _Feeder:
    """The tasks of one job still to be put. One thread pulls at a time
    (the submitting call first, then the pool's handler)."""

    __slots__ = ("job", "fbytes", "call", "chunks", "count", "allowance", "done",
                 "stalled")

    def __init__(self, job, fbytes, call, chunks, allowance=None):
        self.job = job
        self.fbytes = fbytes
        self.call = call
        self.chunks = chunks
        self.count = 0           # chunks pulled (failed ones included)
        self.allowance = allowance   # imap's buffersize credit (None: no bound)
        self.done = False
        self.stalled = False     # the handler found no credit left

    def pull(self, n, wrap):
        """Up to `n` tasks as (index, kind, payload); a chunk whose input or
        serialization failed is (index, None, exception)."""
        out = []
        chunks = self.chunks
        for _ in range(n):
            try:
                payload = next(chunks)
            except StopIteration:
                self.done = True
                break
            except Exception as e:
                # The input raised: that position fails and the job ends there.
                out.append((self.count, None, e))
                self.count += 1
                self.done = True
                break
            idx = self.count
            self.count += 1
            try:
                kind, payload = wrap(self.call, payload)
            except Exception as e:
                out.append((idx, None, e))
                continue
            out.append((idx, kind, payload))
        return out

    def finish(self):
        """The input has ended: tell the job how many results there are."""
        job = self.job
        self.chunks = None
        if isinstance(job, IMapIterator):
            return job._set_length(self.count)
        if isinstance(job, MapResult):
            return job._expect(self.count)
        return False


# -------------------------------------------------------------- the core

_IDLE, _MORE, _FULL = 0, 1, 2


class _Core:
    """The state of one pool that its handler thread shares with the calling
    threads. It never refers to the Pool object, so an abandoned pool can be
    collected (and terminated) while its handler runs."""

    def __init__(self, ctx, processes, initializer, initargs, maxtasks, backend,
                 serializer, Process):
        name, _ = _registry.resolve("Pool", backend)
        self.backend = name
        # On the shm rings a dead worker cannot block the others and the
        # ring counts what was taken (see the module's notes).
        self.robust = name == "shm"
        self.ser = _serial.get_serializer(serializer)
        self.raw = isinstance(self.ser, _serial.PickleSerializer)
        self.ctx = ctx
        self.method = ctx.get_start_method()
        self.Process = Process
        self.processes = processes
        self.maxtasks = maxtasks
        self.owner = os.getpid()
        self.lock = threading.RLock()
        self.jobs = {}                      # job id -> result object
        self.inflight = {}                  # seq -> (result, index, message), in seq order
        self.seq = 0                        # next sequence number
        self.put_count = 0                  # task messages in the queue so far
        self.backlog = collections.deque()  # built task messages not put yet
        self.flush_step = _FEED_STEP        # messages per put_many (see _flush_locked)
        self.feeders = collections.deque()
        self.state = RUN
        self.broken = None
        self.terminated = False
        self.shut = False                   # the workers were told: no more tasks
        self.procs = [None] * processes     # worker Process per slot
        self.exiting = []                   # workers that said goodbye
        self.pool_list = []                 # Pool._pool: the live workers
        self.suspects = {}                  # seq -> (deadline, error)
        self.init_deaths = 0
        self.thread = None
        self.table = None
        self.tasks = self.results = None
        self.wake_r = self.wake_w = None
        if initializer is not None and self.method != "fork":
            # Travels as bytes, so a lambda or closure works under spawn too.
            initializer = self.ser.dumps(initializer)
        self.initializer = initializer
        self.initargs = tuple(initargs)
        try:
            # The transport's own serializer is pickle: the envelopes are
            # exact builtins (the shm ring's compact encoding), and user
            # objects inside them are already the pool serializer's bytes.
            self.tasks = ctx.Queue(backend=name)
            self.results = ctx.Queue(backend=name)
            if not self.robust:
                # A terminated pool must not make this process wait at exit
                # for tasks nobody will read.
                self.tasks.cancel_join_thread()
                self.wake_r, self.wake_w = os.pipe()
                os.set_blocking(self.wake_r, False)
                os.set_blocking(self.wake_w, False)
            self.table = _SlotTable(processes)
            for slot in range(processes):
                self._start(slot)
            self.thread = threading.Thread(target=self._handler, daemon=True,
                                           name="mpx-pool-handler")
            self.thread.start()
        except BaseException:
            self.terminate()
            raise

    # ------------------------------------------------------------ workers

    def _start(self, slot):
        self.table.reset(slot)
        p = self.Process(self.ctx, target=_worker_main,
                         args=(self.tasks, self.results, self.table, slot, self.ser,
                               self.initializer, self.initargs, self.maxtasks,
                               _TAKE_MAX if self.robust else 1, self.processes))
        p.name = p.name.replace("Process", "PoolWorker")
        p.daemon = True
        p.start()
        self.procs[slot] = p
        self.pool_list.append(p)

    def _want_worker(self):
        if self.terminated or self.broken is not None:
            return False
        return self.state == RUN or bool(self.jobs)

    def repopulate(self):
        with self.lock:
            for slot, p in enumerate(self.procs):
                if p is None and self._want_worker():
                    self._start(slot)

    # ----------------------------------------------------------- submitting

    def check_locked(self):
        if self.broken is not None:
            raise _chained(BrokenPoolError(str(self.broken)), self.broken.__cause__)
        if self.state != RUN:
            raise ValueError("Pool not running")

    def dump_func(self, func):
        """Serializer bytes of a job's function. Under spawn and forkserver a
        function of the ``__main__`` module travels by value (cloudpickle):
        by reference it exists in a worker only if defined at the top level
        of a main script (not under ``if __name__ == "__main__":``, in
        ``python -c`` or an interactive session)."""
        if (self.raw and self.method != "fork"
                and getattr(func, "__module__", None) == "__main__"):
            try:
                return _serial.get_serializer("cloudpickle").dumps(func)
            except Exception:
                pass
        return self.ser.dumps(func)

    def wrap(self, call, payload):
        """(kind, payload) of a task: as it is when plain, else serializer
        bytes (raises here, in the submitting thread, if it cannot be)."""
        if self.raw and _plain(payload):
            return call << 1, payload
        return (call << 1) | 1, self.ser.dumps(payload)

    def _submit_locked(self, feeder, items):
        """Number and queue `items` of `feeder` (see _Feeder.pull); jobs that
        finished meanwhile (all their tasks failed here) are returned."""
        done = []
        job = feeder.job
        jid = job._job
        fbytes = feeder.fbytes
        backlog, inflight = self.backlog, self.inflight
        seq = self.seq
        for idx, kind, payload in items:
            if kind is None:
                if job._set(idx, False, payload):
                    done.append(job)
                continue
            backlog.append(_message((seq, jid, idx, fbytes, kind), payload))
            inflight[seq] = (job, idx, (jid, fbytes, kind, payload))
            seq += 1
        self.seq = seq
        self._flush_locked()
        return done

    def _flush_locked(self):
        """Put what waits in the backlog, in order, while the queue has
        room; False if some is left."""
        backlog = self.backlog
        put_many = self.tasks.put_many
        while backlog:
            # put_many encodes a whole chunk before it puts what fits: after
            # a full queue the next chunk is only as long as what went in
            # then (large tasks are not encoded again and again), and it
            # grows back while everything fits.
            step = self.flush_step
            chunk = [backlog.popleft() for _ in range(min(len(backlog), step))]
            try:
                put_many(chunk, False)
            except Exception as e:
                n = getattr(e, "put_count", 0) if isinstance(e, _Full) else 0
                self.put_count += n
                backlog.extendleft(reversed(chunk[n:]))
                if isinstance(e, _Full):
                    self.flush_step = max(1, n)
                    return False
                raise
            self.put_count += len(chunk)
            if step < _FEED_STEP:
                self.flush_step = min(_FEED_STEP, step * 2)
        return True

    def start_job(self, job, feeder, sync, raise_errors=False):
        """Register `job` and feed its tasks: from this thread while the
        queue has room (`sync`, for inputs that cannot block), the rest from
        the handler."""
        with self.lock:
            self.check_locked()
            self.jobs[job._job] = job
            direct = sync and not self.feeders and not self.backlog
            if not direct:
                self.feeders.append(feeder)
        if not direct:
            self.wake()
            return
        wake = False
        done = []
        try:
            while True:
                items = feeder.pull(_FEED_STEP, self.wrap)
                if raise_errors:
                    for i, (_, kind, payload) in enumerate(items):
                        if kind is None:
                            # Raised from the submitting call: the job is
                            # dropped (what was already queued runs, unseen).
                            with self.lock:
                                self._submit_locked(feeder, items[:i])
                                job._finished = True
                                self.jobs.pop(job._job, None)
                            raise payload
                with self.lock:
                    if self.terminated or self.broken is not None:
                        break
                    done += self._submit_locked(feeder, items)
                    if feeder.done:
                        if feeder.finish():
                            done.append(job)
                        break
                    if self.backlog:
                        self.feeders.append(feeder)
                        wake = True
                        break
        finally:
            self._complete(done)
        if wake:
            self.wake()

    def submit_one(self, job, fbytes, kind, payload):
        feeder = _Feeder(job, fbytes, None, None)
        with self.lock:
            self.check_locked()
            self.jobs[job._job] = job
            done = self._submit_locked(feeder, [(0, kind, payload)])
            wake = bool(self.backlog)
        self._complete(done)
        if wake:
            self.wake()

    def abandon(self, feeder):
        """The consumer of an imap job went away (mpx.futures' map closed
        early): read no more of its input. What was queued still runs."""
        with self.lock:
            if feeder.done:
                return
            feeder.done = True
            try:
                self.feeders.remove(feeder)
            except ValueError:
                pass
            done = [feeder.job] if feeder.finish() else []
            self._maybe_shut_locked()
        self._complete(done)
        self.wake()

    def credit_locked(self, feeder):
        """imap's consumer took a result: one more task may be fed. True if
        the handler waits for that."""
        if feeder is None or feeder.allowance is None:
            return False
        feeder.allowance += 1
        if feeder.stalled:
            feeder.stalled = False
            return True
        return False

    def wake(self):
        """Make the handler look around now."""
        if not self.robust:
            with self.lock:       # (release() closes it under the lock)
                if self.wake_w is not None:
                    try:
                        os.write(self.wake_w, b"!")
                    except OSError:
                        pass      # full: it is awake anyway
            return
        try:
            self.results.put(_WAKE_MSG, False)
        except Exception:
            pass          # full (it is awake anyway) or closed (it is gone)

    def _get_results(self, timeout):
        """A batch of result messages, waiting up to `timeout` seconds."""
        if self.wake_r is None:
            try:
                return self.results.get_many(None, timeout > 0, timeout)
            except Empty:
                return None
        # The pipe transport: the parent never writes to the result queue
        # (a worker killed while holding its write lock would leave that
        # lock held), so wake-ups come through a pipe of its own.
        ready = _mp_connection.wait([self.results._reader, self.wake_r], timeout)
        if self.wake_r in ready:
            try:
                os.read(self.wake_r, 4096)
            except OSError:
                pass
        try:
            return self.results.get_many(None, False)
        except Empty:
            return None

    # -------------------------------------------------------- the handler

    def _handler(self):
        try:
            self._loop()
        except BaseException as e:      # a bug must not leave callers waiting
            err = BrokenPoolError(f"the pool's handler thread failed: {e!r}")
            err.__cause__ = e
            with self.lock:
                self.broken = err
                done = self._fail_all_locked(lambda: _chained(BrokenPoolError(
                    "the pool's handler thread failed"), e))
                procs = self._all_procs_locked()
            self._complete(done)
            for p in procs:
                _kill(p)
            raise

    def _loop(self):
        next_reap = 0.0
        backoff = 0.001
        while True:
            status = self._feed()
            if self.terminated:
                return
            if status == _MORE:
                timeout = 0.0
            elif status == _FULL:
                timeout = backoff
                backoff = min(backoff * 2, 0.02)
            else:
                timeout = _REAP_EVERY
                backoff = 0.001
            batch = self._get_results(timeout)
            if batch:
                self._process(batch)
            now = time.monotonic()
            if now >= next_reap or self.exiting:
                next_reap = now + _REAP_EVERY
                self._reap()
            if self._finished():
                return

    def _feed(self):
        with self.lock:
            if self.terminated:
                return _IDLE
            if self.backlog and not self._flush_locked():
                return _FULL
            feeder = None
            for f in self.feeders:
                if f.allowance is None or f.allowance > 0:
                    feeder = f
                    break
                f.stalled = True
            if feeder is None:
                self._maybe_shut_locked()
                return _IDLE
            n = _FEED_STEP if feeder.allowance is None else min(_FEED_STEP, feeder.allowance)
            if feeder.allowance is not None:
                feeder.allowance -= n
        items = feeder.pull(n, self.wrap)
        with self.lock:
            if feeder.allowance is not None:
                feeder.allowance += n - len(items)
            if self.terminated or self.broken is not None:
                return _IDLE
            done = self._submit_locked(feeder, items)
            if feeder.done:
                try:
                    self.feeders.remove(feeder)
                except ValueError:
                    pass
                if feeder.finish():
                    done.append(feeder.job)
            self._maybe_shut_locked()
            if self.backlog:
                status = _FULL
            elif any(f.allowance is None or f.allowance > 0 for f in self.feeders):
                status = _MORE
            else:
                status = _IDLE
        self._complete(done)
        return status

    def _maybe_shut_locked(self):
        """Once the pool is closed and every task is queued, tell the workers
        there will be no more (they finish what is queued first)."""
        if self.state != CLOSE or self.shut or self.feeders or self.backlog:
            return
        self.shut = True
        if self.robust:
            self.tasks.shutdown()
        else:
            live = sum(p is not None for p in self.procs)
            self.tasks.put_many([None] * live)

    def _process(self, batch):
        done = []
        initfail = None
        with self.lock:
            inflight = self.inflight
            for msg in batch:
                seq = msg[0]
                if seq >= 0:
                    entry = inflight.pop(seq, None)
                    if entry is None:
                        continue          # its job was dropped or failed meanwhile
                    job, idx, _ = entry
                    status = msg[1]
                    if status == _R_OK:
                        ok, value = True, msg[2]
                    elif status == _R_OKP:
                        ok, value = self._load_result(msg[2])
                    else:
                        ok, value = False, self._load_error(msg[2])
                    if job._set(idx, ok, value):
                        done.append(job)
                    self.init_deaths = 0
                elif seq == _CTRL:
                    what, slot = msg[1], msg[2]
                    if what == _C_EXIT:
                        self._on_exit_locked(slot, msg[4])
                    elif what == _C_INITFAIL and initfail is None:
                        initfail = self._load_error(msg[3])
            if initfail is not None:
                err = BrokenPoolError(f"the pool's initializer raised {initfail!r}; "
                                      "no worker can run tasks")
                err.__cause__ = initfail
                done += self._break_locked(err)
        self._complete(done)
        if initfail is not None:
            self._kill_all()

    def _load_result(self, data):
        try:
            return True, self.ser.loads(data)
        except Exception as e:
            return False, MaybeEncodingError(
                e, "<the result of a task, which could not be unpickled in the pool's process>")

    def _load_error(self, data):
        try:
            exc, tb = self.ser.loads(data)
        except Exception as e:
            return MaybeEncodingError(
                e, "<the exception a task raised, which could not be unpickled in the "
                   "pool's process>")
        try:
            exc.__cause__ = RemoteTraceback(tb)
        except Exception:
            pass
        return exc

    def _on_exit_locked(self, slot, pid):
        """Worker `slot` said goodbye (maxtasksperchild, no more tasks):
        a successor starts now if there is work for it."""
        p = self.procs[slot]
        if p is None or p.pid != pid:
            return                       # already handled by _reap
        self.procs[slot] = None
        self._unlist(p)
        self.exiting.append(p)
        if self.table.state(slot) != _ST_STOPPED and self._want_worker():
            self._start(slot)

    def _unlist(self, p):
        try:
            self.pool_list.remove(p)
        except ValueError:
            pass

    # ----------------------------------------------------------- deaths

    def _live_batches(self):
        """(first, count) of every live worker's current batch; None if one
        is being written right now."""
        out = []
        for slot, p in enumerate(self.procs):
            if p is not None:
                b = self.table.batch(slot)
                if b is None:
                    return None
                out.append(b)
        return out

    def _drain(self):
        while True:
            try:
                batch = self.results.get_many(None, False)
            except Empty:
                return
            self._process(batch)

    def _reap(self):
        with self.lock:
            if self.terminated:
                return               # terminate() owns (and closes) them
            ended = [p for p in self.exiting if not _running(p)]
            self.exiting = [p for p in self.exiting if p not in ended]
        for p in ended:
            _close_process(p)
        dead = [(slot, p) for slot, p in enumerate(self.procs)
                if p is not None and not _running(p)]
        if not dead and not self.suspects:
            return
        if self.terminated:
            return
        # How many tasks were taken, then which tasks live workers hold, are
        # read BEFORE the results are drained: a worker records a batch
        # right after taking it and puts every result before it moves on,
        # so a task taken by then and in neither place was never recorded
        # (or its worker is in the instant between taking and recording).
        with self.lock:
            taken = self.put_count - self.tasks.qsize() if self.robust else 0
        batches = self._live_batches()
        self._drain()
        done = []
        kill = False
        with self.lock:
            if self.terminated:
                return               # terminate() owns (and closes) them
            now = time.monotonic()
            for slot, p in dead:
                if self.procs[slot] is not p:
                    continue
                done += self._on_death_locked(slot, p, batches, taken, now)
            kill = self.broken is not None
            if self.suspects and batches is not None:
                done += self._check_suspects_locked(batches, now)
        self._complete(done)
        if kill:
            self._kill_all()

    def _on_death_locked(self, slot, p, batches, taken, now):
        code = p.exitcode
        pid = p.pid
        state = self.table.state(slot)
        self.procs[slot] = None
        self._unlist(p)
        _close_process(p)
        if state >= _ST_STOPPED:
            # It exited on its own (its goodbye may be still in the queue).
            if state != _ST_STOPPED and self._want_worker():
                self._start(slot)
            return []
        what = f"a worker of the pool (pid {pid}) died ({_describe_exit(code)})"
        if not self.robust:
            err = BrokenPoolError(f"{what}; on the {self.backend!r} transport a dead worker "
                                  "may leave the task queue unusable, so the pool is broken "
                                  "(the shm transport replaces the worker and goes on)")
            return self._break_locked(err)
        done = []
        inflight = self.inflight

        def lost(how):
            return WorkerLostError(f"{what} {how}; a new worker took its place", pid, code)
        # Its batch: the task it was running (or sending the result of)
        # fails; those it had not started go back in the queue.
        again = []
        batch = self.table.batch(slot)
        if batch is not None:
            first, count = batch
            running, sent = self.table.progress(slot)
            for seq in range(first + min(running, sent), first + count):
                entry = inflight.pop(seq, None)
                if entry is None:
                    continue
                if seq > first + running:
                    again.append(entry)
                elif entry[0]._set(entry[1], False, lost("while running this task")):
                    done.append(entry[0])
        self._requeue_locked(again)
        # Tasks the ring says were taken that no worker has recorded: the
        # dead one may have died between taking and recording them (it ran
        # none of them). Live workers get a grace period to record theirs.
        for seq in inflight:
            if seq >= taken:
                break
            if seq not in self.suspects and (batches is None or not _covered(seq, batches)):
                self.suspects[seq] = now + _GRACE
        if state == _ST_STARTING:
            self.init_deaths += 1
            if self.init_deaths >= max(3, 2 * self.processes):
                hint = "" if self.method == "fork" else (
                    f"; under {self.method} a worker imports the main module first: "
                    "does it start a pool outside `if __name__ == '__main__':`?")
                err = BrokenPoolError(f"the pool's workers keep dying before their "
                                      f"initializer returns (the last: {what}){hint}")
                return done + self._break_locked(err)
        if self._want_worker():
            self._start(slot)
        return done

    def _check_suspects_locked(self, batches, now):
        again = []
        for seq, deadline in list(self.suspects.items()):
            entry = self.inflight.get(seq)
            if entry is None or _covered(seq, batches):
                del self.suspects[seq]
            elif deadline <= now:
                del self.suspects[seq]
                del self.inflight[seq]
                again.append(entry)
        self._requeue_locked(again)
        return []

    def _requeue_locked(self, entries):
        """Put tasks a dead worker took but never started back in the queue
        (under new sequence numbers, so the queue's order stays theirs)."""
        if not entries:
            return
        for job, idx, task in entries:
            seq = self.seq
            self.seq += 1
            jid, fbytes, kind, payload = task
            self.backlog.append(_message((seq, jid, idx, fbytes, kind), payload))
            self.inflight[seq] = (job, idx, task)
        self._flush_locked()

    # ------------------------------------------------------ ending

    def _all_procs_locked(self):
        return [p for p in self.procs if p is not None] + list(self.exiting)

    def _fail_all_locked(self, make_error):
        done = []
        for job in list(self.jobs.values()):
            if job._fail(make_error()):
                done.append(job)
        self.jobs.clear()
        self.inflight.clear()
        self.backlog.clear()
        self.feeders.clear()
        self.suspects.clear()
        return done

    def _break_locked(self, err):
        if self.broken is None:
            self.broken = err
        return self._fail_all_locked(lambda: _chained(BrokenPoolError(str(err)),
                                                      err.__cause__))

    def _kill_all(self):
        with self.lock:
            procs = self._all_procs_locked()
        for p in procs:
            _kill(p)

    def _finished(self):
        with self.lock:
            if self.terminated:
                return True
            if self.state == RUN and self.broken is None:
                return False
            if self.jobs or self.feeders or self.backlog:
                return False
            if any(p is not None for p in self.procs):
                return False
            procs = list(self.exiting)
        for p in procs:
            _join(p, _JOIN_WAIT)
            if _running(p):
                return False
        return True

    def _complete(self, done):
        for job in done:
            job._complete()

    def close(self):
        with self.lock:
            if self.state == RUN:
                self.state = CLOSE
            # With every task queued, the workers learn it now (not after
            # a round trip through the handler).
            self._maybe_shut_locked()
        self.wake()

    def interrupted(self):
        """Ctrl-C in a thread waiting on the pool: end the workers."""
        if os.getpid() == self.owner and not self.terminated:
            self.terminate()

    def _start_terminating_locked(self):
        """Mark the pool terminated and fail what is pending (the jobs to
        complete); None if that was done already."""
        if self.terminated:
            return None
        self.terminated = True
        self.state = TERMINATE
        return self._fail_all_locked(lambda: PoolTerminatedError(
            "the pool was terminated before this task finished"))

    def terminate(self):
        """Fail what is pending, stop the workers (SIGTERM, then SIGKILL
        after 5 s) and the handler. Safe to call twice, from any thread."""
        if os.getpid() != self.owner:
            return
        with self.lock:
            done = self._start_terminating_locked()
            if done is None:
                return
            procs = self._all_procs_locked()
        self._complete(done)
        if self.results is not None:
            self.wake()
        procs = [p for p in procs if _running(p)]
        for p in procs:
            try:
                p.terminate()
            except Exception:
                pass
        deadline = time.monotonic() + _JOIN_WAIT
        for p in procs:
            _join(p, max(0.0, deadline - time.monotonic()))
        for p in procs:
            _kill(p)
            _close_process(p)
        with self.lock:
            self.procs = [None] * self.processes
            self.exiting = []
            del self.pool_list[:]
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_JOIN_WAIT)
        self.release()

    def join(self):
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            _interruptible(self, thread.join)
        with self.lock:
            procs = self._all_procs_locked()
        for p in procs:
            if _running(p):
                _interruptible(self, _join, p)
            _close_process(p)
        with self.lock:
            self.exiting = [p for p in self.exiting if p not in procs]
        self.release()

    def release(self):
        """Close the queues and the slot table in this process, once the
        handler (their other user here) is gone."""
        thread = self.thread
        if thread is not None and thread.is_alive():
            return
        with self.lock:
            for q in (self.tasks, self.results):
                if q is not None:
                    try:
                        q.close()
                        if not self.robust:
                            q.join_thread()
                    except Exception:
                        pass
            # Dropped, so what they hold (the pipe transport's semaphores)
            # goes now rather than with the pool object.
            self.tasks = self.results = None
            if self.table is not None:
                self.table.close()
            for fd in (self.wake_r, self.wake_w):
                if fd is not None:
                    os.close(fd)
            self.wake_r = self.wake_w = None


def _covered(seq, batches):
    for first, count in batches:
        if first <= seq < first + count:
            return True
    return False


def _chained(err, cause):
    err.__cause__ = cause
    return err


def _running(p):
    """Is worker `p` still running? (False once its object was closed.)"""
    try:
        return p.exitcode is None
    except ValueError:
        return False


def _join(p, timeout=None):
    """Wait for worker `p` to end. The handler thread may close the object
    meanwhile (it reaps workers that exited); closed means joined."""
    try:
        p.join(timeout)
    except (ValueError, AssertionError, AttributeError):
        pass       # closed between join's checks


def _kill(p):
    try:
        if p.exitcode is None:
            p.kill()
            p.join(1.0)
    except Exception:
        pass


def _close_process(p):
    try:
        if p.exitcode is not None:
            p.close()
    except Exception:
        pass


# -------------------------------------------------------------- the Pool

def _mpx_context(context):
    """The mpx context (of one start method) a pool's workers start with."""
    from . import context as _contexts
    if context is None:
        return _contexts.default_context.get_context()
    if isinstance(context, _contexts.MpxContext):
        return context
    if isinstance(context, _contexts.MpxDefaultContext):
        return context.get_context()
    # A stdlib context: mpx's of the same start method.
    return _contexts.get_context(context.get_start_method())


def _check_chunksize(chunksize):
    if chunksize < 1:
        raise ValueError("Chunksize must be 1+, not {0:n}".format(chunksize))


def _check_buffersize(buffersize):
    # As Python 3.14's imap/imap_unordered.
    if buffersize is None:
        return
    if not isinstance(buffersize, int):
        raise TypeError("buffersize must be an integer or None")
    if buffersize < 1:
        raise ValueError("buffersize must be None or > 0")


# The stdlib Pool's private hooks that its subclasses override.
_STDLIB_PRIVATE = ("_setup_queues", "_repopulate_pool_static", "_maintain_pool",
                   "_handle_workers", "_handle_tasks", "_handle_results",
                   "_join_exited_workers", "_terminate_pool", "_help_stuff_finish",
                   "_get_sentinels", "_get_worker_sentinels", "_wait_for_updates")


class Pool:
    """A pool of worker processes: ``multiprocessing.pool.Pool``'s API and
    semantics, over mpx queues (see the module's notes).

    ``backend``: the transport ("shm", the default where available, or
    "pipe"); ``serializer``: how functions, arguments and results become
    bytes ("pickle" with the cloudpickle fallback by default, so lambdas
    and closures work; "cloudpickle"; or any object with dumps/loads).
    """

    @staticmethod
    def Process(ctx, *args, **kwds):
        return ctx.Process(*args, **kwds)

    def __init_subclass__(cls, **kwargs):
        # A subclass that overrides the stdlib Pool's private machinery
        # (joblib's pools override _setup_queues to install their pickling
        # reducers) would be silently ignored here: say so at once.
        super().__init_subclass__(**kwargs)
        for name in _STDLIB_PRIVATE:
            if name in cls.__dict__:
                raise TypeError(
                    f"{cls.__qualname__} overrides {name}, a private method of "
                    f"multiprocessing.pool.Pool that mpx.pool.Pool does not have (it "
                    f"moves tasks over mpx queues); subclass multiprocessing.pool.Pool "
                    f"for that")

    def __init__(self, processes=None, initializer=None, initargs=(),
                 maxtasksperchild=None, context=None, *, backend=None, serializer=None,
                 ray_address=None, ray_remote_args=None):
        # Attributes __del__ and __repr__ read exist even if this fails.
        self._pool = []
        self._core = None
        ctx = _mpx_context(context)
        self._ctx = ctx
        # backend="ray" has a core of its own (mpx._ray_pool): workers are
        # Ray actors, and the default size is the cluster's CPUs.
        core_class, extra = _Core, {}
        if _registry.resolve("Pool", backend)[0] == "ray":
            from ._ray_pool import RayCore as core_class
            extra = {"ray_address": ray_address, "ray_remote_args": ray_remote_args}
        elif ray_address is not None or ray_remote_args is not None:
            raise TypeError("ray_address and ray_remote_args are for backend='ray'")
        if processes is None and core_class is _Core:
            # (What the stdlib's uses: the CPUs this process may run on, 3.13+.)
            count = getattr(os, "process_cpu_count", os.cpu_count)
            processes = count() or 1
        if processes is not None and processes < 1:
            raise ValueError("Number of processes must be at least 1")
        if maxtasksperchild is not None:
            if not isinstance(maxtasksperchild, int) or maxtasksperchild <= 0:
                raise ValueError("maxtasksperchild must be a positive int or None")
        if initializer is not None and not callable(initializer):
            raise TypeError('initializer must be a callable')
        self._processes = processes
        self._initializer = initializer
        self._initargs = initargs
        self._maxtasksperchild = maxtasksperchild
        core = core_class(ctx, processes, initializer, initargs, maxtasksperchild, backend,
                          serializer, self.Process, **extra)
        self._core = core
        self._processes = core.processes
        self._pool = core.pool_list
        self._backend = core.backend
        # As the stdlib's: terminated when collected or at exit.
        self._terminate = _util.Finalize(self, core.terminate, exitpriority=15)

    # The stdlib's state attribute (RUN, CLOSE or TERMINATE).
    @property
    def _state(self):
        core = self._core
        return INIT if core is None else core.state

    @_state.setter
    def _state(self, value):
        if self._core is not None:
            self._core.state = value

    @property
    def _cache(self):
        return self._core.jobs

    def __del__(self):
        core = self.__dict__.get("_core")
        if core is not None and core.state == "RUN" and core.owner == os.getpid():
            warnings.warn(f"unclosed running multiprocessing pool {self!r}",
                          ResourceWarning, source=self)

    def __repr__(self):
        cls = self.__class__
        return (f'<{cls.__module__}.{cls.__qualname__} '
                f'state={self._state} '
                f'pool_size={len(self._pool)}>')

    def __reduce__(self):
        raise NotImplementedError(
            'pool objects cannot be passed between processes or pickled')

    def _check_running(self):
        if self._state != RUN:
            raise ValueError("Pool not running")

    def _repopulate_pool(self):
        self._core.repopulate()

    # ---------------------------------------------------------- the API

    def apply(self, func, args=(), kwds={}):
        """``func(*args, **kwds)`` in a worker; waits for the result."""
        return self.apply_async(func, args, kwds).get()

    def apply_async(self, func, args=(), kwds={}, callback=None, error_callback=None):
        """``func(*args, **kwds)`` in a worker; returns an AsyncResult at once.
        A function or argument that cannot be serialized raises here."""
        self._check_running()
        core = self._core
        fbytes = core.dump_func(func)
        kind, payload = core.wrap(_CALL_APPLY, (tuple(args), dict(kwds)))
        result = ApplyResult(self, callback, error_callback)
        core.submit_one(result, fbytes, kind, payload)
        return result

    def map(self, func, iterable, chunksize=None):
        """``list(map(func, iterable))`` computed by the workers."""
        return self._map_async(func, iterable, _CALL_ONE, _CALL_MAP, chunksize).get()

    def starmap(self, func, iterable, chunksize=None):
        """``[func(*args) for args in iterable]`` computed by the workers."""
        return self._map_async(func, iterable, _CALL_STAR, _CALL_STARMAP, chunksize).get()

    def map_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        """map() without waiting: returns a MapResult."""
        return self._map_async(func, iterable, _CALL_ONE, _CALL_MAP, chunksize, callback,
                               error_callback)

    def starmap_async(self, func, iterable, chunksize=None, callback=None,
                      error_callback=None):
        """starmap() without waiting: returns a MapResult."""
        return self._map_async(func, iterable, _CALL_STAR, _CALL_STARMAP, chunksize,
                               callback, error_callback)

    def _map_async(self, func, iterable, one, many, chunksize=None, callback=None,
                   error_callback=None):
        self._check_running()
        if not hasattr(iterable, '__len__'):
            iterable = list(iterable)
        if chunksize is None:
            chunksize, extra = divmod(len(iterable), self._processes * 4)
            if extra:
                chunksize += 1
        elif chunksize < 1 and len(iterable):
            _check_chunksize(chunksize)
        if len(iterable) == 0:
            chunksize = 0
        core = self._core
        fbytes = core.dump_func(func)
        result = MapResult(self, chunksize, len(iterable), callback, error_callback)
        if chunksize == 0:
            result._finished = True
            result._complete()
            return result
        feeder = _Feeder(result, fbytes, one if chunksize == 1 else many,
                         _chunks(iterable, chunksize))
        # A list or tuple cannot block: its first tasks go from this thread,
        # and an item that cannot be serialized raises here.
        core.start_job(result, feeder, sync=type(iterable) in (list, tuple),
                       raise_errors=True)
        return result

    def imap(self, func, iterable, chunksize=1, *, buffersize=None):
        """Results in input order, as an iterator, while the workers go on.
        `buffersize`: at most this many tasks (chunks) are submitted ahead
        of what the iterator has handed out, so a huge or endless input is
        read as it goes (as Python 3.14's)."""
        return self._imap(IMapIterator, func, iterable, chunksize, buffersize)

    def imap_unordered(self, func, iterable, chunksize=1, *, buffersize=None):
        """Like imap(), but results come as they are ready."""
        return self._imap(IMapUnorderedIterator, func, iterable, chunksize, buffersize)

    def _imap(self, cls, func, iterable, chunksize, buffersize):
        result = self._imap_chunks(cls, func, iterable, chunksize, buffersize)
        if chunksize == 1:
            return result
        return _Flattened(result)

    def _imap_chunks(self, cls, func, iterable, chunksize, buffersize, star=False):
        """Start an imap job; its iterator yields one result per chunk (a
        list for chunksize > 1). `star`: call func(*item) (mpx.futures' map)."""
        self._check_running()
        _check_chunksize(chunksize)
        _check_buffersize(buffersize)
        core = self._core
        fbytes = core.dump_func(func)
        result = cls(self)
        if star:
            call = _CALL_STAR if chunksize == 1 else _CALL_STARMAP
        else:
            call = _CALL_ONE if chunksize == 1 else _CALL_MAP
        feeder = _Feeder(result, fbytes, call, _chunks(iterable, chunksize), buffersize)
        result._feeder = feeder
        core.start_job(result, feeder,
                       sync=buffersize is None and type(iterable) in (list, tuple))
        return result

    def close(self):
        """No more tasks; the workers exit once every submitted task is done."""
        self._core.close()

    def terminate(self):
        """Stop the workers now; pending tasks fail with PoolTerminatedError."""
        self._terminate()

    def join(self):
        """Wait for the workers to exit (after close() or terminate())."""
        state = self._state
        if state == RUN:
            raise ValueError("Pool is still running")
        elif state not in (CLOSE, TERMINATE):
            raise ValueError("In unknown state")
        self._core.join()

    def __enter__(self):
        self._check_running()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.terminate()


def __getattr__(name):
    # The rest of multiprocessing.pool's public names (its imports and
    # helpers) are the stdlib's own.
    from multiprocessing import pool as _std_pool
    if not name.startswith("_"):
        try:
            return getattr(_std_pool, name)
        except AttributeError:
            pass
    raise AttributeError(f"module 'mpx.pool' has no attribute {name!r}")
