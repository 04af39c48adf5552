"""The awaitable face of mpx's queues (get_async, put_async, get_many_async,
``async for``) and pipe ends (recv_async, send_async, poll_async), and the
wake-up of coroutines awaiting Pool results, without a thread per waiting
coroutine.

Facts this module is built on
-----------------------------
Descriptors. Most queues have a descriptor that is readable while an item
(or a shutdown) waits: the shm ring's bell (``_reader.fileno()``, see
``backends/shm/watch``), the pipe of the pipe backend, a POSIX message
queue's own descriptor (pollable on Linux). A waiting coroutine registers
it with its running loop. One registration per (loop, queue) serves every
coroutine of that loop waiting on it; they are woken one at a time, in the
order they came, since the descriptor is level-triggered: while it stays
readable, the loop calls again and the next waiter wakes. The loop gets a
duplicate of the descriptor, closed when the last waiter leaves, so a queue
closed while coroutines wait cannot leave the loop holding a closed (or
reused) descriptor number.

No descriptor. A SysV queue has none. One helper thread per process then
looks at every queue that coroutines wait on (its kernel count) and wakes
them; it looks every millisecond at first, backing off to every 20 ms while
nothing comes, and sleeps when nobody waits.

The shm queues' bell is made exact (settled) when a wait begins, not after
every take, so awaiting a queue leaves its compiled get on the fast path.

Pipe and FIFO ends. A message is a length header and data on a byte
stream, so recv_async and send_async move it whole without blocking the
loop: a reader and a writer of one large message in the same loop would
otherwise wait for each other for ever. They read and write through a
description of their own (a socket with MSG_DONTWAIT, a pipe reopened
through /proc with O_NONBLOCK), since setting O_NONBLOCK on the shared one
would change it for every other process using it.

Room. No backend has a descriptor that says "a put would not wait", so a
put_async on a full queue retries with a backoff (0.2 ms doubling to 10 ms).

Spinning. A wake-up through the loop costs a cross-process kernel wake
(tens of microseconds on a virtual machine) plus a turn of the loop, so a
coroutine's first look lets the object wait up to 50 us in place (the shm
ring spins, then sleeps, as a blocking get does) before it registers with
the loop, if no coroutine of this process waits on that object already
(1,000 waiters must not each hold the loop for 50 us). This holds the loop
for at most that long; backends without such a wait skip it. The first
look does not raise queue.Empty when it finds nothing (``_aio_get_or``):
raising costs about a microsecond, as much as the rest of an awaited get.

Waits are cut into slices of at most half a second, after which the
coroutine looks at the queue again: a queue closed by another thread of
this process then raises its "closed" error in the waiting coroutine.

Cancellation loses nothing. Between awaits, a take or a put is one
non-blocking call; awaits only wait. A cancelled get_async has taken
nothing, a cancelled put_async has put nothing, and ``asyncio.wait_for``
timeouts behave the same.
"""

import collections
import errno
import os
import queue as _queue
import socket
import stat
import threading
import time
import weakref

from ._timeouts import seconds as _seconds
from ._exceptions import ShutDown

__all__ = ["AsyncIterMixin", "AsyncQueueMixin", "AsyncConnectionMixin"]

_SLICE = 0.5              # longest wait before looking at the object again
_SPIN = 50e-6             # how long the first waiter may look before sleeping
_PUT_BACKOFF = (0.0002, 0.01)
_NOTHING = object()       # what _aio_get_or returns when there is no item
_POLL_BACKOFF = (0.001, 0.02)


# ------------------------------------------------------------ descriptors

