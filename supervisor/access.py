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

from nono_supervisor.netpolicy import network_hint
from nono_supervisor.policy import NEVER_GRANTABLE, NOT_ITS_TERMINAL, RUNS_LATER, Grant, Policy

__all__ = ["Verdict", "AccessIndex", "OPS", "hint_for", "real_paths"]

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


@dataclass(frozen=True)
class Verdict:
    allowed: bool
    rule: str  # the grant's source when allowed; the deny rule, "never-grantable" or "not granted" when not


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _pattern_directory(pattern: str) -> str | None:
    """The directory of a probe pattern when it is a plain path (resolved like the others), else None."""
    directory = os.path.dirname(pattern)
    return None if any(c in directory for c in "*?[") else directory


def real_paths(policy: Policy, realpath: Callable[[str], str]) -> dict[str, str]:
    """Where each path of ``policy`` really is (``realpath``: ``os.path.realpath``, or a fake filesystem's),
    the facts ``AccessIndex`` compares against: grants, denies, protected and runs-later paths, and the
    directory of each probe pattern."""
    paths = [
        *(g.path for g in policy.grants),
        *(d.path for d in policy.denies),
        *policy.protected,
        *(entry.path for entry in policy.runs_later),
        *(d for d in map(_pattern_directory, (probe.pattern for probe in policy.probes)) if d is not None),
    ]
    return {path: realpath(path) for path in dict.fromkeys(paths)}


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


class AccessIndex:
    """Answers ``verdict(real_path, op)`` for one policy. Paths must already be resolved (realpath), and so
    must the policy's own: ``real`` maps each of them to where it really is (``real_paths``)."""

    def __init__(self, policy: Policy, real: Mapping[str, str]) -> None:
        self.policy = policy
        self._grants = [(real[g.path], g) for g in policy.grants]
        self._denies = [(real[d.path], d.rule) for d in policy.denies]
        self._protected = [real[p] for p in policy.protected]
        self._probes = [(self._real_pattern(probe.pattern, real), probe.rule) for probe in policy.probes]
        self._runs_later = [real[entry.path] for entry in policy.runs_later]

    @staticmethod
    def _real_pattern(pattern: str, real: Mapping[str, str]) -> str:
        """A pattern whose directory is a plain path, with that directory resolved (paths are compared
        real)."""
        directory = _pattern_directory(pattern)
        return pattern if directory is None else os.path.join(real[directory], os.path.basename(pattern))

    def denied_below(self, path: str) -> list[tuple[str, str]]:
        """Denied, never-grantable and runs-later nodes strictly inside ``path``: moving or removing it
        moves them."""
        inside = [(d, rule) for d, rule in self._denies if d != path and _under(d, path)]
        protected = [(p, "never-grantable") for p in self._protected if p != path and _under(p, path)]
        later = [(p, RUNS_LATER) for p in self._runs_later if p != path and _under(p, path)]
        return inside + protected + later

    def verdict(self, path: str, op: str) -> Verdict:
        need = OPS[op]
        if need == "write" and any(_under(path, p) for p in self._protected):
            return Verdict(False, "never-grantable")
        covering = [(d, rule) for d, rule in self._denies if _under(path, d)]
        if any(rule == NEVER_GRANTABLE for _d, rule in covering):
            return Verdict(False, NEVER_GRANTABLE)  # sealed (an agent's state): nothing inside lifts it
        deny = max(covering, key=lambda x: len(x[0]), default=None)
        best = None
        for root, grant in self._grants:
            if grant.access not in (need, "allow"):
                continue
            covers = _covers_file(root, path) if grant.kind == "file" else _under(path, root)
            if covers and (best is None or len(root) > len(best[0])):
                best = (root, grant)
        if deny is not None:
            # Only an explicit grant at or below the denied node overrides it (CONTRACT: --read-file
            # ~/.aws/credentials beats deny_credentials); group grants never do; a sealed path, nothing.
            lifts = best is not None and not best[1].source.startswith("group:") and _under(best[0], deny[0])
            if deny[1] == NEVER_GRANTABLE or not lifts:
                return Verdict(False, deny[1])
        if need == "write" and not self._lifted(path, best):
            return Verdict(False, RUNS_LATER)
        if best is None:
            return Verdict(False, self._ungranted_rule(path))
        return Verdict(True, best[1].source)

    def _lifted(self, path: str, best: tuple[str, Grant] | None) -> bool:
        """Whether ``path`` is outside every runs-later entry, or the grant that covers it is the human's
        flag at or below each entry that holds it (``--write-file ~/.tmux.conf``): a wider grant, a group,
        a profile, an answer or a stored "always" never is."""
        holding = [entry for entry in self._runs_later if _under(path, entry)]
        if not holding:
            return True
        if best is None or not best[1].source.startswith("--"):
            return False
        return all(_under(best[0], entry) for entry in holding)

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
    if rule in _NO_FLAG or display_path == "/proc" or display_path.startswith("/proc/"):
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
