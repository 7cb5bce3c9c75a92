"""Pseudo-terminals (issue 11): commands open new ptys; the supervisor's own terminal stays sealed."""

from __future__ import annotations

import shutil
import sys

import pexpect
import pytest

from conftest import SUPERVISOR, Home

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
