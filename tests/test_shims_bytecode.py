"""The shims never write bytecode into nono-shell's own package (issue 11, finding 5).

The package is never-grantable, so a shim that tried to cache bytecode there from inside a sandbox would
print ``nono: denied create .../nono_shell/__pycache__ [never-grantable]`` into the agent's output. The
tests run a supervisor from a fresh copy of the packages (no ``__pycache__`` anywhere), the way the first
session after ``pip install -e .`` starts, and send commands through its shims, nested ones included
(those run inside a per-command sandbox). The supervisor either caches bytecode for its own imports or,
with ``PYTHONDONTWRITEBYTECODE`` set (as on the CI machine), writes none: then the package has no
``__pycache__`` at all when the first sandboxed shim starts (``-I`` makes the shim ignore that variable).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import nono_shell
import nono_supervisor
from conftest import Home

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox here is Linux")


def _fresh_copy(home: Home) -> Path:
    """Both packages copied without bytecode into a world-traversable dir outside every grant."""
    site = home.root / "site"
    for package in (nono_shell, nono_supervisor):
        source = Path(package.__file__).resolve().parent
        shutil.copytree(source, site / package.__name__, ignore=shutil.ignore_patterns("__pycache__"))
    return site


def _tree(directory: Path) -> list[str]:
    return sorted(str(p.relative_to(directory)) for p in directory.rglob("*"))


SUPERVISOR_BYTECODE = pytest.mark.parametrize(
    "supervisor_env",
    [{}, {"PYTHONDONTWRITEBYTECODE": "1"}],
    ids=["supervisor-caches", "supervisor-writes-none"],
)
FROM_COPY = [sys.executable, "-c", "from nono_supervisor.cli import main; main()"]


@pytest.fixture
def supervisor_env() -> dict[str, str]:
    return {}


@pytest.fixture
def copy_supervisor(home: Home, supervisor_env: dict[str, str]):
    """``serve --shims`` run from the fresh copy; yields (site, shims dir, env for the shims)."""
    site = _fresh_copy(home)
    run_dir = home.root / "run"
    run_dir.mkdir(mode=0o700)
    shims = home.root / "shims"
    socket_path = run_dir / "socket"
    with open(home.root / "supervisor.err", "wb") as err:
        process = subprocess.Popen(
            [*FROM_COPY, "serve", "--socket", str(socket_path), "--shims", str(shims)],
            cwd=home.work,
            env={**home.env, "PYTHONPATH": str(site), **supervisor_env},
            stderr=err,
        )
    deadline = time.monotonic() + 20
    while not socket_path.exists():
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"supervisor did not start: {(home.root / 'supervisor.err').read_text()}")
        time.sleep(0.02)
    env = {**home.env, "NONO_SOCKET": str(socket_path), "PATH": f"{shims}:{home.env['PATH']}"}
    yield site, shims, env
    process.terminate()
    process.wait(10)


def test_the_shims_import_the_copy_and_never_write_bytecode(home, copy_supervisor):
    site, shims, env = copy_supervisor
    text = (shims / "bash").read_text()
    if text.splitlines()[0] == f"#!{site / 'nono_shell' / 'nono-shell-client'}":
        return  # the copy's C client (issue 13): no interpreter, no import, no bytecode to write at all
    assert text.splitlines()[0] == f"#!{sys.executable} -IBS"
    assert f"sys.path.insert(0, {str(site)!r})" in text


@SUPERVISOR_BYTECODE
def test_the_first_commands_through_the_shims_write_no_bytecode_into_the_package(home, copy_supervisor):
    site, shims, env = copy_supervisor
    package = site / "nono_shell"
    before = _tree(package)
    # The outer shim runs as the agent would start it; the inner `bash` is the shim again, now run inside
    # the command's sandbox, where the package is never-grantable.
    result = home.run([str(shims / "bash"), "-c", "bash -c 'echo nested'; sh -c 'echo again'"], env=env)
    assert result.stderr == ""  # no `nono: denied create .../nono_shell/__pycache__` line
    assert result.stdout == "nested\nagain\n"
    assert result.returncode == 0
    assert _tree(package) == before


@SUPERVISOR_BYTECODE
def test_twin_a_sandboxed_write_into_the_package_is_reported(home, copy_supervisor):
    """The check above can fail: a command that does create something in the package is denied, loudly."""
    site, shims, env = copy_supervisor
    package = site / "nono_shell"
    before = _tree(package)
    result = home.run([str(shims / "bash"), "-c", f"bash -c 'mkdir {package}/__pycache__x'"], env=env)
    assert result.returncode != 0
    assert "nono: denied" in result.stderr and "never-grantable" in result.stderr, result.stderr
    assert _tree(package) == before


@SUPERVISOR_BYTECODE
def test_the_agent_under_run_starts_the_shim_inside_its_sandbox_without_a_denial(home, supervisor_env):
    """Under ``run`` the agent itself is sandboxed: its first ``bash`` is the shim, trapped from the start."""
    site = _fresh_copy(home)
    package = site / "nono_shell"
    before = _tree(package)
    result = home.run(
        [*FROM_COPY, "run", "--", "bash", "-c", "bash -c 'echo nested'"],
        env={**home.env, "PYTHONPATH": str(site), **supervisor_env},
        stdin=subprocess.DEVNULL,
    )
    assert "nono:" not in result.stderr, result.stderr
    assert result.stdout == "nested\n"
    assert result.returncode == 0, result.stderr
    created = set(_tree(package)) - set(before)
    if supervisor_env:
        assert not created
    else:  # only what the supervisor (unsandboxed) cached for its own imports
        assert all(name.startswith("__pycache__") for name in created), created


@SUPERVISOR_BYTECODE
def test_twin_the_agent_under_run_is_denied_a_write_into_the_package(home, supervisor_env):
    site = _fresh_copy(home)
    package = site / "nono_shell"
    result = home.run(
        [*FROM_COPY, "run", "--", "bash", "-c", f"mkdir {package}/__pycache__x"],
        env={**home.env, "PYTHONPATH": str(site), **supervisor_env},
        stdin=subprocess.DEVNULL,
    )
    assert result.returncode != 0
    assert "nono: denied" in result.stderr and "never-grantable" in result.stderr, result.stderr
    assert not (package / "__pycache__x").exists()
