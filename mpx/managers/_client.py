"""The client side: one _Peer per (process, manager), the connection each
process keeps to each manager it talks to, and what happens to it at fork
and exit.

(A part of mpx.managers: see its docstring.)
"""

import atexit
import collections
import os
import pickle
import queue
import threading
import weakref
from multiprocessing import process, util

from .. import _serial
from ._common import _CONNECT_TIMEOUT, _ERROR, _RETURN, _raise_reply, _transport

# --------------------------------------------------------------------------
# Client side: one _Peer per (process, manager)
# --------------------------------------------------------------------------

_peers = {}          # (backend, address) -> _Peer of this process
_authkeys = {}       # (backend, address) -> authkey known to this process
_client_opts = {}    # (backend, address) -> transport options (TLS) for clients
_fork_snapshot = None
_exit_hook_pid = None
_generation = [0]    # bumped in a forked child: proxies re-look-up their peer


def _count_down(counts, key):
    """Take one from counts[key] (dropping the key at zero): False, changing
    nothing, when there was none to take."""
    n = counts.get(key, 0)
    if not n:
        return False
    if n == 1:
        del counts[key]
    else:
        counts[key] = n - 1
    return True


class _Peer:
    """This process's link to one manager server.

    ``call_conn()`` gives each thread its own connection for calls (a call
    may block in the server, e.g. ``Lock.acquire``). Reference bookkeeping
    goes over one extra "session" connection, written only under ``lock``
    (by a flusher thread, or by a thread asking for a transit reference).
    Bookkeeping ops wait in ``ops``, a deque, whose ``append`` is safe from
    ``__del__`` at any moment; ``wake`` (a ``queue.SimpleQueue``, whose
    ``put`` is reentrant) tells the flusher there is work. Ops are only ever
    taken out of ``ops`` under ``lock``, so they are applied in the order
    they were posted. The server ties this process's references to the
    session and drops them all when the session's connections close (the
    process exited or died).
    """

    def __init__(self, key, authkey, opts):
        self.key = key
        self.backend, self.address = key
        self.authkey = bytes(authkey)
        self.opts = dict(opts or {})
        self.pid = os.getpid()
        self.session = os.urandom(16)
        self.tls = threading.local()
        self.lock = threading.Lock()
        self.ops = collections.deque()
        self.wake = queue.SimpleQueue()
        self.handles = {}     # ident -> number of owning proxies here
        self.pending = {}     # ident -> refs taken but not yet given to a proxy
        self.ref_conn = None
        self.flusher = None
        self.broken = None    # reason the session connection failed
        # Every open connection, to close on shutdown; weak, so that the
        # connection of a thread that ended is closed with its thread.
        self.all_conns = weakref.WeakSet()
        self.closed = False

    # -- connections ------------------------------------------------------
    def _connect(self, kind):
        name, module = _transport(self.backend)
        util.debug("making connection to manager")
        conn = module.connect(self.address, self.authkey, timeout=_CONNECT_TIMEOUT,
                              **self.opts)
        try:
            who = f"{process.current_process().name}|{threading.current_thread().name}"
            conn.send(pickle.dumps((None, "hello", (self.session, kind, os.getpid(), who), {}),
                                   _serial.PROTOCOL))
            _check_reply(pickle.loads(conn.recv()))
        except BaseException:
            conn.close()
            raise
        self.all_conns.add(conn)
        return conn

    def call_conn(self):
        conn = getattr(self.tls, "conn", None)
        if conn is None:
            if self.closed:
                raise ConnectionError(f"the manager at {self.address!r} has been shut down")
            # The session connection must exist before this thread's
            # connection can hold references (if it were alone and its
            # thread ended, the server would drop the process's refs).
            self.ensure_session()
            conn = self._connect("call")
            self.tls.conn = conn
        return conn

    def drop_call_conn(self, conn):
        """Forget a connection whose request/reply stream is out of step."""
        if getattr(self.tls, "conn", None) is conn:
            self.tls.conn = None
        conn.close()

    def ensure_session(self):
        if self.ref_conn is not None and self.flusher is not None:
            return
        with self.lock:
            self._ensure_session_locked()

    def _ensure_session_locked(self):
        if self.ref_conn is None:
            self.ref_conn = self._connect("session")
            _ensure_exit_hook()
        if self.flusher is None:
            t = threading.Thread(target=self._flusher_main, daemon=True,
                                 name=f"mpx-manager-refs-{self.address}")
            self.flusher = t
            t.start()

    # -- reference bookkeeping (only under self.lock) ---------------------
    def post(self, op):
        """Queue a bookkeeping op; safe from __del__ and any thread."""
        self.ops.append(op)
        self.wake.put(True)

    def _apply(self, op, out):
        kind, ident, tid = op
        handles, pending = self.handles, self.pending
        count = handles.get(ident, 0)
        if kind == "acquire":          # a proxy now owns one count
            util.debug("INCREF %r", ident)
            if not _count_down(pending, ident):
                handles[ident] = count + 1
                if count == 0:
                    out.append(("incref", ident, None))
        elif kind == "adopt":          # the server gave this session a ref
            handles[ident] = count + 1
            pending[ident] = pending.get(ident, 0) + 1
            if count:
                out.append(("decref", ident, None))
        elif kind == "expect":         # a pickled proxy arrived with transit tid
            handles[ident] = count + 1
            pending[ident] = pending.get(ident, 0) + 1
            out.append(("drop" if count else "claim", ident, tid))
        elif kind == "release":        # an owning proxy is gone
            util.debug("DECREF %r", ident)
            if count > 1:
                handles[ident] = count - 1
            elif count == 1:
                del handles[ident]
                out.append(("decref", ident, None))
        elif kind == "inherit":        # (fork) parent pinned it with transit tid
            handles[ident] = count + tid[1]
            if tid[2]:
                pending[ident] = pending.get(ident, 0) + tid[2]
            out.append(("drop" if count else "claim", ident, tid[0]))

    def _drain_locked(self, out):
        pop = self.ops.popleft
        while True:
            try:
                op = pop()
            except IndexError:
                return
            self._apply(op, out)

    def _send_refs_locked(self, out):
        if not out or self.broken:
            return
        try:
            self.ref_conn.send(pickle.dumps((None, "refs", (out,), {}), _serial.PROTOCOL))
        except Exception as e:
            self.broken = f"lost the connection to the manager: {e!r}"
            util.debug("mpx manager client: %s", self.broken)

    def _flusher_main(self):
        get = self.wake.get
        while get():
            with self.lock:
                if self.closed or self.pid != os.getpid():
                    return
                out = []
                self._drain_locked(out)
                self._send_refs_locked(out)

    def transit(self, idents):
        """Ask the server for one transit reference per ident; returns the
        transit ids (None where the referent no longer exists)."""
        with self.lock:
            return self._transit_locked(idents)

    def _transit_locked(self, idents):
        if self.closed:
            raise ConnectionError(f"the manager at {self.address!r} has been shut down")
        self._ensure_session_locked()
        out = []
        self._drain_locked(out)
        if idents is None:      # every referent this process holds
            idents = [i for i, c in self.handles.items() if c > 0]
        conn = self.ref_conn
        conn.send(pickle.dumps((None, "transit", (out, idents), {}), _serial.PROTOCOL))
        return idents, _check_reply(pickle.loads(conn.recv()))

    def pin_for_fork(self):
        """Before fork: {ident: (transit id, count, pending)} for the child."""
        if not self.handles and not self.ops:
            return {}
        with self.lock:
            idents, tids = self._transit_locked(None)
            return {i: (t, self.handles[i], self.pending.get(i, 0))
                    for i, t in zip(idents, tids) if t is not None}

    def close(self, final=False):
        """Stop the flusher and close every connection (manager shut down,
        or process exit). At exit only transit ids still matter: a
        session's own refs die with its connection anyway."""
        got = self.lock.acquire(timeout=2.0)
        try:
            out = []
            self._drain_locked(out)
            if final:
                drops = [("drop", i, t) for k, i, t in out if k in ("claim", "drop")]
                if drops and not self.broken:
                    try:
                        if self.ref_conn is None:
                            self.ref_conn = self._connect("session")
                        self._send_refs_locked(drops)
                    except Exception:
                        pass
            self.wake.put(False)      # stops the flusher
            for conn in list(self.all_conns):
                conn.close()
            self.all_conns = weakref.WeakSet()
            self.ref_conn = None
            self.closed = True
            self.broken = self.broken or "the manager connection was closed"
        finally:
            if got:
                self.lock.release()


