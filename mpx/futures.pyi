# Types of mpx.futures: concurrent.futures' process executor API on mpx.Pool
# (plus backend=, serializer= and map's buffersize=).

from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future
from concurrent.futures.process import BrokenProcessPool as BrokenProcessPool
from multiprocessing.context import BaseContext
from typing import Any, TypeVar

from typing_extensions import ParamSpec

from . import pool as _pool
from .context import _SerializerSpec

__all__ = ["ProcessPoolExecutor", "WorkerLostError", "BrokenPoolError", "BrokenProcessPool"]

_T = TypeVar("_T")
_P = ParamSpec("_P")


class WorkerLostError(_pool.WorkerLostError, BrokenProcessPool): ...


class BrokenPoolError(_pool.BrokenPoolError, BrokenProcessPool): ...


class ProcessPoolExecutor(Executor):
    _max_workers: int
    def __init__(self, max_workers: int | None = None, mp_context: BaseContext | None = None,
                 initializer: Callable[..., object] | None = None,
                 initargs: tuple[Any, ...] = (), *, max_tasks_per_child: int | None = None,
                 backend: str | None = None,
                 serializer: _SerializerSpec = None) -> None: ...
    def submit(self, fn: Callable[_P, _T], /, *args: _P.args,
               **kwargs: _P.kwargs) -> Future[_T]: ...
    def map(self, fn: Callable[..., _T], *iterables: Iterable[Any],
            timeout: float | None = None, chunksize: int = 1,
            buffersize: int | None = None) -> Iterator[_T]: ...
    def shutdown(self, wait: bool = True, *, cancel_futures: bool = False) -> None: ...
