"""Who may open a named object: the one rule every backend applies.

A named object (a queue in /dev/shm, a POSIX or SysV queue, a SharedArray
segment, a FIFO pair) can be created by anyone who guesses its name first.
What arrives through it is unpickled, so opening another user's queue means
running code that user chose. The rule, for every backend:

- The opener says how widely it is willing to share with ``mode=`` (default
  0o600: nobody but this user). It is the same ``mode=`` the object is
  created with when the opener is the one creating it.
- An existing object must be owned by the caller's effective uid or by
  root. Where the object records a creator apart from its owner (SysV's
  cuid), the creator must pass the same test. Only when ``mode`` grants
  group or others some access (``mode & 0o066``) has the caller opted in to
  objects other users own.
- An existing object must grant group and others nothing beyond what
  ``mode`` grants: a queue that others may write is a queue others may put
  code into, so it is refused unless the opener asked for that sharing.

Both refusals are PermissionError naming the object, its owner or mode, and
what ``mode=`` would accept it; nothing is read from the object first.
"""

import errno
import operator
import os
import stat

__all__ = ["check_mode", "check_owner", "refuse", "others_may_share"]


def check_mode(mode, *, owner_rw=False):
    """`mode` as permission bits 0..0o777 (numpy integers welcome), else
    TypeError/ValueError naming `mode`. With `owner_rw`, the owner must keep
    read and write (an object its creator cannot use is a mistake)."""
    if isinstance(mode, bool):
        raise TypeError(f"mode must be an int permission mask like 0o600, not a bool ({mode!r})")
    try:
        mode = operator.index(mode)
    except TypeError:
        raise TypeError(f"mode must be an int permission mask like 0o600, "
                        f"not {type(mode).__name__}") from None
    if not 0 <= mode <= 0o777:
        raise ValueError(f"mode must be permission bits between 0 and 0o777, not {mode:#o}")
    if owner_rw and mode & 0o600 != 0o600:
        raise ValueError(f"mode {mode:#o} must let the owner read and write (0o600 at least)")
    return mode


def others_may_share(mode):
    """True when `mode` opts in to objects that other users own."""
    return bool(mode & 0o066)


def refuse(what, why):
    raise PermissionError(errno.EACCES, f"refusing to open {what}: {why}")


def check_owner(what, *, uids, perm, mode, allowed=None):
    """Refuse the existing object `what` unless the rule above admits it.

    `uids`: its owner's uid and, where the object keeps one apart, its
    creator's; `perm`: its permission bits (``st_mode`` is fine: only the
    low nine bits are read); `mode`: the opener's ``mode=``; `allowed`: the
    group/other bits the object may grant (default: `mode`'s own).
    """
    me = os.geteuid()
    if not others_may_share(mode):
        for uid in uids:
            if uid not in (me, 0):
                refuse(what, f"it is owned by uid {uid}, not by this user (uid {me}) or root; "
                       "another user may have made it to have you unpickle what they put in "
                       "(pass mode= granting group or others access, e.g. mode=0o660, to "
                       "share objects with other users on purpose)")
    allowed = mode if allowed is None else allowed
    beyond = stat.S_IMODE(perm) & 0o077 & ~allowed
    if beyond:
        refuse(what, f"its mode {stat.S_IMODE(perm):#o} lets group/others do more than "
               f"mode={mode:#o} allows (open it with the mode it was made with, "
               "or chmod it)")
