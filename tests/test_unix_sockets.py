"""Unix sockets reach unsandboxed processes; the notify layer decides them by path (DESIGN.md)."""

from __future__ import annotations

import os
import socket
import struct
import sys
import threading

import pytest

from conftest import SUPERVISOR, Home

GREETING = "agent-greeting-secret-5e1f"

CONNECT = r"""
import socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
try:
    s.connect(sys.argv[1])
    print("connected", s.recv(100).decode())
except OSError as e:
    print("refused", e.errno)
"""


class _Listener:
    """An unsandboxed server on a pathname socket (an ssh-agent stand-in) that greets and counts."""

    def __init__(self, path) -> None:
        self.path = str(path)
        self.accepted = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(self.path)
        os.chmod(self.path, 0o777)
        self.sock.listen(64)
        self.sock.settimeout(0.2)
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                continue
            self.accepted += 1
            try:
                conn.sendall(GREETING.encode())
            except OSError:
                pass
            conn.close()

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.sock.close()


@pytest.fixture
def agent_socket(home: Home):
    listener = _Listener(home.root / "agent.sock")
    yield listener
    listener.close()


def _connect(home: Home, path: str, *flags: str, sandboxed: bool = True):
    argv = [sys.executable, "-c", CONNECT, path]
    return home.run([SUPERVISOR, "exec", *flags, "--", *argv] if sandboxed else argv)


def test_connect_to_a_socket_outside_the_policy_is_denied(home, agent_socket):
    result = _connect(home, agent_socket.path)
    assert result.stdout.split() == ["refused", "13"]
    assert f"nono: denied connect {agent_socket.path} [not granted]" in result.stderr
    assert agent_socket.accepted == 0


def test_twin_connect_without_the_sandbox_reaches_the_agent(home, agent_socket):
    result = _connect(home, agent_socket.path, sandboxed=False)
    assert result.stdout.split() == ["connected", GREETING]


def test_connect_to_a_granted_socket_is_made_on_the_commands_behalf(home):
    listener = _Listener(home.work / "app.sock")
    try:
        result = _connect(home, "app.sock")  # relative to the command's cwd
        assert result.stdout.split() == ["connected", GREETING]
        assert listener.accepted == 1
    finally:
        listener.close()


def test_connect_into_a_denied_tree_is_denied_even_inside_an_allowed_home(home):
    listener = _Listener(home.home / ".ssh" / "agent.sock")
    try:
        result = _connect(home, listener.path, "--allow", "~")
        assert result.stdout.split() == ["refused", "13"]
        assert "[group:deny_credentials]" in result.stderr
        assert listener.accepted == 0
    finally:
        listener.close()


def test_abstract_sockets_are_refused(home):
    code = (
        "import socket\ns = socket.socket(socket.AF_UNIX)\n"
        "try:\n    s.connect('\\0nono-test-abstract'); print('connected')\n"
        "except OSError as e:\n    print('refused', e.errno)"
    )
    server = socket.socket(socket.AF_UNIX)
    server.bind("\0nono-test-abstract")
    server.listen()
    try:
        result = home.run([SUPERVISOR, "exec", "--", sys.executable, "-c", code])
        assert result.stdout.split()[0] == "refused"
        twin = home.run([sys.executable, "-c", code])
        assert twin.stdout.strip() == "connected"
    finally:
        server.close()


SWAP = r"""
import ctypes, socket, struct, sys, threading
allowed, denied = sys.argv[1].encode(), sys.argv[2].encode()
libc = ctypes.CDLL(None, use_errno=True)
def addr(p):
    return struct.pack("H", socket.AF_UNIX) + p + b"\0" * (108 - len(p))
a, d = addr(allowed), addr(denied)
buf = ctypes.create_string_buffer(a, len(a))
stop = False
def flip():
    i = 0
    while not stop:
        ctypes.memmove(buf, d if i % 2 else a, len(a)); i += 1
t = threading.Thread(target=flip); t.start()
ok = 0
for _ in range(1500):
    s = socket.socket(socket.AF_UNIX)
    if libc.connect(s.fileno(), buf, len(a)) == 0:
        ok += 1
    s.close()
stop = True; t.join()
print("connected", ok)
"""


def test_sockaddr_swapped_after_the_check_never_reaches_the_denied_socket(home, agent_socket):
    allowed = _Listener(home.work / "ok.sock")
    try:
        argv = [sys.executable, "-c", SWAP, allowed.path, agent_socket.path]
        result = home.run([SUPERVISOR, "exec", "--", *argv])
        assert int(result.stdout.split()[1]) > 0  # the allowed one was reached
        assert agent_socket.accepted == 0
        home.run(argv)  # the twin, unsandboxed: the swap reaches the agent
        assert agent_socket.accepted > 0
    finally:
        allowed.close()