class _FdWaiters:
    """The coroutines of one loop waiting for one object's descriptor."""

    def __init__(self, registry, key, loop, fd):
        self.registry = registry
        self.key = key
        self.loop = loop
        self.fd = os.dup(fd)
        self.waiters = collections.deque()
        self.armed = False

    def add(self):
        fut = self.loop.create_future()
        self.waiters.append(fut)
        self._arm()
        return fut

    def _arm(self):
        if self.waiters and not self.armed:
            self.loop.add_reader(self.fd, self._readable)
            self.armed = True

    def _disarm(self):
        if self.armed:
            self.loop.remove_reader(self.fd)
            self.armed = False

    def _readable(self):
        waiters = self.waiters
        while waiters:
            fut = waiters.popleft()
            if not fut.done():
                fut.set_result(None)
                break
        if not waiters:
            # Nobody left to wake: stop watching (a readable descriptor
            # would otherwise call us on every turn of the loop).
            self._disarm()

    def discard(self, fut):
        """`fut`'s coroutine stopped waiting (woken, timed out, cancelled)."""
        try:
            self.waiters.remove(fut)
        except ValueError:
            pass
        if self.waiters:
            self._arm()        # a woken waiter that was cancelled passes it on
            return
        self._disarm()
        del self.registry[self.key]
        with _waited_lock:
            if _waited[self.key] == 1:
                del _waited[self.key]
            else:
                _waited[self.key] -= 1
        os.close(self.fd)


# loop -> {id(object): _FdWaiters}; an entry lives while coroutines wait, and
# they hold the object, so its id cannot be reused meanwhile.
_fd_waiters = weakref.WeakKeyDictionary()
# id(object) -> how many loops have such an entry (what _nobody_waits reads;
# loops of several threads change it, under the lock).
_waited = {}
_waited_lock = threading.Lock()


async def _wait_fd(obj, fd, timeout):
    """Wait until `fd` is readable or `timeout` seconds pass."""
    import asyncio     # (here: importing asyncio costs ~15 ms, and most users never await)
    loop = asyncio.get_running_loop()
    registry = _fd_waiters.setdefault(loop, {})
    key = id(obj)
    group = registry.get(key)
    if group is None:
        group = registry[key] = _FdWaiters(registry, key, loop, fd)
        fut = group.add()            # (raises if the loop cannot watch fds)
        with _waited_lock:
            _waited[key] = _waited.get(key, 0) + 1
    else:
        fut = group.add()
    await _until_woken(loop, fut, timeout, group.discard)


async def _until_woken(loop, fut, timeout, leave):
    """Await `fut` for at most `timeout` seconds, then call leave(fut)."""
    timer = loop.call_later(timeout, _wake, fut)
    try:
        await fut
    finally:
        timer.cancel()
        leave(fut)


def _wake(fut):
    if not fut.done():
        fut.set_result(None)


# ------------------------------------------------------------ no descriptor

class _Poller:
    """One thread per process that wakes coroutines waiting on objects with
    no descriptor, by asking each object ``_aio_ready()``."""

    def __init__(self):
        self.cond = threading.Condition()
        self.waiters = []                  # (object, loop, future)
        self.pid = os.getpid()
        self.thread = threading.Thread(target=self._run, name="mpx-aio-poller", daemon=True)
        self.thread.start()

    def add(self, obj, loop, fut):
        with self.cond:
            self.waiters.append((obj, loop, fut))
            self.cond.notify()

    def discard(self, fut):
        with self.cond:
            self.waiters = [w for w in self.waiters if w[2] is not fut]

    def _run(self):
        low, high = _POLL_BACKOFF
        interval = low
        while True:
            with self.cond:
                while not self.waiters:
                    interval = low
                    self.cond.wait()
                waiters = list(self.waiters)
            woke = False
            for obj, loop, fut in waiters:
                try:
                    ready = obj._aio_ready()
                except Exception:
                    ready = True           # let the coroutine see the error
                if ready:
                    woke = True
                    self.discard(fut)
                    try:
                        loop.call_soon_threadsafe(_wake, fut)
                    except RuntimeError:
                        pass               # its loop is closed
            # (Drop the references before sleeping: an anonymous queue is
            # released when collected, and this thread must not hold it.)
            waiters = obj = loop = fut = None
            interval = low if woke else min(high, interval * 2)
            time.sleep(interval)


_poller = None
_poller_lock = threading.Lock()


def _get_poller():
    global _poller
    with _poller_lock:
        if _poller is None or _poller.pid != os.getpid():
            _poller = _Poller()
        return _poller


