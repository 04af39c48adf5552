"""The compact codec (``mpx._ext.compact.dumps_compact`` / ``loads_compact``).

It encodes objects made only of exact builtin types (None, bool, int that
fits in signed 64 bits, float, str, bytes, tuple, list, dict) and gives up
(returns None) for anything else, so the caller falls back to pickle. The
shm queues and the shm Pipe use it (message tag 5) when the serializer is the
default pickle one. What is checked here:

1. round trip: equal values with exactly the same types at every level;
2. giving up (None, no exception) for everything pickle would treat
   differently or that exceeds the codec's limits;
3. bad input to loads_compact: a ValueError (or TypeError for an unhashable
   key), never a crash, never a huge allocation for a short input;
4. through queues and pipes: the same results as pickle would give, and
   other serializers still see every object;
5. Pipe.recv_bytes() of a sent object is a pickle, as with the stdlib.
"""

import math
import pickle
import threading
import tracemalloc
from collections import OrderedDict, defaultdict, namedtuple
from decimal import Decimal
from enum import IntEnum
from fractions import Fraction

import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import mpx
from mpx._ext.compact import dumps_compact, loads_compact
from mpx.backends.shm import codec as _ring_codec

from conftest import join_all

INT64_MIN = -2 ** 63
INT64_MAX = 2 ** 63 - 1
MAX_DEPTH = 32              # containers nested deeper than this: give up
MAX_MUTABLES = 64           # more lists/dicts than this in one object: give up
MAX_ENCODED = 64 << 10      # encodings longer than this: give up

FAST = settings(max_examples=150, deadline=None,
                suppress_health_check=[HealthCheck.function_scoped_fixture,
                                       HealthCheck.too_slow])


# --- exact comparison ------------------------------------------------------

def same(a, b, _seen=None):
    """`a` and `b` are equal with exactly the same types at every level:
    a tuple stays a tuple, True stays a bool, 1.0 a float, -0.0 keeps its
    sign, nan stays nan and dict order (and the types of keys) is kept. Lists
    and dicts (subclasses too) must be shared, or cyclic, exactly where they
    are in `a` (as pickle keeps them)."""
    if type(a) is not type(b):
        return False
    if isinstance(a, (list, dict)):
        if _seen is None:
            _seen = ({}, set())
        pairs, seen_b = _seen
        if id(a) in pairs:
            return pairs[id(a)] is b
        if id(b) in seen_b:
            return False              # shared in b but not in a
        pairs[id(a)] = b
        seen_b.add(id(b))
    if type(a) is float:
        if math.isnan(a):
            return math.isnan(b)
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(same(x, y, _seen) for x, y in zip(a, b))
    if isinstance(a, dict):
        return len(a) == len(b) and all(
            same(ka, kb, _seen) and same(va, vb, _seen)
            for (ka, va), (kb, vb) in zip(a.items(), b.items()))
    return a == b


def pickle_trip(obj):
    """What pickle (the fallback, and the oracle) gives back for `obj`."""
    return pickle.loads(pickle.dumps(obj, 5))


def shape(obj, depth=0, seen=None):
    """(deepest container nesting, number of lists and dicts) of a tree."""
    tp = type(obj)
    if tp not in (tuple, list, dict):
        return depth, 0
    mutables = 1 if tp is not tuple else 0
    deepest = depth + 1
    children = list(obj.keys()) + list(obj.values()) if tp is dict else obj
    for child in children:
        d, m = shape(child, depth + 1)
        deepest = max(deepest, d)
        mutables += m
    return deepest, mutables


def nest(kind, n):
    """`n` containers of `kind` nested in each other (the innermost empty),
    so the depth is exactly `n` with no scalar at the bottom."""
    obj = kind()
    for _ in range(n - 1):
        obj = {0: obj} if kind is dict else kind([obj])
    return obj


# --- the objects of the contract ------------------------------------------

