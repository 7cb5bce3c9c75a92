"""The supervisor's own terminal: a guard that always gives it back in the mode it was found in."""

from __future__ import annotations

import termios
import tty
from types import TracebackType

__all__ = ["TtyGuard"]


class TtyGuard:
    """Raw mode for the duration of a ``with`` block; the saved mode is restored on every exit path."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._saved: list | None = None

    def __enter__(self) -> TtyGuard:
        self._saved = termios.tcgetattr(self.fd)
        tty.setraw(self.fd, termios.TCSANOW)
        return self

    def restore(self) -> None:
        if self._saved is not None:
            termios.tcsetattr(self.fd, termios.TCSADRAIN, self._saved)

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.restore()
