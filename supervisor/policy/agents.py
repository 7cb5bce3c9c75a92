"""Agent profiles and the trees a session computes at start: the agent's install tree, the user's toolchain.

Two policies per session (DESIGN.md): the agent's baseline and the per-command policy. An agent profile
(``supervisor/data/profiles/<name>.toml``, its ``[agent]`` section) names what only the agent gets: its
state (settings, permission rules, sessions, credentials) read+write, never grantable to its commands.
Its install tree (read+exec) is found from the resolved program, never hard-coded: the program's realpath
up to its package root (a ``node_modules`` package, a venv, a prefix above ``bin/``), then the same for
its ``#!`` interpreter. The toolchain the user runs (the ``PATH`` entries outside the system directories
and the trees they resolve into: pyenv, nvm, cargo and rustup, ``~/.local/bin``, go) is read+exec for the
agent and its commands alike. Pure apart from reading the filesystem; nothing here grants by itself.
"""

from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from nono_supervisor.errors import UsageError
from nono_supervisor.paths import under
from nono_supervisor.policy.profile import GRANT_LISTS, Context, Grant, expand, load_chain

__all__ = [
    "AGENT_NAMES",
    "AgentProfile",
    "detect",
    "load_agent",
    "pick_agent",
    "install_roots",
    "interpreter",
    "list_only",
    "shell_of_script",
    "resolve_version_shim",
    "ShimTarget",
    "toolchain",
    "Toolchain",
]

# The built-in agent profiles, in the order detection tries them.
AGENT_NAMES = ("claude-code", "codex", "gemini", "opencode", "aider")
SHELL_NAMES = ("sh", "bash", "dash", "zsh")
# Directories every profile already reads (system_read): nothing below them is a toolchain of the user's.
_SYSTEM = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc", "/opt", "/snap")
_SCAN_BUDGET = 4000  # directory entries looked at, over all PATH directories (a huge /usr/bin is skipped)
_SHEBANG_MAX = 256  # what the kernel reads of a "#!" line (BINPRM_BUF_SIZE)


@dataclass(frozen=True)
class AgentProfile:
    """What one agent gets beyond its commands: its state (``grants``), its install tree (``roots``)."""

    name: str
    label: str  # where it was read: "built-in claude-code", a file
    description: str
    grants: tuple[Grant, ...]  # the agent's state, expanded
    roots: tuple[str, ...] = ()  # its install tree, computed from the resolved program (read+exec)
    env: Mapping[str, str] = field(default_factory=dict)
    create: tuple[str, ...] = ()  # state directories made (0700) at start when missing
    start_note: str = ""  # printed by `run` at start unless argv has one of start_note_unless
    start_note_unless: tuple[str, ...] = ()

    def state_paths(self) -> tuple[str, ...]:
        """The agent's own paths: sealed from its commands (CONTRACT: never grantable)."""
        return tuple(dict.fromkeys(g.path for g in self.grants))

    def policy_grants(self) -> tuple[Grant, ...]:
        """Everything the agent's baseline adds to the command policy: state, then install tree, and the
        directories above the tree listed (names only: node agents walk up from their install looking for
        package.json and locales)."""
        tree = [Grant(root, "read", "dir", f"agent {self.name}: install tree") for root in self.roots]
        above: dict[str, None] = {}
        for root in self.roots:
            parent = os.path.dirname(root)
            while parent not in ("/", "") and parent not in above:
                above[parent] = None
                parent = os.path.dirname(parent)
        listed = [Grant(list_only(d), "read", "file", f"agent {self.name}: list only") for d in above]
        return self.grants + tuple(tree) + tuple(listed)

    def note_for(self, argv: list[str]) -> str | None:
        text = " ".join(argv)
        if not self.start_note or any(s in text for s in self.start_note_unless):
            return None
        return self.start_note


