# Types of mpx's drop-in surface (mpx/__init__.py builds it in a loop, which
# no checker can follow). Names that are the stdlib's own objects at run time
# are re-exported from typeshed's multiprocessing; mpx's own are declared here
# or in the stub of the module that defines them.
#
# Queue, SimpleQueue, JoinableQueue and PriorityQueue are factories at run
# time (bound to the default context, as multiprocessing.Queue is), but
# generic classes here, as typeshed declares multiprocessing.Queue: a program
# writes `q: mpx.Queue[int]` and `mpx.Queue[int](maxsize=3)` (mpx.context
# makes the run-time factory subscriptable). Each class lists what every
# backend of its family has, plus the few methods marked otherwise. As with
# multiprocessing.Queue, isinstance() and subclassing need the backend's own
# class, not these names.

from collections.abc import AsyncIterator, Callable, Iterable
from os import PathLike
from types import ModuleType, TracebackType
from typing import Any, ClassVar, Generic, Literal, overload

from typing_extensions import Self, TypeVar

from multiprocessing import (
    Array as Array,
    AuthenticationError as AuthenticationError,
    Barrier as Barrier,
    BoundedSemaphore as BoundedSemaphore,
    BufferTooShort as BufferTooShort,
    Condition as Condition,
    Event as Event,
    Lock as Lock,
    Process as Process,
    ProcessError as ProcessError,
    RLock as RLock,
    RawArray as RawArray,
    RawValue as RawValue,
    Semaphore as Semaphore,
    TimeoutError as TimeoutError,
    Value as Value,
    active_children as active_children,
    allow_connection_pickling as allow_connection_pickling,
    cpu_count as cpu_count,
    current_process as current_process,
    freeze_support as freeze_support,
    get_all_start_methods as get_all_start_methods,
    get_logger as get_logger,
    get_start_method as get_start_method,
    log_to_stderr as log_to_stderr,
    parent_process as parent_process,
    reducer as reducer,
    set_executable as set_executable,
    set_forkserver_preload as set_forkserver_preload,
    set_start_method as set_start_method,
)

from . import backends as _registry, connection as connection, context as context, queues as queues
from ._serial import SerializationError as SerializationError
from ._version import __version__ as __version__
from .connection import Connection
from .context import (
    ForkContext,
    ForkServerContext,
    MpxContext,
    SpawnContext,
    _SerializerSpec,
)
from .managers import SyncManager
from .pool import Pool as _Pool
from .queues import ShutDown as ShutDown
from .sharedarray import SharedArray as SharedArray

__all__ = [
    "Array", "AuthenticationError", "Barrier", "BoundedSemaphore", "BufferTooShort",
    "Condition", "Event", "JoinableQueue", "Lock", "Manager", "Pipe", "Pool",
    "PriorityQueue", "Process", "ProcessError", "Queue", "RLock", "RawArray", "RawValue",
    "Semaphore", "SerializationError", "SharedArray", "ShutDown", "SimpleQueue",
    "TimeoutError", "Value", "active_children", "allow_connection_pickling", "backends",
    "cpu_count", "current_process", "freeze_support", "get_all_start_methods",
    "get_context", "get_logger", "get_start_method", "log_to_stderr", "parent_process",
    "reducer", "set_executable", "set_forkserver_preload", "set_start_method",
]

# The item type; a bare `mpx.Queue` (or `q = mpx.Queue()`) means Queue[Any],
# as a bare Connection does in typeshed, so untyped programs stay valid.
_T = TypeVar("_T", default=Any)


class Queue(Generic[_T]):
    def __init__(self, maxsize: int = 0, *, backend: str | None = None,
                 serializer: _SerializerSpec = None, **kwargs: Any) -> None: ...
    def put(self, obj: _T, block: bool = True, timeout: float | None = None) -> None: ...
    def put_nowait(self, obj: _T) -> None: ...
    def get(self, block: bool = True, timeout: float | None = None) -> _T: ...
    def get_nowait(self) -> _T: ...
    def put_many(self, objs: Iterable[_T], block: bool = True,
                 timeout: float | None = None) -> None: ...
    def get_many(self, max_items: int | None = None, block: bool = True,
                 timeout: float | None = None) -> list[_T]: ...
    # Awaitable (mpx._aio): the loop is not blocked while they wait.
    async def get_async(self, timeout: float | None = None) -> _T: ...
    async def get_many_async(self, max_items: int | None = None,
                             timeout: float | None = None) -> list[_T]: ...
    def __aiter__(self) -> AsyncIterator[_T]: ...
    async def put_async(self, obj: _T, timeout: float | None = None) -> None: ...
    def qsize(self) -> int: ...
    def empty(self) -> bool: ...
    def full(self) -> bool: ...
    def close(self) -> None: ...
    def join_thread(self) -> None: ...
    def cancel_join_thread(self) -> None: ...
    # Only backend="shm" (the default) has shutdown(); later calls raise ShutDown.
    def shutdown(self, immediate: bool = False) -> None: ...
    # Named queues (name=...) exist on every backend but "pipe".
    @property
    def name(self) -> str | None: ...
    def unlink(self) -> None: ...


