"""Opens and execve left to Landlock (issue 13): an open/openat (but for unmarked listings, exclusive
opens, tmpfiles and setid creations), and an execve, are not trapped for a command. The kernel still
enforces every denial; where the process is dynamically linked, the ask-again library (_askagain.c) asks
again through the supervisor (a listing it makes itself carries seccomp.LISTING_MARK and is made again
unmarked), so the denial is reported (an open is also asked about, and a grant the baseline cannot
express is emulated) as when every call was trapped; a static binary, and an exec inside posix_spawn, get
the kernel's EACCES alone (the documented loss). With a multi-linked denied file, and for the agent,
every call is trapped again. No timing here."""

from __future__ import annotations

import errno
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import FAKE_KEY, SUPERVISOR, run_sandboxed, syscall_numbers
from nono_supervisor.linux import notify, seccomp
from nono_supervisor.policy.access import FOREIGN_PROC

C_DIR = Path(__file__).parent / "c"

pytestmark = pytest.mark.skipif(notify.ask_again_library() is None, reason="_askagain is not built")


def _built(home, source: str, stem: str) -> dict[str, str]:
    """tests/c/``source`` built dynamic and static into the workdir: {"dynamic": path, "static": path}."""
    out = {}
    for kind, flags in (("dynamic", []), ("static", ["-static"])):
        target = home.work / f"{stem}_{kind}"
        compile_ = ["cc", "-O2", "-o", str(target), str(C_DIR / source), *flags]
        built = subprocess.run(compile_, capture_output=True)
        if built.returncode != 0:
            pytest.skip(f"cannot build a {kind} binary here: {built.stderr.decode()[-200:]}")
        out[kind] = str(target)
    return out


@pytest.fixture
def readers(home):
    return _built(home, "plain_read.c", "plain_read")


@pytest.fixture
def writers(home):
    return _built(home, "plain_write.c", "plain_write")


def _exec(home, *argv, flags=("--allow", "~"), **kw):
    return home.run([SUPERVISOR, "exec", *flags, "--", *argv], **kw)


def _in_process(home, argv, *, consent=None, left_to_landlock=True):
    """argv under start_sandboxed here as a command, on --allow ~: (status, stdout, decisions, loop stats)."""
    from nono_supervisor.policy.profile import PolicyOptions

    seen = []
    status, out, process = run_sandboxed(
        home,
        argv,
        options=PolicyOptions(allow=(str(home.home),)),
        on_decision=lambda *a: seen.append(a),
        consent=consent,
        left_to_landlock=left_to_landlock,
    )
    return status, out, seen, process.notify.native_stats


def test_opens_are_not_trapped_but_for_raw_listings_exclusive_and_setid_creations(home):
    (home.work / "scratch").write_text("x")
    script = syscall_numbers("openat") + textwrap.dedent("""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        for flags in (
            os.O_RDONLY,
            os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW,
            os.O_PATH,
            os.O_RDWR,
            os.O_WRONLY | os.O_CREAT | os.O_TRUNC,
            os.O_WRONLY | os.O_APPEND,
            os.O_RDONLY | os.O_DIRECTORY,  # a listing through libc's open: the ask-again library marks it
        ):
            for _ in range(300):
                os.close(os.open("scratch" if flags & os.O_DIRECTORY == 0 else ".", flags, 0o644))
        for _ in range(300):
            os.listdir(".")  # opendir
        for _ in range(100):  # the raw syscall, as libc's scandir makes it: trapped (may be emulated)
            os.close(libc.syscall(NR["openat"], -100, b".", os.O_RDONLY | os.O_DIRECTORY, 0))
    """)
    status, _out, _seen, stats = _in_process(home, [sys.executable, "-c", script])
    assert status == 0
    assert 100 <= stats["received"] < 300, stats  # the 100 raw listings, not the 2,400 opens


MARK = seccomp.LISTING_MARK


