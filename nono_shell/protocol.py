"""The wire protocol between nono-shell and the supervisor, sans-IO.

A frame is a 4-byte big-endian length and a UTF-8 JSON object with a ``type``. Strings that came from
the OS (argv, environment, paths) travel as ``os.fsdecode`` text (surrogateescape), so arbitrary bytes
survive. File descriptors travel beside the first frame (SCM_RIGHTS, see ``transport``); this module
owns no socket. Both sides import it, so it uses only the standard library and stays cheap to import.
"""

from __future__ import annotations

import struct

__all__ = [
    "MAX_FRAME",
    "ProtocolError",
    "RunRequest",
    "Signal",
    "Started",
    "Exited",
    "Refused",
    "Decoder",
    "Conversation",
    "encode",
]

# ARG_MAX on Linux is a quarter of the stack limit (2 MiB by default) for argv and environment together;
# JSON escaping can at most triple non-ASCII bytes. Anything larger is not a real command: refuse it
# before buffering it (test_oversized_frame_is_refused_before_buffering).
MAX_FRAME = 8 * 1024 * 1024
MAX_FDS = 3  # stdin, stdout, stderr; a request carrying more is malformed
_HEADER = struct.Struct(">I")


class ProtocolError(Exception):
    """The peer sent something this protocol does not allow."""


def _check(condition: bool, what: str) -> None:
    if not condition:
        raise ProtocolError(what)


def _str_list(value: object) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


class _Message:
    """A frozen, validated message. (Not a dataclass: importing dataclasses costs 7 ms of start-up.)"""

    __slots__ = ()
    _fields: tuple[str, ...] = ()

    def __setattr__(self, name: str, value: object) -> None:
        raise AttributeError(f"{type(self).__name__} is frozen")

    def _set(self, **values: object) -> None:
        for name, value in values.items():
            object.__setattr__(self, name, value)

    def as_dict(self) -> dict[str, object]:
        return {name: getattr(self, name) for name in self._fields}

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.as_dict() == self.as_dict()

    def __hash__(self) -> int:
        return hash((type(self), repr(self)))

    def __repr__(self) -> str:
        inner = ", ".join(f"{name}={getattr(self, name)!r}" for name in self._fields)
        return f"{type(self).__name__}({inner})"


class RunRequest(_Message):
    """Run ``argv`` with the real ``shell`` in ``cwd``; ``stdio`` names the std fds sent beside it."""

    __slots__ = _fields = ("shell", "argv", "cwd", "env", "stdio", "tty")

    def __init__(
        self,
        shell: str,
        argv: list[str],
        cwd: str,
        env: dict[str, str],
        stdio: list[int] | None = None,
        tty: dict[str, object] | None = None,
    ) -> None:
        stdio = [0, 1, 2] if stdio is None else stdio
        tty = {} if tty is None else tty
        _check(shell in ("bash", "sh", "dash", "zsh"), "run: unknown shell")
        _check(_str_list(argv) and len(argv) >= 1, "run: argv must be a non-empty list of strings")
        _check(isinstance(cwd, str) and cwd.startswith("/"), "run: cwd must be an absolute path")
        _check(
            isinstance(env, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in env.items()),
            "run: env must map strings to strings",
        )
        _check(
            isinstance(stdio, list)
            and len(set(stdio)) == len(stdio) <= MAX_FDS
            and all(type(v) is int and v in (0, 1, 2) for v in stdio),
            "run: stdio must list distinct fds among 0, 1, 2",
        )
        _check(isinstance(tty, dict), "run: tty must be an object")
        # Nothing the kernel takes as a C string holds a NUL (issue 23: it reached the spawn and answered
        # "internal supervisor error", leaking a pipe per request).
        _check(
            not any("\0" in text for text in (cwd, *argv, *env, *env.values())),
            "run: argv, cwd and env may not hold a NUL byte",
        )
        self._set(shell=shell, argv=argv, cwd=cwd, env=env, stdio=stdio, tty=tty)


class Signal(_Message):
    """Deliver ``signo`` to the command's process group."""

    __slots__ = _fields = ("signo",)

    def __init__(self, signo: int) -> None:
        _check(type(signo) is int and 1 <= signo <= 64, "signal: signo out of range")
        self._set(signo=signo)


