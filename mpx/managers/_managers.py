"""BaseManager: starting, connecting to and shutting down a manager, and
register().

(A part of mpx.managers: see its docstring.)
"""

import pickle
import signal
import traceback
from multiprocessing import connection as _mp_connection
from multiprocessing import process, util
from multiprocessing.context import ProcessError
import multiprocessing

from .. import backends as _registry
from .._timeouts import seconds as _seconds
from ._common import (DEFAULT_TRANSIT_TIMEOUT, State, Token, _CONNECT_TIMEOUT, _ERROR,
                      _RETURN, _backend_for_address, _hashable_address, _manager_serializer,
                      _positive_seconds, _raise_creation_reply, _transport)
from ._client import _authkeys, _client_opts, _forget_peer, _oneshot, _peer
from ._server import Server, _portable
from ._proxies import AutoProxy

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
