"""Network by domain (issue 14): the supervisor's allow-list proxy, on loopback only.

Upstream servers run in this process on 127.0.0.1; their names (``allowed.test``, ``denied.test``, ...) are
given to the proxy through its test resolution table (``NONO_NETPROXY_HOSTS``, honoured for ``.test`` names
only). Every denial has a twin that succeeds: the same client, host or packet, allowed.
"""

from __future__ import annotations

import errno
import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pexpect
import pytest

from conftest import SUPERVISOR, Home, wait_until
from nono_supervisor.audit import AuditLog
from nono_supervisor.errors import UsageError
from nono_supervisor.netproxy import TEST_HOSTS_VAR, NetClient, NetProxy, proxy_environment
from nono_supervisor.policy import netpolicy
from nono_supervisor.policy.grants import DOMAIN, GrantStore, to_domain_patterns, to_policy_grants
from nono_supervisor.policy.netpolicy import decide, network_hint, parse_pattern, split_authority
from nono_supervisor.policy.profile import Context, PolicyOptions, resolve_policy
from nono_supervisor.terminal.prompt import GUARD_SECONDS

USERS = pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
NAMES = ("allowed", "denied", "api", "once", "keep", "nope", "other", "c0", "c1", "c2", "c3")
HOSTS = ",".join(f"{name}.test=127.0.0.1" for name in NAMES)
BODY = "upstream-ok"


# ---- loopback upstreams ----------------------------------------------------------------------------------


class _Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 - http.server's name
        self.server.hits.append((self.headers.get("Host"), self.path))
        body = f"{BODY} {self.path}\n".encode()
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_args) -> None:
        pass


class Upstream:
    """An HTTP (or HTTPS) server on 127.0.0.1 that records what reached it."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.server.hits = []
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def hits(self) -> list:
        return self.server.hits

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def upstream():
    server = Upstream()
    yield server
    server.close()


@pytest.fixture(scope="module")
def certificate(tmp_path_factory) -> Path:
    """A self-signed certificate for allowed.test and denied.test (openssl), readable by uid 65534."""
    if shutil.which("openssl") is None:
        pytest.skip("needs openssl to make a test certificate")
    where = tmp_path_factory.mktemp("tls")
    where.chmod(0o755)
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
         "-subj", "/CN=allowed.test", "-addext", "subjectAltName=DNS:allowed.test,DNS:denied.test",
         "-keyout", str(where / "key.pem"), "-out", str(where / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    for name in ("key.pem", "cert.pem"):
        (where / name).chmod(0o644)
    return where


@pytest.fixture
def tls_upstream(certificate):
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(certificate / "cert.pem", certificate / "key.pem")
    server = Upstream(context)
    yield server
    server.close()


def _home(request, user: bool) -> Home:
    home = request.getfixturevalue("nobody_home" if user else "home")
    home.env[TEST_HOSTS_VAR] = HOSTS
    return home


def _exec(home: Home, *argv: str, flags: tuple[str, ...] = (), user: bool = False, **kw):
    return home.run([SUPERVISOR, "exec", "--prompt", "never", *flags, "--", *argv], user=user, **kw)


def _denial_line(host: str, port: int, rule: str = "domain not allowed") -> str:
    return f"nono: denied connect {host}:{port} [{rule}]; to allow: --allow-domain {host}"


def _connects(home: Home) -> list[dict]:
    return [r for r in home.audit() if r.get("op") == "connect" and r.get("by") == "policy"]


# ---- clients: curl, python urllib, node ------------------------------------------------------------------

URLLIB = r"""
import sys, urllib.error, urllib.request
try:
    print(urllib.request.urlopen(sys.argv[1], timeout=20).read().decode(), end="")
except urllib.error.HTTPError as e:
    print(f"status={e.code} {e.read().decode()}", end="")
"""
# Node 20's fetch ignores HTTP(S)_PROXY, and no undici ProxyAgent is installed here: the client asks the
# proxy for a CONNECT tunnel itself (http.request method CONNECT), then speaks HTTP inside it.
NODE = r"""
const http = require('http');
const proxy = new URL(process.env.HTTPS_PROXY);
const [host, port] = [process.argv[2], process.argv[3]];
const req = http.request(
  {host: proxy.hostname, port: proxy.port, method: 'CONNECT', path: `${host}:${port}`});
