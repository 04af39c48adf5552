"""Hostile state for the Manager's transports and the fifo Pipe (issue 19).

Each case says, in its name or its comment, the error it must give. The
Manager must keep serving through all of them and never unpickle a byte
from a peer that has not authenticated; a FIFO pair made, planted or named
by another user must be refused, and nothing may be left behind.
"""

import errno
import functools
import logging
import os
import pickle
import resource
import shutil
import socket
import ssl
import tempfile
import threading
import time

import pytest

import mpx
import mpx.managers as mm
from mpx.backends import fifo
from mpx.backends._common import stream as _stream
from conftest import backends_for, client_context, server_context, wait_for

SOCKET_BACKENDS = [b for b in backends_for("Manager") if b in ("unix", "tcp")]
TIMEOUT = 30
NAN = float("nan")
INF = float("inf")


@pytest.fixture(params=SOCKET_BACKENDS)
def backend(request):
    return request.param


def raw_connect(backend, address, timeout=10):
    if backend == "tcp":
        return socket.create_connection(address, timeout=timeout)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(timeout)
    # A unix socket with a timeout is not told to wait while the server's
    # backlog is full (EAGAIN): wait here.
    _stream._unix_connect(s, address, time.monotonic() + timeout)
    return s


def read_until_closed(sock, limit=10.0):
    """Everything the server sends until it hangs up (AssertionError if it
    has not within `limit` seconds)."""
    sock.settimeout(limit)
    data = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        except socket.timeout:
            break
        if not chunk:
            return data
        data += chunk
    raise AssertionError("the server did not close the connection")


GREETING = len(_stream.MAGIC) + 1 + _stream.NONCE_SIZE


def greeted(backend, address):
    """A raw connection, past the server's greeting (which it sends at once)."""
    s = raw_connect(backend, address)
    hello = _stream._recv_exact(s, GREETING)
    assert hello[:4] == _stream.MAGIC and hello[4] == _stream.VERSION
    return s


def fresh_call(backend, address, authkey):
    """A request on a brand-new connection (one that has to get through
    the accept loop and a handshake now)."""
    return mm._oneshot(backend, address, authkey, "number_of_objects", timeout=TIMEOUT)


# --- Manager: idle and unauthenticated connections ---------------------------

def test_idle_flood_leaves_threads_bounded_and_a_client_gets_through(backend):
    # Must give: the client's calls succeed; the server never holds more
    # than MAX_HANDSHAKES threads for connections that did not authenticate
    # (before: one thread each, 400 idle connections made 405 threads).
    # The idle peers stay inside their handshake timeout (60 s) throughout.
    with mpx.get_context("fork").Manager(backend=backend, handshake_timeout=60) as m:
        d = m.dict(x=1)
        key = bytes(m._authkey)
        base = m._server_info()["threads"]
        idle = []
        try:
            for _ in range(200):
                idle.append(raw_connect(backend, m.address))
            assert fresh_call(backend, m.address, key) == 1
            # A few threads that just gave their place back may still be
            # finishing: a small margin.
            threads = m._server_info()["threads"]
            assert threads <= base + mm.MAX_HANDSHAKES + 4, (threads, base)
            assert d["x"] == 1
        finally:
            for s in idle:
                s.close()
        assert wait_for(lambda: m._server_info()["threads"] <= base + 1)


