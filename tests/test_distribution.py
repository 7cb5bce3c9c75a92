"""What an install of nono-shell is (issue 21): one version everywhere and ``--version`` on both console
scripts, ``python -m nono_supervisor``, the C client as the ``nono-shell`` on PATH (the Python client where
none was built), plain shared objects for the preload libraries, and ``doctor``'s runtime checks.

The wheels themselves (the sdist's file list against the tree's, the manylinux repair, the README's Install
followed in a fresh venv beside PyPI's ``supervisor``) are built by .ci/run: each needs the package index.
"""

from __future__ import annotations

import importlib.metadata
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import nono_shell
import nono_supervisor
from conftest import CHECKOUT, FAKE_KEY, NONO_SHELL, SUPERVISOR, Home, start_supervisor
from nono_supervisor import interpose, shims
from nono_supervisor.linux import notify

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the built parts are Linux's")

VERSION = nono_shell.__version__
# The Python client, installed as `nono-shell` where no C client was built (setup.py BuildScripts).
PYTHON_NONO_SHELL = [sys.executable, str(CHECKOUT / "scripts" / "nono-shell")]
CLIENTS = pytest.mark.parametrize(
    "nono_shell_argv", [[NONO_SHELL], PYTHON_NONO_SHELL], ids=["on-path", "python-fallback"]
)


def test_one_version_in_the_metadata_and_both_packages():
    assert importlib.metadata.version("nono-shell") == VERSION
    assert nono_supervisor.__version__ == VERSION


@pytest.mark.parametrize(
    "argv", [[SUPERVISOR], [sys.executable, "-m", "nono_supervisor"]], ids=["script", "-m"]
)
def test_nono_supervisor_version(home, argv):
    result = home.run([*argv, "--version"])
    assert (result.returncode, result.stdout, result.stderr) == (0, f"nono-supervisor {VERSION}\n", "")


def test_python_m_nono_supervisor_is_the_cli(home):
    result = home.run([sys.executable, "-m", "nono_supervisor", "policy", "--nope"])
    assert result.returncode == 2 and result.stderr.startswith("nono-supervisor: "), result.stderr


@CLIENTS
def test_nono_shell_version_as_its_only_argument_needs_no_supervisor(home, nono_shell_argv):
    result = home.run([*nono_shell_argv, "--version"])  # home.env has no NONO_SOCKET
    assert (result.returncode, result.stdout, result.stderr) == (0, f"nono-shell {VERSION}\n", "")


@CLIENTS
@pytest.mark.parametrize("args", [["--version", "-c", "true"], ["-c", "true", "--version"], ["--ver"]])
def test_version_anywhere_else_is_a_shell_argument_and_fails_closed(home, nono_shell_argv, args):
    marker = home.work / "ran"
    result = home.run([*nono_shell_argv, *args])
    assert result.returncode == 125 and result.stdout == ""
    assert result.stderr == "nono-shell: NONO_SOCKET is not set; refusing to run unsandboxed\n"
    assert not marker.exists()


@pytest.mark.parametrize("client", ["c", "python"])
def test_through_a_shim_bash_version_is_the_real_bash_and_nono_shell_version_is_ours(home, client):
    if client == "python":
        home.env["NONO_PYTHON_SHIMS"] = "1"
    elif shims.client_path() is None:
        pytest.fail("the C client is not built: `pip install -e .` builds it")
    supervisor = start_supervisor(home)
    try:
        head = (supervisor.shims / "bash").read_text(errors="replace").splitlines()[0]
        assert ("nono-shell-client" in head) == (client == "c"), head
        through = supervisor.shell("--version")
        bare = home.run(["bash", "--version"])
        assert through.returncode == 0 and through.stdout == bare.stdout and "GNU bash" in bare.stdout
        ours = supervisor.shell("--version", name="nono-shell")
        assert (ours.returncode, ours.stdout) == (0, f"nono-shell {VERSION}\n")
    finally:
        supervisor.stop()


def test_the_nono_shell_on_path_is_the_c_client():
    client = shims.client_path()
    assert client is not None, "the C client is not built: `pip install -e .` builds it"
    assert Path(NONO_SHELL).read_bytes() == Path(client).read_bytes()


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_the_nono_shell_on_path_runs_commands_in_the_sandbox(request, user):
    """The C client run directly (argv[0] the caller's name, not a shim's path): the key is refused; the
    twin, bare bash, reads it."""
    sup = request.getfixturevalue("nobody_supervisor" if user else "supervisor")
    script = 'cat ~/.ssh/id_rsa; echo rc=$? "$0"'
    denied = sup.home.run([NONO_SHELL, "-c", script], env=sup.env, user=user)
    assert "rc=1 " in denied.stdout and FAKE_KEY not in denied.stdout + denied.stderr, denied.stderr
    assert denied.stdout.rstrip().endswith(NONO_SHELL)  # $0: the name it was run by, as bash shows it
    twin = sup.home.run(["bash", "-c", script], user=user)
    assert "rc=0" in twin.stdout and FAKE_KEY in twin.stdout


def _dynamic_section(path: Path) -> str:
    return subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout


