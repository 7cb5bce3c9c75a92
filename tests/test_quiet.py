"""Quiet on a stock home (issue 20): what a command's shell, ps and a listing do on their own is no line and
no question, and still a denial where it touches content (access.silent, the discovery listing, the shell's
own start-up files); what the user sees of a session (run's start line, log, grants list, questions)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pexpect
import pytest

from conftest import FAKE_KEY, NOBODY, SKEL_MARK, SUPERVISOR, Home, as_nobody
from nono_shell.personality import command_text
from nono_supervisor.policy.access import SHELL_OWN

USERS = pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
CHOICES = "[o]nce  [s]ession  [a]lways  [d]eny"


@pytest.fixture
def stock(request) -> Home:
    """The stock home of the test's user (``user``: uid 65534)."""
    user = request.node.callspec.params.get("user", False) if hasattr(request.node, "callspec") else False
    return request.getfixturevalue("nobody_skel_home" if user else "skel_home")


def _exec(home: Home, script: str, *flags: str, user: bool = False, shell: tuple[str, ...] = ("-c",)):
    return home.run([SUPERVISOR, "exec", *flags, "--", "bash", *shell, script], user=user)


def _bare(home: Home, script: str, user: bool = False, shell: tuple[str, ...] = ("-c",)):
    return home.run(["bash", *shell, script], user=user)


def _denied(home: Home, path: str) -> list[dict]:
    return [e for e in home.audit() if e.get("decision") == "deny" and e.get("path") == path]


# ---- a shell's own start-up files ------------------------------------------------------------------------


@USERS
def test_a_login_shell_starts_without_a_line_and_its_profile_stays_unread(stock, user):
    """Claude Code runs ``bash -c -l CMD``: bash read ~/.profile at every command, was refused, printed
    ``bash: ~/.profile: Permission denied`` and the report a ``nono:`` line. Now the shell reads it empty:
    a login shell as the agent asked (login_shell, /etc/profile), none of the file's content, no line."""
    script = 'shopt -q login_shell && echo login; echo "profile=${NONO_SKEL_PROFILE:-unset}"; exit'
    result = _exec(stock, script, user=user, shell=("-c", "-l"))
    assert result.returncode == 0, result.stderr
    assert result.stdout == "login\nprofile=unset\n"  # the content was not read
    assert result.stderr == ""  # neither bash's "Permission denied" nor a nono: line
    bare = _bare(stock, script, user=user, shell=("-c", "-l"))  # the twin: bare, bash runs ~/.profile
    assert bare.stdout.startswith(
        f"login\nprofile={SKEL_MARK}\n"
    )  # (Debian's .bash_logout clears the screen)
    for name in (".profile", ".bash_logout"):  # read at start and at the login shell's exit: in the audit
        rules = [e["rule"] for e in _denied(stock, str(stock.home / name))]
        assert rules and all(rule.endswith(SHELL_OWN) for rule in rules), (name, rules)


def test_sh_as_a_login_shell_reads_its_profile_empty_too(skel_home):
    """``sh -l`` (dash here) reads ~/.profile: the same empty answer, no line, no ``can't open``."""
    script = 'echo "profile=${NONO_SKEL_PROFILE:-unset}"'
    result = skel_home.run([SUPERVISOR, "exec", "--", "sh", "-l", "-c", script])
    assert (result.returncode, result.stdout, result.stderr) == (0, "profile=unset\n", ""), result
    bare = skel_home.run(["sh", "-l", "-c", script])  # the twin
    assert bare.stdout == f"profile={SKEL_MARK}\n"
    assert [e["rule"] for e in _denied(skel_home, str(skel_home.home / ".profile"))] == [
        "group:deny_shell_configs" + SHELL_OWN
    ]


ZSH_FILES = (".zshenv", ".zprofile", ".zshrc", ".zlogin", ".zlogout")