@pytest.mark.parametrize(
    "flags, mode",
    [(os.O_DIRECTORY, 0), (os.O_EXCL | os.O_CREAT | os.O_RDWR, MARK), (os.O_TMPFILE | os.O_RDWR, MARK)]
    + [(os.O_CREAT | os.O_RDWR, m | 0o755) for m in seccomp.TRAPPED_CREATE_MODES]
    + [(os.O_CREAT | os.O_RDWR | os.O_NOCTTY, 0o644)],
    ids=["listing", "exclusive, marked", "tmpfile, marked", "setuid", "setgid", "terminal's open"],
)
def test_the_filter_traps_a_listing_an_exclusive_open_a_tmpfile_and_a_setid_creation(home, flags, mode):
    """Each trapped form alone sends the open to the supervisor (open and openat, raw syscalls: what a
    static binary does); the listing mark frees a plain listing only. A setid creation is refused there
    (EPERM, never granted), as when every call was trapped."""
    directory = flags & os.O_DIRECTORY  # a listing or a tmpfile: opened on "."
    expected = -errno.EPERM if mode & 0o6000 else 0
    script = textwrap.dedent(f"""
        import ctypes, os
        libc = ctypes.CDLL(None, use_errno=True)
        for i in range(50):
            for number, args in ((257, (-100,)), (2, ())):
                target = b"." if {directory} else f"scratch-{{number}}-{{i}}".encode()
                fd = libc.syscall(number, *args, target, {flags}, ctypes.c_long({mode}))
                fd = fd if fd >= 0 else -ctypes.get_errno()
                assert min(fd, 0) == {expected}, fd
                if fd >= 0:
                    os.close(fd)
    """)
    status, _out, seen, stats = _in_process(home, [sys.executable, "-c", script])
    assert status == 0
    assert stats["received"] >= 100, stats
    if expected:
        assert not any(n.startswith("scratch-") for n in os.listdir(home.work))
        assert "deny" in {d for d, _what in seen}
        bare = home.work / "setid-bare"  # the twin: the same creation without the sandbox keeps the bit
        os.close(os.open(bare, flags, mode))
        assert bare.stat().st_mode & mode & 0o6000


def test_a_denied_plain_read_is_enforced_by_the_kernel_for_static_binaries_and_not_reported(home, readers):
    """The documented loss: no report and no question for a static binary's read that Landlock denies."""
    result = _exec(home, readers["static"], str(home.key))
    assert FAKE_KEY not in result.stdout and result.stdout.strip() == "errno=13"
    assert "nono: denied" not in result.stderr
    bare = home.run([readers["static"], str(home.key)])
    assert FAKE_KEY in bare.stdout  # the twin


@pytest.mark.parametrize("how", ["open", "fopen", "cat", "python"])
def test_a_denied_plain_read_is_still_reported_where_the_process_can_report_it(home, readers, how):
    argv = {
        "open": [readers["dynamic"], str(home.key)],
        "fopen": [readers["dynamic"], "-f", str(home.key)],
        "cat": ["cat", str(home.key)],
        "python": [sys.executable, "-c", f"open({str(home.key)!r}).read()"],
    }[how]
    result = _exec(home, *argv)
    assert FAKE_KEY not in result.stdout and result.returncode != 0
    assert result.stderr.count("nono: denied read ~/.ssh/id_rsa [group:deny_credentials]") == 1, result.stderr


def test_a_question_on_a_denied_plain_read_is_still_asked_and_its_grant_emulated(home, readers):
    asked = []

    def consent(op, path, rule, is_dir, *rest, **_hold):
        asked.append((op, path))
        return True

    status, out, seen, _stats = _in_process(home, [readers["dynamic"], str(home.key)], consent=consent)
    assert status == 0 and FAKE_KEY in out  # the human said yes: the supervisor opened it
    assert asked == [("read", str(home.key))]
    assert [d for d, what in seen if what.path == str(home.key)] == ["grant"]


def test_a_read_the_policy_allows_beyond_the_baseline_is_emulated_for_dynamic_programs(home, readers):
    """~/fresh is made during the command (the baseline granted ~'s entries one by one, before it existed):
    a dynamic reader is answered by the supervisor; a static one gets the kernel's EACCES (the loss)."""
    script = (
        f"mkdir {home.home}/fresh && echo hello > {home.home}/fresh/f"
        f" && {readers['dynamic']} {home.home}/fresh/f && {readers['static']} {home.home}/fresh/f"
    )
    result = _exec(home, "bash", "-c", script)
    assert result.stdout == "hello\nerrno=13\n", result.stderr
    # the next command's plan has ~/fresh (the cache saw ~ change): the static reader reads it too
    again = _exec(home, readers["static"], f"{home.home}/fresh/f")
    assert again.stdout == "hello\n"


