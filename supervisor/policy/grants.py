"""The persistent grant store: the "always" answers, in ``$XDG_CONFIG_HOME/nono-shell/grants.toml``.

A grant outlives the session that asked, so the file is written the careful way: under an exclusive
``flock`` on ``grants.toml.lock`` (two supervisors answering at once must not lose a grant), through a
temp file in the same directory that is fsynced and renamed over the old one (a crash leaves the old file
or the new one, never half of either). The file is hand-editable TOML; anything malformed in it is a
``UsageError`` naming the file and the entry, never a silently ignored grant.
"""

from __future__ import annotations

import fcntl
import os
import re
import secrets
import stat
import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from nono_supervisor.errors import NonoError, UsageError
from nono_supervisor.paths import under
from nono_supervisor.policy.netpolicy import Pattern, parse_pattern
from nono_supervisor.policy.profile import Grant

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

__all__ = [
    "StoredGrant",
    "GrantStore",
    "to_policy_grants",
    "to_domain_patterns",
    "ACCESSES",
    "KINDS",
    "SOURCE",
    "DOMAIN",
    "MAX_STORE_BYTES",
]

ACCESSES = ("read", "write", "allow")
KINDS = ("file", "dir")
# A network grant ("always" for a host): kind "domain", access "connect", path a host pattern
# ("api.example.com:443"), decided by the supervisor's proxy; never a path of any sandbox.
DOMAIN = "domain"
SOURCE = "grant-store"  # Grant.source, and the audit log's `by`
_REQUIRED = ("id", "path", "access", "kind", "created", "command")
_KEYS = ("id", "path", "access", "kind", "created", "expires", "command")  # file order
_MAX_COMMAND = 1000  # informational only; a heredoc should not bloat the file
# The largest grants.toml read (issue 23, finding 7: a 50 MB store of 200,000 grants took 48.6 s and 302 MB
# to start, and every change to it stalled the next command 70 s). "always" answers are added one at a time
# by a human; 256 KiB holds about 1,150 of them. At the cap a session starts with it in 0.09 s, reloads it
# after a change in 0.07 s and compiles its Landlock plan in 0.07-0.12 s (bench/bench_grants.py, a shared
# 2-core machine), so the reload need not be incremental. Over the cap the store is refused in one line
# before it is parsed, until grants are revoked (revoke reads it whatever its size) or the file is edited.
MAX_STORE_BYTES = 256 << 10
_HEADER = (
    '# nono-shell persistent grants ("always" answers). Manage with: nono-supervisor grants list|revoke ID\n'
)


@dataclass(frozen=True)
class StoredGrant:
    id: str  # short, stable, unique: 8 hex chars
    path: str  # absolute, normalised
    access: str  # read | write | allow
    kind: str  # file | dir
    created: str  # ISO 8601 UTC, "2025-01-31T12:00:00Z"
    expires: str | None  # ISO 8601 UTC, or None for never
    command: str  # the command line that asked (informational)
    line: int = field(default=0, compare=False)  # where its [[grant]] begins in the file (0: not known)

    def expired(self, now: datetime) -> bool:
        """True once ``now`` has reached ``expires``; a grant without one never expires."""
        return self.expires is not None and _parse_time(self.expires) <= _utc(now)

    def expires_at(self) -> float | None:
        """``expires`` as a Unix time (``time.time()``), None for never."""
        return None if self.expires is None else _parse_time(self.expires).timestamp()


def to_policy_grants(grants: list[StoredGrant]) -> list[Grant]:
    """Stored grants as policy grants (source ``grant-store``), to append to a resolved policy."""
    return [Grant(g.path, g.access, g.kind, SOURCE) for g in grants if g.kind != DOMAIN]


def to_domain_patterns(grants: list[StoredGrant]) -> list[Pattern]:
    """The stored domain grants as host patterns (source ``grant-store``), for the proxy's allow-list."""
    return [parse_pattern(g.path, SOURCE, "grants.toml") for g in grants if g.kind == DOMAIN]


