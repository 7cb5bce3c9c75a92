"""Asking the human: the supervisor's own terminal, one question at a time, fairly queued.

Answers come only from the terminal the supervisor was started on (DESIGN invariant 5), and only a
deliberate one counts (invariant 9): whatever arrives within ``GUARD_SECONDS`` of a question being drawn is
discarded (the input is flushed again at its end), escape sequences are dropped whole (terminal replies
hold letters: ``answer``), and an answer is one letter and Enter. ``always`` on a path of a deny
group or ``--deny`` asks a second, different confirmation: the word ``always``.

While a question is on screen (and only then), every proxy of the terminal that lent it (``lend``) is
paused, so that the human's keys reach the question and nothing else; the terminal mode is restored on
every path. Every string shown is escaped (``shown``): a file name cannot redraw the question.
"""

from __future__ import annotations

import collections
import contextlib
import os
import select
import termios
import threading
import time
import tty
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager as ContextManager
from dataclasses import dataclass
from types import TracebackType

from nono_supervisor.terminal.answer import ANSWERS, CANCEL, NEED_DATA, AnswerReader, Line, interpret

__all__ = [
    "TtyGuard",
    "Question",
    "Prompter",
    "ANSWERS",
    "GRANTING",
    "TIMED_OUT",
    "WITHDRAWN",
    "GUARD_SECONDS",
    "CONFIRM_WORD",
    "shown",
]

# Timing. The guard window: terminal replies arrive within 2 ms of a query on a local terminal (measured
# under tmux 3.3a: DA1, DA2, XTVERSION, median 0.2 ms, max 1.9 ms) and within one round trip over ssh; a
# human needs longer than this to read a three-line question before typing. Replies later than the window
# are still dropped whole by the parser; the window is for type-ahead and replies split by the flush.
GUARD_SECONDS = 0.4
IDLE_SECONDS = 0.3  # quiet after which an unfinished short sequence (a lone Escape key) is dropped
_POLL_ALIVE_SECONDS = 0.5  # how often a question checks that its command still waits for it

CONFIRM_WORD = "always"
GRANTING = ("once", "session", "always")
TIMED_OUT = "timeout"  # no answer within the timeout, or no turn on screen within the bounded wait
WITHDRAWN = "withdrawn"  # the syscall that asked went away (the command died) before an answer

_ENDINGS = {"deny": "deny", TIMED_OUT: "no answer: timed out", WITHDRAWN: "withdrawn: the command is gone"}
_CONFIRMED_RULES = ("--deny",)  # besides every "group:..." rule: always needs the word


def shown(text: str) -> str:
    """``text`` safe to print: control characters (C0, DEL, C1, ESC, CR), bidi overrides and isolates,
    other invisible and non-printable characters as ``\\xNN``/``\\uNNNN``; undecodable bytes (surrogate
    escapes) as ``\\xNN``; a backslash doubled, so that what is shown is unambiguous."""
    out = []
    for ch in text:
        code = ord(ch)
        if ch == "\\":
            out.append("\\\\")
        elif 0xDC80 <= code <= 0xDCFF:  # os.fsdecode's surrogateescape: the original byte
            out.append(f"\\x{code - 0xDC00:02x}")
        elif ch == " " or (ch.isprintable() and code < 0x80) or (code >= 0xA0 and ch.isprintable()):
            out.append(ch)
        elif code < 0x100:
            out.append(f"\\x{code:02x}")
        elif code < 0x10000:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    return "".join(out)


class TtyGuard:
    """Raw mode for the duration of a ``with`` block; the saved mode is restored on every exit path.

    Holders of one terminal share it (the agent's proxy, a question, a command's proxy under ``serve``): the
    first saves the mode and sets raw, the last restores it, in whatever order they leave."""

    _lock = threading.Lock()
    _held: dict[int, list] = {}  # st_rdev -> [holders, saved mode, fd]

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._key: int | None = None

    def __enter__(self) -> TtyGuard:
        key = os.fstat(self.fd).st_rdev
        with self._lock:
            entry = self._held.get(key)
            if entry is None:
                saved = termios.tcgetattr(self.fd)
                tty.setraw(self.fd, termios.TCSANOW)
                self._held[key] = [1, saved, self.fd]
            else:
                entry[0] += 1
            self._key = key
        return self

    def restore(self) -> None:
        with self._lock:
            key, self._key = self._key, None
            entry = self._held.get(key) if key is not None else None
            if entry is None:
                return
            entry[0] -= 1
            if entry[0] == 0:
                del self._held[key]
                try:
                    termios.tcsetattr(self.fd, termios.TCSADRAIN, entry[1])
                except termios.error:
                    pass  # the terminal is gone

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.restore()

    @classmethod
    def release_all(cls) -> None:
        """Every terminal still held gets its saved mode back: the supervisor is ending (a signal to
        ``run``), and a question's thread that still holds the terminal may not get to leave its block
        before the process exits (issue 23, finding 3). A holder that leaves later restores nothing."""
        with cls._lock:
            held = list(cls._held.values())
            cls._held.clear()
            for _holders, saved, fd in held:
                try:
                    termios.tcsetattr(fd, termios.TCSADRAIN, saved)
                except termios.error:
                    pass  # the terminal is gone (SIGHUP: the window was closed)


