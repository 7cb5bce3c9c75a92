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


def package_root() -> str:
    """The directory holding ``nono_shell/``: site-packages, or the checkout of an editable install."""
    return str(Path(nono_shell.__file__).resolve().parent.parent)


def write_shims(directory: Path) -> list[Path]:
    """Write (atomically, mode 0755) one shim per shell name into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
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
