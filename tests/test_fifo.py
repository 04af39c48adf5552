"""The fifo Pipe backend: named FIFO pairs between unrelated processes."""

import errno
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
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


def open_both(path, duplex=True, timeout=30, **kw):
    """(end 0, end 1) of the pair at `path`, both opened in this process."""
    got = {}

    def open_one():
        try:
            got[1] = mpx.Pipe(duplex, backend="fifo", path=path, end=1, timeout=timeout, **kw)
        except BaseException as e:      # handed to the main thread
            got[1] = e

    t = threading.Thread(target=open_one)
    t.start()
    try:
        c0 = mpx.Pipe(duplex, backend="fifo", path=path, end=0, timeout=timeout, **kw)
    finally:
        t.join(timeout + 5)
    if isinstance(got.get(1), BaseException):
        c0.close()
        raise got[1]
    return c0, got[1]


def exchange(c0, c1, duplex, tag):
    c1.send(("to 0", tag))
    assert c0.poll(10) and c0.recv() == ("to 0", tag)
    if duplex:
        c0.send(("to 1", tag))
        assert c1.poll(10) and c1.recv() == ("to 1", tag)


@pytest.mark.parametrize("end", [0, 1])
@pytest.mark.parametrize("duplex", [True, False], ids=["duplex", "simplex"])
def test_second_opener_of_an_end_is_refused(fifo_path, duplex, end):
    c0, c1 = open_both(fifo_path, duplex)
    try:
        t = time.monotonic()
        with pytest.raises(OSError, match=rf"end {end} of FIFO pair .* in use") as info:
            mpx.Pipe(duplex, backend="fifo", path=fifo_path, end=end, timeout=5)
        assert info.value.errno == errno.EBUSY
        assert time.monotonic() - t < 2          # at once, not after the timeout
        exchange(c0, c1, duplex, "after the refused open")   # nothing was written
    finally:
        c0.close()
        c1.close()


def test_an_end_reopens_after_its_owner_closes_or_dies(fifo_path):
    peer = start_peer(fifo_path, 1)
    conn = mpx.Pipe(backend="fifo", path=fifo_path, end=0, timeout=30)
    conn.send(1)
    assert conn.recv() == 1
    peer.send_signal(signal.SIGKILL)      # dies holding end 1
    peer.wait(30)
    conn.close()
    peer = start_peer(fifo_path, 1)
    conn = mpx.Pipe(backend="fifo", path=fifo_path, end=0, timeout=30)
    try:
        conn.send(2)
        assert conn.recv() == 2
    finally:
        conn.close()
        assert peer.wait(30) == 0
    for round in range(2):                 # closed cleanly, in one process
        c0, c1 = open_both(fifo_path)
        exchange(c0, c1, True, round)
        c0.close()
        c1.close()


def hold_end_then_echo(conn):
    conn.send("holding")
    conn.send(conn.recv())
    conn.close()


def test_an_end_passed_to_a_child_stays_taken(fifo_path, ctx):
    c0, c1 = open_both(fifo_path)
    p = ctx.Process(target=hold_end_then_echo, args=(c1,))
    p.start()
    c1.close()                      # the child's copy holds end 1 now
    try:
        assert c0.poll(30) and c0.recv() == "holding"
        with pytest.raises(OSError, match="end 1 of FIFO pair .* in use"):
            mpx.Pipe(backend="fifo", path=fifo_path, end=1, timeout=5)
        c0.send("echo")
        assert c0.poll(30) and c0.recv() == "echo"
    finally:
        p.join(30)
        c0.close()
    assert p.exitcode == 0
    c0, c1 = open_both(fifo_path)       # free again once the child is gone
    exchange(c0, c1, True, "again")
    c0.close()
    c1.close()


def make_pair(path, **kw):
    """Create the pair at `path` (nobody answers: the open times out)."""
    with pytest.raises(TimeoutError):
        mpx.Pipe(backend="fifo", path=path, end=0, timeout=0.05, **kw)


