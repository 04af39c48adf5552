"""Managers: objects living in a server process, used from others via proxies.

This is ``multiprocessing.managers`` with the same public API
(``BaseManager``, ``SyncManager``, ``BaseProxy``, ``Token``, ``register``,
``start``, ``connect``, ``get_server().serve_forever()``, ``shutdown``,
``address``, the proxy types, ``MakeProxyType``, ``AutoProxy``), rebuilt on
mpx's transports (``backend="unix"``, ``"tcp"``, ``"shm"``) and serializer, and
fixing the stdlib's known faults:

* Speed: one framed request and one reply per call, plain pickle protocol 5,
  a single ``recv`` per frame, and (when a core is free) a short spin before
  sleeping; no per-call ForkingPickler, no new connection per incref/decref.
* Safety: both ends prove they hold the authkey (HMAC challenge-response in
  both directions) before anything is unpickled; junk on the port closes only
  that connection; unix sockets are 0o600; TCP takes an ``ssl.SSLContext``.
  At most ``MAX_HANDSHAKES`` connections are in their handshake at a time
  (the oldest is cut off for a newer one), each for ``handshake_timeout``
  seconds in all, so idle or slow peers cannot exhaust the server's threads,
  and the accept loop survives anything one connection does to it.
* Lifetime: a referent is freed when the last proxy *anywhere* is gone. Each
  process holds at most one server-side reference per referent (on one
  "session" connection, released by the server when that process dies). A
  proxy that is pickled takes a *transit* reference on the server before the
  pickle exists, so the referent survives while the proxy is in flight (in a
  queue, a pipe, a spawned child's arguments, a fork) even if the sender drops
  its own proxy; the receiver claims it. A transit never claimed (a pickle
  nobody ever loads) expires after ``transit_timeout`` seconds.
* Errors: an exception raised in the server reaches the caller with its type
  and message, with the server's traceback attached as ``__cause__``. When
  a managed object's constructor fails, that exception is also a
  ``RemoteError`` (which is what the stdlib raises there), so code written
  for either catches it.
* Serialization goes through :mod:`mpx._serial` (``serializer="pickle"``
  falls back to cloudpickle; ``"cloudpickle"`` always uses it), so lambdas can
  be stored in a managed dict or given to a managed ``Pool``.

Names this module does not define come from ``multiprocessing.managers``.
"""

import atexit
import collections
import itertools
import logging
import math
import os
import pickle
import queue
import signal
import socket
import threading
import time
import traceback
import types
import weakref
from multiprocessing import AuthenticationError, connection as _mp_connection
from multiprocessing import pool as _mp_pool
from multiprocessing import process, util
from multiprocessing.context import ProcessError, get_spawning_popen
import multiprocessing
import multiprocessing.managers as _std

from .. import _serial
from .. import backends as _registry
from .._timeouts import seconds as _seconds

__all__ = ["BaseManager", "SyncManager", "BaseProxy", "Token", "Server",
           "Namespace", "Value", "Array", "RemoteError", "RemoteTraceback",
           "MakeProxyType", "AutoProxy", "RebuildProxy", "IteratorProxy",
           "AcquirerProxy", "ConditionProxy", "EventProxy", "BarrierProxy",
           "NamespaceProxy", "ValueProxy", "BaseListProxy", "ListProxy",
           "DictProxy", "ArrayProxy", "BasePoolProxy", "PoolProxy",
           "public_methods", "all_methods", "State"]

# The stdlib's server-side helper types are plain classes; mpx uses them
# as they are, so values read back with _getvalue() are the same objects.
Namespace = _std.Namespace
Value = _std.Value
Array = _std.Array
RemoteError = _std.RemoteError
State = _std.State
all_methods = _std.all_methods
public_methods = _std.public_methods

# Reply kinds.
_RETURN, _PROXY, _ERROR, _REMOTE = 0, 1, 2, 3

# Control operations a client may ask of the server (ident None).
_ONE_WAY = frozenset({"refs"})

DEFAULT_TRANSIT_TIMEOUT = 600.0
_CONNECT_TIMEOUT = 20.0
# Connections still in the handshake, at most (each has its own thread until
# it is authenticated). A peer that never authenticates costs a thread for
# up to the handshake timeout; without a bound, idle connections alone could
# exhaust the server's threads. When every place is taken, the oldest
# handshake is cut off to make room for the newest: a flood of idle peers
# then only delays a real client by the few milliseconds its own handshake
# takes, where waiting in the kernel's backlog would queue it behind the
# whole flood for their timeouts.
MAX_HANDSHAKES = 32
# How long the accept loop waits for a cut-off handshake to give its place
# back before it closes the new connection instead.
_ADMIT_WAIT = 2.0
_log = logging.getLogger("mpx")
_pickle_dumps = pickle.dumps
_pickle_loads = pickle.loads
_PROTOCOL = _serial.PROTOCOL


class RemoteTraceback(Exception):
    """The server-side traceback of an exception raised in a manager; it is
    the ``__cause__`` of the exception re-raised in the caller."""

    def __init__(self, tb):
        super().__init__(tb)
        self.tb = tb

    def __str__(self):
        return "\n\n(raised in the manager process)\n" + self.tb


class Token(_std.Token):
    """Identifies a shared object: typeid, server address, id, and the
    transport (backend) used to reach the server."""

    __slots__ = ("backend",)

    def __init__(self, typeid, address, id, backend=None):
        super().__init__(typeid, address, id)
        self.backend = backend

    def __getstate__(self):
        return (self.typeid, self.address, self.id, self.backend)

    def __setstate__(self, state):
        if len(state) == 3:
            state = tuple(state) + (None,)
        (self.typeid, self.address, self.id, self.backend) = state


# --------------------------------------------------------------------------
# Transports
# --------------------------------------------------------------------------

def _transport(backend):
    """(name, module) of the Manager transport `backend`."""
    return _registry.resolve("Manager", backend)


def _backend_for_address(address):
    if isinstance(address, (tuple, list)):
        return "tcp"
    if isinstance(address, (str, bytes)):
        return "unix"
    return None


def _hashable_address(address):
    return tuple(address) if isinstance(address, list) else address


def _manager_serializer(spec):
    """The mpx serializer for `spec`; managers read every message with
    pickle.loads, so only serializers writing pickle streams qualify."""
    ser = _serial.get_serializer(spec)
    if not isinstance(ser, _serial.PickleSerializer):
        raise ValueError(f"a manager's serializer must be 'pickle' (the default, with "
                         f"the cloudpickle fallback) or 'cloudpickle', not {spec!r}")
    return ser


def _positive_seconds(value, what, forever):
    """A manager setting in seconds: `forever` for None or infinity, else a
    number > 0 (NaN, negatives and zero are ValueErrors)."""
    if value is None:
        return forever
    given, value = value, _seconds(value, what=what)
    if value is None:
        return forever
    if value <= 0:
        raise ValueError(f"{what} must be a positive number of seconds, not {given!r}")
    return value


# --------------------------------------------------------------------------
# Errors crossing the wire
# --------------------------------------------------------------------------

def _error_reply(exc):
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return (_ERROR, exc, tb)


# A managed object's constructor that fails: the stdlib raises RemoteError
# (holding the server's traceback as text), mpx the constructor's own
# exception. What mpx raises is both, as SerializationError is both a
# PicklingError and a TypeError: an instance of a class made (once per
# exception type) from RemoteError and that type, carrying the original's
# arguments and attributes, with the server's traceback as its __cause__.
_creation_error_classes = {}


