"""The Linux backend's one door to libc: the handle, the prototypes of what it calls, and syscalls by name.

Syscall numbers differ between architectures (capget is 125 on x86-64, 90 on arm64): they come from
``_syscalls``, compiled against the kernel headers of the build, never from a number written here
(tests/test_syscalls.py scans the sources). Every module of the backend calls libc through ``LIBC`` and
``syscall``; none loads its own handle.
"""

from __future__ import annotations

import ctypes
import errno
import os

from nono_supervisor.linux._syscalls import NUMBERS

__all__ = ["LIBC", "IoVec", "MsgHdr", "number", "syscall", "last_error", "rename_noreplace"]

_AT_FDCWD = -100
_RENAME_NOREPLACE = 1


class IoVec(ctypes.Structure):
    """struct iovec."""

    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


class MsgHdr(ctypes.Structure):
    """struct msghdr (glibc's layout: socklen_t namelen, size_t iovlen and controllen)."""

    _fields_ = [
        ("name", ctypes.c_void_p),
        ("namelen", ctypes.c_uint32),
        ("iov", ctypes.c_void_p),
        ("iovlen", ctypes.c_size_t),
        ("control", ctypes.c_void_p),
        ("controllen", ctypes.c_size_t),
        ("flags", ctypes.c_int),
    ]


LIBC = ctypes.CDLL(None, use_errno=True)
LIBC.syscall.restype = ctypes.c_long
LIBC.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
LIBC.utimensat.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]
LIBC.inotify_add_watch.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
LIBC.fanotify_mark.argtypes = [ctypes.c_int, ctypes.c_uint, ctypes.c_uint64, ctypes.c_int, ctypes.c_char_p]
LIBC.connect.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
LIBC.bind.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
LIBC.sendmsg.restype = ctypes.c_ssize_t
LIBC.sendmsg.argtypes = [ctypes.c_int, ctypes.POINTER(MsgHdr), ctypes.c_int]
for _vm in (LIBC.process_vm_readv, LIBC.process_vm_writev):  # (pid, local, n, remote, n, flags)
    _vm.restype = ctypes.c_ssize_t
    _vm.argtypes = [ctypes.c_int, *[ctypes.POINTER(IoVec), ctypes.c_ulong] * 2, ctypes.c_ulong]


def number(name: str) -> int:
    """This architecture's number of syscall ``name`` (KeyError for one ``_syscalls`` does not export)."""
    return NUMBERS[name]


def last_error() -> OSError:
    """The OSError of the libc call that just failed (its errno; EIO if it set none)."""
    err = ctypes.get_errno() or errno.EIO
    return OSError(err, os.strerror(err))


def syscall(nr: int, *args: int | bytes | ctypes._CData | None) -> int:
    """``syscall(nr, *args)``: its non-negative result, or OSError with its errno."""
    result = LIBC.syscall(nr, *args)
    if result < 0:
        raise last_error()
    return result


def rename_noreplace(source: bytes, target: bytes) -> None:
    """Rename ``source`` to ``target`` unless ``target`` exists (EEXIST), in one step."""
    if LIBC.renameat2(_AT_FDCWD, source, _AT_FDCWD, target, _RENAME_NOREPLACE) != 0:
        raise last_error()
