"""The audit log: one JSON object per line, appended; every decision and every command.

Writing it never raises: it is called from notify threads, and a notify thread that dies closes its
listener, so every trapped syscall of that command tree would fail with ENOSYS. A failure is said once
on the supervisor's stderr, and the records lost meanwhile are counted in the log once it works again.

Every line of the file is a whole JSON object, whatever happens to the disk (issue 23, finding 4: a short
write on a full disk stayed in the file and the next record was glued onto it, so the ``audit-lost`` count
could not be read). Each append holds an exclusive ``flock`` on the file (several supervisors share it):
a short write is truncated back to where the record began, and a file that does not end in a newline (a
hand edit, a writer of an older version) gets one before the next record. A directory that disappears
(``rm -rf ~/.local/state``) is created again at the next record. The file is rotated once it would grow
past ``max_bytes``: ``audit.jsonl`` becomes ``audit.jsonl.1``, and so on up to ``ROTATED_KEPT`` files.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

from nono_supervisor.errors import SandboxError

__all__ = ["AuditLog", "MAX_BYTES", "ROTATED_KEPT", "log_files"]

# The size at which the log is rotated, and how many rotated files are kept: at most 4 x 64 MiB on disk.
# A record is about 300 bytes and a command writes three or more (start, its decisions, exit), so one file
# holds the last 70,000 commands or so: weeks of an agent's work, and `log` streams it in seconds.
MAX_BYTES = 64 << 20
ROTATED_KEPT = 3
# Two supervisors rotating at once: after a rename the file is opened again; this bounds the retries.
_REOPENS = 4


def log_files(path: Path) -> list[Path]:
    """The log's files, oldest first: the rotated ones (``PATH.3`` ... ``PATH.1``), then ``PATH`` itself."""
    return [_rotated(path, n) for n in range(ROTATED_KEPT, 0, -1)] + [path]


def _rotated(path: Path, n: int) -> Path:
    return path.with_name(f"{path.name}.{n}")


class AuditLog:
    def __init__(self, path: Path, session: str, max_bytes: int = MAX_BYTES) -> None:
        self.path = path
        self.session = session
        self.max_bytes = max_bytes  # 0: never rotated
        self._lock = threading.Lock()
        self._lost = 0  # records not written since the last failure was reported
        try:  # XDG_STATE_HOME a file, a read-only home, a directory at PATH: nothing starts unrecorded
            self._make_dir()
            os.close(self._open())
        except OSError as e:
            raise SandboxError(f"audit log {path}: cannot write it: {e.strerror}") from None

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

    def _make_dir(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)

    def _open(self) -> int:
        # Read and write: the last byte is read back (pread) to see whether the file ends a line.
        flags = os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW
        try:
            return os.open(self.path, flags, 0o600)
        except FileNotFoundError:
            if self.path.parent.is_dir():
                raise
            self._make_dir()  # deleted under a running session: every later record would be lost
            _say(f"audit log {self.path}: its directory was gone; created it again")
            return os.open(self.path, flags, 0o600)

    def _append(self, line: bytes) -> None:
        """Write ``line`` whole at the end of the current file, or leave the file as it was (OSError)."""
        for _ in range(_REOPENS):
            fd = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)  # released by the close
                st = os.fstat(fd)
                try:
                    current = os.lstat(self.path)
                except FileNotFoundError:
                    current = None
                if current is None or (current.st_dev, current.st_ino) != (st.st_dev, st.st_ino):
                    continue  # another supervisor rotated it (or deleted it) while we waited for the lock
                end = st.st_size
                if end and os.pread(fd, 1, end - 1) != b"\n":
                    line = b"\n" + line  # an unfinished line someone else left: ours starts on a new one
                if self.max_bytes and end and end + len(line) > self.max_bytes:
                    self._rotate()
                    continue  # the record goes into the new, empty file
                _write_whole(fd, line, end)
                return
            finally:
                os.close(fd)
        raise OSError(errno.EAGAIN, "the log kept being rotated by another supervisor")

    def _rotate(self) -> None:
        """Shift ``PATH.N`` to ``PATH.N+1`` (the oldest is replaced) and ``PATH`` to ``PATH.1``; the caller
        holds the lock of ``PATH``, and writers that wait for it see that the name has moved on."""
        for n in range(ROTATED_KEPT - 1, 0, -1):
            try:
                os.rename(_rotated(self.path, n), _rotated(self.path, n + 1))
            except FileNotFoundError:
                pass
        os.rename(self.path, _rotated(self.path, 1))


def _write_whole(fd: int, data: bytes, end: int) -> None:
    """All of ``data`` appended, or the file cut back to ``end`` (its size before) and OSError."""
    view = memoryview(data)
    try:
        while view:
            written = os.write(fd, view)
            if written == 0:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            view = view[written:]
    except OSError:
        try:
            os.ftruncate(fd, end)  # a short write on a full disk: no half record stays in the file
        except OSError:
            pass
        raise


def _say(text: str) -> None:
    try:
        print(f"nono-supervisor: {text}", file=sys.stderr, flush=True)
    except Exception:  # noqa: BLE001 - a closed or broken stderr must not make an audit write raise
        pass
