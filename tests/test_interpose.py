"""The exec-interposition library, preloaded into real programs: every way of starting a shell is routed.

Each test runs a real program (Python, Node, coreutils, or ``tests/c/spawn_all.c``) with the pip-built
library in ``LD_PRELOAD`` and a shim dir whose ``bash``/``sh``/``dash``/``zsh`` are links to
``tests/c/recorder.c``. The recorder logs its argv, environment and inherited fds to ``recorder.log``
beside itself and exits 42, which no command here does; a run without the library, the twin, gets the
real shell's status (3). Nothing is mocked.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from nono_supervisor.interpose import check_loadable, library_path

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD routing is Linux")

C_DIR = Path(__file__).parent / "c"
ROUTED = 42  # recorder.c's exit status
REAL = 3  # what the real shell exits with for "exit 3"
NODE = "/usr/bin/node"
TIMEOUT = 60  # seconds for one program run


@dataclass(frozen=True)
class Tools:
    recorder: Path
    spawn_all: Path


@pytest.fixture(scope="session")
def lib() -> Path:
    path = library_path()
    if path is None:
        pytest.fail("supervisor/libnono_interpose.so is missing: `pip install -e .` builds it")
    return path


@pytest.fixture(scope="session")
def tools(tmp_path_factory: pytest.TempPathFactory) -> Tools:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc) to build tests/c/*.c")
    out = tmp_path_factory.mktemp("c")
    built = {}
    for name in ("recorder", "spawn_all"):
        built[name] = out / name
        subprocess.run(
            [cc, "-O2", "-Wall", "-Werror", "-o", str(built[name]), str(C_DIR / f"{name}.c")],
            check=True,
            timeout=TIMEOUT,
        )
    return Tools(**built)


@dataclass
class Sandbox:
    """A shim dir of recorders, and the environment the supervisor would give the agent."""

    lib: Path
    tools: Tools
    root: Path

    @property
    def shim_dir(self) -> Path:
        return self.root / "shims"

    @property
    def socket(self) -> str:
        return str(self.root / "supervisor.sock")

    def env(self, preload: bool = True, **extra: str | None) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD" and not k.startswith("NONO_")}
        # Absolute, shim-free PATH: the pyenv shims on some PATHs are bash scripts themselves.
        env["PATH"] = "/usr/local/bin:/usr/bin:/bin"
        if preload:
            env.update(LD_PRELOAD=str(self.lib), NONO_SHIM_DIR=str(self.shim_dir), NONO_SOCKET=self.socket)
        for key, value in extra.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def run(
        self, argv: Sequence[str | Path], preload: bool = True, cwd: Path | None = None, **extra: str | None
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(a) for a in argv],
            env=self.env(preload, **extra),
            cwd=cwd or self.root,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
        )

    def python(
        self, code: str, preload: bool = True, **extra: str | None
    ) -> subprocess.CompletedProcess[str]:
        return self.run([sys.executable, "-c", code], preload, **extra)

    def spawn_all(
        self, method: str, prog: str | Path, *args: str, preload: bool = True, **extra: str | None
    ) -> subprocess.CompletedProcess[str]:
        """tests/c/spawn_all: one libc spawn function, chosen by name."""
        return self.run([self.tools.spawn_all, method, prog, *args], preload, **extra)

    @property
    def log(self) -> Path:
        return self.root / "bin" / "recorder.log"

    def forget(self) -> None:
        """Start the next check with an empty log."""
        self.log.unlink(missing_ok=True)

    def records(self) -> list[dict]:
        log = self.log
        if not log.exists():
            return []
        return [json.loads(line) for line in log.read_text().splitlines()]

    def only_record(self) -> dict:
        records = self.records()
        assert len(records) == 1, records
        return records[0]

    def shim(self, shell: str) -> str:
        return str(self.shim_dir / shell)


@pytest.fixture
def box(lib: Path, tools: Tools, tmp_path: Path) -> Sandbox:
    (tmp_path / "bin").mkdir()
    (tmp_path / "shims").mkdir()
    shutil.copy2(tools.recorder, tmp_path / "bin" / "recorder")
    for shell in ("bash", "sh", "dash", "zsh"):
        (tmp_path / "shims" / shell).symlink_to(tmp_path / "bin" / "recorder")
    return Sandbox(lib, tools, tmp_path)


def assert_routed(box: Sandbox, proc: subprocess.CompletedProcess[str], shell: str, argv: list[str]) -> dict:
    assert proc.returncode == ROUTED, proc.stderr
    record = box.only_record()
    assert record["execfn"] == box.shim(shell)
    assert record["argv"] == argv
    assert record["env"]["NONO_SOCKET"] == box.socket
    return record


def assert_real(box: Sandbox, proc: subprocess.CompletedProcess[str], status: int = REAL) -> None:
    assert proc.returncode == status, proc.stderr
    assert box.records() == []


# --- Python ---------------------------------------------------------------------------------------------

PYTHON_CASES = {
    "subprocess_shell_true": (
        "import subprocess, sys; sys.exit(subprocess.run('exit 3', shell=True).returncode)",
        "sh",
        ["/bin/sh", "-c", "exit 3"],
    ),
    "os_system": (
        "import os, sys; sys.exit(os.waitstatus_to_exitcode(os.system('exit 3')))",
        "sh",
        ["sh", "-c", "exit 3"],
    ),
    "os_posix_spawn": (
        "import os, sys\n"
        "pid = os.posix_spawn('/bin/sh', ['sh', '-c', 'exit 3'], os.environ)\n"
        "sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))",
        "sh",
        ["sh", "-c", "exit 3"],
    ),
    "os_execv_in_forked_child": (
        "import os, sys\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.execv('/bin/bash', ['bash', '-c', 'exit 3'])\n"
        "sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))",
        "bash",
        ["bash", "-c", "exit 3"],
    ),
}


@pytest.mark.parametrize("case", PYTHON_CASES)
def test_python_shell_spawns_reach_the_shim(box: Sandbox, case: str) -> None:
    code, shell, argv = PYTHON_CASES[case]
    assert_routed(box, box.python(code), shell, argv)


@pytest.mark.parametrize("case", PYTHON_CASES)
def test_python_shell_spawns_without_the_library_run_the_real_shell(box: Sandbox, case: str) -> None:
    code, _shell, _argv = PYTHON_CASES[case]
    assert_real(box, box.python(code, preload=False))


# --- Scripts and env ------------------------------------------------------------------------------------

SCRIPTS = {
    "bin_sh": ("#!/bin/sh\nexit 3\n", "sh", []),
    "env_bash": ("#!/usr/bin/env bash\nexit 3\n", "bash", []),
    "bash_with_arg": ("#!/bin/bash -e\nexit 3\n", "bash", ["-e"]),
    "blanks_around_interpreter": ("#!  /bin/sh  \t\nexit 3\n", "sh", []),
}


@pytest.mark.parametrize("name", SCRIPTS)
def test_shebang_script_runs_with_the_shim_as_interpreter(box: Sandbox, name: str) -> None:
    text, shell, interp_args = SCRIPTS[name]
    script = box.root / "x.sh"
    script.write_text(text)
    script.chmod(0o755)
    code = "import subprocess, sys; sys.exit(subprocess.run(['./x.sh', 'a', 'b']).returncode)"
    # What the kernel would run, "interp [arg] ./x.sh a b", with the shim as interp.
    assert_routed(box, box.python(code), shell, [box.shim(shell), *interp_args, "./x.sh", "a", "b"])


@pytest.mark.parametrize("name", SCRIPTS)
def test_shebang_script_without_the_library_runs_its_interpreter(box: Sandbox, name: str) -> None:
    script = box.root / "x.sh"
    script.write_text(SCRIPTS[name][0])
    script.chmod(0o755)
    assert_real(box, box.run(["./x.sh", "a", "b"], preload=False))


def test_execvp_of_a_script_without_shebang_routes_libcs_sh_fallback(box: Sandbox) -> None:
    # glibc's execvp runs such a file with /bin/sh from inside libc, where no hook would see it.
    script = box.root / "plain"
    script.write_text("exit 3\n")
    script.chmod(0o755)
    proc = box.spawn_all("execvp", "plain", "plain", "a", "b", PATH=f"{box.root}:/usr/bin:/bin")
    assert_routed(box, proc, "sh", ["/bin/sh", f"{box.root}/plain", "a", "b"])
    box.forget()
    assert_real(
        box, box.spawn_all("execvp", "plain", "plain", "a", "b", preload=False, PATH=f"{box.root}:/bin")
    )


def test_non_executable_script_keeps_its_eacces(box: Sandbox) -> None:
    script = box.root / "x.sh"
    script.write_text("#!/bin/sh\nexit 3\n")
    script.chmod(0o644)
    proc = box.spawn_all("execve", "./x.sh", "./x.sh", "a", "b")
    assert proc.returncode == 127 and "Permission denied" in proc.stderr
    assert box.records() == []


@pytest.mark.parametrize("preload", [True, False], ids=["preloaded", "bare"])
def test_env_bash_c_is_routed_through_envs_own_exec(box: Sandbox, preload: bool) -> None:
    proc = box.run(["/usr/bin/env", "bash", "-c", "exit 3"], preload=preload)
    if preload:
        assert_routed(box, proc, "bash", ["bash", "-c", "exit 3"])
    else:
        assert_real(box, proc)


# --- Node -----------------------------------------------------------------------------------------------

NODE_SCRIPT = """
const cp = require("child_process");
let sync;
try { cp.execSync("exit 3", {stdio: "ignore"}); sync = 0; } catch (e) { sync = e.status; }
cp.exec("exit 3", (err) => { console.log(JSON.stringify({sync, exec: err ? err.code : 0})); });
"""


@pytest.mark.skipif(not os.path.exists(NODE), reason=f"{NODE} not installed")
@pytest.mark.parametrize("preload", [True, False], ids=["preloaded", "bare"])
def test_node_exec_and_execsync_reach_the_shim(box: Sandbox, preload: bool) -> None:
    proc = box.run([NODE, "-e", NODE_SCRIPT], preload=preload)
    assert proc.returncode == 0, proc.stderr
    status = ROUTED if preload else REAL
    assert json.loads(proc.stdout) == {"sync": status, "exec": status}
    if preload:
        records = box.records()
        assert [r["argv"] for r in records] == [["/bin/sh", "-c", "exit 3"]] * 2
        assert {r["execfn"] for r in records} == {box.shim("sh")}
    else:
        assert box.records() == []


# --- Every hooked libc function, from C ------------------------------------------------------------------

# method -> how spawn_all names the program; system() and popen() always run sh.
C_METHODS = {
    "execve": "/bin/bash",
    "execv": "/bin/bash",
    "execvp": "bash",
    "execvpe": "bash",
    "execl": "/bin/bash",
    "execlp": "bash",
    "execle": "/bin/bash",
    "fexecve": "/bin/bash",
    "posix_spawn": "/bin/bash",
    "posix_spawnp": "bash",
    "system": None,
    "popen": None,
}


@pytest.mark.parametrize("method", C_METHODS)
def test_each_hooked_function_is_routed(box: Sandbox, method: str) -> None:
    prog = C_METHODS[method]
    proc = box.spawn_all(method, prog or "-", "bash", "-c", "exit 3")
    if prog is None:
        assert_routed(box, proc, "sh", ["sh", "-c", "exit 3"])
    else:
        assert_routed(box, proc, "bash", ["bash", "-c", "exit 3"])


@pytest.mark.parametrize("method", C_METHODS)
def test_each_hooked_function_without_the_library_runs_the_real_shell(box: Sandbox, method: str) -> None:
    assert_real(box, box.spawn_all(method, C_METHODS[method] or "-", "bash", "-c", "exit 3", preload=False))


def test_fexecve_routes_by_the_file_the_fd_names(box: Sandbox) -> None:
    # /bin/sh is a link on Debian (to dash): the fd names the target, and that shell's shim runs.
    target = os.path.basename(os.path.realpath("/bin/sh"))
    if target not in ("sh", "bash", "dash", "zsh"):
        pytest.skip(f"/bin/sh is {target}, not a routed shell")
    assert_routed(
        box, box.spawn_all("fexecve", "/bin/sh", "sh", "-c", "exit 3"), target, ["sh", "-c", "exit 3"]
    )


def test_popen_child_does_not_inherit_an_earlier_popen_stream(box: Sandbox) -> None:
    # POSIX: a popen() child gets none of the streams of earlier popen() calls still open. Leaking the
    # first stream's pipe end into the second child is the classic pclose()-never-sees-EOF hang.
    proc = box.spawn_all("popen-twice", "-", "sh", "-c", "exit 3")
    assert proc.returncode == ROUTED, proc.stderr
    records = box.records()
    assert [r["argv"] for r in records] == [["sh", "-c", "exit 3"]] * 2
    assert [r["fds"] for r in records] == [[0, 1, 2]] * 2


def test_concurrent_system_calls_restore_the_callers_sigint_handler(box: Sandbox) -> None:
    # system() ignores SIGINT/SIGQUIT in the caller while it runs. Saving and restoring per call, two
    # threads would leave SIGINT ignored for good (the second saves the first's SIG_IGN); the count under
    # a lock restores the handler the first one in saw.
    code = (
        "import os, signal, sys, threading, time\n"
        "threads = [threading.Thread(target=os.system, args=('exit 3',)) for _ in range(16)]\n"
        "for t in threads: t.start()\n"
        "for t in threads: t.join()\n"
        "try:\n"
        "    os.kill(os.getpid(), signal.SIGINT)\n"  # ignored by the kernel if SIG_IGN was left behind
        "    time.sleep(5)\n"
        "except KeyboardInterrupt:\n"
        "    sys.exit(0)\n"
        "sys.exit(1)\n"
    )
    assert box.python(code).returncode == 0
    assert len(box.records()) == 16


# --- The environment ------------------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["execve-empty-env", "posix_spawn-empty-env"])
def test_scrubbed_envp_still_routes_and_the_shim_sees_preload_and_socket(box: Sandbox, method: str) -> None:
    record = assert_routed(
        box, box.spawn_all(method, "/bin/bash", "bash", "-c", "exit 3"), "bash", ["bash", "-c", "exit 3"]
    )
    assert record["env"]["LD_PRELOAD"] == str(box.lib)
    assert record["env"]["NONO_SHIM_DIR"] == str(box.shim_dir)
    assert record["env"]["REC_TAG"] is None  # only our variables come back, nothing else of the caller's


def test_scrubbed_envp_of_a_non_shell_keeps_grandchildren_routed(box: Sandbox) -> None:
    # env(1) starts with an empty environment but the library put itself back, so env's own
    # execvp("bash") (default PATH) is routed too.
    proc = box.spawn_all("execve-empty-env", "/usr/bin/env", "env", "-S", "bash -c 'exit 3'", REC_TAG="x")
    record = assert_routed(box, proc, "bash", ["bash", "-c", "exit 3"])
    assert record["env"]["REC_TAG"] is None


def test_non_shell_child_env_gets_exactly_the_kept_variables(box: Sandbox) -> None:
    proc = box.spawn_all("execve-empty-env", "/usr/bin/env", "env", "-u", "UNSET")
    assert proc.returncode == 0, proc.stderr
    assert sorted(proc.stdout.splitlines()) == sorted(
        [f"LD_PRELOAD={box.lib}", f"NONO_SHIM_DIR={box.shim_dir}", f"NONO_SOCKET={box.socket}"]
    )
    assert box.records() == []


def test_callers_own_preload_is_kept_after_the_library(box: Sandbox) -> None:
    code = (
        "import os, sys\n"
        "pid = os.fork()\n"
        "if pid == 0:\n"
        "    os.execve('/usr/bin/env', ['env'], {'LD_PRELOAD': 'libm.so.6'})\n"
        "sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))"
    )
    proc = box.python(code)
    assert proc.returncode == 0, proc.stderr
    assert f"LD_PRELOAD={box.lib}:libm.so.6" in proc.stdout.splitlines()


# --- What is never rewritten ----------------------------------------------------------------------------


@pytest.mark.parametrize("method", ["execve", "posix_spawn", "execve-empty-env"])
@pytest.mark.parametrize("prog", ["/bin/cat", "/bin/true"])
def test_cat_and_true_are_never_rewritten(box: Sandbox, method: str, prog: str) -> None:
    proc = box.spawn_all(method, prog, os.path.basename(prog), "/dev/null", "/dev/null")
    assert_real(box, proc, status=0)


def test_exec_of_the_shim_itself_is_not_rewritten_again(box: Sandbox) -> None:
    proc = box.spawn_all("execve", box.shim("bash"), "bash", "-c", "exit 3")
    assert_routed(box, proc, "bash", ["bash", "-c", "exit 3"])


def test_shim_falling_back_to_the_real_shell_does_not_loop(box: Sandbox) -> None:
    # The recorder execs the real /bin/sh after recording; with routing still active in the shim that
    # would come back to the recorder forever (it gives up after 3 rounds with 99).
    proc = box.spawn_all("execve", "/bin/bash", "bash", "-c", "exit 3", REC_EXEC_REAL="exit 7")
    assert proc.returncode == 7, proc.stderr
    assert len(box.records()) == 1


@pytest.mark.parametrize("method", ["execve", "posix_spawn", "execvp", "system", "popen"])
def test_without_shim_dir_nothing_is_rewritten(box: Sandbox, method: str) -> None:
    prog = "bash" if method == "execvp" else "/bin/bash"
    assert_real(box, box.spawn_all(method, prog, "bash", "-c", "exit 3", NONO_SHIM_DIR=None))


def test_relative_shim_dir_disables_routing(box: Sandbox) -> None:
    # A relative dir would name a different place after every chdir.
    assert_real(box, box.spawn_all("execve", "/bin/bash", "bash", "-c", "exit 3", NONO_SHIM_DIR="shims"))


def test_nono_shells_chooses_what_is_routed(box: Sandbox) -> None:
    assert_real(box, box.spawn_all("system", "-", "sh", "-c", "exit 3", NONO_SHELLS="bash"))
    assert_real(box, box.spawn_all("execve", "/bin/bash", "bash", "-c", "exit 3", NONO_SHELLS=""))
    assert_real(box, box.spawn_all("execve", "/bin/bash", "bash", "-c", "exit 3", NONO_SHELLS="bash2:zsh"))
    proc = box.spawn_all("execve", "/bin/bash", "bash", "-c", "exit 3", NONO_SHELLS="zsh:bash")
    record = assert_routed(box, proc, "bash", ["bash", "-c", "exit 3"])
    assert record["env"]["NONO_SHELLS"] == "zsh:bash"


def test_missing_shell_keeps_its_enoent_instead_of_running_the_shim(box: Sandbox) -> None:
    proc = box.spawn_all("execve", box.root / "nowhere" / "bash", "bash", "-c", "exit 3")
    assert proc.returncode == 127 and "No such file" in proc.stderr
    assert box.records() == []


def test_script_with_more_arguments_than_the_bound_fails_e2big_not_unrouted(box: Sandbox) -> None:
    # NONO_MAX_ARGV: rebuilding argv for a "#!" script is bounded; past it the exec fails E2BIG (which
    # xargs and find -exec + answer with fewer arguments) instead of running /bin/sh unrouted.
    script = box.root / "x.sh"
    script.write_text("#!/bin/sh\nexit 3\n")
    script.chmod(0o755)
    code = (
        "import subprocess, sys\n"
        "try:\n"
        "    sys.exit(subprocess.run(['./x.sh'] + ['a'] * 3000).returncode)\n"
        "except OSError as e:\n"
        "    sys.exit(e.errno)\n"
    )
    proc = box.python(code)
    assert proc.returncode == errno.E2BIG, proc.stderr
    assert box.records() == []
    ok = box.python(code.replace("3000", "2000"))
    assert ok.returncode == ROUTED and len(box.only_record()["argv"]) == 2002


def test_routed_spawn_with_an_env_too_large_to_copy_fails_e2big(box: Sandbox) -> None:
    # NONO_MAX_ENV: putting NONO_SOCKET back means copying envp onto the stack, which is bounded. A routed
    # spawn that cannot get it fails (the shim would have no supervisor); an env that already has it, or a
    # spawn that is not routed, runs as given.
    code = (
        "import os, sys\n"
        "env = {f'V{i}': 'x' for i in range(1100)}\n"
        "env.update(KEEP)\n"
        "try:\n"
        "    pid = os.posix_spawn(sys.argv[1], [sys.argv[1], '-c', 'exit 3'], env)\n"
        "except OSError as e:\n"
        "    sys.exit(e.errno)\n"
        "sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))\n"
    )
    bare = code.replace("KEEP", "{}")
    assert box.run([sys.executable, "-c", bare, "/bin/bash"]).returncode == errno.E2BIG
    assert box.records() == []
    assert box.run([sys.executable, "-c", bare, "/bin/true"]).returncode == 0
    kept = code.replace("KEEP", "{k: v for k, v in os.environ.items() if k.startswith(('NONO_', 'LD_PRE'))}")
    assert_routed(
        box, box.run([sys.executable, "-c", kept, "/bin/bash"]), "bash", ["/bin/bash", "-c", "exit 3"]
    )


# --- nono_supervisor.interpose ---------------------------------------------------------------------------


def test_library_path_finds_the_pip_built_library(lib: Path) -> None:
    assert lib.parent.name == "supervisor" and lib.name == "libnono_interpose.so"
    assert check_loadable(lib) is None


def test_check_loadable_explains_a_broken_library(tmp_path: Path) -> None:
    bogus = tmp_path / "libnono_interpose.so"
    bogus.write_text("not an ELF file\n")
    problem = check_loadable(bogus)
    assert problem is not None and str(bogus) in problem
    assert "no such file" in (check_loadable(tmp_path / "missing.so") or "")
