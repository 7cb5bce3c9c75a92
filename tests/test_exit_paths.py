"""Every known error path of both console scripts is one line with the documented exit code, and runs
nothing (CONTRACT "Exit codes": nono-shell 125; nono-supervisor 2 for a usage error or a bad file, naming
it, 125 when the sandbox could not be set up). Issue 23, finding 6: a deleted cwd, a profile that is not
UTF-8 and an XDG_STATE_HOME that is a file were tracebacks."""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from conftest import NONO_SHELL, SUPERVISOR, Home, as_nobody, pid_alive, wait_until


def _in_deleted_cwd(home: Home, argv: list[str]) -> list[str]:
    gone = home.root / "gone"
    gone.mkdir()
    os.chown(gone, home.owner, home.owner)
    return ["/bin/sh", "-c", 'cd "$0" && rmdir "$0" && exec "$@"', str(gone), *argv]


def _file(path: Path, data: bytes, mode: int = 0o600) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    path.chmod(mode)
    return path


def _grants(home: Home) -> Path:
    return home.home / ".config" / "nono-shell" / "grants.toml"


def _private(home: Home) -> Path:
    run_dir = home.root / "run"
    run_dir.mkdir(mode=0o700)
    return run_dir


def _exec(home: Home, *flags: str) -> list[str]:
    return [SUPERVISOR, "exec", *flags, "--", "touch", str(home.work / "ran")]


# name -> (set up and return (argv, env changes), exit code, what the line says)
CASES = {
    "deleted cwd, exec": (lambda h: (_in_deleted_cwd(h, _exec(h)), {}), 125, "current directory is gone"),
    "deleted cwd, policy": (
        lambda h: (_in_deleted_cwd(h, [SUPERVISOR, "policy"]), {}),
        125,
        "current directory is gone",
    ),
    "profile not UTF-8": (
        lambda h: (_exec(h, "--profile", str(_file(h.root / "p.toml", b"\xff\xfe[filesystem]\n"))), {}),
        2,
        "p.toml: invalid TOML",
    ),
    "profile a directory": (lambda h: (_exec(h, "--profile", str(h.work)), {}), 2, "cannot read profile"),
    "XDG_STATE_HOME a file": (
        lambda h: (_exec(h), {"XDG_STATE_HOME": str(_file(h.root / "state", b""))}),
        125,
        "audit log",
    ),
    "audit log a directory": (
        lambda h: (_exec(h, "--audit-log", str(h.work)), {}),
        125,
        "audit log {work}: cannot write it: Is a directory",
    ),
    "log, XDG_STATE_HOME a file": (
        lambda h: ([SUPERVISOR, "log"], {"XDG_STATE_HOME": str(_file(h.root / "state", b""))}),
        2,
        "cannot read the audit log: Not a directory",
    ),
    "grants.toml corrupt": (
        lambda h: (_exec(h), {}) if _file(_grants(h), b"[[grant]\n") else None,
        2,
        "grants.toml: invalid TOML",
    ),
    "grants.toml writable by others": (
        lambda h: (_exec(h), {}) if _file(_grants(h), b"", 0o666) else None,
        2,
        "grants.toml: owned by uid",
    ),
    "grants.toml a directory": (
        lambda h: (_exec(h), {}) if _grants(h).mkdir(parents=True) is None else None,
        2,
        "grants.toml: not a regular file",
    ),
    "grants list, XDG_CONFIG_HOME a file": (
        lambda h: ([SUPERVISOR, "grants"], {"XDG_CONFIG_HOME": str(_file(h.root / "config", b""))}),
        2,
        "cannot read grants: Not a directory",
    ),
    "socket directory with a wrong mode": (
        lambda h: ([SUPERVISOR, "serve", "--socket", str(h.work / "s")], {}),
        2,
        "must be an existing directory of yours with mode 0700",
    ),
    "socket path too long": (
        lambda h: ([SUPERVISOR, "serve", "--socket", str(_private(h) / ("s" * 120))], {}),
        125,
        "cannot listen on",  # AF_UNIX path too long: an OSError without an errno (was ': None')
    ),
    "unknown flag": (lambda h: (_exec(h, "--alow", "/"), {}), 2, "unrecognized arguments: --alow"),
}


@pytest.mark.parametrize("name", CASES)
def test_error_is_one_line_with_its_exit_code_and_runs_nothing(home, name):
    setup, code, says = CASES[name]
    argv, env = setup(home)
    result = home.run(argv, env={**home.env, **env}, cwd=home.root)
    assert result.returncode == code, result.stderr
    assert result.stderr.startswith("nono-supervisor: ") and result.stderr.count("\n") == 1, result.stderr
    assert says.format(work=home.work) in result.stderr and ": None" not in result.stderr
    assert not (home.work / "ran").exists()


