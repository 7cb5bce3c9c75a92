"""Profiles, the security list and command-line grants, resolved into one effective ``Policy``.

Pure: reads TOML files, never touches the kernel. Backends compile a ``Policy`` into their own plan
(``linux.landlock.compile_plan``, ``macos.seatbelt.generate_profile``).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

from nono_supervisor.errors import UsageError
from nono_supervisor.policy.netpolicy import NET_MODES, Pattern, parse_pattern

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "Context",
    "Deny",
    "Grant",
    "Policy",
    "display",
    "PolicyOptions",
    "RUNS_LATER",
    "RunsLater",
    "runs_later_list",
    "resolve_policy",
    "security_groups",
    "domain_groups",
    "NET_MODES",
    "DOMAIN_LISTS",
    "GRANT_LISTS",
    "PROMPT_MODES",
]

# List key -> (access, kind). "allow" is read+write.
GRANT_LISTS: dict[str, tuple[str, str]] = {
    "allow": ("allow", "dir"),
    "read": ("read", "dir"),
    "write": ("write", "dir"),
    "allow_file": ("allow", "file"),
    "read_file": ("read", "file"),
    "write_file": ("write", "file"),
}
PROMPT_MODES = ("auto", "tty", "after", "never")
_PROFILE_KEYS = {"extends", "description", "filesystem", "network", "prompt", "agent", "undo"}
_SECTION_KEYS = {
    "filesystem": set(GRANT_LISTS) | {"deny", "probes"},
    "network": {"block", "mode", "allow_domains", "deny_domains", "agent_allow_domains"},
    "prompt": {"mode", "timeout", "quiet", "silent"},
    "undo": {"enabled", "max_mb", "max_age_hours"},  # README "Undo": what is kept, and for how long
    # What only the agent gets (nono_supervisor.policy.agents): its state, never its commands'.
    "agent": set(GRANT_LISTS)
    | {"list", "programs", "packages", "create", "env", "start_note", "start_note_unless"},
}
# [network] list key -> the flag that adds to it (None: profile only).
DOMAIN_LISTS: dict[str, str | None] = {
    "allow_domains": "--allow-domain",
    "deny_domains": "--deny-domain",
    "agent_allow_domains": None,  # the agent's own hosts (its API): never its commands'
}
_MAX_EXTENDS_DEPTH = 16  # a chain longer than this is a cycle or a mistake


@dataclass(frozen=True)
class Context:
    """Where the expansions point, and the paths no policy may make writable (CONTRACT: never grantable)."""

    workdir: str
    home: str
    tmpdir: str
    platform: str = "linux"
    config_dir: str = ""
    protected: tuple[str, ...] = ()
    sealed: tuple[str, ...] = ()  # no access of any kind, whatever is granted (the supervisor's terminal)
    # Groups computed at start (the user's toolchain from PATH, the per-project caches), beside the shipped
    # security list's: ``group:NAME`` in a profile finds them the same way.
    groups: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    # Runs-later entries computed at start (the PATH directories, the git repositories), beside the shipped
    # security list's [runs_later].
    runs_later: tuple[RunsLater, ...] = ()


@dataclass(frozen=True)
class RunsLater:
    """A path from which a program the human runs outside any sandbox executes or loads code on its own
    (DESIGN invariant 10): readable, never writable by a command. ``why``: "program: when it runs"."""

    path: str
    why: str

    @property
    def program(self) -> str:
        return self.why.split(":", 1)[0]


RUNS_LATER = "runs-later"  # the rule of a runs-later denial: final, never asked (answers cannot lift it)


@dataclass(frozen=True)
class Grant:
    path: str
    access: str  # read | write | allow
    kind: str  # dir | file
    source: str  # where it came from: "profile default", "--read", "group:system_read", ...


NEVER_GRANTABLE = "never-grantable"  # the rule of a deny no grant, flag or answer can lift
# The rule of a terminal a command neither was handed nor made (DESIGN.md invariant 11): nothing lifts it.
NOT_ITS_TERMINAL = "a terminal it was not given"
TERMINALS = "/dev/pts"  # every pty of every session of the uid: no grant reaches into it
HANDED_TERMINAL = "terminal"  # the source of the one grant that does: a command's own stdio's node


@dataclass(frozen=True)
class Deny:
    path: str
    rule: str  # "group:deny_credentials", "--deny", ...


@dataclass(frozen=True)
class Probe:
    """A path (an fnmatch pattern) that programs try at every start and do without when refused (the JVM's
    ``/tmp/hsperfdata_$USER``). It grants nothing and adds no Landlock rule: where no grant covers it, its
    denial is attributed to ``rule`` instead of "not granted", so that ``prompt.silent`` (or ``quiet``) can
    name it. A grant that covers it (``--allow /tmp``) still grants it."""

    pattern: str
    rule: str


@dataclass(frozen=True)
class PolicyOptions:
    """The policy flags of run/serve/exec/policy, exactly as the user gave them."""

    profile: str = "default"
    allow: tuple[str, ...] = ()
    read: tuple[str, ...] = ()
    write: tuple[str, ...] = ()
    allow_file: tuple[str, ...] = ()
    read_file: tuple[str, ...] = ()
    write_file: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()
    net_block: bool = False
    prompt: str | None = None
    allow_domains: tuple[str, ...] = ()
    deny_domains: tuple[str, ...] = ()
    net_mode: str | None = None  # --net-mode; None: the profile's, or domains when a domain flag is given
    no_undo: bool = False  # --no-undo: no command's changes are recorded


@dataclass(frozen=True)
class Policy:
    profile: str
    grants: tuple[Grant, ...]
    denies: tuple[Deny, ...]
    protected: tuple[str, ...]
    net_block: bool
    prompt: str
    prompt_timeout: float
    workdir: str
    home: str
    tmpdir: str
    platform: str
    sources: tuple[str, ...] = field(default=())  # the profile files read, base first
    prompt_quiet: tuple[str, ...] = ()  # deny rules whose denials are final without a question
    prompt_silent: tuple[str, ...] = ()  # ...and not reported on stderr either (harmless probes): audit only
    probes: tuple[Probe, ...] = ()  # the rule of an ungranted path that programs only probe (Probe)
    # The network: "open", "domains" (only the hosts allowed, through the supervisor's proxy) or "block".
    # ``net_block`` is true for both restricted modes: every layer that blocks under --net-block blocks in
    # domains mode too, except the route to the proxy.
    net_mode: str = "open"
    allow_domains: tuple[Pattern, ...] = ()
    deny_domains: tuple[Pattern, ...] = ()
    agent_domains: tuple[Pattern, ...] = ()  # allowed to the agent's own connections only
    runs_later: tuple[RunsLater, ...] = ()  # never writable by a command but by an explicit flag (RunsLater)
    # Undo ([undo]): record each command's changes; the session's store's cap and the age of what it keeps.
    undo: bool = True
    undo_max_mb: int = 1024
    undo_max_age_hours: float = 24.0

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def display(self, path: str) -> str:
        return display(path, self.home)


def display(path: str, home: str) -> str:
    """A path as the user wrote it: under $HOME with ``~``."""
    if path == home:
        return "~"
    if home and path.startswith(home.rstrip("/") + "/"):
        return "~" + path[len(home.rstrip("/")) :]
    return path


def _uses_home(raw: str) -> bool:
    return raw == "~" or raw.startswith("~/") or "$HOME" in raw or "${HOME}" in raw


def _home_usable(ctx: Context) -> bool:
    return bool(ctx.home) and os.path.normpath(ctx.home) != "/"


def expand(raw: str, ctx: Context, where: str, grant: bool = True) -> str:
    """``~``, ``$HOME``, ``$WORKDIR``, ``$TMPDIR`` and relative paths (against the workdir), normalised."""
    if not isinstance(raw, str) or not raw:
        raise UsageError(f"{where}: expected a path, got {raw!r}")
    value = raw
    uses_home = value == "~" or value.startswith("~/") or "$HOME" in value or "${HOME}" in value
    if grant and uses_home and (not ctx.home or os.path.normpath(ctx.home) == "/"):
        # An empty HOME would turn "--allow ~" into "--allow /". (A deny of "/.ssh" is harmless.)
        raise UsageError(f"{where}: {raw!r} needs $HOME, which is unset or '/'")
    if value == "~" or value.startswith("~/"):
        value = ctx.home + value[1:]
    for name, replacement in (("HOME", ctx.home), ("WORKDIR", ctx.workdir), ("TMPDIR", ctx.tmpdir)):
        value = value.replace("${" + name + "}", replacement).replace("$" + name, replacement)
    if "$" in value or value.startswith("~"):
        raise UsageError(f"{where}: cannot expand {raw!r} (known: ~, $HOME, $WORKDIR, $TMPDIR)")
    return os.path.normpath(os.path.join(ctx.workdir, value))


def security_groups(platform: str) -> dict[str, tuple[str, ...]]:
    """The groups of the shipped security list, for one platform (common entries first)."""
    data = tomllib.loads(resources.files("nono_supervisor").joinpath("data/security.toml").read_text())
    groups: dict[str, list[str]] = {}
    for section in ("common", platform):
        for name, paths in data.get(section, {}).get("groups", {}).items():
            groups.setdefault(name, []).extend(paths)
    return {name: tuple(paths) for name, paths in groups.items()}


def runs_later_list(platform: str) -> dict[str, str]:
    """The shipped security list's runs-later entries for one platform: raw path -> "program: when"."""
    data = tomllib.loads(resources.files("nono_supervisor").joinpath("data/security.toml").read_text())
    entries: dict[str, str] = {}
    for section in ("common", platform):
        entries.update(data.get(section, {}).get("runs_later", {}))
    return entries


