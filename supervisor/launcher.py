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
from collections.abc import Iterator
from pathlib import Path

from supervisor.backend import start_sandboxed
from supervisor.consent import Consent
from supervisor.errors import NonoError, SandboxError
from supervisor.prompt import Prompter, TtyGuard
from supervisor.report import CommandReport
from supervisor.session import Session

__all__ = ["agent_env", "run_agent", "status_code"]


def status_code(status: int) -> int:
    """A wait status as a shell would report it: the exit code, or 128+N for death by signal N."""
    return 128 + os.WTERMSIG(status) if os.WIFSIGNALED(status) else os.WEXITSTATUS(status)


def agent_env(session: Session, socket_path: Path, interpose: Path | None) -> dict[str, str]:
    """The agent's environment: every route into nono-shell set up, the session's private temp dir."""
    assert session.shims_dir is not None
    env = session.command_env(session.env)
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


def _resolve(command: str, env: dict[str, str]) -> str:
    found = command if "/" in command else shutil.which(command, path=env.get("PATH"))
    if not found or not os.access(found, os.X_OK):
        raise NonoError(f"{command}: command not found")
    return found


def run_agent(session: Session, socket_path: Path, argv: list[str], interpose: Path | None) -> int:
    """Run the agent to completion; returns its shell-style status.

    The agent's own syscalls are trapped too (what it does without a shell is decided like a command's),
    and a question about them pauses the terminal proxy while it is up.
    """
    env = agent_env(session, socket_path, interpose)
    try:
        path = _resolve(argv[0], session.env)  # the real program: the shims are for what the agent runs
    except NonoError as e:
        print(f"nono-supervisor: {e}", file=sys.stderr)
        return 127
    proxy = _Proxy() if os.isatty(0) else None
    session.prompter = Prompter.for_terminal(session.policy.prompt_timeout, proxy.pause if proxy else None)
    text = " ".join(argv)
    report = CommandReport(session.audit, session.policy, "agent", argv, session.workdir)
    asker = session.prompter if session.prompt_mode() == "tty" else None
    consent = Consent(session, "agent", text, asker, per_process=True)
    start = functools.partial(
        start_sandboxed,
        session,
        path,
        argv,
        env,
        session.workdir,
        on_decision=report.tell_process,
        consent=consent.allows,
        trap=session.trap,
    )
    if proxy is None:
        return status_code(start((0, 1, 2)).wait())
    master, slave = os.openpty()
    try:
        _copy_window_size(0, master)
        process = start((slave, slave, slave), ctty=True)
    except (OSError, SandboxError):
        os.close(master)
        raise
    finally:
        os.close(slave)
    return status_code(proxy.run(master, process))


def _copy_window_size(source: int, pty_master: int) -> None:
    size = os.get_terminal_size(source)
    if hasattr(termios, "tcsetwinsize"):  # 3.11+
        termios.tcsetwinsize(pty_master, (size.lines, size.columns))
    else:
        fcntl.ioctl(pty_master, termios.TIOCSWINSZ, struct.pack("HHHH", size.lines, size.columns, 0, 0))


class _Proxy:
    """Copies the user's terminal to the agent's pty and back; ``pause()`` lends the terminal to a question.

    While paused nothing is read from either side: the agent's output waits in the pty (the kernel's buffer
    is the bound; a chatty agent blocks on write), and every key the human types goes to the question.
    """

    # How long a question waits for the proxy to let go of the terminal before asking anyway.
    PAUSE_ACK_SECONDS = 2.0

    def __init__(self) -> None:
        self._wake_read, self._wake_write = os.pipe()  # non-inheritable by default (PEP 446)
        self._asking = threading.Event()
        self._idle = threading.Event()

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        self._asking.set()
        os.write(self._wake_write, b"p")
        self._idle.wait(self.PAUSE_ACK_SECONDS)
        try:
            yield
        finally:
            self._asking.clear()
            os.write(self._wake_write, b"r")

    def _hold(self) -> None:
        self._idle.set()
        while self._asking.is_set():
            if select.select([self._wake_read], [], [], 1.0)[0]:
                os.read(self._wake_read, 64)
        self._idle.clear()

    def run(self, master: int, process) -> int:
        def resize(_signo: int, _frame: object) -> None:
            try:
                _copy_window_size(0, master)
            except OSError:
                pass

        previous = signal.signal(signal.SIGWINCH, resize)
        watching = [0, master, self._wake_read]
        try:
            with TtyGuard(0):
                while master in watching:
                    if self._asking.is_set():
                        self._hold()
                        continue
                    try:
                        timeout = 0.5 if process.poll() is not None else None
                        readable, _, _ = select.select(watching, [], [], timeout)
                    except InterruptedError:
                        continue
                    if not readable and process.poll() is not None:
                        break
                    if self._wake_read in readable:
                        os.read(self._wake_read, 64)
                        continue
                    if 0 in readable:
                        data = os.read(0, 65536)
                        if data:
                            os.write(master, data)
                        else:
                            watching.remove(0)
                    if master in readable:
                        try:
                            data = os.read(master, 65536)
                        except OSError as e:
                            if e.errno != errno.EIO:
                                raise
                            data = b""
                        if not data:
                            watching.remove(master)
                        else:
                            os.write(1, data)
        finally:
            signal.signal(signal.SIGWINCH, previous)
            os.close(master)
            os.close(self._wake_read)
            os.close(self._wake_write)
        return process.wait()
