"""Start one command under its Seatbelt profile on macOS.

The supervisor is multi-threaded (log monitor, socket server), and on macOS a forked copy of a threaded
process may not call into libsandbox (malloc, the Objective-C runtime and libdispatch locks may be held by
threads that did not survive the fork). So the command is not forked from the supervisor: a small helper
interpreter is *spawned* instead, and it applies the sandbox to itself and execs the command.

Parent (``spawn``), in order:
  1. ``prepare``: resolve the program on PATH, encode argv and env (the command's, with its DYLD_* and
     PYTHON* variables intact: they are the command's business once it is sandboxed).
  2. Start ``python -I -c <bootstrap> --plan-fd R --status-fd W`` with a *minimal* environment, the
     command's stdio and cwd.
  3. Write the plan to R, then read W until EOF: EOF means exec happened; a line means a step failed.

Child (``main``), in order:
  1. Read the plan, close its fd; mark the status fd close-on-exec. With ``ctty``, make stdin the
     controlling terminal (the parent started the helper in a new session).
  2. ``sandbox_init(profile, 0, &err)``: from here on the process and everything it execs is confined.
  3. ``execve`` the command (``program``, or ``argv[0]``), in place: its pid is the helper's.

The helper's own environment is minimal and its interpreter isolated (``-I``) because until step 2 it runs
unconfined in the command's working directory: DYLD_INSERT_LIBRARIES, PYTHONPATH or a ``nono_supervisor/``
package in the workdir would otherwise run the agent's code outside the sandbox.

All OS calls that need macOS go through one seam, ``Libsandbox.init``, which tests replace.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import NoReturn, Protocol

from nono_supervisor.errors import SandboxError

__all__ = [
    "LIBSANDBOX",
    "SANDBOX_EXEC",
    "MAX_PLAN",
    "LaunchPlan",
    "Libsandbox",
    "load_libsandbox",
    "prepare",
    "apply_and_exec",
    "take_terminal",
    "helper_argv",
    "spawn",
    "Started",
    "main",
]

LIBSANDBOX = "/usr/lib/libsandbox.1.dylib"
LIBSANDBOX_CANDIDATES = (LIBSANDBOX, "/usr/lib/libSystem.B.dylib")
SANDBOX_EXEC = "/usr/bin/sandbox-exec"
# The plan is a profile (tens of KiB) plus argv and env (ARG_MAX is 1 MiB on macOS). A pipe that says more
# is not from the supervisor.
MAX_PLAN = 8 * 1024 * 1024
# What the helper interpreter itself sees; the command's environment travels in the plan.
HELPER_ENV = {"PATH": "/usr/bin:/bin:/usr/sbin:/sbin", "LC_ALL": "C"}
# Exit statuses of the helper when the command never ran: the contract's 125 for "the sandbox could not be
# set up", and the shell's 126/127 for "found but not executable" / "not found".
EXIT_SANDBOX, EXIT_NOEXEC, EXIT_NOTFOUND = 125, 126, 127


class Libsandbox(Protocol):
    """The one macOS call this module makes. ``init`` confines the calling process for good."""

    def init(self, profile: str) -> str | None:
        """Apply ``profile``; None when applied, else libsandbox's error text."""
        ...


class _CtypesLibsandbox:
    """``sandbox_init(3)`` through ctypes. Deprecated in the SDK headers, still what sandbox-exec uses."""

    def __init__(self, lib) -> None:
        import ctypes

        self._ctypes = ctypes
        self._init = lib.sandbox_init
        self._init.argtypes = [
            ctypes.c_char_p,
            ctypes.c_uint64,
            ctypes.POINTER(ctypes.POINTER(ctypes.c_char)),
        ]
        self._init.restype = ctypes.c_int
        self._free = lib.sandbox_free_error
        self._free.argtypes = [ctypes.POINTER(ctypes.c_char)]
        self._free.restype = None

    def init(self, profile: str) -> str | None:
        ctypes = self._ctypes
        error = ctypes.POINTER(ctypes.c_char)()
        # flags 0: the string is the profile itself (SANDBOX_NAMED would make it a built-in profile's name).
        status = self._init(profile.encode("utf-8"), 0, ctypes.byref(error))
        if status == 0:
            return None
        if not error:
            return f"sandbox_init returned {status}"
        try:
            return ctypes.string_at(error).decode("utf-8", "replace")
        finally:
            self._free(error)


