#!/usr/bin/env python3
"""Cost of the terminal rule (DESIGN.md invariant 11) on a pty-heavy loop, against bare in the same run.

Inside one command, microseconds per round of:
1. ``openpty`` + close of both ends (glibc: /dev/ptmx, then TIOCGPTPEER, trapped and opened by the
   supervisor through the caller's master);
2. ``posix_openpt``, ``grantpt``, ``unlockpt``, ``ptsname``, ``open`` of the node by name + close (Go's
   creack/pty, expect, APUE's pty_fork: the supervisor finds the caller's master and opens through it).
Times are taken inside the command (supervisor start-up excluded); medians over the rounds.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

SUPERVISOR = str(Path(sys.executable).with_name("nono-supervisor"))
LOOP = r"""
import ctypes, os, sys, time
libc = ctypes.CDLL(None, use_errno=True)
libc.ptsname.restype = ctypes.c_char_p
n = int(sys.argv[1])
start = time.perf_counter()
for _ in range(n):
    master, slave = os.openpty()
    os.close(slave)
    os.close(master)
peer = (time.perf_counter() - start) / n * 1e6
start = time.perf_counter()
for _ in range(n):
    master = libc.posix_openpt(os.O_RDWR | os.O_NOCTTY)
    libc.grantpt(master)
    libc.unlockpt(master)
    os.close(os.open(libc.ptsname(master), os.O_RDWR | os.O_NOCTTY))
    os.close(master)
name = (time.perf_counter() - start) / n * 1e6
print(f"{peer:.1f} {name:.1f}")
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--count", type=int, default=1000, help="ptys per loop")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="nono-bench-ptys-") as work:
        results: dict[str, list[tuple[float, float]]] = {"bare": [], "sandboxed": []}
        for _ in range(args.rounds):
            for mode in results:
                argv = [sys.executable, "-c", LOOP, str(args.count)]
                if mode == "sandboxed":
                    argv = [SUPERVISOR, "exec", "--prompt", "never", "--", *argv]
                out = subprocess.run(argv, cwd=work, capture_output=True, text=True, check=True).stdout
                peer, name = (float(x) for x in out.split())
                results[mode].append((peer, name))
    print(f"us per pty, median of {args.rounds} rounds of {args.count}")
    print(f"{'':12} {'openpty':>10} {'by name':>10}")
    for mode, rows in results.items():
        peer = statistics.median(r[0] for r in rows)
        name = statistics.median(r[1] for r in rows)
        print(f"{mode:12} {peer:10.0f} {name:10.0f}")


if __name__ == "__main__":
    main()