class Started(_Message):
    __slots__ = _fields = ("command",)

    def __init__(self, command: str) -> None:
        _check(isinstance(command, str), "started: command must be a string")
        self._set(command=command)


class Exited(_Message):
    """The command ended: ``code`` if it exited, ``signal`` if a signal killed it."""

    __slots__ = _fields = ("code", "signal")
    code: int
    signal: int

    def __init__(self, code: int = 0, signal: int = 0) -> None:
        _check(type(code) is int and 0 <= code <= 255, "exited: code out of range")
        _check(type(signal) is int and 0 <= signal <= 64, "exited: signal out of range")
        self._set(code=code, signal=signal)

    def status(self) -> int:
        """The shell-visible status: the exit code, or 128+N for a death by signal N."""
        return 128 + self.signal if self.signal else self.code


class Refused(_Message):
    """The supervisor would not or could not run the command; nothing ran."""

    __slots__ = _fields = ("reason",)

    def __init__(self, reason: str) -> None:
        _check(isinstance(reason, str), "refused: reason must be a string")
        self._set(reason=reason)


_TYPES: dict[str, type] = {
    "run": RunRequest,
    "signal": Signal,
    "started": Started,
    "exited": Exited,
    "refused": Refused,
}
_NAMES = {cls: name for name, cls in _TYPES.items()}
Message = RunRequest | Signal | Started | Exited | Refused


class _ScanContext:
    """What the C scanner reads from a JSONDecoder: strict parsing, no hooks (plain dicts and lists)."""

    strict = True
    object_hook = object_pairs_hook = None
    parse_float = float
    parse_int = int

    @staticmethod
    def parse_constant(name: str) -> object:
        raise ProtocolError(f"malformed frame: {name} is not JSON")


# A value of every JSON shape the protocol sends, and its text as json.dumps(PROBE, separators=(",", ":"),
# allow_nan=False) writes it (tests/test_protocol.py checks the pair): an undecodable byte as a surrogate,
# non-ASCII and control characters escaped.
_PROBE = {
    "type": "run",
    "argv": ["a\udcff", "\u00e9\n\x01", ""],
    "n": [0, -7],
    "t": True,
    "f": False,
    "z": None,
}
_PROBE_TEXT = (
    '{"type":"run","argv":["a\\udcff","\\u00e9\\n\\u0001",""],"n":[0,-7],"t":true,"f":false,"z":null}'
)


def _fast_json():
    """``(dumps, loads)`` from ``_json``, the C accelerator behind json.dumps/json.loads, or None.

    Importing the json package would also import re, enum and functools: 10 ms of the 25 ms start-up budget
    of every command (bench/bench_startup.py). But ``make_encoder``'s positional arguments are a private
    API: should a Python change them or the scanner, every command would exit 125. So the pair is used only
    if it writes and reads ``_PROBE`` exactly as the json package does; any failure means the json package.
    """
    try:
        from _json import encode_basestring_ascii, make_encoder, make_scanner

        # Exactly json.dumps(obj, separators=(",", ":"), allow_nan=False) and json.loads(text, strict=True).
        # (None for markers and default: no circular check, no default hook; typeshed types json's own call)
        encoder = make_encoder(None, None, encode_basestring_ascii, None, ":", ",", False, False, False)  # type: ignore[arg-type]
        # One scanner: a call holds the GIL from start to end and clears its key memo when done, so threads
        # can share it (a scanner per call was measured to leak ~60 bytes each in the supervisor).
        scan = make_scanner(_ScanContext)  # type: ignore[arg-type]  # any object with the scanner attributes

        def dumps(obj: object) -> str:
            return "".join(encoder(obj, 0))

        def loads(text: str) -> object:
            try:
                obj, end = scan(text, 0)
            except StopIteration:
                raise ValueError("not a JSON value") from None
            if end != len(text):
                raise ValueError("extra data after the JSON value")
            return obj

        if dumps(_PROBE) == _PROBE_TEXT and loads(_PROBE_TEXT) == _PROBE:
            return dumps, loads
    except Exception:  # noqa: BLE001 - whatever a changed private API does, the json package is correct
        pass
    return None


