"""The nono-shell supervisor: policy, per-command sandboxes, the socket server and the agent launcher."""

from nono_shell import __version__

__all__ = ["__version__"]
