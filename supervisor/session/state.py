"""The session's policy state: what its commands and its agent may do, as it grows and shrinks.

The resolved options (the commands' policy and the agent's baseline), the human's answers (grants and
refusals), the grant store as it is now (a revoke elsewhere reaches a running session), the never-grantable
and sealed paths, the runs-later entries, the route and terminal grants, the access indexes and the
multi-linked denied files. It reads the session's files (``files.py``) to grant or protect them, and never
reaches a runtime service (``services.py``): it can be built and asked alone, over any home
(tests/test_session.py::test_the_policy_state_is_built_alone_and_reaches_no_service).
"""

from __future__ import annotations

import functools
import os
import stat
import sys
import threading
import time
from collections.abc import Iterable
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from nono_supervisor import backend, paths
from nono_supervisor.errors import UsageError
from nono_supervisor.policy.access import AccessIndex, held_links, real_paths
from nono_supervisor.policy.gitrepos import repository_entries
from nono_supervisor.policy.grants import GrantStore, to_policy_grants
from nono_supervisor.policy.profile import (
    HANDED_TERMINAL,
    Context,
    Grant,
    Policy,
    PolicyOptions,
    RunsLater,
    resolve_policy,
)
from nono_supervisor.session.files import SessionFiles
from nono_supervisor.shims import package_root

if TYPE_CHECKING:
    from nono_supervisor.policy.agents import AgentProfile, Toolchain

__all__ = ["STORE_CHECK_SECONDS", "PolicyState"]

_ACCESS_CACHE_SIZE = 16
# How often the session looks at the grant store (one stat) for a revoke or another session's "always":
# a revoke reaches the running session within this, and costs a clock read on every other policy lookup.
STORE_CHECK_SECONDS = 0.25
# Denied trees are walked for multi-linked files at most this often, and this far (browser profiles are big).
_LINK_SCAN_SECONDS = 5.0
_LINK_SCAN_LIMIT = 20_000


def _multi_linked(roots: Iterable[str], limit: int = _LINK_SCAN_LIMIT) -> set[tuple[int, int]]:
    """(dev, ino) of the regular files with several names under ``roots`` (at most ``limit`` entries)."""
    found: set[tuple[int, int]] = set()
    seen = 0
    for root in roots:
        stack = [root]
        while stack and seen < limit:
            path = stack.pop()
            seen += 1
            try:
                st = os.lstat(path)
            except OSError:
                continue
            if stat.S_ISDIR(st.st_mode):
                try:
                    stack.extend(os.path.join(path, name) for name in os.listdir(path))
                except OSError:
                    pass
            elif stat.S_ISREG(st.st_mode) and st.st_nlink > 1:
                found.add((st.st_dev, st.st_ino))
    return found


def _own_terminal_names() -> tuple[str, ...]:
    """The terminal the supervisor was started on (its stdio): the human's, never a command's."""
    names = set()
    for fd in (0, 1, 2):
        try:
            if os.isatty(fd):
                names.add(os.path.realpath(os.ttyname(fd)))
        except OSError:
            pass
    return tuple(sorted(names))