def plain_samples():
    """Objects the codec must encode, with exact round trips."""
    nan = float("nan")
    return [
        None, True, False, 0, 1, -1, 255, 256, -129, 2 ** 31, -2 ** 31 - 1,
        2 ** 32, INT64_MIN, INT64_MAX, INT64_MIN + 1, INT64_MAX - 1,
        0.0, -0.0, 1.0, -1.5, 1e308, 5e-324, -5e-324, nan, math.inf, -math.inf,
        "", "a", "žluťoučký 🐍", "a\x00b", "\x00", "\uffff", "\U0010ffff",
        "x" * 1000, b"", b"\x00\xff", bytes(range(256)),
        (), [], {}, (1,), [None], {"": None},
        (1, "a"), [1, 2.0, "3", b"4", None, True],
        (True, 1, 1.0), [False, 0, 0.0, -0.0],
        {1: "int", "1": "str", (1, "a"): "tuple", b"1": "bytes", None: "none",
         2.5: "float", False: "bool", (): "empty tuple"},
        {"b": 1, "a": 2, "c": 3},                  # insertion order is kept
        {(1, (2, (3, ()))): [{"k": ({},)}]},
        [[[[[]]]]], ((((),),),), [(), [], {}], {"l": [], "t": (), "d": {}},
        [nan, -0.0, math.inf], {"nested": {"deeper": {"deepest": [1, (2, [3])]}}},
        tuple(range(300)), list(map(float, range(100))), {i: str(i) for i in range(100)},
        ["same string"] * 5, [(1, 2)] * 3,        # repeated immutables are fine
    ]


class StrSub(str):
    pass


class IntSub(int):
    pass


class FloatSub(float):
    pass


class BytesSub(bytes):
    pass


class TupleSub(tuple):
    pass


class ListSub(list):
    pass


class DictSub(dict):
    pass


class Color(IntEnum):
    RED = 1


Point = namedtuple("Point", "x y")


class Plain:
    """A user object (module level, so pickle finds it by name)."""

    def __init__(self, v):
        self.v = v

    def __eq__(self, other):
        return type(other) is Plain and other.v == self.v


def alien_samples():
    """Objects the codec must refuse (None) while pickle carries them."""
    return [
        2 ** 63, INT64_MIN - 1, 10 ** 30, -10 ** 30,
        "\ud800", "ok\udfffok",
        StrSub("s"), IntSub(3), FloatSub(1.5), BytesSub(b"b"), TupleSub((1, 2)),
        ListSub([1]), DictSub(a=1), Color.RED, Point(1, 2),
        OrderedDict(a=1), defaultdict(int, a=1),
        {1, 2}, frozenset({1}), set(), 1j, bytearray(b"ab"),
        Decimal("1.5"), Fraction(1, 3), Plain(1), range(3), Ellipsis, int,
    ]


def shared_samples():
    """Structures where a list or dict occurs more than once, or in itself:
    pickle keeps the sharing and the codec would not, so it must give up."""
    a, d = [1], {"k": 1}
    rec_list = [1]
    rec_list.append(rec_list)
    rec_dict = {}
    rec_dict["self"] = rec_dict
    via_tuple = []
    via_tuple.append((via_tuple,))
    in_tuple = ([2],)
    return [
        [a, a], (a, a), {1: a, 2: a}, [d, d], (d, {"x": d}), [a, [a]],
        (in_tuple, in_tuple), rec_list, rec_dict, via_tuple,
    ]


# --- hypothesis strategies -------------------------------------------------

int64 = st.integers(INT64_MIN, INT64_MAX)
scalars = (st.none() | st.booleans() | int64 | st.floats()
           | st.text(max_size=12) | st.binary(max_size=12))
hashables = st.recursive(
    st.none() | st.booleans() | int64 | st.floats(allow_nan=False)
    | st.text(max_size=8) | st.binary(max_size=8),
    lambda k: st.lists(k, max_size=3).map(tuple), max_leaves=6)
plain_objects = st.recursive(
    scalars,
    lambda c: (st.lists(c, max_size=4) | st.lists(c, max_size=4).map(tuple)
               | st.dictionaries(hashables, c, max_size=4)),
    max_leaves=30)


# --- 1. round trips --------------------------------------------------------

