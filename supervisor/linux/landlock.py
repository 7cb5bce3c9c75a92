"""Landlock: compile a ``Policy`` into a ``LandlockPlan`` (pure but for reading directories), and turn a
plan into a ruleset fd in the supervisor (the child only calls ``landlock_restrict_self`` on it).

Deny-inside-allow: Landlock rules only grant, and a rule on a directory covers its whole subtree. So a
grant of P with a denied D below it is compiled into rules on P's *siblings* along the path to D, never
on D or its ancestors (DESIGN.md). Rights that no deny below P removes are still granted on P itself.
"""

from __future__ import annotations

import errno
import os
import stat
import struct
import threading
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from nono_supervisor.errors import SandboxError
from nono_supervisor.linux import libc
from nono_supervisor.paths import links_met, under
from nono_supervisor.policy.gitrepos import GIT_DIR_MARKS
from nono_supervisor.policy.profile import (
    HANDED_TERMINAL,
    NEVER_GRANTABLE,
    RUNS_LATER,
    TERMINALS,
    Grant,
    Policy,
)

if TYPE_CHECKING:  # the C extension is imported where it is used: it may not be built (NotedFs.still_valid)
    from nono_supervisor.linux import _notify

__all__ = [
    "ACCESS_FS",
    "CachedPlan",
    "LandlockPlan",
    "PlanCache",
    "Rule",
    "abi_version",
    "abi_probe",
    "compile_plan",
    "create_ruleset",
    "rights_names",
    "RightsIndex",
]

# include/uapi/linux/landlock.h
ACCESS_FS = {
    "execute": 1 << 0,
    "write_file": 1 << 1,
    "read_file": 1 << 2,
    "read_dir": 1 << 3,
    "remove_dir": 1 << 4,
    "remove_file": 1 << 5,
    "make_char": 1 << 6,
    "make_dir": 1 << 7,
    "make_reg": 1 << 8,
    "make_sock": 1 << 9,
    "make_fifo": 1 << 10,
    "make_block": 1 << 11,
    "make_sym": 1 << 12,
    "refer": 1 << 13,  # ABI 2
    "truncate": 1 << 14,  # ABI 3
    "ioctl_dev": 1 << 15,  # ABI 5
}
_A = ACCESS_FS
ACCESS_NET_BIND_TCP = 1 << 0  # ABI 4
ACCESS_NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1

READ = _A["execute"] | _A["read_file"] | _A["read_dir"]
WRITE = (
    _A["write_file"]
    | _A["remove_dir"]
    | _A["remove_file"]
    | _A["make_dir"]
    | _A["make_reg"]
    | _A["make_sock"]
    | _A["make_fifo"]
    | _A["make_sym"]
    | _A["refer"]
    | _A["truncate"]
    | _A["ioctl_dev"]
)
FILE_RIGHTS = _A["execute"] | _A["write_file"] | _A["read_file"] | _A["truncate"] | _A["ioctl_dev"]
# What a directory's rule gives over its entries' names: making, removing and moving them (not content).
NAME_RIGHTS = WRITE & ~FILE_RIGHTS
_ACCESS = {"read": READ, "write": WRITE, "allow": READ | WRITE}

_SYS_CREATE_RULESET = libc.number("landlock_create_ruleset")
_SYS_ADD_RULE = libc.number("landlock_add_rule")
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_RULE_NET_PORT = 2  # ABI 4: struct landlock_net_port_attr { __u64 allowed_access; __u64 port; }


def abi_version() -> int:
    """The kernel's Landlock ABI (1..7 here), 0 when Landlock is missing or disabled at boot."""
    return abi_probe()[0]


def abi_probe() -> tuple[int, int]:
    """(the kernel's Landlock ABI, 0) or (0, why not): ENOSYS, a kernel built without it; EOPNOTSUPP, built
    in but not enabled at boot (``lsm=``). ``doctor`` says which: the cures differ."""
    try:
        return libc.syscall(_SYS_CREATE_RULESET, None, 0, _CREATE_RULESET_VERSION), 0
    except OSError as e:
        if e.errno in (errno.ENOSYS, errno.EOPNOTSUPP):
            return 0, e.errno
        raise


