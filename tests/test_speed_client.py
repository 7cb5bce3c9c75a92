"""nono-shell's C client (nono_shell/_client.c, the shims' interpreter) speaks the Python client's protocol
byte for byte and keeps its contract: one line and exit 125 on any failure, the command's status otherwise,
signals forwarded. Each case runs both clients against the same fake supervisor. No timing here."""

from __future__ import annotations

import fcntl
import os
import signal
import socket
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

import pytest

from nono_shell import protocol, transport
from nono_supervisor import shims

pytestmark = pytest.mark.skipif(shims.client_path() is None, reason="the C client is not built")


@pytest.fixture
def both(tmp_path, monkeypatch):
    """{"c": shim dir, "python": shim dir}: the same shims, one per client."""
    dirs = {}
    for kind in ("c", "python"):
        if kind == "python":
            monkeypatch.setenv("NONO_PYTHON_SHIMS", "1")
        else:
            monkeypatch.delenv("NONO_PYTHON_SHIMS", raising=False)
        dirs[kind] = tmp_path / kind
        shims.write_shims(dirs[kind])
    monkeypatch.delenv("NONO_PYTHON_SHIMS", raising=False)
    assert (dirs["c"] / "bash").read_text().startswith(f"#!{shims.client_path()}\n")
    assert "-IBS" in (dirs["python"] / "bash").read_text().splitlines()[0]
    return dirs


class FakeSupervisor:
    """Accepts one connection at a time; ``script(conn, request_bytes, fds)`` answers it."""

    def __init__(self, path: Path, script) -> None:
        self.path = path
        self.script = script
        self.requests: list[bytes] = []
        self.listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(str(path))
        self.listener.listen(8)
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                fds: list[int] = []
                header = b""
                while len(header) < 4:
                    chunk = transport.receive_chunk(conn, fds, 4 - len(header))
                    if not chunk:
                        break
                    header += chunk
                (length,) = struct.unpack(">I", header)
                body = b""
                while len(body) < length:
                    body += transport.receive_chunk(conn, fds, length - len(body))
                self.requests.append(body)
                try:
                    self.script(conn, body, fds)
                finally:
                    for fd in fds:
                        os.close(fd)

    def close(self) -> None:
        self.listener.close()


def _frame(obj: bytes) -> bytes:
    return struct.pack(">I", len(obj)) + obj


def _ok(code: int = 0, sig: int = 0):
    def script(conn, _body, _fds):
        conn.sendall(protocol.encode(protocol.Started("x-1")))
        conn.sendall(protocol.encode(protocol.Exited(code=code, signal=sig)))

    return script


def _run(shim: Path, args: list[str], env: dict[str, str], **kw) -> subprocess.CompletedProcess:
    return subprocess.run([str(shim), *args], env=env, capture_output=True, timeout=30, **kw)


@pytest.fixture
def env(tmp_path):
    return {
        "PATH": "/usr/bin:/bin",
        "LANG": "C.UTF-8",
        "HOME": str(tmp_path),
        "NONO_SOCKET": str(tmp_path / "s"),
    }


def test_the_request_is_byte_for_byte_the_python_clients(both, env, tmp_path):
    fake = FakeSupervisor(tmp_path / "s", _ok(7))
    weird = {
        "PLAIN": "value",
        "UNICODE": "héllo ✓ 😀",
        "QUOTES": 'a"b\\c\n\t\r\x01\x1f\x7f',
        "BYTES": os.fsdecode(b"\xff\xfe\xed\xa0\x80\xc3(\xf0\x9f\x98"),
        "EMPTY": "",
        "EQ": "a=b=c",
    }
    args = ["-c", 'echo "$@"', "x", os.fsdecode(b"arg\xff\xc0\x80"), "ünï", "", '\\"', "\x1b[31m"]
    try:
        for kind in ("c", "python"):
            result = _run(both[kind] / "bash", args, {**env, **weird}, cwd=tmp_path)
            assert result.returncode == 7, (kind, result.stderr)
            assert result.stderr == b""
        c_request, py_request = fake.requests
        assert c_request == py_request
        decoded = protocol._decode_body(c_request)
        assert decoded.argv == ["bash", *args] and decoded.env["BYTES"] == weird["BYTES"]
        assert decoded.cwd == str(tmp_path) and decoded.stdio == [0, 1, 2]
    finally:
        fake.close()


ENV_TRICKS = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
def arr(items):
    a = (ctypes.c_char_p * (len(items) + 1))(*items, None)
    return a
argv = [sys.argv[1].encode(), b"-c", b"true"]
envp = [b"NONO_SOCKET=" + sys.argv[2].encode(), b"LANG=C.UTF-8", b"DUP=first", b"NOEQUALS", b"DUP=second",
        b"=emptyname", b"Z=\xff"]
pid = os.fork()
if pid == 0:
    libc.execve(argv[0], arr(argv), arr(envp))
    os._exit(99)
print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


