"""``run``: start the agent under the session's baseline sandbox, in a pty the supervisor owns."""

from __future__ import annotations

import contextlib
import functools
import os
import select
import shutil
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nono_supervisor import backend
from nono_supervisor.backend import Hooks, Launch, Process
from nono_supervisor.errors import NonoError, SandboxError
from nono_supervisor.report import CommandReport
from nono_supervisor.session import Session
from nono_supervisor.terminal.consent import Consent
from nono_supervisor.terminal.prompt import TtyGuard
from nono_supervisor.terminal.proxy import PtyProxy, copy_window_size, lent

if TYPE_CHECKING:
    from nono_supervisor.policy.agents import ShimTarget

__all__ = [
    "RoutingNamespace",
    "agent_env",
    "real_shells",
    "resolve_program",
    "routing_namespace",
    "run_agent",
    "status_code",
]

SHELL_NAMES = ("sh", "bash", "dash", "zsh")
# The signals that end `run` cleanly (issue 23, finding 3): a closed terminal window or a logout (HUP),
# kill (TERM), Ctrl-\ or Ctrl-C sent to the supervisor itself (QUIT, INT; typed in the agent's pty they are
# the agent's keys). Each goes on to the agent's process group, the terminal is restored, and `run` exits
# 128+N. SIGKILL cannot be caught: after it the terminal stays as it was (README).
ENDING_SIGNALS = (signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGTERM)
# How long the agent has to end on that signal (save its state, end its commands) before its whole tree is
# killed: an agent that catches SIGINT and goes on, or one stopped at a question, still ends.
AGENT_GRACE_SECONDS = 2.0
# Where the real shells live, besides PATH: what an agent names by absolute path (Codex: /bin/bash).
_SHELL_DIRS = ("/bin", "/usr/bin", "/usr/local/bin", "/sbin", "/usr/sbin")


def status_code(status: int) -> int:
    """A wait status as a shell would report it: the exit code, or 128+N for death by signal N."""
    return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def agent_env(session: Session, interpose: Path | None) -> dict[str, str]:
    """The agent's environment: every route into nono-shell set up, the session's private temp dir, and
    what its profile sets (DISABLE_AUTOUPDATER for Claude Code: its install tree is read-only here)."""
    state = session.state
    assert session.files.shims_dir is not None and state.socket_path is not None
    env = session.services.command_env(state.env, agent=True)
    if state.agent is not None:
        env.update(state.agent.env)
    shims = str(session.files.shims_dir)
    env["SHELL"] = env["CLAUDE_CODE_SHELL"] = os.path.join(shims, "bash")
    env["PATH"] = shims + os.pathsep + env.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["NONO_SOCKET"] = str(state.socket_path)
    env["NONO_SHIM_DIR"] = shims
    env["NONO_SHELLS"] = "sh:bash:dash:zsh"
    if interpose is not None:
        preload = env.get("LD_PRELOAD", "")
        env["LD_PRELOAD"] = f"{preload}:{interpose}" if preload else str(interpose)
    return env


def resolve_program(command: str, env: dict[str, str]) -> tuple[str, ShimTarget | None]:
    """The agent's program as the user's shell would find it; behind a version manager's shim (pyenv,
    rbenv: bash scripts re-entering the manager through more bash scripts, each of which would be routed
    as a command) the program it names, with what the manager would set around it."""
    from nono_supervisor.policy.agents import resolve_version_shim

    found = command if "/" in command else shutil.which(command, path=env.get("PATH"))
    if not found or not os.access(found, os.X_OK):
        raise NonoError(f"{command}: command not found")
    shim = resolve_version_shim(found, env)
    # Absolute: the first exec happens before the child drops root's capabilities, and a notify thread
    # without them cannot read a root child's /proc/PID/cwd to resolve "./agent" (exec answers EACCES).
    return (shim.program if shim else os.path.abspath(found)), shim


