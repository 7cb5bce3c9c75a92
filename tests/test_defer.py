"""A question held for the human does not stall the command's other syscalls (issue 22; notify.py ``_hold``).

Real kernel, real supervisor (``nono-supervisor run``) on a pty driven as a human would (pexpect): one
thread of the command opens ~/.aws/credentials and its question is left on screen; meanwhile the command's
other threads and processes must get their trapped syscalls answered. With a serial loop they waited for
the human, up to the prompt's timeout. Both loops: the C one (``native``) and the agent's Python one
(``--no-namespace``: the loop that watches shell execs); as root and as uid 65534; and a command routed
through ``serve``. Each scenario but the invariant test fails on the code before the hold (checked).

Progress is reported through files in the workdir, not the terminal: while a question is on screen the
supervisor holds the command's terminal output (the pty proxy is paused).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Callable

import pexpect
import pytest

from conftest import SUPERVISOR, Home, as_nobody, wait_until
from nono_supervisor.terminal.prompt import GUARD_SECONDS

QUESTION = "wants to read ~/.aws/credentials"
SECRET = "nono-test-aws-secret-41d2"
OPENS = 1000
WAIT = 30  # seconds the others get to finish while the question is on screen (the prompt's is 60)

USERS = pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
LOOPS = pytest.mark.parametrize("loop", ["native", "python"])

# How each script starts: a thread opens the secret (its question stays on screen) and writes what it got
# to held.txt; the main thread waits for ``go`` (the test has seen the question).
_HOLD = """
import os, signal, subprocess, threading
result = {}
def held():
    try:
        with open(os.path.expanduser("~/.aws/credentials")) as f:
            result["held"] = "read " + f.read().split("=")[1].strip()
    except OSError as e:
        result["held"] = "refused " + e.strerror
    with open("held.txt", "w") as f:
        f.write(result["held"])
thread = threading.Thread(target=held)
thread.start()
while not os.path.exists("go"):
    thread.join(0.01)
"""
# How the others end: a sibling process, then ``others.txt`` says what they did (renamed in: whole when
# seen); last, what the held thread got.
_OTHERS_DONE = """
sibling = subprocess.run(["/bin/cat", "README"], capture_output=True).returncode
with open("others.tmp", "w") as f:
    f.write(f"{done} sibling={sibling}")
os.rename("others.tmp", "others.txt")
thread.join()
print("held-" + result["held"], flush=True)
"""

# Meanwhile the main thread makes OPENS opens the policy allows.
HELD = f"""{_HOLD}
done = "opens={OPENS}"
for _ in range({OPENS}):
    os.close(os.open("README", os.O_RDONLY))
{_OTHERS_DONE}"""

# A command routed through ``serve`` (its opens are Landlock's; a denied one is asked about again through
# an always-trapped twin): meanwhile the main thread makes and removes directories (trapped: mkdir, rmdir).
ROUTED = f"""{_HOLD}
done = "dirs=200"
for i in range(200):
    os.mkdir(f"made{{i}}")
    os.rmdir(f"made{{i}}")
{_OTHERS_DONE}"""

# The held thread is interrupted by a signal while its question is on screen: its open fails with EINTR
# and Python opens again (PEP 475), a new notification for the same answer.
SIGNALLED = f"""{_HOLD}
signals = []
signal.signal(signal.SIGUSR1, lambda *_: signals.append(1))
signal.pthread_kill(thread.ident, signal.SIGUSR1)
open("signalled.txt", "w").close()
thread.join()
print(f"held-{{result['held']}} signals={{len(signals)}}", flush=True)
"""

# The held thread opens d/f (``--deny d``: a question); once the test has seen it, the main thread renames
# d/g over d/f, to swap what the answer would open.
SWAPPED = """
import os, threading
def held():
    try:
        with open("d/f") as f:
            print("held-read " + f.read().strip(), flush=True)
    except OSError as e:
        print("held-refused " + e.strerror, flush=True)
