"""Issue 4 end to end: under ``nono-supervisor run``, every way a real agent starts a shell is a command.

The agent is a real program (this Python, ``/usr/bin/node``, ``tests/c/spawn_all.c`` built here with
``cc``) started by ``nono-supervisor run`` with the pip-built interposition library preloaded. Each spawn
must reach the supervisor (an ``event: start`` record in the audit log with the spawn's argv, exactly one
per spawn) and run in its own sandbox (``cat ~/.ssh/id_rsa`` fails, the fake key never shows up). The twin
of each case runs the same agent without nono and reads the key, so a pass means nono stopped it.

The agent itself is under the session's Landlock baseline (workdir read+write, system read-only, no
``$HOME``), so the C programs are copied into the workdir before they run. Nothing is mocked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest
from test_interpose import C_METHODS

import nono_shell
import nono_supervisor
from conftest import FAKE_KEY, SUPERVISOR, Home
from nono_supervisor.interpose import library_path

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="LD_PRELOAD routing is Linux")

C_DIR = Path(__file__).parent / "c"
NODE = "/usr/bin/node"
TIMEOUT = 60  # seconds for one `run`
KEY_CMD = "cat ~/.ssh/id_rsa"
README = "a file in the workdir\n"  # conftest.make_home writes it into the workdir
USERS = pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
needs_node = pytest.mark.skipif(not os.path.exists(NODE), reason=f"{NODE} is not installed")


@dataclass(frozen=True)
class Built:
    spawn_all: Path
    broken_preload: Path


@pytest.fixture(scope="session")
def built(tmp_path_factory: pytest.TempPathFactory) -> Built:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc) to build tests/c/*.c")
    out = tmp_path_factory.mktemp("c")
    spawn_all, broken = out / "spawn_all", out / "broken_preload.so"
    flags = ["-O2", "-Wall", "-Werror"]
    subprocess.run(
        [cc, *flags, "-o", str(spawn_all), str(C_DIR / "spawn_all.c")], check=True, timeout=TIMEOUT
    )
    subprocess.run(
        [cc, *flags, "-shared", "-fPIC", "-o", str(broken), str(C_DIR / "broken_preload.c")],
        check=True,
        timeout=TIMEOUT,
    )
    return Built(spawn_all, broken)


def home_for(request: pytest.FixtureRequest, user: bool) -> Home:
    return request.getfixturevalue("nobody_home" if user else "home")


def install_spawn_all(home: Home, built: Built) -> str:
    """spawn_all in the workdir: the one place outside the system dirs the sandboxed agent may execute."""
    target = home.work / "spawn_all"
    shutil.copy2(built.spawn_all, target)
    return str(target)


def run_agent(home: Home, agent: list[str], *flags: str, user: bool = False) -> subprocess.CompletedProcess:
    # stdin is not a terminal: the agent gets plain fds, not the pty proxy.
    return home.run([SUPERVISOR, "run", *flags, "--", *agent], user=user, stdin=subprocess.DEVNULL)


def starts(home: Home) -> list[dict]:
    """The start records in the order the supervisor numbered the commands: a nested command's start can be
    written before the one of the command that ran it (each is written once its own process runs)."""
    records = [r for r in home.audit() if r.get("event") == "start"]
    return sorted(records, key=lambda r: int(r["command"].rsplit("-", 1)[1]))


def exit_code_of(home: Home, command: str) -> int | None:
    codes = [r["code"] for r in home.audit() if r.get("event") == "exit" and r.get("command") == command]
    assert len(codes) <= 1, codes
    return codes[0] if codes else None


def assert_one_routed_denied_spawn(
    home: Home, result: subprocess.CompletedProcess, shell: str, argv: list[str]
) -> None:
    """One command reached the supervisor with this argv, ran the real ``shell``, and the key stayed shut."""
    out = result.stdout + result.stderr
    assert FAKE_KEY not in out
    assert "Permission denied" in result.stderr, out
    # Every agent here exits with its child's status: cat's 1 for EACCES.
    assert result.returncode == 1, out
    records = starts(home)
    assert len(records) == 1, records
    record = records[0]
    # argv[0] is the caller's, or the shim's path (a "#!" shim loses it): the shell's name either way.
    assert os.path.basename(record["argv"][0]) == shell, record
    assert record["argv"][1:] == argv, record
    # The supervisor ran the real shell (a binary), not a shim again.
    assert os.path.basename(record["shell"]) == shell, record
    with open(os.path.realpath(record["shell"]), "rb") as f:
        assert f.read(4) == b"\x7fELF", record
    assert exit_code_of(home, record["command"]) == 1


def assert_twin_reads_the_key(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr
    assert FAKE_KEY in result.stdout


# --- The spawns -----------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Spawn:
    """An agent (``{spawn_all}`` stands for the C program) and the command it must become."""

    agent: tuple[str, ...]
    shell: str  # the shim that runs, and the real shell the supervisor starts
    argv: tuple[str, ...]  # the command's argv after argv[0]
    script: str | None = None  # written to ./x.sh, executable, before the agent runs


def _py(code: str) -> tuple[str, ...]:
    return (sys.executable, "-c", code)


def _node(code: str) -> tuple[str, ...]:
    return (NODE, "-e", code)


def _c(method: str, prog: str, arg0: str = "bash") -> tuple[str, ...]:
    return ("{spawn_all}", method, prog, arg0, "-c", KEY_CMD)


BASH_C = ("-c", KEY_CMD)

PYTHON_SPAWNS = {
    "python-subprocess-shell-true": Spawn(
        _py(f"import subprocess, sys; sys.exit(subprocess.run({KEY_CMD!r}, shell=True).returncode)"),
        "sh",
        BASH_C,
    ),
    "python-os-system": Spawn(
        _py(f"import os, sys; sys.exit(os.waitstatus_to_exitcode(os.system({KEY_CMD!r})))"), "sh", BASH_C
    ),
    "python-os-posix-spawn": Spawn(
        _py(
            "import os, sys\n"
            f"pid = os.posix_spawn('/bin/sh', ['sh', '-c', {KEY_CMD!r}], os.environ)\n"
            "sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))"
        ),
        "sh",
        BASH_C,
    ),
    "python-os-execv-in-forked-child": Spawn(
        _py(
            "import os, sys\n"
            "pid = os.fork()\n"
            "if pid == 0:\n"
            f"    os.execv('/bin/bash', ['bash', '-c', {KEY_CMD!r}])\n"
            "sys.exit(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))"
        ),
        "bash",
        BASH_C,
    ),
}

# Every hooked libc function, by how spawn_all names the program (a path, or a name for a PATH search).
C_SPAWNS = {
    f"c-{method}": Spawn(_c(method, prog), "bash", BASH_C)
    for method, prog in C_METHODS.items()
    if prog is not None
}
# system() and popen() run their command with libc's "sh -c".
C_SPAWNS.update({f"c-{method}": Spawn(_c(method, "-", "sh"), "sh", BASH_C) for method in ("system", "popen")})

OTHER_SPAWNS = {
    "script-bin-sh": Spawn(
        _py("import subprocess, sys; sys.exit(subprocess.run(['./x.sh']).returncode)"),
        "sh",
        ("./x.sh",),  # what the kernel would run: "sh ./x.sh", with the shim as the interpreter
        script=f"#!/bin/sh\n{KEY_CMD}\n",
    ),
    "env-bash-c": Spawn(
        _py(f"import subprocess as s, sys; sys.exit(s.run(['env', 'bash', '-c', {KEY_CMD!r}]).returncode)"),
        "bash",
        BASH_C,
    ),
    # PATH without the shims dir: env's own execvp finds /usr/bin/bash, and only the library can route it.
    "env-bash-c-without-shims-on-path": Spawn(
        ("/usr/bin/env", "PATH=/usr/bin:/bin", "bash", "-c", KEY_CMD), "bash", BASH_C
    ),
}

NODE_SPAWNS = {
    "node-execsync": Spawn(
        _node(
            "const cp = require('child_process');\n"
            f"try {{ cp.execSync({KEY_CMD!r}, {{stdio: 'inherit'}}); }}\n"
            "catch (e) { process.exitCode = e.status; }"
        ),
        "sh",
        BASH_C,
    ),
    "node-exec": Spawn(
        _node(
            "const cp = require('child_process');\n"
            f"cp.exec({KEY_CMD!r}, (err, out, errout) => {{\n"
            "  process.stdout.write(out); process.stderr.write(errout);\n"
            "  process.exitCode = err ? err.code : 0;\n"
            "});"
        ),
        "sh",
        BASH_C,
    ),
}

SPAWNS = {**PYTHON_SPAWNS, **C_SPAWNS, **OTHER_SPAWNS, **NODE_SPAWNS}
SPAWN_PARAMS = [
    pytest.param(name, marks=[needs_node] if name in NODE_SPAWNS else [], id=name) for name in SPAWNS
]


def prepare(home: Home, built: Built, spawn: Spawn) -> list[str]:
    """The agent's argv, with spawn_all and the script in the workdir."""
    if spawn.script is not None:
        script = home.work / "x.sh"
        script.write_text(spawn.script)
        script.chmod(0o755)
    agent = list(spawn.agent)
    if agent[0] == "{spawn_all}":
        agent[0] = install_spawn_all(home, built)
    return agent


