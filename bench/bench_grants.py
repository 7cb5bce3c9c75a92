#!/usr/bin/env python3
"""What a grant store of N grants costs a session: its start, the reload after a change, the Landlock plan.

Writes a grants.toml of N read grants into a fresh temp home, creates a Session on it (the start), changes
the file and asks for the policy again (the reload the next command pays), and compiles the Landlock plan
of that policy. A store over grants.MAX_STORE_BYTES is refused at the start, and says so. Issue 23, finding
7: 200,000 grants (50 MB) took 48.6 s and 302 MB to start before the cap.
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path


def _store(home: Path, n: int) -> str:
    entries = [
        f'\n[[grant]]\nid = "{i:08x}"\npath = "{home}/p/dir{i}/file.txt"\naccess = "read"\nkind = "file"\n'
        f'created = "2026-01-01T00:00:00Z"\ncommand = "cat {home}/p/dir{i}/file.txt"\n'
        for i in range(n)
    ]
    return "# bench\n" + "".join(entries)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("counts", nargs="*", type=int, default=[100, 1000, 1300, 5000])
    args = parser.parse_args()
    from nono_supervisor.errors import UsageError
    from nono_supervisor.linux.kernel import probe
    from nono_supervisor.linux.landlock import compile_plan
    from nono_supervisor.policy.grants import MAX_STORE_BYTES
    from nono_supervisor.policy.profile import PolicyOptions
    from nono_supervisor.session import Session

    abi = max(probe().landlock_abi, 1)
    print(f"cap: {MAX_STORE_BYTES} bytes")
    for n in args.counts:
        top = Path(tempfile.mkdtemp(prefix="nono-bench-grants-"))
        try:
            home = top / "home"
            (home / "p").mkdir(parents=True)
            store = home / ".config" / "nono-shell" / "grants.toml"
            store.parent.mkdir(parents=True)
            text = _store(home, n)
            store.write_text(text)
            store.chmod(0o600)
            env = {"HOME": str(home), "XDG_CONFIG_HOME": str(home / ".config"), "PATH": os.environ["PATH"]}
            env["XDG_STATE_HOME"] = str(home / ".state")
            began = time.perf_counter()
            try:
                session = Session.create(PolicyOptions(), env=env, workdir=str(home / "p"))
            except UsageError as e:
                took = time.perf_counter() - began
                print(f"{n:7} grants {len(text):9} bytes: refused in {took * 1000:.1f} ms: {e}")
                continue
            start = time.perf_counter() - began
            store.write_text(text + "# changed\n")
            session.state._next_check = 0.0  # the next lookup, as after STORE_CHECK_SECONDS
            began = time.perf_counter()
            policy = session.state.policy
            reload = time.perf_counter() - began
            began = time.perf_counter()
            compile_plan(policy, abi, session.state.route_grants())
            plan = time.perf_counter() - began
            session.close()
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
            print(
                f"{n:7} grants {len(text):9} bytes: start {start * 1000:7.1f} ms"
                f"  reload {reload * 1000:7.1f} ms  landlock plan {plan * 1000:7.1f} ms  max RSS {rss} MB"
            )
        finally:
            shutil.rmtree(top, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
