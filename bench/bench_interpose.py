#!/usr/bin/env python3
"""Cost of the exec-interposition library on a spawn that it does not route: /bin/true, with and without.

Two driver processes time N spawns each (posix_spawn + waitpid of /bin/true, one at a time): one bare,
one with the library in LD_PRELOAD and NONO_SHIM_DIR set, so both the hook in the driver (classify,
env check) and the library's load into the child (ld.so, constructor) are paid. They run in alternating
rounds within this one run, so machine noise hits both alike. Prints medians and the ratio.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from nono_supervisor.interpose import PRELOAD_VAR, library_path

# Runs in the driver process: ROUNDS of `count` timed spawns, printed as JSON nanoseconds.
_DRIVER = """
import json, os, sys, time
count = int(sys.argv[1])
argv, env, times = ["/bin/true"], dict(os.environ), []
for _ in range(count):
    start = time.perf_counter_ns()
    pid = os.posix_spawn("/bin/true", argv, env)
    os.waitpid(pid, 0)
    times.append(time.perf_counter_ns() - start)
print(json.dumps(times))
"""


def _round(count: int, env: dict[str, str]) -> list[int]:
    out = subprocess.run(
        [sys.executable, "-c", _DRIVER, str(count)], env=env, check=True, capture_output=True, text=True
    ).stdout
    return json.loads(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=1000, help="spawns of each (default 1000)")
    parser.add_argument("--rounds", type=int, default=10, help="alternating rounds (default 10)")
    args = parser.parse_args()
    lib = library_path()
    if lib is None:
        sys.exit("bench_interpose: the library is not built: pip install -e .")

    with tempfile.TemporaryDirectory(prefix="nono-bench-") as shims:
        bare = {k: v for k, v in os.environ.items() if k != PRELOAD_VAR and not k.startswith("NONO_")}
        preloaded = dict(bare, NONO_SHIM_DIR=shims, NONO_SOCKET=str(Path(shims, "sock")))
        preloaded[PRELOAD_VAR] = str(lib)
        per_round = max(1, args.n // args.rounds)
        times: dict[str, list[int]] = {"bare": [], "interposed": []}
        for _ in range(args.rounds):
            times["bare"] += _round(per_round, bare)
            times["interposed"] += _round(per_round, preloaded)

    medians = {name: statistics.median(ns) / 1000 for name, ns in times.items()}
    print(f"library: {lib}")
    for name, ns in times.items():
        p10, p90 = (q / 1000 for q in statistics.quantiles(ns, n=10)[::8])
        print(f"{name:>11}: n={len(ns)}  median {medians[name]:7.1f} us  p10 {p10:7.1f}  p90 {p90:7.1f}")
    print(
        f"      ratio: {medians['interposed'] / medians['bare']:.3f}x "
        f"(+{medians['interposed'] - medians['bare']:.1f} us per spawn)"
    )


if __name__ == "__main__":
    main()