req.on('connect', (res, socket) => {
  if (res.statusCode !== 200) { console.log(`status=${res.statusCode}`); socket.destroy(); return; }
  http.get({createConnection: () => socket, path: '/node', headers: {Host: `${host}:${port}`}}, (r) => {
    let body = ''; r.on('data', (d) => body += d); r.on('end', () => process.stdout.write(body));
  });
});
req.on('error', (e) => console.log(`error=${e.message}`));
req.end();
"""


def _client(name: str, home: Home, host: str, port: int, certificate: Path | None) -> list[str]:
    if name == "curl-http":  # plain HTTP forwarding (absolute-form request to the proxy)
        return ["curl", "-sS", "--fail", f"http://{host}:{port}/curl"]
    if name == "curl-https":  # CONNECT, then TLS to the upstream, verified
        shutil.copy(certificate / "cert.pem", home.work / "cert.pem")  # where uid 65534 can read it
        return [
            "curl",
            "-sS",
            "--fail",
            "--cacert",
            str(home.work / "cert.pem"),
            f"https://{host}:{port}/curl",
        ]
    if name == "python-urllib":
        return [sys.executable, "-c", URLLIB, f"http://{host}:{port}/urllib"]
    if name == "node-connect":
        if shutil.which("node") is None:
            pytest.skip("needs node")
        script = home.work / "connect.js"
        script.write_text(NODE)
        return [shutil.which("node"), str(script), host, str(port)]
    raise AssertionError(name)


@pytest.mark.parametrize("client", ["curl-http", "curl-https", "python-urllib", "node-connect"])
@USERS
def test_an_allowed_host_is_reached_and_a_denied_one_gets_403_and_a_report(request, user, client):
    home = _home(request, user)
    server = request.getfixturevalue("tls_upstream" if client == "curl-https" else "upstream")
    certificate = request.getfixturevalue("certificate") if client == "curl-https" else None
    flags = ("--allow-domain", "allowed.test")
    argv = _client(client, home, "allowed.test", server.port, certificate)
    allowed = _exec(home, *argv, flags=flags, user=user)
    assert allowed.returncode == 0, allowed.stderr
    assert BODY in allowed.stdout
    assert len(server.hits) == 1 and server.hits[0][0] == f"allowed.test:{server.port}"
    assert "nono: denied" not in allowed.stderr

    denied = _exec(
        home, *_client(client, home, "denied.test", server.port, certificate), flags=flags, user=user
    )
    assert BODY not in denied.stdout and len(server.hits) == 1  # nothing reached the upstream
    assert _denial_line("denied.test", server.port) in denied.stderr  # the command's report
    if client == "python-urllib":  # the 403's body names the flag too
        assert "status=403" in denied.stdout and "to allow: --allow-domain denied.test" in denied.stdout
    if client == "node-connect":
        assert "status=403" in denied.stdout

    records = _connects(home)  # the audit log: which command reached which host
    reached = [(r["path"], r["decision"]) for r in records]
    assert reached == [(f"allowed.test:{server.port}", "allow"), (f"denied.test:{server.port}", "deny")]
    assert records[0]["argv"] == argv and records[0]["command"] != records[1]["command"]


def test_the_403_body_names_the_flag_and_the_twin_flag_works(home, upstream):
    home.env[TEST_HOSTS_VAR] = HOSTS
    url = f"http://denied.test:{upstream.port}/x"
    refused = _exec(home, "curl", "-sS", url, flags=("--allow-domain", "allowed.test"))
    assert refused.stdout == _denial_line("denied.test", upstream.port) + "\n"
    twin = _exec(
        home, "curl", "-sS", url, flags=("--allow-domain", "allowed.test", "--allow-domain", "denied.test")
    )
    assert twin.stdout == f"{BODY} /x\n"


def test_deny_domain_beats_a_wildcard_and_an_exact_allow_beats_a_wildcard_deny(home, upstream):
    home.env[TEST_HOSTS_VAR] = HOSTS
    url = f"http://denied.test:{upstream.port}/x"
    refused = _exec(
        home, "curl", "-sS", url, flags=("--allow-domain", "*.test", "--deny-domain", "denied.test")
    )
    assert "[denied domain denied.test]\n" in refused.stdout and "to allow" not in refused.stdout
    wildcard = _exec(
        home, "curl", "-sS", url, flags=("--allow-domain", "denied.test", "--deny-domain", "*.test")
    )
    assert wildcard.stdout == f"{BODY} /x\n"
    by_wildcard = _exec(home, "curl", "-sS", url, flags=("--allow-domain", "*.test"))
    assert by_wildcard.stdout == f"{BODY} /x\n"


DIRECT = r"""
import socket, sys
family = socket.AF_INET6 if sys.argv[1] == "v6" else socket.AF_INET
address = ("::ffff:127.0.0.1" if family == socket.AF_INET6 else "127.0.0.1", int(sys.argv[2]))
s = socket.socket(family, socket.SOCK_STREAM)
try:
    s.connect(address)
    s.sendall(b"GET /direct HTTP/1.0\r\nHost: x\r\n\r\n")
    print("result=ok", s.recv(200).split(b"\r\n")[0].decode())
except OSError as e:
    print(f"result={e.errno}")
