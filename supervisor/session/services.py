"""The session's runtime services: the audit log, the prompter, and what starts at first use (the network
proxy, the late-deny watch, the undo store).

They are given at construction (``Session.create``), never assigned from outside afterwards, and they read
the policy state and the session's files; the policy state never reaches them. ``close`` stops what was
started.
"""

from __future__ import annotations

import json
import os
import threading
from typing import TYPE_CHECKING

from nono_supervisor import backend
from nono_supervisor.audit import AuditLog
from nono_supervisor.policy.profile import Policy
from nono_supervisor.session.files import SessionFiles
from nono_supervisor.session.state import PolicyState
from nono_supervisor.terminal.prompt import Prompter

if TYPE_CHECKING:
    from nono_supervisor.linux.latedeny import LateDenies
    from nono_supervisor.netproxy import NetProxy
    from nono_supervisor.undo import CommandLog, Store

__all__ = ["Services"]

# pyenv's exec hooks of nono's own (data/pyenv.d/exec/nono-shell.bash): pip install through pyenv's shims
# exits as bare while the shims directory stays unwritable to commands.
_PYENV_HOOKS = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data", "pyenv.d")


class Services:
    """What the session runs beside its commands, over its policy state and files."""

    def __init__(
        self,
        session_id: str,
        state: PolicyState,
        files: SessionFiles,
        audit: AuditLog,
        prompter: Prompter | None,
    ) -> None:
        self.session_id = session_id
        self.state = state
        self.files = files
        self.audit = audit
        self.prompter = prompter  # None: no terminal to ask on (or ``policy``): nothing is asked
        self._net_lock, self._watch_lock, self._undo_lock = (
            threading.Lock(),
            threading.Lock(),
            threading.Lock(),
        )
        self._netproxy: NetProxy | None = None  # domains mode: the session's proxy, started at first use
        self._late_denies: LateDenies | None = None  # Linux: where the denied paths lead, watched
        self._undo: Store | None = None  # the session's undo store, made for the first recorded command
        self._undo_trees: tuple[Policy, tuple[str, ...]] | None = None

    @property
    def env(self) -> dict[str, str]:
        """The session's environment (the proxy finds the grant store through it)."""
        return self.state.env

    def prompt_mode(self) -> str:
        """When a denial may become a question: ``tty`` (held syscall), ``after`` (retry), or ``never``."""
        mode = self.state.policy.prompt
        if self.prompter is None or mode == "never":
            return "never"
        if not backend.current().holds_syscalls:
            return "after"  # macOS: Seatbelt answers the syscall itself, a question comes after it
        return "tty" if mode == "auto" else mode

    def command_env(self, env: dict[str, str], agent: bool = False) -> dict[str, str]:
        """The environment a sandboxed command gets: the caller's, with the session's private temp dir and
        the project's tool caches and token-free npmrc. An agent without a profile (`run -- bash`: what the
        user types runs in it) gets them too (issue 20: `npm install` asked 7 questions about ~/.npm and
        ~/.npmrc). An agent with one does not: its commands can write those caches, and a package it then
        loads from them would run with its state and credentials (its own caches are its state)."""
        env = dict(env)
        # TMUX_TMPDIR: tmux makes its server socket there (else /tmp/tmux-UID, beside the user's own)
        for name in ("TMPDIR", "TMP", "TEMP", "TMUX_TMPDIR"):
            env[name] = str(self.files.tmpdir)
        caches = self.files.caches(self.state.cache_variables())
        if not agent or self.state.agent is None:
            env.update(caches)
        hooks = env.get("PYENV_HOOK_PATH", "")
        if not hooks.startswith(_PYENV_HOOKS):  # first, before pyenv's own; a routed command has it already
            env["PYENV_HOOK_PATH"] = _PYENV_HOOKS + (os.pathsep + hooks if hooks else "")
        if self.state.policy.net_mode == "domains":  # HTTP(S)_PROXY, ALL_PROXY, NO_PROXY and their twins
            env.update(self.netproxy().environment())
        return env

    def netproxy(self) -> NetProxy:
        """The session's network proxy (domains mode): listening on loopback from the first call on."""
        with self._net_lock:
            if self._netproxy is None:
                from nono_supervisor.netproxy import NetProxy

                self._netproxy = NetProxy(self).start()
            return self._netproxy

    def late_denies(self) -> LateDenies:
        """Linux: the session's watch over where its denied paths lead, started with its first sandbox (the
        server starts it before its first command)."""
        with self._watch_lock:
            if self._late_denies is None:
                from nono_supervisor.linux.latedeny import LateDenies

                self._late_denies = LateDenies(self.state, self.audit)
            return self._late_denies

    def undo_log(self, command: str, policy: Policy | None = None) -> CommandLog | None:
        """The record of ``command``'s changes (an ``undo.CommandLog``, begun), or None when undo is off:
        ``--no-undo``, the profile's ``[undo] enabled = false``, ``--no-trap`` (nothing is seen), not Linux.
        Recorded: the trees the policy lets commands write, but the session's own temp and runtime dirs
        (removed with the session) and devices; never a path the policy denies or never grants."""
        policy = policy or self.state.policy
        if not (self.state.trap and policy.undo and backend.current().records_changes):
            return None
        from nono_supervisor.undo import CommandLog

        access = self.state.access_index(policy)
        # A directory with no denied or never-grantable node below it, itself readable and writable, has
        # only such entries: decided once per directory (a verdict costs ~50 us; rm -rf asks per file).
        open_dirs: dict[str, bool] = {}

        def both(path: str) -> bool:
            return access.verdict(path, "write").allowed and access.verdict(path, "read").allowed

        def allowed(path: str) -> bool:
            parent = os.path.dirname(path)
            clear = open_dirs.get(parent)
            if clear is None:
                clear = open_dirs[parent] = not access.denied_below(parent) and both(parent)
            return clear or both(path)

        skip = (str(self.files.tmpdir), str(self.files.runtime_dir))
        return CommandLog(self._undo_store(policy), command, self._undo_roots(policy), allowed, skip).begin()

    def _undo_roots(self, policy: Policy) -> tuple[str, ...]:
        """The real paths of the trees ``policy`` lets commands write, once per policy (a realpath of each
        grant cost a command ~150 us here)."""
        cached = self._undo_trees
        if cached is None or cached[0] is not policy:
            writable = [g.path for g in policy.grants if g.access in ("write", "allow")]
            roots = (os.path.realpath(p) for p in writable if not p.startswith(("/dev", "/proc", "/sys")))
            cached = self._undo_trees = (policy, tuple(dict.fromkeys(roots)))
        return cached[1]

    def _undo_store(self, policy: Policy) -> Store:
        from nono_supervisor.undo import Limits, MiB, Store, prune_sessions

        with self._undo_lock:
            if self._undo is None:
                directory = self.files.undo_dir / self.session_id
                limits = Limits(policy.undo_max_mb * MiB, policy.undo_max_age_hours * 3600)
                self.files.undo_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
                prune_sessions(directory.parent, limits.max_age, self.session_id)
                self._undo = Store(directory, limits)
                meta = {
                    "session": self.session_id,
                    "pid": os.getpid(),
                    "workdir": self.state.workdir,
                    "audit_log": str(self.audit.path),
                    "protected": list(self.state.protected_paths()),
                    "max_mb": policy.undo_max_mb,
                    "max_age_hours": policy.undo_max_age_hours,
                }
                (directory / "session.json").write_text(json.dumps(meta))
            return self._undo

    def close(self) -> None:
        """Stops the watch and the proxy, and closes the undo store (its journal stays for ``undo``)."""
        if self._late_denies is not None:
            self._late_denies.close()
        if self._netproxy is not None:
            self._netproxy.close()
        if self._undo is not None:
            self._undo.close()