def _runs_later(ctx: Context) -> tuple[RunsLater, ...]:
    """The shipped entries expanded (a ~ entry means nothing without a home), then the session's own."""
    shipped = [
        RunsLater(expand(raw, ctx, "security list: runs_later", grant=False), why)
        for raw, why in runs_later_list(ctx.platform).items()
        if _home_usable(ctx) or not _uses_home(raw)
    ]
    return tuple(dict.fromkeys([*shipped, *ctx.runs_later]))


def domain_groups() -> dict[str, tuple[str, ...]]:
    """The host groups of the shipped security list (``[domains]``), for ``group:NAME`` in domain lists."""
    data = tomllib.loads(resources.files("nono_supervisor").joinpath("data/security.toml").read_text())
    return {name: tuple(hosts) for name, hosts in data.get("domains", {}).items()}


def _read_toml(path: Path) -> dict[str, Any]:
    try:
        with path.open("rb") as f:
            return tomllib.load(f)
    except OSError as e:
        raise UsageError(f"{path}: cannot read profile: {e.strerror}") from e
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:  # tomllib reads UTF-8 only (issue 23)
        raise UsageError(f"{path}: invalid TOML: {e}") from e


def _validate(data: dict[str, Any], origin: str) -> None:
    for key, value in data.items():
        if key not in _PROFILE_KEYS:
            raise UsageError(f"{origin}: unknown key '{key}'")
        if key in _SECTION_KEYS:
            if not isinstance(value, dict):
                raise UsageError(f"{origin}: '{key}' must be a table")
            for sub in value:
                if sub not in _SECTION_KEYS[key]:
                    raise UsageError(f"{origin}: unknown key '{key}.{sub}'")
    for key in [*GRANT_LISTS, "deny", "probes"]:
        value = data.get("filesystem", {}).get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UsageError(f"{origin}: 'filesystem.{key}' must be a list of paths")
    network = data.get("network", {})
    block = network.get("block", False)
    if not isinstance(block, bool):
        raise UsageError(f"{origin}: 'network.block' must be true or false")
    if "mode" in network:
        if network["mode"] not in NET_MODES:
            raise UsageError(f"{origin}: 'network.mode' must be one of {', '.join(NET_MODES)}")
        if "block" in network and block != (network["mode"] == "block"):
            raise UsageError(f"{origin}: 'network.block' contradicts 'network.mode'")
    for key in DOMAIN_LISTS:
        value = network.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UsageError(f"{origin}: 'network.{key}' must be a list of host patterns")
    mode = data.get("prompt", {}).get("mode", "auto")
    if mode not in PROMPT_MODES:
        raise UsageError(f"{origin}: 'prompt.mode' must be one of {', '.join(PROMPT_MODES)}")
    for key in ("quiet", "silent"):
        quiet = data.get("prompt", {}).get(key, [])
        groups_only = all(isinstance(q, str) and q.startswith("group:") for q in quiet)
        if not isinstance(quiet, list) or not groups_only:
            raise UsageError(f"{origin}: 'prompt.{key}' must be a list of group:NAME")
    _validate_agent(data.get("agent", {}), origin)
    timeout = data.get("prompt", {}).get("timeout", 60)
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
        raise UsageError(f"{origin}: 'prompt.timeout' must be a positive number of seconds")
    undo = data.get("undo", {})
    if not isinstance(undo.get("enabled", True), bool):
        raise UsageError(f"{origin}: 'undo.enabled' must be true or false")
    for key in ("max_mb", "max_age_hours"):
        value = undo.get(key, 1)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
            raise UsageError(f"{origin}: 'undo.{key}' must be a positive number")


