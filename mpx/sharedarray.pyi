# Types of mpx.sharedarray. SharedArray[S] is an ndarray of scalar type S
# (np.float64, np.int32, ...) of any shape, so it goes wherever
# numpy.typing.NDArray[S] does. (At run time ndarray's own __class_getitem__
# makes mpx.SharedArray[np.float64] valid.)

from collections.abc import Sequence
from os import PathLike
from typing import Any, Literal, SupportsIndex, TypedDict, overload

import numpy as np
from numpy.typing import ArrayLike, DTypeLike, NDArray
from typing_extensions import Self, TypeAlias, TypeVar

__all__ = ["SharedArray", "InvalidSegmentError", "list_arrays", "unlink", "LAYOUT_VERSION"]

LAYOUT_VERSION: int

_ShapeLike: TypeAlias = SupportsIndex | Sequence[SupportsIndex]
_Order: TypeAlias = Literal["C", "F", "c", "f"]
_Path: TypeAlias = str | PathLike[str]

_ScalarT = TypeVar("_ScalarT", bound=np.generic)
# A bare SharedArray holds any scalar type.
_ScalarT_co = TypeVar("_ScalarT_co", bound=np.generic, covariant=True, default=Any)


class InvalidSegmentError(ValueError): ...


class SharedArray(np.ndarray[tuple[Any, ...], np.dtype[_ScalarT_co]]):
    # dtype float (the default) gives float64, a numpy scalar type or dtype
    # gives that type; any other dtype spelling ("f4", [("x", "i8")]) gives
    # SharedArray[Any].
    @overload
    def __new__(cls, shape: _ShapeLike, dtype: type[float] = ..., *, name: str | None = None,
                backend: str | None = None, order: _Order = "C", mode: int = 0o600,
                path: _Path | None = None) -> SharedArray[np.float64]: ...
    @overload
    def __new__(cls, shape: _ShapeLike, dtype: type[_ScalarT] | np.dtype[_ScalarT], *,
                name: str | None = None, backend: str | None = None, order: _Order = "C",
                mode: int = 0o600, path: _Path | None = None) -> SharedArray[_ScalarT]: ...
    @overload
    def __new__(cls, shape: _ShapeLike, dtype: DTypeLike, *, name: str | None = None,
                backend: str | None = None, order: _Order = "C", mode: int = 0o600,
                path: _Path | None = None) -> SharedArray[Any]: ...

    @classmethod
    def attach(cls, name: str, *, readonly: bool = False, backend: str | None = None,
               mode: int = 0o600) -> Self: ...
    @overload
    @classmethod
    def from_array(cls, arr: NDArray[_ScalarT], name: str | None = None, *,
                   backend: str | None = None, order: _Order | None = None, mode: int = 0o600,
                   path: _Path | None = None) -> SharedArray[_ScalarT]: ...
    @overload
    @classmethod
    def from_array(cls, arr: ArrayLike, name: str | None = None, *, backend: str | None = None,
                   order: _Order | None = None, mode: int = 0o600,
                   path: _Path | None = None) -> SharedArray[Any]: ...
    def unlink(self) -> None: ...
    def flush(self) -> None: ...
    @property
    def name(self) -> str | None: ...
    @property
    def backend(self) -> str | None: ...
    @property
    def is_shared(self) -> bool: ...


class _ArrayRow(TypedDict):
    name: str
    backend: str
    shape: tuple[int, ...]
    dtype: str | None
    bytes: int | None
    owner: str | None
    created: float | None
    path: str | None


def unlink(name: str, *, backend: str | None = None) -> None: ...
def list_arrays() -> list[_ArrayRow]: ...