@dataclass(frozen=True)
class Question:
    op: str
    path: str  # as displayed (~ for $HOME)
    rule: str
    program: str = ""  # the executable that asked (basename of /proc/TID/exe), "" when unknown
    pid: int = 0
    exe: str = ""  # its full path
    argv: str = ""  # its command line (/proc/PID/cmdline)
    command: str = ""  # the routed command it belongs to ("" for the agent's own syscalls)
    rerun: bool = False  # after the fact: a grant runs the whole command again

    @property
    def needs_confirmation(self) -> bool:
        """``always`` here widens every later session's sandbox over a deliberate deny rule."""
        return self.rule.startswith("group:") or self.rule in _CONFIRMED_RULES

    def text(self, timeout: float, waiting: int = 0) -> str:
        if self.program:
            who = f"{shown(self.program)} (pid {self.pid})"
        else:
            who = shown(self.command) or "a command"
        lines = [f"\x1b[1mnono:\x1b[0m {who} wants to {self.op} {shown(self.path)} [{shown(self.rule)}]"]
        if self.exe or self.argv:
            program = shown(self.exe or self.program)
            lines.append(f"      program: {program}   command line: {shown(self.argv)}")
        if self.command and self.program:
            lines.append(f"      routed command: {shown(self.command)}")
        if self.rerun:
            lines.append(
                "      a grant runs the whole command again: what it did before the denial happens twice"
            )
        more = f"; {waiting} more waiting" if waiting else ""
        lines.append(
            f"      [o]nce  [s]ession  [a]lways  [d]eny: type a letter and Enter "
            f"(Enter alone: deny; {timeout:.0f}s{more}) ? "
        )
        return "\r\n" + "\r\n".join(lines)


class _Ticket:
    __slots__ = ("asked",)

    def __init__(self) -> None:
        self.asked = time.monotonic()