def _agent_section(name: str, ctx: Context) -> tuple[str, dict, str]:
    chain = load_chain(name, ctx)
    section: dict = {}
    description = ""
    for _label, data in chain:  # base first: a profile extending an agent profile may add to it
        for key, value in data.get("agent", {}).items():
            if isinstance(value, list):
                section[key] = section.get(key, []) + value
            elif isinstance(value, dict):
                section[key] = {**section.get(key, {}), **value}
            else:
                section[key] = value
        description = data.get("description", description)
    if not section:
        raise UsageError(f"--agent: {chain[-1][0]} has no [agent] section")
    return chain[-1][0], section, description


def load_agent(name: str, ctx: Context, program: str | None = None, env: Mapping[str, str] | None = None):
    """The agent profile ``name`` (a profile name or file with an ``[agent]`` section), its paths expanded,
    its install tree computed from ``program`` (the resolved path the agent starts from)."""
    label, section, description = _agent_section(name, ctx)
    grants: list[Grant] = []
    source = f"agent {os.path.basename(name).removesuffix('.toml')}"
    for key, (access, kind) in GRANT_LISTS.items():
        for raw in section.get(key, []):
            grants.append(Grant(expand(raw, ctx, f"{label}: agent.{key}"), access, kind, source))
    for raw in section.get("list", []):  # the directory's names, not what is in it
        listed = expand(raw, ctx, f"{label}: agent.list")
        grants.append(Grant(list_only(listed), "read", "file", f"{source}: list only"))
    create = tuple(expand(raw, ctx, f"{label}: agent.create") for raw in section.get("create", []))
    roots = tuple(install_roots(program, env or os.environ, ctx.home)) if program else ()
    return AgentProfile(
        name=os.path.basename(name).removesuffix(".toml"),
        label=label,
        description=description,
        grants=tuple(dict.fromkeys(grants)),
        roots=roots,
        env={k: _home_path(str(v), ctx.home) for k, v in section.get("env", {}).items()},
        create=create,
        start_note=section.get("start_note", ""),
        start_note_unless=tuple(section.get("start_note_unless", [])),
    )


def _home_path(value: str, home: str) -> str:
    """An [agent.env] value: ``~/...`` is under the home (a cache of the agent's own), anything else as is."""
    return os.path.join(home, value[2:]) if value.startswith("~/") and home else value


def list_only(directory: str) -> str:
    """A file grant that lets ``directory`` itself be opened (listed) and nothing in it: a pattern naming
    exactly it (``/home/[a]lice``). A rule on the directory would cover its whole tree in Landlock, so
    there is none: the supervisor opens it (``policy.access``: a pattern covers the names it matches)."""
    parent, name = os.path.split(directory.rstrip("/"))
    if not name:
        raise UsageError(f"agent.list: {directory!r} is not a directory below /")
    escaped = glob.escape(name)
    if escaped == name:
        escaped = f"[{name[0]}]{name[1:]}"
    return os.path.join(parent, escaped)


def detect(program: str, ctx: Context) -> str | None:
    """The built-in agent profile matching the resolved ``program``: by its name, its link's target, or a
    package on its real path (``node_modules/@anthropic-ai/claude-code``, a venv named ``aider-chat``)."""
    names = {os.path.basename(program)}
    real = os.path.realpath(program)
    names.add(os.path.basename(real))
    parts = set(real.split("/"))
    words = real.split("/")
    scoped = {f"{a}/{b}" for a, b in zip(words, words[1:], strict=False) if a.startswith("@")}
    for name in AGENT_NAMES:
        _label, section, _ = _agent_section(name, ctx)
        programs = set(section.get("programs", []))
        packages = set(section.get("packages", []))
        if names & programs or (packages & (parts | scoped)):
            return name
    return None


def pick_agent(choice: str | None, program: str | None, ctx: Context, env: Mapping[str, str]):
    """``--agent NAME|PATH|none`` or, without it, the profile detected from the resolved program."""
    if choice == "none":
        return None
    name = choice or (detect(program, ctx) if program else None)
    if name is None:
        return None
    return load_agent(name, ctx, program, env)


# --- Install trees ---------------------------------------------------------------------------------------