@pytest.mark.skipif(shutil.which("zsh") is None, reason="zsh is not installed")
def test_zsh_as_an_interactive_login_shell_reads_its_five_files_empty(skel_home):
    """``zsh -lic`` reads ~/.zshenv, ~/.zprofile, ~/.zshrc, ~/.zlogin and at exit ~/.zlogout: each empty,
    no line, each in the audit log."""
    for name in ZSH_FILES:
        (skel_home.home / name).write_text(f"echo ran{name}\n")
    result = skel_home.run([SUPERVISOR, "exec", "--", "zsh", "-lic", "echo body"], stdin=subprocess.DEVNULL)
    assert (result.returncode, result.stdout, result.stderr) == (0, "body\n", ""), result
    bare = skel_home.run(["zsh", "-lic", "echo body"], stdin=subprocess.DEVNULL)  # the twin
    assert bare.stdout.split() == [
        "ran.zshenv",
        "ran.zprofile",
        "ran.zshrc",
        "ran.zlogin",
        "body",
        "ran.zlogout",
    ]
    for name in ZSH_FILES:
        assert all(e["rule"].endswith(SHELL_OWN) for e in _denied(skel_home, str(skel_home.home / name)))
        assert _denied(skel_home, str(skel_home.home / name)), name


@USERS
def test_a_commands_read_of_the_profile_is_still_a_reported_denial(stock, user):
    """The empty answer is the shell's own start-up read only: ``cat ~/.profile`` in that same login shell
    is refused and reported (a silent start-up read of the same path does not hide it)."""
    result = _exec(stock, "cat ~/.profile; echo rc=$?", user=user, shell=("-lc",))
    assert SKEL_MARK not in result.stdout and "rc=1" in result.stdout
    lines = [line for line in result.stderr.splitlines() if line.startswith("nono:")]
    assert lines == [
        "nono: denied read ~/.profile [group:deny_shell_configs]; to allow: --read-file ~/.profile"
    ]
    assert "bash:" not in result.stderr
    bare = _bare(stock, "cat ~/.profile", user=user, shell=("-lc",))  # the twin
    assert SKEL_MARK in bare.stdout


def test_a_program_named_like_a_shell_reading_its_files_gets_nothing(skel_home, tmp_path):
    """The empty answer goes by the executable: a copy of cat named bash gets the empty file (not the
    content) and no line; nothing is gained by the name. Real cat is refused and told."""
    fake = tmp_path / "bash"
    fake.write_bytes(open("/bin/cat", "rb").read())
    fake.chmod(0o755)
    named = skel_home.run(
        [SUPERVISOR, "exec", "--read", str(tmp_path), "--", str(fake), str(skel_home.home / ".bashrc")]
    )
    assert named.returncode == 0 and named.stdout == "" and "nono:" not in named.stderr, named
    real = skel_home.run([SUPERVISOR, "exec", "--", "cat", str(skel_home.home / ".bashrc")])
    assert (
        real.returncode == 1 and SKEL_MARK not in real.stdout and "nono: denied read ~/.bashrc" in real.stderr
    )
    assert SKEL_MARK in skel_home.run([str(fake), str(skel_home.home / ".bashrc")]).stdout  # the twin, bare


def test_a_shell_writing_into_its_rc_is_told(skel_home):
    """Only the history is the shell's own to be refused quietly: ``echo >> ~/.bashrc`` (the redirection is
    bash's own open) is a reported denial, and the file is unchanged (invariant 10)."""
    before = (skel_home.home / ".bashrc").read_text()
    result = _exec(skel_home, "echo 'alias x=y' >> ~/.bashrc")
    assert result.returncode == 1 and "nono: denied write ~/.bashrc" in result.stderr, result.stderr
    assert (skel_home.home / ".bashrc").read_text() == before
    assert _bare(skel_home, "echo 'alias x=y' >> ~/.bashrc").returncode == 0  # the twin: bare, it is written
    assert (skel_home.home / ".bashrc").read_text() == before + "alias x=y\n"


