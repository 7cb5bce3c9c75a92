#!/usr/bin/env python3
"""Cost of the seccomp notify layer, against the bare command measured in the same run.

1. added microseconds per trapped open (a C loop timing 20,000 open+close pairs of a workdir directory:
   O_DIRECTORY, which a command's filter still traps);
2. the 20,000-open workload: `cat` of 2,000 files, ten times;
3. `python3 -c pass` (this interpreter, by absolute path: a PATH lookup could differ inside).
Each sandboxed figure is taken with SYNC_WAKE_UP (the default) and without (NONO_SYNC_WAKEUP=0), and
with --no-trap (Landlock only). Times are measured inside the command, so supervisor start-up is excluded.
Budgets (issue 3): <= 25 us per trapped open (median), workload <= 3x bare.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
SUPERVISOR = str(Path(sys.executable).with_name("nono-supervisor"))
TIMED = "s=$(date +%s%N); {cmd}; e=$(date +%s%N); echo $(( (e - s) / 1000 ))"
MODES = {
    "bare": ([], {}),
    "landlock only (--no-trap)": (["--no-trap"], {}),
    "seccomp, SYNC_WAKE_UP": ([], {}),
    "seccomp, no SYNC_WAKE_UP": ([], {"NONO_SYNC_WAKEUP": "0"}),
}


def _run(mode: str, argv: list[str], cwd: Path) -> str:
    flags, extra = MODES[mode]
    env = {**os.environ, **extra}
    if mode != "bare":
        argv = [SUPERVISOR, "exec", *flags, "--", *argv]
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, check=True).stdout.strip()


def _median(mode: str, argv: list[str], cwd: Path, runs: int) -> float:
    return statistics.median(float(_run(mode, argv, cwd)) for _ in range(runs))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as top:
        work = Path(top)
        loop = work / "open_loop"
        subprocess.run(["cc", "-O2", "-o", loop, HERE.parent / "tests" / "c" / "open_loop.c"], check=True)
        (work / "target").mkdir()
        files = work / "files"
        files.mkdir()
        for i in range(2000):
            (files / f"f{i}").write_text("data\n")
        workloads = {
            "per open (ns)": [str(loop), str(work / "target"), "20000"],
            "cat 2,000 files x10 (us)": [
                "bash",
                "-c",
                TIMED.format(cmd="for i in 1 2 3 4 5 6 7 8 9 10; do cat files/* >/dev/null; done"),
            ],
            "python3 -c pass (us)": ["bash", "-c", TIMED.format(cmd=f"{sys.executable} -c pass")],
        }
        print(f"{'workload':28} " + " ".join(f"{m:>28}" for m in MODES))
        for name, argv in workloads.items():
            values = {mode: _median(mode, argv, work, args.runs) for mode in MODES}
            bare = values["bare"]
            cells = [f"{values[m]:>14.0f} ({values[m] / bare:4.1f}x)" for m in MODES]
            print(f"{name:28} " + " ".join(f"{c:>28}" for c in cells))
            if name.startswith("per open"):
                for mode in list(MODES)[2:]:
                    print(f"  added per trapped open, {mode}: {(values[mode] - bare) / 1000:.1f} us")


if __name__ == "__main__":
    main()
