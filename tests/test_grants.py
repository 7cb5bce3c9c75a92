"""The persistent grant store: file format, expiry, revoke, errors, atomic and concurrent writes.

Every store lives in pytest's tmp_path; nothing here reads or writes the real home.
"""

from __future__ import annotations

import multiprocessing
import os
import random
import re
import signal
import stat
import subprocess
import sys
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pytest

from conftest import NOBODY, SUPERVISOR
from nono_supervisor import paths
from nono_supervisor.errors import NonoError, UsageError
from nono_supervisor.policy import grants as grants_mod
from nono_supervisor.policy.grants import GrantStore, StoredGrant, to_policy_grants
from nono_supervisor.policy.profile import Grant

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

NASTY = [
    "/home/u/with space/file.txt",
    '/home/u/"quoted"/it\'s',
    "/home/u/back\\slash\\",
    "/home/u/ünïcödé/日本語/😀",
    "/home/u/new\nline",
    "/home/u/tab\there/cr\rand\x01ctl\x7fdel\x85nel",
    '/home/u/#not a comment = "x"',
    "/home/u/\\u0041 literal escape",
]


@pytest.fixture
def store(tmp_path: Path) -> GrantStore:
    return GrantStore(
        paths.grants_path({"XDG_CONFIG_HOME": str(tmp_path / "config"), "HOME": "/nonexistent"})
    )


def write_file(store: GrantStore, text: str) -> None:
    store.path.parent.mkdir(parents=True, exist_ok=True)
    store.path.write_text(textwrap.dedent(text), encoding="utf-8")
    store.path.chmod(0o600)


def test_grants_path_is_under_xdg_config(tmp_path: Path, store: GrantStore) -> None:
    assert store.path == tmp_path / "config" / "nono-shell" / "grants.toml"


def test_missing_file_is_empty(store: GrantStore) -> None:
    assert store.load() == []
    assert not store.path.parent.exists()  # reading creates nothing


def test_round_trip_nasty_paths(store: GrantStore) -> None:
    added = [store.add(p, "read", "file", command=f"cat {p!r}") for p in NASTY]
    added.append(store.add("/srv/data", "allow", "dir", command='echo "hi" \\ \x1b[31m'))
    assert store.load() == added
    assert len({g.id for g in added}) == len(added)
    for g in added:
        assert len(g.id) == 8 and int(g.id, 16) >= 0
        assert g.expires is None
        assert g.created.endswith("Z")
    # The file is plain TOML that any reader parses to the same values, and UTF-8 is kept, not escaped.
    raw = store.path.read_bytes()
    assert "日本語".encode() in raw
    data = tomllib.loads(raw.decode("utf-8"))
    assert [e["path"] for e in data["grant"]] == [*NASTY, "/srv/data"]
    assert all("expires" not in e for e in data["grant"])  # TOML has no null: absent means never


def test_toml_string_escapes_every_character() -> None:
    rng = random.Random(1234)
    chars = [chr(c) for c in range(0x300)] + ["\u2028", "\ufeff", "\U0010ffff"]
    for _ in range(300):
        value = "".join(rng.choice(chars) for _ in range(rng.randint(0, 40)))
        assert tomllib.loads(f"k = {grants_mod._toml_string(value)}")["k"] == value
    big = "".join(chr(c) for c in range(0x20000) if not 0xD800 <= c <= 0xDFFF)
    assert tomllib.loads(f"k = {grants_mod._toml_string(big)}")["k"] == big


def test_surrogates_are_refused(store: GrantStore) -> None:
    undecodable = os.fsdecode(b"/home/u/\xff\xfe")
    with pytest.raises(UsageError, match="not valid UTF-8"):
        store.add(undecodable, "read", "file")
    with pytest.raises(ValueError):
        grants_mod._toml_string("\udcff")
    # In the informational command, an undecodable byte becomes text instead of failing the grant.
    g = store.add("/home/u/x", "read", "file", command=os.fsdecode(b"cat \xff"))
    assert g.command == "cat \\udcff"
    assert store.load() == [g]


