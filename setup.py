"""C parts built by `pip install`: the sandbox spawner, the notify loop's fast path, the exec-interposition
library, and nono-shell's C client (the shims' interpreter)."""

import os
import sys

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

CLIENT = "nono-shell-client"


class BuildWithClient(build_ext):
    """Also build ``nono_shell/nono-shell-client``, an executable (not a Python module): the shims run it
    instead of an interpreter (supervisor/shims.py). Static where the toolchain allows (no dynamic loader,
    and an agent's LD_PRELOAD does not load into it); dynamic otherwise; skipped, with the Python client
    in the shims, where it cannot be built."""

    def run(self) -> None:
        super().run()
        if not sys.platform.startswith("linux"):
            return
        out_dir = "nono_shell" if self.inplace else os.path.join(self.build_lib, "nono_shell")
        try:
            objects = self.compiler.compile(
                ["nono_shell/_client.c"], output_dir=self.build_temp, extra_postargs=["-O2", "-Wall"]
            )
        except Exception as e:  # noqa: BLE001 - the Python client still works
            print(f"warning: {CLIENT} not built ({e}); the shims use the Python client")
            return
        for flags in (["-static"], []):
            try:
                self.compiler.link_executable(objects, CLIENT, output_dir=out_dir, extra_postargs=flags)
                return
            except Exception as e:  # noqa: BLE001 - no static libc: link it dynamically
                error = e
        print(f"warning: {CLIENT} not linked ({error}); the shims use the Python client")


ext_modules = []
if sys.platform.startswith("linux"):
    # fork + Landlock + seccomp + exec with only raw syscalls in the child (see _spawn.c).
    ext_modules.append(Extension("supervisor.linux._spawn", ["supervisor/linux/_spawn.c"]))
    # The notify loop's fast path without the GIL (see _notify.c).
    ext_modules.append(Extension("supervisor.linux._notify", ["supervisor/linux/_notify.c"]))
    # Preloaded into commands whose plain reads are not trapped: asks again where Landlock refused one.
    ext_modules.append(
        Extension("supervisor.linux._readretry", ["supervisor/linux/_readretry.c"], libraries=["dl"])
    )
if sys.platform.startswith("linux") or sys.platform == "darwin":
    # Preloaded into the agent (LD_PRELOAD / DYLD_INSERT_LIBRARIES); not a Python module, never imported.
    ext_modules.append(
        Extension(
            "supervisor._interpose",
            ["interpose/interpose.c"],
            libraries=["dl"] if sys.platform != "darwin" else [],
        )
    )

setup(ext_modules=ext_modules, cmdclass={"build_ext": BuildWithClient})