def _peer(backend, address, authkey=None):
    key = (backend, address)
    p = _peers.get(key)
    if p is None:
        if authkey is None:
            authkey = _authkeys.get(key) or process.current_process().authkey
        p = _peers.setdefault(key, _Peer(key, authkey, _client_opts.get(key)))
    return p


def _forget_peer(key):
    p = _peers.pop(key, None)
    if p is not None and p.pid == os.getpid():
        p.close()


def _flush_all_peers():
    for p in list(_peers.values()):
        if p.pid == os.getpid():
            try:
                p.close(final=True)
            except Exception:
                pass


def _ensure_exit_hook():
    # multiprocessing clears its finalizer registry in every child it
    # starts, so the hook is registered once per process.
    global _exit_hook_pid
    if _exit_hook_pid != os.getpid():
        _exit_hook_pid = os.getpid()
        util.Finalize(None, _flush_all_peers, exitpriority=20)


atexit.register(_flush_all_peers)


def _before_fork():
    global _fork_snapshot
    snap = {}
    for key, p in list(_peers.items()):
        if p.pid != os.getpid() or p.broken or p.ref_conn is None:
            continue
        try:
            pins = p.pin_for_fork()
        except Exception:
            continue
        if pins:
            snap[key] = (p.authkey, p.opts, pins)
    _fork_snapshot = snap


