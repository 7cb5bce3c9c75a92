"""Which real shell a nono-shell invocation stands in for, read from how it was called."""

from __future__ import annotations

import os

__all__ = ["SHELLS", "START_UP", "shell_for", "command_text"]

SHELLS = ("bash", "sh", "dash", "zsh")

# The files in $HOME each shell reads on its own at start (rc, profile, history) and at a login shell's
# exit (logout), by the basename of its executable (``sh`` is dash or bash underneath).
START_UP = {
    "bash": (".bash_profile", ".bash_login", ".profile", ".bashrc", ".bash_history", ".bash_logout"),
    "dash": (".profile",),
    "sh": (".profile",),
    "zsh": (".zshenv", ".zprofile", ".zshrc", ".zlogin", ".zsh_history", ".zlogout"),
}


def shell_for(argv0: str) -> str:
    """``bash``, ``sh``, ``dash`` or ``zsh`` from argv[0]'s basename; a login ``-bash`` counts; else bash."""
    name = os.path.basename(argv0).lstrip("-")
    return name if name in SHELLS else "bash"


def command_text(argv: list[str]) -> str:
    """What the user would call "the command": the ``-c`` string, else the script and its arguments."""
    args = argv[1:]
    for i, arg in enumerate(args):
        if arg == "--":
            return " ".join(args[i + 1 :])
        if arg.startswith("-") and not arg.startswith("--") and "c" in arg[1:] and i + 1 < len(args):
            return args[i + 1]
        if arg in ("-o", "+o"):
            continue
        if not arg.startswith(("-", "+")) and (i == 0 or args[i - 1] not in ("-o", "+o")):
            return " ".join(args[i:])
    return "(interactive)" if not args or all(a.startswith(("-", "+")) for a in args) else " ".join(args)
