"""The pure policy core over a fake filesystem: ``resolve_policy``, ``AccessIndex`` and ``compile_plan``
(the deny-inside-allow carving), golden Landlock plans, and a property over random trees and policies.

No kernel, and the real filesystem only to show that the fake one compiles as it does: these run in
seconds. What needs the kernel (the ruleset applied, a command refused) stays in the end-to-end tests.
Regenerate the goldens after a reviewed change with ``NONO_UPDATE_GOLDEN=1 pytest
tests/test_policy_core.py`` and read the diff before committing it.
"""

from __future__ import annotations

import errno
import json
import os
import random
from pathlib import Path

import pytest

from conftest import GOLDEN, matches_golden
from nono_supervisor.errors import SandboxError
from nono_supervisor.linux.landlock import (
    ACCESS_FS,
    FILE_RIGHTS,
    NAME_RIGHTS,
    READ,
    WRITE,
    LandlockPlan,
    RightsIndex,
    compile_plan,
    handled_fs,
)
from nono_supervisor.paths import links_met
from nono_supervisor.policy.access import AccessIndex, held_links, real_paths
from nono_supervisor.policy.profile import (
    NEVER_GRANTABLE,
    RUNS_LATER,
    TERMINALS,
    Context,
    Deny,
    Grant,
    Policy,
    PolicyOptions,
    RunsLater,
    resolve_policy,
)

ABI = 6  # the newest the plan's shape depends on (scoped signals and abstract sockets)


class FakeFs:
    """An in-memory tree with what ``compile_plan`` reads of a filesystem (``landlock.NotedFs``): lookups that
    follow symlinks, listings, and the symlinks met on the way (``aliases``). ``entries`` maps a path to
    "dir", "file" or "-> target" (a symlink; a relative target is relative to its directory); the
    directories on the way are made."""

    _MAX_LINKS = 40  # as the kernel's MAXSYMLINKS: a cycle resolves to a path that does not exist

    def __init__(self, entries: dict[str, str]) -> None:
        self.nodes: dict[str, str] = {"/": "dir"}
        for path, kind in entries.items():
            parent = os.path.dirname(path)
            while parent not in self.nodes:
                self.nodes[parent] = "dir"
                parent = os.path.dirname(parent)
            self.nodes[path] = kind
        self.aliases: dict[str, str] = {}
        self.uncacheable = False

    def _link(self, path: str) -> str | None:
        kind = self.nodes.get(path, "")
        return kind[3:] if kind.startswith("-> ") else None

    def realpath(self, path: str, _depth: int = 0) -> str:
        """``os.path.realpath`` (not strict): a missing tail is kept as it is."""
        parts = [p for p in path.split("/") if p and p != "."]
        resolved = "/"
        while parts:
            name = parts.pop(0)
            if name == "..":
                resolved = os.path.dirname(resolved)
                continue
            candidate = os.path.join(resolved, name)
            target = self._link(candidate)
            if target is None or _depth >= self._MAX_LINKS:
                resolved = candidate
                continue
            resolved = self.realpath(os.path.join(resolved, target), _depth + 1)
            self.aliases[candidate] = resolved
        return resolved

    def _kind(self, path: str) -> str | None:
        return self.nodes.get(self.realpath(path))

    def exists(self, path: str) -> bool:
        return self._kind(path) is not None

    present = exists

    def isdir(self, path: str) -> bool:
        return self._kind(path) == "dir"

    def islink(self, path: str) -> bool:
        return self._link(path) is not None

    def readlink(self, path: str) -> str | None:
        return self._link(path)

    def listdir(self, path: str) -> list[str]:
        real = self.realpath(path)
        if self.nodes.get(real) != "dir":
            raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        return [os.path.basename(p) for p in self.nodes if p != "/" and os.path.dirname(p) == real]

    def subdirs(self, path: str) -> list[str]:
        return sorted(n for n in self.listdir(path) if self.nodes[os.path.join(path, n)] == "dir")


# --------------------------------------------------------------------------------------------------------
# A Linux machine in miniature: what the default profile and the security list name, and the traps.
# --------------------------------------------------------------------------------------------------------

