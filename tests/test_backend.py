"""The platform seam (issue 22, findings 1 and 2): one ``Backend`` protocol that Linux's and macOS's
backends satisfy (checked by mypy), the one pure assembly of what a command gets, the only ``sys.platform``
test, and the Linux backend failing closed: a kernel without Landlock (and why: not built in, or disabled
at boot) runs nothing, and a start that fails before the spawn keeps no ruleset fd."""

from __future__ import annotations

import ast
import dataclasses
import errno
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from conftest import Home
from nono_supervisor import backend
from nono_supervisor.backend import NO_STDIO, CommandGets, Hooks, Launch, command_gets
from nono_supervisor.errors import SandboxError
from nono_supervisor.linux import backend as linux_backend
from nono_supervisor.linux import landlock
from nono_supervisor.linux.kernel import probe
from nono_supervisor.macos.backend import MacBackend
from nono_supervisor.macos.launch import profile_policy
from nono_supervisor.policy.profile import Grant, Policy, PolicyOptions
from nono_supervisor.session import Session

ROOT = Path(__file__).resolve().parent.parent


# ---- the protocol ------------------------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("mypy", path=str(ROOT / ".venv" / "bin")) is None, reason="mypy not here")
def test_both_backends_and_both_process_classes_satisfy_the_seam_by_mypy() -> None:
    """Each backend module states its conformance (``_linux: Backend[LinuxPlan] = LinuxBackend()``, its
    ``Process``); mypy checks it with the modules pyproject.toml names, where the seam is listed."""
    result = subprocess.run([str(ROOT / ".ci" / "types")], cwd=ROOT, capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr
    for module in (
        "nono_supervisor.backend",
        "nono_supervisor.linux.backend",
        "nono_supervisor.macos.backend",
    ):
        assert f'"{module}"' in (ROOT / "pyproject.toml").read_text()


@pytest.mark.parametrize("chosen", [linux_backend.LinuxBackend, MacBackend])
def test_each_backend_has_every_member_of_the_seam(chosen: type) -> None:
    members = {name for name in vars(backend.Backend) if not name.startswith("_")}
    assert {"compile", "start", "doctor", "stderr_of", "rename_noreplace", "left_running"} <= members
    assert not {name for name in members if not hasattr(chosen, name)}


def test_the_backend_is_chosen_once_and_by_platform_name() -> None:
    assert backend.current() is backend.current()
    assert backend.current().platform == "linux"  # this test machine
    assert isinstance(backend.for_platform("darwin"), MacBackend)
    with pytest.raises(SandboxError, match="no sandbox backend for sunos5 yet; nothing was run"):
        backend.for_platform("sunos5")


def test_sys_platform_is_read_only_where_the_backend_is_chosen() -> None:
    """grep -rn sys.platform supervisor/: the choice of backend alone (the CLI's help may name it too)."""
    found = []
    for path in sorted((ROOT / "supervisor").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Attribute) and node.attr == "platform":
                if isinstance(node.value, ast.Name) and node.value.id == "sys":
                    found.append(str(path.relative_to(ROOT)))
    assert found == ["supervisor/backend.py"], found


# ---- what a command gets -----------------------------------------------------------------------------------

ROUTE = Grant("/opt/nono", "read", "dir", "route")
TERMINAL = Grant("/dev/pts/7", "allow", "file", "handed terminal")


@dataclass
class FakeSource:
    """Only the members ``PolicySource`` names: reading anything else of the session fails the test."""

    policy: Policy
    trap: bool = True
    socket_path: Path | None = None
    links: frozenset[tuple[int, int]] = frozenset({(1, 2)})
    calls: list[str] = field(default_factory=list)

    def route_grants(self) -> list[Grant]:
        self.calls.append("route_grants")
        return [ROUTE]

    def terminal_grants(self, stdio: tuple[int, int, int]) -> list[Grant]:
        self.calls.append(f"terminal_grants{stdio}")
        return [TERMINAL] if stdio[0] == 7 else []

    def own_sockets(self) -> frozenset[str]:
        return frozenset({"/run/nono/socket"})

    def own_terminals(self) -> frozenset[str]:
        return frozenset({"/dev/pts/0"})

    def linked_denied(self, policy: Policy) -> frozenset[tuple[int, int]]:
        self.calls.append("linked_denied")
        return self.links

    def access_index(self, policy: Policy):
        raise AssertionError("built by the backend that needs it, not by command_gets")

    def policy_for(self, platform: str) -> Policy:
        raise AssertionError("macOS's resolution is its backend's")


@dataclass
class FakeSession:
    """A session of the policy state alone: no files, no services (reaching one fails the test)."""

    state: FakeSource


def _policy(home: Home, **options) -> Policy:
    session = Session.create(PolicyOptions(**options), env=home.env, workdir=str(home.work))
    try:
        return session.state.policy
    finally:
        session.close()


def test_what_a_command_gets_is_the_policy_the_route_and_its_handed_terminal(home: Home) -> None:
    source = FakeSource(_policy(home))
    gets = command_gets(FakeSession(source), (7, 7, 7))
    assert gets.policy is source.policy and gets.trap
    assert gets.extra == (ROUTE, TERMINAL)
    assert gets.own_sockets == {"/run/nono/socket"} and gets.own_terminals == {"/dev/pts/0"}
    assert gets.linked == {(1, 2)}
    assert command_gets(FakeSession(source), (0, 1, 2)).extra == (ROUTE,)  # no terminal handed: none granted
    with pytest.raises(dataclasses.FrozenInstanceError):
        gets.trap = False  # type: ignore[misc]
    source.links = frozenset({(3, 4)})  # a link made outside the sandbox while the command runs
    assert gets.linked_denied() == {(3, 4)} and gets.linked == {(1, 2)}


def test_without_trap_no_linked_file_is_scanned_and_a_given_policy_wins(home: Home) -> None:
    source = FakeSource(_policy(home), trap=True)
    other = _policy(home, net_block=True)
    gets = command_gets(FakeSession(source), NO_STDIO, other, trap=False)
    assert gets.policy is other and not gets.trap and gets.linked == frozenset()
    assert "linked_denied" not in source.calls  # nothing would check them: no walk of the denied trees
    assert (
        command_gets(FakeSession(FakeSource(other, trap=False)), NO_STDIO).trap is False
    )  # the session's, by default


def test_the_same_value_feeds_the_landlock_plan_and_the_seatbelt_profile(home: Home) -> None:
    """The one assembly: Linux's plan and macOS's profile both grant the route and the handed terminal."""
    session = Session.create(PolicyOptions(), env=home.env, workdir=str(home.work))
    try:
        terminal = Grant(str(home.root / "tty"), "allow", "file", "handed terminal")
        gets = dataclasses.replace(
            command_gets(session, NO_STDIO), extra=(*session.state.route_grants(), terminal)
        )
        (home.root / "tty").touch()
        ruled = {rule.path for rule in linux_backend.LinuxBackend().landlock_plan(gets).rules}
        assert {g.path for g in session.state.route_grants()} <= ruled and terminal.path in ruled
        granted = set(profile_policy(gets).grants)
        assert set(gets.extra) <= granted
        bare = {rule.path for rule in landlock.compile_plan(gets.policy, probe().landlock_abi).rules}
        assert terminal.path not in bare  # the twin: the policy alone does not grant it
    finally:
        session.close()


# ---- Landlock missing: why, and nothing runs ---------------------------------------------------------------


@pytest.mark.parametrize(
    "code, said",
    [
        (errno.ENOSYS, "not in this kernel (ENOSYS"),
        (errno.EOPNOTSUPP, "disabled at boot (EOPNOTSUPP"),
    ],
)
def test_landlock_missing_keeps_why(monkeypatch, code: int, said: str) -> None:
    real = landlock.abi_probe()
    assert real[0] >= 1 and real[1] == 0  # the twin: this kernel has it
    assert dataclasses.replace(probe(), landlock_abi=real[0]).missing() is None

    def refuse(*_args):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(landlock.libc, "syscall", refuse)
    assert landlock.abi_probe() == (0, code)
    support = dataclasses.replace(probe(), landlock_abi=0, landlock_errno=code)
    assert said in support.missing()
    monkeypatch.setattr(linux_backend.LinuxBackend, "probe", lambda self: support)
    checkup = linux_backend.LinuxBackend().doctor()
    assert checkup.lines[0] == (False, "landlock", f"unavailable: {support.missing()}")
    assert not checkup.enforceable


def test_a_command_is_refused_where_landlock_is_disabled_at_boot(home: Home, monkeypatch) -> None:
    session = Session.create(PolicyOptions(), env=home.env, workdir=str(home.work))
    ran = home.work / "ran"
    launch = Launch("/bin/sh", ["sh", "-c", f"touch {ran}"], home.env, str(home.work), (0, 1, 2))
    try:
        disabled = dataclasses.replace(probe(), landlock_abi=0, landlock_errno=errno.EOPNOTSUPP)
        monkeypatch.setattr(linux_backend.LinuxBackend, "probe", lambda self: disabled)
        with pytest.raises(SandboxError, match=r"^Landlock is disabled at boot .*; nothing was run$"):
            backend.start(session, launch, Hooks())
        assert not ran.exists()
        monkeypatch.undo()
        process = backend.start(session, launch, Hooks())  # the twin: this kernel's Landlock
        assert os.waitstatus_to_exitcode(process.wait()) == 0 and ran.exists()
    finally:
        session.close()


# Runs the CLI as if the kernel had Landlock built in but not enabled at boot: its version query fails so.
_LANDLOCK_OFF = (
    "import errno, os; from nono_supervisor.linux import landlock;"
    " real = landlock.libc.syscall;"
    " off = lambda nr, *a: (_ for _ in ()).throw(OSError(errno.EOPNOTSUPP, os.strerror(errno.EOPNOTSUPP)));"
    " landlock.libc.syscall = lambda nr, *a: off(nr) if nr == landlock._SYS_CREATE_RULESET and not a[1]"
    " else real(nr, *a);"
    " from nono_supervisor.cli import main; main()"
)


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_exec_and_doctor_say_landlock_is_disabled_at_boot_and_run_nothing(request, user: bool) -> None:
    home = request.getfixturevalue("nobody_home" if user else "home")
    marker = home.work / "ran"
    result = home.run([sys.executable, "-c", _LANDLOCK_OFF, "exec", "--", "touch", str(marker)], user=user)
    assert result.returncode == 125 and result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith("nono-supervisor: Landlock is disabled at boot (EOPNOTSUPP"), (
        result.stderr
    )
    assert not marker.exists()
    doctor = home.run([sys.executable, "-c", _LANDLOCK_OFF, "doctor"], user=user)
    assert doctor.returncode == 1
    assert "[FAIL] landlock: unavailable: disabled at boot (EOPNOTSUPP" in doctor.stdout
    twin = home.run([sys.executable, "-m", "nono_supervisor", "exec", "--", "touch", str(marker)], user=user)
    assert twin.returncode == 0 and marker.exists(), twin.stderr  # the twin: this kernel's Landlock


def _fds() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.parametrize(
    "broken",
    [
        {"env": {"HOME": 1}},  # not a string: the launch cannot be built (before the fork)
        {"argv": ["sh", "-c", "true\0"]},  # a NUL byte: the spawner refuses it (at the fork)
    ],
    ids=["launch-unbuildable", "nul-in-argv"],
)
def test_a_start_that_fails_before_the_spawn_keeps_no_ruleset_fd(home: Home, broken: dict) -> None:
    session = Session.create(PolicyOptions(), env=home.env, workdir=str(home.work))
    linux = backend.current()
    good = Launch("/bin/true", ["true"], home.env, str(home.work), (0, 1, 2))
    try:
        gets = command_gets(session, good.stdio, trap=False)
        assert os.waitstatus_to_exitcode(linux.start(linux.compile(gets), good, Hooks()).wait()) == 0
        plan = linux.compile(gets)
        held = _fds()  # with the plan's own ruleset fd, which start must close on every path
        assert os.readlink(f"/proc/self/fd/{plan.ruleset}") == "anon_inode:[landlock-ruleset]"
        with pytest.raises((SandboxError, TypeError)):
            linux.start(plan, dataclasses.replace(good, **broken), Hooks())
        assert _fds() == held - 1
    finally:
        session.close()


@pytest.mark.parametrize("fmt", ["landlock", "seatbelt"])
def test_policy_format_prints_what_a_command_gets(home: Home, monkeypatch, capsys, fmt: str) -> None:
    """Both formats print the plan of ``command_gets``: the route's grants (nono-shell's own package, for
    nested routing) are in them, which the policy alone does not grant (the twin: its own profile)."""
    from nono_supervisor import cli
    from nono_supervisor.macos.seatbelt import generate_profile

    for name, value in home.env.items():
        monkeypatch.setenv(name, value)
    monkeypatch.chdir(home.work)
    seen: list[CommandGets] = []
    real = backend.command_gets
    monkeypatch.setattr(cli, "command_gets", lambda *a, **k: seen.append(real(*a, **k)) or seen[-1])
    with pytest.raises(SystemExit) as e:
        cli.main(["policy", "--format", fmt])
    assert e.value.code == 0
    printed = capsys.readouterr().out
    (gets,) = seen
    assert gets.extra == tuple(gets.state.route_grants())  # no terminal: none was handed
    bare = generate_profile(gets.state.policy_for("macos"))
    only_route = [g.path for g in gets.extra if f'"{g.path}"' not in bare]
    assert only_route, "the twin: some of the route's grants are not the policy's own"
    assert all(f'"{path}"' in printed for path in only_route), only_route
