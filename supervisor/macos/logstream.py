"""Find what Seatbelt denied a command, after the fact: from ``log stream`` and from the command's stderr.

The kernel logs each denial as ``Sandbox: cat(1234) deny(1) file-read-data /Users/u/.ssh/id_rsa``; the
``(with message "nono:<marker>")`` modifier of the rule that denied it follows on the next line of the same
event. The parsing is sans-IO (``LogParser.feed`` takes one line, returns denials); ``LogMonitor`` owns the
``log`` process and routes each denial to the command whose marker it carries.

Only the kernel may report a denial. A sandboxed command can write anything to the unified log itself
(``logger``, ``os_log``), including a well-formed ``Sandbox: ... nono:<marker>`` line, and a forged denial
would put a question of the attacker's choosing in front of the user ("allow read of ~/.ssh/id_rsa?").
So ndjson events must come from the Sandbox kernel extension (or /usr/libexec/sandboxd), and compact lines
from ``kernel[0:...]``; everything else is noise.

``stderr_denials`` is the fallback when the log is late, dropped or unavailable: the "Permission denied" /
"Operation not permitted" lines that name a path. ``merge_denials`` keeps both, once per (op, path).
"""

from __future__ import annotations

import ast
import json
import os
import queue
import re
import subprocess
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from nono_supervisor.errors import UsageError
from nono_supervisor.macos.seatbelt import MARKER_PREFIX

__all__ = [
    "Denial",
    "LogMonitor",
    "LogParser",
    "SEATBELT_OPERATIONS",
    "MAX_DENIALS_PER_COMMAND",
    "contract_operation",
    "merge_denials",
    "parse_event_message",
    "stderr_denials",
]

# A command stuck in a loop on a denied path must not grow the supervisor: past this many denials for one
# command the rest are counted, not kept (the agent needs one line per distinct (op, path) anyway).
MAX_DENIALS_PER_COMMAND = 1000
# `log stream` emits one line per event; an event longer than this is not a Sandbox denial.
MAX_LINE = 64 * 1024

# Seatbelt operation -> the contract's <op>. Operations not listed (file-read-metadata, mach-lookup,
# sysctl-read, iokit-open...) are not reported: stat() of a non-granted path is what PATH lookup and
# realpath do all day, and the contract has no op for the rest.
SEATBELT_OPERATIONS: dict[str, str] = {
    "file-read-data": "read",
    "file-read-xattr": "read",
    "file-read*": "read",
    "file-write-create": "create",
    "file-link": "create",
    "file-clone": "create",
    "file-write-data": "write",
    "file-write*": "write",
    "file-write-mode": "write",
    "file-write-owner": "write",
    "file-write-flags": "write",
    "file-write-times": "write",
    "file-write-xattr": "write",
    "file-write-setugid": "write",
    "file-write-unlink": "delete",
    "process-exec": "exec",
    "process-exec*": "exec",
    "process-exec-interpreter": "exec",
    "file-map-executable": "exec",
    "network-outbound": "connect",
    "network-bind": "bind",
}

_SANDBOXD = "/usr/libexec/sandboxd"
# "Sandbox: cat(1234) deny(1) file-read-data /path with spaces", optionally prefixed by "3 duplicate report
# for "; process names may hold spaces and parentheses ("Google Chrome He(77)").
_DENY_RE = re.compile(
    r"(?:(?P<dups>\d+) duplicate reports? for )?Sandbox: (?P<process>.*?)\((?P<pid>\d+)\) "
    r"deny(?:\(\d+\))? (?P<op>[a-z][a-z0-9*-]*)(?: (?P<target>.*))?$"
)
_MARKER_RE = re.compile(re.escape(MARKER_PREFIX) + r"(?P<marker>[A-Za-z0-9._-]{1,64})")
# Compact style: "2024-05-01 10:00:00.123 E  kernel[0:1a2b] (Sandbox) Sandbox: ..."; the syslog style of
# `log show` ("2024-05-01 10:00:00.123456+0200  localhost kernel[0]: (Sandbox) ...") is read the same way.
_COMPACT_RE = re.compile(
    r"^\d{4}-\d\d-\d\d[ T]\d\d:\d\d:\d\d(?:\.\d+)?(?:[+-]\d\d:?\d\d)?\s+(?:\S+\s+)?"
    r"(?P<proc>[^\s\[]+)\[(?P<pid>\d+)(?::[0-9a-fx]+)?\]"
)


