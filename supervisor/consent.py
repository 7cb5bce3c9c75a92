"""The human's say in one command: answers already given, and the question when there is none yet.

Scopes (CONTRACT): ``once`` is this command, ``session`` lasts until the supervisor exits (the session's
policy grows), ``always`` is also written to the grant store. A ``deny`` is remembered for the command so
that it is not asked again. Never-grantable paths are never asked about.
"""

from __future__ import annotations

import threading
from collections.abc import Callable

from supervisor.access import OPS
from supervisor.prompt import Prompter, Question

__all__ = ["Consent"]


class Consent:
    def __init__(self, session, command: str, command_text: str, prompter: Prompter | None) -> None:
        self.session = session
        self.command = command
        self.command_text = command_text
        self.prompter = prompter  # None: answers already given still count, but nothing is asked
        self._once: set[tuple[str, str]] = set()
        self._refused: set[tuple[str, str]] = set()
        self._lock = threading.Lock()

    def grant_once(self, op: str, path: str) -> None:
        with self._lock:
            self._once.add((OPS[op], path))

    def allows(
        self, op: str, path: str, rule: str, is_dir: bool, alive: Callable[[], bool] = lambda: True
    ) -> bool:
        """Whether the human allows ``op`` on ``path``, which the policy denied by ``rule``. ``alive()`` turns
        False when the waiting syscall is gone (the command was killed): the question is then withdrawn."""
        if rule == "never-grantable":
            return False
        key = (OPS[op], path)
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
        self.record(op, path, rule, is_dir, answer)
        return answer != "deny"

    def _answered(self, op: str, path: str) -> str | None:
        return "session" if self.session.access_index(self.session.policy).verdict(path, op).allowed else None

    def record(self, op: str, path: str, rule: str, is_dir: bool, answer: str) -> None:
        """Apply and log an answer (from an in-flight question or an after-the-fact one)."""
        key = (OPS[op], path)
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
