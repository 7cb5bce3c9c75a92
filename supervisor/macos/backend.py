"""The macOS side of the platform seam: Seatbelt (``sandbox_init``), denials read from ``log stream``.

No in-flight layer: Seatbelt answers every syscall itself, so nothing waits for a human (questions come after
the fact, ``--prompt after``), nothing is recorded before it changes (no undo), and another process's
descriptors cannot be reached (a denial is told when the command has ended). Imports on any OS and never the
Linux backend (tests/test_macos_backend.py runs it on Linux with its OS seams faked).
"""

from __future__ import annotations

import errno
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from nono_supervisor.backend import Checkup, CommandGets, Hooks, Launch
from nono_supervisor.errors import SandboxError
from nono_supervisor.macos import launch as macos_launch

if TYPE_CHECKING:
    from nono_supervisor.session import Session
from nono_supervisor.macos.launch import MacPlan
from nono_supervisor.macos.process import SandboxedProcess

__all__ = ["MacBackend", "SeatbeltSupport"]


@dataclass(frozen=True)
class SeatbeltSupport:
    native: bool  # libsandbox's sandbox_init
    fallback: str | None  # sandbox-exec
    log: str | None  # /usr/bin/log: denials are read from log stream

    def missing(self) -> str | None:
        if self.native or self.fallback:
            return None
        return "Seatbelt is unavailable (neither sandbox_init nor sandbox-exec)"


class MacBackend:
    platform = "macos"
    preload_var = "DYLD_INSERT_LIBRARIES"
    interpose_library = "libnono_interpose.dylib"  # setup.py PRELOADS
    holds_syscalls = False
    records_changes = False

    def probe(self) -> SeatbeltSupport:
        from nono_supervisor.macos.runner import load_libsandbox

        return SeatbeltSupport(
            load_libsandbox() is not None, shutil.which("sandbox-exec"), shutil.which("log")
        )

    def doctor(self) -> Checkup:
        """Seatbelt through sandbox_init (or sandbox-exec); the log stream that reports denials."""
        k = self.probe()
        native = "available" if k.native else "missing"
        lines = (
            (k.native or (None if k.fallback else False), "seatbelt sandbox_init", native),
            (bool(k.fallback) or None, "sandbox-exec fallback", k.fallback or "missing"),
            (k.log is not None or None, "log stream (denial detection)", k.log or "missing"),
        )
        return Checkup(lines, k.missing() is None)

    def enforcement(self, trap: bool) -> str:
        return (
            "Seatbelt (sandbox_init); denials from log stream once the command ends, no questions in flight"
        )

    def policy_notes(self, gets: CommandGets) -> list[str]:
        return []

    def landlock_plan(self, gets: CommandGets) -> NoReturn:
        raise SandboxError("Landlock plans are Linux's; this is darwin (try --format seatbelt)")

    def namespace_error(self, userns: bool) -> int | None:
        return None

    def compile(self, gets: CommandGets) -> MacPlan:
        return macos_launch.compile_profile(gets)

    def start(self, plan: MacPlan, launch: Launch, hooks: Hooks) -> SandboxedProcess:
        return macos_launch.start(plan, launch, hooks)

    def finish(self, process: Any) -> None:
        """Nothing to settle: the waiter completes the report before the exit is published."""

    def left_running(self) -> int:
        return 0  # no keeper holds what a command left running (macos.process): nothing to count

    def serve(self, session: Session) -> None:
        """Nothing to start: the session's log monitor starts with its first command."""

    def rename_noreplace(self, source: Path, target: Path) -> None:
        from nono_supervisor.macos.libc import rename_noreplace

        rename_noreplace(os.fsencode(source), os.fsencode(target))

    def stderr_of(self, pid: int) -> int:
        raise OSError(errno.ENOTSUP, "another process's descriptors cannot be reached here")


if TYPE_CHECKING:  # the protocol conformance, checked by mypy (.ci/types; tests/test_backend.py runs it)
    from nono_supervisor import backend as _seam

    _mac: _seam.Backend[MacPlan] = MacBackend()
    _process: type[_seam.Process] = SandboxedProcess
