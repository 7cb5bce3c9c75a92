"""The seccomp notify loop: one thread per command, answering every trapped syscall of its process tree.

Each handler returns a decision value; only ``_respond`` issues ioctls. The three answers (DESIGN.md):
- ``CONTINUE``: the kernel runs the syscall under the command's Landlock domain. Only built by
  ``_continue``, which checks that the Landlock baseline grants what the syscall needs (invariant 1), so a
  path swapped in memory after our read can reach nothing the baseline does not already allow.
- ``Deny``: an errno; recorded as a denial when it is a policy decision.
- ``Inject``/``Value``: the supervisor performed the operation itself (an emulated open injected with
  ADDFD+SEND, or a mkdir/unlink/rename done on the command's behalf), on a path it resolved and re-checked
  on the object it actually opened (invariant 2).
Every answer comes after ``NOTIF_ID_VALID`` confirmed the request is still the one we read (invariant 3).
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import os
import select
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache

from supervisor.access import AccessIndex
from supervisor.linux import emulate
from supervisor.linux.kernel import pidfd_getfd
from supervisor.linux.landlock import ACCESS_FS, RightsIndex
from supervisor.linux.seccomp import TRAPS, Trap

__all__ = ["NotifyLoop", "Denial", "Decision", "read_child_path"]

# KERNEL-NOTES.md: ioctl numbers and struct layouts, checked on the CI kernel.
_IOCTL_RECV = 0xC0502100
_IOCTL_SEND = 0xC0182101
_IOCTL_ID_VALID = 0x40082102
_IOCTL_ADDFD = 0x40182103
_IOCTL_SET_FLAGS = 0x40082104
_FLAG_CONTINUE = 1
_ADDFD_FLAG_SEND = 2
_FD_SYNC_WAKE_UP = 1
_NOTIF = struct.Struct("=QIIiIQ6Q")  # id, pid, flags, nr, arch, ip, args[6]: 80 bytes
_RESP = struct.Struct("=QqiI")  # id, val, error, flags: 24 bytes
_ADDFD = struct.Struct("=QIIII")  # id, flags, srcfd, newfd, newfd_flags: 24 bytes
_ID = struct.Struct("=Q")
_OPEN_HOW = struct.Struct("=QQQ")  # flags, mode, resolve
_AT_FDCWD = 0xFFFFFF9C  # -100 as the low 32 bits of a syscall argument
_AT_REMOVEDIR = 0x200
_AT_EMPTY_PATH = 0x1000
PATH_MAX = 4096
_PAGE = os.sysconf("SC_PAGE_SIZE")

_A = ACCESS_FS
_O_ACCMODE, _O_WRONLY, _O_RDWR = 3, os.O_WRONLY, os.O_RDWR


# ---- decisions -------------------------------------------------------------------------------------------


class _Continue:
    __slots__ = ()


CONTINUE = _Continue()


@dataclass(frozen=True)
class Deny:
    error: int
    denial: Denial | None = None  # set when this is a policy decision to report


@dataclass(frozen=True)
class Value:
    """The supervisor did it; the syscall returns ``value``."""

    value: int
    grant: Denial | None = None


@dataclass(frozen=True)
class Inject:
    """The supervisor opened ``fd``; it is injected into the target as the syscall's result."""

    fd: int
    cloexec: bool
    grant: Denial | None = None


Decision = _Continue | Deny | Value | Inject


@dataclass(frozen=True)
class Denial:
    """One (operation, path) decision worth reporting: a denial, or a grant the supervisor carried out."""

    op: str
    path: str
    rule: str
    is_dir: bool = False
    pid: int = 0  # the thread that asked


# ---- reading the target ----------------------------------------------------------------------------------


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


_libc = ctypes.CDLL(None, use_errno=True)
_libc.process_vm_readv.restype = ctypes.c_ssize_t
_libc.process_vm_readv.argtypes = [
    ctypes.c_int,
    ctypes.POINTER(_IoVec),
    ctypes.c_ulong,
    ctypes.POINTER(_IoVec),
    ctypes.c_ulong,
    ctypes.c_ulong,
]