def handled_fs(abi: int) -> int:
    """Every filesystem right the kernel knows: handled rights that no rule grants are denied."""
    mask = (1 << 13) - 1  # ABI 1: the 13 original rights
    if abi >= 2:
        mask |= _A["refer"]  # cross-directory rename/link
    if abi >= 3:
        mask |= _A["truncate"]
    if abi >= 5:
        mask |= _A["ioctl_dev"]
    return mask


def rights_names(mask: int) -> list[str]:
    return [name for name, bit in ACCESS_FS.items() if mask & bit]


@dataclass(frozen=True)
class Rule:
    path: str
    rights: int
    why: str


@dataclass(frozen=True)
class LandlockPlan:
    abi: int
    handled_fs: int
    handled_net: int
    scoped: int
    rules: tuple[Rule, ...]
    notes: tuple[str, ...] = field(default=())
    connect_ports: tuple[int, ...] = ()  # TCP ports connect() may reach despite handled_net (the proxy's)
    # Symlinks the compiler met on the policy's paths, each with the real path it resolves to (/lib ->
    # /usr/lib on a merged /usr): the lexical fast path looks the rules up where the kernel will find them.
    aliases: tuple[tuple[str, str], ...] = ()

    def to_json(self) -> dict[str, object]:
        return {
            "abi": self.abi,
            "handled_fs": rights_names(self.handled_fs),
            "handled_net": ["bind_tcp"] * bool(self.handled_net & 1)
            + ["connect_tcp"] * bool(self.handled_net & 2),
            "net_rules": [{"port": port, "rights": ["connect_tcp"]} for port in self.connect_ports],
            "scoped": ["abstract_unix_socket"] * bool(self.scoped & 1) + ["signal"] * bool(self.scoped & 2),
            "rules": [{"path": r.path, "rights": rights_names(r.rights), "why": r.why} for r in self.rules],
            "notes": list(self.notes),
        }


class RightsIndex:
    """What the Landlock baseline grants on a path: the union of the rules on it and its ancestors.

    Lexical (no syscalls): the notify loop's fast path. It may only be used to *allow* (CONTINUE), which is
    safe whatever the path really is, because the kernel then applies the same Landlock rules itself.
    """

    def __init__(self, plan: LandlockPlan) -> None:
        self._rules = {rule.path: rule.rights for rule in plan.rules}
        self._aliases = dict(plan.aliases)
        self.handled = plan.handled_fs
        self._native: _notify.Rights | None = None
        self._native_lock = threading.Lock()

    def dealias(self, path: str) -> str:
        """``path`` with its longest symlinked prefix replaced by where the link leads, repeatedly (at
        most ``_MAX_ALIASES`` times): a real path has none, and is returned as it is."""
        aliases = self._aliases
        if not aliases:
            return path
        for _ in range(_MAX_ALIASES):
            prefix = path
            while True:
                target = aliases.get(prefix)
                if target is not None:
                    path = target + path[len(prefix) :]
                    break
                if len(prefix) <= 1:
                    return path
                prefix = prefix[: prefix.rindex("/")] or "/"
        return path

    def native(self) -> _notify.Rights:
        """The same rules for the notify loop's C fast path (``_notify.Rights``), built once."""
        with self._native_lock:
            if self._native is None:
                from nono_supervisor.linux import _notify

                rules = [(os.fsencode(path), rights) for path, rights in self._rules.items()]
                aliases = [(os.fsencode(link), os.fsencode(real)) for link, real in self._aliases.items()]
                self._native = _notify.Rights(rules, self.handled, aliases)
            return self._native

    def rights(self, path: str) -> int:
        rules = self._rules
        granted = rules.get(path, 0)
        while len(path) > 1:
            path = path[: path.rindex("/")] or "/"
            granted |= rules.get(path, 0)
        return granted

    def allows(self, path: str, needed: int) -> bool:
        needed &= self.handled  # a right this kernel does not handle is not restricted by it
        return self.rights(self.dealias(path)) & needed == needed


@dataclass(frozen=True)
class _Carve:
    path: str
    removed: int
    rule: str


def _rights(grant: Grant) -> int:
    rights = _ACCESS[grant.access]
    return rights & FILE_RIGHTS if grant.kind == "file" else rights


