"""Landlock plans compiled once per policy (landlock.PlanCache): reused while the directories the compiler
read are unchanged, recompiled the moment one of them changes. No timing here."""

from __future__ import annotations

import os
import subprocess

import pytest

from nono_supervisor.linux import landlock
from nono_supervisor.linux.kernel import probe
from nono_supervisor.policy.profile import PolicyOptions
from nono_supervisor.session import Session

ABI = probe().landlock_abi


@pytest.fixture
def settled(monkeypatch):
    """Trust mtimes at once (the fixtures' directories were all just made: racy by the default rule)."""
    monkeypatch.setattr(landlock, "_RACY_NS", 0)
    monkeypatch.setattr(landlock, "_RACY_FINE_NS", 0)


@pytest.fixture
def session(home):
    s = Session.create(PolicyOptions(allow=(str(home.home),)), env=home.env, workdir=str(home.work))
    yield s
    s.close()


def _get(cache, session, extra=()):
    entry, fd = cache.get(session.state.policy, ABI, list(extra))
    os.close(fd)
    return entry


def _paths(entry) -> dict[str, int]:
    return {rule.path: rule.rights for rule in entry.plan.rules}


def test_one_compile_per_policy_and_the_same_plan_as_a_fresh_compile(session, settled):
    cache = landlock.PlanCache()
    first = _get(cache, session)
    second, fd = cache.get(session.state.policy, ABI, [])
    try:
        assert second is first and cache.compiled == 1
        assert fd != first.ruleset and os.fstat(fd)  # the caller's own dup of the cached ruleset
    finally:
        os.close(fd)
    assert first.plan == landlock.compile_plan(session.state.policy, ABI)
    assert _get(cache, session, session.state.route_grants()) is not first  # other extra grants: another plan
    assert cache.compiled == 2


def test_a_new_sibling_of_a_denied_node_recompiles(home, session, settled):
    """--allow ~ with ~/.ssh denied grants ~'s entries one by one: a new one must be in the next plan."""
    cache = landlock.PlanCache()
    first = _get(cache, session)
    new = home.home / "newdir"
    assert str(new) not in _paths(first)
    new.mkdir()
    second = _get(cache, session)
    assert second is not first and cache.compiled == 2
    assert str(new) in _paths(second)
    assert _get(cache, session) is second


@pytest.mark.parametrize("change", ["remove", "replace by a symlink", "rename over", "file to dir"])
def test_changing_an_expanded_entry_recompiles(home, session, settled, change):
    (home.home / "entry").mkdir()
    (home.home / "other").mkdir()
    (home.home / "afile").write_text("x")
    cache = landlock.PlanCache()
    first = _get(cache, session)
    if change == "remove":
        (home.home / "entry").rmdir()
    elif change == "replace by a symlink":
        (home.home / "entry").rmdir()
        (home.home / "entry").symlink_to(home.home / ".ssh")
    elif change == "rename over":
        os.rename(home.home / "other", home.home / "entry")
    else:
        (home.home / "afile").unlink()
        (home.home / "afile").mkdir()
    second = _get(cache, session)
    assert second is not first
    assert second.plan == landlock.compile_plan(session.state.policy, ABI)


def test_a_grant_that_appears_later_recompiles(home, settled):
    later = home.home / "later" / "deep"
    s = Session.create(PolicyOptions(read=(str(later),)), env=home.env, workdir=str(home.work))
    try:
        cache = landlock.PlanCache()
        first = _get(cache, s)
        assert str(later) not in _paths(first)
        assert _get(cache, s) is first
        later.mkdir(parents=True)
        second = _get(cache, s)
        assert second is not first and str(later) in _paths(second)
    finally:
        s.close()


def test_a_symlinked_grant_retargeted_recompiles(home, settled, tmp_path):
    from dataclasses import replace

    from nono_supervisor.policy.profile import Grant

    (tmp_path / "one").mkdir()
    (tmp_path / "two").mkdir()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "one")
    s = Session.create(PolicyOptions(), env=home.env, workdir=str(home.work))
    try:
        # a policy naming the link itself (the session's own resolution would already have followed it)
        policy = replace(
            s.state.policy, grants=(*s.state.policy.grants, Grant(str(link), "read", "dir", "test"))
        )
        cache = landlock.PlanCache()
        first, fd = cache.get(policy, ABI, [])
        os.close(fd)
        assert str(tmp_path / "one") in _paths(first)
        link.unlink()
        link.symlink_to(tmp_path / "two")
        second, fd = cache.get(policy, ABI, [])
        os.close(fd)
        assert str(tmp_path / "two") in _paths(second) and str(tmp_path / "one") not in _paths(second)
    finally:
        s.close()


def test_a_directory_changed_just_now_is_not_trusted(home, session):
    """Two changes within one timestamp tick leave the same stamp: a fresh listing is never cached."""
    cache = landlock.PlanCache()
    (home.home / "just-made").mkdir()  # ~'s listing changes now
    first = _get(cache, session)
    assert first.fs.uncacheable
    assert _get(cache, session) is not first and cache.compiled == 2


