"""Undo (issue 25): real commands through a real supervisor change the workdir, `undo` puts it back.

Each scenario compares the whole tree file by file with its state before the command (type, content,
mode, mtime to the nanosecond, symlink targets). Directories are compared by name and mode: their mtime
moves whenever an entry inside is made or removed, which undo puts back only for the directories a command
itself made, removed or re-moded (README "Undo").
"""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import threading
import time
from pathlib import Path

import pytest

from conftest import NOBODY, SUPERVISOR, Home, start_supervisor, wait_until


def snapshot(root: Path) -> dict[str, tuple]:
    """Every entry under ``root``: (type, content or target, mode, mtime_ns); a directory's mtime left out."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            relative = os.path.relpath(path, root)
            if stat.S_ISLNK(st.st_mode):
                out[relative] = ("link", os.readlink(path), st.st_mtime_ns)
            elif stat.S_ISDIR(st.st_mode):
                out[relative] = ("dir", stat.S_IMODE(st.st_mode))
            else:
                out[relative] = ("file", Path(path).read_bytes(), stat.S_IMODE(st.st_mode), st.st_mtime_ns)
    return out


def cli(home: Home, *args: str) -> subprocess.CompletedProcess:
    """``nono-supervisor ARGS`` as the user the home belongs to (the human at another terminal)."""
    return home.run([SUPERVISOR, *args], user=home.owner == NOBODY)


def command_ids(home: Home, marker: str) -> list[str]:
    """The ids of the commands whose argv holds ``marker``, from the audit log (start records)."""
    return [
        r["command"]
        for r in home.audit()
        if r.get("event") == "start" and marker in " ".join(r.get("argv") or [])
    ]


def undo_ok(home: Home, *args: str) -> str:
    result = cli(home, "undo", *args)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def make_tree(work: Path) -> None:
    (work / "src" / "lib").mkdir(parents=True)
    for i in range(5):
        (work / "src" / f"f{i}.c").write_text(f"int f{i}(void) {{ return {i}; }}\n")
        (work / "src" / "lib" / f"g{i}.h").write_text(f"#define G{i} {i}\n")
    os.chmod(work / "src" / "f1.c", 0o640)
    os.chmod(work / "src" / "lib", 0o750)
    os.symlink("f0.c", work / "src" / "alias.c")
    os.utime(work / "src" / "f2.c", ns=(1_000_000_000, 1_234_567_891_011_121_314))


def chown_tree(home: Home) -> None:
    if home.owner:
        for path in [home.work, *home.work.rglob("*")]:
            os.lchown(path, home.owner, home.owner)


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_undo_puts_back_a_tree_removed_by_rm_rf(request, user):
    home = request.getfixturevalue("nobody_home" if user else "home")
    make_tree(home.work)
    chown_tree(home)
    before = snapshot(home.work)
    sup = start_supervisor(home)
    try:
        assert sup.shell("-c", "rm -rf src").returncode == 0
        assert not (home.work / "src").exists()
        listed = json.loads(cli(home, "changes", "--json").stdout)
        assert {c["change"] for c in listed["changes"]} == {"deleted"}
        assert str(home.work / "src" / "lib" / "g3.h") in {c["path"] for c in listed["changes"]}
        undo_ok(home)
        assert snapshot(home.work) == before
    finally:
        sup.stop()


def test_twin_rm_rf_without_undo_loses_the_tree(home):
    """The bare twin: --no-undo records nothing, and nothing can be put back."""
    make_tree(home.work)
    sup = start_supervisor(home, "--no-undo")
    try:
        assert sup.shell("-c", "rm -rf src").returncode == 0
        result = cli(home, "undo")
        assert result.returncode == 1 and "nono-supervisor: " in result.stderr
        assert not (home.work / "src").exists()
    finally:
        sup.stop()


def git(home: Home, *args: str) -> None:
    env = {**home.env, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t"}
    env["GIT_COMMITTER_EMAIL"] = "t@t"
    subprocess.run(["git", *args], cwd=home.work, env=env, check=True, capture_output=True)


@pytest.mark.parametrize("throw_away", ["git reset --hard", "git checkout ."])
def test_undo_brings_back_edits_git_threw_away(supervisor, throw_away):
    home = supervisor.home
    make_tree(home.work)
    git(home, "init", "-q")
    git(home, "add", "-A")
    git(home, "commit", "-qm", "base")
    (home.work / "src" / "f3.c").write_text("int f3(void) { return 42; } /* an edit */\n")
    os.chmod(home.work / "src" / "f4.c", 0o600)
    (home.work / "src" / "lib" / "g0.h").unlink()
    git(home, "status", "--porcelain")  # refreshes the index by hand, as the human's own git would
    before = snapshot(home.work)
    assert supervisor.shell("-c", throw_away).returncode == 0
    assert "an edit" not in (home.work / "src" / "f3.c").read_text()
    undo_ok(home)
    assert snapshot(home.work) == before


def test_undo_of_sed_in_place_over_200_files(supervisor):
    home = supervisor.home
    (home.work / "pkg").mkdir()
    for i in range(200):
        (home.work / "pkg" / f"m{i:03}.py").write_text(f"OLD_NAME = {i}\nprint(OLD_NAME)\n")
    before = snapshot(home.work)
    assert supervisor.shell("-c", "sed -i s/OLD_NAME/new_name/g pkg/*.py").returncode == 0
    assert "new_name" in (home.work / "pkg" / "m199.py").read_text()
    listed = json.loads(cli(home, "changes", "--json").stdout)["changes"]
    assert sum(c["change"] in ("modified", "replaced") for c in listed) == 200
    undo_ok(home)
    assert snapshot(home.work) == before


def test_undo_of_a_rename_chain_and_a_new_file_in_the_old_place(supervisor):
    home = supervisor.home
    (home.work / "a").write_text("the first a\n")
    os.chmod(home.work / "a", 0o604)
    before = snapshot(home.work)
    assert supervisor.shell("-c", "mv a b && mv b c && echo 'a new a' > a").returncode == 0
    assert (home.work / "c").read_text() == "the first a\n"
    undo_ok(home)
    assert snapshot(home.work) == before


def test_undo_of_a_truncated_binary_file(supervisor):
    home = supervisor.home
    blob = bytes(range(256)) * 4096  # 1 MiB, every byte value
    (home.work / "data.bin").write_bytes(blob)
    before = snapshot(home.work)
    assert supervisor.shell("-c", "truncate -s 100 data.bin && : > README").returncode == 0
    assert (home.work / "data.bin").stat().st_size == 100
    undo_ok(home)
    assert snapshot(home.work) == before


def test_undo_of_a_directory_replaced_by_a_file(supervisor):
    home = supervisor.home
    make_tree(home.work)
    before = snapshot(home.work)
    assert supervisor.shell("-c", "rm -rf src && echo 'now a file' > src").returncode == 0
    assert (home.work / "src").is_file()
    undo_ok(home)
    assert snapshot(home.work) == before


def test_undo_of_a_command_still_running_is_refused_with_a_line(supervisor):
    home = supervisor.home
    flag = home.work / "started"
    runner = threading.Thread(
        target=supervisor.shell, args=("-c", "echo x > started; sleep 20 # long-runner")
    )
    runner.start()
    try:
        assert wait_until(flag.exists)
        (command,) = command_ids(home, "long-runner")
        result = cli(home, "undo", command)
        assert result.returncode == 1
        assert (
            result.stderr.strip() == f"nono-supervisor: {command} is still running: undo it once it has ended"
        )
        assert flag.exists()
        # a running command's files made on the C fast path are listed within a second (README "Undo")
        listed = lambda: json.loads(cli(home, "changes", command, "--json").stdout)  # noqa: E731
        assert wait_until(lambda: listed()["changes"])
        assert listed()["state"] == "running" and listed()["changes"][0]["change"] == "created"
    finally:
        for record in home.audit():  # the command's main process (its keeper ends the rest)
            if record.get("event") == "start" and "long-runner" in " ".join(record.get("argv") or []):
                os.kill(record["pid"], signal.SIGTERM)
        runner.join(30)


def test_two_concurrent_commands_are_each_undone_alone(supervisor):
    home = supervisor.home
    (home.work / "one").write_text("one before\n")
    (home.work / "two").write_text("two before\n")
    before = snapshot(home.work)
    go = home.work / "go"
    scripts = [
        f"while [ ! -e go ]; do sleep 0.05; done; echo changed > {name}; echo new > {name}.new # conc-{name}"
        for name in ("one", "two")
    ]
    runners = [threading.Thread(target=supervisor.shell, args=("-c", s)) for s in scripts]
    for r in runners:
        r.start()
    assert wait_until(lambda: len(command_ids(home, "conc-")) == 2)
    go.write_text("")
    for r in runners:
        r.join(60)
    go.unlink()
    (first,) = command_ids(home, "conc-one")
    (second,) = command_ids(home, "conc-two")
    undo_ok(home, first)
    after_first = snapshot(home.work)
    assert after_first["one"] == before["one"] and "one.new" not in after_first
    assert after_first["two"][1] == b"changed\n" and "two.new" in after_first
    undo_ok(home, second)
    assert snapshot(home.work) == before


def test_a_later_change_to_the_same_file_is_refused_without_force(supervisor):
    home = supervisor.home
    (home.work / "notes").write_text("the original\n")
    before = snapshot(home.work)
    assert supervisor.shell("-c", "echo 'by the command' > notes # first").returncode == 0
    (first,) = command_ids(home, "# first")
    time.sleep(0.01)
    (home.work / "notes").write_text("by hand, later\n")
    result = cli(home, "undo", first)
    assert result.returncode == 1
    assert f"changed since by a later command or by hand: {home.work / 'notes'}" in result.stderr
    assert (home.work / "notes").read_text() == "by hand, later\n"
    # a later command's change to it is refused the same way
    (home.work / "notes").write_text("by the command\n")
    assert supervisor.shell("-c", "echo 'a second command' >> notes").returncode == 0
    assert cli(home, "undo", first).returncode == 1
    undo_ok(home, first, "--force")
    assert snapshot(home.work) == before


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_undo_of_an_undo_redoes(request, user):
    home = request.getfixturevalue("nobody_home" if user else "home")
    make_tree(home.work)
    chown_tree(home)
    before = snapshot(home.work)
    sup = start_supervisor(home)
    try:
        assert (
            sup.shell("-c", "rm -rf src/lib && mv src/f0.c src/moved.c && chmod 600 src/f3.c").returncode == 0
        )
        done = snapshot(home.work)
        undo_ok(home)
        assert snapshot(home.work) == before
        undo_ok(home)  # the last command that changed anything is now the undo: undoing it redoes
        assert snapshot(home.work) == done
        audit = [r for r in home.audit() if r.get("event") == "undo"]
        assert len(audit) == 2 and audit[1]["of"] == audit[0]["command"]
    finally:
        sup.stop()


def test_what_was_not_kept_is_said_plainly(home):
    """Over the store's cap, a file's old content is not kept, and undo says so by name."""
    profile = home.root / "small.toml"
    profile.write_text('extends = "default"\n[undo]\nmax_mb = 1\n')
    (home.work / "big.bin").write_bytes(b"x" * (2 << 20))
    (home.work / "small").write_text("small before\n")
    sup = start_supervisor(home, "--profile", str(profile))
    try:
        assert sup.shell("-c", ": > big.bin; echo after > small").returncode == 0
        listed = cli(home, "changes").stdout
        assert "(not kept: over the store's cap of 1 MiB)" in listed
        result = cli(home, "undo")
        assert result.returncode == 1
        assert (
            f"not restored: {home.work / 'big.bin'} (not kept: over the store's cap of 1 MiB)"
            in result.stdout
        )
        assert (home.work / "small").read_text() == "small before\n"
    finally:
        sup.stop()


def store_of(home: Home) -> Path:
    (store,) = (home.home / ".local" / "state" / "nono-shell" / "undo").glob("*/journal.jsonl")
    return store.parent


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_the_store_is_unreadable_and_unwritable_from_a_command(request, user):
    """Even with the whole home granted (--allow ~): the store is sealed."""
    home = request.getfixturevalue("nobody_home" if user else "home")
    (home.work / "f").write_text("old content, kept in the store\n")
    chown_tree(home)
    sup = start_supervisor(home, "--allow", str(home.home))
    try:
        assert sup.shell("-c", "echo new > f").returncode == 0
        store = store_of(home)
        journal = store / "journal.jsonl"
        (blob,) = os.listdir(store / "blobs")
        for attack in (
            f"cat {journal}",
            f"cat {store}/blobs/{blob}",
            f"ls {store}",
            f"echo forged >> {journal}",
            f"ln -s /etc {store}/blobs/x",
            f"rm -f {store}/blobs/{blob}",
        ):
            result = sup.shell("-c", attack)
            assert result.returncode != 0, attack
        assert "forged" not in journal.read_text()
        assert (store / "blobs" / blob).read_text() == "old content, kept in the store\n"
    finally:
        sup.stop()


def test_twin_the_store_is_readable_and_writable_bare(home):
    (home.work / "f").write_text("old content, kept in the store\n")
    sup = start_supervisor(home, "--allow", str(home.home))
    try:
        assert sup.shell("-c", "echo new > f").returncode == 0
        journal = store_of(home) / "journal.jsonl"
        bare = home.run(["bash", "-c", f"cat {journal} >/dev/null && echo '' >> {journal}"])
        assert bare.returncode == 0, bare.stderr
    finally:
        sup.stop()


def test_a_forged_record_cannot_make_undo_write_outside_the_trees(supervisor):
    """Were a record forged (the store is sealed: the test writes it as the user), undo still writes only
    inside the command's trees, never through a symlink, never where a path is never grantable."""
    home = supervisor.home
    outside = home.root / "outside"
    outside.mkdir()
    (outside / "victim").write_text("untouched\n")
    os.symlink(outside, home.work / "door")
    assert supervisor.shell("-c", "echo x > made").returncode == 0  # a real store exists
    store = store_of(home)
    (store / "blobs" / "planted").write_text("written by a forged record\n")
    session = json.loads((store / "session.json").read_text())["session"]
    forged = f"{session}-666"
    file_state = {"kind": "file", "blob": "planted", "mode": 0o644, "atime_ns": 0, "mtime_ns": 0, "size": 1}
    records = [{"event": "begin", "command": forged, "roots": [str(home.work)]}]
    for path in (outside / "victim", home.work / "door" / "victim", home.work / ".." / "outside" / "victim"):
        records.append(
            {"event": "change", "command": forged, "path": str(path), "op": "write", "before": file_state}
        )
    records.append(
        {
            "event": "change",
            "command": forged,
            "path": str(home.work / "door"),
            "op": "unlink",
            "before": {"kind": "absent"},
        }
    )
    records.append({"event": "end", "command": forged, "after": {}})
    with open(store / "journal.jsonl", "a") as f:
        f.writelines(json.dumps(r) + "\n" for r in records)
    result = cli(home, "undo", forged, "--force")
    assert (outside / "victim").read_text() == "untouched\n"
    assert "outside the trees the command could write" in result.stdout
    assert "not a plain absolute path" in result.stdout
    assert f"not restored: {home.work / 'door' / 'victim'}" in result.stdout  # the walk refuses the symlink
    assert not (home.work / "door").exists()  # the link itself is removed, never followed
    assert (outside / "victim").exists()