def test_sendto_a_datagram_socket_outside_the_policy_is_denied(home):
    path = str(home.root / "log.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(path)
    os.chmod(path, 0o777)
    server.settimeout(2)
    code = (
        "import socket, sys\ns = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)\n"
        "try:\n    s.sendto(b'hello', sys.argv[1]); print('sent')\n"
        "except OSError as e:\n    print('refused', e.errno)"
    )
    try:
        result = home.run([SUPERVISOR, "exec", "--", sys.executable, "-c", code, path])
        assert result.stdout.split() == ["refused", "13"]
        twin = home.run([sys.executable, "-c", code, path])
        assert twin.stdout.strip() == "sent" and server.recv(10) == b"hello"
    finally:
        server.close()


SENDMSG = r"""
import array, os, socket, sys
s = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
r, w = os.pipe()
os.write(w, b"through-the-passed-fd")
try:
    rights = [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [r]))]
    n = s.sendmsg([b"with-fd"], rights, 0, sys.argv[1])
    print("sent", n)
except OSError as e:
    print("refused", e.errno)
"""


def _dgram_server(path) -> socket.socket:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(str(path))
    os.chmod(str(path), 0o777)
    server.settimeout(5)
    return server


def test_sendmsg_to_a_datagram_socket_outside_the_policy_is_denied_and_its_twin_sends(home):
    path = home.root / "dgram.sock"
    server = _dgram_server(path)
    try:
        result = home.run([SUPERVISOR, "exec", "--", sys.executable, "-c", SENDMSG, str(path)])
        assert result.stdout.split() == ["refused", "13"]
        twin = home.run([sys.executable, "-c", SENDMSG, str(path)])
        assert twin.stdout.split() == ["sent", "7"]
        assert server.recv(100) == b"with-fd"
    finally:
        server.close()


def test_sendmsg_to_a_granted_datagram_socket_is_sent_by_the_supervisor_with_its_fds(home):
    path = home.work / "dgram.sock"
    server = _dgram_server(path)
    try:
        result = home.run([SUPERVISOR, "exec", "--", sys.executable, "-c", SENDMSG, "dgram.sock"])
        assert result.stdout.split() == ["sent", "7"], result.stderr
        data, ancillary, _flags, _addr = server.recvmsg(100, socket.CMSG_LEN(4))
        assert data == b"with-fd"
        (passed,) = struct.unpack("i", ancillary[0][2][:4])
        assert os.read(passed, 100) == b"through-the-passed-fd"
        os.close(passed)
    finally:
        server.close()


BINDS = r"""
import os, socket, sys
for i in range(int(sys.argv[1])):
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(os.path.join(os.environ["TMPDIR"], f"b{i}"))
    with socket.socket(socket.AF_INET) as s:
        s.bind(("127.0.0.1", 0))
print("bound")
"""


def _open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def test_a_command_that_binds_in_a_loop_costs_the_supervisor_no_descriptor(supervisor):
    """Each bind is trapped and the supervisor takes its own copy of the socket to look at it: kept after
    the decision (Landlock's own, or CONTINUE), 300 binds were 600 descriptors of the supervisor's for
    ever, until it ran out and refused every command of every client."""
    supervisor.shell("-c", "true")
    before = _open_fds(supervisor.process.pid)
    result = supervisor.shell("-c", f"{sys.executable} -c '{BINDS}' 300")
    assert result.returncode == 0 and result.stdout == "bound\n", result.stderr
    assert _open_fds(supervisor.process.pid) <= before + 2  # the next command's loop may be starting
    assert supervisor.shell("-c", "echo still-serving").stdout == "still-serving\n"


STALE = r"""
import errno, os, signal, socket, time
path = os.path.join(os.environ["TMPDIR"], "server.sock")
child = os.fork()
if child == 0:  # a server (tmux's, say) that dies without unlinking its socket
    server = socket.socket(socket.AF_UNIX)
    server.bind(path)
    server.listen(8)
    time.sleep(60)
    os._exit(0)
while not os.path.exists(path):
    time.sleep(0.01)
time.sleep(0.2)
os.kill(child, signal.SIGKILL)
os.waitpid(child, 0)
client = socket.socket(socket.AF_UNIX)
client.settimeout(5)
try:
    client.connect(path)
    print("connected")
except OSError as e:
    print(errno.errorcode.get(e.errno, e.errno))
"""


def test_the_socket_of_a_dead_server_refuses_connects_as_it_does_bare(home):
    """A connect to a server that died answers ECONNREFUSED: tmux then says "no server running" and starts
    one. With the supervisor's copy of the server's socket kept, the socket went on listening and the
    connect succeeded, to wait for an accept that never came (tmux hung)."""
    bare = home.run([sys.executable, "-c", STALE], env={**home.env, "TMPDIR": str(home.work)})
    assert bare.stdout == "ECONNREFUSED\n", bare.stderr  # the twin
    result = home.run([SUPERVISOR, "exec", "--prompt", "never", "--", sys.executable, "-c", STALE])
    assert result.stdout == "ECONNREFUSED\n", result.stderr
    assert "nono:" not in result.stderr
