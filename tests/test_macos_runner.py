"""The macOS runner, exercised on any OS: only the ``Libsandbox`` seam (sandbox_init) is faked.

Everything around it is real: the plan encoding, the helper's fd handling and CLOEXEC status pipe, the
exec, and (in the subprocess tests) the isolated helper interpreter the supervisor would start.
"""

from __future__ import annotations

import ctypes
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nono_supervisor.errors import SandboxError
from nono_supervisor.macos import runner
from nono_supervisor.macos.runner import LaunchPlan, apply_and_exec, load_libsandbox, main, prepare, spawn

PROFILE = '(version 1)\n(deny default (with message "nono:s1-c1"))\n'
PROFILE += '(allow file-read* (subpath "/Users/é \\"q\\""))\n'


class FakeLib:
    """The seam: records what it was asked to apply, answers like sandbox_init."""

    def __init__(self, error: str | None = None) -> None:
        self.error = error
        self.profiles: list[str] = []

    def init(self, profile: str) -> str | None:
        self.profiles.append(profile)
        return self.error


class Exec(Exception):
    """Raised by the fake execve so the test sees what would have been exec'd."""


def fake_execve(path, argv, env):
    raise Exec(path, argv, env)


def plan(**kw) -> LaunchPlan:
    return LaunchPlan(
        kw.get("profile", PROFILE), kw.get("argv", ("/bin/echo", "hi")), kw.get("env", (("A", "1"),))
    )


# --------------------------------------------------------------------------------------------------------
# apply_and_exec: the order of the two steps, and failing closed
# --------------------------------------------------------------------------------------------------------


def test_sandbox_is_applied_before_the_command_is_exec_d() -> None:
    lib, calls = FakeLib(), []

    def execve(path, argv, env):
        calls.append(("exec", list(lib.profiles)))
        raise Exec(path, argv, env)

    with pytest.raises(Exec) as e:
        apply_and_exec(plan(), lib, execve=execve)
    assert lib.profiles == [PROFILE]
    assert calls == [("exec", [PROFILE])]  # the profile was in force when exec happened
    assert e.value.args == ("/bin/echo", ["/bin/echo", "hi"], {"A": "1"})


def test_refused_profile_runs_nothing() -> None:
    with pytest.raises(SandboxError, match="unbound variable"):
        apply_and_exec(plan(), FakeLib("<input string>:3:1: unbound variable: allw"), execve=fake_execve)


def test_without_sandbox_init_the_profile_goes_through_sandbox_exec(tmp_path: Path) -> None:
    sandbox_exec = tmp_path / "sandbox-exec"
    sandbox_exec.write_text("#!/bin/sh\n")
    sandbox_exec.chmod(0o755)
    with pytest.raises(Exec) as e:
        apply_and_exec(plan(), None, execve=fake_execve, sandbox_exec=str(sandbox_exec))
    path, argv, env = e.value.args
    assert path == str(sandbox_exec)
    assert argv == [str(sandbox_exec), "-p", PROFILE, "--", "/bin/echo", "hi"]
    assert env == {"A": "1"}


def test_without_any_sandbox_mechanism_nothing_runs(tmp_path: Path) -> None:
    with pytest.raises(SandboxError, match="neither sandbox_init"):
        apply_and_exec(plan(), None, execve=fake_execve, sandbox_exec=str(tmp_path / "missing"))


# --------------------------------------------------------------------------------------------------------
# The ctypes wrapper, against C-callable fakes of sandbox_init / sandbox_free_error
# --------------------------------------------------------------------------------------------------------

_ErrPtr = ctypes.POINTER(ctypes.c_char)
_InitT = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.c_char_p, ctypes.c_uint64, ctypes.POINTER(_ErrPtr))
_FreeT = ctypes.CFUNCTYPE(None, _ErrPtr)


