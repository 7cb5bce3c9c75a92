#!/usr/bin/env python3
"""What finding the workdir's git repositories costs a session's start (``gitrepos.repository_entries``).

Builds a workdir holding a project repository and a node_modules of about 50,000 files in npm's shape
(packages and @scope/packages, each with a few directories of files, one in ten with a nested
node_modules; one package a clone of the human's, with its own .git), then times the discovery, warm
(one untimed run first), the minimum and median of --rounds. ``--module FILE`` times another version of
gitrepos.py (e.g. ``git show main:supervisor/gitrepos.py > /tmp/old.py``) on the same tree.
"""

from __future__ import annotations

import argparse
import importlib.util
import shutil
import statistics
import subprocess
import tempfile
import time
from pathlib import Path

FILES_PER_DIR = 5  # npm's own install here (/usr/lib/node_modules): 1,994 files in 467 directories
DIRS_PER_PACKAGE = ("lib", "lib/internal", "lib/util", "dist", "dist/esm", "src", "types")


def _package(root: Path, nested: bool) -> int:
    """A package directory as npm installs it; how many files it holds."""
    count = 0
    for sub in ("", *DIRS_PER_PACKAGE):
        directory = root / sub
        directory.mkdir(parents=True, exist_ok=True)
        for i in range(FILES_PER_DIR if sub else 2):
            (directory / f"f{i}.js").write_bytes(b"")
            count += 1
    if nested:
        for i in range(2):
            count += _package(root / "node_modules" / f"inner{i}", nested=False)
    return count


def build(work: Path, files: int) -> tuple[int, int]:
    """The workdir (a repository) with a node_modules of at least ``files`` files: (files, directories)."""
    subprocess.run(["git", "init", "-q", str(work)], check=True)
    modules, made, n = work / "node_modules", 0, 0
    while made < files:
        name = f"@scope{n % 40}/pkg{n}" if n % 5 == 0 else f"pkg{n}"
        made += _package(modules / name, nested=n % 10 == 3)
        n += 1
    subprocess.run(["git", "init", "-q", str(modules / "pkg1")], check=True)  # the human's clone of a package
    directories = sum(1 for p in work.rglob("*") if p.is_dir())
    return made, directories


def _load(path: str | None):
    if path is None:
        from nono_supervisor.policy import gitrepos

        return gitrepos
    spec = importlib.util.spec_from_file_location("gitrepos_under_test", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--files", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--module", default=None, help="another gitrepos.py to time")
    args = parser.parse_args()
    gitrepos = _load(args.module)
    root = Path(tempfile.mkdtemp(prefix="nono-bench-gitrepos-"))
    try:
        files, directories = build(root / "work", args.files)
        gitrepos.repository_entries(str(root / "work"))  # warm the dentry cache
        times, found = [], ()
        for _ in range(args.rounds):
            start = time.perf_counter()
            found = gitrepos.repository_entries(str(root / "work"))
            times.append(time.perf_counter() - start)
        repositories = sorted({e.path for e in found if e.path.endswith("/hooks")})
        print(f"tree: {files} files in node_modules, {directories} directories")
        print(f"repositories found: {len(repositories)} ({', '.join(repositories)})")
        print(f"discovery: min {min(times) * 1e3:.1f} ms, median {statistics.median(times) * 1e3:.1f} ms")
    finally:
        shutil.rmtree(root)


if __name__ == "__main__":
    main()