def test_add_validates(store: GrantStore) -> None:
    with pytest.raises(UsageError, match="absolute"):
        store.add("relative/path", "read", "dir")
    with pytest.raises(UsageError, match="access"):
        store.add("/x", "execute", "dir")
    with pytest.raises(UsageError, match="kind"):
        store.add("/x", "read", "socket")
    with pytest.raises(UsageError, match="NUL"):
        store.add("/x\0y", "read", "file")
    with pytest.raises(UsageError, match="not in the future"):
        store.add("/x", "read", "file", expires=datetime.now(timezone.utc) - timedelta(seconds=1))
    assert store.load() == []


def test_add_normalises_and_dedupes(store: GrantStore) -> None:
    a = store.add("/srv//data/./sub/", "write", "dir")
    assert a.path == "/srv/data/sub"
    assert store.add("/srv/data/sub", "write", "dir") == a  # "always" twice: one entry
    b = store.add("/srv/data/sub", "read", "dir")  # different access: a new grant
    assert store.load() == [a, b]


def test_dedupe_respects_expiry(store: GrantStore) -> None:
    soon = datetime.now(timezone.utc) + timedelta(hours=1)
    later = soon + timedelta(days=1)
    a = store.add("/p", "read", "file", expires=soon)
    b = store.add("/p", "read", "file", expires=later)  # lasts longer: added
    assert b != a
    assert store.add("/p", "read", "file", expires=soon) == a  # already covered
    assert store.add("/p", "read", "file", expires=later) == b
    c = store.add("/p", "read", "file")  # never expires: added
    assert c.expires is None
    assert store.add("/p", "read", "file") == c
    assert store.load() == [a, b, c]


def test_expiry_filtering(store: GrantStore) -> None:
    now = datetime.now(timezone.utc)
    short = store.add("/short", "read", "dir", expires=now + timedelta(minutes=5))
    long = store.add("/long", "read", "dir", expires=now + timedelta(days=7))
    never = store.add("/never", "read", "dir")
    assert store.load() == [short, long, never]
    assert store.load(now=now + timedelta(hours=1)) == [long, never]
    assert store.load(now=now + timedelta(days=8)) == [never]
    assert short.expires is not None
    # Expiry is exact to the second: at the expiry instant the grant is gone.
    at = datetime.fromisoformat(short.expires.replace("Z", "+00:00"))
    assert short in store.load(now=at - timedelta(seconds=1))
    assert short not in store.load(now=at)


def test_expired_entries_are_pruned_on_write(store: GrantStore) -> None:
    write_file(
        store,
        """
        [[grant]]
        id = "0000dead"
        path = "/old"
        access = "read"
        kind = "dir"
        created = "2020-01-01T00:00:00Z"
        expires = "2020-01-02T00:00:00Z"
        command = ""
        """,
    )
    assert store.load() == []
    assert store.load(now=datetime(2020, 1, 1, 12, tzinfo=timezone.utc))[0].id == "0000dead"
    store.add("/new", "read", "dir")
    assert "0000dead" not in store.path.read_text()


def test_hand_written_times(store: GrantStore) -> None:
    write_file(
        store,
        """
        [[grant]]
        id = "a"
        path = "/a"
        access = "read"
        kind = "dir"
        created = "2024-05-01"
        expires = "2030-01-01T02:00:00+02:00"
        command = ""
        """,
    )
    (g,) = store.load(now=datetime(2029, 12, 31, 23, 59, tzinfo=timezone.utc))
    assert store.load(now=datetime(2030, 1, 1, 0, 0, tzinfo=timezone.utc)) == []  # +02:00 honoured
    assert g.id == "a"


