"""The platform seam: one call starts a command in the per-command sandbox of this OS."""

from __future__ import annotations

import errno
import os
import sys
import threading
from collections.abc import Callable
from pathlib import Path

from nono_supervisor.errors import SandboxError
from nono_supervisor.policy.profile import Policy
from nono_supervisor.session import Session

__all__ = [
    "start_sandboxed",
    "finish",
    "left_running",
    "plan_cache",
    "enforcement",
    "landlock_plan",
    "rename_noreplace",
    "stderr_of",
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

_plans_lock = threading.Lock()
_plans = None


def plan_cache():
    """The Landlock plans (and ruleset fds) of this process, compiled once per policy (Linux)."""
    global _plans
    with _plans_lock:
        if _plans is None:
            from nono_supervisor.linux.landlock import PlanCache

            _plans = PlanCache()
        return _plans


def enforcement(trap: bool) -> str:
    """What enforces a command's policy on this platform (``policy`` prints it)."""
    if sys.platform == "darwin":
        return (
            "Seatbelt (sandbox_init); denials from log stream once the command ends, no questions in flight"
        )
    if not trap:
        return "Landlock only (--no-trap): no reports, no emulated grants"
    return "Landlock + seccomp user notification (reports, emulated grants, questions)"


def landlock_plan(session: Session):
    """The session's policy as a Landlock plan for this kernel's ABI (``policy``: its notes, ``--format
    landlock``). Linux only: the ABI is probed, and the Landlock module needs the Linux build."""
    if not sys.platform.startswith("linux"):
        raise SandboxError(f"Landlock plans are Linux's; this is {sys.platform} (try --format seatbelt)")
    from nono_supervisor.linux.kernel import probe
    from nono_supervisor.linux.landlock import compile_plan

    state = session.state
    return compile_plan(state.policy, max(probe().landlock_abi, 1), state.route_grants())


# After the command exits, how long its notify loop may take to answer what is still in flight before
# the denial report is written. Processes the command left running keep their loop; they are not waited for.
_DRAIN_SECONDS = 0.2


def start_sandboxed(
    session: Session,
    path: str,
    argv: list[str],
    env: dict[str, str],
    cwd: str | None,
    stdio: tuple[int, int, int],
    *,
    ctty: bool = False,
    policy: Policy | None = None,
    on_decision: Callable[[str, object], None] | None = None,
    consent: Callable[[str, str, str, bool], bool] | None = None,
    trap: bool = True,
    left_to_landlock: bool = False,
    launch_extra: dict[str, object] | None = None,
    notify_class: type | None = None,
    on_late_deny: Callable[[str, dict], None] | None = None,
    undo: object | None = None,
):  # -> a Process of the platform backend (signal, kill_tree, wait, poll, exit_fd, pid, keeper, notify)
    """Compile ``policy`` (default: the session's) for this kernel and start ``path`` under it.

    Linux: Landlock (+ seccomp user notification). macOS: a Seatbelt profile (``macos.launch``).

    With ``trap``, path syscalls are also sent to the supervisor (seccomp user notification on Linux), so
    denials are seen and reported through ``on_decision(decision, denial)`` and grants Landlock cannot
    express are carried out by the supervisor; ``consent(op, path, rule, is_dir)`` may let a human allow
    what the policy denies, while the syscall waits.

    ``left_to_landlock`` (a command's, not the agent's): opens and execve are left to Landlock where
    that loses nothing a dynamically linked process could report (``_ask_again_library``; README "Left to
    Landlock").

    Linux: while it runs, a denied node that moves into what its ruleset grants stops it, or, where its
    loop sees every open, guards that loop (``linux.latedeny``); ``on_late_deny(line, audit fields)`` tells
    its report.
    ``undo`` (Linux, with ``trap``): the command's ``undo.CommandLog``; what it changes is recorded first.
    """
    if sys.platform.startswith("linux"):
        from nono_supervisor.linux import sandbox, seccomp
        from nono_supervisor.linux.kernel import probe

        state, services = session.state, session.services
        support = probe()
        policy = policy or state.policy
        extra = state.route_grants() + state.terminal_grants(stdio)
        net = None
        if policy.net_mode == "domains":
            if not trap:
                raise SandboxError(
                    "network mode domains (--allow-domain) needs the seccomp layer: the supervisor performs"
                    " every connect to tie it to its command. Hint: drop --no-trap, or use --net-block"
                )
            net = services.netproxy()  # Landlock's backstop: TCP connect to the proxy's port only
        if trap and not (support.seccomp_notify and support.seccomp_addfd):
            raise SandboxError(
                "seccomp user notification with ADDFD is not available (needs Linux >= 5.14)."
                " Hint: --no-trap runs with Landlock alone"
            )
        from nono_supervisor.linux.notify import NotifyLoop

        loop_class = notify_class or NotifyLoop  # the agent's: one that also watches its shell execs
        linked = trap and bool(state.linked_denied(policy))
        ask_again = trap and left_to_landlock and _ask_again_library(loop_class, linked)
        if ask_again:
            env = _preloaded(env, ask_again)
        # launch_extra: the agent's routing namespace (binds, userns, exec_fd; nono_supervisor.launcher).
        launch = sandbox.Launch.build(path, argv, env, cwd, stdio, ctty=ctty, **(launch_extra or {}))
        watch = services.late_denies()
        since = watch.generation  # a move noticed after this is evaluated for this command too
        # Compiled once per policy and reused while the directories it read are unchanged (PlanCache).
        cached, ruleset = plan_cache().get(policy, support.landlock_abi, extra, net.ports if net else ())
        plan = cached.plan

        def watched(process, guard: bool = False):
            watch.track(
                process, policy, cached.inodes, process.notify, guard=guard, notice=on_late_deny, since=since
            )
            return process

        if not trap:
            return watched(sandbox.start(plan, launch, ruleset=ruleset))
        rights = cached.rights
        access = state.access_index(policy)

        def start_loop(listener: int) -> NotifyLoop:
            loop = loop_class(
                listener,
                rights,
                access,
                on_decision or (lambda *_: None),
                consent,
                state.own_sockets(),
                net_block=policy.net_block,
                own_terminals=state.own_terminals(),
                linked_denied=lambda: state.linked_denied(policy),
                linked=linked,
                undo=undo,
                shm=session.files.shm,
            )
            if net is not None:  # domains mode: inet connects go to the proxy, tied to this command
                loop.net_proxy = net.client(policy, consent, argv, on_decision)
            loop.start()
            return loop

        program = seccomp.build_program(
            policy.net_mode, leave_to_landlock=bool(ask_again), record_writes=undo is not None
        )
        process = sandbox.start(plan, launch, (program, seccomp.FILTER_FLAGS), start_loop, ruleset=ruleset)
        # Every open trapped (the agent, linked denied files, no library): its loop can refuse the moved
        # node from now on; left to Landlock, only stopping it can (the kernel is not asked again).
        return watched(process, guard=not ask_again)
    if sys.platform == "darwin":
        # Seatbelt answers every syscall itself: no in-flight layer, so ``trap`` and ``consent`` have nothing
        # to act on. Denials come from ``log stream`` once the command has ended (macos.launch).
        # ``session.state.policy`` is resolved for Linux; ``macos.launch.macos_policy`` re-resolves it for
        # macOS and carries over the grants a human added to it.
        from nono_supervisor.macos import launch as macos_launch

        return macos_launch.start(
            session,
            policy or session.state.policy,
            path,
            argv,
            env,
            cwd,
            stdio,
            ctty=ctty,
            on_decision=on_decision,
        )
    raise SandboxError(f"no sandbox backend for {sys.platform} yet; nothing was run")


def _ask_again_library(loop_class: type, linked: bool) -> str | None:
    """The ask-again library to preload when the command's opens and execs may be left to Landlock
    (issue 13), else None: all are trapped for a loop that must see them all (the agent's), while a denied
    file has several names (Landlock follows names: each regular-file open must be checked on its inode),
    where the library is not built (a denial could not be reported even where the process can), and with
    NONO_TRAP_ALL=1 in the supervisor's environment (bench/bench_speed.py's comparison)."""
    from nono_supervisor.linux.notify import ask_again_library, wants_every_notification

    if linked or wants_every_notification(loop_class) or os.environ.get("NONO_TRAP_ALL") == "1":
        return None
    return ask_again_library()


def _preloaded(env: dict[str, str], library: str) -> dict[str, str]:
    """``env`` with ``library`` in LD_PRELOAD (once: nested commands inherit it through nono-shell)."""
    current = env.get("LD_PRELOAD", "")
    if library in current.replace(":", " ").split():
        return env
    return {**env, "LD_PRELOAD": f"{current} {library}".strip()}


def left_running() -> int:
    """Commands that returned but left background jobs their keeper still holds (Linux): each keeps its
    notify loop, a thread and the listener's fd, so the server counts them against its command cap."""
    if sys.platform.startswith("linux"):
        from nono_supervisor.linux.sandbox import reap_keepers

        return reap_keepers()
    return 0


def finish(process) -> None:
    """Let the command's decision stream settle so that its report is complete."""
    loop = getattr(process, "notify", None)
    if loop is not None:
        loop.join(_DRAIN_SECONDS)


def rename_noreplace(source: Path, target: Path) -> None:
    """Rename ``source`` to ``target`` in one step unless ``target`` exists (FileExistsError)."""
    if sys.platform == "darwin":
        from nono_supervisor.macos.libc import rename_noreplace as rename
    else:
        from nono_supervisor.linux.libc import rename_noreplace as rename
    rename(os.fsencode(source), os.fsencode(target))


def stderr_of(pid: int) -> int:
    """A duplicate of process ``pid``'s stderr, to tell it of a denial while it waits (OSError where it
    cannot be reached: gone, not ours, or macOS, which has no way to take another process's descriptor)."""
    if not sys.platform.startswith("linux"):
        raise OSError(errno.ENOTSUP, "another process's descriptors cannot be reached here")
    from nono_supervisor.linux.kernel import pidfd_getfd

    return pidfd_getfd(pid, 2)
