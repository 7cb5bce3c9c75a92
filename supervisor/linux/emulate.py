"""Operations the supervisor carries out on a command's behalf (a grant Landlock alone cannot express).

Every operation works on a path the notify loop already resolved and checked, through the *parent
directory* opened here and verified to still be that directory; the last component is then reached with
``openat2(RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS)`` or a ``*at`` call that does not
follow it. A symlink or ``..`` swapped in after the check therefore fails instead of landing elsewhere,
and ``O_CREAT``/``O_TRUNC`` cannot act outside what was checked (DESIGN.md invariant 2).
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import struct
from collections.abc import Callable, Iterator

__all__ = ["open_checked", "remove", "mkdir", "symlink", "rename", "link", "truncate"]

_SYS_OPENAT2 = 437
_RESOLVE_NO_MAGICLINKS = 0x02
_RESOLVE_NO_SYMLINKS = 0x04
_RESOLVE_BENEATH = 0x08
_STRICT = _RESOLVE_BENEATH | _RESOLVE_NO_SYMLINKS | _RESOLVE_NO_MAGICLINKS
_OPEN_HOW = struct.Struct("=QQQ")

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long
_libc.renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]


def _fail(err: int) -> OSError:
    return OSError(err, os.strerror(err))


def _openat2(dirfd: int, name: str, flags: int, mode: int) -> int:
    how = _OPEN_HOW.pack(flags, mode, _STRICT)
    fd = _libc.syscall(_SYS_OPENAT2, dirfd, os.fsencode(name), how, len(how))
    if fd < 0:
        raise _fail(ctypes.get_errno())
    return fd


def _open_parent(real: str) -> tuple[int, str]:
    """An O_PATH fd on the parent of ``real``, checked to be that directory, and the last component."""
    parent, name = os.path.split(real)
    fd = os.open(parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC | os.O_NOFOLLOW)
    if os.readlink(f"/proc/self/fd/{fd}") != parent:
        os.close(fd)
        raise _fail(errno.EACCES)  # the parent changed under us: refuse rather than chase it
    return fd, name or "."


def open_checked(real: str, flags: int, mode: int, recheck: Callable[[str], object]) -> int:
    """Open ``real`` for the command; ``recheck(opened_path)`` must return None for the fd to be kept."""
    parent, name = _open_parent(real)
    try:
        fd = _openat2(parent, name, (flags & ~os.O_TRUNC) | os.O_CLOEXEC, mode)
    finally:
        os.close(parent)
    try:
        opened = os.readlink(f"/proc/self/fd/{fd}")
        if opened != real or recheck(opened) is not None:
            raise _fail(errno.EACCES)
        if flags & os.O_TRUNC:
            os.ftruncate(fd, 0)  # only now that the object is known to be the one that was granted
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def _in_parent(real: str) -> Iterator[tuple[int, str]]:
    parent, name = _open_parent(real)
    try:
        yield parent, name
    finally:
        os.close(parent)


def remove(real: str, directory: bool) -> None:
    with _in_parent(real) as (parent, name):
        (os.rmdir if directory else os.unlink)(name, dir_fd=parent)


def mkdir(real: str, mode: int) -> None:
    with _in_parent(real) as (parent, name):
        os.mkdir(name, mode, dir_fd=parent)


def symlink(target: str, real: str) -> None:
    with _in_parent(real) as (parent, name):
        os.symlink(target, name, dir_fd=parent)


def rename(src: str, dst: str, flags: int) -> None:
    with _in_parent(src) as (src_parent, src_name), _in_parent(dst) as (dst_parent, dst_name):
        if _libc.renameat2(src_parent, os.fsencode(src_name), dst_parent, os.fsencode(dst_name), flags) != 0:
            raise _fail(ctypes.get_errno())


def link(src: str, dst: str) -> None:
    with _in_parent(src) as (src_parent, src_name), _in_parent(dst) as (dst_parent, dst_name):
        os.link(src_name, dst_name, src_dir_fd=src_parent, dst_dir_fd=dst_parent, follow_symlinks=False)


def truncate(real: str, length: int, recheck: Callable[[str], object]) -> None:
    fd = open_checked(real, os.O_WRONLY, 0, recheck)
    try:
        os.ftruncate(fd, length)
    finally:
        os.close(fd)
