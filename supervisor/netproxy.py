"""The session's network proxy (domains mode): commands reach the hosts their policy names, and a human can
add one while the connection waits.

Standard library only (``asyncio`` streams in one thread of the supervisor): the proxy is small (HTTP
CONNECT, plain HTTP forwarding, SOCKS5 CONNECT), it never looks inside TLS, and everything it needs to
decide is in the supervisor already; a library (proxy.py, mitmproxy, aiohttp) would add a large dependency
to the one process that must stay trustworthy, for features (interception, plugins) it must not have.

It listens on 127.0.0.1 (an ephemeral port, one per session). A command's inet sockets may connect to
nothing else (``linux.sockets``): the supervisor performs the command's ``connect()`` itself, and
before that returns it registers the socket's local address here as that command's (``NetClient.register``),
so each proxied connection is tied to the command, or the agent, whose notify loop made it. A connection
nobody registered is refused. Names are resolved here, never by the command; an allowed name that resolves
to a loopback or link-local address is refused unless that address (or ``localhost``) is allowed itself
(DNS rebinding).

For tests only: ``NONO_NETPROXY_HOSTS="a.test=127.0.0.1,b.test=127.0.0.1"`` in the supervisor's own
environment maps names under the reserved ``.test`` domain (RFC 6761) to addresses; any other name there is
ignored. Commands cannot set it (it is read from the supervisor's environment, once).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ipaddress
import os
import select
import socket
import threading
import time
import urllib.parse
from collections.abc import Callable
from dataclasses import dataclass, field

from nono_supervisor import paths
from nono_supervisor.policy.netpolicy import (
    LOCAL_ADDRESS,
    NOT_ALLOWED,
    UNATTRIBUTED,
    Pattern,
    Verdict,
    decide,
    network_hint,
    normalize_host,
    split_authority,
)
from nono_supervisor.policy.profile import Policy
from nono_supervisor.procfs import process_of

__all__ = ["NetProxy", "NetClient", "proxy_environment", "check_bind", "TEST_HOSTS_VAR"]

TEST_HOSTS_VAR = "NONO_NETPROXY_HOSTS"
HEAD_LIMIT = 64 * 1024  # a request head (request line and headers) longer than this is refused (431)
HEAD_SECONDS = 30.0  # a client that has not sent its request head by then is dropped
CONNECT_SECONDS = 15.0  # per upstream address
REGISTER_SECONDS = 2.0  # how long an accepted connection waits for its registration (microseconds, really)
_REGISTRATION_TTL = 60.0  # registrations never accepted (a failed connect) are dropped after this
MAX_CONNECTIONS = 1024  # open client connections, all commands together (each tunnel holds two fds)
MAX_PER_CLIENT = 128  # ... and per command
MAX_QUESTIONS = 16  # questions waiting at once (threads); more are refused as if timed out
_CHUNK = 64 * 1024
_STORE_CHECK_SECONDS = 0.25
_NO_PROXY = "localhost,127.0.0.1,::1"
_HOP_BY_HOP = {
    "connection",
    "proxy-connection",
    "keep-alive",
    "proxy-authorization",
    "proxy-authenticate",
    "te",
    "trailer",
    "upgrade",
}


def proxy_environment(host: str, port: int) -> dict[str, str]:
    """What a command's environment says about the proxy: both cases, as tools read one or the other."""
    http = f"http://{host}:{port}"
    values = {"HTTP_PROXY": http, "HTTPS_PROXY": http, "ALL_PROXY": f"socks5h://{host}:{port}"}
    values["NO_PROXY"] = _NO_PROXY
    env = dict(values)
    env.update({name.lower(): value for name, value in values.items()})
    return env