HOME = "/home/alice"
WORK = f"{HOME}/project"
MACHINE = {
    "/usr/bin/python3": "file",
    "/usr/lib/libc.so.6": "file",
    "/bin": "-> usr/bin",
    "/lib": "-> usr/lib",
    "/etc/passwd": "file",
    "/etc/shadow": "file",
    "/etc/ssl/certs/ca.pem": "file",
    "/etc/ssl/private/server.key": "file",
    "/dev/null": "file",
    "/dev/tty": "file",
    "/dev/ptmx": "file",
    "/dev/urandom": "file",
    "/dev/pts/0": "file",
    "/dev/pts/7": "file",
    "/proc/self": "-> 4242",
    "/proc/4242/status": "file",
    "/tmp/nono-shell-tmp-1/x": "file",
    f"{HOME}/.ssh/id_ed25519": "file",
    f"{HOME}/.aws/credentials": "file",
    f"{HOME}/.bashrc": "file",
    f"{HOME}/.profile": "file",
    f"{HOME}/.gitconfig": "file",
    f"{HOME}/.config/nono-shell/grants.toml": "file",
    f"{HOME}/.config/git/config": "file",
    f"{HOME}/.config/autostart/x.desktop": "file",
    f"{HOME}/.local/bin/tool": "file",
    f"{HOME}/notes/todo.txt": "file",
    f"{WORK}/src/main.py": "file",
    f"{WORK}/.env": "file",
    f"{WORK}/secrets": f"-> {HOME}/.ssh",  # a grant of the workdir does not reach through it
    f"{WORK}/.git/HEAD": "file",
    f"{WORK}/.git/index": "file",
    f"{WORK}/.git/config": "file",
    f"{WORK}/.git/objects/ab/cdef": "file",
    f"{WORK}/.git/refs/heads/main": "file",
    f"{WORK}/.git/hooks/pre-commit": "file",
}
CTX = Context(
    workdir=WORK,
    home=HOME,
    tmpdir="/tmp/nono-shell-tmp-1",
    config_dir=f"{HOME}/.config/nono-shell",  # no profiles/ in it on the real disk: the built-ins are read
    protected=(f"{HOME}/.config/nono-shell", f"{HOME}/.local/state/nono-shell"),
    sealed=("/dev/pts/7",),  # the supervisor's own terminal
    groups={"user_toolchain": (f"{HOME}/.local/bin",)},
    runs_later=(
        RunsLater(f"{WORK}/.git/config", "git: at every git command in the repository"),
        RunsLater(f"{WORK}/.git/hooks", "git: hooks at commit, checkout, merge"),
    ),
)


def policy_of(ctx: Context = CTX, **options) -> Policy:
    return resolve_policy(PolicyOptions(**options), ctx)


def index_of(policy: Policy, fs: FakeFs) -> AccessIndex:
    return AccessIndex(policy, real_paths(policy, fs.realpath), held_links(policy, fs.readlink))


def plan_of(policy: Policy, fs: FakeFs, abi: int = ABI, extra=()) -> LandlockPlan:
    return compile_plan(policy, abi, extra, _fs=fs)  # FakeFs stands in for landlock.NotedFs


def granted(plan: LandlockPlan, path: str) -> int:
    """The rights Landlock gives ``path`` (a real path): its rule and its ancestors', as the kernel adds
    them up."""
    return RightsIndex(plan).rights(path)


# ---- resolve_policy ----------------------------------------------------------------------------------------


def test_the_default_profile_grants_the_workdir_and_denies_the_secrets_inside_home() -> None:
    policy = policy_of()
    assert Grant(WORK, "allow", "dir", "profile built-in default") in policy.grants
    assert Deny(f"{HOME}/.ssh", "group:deny_credentials") in policy.denies
    assert Deny("/dev/pts/7", NEVER_GRANTABLE) in policy.denies  # the sealed terminal
    assert not any(g.path == HOME for g in policy.grants)
    assert f"{WORK}/.git/hooks" in [entry.path for entry in policy.runs_later]