class _Reader:
    """Reads NUL-terminated strings from a target, into one preallocated buffer per notify thread."""

    def __init__(self) -> None:
        self.buffer = ctypes.create_string_buffer(PATH_MAX + 1)
        self._local = _IoVec(ctypes.addressof(self.buffer), PATH_MAX)
        self._remote = (_IoVec * 2)()

    def read(self, tid: int, address: int, size: int = PATH_MAX) -> bytes | None:
        """``size`` bytes (or up to the first unmapped page) at ``address``; None if nothing is readable."""
        if address == 0:
            return None
        # Split at the page boundary: a transfer stops at the first iovec that cannot be read whole, so a
        # string near the end of the last mapped page is still read.
        first = min(size, _PAGE - address % _PAGE)
        self._remote[0].base, self._remote[0].len = address, first
        self._remote[1].base, self._remote[1].len = address + first, size - first
        self._local.len = size
        count = 2 if size > first else 1
        got = _libc.process_vm_readv(tid, ctypes.byref(self._local), 1, self._remote, count, 0)
        if got <= 0:
            return None
        return self.buffer.raw[:got]

    def read_exactly(self, tid: int, address: int, size: int) -> bytes | None:
        """``size`` bytes at ``address`` (any size), or None if they are not all readable."""
        buffer = ctypes.create_string_buffer(size)
        local = _IoVec(ctypes.addressof(buffer), size)
        remote = _IoVec(address, size)
        got = _libc.process_vm_readv(tid, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0)
        return buffer.raw[:size] if got == size else None

    def read_path(self, tid: int, address: int) -> bytes | None:
        data = self.read(tid, address)
        if data is None:
            return None
        end = data.find(b"\0")
        return data[:end] if end >= 0 else None


def read_child_path(reader: _Reader, tid: int, dirfd: int | None, address: int) -> str | None:
    """The absolute, lexically normal path a syscall names, read once from the target (None: EFAULT)."""
    raw = reader.read_path(tid, address)
    if raw is None:
        return None
    path = os.fsdecode(raw)
    if not path.startswith("/"):
        fd = _AT_FDCWD if dirfd is None else dirfd & 0xFFFFFFFF
        base = f"/proc/{tid}/cwd" if fd == _AT_FDCWD else f"/proc/{tid}/fd/{fd}"
        try:
            base = os.readlink(base)
        except OSError:
            return None
        path = f"{base}/{path}" if path else base
    # The target's /proc/self is not ours.
    if path.startswith("/proc/self/") or path == "/proc/self":
        path = f"/proc/{tid}" + path[len("/proc/self") :]
    elif path.startswith("/proc/thread-self"):
        path = f"/proc/{tid}/task/{tid}" + path[len("/proc/thread-self") :]
    return os.path.normpath(path)


def _resolve(path: str, follow: bool = True) -> str:
    """The physical path: symlinks (and /proc magic links) resolved; the last one only if ``follow``."""
    if follow:
        return os.path.realpath(path)
    parent, name = os.path.split(path)
    return os.path.join(os.path.realpath(parent), name)


