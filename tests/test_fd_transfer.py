"""File descriptors over Pipe ends: ``multiprocessing.reduction.send_handle``.

The stdlib passes a descriptor as one byte carrying SCM_RIGHTS on the
socket under a connection. An shm Pipe end carries it on its liveness
socket (its fileno() is a readiness descriptor, not that socket); the pipe
backend's duplex ends are the stdlib's sockets; a fifo end cannot carry one
and says so. CPython's own test_fd_transfer and test_large_fd_transfer run
in tests/test_stdlib_oracle.py; this covers what they do not.
"""

import os
import tempfile

import pytest

import mpx
import mpx.connection
import mpx.reduction
from multiprocessing import reduction

from conftest import join_all


def _write_through_received_fd(conn, data):
    fd = reduction.recv_handle(conn)
    os.write(fd, data)
    os.close(fd)


def _send_fd_of(conn, path):
    # The received descriptor is a duplicate of this open file: it stays
    # usable after this process closed its own and exited.
    with open(path, "wb") as f:
        reduction.send_handle(conn, f.fileno(), os.getppid())


@pytest.fixture
def path():
    fd, name = tempfile.mkstemp(prefix="mpx-fd-transfer-")
    os.close(fd)
    yield name
    os.unlink(name)


def test_mpx_reduction_is_the_stdlibs_module():
    assert mpx.reduction is reduction


@pytest.mark.parametrize("backend", ["shm", "pipe"])
def test_a_child_writes_through_a_descriptor_it_received(ctx, backend, path):
    a, b = ctx.Pipe(duplex=True, backend=backend)
    p = ctx.Process(target=_write_through_received_fd, args=(b, b"from the child"))
    p.start()
    with open(path, "wb") as f:
        reduction.send_handle(a, f.fileno(), p.pid)
    join_all([p])
    a.close()
    b.close()
    with open(path, "rb") as f:
        assert f.read() == b"from the child"


@pytest.mark.parametrize("duplex", [True, False])
def test_a_child_sends_a_descriptor_back(duplex, path):
    # Child to parent, over a duplex pair and from the write end of a
    # simplex pair (both ends hold the socket the descriptor travels on).
    a, b = mpx.Pipe(duplex=duplex)
    p = mpx.get_context("fork").Process(target=_send_fd_of, args=(b, path))
    p.start()
    fd = mpx.reduction.recv_handle(a)
    os.write(fd, b"through the child's file")
    os.close(fd)
    join_all([p])
    a.close()
    b.close()
    with open(path, "rb") as f:
        assert f.read() == b"through the child's file"


def test_bytes_without_a_descriptor_are_a_runtimeerror():
    a, b = mpx.Pipe()
    try:
        b._chan._sock.send(b"\0")           # what a peer sending no fd leaves
        with pytest.raises(RuntimeError, match="descriptor"):
            reduction.recv_handle(a)
    finally:
        a.close()
        b.close()


def test_a_hung_up_peer_is_eoferror():
    a, b = mpx.Pipe()
    b.close()
    try:
        with pytest.raises(EOFError):
            reduction.recv_handle(a)
    finally:
        a.close()


def test_a_waiting_descriptor_is_no_message_and_hides_no_eof(path):
    a, b = mpx.Pipe()
    with open(path, "wb") as f:
        reduction.send_handle(a, f.fileno(), os.getpid())
    try:
        # The descriptor waits on b's socket: b has no message, no EOF.
        assert not b.poll(0)
        assert mpx.connection.wait([b], 0) == []
        a.send("after the fd")
        assert b.poll(5) and b.recv() == "after the fd"
        # The peer goes while a second descriptor still waits: EOF all the
        # same, and the descriptors are still there to take.
        with open(path, "ab") as f:
            reduction.send_handle(a, f.fileno(), os.getpid())
        a.close()
        assert b.poll(5)
        with pytest.raises(EOFError):
            b.recv()
        for _ in range(2):
            os.close(reduction.recv_handle(b))
    finally:
        a.close()
        b.close()


def test_a_fifo_end_says_it_cannot_carry_descriptors():
    a, b = mpx.Pipe(backend="fifo")
    try:
        with pytest.raises(OSError, match="fifo backend's Pipe cannot carry file descriptors"):
            reduction.send_handle(a, 0, os.getpid())
        with pytest.raises(OSError, match="fifo backend's Pipe cannot carry file descriptors"):
            reduction.recv_handle(b)
    finally:
        a.close()
        b.close()


def test_a_simplex_pipe_backend_end_says_it_cannot_carry_descriptors():
    r, w = mpx.Pipe(duplex=False, backend="pipe")
    try:
        with pytest.raises(OSError, match="simplex Pipe .* cannot carry file descriptors"):
            reduction.send_handle(w, 0, os.getpid())
        with pytest.raises(OSError, match="simplex Pipe .* cannot carry file descriptors"):
            reduction.recv_handle(r)
    finally:
        r.close()
        w.close()


def test_other_connections_still_use_the_stdlibs_functions(path):
    import multiprocessing
    a, b = multiprocessing.Pipe()
    try:
        with open(path, "wb") as f:
            reduction.send_handle(a, f.fileno(), os.getpid())
        fd = reduction.recv_handle(b)
        os.write(fd, b"stdlib")
        os.close(fd)
        with open(path, "rb") as f:
            assert f.read() == b"stdlib"
    finally:
        a.close()
        b.close()