def _validate_agent(agent: dict[str, Any], origin: str) -> None:
    for key in [*GRANT_LISTS, "list", "programs", "packages", "create", "start_note_unless"]:
        value = agent.get(key, [])
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise UsageError(f"{origin}: 'agent.{key}' must be a list of strings")
    env = agent.get("env", {})
    if not isinstance(env, dict) or not all(isinstance(v, str) for v in env.values()):
        raise UsageError(f"{origin}: 'agent.env' must be a table of strings")
    if not isinstance(agent.get("start_note", ""), str):
        raise UsageError(f"{origin}: 'agent.start_note' must be a string")


def _find_profile(name: str, ctx: Context, relative_to: Path | None) -> tuple[str, Path | None]:
    """A profile name or path -> (label, file); file None means the built-in of that name."""
    if "/" in name or name.endswith(".toml"):
        path = Path(os.path.expanduser(name))
        if not path.is_absolute():
            path = (relative_to or Path(ctx.workdir)) / path
        return str(path), path
    if ctx.config_dir:
        user = Path(ctx.config_dir) / "profiles" / f"{name}.toml"
        if user.is_file():
            return str(user), user
    builtin = resources.files("nono_supervisor").joinpath(f"data/profiles/{name}.toml")
    if not builtin.is_file():
        raise UsageError(f"--profile: no profile named '{name}'")
    return f"built-in {name}", None