def check_round_trip(obj):
    data = dumps_compact(obj)
    assert type(data) is bytes, (obj, data)
    back = loads_compact(data)
    assert same(back, obj), (obj, back)
    return data


@pytest.mark.parametrize("obj", plain_samples(), ids=lambda o: repr(o)[:30])
def test_round_trip_edge_cases(obj):
    check_round_trip(obj)


def test_signed_zero_and_nan_survive():
    back = loads_compact(dumps_compact((-0.0, 0.0, float("nan"), -math.inf)))
    assert math.copysign(1.0, back[0]) == -1.0
    assert math.copysign(1.0, back[1]) == 1.0
    assert math.isnan(back[2])
    assert back[3] == -math.inf


def test_types_are_kept_exactly():
    back = loads_compact(dumps_compact([True, 1, 1.0, (1,), [1], {1: 1}, "1", b"1"]))
    assert [type(x) for x in back] == [bool, int, float, tuple, list, dict, str, bytes]
    assert back[0] is True


def test_dict_order_and_key_types_are_kept():
    d = {"z": 0, 3: 1, (1, "a"): 2, b"k": 3, None: 4, "a": 5}
    back = loads_compact(dumps_compact(d))
    assert list(back.keys()) == list(d.keys())
    assert [type(k) for k in back] == [type(k) for k in d]


def test_same_immutable_twice_is_encoded():
    s = "shared " * 10
    t = (1, "two", (3.0,))
    for obj in [(s, s), [s, s, s], (t, t), {"a": t, "b": t}, [t, [t]]]:
        check_round_trip(obj)


def test_decoded_objects_are_fresh_and_independent():
    data = dumps_compact([[1], {"a": []}])
    one, two = loads_compact(data), loads_compact(data)
    assert one == two and one is not two
    one[0].append(2)
    one[1]["a"].append(3)
    assert two == [[1], {"a": []}]


@pytest.mark.parametrize("wrap", [bytes, bytearray, memoryview], ids=lambda w: w.__name__)
def test_loads_takes_any_bytes_like(wrap):
    obj = (1, "a", b"bytes", [2.5, None])
    assert same(loads_compact(wrap(dumps_compact(obj))), obj)


def test_loads_from_a_slice_and_copies_out_of_the_buffer():
    obj = ("text", b"raw bytes", [1, 2])
    data = dumps_compact(obj)
    buf = bytearray(b"JUNK" + data + b"MORE")
    view = memoryview(buf)[4:4 + len(data)]
    back = loads_compact(view)
    assert same(back, obj)
    view.release()
    buf[:] = bytes(len(buf))          # the decoded object holds no view of it
    assert same(back, obj)


@pytest.mark.parametrize("bad", ["text", None, 12, 1.5, [1, 2]], ids=repr)
def test_loads_refuses_non_buffers(bad):
    with pytest.raises((TypeError, ValueError)):
        loads_compact(bad)


def test_loads_refuses_non_contiguous_buffers():
    data = dumps_compact((1, 2))
    spread = bytearray(2 * len(data))
    spread[::2] = data
    with pytest.raises((TypeError, ValueError, BufferError)):
        loads_compact(memoryview(spread)[::2])


@FAST
@given(plain_objects)
def test_round_trip_property(obj):
    depth, mutables = shape(obj)
    assert depth <= MAX_DEPTH          # the strategy stays within the depth limit
    data = dumps_compact(obj)
    if mutables > MAX_MUTABLES:
        assert data is None
        return
    assert type(data) is bytes
    assert len(data) <= MAX_ENCODED
    assert same(loads_compact(data), obj)


# --- 2. giving up ----------------------------------------------------------

def wrappings(obj):
    """`obj` bare and inside each container kind, and deep inside."""
    yield obj
    yield [1, obj]
    yield (obj, "x")
    yield {"k": obj}
    yield [{"a": (1, [2, obj])}]
    try:
        hash(obj)
    except (TypeError, ValueError):     # unhashable (a writable memoryview: ValueError)
        return
    yield {obj: 1}
    yield {(1, obj): 1}


