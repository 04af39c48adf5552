"""A descriptor that tells whether an shm queue holds a message.

Not a backend: the shm queues' ``_reader.fileno()``, for
``multiprocessing.connection.wait``, ``select`` and ``selectors`` (the
stdlib's ``concurrent.futures.ProcessPoolExecutor`` waits on its
``mp_context.SimpleQueue()._reader`` that way, then calls its ``recv()``).

The bell (the shm Pipe's, see ``channel``'s module docstring)
    Every queue is made with an eventfd "bell" that goes wherever the
    queue's descriptor goes when a process starts (inherited by fork, passed
    to spawn and forkserver children with the ring) and is owned by the
    ring (``Ring.bell_fd``, closed with it). A reader that hands out
    ``fileno()`` arms aux word ARMED; a put that publishes while it is armed
    rings the bell in the ring's compiled code before put returns (so a
    worker that puts its last result and exits has rung before its sentinel
    fires), with the channel's protocol: one writer per arming, and a ring
    the reader was quicker than is taken back, so the bell never says
    "readable" over a ring this reader emptied. After each take or empty
    look, the reader settles: clear the bell, arm, look at the ring again,
    ring if something is there.

Holders without the bell
    A queue reopened through ``/proc/<pid>/fd/<n>`` (sent after a process
    started) or opened by name by another process has no bell: an eventfd
    cannot be reopened that way (the kernel refuses with ENXIO). Such a
    holder adds one to aux word NOBELL and wakes it. A watching process
    keeps a thread that sleeps on that word; once it is non-zero (or if
    this process itself lacks the bell) the thread sleeps on the ring as a
    consumer would instead (a second mapping that never spins), without
    taking anything, and rings the bell when the ring is readable::

        watcher:  loop: wait until the ring is readable or shut down
                        ring(bell); rung = True
                        read(rearm)           # sleep until asked to look again
        settle:   if rung and the ring is empty:
                        rung = False; clear(bell); write(rearm)

    A bell-less writer's put is seen at once, but can be rung after its
    process exits (the stdlib's executor would then see a dead worker
    first); and a watcher can ring over a ring this process emptied in
    between (a spurious "readable", as two readers of one pipe have). Both
    only with such holders.

    A shut-down ring counts as readable (get() raises ShutDown at once), as
    a pipe whose writers are gone is readable (recv() raises EOFError).

Life cycle
    Made on the first ``fileno()`` of a process (a forked child makes its
    own: the thread does not survive fork). ``stop()`` (the queue's close,
    or the queue being collected) wakes the thread, which closes its
    descriptors on its way out: nothing is closed under a thread still
    waiting on it.
"""

import os
import threading

__all__ = ["Watch"]


# Aux words of a queue's ring.
ARMED = 0      # IDLE / ARMED / RUNG, as a channel's (see channel.py)
NOBELL = 1     # how many holders ever opened the queue without its bell
IDLE, ARMED_, RUNG = 0, 1, 2


def _clear(fd):
    try:
        os.eventfd_read(fd)
    except BlockingIOError:
        pass


def ring_the_bell(fd):
    try:
        os.eventfd_write(fd, 1)
    except BlockingIOError:
        pass


def arm_queue(ring, bell):
    """Give a queue's ring its bell (the ring owns it from now on): puts
    ring it while a reader has it armed."""
    ring.bell_fd = bell
    ring.bell_aux, ring.bell_value = ARMED, ARMED_


def new_bell():
    return os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)


def note_bellless(ring):
    """This process holds the queue without its bell: watchers must watch
    the ring itself from now on."""
    ring.aux_add(NOBELL, 1)
    ring.aux_wake(NOBELL)


def _arm(ring):
    s = ring.aux_load(ARMED)
    while not ring.aux_cas(ARMED, s, ARMED_):
        s = ring.aux_load(ARMED)


class Watch:
    """The watcher of one queue in this process (see the module docstring).
    `attach(fd)` maps the ring a second time for the thread."""

    def __init__(self, ring, attach):
        self.pid = os.getpid()
        self.rung = False
        self._stopping = False
        self._ring = ring
        self._shared = ring.bell_fd >= 0
        self._own = None
        self._rearm = os.eventfd(0, os.EFD_CLOEXEC)
        # Our own bell where this process lacks the queue's (closed by the
        # thread); the queue's otherwise (closed by the ring).
        self.bell = ring.bell_fd if self._shared else new_bell()
        try:
            self._own = attach(os.dup(ring.fd))
            self._own.spin_max_ns = 0      # sleep at once; never spin a core
            self._thread = threading.Thread(target=self._run, daemon=True,
                                            name=f"mpx-queue-watch-{self.bell}")
            self._thread.start()
        except BaseException:
            if self._own is not None:
                self._own.close()
            os.close(self._rearm)
            if not self._shared:
                os.close(self.bell)
            raise
        self.settle()

    def _run(self):
        own, bell, rearm = self._own, self.bell, self._rearm
        try:
            while not self._stopping:
                if self._shared and own.aux_load(NOBELL) == 0:
                    # Every holder rings the bell itself: sleep until one
                    # without it appears (or stop() closes the ring).
                    own.aux_wait(NOBELL, 0)
                    continue
                own.wait_readable(None)
                if self._stopping:
                    break
                ring_the_bell(bell)
                self.rung = True
                os.eventfd_read(rearm)
        except Exception:
            # The ring was closed under the wait (stop()): nothing to watch.
            # Never leave a waiter asleep: its recv() reports the closed queue.
            if not self._stopping:
                try:
                    ring_the_bell(bell)
                except OSError:
                    pass
        finally:
            try:
                own.close()
            except Exception:
                pass
            os.close(rearm)
            if not self._shared:
                os.close(bell)

    def settle(self):
        """After a take or an empty look in this process: make the bell say
        whether the ring has something, and re-arm."""
        if self._stopping:
            return
        ring = self._ring
        try:
            if self._shared:
                _clear(self.bell)
                _arm(ring)
                if ring.wait_readable(0):
                    ring_the_bell(self.bell)
                    return
            if self.rung and not ring.wait_readable(0):
                self.rung = False
                _clear(self.bell)
                os.eventfd_write(self._rearm, 1)
        except (ValueError, OSError):
            pass            # closed meanwhile

    def stop(self):
        """End the watcher (idempotent; from any thread of this process)."""
        if self._stopping or self.pid != os.getpid():
            return
        self._stopping = True
        try:
            self._own.close()           # wakes a wait in the ring
        except Exception:
            pass
        try:
            os.eventfd_write(self._rearm, 1)    # wakes a wait for a rearm
        except OSError:
            pass

    def forget(self):
        """In a forked child: the thread is not here; close our copies of
        what only the watcher owns, without touching the parent's ring."""
        self._stopping = True
        fds = [self._rearm] + ([] if self._shared else [self.bell])
        for fd in fds:
            try:
                os.close(fd)
            except OSError:
                pass
        try:
            self._own.close()
        except Exception:
            pass
