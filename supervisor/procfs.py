"""What /proc says about a thread, for every part that needs it (Linux; elsewhere the thread id itself).

``/proc/<tid>/status`` is parsed here only: its thread group (``process_of``) and its umask (``umask_of``).
"""

from __future__ import annotations

__all__ = ["process_of", "status_field", "umask_of"]


def status_field(tid: int, name: str) -> str | None:
    """The first word of field ``name`` ("Tgid", "Umask") in ``/proc/<tid>/status``; None when the thread is
    gone (or the kernel has no such field)."""
    prefix = f"{name}:"
    try:
        with open(f"/proc/{tid}/status") as status:
            for line in status:
                if line.startswith(prefix):
                    return line.split()[1]
    except (OSError, IndexError):
        pass
    return None


def process_of(tid: int) -> int:
    """The process (thread group) a thread belongs to; the tid itself if it is already gone."""
    tgid = status_field(tid, "Tgid")
    return int(tgid) if tgid is not None and tgid.isdigit() else tid


def umask_of(tid: int) -> int:
    """The umask of thread ``tid``'s process (4.7+: the field), for what the supervisor creates on its
    behalf; 022 where it cannot be read."""
    umask = status_field(tid, "Umask")
    try:
        return int(umask, 8) if umask is not None else 0o022
    except ValueError:
        return 0o022