def test_the_racy_window_follows_the_timestamps_resolution():
    """Sub-second stamps tick with the coarse clock (at most 10 ms): 0.1 s. Whole-second ones (ext4 with
    small inodes, FAT's 2 s): 2 s."""
    second = 1_000_000_000
    fine = (1, 2, 50 * second + 123_456_789, 50 * second + 123_456_789)
    whole = (1, 2, 50 * second, 50 * second)
    changed = 50 * second + 123_456_789
    assert landlock._racy(fine, changed + 99_000_000) and not landlock._racy(fine, changed + 101_000_000)
    assert landlock._racy(whole, 50 * second + 1_999_000_000)
    assert not landlock._racy(whole, 52 * second + 1_000_000)


def test_a_new_policy_object_gets_its_own_plan(session, settled, tmp_path):
    cache = landlock.PlanCache()
    first = _get(cache, session)
    session.state.add_grant(str(tmp_path), "read", "dir")  # a human's session grant: a new policy
    second = _get(cache, session)
    assert second is not first and str(tmp_path) in _paths(second)


def test_the_noted_realpath_is_os_path_realpath(tmp_path):
    (tmp_path / "a" / "b").mkdir(parents=True)
    (tmp_path / "rel").symlink_to("a/b")
    (tmp_path / "abs").symlink_to(tmp_path / "a")
    (tmp_path / "loop1").symlink_to("loop2")
    (tmp_path / "loop2").symlink_to("loop1")
    (tmp_path / "chain").symlink_to("rel/../b")
    (tmp_path / "dangling").symlink_to("nowhere/x")
    (tmp_path / "a" / "up").symlink_to("../..")
    names = [
        "a/b",
        "rel",
        "rel/c",
        "abs/b/../b",
        "loop1",
        "loop1/x",
        "chain",
        "dangling",
        "dangling/y",
        "a/up/a/b",
        "missing/../a",
        "a/./b/",
        "a//b",
        ".",
        "a/b/../../rel/..",
        "abs/up",
        "a/up/up/up",
    ]
    for name in names:
        path = f"{tmp_path}/{name}"
        assert landlock.NotedFs().realpath(path) == os.path.realpath(path), name
    assert landlock.NotedFs().realpath("/") == "/"


def test_the_route_reuses_the_plan_and_a_new_directory_is_granted_at_once(home, monkeypatch):
    """Through the Linux backend (Landlock alone, so only the plan can grant it): the second command reuses
    the first's plan; after a new directory appears in ~ (a sibling of the denied ~/.ssh), the next command
    may write in it without any emulation."""
    from conftest import start_sandboxed
    from nono_supervisor import backend
    from nono_supervisor.linux.backend import LinuxBackend

    monkeypatch.setattr(landlock, "_RACY_NS", 0)
    monkeypatch.setattr(landlock, "_RACY_FINE_NS", 0)
    linux = LinuxBackend()  # its plan cache starts empty
    monkeypatch.setattr(backend, "current", lambda: linux)
    s = Session.create(
        PolicyOptions(allow=(str(home.home),)), env=home.env, workdir=str(home.work), trap=False
    )

    def run(script: str) -> int:
        process = start_sandboxed(
            s, "/bin/sh", ["sh", "-c", script], home.env, str(home.work), (0, 1, 2), trap=False
        )
        return os.waitstatus_to_exitcode(process.wait())

    try:
        assert run("true") == 0 and run("true") == 0
        assert linux.plan_cache().compiled == 1
        assert run(f"cat {home.key} 2>/dev/null") != 0  # the cached ruleset still denies the key
        (home.home / "fresh").mkdir()
        assert run(f"echo x > {home.home}/fresh/f") == 0
        assert linux.plan_cache().compiled == 2
        assert (home.home / "fresh" / "f").read_text() == "x\n"
    finally:
        s.close()
        linux.plan_cache().clear()


def test_the_plan_cache_is_per_supervisor_process_and_fds_do_not_leak(home, settled):
    s = Session.create(PolicyOptions(allow=(str(home.home),)), env=home.env, workdir=str(home.work))
    before = len(os.listdir("/proc/self/fd"))
    try:
        cache = landlock.PlanCache(size=2)
        for i in range(6):
            s.state.add_grant(str(home.root / f"g{i}"), "read", "dir")  # a new policy each time
            _get(cache, s)
        assert len(os.listdir("/proc/self/fd")) <= before + 2
        cache.clear()
        assert len(os.listdir("/proc/self/fd")) == before
    finally:
        s.close()


