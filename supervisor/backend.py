"""The platform seam: what one command gets, and the backend of this OS that enforces it.

One command's way (README "Architecture"): the server (or ``exec``, or ``run`` for the agent) asks
``command_gets`` what the command gets, a pure function of the session's policy state, the route and the
stdio; ``current()``, the backend of this OS, compiles that (``compile``: a Landlock ruleset, a Seatbelt
profile) and starts the command under it (``start``), which returns a ``Process``. ``start`` below is that
sequence in one call.

``current()`` is chosen once per process and is the supervisor's only test of ``sys.platform`` (but the
CLI's help text): everything that differs between Linux and macOS is a member of ``Backend``, implemented by
``linux.backend`` and ``macos.backend``, which never import each other (tests/test_macos_backend.py).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

from nono_supervisor.errors import SandboxError
from nono_supervisor.policy.profile import Grant, Policy

if TYPE_CHECKING:
    from nono_supervisor.policy.access import AccessIndex
    from nono_supervisor.session import Session

__all__ = [
    "PolicySource",
    "CommandGets",
    "command_gets",
    "Launch",
    "Hooks",
    "Process",
    "GroupSignal",
    "Checkup",
    "Support",
    "Backend",
    "current",
    "for_platform",
    "start",
    "NO_STDIO",
    "NO_TRAP_GIVES_UP",
    "NO_TRAP_UNIX_SOCKETS",
]

# The widest of them: run, exec and serve with --no-trap say it at start (cli), as policy and doctor do.
NO_TRAP_UNIX_SOCKETS = (
    "unix sockets: connect/send to any socket file the user can reach (ssh-agent, gpg-agent, docker.sock)"
    " is not mediated (Landlock before ABI 9 cannot stop it)"
)
# What Landlock alone cannot do, so what ``--no-trap`` gives up (printed by ``policy`` and ``doctor``).
NO_TRAP_GIVES_UP = (
    NO_TRAP_UNIX_SOCKETS,
    "metadata: chmod, chown, utimes and xattrs of any file the user owns, denied and never-grantable ones"
    " included; setuid bits can be set",
    "hard links made outside the sandbox read through to denied files",
    "inotify/fanotify watches on denied directories see the names and timing of what happens there",
    "--net-block: only TCP connect/bind are refused; UDP, MPTCP, raw sockets and TCP fast open are not",
    "no denial reports, no questions, no grants Landlock cannot express (creating or removing directly in"
    " the parent of a denied or runs-later path is refused: in the workdir's own root, beside .mcp.json)",
    "new ptys (openpty, pexpect, script, tmux): refused, since Landlock grants no /dev/pts node but the"
    " handed terminal's (the supervisor opens a command's own ptys through the master it holds)",
)

# The stdio of a command that is not started (``policy --format``): no terminal handed, none granted.
NO_STDIO = (-1, -1, -1)


# ---- what a command gets -----------------------------------------------------------------------------------


class PolicySource(Protocol):
    """What ``command_gets`` and the backends read of the session's policy state (``session.PolicyState``;
    the members named here are all they use)."""

    @property
    def policy(self) -> Policy: ...
    @property
    def trap(self) -> bool: ...
    @property
    def socket_path(self) -> Path | None: ...
    def route_grants(self) -> list[Grant]: ...
    def terminal_grants(self, stdio: tuple[int, int, int]) -> list[Grant]: ...
    def own_sockets(self) -> frozenset[str]: ...
    def own_terminals(self) -> frozenset[str]: ...
    def linked_denied(self, policy: Policy) -> frozenset[tuple[int, int]]: ...
    def access_index(self, policy: Policy) -> AccessIndex: ...
    def policy_for(self, platform: str) -> Policy: ...


@dataclass(frozen=True)
class CommandGets:
    """What one command gets, on every platform: its policy, the grants every command of the session adds
    to it (read and exec of nono-shell itself for nested routing, the terminal it was handed), whether the
    in-flight layer is on, the supervisor's own sockets and terminals (never grantable), and the denied
    files that have other names (Landlock follows names: the notify layer checks their inodes).

    ``state`` is the policy state it was read from (linked denied files and access indexes are asked again
    while the command runs); ``session`` the session whose services the sandbox is tied to (the network
    proxy in domains mode, the late-deny watch, the session's /dev/shm, macOS's monitor)."""

    policy: Policy
    extra: tuple[Grant, ...]
    trap: bool
    own_sockets: frozenset[str]
    own_terminals: frozenset[str]
    linked: frozenset[tuple[int, int]]  # at start; empty without trap (nothing would check them)
    state: PolicySource = field(compare=False, repr=False)
    session: Session = field(compare=False, repr=False)

    def linked_denied(self) -> frozenset[tuple[int, int]]:
        """The linked denied files now: links made outside the sandbox while the command runs count."""
        return self.state.linked_denied(self.policy)

    def access(self) -> AccessIndex:
        """The policy's intent for concrete paths (built once per policy by the session)."""
        return self.state.access_index(self.policy)


