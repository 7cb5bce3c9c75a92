#!/usr/bin/env python3
"""A deny holds for the session (README): the window and the supervisor's cost of noticing a move.

1. the window: a command reads ``x/token`` in a loop; the human links ``~/.cache/huggingface`` to ``./x``
   and writes the token through it at once. Measured: the time from the link to the command's death (its
   exit, seen by the supervisor), and how many of the command's reads got the token meanwhile.
2. the supervisor's time for an evaluation (``LateDenies.evaluate``: resolve again and check every
   running sandbox) of every denied path (a lost event) and of the one an event names, with 1 and with
   50 commands running, in the supervisor's process.
The default profile (79 denies) on a fake HOME; commands are started in this process through the platform
seam (``backend.start``), as the supervisor starts them.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from nono_supervisor import backend
from nono_supervisor.backend import Hooks, Launch
from nono_supervisor.policy.profile import PolicyOptions
from nono_supervisor.session import Session

READER = "while :; do cat x/token 2>/dev/null && echo hit; done"


def _start(session: Session, argv: list[str], env: dict[str, str], work: Path, stdio: tuple[int, int, int]):
    """``argv`` as the server starts a command: its opens and execve left to Landlock."""
    launch = Launch(argv[0], argv, env, str(work), stdio, leave_to_kernel=True)
    return backend.start(session, launch, Hooks())


def _home(top: Path) -> tuple[dict[str, str], Path]:
    home = top / "home"
    work = home / "project"
    (work / "x").mkdir(parents=True)
    (home / ".cache").mkdir()
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "LANG": "C.UTF-8"}
    env["XDG_STATE_HOME"] = str(home / ".local" / "state")
    return env, work


def _window(session: Session, env: dict[str, str], work: Path) -> tuple[float, int]:
    link, token = Path(env["HOME"]) / ".cache" / "huggingface", work / "x" / "token"
    read_end, write_end = os.pipe()
    process = _start(session, ["/bin/bash", "-c", READER], env, work, (0, write_end, 2))
    os.close(write_end)
    time.sleep(0.2)  # the loop is running
    start = time.monotonic()
    link.symlink_to(work / "x")
    token.write_text("hf_token\n")
    process.wait()
    took = time.monotonic() - start
    out = b""
    while chunk := os.read(read_end, 65536):
        out += chunk
    os.close(read_end)
    token.unlink()
    link.unlink()
    return took, out.count(b"hit")


def _evaluation(
    session: Session, env: dict[str, str], work: Path, running: int, rounds: int, changed: set[str] | None
) -> float:
    processes = [_start(session, ["/bin/sleep", "60"], env, work, (0, 1, 2)) for _ in range(running)]
    watch = session.services.late_denies()
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        watch.evaluate(changed)
        times.append(time.perf_counter() - start)
    for process in processes:
        process.kill_tree()
        process.wait()
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    top = Path(tempfile.mkdtemp(prefix="nono-bench-latedeny-"))
    try:
        env, work = _home(top)
        session = Session.create(PolicyOptions(), env=env, workdir=str(work))
        try:
            windows = [_window(session, env, work) for _ in range(args.rounds)]
            took = sorted(w[0] * 1000 for w in windows)
            hits = [w[1] for w in windows]
            median = statistics.median(took)
            print(f"move -> command stopped: median {median:.1f} ms [{took[0]:.1f}-{took[-1]:.1f}]")
            print(f"reads of the token before the stop: {sum(hits)} in {len(hits)} rounds (max {max(hits)})")
            token = os.path.join(env["HOME"], ".cache", "huggingface", "token")
            for running in (1, 50):
                for what, changed in (("every denied path", None), ("one denied path", {token})):
                    cost = _evaluation(session, env, work, running, args.rounds, changed) * 1000
                    print(f"evaluation of {what}, {running} commands running: {cost:.2f} ms")
        finally:
            session.close()
    finally:
        shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    main()
