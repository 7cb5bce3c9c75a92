"""Start one command in its own Linux sandbox: prepare everything here, apply it in the child (``_spawn``)."""

from __future__ import annotations

import os
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass

from nono_supervisor.errors import SandboxError
from nono_supervisor.linux import _spawn
from nono_supervisor.linux.kernel import pidfd_getfd
from nono_supervisor.linux.landlock import LandlockPlan, create_ruleset

__all__ = ["Launch", "Process", "start"]

KILL_TREE_SIGNAL = _spawn.kill_tree_signal()
# The program a keeper becomes once its command runs (setup.py builds it): a few hundred KiB instead of a
# copy of the supervisor whose pages the supervisor must copy again as it writes them.
KEEPER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "nono-keeper")
if os.access(KEEPER, os.X_OK) and hasattr(_spawn, "set_keeper"):
    _spawn.set_keeper(os.fsencode(KEEPER))


@dataclass(frozen=True)
class Launch:
    """What to exec and with which fds; all bytes, built before the fork."""

    path: bytes
    argv: list[bytes]
    envp: list[bytes]
    cwd: bytes | None
    stdio: tuple[int, int, int]  # fds to place on 0, 1, 2 (-1: leave closed)
    ctty: bool = False  # make stdin the controlling terminal (the agent's pty)
    # The agent's routing namespace (launcher.RoutingNamespace): (shim, real shell) bind mounts made in a
    # mount namespace of its own (in a new user namespace unless root) before Landlock; and an fd of the
    # file to exec instead of ``path`` (a real shell, which the binds hide).
    binds: tuple[tuple[bytes, bytes], ...] = ()
    userns: bool = False
    exec_fd: int = -1

    @classmethod
    def build(
        cls,
        path: str,
        argv: list[str],
        env: dict[str, str],
        cwd: str | None,
        stdio: tuple[int, int, int],
        **kw: object,
    ) -> Launch:
        if cwd and not os.path.isabs(path):
            # The first exec, as the child will make it once in cwd: named from cwd here, because a notify
            # thread without capabilities may not read a root child's /proc/PID/cwd before that exec.
            path = os.path.join(cwd, path)
        return cls(
            path=os.fsencode(path),
            argv=[os.fsencode(a) for a in argv],
            envp=[os.fsencode(k) + b"=" + os.fsencode(v) for k, v in env.items() if "=" not in k and k],
            cwd=os.fsencode(cwd) if cwd else None,
            stdio=stdio,
            **kw,
        )


@dataclass
class Process:
    """A running sandboxed command: its keeper (our child, mirrors the status) and its process group."""

    keeper: int
    pid: int
    status: int | None = None
    notify: object | None = None  # the command's NotifyLoop, when seccomp is on

    def signal(self, signo: int) -> None:
        """Deliver to the command's process group (what nono-shell forwards)."""
        try:
            os.killpg(self.pid, signo)
        except ProcessLookupError:
            pass

    def kill_tree(self) -> None:
        """Ask the keeper to SIGKILL the command and every descendant (the client went away)."""
        try:
            os.kill(self.keeper, KILL_TREE_SIGNAL)
        except ProcessLookupError:
            pass

    def wait(self) -> int:
        """Block until the command ends; a raw wait status (the keeper mirrors the command's)."""
        if self.status is None:
            _, self.status = os.waitpid(self.keeper, 0)
        return self.status

    def exit_fd(self) -> int:
        """A new fd, the caller's to close, that polls readable once the command has ended: a pidfd of the
        keeper (which mirrors the command's exit)."""
        return os.pidfd_open(self.keeper)

    def poll(self) -> int | None:
        if self.status is None:
            pid, status = os.waitpid(self.keeper, os.WNOHANG)
            if pid:
                self.status = status
        return self.status


_WHERE = struct.Struct("=qq")  # the command's pid and its listener fd number


def _take_listener(ours: socket.socket, on_listener: Callable[[int], object] | None) -> object | None:
    """Copy the command's seccomp listener out of it (pidfd_getfd), start answering it, then let the
    command go on to close its copy and exec. None if the command failed before handing it over."""
    where = ours.recv(_WHERE.size, socket.MSG_WAITALL)
    if len(where) != _WHERE.size:
        return None  # it died first: the error pipe says where
    pid, fd = _WHERE.unpack(where)
    listener = pidfd_getfd(pid, fd)
    if on_listener is None:
        os.close(listener)  # nobody will answer: its trapped syscalls fail (ENOSYS), which is closed
        notify = None
    else:
        notify = on_listener(listener)
    if not getattr(notify, "failure", None):  # else no go-ahead: the command stops before exec (listener_ack)
        ours.sendall(b"k")
    return notify


def _parse_report(text: str) -> tuple[int, str | None]:
    pid, failure = 0, None
    for item in filter(None, text.split(";")):
        key, _, value = item.partition(":")
        if key == "pid" and value.isdigit():
            pid = int(value)
        elif value.isdigit():
            failure = f"{key}: {os.strerror(int(value))}"
        else:
            failure = f"unreadable report from the sandbox child: {item!r}"
    return pid, failure


def start(
    plan: LandlockPlan,
    launch: Launch,
    seccomp: tuple[bytes, int] | None = None,
    on_listener: Callable[[int], object] | None = None,
    *,
    ruleset: int | None = None,
) -> Process:
    """Fork keeper and command, apply ``plan`` (and the ``seccomp`` program and flags), exec.

    ``on_listener(fd)`` receives the seccomp listener before the command execs and must start answering
    it: the exec itself is the first trapped syscall (KERNEL-NOTES "deadlock trap"). ``ruleset``: a
    ruleset fd already holding ``plan`` (``PlanCache``), which this call closes; else one is made here.
    Raises SandboxError (nothing ran) on any failure.
    """
    if ruleset is None:
        ruleset = create_ruleset(plan)
    read_end, write_end = os.pipe2(os.O_CLOEXEC)
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
    program, flags = seccomp or (b"", 0)
    try:
        keeper = _spawn.spawn(
            launch.path,
            launch.argv,
            launch.envp,
            launch.cwd,
            launch.stdio,
            ruleset,
            0,
            program,
            flags,
            theirs.fileno() if seccomp else -1,
            write_end,
            launch.ctty,
            [tuple(pair) for pair in launch.binds] or None,
            launch.userns,
            launch.exec_fd,
        )
    except OSError as e:
        os.close(read_end)
        raise SandboxError(f"fork: {e.strerror}") from None
    finally:
        os.close(write_end)
        os.close(ruleset)
        theirs.close()
    notify = None
    if seccomp:
        with ours:
            notify = _take_listener(ours, on_listener)
    else:
        ours.close()
    chunks = []
    with os.fdopen(read_end, "rb") as report:
        while chunk := report.read(256):
            chunks.append(chunk)
    pid, failure = _parse_report(b"".join(chunks).decode(errors="replace"))
    process = Process(keeper, pid, notify=notify)
    if seccomp and notify is None and not failure:
        failure = "seccomp listener: not received"
    failure = getattr(notify, "failure", None) or failure  # the loop's reason, not the child's listener_ack
    if failure or not pid:
        process.kill_tree()
        process.wait()
        raise SandboxError(f"sandbox setup failed at {failure or 'keeper'}; nothing was run")
    return process
