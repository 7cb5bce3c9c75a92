"""Undo: what each command changed in the trees it may write, kept so that it can be listed and put back.

Recording (the supervisor): before a call that may change a path is answered (``linux/undo_calls``
names the paths of a trapped call), the state of that path is recorded once per command: absent (a
creation: nothing to keep), a regular file (its content kept in the store: a hard link when the call takes
the name away from the inode, ``unlink``, else a reflink or a copy), a symlink (its target), a directory
(its mode and times). When the command's last process is gone, the state each path was left in is
fingerprinted (type, inode, size, mtime, ctime, mode), so that ``undo`` can tell the command's own result
from a later change by another command or by hand.

Undoing (``nono-supervisor undo``, the user's own process): every path is put back in the reverse order
of its first change, through a pin of one of the trees the command could write and ``open_beneath``
walks (no symlink, no magic link, never out of the tree), with single-component ``*at`` calls. The undo
is itself recorded as a command of the session, so undoing it redoes.

The store (``paths.undo_dir``) is sealed from every command and from the agent, read included: it holds
old contents, and ``undo`` writes what a record says with the user's powers.
"""

from __future__ import annotations

import errno
import fcntl
import fnmatch
import itertools
import json
import os
import secrets
import stat
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

from nono_supervisor import paths
from nono_supervisor.audit import log_files
from nono_supervisor.errors import NonoError
from nono_supervisor.paths import under

__all__ = [
    "Limits",
    "Store",
    "CommandLog",
    "Journal",
    "Change",
    "UndoRefused",
    "changes",
    "undo",
    "fingerprint",
]

MiB = 1 << 20
# What a session may keep by default: old contents are kept until the cap is reached (what comes later is
# listed as not kept), and for a day (a session's store older than that is removed at the next start).
DEFAULT_MAX_BYTES = 1024 * MiB
DEFAULT_MAX_AGE = 24 * 3600.0
# Large files and ignored trees (build output, dependencies, caches) may fill at most this share of the
# cap, so that one `rm -rf node_modules` cannot crowd out the sources kept after it.
BULK_SHARE = 0.5
LARGE_FILE = 64 * MiB
IGNORED_NAMES = frozenset(
    {"node_modules", "__pycache__", ".venv", ".tox", ".mypy_cache", ".pytest_cache", ".ruff_cache"}
)
_FICLONE = 0x40049409  # ioctl(dst, FICLONE, src): a reflink where the filesystem shares extents
_TEMP_PREFIX = ".nono-undo-"
_O_READ_LEAF = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC
AGENT = "agent"
_SETID = stat.S_ISUID | stat.S_ISGID
_LINE = json.JSONEncoder(separators=(",", ":")).encode  # one encoder: json.dumps makes one per call
_STRING = json.encoder.encode_basestring_ascii  # a JSON string, as _LINE writes one


class UndoRefused(NonoError):
    """An undo that was not done, with the one line that says why."""


@dataclass(frozen=True)
class Limits:
    max_bytes: int = DEFAULT_MAX_BYTES
    max_age: float = DEFAULT_MAX_AGE


