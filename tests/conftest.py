"""Shared fixtures: a fake HOME with fake secrets, a running supervisor, and running things as nobody.

Tests never touch the real home: every command gets HOME, XDG_CONFIG_HOME and XDG_STATE_HOME inside a
temp dir that is world-traversable, so the same fixtures serve the unprivileged (setpriv) runs.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
SUPERVISOR = str(BIN / "nono-supervisor")
NONO_SHELL = str(BIN / "nono-shell")
FAKE_KEY = "-----BEGIN FAKE OPENSSH KEY----- nono-test-secret-7f3a9c -----END FAKE KEY-----"
FAKE_AWS = "[default]\naws_secret_access_key = nono-test-aws-secret-41d2\n"
NOBODY = 65534


CHECKOUT = Path(__file__).resolve().parent.parent
# What uid 65534 must reach: the interpreter, the venv, the checkout (editable install, built extensions)
# and the temp dir the test homes live in. tests/nobody_ns.py makes each reachable in a mount namespace of
# the command's own, where every directory on the way that uid 65534 cannot search (a 0700 /root holding a
# pyenv build, a clone under /root) is covered by a tmpfs holding only the entries on the way.
NOBODY_REACHES = (sys.base_prefix, sys.prefix, sys.executable, str(CHECKOUT), tempfile.gettempdir())
REQUIRE_NOBODY = "NONO_TEST_REQUIRE_NOBODY"  # =1 (CI): what would skip the runs as uid 65534 fails instead


def as_nobody(argv: list[str], caps: tuple[str, ...] = ()) -> list[str]:
    """Run ``argv`` as uid/gid 65534 with no supplementary groups and no capabilities but ``caps``, which
    it then holds inheritable and ambient (as a service manager's AmbientCapabilities= gives them).

    The one place these command lines are built: a root-run wrapper enters a private mount namespace in
    which uid 65534 can reach ``NOBODY_REACHES`` (nothing on the machine changes), then execs setpriv.
    """
    kept = "".join(f",+{cap}" for cap in caps)
    return [
        sys.executable,
        "-IBS",
        str(Path(__file__).with_name("nobody_ns.py")),
        *NOBODY_REACHES,
        "--",
        "setpriv",
        f"--reuid={NOBODY}",
        f"--regid={NOBODY}",
        "--clear-groups",
        f"--inh-caps=-all{kept}",
        *([f"--ambient-caps={kept[1:]}"] if caps else []),
        "--",
        *argv,
    ]


def syscall_numbers(*names: str) -> str:
    """A line of Python defining ``NR``, name -> this machine's syscall number (libseccomp's table), for
    the scripts tests run that make raw syscalls: a number written in them is one architecture's (openat
    is 257 on x86-64, 56 on arm64), and elsewhere the script would test another syscall, or none."""
    import pyseccomp

    numbers = {name: pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, name) for name in names}
    return f"NR = {json.dumps(numbers)}\n"  # double quotes: a script may be put inside shell single quotes


@functools.cache
def nobody_unavailable() -> str | None:
    """Why nothing can be run as uid 65534 here (one line), or None when it can."""
    if os.geteuid() != 0:
        return "needs root to drop to uid 65534"
    if shutil.which("setpriv") is None:
        return "needs setpriv (util-linux) to drop to uid 65534"
    probe = subprocess.run(
        as_nobody([sys.executable, "-c", "import nono_shell.client, nono_supervisor.linux._spawn"]),
        cwd="/",
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
        timeout=60,
    )
    if probe.returncode != 0:
        lines = probe.stderr.strip().splitlines() or [f"exit status {probe.returncode}"]
        return f"cannot run {sys.executable} as uid 65534: {lines[-1]}"
    return None


def require_nobody() -> None:
    """Skip a test that runs things as uid 65534 where that is impossible; fail instead under CI's flag."""
    reason = nobody_unavailable()
    if reason is None:
        return
    if os.environ.get(REQUIRE_NOBODY) == "1":
        pytest.fail(f"{reason} ({REQUIRE_NOBODY}=1: the runs as uid 65534 may not be skipped)", pytrace=False)
    pytest.skip(reason)


