# Types of mpx.pool: mpx's Pool and its result classes (typeshed's
# multiprocessing.pool API, plus backend=, serializer=, imap's buffersize=
# and the errors of a dead worker or a broken pool). ThreadPool and the
# stdlib's helpers are the stdlib's own objects.

from collections.abc import Callable, Generator, Iterable, Iterator, Mapping
from multiprocessing import ProcessError
from multiprocessing.context import BaseContext, Process as _Process, TimeoutError as TimeoutError
from multiprocessing.pool import (
    CLOSE as CLOSE,
    INIT as INIT,
    RUN as RUN,
    TERMINATE as TERMINATE,
    ThreadPool as ThreadPool,
)
from types import GenericAlias, TracebackType
from typing import Any, Generic, TypeVar

from typing_extensions import Self

from .context import _SerializerSpec

__all__ = ["Pool", "ThreadPool"]

_S = TypeVar("_S")
_T = TypeVar("_T")

job_counter: Iterator[int]


class WorkerLostError(ProcessError):
    pid: int | None
    exitcode: int | None
    def __init__(self, message: str, pid: int | None = None,
                 exitcode: int | None = None) -> None: ...


class BrokenPoolError(ProcessError): ...


class PoolTerminatedError(ProcessError): ...


class ApplyResult(Generic[_T]):
    def __init__(self, pool: Pool, callback: Callable[[_T], object] | None = None,
                 error_callback: Callable[[BaseException], object] | None = None) -> None: ...
    def ready(self) -> bool: ...
    def successful(self) -> bool: ...
    def wait(self, timeout: float | None = None) -> None: ...
    def get(self, timeout: float | None = None) -> _T: ...
    def __await__(self) -> Generator[Any, None, _T]: ...
    def __class_getitem__(cls, item: Any, /) -> GenericAlias: ...


AsyncResult = ApplyResult


class MapResult(ApplyResult[list[_T]]):
    def __init__(self, pool: Pool, chunksize: int, length: int,
                 callback: Callable[[list[_T]], object] | None = None,
                 error_callback: Callable[[BaseException], object] | None = None) -> None: ...


class IMapIterator(Iterator[_T]):
    def __init__(self, pool: Pool) -> None: ...
    def __iter__(self) -> Self: ...
    def next(self, timeout: float | None = None) -> _T: ...
    def __next__(self, timeout: float | None = None) -> _T: ...
    def __aiter__(self) -> Self: ...
    async def __anext__(self) -> _T: ...


class IMapUnorderedIterator(IMapIterator[_T]): ...


class Pool:
    @staticmethod
    def Process(ctx: BaseContext, *args: Any, **kwds: Any) -> _Process: ...
    def __init__(
        self,
        processes: int | None = None,
        initializer: Callable[..., object] | None = None,
        initargs: Iterable[Any] = (),
        maxtasksperchild: int | None = None,
        context: Any | None = None,
        *,
        backend: str | None = None,
        serializer: _SerializerSpec = None,
        ray_address: str | None = None,
        ray_remote_args: dict[str, Any] | None = None,
    ) -> None: ...
    def apply(self, func: Callable[..., _T], args: Iterable[Any] = (),
              kwds: Mapping[str, Any] = {}) -> _T: ...
    def apply_async(
        self,
        func: Callable[..., _T],
        args: Iterable[Any] = (),
        kwds: Mapping[str, Any] = {},
        callback: Callable[[_T], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> AsyncResult[_T]: ...
    def map(self, func: Callable[[_S], _T], iterable: Iterable[_S],
            chunksize: int | None = None) -> list[_T]: ...
    def starmap(self, func: Callable[..., _T], iterable: Iterable[Iterable[Any]],
                chunksize: int | None = None) -> list[_T]: ...
    def map_async(
        self,
        func: Callable[[_S], _T],
        iterable: Iterable[_S],
        chunksize: int | None = None,
        callback: Callable[[list[_T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> MapResult[_T]: ...
    def starmap_async(
        self,
        func: Callable[..., _T],
        iterable: Iterable[Iterable[Any]],
        chunksize: int | None = None,
        callback: Callable[[list[_T]], object] | None = None,
        error_callback: Callable[[BaseException], object] | None = None,
    ) -> MapResult[_T]: ...
    # chunksize 1 gives an IMapIterator; a larger one an iterator of the
    # same abilities (next(timeout), async for).
    def imap(self, func: Callable[[_S], _T], iterable: Iterable[_S], chunksize: int = 1, *,
             buffersize: int | None = None) -> IMapIterator[_T]: ...
    def imap_unordered(self, func: Callable[[_S], _T], iterable: Iterable[_S],
                       chunksize: int = 1, *,
                       buffersize: int | None = None) -> IMapIterator[_T]: ...
    def close(self) -> None: ...
    def terminate(self) -> None: ...
    def join(self) -> None: ...
    def __enter__(self) -> Self: ...
    def __exit__(self, exc_type: type[BaseException] | None, exc_val: BaseException | None,
                 exc_tb: TracebackType | None) -> None: ...
    def __del__(self) -> None: ...


def __getattr__(name: str) -> Any: ...
