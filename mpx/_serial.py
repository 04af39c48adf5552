"""The one place where mpx turns objects into bytes and back.

Common path: plain ``pickle`` with protocol 5, whose C fast path costs about
the same as calling ``pickle.dumps`` directly. Large contiguous buffers
(bytes-like objects wrapped in ``PickleBuffer``, numpy arrays) can be taken
out of band with :meth:`Serializer.dumps_oob`, so that a transport copies them
once, straight into shared memory.

Only when plain pickle raises for an object (a lambda, a closure, a local
class, a function defined in ``__main__`` under spawn, an object whose type
was registered with ``multiprocessing.reduction.register``) does mpx try again
with the stdlib's ``ForkingPickler`` and then with ``cloudpickle``. Every
result is an ordinary pickle stream, so one ``pickle.loads`` reads them all.

A serializer is chosen per object with ``serializer=``: ``"pickle"`` (the
default, with that fallback), ``"cloudpickle"`` (always), or any object with
``dumps(obj) -> bytes`` and ``loads(bytes) -> obj`` methods.
"""

import copyreg
import importlib
import io
import pickle
import types
from multiprocessing import connection as _mp_connection
from multiprocessing import reduction as _mp_reduction

__all__ = ["Serializer", "PickleSerializer", "CloudpickleSerializer",
           "CustomSerializer", "SerializationError", "get_serializer",
           "DEFAULT_SERIALIZER", "wire_bytes", "loads_custom"]

PROTOCOL = 5

# Plain pickle would pickle a stdlib Connection's bare file-descriptor number,
# which means nothing in another process. The stdlib's own reducer (the one
# its ForkingPickler uses) duplicates the descriptor properly, so plain pickle
# uses it too once mpx is imported.
copyreg.pickle(_mp_connection.Connection, _mp_connection.reduce_connection)

# The errors with which pickle says "I cannot serialize this kind of object";
# anything else (RuntimeError from a Lock pickled outside inheritance, an
# error raised by a user's __reduce__) is the object's own answer and is not
# retried.
_RETRYABLE = (pickle.PicklingError, TypeError, AttributeError)


class SerializationError(pickle.PicklingError, TypeError):
    """An object could not be serialized by any method mpx tried.

    It is both a ``pickle.PicklingError`` and a ``TypeError``, so code written
    for either (the stdlib raises ``TypeError`` for locks and sockets) keeps
    catching it.
    """


class Serializer:
    """Interface every serializer offers to the transports."""

    name = "?"

    def dumps(self, obj):
        """Serialize `obj` to a bytes-like object."""
        raise NotImplementedError

    def loads(self, data):
        """Rebuild an object from what :meth:`dumps` produced."""
        raise NotImplementedError

    def dumps_oob(self, obj):
        """Serialize `obj` as ``(stream, buffers)``.

        ``buffers`` is a list of contiguous memoryviews (possibly empty) that
        the transport carries beside the stream and hands, in order, to
        :meth:`loads_oob`. Serializers that cannot split return ``[]``.
        """
        return self.dumps(obj), []

    def loads_oob(self, data, buffers):
        """Inverse of :meth:`dumps_oob`."""
        return self.loads(data)

    def __reduce__(self):
        # A transport that travels to another process takes its serializer
        # along; the built-in ones are rebuilt by name.
        return (get_serializer, (self.name,))

    def __repr__(self):
        return f"<mpx serializer {self.name!r}>"


def _describe_failure(obj, errors):
    kind = type(obj)
    what = f"{kind.__module__}.{kind.__qualname__}"
    tried = "; ".join(f"{how}: {type(e).__name__}: {e}" for how, e in errors)
    return f"cannot serialize object of type {what} ({tried})"


def _explain_missing_main_attribute(error):
    """A function or class defined in the sender's ``__main__`` only under
    ``if __name__ == "__main__":`` travels by reference (as with the stdlib)
    and does not exist in a spawned child or an unrelated process. Say how to
    send it by value instead of leaving a bare AttributeError."""
    text = str(error)
    if "__mp_main__" in text or "'__main__'" in text:
        raise AttributeError(
            f"{text}: the sender's object lives in its __main__ module, which this "
            "process does not have. Define it at the top level of the main module "
            "(outside `if __name__ == '__main__':`) or pass serializer='cloudpickle' "
            "to send functions and classes by value") from error


def _cloudpickle():
    try:
        import cloudpickle
    except ImportError as e:  # pragma: no cover - cloudpickle is a dependency
        raise ImportError("the cloudpickle serializer needs the 'cloudpickle' "
                          "package (pip install cloudpickle)") from e
    return cloudpickle


def _forking_dumps(obj, protocol, buffer_callback=None):
    buf = io.BytesIO()
    # ForkingPickler.__init__ takes positional arguments only:
    # (file, protocol, fix_imports, buffer_callback).
    pickler = _mp_reduction.ForkingPickler(buf, protocol, True, buffer_callback)
    pickler.dump(obj)
    return buf.getvalue()


