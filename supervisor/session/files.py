"""The session's files: what it makes on disk and the programs it runs, apart from its policy.

Its private runtime and temp directories (0700, removed by ``close``), the shims, the real shells found on
PATH, the project's tool-cache directory and the token-free copy of ~/.npmrc, the POSIX shared memory its
processes make, and the undo store's directory. Nothing here decides what a command may do: the policy
state (``state.py``) reads these paths to grant or protect them.
"""

from __future__ import annotations

import fcntl
import functools
import hashlib
import os
import re
import shutil
import stat
import tempfile
import threading
import time
from pathlib import Path

from nono_shell.personality import SHELLS
from nono_supervisor import paths
from nono_supervisor.shims import write_shims
from nono_supervisor.shm import SessionShm

__all__ = ["SessionFiles", "find_real_shell", "is_nono_shim"]

_FALLBACK_PATH = "/usr/local/bin:/usr/bin:/bin"

# Keys of an npmrc line that hold secrets: _auth, _authToken, _password, username, password, email, a
# client certificate's key (scoped "//registry/:_authToken" forms included).
_NPMRC_SECRET = re.compile(
    r"(^|:|\s)(_auth\w*|_password|password|username|email|certfile|keyfile|otp)\s*$", re.IGNORECASE
)


def is_nono_shim(path: str) -> bool:
    """True for our own shims and console script: the supervisor must never run one as the real shell."""
    try:
        with open(path, "rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return head.startswith(b"#!") and b"nono_shell" in head


def find_real_shell(name: str, search_path: str, exclude: tuple[str, ...] = ()) -> str | None:
    """The first ``name`` on ``search_path`` that is a real program: not in ``exclude``, not a shim."""
    for directory in search_path.split(os.pathsep) + _FALLBACK_PATH.split(os.pathsep):
        if not directory or os.path.realpath(directory) in exclude:
            continue
        candidate = os.path.join(directory, name)
        if os.access(candidate, os.X_OK) and not os.path.isdir(candidate) and not is_nono_shim(candidate):
            return candidate
    return None


# The session's private directories, named so that a later session can tell them from anything else.
_RUNTIME_PREFIX = "nono-shell-session-run-"
_TMP_PREFIX = "nono-shell-session-tmp-"
# A directory younger than this is never swept: it may be one a starting session has made and not yet locked.
_SWEEP_MIN_AGE_SECONDS = 60.0


def _private_dir(prefix: str, parent: str | None) -> tuple[Path, int]:
    """A fresh 0700 directory and an fd that holds it: a shared flock for the session's lifetime (the fd is
    close-on-exec, and the spawner closes every fd but stdio). What sessions that are gone left behind there
    (a supervisor killed with SIGKILL, or by the OOM killer, cannot remove its own) is swept first."""
    parent = parent or tempfile.gettempdir()
    _sweep(parent, prefix)
    path = Path(tempfile.mkdtemp(prefix=prefix, dir=parent)).resolve()
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    fcntl.flock(fd, fcntl.LOCK_SH)
    return path, fd


def _sweep(parent: str, prefix: str) -> None:
    """Remove ``parent``'s directories named ``prefix``* that are this user's, no live session holds (an
    exclusive flock is granted) and that have not changed for a minute. Never through a symlink (the entry
    is opened O_NOFOLLOW, and rmtree does not follow links)."""
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return
    now = time.time()
    for entry in entries:
        if not entry.name.startswith(prefix):
            continue
        try:
            st = entry.stat(follow_symlinks=False)
            if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
                continue
            if now - st.st_mtime < _SWEEP_MIN_AGE_SECONDS:
                continue
            fd = os.open(entry.path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            continue  # a live session holds it
        try:
            shutil.rmtree(entry.path, ignore_errors=True)
        finally:
            os.close(fd)


class SessionFiles:
    """Where the session keeps its own files, and the real shells it runs commands with."""

    def __init__(
        self,
        env: dict[str, str],
        workdir: str,
        runtime_dir: Path,
        tmpdir: Path,
        shims_dir: Path | None = None,
        holds: tuple[int, ...] = (),
    ) -> None:
        self.env = env
        self.workdir = workdir
        self.home = env.get("HOME") or os.path.expanduser("~")
        self.runtime_dir = runtime_dir
        self.tmpdir = tmpdir
        self.shims_dir = shims_dir
        self._holds = holds  # fds holding runtime_dir and tmpdir (_private_dir), closed by close()
        exclude = tuple(os.path.realpath(p) for p in (shims_dir,) if p)
        self.shells = {
            name: shell
            for name in SHELLS
            if (shell := find_real_shell(name, env.get("PATH", ""), exclude)) is not None
        }
        self.shm = SessionShm()  # the POSIX shared memory and semaphores its processes made (/dev/shm)
        self._caches: dict[str, str] | None = None  # the cache variables made, at the first command
        self._caches_lock = threading.Lock()  # commands start on threads of their own (server)

    @classmethod
    def create(cls, env: dict[str, str], workdir: str, shims: Path | bool = False) -> SessionFiles:
        """Fresh private runtime and temp directories (0700). With ``shims``, bash-named shims are written
        (``True``: into the runtime directory), so that a nested ``bash`` is routed again."""
        runtime_parent = env.get("XDG_RUNTIME_DIR")
        if not (runtime_parent and os.path.isdir(runtime_parent) and os.access(runtime_parent, os.W_OK)):
            runtime_parent = None
        runtime_dir, runtime_hold = _private_dir(_RUNTIME_PREFIX, runtime_parent)
        tmpdir, tmp_hold = _private_dir(_TMP_PREFIX, None)
        try:  # before the policy is compiled: its seal is a directory that exists (undo.Store fills it)
            paths.undo_dir(env).mkdir(mode=0o700, parents=True, exist_ok=True)
        except OSError:
            pass
        shims_dir = None
        if shims:
            shims_dir = runtime_dir / "shims" if shims is True else Path(shims).absolute()
            write_shims(shims_dir)
        return cls(env, workdir, runtime_dir, tmpdir, shims_dir, (runtime_hold, tmp_hold))

    @functools.cached_property
    def cache_dir(self) -> Path:
        """Where commands' tool caches go (XDG_CACHE_HOME, PIP_CACHE_DIR, npm_config_cache, ...): nono's
        own, one per project. Never the user's own caches, which the user's unsandboxed tools trust (a
        poisoned wheel or packument there would run later outside any sandbox); shared by the sessions of
        one workdir only, so a command can poison nothing it could not already write in its project."""
        base = self.env.get("XDG_CACHE_HOME")
        root = Path(base) if base and os.path.isabs(base) else Path(self.home) / ".cache"
        digest = hashlib.sha256(os.fsencode(os.path.realpath(self.workdir))).hexdigest()[:16]
        return root / "nono-shell" / "projects" / f"{os.path.basename(self.workdir) or 'root'}-{digest}"

    @property
    def npmrc(self) -> Path:
        """Where the token-free copy of ~/.npmrc is written (``session_configs``)."""
        return self.runtime_dir / "config" / "npmrc"

    @property
    def undo_dir(self) -> Path:
        """The undo stores of every session (sealed from commands and from the agent)."""
        return paths.undo_dir(self.env)

    def caches(self, wanted: dict[str, str]) -> dict[str, str]:
        """The cache variables of ``wanted`` (the policy state's ``cache_variables``) whose files exist:
        made at the first command (Landlock grants only what exists), with the token-free npmrc."""
        with self._caches_lock:
            if self._caches is None:
                self._caches = self._make_caches(wanted)
            return self._caches

    def _make_caches(self, wanted: dict[str, str]) -> dict[str, str]:
        if not wanted:
            return {}
        try:
            os.makedirs(wanted["XDG_CACHE_HOME"], mode=0o700, exist_ok=True)
        except OSError:
            return {}  # not ours to make: commands keep the caller's variables (and ask)
        made = dict(wanted)
        if "npm_config_userconfig" in made and not self._session_npmrc():
            del made["npm_config_userconfig"]
        return made

    def _session_npmrc(self) -> str | None:
        """~/.npmrc may hold the user's registry tokens (``npm login`` writes them there): it stays denied,
        and commands read a copy without the secrets instead (registry, proxy, save-exact... kept)."""
        source = os.path.join(self.home, ".npmrc")
        try:
            with open(source, encoding="utf-8", errors="replace") as f:
                lines = f.read().splitlines()
        except OSError:
            return None
        kept = [line for line in lines if not _NPMRC_SECRET.search(line.split("=", 1)[0])]
        target = self.npmrc
        try:
            target.parent.mkdir(mode=0o700, exist_ok=True)
            target.write_text("".join(line + "\n" for line in kept))
        except OSError:
            return None
        return str(target)

    def close(self) -> None:
        shutil.rmtree(self.runtime_dir, ignore_errors=True)
        shutil.rmtree(self.tmpdir, ignore_errors=True)
        for fd in self._holds:
            os.close(fd)
        self._holds = ()
