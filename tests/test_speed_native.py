"""The notify loop's C fast path (supervisor/linux/_notify.c): one table from seccomp.TRAPS, exactly the
Python fast path's decisions, everything else handed to the Python handlers unchanged. No timing here."""

from __future__ import annotations

import ctypes
import errno
import itertools
import os
import stat
import sys
import textwrap
import threading
from pathlib import Path

import pytest

from conftest import FAKE_KEY, SUPERVISOR, run_sandboxed
from nono_supervisor.linux import _notify, notify
from nono_supervisor.linux.decisions import CONTINUE
from nono_supervisor.linux.landlock import ACCESS_FS, READ, WRITE, LandlockPlan, RightsIndex, Rule, handled_fs
from nono_supervisor.linux.seccomp import TRAPS

A = ACCESS_FS
# What each trapped syscall's fast path is, written out (not derived): the C table must say the same.
EXPECTED_KINDS = {
    "open": _notify.K_OPEN,
    "openat": _notify.K_OPEN,
    "creat": _notify.K_CREAT,
    "execve": _notify.K_EXEC,
    "execveat": _notify.K_EXEC,
    "unlink": _notify.K_UNLINK,
    "unlinkat": _notify.K_UNLINK,
    "rmdir": _notify.K_RMDIR,
    "mkdir": _notify.K_MKDIR,
    "mkdirat": _notify.K_MKDIR,
    "mknod": _notify.K_MKNOD,
    "mknodat": _notify.K_MKNOD,
    "symlink": _notify.K_SYMLINK,
    "symlinkat": _notify.K_SYMLINK,
    "rename": _notify.K_RENAME,
    "renameat": _notify.K_RENAME,
    "renameat2": _notify.K_RENAME,
    "truncate": _notify.K_TRUNCATE,
}  # every other trap (openat2, link*, metadata, watches, sockets): always the Python handler


def _nr(name: str) -> int:
    import pyseccomp

    return pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)


def _index(value):
    return -1 if value is None else value


def test_the_c_table_is_the_trap_list():
    """One source of truth: every syscall the filter traps has its entry in the C table, and no other."""
    table = _notify.Loop(-1, _notify.Rights([], 0), notify.native_table(), False).table()
    native = [trap for trap in TRAPS if _nr(trap.name) >= 0]  # arm64 has no open, creat...
    assert set(table) == {_nr(trap.name) for trap in native}
    for trap in native:
        second = trap.second or (None, None)
        expected = (
            EXPECTED_KINDS.get(trap.name, _notify.K_NONE),
            _index(trap.path),
            _index(trap.dirfd),
            _index(trap.flags),
            _index(trap.mode),
            _index(second[1]),
            _index(second[0]),
        )
        assert table[_nr(trap.name)] == expected, trap.name


def test_a_malformed_table_is_refused():
    rights = _notify.Rights([], 0)
    with pytest.raises(ValueError):
        _notify.Loop(-1, rights, {2: (1, -1, -1, 2, 3, -1, -1)}, False)  # an open without its path
    with pytest.raises(ValueError):
        _notify.Loop(-1, rights, {2: (99, 0, -1, 1, 2, -1, -1)}, False)


ALIASES = (("/l", "/a/b"), ("/a/b/back", "/x"), ("/chain", "/l/c"), ("/loop", "/loop2"), ("/loop2", "/loop"))


