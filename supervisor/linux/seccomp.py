"""The seccomp filter: the one list of trapped and blocked syscalls, compiled to BPF with pyseccomp.

Both the filter and the notify loop's dispatch table are built from ``TRAPS``, so what is intercepted
cannot drift from what is handled (test_every_trap_has_a_handler).
"""

from __future__ import annotations

import errno
import os
import stat
import termios
from dataclasses import dataclass
from functools import cache

from nono_supervisor.linux import libc

__all__ = [
    "TRAPS",
    "BLOCKED",
    "Trap",
    "arg",
    "position",
    "FILTER_FLAGS",
    "build_program",
    "load_pyseccomp",
    "libseccomp_version",
    "LIBSECCOMP_MIN",
    "LIBSECCOMP_PACKAGES",
]

SECCOMP_FILTER_FLAG_NEW_LISTENER = 1 << 3
FILTER_FLAGS = SECCOMP_FILTER_FLAG_NEW_LISTENER


@dataclass(frozen=True)
class Trap:
    """A syscall sent to the supervisor, and where its arguments are (indexes into ``args``).

    ``path``: the path argument, resolved against ``dirfd`` (None: AT_FDCWD); ``second``: the destination
    (dirfd, path) of rename/link; ``fd``: the descriptor an fd-form call acts on (sockets, fchmod...).
    ``nofollow``: the call never follows a symlink in the last component (lchown, unlink...).
    ``net_block``: trapped only when the policy restricts the network (mode block or domains).
    """

    name: str
    kind: str
    path: int | None = None
    dirfd: int | None = None
    second: tuple[int | None, int] | None = None
    fd: int | None = None
    flags: int | None = None
    mode: int | None = None
    nofollow: bool = False
    nonzero: int | None = None  # trap only when this argument is not 0 (decided in BPF, race-free)
    net_block: bool = False

    @property
    def second_pair(self) -> tuple[int | None, int]:
        """``second`` of a rename or link (its absence a table bug, as for ``position``)."""
        if self.second is None:
            raise ValueError(f"{self.name}: no second path in TRAPS")
        return self.second


def position(index: int | None) -> int:
    """Where an argument its kind always has (a trap's path, mode or fd) is, for the handler that reads
    it. None would be a trap in ``TRAPS`` without it, which tests/test_syscalls.py rules out; met anyway,
    the ValueError fails that one call closed (its handler's EACCES)."""
    if index is None:
        raise ValueError("a trapped call without the argument its handler reads (seccomp.TRAPS)")
    return index


def arg(args: list[int], index: int | None) -> int:
    """Argument ``index`` of a trapped call (``position``)."""
    return args[position(index)]