@USERS
@pytest.mark.parametrize("name", SPAWN_PARAMS)
def test_spawn_under_run_reaches_the_supervisor_and_is_sandboxed(request, built, name, user):
    home = home_for(request, user)
    spawn = SPAWNS[name]
    result = run_agent(home, prepare(home, built, spawn), user=user)
    assert_one_routed_denied_spawn(home, result, spawn.shell, list(spawn.argv))


@USERS
@pytest.mark.parametrize("name", SPAWN_PARAMS)
def test_twin_the_same_spawn_without_nono_reads_the_key(request, built, name, user):
    home = home_for(request, user)
    result = home.run(prepare(home, built, SPAWNS[name]), user=user, stdin=subprocess.DEVNULL)
    assert_twin_reads_the_key(result)
    assert starts(home) == []


@pytest.mark.parametrize(
    "name",
    [
        "python-subprocess-shell-true",
        "python-os-posix-spawn",
        "c-execve",
        "c-system",
        "env-bash-c-without-shims-on-path",
    ],
)
def test_control_without_the_library_a_shell_by_path_is_not_routed(home, built, name):
    # Shows the routing above is the library's doing: with --no-interpose (and --no-namespace: the agent's
    # mount namespace, routing layer 4, would route a shell by its path too; tests/test_agents_route.py), a
    # spawn of a shell by its path (no PATH search the shims could win) runs the real shell inside the
    # agent's own baseline sandbox. The key stays shut all the same, but no command reaches the supervisor.
    result = run_agent(home, prepare(home, built, SPAWNS[name]), "--no-interpose", "--no-namespace")
    assert FAKE_KEY not in result.stdout + result.stderr
    assert result.returncode == 1, result.stderr
    assert starts(home) == []


