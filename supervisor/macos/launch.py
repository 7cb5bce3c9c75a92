"""The darwin side of the platform seam: one command under its Seatbelt profile, its denials reported.

``macos.backend.MacBackend`` calls ``compile_profile`` and ``start``. In order:

1. ``compile_profile``: what the command gets (``backend.command_gets``), its policy resolved for macOS
   (``macos_policy``) with the grants every command gets on top of it, as on Linux (``profile_policy``);
   ``generate_profile`` with a marker of its own (``<session>-<n>``) and the supervisor's socket.
2. ``start``: ``runner.prepare`` / ``runner.spawn``: the helper interpreter applies the profile and execs
   the real program in place, on the client's fds (no pipe, no copy), in a new session. A refused profile or a
   helper that cannot start raises SandboxError: nothing ran.
3. The ``SandboxedProcess`` adapter; when the command has ended, its waiter collects what the session's
   ``log stream`` attributed to the marker and hands each denial to ``on_decision("deny", denial)``, with
   the ``op``, ``path``, ``rule``, ``is_dir`` and ``pid`` the Linux notify loop gives, so the ``nono: denied``
   lines, the audit records and ``--prompt after`` work unchanged.

Denials come from the log only. ``logstream.stderr_denials`` would need the command's stderr, which is the
client's fd, written to directly: reading it would take a pipe in between and a copy of the output (and
``isatty`` would turn false), which the contract forbids. So it is not used here.

There is no in-flight layer on macOS: Seatbelt answers the syscall itself, so a question can only come after
the fact (``--prompt after``); ``trap`` and ``consent`` have nothing to act on.

Everything here imports on any OS; tests run ``start`` on Linux with the runner's OS seam faked.
"""

from __future__ import annotations

import atexit
import itertools
import os
import subprocess
import threading
import weakref
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from nono_supervisor.errors import SandboxError
from nono_supervisor.macos import runner
from nono_supervisor.macos.logstream import Denial as LoggedDenial
from nono_supervisor.macos.logstream import LogMonitor
from nono_supervisor.macos.process import SandboxedProcess
from nono_supervisor.macos.seatbelt import generate_profile
from nono_supervisor.paths import link_target
from nono_supervisor.policy.access import AccessIndex, held_links, real_paths
from nono_supervisor.policy.profile import Policy

if TYPE_CHECKING:
    from nono_supervisor.backend import CommandGets, Hooks, Launch, PolicySource

__all__ = [
    "SeatbeltDenial",
    "MacPlan",
    "macos_policy",
    "profile_policy",
    "monitor_for",
    "compile_profile",
    "start",
    "GRACE_SECONDS",
    "USER_SOURCE",
]

# The kernel logs a denial asynchronously, so it may reach ``log stream`` after the command is gone. A command
# that failed (a denial may be why, and ``--prompt after`` may ask about it) waits this long for stragglers
# before its exit is reported; one that succeeded reports what has arrived and does not wait.
GRACE_SECONDS = 0.25
# The source of the grants a human added during the session (``PolicyState.add_grant``, the retry of
# ``--prompt after``): the grants no resolution of the options reproduces.
USER_SOURCE = "user"

# The runner's OS seam, as ``runner.spawn`` takes it: how the helper interpreter is started. Tests replace it
# (with a helper whose sandbox_init is fake), exactly as tests/test_macos_runner.py does.
HELPER_POPEN: Callable[..., subprocess.Popen] = subprocess.Popen
# How ``log stream`` is started (None: ``logstream``'s own default, ``/usr/bin/log``).
LOG_RUNNER: Callable | None = None