async def _wait_polled(obj, timeout):
    import asyncio
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    poller = _get_poller()
    poller.add(obj, loop, fut)
    await _until_woken(loop, fut, timeout, poller.discard)


def _nobody_waits(obj):
    """True when no coroutine of this process waits on `obj`'s descriptor:
    the caller may then hold its loop for a short wait in place."""
    return id(obj) not in _waited


async def _wait_readable(obj, timeout):
    fd = obj._aio_fd()
    if fd is None:
        await _wait_polled(obj, timeout)
    else:
        await _wait_fd(obj, fd, timeout)


# ------------------------------------------------------------ other threads

# Objects completed by a thread of this process (mpx.pool's results, by its
# handler thread) keep a list of (loop, future) of the coroutines waiting.

async def wait_until(waiters, ready):
    """Wait, without blocking the running loop, until `ready()` is true;
    `waiters` is the object's list that wake_all() is called with."""
    import asyncio
    loop = asyncio.get_running_loop()
    while not ready():
        fut = loop.create_future()
        entry = (loop, fut)
        waiters.append(entry)
        try:
            if ready():               # it came while we registered
                return
            await fut
        finally:
            try:
                waiters.remove(entry)
            except ValueError:
                pass


def wake_all(waiters):
    """Wake every coroutine in `waiters` (from any thread)."""
    for loop, fut in list(waiters):
        try:
            loop.call_soon_threadsafe(_wake, fut)
        except RuntimeError:
            pass                      # its loop is closed


# ------------------------------------------------------------ the queues

def _deadline(timeout):
    wait = _seconds(timeout)
    return None if wait is None else time.monotonic() + max(0.0, wait)


def _left(deadline):
    if deadline is None:
        return _SLICE
    return min(_SLICE, deadline - time.monotonic())


class AsyncIterMixin:
    """``async for item in q`` for a queue class with ``get_async``: it ends
    when the queue is shut down (every item taken) or closed in this
    process."""

    def __aiter__(self):
        return self._aio_items()

    async def _aio_items(self):
        while True:
            try:
                yield await self.get_async()
            except ShutDown:
                return
            except (ValueError, OSError):
                if self._aio_closed():
                    return
                raise

    def _aio_closed(self):
        return bool(getattr(self, "_closed", False))


class AsyncQueueMixin(AsyncIterMixin):
    """get_async, put_async, get_many_async and ``async for`` for a queue
    class. The class provides ``_aio_get()`` (take one item now or raise
    queue.Empty), ``_aio_put(obj, **kw)`` (put now or raise queue.Full),
    ``_aio_fd()`` (a descriptor readable while an item may be there, or
    None) and, with no descriptor, ``_aio_ready()``."""

    def _aio_get(self):
        return self.get_nowait()

    def _aio_put(self, obj, **kwargs):
        if kwargs:
            return self.put_nowait(obj, **kwargs)
        return self.put_nowait(obj)

    def _aio_get_or(self, default):
        """Take one item now, or return `default` (backends that can look
        without raising queue.Empty override it)."""
        try:
            return self._aio_get()
        except _queue.Empty:
            return default

    def _aio_ready(self):
        return not self.empty()

    async def get_async(self, timeout=None):
        """``get()`` for coroutines: the next item, waiting without blocking
        the event loop; queue.Empty once `timeout` seconds pass (None: wait
        for ever). Cancelled, it has taken nothing."""
        deadline = None if timeout is None else _deadline(timeout)
        try:
            # (Empty still comes from a watched queue's general path, or
            # when another consumer took the item between look and take.)
            item = self._aio_get_or(_NOTHING)
        except _queue.Empty:
            item = _NOTHING
        if item is not _NOTHING:
            return item
        if _nobody_waits(self):
            # The short wait in place (see the module's notes).
            try:
                spin = _SPIN if deadline is None else min(_left(deadline), _SPIN)
                return self._aio_get_in_place(spin)
            except _queue.Empty:
                pass
        while True:
            left = _left(deadline)
            if left <= 0:
                raise _queue.Empty
            await _wait_readable(self, left)
            try:
                return self._aio_get()
            except _queue.Empty:
                pass

    def _aio_get_in_place(self, seconds):
        """A blocking get of at most `seconds` (it holds the loop): backends
        whose wait spins before it sleeps override it; others do not wait."""
        return self._aio_get()

    async def get_many_async(self, max_items=None, timeout=None):
        """``get_many()`` for coroutines: waits like get_async for the first
        item, then takes what else is there, up to `max_items`."""
        items = [await self.get_async(timeout)]
        while max_items is None or len(items) < max_items:
            try:
                items.append(self._aio_get())
            except _queue.Empty:
                break
        return items

    async def put_async(self, obj, timeout=None, **kwargs):
        """``put()`` for coroutines: waits (without blocking the event loop)
        while the queue is full; queue.Full once `timeout` seconds pass.
        Cancelled, it has put nothing. An object that cannot be serialized
        raises at once."""
        try:
            return self._aio_put(obj, **kwargs) if kwargs else self._aio_put(obj)
        except _queue.Full:
            pass
        await retry_while_full(lambda: self._aio_put(obj, **kwargs), _queue.Full,
                               _deadline(timeout))