def test_stdin_reopened_by_name_outside_the_grants(home, readers, tmp_path):
    outside = tmp_path / "outside.txt"
    outside.write_text("from outside\n")
    with open(outside) as stdin:
        dynamic = _exec(home, readers["dynamic"], "/dev/stdin", stdin=stdin)
    with open(outside) as stdin:
        static = _exec(home, readers["static"], "/dev/stdin", stdin=stdin)
    assert dynamic.stdout == "from outside\n" and dynamic.stderr == ""
    assert static.stdout == "errno=13\n"  # the loss: Landlock checks the object behind the magic link


# ---- writes: left to Landlock as reads are ---------------------------------------------------------------


@pytest.mark.parametrize("how", ["open new", "open existing", "fopen a", "fopen w+", "bash", "python"])
def test_a_denied_write_is_enforced_and_reported_where_the_process_can_report_it(home, writers, how):
    new = home.home / ".ssh" / "new"
    argv, line = {
        "open new": ([writers["dynamic"], str(new), "x"], "create ~/.ssh/new"),
        "open existing": ([writers["dynamic"], str(home.key), "x"], "write ~/.ssh/id_rsa"),
        "fopen a": ([writers["dynamic"], "-f", "a", str(home.key), "x"], "write ~/.ssh/id_rsa"),
        "fopen w+": ([writers["dynamic"], "-f", "w+", str(home.key), "x"], "read ~/.ssh/id_rsa"),
        "bash": (["bash", "-c", f"echo x >> {home.key}"], "write ~/.ssh/id_rsa"),
        "python": ([sys.executable, "-c", f"open({str(new)!r}, 'w').write('x')"], "create ~/.ssh/new"),
    }[how]
    result = _exec(home, *argv)
    assert result.returncode != 0 and home.key.read_text() == FAKE_KEY + "\n" and not new.exists()
    assert result.stderr.count(f"nono: denied {line} [group:deny_credentials]") == 1, result.stderr
    bare = home.run(argv)  # the twin
    assert bare.returncode == 0 and (new.exists() or home.key.read_text() != FAKE_KEY + "\n"), bare.stderr


def test_a_denied_write_as_an_unprivileged_user_is_enforced_and_reported(nobody_home):
    home = nobody_home
    argv = ["bash", "-c", f"echo x >> {home.key}"]
    result = _exec(home, *argv, user=True)
    assert result.returncode != 0 and home.key.read_text() == FAKE_KEY + "\n"
    line = "nono: denied write ~/.ssh/id_rsa [group:deny_credentials]"
    assert result.stderr.count(line) == 1, result.stderr
    bare = home.run(argv, user=True)  # the twin
    assert bare.returncode == 0 and home.key.read_text() == FAKE_KEY + "\nx\n", bare.stderr


def test_a_denied_write_by_a_static_binary_is_enforced_by_the_kernel_and_not_reported(home, writers):
    """The documented loss without undo (--no-undo), as for reads; with every call trapped, and with undo
    on (it traps opens for writing, issue 25), the same write is reported."""
    argv = [writers["static"], str(home.key), "x"]
    result = _exec(home, *argv, flags=("--allow", "~", "--no-undo"))
    assert result.stdout == "errno=13\n" and "nono: denied" not in result.stderr
    trapped = _exec(home, *argv, flags=("--allow", "~", "--no-undo"), env={**home.env, "NONO_TRAP_ALL": "1"})
    assert trapped.stdout == "errno=13\n" and "nono: denied write ~/.ssh/id_rsa" in trapped.stderr
    recorded = _exec(home, *argv)
    assert recorded.stdout == "errno=13\n" and "nono: denied write ~/.ssh/id_rsa" in recorded.stderr
    assert home.key.read_text() == FAKE_KEY + "\n"
    assert home.run(argv).stdout == "wrote\n"  # the twin