def test_a_denied_file_is_never_kept(home):
    """--deny inside the workdir: the command's tries on the file are refused and nothing of it is kept."""
    secret = home.work / "secret.txt"
    secret.write_text("nono-undo-denied-7c1e\n")
    sup = start_supervisor(home, "--deny", str(secret))
    try:
        sup.shell("-c", "rm -f secret.txt; echo x > secret.txt; mv secret.txt s2; chmod 600 secret.txt; true")
        assert secret.read_text() == "nono-undo-denied-7c1e\n"
        blobs = store_of(home) / "blobs"
        assert all(b"7c1e" not in p.read_bytes() for p in blobs.iterdir())
        assert str(secret) not in (store_of(home) / "journal.jsonl").read_text()
    finally:
        sup.stop()


def test_twin_the_same_file_not_denied_is_kept(home):
    secret = home.work / "secret.txt"
    secret.write_text("nono-undo-denied-7c1e\n")
    sup = start_supervisor(home)
    try:
        assert sup.shell("-c", "rm -f secret.txt").returncode == 0
        blobs = store_of(home) / "blobs"
        assert any(b"7c1e" in p.read_bytes() for p in blobs.iterdir())
    finally:
        sup.stop()


def test_rm_rf_and_creations_are_kept_without_a_wake_of_python(home):
    """The C fast path keeps files before an unlink, directories before an rmdir, and records creations
    itself: rm -rf of 300 files in 31 directories and 300 new files escalate a handful of calls, not one
    per file or directory (counted, not timed; bash and seq's own connect and /proc opens are 3)."""
    from conftest import start_sandboxed
    from nono_supervisor.policy.profile import PolicyOptions
    from nono_supervisor.session import Session
    from nono_supervisor.undo import Journal, changes

    # In a directory of the workdir: its root holds runs-later names (.mcp.json...), so Landlock gives the
    # root, and a directory made in it during the command, no create rights (README, Runs later): there
    # every creation is the supervisor's, which is what this test must not count.
    for d in range(30):
        (home.work / "tree" / "old" / f"d{d}").mkdir(parents=True)
        for i in range(10):
            (home.work / "tree" / "old" / f"d{d}" / f"f{i}").write_text(f"{i}\n")
    session = Session.create(PolicyOptions(), env=home.env, workdir=str(home.work))
    try:
        script = "cd tree && rm -rf old && mkdir new && for i in $(seq 300); do echo $i > new/f$i; done"
        argv = ["/bin/bash", "-c", script]
        undo = session.services.undo_log("t-1")
        process = start_sandboxed(session, argv[0], argv, home.env, str(home.work), (0, 1, 2), undo=undo)
        assert os.waitstatus_to_exitcode(process.wait()) == 0
        process.notify.join(10)
        stats = process.notify.native_stats
        assert stats["escalated"] < 10, stats
        journal = Journal(store_of(home))
        listed = changes(journal, journal.commands["t-1"])
        assert sum(c.change == "deleted" for c in listed) == 331
        assert sum(c.change == "created" for c in listed) == 301
    finally:
        session.close()


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_a_file_made_then_rewritten_is_undone_as_made(request, user):
    """The first open makes the file on the C fast path (queued for the drainer); the second finds it there
    and goes to Python, which keeps it first. The queued record is drained before that one, so the file's
    first state is 'absent' and undo removes it; in the other order undo would put back the command's own
    first content."""
    home = request.getfixturevalue("nobody_home" if user else "home")
    (home.work / "sub").mkdir()  # not the workdir's root, where the supervisor makes every file (runs later)
    chown_tree(home)
    before = snapshot(home.work)
    sup = start_supervisor(home)
    try:
        assert sup.shell("-c", "cd sub && echo first > n && echo second > n").returncode == 0
        undo_ok(home)
        assert snapshot(home.work) == before
    finally:
        sup.stop()


