"""The Pipe/Connection contract, written once, run over every Pipe backend
and the stdlib ("stdlib") as the oracle, under every start method."""

import array
import json
import os
import signal
import threading
import time

import pytest

from conftest import backends_for

BACKENDS = ["stdlib"] + backends_for("Pipe")


def make(ctx, backend, duplex=True):
    if backend == "stdlib":
        return ctx.stdlib_context().Pipe(duplex)
    return ctx.Pipe(duplex, backend=backend)


def closing(*conns):
    for c in conns:
        c.close()


def echo(conn, parent_end):
    parent_end.close()    # under fork the child holds it too; EOF needs every copy closed
    while True:
        try:
            obj = conn.recv()
        except EOFError:
            break
        conn.send(obj(21) if callable(obj) else obj)
    conn.close()


def send_then_die(conn):
    conn.send("last words")
    os.kill(os.getpid(), signal.SIGKILL)


@pytest.mark.parametrize("backend", BACKENDS)
def test_send_recv_both_ways(ctx, backend):
    a, b = make(ctx, backend)
    # (in one process, a message must fit the kernel buffer: 64 KiB for a pipe)
    for obj in (1, "two", (3,), {"four": 4}, b"5" * 50_000, None):
        a.send(obj)
        assert b.recv() == obj
        b.send(obj)
        assert a.recv() == obj
    closing(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_simplex_pipe(ctx, backend):
    r, w = make(ctx, backend, duplex=False)
    assert r.readable and not r.writable and w.writable and not w.readable
    w.send("x")
    assert r.recv() == "x"
    with pytest.raises(OSError):
        r.send("wrong way")
    with pytest.raises(OSError):
        w.recv()
    closing(r, w)


@pytest.mark.parametrize("backend", BACKENDS)
def test_bytes_api(ctx, backend):
    a, b = make(ctx, backend)
    a.send_bytes(b"hello world", 6)
    assert b.recv_bytes() == b"world"
    a.send_bytes(b"hello world", 0, 5)
    assert b.recv_bytes() == b"hello"
    a.send_bytes(memoryview(b"abcdef")[1:4])
    buf = bytearray(10)
    assert b.recv_bytes_into(buf, 2) == 3
    assert buf[2:5] == b"bcd"
    a.send_bytes(array.array("i", [1, 2, 3]))
    assert b.recv_bytes() == array.array("i", [1, 2, 3]).tobytes()
    with pytest.raises(ValueError):
        a.send_bytes(b"abc", 4)
    with pytest.raises(ValueError):
        a.send_bytes(b"abc", 1, 5)
    with pytest.raises(ValueError):
        a.send_bytes(b"abc", -1)
    closing(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_recv_bytes_maxlength_spoils_the_connection(ctx, backend):
    a, b = make(ctx, backend)
    a.send_bytes(b"x" * 100)
    with pytest.raises(OSError):
        b.recv_bytes(10)
    # The stream is out of step now: the stdlib stops reading from a duplex
    # end (readable becomes False) and closes a read-only one.
    assert b.closed or not b.readable
    with pytest.raises(OSError):
        b.recv_bytes()
    r, w = make(ctx, backend, duplex=False)
    w.send_bytes(b"x" * 100)
    with pytest.raises(OSError):
        r.recv_bytes(10)
    assert r.closed
    with pytest.raises(ValueError):
        a.recv_bytes(-1)
    closing(r, w)
    closing(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_poll(ctx, backend):
    a, b = make(ctx, backend)
    assert not b.poll()
    t = time.monotonic()
    assert not b.poll(0.2)
    assert 0.15 < time.monotonic() - t < 5
    a.send(1)
    assert b.poll(5)
    assert b.recv() == 1
    closing(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_eof_after_peer_closes(ctx, backend):
    a, b = make(ctx, backend)
    a.send("pending")
    a.close()
    assert b.recv() == "pending"      # data first...
    with pytest.raises(EOFError):     # ...then EOF
        b.recv()
    b.close()
    with pytest.raises(OSError):
        b.send(1)
    assert b.closed


@pytest.mark.parametrize("backend", BACKENDS)
def test_child_at_start_and_killed_peer(ctx, backend):
    a, b = make(ctx, backend)
    p = ctx.Process(target=send_then_die, args=(b,))
    p.start()
    b.close()
    assert a.recv() == "last words"
    with pytest.raises(EOFError):
        if a.poll(30):
            a.recv()
        else:
            raise AssertionError("no EOF within 30 s of the peer's death")
    p.join(30)
    a.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_echo_through_a_child(ctx, backend):
    a, b = make(ctx, backend)
    p = ctx.Process(target=echo, args=(b, a))
    p.start()
    b.close()
    for obj in range(50):
        a.send(obj)
        assert a.recv() == obj
    a.close()
    p.join(30)
    assert p.exitcode == 0


@pytest.mark.parametrize("backend", backends_for("Pipe"))
def test_lambda_travels_and_unpicklable_sends_nothing(ctx, backend):
    a, b = make(ctx, backend)
    p = ctx.Process(target=echo, args=(b, a))
    p.start()
    b.close()
    k = 21
    a.send(lambda x: x + k)
    assert a.recv() == 42
    with pytest.raises(TypeError, match="lock"):
        a.send(threading.Lock())
    a.send("still fine")
    assert a.recv() == "still fine"
    a.close()
    p.join(30)
    assert p.exitcode == 0


@pytest.mark.parametrize("backend", BACKENDS)
def test_wait_on_a_mix_of_objects(ctx, backend):
    from mpx.connection import wait
    a, b = make(ctx, backend)
    c, d = ctx.stdlib_context().Pipe()
    assert wait([b, d], timeout=0.1) == []
    a.send(1)
    assert wait([b, d], timeout=5) == [b]
    p = ctx.Process(target=time.sleep, args=(0.1,))
    p.start()
    ready = wait([d, p.sentinel], timeout=30)
    assert ready == [p.sentinel]
    p.join(5)
    closing(a, b, c, d)


@pytest.mark.parametrize("backend", BACKENDS)
def test_context_manager(ctx, backend):
    a, b = make(ctx, backend)
    with a, b:
        a.send(1)
        assert b.recv() == 1
    assert a.closed and b.closed


def use_connection_from_queue(q):
    conn = q.get(timeout=30)
    conn.send(conn.recv() * 2)
    conn.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_connection_sent_later_through_a_queue(ctx, backend):
    a, b = make(ctx, backend)
    q = ctx.stdlib_context().Queue() if backend == "stdlib" else ctx.Queue()
    p = ctx.Process(target=use_connection_from_queue, args=(q,))
    p.start()                  # the child exists before the connection is sent
    q.put(b)
    a.send(21)
    assert a.poll(30) and a.recv() == 42
    p.join(30)
    assert p.exitcode == 0
    # (Closed only now: the stdlib's feeder thread pickles b after put returns.)
    closing(a, b)
    if backend == "stdlib":
        q.close()
        q.join_thread()


@pytest.mark.parametrize("backend", BACKENDS)
def test_recv_bytes_into_a_short_buffer(ctx, backend):
    from multiprocessing import BufferTooShort
    a, b = make(ctx, backend)
    a.send_bytes(b"hello world")
    buf = bytearray(4)
    with pytest.raises(BufferTooShort) as info:
        b.recv_bytes_into(buf)
    assert info.value.args[0] == b"hello world"    # the whole message, as the stdlib gives it
    a.send_bytes(b"abc")                          # and the stream is still in step
    assert b.recv_bytes() == b"abc"
    closing(a, b)


@pytest.mark.parametrize("backend", BACKENDS)
def test_send_to_a_killed_peer_raises_broken_pipe(ctx, backend):
    a, b = make(ctx, backend)
    p = ctx.Process(target=send_then_die, args=(b,))
    p.start()
    b.close()
    assert a.poll(30) and a.recv() == "last words"
    p.join(30)
    assert p.exitcode == -signal.SIGKILL
    with pytest.raises(BrokenPipeError):
        for _ in range(1000):          # a buffered backend may take some before it notices
            a.send_bytes(b"x" * 100_000)
    a.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_poll_with_a_negative_timeout_returns_at_once(ctx, backend):
    a, b = make(ctx, backend)
    t = time.monotonic()
    assert b.poll(-1) is False          # the stdlib treats it as 0: no wait, no error
    assert time.monotonic() - t < 0.5
    a.send(1)
    assert b.poll(5)
    assert b.poll(-1) is True
    assert b.recv() == 1
    closing(a, b)


class TextOnly:
    """A custom serializer speaking str, whose loads takes nothing else."""

    @staticmethod
    def dumps(obj):
        return json.dumps(obj)

    @staticmethod
    def loads(text):
        if not isinstance(text, str):
            raise TypeError(f"TextOnly.loads wants str, not {type(text).__name__}")
        return json.loads(text)


class BytesOnly:
    """A custom serializer speaking bytes, whose loads takes nothing else."""

    @staticmethod
    def dumps(obj):
        return json.dumps(obj).encode("utf-8")

    @staticmethod
    def loads(data):
        if not isinstance(data, bytes):
            raise TypeError(f"BytesOnly.loads wants bytes, not {type(data).__name__}")
        return json.loads(data)


@pytest.mark.parametrize("serializer", [json, TextOnly(), BytesOnly()],
                         ids=["json", "text-only", "bytes-only"])
@pytest.mark.parametrize("backend", backends_for("Pipe"))
def test_custom_text_and_bytes_serializers(ctx, backend, serializer):
    a, b = ctx.Pipe(backend=backend, serializer=serializer)
    msg = {"k": [1, 2], "text": "é ü ☃"}
    a.send(msg)
    assert b.recv() == msg
    a.send([3])                          # a str stream travels as its UTF-8 bytes
    assert b.recv_bytes() == b"[3]"
    p = ctx.Process(target=echo, args=(b, a))    # the serializer travels with the end
    p.start()
    b.close()
    a.send(msg)
    assert a.poll(30) and a.recv() == msg
    a.close()
    p.join(30)
    assert p.exitcode == 0


@pytest.mark.parametrize("backend", backends_for("Pipe"))
def test_serializer_returning_neither_bytes_nor_str(ctx, backend):
    class Weird:
        dumps = staticmethod(lambda obj: 42)
        loads = staticmethod(lambda data: data)

    a, b = ctx.Pipe(backend=backend, serializer=Weird())
    with pytest.raises(TypeError, match="int"):
        a.send("x")
    a.send_bytes(b"fine")               # nothing was written by the failed send
    assert b.recv_bytes() == b"fine"
    closing(a, b)


def test_pipe_backend_simple_queue_with_a_text_serializer(ctx):
    # (The pipe backend's SimpleQueue frames bytes as the Pipe does: same rule.)
    q = ctx.SimpleQueue(backend="pipe", serializer=json)
    q.put({"k": "é"})
    assert q.get() == {"k": "é"}
    q.close()
