"""Read once, resolve once from the target's view, pin (DESIGN.md invariants 2 and 7).

A path a trapped syscall names is read from the target's memory exactly once, then resolved the way the
kernel would resolve it *for the target*: relative to its cwd or dirfd (pinned as O_PATH fds the moment
they are read, never re-read), its ``/proc/self`` meaning the target, ``/proc/<pid>/{cwd,root,fd/N}``
followed once into a pin. The result is a ``Pin``: an O_PATH fd of the directory that holds the last
component, that component's name, and the directory's real path read from the pinned fd itself. The
decision is made on ``Pin.path`` and every action goes through ``Pin.dirfd`` with the single-component
``Pin.name`` and no symlink following, so nothing a thread, a ``chdir``, a rename or a ``dup2`` changes
after the read can move the action to another object than the one checked.

Errors the kernel would give before any permission check (ENOENT, ENOTDIR, ELOOP, ENAMETOOLONG, EBADF,
EFAULT) come back as ``Errno`` values: they are not policy denials and are never reported.
"""

from __future__ import annotations

import ctypes
import errno
import os
import re
import stat
import struct
from dataclasses import dataclass

from nono_supervisor.linux import libc
from nono_supervisor.linux.libc import LIBC, IoVec
from nono_supervisor.procfs import process_of

__all__ = ["Reader", "Pin", "FdRef", "Errno", "resolve", "open_beneath", "PATH_MAX"]

PATH_MAX = 4096
_MAXSYMLINKS = 40  # the kernel's limit: the 41st link gives ELOOP
_PAGE = os.sysconf("SC_PAGE_SIZE")
_AT_FDCWD = 0xFFFFFF9C  # -100 as the low 32 bits of a syscall argument
SYS_OPENAT2 = libc.number("openat2")
# openat2's ``struct open_how`` (flags, mode, resolve) and its RESOLVE_* flags (linux/openat2.h): for the
# walks here, ``emulate``'s opens and ``notify``'s read of a target's own open_how.
OPEN_HOW = struct.Struct("=QQQ")
RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_NO_SYMLINKS = 0x04
RESOLVE_BENEATH = 0x08
RESOLVE_STRICT = RESOLVE_BENEATH | RESOLVE_NO_SYMLINKS | RESOLVE_NO_MAGICLINKS  # below the fd, no link
_O_PATH_DIR = os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC
_O_PATH_LEAF = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC
_FOREIGN_PROC = re.compile(r"^/proc/[0-9]+(/|$)")


