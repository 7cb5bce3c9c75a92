"""Frames over a Unix stream socket, with file descriptors passed as SCM_RIGHTS beside them.

Works on any socket object (``socket.socket`` in the supervisor, a bare ``_socket.socket`` in nono-shell,
which skips importing socket.py and enum to keep every command's start-up short).
"""

from __future__ import annotations

import os
import struct
from _socket import CMSG_LEN, MSG_CMSG_CLOEXEC, MSG_CTRUNC, SCM_RIGHTS, SOL_SOCKET

from nono_shell.protocol import MAX_FDS, Decoder, Message, ProtocolError, encode

__all__ = ["send", "receive", "Closed"]

_CHUNK = 65536
_FD = struct.Struct("i")


class Closed(Exception):
    """The peer closed the connection (cleanly between frames, or mid-frame: see ``truncated``)."""

    def __init__(self, truncated: bool) -> None:
        super().__init__("connection closed mid-frame" if truncated else "connection closed")
        self.truncated = truncated


def send(sock, message: Message, fds: list[int] | tuple[int, ...] = ()) -> None:
    data = encode(message)
    if fds:
        ancillary = [(SOL_SOCKET, SCM_RIGHTS, struct.pack(f"{len(fds)}i", *fds))]
        data = data[sock.sendmsg([data], ancillary) :]
    if data:
        sock.sendall(data)


def receive(sock, decoder: Decoder, fds: list[int] | None = None) -> Message:
    """The next message; descriptors that arrive on the way are appended to ``fds`` (closed if None)."""
    while True:
        message = decoder.next_message()
        if message is not None:
            return message
        data, ancillary, flags, _addr = sock.recvmsg(_CHUNK, CMSG_LEN(MAX_FDS * _FD.size), MSG_CMSG_CLOEXEC)
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
        if not data:
            raise Closed(truncated=decoder.pending > 0)
        decoder.feed(data)
