"""Manager transport over TCP, optionally inside TLS.

Mechanism only (the Manager itself is ``mpx.managers``). The address is a
``(host, port)`` tuple as in ``multiprocessing.managers``; port 0 picks a free
port. ``ssl_context`` (an ``ssl.SSLContext``, or a picklable zero-argument
callable returning one, so it can travel to a spawned server process) encrypts
the stream; the HMAC handshake on the authkey still runs inside TLS, so a
client needs both the certificate trust and the key.
"""

import socket

from ._common import stream as _stream

FAMILIES = ("Manager",)
NAME = "tcp"

__all__ = ["FAMILIES", "Listener", "connect", "default_address", "check_address",
           "resolve_ssl_context"]


def check_address(address):
    """Return `address` as a (host, port) tuple, or raise ValueError."""
    if isinstance(address, list):
        address = tuple(address)
    if (not isinstance(address, tuple) or len(address) not in (2, 4)
            or not isinstance(address[0], str) or not isinstance(address[1], int)
            or isinstance(address[1], bool) or not 0 <= address[1] <= 65535):
        raise ValueError(f"a TCP manager address must be a (host, port) tuple with a "
                         f"port in 0..65535, not {address!r}")
    return address


def default_address():
    return ("127.0.0.1", 0)


def resolve_ssl_context(ctx):
    """An SSLContext from `ctx` (a context, a callable making one, or None)."""
    if ctx is None:
        return None
    import ssl
    if not isinstance(ctx, ssl.SSLContext):
        if not callable(ctx):
            raise TypeError(f"ssl_context must be an ssl.SSLContext or a callable "
                            f"returning one, not {type(ctx).__name__}")
        ctx = ctx()
        if not isinstance(ctx, ssl.SSLContext):
            raise TypeError(f"the ssl_context callable returned {type(ctx).__name__}, "
                            f"not an ssl.SSLContext")
    return ctx


def _family(host):
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _nodelay(sock):
    # Requests and replies are small and strictly alternate: Nagle's
    # algorithm would hold each one back for an ACK that is not coming.
    try:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    except OSError:
        pass


class Listener(_stream.StreamListener):
    def __init__(self, address, authkey, *, backlog=128, ssl_context=None, **kwargs):
        if address is None:
            address = default_address()
        address = check_address(address)
        self._ssl = resolve_ssl_context(ssl_context)
        sock = socket.create_server(address[:2], family=_family(address[0]),
                                    backlog=backlog)
        bound = sock.getsockname()[:2]
        super().__init__(sock, bound, authkey, **kwargs)

    def accept(self):
        sock = super().accept()
        _nodelay(sock)
        return sock

    def _wrap(self, sock):
        if self._ssl is None:
            return sock
        # A client without TLS would wait for our greeting while we wait
        # for its TLS hello: tell it at once instead.
        _stream.refuse_plaintext(sock, self.handshake_timeout)
        sock.settimeout(self.handshake_timeout)
        return self._ssl.wrap_socket(sock, server_side=True)


# What OpenSSL says when the server's first bytes are not a TLS record: an
# mpx manager without TLS greets with b"MPXM", which reads as a record of
# type 0x4d and version "PX".
_NOT_TLS_REASONS = frozenset({"WRONG_VERSION_NUMBER", "UNKNOWN_PROTOCOL",
                              "PACKET_LENGTH_TOO_LONG", "RECORD_LAYER_FAILURE"})


def _tls_wrap(ctx, sock, server_hostname, where):
    import ssl
    try:
        return ctx.wrap_socket(sock, server_hostname=server_hostname)
    except ssl.SSLError as e:
        if getattr(e, "reason", None) not in _NOT_TLS_REASONS:
            raise
        # Still an SSLError (callers catch that), saying what it means.
        raise ssl.SSLError(e.errno, f"{where} did not answer in TLS ({e.reason}): it "
                           f"expects clients without TLS (a manager started without "
                           f"ssl_context=); connect without client_ssl_context=") from e


def connect(address, authkey, *, timeout=_stream.HANDSHAKE_TIMEOUT, ssl_context=None,
            server_hostname=None, **kwargs):
    """An authenticated (and, with `ssl_context`, encrypted) connection."""
    address = check_address(address)
    ctx = resolve_ssl_context(ssl_context)
    sock = socket.create_connection(address[:2], timeout=timeout)
    try:
        _nodelay(sock)
        where = f"the manager at {address[0]}:{address[1]}"
        if ctx is not None:
            sock = _tls_wrap(ctx, sock, server_hostname or address[0], where)
        _stream.client_handshake(sock, bytes(authkey), timeout, where=where)
    except BaseException:
        sock.close()
        raise
    return _stream.Connection(sock, **kwargs)
