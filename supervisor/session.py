"""One supervisor session: its policy, private directories, real shells and audit log."""

from __future__ import annotations

import functools
import hashlib
import itertools
import json
import os
import re
import secrets
import shutil
import stat
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field, replace
from pathlib import Path

from nono_shell.personality import SHELLS
from nono_supervisor import backend, paths
from nono_supervisor.audit import MAX_BYTES as AUDIT_MAX_BYTES
from nono_supervisor.audit import AuditLog
from nono_supervisor.errors import UsageError
from nono_supervisor.policy.access import AccessIndex, real_paths
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
from nono_supervisor.shims import package_root, write_shims
from nono_supervisor.shm import SessionShm
from nono_supervisor.terminal.prompt import Prompter

__all__ = ["Session", "find_real_shell", "is_nono_shim"]

_FALLBACK_PATH = "/usr/local/bin:/usr/bin:/bin"
# pyenv's exec hooks of nono's own (data/pyenv.d/exec/nono-shell.bash): pip install through pyenv's shims
# exits as bare while the shims directory stays unwritable to commands.
_PYENV_HOOKS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "pyenv.d")
_ACCESS_CACHE_SIZE = 16
# How often the session looks at the grant store (one stat) for a revoke or another session's "always":
# a revoke reaches the running session within this, and costs a clock read on every other policy lookup.
STORE_CHECK_SECONDS = 0.25
# Denied trees are walked for multi-linked files at most this often, and this far (browser profiles are big).
_LINK_SCAN_SECONDS = 5.0
_LINK_SCAN_LIMIT = 20_000


# Keys of an npmrc line that hold secrets: _auth, _authToken, _password, username, password, email, a
# client certificate's key (scoped "//registry/:_authToken" forms included).
_NPMRC_SECRET = re.compile(
    r"(^|:|\s)(_auth\w*|_password|password|username|email|certfile|keyfile|otp)\s*$", re.IGNORECASE
)


