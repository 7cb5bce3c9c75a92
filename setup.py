"""C parts built by `pip install`: the sandbox spawner, the notify loop's fast path, the exec-interposition
library, the ask-again library, and nono-shell's C client (the shims' interpreter and the `nono-shell` on
PATH).

Mandatory where they exist (a build without a C compiler fails): the two extensions (no sandbox can be
spawned without _spawn) and the two preload libraries. Optional, each with its fallback: the C client and
the keeper executable (README: Install)."""

import os
import shutil
import sys

from setuptools import Distribution, Extension, setup
from setuptools.command.build_ext import build_ext

# isort: split
# After setuptools, which puts its own copy of distutils in place (the standard library's is gone in 3.12).
from distutils.ccompiler import CCompiler, new_compiler
from distutils.command.build_scripts import build_scripts
from distutils.sysconfig import customize_compiler

CLIENT = "nono-shell-client"
KEEPER = "nono-keeper"
DARWIN = sys.platform == "darwin"
LINUX = sys.platform.startswith("linux")

# Preloaded into processes (LD_PRELOAD / DYLD_INSERT_LIBRARIES), never imported: plain shared objects, no
# CPython tag, no Python's link flags (its LDSHARED adds the interpreter's lib dir as a RUNPATH, which
# every agent and command would then search). (source, package, file name, libraries)
PRELOADS = []
if LINUX:
    # into commands whose opens and execve are not trapped: asks again where Landlock refused one
    # (notify.ASK_AGAIN_NAME)
    PRELOADS.append(("supervisor/linux/_askagain.c", "nono_supervisor.linux", "libnono_askagain.so", ["dl"]))
if LINUX or DARWIN:
    # into the agent: routes its shell execs to the shims (interpose.LIBRARY_NAME)
    library = "libnono_interpose.dylib" if DARWIN else "libnono_interpose.so"
    PRELOADS.append(("interpose/interpose.c", "nono_supervisor", library, [] if DARWIN else ["dl"]))


class BuildWithClient(build_ext):
    """Also build the preload libraries (``PRELOADS``) and two executables (not Python modules):
    ``nono_shell/nono-shell-client``, which the shims run instead of an interpreter (supervisor/shims.py),
    and ``supervisor/linux/nono-keeper``, which a command's keeper becomes once the command runs. The
    executables are static where the toolchain allows (no dynamic loader, and an agent's LD_PRELOAD does
    not load into them); dynamic otherwise; skipped where they cannot be built, each with its fallback."""

    def run(self) -> None:
        super().run()
        if not isinstance(self.compiler, CCompiler):  # no extension here (macOS): build_ext made none
            self.compiler = new_compiler(compiler=self.compiler, force=self.force)
            customize_compiler(self.compiler)
        self.client = None  # the built C client, for BuildScripts
        for source, package, name, libraries in PRELOADS:
            self._shared_object(source, package, name, libraries)
        if not LINUX:
            return
        version = [("NONO_VERSION", f'"{self.distribution.get_version()}"')]  # `nono-shell --version`
        self.client = self._program(
            "nono_shell/_client.c", "nono_shell", CLIENT, version, "the shims use the Python client"
        )
        # The keeper after the command's exec (_spawn.c built with NONO_KEEPER): no copy of the supervisor
        # lives on for the command's lifetime.
        self._program(
            "supervisor/linux/_spawn.c",
            "nono_supervisor.linux",
            KEEPER,
            [("NONO_KEEPER", "1")],
            "keepers stay copies of the supervisor",
        )

    def _out_dir(self, package: str) -> str:
        if self.inplace:  # beside the package's sources (the folder supervisor/ for nono_supervisor)
            return self.get_finalized_command("build_py").get_package_dir(package)
        return os.path.join(self.build_lib, *package.split("."))

    def _shared_object(self, source: str, package: str, name: str, libraries: list) -> None:
        """Compiled as the extensions are (position-independent); linked by the C compiler alone."""
        objects = self.compiler.compile([source], output_dir=os.path.join(self.build_temp, name))
        out = os.path.join(self._out_dir(package), name)
        os.makedirs(os.path.dirname(out), exist_ok=True)
        kind = "-dynamiclib" if DARWIN else "-shared"
        self.compiler.spawn(
            [*self.compiler.linker_exe, kind, *objects, "-o", out, *(f"-l{x}" for x in libraries)]
        )

    def _program(self, source: str, package: str, name: str, macros: list, fallback: str) -> str | None:
        out_dir = self._out_dir(package)
        try:
            objects = self.compiler.compile(
                [source],
                output_dir=os.path.join(self.build_temp, name),
                macros=macros,
                extra_postargs=["-O2", "-Wall", "-Wno-unused-function"],
            )
        except Exception as e:  # noqa: BLE001 - optional: the fallback still works
            print(f"warning: {name} not built ({e}); {fallback}")
            return None
        error = None
        for flags in (["-static"], []):
            try:
                self.compiler.link_executable(objects, name, output_dir=out_dir, extra_postargs=flags)
                return os.path.join(out_dir, name)
            except Exception as e:  # noqa: BLE001 - no static libc: link it dynamically
                error = e
        print(f"warning: {name} not linked ({error}); {fallback}")
        return None


class BuildScripts(build_scripts):
    """The ``nono-shell`` on PATH: the C client where it was built (as fast as the shims: no interpreter
    start-up), else ``scripts/nono-shell``, the Python client. A console script could only be the latter."""

    def run(self) -> None:
        self.run_command("build_ext")
        client = self.get_finalized_command("build_ext").client
        if client is None:
            super().run()
            return
        self.mkpath(self.build_dir)
        target = os.path.join(self.build_dir, "nono-shell")
        shutil.copyfile(client, target)
        os.chmod(target, 0o755)


class BinaryDistribution(Distribution):
    """A platform wheel wherever a preload library is built, even with no CPython extension (macOS)."""

    def has_ext_modules(self) -> bool:
        return bool(PRELOADS) or super().has_ext_modules()


ext_modules = []
if LINUX:
    # fork + Landlock + seccomp + exec with only raw syscalls in the child (see _spawn.c).
    ext_modules.append(Extension("nono_supervisor.linux._spawn", ["supervisor/linux/_spawn.c"]))
    # The syscall numbers the Python side needs, from this build's kernel headers (see _syscalls.c).
    ext_modules.append(Extension("nono_supervisor.linux._syscalls", ["supervisor/linux/_syscalls.c"]))
    # The notify loop's fast path without the GIL (see _notify.c).
    ext_modules.append(Extension("nono_supervisor.linux._notify", ["supervisor/linux/_notify.c"]))

setup(
    distclass=BinaryDistribution,
    ext_modules=ext_modules,
    scripts=["scripts/nono-shell"],
    cmdclass={"build_ext": BuildWithClient, "build_scripts": BuildScripts},
)