TRAPS: tuple[Trap, ...] = (
    # open, openat and openat2 together: code that falls back from openat2 on ENOSYS must still be trapped.
    Trap("open", "open", path=0, flags=1, mode=2),
    Trap("openat", "open", dirfd=0, path=1, flags=2, mode=3),
    Trap("openat2", "open", dirfd=0, path=1, flags=2),  # flags points at struct open_how
    Trap("creat", "open", path=0, mode=1),
    Trap("execve", "exec", path=0),
    Trap("execveat", "exec", dirfd=0, path=1, flags=4),
    Trap("unlink", "unlink", path=0, nofollow=True),
    Trap("unlinkat", "unlink", dirfd=0, path=1, flags=2, nofollow=True),
    Trap("rmdir", "rmdir", path=0, nofollow=True),
    Trap("mkdir", "mkdir", path=0, mode=1, nofollow=True),
    Trap("mkdirat", "mkdir", dirfd=0, path=1, mode=2, nofollow=True),
    Trap("mknod", "mknod", path=0, mode=1, nofollow=True),
    Trap("mknodat", "mknod", dirfd=0, path=1, mode=2, nofollow=True),
    Trap("rename", "rename", path=0, second=(None, 1), nofollow=True),
    Trap("renameat", "rename", dirfd=0, path=1, second=(2, 3), nofollow=True),
    Trap("renameat2", "rename", dirfd=0, path=1, second=(2, 3), flags=4, nofollow=True),
    Trap("link", "link", path=0, second=(None, 1), nofollow=True),
    Trap("linkat", "link", dirfd=0, path=1, second=(2, 3), flags=4, nofollow=True),
    Trap("symlink", "symlink", path=1, nofollow=True),
    Trap("symlinkat", "symlink", dirfd=1, path=2, nofollow=True),
    Trap("truncate", "truncate", path=0),
    # Metadata: Landlock has no right for these, so every one is decided as a write and carried out by the
    # supervisor on the pinned object (never CONTINUEd: a swapped path would reach anything).
    Trap("chmod", "chmod", path=0, mode=1),
    Trap("fchmod", "chmod", fd=0, mode=1),
    Trap("fchmodat", "chmod", dirfd=0, path=1, mode=2),
    Trap("fchmodat2", "chmod", dirfd=0, path=1, mode=2, flags=3),
    Trap("chown", "chown", path=0),
    Trap("lchown", "chown", path=0, nofollow=True),
    Trap("fchown", "chown", fd=0),
    Trap("fchownat", "chown", dirfd=0, path=1, flags=4),
    Trap("utime", "utime", path=0),
    Trap("utimes", "utime", path=0),
    Trap("futimesat", "utime", dirfd=0, path=1),
    Trap("utimensat", "utime", dirfd=0, path=1, flags=3),
    Trap("setxattr", "setxattr", path=0),
    Trap("lsetxattr", "setxattr", path=0, nofollow=True),
    Trap("fsetxattr", "setxattr", fd=0),
    Trap("removexattr", "removexattr", path=0),
    Trap("lremovexattr", "removexattr", path=0, nofollow=True),
    Trap("fremovexattr", "removexattr", fd=0),
    # A watch reads the names and timing of what happens in the watched directory.
    Trap("inotify_add_watch", "inotify", fd=0, path=1),
    Trap("fanotify_mark", "fanotify", fd=0, dirfd=3, path=4),
    # Sockets: no answer may depend on what an fd number refers to (another thread can dup2 over it), so
    # the supervisor performs these on its own copy of the socket it checked. sendto only with an address
    # (a register, so no race); without one it goes to the peer connect() decided.
    Trap("connect", "connect", fd=0),
    Trap("bind", "bind", fd=0),
    Trap("sendto", "sendto", fd=0, nonzero=4),
    Trap("sendmsg", "sendmsg", fd=0),
    Trap("sendmmsg", "sendmmsg", fd=0),
    # --net-block and domains mode: what Landlock's TCP rules cannot stop (UDP, MPTCP, raw, SCTP; listen's
    # auto-bind).
    Trap("socket", "socket", net_block=True),
    Trap("setsockopt", "setsockopt", net_block=True),  # only TCP_FASTOPEN_CONNECT (see build_program)
    Trap("listen", "listen", fd=0, net_block=True),
    # The peer of a new pty (glibc's openpty and forkpty): opened inside the kernel, where Landlock knows
    # only the /dev/pts nodes of the plan's compile (the sealed terminal splits /dev/pts into its siblings).
    Trap("ioctl", "pty_peer", fd=0),  # only TIOCGPTPEER (see build_program)
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
# Newer than libseccomp's syscall table: answered ENOSYS, as an older kernel would, so that callers fall
# back to the trapped forms (setxattr, removexattr). Added by number (libc.number: the build's headers).
BLOCKED_BY_NUMBER_ENOSYS: tuple[str, ...] = ("setxattrat", "removexattrat")
# ioctls that push input into a terminal: a command must not type into the terminal it shares.
BLOCKED_IOCTLS: tuple[int, ...] = (termios.TIOCSTI, getattr(termios, "TIOCLINUX", 0x541C))
TIOCGPTPEER = 0x5441  # _IO('T', 0x41): open the peer of a pty master (Linux 4.13)
MSG_FASTOPEN = 0x20000000
_IPPROTO_TCP = 6
_INET_FAMILIES = (2, 10)  # AF_INET, AF_INET6


# Left to Landlock (issue 13): for a command, the filter lets through the calls whose every outcome Landlock
# alone decides, and that the preloaded _askagain asks again through an always-trapped twin when the kernel
# refuses them (README, "Left to Landlock"):
# - opens: an open or openat asks Landlock for exactly what _open_rights names (read_file, write_file,
#   truncate, read_dir; make_reg of the parent where it creates), and the supervisor's answer on the fast
#   path is CONTINUE where Landlock allows and its own pipeline (report, question, emulated grant) where
#   Landlock refuses: so only the refusal needs the supervisor, and it is asked again through openat2.
#   Read-only opens were 86-100% of the notifications of content-heavy work; a build's output and temporary
#   files were the most of what was left (make -j2: 300 of 420-520, each a wake of the supervisor while
#   both cores compile). Still trapped: O_EXCL (mkstemp and tmpfile open inside libc, where nothing could
#   ask again), O_TMPFILE, O_CREAT with a setuid or setgid mode (never granted; Landlock does not see
#   modes), a terminal's open (O_RDWR|O_NOCTTY: a static binary opening its new pty by name, as musl's
#   openpty and Go's creack/pty do, where nothing could ask again; Landlock grants no pty it did not hand
#   over), and a listing (O_DIRECTORY) unless it carries LISTING_MARK;
# - listings: opendir, scandir, fts and glob open inside libc, where nothing could ask again, and listing
#   the parent of a denied node (~ beside ~/.ssh) is the supervisor's (an emulated open): so an unmarked
#   O_DIRECTORY open stays trapped. A listing _askagain makes itself (its open and openat wrappers, which
#   gnulib's fts in grep and find calls, and its opendir, which ls, git, Python and Rust call) carries
#   LISTING_MARK in the mode argument, which the kernel ignores for an open that creates nothing, and is
#   let through; refused, it is made again unmarked. Any process may set the mark: it then only gives up
#   the report and the emulated grant of its own refused listings (grep -r's 290 listings over 20,000
#   files were its whole remainder over --no-trap, each a cold wake);
# - execve: an exec is never carried out for a command (only the baseline can allow it), so the trap only
#   ever added a report (a build's compiler driver tries several PATH entries per tool: 70% of `make`'s
#   notifications, each a cold wake of the supervisor); asked again through execveat.
_O_TMPFILE_ONLY = os.O_TMPFILE & ~os.O_DIRECTORY  # O_TMPFILE is this bit with O_DIRECTORY
TRAPPED_OPEN_FLAGS = (os.O_EXCL, _O_TMPFILE_ONLY)
# (mask, value) of flags also trapped: a read-write open that will not follow a link is how glibc reopens
# POSIX shared memory and semaphores by name inside shm_open and sem_open (no wrapper can see it): the
# session's own objects in /dev/shm are decided by the supervisor (nono_supervisor.shm; issue 20). Rare
# elsewhere: grep -r, compilers and readers open read-only.
TRAPPED_OPEN_MASKS = ((os.O_NOFOLLOW | os.O_ACCMODE, os.O_NOFOLLOW | os.O_RDWR),)
LISTING_MARK = 0x6E6F6E6F << 32  # _askagain's LISTING_MARK: 0 in the 16 bits a mode could ever use
TRAPPED_CREATE_MODES = (stat.S_ISUID, stat.S_ISGID)  # with O_CREAT
# (mask, value) of the flags of a terminal's open. Not O_NOCTTY alone: grep -r opens every file with it.
TRAPPED_TERMINAL_OPEN = (os.O_ACCMODE | os.O_NOCTTY, os.O_RDWR | os.O_NOCTTY)
UNTRAPPED_OPENS = {"open": (1, 2), "openat": (2, 3)}  # syscall -> its flags and mode arguments
UNTRAPPED_EXECS = ("execve",)
# Undo: an open that may write (its access mode) or truncate or create, as (mask, value) of its flags. One
# with O_NONBLOCK that neither creates nor truncates is a device's, a fifo's or a terminal's (bash opens
# /dev/tty O_RDWR|O_NONBLOCK at every start: trapped, it cost every command a wake): left to Landlock,
# unrecorded (README "Undo": what cannot be undone).
RECORDED_OPENS = (
    (os.O_ACCMODE | os.O_NONBLOCK, os.O_WRONLY),
    (os.O_ACCMODE | os.O_NONBLOCK, os.O_RDWR),
    (os.O_TRUNC, os.O_TRUNC),
    (os.O_CREAT, os.O_CREAT),
)


def build_program(
    net: str | bool = "open", *, leave_to_landlock: bool = False, record_writes: bool = False
) -> bytes:
    """The BPF program (native arch only; any other arch, x32 and i386 ``int 0x80`` included, is killed).

    ``net`` is the policy's network mode: ``block`` and ``domains`` (or True) trap what steps around
    Landlock's TCP rules; in domains mode the notify layer then lets TCP reach the supervisor's proxy only.
    ``leave_to_landlock``: open and openat (but for TRAPPED_OPEN_FLAGS and _MASKS, a terminal's open, unmarked
    listings and setid creations), and execve, are not trapped (a command's, with the ask-again library
    preloaded; see UNTRAPPED_OPENS). ``record_writes`` (undo): of those opens, the ones that may write or
    create are trapped again (RECORDED_OPENS), so that the supervisor keeps the file first; reads stay
    Landlock's."""
    if net not in (True, False, "open", "domains", "block"):
        raise ValueError(f"unknown network mode {net!r}")
    return _program(net in (True, "block", "domains"), leave_to_landlock, record_writes)


# User notification (SCMP_ACT_NOTIFY) and the binary-tree filter came with libseccomp 2.5.0.
LIBSECCOMP_MIN = (2, 5, 0)
LIBSECCOMP_PACKAGES = "libseccomp2 (Debian, Ubuntu) or libseccomp (Fedora, Arch, Alpine), version >= 2.5"


def load_pyseccomp():
    """The pyseccomp module, or a one-line SandboxError naming the package to install.

    pyseccomp loads libseccomp when it is imported and raises RuntimeError (not ImportError) without it:
    a traceback in the middle of a command otherwise."""
    try:
        import pyseccomp
    except Exception as e:  # noqa: BLE001 - RuntimeError, OSError (a broken library) or ImportError
        from nono_supervisor.errors import SandboxError

        raise SandboxError(f"libseccomp cannot be loaded ({e}): install {LIBSECCOMP_PACKAGES}") from None
    return pyseccomp


def libseccomp_version() -> tuple[int, int, int] | None:
    """The version of the libseccomp the loader finds (``seccomp_version()``), or None where there is none."""
    import ctypes
    import ctypes.util

    class _Version(ctypes.Structure):
        _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]

    name = ctypes.util.find_library("seccomp")
    try:
        library = ctypes.CDLL(name) if name else None
    except OSError:
        library = None
    if library is None:
        return None
    library.seccomp_version.restype = ctypes.POINTER(_Version)
    version = library.seccomp_version().contents
    return (version.major, version.minor, version.micro)


