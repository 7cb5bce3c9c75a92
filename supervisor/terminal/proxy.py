"""A pty the supervisor owns, standing in for its terminal: ``TerminalLease`` gives one to a command whose
stdio is the supervisor's own terminal (CONTRACT: never the supervisor's terminal), and
``PtyProxy`` copies keys and output between the two, paused while a question is on the terminal."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import struct
import termios
import threading
import time
from collections.abc import Iterator
from typing import TYPE_CHECKING

from nono_supervisor.terminal.prompt import Prompter, TtyGuard

if TYPE_CHECKING:
    from nono_supervisor.session import Session

__all__ = ["TerminalLease", "PtyProxy", "copy_window_size", "lent"]


def copy_window_size(source: int, pty_master: int) -> None:
    size = os.get_terminal_size(source)
    if hasattr(termios, "tcsetwinsize"):  # 3.11+
        termios.tcsetwinsize(pty_master, (size.lines, size.columns))
    else:
        fcntl.ioctl(pty_master, termios.TIOCSWINSZ, struct.pack("HHHH", size.lines, size.columns, 0, 0))


def lent(prompter: Prompter | None, proxy: PtyProxy):
    """Questions asked while the block runs pause ``proxy``."""
    return prompter.lend(proxy.pause) if prompter is not None else contextlib.nullcontext()


class TerminalLease:
    """A pty the supervisor owns, standing in for its own terminal on a command's stdio (CONTRACT: never the
    supervisor's terminal). The human's keys are copied to it and its output back, except while a question
    is up; it is hung up (the master closed) as soon as the command's main process exits, so a process the
    command left behind reads EOF/EIO and never the keys typed afterwards."""

    def __init__(self, session: Session, stdio: tuple[int, int, int]) -> None:
        own = [i for i, fd in enumerate(stdio) if fd >= 0 and session.state.is_own_terminal(fd)]
        terminal = stdio[own[0]]
        self.master, slave = os.openpty()
        try:
            termios.tcsetattr(slave, termios.TCSANOW, termios.tcgetattr(terminal))  # the same modes
            copy_window_size(terminal, self.master)
        except (OSError, termios.error):
            pass
        self._slave: int | None = slave
        self.stdio = tuple(slave if i in own else fd for i, fd in enumerate(stdio))
        self.ctty = 0 in own  # stdin is the pty: it becomes the command's controlling terminal (^C, /dev/tty)
        keys = stdio[0] if 0 in own else None
        screen = next((stdio[i] for i in (1, 2) if i in own), stdio[own[0]])
        self.proxy = PtyProxy(keys, screen)
        # Lent to the prompter from now on, before the command exists: its very first syscall may be a
        # question, and a proxy the prompter does not know of would copy the answer's keys to the command
        # (test_exec_in_a_terminal_asks_the_same_way, 1 in 8 under load). Until the proxy runs, a question
        # waits for it to hold (it checks for one before reading anything).
        self._lending = contextlib.ExitStack()
        self._lending.enter_context(lent(session.services.prompter, self.proxy))
        self._thread: threading.Thread | None = None

    @classmethod
    def for_stdio(cls, session: Session, stdio: tuple[int, int, int]) -> TerminalLease | None:
        """A lease when any of ``stdio`` is the supervisor's own terminal, else None (nothing to stand in)."""
        if not any(fd >= 0 and session.state.is_own_terminal(fd) for fd in stdio):
            return None
        return cls(session, stdio)

    def started(self) -> None:
        """The command holds its copies of the slave: the supervisor's goes (only the master hangs it up)."""
        if self._slave is not None:
            os.close(self._slave)
            self._slave = None

    def run(self, process) -> None:
        """Proxy in this thread until the command's main process exits, then hang up."""
        self.started()
        try:
            self.proxy.run(self.master, process.exit_fd())
        finally:
            self._lending.close()

    def start(self, process) -> None:
        """Proxy in a thread of its own (``serve``); ``hangup()`` waits for it."""
        self.started()
        self._thread = threading.Thread(target=self.run, args=(process,), name="nono-pty", daemon=True)
        self._thread.start()

    def hangup(self) -> None:
        """After the command's main process exited (or never started): the master is closed."""
        self.started()
        if self._thread is not None:
            self._thread.join()
        else:
            self._lending.close()
            self.proxy.close(self.master)


