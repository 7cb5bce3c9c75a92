"""Where the exec-interposition library (``interpose/interpose.c``) was built, and whether it loads.

A plain shared object, not a Python module: pip builds it next to this package (setup.py ``PRELOADS``),
and the supervisor puts that file in the agent's ``LD_PRELOAD`` (``DYLD_INSERT_LIBRARIES`` on macOS).
Nothing imports it. ``doctor`` reports on it and ``run`` refuses a library that would not load.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from nono_supervisor import backend

__all__ = ["PRELOAD_VAR", "LIBRARY_NAME", "library_path", "built_beside", "check_loadable"]

#: The variable the dynamic loader reads the library from, and the file setup.py builds it as (this OS's).
PRELOAD_VAR = backend.current().preload_var
LIBRARY_NAME = backend.current().interpose_library
_CHECK_TIMEOUT = 30.0  # seconds; one interpreter start with the library preloaded
# Loads the library through ctypes too: a preload error is only a warning on stderr, dlopen raises.
_CHECK_SCRIPT = "import ctypes, sys; ctypes.CDLL(sys.argv[1])"


def library_path() -> Path | None:
    """The built library next to the ``nono_supervisor`` package, or None when pip has not built it here."""
    return built_beside(__file__, LIBRARY_NAME)


def built_beside(module_file: str, name: str) -> Path | None:
    """The file ``name`` setup.py built into the package directory of ``module_file``, if it is there."""
    candidate = Path(module_file).resolve().parent / name
    return candidate if candidate.is_file() else None


def check_loadable(path: Path | str) -> str | None:
    """None if ``path`` preloads and dlopens cleanly in a fresh interpreter, else why not, in one line.

    Done in a child so the library never loads into the supervisor, and without ``NONO_SHIM_DIR`` so its
    constructor stays inert there.
    """
    path = Path(path)
    if not path.is_file():
        return f"{path}: no such file"
    env = {k: v for k, v in os.environ.items() if not k.startswith("NONO_")}
    env[PRELOAD_VAR] = str(path)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", _CHECK_SCRIPT, str(path)],
            env=env,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=_CHECK_TIMEOUT,
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"{path}: could not test loading it: {e}"
    errors = [line for line in proc.stderr.splitlines() if "ld.so" in line or "Error" in line]
    if proc.returncode != 0 or errors:
        detail = (errors or proc.stderr.strip().splitlines() or [f"exit status {proc.returncode}"])[-1]
        return f"{path}: does not load: {detail.strip()}"
    return None