def test_a_directory_renamed_after_files_were_made_in_it_is_undone_in_order(supervisor):
    """Files made in a directory (queued by the C fast path), then the directory renamed (recorded by
    Python): the queued records inside it are drained first, because undo replays them backwards (the
    rename back, then the new files removed). In the other order the new files came back with it."""
    home = supervisor.home
    (home.work / "sub" / "d").mkdir(parents=True)
    (home.work / "sub" / "d" / "old").write_text("old\n")
    before = snapshot(home.work)
    script = "cd sub && echo new > d/new && mkdir d/deeper && echo x > d/deeper/x && mv d e"
    assert supervisor.shell("-c", script).returncode == 0
    assert (home.work / "sub" / "e" / "deeper" / "x").exists()
    undo_ok(home)
    assert snapshot(home.work) == before


def test_a_command_that_changes_nothing_writes_nothing_to_the_store(supervisor):
    """The per-command record is lazy: a command that only reads writes no line to the journal; changes ID
    still finds it (the audit log: ended, nothing changed) and undo ID says it changed nothing. Its twin, a
    command that writes, has its begin, change and end records."""
    home = supervisor.home
    (home.work / "sub").mkdir()
    (home.work / "sub" / "f").write_text("x\n")
    assert supervisor.shell("-c", "cat sub/f >/dev/null # reads-only").returncode == 0
    (command,) = command_ids(home, "reads-only")
    journal = store_of(home) / "journal.jsonl"
    assert journal.read_bytes() == b""
    listed = lambda: json.loads(cli(home, "changes", command, "--json").stdout)  # noqa: E731
    assert wait_until(lambda: listed()["state"] == "ended")  # its exit record follows its status
    assert listed() == {"command": command, "state": "ended", "changes": []}
    result = cli(home, "undo", command)
    assert result.returncode == 1 and f"{command} changed nothing that can be undone" in result.stderr
    assert "no such command" in cli(home, "changes", command + "9").stderr
    assert supervisor.shell("-c", "echo y > sub/f # writes").returncode == 0
    (writer,) = command_ids(home, "# writes")
    events = [json.loads(line)["event"] for line in journal.read_bytes().splitlines()]
    assert events == ["begin", "change", "end"]
    assert journal.read_bytes().count(writer.encode()) == 3


