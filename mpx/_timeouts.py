"""The one reading of ``block``/``timeout`` that every mpx wait shares.

As in ``multiprocessing``: ``timeout=None`` waits for ever, a number waits
that many seconds on the monotonic clock, and ``block=False`` does not wait.
mpx adds what the stdlib leaves to chance: ``float("inf")`` also waits for
ever, NaN is a ValueError at once (it compares false with everything, so
loops built on ``<`` would spin or never end) and something that is not a
number is a TypeError. A negative timeout does not wait, as with the stdlib's
``Queue.get``, ``Connection.poll`` and semaphores: code that passes
``deadline - time.monotonic()`` relies on it.
"""

import math

__all__ = ["seconds"]


def seconds(timeout, block=True, what="timeout"):
    """The wait to make: 0.0 when not blocking, None for ever, else seconds."""
    if not block:
        return 0.0
    if timeout is None:
        return None
    kind = type(timeout)
    if isinstance(timeout, (str, bytes, bytearray)) or not (
            hasattr(kind, "__float__") or hasattr(kind, "__index__")):
        raise TypeError(f"{what} must be a number of seconds or None, "
                        f"not {kind.__name__}")
    try:
        value = float(timeout)
    except OverflowError:           # an int too large for a float: for ever
        return None
    if math.isnan(value):
        raise ValueError(f"{what} must be a number of seconds or None, not NaN")
    if value < 0:
        return 0.0
    if math.isinf(value):
        return None
    return value