@dataclass(frozen=True)
class Denial:
    """One thing the sandbox refused a command: ``operation`` is the contract's op, ``path`` the file (or
    the address, for connect/bind). ``source`` is "log" (the kernel said so) or "stderr" (a guess)."""

    marker: str | None
    pid: int | None
    process: str
    operation: str
    path: str
    seatbelt: str = ""
    source: str = "log"

    @property
    def key(self) -> tuple[str, str]:
        return (self.operation, self.path)


def contract_operation(seatbelt_op: str) -> str | None:
    """The contract's op for a Seatbelt operation, or None when the denial is not reported."""
    if seatbelt_op in SEATBELT_OPERATIONS:
        return SEATBELT_OPERATIONS[seatbelt_op]
    if seatbelt_op.startswith("file-write-"):
        return "write"
    return None


def parse_event_message(message: str) -> Denial | None:
    """A kernel Sandbox ``eventMessage`` (the deny line, then the rule's message) -> Denial, or None."""
    first, _, rest = message.partition("\n")
    m = _DENY_RE.search(first.rstrip("\r"))
    if m is None:
        return None
    operation = contract_operation(m["op"])
    if operation is None:
        return None
    tag = _MARKER_RE.search(rest)
    return Denial(
        marker=tag["marker"] if tag else None,
        pid=int(m["pid"]),
        process=m["process"],
        operation=operation,
        path=(m["target"] or "").strip(),
        seatbelt=m["op"],
    )


def _trusted_ndjson(event: dict) -> bool:
    """Logged by the kernel (pid 0: the Sandbox extension runs there) or by sandboxd itself. A user process
    can choose its log text and its own name, not its pid or its image path."""
    return event.get("processID") == 0 or event.get("processImagePath") == _SANDBOXD


class LogParser:
    """Lines of ``log stream --style ndjson`` or ``--style compact`` in, denials out (sans-IO).

    Compact style prints an event's continuation lines (the rule's message) on their own, so a deny line is
    held until the next line shows whether it carries the marker.
    """

    def __init__(self) -> None:
        self._pending: str | None = None

    def feed(self, line: str) -> list[Denial]:
        line = line.rstrip("\r\n")
        if len(line) > MAX_LINE:
            return self.flush()
        if line.startswith("{"):
            out = self.flush()
            try:
                event = json.loads(line)
            except ValueError:
                return out
            if isinstance(event, dict) and _trusted_ndjson(event):
                denial = parse_event_message(str(event.get("eventMessage") or ""))
                if denial is not None:
                    out.append(denial)
            return out
        header = _COMPACT_RE.match(line)
        if header is None:
            tag = _MARKER_RE.search(line)
            if self._pending is not None and tag:
                pending, self._pending = self._pending, None
                denial = parse_event_message(pending + "\n" + tag[0])
                return [denial] if denial else []
            return []  # "Filtering the log data...", the column header, other continuation lines
        out = self.flush()
        # Only the kernel may speak for the sandbox: a command can name its own binary "kernel", but it
        # cannot run as pid 0. (sandboxd cannot be told apart from an impostor here: use ndjson.)
        if header["proc"] == "kernel" and header["pid"] == "0" and "Sandbox: " in line:
            body = line[line.index("Sandbox: ") :]
            tag = _MARKER_RE.search(body)
            if tag is None:
                self._pending = body  # the tag, if any, is on the next line
            else:  # printed on one line: "... deny(1) file-read-data /x nono:m"
                denial = parse_event_message(body[: tag.start()].rstrip() + "\n" + tag[0])
                out.extend([denial] if denial else [])
        return out

    def flush(self) -> list[Denial]:
        """The held deny line, untagged (its event had no message)."""
        pending, self._pending = self._pending, None
        denial = parse_event_message(pending) if pending else None
        return [denial] if denial else []


# --------------------------------------------------------------------------------------------------------
# The monitor
# --------------------------------------------------------------------------------------------------------