def _creation_error_class(exc_type):
    """The class ``RemoteError[<exc_type>]`` (a subclass of both), or None
    where Python cannot combine the two (a layout conflict)."""
    try:
        return _creation_error_classes[exc_type]
    except KeyError:
        pass
    name = f"RemoteError[{exc_type.__qualname__}]"
    try:
        cls = type(name, (RemoteError, exc_type), {
            "__module__": __name__, "__qualname__": name,
            "__doc__": f"A manager could not create an object: {exc_type.__qualname__} "
                       f"raised in the server (also a RemoteError, as the stdlib raises).",
            # The original's message, not RemoteError's framed first argument.
            "__str__": exc_type.__str__,
            "__reduce__": _reduce_creation_error,
            "_exc_type": exc_type,
        })
    except TypeError:
        cls = None
    return _creation_error_classes.setdefault(exc_type, cls)


def _constructor_state(exc, exc_type=None):
    """(args, attributes) that rebuild `exc`, as the pickling of its type
    (`exc_type`, default its own) sees them (an OSError's filename is among
    its arguments there, not in .args)."""
    red = (exc_type or type(exc)).__reduce__(exc)
    if isinstance(red, tuple) and len(red) >= 2 and isinstance(red[0], type) \
            and isinstance(exc, red[0]):
        return tuple(red[1]), dict(red[2] or {}) if len(red) > 2 else {}
    return exc.args, dict(vars(exc))


def _reduce_creation_error(self):
    args, state = _constructor_state(self, self._exc_type)
    return (_rebuild_creation_error, (self._exc_type, args, state))


def _rebuild_creation_error(exc_type, args, state):
    cls = _creation_error_class(exc_type) or exc_type
    # __new__ only: BaseException.__new__ keeps the arguments (OSError's
    # parses errno, strerror, filename); the type's own __init__ may want
    # other ones and has run in the server already.
    exc = cls.__new__(cls, *args)
    exc.__dict__.update(state)
    return exc


# The frames that raise a server's exception (and their callers holding the
# reply) drop their references to it on the way out: the exception's
# traceback holds those frames, and a reference back from one of them would
# keep it alive until the cycle collector runs (CPython gh-106558; its
# TestManagerExceptions checks this).

def _raise_creation_reply(kind, payload):
    """_raise_reply for the reply to a "create": an error from the server
    comes out as both RemoteError and its own type."""
    exc = both = None
    try:
        if kind == _ERROR:
            exc, tb = payload
            if isinstance(exc, BaseException) and not isinstance(exc, RemoteError):
                if _creation_error_class(type(exc)) is not None:
                    try:
                        both = _rebuild_creation_error(type(exc), *_constructor_state(exc))
                    except Exception:      # a type whose __new__ wants other arguments
                        both = None
                if both is not None:
                    raise both from RemoteTraceback(tb)
                raise RemoteError(tb) from exc
        _raise_reply(kind, payload)
    finally:
        exc = both = payload = None


def _raise_reply(kind, payload):
    exc = None
    try:
        if kind == _ERROR:
            exc, tb = payload
            if isinstance(exc, BaseException):
                exc.__cause__ = RemoteTraceback(tb)
                raise exc
            raise RemoteError(tb)
        if kind == _REMOTE:
            raise RemoteError(payload)
        raise RemoteError(f"unrecognized reply kind {kind!r} from the manager")
    finally:
        exc = payload = None


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


# --------------------------------------------------------------------------
# Server
# --------------------------------------------------------------------------

class _Session:
    __slots__ = ("conns", "refs", "pid")

    def __init__(self, pid):
        self.conns = 0
        self.refs = {}
        self.pid = pid


class _Handshake:
    """A connection in its handshake: when it was accepted, and a duplicate
    of its socket through which another thread can cut it off (shutdown
    reaches the socket whatever object wraps it meanwhile, TLS included)."""

    __slots__ = ("accepted", "handle", "cut")

    def __init__(self, handle):
        self.accepted = time.monotonic()
        self.handle = handle
        self.cut = False

    def cut_off(self):
        self.cut = True
        try:
            self.handle.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _close_quietly(sock):
    try:
        sock.close()
    except OSError:
        pass


class _RateLimited:
    """Log a recurring server trouble once per `every` seconds, with how
    many times it happened meanwhile (a flood must not flood the log too)."""

    def __init__(self, every=5.0):
        self.every = every
        self.last = {}
        self.count = collections.Counter()

    def warning(self, kind, msg, *args):
        self.count[kind] += 1
        now = time.monotonic()
        if now - self.last.get(kind, -math.inf) >= self.every:
            n, self.count[kind] = self.count[kind], 0
            self.last[kind] = now
            _log.warning(msg + (f" ({n} times since the last report)" if n > 1 else ""),
                         *args)


