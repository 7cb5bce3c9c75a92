"""The Linux side of the platform seam: Landlock, and seccomp user notification on top (the in-flight layer).

``compile`` turns what a command gets into a Landlock ruleset (cached per policy: ``PlanCache``) and checks
what the kernel can do; ``start`` chooses the seccomp filter, starts the command's notify loop on its
listener and puts it under the late-deny watch (``linux.latedeny``). ``sandbox.start`` forks and applies it.
"""

from __future__ import annotations

import functools
import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from nono_supervisor.backend import (
    NO_TRAP_GIVES_UP,
    Checkup,
    CommandGets,
    Hooks,
    Launch,
    Line,
)
from nono_supervisor.errors import NonoError, SandboxError
from nono_supervisor.linux import kernel
from nono_supervisor.linux.kernel import KernelSupport
from nono_supervisor.linux.landlock import CachedPlan, LandlockPlan, PlanCache, compile_plan

if TYPE_CHECKING:  # sandbox needs the built spawner, which doctor reports missing rather than fail on
    from nono_supervisor.launcher import RoutingNamespace
    from nono_supervisor.linux.sandbox import Process
    from nono_supervisor.session import Session

__all__ = ["LinuxBackend", "LinuxPlan", "LinuxLaunch", "LinuxHooks"]

# After the command exits, how long its notify loop may take to answer what is still in flight before
# the denial report is written. Processes the command left running keep their loop; they are not waited for.
_DRAIN_SECONDS = 0.2
# What a source build without a C compiler lacks, and what to do about it (README: Install).
_REBUILD = "reinstall where a C compiler and the Linux headers are (pip builds it)"


@dataclass(frozen=True)
class LinuxPlan:
    """A command's Landlock ruleset and what its start needs beside it. ``ruleset`` is an fd that ``start``
    closes on every path; ``since`` is the late-deny watch's generation before the plan was fetched (a move
    noticed after it is evaluated for this command too)."""

    gets: CommandGets
    cached: CachedPlan
    ruleset: int
    net: Any  # domains mode: the session's proxy, Landlock's backstop allows TCP connect to its ports only
    since: int


@dataclass(frozen=True)
class LinuxLaunch(Launch):
    """The agent's launch where it has a routing namespace (``launcher.routing_namespace``): the mount
    namespace in which its real shells show the shim (DESIGN routing layer 4)."""

    routing: RoutingNamespace | None = None


@dataclass(frozen=True)
class LinuxHooks(Hooks):
    """The agent's hooks: ``loop_class``, a notify loop that also watches its shell execs (launcher)."""

    loop_class: type | None = None