def test_the_c_rights_table_is_rights_index():
    rules = (
        Rule("/", READ, "r"),
        Rule("/a/b", WRITE, "w"),
        Rule("/a/bc", A["make_reg"], "m"),
        Rule("/x", 0, "z"),
    )
    plan = LandlockPlan(7, handled_fs(7), 0, 0, rules, aliases=ALIASES)
    index = RightsIndex(plan)
    native = index.native()
    paths = [
        "/",
        "/a",
        "/a/b",
        "/a/b/c",
        "/a/bc",
        "/a/bcd",
        "/a/b/c/d/e",
        "/x",
        "/x/y",
        "/b",
        "/a/b/",
        "//a",
        "/l",
        "/l/c",
        "/lx",
        "/l/back/y",
        "/chain",
        "/chain/d",
        "/loop/z",
        "/a/b/back",
    ]
    bits = [*ACCESS_FS.items(), ("none", 0), ("rw", READ | WRITE)]
    for path, (name, bit) in itertools.product(paths, bits):
        assert native.allows(path.encode(), bit) == index.allows(path, bit), (path, name)
    for path in paths:
        assert native.dealias(path.encode()) == index.dealias(path).encode(), path
    assert index.dealias("/chain/d") == "/a/b/c/d" and index.dealias("/l/back/y") == "/x/y"


def test_a_symlinked_system_directory_is_looked_up_where_it_leads(tmp_path):
    """On a merged /usr, /lib and /bin are links: the loader's opens of /lib/... and an exec of /bin/bash
    are decided on the fast path by the rules of /usr/lib and /usr/bin, where the kernel finds them."""
    from nono_supervisor.linux.landlock import compile_plan
    from nono_supervisor.policy.profile import PolicyOptions
    from nono_supervisor.session import Session

    if not os.path.islink("/lib"):
        pytest.skip("/lib is not a symlink here")
    session = Session.create(PolicyOptions())
    try:
        plan = compile_plan(session.state.policy, 7)
    finally:
        session.close()
    assert ("/lib", os.path.realpath("/lib")) in plan.aliases
    index = RightsIndex(plan)
    libc = "/lib/x86_64-linux-gnu/libc.so.6"
    assert index.allows(libc, A["read_file"]) and index.native().allows(libc.encode(), A["read_file"])
    assert not index.allows("/lib/x86_64-linux-gnu/libc.so.6", A["write_file"])


# ---- the same decisions as the Python fast path --------------------------------------------------------


class _Reached(Exception):
    """The Python handler went past its lexical fast path (it pinned the path)."""


def _python_fast(loop, trap, tid: int, args: list[int]) -> bool:
    """Whether the Python handler answers CONTINUE before resolving anything (its lexical fast path)."""
    try:
        decision = notify.handler_for(trap.kind)(loop, trap, tid, args)
    except _Reached:
        return False
    except Exception:  # noqa: BLE001 - a Python error denies; the C path never CONTINUEs those
        return False
    return decision is CONTINUE


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """r/ read-only, w/ read+write, x/ nothing; the process's cwd is w/ (the target's cwd is ours)."""
    for name in ("r/sub", "w/sub", "x", "wx"):
        (tmp_path / name).mkdir(parents=True)
    (tmp_path / "w" / "f").write_text("x")
    (tmp_path / "r" / "f").write_text("x")
    (tmp_path / "x" / "sink").write_text("")  # a /dev/null: writable, in a directory that is not
    monkeypatch.chdir(tmp_path / "w")
    top = str(tmp_path)
    rules = (
        Rule("/", A["read_file"] | A["read_dir"] | A["execute"], "system"),
        Rule(f"{top}/r", READ, "read"),
        Rule(f"{top}/w", READ | WRITE, "allow"),
        Rule(f"{top}/wx", A["execute"], "exec only"),
        Rule(f"{top}/x/sink", A["read_file"] | A["write_file"] | A["truncate"], "a device"),
    )
    # the root grants reads; x/ and the tree's top grant nothing more (deny-inside-allow's siblings);
    # lw and lr are links to w and r, w/back a link to x, chain a link through lw
    aliases = (
        (f"{top}/lw", f"{top}/w"),
        (f"{top}/lr", f"{top}/r"),
        (f"{top}/w/back", f"{top}/x"),
        (f"{top}/chain", f"{top}/lw/sub"),
    )
    return tmp_path, LandlockPlan(7, handled_fs(7), 0, 0, rules, aliases=aliases)


