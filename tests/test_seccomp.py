"""The seccomp layer on the real kernel: invariants, attacks named after what they try, each with a twin."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import FAKE_KEY, NOBODY, SUPERVISOR, Home, run_sandboxed, syscall_numbers
from nono_supervisor.linux.seccomp import BLOCKED, TRAPS

C_DIR = Path(__file__).parent / "c"
KEY_MARKER = "nono-test-secret-7f3a9c"


def _compile(home: Home, source: str, *flags: str) -> str:
    """Build a test program into the workdir (the sandbox may execute it there)."""
    out = home.work / Path(source).stem
    subprocess.run(["cc", "-O2", "-o", str(out), str(C_DIR / source), *flags], check=True)
    if home.owner:
        os.chown(out, home.owner, home.owner)
    return str(out)


def _home(request, user: bool) -> Home:
    return request.getfixturevalue("nobody_home" if user else "home")


def _exec(home: Home, *argv: str, flags: tuple[str, ...] = (), user: bool = False):
    return home.run([SUPERVISOR, "exec", *flags, "--", *argv], user=user)


USERS = pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])


def test_every_trap_has_a_handler():
    import pyseccomp

    from nono_supervisor.linux.notify import _dispatch_table, handler_for

    for trap in TRAPS:
        assert callable(handler_for(trap.kind)), trap.name
    # one syscall number per trap this architecture has (arm64 has no open, creat...): none resolved twice
    native = [t for t in TRAPS if pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, t.name) >= 0]
    assert len(_dispatch_table()) == len(native)


def test_open_family_is_trapped_together_and_io_uring_is_blocked():
    names = {trap.name for trap in TRAPS}
    assert {"open", "openat", "openat2", "creat"} <= names
    assert {"io_uring_setup", "io_uring_enter", "io_uring_register", "open_by_handle_at"} <= set(BLOCKED)


def test_the_filter_is_installed_and_no_trap_mode_has_none(home):
    probe = ["grep", "^Seccomp:", "/proc/self/status"]
    assert _exec(home, *probe).stdout.split() == ["Seccomp:", "2"]
    assert _exec(home, *probe, flags=("--no-trap",)).stdout.split() == ["Seccomp:", "0"]
    assert home.run(probe).stdout.split() == ["Seccomp:", "0"]


def test_listener_fd_is_not_visible_in_the_command(home):
    result = _exec(home, "ls", "-l", "/proc/self/fd/")
    assert result.returncode == 0
    assert "pipe:" in result.stdout  # the listing itself worked: stdout is the test's pipe
    assert "seccomp" not in result.stdout


@USERS
def test_continue_never_widens_after_path_swap(request, user):
    """Invariant 1: a thread flips the path between a workdir file and the key during 3,000 opens."""
    home = _home(request, user)
    racer = _compile(home, "race_open.c", "-pthread")
    argv = [racer, str(home.work / "README"), str(home.key), KEY_MARKER, "3000"]
    result = _exec(home, *argv, flags=("--allow", "~"), user=user)
    assert result.returncode == 0, result.stderr
    assert dict(item.split("=") for item in result.stdout.split())["leaked"] == "0"
    benign_only = _exec(home, racer, argv[1], argv[1], KEY_MARKER, "3000", flags=("--allow", "~"), user=user)
    assert benign_only.stdout.split() == ["opened=3000", "leaked=0"]  # the flipped-to file is readable
    # The twin: without the sandbox the same race reaches the key (scheduling decides how often: retry).
    for _attempt in range(10):
        twin = home.run(argv, user=user)
        if int(dict(item.split("=") for item in twin.stdout.split())["leaked"]) > 0:
            break
    else:
        pytest.fail("the race never reached the key even without the sandbox: the test proves nothing")


SYMLINK_SWAP = """
import os, sys, threading
key, benign, marker = sys.argv[1], sys.argv[2], sys.argv[3]
os.symlink(key, "to-key")
try:
    print("direct:", marker in open("to-key").read())
except OSError as e:
    print("direct: denied", e.errno)
stop = False
def swap():
    i = 0
    while not stop:
        os.symlink(key if i % 2 else benign, "tmp-link"); os.replace("tmp-link", "swapped"); i += 1
os.symlink(benign, "swapped")
t = threading.Thread(target=swap); t.start()
leaked = opened = 0
for _ in range(3000):
    try:
        with open("swapped") as f:
            opened += 1
            leaked += marker in f.read()
    except OSError:
        pass
stop = True; t.join()
print(f"opened={opened} leaked={leaked}")
"""


@USERS
def test_symlink_to_the_key_and_a_swapped_symlink_never_yield_it(request, user):
    home = _home(request, user)
    argv = [sys.executable, "-c", SYMLINK_SWAP, str(home.key), str(home.work / "README"), KEY_MARKER]
    result = _exec(home, *argv, flags=("--allow", "~"), user=user)
    assert "direct: denied" in result.stdout, result.stdout + result.stderr
    assert "leaked=0" in result.stdout and "opened=0" not in result.stdout
    for leftover in ("to-key", "swapped", "tmp-link"):
        (home.work / leftover).unlink(missing_ok=True)
    twin = home.run(argv, user=user)
    assert "direct: True" in twin.stdout and "leaked=0" not in twin.stdout


VECTORS = (
    syscall_numbers("openat2", "open_by_handle_at", "io_uring_setup")
    + r"""
