"""``multiprocessing.connection``, with mpx's ``Pipe``.

Every public name of the stdlib module is here (``Listener``, ``Client``,
``wait``, ``Connection``, ...); ``Pipe`` takes ``backend=`` and
``serializer=``. Other (private) names are looked up in the stdlib module.
"""

import sys
import types
import multiprocessing.connection as _std

from .context import default_context as _default

__all__ = list(_std.__all__)

for _name in __all__:
    globals()[_name] = getattr(_std, _name)
del _name


# mpx.connection.Connection has three jobs, and the stdlib's class itself
# (which this name used to be) can do only the first two:
#  1. Connection(handle, readable=True, writable=True) builds a stdlib
#     connection, as CPython code and programs do; the object must be
#     exactly multiprocessing.connection.Connection, since pickling looks
#     up its reducer by exact type (copyreg, ForkingPickler).
#  2. isinstance(obj, Connection) is true for every stdlib connection, and
#     so for the pipe and fifo backends' ends (they subclass it).
#  3. Connection[bytes] works at run time, as the stubs make it generic.
# Giving the stdlib class a __class_getitem__ would do it, but would change
# the stdlib for every program that imports mpx. So this is a subclass with
# a metaclass: calling the class itself gives the stdlib object (a user's
# subclass is built as usual), and its instance checks ask the stdlib class.
# They also accept the shm backend's ends, which have the same API without
# a stdlib base (they hold rings, not one descriptor): every end mpx.Pipe
# returns is then a Connection, which is what the stubs declare. Its class
# is looked up in sys.modules only, because no such end can exist before
# that module is imported; the surface never imports a backend for this.
_API_ONLY = (("mpx.backends.shm.pipe", "Connection"),)


def _is_connection_class(cls):
    if issubclass(cls, _std.Connection):
        return True
    for modname, clsname in _API_ONLY:
        module = sys.modules.get(modname)
        if module is not None and issubclass(cls, getattr(module, clsname)):
            return True
    return False


class _ConnectionType(type):
    def __call__(cls, *args, **kwargs):
        if cls is Connection:
            return _std.Connection(*args, **kwargs)
        return super().__call__(*args, **kwargs)

    def __instancecheck__(cls, obj):
        if cls is Connection:
            return _is_connection_class(type(obj))
        return super().__instancecheck__(obj)

    def __subclasscheck__(cls, sub):
        if cls is Connection:
            return _is_connection_class(sub)   # TypeError for a non-class, as before
        return super().__subclasscheck__(sub)


class Connection(_std.Connection, metaclass=_ConnectionType):
    """A connection end (``multiprocessing.connection.Connection`` API).

    ``Connection(handle, readable=True, writable=True)`` makes a stdlib
    connection on an OS descriptor; ``isinstance(end, Connection)`` holds for
    those and for every end :func:`Pipe` returns, whatever its backend.
    ``Connection[T]`` is for type checkers: ends that send and receive T.
    """

    __class_getitem__ = classmethod(types.GenericAlias)


# multiprocessing.reduction.send_handle(conn, fd, pid) and recv_handle(conn)
# reach the socket under a connection through conn.fileno(). An shm Pipe
# end's fileno() is a readiness descriptor (see mpx.backends.shm.pipe),
# and a fifo end or a simplex pipe-backend end has no socket at all. So
# those two functions are wrapped, once, when mpx is imported: an end whose
# class carries descriptors itself (``_send_handle``/``_recv_handle``: the
# shm Pipe passes them on its socket) does so, one that knows it cannot
# (``_handles_error()`` returns the error: fifo, simplex pipe) says so;
# every other object goes to the stdlib's own function, unchanged.
# (mpx.reduction is the stdlib's module itself, so both names see the
# wrapped functions.)
def _wrap_handle_functions():
    import functools
    from multiprocessing import reduction
    if not getattr(reduction, "HAVE_SEND_HANDLE", False):
        return
    std_send, std_recv = reduction.send_handle, reduction.recv_handle
    if getattr(std_send, "__mpx_wrapped__", False):
        return

    def refuse(conn):
        check = getattr(type(conn), "_handles_error", None)
        error = None if check is None else check(conn)
        if error is not None:
            raise error

    @functools.wraps(std_send)
    def send_handle(conn, handle, destination_pid):
        refuse(conn)
        own = getattr(type(conn), "_send_handle", None)
        if own is None:
            return std_send(conn, handle, destination_pid)
        return own(conn, handle, destination_pid)

    @functools.wraps(std_recv)
    def recv_handle(conn):
        refuse(conn)
        own = getattr(type(conn), "_recv_handle", None)
        if own is None:
            return std_recv(conn)
        return own(conn)

    send_handle.__mpx_wrapped__ = recv_handle.__mpx_wrapped__ = True
    reduction.send_handle, reduction.recv_handle = send_handle, recv_handle


_wrap_handle_functions()


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
