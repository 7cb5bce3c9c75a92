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

from nono_supervisor.linux.loopapi import LoopApi
from nono_supervisor.linux.resolve import Pin, resolve_bytes
from nono_supervisor.linux.seccomp import Trap, arg

__all__ = ["RECORDED", "record_call"]

RECORDED = frozenset({"open", "unlink", "rmdir", "mkdir", "mknod", "symlink", "rename", "link", "truncate"})
RECORDED |= {"chmod", "utime"}
_O_WRITES = os.O_WRONLY | os.O_RDWR | os.O_TRUNC | os.O_CREAT
_O_TMPFILE = 0o20000000
_AT_SYMLINK_NOFOLLOW = 0x100
_AT_REMOVEDIR = 0x200
_RENAME_EXCHANGE = 2


def record_call(loop: LoopApi, trap: Trap, tid: int, args: list[int]) -> None:
    """Record the state of each path ``trap`` may change, before the call is answered."""
    undo = loop.undo
    if undo is None:  # the loop calls this only for a command with an undo record
        return
    targets = _targets(loop, trap, tid, args)
    for address, dirfd, follow, op in targets:
        raw = loop.read(tid, address)  # read once: the handler decides on these bytes (``LoopApi.read``)
        if not isinstance(raw, bytes):
            continue
        lexical = loop.lexical(tid, dirfd, raw)
        if lexical is None or undo.known(lexical):
            continue
        pin = resolve_bytes(tid, dirfd, raw, follow=follow)
        if isinstance(pin, Pin):
            try:
                if op == "create" and pin.exists:
                    continue  # EEXIST: nothing changes (mkdir -p in the workdir's root, answered by Python)
                loop.drain_for(lexical, pin.path)
                undo.before(
                    pin.dirfd, pin.name, pin.path, op, lexical, _destination(loop, trap, tid, args, op)
                )
            finally:
                pin.close()


def _targets(loop: LoopApi, trap: Trap, tid: int, args: list[int]) -> list[tuple[int, int | None, bool, str]]:
    """(address of the path, dirfd, follow the last symlink, operation) of what the call may change."""
    dirfd = args[trap.dirfd] if trap.dirfd is not None else None
    kind = trap.kind
    if kind == "open":
        flags = _open_flags(loop, trap, tid, args)
        if flags is None or not flags & _O_WRITES or flags & os.O_PATH or flags & _O_TMPFILE == _O_TMPFILE:
            return []
        exclusive = flags & os.O_CREAT and flags & os.O_EXCL
        return [(arg(args, trap.path), dirfd, not (flags & os.O_NOFOLLOW or exclusive), "write")]
    if kind in ("unlink", "rmdir"):
        removing_dir = kind == "rmdir" or (trap.flags is not None and args[trap.flags] & _AT_REMOVEDIR)
        return [(arg(args, trap.path), dirfd, False, "rmdir" if removing_dir else "unlink")]
    if kind in ("mkdir", "mknod", "symlink"):
        return [(arg(args, trap.path), dirfd, False, "create")]
    if kind == "rename":
        exchange = trap.flags is not None and args[trap.flags] & _RENAME_EXCHANGE
        # the destination's old file leaves the tree (its name is taken), unless the two are exchanged
        return [
            (arg(args, trap.path), dirfd, False, "rename"),
            (*_second(trap, args), False, "rename" if exchange else "replace"),
        ]
    if kind == "link":
        return [(*_second(trap, args), False, "create")]
    if kind == "truncate":
        return [(arg(args, trap.path), None, True, "write")]
    if trap.path is None or (trap.name == "utimensat" and arg(args, trap.path) == 0):
        return []  # fchmod, futimens: the descriptor was opened for writing (recorded then) or is a directory
    flags = args[trap.flags] if trap.flags is not None else 0
    return [(arg(args, trap.path), dirfd, not (trap.nofollow or flags & _AT_SYMLINK_NOFOLLOW), kind)]


def _open_flags(loop: LoopApi, trap: Trap, tid: int, args: list[int]) -> int | None:
    if trap.name == "creat":
        return os.O_CREAT | os.O_WRONLY | os.O_TRUNC
    if trap.name == "openat2":
        how = loop.reader.read_exactly(tid, args[2], 8)
        return None if how is None else int.from_bytes(how, "little")
    return arg(args, trap.flags) & 0xFFFFFFFF


def _destination(loop: LoopApi, trap: Trap, tid: int, args: list[int], op: str) -> str:
    """Where a rename moves the source (for ``changes``: renamed a -> b), as read."""
    if op != "rename":
        return ""
    address, dirfd = _second(trap, args)
    raw = loop.read(tid, address)
    if not isinstance(raw, bytes):
        return ""
    return loop.lexical(tid, dirfd, raw) or ""


def _second(trap: Trap, args: list[int]) -> tuple[int, int | None]:
    """(address of the path, dirfd) of a rename's or link's destination."""
    dirfd_at, path_at = trap.second_pair
    return args[path_at], args[dirfd_at] if dirfd_at is not None else None