def test_a_grant_root_removed_and_made_again_recompiles(home, settled, tmp_path):
    """The cached ruleset holds the old directory's inode, so the new one cannot get its number: the
    lookup's identity changes, and the next command's plan names the new directory."""
    root = tmp_path / "root"
    root.mkdir()
    s = Session.create(PolicyOptions(read=(str(root),)), env=home.env, workdir=str(home.work))
    try:
        cache = landlock.PlanCache()
        first = _get(cache, s)
        for _ in range(20):  # inode numbers are reused eagerly; none of these may pass for the old one
            root.rmdir()
            root.mkdir()
            again = _get(cache, s)
            assert again is not first
            first = again
    finally:
        s.close()


def test_the_c_check_of_the_notes_is_the_python_one(home, settled, tmp_path):
    """landlock.NotedFs.still_valid runs in C (_notify.Stamps): after each kind of change it answers as the
    Python check does."""
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "e").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "d")
    (tmp_path / "file").write_text("x")
    changes = [
        lambda: None,
        lambda: (tmp_path / "d" / "new").mkdir(),
        lambda: (tmp_path / "link").unlink() or (tmp_path / "link").symlink_to(tmp_path / "d" / "e"),
        lambda: (tmp_path / "file").unlink(),
        lambda: (tmp_path / "file").mkdir(),
        lambda: os.rename(tmp_path / "d", tmp_path / "d2"),
        lambda: (tmp_path / "missing").mkdir(),
    ]
    for change in changes:
        fs = landlock.NotedFs()
        fs.realpath(str(tmp_path / "link" / "e"))
        fs.exists(str(tmp_path / "file"))
        fs.exists(str(tmp_path / "missing" / "deep"))
        fs.listdir(str(tmp_path / "d")) if (tmp_path / "d").exists() else None
        assert fs.still_valid() and fs._still_valid_python()
        change()
        assert fs.still_valid() == fs._still_valid_python()
        assert fs._checker is not None and fs._checker is not False


def test_a_git_command_in_a_protected_repository_does_not_recompile_and_a_new_subdirectory_does(
    home, settled
):
    """A repository's config and hooks are carved inside its .git (runs-later), so .git is expanded; git
    replaces .git/index and HEAD by a rename at nearly every command (a plain git status included), so only
    .git's subdirectories get rules and are noted: the plan survives git status, add and commit, and a new
    subdirectory (rerere's rr-cache) is in the next plan."""
    env = {**home.env, "GIT_AUTHOR_NAME": "a", "GIT_AUTHOR_EMAIL": "a@b.invalid"}
    env.update(GIT_COMMITTER_NAME="a", GIT_COMMITTER_EMAIL="a@b.invalid")
    git = lambda *argv: subprocess.run(["git", *argv], cwd=home.work, env=env, check=True)  # noqa: E731
    (home.work / "src").mkdir()  # edits below the workdir's root (whose own listing is noted: .mcp.json)
    (home.work / "src" / "f").write_text("x\n")
    git("init", "-q")
    git("add", "src")
    git("commit", "-q", "-m", "one")
    s = Session.create(PolicyOptions(), env=home.env, workdir=str(home.work))
    try:
        cache = landlock.PlanCache()
        first = _get(cache, s)
        dotgit = str(home.work / ".git")
        assert f"{dotgit}/objects" in _paths(first) and f"{dotgit}/index" not in _paths(first)
        assert not any(p.startswith(f"{dotgit}/hooks") or p == f"{dotgit}/config" for p in _paths(first))
        (home.work / "src" / "f").write_text("y\n")
        git("status", "--porcelain")
        git("add", "src/f")
        git("commit", "-q", "-m", "two")
        assert _get(cache, s) is first and cache.compiled == 1
        (home.work / ".git" / "rr-cache").mkdir()
        second = _get(cache, s)
        assert cache.compiled == 2 and f"{dotgit}/rr-cache" in _paths(second)
        assert second.plan == landlock.compile_plan(s.state.policy, ABI)
    finally:
        s.close()


def test_commands_that_find_the_plan_stale_together_share_one_compile(home, session, settled, monkeypatch):
    """Fifty commands started at once after a change the plan noted (a file made in the workdir's root)
    each found the cached plan stale and compiled their own under the GIL: 50 at once took 2-7 s instead
    of 0.2 (bench_speed). The threads that find it stale together wait for one compile and share it. The
    compile is slowed here so that every thread has checked before the first one ends."""
    import threading
    import time

    cache = landlock.PlanCache()
    first = _get(cache, session)
    (home.work / "new-in-the-root").write_text("x\n")
    real_compile = landlock.compile_plan

    def slow_compile(*args, **kw):
        time.sleep(0.05)
        return real_compile(*args, **kw)

    monkeypatch.setattr(landlock, "compile_plan", slow_compile)
    start, got = threading.Barrier(20), []

    def command() -> None:
        start.wait()
        got.append(_get(cache, session))

    threads = [threading.Thread(target=command) for _ in range(20)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert cache.compiled == 2, cache.compiled  # the first, and one for the change: not one per command
    assert len({id(entry) for entry in got}) == 1 and got[0] is not first
