"""Which terminals a command reaches (DESIGN.md invariant 11): the one it was handed and the ptys it made.

Landlock grants no ``/dev/pts`` node but the handed terminal's (``PolicyState.terminal_grants``, a rule on
that node's inode): a node made later cannot be named ahead (KERNEL-NOTES), and a rule on ``/dev/pts``
grants every terminal of the uid (the agent's, another tmux window's). So the supervisor decides every
other open of a pty: the caller's process must hold that very pty already, a master whose peer it is
(openpty, forkpty, ``ptsname`` and ``open``: pexpect, script, expect, tmux) or the node itself open (its
stdio), and the open is made through the descriptor it holds, never through the name. An ``O_PATH``
descriptor holds nothing: any process may make one of any node.

Decided on objects, never on numbers (invariant 7): the caller's descriptor table is only read to find
candidates; each is taken over (``pidfd_getfd``) and compared on the copy, whose pty cannot go away or
give its number to another terminal while we hold it; a ``dup2`` over the number meanwhile leaves the
copy what it was.
"""

from __future__ import annotations

import fcntl
import os
import stat

from nono_supervisor.linux.kernel import pidfd_getfd
from nono_supervisor.linux.seccomp import TIOCGPTPEER
from nono_supervisor.policy.profile import NOT_ITS_TERMINAL

__all__ = ["NOT_ITS_TERMINAL", "is_pty", "held", "open_through"]

_PTY_SLAVE_MAJORS = range(136, 144)  # Unix98 pty slaves (the kernel's admin-guide/devices.txt)
_PEER_FLAGS = os.O_ACCMODE | os.O_NONBLOCK


def is_pty(st: os.stat_result | None) -> bool:
    """``st`` is a pty's terminal end (a ``/dev/pts/N`` node, or a copy of one made with ``mknod``)."""
    return st is not None and stat.S_ISCHR(st.st_mode) and os.major(st.st_rdev) in _PTY_SLAVE_MAJORS


def held(tid: int, node: os.stat_result, path: str) -> int | None:
    """Our copy of a descriptor that thread ``tid``'s process holds on the pty of ``node`` (found at
    ``path``): that node open, or a master whose peer it is. None when it holds neither."""
    where = f"/proc/{tid}/fd"
    try:
        numbers = os.listdir(where)
    except OSError:
        return None
    for number in numbers:
        try:
            link = os.readlink(f"{where}/{number}")
        except OSError:
            continue  # closed meanwhile
        if link != path and os.path.basename(link) != "ptmx":
            continue  # a hint only: what is decided is the copy below
        try:
            copy = pidfd_getfd(tid, int(number))
        except OSError:
            continue
        if _on(copy, node):
            return copy
        os.close(copy)
    return None


def _on(fd: int, node: os.stat_result) -> bool:
    """Our ``fd`` is open on the pty of ``node`` (an O_PATH one is not: it reads and writes nothing)."""
    try:
        if fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_PATH:
            return False
        st = os.fstat(fd)
        if not is_pty(st):
            peer = fcntl.ioctl(fd, TIOCGPTPEER, os.O_PATH | os.O_CLOEXEC)  # not a master: OSError
            try:
                st = os.fstat(peer)
            finally:
                os.close(peer)
    except OSError:
        return False
    return (st.st_dev, st.st_rdev) == (node.st_dev, node.st_rdev)


def open_through(fd: int, flags: int) -> int:
    """A new open of the pty our ``fd`` (from ``held``) is on: the peer of a master, else the terminal end
    reopened. Never the supervisor's controlling terminal (O_NOCTTY); a held master opens only its own
    peer, so the object opened is the one checked whatever its name means by now."""
    opening = (flags & _PEER_FLAGS) | os.O_CLOEXEC | os.O_NOCTTY
    if is_pty(os.fstat(fd)):
        return os.open(f"/proc/self/fd/{fd}", opening)
    return fcntl.ioctl(fd, TIOCGPTPEER, opening)