_MAX_ALIASES = 8  # symlinked prefixes replaced in one lookup (the C fast path has the same bound)
# A directory changed this recently may change again within the same timestamp tick (and keep its stamp).
# Sub-second timestamps (ext4, xfs, btrfs, tmpfs) tick with the kernel's coarse clock, at most 10 ms:
# twice that is enough, and 0.1 s leaves room. Whole-second stamps (FAT ticks in 2 s) get 2 s.
_RACY_NS = 2_000_000_000
_RACY_FINE_NS = 100_000_000


def _racy(stamp: tuple[int, int, int, int], now_ns: int) -> bool:
    """Whether a listing stamped ``stamp`` (``_listing``) may still change without changing its stamp."""
    changed = max(stamp[2], stamp[3])
    fine = stamp[2] % 1_000_000_000 or stamp[3] % 1_000_000_000
    return now_ns - changed < (_RACY_FINE_NS if fine else _RACY_NS)


def _identity(path: str, st: os.stat_result | None) -> tuple[int, int, int, str] | None:
    """What a lookup of ``path`` found. The inode numbers of the plan's rule paths cannot be reused while
    the cached ruleset holds them; a symlink's inode is not held, so its text is part of its identity."""
    if st is None:
        return None
    target = ""
    if stat.S_ISLNK(st.st_mode):
        try:
            target = os.readlink(path)
        except OSError:
            target = "\0"
    return (st.st_dev, st.st_ino, stat.S_IFMT(st.st_mode), target)


def _lstat(path: str) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def _listing(path: str) -> tuple[int, int, int, int] | None:
    """What changes whenever an entry of directory ``path`` is added, removed, renamed or replaced."""
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns)