def load_libsandbox(
    paths: Sequence[str] = LIBSANDBOX_CANDIDATES, loader: Callable[[str], object] | None = None
) -> Libsandbox | None:
    """The first of ``paths`` that exports sandbox_init, or None. Loaded on demand, never at import.

    libsandbox is named first; sandbox.h documents sandbox_init as part of libSystem (libsystem_sandbox),
    which every process has, so that is the second place to look. (On macOS 11+ neither file exists on
    disk: dlopen finds both in the dyld shared cache.)
    """
    if loader is None:
        import ctypes

        loader = ctypes.CDLL
    for path in (paths,) if isinstance(paths, str) else paths:
        try:
            lib = loader(path)
            lib.sandbox_init  # noqa: B018 - probe the symbols: AttributeError if absent
            lib.sandbox_free_error  # noqa: B018
        except (OSError, AttributeError):
            continue
        return _CtypesLibsandbox(lib)
    return None


@dataclass(frozen=True)
class LaunchPlan:
    """Everything the child needs, built in the parent: the profile, the program's path, argv and env.

    ``program`` is the file to exec when it is not ``argv[0]`` (the supervisor runs the real shell with the
    shim's argv, ``$0`` included); ``ctty`` makes the inherited stdin the command's controlling terminal
    (the agent's pty under ``run``).
    """

    profile: str
    argv: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    program: str = ""
    ctty: bool = False

    def __post_init__(self) -> None:
        if not self.argv:
            raise SandboxError("launch plan: empty argv")
        if not os.path.isabs(self.executable):
            what = "program" if self.program else "argv[0]"
            raise SandboxError(f"launch plan: {what} must be an absolute path")
        if "\0" in self.profile or "\0" in self.program or any("\0" in a for a in self.argv):
            raise SandboxError("launch plan: NUL byte in the profile, program or argv")

    @property
    def executable(self) -> str:
        """The file execve gets."""
        return self.program or self.argv[0]

    def encode(self) -> bytes:
        # Non-UTF-8 argv/env bytes arrive as lone surrogates (surrogateescape); JSON carries them as \udcXX.
        raw = {"profile": self.profile, "argv": self.argv, "env": self.env}
        if self.program:
            raw["program"] = self.program
        if self.ctty:
            raw["ctty"] = True
        return json.dumps(raw).encode("ascii")

    @classmethod
    def decode(cls, data: bytes) -> LaunchPlan:
        try:
            raw = json.loads(data.decode("ascii"))
            return cls(
                profile=str(raw["profile"]),
                argv=tuple(str(a) for a in raw["argv"]),
                env=tuple((str(k), str(v)) for k, v in raw["env"]),
                program=str(raw.get("program", "")),
                ctty=raw.get("ctty", False) is True,
            )
        except (ValueError, KeyError, TypeError, AttributeError) as e:
            raise SandboxError(f"launch plan: unreadable ({e})") from e


def prepare(
    profile: str,
    argv: Sequence[str],
    env: Mapping[str, str],
    cwd: str,
    *,
    program: str | None = None,
    ctty: bool = False,
) -> LaunchPlan:
    """The plan for one command. PATH lookup happens here, in the parent, with the command's PATH.

    With ``program`` (the supervisor's case: it already found the real shell), that file is exec'd and
    ``argv`` is kept as given, ``argv[0]`` included; a relative ``program`` is relative to ``cwd``.
    """
    if not argv:
        raise SandboxError("no command to run")
    if program is not None:
        if not os.path.isabs(program):
            program = os.path.normpath(os.path.join(cwd, program))
        return LaunchPlan(profile, tuple(argv), tuple(env.items()), program=program, ctty=ctty)
    program = argv[0]
    if "/" not in program:
        found = shutil.which(program, path=env.get("PATH", os.defpath))
        program = found if found else program
    if not os.path.isabs(program):
        program = os.path.normpath(os.path.join(cwd, program))
    return LaunchPlan(profile, (program, *argv[1:]), tuple(env.items()), ctty=ctty)