def load_chain(name: str, ctx: Context) -> list[tuple[str, dict[str, Any]]]:
    """The profile and everything it extends, base first."""
    chain: list[tuple[str, dict[str, Any]]] = []
    relative_to: Path | None = None
    seen: set[str] = set()
    while name:
        label, path = _find_profile(name, ctx, relative_to)
        if label in seen or len(chain) >= _MAX_EXTENDS_DEPTH:
            raise UsageError(f"{label}: 'extends' forms a cycle")
        seen.add(label)
        if path is None:
            text = resources.files("nono_supervisor").joinpath(f"data/profiles/{name}.toml").read_text()
            data = tomllib.loads(text)
        else:
            data = _read_toml(path)
            relative_to = path.parent
        _validate(data, label)
        chain.append((label, data))
        extends = data.get("extends", "")
        if not isinstance(extends, str):
            raise UsageError(f"{label}: 'extends' must be a profile name or path")
        name = extends
    chain.reverse()
    return chain


def _entries(
    values: Iterable[str], groups: Mapping[str, tuple[str, ...]], origin: str
) -> list[tuple[str, str]]:
    """Expand ``group:NAME`` entries -> (raw path, source label)."""
    out: list[tuple[str, str]] = []
    for value in values:
        if value.startswith("group:"):
            group = value[len("group:") :]
            if group not in groups:
                raise UsageError(f"{origin}: unknown group '{group}'")
            out.extend((path, value) for path in groups[group])
        else:
            out.append((value, origin))
    return out


def _domains(values: Iterable[str], origin: str, where: str) -> list[Pattern]:
    """Host patterns, ``group:NAME`` entries expanded from the security list's ``[domains]``."""
    groups = domain_groups()
    out: list[Pattern] = []
    for value in values:
        if value.startswith("group:"):
            group = value[len("group:") :]
            if group not in groups:
                raise UsageError(f"{where}: unknown domain group '{group}'")
            out.extend(parse_pattern(host, value, f"{where} ({value})") for host in groups[group])
        else:
            out.append(parse_pattern(value, origin, where))
    return out


def _net_mode(chain: list[tuple[str, dict[str, Any]]], options: PolicyOptions) -> str:
    """Profiles in order (``mode``; ``block = true`` is mode block, ``false`` lifts a block), then the
    flags: --net-block, else --net-mode, else a domain flag turns an open network into domains mode."""
    mode = "open"
    for _label, data in chain:
        network = data.get("network", {})
        if "mode" in network:
            mode = network["mode"]
        elif "block" in network:
            mode = "block" if network["block"] else ("open" if mode == "block" else mode)
    if options.net_block:
        return "block"
    if options.net_mode is not None:
        if options.net_mode not in NET_MODES:
            raise UsageError(f"--net-mode: must be one of {', '.join(NET_MODES)}")
        return options.net_mode
    if mode == "open" and (options.allow_domains or options.deny_domains):
        return "domains"
    return mode