def _interactive(home: Home, argv: list[str], lines: list[str], user: bool) -> str:
    """Everything shown on a pty while ``argv`` runs ``lines`` typed into it, then ``exit``."""
    env = {**home.env, "TERM": "dumb", "PS1": "PROMPT$ "}
    argv = as_nobody(argv) if user else argv
    child = pexpect.spawn(argv[0], argv[1:], env=env, cwd=str(home.work), encoding="utf-8", timeout=60)
    for line in lines:
        child.sendline(line)
    child.sendline("exit")
    child.expect(pexpect.EOF)
    child.close()
    return child.before


@USERS
def test_an_interactive_shell_on_a_pty_asks_nothing_and_keeps_its_history_to_itself(stock, user):
    """``bash -i`` (the README's ``run -- bash``) reads ~/.bashrc and its history at start and writes the
    history at exit: no question (--prompt tty, on a pty), no line, the files unchanged and unread."""
    history = stock.home / ".bash_history"
    history.write_text(f"echo {SKEL_MARK}-history\n")
    if user:
        os.chown(history, NOBODY, NOBODY)
    typed = ['echo "rc=${NONO_SKEL_BASHRC:-unset}"', "history | tail -3"]
    shown = _interactive(stock, [SUPERVISOR, "exec", "--prompt", "tty", "--", "bash", "-i"], typed, user)
    assert "rc=unset" in shown and CHOICES not in shown and "nono:" not in shown, shown
    assert f"{SKEL_MARK}-history" not in shown  # the old history was not read
    assert history.read_text() == f"echo {SKEL_MARK}-history\n"  # nor written
    assert [e["rule"] for e in _denied(stock, str(history)) if e["op"] == "write"]  # the audit log has it
    bare = _interactive(stock, ["bash", "-i"], typed, user)  # the twin: bare, bash reads both files
    assert f"rc={SKEL_MARK}" in bare and f"{SKEL_MARK}-history" in bare


# ---- another process's /proc -----------------------------------------------------------------------------


@USERS
def test_ps_aux_prints_no_line(stock, user):
    """ps reads every process's /proc/PID/environ: refused (another process's), silently, audited."""
    result = _exec(stock, "ps aux", user=user)
    bare = _bare(stock, "ps aux", user=user)  # the twin
    assert result.returncode == bare.returncode == 0
    assert result.stdout.splitlines()[0] == bare.stdout.splitlines()[0]
    assert "nono:" not in result.stderr, result.stderr
    assert any(e.get("rule", "").startswith("another process's /proc") for e in stock.audit())


# ---- discovery, not content ------------------------------------------------------------------------------


@USERS
def test_slash_home_and_the_workdirs_ancestors_list_as_bare(stock, user):
    """``ls /``, ``ls ~``, ``cd ~ && ls`` and the directories above the workdir give bare's names, with no
    line: Landlock cannot grant a directory without its subtree, so the supervisor lists them."""
    script = f"ls /; ls -a ~; cd ~ && ls -a; ls -a {stock.root}; ls -la ~ | wc -l"
    result = _exec(stock, script, user=user)
    bare = _bare(stock, script, user=user)  # the twin
    assert result.returncode == 0 and result.stderr == "", result.stderr
    assert result.stdout == bare.stdout


@USERS
def test_discovery_gives_names_never_content(stock, user):
    """The home lists; its files' contents (``cat ~/notes.txt``, also through the listed directory's fd),
    a denied group (``ls ~/.ssh``) and a directory that is none of the discoverable ones stay denied and
    reported."""
    outside = stock.root / "outside"
    outside.mkdir()
    (outside / "data").write_text("outside\n")
    if user:
        os.chown(outside, NOBODY, NOBODY)
    through_fd = (
        "import os,sys; d=os.open(sys.argv[1], os.O_RDONLY|os.O_DIRECTORY); print(sorted(os.listdir(d))[:1])"
        "\ntry: print(os.read(os.open('notes.txt', os.O_RDONLY, dir_fd=d), 99))"
        "\nexcept OSError as e: print(e.errno)"
    )
    script = f'cat ~/notes.txt; ls ~/.ssh; ls {outside}; {sys.executable} -c "{through_fd}" ~; echo end'
    result = _exec(stock, script, user=user)
    assert SKEL_MARK not in result.stdout and FAKE_KEY not in result.stdout and "id_rsa" not in result.stdout
    assert result.stdout.splitlines()[-3:] == ["['.aws']", "13", "end"], result.stdout
    reported = sorted(line.split(" [")[0] for line in result.stderr.splitlines() if line.startswith("nono:"))
    assert reported == [
        f"nono: denied read {outside}",
        "nono: denied read ~/.ssh",
        "nono: denied read ~/notes.txt",
    ], result.stderr
    bare = _bare(stock, script, user=user)  # the twin: bare, each of them is read
    assert SKEL_MARK in bare.stdout and "id_rsa" in bare.stdout and "data" in bare.stdout