def test_a_peer_trickling_its_handshake_is_cut_off_by_the_total_timeout(backend):
    # Must give: the server hangs up once handshake_timeout (1 s) has passed
    # in all, though each byte came well within it (before: the timeout was
    # per read, so a byte every 0.25 s held the connection for ever).
    with mpx.get_context("fork").Manager(backend=backend, handshake_timeout=1.0) as m:
        s = greeted(backend, m.address)
        t0 = time.monotonic()
        closed = False
        try:
            s.settimeout(0.25)
            for byte in _stream.CLIENT_MAGIC + bytes(64):
                try:
                    s.send(bytes((byte,)))
                    if s.recv(4096, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b"":
                        closed = True
                except (BlockingIOError, socket.timeout):
                    pass
                except OSError:
                    closed = True
                if closed or time.monotonic() - t0 > 8:
                    break
                time.sleep(0.25)
            elapsed = time.monotonic() - t0
        finally:
            s.close()
        assert closed and elapsed < 8, elapsed
        assert fresh_call(backend, m.address, bytes(m._authkey)) == 0


@pytest.mark.parametrize("case, expect", [
    # (what the peer sends after the greeting, what it must get back)
    ("random-junk", b""),                     # ProtocolError on the server: closed
    ("wrong-client-magic", b""),              # ProtocolError: closed, nothing read further
    ("wrong-digest", b"\x00"),                # AuthenticationError: rejected, closed
    ("pickle-instead-of-handshake", b""),     # ProtocolError: closed, never unpickled
    ("huge-length-prefix", b""),              # ProtocolError: closed
])
def test_garbage_handshakes_close_only_that_connection(backend, tmp_path, case, expect):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    blobs = {
        "random-junk": os.urandom(68),
        "wrong-client-magic": b"MPXQ" + os.urandom(64),
        "wrong-digest": _stream.CLIENT_MAGIC + os.urandom(64),
        "pickle-instead-of-handshake": (pickle.dumps(Evil()) * 2)[:68].ljust(68, b"."),
        "huge-length-prefix": (1 << 62).to_bytes(8, "little") + bytes(60),
    }
    with mpx.get_context("fork").Manager(backend=backend) as m:
        d = m.dict(x=1)
        s = greeted(backend, m.address)
        try:
            s.sendall(blobs[case])
            got = read_until_closed(s)
        finally:
            s.close()
        assert got == expect
        assert not marker.exists()
        assert d["x"] == 1 and fresh_call(backend, m.address, bytes(m._authkey)) == 1


# --- Manager: a thread that cannot be started ---------------------------------

def fail_connection_threads(monkeypatch, times):
    """Make the next `times` starts of a server connection thread fail, as
    they do when the process is out of threads."""
    real = threading.Thread.start
    left = [times]

    def start(self):
        if self.name == "mpx-manager-conn" and left[0] > 0:
            left[0] -= 1
            raise RuntimeError("can't start new thread")
        return real(self)

    monkeypatch.setattr(threading.Thread, "start", start)
    return left


def serve_in_thread(backend, key):
    server = mm.SyncManager(authkey=key, backend=backend).get_server()
    t = threading.Thread(target=server.serve_forever)
    t.start()
    return server, t


def stop_server(backend, server, t, key):
    try:
        mm._oneshot(backend, server.address, key, "shutdown", timeout=TIMEOUT)
    finally:
        t.join(TIMEOUT)
    assert not t.is_alive()


def test_thread_start_failure_closes_that_connection_and_keeps_accepting(
        backend, monkeypatch, caplog):
    # Must give: each client whose thread could not start gets its
    # connection closed (EOFError/ConnectionError at once, not a timeout),
    # the trouble is logged on the "mpx" logger, and the next client is
    # served (before: the accept loop died, and every later client waited
    # for its timeout).
    key = b"k"
    server, t = serve_in_thread(backend, key)
    try:
        with caplog.at_level(logging.WARNING, logger="mpx"):
            left = fail_connection_threads(monkeypatch, 3)
            for _ in range(3):
                with pytest.raises((EOFError, ConnectionError)):
                    fresh_call(backend, server.address, key)
            assert left[0] == 0
            assert fresh_call(backend, server.address, key) == 0
        assert any("could not serve" in r.getMessage() and "still accepting" in r.getMessage()
                   for r in caplog.records if r.name == "mpx")
    finally:
        monkeypatch.undo()
        stop_server(backend, server, t, key)


def serve_under_a_thread_limit(backend):
    """As an unprivileged user: a server in this process; then no new
    thread may start (RLIMIT_NPROC); a client connects; the limit is lifted
    and another client connects. Returns what each client got."""
    key = b"k"
    server, t = serve_in_thread(backend, key)
    soft, hard = resource.getrlimit(resource.RLIMIT_NPROC)
    results = []
    try:
        resource.setrlimit(resource.RLIMIT_NPROC, (1, hard))
        try:
            fresh_call(backend, server.address, key)
            results.append("served")
        except (EOFError, ConnectionError) as e:
            results.append(type(e).__name__)
        finally:
            resource.setrlimit(resource.RLIMIT_NPROC, (soft, hard))
        results.append(fresh_call(backend, server.address, key))
    finally:
        stop_server(backend, server, t, key)
    return results


def test_a_real_thread_limit_does_not_stop_the_accept_loop(backend, attacker):
    # Must give: under RLIMIT_NPROC the client is closed at once (EOFError
    # or a ConnectionError); once threads can start again, the next client
    # is served (number_of_objects == 0).
    first, second = attacker.run(serve_under_a_thread_limit, backend)
    assert first in ("EOFError", "ConnectionResetError", "BrokenPipeError",
                     "ConnectionError", "ProtocolError")
    assert second == 0


# --- Manager: TLS on one side only --------------------------------------------

@pytest.mark.skipif("tcp" not in SOCKET_BACKENDS, reason="tcp backend unavailable")
def test_plaintext_client_on_a_tls_manager_is_told_tls_is_expected(certificate):
    # Must give: ProtocolError "... expects TLS: connect with
    # client_ssl_context=", without waiting for a timeout (before: the
    # client waited 10 s for a greeting, then a vague error).
    cert, key = certificate
    with mm.SyncManager(ctx=mpx.get_context("fork"), backend="tcp", authkey=b"k",
                        ssl_context=functools.partial(server_context, cert, key),
                        client_ssl_context=functools.partial(client_context, cert),
                        handshake_timeout=60) as m:
        d = m.dict(x=1)
        t0 = time.monotonic()
        with pytest.raises(_stream.ProtocolError, match="expects TLS: connect with "
                                                         "client_ssl_context="):
            mm._oneshot("tcp", m.address, b"k", "dummy", timeout=60)
        assert time.monotonic() - t0 < 30          # not by a timeout
        assert d["x"] == 1


@pytest.mark.skipif("tcp" not in SOCKET_BACKENDS, reason="tcp backend unavailable")
def test_tls_client_on_a_plaintext_manager_is_told_it_does_not_speak_tls(certificate):
    # Must give: ssl.SSLError "... did not answer in TLS ...: it expects
    # clients without TLS".
    cert, _ = certificate
    with mm.SyncManager(ctx=mpx.get_context("fork"), backend="tcp", authkey=b"k") as m:
        d = m.dict(x=1)
        with pytest.raises(ssl.SSLError, match="did not answer in TLS .* expects clients "
                                               "without TLS"):
            mm._oneshot("tcp", m.address, b"k", "dummy",
                        opts={"ssl_context": client_context(cert)})
        assert d["x"] == 1


# --- Manager: NaN and infinite timeouts ---------------------------------------

def test_manager_waits_refuse_nan_and_take_infinity_as_for_ever():
    # Must give: ValueError "... not NaN" at once for every wait that takes
    # a timeout (before: a managed Queue.get(timeout=nan) hung its server
    # thread and the caller for ever); infinity waits for ever (before:
    # OverflowError from threading).
    with mpx.get_context("fork").Manager() as m:
        q, ev, lock = m.Queue(), m.Event(), m.Lock()
        cond, barrier = m.Condition(), m.Barrier(1)
        for call in (lambda: q.get(timeout=NAN), lambda: q.put(1, timeout=NAN),
                     lambda: ev.wait(NAN), lambda: lock.acquire(timeout=NAN),
                     lambda: cond.wait(NAN), lambda: cond.wait_for(lambda: False, NAN),
                     lambda: barrier.wait(NAN), lambda: m.join(NAN)):
            with pytest.raises(ValueError, match="NaN"):
                call()
        q.put(1)
        assert q.get(timeout=INF) == 1
        ev.set()
        assert ev.wait(INF) is True
        assert lock.acquire(timeout=INF) is True
        lock.release()
        with cond:
            assert cond.wait_for(lambda: True, INF) is True
        assert barrier.wait(INF) == 0
    for kw in ({"shutdown_timeout": NAN}, {"transit_timeout": NAN},
               {"handshake_timeout": NAN}):
        with pytest.raises(ValueError, match="NaN"):
            mm.SyncManager(**kw)


# --- fifo: NaN timeouts ---------------------------------------------------------

def test_fifo_and_pipe_waits_refuse_nan(tmp_path):
    # Must give: ValueError "... not NaN" at once (before: the fifo open
    # spun for ever; the pipe backend gave EINVAL or an unrelated
    # "cannot convert float NaN to integer").
    path = tmp_path / "pair"
    with pytest.raises(ValueError, match="NaN"):
        mpx.Pipe(backend="fifo", path=path, end=0, timeout=NAN)
    assert not path.exists()
    for backend in ("fifo", "pipe"):
        a, b = mpx.Pipe(backend=backend)
        with pytest.raises(ValueError, match="NaN"):
            b.poll(NAN)
        a.send("x")
        assert b.poll(INF) and b.recv() == "x"
        assert b.poll(-1) is False              # the stdlib's meaning: no wait
        a.close()
        b.close()
    for make in (mpx.Queue, mpx.JoinableQueue):
        q = make(1, backend="pipe")
        with pytest.raises(ValueError, match="NaN"):
            q.get(timeout=NAN)
        q.put("x", timeout=INF)
        with pytest.raises(ValueError, match="NaN"):
            q.put("y", timeout=NAN)
        with pytest.raises(ValueError, match="NaN"):
            q.put_many(["y"], timeout=NAN)
        assert q.get(timeout=INF) == "x"
        q.close()
        q.join_thread()


# --- fifo: out of descriptors -----------------------------------------------------

def in_child(func, *args):
    """func(*args) in a forked child; its result, or its exception re-raised."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.close(rfd)
            try:
                result = ("ok", func(*args))
            except BaseException as e:
                result = ("raised", e)
            with os.fdopen(wfd, "wb") as f:
                f.write(pickle.dumps(result))
            code = 0
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as f:
        data = f.read()
    os.waitpid(pid, 0)
    how, value = pickle.loads(data)
    if how == "raised":
        raise value
    return value


def open_fds():
    return sorted(int(n) for n in os.listdir("/proc/self/fd"))


def fifo_pipes_out_of_descriptors(tmpdir, named):
    """In a child: make fifo Pipes with only 0..7 descriptors to spare;
    return [(spare, outcome, fds leaked, leftovers in tmpdir)]."""
    tempfile.tempdir = tmpdir
    path = os.path.join(tmpdir, "pair")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    # Fill the holes of the descriptor table, so that the limit leaves
    # exactly `spare` descriptors free.
    taken = set(open_fds())
    filler = os.open("/dev/null", os.O_RDONLY)
    for fd in range(max(taken)):
        if fd not in taken and fd != filler:
            os.dup2(filler, fd)
    out = []
    for spare in range(8):
        before = open_fds()
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(before) + 1 + spare, hard))
        conns = ()
        try:
            if named:
                conns = (mpx.Pipe(backend="fifo", path=path, end=0, timeout=0.01),)
            else:
                conns = mpx.Pipe(backend="fifo")
            outcome = "made"
        except OSError as e:
            outcome = errno.errorcode.get(e.errno, type(e).__name__)
        for c in conns:
            c.close()
        if os.path.lexists(path):
            # A pair that got made stays (its other end may come); removing
            # it must work while descriptors are still short.
            mpx.connection.unlink_fifo(path)
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
        out.append((spare, outcome, sorted(set(open_fds()) - set(before)),
                    sorted(os.listdir(tmpdir))))
    return out


@pytest.mark.parametrize("named", [False, True], ids=["anonymous", "named"])
def test_fifo_pipe_out_of_descriptors_leaves_nothing_behind(tmp_path, named):
    # Must give: OSError EMFILE while descriptors are short (or a working
    # pair once there are enough), and after each try no descriptor and no
    # mpx-fifo-* folder (or half-made pair) left (before: the anonymous pair
    # leaked both; a named pair's directory could stay, unrecorded).
    rows = in_child(fifo_pipes_out_of_descriptors, str(tmp_path), named)
    outcomes = [r[1] for r in rows]
    assert "EMFILE" in outcomes
    assert ("TimeoutError" if named else "made") in outcomes    # once there were enough
    for spare, outcome, leaked, left in rows:
        assert outcome in ("made", "EMFILE", "TimeoutError"), (spare, outcome)
        assert leaked == [] and left == [], (spare, outcome, leaked, left)


# --- fifo: another user's pair, links and records ---------------------------------

@pytest.fixture
def shared_dir():
    """A sticky, world-writable folder (like /tmp) both users can reach."""
    d = tempfile.mkdtemp(prefix="mpx-test-shared-", dir="/tmp")
    os.chmod(d, 0o1777)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def squat_pair(path, mode):
    """As the attacker: make a FIFO pair at `path` first."""
    os.mkdir(path)
    os.chmod(path, 0o777 if mode & 0o066 else 0o700)
    for name in ("to0", "to1"):
        os.mkfifo(os.path.join(path, name))
        os.chmod(os.path.join(path, name), mode)
    return os.getuid()


@pytest.mark.parametrize("squat_mode, open_mode", [(0o600, 0o600), (0o666, 0o600),
                                                   (0o666, 0o660)])
def test_fifo_pair_squatted_by_another_user_is_refused(attacker, shared_dir, squat_mode,
                                                       open_mode):
    # Must give: PermissionError "refusing to open ...: it is owned by uid N"
    # (the default mode=0o600 trusts nobody else's pair), or, when the
    # opener opts in to other users' pairs (mode=0o660), "... its mode 0o777
    # lets group/others do more than mode=0o660 allows"; nothing is opened
    # or written.
    path = os.path.join(shared_dir, "pair")
    uid = attacker.run(squat_pair, path, squat_mode)
    before = sorted(os.listdir(path))
    why = (rf"pair: it is owned by uid {uid}" if open_mode == 0o600 else
           r"pair: its mode 0o777 lets group/others do more than mode=0o660 allows")
    with pytest.raises(PermissionError, match=why):
        mpx.Pipe(backend="fifo", path=path, end=0, timeout=0.1, mode=open_mode)
    assert sorted(os.listdir(path)) == before


def plant_link(link, target):
    os.symlink(target, link)


def test_fifo_path_planted_as_a_symlink_is_refused(attacker, shared_dir, tmp_path):
    # Must give: PermissionError "... it is a symbolic link" when opening,
    # ValueError "... is a symbolic link, not an mpx FIFO pair" when
    # unlinking; the directory it points to is left as it was.
    victim = tmp_path / "victim"
    victim.mkdir(mode=0o700)
    (victim / "to0").write_text("precious")
    link = os.path.join(shared_dir, "pair")
    attacker.run(plant_link, link, str(victim))
    with pytest.raises(PermissionError, match="symbolic link"):
        mpx.Pipe(backend="fifo", path=link, end=0, timeout=0.1)
    with pytest.raises(ValueError, match="is a symbolic link, not an mpx FIFO pair"):
        mpx.connection.unlink_fifo(link)
    assert sorted(os.listdir(victim)) == ["to0"]
    assert (victim / "to0").read_text() == "precious"


def record(name):
    return {"kind": "Pipe", "backend": "fifo", "name": name, "module": fifo.__name__,
            "meta": {"path": "/etc/passwd"}}


def test_forged_fifo_records_remove_nothing_but_the_callers_own_pairs(attacker, shared_dir,
                                                                       tmp_path):
    # A record is anybody's word: remove() looks at the pair itself.
    # victim directory holding a file named like a FIFO -> ValueError "is not
    #   what an mpx FIFO pair holds there"
    victim_dir = tmp_path / "victim-dir"
    victim_dir.mkdir()
    (victim_dir / "to0").write_text("precious")
    with pytest.raises(ValueError, match="not what an mpx FIFO pair holds"):
        fifo.remove(record(str(victim_dir)))
    assert (victim_dir / "to0").read_text() == "precious"
    # an empty directory of the caller's -> ValueError "has no FIFO to0"
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ValueError, match="has no FIFO to0"):
        fifo.remove(record(str(empty)))
    assert empty.is_dir()
    # a victim file -> ValueError "not a directory"
    victim_file = tmp_path / "victim-file"
    victim_file.write_text("precious")
    with pytest.raises(ValueError, match="not a directory"):
        fifo.remove(record(str(victim_file)))
    assert victim_file.read_text() == "precious"
    # another user's real pair -> PermissionError "owned by uid N"
    theirs = os.path.join(shared_dir, "theirs")
    uid = attacker.run(squat_pair, theirs, 0o600)
    with pytest.raises(PermissionError, match=rf"refusing to remove .*theirs: it is owned "
                                              rf"by uid {uid}"):
        fifo.remove(record(theirs))
    assert sorted(os.listdir(theirs)) == ["to0", "to1"]
    # a link (planted by the other user) to the caller's own pair ->
    # ValueError "is a symbolic link"; the pair survives
    mine = tmp_path / "mine"
    with pytest.raises(TimeoutError):
        mpx.Pipe(backend="fifo", path=mine, end=0, timeout=0.01)
    link = os.path.join(shared_dir, "link")
    attacker.run(plant_link, link, str(mine))
    with pytest.raises(ValueError, match="symbolic link"):
        fifo.remove(record(link))
    assert fifo.describe(record(link)) is None
    assert sorted(os.listdir(mine)) == ["end0.lock", "end1.lock", "to0", "to1"]
    # records that name no absolute path -> ValueError "does not name a FIFO
    # pair by its absolute path"
    for name in (None, 42, "", "relative/pair", str(mine) + "/../mine", ["/tmp"]):
        with pytest.raises(ValueError, match="absolute path"):
            fifo.remove(record(name))
        with pytest.raises(ValueError, match="absolute path"):
            fifo.describe(record(name))
    with pytest.raises(ValueError, match="absolute path"):
        fifo.remove("not a dict")
    # describe() reads the pair without opening anything for writing and
    # says None for what is not one
    assert fifo.describe(record(str(victim_dir))) is None
    assert fifo.describe(record(str(victim_file))) is None
    assert fifo.describe(record(str(tmp_path / "gone"))) is None
    info = fifo.describe(record(str(mine)))
    assert info["path"] == str(mine) and info["duplex"] is True and info["mode"] == "0o600"
    # the caller's own pair, through its true path -> removed, record gone
    fifo.remove(record(str(mine)))
    assert not mine.exists()
    fifo.remove(record(str(mine)))             # already gone: nothing to do
