"""mpx.futures: a ``concurrent.futures`` process executor on mpx's Pool.

Why a class of its own. The stdlib's ``ProcessPoolExecutor`` takes an mpx
context (``mp_context=mpx.get_context(m)``): its workers then send results
over an shm ring, and everything works as before. But it builds its call
queue from ``multiprocessing.connection`` itself (a pipe with a feeder
thread, whatever the context), and every task passes through three threads
of the parent (the caller, its manager thread, the feeder), so with an mpx
context it runs at the stdlib's speed. This executor keeps the
``concurrent.futures.Executor`` API and runs on :class:`mpx.pool.Pool`:
``map`` streams through the pool's ``imap`` (no Future per item, tasks
batched through the ring), ``submit`` is one ``apply_async``. Lambdas and
closures travel, and a worker that dies fails only the task it was running.

Where it differs from the stdlib's executor (the README lists these too):

- A submitted task goes into the pool's shared task queue at once; there
  is no parent-side queue to take it back from. So a future is running
  from ``submit`` on, ``cancel()`` returns False, and
  ``shutdown(cancel_futures=True)`` stops the workers: whatever has not
  finished then raises ``CancelledError``.
- A worker that dies (SIGKILL, ``os._exit``, a crash in C code) fails the
  task it was running with :class:`WorkerLostError`, which is a
  ``BrokenProcessPool`` too, so code written for the stdlib still catches
  it; the executor replaces the worker and goes on instead of refusing all
  later work.
"""

import concurrent.futures as _cf
import threading
import time
from concurrent.futures import _base
from concurrent.futures.process import BrokenProcessPool
from multiprocessing import util as _util
from multiprocessing.context import TimeoutError as _MPTimeoutError

from . import pool as _pool

__all__ = ["ProcessPoolExecutor", "WorkerLostError", "BrokenPoolError", "BrokenProcessPool"]


class WorkerLostError(_pool.WorkerLostError, BrokenProcessPool):
    """The worker running this task died before sending its result (see
    :class:`mpx.pool.WorkerLostError`); also a ``BrokenProcessPool``, the
    error the stdlib's executor gives for it."""


class BrokenPoolError(_pool.BrokenPoolError, BrokenProcessPool):
    """The executor cannot run tasks any more (its initializer raised, its
    workers keep dying while starting); also a ``BrokenProcessPool``."""


def _as_executor_error(exc):
    """The pool's worker-loss errors as their executor twins (same message,
    pid, exit code and cause); every other exception as it is."""
    if isinstance(exc, _pool.WorkerLostError) and not isinstance(exc, WorkerLostError):
        twin = WorkerLostError(str(exc), exc.pid, exc.exitcode)
    elif isinstance(exc, _pool.BrokenPoolError) and not isinstance(exc, BrokenPoolError):
        twin = BrokenPoolError(*exc.args)
    else:
        return exc
    twin.__cause__ = exc.__cause__
    twin.__traceback__ = exc.__traceback__
    return twin


