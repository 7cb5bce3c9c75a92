"""Asking the human, through a real pty (pexpect) on the real kernel, with a fake HOME."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pexpect
import pytest

from conftest import FAKE_AWS, FAKE_KEY, SUPERVISOR, Home, wait_until
from nono_supervisor.terminal.prompt import GUARD_SECONDS

SECRET = "nono-test-aws-secret-41d2"
QUESTION = "wants to read ~/.aws/credentials"
CHOICES = "[o]nce  [s]ession  [a]lways  [d]eny"
PS1 = "AGENT$ "
# Terminal replies to queries an agent can print (xterm ctlseqs; tmux 3.3a's XTVERSION recorded here). Every
# one holds letters; the title report and the paste hold a whole letter-and-Enter.
REPLIES = [
    "\x1b]11;rgb:2828/2a2a/3636\x1b\\",  # OSC 11: background colour
    "\x1b]10;rgb:dcdc/dfdf/e4e4\x07",  # OSC 10: foreground colour
    "\x1b[?62;22c",  # DA1
    "\x1b[>1;10;0c",  # DA2
    "\x1bP>|tmux 3.3a\x1b\\",  # XTVERSION
    "\x1bP1$r0;1;4m\x1b\\",  # DECRQSS
    "\x1b]lo\ra\rsudo\x1b\\",  # a title report (the title is the agent's to set)
    "\x1b[200~a\ralways\r\x1b[201~",  # a bracketed paste
]


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


def _question(child: pexpect.spawn, text: str = QUESTION) -> str:
    """Wait for a question and its choices; what was on screen up to them."""
    child.expect_exact(text)
    seen = child.before + child.after
    child.expect_exact("? ")
    return seen + child.before


def _answer(child: pexpect.spawn, line: str) -> None:
    """A deliberate answer: typed after the guard window of what was just drawn, then Enter."""
    time.sleep(GUARD_SECONDS + 0.15)
    child.send(line + "\r")


def _grants(home: Home):
    return home.home / ".config" / "nono-shell" / "grants.toml"


def _quit(child: pexpect.spawn) -> None:
    child.sendline("exit 0")
    child.expect(pexpect.EOF)
    child.close()


def test_once_session_and_deny_in_flight(home):
    child = _agent(home)
    _type(child, "cat ~/.aws/credentials")
    assert CHOICES in _question(child)
    _answer(child, "o")
    child.expect_exact(SECRET)
    child.expect_exact(PS1)
    _type(child, "cat ~/.aws/credentials")  # "once" was for that command only
    _question(child)
    _answer(child, "s")
    child.expect_exact(SECRET)
    child.expect_exact(PS1)
    _type(child, "cat ~/.aws/credentials; echo done-$((40+2))")  # the session grant: no question
    index = child.expect_exact([QUESTION, "done-42"])
    assert index == 1
    assert SECRET in child.before
    _type(child, "cat ~/.ssh/id_rsa")
    _question(child, "wants to read ~/.ssh/id_rsa")
    _answer(child, "d")
    child.expect_exact(PS1)
    assert "Permission denied" in child.before
    assert (
        "nono: denied read ~/.ssh/id_rsa [group:deny_credentials] (denied at the prompt; not asked again"
        " this session); to allow: --read-file ~/.ssh/id_rsa" in child.before
    )
    _quit(child)
    answers = [r.get("answer") for r in home.audit() if r.get("by") == "user"]
    assert answers == ["once", "session", "deny"]


def test_always_is_stored_and_a_fresh_session_does_not_ask(home):
    child = _agent(home)
    _type(child, "cat ~/.aws/credentials")
    _question(child)
    _answer(child, "a")
    child.expect_exact("type the word always")  # a credential file: a second, different confirmation
    _answer(child, "always")
    child.expect_exact(SECRET)
    child.expect_exact(PS1)
    _quit(child)
    grants = _grants(home)
    assert grants.exists() and str(home.aws) in grants.read_text()
    listed = home.run([SUPERVISOR, "grants", "list"])
    assert str(home.aws) in listed.stdout
    fresh = home.run([SUPERVISOR, "exec", "--prompt", "never", "--", "cat", str(home.aws)])
    assert fresh.stdout == FAKE_AWS
    grant_id = listed.stdout.split()[0]
    assert home.run([SUPERVISOR, "grants", "revoke", grant_id]).returncode == 0
    again = home.run([SUPERVISOR, "exec", "--prompt", "never", "--", "cat", str(home.aws)])
    assert again.returncode == 1 and SECRET not in again.stdout


def test_prompt_after_prefers_the_held_syscall_over_a_rerun(home):
    child = _agent(home, "--prompt", "after")
    _type(child, "bash -c 'echo side-effect >> side.log; cat ~/.aws/credentials; exit 1'; echo rc=$?")
    assert "again" not in _question(child)  # held: nothing runs twice
    _answer(child, "o")
    child.expect_exact("rc=1")
    assert child.before.count(SECRET) == 1
    child.expect_exact(PS1)
    _quit(child)
    assert (home.work / "side.log").read_text() == "side-effect\n"
    records = home.audit()
    assert [r.get("attempt") for r in records if r.get("event") == "start" and r.get("shell")] == [0]
    assert [r.get("answer") for r in records if r.get("by") == "user"] == ["once"]
    # Audit argv is one shape for every record: the command's argv list (issue 11, finding 7).
    argvs = {tuple(r["argv"]) for r in records if "argv" in r and r.get("command") != "agent"}
    assert all(isinstance(r["argv"], list) for r in records if "argv" in r)
    assert len(argvs) == 1, argvs


def _tool(home: Home) -> str:
    tools = home.home / "tools"
    tools.mkdir()
    (tools / "hello").write_text("#!/bin/sh\necho tool-ran\n")
    (tools / "hello").chmod(0o755)
    return "~/tools/hello"


def test_prompt_after_says_the_whole_command_runs_again(home):
    """An exec cannot be held (nor emulated): it is asked about after the command failed, and the question
    says that granting runs the whole command again; the side effect before it happens twice."""
    tool = _tool(home)
    child = _agent(home, "--prompt", "after")
    _type(child, f"bash -c 'echo side-effect >> side.log; {tool}'; echo rc=$?")
    _question(child, "wants to read ~/tools/hello")  # bash reads what it could not exec, to say why
    _answer(child, "d")
    seen = _question(child, "wants to exec ~/tools/hello")
    assert "a grant runs the whole command again" in seen
    _answer(child, "o")
    child.expect_exact("tool-ran")
    child.expect_exact("rc=0")
    child.expect_exact(PS1)
    # the twin: denied, nothing runs again
    _type(child, f"bash -c 'echo side-effect >> side.log; {tool}'; echo rc=$?")
    _question(child, "wants to exec ~/tools/hello")
    _answer(child, "d")
    child.expect_exact("rc=126")
    assert "tool-ran" not in child.before
    _quit(child)
    assert (home.work / "side.log").read_text() == "side-effect\n" * 3
    starts = [r.get("attempt") for r in home.audit() if r.get("event") == "start" and r.get("shell")]
    assert starts == [0, 1, 0]


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
        _question(serve)
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
        _answer(serve, "d")
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
    seen = _question(child)  # the agent's output may wait behind the question (the proxy is paused)
    _answer(child, "d")
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
    _question(child)
    _answer(child, "o")
    child.expect(pexpect.EOF)
    child.close()
    assert SECRET in child.before and child.exitstatus == 0


# ---- only a deliberate human answer counts (DESIGN invariant 9) -------------------------------------------


def test_terminal_replies_never_answer_and_never_write_grants(home):
    child = _agent(home)
    _type(child, "cat ~/.aws/credentials; echo rc=$?")
    _question(child)
    for reply in REPLIES:  # right after the question appears: inside the guard window
        child.send(reply)
    time.sleep(GUARD_SECONDS + 0.2)
    for reply in REPLIES:  # and after it: the parser drops them whole
        child.send(reply)
        time.sleep(0.02)
    time.sleep(0.5)
    assert not _grants(home).exists()
    assert [r for r in home.audit() if r.get("by") == "user"] == []  # still unanswered
    _answer(child, "d")
    child.expect_exact("rc=1")
    assert SECRET not in child.before
    child.expect_exact(PS1)
    _quit(child)
    assert not _grants(home).exists()
    assert [r.get("answer") for r in home.audit() if r.get("by") == "user"] == ["deny"]


def test_typing_into_a_question_does_not_answer_it(home):
    child = _agent(home)
    _type(child, "cat ~/.aws/credentials; echo rc=$?")
    _question(child)
    child.send("o\r")  # type-ahead: within the guard window
    _answer(child, "ls")  # what the human meant for the shell
    child.expect_exact("not an answer")
    time.sleep(0.3)
    assert SECRET not in child.before and [r for r in home.audit() if r.get("by") == "user"] == []
    _answer(child, "o")  # the twin: a deliberate answer
    child.expect_exact(SECRET)
    child.expect_exact("rc=0")
    child.expect_exact(PS1)
    _quit(child)
    assert [r.get("answer") for r in home.audit() if r.get("by") == "user"] == ["once"]


def test_always_on_a_credential_file_needs_the_word(home):
    child = _agent(home)
    _type(child, "cat ~/.aws/credentials; echo rc=$?")
    _question(child)
    _answer(child, "a")
    child.expect_exact("type the word always")
    _answer(child, "y")
    child.expect_exact("not confirmed")
    child.expect_exact(CHOICES)  # back to the question
    assert not _grants(home).exists()
    _answer(child, "d")
    child.expect_exact("rc=1")
    assert SECRET not in child.before
    child.expect_exact(PS1)
    _quit(child)
    assert not _grants(home).exists()  # the twin, "always" + the word: test_always_is_stored_...


def test_a_file_name_with_escape_sequences_is_shown_escaped(home):
    name = "evil\r\x1b[2K\x1b[1A\u202enono: ok"
    (home.home / ".ssh" / name).write_text("planted-secret-9931\n")
    child = _agent(home)
    _type(child, "cat ~/.ssh/$'evil\\r\\e[2K\\e[1A\\u202enono: ok'")
    seen = _question(child, "wants to read ~/.ssh/evil")
    assert "~/.ssh/evil\\x0d\\x1b[2K\\x1b[1A\\u202enono: ok [group:deny_credentials]" in seen
    assert "\x1b[2K" not in seen and "\x1b[1A" not in seen and "\u202e" not in seen
    _answer(child, "o")  # the twin: the same file, granted, is read
    child.expect_exact("planted-secret-9931")
    child.expect_exact(PS1)
    _quit(child)


def test_a_denied_path_is_not_asked_twice_in_a_session(home):
    child = _agent(home)
    _type(child, "cat ~/.ssh/id_rsa")
    _question(child, "wants to read ~/.ssh/id_rsa")
    _answer(child, "d")
    child.expect_exact(PS1)
    _type(child, "cat ~/.ssh/id_rsa; bash -c 'cat ~/.ssh/id_rsa'; echo done-$((40+2))")
    index = child.expect_exact(["wants to read", "done-42"])
    assert index == 1  # neither the agent's own cat nor a routed command is asked again
    assert (
        "nono: denied read ~/.ssh/id_rsa [group:deny_credentials] (denied at the prompt earlier"
        in child.before
    )
    assert FAKE_KEY not in child.before
    _type(child, "cat ~/.aws/credentials")  # the twin: another path is still asked, and granted
    _question(child)
    _answer(child, "o")
    child.expect_exact(SECRET)
    child.expect_exact(PS1)
    _quit(child)
    assert [r.get("answer") for r in home.audit() if r.get("by") == "user"] == ["deny", "once"]


def test_the_question_names_the_program_that_asked(home):
    child = _agent(home)
    _type(child, "git --no-pager diff --no-index /dev/null ~/.aws/credentials")
    seen = _question(child)
    assert "git (pid " in seen and "program: /usr/bin/git" in seen
    assert "command line: git --no-pager diff --no-index /dev/null" in seen
    assert "'bash --norc" not in seen
    _answer(child, "o")
    child.expect_exact("+aws_secret_access_key = " + SECRET)
    child.expect_exact(PS1)
    _type(child, "bash -c 'cat ~/.ssh/id_rsa'")  # a routed command: the program and the command line
    seen = _question(child, "wants to read ~/.ssh/id_rsa")
    assert "cat (pid " in seen and "routed command: cat ~/.ssh/id_rsa" in seen
    _answer(child, "o")
    child.expect_exact(FAKE_KEY)
    child.expect_exact(PS1)
    _quit(child)


def test_a_revoke_reaches_a_running_session(home):
    from nono_supervisor.policy.grants import GrantStore

    grant = GrantStore(_grants(home)).add(str(home.aws), "read", "file", command="test")
    child = _agent(home)
    _type(child, "cat ~/.aws/credentials; bash -c 'cat ~/.aws/credentials'; echo done-$((40+2))")
    child.expect_exact("done-42")  # the stored grant: read by the agent and by a command, no question
    assert child.before.count(SECRET) == 2 and QUESTION not in child.before
    child.expect_exact(PS1)
    assert home.run([SUPERVISOR, "grants", "revoke", grant.id]).returncode == 0
    time.sleep(1.0)  # "within a second"
    _type(child, "bash -c 'cat ~/.aws/credentials'; echo rc=$?")
    _question(child)  # a new command: asked again
    _answer(child, "d")
    child.expect_exact("rc=1")
    assert SECRET not in child.before
    child.expect_exact(PS1)
    _type(child, "cat ~/.aws/credentials; echo rc=$?")  # the agent itself, running since before
    child.expect_exact("rc=1")
    assert SECRET not in child.before and "denied at the prompt earlier this session" in child.before
    child.expect_exact(PS1)
    _quit(child)


def _timeout_profile(home: Home, seconds: float) -> str:
    profile = home.root / "quick.toml"
    profile.write_text(f'extends = "default"\n[prompt]\ntimeout = {seconds}\n')
    return str(profile)


def _serve(home: Home, *flags: str) -> tuple[pexpect.spawn, dict[str, str], Path]:
    run_dir = home.root / "run"
    run_dir.mkdir(mode=0o700)
    sock = run_dir / "socket"
    shims = home.root / "shims"
    serve = pexpect.spawn(
        SUPERVISOR,
        ["serve", "--socket", str(sock), "--shims", str(shims), *flags],
        env=home.env,
        cwd=str(home.work),
        encoding="utf-8",
        timeout=30,
        dimensions=(40, 200),
    )
    serve.expect_exact("serving on")
    return serve, {**home.env, "NONO_SOCKET": str(sock)}, shims


def _client(home: Home, env: dict[str, str], shims: Path, script: str, **kw) -> subprocess.Popen:
    kw.setdefault("stdout", subprocess.PIPE)
    kw.setdefault("stderr", subprocess.PIPE)
    return subprocess.Popen([str(shims / "bash"), "-c", script], env=env, cwd=home.work, text=True, **kw)


def test_two_commands_asking_at_once_both_get_their_questions(home):
    timeout = 8
    serve, env, shims = _serve(home, "--profile", _timeout_profile(home, timeout))
    try:
        started = time.monotonic()
        first = _client(home, env, shims, "cat ~/.aws/credentials")
        time.sleep(0.3)
        second = _client(home, env, shims, "cat ~/.ssh/id_rsa")
        _question(serve)
        # Nobody answers the first: it has its share of the terminal, then gives way.
        seen = _question(serve, "wants to read ~/.ssh/id_rsa")
        assert time.monotonic() - started < timeout * 0.75  # within the second's own timeout
        assert "timed out (another question is waiting)" in seen
        _answer(serve, "o")
        out, _ = second.communicate(timeout=20)
        assert second.returncode == 0 and FAKE_KEY in out  # the twin: granted
        out, err = first.communicate(timeout=20)
        assert first.returncode == 1 and SECRET not in out
        assert "nono: denied read ~/.aws/credentials [group:deny_credentials] (question timed out)" in err
        # Answered promptly, the next question comes up at once.
        first = _client(home, env, shims, "cat ~/.aws/credentials")
        second = _client(home, env, shims, "cat ~/.ssh/id_rsa; exit 3")
        _question(serve, "wants to read")
        _answer(serve, "d")
        asked = time.monotonic()
        _question(serve, "wants to read")
        assert time.monotonic() - asked < 2
        _answer(serve, "d")
        assert first.wait(20) == 1 and second.wait(20) == 3
    finally:
        serve.terminate(force=True)


def test_an_unanswered_question_times_out_and_says_so(home):
    timeout = 2
    serve, env, shims = _serve(home, "--profile", _timeout_profile(home, timeout))
    try:
        started = time.monotonic()
        clients = [_client(home, env, shims, f"cat ~/{p}") for p in (".aws/credentials", ".ssh/id_rsa")]
        errors = [c.communicate(timeout=30)[1] for c in clients]
        took = time.monotonic() - started
        assert all(c.returncode == 1 for c in clients)
        assert took < 2 * timeout + 3  # no question held another beyond its bounded wait
        assert all("(question timed out); to allow:" in e for e in errors), errors
        timed_out = [r for r in home.audit() if r.get("by") == "user"]
        assert timed_out and all(r["answer"] == "timeout" and r["reason"] == "timed out" for r in timed_out)
        serve.expect_exact("timed out")
    finally:
        serve.terminate(force=True)


# ---- the terminal belongs to the prompter -------------------------------------------------------------


# A process a command leaves behind, reading the terminal it was given (SIGHUP ignored). It reports through an
# fd opened before: once exec's supervisor has exited, its trapped syscalls (open, execve) fail closed.
LEFTOVER = (
    'exec 5>left.txt; trap "" HUP; (if read -r line; then echo read:$line >&5; else echo failed >&5; fi) &'
)


def _left(home: Home) -> str:
    path = home.work / "left.txt"
    assert wait_until(lambda: path.exists() and path.read_text(), 6), "the leftover reported nothing"
    return path.read_text()


def _outer(home: Home, script: str) -> pexpect.spawn:
    return pexpect.spawn(
        "bash",
        ["--norc", "--noprofile", "-c", script],
        env=home.env,
        cwd=str(home.work),
        encoding="utf-8",
        timeout=30,
    )


def test_a_child_left_by_exec_cannot_read_the_terminal(home):
    command = f"read -r first; echo got:$first; readlink /proc/self/fd/0; {LEFTOVER} exit 0"
    after = "echo EXEC-DONE; readlink /proc/$$/fd/0; sleep 4"
    script = f"{SUPERVISOR} exec --prompt never -- bash -c '{command}'; {after}"
    child = _outer(home, script)
    time.sleep(0.5)
    child.send("typed-while-running\r")
    child.expect_exact("got:typed-while-running")  # the twin: the command itself reads the keys
    child.expect(r"(/dev/pts/\d+)")
    commands_tty = child.match.group(1)
    child.expect_exact("EXEC-DONE")
    child.expect(r"(/dev/pts/\d+)")
    assert child.match.group(1) != commands_tty  # a pty of the supervisor's, not its terminal
    child.send("typed-after-exec\r")
    assert _left(home) == "failed\n"
    child.expect(pexpect.EOF)


def test_exec_stdin_fd_cannot_reach_the_supervisors_terminal(home):
    """``exec 4</dev/stdin`` and a once: the fd is on the supervisor's pty, hung up at the end."""
    code = (
        "exec 4</dev/stdin; cat ~/.aws/credentials >/dev/null; "
        + LEFTOVER.replace("read -r", "read -r -u 4")
        + " exit 0"
    )
    child = _outer(home, f"{SUPERVISOR} exec -- bash -c '{code}'; echo EXEC-DONE; sleep 4")
    _question(child)
    _answer(child, "o")
    child.expect_exact("EXEC-DONE")
    child.send("typed-after-exec\r")
    assert _left(home) == "failed\n"
    child.expect(pexpect.EOF)