class NotedFs:
    """The compiler's reads of the filesystem, each noted with what would change its answer, so that a
    cached plan is reused only while every answer still holds (``PlanCache``). Every note is taken before
    the read it covers: a change in between makes the plan stale, never wrongly fresh.

    - a path looked up (``realpath`` components, ``isdir``, ``exists``): its lstat identity (dev, inode,
      type, a symlink's text); a missing one also notes the listing of its nearest existing ancestor;
    - a directory listed (sibling expansion): its listing (dev, inode, mtime, ctime). The lookups of its
      entries are covered by it (an entry cannot change its inode or type without changing the listing).
    A listing changed within one racy window of now (``_racy``) makes the plan uncacheable: two changes
    within one timestamp tick would leave the same stamp behind.
    - a git directory expanded (``subdirs``): the names and identities of its subdirectories, the only
      entries that get rules there. Its own files (index, HEAD) are replaced by a rename at nearly every
      git command, a plain ``git status`` included: noting its listing would recompile the plan after each.
    """

    def __init__(self) -> None:
        self.identities: dict[str, tuple[int, int, int, str] | None] = {}
        self.listings: dict[str, tuple[int, int, int, int] | None] = {}
        self.subdir_sets: dict[str, frozenset[tuple[str, int, int]] | None] = {}
        self.aliases: dict[str, str] = {}  # a symlink met on the way -> the real path it resolved to
        self.uncacheable = False
        self._checker: _notify.Stamps | Literal[False] | None = None  # None: not made yet; False: no C

    def _list_stamp(self, path: str) -> tuple[int, int, int, int] | None:
        if path not in self.listings:
            stamp = self.listings[path] = _listing(path)
            if stamp is not None and _racy(stamp, time.time_ns()):
                self.uncacheable = True
        return self.listings[path]

    def _note(self, path: str) -> os.stat_result | None:
        covered = os.path.dirname(path) in self.listings and self.listings[os.path.dirname(path)] is not None
        st = _lstat(path)
        if not covered and path not in self.identities:
            self.identities[path] = _identity(path, st)
            if st is None:
                parent = os.path.dirname(path)
                while self._list_stamp(parent) is None and parent not in ("/", ""):
                    parent = os.path.dirname(parent)
        return st

    def isdir(self, path: str) -> bool:
        st = self._note(path)
        if st is not None and stat.S_ISLNK(st.st_mode):
            return os.path.isdir(self.realpath(path))
        return st is not None and stat.S_ISDIR(st.st_mode)

    def islink(self, path: str) -> bool:
        st = self._note(path)
        return st is not None and stat.S_ISLNK(st.st_mode)

    def readlink(self, path: str) -> str | None:
        """The target of the link ``path``, or None where it is none (``paths.links_met``); noted."""
        try:
            return os.readlink(path) if self.islink(path) else None
        except OSError:
            return None  # replaced since the lstat: the note no longer matches, the next get recompiles

    def exists(self, path: str) -> bool:
        st = self._note(path)
        if st is not None and stat.S_ISLNK(st.st_mode):
            return os.path.exists(self.realpath(path))
        return st is not None

    def listdir(self, path: str) -> list[str]:
        self._list_stamp(path)
        return os.listdir(path)

    def present(self, path: str) -> bool:
        """Whether ``path`` exists (following links), not noted: ``_is_git_dir`` says why."""
        return os.path.exists(path)

    def subdirs(self, path: str) -> list[str]:
        """The subdirectories of ``path`` (not links), noted by name and identity; the read is the note."""
        found = _subdir_set(path)
        self.subdir_sets[path] = found
        return sorted(name for name, _ino, _dev in found or ())

    def realpath(self, path: str) -> str:
        """``os.path.realpath(path)`` (not strict), noting every component it looked up."""
        if not path.startswith("/"):
            self.uncacheable = True  # relative to the cwd: not a function of the noted paths
        resolved, _ok = self._join("", path, {})
        return os.path.abspath(resolved)

    def _join(self, path: str, rest: str, seen: dict[str, str | None]) -> tuple[str, bool]:
        # posixpath._joinrealpath (CPython 3.10-3.12), with each lstat noted
        if rest.startswith("/"):
            rest = rest[1:]
            path = "/"
        while rest:
            name, _, rest = rest.partition("/")
            if not name or name == ".":
                continue
            if name == "..":
                if path:
                    path, name = os.path.split(path)
                    if name == "..":
                        path = os.path.join(path, "..", "..")
                else:
                    path = ".."
                continue
            newpath = os.path.join(path, name)
            st = self._note(newpath)
            if st is None or not stat.S_ISLNK(st.st_mode):
                path = newpath
                continue
            if newpath in seen:
                known = seen[newpath]
                if known is not None:
                    path = known
                    continue
                return os.path.join(newpath, rest), False
            seen[newpath] = None
            path, ok = self._join(path, os.readlink(newpath), seen)
            if not ok:
                return os.path.join(path, rest), False
            seen[newpath] = path
            if newpath.startswith("/") and path.startswith("/"):
                self.aliases[newpath] = os.path.normpath(path)
        return path, True

    def still_valid(self) -> bool:
        """Every note still holds (one lstat, stat or readlink each; in C when it is built)."""
        if self._checker is None:
            try:
                from nono_supervisor.linux import _notify
            except ImportError:
                self._checker = False
            else:
                self._checker = _notify.Stamps(
                    [(os.fsencode(p), i and (*i[:3], os.fsencode(i[3]))) for p, i in self.identities.items()],
                    [(os.fsencode(p), stamp) for p, stamp in self.listings.items()],
                )
        if self._checker and not self._checker.valid():
            return False
        if not self._checker and not self._still_valid_python():
            return False
        return all(_subdir_set(path) == found for path, found in self.subdir_sets.items())

    def _still_valid_python(self) -> bool:
        for path, identity in self.identities.items():
            if _identity(path, _lstat(path)) != identity:
                return False
        return all(_listing(path) == stamp for path, stamp in self.listings.items())


def _subdir_set(path: str) -> frozenset[tuple[str, int, int]] | None:
    try:
        with os.scandir(path) as listing:
            return frozenset(
                (e.name, e.inode(), os.lstat(e.path).st_dev)
                for e in listing
                if e.is_dir(follow_symlinks=False)
            )
    except OSError:
        return None


