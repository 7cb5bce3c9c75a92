"""What the policy intends for one concrete path: allowed, or denied and by which rule.

Backends enforce a compiled approximation (Landlock rules, a Seatbelt profile); this is the intent they
approximate, used where the supervisor decides a single operation itself (an emulated open, a prompt, the
wording of a denial). Pure: no syscalls. The one filesystem fact it needs, where each of the policy's paths
really is, is computed once by the caller (``real_paths``) and passed in: the index is then a function of
its arguments, tested over a fake filesystem (tests/test_policy_core.py).
"""

from __future__ import annotations

import fnmatch
import os
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from nono_supervisor.paths import links_met, under
from nono_supervisor.policy.netpolicy import network_hint
from nono_supervisor.policy.profile import NEVER_GRANTABLE, NOT_ITS_TERMINAL, RUNS_LATER, Policy

__all__ = [
    "Verdict",
    "AccessIndex",
    "OPS",
    "ON_THE_WAY",
    "hint_for",
    "real_paths",
    "held_links",
    "silent",
    "FOREIGN_PROC",
    "SHELL_OWN",
]

# Contract operations -> the access they need from a grant ("read" or "write").
OPS = {
    "read": "read",
    "exec": "read",
    "write": "write",
    "create": "write",
    "delete": "write",
    "connect": "write",
    "bind": "write",
}


# The rule of a denial of another process's /proc entry (ps and top read every process's environ).
FOREIGN_PROC = "another process's /proc (Landlock's ptrace scoping)"
# What ends the rule of a shell's own use of its start-up files in $HOME (notify): a read of its rc, profile,
# logout or history file is answered with an empty file (the shell starts as with an empty rc, the content
# stays unread); a write of its history at exit is refused, silently.
SHELL_OWN = " (the shell's own start-up file)"


def silent(rule: str, policy: Policy) -> bool:
    """The one rule for what is reported: a ``nono:`` line or a question only where the denial changes the
    outcome for the user and is about something the user may want to grant. Silent (the audit log has
    them): the profile's harmless probes (``prompt.silent``: trace_marker, the JVM's perf data), another
    process's /proc entries (no flag grants them; ps and top do without), and a shell's own reads of its
    rc, profile, logout and history files and writes of its history (the environment arrives from the
    agent; the shell read an empty file and went on, or kept its history to itself).
    Discovery (listing ``/``, ``~``, the workdir's ancestors) is no denial at all (``AccessIndex``)."""
    return rule in policy.prompt_silent or rule == FOREIGN_PROC or rule.endswith(SHELL_OWN)


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    rule: str  # the grant's source when allowed; the deny rule, "never-grantable" or "not granted" when not


def _pattern_directory(pattern: str) -> str | None:
    """The directory of a probe pattern when it is a plain path (resolved like the others), else None."""
    directory = os.path.dirname(pattern)
    return None if any(c in directory for c in "*?[") else directory


def real_paths(policy: Policy, realpath: Callable[[str], str]) -> dict[str, str]:
    """Where each path of ``policy`` really is (``realpath``: ``os.path.realpath``, or a fake filesystem's),
    the facts ``AccessIndex`` compares against: grants, denies, protected and runs-later paths, the
    directory of each probe pattern, the home and the workdir (discovery), and every directory above a
    denied, never-grantable or runs-later path (the names on the way to it)."""
    held = [*(d.path for d in policy.denies), *policy.protected, *(entry.path for entry in policy.runs_later)]
    paths = [
        *(g.path for g in policy.grants),
        *held,
        *(d for d in map(_pattern_directory, (probe.pattern for probe in policy.probes)) if d is not None),
        *([policy.home] if policy.home else []),
        policy.workdir,
        *(above for path in held for above in _ancestors(path)),
    ]
    return {path: realpath(path) for path in dict.fromkeys(paths)}


def held_links(policy: Policy, readlink: Callable[[str], str | None]) -> dict[str, list[str]]:
    """The symlinks each denied, never-grantable and runs-later path resolves through (``paths.links_met``;
    ``readlink``: the filesystem's, or a fake one's), for ``AccessIndex``: beyond the links its spelling
    passes, those their targets pass in turn, which ``real_paths`` alone does not show."""
    held = [*(d.path for d in policy.denies), *policy.protected, *(entry.path for entry in policy.runs_later)]
    return {path: found for path in dict.fromkeys(held) if (found := links_met(path, readlink))}


