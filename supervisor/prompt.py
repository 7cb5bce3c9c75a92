"""Asking the human: the supervisor's own terminal, one question at a time.

Answers come only from the terminal the supervisor was started on (DESIGN invariant 5): never from the
agent's pty, the socket or any file. While a question is up, the agent proxy is paused (``pause``) so that
the human's keystrokes reach the question and not the agent; the terminal mode is restored on every path.
"""

from __future__ import annotations

import contextlib
import os
import select
import termios
import threading
import time
import tty
from collections.abc import Callable
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass
from types import TracebackType

__all__ = ["TtyGuard", "Question", "Prompter", "ANSWERS"]

ANSWERS = {"o": "once", "s": "session", "a": "always", "d": "deny"}
_CTRL_C, _CTRL_D, _ENTER = b"\x03", b"\x04", (b"\r", b"\n")
_POLL_ALIVE_SECONDS = 0.5  # how often a question checks that its command still waits for it


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


@dataclass(frozen=True)
class Question:
    command: str  # the command line, as the user would recognise it
    op: str
    path: str  # as displayed (~ for $HOME)
    rule: str


class Prompter:
    """Puts one question at a time to the human at ``fd`` (the supervisor's terminal)."""

    def __init__(
        self,
        fd: int,
        timeout: float,
        pause: Callable[[], ContextManager[object]] | None = None,
        out: int = -1,
    ) -> None:
        self.fd = fd
        self.out = fd if out < 0 else out
        self.timeout = timeout
        self._pause = pause or contextlib.nullcontext
        self._lock = threading.Lock()

    @classmethod
    def for_terminal(cls, timeout: float, pause: Callable[[], ContextManager[object]] | None = None):
        """A prompter on this process's terminal, or None when there is none (no question can be asked)."""
        if not (os.isatty(0) and os.isatty(1)):
            return None
        return cls(0, timeout, pause, out=1)

    def ask(
        self,
        question: Question,
        already: Callable[[], str | None] = lambda: None,
        alive: Callable[[], bool] = lambda: True,
    ) -> str:
        """``once``, ``session``, ``always`` or ``deny``. Questions queue; ``already()`` is asked again once
        this one's turn comes, so an answer given meanwhile (a session grant of the same path) is reused."""
        with self._lock:
            earlier = already()
            if earlier is not None:
                return earlier
            with self._pause(), TtyGuard(self.fd):
                return self._ask(question, alive)

    def _ask(self, q: Question, alive: Callable[[], bool]) -> str:
        text = (
            f"\r\n\x1b[1mnono:\x1b[0m {q.command!r} wants to {q.op} {q.path} [{q.rule}]\r\n"
            f"      [o]nce  [s]ession  [a]lways  [d]eny (default deny, {self.timeout:.0f}s) ? "
        )
        os.write(self.out, text.encode(errors="replace"))
        answer = self._read_key(alive)
        os.write(self.out, f"{answer}\r\n".encode())
        return answer

    def _read_key(self, alive: Callable[[], bool]) -> str:
        deadline = time.monotonic() + self.timeout
        termios.tcflush(self.fd, termios.TCIFLUSH)  # type-ahead meant for the agent is not an answer
        while (left := deadline - time.monotonic()) > 0:
            readable, _, _ = select.select([self.fd], [], [], min(left, _POLL_ALIVE_SECONDS))
            if not readable:
                if not alive():
                    return "deny"  # nobody is waiting for this answer any more
                continue
            key = os.read(self.fd, 1)
            if not key or key in (_CTRL_C, _CTRL_D) or key in _ENTER:
                return "deny"
            answer = ANSWERS.get(key.decode(errors="replace").lower())
            if answer:
                return answer
        return "deny"
