"""What one command was denied (and granted): to the audit log as it happens, to its stderr at the end."""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass, replace

from nono_supervisor.audit import AuditLog
from nono_supervisor.policy.access import hint_for, silent
from nono_supervisor.policy.profile import Policy
from nono_supervisor.terminal.prompt import shown as escaped

__all__ = ["CommandReport", "Denied", "collapsed"]

_PROC_PID = re.compile(r"^/proc/\d+(?=/)")


def collapsed(path: str) -> str:
    """A process's /proc entry with its pid left out: ps reads /proc/PID/environ of every process, and one
    line per process (hundreds on a developer's machine) would drown what the command printed."""
    return _PROC_PID.sub("/proc/<pid>", path)


@dataclass(frozen=True)
class Denied:
    op: str
    path: str
    rule: str
    is_dir: bool


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
        self._notes: dict[tuple[str, str], str] = {}  # what the human's part was (Consent)
        self._late: list[str] = []  # why the command was stopped or guarded (late_deny)
        self._lock = threading.Lock()

    def note(self, op: str, path: str, text: str) -> None:
        """What the denial line of (op, path) adds after its rule: "question timed out", "denied at the
        prompt; not asked again this session"."""
        with self._lock:
            self._notes[(op, path)] = text

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
            key = (what.op, what.path)
            with self._lock:
                # A silent denial does not hide a later reported one of the same (op, path): the shell read
                # ~/.profile empty at start, then ``cat ~/.profile`` was denied.
                if key not in self._denials or silent(self._denials[key][0], self.policy):
                    self._denials[key] = (what.rule, what.is_dir)

    def late_deny(self, line: str, fields: dict) -> None:
        """A denied node moved into what this command's sandbox grants (``linux.latedeny``): ``line`` heads
        its report, and the audit log has the record."""
        with self._lock:
            self._late.append(line)  # first: the command is killed next, and its report written then
        self.audit.write(command=self.command, argv=self.argv, cwd=self.cwd, pid=self.pid, **fields)

    def denials(self) -> list[Denied]:
        with self._lock:
            return [Denied(op, path, rule, is_dir) for (op, path), (rule, is_dir) in self._denials.items()]

    def lines(self) -> list[str]:
        """One line per distinct (operation, path), paths under $HOME with ``~`` (CONTRACT), and one for
        the same entry of several processes' /proc (``/proc/<pid>/environ``, with their count); none for
        what is silent (``access.silent``: the audit log has it)."""
        with self._lock:
            late = list(self._late)
        groups: dict[tuple[str, str, str], list[Denied]] = {}
        for d in self.denials():
            if not silent(d.rule, self.policy):
                groups.setdefault((d.op, collapsed(d.path), d.rule), []).append(d)
        return late + [
            self._line(same[0]) if len(same) == 1 else self._line(replace(same[0], path=path), len(same))
            for (_op, path, _rule), same in groups.items()
        ]

    def _line(self, d: Denied, processes: int = 1) -> str:
        shown = escaped(self.policy.display(d.path))  # a file name must not redraw the agent's screen
        with self._lock:
            note = self._notes.get((d.op, d.path)) or (f"{processes} processes" if processes > 1 else "")
        said = f" ({note})" if note else ""
        rule = escaped(d.rule)  # it may name a path inside (a directory holding a held node: denied_below)
        return f"nono: denied {d.op} {shown} [{rule}]{said}{hint_for(d.op, shown, d.is_dir, d.rule)}"

    def tell_process(self, decision: str, what) -> None:
        """For a long-lived process (the agent): record, and write a first denial of an (op, path) straight
        to the stderr of the process that was denied, while it is still waiting for its syscall."""
        with self._lock:
            told = {
                (op, collapsed(path))
                for (op, path), (rule, _is_dir) in self._denials.items()
                if not silent(rule, self.policy)
            }
        first = decision == "deny" and (what.op, collapsed(what.path)) not in told
        first = first and not silent(what.rule, self.policy)
        self.record(decision, what)
        if not first or not what.pid:
            return
        try:
            from nono_supervisor import backend

            stderr = backend.current().stderr_of(what.pid)
        except OSError:
            return  # gone, or not ours to reach: the audit log has it
        try:
            os.write(stderr, (self._line(Denied(what.op, what.path, what.rule, what.is_dir)) + "\n").encode())
        except OSError:
            pass
        finally:
            os.close(stderr)

    def write_to(self, fd: int) -> None:
        text = "".join(line + "\n" for line in self.lines())
        if text:
            try:
                os.write(fd, text.encode(errors="replace"))
            except OSError:
                pass  # the command's stderr is gone; the audit log has it all
