"""Issue 12: each way a real agent starts a shell reaches the supervisor through ``run``, whatever the agent.

The agents are real programs: ``tests/c/static_shell.c`` built here with ``cc -static`` (so LD_PRELOAD can
never reach it, as with Codex's static musl binary) and this Python (a dynamic one, as aider is). The ways:

- ``$SHELL`` when its path says bash (Claude Code's rule): routing layer 1;
- ``bash`` looked up on PATH (Gemini CLI): layer 2;
- ``/bin/bash`` by absolute path from a static binary (Codex), and the passwd shell: layer 4, the agent's
  mount namespace, where the real shells show the shim;
- ``sh -c`` from libc (aider's ``subprocess(shell=True)``): layer 3, and layer 4 without the library.

Each case must reach the supervisor (one ``event: start`` audit record with the spawn's argv), run the real
shell (an ELF the supervisor started, outside the namespace) and keep the fake key out. The controls turn
layers off (``--no-interpose``, ``--no-namespace``) to show which one routed it, and what is left when none
can: the shell runs under the agent's baseline (the key stays shut all the same) and the audit log records
an ``unrouted-shell`` event. Root and uid 65534 (a user namespace) both.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAKE_KEY, SUPERVISOR, Home

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="routing namespaces are Linux")

C_DIR = Path(__file__).parent / "c"
KEY_CMD = "cat ~/.ssh/id_rsa"
USERS = pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])


@pytest.fixture(scope="session")
def static_shell(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None:
        pytest.skip("no C compiler (cc) to build tests/c/static_shell.c")
    out = tmp_path_factory.mktemp("static") / "static_shell"
    build = subprocess.run(
        [cc, "-static", "-O2", "-Wall", "-Werror", "-o", str(out), str(C_DIR / "static_shell.c")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if build.returncode != 0:
        pytest.skip(f"cannot link statically (apt-get install libc6-dev has libc.a): {build.stderr[-300:]}")
    return out


def home_for(request: pytest.FixtureRequest, user: bool) -> Home:
    return request.getfixturevalue("nobody_home" if user else "home")


def install(home: Home, program: Path) -> str:
    """The agent in the workdir: the one place outside the system dirs its baseline may execute."""
    target = home.work / program.name
    shutil.copy2(program, target)
    if home.owner:
        os.chown(target, home.owner, home.owner)
    return str(target)


def run(home: Home, agent: list[str], *flags: str, user: bool = False) -> subprocess.CompletedProcess:
    return home.run([SUPERVISOR, "run", *flags, "--", *agent], user=user, stdin=subprocess.DEVNULL)


def starts(home: Home) -> list[dict]:
    return [r for r in home.audit() if r.get("event") == "start"]


def unrouted(home: Home) -> list[dict]:
    return [r for r in home.audit() if r.get("event") == "unrouted-shell"]


def assert_routed(home: Home, result: subprocess.CompletedProcess, shell: str, argv: list[str]) -> None:
    out = result.stdout + result.stderr
    assert FAKE_KEY not in out
    assert "Permission denied" in result.stderr, out
    assert result.returncode == 1, out  # cat's status for EACCES, passed back through every layer
    records = starts(home)
    assert len(records) == 1, (records, out)
    record = records[0]
    assert os.path.basename(record["argv"][0]) == shell, record
    assert record["argv"][1:] == argv, record
    # The supervisor ran the real shell (outside the agent's namespace: an ELF, not the shim).
    assert os.path.basename(record["shell"]) == shell, record
    with open(os.path.realpath(record["shell"]), "rb") as f:
        assert f.read(4) == b"\x7fELF", record
    assert unrouted(home) == []


def assert_unrouted_but_shut(home: Home, result: subprocess.CompletedProcess, path: str) -> None:
    """Layer 5: nothing routed it, so the agent's baseline holds (no key) and the audit log says so."""
    assert FAKE_KEY not in result.stdout + result.stderr
    assert result.returncode == 1, result.stderr
    assert starts(home) == []
    records = unrouted(home)
    assert [r["path"] for r in records] == [path], records
    assert "will not be routed" in result.stderr  # the first lines of run say so


# --- Layer 1: $SHELL (Claude Code) ----------------------------------------------------------------------


