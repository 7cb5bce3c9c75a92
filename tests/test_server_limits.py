"""The supervisor's socket under attack from inside a command (issue 9, finding 7), and an audit log that
cannot be written (a notify thread must not die of it).

Every flood is bounded in connections and seconds; the floods that matter come from inside a sandboxed
command (its connections reach the socket through the notify layer, so their peer is the supervisor's
own pid), the per-pid and deadline cases from the test process itself.
"""

from __future__ import annotations

import os
import resource
import select
import signal
import socket
import struct
import subprocess
import sys
import time
import weakref

import pytest

from conftest import FAKE_KEY, SUPERVISOR, start_supervisor, wait_until
from nono_shell import protocol, transport
from nono_supervisor import server

# Runs inside a command: opens connections to $NONO_SOCKET and never completes a request.
#   memory COUNT SIZE SECONDS: each claims a SIZE-byte frame and sends all but its last byte
#   dribble COUNT 0 SECONDS: each sends one byte, then one more per round; REPLACE new ones a round
# Prints "ready ..." once COUNT connections were tried, then holds them until stdin closes or SECONDS pass.
FLOOD = r"""
import os, select, socket, sys, time
mode, seconds = sys.argv[1], float(sys.argv[4])
count, size, replace = int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[5])
path, deadline = os.environ["NONO_SOCKET"], time.monotonic() + seconds
chunk = b"x" * 65536
alive, tried, cut = [], 0, 0

def one():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.settimeout(2)
    try:
        s.connect(path)
        if mode == "memory":
            s.sendall(size.to_bytes(4, "big"))
            left = size - 1
            while left:
                left -= s.send(chunk[: min(left, len(chunk))])
        else:
            s.send(b"\x00")
    except OSError:
        s.close()
        return 0
    alive.append(s)
    return 1

def reap():
    global cut
    for s in select.select(alive, [], [], 0)[0] if alive else []:
        alive.remove(s)
        s.close()
        cut += 1

while tried < count and time.monotonic() < deadline:
    tried += 1
    one()
    if tried % 64 == 0:
        reap()
reap()
print(f"ready tried={tried} alive={len(alive)} cut={cut}", flush=True)
rounds = 0
while time.monotonic() < deadline and not select.select([sys.stdin], [], [], 0.1)[0]:
    reap()
    if mode == "dribble":  # keep the pressure on: a byte more on each, new ones for those cut
        rounds += 1
        for s in list(alive):
            try:
                s.send(b"\x00")
            except OSError:
                alive.remove(s)
        for _ in range(replace):
            if tried < 3 * count:
                tried += 1
                one()
print(f"done tried={tried} alive={len(alive)} cut={cut} rounds={rounds}", flush=True)
"""