def _too_wide(path: str, home: str) -> bool:
    """Never a tree root: /, $HOME or one of its ancestors, a top-level directory."""
    if path in ("/", "") or path.count("/") < 2:
        return True
    return bool(home) and under(home, path)


def install_root(real: str, home: str) -> str:
    """The install tree holding the file ``real``: its ``node_modules`` package (or, for a package whose
    dependencies were hoisted beside it, that ``node_modules``), its venv, the prefix above ``bin/``, the
    directory holding it; the file alone where that directory is ``$HOME``, one above it, or ``/``."""
    directory = os.path.dirname(real)
    d = directory
    while not _too_wide(d, home):
        parent = os.path.dirname(d)
        scope = os.path.basename(parent)
        package = None
        if scope == "node_modules":
            package = d
        elif scope.startswith("@") and os.path.basename(os.path.dirname(parent)) == "node_modules":
            package = d
        if package is not None:
            modules = os.path.dirname(package) if scope == "node_modules" else os.path.dirname(parent)
            if os.path.isdir(os.path.join(package, "node_modules")) or _too_wide(modules, home):
                return package
            return modules  # dependencies hoisted beside it (a non-global install under a prefix)
        if os.path.isfile(os.path.join(d, "pyvenv.cfg")):
            return d
        d = parent
    if os.path.basename(directory) in ("bin", "sbin") and not _too_wide(os.path.dirname(directory), home):
        return os.path.dirname(directory)
    return real if _too_wide(directory, home) else directory  # ~/tool: the file alone, never ~


def _read_head(path: str) -> bytes:
    try:
        with open(path, "rb") as f:
            return f.read(_SHEBANG_MAX)
    except OSError:
        return b""


def _shebang(path: str) -> list[str] | None:
    head = _read_head(path)
    if not head.startswith(b"#!"):
        return None
    line = head[2:].split(b"\n", 1)[0].decode(errors="replace").strip()
    return line.split() or None


def interpreter(path: str, env: Mapping[str, str]) -> str | None:
    """The program a ``#!`` script runs under (``#!/usr/bin/env node`` -> node on PATH), or None."""
    words = _shebang(path)
    if not words:
        return None
    if os.path.basename(words[0]) == "env":
        rest = [w for w in words[1:] if not w.startswith("-") and "=" not in w]
        return shutil.which(rest[0], path=env.get("PATH")) if rest else None
    return words[0]


def shell_of_script(path: str) -> tuple[str, list[str]] | None:
    """(shell name, the arguments the kernel would pass it) when ``path`` is a script for a shell, directly
    (``#!/bin/sh -e``: the rest of the line is one argument) or through env (``#!/usr/bin/env bash``,
    ``#!/usr/bin/env -S bash -e``); else None."""
    words = _shebang(path)
    if not words:
        return None
    if os.path.basename(words[0]) == "env":
        split = len(words) > 1 and words[1] == "-S"
        words = words[2:] if split else words[1:2]
        if not words:
            return None
        args = words[1:]
    else:
        args = [" ".join(words[1:])] if len(words) > 1 else []
    name = os.path.basename(words[0])
    return (name, args) if name in SHELL_NAMES else None


def install_roots(program: str, env: Mapping[str, str], home: str) -> list[str]:
    """The install trees of ``program`` and of the interpreters its ``#!`` lines name (at most 6 hops), and
    a venv's base interpreter (``pyvenv.cfg`` ``home``)."""
    roots: list[str] = []
    seen: set[str] = set()
    todo = [program]
    while todo and len(seen) < 6:
        real = os.path.realpath(todo.pop())
        if real in seen or not os.path.exists(real):
            continue
        seen.add(real)
        root = install_root(real, home)
        if root not in roots:
            roots.append(root)
        cfg = os.path.join(root, "pyvenv.cfg")
        if os.path.isfile(cfg):
            base = _pyvenv_home(cfg)
            if base:
                todo.append(os.path.join(base, "python3"))
        found = interpreter(real, env)
        if found:
            todo.append(found)
    return roots


