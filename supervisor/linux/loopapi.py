"""What a handler outside ``notify.py`` may ask of the notify loop that calls it (issue 22: the socket
handlers and undo's recorder used the loop's private steps, and ``sockets`` imported ``notify`` back).

``NotifyLoop`` is the one implementation; a handler receives it as a ``LoopApi`` and reaches the pipeline
through these steps only, so each still goes one way (``notify``'s docstring): a path read once
(``read``), the Landlock fast path (``entry_fast``, and ``lexical`` for the cheap checks), resolved once and
pinned (``entry_pin``), decided on the pin (``decide``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from nono_supervisor.linux.decisions import Continue, Deny
    from nono_supervisor.linux.emulate import Permit
    from nono_supervisor.linux.resolve import Pin, Reader
    from nono_supervisor.netproxy import NetClient
    from nono_supervisor.undo import CommandLog

__all__ = ["Entry", "LoopApi"]

Entry = tuple[bytes, "int | None"]  # a directory-entry argument as read: (path bytes, dirfd argument or None)


class LoopApi(Protocol):
    """The loop's steps a handler may use, and what it knows of its command."""

    net_block: bool  # no inet socket may reach anything but the proxy (``--net-block``, domains mode)
    net_proxy: NetClient | None  # domains mode: the proxy's handle for this command
    allowed_sockets: frozenset[str]  # the supervisor's own socket (nested routing)
    undo: CommandLog | None  # paths recorded before a call may change them

    @property
    def reader(self) -> Reader: ...

    def read(self, tid: int, address: int) -> bytes | Deny:
        """The string at ``address`` in ``tid``'s memory, read once per notification: a second read of the
        same address (undo's recorder, then the handler) returns the same bytes."""
        ...

    def lexical(self, tid: int, dirfd: int | None, raw: bytes) -> str | None:
        """``raw`` made absolute against ``tid``'s cwd or ``dirfd``, unresolved (None: a magic /proc name)."""
        ...

    def decide(
        self, op: str, pin: Pin, baseline: bool = False, making_dir: bool = False, shm: bool = False
    ) -> Permit | Deny:
        """The policy's answer (and the human's) for ``op`` on what ``pin`` holds."""
        ...

    def entry_fast(self, tid: int, entry: Entry, needed: int) -> Continue | None:
        """CONTINUE when the Landlock baseline grants ``needed`` on the entry's parent, as read."""
        ...

    def entry_pin(self, tid: int, entry: Entry, needed: int | None) -> Pin | Continue | Deny:
        """The entry pinned (its last component not followed), or CONTINUE once resolved."""
        ...

    def drain_for(self, *paths: str) -> None:
        """Before ``paths`` are recorded for undo: what the C fast path queued of them, inside them or above
        them is recorded first (undo replays a command's records backwards)."""
        ...
