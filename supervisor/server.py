"""The socket server: one thread per connection, one sandboxed command per connection.

A connection that misbehaves (wrong uid, malformed or oversized frame, wrong fds) gets a ``Refused`` and
is closed; nothing it sends can stop the server from serving everyone else.
"""

from __future__ import annotations

import os
import select
import socket
import sys
import threading
from dataclasses import replace
from pathlib import Path

from nono_shell import protocol, transport
from nono_shell.client import FORWARDED_SIGNALS
from nono_shell.personality import command_text
from supervisor.access import OPS
from supervisor.backend import finish, start_sandboxed
from supervisor.consent import Consent
from supervisor.errors import NonoError
from supervisor.launcher import status_code
from supervisor.policy import Grant
from supervisor.prompt import Question
from supervisor.report import CommandReport
from supervisor.session import Session

__all__ = ["Server"]

# A client that connects and never sends its request would hold a thread forever.
FIRST_MESSAGE_TIMEOUT = 30.0


class _Refuse(Exception):
    pass


class Server:
    def __init__(self, session: Session, socket_path: Path, verbose: int = 0) -> None:
        self.session = session
        self.socket_path = socket_path
        session.socket_path = socket_path
        self.verbose = verbose
        self._listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | transport.SOCK_CLOEXEC)
        old_umask = os.umask(0o177)  # the socket is ours alone; the 0700 directory is the real fence
        try:
            self._listener.bind(str(socket_path))
        finally:
            os.umask(old_umask)
        self._listener.listen(128)
        self._closing = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Serve in a background thread (``run``); ``serve_forever`` is the foreground form."""
        self._thread = threading.Thread(target=self.serve_forever, name="nono-accept", daemon=True)
        self._thread.start()

    def serve_forever(self) -> None:
        while not self._closing:
            try:
                conn, _ = self._listener.accept()
            except OSError:
                if self._closing:
                    return
                continue
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def close(self) -> None:
        self._closing = True
        try:
            self._listener.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._listener.close()

    def _log(self, text: str) -> None:
        if self.verbose:
            print(f"nono-supervisor: {text}", file=sys.stderr, flush=True)

    def _connection(self, conn: socket.socket) -> None:
        fds: list[int] = []
        try:
            self._serve_one(conn, fds)
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

    def _serve_one(self, conn: socket.socket, fds: list[int]) -> None:
        uid = transport.peer_uid(conn)
        if uid != os.getuid():
            raise _Refuse(f"peer uid {uid} is not the supervisor's uid {os.getuid()}")
        conversation = protocol.Conversation("supervisor")
        decoder = protocol.Decoder()
        conn.settimeout(FIRST_MESSAGE_TIMEOUT)
        try:
            request = transport.receive(conn, decoder, fds)
            conversation.receive(request)
        except (protocol.ProtocolError, transport.Closed, OSError) as e:
            raise _Refuse(f"bad request: {e}") from None
        assert isinstance(request, protocol.RunRequest)
        if len(fds) != len(request.stdio):
            raise _Refuse(f"request names {len(request.stdio)} stdio fds but carried {len(fds)}")
        shell = self.session.shells.get(request.shell)
        if shell is None:
            raise _Refuse(f"no real {request.shell} found on this machine")
        stdio = tuple(fds[request.stdio.index(n)] if n in request.stdio else -1 for n in range(3))
        command = self.session.next_command_id()
        status = self._run(conn, decoder, conversation, request, shell, stdio, command)
        code, signo = _exit_parts(status)
        _try_send(conn, protocol.Exited(code=code, signal=signo))

    def _run(self, conn, decoder, conversation, request, shell, stdio, command) -> int:
        """Run the command; with ``--prompt after``, ask about its denials once it failed and run it again
        with what the human granted, on the same fds (DESIGN: "after the fact")."""
        mode = self.session.prompt_mode()
        text = command_text(request.argv)
        consent = Consent(self.session, command, text, self.session.prompter if mode == "tty" else None)
        env = self.session.command_env(request.env)
        policy = None
        for attempt in range(2):
            report = CommandReport(
                self.session.audit, self.session.policy, command, request.argv, request.cwd
            )
            try:
                process = start_sandboxed(
                    self.session,
                    shell,
                    request.argv,
                    env,
                    request.cwd,
                    stdio,
                    policy=policy,
                    on_decision=report.record,
                    consent=consent.allows,
                    trap=self.session.trap,
                )
            except NonoError as e:
                self.session.audit.write(
                    command=command, event="refused", argv=request.argv, cwd=request.cwd, reason=str(e)
                )
                raise _Refuse(str(e)) from None
            report.pid = process.pid
            self.session.audit.write(
                command=command,
                event="start",
                argv=request.argv,
                cwd=request.cwd,
                pid=process.pid,
                shell=shell,
                attempt=attempt,
            )
            if attempt == 0:
                _try_send(conn, protocol.Started(command))
            status, client_alive = self._supervise(conn, decoder, conversation, process)
            finish(process)
            if stdio[2] >= 0:
                report.write_to(stdio[2])
            code, signo = _exit_parts(status)
            self.session.audit.write(command=command, event="exit", pid=process.pid, code=code, signal=signo)
            if mode != "after" or attempt or not client_alive or status_code(status) == 0:
                return status
            granted = self._ask_after(consent, report)
            if not granted:
                return status
            policy = replace(self.session.policy, grants=self.session.policy.grants + tuple(granted))
        return status

    def _ask_after(self, consent: Consent, report: CommandReport) -> list[Grant]:
        """One question per denial of the failed command; the grants for its retry."""
        granted = []
        for denial in report.denials():
            if not consent.askable(denial.rule):
                continue
            question = Question(
                consent.command_text, denial.op, self.session.policy.display(denial.path), denial.rule
            )
            answer = self.session.prompter.ask(question)
            consent.record(denial.op, denial.path, denial.rule, denial.is_dir, answer)
            if answer != "deny":
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


def _exit_parts(status: int) -> tuple[int, int]:
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