def is_nono_shim(path: str) -> bool:
    """True for our own shims and console script: the supervisor must never run one as the real shell."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return head.startswith(b"#!") and b"nono_shell" in head


def find_real_shell(name: str, search_path: str, exclude: tuple[str, ...] = ()) -> str | None:
    """The first ``name`` on ``search_path`` that is a real program: not in ``exclude``, not a shim."""
    for directory in search_path.split(os.pathsep) + _FALLBACK_PATH.split(os.pathsep):
        if not directory or os.path.realpath(directory) in exclude:
            continue
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate) and not is_nono_shim(candidate):
            return candidate
    return None


def _multi_linked(roots, limit: int = _LINK_SCAN_LIMIT) -> set[tuple[int, int]]:
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


def _private_dir(prefix: str, parent: str | None) -> Path:
    return Path(tempfile.mkdtemp(prefix=prefix, dir=parent)).resolve()


@dataclass
class Session:
    options: PolicyOptions
    workdir: str
    env: dict[str, str]
    runtime_dir: Path
    tmpdir: Path
    id: str = field(default_factory=lambda: secrets.token_hex(4))
    shims_dir: Path | None = None
    audit_path: Path | None = None
    audit_max: int = AUDIT_MAX_BYTES  # --audit-log-max: the size at which the audit log is rotated
    trap: bool = True  # seccomp user notification on top of Landlock (False: --no-trap, Landlock only)
    socket_path: Path | None = None  # where this session's supervisor listens, if it does
    # The agent's profile (agents.AgentProfile) under `run`: its state and install tree are the
    # agent's baseline only; its state is sealed from every command (CONTRACT: never grantable).
    agent: object | None = None

    def __post_init__(self) -> None:
        self.home = self.env.get("HOME") or os.path.expanduser("~")
        self.prompter: Prompter | None = None
        self._grant_lock = threading.Lock()
        self._store = GrantStore(paths.grants_path(self.env))
        platform = backend.current().platform
        self._base = resolve_policy(self.options, self.context(platform))
        self._agent_base = self._resolve_agent(platform)
        self._prepare_caches()
        self._user: tuple[Grant, ...] = ()  # session and always answers of this session
        self._stored: tuple[Grant, ...] = ()
        self._store_stamp: object = None
        self._store_expiry: float | None = None  # wall clock of the next stored grant to expire
        self._next_check = 0.0
        self._policy = self._base
        self._refresh_store(force=True)
        self._refused: dict[tuple[str, str], str] = {}  # (op, path) -> answer: asked once per session
        exclude = tuple(os.path.realpath(p) for p in (self.shims_dir,) if p)
        self.shells = {
            name: shell
            for name in SHELLS
            if (shell := find_real_shell(name, self.env.get("PATH", ""), exclude)) is not None
        }
        self.audit = AuditLog(self.audit_path or paths.audit_log_path(self.env), self.id, self.audit_max)
        self._access: dict[int, AccessIndex] = {}
        self._linked: dict[int, tuple[Policy, float, frozenset[tuple[int, int]]]] = {}
        self._own_terminals = {os.ttyname(fd) for fd in (0, 1, 2) if os.isatty(fd)}
        self._own_ttys = {os.fstat(fd).st_rdev for fd in (0, 1, 2) if os.isatty(fd)}
        self._ids = itertools.count(1)
        self._id_lock = threading.Lock()
        self._undo = None  # the session's undo store (undo.Store), made for the first recorded command
        self._undo_lock = threading.Lock()
        self._undo_trees: tuple[Policy, tuple[str, ...]] | None = None
        self._netproxy = None  # domains mode: the session's proxy (netproxy), started at first use
        self.late_denies = None  # Linux: where the denied paths lead, watched (linux.latedeny.for_session)
        self._net_lock = threading.Lock()
        self.shm = SessionShm()  # the POSIX shared memory and semaphores its processes made (/dev/shm)

    @classmethod
    def create(
        cls,
        options: PolicyOptions,
        env: dict[str, str] | None = None,
        *,
        shims: Path | bool = False,
        **kw: object,
    ) -> Session:
        """A session with fresh private runtime and temp directories (0700, removed by ``close``). With
        ``shims``, bash-named shims are written (``True``: into the runtime directory) and granted read+exec
        to every command, so that a nested ``bash`` is routed again."""

        env = dict(os.environ if env is None else env)
        runtime_parent = env.get("XDG_RUNTIME_DIR")
        if not (runtime_parent and os.path.isdir(runtime_parent) and os.access(runtime_parent, os.W_OK)):
            runtime_parent = None
        runtime_dir = _private_dir("nono-shell-run-", runtime_parent)
        tmpdir = _private_dir("nono-shell-tmp-", None)
        try:  # before the policy is compiled: its seal is a directory that exists (undo.Store fills it)
            paths.undo_dir(env).mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            pass
        workdir = str(kw.pop("workdir", None) or os.getcwd())
        if shims:
            kw["shims_dir"] = runtime_dir / "shims" if shims is True else Path(shims).absolute()
            write_shims(kw["shims_dir"])  # type: ignore[arg-type]
        return cls(options, workdir, env, runtime_dir, tmpdir, **kw)  # type: ignore[arg-type]

    def access_index(self, policy: Policy) -> AccessIndex:
        """The policy's intent for concrete paths, built once per policy (realpath of every entry)."""
        cached = self._access.get(id(policy))
        if cached is None or cached.policy is not policy:
            if len(self._access) >= _ACCESS_CACHE_SIZE:
                self._access.clear()  # every grant makes a new policy: keep the cache from growing for ever
            cached = self._access[id(policy)] = AccessIndex(policy, real_paths(policy, os.path.realpath))
        return cached

    def relocate_denies(self) -> None:
        """The denied paths resolved again in every policy's index: a node moved (DESIGN invariant 12)."""
        for index in list(self._access.values()):
            index.relocate(real_paths(index.policy, os.path.realpath))

    def prompt_mode(self) -> str:
        """When a denial may become a question: ``tty`` (held syscall), ``after`` (retry), or ``never``."""
        mode = self.policy.prompt
        if self.prompter is None or mode == "never":
            return "never"
        if not backend.current().holds_syscalls:
            return "after"  # macOS: Seatbelt answers the syscall itself, a question comes after it
        return "tty" if mode == "auto" else mode

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
        if self.agent is None:
            return self._base
        from nono_supervisor.policy.agents import list_only

        # its state is not sealed from it; the undo store is (old contents; a forged record would be acted on)
        ctx = replace(self.context(platform), sealed=_own_terminal_names() + (str(paths.undo_dir(self.env)),))
        policy = resolve_policy(self.options, ctx)
        # Agents walk up from the workdir for their project files (.git, AGENTS.md, opencode.json): the
        # directories above it are listed, names only.
        above, parent = [], os.path.dirname(os.path.realpath(self.workdir))
        while parent not in ("/", ""):
            above.append(Grant(list_only(parent), "read", "file", f"agent {self.agent.name}: list only"))
            parent = os.path.dirname(parent)
        extra = tuple(g for g in (*self.agent.policy_grants(), *above) if g not in policy.grants)
        # Its own configuration is its state, which it writes itself (its commands never do): the entries
        # that name it ("claude-code: ...") and any inside its state paths.
        state = [os.path.realpath(p) for p in self.agent.state_paths()]
        own = self.agent.name
        later = tuple(
            entry
            for entry in policy.runs_later
            if entry.program != own
            and not any(os.path.commonpath([os.path.realpath(entry.path), p]) == p for p in state)
        )
        return replace(policy, grants=policy.grants + tuple(dict.fromkeys(extra)), runs_later=later)

    @functools.cached_property
    def toolchain(self):
        """The user's toolchain from PATH (``policy.agents.toolchain``), computed once, at start."""
        from nono_supervisor.policy.agents import toolchain

        return toolchain(self.env, self.home, skip=(self.workdir, self.tmpdir, self.runtime_dir))

    @functools.cached_property
    def cache_dir(self) -> Path:
        """Where commands' tool caches go (XDG_CACHE_HOME, PIP_CACHE_DIR, npm_config_cache, ...): nono's
        own, one per project. Never the user's own caches, which the user's unsandboxed tools trust (a
        poisoned wheel or packument there would run later outside any sandbox); shared by the sessions of
        one workdir only, so a command can poison nothing it could not already write in its project."""
        base = self.env.get("XDG_CACHE_HOME")
        root = Path(base) if base and os.path.isabs(base) else Path(self.home) / ".cache"
        digest = hashlib.sha256(os.fsencode(os.path.realpath(self.workdir))).hexdigest()[:16]
        return root / "nono-shell" / "projects" / f"{os.path.basename(self.workdir) or 'root'}-{digest}"

    def _prepare_caches(self) -> None:
        """The commands' cache variables, when the policy grants the cache directory (made at the first
        start: Landlock grants only what exists) and, when there is a ~/.npmrc, its token-free copy."""
        self._cache_env: dict[str, str] = {}
        self._cache_made = False
        cache = str(self.cache_dir)
        if not any(g.path == cache for g in self._base.grants):
            return
        self._cache_env = {
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
            self._cache_env["npm_config_userconfig"] = str(self.runtime_dir / "config" / "npmrc")

    def _make_caches(self) -> None:
        if self._cache_made or not self._cache_env:
            return
        self._cache_made = True
        try:
            os.makedirs(self._cache_env["XDG_CACHE_HOME"], mode=0o700, exist_ok=True)
        except OSError:
            self._cache_env = {}  # not ours to make: commands keep the caller's variables (and ask)
            return
        if "npm_config_userconfig" in self._cache_env and not self._session_npmrc():
            del self._cache_env["npm_config_userconfig"]

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
            self._store_expiry = min((g.expires_at() for g in stored if g.expires), default=None)
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
            tmpdir=str(self.tmpdir),
            platform=platform,
            config_dir=str(paths.config_dir(self.env)),
            protected=self.protected_paths(),
            sealed=_own_terminal_names() + tuple(agent_state) + (str(paths.undo_dir(self.env)),),
            groups=self._computed_groups(),
            runs_later=self.runs_later,
        )

    def _computed_groups(self) -> dict[str, tuple[str, ...]]:
        """The security list's groups that are computed at start: the toolchain the user's PATH resolves
        into, the project's cache directory, the session's token-free npmrc."""
        if not self.home or os.path.normpath(self.home) == "/":
            return {"user_toolchain": self.toolchain.read}  # no home: no cache of its own, no ~/.npmrc
        npmrc = self.runtime_dir / "config" / "npmrc"
        return {
            "user_toolchain": self.toolchain.read,
            "tool_caches": (str(self.cache_dir),),
            "session_configs": (str(npmrc),) if os.path.isfile(os.path.join(self.home, ".npmrc")) else (),
        }

    def _session_npmrc(self) -> str | None:
        """~/.npmrc may hold the user's registry tokens (``npm login`` writes them there): it stays denied,
        and commands read a copy without the secrets instead (registry, proxy, save-exact... kept)."""
        source = os.path.join(self.home, ".npmrc")
        try:
            with open(source, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            return None
        kept = [line for line in lines if not _NPMRC_SECRET.search(line.split("=", 1)[0])]
        target = self.runtime_dir / "config" / "npmrc"
        try:
            target.parent.mkdir(mode=0o700, exist_ok=True)
            target.write_text("".join(line + "\n" for line in kept))
        except OSError:
            return None
        return str(target)

    def protected_paths(self) -> tuple[str, ...]:
        """CONTRACT "never grantable": nono-shell's own files, code and sockets. (What runs code later
        outside any sandbox is the runs-later class: ``runs_later``.)"""
        own = [paths.config_dir(self.env), paths.state_dir(self.env), self.runtime_dir, *paths.package_dirs()]
        if self.shims_dir:
            own.append(self.shims_dir)
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
        if self.shims_dir:
            needed.add(str(self.shims_dir))
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

    def command_env(self, env: dict[str, str], agent: bool = False) -> dict[str, str]:
        """The environment a sandboxed command gets: the caller's, with the session's private temp dir and
        the project's tool caches and token-free npmrc. An agent without a profile (`run -- bash`: what the
        user types runs in it) gets them too (issue 20: `npm install` asked 7 questions about ~/.npm and
        ~/.npmrc). An agent with one does not: its commands can write those caches, and a package it then
        loads from them would run with its state and credentials (its own caches are its state)."""
        env = dict(env)
        # TMUX_TMPDIR: tmux makes its server socket there (else /tmp/tmux-UID, beside the user's own)
        for name in ("TMPDIR", "TMP", "TEMP", "TMUX_TMPDIR"):
            env[name] = str(self.tmpdir)
        self._make_caches()
        if not agent or self.agent is None:
            env.update(self._cache_env)
        hooks = env.get("PYENV_HOOK_PATH", "")
        if not hooks.startswith(_PYENV_HOOKS):  # first, before pyenv's own; a routed command has it already
            env["PYENV_HOOK_PATH"] = _PYENV_HOOKS + (os.pathsep + hooks if hooks else "")
        if self.policy.net_mode == "domains":  # HTTP(S)_PROXY, ALL_PROXY, NO_PROXY and their twins
            env.update(self.netproxy().environment())
        return env

    def netproxy(self):
        """The session's network proxy (domains mode): listening on loopback from the first call on."""
        with self._net_lock:
            if self._netproxy is None:
                from nono_supervisor.netproxy import NetProxy

                self._netproxy = NetProxy(self).start()
            return self._netproxy

    def undo_log(self, command: str, policy: Policy | None = None):
        """The record of ``command``'s changes (an ``undo.CommandLog``, begun), or None when undo is off:
        ``--no-undo``, the profile's ``[undo] enabled = false``, ``--no-trap`` (nothing is seen), not Linux.
        Recorded: the trees the policy lets commands write, but the session's own temp and runtime dirs
        (removed with the session) and devices; never a path the policy denies or never grants."""
        policy = policy or self.policy
        if not (self.trap and policy.undo and backend.current().records_changes):
            return None
        from nono_supervisor.undo import CommandLog

        access = self.access_index(policy)
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

        skip = (str(self.tmpdir), str(self.runtime_dir))
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

    def _undo_store(self, policy: Policy):
        from nono_supervisor.undo import Limits, MiB, Store, prune_sessions

        with self._undo_lock:
            if self._undo is None:
                directory = paths.undo_dir(self.env) / self.id
                limits = Limits(policy.undo_max_mb * MiB, policy.undo_max_age_hours * 3600)
                paths.undo_dir(self.env).mkdir(mode=0o700, parents=True, exist_ok=True)
                prune_sessions(directory.parent, limits.max_age, self.id)
                self._undo = Store(directory, limits)
                meta = {
                    "session": self.id,
                    "pid": os.getpid(),
                    "workdir": self.workdir,
                    "audit_log": str(self.audit.path),
                    "protected": list(self.protected_paths()),
                    "max_mb": policy.undo_max_mb,
                    "max_age_hours": policy.undo_max_age_hours,
                }
                (directory / "session.json").write_text(json.dumps(meta))
            return self._undo

    def next_command_id(self) -> str:
        with self._id_lock:
            return f"{self.id}-{next(self._ids)}"

    def close(self) -> None:
        if self.late_denies is not None:
            self.late_denies.close()
        if self._netproxy is not None:
            self._netproxy.close()
        if self._undo is not None:
            self._undo.close()
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
        shutil.rmtree(self.tmpdir, ignore_errors=True)
