"""``doctor``: what this machine can enforce, and whether every route into nono-shell is in place."""

from __future__ import annotations

import os
from typing import Any

from nono_shell.personality import SHELLS
from nono_supervisor import backend
from nono_supervisor.backend import Backend
from nono_supervisor.errors import SandboxError
from nono_supervisor.session import find_real_shell

__all__ = ["report"]


def _line(ok: bool | None, what: str, detail: str) -> None:
    mark = {True: "ok  ", False: "FAIL", None: "warn"}[ok]
    print(f"[{mark}] {what}: {detail}")


def report() -> int:
    """Print one line per capability; 0 when the per-command sandbox can be enforced here, else 1."""
    try:
        platform = backend.current()
    except SandboxError as e:
        _line(False, "platform", str(e))
        return 1
    checkup = platform.doctor()
    for line in checkup.lines:
        _line(*line)
    for name in SHELLS:
        real = find_real_shell(name, os.environ.get("PATH", ""))
        _line(real is not None or None, f"real {name}", real or "not found (commands for it are refused)")
    _routing_lines(platform)
    shims = os.environ.get("NONO_SHIM_DIR")
    if shims:
        _line(os.path.isfile(os.path.join(shims, "bash")), "shims", shims)
    else:
        _line(None, "shims", "not in a nono session (NONO_SHIM_DIR unset); `run` creates its own")
    return 0 if checkup.enforceable else 1


def _routing_lines(platform: Backend[Any]) -> None:
    """Routing layer 4 (the agent's mount namespace): whether it can be had here, and so which agents are
    routed only by SHELL, PATH and the preloaded library (DESIGN: routing). None on macOS, which has none."""
    from nono_supervisor.launcher import real_shells

    userns = os.geteuid() != 0
    error = platform.namespace_error(userns)
    if error is None:
        return
    kind = "user namespace + mount namespace" if userns else "mount namespace (root)"
    if error == 0:
        shells = ", ".join(real_shells(dict(os.environ))) or "none found"
        _line(True, "agent routing namespace", f"{kind}: the agent sees the shim at {shells}")
        return
    _line(
        None,
        "agent routing namespace",
        f"{kind} refused ({os.strerror(error)}): static agents (codex runs /bin/bash by path) and"
        " passwd-shell lookups are not routed; those shells run under the agent's baseline, recorded in"
        " the audit log (event unrouted-shell). claude-code, gemini, opencode and aider are routed by"
        " SHELL, PATH and the preloaded library",
    )
