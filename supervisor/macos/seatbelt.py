"""Compile a resolved ``Policy`` into a Seatbelt (SBPL) profile: pure, deterministic, testable on any OS.

The shape of the profile, top to bottom (Seatbelt applies the *last* matching rule, so order is policy):

1. ``(deny default)``, then the non-file operations every shell command needs, each narrowed where a
   narrower filter exists.
2. What may be read or written: ``/`` itself, metadata of the ancestors of every grant (``realpath`` walks
   them), the system read paths, then the user's grants.
3. Network: all or nothing.
4. Denied trees, "allow discovery, deny content": ``stat`` works, reading content and writing do not. Then
   explicit grants that lie inside a denied tree, each after the deny it overrides; denies and exceptions
   are sorted shallow to deep, so the most specific path always decides.
5. Runs-later paths: writes denied, then the human's flags at or below one of them (``--write-file
   ~/.tmux.conf``), the only thing that lifts it.
6. Never-grantable paths: writes denied last, so nothing above can re-open them.

``marker`` tags every deny rule with ``(with message "nono:<marker>")``; the kernel appends that text to the
denial it logs, which is how ``logstream`` attributes a ``log stream`` line to one command.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator

from nono_supervisor.errors import UsageError
from nono_supervisor.policy.profile import Deny, Grant, Policy

__all__ = ["generate_profile", "sbpl_string", "MARKER_PREFIX", "FORBIDDEN_OPERATIONS"]

MARKER_PREFIX = "nono:"
# A marker travels into the profile, the kernel log and a `log stream` predicate: keep it to characters that
# need no quoting in any of the three.
_MARKER_RE = re.compile(r"[A-Za-z0-9._-]{1,64}")

# Operations no sandboxed command is ever allowed (tests check none is emitted as allowed).
FORBIDDEN_OPERATIONS = (
    "system-audit",
    "system-privilege",
    "system-reboot",
    "system-set-time",
    "system-kext-load",
    "system-kext-unload",
    "system-mac-label",
    "system-nfssvc",
    "system-swap",
    "system-acct",
    "sysctl-write",
)

# /var, /etc and /tmp are symlinks into /private. Seatbelt matches the resolved vnode path, so a rule on
# "/tmp/x" alone never matches; each such path is emitted with its /private twin.
_PRIVATE_TOPS = ("/var", "/etc", "/tmp")

# Mach services that hand out keychain items. A file-level deny on ~/Library/Keychains does not stop a
# process asking securityd for a password over Mach IPC, so these go with the deny_keychains group.
_KEYCHAIN_SERVICES = (
    "com.apple.SecurityServer",
    "com.apple.securityd",
    "com.apple.security.keychaind",
    "com.apple.secd",
    "com.apple.security.agent",
)

# The terminal slaves a command inherits as stdin/stdout/stderr: isatty() and the window size are ioctls,
# and Seatbelt checks file-ioctl even on inherited fds. Opening them is NOT allowed (other terminals, the
# supervisor's own among them, are /dev/ttysNNN too).
_TTY_IOCTL = '(allow file-ioctl (regex #"^/dev/ttys[0-9]+$"))'


def sbpl_string(text: str) -> str:
    """``text`` as an SBPL string literal: backslash and double quote escaped, non-ASCII kept as UTF-8.

    Control characters are refused rather than escaped: a path rule that silently pointed somewhere else
    than the path the user named would be worse than no rule.
    """
    for ch in text:
        if ord(ch) < 0x20 or ord(ch) == 0x7F:
            raise UsageError(f"path {text!r}: a Seatbelt rule cannot hold control character U+{ord(ch):04X}")
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _twins(path: str) -> list[str]:
    out = [path]
    for top in _PRIVATE_TOPS:
        if path == top or path.startswith(top + "/"):
            out.append("/private" + path)
    return out


def _filter(path: str, kind: str) -> str:
    return f"({'literal' if kind == 'file' else 'subpath'} {sbpl_string(path)})"


def _filters(path: str, kind: str) -> list[str]:
    return [_filter(p, kind) for p in _twins(path)]


def _inside(path: str, tree: str) -> bool:
    """``path`` is ``tree`` or lies below it."""
    return path == tree or path.startswith(tree.rstrip("/") + "/")


def _ancestors(path: str) -> Iterator[str]:
    parent = path.rsplit("/", 1)[0]
    while parent:
        yield parent
        parent = parent.rsplit("/", 1)[0]


def _comment(text: str) -> str:
    return "; " + "".join(ch if ch.isprintable() else "?" for ch in text)


def _source(label: str) -> str:
    """Where a grant or deny came from, for a comment, without machine-specific directories."""
    if label.startswith("profile ") and "/" in label:
        return "profile " + label.rsplit("/", 1)[1]
    return label


def _ops(access: str) -> str:
    read = "file-read* file-map-executable file-ioctl"
    # Writing also needs to see the file: tools stat before they write.
    write = "file-write* file-read-metadata file-ioctl"
    if access == "read":
        return read
    if access == "write":
        return write
    return "file-read* file-write* file-map-executable file-ioctl"


def _is_exception(grant: Grant, deny: Deny) -> bool:
    """An explicit grant of a path inside a denied tree overrides that deny (CONTRACT: `--read-file
    ~/.aws/credentials`). Grants pulled in from a group never do, and a grant that merely *contains* a
    denied path (``--allow ~``) leaves the deny standing."""
    return not grant.source.startswith("group:") and _inside(grant.path, deny.path)


def _depth(path: str) -> int:
    return path.rstrip("/").count("/")


class _Profile:
    """An ordered list of lines with exact duplicates dropped (the security list names /etc and /private/etc
    both; the twin of one is the other)."""

    def __init__(self, marker: str | None) -> None:
        self.lines: list[str] = []
        self._seen: set[str] = set()
        self._message = f" (with message {sbpl_string(MARKER_PREFIX + marker)})" if marker else ""
        self.last_title = ""

    def add(self, line: str, *, force: bool = False) -> None:
        if force or line.startswith(";") or line not in self._seen:
            self._seen.add(line)
            self.lines.append(line)

    def allow(self, ops: str, filters: Iterable[str] = (), *, force: bool = False) -> None:
        for f in filters:
            self.add(f"(allow {ops} {f})", force=force)

    def deny(self, ops: str, filters: Iterable[str] | None = None, *, force: bool = False) -> None:
        """Deny rules carry the marker; ``filters=None`` denies the operations everywhere."""
        if filters is None:
            self.add(f"(deny {ops}{self._message})", force=force)
        for f in filters or ():
            self.add(f"(deny {ops} {f}{self._message})", force=force)

    def section(self, title: str) -> None:
        if self.lines and self.lines[-1] != "":
            self.lines.append("")
        self.lines.append(_comment(title))
        self.last_title = ""

    def text(self) -> str:
        return "\n".join(self.lines) + "\n"


def generate_profile(
    policy: Policy, marker: str | None = None, *, supervisor_socket: str | None = None
) -> str:
    """The Seatbelt profile enforcing ``policy``.

    ``marker`` (letters, digits, ``.``, ``_``, ``-``) tags the deny rules so the denials the kernel logs can
    be routed to one command. ``supervisor_socket`` is the one Unix socket a command may still connect to
    when the network is blocked (nested ``bash -c`` reaches the supervisor through it).
    """
    if marker is not None and not _MARKER_RE.fullmatch(marker):
        raise UsageError(f"seatbelt marker {marker!r}: use 1 to 64 letters, digits, '.', '_' or '-'")
    p = _Profile(marker)
    p.add("(version 1)")
    title = policy.profile.rsplit("/", 1)[-1]
    p.add(_comment(f"nono-shell per-command profile: {title}" + (f", command {marker}" if marker else "")))
    p.deny("default")

    p.section("Processes: run and fork anything readable; look only at itself; signal only its own sandbox.")
    p.add("(allow process-exec*)")
    p.add("(allow process-fork)")
    p.add("(allow process-info* (target self))")
    p.add("(allow signal (target same-sandbox))")

    p.section("System services a shell command expects. Not system-audit/privilege/reboot/set-time.")
    p.add("(allow sysctl-read)")
    p.add("(allow mach*)")
    # Host and other tasks' ports: debugger-grade control of processes outside the sandbox.
    p.deny("mach-priv*")
    p.add("(allow mach-priv-task-port (target same-sandbox))")
    keychains = [d for d in policy.denies if d.rule == "group:deny_keychains"]
    # An explicit grant inside ~/Library/Keychains is the user opting in to keychain access (a tool that
    # refreshes an OAuth token there); otherwise the daemons stay out of reach.
    if keychains and not any(_is_exception(g, d) for g in policy.grants for d in keychains):
        p.add(_comment("deny_keychains: the keychain daemons would hand out what the file denies protect."))
        for service in _KEYCHAIN_SERVICES:
            p.deny("mach-lookup", [f"(global-name {sbpl_string(service)})"])
    p.add("(allow ipc*)")
    p.add("(allow system-socket)")
    p.add("(allow system-fsctl)")
    p.add("(allow system-info)")

    p.section("Files: the root directory, inherited terminals, and the ancestors of every grant (metadata).")
    p.add('(allow file-read* (literal "/"))')
    p.add(_TTY_IOCTL)
    readable_dirs = [g.path for g in policy.grants if g.kind == "dir" and g.access != "write"]
    ancestors: set[str] = set()
    for grant in policy.grants:
        for path in _twins(grant.path):
            ancestors.update(_ancestors(path))
            for top in _PRIVATE_TOPS:
                if _inside(path, "/private" + top):
                    ancestors.add(top)  # the /var, /etc, /tmp symlink itself: lstat() walks through it
    ancestors.discard("")
    for path in sorted(a for a in ancestors if not any(_inside(a, d) for d in readable_dirs)):
        p.allow("file-read-metadata", [_filter(path, "file")])

    p.section("System paths, read-only (group:system_read).")
    for grant in policy.grants:
        if grant.source == "group:system_read":
            p.allow("file-read* file-map-executable", _filters(grant.path, grant.kind))

    p.section("Grants of the profile and the command line.")
    for grant in policy.grants:
        if grant.source != "group:system_read":
            p.add(_comment(f"{grant.access} {grant.kind} <- {_source(grant.source)}"))
            p.allow(_ops(grant.access), _filters(grant.path, grant.kind))

    p.section("Network.")
    if policy.net_block:
        p.deny("network*")
        if supervisor_socket:
            p.add(_comment("nested commands reach the supervisor through its socket"))
            p.allow("network-outbound", _filters(supervisor_socket, "file"))
    else:
        p.add("(allow network*)")

    _denies_and_exceptions(p, policy)
    _runs_later(p, policy)
    _protected(p, policy)
    return p.text()


def _writable_dirs(policy: Policy) -> list[str]:
    return [g.path for g in policy.grants if g.kind == "dir" and g.access in ("write", "allow")]


def _move_blockers(p: _Profile, paths: Iterable[str], writable: list[str]) -> None:
    """Renaming a directory that *contains* a denied path moves the path out from under its rule
    (``mv a b; cat b/secret``). Rename checks file-write-unlink on its source, so the ancestors that lie in
    a writable tree may not be unlinked or renamed. Ancestors outside writable trees are unwritable anyway."""
    ancestors = {a for path in paths for twin in _twins(path) for a in _ancestors(twin)}
    blocked = sorted(a for a in ancestors if any(_inside(a, w) for w in writable))
    for ancestor in blocked:
        p.deny("file-write-unlink", [_filter(ancestor, "file")])


def _deny_tree(p: _Profile, deny: Deny, *, again: bool = False) -> None:
    title = _comment(f"deny {_source(deny.rule)}" + (" (again: inside an exception above)" if again else ""))
    if title != p.last_title:  # one title per run of paths from the same rule
        p.add(title)
        p.last_title = title
    where = _filters(deny.path, "dir")
    p.allow("file-read-metadata", where, force=again)
    p.deny("file-read-data", where, force=again)
    p.deny("file-write*", where, force=again)
    # A hard link or clone in the workdir would name the same content by a path no deny matches.
    p.deny("file-link file-clone", where, force=again)
    # A Unix socket inside a denied tree (gpg-agent under ~/.gnupg) is reached with connect().
    p.deny("network-outbound", where, force=again)


def _denies_and_exceptions(p: _Profile, policy: Policy) -> None:
    if not policy.denies:
        return
    p.section("Denied trees: discovery allowed, content denied.")
    for deny in policy.denies:
        _deny_tree(p, deny)
    _move_blockers(p, (d.path for d in policy.denies), _writable_dirs(policy))

    exceptions = [g for g in policy.grants if any(_is_exception(g, d) for d in policy.denies)]
    if not exceptions:
        return
    p.section("Explicit grants inside denied trees, after the denies they override (last match wins).")
    # Most specific last: a grant of ~/.aws re-opens ~/.aws, so a deny of ~/.aws/sso below it must follow
    # it again. Sorted shallow to deep, and at the same depth the deny before the grant.
    nested = [
        d for d in policy.denies if any(d.path != g.path and _inside(d.path, g.path) for g in exceptions)
    ]
    items: list[tuple[int, int, int, Deny | Grant]] = [
        (_depth(d.path), 0, i, d) for i, d in enumerate(nested)
    ]
    items += [(_depth(g.path), 1, i, g) for i, g in enumerate(exceptions)]
    for _, _, _, item in sorted(items, key=lambda t: t[:3]):
        if isinstance(item, Deny):
            _deny_tree(p, item, again=True)
            continue
        # The allow names the same operations as the deny it overrides: Seatbelt weighs the operation
        # before the path, and a broader file-read* allow has been seen to lose to a file-read-data deny.
        overridden = ", ".join(sorted({d.rule for d in policy.denies if _is_exception(item, d)}))
        p.add(_comment(f"{item.access} {item.kind} <- {_source(item.source)}, overrides {overridden}"))
        where = _filters(item.path, item.kind)
        if item.access in ("read", "allow"):
            p.allow("file-read-data", where)
        if item.access in ("write", "allow"):
            p.allow("file-write*", where)


def _runs_later(p: _Profile, policy: Policy) -> None:
    if not policy.runs_later:
        return
    p.section("Runs later outside any sandbox (DESIGN invariant 10): read-only, but for the human's flags.")
    paths = [entry.path for entry in policy.runs_later]
    for path in paths:
        where = _filters(path, "dir")
        p.deny("file-write*", where)
        p.deny("file-link file-clone", where)
    _move_blockers(p, paths, _writable_dirs(policy))
    for grant in policy.grants:
        named = grant.source.startswith("--") and grant.access in ("write", "allow")
        if named and any(_inside(grant.path, path) for path in paths):
            p.add(_comment(f"{grant.access} {grant.kind} <- {_source(grant.source)} (lifts runs-later)"))
            p.allow("file-write*", _filters(grant.path, grant.kind))


def _protected(p: _Profile, policy: Policy) -> None:
    if not policy.protected:
        return
    p.section("Never grantable: nono-shell's own config, grants, audit log, socket dir, package, shims.")
    for path in policy.protected:
        where = _filters(path, "dir")
        p.deny("file-write*", where)
        p.deny("file-link file-clone", where)
    _move_blockers(p, policy.protected, _writable_dirs(policy))