@pytest.mark.parametrize("obj", alien_samples(), ids=lambda o: repr(o)[:30])
def test_gives_up_on_other_types_and_values(obj):
    for wrapped in wrappings(obj):
        assert dumps_compact(wrapped) is None, wrapped


@pytest.mark.parametrize("base", [bytearray(b"abc"), b"abc"], ids=["writable", "readonly"])
def test_gives_up_on_memoryviews(base):
    with memoryview(base) as m:
        for wrapped in list(wrappings(m)):
            assert dumps_compact(wrapped) is None, wrapped


def test_gives_up_on_int64_edges_only_outside():
    assert dumps_compact(INT64_MAX) is not None
    assert dumps_compact(INT64_MIN) is not None
    assert dumps_compact(INT64_MAX + 1) is None
    assert dumps_compact(INT64_MIN - 1) is None
    assert dumps_compact([1, 2, 3, INT64_MAX + 1]) is None


@pytest.mark.parametrize("obj", shared_samples(), ids=lambda o: repr(o)[:40])
def test_gives_up_on_shared_or_recursive_containers(obj):
    assert dumps_compact(obj) is None


@pytest.mark.parametrize("kind", [list, tuple, dict], ids=lambda k: k.__name__)
def test_depth_limit(kind):
    ok = nest(kind, MAX_DEPTH)
    check_round_trip(ok)
    assert dumps_compact(nest(kind, MAX_DEPTH + 1)) is None
    assert dumps_compact(nest(kind, 1000)) is None


def test_depth_limit_mixed_containers():
    # Depth is depth, whatever the containers: mixing kinds counts the same.
    mixed = []
    for i in range(MAX_DEPTH - 1):
        mixed = [mixed] if i % 2 else (mixed,)
    check_round_trip(mixed)
    assert dumps_compact({"k": mixed}) is None
    assert dumps_compact(({"k": mixed},)) is None


def test_too_deep_for_the_c_stack_is_refused_not_crashed():
    obj = []
    for _ in range(100_000):
        obj = [obj]
    assert dumps_compact(obj) is None
    del obj


def test_mutable_container_count_limit():
    # The outer list counts: 1 + 63 lists = 64 in all is fine, 65 is not.
    check_round_trip([[] for _ in range(MAX_MUTABLES - 1)])
    assert dumps_compact([[] for _ in range(MAX_MUTABLES)]) is None
    # Tuples do not count, dicts do.
    check_round_trip(tuple({} for _ in range(MAX_MUTABLES)))
    assert dumps_compact(tuple({} for _ in range(MAX_MUTABLES + 1))) is None
    assert dumps_compact(tuple([] for _ in range(MAX_MUTABLES + 1))) is None
    check_round_trip(tuple(() for _ in range(1000)))


def test_encoded_size_limit():
    check_round_trip(("x" * 60_000,))
    check_round_trip("x" * 60_000)
    check_round_trip(("ž" * 20_000,))            # 40 000 bytes of UTF-8
    for big in ["x" * 100_000, b"x" * 100_000, "ž" * 40_000]:
        for wrapped in (big, (big,), [big], {"k": big}):
            assert dumps_compact(wrapped) is None, type(wrapped)
    # Many small items add up: each int64 and each float takes 8 bytes at least.
    assert dumps_compact(tuple(2 ** 62 + i for i in range(10_000))) is None
    assert dumps_compact([float(i) for i in range(10_000)]) is None
    assert dumps_compact(("y" * 40_000, "z" * 40_000)) is None


def test_giving_up_raises_nothing_and_leaves_objects_alone():
    a = [1]
    obj = [a, a, {"set": {1, 2}}]
    before = repr(obj)
    assert dumps_compact(obj) is None
    assert repr(obj) == before
    # An object whose __eq__/__hash__ would raise is not consulted.

    class Hostile:
        def __eq__(self, other):
            raise AssertionError("compared")

        def __hash__(self):
            raise AssertionError("hashed")

        def __reduce__(self):
            raise AssertionError("reduced")

    assert dumps_compact([1, Hostile()]) is None


# --- 3. bad input to loads_compact ----------------------------------------

