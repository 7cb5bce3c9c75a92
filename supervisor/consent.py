"""The human's say in one command: answers already given, and the question when there is none yet.

Scopes (CONTRACT): ``once`` is this command, ``session`` lasts until the supervisor exits (the session's
policy grows), ``always`` is also written to the grant store. A ``deny`` is remembered for the command so
that it is not asked again. Never-grantable paths are never asked about.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from supervisor.access import OPS
from supervisor.prompt import Prompter, Question

__all__ = ["Consent"]


class Consent:
    def __init__(
        self, session, command: str, command_text: str, prompter: Prompter | None, per_process: bool = False
    ) -> None:
        self.session = session
        # For the agent, which lives as long as the session, "once" means the process that asked.
        self.per_process = per_process
        self.command = command
        self.command_text = command_text
        self.prompter = prompter  # None: answers already given still count, but nothing is asked
        self._once: set[tuple[str, str, int]] = set()
        self._refused: set[tuple[str, str, int]] = set()
        self._lock = threading.Lock()

    def allows(
        self,
        op: str,
        path: str,
        rule: str,
        is_dir: bool,
        alive: Callable[[], bool] = lambda: True,
        tid: int = 0,
    ) -> bool:
        """Whether the human allows ``op`` on ``path``, which the policy denied by ``rule``. ``alive()`` turns
        False when the waiting syscall is gone (the command was killed): the question is then withdrawn."""
        if not self.askable(rule):
            return False
        if op in ("read", "exec", "connect") and not os.path.lexists(path):
            return False  # a probe for an optional file (~/.inputrc): the answer could only be ENOENT
        key = self._key(op, path, tid)
        with self._lock:
            if key in self._once:
                return True
            if key in self._refused:
                return False
        if self.session.access_index(self.session.policy).verdict(path, op).allowed:
            return True  # a session or stored grant made since this command started
        if self.prompter is None:
            return False
        question = Question(self.command_text, op, self.session.policy.display(path), rule)
        answer = self.prompter.ask(question, already=lambda: self._answered(op, path), alive=alive)
        self.record(op, path, rule, is_dir, answer, tid)
        return answer != "deny"

    def askable(self, rule: str) -> bool:
        """Whether a denial by ``rule`` may become a question at all (never-grantable and quiet ones not)."""
        return rule != "never-grantable" and rule not in self.session.policy.prompt_quiet

    def _answered(self, op: str, path: str) -> str | None:
        return "session" if self.session.access_index(self.session.policy).verdict(path, op).allowed else None

    def _key(self, op: str, path: str, tid: int) -> tuple[str, str, int]:
        return (OPS[op], path, _process_of(tid) if self.per_process else 0)

    def record(self, op: str, path: str, rule: str, is_dir: bool, answer: str, tid: int = 0) -> None:
        """Apply and log an answer (from an in-flight question or an after-the-fact one)."""
        key = self._key(op, path, tid)
        kind = "dir" if is_dir else "file"
        with self._lock:
            (self._refused if answer == "deny" else self._once).add(key)
        if answer in ("session", "always"):
            self.session.add_grant(path, OPS[op], kind, persist=answer == "always", command=self.command_text)
        self.session.audit.write(
            command=self.command,
            argv=[self.command_text],
            op=op,
            path=path,
            rule=rule,
            decision="deny" if answer == "deny" else "grant",
            by="user",
            answer=answer,
        )


def _process_of(tid: int) -> int:
    """The process (thread group) a thread belongs to; the tid itself if it is already gone."""
    try:
        with open(f"/proc/{tid}/status") as status:
            for line in status:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return tid
