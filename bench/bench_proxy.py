#!/usr/bin/env python3
"""Added latency of one HTTPS-like request through the supervisor's proxy (domains mode) against a direct one.

One request = a new TCP connection, a 64-byte request, its echo, close. Through the proxy it is a CONNECT
tunnel (`CONNECT echo.test:PORT`, the proxy resolving the name, then the same exchange inside the tunnel);
direct, a connect to the echo server's address (allowed with `--allow-domain 127.0.0.1`). Both run inside
the same sandboxed command (`nono-supervisor exec`), interleaved, so every connect of both goes through the
notify layer alike and the difference is the proxy's. With `--tls` (needs openssl) the exchange inside is
TLS with certificate verification, as HTTPS would be. A bare run of the direct request (no sandbox) is
printed for reference. Everything stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

CLIENT = r"""
import json, os, socket, ssl, sys, time
from urllib.parse import urlsplit
port, count, tls, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3] == "tls", sys.argv[4]
context = None
if tls:
    context = ssl.create_default_context(cafile="cert.pem")
request = b"x" * 64

def exchange(sock):
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    if context is not None:
        sock = context.wrap_socket(sock, server_hostname="echo.test")
    sock.sendall(request)
    got = b""
    while len(got) < len(request):
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("echo closed early")
        got += chunk
    sock.close()

def direct():
    exchange(socket.create_connection(("127.0.0.1", port)))

def proxied():
    proxy = urlsplit(os.environ["HTTPS_PROXY"])
    sock = socket.create_connection((proxy.hostname, proxy.port))
    sock.sendall(f"CONNECT echo.test:{port} HTTP/1.1\r\nHost: echo.test:{port}\r\n\r\n".encode())
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = sock.recv(4096)
        if not chunk:
            raise RuntimeError("proxy closed: " + head.decode(errors="replace"))
        head += chunk
    if not head.startswith(b"HTTP/1.1 200"):
        raise RuntimeError(head.decode(errors="replace"))
    exchange(sock)

ways = {"direct": direct, "proxied": proxied}
names = ["direct"] if mode == "bare" else ["direct", "proxied"]
times = {name: [] for name in names}
for name in names:  # warm up: first connections, imports, the proxy's first resolution
    ways[name]()
for i in range(count):
    for name in (names if i % 2 == 0 else names[::-1]):  # interleaved, alternating order
        start = time.perf_counter()
        ways[name]()
        times[name].append(time.perf_counter() - start)
print(json.dumps(times))
"""


class _Echo:
    """A TCP (or TLS) echo server on 127.0.0.1."""

    def __init__(self, tls: ssl.SSLContext | None) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0), backlog=128)
        self.port = self.listener.getsockname()[1]
        self.tls = tls
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            threading.Thread(target=self._echo, args=(conn,), daemon=True).start()

    def _echo(self, conn: socket.socket) -> None:
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            if self.tls is not None:
                conn = self.tls.wrap_socket(conn, server_side=True)
            while data := conn.recv(4096):
                conn.sendall(data)
        except OSError:
            pass
        finally:
            conn.close()


def _certificate(where: Path) -> ssl.SSLContext:
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=echo.test",
         "-addext", "subjectAltName=DNS:echo.test", "-keyout", str(where / "key.pem"),
         "-out", str(where / "cert.pem")],
        check=True, capture_output=True,
    )  # fmt: skip
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(where / "cert.pem", where / "key.pem")
    return context


def _ms(values: list[float]) -> str:
    quartiles = statistics.quantiles(values, n=4)
    median = statistics.median(values) * 1000
    return f"median {median:7.3f} ms  (p25 {quartiles[0] * 1000:.3f}, p75 {quartiles[2] * 1000:.3f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=500, help="requests of each kind (default 500)")
    parser.add_argument("--tls", action="store_true", help="TLS inside the connection (needs openssl)")
    args = parser.parse_args()
    supervisor = Path(sys.executable).with_name("nono-supervisor")
    with tempfile.TemporaryDirectory() as top:
        work = Path(top)
        tls = None
        if args.tls:
            if shutil.which("openssl") is None:
                sys.exit("bench_proxy: --tls needs openssl")
            tls = _certificate(work)
        echo = _Echo(tls)
        (work / "client.py").write_text(CLIENT)
        env = dict(
            os.environ,
            HOME=str(work),
            XDG_STATE_HOME=str(work / "state"),
            XDG_CONFIG_HOME=str(work / "config"),
            NONO_NETPROXY_HOSTS="echo.test=127.0.0.1",
        )
        client = [sys.executable, "client.py", str(echo.port), str(args.n), "tls" if tls else "plain"]
        sandboxed = subprocess.run(
            [supervisor, "exec", "--prompt", "never", "--allow-domain", "echo.test", "--allow-domain",
             "127.0.0.1", "--", *client, "sandboxed"],
            cwd=work, env=env, capture_output=True, text=True, check=True, stdin=subprocess.DEVNULL,
        )  # fmt: skip
        bare = subprocess.run([*client, "bare"], cwd=work, env=env, capture_output=True, text=True)
    inside, outside = json.loads(sandboxed.stdout), json.loads(bare.stdout)
    direct, proxied, plain = inside["direct"], inside["proxied"], outside["direct"]
    kind = "TLS" if tls else "plain TCP"
    print(f"{args.n} requests of each kind, {kind} echo on 127.0.0.1, interleaved in one sandboxed command")
    print(f"bare direct          {_ms(plain)}")
    print(f"sandboxed direct     {_ms(direct)}")
    print(f"sandboxed via proxy  {_ms(proxied)}")
    d, p, b = (statistics.median(v) for v in (direct, proxied, plain))
    print(f"proxy added          median {(p - d) * 1000:7.3f} ms per request  (ratio {p / d:.2f}x direct)")
    print(f"sandbox's connect    median {(d - b) * 1000:7.3f} ms per request  (ratio {d / b:.2f}x bare)")


if __name__ == "__main__":
    main()
