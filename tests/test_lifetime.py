"""Nothing a command or the agent starts outlives the supervisor (issue 23, finding 1).

A command that returns leaving a background job keeps bash's behaviour: the client returns at once and the
job runs on, under the command's keeper (its subreaper). When the supervisor process is gone (kill -9,
SIGTERM), the keeper kills that tree; the same for the agent's tree under ``run`` when the agent is killed.
Each test first shows the job alive and working (the twin: what a bare bash leaves running), then that it
is gone after the supervisor.
"""

from __future__ import annotations

import os
import signal
import subprocess
import threading
import time

import pytest

from conftest import SUPERVISOR, as_nobody, pid_alive, run_sandboxed, start_supervisor, wait_until

# A daemon (setsid: its own session, reparented when its parent exits) appending to a file in the workdir.
# After its start it makes no trapped syscall (a write to an open file, a sleep): a shell loop's fork and
# exec fail once the supervisor's notify listener is gone, which ended some daemons by accident before.
# Its stdio is not the client's, so that a caller reading the client's output to EOF does not wait for it.
TICKS = """import sys, time
log = open(sys.argv[1], 'a', buffering=1)
while True:
    log.write('tick\\n')
    time.sleep(0.05)"""
DAEMON = f'setsid python3 -c "{TICKS}" {{log}} >/dev/null 2>&1 & echo $! > {{pidfile}}'


def _grows(path) -> bool:
    """The daemon, once it has written its first tick, writes more within 0.3 s (six ticks' time)."""
    wait_until(lambda: path.exists() and path.stat().st_size > 0)  # a Python start, slow under load
    before = path.stat().st_size if path.exists() else 0
    time.sleep(0.3)
    return path.exists() and path.stat().st_size > before


def _pid(path) -> int:
    assert wait_until(lambda: path.exists() and path.read_text().strip().isdigit())
    return int(path.read_text())


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
@pytest.mark.parametrize("end", [signal.SIGKILL, signal.SIGTERM], ids=["kill", "term"])
def test_a_returned_commands_daemon_dies_with_the_supervisor(request, user, end):
    home = request.getfixturevalue("nobody_home" if user else "home")
    sup = start_supervisor(home)
    try:
        log, pidfile = home.work / "daemon.log", home.work / "daemon.pid"
        # The command returns at once with its own status (the timeout would hang for the sleep's 300 s).
        result = sup.shell(
            "-c", DAEMON.format(log=log, pidfile=pidfile) + "; sleep 300 >/dev/null 2>&1 & exit 3", timeout=60
        )
        assert result.returncode == 3, result.stderr
        daemon = _pid(pidfile)
        assert pid_alive(daemon) and _grows(log), "the background job runs on after its command, as bash's"
        killed = time.monotonic()
        os.kill(sup.process.pid, end)
        sup.process.wait(10)
        assert wait_until(lambda: not pid_alive(daemon)), "the daemon outlived the supervisor"
        print(f"daemon gone {1000 * (time.monotonic() - killed):.0f} ms after the signal to the supervisor")
        assert not _grows(log)
    finally:
        sup.stop()


def test_twin_a_bare_bash_leaves_the_daemon_running(home):
    log, pidfile = home.work / "daemon.log", home.work / "daemon.pid"
    result = home.run(["bash", "-c", DAEMON.format(log=log, pidfile=pidfile) + "; exit 3"], timeout=60)
    daemon = _pid(pidfile)
    try:
        assert result.returncode == 3 and pid_alive(daemon) and _grows(log)
    finally:
        os.kill(daemon, signal.SIGKILL)


