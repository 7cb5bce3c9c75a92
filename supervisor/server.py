"""The socket server: one sandboxed command per connection.

One intake thread accepts every connection and reads every first request that is not complete yet,
without blocking and under the limits below; a complete request gets a thread of its own for the
command's lifetime. A connection that misbehaves (wrong uid, malformed or oversized frame, wrong fds, too
slow, over a limit) gets one ``Refused`` and is closed; nothing it sends can stop the server from serving
everyone else (DESIGN: "the socket is reachable from every command").
"""

from __future__ import annotations

import errno
import os
import resource
import select
import selectors
import socket
import sys
import threading
import time
from dataclasses import replace
from pathlib import Path

from nono_shell import protocol, transport
from nono_shell.client import FORWARDED_SIGNALS
from nono_shell.personality import command_text
from nono_supervisor import backend
from nono_supervisor.backend import Hooks, Launch
from nono_supervisor.errors import NonoError
from nono_supervisor.launcher import status_code
from nono_supervisor.policy.access import OPS
from nono_supervisor.policy.profile import Grant
from nono_supervisor.report import CommandReport
from nono_supervisor.session import Session
from nono_supervisor.terminal.consent import Consent
from nono_supervisor.terminal.prompt import GRANTING, Question
from nono_supervisor.terminal.proxy import TerminalLease

__all__ = ["Server", "exit_parts"]

# ---- limits. Every command can reach the socket (nested routing), so a command can flood it. -------------
# A first request must be complete this many seconds after accept, however it dribbles in: an absolute
# deadline, not a per-read timeout. nono-shell writes its request right after connect (microseconds
# later); 5 s covers a loaded machine (test_dribbler_is_cut_at_the_absolute_deadline).
FIRST_MESSAGE_SECONDS = 5.0
# The largest first request. The kernel execs argv + environment up to ARG_MAX (2 MiB with the default
# 8 MiB stack) and any one string up to 128 KiB; a realistic request (a 20 KiB desktop environment and a
# 128 KiB -c script) is under 200 KiB. 4 MiB leaves room for an ARG_MAX-sized command with escaping, and
# is refused from its header, before any of its body is buffered (protocol.MAX_FRAME is 8 MiB).
MAX_REQUEST_BYTES = 4 * 1024 * 1024
# Bytes buffered for all incomplete first requests together. Over it, the oldest incomplete request is
# refused: a legitimate request arrives whole within milliseconds, a flood's partial frames sit. Peak
# buffering is this plus one MAX_REQUEST_BYTES being read (test_memory_flood_keeps_the_supervisor_small).
MAX_PENDING_BYTES = 16 * 1024 * 1024
# Connections accepted whose first request is not complete. A new one over the cap pushes out (refuses)
# the oldest, not itself, so idle connections cannot lock everyone out until their deadline; they hold no
# thread, only a socket and up to 3 passed fds each (test_dribble_flood_holds_no_thread_per_connection).
MAX_PENDING = 64
# Incomplete first requests per connecting pid (SO_PEERCRED): a nono-shell sends exactly one request, so
# one process cannot push out everyone else's. Not applied to the supervisor's own pid, which is the
# peer of every connection the notify layer makes on a sandboxed command's behalf (nested nono-shell, or
# a flood from inside a command), nor to pid 0 (peer outside our pid namespace): those share MAX_PENDING.
# Per uid: only the supervisor's own uid is served at all, so the per-uid cap is the total.
MAX_PENDING_PER_PID = 8
# Commands running at once. Each holds its connection's thread and a notify thread, and 7 fds, for its
# lifetime; DESIGN: "50 concurrent commands", 128 leaves room for a parallel build under nested routing.
# Over it a request is refused with a reason (test_commands_over_the_cap_are_refused_with_a_reason). Lowered
# to what RLIMIT_NOFILE has room for (a 1024 soft limit gives 100). A command that returned leaving
# background jobs counts until they end: its notify loop serves them (a thread and the listener's fd),
# and `bash -c 'sleep 1000 &'` in a loop would otherwise exhaust the supervisor
# (test_commands_left_running_count_against_the_cap).
MAX_COMMANDS = 128
# Measured: connection, 3 stdio fds, the notify listener, the keeper's status pipe and the copy of it
# that _supervise polls.
_FDS_PER_COMMAND = 7
_FDS_PER_PENDING = 1 + protocol.MAX_FDS
_FD_RESERVE = 64  # the listener, the agent's pty and notify loop, emulation's pins, logs
# Bytes of first requests held by running commands together (a request lives as long as its command).
# A command's argv and environment cannot exceed ARG_MAX (2 MiB) or it would not exec; a typical request
# is under 50 KiB, so 32 MiB is 16 commands of the largest kind at once, or every command of a busy
# session. Over it a request is refused (test_requests_over_the_held_bytes_budget_are_refused).
MAX_HELD_REQUEST_BYTES = 32 * 1024 * 1024
# After the first request only Signal frames (about 30 bytes) come from the client.
LATER_FRAME_BYTES = 4096
# Connections not accepted yet wait in the kernel, at most this many; beyond it connect() waits.
LISTEN_BACKLOG = 128
# When accept() fails for want of fds, wait this long before accepting again (no busy loop).
_ACCEPT_PAUSE = 0.1
_READ_CHUNK = 256 * 1024


