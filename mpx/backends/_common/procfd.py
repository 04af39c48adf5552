"""Reopening a file another process holds, through /proc/<pid>/fd/<fd>.

Not a backend: shared by the backends whose anonymous objects (a memfd, an
unlinked file) have no name to open, only holders.
"""

import os

__all__ = ["open_from_holders"]


def open_from_holders(holders, identity, readonly):
    """Open the file that one of `holders` [(pid, fd)] has open, checking its
    (st_dev, st_ino) against `identity` so a reused pid or descriptor is never
    mistaken for it. Returns (fd or None, whether some attempt was refused
    for permission)."""
    flags = (os.O_RDONLY if readonly else os.O_RDWR) | os.O_CLOEXEC
    denied = False
    for pid, hfd in holders:
        try:
            fd = os.open(f"/proc/{int(pid)}/fd/{int(hfd)}", flags)
        except PermissionError:
            denied = True
            continue
        except OSError:
            continue
        st = os.fstat(fd)
        if (st.st_dev, st.st_ino) == tuple(identity):
            return fd, denied
        os.close(fd)    # the pid or descriptor was reused for something else
    return None, denied