def _exec_target(plan: LaunchPlan, lib: Libsandbox | None, sandbox_exec: str) -> tuple[str, list[str]]:
    """Apply the sandbox (the seam), then say what to exec: the command, or sandbox-exec wrapping it."""
    if lib is not None:
        # Step 2: confine this process. Everything after, the exec included, runs under the profile.
        error = lib.init(plan.profile)
        if error is not None:
            raise SandboxError(f"sandbox_init refused the profile: {error.strip()}")
        return plan.executable, list(plan.argv)
    # No sandbox_init (a libsandbox without the symbol): the same profile through sandbox-exec, which
    # calls it for us. Both missing means there is nothing to enforce the policy with: run nothing.
    # (sandbox-exec execs its own argv[0], so a separate ``program`` costs the command its argv[0] here.)
    if not os.access(sandbox_exec, os.X_OK):
        raise SandboxError(f"neither sandbox_init ({LIBSANDBOX}) nor {sandbox_exec} is available")
    return sandbox_exec, [sandbox_exec, "-p", plan.profile, "--", plan.executable, *plan.argv[1:]]


# TIOCSCTTY from <sys/ttycom.h> (_IO('t', 97)), for a Python whose termios module lacks the name.
_TIOCSCTTY_DARWIN = 0x20007461


def take_terminal(fd: int = 0) -> None:
    """Make ``fd`` (a terminal) the controlling terminal of this process, a session leader without one.

    The helper is started in a new session (``start_new_session``); BSD does not hand a terminal to a
    session on open, so it is asked for, as the Linux spawner does with the same ioctl.
    """
    import fcntl
    import termios

    request = getattr(termios, "TIOCSCTTY", _TIOCSCTTY_DARWIN)
    try:
        fcntl.ioctl(fd, request, 0)
    except OSError as e:
        raise SandboxError(f"cannot make fd {fd} the controlling terminal: {e.strerror or e}") from None


def apply_and_exec(
    plan: LaunchPlan,
    lib: Libsandbox | None,
    *,
    execve: Callable[[str, list[str], dict[str, str]], NoReturn] = os.execve,
    sandbox_exec: str = SANDBOX_EXEC,
) -> NoReturn:
    """Steps 2 and 3 in the child. Raises SandboxError (nothing ran) or OSError (exec failed)."""
    if plan.ctty:
        take_terminal(0)  # set up before the sandbox, as the Linux spawner does; the command finds it ready
    path, argv = _exec_target(plan, lib, sandbox_exec)
    # Step 3: become the command. The sandbox survives exec; the status fd does not (CLOEXEC).
    execve(path, argv, dict(plan.env))
    raise SandboxError("execve returned")  # only a fake execve gets here


def _report(status_fd: int | None, stage: str, errno: int, message: str) -> None:
    """``stage:hex-errno:message``, one line, as CPython's _posixsubprocess reports a child's failure."""
    if status_fd is not None:
        line = f"{stage}:{errno:x}:{message}".replace("\n", " ")[:4000] + "\n"
        try:
            os.write(status_fd, line.encode("utf-8", "replace"))
        except OSError:
            pass


