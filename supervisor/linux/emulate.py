"""Operations the supervisor carries out on a command's behalf, and the only way to be allowed to.

Every operation takes a ``Permit``: proof that ``Checker.decide`` (the policy, or a human through it)
allowed that operation on that pinned object (``resolve.Pin``). A Permit cannot be built any other way,
so an emulation cannot run on a path that was not the one checked (DESIGN.md invariant 7). Operations act
only through the pin: the pinned directory fd plus one component, never following a symlink there, so a
rename, ``chdir`` or symlink swap after the decision fails instead of landing elsewhere. Opens are
checked once more on the object actually opened (invariant 2): a second name (hard link) of a denied file
is refused, and ``O_TRUNC`` happens only after that.

Notify threads act with the command's powers, not the supervisor's: ``drop_capabilities`` clears the
thread's effective capabilities, so a supervisor run as root cannot chmod, chown or open for a command
what the command itself could not (DAC is the kernel's, as it would be bare).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import os
import re
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass

from nono_supervisor.linux import libc, terminals
from nono_supervisor.linux.resolve import OPEN_HOW, RESOLVE_STRICT, SYS_OPENAT2, Pin
from nono_supervisor.policy.access import AccessIndex
from nono_supervisor.shm import SessionShm

__all__ = [
    "Permit",
    "Refusal",
    "Checker",
    "drop_capabilities",
    "has_effective_capabilities",
    "SETID_BITS",
    "SHM_RULE",
]

SHM_RULE = "session /dev/shm"  # a Permit's ``by`` for the session's own shared memory (the audit's rule)
SETID_BITS = stat.S_ISUID | stat.S_ISGID  # a sandboxed command never sets these (a backdoor for later)
_SYS_CAPGET, _SYS_CAPSET = libc.number("capget"), libc.number("capset")
_CAP_VERSION_3 = 0x20080522
_AT_SYMLINK_NOFOLLOW = 0x100
_IN_DONT_FOLLOW = 0x02000000
_FAN_MARK_DONT_FOLLOW = 0x04

_SEAL = object()
# A process's own settings that it may always write bare and that touch nothing but itself: the JVM writes
# coredump_filter at every start, runtimes name threads through task/<tid>/comm (the kernel takes a comm
# only from the process's own threads). Landlock cannot name a process that does not exist yet.
_OWN_SETTING = re.compile(r"/proc/(\d+)/(?:coredump_filter|comm|task/\d+/comm)")


def _fail(err: int) -> OSError:
    return OSError(err, os.strerror(err))


def _check(result: int) -> int:
    if result < 0:
        raise libc.last_error()
    return result


def _capabilities(header: bytes) -> tuple[int, ...]:
    """The calling thread's (effective, permitted, inheritable) sets, low 32 bits then high 32 bits."""
    data = ctypes.create_string_buffer(24)  # two struct __user_cap_data_struct
    libc.syscall(_SYS_CAPGET, header, data)
    return struct.unpack("=6I", data.raw)


def has_effective_capabilities() -> bool:
    """The calling thread holds an effective capability (a root supervisor's threads do), or the kernel
    would not say (then it is taken to: whoever asks waits for the drop, which fails closed)."""
    try:
        effective = _capabilities(struct.pack("=Ii", _CAP_VERSION_3, 0))
    except OSError:
        return True
    return bool(effective[0] or effective[3])


def drop_capabilities() -> None:
    """Clear the calling thread's effective capabilities (credentials are per thread on Linux): what the
    supervisor then does for a command, the kernel checks as it would for the command (it has none).

    Fails closed: OSError unless the kernel, asked again, says the effective set is empty (a capget or
    capset that fails, as x86-64's numbers did on arm64, or a wrong number that "succeeds" doing something
    else). The loop then answers nothing and its command does not run (NotifyLoop.run)."""
    header = struct.pack("=Ii", _CAP_VERSION_3, 0)
    _eff0, perm0, inh0, _eff1, perm1, inh1 = _capabilities(header)
    libc.syscall(_SYS_CAPSET, header, struct.pack("=6I", 0, perm0, inh0, 0, perm1, inh1))
    if has_effective_capabilities():
        raise OSError(errno.EPERM, "effective capabilities still set after capset")