class PickleSerializer(Serializer):
    """Plain pickle protocol 5; ForkingPickler, then cloudpickle, when it fails."""

    name = "pickle"

    def dumps(self, obj, _dumps=pickle.dumps):
        try:
            return _dumps(obj, PROTOCOL)
        except _RETRYABLE as first:
            return self._fallback(obj, first, None)

    def dumps_oob(self, obj, _dumps=pickle.dumps):
        buffers = []
        try:
            data = _dumps(obj, PROTOCOL, buffer_callback=buffers.append)
        except _RETRYABLE as first:
            buffers = []
            data = self._fallback(obj, first, buffers.append)
        return data, [b.raw() for b in buffers]

    def _fallback(self, obj, first, buffer_callback):
        errors = [("pickle", first)]
        for how, dumps in (("ForkingPickler", _forking_dumps),
                           ("cloudpickle", _cloudpickle().dumps)):
            try:
                return dumps(obj, PROTOCOL, buffer_callback=buffer_callback)
            except _RETRYABLE as e:
                errors.append((how, e))
        raise SerializationError(_describe_failure(obj, errors)) from first

    @staticmethod
    def loads(data, _loads=pickle.loads):
        try:
            return _loads(data)
        except AttributeError as e:
            _explain_missing_main_attribute(e)
            raise

    @staticmethod
    def loads_oob(data, buffers, _loads=pickle.loads):
        try:
            return _loads(data, buffers=buffers)
        except AttributeError as e:
            _explain_missing_main_attribute(e)
            raise


class CloudpickleSerializer(PickleSerializer):
    """cloudpickle for every object (pickles functions by value)."""

    name = "cloudpickle"

    def dumps(self, obj):
        try:
            return _cloudpickle().dumps(obj, PROTOCOL)
        except _RETRYABLE as e:
            raise SerializationError(_describe_failure(obj, [("cloudpickle", e)])) from e

    def dumps_oob(self, obj):
        buffers = []
        try:
            data = _cloudpickle().dumps(obj, PROTOCOL, buffer_callback=buffers.append)
        except _RETRYABLE as e:
            raise SerializationError(_describe_failure(obj, [("cloudpickle", e)])) from e
        return data, [b.raw() for b in buffers]


class CustomSerializer(Serializer):
    """Adapter for a user object with ``dumps``/``loads`` methods."""

    def __init__(self, impl):
        self.impl = impl
        self.name = getattr(impl, "__name__", type(impl).__name__)
        self.dumps = impl.dumps
        self.loads = impl.loads

    def __reduce__(self):
        # The user's object travels with the transport: a module (such as
        # `json`) by its name, anything else as pickle sees fit.
        if isinstance(self.impl, types.ModuleType):
            return (_custom_from_module, (self.impl.__name__,))
        return (CustomSerializer, (self.impl,))

    def __repr__(self):
        return f"<mpx serializer wrapping {self.impl!r}>"


def _custom_from_module(name):
    return CustomSerializer(importlib.import_module(name))


_BUILTIN = {
    "pickle": PickleSerializer(),
    "cloudpickle": CloudpickleSerializer(),
}
DEFAULT_SERIALIZER = _BUILTIN["pickle"]


def get_serializer(spec=None):
    """Return the Serializer for `spec`: None, a name, a Serializer, or any
    object with callable ``dumps`` and ``loads``."""
    if spec is None:
        return DEFAULT_SERIALIZER
    if isinstance(spec, Serializer):
        return spec
    if isinstance(spec, str):
        try:
            return _BUILTIN[spec]
        except KeyError:
            raise ValueError(f"unknown serializer {spec!r}; choose one of "
                             f"{sorted(_BUILTIN)} or pass an object with "
                             "dumps() and loads() methods") from None
    if callable(getattr(spec, "dumps", None)) and callable(getattr(spec, "loads", None)):
        return CustomSerializer(spec)
    raise TypeError(f"serializer must be 'pickle', 'cloudpickle' or an object with "
                    f"dumps() and loads() methods, not {type(spec).__name__}")


def wire_bytes(serializer, data):
    """The bytes a transport carries for `data`, the output of
    ``serializer.dumps``: a text serializer's ``str`` travels as UTF-8 (read
    back with loads_custom). TypeError for anything but bytes-like or str."""
    if type(data) is bytes:
        return data
    if type(data) is str:
        return data.encode("utf-8")
    try:
        return memoryview(data).cast("B")
    except TypeError:
        raise TypeError(f"serializer {serializer!r} returned {type(data).__name__}, "
                        "not bytes or str") from None


def loads_custom(serializer, buf):
    """``loads`` of a custom (not pickle) serializer, for a message received
    as bytes. A transport that frames only bytes (an OS pipe, a FIFO, a
    kernel message queue) cannot say whether the sender's ``dumps`` gave
    bytes or text, so: bytes first (``json.loads`` and every
    bytes serializer take them); a ``loads`` that rejects bytes (TypeError,
    or AttributeError from calling a str method) is given the UTF-8 text."""
    data = bytes(buf)
    try:
        return serializer.loads(data)
    except (TypeError, AttributeError) as first:
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError:
            raise first from None
        return serializer.loads(text)     # its error, if any, shows the first too