def _as_the_shim_would(env: dict[str, str], shim: ShimTarget | None, shims_dir: str) -> None:
    """The manager's variables, and its version's bin directory first on PATH after nono's own shims (so
    that the agent's PATH, PYENV_VERSION and sys.executable are those it has bare)."""
    if shim is None:
        return
    env.update(shim.variables)
    if shim.bin_dir:
        rest = env.get("PATH", "").removeprefix(shims_dir + os.pathsep)
        env["PATH"] = os.pathsep.join((shims_dir, shim.bin_dir, rest))


# --- Routing layer 4: the agent's mount namespace --------------------------------------------------------


@dataclass(frozen=True)
class RoutingNamespace:
    """The agent's mount namespace: each real shell shows the shim, so a static binary's
    ``execve("/bin/bash")`` and a passwd-shell lookup reach nono-shell too (DESIGN routing layer 4). The
    supervisor, outside it, runs the real shells."""

    binds: tuple[tuple[str, str], ...]  # (shim, real shell) pairs, real paths
    userns: bool  # inside a new user namespace (not root)

    @property
    def bound(self) -> frozenset[str]:
        return frozenset(target for _shim, target in self.binds)


def real_shells(env: dict[str, str], exclude: tuple[str, ...] = ()) -> list[str]:
    """Real paths of the shells an agent may exec (on PATH and in the system's shell directories); a
    multi-call binary that /bin/sh may point to (busybox) is never one: binding over it would take every
    applet with it."""
    from nono_supervisor.session import is_nono_shim

    found: list[str] = []
    dirs = list(_SHELL_DIRS) + [d for d in env.get("PATH", "").split(os.pathsep) if os.path.isabs(d)]
    excluded = {os.path.realpath(e) for e in exclude}
    for name in SHELL_NAMES:
        for directory in dirs:
            candidate = os.path.join(directory, name)
            real = os.path.realpath(candidate)
            if real in found or os.path.dirname(real) in excluded or os.path.realpath(directory) in excluded:
                continue
            if not (os.path.isfile(real) and os.access(real, os.X_OK)) or is_nono_shim(real):
                continue
            if os.path.basename(real).rstrip("0123456789.-") not in SHELL_NAMES:
                continue  # /bin/sh -> busybox
            found.append(real)
    return found


def routing_namespace(session: Session) -> tuple[RoutingNamespace | None, str]:
    """The agent's routing namespace, or None and why it cannot be had here."""
    userns = os.geteuid() != 0
    error = backend.current().namespace_error(userns)
    if error is None:
        return None, "no mount namespaces on this platform"
    shims_dir = session.files.shims_dir
    if shims_dir is None:
        return None, "no shims"
    if error:
        kind = "a user namespace with a mount namespace" if userns else "a mount namespace"
        return None, f"{kind} cannot be created here ({os.strerror(error)})"
    shim = str((shims_dir / "bash").resolve())
    targets = real_shells(session.state.env, exclude=(str(shims_dir),))
    return RoutingNamespace(tuple((shim, t) for t in targets), userns), ""


def _exec_plan(session: Session, path: str, argv: list[str], bound: frozenset[str]):
    """How the agent's own program is started: (path, argv, fd to exec or -1). A shell, or a script for
    one, is run through an fd of the real shell opened here: inside the namespace its path shows the shim,
    and ``#!/usr/bin/env bash`` would find the shim on PATH, either way turning the agent into a command."""
    from nono_supervisor.policy.agents import shell_of_script

    real = os.path.realpath(path)
    script = shell_of_script(real)
    if script is not None:
        name, args = script
        shell = session.files.shells.get(name)
        if shell is None:
            raise NonoError(f"{path}: a script for {name}, and no real {name} is found")
        return shell, [shell, *args, path, *argv[1:]], os.open(shell, os.O_RDONLY | os.O_CLOEXEC)
    if os.path.basename(real) in SHELL_NAMES or real in bound:
        return path, argv, os.open(real, os.O_RDONLY | os.O_CLOEXEC)
    return path, argv, -1


def _watching_loop(on_shell: Callable[[int, bytes], None]) -> type:
    """A notify loop for the agent that also sees each ``execve`` of a shell (routing layer 5: no
    namespace, so one by path from a static binary is not routed: it is recorded). A class, as
    ``LinuxHooks.loop_class`` takes one; the hook is ``NotifyLoop.on_exec``."""
    from nono_supervisor.linux.notify import NotifyLoop

    class WatchingLoop(NotifyLoop):
        on_exec = staticmethod(on_shell)

    return WatchingLoop