# --- A scrubbed environment -----------------------------------------------------------------------------


@USERS
@pytest.mark.parametrize("method", ["execve-empty-env", "posix_spawn-empty-env"])
def test_envp_null_only_still_routes(request, built, method, user):
    # envp = {NULL}: no HOME for "~", so the key is named by its path; no NONO_SOCKET either, unless the
    # library put it back.
    home = home_for(request, user)
    command = f"cat {home.key}"
    agent = [install_spawn_all(home, built), method, "/bin/bash", "bash", "-c", command]
    assert_one_routed_denied_spawn(home, run_agent(home, agent, user=user), "bash", ["-c", command])


@USERS
@pytest.mark.parametrize("method", ["execve-empty-env", "posix_spawn-empty-env"])
def test_twin_envp_null_only_without_nono_reads_the_key(request, built, method, user):
    home = home_for(request, user)
    agent = [install_spawn_all(home, built), method, "/bin/bash", "bash", "-c", f"cat {home.key}"]
    assert_twin_reads_the_key(home.run(agent, user=user, stdin=subprocess.DEVNULL))


# --- What is not routed, and no loop --------------------------------------------------------------------


@USERS
@pytest.mark.parametrize(
    "agent",
    [
        ["{spawn_all}", "execve", "/bin/cat", "cat", "README", "README"],
        ["{spawn_all}", "posix_spawn", "/bin/cat", "cat", "README", "README"],
        ["{spawn_all}", "execvp", "cat", "cat", "README", "README"],
        [
            sys.executable,
            "-c",
            "import subprocess, sys; sys.exit(subprocess.run(['/bin/cat', 'README', 'README']).returncode)",
        ],
    ],
    ids=["c-execve", "c-posix_spawn", "c-execvp", "python-subprocess"],
)
def test_bin_cat_is_never_rewritten(request, built, agent, user):
    home = home_for(request, user)
    agent = [install_spawn_all(home, built) if a == "{spawn_all}" else a for a in agent]
    result = run_agent(home, agent, user=user)
    assert result.returncode == 0, result.stderr
    assert result.stdout == README * 2
    assert starts(home) == []


@USERS
def test_each_routed_spawn_is_exactly_one_command(request, user):
    # The supervisor's own spawn of the real shell inherits LD_PRELOAD and NONO_*; were it rewritten, each
    # command would loop back to the supervisor (or hang). Three spawns, three starts, in order.
    home = home_for(request, user)
    words = ["one", "two", "three"]
    code = f"import os\nfor w in {words!r}:\n    assert os.system('echo ' + w) == 0\n"
    result = run_agent(home, [sys.executable, "-c", code], user=user)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == words
    records = starts(home)
    assert [r["argv"][1:] for r in records] == [["-c", f"echo {w}"] for w in words]
    assert [exit_code_of(home, r["command"]) for r in records] == [0, 0, 0]