def test_git_status_leaves_nothing_in_the_store_and_git_add_is_undone(home):
    """git takes .git/index.lock at every status (made by the supervisor: a protected .git, README "Runs
    later") and unlinks it: a file the command made that is gone again at its end is dropped, so the
    store gets no line. Its twin, git add, renames the lock over the index: recorded, and undone."""
    make_tree(home.work)
    for path in home.work.rglob("*"):  # older than the index by seconds: no racily clean entry to refresh
        os.utime(path, (time.time() - 10,) * 2, follow_symlinks=False)
    git(home, "init", "-q")
    git(home, "add", "-A")
    git(home, "commit", "-qm", "base")
    sup = start_supervisor(home)
    try:
        assert sup.shell("-c", "git status --porcelain # status").returncode == 0
        assert (store_of(home) / "journal.jsonl").read_bytes() == b""
        (home.work / "src" / "f1.c").write_text("an edit\n")
        before = snapshot(home.work)
        assert sup.shell("-c", "git add src/f1.c").returncode == 0
        listed = json.loads(cli(home, "changes", "--json").stdout)["changes"]
        index = str(home.work / ".git" / "index")
        assert any(c["path"] == index and c["change"] in ("modified", "replaced") for c in listed)
        assert str(home.work / ".git" / "index.lock") not in {c["path"] for c in listed}
        undo_ok(home)
        assert snapshot(home.work) == before
    finally:
        sup.stop()


