"""C parts built by `pip install`: the sandbox spawner and the exec-interposition library."""

import sys

from setuptools import Extension, setup

ext_modules = []
if sys.platform.startswith("linux"):
    # fork + Landlock + seccomp + exec with only raw syscalls in the child (see _spawn.c).
    ext_modules.append(Extension("supervisor.linux._spawn", ["supervisor/linux/_spawn.c"]))
    # The notify loop's fast path without the GIL (see _notify.c).
    ext_modules.append(Extension("supervisor.linux._notify", ["supervisor/linux/_notify.c"]))
if sys.platform.startswith("linux") or sys.platform == "darwin":
    # Preloaded into the agent (LD_PRELOAD / DYLD_INSERT_LIBRARIES); not a Python module, never imported.
    ext_modules.append(
        Extension(
            "supervisor._interpose",
            ["interpose/interpose.c"],
            libraries=["dl"] if sys.platform != "darwin" else [],
        )
    )

setup(ext_modules=ext_modules)