class JoinableQueue(Queue[_T]):
    def task_done(self) -> None: ...
    # False if `timeout` passed first (backend="pipe", the stdlib's queue,
    # takes no timeout and returns None).
    def join(self, timeout: float | None = None) -> bool: ...


class SimpleQueue(Generic[_T]):
    def __init__(self, *, backend: str | None = None, serializer: _SerializerSpec = None,
                 **kwargs: Any) -> None: ...
    def put(self, obj: _T) -> None: ...
    def get(self) -> _T: ...
    def put_many(self, objs: Iterable[_T]) -> None: ...
    # Awaitable (mpx._aio): the loop is not blocked while they wait.
    async def get_async(self, timeout: float | None = None) -> _T: ...
    async def get_many_async(self, max_items: int | None = None,
                             timeout: float | None = None) -> list[_T]: ...
    def __aiter__(self) -> AsyncIterator[_T]: ...
    async def put_async(self, obj: _T, timeout: float | None = None) -> None: ...
    def empty(self) -> bool: ...
    def close(self) -> None: ...
    # Named queues: backends "shm", "posix" and "sysv" (not the default "pipe").
    @property
    def name(self) -> str | None: ...
    def unlink(self) -> None: ...


class PriorityQueue(Generic[_T]):
    # Not a Queue: put's second positional parameter is the priority.
    PRIORITY_MIN: ClassVar[int]
    PRIORITY_MAX: ClassVar[int]
    def __init__(self, maxsize: int = 0, *, backend: str | None = None,
                 serializer: _SerializerSpec = None, **kwargs: Any) -> None: ...
    def put(self, item: _T, priority: int = 0, block: bool = True,
            timeout: float | None = None) -> None: ...
    def put_nowait(self, item: _T, priority: int = 0) -> None: ...
    def put_many(self, objs: Iterable[_T], block: bool = True, timeout: float | None = None,
                 priority: int = 0) -> None: ...
    def get(self, block: bool = True, timeout: float | None = None) -> _T: ...
    def get_nowait(self) -> _T: ...
    def get_with_priority(self, block: bool = True,
                          timeout: float | None = None) -> tuple[_T, int]: ...
    def get_many(self, max_items: int | None = None, block: bool = True,
                 timeout: float | None = None) -> list[_T]: ...
    # Awaitable (mpx._aio): the loop is not blocked while they wait.
    async def get_async(self, timeout: float | None = None) -> _T: ...
    async def get_many_async(self, max_items: int | None = None,
                             timeout: float | None = None) -> list[_T]: ...
    def __aiter__(self) -> AsyncIterator[_T]: ...
    async def put_async(self, item: _T, timeout: float | None = None,
                        priority: int = 0) -> None: ...
    def qsize(self) -> int: ...
    def empty(self) -> bool: ...
    def full(self) -> bool: ...
    def close(self) -> None: ...
    def join_thread(self) -> None: ...
    def cancel_join_thread(self) -> None: ...
    @property
    def maxsize(self) -> int: ...
    @property
    def name(self) -> str | None: ...
    def unlink(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None: ...


# One end of a named FIFO pair (mpx.Pipe(backend="fifo", path=..., end=0|1))
# is a single connection; every other call gives the two ends.
@overload
def Pipe(duplex: bool = True, *, backend: Literal["fifo"], path: str | PathLike[str],
         end: Literal[0, 1], serializer: _SerializerSpec = None,
         timeout: float | None = None, mode: int = 0o600) -> Connection[Any]: ...
@overload
def Pipe(duplex: bool = True, *, backend: str | None = None, serializer: _SerializerSpec = None,
         **kwargs: Any) -> tuple[Connection[Any], Connection[Any]]: ...

def Manager(*, backend: str | None = None, address: Any = None, authkey: bytes | None = None,
            serializer: _SerializerSpec = None, **kwargs: Any) -> SyncManager: ...

def Pool(processes: int | None = None, initializer: Callable[..., object] | None = None,
         initargs: Iterable[Any] = (), maxtasksperchild: int | None = None,
         context: Any | None = None, *, backend: str | None = None,
         serializer: _SerializerSpec = None, ray_address: str | None = None,
         ray_remote_args: dict[str, Any] | None = None) -> _Pool: ...

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


# mpx.backends is the registry package and, called, its table: a module
# whose class has __call__ (see mpx/backends/__init__.py). A checker cannot
# call a module, so the name is declared as that module class; the
# registry's names are reached through it with their stub types.
class _CallableRegistry(ModuleType):
    def __call__(self) -> _registry.BackendTable: ...
    FAMILIES: ClassVar[tuple[str, ...]]
    BACKENDS: ClassVar[dict[str, tuple[str, tuple[str, ...]]]]
    PREFERENCE: ClassVar[dict[str, tuple[str, ...]]]
    ENV_VAR: ClassVar[str]
    BackendTable = _registry.BackendTable
    backends = staticmethod(_registry.backends)
    resolve = staticmethod(_registry.resolve)
    default_backend = staticmethod(_registry.default_backend)

backends: _CallableRegistry
