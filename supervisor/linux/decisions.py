"""The answers a handler can give a trapped syscall, as values (only ``NotifyLoop._respond`` acts on them).

- ``CONTINUE``: the kernel runs the syscall itself under the command's Landlock domain. Built only by
  ``NotifyLoop._continue``, which checks that the Landlock baseline grants what the syscall needs
  (invariant 1): a path swapped in memory after the check then reaches nothing Landlock does not allow.
- ``Deny``: an errno; with a ``Denial`` when it is a policy decision to report.
- ``Value`` / ``Inject``: the supervisor did it (a result, or an fd it opened, injected with ADDFD+SEND).
- ``Emulate``: do it, but only once ``NOTIF_ID_VALID`` confirms the request is still the one that was
  read and checked (invariant 3); ``blocking`` ones (a connect on a blocking socket) run on a worker so
  that the command's other threads are still answered meanwhile.

A question for the human is not one of these: it is asked while the handler decides (``Checker.decide``),
and the thread asking it stops serving the loop first (``NotifyLoop._hold``), so the command's other
syscalls are answered while this one is held; the answer then becomes one of the decisions above, sent
by ``_respond`` after NOTIF_ID_VALID like any other.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["CONTINUE", "Continue", "Deny", "Value", "Inject", "Emulate", "Denial", "Decision", "Outcome"]


class Continue:
    __slots__ = ()


CONTINUE = Continue()


@dataclass(frozen=True)
class Denial:
    """One (operation, path) decision worth reporting: a denial, or a grant the supervisor carried out."""

    op: str
    path: str
    rule: str
    is_dir: bool = False
    pid: int = 0  # the thread that asked


@dataclass(frozen=True)
class Deny:
    error: int
    denial: Denial | None = None  # set when this is a policy decision to report


@dataclass(frozen=True)
class Value:
    """The supervisor did it; the syscall returns ``value``."""

    value: int
    grant: Denial | None = None


@dataclass(frozen=True)
class Inject:
    """The supervisor opened ``fd``; it is injected into the target as the syscall's result."""

    fd: int
    cloexec: bool
    grant: Denial | None = None
    recorded: str = "grant"  # "deny": a stand-in for what was denied (a shell's start-up file, empty)


@dataclass(frozen=True)
class Emulate:
    """Carry out ``act`` (which returns the final decision) once the request is confirmed still valid."""

    act: Callable[[], Outcome]
    blocking: bool = False
    release: Callable[[], None] = lambda: None  # frees what the handler pinned, whether or not it ran


Outcome = Continue | Deny | Value | Inject  # what the kernel is answered (an Emulate's act gives one)
Decision = Outcome | Emulate
