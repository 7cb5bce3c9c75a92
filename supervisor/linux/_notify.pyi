"""Types of the C extension ``_notify.c`` for the type checker (issue 22): what ``landlock.py`` uses of it,
typed; the rest (``Loop``, used by ``notify.py``) is untyped until ``notify.py`` is checked."""

from typing import Any

class Rights:
    """``RightsIndex``'s rules for the C fast path: (path, rights) rules, the handled rights, the aliases."""

    def __init__(
        self, rules: list[tuple[bytes, int]], handled: int, aliases: list[tuple[bytes, bytes]] = ..., /
    ) -> None: ...
    def allows(self, path: bytes, needed: int, /) -> bool: ...
    def dealias(self, path: bytes, /) -> bytes: ...

class Stamps:
    """``NotedFs``' notes: each looked-up path's identity (None: missing), each listed directory's stamp."""

    def __init__(
        self,
        identities: list[tuple[bytes, tuple[int, int, int, bytes] | None]],
        listings: list[tuple[bytes, tuple[int, int, int, int] | None]],
        /,
    ) -> None: ...
    def valid(self) -> bool: ...

def __getattr__(name: str) -> Any: ...
