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

The package's parts, along the seams of the protocol:

- ``_common``: the wire's constants, ``Token``, the transports (the
  registry's Manager backends) and how errors cross the wire;
- ``_client``: one ``_Peer`` per (process, manager), across fork and exit;
- ``_server``: ``Server``, and the Pool a SyncManager serves;
- ``_proxies``: ``BaseProxy``, ``RebuildProxy``, ``MakeProxyType``,
  ``AutoProxy``;
- ``_managers``: ``BaseManager``;
- ``_sync``: ``SyncManager`` and the proxy types it registers.

This module is their public face: every public name is here, under this
module's name.
"""

import multiprocessing.managers as _std
from multiprocessing import AuthenticationError  # noqa: F401  (as before the split)

from ._common import (Array, Namespace, RemoteError, RemoteTraceback, State, Token, Value,
                      all_methods, public_methods)
from ._common import (DEFAULT_TRANSIT_TIMEOUT, MAX_HANDSHAKES, _ERROR, _PROXY, _REMOTE,
                      _RETURN)  # noqa: F401
from ._client import _oneshot, _peers  # noqa: F401  (tests reach in for these)
from ._server import ManagedPool, Server  # noqa: F401
from ._proxies import AutoProxy, BaseProxy, MakeProxyType, RebuildProxy
from ._managers import BaseManager
from ._sync import (AcquirerProxy, ArrayProxy, BarrierProxy, BaseListProxy, BasePoolProxy,
                    ConditionProxy, DictProxy, EventProxy, IteratorProxy, ListProxy,
                    NamespaceProxy, PoolProxy, SyncManager, ValueProxy)

__all__ = ["BaseManager", "SyncManager", "BaseProxy", "Token", "Server",
           "Namespace", "Value", "Array", "RemoteError", "RemoteTraceback",
           "MakeProxyType", "AutoProxy", "RebuildProxy", "IteratorProxy",
           "AcquirerProxy", "ConditionProxy", "EventProxy", "BarrierProxy",
           "NamespaceProxy", "ValueProxy", "BaseListProxy", "ListProxy",
           "DictProxy", "ArrayProxy", "BasePoolProxy", "PoolProxy",
           "public_methods", "all_methods", "State"]

# Every public class and function keeps this module's name as its
# __module__, as before the split: a proxy pickles its type by reference
# (and the types MakeProxyType makes would otherwise name the part where
# they are not defined), and reprs and tracebacks stay the same.
for _name in __all__:
    if getattr(globals()[_name], "__module__", "").startswith(__name__ + "."):
        globals()[_name].__module__ = __name__
del _name


def __getattr__(name):
    try:
        return getattr(_std, name)
    except AttributeError:
        raise AttributeError(f"module 'mpx.managers' has no attribute {name!r}") from None