class _Compiler:
    def __init__(self, mask: int, fs: NotedFs) -> None:
        self.mask = mask
        self.fs = fs
        self.rules: dict[str, tuple[int, str]] = {}
        self.notes: list[str] = []

    def add(self, path: str, rights: int, why: str) -> None:
        if not self.fs.isdir(path):
            rights &= FILE_RIGHTS
        rights &= self.mask
        if rights:
            old, old_why = self.rules.get(path, (0, why))
            self.rules[path] = (old | rights, old_why)

    def emit(self, path: str, rights: int, carves: list[_Carve], why: str) -> None:
        """Grant ``rights`` on ``path`` except what ``carves`` (at or below it) take away."""
        for carve in carves:
            if carve.path == path:
                rights &= ~carve.removed
        inner = [c for c in carves if c.path != path]
        if not inner or not self.fs.isdir(path) or self.fs.islink(path):
            self.add(path, rights, why)
            return
        removed_below = 0
        for carve in inner:
            removed_below |= carve.removed
        self.add(path, rights & ~removed_below, why)  # what is safe on the whole subtree
        rest = rights & removed_below
        if not rest & self.mask:
            return
        try:
            names = sorted(self.fs.listdir(path)) if not _is_git_dir(self.fs, path) else self.fs.subdirs(path)
        except OSError as e:
            self.notes.append(
                f"{path}: cannot list ({e.strerror}); its entries get no rights beyond the above"
            )
            return
        for name in names:
            child = os.path.join(path, name)
            if self.fs.islink(child):
                continue  # a link needs no right to be followed; its target is governed by its own rules
            self.emit(child, rest, [c for c in inner if under(c.path, child)], why)


def _is_git_dir(fs: NotedFs, path: str) -> bool:
    """A git directory holding a carve (its config, hooks): only its subdirectories get rules (``NotedFs``).
    Its own files are written by git through a lock file and a rename, which the supervisor carries out,
    or asked again (FETCH_HEAD, COMMIT_EDITMSG). git's own test: HEAD, and objects and refs or (a linked
    worktree's) commondir. Not noted: a cached plan of a directory that stopped being one is narrower
    than a fresh one (its files have no rules), never wider."""
    exists = fs.present
    if not exists(os.path.join(path, "HEAD")):
        return False
    return exists(os.path.join(path, "commondir")) or all(
        exists(os.path.join(path, m)) for m in GIT_DIR_MARKS
    )