def test_flags_expand_against_the_workdir_and_home_and_keep_their_source() -> None:
    policy = policy_of(read=("~/notes",), write_file=("out.txt",), deny=("src",))
    assert Grant(f"{HOME}/notes", "read", "dir", "--read") in policy.grants
    assert Grant(f"{WORK}/out.txt", "write", "file", "--write-file") in policy.grants
    assert Deny(f"{WORK}/src", "--deny") in policy.denies


# ---- AccessIndex: the intent for one path --------------------------------------------------------------


@pytest.mark.parametrize(
    "path, op, allowed, rule",
    [
        (f"{WORK}/src/main.py", "write", True, "profile built-in default"),
        (f"{HOME}/.ssh/id_ed25519", "read", False, "group:deny_credentials"),
        (f"{HOME}/notes/todo.txt", "read", False, "not granted"),
        ("/etc/passwd", "read", True, "group:system_read"),
        ("/etc/passwd", "write", False, "not granted"),
        ("/etc/shadow", "read", False, "group:deny_system_secrets"),
        (f"{HOME}/.config/nono-shell/grants.toml", "write", False, "never-grantable"),
        (f"{WORK}/.git/hooks/pre-commit", "write", False, RUNS_LATER),
        (f"{WORK}/.git/hooks/pre-commit", "read", True, "profile built-in default"),
        (f"{WORK}/.git/index", "write", True, "profile built-in default"),
        ("/dev/pts/7", "read", False, NEVER_GRANTABLE),
        ("/tmp/hsperfdata_alice", "create", False, "group:ungranted_probes"),
    ],
)
def test_access_index_verdicts_of_the_default_policy(path: str, op: str, allowed: bool, rule: str) -> None:
    verdict = index_of(policy_of(), FakeFs(MACHINE)).verdict(path, op)
    assert (verdict.allowed, verdict.rule) == (allowed, rule)


def test_an_explicit_file_grant_beats_the_deny_group_a_wider_grant_does_not() -> None:
    fs = FakeFs(MACHINE)
    key = f"{HOME}/.ssh/id_ed25519"
    assert not index_of(policy_of(read=("~",)), fs).verdict(key, "read").allowed
    assert index_of(policy_of(read_file=("~/.ssh/id_ed25519",)), fs).verdict(key, "read").allowed


def test_access_index_compares_the_policys_paths_where_they_really_are() -> None:
    """A grant made through a symlink (~/n -> notes) covers the real path the kernel reports; a deny
    named through one (~/hidden -> notes) holds at the real path. The facts come from the caller's
    filesystem, here a fake one: the index itself makes no syscall."""
    fs = FakeFs({**MACHINE, f"{HOME}/n": "-> notes", f"{HOME}/hidden": "-> notes"})
    todo = f"{HOME}/notes/todo.txt"
    assert index_of(policy_of(write=("~/n",)), fs).verdict(todo, "write").rule == "--write"
    assert not index_of(policy_of(), fs).verdict(todo, "write").allowed
    assert index_of(policy_of(read=("~",)), fs).verdict(todo, "read").allowed
    verdict = index_of(policy_of(read=("~",), deny=("~/hidden",)), fs).verdict(todo, "read")
    assert (verdict.allowed, verdict.rule) == (False, "--deny")


def test_access_index_needs_every_fact_it_compares() -> None:
    """A policy path missing from the facts is a caller's bug, never a silent "not there"."""
    with pytest.raises(KeyError):
        AccessIndex(policy_of(), {}, {})


def test_a_remembered_verdict_follows_a_deny_that_moves() -> None:
    """Verdicts are remembered per index (the same paths come back at every command), and forgotten when
    the denies are resolved again: a deny named through ~/hidden, once it leads to notes/, refuses what the
    index allowed there before (DESIGN invariant 12), and denied_below names it there."""
    policy = policy_of(read=("~",), deny=("~/hidden",))
    before = FakeFs({**MACHINE, f"{HOME}/other/x": "file", f"{HOME}/hidden": "-> other"})
    index = index_of(policy, before)
    todo = f"{HOME}/notes/todo.txt"
    assert index.verdict(todo, "read").allowed and index.verdict(todo, "read").allowed
    assert index.denied_below(f"{HOME}/notes") == []
    after = FakeFs({**MACHINE, f"{HOME}/other/x": "file", f"{HOME}/hidden": "-> notes"})
    index.relocate(real_paths(policy, after.realpath), held_links(policy, after.readlink))
    assert (index.verdict(todo, "read").allowed, index.verdict(todo, "read").rule) == (False, "--deny")
    assert not index_of(policy, after).verdict(todo, "read").allowed  # the same as a fresh index
    assert index.verdict(f"{HOME}/other/x", "read").allowed


