"""The core of ``mpx.Pool(backend="ray")``: worker actors on a Ray cluster.

``mpx.pool.Pool`` keeps its API, its result objects and its rules (chunksize,
callbacks, imap's buffersize, close/terminate/join, errors with the remote
traceback, lambdas through the serializer's cloudpickle fallback); only its
core, the part that moves tasks and results, is this one for Ray. It reuses
the local core's job bookkeeping (``mpx.pool._Core``: numbering tasks,
completing jobs, failing them) and replaces the transport.

Facts this module is built on
-----------------------------
- Workers are ``processes`` Ray actors (default: the cluster's CPUs), each
  reserving ``min(1, CPUs / processes)`` CPUs, so Ray places them where the
  CPUs are and a pool the size of the cluster never waits for room. A task
  message is the local pool's ``(seq, job, index, function, kind, payload)``
  and a worker runs it with the local pool's ``_run``: same encodings, same
  error capture (BaseException, unpicklable results, traceback text).
- One actor call carries a batch of tasks: an actor call costs about a
  millisecond, so one call per task (``ray.util.multiprocessing.Pool`` with
  ``chunksize=1``) is slow. Batches grow while they take under 10 ms of
  work and shrink above 20 ms, and are never more than a fair share of what
  waits, so slow tasks are not hoarded by one actor. Each actor has up to
  two calls queued, so it never idles while its results travel back.
- Completions come back through ``ObjectRef.future()`` callbacks into one
  queue that the handler thread waits on: no polling, a wait of at most
  the handler's timeout for the rare wake-up.
- A call whose actor died (its process was killed, its node was lost)
  raises ``RayActorError`` and the like: every task of that call that has
  no result fails with ``mpx.pool.WorkerLostError`` (not retried: the task
  may have run, in part, on the lost node), the actor is replaced, and
  the pool goes on with the rest. Nothing waits for a lost node.
- An initializer that raises makes the pool broken (``BrokenPoolError``),
  as locally; ``maxtasksperchild`` retires an actor after that many tasks.
"""

import collections
import os
import queue as _queue
import threading
import time

from multiprocessing.pool import CLOSE, RUN

from . import _serial
from . import pool as _pool
from .backends.ray import _portable, _runtime

__all__ = ["RayCore"]

_PIPELINE = 2              # calls queued per actor
_BATCH_TIME = 0.010        # aim: this much work per call (seconds)
_TAKE_MAX = 4096           # most tasks in one call
_INITFAIL = "initfail"


class _PoolWorker:
    """A worker actor's body (wrapped with ``ray.remote`` by the core)."""

    def __init__(self, ser, initializer, initargs):
        self._ser = ser
        self._funcs = {}
        self._initerr = _pool._run_initializer(ser, initializer, initargs)

    def run(self, msgs):
        """(pid, seconds of work, result messages) of a batch of tasks."""
        if self._initerr is not None:
            return os.getpid(), 0.0, _INITFAIL, self._initerr
        start = time.perf_counter()
        funcs, ser, run = self._funcs, self._ser, _pool._run
        out = [run(m, funcs, ser) for m in msgs]
        return os.getpid(), time.perf_counter() - start, out


_worker_class = None


def _worker(ray):
    global _worker_class
    if _worker_class is None:
        _worker_class = ray.remote(max_restarts=0, max_task_retries=0)(_PoolWorker)
    return _worker_class


class _Slot:
    """One worker actor and what the core knows of it."""

    __slots__ = ("actor", "ready", "calls", "take", "sent", "pid", "retiring")

    def __init__(self, actor):
        self.actor = actor
        self.ready = False      # placed and constructed: calls go only to ready actors
        self.calls = 0          # calls not answered yet
        self.take = 1           # tasks to put in its next call
        self.sent = 0           # tasks sent to it (for maxtasksperchild)
        self.pid = None         # its process, once a call came back
        self.retiring = False   # maxtasksperchild reached: no more calls