def _status(pid: int) -> dict[str, str]:
    with open(f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def _rss_mib(pid: int) -> float:
    return int(_status(pid)["VmRSS"].split()[0]) / 1024


def _threads(pid: int) -> int:
    return int(_status(pid)["Threads"])


def _timed_true(supervisor) -> tuple[float, subprocess.CompletedProcess]:
    start = time.monotonic()
    result = supervisor.shell("-c", "true", timeout=30)
    return time.monotonic() - start, result


def _start_flood(supervisor, mode: str, count: int, size: int, seconds: float) -> subprocess.Popen:
    script = supervisor.home.work / "flood.py"
    script.write_text(FLOOD)
    return subprocess.Popen(
        [
            str(supervisor.shims / "bash"),
            "-c",
            f"exec python3 {script} {mode} {count} {size} {seconds} {server.MAX_PENDING}",
        ],
        cwd=supervisor.home.work,
        env=supervisor.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _line(process: subprocess.Popen, timeout: float) -> str:
    ready, _, _ = select.select([process.stdout], [], [], timeout)
    assert ready, "the flood did not report in time"
    return process.stdout.readline()


def _end_flood(process: subprocess.Popen) -> str:
    out, err = process.communicate(input="", timeout=30)
    assert process.returncode == 0, err
    return out


def _connect(path) -> socket.socket:
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(str(path))
    s.settimeout(10)
    return s


def _request(home, command: str = "true", **env: str) -> bytes:
    return protocol.encode(
        protocol.RunRequest(
            shell="bash",
            argv=["bash", "-c", command],
            cwd=str(home.work),
            env={**home.env, **env},
            stdio=[],
        )
    )


_DECODERS: weakref.WeakKeyDictionary = (
    weakref.WeakKeyDictionary()
)  # one per connection: replies can share a read


def _reply(conn: socket.socket) -> protocol.Message:
    return transport.receive(conn, _DECODERS.setdefault(conn, protocol.Decoder()))


def _refused_now(conn: socket.socket, wait: float = 0.0) -> bool:
    return bool(select.select([conn], [], [], wait)[0])


# ---- memory -----------------------------------------------------------------------------------------


def test_memory_flood_keeps_the_supervisor_small(supervisor):
    """128 connections from inside a command, each holding all but one byte of a 4 MiB frame (the largest
    first request): 512 MiB offered; the supervisor buffers at most MAX_PENDING_BYTES of it."""
    pid = supervisor.process.pid
    assert supervisor.shell("-c", "true").returncode == 0
    before = _rss_mib(pid)
    flood = _start_flood(supervisor, "memory", 128, server.MAX_REQUEST_BYTES, 60)
    peak = before
    ready_by = time.monotonic() + 60
    line = ""
    while not line and time.monotonic() < ready_by:
        peak = max(peak, _rss_mib(pid))
        if select.select([flood.stdout], [], [], 0.05)[0]:
            line = flood.stdout.readline()
    assert line.startswith("ready"), line
    during = _rss_mib(pid)
    elapsed, result = _timed_true(supervisor)
    out = _end_flood(flood)
    after = _rss_mib(pid)
    print(f"RSS MiB before={before:.1f} peak={peak:.1f} held={during:.1f} after={after:.1f}; {line.strip()}")
    print(f"outside bash -c true during the flood: {elapsed * 1000:.0f} ms; {out.strip()}")
    assert result.returncode == 0, result.stderr
    assert elapsed < 2.0
    assert peak < 100 and after < 100
    assert "alive=" in line and int(line.split("alive=")[1].split()[0]) <= 128


def test_twin_a_legitimately_big_request_is_served(supervisor):
    """The same supervisor runs a command whose environment is 1.5 MiB (12 variables of 128 KiB, the
    kernel's limit for one string): big requests are not what the limits refuse."""
    big = {f"BIG_{i}": "y" * (128 * 1024 - 16) for i in range(12)}
    result = supervisor.shell("-c", 'echo "${#BIG_11}"', env={**supervisor.env, **big})
    assert result.returncode == 0, result.stderr
    assert result.stdout == f"{128 * 1024 - 16}\n"


def test_oversized_first_request_is_refused_from_its_header(supervisor):
    conn = _connect(supervisor.socket)
    conn.sendall((server.MAX_REQUEST_BYTES + 1).to_bytes(4, "big"))
    reply = _reply(conn)
    assert isinstance(reply, protocol.Refused) and "exceeds" in reply.reason, reply
    conn.close()
    assert supervisor.shell("-c", "echo alive").stdout == "alive\n"


# ---- idle connections -------------------------------------------------------------------------------


def test_dribble_flood_holds_no_thread_per_connection(supervisor):
    """2,000 connections from inside a command, each dribbling a byte at a time, refused ones replaced:
    the supervisor holds no thread for them, and a command from outside still answers at once."""
    pid = supervisor.process.pid
    # One command first: the session's own threads that start with its first command (undo's drainer)
    # are then counted as idle, and only threads per connection would show.
    assert supervisor.shell("-c", "true").returncode == 0
    idle_threads = _threads(pid)
    flood = _start_flood(supervisor, "dribble", 2000, 0, 30)
    line = _line(flood, 30)
    assert line.startswith("ready"), line
    time.sleep(1)  # under way: dribbling, and replacing what was cut
    threads = [_threads(pid)]
    times = []
    for _ in range(3):
        elapsed, result = _timed_true(supervisor)
        assert result.returncode == 0, result.stderr
        times.append(elapsed)
        threads.append(_threads(pid))
    fds = len(os.listdir(f"/proc/{pid}/fd"))
    out = _end_flood(flood)
    print(
        f"threads idle={idle_threads} during={threads} fds={fds}; outside bash -c true: "
        f"{[round(t * 1000) for t in times]} ms; {line.strip()}; {out.strip()}"
    )
    # the flood command's own connection thread and notify thread, and the outside command's two
    assert max(threads) <= idle_threads + 4
    assert fds < 64 + server.MAX_PENDING * server._FDS_PER_PENDING
    assert max(times) < 1.0
    # All but the newest were pushed out with a Refused; the rest may still be in the kernel's backlog.
    alive = int(line.split("alive=")[1].split()[0])
    assert alive <= server.MAX_PENDING + server.LISTEN_BACKLOG + 64


def test_connections_over_the_per_pid_cap_are_refused(supervisor):
    """A process (here the test itself, connecting directly) holding more than MAX_PENDING_PER_PID
    incomplete requests: its oldest gets a Refused and is closed, everyone else is untouched."""
    conns = [_connect(supervisor.socket) for _ in range(server.MAX_PENDING_PER_PID + 1)]
    for conn in conns:
        conn.sendall(b"\x00")
    reply = _reply(conns[0])
    assert isinstance(reply, protocol.Refused), reply
    assert (
        f"more than {server.MAX_PENDING_PER_PID} incomplete requests from pid {os.getpid()}" in reply.reason
    )
    assert not any(_refused_now(c, 0.2) for c in conns[1:])
    for conn in conns:
        conn.close()


def test_twin_pending_connections_under_the_cap_are_all_served(supervisor):
    conns = [_connect(supervisor.socket) for _ in range(server.MAX_PENDING_PER_PID)]
    requests = [_request(supervisor.home, f": served-{i}") for i in range(len(conns))]
    for conn, request in zip(conns, requests, strict=True):
        conn.sendall(request[:10])
    assert not any(_refused_now(c, 0.2) for c in conns)
    for conn, request in zip(conns, requests, strict=True):
        conn.sendall(request[10:])
    for conn in conns:
        assert isinstance(_reply(conn), protocol.Started)
        reply = _reply(conn)
        assert reply == protocol.Exited(code=0), reply
        conn.close()


def test_dribbler_is_cut_at_the_absolute_deadline(supervisor):
    """One byte every half second keeps a per-read timeout happy forever; the deadline is from accept."""
    conn = _connect(supervisor.socket)
    start = time.monotonic()
    request = _request(supervisor.home)
    sent = 0
    while not _refused_now(conn, 0.5) and time.monotonic() - start < server.FIRST_MESSAGE_SECONDS + 5:
        conn.sendall(request[sent : sent + 1])
        sent += 1
    elapsed = time.monotonic() - start
    reply = _reply(conn)
    assert isinstance(reply, protocol.Refused), reply
    assert f"{server.FIRST_MESSAGE_SECONDS:g} s after connecting" in reply.reason
    assert server.FIRST_MESSAGE_SECONDS - 0.5 <= elapsed <= server.FIRST_MESSAGE_SECONDS + 1.5, elapsed
    assert sent < len(request)
    conn.close()


def test_twin_a_slow_but_timely_request_is_served(supervisor):
    conn = _connect(supervisor.socket)
    request = _request(supervisor.home)
    conn.sendall(request[:10])
    time.sleep(server.FIRST_MESSAGE_SECONDS / 2)
    conn.sendall(request[10:])
    assert isinstance(_reply(conn), protocol.Started)
    assert _reply(conn) == protocol.Exited(code=0)
    conn.close()


# ---- running commands -------------------------------------------------------------------------------


def _supervisor_with_nofile(home, soft: int):
    """A supervisor started with RLIMIT_NOFILE ``soft``: its command cap is what that leaves room for."""
    old = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, old[1]))
    try:
        return start_supervisor(home)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, old)


