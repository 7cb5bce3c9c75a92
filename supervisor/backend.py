"""The platform seam: one call starts a command in the per-command sandbox of this OS."""

from __future__ import annotations

import sys

from supervisor.errors import SandboxError
from supervisor.policy import Policy
from supervisor.session import Session

__all__ = ["start_sandboxed"]


def start_sandboxed(
    session: Session,
    path: str,
    argv: list[str],
    env: dict[str, str],
    cwd: str | None,
    stdio: tuple[int, int, int],
    *,
    ctty: bool = False,
    policy: Policy | None = None,
):  # -> a Process of the platform backend (signal, kill_tree, wait, poll, pid, keeper)
    """Compile ``policy`` (default: the session's) for this kernel and start ``path`` under it."""
    if sys.platform.startswith("linux"):
        from supervisor.linux import landlock, sandbox
        from supervisor.linux.kernel import probe

        plan = landlock.compile_plan(policy or session.policy, probe().landlock_abi, session.route_grants())
        return sandbox.start(plan, sandbox.Launch.build(path, argv, env, cwd, stdio, ctty=ctty))
    raise SandboxError(f"no sandbox backend for {sys.platform} yet; nothing was run")
