"""Socket calls, carried out by the supervisor on the socket object it checked (DESIGN.md invariant 7).

A descriptor number means nothing stable: another thread can ``dup2`` a unix socket over a TCP one
between our check and the kernel's run of the call. So no answer here depends on what the number refers
to later. The supervisor takes its own copy of the target's socket (``pidfd_getfd``: the same open file,
so the same socket), decides on that copy's family and on the destination it read once, and performs
``connect``/``sendto``/``sendmsg``/``sendmmsg``/``listen`` on the copy itself. Only ``bind`` and
``socket`` are CONTINUEd, and only where Landlock (make_sock, TCP bind) or registers decide every outcome.

Unix sockets reach processes outside every sandbox (ssh-agent, docker.sock): their path is decided as a
``connect`` of that path by the file policy. Abstract ones are refused (Landlock's scoping would refuse
them to the command; connecting from here would step outside it). Under ``--net-block`` no inet socket
may reach anything; in domains mode (``--allow-domain``) a TCP socket may connect to the supervisor's proxy
only (``loop.net_proxy``, which is told which command's socket it was), or to an address the command's
allow-list names.
"""

from __future__ import annotations

import ctypes
import errno
import fcntl
import functools
import os
import socket
import stat
import struct

from nono_supervisor.linux.decisions import CONTINUE, Decision, Denial, Deny, Emulate, Outcome, Value
from nono_supervisor.linux.kernel import pidfd_getfd
from nono_supervisor.linux.landlock import ACCESS_FS
from nono_supervisor.linux.libc import LIBC, IoVec, MsgHdr, last_error
from nono_supervisor.linux.loopapi import LoopApi
from nono_supervisor.linux.resolve import FdRef, Pin, resolve_bytes
from nono_supervisor.linux.seccomp import MSG_FASTOPEN, Trap
from nono_supervisor.policy.netpolicy import DIRECT, DOMAINS_ONLY, RAW_DNS

__all__ = [
    "on_connect",
    "on_bind",
    "on_sendto",
    "on_sendmsg",
    "on_sendmmsg",
    "on_listen",
    "on_socket",
    "on_setsockopt",
]

# Bytes the supervisor sends on a command's behalf are read from its memory first: a datagram larger than
# this is refused (EMSGSIZE), a stream write is sent in part (a short count, which callers handle).
MAX_SEND = 256 * 1024
_SOCKADDR_MAX = 128  # sizeof(struct sockaddr_storage)
_SUN_PATH_MAX = 108
_MSGHDR = struct.Struct("=QI4xQQQQi4x")  # name, namelen, iov, iovlen, control, controllen, flags: 56 bytes
_MMSGHDR_SIZE = 64  # struct msghdr + unsigned msg_len, padded
_IOVEC = struct.Struct("=QQ")
_CMSGHDR = struct.Struct("=Qii")  # len, level, type
_MAX_IOV = 1024  # UIO_MAXIOV
_MAX_CONTROL = 4096
_INET = (socket.AF_INET, socket.AF_INET6)
_NET_BLOCK = "--net-block"
_DNS_PORT = 53


def _net_rule(loop: LoopApi) -> str:
    """The rule a restricted network's refusal names: --net-block, or domains mode (the proxy is set)."""
    return DOMAINS_ONLY if loop.net_proxy is not None else _NET_BLOCK


