"""The macOS backend behind the platform seam, exercised on Linux.

The seam's backend is macOS's (``backend.current``) and one OS seam is faked: the helper interpreter's
``sandbox_init`` (it records the profile it was given instead of applying it), as tests/test_macos_runner.py
does, plus ``log stream``, which is fed recorded lines. Everything else is real: the session's policy
resolved for macOS, the profile compiler, the runner's plan, the helper's exec in a new session on the
caller's fds, the process adapter and its waiter, the log parser and routing, the report, the server's wait
loop and a real nono-shell client.
"""

from __future__ import annotations

import ast
import ctypes
import errno
import json
import os
import queue
import select
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path
from unittest.mock import ANY

import pytest

from conftest import FAKE_KEY, Home, pid_alive, start_sandboxed
from nono_supervisor import backend
from nono_supervisor.errors import SandboxError
from nono_supervisor.launcher import status_code
from nono_supervisor.macos import launch, runner
from nono_supervisor.macos.launch import SeatbeltDenial, macos_policy
from nono_supervisor.macos.process import SandboxedProcess, wait_status
from nono_supervisor.policy.profile import Grant, PolicyOptions
from nono_supervisor.report import CommandReport
from nono_supervisor.session import Session

ROOT = Path(__file__).resolve().parent.parent


# --------------------------------------------------------------------------------------------------------
# The adapter, with real child processes
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("code", [0, 1, 3, 127, 255])
def test_wait_status_of_an_exit(code: int) -> None:
    status = wait_status(code)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == code
    assert os.waitstatus_to_exitcode(status) == code


@pytest.mark.parametrize("signo", [signal.SIGHUP, signal.SIGKILL, signal.SIGTERM, signal.SIGSEGV])
def test_wait_status_of_a_death_by_signal(signo: int) -> None:
    status = wait_status(-signo)
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signo
    assert status_code(status) == 128 + signo


def _readable(fd: int, timeout: float) -> bool:
    return bool(select.select([fd], [], [], timeout)[0])


def _start(argv: list[str], **kw) -> SandboxedProcess:
    return SandboxedProcess(subprocess.Popen(argv, start_new_session=True, **kw))


def test_exit_status_and_exit_fd_of_a_real_child() -> None:
    process = _start(["sh", "-c", "sleep 0.3; exit 7"])
    assert process.pid == process.keeper and process.notify is None
    fd = process.exit_fd()
    try:
        assert process.poll() is None
        assert not _readable(fd, 0.05)  # still running
        assert _readable(fd, 10)
        assert process.poll() is not None  # readable means the status is there
        status = process.wait()
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 7
        assert process.poll() == status == process.wait()
    finally:
        os.close(fd)
    late = process.exit_fd()  # a fresh fd each time, readable for good
    try:
        assert _readable(late, 0)
    finally:
        os.close(late)


def test_signal_goes_to_the_command_s_process_group() -> None:
    process = _start(["sh", "-c", "sleep 30 & echo $!; wait"], stdout=subprocess.PIPE, text=True)
    background = int(process.process.stdout.readline())
    assert os.getpgid(background) == process.pid  # the helper leads its own group
    process.signal(signal.SIGTERM)
    status = process.wait()
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGTERM
    _gone(background)
    process.signal(signal.SIGTERM)  # a group that is gone is no error


def test_kill_tree_kills_what_ignores_signals_and_what_outlived_the_command() -> None:
    stubborn = _start(["sh", "-c", "trap '' TERM INT HUP; echo ready; sleep 30"], stdout=subprocess.PIPE)
    assert stubborn.process.stdout.readline() == b"ready\n"
    stubborn.signal(signal.SIGTERM)
    time.sleep(0.1)
    assert stubborn.poll() is None
    stubborn.kill_tree()
    status = stubborn.wait()
    assert os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL

    # The command exits, its background job stays in its group: the client going away still kills it.
    leader = _start(["sh", "-c", "sleep 30 >/dev/null & echo $!"], stdout=subprocess.PIPE, text=True)
    background = int(leader.process.stdout.readline())
    assert leader.wait() == 0
    assert pid_alive(background)
    leader.kill_tree()
    _gone(background)