def _slow_json():
    import json

    def dumps(obj: object) -> str:
        return json.dumps(obj, separators=(",", ":"), allow_nan=False)

    def loads(text: str) -> object:
        return json.loads(text, parse_constant=_ScanContext.parse_constant)  # NaN is not JSON, as above

    return dumps, loads


_fast = _fast_json()
FAST_JSON = _fast is not None  # whether the C accelerator passed (tests/test_protocol.py)
_dumps, _loads = _fast or _slow_json()


def encode(message: Message) -> bytes:
    body = _dumps({"type": _NAMES[type(message)], **message.as_dict()}).encode()
    if len(body) > MAX_FRAME:
        raise ProtocolError(f"message of {len(body)} bytes exceeds the {MAX_FRAME}-byte frame limit")
    return _HEADER.pack(len(body)) + body


def _decode_body(body: bytes) -> Message:
    try:
        obj = _loads(body.decode())
    except (UnicodeDecodeError, ValueError, RecursionError) as e:
        raise ProtocolError(f"malformed frame: {e}") from None
    _check(isinstance(obj, dict), "malformed frame: not an object")
    cls = _TYPES.get(obj.pop("type", None))
    if cls is None:
        raise ProtocolError("malformed frame: unknown type")
    try:
        return cls(**obj)
    except TypeError as e:
        raise ProtocolError(f"malformed frame: {e}") from None


class Decoder:
    """Buffers bytes fed from a socket and yields whole messages.

    ``max_frame`` is the largest frame accepted (checked as soon as a header is in, before its body is
    buffered); a reader may lower it, e.g. the supervisor once the first request is in.
    """

    def __init__(self, max_frame: int = MAX_FRAME) -> None:
        self._buffer = bytearray()
        self.max_frame = max_frame

    def feed(self, data: bytes) -> None:
        self._buffer += data
        if len(self._buffer) >= _HEADER.size:
            (length,) = _HEADER.unpack_from(self._buffer)
            if length > self.max_frame:
                raise ProtocolError(f"frame of {length} bytes exceeds the {self.max_frame}-byte limit")

    def needed(self) -> int:
        """Bytes still missing before the next whole frame is buffered; 0 when ``next_message`` has one.
        A reader that reads no more than this never buffers past the frame it is waiting for."""
        if len(self._buffer) < _HEADER.size:
            return _HEADER.size - len(self._buffer)
        (length,) = _HEADER.unpack_from(self._buffer)
        return max(0, _HEADER.size + length - len(self._buffer))

    def next_message(self) -> Message | None:
        """The next whole message, or None until more bytes are fed."""
        if len(self._buffer) < _HEADER.size:
            return None
        (length,) = _HEADER.unpack_from(self._buffer)
        end = _HEADER.size + length
        if len(self._buffer) < end:
            return None
        body = bytes(self._buffer[_HEADER.size : end])
        del self._buffer[:end]
        return _decode_body(body)

    @property
    def pending(self) -> int:
        """Bytes buffered but not yet a whole message (nonzero at EOF means a truncated frame)."""
        return len(self._buffer)


# The lifecycle of one connection, from the side that *receives*. Each role lists which message types it
# accepts in each state and the state that follows; anything else is a ProtocolError.
_TRANSITIONS: dict[str, dict[tuple[str, type], str]] = {
    "supervisor": {
        ("new", RunRequest): "running",
        ("running", Signal): "running",
    },
    "client": {
        ("new", Started): "running",
        ("new", Refused): "done",
        ("running", Exited): "done",
        ("running", Refused): "done",
    },
}


class Conversation:
    """The state of one connection for one role (``supervisor`` or ``client``)."""

    def __init__(self, role: str) -> None:
        self._table = _TRANSITIONS[role]
        self.state = "new"

    def receive(self, message: Message) -> None:
        following = self._table.get((self.state, type(message)))
        if following is None:
            raise ProtocolError(f"unexpected {_NAMES[type(message)]} message in state {self.state}")
        self.state = following