def test_a_symlink_in_the_workdir_does_not_make_a_denied_group_discoverable(skel_home):
    """A listing is decided on the real path: a link in the workdir to ~/.ssh lists nothing. (The open is
    left to Landlock on the fast path, the link's own path being in the workdir; the kernel refuses it.)"""
    (skel_home.work / "keys").symlink_to(skel_home.home / ".ssh")
    result = _exec(skel_home, "ls keys/")
    assert result.returncode == 2 and result.stdout == "" and "Permission denied" in result.stderr
    assert "id_rsa" in _bare(skel_home, "ls keys/").stdout  # the twin


LIST_FLIP = r"""
import os, sys, threading
home, ssh = sys.argv[1], sys.argv[2]
stop = False
def flip():
    while not stop:
        try:
            os.chdir(ssh)
        except OSError:
            pass
        os.chdir(home)
threading.Thread(target=flip, daemon=True).start()
listed = seen = 0
for _ in range(400):
    try:
        names = os.listdir(".")
    except OSError:
        continue
    listed += 1
    seen += "id_rsa" in names
stop = True
print(f"listed={listed} seen={seen}")
"""


@USERS
def test_a_cwd_flip_never_turns_a_discovery_listing_into_a_denied_groups(stock, user):
    """One thread lists ``.`` while another flips the cwd between ~ (discoverable) and ~/.ssh: the listing
    is decided on the directory actually pinned, so ~/.ssh's names never come out."""
    args = [sys.executable, "-c", LIST_FLIP, str(stock.home), str(stock.key.parent)]
    result = stock.run([SUPERVISOR, "exec", "--", *args], user=user)
    fields = dict(item.split("=") for item in result.stdout.split())
    assert int(fields["listed"]) > 0 and fields["seen"] == "0", result
    for _attempt in range(20):  # the twin: bare, the flip lands some listings in ~/.ssh (scheduling: retry)
        bare = dict(item.split("=") for item in stock.run(args, user=user).stdout.split())
        if int(bare["seen"]) > 0:
            break
    assert int(bare["seen"]) > 0


# ---- questions --------------------------------------------------------------------------------------------


@USERS
def test_ordinary_work_asks_nothing_on_a_terminal_and_a_secret_still_does(stock, user):
    """Under --prompt tty on a pty: ``bash -lc``, ``ls /``, ``ls ~``, ``ps aux`` ask nothing; the same
    session's ``cat ~/.ssh/id_rsa`` is asked (the prompter is there), and denied."""
    ordinary = "ls / >/dev/null; ls ~ >/dev/null; ps aux >/dev/null; echo ordinary-done"
    argv = [SUPERVISOR, "exec", "--prompt", "tty", "--", "bash", "-lc", f"{ordinary}; cat ~/.ssh/id_rsa"]
    env = {**stock.env, "TERM": "dumb"}
    argv = as_nobody(argv) if user else argv
    child = pexpect.spawn(argv[0], argv[1:], env=env, cwd=str(stock.work), encoding="utf-8", timeout=60)
    child.expect_exact(CHOICES)
    before = child.before
    assert "ordinary-done" in before and "nono: denied" not in before, before
    assert "~/.ssh/id_rsa" in before and before.count("wants to") == 1, before  # the one question
    time.sleep(0.6)  # past the guard window
    child.send("d\r")
    child.expect(pexpect.EOF)
    child.close()
    assert FAKE_KEY not in child.before


