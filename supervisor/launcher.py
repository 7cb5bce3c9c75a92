"""``run``: start the agent under the session's baseline sandbox, in a pty the supervisor owns."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import select
import shutil
import signal
import struct
import sys
import termios
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from nono_supervisor.backend import start_sandboxed
from nono_supervisor.consent import Consent
from nono_supervisor.errors import NonoError, SandboxError
from nono_supervisor.prompt import Prompter, TtyGuard
from nono_supervisor.report import CommandReport
from nono_supervisor.session import Session

if TYPE_CHECKING:
    from nono_supervisor.agents import ShimTarget

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


def agent_env(session: Session, socket_path: Path, interpose: Path | None) -> dict[str, str]:
    """The agent's environment: every route into nono-shell set up, the session's private temp dir, and
    what its profile sets (DISABLE_AUTOUPDATER for Claude Code: its install tree is read-only here)."""
    assert session.shims_dir is not None
    env = session.command_env(session.env, agent=True)
    if session.agent is not None:
        env.update(session.agent.env)
    shims = str(session.shims_dir)
    env["SHELL"] = env["CLAUDE_CODE_SHELL"] = os.path.join(shims, "bash")
    env["PATH"] = shims + os.pathsep + env.get("PATH", "/usr/local/bin:/usr/bin:/bin")
    env["NONO_SOCKET"] = str(socket_path)
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
    from nono_supervisor.agents import resolve_version_shim

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

    def launch_extra(self) -> dict[str, object]:
        binds = tuple((os.fsencode(a), os.fsencode(b)) for a, b in self.binds)
        return {"binds": binds, "userns": self.userns}


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


@functools.cache
def _namespace_error(userns: bool) -> int:
    from nono_supervisor.linux import _spawn

    return _spawn.probe_namespace(userns)


def routing_namespace(session: Session) -> tuple[RoutingNamespace | None, str]:
    """The agent's routing namespace, or None and why it cannot be had here."""
    if not sys.platform.startswith("linux"):
        return None, "no mount namespaces on this platform"
    if session.shims_dir is None:
        return None, "no shims"
    userns = os.geteuid() != 0
    error = _namespace_error(userns)
    if error:
        kind = "a user namespace with a mount namespace" if userns else "a mount namespace"
        return None, f"{kind} cannot be created here ({os.strerror(error)})"
    shim = str((session.shims_dir / "bash").resolve())
    targets = real_shells(session.env, exclude=(str(session.shims_dir),))
    return RoutingNamespace(tuple((shim, t) for t in targets), userns), ""


def _exec_plan(session: Session, path: str, argv: list[str], bound: frozenset[str]):
    """How the agent's own program is started: (path, argv, fd to exec or -1). A shell, or a script for
    one, is run through an fd of the real shell opened here: inside the namespace its path shows the shim,
    and ``#!/usr/bin/env bash`` would find the shim on PATH, either way turning the agent into a command."""
    from nono_supervisor.agents import shell_of_script

    real = os.path.realpath(path)
    script = shell_of_script(real)
    if script is not None:
        name, args = script
        shell = session.shells.get(name)
        if shell is None:
            raise NonoError(f"{path}: a script for {name}, and no real {name} is found")
        return shell, [shell, *args, path, *argv[1:]], os.open(shell, os.O_RDONLY | os.O_CLOEXEC)
    if os.path.basename(real) in SHELL_NAMES or real in bound:
        return path, argv, os.open(real, os.O_RDONLY | os.O_CLOEXEC)
    return path, argv, -1


def _watching_loop(on_shell: Callable[[int, bytes], None]) -> type:
    """A notify loop for the agent that also sees each ``execve`` of a shell (routing layer 5: no
    namespace, so one by path from a static binary is not routed: it is recorded)."""
    from nono_supervisor.linux.notify import NotifyLoop, _dispatch_table

    execs = {nr: trap for nr, (trap, _handler) in _dispatch_table().items() if trap.kind == "exec"}

    class WatchingLoop(NotifyLoop):
        def _dispatch(self, nid: int, tid: int, nr: int, args: list[int]) -> None:
            trap = execs.get(nr)
            raw = self._read(tid, args[trap.path]) if trap is not None else None
            if isinstance(raw, bytes):
                on_shell(tid, raw)
                self._preread = ((args[trap.path], raw),)  # read once: the handler decides on these bytes
            try:
                super()._dispatch(nid, tid, nr, args)
            finally:
                self._preread = ()

    return WatchingLoop