class _Socket:
    """Our copy of the target's socket, with what it is (read from the socket, which cannot change)."""

    def __init__(self, tid: int, fd: int) -> None:
        self.fd = pidfd_getfd(tid, fd & 0xFFFFFFFF)
        try:
            self.family = _sockopt(self.fd, socket.SO_DOMAIN)
            self.type = _sockopt(self.fd, socket.SO_TYPE)
            self.blocking = not fcntl.fcntl(self.fd, fcntl.F_GETFL) & os.O_NONBLOCK
        except OSError:
            os.close(self.fd)
            raise

    def close(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _on_socket_call(handler):
    """A handler of a call on the target's socket ``args[0]``, given our copy of it. The copy is closed here
    whatever the handler decides (a Deny, a CONTINUE, an exception), unless the decision is an Emulate,
    whose release closes it (the loop calls release whether or not it runs). A copy kept would hold the
    socket open for as long as the supervisor lives: one fd per call, and a listening socket that goes on
    taking connects after its process died (the connect then waits for an accept that never comes)."""

    @functools.wraps(handler)
    def on_call(loop: LoopApi, trap: Trap, tid: int, args: list[int]) -> Decision:
        sock = _Socket(tid, args[0])
        try:
            decision = handler(loop, tid, args, sock)
        except BaseException:
            sock.close()
            raise
        if not isinstance(decision, Emulate):
            sock.close()
        return decision

    return on_call


def _sockopt(fd: int, option: int) -> int:
    value = ctypes.c_int(0)
    size = ctypes.c_uint(4)
    if LIBC.getsockopt(fd, socket.SOL_SOCKET, option, ctypes.byref(value), ctypes.byref(size)) != 0:
        raise last_error()
    return value.value


def _errno() -> int:
    return ctypes.get_errno() or errno.EIO


def _sockaddr_un(path: str) -> bytes:
    return struct.pack("=H", socket.AF_UNIX) + os.fsencode(path) + b"\0"


def _loopback_ephemeral(raw: bytes) -> bool:
    """``raw`` is an inet address on loopback (127.0.0.0/8, ::1) with port 0."""
    family = struct.unpack_from("=H", raw)[0] if len(raw) >= 2 else 0
    if family == socket.AF_INET and len(raw) >= 8:
        return raw[2:4] == b"\0\0" and raw[4] == 127
    if family == socket.AF_INET6 and len(raw) >= 24:
        return raw[2:4] == b"\0\0" and raw[8:24] == socket.inet_pton(socket.AF_INET6, "::1")
    return False


def _inet_name(raw: bytes) -> str:
    family = struct.unpack_from("=H", raw)[0] if len(raw) >= 2 else 0
    try:
        if family == socket.AF_INET and len(raw) >= 8:
            return f"{socket.inet_ntop(socket.AF_INET, raw[4:8])}:{struct.unpack_from('!H', raw, 2)[0]}"
        if family == socket.AF_INET6 and len(raw) >= 24:
            return f"[{socket.inet_ntop(socket.AF_INET6, raw[8:24])}]:{struct.unpack_from('!H', raw, 2)[0]}"
    except (OSError, ValueError):
        pass
    return "network"


class _Destination:
    """Where a connect/send goes, decided once: ``address`` is the sockaddr to use from here (for a unix
    path: our O_PATH fd of the checked socket inode, so a rename or symlink swap cannot redirect it)."""

    def __init__(
        self, address: bytes | None, pinned: int = -1, grant: Denial | None = None, connected=None
    ) -> None:
        self.address, self.pinned, self.grant = address, pinned, grant
        self.connected = connected  # called with our copy once connect() started (the proxy's bookkeeping)

    def close(self) -> None:
        if self.pinned >= 0:
            os.close(self.pinned)
            self.pinned = -1


def _inet_address(raw: bytes) -> tuple[str, int] | None:
    """(address, port) of an inet sockaddr, a v4-mapped IPv6 address as IPv4; None when malformed."""
    family = struct.unpack_from("=H", raw)[0] if len(raw) >= 2 else 0
    try:
        if family == socket.AF_INET and len(raw) >= 16:
            return socket.inet_ntop(socket.AF_INET, raw[4:8]), struct.unpack_from("!H", raw, 2)[0]
        if family == socket.AF_INET6 and len(raw) >= 24:
            address = socket.inet_ntop(socket.AF_INET6, raw[8:24])
            if address.startswith("::ffff:") and "." in address:
                address = address[len("::ffff:") :]
            return address, struct.unpack_from("!H", raw, 2)[0]
    except (OSError, ValueError):
        pass
    return None


def _domains_destination(
    proxy, tid: int, sock: _Socket, raw: bytes, op: str, connecting: bool
) -> _Destination | Deny:
    """Domains mode: TCP to the supervisor's proxy (registered as this command's once connect() has
    started), or to an address the command's allow-list names; nothing else, and never DNS."""
    if struct.unpack_from("=H", raw)[0] == socket.AF_UNSPEC:
        return _Destination(raw)  # connect(AF_UNSPEC) dissolves an association: it reaches nothing
    address = _inet_address(raw)
    if address is None:
        return Deny(errno.EINVAL)
    stream = sock.type == socket.SOCK_STREAM
    if stream and proxy.is_proxy(*address):
        if not connecting:
            return _Destination(raw)  # an address on a TCP send is ignored by the kernel
        return _Destination(raw, connected=lambda fd: proxy.register(fd, sock.family, tid))
    name = f"[{address[0]}]:{address[1]}" if ":" in address[0] else f"{address[0]}:{address[1]}"
    if address[1] == _DNS_PORT:
        return Deny(errno.EACCES, Denial(op, name, RAW_DNS, False, tid))
    allowed = proxy.direct_rule(*address) if stream and connecting else None
    if allowed is None:
        return Deny(errno.EACCES, Denial(op, name, DIRECT, False, tid))
    return _Destination(raw, grant=Denial(op, name, allowed, False, tid))


def _destination(
    loop: LoopApi, tid: int, sock: _Socket, raw: bytes | None, op: str, connecting: bool = False
) -> _Destination | Deny:
    """Decide the destination ``raw`` (a sockaddr read once; None: the connected peer) for ``sock``.
    ``connecting``: for connect() itself (not an addressed send)."""
    if raw is None:
        return _Destination(None)
    if sock.family in _INET:
        if loop.net_block:
            proxy = loop.net_proxy  # domains mode (linux.backend sets it)
            if proxy is not None:
                return _domains_destination(proxy, tid, sock, raw, op, connecting)
            return Deny(errno.EACCES, Denial(op, _inet_name(raw), _NET_BLOCK, False, tid))
        return _Destination(raw)
    if sock.family != socket.AF_UNIX:
        return _Destination(raw)  # netlink and the like: not the network, not a file
    if len(raw) < 3 or struct.unpack_from("=H", raw)[0] != socket.AF_UNIX:
        return Deny(errno.EINVAL)
    name = raw[2:]
    if name[:1] == b"\0":
        shown = "@" + os.fsdecode(name[1:].split(b"\0")[0])
        return Deny(errno.EPERM, Denial(op, shown, "abstract socket", False, tid))
    resolved = resolve_bytes(tid, None, name.split(b"\0")[0], follow=True)
    if isinstance(resolved, FdRef):
        return Deny(errno.ECONNREFUSED)
    if not isinstance(resolved, Pin):
        return Deny(resolved.error)
    try:
        found = resolved.st
        if found is None:
            return Deny(errno.ENOENT)
        if not stat.S_ISSOCK(found.st_mode):
            return Deny(errno.ECONNREFUSED)
        if resolved.path in loop.allowed_sockets:
            grant = None
        else:
            permit = loop.decide("connect", resolved)
            if isinstance(permit, Deny):
                return permit
            grant = Denial("connect", resolved.path, permit.by, False, tid)
        pinned = os.open(resolved.name, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=resolved.dirfd)
        if os.fstat(pinned).st_ino != found.st_ino:
            os.close(pinned)
            return Deny(errno.EACCES)  # swapped between the check and the pin: refuse rather than chase
        return _Destination(_sockaddr_un(f"/proc/self/fd/{pinned}"), pinned, grant)
    finally:
        resolved.close()


def _read_sockaddr(loop: LoopApi, tid: int, address: int, length: int) -> bytes | Deny:
    if length > _SOCKADDR_MAX or length < 2:
        return Deny(errno.EINVAL)
    raw = loop.reader.read_exactly(tid, address, length)
    return Deny(errno.EFAULT) if raw is None else raw


def _performed(
    sock: _Socket, destination: _Destination, blocking: bool, act, passed: list[int] | None = None
) -> Decision:
    """Carry out ``act(fd, address)`` on our copy once the request is confirmed; a worker when it may
    block, so that the command's other threads are answered meanwhile. ``passed``: our copies of the
    descriptors the message carries, closed afterwards (a copy kept would hold a pipe open for ever)."""
    passed = passed if passed is not None else []

    def release() -> None:
        destination.close()
        sock.close()
        _close_all(passed)

    def run() -> Outcome:
        try:
            result = act(sock.fd, destination.address)
            return Deny(_errno()) if result < 0 else Value(result, destination.grant)
        finally:
            release()

    return Emulate(run, blocking=blocking, release=release)


@_on_socket_call
def on_connect(loop: LoopApi, tid: int, args: list[int], sock: _Socket) -> Decision:
    raw = _read_sockaddr(loop, tid, args[1], args[2] & 0xFFFFFFFF)
    if isinstance(raw, Deny):
        return raw
    destination = _destination(loop, tid, sock, raw, "connect", connecting=True)
    if isinstance(destination, Deny):
        return destination

    def connect(fd: int, address: bytes) -> int:
        result = LIBC.connect(fd, address, len(address))
        if destination.connected is not None:
            error = ctypes.get_errno()
            if result == 0 or error == errno.EINPROGRESS:
                destination.connected(fd)  # before the command's connect() returns
            ctypes.set_errno(error)
        return result

    return _performed(sock, destination, sock.blocking, connect)


@_on_socket_call
def on_bind(loop: LoopApi, tid: int, args: list[int], sock: _Socket) -> Decision:
    """A unix path is a created file (Landlock's make_sock decides it when it covers the parent; else the
    policy, and the supervisor binds the command's socket in the pinned directory). Everything else is
    CONTINUEd: whatever the fd turns out to be, Landlock's make_sock and TCP-bind rules (--net-block, where
    no other inet socket can exist) decide every outcome."""
    raw = _read_sockaddr(loop, tid, args[1], args[2] & 0xFFFFFFFF)
    if isinstance(raw, Deny):
        return raw
    if sock.family in _INET and loop.net_block:
        if loop.net_proxy is not None and _loopback_ephemeral(raw):
            # Domains mode: a port the kernel picks on loopback, for a socket that may never listen (listen is
            # refused) is no network: urllib3 probes IPv6 with bind [::1]:0 in every pip and requests run
            # (issue 20). Bound on our copy of the socket, as bare; any other address or port is refused.
            return _performed(sock, _Destination(None), False, lambda fd, _a: LIBC.bind(fd, raw, len(raw)))
        return Deny(errno.EACCES, Denial("bind", _inet_name(raw), _net_rule(loop), False, tid))
    if sock.family != socket.AF_UNIX or raw[2:3] in (b"\0", b""):
        return CONTINUE
    path = raw[2:].split(b"\0")[0]
    entry = (path, None)
    fast = loop.entry_fast(tid, entry, ACCESS_FS["make_sock"])
    if fast:
        return fast
    pin = loop.entry_pin(tid, entry, ACCESS_FS["make_sock"])
    if not isinstance(pin, Pin):
        return pin
    try:
        if pin.exists:
            pin.close()
            return Deny(errno.EADDRINUSE)
        permit = loop.decide("create", pin)
        address = _sockaddr_un(pin.via)
    except BaseException:
        pin.close()
        raise
    if isinstance(permit, Deny):
        pin.close()
        return permit
    if len(address) > _SUN_PATH_MAX + 2:
        pin.close()
        return Deny(errno.ENAMETOOLONG)  # the pinned form is longer than the name the command gave

    def release() -> None:
        pin.close()
        sock.close()

    def bind() -> Outcome:
        try:
            if LIBC.bind(sock.fd, address, len(address)) != 0:
                return Deny(_errno())
            return Value(0, Denial("create", permit.pin.path, permit.by))
        finally:
            release()

    return Emulate(bind, release=release)


@_on_socket_call
def on_listen(loop: LoopApi, tid: int, args: list[int], sock: _Socket) -> Decision:
    """--net-block only: listen() on an unbound inet socket binds a port by itself."""
    if sock.family in _INET:
        return Deny(errno.EACCES, Denial("bind", "network (listen)", _net_rule(loop), False, tid))
    backlog = ctypes.c_int(args[1] & 0xFFFFFFFF).value
    return _performed(sock, _Destination(None), False, lambda fd, _a: LIBC.listen(fd, backlog))


def on_socket(loop: LoopApi, trap: Trap, tid: int, args: list[int]) -> Decision:
    """--net-block only (the filter sends only inet families): TCP sockets are left to Landlock's TCP
    rules; UDP, raw, SCTP and MPTCP sockets, which Landlock cannot stop, are refused. All registers: a
    CONTINUE here cannot be raced."""
    kind, protocol = args[1] & 0xF, args[2] & 0xFFFFFFFF
    if kind == socket.SOCK_STREAM and protocol in (0, socket.IPPROTO_TCP):
        return CONTINUE
    name = {int(socket.SOCK_DGRAM): "udp", int(socket.SOCK_RAW): "raw"}.get(
        kind, "mptcp" if protocol == 262 else "socket"
    )
    return Deny(errno.EACCES, Denial("connect", f"network ({name})", _net_rule(loop), False, tid))


def on_setsockopt(loop: LoopApi, trap: Trap, tid: int, args: list[int]) -> Decision:
    """--net-block only, and only TCP_FASTOPEN_CONNECT (the filter sends nothing else): with it, a later
    write connects by itself."""
    return Deny(errno.EACCES, Denial("connect", "network (tcp fast open)", _net_rule(loop), False, tid))


@_on_socket_call
def on_sendto(loop: LoopApi, tid: int, args: list[int], sock: _Socket) -> Decision:
    flags = args[3] & 0xFFFFFFFF
    if loop.net_block and flags & MSG_FASTOPEN and sock.family in _INET:
        return Deny(errno.EACCES, Denial("connect", "network (tcp fast open)", _net_rule(loop), False, tid))
    message = _read_data(loop, tid, [(args[1], args[2])], sock)
    if isinstance(message, Deny):
        return message
    raw = _read_sockaddr(loop, tid, args[4], args[5] & 0xFFFFFFFF)
    if isinstance(raw, Deny):
        return raw
    if loop.net_block and sock.family in _INET and flags & MSG_FASTOPEN:
        return Deny(errno.EACCES, Denial("connect", _inet_name(raw), _net_rule(loop), False, tid))
    destination = _destination(loop, tid, sock, raw, "connect")
    if isinstance(destination, Deny):
        return destination
    return _performed(
        sock, destination, sock.blocking and not flags & socket.MSG_DONTWAIT, _sender(message, [], flags)
    )


@_on_socket_call
def on_sendmsg(loop: LoopApi, tid: int, args: list[int], sock: _Socket) -> Decision:
    flags = args[2] & 0xFFFFFFFF
    decision = _message(loop, tid, sock, args[1], flags)
    if isinstance(decision, Deny):
        return decision
    destination, data, fds = decision
    blocking = sock.blocking and not flags & socket.MSG_DONTWAIT
    return _performed(sock, destination, blocking, _sender(data, fds, flags), fds)


@_on_socket_call
def on_sendmmsg(loop: LoopApi, tid: int, args: list[int], sock: _Socket) -> Decision:
    """Each message as sendmsg, in order; ``msg_len`` of each sent one is written back to the target, as
    the kernel does (glibc's resolver checks it)."""
    vector, count, flags = args[1], min(args[2] & 0xFFFFFFFF, _MAX_IOV), args[3] & 0xFFFFFFFF
    prepared: list[tuple[_Destination, bytes, list[int]]] = []

    def release() -> None:
        for destination, _data, fds in prepared:
            destination.close()
            _close_all(fds)
        prepared.clear()
        sock.close()

    try:
        for index in range(count):
            decision = _message(loop, tid, sock, vector + index * _MMSGHDR_SIZE, flags)
            if isinstance(decision, Deny):
                if not prepared:
                    return decision
                break
            prepared.append(decision)
    except BaseException:
        release()
        raise

    def send_all() -> Outcome:
        sent = 0
        try:
            for index, (destination, data, fds) in enumerate(prepared):
                result = _sender(data, fds, flags)(sock.fd, destination.address)
                if result < 0:
                    if sent:
                        break
                    return Deny(_errno())
                _write_u32(tid, vector + index * _MMSGHDR_SIZE + _MSGHDR.size, result)
                sent += 1
            return Value(sent)
        finally:
            release()

    return Emulate(send_all, blocking=sock.blocking and not flags & socket.MSG_DONTWAIT, release=release)


def _message(
    loop: LoopApi, tid: int, sock: _Socket, address: int, flags: int
) -> tuple[_Destination, bytes, list[int]] | Deny:
    """A struct msghdr of the target, read once: its destination (decided), its bytes, its SCM_RIGHTS
    descriptors as ours."""
    header = loop.reader.read_exactly(tid, address, _MSGHDR.size)
    if header is None:
        return Deny(errno.EFAULT)
    name, namelen, iov, iovlen, control, controllen, _flags = _MSGHDR.unpack(header)
    if iovlen > _MAX_IOV:
        return Deny(errno.EMSGSIZE)
    vectors = loop.reader.read_exactly(tid, iov, iovlen * _IOVEC.size) if iovlen else b""
    if vectors is None:
        return Deny(errno.EFAULT)
    data = _read_data(loop, tid, list(_IOVEC.iter_unpack(vectors)), sock)
    if isinstance(data, Deny):
        return data
    raw: bytes | None = None
    if name and namelen and sock.type != socket.SOCK_STREAM:
        read = _read_sockaddr(loop, tid, name, namelen)
        if isinstance(read, Deny):
            return read
        raw = read
    if loop.net_block and sock.family in _INET and (flags & MSG_FASTOPEN or raw is not None):
        return Deny(errno.EACCES, Denial("connect", _inet_name(raw or b""), _net_rule(loop), False, tid))
    fds = _read_fds(loop, tid, control, controllen)
    if isinstance(fds, Deny):
        return fds
    try:
        destination = _destination(loop, tid, sock, raw, "connect")
    except BaseException:
        _close_all(fds)
        raise
    if isinstance(destination, Deny):
        _close_all(fds)
        return destination
    return destination, data, fds


def _read_data(loop: LoopApi, tid: int, parts: list[tuple[int, int]], sock: _Socket) -> bytes | Deny:
    total = sum(length for _base, length in parts)
    if total > MAX_SEND and sock.type != socket.SOCK_STREAM:
        return Deny(errno.EMSGSIZE)
    chunks, budget = [], MAX_SEND
    for base, length in parts:
        take = min(length, budget)
        chunk = loop.reader.read_exactly(tid, base, take) if take else b""
        if chunk is None:
            return Deny(errno.EFAULT)
        chunks.append(chunk)
        budget -= take
    return b"".join(chunks)


def _read_fds(loop: LoopApi, tid: int, control: int, length: int) -> list[int] | Deny:
    """SCM_RIGHTS descriptors named in the control data, as our copies (the same open files)."""
    if not length:
        return []
    raw = loop.reader.read_exactly(tid, control, min(length, _MAX_CONTROL))
    if raw is None:
        return Deny(errno.EFAULT)
    fds: list[int] = []
    offset = 0
    while offset + _CMSGHDR.size <= len(raw):
        size, level, kind = _CMSGHDR.unpack_from(raw, offset)
        if size < _CMSGHDR.size or offset + size > len(raw):
            break
        if level != socket.SOL_SOCKET or kind != socket.SCM_RIGHTS:
            _close_all(fds)
            return Deny(errno.EINVAL)  # only descriptors can be passed on the command's behalf
        payload = raw[offset + _CMSGHDR.size : offset + size]
        for (target,) in struct.iter_unpack("i", payload[: len(payload) - len(payload) % 4]):
            try:
                fds.append(pidfd_getfd(tid, target))
            except OSError:
                _close_all(fds)
                return Deny(errno.EBADF)
        offset += (size + 7) & ~7
    return fds


def _close_all(fds: list[int]) -> None:
    while fds:
        os.close(fds.pop())


def _sender(data: bytes, fds: list[int], flags: int):
    """sendmsg(2) on our copy: the bytes read once, our copies of the passed fds, the decided address."""

    def send(fd: int, address: bytes | None) -> int:
        buffer = ctypes.create_string_buffer(data, len(data))
        iov = IoVec(ctypes.addressof(buffer), len(data))
        msg = MsgHdr()
        if address is not None:
            name = ctypes.create_string_buffer(address, len(address))
            msg.name, msg.namelen = ctypes.addressof(name), len(address)
        msg.iov, msg.iovlen = ctypes.addressof(iov), 1
        if fds:
            payload = struct.pack(f"{len(fds)}i", *fds)
            space = _CMSGHDR.size + ((len(payload) + 7) & ~7)
            control = ctypes.create_string_buffer(space)
            struct.pack_into(
                "=Qii", control, 0, _CMSGHDR.size + len(payload), socket.SOL_SOCKET, socket.SCM_RIGHTS
            )
            ctypes.memmove(ctypes.addressof(control) + _CMSGHDR.size, payload, len(payload))
            msg.control, msg.controllen = ctypes.addressof(control), space
        return LIBC.sendmsg(fd, ctypes.byref(msg), flags)

    return send


def _write_u32(tid: int, address: int, value: int) -> None:
    data = ctypes.create_string_buffer(struct.pack("=I", value), 4)
    local = IoVec(ctypes.addressof(data), 4)
    remote = IoVec(address, 4)
    LIBC.process_vm_writev(
        tid, ctypes.byref(local), ctypes.c_ulong(1), ctypes.byref(remote), ctypes.c_ulong(1), 0
    )