# ---- what the user sees ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "argv, text",
    [
        (["bash", "-c", "-l", "git status"], "git status"),  # Claude Code
        (["bash", "-lc", "ls"], "ls"),
        (["bash", "-o", "pipefail", "-c", "a | b"], "a | b"),
        (["bash", "+O", "extglob", "-ec", "x"], "x"),
        (["bash", "--norc", "-c", "q", "name", "arg"], "q"),
        (["bash", "-c", "--", "cmd", "name"], "cmd"),
        (["bash", "--rcfile", "f", "script.sh", "a"], "script.sh a"),
        (["bash", "script.sh", "-c"], "script.sh -c"),
        (["bash", "-i"], "(interactive)"),
        (["bash"], "(interactive)"),
    ],
)
def test_the_command_shown_is_the_one_the_shell_runs(argv, text):
    """A question said ``routed command: -l`` for ``bash -c -l CMD``: the word after ``-c`` is not the
    command when another option follows it; the shell takes the first operand after the options."""
    assert command_text(argv) == text


def test_run_says_what_is_enforced_in_one_line_and_q_hides_it(skel_home):
    result = skel_home.run([SUPERVISOR, "run", "--agent", "none", "--read", "~/notes.txt", "--", "true"])
    lines = result.stderr.splitlines()
    assert result.returncode == 0 and len(lines) == 1, result.stderr
    line = lines[0]
    assert line.startswith(
        "nono-supervisor: profile default, agent profile none; beyond the workdir: read+write $TMPDIR"
    )
    assert "read system_read" in line and "~/notes.txt" in line and "network open" in line
    quiet = skel_home.run([SUPERVISOR, "run", "-q", "--", "true"])
    assert quiet.returncode == 0 and quiet.stderr == ""
    missing = skel_home.run([SUPERVISOR, "run", "--", "no-such-agent-x"])  # an error is its one line alone
    assert missing.returncode == 127 and missing.stderr.count("\n") == 1, missing.stderr


def test_log_has_rule_and_hint_folds_repeats_escapes_paths_and_filters_by_session(skel_home):
    odd = skel_home.root / "odd\x1b[2Jname"
    odd.write_text("x\n")
    skel_home.run(
        [SUPERVISOR, "exec", "--", "bash", "-c", f"cat ~/.ssh/id_rsa ~/.ssh/id_rsa ~/.ssh/id_rsa '{odd}'"]
    )
    skel_home.run([SUPERVISOR, "exec", "--", "cat", str(skel_home.home / "notes.txt")])
    sessions = list(dict.fromkeys(e["session"] for e in skel_home.audit()))
    text = skel_home.run([SUPERVISOR, "log", "--denials"]).stdout
    assert "\x1b" not in text and "odd\\x1b[2Jname" in text
    key = [line for line in text.splitlines() if " deny read ~/.ssh/id_rsa " in line]
    assert len(key) == 1 and "(3 times)" in key[0], text
    assert "~/.ssh/id_rsa [group:deny_credentials]; to allow: --read-file ~/.ssh/id_rsa" in key[0]
    first = skel_home.run([SUPERVISOR, "log", "--session", sessions[0]]).stdout.splitlines()
    assert "id_rsa" in first[1] and first[-1].endswith(" exit 1") and "notes.txt" not in "".join(first)
    second = skel_home.run([SUPERVISOR, "log", "--denials", "--session", sessions[1]]).stdout
    assert "~/notes.txt [not granted]; to allow: --read-file ~/notes.txt" in second and "id_rsa" not in second


def test_grants_list_says_when_there_are_none(skel_home):
    result = skel_home.run([SUPERVISOR, "grants", "list"])
    assert result.returncode == 0 and result.stdout.startswith("no persistent grants"), result.stdout