def _loop(plan: LandlockPlan, linked: bool, monkeypatch):
    from nono_supervisor.policy.profile import PolicyOptions
    from nono_supervisor.session import Session

    session = Session.create(PolicyOptions())
    try:
        access = session.state.access_index(session.state.policy)
    finally:
        session.close()
    dummy = os.open("/dev/null", os.O_RDONLY)
    loop = notify.NotifyLoop(
        dummy,
        RightsIndex(plan),
        access,
        lambda *_: None,
        linked_denied=lambda: frozenset({(1, 1)}) if linked else frozenset(),
    )
    os.close(dummy)

    def reached(*_args, **_kw):
        raise _Reached

    monkeypatch.setattr(loop, "_pin", reached)
    return loop


def _strings(values: list[bytes]):
    buffers = [ctypes.create_string_buffer(v) for v in values]
    return buffers, [ctypes.addressof(b) for b in buffers]


def _cases(top: str, dirfds: dict[str, int]):
    paths = [
        b"f",
        b"./f",
        b"sub/../f",
        b"../r/f",
        b"../x/f",
        b"../wx/f",
        b"../../",
        b"",
        b"sub/",
        b".",
        b"..",
        f"{top}/w/f".encode(),
        f"{top}/w/../r/f".encode(),
        f"/{top}/w/f".encode(),
        f"//{top}/w/f".encode(),
        f"{top}/w//sub/./f".encode(),
        f"{top}/wx".encode(),
        f"{top}/w".encode(),
        f"{top}/x/f".encode(),
        f"{top}/r/f".encode(),
        f"{top}/r/sub".encode(),
        f"{top}/r/new".encode(),
        b"/",
        b"/etc/passwd",
        b"/proc/self/fd/1",
        b"/proc",
        b"/process/x",
        b"/dev/stdout",
        b"/dev/fd/0",
        b"/dev/null",
        b"/tmp/../proc/self/cwd",
        f"{top}/w/\xff\xfe".encode(errors="surrogateescape") + b"\xff",
        b"a" * 5000,
        f"{top}/w/".encode() + b"b" * 4000,
        f"{top}/x/sink".encode(),
        b"../x/sink",
        b"../x/sink/",
        f"{top}/x/nosink".encode(),
        f"{top}/r".encode(),
        f"{top}/lw/f".encode(),
        f"{top}/lr/f".encode(),
        f"{top}/lw".encode(),
        b"../lw/new",
        b"back/f",
        f"{top}/w/back/f".encode(),
        f"{top}/chain/f".encode(),
        f"{top}/lwx/f".encode(),
        b"../lr/../lw/f",
    ]
    open_flags = [
        os.O_RDONLY,
        os.O_WRONLY,
        os.O_RDWR,
        3,
        os.O_RDONLY | os.O_DIRECTORY,
        os.O_WRONLY | os.O_CREAT,
        os.O_RDWR | os.O_CREAT | os.O_EXCL,
        os.O_WRONLY | os.O_TRUNC,
        os.O_RDONLY | os.O_TRUNC,
        os.O_PATH,
        os.O_PATH | os.O_CREAT,
        os.O_TMPFILE | os.O_RDWR,
        os.O_RDONLY | os.O_NOFOLLOW,
        os.O_RDONLY | (1 << 40),
    ]
    modes = [0o644, 0o4755, 0o2755 | (1 << 40)]
    at_fdcwd = 0xFFFFFFFFFFFFFF9C
    for path in paths:
        for flags, mode in itertools.product(open_flags, modes):
            yield "open", [path], lambda a, f=flags, m=mode: [a[0], f, m, 0, 0, 0]
            yield "creat", [path], lambda a, m=mode: [a[0], m, 0, 0, 0, 0]
            for fd in (at_fdcwd, *dirfds.values()):
                yield "openat", [path], lambda a, f=flags, m=mode, d=fd: [d, a[0], f, m, 0, 0]
        yield "execve", [path], lambda a: [a[0], 0, 0, 0, 0, 0]
        for fd in (at_fdcwd, *dirfds.values()):
            yield "execveat", [path], lambda a, d=fd: [d, a[0], 0, 0, 0x1000, 0]
            yield "unlinkat", [path], lambda a, d=fd: [d, a[0], 0, 0, 0, 0]
            yield "unlinkat", [path], lambda a, d=fd: [d, a[0], 0x200, 0, 0, 0]
            yield "mkdirat", [path], lambda a, d=fd: [d, a[0], 0o755, 0, 0, 0]
            yield "symlinkat", [b"target", path], lambda a, d=fd: [a[0], d, a[1], 0, 0, 0]
            yield "renameat", [path, b"f"], lambda a, d=fd: [d, a[0], at_fdcwd, a[1], 0, 0]
            yield "renameat2", [b"f", path], lambda a, d=fd: [at_fdcwd, a[0], d, a[1], 1, 0]
        for name in ("unlink", "rmdir", "mkdir", "truncate"):
            yield name, [path], lambda a: [a[0], 0o755, 0, 0, 0, 0]
        for kind in (
            0,
            stat.S_IFREG,
            stat.S_IFIFO,
            stat.S_IFSOCK,
            stat.S_IFCHR,
            stat.S_IFBLK,
            stat.S_IFDIR,
            stat.S_IFREG | 0o4755,
            stat.S_IFIFO | (1 << 33),
        ):
            yield "mknod", [path], lambda a, k=kind: [a[0], k | 0o644, 0, 0, 0, 0]
            yield "mknodat", [path], lambda a, k=kind: [at_fdcwd, a[0], k | 0o644, 0, 0, 0]
        yield "symlink", [b"target", path], lambda a: [a[0], a[1], 0, 0, 0, 0]
        yield "rename", [path, f"{top}/w/g".encode()], lambda a: [a[0], a[1], 0, 0, 0, 0]
        yield "rename", [f"{top}/w/g".encode(), path], lambda a: [a[0], a[1], 0, 0, 0, 0]
        yield "link", [path, b"g"], lambda a: [a[0], a[1], 0, 0, 0, 0]
        yield "openat2", [path], lambda a: [at_fdcwd, a[0], 0, 24, 0, 0]
    yield "open", [], lambda a: [0, 0, 0, 0, 0, 0]  # a NULL path: Python answers EFAULT
    yield "open", [], lambda a: [8, 0, 0, 0, 0, 0]  # an unmapped one


