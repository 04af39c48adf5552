"""What every part of the Manager shares: the wire's constants, Token,
the transports (the backend registry's Manager modules) and how errors
cross the wire.

(A part of mpx.managers: see its docstring.)
"""

import logging
import pickle
import traceback
import multiprocessing.managers as _std

from .. import _serial
from .. import backends as _registry
from .._timeouts import seconds as _seconds


# The stdlib's server-side helper types are plain classes; mpx uses them
# as they are, so values read back with _getvalue() are the same objects.
Namespace = _std.Namespace
Value = _std.Value
Array = _std.Array
RemoteError = _std.RemoteError
State = _std.State
all_methods = _std.all_methods
public_methods = _std.public_methods

# Reply kinds.
_RETURN, _PROXY, _ERROR, _REMOTE = 0, 1, 2, 3

# Control operations a client may ask of the server (ident None).
_ONE_WAY = frozenset({"refs"})

DEFAULT_TRANSIT_TIMEOUT = 600.0
_CONNECT_TIMEOUT = 20.0
# Connections still in the handshake, at most (each has its own thread until
# it is authenticated). A peer that never authenticates costs a thread for
# up to the handshake timeout; without a bound, idle connections alone could
# exhaust the server's threads. When every place is taken, the oldest
# handshake is cut off to make room for the newest: a flood of idle peers
# then only delays a real client by the few milliseconds its own handshake
# takes, where waiting in the kernel's backlog would queue it behind the
# whole flood for their timeouts.
MAX_HANDSHAKES = 32
# How long the accept loop waits for a cut-off handshake to give its place
# back before it closes the new connection instead.
_ADMIT_WAIT = 2.0
_log = logging.getLogger("mpx")
_pickle_dumps = pickle.dumps
_pickle_loads = pickle.loads
_PROTOCOL = _serial.PROTOCOL


class RemoteTraceback(Exception):
    """The server-side traceback of an exception raised in a manager; it is
    the ``__cause__`` of the exception re-raised in the caller."""

    def __init__(self, tb):
        super().__init__(tb)
        self.tb = tb

    def __str__(self):
        return "\n\n(raised in the manager process)\n" + self.tb


class Token(_std.Token):
    """Identifies a shared object: typeid, server address, id, and the
    transport (backend) used to reach the server."""

    __slots__ = ("backend",)

    def __init__(self, typeid, address, id, backend=None):
        super().__init__(typeid, address, id)
        self.backend = backend

    def __getstate__(self):
        return (self.typeid, self.address, self.id, self.backend)

    def __setstate__(self, state):
        if len(state) == 3:
            state = tuple(state) + (None,)
        (self.typeid, self.address, self.id, self.backend) = state


# --------------------------------------------------------------------------
# Transports
# --------------------------------------------------------------------------

def _transport(backend):
    """(name, module) of the Manager transport `backend`."""
    return _registry.resolve("Manager", backend)


def _backend_for_address(address):
    if isinstance(address, (tuple, list)):
        return "tcp"
    if isinstance(address, (str, bytes)):
        return "unix"
    return None


def _hashable_address(address):
    return tuple(address) if isinstance(address, list) else address


def _manager_serializer(spec):
    """The mpx serializer for `spec`; managers read every message with
    pickle.loads, so only serializers writing pickle streams qualify."""
    ser = _serial.get_serializer(spec)
    if not isinstance(ser, _serial.PickleSerializer):
        raise ValueError(f"a manager's serializer must be 'pickle' (the default, with "
                         f"the cloudpickle fallback) or 'cloudpickle', not {spec!r}")
    return ser


def _positive_seconds(value, what, forever):
    """A manager setting in seconds: `forever` for None or infinity, else a
    number > 0 (NaN, negatives and zero are ValueErrors)."""
    if value is None:
        return forever
    given, value = value, _seconds(value, what=what)
    if value is None:
        return forever
    if value <= 0:
        raise ValueError(f"{what} must be a positive number of seconds, not {given!r}")
    return value