thread = threading.Thread(target=held)
thread.start()
while not os.path.exists("go"):
    thread.join(0.01)
try:
    os.rename("d/g", "d/f")
    print("swap-done", flush=True)
except OSError as e:
    print("swap-refused " + e.strerror, flush=True)
thread.join()
"""

# make -j4: one job asks; once the test has seen the question, three others exec, read and finish.
MAKEFILE = """\
all: secret a b c
secret:
\tcat $(HOME)/.aws/credentials > secret.out
a b c:
\twhile [ ! -e go ]; do sleep 0.05; done
\tfor i in 1 2 3 4 5 6 7 8 9 10; do cat README > /dev/null; done; touch $@.done
"""


def _home(request, user: bool) -> Home:
    return request.getfixturevalue("nobody_home" if user else "home")


def _agent(
    home: Home, user: bool, loop: str, *argv: str, profile: str | None = None, deny: str | None = None
) -> pexpect.spawn:
    flags = ["--no-interpose", *(["--no-namespace"] if loop == "python" else [])]
    flags += ["--profile", profile] if profile else []
    flags += ["--deny", deny] if deny else []
    command = [SUPERVISOR, "run", *flags, "--", *argv]
    return _on_a_terminal(home, as_nobody(command) if user else command)


def _on_a_terminal(home: Home, command: list[str]) -> pexpect.spawn:
    """``command`` on a pty of the test's, where the supervisor draws its questions and reads answers."""
    return pexpect.spawn(
        command[0],
        command[1:],
        env={**home.env, "TERM": "dumb"},
        cwd=str(home.work),
        encoding="utf-8",
        timeout=WAIT + 30,
        dimensions=(40, 200),
    )


def _serve(home: Home) -> tuple[pexpect.spawn, Callable[[str], subprocess.Popen]]:
    """``serve`` on a terminal of the test's, once it serves, and what starts ``bash -c COMMAND`` routed to
    it (an agent's command), its output in pipes. The caller terminates the serve."""
    run_dir = home.root / "run"
    run_dir.mkdir(mode=0o700)
    sock, shims = run_dir / "socket", home.root / "shims"
    serve = _on_a_terminal(home, [SUPERVISOR, "serve", "--socket", str(sock), "--shims", str(shims)])
    try:
        serve.expect_exact("serving on")
    except BaseException:
        serve.terminate(force=True)
        raise

    def bash(command: str) -> subprocess.Popen:
        return subprocess.Popen(
            [str(shims / "bash"), "-c", command],
            env={**home.env, "NONO_SOCKET": str(sock)},
            cwd=home.work,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )

    return serve, bash


def _script(home: Home, name: str, text: str) -> str:
    path = home.work / name
    path.write_text(text)
    if home.owner:
        os.chown(path, home.owner, home.owner)
    return str(path)


def _go(home: Home) -> None:
    go = home.work / "go"
    go.touch()
    if home.owner:
        os.chown(go, home.owner, home.owner)


def _others_finish_while_held(home: Home, done: str = f"opens={OPENS} sibling=0") -> None:
    """Let the others go; they finish while the held call is still held. The stall this removes: they
    waited for the human, or for the question to time out (the held thread's ``held.txt`` came first)."""
    _go(home)
    others, held = home.work / "others.txt", home.work / "held.txt"
    assert wait_until(lambda: others.exists() or held.exists(), WAIT), "the others waited for the question"
    assert not held.exists(), "the others waited for the question to end"
    assert others.read_text() == done


def _answer(child: pexpect.spawn, line: str) -> None:
    """A deliberate answer: typed after the guard window of what was just drawn, then Enter."""
    time.sleep(GUARD_SECONDS + 0.15)
    child.send(line + "\r")


def _finish(child: pexpect.spawn) -> str:
    child.expect(pexpect.EOF)
    child.close()
    return child.before


def _user_answers(home: Home) -> list[str]:
    return [r["answer"] for r in home.audit() if r.get("by") == "user"]


