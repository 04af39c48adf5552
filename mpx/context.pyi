# Types of mpx's contexts. At run time MpxContext is a mixin that only its
# three subclasses (fork, spawn, forkserver) put on a stdlib context; here
# it is declared a BaseContext, which every instance of it is, so that
# mpx.get_context() has the whole context API (Process, Lock, Value, ...).
#
# ctx.Queue and the other queue factories are mpx.context._BoundFactory
# objects at run time: callable, and subscriptable for the type. A checker
# reads `ctx.Queue[int]` as indexing, so each family gets a callable type
# below whose __getitem__ takes the item type and gives a factory of queues
# of that type. An item type that is not a class (`int | None`, a Callable)
# gives a queue of Any here: annotate the variable instead
# (`q: mpx.Queue[int | None] = ctx.Queue()`).
#
# Where an mpx context's factories return mpx's queues instead of the
# stdlib's, they do not fit BaseContext's declarations, and say so with
# "type: ignore[override]"/"[assignment]": that difference is the point.

from collections.abc import Callable, Iterable
from multiprocessing import context as _std
from multiprocessing.context import (
    AuthenticationError as AuthenticationError,
    BaseContext as BaseContext,
    BufferTooShort as BufferTooShort,
    DefaultContext as DefaultContext,
    ForkProcess as ForkProcess,
    ForkServerProcess as ForkServerProcess,
    Process as Process,
    ProcessError as ProcessError,
    SpawnProcess as SpawnProcess,
    TimeoutError as TimeoutError,
    assert_spawning as assert_spawning,
    get_spawning_popen as get_spawning_popen,
    set_spawning_popen as set_spawning_popen,
)
from multiprocessing.process import BaseProcess
from os import PathLike
from typing import Any, ClassVar, Generic, Literal, Protocol, TypeVar, overload, type_check_only

import numpy as np
from numpy.typing import DTypeLike
from typing_extensions import TypeAlias

from . import JoinableQueue, PriorityQueue, Queue, SimpleQueue
from .backends import BackendTable
from .connection import Connection
from .managers import SyncManager
from .pool import Pool as _MpxPool
from .sharedarray import SharedArray, _ShapeLike

__all__ = ["MpxContext", "MpxDefaultContext", "get_context", "default_context"]

_T = TypeVar("_T")
_S = TypeVar("_S")
_ScalarT = TypeVar("_ScalarT", bound=np.generic)


@type_check_only
class _Serializer(Protocol):
    # Any object with these two (a module such as json included).
    def dumps(self, obj: Any, /) -> Any: ...
    def loads(self, data: Any, /) -> Any: ...

# What serializer= takes on every factory (None: "pickle").
_SerializerSpec: TypeAlias = Literal["pickle", "cloudpickle"] | _Serializer | None


@type_check_only
class _MakesQueue(Generic[_T]):
    def __call__(self, maxsize: int = 0, *, backend: str | None = None,
                 serializer: _SerializerSpec = None, **kwargs: Any) -> Queue[_T]: ...

@type_check_only
class _QueueFactory(_MakesQueue[Any]):
    __func__: Callable[..., Queue[Any]]
    __self__: BaseContext
    @overload
    def __getitem__(self, item: type[_S], /) -> _MakesQueue[_S]: ...
    @overload
    def __getitem__(self, item: object, /) -> _MakesQueue[Any]: ...

@type_check_only
class _MakesJoinableQueue(Generic[_T]):
    def __call__(self, maxsize: int = 0, *, backend: str | None = None,
                 serializer: _SerializerSpec = None, **kwargs: Any) -> JoinableQueue[_T]: ...

@type_check_only
class _JoinableQueueFactory(_MakesJoinableQueue[Any]):
    __func__: Callable[..., JoinableQueue[Any]]
    __self__: BaseContext
    @overload
    def __getitem__(self, item: type[_S], /) -> _MakesJoinableQueue[_S]: ...
    @overload
    def __getitem__(self, item: object, /) -> _MakesJoinableQueue[Any]: ...

@type_check_only
class _MakesSimpleQueue(Generic[_T]):
    def __call__(self, *, backend: str | None = None, serializer: _SerializerSpec = None,
                 **kwargs: Any) -> SimpleQueue[_T]: ...

@type_check_only
class _SimpleQueueFactory(_MakesSimpleQueue[Any]):
    __func__: Callable[..., SimpleQueue[Any]]
    __self__: BaseContext
    @overload
    def __getitem__(self, item: type[_S], /) -> _MakesSimpleQueue[_S]: ...
    @overload
    def __getitem__(self, item: object, /) -> _MakesSimpleQueue[Any]: ...

@type_check_only
class _MakesPriorityQueue(Generic[_T]):
    def __call__(self, maxsize: int = 0, *, backend: str | None = None,
                 serializer: _SerializerSpec = None, **kwargs: Any) -> PriorityQueue[_T]: ...