class LinuxBackend:
    platform = "linux"
    preload_var = "LD_PRELOAD"
    interpose_library = "libnono_interpose.so"  # setup.py PRELOADS
    holds_syscalls = True
    records_changes = True

    def __init__(self) -> None:
        self._plans: PlanCache | None = None
        self._plans_lock = threading.Lock()

    def plan_cache(self) -> PlanCache:
        """The Landlock plans (and ruleset fds) of this process, compiled once per policy."""
        with self._plans_lock:
            if self._plans is None:
                self._plans = PlanCache()
            return self._plans

    # ---- policy and doctor -------------------------------------------------------------------------------

    def enforcement(self, trap: bool) -> str:
        if not trap:
            return "Landlock only (--no-trap): no reports, no emulated grants"
        return "Landlock + seccomp user notification (reports, emulated grants, questions)"

    def policy_notes(self, gets: CommandGets) -> list[str]:
        lost = [] if gets.trap else [f"not enforced with --no-trap: {line}" for line in NO_TRAP_GIVES_UP]
        return lost + [f"note: {note}" for note in self.landlock_plan(gets).notes]

    def landlock_plan(self, gets: CommandGets) -> LandlockPlan:
        return compile_plan(gets.policy, max(self.probe().landlock_abi, 1), gets.extra)

    def probe(self) -> KernelSupport:
        return kernel.probe()

    def doctor(self) -> Checkup:
        support = self.probe()
        lines = list(_kernel_lines(support))
        spawner = _built_parts_lines(lines)
        return Checkup(tuple(lines), support.missing() is None and spawner)

    def namespace_error(self, userns: bool) -> int | None:
        return _namespace_error(userns)

    # ---- one command --------------------------------------------------------------------------------------

    def compile(self, gets: CommandGets) -> LinuxPlan:
        support = self.probe()
        missing = support.missing()
        if missing:
            raise SandboxError(f"Landlock is {missing}; nothing was run")
        net = None
        if gets.policy.net_mode == "domains":
            if not gets.trap:
                raise SandboxError(
                    "network mode domains (--allow-domain) needs the seccomp layer: the supervisor performs"
                    " every connect to tie it to its command. Hint: drop --no-trap, or use --net-block"
                )
            net = gets.session.services.netproxy()
        if gets.trap and not (support.seccomp_notify and support.seccomp_addfd):
            raise SandboxError(
                "seccomp user notification with ADDFD is not available (needs Linux >= 5.14)."
                " Hint: --no-trap runs with Landlock alone"
            )
        since = gets.session.services.late_denies().generation
        # Compiled once per policy and reused while the directories it read are unchanged (PlanCache).
        ports = net.ports if net else ()
        cached, ruleset = self.plan_cache().get(gets.policy, support.landlock_abi, gets.extra, ports)
        return LinuxPlan(gets, cached, ruleset, net, since)

    def start(self, plan: LinuxPlan, launch: Launch, hooks: Hooks) -> Process:
        """Without trap, Landlock alone. With it, path syscalls also go to the command's notify loop:
        denials are reported through ``hooks.on_decision``, grants Landlock cannot express are carried out
        by the supervisor, and ``hooks.consent`` may let a human allow what the policy denies while the
        syscall waits. With ``launch.leave_to_kernel``, opens and execve are left to Landlock where that
        loses nothing a dynamically linked process could report (``_ask_again_library``).

        While it runs, a denied node that moves into what its ruleset grants stops it, or, where its loop
        sees every open, guards that loop (``linux.latedeny``)."""
        from nono_supervisor.linux import sandbox, seccomp

        try:
            gets = plan.gets
            loop_class = _loop_class(hooks)
            linked = gets.trap and bool(gets.linked)
            ask_again = gets.trap and launch.leave_to_kernel and _ask_again_library(loop_class, linked)
            env = _preloaded(launch.env, ask_again) if ask_again else launch.env
            spawn = sandbox.Launch.build(
                launch.path,
                launch.argv,
                env,
                launch.cwd,
                launch.stdio,
                ctty=launch.ctty,
                exec_fd=launch.exec_fd,
                **_namespace(launch),
            )
        except BaseException:
            os.close(plan.ruleset)
            raise
        watch = gets.session.services.late_denies()

        def watched(process: Process, guard: bool = False) -> Process:
            notice = hooks.on_late_deny
            inodes = plan.cached.inodes
            watch.track(
                process, gets.policy, inodes, process.notify, guard=guard, notice=notice, since=plan.since
            )
            return process

        if not gets.trap:
            return watched(sandbox.start(plan.cached.plan, spawn, ruleset=plan.ruleset))

        def start_loop(listener: int) -> Any:
            loop = loop_class(
                listener,
                plan.cached.rights,
                gets.access(),
                hooks.on_decision or (lambda *_: None),
                hooks.consent,
                gets.own_sockets,
                net_block=gets.policy.net_block,
                own_terminals=gets.own_terminals,
                linked_denied=gets.linked_denied,
                linked=linked,
                undo=hooks.undo,
                shm=gets.session.files.shm,
            )
            if plan.net is not None:  # domains mode: inet connects go to the proxy, tied to this command
                loop.net_proxy = plan.net.client(gets.policy, hooks.consent, launch.argv, hooks.on_decision)
            loop.start()
            return loop

        program = seccomp.build_program(
            gets.policy.net_mode, leave_to_landlock=bool(ask_again), record_writes=hooks.undo is not None
        )
        filtered = (program, seccomp.FILTER_FLAGS)
        process = sandbox.start(plan.cached.plan, spawn, filtered, start_loop, ruleset=plan.ruleset)
        # Every open trapped (the agent, linked denied files, no library): its loop can refuse the moved
        # node from now on; left to Landlock, only stopping it can (the kernel is not asked again).
        return watched(process, guard=not ask_again)

    def finish(self, process: Any) -> None:
        loop = process.notify
        if loop is not None:
            loop.join(_DRAIN_SECONDS)

    def left_running(self) -> int:
        """Each command whose keeper still holds background jobs keeps its notify loop, a thread and the
        listener's fd."""
        from nono_supervisor.linux.sandbox import reap_keepers

        return reap_keepers()

    def serve(self, session: Session) -> None:
        """The session's watch over late denies, from the start: its first command does not wait for it."""
        session.services.late_denies().watch(session.state.policy)

    def rename_noreplace(self, source: Path, target: Path) -> None:
        from nono_supervisor.linux.libc import rename_noreplace

        rename_noreplace(os.fsencode(source), os.fsencode(target))

    def stderr_of(self, pid: int) -> int:
        return kernel.pidfd_getfd(pid, 2)


def _namespace(launch: Launch) -> dict[str, Any]:
    """The agent's routing namespace as the spawner takes it: (shim, real shell) binds, as bytes."""
    if not isinstance(launch, LinuxLaunch) or launch.routing is None:
        return {}
    binds = tuple((os.fsencode(shim), os.fsencode(real)) for shim, real in launch.routing.binds)
    return {"binds": binds, "userns": launch.routing.userns}


def _loop_class(hooks: Hooks) -> type:
    from nono_supervisor.linux.notify import NotifyLoop

    return (hooks.loop_class if isinstance(hooks, LinuxHooks) else None) or NotifyLoop


def _ask_again_library(loop_class: type, linked: bool) -> str | None:
    """The ask-again library to preload when the command's opens and execs may be left to Landlock
    (issue 13), else None: all are trapped for a loop that must see them all (the agent's), while a denied
    file has several names (Landlock follows names: each regular-file open must be checked on its inode),
    where the library is not built (a denial could not be reported even where the process can), and with
    NONO_TRAP_ALL=1 in the supervisor's environment (bench/bench_speed.py's comparison)."""
    from nono_supervisor.linux.notify import ask_again_library, wants_every_notification

    if linked or wants_every_notification(loop_class) or os.environ.get("NONO_TRAP_ALL") == "1":
        return None
    return ask_again_library()