def _gone(pid: int) -> None:
    deadline = time.monotonic() + 10
    while pid_alive(pid):
        assert time.monotonic() < deadline, f"pid {pid} survived"
        time.sleep(0.02)


def test_the_exit_is_published_after_on_exit_has_run() -> None:
    seen = []

    def on_exit(status: int) -> None:
        time.sleep(0.2)
        seen.append((status, process.poll()))

    process = SandboxedProcess(subprocess.Popen(["true"]), on_exit=on_exit)
    fd = process.exit_fd()
    try:
        status = process.wait()
        assert seen == [(status, None)]  # on_exit ran while the command still looked alive
        assert _readable(fd, 0)
    finally:
        os.close(fd)


def test_a_failing_on_exit_does_not_hide_the_exit(capfd) -> None:
    def on_exit(status: int) -> None:
        raise RuntimeError("report broke")

    process = SandboxedProcess(subprocess.Popen(["sh", "-c", "exit 4"]), on_exit=on_exit)
    assert os.WEXITSTATUS(process.wait()) == 4
    assert "report broke" in capfd.readouterr().err


# --------------------------------------------------------------------------------------------------------
# The runner's plan: the program apart from argv[0], and the controlling terminal
# --------------------------------------------------------------------------------------------------------


def test_plan_keeps_argv_0_when_the_program_is_given() -> None:
    plan = runner.prepare(
        "(version 1)", ["bash", "-c", "x"], {"A": "1"}, "/w", program="/bin/bash", ctty=True
    )
    assert plan.argv == ("bash", "-c", "x") and plan.executable == "/bin/bash" and plan.ctty
    assert runner.LaunchPlan.decode(plan.encode()) == plan
    assert runner.prepare("p", ["sh"], {}, "/w", program="tools/sh").executable == "/w/tools/sh"
    old = runner.prepare("p", ["/bin/echo", "hi"], {}, "/w")  # without: argv[0] is the program, as before
    assert old.executable == "/bin/echo" and old.program == "" and not old.ctty
    assert b"program" not in old.encode() and b"ctty" not in old.encode()


def test_plan_with_a_program_execs_it_with_the_original_argv(tmp_path: Path) -> None:
    class Lib:
        def init(self, profile):
            return None

    class Exec(Exception):
        pass

    def execve(path, argv, env):
        raise Exec(path, argv)

    plan = runner.LaunchPlan("(version 1)", ("bash", "-c", "x"), (), program="/bin/bash")
    with pytest.raises(Exec) as e:
        runner.apply_and_exec(plan, Lib(), execve=execve)
    assert e.value.args == ("/bin/bash", ["bash", "-c", "x"])
    sandbox_exec = tmp_path / "sandbox-exec"
    sandbox_exec.write_text("#!/bin/sh\n")
    sandbox_exec.chmod(0o755)
    with pytest.raises(Exec) as e:
        runner.apply_and_exec(plan, None, execve=execve, sandbox_exec=str(sandbox_exec))
    assert e.value.args[1] == [str(sandbox_exec), "-p", "(version 1)", "--", "/bin/bash", "-c", "x"]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"profile":"p","argv":["x"],"env":[],"program":"rel"}',
        b'{"profile":"p","argv":[],"env":[],"program":"/bin/sh"}',
    ],
)
def test_plan_with_a_bad_program_is_refused(raw: bytes) -> None:
    with pytest.raises(SandboxError):
        runner.LaunchPlan.decode(raw)


# --------------------------------------------------------------------------------------------------------
# Module boundaries
# --------------------------------------------------------------------------------------------------------