class PolicyState:
    """The session's policies now: ``policy`` (every command's), ``agent_policy`` (the agent's baseline),
    and what the backend and the notify loop ask of them."""

    def __init__(
        self,
        options: PolicyOptions,
        files: SessionFiles,
        *,
        agent: AgentProfile | None = None,
        trap: bool = True,
        socket_path: Path | None = None,
        audit_path: Path | None = None,
    ) -> None:
        self.options = options
        self.env = files.env
        self.workdir = files.workdir
        self.home = files.home
        # The agent's profile (agents.AgentProfile) under `run`: its state and install tree are the
        # agent's baseline only; its state is sealed from every command (CONTRACT: never grantable).
        self.agent = agent
        self.trap = trap  # seccomp user notification on top of Landlock (False: --no-trap, Landlock only)
        self.socket_path = socket_path  # where this session's supervisor listens, if it does
        self.audit_path = audit_path  # --audit-log: never grantable (the default one is in the state dir)
        self._files = files
        self._grant_lock = threading.Lock()
        self._store = GrantStore(paths.grants_path(self.env))
        platform = backend.current().platform
        self._base = resolve_policy(self.options, self.context(platform))
        self._agent_base = self._resolve_agent(platform)
        self._cache_variables = self._resolve_caches()  # of the resolved options: fixed for the session
        self._user: tuple[Grant, ...] = ()  # session and always answers of this session
        self._stored: tuple[Grant, ...] = ()
        self._store_stamp: object = None
        self._store_expiry: float | None = None  # wall clock of the next stored grant to expire
        self._next_check = 0.0
        self._policy = self._base
        self._refresh_store(force=True)
        self._refused: dict[tuple[str, str], str] = {}  # (op, path) -> answer: asked once per session
        self._access: dict[int, AccessIndex] = {}
        self._linked: dict[int, tuple[Policy, float, frozenset[tuple[int, int]]]] = {}
        self._own_terminals = {os.ttyname(fd) for fd in (0, 1, 2) if os.isatty(fd)}
        self._own_ttys = {os.fstat(fd).st_rdev for fd in (0, 1, 2) if os.isatty(fd)}

    def access_index(self, policy: Policy) -> AccessIndex:
        """The policy's intent for concrete paths, built once per policy (realpath of every entry)."""
        cached = self._access.get(id(policy))
        if cached is None or cached.policy is not policy:
            if len(self._access) >= _ACCESS_CACHE_SIZE:
                self._access.clear()  # every grant makes a new policy: keep the cache from growing for ever
            real, links = real_paths(policy, os.path.realpath), held_links(policy, paths.link_target)
            cached = self._access[id(policy)] = AccessIndex(policy, real, links)
        return cached

    def relocate_denies(self) -> None:
        """The denied paths resolved again in every policy's index: a node moved (DESIGN invariant 12)."""
        for index in list(self._access.values()):
            index.relocate(
                real_paths(index.policy, os.path.realpath), held_links(index.policy, paths.link_target)
            )

    @property
    def policy(self) -> Policy:
        """The session's policy now: the resolved options, this session's answers, and the grant store as
        it is now (a revoke elsewhere takes effect within ``STORE_CHECK_SECONDS``)."""
        self._refresh_store()
        return self._policy

    def static_policy(self) -> Policy:
        """The policy without the grant store, for what lives as long as the session (the agent): its
        Landlock rules cannot be taken back, so stored grants reach it only through the supervisor's live
        check, which a revoke reaches."""
        return self._base if not self._user else replace(self._base, grants=self._base.grants + self._user)

    def agent_policy(self, stored: bool = False) -> Policy:
        """The agent's baseline: the command policy, plus its profile's state (read+write) and install
        tree (read+exec), which no command gets; without the grant store (see ``static_policy``) unless
        ``stored`` (no live check to reach it: --no-trap, macOS)."""
        self._refresh_store()
        base = self._agent_base
        extra = self._user + (self._stored if stored else ())
        return base if not extra else replace(base, grants=base.grants + extra)

    def _resolve_agent(self, platform: str) -> Policy:
        agent = self.agent
        if agent is None:
            return self._base
        from nono_supervisor.policy.agents import list_only

        # its state is not sealed from it; the undo store is (old contents; a forged record would be acted on)
        ctx = replace(self.context(platform), sealed=_own_terminal_names() + (str(self._files.undo_dir),))
        policy = resolve_policy(self.options, ctx)
        # Agents walk up from the workdir for their project files (.git, AGENTS.md, opencode.json): the
        # directories above it are listed, names only.
        above, parent = [], os.path.dirname(os.path.realpath(self.workdir))
        while parent not in ("/", ""):
            above.append(Grant(list_only(parent), "read", "file", f"agent {agent.name}: list only"))
            parent = os.path.dirname(parent)
        extra = tuple(g for g in (*agent.policy_grants(), *above) if g not in policy.grants)
        # Its own configuration is its state, which it writes itself (its commands never do): the entries
        # that name it ("claude-code: ...") and any inside its state paths.
        state = [os.path.realpath(p) for p in agent.state_paths()]
        own = agent.name
        later = tuple(
            entry
            for entry in policy.runs_later
            if entry.program != own
            and not any(os.path.commonpath([os.path.realpath(entry.path), p]) == p for p in state)
        )
        return replace(policy, grants=policy.grants + tuple(dict.fromkeys(extra)), runs_later=later)

    @functools.cached_property
    def toolchain(self) -> Toolchain:
        """The user's toolchain from PATH (``policy.agents.toolchain``), computed once, at start."""
        from nono_supervisor.policy.agents import toolchain

        files = self._files
        return toolchain(self.env, self.home, skip=(self.workdir, str(files.tmpdir), str(files.runtime_dir)))

    def cache_variables(self) -> dict[str, str]:
        """The commands' cache variables, when the policy grants the project's cache directory, and the
        token-free npmrc when it grants ``session_configs`` (the session's files make them: ``caches``)."""
        return dict(self._cache_variables)

    def _resolve_caches(self) -> dict[str, str]:
        cache = str(self._files.cache_dir)
        if not any(g.path == cache for g in self._base.grants):
            return {}
        variables = {
            "XDG_CACHE_HOME": cache,
            "PIP_CACHE_DIR": os.path.join(cache, "pip"),
            "npm_config_cache": os.path.join(cache, "npm"),
            "UV_CACHE_DIR": os.path.join(cache, "uv"),
            "YARN_CACHE_FOLDER": os.path.join(cache, "yarn"),
            "BUN_INSTALL_CACHE_DIR": os.path.join(cache, "bun"),
            "GOCACHE": os.path.join(cache, "go-build"),
            "GOMODCACHE": os.path.join(cache, "go-mod"),
        }
        if any(g.source == "group:session_configs" for g in self._base.grants):
            variables["npm_config_userconfig"] = str(self._files.npmrc)
        return variables

    def _refresh_store(self, force: bool = False) -> None:
        now = time.monotonic()
        if not force and now < self._next_check:
            return
        with self._grant_lock:
            if not force and now < self._next_check:
                return
            self._next_check = now + STORE_CHECK_SECONDS
            stamp = self._store.stamp()
            expired = self._store_expiry is not None and time.time() >= self._store_expiry
            if stamp == self._store_stamp and not expired and not force:
                return
            try:
                stored = self._store.load(protected=self.protected_paths())
            except UsageError:
                if force:
                    raise  # at start: a broken store is a usage error naming the file and entry
                stored = []  # edited into something invalid mid-session: fail closed, none of them
            self._store_stamp = stamp
            expiries = [t for g in stored if g.expires and (t := g.expires_at()) is not None]
            self._store_expiry = min(expiries, default=None)
            self._stored = tuple(to_policy_grants(stored))
            self._rebuild()

    def _rebuild(self) -> None:
        self._policy = replace(self._base, grants=self._base.grants + self._user + self._stored)

    def add_grant(
        self, path: str, access: str, kind: str, *, persist: bool = False, command: str = ""
    ) -> None:
        """A human's session (or ``persist``: always) grant: every later command's policy includes it."""
        with self._grant_lock:
            self._user += (Grant(path, access, kind, "user"),)
            self._rebuild()
        if persist:  # after the session grant: a store that cannot be written still leaves the session's
            self._store.add(path, access, kind, command=command, protected=self.protected_paths())
            self._refresh_store(force=True)

    def refusal(self, op: str, path: str) -> str | None:
        """The answer that refused ``op`` on ``path`` earlier in this session (not asked again), if any."""
        with self._grant_lock:
            return self._refused.get((op, path))

    def refuse(self, op: str, path: str, answer: str) -> None:
        with self._grant_lock:
            self._refused[(op, path)] = answer

    def is_own_terminal(self, fd: int) -> bool:
        """``fd`` is the terminal the supervisor was started on (where the human answers)."""
        try:
            return os.isatty(fd) and os.fstat(fd).st_rdev in self._own_ttys
        except OSError:
            return False

    def policy_for(self, platform: str) -> Policy:
        """The options resolved for ``platform`` (``policy --format seatbelt`` on Linux), with the stored
        grants: persistent ("always") answers apply from the start of every later session."""
        policy = resolve_policy(self.options, self.context(platform))
        stored = self._store.load()
        return replace(policy, grants=policy.grants + tuple(to_policy_grants(stored)))

    def context(self, platform: str) -> Context:
        agent_state = self.agent.state_paths() if self.agent is not None else ()
        return Context(
            workdir=self.workdir,
            home=self.home,
            tmpdir=str(self._files.tmpdir),
            platform=platform,
            config_dir=str(paths.config_dir(self.env)),
            protected=self.protected_paths(),
            sealed=_own_terminal_names() + tuple(agent_state) + (str(self._files.undo_dir),),
            groups=self._computed_groups(),
            runs_later=self.runs_later,
        )

    def _computed_groups(self) -> dict[str, tuple[str, ...]]:
        """The security list's groups that are computed at start: the toolchain the user's PATH resolves
        into, the project's cache directory, the session's token-free npmrc."""
        if not self.home or os.path.normpath(self.home) == "/":
            return {"user_toolchain": self.toolchain.read}  # no home: no cache of its own, no ~/.npmrc
        npmrc = os.path.isfile(os.path.join(self.home, ".npmrc"))
        return {
            "user_toolchain": self.toolchain.read,
            "tool_caches": (str(self._files.cache_dir),),
            "session_configs": (str(self._files.npmrc),) if npmrc else (),
        }

    def protected_paths(self) -> tuple[str, ...]:
        """CONTRACT "never grantable": nono-shell's own files, code and sockets. (What runs code later
        outside any sandbox is the runs-later class: ``runs_later``.)"""
        own = [
            paths.config_dir(self.env),
            paths.state_dir(self.env),
            self._files.runtime_dir,
            *paths.package_dirs(),
        ]
        if self._files.shims_dir:
            own.append(self._files.shims_dir)
        if self.audit_path:
            own.append(self.audit_path)
        return tuple(str(p) for p in own)

    @functools.cached_property
    def runs_later(self) -> tuple[RunsLater, ...]:
        """The session's runs-later entries beside the security list's (DESIGN invariant 10), computed once
        at start: the directories on PATH outside the system and the workdir (every shell runs what it
        finds there) and the trees they resolve into (a pyenv or nvm version: its interpreter, its global
        packages and their .pth files), and the git repositories at any depth of the workdir (gitrepos: one
        walk; measured in the README)."""
        on_path = [RunsLater(d, "every shell: a directory on PATH") for d in self.toolchain.path_dirs]
        trees = [
            RunsLater(t, "every shell: a toolchain PATH resolves into (interpreters, global packages)")
            for t in self.toolchain.read
        ]
        return tuple(dict.fromkeys([*on_path, *trees, *repository_entries(self.workdir)]))

    @functools.cached_property
    def _route(self) -> tuple[Grant, ...]:
        needed = {sys.prefix, sys.base_prefix, os.path.dirname(os.path.realpath(sys.executable))}
        needed.update(str(p) for p in paths.package_dirs())
        needed.add(package_root())  # the shims import from here: the import system must list it
        if self._files.shims_dir:
            needed.add(str(self._files.shims_dir))
        return tuple(Grant(p, "read", "dir", "route") for p in sorted(needed))

    def route_grants(self) -> list[Grant]:
        """Read+exec of what nono-shell itself needs inside a sandbox (nested routing), computed once."""
        return list(self._route)

    def own_terminals(self) -> frozenset[str]:
        """The supervisor's own terminal: never reopened for a command (CONTRACT: never grantable)."""
        return frozenset(self._own_terminals)

    def linked_denied(self, policy: Policy) -> frozenset[tuple[int, int]]:
        """(dev, ino) of denied regular files that have more than one name. Landlock follows names, so a
        hard link to one of them inside a grant would read through; the notify layer checks these inodes.
        Walked once per policy and again after ``_LINK_SCAN_SECONDS`` (links made outside the sandbox)."""
        now = time.monotonic()
        cached = self._linked.get(id(policy))
        if cached is not None and cached[0] is policy and now - cached[1] < _LINK_SCAN_SECONDS:
            return cached[2]
        found = frozenset(_multi_linked(os.path.realpath(d.path) for d in policy.denies))
        if len(self._linked) >= _ACCESS_CACHE_SIZE:
            self._linked.clear()
        self._linked[id(policy)] = (policy, now, found)
        return found

    def own_sockets(self) -> frozenset[str]:
        """Unix sockets every sandboxed process may connect to: the supervisor's (nested nono-shell)."""
        return frozenset([os.path.realpath(self.socket_path)] if self.socket_path else [])

    def terminal_grants(self, stdio: tuple[int, int, int]) -> list[Grant]:
        """The terminal a command was handed on its stdio may also be reopened by name (programs open
        ``ttyname(0)``); never the supervisor's own terminal (CONTRACT: never grantable)."""
        grants = []
        for fd in stdio:
            if fd >= 0 and os.isatty(fd):
                name = os.ttyname(fd)
                if name not in self._own_terminals:
                    grants.append(Grant(name, "allow", "file", HANDED_TERMINAL))
        return grants
