"""Shared fixtures: a fake HOME with fake secrets, a running supervisor, and running things as nobody.

Tests never touch the real home: every command gets HOME, XDG_CONFIG_HOME and XDG_STATE_HOME inside a
temp dir that is world-traversable, so the same fixtures serve the unprivileged (setpriv) runs.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
SUPERVISOR = str(BIN / "nono-supervisor")
NONO_SHELL = str(BIN / "nono-shell")
FAKE_KEY = "-----BEGIN FAKE OPENSSH KEY----- nono-test-secret-7f3a9c -----END FAKE KEY-----"
FAKE_AWS = "[default]\naws_secret_access_key = nono-test-aws-secret-41d2\n"
NOBODY = 65534


def can_drop_privileges() -> bool:
    return os.geteuid() == 0 and shutil.which("setpriv") is not None


def as_nobody(argv: list[str]) -> list[str]:
    """Run ``argv`` as uid/gid 65534 with no supplementary groups and no capabilities."""
    return [
        "setpriv",
        f"--reuid={NOBODY}",
        f"--regid={NOBODY}",
        "--clear-groups",
        "--inh-caps=-all",
        "--",
        *argv,
    ]


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

    def run(self, argv: list[str], *, user: bool = False, **kw) -> subprocess.CompletedProcess:
        kw.setdefault("cwd", self.work)
        kw.setdefault("env", self.env)
        kw.setdefault("capture_output", True)
        kw.setdefault("text", True)
        kw.setdefault("timeout", 60)
        return subprocess.run(as_nobody(argv) if user else argv, **kw)


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
    if owner:
        for path in [root, *root.rglob("*")]:
            os.lchown(path, owner, owner)
    return home


@pytest.fixture
def home() -> Home:
    h = make_home()
    yield h
    shutil.rmtree(h.root, ignore_errors=True)


@pytest.fixture
def nobody_home() -> Home:
    if not can_drop_privileges():
        pytest.skip("needs root and setpriv to drop to an unprivileged uid")
    h = make_home(owner=NOBODY)
    yield h
    shutil.rmtree(h.root, ignore_errors=True)


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


def pid_alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def wait_until(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()
