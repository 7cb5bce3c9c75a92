"""macOS denial discovery: `log stream` parsing and routing, and the stderr fallback.

The samples in tests/data/macos/logstream-*.txt are written in the shape `log stream --style ndjson` and
`--style compact` print Sandbox denials (the tag of the rule's `(with message ...)` on the event's second
line); they were not captured on a Mac by this test suite.
"""

from __future__ import annotations

import threading
from pathlib import Path

import pytest

from nono_supervisor.errors import UsageError
from nono_supervisor.macos.logstream import (
    Denial,
    LogMonitor,
    LogParser,
    contract_operation,
    merge_denials,
    parse_event_message,
    stderr_denials,
)
from nono_supervisor.macos.seatbelt import generate_profile
from nono_supervisor.policy.profile import Context, PolicyOptions, resolve_policy

DATA = Path(__file__).parent / "data" / "macos"
CHROME_STATE = "/Users/alice/Library/Application Support/Google/Chrome/Local State"


def parse_file(name: str) -> list[Denial]:
    parser = LogParser()
    out: list[Denial] = []
    for line in (DATA / name).read_text(encoding="utf-8").splitlines(keepends=True):
        out.extend(parser.feed(line))
    return out + parser.flush()


def triples(denials) -> list[tuple[str | None, str, str]]:
    return [(d.marker, d.operation, d.path) for d in denials]


EXPECTED = [
    ("s1-c7", "read", "/Users/alice/.ssh/id_rsa"),
    ("s1-c8", "create", "/Users/alice/.aws/new file"),
    ("s1-c9", "connect", "93.184.216.34:443"),
    ("s1-c7", "write", CHROME_STATE),
    ("s1-c7", "read", "/Users/alice/.ssh/id_rsa"),  # the "1 duplicate report for" line
    ("s1-c8", "delete", "/Users/alice/project/deploy"),
    ("s2-c1", "read", "/Users/alice/.netrc"),
]


def test_ndjson_lines_map_to_marker_op_and_path() -> None:
    got = triples(parse_file("logstream-ndjson.txt"))
    # sandboxd's own report and the bind are extra in the ndjson sample
    assert got == EXPECTED + [
        ("s1-c8", "read", "/Users/alice/.config/gh/hosts.yml"),
        ("s1-c9", "bind", "0.0.0.0:8080"),
    ]


def test_compact_lines_map_to_marker_op_and_path() -> None:
    assert triples(parse_file("logstream-compact.txt")) == EXPECTED + [("s1-c9", "bind", "0.0.0.0:8080")]


def test_ndjson_keeps_process_pid_and_seatbelt_operation() -> None:
    first = parse_file("logstream-ndjson.txt")[0]
    assert (first.process, first.pid, first.seatbelt, first.source) == ("cat", 4242, "file-read-data", "log")


def test_forged_denial_from_a_sandboxed_process_is_ignored() -> None:
    """A command can `os_log` "Sandbox: ... deny(1) file-read-data /etc/master.passwd\\nnono:<its marker>"
    to make the supervisor ask the user for a grant; only pid 0 (the kernel) or sandboxd are believed."""
    for name in ("logstream-ndjson.txt", "logstream-compact.txt"):
        assert all(d.path != "/etc/master.passwd" for d in parse_file(name)), name


def test_noise_lines_yield_nothing() -> None:
    parser = LogParser()
    noise = [
        "Filtering the log data using \"eventMessage CONTAINS 'nono:s1-'\"",
        "Timestamp               Ty Process[PID:TID]",
        "2025-03-14 10:21:08.000 Df launchd[1:2f] [com.apple.xpc.launchd:all] Service exited: 1",
        '{"eventMessage":"hello","processID":0,"processImagePath":"/kernel"}',
        '{"eventMessage":"Sandbox: x(1) deny(1) file-read-data /y\\nnono:s1-c1","processID":4}',
        "{not json",
        "",
        "nono:s1-c7",  # a tag with no deny line before it
        '["an", "array"]',
    ]
    assert [d for line in noise for d in parser.feed(line)] + parser.flush() == []