def test_denied_below_names_what_a_rename_of_an_ancestor_would_move() -> None:
    index = index_of(policy_of(), FakeFs(MACHINE))
    inside = dict(index.denied_below(HOME))
    assert inside[f"{HOME}/.ssh"] == "group:deny_credentials"
    assert inside[f"{HOME}/.config/nono-shell"] == "never-grantable"
    assert inside[f"{HOME}/.bashrc"] in ("group:deny_shell_configs", RUNS_LATER)
    assert index.denied_below(f"{WORK}/src") == []


def test_taken_away_names_each_name_from_the_deepest_link_up_as_the_policy_spells_it() -> None:
    """stow: ~/.config/gh -> ~/dotfiles/gh and ~/.gitconfig -> ~/dotfiles/gitconfig. Taking away the link
    or a directory above it moves the deny, the runs-later entry; where the node resolves (and below the
    deepest link) ``denied_below`` and the verdict already see it; a name with no link on the way, never."""
    stow = {
        f"{HOME}/.config/gh": f"-> {HOME}/dotfiles/gh",
        f"{HOME}/dotfiles/gh/hosts.yml": "file",
        f"{HOME}/.gitconfig": f"-> {HOME}/dotfiles/gitconfig",
        f"{HOME}/dotfiles/gitconfig": "file",
    }
    machine = {k: v for k, v in MACHINE.items() if k != f"{HOME}/.gitconfig"}
    index = index_of(policy_of(allow=("~",)), FakeFs({**machine, **stow}))
    for name in (f"{HOME}/.config/gh", f"{HOME}/.config", HOME, "/home"):
        assert index.taken_away(name) == (f"{HOME}/.config/gh", "group:deny_credentials"), name
    assert index.taken_away(f"{HOME}/.gitconfig") == (f"{HOME}/.gitconfig", RUNS_LATER)
    for name in (f"{HOME}/dotfiles/gh", f"{HOME}/dotfiles", f"{HOME}/.config/other", f"{HOME}/.ssh", WORK):
        assert index.taken_away(name) is None, name
    plain = index_of(policy_of(allow=("~",)), FakeFs(MACHINE))
    assert plain.taken_away(f"{HOME}/.ssh") is None and plain.taken_away(HOME) is None


def test_a_link_the_spelled_link_leads_through_is_held_by_the_index_and_the_plan() -> None:
    """stow's relative link through a link of its own: ~/.config/gh -> ../src/dotfiles/gh and
    ~/src/dotfiles -> ~/project/dotfiles. Taking away ~/src/dotfiles, or ~/src that holds it, leaves the
    deny naming nothing: the index refuses both, and the plan gives their directories no right to remove
    or move a name (tests/test_late_denies.py runs it). Both passed them before."""
    through = {
        f"{HOME}/.config/gh": "-> ../src/dotfiles/gh",
        f"{HOME}/src/dotfiles": f"-> {WORK}/dotfiles",
        f"{WORK}/dotfiles/gh/hosts.yml": "file",
    }
    fs = FakeFs({**MACHINE, **through})
    policy = policy_of(allow=("~",))
    index = index_of(policy, fs)
    for name in (f"{HOME}/src/dotfiles", f"{HOME}/src"):
        assert index.taken_away(name) == (f"{HOME}/.config/gh", "group:deny_credentials"), name
    assert index.taken_away(f"{HOME}/src/other") is None
    plan = plan_of(policy, fs)
    taking = (ACCESS_FS["remove_dir"] | ACCESS_FS["remove_file"] | ACCESS_FS["refer"]) & plan.handled_fs
    for directory in (f"{HOME}/src", HOME):
        assert not granted(plan, directory) & taking, directory


