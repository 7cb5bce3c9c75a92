"""One supervisor session: its id and three parts, each a module of its own, given at construction.

- ``state.PolicyState``: the policy state (what commands and the agent may do, the human's answers, the
  grant store as it is now, the access indexes); it never reaches a service.
- ``files.SessionFiles``: the session's own files (runtime, temp and cache dirs, the npmrc copy, shims, the
  real shells, its /dev/shm objects, the undo store's directory).
- ``services.Services``: the runtime services (audit log, prompter, network proxy, late-deny watch, undo
  store), which read the other two.

``Session.create`` builds the three in that order; nothing is assigned onto a session from outside.
"""

from __future__ import annotations

import itertools
import os
import secrets
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from nono_supervisor import paths
from nono_supervisor.audit import MAX_BYTES as AUDIT_MAX_BYTES
from nono_supervisor.audit import AuditLog
from nono_supervisor.policy.profile import PolicyOptions
from nono_supervisor.session.files import SessionFiles, find_real_shell, is_nono_shim
from nono_supervisor.session.services import Services
from nono_supervisor.session.state import PolicyState
from nono_supervisor.terminal.prompt import Prompter

if TYPE_CHECKING:
    from nono_supervisor.policy.agents import AgentProfile

__all__ = ["PolicyState", "Services", "Session", "SessionFiles", "find_real_shell", "is_nono_shim"]


class Session:
    """The composition: ``id``, ``state``, ``files``, ``services``; the ids of its commands; ``close``."""

    def __init__(self, session_id: str, state: PolicyState, files: SessionFiles, services: Services) -> None:
        self.id = session_id
        self.state = state
        self.files = files
        self.services = services
        self._ids = itertools.count(1)
        self._id_lock = threading.Lock()

    @classmethod
    def create(
        cls,
        options: PolicyOptions,
        env: Mapping[str, str] | None = None,
        *,
        workdir: str | None = None,
        shims: Path | bool = False,
        socket: Path | bool = False,
        agent: AgentProfile | None = None,
        trap: bool = True,
        audit_path: Path | None = None,
        audit_max: int = AUDIT_MAX_BYTES,
        prompter: bool = False,
    ) -> Session:
        """A session with fresh private runtime and temp directories (0700, removed by ``close``).

        ``shims``: bash-named shims are written (``True``: into the runtime directory) and granted read+exec
        to every command, so that a nested ``bash`` is routed again. ``socket``: where its supervisor will
        listen (``True``: ``socket`` in the runtime directory), which every command may connect to.
        ``trap``: seccomp user notification on top of Landlock (False: --no-trap). ``audit_path``,
        ``audit_max``: --audit-log and --audit-log-max. ``prompter``: questions go to this process's
        terminal, when it has one (``policy`` and the dry runs ask nothing). A start that fails (a broken
        grant store, an audit log that cannot be written) leaves no directory behind."""
        env = dict(os.environ if env is None else env)
        session_id = secrets.token_hex(4)
        files = SessionFiles.create(env, workdir or os.getcwd(), shims)
        try:
            socket_path = files.runtime_dir / "socket" if socket is True else (socket or None)
            state = PolicyState(
                options, files, agent=agent, trap=trap, socket_path=socket_path, audit_path=audit_path
            )
            audit = AuditLog(audit_path or paths.audit_log_path(env), session_id, audit_max)
            asker = Prompter.for_terminal(state.policy.prompt_timeout) if prompter else None
            services = Services(session_id, state, files, audit, asker)
        except BaseException:
            files.close()
            raise
        return cls(session_id, state, files, services)

    def next_command_id(self) -> str:
        with self._id_lock:
            return f"{self.id}-{next(self._ids)}"

    def close(self) -> None:
        self.services.close()
        self.files.close()