def test_operations_the_contract_does_not_name_are_not_reported() -> None:
    for op in ("file-read-metadata", "mach-lookup", "sysctl-read", "iokit-open", "signal"):
        assert parse_event_message(f"Sandbox: x(1) deny(1) {op} /y\nnono:m") is None


@pytest.mark.parametrize(
    ("seatbelt", "op"),
    [
        ("file-read-data", "read"),
        ("file-write-create", "create"),
        ("file-write-data", "write"),
        ("file-write*", "write"),
        ("file-write-unlink", "delete"),
        ("file-write-mode", "write"),
        ("process-exec", "exec"),
        ("network-outbound", "connect"),
        ("network-bind", "bind"),
    ],
)
def test_seatbelt_operations_map_to_contract_ops(seatbelt: str, op: str) -> None:
    assert contract_operation(seatbelt) == op


def test_process_names_with_spaces_and_parentheses() -> None:
    d = parse_event_message("Sandbox: Google Chrome (Helper)(77) deny(1) file-read-data /a b/c\nnono:s1-c1")
    assert d is not None and (d.process, d.pid, d.path, d.marker) == (
        "Google Chrome (Helper)",
        77,
        "/a b/c",
        "s1-c1",
    )


def test_compact_tag_on_the_same_line() -> None:
    parser = LogParser()
    line = "2025-03-14 10:21:07.123 E  kernel[0:1a2b3] (Sandbox) Sandbox: cat(1) deny(1) file-read-data /x"
    line += " nono:s1-c3"
    assert triples(parser.feed(line)) == [("s1-c3", "read", "/x")]


def test_compact_untagged_denial_is_flushed_without_marker() -> None:
    parser = LogParser()
    line = "2025-03-14 10:21:07.123 E  kernel[0:1a2b3] (Sandbox) Sandbox: cat(1) deny(1) file-read-data /x"
    assert parser.feed(line) == []
    assert triples(parser.flush()) == [(None, "read", "/x")]


def test_oversized_line_is_dropped() -> None:
    parser = LogParser()
    assert parser.feed('{"eventMessage":"' + "A" * 70000 + '","processID":0}') == []


# --------------------------------------------------------------------------------------------------------
# LogMonitor: the process, the routing, late events
# --------------------------------------------------------------------------------------------------------


class FakeLog:
    """Stands in for the `log stream` process: yields the given lines, optionally after a gate opens."""

    def __init__(self, lines, gate: threading.Event | None = None) -> None:
        self._lines = list(lines)
        self._gate = gate
        self.terminated = False
        self.argv: list[str] = []
        self.stdout = self._iter()

    def _iter(self):
        for line in self._lines:
            if self._gate is not None:
                self._gate.wait(5)
            yield line

    def terminate(self) -> None:
        self.terminated = True

    def wait(self, timeout=None) -> int:
        return 0


def monitor_with(lines, gate=None) -> tuple[LogMonitor, FakeLog]:
    fake = FakeLog(lines, gate)

    def runner(argv):
        fake.argv = list(argv)
        return fake

    return LogMonitor("s1", runner=runner), fake


def test_monitor_runs_log_stream_with_a_session_predicate() -> None:
    monitor, fake = monitor_with([])
    monitor.start()
    monitor.stop()
    assert fake.argv == [
        "/usr/bin/log",
        "stream",
        "--style",
        "ndjson",
        "--predicate",
        'eventMessage CONTAINS "nono:s1-"',
    ]
    assert fake.terminated