def _spelled(path: str, real: Mapping[str, str], memo: dict[str, list[str]]) -> list[str]:
    """The names of ``path`` and of each directory above it but ``/``, as the policy spells them: the
    parent resolved, the last component not. ``memo``: the lists already made (the held paths share most
    of their directories)."""
    node = os.path.normpath(path)
    found = memo.get(node)
    if found is None:
        parent = os.path.dirname(node)
        found = memo[node] = []
        if parent != node:
            found += [os.path.join(real[parent], os.path.basename(node)), *_spelled(parent, real, memo)]
    return found


def _ancestors(path: str) -> list[str]:
    """Every directory above ``path`` (normalized), ``/`` included."""
    found, node = [], os.path.normpath(path)
    while (parent := os.path.dirname(node)) != node:
        found.append(node := parent)
    return found


def _covers_file(root: str, path: str) -> bool:
    """A file grant covers its path; one whose last component is a pattern (``~/.claude.json.tmp.*``)
    covers the names it matches in that directory. Landlock has no rule for a pattern (the path does not
    exist): what it covers is carried out by the supervisor."""
    if path == root:
        return True
    name = os.path.basename(root)
    if not any(c in name for c in "*?["):
        return False
    same_directory = os.path.dirname(path) == os.path.dirname(root)
    return same_directory and fnmatch.fnmatchcase(os.path.basename(path), name)


# The rule of a refused name that would lead to a denied node (DESIGN invariant 10): no flag lifts it.
ON_THE_WAY = "a name on the way to a denied path"
# Answers kept per index (``AccessIndex.verdict``): a verdict scans every grant, deny and runs-later entry
# (46 us here, ``denied_below`` 74 us), and the same paths come back at every command (git's index.lock:
# its emulated open, its unlink and undo's record of it asked five times per ``git status``).
_REMEMBERED = 4096
_T = TypeVar("_T")


