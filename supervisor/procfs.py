"""What /proc says about a thread, for every part that needs it (Linux; elsewhere the thread id itself)."""

from __future__ import annotations

__all__ = ["process_of"]


def process_of(tid: int) -> int:
    """The process (thread group) a thread belongs to; the tid itself if it is already gone."""
    try:
        with open(f"/proc/{tid}/status") as status:
            for line in status:
                if line.startswith("Tgid:"):
                    return int(line.split()[1])
    except (OSError, ValueError):
        pass
    return tid
