"""Issue 20, part B: toolchains quiet for real. What the user types into ``run -- bash`` runs in the agent
(bash), under its baseline, not routed: it must get what the agent's commands get (the per-project caches,
the token-free npmrc, TMPDIR), so that ``npm install``, ``npx`` and ``pip install`` ask nothing on a pty with
``--prompt tty``. Each scenario has its bare twin (the same lines typed into bash with no nono), root and
uid 65534.
"""

from __future__ import annotations

import errno
import functools
import io
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pexpect
import pytest
from test_toolchain_home import SECRET_WORDS, developer_home, on_a_pty, toolchain_tree  # noqa: F401 - a fixture

from conftest import NOBODY, SUPERVISOR, Home, as_nobody, for_one_test

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Landlock is Linux")

PROMPT = "nono-test$ "


def _wheel(directory: Path) -> Path:
    """A minimal pure-python wheel (PEP 427), so that pip installs with no index and no network."""
    name = directory / "hello_wheel-1.0-py3-none-any.whl"
    info = "hello_wheel-1.0.dist-info"
    files = {
        "hello_wheel.py": "GREETING = 'hello from a wheel'\n",
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: hello-wheel\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(name, "w") as whl:
        for path, text in {**files, f"{info}/RECORD": record}.items():
            whl.writestr(path, text)
    return name


def _tool_home(python: Path, owner: int = 0) -> Home:
    """The developer home, with an npm package (with a bin, for npx) packed and a wheel in the workdir, and
    npm's update notifier and pip's version check left on, as on a user's machine."""
    home = developer_home(python)
    package = home.work / "hello-pkg"
    (package / "package.json").write_text(
        '{"name": "hello-pkg", "version": "1.0.0", "main": "index.js", "bin": {"hello-pkg": "cli.js"}}\n'
    )
    (package / "cli.js").write_text("#!/usr/bin/env node\nconsole.log('hello from npx');\n")
    (package / "cli.js").chmod(0o755)
    scratch = {**os.environ, "npm_config_cache": str(home.root / "pack-cache")}
    subprocess.run(
        ["npm", "pack", "./hello-pkg"], cwd=home.work, env=scratch, capture_output=True, check=True
    )
    shutil.rmtree(home.root / "pack-cache", ignore_errors=True)
    _wheel(home.work)
    for name in ("npm_config_update_notifier", "PIP_DISABLE_PIP_VERSION_CHECK"):
        home.env.pop(name, None)
    home.env["PS1"] = PROMPT
    home.env["HISTFILE"] = "/dev/null"  # bash's history at exit: the shells' own files are issue 20's part A
    return home.give_to(owner)


@pytest.fixture
def tool_home(request, toolchain_tree):  # noqa: F811 - the fixture imported above
    owner = NOBODY if getattr(request, "param", False) else 0
    yield from for_one_test(functools.partial(_tool_home, toolchain_tree), owner)


TYPED = [
    "npm install --no-audit --no-fund ./hello-pkg-1.0.0.tgz >/dev/null",
    "node -p 'require(\"hello-pkg\")'",
    "npx hello-pkg",
    "python3 -m venv .venv",
    ".venv/bin/python -m pip install --no-index ./hello_wheel-1.0-py3-none-any.whl >/dev/null",
    ".venv/bin/python -c 'import hello_wheel; print(hello_wheel.GREETING)'",
]


def _typed(home: Home, argv: list[str], user: bool) -> str:
    """Type each line of TYPED into ``argv`` (an interactive bash) on a pty, its status printed after it: a
    question would wait for its answer and time out as a deny, so the status arrives either way."""
    log = io.StringIO()
    child = on_a_pty(home, argv, user, timeout=120)
    child.logfile_read = log
    try:
        child.expect_exact(PROMPT)
        for number, line in enumerate(TYPED):
            child.sendline(f'{line}; echo "@@ $? {number}"')
            child.expect(r"@@ \d+ ")
            child.expect_exact(PROMPT)
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    return log.getvalue().replace("\r\n", "\n")


def _statuses(out: str) -> list[int]:
    return [int(m) for m in re.findall(r"^@@ (\d+) ", out, re.M)]


@pytest.mark.parametrize("tool_home", [False, True], ids=["root", "nobody"], indirect=True)
def test_npm_npx_and_pip_typed_into_run_bash_ask_nothing(tool_home):
    home, user = tool_home, bool(tool_home.owner)
    out = _typed(home, [SUPERVISOR, "run", "--prompt", "tty", "--", "bash", "--norc"], user)
    assert _statuses(out) == [0] * len(TYPED), out
    assert "[o]nce" not in out and "nono:" not in out, out
    assert "hello from npx" in out and "hello from a wheel" in out and "\nhello\n" in out, out
    assert not SECRET_WORDS.search(out), out
    # The caches went to nono's per-project cache, never the user's own (which unsandboxed tools trust).
    h = home.home
    assert not (h / ".npm").exists() and not (h / ".cache" / "pip").exists(), list(h.rglob("*"))[:30]
    assert any((h / ".cache" / "nono-shell" / "projects").glob("*/npm/_cacache"))
    assert [r for r in home.audit() if r.get("decision") == "deny" and "/.npm" in r.get("path", "")] == []


@pytest.mark.parametrize("tool_home", [False, True], ids=["root", "nobody"], indirect=True)
def test_bare_twin_npm_npx_and_pip_typed_into_bash(tool_home):
    home, user = tool_home, bool(tool_home.owner)
    out = _typed(home, ["bash", "--norc"], user)
    assert _statuses(out) == [0] * len(TYPED), out
    assert "hello from npx" in out and "hello from a wheel" in out, out


# --- Session-private POSIX shared memory and semaphores (/dev/shm) ------------------------------------------

POOL = r"""
import multiprocessing, sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import shared_memory

if __name__ == "__main__":
    ctx = multiprocessing.get_context(sys.argv[1])
    with ctx.Pool(2) as pool:
        print("pool", sum(pool.map(abs, range(-5, 5))))
    with ProcessPoolExecutor(2, mp_context=ctx) as executor:
        print("executor", sum(executor.map(abs, range(-3, 3))))
    lock = ctx.Lock()
    with lock:
        print("lock ok")
    shm = shared_memory.SharedMemory(create=True, size=16)
    again = shared_memory.SharedMemory(name=shm.name)  # reopened by name (shm_open inside glibc)
    again.buf[0] = 42
    print("shm", shm.buf[0])
    again.close(); shm.close(); shm.unlink()
"""


def _exec(home: Home, argv: list[str], user: bool = False) -> subprocess.CompletedProcess:
    return home.run([SUPERVISOR, "exec", "--prompt", "never", "--", *argv], user=user, timeout=120)


def _shm_names() -> set[str]:
    return set(os.listdir("/dev/shm"))


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
@pytest.mark.parametrize("method", ["fork", "spawn"])
def test_a_pool_an_executor_and_shared_memory_work_in_a_command(request, user, method):
    """Issue 20: multiprocessing's semaphores (sem_open: create, link, reopen by name in a spawned child,
    unlink) and shared memory (shm_open, reopened by name) in /dev/shm, which the profile does not grant."""
    home = request.getfixturevalue("nobody_home" if user else "home")
    (home.work / "pool.py").write_text(POOL)
    before = _shm_names()
    run = _exec(home, [sys.executable, "pool.py", method], user)
    assert run.returncode == 0, run.stderr
    assert "pool 25\nexecutor 9\nlock ok\nshm 42\n" == run.stdout, run.stderr
    assert "nono:" not in run.stderr, run.stderr
    assert _shm_names() <= before  # each was unlinked (a grant of /dev/shm would have been the same)
    twin = home.run([sys.executable, "pool.py", method], user=user, timeout=120)
    assert twin.returncode == 0 and twin.stdout == run.stdout, twin.stderr


TOUCH = r"""
import os, sys
import _posixshmem  # shm_open and shm_unlink as glibc makes them (multiprocessing.shared_memory's own)
what, name = sys.argv[1], sys.argv[2]
try:
    if what == "open":
        fd = _posixshmem.shm_open("/" + name, os.O_RDWR, mode=0o600)
        print("read", os.read(fd, 6).decode())
    elif what == "unlink":
        _posixshmem.shm_unlink("/" + name)
        print("unlinked")
    elif what == "link":  # a second name for it, made in /dev/shm (the way sem_open names a semaphore)
        os.link("/dev/shm/" + name, "/dev/shm/" + name + "-mine")
        print("linked")
    elif what == "create-over":  # shm_open(O_CREAT) without O_EXCL on the existing name
        fd = _posixshmem.shm_open("/" + name, os.O_RDWR | os.O_CREAT, mode=0o600)
        print("read", os.read(fd, 6).decode())
    elif what == "keep":  # made and left for a later command of the same session
        fd = _posixshmem.shm_open("/" + name, os.O_RDWR | os.O_CREAT | os.O_EXCL, mode=0o600)
        os.write(fd, b"shared")
        print("kept")
except OSError as e:
    print("errno", e.errno)
"""


@pytest.fixture
def foreign_shm():
    """Another program's shared memory object (readable and writable by the tests' users, as the same
    uid's objects are to each other)."""
    name = f"nono-test-foreign-{os.getpid()}-{os.urandom(3).hex()}"
    path = Path("/dev/shm") / name
    path.write_bytes(b"secret" + b"\0" * 10)
    path.chmod(0o666)
    yield name
    for leftover in Path("/dev/shm").glob(name + "*"):
        leftover.unlink()


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
@pytest.mark.parametrize("what", ["open", "unlink", "link", "create-over"])
def test_another_programs_shared_memory_stays_denied(request, user, what, foreign_shm):
    home = request.getfixturevalue("nobody_home" if user else "home")
    if user:  # the same uid's object (/dev/shm is sticky: only its owner may remove it)
        os.chown(Path("/dev/shm") / foreign_shm, NOBODY, NOBODY)
    (home.work / "touch.py").write_text(TOUCH)
    run = _exec(home, [sys.executable, "touch.py", what, foreign_shm], user)
    assert run.stdout == f"errno {errno.EACCES}\n", (run.stdout, run.stderr)
    assert f"/dev/shm/{foreign_shm}" in run.stderr and "nono: denied" in run.stderr
    assert (Path("/dev/shm") / foreign_shm).read_bytes().startswith(b"secret")
    assert not (Path("/dev/shm") / (foreign_shm + "-mine")).exists()
    twin = home.run([sys.executable, "touch.py", what, foreign_shm], user=user)
    assert twin.stdout in ("read secret\n", "unlinked\n", "linked\n"), twin.stderr


AGENT = r"""
import json, subprocess, sys
for command in json.loads(sys.argv[1]):
    done = subprocess.run(command, shell=True, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    print(f"@@ {done.stdout.strip()} | {done.stderr.strip()}", flush=True)
"""


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_an_object_one_command_made_is_the_sessions_and_no_other_sessions(request, user):
    """Made by one routed command, opened by a later one of the same session; another session is denied
    it as any other program's object (with its bare twin: readable to the same uid without nono)."""
    import json

    home = request.getfixturevalue("nobody_home" if user else "home")
    (home.work / "touch.py").write_text(TOUCH)
    name = f"nono-test-kept-{os.getpid()}-{os.urandom(3).hex()}"
    touch = f"{sys.executable} touch.py"
    commands = [f"{touch} keep {name}", f"{touch} open {name}"]
    argv = [SUPERVISOR, "run", "--prompt", "never", "--", sys.executable, "-c", AGENT, json.dumps(commands)]
    try:
        run = home.run(argv, user=user, timeout=120)
        assert run.returncode == 0, run.stderr
        assert run.stdout.splitlines() == ["@@ kept | ", "@@ read shared | "], run.stdout
        other = _exec(home, [sys.executable, "touch.py", "open", name], user)
        assert other.stdout == f"errno {errno.EACCES}\n" and f"/dev/shm/{name}" in other.stderr
        twin = home.run([sys.executable, "touch.py", "open", name], user=user)
        assert twin.stdout == "read shared\n", twin.stderr
    finally:
        for leftover in Path("/dev/shm").glob(name + "*"):
            leftover.unlink()


def test_the_session_set_admits_only_new_regular_files_directly_in_dev_shm_and_its_own(tmp_path):
    """The bookkeeping alone (nono_supervisor.shm): what a session may create, and that an inode leaves
    its set with its last name (the number may come back as another program's object)."""
    from nono_supervisor.shm import SessionShm

    shm = SessionShm(str(tmp_path))
    mine, theirs, directory = tmp_path / "mine", tmp_path / "theirs", tmp_path / "dir"
    for path in (mine, theirs):
        path.write_bytes(b"x")
    directory.mkdir()
    assert shm.allows("create", str(tmp_path / "new"), None)
    assert not shm.allows("read", str(tmp_path / "new"), None)  # nothing to read before it is made
    assert not shm.allows("create", str(directory / "nested"), None)  # POSIX names are flat
    assert not shm.allows("create", str(tmp_path), None) and not shm.allows("exec", str(mine), None)
    shm.made(os.stat(mine))
    shm.made(os.stat(directory))  # not a regular file: never the session's
    assert shm.allows("read", str(mine), os.stat(mine)) and shm.allows("delete", str(mine), os.stat(mine))
    assert not shm.allows("read", str(theirs), os.stat(theirs))
    assert not shm.allows("delete", str(directory), os.stat(directory))
    os.link(mine, tmp_path / "second")
    shm.removed(os.stat(mine))  # two names: still the session's
    assert shm.allows("write", str(tmp_path / "second"), os.stat(tmp_path / "second"))
    os.unlink(tmp_path / "second")
    shm.removed(os.stat(mine))
    assert not shm.allows("write", str(mine), os.stat(mine))


# --- Version managers' shims --------------------------------------------------------------------------------

PYENV = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")


def _pyenv_home(python: Path, owner: int) -> Home:
    """A home with pyenv's own scripts (copied from this machine's install: the shims, pyenv-exec, its
    pip-rehash hook and pyenv-rehash are pyenv's real ones), one version (the toolchain's python, with pip),
    and its shims made by pyenv rehash itself."""
    home = _tool_home(python)
    root = home.home / ".pyenv"
    shutil.rmtree(root)
    for part in ("libexec", "pyenv.d"):
        shutil.copytree(PYENV / part, root / part, symlinks=True)
    version = python.parent.parent
    (root / "versions").mkdir()
    (root / "versions" / version.name).symlink_to(version)  # pyenv users link builds in
    (root / "version").write_text(version.name + "\n")
    pip = python.parent / "pip"  # the copy's own (its original names the original tree's python)
    pip.unlink(missing_ok=True)  # a hard link to the original: never written through
    pip.write_text(f"#!{python}\nimport sys\nfrom pip._internal.cli.main import main\nsys.exit(main())\n")
    pip.chmod(0o755)
    env = {**home.env, "PYENV_ROOT": str(root), "PATH": f"{root / 'shims'}:{home.env['PATH']}"}
    subprocess.run([str(root / "libexec" / "pyenv"), "rehash"], env=env, check=True)
    home.env = env
    return home.give_to(owner)


@pytest.fixture
def pyenv_home(request, toolchain_tree):  # noqa: F811 - the fixture imported above
    if not (PYENV / "libexec" / "pyenv-rehash").is_file() or not (PYENV / "pyenv.d" / "exec").is_dir():
        pytest.skip(f"pyenv is not installed here ({PYENV})")
    owner = NOBODY if getattr(request, "param", False) else 0
    yield from for_one_test(functools.partial(_pyenv_home, toolchain_tree), owner)


PIP_THROUGH_SHIM = "pip install --no-index --target vendor ./hello_wheel-1.0-py3-none-any.whl"


@pytest.mark.parametrize("pyenv_home", [False, True], ids=["root", "nobody"], indirect=True)
def test_pip_install_through_pyenvs_shim_exits_as_bare_and_the_shims_stay_unwritable(pyenv_home):
    """Issue 20: pyenv's pip-rehash hook rehashed after the install and exited 1 ("cannot rehash: ~/.pyenv/
    shims isn't writable"). The shims directory stays unwritable (a planted shim runs later, outside)."""
    home, user = pyenv_home, bool(pyenv_home.owner)
    shims = home.home / ".pyenv" / "shims"
    before = sorted(p.name for p in shims.iterdir())
    plant = f"echo planted > {shims}/planted"
    run = _exec(home, ["bash", "-c", f"{PIP_THROUGH_SHIM} && ls vendor && {{ {plant}; true; }}"], user)
    assert run.returncode == 0, run.stderr
    assert "hello_wheel.py" in run.stdout and "cannot rehash" not in run.stderr, run.stderr
    assert sorted(p.name for p in shims.iterdir()) == before  # nothing written there, the plant refused
    assert f"denied create {shims.relative_to(home.home).as_posix()}/planted" in run.stderr.replace("~/", "")
    shutil.rmtree(home.work / "vendor")
    twin = home.run(["bash", "-c", f"{PIP_THROUGH_SHIM} && ls vendor"], user=user, timeout=120)
    assert twin.returncode == 0 and "hello_wheel.py" in twin.stdout, twin.stderr


SHOW = "import os, sys; print(os.environ.get('PYENV_VERSION'), sys.executable, os.environ['PATH'], sep='\\n')"


@pytest.mark.parametrize("pyenv_home", [False, True], ids=["root", "nobody"], indirect=True)
def test_run_starts_a_pyenv_shims_program_with_what_pyenv_exec_sets(pyenv_home):
    """``run`` resolves the agent past the shim (each of pyenv's bash scripts would be routed): it keeps
    PYENV_VERSION, the version's bin directory on PATH and the sys.executable the shim gives bare."""
    home, user = pyenv_home, bool(pyenv_home.owner)
    run = home.run([SUPERVISOR, "run", "--prompt", "never", "--", "python", "-c", SHOW], user=user)
    twin = home.run(["python", "-c", SHOW], user=user)
    assert run.returncode == 0 and twin.returncode == 0, (run.stderr, twin.stderr)
    version, executable, path = run.stdout.splitlines()[-3:]
    bare_version, bare_executable, bare_path = twin.stdout.splitlines()
    assert version == bare_version != "None" and executable == bare_executable, (run.stdout, twin.stdout)
    # nono's own shims come first (routing), then the version's bin and the user's PATH, as pyenv-exec
    # sets them (pyenv also leaves its own libexec on PATH: its internals, not kept)
    bare = [p for p in bare_path.split(os.pathsep) if p != str(home.home / ".pyenv" / "libexec")]
    assert path.split(os.pathsep)[1:] == bare, (path, bare_path)


ATTACKS = r"""
import os, sys
name, key = sys.argv[1], sys.argv[2]
for label, attack in [
    ("symlink", lambda: os.symlink(key, "/dev/shm/" + name)),  # a name that would open the key
    ("mkdir", lambda: os.mkdir("/dev/shm/" + name)),  # only regular files are shared memory
    ("fifo", lambda: os.mkfifo("/dev/shm/" + name)),
]:
    try:
        attack()
        print(label, "made")
    except OSError as e:
        print(label, "errno", e.errno)
"""


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_only_regular_files_of_its_own_can_be_named_in_dev_shm(request, user):
    """A session may make shared memory in /dev/shm, not a symlink (to the key), a directory or a fifo there:
    each would be a name another program trusts. (A hard link of the key is EXDEV bare: another mount.)"""
    home = request.getfixturevalue("nobody_home" if user else "home")
    (home.work / "attacks.py").write_text(ATTACKS)
    name = f"nono-test-attack-{os.getpid()}-{os.urandom(3).hex()}"
    try:
        run = _exec(home, [sys.executable, "attacks.py", name, str(home.key)], user)
        assert run.stdout.splitlines() == [f"{what} errno {errno.EACCES}" for what in ATTACK_LABELS], run
        assert not os.path.lexists(f"/dev/shm/{name}")
        for what in ATTACK_LABELS:  # bare, each is made (and removed before the next)
            twin = home.run([sys.executable, "-c", _one(ATTACKS, what), name, str(home.key)], user=user)
            assert twin.stdout == f"{what} made\n", (what, twin.stdout, twin.stderr)
            path = Path("/dev/shm") / name
            path.rmdir() if path.is_dir() and not path.is_symlink() else path.unlink()
    finally:
        path = Path("/dev/shm") / name
        if path.is_dir() and not path.is_symlink():
            path.rmdir()
        elif os.path.lexists(path):
            path.unlink()


ATTACK_LABELS = ("symlink", "mkdir", "fifo")


def _one(script: str, label: str) -> str:
    """``script`` with only the attack ``label`` in its list."""
    lines = [
        line for line in script.splitlines() if not line.lstrip().startswith('("') or f'("{label}"' in line
    ]
    return "\n".join(lines)


STEPPED = r"""
import json, subprocess, sys
for command in json.loads(sys.argv[1]):
    input()  # the test's go-ahead: it acts outside the session between two commands
    done = subprocess.run(command, shell=True, stdin=subprocess.DEVNULL, capture_output=True, text=True)
    print(f"@@ {done.stdout.strip()}", flush=True)
"""


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_a_name_the_session_used_is_not_its_own_once_another_program_replaced_the_object(request, user):
    """The session's objects are inodes, not names: one replaced from outside at the same name is denied,
    while the session's own at that name was readable to the command before."""
    import json

    home = request.getfixturevalue("nobody_home" if user else "home")
    (home.work / "touch.py").write_text(TOUCH)
    name = f"nono-test-replaced-{os.getpid()}-{os.urandom(3).hex()}"
    path = Path("/dev/shm") / name
    touch = f"{sys.executable} touch.py"
    commands = [f"{touch} keep {name}", f"{touch} open {name}", f"{touch} open {name}"]
    argv = [SUPERVISOR, "run", "--prompt", "never", "--", sys.executable, "-c", STEPPED, json.dumps(commands)]
    if user:
        argv = as_nobody(argv)
    agent = subprocess.Popen(
        argv, cwd=home.work, env=home.env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        seen = []
        for step in range(3):
            if step == 2:  # another program of the same uid replaces the object under the same name
                path.unlink()
                path.write_text("theirs")
                os.chown(path, home.owner, home.owner)
            agent.stdin.write("\n")
            agent.stdin.flush()
            seen.append(agent.stdout.readline().strip())
        assert seen == ["@@ kept", "@@ read shared", f"@@ errno {errno.EACCES}"], seen
        bare = home.run([sys.executable, "touch.py", "open", name], user=user)
        assert bare.stdout == "read theirs\n", bare.stderr  # the twin: readable to the uid without nono
    finally:
        agent.stdin.close()
        agent.wait(timeout=60)
        if path.exists():
            path.unlink()