def _after_fork_parent():
    global _fork_snapshot
    _fork_snapshot = None


def _after_fork_child():
    """In a forked child: the parent's connections and threads are not ours.
    Start fresh peers that own what the inherited proxies need, claiming the
    transit references the parent took for us."""
    global _fork_snapshot
    _generation[0] += 1
    _peers.clear()
    snap, _fork_snapshot = _fork_snapshot or {}, None
    for key, (authkey, opts, pins) in snap.items():
        p = _Peer(key, authkey, opts)
        for ident, (tid, count, pending) in pins.items():
            p.post(("inherit", ident, (tid, count, pending)))
        _peers[key] = p


if hasattr(os, "register_at_fork"):
    os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_parent,
                        after_in_child=_after_fork_child)


class _ClaimOnStart:
    """multiprocessing runs after-fork callbacks at the start of each child
    it forks: there the inherited claims are sent at once, so the transits
    the parent took do not wait until the child first uses a proxy."""

    def __call__(self, _obj=None):
        # multiprocessing just emptied its finalizer registry: register the
        # exit flush again if proxies were already unpickled here.
        global _exit_hook_pid
        _exit_hook_pid = None
        if _peers:
            _ensure_exit_hook()
        for p in list(_peers.values()):
            if p.pid == os.getpid() and p.ops:
                try:
                    p.ensure_session()
                except Exception:
                    pass


_claim_on_start = _ClaimOnStart()
util.register_after_fork(_claim_on_start, _ClaimOnStart.__call__)


def _check_reply(reply):
    """The result carried by a (non-proxy) reply, or raise its error."""
    if reply[0] == _RETURN:
        return reply[1]
    try:
        _raise_reply(reply[0], reply[1:] if reply[0] == _ERROR else reply[1])
    finally:
        reply = None


def _request(conn, name, args=(), kwds={}, serializer=_serial.DEFAULT_SERIALIZER,
             timeout=None):
    """Send a control request on `conn` and return its result."""
    conn.send(serializer.dumps((None, name, args, kwds)))
    return _check_reply(pickle.loads(conn.recv(False, timeout)))


def _oneshot(backend, address, authkey, name, args=(), kwds={}, opts=None,
             timeout=_CONNECT_TIMEOUT):
    """Open a connection, make one control request (bounded by `timeout`
    seconds), close."""
    _, module = _transport(backend)
    conn = module.connect(address, authkey, timeout=timeout, **(opts or {}))
    try:
        return _request(conn, name, args, kwds, timeout=timeout)
    finally:
        conn.close()
