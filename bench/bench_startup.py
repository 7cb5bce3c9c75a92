#!/usr/bin/env python3
"""Added latency of `nono-shell -c true` over `bash -c true`, all measured in this run.

Starts a throwaway supervisor (`nono-supervisor serve`) on a private socket, writes the shims, then times
N runs of each, interleaved so that machine noise hits all alike: the shim `bash` (what an agent runs), the
`nono-shell` on PATH (setup.py installs the C client there), and the Python client that is installed there
where no C client was built (scripts/nono-shell). Prints medians and the differences.
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

SCRIPT = Path(__file__).resolve().parent.parent / "scripts" / "nono-shell"


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
        python_client = Path(top, "nono-shell")  # as pip installs scripts/nono-shell: #!python rewritten
        python_client.write_text(SCRIPT.read_text().replace("#!python", f"#!{sys.executable}", 1))
        python_client.chmod(0o755)
        server = subprocess.Popen(
            [supervisor, "serve", "--socket", socket_path], env=env, stderr=subprocess.PIPE
        )
        rows = {
            "bash -c true": ["bash"],
            "shim bash -c true": [str(Path(top, "shims", "bash"))],
            "nono-shell on PATH": [str(Path(sys.executable).with_name("nono-shell"))],
            "Python client": [str(python_client)],
        }
        times: dict[str, list[float]] = {name: [] for name in rows}
        try:
            while not socket_path.exists():
                time.sleep(0.01)
            env["NONO_SOCKET"] = str(socket_path)
            for _ in range(args.n):
                for name, argv in rows.items():
                    times[name].append(_timed([*argv, "-c", "true"], env))
        finally:
            server.terminate()
            server.wait()
    bare = statistics.median(times["bash -c true"]) * 1000
    for name, runs in times.items():
        median = statistics.median(runs) * 1000
        added = "" if name == "bash -c true" else f"  added {median - bare:+7.2f} ms ({median / bare:.1f}x)"
        print(f"{name:20s} median {median:7.2f} ms{added}")
    print("budget: +25 ms, aim +10 ms")


if __name__ == "__main__":
    main()
