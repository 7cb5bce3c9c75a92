"""The macOS backend's calls into libSystem that Python's ``os`` lacks (platform-neutral modules reach
them through ``backend``). Loaded per call: the server makes one at start-up, nothing here is hot."""

from __future__ import annotations

import ctypes
import errno
import os

__all__ = ["rename_noreplace"]

_RENAME_EXCL = 0x00000004  # <stdio.h>: renamex_np fails with EEXIST where the target exists (macOS 10.12)


def rename_noreplace(source: bytes, target: bytes) -> None:
    """Rename ``source`` to ``target`` unless ``target`` exists (EEXIST), in one step: ``renamex_np``
    with RENAME_EXCL, macOS's counterpart of Linux's renameat2(RENAME_NOREPLACE)."""
    libsystem = ctypes.CDLL(None, use_errno=True)  # libSystem's symbols are global in every process
    libsystem.renamex_np.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_uint]
    if libsystem.renamex_np(source, target, _RENAME_EXCL) != 0:
        err = ctypes.get_errno() or errno.EIO
        raise OSError(err, os.strerror(err))