class Prompter:
    """Puts one question at a time to the human at ``fd`` (the supervisor's terminal).

    Questions queue in arrival order, and the queue is fair and bounded: a question's ``timeout`` runs
    from when it is drawn, but while another question waits, the one on screen ends (timed out) ``share``
    seconds (default: half the timeout) after that one began waiting, and never sooner than ``share``
    after it was drawn; so the next question reaches the screen within ``share`` of being asked. A question
    that waits longer than ``wait`` (default: the timeout) without reaching the screen, behind several, is
    denied as timed out. Nothing holds a syscall for more than ``wait`` + ``timeout``."""

    def __init__(
        self,
        fd: int,
        timeout: float,
        pause: Callable[[], ContextManager[object]] | None = None,
        out: int = -1,
        wait: float | None = None,
        share: float | None = None,
    ) -> None:
        self.fd = fd
        self.out = fd if out < 0 else out
        self.timeout = timeout
        self.wait = timeout if wait is None else wait
        self.share = timeout / 2 if share is None else share
        self._pausers: list[Callable[[], ContextManager[object]]] = [pause] if pause else []
        self._cond = threading.Condition()
        self._queue: collections.deque[_Ticket] = collections.deque()
        self._on_screen = False

    @classmethod
    def for_terminal(cls, timeout: float, pause: Callable[[], ContextManager[object]] | None = None):
        """A prompter on this process's terminal, or None when there is none (no question can be asked)."""
        if not (os.isatty(0) and os.isatty(1)):
            return None
        return cls(0, timeout, pause, out=1)

    @contextlib.contextmanager
    def lend(self, pause: Callable[[], ContextManager[object]]) -> Iterator[None]:
        """A proxy of this terminal (a pty the supervisor copies to it) is paused by every question asked
        inside this block."""
        with self._cond:
            self._pausers.append(pause)
        try:
            yield
        finally:
            with self._cond:
                self._pausers.remove(pause)

    @contextlib.contextmanager
    def _paused(self) -> Iterator[None]:
        with self._cond:
            pausers = list(self._pausers)
        with contextlib.ExitStack() as stack:
            for pause in pausers:
                stack.enter_context(pause())
            yield

    def ask(
        self,
        question: Question,
        already: Callable[[], str | None] = lambda: None,
        alive: Callable[[], bool] = lambda: True,
    ) -> str:
        """``once``, ``session``, ``always``, ``deny``, ``timeout`` or ``withdrawn``. ``already()`` is asked
        again once this question's turn comes, so an answer given meanwhile (a session grant of the same
        path) is reused."""
        ticket = _Ticket()
        with self._cond:
            self._queue.append(ticket)
            self._cond.notify_all()  # the question on screen learns that one is waiting
            try:
                while self._on_screen or self._queue[0] is not ticket:
                    left = ticket.asked + self.wait - time.monotonic()
                    if left <= 0:
                        return TIMED_OUT
                    self._cond.wait(min(left, _POLL_ALIVE_SECONDS))
                    if not alive():
                        return WITHDRAWN
                self._on_screen = True
                waiting = len(self._queue) - 1
            finally:
                if not self._on_screen or self._queue[0] is not ticket:
                    self._queue.remove(ticket)
                    self._cond.notify_all()
        try:
            earlier = already()
            if earlier is not None:
                return earlier
            if not alive():
                return WITHDRAWN
            with self._paused(), TtyGuard(self.fd):
                return self._ask(question, alive, waiting)
        finally:
            with self._cond:
                self._queue.popleft()
                self._on_screen = False
                self._cond.notify_all()

    def _ends_at(self, deadline: float, drawn: float) -> float:
        """When the question on screen (drawn at ``drawn``, timing out at ``deadline``) ends: earlier when
        another is waiting (its fair share of the terminal)."""
        with self._cond:
            if len(self._queue) > 1:
                return min(deadline, max(drawn, self._queue[1].asked) + self.share)
        return deadline

    # -- on screen -------------------------------------------------------------------------------------------

    def _write(self, text: str) -> None:
        try:
            os.write(self.out, text.encode(errors="replace"))
        except OSError:
            pass

    def _ask(self, q: Question, alive: Callable[[], bool], waiting: int = 0) -> str:
        drawn = time.monotonic()
        own = drawn + self.timeout

        def deadline() -> float:
            return self._ends_at(own, drawn)

        prompt = q.text(self.timeout, waiting)
        while True:
            self._write(prompt)
            line = self._read_line(alive, deadline)
            if not isinstance(line, Line):
                self._write(self._ending(line, deadline() < own))
                return line
            answer = interpret(line.text)
            if answer is None:
                self._write("\r\n      not an answer: one letter (o, s, a or d), then Enter")
                prompt = "\r\n" + prompt.rsplit("\r\n", 1)[-1]
                continue
            if answer == "always" and q.needs_confirmation:
                self._write(
                    f"\r\n      {shown(q.path)} is in {shown(q.rule)}: to allow it in every later session"
                    f" too, type the word {CONFIRM_WORD} and Enter (anything else: back to the question) ? "
                )
                word = self._read_line(alive, deadline)
                if not isinstance(word, Line):
                    self._write(self._ending(word, deadline() < own))
                    return word
                if word.text.strip(" ").lower() != CONFIRM_WORD:
                    self._write("\r\n      not confirmed")
                    continue
            self._write(f"\r\n      {answer}\r\n")
            return answer

    @staticmethod
    def _ending(result: str, cut: bool) -> str:
        more = " (another question is waiting)" if cut and result == TIMED_OUT else ""
        return f"\r\n      {_ENDINGS[result]}{more}\r\n"

    def _read_line(self, alive: Callable[[], bool], ends: Callable[[], float]) -> Line | str:
        """The next line typed after the guard window: a ``Line``, or ``deny`` (Ctrl-C, Ctrl-D, the terminal
        went away), ``timeout``, ``withdrawn``."""
        reader = AnswerReader()
        guard_end = time.monotonic() + GUARD_SECONDS
        guarding = True
        last_input = 0.0
        echoed = ""
        self._flush()
        while True:
            now = time.monotonic()
            deadline = ends()
            if guarding and now >= guard_end:
                guarding = False
                self._flush()  # what arrived up to here is not an answer either
                reader.clear_line()
            if now >= deadline:
                return TIMED_OUT
            if guarding:
                wait = guard_end - now
            else:
                wait = min(deadline - now, _POLL_ALIVE_SECONDS)
                if reader.in_sequence and last_input:
                    wait = max(0.0, min(wait, last_input + IDLE_SECONDS - now))
            try:
                readable, _, _ = select.select([self.fd], [], [], wait)
            except InterruptedError:
                continue
            if not readable:
                if reader.in_sequence and last_input and time.monotonic() - last_input >= IDLE_SECONDS:
                    reader.idle()
                if not guarding and not alive():
                    return WITHDRAWN
                continue
            try:
                data = os.read(self.fd, 4096)
            except OSError:
                data = b""
            if not data:
                return "deny"  # the terminal is gone: nobody can answer
            last_input = time.monotonic()
            reader.feed(data)
            while (event := reader.next_event()) is not NEED_DATA:
                if guarding:
                    continue  # type-ahead, a reply to a query the agent sent: never an answer
                if event is CANCEL:
                    return "deny"
                assert isinstance(event, Line)
                return event
            if guarding:
                continue
            typed = shown(reader.line)
            if typed != echoed:
                if typed.startswith(echoed):
                    self._write(typed[len(echoed) :])
                else:
                    self._write("\b \b" * len(echoed) + typed)
                echoed = typed

    def _flush(self) -> None:
        try:
            termios.tcflush(self.fd, termios.TCIFLUSH)
        except termios.error:
            pass
