"""One supervisor session: its policy, private directories, real shells and audit log."""

from __future__ import annotations

import functools
import itertools
import os
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
from supervisor import paths
from supervisor.access import AccessIndex
from supervisor.audit import AuditLog
from supervisor.errors import UsageError
from supervisor.grants import GrantStore, to_policy_grants
from supervisor.policy import Context, Grant, Policy, PolicyOptions, resolve_policy
from supervisor.prompt import Prompter
from supervisor.shims import package_root, write_shims

__all__ = ["Session", "find_real_shell", "is_nono_shim"]

_FALLBACK_PATH = "/usr/local/bin:/usr/bin:/bin"
_ACCESS_CACHE_SIZE = 16
# How often the session looks at the grant store (one stat) for a revoke or another session's "always":
# a revoke reaches the running session within this, and costs a clock read on every other policy lookup.
STORE_CHECK_SECONDS = 0.25
# Denied trees are walked for multi-linked files at most this often, and this far (browser profiles are big).
_LINK_SCAN_SECONDS = 5.0
_LINK_SCAN_LIMIT = 20_000


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
    trap: bool = True  # seccomp user notification on top of Landlock (False: --no-trap, Landlock only)
    socket_path: Path | None = None  # where this session's supervisor listens, if it does

    def __post_init__(self) -> None:
        self.home = self.env.get("HOME") or os.path.expanduser("~")
        self.prompter: Prompter | None = None
        self._grant_lock = threading.Lock()
        self._store = GrantStore(paths.grants_path(self.env))
        platform = "macos" if sys.platform == "darwin" else "linux"
        self._base = resolve_policy(self.options, self.context(platform))
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
        self.audit = AuditLog(self.audit_path or paths.audit_log_path(self.env), self.id)
        self._access: dict[int, AccessIndex] = {}
        self._linked: dict[int, tuple[Policy, float, frozenset[tuple[int, int]]]] = {}
        self._own_terminals = {os.ttyname(fd) for fd in (0, 1, 2) if os.isatty(fd)}
        self._own_ttys = {os.fstat(fd).st_rdev for fd in (0, 1, 2) if os.isatty(fd)}
        self._ids = itertools.count(1)
        self._id_lock = threading.Lock()
        self._netproxy = None  # domains mode: the session's proxy (supervisor.netproxy), started at first use
        self._net_lock = threading.Lock()

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
            cached = self._access[id(policy)] = AccessIndex(policy)
        return cached

    def prompt_mode(self) -> str:
        """When a denial may become a question: ``tty`` (held syscall), ``after`` (retry), or ``never``."""
        mode = self.policy.prompt
        if self.prompter is None or mode == "never":
            return "never"
        if not sys.platform.startswith("linux"):
            return "after"  # only the Linux backend can hold a syscall while the human answers
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
                stored = self._store.load()
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
        return Context(
            workdir=self.workdir,
            home=self.home,
            tmpdir=str(self.tmpdir),
            platform=platform,
            config_dir=str(paths.config_dir(self.env)),
            protected=self.protected_paths(),
            sealed=_own_terminal_names(),
        )

    def protected_paths(self) -> tuple[str, ...]:
        """CONTRACT "never grantable": nono-shell's own files, code and sockets."""
        own = [paths.config_dir(self.env), paths.state_dir(self.env), self.runtime_dir, *paths.package_dirs()]
        if self.shims_dir:
            own.append(self.shims_dir)
        if self.audit_path:
            own.append(self.audit_path)
        return tuple(str(p) for p in own)

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
                    grants.append(Grant(name, "allow", "file", "terminal"))
        return grants

    def command_env(self, env: dict[str, str]) -> dict[str, str]:
        """The environment a sandboxed command gets: the caller's, with the session's private temp dir."""
        env = dict(env)
        for name in ("TMPDIR", "TMP", "TEMP"):
            env[name] = str(self.tmpdir)
        if self.policy.net_mode == "domains":  # HTTP(S)_PROXY, ALL_PROXY, NO_PROXY and their twins
            env.update(self.netproxy().environment())
        return env

    def netproxy(self):
        """The session's network proxy (domains mode): listening on loopback from the first call on."""
        with self._net_lock:
            if self._netproxy is None:
                from supervisor.netproxy import NetProxy

                self._netproxy = NetProxy(self).start()
            return self._netproxy

    def next_command_id(self) -> str:
        with self._id_lock:
            return f"{self.id}-{next(self._ids)}"

    def close(self) -> None:
        if self._netproxy is not None:
            self._netproxy.close()
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
        shutil.rmtree(self.tmpdir, ignore_errors=True)
