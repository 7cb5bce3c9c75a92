"""One error hierarchy. Only the CLI edge turns these into an exit status and a one-line message."""

__all__ = ["NonoError", "UsageError", "SandboxError"]


class NonoError(Exception):
    """Anything nono-shell refuses to do; ``exit_code`` is what the CLI exits with."""

    exit_code = 1


class UsageError(NonoError):
    """Bad flag, profile or key: exit 2, the message names the file, key or flag."""

    exit_code = 2


class SandboxError(NonoError):
    """The sandbox could not be set up, so nothing was run: exit 125."""

    exit_code = 125