def command_gets(
    session: Session,
    stdio: tuple[int, int, int],
    policy: Policy | None = None,
    *,
    trap: bool | None = None,
) -> CommandGets:
    """What a command of ``session`` started on ``stdio`` gets under ``policy`` (default: the session's
    now); ``trap`` overrides the session's in-flight layer (tests, ``--no-trap`` benches). A function of
    the session's policy state alone (``PolicySource``) and the one place it is assembled: the backends'
    ``start``, ``policy --format landlock|seatbelt`` and macOS's profile all read it here."""
    state = session.state
    policy = policy or state.policy
    trap = state.trap if trap is None else trap
    return CommandGets(
        policy=policy,
        extra=tuple(state.route_grants() + state.terminal_grants(stdio)),
        trap=trap,
        own_sockets=state.own_sockets(),
        own_terminals=state.own_terminals(),
        linked=state.linked_denied(policy) if trap else frozenset(),
        state=state,
        session=session,
    )


# ---- how it is started -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Launch:
    """What to run and on which fds. ``leave_to_kernel``: a command of the agent's (not the agent, whose
    loop must see every exec): what the kernel's rules decide alone may be left to them where no report is
    lost (Linux: opens and execve, README "Left to Landlock"). ``exec_fd``: an fd of the file to exec in
    place of ``path`` (the agent's real shell, which its routing namespace hides; -1: none), or ignored
    where the backend has no such exec (macOS's helper execs ``path``)."""

    path: str
    argv: list[str]
    env: dict[str, str]
    cwd: str | None
    stdio: tuple[int, int, int]  # fds to place on 0, 1, 2 (-1: leave closed)
    ctty: bool = False  # make stdin the controlling terminal (the agent's pty, a command's lease)
    leave_to_kernel: bool = False
    exec_fd: int = -1


@dataclass(frozen=True)
class Hooks:
    """What the supervisor is told, and asked, while the command runs. ``on_decision(decision, denial)``:
    each decision's report. ``consent(op, path, rule, is_dir)``: whether a human allows what the policy
    denies, while the syscall waits (Linux's in-flight layer; macOS asks after the fact). ``on_late_deny(line,
    audit fields)``: a denied node moved into the command's grants and it was stopped or guarded (Linux).
    ``undo``: the command's ``undo.CommandLog``, where what it changes is recorded first (Linux, trap)."""

    on_decision: Callable[[str, Any], None] | None = None
    consent: Callable[[str, str, str, bool], bool] | None = None
    on_late_deny: Callable[[str, dict], None] | None = None
    undo: Any = None


class Process(Protocol):
    """A running sandboxed command, as the server, ``exec`` and ``run`` hold it. ``keeper`` is the
    supervisor's child (Linux: the keeper; macOS: the command itself), ``pid`` the command (and its process
    group), ``notify`` its in-flight loop (None without one)."""

    @property
    def pid(self) -> int: ...
    @property
    def keeper(self) -> int: ...
    @property
    def notify(self) -> Any: ...
    def signal(self, signo: int) -> None: ...
    def kill_tree(self) -> None: ...
    def wait(self) -> int: ...
    def poll(self) -> int | None: ...
    def exit_fd(self) -> int: ...


class GroupSignal:
    """``Process.signal`` of both backends: the command leads its process group."""

    pid: int

    def signal(self, signo: int) -> None:
        """Deliver to the command's process group (what nono-shell forwards)."""
        try:
            os.killpg(self.pid, signo)
        except ProcessLookupError:
            pass


# ---- the backend -------------------------------------------------------------------------------------------

Line = tuple[bool | None, str, str]  # doctor's: (ok, or None for a warning; what; detail)