def _unrouted_recorder(session: Session) -> Callable[[int, bytes], None]:
    shims = os.path.realpath(session.shims_dir) if session.shims_dir else ""
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
        session.audit.write(
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
    agent = session.agent
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
    socket_path: Path,
    argv: list[str],
    interpose: Path | None,
    namespace: bool = True,
    start_line: str = "",
) -> int:
    """Run the agent to completion; returns its shell-style status.

    The agent runs under its own baseline (``Session.agent_policy``: the commands' policy, and its
    profile's state and install tree), in the routing namespace where the kernel allows one
    (``namespace``). Its own syscalls are trapped too (what it does without a shell is decided like a
    command's), and a question about them pauses the terminal proxy while it is up.
    """
    env = agent_env(session, socket_path, interpose)
    try:
        path, shim = resolve_program(argv[0], session.env)  # the real program: the shims are for what it runs
    except NonoError as e:
        print(f"nono-supervisor: {e}", file=sys.stderr)
        return 127
    _as_the_shim_would(env, shim, str(session.shims_dir))
    routing, why = routing_namespace(session) if namespace else (None, "disabled (--no-namespace)")
    _start_notes(session, argv, routing, why, start_line)
    for directory in session.agent.create if session.agent is not None else ():
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)  # its state exists: Landlock grants what exists
        except OSError:
            pass
    try:
        path, exec_argv, exec_fd = _exec_plan(session, path, argv, routing.bound if routing else frozenset())
    except NonoError as e:
        print(f"nono-supervisor: {e}", file=sys.stderr)
        return 127
    extra: dict[str, object] = routing.launch_extra() if routing else {}
    extra["exec_fd"] = exec_fd
    linux = session.trap and sys.platform.startswith("linux")
    watcher = _watching_loop(_unrouted_recorder(session)) if linux and routing is None else None
    session.prompter = Prompter.for_terminal(session.policy.prompt_timeout)
    text = " ".join(argv)
    report = CommandReport(session.audit, session.policy, "agent", argv, session.workdir)
    asker = session.prompter if session.prompt_mode() in ("tty", "after") else None
    consent = Consent(session, "agent", text, asker, per_process=True, routed=False, argv=argv)
    consent.report = report
    # The agent lives as long as the session: stored grants reach it through the live check only, so that
    # a revoke does (Landlock rules cannot be taken back). Without the seccomp layer (--no-trap, macOS)
    # there is no live check: they are compiled in.
    policy = session.agent_policy(stored=not linux)
    start = functools.partial(
        start_sandboxed,
        session,
        path,
        exec_argv,
        env,
        session.workdir,
        policy=policy,
        on_decision=report.tell_process,
        consent=consent.allows,
        trap=session.trap,
        launch_extra=extra,
        notify_class=watcher,
        on_late_deny=functools.partial(_tell_late_deny, report),
        undo=session.undo_log("agent", session.policy),  # the agent's own writes, in the commands' trees
    )
    master = -1
    try:
        if not os.isatty(0):
            process = start((0, 1, 2))
        else:
            master, slave = os.openpty()
            try:
                _copy_window_size(0, master)
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
                proxy = _Proxy(0, 1)
                with _lent(session.prompter, proxy):
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


def _copy_window_size(source: int, pty_master: int) -> None:
    size = os.get_terminal_size(source)
    if hasattr(termios, "tcsetwinsize"):  # 3.11+
        termios.tcsetwinsize(pty_master, (size.lines, size.columns))
    else:
        fcntl.ioctl(pty_master, termios.TIOCSWINSZ, struct.pack("HHHH", size.lines, size.columns, 0, 0))