class RayCore(_pool._Core):
    """``mpx.pool._Core`` with Ray actors instead of processes and queues."""

    def __init__(self, ctx, processes, initializer, initargs, maxtasks, backend,
                 serializer, Process, ray_address=None, ray_remote_args=None):
        self.backend = "ray"
        self.robust = True
        self.ser = _serial.get_serializer(serializer)
        self.raw = isinstance(self.ser, _serial.PickleSerializer)
        self.ctx = ctx
        self.method = "ray"
        self.Process = None
        self.maxtasks = maxtasks
        self.owner = os.getpid()
        self.lock = threading.RLock()
        self.jobs = {}
        self.inflight = {}
        self.seq = 0
        self.put_count = 0
        self.backlog = collections.deque()
        self.flush_step = _pool._FEED_STEP
        self.feeders = collections.deque()
        self.state = RUN
        self.broken = None
        self.terminated = False
        self.shut = False
        self.procs = []
        self.exiting = []
        self.pool_list = []
        self.suspects = {}
        self.init_deaths = 0
        self.thread = None
        self.table = None
        self.tasks = self.results = None
        self.wake_r = self.wake_w = None
        self.done_q = _queue.SimpleQueue()   # (slot, msgs, future) of answered calls
        self.calls = {}                      # future -> (index, slot, seqs) of a batch
        self.readying = {}                   # future -> slot, of actors being made
        self.released = False
        self.ray = _runtime.acquire(ray_address)
        try:
            ray = self.ray
            cpus = float(ray.cluster_resources().get("CPU", 0))
            if processes is None:
                processes = max(1, int(cpus))
            self.processes = processes
            # Initializer and function travel as serializer bytes, so a
            # lambda or closure works (cloudpickle fallback).
            self.initializer = None if initializer is None else self.ser.dumps(initializer)
            self.initargs = tuple(initargs)
            if self.initializer is not None:
                _portable.check(self.initializer, "the pool's initializer")
                _portable.check(self.ser.dumps(self.initargs), "the pool's initargs")
            options = {"num_cpus": min(1.0, int(cpus / processes * 1e4) / 1e4) if cpus else 0}
            options.update(ray_remote_args or {})
            self.options = options
            self.slots = [self._new_slot() for _ in range(processes)]
            self.thread = threading.Thread(target=self._handler, daemon=True,
                                           name="mpx-ray-pool-handler")
            self.thread.start()
        except BaseException:
            self.terminate()
            raise

    # ------------------------------------------------------------ workers

    def _new_slot(self):
        actor = _worker(self.ray).options(**self.options).remote(
            self.ser, self.initializer, self.initargs)
        slot = _Slot(actor)
        self.pool_list.append(slot)
        # Tasks go to an actor only once it exists: a replacement that Ray
        # cannot place (its node was lost and no CPU is free) must not hold
        # tasks that the live actors could run.
        future = actor.__ray_ready__.remote().future()
        self.readying[future] = slot
        future.add_done_callback(self.done_q.put)
        return slot

    def _replace_locked(self, i):
        old = self.slots[i]
        self._unlist(old)
        self._kill_actor(old.actor)
        self.slots[i] = self._new_slot() if self._want_worker() else None

    def _kill_actor(self, actor):
        try:
            self.ray.kill(actor, no_restart=True)
        except Exception:
            pass

    def repopulate(self):
        with self.lock:
            for i, slot in enumerate(self.slots):
                if slot is None and self._want_worker():
                    self.slots[i] = self._new_slot()

    def dump_func(self, func):
        # Workers on other machines have no __main__ of ours: a function
        # defined there travels by value.
        data = None
        if self.raw and getattr(func, "__module__", None) == "__main__":
            try:
                data = _serial.get_serializer("cloudpickle").dumps(func)
            except Exception:
                pass
        if data is None:
            data = self.ser.dumps(func)
        _portable.check(data, "the function given to the pool")
        return data

    def wrap(self, call, payload):
        kind, payload = super().wrap(call, payload)
        if kind & 1:
            _portable.check(payload, "a task's arguments")
        return kind, payload

    # ------------------------------------------------------ dispatching

    def _flush_locked(self):
        """Send batches from the backlog to actors with room for a call;
        False if tasks are left over."""
        backlog = self.backlog
        if self.terminated or self.broken is not None:
            return True
        while backlog:
            free = [(s.calls, i) for i, s in enumerate(self.slots)
                    if s is not None and s.ready and not s.retiring and s.calls < _PIPELINE]
            if not free:
                return False
            _, i = min(free)
            slot = self.slots[i]
            live = sum(1 for s in self.slots if s is not None and s.ready) or 1
            n = min(slot.take, max(1, len(backlog) // live))
            if self.maxtasks is not None:
                n = min(n, self.maxtasks - slot.sent)
            batch = [backlog.popleft() for _ in range(n)]
            slot.sent += n
            if self.maxtasks is not None and slot.sent >= self.maxtasks:
                slot.retiring = True
            slot.calls += 1
            self.put_count += n
            future = slot.actor.run.remote(batch).future()
            self.calls[future] = (i, slot, [m[0] for m in batch])
            future.add_done_callback(self.done_q.put)
        return True

    def wake(self):
        self.done_q.put(None)

    def _get_results(self, timeout):
        """Result messages of the calls answered within `timeout`; failed
        calls fail their tasks here."""
        try:
            first = self.done_q.get(timeout=max(timeout, 0.0)) if timeout > 0 \
                else self.done_q.get_nowait()
        except _queue.Empty:
            return None
        futures = [first]
        while True:
            try:
                futures.append(self.done_q.get_nowait())
            except _queue.Empty:
                break
        out = []
        done = []
        kill = False
        with self.lock:
            for future in futures:
                if future is None:
                    continue
                slot = self.readying.pop(future, None)
                if slot is not None:
                    error = future.exception()
                    if error is None:
                        slot.ready = True
                        self.init_deaths = 0
                        continue
                    # Ray could not make the actor. Again and again means it
                    # never will (a runtime_env that fails, say): broken.
                    self.init_deaths += 1
                    if self.init_deaths >= max(3, 2 * self.processes):
                        err = _pool.BrokenPoolError(
                            f"Ray keeps failing to start the pool's worker actors "
                            f"(the last: {type(error).__name__}: {error})")
                        err.__cause__ = error
                        done += self._break_locked(err)
                        kill = True
                    elif slot in self.slots:
                        done += self._lost_locked(self.slots.index(slot), slot, [], error)
                    continue
                entry = self.calls.pop(future, None)
                if entry is None:
                    continue
                i, slot, seqs = entry
                slot.calls -= 1
                try:
                    answer = future.result()
                except BaseException as e:
                    done += self._lost_locked(i, slot, seqs, e)
                    continue
                slot.pid = answer[0]
                if answer[2] == _INITFAIL:
                    out.append((_pool._CTRL, _pool._C_INITFAIL, i, answer[3], answer[0]))
                    continue
                elapsed = answer[1]
                if elapsed < _BATCH_TIME:
                    slot.take = min(slot.take * 2, _TAKE_MAX)
                elif elapsed > 2 * _BATCH_TIME and slot.take > 1:
                    slot.take //= 2
                out.extend(answer[2])
                if slot.retiring and slot.calls == 0 and self.slots[i] is slot:
                    self._replace_locked(i)
        self._complete(done)
        if kill:
            self._kill_all()
        return out

    def _lost_locked(self, i, slot, seqs, error):
        """A call failed: its actor is gone (or unusable). Its tasks without
        a result fail with WorkerLostError; the actor is replaced."""
        if self.terminated:
            return []
        pid = slot.pid
        where = f"pid {pid}" if pid else "its process"
        lines = str(error).strip().splitlines()
        why = f"{type(error).__name__}: {lines[0][:300]}" if lines else type(error).__name__
        what = f"a worker of the pool (Ray actor, {where}) was lost ({why})"
        done = []
        for seq in seqs:
            entry = self.inflight.pop(seq, None)
            if entry is None:
                continue
            err = _pool.WorkerLostError(f"{what} while it held this task; a new worker "
                                        "took its place", pid, None)
            err.__cause__ = error
            if entry[0]._set(entry[1], False, err):
                done.append(entry[0])
        if self.slots[i] is slot:
            self._replace_locked(i)
        return done

    # ------------------------------------------------------ the handler

    def _reap(self):
        # Deaths come back as failed calls (_get_results); nothing to poll.
        pass

    def _maybe_shut_locked(self):
        if self.state != CLOSE or self.shut or self.feeders or self.backlog:
            return
        self.shut = True

    def _all_procs_locked(self):
        return []

    def _kill_all(self):
        with self.lock:
            slots = [s for s in self.slots if s is not None]
        for s in slots:
            self._kill_actor(s.actor)

    def _finished(self):
        with self.lock:
            if self.terminated:
                return True
            if self.state == RUN and self.broken is None:
                return False
            return not (self.jobs or self.feeders or self.backlog or self.calls)

    def _loop(self):
        super()._loop()
        # Closed and every job done (or terminated): the actors go.
        self._kill_all()

    # ------------------------------------------------------ ending

    def terminate(self):
        if os.getpid() != self.owner:
            return
        with self.lock:
            done = self._start_terminating_locked()
            if done is None:
                return
            self.calls.clear()
        self._complete(done)
        if getattr(self, "slots", None) is not None:
            self._kill_all()
            with self.lock:
                self.slots = [None] * len(self.slots)
                del self.pool_list[:]
        self.wake()
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(_pool._JOIN_WAIT)
        self.release()

    def join(self):
        thread = self.thread
        if thread is not None and thread is not threading.current_thread():
            _pool._interruptible(self, thread.join)
        self.release()

    def release(self):
        thread = self.thread
        if thread is not None and thread.is_alive():
            return
        with self.lock:
            if self.released:
                return
            self.released = True
            del self.pool_list[:]
        if getattr(self, "ray", None) is not None:
            _runtime.release()
