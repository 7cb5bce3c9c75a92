"""The spawn path without copies of the supervisor (issue 13): the command is vforked from its keeper, and
the keeper becomes nono-keeper once the command runs, so no copy of the supervisor lives on beside a
command. What the keeper does is unchanged (test_route, test_exec): these check that it is nono-keeper
doing it. No timing here."""

from __future__ import annotations

import os
import signal
import sys
import time

import pytest

from conftest import run_sandboxed, start_sandboxed
from nono_supervisor.linux import sandbox

pytestmark = pytest.mark.skipif(not os.access(sandbox.KEEPER, os.X_OK), reason="nono-keeper is not built")


def _start(home, script: str, **kw):
    from nono_supervisor.policy.profile import PolicyOptions
    from nono_supervisor.session import Session

    session = Session.create(PolicyOptions(), env=home.env, workdir=str(home.work))
    process = start_sandboxed(
        session, "/bin/sh", ["sh", "-c", script], home.env, str(home.work), (0, 1, 2), **kw
    )
    return session, process


def _gone(pid: int, seconds: float = 10) -> bool:
    """Dead: no longer in /proc, or a zombie waiting for whoever reaps it now."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        try:
            with open(f"/proc/{pid}/status") as status:
                if any(line.startswith("State:") and "Z" in line.split()[1] for line in status):
                    return True
        except (FileNotFoundError, ProcessLookupError):  # gone, or being reaped as we opened it
            return True
        time.sleep(0.02)
    return False


def _exe(pid: int) -> str:
    return os.readlink(f"/proc/{pid}/exe")


@pytest.mark.parametrize("trap", [True, False], ids=["seccomp", "landlock-only"])
def test_the_keeper_is_nono_keeper_while_the_command_runs(home, trap):
    session, process = _start(home, "sleep 30", trap=trap)
    try:
        deadline = time.monotonic() + 10
        while _exe(process.keeper) != sandbox.KEEPER and time.monotonic() < deadline:
            time.sleep(0.01)
        assert _exe(process.keeper) == sandbox.KEEPER
        with open(f"/proc/{process.keeper}/status") as status:
            fields = dict(line.split(":", 1) for line in status)
        assert int(fields["VmRSS"].split()[0]) < 4096  # KiB: not a copy of the supervisor
        assert int(fields["PPid"]) == os.getpid()  # still our child: waited for, mirrors the status
        assert int(fields["SigIgn"], 16) & (1 << (signal.SIGINT - 1))  # forwarded signals stay ignored
        process.kill_tree()  # the kill request reaches nono-keeper's loop
        process.wait()
        assert _gone(process.pid)
    finally:
        session.close()


def test_nono_keeper_mirrors_the_status_and_is_the_commands_subreaper(home):
    marker = home.work / "orphan.pid"
    session, process = _start(home, f"(sleep 30 & echo $! > {marker}); sleep 30")
    try:
        deadline = time.monotonic() + 10
        while not (marker.exists() and marker.read_text().strip()) and time.monotonic() < deadline:
            time.sleep(0.01)
        orphan = int(marker.read_text())
        with open(f"/proc/{orphan}/status") as status:
            ppid = int(next(line for line in status if line.startswith("PPid:")).split()[1])
        assert ppid == process.keeper  # adopted by nono-keeper: the subreaper flag survived its execve
        process.kill_tree()
        process.wait()
        assert _gone(orphan)  # and killed with the tree
    finally:
        session.close()
    session, process = _start(home, "exit 3")
    try:
        assert os.waitstatus_to_exitcode(process.wait()) == 3
    finally:
        session.close()
    session, process = _start(home, "kill -TERM $$")
    try:
        assert os.WIFSIGNALED(process.wait()) and os.WTERMSIG(process.status) == signal.SIGTERM
    finally:
        session.close()


def test_nono_keeper_refuses_to_run_by_hand():
    import subprocess

    assert subprocess.run([sandbox.KEEPER]).returncode == 127
    assert subprocess.run([sandbox.KEEPER, "1", "1", "0"]).returncode == 127


@pytest.mark.parametrize("trap", [True, False], ids=["seccomp", "landlock-only"])
def test_the_command_inherits_its_stdio_and_nothing_else(home, trap):
    """The plan's fds cross nono-keeper's execve without close-on-exec; the keeper sets it again, so the
    command holds none of them (the ruleset, the listener's socket, the report pipe)."""
    script = "import os; print(sorted(int(n) for n in os.listdir('/proc/self/fd')))"
    status, out, _process = run_sandboxed(home, [sys.executable, "-c", script], trap=trap)
    assert status == 0
    listed = eval(out)  # noqa: S307 - our own child's repr of a list
    assert listed[:3] == [0, 1, 2] and len(listed) == 4  # and the listing's own fd


def test_without_nono_keeper_the_keeper_is_a_fork_as_before(home):
    from nono_supervisor.linux import _spawn

    _spawn.set_keeper(b"")
    try:
        session, process = _start(home, "sleep 30")
        try:
            assert _exe(process.keeper) != sandbox.KEEPER  # the supervisor's own image
            process.kill_tree()
            process.wait()
            assert _gone(process.pid)
        finally:
            session.close()
        session, process = _start(home, "exit 4")
        try:
            assert os.waitstatus_to_exitcode(process.wait()) == 4
        finally:
            session.close()
    finally:
        _spawn.set_keeper(os.fsencode(sandbox.KEEPER))