def fingerprint(path: str) -> list[int] | None:
    """What a path is now, to the nanosecond: changed by anyone since, it differs (ctime moves on every
    change of content, mode, owner or name; the inode on a replacement)."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return [
        stat.S_IFMT(st.st_mode),
        st.st_ino,
        st.st_size,
        st.st_mtime_ns,
        st.st_ctime_ns,
        stat.S_IMODE(st.st_mode),
    ]


# ---- the store -------------------------------------------------------------------------------------------


class Store:
    """One session's store: ``journal.jsonl`` (one record a line, appended) and ``blobs/`` (old contents).

    Written by the supervisor while commands run and by ``undo`` (its own record); both append whole lines
    with O_APPEND, so records never interleave."""

    def __init__(self, directory: Path, limits: Limits = Limits()) -> None:
        directory.mkdir(mode=0o700, parents=True, exist_ok=True)
        (directory / "blobs").mkdir(mode=0o700, exist_ok=True)
        self.dir = directory
        self.limits = limits
        self.blobs = os.open(directory / "blobs", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        self._lock = threading.Lock()
        self._names = itertools.count()
        self._kept: deque[tuple[float, str, int]] = (
            deque()
        )  # (when, blob, bytes), oldest first: the age limit
        self.used = sum(entry.stat().st_size for entry in os.scandir(directory / "blobs"))
        journal = directory / "journal.jsonl"
        self._journal = os.open(journal, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)

    def close(self) -> None:
        for name in ("blobs", "_journal"):
            fd = getattr(self, name)
            if fd >= 0:
                os.close(fd)
                setattr(self, name, -1)

    # records

    def append(self, *records: dict | str) -> None:
        """``records`` as whole lines, in one write (O_APPEND: no line is torn, whoever else appends). A
        record is a dict, or the members of one already encoded (``CommandLog._created``)."""
        now = time.time()
        stamp = '{"t":' + _LINE(now) + ","
        lines = "".join(
            (stamp + record + "}" if isinstance(record, str) else _LINE({"t": now, **record})) + "\n"
            for record in records
        ).encode()
        if self._journal >= 0 and lines:  # closed: the session is over, a last command's end is not recorded
            os.write(self._journal, lines)

    # contents

    def capture(self, dirfd: int, name: str, *, removing: bool, bulk: Callable[[], str]) -> dict:
        """The state of ``name`` in the directory ``dirfd`` (our fd), its content kept if it is a file.
        ``removing``: the call takes the name away from the inode (a hard link keeps it, no copy).
        ``bulk()``: why the file counts against the bulk share (an ignored tree), or "" (asked only for a
        file: git's index.lock, absent, paid a relpath and the .gitignore patterns per command)."""
        try:
            st = os.stat(name, dir_fd=dirfd, follow_symlinks=False) if name else os.fstat(dirfd)
        except FileNotFoundError:
            return {"kind": "absent"}
        state = {"mode": stat.S_IMODE(st.st_mode), "atime_ns": st.st_atime_ns, "mtime_ns": st.st_mtime_ns}
        if stat.S_ISDIR(st.st_mode):
            return {"kind": "dir", "ino": st.st_ino, **state}
        if stat.S_ISLNK(st.st_mode):
            return {"kind": "symlink", "target": os.readlink(name, dir_fd=dirfd), **state}
        if not stat.S_ISREG(st.st_mode):
            return {"kind": "other", "lost": "not a regular file, directory or symlink", **state}
        blob, lost = self._keep(
            dirfd, name, st, removing, bulk() or ("a large file" if st.st_size > LARGE_FILE else "")
        )
        return {"kind": "file", "ino": st.st_ino, "size": st.st_size, "blob": blob, "lost": lost, **state}

    def _keep(
        self, dirfd: int, name: str, st: os.stat_result, removing: bool, bulk: str
    ) -> tuple[str | None, str]:
        lost = self.reserve(st.st_size, bulk)
        if lost:
            return None, lost
        blob = f"{os.getpid()}-{time.monotonic_ns()}-{next(self._names)}"
        try:
            if removing and st.st_nlink == 1 and self._link(dirfd, name, blob, st):
                return self.kept_now(blob, st.st_size), ""
            self._copy(dirfd, name, blob, st)
        except OSError as e:
            self._release(st.st_size)
            _unlink_quietly(blob, self.blobs)
            return None, f"could not be read ({e.strerror or e})"
        return self.kept_now(blob, st.st_size), ""

    def kept_now(self, blob: str, size: int) -> str:
        """``blob`` (its ``size`` reserved) is kept from now: the time-ordered list the store trims."""
        with self._lock:
            self._kept.append((time.time(), blob, size))
        return blob

    def reserve(self, size: int, bulk: str) -> str:
        """Room for ``size`` bytes, or why not ("": reserved); ``bulk`` names a bulky file, kept only
        within the bulk share of the cap."""
        cap = self.limits.max_bytes
        with self._lock:
            if self.used + size > cap:
                return f"over the store's cap of {cap // MiB} MiB"
            if bulk and self.used + size > cap * BULK_SHARE:
                return f"{bulk}, kept only within {int(BULK_SHARE * 100)}% of the {cap // MiB} MiB cap"
            self.used += size
        return ""

    def budget(self) -> int:
        """What the C fast path may keep by hard link before its next drain: what fits under the bulk share
        (it cannot tell an ignored tree; ``CommandLog.kept`` settles each file exactly)."""
        with self._lock:
            return max(0, min(int(self.limits.max_bytes * BULK_SHARE) - self.used, 256 * MiB))

    def _release(self, size: int) -> None:
        with self._lock:
            self.used -= size

    def _link(self, dirfd: int, name: str, blob: str, st: os.stat_result) -> bool:
        """The file's inode given a second name in the store (the call is about to take its first): no
        copy. False where a link cannot be made (another filesystem, protected_hardlinks): copy instead."""
        try:
            os.link(name, blob, src_dir_fd=dirfd, dst_dir_fd=self.blobs, follow_symlinks=False)
        except OSError:
            return False
        kept = os.stat(blob, dir_fd=self.blobs, follow_symlinks=False)
        if (kept.st_dev, kept.st_ino) != (st.st_dev, st.st_ino):  # swapped meanwhile: not what was recorded
            os.unlink(blob, dir_fd=self.blobs)
            return False
        return True

    def _copy(self, dirfd: int, name: str, blob: str, st: os.stat_result) -> None:
        source = os.open(name, _O_READ_LEAF, dir_fd=dirfd)
        try:
            opened = os.fstat(source)
            if (opened.st_dev, opened.st_ino) != (st.st_dev, st.st_ino) or not stat.S_ISREG(opened.st_mode):
                raise OSError(errno.ESTALE, "replaced while it was kept")
            target = os.open(
                blob, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600, dir_fd=self.blobs
            )
            try:
                copy_content(source, target)
            finally:
                os.close(target)
        finally:
            os.close(source)

    def prune(self) -> None:
        """Old contents past the age limit are given up (their paths then say "not kept")."""
        horizon = time.time() - self.limits.max_age
        old = []
        with self._lock:  # oldest first: what is past the horizon is at the front (once per command)
            while self._kept and self._kept[0][0] < horizon:
                old.append(self._kept.popleft())
        for _when, blob, size in old:
            _unlink_quietly(blob, self.blobs)
            self._release(size)
        if old:
            self.append({"event": "expired", "blobs": [blob for _w, blob, _s in old]})


def copy_content(source: int, target: int) -> None:
    """All of ``source`` into ``target``: a reflink where the filesystem has them, else in-kernel copies."""
    try:
        fcntl.ioctl(target, _FICLONE, source)
        return
    except OSError:
        pass
    while True:
        try:
            done = os.copy_file_range(source, target, 1 << 30)
        except OSError as e:
            if e.errno not in (errno.EXDEV, errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
                raise
            done = -1
        if done == 0:
            return
        if done < 0:
            break
    while chunk := os.read(source, 1 << 20):
        os.write(target, chunk)


def _unlink_quietly(name: str, dirfd: int) -> None:
    try:
        os.unlink(name, dir_fd=dirfd)
    except OSError:
        pass


def prune_sessions(undo_dir: Path, max_age: float, keep: str) -> None:
    """Remove other sessions' stores older than ``max_age`` whose supervisor is gone."""
    horizon = time.time() - max_age
    try:
        entries = list(os.scandir(undo_dir))
    except OSError:
        return
    for entry in entries:
        if entry.name == keep or not entry.is_dir(follow_symlinks=False):
            continue
        try:
            meta = json.loads((Path(entry.path) / "session.json").read_text())
            journal = Path(entry.path) / "journal.jsonl"
            newest = journal.stat().st_mtime if journal.exists() else entry.stat().st_mtime
        except (OSError, ValueError):
            continue
        if newest < horizon and not _alive(meta.get("pid", 0)):
            import shutil

            shutil.rmtree(entry.path, ignore_errors=True)


def _alive(pid: int) -> bool:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


# ---- one command's record --------------------------------------------------------------------------------


@dataclass(eq=False)
class CommandLog:
    """The changes of one command (or of the agent, or of an undo), in one store.

    ``roots``: the real paths of the trees it may write (its changes elsewhere are not recorded and never
    restored). ``allowed(path)``: the policy lets it read and write the path (never-grantable and denied
    files are never kept). The state of a path is recorded at the first change only. A command that changes
    nothing writes nothing: its begin record goes into the journal with its first change (``_write``), and
    a file Python saw it make waits (``_made``) for the next record, the drainer's next pass or the end,
    where one that is gone again is dropped (git's index.lock, made and unlinked at every ``git status``)."""

    store: Store
    command: str
    roots: tuple[str, ...]
    allowed: Callable[[str], bool] = lambda _path: True
    skip: tuple[str, ...] = ()
    seen: set[str] = field(default_factory=set)
    lexical: set[str] = field(default_factory=set)
    _ignores: dict[str, list[str]] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _ended: bool = False
    _begin: dict | None = None  # the begin record, until the first change writes it
    _made: list[dict] = field(default_factory=list)  # records of files Python saw it make, not written yet
    _renamed: bool = False  # a rename was recorded: what it made may have moved with a directory

    def begin(self, **extra: object) -> CommandLog:
        self.store.prune()
        self._begin = {"event": "begin", "command": self.command, "roots": list(self.roots), **extra}
        return self

    def _write(self, *records: dict) -> None:
        """Append ``records``, after the begin record if they are the command's first and after the records
        waiting in ``_made`` (in order, in the same write)."""
        with self._lock:  # held over the write: no record of this command overtakes an earlier one
            begin, self._begin = self._begin, None
            made, self._made = self._made, []
            self._renamed = self._renamed or any("to" in r for r in records)
            self.store.append(*([begin] if begin else []), *made, *records)

    def flush(self) -> None:
        """The drainer's pass: what waits in ``_made`` goes into the journal (``changes`` of a running
        command lags by a pass at most)."""
        if self._made:
            self._write()

    def covers(self, path: str) -> bool:
        return any(under(path, root) for root in self.roots) and not any(under(path, s) for s in self.skip)

    def known(self, lexical: str) -> bool:
        """A path as read that this command has already recorded (the cheap check before a pin; whether it
        is inside the trees is decided on the pin's real path: a symlinked name may lead into them)."""
        return lexical in self.lexical

    def before(self, dirfd: int, name: str, path: str, op: str, lexical: str = "", to: str = "") -> None:
        """Record ``path`` (``name`` in our directory fd ``dirfd``) before ``op`` changes it."""
        with self._lock:
            if lexical:
                self.lexical.add(lexical)
            again = path in self.seen
            fresh = not again and self.covers(path) and self.allowed(path)
            if fresh:
                self.seen.add(path)
        if again and to:  # renamed after a first change: ``changes`` says where it went
            self._write({"event": "moved", "command": self.command, "path": path, "to": to})
        if not fresh:
            return
        # unlink and a rename over take the name from the inode: a hard link keeps it without a copy
        removing = op in ("unlink", "replace")
        state = self.store.capture(dirfd, name, removing=removing, bulk=lambda: self._bulk(path))
        if state["kind"] == "absent" and not to:
            with self._lock:
                self._made.append(self._change(path, op, state))
            return
        self._write(self._change(path, op, state, to))

    def drained(self, items: list[bytes]) -> None:
        """What the C fast path recorded (``Loop.created``: b'C' + path, a file it saw made; b'U' + path,
        blob, b'mode atime_ns mtime_ns size ino', a file it kept by hard link before an unlink; b'D' + path,
        b'mode atime_ns mtime_ns ino', a directory before its rmdir), in order, in one write (npm install
        drains a thousand at a time)."""
        records: list[dict | str] = []
        i = 0
        while i < len(items):
            path = os.fsdecode(items[i][1:])
            if items[i][:1] == b"U":
                record = self._kept(path, os.fsdecode(items[i + 1]), items[i + 2].decode())
                i += 3
            elif items[i][:1] == b"D":
                record = self._dir_kept(path, items[i + 1].decode())
                i += 2
            else:
                record = self._created(path)
                i += 1
            if record is not None:
                records.append(record)
        if records:
            self._write(*records)

    def _created(self, path: str) -> str | None:
        """A file the command created where the kernel alone was asked (the C fast path saw it absent):
        nothing is kept, and Landlock let it be made, so the policy's check (``allowed``) is not needed.
        Nor ``covers``, for this and the two below: the fast path queues only what lies in ``roots`` and
        not in ``skip`` (``Loop.keep`` was given them). Encoded here: the most common record (npm install
        drains a thousand)."""
        with self._lock:
            if path in self.seen:
                return None
            self.seen.add(path)
            self.lexical.add(path)
        where = f'"command":{_STRING(self.command)},"path":{_STRING(path)}'
        return f'"event":"change",{where},"op":"create","before":{{"kind":"absent"}}'

    def _kept(self, path: str, blob: str, fields: str) -> dict | None:
        """A file the C fast path kept by hard link (``blob``) before the command unlinked it: recorded, or
        given up (already recorded, not the command's to keep, over the cap)."""
        mode, atime, mtime, size, ino = (int(v, 8 if i == 0 else 10) for i, v in enumerate(fields.split()))
        fresh = self._first_record(path)
        if not fresh:
            _unlink_quietly(blob, self.store.blobs)
            return None
        lost = self.store.reserve(size, self._bulk(path) or ("a large file" if size > LARGE_FILE else ""))
        if lost:
            _unlink_quietly(blob, self.store.blobs)
        else:
            self.store.kept_now(blob, size)
        state = {"mode": mode, "atime_ns": atime, "mtime_ns": mtime}
        return self._change(
            path,
            "unlink",
            {"kind": "file", "ino": ino, "size": size, "blob": None if lost else blob, "lost": lost, **state},
        )

    def _first_record(self, path: str) -> bool:
        """Whether ``path`` is recorded now for the first time, and is the command's to keep (marked seen
        if so): what the C fast path queued of a path recorded before is given up."""
        with self._lock:
            fresh = path not in self.seen and self.allowed(path)
            if fresh:
                self.seen.add(path)
                self.lexical.add(path)
        return fresh

    def _dir_kept(self, path: str, fields: str) -> dict | None:
        """A directory the C fast path saw before the command removed it: its mode and times, as
        ``Store.capture`` has them (the files it held were queued before it)."""
        mode, atime, mtime, ino = (int(v, 8 if i == 0 else 10) for i, v in enumerate(fields.split()))
        fresh = self._first_record(path)
        if not fresh:
            return None
        state = {"kind": "dir", "ino": ino, "mode": mode, "atime_ns": atime, "mtime_ns": mtime}
        return self._change(path, "rmdir", state)

    def _change(self, path: str, op: str, before: dict, to: str = "") -> dict:
        record = {"event": "change", "command": self.command, "path": path, "op": op, "before": before}
        if to:
            record["to"] = to
        return record

    def finish(self) -> None:
        """The command's last process is gone: how it left each path it changed (nothing if none). A file
        it made that is gone again is dropped unless a rename may have carried it (``_carried``): its
        record would say nothing to ``changes`` or ``undo``."""
        with self._lock:
            if self._ended:
                return
            self._ended = True
            after = {p: fingerprint(p) for p in sorted(self.seen)}
            if not self._renamed:
                gone = {r["path"] for r in self._made if after.get(r["path"]) is None}
                self._made = [r for r in self._made if r["path"] not in gone]
                after = {p: state for p, state in after.items() if p not in gone}
            if self._begin is not None and not self._made:
                return  # nothing was written, nothing waits: nothing to end
        self._write({"event": "end", "command": self.command, "after": after})

    def _bulk(self, path: str) -> str:
        for root in self.roots:
            if not under(path, root):
                continue
            relative = path[len(root) :].lstrip("/")  # both normalised: no relpath (a drain asks per file)
            parts = relative.split("/")
            for part in parts[:-1]:
                if part in IGNORED_NAMES:
                    return f"inside {part}/"
            for pattern in self._gitignore(root):
                if _ignored(relative, parts, pattern):
                    return f".gitignore'd ({pattern})"
        return ""

    def _gitignore(self, root: str) -> list[str]:
        """The simple patterns of the tree's top .gitignore (no negations), read once per command."""
        patterns = self._ignores.get(root)
        if patterns is None:
            patterns = []
            try:
                with open(os.path.join(root, ".gitignore"), encoding="utf-8", errors="replace") as f:
                    for line in f:
                        line = line.strip()
                        if line and not line.startswith(("#", "!")):
                            patterns.append(line.rstrip("/"))
            except OSError:
                pass
            self._ignores[root] = patterns
        return patterns


def _ignored(relative: str, parts: list[str], pattern: str) -> bool:
    if "/" in pattern.strip("/"):
        anchored = pattern.lstrip("/")
        return fnmatch.fnmatch(relative, anchored) or relative.startswith(anchored + "/")
    pattern = pattern.lstrip("/")
    return any(fnmatch.fnmatch(part, pattern) for part in parts)


# ---- reading a store: what each command changed ---------------------------------------------------------


@dataclass
class _Command:
    id: str
    order: int  # position of its begin record
    roots: tuple[str, ...] = ()
    of: str = ""  # for an undo: the command it undid
    changes: dict[str, tuple[int, dict]] = field(default_factory=dict)  # path -> (position, record)
    after: dict[str, list[int] | None] | None = None  # None: still running (or its supervisor died)
    moves: dict[str, str] = field(default_factory=dict)  # path -> where its last rename took it
    last: int = -1  # position of its last change record


@dataclass(frozen=True)
class Change:
    path: str
    change: str  # created | modified | deleted | renamed | re-moded | replaced
    to: str = ""
    lost: str = ""  # why the old content was not kept ("": kept, or nothing to keep)

    def to_json(self) -> dict:
        return {k: v for k, v in self.__dict__.items() if v}


class Journal:
    """A session's store as read back (by ``changes`` and ``undo``)."""

    def __init__(self, directory: Path) -> None:
        self.dir = directory
        try:
            self.meta = json.loads((directory / "session.json").read_text())
        except (OSError, ValueError):
            raise UndoRefused(f"no undo store for this session at {directory}") from None
        self.session = self.meta.get("session", directory.name)
        self.commands: dict[str, _Command] = {}
        self.expired: set[str] = set()
        try:
            lines = (directory / "journal.jsonl").read_bytes().splitlines()
        except FileNotFoundError:
            lines = []
        for position, line in enumerate(lines):
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a torn last line (the supervisor was killed mid-write): nothing to act on
            self._add(position, record)

    def _add(self, position: int, record: dict) -> None:
        event, name = record.get("event"), str(record.get("command", ""))
        if event == "expired":
            self.expired.update(record.get("blobs", []))
            return
        if event == "begin":
            roots = tuple(os.path.normpath(r) for r in record.get("roots", []) if isinstance(r, str))
            again = self.commands.get(name)  # run again (--prompt after's retry): one command, both runs
            if again is not None:
                again.roots, again.after = tuple(dict.fromkeys(again.roots + roots)), None
            else:
                self.commands[name] = _Command(name, position, roots, str(record.get("of", "")))
            return
        command = self.commands.get(name)
        if command is None:
            return
        if event == "change" and isinstance(record.get("path"), str):
            command.changes.setdefault(record["path"], (position, record))
            command.last = position
        elif event == "end" and isinstance(record.get("after"), dict):
            command.after = record["after"]
        elif event == "moved" and isinstance(record.get("to"), str):
            command.moves[str(record.get("path"))] = record["to"]

    @classmethod
    def for_command(cls, command: str | None, session: str | None, env=os.environ) -> Journal:
        """The store of ``session``, else of the command id's session (``SESSION-N``), else the newest."""
        base = paths.undo_dir(env)
        name = session or (command.rsplit("-", 1)[0] if command and "-" in command else None)
        if name is None:
            stores = [p for p in base.glob("*/journal.jsonl")] if base.is_dir() else []
            if not stores:
                raise UndoRefused("no command of any session has been recorded (undo is off, or nothing ran)")
            name = max(stores, key=lambda p: p.stat().st_mtime).parent.name
        if "/" in name or name in (".", ".."):
            raise UndoRefused(f"{name}: not a session id")
        return cls(base / name)

    def running(self, command: _Command) -> bool:
        return command.after is None and command.id != AGENT and _alive(self.meta.get("pid", 0))

    def pick(self, command: str | None) -> _Command:
        if command is not None:
            found = self.commands.get(command) or self._unchanged(command)
            if found is None:
                raise UndoRefused(f"{command}: no such command in session {self.session}")
            return found
        changed = [c for c in self.commands.values() if c.changes and changes(self, c)]
        if not changed:
            raise UndoRefused(f"no command of session {self.session} changed anything")
        return max(changed, key=lambda c: c.last)

    def _unchanged(self, command: str) -> _Command | None:
        """A command of the audit log that changed nothing (the journal has no record of it: none is
        written for such a command, ``CommandLog._write``), or None. Read for an id not in the journal."""
        audit = self.meta.get("audit_log")
        if not audit:
            return None
        started = ended = False
        needle = json.dumps(command)
        for path in log_files(Path(audit)):
            try:
                with open(path, "rb") as f:
                    for line in f:
                        if needle.encode() not in line:
                            continue
                        try:
                            record = json.loads(line)
                        except ValueError:
                            continue
                        if record.get("command") == command:
                            started = started or record.get("event") == "start"
                            ended = ended or record.get("event") == "exit"
            except OSError:
                continue
        if not started:
            return None
        return _Command(command, -1, after={} if ended or not _alive(self.meta.get("pid", 0)) else None)


def _after(journal: Journal, command: _Command, path: str) -> list[int] | None:
    if command.after is not None and path in command.after:
        return command.after[path]
    return fingerprint(path)  # running (or the agent): as it is now


def changes(journal: Journal, command: _Command) -> list[Change]:
    """What the command did to each path it touched, by its first state and the state it left."""
    out = []
    for path, (_position, record) in sorted(command.changes.items(), key=lambda item: item[1][0]):
        before, after = record.get("before", {}), _after(journal, command, path)
        kind = before.get("kind")
        lost = _lost(journal, before)
        if kind == "absent":
            carried = _carried(command, path) if after is None else None
            if after is not None or (carried and fingerprint(carried) is not None):
                out.append(Change(path, "created"))  # carried: back here once the rename is undone
            continue
        if after is None:
            to = command.moves.get(path) or record.get("to", "")
            out.append(Change(path, "renamed" if to else "deleted", to, lost))
            continue
        fmt = {"dir": stat.S_IFDIR, "symlink": stat.S_IFLNK, "file": stat.S_IFREG}.get(kind)
        if after[0] != fmt:
            out.append(Change(path, "replaced", lost=lost))
        elif kind == "file" and after[1:4] != [before.get("ino"), before.get("size"), before.get("mtime_ns")]:
            out.append(Change(path, "modified", lost=lost))
        elif kind == "symlink" and after[3] != before.get("mtime_ns"):
            out.append(Change(path, "modified"))
        elif after[5] != before.get("mode"):
            out.append(Change(path, "re-moded"))
    return out


def _carried(command: _Command, path: str) -> str:
    """Where ``path`` went with a directory above it that the command renamed (``mkdir d && echo x > d/f
    && mv d e``: d/f is e/f), or "". Undo renames the directory back first (its record is later), then
    removes what the command made in it."""
    node = path
    while (parent := os.path.dirname(node)) != node:
        node = parent
        entry = command.changes.get(node)
        to = command.moves.get(node) or (entry[1].get("to", "") if entry else "")
        if to:
            return to + path[len(node) :]
    return ""


def _lost(journal: Journal, before: dict) -> str:
    if before.get("kind") != "file":
        return before.get("lost", "")
    if before.get("lost"):
        return before["lost"]
    if before.get("blob") in journal.expired:
        return "older than the store's age limit"
    return ""


# ---- undo ------------------------------------------------------------------------------------------------


@dataclass
class Outcome:
    undo_id: str
    restored: list[str] = field(default_factory=list)
    not_restored: list[tuple[str, str]] = field(default_factory=list)  # (path, why)


def undo(
    journal: Journal,
    command: _Command,
    *,
    force: bool = False,
    protected: Iterable[str] = (),
    limits: Limits = Limits(),
) -> Outcome:
    """Put back every path ``command`` changed; refused (UndoRefused, one line) while it runs, and where a
    later command or the human changed a path since, unless ``force``. Never acts outside the command's
    trees, inside ``protected``, or through a symlink."""
    if journal.running(command):
        raise UndoRefused(f"{command.id} is still running: undo it once it has ended")
    listed = changes(journal, command)
    if not listed:
        raise UndoRefused(f"{command.id} changed nothing that can be undone")
    effective = {c.path for c in listed}
    if not force:
        later = _changed_since(journal, command, effective)
        if later:
            shown = ", ".join(later[:10]) + (f" and {len(later) - 10} more" if len(later) > 10 else "")
            raise UndoRefused(
                f"{command.id}: changed since by a later command or by hand: {shown};"
                " --force takes the older state"
            )
    protected = tuple(os.path.normpath(p) for p in protected)
    store = Store(journal.dir, limits)
    undo_id = f"{journal.session}-u{secrets.token_hex(3)}"
    log = CommandLog(store, undo_id, command.roots).begin(of=command.id)
    outcome = Outcome(undo_id)
    trees: dict[str, int] = {}
    try:
        records = sorted(
            ((pos, rec) for path, (pos, rec) in command.changes.items() if path in effective),
            key=lambda item: -item[0],
        )
        moved_back: set[str] = set()
        dirs: list[tuple[str, dict]] = []
        for _position, record in records:
            path = record["path"]
            if path in moved_back:
                continue
            why = _outside(path, command.roots, protected)
            if why:
                outcome.not_restored.append((path, why))
                continue
            try:
                root = next(r for r in sorted(command.roots, key=len, reverse=True) if under(path, r))
                done = _restore(
                    journal, store, log, _tree(trees, root), root, path, record, command, moved_back
                )
            except OSError as e:
                outcome.not_restored.append((path, e.strerror or str(e)))
                continue
            if done is True:
                outcome.restored.append(path)
                if record["before"].get("kind") == "dir":
                    dirs.append((path, record["before"]))
            elif done:
                outcome.not_restored.append((path, done))
        for path, before in dirs:  # a directory's times once what it holds is back
            root = next(r for r in sorted(command.roots, key=len, reverse=True) if under(path, r))
            try:
                _set_dir_times(_tree(trees, root), root, path, before)
            except OSError:
                pass
    finally:
        log.finish()
        for fd in trees.values():
            os.close(fd)
        store.close()
    return outcome


def _changed_since(journal: Journal, command: _Command, effective: set[str]) -> list[str]:
    found = []
    for path in sorted(effective):
        position = command.changes[path][0]
        other = any(
            path in c.changes and c.changes[path][0] > position and c.id != command.id
            for c in journal.commands.values()
        )
        if other or (command.after is not None and fingerprint(path) != command.after.get(path)):
            found.append(path)
    return found


def _outside(path: str, roots: tuple[str, ...], protected: tuple[str, ...]) -> str:
    """Why undo will not touch ``path`` (a record names it, but no record is trusted that far), or ""."""
    if not path.startswith("/") or os.path.normpath(path) != path or "/../" in path + "/":
        return "not a plain absolute path"
    if not any(under(path, root) and path != root for root in roots):
        return "outside the trees the command could write"
    if any(under(path, p) for p in protected):
        return "never grantable"
    if os.path.basename(path).startswith(_TEMP_PREFIX):
        return "an undo's own temporary name"
    return ""


def _tree(trees: dict[str, int], root: str) -> int:
    fd = trees.get(root)
    if fd is None:
        fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        if os.readlink(f"/proc/self/fd/{fd}") != root:  # the tree's own path now leads elsewhere
            os.close(fd)
            raise OSError(errno.ELOOP, f"{root} is no longer the tree it was")
        trees[root] = fd
    return fd


def _parent(tree: int, root: str, path: str) -> tuple[int, str]:
    """Our fd of ``path``'s directory, walked from the tree's pin without a symlink, and the last name."""
    from nono_supervisor.linux.resolve import open_beneath

    relative = os.path.relpath(os.path.dirname(path), root)
    fd = os.dup(tree) if relative == "." else open_beneath(tree, relative)
    return fd, os.path.basename(path)


def _restore(journal, store, log, tree, root, path, record, command, moved_back) -> bool | str:
    """One path back to its first recorded state. True: done; a string: why not."""
    before = record["before"]
    kind = before.get("kind")
    fd, name = _parent(tree, root, path)
    try:
        current = _lstat(fd, name)
        if kind == "absent":
            if current is None:
                return True
            source = _moved_from(command, path, current)
            if source is not None and not _outside(source, command.roots, ()):
                # a directory the command moved here: moved back whole (what it holds goes with it)
                log.before(fd, name, path, "rename", to=source)
                back, back_name = _parent(tree, root, source)
                try:
                    log.before(back, back_name, source, "rename")
                    os.rename(name, back_name, src_dir_fd=fd, dst_dir_fd=back)
                finally:
                    os.close(back)
                moved_back.add(source)
                return True
            log.before(fd, name, path, "unlink")
            return _remove(fd, name, current)
        if kind == "file":
            blob = before.get("blob")
            lost = _lost(journal, before)
            if lost or not blob:
                return f"not kept: {lost or 'no content recorded'}"
            log.before(fd, name, path, "rename")
            return _put(fd, name, current, lambda tmp: _write_file(store, blob, fd, tmp, before))
        if kind == "symlink":
            log.before(fd, name, path, "rename")
            return _put(fd, name, current, lambda tmp: _write_link(fd, tmp, before))
        if kind == "dir":
            log.before(fd, name, path, "mkdir")
            if current is not None and not stat.S_ISDIR(current.st_mode):
                os.unlink(name, dir_fd=fd)
                current = None
            if current is None:
                os.mkdir(name, 0o700, dir_fd=fd)
            dfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
            try:
                os.fchmod(dfd, before["mode"])
            finally:
                os.close(dfd)
            return True
        return f"not kept: {before.get('lost') or kind}"
    finally:
        os.close(fd)


def _lstat(dirfd: int, name: str) -> os.stat_result | None:
    try:
        return os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return None


def _moved_from(command: _Command, path: str, current: os.stat_result) -> str | None:
    """The source of a directory the command renamed to ``path``, if ``path`` still is that directory."""
    if not stat.S_ISDIR(current.st_mode):
        return None
    for source, (_position, record) in command.changes.items():
        before = record.get("before", {})
        to = command.moves.get(source) or record.get("to")
        if to == path and before.get("kind") == "dir" and before.get("ino") == current.st_ino:
            return source
    return None


def _remove(dirfd: int, name: str, current: os.stat_result) -> bool | str:
    if stat.S_ISDIR(current.st_mode):
        try:
            os.rmdir(name, dir_fd=dirfd)
        except OSError as e:
            if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
                return "kept: the directory holds what the command did not make"
            raise
        return True
    os.unlink(name, dir_fd=dirfd)
    return True


def _put(dirfd: int, name: str, current: os.stat_result | None, make: Callable[[str], None]) -> bool | str:
    """Make the old object under a temporary name beside ``name``, then rename it over (atomic)."""
    tmp = f"{_TEMP_PREFIX}{secrets.token_hex(6)}"
    make(tmp)
    try:
        if current is not None and stat.S_ISDIR(current.st_mode):
            os.rmdir(name, dir_fd=dirfd)  # a directory the command made in its place (emptied before)
        os.rename(tmp, name, src_dir_fd=dirfd, dst_dir_fd=dirfd)
    except OSError as e:
        _unlink_quietly(tmp, dirfd)
        if e.errno in (errno.ENOTEMPTY, errno.EEXIST):
            return "kept: a directory holding what the command did not make is in its place"
        raise
    return True


def _write_file(store: Store, blob: str, dirfd: int, tmp: str, before: dict) -> None:
    source = os.open(blob, _O_READ_LEAF, dir_fd=store.blobs)
    try:
        if not stat.S_ISREG(os.fstat(source).st_mode):
            raise OSError(errno.EINVAL, "the kept content is not a file")
        target = os.open(
            tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600, dir_fd=dirfd
        )
        try:
            copy_content(source, target)
            os.fchmod(target, before["mode"] & ~_SETID)  # never a setuid file, whatever a record says
            os.utime(target, ns=(before["atime_ns"], before["mtime_ns"]))
        finally:
            os.close(target)
    finally:
        os.close(source)


def _write_link(dirfd: int, tmp: str, before: dict) -> None:
    os.symlink(before["target"], tmp, dir_fd=dirfd)
    os.utime(tmp, ns=(before["atime_ns"], before["mtime_ns"]), dir_fd=dirfd, follow_symlinks=False)


def _set_dir_times(tree: int, root: str, path: str, before: dict) -> None:
    fd, name = _parent(tree, root, path)
    try:
        dfd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=fd)
        try:
            os.utime(dfd, ns=(before["atime_ns"], before["mtime_ns"]))
        finally:
            os.close(dfd)
    finally:
        os.close(fd)
