"""Every ``to allow:`` hint is a flag that, passed, makes the same operation succeed (CONTRACT; issue 11).

Each case runs a command that is denied, takes the flag from its denial line, runs it again with that
flag, and checks that it now succeeds: a hint that does not work is a lie told to the agent.
"""

from __future__ import annotations

import re
import shutil
import socket
import sys
import threading

import pytest

from conftest import SUPERVISOR, Home

HINT = re.compile(
    r"^nono: denied (\S+) (.+?) \[(.+?)\](?: \(.*?\))?(?:; to allow: (\S+) (.+)|; never grantable)?$"
)


def _denials(stderr: str) -> list[re.Match]:
    return [m for line in stderr.splitlines() if (m := HINT.match(line))]


def _exec(home: Home, script: str, *flags: str, user: bool = False):
    return home.run([SUPERVISOR, "exec", *flags, "--", "sh", "-c", script], user=user)


def _outside(home: Home) -> str:
    outside = home.root / "outside"
    outside.mkdir(exist_ok=True)
    (outside / "data").write_text("outside data\n")
    shutil.copy("/bin/true", outside / "tool")
    return str(outside)


CASES = {
    "read a file": ("cat {o}/data", "--read-file"),
    "list a directory": ("ls {o}", "--read"),
    "append to a file": ("echo more >> {o}/data", "--write-file"),
    "create a file": ("touch {o}/new", "--write-file"),
    "delete a file": ("rm {o}/data", "--write-file"),
    "make a directory": ("mkdir {o}/dir", "--write"),
    "change a mode": ("chmod 600 {o}/data", "--write-file"),
    "run a program": ("{o}/tool", "--read-file"),
    "create in home": ("touch ~/new-in-home", "--write-file"),
    "create a file a deny group names": ("touch ~/.bashrc", "--write-file"),
    "read the key": ("cat ~/.ssh/id_rsa", "--read-file"),
}


@pytest.mark.parametrize("case", list(CASES))
def test_the_hint_makes_the_same_operation_succeed(home, case):
    script, flag = CASES[case]
    script = script.format(o=_outside(home))
    denied = _exec(home, script)
    assert denied.returncode != 0, denied.stderr
    found = _denials(denied.stderr)
    assert found, denied.stderr
    assert found[0].group(4) == flag, denied.stderr
    assert found[0].group(5) != "/" and not found[0].group(5).startswith("/proc")
    hints = [arg for m in found for arg in (m.group(4), m.group(5))]
    granted = _exec(home, script, *hints)
    assert granted.returncode == 0, (hints, granted.stderr)
    assert "nono: denied" not in granted.stderr, granted.stderr


def test_a_unix_socket_hint_lets_the_connect_through(home):
    path = home.root / "outside.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(4)

    def serve() -> None:
        for _ in range(2):
            try:
                server.accept()[0].close()
            except OSError:
                return  # closed by the test

    accepting = threading.Thread(target=serve, daemon=True)
    accepting.start()
    client = f"{sys.executable} -c \"import socket; socket.socket(socket.AF_UNIX).connect('{path}')\""
    try:
        denied = _exec(home, client)
        found = _denials(denied.stderr)
        assert denied.returncode != 0 and found and found[0].group(4) == "--allow-file", denied.stderr
        granted = _exec(home, client, found[0].group(4), found[0].group(5))
        assert granted.returncode == 0, granted.stderr
    finally:
        server.shutdown(socket.SHUT_RDWR)
        server.close()
        accepting.join(5)


def test_never_grantable_paths_name_no_flag(home):
    import nono_supervisor

    package = nono_supervisor.__path__[0]
    denied = _exec(home, f"mkdir {package}/nono-test-dir")
    assert denied.returncode != 0
    lines = [line for line in denied.stderr.splitlines() if line.startswith("nono: denied")]
    assert lines and all(line.endswith("[never-grantable]; never grantable") for line in lines), lines
    # The twin: bare, the directory could be made (and is removed again).
    bare = home.run(["sh", "-c", f"mkdir {package}/nono-test-dir && rmdir {package}/nono-test-dir"])
    assert bare.returncode == 0, bare.stderr