def test_refuses_a_pair_open_to_others(tmp_path):
    path = tmp_path / "pre"
    os.mkdir(path)
    os.chmod(path, 0o777)
    os.mkfifo(path / "to0")
    os.chmod(path / "to0", 0o666)
    with pytest.raises(PermissionError, match=r"pre: its mode 0o777 lets group/others"):
        mpx.Pipe(backend="fifo", path=path, end=0, timeout=0.1)
    assert os.listdir(path) == ["to0"]            # nothing made or opened there
    os.chmod(path, 0o700)
    with pytest.raises(PermissionError, match=r"to0: its mode 0o666 lets group/others"):
        mpx.Pipe(backend="fifo", path=path, end=0, timeout=0.1)
    os.chmod(path / "to0", 0o600)
    make_pair(path)                               # safe now
    assert sorted(os.listdir(path)) == ["end0.lock", "end1.lock", "to0", "to1"]
    os.chmod(path / "end1.lock", 0o644)
    with pytest.raises(PermissionError, match=r"end1.lock: its mode 0o644"):
        mpx.Pipe(backend="fifo", path=path, end=1, timeout=0.1)
    mpx.connection.unlink_fifo(path)


def test_mode_must_cover_the_pair(fifo_path):
    make_pair(fifo_path, mode=0o660)
    assert stat.S_IMODE(os.stat(fifo_path).st_mode) == 0o710
    assert stat.S_IMODE(os.stat(fifo_path / "to1").st_mode) == 0o660
    assert stat.S_IMODE(os.stat(fifo_path / "end1.lock").st_mode) == 0o660
    with pytest.raises(PermissionError, match=r"mode=0o600"):
        mpx.Pipe(backend="fifo", path=fifo_path, end=1, timeout=0.05)
    c0, c1 = open_both(fifo_path, mode=0o660)      # the same mode on both sides works
    exchange(c0, c1, True, "shared")
    c0.close()
    c1.close()


def test_refuses_symbolic_links(tmp_path):
    real = tmp_path / "real"
    os.mkdir(real, 0o700)
    link = tmp_path / "link"
    os.symlink(real, link)
    with pytest.raises(PermissionError, match="link: it is a symbolic link"):
        mpx.Pipe(backend="fifo", path=link, end=0, timeout=0.1)
    assert os.listdir(real) == []                 # nothing made through the link
    with pytest.raises(ValueError, match="symbolic link"):
        mpx.connection.unlink_fifo(link)
    dangling = tmp_path / "dangling"
    os.symlink(tmp_path / "nowhere", dangling)
    with pytest.raises(PermissionError, match="symbolic link"):
        mpx.Pipe(backend="fifo", path=dangling, end=0, timeout=0.1)
    assert not (tmp_path / "nowhere").exists()
    pair = tmp_path / "pair"                      # a FIFO replaced by a link
    make_pair(pair)
    os.mkfifo(tmp_path / "elsewhere", 0o600)
    os.unlink(pair / "to1")
    os.symlink(tmp_path / "elsewhere", pair / "to1")
    with pytest.raises(PermissionError, match="to1: it is a symbolic link"):
        mpx.Pipe(backend="fifo", path=pair, end=1, timeout=0.1)
    os.unlink(pair / "to1")
    mpx.connection.unlink_fifo(pair)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give the pair to another user")
def test_refuses_a_pair_owned_by_another_user(fifo_path):
    make_pair(fifo_path)
    nobody = 65534
    for p in [fifo_path, *fifo_path.iterdir()]:
        os.chown(p, nobody, nobody)
    with pytest.raises(PermissionError, match=rf"pair: it is owned by uid {nobody}"):
        mpx.Pipe(backend="fifo", path=fifo_path, end=0, timeout=0.05)
    os.chown(fifo_path, 0, 0)
    with pytest.raises(PermissionError, match=rf"to0: it is owned by uid {nobody}"):
        mpx.Pipe(backend="fifo", path=fifo_path, end=0, timeout=0.05)
    # Asking to share with others (mode 0o666) accepts another user's pair.
    os.chown(fifo_path, nobody, nobody)
    with pytest.raises(TimeoutError):
        mpx.Pipe(backend="fifo", path=fifo_path, end=0, timeout=0.05, mode=0o666)