# ------------------------------------------------------------ connections

class AsyncConnectionMixin:
    """recv_async, send_async and poll_async for a Connection class with a
    ``fileno()`` that is readable while a message (or EOF) waits. The class
    provides ``_aio_send(obj)``, a coroutine. As with recv() and send(),
    one coroutine at a time per end and direction."""

    async def poll_async(self, timeout=0.0):
        """``poll()`` for coroutines: whether a message (or EOF) is waiting,
        waiting up to `timeout` seconds (None: until there is) without
        blocking the event loop."""
        deadline = _deadline(timeout)
        while True:
            if self.poll(0):
                return True
            left = _left(deadline)
            if left <= 0:
                return False
            await _wait_fd(self, self.fileno(), left)

    async def recv_async(self):
        """``recv()`` for coroutines: the next message, waiting without
        blocking the event loop; EOFError once the other end is gone.
        Cancelled while it waits, it has taken nothing."""
        # The first look is the short wait in place, as in get_async.
        ready = self.poll(_SPIN if _nobody_waits(self) else 0)
        while not ready:
            await _wait_fd(self, self.fileno(), _SLICE)
            ready = self.poll(0)
        return self.recv()

    async def send_async(self, obj):
        """``send()`` for coroutines: waits for room without blocking the
        event loop. An object that cannot be serialized raises at once;
        cancelled, it has sent nothing or (once its first bytes went) the
        whole message."""
        await self._aio_send(obj)


async def write_frame(fd, parts):
    """Write the byte strings `parts` (together, one whole message of a
    byte stream) to the pipe, FIFO or socket `fd` without blocking the loop.
    Once the first bytes are written, the rest is written even if the
    caller is cancelled (half a message would corrupt the stream)."""
    import asyncio
    views = collections.deque(memoryview(p).cast("B") for p in parts)
    writer = _NonBlockingIO(fd, os.O_WRONLY)
    try:
        while True:
            n = writer.write(views[0])
            if n:
                break
            await _wait_io(writer.fd, writable=True)
        _consume(views, n)
        if views:
            done = asyncio.ensure_future(_write_rest(writer, views))
            writer = None            # _write_rest closes it
            await asyncio.shield(done)
    finally:
        if writer is not None:
            writer.close()


def _consume(views, n):
    views[0] = views[0][n:]
    if not len(views[0]):
        views.popleft()


async def _write_rest(writer, views):
    try:
        while views:
            n = writer.write(views[0])
            if n:
                _consume(views, n)
            else:
                await _wait_io(writer.fd, writable=True)
    finally:
        writer.close()


