# Types of the backend registry. (The package is also callable as
# mpx.backends(): mpx/__init__.pyi declares that.)

from types import ModuleType
from typing import TypedDict

__all__ = ["FAMILIES", "BACKENDS", "PREFERENCE", "BackendTable", "backends", "resolve",
           "default_backend"]

FAMILIES: tuple[str, ...]
# name -> (one line for the table, the backend's module names)
BACKENDS: dict[str, tuple[str, tuple[str, ...]]]
# family -> backend names, fastest first
PREFERENCE: dict[str, tuple[str, ...]]
# module path in records written by an older mpx -> the module today
RENAMED_MODULES: dict[str, str]
ENV_VAR: str
# family -> what a backend module listing it must have
API: dict[str, tuple[str, ...]]


class _Row(TypedDict):
    name: str
    available: bool
    reason: str | None
    families: tuple[str, ...]
    description: str


class BackendTable(list[_Row]): ...


def backends() -> BackendTable: ...
def default_backend(family: str) -> str: ...
def resolve(family: str, backend: str | None = None) -> tuple[str, ModuleType]: ...
def check_module(module: ModuleType) -> list[str]: ...