def loads_or_error(data):
    """loads_compact(data): an object, or one of the allowed errors."""
    try:
        return loads_compact(data)
    except (ValueError, TypeError):      # UnicodeDecodeError is a ValueError
        return None


def fuzz_seeds():
    return [
        dumps_compact(obj) for obj in [
            None, True, 7, -2 ** 40, INT64_MIN, 1.5, "abc", "žluť 🐍", b"\x00\x01",
            (1, "a"), [1, [2, [3]]], {"k": "v", 2: (None, b"")}, ((), [], {}),
            [True, 2.5, "s", b"b", None], {"a": {"b": {"c": [1.0]}}},
        ]
    ]


def test_fuzz_seeds_are_encodable():
    assert all(type(s) is bytes and s for s in fuzz_seeds())


def test_loads_truncated_encodings():
    for seed in fuzz_seeds():
        for n in range(len(seed)):
            loads_or_error(seed[:n])


def test_loads_empty_buffer():
    for empty in (b"", bytearray(), memoryview(b"")):
        with pytest.raises(ValueError):
            loads_compact(empty)


def test_loads_single_byte_mutations():
    for seed in fuzz_seeds():
        for i in range(len(seed)):
            b = seed[i]
            for new in {0x00, 0xFF, 0x7F, 0x80, b ^ 0x01, b ^ 0x80, (b + 1) & 0xFF,
                        (b - 1) & 0xFF}:
                if new != b:
                    loads_or_error(seed[:i] + bytes([new]) + seed[i + 1:])


def test_loads_trailing_bytes():
    for seed in fuzz_seeds():
        for tail in (b"\x00", b"\xff" * 8, seed):
            loads_or_error(seed + tail)


HUGE_FIELDS = [b"\xff" * 8, b"\xff" * 4, b"\x7f\xff\xff\xff", b"\xff\xff\xff\x7f",
               b"\x00\x00\x00\x80", b"\x80" * 9 + b"\x01", b"\xff" * 9 + b"\x7f"]


def test_loads_huge_declared_sizes_with_short_data():
    """A count or length field set huge (whatever its width and byte order)
    over a short input: an error or an object, never an allocation sized by
    the claim (no MemoryError, no gigabytes reserved)."""
    cases = []
    for seed in fuzz_seeds():
        for i in range(len(seed)):
            for field in HUGE_FIELDS:
                data = (seed[:i] + field + seed[i + len(field):])[:40]
                cases.append(data)
                cases.append(seed[:i] + field)           # and nothing after it
    tracemalloc.start()
    try:
        for data in cases:
            tracemalloc.reset_peak()
            loads_or_error(data)
            peak = tracemalloc.get_traced_memory()[1]
            assert peak < 1 << 20, (data, peak)
    finally:
        tracemalloc.stop()


@FAST
@given(st.binary(max_size=64))
def test_loads_random_bytes(data):
    loads_or_error(data)


@FAST
@given(st.sampled_from(range(15)), st.binary(min_size=1, max_size=16),
       st.integers(0, 200))
def test_loads_seed_with_random_splice(which, junk, where):
    seed = fuzz_seeds()[which]
    where %= len(seed) + 1
    loads_or_error(seed[:where] + junk + seed[where + len(junk):])
    loads_or_error(seed[:where] + junk)


def test_loads_many_nested_headers_do_not_recurse_without_bound():
    """A claimed nesting far deeper than any encoder makes: built by
    repeating the prefix that opens a one-item list."""
    one = dumps_compact([0])
    zero = dumps_compact(0)
    assert one.endswith(zero)
    opener = one[:len(one) - len(zero)]
    for n in (MAX_DEPTH, MAX_DEPTH + 1, 10_000, 200_000):
        loads_or_error(opener * n + zero)


# --- 4. through queues and pipes ------------------------------------------

QUEUE_FAMILIES = ["Queue", "SimpleQueue", "JoinableQueue"]


def shm_queue(family, **kw):
    return getattr(mpx, family)(backend="shm", **kw)