def test_revoke(store: GrantStore) -> None:
    a = store.add("/a", "read", "dir")
    b = store.add("/b", "write", "file")
    assert store.revoke(a.id) is True
    assert store.load() == [b]
    assert store.revoke(a.id) is False
    assert store.revoke("nope") is False
    assert store.revoke(b.id) is True
    assert store.load() == []
    assert tomllib.loads(store.path.read_text()) == {}


def test_revoke_on_missing_file(store: GrantStore) -> None:
    assert store.revoke("abcd1234") is False


GOOD = {
    "id": '"abcd1234"',
    "path": '"/srv/x"',
    "access": '"read"',
    "kind": '"dir"',
    "created": '"2024-01-01T00:00:00Z"',
    "command": '"ls"',
}


def entry(**override: str | None) -> str:
    fields = {**GOOD, **override}
    return "[[grant]]\n" + "".join(f"{k} = {v}\n" for k, v in fields.items() if v is not None)


@pytest.mark.parametrize(
    "text, needle",
    [
        ("this is = not toml [", "invalid TOML"),
        ("grant = 3\n", "'grant' must be an array of tables"),
        ("[grant]\nid = 'x'\n", "'grant' must be an array of tables"),
        ("version = 1\n" + entry(), "unknown key 'version'"),
        (entry(colour='"red"'), "grant #1 (id 'abcd1234'): unknown key 'colour'"),
        (entry(path="3"), "'path' must be a string, got int"),
        (entry(expires="2030-01-01T00:00:00Z"), "'expires' must be a string, got datetime"),
        (entry(access='"execute"'), "'access' must be one of read, write, allow, got 'execute'"),
        (entry(kind='"socket"'), "'kind' must be one of file, dir"),
        (entry(path='"relative/x"'), "'path': path must be absolute, got 'relative/x'"),
        (entry(path='"a\\nb"'), "'path': path must be absolute, got 'a\\nb'"),
        (entry(created='"yesterday"'), "'created' must be an ISO 8601 time"),
        (entry(expires='"soon"'), "'expires' must be an ISO 8601 time"),
        (entry(command=None), "missing key 'command'"),
        (entry(id=None), "grant #1: missing key 'id'"),
        (entry() + entry(), "grant #2 (id 'abcd1234'): 'id' must be non-empty and unique"),
        (entry() + entry(id='"ok2"', kind='"pipe"'), "grant #2 (id 'ok2'): 'kind'"),
    ],
)
def test_malformed_file_names_file_and_key(store: GrantStore, text: str, needle: str) -> None:
    write_file(store, text)
    with pytest.raises(UsageError) as info:
        store.load()
    message = str(info.value)
    assert re.match(re.escape(str(store.path)) + r"(:\d+)?: ", message)
    assert needle in message
    assert "\n" not in message
    # A writer refuses too, and leaves the file for the human to fix.
    with pytest.raises(UsageError):
        store.add("/y", "read", "dir")
    assert store.path.read_text() == textwrap.dedent(text)


def test_not_utf8_is_usage_error(store: GrantStore) -> None:
    store.path.parent.mkdir(parents=True)
    store.path.write_bytes(b'[[grant]]\nid = "\xff"\n')
    store.path.chmod(0o600)
    with pytest.raises(UsageError, match="invalid TOML"):
        store.load()


def test_unreadable_store_is_usage_error(store: GrantStore) -> None:
    store.path.mkdir(parents=True)  # a directory where the file should be
    with pytest.raises(UsageError, match=str(store.path)):
        store.load()


def test_group_writable_file_is_refused(store: GrantStore) -> None:
    write_file(store, entry())
    store.path.chmod(0o620)
    with pytest.raises(UsageError, match="writable only by you"):
        store.load()
    store.path.chmod(0o644)  # readable by others is fine: nothing secret, only who may write matters
    assert [g.id for g in store.load()] == ["abcd1234"]