def test_duplicate_and_malformed_environment_entries_as_os_environ(both, env, tmp_path):
    fake = FakeSupervisor(tmp_path / "s", _ok())
    try:
        for kind in ("c", "python"):
            argv = [sys.executable, "-c", ENV_TRICKS, str(both[kind] / "sh"), env["NONO_SOCKET"]]
            out = subprocess.run(argv, capture_output=True, text=True, timeout=30)
            assert out.stdout.strip() == "0", (kind, out.stderr)
        c_request, py_request = fake.requests
        assert c_request == py_request
        assert protocol._decode_body(c_request).env["DUP"] == "first"
        assert protocol._decode_body(c_request).shell == "sh"
    finally:
        fake.close()


def test_closed_stdio_and_a_terminal(both, env, tmp_path):
    import pty

    fake = FakeSupervisor(tmp_path / "s", _ok())
    try:
        for kind in ("c", "python"):
            primary, secondary = pty.openpty()
            try:
                import fcntl
                import termios

                fcntl.ioctl(secondary, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 121, 0, 0))
                result = subprocess.run(
                    [str(both[kind] / "bash"), "-c", "true"],
                    env=env,
                    stdin=secondary,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.DEVNULL,
                    timeout=30,
                )
                assert result.returncode == 0
            finally:
                os.close(primary)
                os.close(secondary)
            assert (
                subprocess.run(  # stdout closed: not sent
                    [str(both[kind] / "bash"), "-c", "true"],
                    env=env,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                    stdin=subprocess.DEVNULL,
                    timeout=30,
                    preexec_fn=lambda: os.close(1),
                ).returncode
                == 0
            )
        c_tty, c_closed, py_tty, py_closed = fake.requests
        assert c_tty == py_tty and c_closed == py_closed
        assert protocol._decode_body(c_tty).tty == {"isatty": [0], "winsize": [121, 33]}
        assert protocol._decode_body(c_closed).stdio == [0, 2]
    finally:
        fake.close()


def _reply(data: bytes, then_close: bool = True):
    def script(conn, _body, _fds):
        conn.sendall(data)
        if not then_close:
            time.sleep(0.5)

    return script


STARTED = protocol.encode(protocol.Started("x-1"))
REPLIES = {
    "refused": (protocol.encode(protocol.Refused("no real zsh found on this machine")), 125),
    "started then refused": (STARTED + protocol.encode(protocol.Refused("later")), 125),
    "exited by signal": (STARTED + protocol.encode(protocol.Exited(signal=9)), 128 + 9),
    "exited without fields": (STARTED + _frame(b'{"type":"exited"}'), 0),
    "exited code 255": (STARTED + _frame(b'{"type":"exited","code":255,"signal":0}'), 255),
    "spaces inside": (STARTED + _frame(b'{ "type" : "exited" , "code" : 3 }'), 3),
    "escaped key": (STARTED + _frame(b'{"typ\\u0065":"exited","code":4}'), 4),
    "duplicate key": (STARTED + _frame(b'{"type":"exited","code":9,"code":5}'), 5),
    "exited first": (protocol.encode(protocol.Exited(code=0)), 125),
    "started twice": (STARTED + STARTED, 125),
    "not json": (_frame(b"hello"), 125),
    "leading space": (_frame(b' {"type":"refused","reason":"x"}'), 125),
    "trailing data": (_frame(b'{"type":"refused","reason":"x"}x'), 125),
    "unknown type": (_frame(b'{"type":"bogus"}'), 125),
    "no type": (_frame(b"{}"), 125),
    "extra field": (STARTED + _frame(b'{"type":"exited","code":0,"extra":1}'), 125),
    "code too big": (STARTED + _frame(b'{"type":"exited","code":256}'), 125),
    "code negative": (STARTED + _frame(b'{"type":"exited","code":-1}'), 125),
    "code a float": (STARTED + _frame(b'{"type":"exited","code":1.0}'), 125),
    "code a bool": (STARTED + _frame(b'{"type":"exited","code":true}'), 125),
    "signal too big": (STARTED + _frame(b'{"type":"exited","signal":65}'), 125),
    "command not a string": (_frame(b'{"type":"started","command":5}'), 125),
    "reason missing": (_frame(b'{"type":"refused"}'), 125),
    "NaN": (STARTED + _frame(b'{"type":"exited","code":NaN}'), 125),
    "raw control char": (_frame(b'{"type":"refused","reason":"a\nb"}'), 125),
    "bad utf-8": (_frame(b'{"type":"refused","reason":"\xff"}'), 125),
    "oversized": (b"\xff\xff\xff\xff", 125),
    "closed at once": (b"", 125),
    "closed mid-frame": (b"\x00\x00\x00\x10{", 125),
    "closed after started": (STARTED, 125),
    "signal message": (_frame(b'{"type":"signal","signo":2}'), 125),
    "run message": (_frame(b'{"type":"run"}'), 125),
}