class _Stream(Protocol):
    stdout: Iterable[str] | None

    def terminate(self) -> None: ...

    def wait(self, timeout: float | None = None) -> int: ...


Runner = Callable[[Sequence[str]], _Stream]


def _popen(argv: Sequence[str]) -> _Stream:
    return subprocess.Popen(
        list(argv),
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        encoding="utf-8",
        errors="replace",
        bufsize=1,
    )


class _Mailbox:
    def __init__(self, limit: int) -> None:
        self.queue: queue.Queue[Denial] = queue.Queue(maxsize=limit)
        self.dropped = 0


class LogMonitor:
    """One ``log stream`` per session; each command's denials land in the queue of its marker.

    Markers are ``<session>-<command>`` (see ``marker``), so the predicate lets through only this session's
    denials and the kernel does the filtering.
    """

    def __init__(
        self,
        session: str,
        *,
        runner: Runner = _popen,
        log_binary: str = "/usr/bin/log",
        limit: int = MAX_DENIALS_PER_COMMAND,
    ) -> None:
        if not re.fullmatch(r"[A-Za-z0-9._]{1,32}", session):
            raise UsageError(f"log monitor session {session!r}: use 1 to 32 letters, digits, '.' or '_'")
        self.session = session
        self._runner = runner
        self._log_binary = log_binary
        self._limit = limit
        self._parser = LogParser()
        self._boxes: dict[str, _Mailbox] = {}
        self._lock = threading.Lock()
        self._proc: _Stream | None = None
        self._thread: threading.Thread | None = None
        self.unrouted = 0

    def marker(self, command: str | int) -> str:
        """The marker of one command: pass it to ``generate_profile(policy, marker)``."""
        marker = f"{self.session}-{command}"
        if not _MARKER_RE.fullmatch(MARKER_PREFIX + marker):
            raise UsageError(f"command id {command!r} cannot form a Seatbelt marker")
        return marker

    @property
    def predicate(self) -> str:
        """Only events that carry this session's tag. Who logged them is checked by the parser (pid 0 or
        sandboxd), not here: that leaves the predicate to the one field every macOS version names alike."""
        return f'eventMessage CONTAINS "{MARKER_PREFIX}{self.session}-"'

    @property
    def argv(self) -> list[str]:
        return [self._log_binary, "stream", "--style", "ndjson", "--predicate", self.predicate]

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def start(self) -> None:
        """Start ``log stream`` and the thread that reads it. If it cannot start, denials still come from
        stderr (``collect``), so this is not an error worth refusing a command over: it raises, the caller
        decides."""
        if self._proc is not None:
            return
        self._proc = self._runner(self.argv)
        self._thread = threading.Thread(target=self._read, name="nono-logstream", daemon=True)
        self._thread.start()

    def _read(self) -> None:
        proc = self._proc
        assert proc is not None and proc.stdout is not None
        for line in proc.stdout:
            self.feed(line)
        self._route(self._parser.flush())

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(timeout=2)
            except subprocess.TimeoutExpired:
                pass
        if self._thread is not None:
            self._thread.join(timeout=2)
            self._thread = None

    def register(self, marker: str) -> None:
        """Start keeping the denials of ``marker``; call before the command starts."""
        with self._lock:
            self._boxes.setdefault(marker, _Mailbox(self._limit))

    def feed(self, line: str) -> None:
        """One line of ``log stream`` output (the reader thread calls this; tests may too)."""
        self._route(self._parser.feed(line))

    def _route(self, denials: Iterable[Denial]) -> None:
        with self._lock:
            for denial in denials:
                box = self._boxes.get(denial.marker or "")
                if box is None:
                    self.unrouted += 1  # another session, a finished command, or an untagged event
                    continue
                try:
                    box.queue.put_nowait(denial)
                except queue.Full:
                    box.dropped += 1

    def collect(
        self, marker: str, *, stderr: str = "", cwd: str | None = None, grace: float = 0.0
    ) -> list[Denial]:
        """The command's denials once it has exited, log and stderr merged; stops routing to ``marker``.

        The kernel logs asynchronously, so a denial can reach the log after the command is gone: ``grace``
        seconds are spent waiting for stragglers. It is a cost on the command's exit, so callers pass it when
        the answer matters (the command failed and a prompt may follow) and 0 otherwise. Whatever the log
        misses, stderr evidence is kept.
        """
        with self._lock:
            box = self._boxes.get(marker)
        logged: list[Denial] = []
        if box is not None:
            deadline = time.monotonic() + (grace if self.running else 0.0)
            while (remaining := deadline - time.monotonic()) > 0:
                try:
                    logged.append(box.queue.get(timeout=remaining))
                except queue.Empty:
                    break
            with self._lock:
                self._boxes.pop(marker, None)
            logged.extend(_drain(box.queue))
        return merge_denials(logged, stderr_denials(stderr, cwd=cwd, marker=marker))