# ---- compile_plan: the deny-inside-allow carving -------------------------------------------------------


def test_a_grant_holding_a_denied_node_is_carved_into_its_siblings() -> None:
    """--read ~ with ~/.ssh denied: no rule on ~ (it would cover .ssh), rules on each sibling instead."""
    plan = plan_of(policy_of(read=("~",)), FakeFs(MACHINE))
    rules = {rule.path: rule.rights for rule in plan.rules}
    assert HOME not in rules
    assert f"{HOME}/.ssh" not in rules and granted(plan, f"{HOME}/.ssh/id_ed25519") == 0
    assert rules[f"{HOME}/notes"] & READ == READ
    assert granted(plan, f"{HOME}/.gitconfig") & READ


def test_the_workdir_keeps_write_but_not_over_the_repositorys_hooks_and_config() -> None:
    plan = plan_of(policy_of(), FakeFs(MACHINE))
    assert granted(plan, f"{WORK}/src/main.py") & WRITE == WRITE & handled_fs(ABI)
    assert granted(plan, f"{WORK}/.git/hooks/pre-commit") & WRITE == 0
    assert granted(plan, f"{WORK}/.git/hooks/pre-commit") & READ == READ
    assert granted(plan, f"{WORK}/.git/config") & WRITE == 0
    # the git directory's own files get no rule: git replaces them by a rename the supervisor carries out
    assert f"{WORK}/.git/index" not in {rule.path for rule in plan.rules}
    assert granted(plan, f"{WORK}/.git/objects/ab/cdef") & WRITE


def test_a_symlink_in_a_granted_tree_gets_no_rule_and_its_target_keeps_its_deny() -> None:
    plan = plan_of(policy_of(), FakeFs(MACHINE))
    assert f"{WORK}/secrets" not in {rule.path for rule in plan.rules}
    assert granted(plan, f"{HOME}/.ssh/id_ed25519") == 0


def test_a_stowed_denied_node_keeps_its_name_no_rule_takes_the_link_away() -> None:
    """stow: ~/stow/tok is a link to ~/project/vault, denied by name. Carving only where it resolves left
    ~/stow every right over its names, so ``rm ~/stow/tok`` took the deny away (tests/test_late_denies.py):
    the link's directory, and each one above it up to the grant, keeps no right over names (and the plan
    says so); its siblings keep all."""
    stow = {f"{HOME}/stow/tok": f"-> {WORK}/vault", f"{WORK}/vault/token": "file", f"{HOME}/stow/b/x": "file"}
    plan = plan_of(policy_of(allow=("~",), deny=("~/stow/tok",)), FakeFs({**MACHINE, **stow}))
    for directory in (f"{HOME}/stow", HOME):
        assert granted(plan, directory) & NAME_RIGHTS == 0, directory
    assert granted(plan, f"{HOME}/stow/b") & NAME_RIGHTS == NAME_RIGHTS & handled_fs(ABI)
    assert granted(plan, f"{WORK}/vault/token") == 0
    assert any(note.startswith("link ~/stow/tok on the way to ~/stow/tok (--deny)") for note in plan.notes)


def test_a_grant_through_a_symlink_lands_on_the_real_path_and_is_recorded_as_an_alias() -> None:
    plan = plan_of(policy_of(), FakeFs(MACHINE))
    assert "/lib" not in {rule.path for rule in plan.rules}
    assert granted(plan, "/usr/lib/libc.so.6") & READ
    assert ("/lib", "/usr/lib") in plan.aliases


def test_no_grant_reaches_into_the_terminals_but_the_handed_one() -> None:
    fs = FakeFs(MACHINE)
    handed = Grant("/dev/pts/0", "allow", "file", "terminal")
    plan = plan_of(policy_of(allow=("/dev",)), fs, extra=(handed,))
    assert granted(plan, "/dev/pts/0") & READ
    assert granted(plan, "/dev/pts/7") == 0
    assert granted(plan, "/dev/null") & WRITE
    sealed = plan_of(policy_of(allow=("/dev",)), fs, extra=(Grant("/dev/pts/7", "allow", "file", "--allow"),))
    assert granted(sealed, "/dev/pts/7") == 0  # the supervisor's terminal: nothing lifts it