def _pyvenv_home(cfg: str) -> str | None:
    try:
        with open(cfg) as f:
            for line in f:
                key, _, value = line.partition("=")
                if key.strip() == "home":
                    return value.strip()
    except OSError:
        pass
    return None


_MANAGER_SHIM = re.compile(rb'exec "([^"]+/libexec/(?:pyenv|rbenv))" exec ')
_MANAGER_ROOT = re.compile(rb'export ((?:PYENV|RBENV)_ROOT)="([^"]*)"')


@dataclass(frozen=True)
class ShimTarget:
    """What a version manager's shim runs, and what its ``exec`` sets around it (pyenv-exec, rbenv-exec):
    ``<MANAGER>_ROOT`` and ``<MANAGER>_VERSION`` exported, the version's bin directory first on PATH."""

    program: str
    variables: Mapping[str, str]
    bin_dir: str | None  # None for the "system" version (the manager adds nothing to PATH then)


def _ask_manager(tool: str, args: list[str], env: Mapping[str, str]) -> str | None:
    try:
        out = subprocess.run(
            [tool, *args], env=dict(env), capture_output=True, text=True, timeout=20, stdin=subprocess.DEVNULL
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    lines = out.stdout.strip().splitlines()
    return lines[-1] if out.returncode == 0 and lines else None


def resolve_version_shim(path: str, env: Mapping[str, str]) -> ShimTarget | None:
    """The real program behind a version manager's shim script (pyenv, rbenv: ``<root>/shims/NAME``, a
    bash script that re-enters the manager through more bash scripts, each of which would be routed as a
    command), asked of the manager itself as the user's shell would, with what the manager's exec would set
    (issue 20: ``run`` kept neither PYENV_VERSION nor the version's PATH); None when ``path`` is not such a
    shim or the manager cannot say."""
    try:
        with open(path, "rb") as f:
            head = f.read(4096)
    except OSError:
        return None
    found = _MANAGER_SHIM.search(head) if head.startswith(b"#!") else None
    if found is None:
        return None
    tool = os.fsdecode(found.group(1))
    if not os.access(tool, os.X_OK):
        return None
    env = dict(env)
    exported = _MANAGER_ROOT.search(head)
    variables = {}
    if exported is not None:  # the shim exports its root before it runs the manager
        env[os.fsdecode(exported.group(1))] = variables[os.fsdecode(exported.group(1))] = os.fsdecode(
            exported.group(2)
        )
    program = _ask_manager(tool, ["which", os.path.basename(path)], env)
    if program is None or not os.access(program, os.X_OK):
        return None
    prefix = os.path.basename(tool).upper()
    version = _ask_manager(tool, ["version-name"], env)
    if version:
        variables[f"{prefix}_VERSION"] = version
    root = variables.get(f"{prefix}_ROOT") or env.get(f"{prefix}_ROOT", "")
    bin_dir = os.path.dirname(program)
    inside = bool(root) and under(bin_dir, root.rstrip("/"))  # pyenv-exec: "only for non-system version"
    return ShimTarget(program, variables, bin_dir if inside else None)


# --- The user's toolchain ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Toolchain:
    """Computed from PATH at start: trees to read (and execute), and the PATH directories themselves,
    which commands may never write (a file planted there runs later, unsandboxed)."""

    read: tuple[str, ...]
    path_dirs: tuple[str, ...]


def _system(path: str) -> bool:
    return any(under(path, top) for top in _SYSTEM)


def _toolchain_root(real: str, home: str) -> list[str]:
    """A PATH directory's tree: the prefix above ``bin``/``shims`` (``~/.pyenv``, ``~/.cargo``, an nvm
    version), the directory alone under ``$HOME`` itself or ``~/.local``; a GOPATH gives ``bin`` and
    ``pkg/mod`` only (its ``src`` holds other projects)."""
    if os.path.basename(real) not in ("bin", "sbin", "shims"):
        return [real]
    parent = os.path.dirname(real)
    if _too_wide(parent, home) or parent == os.path.join(home, ".local"):
        return [real]
    if os.path.isdir(os.path.join(parent, "src")) and os.path.isdir(os.path.join(parent, "pkg")):
        return [real, os.path.join(parent, "pkg", "mod")]
    return [parent]


def _outward_links(
    directory: str, inside: str, depth: int, budget: list[int], system: bool = False
) -> Iterable[str]:
    """Real paths of the symlinks under ``directory`` (``depth`` levels) that lead outside ``inside``.
    ``system``: only those leading out of the system directories, judged first by the link's own text
    (a system PATH directory holds thousands of links into itself: resolving each costs ~0.2 ms)."""
    try:
        entries = os.scandir(directory)
    except OSError:
        return
    with entries:
        for entry in entries:
            if budget[0] <= 0:
                return
            budget[0] -= 1
            try:
                if entry.is_symlink():
                    if system:
                        text = os.readlink(entry.path)
                        if "/" not in text or _system(os.path.normpath(os.path.join(directory, text))):
                            continue
                    real = os.path.realpath(entry.path)
                    if not under(real, inside) and os.path.exists(real):
                        yield real
                elif depth > 1 and entry.is_dir(follow_symlinks=False):
                    yield from _outward_links(entry.path, inside, depth - 1, budget)
            except OSError:
                continue


def toolchain(env: Mapping[str, str], home: str, skip: Iterable[str] = ()) -> Toolchain:
    """The trees the user's PATH resolves into, computed at start. ``skip``: directories that are granted
    anyway (the workdir, the session's own) and whose PATH entries are neither read grants nor protected;
    their links outward are still followed (a project's ``.venv/bin/python`` into a pyenv build)."""
    skip = tuple(os.path.realpath(s) for s in skip)
    read: list[str] = []
    dirs: list[str] = []
    budget = [_SCAN_BUDGET]

    def add(path: str) -> None:
        if path and os.path.isdir(path) and not _system(path) and not _too_wide(path, home):
            if not any(under(path, r) for r in read) and not any(under(path, s) for s in skip):
                read[:] = [r for r in read if not under(r, path)] + [path]

    for entry in env.get("PATH", "").split(os.pathsep):
        if not entry or not os.path.isabs(entry):
            continue
        real = os.path.realpath(entry)
        if not os.path.isdir(real):
            continue
        local = not _system(real) and not any(under(real, s) for s in skip)
        if local:
            if real not in dirs and not _too_wide(real, home):
                dirs.append(real)
            for root in _toolchain_root(real, home):
                add(root)
            if os.path.exists(os.path.join(real, "rustup")):  # rustup's proxies (cargo, rustc) need its home
                add(env.get("RUSTUP_HOME") or os.path.join(home, ".rustup"))
        # Links out of the PATH directory (~/.local/bin/aider -> a pipx venv; .venv/bin/python -> pyenv):
        # each target's install tree. System directories only where they lead out of the system.
        # (Of the system's, only the admin's own: the distribution's /usr/bin never links into a home.)
        if not _system(real) or under(real, "/usr/local") or under(real, "/opt"):
            for target in _outward_links(real, real, 1, budget, system=not local):
                if local or not _system(target):
                    add(install_root(target, home))
        if local:  # links one level further down a tree (~/.pyenv/versions/3.12 -> /opt/python-3.12)
            for root in _toolchain_root(real, home):
                if root != real:
                    for target in _outward_links(root, root, 2, budget):
                        add(target if os.path.isdir(target) else install_root(target, home))
    for var in ("PYENV_ROOT", "NVM_DIR", "VOLTA_HOME", "BUN_INSTALL", "GOROOT", "RUSTUP_HOME"):
        value = env.get(var)
        if value and os.path.isabs(value) and any(under(d, os.path.realpath(value)) for d in dirs):
            add(os.path.realpath(value))  # a manager's home that some PATH entry lives in
    return Toolchain(tuple(read), tuple(dirs))