class Support(Protocol):
    """What this machine can enforce, probed once and read by ``compile`` and ``doctor`` alike (Linux:
    ``kernel.KernelSupport``, which keeps why Landlock is missing)."""

    def missing(self) -> str | None:
        """Why no command can be sandboxed here, in one phrase; None where one can."""
        ...


@dataclass(frozen=True)
class Checkup:
    """``doctor``'s lines for what the backend needs, and whether a command can be sandboxed here."""

    lines: tuple[Line, ...]
    enforceable: bool


PlanT = TypeVar("PlanT")


class Backend(Protocol[PlanT]):
    """One OS's way to sandbox a command (``linux.backend.LinuxBackend``, ``macos.backend.MacBackend``)."""

    @property
    def platform(self) -> str: ...  # the policy's platform name (``resolve_policy``): linux, macos
    @property
    def preload_var(self) -> str: ...  # the loader's preload variable (interpose)
    @property
    def interpose_library(self) -> str: ...  # the file name setup.py builds the library as
    @property
    def holds_syscalls(self) -> bool: ...  # a syscall can wait for the human's answer (prompt mode tty)
    @property
    def records_changes(self) -> bool: ...  # what a command changes can be recorded first (undo)

    def probe(self) -> Support:
        """What this machine can enforce (cached: the kernel does not change under a running supervisor)."""
        ...

    def doctor(self) -> Checkup:
        """What ``probe`` found and what else the backend needs here, in ``doctor``'s lines."""
        ...

    def enforcement(self, trap: bool) -> str:
        """What enforces a command's policy here (``policy`` prints it)."""
        ...

    def policy_notes(self, gets: CommandGets) -> list[str]:
        """``policy``'s lines on what this platform cannot enforce of ``gets``."""
        ...

    def landlock_plan(self, gets: CommandGets) -> Any:
        """``gets`` as a Landlock plan for this kernel (``policy --format landlock``); SandboxError where
        there is no Landlock."""
        ...

    def compile(self, gets: CommandGets) -> PlanT:
        """``gets`` in the kernel's terms; SandboxError (nothing runs) where it cannot be enforced here."""
        ...

    def start(self, plan: PlanT, launch: Launch, hooks: Hooks) -> Process:
        """Start ``launch`` under ``plan`` (which it consumes); SandboxError: nothing ran."""
        ...

    def finish(self, process: Process) -> None:
        """Let the command's decision stream settle so that its report is complete."""
        ...

    def left_running(self) -> int:
        """Commands that returned but left background jobs the supervisor still holds (the server's cap)."""
        ...

    def serve(self, session: Session) -> None:
        """What a serving session starts once, before its first command (Linux: the late-deny watch)."""
        ...

    def rename_noreplace(self, source: Path, target: Path) -> None:
        """Rename ``source`` to ``target`` in one step unless ``target`` exists (FileExistsError)."""
        ...

    def stderr_of(self, pid: int) -> int:
        """A duplicate of process ``pid``'s stderr, to tell it of a denial while it waits (OSError where it
        cannot be reached: gone, not ours, or no way to take another process's descriptor)."""
        ...

    def namespace_error(self, userns: bool) -> int | None:
        """The agent's routing namespace: 0 if it can be made here, the errno that refused it, or None on a
        platform without mount namespaces."""
        ...


def for_platform(platform: str) -> Backend[Any]:
    """The backend for ``sys.platform`` ``platform``; SandboxError where there is none."""
    if platform.startswith("linux"):
        from nono_supervisor.linux.backend import LinuxBackend

        return LinuxBackend()
    if platform == "darwin":
        from nono_supervisor.macos.backend import MacBackend

        return MacBackend()
    raise SandboxError(f"no sandbox backend for {platform} yet; nothing was run")


_current: Backend[Any] | None = None


def current() -> Backend[Any]:
    """This OS's backend, chosen at first use (tests put another in place of this function)."""
    global _current
    if _current is None:
        _current = for_platform(sys.platform)
    return _current


def start(session: Session, launch: Launch, hooks: Hooks, policy: Policy | None = None) -> Process:
    """Start ``launch`` under what it gets in ``session`` (``policy``: default the session's now)."""
    backend = current()
    return backend.start(backend.compile(command_gets(session, launch.stdio, policy)), launch, hooks)