def check_bind() -> tuple[bool, str]:
    """For ``doctor``: whether a proxy could listen on loopback here."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            probe.bind(("127.0.0.1", 0))
            probe.listen(1)
            return True, f"can listen on 127.0.0.1 (tried port {probe.getsockname()[1]})"
    except OSError as e:
        return False, f"cannot listen on 127.0.0.1: {e.strerror or e}"


def _test_hosts(env) -> dict[str, str]:
    table: dict[str, str] = {}
    for item in env.get(TEST_HOSTS_VAR, "").split(","):
        name, _, address = item.strip().partition("=")
        host = normalize_host(name)
        try:
            canonical = str(ipaddress.ip_address(address.strip()))
        except ValueError:
            continue
        if host and host.endswith(".test"):
            table[host] = canonical
    return table


def _local(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback or ip.is_link_local or ip.is_unspecified or ip.is_multicast


def _peer_key(address) -> tuple[str, int]:
    host = address[0]
    if host.startswith("::ffff:") and "." in host:
        host = host[len("::ffff:") :]
    return host, address[1]


def _display(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class _Denial:
    """What ``on_decision`` takes (``nono_supervisor.linux.decisions.Denial``'s fields)."""

    __slots__ = ("op", "path", "rule", "is_dir", "pid")

    def __init__(self, path: str, rule: str, tid: int) -> None:
        self.op, self.path, self.rule, self.is_dir, self.pid = "connect", path, rule, False, tid


@dataclass
class NetClient:
    """One command (or the agent): its allow-list, its "once" answers, where its decisions are reported.
    The notify layer holds it as ``loop.net_proxy`` and asks it about every inet destination."""

    proxy: NetProxy
    policy: Policy
    command: str  # the command id ("agent" for the agent)
    text: str  # its command line, for questions and the audit log
    on_decision: Callable[[str, object], None]
    consent: object = None  # the command's Consent (its prompter, its report), when it has one
    agent: bool = False
    argv: list[str] = field(default_factory=list)  # the command's argv, for the audit log
    _once: set[tuple[str, int]] = field(default_factory=set)
    _withdrawn: set[str] = field(default_factory=set)  # timed out in this command: not asked again
    _open: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # -- the proxy's side ------------------------------------------------------------------------------

    def admit(self) -> bool:
        """One more of this command's connections through the proxy, unless it holds MAX_PER_CLIENT."""
        with self._lock:
            if self._open >= MAX_PER_CLIENT:
                return False
            self._open += 1
            return True

    def leave(self) -> None:
        """One admitted connection has ended."""
        with self._lock:
            self._open -= 1

    # -- the notify layer's side -----------------------------------------------------------------------

    def is_proxy(self, address: str, port: int) -> bool:
        return (address, port) == self.proxy.address

    def register(self, fd: int, family: int, tid: int) -> None:
        """Our copy of the command's socket has started connecting to the proxy: its local address is
        this command's (called before the command's connect() returns)."""
        try:
            with socket.fromfd(fd, family, socket.SOCK_STREAM) as copy:
                local = copy.getsockname()
        except OSError:
            return
        self.proxy.register(_peer_key(local), self, tid)

    def direct_rule(self, address: str, port: int) -> str | None:
        """The rule that lets a direct TCP connect reach ``address:port`` (an address the allow-list names,
        or a loopback one under ``localhost``), else None."""
        host = normalize_host(address)
        if host is None:
            return None
        verdict = self.decide(host, port, 0)
        if not verdict.allowed and _local(host) and ipaddress.ip_address(host).is_loopback:
            verdict = self.decide("localhost", port, 0)
        return verdict.rule if verdict.allowed else None

    # -- the proxy's side ------------------------------------------------------------------------------

    def allow_list(self) -> list[Pattern]:
        extra = list(self.policy.agent_domains) if self.agent else []
        return [*self.policy.allow_domains, *extra, *self.proxy.granted()]

    def decide(self, host: str, port: int, tid: int) -> Verdict:
        with self._lock:
            if self._once and (_display(host, port), self._once_key(tid)) in self._once:
                return Verdict(True, "user")
        return decide(host, port, self.allow_list(), self.policy.deny_domains)

    def _once_key(self, tid: int) -> int:
        """For the agent (it lives as long as the session) "once" is the process that asked; else 0."""
        return process_of(tid) if tid and getattr(self.consent, "per_process", False) else 0

    def record(self, decision: str, display: str, rule: str, tid: int) -> None:
        """``tid``: the thread whose connect() reached the proxy (what ``Denial.pid`` holds)."""
        try:
            self.on_decision(decision, _Denial(display, rule, tid))
        except Exception:  # noqa: BLE001 - reporting must never break a connection
            pass

    def prompter(self):
        return getattr(self.consent, "prompter", None)

    def _note(self, display: str, text: str) -> None:
        report = getattr(self.consent, "report", None)
        if report is not None:
            report.note("connect", display, text)

    def ask(self, host: str, port: int, rule: str, tid: int, alive: Callable[[], bool]) -> bool:
        """A question for ``host:port`` on the supervisor's terminal (the session's prompter, the same
        queue, guard and answers as the file questions); True when the human allowed it. Blocking."""
        from nono_supervisor.terminal.consent import NOTE_DENIED, NOTE_REFUSED, NOTE_TIMED_OUT, asker
        from nono_supervisor.terminal.prompt import GRANTING, TIMED_OUT, WITHDRAWN, Question

        display = _display(host, port)
        prompter = self.prompter()
        if prompter is None or rule != NOT_ALLOWED:
            return False  # a deny pattern is the user's own no: final, like never asked
        if self.proxy.refused(display):
            self._note(display, NOTE_REFUSED)
            return False
        with self._lock:
            if display in self._withdrawn:
                self._note(display, NOTE_TIMED_OUT)
                return False
        routed = getattr(self.consent, "routed", True)
        question = Question("connect", display, rule, command=self.text if routed else "", **asker(tid))

        reused: list[str] = []

        def already() -> str | None:  # answered meanwhile (another command asked about the same host)
            earlier = None
            if decide(host, port, self.allow_list(), self.policy.deny_domains).allowed:
                earlier = "session"
            elif self.proxy.refused(display):
                earlier = "deny"
            if earlier is not None:
                reused.append(earlier)
            return earlier

        answer = prompter.ask(question, already=already, alive=alive)
        if reused:  # another question's answer: applied and logged there
            if answer not in GRANTING:
                self._note(display, NOTE_REFUSED)
            return answer in GRANTING
        if answer in GRANTING:
            with self._lock:
                self._once.add((display, self._once_key(tid)))
        if answer in ("session", "always"):
            self.proxy.grant(host, port, persist=answer == "always", command=self.text)
        elif answer == "deny":
            self.proxy.refuse(display)
            self._note(display, NOTE_DENIED)
        elif answer in (TIMED_OUT, WITHDRAWN):
            with self._lock:
                self._withdrawn.add(display)
            if answer == TIMED_OUT:
                self._note(display, NOTE_TIMED_OUT)
        extra = {"reason": "timed out"} if answer == TIMED_OUT else {}
        if answer == WITHDRAWN:
            extra = {"reason": "withdrawn: the connection went away"}
        self.proxy.services.audit.write(
            command=self.command,
            argv=self.argv or [self.text],
            op="connect",
            path=display,
            rule=rule,
            decision="grant" if answer in GRANTING else "deny",
            by="user",
            answer=answer,
            **extra,
        )
        return answer in GRANTING


class NetProxy:
    """The session's proxy: ``start()`` binds 127.0.0.1 and runs the event loop in a thread of its own."""

    def __init__(self, services, resolve: Callable[[str, int], list[str]] | None = None) -> None:
        self.services = services  # the session's services: its environment (the grant store), its audit log
        self._resolve_override = resolve
        self._hosts = _test_hosts(os.environ)
        self._lock = threading.Lock()
        self._pending: dict[tuple[str, int], tuple[NetClient, int, float]] = {}
        self._waiters: dict[tuple[str, int], asyncio.Future] = {}
        self._session_grants: list[Pattern] = []
        self._refused: set[str] = set()
        self._stored: list[Pattern] = []
        self._store_stamp: object = None
        self._next_check = 0.0
        self._open = 0
        self._questions = concurrent.futures.ThreadPoolExecutor(MAX_QUESTIONS, thread_name_prefix="nono-ask")
        self._asking = threading.BoundedSemaphore(MAX_QUESTIONS)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._listener: socket.socket | None = None
        self.address = ("127.0.0.1", 0)

    # -- lifetime --------------------------------------------------------------------------------------

    def start(self) -> NetProxy:
        # IPPROTO_TCP named: asyncio turns Nagle off (TCP_NODELAY) only on sockets that say so; a tunnel
        # relaying a TLS handshake otherwise waits on delayed ACKs (40 ms a request, measured).
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", 0))
        listener.listen(512)
        listener.setblocking(False)
        self._listener = listener
        self.address = ("127.0.0.1", listener.getsockname()[1])
        ready = threading.Event()
        loop = self._loop = asyncio.new_event_loop()
        failure: list[BaseException] = []

        def run() -> None:
            asyncio.set_event_loop(loop)
            try:
                server = loop.run_until_complete(
                    asyncio.start_server(self._serve, sock=listener, limit=HEAD_LIMIT)
                )
            except BaseException as e:  # noqa: BLE001 - said to start()
                failure.append(e)
                ready.set()
                return
            ready.set()
            try:
                loop.run_forever()
            finally:
                server.close()
                tasks = asyncio.all_tasks(loop)
                for task in tasks:
                    task.cancel()
                with contextlib.suppress(BaseException):
                    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
                loop.close()

        self._thread = threading.Thread(target=run, name="nono-netproxy", daemon=True)
        self._thread.start()
        ready.wait()
        if failure:
            raise failure[0]
        return self

    @property
    def ports(self) -> tuple[int, ...]:
        return (self.address[1],)

    def environment(self) -> dict[str, str]:
        return proxy_environment(*self.address)

    def close(self) -> None:
        loop, self._loop = self._loop, None
        if loop is not None and self._thread is not None:
            loop.call_soon_threadsafe(loop.stop)
            self._thread.join(5)
        if self._listener is not None:
            self._listener.close()
        self._questions.shutdown(wait=False, cancel_futures=True)

    def client(
        self, policy: Policy, consent, argv: list[str], on_decision: Callable[[str, object], None] | None
    ) -> NetClient:
        """The notify layer's handle for one command (``consent``: its ``Consent.allows``, whose owner says
        who it is: a command, or the agent's own syscalls)."""
        owner = getattr(consent, "__self__", None)
        command = getattr(owner, "command", "") or "command"
        text = getattr(owner, "command_text", "") or " ".join(argv)
        agent = owner is not None and getattr(owner, "routed", True) is False
        report = on_decision or (lambda *_: None)
        argv = list(getattr(owner, "argv", None) or argv)
        return NetClient(self, policy, command, text, report, owner, agent, argv)

    # -- grants ------------------------------------------------------------------------------------------

    def granted(self) -> list[Pattern]:
        """This session's answers and the grant store's domain grants (looked at every 0.25 s)."""
        now = time.monotonic()
        if now >= self._next_check:
            self._refresh_store(now)
        with self._lock:
            return self._session_grants + self._stored

    def _refresh_store(self, now: float) -> None:
        from nono_supervisor.policy.grants import GrantStore, to_domain_patterns

        path = paths.grants_path(self.services.env)
        try:
            st = os.stat(path)
            stamp: object = (st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        except OSError:
            stamp = None
        with self._lock:
            self._next_check = now + _STORE_CHECK_SECONDS
            if stamp == self._store_stamp and stamp is not None:
                return
        try:
            stored = to_domain_patterns(GrantStore(path).load()) if stamp is not None else []
        except Exception:  # noqa: BLE001 - a store edited into something invalid: none of its grants
            stored = []
        with self._lock:
            self._stored, self._store_stamp = stored, stamp

    def grant(self, host: str, port: int, *, persist: bool, command: str) -> None:
        with self._lock:
            self._session_grants.append(Pattern(host, False, port, "user"))
        if persist:
            from nono_supervisor.policy.grants import DOMAIN, GrantStore

            GrantStore(paths.grants_path(self.services.env)).add(
                _display(host, port), "connect", DOMAIN, command=command
            )
            self._refresh_store(time.monotonic())

    def refuse(self, display: str) -> None:
        with self._lock:
            self._refused.add(display)

    def refused(self, display: str) -> bool:
        with self._lock:
            return display in self._refused

    # -- attribution ------------------------------------------------------------------------------------

    def register(self, key: tuple[str, int], client: NetClient, tid: int) -> None:
        now = time.monotonic()
        with self._lock:
            waiter = self._waiters.pop(key, None)
            if waiter is None:
                for old in [k for k, (_c, _t, at) in self._pending.items() if now - at > _REGISTRATION_TTL]:
                    del self._pending[old]
                self._pending[key] = (client, tid, now)
                return
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(lambda: waiter.done() or waiter.set_result((client, tid)))

    async def _attributed(self, key: tuple[str, int]) -> tuple[NetClient, int] | None:
        with self._lock:
            entry = self._pending.pop(key, None)
            if entry is not None:
                return entry[0], entry[1]
            waiter = asyncio.get_running_loop().create_future()
            self._waiters[key] = waiter
        try:
            return await asyncio.wait_for(waiter, REGISTER_SECONDS)
        except asyncio.TimeoutError:
            return None
        finally:
            with self._lock:
                if self._waiters.get(key) is waiter:
                    del self._waiters[key]

    # -- one connection ---------------------------------------------------------------------------------

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        client: NetClient | None = None
        tid = 0
        try:
            peer = writer.get_extra_info("peername")
            if self._open >= MAX_CONNECTIONS:
                return
            self._open += 1
            try:
                entry = await self._attributed(_peer_key(peer))
                if entry is not None:
                    if not entry[0].admit():
                        return
                    client, tid = entry  # admitted: the finally below lets it go
                first = await asyncio.wait_for(reader.readexactly(1), HEAD_SECONDS)
                if first == b"\x05":
                    await self._socks(client, tid, reader, writer)
                else:
                    await self._http(client, tid, first, reader, writer)
            finally:
                self._open -= 1
                if client is not None:
                    client.leave()
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, asyncio.LimitOverrunError):
            pass
        except asyncio.CancelledError:
            raise
        except Exception:  # noqa: BLE001 - one bad connection must never stop the proxy
            pass
        finally:
            with contextlib.suppress(Exception):
                writer.close()

    async def _decide(
        self, client: NetClient, tid: int, host: str, port: int, writer: asyncio.StreamWriter
    ) -> Verdict:
        """The allow-list, else the human (the connection waits), else the denial (reported)."""
        display = _display(host, port)
        verdict = client.decide(host, port, tid)
        if verdict.allowed:
            client.record("allow", display, verdict.rule, tid)
            return verdict
        if client.prompter() is not None and verdict.rule == NOT_ALLOWED and self._asking.acquire(False):
            fd = writer.get_extra_info("socket").fileno()

            def alive() -> bool:
                poller = select.poll()
                poller.register(fd, select.POLLRDHUP | select.POLLHUP | select.POLLERR)
                return not poller.poll(0)

            try:
                loop = asyncio.get_running_loop()
                allowed = await loop.run_in_executor(
                    self._questions, client.ask, host, port, verdict.rule, tid, alive
                )
            finally:
                self._asking.release()
            if allowed:
                client.record("grant", display, "user", tid)
                return Verdict(True, "user")
        client.record("deny", display, verdict.rule, tid)
        return verdict

    async def _resolve(self, host: str, port: int) -> list[str]:
        if host in self._hosts:
            return [self._hosts[host]]
        try:
            return [str(ipaddress.ip_address(host))]
        except ValueError:
            pass
        if self._resolve_override is not None:
            return self._resolve_override(host, port)
        infos = await asyncio.get_running_loop().getaddrinfo(host, port, type=socket.SOCK_STREAM)
        return list(dict.fromkeys(info[4][0] for info in infos))

    async def _open_upstream(
        self, client: NetClient, tid: int, host: str, port: int
    ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | str:
        """A connection to ``host:port`` as resolved here, or why not (a denial rule, or an error)."""
        try:
            addresses = await self._resolve(host, port)
        except OSError as e:
            return f"cannot resolve {host}: {e.strerror or e}"
        if not addresses:
            return f"cannot resolve {host}"
        problem = "no address"
        for address in addresses:
            if _local(address) and host not in self._hosts and address != host:
                if client.direct_rule(address, port) is None:
                    problem = LOCAL_ADDRESS + address
                    continue
            try:
                return await asyncio.wait_for(asyncio.open_connection(address, port), CONNECT_SECONDS)
            except asyncio.TimeoutError:
                problem = f"cannot connect to {_display(address, port)}: timed out"
            except OSError as e:
                problem = f"cannot connect to {_display(address, port)}: {e.strerror or e}"
        return problem

    async def _http(
        self,
        client: NetClient | None,
        tid: int,
        first: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        try:
            head = first + await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), HEAD_SECONDS)
        except asyncio.LimitOverrunError:
            await _reply(writer, 431, "nono: request head too large\n")
            return
        lines = head[:-4].decode("latin-1").split("\r\n")
        parts = lines[0].split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            await _reply(writer, 400, "nono: not an HTTP/1 proxy request\n")
            return
        method, target, version = parts
        if method == "CONNECT":
            authority = split_authority(target)
            path = ""
        else:
            url = urllib.parse.urlsplit(target)
            if url.scheme.lower() != "http" or not url.hostname:
                text = "nono: a proxy request needs an absolute http:// URL (https: CONNECT)\n"
                await _reply(writer, 400, text)
                return
            authority = split_authority(url.netloc.rpartition("@")[2], default_port=80)
            path = urllib.parse.urlunsplit(("", "", url.path or "/", url.query, ""))
        if authority is None:
            await _reply(writer, 400, f"nono: not a host:port: {target[:200]}\n")
            return
        host, port = authority
        display = _display(host, port)
        if client is None:
            await _reply(writer, 403, _denial_text(display, UNATTRIBUTED))
            return
        verdict = await self._decide(client, tid, host, port, writer)
        if not verdict.allowed:
            await _reply(writer, 403, _denial_text(display, verdict.rule))
            return
        upstream = await self._open_upstream(client, tid, host, port)
        if isinstance(upstream, str):
            local = upstream.startswith(LOCAL_ADDRESS)
            if local:
                client.record("deny", display, upstream, tid)
            text = _denial_text(display, upstream) if local else f"nono: {upstream}\n"
            await _reply(writer, 403 if local else 502, text)
            return
        up_reader, up_writer = upstream
        if method == "CONNECT":
            writer.write(f"{version} 200 Connection established\r\n\r\n".encode())
        else:
            up_writer.write(_forwarded_head(method, path, version, lines[1:], host, port))
        await _tunnel(reader, writer, up_reader, up_writer)

    async def _socks(
        self, client: NetClient | None, tid: int, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        """SOCKS5 (RFC 1928), CONNECT only, no authentication; names are resolved here (socks5h)."""
        count = (await asyncio.wait_for(reader.readexactly(1), HEAD_SECONDS))[0]
        methods = await asyncio.wait_for(reader.readexactly(count), HEAD_SECONDS)
        if 0 not in methods:
            writer.write(b"\x05\xff")
            return
        writer.write(b"\x05\x00")
        version, command, _reserved, kind = await asyncio.wait_for(reader.readexactly(4), HEAD_SECONDS)
        if kind == 1:
            name = socket.inet_ntop(socket.AF_INET, await reader.readexactly(4))
        elif kind == 4:
            name = socket.inet_ntop(socket.AF_INET6, await reader.readexactly(16))
        elif kind == 3:
            name = (await reader.readexactly((await reader.readexactly(1))[0])).decode("latin-1")
        else:
            writer.write(_socks_reply(8))
            return
        port = int.from_bytes(await reader.readexactly(2), "big")
        host = normalize_host(name)
        if version != 5 or command != 1 or host is None or not port:
            writer.write(_socks_reply(7 if command != 1 else 1))
            return
        if client is None or not (await self._decide(client, tid, host, port, writer)).allowed:
            writer.write(_socks_reply(2))  # connection not allowed by ruleset
            return
        upstream = await self._open_upstream(client, tid, host, port)
        if isinstance(upstream, str):
            if upstream.startswith(LOCAL_ADDRESS):
                client.record("deny", _display(host, port), upstream, tid)
            writer.write(_socks_reply(2 if upstream.startswith(LOCAL_ADDRESS) else 5))
            return
        writer.write(_socks_reply(0))
        await _tunnel(reader, writer, *upstream)


def _denial_text(display: str, rule: str) -> str:
    hint = network_hint(display, rule)
    return f"nono: denied connect {display} [{rule}]{hint or ''}\n"


async def _reply(writer: asyncio.StreamWriter, status: int, body: str) -> None:
    reasons = {
        400: "Bad Request",
        403: "Forbidden",
        431: "Request Header Fields Too Large",
        502: "Bad Gateway",
    }
    data = body.encode("utf-8", "replace")
    writer.write(
        (
            f"HTTP/1.1 {status} {reasons.get(status, 'Error')}\r\nContent-Type: text/plain; charset=utf-8\r\n"
            f"Content-Length: {len(data)}\r\nConnection: close\r\n\r\n"
        ).encode()
        + data
    )
    with contextlib.suppress(Exception):
        await writer.drain()


def _socks_reply(code: int) -> bytes:
    return bytes([5, code, 0, 1, 0, 0, 0, 0, 0, 0])


def _forwarded_head(method: str, path: str, version: str, headers: list[str], host: str, port: int) -> bytes:
    """The request for the origin server: origin-form target, hop-by-hop headers dropped (and those the
    client's Connection header names), one request per connection. ``Host`` is the host that was decided
    (the client's own is dropped: another name on the same server is another host)."""
    named = set()
    for line in headers:
        name, _, value = line.partition(":")
        if name.strip().lower() == "connection":
            named.update(token.strip().lower() for token in value.split(","))
    dropped = _HOP_BY_HOP | named | {"host"}
    kept = [line for line in headers if line and line.partition(":")[0].strip().lower() not in dropped]
    kept.insert(0, f"Host: {_display(host, port) if port != 80 else (f'[{host}]' if ':' in host else host)}")
    return ("\r\n".join([f"{method} {path} {version}", *kept, "Connection: close"]) + "\r\n\r\n").encode(
        "latin-1"
    )


async def _pipe(source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
    try:
        while data := await source.read(_CHUNK):
            sink.write(data)
            await sink.drain()
    except (OSError, asyncio.IncompleteReadError):
        pass
    finally:
        with contextlib.suppress(Exception):
            if sink.can_write_eof():
                sink.write_eof()


async def _tunnel(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    up_reader: asyncio.StreamReader,
    up_writer: asyncio.StreamWriter,
) -> None:
    try:
        await asyncio.gather(_pipe(reader, up_writer), _pipe(up_reader, writer))
    finally:
        with contextlib.suppress(Exception):
            up_writer.close()