# A command's lifecycle in the server (STYLE: lifecycles are tables): (state, event) -> the next state. It
# runs once; with ``--prompt after``, a failed run whose denials the human then grants runs once more, on the
# same fds, and only once (nothing leaves ``rerunning`` but its exit). An unlisted event raises ProtocolError.
_LIFECYCLE: dict[tuple[str, str], str] = {
    ("new", "started"): "running",
    ("running", "exited"): "ended",
    ("ended", "finished"): "done",  # succeeded, no ``after`` questions, or the client went away
    ("ended", "ask"): "asking",  # --prompt after: the denials nobody was asked about while it ran
    ("asking", "declined"): "done",  # nothing granted
    ("asking", "granted"): "granted",
    ("granted", "started"): "rerunning",
    ("rerunning", "exited"): "done",
}


class _Lifecycle:
    """Where one command is in ``_LIFECYCLE``."""

    def __init__(self) -> None:
        self.state = "new"

    def on(self, event: str) -> str:
        following = _LIFECYCLE.get((self.state, event))
        if following is None:
            raise protocol.ProtocolError(f"command lifecycle: no {event!r} in state {self.state!r}")
        self.state = following
        return following


class _Refuse(Exception):
    pass


class _Pending:
    """A connection whose first request is still coming in (owned by the intake thread)."""

    __slots__ = ("conn", "pid", "deadline", "decoder", "fds")

    def __init__(self, conn: socket.socket, pid: int, deadline: float) -> None:
        self.conn = conn
        self.pid = pid
        self.deadline = deadline
        self.decoder = protocol.Decoder(MAX_REQUEST_BYTES)
        self.fds: list[int] = []


def _command_cap() -> int:
    soft, _hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY:
        return MAX_COMMANDS
    room = (soft - _FD_RESERVE - MAX_PENDING * _FDS_PER_PENDING) // _FDS_PER_COMMAND
    return max(1, min(MAX_COMMANDS, room))


def _rename_noreplace(source: Path, target: Path) -> None:
    try:
        backend.current().rename_noreplace(source, target)
    except FileExistsError:
        raise OSError(errno.EADDRINUSE, os.strerror(errno.EADDRINUSE)) from None