@USERS
@pytest.mark.parametrize(
    "flags", [(), ("--no-interpose", "--no-namespace")], ids=["all-layers", "shell-only"]
)
def test_shell_variable_whose_path_says_bash(request, static_shell, user, flags):
    home = home_for(request, user)
    agent = [install(home, static_shell), "shell", "-c", KEY_CMD]
    assert_routed(home, run(home, agent, *flags, user=user), "bash", ["-c", KEY_CMD])


# --- Layer 2: bash on PATH (Gemini CLI) -----------------------------------------------------------------


@USERS
@pytest.mark.parametrize("flags", [(), ("--no-interpose", "--no-namespace")], ids=["all-layers", "path-only"])
def test_bash_looked_up_on_path(request, static_shell, user, flags):
    home = home_for(request, user)
    agent = [install(home, static_shell), "search", "bash", "-c", KEY_CMD]
    assert_routed(home, run(home, agent, *flags, user=user), "bash", ["-c", KEY_CMD])


# --- Layer 4: /bin/bash by absolute path from a static binary (Codex), the passwd shell ------------------


@USERS
def test_bin_bash_by_absolute_path_from_a_static_binary(request, static_shell, user):
    home = home_for(request, user)
    agent = [install(home, static_shell), "path", "/bin/bash", "/bin/bash", "-lc", KEY_CMD]
    assert_routed(home, run(home, agent, user=user), "bash", ["-lc", KEY_CMD])


@USERS
def test_bin_sh_by_absolute_path_from_a_static_binary_is_sh(request, static_shell, user):
    # /bin/sh is a link to dash here: the shim bound over dash still runs as sh (the kernel passes the path
    # the agent named), and the supervisor runs the real sh.
    home = home_for(request, user)
    agent = [install(home, static_shell), "path", "/bin/sh", "sh", "-c", KEY_CMD]
    assert_routed(home, run(home, agent, user=user), "sh", ["-c", KEY_CMD])


def test_the_passwd_shell_of_a_static_binary(home, static_shell):
    # Root's passwd shell is /bin/bash (uid 65534's is nologin, not a shell: root only).
    entry = next(line for line in Path("/etc/passwd").read_text().splitlines() if line.startswith("root:"))
    if os.path.basename(entry.rsplit(":", 1)[1]) != "bash":
        pytest.skip(f"root's passwd shell is not bash here: {entry}")
    agent = [install(home, static_shell), "passwd", "-c", KEY_CMD]
    assert_routed(home, run(home, agent), "bash", ["-c", KEY_CMD])


@USERS
def test_control_without_the_namespace_a_static_bin_bash_is_unrouted_recorded_and_still_shut(
    request, static_shell, user
):
    home = home_for(request, user)
    agent = [install(home, static_shell), "path", "/bin/bash", "/bin/bash", "-c", KEY_CMD]
    result = run(home, agent, "--no-namespace", user=user)
    assert_unrouted_but_shut(home, result, "/bin/bash")


# --- Layer 3 (and 4): sh -c from libc (aider) -----------------------------------------------------------

_PY_SHELL = f"import subprocess, sys; sys.exit(subprocess.run({KEY_CMD!r}, shell=True).returncode)"


@USERS
@pytest.mark.parametrize("flags", [(), ("--no-interpose",)], ids=["all-layers", "namespace-only"])
def test_sh_c_from_libc(request, user, flags):
    home = home_for(request, user)
    result = run(home, [sys.executable, "-c", _PY_SHELL], *flags, user=user)
    assert_routed(home, result, "sh", ["-c", KEY_CMD])


@USERS
def test_control_sh_c_from_libc_with_no_layer_left_is_recorded(request, user):
    home = home_for(request, user)
    result = run(home, [sys.executable, "-c", _PY_SHELL], "--no-interpose", "--no-namespace", user=user)
    assert_unrouted_but_shut(home, result, "/bin/sh")


@USERS
def test_twin_each_static_spawn_without_nono_reads_the_key(request, static_shell, user):
    home = home_for(request, user)
    program = install(home, static_shell)
    for agent in (["path", "/bin/bash", "/bin/bash", "-c", KEY_CMD], ["search", "bash", "-c", KEY_CMD]):
        bare = home.run([program, *agent], user=user, stdin=subprocess.DEVNULL)
        assert bare.returncode == 0 and FAKE_KEY in bare.stdout, bare.stderr