def test_redirects_to_dev_null_wake_no_one_and_keep_their_flags(home, tmp_path):
    """Every `>/dev/null` opens the null device for writing, which undo would trap (a wake of the
    supervisor per redirect, git's own open at each start another): the preloaded library opens it
    non-blocking, untrapped, and clears O_NONBLOCK at once. Counted (three such opens add no notification
    to the same command without them), and the descriptors' flags are the bare twin's (/proc's fdinfo)."""
    from conftest import start_sandboxed
    from nono_supervisor.policy.profile import PolicyOptions
    from nono_supervisor.session import Session

    flags = "grep flags /proc/self/fdinfo/3 /proc/self/fdinfo/4"
    nulls = f"echo x >/dev/null; exec 3>/dev/null 4<>/dev/null; {flags}"
    bare = subprocess.run(["/bin/bash", "-c", nulls], capture_output=True, text=True, check=True).stdout
    session = Session.create(PolicyOptions(allow=(str(tmp_path),)), env=home.env, workdir=str(home.work))

    def routed(script: str) -> tuple[int, str]:
        out = tmp_path / "out"
        fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        try:
            argv = ["/bin/bash", "-c", script]
            undo = session.services.undo_log(f"t-{len(script)}")
            process = start_sandboxed(
                session, argv[0], argv, home.env, str(home.work), (0, fd, 2), undo=undo, left_to_landlock=True
            )
            assert os.waitstatus_to_exitcode(process.wait()) == 0
        finally:
            os.close(fd)
        process.notify.join(10)
        return process.notify.native_stats["received"], out.read_text()

    try:
        with_nulls, output = routed(nulls)
        without, _ = routed(f"exec 3<&0 4<&0; {flags}")
        assert with_nulls == without
        assert output == bare and "flags:" in bare
    finally:
        session.close()


