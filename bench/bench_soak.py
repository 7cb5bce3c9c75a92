#!/usr/bin/env python3
"""Many commands through one supervisor: none lost or crossed, and the supervisor's memory stays flat.

Runs N `nono-shell -c 'echo I; exit I%7'` commands, CONCURRENCY at a time, through one `serve`, checks each
output and status, and prints the supervisor's RSS and open-fd count after each tenth of the run.
DESIGN.md: 50 concurrent commands with no lost or crossed answers; memory flat over 10,000 commands.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path


def _rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=10000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    supervisor = Path(sys.executable).with_name("nono-supervisor")
    with tempfile.TemporaryDirectory() as top:
        run_dir = Path(top, "run")
        run_dir.mkdir(mode=0o700)
        sock, shims = run_dir / "socket", Path(top, "shims")
        env = dict(os.environ, XDG_STATE_HOME=str(Path(top, "state")))
        server = subprocess.Popen(
            [supervisor, "serve", "--socket", sock, "--shims", shims], env=env, stderr=subprocess.DEVNULL
        )
        while not sock.exists():
            time.sleep(0.01)
        env["NONO_SOCKET"] = str(sock)
        bad = []

        def one(i: int) -> None:
            r = subprocess.run(
                [shims / "bash", "-c", f"echo {i}; exit {i % 7}"], env=env, capture_output=True, text=True
            )
            if r.stdout != f"{i}\n" or r.returncode != i % 7:
                bad.append((i, r.returncode, r.stdout, r.stderr))

        start = time.monotonic()
        step = max(1, args.n // 10)
        try:
            with ThreadPoolExecutor(args.concurrency) as pool:
                for begin in range(0, args.n, step):
                    list(pool.map(one, range(begin, min(args.n, begin + step))))
                    fds = len(os.listdir(f"/proc/{server.pid}/fd"))
                    done, rss = min(args.n, begin + step), _rss_kib(server.pid)
                    print(
                        f"after {done:6} commands: supervisor RSS {rss:7} KiB, {fds} fds,"
                        f" {time.monotonic() - start:6.1f} s",
                        flush=True,
                    )
        finally:
            server.terminate()
            server.wait()
    print(f"{len(bad)} lost or crossed answers" + (f": first {bad[0]}" if bad else ""))


if __name__ == "__main__":
    main()