def test_monitor_routes_denials_to_the_command_of_their_marker() -> None:
    monitor, _ = monitor_with((DATA / "logstream-ndjson.txt").read_text().splitlines(keepends=True))
    for command in ("c7", "c8", "c9"):
        monitor.register(monitor.marker(command))
    monitor.start()
    monitor.stop()
    assert triples(monitor.collect("s1-c7")) == [
        ("s1-c7", "read", "/Users/alice/.ssh/id_rsa"),
        ("s1-c7", "write", CHROME_STATE),
    ]
    assert triples(monitor.collect("s1-c8")) == [
        ("s1-c8", "create", "/Users/alice/.aws/new file"),
        ("s1-c8", "delete", "/Users/alice/project/deploy"),
        ("s1-c8", "read", "/Users/alice/.config/gh/hosts.yml"),
    ]
    assert [d.operation for d in monitor.collect("s1-c9")] == ["connect", "bind"]
    assert monitor.unrouted == 1  # the other session's denial
    assert monitor.collect("s1-c7") == []  # collected once


def test_marker_of_the_monitor_is_accepted_by_the_profile_generator() -> None:
    monitor, _ = monitor_with([])
    ctx = Context("/Users/alice/project", "/Users/alice", "/private/var/folders/xy/t", platform="macos")
    profile = generate_profile(resolve_policy(PolicyOptions(), ctx), monitor.marker(42))
    assert '(deny default (with message "nono:s1-42"))' in profile
    with pytest.raises(UsageError):
        monitor.marker("a b")
    with pytest.raises(UsageError):
        LogMonitor('s"1')


def test_late_log_event_arrives_within_the_grace_period() -> None:
    gate = threading.Event()
    line = (
        '{"eventMessage":"Sandbox: cat(9) deny(1) file-read-data '
        '\\/Users\\/alice\\/.aws\\/credentials\\nnono:s1-c1",'
        '"processID":0,"processImagePath":"\\/kernel"}\n'
    )
    monitor, _ = monitor_with([line], gate)
    monitor.register("s1-c1")
    monitor.start()
    threading.Timer(0.05, gate.set).start()
    got = monitor.collect("s1-c1", grace=0.5)
    monitor.stop()
    assert triples(got) == [("s1-c1", "read", "/Users/alice/.aws/credentials")]


def test_missing_log_event_does_not_lose_stderr_evidence() -> None:
    monitor, _ = monitor_with([])  # the log never reports anything
    monitor.register("s1-c2")
    stderr = "cat: /Users/alice/.aws/credentials: Operation not permitted\n"
    got = monitor.collect("s1-c2", stderr=stderr)
    assert [(d.operation, d.path, d.source, d.marker) for d in got] == [
        ("read", "/Users/alice/.aws/credentials", "stderr", "s1-c2")
    ]


def test_a_command_looping_on_a_denied_path_is_bounded() -> None:
    fake = FakeLog(
        f'{{"eventMessage":"Sandbox: x(1) deny(1) file-read-data \\/f{i}\\nnono:s1-c1","processID":0}}\n'
        for i in range(50)
    )
    monitor = LogMonitor("s1", runner=lambda argv: fake, limit=10)
    monitor.register("s1-c1")
    monitor.start()
    monitor.stop()
    assert len(monitor.collect("s1-c1")) == 10


# --------------------------------------------------------------------------------------------------------
# stderr fallback and merging
# --------------------------------------------------------------------------------------------------------

CWD = "/Users/alice/project"


