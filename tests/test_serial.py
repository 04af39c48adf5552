"""mpx._serial: pickle protocol 5 first, cloudpickle only where pickle fails."""

import json
import pickle
import threading

import numpy as np
import pytest

from mpx import _serial
from mpx._serial import SerializationError, get_serializer


def make_closure(k):
    def add(x):
        return x + k
    return add


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return (self.x, self.y) == (other.x, other.y)


@pytest.mark.parametrize("name", ["pickle", "cloudpickle"])
@pytest.mark.parametrize("obj", [
    None, 1, 2.5, "text", b"bytes", (12345, "payload", 3.14), [1, [2, [3]]],
    {"a": {1, 2}}, Point(1, 2), bytearray(b"xyz"),
])
def test_roundtrip(name, obj):
    s = get_serializer(name)
    assert s.loads(s.dumps(obj)) == obj
    data, bufs = s.dumps_oob(obj)
    assert s.loads_oob(data, bufs) == obj


def test_plain_objects_use_plain_pickle():
    obj = (12345, "payload", 3.14)
    assert get_serializer().dumps(obj) == pickle.dumps(obj, 5)


@pytest.mark.parametrize("fn, arg, expected", [
    (lambda x: x * 2, 21, 42),
    (make_closure(10), 1, 11),
])
def test_lambdas_and_closures_travel(fn, arg, expected):
    s = get_serializer("pickle")
    with pytest.raises(Exception):
        pickle.dumps(fn, 5)                 # plain pickle cannot...
    assert s.loads(s.dumps(fn))(arg) == expected    # ...mpx can


def test_local_class_travels():
    class Local:
        value = 7
    s = get_serializer()
    assert s.loads(s.dumps(Local)).value == 7


def test_out_of_band_buffers_are_not_copied_into_the_stream():
    arr = np.arange(100_000, dtype=np.float64)
    data, bufs = get_serializer().dumps_oob(arr)
    assert len(data) < 1000
    assert sum(b.nbytes for b in bufs) == arr.nbytes
    assert all(b.contiguous for b in bufs)
    out = get_serializer().loads_oob(data, bufs)
    assert np.array_equal(out, arr)
    pb = pickle.PickleBuffer(bytearray(b"x" * 5000))
    data, bufs = get_serializer().dumps_oob(pb)
    assert len(bufs) == 1 and bytes(bufs[0]) == b"x" * 5000


def test_unserializable_object_names_its_type():
    lock = threading.Lock()
    for name in ("pickle", "cloudpickle"):
        with pytest.raises(SerializationError, match="_thread.lock") as info:
            get_serializer(name).dumps({"k": lock})
        # Both kinds of caller code keep working.
        assert isinstance(info.value, TypeError)
        assert isinstance(info.value, pickle.PicklingError)
    with pytest.raises(SerializationError, match="_thread.lock"):
        get_serializer().dumps_oob(lock)


def test_errors_that_are_not_about_picklability_are_not_retried():
    class Refuses:
        def __reduce__(self):
            raise RuntimeError("only through inheritance")
    with pytest.raises(RuntimeError, match="inheritance"):
        get_serializer().dumps(Refuses())


def test_custom_serializer():
    s = get_serializer(json)
    assert s.loads(s.dumps({"a": [1, 2]})) == {"a": [1, 2]}
    assert pickle.loads(pickle.dumps(s)).dumps([1]) == json.dumps([1])


def test_builtin_serializers_pickle_by_name():
    for name in ("pickle", "cloudpickle"):
        assert pickle.loads(pickle.dumps(get_serializer(name))) is get_serializer(name)


def test_bad_serializer_arguments():
    with pytest.raises(TypeError, match="dumps"):
        get_serializer(42)
    with pytest.raises(ValueError, match="cloudpickle"):
        get_serializer("marshal")
    assert get_serializer(None) is _serial.DEFAULT_SERIALIZER


def test_stdlib_connection_pickles_as_a_descriptor_handle():
    import multiprocessing
    a, b = multiprocessing.Pipe()
    try:
        # Without mpx's copyreg entry, plain pickle would write a bare fd number.
        assert b"_handle" not in get_serializer().dumps(a)
    finally:
        a.close()
        b.close()


def run_main_function(serializer):
    import os
    import subprocess
    import sys
    prog = os.path.join(os.path.dirname(__file__), "programs", "main_function.py")
    out = subprocess.run([sys.executable, prog, serializer], capture_output=True,
                         text=True, timeout=110)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout.strip()


def test_main_only_function_under_spawn_gets_a_helpful_error():
    out = run_main_function("pickle")
    assert out.startswith("error") and "serializer='cloudpickle'" in out, out


def test_main_only_function_travels_by_value_with_cloudpickle():
    assert run_main_function("cloudpickle") == "ok 6"


def test_forking_pickler_fallback_is_used_for_its_registered_types():
    # A socket fails in plain pickle; the stdlib's ForkingPickler knows how to
    # hand it over (cloudpickle does not), so the fallback must reach it.
    import socket
    a, b = socket.socketpair()
    try:
        data = get_serializer().dumps(a)
        c = pickle.loads(data)
        try:
            c.sendall(b"ping")
            assert b.recv(4) == b"ping"
        finally:
            c.close()
    finally:
        a.close()
        b.close()