def _drain(q: queue.Queue[Denial]) -> Iterator[Denial]:
    while True:
        try:
            yield q.get_nowait()
        except queue.Empty:
            return


def merge_denials(logged: Iterable[Denial], from_stderr: Iterable[Denial]) -> list[Denial]:
    """Log denials first, once per (op, path); then stderr evidence for paths the log did not mention.

    The log is exact about the operation and stderr only guesses it, so a stderr line about a path the log
    already reported adds nothing, whatever op it guessed.
    """
    out: dict[tuple[str, str], Denial] = {}
    for d in logged:
        out.setdefault(d.key, d)
    seen_paths = {path for _, path in out}
    for d in from_stderr:
        if d.path not in seen_paths:
            out.setdefault(d.key, d)
    return list(out.values())


# --------------------------------------------------------------------------------------------------------
# stderr fallback
# --------------------------------------------------------------------------------------------------------

_ERRORS = r"(?:Permission denied|Operation not permitted|permission denied|operation not permitted)"
_SHELLS = {"bash", "sh", "zsh", "dash", "ksh", "fish", "tcsh", "csh"}
_PROGRAM_OPS = {
    **dict.fromkeys(("touch", "mkdir", "ln", "mkfifo", "mktemp"), "create"),
    **dict.fromkeys(("rm", "rmdir", "unlink"), "delete"),
    **dict.fromkeys(("tee", "dd", "truncate", "chmod", "chown", "chflags", "xattr", "install"), "write"),
    **dict.fromkeys(_SHELLS, "write"),  # "bash: /x: Permission denied" is nearly always a `> /x` redirection
}
_VERB_OPS = (
    (re.compile(r"for writing|cannot overwrite|cannot write|can't write|couldn't write"), "write"),
    (re.compile(r"cannot (?:touch|create|make)|can't create|couldn't create|cannot link"), "create"),
    (re.compile(r"cannot (?:remove|unlink|delete)|can't remove|couldn't remove"), "delete"),
    (re.compile(r"cannot exec|can't exec"), "exec"),
)
# "prog: [line N: ][verb ]PATH[ for reading]: error" (GNU and BSD tools, bash).
_TOOL_RE = re.compile(
    r"^(?P<prog>[^\s:]+)(?::\s*line \d+)?: "
    r"(?P<verb>(?:cannot|can't|could not|couldn't|unable to|failed to) [a-z ]+?"
    r"(?: file| directory| regular file| symbolic link)? )?"
    r"(?P<path>.+?)(?P<mode> for (?:reading|writing))?: " + _ERRORS + r"\.?$"
)
# zsh: "zsh: permission denied: /x", "zsh:1: operation not permitted: /x"
_ZSH_RE = re.compile(r"^(?P<prog>zsh|-zsh)(?::\d+)?: " + _ERRORS + r": (?P<path>.+)$")
# BSD mv: "mv: rename /a to /b: Operation not permitted"
_RENAME_RE = re.compile(r"^(?P<prog>[^\s:]+): rename (?P<path>.+?) to .+?: " + _ERRORS + r"$")
# Python: "PermissionError: [Errno 1] Operation not permitted: '/x'" (and " -> '/y'" for rename)
_PY_RE = re.compile(
    r"(?:PermissionError|OSError): \[Errno (?:1|13)\] "
    + _ERRORS
    + r": (?P<repr>'(?:[^'\\]|\\.)*'|\"(?:[^\"\\]|\\.)*\")"
)
_PY_OPS = (
    (re.compile(r"\b(?:mkdir|makedirs|touch|symlink|link|mkfifo)\("), "create"),
    (re.compile(r"\b(?:remove|unlink|rmdir|rmtree)\("), "delete"),
    (
        re.compile(r"\b(?:write_text|write_bytes|rename|replace|chmod|utime)\(|open\([^)]*['\"][wax+]"),
        "write",
    ),
)
# Node: "Error: EACCES: permission denied, open '/x'"
_NODE_RE = re.compile(r"\b(?:EACCES|EPERM): " + _ERRORS + r", (?P<call>[a-z]+) '(?P<path>[^']*)'")
_NODE_OPS = {
    "mkdir": "create",
    "symlink": "create",
    "link": "create",
    "unlink": "delete",
    "rmdir": "delete",
    "rm": "delete",
    "rename": "write",
    "copyfile": "write",
    "chmod": "write",
    "utime": "write",
}
_QUOTES = (("'", "'"), ('"', '"'), ("\u2018", "\u2019"), ("`", "'"))


