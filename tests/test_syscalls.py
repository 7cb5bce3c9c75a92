"""One Linux syscall layer, correct on every architecture (issue 21).

The Python side once carried x86-64's syscall numbers by hand: on arm64 the seccomp probe asked syscall 317
(none there) and every command failed with "needs Linux >= 5.14", and capget/capset were 125/126, which
are sched_get_priority_max/min there, so a root supervisor's notify threads kept its capabilities without
a word. Numbers now come from the kernel headers of the build (``linux/_syscalls``) through one module,
``linux/libc``; a capability drop that fails refuses the command.
"""

from __future__ import annotations

import ast
import errno
import os
import re
import threading
from pathlib import Path

import pyseccomp
import pytest

from conftest import SUPERVISOR, Home, run_sandboxed
from nono_supervisor.errors import SandboxError
from nono_supervisor.linux import _notify, emulate, libc, notify
from nono_supervisor.linux.seccomp import TRAPS

ROOT = Path(__file__).resolve().parent.parent
SOURCES = sorted([*(ROOT / "supervisor").rglob("*.py"), *(ROOT / "nono_shell").rglob("*.py")])
# The tests and benchmarks too (scripts they run included): this file's own snippets are what the scan finds.
SCANNED = SOURCES + sorted(
    p for d in ("tests", "bench") for p in (ROOT / d).rglob("*.py") if p.name != Path(__file__).name
)
_SCRIPT_SYSCALL = re.compile(r"\bsyscall\(\s*\d")  # a raw syscall by number in a script a test runs
_NUMBER_WORDS = {"SYS", "NR", "SYSCALL", "SYSCALLS", "NUMBER", "NUMBERS"}  # in a name, between underscores
_BY_NUMBER_CALLS = {"syscall": 0, "add_rule": 1}  # function -> the argument that is a syscall number


def _ints(node: ast.AST) -> list[int]:
    return [n.value for n in ast.walk(node) if isinstance(n, ast.Constant) and type(n.value) is int]


def _bound_names(target: ast.AST) -> list[str]:
    """The names an assignment binds (``a, b = ...``, ``self.a = ...``), not those it indexes with."""
    if isinstance(target, (ast.Tuple, ast.List)):
        return [name for element in target.elts for name in _bound_names(element)]
    if isinstance(target, ast.Starred):
        return _bound_names(target.value)
    return [target.id] if isinstance(target, ast.Name) else [getattr(target, "attr", "")]


def _hand_written_numbers(source: str) -> list[str]:
    """Syscall numbers written as literals: an int given to a name that says it holds syscall numbers
    (``_SYS_X = 317``, ``BLOCKED_BY_NUMBER = (("x", 463),)``), or as the number of ``syscall()`` or
    ``add_rule()``, in the code or in a script held in a string."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Constant) and _SCRIPT_SYSCALL.search(str(node.value)):
            found.append(f"line {node.lineno}: a script makes syscall(<number>)")
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = [name for target in targets for name in _bound_names(target)]
            if any(_NUMBER_WORDS & set(name.upper().split("_")) for name in names):
                found += [f"line {node.lineno}: {names} = {n}" for n in _ints(node.value)]
        elif isinstance(node, ast.Call):
            name = getattr(node.func, "attr", getattr(node.func, "id", ""))
            index = _BY_NUMBER_CALLS.get(name)
            if index is not None and len(node.args) > index:
                found += [f"line {node.lineno}: {name}(... {n} ...)" for n in _ints(node.args[index])]
    return found


@pytest.mark.parametrize(
    "source",
    [
        "_SYS_SECCOMP = 317",  # linux/kernel.py before
        "_SYS_CAPGET, _SYS_CAPSET = 125, 126",  # linux/emulate.py before
        "_SYS_CREATE_RULESET, _SYS_ADD_RULE = 444, 445",  # linux/landlock.py before
        'BLOCKED_BY_NUMBER_ENOSYS: tuple = (("setxattrat", 463), ("removexattrat", 466))',  # linux/seccomp.py
        "fd = _libc.syscall(437, base, path, how, 24)",
        "flt.add_rule(pyseccomp.ERRNO(errno.ENOSYS), 463)",
        'PROBE = """\nfd = libc.syscall(257, -100, path.encode(), flags)\n"""',  # tests/test_oracle.py before
    ],
)
def test_the_scan_finds_the_numbers_that_were_written_by_hand(source: str) -> None:
    assert _hand_written_numbers(source)


def test_the_scan_lets_numbers_by_name_through() -> None:
    source = '_SYS_OPENAT2 = libc.number("openat2")\nlibc.syscall(_SYS_OPENAT2, base, path, how, 24)\n'
    assert _hand_written_numbers(source) == []


def test_no_syscall_number_is_written_by_hand_in_python() -> None:
    found = {str(p.relative_to(ROOT)): _hand_written_numbers(p.read_text()) for p in SCANNED}
    assert {path: lines for path, lines in found.items() if lines} == {}


def test_one_module_loads_libc_for_each_backend() -> None:
    """linux/libc.py owns the Linux handle (six modules each loaded their own); macos/libc.py is macOS's."""
    loaders = set()
    for path in SOURCES:
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", "") == "CDLL":
                if node.args and isinstance(node.args[0], ast.Constant) and node.args[0].value is None:
                    loaders.add(str(path.relative_to(ROOT)))
    assert loaders == {"supervisor/linux/libc.py", "supervisor/macos/libc.py"}