def test_a_missing_grant_is_a_note_not_a_rule() -> None:
    plan = plan_of(policy_of(read=("/nowhere",)), FakeFs(MACHINE))
    assert "/nowhere" not in {rule.path for rule in plan.rules}
    assert any(note.startswith("/nowhere: does not exist") for note in plan.notes)


def test_a_file_grant_naming_a_directory_grants_nothing_beneath_it() -> None:
    """Landlock applies a directory's file rights to every file beneath it; the policy grants the one path
    (AccessIndex covers the path itself), so the plan gives no rule and says why. Twin: --read grants it."""
    fs = FakeFs(MACHINE)
    plan = plan_of(policy_of(read_file=(f"{HOME}/notes",)), fs)
    assert granted(plan, f"{HOME}/notes/todo.txt") == 0
    assert any(note.startswith("~/notes: a directory, not granted by a file grant") for note in plan.notes)
    assert (
        not index_of(policy_of(read_file=(f"{HOME}/notes",)), fs)
        .verdict(f"{HOME}/notes/todo.txt", "read")
        .allowed
    )
    assert granted(plan_of(policy_of(read=(f"{HOME}/notes",)), fs), f"{HOME}/notes/todo.txt") & READ


def test_an_unlistable_directory_above_a_deny_grants_nothing_inside_beyond_the_safe_rights() -> None:
    class Unlistable(FakeFs):
        def listdir(self, path: str) -> list[str]:
            if path == HOME:
                raise OSError(errno.EACCES, os.strerror(errno.EACCES), path)
            return super().listdir(path)

    plan = plan_of(policy_of(read=("~",)), Unlistable(MACHINE))
    assert granted(plan, f"{HOME}/notes/todo.txt") == 0
    assert any(note.startswith(f"{HOME}: cannot list") for note in plan.notes)


def test_the_network_flags_need_their_landlock_abi() -> None:
    fs = FakeFs(MACHINE)
    with pytest.raises(SandboxError, match="ABI 4"):
        plan_of(policy_of(net_block=True), fs, abi=3)
    with pytest.raises(SandboxError, match="not available"):
        plan_of(policy_of(), fs, abi=0)


# ---- golden plans ------------------------------------------------------------------------------------------

SCENARIOS = {
    "default": {},
    "read-home": {"read": ("~",)},
    "allow-home": {"allow": ("~",)},
    "file-exception": {"allow": ("~",), "read_file": ("~/.ssh/id_ed25519",)},
    "write-runs-later-member": {
        "allow": ("~",),
        "write_file": ("~/.profile",),
        "write": ("~/.config/autostart",),
    },
    "allow-dev": {"allow": ("/dev",)},
    "net-blocked": {"net_block": True},
    "strict": {"profile": "strict"},
}


def golden_text(name: str) -> str:
    """The plan as JSON, one rule (one note, one alias) a line: a change reads as the lines it changes."""
    plan = plan_of(policy_of(**SCENARIOS[name]), FakeFs(MACHINE))
    data = {**plan.to_json(), "aliases": [list(a) for a in plan.aliases]}
    fields = [
        f" {json.dumps(key)}: [\n" + ",\n".join(f"  {json.dumps(item)}" for item in value) + "\n ]"
        if key in ("rules", "notes", "aliases") and value
        else f" {json.dumps(key)}: {json.dumps(value)}"
        for key, value in data.items()
    ]
    return "{\n" + ",\n".join(fields) + "\n}\n"


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_plan_matches_golden(name: str) -> None:
    matches_golden(golden_text(name), GOLDEN / "landlock" / f"{name}.json")


# ---- the property: no plan grants a denied node or an ancestor that holds one --------------------------

_NAMES = ("a", "b", "c", ".git", "HEAD", "objects", "refs", "config", "hooks", "k")