def _read_all(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := os.read(fd, 65536):
        size += len(chunk)
        if size > limit:
            raise SandboxError(f"launch plan larger than {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def main(
    argv: Sequence[str] | None = None,
    *,
    lib_loader: Callable[[], Libsandbox | None] = load_libsandbox,
    execve: Callable[[str, list[str], dict[str, str]], NoReturn] = os.execve,
    sandbox_exec: str = SANDBOX_EXEC,
) -> int:
    """The helper: ``--plan-fd N [--status-fd M]``. Returns only when the command could not be started."""
    args = list(sys.argv[1:] if argv is None else argv)
    try:
        plan_fd = int(args[args.index("--plan-fd") + 1])
        status_fd = int(args[args.index("--status-fd") + 1]) if "--status-fd" in args else None
    except (ValueError, IndexError):
        sys.stderr.write("nono-shell: runner: usage: --plan-fd N [--status-fd M]\n")
        return EXIT_SANDBOX
    # Step 1: the plan, then make sure only exec can close the status pipe (EOF = exec happened).
    plan: LaunchPlan | None = None
    try:
        if status_fd is not None:
            os.set_inheritable(status_fd, False)
        try:
            plan = LaunchPlan.decode(_read_all(plan_fd, MAX_PLAN))
        finally:
            os.close(plan_fd)
        apply_and_exec(plan, lib_loader(), execve=execve, sandbox_exec=sandbox_exec)
    except SandboxError as e:
        _report(status_fd, "sandbox", 0, str(e))
        sys.stderr.write(f"nono-shell: {e}\n")
        return EXIT_SANDBOX
    except OSError as e:
        _report(status_fd, "exec", e.errno or 0, e.strerror or str(e))
        name = plan.executable if plan is not None else "command"
        sys.stderr.write(f"nono-shell: {name}: {e.strerror or e}\n")
        return EXIT_NOTFOUND if e.errno == 2 else EXIT_NOEXEC


# --------------------------------------------------------------------------------------------------------
# Parent side
# --------------------------------------------------------------------------------------------------------

_BOOTSTRAP = (
    "import sys; sys.path.insert(0, sys.argv[1]); del sys.argv[1]; "
    "from nono_supervisor.macos.runner import main; sys.exit(main())"
)


def _package_root() -> str:
    import nono_supervisor

    return os.path.dirname(os.path.dirname(os.path.abspath(nono_supervisor.__file__)))


def helper_argv(plan_fd: int, status_fd: int, *, python: str | None = None) -> list[str]:
    """The helper's command line. ``-I``: no PYTHON* variables, no user site, no cwd on sys.path."""
    return [
        python or sys.executable,
        "-I",
        "-c",
        _BOOTSTRAP,
        _package_root(),
        "--plan-fd",
        str(plan_fd),
        "--status-fd",
        str(status_fd),
    ]


@dataclass(frozen=True)
class Started:
    """A command the helper exec'd (``failure`` None), or the step that failed and how."""

    process: subprocess.Popen
    failure: tuple[str, int, str] | None = None


def spawn(
    plan: LaunchPlan,
    *,
    cwd: str,
    stdin: int | None = None,
    stdout: int | None = None,
    stderr: int | None = None,
    python: str | None = None,
    popen: Callable[..., subprocess.Popen] = subprocess.Popen,
    **popen_kwargs,
) -> Started:
    """Start the helper for ``plan`` and wait until it has exec'd the command (or failed to).

    Raises SandboxError when the sandbox could not be applied: the command did not run (exit 125).
    """
    plan_r, plan_w = os.pipe()
    status_r, status_w = os.pipe()
    try:
        proc = popen(
            helper_argv(plan_r, status_w, python=python),
            cwd=cwd,
            env=HELPER_ENV,
            stdin=stdin,
            stdout=stdout,
            stderr=stderr,
            pass_fds=(plan_r, status_w),
            **popen_kwargs,
        )
    except BaseException:
        for fd in (plan_r, plan_w, status_r, status_w):
            os.close(fd)
        raise
    os.close(plan_r)
    os.close(status_w)
    try:
        with os.fdopen(plan_w, "wb") as pipe:
            pipe.write(plan.encode())
    except BrokenPipeError:
        pass  # the helper died before reading: its status (or exit) says why
    with os.fdopen(status_r, "rb") as pipe:
        report = pipe.read(8192)
    if not report:
        return Started(proc)
    stage, errno_hex, message = (report.decode("utf-8", "replace").rstrip("\n").split(":", 2) + ["", ""])[:3]
    if stage == "sandbox":
        proc.wait()
        raise SandboxError(message)
    return Started(proc, (stage, int(errno_hex or "0", 16), message))


if __name__ == "__main__":  # pragma: no cover - the helper is started through _BOOTSTRAP
    sys.exit(main())
