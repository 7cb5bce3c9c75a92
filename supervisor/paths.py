"""Where nono-shell keeps its own files, per the XDG base directories of the user running it; ``under``,
the one test of a path lying inside another; and ``links_met``, the symlinks a path resolves through."""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

__all__ = [
    "config_dir",
    "state_dir",
    "undo_dir",
    "audit_log_path",
    "grants_path",
    "package_dirs",
    "under",
    "links_met",
    "link_target",
]

# The kernel's limit on the links one lookup follows (MAXSYMLINKS): a loop ends the walk there.
_MAX_LINKS = 40


def under(path: str, top: str) -> bool:
    """``path`` is ``top`` or inside it, compared as strings: component-wise (``/a/bc`` is not under
    ``/a/b``), with no resolving (callers compare paths that are both real, or both as named)."""
    return path == top or path.startswith(top.rstrip("/") + "/")


def links_met(path: str, readlink: Callable[[str], str | None]) -> list[str]:
    """Every symlink that resolving the absolute ``path`` passes through, in the order met, each named with
    its parent resolved and its last component not: those on the way as ``path`` spells it and those the
    targets of its links pass through in turn (stow's ``~/.config/gh -> ../dotfiles/gh`` with
    ``~/dotfiles -> ~/src/dotfiles``). Taking any one away moves what ``path`` names. ``readlink``: a
    name's target, or None where it is no link (or missing: the walk goes on by name, as realpath does)."""
    found: list[str] = []
    resolved, rest, hops = "/", path.split("/"), 0
    while rest and hops < _MAX_LINKS:
        name = rest.pop(0)
        if name in ("", "."):
            continue
        if name == "..":
            resolved = os.path.dirname(resolved)
            continue
        candidate = os.path.join(resolved, name)
        target = readlink(candidate)
        if target is None:
            resolved = candidate
            continue
        hops += 1
        if candidate not in found:
            found.append(candidate)
        if target.startswith("/"):
            resolved = "/"
        rest = target.split("/") + rest
    return found


def link_target(path: str) -> str | None:
    """``os.readlink``, or None where ``path`` is no link or is gone: ``links_met``'s ``readlink``."""
    try:
        return os.readlink(path)
    except OSError:
        return None


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