def test_permissions(store: GrantStore) -> None:
    old = os.umask(0o002)  # a permissive umask must not leak into the store
    try:
        store.add("/a", "read", "dir")
    finally:
        os.umask(old)
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.lock_path.stat().st_mode) == 0o600
    assert store.lock_path.name == "grants.toml.lock" and store.lock_path.parent == store.path.parent
    # A rewrite keeps 0600 even if someone loosened nothing but the umask.
    store.add("/b", "read", "dir")
    assert stat.S_IMODE(store.path.stat().st_mode) == 0o600


def test_existing_directory_mode_is_left_alone(store: GrantStore) -> None:
    store.path.parent.mkdir(parents=True, mode=0o755)
    store.path.parent.chmod(0o755)
    store.add("/a", "read", "dir")
    assert stat.S_IMODE(store.path.parent.stat().st_mode) == 0o755


def listing(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.iterdir())


def test_failed_replace_keeps_old_file_and_no_litter(
    store: GrantStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = store.add("/first", "read", "dir")
    before = store.path.read_bytes()
    names = listing(store.path.parent)

    def boom(src: object, dst: object) -> None:
        assert Path(str(src)).exists()  # the temp file was really written before the rename
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(NonoError, match="cannot write grants: No space left on device") as info:
        store.add("/second", "write", "dir")
    assert not isinstance(info.value, UsageError)
    monkeypatch.undo()
    assert store.path.read_bytes() == before
    assert listing(store.path.parent) == names
    assert store.load() == [first]


def test_failed_fsync_keeps_old_file(store: GrantStore, monkeypatch: pytest.MonkeyPatch) -> None:
    first = store.add("/first", "read", "dir")
    before = store.path.read_bytes()
    names = listing(store.path.parent)
    monkeypatch.setattr(os, "fsync", lambda fd: (_ for _ in ()).throw(OSError(5, "Input/output error")))
    with pytest.raises(NonoError):
        store.revoke(first.id)
    monkeypatch.undo()
    assert store.path.read_bytes() == before
    assert listing(store.path.parent) == names


def test_killed_mid_write_keeps_old_file(store: GrantStore, tmp_path: Path) -> None:
    """A writer SIGKILLed between writing its temp file and the rename: the old file stands, and the
    next writer (holding the lock) clears the orphaned temp file."""
    first = store.add("/first", "read", "dir")
    before = store.path.read_bytes()
    script = textwrap.dedent(
        f"""
        import os, signal
        from pathlib import Path
        from nono_supervisor.policy.grants import GrantStore
        os.replace = lambda src, dst: os.kill(os.getpid(), signal.SIGKILL)
        GrantStore(Path({str(store.path)!r})).add("/second", "write", "dir")
        """
    )
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert store.path.read_bytes() == before
    orphans = [n for n in listing(store.path.parent) if n.endswith(".tmp")]
    assert len(orphans) == 1 and "/second" in (store.path.parent / orphans[0]).read_text()
    assert store.load() == [first]
    second = store.add("/third", "read", "file")
    assert [n for n in listing(store.path.parent) if n.endswith(".tmp")] == []
    assert store.load() == [first, second]


def _add_many(path: str, tag: str, count: int, start: multiprocessing.synchronize.Event) -> None:
    store = GrantStore(Path(path))
    start.wait(30)
    for i in range(count):
        store.add(f"/data/{tag}/{i}", "read", "file", command=f"worker {tag}")


def test_concurrent_adds_from_two_processes(store: GrantStore) -> None:
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Event()
    workers = [ctx.Process(target=_add_many, args=(str(store.path), tag, 50, start)) for tag in ("a", "b")]
    for w in workers:
        w.start()
    start.set()
    for w in workers:
        w.join(120)
        assert w.exitcode == 0
    loaded = store.load()
    assert len(loaded) == 100
    assert {g.path for g in loaded} == {f"/data/{t}/{i}" for t in ("a", "b") for i in range(50)}
    assert len({g.id for g in loaded}) == 100
    assert [n for n in listing(store.path.parent) if n.endswith(".tmp")] == []


@pytest.mark.parametrize("access", ["write", "allow"])
def test_protected_refusal(store: GrantStore, tmp_path: Path, access: str) -> None:
    home = tmp_path / "home"
    own = home / ".config" / "nono-shell"
    state = home / ".local" / "state" / "nono-shell"
    own.mkdir(parents=True)
    protected = (str(own), str(state))
    for path, kind in [
        (own, "dir"),  # at
        (own / "grants.toml", "file"),  # below
        (own / "profiles", "dir"),
        (home, "dir"),  # above: write on ~ would cover them
        (home / ".config", "dir"),
        (Path("/"), "dir"),
        (state / "audit.jsonl", "file"),
    ]:
        with pytest.raises(UsageError, match="never-grantable"):
            store.add(str(path), access, kind, protected=protected)
    # Through a symlink that resolves into a protected tree.
    (tmp_path / "link").symlink_to(own)
    with pytest.raises(UsageError, match="never-grantable"):
        store.add(str(tmp_path / "link" / "x"), access, "file", protected=protected)
    # Siblings and prefixes that are not path ancestors are fine; reading a protected path is not refused.
    ok = [
        store.add(str(home / "project"), access, "dir", protected=protected),
        store.add(str(home / ".config" / "nono-shell-other"), access, "dir", protected=protected),
        store.add(str(own / "grants.toml"), "read", "file", protected=protected),
        store.add(str(home), "read", "dir", protected=protected),
    ]
    assert store.load() == ok


# ---- validation on load, the size cap (issue 23, finding 7) --------------------------------------------


@pytest.mark.parametrize("root", ["/", "//", "/usr/.."])
def test_a_hand_edited_grant_of_root_is_refused_naming_the_file_and_line(
    store: GrantStore, root: str
) -> None:
    """Before: a grant of / loaded silently (never-grantable paths stayed protected, /etc and ~ did not)."""
    write_file(
        store, "# mine\n" + entry() + "\n" + entry(id='"0000r00t"', path=f'"{root}"', access='"allow"')
    )
    with pytest.raises(UsageError) as info:
        store.load()
    assert str(info.value) == (
        f"{store.path}:10: grant '0000r00t': allow on '/' would cover every file,"
        " never-grantable ones included"
    )
    assert store.revoke("0000r00t") is True  # the way out: revoke reads what load refuses
    assert [g.path for g in store.load()] == ["/srv/x"]


def test_a_hand_edited_link_to_root_is_refused(store: GrantStore, tmp_path: Path) -> None:
    (tmp_path / "everything").symlink_to("/")
    write_file(store, entry(path=f'"{tmp_path / "everything"}"'))
    with pytest.raises(UsageError, match="would cover every file"):
        store.load()


def test_a_hand_edited_write_grant_over_never_grantable_is_refused_at_load(
    store: GrantStore, tmp_path: Path
) -> None:
    """The same check as ``add`` (test_protected_refusal): a hand edit is no way around it."""
    home, own = tmp_path / "home", tmp_path / "home" / ".config" / "nono-shell"
    own.mkdir(parents=True)
    write_file(store, entry(path=f'"{home}"', access='"write"'))
    with pytest.raises(UsageError) as info:
        store.load(protected=(str(own),))
    assert str(info.value).startswith(f"{store.path}:1: grant 'abcd1234': write on '{home}' would cover")
    write_file(store, entry(path=f'"{home}"', access='"read"'))  # the twin: reading it is grantable
    assert [g.path for g in store.load(protected=(str(own),))] == [str(home)]


def _padded(store: GrantStore, size: int) -> None:
    text = entry()
    write_file(store, text + "#" * (size - len(text) - 1) + "\n")
    assert store.path.stat().st_size == size


def test_a_store_over_the_cap_is_refused_in_one_line(store: GrantStore) -> None:
    """Before: a 50 MB store (200,000 grants) took 48.6 s and 302 MB to start, and each change stalled the
    next command 70 s. Over the cap it is refused before it is parsed; revoke still reads it."""
    _padded(store, grants_mod.MAX_STORE_BYTES)
    assert [g.id for g in store.load()] == ["abcd1234"]  # the twin: at the cap it loads
    _padded(store, grants_mod.MAX_STORE_BYTES + 1)
    with pytest.raises(UsageError) as info:
        store.load()
    assert str(info.value) == (
        f"{store.path}: over the 256 KiB a grant store may hold; revoke grants"
        " (nono-supervisor grants revoke ID) or edit the file"
    )
    with pytest.raises(UsageError, match="over the 256 KiB"):
        store.add("/y", "read", "dir")
    assert store.revoke("abcd1234") is True
    assert store.load() == []


def test_add_refuses_to_grow_the_store_past_the_cap(store: GrantStore, monkeypatch) -> None:
    monkeypatch.setattr(grants_mod, "MAX_STORE_BYTES", 1000)
    added = []
    with pytest.raises(UsageError, match="would grow past"):
        for n in range(20):
            added.append(store.add(f"/data/{n}", "read", "dir"))
    assert 2 < len(added) < 20 and store.load() == added and store.path.stat().st_size <= 1000


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_a_session_refuses_a_store_granting_root_and_runs_nothing(request, user: bool) -> None:
    home = request.getfixturevalue("nobody_home" if user else "home")
    grants = Path(paths.grants_path(home.env))
    grants.parent.mkdir(parents=True)
    bad = entry(id='"0000r00t"', path='"/"', access='"allow"')
    grants.write_text(entry(path=f'"{home.root}"') + bad)
    grants.chmod(0o600)
    if user:
        for path in (grants.parent.parent, grants.parent, grants):
            os.chown(path, NOBODY, NOBODY)
    marker = home.work / "ran"
    result = home.run([SUPERVISOR, "exec", "--", "touch", str(marker)], user=user)
    assert result.returncode == 2
    assert result.stderr == (
        f"nono-supervisor: {grants}:8: grant '0000r00t': allow on '/' would cover every file,"
        " never-grantable ones included\n"
    )
    assert not marker.exists()
    grants.write_text(entry(path=f'"{home.root}"'))  # the twin: without it the command runs
    result = home.run([SUPERVISOR, "exec", "--", "touch", str(marker)], user=user)
    assert result.returncode == 0 and marker.exists(), result.stderr


def test_a_store_edited_into_a_grant_of_root_mid_session_grants_nothing(home) -> None:
    """Fail closed: an edit that makes the store invalid takes every stored grant away until it is fixed."""
    from nono_supervisor.policy.profile import PolicyOptions
    from nono_supervisor.session import Session

    store = GrantStore(paths.grants_path(home.env))
    outside = str(home.root / "data")
    store.add(outside, "read", "dir")
    session = Session.create(PolicyOptions(), env=home.env, workdir=str(home.work))
    try:
        assert outside in {g.path for g in session.state.policy.grants}
        with store.path.open("a") as f:
            f.write(entry(id='"0000r00t"', path='"/"'))
        session.state._refresh_store(force=False)  # the next lookup after STORE_CHECK_SECONDS
        session.state._next_check = 0
        grants = {g.path for g in session.state.policy.grants}
        assert outside not in grants and "/" not in grants
    finally:
        session.close()


def test_to_policy_grants() -> None:
    stored = [
        StoredGrant("00000001", "/a", "read", "dir", "2024-01-01T00:00:00Z", None, "ls /a"),
        StoredGrant("00000002", "/b/f", "write", "file", "2024-01-01T00:00:00Z", "2099-01-01T00:00:00Z", ""),
        StoredGrant("00000003", "/c", "allow", "dir", "2024-01-01T00:00:00Z", None, ""),
    ]
    assert to_policy_grants(stored) == [
        Grant("/a", "read", "dir", "grant-store"),
        Grant("/b/f", "write", "file", "grant-store"),
        Grant("/c", "allow", "dir", "grant-store"),
    ]
    assert to_policy_grants([]) == []
