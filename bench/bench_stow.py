#!/usr/bin/env python3
"""What carving a link on the way to a denied node costs (README, "Runs later": what it costs).

A stow-style home: ``~/stow/tok`` is a link into the project, denied by name (``--deny ~/stow/tok``). Its
directory ``~/stow`` then keeps no Landlock right over names (``landlock._links_on_the_way``): a file made,
renamed or removed directly in it goes through the supervisor. The same command, in the same tree, runs
``carved`` (with the deny), ``uncarved`` (without it: Landlock alone decides there, as before the fix) and
bare. The command times its own loop (interpreter start and the route's set-up excluded): per round, N
times create+close, rename, unlink of a file, and mkdir+rmdir of a directory, directly in ``~/stow``; and
the same in ``~/stow/sub`` (below the carve: untouched). Median microseconds per operation over rounds.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

LOOP = """
import os, sys, time
where, n = sys.argv[1], int(sys.argv[2])
os.chdir(where)
start = time.perf_counter()
for i in range(n):
    os.close(os.open(f"f{i}", os.O_CREAT | os.O_WRONLY, 0o644))
    os.rename(f"f{i}", f"g{i}")
    os.unlink(f"g{i}")
    os.mkdir(f"d{i}")
    os.rmdir(f"d{i}")
print((time.perf_counter() - start) / (5 * n) * 1e6)
"""


def _home(top: Path) -> tuple[Path, dict[str, str]]:
    home = top / "home"
    vault = home / "project" / "vault"
    vault.mkdir(parents=True)
    (vault / "token").write_text("nono-bench-token\n")
    (home / "stow" / "sub").mkdir(parents=True)
    (home / "stow" / "tok").symlink_to(vault)
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    env["XDG_STATE_HOME"] = str(home / ".local" / "state")
    env["XDG_CONFIG_HOME"] = str(home / ".config")
    return home, env


def _run(argv: list[str], env: dict[str, str], cwd: Path) -> float:
    done = subprocess.run(argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=600, check=False)
    if done.returncode != 0:
        raise SystemExit(f"bench_stow: {argv[:6]} failed: {done.stderr.strip()}")
    return float(done.stdout.split()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("-n", type=int, default=400, help="iterations per round (5 operations each)")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    supervisor = shutil.which("nono-supervisor") or str(Path(sys.executable).parent / "nono-supervisor")
    top = Path(tempfile.mkdtemp(prefix="nono-bench-stow-"))
    try:
        home, env = _home(top)
        base = [supervisor, "exec", "--allow", str(home)]
        variants = {
            "carved": [*base, "--deny", str(home / "stow" / "tok"), "--"],
            "uncarved": [*base, "--"],
            "bare": [],
        }
        times: dict[tuple[str, str], list[float]] = {}
        for _ in range(args.rounds):
            for where in ("stow", "stow/sub"):
                for name, prefix in variants.items():  # interleaved: load on a shared machine hits all
                    argv = [*prefix, sys.executable, "-c", LOOP, str(home / where), str(args.n)]
                    times.setdefault((where, name), []).append(_run(argv, env, home / "project"))
        print(f"µs per operation (create, rename, unlink, mkdir, rmdir), median of {args.rounds} x {args.n}")
        for where in ("stow", "stow/sub"):
            row = "  ".join(f"{name} {statistics.median(times[(where, name)]):7.1f}" for name in variants)
            print(f"~/{where:9} {row}")
    finally:
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
