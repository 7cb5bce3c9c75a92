"""Pseudo-terminals (issue 11): commands open new ptys; the supervisor's own terminal stays sealed."""

from __future__ import annotations

import os
import shutil
import sys
import threading

import pexpect
import pytest

from conftest import SUPERVISOR, Home, as_nobody

OPEN_PTY = r"""
import os, pty, sys
master, slave = pty.openpty()
os.write(slave, b"through-a-new-pty\n")
print(os.read(master, 64).decode().strip(), os.ttyname(slave).startswith("/dev/pts/"))
"""

PEXPECT_INSIDE = r"""
import pexpect
child = pexpect.spawn("/bin/echo", ["spawned-on-a-pty"])
child.expect("spawned-on-a-pty")
print("pexpect-ok")
"""


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_a_command_opens_new_pseudo_terminals(request, user):
    home: Home = request.getfixturevalue("nobody_home" if user else "home")
    for code, expected in ((OPEN_PTY, "through-a-new-pty True"), (PEXPECT_INSIDE, "pexpect-ok")):
        result = home.run([SUPERVISOR, "exec", "--", sys.executable, "-c", code], user=user)
        assert result.returncode == 0 and expected in result.stdout, result.stdout + result.stderr
        assert "nono: denied" not in result.stderr, result.stderr
    if shutil.which("script"):
        result = home.run(
            [SUPERVISOR, "exec", "--", "script", "-qc", "echo in-script", "/dev/null"], user=user
        )
        assert result.returncode == 0 and "in-script" in result.stdout, result.stderr


def _on_a_terminal(home: Home, argv: list[str], user: bool) -> tuple[int, str]:
    """``argv`` with a pty as its terminal (how the supervisor runs): (exit status, what it printed)."""
    argv = as_nobody(argv) if user else argv
    child = pexpect.spawn(argv[0], argv[1:], cwd=str(home.work), env=home.env, encoding="utf-8", timeout=60)
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus, child.before


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_a_command_opens_new_pseudo_terminals_while_the_supervisor_is_on_one(request, user):
    """Landlock grants no /dev/pts node but the handed terminal's (test_terminals). A pty made later has
    its peer opened through TIOCGPTPEER (glibc's openpty and forkpty), inside the kernel: the supervisor
    opens it through the caller's master. Without that, openpty, pexpect, script and tmux failed with a
    bare EACCES whenever the supervisor ran on a terminal."""
    home: Home = request.getfixturevalue("nobody_home" if user else "home")
    for code, expected in ((OPEN_PTY, "through-a-new-pty True"), (PEXPECT_INSIDE, "pexpect-ok")):
        bare, out = _on_a_terminal(home, [sys.executable, "-c", code], user)
        assert bare == 0 and expected in out, out  # the twin
        argv = [SUPERVISOR, "exec", "--prompt", "never", "--", sys.executable, "-c", code]
        status, out = _on_a_terminal(home, argv, user)
        assert status == 0 and expected in out, out
        assert "nono: denied" not in out, out


PEER = r"""
import errno, fcntl, os, sys
master = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY)
if sys.argv[1] == "/dev/ptmx":
    fcntl.ioctl(master, 0x40045431, bytes(4))  # TIOCSPTLCK to 0: unlocked, as unlockpt does
try:
    peer = fcntl.ioctl(master, 0x5441, os.O_RDWR | os.O_NOCTTY)  # TIOCGPTPEER
    print("peer", os.ttyname(peer).startswith("/dev/pts/"))
except OSError as e:
    print("refused", errno.errorcode[e.errno])
"""