def test_a_create_the_policy_allows_beyond_the_baseline_is_emulated_for_dynamic_programs(home, writers):
    """~ holds the denied ~/.ssh, so the baseline grants ~'s entries one by one and not the making of new
    ones: the supervisor makes ~/new-* for a dynamic writer (asked again through openat2); a static one
    gets the kernel's EACCES (the loss, without undo), and made it while every open was trapped, or the
    opens for writing (undo on, issue 25)."""
    no_undo = ("--allow", "~", "--no-undo")
    for kind, expected in (("dynamic", "wrote\n"), ("static", "errno=13\n")):
        result = _exec(home, writers[kind], str(home.home / f"new-{kind}"), "made", flags=no_undo)
        assert result.stdout == expected, (kind, result.stderr)
        assert "nono: denied" not in result.stderr
    assert (home.home / "new-dynamic").read_text() == "made" and not (home.home / "new-static").exists()
    every = {**home.env, "NONO_TRAP_ALL": "1"}
    trapped = _exec(home, writers["static"], str(home.home / "new-static"), "made", env=every, flags=no_undo)
    assert trapped.stdout == "wrote\n" and (home.home / "new-static").read_text() == "made"
    recorded = _exec(home, writers["static"], str(home.home / "new-undo"), "made")
    assert recorded.stdout == "wrote\n" and (home.home / "new-undo").read_text() == "made"


def test_a_question_on_a_denied_write_is_still_asked_and_its_grant_emulated(home, writers):
    asked = []

    def consent(op, path, rule, is_dir, *rest, **_hold):
        asked.append((op, path))
        return True

    new = home.home / ".ssh" / "granted"
    argv = [writers["dynamic"], str(new), "by a human's yes"]
    status, _out, seen, _stats = _in_process(home, argv, consent=consent)
    assert status == 0 and new.read_text() == "by a human's yes"  # the supervisor made it
    assert asked == [("create", str(new))]
    assert [d for d, what in seen if what.path == str(new)] == ["grant"]


def test_stdout_reopened_by_name_outside_the_grants(home, writers, tmp_path):
    """/dev/stdout is the command's own fd 1 (invariant 8), here a file outside the grants: a dynamic
    writer gets what it gets bare (a new open of the file, at offset 0: its own "wrote" lands over it); so
    does a static one while undo traps its opens for writing (issue 25)."""

    def wrote(kind: str, sandboxed: bool, *flags: str) -> str:
        outside = tmp_path / f"outside-{kind}-{sandboxed}-{len(flags)}.txt"
        argv = [writers[kind], "/dev/stdout", f"to {kind} stdout\n"]
        with open(outside, "w") as stdout:
            run = _exec if sandboxed else lambda h, *a, **kw: h.run(list(a), **kw)
            extra = {"flags": ("--allow", "~", *flags)} if sandboxed else {}
            run(home, *argv, capture_output=False, stdout=stdout, stderr=subprocess.PIPE, **extra)
        return outside.read_text()

    assert wrote("dynamic", True) == wrote("dynamic", False) == "wrote\namic stdout\n"
    # the loss without undo: Landlock checks the object behind the link
    assert wrote("static", True, "--no-undo") == "errno=13\n"
    assert wrote("static", True) == wrote("static", False) == "wrote\ntic stdout\n"


def test_a_write_refused_by_the_files_mode_is_not_a_policy_denial(nobody_home):
    """EACCES from the file's mode, not from Landlock: asked again, the supervisor (acting with the
    command's credentials) is refused the same way, and nothing is reported as the policy's."""
    writers = _built(nobody_home, "plain_write.c", "plain_write")
    locked = nobody_home.work / "locked"
    locked.write_text("unchanged\n")
    os.chown(locked, 0, 0)
    locked.chmod(0o644)
    argv = [writers["dynamic"], str(locked), "x"]
    result = _exec(nobody_home, *argv, user=True)
    assert result.stdout == "errno=13\n" and "nono: denied" not in result.stderr, result.stderr
    assert locked.read_text() == "unchanged\n"
    assert nobody_home.run(argv, user=True).stdout == "errno=13\n"  # the twin: the same bare


# ---- listings: marked by the ask-again library, left to Landlock ---------------------------------------


@pytest.fixture
def listers(home):
    return _built(home, "list_dir.c", "list_dir")