def test_the_profile_and_the_flag_turn_undo_off(home):
    off = home.root / "off.toml"
    off.write_text('extends = "default"\n[undo]\nenabled = false\n')
    policy = lambda *flags: json.loads(home.run([SUPERVISOR, "policy", "--format", "json", *flags]).stdout)  # noqa: E731
    assert policy()["undo"] is True
    assert policy("--no-undo")["undo"] is False
    assert policy("--profile", str(off))["undo"] is False
    bad = home.root / "bad.toml"
    bad.write_text('extends = "default"\n[undo]\nmax_gb = 3\n')
    result = home.run([SUPERVISOR, "policy", "--profile", str(bad)])
    assert result.returncode == 2 and "unknown key 'undo.max_gb'" in result.stderr


def test_undo_of_a_tree_removed_through_a_symlinked_name(supervisor):
    """The trees are recorded by their real paths; a command that names them through a symlink
    (``$PWD`` of a symlinked checkout) is recorded all the same."""
    home = supervisor.home
    make_tree(home.work)
    alias = home.root / "alias"
    os.symlink(home.work, alias)
    before = snapshot(home.work)
    assert supervisor.shell("-c", f"rm -rf {alias}/src && echo new > {alias}/added").returncode == 0
    assert not (home.work / "src").exists()
    undo_ok(home)
    assert snapshot(home.work) == before


