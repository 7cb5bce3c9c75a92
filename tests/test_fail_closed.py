"""Fail closed: when nono-shell cannot reach a supervisor it trusts, it runs nothing and exits 125."""

from __future__ import annotations

import functools
import os
import platform
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import NOBODY, NONO_SHELL, as_nobody, require_nobody, wait_until
from nono_shell.client import ACCEPT_SECONDS


def _run(home, env_extra: dict[str, str], marker) -> subprocess.CompletedProcess:
    env = {**home.env, **env_extra}
    return subprocess.run(
        [NONO_SHELL, "-c", f"touch {marker}"],
        env=env,
        cwd=home.work,
        capture_output=True,
        text=True,
        timeout=30,
    )


def _assert_refused(result, marker) -> None:
    assert result.returncode == 125
    assert result.stderr.startswith("nono-shell: ")
    assert result.stderr.count("\n") == 1
    assert not marker.exists(), "the command ran"


def test_no_socket_variable(home):
    marker = home.work / "ran"
    _assert_refused(_run(home, {}, marker), marker)


def test_dead_socket(home):
    path = home.root / "dead.sock"
    s = socket.socket(socket.AF_UNIX)
    s.bind(str(path))
    s.close()  # bound, never listening: connection refused
    marker = home.work / "ran"
    result = _run(home, {"NONO_SOCKET": str(path)}, marker)
    _assert_refused(result, marker)
    assert "unreachable" in result.stderr


def test_missing_socket(home):
    marker = home.work / "ran"
    _assert_refused(_run(home, {"NONO_SOCKET": str(home.root / "nope.sock")}, marker), marker)


def test_socket_owned_by_another_uid(home):
    require_nobody()  # creates a listener as another uid
    (home.root / "theirs").mkdir()
    os.chown(home.root / "theirs", NOBODY, NOBODY)
    path = home.root / "theirs" / "nobody.sock"
    code = (
        "import socket,time,sys; s=socket.socket(socket.AF_UNIX); s.bind(sys.argv[1]); s.listen();"
        "print('ready', flush=True); c=s.accept()[0]; time.sleep(5)"
    )
    listener = subprocess.Popen(
        as_nobody([sys.executable, "-c", code, str(path)]), stdout=subprocess.PIPE, text=True
    )
    try:
        assert listener.stdout.readline().strip() == "ready"
        os.chmod(path, 0o777)
        marker = home.work / "ran"
        result = _run(home, {"NONO_SOCKET": str(path)}, marker)
        _assert_refused(result, marker)
        assert f"uid {NOBODY}" in result.stderr
    finally:
        listener.kill()
        listener.wait()


def test_twin_with_a_live_supervisor_runs_the_command(supervisor):
    marker = supervisor.home.work / "ran"
    result = supervisor.shell("-c", f"touch {marker}")
    assert result.returncode == 0 and marker.exists()


def test_supervisor_refusal_is_125_with_its_reason(supervisor):
    marker = supervisor.home.work / "ran"
    result = supervisor.shell("-c", f"touch {marker}", name="zsh")  # no real zsh on this machine
    if result.returncode == 0:
        pytest.skip("a real zsh is installed here")
    _assert_refused(result, marker)
    assert "zsh" in result.stderr


# ---- a frozen supervisor (issue 23, finding 5) ----------------------------------------------------------


def _clients(sup, marker) -> dict[str, tuple[subprocess.Popen, Path]]:
    """The C client (the shims' interpreter) and the Python client, both started on ``touch marker``, each
    with its stderr file. Not pipes: the fds passed with a request stay in the stopped supervisor's socket
    queue after the client exits, and a pipe read to EOF would wait for them (README, "nono-shell")."""
    assert "nono-shell-client" in (sup.shims / "bash").read_text().splitlines()[0], "not the C client's shims"
    user = sup.home.owner == NOBODY
    started = {}
    for kind, program in (("c", str(sup.shims / "bash")), ("python", NONO_SHELL)):
        argv = [program, "-c", f"touch {marker}"]
        err = sup.home.root / f"{kind}.err"
        with open(err, "w") as stderr:
            client = subprocess.Popen(
                as_nobody(argv) if user else argv,
                env=sup.env,
                cwd=sup.home.work,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
            )
        started[kind] = (client, err)
    return started


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_a_stopped_supervisor_ends_both_clients_with_125_at_the_deadline(request, user):
    """The kernel accepts the connection of a supervisor stopped with SIGSTOP; the clients give up at
    ACCEPT_SECONDS, and the supervisor, continued, sees them gone and runs nothing."""
    sup = request.getfixturevalue("nobody_supervisor" if user else "supervisor")
    marker = sup.home.work / "ran"
    os.kill(sup.process.pid, signal.SIGSTOP)
    try:
        clients = _clients(sup, marker)
        for kind, (client, err_path) in clients.items():
            client.wait(timeout=ACCEPT_SECONDS + 30)  # for ever before
            err = err_path.read_text()
            assert client.returncode == 125, (kind, err)
            assert err.startswith("nono-shell: ") and err.count("\n") == 1, err
            assert f"did not start the command within {ACCEPT_SECONDS:g} s" in err
    finally:
        os.kill(sup.process.pid, signal.SIGCONT)
    gone = "the client went away before its command started"
    assert wait_until(lambda: sup.stderr_path.read_text().count(gone) == 2), sup.stderr_path.read_text()
    assert not marker.exists(), "the command ran after its client gave up"
    twin = sup.shell("-c", f"touch {marker}")  # the same, continued: served
    assert twin.returncode == 0 and marker.exists(), twin.stderr


# The calls a client waiting for the supervisor's reply blocks in: recvmsg (C), poll (Python's timeout).
_WAITING_CALLS = {"x86_64": {"7", "47", "271"}, "aarch64": {"73", "212"}}[platform.machine()]


def _waiting_for_a_reply(pid: int) -> bool:
    """The client is connected and blocked in a wait for the supervisor (its request sent)."""
    try:
        call = open(f"/proc/{pid}/syscall").read().split()[0]
        fds = [os.readlink(f"/proc/{pid}/fd/{n}") for n in os.listdir(f"/proc/{pid}/fd")]
    except (OSError, IndexError):
        return False
    return call in _WAITING_CALLS and any(f.startswith("socket:") for f in fds)


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_sigterm_before_the_command_started_ends_the_client(request, user):
    """`timeout 15 nono-shell -c true` on a stopped supervisor ran for 626 s: the SIGTERM went into the
    socket. Before the command has started, it ends the client with 143."""
    sup = request.getfixturevalue("nobody_supervisor" if user else "supervisor")
    marker = sup.home.work / "ran"
    os.kill(sup.process.pid, signal.SIGSTOP)
    try:
        clients = _clients(sup, marker)
        for kind, (client, err_path) in clients.items():
            assert wait_until(functools.partial(_waiting_for_a_reply, client.pid)), kind  # the request is out
            client.send_signal(signal.SIGTERM)
            client.wait(timeout=ACCEPT_SECONDS + 30)
            assert client.returncode == 128 + signal.SIGTERM, (kind, client.returncode, err_path.read_text())
            assert err_path.read_text() == ""
    finally:
        os.kill(sup.process.pid, signal.SIGCONT)
    assert sup.shell("-c", "true").returncode == 0
    assert not marker.exists()
