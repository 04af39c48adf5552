"""``multiprocessing.connection``, with mpx's ``Pipe``.

Every public name of the stdlib module is here (``Listener``, ``Client``,
``wait``, ``Connection``, ...); ``Pipe`` takes ``backend=`` and
``serializer=``. Other (private) names are looked up in the stdlib module.
"""

import multiprocessing.connection as _std

from .context import default_context as _default

__all__ = list(_std.__all__)

for _name in __all__:
    globals()[_name] = getattr(_std, _name)
del _name


def Pipe(duplex=True, *, backend=None, serializer=None, **kwargs):
    """A pair of connection objects; see ``multiprocessing.Pipe``.

    `backend` picks the transport (``mpx.backends()`` lists them); the
    default is the fastest available.
    """
    return _default.Pipe(duplex, backend=backend, serializer=serializer, **kwargs)


def unlink_fifo(path):
    """Remove the named FIFO pair at `path` (see ``mpx.Pipe(backend="fifo")``)."""
    from .backends import resolve
    resolve("Pipe", "fifo")[1].unlink(path)


def __getattr__(name):
    try:
        return getattr(_std, name)
    except AttributeError:
        raise AttributeError(f"module 'mpx.connection' has no attribute {name!r}") from None
