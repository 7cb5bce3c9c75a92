"""The bash-named shims: tiny launchers that run nono-shell under the name of the shell they replace."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import nono_shell

__all__ = ["SHIM_NAMES", "write_shims"]

SHIM_NAMES = ("bash", "sh", "dash", "zsh", "nono-shell")

# -I: ignore PYTHON* variables and the user site (the agent controls the environment); -S: skip site
# processing, which is most of an interpreter's start-up (DESIGN budget: nono-shell -c true within 25 ms
# of bash). The package's own directory is put on sys.path instead. -B: never write bytecode. A shim runs
# inside a sandbox (the agent's under `run`, a command's when nested), where the package is
# never-grantable: caching the bytecode there would be a denial, reported into the agent's output. The
# bytecode the supervisor cached for its own imports of the same modules is still read.
_TEMPLATE = """#!{python} -IBS
# nono-shell shim: runs the command in the supervisor's per-command sandbox. Generated; do not edit.
import sys
sys.path.insert(0, {root!r})
try:
    from nono_shell.client import main
except ImportError as e:
    sys.stderr.write(f"nono-shell: cannot load nono-shell from {root!r}: {{e}}\\n")
    sys.exit(125)
main(from_shim=True)
"""


# With the C client built (setup.py: nono_shell/nono-shell-client), a shim is a script whose interpreter is
# that program: no interpreter start-up for each command (11-19 ms of Python here, against ~1 ms of bash).
# The kernel runs it as "nono-shell-client SHIM ARGS...", exactly what the Python shim gets as sys.argv; its
# first line names a path inside the package, so ``is_nono_shim`` knows it.
_TEMPLATE_C = """#!{client}
# nono-shell shim (nono_shell): runs the command in the supervisor's per-command sandbox. Generated; do not
# edit. Interpreter: nono-shell's C client; the Python one is nono_shell/client.py.
"""
CLIENT_NAME = "nono-shell-client"


def client_path() -> str | None:
    """The C client next to the package, if it was built (and can be run), else None."""
    path = os.path.join(os.path.dirname(os.path.realpath(nono_shell.__file__)), CLIENT_NAME)
    return path if os.access(path, os.X_OK) and not os.environ.get("NONO_PYTHON_SHIMS") else None


def package_root() -> str:
    """The directory holding ``nono_shell/``: site-packages, or the checkout of an editable install."""
    return str(Path(nono_shell.__file__).resolve().parent.parent)


def write_shims(directory: Path) -> list[Path]:
    """Write (atomically, mode 0755) one shim per shell name into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    client = client_path()
    if client is not None and len(client) < 250:  # the kernel reads at most 255 bytes of a "#!" line
        text = _TEMPLATE_C.format(client=client)
    else:
        text = _TEMPLATE.format(python=sys.executable, root=package_root())
    written = []
    for name in SHIM_NAMES:
        target = directory / name
        temporary = directory / f".{name}.tmp{os.getpid()}"
        temporary.write_text(text)
        temporary.chmod(0o755)
        os.replace(temporary, target)
        written.append(target)
    return written