@USERS
def test_a_shell_inside_a_command_is_one_more_command_not_a_loop(request, user):
    # The command's real sh starts another sh: that one is routed too (a second start), and nothing more.
    home = home_for(request, user)
    outer = f'/bin/sh -c "{KEY_CMD}"; echo inner=$?'
    code = f"import os, sys; sys.exit(os.waitstatus_to_exitcode(os.system({outer!r})))"
    result = run_agent(home, [sys.executable, "-c", code], user=user)
    assert result.returncode == 0, result.stderr
    assert "inner=1" in result.stdout
    assert FAKE_KEY not in result.stdout + result.stderr
    records = starts(home)
    assert [r["argv"][1:] for r in records] == [["-c", outer], ["-c", KEY_CMD]], records
    assert [exit_code_of(home, r["command"]) for r in records] == [0, 1]


# --- The library itself: run refuses one that cannot load; doctor reports it ----------------------------


@pytest.fixture
def broken_install(built: Built, tmp_path: Path) -> Path:
    """A copy of the installed packages whose interposition library is a library the loader refuses.

    ``run`` has no option naming the library: it preloads the one next to the ``nono_supervisor`` package that
    is imported. So the test imports a copy (PYTHONPATH comes before the installed packages) whose
    ``libnono_interpose.so`` is ``tests/c/broken_preload.c``.
    """
    lib = library_path()
    assert lib is not None, "nono_supervisor/libnono_interpose.so is missing: `pip install -e .` builds it"
    site = tmp_path / "site"
    for package in (nono_supervisor, nono_shell):
        source = Path(package.__file__).resolve().parent
        shutil.copytree(source, site / package.__name__, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copyfile(built.broken_preload, site / "nono_supervisor" / lib.name)
    return site


def supervisor_from(site: Path, home: Home, *args: str) -> subprocess.CompletedProcess:
    return home.run(
        [sys.executable, "-c", "from nono_supervisor.cli import main; main()", *args],
        env={**home.env, "PYTHONPATH": str(site)},
        stdin=subprocess.DEVNULL,
    )


def test_the_copy_with_the_broken_library_is_what_gets_imported(home, broken_install):
    code = "from nono_supervisor.interpose import library_path; print(library_path())"
    result = home.run(
        [sys.executable, "-c", code],
        env={**home.env, "PYTHONPATH": str(broken_install)},
        stdin=subprocess.DEVNULL,
    )
    assert result.stdout.strip() == str(broken_install / "nono_supervisor" / library_path().name), (
        result.stderr
    )


def test_run_exits_125_with_one_line_when_the_library_cannot_load(home, broken_install):
    marker = home.work / "agent-ran"
    result = supervisor_from(broken_install, home, "run", "--", "/usr/bin/touch", str(marker))
    assert result.returncode == 125, result.stderr
    assert result.stdout == ""
    assert result.stderr.count("\n") == 1 and result.stderr.startswith("nono-supervisor: "), result.stderr
    assert "interposition library" in result.stderr and "undefined symbol" in result.stderr
    assert not marker.exists(), "the agent ran without its library"
    assert starts(home) == []


def test_run_with_no_interpose_does_not_need_the_library(home, broken_install):
    marker = home.work / "agent-ran"
    result = supervisor_from(
        broken_install, home, "run", "--no-interpose", "--", "/usr/bin/touch", str(marker)
    )
    assert result.returncode == 0, result.stderr
    assert marker.exists()


def _interposition_line(stdout: str) -> str:
    lines = [line for line in stdout.splitlines() if "] interposition library: " in line]
    assert len(lines) == 1, stdout
    return lines[0]


@USERS
def test_doctor_reports_the_library_as_loadable(request, user):
    home = home_for(request, user)
    result = home.run([SUPERVISOR, "doctor"], user=user, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stdout + result.stderr
    assert _interposition_line(result.stdout) == f"[ok  ] interposition library: {library_path()}"


def test_doctor_reports_a_library_that_cannot_load(home, broken_install):
    result = supervisor_from(broken_install, home, "doctor")
    line = _interposition_line(result.stdout)
    assert not line.startswith("[ok  ]"), line
    assert "does not load" in line and "undefined symbol" in line, line
