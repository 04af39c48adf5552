"""Manager transport over unix-domain stream sockets.

Mechanism only (the Manager itself is ``mpx.managers``): a listener that
creates its socket file with mode 0o600 (in a private 0o700 directory when
mpx picks the path) and removes it on close, and a client that connects;
both ends authenticate each other before anything else (see ``_common.stream``).
The address is a filesystem path (str); a path starting with a NUL character
names a socket in Linux's abstract namespace, which has no file and no
permissions (the authkey alone guards it).
"""

import socket

from ._common import stream as _stream

FAMILIES = ("Manager",)
NAME = "unix"

__all__ = ["FAMILIES", "Listener", "connect", "default_address", "check_address",
           "cleanup", "unavailable"]

Listener = _stream.UnixListener
check_address = _stream.check_unix_address
cleanup = _stream.unix_cleanup


def unavailable():
    if not hasattr(socket, "AF_UNIX"):
        return "this platform has no unix-domain sockets"
    return None


def default_address():
    """None: the listener makes a private directory and a socket inside it."""
    return None


def connect(address, authkey, *, timeout=_stream.HANDSHAKE_TIMEOUT, **kwargs):
    """An authenticated connection to the manager listening at `address`."""
    return _stream.Connection(_stream.unix_connect(address, authkey, timeout), **kwargs)
