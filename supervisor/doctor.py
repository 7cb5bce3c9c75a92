"""``doctor``: what this machine can enforce, and whether every route into nono-shell is in place."""

from __future__ import annotations

import os
import sys

from nono_shell.personality import SHELLS
from nono_supervisor.errors import NonoError
from nono_supervisor.session import find_real_shell

__all__ = ["report"]


def _line(ok: bool | None, what: str, detail: str) -> None:
    mark = {True: "ok  ", False: "FAIL", None: "warn"}[ok]
    print(f"[{mark}] {what}: {detail}")


def report() -> int:
    """Print one line per capability; 0 when the per-command sandbox can be enforced here, else 1."""
    if sys.platform == "darwin":
        return _report_macos()
    if not sys.platform.startswith("linux"):
        _line(False, "platform", f"{sys.platform}: no enforcing backend in this build")
        return 1
    from nono_supervisor import interpose
    from nono_supervisor.linux.kernel import probe

    k = probe()
    abi = k.landlock_abi
    _line(abi >= 1, "landlock", f"ABI {abi}" if abi else "unavailable (needs Linux >= 5.13, lsm=landlock)")
    features = {
        2: "refer",
        3: "truncate",
        4: "tcp bind/connect",
        5: "ioctl_dev",
        6: "signal+abstract-unix scoping",
    }
    for need, name in features.items():
        _line(
            abi >= need or None,
            f"landlock {name}",
            "enforced" if abi >= need else f"not enforced (ABI {need})",
        )
    _line(
        k.seccomp_notify or None, "seccomp user notification", "available" if k.seccomp_notify else "missing"
    )
    libseccomp = _libseccomp_line()
    if not (k.seccomp_notify and k.seccomp_addfd and libseccomp):
        from nono_supervisor.backend import NO_TRAP_GIVES_UP

        for lost in NO_TRAP_GIVES_UP:  # only --no-trap can run here: say what it leaves open
            _line(False, "with --no-trap only", lost)
    _line(k.seccomp_addfd or None, "seccomp ADDFD+SEND", "available" if k.seccomp_addfd else "missing (5.14)")
    _line(
        k.seccomp_sync_wakeup or None,
        "seccomp SYNC_WAKE_UP",
        "available" if k.seccomp_sync_wakeup else "missing",
    )
    _line(k.user_namespaces or None, "user namespaces", "available" if k.user_namespaces else "disabled")
    from nono_supervisor.netproxy import check_bind

    listening, detail = check_bind()  # --allow-domain: the session's proxy listens on loopback
    _line(listening or None, "network proxy (domains mode)", detail)
    library = interpose.library_path()
    problem = interpose.check_loadable(library) if library else "not built"
    _line(problem is None or None, "interposition library", str(library) if problem is None else problem)
    spawner = _built_parts_lines()
    for name in SHELLS:
        real = find_real_shell(name, os.environ.get("PATH", ""))
        _line(real is not None or None, f"real {name}", real or "not found (commands for it are refused)")
    _routing_lines()
    shims = os.environ.get("NONO_SHIM_DIR")
    if shims:
        _line(os.path.isfile(os.path.join(shims, "bash")), "shims", shims)
    else:
        _line(None, "shims", "not in a nono session (NONO_SHIM_DIR unset); `run` creates its own")
    return 0 if abi >= 1 and spawner else 1


# What a source build without a C compiler lacks, and what to do about it (README: Install).
_REBUILD = "reinstall where a C compiler and the Linux headers are (pip builds it)"


def _libseccomp_line() -> bool:
    """libseccomp, which compiles each command's filter (through pyseccomp): present and >= 2.5."""
    from nono_supervisor.linux import seccomp

    version = seccomp.libseccomp_version()
    if version is None:
        _line(False, "libseccomp", f"not found: install {seccomp.LIBSECCOMP_PACKAGES}")
        return False
    shown = ".".join(map(str, version))
    if version < seccomp.LIBSECCOMP_MIN:
        _line(False, "libseccomp", f"{shown} has no user notification: install {seccomp.LIBSECCOMP_PACKAGES}")
        return False
    try:
        seccomp.load_pyseccomp()
    except NonoError as e:
        _line(False, "libseccomp", str(e))
        return False
    _line(True, "libseccomp", shown)
    return True


def _built_parts_lines() -> bool:
    """The parts pip compiled: the spawner (without it no command can start: False), and the keeper, the C
    client and the ask-again library, each of which has a slower fallback."""
    from nono_supervisor import interpose, shims

    try:
        from nono_supervisor.linux import _notify, _spawn  # noqa: F401 - whether they were built
    except ImportError as e:
        _line(False, "C extensions (_spawn, _notify)", f"{e}: {_REBUILD}")
        return False
    _line(True, "C extensions (_spawn, _notify)", "built")
    from nono_supervisor.linux import notify, sandbox

    keeper = os.access(sandbox.KEEPER, os.X_OK)
    _line(
        keeper or None,
        "keeper",
        sandbox.KEEPER if keeper else f"not built (keepers stay copies of the supervisor): {_REBUILD}",
    )
    client = shims.client_path()
    _line(
        client is not None or None,
        "C client (shims, nono-shell)",
        client or f"not built (the Python client: ~25 ms more per command): {_REBUILD}",
    )
    library = notify.ask_again_library()
    problem = (
        interpose.check_loadable(library) if library else f"not built (every open is trapped): {_REBUILD}"
    )
    _line(problem is None or None, "ask-again library", library if problem is None else problem)
    return True


def _routing_lines() -> None:
    """Routing layer 4 (the agent's mount namespace): whether it can be had here, and so which agents are
    routed only by SHELL, PATH and the preloaded library (DESIGN: routing)."""
    from nono_supervisor.launcher import namespace_error, real_shells

    userns = os.geteuid() != 0
    error = namespace_error(userns)
    kind = "user namespace + mount namespace" if userns else "mount namespace (root)"
    if error == 0:
        shells = ", ".join(real_shells(dict(os.environ))) or "none found"
        _line(True, "agent routing namespace", f"{kind}: the agent sees the shim at {shells}")
        return
    _line(
        None,
        "agent routing namespace",
        f"{kind} refused ({os.strerror(error)}): static agents (codex runs /bin/bash by path) and"
        " passwd-shell lookups are not routed; those shells run under the agent's baseline, recorded in"
        " the audit log (event unrouted-shell). claude-code, gemini, opencode and aider are routed by"
        " SHELL, PATH and the preloaded library",
    )


def _report_macos() -> int:
    """Seatbelt through sandbox_init (or sandbox-exec); no in-flight layer: denials lead to a retry prompt."""
    import shutil

    from nono_supervisor.macos.runner import load_libsandbox

    native = load_libsandbox() is not None
    fallback = shutil.which("sandbox-exec")
    _line(
        native or (None if fallback else False), "seatbelt sandbox_init", "available" if native else "missing"
    )
    _line(bool(fallback) or None, "sandbox-exec fallback", fallback or "missing")
    _line(
        shutil.which("log") is not None or None,
        "log stream (denial detection)",
        shutil.which("log") or "missing",
    )
    return 0 if native or fallback else 1