def test_commands_over_the_cap_are_refused_with_a_reason(home):
    soft = 512
    cap = (
        soft - server._FD_RESERVE - server.MAX_PENDING * server._FDS_PER_PENDING
    ) // server._FDS_PER_COMMAND
    assert 1 <= cap < server.MAX_COMMANDS
    supervisor = _supervisor_with_nofile(home, soft)
    running = []
    try:
        flag = home.work / "go"
        for _ in range(cap):
            conn = _connect(supervisor.socket)
            conn.sendall(_request(home, f"while [ ! -e {flag} ]; do sleep 0.05; done"))
            running.append(conn)
        for conn in running:
            assert isinstance(_reply(conn), protocol.Started)
        over = _connect(supervisor.socket)
        over.sendall(_request(home))
        reply = _reply(over)
        assert isinstance(reply, protocol.Refused), reply
        assert f"{cap} commands are running" in reply.reason
        over.close()
        # through nono-shell: exit 125 and one line
        result = supervisor.shell("-c", "echo ran")
        assert result.returncode == 125 and result.stdout == ""
        assert result.stderr.startswith("nono-shell: ") and result.stderr.count("\n") == 1, result.stderr
        assert "commands are running" in result.stderr
        # twin: once one has ended, the next is served
        flag.touch()
        for conn in running:
            assert _reply(conn) == protocol.Exited(code=0)
            conn.close()
        running.clear()
        result = supervisor.shell("-c", "echo ran")
        assert result.returncode == 0 and result.stdout == "ran\n", result.stderr
    finally:
        for conn in running:
            conn.close()
        supervisor.stop()