def _lent(prompter: Prompter | None, proxy: _Proxy):
    """Questions asked while the block runs pause ``proxy``."""
    return prompter.lend(proxy.pause) if prompter is not None else contextlib.nullcontext()


class TerminalLease:
    """A pty the supervisor owns, standing in for its own terminal on a command's stdio (CONTRACT: never the
    supervisor's terminal). The human's keys are copied to it and its output back, except while a question
    is up; it is hung up (the master closed) as soon as the command's main process exits, so a process the
    command left behind reads EOF/EIO and never the keys typed afterwards."""

    def __init__(self, session: Session, stdio: tuple[int, int, int]) -> None:
        own = [i for i, fd in enumerate(stdio) if fd >= 0 and session.is_own_terminal(fd)]
        terminal = stdio[own[0]]
        self.master, slave = os.openpty()
        try:
            termios.tcsetattr(slave, termios.TCSANOW, termios.tcgetattr(terminal))  # the same modes
            _copy_window_size(terminal, self.master)
        except (OSError, termios.error):
            pass
        self._slave: int | None = slave
        self.stdio = tuple(slave if i in own else fd for i, fd in enumerate(stdio))
        self.ctty = 0 in own  # stdin is the pty: it becomes the command's controlling terminal (^C, /dev/tty)
        keys = stdio[0] if 0 in own else None
        screen = next((stdio[i] for i in (1, 2) if i in own), stdio[own[0]])
        self.proxy = _Proxy(keys, screen)
        # Lent to the prompter from now on, before the command exists: its very first syscall may be a
        # question, and a proxy the prompter does not know of would copy the answer's keys to the command
        # (test_exec_in_a_terminal_asks_the_same_way, 1 in 8 under load). Until the proxy runs, a question
        # waits for it to hold (it checks for one before reading anything).
        self._lending = contextlib.ExitStack()
        self._lending.enter_context(_lent(session.prompter, self.proxy))
        self._thread: threading.Thread | None = None

    @classmethod
    def for_stdio(cls, session: Session, stdio: tuple[int, int, int]) -> TerminalLease | None:
        """A lease when any of ``stdio`` is the supervisor's own terminal, else None (nothing to stand in)."""
        if not any(fd >= 0 and session.is_own_terminal(fd) for fd in stdio):
            return None
        return cls(session, stdio)

    def started(self) -> None:
        """The command holds its copies of the slave: the supervisor's goes (only the master hangs it up)."""
        if self._slave is not None:
            os.close(self._slave)
            self._slave = None

    def run(self, process) -> None:
        """Proxy in this thread until the command's main process exits, then hang up."""
        self.started()
        try:
            self.proxy.run(self.master, process.exit_fd())
        finally:
            self._lending.close()

    def start(self, process) -> None:
        """Proxy in a thread of its own (``serve``); ``hangup()`` waits for it."""
        self.started()
        self._thread = threading.Thread(target=self.run, args=(process,), name="nono-pty", daemon=True)
        self._thread.start()

    def hangup(self) -> None:
        """After the command's main process exited (or never started): the master is closed."""
        self.started()
        if self._thread is not None:
            self._thread.join()
        else:
            self._lending.close()
            self.proxy.close(self.master)