class CLib:
    """Looks like ctypes.CDLL("/usr/lib/libsandbox.1.dylib") to the wrapper."""

    def __init__(self, status: int, message: bytes | None) -> None:
        self.seen: list[tuple[bytes, int]] = []
        self.freed: list[int] = []
        self._buffer = ctypes.create_string_buffer(message) if message is not None else None

        def init(profile, flags, errorbuf):
            self.seen.append((profile, flags))
            if self._buffer is not None:
                errorbuf[0] = ctypes.cast(self._buffer, _ErrPtr)
            return status

        def free(error):
            self.freed.append(ctypes.cast(error, ctypes.c_void_p).value)

        self.sandbox_init = _InitT(init)
        self.sandbox_free_error = _FreeT(free)


def test_ctypes_wrapper_passes_the_profile_as_utf8_with_flags_zero() -> None:
    clib = CLib(0, None)
    lib = load_libsandbox("/usr/lib/libsandbox.1.dylib", loader=lambda path: clib)
    assert lib is not None and lib.init(PROFILE) is None
    assert clib.seen == [(PROFILE.encode("utf-8"), 0)]
    assert clib.freed == []


def test_ctypes_wrapper_returns_and_frees_the_error() -> None:
    clib = CLib(-1, b"<input string>:2:1: unbound variable: allw")
    lib = load_libsandbox(loader=lambda path: clib)
    assert lib is not None and lib.init(PROFILE) == "<input string>:2:1: unbound variable: allw"
    assert clib.freed == [ctypes.addressof(clib._buffer)]


def test_ctypes_wrapper_without_error_text() -> None:
    lib = load_libsandbox(loader=lambda path: CLib(-1, None))
    assert lib is not None and lib.init(PROFILE) == "sandbox_init returned -1"


def test_missing_library_or_symbol_means_no_libsandbox() -> None:
    def missing(path):
        raise OSError(f"dlopen({path}): image not found")

    assert load_libsandbox(loader=missing) is None
    assert load_libsandbox(loader=lambda path: object()) is None  # no sandbox_init symbol


def test_sandbox_init_is_looked_up_in_libsystem_when_libsandbox_lacks_it() -> None:
    clib, tried = CLib(0, None), []

    def loader(path):
        tried.append(path)
        return clib if path == "/usr/lib/libSystem.B.dylib" else object()

    lib = load_libsandbox(loader=loader)
    assert tried == ["/usr/lib/libsandbox.1.dylib", "/usr/lib/libSystem.B.dylib"]
    assert lib is not None and lib.init("(version 1)") is None