class GrantStore:
    """Read, add and revoke persistent grants in one TOML file (``paths.grants_path(env)``)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.lock_path = self.path.with_name(self.path.name + ".lock")

    def stamp(self) -> tuple[int, int, int, int, int] | None:
        """What changes whenever the file does (every write is a rename: a new inode; a hand edit moves
        mtime/ctime/size): one ``stat``, cheap enough to call before every lookup. None: no file."""
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)

    def load(self, now: datetime | None = None, protected: tuple[str, ...] = ()) -> list[StoredGrant]:
        """The grants in force at ``now`` (default: the current time); a missing file is an empty store.
        Each is checked as ``add`` checks a new one (a hand edit is no way around it): ``/``, or write
        access at, below or above a ``protected`` path, is a ``UsageError`` naming the file and line."""
        moment = _utc(now) if now is not None else datetime.now(timezone.utc)
        grants = [g for g in self._read() if not g.expired(moment)]
        for g in grants:
            if g.kind != DOMAIN:
                where = f"{self.path}:{g.line}" if g.line else str(self.path)
                _check_grantable(g.path, g.access, protected, f"{where}: grant {g.id!r}")
        return grants

    def add(
        self,
        path: str,
        access: str,
        kind: str,
        command: str = "",
        expires: datetime | None = None,
        *,
        protected: tuple[str, ...] = (),
    ) -> StoredGrant:
        """Persist one grant and return it. An identical grant already in force that lasts at least as
        long is returned instead of adding a duplicate. Write access at, below or above a ``protected``
        path (CONTRACT: never grantable) is refused: write on ``~`` would cover nono-shell's own config."""
        where = f"{self.path}: cannot add grant"
        if kind == DOMAIN:
            path = _check_domain(path, access, where)
        else:
            _check_path(path, where)
            path = os.path.normpath(path)
            if access not in ACCESSES:
                raise UsageError(f"{where}: access must be one of {', '.join(ACCESSES)}, got {access!r}")
            if kind not in KINDS:
                raise UsageError(f"{where}: kind must be one of {', '.join(KINDS)}, got {kind!r}")
        if kind != DOMAIN:
            _check_grantable(path, access, protected, where)
        now = datetime.now(timezone.utc)
        until = None
        if expires is not None:
            if _utc(expires) <= now:
                raise UsageError(f"{where}: expiry {_iso(expires)} is not in the future")
            until = _iso(expires)
        command = command.encode("utf-8", "backslashreplace").decode("utf-8")  # surrogates -> \udcxx text
        if len(command) > _MAX_COMMAND:
            command = command[: _MAX_COMMAND - 1] + "…"
        with self._locked():
            grants = [g for g in self._read() if not g.expired(now)]  # expired entries are pruned here
            for g in grants:
                if (g.path, g.access, g.kind) == (path, access, kind) and _outlasts(g.expires, until):
                    return g
            ids = {g.id for g in grants}
            grant_id = secrets.token_hex(4)
            while grant_id in ids:
                grant_id = secrets.token_hex(4)
            grant = StoredGrant(grant_id, path, access, kind, _iso(now), until, command)
            text = _dump([*grants, grant])
            if len(text.encode()) > MAX_STORE_BYTES:
                raise UsageError(f"{where}: the store would grow past {_CAP}; revoke grants first")
            self._write(text)
            return grant

    def revoke(self, grant_id: str) -> bool:
        """Remove the grant with this id; False when there is none (expired entries go at the same time).
        A store over the cap is read all the same: revoking is how it gets back under."""
        with self._locked():
            grants = self._read(capped=False)
            kept = [g for g in grants if g.id != grant_id]
            if len(kept) == len(grants):
                return False
            now = datetime.now(timezone.utc)
            self._write(_dump([g for g in kept if not g.expired(now)]))
            return True

    # -- file handling ---------------------------------------------------------------------------------

    def _read(self, capped: bool = True) -> list[StoredGrant]:
        """Every entry of the file, expired ones included, validated; [] when there is no file. ``capped``:
        a file over ``MAX_STORE_BYTES`` is refused before it is parsed."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK)  # a FIFO must not hang us
        except FileNotFoundError:
            return []
        except OSError as e:
            raise UsageError(f"{self.path}: cannot read grants: {e.strerror}") from e
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise UsageError(f"{self.path}: not a regular file")
        if st.st_uid not in (os.geteuid(), 0) or st.st_mode & 0o022:
            os.close(fd)
            raise UsageError(
                f"{self.path}: owned by uid {st.st_uid} with mode {stat.S_IMODE(st.st_mode):o}; "
                "grants must be writable only by you (chmod 600)"
            )
        limit = MAX_STORE_BYTES if capped else st.st_size + (1 << 20)
        with os.fdopen(fd, "rb") as f:
            try:
                raw = f.read(limit + 1)  # not st_size: the file may grow while it is read
            except OSError as e:
                raise UsageError(f"{self.path}: cannot read grants: {e.strerror}") from e
        if len(raw) > limit:
            raise UsageError(
                f"{self.path}: over the {_CAP} a grant store may hold; revoke grants"
                " (nono-supervisor grants revoke ID) or edit the file"
            )
        try:
            text = raw.decode("utf-8")
            data = tomllib.loads(text)
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
            raise UsageError(f"{self.path}: invalid TOML: {e}") from e
        return _validate(data, str(self.path), _table_lines(text))

    def _write(self, text: str) -> None:
        """Replace the file with ``text`` atomically (caller holds the lock): temp file, fsync, rename,
        fsync dir."""
        directory = self.path.parent
        tmp = directory / f".{self.path.name}.{secrets.token_hex(6)}.tmp"
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as e:
            raise NonoError(f"{self.path}: cannot write grants: {e.strerror}") from e
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                os.fchmod(f.fileno(), 0o600)  # whatever the umask
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException as e:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if isinstance(e, OSError):
                raise NonoError(f"{self.path}: cannot write grants: {e.strerror or e}") from e
            raise
        try:
            _fsync_dir(directory)
        except OSError as e:
            raise NonoError(f"{directory}: cannot sync after writing grants: {e.strerror}") from e

    @contextmanager
    def _locked(self) -> Iterator[None]:
        """Exclusive flock on ``grants.toml.lock`` around a read-modify-write; clears stale temp files
        (a writer killed between creating its temp file and the rename), which only a lock holder may."""
        self._ensure_dir()
        try:
            fd = os.open(self.lock_path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
        except OSError as e:
            raise NonoError(f"{self.lock_path}: cannot open lock file: {e.strerror}") from e
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            prefix = f".{self.path.name}."
            for entry in os.scandir(self.path.parent):
                if entry.name.startswith(prefix) and entry.name.endswith(".tmp"):
                    try:
                        os.unlink(entry.path)
                    except OSError:
                        pass
            yield
        finally:
            os.close(fd)  # releases the lock

    def _ensure_dir(self) -> None:
        """Create the store's directory 0700 (not umask-dependent); an existing one is left as it is."""
        directory = self.path.parent
        if directory.is_dir():
            return
        directory.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            return
        except OSError as e:
            raise NonoError(f"{directory}: cannot create: {e.strerror}") from e
        os.chmod(directory, 0o700)


