#!/usr/bin/env python3
"""Issue 13's table in one command: each workload bare, through the route, with --no-trap, and under the
peers that are installed (bubblewrap, firejail), interleaved, with min-max over rounds.

Every mode runs the same command line (``bash -c CMD``) in the same fake HOME, cwd ``HOME/work``:
- ``bare``: ``bash -c CMD``;
- ``route``: ``<shims>/bash -c CMD`` through a ``nono-supervisor serve --shims --allow HOME`` started by this
  bench (the agent's route: nono-shell, the socket, the supervisor, Landlock + seccomp);
- ``no-trap``: the same route with ``serve --no-trap`` (Landlock alone);
- ``route, all trapped`` (``--trap-all``): the route with every call trapped (NONO_TRAP_ALL=1);
- ``kernel alone``: ``bash -c CMD`` under the route's own Landlock ruleset (compiled here for the same
  policy), its seccomp filter with every trap allowed by the kernel, and its preloaded library, with no
  supervisor (``kernel_alone.c``): the floor the kernel charges for the policy, under the route;
- ``bwrap``: ``bwrap --ro-bind / / --bind HOME HOME --dev /dev --proc /proc --unshare-pid -- bash -c CMD``;
- ``firejail``: ``firejail --quiet --noprofile -- bash -c CMD``.
``--build NAME=VENV`` adds the route and no-trap modes of another install (an old checkout's venv), so a
before/after table comes from one interleaved run. Times are wall clock end to end (the client's start-up
included). Rows: ``-c true``; cat of 2,000 files x10; grep -r over 20,000 files; git status over 20,000
files; make -j2 of 100 C files; pytest of 200 tests; npm install of a local 500-file package; 50 commands
at once each a cat of 200 files (and the same one at a time); the supervisor's CPU per 1,000 trapped
syscalls (a loop of O_DIRECTORY opens, trapped by every build) with 1 and 50 commands at once; and, with
``yes > /dev/null`` started and stopped by the bench (one core busy), ``-c true``, cat and the 50.
Each cell is the median over rounds with [min-max]; the ratio is median/median of bare in the same run.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from pathlib import Path

HERE = Path(__file__).resolve().parent
_TICK = os.sysconf("SC_CLK_TCK")

# row name -> (command run by bash -c, repeat count per round); {py} is the pytest interpreter
ROWS = {
    "-c true": ("true", 10),
    "cat 2,000 files x10": ("for i in 1 2 3 4 5 6 7 8 9 10; do cat files/* >/dev/null; done", 1),
    "grep -r 20,000 files": ("grep -r needle tree >/dev/null; true", 1),
    "git status 20,000 files": ("git -C tree status --porcelain >/dev/null", 1),
    "make -j2 100 C files": ("make -s -C cproj clean >/dev/null && make -s -j2 -C cproj >/dev/null", 1),
    "pytest 200 tests": ("{py} -m pytest -q -p no:cacheprovider pyproj >/dev/null", 1),
    "npm install (local, 500 files)": (
        "cd npmproj && rm -rf node_modules package-lock.json"
        " && npm install --offline --no-audit --no-fund --ignore-scripts --loglevel=error >/dev/null",
        1,
    ),
}
CONCURRENT = "cat files200/* >/dev/null"
LOADED = ("-c true", "cat 2,000 files x10")


# ---- the tree ------------------------------------------------------------------------------------------


def _make_home(home: Path, quick: bool) -> None:
    """A fake HOME that looks like a developer's: secrets the default profile denies (so --allow HOME is
    compiled with sibling expansion, as on a real machine), configs, caches, and the workloads in work/."""
    for name in (".ssh", ".aws", ".gnupg", ".config/gh", ".local/share", ".cache/pip", "projects/a", "docs"):
        (home / name).mkdir(parents=True, exist_ok=True)
    (home / ".ssh" / "id_rsa").write_text("fake key\n")
    (home / ".aws" / "credentials").write_text("[default]\n")
    (home / ".bashrc").write_text("# rc\n")
    (home / ".gitconfig").write_text("[user]\n\tname = bench\n\temail = bench@example.com\n")
    for i in range(30):
        (home / f"notes{i}.txt").write_text("x\n")
    work = home / "work"
    files = work / "files"
    files.mkdir(parents=True)
    for i in range(2000):
        (files / f"f{i}").write_text("data\n")
    small = work / "files200"
    small.mkdir()
    for i in range(200):
        (small / f"f{i}").write_text("data\n")
    tree = work / "tree"
    count = 2000 if quick else 20000
    for d in range(count // 100):
        sub = tree / f"d{d:03}"
        sub.mkdir(parents=True)
        for i in range(100):
            (sub / f"file{i}.txt").write_text(f"line {d} {i}\nanother line\n")
    git = ["git", "-C", str(tree), "-c", "user.name=b", "-c", "user.email=b@e"]
    subprocess.run([*git[:3], "init", "-q"], check=True)
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", "tree"], check=True)
    cproj = work / "cproj"
    cproj.mkdir()
    for i in range(100):
        (cproj / f"m{i}.c").write_text(
            f'#include <stdio.h>\n#include <string.h>\n#include "common.h"\n'
            f"int f{i}(int x) {{ return x * {i} + COMMON; }}\n"
        )
    (cproj / "common.h").write_text("#define COMMON 7\n")
    (cproj / "main.c").write_text("int main(void) { return 0; }\n")
    objs = " ".join(f"m{i}.o" for i in range(100))
    (cproj / "Makefile").write_text(
        f"OBJS = {objs} main.o\nprog: $(OBJS)\n\tcc -o $@ $(OBJS)\n%.o: %.c common.h\n\tcc -O0 -c $<\n"
        "clean:\n\trm -f *.o prog\n"
    )
    pyproj = work / "pyproj"
    pyproj.mkdir()
    for m in range(10):
        body = "".join(f"def test_{m}_{i}():\n    assert {i} + 1 == {i + 1}\n\n" for i in range(20))
        (pyproj / f"test_m{m}.py").write_text(body)
    dep = work / "dep"
    (dep / "lib").mkdir(parents=True)
    (dep / "package.json").write_text('{"name": "dep", "version": "1.0.0", "main": "lib/f0.js"}\n')
    for i in range(500):
        (dep / "lib" / f"f{i}.js").write_text(f"module.exports = {i};\n")
    env = dict(os.environ, HOME=str(home), npm_config_cache=str(home / ".npm"))
    if shutil.which("npm"):
        subprocess.run(
            ["npm", "pack", "--silent", "--pack-destination", str(work)],
            cwd=dep,
            env=env,
            check=True,
            capture_output=True,
        )
        npmproj = work / "npmproj"
        npmproj.mkdir()
        (npmproj / "package.json").write_text(
            '{"name": "proj", "version": "1.0.0", "dependencies": {"dep": "file:../dep-1.0.0.tgz"}}\n'
        )
    # the raw, unmarked listing loop bench_notify times too: trapped by every build
    source = HERE.parent / "tests" / "c" / "open_loop.c"
    subprocess.run(["cc", "-O2", "-o", str(work / "open_loop"), str(source)], check=True)
    (work / "targetdir").mkdir()


# ---- modes ---------------------------------------------------------------------------------------------


class Mode:
    def __init__(
        self,
        name: str,
        prefix: list[str],
        env: dict[str, str],
        pid: int | None = None,
        fds: tuple[int, ...] = (),
    ) -> None:
        self.name, self.prefix, self.env, self.pid, self.fds = name, prefix, env, pid, fds

    def argv(self, command: str) -> list[str]:
        return [*self.prefix, "-c", command]

    def cpu(self) -> float:
        """The supervisor's CPU seconds so far (user + system, every thread)."""
        with open(f"/proc/{self.pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK


@contextmanager
def _serve(
    name: str,
    venv: Path,
    top: Path,
    home: Path,
    env: dict[str, str],
    extra: list[str],
    server_env: dict[str, str] | None = None,
):
    run_dir = Path(tempfile.mkdtemp(prefix="run-", dir=top))
    run_dir.chmod(0o700)
    sock, shims = run_dir / "socket", run_dir / "shims"
    server = subprocess.Popen(
        [
            str(venv / "bin" / "nono-supervisor"),
            "serve",
            "--socket",
            str(sock),
            "--shims",
            str(shims),
            "--allow",
            str(home),
            "--read",
            sys.prefix,
            "--read",
            sys.base_prefix,
            "--prompt",
            "never",
            *extra,
        ],
        cwd=home / "work",
        env={**env, **(server_env or {})},
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 30
        while not sock.exists():
            if server.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"bench_speed: {name}: the supervisor did not start")
            time.sleep(0.02)
        yield Mode(name, [str(shims / "bash")], dict(env, NONO_SOCKET=str(sock)), server.pid)
    finally:
        server.terminate()
        server.wait()


_RET_K = 0x06  # BPF_RET | BPF_K
_RET_USER_NOTIF, _RET_ALLOW = 0x7FC00000, 0x7FFF0000


def _answered_by_kernel(program: bytes) -> bytes:
    """``program`` with each return of SECCOMP_RET_USER_NOTIF made SECCOMP_RET_ALLOW: the same filter,
    the same instructions run on every syscall, and nobody to wake."""
    out = bytearray()
    for code, jt, jf, k in struct.iter_unpack("=HBBI", program):
        if code == _RET_K and k & 0xFFFF0000 == _RET_USER_NOTIF:
            k = _RET_ALLOW
        out += struct.pack("=HBBI", code, jt, jf, k)
    return bytes(out)


@contextmanager
def _kernel_alone(top: Path, home: Path, env: dict[str, str]):
    """The ``kernel alone`` mode: this install's plan and filter for the policy ``_serve`` gives the route
    (``--allow HOME --read`` the interpreter), applied by ``kernel_alone.c`` with no supervisor."""
    from nono_supervisor import backend
    from nono_supervisor.linux import seccomp
    from nono_supervisor.linux.kernel import probe
    from nono_supervisor.linux.notify import ask_again_library
    from nono_supervisor.policy.profile import PolicyOptions
    from nono_supervisor.session import Session

    loader = top / "kernel_alone"
    subprocess.run(["cc", "-O2", "-o", str(loader), str(HERE / "kernel_alone.c")], check=True)
    options = PolicyOptions(allow=(str(home),), read=(sys.prefix, sys.base_prefix), prompt="never")
    session = Session.create(options, env=env, workdir=str(home / "work"))
    try:
        # First: it makes the project's caches the plan grants.
        command_env = session.services.command_env(env)
        gets = backend.command_gets(session, (0, 1, 2))
        _entry, ruleset = (
            backend.current().plan_cache().get(gets.policy, probe().landlock_abi, gets.extra, ())
        )
        filter_path = top / "kernel_alone.bpf"
        program = seccomp.build_program(session.state.policy.net_mode, leave_to_landlock=True)
        filter_path.write_bytes(_answered_by_kernel(program))
        library = ask_again_library()
        if library:
            command_env["LD_PRELOAD"] = library
        prefix = [str(loader), str(ruleset), str(filter_path), "bash"]
        try:
            yield Mode("kernel alone", prefix, command_env, fds=(ruleset,))
        finally:
            os.close(ruleset)
    finally:
        session.close()


def _timed(mode: Mode, command: str, cwd: Path) -> float:
    start = time.perf_counter()
    r = subprocess.run(
        mode.argv(command),
        cwd=cwd,
        env=mode.env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        pass_fds=mode.fds,
    )
    took = time.perf_counter() - start
    if r.returncode != 0:
        detail = r.stderr[-400:]
        raise SystemExit(f"bench_speed: {mode.name}: {command!r} failed ({r.returncode}): {detail!r}")
    return took


def _concurrent(mode: Mode, command: str, cwd: Path, n: int) -> float:
    start = time.perf_counter()
    with ThreadPoolExecutor(n) as pool:
        list(pool.map(lambda _i: _timed(mode, command, cwd), range(n)))
    return time.perf_counter() - start


# ---- the table -----------------------------------------------------------------------------------------


def _fmt(values: list[float], bare: list[float] | None, unit: str) -> str:
    med = statistics.median(values)
    scale = 1000 if unit == "ms" else 1
    cell = f"{med * scale:8.1f} [{min(values) * scale:.1f}-{max(values) * scale:.1f}]"
    if bare:
        ratios = [v / b for v, b in zip(values, bare, strict=True)]
        cell += f" {med / statistics.median(bare):5.2f}x [{min(ratios):.2f}-{max(ratios):.2f}]"
    return cell


def _print_row(row: str, results: dict[str, list[float]], modes: list[Mode], unit: str = "ms") -> None:
    bare = results.get("bare")
    print(f"{row}")
    for mode in modes:
        if mode.name in results:
            ref = bare if mode.name != "bare" else None
            print(f"    {mode.name:18} {_fmt(results[mode.name], ref, unit)}", flush=True)


def _busy():
    return subprocess.Popen(["sh", "-c", "exec yes > /dev/null"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument(
        "--build",
        action="append",
        default=[],
        metavar="NAME=VENV",
        help="also measure another install's route (e.g. old=/tmp/old-wt/.venv)",
    )
    parser.add_argument("--rows", default="", help="comma-separated prefixes of the rows to run")
    parser.add_argument("--no-peers", action="store_true", help="skip bubblewrap and firejail")
    parser.add_argument("--no-notrap", action="store_true", help="skip the --no-trap modes")
    parser.add_argument("--no-kernel", action="store_true", help="skip the kernel alone mode")
    parser.add_argument("--build-notrap", action="store_true", help="--no-trap of the --build installs too")
    parser.add_argument(
        "--trap-all",
        action="store_true",
        help="also this install's route with every call trapped (NONO_TRAP_ALL=1)",
    )
    parser.add_argument("--quick", action="store_true", help="2,000 files for grep/git (a smoke run)")
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    builds = [("", Path(sys.prefix))]
    for spec in args.build:
        name, _, venv = spec.partition("=")
        builds.append((name, Path(venv)))
    wanted = [w.strip() for w in args.rows.split(",") if w.strip()]

    def selected(row: str) -> bool:
        return not wanted or any(row.startswith(w) for w in wanted)

    with tempfile.TemporaryDirectory(prefix="nono-bench-") as top_s, ExitStack() as stack:
        top = Path(top_s)
        top.chmod(0o755)
        home = top / "home"
        home.mkdir()
        print("bench_speed: building the tree...", file=sys.stderr, flush=True)
        _make_home(home, args.quick)
        work = home / "work"
        env = {k: v for k, v in os.environ.items() if not k.startswith(("NONO_", "LD_PRELOAD"))}
        env.update(
            HOME=str(home),
            XDG_STATE_HOME=str(top / "state"),
            XDG_CONFIG_HOME=str(home / ".config"),
            npm_config_cache=str(home / ".npm"),
            GIT_OPTIONAL_LOCKS="0",
        )
        modes = [Mode("bare", ["bash"], env)]
        for name, venv in builds:
            label = f"route {name}".strip()
            modes.append(stack.enter_context(_serve(label, venv, top, home, env, [])))
            if not args.no_notrap and (not name or args.build_notrap):
                modes.append(
                    stack.enter_context(
                        _serve(f"no-trap {name}".strip(), venv, top, home, env, ["--no-trap"])
                    )
                )
            if args.trap_all and not name:
                modes.append(
                    stack.enter_context(
                        _serve("route, all trapped", venv, top, home, env, [], {"NONO_TRAP_ALL": "1"})
                    )
                )
        if not args.no_kernel:
            modes.append(stack.enter_context(_kernel_alone(top, home, env)))
        skipped = []
        if not args.no_peers:
            if shutil.which("bwrap"):
                modes.append(
                    Mode(
                        "bwrap",
                        [
                            "bwrap",
                            "--ro-bind",
                            "/",
                            "/",
                            "--bind",
                            str(home),
                            str(home),
                            "--dev",
                            "/dev",
                            "--proc",
                            "/proc",
                            "--unshare-pid",
                            "--",
                            "bash",
                        ],
                        env,
                    )
                )
            else:
                skipped.append("bwrap (bubblewrap not installed)")
            if shutil.which("firejail"):
                modes.append(Mode("firejail", ["firejail", "--quiet", "--noprofile", "--", "bash"], env))
            else:
                skipped.append("firejail (not installed)")
        for s in skipped:
            print(f"skipped: {s}", flush=True)
        print(
            f"rounds: {args.rounds}; cells: ms, median [min-max]; ratio to bare [min-max of per-round ratios]"
        )
        py = sys.executable
        rows = {row: (cmd.format(py=py), rep) for row, (cmd, rep) in ROWS.items() if selected(row)}
        if not shutil.which("npm"):
            rows.pop("npm install (local, 500 files)", None)
            print("skipped: npm install (npm not installed)")
        for mode in modes:  # warm caches (page cache, npm, the plan) before any timing
            for cmd, _rep in rows.values():
                _timed(mode, cmd, work)
        for row, (cmd, rep) in rows.items():
            results: dict[str, list[float]] = {m.name: [] for m in modes}
            for r in range(args.rounds):
                order = modes[r % len(modes) :] + modes[: r % len(modes)]
                for mode in order:
                    results[mode.name].append(statistics.median(_timed(mode, cmd, work) for _ in range(rep)))
            _print_row(row, results, modes)
        n = args.concurrency
        conc_rows = {f"{n} at once, each cat of 200 files": n, "1 at a time, cat of 200 files": 1}
        for row, k in conc_rows.items():
            if not selected(row) and not selected("concurrency"):
                continue
            results = {m.name: [] for m in modes}
            for r in range(args.rounds):
                for mode in modes[r % len(modes) :] + modes[: r % len(modes)]:
                    results[mode.name].append(_concurrent(mode, CONCURRENT, work, k))
            _print_row(row, results, modes)
        if selected("cpu"):
            _cpu_rows(modes, work, args.rounds, n)
        loaded = [row for row in LOADED if selected(row) and row in rows] + (
            [f"{n} at once"] if selected("concurrency") or selected(f"{n} at once") else []
        )
        if loaded:
            busy = _busy()
            try:
                time.sleep(0.2)
                for row in loaded:
                    results = {m.name: [] for m in modes}
                    for r in range(args.rounds):
                        for mode in modes[r % len(modes) :] + modes[: r % len(modes)]:
                            if row in rows:
                                cmd, rep = rows[row]
                                value = statistics.median(_timed(mode, cmd, work) for _ in range(rep))
                            else:
                                value = _concurrent(mode, CONCURRENT, work, n)
                            results[mode.name].append(value)
                    _print_row(f"{row}, one core busy (yes > /dev/null)", results, modes)
            finally:
                busy.kill()
                busy.wait()


def _cpu_rows(modes: list[Mode], work: Path, rounds: int, n: int) -> None:
    """Supervisor CPU per 1,000 trapped syscalls: each command opens an allowed directory 5,000 times
    (a raw O_DIRECTORY openat, as libc's scandir makes it: trapped by every build, answered on the fast
    path); the supervisor's CPU over the run, per 1,000."""
    opens = 5000
    command = f"./open_loop targetdir {opens}"
    for k in (1, n):
        results: dict[str, list[float]] = {}
        for _r in range(rounds):
            for mode in modes:
                if mode.pid is None or mode.name.startswith("no-trap"):
                    continue
                before = mode.cpu()
                _concurrent(mode, command, work, k)
                results.setdefault(mode.name, []).append((mode.cpu() - before) / (k * opens / 1000))
        print(f"supervisor CPU per 1,000 trapped syscalls, {k} command(s) at once (ms)")
        for name, values in results.items():
            print(f"    {name:18} {_fmt(values, None, 'ms')}", flush=True)


if __name__ == "__main__":
    main()