@pytest.mark.skipif(shutil.which("readelf") is None, reason="readelf (binutils) is not installed")
@pytest.mark.parametrize("which", ["interpose", "ask-again"])
def test_the_preload_libraries_are_plain_shared_objects(which):
    """Not CPython extensions: no interpreter tag in the name, no module init, and none of the interpreter's
    link flags (Python's LDSHARED put its own lib dir in every agent's library search path)."""
    found = interpose.library_path() if which == "interpose" else notify.ask_again_library()
    assert found is not None, f"the {which} library is not built: `pip install -e .` builds it"
    path = Path(found)
    assert path.name in ("libnono_interpose.so", "libnono_askagain.so")
    assert b"PyInit_" not in path.read_bytes()
    dynamic = _dynamic_section(path)
    assert "Shared library: [libc.so.6]" in dynamic
    assert "RUNPATH" not in dynamic and "RPATH" not in dynamic
    assert interpose.check_loadable(path) is None


# --- doctor, and a machine without libseccomp ------------------------------------------------------------

# Runs the CLI as if the loader found no libseccomp (pyseccomp and doctor both look it up by name).
_WITHOUT_LIBSECCOMP = (
    "import ctypes.util, sys; find = ctypes.util.find_library;"
    " ctypes.util.find_library = lambda name: None if name == 'seccomp' else find(name);"
    " from nono_supervisor.cli import main; main()"
)


def _doctor_lines(result: subprocess.CompletedProcess) -> dict[str, str]:
    return {line[7:].split(": ", 1)[0]: line for line in result.stdout.splitlines()}


def test_doctor_checks_each_runtime_need(home):
    result = home.run([SUPERVISOR, "doctor"])
    lines = _doctor_lines(result)
    assert result.returncode == 0, result.stdout
    for what in ("libseccomp", "C extensions (_spawn, _notify)", "keeper", "C client (shims, nono-shell)"):
        assert lines[what].startswith("[ok  ]"), lines[what]
    assert lines["ask-again library"] == f"[ok  ] ask-again library: {notify.ask_again_library()}"
    assert lines["interposition library"] == f"[ok  ] interposition library: {interpose.library_path()}"


def test_without_libseccomp_doctor_names_the_package_to_install(home):
    result = home.run([sys.executable, "-c", _WITHOUT_LIBSECCOMP, "doctor"])
    line = _doctor_lines(result)["libseccomp"]
    assert line.startswith("[FAIL] libseccomp: not found: install libseccomp2 (Debian, Ubuntu)"), line
    assert "[FAIL] with --no-trap only: " in result.stdout


def test_doctor_fails_a_libseccomp_without_user_notification(monkeypatch):
    from nono_supervisor.linux import seccomp
    from nono_supervisor.linux.backend import libseccomp_line

    monkeypatch.setattr(seccomp, "libseccomp_version", lambda: (2, 4, 4))  # before SCMP_ACT_NOTIFY
    ok, what, detail = libseccomp_line()
    assert ok is False and what == "libseccomp"
    assert detail.startswith("2.4.4 has no user notification: install libseccomp2"), detail
    monkeypatch.undo()
    # the twin: this machine's
    assert libseccomp_line() == (True, "libseccomp", ".".join(map(str, seccomp.libseccomp_version())))


def test_without_libseccomp_a_command_is_refused_in_one_line_and_never_runs(home):
    marker = home.work / "ran"
    result = home.run([sys.executable, "-c", _WITHOUT_LIBSECCOMP, "exec", "--", "touch", str(marker)])
    assert result.returncode == 125, result.stderr
    assert result.stderr.count("\n") == 1, result.stderr
    assert result.stderr.startswith(
        "nono-supervisor: libseccomp cannot be loaded (Unable to find libseccomp)"
    )
    assert "install libseccomp2 (Debian, Ubuntu) or libseccomp" in result.stderr
    assert not marker.exists()
    twin = home.run([SUPERVISOR, "exec", "--", "touch", str(marker)])  # the same with libseccomp
    assert twin.returncode == 0 and marker.exists(), twin.stderr


def test_doctor_says_what_a_build_without_its_optional_parts_lacks(home: Home):
    """A copy of the packages without the keeper, the C client and the ask-again library (what a build
    whose static link and client compile failed would hold): each is a warning saying what to do."""
    site = home.root / "site"
    for package in (nono_supervisor, nono_shell):
        source = Path(package.__file__).resolve().parent
        optional = shutil.ignore_patterns(
            "__pycache__", "nono-keeper", "nono-shell-client", "libnono_askagain.so"
        )
        shutil.copytree(source, site / package.__name__, ignore=optional)
    code = "from nono_supervisor.cli import main; main()"
    result = home.run([sys.executable, "-c", code, "doctor"], env={**home.env, "PYTHONPATH": str(site)})
    lines = _doctor_lines(result)
    assert result.returncode == 0, result.stdout
    for what in ("keeper", "C client (shims, nono-shell)", "ask-again library"):
        assert lines[what].startswith(f"[warn] {what}: not built ("), lines[what]
        assert lines[what].endswith("reinstall where a C compiler and the Linux headers are (pip builds it)")
    assert lines["C extensions (_spawn, _notify)"].startswith("[ok  ]")
