"""Proxies: BaseProxy, RebuildProxy, MakeProxyType and AutoProxy.

(A part of mpx.managers: see its docstring.)
"""

import os
from multiprocessing import process, util
from multiprocessing.context import get_spawning_popen

from .. import _serial
from ._common import (Token, _ERROR, _PROTOCOL, _PROXY, _RETURN, _backend_for_address,
                      _hashable_address, _manager_serializer, _pickle_dumps, _pickle_loads,
                      _raise_reply)
from ._client import _authkeys, _client_opts, _generation, _oneshot, _peer, _peers

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
    # (As the module's public face names them; see mpx/managers/__init__.py.)
    dic["__module__"] = "mpx.managers"
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