def test_serve_gives_a_command_on_its_terminal_a_pty_of_its_own(home):
    serve, env, shims = _serve(home)
    try:
        terminal = os.readlink(f"/proc/{serve.pid}/fd/0")
        with open(terminal, "r+b", buffering=0) as tty:
            client = _client(
                home,
                env,
                shims,
                f"readlink /proc/self/fd/0 > where.txt; read -r line; echo got:$line; {LEFTOVER} exit 0",
                stdin=tty,
                stdout=tty,
                stderr=tty,
            )
            assert wait_until(lambda: (home.work / "where.txt").exists(), 10)
            time.sleep(0.3)
            serve.send("typed-while-running\r")
            serve.expect_exact("got:typed-while-running")  # the twin: proxied while it runs
            assert client.wait(20) == 0
        where = (home.work / "where.txt").read_text().strip()
        assert where.startswith("/dev/pts/") and where != terminal
        serve.send("typed-after\r")
        assert wait_until(
            lambda: (home.work / "left.txt").exists() and (home.work / "left.txt").read_text(), 6
        )
        assert (home.work / "left.txt").read_text() == "failed\n"
    finally:
        serve.terminate(force=True)


def test_help_shows_the_answer_form(home):
    for argv in ([SUPERVISOR, "--help"], [SUPERVISOR, "exec", "--help"]):
        out = " ".join(home.run(argv).stdout.split())
        assert "answered by one letter and Enter" in out and "typing the word always" in out


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
def test_replies_from_a_real_terminal_never_answer(home):
    """Under tmux (a real terminal emulator), the agent prints queries just before its denied read: tmux's
    replies (DA1, DA2, XTVERSION ``tmux 3.3a``) reach the question and must not answer it."""
    server = f"nono-test-{os.getpid()}"
    queries = r"printf '\e[c\e[>c\e[>q\e]11;?\a'"
    agent = (
        f"{SUPERVISOR} run --no-interpose -- bash --norc --noprofile -c "
        rf'"{queries}; cat ~/.aws/credentials; echo rc=\$?; sleep 30"'
    )
    env = {**home.env, "TERM": "xterm-256color"}

    def tmux(*args: str) -> str:
        return subprocess.run(["tmux", "-L", server, *args], env=env, capture_output=True, text=True).stdout

    tmux("new-session", "-d", "-x", "200", "-y", "50", "-c", str(home.work), agent)
    try:
        assert wait_until(lambda: QUESTION in tmux("capture-pane", "-p"), 20)
        time.sleep(GUARD_SECONDS + 1.0)
        assert QUESTION in tmux("capture-pane", "-p") and "rc=" not in tmux("capture-pane", "-p")
        assert not _grants(home).exists()
        tmux("send-keys", "o", "Enter")  # the twin: a deliberate answer, typed
        assert wait_until(lambda: "rc=0" in tmux("capture-pane", "-p"), 10)
        assert SECRET in tmux("capture-pane", "-p")
        assert not _grants(home).exists()
    finally:
        tmux("kill-server")


@pytest.mark.parametrize("op", ["read", "exec", "connect", "create"])
def test_a_question_that_timed_out_is_not_asked_again_in_the_command(home, op):
    """A timed-out question is recorded under the key it was asked by (the op's access: exec asks as read,
    connect and create as write). It was recorded under the op itself, so for exec, connect and create
    the next identical call asked again."""
    from nono_supervisor.policy.profile import PolicyOptions
    from nono_supervisor.session import Session
    from nono_supervisor.terminal.consent import Consent
    from nono_supervisor.terminal.prompt import TIMED_OUT

    target = home.home / "notes.txt"
    target.write_text("nono-test-notes\n")
    asked = []

    class TimesOut:
        def ask(self, question, **_):
            asked.append(question)
            return TIMED_OUT

    session = Session.create(PolicyOptions(), env=home.env, workdir=str(home.work))
    try:
        consent = Consent(session, "t-1", "cat notes.txt", TimesOut())
        assert not consent.allows(op, str(target), "not granted", False)
        assert not consent.allows(op, str(target), "not granted", False)
        assert len(asked) == 1  # the second call met the timed-out question, not the human
        assert consent.asked(op, str(target))
    finally:
        session.close()