# -- validation -------------------------------------------------------------------------------------------


_CAP = f"{MAX_STORE_BYTES >> 10} KiB"
_TABLE = re.compile(r"[ \t]*\[\[[ \t]*grant[ \t]*\]\]")


def _table_lines(text: str) -> list[int]:
    """The line number of each ``[[grant]]`` header, in order (what a hand editor looks for)."""
    return [n for n, line in enumerate(text.splitlines(), 1) if _TABLE.match(line)]


def _validate(data: dict[str, Any], origin: str, lines: Sequence[int] = ()) -> list[StoredGrant]:
    for key in data:
        if key != "grant":
            raise UsageError(f"{origin}: unknown key '{key}' (expected [[grant]] entries)")
    entries = data.get("grant", [])
    if not isinstance(entries, list) or not all(isinstance(e, dict) for e in entries):
        raise UsageError(f"{origin}: 'grant' must be an array of tables ([[grant]])")
    grants: list[StoredGrant] = []
    seen: set[str] = set()
    if len(lines) != len(entries):
        lines = [0] * len(entries)  # grant = [{...}] written inline: no header to point at
    for n, (entry, line) in enumerate(zip(entries, lines, strict=True), 1):
        where = f"{origin}:{line}: grant #{n}" if line else f"{origin}: grant #{n}"
        if isinstance(entry.get("id"), str):
            where += f" (id {entry['id']!r})"
        for key, value in entry.items():
            if key not in _KEYS:
                raise UsageError(f"{where}: unknown key '{key}'")
            if not isinstance(value, str):
                raise UsageError(f"{where}: '{key}' must be a string, got {type(value).__name__}")
        for key in _REQUIRED:
            if key not in entry:
                raise UsageError(f"{where}: missing key '{key}'")
        if not entry["id"] or entry["id"] in seen:
            raise UsageError(f"{where}: 'id' must be non-empty and unique")
        seen.add(entry["id"])
        if entry["kind"] == DOMAIN:
            _check_domain(entry["path"], entry["access"], f"{where}: 'path'")
        else:
            _check_path(entry["path"], f"{where}: 'path'")
            if entry["access"] not in ACCESSES:
                raise UsageError(
                    f"{where}: 'access' must be one of {', '.join(ACCESSES)}, got {entry['access']!r}"
                )
            if entry["kind"] not in KINDS:
                raise UsageError(
                    f"{where}: 'kind' must be one of {', '.join((*KINDS, DOMAIN))}, got {entry['kind']!r}"
                )
        for key in ("created", "expires"):
            if key in entry:
                try:
                    _parse_time(entry[key])
                except ValueError:
                    raise UsageError(
                        f"{where}: '{key}' must be an ISO 8601 time, got {entry[key]!r}"
                    ) from None
        grants.append(
            StoredGrant(
                id=entry["id"],
                path=entry["path"] if entry["kind"] == DOMAIN else os.path.normpath(entry["path"]),
                access=entry["access"],
                kind=entry["kind"],
                created=entry["created"],
                expires=entry.get("expires"),
                command=entry["command"],
                line=line,
            )
        )
    return grants


