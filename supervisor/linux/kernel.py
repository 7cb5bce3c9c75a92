"""What this kernel can enforce, probed once and shared by the sandbox and ``doctor``."""

from __future__ import annotations

import ctypes
import errno
import os
from dataclasses import dataclass
from functools import cache

from nono_supervisor.linux import libc
from nono_supervisor.linux.landlock import abi_probe
from nono_supervisor.procfs import process_of

__all__ = ["KernelSupport", "probe", "pidfd_getfd"]

_SYS_SECCOMP = libc.number("seccomp")
_SYS_PIDFD_GETFD = libc.number("pidfd_getfd")
_SECCOMP_GET_ACTION_AVAIL = 2
_SECCOMP_RET_USER_NOTIF = 0x7FC00000


def _release() -> tuple[int, int]:
    parts = os.uname().release.split(".")
    try:
        return int(parts[0]), int("".join(ch for ch in parts[1] if ch.isdigit()) or 0)
    except (IndexError, ValueError):
        return (0, 0)


def _seccomp_notify_available() -> bool:
    action = ctypes.c_uint32(_SECCOMP_RET_USER_NOTIF)
    return libc.LIBC.syscall(_SYS_SECCOMP, _SECCOMP_GET_ACTION_AVAIL, 0, ctypes.byref(action)) == 0


def _user_namespaces() -> bool:
    try:
        with open("/proc/sys/user/max_user_namespaces") as f:
            if int(f.read()) == 0:
                return False
        with open("/proc/sys/kernel/unprivileged_userns_clone") as f:
            return f.read().strip() != "0"
    except FileNotFoundError:
        return True
    except (OSError, ValueError):
        return False


@dataclass(frozen=True)
class KernelSupport:
    release: tuple[int, int]
    landlock_abi: int
    seccomp_notify: bool
    seccomp_addfd: bool  # SECCOMP_IOCTL_NOTIF_ADDFD with SEND: Linux 5.14
    seccomp_sync_wakeup: bool  # SECCOMP_USER_NOTIF_FD_SYNC_WAKE_UP: Linux 6.6
    user_namespaces: bool
    landlock_errno: int = 0  # why the ABI is 0: ENOSYS (not in this kernel) or EOPNOTSUPP (not enabled)

    def missing(self) -> str | None:
        """Why Landlock cannot be used here, in one phrase (``doctor``, a refused command); None if it can."""
        if self.landlock_abi >= 1:
            return None
        if self.landlock_errno == errno.EOPNOTSUPP:
            return "disabled at boot (EOPNOTSUPP: built in, not enabled; add landlock to the kernel's lsm=)"
        return "not in this kernel (ENOSYS: needs Linux >= 5.13 built with CONFIG_SECURITY_LANDLOCK)"


@cache
def probe() -> KernelSupport:
    release = _release()
    notify = _seccomp_notify_available()
    abi, why = abi_probe()
    return KernelSupport(
        release=release,
        landlock_abi=abi,
        landlock_errno=why,
        seccomp_notify=notify,
        seccomp_addfd=notify and release >= (5, 14),
        seccomp_sync_wakeup=notify and release >= (6, 6),
        user_namespaces=_user_namespaces(),
    )


def pidfd_getfd(tid: int, fd: int) -> int:
    """A duplicate (O_CLOEXEC) of descriptor ``fd`` of thread ``tid``'s process: the same open file, so its
    offset, flags and socket state are shared. Needs ptrace access to the target (our own descendants)."""
    try:
        pidfd = os.pidfd_open(tid)
    except OSError as e:
        # A thread that is not its group's leader: EINVAL before 6.9, ENOENT since (pidfd_open of a tid
        # without PIDFD_THREAD). Its thread group shares the descriptor table.
        if e.errno not in (errno.EINVAL, errno.ENOENT):
            raise
        pidfd = os.pidfd_open(process_of(tid))  # gone: the tid again, and its own error
    try:
        return libc.syscall(_SYS_PIDFD_GETFD, pidfd, fd, 0)
    finally:
        os.close(pidfd)