# --- The agent itself stays the agent -------------------------------------------------------------------


@USERS
def test_a_shell_agent_is_the_real_shell_and_its_children_are_commands(request, user):
    # `run -- bash -c ...`: the agent is the real bash (reached through an fd: its path shows the shim in
    # the namespace), so it is not a command; the shells it starts are.
    home = home_for(request, user)
    script = f"echo agent; /bin/sh -c {KEY_CMD!r}"
    result = run(home, ["/bin/bash", "-c", script], user=user)
    assert result.stdout.startswith("agent\n"), result.stderr
    assert_routed(home, result, "sh", ["-c", KEY_CMD])


@USERS
def test_a_launcher_script_for_bash_is_the_agent_not_a_command(request, user):
    # #!/usr/bin/env bash would find the shim on PATH, and #!/bin/bash the shim in the namespace: either way
    # the agent would become a command. It is run by the real bash instead.
    home = home_for(request, user)
    for shebang in ("#!/usr/bin/env bash", "#!/bin/bash"):
        launcher = home.work / "agent.sh"
        launcher.write_text(f"{shebang}\necho launched $BASH_VERSION\n/bin/sh -c {KEY_CMD!r}\n")
        launcher.chmod(0o755)
        if home.owner:
            os.chown(launcher, home.owner, home.owner)
        if home.audit_log.exists():
            home.audit_log.unlink()
        result = run(home, [str(launcher)], user=user)
        assert result.stdout.startswith("launched 5"), (shebang, result.stdout, result.stderr)
        assert_routed(home, result, "sh", ["-c", KEY_CMD])


def test_doctor_says_whether_the_agents_are_routed(home):
    result = home.run([SUPERVISOR, "doctor"], stdin=subprocess.DEVNULL)
    lines = [line for line in result.stdout.splitlines() if "] agent routing namespace:" in line]
    assert len(lines) == 1, result.stdout
    assert lines[0].startswith("[ok  ]") and "/usr/bin/bash" in lines[0], lines


def test_the_exec_hook_and_the_decision_see_the_same_bytes(home, monkeypatch):
    """Read once (invariant 7) across ``NotifyLoop.on_exec``: the path changed in the target's memory after
    the hook read it (here by the hook itself, as a racing thread would) is not what the exec is decided
    on: the unrouted-shell record and the decision name one path. Control: the memory does hold the other
    path by then, which a second read would have taken."""
    import ctypes
    import threading

    from nono_supervisor.linux import notify
    from nono_supervisor.linux.decisions import Deny
    from nono_supervisor.linux.landlock import LandlockPlan, RightsIndex, handled_fs
    from nono_supervisor.policy.profile import PolicyOptions
    from nono_supervisor.session import Session

    session = Session.create(PolicyOptions(), env=home.env, workdir=str(home.work))
    try:
        policy = session.state.policy
        access = session.state.access_index(policy)
    finally:
        session.close()
    path = ctypes.create_string_buffer(os.fsencode(home.key), 256)
    seen: list[bytes] = []

    def hook(tid: int, raw: bytes) -> None:
        seen.append(raw)
        path.value = os.fsencode(home.aws)  # swapped after the hook's read

    class Watching(notify.NotifyLoop):
        on_exec = staticmethod(hook)

    dummy = os.open("/dev/null", os.O_RDONLY)
    plan = LandlockPlan(7, handled_fs(7), 0, 0, ())  # grants nothing: the exec is decided here
    loop = Watching(dummy, RightsIndex(plan), access, lambda *_: None)
    os.close(dummy)
    answered: list = []
    monkeypatch.setattr(loop, "_respond", lambda nid, decision: answered.append(decision))
    execve = next(nr for nr, (trap, _h) in notify._dispatch_table().items() if trap.name == "execve")
    loop._dispatch(1, threading.get_native_id(), execve, [ctypes.addressof(path), 0, 0, 0, 0, 0])
    assert seen == [os.fsencode(home.key)]
    assert path.value == os.fsencode(home.aws)  # control: what a second read would have taken
    [decision] = answered
    assert isinstance(decision, Deny) and decision.denial is not None
    assert decision.denial.path == str(home.key), decision