def test_a_job_that_ignores_the_interrupt_dies_with_the_supervisor(supervisor):
    """Ctrl-C ends the command; its background job, which ignores SIGINT (bash without job control sets
    that for ``&``), survives it as under bash, and is still the keeper's: it goes with the supervisor."""
    work = supervisor.home.work
    pidfile, forwarded = work / "job.pid", work / "forwarded"
    # The client forwards signals once it has seen the command start (before, they end it): a WINCH that
    # reaches the command says so.
    script = f"trap 'touch {forwarded}' WINCH; sleep 300 & echo $! > {pidfile}; "
    script += f"until [ -e {forwarded} ]; do sleep 0.05; done; trap '' WINCH; wait"
    client = subprocess.Popen([str(supervisor.shims / "bash"), "-c", script], env=supervisor.env)
    job = _pid(pidfile)
    assert wait_until(lambda: client.send_signal(signal.SIGWINCH) or forwarded.exists())
    client.send_signal(signal.SIGINT)  # forwarded to the command's group: bash's wait returns
    assert client.wait(30) == 128 + signal.SIGINT
    assert pid_alive(job), "a job ignoring SIGINT outlives Ctrl-C of its command, as under bash"
    supervisor.process.kill()
    supervisor.process.wait(10)
    assert wait_until(lambda: not pid_alive(job)), "the job outlived the supervisor"


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
@pytest.mark.parametrize("victim", ["agent", "supervisor"])
def test_the_agents_children_die_when_the_agent_or_run_is_killed(request, user, victim):
    home = request.getfixturevalue("nobody_home" if user else "home")
    log, pidfile, agent_pid = home.work / "daemon.log", home.work / "daemon.pid", home.work / "agent.pid"
    agent = DAEMON.format(log=log, pidfile=pidfile) + f"; echo $$ > {agent_pid}; wait"
    argv = [SUPERVISOR, "run", "--no-interpose", "--", "bash", "-c", agent]
    run = subprocess.Popen(
        as_nobody(argv) if user else argv,
        cwd=home.work,
        env=home.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        daemon, agent_process = _pid(pidfile), _pid(agent_pid)
        assert pid_alive(daemon) and _grows(log)
        os.kill(agent_process if victim == "agent" else run.pid, signal.SIGKILL)
        run.wait(30)
        assert wait_until(lambda: not pid_alive(daemon)), f"the agent's child outlived the {victim}"
        assert not _grows(log)
    finally:
        if run.poll() is None:
            run.kill()
            run.wait()


def _ended_as_the_kill_request_came(process) -> None:
    """The command ends while the keeper is stopped, and the kill request comes before the keeper wakes:
    the keeper reads both at one wake, and its kill_tree, not its loop, reaps the command."""
    os.kill(process.keeper, signal.SIGSTOP)
    try:
        process.signal(signal.SIGKILL)
        assert wait_until(lambda: not pid_alive(process.pid))  # a zombie: its parent, the keeper, is stopped
        process.kill_tree()
    finally:
        os.kill(process.keeper, signal.SIGCONT)


def _killed_running(process) -> None:
    """As a late deny stops a command: the keeper kills the tree, and the group is sent SIGKILL too."""
    process.kill_tree()
    process.signal(signal.SIGKILL)


@pytest.mark.parametrize("round_", range(5))
@pytest.mark.parametrize(
    "kill", [_ended_as_the_kill_request_came, _killed_running], ids=["reaped-in-kill", "running"]
)
def test_a_killed_command_reports_sigkill_whoever_reaps_it(home, kill, round_):
    """A command SIGKILLed reports SIGKILL (bash's 137), never 127: its status was lost when the keeper's
    kill_tree reaped it with a bare waitpid (before dad06ac), and the keeper then exited 127 for it."""
    code, _out, _process = run_sandboxed(home, ["/bin/sleep", "60"], during=kill)
    assert code == -signal.SIGKILL


def test_twin_a_bare_command_killed_reports_sigkill():
    bare = subprocess.Popen(["/bin/sleep", "60"])
    bare.kill()
    assert bare.wait() == -signal.SIGKILL


def test_kill_tree_never_signals_a_reaped_keeper(home, monkeypatch):
    """Another thread reads the status and reaps the keeper while a kill is on its way (run's watch of the
    agent's end and its main thread's wait): the kill must not go to a reaped pid, which may be anyone's
    by then (KILL_TREE_SIGNAL's default action ends a process). The waiter is started between the check
    of the status and the signal, and given time to finish; the signal still finds the keeper unreaped."""
    from nono_supervisor.linux import sandbox

    real_kill, found, waiters = os.kill, [], []

    def kill_after_a_wait(pid: int, signo: int) -> None:
        if signo == sandbox.KILL_TREE_SIGNAL:
            waiters.append(threading.Thread(target=process.wait))
            waiters[0].start()
            waiters[0].join(1)
            found.append(os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG | os.WNOWAIT))
        real_kill(pid, signo)

    def race(started) -> None:
        nonlocal process
        process = started
        # `true` ended, its tree too: the keeper exited (a zombie: only the status read reaps it)
        assert wait_until(lambda: not pid_alive(process.keeper))
        monkeypatch.setattr(sandbox.os, "kill", kill_after_a_wait)
        process.kill_tree()
        monkeypatch.undo()
        waiters[0].join()

    process = None
    code, _out, _process = run_sandboxed(home, ["/bin/true"], during=race)
    assert code == 0 and len(found) == 1 and found[0] is not None, found