class _Proxy:
    """Copies the user's terminal to a pty the supervisor owns and back; ``pause()`` lends the terminal to a
    question.

    While paused nothing is read from either side: the command's output waits in the pty (the kernel's
    buffer is the bound; a chatty command blocks on write), and every key the human types goes to the
    question. Keys are written to the pty without blocking (what it has no room for is dropped), so the
    proxy always answers a pause. When the command's main process exits, no more keys are copied; its last
    output is drained (at most ``DRAIN_SECONDS``) and the master is closed: the pty is hung up.
    """

    # How long a question waits for the proxy to let go of the terminal before asking anyway.
    PAUSE_ACK_SECONDS = 2.0
    DRAIN_SECONDS = 0.5  # after the exit, output still coming from the pty
    DRAIN_QUIET_SECONDS = 0.05  # ...ends the drain once the pty has been quiet this long

    def __init__(self, keys: int | None = 0, screen: int = 1) -> None:
        self.keys = keys  # the terminal the human types on (None: the command's stdin is not the terminal)
        self.screen = screen
        self._wake_read, self._wake_write = os.pipe()  # non-inheritable by default (PEP 446)
        self._asking = threading.Event()
        self._idle = threading.Event()
        self._done = False
        self._closed = False
        self._closing = threading.Lock()

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        self._asking.set()
        if self._wake(b"p"):
            self._idle.wait(self.PAUSE_ACK_SECONDS)
        try:
            yield
        finally:
            self._asking.clear()
            self._wake(b"r")

    def _wake(self, byte: bytes) -> bool:
        """Wakes the proxy thread; False when it is done. The check and the write hold the lock ``close``
        takes, so a question's thread never writes to the number of a pipe the proxy has closed (and the
        kernel has since given to another command's file)."""
        with self._closing:
            if self._done or self._closed:
                return False
            try:
                os.write(self._wake_write, byte)
            except OSError:
                pass
            return True

    def _hold(self) -> None:
        self._idle.set()
        while self._asking.is_set():
            if select.select([self._wake_read], [], [], 1.0)[0]:
                os.read(self._wake_read, 64)
        self._idle.clear()

    def run(self, master: int, exit_fd: int) -> None:
        """Until the process behind ``exit_fd`` (a pidfd, closed here) has exited and its output is drained;
        the master is closed on the way out."""
        os.set_blocking(master, False)
        main = threading.current_thread() is threading.main_thread()
        previous = None
        if main and self.keys is not None:

            def resize(_signo: int, _frame: object) -> None:
                try:
                    _copy_window_size(self.keys, master)
                except OSError:
                    pass

            previous = signal.signal(signal.SIGWINCH, resize)
        watching = [master, self._wake_read, exit_fd]
        if self.keys is not None:
            watching.append(self.keys)
        ended = 0.0
        guard = TtyGuard(self.keys) if self.keys is not None else contextlib.nullcontext()
        try:
            with guard:
                while True:
                    if self._asking.is_set():
                        self._hold()
                        continue
                    timeout = None
                    if ended:
                        now = time.monotonic()
                        if now >= ended + self.DRAIN_SECONDS:
                            break
                        timeout = min(self.DRAIN_QUIET_SECONDS, ended + self.DRAIN_SECONDS - now)
                    try:
                        readable, _, _ = select.select(watching, [], [], timeout)
                    except InterruptedError:
                        continue
                    if not readable:
                        break  # drained: quiet since the exit
                    if self._wake_read in readable:
                        os.read(self._wake_read, 64)
                        continue
                    if exit_fd in readable:
                        ended = time.monotonic()
                        watching.remove(exit_fd)
                        if self.keys in watching:
                            watching.remove(self.keys)  # keys typed from now on are nobody's
                        continue
                    if self.keys is not None and self.keys in readable:
                        data = os.read(self.keys, 65536)
                        if not data:
                            watching.remove(self.keys)
                        else:
                            try:
                                os.write(master, data)
                            except (BlockingIOError, InterruptedError):
                                pass  # the command is not reading: like a full terminal, keys are lost
                    if master in readable:
                        try:
                            data = os.read(master, 65536)
                        except BlockingIOError:
                            continue
                        except OSError as e:
                            if e.errno != errno.EIO:
                                raise
                            data = b""  # every slave is closed
                        if not data:
                            break
                        _write_all(self.screen, data)
        finally:
            self._done = True
            self._idle.set()  # a question waiting for this proxy to pause need not wait
            if previous is not None:
                signal.signal(signal.SIGWINCH, previous)
            os.close(exit_fd)
            self.close(master)

    def close(self, master: int) -> None:
        """Hang up: closing the master is what takes the pty away from every process still holding it."""
        with self._closing:
            if self._closed:
                return
            self._closed = True
            self._done = True
            self._idle.set()
            os.close(master)
            os.close(self._wake_read)
            os.close(self._wake_write)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except InterruptedError:
            continue
        except OSError:
            return  # the terminal is gone