def _imports(path: Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


@pytest.mark.parametrize("mine, theirs", [("macos", "linux"), ("linux", "macos")])
def test_backends_do_not_import_each_other(mine: str, theirs: str) -> None:
    for path in sorted((ROOT / "supervisor" / mine).glob("*.py")):
        bad = {n for n in _imports(path) if n.startswith(f"supervisor.{theirs}")}
        assert not bad, f"{path.name} imports {bad}"


def test_the_darwin_branch_imports_on_linux_without_the_linux_backend() -> None:
    code = (
        "import sys\n"
        "import nono_supervisor.macos.backend, nono_supervisor.macos.launch, nono_supervisor.macos.process\n"
        "assert 'nono_supervisor.linux' not in sys.modules, sorted(m for m in sys.modules if 'linux' in m)\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True, env={**os.environ, "PYTHONPATH": str(ROOT)})


# --------------------------------------------------------------------------------------------------------
# The macOS backend through the seam (compile, start)
# --------------------------------------------------------------------------------------------------------


def _bootstrap(record: Path, error: str | None) -> str:
    """The helper's bootstrap with the one OS call faked: sandbox_init records the profile (or refuses)."""
    return (
        "import sys; sys.path.insert(0, sys.argv[1]); del sys.argv[1]\n"
        "from nono_supervisor.macos.runner import main\n"
        "class Lib:\n"
        "    def init(self, profile):\n"
        f"        with open({str(record)!r}, 'w') as f: f.write(profile)\n"
        f"        return {error!r}\n"
        "sys.exit(main(lib_loader=Lib))\n"
    )


class FakeSeam:
    """Stands in for ``subprocess.Popen`` of the helper: same argv, fds, cwd and env; fake sandbox_init."""

    def __init__(self, record: Path) -> None:
        self.record = record
        self.error: str | None = None
        self.calls: list[dict] = []

    def __call__(self, args, **kw):
        assert args[1:3] == ["-I", "-c"], args  # the helper runs isolated
        assert kw["env"] == runner.HELPER_ENV
        assert kw["start_new_session"] is True
        self.calls.append(kw)
        return subprocess.Popen([args[0], "-I", "-c", _bootstrap(self.record, self.error), *args[4:]], **kw)

    @property
    def profile(self) -> str:
        return self.record.read_text()


class FakeLogStream:
    """``log stream``: lines the test pushes come out of stdout, as the real one's would."""

    def __init__(self, argv) -> None:
        self.argv = list(argv)
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.stdout = iter(self.lines.get, None)

    def push(self, event: dict) -> None:
        self.lines.put(json.dumps(event) + "\n")

    def terminate(self) -> None:
        self.lines.put(None)

    def wait(self, timeout=None) -> int:
        return 0


@pytest.fixture
def darwin(monkeypatch, tmp_path: Path):
    seam = FakeSeam(tmp_path / "applied.sb")
    streams: list[FakeLogStream] = []

    def log_runner(argv):
        streams.append(FakeLogStream(argv))
        return streams[-1]

    monkeypatch.setattr(launch, "HELPER_POPEN", seam)
    monkeypatch.setattr(launch, "LOG_RUNNER", log_runner)
    mac = backend.for_platform("darwin")  # the seam's choice of backend, as on a Mac
    monkeypatch.setattr(backend, "current", lambda: mac)
    seam.streams = streams  # type: ignore[attr-defined]
    yield seam
    launch._stop_monitors()


@pytest.fixture
def session(home: Home):
    s = Session.create(
        PolicyOptions(net_block=True, deny=(str(home.work / "private"),)),
        env=home.env,
        workdir=str(home.work),
        socket=True,
    )
    yield s
    s.close()


def _kernel_denial(op: str, path: str, marker: str, *, pid: int = 0, process: str = "cat") -> dict:
    return {
        "eventMessage": f"Sandbox: {process}(4242) deny(1) {op} {path}\nnono:{marker}",
        "processID": pid,
        "processImagePath": "/kernel",
        "subsystem": "",
    }


def _run(session: Session, argv: list[str], **kw) -> tuple[SandboxedProcess, int, str]:
    """Start through the seam with stdout/stderr on one pipe; returns the process, its status, output."""
    read_end, write_end = os.pipe()
    try:
        process = start_sandboxed(
            session,
            "/bin/sh",
            argv,
            session.services.command_env(session.state.env),
            session.state.workdir,
            (kw.pop("stdin", -1), write_end, write_end),
            **kw,
        )
    finally:
        os.close(write_end)
    with os.fdopen(read_end) as out:
        output = out.read()
    return process, process.wait(), output


def test_the_darwin_branch_runs_the_command_under_the_macos_profile(darwin: FakeSeam, session, home) -> None:
    process, status, output = _run(session, ["sh", "-c", 'echo "hello from $0"; exit 3'])
    assert isinstance(process, SandboxedProcess)
    assert status_code(status) == 3
    assert output == "hello from sh\n"  # the caller's fd, written by the command itself; argv[0] kept
    profile = darwin.profile
    marker = process.marker
    assert marker and marker.startswith(f"{session.id}-")
    assert f'(deny default (with message "nono:{marker}"))' in profile
    # The policy's denies: a group of the macOS security list and the --deny of the options.
    for denied in (home.home / ".ssh", home.work / "private"):
        assert f'(deny file-read-data (subpath "{denied}") (with message "nono:{marker}"))' in profile
        assert f'(deny file-write* (subpath "{denied}") (with message "nono:{marker}"))' in profile
    assert f'(subpath "{home.home}/Library/Keychains")' in profile  # resolved for macOS, not Linux
    assert '"/proc"' not in profile
    # --net-block, with the supervisor's socket still reachable for nested commands.
    assert f'(allow network-outbound (literal "{session.state.socket_path}"))' in profile
    # nono-shell itself stays readable (nested routing), the workdir writable.
    assert f'(subpath "{sys.prefix}")' in profile
    assert f'(allow file-read* file-write* file-map-executable file-ioctl (subpath "{home.work}"))' in profile
    assert darwin.calls[0]["cwd"] == str(home.work)


def test_a_profile_the_sandbox_refuses_runs_nothing(darwin: FakeSeam, session, home) -> None:
    darwin.error = "<input string>:12:1: unbound variable"
    decisions = []
    with pytest.raises(SandboxError, match="unbound variable"):
        _run(session, ["sh", "-c", "touch ran"], on_decision=lambda *a: decisions.append(a))
    assert not (home.work / "ran").exists()
    assert decisions == []
    assert darwin.profile.startswith("(version 1)")  # it got as far as sandbox_init, and no further


def test_a_helper_that_cannot_start_is_a_sandbox_error(darwin: FakeSeam, session, home) -> None:
    with pytest.raises(SandboxError, match="nothing was run"):
        start_sandboxed(
            session, "/bin/sh", ["sh", "-c", "true"], {}, str(home.root / "missing"), (-1, -1, -1)
        )


def test_a_recorded_log_denial_reaches_on_decision(darwin: FakeSeam, session, home) -> None:
    flag = home.work / "go"
    decisions: list[tuple[str, object]] = []
    report = CommandReport(session.services.audit, session.state.policy, "c1", ["sh"], str(home.work))

    def on_decision(decision: str, what) -> None:
        decisions.append((decision, what))
        report.record(decision, what)

    read_end, write_end = os.pipe()
    process = start_sandboxed(
        session,
        "/bin/sh",
        ["sh", "-c", f"while [ ! -e {flag} ]; do sleep 0.01; done; exit 1"],
        {"PATH": "/usr/bin:/bin"},
        str(home.work),
        (-1, write_end, write_end),
        on_decision=on_decision,
    )
    os.close(write_end)
    (stream,) = darwin.streams
    assert stream.argv[:2] == ["/usr/bin/log", "stream"] and f"nono:{session.id}-" in stream.argv[-1]
    marker = process.marker
    stream.push(_kernel_denial("file-read-data", str(home.key), marker))
    stream.push(_kernel_denial("file-write-create", "/opt/new-file", marker, process="touch"))
    stream.push(_kernel_denial("network-outbound", "*:443", marker, process="curl"))  # no path: not reported
    stream.push(_kernel_denial("file-read-data", "/etc/shadow", marker, pid=4242))  # not the kernel: forged
    stream.push(_kernel_denial("file-read-data", "/etc/passwd", f"{session.id}-999"))  # another command
    flag.touch()
    status = process.wait()
    os.close(read_end)
    assert status_code(status) == 1
    assert decisions == [
        (
            "deny",
            SeatbeltDenial(
                "read", str(home.key), "group:deny_credentials", False, 0, "cat", "file-read-data", 4242
            ),
        ),
        (
            "deny",
            SeatbeltDenial(
                "create", "/opt/new-file", "not granted", False, 0, "touch", "file-write-create", 4242
            ),
        ),
    ]
    assert report.lines() == [
        "nono: denied read ~/.ssh/id_rsa [group:deny_credentials]; to allow: --read-file ~/.ssh/id_rsa",
        "nono: denied create /opt/new-file [not granted]; to allow: --write-file /opt/new-file",
    ]
    audited = [(r["op"], r["path"], r["decision"], r["rule"]) for r in home.audit() if r.get("op")]
    assert audited == [
        ("read", str(home.key), "deny", "group:deny_credentials"),
        ("create", "/opt/new-file", "deny", "not granted"),
    ]


def test_grants_added_to_the_session_policy_reach_the_macos_profile(darwin: FakeSeam, session, home) -> None:
    """Prompt grants live in session.state.policy (resolved for Linux) and in the retry policy of --prompt
    after; the macOS profile is compiled from the macOS resolution and must carry them."""
    session.state.add_grant(str(home.home / "notes"), "read", "dir")
    retry = replace(
        session.state.policy,
        grants=session.state.policy.grants + (Grant(str(home.key), "read", "file", "user"),),
    )
    process, status, _ = _run(session, ["sh", "-c", "true"], policy=retry)
    assert status == 0
    profile = darwin.profile
    assert f'(allow file-read* file-map-executable file-ioctl (subpath "{home.home}/notes"))' in profile
    # The exception is placed after the deny of ~/.ssh it overrides.
    deny = profile.index(f'(deny file-read-data (subpath "{home.home}/.ssh")')
    exception = profile.index(f'(allow file-read-data (literal "{home.key}"))')
    assert deny < exception
    assert '"/proc"' not in profile  # still the macOS resolution underneath


def test_macos_policy_reresolves_only_a_policy_of_another_platform(session, home) -> None:
    linux = session.state.policy
    mac = session.state.policy_for("macos")
    calls = []

    def resolve():
        calls.append(1)
        return mac

    assert macos_policy(mac, resolve) is mac and calls == []
    assert macos_policy(linux, resolve) is mac and calls == [1]
    user = Grant(str(home.home / "x"), "allow", "dir", "user")
    carried = macos_policy(replace(linux, grants=linux.grants + (user,)), resolve)
    assert carried.platform == "macos" and carried.grants == mac.grants + (user,)


def test_ctty_makes_the_pty_the_command_s_controlling_terminal(darwin: FakeSeam, session) -> None:
    script = "if (: </dev/tty) 2>/dev/null; then echo has-ctty; else echo no-ctty; fi"
    for ctty, expected in ((True, "has-ctty"), (False, "no-ctty")):
        master, slave = os.openpty()
        try:
            process = start_sandboxed(
                session,
                "/bin/sh",
                ["sh", "-c", script],
                {"PATH": "/usr/bin:/bin"},
                session.state.workdir,
                (slave, slave, slave),
                ctty=ctty,
            )
        finally:
            os.close(slave)
        process.wait()
        output = b""
        while _readable(master, 0.2):
            try:
                chunk = os.read(master, 4096)
            except OSError:
                break
            if not chunk:
                break
            output += chunk
        os.close(master)
        assert expected in output.decode(), (ctty, output)


# --------------------------------------------------------------------------------------------------------
# Through the server: a real nono-shell client, the server's wait loop on the adapter's exit_fd, behind a
# libc with macOS's symbols only
# --------------------------------------------------------------------------------------------------------

_LINUX_LIBC = ctypes.CDLL(None, use_errno=True)  # taken before any fake: what the fake's renamex_np uses
_RENAME_EXCL, _RENAME_NOREPLACE, _AT_FDCWD = 0x4, 0x1, -100
# Functions of macOS's libSystem that a supervisor could reach for; not renameat2, pidfd_*, syscall (macOS
# has syscall(2), deprecated, but no Linux syscall behind any number), memfd_create, process_vm_readv...
MACOS_SYMBOLS = frozenset(
    {"renamex_np", "renameatx_np", "sandbox_init", "sandbox_free_error", "getpeereid", "posix_spawn"}
)
_LINUX_ONLY_OS = ("pidfd_open", "memfd_create", "eventfd", "splice", "pipe2", "copy_file_range")


class MacLibSystem:
    """``ctypes.CDLL(None)`` as macOS answers it: libSystem's functions, and AttributeError (dlsym's
    "symbol not found") for any other. ``renamex_np`` is carried out by Linux's renameat2, RENAME_EXCL as
    RENAME_NOREPLACE, so the server's socket really moves; every call is recorded."""

    def __init__(self, name=None, *args, **kw) -> None:
        if name is not None:  # libsandbox and the like: this fake Mac has none
            raise OSError(f"dlopen({name}, 6): image not found")
        self.calls: list[tuple] = []
        MacLibSystem.loaded.append(self)

    loaded: list[MacLibSystem] = []

    def __getattr__(self, name: str):
        if name not in MACOS_SYMBOLS:
            raise AttributeError(f"dlsym(RTLD_DEFAULT, {name}): symbol not found")
        if name != "renamex_np":
            raise NotImplementedError(f"the fake has no {name}: the test must say what it does")

        def renamex_np(source: bytes, target: bytes, flags: int) -> int:
            self.calls.append(("renamex_np", source, target, flags))
            assert flags == _RENAME_EXCL, flags  # the only flag the server may use
            return _LINUX_LIBC.renameat2(_AT_FDCWD, source, _AT_FDCWD, target, _RENAME_NOREPLACE)

        setattr(self, name, renamex_np)  # argtypes may be set on it, as on a ctypes function
        return renamex_np


@pytest.fixture
def macos_libc(monkeypatch):
    """macOS's libc for the test's duration: ctypes.CDLL(None) is MacLibSystem, the os functions Python has
    only on Linux are gone, and the Linux backend cannot be imported (each of its modules is None in
    sys.modules), so a Linux-only call anywhere on the server's way fails the test."""
    import nono_supervisor

    MacLibSystem.loaded.clear()
    monkeypatch.setattr(ctypes, "CDLL", MacLibSystem)
    for name in _LINUX_ONLY_OS:
        monkeypatch.delattr(os, name, raising=False)
    linux = [m for m in sys.modules if m.startswith("nono_supervisor.linux")]
    for module in {"nono_supervisor.linux", *linux}:
        monkeypatch.setitem(sys.modules, module, None)
    monkeypatch.delattr(nono_supervisor, "linux", raising=False)
    yield MacLibSystem.loaded


def test_the_macos_libc_fake_has_none_of_linux_s_calls(macos_libc) -> None:
    libc = ctypes.CDLL(None, use_errno=True)
    for linux_only in ("renameat2", "pidfd_getfd", "pidfd_open", "syscall", "process_vm_readv", "capset"):
        with pytest.raises(AttributeError):
            getattr(libc, linux_only)
    assert not hasattr(os, "pidfd_open")
    with pytest.raises(ImportError):
        from nono_supervisor.linux import libc as _linux  # noqa: F401
    # The server's start-up before issue 21 (renameat2 through its own handle) fails here, as on a Mac.
    with pytest.raises(AttributeError, match="renameat2"):
        libc.renameat2(_AT_FDCWD, b"a", _AT_FDCWD, b"b", _RENAME_NOREPLACE)


def test_policy_and_doctor_run_on_macos_without_the_linux_backend(
    darwin, macos_libc, home, monkeypatch, capsys
) -> None:
    """cli's policy notes and --format landlock went to the Linux backend whatever the platform."""
    from nono_supervisor import cli

    for name, value in home.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(home.work)

    def run(*argv: str) -> tuple[int, str, str]:
        with pytest.raises(SystemExit) as e:
            cli.main(list(argv))
        out = capsys.readouterr()
        return e.value.code, out.out, out.err

    code, out, err = run("policy")
    assert code == 0 and "profile: default" in out and err == ""
    assert "enforced by: Seatbelt" in out and "Landlock" not in out and "seccomp" not in out
    assert "(deny default" in run("policy", "--format", "seatbelt")[1]
    code, out, err = run("policy", "--format", "landlock")
    assert code != 0 and out == ""
    assert err == "nono-supervisor: Landlock plans are Linux's; this is darwin (try --format seatbelt)\n"
    code, out, err = run("doctor")  # this fake Mac has neither sandbox_init nor sandbox-exec
    assert code == 1 and "[FAIL] seatbelt sandbox_init: missing" in out


@pytest.fixture
def served(darwin: FakeSeam, macos_libc, home: Home):
    from nono_supervisor.server import Server

    session = Session.create(PolicyOptions(), env=home.env, workdir=str(home.work), shims=True, socket=True)
    server = Server(session)
    server.start()
    env = {
        **home.env,
        "NONO_SOCKET": str(session.state.socket_path),
        "PATH": f"{session.files.shims_dir}:{home.env['PATH']}",
    }
    yield session, env
    server.close()
    session.close()


def test_server_runs_the_command_on_the_client_s_fds_and_reports_its_denials(
    darwin, served, macos_libc, home
) -> None:
    session, env = served
    monitor = launch.monitor_for(session.id)  # the first command of the session gets marker <id>-1
    (stream,) = darwin.streams
    flag = home.work / "go"
    client = subprocess.Popen(
        [
            str(session.files.shims_dir / "bash"),
            "-c",
            f"echo out; while [ ! -e {flag} ]; do sleep 0.01; done; exit 2",
        ],
        cwd=home.work,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert client.stdout.readline() == "out\n"  # straight from the command, while it runs
    stream.push(_kernel_denial("file-read-data", str(home.key), monitor.marker(1)))
    flag.touch()
    out, err = client.communicate(timeout=30)
    assert client.returncode == 2
    assert (
        "nono: denied read ~/.ssh/id_rsa [group:deny_credentials]; to allow: --read-file ~/.ssh/id_rsa" in err
    )
    assert FAKE_KEY not in out + err
    events = [r.get("event") or r.get("decision") for r in home.audit()]
    assert events == ["start", "deny", "exit"]
    # The socket was put in place by macOS's call (renameat2 does not exist there).
    renames = [call for libc in macos_libc for call in libc.calls]
    assert renames == [("renamex_np", ANY, os.fsencode(session.state.socket_path), _RENAME_EXCL)]


def test_a_second_server_on_a_live_socket_is_refused_on_macos(darwin, served, home) -> None:
    """renamex_np's EEXIST is the server's EADDRINUSE, and the live socket stays (as on Linux)."""
    from nono_supervisor.server import Server

    session, env = served
    with pytest.raises(OSError) as e:
        Server(session)
    assert e.value.errno == errno.EADDRINUSE
    client = subprocess.run(
        [str(session.files.shims_dir / "bash"), "-c", "echo still-served"],
        env=env,
        capture_output=True,
        text=True,
    )
    assert client.stdout == "still-served\n"


def test_server_forwards_signals_and_kills_the_group_when_the_client_goes(darwin, served, home) -> None:
    session, env = served
    client = subprocess.Popen(
        [str(session.files.shims_dir / "bash"), "-c", "sleep 30 & echo $!; wait"],
        cwd=home.work,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    background = int(client.stdout.readline())
    client.send_signal(signal.SIGTERM)  # forwarded to the command's group
    assert client.wait(30) == 128 + signal.SIGTERM
    _gone(background)

    client = subprocess.Popen(
        [str(session.files.shims_dir / "bash"), "-c", "sleep 30 & echo $!; wait"],
        cwd=home.work,
        env=env,
        stdout=subprocess.PIPE,
        text=True,
    )
    background = int(client.stdout.readline())
    client.kill()  # no signal to forward: the connection just drops
    client.wait()
    _gone(background)