def test_the_agents_own_writes_are_the_command_agent(home):
    """The agent's loop (every call trapped, the Python pipeline, no C fast path) records into ``agent``;
    undo of ``agent`` puts the tree back."""
    from conftest import start_sandboxed
    from nono_supervisor.launcher import _watching_loop
    from nono_supervisor.policy.profile import PolicyOptions
    from nono_supervisor.session import Session
    from nono_supervisor.undo import Journal, changes, undo

    make_tree(home.work)
    before = snapshot(home.work)
    session = Session.create(PolicyOptions(), env=home.env, workdir=str(home.work))
    try:
        argv = ["/bin/bash", "-c", "rm -rf src/lib && echo edited > src/f1.c && mkdir made && ln -s x made/l"]
        log = session.services.undo_log("agent")
        loop = _watching_loop(lambda tid, raw: None)
        env = session.services.command_env(home.env)
        process = start_sandboxed(
            session, argv[0], argv, env, str(home.work), (0, 1, 2), notify_class=loop, undo=log
        )
        assert os.waitstatus_to_exitcode(process.wait()) == 0
        process.notify.join(10)
        assert process.notify.native_stats == {}  # the Python pipeline saw every call
        journal = Journal(store_of(home))
        agent = journal.commands["agent"]
        listed = {c.path: c.change for c in changes(journal, agent)}
        assert listed[str(home.work / "src" / "f1.c")] == "modified"
        assert listed[str(home.work / "made")] == "created"
        undo(journal, agent)
        assert snapshot(home.work) == before
    finally:
        session.close()


def test_contents_past_the_age_limit_are_given_up_and_said_so(tmp_path):
    """[undo] max_age_hours: a kept content older than the limit is removed at the next command's start,
    and the path is then listed as not kept (no sandbox needed: the store alone)."""
    from nono_supervisor.undo import CommandLog, Journal, Limits, Store, changes

    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_text("old\n")
    store_dir = tmp_path / "store"
    store = Store(store_dir, Limits(max_age=0.05))
    (store_dir / "session.json").write_text(json.dumps({"session": "s", "pid": 0}))
    log = CommandLog(store, "s-1", (str(tree),)).begin()
    fd = os.open(tree, os.O_PATH)
    try:
        log.before(fd, "f", str(tree / "f"), "write")
    finally:
        os.close(fd)
    (tree / "f").write_text("new\n")
    log.finish()
    assert len(os.listdir(store_dir / "blobs")) == 1
    time.sleep(0.1)
    CommandLog(store, "s-2", (str(tree),)).begin()  # a later command's start prunes
    store.close()
    assert os.listdir(store_dir / "blobs") == []
    journal = Journal(store_dir)
    (change,) = changes(journal, journal.commands["s-1"])
    assert change.change == "modified" and change.lost == "older than the store's age limit"


def test_undo_never_writes_through_a_symlink_planted_in_the_tree(supervisor):
    """A command removes a/x, and later a/ becomes a symlink to a directory outside (by hand here, or by
    a later command): undo --force restores nothing through it, and the outside stays as it was."""
    home = supervisor.home
    outside = home.root / "outside"
    outside.mkdir()
    (home.work / "a").mkdir()
    (home.work / "a" / "x").write_text("kept\n")
    assert supervisor.shell("-c", "rm a/x # plant").returncode == 0
    (home.work / "a").rmdir()
    os.symlink(outside, home.work / "a")
    (first,) = command_ids(home, "# plant")
    result = cli(home, "undo", first, "--force")
    assert result.returncode == 1 and f"not restored: {home.work / 'a' / 'x'}" in result.stdout
    assert os.listdir(outside) == []
    assert os.readlink(home.work / "a") == str(outside)


def test_twin_undo_restores_the_same_file_when_no_symlink_was_planted(supervisor):
    home = supervisor.home
    (home.work / "a").mkdir()
    (home.work / "a" / "x").write_text("kept\n")
    before = snapshot(home.work)
    assert supervisor.shell("-c", "rm a/x").returncode == 0
    undo_ok(home)
    assert snapshot(home.work) == before