@pytest.mark.parametrize("linked", [False, True], ids=["plain", "linked"])
def test_the_c_fast_path_decides_exactly_as_the_python_fast_path(tree, linked, monkeypatch):
    top_path, plan = tree
    top = str(top_path)
    loop = _loop(plan, linked, monkeypatch)
    native = notify._native_loop(notify.NotifyLoop, -1, loop.rights, linked, recording=False)
    assert native is not None
    traps = {trap.name: trap for trap in TRAPS}
    read_end, write_end = os.pipe()
    dirfds = {
        "w": os.open(f"{top}/w", os.O_PATH | os.O_DIRECTORY),
        "x": os.open(f"{top}/x", os.O_RDONLY | os.O_DIRECTORY),
        "file": os.open(f"{top}/w/f", os.O_RDONLY),
        "pipe": read_end,
        "closed": 999,
    }
    tid = threading.get_native_id()
    checked = fast = 0
    try:
        for name, strings, make_args in _cases(top, dirfds):
            buffers, addresses = _strings(strings)
            args = make_args(addresses)
            trap = traps[name]
            c = native.fast(_nr(name), tid, tuple(args))
            py = _python_fast(loop, trap, tid, list(args))
            assert c == py, (name, strings, [hex(a) for a in args[:5]], f"C {c}, Python {py}")
            checked += 1
            fast += c
            del buffers
    finally:
        for fd in (*dirfds.values(), write_end):
            if fd != 999:
                os.close(fd)
    assert checked > 5000
    assert fast > 300  # both sides said CONTINUE often enough for the comparison to mean something