class Reader:
    """Reads a target's memory (``process_vm_readv``) into one preallocated buffer per notify thread."""

    def __init__(self) -> None:
        self.buffer = ctypes.create_string_buffer(PATH_MAX + 1)
        self._local = IoVec(ctypes.addressof(self.buffer), PATH_MAX)
        self._remote = (IoVec * 2)()

    def read(self, tid: int, address: int, size: int = PATH_MAX) -> bytes | None:
        """Up to ``size`` (<= PATH_MAX) bytes at ``address``, stopping at the first unmapped page."""
        if address == 0:
            return None
        # Split at the page boundary: a transfer stops at the first iovec that cannot be read whole, so a
        # string near the end of the last mapped page is still read.
        first = min(size, _PAGE - address % _PAGE)
        self._remote[0].base, self._remote[0].len = address, first
        self._remote[1].base, self._remote[1].len = address + first, size - first
        self._local.len = size
        count = 2 if size > first else 1
        got = LIBC.process_vm_readv(tid, ctypes.byref(self._local), 1, self._remote, count, 0)
        if got <= 0:
            return None
        return self.buffer.raw[:got]

    def read_exactly(self, tid: int, address: int, size: int) -> bytes | None:
        """``size`` bytes at ``address`` (any size), or None if they are not all readable."""
        if size == 0:
            return b""
        buffer = ctypes.create_string_buffer(size)
        local = IoVec(ctypes.addressof(buffer), size)
        remote = IoVec(address, size)
        got = LIBC.process_vm_readv(tid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        return buffer.raw[:size] if got == size else None

    def read_string(self, tid: int, address: int) -> bytes | int:
        """A NUL-terminated string: its bytes, or EFAULT / ENAMETOOLONG as the kernel would answer."""
        data = self.read(tid, address)
        if data is None:
            return errno.EFAULT
        end = data.find(b"\0")
        if end < 0:
            return errno.ENAMETOOLONG if len(data) >= PATH_MAX else errno.EFAULT
        return data[:end]


@dataclass(frozen=True)
class Errno:
    """The kernel's own answer before any permission check: not a policy decision, never reported."""

    error: int


@dataclass(eq=False)
class Pin:
    """One resolved object: ``name`` inside the directory pinned by ``dirfd`` (ours, O_PATH).

    ``name`` is a single component, or ``""`` for the directory ``dirfd`` itself (a path ending in ``.``).
    ``path`` is the real path, read from the pinned fd. ``st`` is the leaf as found (not followed), or None
    when it does not exist. Only ``resolve`` builds one; ``close`` releases the fd.
    """

    dirfd: int
    name: str
    path: str
    st: os.stat_result | None

    @property
    def exists(self) -> bool:
        return self.st is not None

    @property
    def is_dir(self) -> bool:
        return self.st is not None and stat.S_ISDIR(self.st.st_mode)

    @property
    def is_file(self) -> bool:
        return self.st is not None and stat.S_ISREG(self.st.st_mode)

    @property
    def is_link(self) -> bool:
        return self.st is not None and stat.S_ISLNK(self.st.st_mode)

    @property
    def via(self) -> str:
        """A path naming exactly the pinned object from this process, for calls with no ``*at`` form:
        our own fd's magic link plus one component, used without following the last one."""
        return f"/proc/self/fd/{self.dirfd}/{self.name}" if self.name else f"/proc/self/fd/{self.dirfd}"

    def close(self) -> None:
        if self.dirfd >= 0:
            os.close(self.dirfd)
            self.dirfd = -1


@dataclass(frozen=True)
class FdRef:
    """The target's own descriptor ``fd`` (``/dev/stdout``, ``/dev/fd/N``, ``/proc/self/fd/N``): reopening
    it means the object the target already holds, decided by that fd's access mode, never by a path."""

    tid: int
    fd: int


Resolved = Pin | FdRef | Errno


def _real(fd: int) -> str:
    return os.readlink(f"/proc/self/fd/{fd}")


def _openat2_dir(base: int, path: bytes, resolve_flags: int = RESOLVE_NO_SYMLINKS) -> int:
    """One in-kernel walk of ``path`` below ``base`` when no component is a symlink (the common case)."""
    how = OPEN_HOW.pack(_O_PATH_DIR, 0, resolve_flags)
    return libc.syscall(SYS_OPENAT2, base, path, how, len(how))


def open_beneath(base: int, path: str) -> int:
    """An O_PATH fd of the directory ``path`` inside the directory ``base``: one in-kernel walk that never
    follows a symlink or a magic link and never leaves ``base`` (``undo`` writes only through these)."""
    return _openat2_dir(base, os.fsencode(path), RESOLVE_STRICT)


class _Walk:
    """The component-by-component resolution of one path, in the target's view. Holds one O_PATH fd."""

    def __init__(self, tid: int, base: int, base_path: str) -> None:
        self.tid = tid
        self.fd = base
        self.path = base_path  # the real path of ``fd``
        self.links = 0

    def move(self, fd: int, path: str) -> None:
        os.close(self.fd)
        self.fd, self.path = fd, path

    def root(self) -> None:
        self.move(os.open("/", _O_PATH_DIR), "/")

    def step(self, name: str, pending: list[str], follow: bool) -> FdRef | None:
        """Enter ``name`` (a directory), or splice in a symlink's target. A FdRef when ``name`` is one of
        the target's own fds (only possible for the last component)."""
        if name == ".":
            return None
        if name == "..":
            self.move(os.open("..", _O_PATH_DIR, dir_fd=self.fd), "")
            self.path = _real(self.fd)
            return None
        proc = self.proc_entry(name, pending)
        if proc is not None:
            return proc if isinstance(proc, FdRef) else None
        child = os.open(name, _O_PATH_LEAF, dir_fd=self.fd)
        try:
            st = os.fstat(child)
        except OSError:
            os.close(child)
            raise
        if stat.S_ISLNK(st.st_mode):
            os.close(child)
            pending[:0] = self.splice(name)
            return None
        if not stat.S_ISDIR(st.st_mode):
            os.close(child)
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        self.move(child, self.path.rstrip("/") + "/" + name)
        return None

    def splice(self, name: str) -> list[str]:
        """The components of symlink ``name`` (in ``fd``) to walk instead; the walk restarts at the root
        for an absolute one. Another process's /proc magic links are refused, as Landlock's ptrace scoping
        refuses them to the target (their text is no path to follow)."""
        self.links += 1
        if self.links > _MAXSYMLINKS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP))
        if _FOREIGN_PROC.match(self.path) and not (
            (self.path + "/").startswith(f"/proc/{process_of(self.tid)}/")
        ):
            raise OSError(errno.EACCES, os.strerror(errno.EACCES))
        target = os.readlink(name, dir_fd=self.fd)
        if not target:
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))
        if target.startswith("/"):
            self.root()
        return [c for c in target.split("/") if c]

    def proc_entry(self, name: str, pending: list[str]) -> FdRef | bool | None:
        """``/proc`` seen from the target: ``self`` and ``thread-self`` are the target; ``fd/N``, ``cwd`` and
        ``root`` of the target's own process are followed once into a pin (or become its FdRef)."""
        if self.path == "/proc" and name in ("self", "thread-self"):
            tgid = process_of(self.tid)
            pending[:0] = [str(tgid)] if name == "self" else [str(tgid), "task", str(self.tid)]
            return True
        parts = self.path.split("/")
        own = {str(self.tid), str(process_of(self.tid))} if len(parts) >= 3 and parts[1] == "proc" else set()
        if not own:
            return None
        # /proc/<pid>/fd/<n>, /proc/<pid>/task/<tid>/fd/<n>, /proc/<pid>/{cwd,root} (and the task forms)
        tail = parts[2:]
        if len(tail) >= 3 and tail[1] == "task":
            tail = [tail[0], *tail[3:]] if tail[2] in own else tail
        if tail[0] not in own:
            return None  # another process: the plain walk meets its magic links and refuses them
        if tail[1:] == ["fd"] and name.isdigit():
            if not pending:
                return FdRef(self.tid, int(name))
            copy = _pidfd_getfd(self.tid, int(name))
            try:
                self.move(os.open(f"/proc/self/fd/{copy}", _O_PATH_DIR), "")
            finally:
                os.close(copy)
            self.path = _real(self.fd)
            return True
        if tail[1:] == [] and name in ("cwd", "root"):
            self.move(os.open(f"/proc/{self.tid}/{name}", _O_PATH_DIR), "")
            self.path = _real(self.fd)
            return True
        return None