def _live_children(pid: int) -> list[int]:
    """The processes whose parent is ``pid`` and that are not zombies (a supervisor's keepers)."""
    children = []
    for entry in os.listdir("/proc"):
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if fields[1] == str(pid) and fields[0] != "Z":
            children.append(int(entry))
    return children


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_commands_left_running_count_against_the_cap(request, user):
    """Each command here returns at once leaving a background job, whose notify loop (a thread, an fd)
    the supervisor keeps: past the cap the next is refused with a reason; once the jobs end, served."""
    home = request.getfixturevalue("nobody_home" if user else "home")
    soft = 512
    cap = (
        soft - server._FD_RESERVE - server.MAX_PENDING * server._FDS_PER_PENDING
    ) // server._FDS_PER_COMMAND
    supervisor = _supervisor_with_nofile(home, soft)
    jobs = home.work / "jobs"
    try:
        for _ in range(cap):
            result = supervisor.shell("-c", f"sleep 300 >/dev/null 2>&1 & echo $! >> {jobs}")
            assert result.returncode == 0, result.stderr
        result = supervisor.shell("-c", "echo ran")
        assert result.returncode == 125 and result.stdout == "", result.stderr
        assert (
            f"{cap} commands are running ({cap} of them returned, leaving background jobs)" in result.stderr
        )
        for pid in jobs.read_text().split():
            os.kill(int(pid), signal.SIGKILL)
        assert wait_until(lambda: not _live_children(supervisor.process.pid))  # the keepers saw them end
        result = supervisor.shell("-c", "echo ran")  # twin: the jobs ended, the next is served
        assert result.returncode == 0 and result.stdout == "ran\n", result.stderr
    finally:
        supervisor.stop()


def test_requests_over_the_held_bytes_budget_are_refused(supervisor):
    """Running commands whose requests are as big as a command can be (1.75 MiB of environment, under
    ARG_MAX so that bash still execs): the supervisor keeps at most MAX_HELD_REQUEST_BYTES of them."""
    home = supervisor.home
    flag = home.work / "go"
    big = {f"BIG_{i}": "y" * (128 * 1024 - 16) for i in range(14)}
    request = _request(home, f"while [ ! -e {flag} ]; do sleep 0.05; done", **big)
    fits = server.MAX_HELD_REQUEST_BYTES // len(request)
    assert 1 <= fits < server.MAX_COMMANDS
    running = []
    try:
        for _ in range(fits):
            conn = _connect(supervisor.socket)
            conn.sendall(request)
            running.append(conn)
        for conn in running:
            assert isinstance(_reply(conn), protocol.Started)
        rss = _rss_mib(supervisor.process.pid)
        over = _connect(supervisor.socket)
        over.sendall(request)
        reply = _reply(over)
        assert isinstance(reply, protocol.Refused), reply
        assert f"over the {server.MAX_HELD_REQUEST_BYTES}-byte limit" in reply.reason
        over.close()
        print(f"{fits} running commands holding {fits * len(request)} request bytes: RSS {rss:.1f} MiB")
        # twin: a small request still fits, and once they have ended a big one is served again
        assert supervisor.shell("-c", "echo small").stdout == "small\n"
        flag.touch()
        for conn in running:
            assert _reply(conn) == protocol.Exited(code=0)
        again = _connect(supervisor.socket)
        again.sendall(request)
        assert isinstance(_reply(again), protocol.Started) and _reply(again) == protocol.Exited(code=0)
        again.close()
    finally:
        for conn in running:
            conn.close()


# ---- refused requests release what they took (issue 23, finding 2) ------------------------------------

