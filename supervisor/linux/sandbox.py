"""Start one command in its own Linux sandbox: prepare everything here, apply it in the child (``_spawn``)."""

from __future__ import annotations

import os
import select
import socket
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from nono_supervisor.backend import GroupSignal
from nono_supervisor.errors import SandboxError
from nono_supervisor.linux import _spawn
from nono_supervisor.linux.kernel import pidfd_getfd
from nono_supervisor.linux.landlock import LandlockPlan, create_ruleset

__all__ = ["Launch", "Process", "start", "reap_keepers"]

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
class Process(GroupSignal):
    """A running sandboxed command: its keeper (our child), the command's pid (also its process group) and
    the status pipe on which the keeper reports the command's wait status the moment it ends. The keeper
    may live on after that, as the subreaper of what the command left running (a background job, a
    daemon), until that is gone or the supervisor is; it is reaped by ``reap_keepers``."""

    keeper: int
    pid: int
    status_fd: int = -1  # ours to close (``wait``/``poll`` do once the status is read)
    status: int | None = None
    notify: object | None = None  # the command's NotifyLoop, when seccomp is on
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def kill_tree(self) -> None:
        """Ask the keeper to SIGKILL the command and every descendant (the client went away). Only while
        the command runs: once its status is read the keeper may have been reaped, and its pid reused.
        Under the lock, as the status is set and the keeper reaped (``_collect``): a kill from another
        thread (run's watch of the agent's end, a late deny) cannot reach a pid reaped meanwhile
        (test_kill_tree_never_signals_a_reaped_keeper)."""
        with self._lock:
            if self.status is not None:
                return
            try:
                os.kill(self.keeper, KILL_TREE_SIGNAL)
            except ProcessLookupError:
                pass

    def wait(self) -> int:
        """Block until the command ends; its raw wait status."""
        if self.status is None:
            self._collect()
        return self.status

    def poll(self) -> int | None:
        if self.status is None:
            ready = select.poll()  # not select.select: the fd may be over FD_SETSIZE in a busy supervisor
            ready.register(self.status_fd, select.POLLIN)
            if ready.poll(0):
                self._collect()
        return self.status

    def exit_fd(self) -> int:
        """A new fd, the caller's to close, that polls readable once the command has ended (a copy of the
        status pipe, or an empty pipe already at EOF if the status was read)."""
        with self._lock:
            if self.status_fd >= 0:
                return os.dup(self.status_fd)
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        os.close(write_end)
        return read_end

    def _collect(self) -> None:
        """Read the status the keeper reports (one write), close the pipe, reap the keeper if it is done.
        EOF with no status: the keeper died first (killed), and its own status is the command's."""
        report = os.read(self.status_fd, 64).decode(errors="replace")
        key, _, value = report.partition(";")[0].partition(":")
        with self._lock:
            os.close(self.status_fd)
            self.status_fd = -1
            if key == "exit" and value.isdigit():
                self.status = int(value)
                _linger(self.keeper)
            else:
                self.status = os.waitpid(self.keeper, 0)[1]


# Keepers whose command ended but whose tree has not: our children, so their pids stay theirs until reaped.
_lingering: set[int] = set()
_lingering_lock = threading.Lock()


def _linger(keeper: int) -> None:
    with _lingering_lock:
        _lingering.add(keeper)
    reap_keepers()


def reap_keepers() -> int:
    """Reap the keepers whose trees have ended (each command's start sweeps); how many still keep one."""
    with _lingering_lock:
        for keeper in list(_lingering):
            try:
                done = os.waitpid(keeper, os.WNOHANG)[0]
            except ChildProcessError:
                done = keeper
            if done:
                _lingering.discard(keeper)
        return len(_lingering)


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
    Raises SandboxError (nothing ran) on any failure, having closed every fd it took and reaped what it
    started (issue 23: a refused request leaked a pipe, and a flood of them the supervisor's fds).
    """
    reap_keepers()
    held: list[int] = []  # every fd this call opened, and ``ruleset``: none outlives it on any path
    try:
        held.append(create_ruleset(plan) if ruleset is None else ruleset)
        read_end, write_end = os.pipe2(os.O_CLOEXEC)
        held += (read_end, write_end)
        status_read, status_write = os.pipe2(os.O_CLOEXEC)
        held += (status_read, status_write)
        pair = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        ours, theirs = (end.detach() for end in pair)
        held += (ours, theirs)
        program, flags = seccomp or (b"", 0)
        try:
            keeper = _spawn.spawn(
                launch.path,
                launch.argv,
                launch.envp,
                launch.cwd,
                launch.stdio,
                held[0],
                0,
                program,
                flags,
                theirs if seccomp else -1,
                write_end,
                status_write,
                launch.ctty,
                [tuple(pair) for pair in launch.binds] or None,
                launch.userns,
                launch.exec_fd,
            )
        except OSError as e:
            raise SandboxError(f"fork: {e.strerror}") from None
        except ValueError as e:  # a NUL byte in argv, environment or cwd (the server refuses those first)
            raise SandboxError(str(e)) from None
        for fd in (held[0], write_end, status_write, theirs, status_read):  # the keeper holds its copies
            held.remove(fd)
            if fd != status_read:
                os.close(fd)
        process = Process(keeper, 0, status_read)
        try:
            notify = None
            if seccomp:
                held.remove(ours)
                with socket.socket(fileno=ours) as sock:
                    notify = _take_listener(sock, on_listener)
            chunks = []
            while chunk := os.read(read_end, 256):
                chunks.append(chunk)
        except BaseException:
            process.kill_tree()
            process.wait()
            raise
    finally:
        for fd in held:
            os.close(fd)
    process.pid, failure = _parse_report(b"".join(chunks).decode(errors="replace"))
    process.notify = notify
    if seccomp and notify is None and not failure:
        failure = "seccomp listener: not received"
    failure = getattr(notify, "failure", None) or failure  # the loop's reason, not the child's listener_ack
    if failure or not process.pid:
        process.kill_tree()
        process.wait()
        raise SandboxError(f"sandbox setup failed at {failure or 'keeper'}; nothing was run")
    return process
