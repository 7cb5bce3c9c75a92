"""A session's private POSIX shared memory and semaphores: the objects its processes made in /dev/shm.

``shm_open`` and ``sem_open`` (Python's ``multiprocessing`` locks, queues and pools, ``ProcessPoolExecutor``,
``shared_memory``) make and reopen regular files in /dev/shm, a flat directory every process of the uid
shares: granting it would hand each command every other program's shared memory. Landlock cannot grant
files that do not exist yet, so the supervisor keeps what the session made: a new regular file directly in
/dev/shm may be created (by an open, or a hard link of one of the session's own), and an existing one
opened, linked or removed only if it is one the session made, by inode. Everything else there stays denied
as before (issue 20). Pure bookkeeping: the notify layer asks and tells (``Checker.decide``, ``made``,
``removed``); nothing here opens a file.
"""

from __future__ import annotations

import os
import stat
import threading

__all__ = ["SHM_DIR", "SessionShm"]

SHM_DIR = "/dev/shm"
# The ops a private object is decided for: what shm_open, sem_open, shm_unlink and sem_unlink do to it.
_OPS = frozenset({"create", "read", "write", "delete"})


class SessionShm:
    """The (dev, ino) of the regular files the session's processes made directly in /dev/shm."""

    def __init__(self, directory: str = SHM_DIR) -> None:
        self.directory = os.path.realpath(directory)
        self._objects: set[tuple[int, int]] = set()
        self._lock = threading.Lock()

    def holds(self, path: str) -> bool:
        """``path`` (a real path) names an entry directly in the shared-memory directory."""
        return os.path.dirname(path) == self.directory and path != self.directory

    def allows(self, op: str, path: str, st: os.stat_result | None) -> bool:
        """``op`` on the entry ``path`` as pinned (``st``: the entry, not followed; None when it does not
        exist yet, and then it is made by this call): a new name, or one of the session's own objects."""
        if op not in _OPS or not self.holds(path):
            return False
        if st is None:
            return op == "create"
        with self._lock:
            return stat.S_ISREG(st.st_mode) and (st.st_dev, st.st_ino) in self._objects

    def made(self, st: os.stat_result) -> None:
        """A regular file the session's process just created in /dev/shm (``st``: its fd's fstat)."""
        if stat.S_ISREG(st.st_mode):
            with self._lock:
                self._objects.add((st.st_dev, st.st_ino))

    def removed(self, st: os.stat_result) -> None:
        """Its last name is gone (``st``: as pinned before the unlink): the inode number may come back as
        another process's object."""
        if st.st_nlink <= 1:
            with self._lock:
                self._objects.discard((st.st_dev, st.st_ino))