"""


@pytest.mark.parametrize("family", ["v4", "v6-mapped"])
@USERS
def test_a_program_that_ignores_the_proxy_is_refused(request, user, family, upstream):
    home = _home(request, user)
    args = (sys.executable, "-c", DIRECT, family[:2], str(upstream.port))
    refused = _exec(home, *args, flags=("--allow-domain", "allowed.test"), user=user)
    assert f"result={errno.EACCES}" in refused.stdout and not upstream.hits
    assert (  # a v4-mapped address is shown, and allowed, as the IPv4 address it is
        f"nono: denied connect 127.0.0.1:{upstream.port} [direct connection, not through the proxy];"
        " to allow: --allow-domain 127.0.0.1" in refused.stderr
    )
    # The twins: the hint's flag (the address allowed itself), and an open network.
    for flags in (("--allow-domain", "127.0.0.1"), ()):
        twin = _exec(home, *args, flags=flags, user=user)
        assert "result=ok HTTP/1.0 200" in twin.stdout, twin.stdout + twin.stderr
    assert len(upstream.hits) == 2


DNS = r"""
import socket, struct, sys
what, host, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
query = struct.pack("!HHHHHH", 0x1234, 0x0100, 1, 0, 0, 0) + b"\x07example\x03org\x00\x00\x01\x00\x01"
try:
    if what == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(query, (host, port))
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.connect((host, port))
        s.sendall(struct.pack("!H", len(query)) + query)
    print("result=ok")
except OSError as e:
    print(f"result={e.errno}")
"""


class _Resolver:
    """Something listening where a resolver would (UDP on a loopback port, TCP on 127.0.0.77:53)."""

    def __init__(self, what: str) -> None:
        kind = socket.SOCK_DGRAM if what == "udp" else socket.SOCK_STREAM
        self.sock = socket.socket(socket.AF_INET, kind)
        try:
            self.sock.bind(("127.0.0.1", 0) if what == "udp" else ("127.0.0.77", 53))
        except OSError as e:
            self.sock.close()
            pytest.skip(f"cannot listen where a resolver would: {e.strerror}")
        if kind == socket.SOCK_STREAM:
            self.sock.listen(4)
        self.host, self.port = self.sock.getsockname()
        self.sock.settimeout(3)

    def received(self) -> bool:
        try:
            if self.sock.type == socket.SOCK_DGRAM:
                return bool(self.sock.recv(512))
            conn, _ = self.sock.accept()
            conn.close()
            return True
        except OSError:
            return False


@pytest.mark.parametrize("what", ["udp", "tcp53"])
def test_a_dns_query_to_an_outside_resolver_is_refused(home, what):
    resolver = _Resolver(what)
    try:
        args = (sys.executable, "-c", DNS, what[:3], resolver.host, str(resolver.port))
        refused = _exec(home, *args, flags=("--allow-domain", "allowed.test"))
        assert f"result={errno.EACCES}" in refused.stdout
        rule = "[network mode domains]" if what == "udp" else "[raw DNS: the proxy resolves names]"
        assert rule in refused.stderr and "to allow: --net-mode open" in refused.stderr
        resolver.sock.settimeout(0.3)
        assert not resolver.received()
        resolver.sock.settimeout(3)
        twin = _exec(home, *args, flags=("--allow-domain", "allowed.test", "--net-mode", "open"))
        assert "result=ok" in twin.stdout and resolver.received()
    finally:
        resolver.sock.close()


NETWORK = r"""
import socket, sys
what = sys.argv[1]
try:
    if what == "mptcp":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
    elif what == "fastopen":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.sendto(b"x", 0x20000000, ("127.0.0.1", int(sys.argv[2])))
    elif what == "listen":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.listen(1)
    elif what == "bind":  # every interface: a port the network could reach (loopback's port 0 is bound)
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("0.0.0.0", 0))
    elif what == "bind-port":  # a chosen loopback port: it would keep another program from it
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("127.0.0.1", int(sys.argv[2])))
    elif what in ("probe-v6", "probe-v4"):  # urllib3's IPv6 probe (bind [::1]:0), then a listen on it
        v6 = what == "probe-v6"
        s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_STREAM)
        s.bind(("::1" if v6 else "127.0.0.1", 0))
        print(f"bound={s.getsockname()[1] != 0}")
        s.listen(1)
    print("result=ok")
except OSError as e:
    print(f"result={e.errno}")