def _unrouted_recorder(session: Session) -> Callable[[int, bytes], None]:
    shims = os.path.realpath(session.files.shims_dir) if session.files.shims_dir else ""
    names = {os.fsencode(n) for n in SHELL_NAMES}

    def on_exec(tid: int, raw: bytes) -> None:
        if raw.rsplit(b"/", 1)[-1] not in names:
            return
        path = os.fsdecode(raw)
        if not path.startswith("/"):
            try:
                path = os.path.join(os.readlink(f"/proc/{tid}/cwd"), path)
            except OSError:
                pass
        if os.path.dirname(os.path.realpath(path)) == shims:
            return  # the shim itself: routed
        session.services.audit.write(
            command="agent",
            event="unrouted-shell",
            path=path,
            pid=tid,
            reason="no routing namespace: this shell runs under the agent's baseline, not as a command",
        )

    return on_exec


def _start_notes(
    session: Session, argv: list[str], namespace: RoutingNamespace | None, why: str, first: str
) -> None:
    """The first lines of ``run``: ``first`` (what is enforced, cli), what will not be routed, and what the
    agent's profile says about it."""
    if first:
        print(first, file=sys.stderr, flush=True)
    agent = session.state.agent
    if namespace is None:
        who = f"{agent.name}" if agent is not None and agent.name == "codex" else "a static agent (codex)"
        print(
            f"nono-supervisor: routing: {why}: {who} running /bin/bash by path, and any passwd-shell"
            " lookup, will not be routed; such a shell runs under the agent's baseline and the audit log"
            " records it (event unrouted-shell)",
            file=sys.stderr,
        )
    note = agent.note_for(argv) if agent is not None else None
    if note:
        print(f"nono-supervisor: {note}", file=sys.stderr)


def run_agent(
    session: Session,
    argv: list[str],
    interpose: Path | None,
    namespace: bool = True,
    start_line: str = "",
) -> int:
    """Run the agent to completion; returns its shell-style status.

    The agent runs under its own baseline (``PolicyState.agent_policy``: the commands' policy, and its
    profile's state and install tree), in the routing namespace where the kernel allows one
    (``namespace``). Its own syscalls are trapped too (what it does without a shell is decided like a
    command's), and a question about them pauses the terminal proxy while it is up.
    """
    state, services = session.state, session.services
    env = agent_env(session, interpose)
    try:
        path, shim = resolve_program(argv[0], state.env)  # the real program: the shims are for what it runs
    except NonoError as e:
        print(f"nono-supervisor: {e}", file=sys.stderr)
        return 127
    _as_the_shim_would(env, shim, str(session.files.shims_dir))
    routing, why = routing_namespace(session) if namespace else (None, "disabled (--no-namespace)")
    _start_notes(session, argv, routing, why, start_line)
    for directory in state.agent.create if state.agent is not None else ():
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)  # its state exists: Landlock grants what exists
        except OSError:
            pass
    try:
        path, exec_argv, exec_fd = _exec_plan(session, path, argv, routing.bound if routing else frozenset())
    except NonoError as e:
        print(f"nono-supervisor: {e}", file=sys.stderr)
        return 127
    in_flight = state.trap and backend.current().holds_syscalls  # the agent's live check of grants
    text = " ".join(argv)
    report = CommandReport(services.audit, state.policy, "agent", argv, state.workdir)
    asker = services.prompter if services.prompt_mode() in ("tty", "after") else None
    consent = Consent(session, "agent", text, asker, per_process=True, routed=False, argv=argv)
    consent.report = report
    # The agent lives as long as the session: stored grants reach it through the live check only, so that
    # a revoke does (Landlock rules cannot be taken back). Without the seccomp layer (--no-trap, macOS)
    # there is no live check: they are compiled in.
    policy = state.agent_policy(stored=not in_flight)
    hooks = Hooks(
        on_decision=report.tell_process,
        consent=consent.allows,
        on_late_deny=functools.partial(_tell_late_deny, report),
        undo=services.undo_log("agent", state.policy),  # the agent's own writes, in the commands' trees
    )
    if in_flight and routing is None:  # no namespace: its shell execs by path are recorded (layer 5)
        from nono_supervisor.linux.backend import LinuxHooks

        hooks = LinuxHooks(**vars(hooks), loop_class=_watching_loop(_unrouted_recorder(session)))

    def start(stdio: tuple[int, int, int], ctty: bool = False) -> Process:
        launch = Launch(path, exec_argv, env, state.workdir, stdio, ctty=ctty, exec_fd=exec_fd)
        if routing is not None:  # only Linux has one (Backend.namespace_error)
            from nono_supervisor.linux.backend import LinuxLaunch

            launch = LinuxLaunch(**vars(launch), routing=routing)
        return backend.start(session, launch, hooks, policy)

    master = -1
    try:
        if not os.isatty(0):
            process = start((0, 1, 2))
        else:
            master, slave = os.openpty()
            try:
                copy_window_size(0, master)
                process = start((slave, slave, slave), ctty=True)
            except (OSError, SandboxError):
                os.close(master)
                raise
            finally:
                os.close(slave)
    finally:
        if exec_fd >= 0:
            os.close(exec_fd)
    _end_with_the_agent(process)
    try:
        with _ended_by_signals(process) as received:
            if master >= 0:
                proxy = PtyProxy(0, 1)
                with lent(services.prompter, proxy):
                    proxy.run(master, process.exit_fd())
            status = process.wait()
    finally:
        TtyGuard.release_all()  # a question still on screen when the agent ended holds the terminal too
    return 128 + received[0] if received else status_code(status)


