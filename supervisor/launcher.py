"""``run``: start the agent under the session's baseline sandbox, in a pty the supervisor owns."""

from __future__ import annotations

import errno
import fcntl
import os
import select
import shutil
import signal
import struct
import sys
import termios
from pathlib import Path

from supervisor.backend import start_sandboxed
from supervisor.errors import NonoError, SandboxError
from supervisor.prompt import TtyGuard
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
    """Run the agent to completion; returns its shell-style status."""
    env = agent_env(session, socket_path, interpose)
    try:
        path = _resolve(argv[0], env)
    except NonoError as e:
        print(f"nono-supervisor: {e}", file=sys.stderr)
        return 127
    if not os.isatty(0):
        process = start_sandboxed(session, path, argv, env, session.workdir, (0, 1, 2))
        return status_code(process.wait())
    master, slave = os.openpty()
    try:
        _copy_window_size(0, master)
        process = start_sandboxed(session, path, argv, env, session.workdir, (slave, slave, slave), ctty=True)
    except (OSError, SandboxError):
        os.close(master)
        raise
    finally:
        os.close(slave)
    return status_code(_proxy(master, process))


def _copy_window_size(source: int, pty_master: int) -> None:
    size = os.get_terminal_size(source)
    if hasattr(termios, "tcsetwinsize"):  # 3.11+
        termios.tcsetwinsize(pty_master, (size.lines, size.columns))
    else:
        fcntl.ioctl(pty_master, termios.TIOCSWINSZ, struct.pack("HHHH", size.lines, size.columns, 0, 0))


def _proxy(master: int, process) -> int:
    """Copy the user's terminal to the agent's pty and back until the agent exits."""

    def resize(_signo: int, _frame: object) -> None:
        try:
            _copy_window_size(0, master)
        except OSError:
            pass

    previous = signal.signal(signal.SIGWINCH, resize)
    watching = [0, master]
    try:
        with TtyGuard(0):
            while master in watching:
                try:
                    readable, _, _ = select.select(
                        watching, [], [], 0.5 if process.poll() is not None else None
                    )
                except InterruptedError:
                    continue
                if not readable and process.poll() is not None:
                    break
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
    return process.wait()
