"""Manager security: mutual HMAC authentication before any unpickling,
junk on the port, file modes, TLS."""

import functools
import os
import random
import socket
import ssl
import stat
import struct
import threading
import time

import pytest

import mpx
import mpx.managers as mm
from mpx.backends._common import stream as _stream
from multiprocessing import AuthenticationError
from conftest import backends_for, client_context, server_context, wait_for

SOCKET_BACKENDS = [b for b in backends_for("Manager") if b in ("unix", "tcp")]
TIMEOUT = 30


@pytest.fixture(params=SOCKET_BACKENDS)
def backend(request):
    return request.param


def raw_connect(backend, address):
    if backend == "tcp":
        s = socket.create_connection(address, timeout=5)
    else:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.settimeout(5)
        s.connect(address)
    return s


def read_until_closed(sock, limit=5.0):
    """Everything the server sends until it closes; fails if it does not
    close within `limit` seconds."""
    sock.settimeout(limit)
    data = b""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not chunk:
            return data
        data += chunk
    raise AssertionError("the server did not close the connection")


def assert_still_serving(m, d):
    d["alive"] = d.get("alive", 0) + 1
    assert d["alive"] >= 1
    m2 = mm.SyncManager(address=m.address, authkey=bytes(m._authkey), backend=m._backend)
    m2.connect()


def test_wrong_authkey_is_refused_and_others_keep_working(backend):
    with mpx.get_context("fork").Manager(backend=backend, authkey=b"right") as m:
        d = m.dict()
        for _ in range(3):
            with pytest.raises(AuthenticationError):
                mm.SyncManager(address=m.address, authkey=b"wrong", backend=backend).connect()
        assert_still_serving(m, d)


def test_client_checks_the_server_knows_the_key(backend, tmp_path):
    # A fake server that answers the handshake without knowing the key.
    if backend == "tcp":
        lsock = socket.create_server(("127.0.0.1", 0))
        address = lsock.getsockname()
    else:
        address = str(tmp_path / "fake.sock")
        lsock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        lsock.bind(address)
        lsock.listen()

    def impostor():
        conn, _ = lsock.accept()
        with conn:
            conn.sendall(_stream.MAGIC + bytes((_stream.VERSION,)) + os.urandom(32))
            conn.recv(64)
            conn.sendall(b"\x01" + os.urandom(32))   # accepts, with a made-up proof
            time.sleep(0.5)

    t = threading.Thread(target=impostor)
    t.start()
    try:
        with pytest.raises(AuthenticationError, match="does not hold the authkey"):
            mm.SyncManager(address=address, authkey=b"key", backend=backend).connect()
    finally:
        t.join(TIMEOUT)
        lsock.close()


def test_stdlib_manager_is_recognised_as_not_mpx():
    import multiprocessing.managers as std
    m = std.SyncManager(address=("127.0.0.1", 0), authkey=b"k")
    m.start()
    try:
        with pytest.raises(_stream.ProtocolError, match="not an mpx manager"):
            mm.SyncManager(address=m.address, authkey=b"k").connect()
    finally:
        m.shutdown()


def test_nothing_is_unpickled_before_authentication(backend, tmp_path):
    marker = tmp_path / "pwned"

    class Evil:
        def __reduce__(self):
            return (os.system, (f"touch {marker}",))

    import pickle
    payload = pickle.dumps(Evil())
    with mpx.get_context("fork").Manager(backend=backend) as m:
        d = m.dict()
        for blob in (payload, struct.pack("<Q", len(payload)) + payload,
                     b"\0" * 32 + payload):
            s = raw_connect(backend, m.address)
            s.sendall(blob.ljust(64, b"\0"))
            read_until_closed(s)
            s.close()
        time.sleep(0.2)
        assert not marker.exists()
        assert_still_serving(m, d)


def test_fuzz_junk_closes_only_that_connection(backend):
    rng = random.Random(1234)
    with mpx.get_context("fork").Manager(backend=backend, handshake_timeout=0.5) as m:
        d = m.dict()
        d["x"] = 1
        base = m._server_info()
        started = time.monotonic()
        socks = []
        # All connections at once: the server must cope with many bad peers
        # at the same time (and the stalled ones time out together).
        for i in range(80):
            s = raw_connect(backend, m.address)
            case = i % 4
            if case == 0:      # random bytes of random length, then close
                s.sendall(os.urandom(rng.randrange(0, 200)))
                s.shutdown(socket.SHUT_WR)
            elif case == 1:    # a truncated handshake answer, then silence
                s.sendall(os.urandom(rng.randrange(1, 63)))
            elif case == 2:    # a huge length prefix, as if past the handshake
                s.sendall(struct.pack("<Q", rng.randrange(1 << 40, 1 << 64)))
            else:              # nothing at all
                pass
            socks.append(s)
            if i % 10 == 0:
                assert d["x"] == 1      # others are served all along
        for s in socks:
            hello = read_until_closed(s, limit=5.0)
            assert hello[:4] == _stream.MAGIC
            s.close()
        assert time.monotonic() - started < 10
        assert_still_serving(m, d)
        assert wait_for(lambda: m._server_info()["connections"] <= base["connections"])



def authenticated_socket(backend, m):
    s = raw_connect(backend, m.address)
    _stream.client_handshake(s, bytes(m._authkey), 5)
    s.settimeout(5)
    return s