def _listing(home, listers, how: str, path: str) -> list[str]:
    return {
        "opendir": [listers["dynamic"], "opendir", path],
        "openat": [listers["dynamic"], "openat", path],
        "static": [listers["static"], "opendir", path],
        "ls": ["ls", "-a", path],
        "python": [sys.executable, "-c", f"print(*__import__('os').listdir({path!r}), sep='\\n')"],
        "find": ["find", path, "-maxdepth", "1"],
    }[how]


LISTERS = ["opendir", "openat", "static", "ls", "python", "find"]


@pytest.mark.parametrize("how", LISTERS)
def test_listing_the_parent_of_a_denied_node_is_emulated_as_when_every_listing_is_trapped(home, listers, how):
    """~ holds the denied ~/.ssh: the baseline grants ~'s entries one by one, not ~, so listing ~ is the
    supervisor's (an emulated open). A marked listing is refused by Landlock and made again trapped; a
    static lister's is trapped from the start. Either way the names are the bare listing's."""
    argv = _listing(home, listers, how, str(home.home))
    result = _exec(home, *argv)
    bare = home.run(argv)  # the twin
    assert result.returncode == 0 and "nono: denied" not in result.stderr, result.stderr
    assert sorted(result.stdout.split()) == sorted(bare.stdout.split()) and ".ssh" in result.stdout


@pytest.mark.parametrize("how", LISTERS)
def test_a_denied_listing_is_refused_and_reported_once(home, listers, how):
    argv = _listing(home, listers, how, str(home.home / ".ssh"))
    result = _exec(home, *argv)
    assert result.returncode != 0 and "id_rsa" not in result.stdout
    line = "nono: denied read ~/.ssh [group:deny_credentials]"
    assert result.stderr.count(line) == 1, result.stderr
    assert "id_rsa" in home.run(argv).stdout  # the twin


def test_a_denied_listing_as_an_unprivileged_user_is_refused_and_reported(nobody_home):
    home = nobody_home
    argv = ["ls", str(home.home / ".ssh")]
    result = _exec(home, *argv, user=True)
    assert result.returncode != 0 and "id_rsa" not in result.stdout
    assert result.stderr.count("nono: denied read ~/.ssh [group:deny_credentials]") == 1, result.stderr
    assert "id_rsa" in home.run(argv, user=True).stdout  # the twin


def test_a_listing_refused_by_the_directorys_mode_is_not_a_policy_denial(nobody_home):
    """EACCES from the mode: made again trapped, the supervisor lets the kernel answer, as it did."""
    locked = nobody_home.work / "locked"
    locked.mkdir()
    (locked / "inside").write_text("x")
    os.chown(locked, 0, 0)
    locked.chmod(0o700)
    argv = ["ls", str(locked)]
    result = _exec(nobody_home, *argv, user=True)
    assert result.returncode != 0 and "Permission denied" in result.stderr
    assert "nono: denied" not in result.stderr, result.stderr
    bare = nobody_home.run(argv, user=True)  # the twin: the same bare
    assert bare.returncode != 0 and "Permission denied" in bare.stderr


def test_any_process_may_set_the_listing_mark_and_gains_nothing_from_it(home, listers):
    """The mark lets a plain listing through to Landlock untrapped: a raw syscall that sets it is refused
    the denied listing by the kernel, and only gives up what the supervisor adds (the report, and the
    emulated listing of ~); a granted directory lists as bare."""
    static = listers["static"]
    denied = _exec(home, static, "marked", str(home.home / ".ssh"))
    assert denied.stdout == "errno=13\n" and "nono: denied" not in denied.stderr
    assert _exec(home, static, "marked", str(home.home)).stdout == "errno=13\n"
    assert _exec(home, static, "raw", str(home.home)).returncode == 0  # unmarked: trapped and emulated
    granted = _exec(home, static, "marked", str(home.work))
    assert granted.returncode == 0 and sorted(granted.stdout.split()) == sorted(os.listdir(home.work))
    assert "id_rsa" in home.run([static, "marked", str(home.home / ".ssh")]).stdout  # the twin


