"""The seccomp filter: the one list of trapped and blocked syscalls, compiled to BPF with pyseccomp.

Both the filter and the notify loop's dispatch table are built from ``TRAPS``, so what is intercepted
cannot drift from what is handled (test_every_trap_has_a_handler).
"""

from __future__ import annotations

import errno
import os
import termios
from dataclasses import dataclass
from functools import cache

__all__ = ["TRAPS", "BLOCKED", "Trap", "FILTER_FLAGS", "build_program"]

SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
FILTER_FLAGS = SECCOMP_FILTER_FLAG_NEW_LISTENER


@dataclass(frozen=True)
class Trap:
    """A syscall sent to the supervisor. ``paths`` are (dirfd arg or None, path arg) pairs."""

    name: str
    kind: str  # open | exec | unlink | rmdir | mkdir | rename | link | symlink | truncate
    paths: tuple[tuple[int | None, int], ...]
    flags_arg: int | None = None  # open flags, unlinkat/renameat2/linkat/execveat flags
    mode_arg: int | None = None
    nonzero_arg: int | None = None  # trap only when this argument is not 0 (decided in BPF, race-free)


TRAPS: tuple[Trap, ...] = (
    # open, openat and openat2 together: code that falls back from openat2 on ENOSYS must still be trapped.
    Trap("open", "open", ((None, 0),), flags_arg=1, mode_arg=2),
    Trap("openat", "open", ((0, 1),), flags_arg=2, mode_arg=3),
    Trap("openat2", "open", ((0, 1),), flags_arg=2),  # flags_arg points at struct open_how
    Trap("creat", "open", ((None, 0),), mode_arg=1),
    Trap("execve", "exec", ((None, 0),)),
    Trap("execveat", "exec", ((0, 1),), flags_arg=4),
    Trap("unlink", "unlink", ((None, 0),)),
    Trap("unlinkat", "unlink", ((0, 1),), flags_arg=2),
    Trap("rmdir", "rmdir", ((None, 0),)),
    Trap("mkdir", "mkdir", ((None, 0),), mode_arg=1),
    Trap("mkdirat", "mkdir", ((0, 1),), mode_arg=2),
    Trap("rename", "rename", ((None, 0), (None, 1))),
    Trap("renameat", "rename", ((0, 1), (2, 3))),
    Trap("renameat2", "rename", ((0, 1), (2, 3)), flags_arg=4),
    Trap("link", "link", ((None, 0), (None, 1))),
    Trap("linkat", "link", ((0, 1), (2, 3)), flags_arg=4),
    Trap("symlink", "symlink", ((None, 1),)),
    Trap("symlinkat", "symlink", ((1, 2),)),
    Trap("truncate", "truncate", ((None, 0),)),
    # Unix sockets reach unsandboxed processes (ssh-agent, docker.sock) and Landlock < ABI 9 cannot stop
    # them: the destination is decided here. sendto only with an address (a register, so no race).
    Trap("connect", "connect", ()),
    Trap("sendto", "sendto", (), nonzero_arg=4),
    Trap("sendmsg", "sendmsg", ()),  # the address is in memory: datagram messages are sent by the supervisor
)

# Syscalls that step around the path traps, refused outright with EPERM.
BLOCKED: tuple[str, ...] = (
    "io_uring_setup",  # io_uring performs opens in kernel threads, never seen by this filter
    "io_uring_enter",
    "io_uring_register",
    "open_by_handle_at",  # opens by inode handle, no path to check
    "name_to_handle_at",
    "userfaultfd",  # could stall the supervisor's read of a path in the command's memory
)
# ioctls that push input into a terminal: a command must not type into the terminal it shares.
BLOCKED_IOCTLS: tuple[int, ...] = (termios.TIOCSTI, getattr(termios, "TIOCLINUX", 0x541C))


@cache
def build_program() -> bytes:
    """The BPF program (native arch only; any other arch, x32 and i386 ``int 0x80`` included, is killed)."""
    import pyseccomp

    flt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    flt.set_attr(pyseccomp.Attr.ACT_BADARCH, pyseccomp.KILL_PROCESS)
    for trap in TRAPS:
        if trap.nonzero_arg is None:
            flt.add_rule(pyseccomp.NOTIFY, trap.name)
        else:
            flt.add_rule(pyseccomp.NOTIFY, trap.name, pyseccomp.Arg(trap.nonzero_arg, pyseccomp.NE, 0))
    for name in BLOCKED:
        flt.add_rule(pyseccomp.ERRNO(errno.EPERM), name)
    for request in BLOCKED_IOCTLS:
        # The request argument is an int in the kernel; mask to 32 bits so a high-bit variant cannot slip by.
        flt.add_rule(
            pyseccomp.ERRNO(errno.EPERM), "ioctl", pyseccomp.Arg(1, pyseccomp.MASKED_EQ, 0xFFFFFFFF, request)
        )
    read_end, write_end = os.pipe()
    try:
        with os.fdopen(write_end, "wb") as out:
            flt.export_bpf(out)
        chunks = []
        while chunk := os.read(read_end, 65536):
            chunks.append(chunk)
    finally:
        os.close(read_end)
    return b"".join(chunks)