def trip_queue(q, objs, family):
    for obj in objs:
        q.put(obj)
    out = [q.get(timeout=10) for _ in objs]
    if family == "JoinableQueue":
        for _ in objs:
            q.task_done()
    return out


def fallback_samples():
    return alien_samples() + shared_samples() + [
        ("x" * 100_000,), nest(list, MAX_DEPTH + 5), [[] for _ in range(100)],
    ]


def check_like_pickle(objs, got):
    """`got` are what pickle would make of `objs`: equal, the same types, and
    the sharing and cycles pickle keeps."""
    assert len(got) == len(objs)
    for obj, back in zip(objs, got):
        assert same(pickle_trip(obj), obj), obj       # the oracle agrees
        assert same(back, obj), (obj, back)


@pytest.mark.parametrize("family", QUEUE_FAMILIES)
def test_queue_plain_objects_exact(family):
    q = shm_queue(family)
    try:
        objs = plain_samples()
        got = trip_queue(q, objs, family)
        for obj, back in zip(objs, got):
            assert same(back, obj), (obj, back)
    finally:
        q.close()


def test_queue_put_many_get_many_exact():
    q = shm_queue("Queue")
    try:
        objs = plain_samples()
        q.put_many(objs, timeout=10)
        got = []
        while len(got) < len(objs):
            got += q.get_many(timeout=10)
        for obj, back in zip(objs, got):
            assert same(back, obj), (obj, back)
        # Mixed batches: compact, pickle fallback and raw bytes in one put_many.
        mixed = [(1, "a"), {1, 2}, b"raw", [2 ** 70], "text", StrSub("sub")]
        q.put_many(mixed, timeout=10)
        got = []
        while len(got) < len(mixed):
            got += q.get_many(timeout=10)
        check_like_pickle(mixed, got)
    finally:
        q.close()


@pytest.mark.parametrize("family", QUEUE_FAMILIES)
def test_queue_fallback_objects_like_pickle(family):
    q = shm_queue(family)
    try:
        objs = fallback_samples()
        check_like_pickle(objs, trip_queue(q, objs, family))
    finally:
        q.close()


def test_queue_keeps_sharing_and_subclasses():
    q = shm_queue("Queue")
    try:
        a = [1]
        q.put([a, a])
        back = q.get(timeout=10)
        assert back == [[1], [1]] and back[0] is back[1]
        d = {"k": 1}
        q.put(({"x": d}, d))
        back = q.get(timeout=10)
        assert back[0]["x"] is back[1]
        for obj in (StrSub("s"), IntSub(3), TupleSub((1,)), ListSub([1]), DictSub(a=1),
                    Point(1, 2), Color.RED, [StrSub("nested")]):
            q.put(obj)
            back = q.get(timeout=10)
            assert type(back) is type(obj) and back == obj
        q.put([StrSub("nested")])
        assert type(q.get(timeout=10)[0]) is StrSub
    finally:
        q.close()


def test_queue_put_many_with_fallbacks_keeps_sharing():
    q = shm_queue("Queue")
    try:
        a = [1]
        q.put_many([(1, 2), [a, a], (3, 4)], timeout=10)
        got = q.get_many(timeout=10)
        while len(got) < 3:
            got += q.get_many(timeout=10)
        assert got[0] == (1, 2) and got[2] == (3, 4)
        assert got[1][0] is got[1][1]
    finally:
        q.close()


def test_queue_unserializable_inside_plain_container_raises_and_puts_nothing():
    q = shm_queue("Queue")
    try:
        with pytest.raises(TypeError):
            q.put([1, "a", threading.Lock()])
        with pytest.raises(TypeError):
            q.put_many([(1,), (2, threading.Lock())], timeout=10)
        assert q.qsize() == 0
        q.put((1, "ok"))
        assert q.get(timeout=10) == (1, "ok")
    finally:
        q.close()