@dataclass
class Home:
    """A fake user: HOME with fake credentials, a workdir, and the env that points everything there."""

    root: Path
    owner: int = 0
    env: dict[str, str] = field(default_factory=dict)

    @property
    def home(self) -> Path:
        return self.root / "home"

    @property
    def work(self) -> Path:
        return self.home / "project"

    @property
    def key(self) -> Path:
        return self.home / ".ssh" / "id_rsa"

    @property
    def aws(self) -> Path:
        return self.home / ".aws" / "credentials"

    @property
    def audit_log(self) -> Path:
        return self.home / ".local" / "state" / "nono-shell" / "audit.jsonl"

    def audit(self) -> list[dict]:
        if not self.audit_log.exists():
            return []
        return [json.loads(line) for line in self.audit_log.read_text().splitlines()]

    def give_to(self, owner: int) -> Home:
        """Everything under the root becomes ``owner``'s (uid 65534's home, as the human's own files are);
        nothing for root (0)."""
        if owner:
            for path in [self.root, *self.root.rglob("*")]:
                os.lchown(path, owner, owner)
            self.owner = owner
        return self

    def run(
        self, argv: list[str], *, user: bool = False, caps: tuple[str, ...] = (), **kw
    ) -> subprocess.CompletedProcess:
        kw.setdefault("cwd", self.work)
        kw.setdefault("env", self.env)
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 60)
        return subprocess.run(as_nobody(argv, caps) if user else argv, **kw)


def make_home(owner: int = 0) -> Home:
    root = Path(tempfile.mkdtemp(prefix="nono-test-"))
    root.chmod(0o755)
    home = Home(root, owner)
    (home.home / ".ssh").mkdir(parents=True)
    home.key.write_text(FAKE_KEY + "\n")
    home.aws.parent.mkdir()
    home.aws.write_text(FAKE_AWS)
    home.work.mkdir()
    (home.work / "README").write_text("a file in the workdir\n")
    home.env = {
        "HOME": str(home.home),
        "XDG_CONFIG_HOME": str(home.home / ".config"),
        "XDG_STATE_HOME": str(home.home / ".local" / "state"),
        "PATH": f"{BIN}:/usr/local/bin:/usr/bin:/bin",
        "LANG": "C.UTF-8",
    }
    return home.give_to(owner)


SKEL = Path("/etc/skel")
# A line each stock file gets appended, so that a test can tell whether a shell ran (or anyone read) it.
SKEL_MARK = "nono-test-skel-ran"


def make_skel_home(owner: int = 0) -> Home:
    """A home as a distribution makes it (``/etc/skel``: ``.profile``, ``.bashrc``, ``.bash_logout``) with
    a ``~/.gitconfig``, on top of ``make_home``'s fake secrets: where the shells' start-up reads happen.
    Each start-up file ends by exporting ``NONO_SKEL_<FILE>=nono-test-skel-ran`` (a shell that ran it has
    it set) and ``~/notes.txt`` is a plain file of the home (content nothing grants)."""
    home = make_home(owner)
    for name in (".profile", ".bashrc", ".bash_logout"):
        stock = (SKEL / name).read_text() if (SKEL / name).is_file() else f"# {name}\n"
        variable = "NONO_SKEL_" + name.strip(".").upper()
        (home.home / name).write_text(f"{stock}\nexport {variable}={SKEL_MARK}\n")
    (home.home / ".gitconfig").write_text("[user]\n\tname = Test User\n\temail = test@example.invalid\n")
    (home.home / "notes.txt").write_text(f"notes {SKEL_MARK}\n")
    if owner:
        for path in home.home.iterdir():
            os.lchown(path, owner, owner)
    return home


def for_one_test(make, owner: int = 0) -> Iterator[Home]:
    """A fake home made by ``make`` for one test (uid 65534's where it can run), removed after it."""
    if owner:
        require_nobody()
    h = make(owner)
    yield h
    shutil.rmtree(h.root, ignore_errors=True)


@pytest.fixture
def skel_home() -> Iterator[Home]:
    yield from for_one_test(make_skel_home)


@pytest.fixture
def nobody_skel_home() -> Iterator[Home]:
    yield from for_one_test(make_skel_home, NOBODY)


@pytest.fixture
def home() -> Iterator[Home]:
    yield from for_one_test(make_home)


@pytest.fixture
def nobody_home() -> Iterator[Home]:
    yield from for_one_test(make_home, NOBODY)