@USERS
@LOOPS
@pytest.mark.parametrize("answer", ["o", "d"], ids=["once", "deny"])
def test_a_held_question_does_not_stall_the_commands_other_threads(request, user, loop, answer):
    home = _home(request, user)
    child = _agent(home, user, loop, sys.executable, "-I", _script(home, "held.py", HELD))
    try:
        child.expect_exact(QUESTION)
        child.expect_exact("? ")
        _others_finish_while_held(home)
        _answer(child, answer)
        out = _finish(child)
    finally:
        child.terminate(force=True)
    if answer == "o":
        assert f"held-read {SECRET}" in out
    else:
        assert "held-refused Permission denied" in out and SECRET not in out
    assert _user_answers(home) == [{"o": "once", "d": "deny"}[answer]]


def test_a_routed_commands_question_does_not_stall_its_other_syscalls(home):
    """The same through ``serve`` (the agent's commands): the C loop keeps answering the command's trapped
    mkdir and rmdir while its open is held at the question asked again through the preloaded library."""
    serve, bash = _serve(home)
    try:
        client = bash(f"exec {sys.executable} -I {_script(home, 'routed.py', ROUTED)}")
        serve.expect_exact(QUESTION)
        serve.expect_exact("? ")
        _others_finish_while_held(home, "dirs=200 sibling=0")
        _answer(serve, "o")
        out, _err = client.communicate(timeout=WAIT)
    finally:
        serve.terminate(force=True)
    assert client.returncode == 0 and f"held-read {SECRET}" in out


def test_two_processes_of_a_command_waiting_on_the_same_question_are_asked_once(home):
    """Now that the second's call is received while the first's question is on screen, it waits for that
    question instead of queueing a second one (a command's ``once`` covers its processes)."""
    serve, bash = _serve(home)
    try:
        client = bash("cat ~/.aws/credentials & cat ~/.aws/credentials; wait")
        serve.expect_exact(QUESTION)
        serve.expect_exact("? ")
        time.sleep(1)  # both cats are waiting by now; not needed for the outcome
        _answer(serve, "o")
        out, _err = client.communicate(timeout=WAIT)
        serve.expect(pexpect.TIMEOUT, timeout=1)  # what else reached the screen
        after = serve.before
    finally:
        serve.terminate(force=True)
    assert client.returncode == 0 and out.count(SECRET) == 2
    assert QUESTION not in after
    assert _user_answers(home) == ["once"]


@USERS
def test_make_j4_finishes_its_other_jobs_while_one_asks(request, user):
    home = _home(request, user)
    _script(home, "Makefile", MAKEFILE)
    # Without the routing namespace: with it, each recipe's shell would be a command of its own (the shim)
    child = _agent(home, user, "python", "make", "-j4", "-k")
    try:
        child.expect_exact(QUESTION)
        child.expect_exact("? ")
        _go(home)
        done = [home.work / f"{job}.done" for job in "abc"]
        assert wait_until(lambda: all(d.exists() for d in done), WAIT), "make's other jobs waited"
        _answer(child, "d")
        _finish(child)
    finally:
        child.terminate(force=True)
    assert child.exitstatus == 2  # the job that asked failed; make -k ran the rest
    assert SECRET not in (home.work / "secret.out").read_text()


@LOOPS
def test_a_held_call_interrupted_by_a_signal_gets_the_one_answer(home, loop):
    """The held open is interrupted (EINTR) and made again with a new notification id while its question
    is on screen: the question stays, is asked once, and its answer reaches the call made again."""
    child = _agent(home, False, loop, sys.executable, "-I", _script(home, "signalled.py", SIGNALLED))
    try:
        child.expect_exact(QUESTION)
        child.expect_exact("? ")
        _go(home)
        assert wait_until((home.work / "signalled.txt").exists, WAIT)
        time.sleep(1.5)  # longer than a question takes to see its call gone (prompt._POLL_ALIVE_SECONDS)
        _answer(child, "o")
        out = _finish(child)
    finally:
        child.terminate(force=True)
    assert f"held-read {SECRET} signals=1" in out
    assert out.count(QUESTION) == 0  # the only question was the one seen above
    assert _user_answers(home) == ["once"]


