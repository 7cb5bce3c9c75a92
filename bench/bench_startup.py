#!/usr/bin/env python3
"""Added latency of `nono-shell -c true` over `bash -c true`, both measured in this run.

Starts a throwaway supervisor (`nono-supervisor serve`) on a private socket, writes the shims, then times
N runs of each, interleaved so that machine noise hits both alike. Prints medians and the difference.
Budget (DESIGN.md): within 25 ms of bash (median), aiming for 10 ms.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path


def _timed(argv: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=200, help="runs of each (default 200)")
    args = parser.parse_args()
    supervisor = Path(sys.executable).with_name("nono-supervisor")
    with tempfile.TemporaryDirectory() as top:
        run_dir = Path(top, "run")
        run_dir.mkdir(mode=0o700)
        socket_path = run_dir / "socket"
        env = dict(os.environ, XDG_STATE_HOME=str(Path(top, "state")))
        subprocess.run([supervisor, "shims", Path(top, "shims")], check=True, capture_output=True, env=env)
        server = subprocess.Popen(
            [supervisor, "serve", "--socket", socket_path], env=env, stderr=subprocess.PIPE
        )
        try:
            while not socket_path.exists():
                time.sleep(0.01)
            env["NONO_SOCKET"] = str(socket_path)
            shim = str(Path(top, "shims", "bash"))
            bare, nono = [], []
            for _ in range(args.n):
                bare.append(_timed(["bash", "-c", "true"], env))
                nono.append(_timed([shim, "-c", "true"], env))
        finally:
            server.terminate()
            server.wait()
    b, n = statistics.median(bare) * 1000, statistics.median(nono) * 1000
    print(f"bash -c true        median {b:7.2f} ms")
    print(f"nono-shell -c true  median {n:7.2f} ms")
    print(f"added               median {n - b:7.2f} ms  (ratio {n / b:.1f}x; budget +25 ms, aim +10 ms)")


if __name__ == "__main__":
    main()
