"""The fifo Pipe backend: named FIFO pairs between unrelated processes."""

import os
import signal
import stat
import subprocess
import sys
import textwrap
import time

import pytest

import mpx
from mpx import _names

PEER = textwrap.dedent("""
    import sys, mpx
    path, end, duplex = sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1"
    conn = mpx.Pipe(duplex, backend="fifo", path=path, end=end, timeout=30)
    if duplex:
        while True:
            try:
                msg = conn.recv()
            except EOFError:
                break
            conn.send(msg if not callable(msg) else msg(1))
    else:
        for i in range(100):
            conn.send(("item", i, b"x" * (i * 997)))
    conn.close()
""")


def start_peer(path, end, duplex=True):
    return subprocess.Popen([sys.executable, "-c", PEER, str(path), str(end),
                             "1" if duplex else "0"])


@pytest.fixture
def fifo_path(tmp_path):
    path = tmp_path / "pair"
    yield path
    if path.exists():
        mpx.connection.unlink_fifo(path)


def test_unrelated_processes_talk_by_path(fifo_path):
    peer = start_peer(fifo_path, 1)
    conn = mpx.Pipe(backend="fifo", path=fifo_path, end=0, timeout=30)
    try:
        sizes = [0, 1, 100, 65_536, 1_000_003]
        for n in sizes:                       # boundaries are kept
            conn.send(b"m" * n)
            assert conn.recv() == b"m" * n
        conn.send(lambda x: x + 41)
        assert conn.recv() == 42
    finally:
        conn.close()
        assert peer.wait(30) == 0


def test_simplex_named_pair(fifo_path):
    peer = start_peer(fifo_path, 1, duplex=False)
    r = mpx.Pipe(False, backend="fifo", path=fifo_path, end=0, timeout=30)
    got = [r.recv() for _ in range(100)]
    assert got == [("item", i, b"x" * (i * 997)) for i in range(100)]
    with pytest.raises(EOFError):
        r.recv()
    r.close()
    assert peer.wait(30) == 0


def test_created_private_and_recorded(fifo_path):
    peer = start_peer(fifo_path, 1)
    conn = mpx.Pipe(backend="fifo", path=fifo_path, end=0, timeout=30)
    try:
        assert stat.S_IMODE(os.stat(fifo_path).st_mode) == 0o700
        for name in ("to0", "to1"):
            st = os.stat(fifo_path / name)
            assert stat.S_ISFIFO(st.st_mode) and stat.S_IMODE(st.st_mode) == 0o600
        assert any(e["name"] == str(fifo_path) and e["backend"] == "fifo"
                   for e in _names.entries())
        conn.unlink()                       # the name goes, the connection stays
        assert not fifo_path.exists()
        assert not any(e["name"] == str(fifo_path) for e in _names.entries())
        conn.send("still here")
        assert conn.recv() == "still here"
    finally:
        conn.close()
        assert peer.wait(30) == 0


def test_no_peer_times_out(fifo_path):
    t = time.monotonic()
    with pytest.raises(TimeoutError, match="other end"):
        mpx.Pipe(backend="fifo", path=fifo_path, end=0, timeout=0.3)
    assert time.monotonic() - t < 5
    with pytest.raises(TimeoutError):
        mpx.Pipe(False, backend="fifo", path=fifo_path, end=1, timeout=0.2)   # writer, no reader


def test_killed_peer_gives_eof_and_broken_pipe(fifo_path):
    peer = start_peer(fifo_path, 1)
    conn = mpx.Pipe(backend="fifo", path=fifo_path, end=0, timeout=30)
    try:
        conn.send(1)
        assert conn.recv() == 1
        peer.send_signal(signal.SIGKILL)
        peer.wait(30)
        with pytest.raises(EOFError):
            conn.recv()
        with pytest.raises(BrokenPipeError):
            for _ in range(100):               # the first write may still fit in the pipe
                conn.send_bytes(b"x" * 100_000)
    finally:
        conn.close()


def test_bad_arguments(fifo_path, tmp_path):
    with pytest.raises(ValueError, match="end must be 0 or 1"):
        mpx.Pipe(backend="fifo", path=fifo_path, end=2)
    with pytest.raises(ValueError, match="only meaningful with path"):
        mpx.Pipe(backend="fifo", end=0)
    with pytest.raises(ValueError, match="mode"):
        mpx.Pipe(backend="fifo", path=fifo_path, end=0, mode=0o7777)
    plain = tmp_path / "plain-file"
    plain.write_text("not a fifo")
    with pytest.raises(FileExistsError, match="not an mpx FIFO pair"):
        mpx.Pipe(backend="fifo", path=plain, end=0, timeout=0.1)
    with pytest.raises(FileNotFoundError):
        mpx.connection.unlink_fifo(tmp_path / "missing")


def test_anonymous_pair_leaves_nothing_behind(tmp_path):
    before = set(os.listdir("/tmp"))
    a, b = mpx.Pipe(backend="fifo")
    assert not (set(os.listdir("/tmp")) - before)
    a.send("x")
    assert b.recv() == "x"
    with pytest.raises(ValueError, match="no path"):
        a.unlink()
    a.close()
    b.close()