def test_queue_uses_the_compact_tag():
    """White box: a plain object travels as one TAG_COMPACT part that
    loads_compact reads; a refused one as pickle."""
    assert _ring_codec.TAG_COMPACT == 5
    q = shm_queue("Queue")
    try:
        q.put((1, "a", [2.5]))
        msg = q._ring.get(False)
        assert type(msg) is tuple and msg[0] == 5 and len(msg[1]) == 1, msg
        assert same(loads_compact(msg[1][0]), (1, "a", [2.5]))
        q.put({1, 2})
        msg = q._ring.get(False)
        assert not (type(msg) is tuple and msg[0] == 5), msg
        q.put_many([(1, "a"), [2], {3, 4}], timeout=10)
        msgs = q._ring.get_many(None, False)
        assert [type(m) is tuple and m[0] == 5 for m in msgs] == [True, True, False], msgs
    finally:
        q.close()
    r, w = mpx.Pipe(backend="shm")
    try:
        w.send({"k": (1, 2.0)})
        msg = r._chan.recv()
        assert type(msg) is tuple and msg[0] == 5 and len(msg[1]) == 1, msg
        assert same(loads_compact(msg[1][0]), {"k": (1, 2.0)})
    finally:
        r.close()
        w.close()


# cloudpickle pickles exact builtins exactly as pickle does, so a queue or
# pipe with serializer="cloudpickle" takes the same shortcuts (compact, raw
# bytes) for them; what it is chosen for, functions by value, still works.

def test_queue_cloudpickle_serializer_keeps_builtins_and_lambdas():
    q = shm_queue("Queue", serializer="cloudpickle")
    try:
        objs = [(1, "a"), [1, 2], {"k": None}, 7, "s", None, 1.5]
        for obj in objs:
            q.put(obj)
        for obj in objs:
            assert same(q.get(timeout=10), obj)
        q.put_many(objs, timeout=10)
        got = []
        while len(got) < len(objs):
            got += q.get_many(timeout=10)
        for obj, back in zip(objs, got):
            assert same(back, obj)
        k = 3
        q.put((lambda x: x + k, "tail"))
        fn, tail = q.get(timeout=10)
        assert fn(4) == 7 and tail == "tail"
    finally:
        q.close()


def test_pipe_cloudpickle_serializer_keeps_builtins_and_lambdas():
    r, w = mpx.Pipe(backend="shm", serializer="cloudpickle")
    try:
        for obj in [(1, "a"), [1, 2], {"k": None}, 7]:
            w.send(obj)
            assert same(r.recv(), obj)
        k = 5
        w.send([lambda x: x * k])
        assert r.recv()[0](2) == 10
    finally:
        r.close()
        w.close()


class CountingSerializer:
    """A user serializer: pickle, counting its calls."""

    def __init__(self):
        self.dumped = []
        self.loaded = 0

    def dumps(self, obj):
        self.dumped.append(obj)
        return pickle.dumps(obj)

    def loads(self, data):
        self.loaded += 1
        return pickle.loads(data)


class TaggingSerializer:
    """A user serializer that changes what comes back: compact must never
    short-circuit it."""

    def dumps(self, obj):
        return pickle.dumps(("tagged", obj))

    def loads(self, data):
        return pickle.loads(data)


@pytest.mark.parametrize("family", QUEUE_FAMILIES)
def test_queue_custom_serializer_sees_every_object(family):
    ser = CountingSerializer()
    q = shm_queue(family, serializer=ser)
    try:
        objs = [(1, "a"), [1], {"k": 2}, 3, "s", None, True, 2.5]
        got = trip_queue(q, objs, family)
        assert ser.dumped == objs
        assert ser.loaded == len(objs)
        for obj, back in zip(objs, got):
            assert same(back, obj)
    finally:
        q.close()


def test_queue_custom_serializer_put_many_and_semantics():
    ser = CountingSerializer()
    q = shm_queue("Queue", serializer=ser)
    try:
        q.put_many([(1, 2), (3, 4)], timeout=10)
        assert ser.dumped == [(1, 2), (3, 4)]
        got = q.get_many(timeout=10)
        while len(got) < 2:
            got += q.get_many(timeout=10)
        assert got == [(1, 2), (3, 4)] and ser.loaded == 2
    finally:
        q.close()
    q = shm_queue("Queue", serializer=TaggingSerializer())
    try:
        q.put((1, "a"))
        assert q.get(timeout=10) == ("tagged", (1, "a"))
    finally:
        q.close()