class Server:
    """Serves the objects of a manager: one thread per client connection,
    of which at most MAX_HANDSHAKES have not authenticated yet."""

    public = ["shutdown", "create", "get_methods", "debug_info", "number_of_objects",
              "dummy", "hello", "refs", "transit", "info"]

    def __init__(self, registry, address, authkey, serializer="pickle", *, backend=None,
                 ssl_context=None, transit_timeout=DEFAULT_TRANSIT_TIMEOUT,
                 handshake_timeout=None, **listener_opts):
        if not isinstance(authkey, (bytes, bytearray)):
            raise TypeError(f"Authkey {authkey!r} is type {type(authkey).__name__}, not bytes")
        if backend is None:
            backend = _backend_for_address(address) or _registry.default_backend("Manager")
        self.backend, module = _transport(backend)
        self.registry = {t: tuple(v[:3]) for t, v in registry.items()}
        self.serializer = _manager_serializer(serializer)
        self.authkey = process.AuthenticationString(authkey)
        opts = dict(listener_opts)
        if ssl_context is not None:
            opts["ssl_context"] = ssl_context
        if handshake_timeout is not None:
            opts["handshake_timeout"] = _positive_seconds(handshake_timeout,
                                                          "handshake_timeout", None)
        self.transit_timeout = _positive_seconds(transit_timeout, "transit_timeout",
                                                 math.inf)
        self.listener = module.Listener(address, bytes(authkey), **opts)
        self.address = self.listener.address
        self.mutex = threading.Lock()
        self.objects = {}      # ident -> (obj, exposed, method_to_typeid, typeid)
        self.refcount = {}     # ident -> refs held by sessions and transits
        self.sessions = {}     # session id -> _Session
        self.transits = {}     # transit id -> (ident, deadline)
        self.conns = set()
        self._ids = itertools.count(1)
        self._tids = itertools.count(1)
        self.stop_event = threading.Event()
        self._stopped = False
        self._hot = None       # thread that served the latest request
        # Connections in their handshake (see MAX_HANDSHAKES), by order of
        # arrival; changed under _hs_cond, which is notified when one ends.
        self._handshakes = {}
        self._hs_ids = itertools.count()
        self._hs_cond = threading.Condition(threading.Lock())
        self._trouble = _RateLimited()

    # -- running ----------------------------------------------------------
    def serve_forever(self):
        """Serve until a client calls shutdown (or Ctrl-C); then close the
        listener (removing its socket file) and every connection."""
        process.current_process()._manager_server = self
        accepter = threading.Thread(target=self.accepter, daemon=True,
                                    name="mpx-manager-accept")
        accepter.start()
        try:
            while not self.stop_event.wait(1.0):
                self._expire_transits()
                self._expire_handshakes()
        except (KeyboardInterrupt, SystemExit):
            pass
        finally:
            self._close()

    def accepter(self):
        """Accept connections until the server stops, whatever happens to
        one of them: a connection that cannot be given a thread (out of
        threads, memory or descriptors) is closed, the trouble is logged
        (``logging.getLogger("mpx")``), and the loop goes on."""
        listener = self.listener
        failures = 0
        while not self.stop_event.is_set():
            try:
                raw = listener.accept()
            except Exception as e:
                if self.stop_event.is_set() or listener._sock is None:
                    return
                # e.g. out of file descriptors: back off instead of spinning
                # on a listener that stays readable.
                failures += 1
                self._trouble.warning("accept", "mpx manager at %r: accept failed: %r; "
                                      "still accepting", self.address, e)
                time.sleep(min(0.05 * failures, 1.0))
                continue
            failures = 0
            try:
                self._start_connection(raw)
            except Exception as e:
                _close_quietly(raw)
                self._trouble.warning("start", "mpx manager at %r: closed a new connection "
                                      "it could not serve (%r); still accepting",
                                      self.address, e)
                # Out of threads or memory: give the server a moment to
                # recover before the next connection tries again.
                time.sleep(0.05)

    def _start_connection(self, raw):
        """Give the new connection `raw` a handshake place and a thread."""
        slot = self._admit(raw)
        t = threading.Thread(target=self.handle_request, args=(raw, slot), daemon=True,
                             name="mpx-manager-conn")
        try:
            t.start()
        except BaseException:
            self._handshake_done(slot)
            raise

    def _admit(self, raw):
        """A handshake place for `raw` (its key in _handshakes); when all are
        taken, the oldest handshake is cut off and its place awaited."""
        entry = _Handshake(raw.dup())
        try:
            with self._hs_cond:
                handshakes = self._handshakes
                deadline = time.monotonic() + _ADMIT_WAIT
                while len(handshakes) >= MAX_HANDSHAKES:
                    if not any(h.cut for h in handshakes.values()):
                        oldest = handshakes[min(handshakes)]
                        oldest.cut_off()
                        util.debug("mpx manager: cut off the oldest handshake for a "
                                   "new connection")
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise RuntimeError(f"all {MAX_HANDSHAKES} handshake places stay "
                                           f"taken")
                    self._hs_cond.wait(left)
                slot = next(self._hs_ids)
                handshakes[slot] = entry
        except BaseException:
            _close_quietly(entry.handle)
            raise
        return slot

    def _handshake_done(self, slot):
        """Give back a handshake place; False if the handshake was cut off
        (its connection is dead then, even if the handshake got through)."""
        with self._hs_cond:
            entry = self._handshakes.pop(slot, None)
            self._hs_cond.notify_all()
        if entry is None:
            return True
        _close_quietly(entry.handle)
        return not entry.cut

    def _expire_handshakes(self):
        """Cut off the handshakes that outlived the handshake timeout (each
        read has that timeout already; this catches a peer that trickles
        bytes, or one stalled where the transport has no timeout)."""
        timeout = getattr(self.listener, "handshake_timeout", None)
        if timeout is None:
            return
        too_old = time.monotonic() - timeout - 0.5
        with self._hs_cond:
            for entry in self._handshakes.values():
                if not entry.cut and entry.accepted < too_old:
                    entry.cut_off()

    def _close(self):
        self._stopped = True
        self.stop_event.set()
        self.listener.close()
        with self.mutex:
            conns = list(self.conns)
            objs = [entry[0] for entry in self.objects.values()]
        for conn in conns:
            conn.shutdown()
        with self._hs_cond:
            for entry in self._handshakes.values():
                entry.cut_off()
        # A pool's workers are processes: end them now rather than leave
        # them to a garbage collector that may never run before exit.
        for obj in objs:
            if isinstance(obj, _mp_pool.Pool):
                try:
                    obj.terminate()
                except Exception:
                    pass
        del objs
        with self.mutex:
            dead = list(self.objects.values())
            self.objects.clear()
            self.refcount.clear()
            self.transits.clear()
        del dead
        if getattr(process.current_process(), "_manager_server", None) is self:
            del process.current_process()._manager_server

    # -- a connection -----------------------------------------------------
    def handle_request(self, raw, slot=None):
        try:
            try:
                conn = self.listener.handshake(raw)
            finally:
                live = slot is None or self._handshake_done(slot)
        except AuthenticationError:
            util.info("mpx manager: rejected a client with a wrong authkey")
            return
        except Exception as e:
            util.debug("mpx manager: dropped a connection during the handshake: %r", e)
            return
        if not live:
            conn.close()
            return
        with self.mutex:
            if self._stopped:
                conn.close()
                return
            self.conns.add(conn)
        state = {"session": None}
        try:
            self.serve_client(conn, state)
        except Exception as e:
            util.debug("mpx manager: connection ended: %r", e)
        finally:
            with self.mutex:
                self.conns.discard(conn)
            conn.close()
            if state["session"] is not None:
                self._end_session(state["session"])

    def serve_client(self, conn, state):
        """Answer requests on `conn` until it closes."""
        recv, send = conn.recv, conn.send
        loads, dumps = pickle.loads, self.serializer.dumps
        # Plain pickle first, as the default serializer does, minus a call.
        fast_dumps = pickle.dumps if type(self.serializer) is _serial.PickleSerializer \
            else (lambda obj, protocol: dumps(obj))
        objects = self.objects
        me = threading.current_thread()
        none_reply = dumps((_RETURN, None))
        spin = False
        while True:
            # Drop the previous request's objects before sleeping: they may
            # be proxies whose release frees referents here or elsewhere.
            data = request = args = kwds = obj = res = msg = out = None
            try:
                data = recv(spin)
            except (EOFError, OSError):
                util.debug("got EOF -- exiting thread serving %r",
                           state.get("who", "a client"))
                return
            # Spin for the next request only while one client keeps this
            # server busy (two requests in a row on this connection), from
            # its second request on: spinning threads would make the others
            # wait for the GIL. (An earlier rule, "busy for 20 ms", left the
            # first 20 ms of every burst of calls at sleeping speed.) How
            # long to spin is the connection's business.
            if self._hot is me:
                spin = True
            else:
                self._hot = me
                spin = False
            try:
                request = loads(data)
                ident, name, args, kwds = request
            except Exception as e:
                send(dumps(_error_reply(RemoteError(
                    f"the manager could not read a request: {type(e).__name__}: {e}"))))
                continue
            if type(ident) is int:
                try:
                    obj, exposed, m2t, _ = objects[ident]
                except KeyError:
                    msg = _error_reply(ReferenceError(
                        f"the manager holds no object with id {ident} "
                        f"(it was freed, or the manager restarted)"))
                else:
                    if name in exposed:
                        try:
                            res = getattr(obj, name)(*args, **kwds)
                        except BaseException as e:
                            msg = _error_reply(e)
                        else:
                            if res is None and not m2t:
                                send(none_reply)
                                continue
                            typeid = m2t.get(name) if m2t else None
                            if typeid:
                                try:
                                    msg = (_PROXY, self._new_object(state["session"], typeid,
                                                                    (res,), {}))
                                except BaseException as e:
                                    msg = _error_reply(e)
                            else:
                                msg = (_RETURN, res)
                    else:
                        msg = self._fallback(obj, ident, name, exposed, args, kwds)
            else:
                try:
                    if name not in self.public:
                        raise AttributeError(f"{name!r} is not an operation of the manager")
                    res = getattr(self, "op_" + name)(state, *args, **kwds)
                except BaseException as e:
                    if name in _ONE_WAY:      # nobody reads a reply to these
                        util.debug("mpx manager: one-way %r failed: %r", name, e)
                        continue
                    msg = _error_reply(e)
                else:
                    if name in _ONE_WAY:
                        continue
                    if state.get("shutdown"):
                        try:
                            send(dumps((_RETURN, None)))
                        finally:
                            self.stop_event.set()
                        return
                    msg = (_RETURN, res)
            try:
                try:
                    out = fast_dumps(msg, _PROTOCOL)
                except Exception:
                    out = dumps(msg)      # the serializer's fallbacks
            except Exception as e:
                if msg[0] == _ERROR:
                    # Keep what matters of an exception that cannot travel:
                    # its server-side traceback, as a RemoteError.
                    out = dumps((_ERROR, None, msg[2] + f"\n(the exception itself could "
                                 f"not be sent: {type(e).__name__}: {e})\n"))
                else:
                    out = dumps(_error_reply(RemoteError(
                        f"the manager could not serialize the result "
                        f"({type(msg[1]).__name__}): {type(e).__name__}: {e}")))
            try:
                send(out)
            except OSError:
                return

    def _fallback(self, obj, ident, name, exposed, args, kwds):
        try:
            if name == "#GETVALUE":
                return (_RETURN, obj)
            if name == "__str__":
                return (_RETURN, str(obj))
            if name == "__repr__":
                return (_RETURN, repr(obj))
        except BaseException as e:
            return _error_reply(e)
        return _error_reply(AttributeError(
            f"method {name!r} of {type(obj)!r} object is not in exposed={tuple(exposed)!r}"))

    # -- objects and references (all tables under self.mutex) -------------
    def _new_object(self, session, typeid, args, kwds):
        try:
            callable_, exposed, method_to_typeid = self.registry[typeid]
        except KeyError:
            raise KeyError(f"typeid {typeid!r} is not registered with this manager") from None
        if session is None:
            raise RemoteError("this connection did not open a session")
        if callable_ is not None:
            obj = callable_(*args, **kwds)
        else:
            if kwds or len(args) != 1:
                raise ValueError("Without callable, must have one non-keyword argument")
            obj = args[0]
        if exposed is None:
            exposed = public_methods(obj)
        if method_to_typeid is not None:
            if not isinstance(method_to_typeid, dict):
                raise TypeError(f"Method_to_typeid {method_to_typeid!r}: type "
                                f"{type(method_to_typeid).__name__}, not dict")
            exposed = list(exposed) + list(method_to_typeid)
        exposed = tuple(exposed)
        with self.mutex:
            ident = next(self._ids)
            self.objects[ident] = (obj, frozenset(exposed), method_to_typeid or None, typeid)
            self.refcount[ident] = 1
            refs = session.refs
            refs[ident] = refs.get(ident, 0) + 1
        util.debug("%r callable returned object with id %r", typeid, ident)
        return (typeid, ident, exposed)

    def _release_locked(self, ident, n, dead):
        left = self.refcount.get(ident, 0) - n
        if left > 0:
            self.refcount[ident] = left
        else:
            self.refcount.pop(ident, None)
            entry = self.objects.pop(ident, None)
            if entry is not None:
                util.debug("disposing of obj with id %r", ident)
                # Destroyed after the mutex is released: a referent may hold
                # proxies whose clean-up talks to this server.
                dead.append(entry)

    def _end_session(self, session):
        dead = []
        with self.mutex:
            session.conns -= 1
            if session.conns > 0:
                return
            for sid, s in list(self.sessions.items()):
                if s is session:
                    del self.sessions[sid]
            for ident, n in session.refs.items():
                self._release_locked(ident, n, dead)
            session.refs = {}
        del dead

    def _expire_transits(self):
        if not self.transits:
            return
        now = time.monotonic()
        dead = []
        with self.mutex:
            for tid, (ident, deadline) in list(self.transits.items()):
                if deadline <= now:
                    del self.transits[tid]
                    self._release_locked(ident, 1, dead)
        del dead

    # -- operations (ident None) ------------------------------------------
    def op_hello(self, state, session_id, kind, pid, name):
        if state["session"] is not None:
            raise RemoteError("this connection already has a session")
        if not isinstance(session_id, bytes) or len(session_id) != 16:
            raise ValueError("invalid session id")
        with self.mutex:
            s = self.sessions.get(session_id)
            if s is None:
                s = self.sessions[session_id] = _Session(pid)
            s.conns += 1
        state["session"] = s
        state["kind"] = kind
        state["who"] = name
        util.debug("starting server thread to service %r", name)

    def op_refs(self, state, ops):
        session = state["session"]
        if session is None:
            return
        dead = []
        now = time.monotonic()
        with self.mutex:
            self._apply_refs_locked(session, ops, dead, now)
        del dead

    def _apply_refs_locked(self, session, ops, dead, now):
        refs, refcount, transits = session.refs, self.refcount, self.transits
        for kind, ident, tid in ops:
            if kind == "incref":
                if ident in refcount:
                    refcount[ident] += 1
                    refs[ident] = refs.get(ident, 0) + 1
            elif kind == "decref":
                # A session can only give back references it holds.
                if _count_down(refs, ident):
                    self._release_locked(ident, 1, dead)
            elif kind == "claim":
                t = transits.pop(tid, None)
                if t is not None and t[0] == ident:
                    refs[ident] = refs.get(ident, 0) + 1
                else:
                    if t is not None:
                        transits[tid] = t
                    if ident in refcount:
                        refcount[ident] += 1
                        refs[ident] = refs.get(ident, 0) + 1
            elif kind == "drop":
                t = transits.pop(tid, None)
                if t is not None:
                    if t[0] == ident:
                        self._release_locked(ident, 1, dead)
                    else:
                        transits[tid] = t

    def op_transit(self, state, ops, idents):
        session = state["session"]
        if session is None:
            raise RemoteError("this connection did not open a session")
        dead = []
        now = time.monotonic()
        out = []
        with self.mutex:
            self._apply_refs_locked(session, ops, dead, now)
            deadline = now + self.transit_timeout
            for ident in idents:
                if ident in self.refcount:
                    tid = next(self._tids)
                    self.transits[tid] = (ident, deadline)
                    self.refcount[ident] += 1
                    out.append(tid)
                else:
                    out.append(None)
        del dead
        return out

    def op_create(self, state, typeid, /, *args, **kwds):
        return self._new_object(state["session"], typeid, args, kwds)

    def op_get_methods(self, state, token):
        ident = getattr(token, "id", token)
        return tuple(self.objects[ident][1])

    def op_dummy(self, state):
        return None

    def op_number_of_objects(self, state):
        return len(self.objects)

    def op_debug_info(self, state):
        with self.mutex:
            lines = []
            for ident in sorted(self.refcount):
                obj = self.objects[ident][0]
                lines.append(f"  {ident}:       refcount={self.refcount[ident]}\n"
                             f"    {str(obj)[:75]}")
            return "\n".join(lines)

    def op_info(self, state):
        """Counters for tests and monitoring."""
        try:
            fds = len(os.listdir("/proc/self/fd"))
        except OSError:
            fds = None
        with self.mutex:
            peers = {repr(k): {"handles": dict(p.handles), "pending": dict(p.pending),
                               "queued": len(p.ops), "broken": p.broken,
                               "flusher": p.flusher is not None and p.flusher.is_alive()}
                     for k, p in list(_peers.items()) if p.pid == os.getpid()}
            return {"objects": len(self.objects), "refcount": dict(self.refcount),
                    "own_proxies": peers,
                    "sessions": len(self.sessions), "connections": len(self.conns),
                    "transits": len(self.transits), "threads": threading.active_count(),
                    "fds": fds, "pid": os.getpid()}

    def op_shutdown(self, state):
        # serve_client stops the server once this reply has been sent.
        util.debug("manager received shutdown message")
        state["shutdown"] = True
        return None

    # Compatibility with code that calls the stdlib's Server methods.
    def number_of_objects(self, c=None):
        return len(self.objects)

    def shutdown(self, c=None):
        self.stop_event.set()


