# Types of mpx.connection. Connection[T] is an end that sends and receives
# T. It is declared a subclass of typeshed's two-parameter Connection (send
# type, receive type), as it is at run time, so an mpx end goes wherever a
# stdlib one does (multiprocessing.connection.wait, ...); the methods and
# their types are typeshed's. At run time the shm backend's ends are not
# stdlib objects, but mpx.connection.Connection's instance check accepts
# them (see connection.py), which is what this declaration promises.

from multiprocessing import connection as _std
from multiprocessing.connection import (
    Client as Client,
    Listener as Listener,
    answer_challenge as answer_challenge,
    deliver_challenge as deliver_challenge,
    wait as wait,
)
from os import PathLike
from types import GenericAlias
from typing import Any, Literal, SupportsIndex, overload

from typing_extensions import TypeVar

from .context import _SerializerSpec

__all__ = ["Client", "Listener", "Pipe", "wait"]

# A bare Connection means Connection[Any], as in typeshed.
_T = TypeVar("_T", default=Any)


class Connection(_std.Connection[_T, _T]):
    # Connection(handle) builds a stdlib connection on an OS descriptor.
    def __init__(self, handle: SupportsIndex, readable: bool = True,
                 writable: bool = True) -> None: ...
    def __class_getitem__(cls, item: Any, /) -> GenericAlias: ...
    # Awaitable (mpx._aio): the loop is not blocked while they wait.
    async def recv_async(self) -> _T: ...
    async def send_async(self, obj: _T) -> None: ...
    async def poll_async(self, timeout: float | None = 0.0) -> bool: ...


@overload
def Pipe(duplex: bool = True, *, backend: Literal["fifo"], path: str | PathLike[str],
         end: Literal[0, 1], serializer: _SerializerSpec = None,
         timeout: float | None = None, mode: int = 0o600) -> Connection[Any]: ...
@overload
def Pipe(duplex: bool = True, *, backend: str | None = None, serializer: _SerializerSpec = None,
         **kwargs: Any) -> tuple[Connection[Any], Connection[Any]]: ...

def unlink_fifo(path: str | PathLike[str]) -> None: ...
