"""Landlock: compile a ``Policy`` into a ``LandlockPlan`` (pure but for reading directories), and turn a
plan into a ruleset fd in the supervisor (the child only calls ``landlock_restrict_self`` on it).

Deny-inside-allow: Landlock rules only grant, and a rule on a directory covers its whole subtree. So a
grant of P with a denied D below it is compiled into rules on P's *siblings* along the path to D, never
on D or its ancestors (DESIGN.md). Rights that no deny below P removes are still granted on P itself.
"""

from __future__ import annotations

import ctypes
import errno
import os
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field

from supervisor.errors import SandboxError
from supervisor.policy import NEVER_GRANTABLE, Grant, Policy

__all__ = [
    "ACCESS_FS",
    "LandlockPlan",
    "Rule",
    "abi_version",
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
_ACCESS = {"read": READ, "write": WRITE, "allow": READ | WRITE}

_SYS_CREATE_RULESET, _SYS_ADD_RULE = 444, 445
_CREATE_RULESET_VERSION = 1
_RULE_PATH_BENEATH = 1
_RULE_NET_PORT = 2  # ABI 4: struct landlock_net_port_attr { __u64 allowed_access; __u64 port; }
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _syscall(*args: int | bytes | None) -> int:
    result = _libc.syscall(*args)
    if result < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return result


def abi_version() -> int:
    """The kernel's Landlock ABI (1..7 here), 0 when Landlock is missing or disabled at boot."""
    try:
        return _syscall(_SYS_CREATE_RULESET, None, 0, _CREATE_RULESET_VERSION)
    except OSError as e:
        if e.errno in (errno.ENOSYS, errno.EOPNOTSUPP):
            return 0
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
        self.handled = plan.handled_fs

    def rights(self, path: str) -> int:
        rules = self._rules
        granted = rules.get(path, 0)
        while len(path) > 1:
            path = path[: path.rindex("/")] or "/"
            granted |= rules.get(path, 0)
        return granted

    def allows(self, path: str, needed: int) -> bool:
        needed &= self.handled  # a right this kernel does not handle is not restricted by it
        return self.rights(path) & needed == needed


@dataclass(frozen=True)
class _Carve:
    path: str
    removed: int
    rule: str


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _rights(grant: Grant) -> int:
    rights = _ACCESS[grant.access]
    return rights & FILE_RIGHTS if grant.kind == "file" else rights


class _Compiler:
    def __init__(self, mask: int) -> None:
        self.mask = mask
        self.rules: dict[str, tuple[int, str]] = {}
        self.notes: list[str] = []

    def add(self, path: str, rights: int, why: str) -> None:
        if not os.path.isdir(path):
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
        if not inner or not os.path.isdir(path) or os.path.islink(path):
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
            names = sorted(os.listdir(path))
        except OSError as e:
            self.notes.append(
                f"{path}: cannot list ({e.strerror}); its entries get no rights beyond the above"
            )
            return
        for name in names:
            child = os.path.join(path, name)
            if os.path.islink(child):
                continue  # a link needs no right to be followed; its target is governed by its own rules
            self.emit(child, rest, [c for c in inner if _under(c.path, child)], why)


def compile_plan(
    policy: Policy, abi: int, extra: Iterable[Grant] = (), connect_ports: Iterable[int] = ()
) -> LandlockPlan:
    """The rules for ``policy`` (plus ``extra`` grants the route itself needs) at Landlock ``abi``.
    ``connect_ports``: in domains mode, the supervisor's proxy port, the one TCP port connect() may reach
    (the kernel's backstop: the notify layer lets through only the proxy's own address)."""
    if abi < 1:
        raise SandboxError("Landlock is not available. Hint: needs Linux >= 5.13 with lsm=landlock enabled")
    mask = handled_fs(abi)
    compiler = _Compiler(mask)
    carves = [_Carve(os.path.realpath(d.path), mask, d.rule) for d in policy.denies]
    protected = [_Carve(os.path.realpath(p), WRITE, "never-grantable") for p in policy.protected]
    for grant in (*policy.grants, *extra):
        path = os.path.realpath(grant.path)
        if not os.path.exists(path):
            compiler.notes.append(
                f"{policy.display(grant.path)}: does not exist, not granted ({grant.source})"
            )
            continue
        rights = _rights(grant)
        inside = [c for c in carves if _under(path, c.path)]
        if inside and (grant.source.startswith("group:") or any(c.rule == NEVER_GRANTABLE for c in inside)):
            continue  # group grants never override a deny; explicit ones inside one do, unless it is sealed
        applicable = [c for c in carves if _under(c.path, path) and c.path != path]
        applicable += [c for c in protected if _under(c.path, path)]
        rights &= ~_protected_removal(path, protected)
        compiler.emit(path, rights, applicable, grant.source)
    notes = list(compiler.notes)
    granted = [os.path.realpath(g.path) for g in policy.grants]
    for carve in carves:
        if any(_under(carve.path, root) and carve.path != root for root in granted):
            notes.append(
                f"deny {policy.display(carve.path)} ({carve.rule}): Landlock grants the siblings along its"
                " path; creating, removing or listing directly in its parent directories is carried out by"
                " the supervisor (seccomp), or refused with --no-trap"
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
    return LandlockPlan(abi, mask, handled_net, scoped, rules, tuple(notes), ports)


def _protected_removal(path: str, protected: list[_Carve]) -> int:
    """Write rights are removed from a grant that lies inside a never-grantable path."""
    return WRITE if any(_under(path, c.path) and c.path != path for c in protected) else 0


def create_ruleset(plan: LandlockPlan) -> int:
    """A ruleset fd (O_CLOEXEC) holding ``plan``; the child restricts itself with it. Fails closed."""
    attr = struct.pack("QQQ", plan.handled_fs, plan.handled_net, plan.scoped)
    size = 8 if plan.abi < 4 else (16 if plan.abi < 6 else 24)
    try:
        ruleset = _syscall(_SYS_CREATE_RULESET, attr, size, 0)
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
                _syscall(_SYS_ADD_RULE, ruleset, _RULE_PATH_BENEATH, beneath, 0)
            finally:
                os.close(fd)
        for port in plan.connect_ports:
            net_port = struct.pack("=QQ", ACCESS_NET_CONNECT_TCP, port)
            _syscall(_SYS_ADD_RULE, ruleset, _RULE_NET_PORT, net_port, 0)
    except OSError as e:
        os.close(ruleset)
        raise SandboxError(f"landlock_add_rule: {e.strerror}") from None
    return ruleset
