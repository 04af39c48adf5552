"""The server: the process that owns the shared objects and answers
requests, and the Pool a SyncManager serves.

(A part of mpx.managers: see its docstring.)
"""

import collections
import itertools
import math
import os
import pickle
import socket
import threading
import time
from multiprocessing import AuthenticationError
from multiprocessing import pool as _mp_pool
from multiprocessing import process, util

from .. import _serial
from .. import backends as _registry
from ._common import (DEFAULT_TRANSIT_TIMEOUT, MAX_HANDSHAKES, RemoteError, _ADMIT_WAIT,
                      _ERROR, _ONE_WAY, _PROTOCOL, _PROXY, _RETURN, _backend_for_address,
                      _error_reply, _log, _manager_serializer, _positive_seconds,
                      _transport, public_methods)
from ._client import _count_down, _peers

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