def resolve_policy(options: PolicyOptions, ctx: Context) -> Policy:
    """Profile chain, then the flags on top: the effective policy for one platform."""
    groups = {**security_groups(ctx.platform), **ctx.groups}
    chain = load_chain(options.profile, ctx)
    grants: list[Grant] = []
    denies: list[Deny] = []
    probes: list[Probe] = []
    prompt = "auto"
    timeout: float = 60
    quiet: list[str] = []
    silent: list[str] = []
    undo: dict[str, Any] = {}
    domains: dict[str, list[Pattern]] = {key: [] for key in DOMAIN_LISTS}
    for label, data in chain:
        for key in DOMAIN_LISTS:
            values = data.get("network", {}).get(key, [])
            domains[key] += _domains(values, f"profile {label}", f"{label}: network.{key}")
        fs = data.get("filesystem", {})
        for key, (access, kind) in GRANT_LISTS.items():
            for raw, source in _entries(fs.get(key, []), groups, f"profile {label}"):
                if source.startswith("group:") and not _home_usable(ctx) and _uses_home(raw):
                    continue  # a group's ~ entries mean nothing without a home (an explicit one is an error)
                grants.append(Grant(expand(raw, ctx, f"{label}: filesystem.{key}"), access, kind, source))
        for raw, source in _entries(fs.get("deny", []), groups, f"profile {label}"):
            denies.append(Deny(expand(raw, ctx, f"{label}: filesystem.deny", grant=False), source))
        for raw, source in _entries(fs.get("probes", []), groups, f"profile {label}"):
            probes.append(Probe(expand(raw, ctx, f"{label}: filesystem.probes", grant=False), source))
        prompt = data.get("prompt", {}).get("mode", prompt)
        timeout = data.get("prompt", {}).get("timeout", timeout)
        quiet += data.get("prompt", {}).get("quiet", [])
        silent += data.get("prompt", {}).get("silent", [])
        undo = {**undo, **data.get("undo", {})}
    for key, (access, kind) in GRANT_LISTS.items():
        flag = "--" + key.replace("_", "-")
        for raw in getattr(options, key):
            grants.append(Grant(expand(raw, ctx, flag), access, kind, flag))
    denies.extend(Deny(expand(raw, ctx, "--deny", grant=False), "--deny") for raw in options.deny)
    denies.extend(Deny(os.path.normpath(path), NEVER_GRANTABLE) for path in ctx.sealed)
    for key, domain_flag in DOMAIN_LISTS.items():
        if domain_flag is not None:
            domains[key] += _domains(getattr(options, key), domain_flag, domain_flag)
    net_mode = _net_mode(chain, options)
    if options.prompt is not None:
        if options.prompt not in PROMPT_MODES:
            raise UsageError(f"--prompt: must be one of {', '.join(PROMPT_MODES)}")
        prompt = options.prompt
    return Policy(
        profile=options.profile,
        grants=tuple(dict.fromkeys(grants)),
        denies=tuple(dict.fromkeys(denies)),
        protected=tuple(os.path.normpath(p) for p in ctx.protected),
        net_block=net_mode != "open",
        prompt=prompt,
        prompt_timeout=float(timeout),
        workdir=ctx.workdir,
        home=ctx.home,
        tmpdir=ctx.tmpdir,
        platform=ctx.platform,
        sources=tuple(label for label, _ in chain),
        # A silent group is never asked about either; nor is a runs-later path (no answer lifts it).
        prompt_quiet=tuple(dict.fromkeys(quiet + silent + [RUNS_LATER])),
        prompt_silent=tuple(dict.fromkeys(silent)),
        probes=tuple(dict.fromkeys(probes)),
        net_mode=net_mode,
        allow_domains=tuple(dict.fromkeys(domains["allow_domains"])),
        deny_domains=tuple(dict.fromkeys(domains["deny_domains"])),
        agent_domains=tuple(dict.fromkeys(domains["agent_allow_domains"])),
        runs_later=_runs_later(ctx),
        undo=undo.get("enabled", True) and not options.no_undo,
        undo_max_mb=int(undo.get("max_mb", 1024)),
        undo_max_age_hours=float(undo.get("max_age_hours", 24)),
    )