def _end_with_the_agent(process) -> None:
    """The session is the agent's: once the agent has exited, what it left (a child held on a question, a
    background job) is killed at once, as it would be when the supervisor exits. The keeper stays the
    subreaper of the agent's tree until it is empty, so without this a child held on a question kept the
    terminal (the proxy paused behind the question) until the question timed out
    (test_terminal_is_restored_after_a_question_and_after_the_agent_is_killed_mid_question)."""
    ended = process.exit_fd()

    def watch() -> None:
        try:
            select.select([ended], [], [])
        finally:
            os.close(ended)
        process.kill_tree()  # a no-op once the status was read (the keeper may be reaped)

    threading.Thread(target=watch, name="nono-agent-ended", daemon=True).start()


@contextlib.contextmanager
def _ended_by_signals(process) -> Iterator[list[int]]:
    """While the block runs, an ``ENDING_SIGNALS`` signal goes to the agent's process group, and its tree is
    killed ``AGENT_GRACE_SECONDS`` later if it is still there; the block then ends as on any exit of the
    agent (its output drained, the terminal restored by the guards on the way out). Yields the list that
    holds the signal received, if any. Before: SIGTERM and SIGHUP killed the supervisor with the terminal
    left raw (no echo, no line editing, no Ctrl-C)."""
    received: list[int] = []
    reaper: list[threading.Timer] = []

    def kill_tree() -> None:
        if process.status is None:  # not reaped yet: the keeper's pid is still ours
            process.kill_tree()

    def end(signo: int, _frame: object) -> None:
        if received:
            return
        received.append(signo)
        process.signal(signo)
        timer = threading.Timer(AGENT_GRACE_SECONDS, kill_tree)
        timer.daemon = True
        timer.start()
        reaper.append(timer)

    previous = {signo: signal.signal(signo, end) for signo in ENDING_SIGNALS}
    try:
        yield received
    finally:
        for timer in reaper:
            timer.cancel()
        for signo, handler in previous.items():
            signal.signal(signo, handler)


def _tell_late_deny(report: CommandReport, line: str, fields: dict) -> None:
    """A denied node moved into the agent's baseline (linux.latedeny): its loop is guarded, or, without
    one (--no-trap), it is stopped, which the human is told on the supervisor's terminal (raw or not)."""
    report.late_deny(line, fields)
    if fields.get("action") == "stopped":
        os.write(2, f"\r\nnono-supervisor: the agent was {line.removeprefix('nono: ')}\r\n".encode())