class ProcessPoolExecutor(_base.Executor):
    """``concurrent.futures.ProcessPoolExecutor``'s API over :class:`mpx.Pool`
    (see the module's notes for what differs).

    ``mp_context``: the context the workers start with (an mpx or stdlib
    context; mpx's default context when None). ``backend``: the pool's
    transport ("shm" by default, or "pipe"); ``serializer``: as for
    ``mpx.Pool``.
    """

    def __init__(self, max_workers=None, mp_context=None, initializer=None, initargs=(),
                 *, max_tasks_per_child=None, backend=None, serializer=None):
        if max_workers is not None and max_workers <= 0:
            raise ValueError("max_workers must be greater than 0")
        if max_tasks_per_child is not None:
            if not isinstance(max_tasks_per_child, int):
                raise TypeError("max_tasks_per_child must be an integer")
            if max_tasks_per_child <= 0:
                raise ValueError("max_tasks_per_child must be >= 1")
        self._shutdown_lock = threading.Lock()
        self._shutdown_thread = False
        self._cancelling = False
        self._pool = _pool.Pool(max_workers, initializer, initargs, max_tasks_per_child,
                                context=mp_context, backend=backend, serializer=serializer)
        self._max_workers = self._pool._processes
        # Left without shutdown(): collected, the executor lets its pending
        # work finish (the pool is closed, not terminated); at interpreter
        # exit it waits for it, as the stdlib's executor does. (Runs before
        # the pool's own exit-time terminate, which has priority 15.)
        self._finalizer = _util.Finalize(self, _finish, args=(self._pool,), exitpriority=20)

    def submit(self, fn, /, *args, **kwargs):
        """Run ``fn(*args, **kwargs)`` in a worker; returns a Future. A
        function or argument that cannot be serialized raises here."""
        with self._shutdown_lock:
            self._check_open()
            future = _base.Future()
            future.set_running_or_notify_cancel()
            try:
                self._pool.apply_async(fn, args, kwargs,
                                       callback=future.set_result,
                                       error_callback=self._failer(future))
            except _pool.BrokenPoolError as exc:
                raise _as_executor_error(exc) from exc.__cause__
        return future

    def map(self, fn, *iterables, timeout=None, chunksize=1, buffersize=None):
        """``map(fn, *iterables)`` computed by the workers, as an iterator of
        results in order. The inputs are read at once (as the stdlib's), or
        at most `buffersize` tasks ahead of what was taken (as Python
        3.14's). `timeout` counts from this call; TimeoutError when a
        result is not ready by then. A task's exception is raised where
        its result would be."""
        if chunksize < 1:
            raise ValueError("chunksize must be >= 1.")
        deadline = None if timeout is None else time.monotonic() + timeout
        args = iterables[0] if len(iterables) == 1 else zip(*iterables)
        if buffersize is None:
            args = list(args)
        with self._shutdown_lock:
            self._check_open()
            try:
                chunks = self._pool._imap_chunks(_pool.IMapIterator, fn, args, chunksize,
                                                 buffersize, star=len(iterables) != 1)
            except _pool.BrokenPoolError as exc:
                raise _as_executor_error(exc) from exc.__cause__
        return _results(chunks, chunksize, deadline)

    def shutdown(self, wait=True, *, cancel_futures=False):
        """No more submissions. `wait`: return once every pending task has
        run and the workers have exited. `cancel_futures`: stop the workers
        now instead; whatever has not finished raises CancelledError."""
        with self._shutdown_lock:
            self._shutdown_thread = True
            self._cancelling = self._cancelling or cancel_futures
        pool = self._pool
        if cancel_futures:
            pool.terminate()
        else:
            pool.close()
            if wait:
                pool.join()

    def _check_open(self):
        if self._shutdown_thread:
            raise RuntimeError("cannot schedule new futures after shutdown")
        if _util.is_exiting():
            raise RuntimeError("cannot schedule new futures after interpreter shutdown")

    def _failer(self, future):
        def fail(exc):
            if self._cancelling and isinstance(exc, _pool.PoolTerminatedError):
                exc = _cf.CancelledError()
            future.set_exception(_as_executor_error(exc))
        return fail


def _finish(pool):
    # Collected without shutdown(): close, so pending tasks still run (the
    # results pending keep the pool alive until they are in). At exit: wait.
    pool.close()
    if _util.is_exiting():
        pool.join()


def _results(chunks, chunksize, deadline):
    """Yield the results of an imap job's chunks, raising a task's
    exception where its result would be."""
    finished = False
    try:
        while True:
            if deadline is None:
                chunk = chunks.next()
            else:
                chunk = chunks.next(max(0.0, deadline - time.monotonic()))
            if chunksize == 1:
                yield chunk
            else:
                yield from chunk
    except StopIteration:
        finished = True
        return
    except _MPTimeoutError:
        raise _cf.TimeoutError from None
    except Exception as exc:
        twin = _as_executor_error(exc)
        if twin is exc:
            raise
        raise twin from exc.__cause__
    finally:
        if not finished:
            # Closed early (or failed): the rest of the input is not read.
            chunks._core.abandon(chunks._feeder)
