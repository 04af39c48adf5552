"""Bodies of the Ray tasks and pool functions the Ray tests use.

A module of its own (imported in Ray's worker processes through the tests
directory on their path): importing a test module there would import
conftest too, which sets up per-run state no worker should make.
"""

import os
import time


def square(x):
    return x * x


def add(a, b):
    return a + b


def fail(x):
    raise ValueError(f"task failed on {x}")


def slow_square(x, delay=0.01):
    time.sleep(delay)
    return x * x


def pid_of(_):
    time.sleep(0.005)
    return os.getpid()


_state = {}


def set_state(value):
    _state["value"] = value


def get_state(_):
    return _state.get("value")


def raise_in_init():
    raise RuntimeError("initializer refuses")


def node_of(x):
    """(x, the Ray node this runs on), taking a while so a map spans time."""
    import ray
    time.sleep(0.05)
    return x, ray.get_runtime_context().get_node_id()


# --- queue users, run as Ray tasks -----------------------------------------

def echo(inq, outq, n):
    for _ in range(n):
        item = inq.get(timeout=30)
        outq.put(item(21) if callable(item) else item * 2)
    return n


def put_later(q, delay, item):
    time.sleep(delay)
    q.put(item)


def produce(q, n, batch):
    i = 0
    while i < n:
        q.put_many(list(range(i, min(n, i + batch))))
        i += batch
    return n


def consume(q, n, acks):
    """Take `n` items; each batch taken is acknowledged (put in `acks`)
    before the next get, so what was acknowledged is what was received."""
    got = 0
    while got < n:
        items = q.get_many(max_items=100, timeout=60)
        acks.put_many(items)
        got += len(items)
    return got


def consume_slowly(q, acks):
    """Take items one batch at a time, for ever (until its node dies)."""
    while True:
        items = q.get_many(max_items=10, timeout=60)
        acks.put_many(items)
        time.sleep(0.01)