@dataclass(frozen=True)
class SeatbeltDenial:
    """One denial as ``on_decision`` and ``report.CommandReport`` take it (the shape of the Linux one).

    ``pid`` is 0 on purpose: on Linux it names the process to write a first denial to at once
    (``CommandReport.tell_process``, through ``pidfd_getfd``); macOS has no way to reach another process's
    stderr, so the report goes to the audit log and, for a command, to its stderr when it has ended. The
    pid the kernel logged is kept in ``logged_pid``.
    """

    op: str
    path: str
    rule: str
    is_dir: bool = False
    pid: int = 0
    process: str = ""  # the process name the kernel logged
    seatbelt: str = ""  # the Seatbelt operation (file-read-data, file-write-create...)
    logged_pid: int | None = None


def macos_policy(policy: Policy, resolve_for_macos: Callable[[], Policy]) -> Policy:
    """``policy`` as the Seatbelt profile must see it.

    A policy resolved for macOS is used as it is. One resolved for another platform (the policy state resolves
    ``session.policy`` for Linux, on every OS, today) cannot be: its system paths and security groups are
    Linux's (``/proc``, no ``~/Library/Keychains``). It is replaced by ``resolve_for_macos()``, the same
    options (and stored "always" grants) resolved with platform "macos", plus the grants a human added on top
    of the Linux one: source ``user``, the session grants of prompts and the retry grants of
    ``--prompt after``. Those are the only difference between ``policy`` and its own resolution: nothing
    else ever modifies a resolved policy.
    """
    if policy.platform == "macos":
        return policy
    base = resolve_for_macos()
    added = tuple(g for g in policy.grants if g.source == USER_SOURCE and g not in base.grants)
    return replace(base, grants=base.grants + added) if added else base


# ---- per-session state: the macOS resolution, the log monitor, the marker counter -------------------------

_lock = threading.Lock()
# id(session) -> (weak reference to it, its options resolved for macOS). Resolved once per session, like
# ``session.policy``: a profile edited or a grant revoked mid-session takes effect in the next session on
# both platforms.
_resolved: dict[int, tuple[weakref.ref, Policy]] = {}
_monitors: dict[str, tuple[LogMonitor, Iterator[int]]] = {}


def _resolved_for_macos(session: PolicySource) -> Policy:
    key = id(session)
    with _lock:
        entry = _resolved.get(key)
        if entry is not None and entry[0]() is session:
            return entry[1]
    policy = session.policy_for("macos")
    with _lock:
        _resolved[key] = (weakref.ref(session, lambda _ref: _resolved.pop(key, None)), policy)
    return policy


def monitor_for(session_id: str) -> LogMonitor:
    """The session's ``log stream`` monitor, started on first use.

    One that cannot start (no ``/usr/bin/log``, as on Linux) is kept anyway: commands still run, their
    denials are just not seen (and a test can ``feed`` it recorded lines).
    """
    return _monitor_and_counter(session_id)[0]


def _monitor_and_counter(session_id: str) -> tuple[LogMonitor, Iterator[int]]:
    with _lock:
        entry = _monitors.get(session_id)
        if entry is None:
            monitor = LogMonitor(session_id, **({"runner": LOG_RUNNER} if LOG_RUNNER else {}))
            try:
                monitor.start()
            except OSError:
                pass
            if not _monitors:
                atexit.register(_stop_monitors)
            entry = _monitors[session_id] = (monitor, itertools.count(1))
        return entry


def _stop_monitors() -> None:
    """``log stream`` is our child: it must not outlive the supervisor, waiting for events that never come."""
    with _lock:
        monitors = [monitor for monitor, _ in _monitors.values()]
        _monitors.clear()
    for monitor in monitors:
        monitor.stop()


# ---- one command -------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class MacPlan:
    """A command's Seatbelt profile, under the marker its denials are logged with."""

    policy: Policy  # the policy the profile was generated from, resolved for macOS
    profile: str
    marker: str
    monitor: LogMonitor