def test_twin_the_same_exec_runs_with_the_files_in_order(home):
    result = home.run(_exec(home), cwd=home.root)
    assert result.returncode == 0 and result.stderr == "" and (home.work / "ran").exists()


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_nono_shell_in_a_deleted_cwd_exits_125_in_one_line(request, user):
    supervisor = request.getfixturevalue("nobody_supervisor" if user else "supervisor")
    home = supervisor.home
    marker = home.work / "ran"
    argv = [NONO_SHELL, "-c", f"touch {marker}"]
    result = home.run(_in_deleted_cwd(home, argv), env=supervisor.env, cwd=home.root, user=user)
    assert result.returncode == 125
    assert (
        result.stderr
        == "nono-shell: the current directory is gone (No such file or directory); refusing to run\n"
    )
    assert not marker.exists()
    twin = home.run(argv, env=supervisor.env, user=user)  # the same command from the workdir runs
    assert twin.returncode == 0 and marker.exists()


def test_an_unreadable_profile_is_one_line_as_uid_65534(nobody_home):
    profile = _file(nobody_home.root / "p.toml", b'extends = "default"\n', 0o000)
    result = nobody_home.run(_exec(nobody_home, "--profile", str(profile)), user=True)
    assert result.returncode == 2
    assert result.stderr == f"nono-supervisor: {profile}: cannot read profile: Permission denied\n"
    assert not (nobody_home.work / "ran").exists()
    profile.chmod(0o644)  # the twin: readable, it runs
    assert nobody_home.run(_exec(nobody_home, "--profile", str(profile)), user=True).returncode == 0


# ---- the terminal after a signal to `run` (issue 23, finding 3) ---------------------------------------

_PANE = """\
stty -g > {root}/before
sh -c 'echo $$ > {root}/run.pid; exec {supervisor} run --no-interpose -- bash agent.sh'
echo $? > {root}/rc
stty -g > {root}/after
sleep 60
"""
_AGENTS = {
    "running": "echo $$ > agent.pid\nexec sleep 60\n",
    "question on screen": "echo $$ > agent.pid\ncat ~/.aws/credentials\nexec sleep 60\n",
    # killed after the grace:
    "agent ignores it": "echo $$ > agent.pid\ntrap '' HUP INT QUIT TERM\nsleep 60\n",
}
_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT, signal.SIGINT)


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
@pytest.mark.parametrize("agent", _AGENTS)
@pytest.mark.parametrize("signo", _SIGNALS, ids=[s.name for s in _SIGNALS])
@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_a_signal_to_run_restores_the_terminal_and_ends_the_agent(request, user, signo, agent):
    """In a real terminal (tmux), ``stty -g`` after ``run`` ended by the signal equals ``stty -g`` before
    it (and differed while run held it raw), ``run`` exits 128+N and the agent is gone. Before: SIGTERM
    and SIGHUP left the terminal raw."""
    home = request.getfixturevalue("nobody_home" if user else "home")
    server = home.root.name  # a tmux server of its own per test: a dying one must not take the next
    pane = home.root / "pane.sh"
    pane.write_text(_PANE.format(root=home.root, supervisor=SUPERVISOR))
    (home.work / "agent.sh").write_text(_AGENTS[agent])
    shell = ["bash", "--norc", str(pane)]
    env = {**home.env, "TERM": "xterm-256color"}

    def tmux(*args: str) -> str:
        return subprocess.run(["tmux", "-L", server, *args], env=env, capture_output=True, text=True).stdout

    def mode() -> str:
        return subprocess.run(["stty", "-g", "-F", tty], capture_output=True, text=True).stdout

    tmux(
        "new-session",
        "-d",
        "-x",
        "200",
        "-y",
        "50",
        "-c",
        str(home.work),
        shlex.join(as_nobody(shell) if user else shell),
    )
    try:
        tty = tmux("display-message", "-p", "#{pane_tty}").strip()
        agent_pid, before = home.work / "agent.pid", home.root / "before"
        assert wait_until(lambda: agent_pid.exists() and agent_pid.read_text().strip(), 30), tmux(
            "capture-pane", "-p"
        )
        assert wait_until(lambda: mode() != before.read_text(), 10)  # raw while run holds it
        if agent == "question on screen":
            assert wait_until(lambda: "wants to read ~/.aws/credentials" in tmux("capture-pane", "-p"), 20)
        os.kill(int((home.root / "run.pid").read_text()), signo)
        after = home.root / "after"
        assert wait_until(lambda: after.exists() and after.read_text(), 20), tmux("capture-pane", "-p")
        assert (home.root / "rc").read_text().strip() == str(128 + signo)
        assert after.read_text() == before.read_text() == mode()
        assert not pid_alive(int(agent_pid.read_text()))
    finally:
        tmux("kill-server")


