"""What one command was denied (and granted): to the audit log as it happens, to its stderr at the end."""

from __future__ import annotations

import os
import threading

from supervisor.access import flag_for
from supervisor.audit import AuditLog
from supervisor.policy import Policy

__all__ = ["CommandReport"]


class CommandReport:
    """Collects one command's decisions; ``lines()`` are the ``nono: denied`` lines for its stderr."""

    def __init__(self, audit: AuditLog, policy: Policy, command: str, argv: list[str], cwd: str) -> None:
        self.audit = audit
        self.policy = policy
        self.command = command
        self.argv = argv
        self.cwd = cwd
        self.pid = 0
        self._denials: dict[tuple[str, str], tuple[str, bool]] = {}
        self._lock = threading.Lock()

    def record(self, decision: str, what) -> None:
        """``decision`` is ``deny`` or ``grant``; ``what`` has ``op``, ``path``, ``rule``, ``is_dir``."""
        self.audit.write(
            command=self.command,
            argv=self.argv,
            cwd=self.cwd,
            pid=self.pid,
            op=what.op,
            path=what.path,
            decision=decision,
            rule=what.rule,
            by="policy",
        )
        if decision == "deny":
            with self._lock:
                self._denials.setdefault((what.op, what.path), (what.rule, what.is_dir))

    def lines(self) -> list[str]:
        """One line per distinct (operation, path), paths under $HOME with ``~`` (CONTRACT)."""
        with self._lock:
            items = list(self._denials.items())
        out = []
        for (op, path), (rule, is_dir) in items:
            shown = self.policy.display(path)
            out.append(f"nono: denied {op} {shown} [{rule}]; to allow: {flag_for(op, shown, is_dir)}")
        return out

    def write_to(self, fd: int) -> None:
        text = "".join(line + "\n" for line in self.lines())
        if text:
            try:
                os.write(fd, text.encode(errors="replace"))
            except OSError:
                pass  # the command's stderr is gone; the audit log has it all