def profile_policy(gets: CommandGets) -> Policy:
    """What ``gets`` grants, as the Seatbelt profile must see it: its policy resolved for macOS
    (``macos_policy``) with the grants every command gets on top (``CommandGets.extra``)."""
    policy = macos_policy(gets.policy, lambda: _resolved_for_macos(gets.state))
    added = tuple(g for g in gets.extra if g not in policy.grants)
    return replace(policy, grants=policy.grants + added) if added else policy


def compile_profile(gets: CommandGets) -> MacPlan:
    """``gets`` as a Seatbelt profile, with a marker of its own (``<session>-<n>``) and the socket of the
    supervisor it may reach (nested nono-shell)."""
    policy = profile_policy(gets)
    monitor, counter = _monitor_and_counter(gets.session.id)
    marker = monitor.marker(next(counter))
    socket = str(gets.state.socket_path) if gets.state.socket_path else None
    return MacPlan(policy, generate_profile(policy, marker, supervisor_socket=socket), marker, monitor)


def start(plan: MacPlan, launch: Launch, hooks: Hooks) -> SandboxedProcess:
    """Start ``launch.path`` (with ``launch.argv``, ``argv[0]`` included) under ``plan``'s profile."""
    workdir = launch.cwd or os.getcwd()
    prepared = runner.prepare(
        plan.profile, launch.argv, launch.env, workdir, program=launch.path, ctty=launch.ctty
    )
    # -1 is "leave it closed" to the seam but PIPE to Popen: the command gets /dev/null there instead.
    stdin, stdout, stderr = (fd if fd >= 0 else subprocess.DEVNULL for fd in launch.stdio)
    monitor, marker = plan.monitor, plan.marker
    monitor.register(marker)
    try:
        started = runner.spawn(
            prepared,
            cwd=workdir,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            popen=HELPER_POPEN,
            start_new_session=True,
        )
    except SandboxError:
        monitor.collect(marker)  # forget the marker: nothing ran under it
        raise
    except OSError as e:
        monitor.collect(marker)
        raise SandboxError(f"cannot start the sandbox helper: {e.strerror or e}; nothing was run") from None
    reporter = _Reporter(monitor, marker, plan.policy, hooks.on_decision)
    return SandboxedProcess(started.process, on_exit=reporter.settle, marker=marker)


class _Reporter:
    """Turns what the log said about one marker into ``on_decision`` calls, once the command has ended."""

    def __init__(
        self,
        monitor: LogMonitor,
        marker: str,
        policy: Policy,
        on_decision: Callable[[str, object], None] | None,
    ) -> None:
        self.monitor = monitor
        self.marker = marker
        self.policy = policy
        self.on_decision = on_decision

    def settle(self, status: int) -> None:
        succeeded = os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0
        logged = self.monitor.collect(self.marker, grace=0.0 if succeeded else GRACE_SECONDS)
        if self.on_decision is None:
            return
        index: AccessIndex | None = None
        for denial in logged:
            if not os.path.isabs(denial.path):
                # network-outbound to an address ("*:443"): no path the policy could grant; as on Linux,
                # where Landlock refuses TCP without a report, only --net-block decides it.
                continue
            index = index or AccessIndex(
                self.policy,
                real_paths(self.policy, os.path.realpath),
                held_links(self.policy, link_target),
            )
            self.on_decision("deny", self.describe(denial, index))

    @staticmethod
    def describe(denial: LoggedDenial, index: AccessIndex) -> SeatbeltDenial:
        """The rule is the policy's reason (``group:deny_credentials``, ``--deny``, ``never-grantable``,
        ``not granted``), found as the Linux notify loop finds it; ``seatbelt`` when the policy meant to
        allow what the compiled profile refused."""
        path = os.path.normpath(denial.path)
        verdict = index.verdict(path, denial.operation)
        return SeatbeltDenial(
            op=denial.operation,
            path=path,
            rule="seatbelt" if verdict.allowed else verdict.rule,
            is_dir=os.path.isdir(path),
            process=denial.process,
            seatbelt=denial.seatbelt,
            logged_pid=denial.pid,
        )
