"""A deny holds for the life of the session (DESIGN.md invariant 12), not only for what starts after it.

A deny names a path. Landlock pins each rule of a command's plan to the inode it was opened on when the
command started, its domain never changes, and a command's plain opens are left to it (issue 13). When
the node a deny names later lies inside what a running domain grants, the kernel lets that command read
it: the human's ``stow`` makes ``~/.config/gh`` a symlink into the project and ``gh auth login`` writes the
token there; ``~/.cache/huggingface`` becomes a symlink to ``./x`` and ``huggingface-cli login`` writes
``token`` into the project. (Commands cannot make such names themselves: ``NotifyLoop._decide_name``.)

So the supervisor watches (inotify) every directory whose entries the resolution of a denied path reads:
its ancestors, and the directories its symlinks lead through. When an entry looked up there changes
(made, removed, renamed; the churn of other entries of ~ or /tmp is ignored), the denied paths that look
it up are resolved again (a few lstats each, not the whole list) and
1. every running sandbox that *could reach* such a node where it is now is acted on: one whose ruleset
   holds a rule, by inode as Landlock walks, on the node or on one of its ancestors (``_chain``: the
   nearest existing one for a node not made yet, the token written later). A command is **stopped** (its
   keeper kills the tree) with one line saying why, on its stderr and in the audit log; a sandbox whose
   loop sees every call (the agent) is **guarded** instead (``NotifyLoop.guard``: nothing is CONTINUEd any
   more, each open is decided on where the denied nodes are now);
2. when one leads elsewhere, the session's decisions move with it (``AccessIndex.relocate``): new
   commands, the ask-again path and every emulated open decide on where the nodes are now (new commands'
   Landlock plans follow by themselves: ``PlanCache`` notes the same lookups).
The window that remains is between the move and that evaluation: one inotify event, a wake and a
re-resolution (milliseconds); README "A deny holds for the session" says it.
"""

from __future__ import annotations

import ctypes
import errno
import os
import select
import signal
import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass

from nono_supervisor.linux import libc
from nono_supervisor.linux.landlock import NotedFs
from nono_supervisor.policy.profile import NEVER_GRANTABLE, Deny, Policy
from nono_supervisor.terminal.prompt import shown

__all__ = ["LateDenies"]

# include/uapi/linux/inotify.h
_IN_MOVED_FROM, _IN_MOVED_TO, _IN_CREATE, _IN_DELETE = 0x40, 0x80, 0x100, 0x200
_IN_DELETE_SELF, _IN_MOVE_SELF = 0x400, 0x800
_IN_Q_OVERFLOW, _IN_IGNORED, _IN_ONLYDIR = 0x4000, 0x8000, 0x01000000
_IN_NONBLOCK = os.O_NONBLOCK
_IN_CLOEXEC = os.O_CLOEXEC
# Every change of an entry a resolution reads: a name made, removed or renamed, or the directory itself
# moved or removed. Content and metadata do not change where a path leads.
_MASK = (
    _IN_MOVED_FROM | _IN_MOVED_TO | _IN_CREATE | _IN_DELETE | _IN_DELETE_SELF | _IN_MOVE_SELF | _IN_ONLYDIR
)
_EVENT = struct.Struct("=iIII")  # wd, mask, cookie, len (then len bytes of name)
# A directory that cannot be watched (the inotify limit, a mode) is looked at this often instead.
POLL_SECONDS = 0.5


def _chain(real: str) -> list[tuple[int, int]]:
    """(dev, ino) of ``real`` and of each ancestor, as the filesystem is now: where Landlock looks for a
    rule, walking the path up from the object. A node that does not exist yet starts from its nearest
    existing ancestor: what is written there later is covered by the same rules."""
    found = []
    node = real
    while True:
        try:
            st = os.lstat(node)
        except OSError:
            pass
        else:
            found.append((st.st_dev, st.st_ino))
        parent = os.path.dirname(node)
        if parent == node:
            return found
        node = parent


def _resolution(path: str) -> tuple[str, dict[str, set[str]]]:
    """Where ``path`` leads now, and the entries that resolution looks up, by directory (a symlink's
    target included: its own directories are read too): a change of any other entry cannot change where
    it leads. The Landlock compiler's notes of its own reads (``NotedFs``: what would change a cached plan)
    are these."""
    fs = NotedFs()
    real = fs.realpath(path)
    looked: dict[str, set[str]] = {}
    for entry in fs.identities:
        looked.setdefault(os.path.dirname(entry), set()).add(os.path.basename(entry))
    return real, looked