# ---- on the real kernel ---------------------------------------------------------------------------------


def _exec(home, *argv, env=None, flags=("--allow", "~")):
    return home.run([SUPERVISOR, "exec", *flags, "--", *argv], env={**home.env, **(env or {})})


def test_denials_read_and_written_through_the_c_loop_are_reported_as_without_it(home):
    """The same command gives the same output, status and reports with the C loop and with the Python one."""
    script = (
        f"echo data > data; cat data; cat {home.key}; echo x > {home.home}/.ssh/new; ls {home.home}/.ssh;"
        f" mkdir {home.home}/.aws/d; mv data data2; cat data2; rm data2; ln -s x link; rm link;"
        " exec /proc/self/cwd/../nothing"
    )
    native = _exec(home, "bash", "-c", script)
    python = _exec(home, "bash", "-c", script, env={"NONO_NOTIFY_NATIVE": "0"})
    assert (native.returncode, native.stdout) == (python.returncode, python.stdout)
    assert native.stderr == python.stderr
    assert "data\ndata\n" in native.stdout and FAKE_KEY not in native.stdout
    assert native.stderr.count("nono: denied") >= 3, native.stderr


def test_the_fast_path_is_answered_in_c_and_the_rest_in_python(home):
    from conftest import start_sandboxed
    from nono_supervisor.backend import current
    from nono_supervisor.policy.profile import PolicyOptions
    from nono_supervisor.session import Session

    (home.work / "data").write_text("data\n")
    script = textwrap.dedent(f"""
        import os
        for _ in range(500):
            os.close(os.open("data", os.O_RDWR))  # fast: the workdir is in the baseline
        for _ in range(20):
            try:
                os.open({str(home.key)!r}, os.O_RDWR)
            except PermissionError:
                pass
    """)  # start_sandboxed traps every open unless told it starts a command (test_speed_left_to_landlock)
    session = Session.create(PolicyOptions(), env=home.env, workdir=str(home.work))
    seen = []
    try:
        process = start_sandboxed(
            session,
            sys.executable,
            [sys.executable, "-c", script],
            home.env,
            str(home.work),
            (0, 1, 2),
            on_decision=lambda *a: seen.append(a),
        )
        assert process.wait() == 0
        current().finish(process)
        process.notify.join(5)
    finally:
        session.close()
    stats = process.notify.native_stats
    assert stats["continued"] >= 500
    assert stats["escalated"] >= 20
    assert stats["received"] == stats["continued"] + stats["escalated"]
    assert [what.path for decision, what in seen if decision == "deny"].count(str(home.key)) == 20


@pytest.mark.filterwarnings("ignore::pytest.PytestUnhandledThreadExceptionWarning")
def test_a_dead_c_loop_fails_closed_mid_command(home, monkeypatch):
    """Invariant 4 with the C loop: when it ends (here: the Python side it escalates to dies), the listener
    closes and every trapped syscall fails, the fast ones included."""

    class DiesAfter(notify.NotifyLoop):
        escalated = 0

        def _escalate(self, *a):
            DiesAfter.escalated += 1
            if DiesAfter.escalated > 50:
                raise SystemExit
            super()._escalate(*a)

    script = textwrap.dedent(f"""
        import errno, os
        ok = fail = 0
        for i in range(400):
            name = "/proc/self/cwd/README" if i < 200 else {str(home.work / "README")!r}
            try:
                os.close(os.open(name, os.O_RDWR)); ok += 1
            except OSError as e:
                fail += 1; code = e.errno
        print(ok, fail, errno.errorcode[code] if fail else "-")
    """)
    monkeypatch.setattr(notify, "NotifyLoop", DiesAfter)
    _status, out, _process = run_sandboxed(home, [sys.executable, "-c", script])
    ok, fail, code = out.split()
    assert code == "ENOSYS"
    assert int(fail) >= 200  # the plain opens after the death too, which the fast path would have allowed
    assert int(ok) < 200