@type_check_only
class _PriorityQueueFactory(_MakesPriorityQueue[Any]):
    __func__: Callable[..., PriorityQueue[Any]]
    __self__: BaseContext
    @overload
    def __getitem__(self, item: type[_S], /) -> _MakesPriorityQueue[_S]: ...
    @overload
    def __getitem__(self, item: object, /) -> _MakesPriorityQueue[Any]: ...


def sharedarray_class() -> type[SharedArray[Any]]: ...


class _MpxFactories(BaseContext):
    Queue: _QueueFactory  # type: ignore[assignment]
    SimpleQueue: _SimpleQueueFactory  # type: ignore[assignment]
    JoinableQueue: _JoinableQueueFactory  # type: ignore[assignment]
    PriorityQueue: _PriorityQueueFactory

    @overload
    def Pipe(self, duplex: bool = True, *, backend: Literal["fifo"],
             path: str | PathLike[str], end: Literal[0, 1],
             serializer: _SerializerSpec = None, timeout: float | None = None,
             mode: int = 0o600) -> Connection[Any]: ...
    @overload
    def Pipe(self, duplex: bool = True, *, backend: str | None = None,
             serializer: _SerializerSpec = None,
             **kwargs: Any) -> tuple[Connection[Any], Connection[Any]]: ...

    # The same overloads as SharedArray() itself.
    @overload
    def SharedArray(self, shape: _ShapeLike, dtype: type[float] = ..., *,
                    backend: str | None = None, **kwargs: Any) -> SharedArray[np.float64]: ...
    @overload
    def SharedArray(self, shape: _ShapeLike, dtype: type[_ScalarT] | np.dtype[_ScalarT], *,
                    backend: str | None = None, **kwargs: Any) -> SharedArray[_ScalarT]: ...
    @overload
    def SharedArray(self, shape: _ShapeLike, dtype: DTypeLike, *,
                    backend: str | None = None, **kwargs: Any) -> SharedArray[Any]: ...

    def Manager(self, *, backend: str | None = None, address: Any = None,
                authkey: bytes | None = None, serializer: _SerializerSpec = None,
                **kwargs: Any) -> SyncManager: ...
    # mpx's Pool (the stdlib Pool's API, not a subclass of it).
    def Pool(  # type: ignore[override]
        self, processes: int | None = None,
        initializer: Callable[..., object] | None = None, initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None, context: Any | None = None, *,
        backend: str | None = None, serializer: _SerializerSpec = None,
        ray_address: str | None = None,
        ray_remote_args: dict[str, Any] | None = None) -> _MpxPool: ...
    def backends(self) -> BackendTable: ...


class MpxContext(_MpxFactories):
    _name: str
    Process: ClassVar[type[BaseProcess]]
    def stdlib_context(self) -> BaseContext: ...
    @overload  # type: ignore[override]
    def get_context(self, method: None = None) -> MpxContext: ...
    @overload
    def get_context(self, method: Literal["fork"]) -> ForkContext: ...
    @overload
    def get_context(self, method: Literal["spawn"]) -> SpawnContext: ...
    @overload
    def get_context(self, method: Literal["forkserver"]) -> ForkServerContext: ...
    @overload
    def get_context(self, method: str) -> MpxContext: ...


class ForkContext(MpxContext, _std.ForkContext):
    Process: ClassVar[type[ForkProcess]]

class SpawnContext(MpxContext, _std.SpawnContext):
    Process: ClassVar[type[SpawnProcess]]

class ForkServerContext(MpxContext, _std.ForkServerContext):
    Process: ClassVar[type[ForkServerProcess]]


class MpxDefaultContext(_MpxFactories):
    @property
    def Process(self) -> type[Process]: ...
    def get_all_start_methods(self) -> list[str]: ...
    def stdlib_context(self) -> BaseContext: ...
    @overload  # type: ignore[override]
    def get_context(self, method: None = None) -> MpxContext: ...
    @overload
    def get_context(self, method: Literal["fork"]) -> ForkContext: ...
    @overload
    def get_context(self, method: Literal["spawn"]) -> SpawnContext: ...
    @overload
    def get_context(self, method: Literal["forkserver"]) -> ForkServerContext: ...
    @overload
    def get_context(self, method: str) -> MpxContext: ...


default_context: MpxDefaultContext

@overload
def get_context(method: None = None) -> MpxContext: ...
@overload
def get_context(method: Literal["fork"]) -> ForkContext: ...
@overload
def get_context(method: Literal["spawn"]) -> SpawnContext: ...
@overload
def get_context(method: Literal["forkserver"]) -> ForkServerContext: ...
@overload
def get_context(method: str) -> MpxContext: ...