@dataclass(eq=False)
class _Tracked:
    """One running sandbox: what its ruleset holds and what to do when a denied node slips into it."""

    process: object
    policy: Policy
    inodes: dict[tuple[int, int], int]
    loop: object | None  # its NotifyLoop (None: --no-trap)
    guard: bool  # the loop sees every call: guard it instead of stopping
    notice: Callable[[str, dict], None] | None  # the command's report (line on its stderr, audit)
    acted: bool = False

    def ended(self) -> bool:
        """Its keeper was reaped (by whoever waits for it) and its loop, if any, has finished."""
        if getattr(self.process, "status", None) is None:
            return False
        return self.loop is None or not self.loop.is_alive()


class LateDenies:
    """The session's watch over where its denied paths lead, and the sandboxes running meanwhile: over the
    session's policy state (its denies, its access indexes), writing what it does to the audit log. One
    per session, started by ``session.services.Services.late_denies``."""

    def __init__(self, state, audit) -> None:
        self._state = state
        self._audit = audit
        self._lock = threading.Lock()
        self._watch_lock = threading.Lock()  # the watched directories (the watch thread and ``track``)
        self._tracked: list[_Tracked] = []
        self._denies: dict[str, Deny] = {}  # by path: every deny of every tracked policy
        self._resolved: dict[str, str] = {}  # denied path -> where it led when last resolved
        self._watched: dict[str, int] = {}  # directory -> watch descriptor
        # (watch descriptor, entry looked up there) -> the denied paths whose resolution looks it up
        self._lookers: dict[tuple[int, str], set[str]] = {}
        self._unwatched = (
            False  # a directory could not be watched: everything is looked at every POLL_SECONDS
        )
        self.generation = 0  # bumped before each evaluation (track's ``since``)
        self._fd = os.fdopen(_inotify_init(), "rb", buffering=0)
        self._wake_r, self._wake_w = os.pipe()
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="nono-latedeny", daemon=True)
        self._thread.start()

    def track(
        self,
        process,
        policy: Policy,
        inodes: dict[tuple[int, int], int],
        loop,
        *,
        guard: bool,
        notice: Callable[[str, dict], None] | None,
        since: int,
    ) -> None:
        """Watch over ``process`` (started on a plan fetched when ``generation`` was ``since``). A
        change noticed since then, or a deny not watched yet, is evaluated for it at once."""
        entry = _Tracked(process, policy, inodes, loop, guard, notice)
        with self._lock:
            self._tracked = [e for e in self._tracked if not e.ended()] + [entry]
        if self.watch(policy) or self.generation != since:
            self._check([entry])

    def watch(self, policy: Policy) -> bool:
        """Resolve and watch the denied paths of ``policy`` not watched yet (the server does it at start,
        so that its first command does not); whether there were any."""
        with self._lock:
            new = [d for d in policy.denies if d.path not in self._denies]
            for deny in new:
                self._denies[deny.path] = deny
        if new and self._resolve([d.path for d in new])[0]:
            self._state.relocate_denies()  # an index built before: the decisions may predate a move
        return bool(new)

    def close(self) -> None:
        self._closed = True
        try:
            os.write(self._wake_w, b"x")
        except OSError:
            pass
        self._thread.join(5)
        self._fd.close()
        os.close(self._wake_r)
        os.close(self._wake_w)

    # ---- the watch ------------------------------------------------------------------------------------

    def _run(self) -> None:
        while not self._closed:
            timeout = POLL_SECONDS if self._unwatched else None
            readable, _, _ = select.select([self._fd, self._wake_r], [], [], timeout)
            if self._closed:
                return
            changed = self._drain() if self._fd in readable else None
            if changed is not None and not changed:
                continue  # only entries no resolution looks up changed (the churn of ~ or /tmp)
            try:
                self.evaluate(changed)
            except Exception:  # noqa: BLE001 - the watch must outlive one bad evaluation
                if os.environ.get("NONO_DEBUG"):
                    import traceback

                    traceback.print_exc()

    def _drain(self) -> set[str] | None:
        """Read the queued events: the denied paths whose resolution looks up an entry that changed, or
        None when any may have changed (a watched directory moved or went, events were lost). Forgets the
        watches the kernel dropped (a directory removed)."""
        try:
            data = self._fd.read(65536) or b""
        except BlockingIOError:
            return set()
        changed: set[str] | None = set()
        offset = 0
        while offset + _EVENT.size <= len(data):
            wd, mask, _cookie, length = _EVENT.unpack_from(data, offset)
            name = os.fsdecode(data[offset + _EVENT.size : offset + _EVENT.size + length].rstrip(b"\0"))
            offset += _EVENT.size + length
            if mask & _IN_IGNORED:
                with self._watch_lock:
                    self._watched = {p: w for p, w in self._watched.items() if w != wd}
            if not name or mask & _IN_Q_OVERFLOW:
                changed = None
            elif changed is not None:
                changed |= self._lookers.get((wd, name), set())
        return changed

    def _resolve(self, paths: list[str]) -> tuple[bool, bool]:
        """Resolve ``paths`` again and watch what their resolutions look up now. Returns whether one leads
        elsewhere than before (or was never resolved: the decisions may predate a move) and whether a
        directory was watched for the first time (``~/.config`` made: ``gh`` may be in it already)."""
        moved = added = False
        for path in paths:
            real, looked = _resolution(path)
            moved = moved or self._resolved.get(path) != real
            self._resolved[path] = real
            with self._watch_lock:
                for directory, names in looked.items():
                    wd = self._watched.get(directory)
                    if wd is None:
                        wd = libc.LIBC.inotify_add_watch(self._fd.fileno(), os.fsencode(directory), _MASK)
                        if wd >= 0:
                            self._watched[directory] = wd
                            added = True
                        elif ctypes.get_errno() not in (errno.ENOENT, errno.ENOTDIR):
                            self._unwatched = True  # ENOSPC (the user's watch limit), EACCES: polled
                    for name in names if wd >= 0 else ():
                        self._lookers.setdefault((wd, name), set()).add(path)
        return moved, added

    def evaluate(self, changed: set[str] | None = None) -> None:
        """After a change of what the resolutions of ``changed`` look up (None: of any denied path): act
        on every tracked sandbox that could reach one of those nodes where it is now."""
        with self._lock:
            self.generation += 1
            self._tracked = [e for e in self._tracked if not e.ended()]
            entries = list(self._tracked)
        self._check(entries, changed)

    def _check(self, entries: list[_Tracked], paths: set[str] | None = None, again: bool = True) -> None:
        """Commands are stopped first (they may be reading meanwhile: this is the window), then the
        denied paths resolved again and watched (the decisions relocated if one moved), then loops guarded
        (they decide on the relocated from then on). Only the denied paths ``paths``, when given: the
        others lead where they did."""
        hits = self._reaching(entries, paths)
        for entry, deny, real in hits:
            if not (entry.guard and entry.loop is not None):
                self._act(entry, deny, real)
        with self._lock:
            resolving = list(self._denies) if paths is None else list(paths)
        moved, added = self._resolve(resolving)
        if moved:
            self._state.relocate_denies()
        for entry, deny, real in hits:
            if entry.guard and entry.loop is not None:
                self._act(entry, deny, real)
        if added and again:
            self._check(entries, paths, again=False)  # a change made before a new watch existed

    def _reaching(
        self, entries: list[_Tracked], only: set[str] | None = None
    ) -> list[tuple[_Tracked, Deny, str]]:
        """Each sandbox with the first denied node its ruleset reaches, where that node is now (of the
        denied paths ``only``, when given)."""
        located: dict[str, tuple[str, list[tuple[int, int]]]] = {}  # each deny resolved once
        hits = []
        for entry in entries:
            if entry.acted or entry.ended():
                continue
            for deny in entry.policy.denies:
                if only is not None and deny.path not in only:
                    continue
                if deny.path not in located:
                    real = os.path.realpath(deny.path)
                    located[deny.path] = (real, _chain(real))
                real, keys = located[deny.path]
                if not any(entry.inodes.get(key, 0) for key in keys):
                    continue
                access = self._state.access_index(entry.policy)
                if deny.rule != NEVER_GRANTABLE and access.grants_node(real):
                    continue  # an explicit grant of the node itself overrides its deny (CONTRACT)
                hits.append((entry, deny, real))
                break
        return hits

    def _act(self, entry: _Tracked, deny: Deny, real: str) -> None:
        with self._lock:  # the watch thread and a starting command's own check may both find it
            if entry.acted:
                return
            entry.acted = True
        policy = self._state.policy
        # Where the node is now is any name the project holds (a command's own included): shown as text.
        named, where = shown(policy.display(deny.path)), shown(policy.display(real))
        fields = {"event": "late-deny", "path": deny.path, "now": real, "rule": deny.rule}
        if entry.guard and entry.loop is not None:
            entry.loop.guard()
            line = (
                f"nono: {named} [{deny.rule}] is now at {where}, inside what this"
                " sandbox was granted: every open is decided by the supervisor from now on"
            )
            fields["action"] = "guarded"
        else:
            line = (
                f"nono: stopped: {named} [{deny.rule}] is now at {where}, inside what"
                " this command's sandbox grants (a running sandbox cannot be narrowed)"
            )
            fields["action"] = "stopped"
        if entry.notice is not None:
            entry.notice(line, fields)
        else:
            self._audit.write(pid=getattr(entry.process, "pid", 0), **fields)
        if fields["action"] == "stopped":
            if entry.process.status is None:  # reaped, the keeper's pid may be another process's now
                entry.process.kill_tree()  # the keeper kills the tree, daemons included
            # The main process may have ended and the keeper with it (kill_tree then reaches nothing);
            # what it left running holds the domain still (its loop lives): its process group, whose id is
            # no new process's while a member lives. One that left the group is not found (README).
            entry.process.signal(signal.SIGKILL)


def _inotify_init() -> int:
    fd = libc.LIBC.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd
