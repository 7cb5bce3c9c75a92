"""Fail closed: when nono-shell cannot reach a supervisor it trusts, it runs nothing and exits 125."""

from __future__ import annotations

import os
import socket
import subprocess
import sys

import pytest

from conftest import NOBODY, NONO_SHELL, as_nobody, require_nobody


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
