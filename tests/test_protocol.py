"""The sans-IO protocol: framing, validation, the lifecycle table, and fds over a real socket pair."""

from __future__ import annotations

import os
import socket
import struct

import pytest

from nono_shell import protocol, transport
from nono_shell.protocol import (
    MAX_FRAME,
    Conversation,
    Decoder,
    Exited,
    ProtocolError,
    Refused,
    RunRequest,
    Signal,
    Started,
    encode,
)

REQUEST_ARGS = ("bash", ["bash", "-c", "echo \udcff é \x01"], "/tmp", {"A": "1", "B\udcfe": "x"})
REQUEST = RunRequest(*REQUEST_ARGS)


def _frame(body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + body


@pytest.mark.parametrize(
    "message", [REQUEST, Signal(2), Started("s-1"), Exited(3), Exited(signal=9), Refused("no")]
)
def test_every_message_round_trips_fed_byte_by_byte(message):
    decoder = Decoder()
    data = encode(message)
    for i in range(len(data) - 1):
        decoder.feed(data[i : i + 1])
        assert decoder.next_message() is None
    decoder.feed(data[-1:])
    assert decoder.next_message() == message
    assert decoder.pending == 0


def test_non_utf8_argv_and_env_survive_as_surrogates():
    decoder = Decoder()
    decoder.feed(encode(REQUEST))
    got = decoder.next_message()
    assert os.fsencode(got.argv[2]) == b"echo \xff \xc3\xa9 \x01"
    assert "B\udcfe" in got.env


def test_two_frames_in_one_chunk_yield_two_messages():
    decoder = Decoder()
    decoder.feed(encode(Signal(2)) + encode(Signal(15)))
    assert decoder.next_message() == Signal(2)
    assert decoder.next_message() == Signal(15)
    assert decoder.next_message() is None


def test_oversized_frame_is_refused_before_buffering():
    decoder = Decoder()
    with pytest.raises(ProtocolError, match="exceeds"):
        decoder.feed(struct.pack(">I", MAX_FRAME + 1))


def test_truncated_frame_is_pending_not_a_message():
    decoder = Decoder()
    decoder.feed(encode(REQUEST)[:-3])
    assert decoder.next_message() is None
    assert decoder.pending > 0


@pytest.mark.parametrize(
    "body",
    [
        b"not json",
        b"[1, 2]",
        b'{"type": "launch-missiles"}',
        b'{"type": "run", "shell": "bash"}',
        b'{"type": "run", "shell": "fish", "argv": ["x"], "cwd": "/", "env": {}}',
        b'{"type": "run", "shell": "bash", "argv": [], "cwd": "/", "env": {}}',
        b'{"type": "run", "shell": "bash", "argv": ["x"], "cwd": "relative", "env": {}}',
        b'{"type": "run", "shell": "bash", "argv": ["x"], "cwd": "/", "env": {"a": 1}}',
        b'{"type": "run", "shell": "bash", "argv": ["x"], "cwd": "/", "env": {}, "stdio": [0, 0]}',
        b'{"type": "run", "shell": "bash", "argv": ["x"], "cwd": "/", "env": {}, "stdio": [5]}',
        b'{"type": "signal", "signo": 0}',
        b'{"type": "signal", "signo": true}',
        b'{"type": "signal", "signo": NaN}',
        b'{"type": "exited", "code": 256}',
        b'{"type": "signal", "signo": 2} trailing',
        b"\xff\xfe",
        b"[" * 100000 + b"]" * 100000,
    ],
)
def test_malformed_frames_raise_protocol_error(body):
    decoder = Decoder()
    decoder.feed(_frame(body))
    with pytest.raises(ProtocolError):
        decoder.next_message()


def test_lifecycle_table_rejects_unlisted_events():
    server = Conversation("supervisor")
    with pytest.raises(ProtocolError):
        server.receive(Signal(2))  # a signal before any request
    server.receive(REQUEST)
    server.receive(Signal(2))
    with pytest.raises(ProtocolError):
        server.receive(REQUEST)  # one command per connection
    client = Conversation("client")
    with pytest.raises(ProtocolError):
        client.receive(Exited(0))  # exited before started
    client.receive(Started("x"))
    client.receive(Exited(0))
    assert client.state == "done"


def test_messages_are_frozen():
    with pytest.raises(AttributeError):
        Signal(2).signo = 9


def test_exit_status_is_128_plus_signal():
    assert Exited(signal=15).status() == 143
    assert Exited(code=7).status() == 7


def test_fds_travel_with_the_first_frame_over_a_socket_pair(tmp_path):
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    r, w = os.pipe()
    try:
        transport.send(a, REQUEST, [r, w])
        fds: list[int] = []
        assert transport.receive(b, Decoder(), fds) == REQUEST
        assert len(fds) == 2
        os.write(fds[1], b"through the passed fd")
        assert os.read(r, 100) == b"through the passed fd"
        for fd in fds:
            os.close(fd)
    finally:
        for fd in (r, w):
            os.close(fd)
        a.close()
        b.close()


def test_too_many_fds_are_closed_and_refused():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    pipes = [os.pipe() for _ in range(2)]
    try:
        socket.send_fds(a, [encode(Signal(2))], [fd for pair in pipes for fd in pair])
        with pytest.raises(ProtocolError, match="too many"):
            transport.receive(b, Decoder(), [])
    finally:
        for pair in pipes:
            for fd in pair:
                os.close(fd)
        a.close()
        b.close()


def test_peer_closing_mid_frame_is_reported_as_truncated():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    a.sendall(encode(REQUEST)[:10])
    a.close()
    with pytest.raises(transport.Closed) as info:
        transport.receive(b, Decoder())
    assert info.value.truncated
    b.close()


def test_protocol_module_imports_nothing_heavy():
    """nono-shell's start-up budget: the client must not pull in json/re/enum/dataclasses/socket.py."""
    import subprocess
    import sys

    code = "import sys; import nono_shell.client; print(sorted(sys.modules))"
    root = os.path.dirname(os.path.dirname(protocol.__file__))
    out = subprocess.run(
        [sys.executable, "-IS", "-c", f"import sys; sys.path.insert(0, {root!r}); {code}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    for heavy in ("'json'", "'re'", "'enum'", "'dataclasses'", "'socket'", "'typing'"):
        assert heavy not in out, heavy


# --- the _json fast path: a private API, used only after it passed a check at import (issue 21) ---------


def test_the_import_check_compares_with_what_the_json_package_writes():
    import json

    assert json.dumps(protocol._PROBE, separators=(",", ":"), allow_nan=False) == protocol._PROBE_TEXT
    assert json.loads(protocol._PROBE_TEXT) == protocol._PROBE
    assert protocol.FAST_JSON  # CPython's _json as it is today passes it


# Each breaks _json before the protocol is imported, as a future Python might.
BROKEN_JSON = {
    "missing": "sys.modules['_json'] = None",
    "new-signature": "_json.make_encoder = lambda *a: (_ for _ in ()).throw(TypeError('takes 10 arguments'))",
    # the item separator's position now means something else: the output changes, nothing raises
    "moved-argument": "real = _json.make_encoder; _json.make_encoder = lambda *a: real(*a[:5], ', ', *a[6:])",
    "scanner-reads-wrong": "_json.make_scanner = lambda context: (lambda text, i: ({}, len(text)))",
}
# json is imported first: it keeps the accelerator it was built with, as a future Python's would.
_CHILD = """
import json, struct, sys, _json
{breakage}
from nono_shell import protocol
request = protocol.RunRequest(*{args!r})
decoder = protocol.Decoder()
decoder.feed(protocol.encode(request))
assert decoder.next_message() == request
nan = b'{{"type":"signal","signo":NaN}}'
decoder.feed(struct.pack(">I", len(nan)) + nan)
try:
    decoder.next_message()
except protocol.ProtocolError:
    pass
else:
    raise AssertionError("NaN was accepted")
print(protocol.FAST_JSON, protocol.encode(request).hex())
"""


@pytest.mark.parametrize("breakage", list(BROKEN_JSON))
def test_a_changed_json_accelerator_falls_back_to_the_json_package(breakage):
    import subprocess
    import sys

    code = _CHILD.format(breakage=BROKEN_JSON[breakage], args=REQUEST_ARGS)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    fast, frame = result.stdout.split()
    assert fast == "False"
    assert bytes.fromhex(frame) == encode(REQUEST)  # the same bytes the fast path writes here
