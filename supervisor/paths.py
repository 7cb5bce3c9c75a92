"""Where nono-shell keeps its own files, per the XDG base directories of the user running it; and
``under``, the one test of a path lying inside another."""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["config_dir", "state_dir", "undo_dir", "audit_log_path", "grants_path", "package_dirs", "under"]


def under(path: str, top: str) -> bool:
    """``path`` is ``top`` or inside it, compared as strings: component-wise (``/a/bc`` is not under
    ``/a/b``), with no resolving (callers compare paths that are both real, or both as named)."""
    return path == top or path.startswith(top.rstrip("/") + "/")


def _xdg(var: str, fallback: str, env: dict[str, str] | os._Environ[str]) -> Path:
    value = env.get(var)
    if value and os.path.isabs(value):
        return Path(value)
    return Path(env.get("HOME", os.path.expanduser("~"))) / fallback


def config_dir(env: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    return _xdg("XDG_CONFIG_HOME", ".config", env) / "nono-shell"


def state_dir(env: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    return _xdg("XDG_STATE_HOME", ".local/state", env) / "nono-shell"


def undo_dir(env: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    """The sessions' undo stores: sealed from every command and the agent (old contents of files)."""
    return state_dir(env) / "undo"


def audit_log_path(env: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    return state_dir(env) / "audit.jsonl"


def grants_path(env: dict[str, str] | os._Environ[str] = os.environ) -> Path:
    return config_dir(env) / "grants.toml"


def package_dirs() -> tuple[Path, ...]:
    """The installed code of nono-shell itself: readable by commands (nested routing), never writable."""
    import nono_shell
    import nono_supervisor

    return (Path(nono_shell.__file__).resolve().parent, Path(nono_supervisor.__file__).resolve().parent)
