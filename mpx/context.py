"""mpx's contexts: the stdlib's, with factories that take ``backend=``.

``mpx.get_context(method)`` returns an :class:`MpxContext` for 'fork',
'spawn' or 'forkserver', or for a start method another library registered
with the stdlib (loky's "loky"). It is a subclass of the stdlib's (or that
library's) context for that method, so ``Process``, ``Lock``, ``Value``,
... are exactly the stdlib's (or that library's), while ``Queue``,
``SimpleQueue``, ``JoinableQueue``, ``PriorityQueue``, ``Pipe``, ``Pool``,
``SharedArray`` and ``Manager`` ask the backend registry. The context is the one seam between the public surface and the
backends.

The default context shares its start method with the stdlib's default
context (``mpx.set_start_method`` is ``multiprocessing.set_start_method``),
so a program that mixes ``mpx`` and ``multiprocessing`` never disagrees with
itself about how processes start.

Names this module does not define are looked up in
``multiprocessing.context``, so ``from mpx.context import X`` works for
every X the stdlib module has.
"""

import inspect
import multiprocessing
import multiprocessing.context as _std
import types

from . import _serial
from . import backends as _registry

__all__ = ["MpxContext", "MpxDefaultContext", "get_context", "default_context"]



def sharedarray_class():
    """mpx.sharedarray.SharedArray, or an ImportError that says how to get
    numpy, which SharedArray needs and mpx itself does not."""
    try:
        from .sharedarray import SharedArray
    except ModuleNotFoundError as e:
        if e.name != "numpy":
            raise
        raise ModuleNotFoundError(
            "mpx.SharedArray needs numpy, which is not installed: "
            "pip install 'mpx[numpy]' (or numpy itself)", name="numpy") from None
    return SharedArray


class _BoundFactory:
    # What ``ctx.Queue`` (and so ``mpx.Queue``) is: the bound method
    # ``types.MethodType(func, ctx)`` would be, plus ``__getitem__``, so that
    # ``mpx.Queue[int]`` works at run time as it does for type checkers (the
    # stubs declare ``mpx.Queue`` a generic class, as typeshed does for
    # ``multiprocessing.Queue``). A bound method cannot be subscripted, and
    # ``types.MethodType`` cannot be subclassed, hence this small class that
    # keeps a method's interface: ``__func__``/``__self__`` (which
    # tests/test_surface.py checks), the function's attributes (``__name__``,
    # ``__doc__``, ...), equality, the pickled form ``getattr(ctx, name)``,
    # and ``__get__`` returning itself (stored on a class, it stays bound).
    # The type argument exists only for the checker: ``mpx.Queue[int](...)``
    # is ``mpx.Queue(...)``, as ``list[int]()`` is ``list()``.
    # (No class docstring: ``__doc__`` below is the function's, as a bound
    # method's is.)

    __slots__ = ("__func__", "__self__")

    def __init__(self, func, ctx):
        self.__func__ = func
        self.__self__ = ctx

    def __call__(self, /, *args, **kwargs):
        return self.__func__(self.__self__, *args, **kwargs)

    def __getitem__(self, item):
        return self

    def __get__(self, obj, objtype=None):
        return self

    def __getattr__(self, name):
        # Only reached for names the class lacks: __name__, __qualname__,
        # __defaults__, ... come from the function, as for a bound method.
        # (An object whose slots were never set must not recurse here.)
        if name in _BoundFactory.__slots__:
            raise AttributeError(name)
        return getattr(self.__func__, name)

    @property
    def __doc__(self):
        return self.__func__.__doc__

    @property
    def __wrapped__(self):
        return types.MethodType(self.__func__, self.__self__)

    @property
    def __signature__(self):
        # inspect.signature and help() show the call without `self`.
        return inspect.signature(self.__wrapped__)

    def __eq__(self, other):
        if not isinstance(other, _BoundFactory):
            return NotImplemented
        return self.__func__ is other.__func__ and self.__self__ is other.__self__

    def __hash__(self):
        return hash((self.__func__, id(self.__self__)))

    def __reduce__(self):
        return (getattr, (self.__self__, self.__func__.__name__))

    def __repr__(self):
        return f"<bound factory {self.__func__.__qualname__} of {self.__self__!r}>"