# --------------------------------------------------------------------------
# The pool a SyncManager serves
# --------------------------------------------------------------------------

def _portable(func):
    """`func`, or a stand-in that carries it to pool workers with cloudpickle
    when plain pickle cannot (a lambda, a closure, a function that came to
    the server by value)."""
    try:
        pickle.dumps(func, _PROTOCOL)
        return func
    except Exception:
        return _PortableCallable(func)


class _PortableCallable:
    __slots__ = ("func", "data")

    def __init__(self, func):
        self.func = func
        self.data = _serial.get_serializer("cloudpickle").dumps(func)

    def __reduce__(self):
        return (pickle.loads, (self.data,))

    def __call__(self, *args, **kwds):
        return self.func(*args, **kwds)


class ManagedPool(_mp_pool.Pool):
    """``multiprocessing.pool.Pool`` whose task functions (and initializer)
    may be lambdas."""

    def __init__(self, processes=None, initializer=None, initargs=(),
                 maxtasksperchild=None, context=None):
        if initializer is not None:
            initializer = _portable(initializer)
        super().__init__(processes, initializer, initargs, maxtasksperchild, context)

    def apply(self, func, args=(), kwds={}):
        return super().apply(_portable(func), args, kwds)

    def apply_async(self, func, args=(), kwds={}, callback=None, error_callback=None):
        return super().apply_async(_portable(func), args, kwds, callback, error_callback)

    def map(self, func, iterable, chunksize=None):
        return super().map(_portable(func), iterable, chunksize)

    def map_async(self, func, iterable, chunksize=None, callback=None, error_callback=None):
        return super().map_async(_portable(func), iterable, chunksize, callback,
                                 error_callback)

    def starmap(self, func, iterable, chunksize=None):
        return super().starmap(_portable(func), iterable, chunksize)

    def starmap_async(self, func, iterable, chunksize=None, callback=None,
                      error_callback=None):
        return super().starmap_async(_portable(func), iterable, chunksize, callback,
                                     error_callback)

    def imap(self, func, iterable, chunksize=1):
        return super().imap(_portable(func), iterable, chunksize)

    def imap_unordered(self, func, iterable, chunksize=1):
        return super().imap_unordered(_portable(func), iterable, chunksize)


