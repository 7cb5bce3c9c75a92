"""Which paths a trapped call may change, recorded (``undo.CommandLog``) before the call is answered.

Called by ``NotifyLoop._dispatch`` for the kinds in ``RECORDED`` when the command has an undo record. The
path is read once (the bytes go into the loop's pre-read, so the handler decides on the same bytes), made
lexical for the cheap checks (outside the command's trees, already recorded), then pinned as the handler
pins it and recorded through the pin. Recording never decides anything: the handler answers as without it.

What it cannot see (README "Undo"): a path swapped by another thread between this record and the
kernel's own walk of a CONTINUEd call, and what is changed through a descriptor opened before the
command's undo record began (inherited) or without a trapped call at all (a static binary's raw
``open`` for writing is trapped like any other; an ``mmap`` of a file opened for writing is covered by
that open).
"""

from __future__ import annotations

import os

from nono_supervisor.linux.resolve import Pin, resolve_bytes
from nono_supervisor.linux.seccomp import Trap

__all__ = ["RECORDED", "record_call"]

RECORDED = frozenset({"open", "unlink", "rmdir", "mkdir", "mknod", "symlink", "rename", "link", "truncate"})
RECORDED |= {"chmod", "utime"}
_O_WRITES = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_CREAT
_O_TMPFILE = 0o20000000
_AT_SYMLINK_NOFOLLOW = 0x100
_AT_REMOVEDIR = 0x200
_RENAME_EXCHANGE = 2


def record_call(loop, trap: Trap, tid: int, args: list[int]) -> None:
    """Record the state of each path ``trap`` may change, before the call is answered."""
    targets = _targets(loop, trap, tid, args)
    for address, _dirfd, _follow, _op in targets:  # every path first: read once, the handler decides on these
        raw = loop._read(tid, address)
        if isinstance(raw, bytes) and all(where != address for where, _raw in loop._preread):
            loop._preread = (*loop._preread, (address, raw))
    for address, dirfd, follow, op in targets:
        raw = loop._read(tid, address)
        if not isinstance(raw, bytes):
            continue
        lexical = loop._lexical(tid, dirfd, raw)
        if lexical is None or loop.undo.known(lexical):
            continue
        pin = resolve_bytes(tid, dirfd, raw, follow=follow)
        if isinstance(pin, Pin):
            try:
                if op == "create" and pin.exists:
                    continue  # EEXIST: nothing changes (mkdir -p in the workdir's root, answered by Python)
                loop._drain_for(lexical, pin.path)
                loop.undo.before(
                    pin.dirfd, pin.name, pin.path, op, lexical, _destination(loop, trap, tid, args, op)
                )
            finally:
                pin.close()


def _targets(loop, trap: Trap, tid: int, args: list[int]) -> list[tuple[int, int | None, bool, str]]:
    """(address of the path, dirfd, follow the last symlink, operation) of what the call may change."""
    dirfd = args[trap.dirfd] if trap.dirfd is not None else None
    kind = trap.kind
    if kind == "open":
        flags = _open_flags(loop, trap, tid, args)
        if flags is None or not flags & _O_WRITES or flags & os.O_PATH or flags & _O_TMPFILE == _O_TMPFILE:
            return []
        exclusive = flags & os.O_CREAT and flags & os.O_EXCL
        return [(args[trap.path], dirfd, not (flags & os.O_NOFOLLOW or exclusive), "write")]
    if kind in ("unlink", "rmdir"):
        removing_dir = kind == "rmdir" or (trap.flags is not None and args[trap.flags] & _AT_REMOVEDIR)
        return [(args[trap.path], dirfd, False, "rmdir" if removing_dir else "unlink")]
    if kind in ("mkdir", "mknod", "symlink"):
        return [(args[trap.path], dirfd, False, "create")]
    if kind == "rename":
        second_dirfd = args[trap.second[0]] if trap.second[0] is not None else None
        exchange = trap.flags is not None and args[trap.flags] & _RENAME_EXCHANGE
        # the destination's old file leaves the tree (its name is taken), unless the two are exchanged
        return [
            (args[trap.path], dirfd, False, "rename"),
            (args[trap.second[1]], second_dirfd, False, "rename" if exchange else "replace"),
        ]
    if kind == "link":
        second_dirfd = args[trap.second[0]] if trap.second[0] is not None else None
        return [(args[trap.second[1]], second_dirfd, False, "create")]
    if kind == "truncate":
        return [(args[trap.path], None, True, "write")]
    if trap.path is None or (trap.name == "utimensat" and args[trap.path] == 0):
        return []  # fchmod, futimens: the descriptor was opened for writing (recorded then) or is a directory
    flags = args[trap.flags] if trap.flags is not None else 0
    return [(args[trap.path], dirfd, not (trap.nofollow or flags & _AT_SYMLINK_NOFOLLOW), kind)]


def _open_flags(loop, trap: Trap, tid: int, args: list[int]) -> int | None:
    if trap.name == "creat":
        return os.O_CREAT | os.O_WRONLY | os.O_TRUNC
    if trap.name == "openat2":
        how = loop.reader.read_exactly(tid, args[2], 8)
        return None if how is None else int.from_bytes(how, "little")
    return args[trap.flags] & 0xFFFFFFFF


def _destination(loop, trap: Trap, tid: int, args: list[int], op: str) -> str:
    """Where a rename moves the source (for ``changes``: renamed a -> b), as read."""
    if op != "rename":
        return ""
    raw = loop._read(tid, args[trap.second[1]])
    if not isinstance(raw, bytes):
        return ""
    second_dirfd = args[trap.second[0]] if trap.second[0] is not None else None
    return loop._lexical(tid, second_dirfd, raw) or ""