def test_the_numbers_from_the_headers_are_libseccomp_s_for_this_machine() -> None:
    """Two independent tables agree: the kernel headers the extension was built against, and libseccomp's
    (where it knows the syscall: 2.5.4 has no setxattrat)."""
    known = 0
    for name, number in libc.NUMBERS.items():
        theirs = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name)
        if theirs >= 0:
            known += 1
            assert number == theirs, name
    assert known >= 7  # capget, capset, seccomp, openat2, pidfd_getfd and the two landlock calls


@pytest.mark.parametrize("arch", [pyseccomp.Arch.X86_64, pyseccomp.Arch.AARCH64], ids=["x86_64", "aarch64"])
def test_a_trap_an_architecture_lacks_has_its_at_form_trapped(arch) -> None:
    """arm64 has no open, creat, rename, unlink, mkdir...: libc makes the *at form there, which is trapped."""
    trapped = {trap.name for trap in TRAPS}
    twins = {
        "open": "openat",
        "creat": "openat",
        "chmod": "fchmodat",
        "chown": "fchownat",
        "lchown": "fchownat",
        "link": "linkat",
        "mkdir": "mkdirat",
        "mknod": "mknodat",
        "rename": "renameat2",
        "rmdir": "unlinkat",
        "unlink": "unlinkat",
        "symlink": "symlinkat",
        "utime": "utimensat",
        "utimes": "utimensat",
        "futimesat": "utimensat",
    }
    for name in sorted(trapped):
        if pyseccomp.resolve_syscall(arch, name) < 0:
            assert twins.get(name) in trapped, name
            assert pyseccomp.resolve_syscall(arch, twins[name]) >= 0, twins[name]


def test_the_trap_table_of_arm64_builds_the_c_loop(monkeypatch) -> None:
    """The dispatch table with arm64's numbers (libseccomp resolves them on any machine): no negative
    pseudo-number for a syscall arm64 lacks, which the C loop refused, so every trapped command failed."""
    resolve = pyseccomp.resolve_syscall
    monkeypatch.setattr(
        pyseccomp, "resolve_syscall", lambda _arch, name: resolve(pyseccomp.Arch.AARCH64, name)
    )
    notify._dispatch_table.cache_clear()
    notify.native_table.cache_clear()  # cached too: an earlier test's table (this machine's numbers)
    try:
        table = notify.native_table()
        numbers = {resolve(pyseccomp.Arch.AARCH64, trap.name) for trap in TRAPS}
        assert min(numbers) < 0  # open, creat...: arm64 has none
        assert set(table) == {n for n in numbers if n >= 0}
        assert resolve(pyseccomp.Arch.AARCH64, "openat") in table
        assert set(_notify.Loop(-1, _notify.Rights([], 0), table, False).table()) == set(table)
    finally:
        monkeypatch.undo()
        notify._dispatch_table.cache_clear()
        notify.native_table.cache_clear()  # no later test may get arm64's numbers


