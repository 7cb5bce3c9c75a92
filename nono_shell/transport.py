"""Frames over a Unix stream socket, with file descriptors passed as SCM_RIGHTS beside them.

Works on any socket object (``socket.socket`` in the supervisor, a bare ``_socket.socket`` in nono-shell,
which skips importing socket.py and enum to keep every command's start-up short).
"""

from __future__ import annotations

import _socket
import os
import struct
import time
from _socket import CMSG_LEN, MSG_CTRUNC, SCM_RIGHTS, SOL_SOCKET

from nono_shell.protocol import MAX_FDS, Decoder, Message, ProtocolError, encode

__all__ = [
    "send",
    "receive",
    "receive_chunk",
    "until",
    "Closed",
    "peer_credentials",
    "peer_uid",
    "SOCK_CLOEXEC",
]

_CHUNK = 65536
_FD = struct.Struct("i")
# Linux sets close-on-exec atomically; macOS has neither flag (its fds are made CLOEXEC by the caller).
SOCK_CLOEXEC = getattr(_socket, "SOCK_CLOEXEC", 0)
_MSG_CMSG_CLOEXEC = getattr(_socket, "MSG_CMSG_CLOEXEC", 0)
_UCRED = struct.Struct("3i")  # Linux struct ucred: pid, uid, gid
_XUCRED = struct.Struct("IIh")  # macOS struct xucred: version, uid, ngroups (groups follow)
_SOL_LOCAL, _LOCAL_PEERCRED = 0, 1


def peer_credentials(sock) -> tuple[int, int]:
    """(pid, uid) of the process that connected the other end of a Unix socket, from the kernel. The pid
    is 0 where the kernel does not say (macOS here, or a peer outside our pid namespace)."""
    if hasattr(_socket, "SO_PEERCRED"):
        pid, uid, _gid = _UCRED.unpack(sock.getsockopt(SOL_SOCKET, _socket.SO_PEERCRED, _UCRED.size))
        return pid, uid
    raw = sock.getsockopt(_SOL_LOCAL, _LOCAL_PEERCRED, 76)  # sizeof(struct xucred) with 16 groups
    return 0, _XUCRED.unpack_from(raw)[1]


def peer_uid(sock) -> int:
    """The uid of the process at the other end of a connected Unix socket, from the kernel."""
    return peer_credentials(sock)[1]


class Closed(Exception):
    """The peer closed the connection (cleanly between frames, or mid-frame: see ``truncated``)."""

    def __init__(self, truncated: bool) -> None:
        super().__init__("connection closed mid-frame" if truncated else "connection closed")
        self.truncated = truncated


def until(sock, deadline: float | None) -> None:
    """Bound the socket's next blocking call by ``deadline`` (time.monotonic); TimeoutError once it has
    passed. None: no bound. Each call is bounded by what is left, so a peer that takes a byte at a time
    cannot stretch the deadline."""
    if deadline is None:
        return
    left = deadline - time.monotonic()
    if left <= 0:
        raise TimeoutError("deadline passed")
    sock.settimeout(left)


def send(
    sock, message: Message, fds: list[int] | tuple[int, ...] = (), deadline: float | None = None
) -> None:
    data = encode(message)
    if fds:
        ancillary = [(SOL_SOCKET, SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))]
        until(sock, deadline)
        data = data[sock.sendmsg([data], ancillary) :]
    if data:
        until(sock, deadline)
        sock.sendall(data)  # a timeout bounds the whole of sendall


def receive(sock, decoder: Decoder, fds: list[int] | None = None, deadline: float | None = None) -> Message:
    """The next message; descriptors that arrive on the way are appended to ``fds`` (closed if None).
    ``deadline``: see ``until``."""
    while True:
        message = decoder.next_message()
        if message is not None:
            return message
        until(sock, deadline)
        data = receive_chunk(sock, fds)
        if not data:
            raise Closed(truncated=decoder.pending > 0)
        decoder.feed(data)


def receive_chunk(sock, fds: list[int] | None, size: int = _CHUNK) -> bytes:
    """One ``recvmsg`` of at most ``size`` bytes (b"" at end of stream); descriptors that came with them
    are appended to ``fds`` (closed if None). A non-blocking socket with nothing to read raises
    BlockingIOError, having taken nothing."""
    data, ancillary, flags, _addr = sock.recvmsg(size, CMSG_LEN(MAX_FDS * _FD.size), _MSG_CMSG_CLOEXEC)
    received = [
        fd
        for level, kind, payload in ancillary
        if level == SOL_SOCKET and kind == SCM_RIGHTS
        for (fd,) in _FD.iter_unpack(payload[: len(payload) - len(payload) % _FD.size])
    ]
    too_many = flags & MSG_CTRUNC or (fds is not None and len(fds) + len(received) > MAX_FDS)
    if fds is None or too_many:
        for fd in received:
            os.close(fd)
        if too_many:
            raise ProtocolError("too many file descriptors")
    else:
        fds.extend(received)
    return data