@cache
def _program(net_block: bool, leave_to_landlock: bool = False, record_writes: bool = False) -> bytes:
    pyseccomp = load_pyseccomp()

    flt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    flt.set_attr(pyseccomp.Attr.ACT_BADARCH, pyseccomp.KILL_PROCESS)
    try:
        # A binary tree of syscall numbers instead of one long chain: every syscall with a rule (the open
        # family's untrapped forms included) walks log2(n) comparisons, not all of them (libseccomp >= 2.5).
        flt.set_attr(pyseccomp.Attr.CTL_OPTIMIZE, 2)
    except (OSError, AttributeError, ValueError):
        pass
    for trap in TRAPS:
        if trap.net_block and not net_block:
            continue
        if trap.name in UNTRAPPED_EXECS and leave_to_landlock:
            continue
        if trap.name in UNTRAPPED_OPENS and leave_to_landlock:
            # rules for one syscall are ORed; the comparisons of one rule are ANDed
            flags, mode = UNTRAPPED_OPENS[trap.name]
            for bit in TRAPPED_OPEN_FLAGS:
                flt.add_rule(pyseccomp.NOTIFY, trap.name, pyseccomp.Arg(flags, pyseccomp.MASKED_EQ, bit, bit))
            terminal = pyseccomp.Arg(flags, pyseccomp.MASKED_EQ, *TRAPPED_TERMINAL_OPEN)
            flt.add_rule(pyseccomp.NOTIFY, trap.name, terminal)
            for mask, value in TRAPPED_OPEN_MASKS:
                flt.add_rule(
                    pyseccomp.NOTIFY, trap.name, pyseccomp.Arg(flags, pyseccomp.MASKED_EQ, mask, value)
                )
            listing = pyseccomp.Arg(flags, pyseccomp.MASKED_EQ, os.O_DIRECTORY, os.O_DIRECTORY)
            unmarked = pyseccomp.Arg(mode, pyseccomp.NE, LISTING_MARK)
            flt.add_rule(pyseccomp.NOTIFY, trap.name, listing, unmarked)
            creating = pyseccomp.Arg(flags, pyseccomp.MASKED_EQ, os.O_CREAT, os.O_CREAT)
            for bit in TRAPPED_CREATE_MODES:
                setid = pyseccomp.Arg(mode, pyseccomp.MASKED_EQ, bit, bit)
                flt.add_rule(pyseccomp.NOTIFY, trap.name, creating, setid)
            for mask, value in RECORDED_OPENS if record_writes else ():
                flt.add_rule(
                    pyseccomp.NOTIFY, trap.name, pyseccomp.Arg(flags, pyseccomp.MASKED_EQ, mask, value)
                )
        elif trap.name == "socket":
            for family in _INET_FAMILIES:  # unix and netlink sockets are not the network
                flt.add_rule(pyseccomp.NOTIFY, "socket", pyseccomp.Arg(0, pyseccomp.EQ, family))
        elif trap.name == "ioctl":
            request = pyseccomp.Arg(1, pyseccomp.MASKED_EQ, 0xFFFFFFFF, TIOCGPTPEER)
            flt.add_rule(pyseccomp.NOTIFY, "ioctl", request)
        elif trap.name == "setsockopt":
            # TCP fast open connects without connect(): the one option that reaches the network.
            tcp, fastopen = pyseccomp.Arg(1, pyseccomp.EQ, _IPPROTO_TCP), pyseccomp.Arg(2, pyseccomp.EQ, 30)
            flt.add_rule(pyseccomp.NOTIFY, "setsockopt", tcp, fastopen)
        elif trap.nonzero is None:
            flt.add_rule(pyseccomp.NOTIFY, trap.name)
        else:
            flt.add_rule(pyseccomp.NOTIFY, trap.name, pyseccomp.Arg(trap.nonzero, pyseccomp.NE, 0))
    if net_block:
        # sendto(MSG_FASTOPEN) sends a SYN with data without connect(): trapped even without an address.
        flt.add_rule(
            pyseccomp.NOTIFY,
            "sendto",
            pyseccomp.Arg(3, pyseccomp.MASKED_EQ, MSG_FASTOPEN, MSG_FASTOPEN),
            pyseccomp.Arg(4, pyseccomp.EQ, 0),
        )
    for name in BLOCKED:
        flt.add_rule(pyseccomp.ERRNO(errno.EPERM), name)
    for name in BLOCKED_BY_NUMBER_ENOSYS:
        flt.add_rule(pyseccomp.ERRNO(errno.ENOSYS), libc.number(name))
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