import ctypes, errno, os, struct, sys
key, home, work, marker = sys.argv[1:5]
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
def report(name, fn):
    try:
        data = fn()
        print(name, "LEAK" if marker in data else "no-secret")
    except OSError as e:
        print(name, "denied", errno.errorcode.get(e.errno, e.errno))
def read_fd(fd):
    try:
        return os.read(fd, 4096).decode(errors="replace")
    finally:
        os.close(fd)
def openat2():
    how = struct.pack("QQQ", os.O_RDONLY, 0, 0)
    fd = libc.syscall(NR["openat2"], -100, key.encode(), how, len(how))
    if fd < 0:
        raise OSError(ctypes.get_errno(), "openat2")
    return read_fd(fd)
def by_handle():
    fd = libc.syscall(NR["open_by_handle_at"], -100, b"\0" * 16, os.O_RDONLY)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "open_by_handle_at")
    return read_fd(fd)
def proc_root():
    return open("/proc/self/root" + key).read()
def reopen_o_path():
    fd = os.open(key, os.O_PATH)
    return open(f"/proc/self/fd/{fd}").read()
def dirfd_plus_relative():
    d = os.open(home, os.O_RDONLY | os.O_DIRECTORY)
    return read_fd(os.open(os.path.relpath(key, home), os.O_RDONLY, dir_fd=d))
def link_into_work():
    os.link(key, os.path.join(work, "stolen-l"))
    return open(os.path.join(work, "stolen-l")).read()
def io_uring():
    fd = libc.syscall(NR["io_uring_setup"], 8, b"\0" * 120)
    if fd < 0:
        raise OSError(ctypes.get_errno(), "io_uring_setup")
    os.close(fd)
    return "io_uring available"
def rename_into_work():
    os.rename(key, os.path.join(work, "stolen-r"))
    return open(os.path.join(work, "stolen-r")).read()
for name, fn in list(globals().items()):
    if callable(fn) and name not in ("report", "read_fd") and getattr(fn, "__module__", "") == "__main__":
        report(name, fn)