class _family:
    """Decorator for the context methods that make generic objects (the
    queues): on a context the method is a :class:`_BoundFactory`; on the
    class, the plain function, as for any method."""

    __slots__ = ("__func__",)

    def __init__(self, func):
        self.__func__ = func

    def __get__(self, ctx, owner=None):
        if ctx is None:
            return self.__func__
        return _BoundFactory(self.__func__, ctx)


class _MpxFactories:
    """The families mpx implements, as methods of an mpx context."""

    def _make(self, family, backend, serializer, args, kwargs):
        name, module = _registry.resolve(family, backend)
        return getattr(module, family)(self, *args,
                                       serializer=_serial.get_serializer(serializer),
                                       **kwargs)

    @_family
    def Queue(self, maxsize=0, *, backend=None, serializer=None, **kwargs):
        """A FIFO queue between processes (``multiprocessing.Queue`` API)."""
        return self._make("Queue", backend, serializer, (maxsize,), kwargs)

    @_family
    def SimpleQueue(self, *, backend=None, serializer=None, **kwargs):
        """An unbounded FIFO queue (``multiprocessing.SimpleQueue`` API)."""
        return self._make("SimpleQueue", backend, serializer, (), kwargs)

    @_family
    def JoinableQueue(self, maxsize=0, *, backend=None, serializer=None, **kwargs):
        """A Queue with ``task_done``/``join``."""
        return self._make("JoinableQueue", backend, serializer, (maxsize,), kwargs)

    @_family
    def PriorityQueue(self, maxsize=0, *, backend=None, serializer=None, **kwargs):
        """A queue whose ``get`` returns the highest priority first."""
        return self._make("PriorityQueue", backend, serializer, (maxsize,), kwargs)

    def Pipe(self, duplex=True, *, backend=None, serializer=None, **kwargs):
        """A pair of connections (``multiprocessing.Pipe`` API)."""
        return self._make("Pipe", backend, serializer, (duplex,), kwargs)

    def SharedArray(self, shape, dtype=float, *, backend=None, **kwargs):
        """A numpy array in shared memory (see :class:`mpx.sharedarray.SharedArray`)."""
        return sharedarray_class()(shape, dtype, backend=backend, **kwargs)

    def Manager(self, *, backend=None, address=None, authkey=None, serializer=None,
                **kwargs):
        """A started :class:`mpx.managers.SyncManager` (``multiprocessing.Manager()``
        API) serving over `backend` ("shm", "unix" or "tcp"; the fastest
        available by default). Other keywords go to SyncManager (ssl_context,
        client_ssl_context, transit_timeout, shutdown_timeout, ...)."""
        name, _ = _registry.resolve("Manager", backend)
        from .managers import SyncManager
        manager = SyncManager(address=address, authkey=authkey,
                              serializer=serializer or "pickle",
                              ctx=self.get_context(), backend=name, **kwargs)
        manager.start()
        return manager

    def Pool(self, processes=None, initializer=None, initargs=(), maxtasksperchild=None,
             context=None, *, backend=None, serializer=None, ray_address=None,
             ray_remote_args=None):
        """mpx's process pool (:class:`mpx.pool.Pool`: the stdlib Pool's API,
        tasks and results over mpx queues). Its workers start with this
        context's start method unless `context` names another.
        ``backend="ray"``: the workers are Ray actors on the cluster at
        `ray_address` (or ``$RAY_ADDRESS``, or a local instance)."""
        from .pool import Pool
        return Pool(processes, initializer, initargs, maxtasksperchild,
                    self if context is None else context, backend=backend,
                    serializer=serializer, ray_address=ray_address,
                    ray_remote_args=ray_remote_args)

    def backends(self):
        """The registry table: see :func:`mpx.backends.backends`."""
        return _registry.backends()