def _check_path(path: object, where: str) -> None:
    if not isinstance(path, str) or not os.path.isabs(path):
        raise UsageError(f"{where}: path must be absolute, got {path!r}")
    if "\0" in path:
        raise UsageError(f"{where}: path contains a NUL byte: {path!r}")
    try:
        path.encode("utf-8")
    except UnicodeEncodeError:
        raise UsageError(f"{where}: path is not valid UTF-8 (cannot be stored): {path!r}") from None


def _check_grantable(path: str, access: str, protected: tuple[str, ...], where: str) -> None:
    """What no grant may be, whether an answer adds it or a hand edit does: ``/`` (every file of the
    machine; the never-grantable paths stay denied, but ``/etc`` and ``~`` would not be), or write access
    at, below or above a ``protected`` path (write on ``~`` would cover nono-shell's own config)."""
    mine = _forms(path)
    if "/" in mine:  # "//", "/usr/.." and a link to / too
        raise UsageError(f"{where}: {access} on '/' would cover every file, never-grantable ones included")
    if access != "read":
        for top in protected:
            if any(under(a, b) or under(b, a) for a in mine for b in _forms(top)):
                raise UsageError(f"{where}: {access} on {path!r} would cover never-grantable {top!r}")


def _forms(path: str) -> tuple[str, str]:
    """``path`` as given and as resolved (through a link into a protected tree)."""
    return os.path.normpath(path), os.path.realpath(path)


def _check_domain(pattern: object, access: str, where: str) -> str:
    """A domain grant's host pattern, normalized; access must be ``connect``."""
    if access != "connect":
        raise UsageError(f"{where}: a domain grant's access must be 'connect', got {access!r}")
    return parse_pattern(pattern, SOURCE, where).text()


# -- time -------------------------------------------------------------------------------------------------


def _utc(moment: datetime) -> datetime:
    """Aware UTC; a naive datetime is taken as local time (``datetime.astimezone``'s convention)."""
    return moment.astimezone(timezone.utc)


def _iso(moment: datetime) -> str:
    return _utc(moment).strftime("%Y-%m-%dT%H:%M:%SZ")


def _outlasts(existing: str | None, wanted: str | None) -> bool:
    """An existing grant's expiry covers the wanted one (None is never)."""
    if existing is None:
        return True
    return wanted is not None and _parse_time(existing) >= _parse_time(wanted)


def _parse_time(text: str) -> datetime:
    """ISO 8601 as Python 3.10's ``fromisoformat`` reads it, plus a trailing ``Z``; no offset means UTC."""
    if text[-1:] in ("Z", "z"):
        text = text[:-1] + "+00:00"
    moment = datetime.fromisoformat(text)
    return moment.replace(tzinfo=timezone.utc) if moment.tzinfo is None else moment.astimezone(timezone.utc)


# -- writing ----------------------------------------------------------------------------------------------

_ESCAPES = {'"': '\\"', "\\": "\\\\", "\b": "\\b", "\t": "\\t", "\n": "\\n", "\f": "\\f", "\r": "\\r"}


def _toml_string(value: str) -> str:
    """A TOML basic string: quote, backslash and control characters escaped, other text kept as UTF-8.
    Lone surrogates (undecodable bytes under surrogateescape) cannot be UTF-8: ValueError."""
    out = []
    for ch in value:
        code = ord(ch)
        if ch in _ESCAPES:
            out.append(_ESCAPES[ch])
        elif code < 0x20 or 0x7F <= code <= 0x9F:  # C0, DEL and C1 (C1 is optional; keeps `cat` safe)
            out.append(f"\\u{code:04X}")
        elif 0xD800 <= code <= 0xDFFF:
            raise ValueError(f"lone surrogate U+{code:04X} in {value!r}")
        else:
            out.append(ch)
    return '"' + "".join(out) + '"'


def _dump(grants: list[StoredGrant]) -> str:
    """The whole file: a header comment and one ``[[grant]]`` table per grant; no ``expires`` = never."""
    lines = [_HEADER]
    for g in grants:
        lines.append("\n[[grant]]\n")
        for key in _KEYS:
            value = getattr(g, key)
            if value is not None:
                lines.append(f"{key} = {_toml_string(value)}\n")
    return "".join(lines)


def _fsync_dir(directory: Path) -> None:
    """Make the rename itself durable."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