class AccessIndex:
    """Answers ``verdict(real_path, op)`` for one policy. Paths must already be resolved (realpath), and so
    must the policy's own: ``real`` maps each of them to where it really is (``real_paths``).

    Denied, never-grantable and runs-later paths are resolved where they are when the index is built, and
    again by ``relocate`` with a fresh map: a deny names a path, and a symlink made later on the way to it
    (``stow``, or ``~/.cache/huggingface -> ./x``) moves the node it names (DESIGN invariant 12,
    ``linux.latedeny``)."""

    def __init__(self, policy: Policy, real: Mapping[str, str], links: Mapping[str, list[str]]) -> None:
        self.policy = policy
        self._grants = [(real[g.path], g) for g in policy.grants]
        self._probes = [(self._real_pattern(probe.pattern, real), probe.rule) for probe in policy.probes]
        self.home = real[policy.home] if policy.home else ""  # resolved, as every path compared here
        self._discoverable = _discoverable(real[policy.workdir], self.home)
        self._answers: dict[tuple[str, str], Any] = {}
        self.relocate(real, links)

    def discoverable(self, path: str, rule: str) -> bool:
        """Whether the directory ``path``, which ``rule`` leaves ungranted, may still be listed: discovery,
        not content (Seatbelt's file-read-metadata without file-read-data). ``/``, the home and the
        workdir's ancestors, so that ``ls /``, ``ls ~`` and a program looking for its project root work as
        bare; their files' contents stay ungranted (Landlock cannot grant a directory without its subtree:
        the supervisor lists it, notify). A denied group (``~/.ssh``) or a sealed path is never listed."""
        return rule == "not granted" and path in self._discoverable

    def relocate(self, real: Mapping[str, str], links: Mapping[str, list[str]]) -> None:
        """Resolve the denied, never-grantable and runs-later paths again, the names on the way to each
        denied node (``on_the_way``) and the names through a link on the way to each held one
        (``taken_away``) (``real``: ``real_paths`` of the policy, made again; ``links``: ``held_links``).
        Each is replaced whole: a decision on another thread sees the old one or the new. The answers kept
        are dropped last: one made meanwhile on the old lists went into the old store (``_remembered``);
        this method's own ask the new lists directly, never the store."""
        self._protected = [real[p] for p in self.policy.protected]
        self._denies = [(real[d.path], d.rule) for d in self.policy.denies]
        self._runs_later = [real[entry.path] for entry in self.policy.runs_later]
        on_the_way: dict[str, tuple[str, str]] = {}
        explicit = [root for root, grant in self._grants if not grant.source.startswith("group:")]
        taken: dict[str, tuple[str, str]] = {}
        held = list(zip((d.path for d in self.policy.denies), self._denies, strict=True))
        held += [(p, (real[p], "never-grantable")) for p in self.policy.protected]
        held += [(entry.path, (real[entry.path], RUNS_LATER)) for entry in self.policy.runs_later]
        memo: dict[str, list[str]] = {}
        for index, (spelled, (resolved, rule)) in enumerate(held):
            if index < len(self._denies):
                if (
                    any(under(root, resolved) for root in explicit)
                    and self._verdict(resolved, "read").allowed
                ):
                    continue  # an explicit grant of the node itself overrides the deny
                for name in _spelled(spelled, real, memo)[1:]:  # the node's own name is [0]
                    on_the_way.setdefault(name, (spelled, rule))
            # Each link its resolution passes (``held_links``: those its spelling passes, ~/.config/gh ->
            # ../dotfiles/gh, and those their targets pass in turn, ~/dotfiles -> ~/src/dotfiles), and the
            # directories holding each: the names the resolved checks (denied_below) do not see above the
            # node; removed, the spelling names nothing (tests/test_late_denies.py).
            for link in links.get(spelled, ()):
                for name in (link, *_ancestors(link)[:-1]):
                    taken.setdefault(name, (spelled, rule))
        self._on_the_way = on_the_way
        self._taken = taken
        self._answers = {}

    def _remembered(self, key: tuple[str, str], answer: Callable[[], _T]) -> _T:
        """``answer()``, kept for ``key`` until ``relocate`` (the index is otherwise a pure function of the
        policy). The store is taken before the answer is made, so an answer made on lists ``relocate``
        replaces meanwhile goes into the store it drops."""
        answers = self._answers
        found = answers.get(key)
        if found is None:
            found = answer()
            if len(answers) >= _REMEMBERED:
                answers.clear()
            answers[key] = found
        return found

    def grants_node(self, path: str) -> bool:
        """An explicit (not a group's) grant names ``path`` itself: a deny there is overridden (unless
        sealed, which no grant reaches). Independent of where the denies lie (``latedeny``)."""
        return any(
            not grant.source.startswith("group:")
            and (_covers_file(root, path) if grant.kind == "file" else root == path)
            for root, grant in self._grants
        )

    def on_the_way(self, path: str) -> tuple[str, str] | None:
        """(denied path, rule) when ``path`` (a name: its parent resolved, its last component not) is a
        strict ancestor of a denied node: a symlink, rename or link made there would redirect the node
        (the human's next login writes the token through it) into wherever the name leads."""
        return self._on_the_way.get(path)

    def taken_away(self, path: str) -> tuple[str, str] | None:
        """(held path, rule) when taking the name ``path`` away (unlink, rmdir, either end of a rename, the
        target it replaces) would move a denied, never-grantable or runs-later node as the policy spells it,
        where the spelling passes a symlink: stow's ``~/.config/gh -> ~/dotfiles/gh``, or ``~/.config``
        holding it. Once gone, the path names nothing (or what the command makes there next), and the next
        command reads the node unguarded. Below the deepest link the name is where the node resolves, and
        ``denied_below`` says so."""
        return self._taken.get(path)

    @staticmethod
    def _real_pattern(pattern: str, real: Mapping[str, str]) -> str:
        """A pattern whose directory is a plain path, with that directory resolved (paths are compared
        real)."""
        directory = _pattern_directory(pattern)
        return pattern if directory is None else os.path.join(real[directory], os.path.basename(pattern))

    def denied_below(self, path: str) -> list[tuple[str, str]]:
        """Denied, never-grantable and runs-later nodes strictly inside ``path``: moving or removing it
        moves them."""
        return list(self._remembered((path, ""), lambda: self._denied_below(path)))

    def _denied_below(self, path: str) -> tuple[tuple[str, str], ...]:
        inside = [(d, rule) for d, rule in self._denies if d != path and under(d, path)]
        protected = [(p, "never-grantable") for p in self._protected if p != path and under(p, path)]
        later = [(p, RUNS_LATER) for p in self._runs_later if p != path and under(p, path)]
        return tuple(inside + protected + later)

    def denied(self, path: str, op: str) -> str | None:
        """The deny rule that refuses ``op`` on ``path`` (a denied node where it is now), or None: what a
        baseline that a moved node slipped into must not permit (``NotifyLoop.guard``)."""
        verdict = self.verdict(path, op)
        rules = {rule for _path, rule in self._denies}
        return verdict.rule if not verdict.allowed and verdict.rule in rules else None

    def verdict(self, path: str, op: str) -> Verdict:
        return self._remembered((path, op), lambda: self._verdict(path, op))

    def _verdict(self, path: str, op: str) -> Verdict:
        need = OPS[op]
        if need == "write" and any(under(path, p) for p in self._protected):
            return Verdict(False, "never-grantable")
        covering = [(d, rule) for d, rule in self._denies if under(path, d)]
        if any(rule == NEVER_GRANTABLE for _d, rule in covering):
            return Verdict(False, NEVER_GRANTABLE)  # sealed (an agent's state): nothing inside lifts it
        deny = max(covering, key=lambda x: len(x[0]), default=None)
        candidates = [
            (root, grant)
            for root, grant in self._grants
            if grant.access in (need, "allow")
            and (_covers_file(root, path) if grant.kind == "file" else under(path, root))
        ]
        if deny is not None:
            # Only an explicit grant at or below the denied node overrides it (CONTRACT: --read-file
            # ~/.aws/credentials beats deny_credentials); group grants never do; a sealed path, nothing.
            # Every such grant counts, not only the deepest: a group's grant deeper inside the lifted tree
            # takes nothing from it, as Landlock adds up the rules (tests/test_policy_core.py).
            candidates = [
                (r, g) for r, g in candidates if not g.source.startswith("group:") and under(r, deny[0])
            ]
            if not candidates:
                return Verdict(False, deny[1])
        if need == "write":
            holding = [entry for entry in self._runs_later if under(path, entry)]
            if holding:
                # Only the human's flag at or below each entry that holds it (``--write-file ~/.tmux.conf``):
                # a wider grant, a group, a profile, an answer or a stored "always" never is.
                candidates = [
                    (r, g)
                    for r, g in candidates
                    if g.source.startswith("--") and all(under(r, e) for e in holding)
                ]
                if not candidates:
                    return Verdict(False, RUNS_LATER)
        if not candidates:
            return Verdict(False, self._ungranted_rule(path))
        return Verdict(True, max(candidates, key=lambda c: len(c[0]))[1].source)

    def _ungranted_rule(self, path: str) -> str:
        """Why nothing grants ``path``: the probe rule of the path or of an ancestor, else "not granted"."""
        for pattern, rule in self._probes:
            node = path
            while True:
                if fnmatch.fnmatchcase(node, pattern):
                    return rule
                if node == "/":
                    break
                node = os.path.dirname(node)
        return "not granted"