def test_fuzz_after_authentication(backend):
    """An authenticated peer sending garbage gets errors, not a dead server;
    a huge or truncated frame closes only its own connection."""
    rng = random.Random(99)
    with mpx.get_context("fork").Manager(backend=backend) as m:
        d = m.dict(x=1)
        s = authenticated_socket(backend, m)
        conn = _stream.Connection(s)
        for _ in range(30):
            conn.send(os.urandom(rng.randrange(0, 300)))
            import pickle
            kind, exc, tb = pickle.loads(conn.recv())
            assert kind == mm._ERROR and "could not read a request" in str(exc)
        # A frame announcing more than the limit: the server hangs up.
        s.sendall(struct.pack("<Q", 1 << 62))
        assert read_until_closed(s) == b""
        s.close()
        # A frame cut short by the peer closing.
        s = authenticated_socket(backend, m)
        s.sendall(struct.pack("<Q", 1000) + b"x" * 10)
        s.shutdown(socket.SHUT_WR)
        assert read_until_closed(s) == b""
        s.close()
        assert d["x"] == 1
        assert_still_serving(m, d)


def test_stalled_handshake_is_cut_off(backend):
    with mpx.get_context("fork").Manager(backend=backend, handshake_timeout=0.3) as m:
        d = m.dict()
        s = raw_connect(backend, m.address)
        t0 = time.monotonic()
        read_until_closed(s, limit=5.0)
        assert time.monotonic() - t0 < 3.0
        s.close()
        assert_still_serving(m, d)


def test_unix_socket_mode_and_cleanup(tmp_path):
    if "unix" not in SOCKET_BACKENDS:
        pytest.skip("unix backend unavailable")
    with mpx.get_context("fork").Manager(backend="unix") as m:
        path = m.address
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert not os.path.exists(path) and not os.path.exists(os.path.dirname(path))
    explicit = str(tmp_path / "mgr.sock")
    old = os.umask(0)
    try:
        with mm.SyncManager(address=explicit, ctx=mpx.get_context("fork")) as m:
            assert stat.S_IMODE(os.stat(explicit).st_mode) == 0o600
            m.dict()
    finally:
        os.umask(old)
    assert not os.path.exists(explicit)


def test_served_in_process_removes_its_socket(tmp_path):
    if "unix" not in SOCKET_BACKENDS:
        pytest.skip("unix backend unavailable")
    path = str(tmp_path / "inproc.sock")
    server = mm.SyncManager(address=path, authkey=b"k").get_server()
    t = threading.Thread(target=server.serve_forever)
    t.start()
    try:
        client = mm.SyncManager(address=path, authkey=b"k")
        client.connect()
        d = client.dict(a=1)
        assert d["a"] == 1
        assert mm._oneshot("unix", path, b"k", "shutdown") is None
    finally:
        t.join(TIMEOUT)
    assert not t.is_alive() and not os.path.exists(path)


# --- TLS ------------------------------------------------------------------------

def read_in_child(d, out):
    out.put(d["secret"])


@pytest.mark.skipif("tcp" not in SOCKET_BACKENDS, reason="tcp backend unavailable")
def test_tls(ctx, certificate):
    cert, key = certificate
    m = mm.SyncManager(ctx=ctx, backend="tcp", authkey=b"k",
                       ssl_context=functools.partial(server_context, cert, key),
                       client_ssl_context=functools.partial(client_context, cert),
                       handshake_timeout=1.0)
    with m:
        d = m.dict(secret=42)
        assert d["secret"] == 42
        # A proxy travels to a child (its client context is a picklable callable).
        out = ctx.stdlib_context().Queue()
        p = ctx.Process(target=read_in_child, args=(d, out))
        p.start()
        assert out.get(timeout=TIMEOUT) == 42
        p.join(TIMEOUT)
        # Without TLS the client gets nowhere; the server keeps serving.
        with pytest.raises((EOFError, OSError)):
            mm.SyncManager(address=m.address, authkey=b"k", backend="tcp").connect()
        # TLS with a client that does not trust the certificate.
        with pytest.raises(ssl.SSLError):
            mm.SyncManager(address=m.address, authkey=b"k", backend="tcp",
                           client_ssl_context=ssl.create_default_context()).connect()
        assert d["secret"] == 42


@pytest.mark.skipif("tcp" not in SOCKET_BACKENDS, reason="tcp backend unavailable")
def test_tls_context_objects(certificate):
    cert, key = certificate
    # An SSLContext object is fine where nothing has to pickle it (fork)...
    with mm.SyncManager(ctx=mpx.get_context("fork"), backend="tcp",
                        ssl_context=server_context(cert, key),
                        client_ssl_context=client_context(cert)) as m:
        d = m.list([1])
        assert d[0] == 1
    # ... and refused with a clear message where it would have to be.
    m = mm.SyncManager(ctx=mpx.get_context("spawn"), backend="tcp",
                       ssl_context=server_context(cert, key))
    with pytest.raises(TypeError, match="callable"):
        m.start()


def test_shm_rings_are_private():
    if "shm" not in backends_for("Manager"):
        pytest.skip("shm backend unavailable")
    with mpx.get_context("fork").Manager(backend="shm") as m:
        d = m.dict(a=1)
        peer = mm._peers[("shm", m.address)]
        conns = list(peer.all_conns)
        assert conns
        for conn in conns:
            for ring in (conn._in, conn._out):
                assert stat.S_IMODE(os.fstat(ring.fd).st_mode) == 0o600
        assert stat.S_IMODE(os.stat(m.address).st_mode) == 0o600
        assert d["a"] == 1