class Permit:
    """``op`` on ``pin`` was allowed ``by`` the policy or a human. Issued only by ``Checker.decide``."""

    __slots__ = ("pin", "op", "by")

    def __init__(self, seal: object, pin: Pin, op: str, by: str) -> None:
        if seal is not _SEAL:
            raise TypeError("a Permit is issued only by Checker.decide")
        self.pin, self.op, self.by = pin, op, by


@dataclass(frozen=True)
class Refusal:
    """``op`` on ``path`` is denied by ``rule`` (and no human allowed it)."""

    op: str
    path: str
    rule: str
    is_dir: bool


class Checker:
    """Decides one operation on one pinned object: the policy's verdict on the pin's real path, then (for
    what the policy denies and may be granted) the human. The only issuer of Permits."""

    def __init__(
        self,
        access: AccessIndex,
        ask: Callable[[str, str, str, bool], bool] | None = None,
        linked_denied: Callable[[], frozenset[tuple[int, int]]] = frozenset,
        shm: SessionShm | None = None,
    ) -> None:
        self.access = access
        self.ask = ask  # (op, path, rule, is_dir) -> the human allowed it
        self.linked_denied = linked_denied  # (dev, ino) of denied files that have other names
        self.guarded = False  # a denied node moved into the baseline (NotifyLoop.guard): it permits less
        self.shm = shm  # the session's own POSIX shared memory and semaphores in /dev/shm

    def decide(
        self, op: str, pin: Pin, baseline: bool = False, process: int = 0, shm: bool = False
    ) -> Permit | Refusal:
        """``baseline``: the Landlock baseline alone grants this on ``pin`` (the route's own grants are
        there and not in the policy); only the second-name check can still refuse it. ``process``: the
        caller's thread group, whose own settings in /proc it may write (_OWN_SETTING). ``shm``: the call
        is one shm_open or sem_open makes (an open, a link or an unlink of a regular file): the session's
        own objects in /dev/shm are its to make and use (nono_supervisor.shm), by ``SHM_RULE``."""
        if baseline and not (pin.st is not None and self.is_second_name(pin.st)):
            if not (self.guarded and self.access.denied(pin.path, op)):
                return Permit(_SEAL, pin, op, "policy")
        own = _OWN_SETTING.fullmatch(pin.path)
        if op == "write" and own and process and int(own.group(1)) == process:
            return Permit(_SEAL, pin, op, "policy")
        if op == "locate" or not pin.path.startswith("/"):
            # O_PATH reads and writes nothing (Landlock grants no right to it either); an object with no
            # path (a pipe, a socket, an anonymous inode) is the command's own.
            return Permit(_SEAL, pin, op, "policy")
        verdict = self.access.verdict(pin.path, op)
        if verdict.allowed and pin.st is not None and self.is_second_name(pin.st):
            # Not a question: the name is allowed, the content is a denied file's (grant that file itself).
            return Refusal(op, pin.path, "hard link to a denied file", False)
        if verdict.allowed:
            return Permit(_SEAL, pin, op, "policy")
        if op == "read" and pin.is_dir and self.access.discoverable(pin.path, verdict.rule):
            return Permit(_SEAL, pin, op, "discovery")  # its names, not its files' contents
        if shm and self.shm is not None and self.shm.allows(op, pin.path, pin.st):
            return Permit(_SEAL, pin, op, SHM_RULE)
        if verdict.rule != "never-grantable" and self.ask is not None:
            if self.ask(op, pin.path, verdict.rule, pin.is_dir):
                return Permit(_SEAL, pin, op, "user")
        return Refusal(op, pin.path, verdict.rule, pin.is_dir)

    def decide_terminal(self, op: str, pin: Pin) -> Permit | Refusal:
        """``op`` on a pty the caller already holds (``terminals.held``): its own, so allowed where the
        policy says nothing of it; a deny of the human's (``--deny /dev/pts``) or a sealed terminal (the
        supervisor's) still refuses it. Never a question: no answer makes another terminal a command's."""
        verdict = self.access.verdict(pin.path, op)
        if verdict.allowed or verdict.rule == "not granted":
            return Permit(_SEAL, pin, op, "its own terminal")
        return Refusal(op, pin.path, verdict.rule, False)

    def is_second_name(self, st: os.stat_result) -> bool:
        """A regular file with several names, one of them denied: the path checked is not the only way to
        the content, and the kernel's Landlock rules follow the name, not the inode."""
        return stat.S_ISREG(st.st_mode) and st.st_nlink > 1 and (st.st_dev, st.st_ino) in self.linked_denied()


