"""The human's say in one command: answers already given, and the question when there is none yet.

Scopes (CONTRACT): ``once`` is this command, ``session`` lasts until the supervisor exits (the session's
policy grows), ``always`` is also written to the grant store. Grants are looked up live (the session
watches the store: a revoke reaches a running session). A ``deny`` is remembered for the session per
(operation, path) and not asked again; a question that timed out is not asked again in the same command.
Never-grantable paths are never asked about. The denial line of the command's report says which of these
happened.

A question in flight is asked once: another call that needs the same answer (the held syscall restarted
after a signal, with a new notification id; a sibling process of the same command) waits for it, and the
question stays on screen while any of them still waits.
"""

from __future__ import annotations

import os
import shlex
import threading
from collections.abc import Callable
from typing import TypedDict

from nono_supervisor.policy.access import OPS, silent
from nono_supervisor.procfs import process_of
from nono_supervisor.terminal.prompt import GRANTING, TIMED_OUT, WITHDRAWN, Prompter, Question

__all__ = ["Consent", "asker"]

_MAX_ARGV = 300  # characters of a process's command line shown in a question

# What a command's denial line says about a denial the human had a say in.
NOTE_DENIED = "denied at the prompt; not asked again this session"
NOTE_REFUSED = "denied at the prompt earlier this session"
NOTE_TIMED_OUT = "question timed out"


class Consent:
    def __init__(
        self,
        session,
        command: str,
        command_text: str,
        prompter: Prompter | None,
        per_process: bool = False,
        routed: bool = True,
        argv: list[str] | None = None,
    ) -> None:
        self.state = session.state  # the policy state: answers given, grants, refusals
        self.audit = session.services.audit
        # For the agent, which lives as long as the session, "once" means the process that asked.
        self.per_process = per_process
        self.command = command
        self.command_text = command_text
        self.argv = list(argv) if argv is not None else [command_text]  # audit argv: always a list
        self.routed = routed  # a command routed through nono-shell (False: the agent's own syscalls)
        self.prompter = prompter  # None: answers already given still count, but nothing is asked
        self.report = None  # the CommandReport of the current run: notes on its denial lines
        self._once: set[tuple[str, str, int]] = set()
        self._refused: set[tuple[str, str, int]] = set()  # timed out in this command: not asked again
        self._asking: dict[tuple[str, str, int], _InFlight] = {}
        self._lock = threading.Lock()

    def allows(
        self,
        op: str,
        path: str,
        rule: str,
        is_dir: bool,
        alive: Callable[[], bool] = lambda: True,
        tid: int = 0,
        hold: Callable[[], None] = lambda: None,
    ) -> bool:
        """Whether the human allows ``op`` on ``path``, which the policy denied by ``rule``. ``alive()`` turns
        False when the waiting syscall is gone (the command was killed): the question is then withdrawn.
        ``hold()`` is called just before waiting for the human (the notify loop lets another thread serve the
        command's other syscalls meanwhile); answers already given never wait."""
        if rule == "never-grantable":
            return False
        key = self._key(op, path, tid)
        with self._lock:
            if key in self._once:
                return True
        if self._granted(op, path):
            return True  # a session or stored grant (now: a revoke elsewhere is seen) since this started
        if not self.askable(rule):
            return False
        if op in ("read", "exec", "connect") and not os.path.lexists(path):
            return False  # a probe for an optional file (~/.inputrc): the answer could only be ENOENT
        if self.state.refusal(op, path) is not None:
            self._note(op, path, NOTE_REFUSED)
            return False
        with self._lock:
            if key in self._refused:
                self._note(op, path, NOTE_TIMED_OUT)
                return False
        prompter = self.prompter
        if prompter is None:
            return False
        with self._lock:
            flight = self._asking.get(key)
            asking = flight is None
            if flight is None:
                flight = self._asking[key] = _InFlight()
            flight.waiting.append(alive)
        hold()
        if not asking:
            flight.answered.wait()  # bounded: the prompter ends every question (timeout, wait)
            return flight.granted
        try:
            flight.granted = self._ask(prompter, op, path, rule, is_dir, tid, flight.alive)
        finally:
            with self._lock:
                del self._asking[key]
            flight.answered.set()
        return flight.granted

    def _ask(
        self,
        prompter: Prompter,
        op: str,
        path: str,
        rule: str,
        is_dir: bool,
        tid: int,
        alive: Callable[[], bool],
    ) -> bool:
        question = Question(
            op,
            self.state.policy.display(path),
            rule,
            command=self.command_text if self.routed else "",
            **asker(tid),
        )
        reused: list[str] = []

        def already() -> str | None:  # answered meanwhile (another command asked about the same path)
            earlier = self._answered(op, path)
            if earlier is not None:
                reused.append(earlier)
            return earlier

        answer = prompter.ask(question, already=already, alive=alive)
        if reused:
            if answer in GRANTING:
                return True
            self._note(op, path, NOTE_REFUSED)
            return False
        self.record(op, path, rule, is_dir, answer, tid)
        return answer in GRANTING

    def askable(self, rule: str) -> bool:
        """Whether a denial by ``rule`` may become a question at all (never-grantable and quiet ones not)."""
        policy = self.state.policy
        return rule != "never-grantable" and rule not in policy.prompt_quiet and not silent(rule, policy)

    def asked(self, op: str, path: str) -> bool:
        """Whether the human already had a say in ``op`` on ``path`` (an after-the-fact question would be a
        second one)."""
        with self._lock:
            done = any(k[:2] == (OPS[op], path) for k in (*self._once, *self._refused))
        return done or self.state.refusal(op, path) is not None

    def _granted(self, op: str, path: str) -> bool:
        return self.state.access_index(self.state.policy).verdict(path, op).allowed

    def _answered(self, op: str, path: str) -> str | None:
        if self._granted(op, path):
            return "session"
        refused = self.state.refusal(op, path)
        return "deny" if refused is not None else None

    def _key(self, op: str, path: str, tid: int) -> tuple[str, str, int]:
        return (OPS[op], path, process_of(tid) if self.per_process else 0)

    def _note(self, op: str, path: str, note: str) -> None:
        if self.report is not None:
            self.report.note(op, path, note)

    def record(self, op: str, path: str, rule: str, is_dir: bool, answer: str, tid: int = 0) -> None:
        """Apply and log an answer (from an in-flight question or an after-the-fact one)."""
        key = self._key(op, path, tid)
        kind = "dir" if is_dir else "file"
        if answer in GRANTING:
            with self._lock:
                self._once.add(key)
        elif answer == "deny":
            self.state.refuse(op, path, answer)
            self._note(op, path, NOTE_DENIED)
        else:  # timed out or withdrawn: nobody decided; not asked again in this command
            with self._lock:
                self._refused.add(key)  # by the op's access, as it is looked up (exec asks as read)
            if answer == TIMED_OUT:
                self._note(op, path, NOTE_TIMED_OUT)
        if answer in ("session", "always"):
            self.state.add_grant(path, OPS[op], kind, persist=answer == "always", command=self.command_text)
        extra = {"reason": "timed out"} if answer == TIMED_OUT else {}
        if answer == WITHDRAWN:
            extra = {"reason": "withdrawn: the command went away"}
        self.audit.write(
            command=self.command,
            argv=self.argv,
            op=op,
            path=path,
            rule=rule,
            decision="grant" if answer in GRANTING else "deny",
            by="user",
            answer=answer,
            **extra,
        )


