"""tests/nobody_ns.py: uid 65534 reaches what it is given through shut directories, and nothing else."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import NOBODY, require_nobody

WRAPPER = str(Path(__file__).with_name("nobody_ns.py"))
SETPRIV = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups", "--inh-caps=-all", "--"]


@pytest.fixture
def shut(home) -> Path:
    """A root-owned 0700 dir holding a wanted tree (behind a second shut dir and a symlink) and a secret."""
    require_nobody()
    top = home.root / "shut"
    (top / "inner" / "wanted").mkdir(parents=True)
    (top / "inner" / "wanted" / "file").write_text("reached\n")
    (top / "inner" / "other").write_text("other\n")
    (top / "link").symlink_to("inner/wanted")
    (top / "secret").write_text("secret\n")
    top.chmod(0o700)
    (top / "inner").chmod(0o700)
    yield top
    shutil.rmtree(top, ignore_errors=True)


def _as_nobody_reaching(reach: list[Path], script: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-IBS", WRAPPER, *map(str, reach), "--", *SETPRIV, "sh", "-c", script],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_only_the_entries_on_the_way_are_visible(shut):
    mounts = Path("/proc/self/mountinfo").read_text()
    result = _as_nobody_reaching(
        [shut / "link" / "file"],
        f"id -u; cat {shut}/link/file; ls -A {shut}; ls -A {shut}/inner; cat {shut}/secret || echo no-secret",
    )
    assert result.stdout.split() == [str(NOBODY), "reached", "inner", "link", "wanted", "no-secret"], result
    # Nothing changed on the machine: the dirs are still shut, and the mounts were the namespace's only.
    assert (shut.stat().st_mode & 0o777, (shut / "inner").stat().st_mode & 0o777) == (0o700, 0o700)
    assert Path("/proc/self/mountinfo").read_text() == mounts


def test_twin_without_the_namespace_uid_65534_cannot_reach_it(shut):
    result = subprocess.run(
        [*SETPRIV, "sh", "-c", f"cat {shut}/link/file || echo unreachable"],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.stdout == "unreachable\n"


def test_a_wanted_directory_that_is_itself_shut_is_reachable_whole(shut):
    result = _as_nobody_reaching([shut / "inner"], f"ls -A {shut}/inner; cat {shut}/inner/other")
    assert result.stdout.split() == ["other", "wanted", "other"], result


def test_without_the_right_to_mount_it_says_why_and_runs_nothing(home):
    require_nobody()
    marker = home.root / "ran"
    result = subprocess.run(
        ["setpriv", "--bounding-set=-sys_admin", "--inh-caps=-sys_admin", "--"]
        + [sys.executable, "-IBS", WRAPPER, str(home.root), "--", "touch", str(marker)],
        cwd="/",
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 126
    assert result.stderr == "nobody_ns: unshare(CLONE_NEWNS): Operation not permitted\n"
    assert not marker.exists()