@dataclass
class Supervisor:
    home: Home
    process: subprocess.Popen
    socket: Path
    shims: Path
    stderr_path: Path

    @property
    def env(self) -> dict[str, str]:
        return {
            **self.home.env,
            "NONO_SOCKET": str(self.socket),
            "PATH": f"{self.shims}:{self.home.env['PATH']}",
        }

    def shell(self, *args: str, name: str = "bash", **kw) -> subprocess.CompletedProcess:
        """Run the shim named ``name`` (e.g. ``bash -c CMD``) through this supervisor."""
        kw.setdefault("env", self.env)
        return self.home.run([str(self.shims / name), *args], user=self.home.owner == NOBODY, **kw)

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_supervisor(home: Home, *flags: str) -> Supervisor:
    run_dir = home.root / "run"
    run_dir.mkdir(mode=0o700)
    shims = home.root / "shims"
    shims.mkdir()
    user = home.owner == NOBODY
    if user:
        os.chown(run_dir, NOBODY, NOBODY)
        os.chown(shims, NOBODY, NOBODY)
    socket_path = run_dir / "socket"
    stderr_path = home.root / "supervisor.err"
    argv = [SUPERVISOR, "serve", "--socket", str(socket_path), "--shims", str(shims), "-v", *flags]
    with open(stderr_path, "wb") as err:
        process = subprocess.Popen(as_nobody(argv) if user else argv, cwd=home.work, env=home.env, stderr=err)
    deadline = time.monotonic() + 20
    while not socket_path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"supervisor did not start: {stderr_path.read_text()}")
        time.sleep(0.02)
    return Supervisor(home, process, socket_path, shims, stderr_path)


@pytest.fixture
def supervisor(home: Home) -> Supervisor:
    s = start_supervisor(home)
    yield s
    s.stop()


@pytest.fixture
def nobody_supervisor(nobody_home: Home) -> Supervisor:
    s = start_supervisor(nobody_home)
    yield s
    s.stop()


def start_sandboxed(
    session,
    path: str,
    argv: list[str],
    env: dict[str, str],
    cwd: str | None,
    stdio: tuple[int, int, int],
    *,
    ctty: bool = False,
    policy=None,
    trap: bool = True,
    left_to_landlock: bool = False,
    notify_class: type | None = None,
    **hooks: object,
):
    """One command through the platform seam in this process, as the tests drive it: what it gets
    (``backend.command_gets``, ``trap`` on unless a test says otherwise), compiled and started by this OS's
    backend. ``left_to_landlock``: a command's launch (``Launch.leave_to_kernel``), else every open is
    trapped as for the agent; ``notify_class``: Linux's loop class (``LinuxHooks``); ``hooks``: the
    ``backend.Hooks`` fields (on_decision, consent, on_late_deny, undo)."""
    from nono_supervisor import backend

    gets = backend.command_gets(session, stdio, policy, trap=trap)
    launch = backend.Launch(path, argv, env, cwd, stdio, ctty=ctty, leave_to_kernel=left_to_landlock)
    if notify_class is None:
        said = backend.Hooks(**hooks)
    else:
        from nono_supervisor.linux.backend import LinuxHooks

        said = LinuxHooks(**hooks, loop_class=notify_class)
    platform = backend.current()
    return platform.start(platform.compile(gets), launch, said)


def run_sandboxed(
    home: Home, argv: list[str], *, options: object = None, during=None, **start: object
) -> tuple[int, str, object]:
    """argv under ``start_sandboxed`` in this process, stdout a pipe: (exit code, stdout, the process, its
    notify loop ended). ``options``: the PolicyOptions (the default policy); ``during``: called with the
    process once it runs, before the wait; ``start``: start_sandboxed's keywords (trap, consent,
    on_decision, left_to_landlock...)."""
    from nono_supervisor.policy.profile import PolicyOptions
    from nono_supervisor.session import Session

    session = Session.create(options or PolicyOptions(), env=home.env, workdir=str(home.work))
    read_end, write_end = os.pipe()
    try:
        process = start_sandboxed(
            session, argv[0], argv, home.env, str(home.work), (0, write_end, 2), **start
        )
        os.close(write_end)
        write_end = -1
        if during is not None:
            during(process)
        status = process.wait()
        out = os.read(read_end, 1 << 16).decode()
        if process.notify is not None:
            process.notify.join(5)
    finally:
        if write_end >= 0:
            os.close(write_end)
        os.close(read_end)
        session.close()
    return os.waitstatus_to_exitcode(status), out, process


GOLDEN = Path(__file__).parent / "golden"


def matches_golden(text: str, golden: Path) -> None:
    """``text`` is the reviewed golden file (``tests/golden/...``); ``NONO_UPDATE_GOLDEN=1`` rewrites it, to
    be reviewed as a diff."""
    if os.environ.get("NONO_UPDATE_GOLDEN") == "1":
        golden.parent.mkdir(parents=True, exist_ok=True)
        golden.write_text(text, encoding="utf-8")
    assert golden.is_file(), f"missing {golden}; run with NONO_UPDATE_GOLDEN=1 and review it"
    assert text == golden.read_text(encoding="utf-8"), f"{golden.stem}: drifted from {golden}"


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):  # gone, or being reaped as we opened it
        return False
    return state != "Z"


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