class _InFlight:
    """A question on screen or queued, and the calls waiting for its answer."""

    def __init__(self) -> None:
        self.waiting: list[Callable[[], bool]] = []  # each waiting call's alive()
        self.answered = threading.Event()
        self.granted = False

    def alive(self) -> bool:
        """Whether any call still waits: the first may have been interrupted by a signal and restarted."""
        return any(alive() for alive in list(self.waiting))


class Asker(TypedDict, total=False):
    """Who asked, as ``Question`` takes it."""

    program: str
    pid: int
    exe: str
    argv: str


def asker(tid: int) -> Asker:
    """Who asked, from ``/proc/TID``: the executable's name and path, the process id, its command line.
    Nothing here is trusted for a decision; the executable link is the kernel's, the command line the
    process's own (it is shown escaped, for recognition)."""
    if tid <= 0:
        return {}
    pid = process_of(tid)
    exe = ""
    try:
        exe = os.readlink(f"/proc/{tid}/exe")
    except OSError:
        pass
    name = os.path.basename(exe.removesuffix(" (deleted)")) if exe else ""
    if not name:
        try:
            with open(f"/proc/{tid}/comm", "rb") as f:
                name = os.fsdecode(f.read().rstrip(b"\n"))
        except OSError:
            return {"pid": pid}
    argv = ""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            raw = f.read(4 * _MAX_ARGV)
        argv = shlex.join(os.fsdecode(a) for a in raw.rstrip(b"\0").split(b"\0"))
    except OSError:
        pass
    if len(argv) > _MAX_ARGV:
        argv = argv[: _MAX_ARGV - 1] + "…"
    return {"program": name, "pid": pid, "exe": exe, "argv": argv}