"""
)
VECTOR_NAMES = [
    "openat2",
    "by_handle",
    "proc_root",
    "reopen_o_path",
    "dirfd_plus_relative",
    "rename_into_work",
    "link_into_work",
    "io_uring",
]


def _vectors(home: Home, sandboxed: bool, user: bool) -> dict[str, str]:
    argv = [sys.executable, "-c", VECTORS, str(home.key), str(home.home), str(home.work), KEY_MARKER]
    result = _exec(home, *argv, flags=("--allow", "~"), user=user) if sandboxed else home.run(argv, user=user)
    lines = dict(line.split(" ", 1) for line in result.stdout.splitlines() if " " in line)
    assert set(VECTOR_NAMES) <= set(lines), result.stdout + result.stderr
    return lines


@USERS
def test_side_doors_to_the_key_are_all_denied(request, user):
    home = _home(request, user)
    got = _vectors(home, sandboxed=True, user=user)
    for name in VECTOR_NAMES:
        assert got[name].startswith("denied"), (name, got[name])
    assert home.key.read_text().strip() == FAKE_KEY
    assert not (home.work / "stolen-r").exists() and not (home.work / "stolen-l").exists()


@USERS
def test_twin_side_doors_work_without_the_sandbox(request, user):
    home = _home(request, user)
    got = _vectors(home, sandboxed=False, user=user)
    for name in (
        "openat2",
        "proc_root",
        "reopen_o_path",
        "dirfd_plus_relative",
        "link_into_work",
        "rename_into_work",
    ):
        assert got[name] == "LEAK", (name, got[name])
    assert got["io_uring"].startswith("no-secret") or "EPERM" not in got["io_uring"]


def test_int80_open_of_the_key_is_killed(home):
    prog = _compile(home, "int80_open.c", "-no-pie")
    result = _exec(home, prog, str(home.key))
    assert result.returncode == 128 + 31  # SIGSYS: foreign-architecture syscalls kill the process
    assert KEY_MARKER not in result.stdout
    twin = home.run([prog, str(home.key)])
    if "int80-open-failed" in twin.stdout:
        pytest.skip("this kernel has no i386 syscall gate; the sandboxed run was still killed")
    assert KEY_MARKER in twin.stdout


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_notify_loop_fails_closed_mid_command(home, monkeypatch):
    """Invariant 4: once the loop dies its listener closes, and trapped syscalls fail instead of passing."""
    from nono_supervisor.linux import notify

    class DiesAfter(notify.NotifyLoop):
        answered = 0

        def _dispatch(self, nid, tid, nr, args):
            DiesAfter.answered += 1
            if DiesAfter.answered > 400:
                raise SystemExit  # the thread ends; run()'s finally closes the listener
            super()._dispatch(nid, tid, nr, args)

    script = textwrap.dedent(f"""
        import errno, os
        ok = fail = 0
        for _ in range(2000):
            try:
                os.close(os.open({str(home.work / "README")!r}, os.O_RDONLY)); ok += 1
            except OSError as e:
                fail += 1; code = e.errno
        print(ok, fail, errno.errorcode[code] if fail else "-")
    """)
    monkeypatch.setattr(notify, "NotifyLoop", DiesAfter)
    monkeypatch.setenv("NONO_NOTIFY_NATIVE", "0")  # every notification through ``_dispatch``: no C fast path
    _status, out, _process = run_sandboxed(home, [sys.executable, "-c", script])
    ok, fail, code = out.split()
    assert int(fail) > 0 and code == "ENOSYS"
    assert int(ok) < 2000


@USERS
def test_deny_inside_allowed_home_fully(request, user):
    home = _home(request, user)
    (home.home / "notes.txt").write_text("notes\n")
    if user:
        os.chown(home.home / "notes.txt", NOBODY, NOBODY)
    h, k = home.home, home.key
    script = f"""
        cat {h}/notes.txt && echo read-ok
        echo more >> {h}/notes.txt && echo write-ok
        echo new > {h}/new.txt && echo create-ok
        ls {h} >/dev/null && echo list-home-ok
        mkdir {h}/newdir && echo mkdir-ok
        mv {h}/new.txt {h}/newdir/ && echo mv-ok
        rm -r {h}/newdir && echo rm-ok
        cat {k} || echo no-read-key
        ls {h}/.ssh || echo no-list-ssh
        touch {h}/.ssh/planted || echo no-create-ssh
        mv {h}/notes.txt {h}/.ssh/ || echo no-rename-into
        mv {k} {h}/stolen || echo no-rename-out
        ln {k} {h}/hard || echo no-link
        rm {k} || echo no-unlink
        cat {h}/.aws/credentials || echo no-read-aws
        mkdir {h}/.aws/x || echo no-mkdir-aws
    """
    result = _exec(home, "bash", "-c", script, flags=("--allow", "~"), user=user)
    for word in (
        "read-ok",
        "write-ok",
        "create-ok",
        "list-home-ok",
        "mkdir-ok",
        "mv-ok",
        "rm-ok",
        "no-read-key",
        "no-list-ssh",
        "no-create-ssh",
        "no-rename-into",
        "no-rename-out",
        "no-link",
        "no-unlink",
        "no-read-aws",
        "no-mkdir-aws",
    ):
        assert word in result.stdout.split(), (word, result.stdout, result.stderr)
    assert KEY_MARKER not in result.stdout
    assert k.exists() and not (h / "stolen").exists() and not (h / "hard").exists()
    assert not (h / ".ssh" / "planted").exists() and (h / "notes.txt").read_text() == "notes\nmore\n"


def test_deny_inside_allowed_home_twin(home):
    script = f"cat {home.key} && touch {home.home}/.ssh/planted && echo twin-ok"
    assert "twin-ok" in home.run(["bash", "-c", script]).stdout


def test_each_denial_is_reported_once_and_logged(home):
    script = f"cat {home.key}; cat {home.key}; cat ~/.aws/credentials; true"
    result = _exec(home, "bash", "-c", script)
    lines = [line for line in result.stderr.splitlines() if line.startswith("nono: denied")]
    hint = "[group:deny_credentials]; to allow: --read-file"
    assert sorted(lines) == [
        f"nono: denied read ~/.aws/credentials {hint} ~/.aws/credentials",
        f"nono: denied read ~/.ssh/id_rsa {hint} ~/.ssh/id_rsa",
    ]
    denials = [r for r in home.audit() if r.get("decision") == "deny"]
    assert {r["path"] for r in denials} == {str(home.key), str(home.aws)}
    for record in denials:
        for field in (
            "time",
            "session",
            "command",
            "argv",
            "cwd",
            "pid",
            "op",
            "path",
            "decision",
            "rule",
            "by",
        ):
            assert field in record, field
        assert record["by"] == "policy" and record["op"] == "read"


def test_no_trap_mode_still_denies_but_reports_nothing(home):
    result = _exec(home, "cat", str(home.key), flags=("--no-trap",))
    assert result.returncode == 1 and KEY_MARKER not in result.stdout
    assert "nono: denied" not in result.stderr


def test_tiocsti_cannot_type_into_the_terminal(home):
    import pexpect

    code = "import fcntl, termios; fcntl.ioctl(0, termios.TIOCSTI, b'x'); print('injected')"
    env = {**home.env, "PYTHONUNBUFFERED": "1"}
    child = pexpect.spawn(
        SUPERVISOR,
        ["exec", "--", sys.executable, "-c", code],
        env=env,
        cwd=str(home.work),
        encoding="utf-8",
        timeout=30,
    )
    child.expect(pexpect.EOF)
    child.close()
    assert "PermissionError" in child.before and "injected" not in child.before