class PtyProxy:
    """Copies the user's terminal to a pty the supervisor owns and back; ``pause()`` lends the terminal to a
    question.

    While paused nothing is read from either side: the command's output waits in the pty (the kernel's
    buffer is the bound; a chatty command blocks on write), and every key the human types goes to the
    question. Keys are written to the pty without blocking (what it has no room for is dropped), so the
    proxy always answers a pause. When the command's main process exits, no more keys are copied; its last
    output is drained (at most ``DRAIN_SECONDS``) and the master is closed: the pty is hung up.
    """

    # How long a question waits for the proxy to let go of the terminal before asking anyway.
    PAUSE_ACK_SECONDS = 2.0
    DRAIN_SECONDS = 0.5  # after the exit, output still coming from the pty
    DRAIN_QUIET_SECONDS = 0.05  # ...ends the drain once the pty has been quiet this long

    def __init__(self, keys: int | None = 0, screen: int = 1) -> None:
        self.keys = keys  # the terminal the human types on (None: the command's stdin is not the terminal)
        self.screen = screen
        self._wake_read, self._wake_write = os.pipe()  # non-inheritable by default (PEP 446)
        self._asking = threading.Event()
        self._idle = threading.Event()
        self._done = False
        self._closed = False
        self._closing = threading.Lock()

    @contextlib.contextmanager
    def pause(self) -> Iterator[None]:
        self._asking.set()
        if self._wake(b"p"):
            self._idle.wait(self.PAUSE_ACK_SECONDS)
        try:
            yield
        finally:
            self._asking.clear()
            self._wake(b"r")

    def _wake(self, byte: bytes) -> bool:
        """Wakes the proxy thread; False when it is done. The check and the write hold the lock ``close``
        takes, so a question's thread never writes to the number of a pipe the proxy has closed (and the
        kernel has since given to another command's file)."""
        with self._closing:
            if self._done or self._closed:
                return False
            try:
                os.write(self._wake_write, byte)
            except OSError:
                pass
            return True

    def _hold(self) -> None:
        self._idle.set()
        while self._asking.is_set():
            if select.select([self._wake_read], [], [], 1.0)[0]:
                os.read(self._wake_read, 64)
        self._idle.clear()

    def run(self, master: int, exit_fd: int) -> None:
        """Until the process behind ``exit_fd`` (a pidfd, closed here) has exited and its output is drained;
        the master is closed on the way out."""
        os.set_blocking(master, False)
        main = threading.current_thread() is threading.main_thread()
        previous = None
        if main and self.keys is not None:

            def resize(_signo: int, _frame: object) -> None:
                try:
                    copy_window_size(self.keys, master)
                except OSError:
                    pass

            previous = signal.signal(signal.SIGWINCH, resize)
        watching = [master, self._wake_read, exit_fd]
        if self.keys is not None:
            watching.append(self.keys)
        ended = 0.0
        guard = TtyGuard(self.keys) if self.keys is not None else contextlib.nullcontext()
        try:
            with guard:
                while True:
                    if self._asking.is_set():
                        self._hold()
                        continue
                    timeout = None
                    if ended:
                        now = time.monotonic()
                        if now >= ended + self.DRAIN_SECONDS:
                            break
                        timeout = min(self.DRAIN_QUIET_SECONDS, ended + self.DRAIN_SECONDS - now)
                    try:
                        readable, _, _ = select.select(watching, [], [], timeout)
                    except InterruptedError:
                        continue
                    if not readable:
                        break  # drained: quiet since the exit
                    if self._wake_read in readable:
                        os.read(self._wake_read, 64)
                        continue
                    if exit_fd in readable:
                        ended = time.monotonic()
                        watching.remove(exit_fd)
                        if self.keys in watching:
                            watching.remove(self.keys)  # keys typed from now on are nobody's
                        continue
                    if self.keys is not None and self.keys in readable:
                        data = os.read(self.keys, 65536)
                        if not data:
                            watching.remove(self.keys)
                        else:
                            try:
                                os.write(master, data)
                            except (BlockingIOError, InterruptedError):
                                pass  # the command is not reading: like a full terminal, keys are lost
                    if master in readable:
                        try:
                            data = os.read(master, 65536)
                        except BlockingIOError:
                            continue
                        except OSError as e:
                            if e.errno != errno.EIO:
                                raise
                            data = b""  # every slave is closed
                        if not data:
                            break
                        _write_all(self.screen, data)
        finally:
            self._done = True
            self._idle.set()  # a question waiting for this proxy to pause need not wait
            if previous is not None:
                signal.signal(signal.SIGWINCH, previous)
            os.close(exit_fd)
            self.close(master)

    def close(self, master: int) -> None:
        """Hang up: closing the master is what takes the pty away from every process still holding it."""
        with self._closing:
            if self._closed:
                return
            self._closed = True
            self._done = True
            self._idle.set()
            os.close(master)
            os.close(self._wake_read)
            os.close(self._wake_write)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            view = view[os.write(fd, view) :]
        except InterruptedError:
            continue
        except OSError:
            return  # the terminal is gone