def _unquote(path: str) -> str:
    path = path.strip()
    for left, right in _QUOTES:
        if len(path) >= 2 and path.startswith(left) and path.endswith(right):
            return path[len(left) : -len(right)]
    return path


def _quoted(text: str) -> bool:
    return _unquote(text) != text.strip()


def _resolve(path: str, cwd: str | None, *, quoted: bool) -> str | None:
    """An absolute path from what a tool printed. A relative one needs ``cwd``, and must have been quoted if
    it has spaces: "curl: (7) Failed to connect to ...: Operation not permitted" names no file."""
    if not path or "\n" in path or "\x00" in path:
        return None
    if os.path.isabs(path):
        return os.path.normpath(path)
    if cwd and not path.startswith("~") and (quoted or not any(c.isspace() for c in path)):
        return os.path.normpath(os.path.join(cwd, path))
    return None


def _tool_op(prog: str, verb: str, mode: str) -> str:
    text = f"{verb} {mode}"
    for pattern, op in _VERB_OPS:
        if pattern.search(text):
            return op
    return _PROGRAM_OPS.get(os.path.basename(prog).lstrip("-"), "read")


def stderr_denials(text: str, *, cwd: str | None = None, marker: str | None = None) -> list[Denial]:
    """Denials a command's stderr reports in so many words, for when the log says nothing.

    The operation is a guess from the program and its wording (``touch`` creates, ``rm`` deletes, a shell's
    complaint is a redirection). Relative paths resolve against ``cwd``; without it they are dropped.
    """
    out: list[Denial] = []
    recent: list[str] = []
    for raw in text.splitlines()[-2000:]:  # a runaway stderr costs a bounded scan
        line = raw.strip()
        found: tuple[str, str, str, bool] | None = None  # (process, op, path, was quoted)
        if m := _PY_RE.search(line):
            try:
                path = ast.literal_eval(m["repr"])
            except (ValueError, SyntaxError):
                path = ""
            op = next((o for pat, o in _PY_OPS if any(pat.search(c) for c in recent[-3:])), "read")
            found = ("python", op, str(path), True)
        elif m := _NODE_RE.search(line):
            found = ("node", _NODE_OPS.get(m["call"], "read"), m["path"], True)
        elif m := _ZSH_RE.match(line):
            found = ("zsh", "write", m["path"], False)
        elif m := _RENAME_RE.match(line):
            found = (m["prog"], "write", _unquote(m["path"]), _quoted(m["path"]))
        elif m := _TOOL_RE.match(line):
            op = _tool_op(m["prog"], m["verb"] or "", m["mode"] or "")
            found = (m["prog"], op, _unquote(m["path"]), _quoted(m["path"]))
        recent.append(line)
        if found is None:
            continue
        process, op, path, quoted = found
        resolved = _resolve(path, cwd, quoted=quoted)
        if resolved is not None:
            out.append(Denial(marker, None, os.path.basename(process), op, resolved, source="stderr"))
    unique: dict[tuple[str, str], Denial] = {}
    for denial in out:
        unique.setdefault(denial.key, denial)
    return list(unique.values())