# Runs inside a command: COUNT connections of KIND, each refused (or cut) by the supervisor; prints
# "KIND refused=N" with how many got a Refused. Frames are built by hand: the client's RunRequest would
# refuse some of them itself.
REFUSALS = r"""
import json, os, socket, struct, sys
kind, count = sys.argv[1], int(sys.argv[2])
run = {"type": "run", "shell": "bash", "argv": ["bash", "-c", "sleep 30"], "cwd": os.getcwd(),
       "env": {"PATH": os.environ["PATH"]}, "stdio": [], "tty": {}}

def frame(**fields):
    body = json.dumps({**run, **fields}).encode()
    return struct.pack(">I", len(body)) + body

sent = {
    "nul-argv": frame(argv=["bash", "-c", "true\0"]),
    "nul-env": frame(env={"A": "x\0y"}),
    "nul-cwd": frame(cwd=os.getcwd() + "\0x"),
    "missing-cwd": frame(cwd="/nonexistent-nono-cwd"),  # the spawn fails at chdir
    "malformed": struct.pack(">I", 5) + b"hello",
    "fds-missing": frame(stdio=[0, 1, 2]),  # names three, carries none
    "fds-extra": frame(),  # names none, carries one
    "gone-mid-request": frame()[:20],
    "gone-mid-command": frame(),  # started, then its client is gone: the tree is killed
}[kind]
refused = 0
for _ in range(count):
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(os.environ["NONO_SOCKET"])
    if kind == "fds-extra":
        s.sendmsg([sent], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, struct.pack("i", 0))])
    else:
        s.sendall(sent)
    if kind == "gone-mid-command":
        s.recv(4096)  # Started
    elif kind != "gone-mid-request":
        reply = b""
        while chunk := s.recv(4096):
            reply += chunk
        refused += b'"type":"refused"' in reply.replace(b" ", b"")
    s.close()
print(f"{kind} refused={refused}", flush=True)
"""
# kind -> connections: the NUL case at the count that took the supervisor to 1,014 fds, the rest fewer
# (a refused spawn or a started command costs a keeper each).
FLOODS = {
    "nul-argv": 2000,
    "nul-env": 300,
    "nul-cwd": 300,
    "missing-cwd": 200,
    "malformed": 300,
    "fds-missing": 300,
    "fds-extra": 300,
    "gone-mid-request": 300,
    "gone-mid-command": 50,
}


def _settled_fds(pid: int) -> int:
    """The supervisor's open fds once the count holds still (commands being killed close theirs late)."""
    last = -1
    while (count := len(os.listdir(f"/proc/{pid}/fd"))) != last:
        last = count
        time.sleep(0.3)
    return count


def _flood_refusals(supervisor, counts: dict[str, int]) -> str:
    script = supervisor.home.work / "refusals.py"
    script.write_text(REFUSALS)
    lines = []
    for kind, count in counts.items():
        result = supervisor.shell(
            "-c", f"exec python3 {script} {kind} {count}", cwd=supervisor.home.work, timeout=300
        )
        assert result.returncode == 0, result.stderr
        lines.append(result.stdout.strip())
        if kind.startswith("gone"):
            continue
        assert lines[-1] == f"{kind} refused={count}", lines[-1]
    return "; ".join(lines)


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_refused_requests_from_inside_leave_the_supervisor_flat(request, user):
    """Every refusal path, flooded from inside a command (2,000 NUL requests among them): the supervisor's
    fd count returns to what it was and its RSS stays flat, and a command from outside is still served."""
    supervisor = request.getfixturevalue("nobody_supervisor" if user else "supervisor")
    pid = supervisor.process.pid
    _flood_refusals(supervisor, dict.fromkeys(FLOODS, 20))  # warm-up: threads, plans and caches exist
    fds, rss = _settled_fds(pid), _rss_mib(pid)
    summary = _flood_refusals(supervisor, FLOODS)
    after_fds, after_rss = _settled_fds(pid), _rss_mib(pid)
    print(f"fds {fds} -> {after_fds}, RSS MiB {rss:.1f} -> {after_rss:.1f}; {summary}")
    assert after_fds <= fds, f"the supervisor holds {after_fds - fds} more fds"
    assert after_rss < rss + 8
    outside = supervisor.shell("-c", "echo served")
    assert outside.returncode == 0 and outside.stdout == "served\n", outside.stderr


