"""C parts built by `pip install`: the sandbox spawner, the notify loop's fast path, the exec-interposition
library, and nono-shell's C client (the shims' interpreter)."""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CLIENT = "nono-shell-client"
KEEPER = "nono-keeper"


class BuildWithClient(build_ext):
    """Also build two executables (not Python modules): ``nono_shell/nono-shell-client``, which the shims
    run instead of an interpreter (supervisor/shims.py), and ``supervisor/linux/nono-keeper``, which a
    command's keeper becomes once the command runs. Static where the toolchain allows (no dynamic loader,
    and an agent's LD_PRELOAD does not load into them); dynamic otherwise; skipped where they cannot be
    built, each with its fallback."""

    def run(self) -> None:
        super().run()
        if not sys.platform.startswith("linux"):
            return
        self._program("nono_shell/_client.c", "nono_shell", CLIENT, [], "the shims use the Python client")
        # The keeper after the command's exec (_spawn.c built with NONO_KEEPER): no copy of the supervisor
        # lives on for the command's lifetime.
        self._program(
            "supervisor/linux/_spawn.c",
            "nono_supervisor.linux",
            KEEPER,
            [("NONO_KEEPER", "1")],
            "keepers stay copies of the supervisor",
        )

    def _program(self, source: str, package: str, name: str, macros: list, fallback: str) -> None:
        if self.inplace:  # beside the package's sources (the folder supervisor/ for nono_supervisor)
            out_dir = self.get_finalized_command("build_py").get_package_dir(package)
        else:
            out_dir = os.path.join(self.build_lib, *package.split("."))
        try:
            objects = self.compiler.compile(
                [source],
                output_dir=os.path.join(self.build_temp, name),
                macros=macros,
                extra_postargs=["-O2", "-Wall", "-Wno-unused-function"],
            )
        except Exception as e:  # noqa: BLE001 - optional: the fallback still works
            print(f"warning: {name} not built ({e}); {fallback}")
            return
        error = None
        for flags in (["-static"], []):
            try:
                self.compiler.link_executable(objects, name, output_dir=out_dir, extra_postargs=flags)
                return
            except Exception as e:  # noqa: BLE001 - no static libc: link it dynamically
                error = e
        print(f"warning: {name} not linked ({error}); {fallback}")


ext_modules = []
if sys.platform.startswith("linux"):
    # fork + Landlock + seccomp + exec with only raw syscalls in the child (see _spawn.c).
    ext_modules.append(Extension("nono_supervisor.linux._spawn", ["supervisor/linux/_spawn.c"]))
    # The syscall numbers the Python side needs, from this build's kernel headers (see _syscalls.c).
    ext_modules.append(Extension("nono_supervisor.linux._syscalls", ["supervisor/linux/_syscalls.c"]))
    # The notify loop's fast path without the GIL (see _notify.c).
    ext_modules.append(Extension("nono_supervisor.linux._notify", ["supervisor/linux/_notify.c"]))
    # Preloaded into commands whose opens and execve are not trapped: asks again where Landlock refused one.
    ext_modules.append(
        Extension("nono_supervisor.linux._askagain", ["supervisor/linux/_askagain.c"], libraries=["dl"])
    )
if sys.platform.startswith("linux") or sys.platform == "darwin":
    # Preloaded into the agent (LD_PRELOAD / DYLD_INSERT_LIBRARIES); not a Python module, never imported.
    ext_modules.append(
        Extension(
            "nono_supervisor._interpose",
            ["interpose/interpose.c"],
            libraries=["dl"] if sys.platform != "darwin" else [],
        )
    )

setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildWithClient})