@pytest.mark.parametrize("name", list(REPLIES))
def test_replies_are_checked_as_the_python_client_checks_them(both, env, tmp_path, name):
    data, status = REPLIES[name]
    fake = FakeSupervisor(tmp_path / "s", _reply(data))
    try:
        results = {kind: _run(both[kind] / "bash", ["-c", "true"], env) for kind in ("c", "python")}
    finally:
        fake.close()
    for kind, result in results.items():
        assert result.returncode == status, (kind, result.stderr)
        if status == 125:
            assert result.stderr.startswith(b"nono-shell: "), (kind, result)
            assert result.stderr.count(b"\n") == 1, (kind, result)
        else:
            assert result.stderr == b""
    if name.startswith(("refused", "started then refused")):
        assert results["c"].stderr == results["python"].stderr


def test_a_refusal_is_shown_as_the_python_client_shows_it(both, env, tmp_path):
    reason = "nope: ünï \\ 😀 lone \udcff end"
    fake = FakeSupervisor(tmp_path / "s", _reply(protocol.encode(protocol.Refused(reason))))
    try:
        results = {kind: _run(both[kind] / "bash", ["-c", "true"], env) for kind in ("c", "python")}
    finally:
        fake.close()
    assert results["c"].stderr == results["python"].stderr
    assert results["c"].stderr == f"nono-shell: {reason}\n".encode(errors="replace")


def _read_by_the_client(conn) -> bool:
    """Whether the client has taken everything sent to it (SIOCOUTQ: bytes it has not read yet)."""
    return struct.unpack("i", fcntl.ioctl(conn, termios.TIOCOUTQ, b"\0" * 4))[0] == 0


def _signal_once_it_asked(client_path, command: str, env, fake, signo: int, settle: float = 0.0) -> None:
    """Start the client ``bash -c command``, send it ``signo`` once the fake has its request (and
    ``settle`` seconds more): it exits 128+N, saying nothing."""
    asked = len(fake.requests)
    client = subprocess.Popen([str(client_path), "-c", command], env=env, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while len(fake.requests) <= asked and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(settle)
    client.send_signal(signo)
    _out, err = client.communicate(timeout=20)
    assert client.returncode == 128 + signo and err == b"", (client_path, err)


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT, signal.SIGUSR1, signal.SIGWINCH])
def test_signals_are_forwarded_once_the_command_started(both, env, tmp_path, signo):
    got: list[int] = []

    def script(conn, _body, _fds):
        conn.sendall(STARTED)
        while not _read_by_the_client(conn):
            time.sleep(0.01)
        decoder = protocol.Decoder()
        message = transport.receive(conn, decoder)
        got.append(message.signo)
        conn.sendall(protocol.encode(protocol.Exited(signal=message.signo)))

    fake = FakeSupervisor(tmp_path / "s", script)
    try:
        for kind in ("c", "python"):
            # settle: the Started frame is read (the fake waits for that) and acted on
            _signal_once_it_asked(both[kind] / "bash", "sleep 100", env, fake, signo, settle=0.3)
    finally:
        fake.close()
    assert got == [signo, signo]


@pytest.mark.parametrize("signo", [signal.SIGTERM, signal.SIGINT, signal.SIGHUP])
def test_a_signal_before_the_command_started_ends_the_client(both, env, tmp_path, signo):
    """The request is out and no Started came (a frozen supervisor): the signal ends the client with
    128+N and nothing is forwarded (issue 23: the SIGTERM went into the socket and the client waited on)."""
    after_request: list[bytes] = []

    def script(conn, _body, _fds):
        data = b""
        while chunk := conn.recv(4096):  # until the client is gone
            data += chunk
        after_request.append(data)

    fake = FakeSupervisor(tmp_path / "s", script)
    try:
        for kind in ("c", "python"):
            _signal_once_it_asked(both[kind] / "bash", "true", env, fake, signo)
    finally:
        fake.close()
    assert after_request == [b"", b""]


@pytest.mark.parametrize("case", ["no variable", "nothing listening", "missing", "too long"])
def test_fail_closed_as_the_python_client(both, env, tmp_path, case):
    marker = tmp_path / "ran"
    if case == "no variable":
        env = {k: v for k, v in env.items() if k != "NONO_SOCKET"}
    elif case == "nothing listening":
        s = socket.socket(socket.AF_UNIX)
        s.bind(env["NONO_SOCKET"])
        s.close()
    elif case == "too long":
        env = {**env, "NONO_SOCKET": "/tmp/" + "x" * 200}
    for kind in ("c", "python"):
        result = _run(both[kind] / "bash", ["-c", f"touch {marker}"], env)
        assert result.returncode == 125, kind
        assert result.stderr.startswith(b"nono-shell: ") and result.stderr.count(b"\n") == 1
        assert not marker.exists()
        if case != "too long":
            assert result.stderr == _run(both["python"] / "bash", ["-c", "true"], env).stderr


def test_a_shim_of_the_c_client_is_known_as_a_shim(both):
    from nono_supervisor.session import is_nono_shim

    assert is_nono_shim(str(both["c"] / "bash"))
    assert not is_nono_shim(shims.client_path())  # the interpreter itself is no shell either way