"""


@pytest.mark.parametrize("what", ["mptcp", "fastopen", "listen", "bind", "bind-port"])
def test_what_steps_around_landlock_is_refused_as_under_net_block(home, what, upstream):
    if what == "mptcp" and Path("/proc/sys/net/mptcp/enabled").read_text().strip() != "1":
        pytest.skip("MPTCP is disabled on this kernel")
    port = _free_port() if what == "bind-port" else upstream.port
    args = (sys.executable, "-c", NETWORK, what, str(port))
    refused = _exec(home, *args, flags=("--allow-domain", "allowed.test"))
    assert f"result={errno.EACCES}" in refused.stdout and "[network mode domains]" in refused.stderr
    twin = _exec(home, *args, flags=("--net-mode", "open", "--allow-domain", "allowed.test"))
    assert "result=ok" in twin.stdout


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
@pytest.mark.parametrize("family", ["probe-v6", "probe-v4"])
def test_an_ephemeral_loopback_bind_is_bound_silently_and_cannot_listen(request, user, family):
    """Issue 20: urllib3's IPv6 probe (bind [::1]:0) printed a denial in every pip run in domains mode. The
    bind succeeds as bare with no line; the socket still cannot listen (the refusal that follows)."""
    if family == "probe-v6" and not socket.has_ipv6:
        pytest.skip("no IPv6 on this machine")
    home = _home(request, user)
    args = (sys.executable, "-c", NETWORK, family, "0")
    run = _exec(home, *args, flags=("--allow-domain", "allowed.test"), user=user)
    assert "bound=True" in run.stdout, run.stderr
    assert f"result={errno.EACCES}" in run.stdout  # listen: refused, and reported
    assert "denied bind network (listen) [network mode domains]" in run.stderr
    assert "::1]:0" not in run.stderr and "127.0.0.1:0" not in run.stderr
    twin = _exec(home, *args, flags=("--net-mode", "open", "--allow-domain", "allowed.test"), user=user)
    assert "bound=True" in twin.stdout and "result=ok" in twin.stdout and "nono:" not in twin.stderr


def test_no_trap_refuses_domains_mode_and_runs_nothing(home):
    # In a directory of the workdir: under --no-trap its root refuses every creation (it holds runs-later
    # names, .mcp.json..., which Landlock alone keeps only so; README, Runs later).
    (home.work / "out").mkdir()
    ran = home.work / "out" / "ran"
    result = _exec(home, "touch", str(ran), flags=("--no-trap", "--allow-domain", "allowed.test"))
    assert result.returncode == 125 and "needs the seccomp layer" in result.stderr
    assert not ran.exists()
    twin = _exec(home, "touch", str(ran), flags=("--no-trap", "--net-block"))
    assert twin.returncode == 0 and ran.exists()


def test_the_commands_environment_points_at_the_proxy(home):
    shown = _exec(home, "env", flags=("--allow-domain", "allowed.test"))
    env = dict(line.split("=", 1) for line in shown.stdout.splitlines() if "=" in line)
    proxy = env["HTTPS_PROXY"]
    assert proxy.startswith("http://127.0.0.1:") and env["https_proxy"] == env["HTTP_PROXY"] == proxy
    assert env["ALL_PROXY"] == env["all_proxy"] == proxy.replace("http://", "socks5h://")
    assert env["NO_PROXY"] == env["no_proxy"] == "localhost,127.0.0.1,::1"
    open_env = _exec(home, "env")  # the twin: an open network gets no proxy
    assert "HTTPS_PROXY" not in open_env.stdout


def test_socks5_connect_is_decided_the_same_way(home, upstream):
    home.env[TEST_HOSTS_VAR] = HOSTS
    script = f'curl -sS --fail -x "$ALL_PROXY" http://{{}}.test:{upstream.port}/socks; echo " rc=$?"'
    flags = ("--allow-domain", "allowed.test")
    allowed = _exec(home, "sh", "-c", script.format("allowed"), flags=flags)
    assert f"{BODY} /socks" in allowed.stdout and "rc=0" in allowed.stdout
    denied = _exec(home, "sh", "-c", script.format("denied"), flags=flags)
    assert "rc=97" in denied.stdout and _denial_line("denied.test", upstream.port) in denied.stderr
    assert len(upstream.hits) == 1


def test_localhost_in_no_proxy_is_reached_directly_only_when_allowed(home, upstream):
    """NO_PROXY names loopback, so a client connects to it directly; that is a direct connection like any
    other, allowed by ``--allow-domain localhost`` (or the address)."""
    url = f"http://localhost:{upstream.port}/x"
    refused = _exec(home, "curl", "-sS", url, flags=("--allow-domain", "allowed.test"))
    assert refused.returncode == 7 and "to allow: --allow-domain 127.0.0.1" in refused.stderr
    for allowed in ("localhost", f"localhost:{upstream.port}", "127.0.0.1"):
        twin = _exec(home, "curl", "-sS", url, flags=("--allow-domain", allowed))
        assert twin.stdout == f"{BODY} /x\n", twin.stderr
    through = _exec(
        home, "sh", "-c", f"unset NO_PROXY no_proxy; curl -sS {url}", flags=("--allow-domain", "localhost")
    )
    assert through.stdout == f"{BODY} /x\n"  # through the proxy, the name localhost is allowed as itself


# ---- per-command attribution, and the agent's own hosts --------------------------------------------------


def test_the_agent_reaches_its_api_host_while_its_commands_get_their_own_allow_list(home, upstream):
    home.env[TEST_HOSTS_VAR] = HOSTS
    profile = home.work / "agent.toml"
    profile.write_text(
        'extends = "default"\n[network]\nmode = "domains"\nallow_domains = ["allowed.test"]\n'
        'agent_allow_domains = ["api.test"]\n'
    )
    api, allowed = (f"http://{name}.test:{upstream.port}/{name}" for name in ("api", "allowed"))
    agent = (
        f"curl -sS --fail {api}; echo agent-rc=$?;"
        f" bash -c 'curl -sS --fail {api}; echo command-api-rc=$?; curl -sS --fail {allowed}'"
    )
    result = home.run(
        [SUPERVISOR, "run", "--no-interpose", "--prompt", "never", "--profile", str(profile), "--",
         "bash", "-c", agent],
        stdin=subprocess.DEVNULL,
    )  # fmt: skip
    assert "agent-rc=0" in result.stdout and f"{BODY} /api" in result.stdout  # the agent's own
    assert "command-api-rc=22" in result.stdout  # its command: not the agent's API host...
    assert f"{BODY} /allowed" in result.stdout  # ...but its own allow-list (the twin)
    assert _denial_line("api.test", upstream.port) in result.stderr
    records = [(r["command"], r["path"], r["decision"]) for r in _connects(home)]
    assert records[0] == ("agent", f"api.test:{upstream.port}", "allow")
    assert records[1][1:] == (f"api.test:{upstream.port}", "deny") and records[1][0] != "agent"
    assert records[2] == (records[1][0], f"allowed.test:{upstream.port}", "allow")


def test_concurrent_commands_are_each_attributed_to_themselves(home, upstream):
    """Through one ``serve`` session, commands with different argv at once: each audit record names the
    command whose socket it was."""
    from conftest import start_supervisor

    home.env[TEST_HOSTS_VAR] = HOSTS
    supervisor = start_supervisor(home, "--prompt", "never", "--allow-domain", "*.test")
    try:
        scripts = [
            f"for i in 1 2 3 4 5; do curl -sS http://c{n}.test:{upstream.port}/c{n}-$i; done"
            for n in range(4)
        ]
        runs = [
            subprocess.Popen([str(supervisor.shims / "bash"), "-c", script], env=supervisor.env,
                             cwd=home.work, stdout=subprocess.PIPE, text=True)
            for script in scripts
        ]  # fmt: skip
        outputs = [run.communicate(timeout=60)[0] for run in runs]
    finally:
        supervisor.stop()
    for n, output in enumerate(outputs):
        assert output.count(BODY) == 5 and f"/c{n}-5" in output
    records = _connects(home)
    assert len(records) == 20 and len({r["command"] for r in records}) == 4
    for record in records:  # each connection went to the report of the command that opened it
        n = record["path"][1]
        assert record["argv"] == ["bash", "-c", scripts[int(n)]] and record["decision"] == "allow"


# ---- questions on a real pty ------------------------------------------------------------------------------

PS1 = "AGENT$ "
CHOICES = "[o]nce  [s]ession  [a]lways  [d]eny"


def _agent(home: Home, *flags: str) -> pexpect.spawn:
    child = pexpect.spawn(
        SUPERVISOR,
        ["run", "--no-interpose", *flags, "--", "bash", "--norc", "--noprofile", "-i"],
        env={**home.env, "PS1": PS1, "TERM": "dumb"},
        cwd=str(home.work),
        encoding="utf-8",
        timeout=30,
        dimensions=(40, 200),
    )
    child.expect_exact(PS1)
    return child


def _question(child: pexpect.spawn, text: str) -> str:
    child.expect_exact(text)
    seen = child.before + child.after
    child.expect_exact("? ")
    return seen + child.before


def _answer(child: pexpect.spawn, letter: str) -> None:
    time.sleep(GUARD_SECONDS + 0.15)  # after the guard window: a deliberate answer
    child.send(letter + "\r")


def test_a_new_host_is_asked_about_once_session_always_deny(home, upstream):
    home.env[TEST_HOSTS_VAR] = HOSTS
    port = upstream.port
    child = _agent(home, "--allow-domain", "allowed.test")

    def command(host: str, path: str) -> None:
        child.sendline(f"bash -c 'curl -sS --fail http://{host}.test:{port}/{path}; echo rc=$?'")

    command("once", "one")
    seen = _question(child, f"wants to connect once.test:{port} [domain not allowed]")
    assert CHOICES in seen and "curl (pid" in seen  # the program that asked, and the choices
    _answer(child, "o")
    child.expect_exact(f"{BODY} /one")
    child.expect_exact("rc=0")
    command("once", "two")  # "once" was for that command only
    _question(child, f"wants to connect once.test:{port}")
    _answer(child, "s")
    child.expect_exact(f"{BODY} /two")
    command("once", "three")  # the session grant: no question
    assert child.expect_exact([f"wants to connect once.test:{port}", f"{BODY} /three"]) == 1
    command("keep", "four")
    _question(child, f"wants to connect keep.test:{port}")
    _answer(child, "a")
    child.expect_exact(f"{BODY} /four")
    command("nope", "five")
    _question(child, f"wants to connect nope.test:{port}")
    _answer(child, "d")
    child.expect_exact("rc=22")
    child.expect_exact(PS1)
    assert (
        f"nono: denied connect nope.test:{port} [domain not allowed] (denied at the prompt; not asked again"
        " this session); to allow: --allow-domain nope.test" in child.before
    )
    command("nope", "six")  # refused without asking again
    assert child.expect_exact([f"wants to connect nope.test:{port}", "rc=22"]) == 1
    child.sendline("exit 0")
    child.expect(pexpect.EOF)
    child.close()
    assert [p for _h, p in upstream.hits] == ["/one", "/two", "/three", "/four"]
    answers = [(r["path"], r["answer"]) for r in home.audit() if r.get("by") == "user"]
    assert answers == [(f"once.test:{port}", a) for a in ("once", "session")] + [
        (f"keep.test:{port}", "always"),
        (f"nope.test:{port}", "deny"),
    ]

    # "always" is a domain grant in grants.toml: a fresh session reaches keep.test without a question...
    listed = home.run([SUPERVISOR, "grants", "list"])
    assert f"'keep.test:{port}'" in listed.stdout and "host" in listed.stdout
    url = f"http://keep.test:{port}/seven"
    fresh = _exec(home, "curl", "-sS", "--fail", url, flags=("--allow-domain", "allowed.test"))
    assert fresh.stdout == f"{BODY} /seven\n"
    session_only = _exec(home, "curl", "-sS", "--fail", f"http://once.test:{port}/x",
                         flags=("--allow-domain", "allowed.test"))  # fmt: skip
    assert session_only.returncode == 22  # ...while the session answer died with its session
    # ...and is revocable.
    grant_id = listed.stdout.split()[0]
    assert home.run([SUPERVISOR, "grants", "revoke", grant_id]).returncode == 0
    revoked = _exec(home, "curl", "-sS", "--fail", url, flags=("--allow-domain", "allowed.test"))
    assert revoked.returncode == 22 and _denial_line("keep.test", port) in revoked.stderr


def test_exec_on_a_terminal_asks_and_an_unanswered_question_is_not_a_grant(home, upstream):
    home.env[TEST_HOSTS_VAR] = HOSTS
    child = pexpect.spawn(
        SUPERVISOR,
        ["exec", "--allow-domain", "allowed.test", "--", "curl", "-sS", "--fail",
         f"http://other.test:{upstream.port}/x"],
        env={**home.env, "TERM": "dumb"}, cwd=str(home.work), encoding="utf-8", timeout=30,
    )  # fmt: skip
    _question(child, f"wants to connect other.test:{upstream.port}")
    time.sleep(GUARD_SECONDS + 0.15)
    child.send("\r")  # Enter alone: deny
    child.expect(pexpect.EOF)
    child.close()
    assert child.exitstatus == 22 and not upstream.hits


# ---- units: patterns, policy, grants, the filter, Landlock's backstop --------------------------------------


def test_patterns_match_hosts_subdomains_ports_and_the_most_specific_wins():
    allow = [parse_pattern(p, "--allow-domain", "t") for p in ("example.com", "*.github.com", "h.test:8080")]
    deny = [parse_pattern("*.secret.github.com", "--deny-domain", "t")]
    assert decide("example.com", 443, allow, deny).allowed
    assert not decide("www.example.com", 443, allow, deny).allowed  # exact means exact
    assert decide("api.github.com", 443, allow, deny).allowed
    assert not decide("github.com", 443, allow, deny).allowed  # *. is subdomains only
    assert not decide("x.secret.github.com", 443, allow, deny).allowed  # the longer wildcard wins
    assert decide("h.test", 8080, allow, deny).allowed and not decide("h.test", 8081, allow, deny).allowed
    tie = decide("a.b", 1, [parse_pattern("a.b", "x", "t")], [parse_pattern("a.b", "y", "t")])
    assert not tie.allowed and tie.rule == "denied domain a.b"
    assert parse_pattern("Example.COM.", "s", "t").host == "example.com"
    assert parse_pattern("[::1]:80", "s", "t").text() == "[::1]:80"
    assert parse_pattern("bücher.de", "s", "t").host == "xn--bcher-kva.de"
    for bad in ("*", "*.", "a.*.b", "exa mple.com", "h:0", "h:70000", "*.1.2.3.4", "", "-a.com"):
        with pytest.raises(UsageError):
            parse_pattern(bad, "s", "--allow-domain")
    assert split_authority("[::1]:443") == ("::1", 443)
    assert split_authority("host") is None and split_authority("host", 80) == ("host", 80)


def test_every_hint_is_a_flag_that_makes_it_succeed_or_none():
    assert network_hint("api.x.com:443", netpolicy.NOT_ALLOWED) == "; to allow: --allow-domain api.x.com"
    assert network_hint("[::1]:80", netpolicy.DIRECT) == "; to allow: --allow-domain [::1]"
    assert network_hint("a.b:1", "denied domain *.b") == "; to allow: --allow-domain a.b"
    assert network_hint("a.b:1", "denied domain a.b") == ""
    assert network_hint("network (udp)", netpolicy.DOMAINS_ONLY) == "; to allow: --net-mode open"
    assert network_hint("/etc/passwd", "not granted") is None


def _ctx(home: Home) -> Context:
    return Context(
        str(home.work), str(home.home), "/tmp", config_dir=str(home.home / ".config" / "nono-shell")
    )


def test_network_mode_from_profiles_and_flags(home):
    ctx = _ctx(home)
    assert resolve_policy(PolicyOptions(), ctx).net_mode == "open"
    assert resolve_policy(PolicyOptions(net_block=True), ctx).net_mode == "block"
    domains = resolve_policy(PolicyOptions(allow_domains=("pypi.org",)), ctx)
    assert domains.net_mode == "domains" and domains.net_block  # every --net-block layer applies too
    assert [p.text() for p in domains.allow_domains] == ["pypi.org"]
    assert "api.anthropic.com" in [p.host for p in domains.agent_domains]  # the default profile's agent
    assert resolve_policy(PolicyOptions(profile="strict", allow_domains=("a.b",)), ctx).net_mode == "block"
    profile = home.work / "p.toml"
    profile.write_text('[network]\nmode = "domains"\nallow_domains = ["group:pypi", "group:npm"]\n')
    policy = resolve_policy(PolicyOptions(profile=str(profile)), ctx)
    assert policy.net_mode == "domains" and "files.pythonhosted.org" in [p.host for p in policy.allow_domains]
    assert policy.allow_domains[0].source == "group:pypi"
    for text, error in (
        ('[network]\nallow_domain = ["a"]\n', "unknown key 'network.allow_domain'"),
        ('[network]\nmode = "closed"\n', "'network.mode' must be one of open, domains, block"),
        ('[network]\nallow_domains = ["group:nope"]\n', "unknown domain group 'nope'"),
        ('[network]\ndeny_domains = ["a b"]\n', "network.deny_domains"),
        ('[network]\nmode = "open"\nblock = true\n', "'network.block' contradicts 'network.mode'"),
    ):
        profile.write_text(text)
        with pytest.raises(UsageError, match=str(profile)) as caught:
            resolve_policy(PolicyOptions(profile=str(profile)), ctx)
        assert error in str(caught.value)


def test_policy_prints_the_network_and_doctor_checks_the_proxy(home):
    shown = home.run([SUPERVISOR, "policy", "--allow-domain", "pypi.org", "--deny-domain", "*.evil.test"])
    assert "network: domains" in shown.stdout
    assert "allow-domain   pypi.org  [--allow-domain]" in shown.stdout
    assert "deny-domain    *.evil.test  [--deny-domain]" in shown.stdout
    assert "agent only     api.anthropic.com  [group:agent_apis]" in shown.stdout
    as_json = json.loads(home.run([SUPERVISOR, "policy", "--format", "json", "--allow-domain", "a.b"]).stdout)
    assert as_json["net_mode"] == "domains" and as_json["allow_domains"][0]["host"] == "a.b"
    assert "network: allowed" in home.run([SUPERVISOR, "policy"]).stdout  # the twin: open by default
    bad = home.run([SUPERVISOR, "policy", "--allow-domain", "a b"])
    assert bad.returncode == 2 and "--allow-domain" in bad.stderr
    doctor = home.run([SUPERVISOR, "doctor"])
    assert "[ok  ] network proxy (domains mode): can listen on 127.0.0.1" in doctor.stdout


def test_domain_grants_are_stored_listed_and_never_reach_a_filesystem_ruleset(home):
    store = GrantStore(home.home / ".config" / "nono-shell" / "grants.toml")
    grant = store.add("API.Example.com:443", "connect", DOMAIN, command="curl")
    store.add(str(home.work), "read", "dir")
    loaded = store.load()
    assert grant.path == "api.example.com:443" and [g.kind for g in loaded] == [DOMAIN, "dir"]
    assert [p.text() for p in to_domain_patterns(loaded)] == ["api.example.com:443"]
    assert [g.path for g in to_policy_grants(loaded)] == [str(home.work)]
    for path, access in (("not a host", "connect"), ("a.b", "read")):
        with pytest.raises(UsageError):
            store.add(path, access, DOMAIN)
    assert store.revoke(grant.id) and [g.kind for g in store.load()] == ["dir"]


def test_the_filter_traps_the_same_sockets_in_domains_mode_as_under_net_block():
    from nono_supervisor.linux import seccomp

    assert seccomp.build_program("domains") == seccomp.build_program("block") == seccomp.build_program(True)
    assert seccomp.build_program("open") == seccomp.build_program(False) != seccomp.build_program("block")
    with pytest.raises(ValueError):
        seccomp.build_program("sometimes")


LANDLOCK_ONLY = r"""
import socket, sys
for port in sys.argv[1:]:
    s = socket.socket()
    try:
        s.connect(("127.0.0.1", int(port)))
        print("ok", end=" ")
    except OSError as e:
        print(e.errno, end=" ")