def _target(permit: Permit) -> tuple[str, bool]:
    """A path for calls without an ``*at`` form, naming exactly the pinned object, and whether to follow
    its last component (only our own fd's magic link, for the directory itself)."""
    pin = permit.pin
    return pin.via, not pin.name


# ---- files and directories -------------------------------------------------------------------------------


def open_file(permit: Permit, flags: int, mode: int, checker: Checker) -> int:
    """Open the pinned object for the command. The fd is checked on what was actually opened (a second
    name of a denied file is refused) before it is kept, and only then truncated for ``O_TRUNC``."""
    pin = permit.pin
    # O_NOCTTY: a terminal opened here must never become the supervisor's controlling terminal
    opening = (flags & ~os.O_TRUNC) | os.O_CLOEXEC | os.O_NOCTTY
    session_shm = checker.shm if permit.by == SHM_RULE else None  # the session's own /dev/shm object
    shm = session_shm is not None
    if shm and pin.st is None:
        opening |= os.O_EXCL  # a name that appeared since the check is another process's object, not new
    if pin.name:
        how = OPEN_HOW.pack(opening, mode, RESOLVE_STRICT)
        try:
            fd = _check(libc.LIBC.syscall(SYS_OPENAT2, pin.dirfd, os.fsencode(pin.name), how, len(how)))
        except FileExistsError:
            raise _fail(errno.EEXIST if flags & os.O_EXCL or not shm else errno.EACCES) from None
    else:
        # The pinned directory itself ("." or ".." in the last place, never a link): reopened through its
        # magic link, which O_NOFOLLOW would refuse (ENOTDIR, ELOOP) where the kernel opens the directory
        # (gnulib's fts climbs with openat(fd, "..", O_NOFOLLOW | O_DIRECTORY); tar -C opens ".").
        if pin.is_dir:
            opening &= ~os.O_NOFOLLOW
        fd = os.open(f"/proc/self/fd/{pin.dirfd}", opening, mode)
    try:
        opened = os.fstat(fd)
        if checker.is_second_name(opened):
            raise _fail(errno.EACCES)
        if shm and pin.st is not None and (opened.st_dev, opened.st_ino) != (pin.st.st_dev, pin.st.st_ino):
            raise _fail(errno.EACCES)  # replaced since the check: not the session's object any more
        if session_shm is not None and pin.st is None:
            session_shm.made(opened)
        if flags & os.O_TRUNC and flags & os.O_ACCMODE and stat.S_ISREG(opened.st_mode):
            os.ftruncate(fd, 0)
    except BaseException:
        os.close(fd)
        raise
    return fd


def open_terminal(permit: Permit, held: int, flags: int) -> int:
    """Open the pty of ``permit`` through ``held``, the caller's own descriptor on it (our copy), and check
    that what was opened is the pty that was decided on."""
    fd = terminals.open_through(held, flags)
    try:
        opened, pinned = os.fstat(fd), permit.pin.st
        if pinned is None or (opened.st_dev, opened.st_rdev) != (pinned.st_dev, pinned.st_rdev):
            raise _fail(errno.EACCES)
    except BaseException:
        os.close(fd)
        raise
    return fd


