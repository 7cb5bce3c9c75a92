"""A command the macOS runner started, with the surface the server, ``exec`` and ``run`` use.

The helper interpreter is the supervisor's child and execs the command in place, so one ``Popen`` is the
"keeper" and the command at once (``pid == keeper``). It was started with ``start_new_session=True``: the
command leads its own session and process group, which is what ``signal`` and ``kill_tree`` address.

One waiter thread owns the child: it alone reaps it (``Popen.wait``), runs ``on_exit`` (the denial report
is completed there, so whoever sees the exit sees the whole report), then publishes the status and writes
one byte into a pipe. ``exit_fd`` hands out that pipe's read end, which a ``poll`` loop can wait on next to
a client socket, as it waits on a pidfd on Linux.

What the Linux keeper does that this cannot: a descendant that leaves the process group (``setsid``,
``setpgid``) escapes ``kill_tree``; and nothing kills the command when the supervisor itself dies (macOS has
no ``PR_SET_PDEATHSIG``), it keeps running unsupervised but still confined by its profile.
"""

from __future__ import annotations

import os
import signal as _signal
import subprocess
import sys
import threading
import weakref
from collections.abc import Callable

from nono_supervisor.backend import GroupSignal

__all__ = ["SandboxedProcess", "wait_status"]


def wait_status(returncode: int) -> int:
    """``Popen.returncode`` back into the raw status ``os.waitpid`` gives (negative: killed by that signal).

    The core-dump bit is not in a returncode and is not restored; nothing downstream reads it.
    """
    if returncode < 0:
        return -returncode & 0x7F
    return (returncode & 0xFF) << 8


class SandboxedProcess(GroupSignal):
    """A running command: ``pid``/``keeper`` (the same process), ``notify`` (None: no in-flight layer)."""

    def __init__(
        self,
        process: subprocess.Popen,
        *,
        on_exit: Callable[[int], None] | None = None,
        marker: str | None = None,
    ) -> None:
        self.process = process
        self.pid: int = process.pid
        self.keeper: int = process.pid
        self.notify: object | None = None
        self.marker = marker  # the Seatbelt marker its denials are logged under
        self._on_exit = on_exit
        self._status: int | None = None
        self._done = threading.Event()
        self._exit_r, self._exit_w = os.pipe()  # both non-inheritable (PEP 446)
        weakref.finalize(self, os.close, self._exit_r)
        self._waiter = threading.Thread(target=self._wait_for_exit, name=f"nono-wait-{self.pid}", daemon=True)
        self._waiter.start()

    def _wait_for_exit(self) -> None:
        status = wait_status(self.process.wait())
        try:
            if self._on_exit is not None:
                self._on_exit(status)
        except Exception as e:  # noqa: BLE001 - a failed report must never hide the exit
            print(f"nono-supervisor: denial report of pid {self.pid} failed: {e!r}", file=sys.stderr)
        finally:
            # In this order: poll() answers before exit_fd is readable, and wait() returns after both.
            self._status = status
            os.write(self._exit_w, b"\0")
            os.close(self._exit_w)
            self._done.set()

    def exit_fd(self) -> int:
        """A new fd, the caller's to close, that polls readable once ``poll()`` is no longer None."""
        return os.dup(self._exit_r)

    def kill_tree(self) -> None:
        """SIGKILL the command's process group (the client went away). Also after the command itself
        exited: its background jobs are still in the group, and the group id cannot be reused while they
        are."""
        self.signal(_signal.SIGKILL)

    def wait(self) -> int:
        """Block until the command has ended and its denials are reported; a raw wait status."""
        self._done.wait()
        assert self._status is not None
        return self._status

    def poll(self) -> int | None:
        return self._status