def compile_plan(
    policy: Policy,
    abi: int,
    extra: Iterable[Grant] = (),
    connect_ports: Iterable[int] = (),
    *,
    _fs: NotedFs | None = None,
) -> LandlockPlan:
    """The rules for ``policy`` (plus ``extra`` grants the route itself needs) at Landlock ``abi``.
    ``connect_ports``: in domains mode, the supervisor's proxy port, the one TCP port connect() may reach
    (the kernel's backstop: the notify layer lets through only the proxy's own address)."""
    if abi < 1:
        raise SandboxError("Landlock is not available. Hint: needs Linux >= 5.13 with lsm=landlock enabled")
    fs = _fs or NotedFs()
    mask = handled_fs(abi)
    compiler = _Compiler(mask, fs)
    carves = [_Carve(fs.realpath(d.path), mask, d.rule) for d in policy.denies]
    # DESIGN.md invariant 11: whatever is granted or answered (--allow /dev, a session answer on a listing
    # of /dev), Landlock reaches no pty but the handed terminal's node; the supervisor opens a command's
    # own ptys through the master it holds (linux/terminals.py)
    carves.append(_Carve(TERMINALS, mask, NEVER_GRANTABLE))
    protected = [_Carve(fs.realpath(p), WRITE, "never-grantable") for p in policy.protected]
    later = [_Carve(fs.realpath(entry.path), WRITE, RUNS_LATER) for entry in policy.runs_later]
    # A held node reached through a link (stow's ~/.config/gh -> ~/dotfiles/gh) is carved where it
    # resolves; the link is carved too, and each link its target passes through (~/dotfiles ->
    # ~/src/dotfiles under ~/.config/gh -> ../dotfiles/gh), so that no rule lets a command take that name
    # away (rm, mv, a rename over it), and with it the deny (tests/test_late_denies.py). Each directory
    # holding such a name (its ancestors up to the grant) keeps no right over names: those calls go through
    # the supervisor.
    kept = [(d.path, d.rule) for d in policy.denies]
    kept += [(p, "never-grantable") for p in policy.protected]
    kept += [(entry.path, RUNS_LATER) for entry in policy.runs_later]
    links = [(name, path, rule) for path, rule in kept for name in links_met(path, fs.readlink)]
    names = [_Carve(name, NAME_RIGHTS, rule) for name, _path, rule in links]
    for grant in (*policy.grants, *extra):
        path = fs.realpath(grant.path)
        if not fs.exists(path):
            compiler.notes.append(
                f"{policy.display(grant.path)}: does not exist, not granted ({grant.source})"
            )
            continue
        if grant.kind == "file" and fs.isdir(path):
            # Landlock applies a directory's file rights to every file beneath it, where the policy (and
            # AccessIndex) grants the one path: no rule rather than the whole tree (fail closed).
            compiler.notes.append(
                f"{policy.display(grant.path)}: a directory, not granted by a file grant ({grant.source});"
                " a directory is granted with --read, --write or --allow"
            )
            continue
        rights = _rights(grant)
        inside = [c for c in carves if under(path, c.path)]
        sealed = any(c.rule == NEVER_GRANTABLE for c in inside) and grant.source != HANDED_TERMINAL
        if inside and (grant.source.startswith("group:") or sealed):
            continue  # group grants never override a deny; explicit ones inside one do, unless it is sealed
        applicable = [c for c in carves if under(c.path, path) and c.path != path]
        # A runs-later entry is lifted only by the human's flag at or below it (access.AccessIndex.verdict).
        held = [c for c in later if not (grant.source.startswith("--") and under(path, c.path))]
        applicable += [c for c in (*protected, *held, *names) if under(c.path, path)]
        rights &= ~_protected_removal(path, [*protected, *held])
        compiler.emit(path, rights, applicable, grant.source)
    notes = list(compiler.notes)
    granted = [fs.realpath(g.path) for g in policy.grants]
    for carve in carves:
        if any(under(carve.path, root) and carve.path != root for root in granted):
            notes.append(
                f"deny {policy.display(carve.path)} ({carve.rule}): Landlock grants the siblings along its"
                " path; creating, removing or listing directly in its parent directories is carried out by"
                " the supervisor (seccomp), or refused with --no-trap"
            )
    for name, path, rule in links:
        if any(under(name, root) and name != root for root in granted):
            notes.append(
                f"link {policy.display(name)} on the way to {policy.display(path)} ({rule}): removing,"
                " renaming or making names in the directories holding it is carried out by the supervisor"
                " (seccomp), or refused with --no-trap"
            )
    handled_net = 0
    if policy.net_block:
        if abi < 4:
            flag = "--allow-domain" if policy.net_mode == "domains" else "--net-block"
            raise SandboxError(
                f"{flag} needs Landlock ABI 4 (Linux 6.7); this kernel has ABI {abi}. Hint: drop {flag}"
            )
        handled_net = ACCESS_NET_BIND_TCP | ACCESS_NET_CONNECT_TCP
        if policy.net_mode == "domains":
            notes.append(
                "network: TCP connect only to the supervisor's proxy port (Landlock, any address; the"
                " notify layer allows only the proxy's own), bind denied; UDP, raw, MPTCP refused by the"
                " notify layer"
            )
        else:
            notes.append(
                "network: TCP bind/connect denied by Landlock; UDP and raw sockets are not restricted"
            )
    ports = tuple(sorted(set(connect_ports))) if handled_net else ()
    scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL if abi >= 6 else 0
    if not scoped:
        notes.append(f"Landlock ABI {abi} < 6: signals and abstract unix sockets are not scoped")
    rules = tuple(Rule(path, rights, why) for path, (rights, why) in sorted(compiler.rules.items()))
    aliases = tuple(sorted(fs.aliases.items()))
    return LandlockPlan(abi, mask, handled_net, scoped, rules, tuple(notes), ports, aliases)


def _protected_removal(path: str, protected: list[_Carve]) -> int:
    """Write rights are removed from a grant that lies inside a never-grantable or runs-later path."""
    return WRITE if any(under(path, c.path) and c.path != path for c in protected) else 0


