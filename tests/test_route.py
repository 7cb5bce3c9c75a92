"""The whole route: agent → shim → nono-shell → socket → supervisor → per-command sandbox."""

from __future__ import annotations

import os
import socket
import subprocess
import threading

import pytest

from conftest import (
    FAKE_KEY,
    NOBODY,
    SUPERVISOR,
    as_nobody,
    pid_alive,
    require_nobody,
    start_supervisor,
    wait_until,
)

NESTED = 'bash -c "cat ~/.ssh/id_rsa"; echo rc=$?'


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_run_routes_nested_bash_through_the_shim_and_denies_the_key(request, user):
    home = request.getfixturevalue("nobody_home" if user else "home")
    result = home.run([SUPERVISOR, "run", "--no-interpose", "--", "bash", "-c", NESTED], user=user)
    assert result.returncode == 0, result.stderr
    assert "rc=1" in result.stdout
    assert FAKE_KEY not in result.stdout + result.stderr
    starts = [r for r in home.audit() if r.get("event") == "start"]
    assert any(r["argv"][-1] == "cat ~/.ssh/id_rsa" and r["shell"].endswith("/bash") for r in starts), starts


def test_twin_without_nono_reads_the_key(home):
    result = home.run(["bash", "-c", NESTED])
    assert FAKE_KEY in result.stdout and "rc=0" in result.stdout


def test_agent_itself_runs_under_the_baseline_sandbox(home):
    # The agent reading the key directly (no shell in between) is still confined.
    result = home.run([SUPERVISOR, "run", "--no-interpose", "--", "cat", str(home.key)])
    assert result.returncode == 1
    assert FAKE_KEY not in result.stdout


def test_run_sets_the_routing_environment(home):
    script = 'echo "SHELL=$SHELL"; echo "CC=$CLAUDE_CODE_SHELL"; echo "PATH=$PATH"; echo "SOCK=$NONO_SOCKET"'
    result = home.run([SUPERVISOR, "run", "--no-interpose", "--", "bash", "-c", script])
    lines = dict(line.split("=", 1) for line in result.stdout.splitlines())
    shims = os.path.dirname(lines["SHELL"])
    assert lines["SHELL"].endswith("/bash") and lines["CC"] == lines["SHELL"]
    assert lines["PATH"].split(":")[0] == shims
    assert lines["SOCK"]


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_shell_through_supervisor_denies_key_twin_allows(request, user):
    sup = request.getfixturevalue("nobody_supervisor" if user else "supervisor")
    denied = sup.shell("-c", "cat ~/.ssh/id_rsa; echo rc=$?")
    assert "rc=1" in denied.stdout and FAKE_KEY not in denied.stdout + denied.stderr
    twin = sup.home.run(["bash", "-c", "cat ~/.ssh/id_rsa; echo rc=$?"], user=user)
    assert "rc=0" in twin.stdout and FAKE_KEY in twin.stdout


def test_fifty_concurrent_commands_get_their_own_status_and_output(supervisor):
    results: dict[int, subprocess.CompletedProcess] = {}

    def one(i: int) -> None:
        results[i] = supervisor.shell("-c", f"echo out-{i}; echo err-{i} >&2; exit {i % 7}")

    threads = [threading.Thread(target=one, args=(i,)) for i in range(50)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(50):
        assert results[i].returncode == i % 7
        assert results[i].stdout == f"out-{i}\n"
        assert results[i].stderr == f"err-{i}\n"


def test_killing_the_supervisor_kills_the_command_tree(home):
    sup = start_supervisor(home)
    pidfile = home.work / "pids"
    client = subprocess.Popen(
        [str(sup.shims / "bash"), "-c", f"sleep 300 & echo $! > {pidfile}; echo $$ >> {pidfile}; wait"],
        env=sup.env,
        cwd=home.work,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert wait_until(lambda: pidfile.exists() and len(pidfile.read_text().split()) == 2)
    pids = [int(p) for p in pidfile.read_text().split()]
    assert all(pid_alive(p) for p in pids)
    sup.process.kill()
    sup.process.wait()
    _, err = client.communicate(timeout=20)
    assert client.returncode == 125 or client.returncode > 128
    assert err.count("\n") <= 1 and (not err or err.startswith("nono-shell: "))
    assert wait_until(lambda: not any(pid_alive(p) for p in pids)), "orphans survived the supervisor"


def test_killing_the_client_kills_the_command_tree(supervisor):
    home = supervisor.home
    pidfile = home.work / "pids"
    script = f"(setsid sleep 300 & echo $! > {pidfile}.daemon); sleep 300 & echo $! > {pidfile}; wait"
    client = subprocess.Popen(
        [str(supervisor.shims / "bash"), "-c", script], env=supervisor.env, cwd=home.work
    )
    assert wait_until(
        lambda: (
            pidfile.exists()
            and pidfile.read_text().strip()
            and os.path.exists(f"{pidfile}.daemon")
            and open(f"{pidfile}.daemon").read().strip()
        )
    )
    pids = [int(pidfile.read_text()), int(open(f"{pidfile}.daemon").read())]
    client.kill()
    client.wait()
    assert wait_until(lambda: not any(pid_alive(p) for p in pids)), "command tree survived its client"
    assert supervisor.shell("-c", "echo still-serving").stdout == "still-serving\n"


def _raw_connect(path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(path))
    return s


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00\x00\x00\x05hello",
        b"\xff\xff\xff\xff",
        b"\x00\x00\x00\x02{}",
        b'\x00\x00\x00\x1a{"type":"signal","signo":2}',
    ],
    ids=["not-json", "oversized", "no-type", "signal-first"],
)
def test_malformed_messages_get_a_refusal_and_the_supervisor_keeps_serving(supervisor, payload):
    from nono_shell import protocol, transport

    conn = _raw_connect(supervisor.socket)
    conn.sendall(payload)
    reply = transport.receive(conn, protocol.Decoder())
    assert isinstance(reply, protocol.Refused)
    conn.close()
    assert supervisor.shell("-c", "echo alive").stdout == "alive\n"


def test_other_uid_is_refused_by_the_supervisor(supervisor):
    require_nobody()  # connects as another uid
    supervisor.socket.parent.chmod(0o755)
    supervisor.socket.chmod(0o777)
    marker = supervisor.home.root / "ran-as-nobody"
    env = dict(supervisor.env)
    result = subprocess.run(
        as_nobody([str(supervisor.shims / "bash"), "-c", f"touch {marker}"]),
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 125
    assert not marker.exists()
    assert result.stderr.startswith("nono-shell: ") and result.stderr.count("\n") == 1
    assert NOBODY