def test_a_question_on_a_denied_listing_is_still_asked_and_its_grant_emulated(home, listers):
    asked = []

    def consent(op, path, rule, is_dir, *rest, **_hold):
        asked.append((op, path, is_dir))
        return True

    argv = [listers["dynamic"], "opendir", str(home.home / ".ssh")]
    status, out, _seen, _stats = _in_process(home, argv, consent=consent)
    assert status == 0 and "id_rsa" in out  # the human said yes: the supervisor opened it
    assert asked == [("read", str(home.home / ".ssh"), True)]


def test_listings_through_libc_cost_no_notification_and_the_agents_are_all_trapped(home):
    """grep -r and find (gnulib's fts: openat), ls -R and os.walk (opendir) over 60 directories: the
    listings go to Landlock alone; for the agent (every call trapped) each one is the supervisor's."""
    for d in range(60):
        (home.work / "tree" / f"d{d}").mkdir(parents=True)
        (home.work / "tree" / f"d{d}" / "f").write_text("x\n")
    walk = f"{sys.executable} -c 'import os; list(os.walk(\"tree\"))'"
    script = f"grep -r needle tree; find tree >/dev/null; ls -R tree >/dev/null; {walk}; true"
    status, _out, _seen, stats = _in_process(home, ["/bin/bash", "-c", script])
    assert status == 0 and stats["received"] < 60, stats
    status, _out, _seen, every = _in_process(home, ["/bin/bash", "-c", script], left_to_landlock=False)
    assert status == 0 and every["received"] >= 4 * 60, every


def test_with_a_multi_linked_denied_file_every_read_is_trapped_again(home, readers):
    """Landlock follows names: with a second name of the key in the workdir, plain reads go back to the
    supervisor, which checks each regular file's inode, for static binaries too."""
    link = home.work / "innocent"
    os.link(home.key, link)
    result = _exec(home, readers["static"], str(link))
    assert FAKE_KEY not in result.stdout and result.stdout.strip() == "errno=13"
    assert "hard link to a denied file" in result.stderr
    status, _out, _seen, stats = _in_process(home, [readers["static"], str(home.work / "README")])
    assert status == 0 and stats["received"] >= 1


def test_the_agent_and_any_caller_that_does_not_ask_keep_every_read_trapped(home):
    """start_sandboxed traps plain reads unless its caller says it starts a command (the server, exec):
    the agent's own reads, a static agent's included, are asked about and reported at once."""
    script = "import os\nfor _ in range(300):\n    os.close(os.open('README', os.O_RDONLY))"
    status, _out, _seen, stats = _in_process(home, [sys.executable, "-c", script], left_to_landlock=False)
    assert status == 0 and stats["received"] >= 300
    result = _exec(home, "bash", "-c", 'echo "$LD_PRELOAD"')
    assert notify.ask_again_library() in result.stdout  # exec starts a command


def test_a_loop_that_must_see_every_read_gets_them_all(home):
    class Watching(notify.NotifyLoop):
        on_exec = staticmethod(lambda tid, raw: None)

    assert not notify.wants_every_notification(notify.NotifyLoop)
    assert notify.wants_every_notification(Watching)
    from nono_supervisor.linux.backend import _ask_again_library

    assert _ask_again_library(notify.NotifyLoop, linked=False) == notify.ask_again_library()
    assert _ask_again_library(Watching, linked=False) is None
    assert _ask_again_library(notify.NotifyLoop, linked=True) is None


@pytest.fixture
def spawners(home):
    """spawn_all (tests/c) built dynamic and static, and an executable ~/.ssh/tool the baseline denies."""
    tool = home.home / ".ssh" / "tool"
    tool.write_text("#!/bin/sh\necho RAN\n")
    tool.chmod(0o755)
    return {"tool": str(tool), **_built(home, "spawn_all.c", "spawn_all")}


def test_execve_is_not_trapped_for_a_command_and_execveat_is(home):
    """A failed execve costs no notification (a compiler driver's PATH walk makes hundreds); execveat, the
    retry's twin, is always trapped; for the agent (every call trapped) execve is too."""
    script = textwrap.dedent("""
        import os
        for _ in range(300):
            try:
                os.execv("/nonexistent/tool", ["tool"])
            except OSError:
                pass
        root = os.open("/", os.O_PATH)
        for _ in range(100):
            try:
                os.execve(root, ["tool"], {})  # fexecve: execveat(root, "", AT_EMPTY_PATH)
            except OSError:
                pass
    """)
    status, _out, _seen, stats = _in_process(home, [sys.executable, "-c", script])
    assert status == 0
    assert 100 <= stats["received"] < 300, stats  # the 100 execveat (fexecve), not the 300 execve
    status, _out, _seen, every = _in_process(home, [sys.executable, "-c", script], left_to_landlock=False)
    assert status == 0 and every["received"] >= 400, every


