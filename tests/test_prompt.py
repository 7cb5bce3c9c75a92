"""Asking the human, through a real pty (pexpect) on the real kernel, with a fake HOME."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pexpect
import pytest

from conftest import FAKE_AWS, SUPERVISOR, Home

SECRET = "nono-test-aws-secret-41d2"
QUESTION = "wants to read ~/.aws/credentials"
PS1 = "AGENT$ "


def _spawn(home: Home, *argv: str, timeout: float = 30) -> pexpect.spawn:
    env = {**home.env, "PS1": PS1, "TERM": "dumb"}
    return pexpect.spawn(
        SUPERVISOR,
        list(argv),
        env=env,
        cwd=str(home.work),
        encoding="utf-8",
        timeout=timeout,
        dimensions=(40, 200),
    )


def _agent(home: Home, *flags: str) -> pexpect.spawn:
    child = _spawn(home, "run", "--no-interpose", *flags, "--", "bash", "--norc", "--noprofile", "-i")
    child.expect_exact(PS1)
    return child


def _type(child: pexpect.spawn, line: str) -> None:
    child.sendline(line)


def _quit(child: pexpect.spawn) -> None:
    child.sendline("exit 0")
    child.expect(pexpect.EOF)
    child.close()


def test_once_session_and_deny_in_flight(home):
    child = _agent(home)
    _type(child, "cat ~/.aws/credentials")
    child.expect_exact(QUESTION)
    child.expect_exact("[o]nce")
    child.send("o")
    child.expect_exact(SECRET)
    child.expect_exact(PS1)
    _type(child, "cat ~/.aws/credentials")  # "once" was for that command only
    child.expect_exact(QUESTION)
    child.send("s")
    child.expect_exact(SECRET)
    child.expect_exact(PS1)
    _type(child, "cat ~/.aws/credentials; echo done-$((40+2))")  # the session grant: no question
    index = child.expect_exact([QUESTION, "done-42"])
    assert index == 1
    assert SECRET in child.before
    _type(child, "cat ~/.ssh/id_rsa")
    child.expect_exact("wants to read ~/.ssh/id_rsa")
    child.send("d")
    child.expect_exact(PS1)
    assert "Permission denied" in child.before
    assert (
        "nono: denied read ~/.ssh/id_rsa [group:deny_credentials]; to allow: --read-file ~/.ssh/id_rsa"
        in child.before
    )
    _quit(child)
    answers = [r.get("answer") for r in home.audit() if r.get("by") == "user"]
    assert answers == ["once", "session", "deny"]


def test_always_is_stored_and_a_fresh_session_does_not_ask(home):
    child = _agent(home)
    _type(child, "cat ~/.aws/credentials")
    child.expect_exact(QUESTION)
    child.send("a")
    child.expect_exact(SECRET)
    child.expect_exact(PS1)
    _quit(child)
    grants = home.home / ".config" / "nono-shell" / "grants.toml"
    assert grants.exists() and str(home.aws) in grants.read_text()
    listed = home.run([SUPERVISOR, "grants", "list"])
    assert str(home.aws) in listed.stdout
    fresh = home.run([SUPERVISOR, "exec", "--prompt", "never", "--", "cat", str(home.aws)])
    assert fresh.stdout == FAKE_AWS
    grant_id = listed.stdout.split()[0]
    assert home.run([SUPERVISOR, "grants", "revoke", grant_id]).returncode == 0
    again = home.run([SUPERVISOR, "exec", "--prompt", "never", "--", "cat", str(home.aws)])
    assert again.returncode == 1 and SECRET not in again.stdout


def test_prompt_after_retries_the_failed_command_with_the_grant(home):
    child = _agent(home, "--prompt", "after")
    _type(child, "bash -c 'cat ~/.aws/credentials; exit 1'; echo rc=$?")
    child.expect_exact(QUESTION)
    child.send("o")
    child.expect_exact("rc=1")  # the command itself exits 1; its retry printed the secret
    assert child.before.count(SECRET) == 1  # once, from the retry
    child.expect_exact(PS1)
    _quit(child)
    records = home.audit()
    assert any(r.get("decision") == "deny" and r.get("path") == str(home.aws) for r in records)
    assert any(r.get("decision") == "grant" and r.get("by") == "user" for r in records)
    assert [r.get("attempt") for r in records if r.get("event") == "start"] == [0, 1]


def test_no_terminal_means_no_question_and_final_denials(home):
    result = home.run(
        [SUPERVISOR, "run", "--no-interpose", "--", "bash", "-c", "cat ~/.aws/credentials"],
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode == 1 and SECRET not in result.stdout
    assert "[o]nce" not in result.stdout + result.stderr
    assert "nono: denied read ~/.aws/credentials" in result.stderr


def test_terminal_is_restored_after_a_question_and_after_the_agent_is_killed_mid_question(home):
    inner = (
        f"{SUPERVISOR} run --no-interpose -- bash --norc --noprofile -c "
        "'echo $$ > agent.pid; cat ~/.aws/credentials; sleep 0.2'"
    )
    child = pexpect.spawn(
        "bash",
        ["--norc", "--noprofile", "-c", f"stty -a; echo ==; {inner}; echo ==; stty -a"],
        env=home.env,
        cwd=str(home.work),
        encoding="utf-8",
        timeout=60,
    )
    child.expect_exact(QUESTION)
    before = child.before.split("==")[0]
    pid = int((home.work / "agent.pid").read_text())
    os.kill(pid, 9)  # the agent dies while its syscall is held on the question
    child.expect(pexpect.EOF)
    after = child.before.split("==")[-1]
    assert _modes(before) == _modes(after)
    assert "-icanon" not in after and "icanon" in after


def _modes(stty_output: str) -> set[str]:
    return {word for word in stty_output.replace(";", " ").split() if word.lstrip("-").isalpha()}


def test_a_held_question_does_not_block_other_commands(home):
    env = {**home.env}
    run_dir = home.root / "run"
    run_dir.mkdir(mode=0o700)
    sock = run_dir / "socket"
    shims = home.root / "shims"
    serve = pexpect.spawn(
        SUPERVISOR,
        ["serve", "--socket", str(sock), "--shims", str(shims)],
        env=env,
        cwd=str(home.work),
        encoding="utf-8",
        timeout=30,
    )
    try:
        serve.expect_exact("serving on")
        client_env = {**env, "NONO_SOCKET": str(sock)}
        held = subprocess.Popen(
            [str(shims / "bash"), "-c", "cat ~/.aws/credentials"],
            env=client_env,
            cwd=home.work,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        serve.expect_exact(QUESTION)
        start = time.monotonic()
        other = subprocess.run(
            [str(shims / "bash"), "-c", "echo other-ran"],
            env=client_env,
            cwd=home.work,
            capture_output=True,
            text=True,
            timeout=20,
        )
        assert other.stdout == "other-ran\n" and time.monotonic() - start < 10
        assert held.poll() is None  # still waiting on the human
        serve.send("d")
        out, err = held.communicate(timeout=20)
        assert held.returncode == 1 and SECRET not in out
        assert "nono: denied read ~/.aws/credentials" in err
    finally:
        serve.terminate(force=True)


def test_tiocsti_from_the_agent_cannot_answer_its_own_question(home):
    code = (
        "import fcntl, termios\n"
        "try:\n    [fcntl.ioctl(0, termios.TIOCSTI, c) for c in (b'o', b'\\n')]\n    print('typed')\n"
        "except OSError as e:\n    print('refused', e.errno)\n"
        "print(open(__import__('os').path.expanduser('~/.aws/credentials')).read())"
    )
    child = _spawn(home, "run", "--no-interpose", "--prompt", "tty", "--", "python3", "-c", code)
    child.expect_exact(QUESTION)  # the agent's output may wait behind the question (the proxy is paused)
    seen = child.before
    child.send("d")
    child.expect(pexpect.EOF)
    seen += child.before
    assert "refused 1" in seen and "\ntyped" not in seen
    assert SECRET not in seen


def test_sandbox_cannot_write_the_grant_store(home):
    store = home.home / ".config" / "nono-shell" / "grants.toml"
    forged = f'[[grant]]\nid = "forged01"\npath = "{home.aws}"\naccess = "read"\nkind = "file"\n'
    script = f"mkdir -p {store.parent}; printf '%s' '{forged}' > {store}"
    result = home.run([SUPERVISOR, "exec", "--allow", "~", "--prompt", "never", "--", "bash", "-c", script])
    assert not store.exists() or "forged01" not in store.read_text()
    assert "never-grantable" in result.stderr or result.returncode != 0
    twin = home.run(["bash", "-c", script])
    assert twin.returncode == 0 and "forged01" in store.read_text()
    store.unlink()


def test_the_socket_accepts_no_approvals(supervisor):
    from nono_shell import protocol, transport

    conn = socket.socket(socket.AF_UNIX)
    conn.connect(str(supervisor.socket))
    body = b'{"type":"approve","path":"/","answer":"always"}'
    conn.sendall(len(body).to_bytes(4, "big") + body)
    reply = transport.receive(conn, protocol.Decoder())
    assert isinstance(reply, protocol.Refused)
    conn.close()
    assert "refused" in supervisor.stderr_path.read_text()


@pytest.mark.parametrize("mode", ["never"])
def test_prompt_never_in_a_terminal_asks_nothing(home, mode):
    child = _spawn(home, "exec", "--prompt", mode, "--", "cat", str(home.aws))
    child.expect(pexpect.EOF)
    assert "[o]nce" not in child.before and SECRET not in child.before
    assert "Permission denied" in child.before


def test_exec_in_a_terminal_asks_the_same_way(home):
    child = _spawn(home, "exec", "--", "cat", str(home.aws))
    child.expect_exact(QUESTION)
    child.send("o")
    child.expect(pexpect.EOF)
    child.close()
    assert SECRET in child.before and child.exitstatus == 0