def test_a_nul_byte_is_a_bad_request_in_one_line(supervisor):
    conn = _connect(supervisor.socket)
    body = _request(supervisor.home)[4:].replace(b'"true"', b'"tr\\u0000ue"')
    conn.sendall(struct.pack(">I", len(body)) + body)
    reply = _reply(conn)
    assert isinstance(reply, protocol.Refused)
    assert reply.reason == "bad request: run: argv, cwd and env may not hold a NUL byte"
    conn.close()
    assert supervisor.shell("-c", "echo served").stdout == "served\n"  # the twin: the same without the NUL


# ---- the audit log ----------------------------------------------------------------------------------


def test_unwritable_audit_log_says_so_once_and_keeps_serving(nobody_supervisor):
    """chmod 000 on audit.jsonl under a supervisor that runs as uid 65534: a command with a denial still
    completes, later commands are still trapped and answered (no ENOSYS from a dead notify thread), the
    supervisor says so once, and the log counts what it lost once it can be written again."""
    supervisor, home = nobody_supervisor, nobody_supervisor.home
    assert supervisor.shell("-c", "true").returncode == 0
    assert home.audit_log.exists()
    home.audit_log.chmod(0)
    for _ in range(2):
        result = supervisor.shell("-c", "cat README; cat ~/.ssh/id_rsa; echo rc=$?")
        assert result.returncode == 0, result.stderr
        assert result.stdout == "a file in the workdir\nrc=1\n"
        assert "nono: denied read ~/.ssh/id_rsa" in result.stderr and FAKE_KEY not in result.stdout
        assert "Function not implemented" not in result.stderr
    errors = [
        line
        for line in supervisor.stderr_path.read_text().splitlines()
        if line.startswith("nono-supervisor: audit")
    ]
    assert errors == [
        f"nono-supervisor: audit log {home.audit_log}: Permission denied; "
        "not recording until it is writable again"
    ], errors
    home.audit_log.chmod(0o600)
    assert supervisor.shell("-c", "echo back").stdout == "back\n"
    lost = [r for r in home.audit() if r.get("event") == "audit-lost"]
    assert len(lost) == 1 and lost[0]["records"] >= 6, lost  # 2 x (start, deny, exit) at least


def test_twin_writable_audit_log_records_the_denial(nobody_supervisor):
    supervisor, home = nobody_supervisor, nobody_supervisor.home
    result = supervisor.shell("-c", "cat ~/.ssh/id_rsa; echo rc=$?")
    assert result.stdout == "rc=1\n"
    assert any(r.get("decision") == "deny" and r.get("path") == str(home.key) for r in home.audit())
    assert "audit log" not in supervisor.stderr_path.read_text()


def test_audit_write_never_raises(tmp_path, capfd):
    from nono_supervisor.audit import AuditLog

    log = AuditLog(tmp_path / "audit.jsonl", "s1")  # creates the file: it can be written at start
    (tmp_path / "audit.jsonl").unlink()
    (tmp_path / "audit.jsonl").mkdir()  # EISDIR even for root
    assert log.write(event="a") is False
    assert log.write(event="b", what=object()) is False  # not JSON: a bug, still no exception
    assert log.write(event="c") is False
    err = capfd.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith(f"nono-supervisor: audit log {tmp_path / 'audit.jsonl'}: ")
    (tmp_path / "audit.jsonl").rmdir()
    assert log.write(event="d") is True
    lines = (tmp_path / "audit.jsonl").read_text().splitlines()
    assert len(lines) == 2 and '"event":"audit-lost","records":3' in lines[0] and '"event":"d"' in lines[1]


if __name__ == "__main__":  # pragma: no cover
    sys.exit(pytest.main([__file__, "-v", "-s"]))


def test_a_second_supervisor_on_a_live_socket_refuses_in_one_line_and_the_first_keeps_serving(supervisor):
    """The socket is bound under a temporary name and renamed into place without replacing: its name
    never stands for a socket that does not listen yet, and a live one is never taken over."""
    second = supervisor.home.run([SUPERVISOR, "serve", "--socket", str(supervisor.socket)], timeout=20)
    assert second.returncode == 125, second.stderr
    assert second.stderr.strip().count("\n") == 0 and "Address already in use" in second.stderr
    assert supervisor.shell("-c", "echo still-served").stdout == "still-served\n"  # the twin: the first
    assert sorted(p.name for p in supervisor.socket.parent.iterdir()) == [supervisor.socket.name]