def _preloaded(env: dict[str, str], library: str) -> dict[str, str]:
    """``env`` with ``library`` in LD_PRELOAD (once: nested commands inherit it through nono-shell)."""
    current = env.get("LD_PRELOAD", "")
    if library in current.replace(":", " ").split():
        return env
    return {**env, "LD_PRELOAD": f"{current} {library}".strip()}


@functools.cache
def _namespace_error(userns: bool) -> int:
    from nono_supervisor.linux import _spawn  # type: ignore[attr-defined]  # C, no stubs (setup.py)

    return _spawn.probe_namespace(userns)


# ---- doctor ----------------------------------------------------------------------------------------------


def _kernel_lines(k: KernelSupport) -> Iterator[Line]:
    abi = k.landlock_abi
    yield abi >= 1, "landlock", f"ABI {abi}" if abi else f"unavailable: {k.missing()}"
    features = {
        2: "refer",
        3: "truncate",
        4: "tcp bind/connect",
        5: "ioctl_dev",
        6: "signal+abstract-unix scoping",
    }
    for need, name in features.items():
        yield (
            abi >= need or None,
            f"landlock {name}",
            "enforced" if abi >= need else f"not enforced (ABI {need})",
        )
    yield (
        k.seccomp_notify or None,
        "seccomp user notification",
        "available" if k.seccomp_notify else "missing",
    )
    libseccomp = libseccomp_line()
    yield libseccomp
    if not (k.seccomp_notify and k.seccomp_addfd and libseccomp[0]):
        for lost in NO_TRAP_GIVES_UP:  # only --no-trap can run here: say what it leaves open
            yield False, "with --no-trap only", lost
    yield k.seccomp_addfd or None, "seccomp ADDFD+SEND", "available" if k.seccomp_addfd else "missing (5.14)"
    wake = k.seccomp_sync_wakeup
    yield wake or None, "seccomp SYNC_WAKE_UP", "available" if wake else "missing"
    yield k.user_namespaces or None, "user namespaces", "available" if k.user_namespaces else "disabled"
    from nono_supervisor import interpose
    from nono_supervisor.netproxy import check_bind

    listening, detail = check_bind()  # --allow-domain: the session's proxy listens on loopback
    yield listening or None, "network proxy (domains mode)", detail
    library = interpose.library_path()
    problem = interpose.check_loadable(library) if library else "not built"
    yield problem is None or None, "interposition library", str(library) if problem is None else problem


def libseccomp_line() -> Line:
    """libseccomp, which compiles each command's filter (through pyseccomp): present and >= 2.5."""
    from nono_supervisor.linux import seccomp

    version = seccomp.libseccomp_version()
    if version is None:
        return False, "libseccomp", f"not found: install {seccomp.LIBSECCOMP_PACKAGES}"
    shown = ".".join(map(str, version))
    if version < seccomp.LIBSECCOMP_MIN:
        return False, "libseccomp", f"{shown} has no user notification: install {seccomp.LIBSECCOMP_PACKAGES}"
    try:
        seccomp.load_pyseccomp()
    except NonoError as e:
        return False, "libseccomp", str(e)
    return True, "libseccomp", shown


def _built_parts_lines(lines: list[Line]) -> bool:
    """The parts pip compiled: the spawner (without it no command can start: False), and the keeper, the C
    client and the ask-again library, each of which has a slower fallback."""
    from nono_supervisor import interpose, shims

    try:
        from nono_supervisor.linux import _notify, _spawn  # type: ignore[attr-defined]  # noqa: F401 - built?
    except ImportError as e:
        lines.append((False, "C extensions (_spawn, _notify)", f"{e}: {_REBUILD}"))
        return False
    lines.append((True, "C extensions (_spawn, _notify)", "built"))
    from nono_supervisor.linux import notify, sandbox

    keeper = os.access(sandbox.KEEPER, os.X_OK)
    detail = sandbox.KEEPER if keeper else f"not built (keepers stay copies of the supervisor): {_REBUILD}"
    lines.append((keeper or None, "keeper", detail))
    client = shims.client_path()
    detail = client or f"not built (the Python client: ~25 ms more per command): {_REBUILD}"
    lines.append((client is not None or None, "C client (shims, nono-shell)", detail))
    library = notify.ask_again_library()
    if library is None:
        lines.append((None, "ask-again library", f"not built (every open is trapped): {_REBUILD}"))
    else:
        problem = interpose.check_loadable(library)
        lines.append((problem is None or None, "ask-again library", problem or library))
    return True


if TYPE_CHECKING:  # the protocol conformance, checked by mypy (.ci/types; tests/test_backend.py runs it)
    from nono_supervisor import backend as _seam

    _linux: _seam.Backend[LinuxPlan] = LinuxBackend()
    _process: type[_seam.Process] = Process