def create_ruleset(plan: LandlockPlan, inodes: dict[tuple[int, int], int] | None = None) -> int:
    """A ruleset fd (O_CLOEXEC) holding ``plan``; the child restricts itself with it. Fails closed.
    ``inodes`` receives (dev, ino) -> rights of each rule as added: Landlock pins a rule to the inode it
    was opened on, wherever that inode moves later (``latedeny`` asks what a running domain reaches)."""
    attr = struct.pack("QQQ", plan.handled_fs, plan.handled_net, plan.scoped)
    size = 8 if plan.abi < 4 else (16 if plan.abi < 6 else 24)
    try:
        ruleset = libc.syscall(_SYS_CREATE_RULESET, attr, size, 0)
    except OSError as e:
        raise SandboxError(f"landlock_create_ruleset: {e.strerror}") from None
    try:
        for rule in plan.rules:
            try:
                fd = os.open(rule.path, os.O_PATH | os.O_CLOEXEC | os.O_NOFOLLOW)
            except OSError as e:
                if e.errno in (errno.ENOENT, errno.ELOOP):
                    continue  # vanished (or became a link) since compile: granting nothing is the safe side
                raise
            try:
                beneath = struct.pack("=Qi", rule.rights, fd)
                libc.syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, beneath, 0)
                if inodes is not None:
                    st = os.fstat(fd)
                    key = (st.st_dev, st.st_ino)
                    inodes[key] = inodes.get(key, 0) | rule.rights
            finally:
                os.close(fd)
        for port in plan.connect_ports:
            net_port = struct.pack("=QQ", ACCESS_NET_CONNECT_TCP, port)
            libc.syscall(_SYS_ADD_RULE, ruleset, _RULE_NET_PORT, net_port, 0)
    except OSError as e:
        os.close(ruleset)
        raise SandboxError(f"landlock_add_rule: {e.strerror}") from None
    return ruleset


@dataclass(eq=False)
class CachedPlan:
    """One compiled plan with what the notify layer derives from it, shared by the commands of a policy."""

    policy: Policy
    plan: LandlockPlan
    rights: RightsIndex
    ruleset: int
    fs: NotedFs
    inodes: dict[tuple[int, int], int]  # (dev, ino) -> rights, as the ruleset holds them (create_ruleset)
    extra: dict[str, object] = field(default_factory=dict)  # derived per plan by other layers (notify)
    closed: bool = False

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.ruleset)


class PlanCache:
    """Landlock plans (and their ruleset fds) compiled once per policy and reused by every command, for as
    long as the filesystem the compiler read is unchanged (``NotedFs``: the sibling expansion depends on which
    entries exist). Each ``get`` re-checks those notes (one lstat or stat each); any change recompiles.

    A cached ruleset fd holds the inodes its rules were opened on, exactly as a fresh one opened at the
    same moment would: Landlock rules follow inodes, and a change of any noted entry drops the cache."""

    def __init__(self, size: int = 16) -> None:
        self._size = size
        self._entries: dict[tuple, CachedPlan] = {}
        self._lock = threading.Lock()
        # One compile at a time: commands that find the plan stale together (50 started at once after a
        # change in the workdir's root, whose listing the plan notes) wait for one compile and share it,
        # instead of each compiling its own under the GIL (50 at once took 2-7 s, not 0.2: bench_speed).
        self._compiling = threading.Lock()
        self.compiled = 0  # how many compiles (tests look at it)

    def get(self, policy: Policy, abi: int, extra: Iterable[Grant] = (), *args: Iterable[int]):
        """(entry, ruleset fd): the fd is the caller's to close (a dup of the cached one)."""
        key = (id(policy), abi, tuple(extra), tuple(tuple(a) for a in args))
        found = self._cached(key, policy)
        if found is not None:
            return found
        with self._compiling:
            found = self._cached(key, policy)  # compiled by the thread this one waited for
            if found is not None:
                return found
            return self._compile(key, policy, abi, args)

    def _cached(self, key: tuple, policy: Policy) -> tuple[CachedPlan, int] | None:
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and entry.policy is policy and entry.fs.still_valid():
            with self._lock:
                if not entry.closed:
                    return entry, os.dup(entry.ruleset)
        return None

    def _compile(self, key: tuple, policy: Policy, abi: int, args: tuple) -> tuple[CachedPlan, int]:
        fs = NotedFs()
        plan = compile_plan(policy, abi, key[2], *args, _fs=fs)
        inodes: dict[tuple[int, int], int] = {}
        entry = CachedPlan(policy, plan, RightsIndex(plan), create_ruleset(plan, inodes), fs, inodes)
        with self._lock:
            self.compiled += 1
            if fs.uncacheable:
                entry.closed = True  # never shared: the caller owns this fd
                return entry, entry.ruleset
            old = self._entries.pop(key, None)
            if old is not None:
                old.close()
            if len(self._entries) >= self._size:
                for stale in self._entries.values():
                    stale.close()
                self._entries.clear()
            self._entries[key] = entry
            return entry, os.dup(entry.ruleset)

    def clear(self) -> None:
        with self._lock:
            for entry in self._entries.values():
                entry.close()
            self._entries.clear()