def _pidfd_getfd(tid: int, fd: int) -> int:
    from nono_supervisor.linux.kernel import pidfd_getfd

    return pidfd_getfd(tid, fd)


def resolve(
    reader: Reader, tid: int, dirfd: int | None, address: int, *, follow: bool, empty_path: bool = False
) -> Resolved:
    """The object a path argument names, for the target thread ``tid``. ``follow``: a symlink in the last
    component is followed. ``empty_path``: an empty string means ``dirfd`` itself (AT_EMPTY_PATH)."""
    raw = reader.read_string(tid, address)
    if isinstance(raw, int):
        return Errno(raw)
    return resolve_bytes(tid, dirfd, raw, follow=follow, empty_path=empty_path)


def resolve_bytes(
    tid: int, dirfd: int | None, raw: bytes, *, follow: bool, empty_path: bool = False
) -> Resolved:
    if not raw:
        if not empty_path:
            return Errno(errno.ENOENT)
        fd = _AT_FDCWD if dirfd is None else dirfd & 0xFFFFFFFF
        return FdRef(tid, fd) if fd != _AT_FDCWD else _pin_base(tid, None)
    path = os.fsdecode(raw)
    base = os.open("/", _O_PATH_DIR) if path.startswith("/") else _open_base(tid, dirfd)
    if isinstance(base, Errno):
        return base
    components = [c for c in path.split("/") if c]
    must_dir = path.endswith("/")
    leaf = components.pop() if components else "."
    walk = _Walk(tid, base, "/" if path.startswith("/") else "")
    try:
        if not walk.path:
            walk.path = _real(base)
        _walk_parents(walk, components)
        return _pin_leaf(walk, leaf, follow or must_dir, must_dir)
    except OSError as e:
        if walk.fd >= 0:
            os.close(walk.fd)
        return Errno(e.errno or errno.EACCES)