# --------------------------------------------------------------------------
# Errors crossing the wire
# --------------------------------------------------------------------------

def _error_reply(exc):
    tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
    return (_ERROR, exc, tb)


# A managed object's constructor that fails: the stdlib raises RemoteError
# (holding the server's traceback as text), mpx the constructor's own
# exception. What mpx raises is both, as SerializationError is both a
# PicklingError and a TypeError: an instance of a class made (once per
# exception type) from RemoteError and that type, carrying the original's
# arguments and attributes, with the server's traceback as its __cause__.
_creation_error_classes = {}


def _creation_error_class(exc_type):
    """The class ``RemoteError[<exc_type>]`` (a subclass of both), or None
    where Python cannot combine the two (a layout conflict)."""
    try:
        return _creation_error_classes[exc_type]
    except KeyError:
        pass
    name = f"RemoteError[{exc_type.__qualname__}]"
    try:
        cls = type(name, (RemoteError, exc_type), {
            "__module__": "mpx.managers", "__qualname__": name,
            "__doc__": f"A manager could not create an object: {exc_type.__qualname__} "
                       f"raised in the server (also a RemoteError, as the stdlib raises).",
            # The original's message, not RemoteError's framed first argument.
            "__str__": exc_type.__str__,
            "__reduce__": _reduce_creation_error,
            "_exc_type": exc_type,
        })
    except TypeError:
        cls = None
    return _creation_error_classes.setdefault(exc_type, cls)


def _constructor_state(exc, exc_type=None):
    """(args, attributes) that rebuild `exc`, as the pickling of its type
    (`exc_type`, default its own) sees them (an OSError's filename is among
    its arguments there, not in .args)."""
    red = (exc_type or type(exc)).__reduce__(exc)
    if isinstance(red, tuple) and len(red) >= 2 and isinstance(red[0], type) \
            and isinstance(exc, red[0]):
        return tuple(red[1]), dict(red[2] or {}) if len(red) > 2 else {}
    return exc.args, dict(vars(exc))


def _reduce_creation_error(self):
    args, state = _constructor_state(self, self._exc_type)
    return (_rebuild_creation_error, (self._exc_type, args, state))


def _rebuild_creation_error(exc_type, args, state):
    cls = _creation_error_class(exc_type) or exc_type
    # __new__ only: BaseException.__new__ keeps the arguments (OSError's
    # parses errno, strerror, filename); the type's own __init__ may want
    # other ones and has run in the server already.
    exc = cls.__new__(cls, *args)
    exc.__dict__.update(state)
    return exc


# The frames that raise a server's exception (and their callers holding the
# reply) drop their references to it on the way out: the exception's
# traceback holds those frames, and a reference back from one of them would
# keep it alive until the cycle collector runs (CPython gh-106558; its
# TestManagerExceptions checks this).

def _raise_creation_reply(kind, payload):
    """_raise_reply for the reply to a "create": an error from the server
    comes out as both RemoteError and its own type."""
    exc = both = None
    try:
        if kind == _ERROR:
            exc, tb = payload
            if isinstance(exc, BaseException) and not isinstance(exc, RemoteError):
                if _creation_error_class(type(exc)) is not None:
                    try:
                        both = _rebuild_creation_error(type(exc), *_constructor_state(exc))
                    except Exception:      # a type whose __new__ wants other arguments
                        both = None
                if both is not None:
                    raise both from RemoteTraceback(tb)
                raise RemoteError(tb) from exc
        _raise_reply(kind, payload)
    finally:
        exc = both = payload = None


def _raise_reply(kind, payload):
    exc = None
    try:
        if kind == _ERROR:
            exc, tb = payload
            if isinstance(exc, BaseException):
                exc.__cause__ = RemoteTraceback(tb)
                raise exc
            raise RemoteError(tb)
        if kind == _REMOTE:
            raise RemoteError(payload)
        raise RemoteError(f"unrecognized reply kind {kind!r} from the manager")
    finally:
        exc = payload = None