# (a line of stderr, where {} stands for the path; the operation; the path, absolute)
STDERR_LINES = [
    ("cat: {}: Permission denied", "read", "/Users/alice/.ssh/id_rsa"),
    ("cat: {}: Operation not permitted", "read", "/Users/alice/.ssh/id_rsa"),
    ("bash: {}: Operation not permitted", "write", "/Users/alice/.bashrc"),
    ("bash: line 1: {}: Permission denied", "write", "/Users/alice/.zshrc"),
    ("/bin/bash: {}: Permission denied", "write", "/x/out.log"),
    ("zsh:1: operation not permitted: {}", "write", "/Users/alice/.zshenv"),
    ("touch: {}: Operation not permitted", "create", "/Users/alice/.aws/x"),
    ("touch: cannot touch '{}': Permission denied", "create", "/x/y z"),
    ("mkdir: cannot create directory ‘{}’: Permission denied", "create", "/x/new"),
    ("rm: {}: Operation not permitted", "delete", "/Users/alice/.ssh/known_hosts"),
    ("rm: cannot remove '{}': Permission denied", "delete", "/x/y"),
    ("ls: {}: Operation not permitted", "read", "/Users/alice/.ssh"),
    ("ls: cannot open directory '{}': Permission denied", "read", "/Users/alice/.ssh"),
    ("tee: {}: Operation not permitted", "write", "/Users/alice/.npmrc"),
    ("fatal: could not open '{}' for writing: Permission denied", "write", "/x/.git/config"),
    ("sed: can't read {}: Permission denied", "read", "/x/y"),
    ("mv: rename {} to /x/b: Operation not permitted", "write", "/x/a"),
    ("PermissionError: [Errno 1] Operation not permitted: '{}'", "read", "/Users/alice/.aws/credentials"),
    ('PermissionError: [Errno 13] Permission denied: "{}"', "read", "/x/it's"),
    ("Error: EACCES: permission denied, open '{}'", "read", "/Users/alice/.npmrc"),
    ("Error: EPERM: operation not permitted, mkdir '{}'", "create", "/Users/alice/.cache/x"),
    ("Error: EPERM: operation not permitted, unlink '{}'", "delete", "/x/y"),
    ("cat: secrets.txt: Permission denied", "read", "/Users/alice/project/secrets.txt"),
    ("cat: '../my notes.txt': Permission denied", "read", "/Users/alice/my notes.txt"),
]


@pytest.mark.parametrize(("line", "op", "path"), STDERR_LINES)
def test_stderr_lines_name_op_and_path(line: str, op: str, path: str) -> None:
    got = stderr_denials("some output\n" + line.format(path) + "\n", cwd=CWD, marker="s1-c1")
    assert [(d.operation, d.path, d.source, d.marker) for d in got] == [(op, path, "stderr", "s1-c1")]


def test_python_traceback_guesses_the_operation_from_the_failing_call() -> None:
    tb = (
        "Traceback (most recent call last):\n"
        '  File "/Users/alice/project/x.py", line 3, in <module>\n'
        '    with open("/Users/alice/.ssh/config", "w") as f:\n'
        "         ^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^^\n"
        "PermissionError: [Errno 1] Operation not permitted: '/Users/alice/.ssh/config'\n"
    )
    assert [(d.operation, d.path) for d in stderr_denials(tb)] == [("write", "/Users/alice/.ssh/config")]
    tb2 = tb.replace('with open("/Users/alice/.ssh/config", "w") as f:', "os.mkdir(p)")
    assert [d.operation for d in stderr_denials(tb2)] == ["create"]


@pytest.mark.parametrize(
    "line",
    [
        "git@github.com: Permission denied (publickey).",
        "curl: (7) Failed to connect to example.com port 443 after 3 ms: Operation not permitted",
        "Operation not permitted",
        "sudo: a password is required",
        "Permission denied",
        "warning: something: Permission denied (but we continued)",
    ],
)
def test_stderr_lines_that_name_no_path_are_ignored(line: str) -> None:
    assert stderr_denials(line, cwd=CWD) == []


def test_relative_paths_need_a_cwd() -> None:
    assert stderr_denials("cat: secrets.txt: Permission denied") == []


def test_stderr_repeats_are_reported_once() -> None:
    text = "cat: /x: Permission denied\n" * 5
    assert len(stderr_denials(text)) == 1


def test_merge_prefers_the_log_and_keeps_stderr_only_paths() -> None:
    logged = [
        Denial("m", 1, "cat", "read", "/x", "file-read-data"),
        Denial("m", 1, "cat", "read", "/x", "file-read-data"),
    ]
    from_stderr = stderr_denials("bash: /x: Operation not permitted\ncat: /y: Operation not permitted\n")
    merged = merge_denials(logged, from_stderr)
    assert [(d.operation, d.path, d.source) for d in merged] == [
        ("read", "/x", "log"),
        ("read", "/y", "stderr"),
    ]