@USERS
def test_a_command_cannot_swap_the_file_its_held_question_is_about(request, user):
    """Invariants 7 and 9 while a call is held, now that the command's other threads run meanwhile: its
    rename over the file asked about is a decision of its own (a second question, queued behind the first,
    never done silently), and "once" opens the file that was asked about."""
    home = _home(request, user)
    folder = home.work / "d"
    folder.mkdir()
    (folder / "f").write_text("asked-about\n")
    (folder / "g").write_text("put-in-its-place\n")
    for path in (folder, folder / "f", folder / "g"):
        os.chown(path, home.owner, home.owner)
    script = _script(home, "swapped.py", SWAPPED)
    child = _agent(home, user, "native", sys.executable, "-I", script, deny=str(folder))
    try:
        child.expect_exact("wants to read ~/project/d/f")
        child.expect_exact("? ")
        _go(home)
        time.sleep(1)  # the rename reaches its own question (queued) meanwhile; not needed for the outcome
        _answer(child, "o")
        child.expect_exact("wants to")  # the rename's question, drawn once the first is answered
        out = child.before
        child.expect_exact("? ")
        _answer(child, "d")
        out += _finish(child)
    finally:
        child.terminate(force=True)
    assert "held-read asked-about" in out and "put-in-its-place" not in out
    assert "swap-refused Permission denied" in out
    assert (folder / "f").read_text() == "asked-about\n"
    assert _user_answers(home) == ["once", "deny"]


def _quick_profile(home: Home, seconds: float) -> str:
    profile = home.root / "quick.toml"
    profile.write_text(f'extends = "default"\n[prompt]\ntimeout = {seconds}\n')
    return str(profile)


@USERS
def test_a_question_that_times_out_held_only_its_own_call(request, user):
    home = _home(request, user)
    script, profile = _script(home, "held.py", HELD), _quick_profile(home, 10)
    child = _agent(home, user, "native", sys.executable, "-I", script, profile=profile)
    try:
        child.expect_exact(QUESTION)
        child.expect_exact("? ")
        _others_finish_while_held(home)
        child.expect_exact("timed out")
        out = _finish(child)
    finally:
        child.terminate(force=True)
    assert "held-refused Permission denied" in out and SECRET not in out
    assert _user_answers(home) == ["timeout"]


def test_the_scripts_run_bare():
    """The bare twin: unsandboxed, the held thread reads the secret at once and the others finish."""
    home_dir = subprocess.run(["mktemp", "-d"], capture_output=True, text=True).stdout.strip()
    try:
        os.makedirs(f"{home_dir}/.aws")
        with open(f"{home_dir}/.aws/credentials", "w") as f:
            f.write(f"[default]\naws_secret_access_key = {SECRET}\n")
        with open(f"{home_dir}/README", "w") as f:
            f.write("bare\n")
        with open(f"{home_dir}/go", "w"):
            pass
        env = {**os.environ, "HOME": home_dir}
        for script in (HELD, SIGNALLED, ROUTED):
            done = subprocess.run(
                [sys.executable, "-I", "-c", script], cwd=home_dir, env=env, capture_output=True, text=True
            )
            assert f"held-read {SECRET}" in done.stdout
        with open(f"{home_dir}/Makefile", "w") as f:
            f.write(MAKEFILE)
        made = subprocess.run(["make", "-j4", "-k"], cwd=home_dir, env=env, capture_output=True, text=True)
        assert made.returncode == 0
        assert all(os.path.exists(f"{home_dir}/{job}.done") for job in "abc")
    finally:
        subprocess.run(["rm", "-rf", home_dir])