# --------------------------------------------------------------------------------------------------------
# Capability drops fail closed
# --------------------------------------------------------------------------------------------------------


def _root() -> None:
    if os.geteuid() != 0:
        pytest.skip("only a root supervisor has capabilities to drop (uid 65534 has none)")


def _arm64_mixup(monkeypatch) -> None:
    """What x86-64's capget number did on arm64: another syscall, which fails (EINVAL on the pointer)."""
    other = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, "sched_get_priority_max")
    monkeypatch.setattr(emulate, "_SYS_CAPGET", other)


def test_a_capget_that_fails_is_an_error_not_nothing_to_drop(monkeypatch) -> None:
    _arm64_mixup(monkeypatch)
    with pytest.raises(OSError) as e:
        emulate.drop_capabilities()
    assert e.value.errno == errno.EINVAL
    assert emulate.has_effective_capabilities()  # unknown is taken as held: the starter waits for the drop


def test_a_capset_that_succeeds_without_dropping_is_an_error(monkeypatch) -> None:
    """A number that 'succeeds' doing something else (getpid) leaves them: the read-back sees it."""
    _root()
    monkeypatch.setattr(emulate, "_SYS_CAPSET", pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, "getpid"))
    errors = []

    def in_a_thread() -> None:  # credentials are per thread: this one is thrown away
        try:
            emulate.drop_capabilities()
        except OSError as e:
            errors.append(e.errno)

    thread = threading.Thread(target=in_a_thread)
    thread.start()
    thread.join()
    assert errors == [errno.EPERM]


@pytest.mark.parametrize("native", ["1", "0"], ids=["c-loop", "python-loop"])
def test_a_notify_loop_that_cannot_drop_capabilities_refuses_the_command(
    home: Home, monkeypatch, native: str
) -> None:
    _root()
    monkeypatch.setenv("NONO_NOTIFY_NATIVE", native)
    ran = home.work / "ran"
    argv = ["/bin/sh", "-c", f"touch {ran}; echo ran"]
    # Twin: the same command, with the loop able to drop them, runs.
    code, out, _ = run_sandboxed(home, argv)
    assert code == 0 and out == "ran\n" and ran.exists()
    ran.unlink()
    _arm64_mixup(monkeypatch)
    with pytest.raises(SandboxError) as e:
        run_sandboxed(home, argv)
    message = str(e.value)
    assert "\n" not in message
    assert (
        message.startswith("sandbox setup failed at capset: Invalid argument")
        and "nothing was run" in message
    )
    assert not ran.exists()


def _capabilities(status: str) -> dict[str, int]:
    """CapInh, CapPrm, CapEff, CapAmb of a /proc/PID/status."""
    fields = dict(line.split(":\t") for line in status.splitlines() if line.startswith("Cap"))
    return {name: int(fields[name], 16) for name in ("CapInh", "CapPrm", "CapEff", "CapAmb")}


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_capabilities_of_the_supervisor_do_not_reach_the_command(request, user: bool) -> None:
    """A root supervisor's inheritable set became its commands' permitted and effective set at their
    exec (the emptied bounding set does not limit it: a supervisor in a container of an older runtime,
    whose root has CapInh, gave its commands CAP_DAC_OVERRIDE); a non-root supervisor's ambient set was
    kept across it."""
    if not user:
        _root()
    home = request.getfixturevalue("nobody_home" if user else "home")
    status = ["grep", "^Cap", "/proc/self/status"]

    def run(argv: list[str]):
        if user:  # uid 65534 with CAP_DAC_READ_SEARCH inheritable and ambient
            return home.run(argv, user=True, caps=("dac_read_search",))
        return home.run(["setpriv", "--inh-caps=+dac_override,+sys_admin", "--", *argv])  # root, inheritable

    bare = run(status)
    assert bare.returncode == 0, bare.stderr
    assert _capabilities(bare.stdout)["CapEff"] != 0  # the twin: unsandboxed, the process has them
    sandboxed = run([SUPERVISOR, "exec", "--", *status])
    assert sandboxed.returncode == 0, sandboxed.stderr
    assert _capabilities(sandboxed.stdout) == {"CapInh": 0, "CapPrm": 0, "CapEff": 0, "CapAmb": 0}