@pytest.mark.parametrize("method", ["execve", "execv", "execvp", "execvpe"])
def test_a_denied_exec_is_enforced_by_the_kernel_and_reported_where_the_process_can(home, spawners, method):
    result = _exec(home, spawners["dynamic"], method, spawners["tool"], "tool", "a", "b")
    assert "RAN" not in result.stdout and result.returncode == 127
    assert f"spawn_all: {method}: Permission denied" in result.stderr
    assert result.stderr.count("nono: denied exec ~/.ssh/tool [group:deny_credentials]") == 1, result.stderr
    bare = home.run([spawners["dynamic"], method, spawners["tool"], "tool", "a", "b"])
    assert "RAN" in bare.stdout  # the twin


@pytest.mark.parametrize("how", ["bash", "bash PATH", "python subprocess"])
def test_a_denied_exec_by_a_shell_or_an_interpreter_is_reported(home, spawners, how):
    tool = spawners["tool"]
    argv = {
        "bash": ["bash", "-c", tool],
        "bash PATH": ["bash", "-c", f"PATH={home.home}/.ssh:$PATH; tool"],
        "python subprocess": [sys.executable, "-c", f"import subprocess; subprocess.run([{tool!r}])"],
    }[how]
    result = _exec(home, *argv)
    assert "RAN" not in result.stdout and "Permission denied" in result.stderr
    assert "nono: denied exec ~/.ssh/tool [group:deny_credentials]" in result.stderr, result.stderr
    assert "RAN" in home.run(argv).stdout  # the twin


@pytest.mark.parametrize("method", ["posix_spawn", "static execve"])
def test_a_denied_exec_libc_makes_inside_posix_spawn_or_a_static_binary_makes_is_not_reported(
    home, spawners, method
):
    """The documented loss: the kernel refuses it, and nothing in the process asks again."""
    static = method == "static execve"
    binary, call = (spawners["static"], "execve") if static else (spawners["dynamic"], method)
    result = _exec(home, binary, call, spawners["tool"], "tool", "a", "b")
    assert "RAN" not in result.stdout and f"spawn_all: {call}: Permission denied" in result.stderr
    assert "nono: denied" not in result.stderr
    assert "RAN" in home.run([binary, call, spawners["tool"], "tool", "a", "b"]).stdout  # the twin
    # with every call trapped (the agent's way, here through NONO_TRAP_ALL) the same exec is reported
    trapped = _exec(
        home, binary, call, spawners["tool"], "tool", "a", "b", env={**home.env, "NONO_TRAP_ALL": "1"}
    )
    assert "nono: denied exec ~/.ssh/tool" in trapped.stderr, trapped.stderr


def test_a_relative_command_starts_under_every_trap(home):
    """The first exec is named from the command's cwd by the supervisor (a root child's /proc/PID/cwd is
    not readable by a notify thread without capabilities before that exec)."""
    script = home.work / "hello.sh"
    script.write_text("#!/bin/sh\necho hello\n")
    script.chmod(0o755)
    for env in (home.env, {**home.env, "NONO_TRAP_ALL": "1"}):
        result = _exec(home, "./hello.sh", env=env)
        assert result.stdout == "hello\n", result.stderr


def test_the_ask_again_library_is_in_the_commands_environment_once(home):
    lib = notify.ask_again_library()
    result = _exec(
        home, "bash", "-c", "echo $LD_PRELOAD; bash -c 'echo $LD_PRELOAD'", env={**home.env, "LD_PRELOAD": ""}
    )
    assert result.stdout.split("\n")[:2] == [lib, lib]
    no_trap = _exec(home, "bash", "-c", 'echo "[$LD_PRELOAD]"', flags=("--allow", "~", "--no-trap"))
    assert no_trap.stdout == "[]\n"  # Landlock alone: nothing to ask again