def _random_tree(rng: random.Random, root: str = "/r") -> dict[str, str]:
    entries: dict[str, str] = {}
    dirs = [root]
    for _ in range(rng.randint(3, 30)):
        parent = rng.choice(dirs)
        path = f"{parent}/{rng.choice(_NAMES)}"
        if path in entries or path in dirs:
            continue
        roll = rng.random()
        if roll < 0.45:
            dirs.append(path)
            entries[path] = "dir"
        elif roll < 0.85:
            entries[path] = "file"
        else:  # a link anywhere in the tree, or out of it, or to nothing
            entries[path] = "-> " + rng.choice([*dirs, f"{root}/nowhere", "..", "a"])
    return entries


def _random_policy(rng: random.Random, paths: list[str], root: str = "/r") -> Policy:
    def pick() -> str:
        path = rng.choice(paths)
        return path if rng.random() < 0.8 else f"{path}/{rng.choice(_NAMES)}"  # sometimes a missing one

    grants = tuple(
        Grant(
            pick(),
            rng.choice(("read", "write", "allow")),
            rng.choice(("dir", "dir", "file")),
            rng.choice(("--allow", "--read-file", "profile p", "group:g", "group:h")),
        )
        for _ in range(rng.randint(1, 5))
    )
    denies = tuple(
        Deny(pick(), rng.choice(("--deny", "group:deny_credentials", NEVER_GRANTABLE)))
        for _ in range(rng.randint(0, 4))
    )
    protected = tuple(pick() for _ in range(rng.randint(0, 2)))
    later = tuple(RunsLater(pick(), "shell: at start") for _ in range(rng.randint(0, 3)))
    return Policy(
        "random", grants, denies, protected, False, "never", 60.0, root, root, "/tmp", "linux",
        runs_later=later,
    )  # fmt: skip


def _under(path: str, top: str) -> bool:
    return path == top or path.startswith(top.rstrip("/") + "/")


def _held(policy: Policy, fs: FakeFs) -> list[tuple[str, int, bool]]:
    """Each node the plan must not grant (its real path), the rights it must not get there or above it,
    and whether a grant of the human's at or below it lifts it there: a deny (every right), which an
    explicit grant at or below it lifts (a sealed one: nothing); a protected path (write; nothing lifts
    it); a runs-later entry (write), which a flag at or below it lifts. A lift never reaches above the
    node: no rule on a directory that holds it may carry those rights, lifted or not."""
    real = fs.realpath
    explicit = [real(g.path) for g in policy.grants if not g.source.startswith("group:")]
    flags = [real(g.path) for g in policy.grants if g.source.startswith("--")]
    held = [(TERMINALS, -1, False)]
    for deny in policy.denies:
        path = real(deny.path)
        held.append((path, -1, deny.rule != NEVER_GRANTABLE and any(_under(g, path) for g in explicit)))
    held += [(real(p), WRITE, False) for p in policy.protected]
    for entry in policy.runs_later:
        path = real(entry.path)
        held.append((path, WRITE, any(_under(g, path) for g in flags)))
    return held


@pytest.mark.parametrize("seed", range(300))
def test_no_plan_grants_a_denied_node_or_an_ancestor_that_holds_one(seed: int) -> None:
    rng = random.Random(seed)
    fs = FakeFs(_random_tree(rng))
    policy = _random_policy(rng, sorted(fs.nodes))
    plan = plan_of(policy, fs)
    # Where the kernel puts each rule: create_ruleset opens its path O_NOFOLLOW, following every link but
    # the last (a rule on a link itself reaches nothing).
    rights = {
        os.path.join(fs.realpath(os.path.dirname(rule.path)), os.path.basename(rule.path)): rule.rights
        for rule in plan.rules
        if not fs.islink(rule.path)
    }
    for node, removed, lifted in _held(policy, fs):
        for path, granted_there in rights.items():
            above = path != node and fs.isdir(path) and _under(node, path)  # a rule on a file holds nothing
            if above or (_under(path, node) and not lifted):  # above it; at it or inside it, unless lifted
                leaked = granted_there & removed & plan.handled_fs
                assert not leaked, f"seed {seed}: {path} grants {leaked:#x} over held {node}\n{policy}"