def test_a_pty_peer_is_decided_as_an_open_of_its_node(home):
    """TIOCGPTPEER is an open of the peer's /dev/pts node: refused (and reported) where the policy denies
    /dev/pts, and on what is not a pty master the kernel's own answer, as bare."""
    probe = [sys.executable, "-c", PEER]
    assert home.run([*probe, "/dev/ptmx"]).stdout == "peer True\n"  # the twins, bare
    assert home.run([*probe, "/dev/null"]).stdout == "refused ENOTTY\n"
    denied = home.run(
        [SUPERVISOR, "exec", "--prompt", "never", "--deny", "/dev/pts", "--", *probe, "/dev/ptmx"]
    )
    assert denied.stdout == "refused EACCES\n", denied.stderr
    assert "nono: denied read /dev/pts/" in denied.stderr and "[--deny]" in denied.stderr, denied.stderr
    granted = home.run([SUPERVISOR, "exec", "--prompt", "never", "--", *probe, "/dev/ptmx"])
    assert granted.stdout == "peer True\n" and "nono:" not in granted.stderr, granted.stderr
    other = home.run([SUPERVISOR, "exec", "--prompt", "never", "--", *probe, "/dev/null"])
    assert other.stdout == "refused ENOTTY\n" and "nono:" not in other.stderr, other.stderr


OPEN_TERMINAL = r"""
import sys
try:
    open(sys.argv[1], "w").write("written by a command\n")
    print("opened")
except OSError as e:
    print("refused", e.errno)
"""


def test_the_supervisors_own_terminal_is_never_grantable(home):
    """Even named explicitly (--allow-file), the terminal the human answers on is not a command's."""
    command = f"{sys.executable} -c '{OPEN_TERMINAL}' \"$term\""
    script = f'term=$(tty); exec {SUPERVISOR} exec --allow-file "$term" -- {command}'
    child = pexpect.spawn(
        "/bin/sh", ["-c", script], cwd=str(home.work), env=home.env, encoding="utf-8", timeout=30
    )
    child.expect(pexpect.EOF)
    output = child.before
    assert "refused 13" in output, output
    assert "written by a command" not in output
    assert "[never-grantable]; never grantable" in output, output
    # The twin: the same open, bare, reaches that terminal.
    bare = pexpect.spawn(
        "/bin/sh", ["-c", f"{sys.executable} -c '{OPEN_TERMINAL}' \"$(tty)\""], encoding="utf-8", timeout=30
    )
    bare.expect(pexpect.EOF)
    assert "opened" in bare.before, bare.before


def test_a_question_never_wakes_a_closed_proxy_through_a_reused_fd_number(monkeypatch):
    """The swap: a question's thread checks that the proxy is running, the proxy closes its wake pipe, the
    kernel gives the pipe's number to another file, and then the thread writes its wake byte there.
    Here the write is held between the check and the syscall while the proxy closes."""
    from nono_supervisor.terminal import proxy as proxy_mod

    proxy = proxy_mod.PtyProxy(keys=None, screen=-1)
    master_read, master = os.pipe()  # stands in for the pty master; only closed here
    wake = proxy._wake_write
    in_write, release = threading.Event(), threading.Event()
    real_write = os.write

    def held_write(fd: int, data: bytes) -> int:
        if fd == wake and not in_write.is_set():
            in_write.set()
            release.wait(5)
        return real_write(fd, data)

    monkeypatch.setattr(proxy_mod.os, "write", held_write)
    proxy._idle.set()  # no proxy thread runs here to acknowledge the pause

    def ask() -> None:
        with proxy.pause():
            pass

    waker = threading.Thread(target=ask)
    waker.start()
    assert in_write.wait(5)
    closer = threading.Thread(target=proxy.close, args=(master,))
    closer.start()
    closer.join(0.3)
    reused = []
    if not closer.is_alive():  # closed under the writer's feet: take the numbers back, as the kernel would
        for _ in range(8):
            reused.append(os.pipe())
            if wake in reused[-1]:
                break
    release.set()
    waker.join(5)
    closer.join(5)
    try:
        for read_end, _ in reused:
            os.set_blocking(read_end, False)
            with pytest.raises(BlockingIOError):
                os.read(read_end, 1)  # the wake byte reached a file that was not the proxy's
        assert not closer.is_alive() and reused == [], "close did not wait for a wake in progress"
    finally:
        for pair in reused:
            os.close(pair[0])
            os.close(pair[1])
        os.close(master_read)