class MpxContext(_MpxFactories):
    """Base of the per-start-method contexts below."""

    def stdlib_context(self):
        """The stdlib context with the same start method."""
        return multiprocessing.get_context(self._name)

    def get_context(self, method=None):
        if method is None:
            return self
        return get_context(method)

    def __repr__(self):
        return f"<mpx context {self._name!r}>"

    def __reduce__(self):
        return (get_context, (self._name,))


class ForkContext(MpxContext, _std.ForkContext):
    pass


class SpawnContext(MpxContext, _std.SpawnContext):
    pass


class ForkServerContext(MpxContext, _std.ForkServerContext):
    pass


_CONTEXTS = {
    "fork": ForkContext(),
    "spawn": SpawnContext(),
    "forkserver": ForkServerContext(),
}


def _context_for(method):
    """The mpx context of start method `method`: one of the three above, or,
    for a start method another library registered with the stdlib (loky
    puts "loky" in ``multiprocessing.context._concrete_contexts`` and sets
    it in its workers), mpx's factories on top of that library's context
    (made once, on first use). ValueError for a method the stdlib does not
    know either."""
    ctx = _CONTEXTS.get(method)
    if ctx is not None:
        return ctx
    std = _std._concrete_contexts.get(method) if isinstance(method, str) else None
    if std is None:
        raise ValueError(f"cannot find context for {method!r}; choose one of "
                         f"{sorted(set(_CONTEXTS) | set(_std._concrete_contexts))}")
    base = type(std)
    cls = type(base.__name__, (MpxContext, base),
               {"__module__": __name__, "__qualname__": base.__name__,
                "__doc__": f"mpx's factories on {base.__module__}.{base.__qualname__}."})
    # The library's instance may carry state of its own: copy it, without
    # calling an __init__ whose arguments we cannot know.
    ctx = cls.__new__(cls)
    ctx.__dict__.update(getattr(std, "__dict__", {}))
    return _CONTEXTS.setdefault(method, ctx)


class MpxDefaultContext(_MpxFactories, _std.BaseContext):
    """The context behind ``mpx.Queue`` & co: it follows the stdlib's default
    start method, which ``set_start_method`` sets for both."""

    _name = None

    def _actual(self):
        return _context_for(multiprocessing.get_start_method())

    def get_context(self, method=None):
        if method is None:
            return self._actual()
        return _context_for(method)

    def stdlib_context(self):
        return self._actual().stdlib_context()

    def get_start_method(self, allow_none=False):
        return multiprocessing.get_start_method(allow_none)

    def set_start_method(self, method, force=False):
        multiprocessing.set_start_method(method, force)

    def get_all_start_methods(self):
        return multiprocessing.get_all_start_methods()

    @property
    def Process(self):
        return multiprocessing.Process

    def _make(self, family, backend, serializer, args, kwargs):
        return self._actual()._make(family, backend, serializer, args, kwargs)

    def __repr__(self):
        return "<mpx default context>"

    def __reduce__(self):
        # Pickled by reference, so that what pickles as getattr(context,
        # name) (mpx.Queue, a bound factory) comes back bound to this very
        # object in the receiving process.
        return "default_context"


default_context = MpxDefaultContext()


def get_context(method=None):
    """An mpx context for `method` ('fork', 'spawn', 'forkserver', or a
    start method another library registered with the stdlib, such as
    loky's), or the default start method's when None."""
    return default_context.get_context(method)


def __getattr__(name):
    try:
        return getattr(_std, name)
    except AttributeError:
        raise AttributeError(f"module 'mpx.context' has no attribute {name!r}") from None