@pytest.mark.parametrize("duplex", [True, False], ids=["duplex", "oneway"])
def test_pipe_plain_objects_exact(duplex):
    r, w = mpx.Pipe(duplex, backend="shm")
    try:
        for obj in plain_samples():
            w.send(obj)
            back = r.recv()
            assert same(back, obj), (obj, back)
        if duplex:
            r.send((1, [2.0], {"3": None}))
            assert same(w.recv(), (1, [2.0], {"3": None}))
    finally:
        r.close()
        w.close()


def test_pipe_fallback_objects_like_pickle():
    r, w = mpx.Pipe(backend="shm")
    try:
        objs = fallback_samples()
        got = []
        for obj in objs:
            w.send(obj)
            got.append(r.recv())
        check_like_pickle(objs, got)
        a = [1]
        w.send([a, a])
        back = r.recv()
        assert back[0] is back[1]
    finally:
        r.close()
        w.close()


def test_pipe_custom_serializer_sees_every_object():
    ser = CountingSerializer()
    r, w = mpx.Pipe(backend="shm", serializer=ser)
    try:
        for obj in [(1, "a"), [1], 3]:
            w.send(obj)
            assert same(r.recv(), obj)
        assert ser.dumped == [(1, "a"), [1], 3]
        assert ser.loaded == 3
    finally:
        r.close()
        w.close()


# --- 5. Pipe: the bytes of a sent object are a pickle ----------------------

def test_pipe_recv_bytes_of_sent_object_is_a_pickle():
    r, w = mpx.Pipe(backend="shm")
    try:
        for obj in [(1, "a"), [True, 1.0, None], {"k": (b"v",)}, 5, "text", -0.0]:
            w.send(obj)
            data = r.recv_bytes()
            assert type(data) is bytes
            assert same(pickle.loads(data), obj)
        w.send((1, "a"))
        assert pickle.loads(r.recv_bytes()) == pickle.loads(pickle.dumps((1, "a"), 5))
        # recv_bytes_into and maxlength see the same bytes.
        w.send((1, "a"))
        buf = bytearray(200)
        n = r.recv_bytes_into(buf)
        assert same(pickle.loads(bytes(buf[:n])), (1, "a"))
        w.send(("x" * 50,))
        with pytest.raises(OSError):
            r.recv_bytes(10)
    finally:
        r.close()
        w.close()


def test_pipe_send_bytes_is_never_read_as_compact():
    """Raw bytes that happen to be a compact encoding stay raw bytes."""
    r, w = mpx.Pipe(backend="shm")
    try:
        enc = dumps_compact((1, "a"))
        w.send_bytes(enc)
        assert r.recv_bytes() == enc
        w.send_bytes(pickle.dumps((1, "a"), 5))
        assert same(r.recv(), (1, "a"))
    finally:
        r.close()
        w.close()


# --- through a child process -----------------------------------------------

def child_check_and_echo(inq, outq):
    """Runs in a child: compare what came with its own copy of the samples
    (exact types), and send everything back."""
    got = [inq.get(timeout=60) for _ in range(len(plain_samples()))]
    bad = [repr(w) for w, g in zip(plain_samples(), got) if not same(g, w)]
    outq.put(bad)
    outq.put_many(got, timeout=60)


@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_plain_objects_through_a_child(method):
    ctx = mpx.get_context(method)
    inq, outq = ctx.Queue(backend="shm"), ctx.Queue(backend="shm")
    try:
        p = ctx.Process(target=child_check_and_echo, args=(inq, outq))
        p.start()
        try:
            objs = plain_samples()
            for obj in objs:
                inq.put(obj)
            assert outq.get(timeout=60) == []
            got = []
            while len(got) < len(objs):
                got += outq.get_many(timeout=60)
            for obj, back in zip(objs, got):
                assert same(back, obj), (obj, back)
        finally:
            join_all([p])
    finally:
        inq.close()
        outq.close()
