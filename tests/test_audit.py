"""The audit log stays valid JSON lines through a full disk, a deleted directory, other writers and rotation
(issue 23, finding 4), and ``log`` streams it across the rotated files."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import NOBODY, SUPERVISOR, Supervisor, as_nobody, wait_until
from nono_supervisor.audit import ROTATED_KEPT, AuditLog, log_files

# Run in a private mount namespace on a 64 KiB tmpfs: one record, then a filler file takes every free page,
# so the records that follow fill what is left of the log's last page (the one that crosses it is a short
# write), then fail with ENOSPC; the filler goes and one more record is written.
_FILL_THE_DISK = textwrap.dedent(
    """
    import json, os, sys
    from pathlib import Path
    from nono_supervisor.audit import AuditLog
    disk = Path(sys.argv[1])
    log = AuditLog(disk / "nono-shell" / "audit.jsonl", "s1")
    written = [log.write(event="first")]
    fd = os.open(disk / "filler", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        while True:
            os.write(fd, bytes(4096))
    except OSError:
        pass
    os.close(fd)
    written += [log.write(event="full", n=n, pad="x" * 300) for n in range(40)]
    os.unlink(disk / "filler")
    written.append(log.write(event="after"))
    print(json.dumps({"written": written, "log": log.path.read_text()}))
    """
)


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_a_full_disk_leaves_every_line_json_and_the_lost_count_readable(request, user):
    """Before: the short write stayed in the file and the audit-lost record was glued onto it."""
    if os.geteuid() != 0 or shutil.which("unshare") is None:
        pytest.skip("needs root and unshare(1) to mount a small tmpfs in a private mount namespace")
    home = request.getfixturevalue("nobody_home" if user else "home")  # a root uid 65534 reaches
    disk = home.root / "disk"
    disk.mkdir()
    owner = NOBODY if user else 0
    writer = [sys.executable, "-c", _FILL_THE_DISK, str(disk)]
    mount = f'mount -t tmpfs -o size=64k,mode=0755,uid={owner},gid={owner} tmpfs "$0" && exec "$@"'
    result = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "sh", "-c", mount, str(disk)]
        + (as_nobody(writer) if user else writer),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    written, lines = out["written"], out["log"].splitlines()
    records = [json.loads(line) for line in lines]  # every line is a whole JSON object
    full = written[1:-1]
    assert written[0] and written[-1] and any(full) and not all(full), written  # the disk did fill up
    assert [r["event"] for r in records] == ["first"] + ["full"] * sum(full) + ["audit-lost", "after"]
    assert [r["n"] for r in records if r["event"] == "full"] == list(range(sum(full)))
    assert records[-2]["records"] == full.count(False)
    assert result.stderr.count("No space left on device") == 1  # said once


def test_a_supervisor_whose_disk_fills_keeps_serving_and_its_log_stays_json(home):
    """End to end: serve with its audit log on a 64 KiB tmpfs of its own mount namespace; the disk fills
    mid-session (a filler file written from inside that namespace), commands with denials go on being
    enforced and reported, the filler goes, and the log read back holds only whole records and one
    audit-lost record with a count."""
    if os.geteuid() != 0 or shutil.which("unshare") is None or shutil.which("nsenter") is None:
        pytest.skip("needs root, unshare(1) and nsenter(1) for a tmpfs in a private mount namespace")
    disk, run_dir, shims = home.root / "disk", home.root / "run", home.root / "shims"
    disk.mkdir()
    run_dir.mkdir(mode=0o700)
    shims.mkdir()
    log, socket_path, errors = disk / "audit.jsonl", run_dir / "socket", home.root / "supervisor.err"
    mount = 'mount -t tmpfs -o size=64k tmpfs "$0" && exec "$@"'
    serve = [
        SUPERVISOR,
        "serve",
        "--socket",
        str(socket_path),
        "--shims",
        str(shims),
        "--audit-log",
        str(log),
    ]
    with errors.open("wb") as err:
        process = subprocess.Popen(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", mount, str(disk), *serve],
            env=home.env,
            cwd=home.work,
            stderr=err,
        )
    supervisor = Supervisor(home, process, socket_path, shims, errors)
    inside = ["nsenter", f"--mount=/proc/{process.pid}/ns/mnt"]  # sh exec'd the supervisor: the same pid
    try:
        assert wait_until(socket_path.exists, 20), errors.read_text()

        def denied() -> None:
            result = supervisor.shell("-c", "cat ~/.ssh/id_rsa; echo rc=$?")
            assert result.stdout == "rc=1\n" and "nono: denied read ~/.ssh/id_rsa" in result.stderr

        denied()
        subprocess.run([*inside, "sh", "-c", f"cat /dev/zero > {disk}/filler"], capture_output=True)
        for _ in range(12):  # about 3 records each: what is left of the log's last page, then ENOSPC
            denied()
        subprocess.run([*inside, "rm", f"{disk}/filler"], check=True)
        denied()
        text = subprocess.run([*inside, "cat", str(log)], capture_output=True, text=True, check=True).stdout
    finally:
        supervisor.stop()
    records = [json.loads(line) for line in text.splitlines()]  # every line whole
    lost = [r for r in records if r.get("event") == "audit-lost"]
    assert len(lost) == 1 and lost[0]["records"] > 0, lost
    denials = [r for r in records if r.get("decision") == "deny" and r.get("path") == str(home.key)]
    assert 2 <= len(denials) < 14  # the first, some while the page had room, the last; not all 14
    assert errors.read_text().count("No space left on device; not recording until it is writable again") == 1


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_a_deleted_state_directory_is_created_again_mid_session(request, user):
    """Before: every record after ``rm -rf ~/.local/state`` was lost for the rest of the session."""
    supervisor = request.getfixturevalue("nobody_supervisor" if user else "supervisor")
    home = supervisor.home
    assert supervisor.shell("-c", "true").returncode == 0 and home.audit_log.exists()
    shutil.rmtree(home.audit_log.parent.parent)
    result = supervisor.shell("-c", "cat ~/.ssh/id_rsa; echo rc=$?")
    assert result.stdout == "rc=1\n"
    assert any(r.get("decision") == "deny" and r.get("path") == str(home.key) for r in home.audit())
    assert stat.S_IMODE(home.audit_log.parent.stat().st_mode) == 0o700
    assert home.audit_log.parent.stat().st_uid == (NOBODY if user else 0)


def _records(path: Path) -> list[dict]:
    return [json.loads(line) for name in log_files(path) if name.exists() for line in name.open("rb")]


def test_rotation_keeps_the_newest_records_within_the_bound(tmp_path):
    path = tmp_path / "audit.jsonl"
    log = AuditLog(path, "s1", max_bytes=1000)
    for n in range(100):
        assert log.write(event="e", n=n)
    assert all(name.exists() and name.stat().st_size <= 1000 for name in log_files(path))
    assert not path.with_name("audit.jsonl.4").exists()
    numbers = [r["n"] for r in _records(path)]
    assert numbers == list(range(numbers[0], 100)) and numbers[0] > 0  # the oldest file went, in order
    assert len(log_files(path)) == ROTATED_KEPT + 1


def test_two_supervisors_rotating_one_log_lose_and_cut_nothing(tmp_path):
    """Several sessions append to one file: a writer that waited for the lock while another rotated writes
    into the new file, never into the renamed one past the bound nor a half line."""
    path = tmp_path / "audit.jsonl"
    code = textwrap.dedent(
        """
        import sys
        from pathlib import Path
        from nono_supervisor.audit import AuditLog
        log = AuditLog(Path(sys.argv[1]), sys.argv[2], max_bytes=20000)
        assert all(log.write(event="e", n=n) for n in range(300))
        """
    )
    writers = [subprocess.Popen([sys.executable, "-c", code, str(path), name]) for name in ("a", "b")]
    assert [w.wait(60) for w in writers] == [0, 0]
    seen = [(r["session"], r["n"]) for r in _records(path)]
    assert sorted(seen) == sorted((s, n) for s in "ab" for n in range(300))  # ~55 KB: nothing dropped yet
    assert path.with_name("audit.jsonl.1").exists()


def test_a_line_left_unfinished_by_another_writer_does_not_swallow_the_next_record(tmp_path):
    path = tmp_path / "audit.jsonl"
    path.write_text('{"event":"whole"}\n{"event":"cut sho')
    assert AuditLog(path, "s1").write(event="next")
    lines = path.read_text().splitlines()
    assert lines[-1].startswith('{"time"') and json.loads(lines[-1])["event"] == "next"
    result = subprocess.run(
        [SUPERVISOR, "log", "--json", "--audit-log", str(path)], capture_output=True, text=True, timeout=30
    )
    assert [json.loads(line)["event"] for line in result.stdout.splitlines()] == ["whole", "next"]
    assert result.stderr == f"nono-supervisor: {path}: 1 lines are not JSON records (skipped)\n"


def test_log_reads_the_rotated_files_oldest_first_and_says_what_was_lost(tmp_path):
    path = tmp_path / "audit.jsonl"
    for n, name in enumerate(reversed(log_files(path))):  # audit.jsonl newest ... audit.jsonl.3 oldest
        name.write_text(json.dumps({"event": "e", "command": f"c{n}", "time": "t"}) + "\n")
    with path.open("a") as f:
        f.write(json.dumps({"event": "audit-lost", "records": 7, "time": "t"}) + "\n")
    result = subprocess.run(
        [SUPERVISOR, "log", "--audit-log", str(path)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0 and result.stderr == ""
    assert [line.split()[1] for line in result.stdout.splitlines()] == ["c3", "c2", "c1", "c0", "None"]
    assert "audit-lost: 7 records could not be written" in result.stdout


def test_log_streams_a_large_log_in_constant_memory(tmp_path):
    """``log`` read the whole file (and split it) in memory: 40 MB of log took over 100 MB."""
    path = tmp_path / "audit.jsonl"
    record = json.dumps({"event": "e", "time": "t", "command": "c", "pad": "x" * 900}) + "\n"
    with path.open("w") as f:
        for _ in range(40):
            f.write(record * 1000)  # 40,000 records of about 1 KB
    measure = textwrap.dedent(
        """
        import sys
        from nono_supervisor.cli import main
        try:
            main()
        finally:  # this image's own peak (ru_maxrss would count the forking pytest's too)
            with open("/proc/self/status") as status:
                print(next(line.split()[1] for line in status if line.startswith("VmHWM:")), file=sys.stderr)
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", measure, "log", "--audit-log", str(path)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert int(result.stderr.split()[-1]) < 40 * 1024, result.stderr  # KiB: the interpreter and a line


def test_audit_log_max_rotates_the_supervisors_log(home):
    log = home.root / "audit.jsonl"
    for _ in range(8):
        result = home.run(
            [SUPERVISOR, "exec", "--audit-log", str(log), "--audit-log-max", "1K", "--", "true"]
        )
        assert result.returncode == 0, result.stderr
    assert log.with_name("audit.jsonl.1").exists()
    assert all(name.stat().st_size <= 1024 for name in log_files(log) if name.exists())
    bad = home.run([SUPERVISOR, "exec", "--audit-log-max", "lots", "--", "true"])
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "--audit-log-max" in bad.stderr