"""


def test_landlock_lets_tcp_connect_reach_only_the_proxy_port(home):
    """The kernel's backstop, with no seccomp layer at all: connect() to the proxy's port works, any other
    port is EACCES from Landlock itself."""
    from nono_supervisor.linux import landlock, sandbox
    from nono_supervisor.linux.kernel import probe
    from nono_supervisor.session import Session

    abi = probe().landlock_abi
    if abi < 4:
        pytest.skip(f"Landlock ABI {abi} has no TCP rules")
    proxy, other = (socket.create_server(("127.0.0.1", 0)) for _ in range(2))
    ports = [s.getsockname()[1] for s in (proxy, other)]
    session = Session.create(
        PolicyOptions(allow_domains=("allowed.test",)), env=home.env, workdir=str(home.work)
    )

    def connects(connect_ports: list[int]) -> list[str]:
        plan = landlock.compile_plan(
            session.state.policy, abi, session.state.route_grants(), connect_ports=connect_ports
        )
        want = [{"port": p, "rights": ["connect_tcp"]} for p in sorted(connect_ports)]
        assert plan.to_json()["net_rules"] == want
        read, write = os.pipe()
        argv = [sys.executable, "-c", LANDLOCK_ONLY, *map(str, ports)]
        process = sandbox.start(plan, sandbox.Launch.build(sys.executable, argv, home.env, str(home.work),
                                                           (0, write, 2)))  # fmt: skip
        os.close(write)
        with os.fdopen(read) as out:
            seen = out.read().split()
        process.wait()
        return seen

    try:
        assert connects([ports[0]]) == ["ok", str(errno.EACCES)]
        assert connects(ports) == ["ok", "ok"]  # the twin: the other port allowed too
    finally:
        session.close()
        proxy.close()
        other.close()


# ---- the proxy itself, in this process -----------------------------------------------------------------


@pytest.fixture
def proxy(home):
    fake = types.SimpleNamespace(env=home.env, audit=AuditLog(home.audit_log, "test"))
    running = NetProxy(fake).start()
    yield running
    running.close()


def _proxied(proxy: NetProxy, request: bytes, client: NetClient | None) -> bytes:
    with socket.create_connection(proxy.address, timeout=10) as s:
        if client is not None:
            proxy.register(s.getsockname(), client, 0)
        s.sendall(request)
        chunks = []
        while chunk := s.recv(65536):
            chunks.append(chunk)
        return b"".join(chunks)


def test_an_allowed_name_resolving_to_a_local_address_is_refused(home, upstream):
    """DNS rebinding: a name allowed by the policy that resolves to loopback reaches it only if the address
    itself is allowed."""
    fake = types.SimpleNamespace(env=home.env, audit=AuditLog(home.audit_log, "test"))
    running = NetProxy(fake, resolve=lambda _host, _port: ["127.0.0.1"]).start()
    request = f"GET http://rebind.example:{upstream.port}/r HTTP/1.1\r\n\r\n".encode()
    try:
        for allowed, status in ((("rebind.example",), b"403"), (("rebind.example", "127.0.0.1"), b"200")):
            policy = resolve_policy(PolicyOptions(allow_domains=allowed), _ctx(home))
            answer = _proxied(running, request, NetClient(running, policy, "c", "t", lambda *_: None))
            assert answer.split(b" ")[1] == status, answer
            if status == b"403":
                assert (
                    b"[resolves to a local address 127.0.0.1]; to allow: --allow-domain 127.0.0.1" in answer
                )
    finally:
        running.close()
    assert [path for _host, path in upstream.hits] == ["/r"]


def test_a_connection_nobody_registered_is_refused(home, proxy, upstream):
    policy = resolve_policy(PolicyOptions(allow_domains=("127.0.0.1",)), _ctx(home))
    request = f"GET http://127.0.0.1:{upstream.port}/p HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    refused = _proxied(proxy, request, None)
    assert refused.startswith(b"HTTP/1.1 403") and b"not a sandboxed command's connection" in refused
    records: list = []
    client = NetClient(
        proxy, policy, "c1", "curl", lambda decision, what: records.append((decision, what.path))
    )
    twin = _proxied(proxy, request, client)
    assert twin.startswith(b"HTTP/1.0 200") and twin.endswith(f"{BODY} /p\n".encode())
    assert records == [("allow", f"127.0.0.1:{upstream.port}")]


def test_a_connection_refused_over_the_per_command_cap_frees_no_place(home, proxy, upstream, monkeypatch):
    """The cap on one command's connections through the proxy (MAX_PER_CLIENT, here 1): a connection
    refused over it must not count one down that it never counted up, or each refusal would let one more
    through later (it did: the refusal's cleanup ran as an admitted connection's). Twin: once the held one
    closes, the next is served."""
    from nono_supervisor import netproxy

    monkeypatch.setattr(netproxy, "MAX_PER_CLIENT", 1)
    policy = resolve_policy(PolicyOptions(allow_domains=("127.0.0.1",)), _ctx(home))
    client = NetClient(proxy, policy, "c1", "curl", lambda *_: None)
    request = f"GET http://127.0.0.1:{upstream.port}/p HTTP/1.1\r\nHost: x\r\n\r\n".encode()
    held = socket.create_connection(proxy.address, timeout=10)
    try:
        proxy.register(held.getsockname(), client, 0)
        assert wait_until(lambda: client._open == 1)  # admitted: it waits for its request's first byte
        for _ in range(2):
            try:  # over the cap: closed unserved (a reset: the request was not read)
                assert _proxied(proxy, request, client) == b""
            except ConnectionResetError:
                pass
            assert client._open == 1
    finally:
        held.close()
    assert wait_until(lambda: client._open == 0)
    twin = _proxied(proxy, request, client)
    assert twin.startswith(b"HTTP/1.0 200"), twin


def test_proxy_environment_has_both_cases():
    env = proxy_environment("127.0.0.1", 4242)
    assert env["HTTP_PROXY"] == env["http_proxy"] == "http://127.0.0.1:4242"
    assert env["ALL_PROXY"] == "socks5h://127.0.0.1:4242"
