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


# Options of the shells that take the next argument as their value (``bash -o pipefail -c CMD``).
_VALUED = ("o", "O")
_VALUED_LONG = ("--rcfile", "--init-file")


def command_text(argv: list[str]) -> str:
    """What the user would call "the command": the ``-c`` string, else the script and its arguments.

    Parsed as the shell parses it: options first (combined ``-lc``, a ``-c`` before other options as in
    Claude Code's ``bash -c -l CMD``, ``-o``/``+o``/``-O`` and their values, long options), up to ``--``,
    ``-`` or the first operand; with ``-c`` the command is that first operand."""
    args = argv[1:]
    command_mode = False
    i = 0
    while i < len(args):
        arg = args[i]
        if arg in ("--", "-"):
            i += 1
            break
        if arg in _VALUED_LONG:
            i += 2
        elif arg.startswith("--"):
            i += 1
        elif len(arg) > 1 and arg[0] in "-+":
            command_mode = command_mode or (arg[0] == "-" and "c" in arg[1:])
            i += 1 + sum(arg[1:].count(letter) for letter in _VALUED)
        else:
            break
    rest = args[i:]
    if not rest:
        return "(interactive)"
    return rest[0] if command_mode else " ".join(rest)