def test_what_the_c_loop_read_is_what_python_decides_on(home, monkeypatch):
    """Read once: an escalated notification's path reaches the Python handler as the bytes C read; the
    handler does not read the target's memory again."""
    from nono_supervisor.linux.resolve import Reader

    reads = []
    original = Reader.read_string

    def counting(self, tid, address):
        reads.append(address)
        return original(self, tid, address)

    monkeypatch.setattr(Reader, "read_string", counting)
    script = (
        f"import os\ntry:\n    os.open({str(home.key)!r}, os.O_RDWR)\nexcept OSError as e:\n"
        "    print(e.errno)"
    )
    _status, out, process = run_sandboxed(home, [sys.executable, "-c", script])
    assert out.split() == [str(errno.EACCES)]
    assert process.notify.native_stats["escalated"] >= 1
    assert reads == []  # every path Python decided on came from the C read


def test_without_the_extension_the_python_loop_answers(home):
    result = _exec(
        home, "bash", "-c", f"cat {home.work / 'README'}; cat {home.key}", env={"NONO_NOTIFY_NATIVE": "0"}
    )
    assert "a file in the workdir" in result.stdout and FAKE_KEY not in result.stdout
    assert "nono: denied read" in result.stderr
    assert Path(notify.__file__).with_name("_notify.c").exists()


def test_the_c_loop_answers_with_its_effective_capabilities_dropped(home, monkeypatch):
    """What the supervisor does for a command it does with the command's powers: the C loop clears its
    thread's effective capabilities before it answers anything (as emulate.drop_capabilities)."""
    from conftest import start_sandboxed
    from nono_supervisor.backend import current
    from nono_supervisor.policy.profile import PolicyOptions
    from nono_supervisor.session import Session

    if os.geteuid() != 0:
        pytest.skip("only root has capabilities to drop")
    seen = []

    class Recording(notify.NotifyLoop):
        def _escalate(self, *a):
            with open("/proc/thread-self/status") as status:
                seen.append(next(line for line in status if line.startswith("CapEff:")).split()[1])
            super()._escalate(*a)

    monkeypatch.setattr(notify, "NotifyLoop", Recording)
    session = Session.create(PolicyOptions(), env=home.env, workdir=str(home.work))
    try:
        script = f"import os\ntry:\n    os.open({str(home.key)!r}, os.O_RDWR)\nexcept OSError:\n    pass"
        process = start_sandboxed(
            session, sys.executable, [sys.executable, "-c", script], home.env, str(home.work), (0, 1, 2)
        )
        process.wait()
        current().finish(process)
    finally:
        session.close()
    assert seen and set(seen) == {"0000000000000000"}
    with open("/proc/thread-self/status") as status:  # the test's own thread keeps its own
        assert next(line for line in status if line.startswith("CapEff:")).split()[1] != "0000000000000000"


def test_notify_loops_run_on_kept_threads(home):
    """One command after another reuses the same threads: no thread per command, and the kept ones stay
    bounded (16 idle at most)."""
    import threading

    from conftest import start_sandboxed
    from nono_supervisor.backend import current
    from nono_supervisor.policy.profile import PolicyOptions
    from nono_supervisor.session import Session

    session = Session.create(PolicyOptions(), env=home.env, workdir=str(home.work))
    try:
        for _ in range(30):
            process = start_sandboxed(session, "/bin/true", ["true"], home.env, str(home.work), (0, 1, 2))
            process.wait()
            current().finish(process)
            process.notify.join(5)
            assert not process.notify.is_alive()
    finally:
        session.close()
    kept = [t for t in threading.enumerate() if t.name == "nono-notify"]
    assert 1 <= len(kept) <= 16
