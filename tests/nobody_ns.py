"""Exec a command in a private mount namespace where uid 65534 can reach the given paths.

    python -IBS tests/nobody_ns.py PATH... -- setpriv --reuid=65534 ... -- CMD...

Run as root (``conftest.as_nobody`` builds this command line; nothing else should). The tests repeat key
scenarios as uid 65534, which must reach the interpreter (``sys.base_prefix``, often under a 0700
``/root`` for a pyenv build), the venv, the checkout and the temp dir the test homes live in. No permission
on the machine is changed: in a mount namespace of its own, each directory on the way to one of PATHs
that uid 65534 cannot search is covered by a read-only tmpfs of mode 0755 holding only the entries on the
way (directories and files bind-mounted from the original, reached through an ``O_PATH`` fd opened before
covering; symlinks copied). uid 65534 then sees the interpreter tree and the checkout, not root's other
files, and the mounts vanish with the last process of the namespace. Propagation is private: nothing
reaches the machine's mount table.

Exits 126 with one line ``nobody_ns: <reason>`` when it cannot set this up (not root, unshare refused).
"""

from __future__ import annotations

import ctypes
import os
import stat
import sys

NOBODY = 65534
CLONE_NEWNS = 0x00020000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18

_libc = ctypes.CDLL(None, use_errno=True)


class Refused(Exception):
    pass


def _check(result: int, what: str) -> None:
    if result != 0:
        e = ctypes.get_errno()
        raise Refused(f"{what}: {os.strerror(e)}")


def _c(s: str | None) -> bytes | None:
    return None if s is None else os.fsencode(s)


def _mount(source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None) -> None:
    result = _libc.mount(_c(source), _c(target), _c(fstype), ctypes.c_ulong(flags), _c(data))
    _check(result, f"mount {target}")


def searchable(st: os.stat_result) -> bool:
    """Whether uid 65534 (gid 65534, no other groups) may search a directory with this owner and mode."""
    if st.st_uid == NOBODY:
        return bool(st.st_mode & stat.S_IXUSR)
    if st.st_gid == NOBODY:
        return bool(st.st_mode & stat.S_IXGRP)
    return bool(st.st_mode & stat.S_IXOTH)


def lookups(path: str, out: set[tuple[str, str]], depth: int = 0) -> None:
    """Add the (real directory, name) lookups the kernel makes to resolve ``path``, symlinks followed."""
    if depth > 40:
        return
    current = "/"
    for name in [p for p in os.path.abspath(path).split("/") if p]:
        out.add((current, name))
        step = os.path.join(current, name)
        if os.path.islink(step):
            lookups(os.path.join(current, os.readlink(step)), out, depth + 1)
            step = os.path.realpath(step)
        current = step


def plan(paths: list[str]) -> dict[str, set[str]]:
    """The directories to cover (those uid 65534 cannot search), each with the names to keep in it."""
    steps: set[tuple[str, str]] = set()
    for path in paths:
        lookups(path, steps)
    cover: dict[str, set[str]] = {}
    for parent, name in steps:
        try:
            shut = not searchable(os.stat(parent))
        except FileNotFoundError:
            continue  # on the way to a wanted path that does not exist: nothing to reach
        if shut:
            cover.setdefault(parent, set()).add(name)
    for path in paths:  # a wanted directory that is itself shut: all of it is wanted
        real = os.path.realpath(path)
        if os.path.isdir(real) and not searchable(os.stat(real)):
            cover.setdefault(real, set()).update(os.listdir(real))
    return cover


def cover(directory: str, names: set[str]) -> None:
    """Put a tmpfs over ``directory`` holding only ``names``, each the original entry."""
    fd = os.open(directory, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)  # the original, before covering
    try:
        _mount("tmpfs", directory, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC, "mode=0755")
        for name in sorted(names):
            target = os.path.join(directory, name)
            try:
                st = os.stat(name, dir_fd=fd, follow_symlinks=False)
            except FileNotFoundError:
                continue  # a wanted path that does not exist (yet): nothing to keep
            if stat.S_ISLNK(st.st_mode):
                os.symlink(os.readlink(name, dir_fd=fd), target)
                continue
            if stat.S_ISDIR(st.st_mode):
                os.mkdir(target)
            else:
                os.close(os.open(target, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644))
            _mount(f"/proc/self/fd/{fd}/{name}", target, None, MS_BIND | MS_REC)
        _mount(None, directory, None, MS_REMOUNT | MS_RDONLY | MS_NOSUID | MS_NODEV | MS_NOEXEC)
    finally:
        os.close(fd)


def enter(paths: list[str]) -> None:
    if os.geteuid() != 0:
        raise Refused("needs root")
    _check(_libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
    _mount(None, "/", None, MS_REC | MS_PRIVATE)
    # Outer directories first: an inner one is then opened through the bind mount of its parent's cover.
    for directory, names in sorted(plan(paths).items(), key=lambda item: item[0].count("/")):
        cover(directory, names)


def main(argv: list[str]) -> None:
    if "--" not in argv or argv.index("--") == len(argv) - 1:
        sys.exit("usage: nobody_ns.py PATH... -- CMD...")
    split = argv.index("--")
    try:
        enter(argv[:split])
    except (Refused, OSError) as e:
        sys.stderr.write(f"nobody_ns: {e}\n")
        sys.exit(126)
    command = argv[split + 1 :]
    try:
        os.execvp(command[0], command)
    except OSError as e:
        sys.stderr.write(f"nobody_ns: cannot run {command[0]}: {e.strerror}\n")
        sys.exit(127)


if __name__ == "__main__":
    main(sys.argv[1:])