def _discoverable(workdir: str, home: str) -> frozenset[str]:
    """``/``, the home and every ancestor of the workdir (both already resolved)."""
    found = {"/", home} if home else {"/"}
    node = workdir
    while node != "/":
        node = os.path.dirname(node)
        found.add(node)
    return frozenset(found)


# Rules no flag can lift: the line says so instead of naming a flag (CONTRACT: "never grantable").
_NEVER = ("never-grantable", "setuid/setgid bits: never grantable", NOT_ITS_TERMINAL)
# Rules where no policy flag would make the operation succeed: the line names no flag.
_NO_FLAG = ("hard link to a denied file", "abstract socket", "the descriptor is not open for it")


def hint_for(op: str, display_path: str, is_dir: bool, rule: str) -> str:
    """The end of a denial line: ``; to allow: FLAG PATH`` with the narrowest policy option that, passed,
    makes this same operation succeed (CONTRACT), ``; never grantable``, or nothing where no flag can.

    File-level for files: a grant of the parent would not beat a deny group that names the file itself
    (``--write ~`` leaves ``~/.bashrc`` denied), and is more than was asked for. Never ``/`` or a /proc
    path: neither is a grant anyone should be told to make.
    """
    if rule in _NEVER:
        return "; never grantable"
    if rule == "--net-block":
        return "; to allow: run without --net-block"
    network = network_hint(display_path, rule)  # network mode domains' rules (netpolicy)
    if network is not None:
        return network
    no_flag = rule in _NO_FLAG or rule.startswith(ON_THE_WAY)  # the latter names the denied path after it
    if no_flag or display_path == "/proc" or display_path.startswith("/proc/"):
        return ""
    if " (inside: " in rule:
        return ""  # a move or a name above a denied or runs-later node: no grant lifts it (denied_below)
    if op in ("connect", "bind"):
        flag = "--allow-file"
    elif op in ("read", "exec"):
        flag = "--read" if is_dir and display_path != "/" else "--read-file"
    else:  # write, create, delete: a directory's own grant covers what is made or removed inside it
        flag = "--write" if is_dir and display_path != "/" else "--write-file"
    return f"; to allow: {flag} {display_path}"