def _umask(tid: int) -> int:
    try:
        with open(f"/proc/{tid}/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


# ---- the loop --------------------------------------------------------------------------------------------


class NotifyLoop(threading.Thread):
    """Answers one command tree's notifications until the last process holding the filter exits."""

    def __init__(
        self,
        listener: int,
        rights: RightsIndex,
        access: AccessIndex,
        on_decision: Callable[[str, Denial], None],
        consent: Callable[..., bool] | None = None,
        allowed_sockets: frozenset[str] = frozenset(),
    ) -> None:
        super().__init__(name=f"nono-notify-{listener}", daemon=True)
        self.listener = listener
        self.rights = rights
        self.access = access
        self.on_decision = on_decision
        self.consent = consent  # the human, asked while the syscall waits (or None)
        self.allowed_sockets = allowed_sockets  # the supervisor's own socket: nested routing
        self._reader = _Reader()
        self._recv = bytearray(_NOTIF.size)
        self._zero = bytes(_NOTIF.size)
        self._resp = bytearray(_RESP.size)
        self._id = bytearray(_ID.size)
        self._addfd = bytearray(_ADDFD.size)
        self._current = self._tid = 0
        self._handlers = _dispatch_table()
        self._set_sync_wakeup()

    def _set_sync_wakeup(self) -> None:
        """Wake the answering thread on the waiting CPU (6.6+): 82 -> 11 us per trapped open here."""
        if os.environ.get("NONO_SYNC_WAKEUP") == "0":  # for bench/bench_notify.py's comparison only
            return
        try:
            fcntl.ioctl(self.listener, _IOCTL_SET_FLAGS, _FD_SYNC_WAKE_UP)  # by value, not a pointer
        except OSError:
            pass  # before 6.6: still correct, only slower

    def run(self) -> None:
        poller = select.poll()
        poller.register(self.listener, select.POLLIN)
        try:
            while True:
                events = poller.poll()
                if any(ev & (select.POLLHUP | select.POLLERR) for _fd, ev in events):
                    return  # every process under the filter has exited
                try:
                    self._recv[:] = self._zero  # RECV wants a zeroed buffer (EINVAL otherwise)
                    fcntl.ioctl(self.listener, _IOCTL_RECV, self._recv, True)
                except OSError as e:
                    # ENOENT: the target died or was signalled between poll and recv. Not fatal: a loop
                    # that gives up here would park every later syscall of the tree forever.
                    if e.errno in (errno.ENOENT, errno.EINTR):
                        continue
                    raise
                nid, tid, _flags, nr, _arch, _ip, *args = _NOTIF.unpack_from(self._recv)
                self._dispatch(nid, tid, nr, args)
        finally:
            os.close(self.listener)

    def _dispatch(self, nid: int, tid: int, nr: int, args: list[int]) -> None:
        entry = self._handlers.get(nr)
        if entry is None:  # the filter and this table come from one list; this is a bug, fail closed
            self._respond(nid, Deny(errno.ENOSYS))
            return
        trap, handler = entry  # an unbound method: no per-loop table, no self -> dict -> self cycle
        self._current, self._tid = nid, tid  # for a question held on this syscall, and for its report
        paths = []
        for dirfd_arg, path_arg in trap.paths:
            path = read_child_path(
                self._reader, tid, None if dirfd_arg is None else args[dirfd_arg], args[path_arg]
            )
            if path is None:
                self._respond(nid, Deny(errno.EFAULT))
                return
            paths.append(path)
        if not self._still_valid(nid):
            return  # the target moved on (signal, death): nothing to answer
        try:
            decision = handler(self, trap, tid, paths, args)
        except OSError as e:
            decision = Deny(e.errno or errno.EACCES)
        except Exception:  # noqa: BLE001 - a handler bug denies this one syscall; it never lets it through
            decision = Deny(errno.EACCES)
        if isinstance(decision, Inject) and not self._still_valid(nid):
            os.close(decision.fd)  # emulation took time and the request is gone: inject nothing
            return
        self._respond(nid, decision)

    def _still_valid(self, nid: int) -> bool:
        _ID.pack_into(self._id, 0, nid)
        try:
            fcntl.ioctl(self.listener, _IOCTL_ID_VALID, self._id, True)
            return True
        except OSError:
            return False

    def _respond(self, nid: int, decision: Decision) -> None:
        """The only place that answers the kernel."""
        try:
            if isinstance(decision, Inject):
                try:
                    _ADDFD.pack_into(
                        self._addfd,
                        0,
                        nid,
                        _ADDFD_FLAG_SEND,
                        decision.fd,
                        0,
                        os.O_CLOEXEC if decision.cloexec else 0,
                    )
                    fcntl.ioctl(self.listener, _IOCTL_ADDFD, self._addfd, True)
                finally:
                    os.close(decision.fd)
                self._report("grant", decision.grant)
                return
            if decision is CONTINUE:
                _RESP.pack_into(self._resp, 0, nid, 0, 0, _FLAG_CONTINUE)
            elif isinstance(decision, Value):
                _RESP.pack_into(self._resp, 0, nid, decision.value, 0, 0)
                self._report("grant", decision.grant)
            else:
                _RESP.pack_into(self._resp, 0, nid, 0, -decision.error, 0)
                self._report("deny", decision.denial)
            fcntl.ioctl(self.listener, _IOCTL_SEND, self._resp, True)
        except OSError as e:
            if e.errno != errno.ENOENT:  # ENOENT: the target was signalled meanwhile; it will retry
                raise

    def _report(self, decision: str, what: Denial | None) -> None:
        if what is not None:
            self.on_decision(decision, what)

    # ---- decisions -------------------------------------------------------------------------------------

    def _continue(self, path: str, needed: int) -> _Continue | None:
        """CONTINUE, only if the Landlock baseline alone grants ``needed`` on ``path`` (invariant 1)."""
        return CONTINUE if self.rights.allows(path, needed) else None

    def _deny(self, op: str, path: str, rule: str, is_dir: bool = False) -> Deny:
        return Deny(errno.EACCES, Denial(op, path, rule, is_dir, self._tid))

    def _check(self, op: str, path: str) -> Deny | None:
        """None if the policy, or failing that the human, allows ``op`` on the resolved ``path``."""
        verdict = self.access.verdict(path, op)
        if verdict.allowed:
            return None
        is_dir = os.path.isdir(path)
        alive = functools.partial(self._still_valid, self._current)
        if self.consent is not None and self.consent(op, path, verdict.rule, is_dir, alive, self._tid):
            return None
        return self._deny(op, path, verdict.rule, is_dir)

    def _on_open(self, trap: Trap, tid: int, paths: list[str], args: list[int]) -> Decision:
        path = paths[0]
        if trap.name == "openat2":
            how = self._reader.read(tid, args[2], _OPEN_HOW.size)
            if how is None or len(how) < _OPEN_HOW.size:
                return Deny(errno.EFAULT)
            flags, mode, _resolve_flags = _OPEN_HOW.unpack(how)
        elif trap.name == "creat":
            flags, mode = os.O_CREAT | os.O_WRONLY | os.O_TRUNC, args[1]
        else:
            flags, mode = args[trap.flags_arg], args[trap.mode_arg]
        if flags & os.O_PATH:
            return CONTINUE  # Landlock grants no right to O_PATH: it reads and writes nothing
        needed = _open_rights(flags)
        creating = bool(flags & os.O_CREAT)
        fast = self._continue(path, needed)
        if fast and (not creating or self.rights.allows(os.path.dirname(path), _A["make_reg"])):
            return fast
        real = _resolve(path, follow=not flags & os.O_NOFOLLOW)
        exists = os.path.lexists(real)
        if exists and self.rights.allows(real, needed):
            return CONTINUE
        ops = []
        if (flags & _O_ACCMODE) != _O_WRONLY:
            ops.append("read")
        if (flags & _O_ACCMODE) != os.O_RDONLY or flags & os.O_TRUNC:
            ops.append("write")
        if creating and not exists:
            ops.append("create")
        for op in ops:
            denied = self._check(op, real)
            if denied:
                return denied
        fd = emulate.open_checked(
            real, flags, mode & ~_umask(tid) & 0o7777, lambda p: self._check(ops[-1], p)
        )
        return Inject(fd, bool(flags & os.O_CLOEXEC), Denial(ops[-1], real, "policy"))

    def _on_exec(self, trap: Trap, tid: int, paths: list[str], args: list[int]) -> Decision:
        fast = self._continue(paths[0], _A["execute"])
        if fast:
            return fast
        real = _resolve(paths[0])
        if self.rights.allows(real, _A["execute"]):
            return CONTINUE
        verdict = self.access.verdict(real, "exec")
        return self._deny("exec", real, "outside the baseline" if verdict.allowed else verdict.rule)

    def _parent_action(self, op: str, path: str, needed: int) -> tuple[Decision | None, str]:
        """Fast path on the parent's rights, else the resolved path after the policy check."""
        if self._continue(os.path.dirname(path), needed):
            return CONTINUE, path
        real = _resolve(path, follow=False)
        if self.rights.allows(os.path.dirname(real), needed):
            return CONTINUE, real
        denied = self._check(op, real) or self._contains_denied(op, real)
        return denied, real

    def _contains_denied(self, op: str, real: str) -> Deny | None:
        """Moving or removing a directory that holds a denied node would carry it out from under its rule."""
        for denied_path, rule in self.access.denied_below(real):
            return self._deny(op, real, f"{rule} (inside: {denied_path})", True)
        return None

    def _on_unlink(self, trap: Trap, tid: int, paths: list[str], args: list[int]) -> Decision:
        rmdir = trap.flags_arg is not None and bool(args[trap.flags_arg] & _AT_REMOVEDIR)
        return self._remove(paths[0], directory=rmdir)

    def _on_rmdir(self, trap: Trap, tid: int, paths: list[str], args: list[int]) -> Decision:
        return self._remove(paths[0], directory=True)

    def _remove(self, path: str, directory: bool) -> Decision:
        decision, real = self._parent_action("delete", path, _A["remove_dir" if directory else "remove_file"])
        if decision is not None:
            return decision
        emulate.remove(real, directory=directory)
        return Value(0, Denial("delete", real, "policy"))

    def _on_mkdir(self, trap: Trap, tid: int, paths: list[str], args: list[int]) -> Decision:
        decision, real = self._parent_action("create", paths[0], _A["make_dir"])
        if decision is not None:
            return decision
        emulate.mkdir(real, args[trap.mode_arg] & ~_umask(tid) & 0o7777)
        return Value(0, Denial("create", real, "policy", True))

    def _on_symlink(self, trap: Trap, tid: int, paths: list[str], args: list[int]) -> Decision:
        decision, real = self._parent_action("create", paths[0], _A["make_sym"])
        if decision is not None:
            return decision
        target = self._reader.read_path(tid, args[0])  # symlink and symlinkat both take the target first
        if target is None:
            return Deny(errno.EFAULT)
        emulate.symlink(os.fsdecode(target), real)
        return Value(0, Denial("create", real, "policy"))

    def _on_rename(self, trap: Trap, tid: int, paths: list[str], args: list[int]) -> Decision:
        flags = args[trap.flags_arg] if trap.flags_arg is not None else 0
        moving = _A["remove_file"] | _A["remove_dir"] | _A["make_reg"] | _A["make_dir"] | _A["refer"]
        src_decision, _ = self._parent_action("delete", paths[0], moving)
        dst_decision, _ = self._parent_action("create", paths[1], moving)
        if src_decision is CONTINUE and dst_decision is CONTINUE:
            return CONTINUE  # Landlock checks both ends itself, REFER included
        for decision in (src_decision, dst_decision):
            if isinstance(decision, Deny):
                return decision
        src, dst = _resolve(paths[0], follow=False), _resolve(paths[1], follow=False)
        denied = self._contains_denied("delete", src)
        if denied:
            return denied
        emulate.rename(src, dst, flags)
        return Value(0, Denial("create", dst, "policy"))

    def _on_link(self, trap: Trap, tid: int, paths: list[str], args: list[int]) -> Decision:
        src = _resolve(paths[0], follow=False)
        dst_decision, dst = self._parent_action("create", paths[1], _A["make_reg"] | _A["refer"])
        # A hard link to a denied file is a second name for it: the source must be readable and writable
        # under the policy, whichever way the destination is decided.
        for op in ("read", "write"):
            denied = self._check(op, src)
            if denied:
                return denied
        if dst_decision is CONTINUE:
            return CONTINUE
        if isinstance(dst_decision, Deny):
            return dst_decision
        emulate.link(src, dst)
        return Value(0, Denial("create", dst, "policy"))

    def _on_connect(self, trap: Trap, tid: int, paths: list[str], args: list[int]) -> Decision:
        def connect(sock: int, target: str) -> int:
            address = _sockaddr_un(target)
            return _libc.connect(sock, address, len(address))

        return self._unix_destination(tid, args[0], args[1], args[2], connect)

    def _on_sendto(self, trap: Trap, tid: int, paths: list[str], args: list[int]) -> Decision:
        size = args[2]
        if size > MAX_DATAGRAM:
            return Deny(errno.EMSGSIZE)
        data = self._reader.read_exactly(tid, args[1], size) if size else b""
        if data is None:
            return Deny(errno.EFAULT)

        def sendto(sock: int, target: str) -> int:
            address = _sockaddr_un(target)
            return _libc.sendto(sock, data, len(data), args[3] & 0xFFFFFFFF, address, len(address))

        return self._unix_destination(tid, args[0], args[4], args[5], sendto)

    def _on_sendmsg(self, trap: Trap, tid: int, paths: list[str], args: list[int]) -> Decision:
        """Only a unix *datagram* socket picks its destination per message; the kernel ignores or refuses
        an address on stream and seqpacket sockets, whose peer connect() decided. A datagram message is
        sent by the supervisor from what it read once: nothing swapped in memory later is sent anywhere."""
        sock = pidfd_getfd(tid, args[0] & 0xFFFFFFFF)
        try:
            if _domain(sock) != socket.AF_UNIX or _sockopt(sock, _SO_TYPE) != socket.SOCK_DGRAM:
                return CONTINUE
        finally:
            os.close(sock)
        message = self._read_message(tid, args[1])
        if isinstance(message, Deny):
            return message
        data, fds, name, namelen = message
        try:

            def sendmsg(sock: int, target: str | None) -> int:
                with socket.socket(fileno=os.dup(sock)) as own:
                    ancillary = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))]
                    return own.sendmsg(
                        [data], ancillary if fds else [], args[2] & 0xFFFFFFFF, *filter(None, [target])
                    )

            if not name or not namelen:
                connected = pidfd_getfd(tid, args[0] & 0xFFFFFFFF)
                try:
                    return Value(sendmsg(connected, None))  # to the peer connect() already decided
                finally:
                    os.close(connected)
            return self._unix_destination(tid, args[0], name, namelen, sendmsg)
        finally:
            for fd in fds:
                os.close(fd)

    def _read_message(self, tid: int, address: int) -> Deny | tuple[bytes, list[int], int, int]:
        """A struct msghdr of the target, read once: its bytes, its SCM_RIGHTS fds (as ours), its name."""
        header = self._reader.read_exactly(tid, address, _MSGHDR.size)
        if header is None:
            return Deny(errno.EFAULT)
        name, namelen, iov, iovlen, control, controllen, _flags = _MSGHDR.unpack(header)
        if iovlen > _MAX_IOV:
            return Deny(errno.EMSGSIZE)
        vectors = self._reader.read_exactly(tid, iov, iovlen * _IOVEC.size) if iovlen else b""
        if vectors is None:
            return Deny(errno.EFAULT)
        parts = list(_IOVEC.iter_unpack(vectors))
        if sum(length for _base, length in parts) > MAX_DATAGRAM:
            return Deny(errno.EMSGSIZE)
        chunks = [self._reader.read_exactly(tid, base, length) if length else b"" for base, length in parts]
        if any(chunk is None for chunk in chunks):
            return Deny(errno.EFAULT)
        fds: list[int] = []
        if controllen:
            raw = self._reader.read_exactly(tid, control, min(controllen, _MAX_CONTROL))
            if raw is None:
                return Deny(errno.EFAULT)
            offset = 0
            while offset + _CMSGHDR.size <= len(raw):
                length, level, kind = _CMSGHDR.unpack_from(raw, offset)
                if length < _CMSGHDR.size or offset + length > len(raw):
                    break
                if level != socket.SOL_SOCKET or kind != socket.SCM_RIGHTS:
                    for fd in fds:
                        os.close(fd)
                    return Deny(errno.EINVAL)  # only descriptors can be passed on the command's behalf
                payload = raw[offset + _CMSGHDR.size : offset + length]
                for (target,) in struct.iter_unpack("i", payload[: len(payload) - len(payload) % 4]):
                    fds.append(pidfd_getfd(tid, target))
                offset += (length + 7) & ~7
        return b"".join(chunks), fds, name, namelen

    def _unix_destination(
        self, tid: int, fd: int, address: int, length: int, act: Callable[[int, str], int]
    ) -> Decision:
        """Decide a socket destination. Only a unix socket's path needs us: the socket's own family is read
        from the socket (it cannot change), so a sockaddr swapped in memory cannot turn TCP into unix.
        ``act(sock, target)`` performs the operation on the command's socket towards ``target``."""
        sock = pidfd_getfd(tid, fd & 0xFFFFFFFF)
        try:
            if _domain(sock) != socket.AF_UNIX:
                # Not a unix socket: the kernel's own rules (Landlock TCP rules under --net-block) apply.
                return CONTINUE
            raw = self._reader.read(tid, address, min(length, _SOCKADDR_UN_MAX))
            if raw is None or len(raw) < 3 or struct.unpack_from("=H", raw)[0] != socket.AF_UNIX:
                return Deny(errno.EACCES if raw else errno.EFAULT)
            name = raw[2:]
            if name[:1] == b"\0":
                # Abstract: connecting from here would step out of the command's Landlock scope, and a
                # CONTINUE could be swapped for a path. Refused.
                return self._deny("connect", "@" + os.fsdecode(name[1:].split(b"\0")[0]), "abstract socket")
            path = os.fsdecode(name.split(b"\0")[0])
            if not path.startswith("/"):
                path = os.path.join(os.readlink(f"/proc/{tid}/cwd"), path)
            real = os.path.realpath(path)
            if not os.path.exists(real):
                return Deny(errno.ENOENT)  # as the kernel would say (Landlock does not hide existence either)
            if real not in self.allowed_sockets:
                denied = self._check("connect", real)
                if denied:
                    return denied
            # Reach it through an O_PATH fd on the checked inode, not the path: a symlink swapped in after
            # the check cannot redirect it.
            pinned = os.open(real, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                if os.readlink(f"/proc/self/fd/{pinned}") != real:
                    return Deny(errno.EACCES)
                result = act(sock, f"/proc/self/fd/{pinned}")
                if result < 0:
                    return Deny(ctypes.get_errno())
                return Value(result, Denial("connect", real, "policy"))
            finally:
                os.close(pinned)
        finally:
            os.close(sock)

    def _on_truncate(self, trap: Trap, tid: int, paths: list[str], args: list[int]) -> Decision:
        fast = self._continue(paths[0], _A["truncate"] | _A["write_file"])
        if fast:
            return fast
        real = _resolve(paths[0])
        denied = self._check("write", real)
        if denied:
            return denied
        emulate.truncate(real, args[1], lambda p: self._check("write", p))
        return Value(0, Denial("write", real, "policy"))


def _sockopt(sock: int, option: int) -> int:
    value = ctypes.c_int(0)
    size = ctypes.c_uint(ctypes.sizeof(value))
    if _libc.getsockopt(sock, socket.SOL_SOCKET, option, ctypes.byref(value), ctypes.byref(size)) != 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return value.value


def _domain(sock: int) -> int:
    return _sockopt(sock, _SO_DOMAIN)


def _sockaddr_un(path: str) -> bytes:
    return struct.pack("=H", socket.AF_UNIX) + os.fsencode(path) + b"\0"


@cache
def _dispatch_table() -> dict[int, tuple[Trap, Callable]]:
    """Syscall number -> (trap, NotifyLoop handler), built from the same list as the filter."""
    import pyseccomp

    return {
        pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, trap.name): (
            trap,
            getattr(NotifyLoop, f"_on_{trap.kind}"),
        )
        for trap in TRAPS
    }