async def read_frame(fd, stash):
    """Read one whole message of the stdlib's framing (a 4-byte length, -1
    then an 8-byte length for huge ones, then the data) from the pipe, FIFO
    or socket `fd` without blocking the loop, and append it to `stash` (a
    deque) as (True, io.BytesIO of the data), or (False, error). Once the
    first bytes are read, the rest is read and stashed even if the caller
    is cancelled, so the next recv() returns that message."""
    import asyncio
    reader = _NonBlockingIO(fd, os.O_RDONLY)
    try:
        while True:
            head = reader.read(4)
            if head is None:
                await _wait_io(reader.fd, writable=False)
                continue
            if not head:
                raise EOFError
            break
        task = asyncio.ensure_future(_read_rest(reader, head, stash))
        reader = None                # _read_rest closes it
        await asyncio.shield(task)
    finally:
        if reader is not None:
            reader.close()


async def _read_rest(reader, head, stash):
    import io
    import struct
    try:
        try:
            head = await _read_exactly(reader, head, 4)
            size, = struct.unpack("!i", head)
            if size == -1:
                size, = struct.unpack("!Q", await _read_exactly(reader, b"", 8))
            data = await _read_exactly(reader, b"", size)
        except EOFError:
            stash.append((False, OSError("got end of file during message")))
        except Exception as e:
            stash.append((False, e))
        else:
            stash.append((True, io.BytesIO(data)))
    finally:
        reader.close()


async def _read_exactly(reader, got, n):
    parts = [got]
    have = len(got)
    while have < n:
        chunk = reader.read(n - have)
        if chunk is None:
            await _wait_io(reader.fd, writable=False)
        elif not chunk:
            raise EOFError
        else:
            parts.append(chunk)
            have += len(chunk)
    return b"".join(parts)


class _NonBlockingIO:
    """Non-blocking reads or writes on a descriptor that other processes may
    be using in blocking mode (setting O_NONBLOCK on it would change it for
    them too): a socket is used with MSG_DONTWAIT; a pipe or FIFO is opened
    again through /proc, a description of its own that may be non-blocking."""

    def __init__(self, fd, mode):
        if stat.S_ISSOCK(os.fstat(fd).st_mode):
            self.sock = socket.socket(fileno=os.dup(fd))
            self.fd = self.sock.fileno()
        else:
            self.sock = None
            self.fd = os.open(f"/proc/self/fd/{fd}", mode | os.O_NONBLOCK | os.O_CLOEXEC)

    def read(self, n):
        """Up to `n` bytes read now; b"" at end of file; None when nothing
        is there yet."""
        try:
            if self.sock is not None:
                return self.sock.recv(n, socket.MSG_DONTWAIT)
            return os.read(self.fd, n)
        except BlockingIOError:
            return None

    def write(self, view):
        """Bytes written now (0 when the descriptor is full)."""
        try:
            if self.sock is not None:
                return self.sock.send(view, socket.MSG_DONTWAIT)
            return os.write(self.fd, view)
        except BlockingIOError:
            return 0
        except OSError as e:
            if e.errno == errno.EPIPE:
                raise BrokenPipeError(errno.EPIPE, "the other end of the pipe is closed") from None
            raise

    def close(self):
        if self.sock is not None:
            self.sock.close()
        else:
            os.close(self.fd)


async def _wait_io(fd, writable):
    """Wait (at most a slice) until our own descriptor `fd` is readable or
    writable."""
    import asyncio
    loop = asyncio.get_running_loop()
    fut = loop.create_future()
    if writable:
        loop.add_writer(fd, _wake, fut)
        await _until_woken(loop, fut, _SLICE, lambda _: loop.remove_writer(fd))
    else:
        loop.add_reader(fd, _wake, fut)
        await _until_woken(loop, fut, _SLICE, lambda _: loop.remove_reader(fd))


async def retry_while_full(put, full, deadline=None, check=None):
    """Call `put()` until it does not raise `full` (no backend has a
    descriptor for "room"), sleeping with the put backoff in between;
    after a miss, `check()` may raise (waiting is pointless), and past
    `deadline` (time.monotonic) queue.Full is raised."""
    import asyncio
    delay, most = _PUT_BACKOFF
    while True:
        try:
            return put()
        except full:
            if check is not None:
                check()
        left = _left(deadline)
        if left <= 0:
            raise _queue.Full
        await asyncio.sleep(min(delay, left))
        delay = min(most, delay * 2)