# --------------------------------------------------------------------------
# Managers
# --------------------------------------------------------------------------

def _check_state(state, what="server"):
    if state.value == State.STARTED:
        raise ProcessError(f"Already started {what}")
    if state.value == State.SHUTDOWN:
        raise ProcessError("Manager has shut down")
    if state.value != State.INITIAL:
        raise ProcessError(f"Unknown state {state.value!r}")


class BaseManager:
    """Base class for managers (``multiprocessing.managers.BaseManager`` API).

    Beyond the stdlib's arguments: ``backend`` ("unix", "tcp" or "shm"; by
    default taken from the address: a (host, port) tuple means TCP, a path
    means a unix socket, none means mpx's default), ``ssl_context`` (TCP
    server side: an ``ssl.SSLContext`` or a picklable callable returning one),
    ``client_ssl_context`` (the same, for connecting), ``transit_timeout``
    (seconds a pickled proxy keeps its referent alive before someone loads
    it) and ``handshake_timeout`` (seconds a connecting peer has, in all, to
    authenticate; default 10). Timeouts are read by mpx's rule: NaN is a
    ValueError, infinity means for ever.
    """

    _registry = {}
    _Server = Server

    def __init__(self, address=None, authkey=None, serializer="pickle", ctx=None, *,
                 shutdown_timeout=1.0, backend=None, ssl_context=None,
                 client_ssl_context=None, transit_timeout=DEFAULT_TRANSIT_TIMEOUT,
                 handshake_timeout=None):
        if backend is None:
            backend = _backend_for_address(address) or _registry.default_backend("Manager")
        self._backend, self._transport_module = _transport(backend)
        if address is not None:
            address = self._transport_module.check_address(address)
        if authkey is None:
            authkey = process.current_process().authkey
        if not isinstance(authkey, (bytes, bytearray)):
            raise TypeError(f"authkey must be bytes, not {type(authkey).__name__}")
        if serializer == "xmlrpclib":
            raise ValueError("mpx managers do not speak xmlrpclib; use serializer='pickle' "
                             "(the default) or 'cloudpickle'")
        self._address = _hashable_address(address)
        self._authkey = process.AuthenticationString(authkey)
        self._state = State()
        self._state.value = State.INITIAL
        self._serializer = _manager_serializer(serializer)
        self._ctx = ctx or multiprocessing.get_context()
        # Read here, so that a NaN fails in the constructor rather than in
        # a server process or a finalizer.
        self._shutdown_timeout = _seconds(shutdown_timeout, what="shutdown_timeout")
        _positive_seconds(transit_timeout, "transit_timeout", None)
        _positive_seconds(handshake_timeout, "handshake_timeout", None)
        self._ssl_context = ssl_context
        self._client_opts = {}
        if client_ssl_context is not None:
            self._client_opts["ssl_context"] = client_ssl_context
        self._transit_timeout = transit_timeout
        self._handshake_timeout = handshake_timeout
        self._process = None

    # -- server side ------------------------------------------------------
    def _server_registry(self):
        return {t: v[:3] for t, v in self._registry.items()}

    def _server_kwargs(self):
        kw = {"backend": self._backend, "transit_timeout": self._transit_timeout}
        if self._ssl_context is not None:
            kw["ssl_context"] = self._ssl_context
        if self._handshake_timeout is not None:
            kw["handshake_timeout"] = self._handshake_timeout
        return kw

    def get_server(self):
        """A Server with ``serve_forever()`` and ``address``, run in this process."""
        _check_state(self._state)
        server = self._Server(self._registry, self._address, self._authkey,
                              self._serializer, **self._server_kwargs())
        self._address = server.address
        self._remember()
        return server

    def _remember(self):
        key = (self._backend, self._address)
        _authkeys[key] = bytes(self._authkey)
        if self._client_opts:
            _client_opts[key] = dict(self._client_opts)

    def connect(self):
        """Connect to a manager server that is already running at ``address``."""
        if self._address is None:
            raise ValueError("connect() needs the address of a running manager")
        _oneshot(self._backend, self._address, self._authkey, "dummy",
                 opts=self._client_opts)
        self._remember()
        self._state.value = State.STARTED

    def start(self, initializer=None, initargs=()):
        """Start a server process for this manager."""
        _check_state(self._state)
        if initializer is not None and not callable(initializer):
            raise TypeError("initializer must be a callable")
        reader, writer = _mp_connection.Pipe(duplex=False)
        registry = self._server_registry()
        server_kwargs = self._server_kwargs()
        if self._ctx.get_start_method() != "fork":
            # Process arguments are pickled with ForkingPickler; registered
            # callables may need mpx's serializer (cloudpickle fallback).
            registry = ("serialized", self._serializer.dumps(registry))
            if initializer is not None:
                initializer = _portable(initializer)
            ssl_ctx = server_kwargs.get("ssl_context")
            if ssl_ctx is not None and not callable(ssl_ctx):
                raise TypeError("an ssl.SSLContext cannot be sent to a spawned manager "
                                "process; pass a picklable callable returning it "
                                "(e.g. functools.partial(make_context, certfile))")
        self._process = self._ctx.Process(
            target=type(self)._run_server,
            args=(registry, self._address, bytes(self._authkey), self._serializer,
                  writer, initializer, initargs, server_kwargs))
        ident = ":".join(str(i) for i in self._process._identity)
        self._process.name = type(self).__name__ + "-" + ident
        self._process.start()
        writer.close()
        try:
            message = self._wait_for_server(reader)
        finally:
            reader.close()
        if message[0] != "address":
            self._process.join(self._shutdown_timeout)
            if self._process.is_alive():
                self._process.kill()
                self._process.join()
            raise ProcessError(f"the manager process failed to start:\n{message[1]}")
        self._address = _hashable_address(message[1])
        self._remember()
        self._state.value = State.STARTED
        self.shutdown = util.Finalize(
            self, type(self)._finalize_manager,
            args=(self._process, self._backend, self._address, bytes(self._authkey),
                  self._state, self._client_opts, self._shutdown_timeout),
            exitpriority=0)

    def _wait_for_server(self, reader):
        # Unlike the stdlib, a server that dies before it reports its
        # address gives an error here instead of a hang.
        while True:
            if reader.poll(0.1):
                try:
                    return reader.recv()
                except EOFError:
                    # The child closed its end without a word: it is dying.
                    self._process.join(None if self._shutdown_timeout is None
                                       else self._shutdown_timeout + 5)
            if not self._process.is_alive():
                return ("error", f"it exited with code {self._process.exitcode} before "
                                 f"reporting its address")

    @classmethod
    def _run_server(cls, registry, address, authkey, serializer, writer,
                    initializer=None, initargs=(), server_kwargs=None):
        # bpo-36368: the server ignores the Ctrl-C aimed at its parent's
        # process group; the parent shuts it down.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            if initializer is not None:
                initializer(*initargs)
            if isinstance(registry, tuple) and registry[0] == "serialized":
                registry = serializer.loads(registry[1])
            server = cls._Server(registry, address, authkey, serializer,
                                 **(server_kwargs or {}))
        except BaseException:
            writer.send(("error", traceback.format_exc()))
            writer.close()
            raise
        writer.send(("address", server.address))
        writer.close()
        util.info("manager serving at %r", server.address)
        server.serve_forever()

    # -- client side ------------------------------------------------------
    def _peer(self):
        return _peer(self._backend, self._address, self._authkey)

    def _create(self, typeid, /, *args, **kwds):
        """Create a shared object; return ``(token, exposed)``. This process
        holds a reference for it, taken over by the next proxy made for it."""
        if self._state.value != State.STARTED:
            raise ProcessError("the manager is not started (call start() or connect())")
        peer = self._peer()
        conn = peer.call_conn()
        util.debug("requesting creation of a shared %r object", typeid)
        data = self._serializer.dumps((None, "create", (typeid,) + args, kwds))
        try:
            conn.send(data)
            reply = conn.recv()
        except BaseException:
            peer.drop_call_conn(conn)
            raise
        reply = pickle.loads(reply)
        if reply[0] != _RETURN:
            try:
                _raise_creation_reply(reply[0], reply[1:] if reply[0] == _ERROR else reply[1])
            finally:
                reply = None
        typeid, ident, exposed = reply[1]
        peer.post(("adopt", ident, None))
        return Token(typeid, self._address, ident, self._backend), exposed

    def _control(self, name, *args):
        return _oneshot(self._backend, self._address, self._authkey, name, args,
                        opts=self._client_opts)

    def _debug_info(self):
        return self._control("debug_info")

    def _number_of_objects(self):
        return self._control("number_of_objects")

    def _server_info(self):
        """Counters from the server: objects, refcounts, sessions,
        connections, pending transits, threads, open fds, pid."""
        return self._control("info")

    def join(self, timeout=None):
        timeout = _seconds(timeout, what="join's timeout")
        if self._process is not None:
            self._process.join(timeout)
            if not self._process.is_alive():
                self._process = None

    def __enter__(self):
        if self._state.value == State.INITIAL:
            self.start()
        if self._state.value != State.STARTED:
            if self._state.value == State.INITIAL:
                raise ProcessError("Unable to start server")
            if self._state.value == State.SHUTDOWN:
                raise ProcessError("Manager has shut down")
            raise ProcessError(f"Unknown state {self._state.value!r}")
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.shutdown()

    def shutdown(self):
        """Stop the server process (only a manager that start()ed one has it;
        a connect()ed manager just forgets its connections)."""
        if self._state.value == State.STARTED and self._process is None:
            self._state.value = State.SHUTDOWN

    @staticmethod
    def _finalize_manager(proc, backend, address, authkey, state, opts, timeout):
        key = (backend, address)
        _forget_peer(key)
        if proc.is_alive():
            util.info("sending shutdown message to manager")
            try:
                _oneshot(backend, address, authkey, "shutdown", opts=opts,
                         timeout=_CONNECT_TIMEOUT if timeout is None else max(timeout, 1.0))
            except Exception:
                pass
            proc.join(timeout=timeout)
            if proc.is_alive():
                util.info("manager still alive")
                util.info("trying to `terminate()` manager process")
                proc.terminate()
                proc.join(timeout=timeout)
                if proc.is_alive():
                    util.info("manager still alive after terminate")
                    proc.kill()
                    proc.join()
        state.value = State.SHUTDOWN
        # A server killed before it could clean up leaves its socket file.
        try:
            _, module = _transport(backend)
            cleanup = getattr(module, "cleanup", None)
            if cleanup is not None:
                cleanup(address)
        except Exception:
            pass

    @property
    def address(self):
        return self._address

    @classmethod
    def register(cls, typeid, callable=None, proxytype=None, exposed=None,
                 method_to_typeid=None, create_method=True):
        """Register a typeid with the manager type (stdlib signature)."""
        if "_registry" not in cls.__dict__:
            cls._registry = cls._registry.copy()
        if proxytype is None:
            proxytype = AutoProxy
        exposed = exposed or getattr(proxytype, "_exposed_", None)
        method_to_typeid = method_to_typeid or getattr(proxytype, "_method_to_typeid_", None)
        if method_to_typeid:
            for key, value in list(method_to_typeid.items()):
                if type(key) is not str or type(value) is not str:
                    raise TypeError(f"method_to_typeid must map str to str, "
                                    f"not {key!r} to {value!r}")
        cls._registry[typeid] = (callable, exposed, method_to_typeid, proxytype)
        if create_method:
            def temp(self, /, *args, **kwds):
                token, exp = self._create(typeid, *args, **kwds)
                return proxytype(token, self._serializer, manager=self,
                                 authkey=self._authkey, exposed=exp)
            temp.__name__ = typeid
            temp.__qualname__ = f"{cls.__name__}.{typeid}"
            setattr(cls, typeid, temp)


