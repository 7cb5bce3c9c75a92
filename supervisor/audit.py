"""The audit log: one JSON object per line, appended; every decision and every command.

Writing it never raises: it is called from notify threads, and a notify thread that dies closes its
listener, so every trapped syscall of that command tree would fail with ENOSYS. A failure is said once
on the supervisor's stderr, and the records lost meanwhile are counted in the log once it works again.
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

__all__ = ["AuditLog"]


class AuditLog:
    def __init__(self, path: Path, session: str) -> None:
        self.path = path
        self.session = session
        self._lock = threading.Lock()
        self._lost = 0  # records not written since the last failure was reported
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)

    def write(self, **fields: Any) -> bool:
        """Append one record; False (never an exception) if it could not be written, so a caller may deny."""
        now = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        try:
            line = self._line({"time": now, "session": self.session, **fields})
        except Exception as e:  # noqa: BLE001 - a field that is not JSON: a bug, not worth a notify thread
            line, problem = None, f"unrecordable record: {e}"
        with self._lock:
            if line is not None:
                if self._lost:  # say in the log itself what it is missing
                    gap = {"time": now, "session": self.session, "event": "audit-lost", "records": self._lost}
                    line = self._line(gap) + line
                try:
                    self._append(line)
                except OSError as e:
                    problem = e.strerror or str(e)
                else:
                    self._lost = 0
                    return True
            self._lost += 1
            if self._lost == 1:
                _say(f"audit log {self.path}: {problem}; not recording until it is writable again")
            return False

    @staticmethod
    def _line(record: dict[str, Any]) -> bytes:
        return (json.dumps(record, separators=(",", ":")) + "\n").encode()

    def _append(self, line: bytes) -> None:
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            if os.write(fd, line) != len(line):
                raise OSError(0, "short write (disk full?)")
        finally:
            os.close(fd)


def _say(text: str) -> None:
    try:
        print(f"nono-supervisor: {text}", file=sys.stderr, flush=True)
    except Exception:  # noqa: BLE001 - a closed or broken stderr must not make an audit write raise
        pass