def _spelled_names(path: str, fs: FakeFs) -> list[str]:
    """Each name on the way to ``path`` as the policy spells it, ``path`` included: its parent resolved,
    its last component not."""
    names, node = [], os.path.normpath(path)
    while (parent := os.path.dirname(node)) != node:
        names.append(os.path.join(fs.realpath(parent), os.path.basename(node)))
        node = parent
    return names


@pytest.mark.parametrize("seed", range(300))
def test_no_plan_lets_a_name_on_the_way_to_a_held_node_be_taken_away(seed: int) -> None:
    """Whatever the links on the way (stow), the directory holding each name the policy spells on the way
    to a denied, never-grantable or runs-later node, or that a link's target passes, has no right to remove
    or move it (REMOVE_*, REFER): taking it away would take the deny with it. Seeds 0-299 found a leak
    before the links were carved (a chain through a target's link: the named test above)."""
    rng = random.Random(seed)
    fs = FakeFs(_random_tree(rng))
    policy = _random_policy(rng, sorted(fs.nodes))
    plan = plan_of(policy, fs)
    taking = (ACCESS_FS["remove_dir"] | ACCESS_FS["remove_file"] | ACCESS_FS["refer"]) & plan.handled_fs
    held = [d.path for d in policy.denies] + list(policy.protected) + [e.path for e in policy.runs_later]
    for path in held:
        # and each link a link's target passes (~/dotfiles under ~/.config/gh -> ../dotfiles/gh), with
        # the names holding it: taking one away moves the node as much
        through = [n for link in links_met(path, fs.readlink) for n in (link, *_spelled_names(link, fs)[1:])]
        for name in _spelled_names(path, fs) + through:
            parent = os.path.dirname(name)
            leaked = granted(plan, parent) & taking
            assert not leaked, f"seed {seed}: {parent} grants {leaked:#x} over {name} (on the way to {path})"


@pytest.mark.parametrize("seed", range(40))
def test_the_fake_filesystem_compiles_as_the_real_one_does(tmp_path: Path, seed: int) -> None:
    """The fake is faithful: a random tree made on disk and the same tree in memory give the same plan
    (rules, notes, aliases), so what the tests above prove over the fake holds over a real tree."""
    rng = random.Random(seed)
    root = str(tmp_path.resolve() / "r")
    entries = _random_tree(rng, root)
    os.mkdir(root)
    for path, kind in entries.items():  # in insertion order: a parent before its entries
        if kind == "dir":
            os.mkdir(path)
        elif kind == "file":
            Path(path).touch()
        else:
            os.symlink(kind[3:], path)
    policy = _random_policy(rng, [root, *entries], root)
    real = compile_plan(policy, ABI)
    fake = plan_of(policy, FakeFs({root: "dir", **entries}))
    assert (real.rules, real.notes, real.aliases) == (fake.rules, fake.notes, fake.aliases)


@pytest.mark.parametrize("seed", range(300))
def test_the_index_is_never_stricter_than_the_plan(seed: int) -> None:
    """The kernel as oracle, over the fake tree: what the Landlock plan grants (the rights a read or a write
    of that node needs), the checker allows too, so a trapped command is refused nothing ``--no-trap`` lets
    through. It was stricter where a group's grant lay deeper inside a tree an explicit grant lifts from a
    deny or a runs-later entry, or beside it on the same path: the deepest grant alone was asked whether it
    lifts (seeds 6, 81, 114). The index may allow more than the plan (the supervisor carries it out)."""
    rng = random.Random(seed)
    fs = FakeFs(_random_tree(rng))
    policy = _random_policy(rng, sorted(fs.nodes))
    plan = plan_of(policy, fs)
    index = index_of(policy, fs)
    for node, kind in fs.nodes.items():
        if kind.startswith("->"):
            continue
        for op, rights in (("read", READ), ("write", WRITE)):
            need = (rights & FILE_RIGHTS if kind == "file" else rights) & plan.handled_fs
            if granted(plan, node) & need == need:
                verdict = index.verdict(node, op)
                assert verdict.allowed, f"seed {seed}: the plan grants {op} {node}, the index: {verdict.rule}"