# --------------------------------------------------------------------------
# Proxies
# --------------------------------------------------------------------------

class BaseProxy:
    """A base for proxies of shared objects (stdlib signature)."""

    def __init__(self, token, serializer, manager=None, authkey=None, exposed=None,
                 incref=True, manager_owned=False):
        if not isinstance(token, Token):
            token = Token(token.typeid, token.address, token.id,
                          getattr(token, "backend", None))
        if token.backend is None:
            token.backend = (manager._backend if manager is not None
                             else _backend_for_address(token.address))
        token.address = _hashable_address(token.address)
        self._token = token
        self._id = token.id
        self._manager = manager
        self._manager_class = type(manager) if manager is not None else None
        self._serializer = _manager_serializer(serializer)
        # The default serializer is plain pickle until that fails: call it
        # directly on the hot path.
        self._plain = type(self._serializer) is _serial.PickleSerializer
        if authkey is not None:
            self._authkey = process.AuthenticationString(authkey)
        elif manager is not None:
            self._authkey = manager._authkey
        else:
            self._authkey = process.AuthenticationString(
                _authkeys.get((token.backend, token.address))
                or process.current_process().authkey)
        self._owned = False
        self._gen = -1
        self._peer_obj = None
        if incref and not manager_owned:
            self._incref()

    # -- plumbing ---------------------------------------------------------
    def _get_peer(self):
        if self._gen != _generation[0] or self._peer_obj is None:
            self._peer_obj = _peer(self._token.backend, self._token.address, self._authkey)
            self._gen = _generation[0]
        return self._peer_obj

    def _incref(self):
        if self._owned:
            return
        peer = self._get_peer()
        peer.post(("acquire", self._id, None))
        self._owned = True
        self._owner_pid = os.getpid()
        try:
            peer.ensure_session()
        except Exception as e:
            # The first call will report it; a proxy for a manager that
            # is gone can still be built, printed and dropped.
            util.debug("mpx proxy: could not reach the manager: %r", e)

    def _decref(self):
        if self._owned:
            self._owned = False
            if getattr(self, "_owner_pid", None) == os.getpid() or self._gen != _generation[0]:
                self._get_peer().post(("release", self._id, None))

    def __del__(self):
        try:
            if self._owned:
                self._owned = False
                key = (self._token.backend, self._token.address)
                peer = _peers.get(key)
                if peer is not None:
                    peer.post(("release", self._id, None))
        except Exception:
            pass   # interpreter shutdown

    def _callmethod(self, methodname, args=(), kwds={}):
        """Call a method of the referent and return a copy of the result."""
        request = (self._id, methodname, args, kwds)
        if self._plain:
            try:
                data = _pickle_dumps(request, _PROTOCOL)
            except Exception:     # the serializer's fallbacks and errors
                data = self._serializer.dumps(request)
        else:
            data = self._serializer.dumps(request)
        peer = self._peer_obj
        if peer is None or self._gen != _generation[0]:
            peer = self._get_peer()
        conn = getattr(peer.tls, "conn", None)
        if conn is None:
            conn = peer.call_conn()
        try:
            conn.send(data)
            reply = conn.recv()
        except BaseException:
            # Interrupted or broken mid-call: the reply stream is out of
            # step, so this connection is never used again.
            peer.drop_call_conn(conn)
            raise
        reply = _pickle_loads(reply)
        kind = reply[0]
        if kind == _RETURN:
            return reply[1]
        if kind == _PROXY:
            return self._proxy_from_reply(peer, reply[1])
        try:
            _raise_reply(kind, reply[1:] if kind == _ERROR else reply[1])
        finally:
            reply = None

    def _proxy_from_reply(self, peer, payload):
        typeid, ident, exposed = payload
        peer.post(("adopt", ident, None))
        registry = None
        if self._manager is not None:
            registry = self._manager._registry
        elif self._manager_class is not None:
            registry = self._manager_class._registry
        entry = registry.get(typeid) if registry else None
        proxytype = entry[-1] if entry else AutoProxy
        token = Token(typeid, self._token.address, ident, self._token.backend)
        return proxytype(token, self._serializer, manager=self._manager,
                         authkey=self._authkey, exposed=exposed)

    def _getvalue(self):
        """A copy of the referent."""
        return self._callmethod("#GETVALUE")

    def __reduce__(self):
        kwds = {}
        if get_spawning_popen() is not None:
            kwds["authkey"] = bytes(self._authkey)
        # The transit reference keeps the referent alive until the copy is
        # loaded somewhere, whatever happens to this proxy meanwhile.
        try:
            tid = self._get_peer().transit([self._id])[1][0]
        except Exception as e:
            util.debug("mpx proxy: no transit reference for %r: %r", self._token, e)
            tid = None
        if tid is not None:
            kwds["_transit"] = tid
        if self._manager_class is not None:
            kwds["_manager_class"] = self._manager_class
        opts = _client_opts.get((self._token.backend, self._token.address))
        if opts and all(callable(v) or isinstance(v, (str, bytes)) for v in opts.values()):
            kwds["_client_opts"] = opts
        if getattr(self, "_isauto", False):
            kwds["exposed"] = self._exposed_
            return (RebuildProxy, (AutoProxy, self._token, self._serializer, kwds))
        return (RebuildProxy, (type(self), self._token, self._serializer, kwds))

    def __deepcopy__(self, memo):
        return self._getvalue()

    def __repr__(self):
        return "<%s object, typeid %r at %#x>" % (type(self).__name__, self._token.typeid,
                                                  id(self))

    def __str__(self):
        try:
            return self._callmethod("__repr__")
        except Exception:
            return repr(self)[:-1] + "; '__str__()' failed>"