def test_importing_the_macos_backend_loads_no_library() -> None:
    code = (
        "import ctypes, sys\n"
        "loaded = []\n"
        "real = ctypes.CDLL.__init__\n"
        "ctypes.CDLL.__init__ = lambda self, *a, **k: (loaded.append(a), real(self, *a, **k))[1]\n"
        "from nono_supervisor.macos import runner, logstream, seatbelt\n"
        "assert not loaded, loaded\n"
        "assert 'nono_supervisor.linux' not in sys.modules\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env)


# --------------------------------------------------------------------------------------------------------
# The plan
# --------------------------------------------------------------------------------------------------------


def test_plan_round_trips_unicode_and_undecodable_bytes() -> None:
    odd = os.fsdecode(b"/tmp/caf\xe9-\xff")  # not UTF-8: arrives as lone surrogates
    p = LaunchPlan(PROFILE, ("/bin/cat", odd, "é ☃"), (("LANG", "fr_FR.UTF-8"), ("X", odd)))
    assert LaunchPlan.decode(p.encode()) == p
    assert os.fsencode(LaunchPlan.decode(p.encode()).argv[1]) == b"/tmp/caf\xe9-\xff"


@pytest.mark.parametrize("data", [b"", b"{", b'{"profile": "x"}', b'{"profile":"x","argv":["rel"],"env":[]}'])
def test_malformed_plan_is_refused(data: bytes) -> None:
    with pytest.raises(SandboxError):
        LaunchPlan.decode(data)


def test_prepare_resolves_the_program_on_the_command_path(tmp_path: Path) -> None:
    tool = tmp_path / "bin" / "mytool"
    tool.parent.mkdir()
    tool.write_text("#!/bin/sh\n")
    tool.chmod(0o755)
    p = prepare(PROFILE, ["mytool", "-x"], {"PATH": str(tool.parent)}, cwd="/")
    assert p.argv == (str(tool), "-x")
    assert (
        prepare(PROFILE, ["./run.sh"], {}, cwd="/Users/alice/project").argv[0]
        == "/Users/alice/project/run.sh"
    )
    with pytest.raises(SandboxError):
        prepare(PROFILE, [], {}, cwd="/")


# --------------------------------------------------------------------------------------------------------
# main(): the helper in this process, with pipes for its fds
# --------------------------------------------------------------------------------------------------------


def run_main(p: LaunchPlan | bytes, lib: FakeLib | None, execve=fake_execve, **kw):
    plan_r, plan_w = os.pipe()
    status_r, status_w = os.pipe()
    os.write(plan_w, p if isinstance(p, bytes) else p.encode())
    os.close(plan_w)
    try:
        result = main(
            ["--plan-fd", str(plan_r), "--status-fd", str(status_w)],
            lib_loader=lambda: lib,
            execve=execve,
            **kw,
        )
    finally:
        os.close(status_w)
    with os.fdopen(status_r, "rb") as f:
        status = f.read()
    return result, status


def test_main_reports_a_refused_profile_on_the_status_pipe(capsys) -> None:
    code, status = run_main(plan(), FakeLib("syntax error"))
    assert code == 125
    assert status.startswith(b"sandbox:0:sandbox_init refused the profile: syntax error")
    assert "nono-shell: sandbox_init refused" in capsys.readouterr().err


def test_main_reports_a_missing_program_with_its_errno() -> None:
    def execve(path, argv, env):
        raise FileNotFoundError(2, "No such file or directory")

    code, status = run_main(plan(argv=("/nope/tool",)), FakeLib(), execve=execve)
    assert code == 127 and status == b"exec:2:No such file or directory\n"


def test_main_marks_the_status_pipe_close_on_exec() -> None:
    seen = {}

    def execve(path, argv, env):
        seen["inheritable"] = os.get_inheritable(int(sys.argv_status_fd))
        raise Exec(path)

    plan_r, plan_w = os.pipe()
    status_r, status_w = os.pipe()
    os.set_inheritable(status_w, True)
    sys.argv_status_fd = status_w  # type: ignore[attr-defined]
    os.write(plan_w, plan().encode())
    os.close(plan_w)
    try:
        with pytest.raises(Exec):
            main(["--plan-fd", str(plan_r), "--status-fd", str(status_w)], lib_loader=FakeLib, execve=execve)
    finally:
        del sys.argv_status_fd  # type: ignore[attr-defined]
        os.close(status_w)
        os.close(status_r)
    assert seen == {"inheritable": False}


def test_oversized_plan_is_refused(monkeypatch) -> None:
    monkeypatch.setattr(runner, "MAX_PLAN", 1000)
    code, status = run_main(plan(profile="x" * 5000), FakeLib())
    assert code == 125 and b"larger than 1000" in status


def test_bad_helper_arguments(capsys) -> None:
    assert main(["--plan-fd"], lib_loader=FakeLib, execve=fake_execve) == 125


# --------------------------------------------------------------------------------------------------------
# spawn(): a real helper interpreter, a real exec; only sandbox_init is replaced
# --------------------------------------------------------------------------------------------------------

# Replaces the helper's bootstrap: same path setup, then main() with a fake seam that writes the profile it
# was given next to the command's output (and refuses it when asked to).
_TEST_BOOTSTRAP = (
    "import sys, os; sys.path.insert(0, sys.argv[1]); del sys.argv[1]\n"
    "from nono_supervisor.macos.runner import main\n"
    "class Lib:\n"
    "    def init(self, profile):\n"
    "        open(os.path.join(os.getcwd(), 'applied.sb'), 'w').write(profile)\n"
    "        return 'refused by test' if 'REFUSE' in profile else None\n"
    "sys.exit(main(lib_loader=Lib))\n"
)


def popen_with_fake_seam(args, **kw):
    assert args[1:3] == ["-I", "-c"], args  # the helper runs isolated
    assert kw["env"] == runner.HELPER_ENV  # and without the command's environment
    return subprocess.Popen([args[0], "-I", "-c", _TEST_BOOTSTRAP, *args[4:]], **kw)


def test_spawn_applies_the_profile_then_runs_the_command(tmp_path: Path) -> None:
    env = {"PATH": "/usr/bin:/bin", "DYLD_INSERT_LIBRARIES": "/x/evil.dylib", "GREETING": "héllo"}
    p = prepare(PROFILE, ["sh", "-c", 'printf "%s" "$GREETING" > out.txt; exit 3'], env, cwd=str(tmp_path))
    started = spawn(p, cwd=str(tmp_path), popen=popen_with_fake_seam)
    assert started.failure is None
    assert started.process.wait(10) == 3
    assert (tmp_path / "applied.sb").read_text() == PROFILE
    assert (tmp_path / "out.txt").read_text() == "héllo"  # the command got its own environment back


def test_spawn_refused_profile_raises_and_the_command_never_runs(tmp_path: Path) -> None:
    p = prepare(
        PROFILE + "; REFUSE\n", ["sh", "-c", "touch ran"], {"PATH": "/usr/bin:/bin"}, cwd=str(tmp_path)
    )
    with pytest.raises(SandboxError, match="refused by test"):
        spawn(p, cwd=str(tmp_path), popen=popen_with_fake_seam, stderr=subprocess.DEVNULL)
    assert not (tmp_path / "ran").exists()


def test_spawn_reports_a_missing_program(tmp_path: Path) -> None:
    p = prepare(PROFILE, ["/nonexistent/tool"], {}, cwd=str(tmp_path))
    started = spawn(p, cwd=str(tmp_path), popen=popen_with_fake_seam, stderr=subprocess.DEVNULL)
    assert started.failure is not None and started.failure[:2] == ("exec", 2)
    assert started.process.wait(10) == 127


@pytest.mark.skipif(sys.platform == "darwin", reason="on macOS the real libsandbox would be used")
def test_real_helper_off_macos_fails_closed(tmp_path: Path) -> None:
    """No libsandbox and no sandbox-exec here: the unmodified helper must refuse to run the command."""
    p = prepare(PROFILE, ["sh", "-c", "touch ran"], {"PATH": "/usr/bin:/bin"}, cwd=str(tmp_path))
    with pytest.raises(SandboxError, match="neither sandbox_init"):
        spawn(p, cwd=str(tmp_path), stderr=subprocess.DEVNULL)
    assert not (tmp_path / "ran").exists()


def test_helper_ignores_a_hijacking_package_in_the_workdir(tmp_path: Path) -> None:
    """The helper runs unconfined in the command's cwd until sandbox_init: a `nono_supervisor/`
    package planted there must not be imported (isolated interpreter, package root given explicitly)."""
    evil = tmp_path / "nono_supervisor"
    (evil / "macos").mkdir(parents=True)
    (evil / "__init__.py").write_text("open('pwned', 'w').close()\n")
    (evil / "macos" / "__init__.py").write_text("")
    (evil / "macos" / "runner.py").write_text("open('pwned', 'w').close()\n")
    p = prepare(PROFILE, ["sh", "-c", "true"], {"PATH": "/usr/bin:/bin"}, cwd=str(tmp_path))
    started = spawn(p, cwd=str(tmp_path), popen=popen_with_fake_seam)
    started.process.wait(10)
    assert not (tmp_path / "pwned").exists()
