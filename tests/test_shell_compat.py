"""nono-shell behaves like the real shell it stands in for: a table of cases, each run both ways."""

from __future__ import annotations

import pexpect
import pytest

SCRIPT_BODY = 'echo "script:$0:$1:$2"; exit 4\n'

# (argv after the shell name, stdin) -> both must give identical stdout, stderr and status.
CASES = {
    "true": (["-c", "true"], None),
    "false": (["-c", "false"], None),
    "exit-2": (["-c", "exit 2"], None),
    "not-executable-126": (["-c", "./README"], None),
    "not-found-127": (["-c", "no-such-command-nono"], None),
    "sigint-130": (["-c", "kill -INT $$"], None),
    "sigterm-143": (["-c", "kill -TERM $$"], None),
    "sigkill-137": (["-c", "kill -KILL $$"], None),
    "child-signal": (["-c", "sh -c 'kill -USR1 $$'; echo after=$?"], None),
    "stdout-stderr": (["-c", "echo out; echo err >&2; echo out2"], None),
    "dollar-question": (["-c", "false; echo $?; (exit 7); echo $?"], None),
    "stdin-pipe": (["-c", "tr a-z A-Z"], "piped input\n"),
    "script-on-stdin": ([], "echo from-stdin; exit 5\n"),
    "s-flag-args": (["-s", "a", "b"], 'echo "$1-$2"\n'),
    "c-name-args": (["-c", 'echo "$0 $1 $2"', "myname", "x", "y"], None),
    "combined-lc": (["-lc", "echo login"], None),
    "combined-ec": (["-ec", "false; echo not-reached"], None),
    "xtrace": (["-x", "-c", "echo traced"], None),
    "o-option": (["-o", "pipefail", "-c", "false | true; echo $?"], None),
    "plus-o": (["+o", "pipefail", "-c", "false | true; echo $?"], None),
    "norc-noprofile": (["--norc", "--noprofile", "-c", "echo plain"], None),
    "double-dash": (["--", "./script.sh", "p", "q"], None),
    "script-args": (["./script.sh", "one", "two"], None),
    "login-long": (["--login", "-c", "echo long"], None),
    "syntax-error-2": (["-c", "if then fi"], None),
    "cwd-and-env": (["-c", 'pwd; echo "$NONO_TEST_VAR"'], None),
}


def _normalise(text: str, shims: str) -> str:
    return text.replace(f"{shims}/bash", "bash").replace("/usr/bin/bash", "bash")


@pytest.mark.parametrize("case", sorted(CASES))
def test_matches_real_bash(supervisor, case):
    args, stdin = CASES[case]
    home = supervisor.home
    (home.work / "script.sh").write_text(SCRIPT_BODY)
    env = {**supervisor.env, "NONO_TEST_VAR": "value with spaces"}
    real = home.run(["bash", *args], input=stdin, env=env)
    ours = home.run([str(supervisor.shims / "bash"), *args], input=stdin, env=env)
    shims = str(supervisor.shims)
    assert (ours.returncode, _normalise(ours.stdout, shims), _normalise(ours.stderr, shims)) == (
        real.returncode,
        _normalise(real.stdout, shims),
        _normalise(real.stderr, shims),
    )


@pytest.mark.parametrize("name", ["sh", "dash"])
def test_sh_personality_runs_the_real_sh(supervisor, name):
    result = supervisor.shell("-c", "echo ${BASH_VERSION:-not-bash}", name=name)
    assert result.stdout == "not-bash\n"
    assert supervisor.shell("-c", "echo ${BASH_VERSION:+bash}").stdout == "bash\n"


def test_isatty_is_preserved_through_a_pty(supervisor):
    probe = 'for fd in 0 1 2; do [ -t $fd ] && printf "tty$fd "; done; echo'
    real = pexpect.spawn("bash", ["-c", probe], env=supervisor.env, encoding="utf-8", timeout=20)
    real.expect(pexpect.EOF)
    ours = pexpect.spawn(
        str(supervisor.shims / "bash"), ["-c", probe], env=supervisor.env, encoding="utf-8", timeout=20
    )
    ours.expect(pexpect.EOF)
    assert real.before.strip() == "tty0 tty1 tty2"
    assert ours.before.strip() == real.before.strip()


def test_isatty_false_on_pipes(supervisor):
    probe = "[ -t 1 ] && echo tty || echo notty"
    assert supervisor.shell("-c", probe).stdout == "notty\n"


def test_ctrl_c_is_forwarded_to_the_command(supervisor):
    child = pexpect.spawn(
        str(supervisor.shims / "bash"),
        ["-c", "echo ready; sleep 30; echo not-reached"],
        env=supervisor.env,
        encoding="utf-8",
        timeout=20,
    )
    child.expect("ready")
    child.sendintr()
    child.expect(pexpect.EOF)
    child.close()
    assert "not-reached" not in child.before
    assert child.exitstatus == 130


def test_closed_stdin_stays_closed(supervisor):
    def closed_stdin(shell: str) -> str:
        outer = f'{shell} -c "cat; echo rc=\\$?" <&-'
        return supervisor.home.run(["bash", "-c", outer], env=supervisor.env).stdout

    assert closed_stdin("bash") == closed_stdin(str(supervisor.shims / "bash")) == "rc=1\n"


def test_dollar_zero_names_the_shell_not_the_shim_path(supervisor):
    result = supervisor.shell("-c", "echo $0; no-such-command-nono")
    assert result.stdout == "bash\n"
    assert result.stderr.startswith("bash: line 1: no-such-command-nono")
    assert str(supervisor.shims) not in result.stderr