def _open_base(tid: int, dirfd: int | None) -> int | Errno:
    """The target's cwd or dirfd as our own O_PATH fd: read once, never re-read (a chdir after this does
    not move the resolution)."""
    fd = _AT_FDCWD if dirfd is None else dirfd & 0xFFFFFFFF
    where = f"/proc/{tid}/cwd" if fd == _AT_FDCWD else f"/proc/{tid}/fd/{fd}"
    try:
        return os.open(where, _O_PATH_DIR)
    except OSError as e:
        if fd != _AT_FDCWD and e.errno == errno.ENOENT:
            return Errno(errno.EBADF)
        return Errno(e.errno or errno.EBADF)


def _pin_base(tid: int, dirfd: int | None) -> Resolved:
    base = _open_base(tid, dirfd)
    if isinstance(base, Errno):
        return base
    return Pin(base, "", _real(base), os.fstat(base))


def _walk_parents(walk: _Walk, components: list[str]) -> None:
    """Enter every directory before the last component: one in-kernel ``openat2`` when there is no
    symlink, ``..`` or ``/proc`` on the way, else one component at a time."""
    if (
        components
        and ".." not in components
        and not walk.path.startswith("/proc")
        and components[0] != "proc"
    ):
        try:
            fd = _openat2_dir(walk.fd, os.fsencode("/".join(components)))
        except OSError as e:
            if e.errno not in (errno.ELOOP, errno.EXDEV):
                raise
        else:
            walk.move(fd, "")
            walk.path = _real(fd)
            return
    pending = list(components)
    while pending:
        name = pending.pop(0)
        ref = walk.step(name, pending, follow=True)
        if ref is not None:  # an fd mid-path: /proc/self/fd/N/x where N is not a directory
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))


def _pin_leaf(walk: _Walk, leaf: str, follow: bool, must_dir: bool) -> Resolved:
    while True:
        if leaf in (".", ".."):
            walk.step(leaf, [], follow=True)
            fd = walk.fd
            walk.fd = -1
            return Pin(fd, "", walk.path, os.fstat(fd))
        pending: list[str] = []
        proc = walk.proc_entry(leaf, pending)
        if isinstance(proc, FdRef):
            os.close(walk.fd)
            return proc
        if proc:
            if not pending:  # /proc/self/cwd as the leaf: the directory itself
                fd = walk.fd
                walk.fd = -1
                return Pin(fd, "", walk.path, os.fstat(fd))
            leaf = pending.pop()
            _walk_parents(walk, pending)
            continue
        try:
            st = os.stat(leaf, dir_fd=walk.fd, follow_symlinks=False)
        except FileNotFoundError:
            st = None
        if st is not None and stat.S_ISLNK(st.st_mode) and follow:
            target = os.readlink(leaf, dir_fd=walk.fd)
            must_dir = must_dir or target.endswith("/")
            parts = walk.splice(leaf)
            leaf = parts.pop() if parts else "."
            _walk_parents(walk, parts)
            continue
        if must_dir and st is not None and not stat.S_ISDIR(st.st_mode):
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR))
        if walk.path.endswith(" (deleted)"):
            raise OSError(errno.ENOENT, os.strerror(errno.ENOENT))  # a removed directory holds nothing new
        fd = walk.fd
        walk.fd = -1
        return Pin(fd, leaf, walk.path.rstrip("/") + "/" + leaf, st)
