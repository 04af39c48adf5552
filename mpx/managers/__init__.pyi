# Types of mpx.managers. mpx's managers keep multiprocessing.managers' API
# (it is their contract) but are classes of their own at run time. They are
# declared here as subclasses of typeshed's, with mpx's extra arguments, so
# that a manager's methods (dict(), list(), Queue(), Lock(), ...) carry
# typeshed's types and an mpx manager goes wherever a stdlib one is expected.
# The one thing that declaration gets wrong: isinstance() against the
# stdlib's classes is False for mpx's managers.
#
# The module's other names (the proxy types, Server, MakeProxyType, ...)
# are not typed yet: __getattr__ below makes them Any rather than errors.

from _typeshed import Incomplete
from collections.abc import Callable, Iterable
from multiprocessing import managers as _std
from multiprocessing.context import BaseContext
from multiprocessing.managers import Namespace as Namespace, RemoteError as RemoteError
from typing import Any

from ..context import _SerializerSpec

__all__ = ["BaseManager", "SyncManager", "BaseProxy", "Token", "Server",
           "Namespace", "Value", "Array", "RemoteError", "RemoteTraceback",
           "MakeProxyType", "AutoProxy", "RebuildProxy", "IteratorProxy",
           "AcquirerProxy", "ConditionProxy", "EventProxy", "BarrierProxy",
           "NamespaceProxy", "ValueProxy", "BaseListProxy", "ListProxy",
           "DictProxy", "ArrayProxy", "BasePoolProxy", "PoolProxy",
           "public_methods", "all_methods", "State"]

DEFAULT_TRANSIT_TIMEOUT: float


class Token(_std.Token):
    backend: str | None
    def __init__(self, typeid: bytes | str | None, address: Any,
                 id: str | bytes | int | None, backend: str | None = None) -> None: ...


class BaseManager(_std.BaseManager):
    # `address`: a path (unix socket), a (host, port) tuple (TCP) or None;
    # `ssl_context`/`client_ssl_context`: an ssl.SSLContext, or a picklable
    # callable that returns one.
    def __init__(self, address: Any = None, authkey: bytes | None = None,
                 serializer: _SerializerSpec | str = "pickle", ctx: BaseContext | None = None,
                 *, shutdown_timeout: float = 1.0, backend: str | None = None,
                 ssl_context: Any = None, client_ssl_context: Any = None,
                 transit_timeout: float = ..., handshake_timeout: float | None = None) -> None: ...
    def start(self, initializer: Callable[..., object] | None = None,
              initargs: Iterable[Any] = ()) -> None: ...
    # A method here (the stdlib's is a Finalize set by start()).
    def shutdown(self) -> None: ...  # type: ignore[override]
    def join(self, timeout: float | None = None) -> None: ...


class SyncManager(BaseManager, _std.SyncManager): ...


def __getattr__(name: str) -> Incomplete: ...