def RebuildProxy(func, token, serializer, kwds):
    """Unpickle a proxy: claim the transit reference its sender took."""
    kwds = dict(kwds)
    tid = kwds.pop("_transit", None)
    manager_class = kwds.pop("_manager_class", None)
    opts = kwds.pop("_client_opts", None)
    kwds.pop("manager_owned", None)
    incref = kwds.pop("incref", True)
    if not isinstance(token, Token):
        token = Token(token.typeid, token.address, token.id, getattr(token, "backend", None))
    token.address = _hashable_address(token.address)
    key = (token.backend, token.address)
    if opts and key not in _client_opts:
        _client_opts[key] = opts
    authkey = kwds.get("authkey")
    if authkey is not None and key not in _authkeys:
        _authkeys[key] = bytes(authkey)
    if tid is not None and incref:
        peer = _peer(token.backend, token.address, authkey)
        peer.post(("expect", token.id, tid))
    proxy = func(token, serializer, incref=incref, **kwds)
    if manager_class is not None and getattr(proxy, "_manager_class", None) is None:
        proxy._manager_class = manager_class
    return proxy


def _make_method(name):
    def method(self, /, *args, **kwds):
        return self._callmethod(name, args, kwds)
    method.__name__ = name
    return method


def MakeProxyType(name, exposed, _cache={}):
    """A proxy type whose methods are given by `exposed`."""
    exposed = tuple(exposed)
    try:
        return _cache[(name, exposed)]
    except KeyError:
        pass
    dic = {meth: _make_method(meth) for meth in exposed}
    proxytype = type(name, (BaseProxy,), dic)
    proxytype._exposed_ = exposed
    _cache[(name, exposed)] = proxytype
    return proxytype


def AutoProxy(token, serializer, manager=None, authkey=None, exposed=None,
              incref=True, manager_owned=False):
    """A proxy for `token` exposing whatever the server says it exposes."""
    if authkey is None and manager is not None:
        authkey = manager._authkey
    if exposed is None:
        backend = getattr(token, "backend", None) or (
            manager._backend if manager is not None else _backend_for_address(token.address))
        key = (backend, _hashable_address(token.address))
        exposed = _oneshot(backend, token.address,
                           authkey or _authkeys.get(key) or process.current_process().authkey,
                           "get_methods", (token.id,), opts=_client_opts.get(key))
    proxytype = MakeProxyType("AutoProxy[%s]" % token.typeid, exposed)
    proxy = proxytype(token, serializer, manager=manager, authkey=authkey,
                      incref=incref, manager_owned=manager_owned)
    proxy._isauto = True
    return proxy