@pytest.mark.parametrize("argv", [["policy"], ["log"]])
def test_a_closed_pipe_stops_quietly(home, argv):
    """``policy | head``: 141 and nothing on stderr, as a shell tool; not the one-line error of other
    OSErrors at the edge (BrokenPipeError is one). The reader is gone before the first write."""
    log = home.root / "audit.jsonl"
    log.write_text("".join(f'{{"event":"e","n":{n}}}\n' for n in range(1000)))
    read_end, write_end = os.pipe()
    os.close(read_end)
    try:
        result = home.run(
            [SUPERVISOR, *argv, "--audit-log", str(log)],
            stdout=write_end,
            capture_output=False,
            stderr=subprocess.PIPE,
        )
    finally:
        os.close(write_end)
    assert (result.returncode, result.stderr) == (141, "")


_SERVE_PANE = """\
stty -g > {root}/before
sh -c 'echo $$ > {root}/serve.pid; exec {supervisor} serve --socket {root}/run/socket'
echo $? > {root}/rc
stty -g > {root}/after
sleep 60
"""


@pytest.mark.skipif(shutil.which("tmux") is None, reason="needs tmux")
@pytest.mark.parametrize("signo", _SIGNALS[:3], ids=[s.name for s in _SIGNALS[:3]])
def test_a_signal_to_serve_restores_the_terminal_a_command_was_proxied_on(home, signo):
    """A command handed serve's own terminal runs on a pty serve proxies, the terminal raw meanwhile; serve
    ended by TERM, HUP or QUIT leaves it as it was. Before: HUP and QUIT killed serve with the terminal raw,
    and TERM's exit left it raw too (the proxy's thread held it)."""
    server = home.root.name
    (home.root / "run").mkdir(mode=0o700)
    (home.root / "pane.sh").write_text(_SERVE_PANE.format(root=home.root, supervisor=SUPERVISOR))
    env = {**home.env, "TERM": "xterm-256color"}

    def tmux(*args: str) -> str:
        return subprocess.run(["tmux", "-L", server, *args], env=env, capture_output=True, text=True).stdout

    tmux(
        "new-session", "-d", "-x", "200", "-y", "50", "-c", str(home.work), f"bash --norc {home.root}/pane.sh"
    )
    client = None
    try:
        tty = tmux("display-message", "-p", "#{pane_tty}").strip()
        before, after = home.root / "before", home.root / "after"
        assert wait_until(lambda: (home.root / "run" / "socket").exists(), 30), tmux("capture-pane", "-p")
        fd = os.open(tty, os.O_RDWR | os.O_NOCTTY)
        try:
            client = subprocess.Popen(
                [NONO_SHELL, "-c", "sleep 30"],
                stdin=fd,
                stdout=fd,
                stderr=fd,
                env={**env, "NONO_SOCKET": str(home.root / "run" / "socket")},
                cwd=home.work,
            )
        finally:
            os.close(fd)
        mode = lambda: subprocess.run(["stty", "-g", "-F", tty], capture_output=True, text=True).stdout  # noqa: E731
        assert wait_until(lambda: mode() != before.read_text(), 10)  # raw while the command's proxy runs
        os.kill(int((home.root / "serve.pid").read_text()), signo)
        assert wait_until(lambda: after.exists() and after.read_text(), 20), tmux("capture-pane", "-p")
        assert after.read_text() == before.read_text() == mode()
    finally:
        if client is not None:
            client.kill()
            client.wait()
        tmux("kill-server")


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_a_signal_to_run_without_a_terminal_ends_the_agent_and_exits_128_plus_n(request, user):
    """No terminal (the agent on run's own pipes): SIGTERM still goes on to the agent, its tree is killed
    after the grace if it ignores it, and run exits 143. Twin: the same agent ended by itself exits 0."""
    home = request.getfixturevalue("nobody_home" if user else "home")
    (home.work / "agent.sh").write_text(_AGENTS["agent ignores it"])
    argv = [SUPERVISOR, "run", "--no-interpose", "--", "bash", "agent.sh"]
    with subprocess.Popen(
        as_nobody(argv) if user else argv,
        cwd=home.work,
        env=home.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    ) as run:
        agent_pid = home.work / "agent.pid"
        assert wait_until(lambda: agent_pid.exists() and agent_pid.read_text().strip(), 30)
        run.send_signal(signal.SIGTERM)  # as_nobody's wrapper execs: this is run itself
        assert run.wait(20) == 128 + signal.SIGTERM, run.stderr.read()
    assert not pid_alive(int(agent_pid.read_text()))
    (home.work / "agent.sh").write_text("exit 0\n")
    assert home.run(argv, user=user, stdin=subprocess.DEVNULL).returncode == 0