# Datagrams the supervisor sends on a command's behalf are read from its memory first; larger ones are
# refused (EMSGSIZE) rather than buffered without bound.
MAX_DATAGRAM = 256 * 1024
_SOCKADDR_UN_MAX = 110  # sa_family_t + sun_path[108]
_SO_DOMAIN = 39
_SO_TYPE = 3
_MSGHDR = struct.Struct("=QI4xQQQQi4x")  # name, namelen, iov, iovlen, control, controllen, flags: 56 bytes
_IOVEC = struct.Struct("=QQ")
_CMSGHDR = struct.Struct("=Qii")  # len, level, type
_MAX_IOV = 1024  # UIO_MAXIOV
_MAX_CONTROL = 4096
_libc.connect.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
_libc.sendto.restype = ctypes.c_ssize_t
_libc.sendto.argtypes = [
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_size_t,
    ctypes.c_int,
    ctypes.c_char_p,
    ctypes.c_uint,
]


def _open_rights(flags: int) -> int:
    mode = flags & _O_ACCMODE
    needed = 0
    if mode != _O_WRONLY:
        needed |= _A["read_dir"] if flags & os.O_DIRECTORY else _A["read_file"]
    if mode in (_O_WRONLY, _O_RDWR):
        needed |= _A["write_file"]
    if flags & os.O_TRUNC:
        needed |= _A["truncate"]
    return needed
