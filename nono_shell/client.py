"""``nono-shell``: hand the command, its cwd, environment and stdio fds to the supervisor; exit as it did.

Never runs anything itself: on any failure it prints one line and exits 125 (fail closed).
"""

from __future__ import annotations

import _signal
import _socket
import os
import sys
import time

import nono_shell
from nono_shell import protocol, transport
from nono_shell.personality import shell_for

__all__ = ["main", "EXIT_FAILURE", "FORWARDED_SIGNALS", "ENDING_SIGNALS", "ACCEPT_SECONDS"]

EXIT_FAILURE = 125
# How long the supervisor has to take the command, from connecting until it says the command started (or
# refused it); past it the client exits 125 with one line. A start takes tens of milliseconds (60-70 ms
# median during a flood from inside, issue 23); 10 s is that on a machine loaded a hundredfold. A supervisor
# that is stopped (SIGSTOP) or wedged is accepted into the kernel's backlog and would hold its client for
# ever (issue 23). _client.c's ACCEPT_SECONDS is the same.
ACCEPT_SECONDS = 10.0
# _signal and _socket rather than signal and socket: those import enum, 7 ms of every command's start-up.
FORWARDED_SIGNALS = (
    _signal.SIGHUP,
    _signal.SIGINT,
    _signal.SIGQUIT,
    _signal.SIGTERM,
    _signal.SIGUSR1,
    _signal.SIGUSR2,
    _signal.SIGALRM,
    _signal.SIGWINCH,
    _signal.SIGCONT,
)
# Before the command has started there is nothing to forward to: these end the client with 128+N, as a
# shell killed by N (`timeout 15 nono-shell -c true` on a stopped supervisor ran on for 626 s, its SIGTERM
# forwarded into a socket nobody read). The others (WINCH, CONT) are dropped until then.
ENDING_SIGNALS = (
    _signal.SIGHUP,
    _signal.SIGINT,
    _signal.SIGQUIT,
    _signal.SIGTERM,
    _signal.SIGUSR1,
    _signal.SIGUSR2,
    _signal.SIGALRM,
)


class _Failure(Exception):
    pass


def _connect(path: str, deadline: float) -> _socket.socket:
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | transport.SOCK_CLOEXEC)
    try:
        transport.until(sock, deadline)  # connect waits while the supervisor's backlog is full
        sock.connect(path)
    except TimeoutError:
        sock.close()
        raise _Failure(_late(path)) from None
    except OSError as e:
        sock.close()
        raise _Failure(f"supervisor unreachable at {path}: {e.strerror}") from None
    uid = transport.peer_uid(sock)
    if uid != os.getuid():
        sock.close()
        raise _Failure(f"refusing supervisor at {path}: it runs as uid {uid}, not {os.getuid()}")
    return sock


def _late(path: str) -> str:
    return f"the supervisor at {path} did not start the command within {ACCEPT_SECONDS:g} s (is it stopped?)"


def _tty_state(stdio: list[int]) -> dict[str, object]:
    state: dict[str, object] = {"isatty": [fd for fd in stdio if os.isatty(fd)]}
    for fd in stdio:
        try:
            state["winsize"] = list(os.get_terminal_size(fd))
            break
        except OSError:
            continue
    return state


def _open_std_fds() -> list[int]:
    """The std fds this process actually has open (a closed one stays closed for the command)."""
    present = []
    for fd in (0, 1, 2):
        try:
            os.fstat(fd)
        except OSError:
            continue
        present.append(fd)
    return present


def run(argv: list[str]) -> int:
    path = os.environ.get("NONO_SOCKET")
    if not path:
        raise _Failure("NONO_SOCKET is not set; refusing to run unsandboxed")
    stdio = _open_std_fds()
    try:
        cwd = os.getcwd()
    except OSError as e:  # deleted under us: the command would have no directory to start in
        raise _Failure(f"the current directory is gone ({e.strerror}); refusing to run") from None
    request = protocol.RunRequest(
        shell=shell_for(argv[0]),
        argv=argv,
        cwd=cwd,
        env=dict(os.environ),
        stdio=stdio,
        tty=_tty_state(stdio),
    )
    started = False

    def forward(signo: int, _frame: object) -> None:
        if not started:
            if signo in ENDING_SIGNALS:
                os._exit(128 + signo)
            return
        try:
            transport.send(sock, protocol.Signal(signo))
        except OSError:
            pass  # the supervisor is gone; the receive loop reports it

    for signo in FORWARDED_SIGNALS:
        _signal.signal(signo, forward)
    deadline = time.monotonic() + ACCEPT_SECONDS
    sock = _connect(path, deadline)
    conversation = protocol.Conversation("client")
    decoder = protocol.Decoder()
    try:
        transport.send(sock, request, stdio, deadline)
    except TimeoutError:
        raise _Failure(_late(path)) from None
    except OSError as e:
        raise _Failure(f"cannot send the command to the supervisor: {e.strerror}") from None
    while True:
        try:
            message = transport.receive(sock, decoder, deadline=None if started else deadline)
            conversation.receive(message)
        except TimeoutError:
            raise _Failure(_late(path)) from None
        except transport.Closed:
            raise _Failure("the supervisor went away; the command was killed") from None
        except (OSError, protocol.ProtocolError, SystemError) as e:
            # SystemError: _json's scanner, used without the json package, fails that way on a raw control
            # character inside a string (it cannot build its JSONDecodeError); still one line and 125.
            raise _Failure(f"protocol error: {e}") from None
        if isinstance(message, protocol.Refused):
            raise _Failure(message.reason)
        if isinstance(message, protocol.Started):
            started = True
            sock.settimeout(None)  # the command runs as long as it runs
        if isinstance(message, protocol.Exited):
            return message.status()


def main(from_shim: bool = False) -> None:
    """The Python client: the `nono-shell` on PATH where no C client was built (scripts/nono-shell), and
    what the Python shims run (``from_shim``)."""
    argv = list(sys.argv)
    if from_shim:
        # The kernel put the shim's own path in argv[0] when it ran the script; the caller's name for
        # the shell is gone. Its basename is what `bash -c 'echo $0'` shows, without the runtime dir.
        argv[0] = os.path.basename(argv[0])
    if argv[1:] == ["--version"] and os.path.basename(argv[0]) == "nono-shell":
        # Only as the first and only argument, like `bash --version` (CONTRACT.md); under a shell's name
        # it is that shell's own option, run by the supervisor like any command.
        os.write(1, f"nono-shell {nono_shell.__version__}\n".encode())
        sys.exit(0)
    try:
        status = run(argv)
    except _Failure as e:
        os.write(2, f"nono-shell: {e}\n".encode(errors="replace"))
        status = EXIT_FAILURE
    except KeyboardInterrupt:
        status = 128 + _signal.SIGINT
    sys.exit(status)