def empty_file() -> int:
    """A read-only fd of a new empty regular file that no one can grow: a stand-in for a file whose
    content is denied where an empty one is the quiet answer (a shell's start-up file, notify)."""
    memfd = os.memfd_create("nono-empty", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    try:
        seals = fcntl.F_SEAL_SEAL | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_GROW | fcntl.F_SEAL_WRITE
        fcntl.fcntl(memfd, fcntl.F_ADD_SEALS, seals)
        return os.open(f"/proc/self/fd/{memfd}", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        os.close(memfd)


def mkdir(permit: Permit, mode: int) -> None:
    os.mkdir(permit.pin.name, mode, dir_fd=permit.pin.dirfd)


def mknod(permit: Permit, mode: int, device: int) -> None:
    os.mknod(permit.pin.name, mode, device, dir_fd=permit.pin.dirfd)


def symlink(permit: Permit, target: str) -> None:
    os.symlink(target, permit.pin.name, dir_fd=permit.pin.dirfd)


def remove(permit: Permit, directory: bool) -> None:
    (os.rmdir if directory else os.unlink)(permit.pin.name, dir_fd=permit.pin.dirfd)


def remove_shm(permit: Permit, checker: Checker) -> None:
    """shm_unlink, sem_unlink of one of the session's own objects: the name must still be that object
    (only a process outside the sandbox can put another there), and its inode leaves the session's set with
    its last name."""
    pin = permit.pin
    now = os.stat(pin.name, dir_fd=pin.dirfd, follow_symlinks=False)
    if pin.st is None or (now.st_dev, now.st_ino) != (pin.st.st_dev, pin.st.st_ino):
        raise _fail(errno.EACCES)
    os.unlink(pin.name, dir_fd=pin.dirfd)
    if checker.shm is not None:
        checker.shm.removed(now)


def rename(src: Permit, dst: Permit, flags: int) -> None:
    result = libc.LIBC.renameat2(
        src.pin.dirfd, os.fsencode(src.pin.name), dst.pin.dirfd, os.fsencode(dst.pin.name), flags
    )
    _check(result)


def link(src: Permit, dst: Permit) -> None:
    if not src.pin.name:  # the object behind one of our fds (an O_TMPFILE): through our own magic link
        own = f"/proc/self/fd/{src.pin.dirfd}"
        os.link(own, dst.pin.name, dst_dir_fd=dst.pin.dirfd, follow_symlinks=True)
        return
    os.link(
        src.pin.name,
        dst.pin.name,
        src_dir_fd=src.pin.dirfd,
        dst_dir_fd=dst.pin.dirfd,
        follow_symlinks=False,
    )


def truncate(permit: Permit, length: int, checker: Checker) -> None:
    fd = open_file(permit, os.O_WRONLY, 0, checker)
    try:
        os.ftruncate(fd, length)
    finally:
        os.close(fd)


# ---- metadata --------------------------------------------------------------------------------------------


def chmod(permit: Permit, mode: int) -> None:
    path, follow = _target(permit)
    os.chmod(path, mode, follow_symlinks=follow)


def chown(permit: Permit, uid: int, gid: int) -> None:
    path, follow = _target(permit)
    os.chown(path, uid, gid, follow_symlinks=follow)


def utimens(permit: Permit, times: bytes | None) -> None:
    """``times``: the command's two ``struct timespec`` as read (UTIME_NOW/OMIT kept), or None (now)."""
    pin = permit.pin
    name = os.fsencode(pin.name) if pin.name else os.fsencode(f"/proc/self/fd/{pin.dirfd}")
    dirfd = pin.dirfd if pin.name else -100
    _check(libc.LIBC.utimensat(dirfd, name, times, _AT_SYMLINK_NOFOLLOW if pin.name else 0))


def setxattr(permit: Permit, name: str, value: bytes, flags: int) -> None:
    path, follow = _target(permit)
    os.setxattr(path, name, value, flags, follow_symlinks=follow)


def removexattr(permit: Permit, name: str) -> None:
    path, follow = _target(permit)
    os.removexattr(path, name, follow_symlinks=follow)


def inotify_add_watch(permit: Permit, inotify: int, mask: int) -> int:
    """A watch is a read of the watched object's names and timing: added on the command's own inotify
    instance (our copy shares it), on the pinned object, never following a swapped-in symlink."""
    path, follow = _target(permit)
    return _check(
        libc.LIBC.inotify_add_watch(inotify, os.fsencode(path), mask | (0 if follow else _IN_DONT_FOLLOW))
    )


def fanotify_mark(permit: Permit, fanotify: int, flags: int, mask: int) -> None:
    pin = permit.pin
    name = os.fsencode(pin.name) if pin.name else None
    _check(
        libc.LIBC.fanotify_mark(
            fanotify, flags | (_FAN_MARK_DONT_FOLLOW if pin.name else 0), mask, pin.dirfd, name
        )
    )