OPENAT2 = (
    syscall_numbers("openat2")
    + """
import ctypes, os, struct, sys
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
fd = libc.syscall(NR["openat2"], -100, sys.argv[1].encode(), struct.pack("=QQQ", os.O_RDONLY, 0, 0), 24)
print(("errno=%d" % ctypes.get_errno()) if fd < 0 else os.read(fd, 1 << 20).decode(errors="replace"))
"""
)


@pytest.mark.parametrize("how", ["cat", "openat2", "static"])
@pytest.mark.parametrize("what", ["environ", "mem"])
def test_another_processs_proc_is_never_opened_by_the_supervisor(home, readers, how, what):
    """The supervisor's own /proc/PID/environ holds the session's secrets: Landlock's ptrace scoping
    refuses it to the command, and the supervisor, which acts as itself, must refuse it too (a retried
    plain read, or an openat2, is carried out by the supervisor where it is not refused)."""
    secret = "nono-supervisor-secret-5e1"
    env = {**home.env, "NONO_TEST_SUPERVISOR_SECRET": secret}
    find = 'K=$(awk "{print \\$4}" /proc/$PPID/stat)'  # the keeper's parent: the supervisor
    reader = {"cat": "cat", "openat2": f"{sys.executable} -c '{OPENAT2}'", "static": readers["static"]}[how]
    result = _exec(home, "bash", "-c", f"{find}; {reader} /proc/$K/{what}; echo rc=$?", env=env)
    assert secret not in result.stdout
    assert "errno=13" in result.stdout or "Permission denied" in result.stderr, result
    own = _exec(home, "bash", "-c", f"{reader} /proc/self/environ", env=env)  # its own: as bare
    assert "NONO_TEST_SUPERVISOR_SECRET" in own.stdout or what == "mem"
    twin = home.run(["bash", "-c", "sleep 5 & sleep 0.3; cat /proc/$!/environ; kill $!"], env=env)
    assert secret in twin.stdout  # without the sandbox, a process of the same user reads it


def test_reading_every_processs_environ_is_refused_silently_and_audited(home):
    """procps reads /proc/PID/environ of every process (ps aux): each is refused (Landlock's ptrace
    scoping, invariant: the supervisor's own environ holds the session's secrets), and none is a line: no
    flag grants it and ps does without (access.silent, CONTRACT). The audit log has each."""
    sleepers = [subprocess.Popen(["sleep", "60"]) for _ in range(3)]
    try:
        pids = " ".join(str(p.pid) for p in sleepers)
        script = f"for p in {pids}; do cat /proc/$p/environ >/dev/null; done; ps aux >/dev/null"
        result = _exec(home, "bash", "-c", script)
        twin = f"for p in {pids}; do cat /proc/$p/environ >/dev/null || exit 1; done"
        bare = home.run(["bash", "-c", twin])
    finally:
        for p in sleepers:
            p.kill()
            p.wait()
    assert result.stderr.count("Permission denied") == 3, result.stderr
    assert "nono:" not in result.stderr, result.stderr
    audited = {e["path"] for e in home.audit() if e.get("rule") == FOREIGN_PROC and e["decision"] == "deny"}
    assert {f"/proc/{p.pid}/environ" for p in sleepers} <= audited
    assert bare.returncode == 0  # the twin: bare, the same user reads them


def test_the_agent_is_not_told_of_another_processs_proc_entry(home, capfd):
    from nono_supervisor.policy.profile import PolicyOptions
    from nono_supervisor.report import CommandReport, Denied
    from nono_supervisor.session import Session

    session = Session.create(PolicyOptions(), env=home.env, workdir=str(home.work))
    try:
        report = CommandReport(session.services.audit, session.state.policy, "c", ["ps"], str(home.work))
        report.record("deny", Denied("read", "/proc/41/environ", FOREIGN_PROC, False))
        assert report.lines() == []
        what = type("What", (), {"op": "read", "path": "/proc/41/mem", "rule": FOREIGN_PROC, "is_dir": False})
        what.pid = os.getpid()
        report.tell_process("deny", what)
        assert "nono:" not in capfd.readouterr().err
        assert [e["path"] for e in home.audit() if e.get("op") == "read"] == [
            "/proc/41/environ",
            "/proc/41/mem",
        ]
    finally:
        session.close()