# --------------------------------------------------------------------------
# The proxy types of SyncManager
# --------------------------------------------------------------------------

class IteratorProxy(BaseProxy):
    _exposed_ = ("__next__", "send", "throw", "close")

    def __iter__(self):
        return self

    def __next__(self, *args):
        return self._callmethod("__next__", args)

    def send(self, *args):
        return self._callmethod("send", args)

    def throw(self, *args):
        return self._callmethod("throw", args)

    def close(self, *args):
        return self._callmethod("close", args)


class AcquirerProxy(BaseProxy):
    _exposed_ = ("acquire", "release")

    def acquire(self, blocking=True, timeout=None):
        timeout = _seconds(timeout)
        args = (blocking,) if timeout is None else (blocking, timeout)
        return self._callmethod("acquire", args)

    def release(self):
        return self._callmethod("release")

    def __enter__(self):
        return self._callmethod("acquire")

    def __exit__(self, exc_type, exc_val, exc_tb):
        return self._callmethod("release")


class ConditionProxy(AcquirerProxy):
    _exposed_ = ("acquire", "release", "wait", "notify", "notify_all")

    def wait(self, timeout=None):
        return self._callmethod("wait", (_seconds(timeout),))

    def notify(self, n=1):
        return self._callmethod("notify", (n,))

    def notify_all(self):
        return self._callmethod("notify_all")

    def wait_for(self, predicate, timeout=None):
        timeout = _seconds(timeout)
        result = predicate()
        if result:
            return result
        endtime = None if timeout is None else time.monotonic() + timeout
        waittime = None
        while not result:
            if endtime is not None:
                waittime = endtime - time.monotonic()
                if waittime <= 0:
                    break
            self.wait(waittime)
            result = predicate()
        return result


class EventProxy(BaseProxy):
    _exposed_ = ("is_set", "set", "clear", "wait")

    def is_set(self):
        return self._callmethod("is_set")

    def set(self):
        return self._callmethod("set")

    def clear(self):
        return self._callmethod("clear")

    def wait(self, timeout=None):
        return self._callmethod("wait", (_seconds(timeout),))


class BarrierProxy(BaseProxy):
    _exposed_ = ("__getattribute__", "wait", "abort", "reset")

    def wait(self, timeout=None):
        return self._callmethod("wait", (_seconds(timeout),))

    def abort(self):
        return self._callmethod("abort")

    def reset(self):
        return self._callmethod("reset")

    @property
    def parties(self):
        return self._callmethod("__getattribute__", ("parties",))

    @property
    def n_waiting(self):
        return self._callmethod("__getattribute__", ("n_waiting",))

    @property
    def broken(self):
        return self._callmethod("__getattribute__", ("broken",))


class NamespaceProxy(BaseProxy):
    _exposed_ = ("__getattribute__", "__setattr__", "__delattr__")

    def __getattr__(self, key):
        if key[0] == "_":
            return object.__getattribute__(self, key)
        callmethod = object.__getattribute__(self, "_callmethod")
        return callmethod("__getattribute__", (key,))

    def __setattr__(self, key, value):
        if key[0] == "_":
            return object.__setattr__(self, key, value)
        callmethod = object.__getattribute__(self, "_callmethod")
        return callmethod("__setattr__", (key, value))

    def __delattr__(self, key):
        if key[0] == "_":
            return object.__delattr__(self, key)
        callmethod = object.__getattribute__(self, "_callmethod")
        return callmethod("__delattr__", (key,))


class ValueProxy(BaseProxy):
    _exposed_ = ("get", "set")

    def get(self):
        return self._callmethod("get")

    def set(self, value):
        return self._callmethod("set", (value,))

    value = property(get, set)

    __class_getitem__ = classmethod(types.GenericAlias)


BaseListProxy = MakeProxyType("BaseListProxy", (
    "__add__", "__contains__", "__delitem__", "__getitem__", "__len__",
    "__mul__", "__reversed__", "__rmul__", "__setitem__",
    "append", "count", "extend", "index", "insert", "pop", "remove",
    "reverse", "sort", "__imul__"))


class ListProxy(BaseListProxy):
    def __iadd__(self, value):
        self._callmethod("extend", (value,))
        return self

    def __imul__(self, value):
        self._callmethod("__imul__", (value,))
        return self

    __class_getitem__ = classmethod(types.GenericAlias)


DictProxy = MakeProxyType("DictProxy", (
    "__contains__", "__delitem__", "__getitem__", "__iter__", "__len__",
    "__setitem__", "clear", "copy", "get", "items",
    "keys", "pop", "popitem", "setdefault", "update", "values"))
DictProxy._method_to_typeid_ = {"__iter__": "Iterator"}
DictProxy.__class_getitem__ = classmethod(types.GenericAlias)

ArrayProxy = MakeProxyType("ArrayProxy", ("__len__", "__getitem__", "__setitem__"))

BasePoolProxy = MakeProxyType("PoolProxy", (
    "apply", "apply_async", "close", "imap", "imap_unordered", "join",
    "map", "map_async", "starmap", "starmap_async", "terminate"))
BasePoolProxy._method_to_typeid_ = {
    "apply_async": "AsyncResult",
    "map_async": "AsyncResult",
    "starmap_async": "AsyncResult",
    "imap": "Iterator",
    "imap_unordered": "Iterator",
}


class PoolProxy(BasePoolProxy):
    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.terminate()


class _Queue(queue.Queue):
    """The queue a SyncManager serves: ``queue.Queue``, whose timeouts are
    read by mpx's rule (its proxy is generic, so the check is made here):
    NaN is a ValueError (``queue.Queue`` would wait for ever), infinity
    waits for ever (``queue.Queue`` would raise OverflowError)."""

    def get(self, block=True, timeout=None):
        return super().get(block, _seconds(timeout) if block else timeout)

    def put(self, item, block=True, timeout=None):
        return super().put(item, block, _seconds(timeout) if block else timeout)


class SyncManager(BaseManager):
    """A manager serving the types of ``multiprocessing.Manager()``: dict,
    list, Namespace, Queue, JoinableQueue, Lock, RLock, Semaphore,
    BoundedSemaphore, Condition, Event, Barrier, Value, Array and Pool."""


SyncManager.register("Queue", _Queue)
SyncManager.register("JoinableQueue", _Queue)
SyncManager.register("Event", threading.Event, EventProxy)
SyncManager.register("Lock", threading.Lock, AcquirerProxy)
SyncManager.register("RLock", threading.RLock, AcquirerProxy)
SyncManager.register("Semaphore", threading.Semaphore, AcquirerProxy)
SyncManager.register("BoundedSemaphore", threading.BoundedSemaphore, AcquirerProxy)
SyncManager.register("Condition", threading.Condition, ConditionProxy)
SyncManager.register("Barrier", threading.Barrier, BarrierProxy)
SyncManager.register("Pool", ManagedPool, PoolProxy)
SyncManager.register("list", list, ListProxy)
SyncManager.register("dict", dict, DictProxy)
SyncManager.register("Value", Value, ValueProxy)
SyncManager.register("Array", Array, ArrayProxy)
SyncManager.register("Namespace", Namespace, NamespaceProxy)
# types returned by methods of PoolProxy
SyncManager.register("Iterator", proxytype=IteratorProxy, create_method=False)
SyncManager.register("AsyncResult", create_method=False)


def __getattr__(name):
    try:
        return getattr(_std, name)
    except AttributeError:
        raise AttributeError(f"module 'mpx.managers' has no attribute {name!r}") from None