class Server:
    def __init__(self, session: Session, verbose: int = 0) -> None:
        """Listens on the session's socket (``Session.create(socket=...)``), which its commands may reach."""
        socket_path = session.state.socket_path
        if socket_path is None:
            raise ValueError("a session made without a socket path cannot be served")
        self.session = session
        self.socket_path = socket_path
        self.verbose = verbose
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | transport.SOCK_CLOEXEC)
        # Bound under a temporary name and renamed into place once listening: a client that sees the
        # socket's name can always connect (bound but not yet listening, it would get ECONNREFUSED).
        staging = socket_path.with_name(f".{socket_path.name}.{os.getpid()}")
        old_umask = os.umask(0o177)  # the socket is ours alone; the 0700 directory is the real fence
        try:
            self._listener.bind(str(staging))
        finally:
            os.umask(old_umask)
        try:
            self._listener.listen(LISTEN_BACKLOG)
            _rename_noreplace(staging, socket_path)  # a live socket there stays (EADDRINUSE, as bind said)
        except OSError:
            staging.unlink(missing_ok=True)
            self._listener.close()
            raise
        self._closing = False
        self._thread: threading.Thread | None = None
        self._wake_r, self._wake_w = os.pipe()  # close() wakes the intake thread through it
        os.set_blocking(self._wake_w, False)
        self.max_commands = _command_cap()
        backend.current().serve(session)  # Linux: the session's watch over late denies, from the start
        self._held_lock = threading.Lock()  # the intake reserves, a command's thread releases
        self._running = 0  # commands with a thread
        self._held = 0  # bytes of their requests
        self._refusals_unlogged, self._refusal_logged = 0, float("-inf")
        self._pending: dict[int, _Pending] = {}  # by fd, in accept order: oldest (and first deadline) first
        self._buffered = 0  # bytes of all incomplete first requests
        self._selector: selectors.BaseSelector | None = None

    def start(self) -> None:
        """Serve in a background thread (``run``); ``serve_forever`` is the foreground form."""
        self._thread = threading.Thread(target=self.serve_forever, name="nono-accept", daemon=True)
        self._thread.start()

    def serve_forever(self) -> None:
        """The intake loop: accept, read first requests as they come, enforce the limits, hand complete
        requests to a thread each. Only this thread touches ``_pending``."""
        self._listener.setblocking(False)
        self._selector = selector = selectors.DefaultSelector()
        selector.register(self._wake_r, selectors.EVENT_READ)
        selector.register(self._listener, selectors.EVENT_READ)
        resume_accepting = 0.0  # while accept() is paused for want of fds
        try:
            while not self._closing:
                wake_at = [resume_accepting] if resume_accepting else []
                if self._pending:
                    wake_at.append(next(iter(self._pending.values())).deadline)  # the oldest's is first
                timeout = max(0.0, min(wake_at) - time.monotonic()) if wake_at else None
                for key, _events in selector.select(timeout):
                    if key.fileobj is self._listener:
                        if not self._accept_some():
                            selector.unregister(self._listener)
                            resume_accepting = time.monotonic() + _ACCEPT_PAUSE
                    elif key.fileobj != self._wake_r and key.fd in self._pending:
                        self._read(self._pending[key.fd])
                now = time.monotonic()
                if resume_accepting and now >= resume_accepting:
                    selector.register(self._listener, selectors.EVENT_READ)
                    resume_accepting = 0.0
                while self._pending and (oldest := next(iter(self._pending.values()))).deadline <= now:
                    self._drop(oldest, f"no complete request {FIRST_MESSAGE_SECONDS:g} s after connecting")
        finally:
            for waiting in list(self._pending.values()):
                self._drop(waiting, "the supervisor is shutting down")
            selector.close()

    def close(self) -> None:
        self._closing = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass  # already woken
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(5)  # the intake thread closes what it holds before the fds below go
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()
        for fd in (self._wake_r, self._wake_w):
            try:
                os.close(fd)
            except OSError:
                pass
        self._wake_r = self._wake_w = -1

    # ---- the intake: no blocking call, no thread per connection ----------------------------------------

    def _accept_some(self) -> bool:
        """Accept what is waiting (a bounded batch, then back to reading); False if out of fds."""
        for _ in range(MAX_PENDING):
            try:
                conn, _ = self._listener.accept()
            except BlockingIOError:
                return True
            except OSError as e:
                if e.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    self._log(f"cannot accept: {e.strerror}; pausing {_ACCEPT_PAUSE:g} s")
                    return False
                return True  # ECONNABORTED and the like: that client is gone
            self._admit(conn)
        return True

    def _admit(self, conn: socket.socket) -> None:
        conn.setblocking(False)
        try:
            pid, uid = transport.peer_credentials(conn)
        except OSError:
            conn.close()
            return
        if uid != os.getuid():
            self._refuse(conn, [], f"peer uid {uid} is not the supervisor's uid {os.getuid()}")
            return
        if pid not in (0, os.getpid()):
            same = [p for p in self._pending.values() if p.pid == pid]
            if len(same) >= MAX_PENDING_PER_PID:
                self._drop(same[0], f"more than {MAX_PENDING_PER_PID} incomplete requests from pid {pid}")
        if len(self._pending) >= MAX_PENDING:
            self._drop(
                next(iter(self._pending.values())),
                f"more than {MAX_PENDING} connections waiting to send their request",
            )
        waiting = _Pending(conn, pid, time.monotonic() + FIRST_MESSAGE_SECONDS)
        self._pending[conn.fileno()] = waiting
        self._selector.register(conn, selectors.EVENT_READ)
        self._read(waiting)  # nono-shell has usually sent all of it already

    def _read(self, waiting: _Pending) -> None:
        """Read what has arrived, never past the first frame; hand it on once it is whole."""
        decoder = waiting.decoder
        try:
            while need := decoder.needed():
                before = decoder.pending
                data = transport.receive_chunk(waiting.conn, waiting.fds, min(need, _READ_CHUNK))
                if not data:
                    raise transport.Closed(truncated=decoder.pending > 0)
                try:
                    decoder.feed(data)
                finally:
                    self._buffered += decoder.pending - before
        except BlockingIOError:
            self._trim()
            return
        except (protocol.ProtocolError, transport.Closed, OSError) as e:
            self._drop(waiting, f"bad request: {e}")
            return
        self._hand_over(waiting)

    def _trim(self) -> None:
        while self._buffered > MAX_PENDING_BYTES and self._pending:
            self._drop(
                next(iter(self._pending.values())),
                f"more than {MAX_PENDING_BYTES} bytes of incomplete requests are waiting",
            )

    def _forget(self, waiting: _Pending) -> None:
        if self._pending.pop(waiting.conn.fileno(), None) is not waiting:
            return  # already forgotten (an exit signal interrupted this thread mid-way)
        self._selector.unregister(waiting.conn)
        self._buffered -= waiting.decoder.pending

    def _drop(self, waiting: _Pending, reason: str) -> None:
        self._forget(waiting)
        self._refuse(waiting.conn, waiting.fds, reason)

    def _refuse(self, conn: socket.socket, fds: list[int], reason: str) -> None:
        """One Refused (non-blocking: a short frame, or nothing if the client is not reading), then close."""
        self._log_refusal(reason)
        _try_send(conn, protocol.Refused(reason))
        for fd in fds:
            os.close(fd)
        conn.close()

    def _log_refusal(self, reason: str) -> None:
        """At most a line a second: a flood must not turn into a flood on (and a block of) stderr."""
        if not self.verbose:
            return
        now = time.monotonic()
        if now - self._refusal_logged < 1.0:
            self._refusals_unlogged += 1
            return
        more = f" (and {self._refusals_unlogged} more since the last line)" if self._refusals_unlogged else ""
        self._refusal_logged, self._refusals_unlogged = now, 0
        self._log(f"refused a connection: {reason}{more}")

    def _hand_over(self, waiting: _Pending) -> None:
        """A whole first request: a thread of its own for its command, if the limits leave room."""
        self._forget(waiting)
        conn, fds, size = waiting.conn, waiting.fds, waiting.decoder.pending
        reason = self._reserve(size)
        if reason is None:
            conn.setblocking(True)
            try:
                worker = threading.Thread(
                    target=self._connection, args=(conn, waiting.decoder, fds, size), name="nono-command"
                )
                worker.daemon = True
                worker.start()
                return
            except RuntimeError as e:  # can't start new thread
                self._release(size)
                conn.setblocking(False)
                reason = f"the supervisor cannot start a thread: {e}"
        self._refuse(conn, fds, reason)

    def _reserve(self, size: int) -> str | None:
        """Room for one more command holding a ``size``-byte request, or why not."""
        left = backend.current().left_running()
        with self._held_lock:
            if self._running + left >= self.max_commands:
                jobs = f" ({left} of them returned, leaving background jobs)" if left else ""
                return (
                    f"{self.max_commands} commands are running{jobs}, the most this supervisor runs at once"
                )
            if self._held + size > MAX_HELD_REQUEST_BYTES:
                return (
                    f"the running commands' requests hold {self._held} bytes; with this one's {size} that is"
                    f" over the {MAX_HELD_REQUEST_BYTES}-byte limit"
                )
            self._running += 1
            self._held += size
        return None

    def _release(self, size: int) -> None:
        with self._held_lock:
            self._running -= 1
            self._held -= size

    def _log(self, text: str) -> None:
        if self.verbose:
            print(f"nono-supervisor: {text}", file=sys.stderr, flush=True)

    def _connection(self, conn: socket.socket, decoder: protocol.Decoder, fds: list[int], size: int) -> None:
        try:
            self._serve_one(conn, decoder, fds)
        except _Refuse as e:
            self._log(f"refused a connection: {e}")
            _try_send(conn, protocol.Refused(str(e)))
        except Exception as e:  # noqa: BLE001 - one bad connection must never take the server down
            self._log(f"internal error on a connection: {e!r}")
            _try_send(conn, protocol.Refused(f"internal supervisor error: {e}"))
        finally:
            for fd in fds:
                os.close(fd)
            conn.close()
            self._release(size)

    def _serve_one(self, conn: socket.socket, decoder: protocol.Decoder, fds: list[int]) -> None:
        """``decoder`` holds the whole first frame (the intake read it; uid and limits are checked)."""
        conversation = protocol.Conversation("supervisor")
        try:
            request = decoder.next_message()
            if request is None:
                raise protocol.ProtocolError("incomplete request")  # the intake never hands one over
            conversation.receive(request)
        except protocol.ProtocolError as e:
            raise _Refuse(f"bad request: {e}") from None
        decoder.max_frame = LATER_FRAME_BYTES
        assert isinstance(request, protocol.RunRequest)
        if len(fds) != len(request.stdio):
            raise _Refuse(f"request names {len(request.stdio)} stdio fds but carried {len(fds)}")
        shell = self.session.files.shells.get(request.shell)
        if shell is None:
            raise _Refuse(f"no real {request.shell} found on this machine")
        stdio = tuple(fds[request.stdio.index(n)] if n in request.stdio else -1 for n in range(3))
        if _hung_up(conn):  # a client past its deadline (a supervisor stopped meanwhile): nothing is run
            raise _Refuse("the client went away before its command started")
        command = self.session.next_command_id()
        status = self._run(conn, decoder, conversation, request, shell, stdio, command)
        code, signo = exit_parts(status)
        _try_send(conn, protocol.Exited(code=code, signal=signo))

    def _run(self, conn, decoder, conversation, request, shell, stdio, command) -> int:
        """Run the command. Questions are asked while the syscall is held (``tty``, and ``after``, which
        prefers the hold); with ``--prompt after``, denials that could not be held (an exec) are asked about
        once the command failed, saying that it will run again, and it is run again with what the human
        granted, on the same fds (DESIGN: "after the fact"). A stdio fd that is the supervisor's own
        terminal is replaced by a pty of ours, hung up when the command ends (CONTRACT)."""
        state, services = self.session.state, self.session.services
        mode = services.prompt_mode()
        text = command_text(request.argv)
        asker = services.prompter if mode in ("tty", "after") else None
        consent = Consent(self.session, command, text, asker, argv=request.argv)
        env = services.command_env(request.env)
        policy = None
        life = _Lifecycle()
        while True:
            report = CommandReport(services.audit, state.policy, command, request.argv, request.cwd)
            consent.report = report
            lease = TerminalLease.for_stdio(self.session, stdio)
            try:
                launch = Launch(
                    shell,
                    request.argv,
                    env,
                    request.cwd,
                    lease.stdio if lease else stdio,
                    ctty=bool(lease and lease.ctty),
                    leave_to_kernel=True,  # a command: opens and execve are Landlock's (linux.backend)
                )
                hooks = Hooks(
                    on_decision=report.record,
                    consent=consent.allows,
                    on_late_deny=report.late_deny,  # stopped when a denied node moves into its grants
                    undo=services.undo_log(command, policy),
                )
                process = backend.start(self.session, launch, hooks, policy)
            except NonoError as e:
                if lease:
                    lease.hangup()
                services.audit.write(
                    command=command, event="refused", argv=request.argv, cwd=request.cwd, reason=str(e)
                )
                raise _Refuse(str(e)) from None
            except BaseException:
                if lease:
                    lease.hangup()
                raise
            try:
                if lease:
                    lease.start(process)
                first = life.state == "new"
                life.on("started")
                report.pid = process.pid
                services.audit.write(
                    command=command,
                    event="start",
                    argv=request.argv,
                    cwd=request.cwd,
                    pid=process.pid,
                    shell=shell,
                    attempt=0 if first else 1,
                )
                if first:
                    _try_send(conn, protocol.Started(command))
                status, client_alive = self._supervise(conn, decoder, conversation, process)
            except BaseException:
                process.kill_tree()  # nothing would supervise it: it goes, with its tree
                process.wait()
                raise
            finally:
                if lease:
                    lease.hangup()  # the main process is gone: so is the pty
            backend.current().finish(process)
            if stdio[2] >= 0:
                report.write_to(stdio[2])
            code, signo = exit_parts(status)
            services.audit.write(command=command, event="exit", pid=process.pid, code=code, signal=signo)
            if life.on("exited") == "done":
                return status
            if mode != "after" or not client_alive or status_code(status) == 0:
                life.on("finished")
                return status
            life.on("ask")
            granted = self._ask_after(consent, report)
            if not granted:
                life.on("declined")
                return status
            life.on("granted")
            policy = replace(state.policy, grants=state.policy.grants + tuple(granted))

    def _ask_after(self, consent: Consent, report: CommandReport) -> list[Grant]:
        """One question per denial of the failed command that was not asked about while it ran; the grants
        for its retry. Each question says that granting runs the whole command again."""
        granted = []
        for denial in report.denials():
            if not consent.askable(denial.rule) or consent.asked(denial.op, denial.path):
                continue
            question = Question(
                denial.op,
                self.session.state.policy.display(denial.path),
                denial.rule,
                command=consent.command_text,
                rerun=True,
            )
            answer = self.session.services.prompter.ask(question)
            consent.record(denial.op, denial.path, denial.rule, denial.is_dir, answer)
            if answer in GRANTING:
                granted.append(Grant(denial.path, OPS[denial.op], "dir" if denial.is_dir else "file", "user"))
        return granted

    def _supervise(self, conn, decoder, conversation, process) -> tuple[int, bool]:
        """Forward signals until the command ends; if the client goes away, kill the command's tree.
        Returns the wait status and whether the client is still there."""
        conn.settimeout(None)
        exit_fd = process.exit_fd()  # readable once the command has ended (a pidfd on Linux, a pipe on macOS)
        try:
            poller = select.poll()
            poller.register(exit_fd, select.POLLIN)
            poller.register(conn, select.POLLIN)
            client_alive = True
            while process.poll() is None:
                for fd, _events in poller.poll():
                    if fd == exit_fd or not client_alive:
                        continue
                    if not self._client_message(conn, decoder, conversation, process):
                        client_alive = False
                        poller.unregister(conn)
                        process.kill_tree()
            return process.wait(), client_alive
        finally:
            os.close(exit_fd)

    def _client_message(self, conn, decoder, conversation, process) -> bool:
        """Handle what the client sent; False when the client is gone or broke the protocol."""
        try:
            data = conn.recv(65536)
            if not data:
                return False
            decoder.feed(data)
            while (message := decoder.next_message()) is not None:
                conversation.receive(message)
                if isinstance(message, protocol.Signal) and message.signo in FORWARDED_SIGNALS:
                    process.signal(message.signo)
        except (OSError, protocol.ProtocolError) as e:
            self._log(f"client broke the protocol mid-command: {e}")
            return False
        return True


def _hung_up(conn: socket.socket) -> bool:
    """Whether the client has closed its end (a client only ever closes once it has given up)."""
    poller = select.poll()
    poller.register(conn, select.POLLRDHUP)
    return any(
        events & (select.POLLRDHUP | select.POLLHUP | select.POLLERR) for _fd, events in poller.poll(0)
    )


def exit_parts(status: int) -> tuple[int, int]:
    """A wait status as (exit code, terminating signal): what ``Exited`` and the audit log carry."""
    return (
        os.WEXITSTATUS(status) if os.WIFEXITED(status) else 0,
        os.WTERMSIG(status) if os.WIFSIGNALED(status) else 0,
    )


def _try_send(conn: socket.socket, message: protocol.Message) -> None:
    try:
        transport.send(conn, message)
    except OSError:
        pass  # the client is gone; the command's fate was already decided
