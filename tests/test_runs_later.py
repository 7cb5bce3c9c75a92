"""Nothing a command writes runs later outside a sandbox (DESIGN invariant 10, issue 24).

Each attack is run sandboxed and, as its twin, bare: bare, the same program plants what the human's next
unsandboxed program would run (so the test proves something). The key ones run as root and as uid 65534.
The class's members come from the security list itself (``[runs_later]``), so a member added there is
tested here. Git's own workflow keeps working exactly as bare (the same commits, byte for byte).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import FAKE_KEY, SUPERVISOR, Home, start_supervisor
from nono_supervisor.policy import agents
from nono_supervisor.policy.gitrepos import GIT_DIR_MARKS, repository_entries
from nono_supervisor.policy.profile import (
    RUNS_LATER,
    Context,
    PolicyOptions,
    expand,
    runs_later_list,
    security_groups,
)
from nono_supervisor.session import Session

USERS = pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
# A fixed identity and clock: the sandboxed and the bare run make the same commits, hash for hash.
GIT_ENV = {
    "GIT_AUTHOR_NAME": "nono",
    "GIT_AUTHOR_EMAIL": "nono@example.invalid",
    "GIT_COMMITTER_NAME": "nono",
    "GIT_COMMITTER_EMAIL": "nono@example.invalid",
    "GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z",
    "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z",
    "GIT_CONFIG_NOSYSTEM": "1",
}


def _home(request, user: bool) -> Home:
    return request.getfixturevalue("nobody_home" if user else "home")


def _env(home: Home) -> dict[str, str]:
    return {**home.env, **GIT_ENV}


def _sandboxed(home: Home, code: str, *args: str, flags=("--allow", "~"), user=False, **kw):
    argv = [SUPERVISOR, "exec", *flags, "--", sys.executable, "-c", code, *args]
    return home.run(argv, user=user, env=_env(home), **kw)


def _bare(home: Home, code: str, *args: str, user=False, **kw):
    return home.run([sys.executable, "-c", code, *args], user=user, env=_env(home), **kw)


def _human(home: Home, *argv: str, cwd: Path, user: bool) -> subprocess.CompletedProcess:
    """What the human runs later, outside any sandbox."""
    return home.run(list(argv), cwd=cwd, user=user, env=_env(home))


def _own(home: Home, top: Path) -> None:
    if home.owner:
        for path in [top, *top.rglob("*")]:
            os.lchown(path, home.owner, home.owner)


def _setup_git(home: Home, cwd: Path, *args: str) -> None:
    """git run by the test itself (as root) to set the scene, in trees that may belong to uid 65534."""
    env = {
        **_env(home),
        "GIT_CONFIG_COUNT": "1",
        "GIT_CONFIG_KEY_0": "safe.directory",
        "GIT_CONFIG_VALUE_0": "*",
    }
    subprocess.run(["git", *args], cwd=cwd, env=env, check=True, capture_output=True)


def _repo(home: Home, path: Path, own: bool = True) -> Path:
    """A repository with one commit, made before the session starts (as the human's are)."""
    path.mkdir(parents=True, exist_ok=True)
    for argv in (["init", "-q", "-b", "main"], ["add", "-A"], ["commit", "-q", "--allow-empty", "-m", "one"]):
        _setup_git(home, path, *argv)
    if own:
        _own(home, path)
    return path


DENY_GROUPS = ("deny_credentials", "deny_shell_configs", "deny_keychains", "deny_browser_data")


def _members(home: Home) -> dict[str, str]:
    """The shipped class, expanded for this home: path -> its raw entry."""
    ctx = Context(workdir=str(home.work), home=str(home.home), tmpdir="/tmp", platform="linux")
    return {expand(raw, ctx, "test", grant=False): raw for raw in runs_later_list("linux")}


# ---- every member of the class ----------------------------------------------------------------------------

PLANT_EACH = r"""
import os, sys
for path in sys.argv[1:]:
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "a") as f:
            f.write("planted\n")
        print("wrote", path)
    except OSError as e:
        print("refused", path, e.errno)
"""


@USERS
def test_every_runs_later_member_is_refused_with_its_line(request, user):
    """Under --allow ~ (the widest documented setup), creating each member of the class (a file at its
    path, or in its place for a directory) is refused, each with its own line; bare, each is planted."""
    home = _home(request, user)
    members = _members(home)
    result = _sandboxed(home, PLANT_EACH, *members, user=user)
    refused = {line.split()[1] for line in result.stdout.splitlines() if line.startswith("refused")}
    assert refused == set(members), result.stdout + result.stderr
    ctx = Context(workdir=str(home.work), home=str(home.home), tmpdir="/tmp", platform="linux")
    groups = security_groups("linux")
    denied = [expand(p, ctx, "test", grant=False) for name in DENY_GROUPS for p in groups[name]]
    for path in members:
        shown = "~" + path[len(str(home.home)) :]
        inside = [d for d in denied if path == d or path.startswith(d + "/")]
        if inside:  # also in a deny group (read too: it may hold tokens): that rule is the line's
            assert f"nono: denied create {shown} [group:deny_" in result.stderr, (shown, result.stderr)
        else:
            line = f"nono: denied create {shown} [{RUNS_LATER}]; to allow: --write-file {shown}"
            assert line in result.stderr, (line, result.stderr)
    twin = _bare(home, PLANT_EACH, *members, user=user)
    assert twin.stdout.count("wrote") == len(members), twin.stdout


EXISTING = r"""
import os, sys
done = []
for path in sys.argv[1:]:
    side = os.path.join(os.path.dirname(path), "side")
    attempts = {
        "append": lambda: open(path, "a").close(),
        "truncate": lambda: os.truncate(path, 0),
        "chmod": lambda: os.chmod(path, 0o777),
        "utime": lambda: os.utime(path, (0, 0)),
        "setxattr": lambda: os.setxattr(path, "user.nono", b"1"),
        "link": lambda: os.link(path, os.path.join(os.environ["WORK"], f"second-name-{len(done)}")),
        "rename-over": lambda: (open(side, "w").close(), os.rename(side, path)),
        "rename-away": lambda: (os.rename(path, path + ".moved"), os.rename(path + ".moved", path)),
        "unlink": lambda: os.unlink(path),
    }
    for name, attempt in attempts.items():
        try:
            attempt()
            done.append(f"{name}:{path}")
        except OSError:
            pass
print(" ".join(done))
"""


def _snapshot(path: Path):
    if not path.exists():
        return None
    st = os.lstat(path)
    return (path.read_bytes(), st.st_mode, st.st_mtime_ns, sorted(os.listxattr(path, follow_symlinks=False)))


@USERS
def test_an_existing_member_keeps_content_name_mode_times_and_xattrs(request, user):
    """Content, truncation, mode, times, xattrs, a second name, a rename over it, away or an unlink: none
    reaches an existing member (a global one, a repository's config, a project's MCP file)."""
    home = _home(request, user)
    repo = _repo(home, home.work)
    targets = [home.home / ".tmux.conf", repo / ".git" / "config", home.work / ".mcp.json"]
    for path in targets:
        if not path.exists():
            path.write_text("kept\n")
    _own(home, home.home)
    before = [_snapshot(p) for p in targets]
    env = {**_env(home), "WORK": str(home.work)}
    argv = [SUPERVISOR, "exec", "--allow", "~", "--", sys.executable, "-c", EXISTING, *map(str, targets)]
    result = home.run(argv, user=user, env=env)
    assert result.stdout.strip() == "", result.stdout + result.stderr
    assert [_snapshot(p) for p in targets] == before
    assert f"[{RUNS_LATER}]" in result.stderr
    twin = home.run([sys.executable, "-c", EXISTING, *map(str, targets)], user=user, env=env)
    assert len(twin.stdout.split()) == 9 * len(targets), twin.stdout  # bare: every step went through


def test_the_humans_flag_lifts_one_member_and_its_hint_says_which(home):
    """The line's hint is a flag that, passed, makes the same write succeed (CONTRACT); nothing wider does:
    --allow ~ leaves it refused, and no question is asked about it."""
    code = "open(__import__('os').path.expanduser('~/.tmux.conf'), 'a').write('set -g x\\n')"
    wide = _sandboxed(home, code)
    assert wide.returncode != 0, wide.stderr
    assert f"[{RUNS_LATER}]; to allow: --write-file ~/.tmux.conf" in wide.stderr
    named = _sandboxed(home, code, flags=("--allow", "~", "--write-file", "~/.tmux.conf"))
    assert named.returncode == 0 and (home.home / ".tmux.conf").read_text() == "set -g x\n", named.stderr


# ---- git: a planted fsmonitor or hook never runs at the human's next git command --------------------------

PLANT_GIT = r"""
import os, subprocess, sys
repo, marker = sys.argv[1], sys.argv[2]
config = subprocess.run(["git", "config", "core.fsmonitor", f"touch {marker}-fsmonitor; false"], cwd=repo)
hook = os.path.join(repo, ".git", "hooks", "pre-commit")
try:
    with open(hook, "w") as f:
        f.write(f"#!/bin/sh\ntouch {marker}-hook\n")
    os.chmod(hook, 0o755)
    planted = "yes"
except OSError:
    planted = "no"
print(f"config={config.returncode} hook={planted}")
"""


@USERS
@pytest.mark.parametrize("flags", [(), ("--allow", "~")], ids=["default", "allow-home"])
def test_a_planted_fsmonitor_and_hook_do_not_run_at_the_humans_next_git_command(request, user, flags):
    home = _home(request, user)
    repo = _repo(home, home.work / "app" / "src" / "deep")  # at any depth of the workdir
    marker = home.home / "ran"
    result = _sandboxed(home, PLANT_GIT, str(repo), str(marker), flags=flags, user=user)
    assert "hook=no" in result.stdout and "config=0" not in result.stdout, result.stdout + result.stderr
    assert f"nono: denied create {repo}/.git/hooks/pre-commit [{RUNS_LATER}]".replace(
        str(home.home), "~"
    ) in result.stderr.replace(str(home.home), "~")
    (repo / "change").write_text("x\n")
    _own(home, repo)
    _human(home, "git", "status", cwd=repo, user=user)
    _human(home, "git", "add", "-A", cwd=repo, user=user)
    _human(home, "git", "commit", "-q", "-m", "two", cwd=repo, user=user)
    assert not Path(f"{marker}-fsmonitor").exists() and not Path(f"{marker}-hook").exists()
    # The twin: planted bare, the human's plain git status and commit run both.
    twin = _bare(home, PLANT_GIT, str(repo), str(marker), user=user)
    assert "config=0 hook=yes" in twin.stdout, twin.stdout + twin.stderr
    (repo / "change").write_text("y\n")
    _human(home, "git", "status", cwd=repo, user=user)
    _human(home, "git", "commit", "-q", "-am", "three", cwd=repo, user=user)
    assert Path(f"{marker}-fsmonitor").exists() and Path(f"{marker}-hook").exists()


def test_git_config_local_is_refused_with_one_line_naming_the_class(home):
    repo = _repo(home, home.work)
    result = home.run([SUPERVISOR, "exec", "--", "git", "config", "--local", "x.y", "z"], env=_env(home))
    lines = [line for line in result.stderr.splitlines() if line.startswith("nono:")]
    config = "~/project/.git/config"
    expected = f"nono: denied create {config} [{RUNS_LATER}]; to allow: --write-file {config}"
    assert result.returncode != 0 and lines == [expected], result.stderr
    assert "x.y" not in (repo / ".git" / "config").read_text()
    assert not (repo / ".git" / "config.lock").exists()  # git cleaned up after itself
    twin = home.run(["git", "config", "--local", "x.y", "z"], env=_env(home))
    assert twin.returncode == 0 and "[x]" in (repo / ".git" / "config").read_text()


WORKFLOW = r"""
set -e
cd app
echo one > a && git add a && git commit -qm a
git branch feature && git checkout -q feature && echo two > b && git add b && git commit -qm b
git checkout -q main && echo three > c && git add c && git commit -qm c
echo wip >> a && git stash -q && git stash pop -q && git commit -qam wip
git checkout -q feature && git rebase -q main && git checkout -q main && git merge -q --no-edit feature
git fetch -q ../remote.git main && git pull -q --no-rebase --no-edit ../remote.git main
cd .. && git clone -q remote.git clone && cd clone && echo four > d && git add d && git commit -qm d
cd .. && git init -q -b main fresh && cd fresh && git config user.name fresh && echo five > e
git add e && git commit -qm e
cd .. && for r in app clone fresh; do git -C $r log --all --format="$r %H %s"; git -C $r status --short; done
"""


@USERS
def test_the_git_workflow_works_as_bare(request, user):
    """init, clone, commit, branch, stash, rebase, merge, fetch and pull from a local remote, in a
    repository that existed at start (its config and hooks read-only) and in new ones: the same commits,
    hash for hash, as the same script bare."""
    home = _home(request, user)
    outputs = []
    for run in ("sandboxed", "bare"):
        top = home.work / run
        _repo(home, top / "app")
        remote = _repo(home, top / "upstream", own=False)  # cloned below by root: not yet uid 65534's
        (remote / "u").write_text("upstream\n")
        _setup_git(home, remote, "add", "u")
        _setup_git(home, remote, "commit", "-qm", "u")
        _setup_git(home, top, "clone", "-q", "--bare", "upstream", "remote.git")
        _own(home, top)
        argv = ["bash", "-c", WORKFLOW]
        if run == "sandboxed":
            argv = [SUPERVISOR, "exec", "--", *argv]
        result = home.run(argv, cwd=top, user=user, env=_env(home))
        assert result.returncode == 0, result.stderr
        outputs.append(result.stdout)
    assert outputs[0] == outputs[1] and outputs[0].count(" ") > 10, outputs


def test_repositories_are_found_at_any_depth_bare_worktrees_submodules_and_above(home):
    top = _repo(home, home.root / "outer")  # the repository that holds the workdir
    work = top / "work"
    deep = _repo(home, work / "a" / "b" / "c")
    subprocess.run(["git", "clone", "-q", "--bare", str(deep), str(work / "remote.git")], check=True)
    _setup_git(home, deep, "config", "extensions.worktreeConfig", "true")  # git reads config.worktree
    subprocess.run(["git", "worktree", "add", "-q", str(work / "wt")], cwd=deep, check=True, env=_env(home))
    subprocess.run(
        [
            "git",
            "-c",
            "protocol.file.allow=always",
            "submodule",
            "add",
            "-q",
            str(work / "remote.git"),
            "sub",
        ],
        cwd=deep,
        check=True,
        env=_env(home),
        capture_output=True,
    )
    found = {entry.path for entry in repository_entries(str(work))}
    git = deep / ".git"
    expected = {
        top / ".git" / "config",
        git / "config",
        git / "hooks",
        git / "config.worktree",
        git / "worktrees" / "wt" / "config.worktree",
        git / "worktrees" / "wt" / "commondir",
        work / "wt" / ".git",  # the worktree's pointer to its git directory
        work / "remote.git" / "hooks",  # a bare repository: its hooks run when the human pushes to it
        git / "modules" / "sub" / "config",
        git / "modules" / "sub" / "hooks",
        deep / "sub" / ".git",
    }
    assert {str(p) for p in expected} <= found, sorted(found)


def test_discovery_follows_a_git_symlink_and_never_blocks_on_a_fifo(home):
    """A ``.git`` symlink names its git directory as a ``.git`` file does; a repository a command made in
    an earlier session may hold a FIFO where git keeps its config: the walk at start reads past it."""
    elsewhere = _repo(home, home.root / "elsewhere")
    (home.work / "linked").mkdir()
    (home.work / "linked" / ".git").symlink_to(elsewhere / ".git")
    trap = _repo(home, home.work / "trap")
    (trap / ".git" / "config").unlink()
    os.mkfifo(trap / ".git" / "config")
    (trap / ".git" / "commondir").unlink(missing_ok=True)
    os.mkfifo(trap / ".git" / "commondir")  # a linked worktree's pointer, as a FIFO
    found = {entry.path for entry in repository_entries(str(home.work))}
    assert {str(home.work / "linked" / ".git"), str(elsewhere / ".git" / "hooks")} <= found, sorted(found)
    assert str(trap / ".git" / "config") in found


ROOT_CWD = 'pwd; ls -d /proc/self /usr/bin; cat "$0" 2>/dev/null || echo "no key"'


@USERS
@pytest.mark.parametrize("how", ["exec", "run"])
def test_a_command_started_in_root_runs_as_bare_and_the_deny_groups_hold(request, user, how):
    """A workdir of ``/``: discovery walks past the kernel's filesystems (listing /proc/1/map_files failed
    part way, and run and exec exited 125). The command sees what it sees bare, but the fake key."""
    home = _home(request, user)
    argv = ["/bin/sh", "-c", ROOT_CWD, str(home.key)]
    flags = ["-q"] if how == "run" else []
    result = home.run([SUPERVISOR, how, *flags, "--", *argv], user=user, cwd="/", stdin=subprocess.DEVNULL)
    bare = home.run(argv, user=user, cwd="/")
    assert result.returncode == 0, result.stderr
    assert result.stdout == bare.stdout.replace(FAKE_KEY, "no key"), (result.stdout, bare.stdout)
    assert FAKE_KEY in bare.stdout


# Writes argv[3] to the file argv[1] opened with mode argv[2]: "planted", or "refused" where it cannot.
WRITE = r"""
import sys
try:
    with open(sys.argv[1], sys.argv[2]) as f:
        f.write(sys.argv[3])
    print("planted")
except OSError:
    print("refused")
"""
HOOK = "#!/bin/sh\nid\n"


def test_hooks_and_included_config_a_repository_points_at_are_protected(home):
    """core.hooksPath (husky's .husky, tracked in the project) and include.path lead git outside .git: both
    are found, and a command cannot plant a hook there (twin: bare, it can)."""
    repo = _repo(home, home.work)
    _setup_git(home, repo, "config", "core.hooksPath", ".husky")
    _setup_git(home, repo, "config", "include.path", "../.gitconfig.project")
    (repo / ".husky").mkdir()
    found = {entry.path for entry in repository_entries(str(home.work))}
    assert {str(repo / ".husky"), str(repo / ".gitconfig.project")} <= found, sorted(found)
    hook = str(repo / ".husky" / "pre-commit")
    result = _sandboxed(home, WRITE, hook, "w", HOOK, flags=())
    assert "refused" in result.stdout and f"[{RUNS_LATER}]" in result.stderr, result.stdout + result.stderr
    assert "planted" in _bare(home, WRITE, hook, "w", HOOK).stdout


def test_dependency_trees_are_looked_at_by_their_package_roots(home):
    """Discovery's bound (README, "Runs later"): in node_modules and site-packages each package root is
    looked at (an npm @scope's and pnpm's store's too) and a package's own node_modules the same way; the
    inside of a package is not walked. A submodule's git directory is found whatever its path is."""
    modules = home.work / "node_modules"
    clones = [
        modules / "foo",
        modules / "@scope" / "bar",
        modules / ".pnpm" / "baz@1.0.0" / "node_modules" / "baz",
        modules / "foo" / "node_modules" / "qux",
        home.work / "venv" / "lib" / "python3.11" / "site-packages" / "patched",
    ]
    for clone in clones:
        _repo(home, clone)
    fixture = _repo(home, modules / "foo" / "test" / "fixtures" / "repo")  # inside a package
    submodule = home.work / ".git" / "modules" / "node_modules" / "a" / "b"  # git's name for node_modules/a/b
    _repo(home, home.work)
    for mark in GIT_DIR_MARKS:
        (submodule / mark).mkdir(parents=True)
    found = {entry.path for entry in repository_entries(str(home.work))}
    expected = {str(clone / ".git" / "hooks") for clone in clones} | {str(submodule / "hooks")}
    assert expected <= found, sorted(found)
    assert str(fixture / ".git" / "hooks") not in found


MOVE = """import os, sys
try:
    os.rename(sys.argv[1], sys.argv[2])
    print("moved")
except OSError as e:
    print("refused", e.errno)"""


@USERS
def test_a_repository_cannot_be_moved_inside_a_package_to_hide_it_from_discovery(request, user):
    """The bound is no hiding place: moving a protected repository (a name above its members) inside a
    package, where the next session's discovery would not look, is refused. Twin: bare, it moves."""
    home = _home(request, user)
    repo = _repo(home, home.work / "tool")
    inside = home.work / "node_modules" / "dep" / "lib"
    inside.mkdir(parents=True)
    _own(home, home.work / "node_modules")
    result = _sandboxed(home, MOVE, str(repo), str(inside / "tool"), flags=(), user=user)
    assert "refused" in result.stdout and (repo / ".git" / "hooks").is_dir(), result.stdout + result.stderr
    assert "moved" in _bare(home, MOVE, str(repo), str(inside / "tool"), user=user).stdout


@USERS
def test_a_hook_cannot_be_planted_in_a_clone_at_a_package_root(request, user):
    """A clone of the human's in node_modules (to patch a dependency) is protected as any repository.
    Twin: bare, the hook is planted."""
    home = _home(request, user)
    clone = _repo(home, home.work / "node_modules" / "dep")
    _own(home, home.work / "node_modules")
    hook = str(clone / ".git" / "hooks" / "pre-commit")
    result = _sandboxed(home, WRITE, hook, "w", HOOK, flags=(), user=user)
    assert "refused" in result.stdout and f"[{RUNS_LATER}]" in result.stderr, result.stdout + result.stderr
    assert "planted" in _bare(home, WRITE, hook, "w", HOOK, user=user).stdout


def test_a_repository_made_during_the_session_is_the_commands_own(home):
    """The choice (README, "Runs later"): only the repositories that existed at start are protected; one a
    command makes (git init, git clone) is configured by it as bare."""
    code = (
        "import subprocess as s; s.run(['git', 'init', '-q', 'new'], check=True);"
        "s.run(['git', 'config', 'user.name', 'x'], cwd='new', check=True)"
    )
    result = _sandboxed(home, code, flags=())
    assert result.returncode == 0, result.stderr
    assert "name = x" in (home.work / "new" / ".git" / "config").read_text()


# ---- project agent configuration --------------------------------------------------------------------------

PROJECT = r"""
import os, sys
for name in sys.argv[1:]:
    try:
        os.makedirs(os.path.dirname(name) or ".", exist_ok=True)
        with open(name, "w") as f:
            f.write('{"enableAllProjectMcpServers": true, "mcpServers": {"x": {"command": "sh"}}}\n')
        print("wrote", name)
    except OSError:
        print("refused", name)
"""
AGENT_FILES = (".mcp.json", ".claude/settings.local.json", ".claude/settings.json", ".codex/config.toml")
AGENT_FILES += (".gemini/settings.json", "opencode.json", ".aider.conf.yml", ".vscode/tasks.json")


@USERS
@pytest.mark.parametrize("existing", [False, True], ids=["new", "existing"])
def test_a_command_cannot_write_the_projects_agent_configuration(request, user, existing):
    home = _home(request, user)
    if existing:
        for name in AGENT_FILES:
            (home.work / name).parent.mkdir(parents=True, exist_ok=True)
            (home.work / name).write_text("{}\n")
        _own(home, home.work)
    result = _sandboxed(home, PROJECT, *AGENT_FILES, flags=(), user=user)
    assert result.stdout.count("refused") == len(AGENT_FILES), result.stdout + result.stderr
    assert result.stderr.count(f"[{RUNS_LATER}]") == len(AGENT_FILES), result.stderr
    assert all((home.work / n).read_text() == "{}\n" for n in AGENT_FILES) if existing else True
    twin = _bare(home, PROJECT, *AGENT_FILES, user=user)
    assert twin.stdout.count("wrote") == len(AGENT_FILES), twin.stdout


ORDINARY = (
    ".gitignore",
    ".editorconfig",
    "src/main.py",
    ".claude/commands/review.md",
    ".vscode/extensions.json",
)


@USERS
def test_ordinary_project_files_and_dotfiles_that_run_nothing_are_written_as_bare(request, user):
    home = _home(request, user)
    _repo(home, home.work)
    home_files = [str(home.home / ".config" / "tool" / "settings.ini"), str(home.home / ".cache" / "x")]
    result = _sandboxed(home, PROJECT, *ORDINARY, *home_files, user=user)
    assert result.stdout.count("wrote") == len(ORDINARY) + 2 and "nono:" not in result.stderr, (
        result.stdout + result.stderr
    )


# ---- a name made above a member ----------------------------------------------------------------------------

ABOVE = r"""
import os, sys
how, work = sys.argv[1], sys.argv[2]
os.makedirs(os.path.join(work, "x"), exist_ok=True)
bundle = os.path.expanduser("~/.bundle")
try:
    if how == "symlink":
        os.symlink(os.path.join(work, "x"), bundle)
    else:
        os.rename(os.path.join(work, "x"), bundle)
    with open(os.path.join(bundle, "config"), "w") as f:
        f.write("BUNDLE_BUILD__NOKOGIRI: --with-cflags=-x\n")
    print("planted")
except OSError as e:
    print("refused", e.errno)
"""


@USERS
@pytest.mark.parametrize("how", ["symlink", "rename"])
def test_a_name_made_above_a_member_cannot_lead_it_into_the_commands_reach(request, user, how):
    """``ln -s ./x ~/.bundle`` (or a directory moved there) would make ~/.bundle/config, which bundler reads
    at every install, resolve into what the command writes: refused while ~/.bundle does not exist; bare,
    the config is planted."""
    home = _home(request, user)
    result = _sandboxed(home, ABOVE, how, str(home.work), user=user)
    assert "refused" in result.stdout and not os.path.lexists(home.home / ".bundle"), result.stdout
    line = next(
        line for line in result.stderr.splitlines() if line.startswith("nono: denied create ~/.bundle")
    )
    assert f"[{RUNS_LATER} (inside: " in line and "to allow" not in line, line  # no flag would lift it
    twin = _bare(home, ABOVE, how, str(home.work), user=user)
    assert "planted" in twin.stdout and (home.home / ".bundle" / "config").exists()


# ---- the session's agent writes its own configuration; its commands never do -------------------------------


def test_the_agents_own_configuration_is_its_state_and_no_other_agents(home):
    ctx = Context(workdir=str(home.work), home=str(home.home), tmpdir="/tmp")
    claude = agents.load_agent("claude-code", ctx)
    session = Session.create(PolicyOptions(), dict(home.env), workdir=str(home.work), agent=claude)
    try:
        commands = session.state.access_index(session.state.policy)
        agent = session.state.access_index(session.state.agent_policy())
        own = [home.work / ".mcp.json", home.work / ".claude" / "settings.local.json"]
        for path in own:
            assert agent.verdict(str(path), "create").allowed
            assert commands.verdict(str(path), "create").rule == RUNS_LATER
        other = home.home / ".codex" / "config.toml"
        assert agent.verdict(str(other), "create").rule == RUNS_LATER
        assert agent.verdict(str(home.home / ".bash_logout"), "write").rule == RUNS_LATER
    finally:
        session.close()


# ---- --no-trap says at start what it gives up --------------------------------------------------------------


def test_no_trap_says_at_start_that_unix_sockets_are_not_mediated(home):
    line = "nono-supervisor: not enforced with --no-trap: unix sockets:"
    result = home.run([SUPERVISOR, "exec", "--no-trap", "--", "true"])
    assert result.returncode == 0 and result.stderr.count(line) == 1, result.stderr
    policy = home.run([SUPERVISOR, "policy", "--no-trap"]).stdout
    said = result.stderr.split("--no-trap: ", 1)[1].strip()
    assert f"not enforced with --no-trap: {said}" in policy  # policy's own words
    twin = home.run([SUPERVISOR, "exec", "--", "true"])
    assert twin.returncode == 0 and "not enforced" not in twin.stderr
    server = start_supervisor(home, "--no-trap")  # serve says it too, before it serves
    try:
        assert server.stderr_path.read_text().count(line) == 1
    finally:
        server.stop()


def test_no_question_is_asked_and_no_answer_or_stored_grant_lifts_a_member(home):
    """Whatever is answered: the human is never asked about a member (a prompter that would say "always"
    is not called), and a session or stored grant of a wider path leaves it refused."""
    from nono_supervisor.terminal.consent import Consent

    class Yes:
        def ask(self, *_args, **_kw):
            raise AssertionError("asked about a runs-later member")

    session = Session.create(PolicyOptions(allow=("~",)), dict(home.env), workdir=str(home.work))
    try:
        tmux = str(home.home / ".tmux.conf")
        consent = Consent(session, "c", "sh", Yes())
        assert not consent.askable(RUNS_LATER)
        assert not consent.allows("write", tmux, RUNS_LATER, False)
        session.state.add_grant(str(home.home), "allow", "dir")  # an answer "session" for ~
        session.state.add_grant(tmux, "write", "file")  # even one naming the member itself
        verdict = session.state.access_index(session.state.policy).verdict(tmux, "write")
        assert not verdict.allowed and verdict.rule == RUNS_LATER
        assert (
            session.state.access_index(session.state.policy)
            .verdict(str(home.home / ".tmuxx"), "write")
            .allowed
        )
    finally:
        session.close()


KERNEL = r"""
import os, sys
for path in sys.argv[1:]:
    try:
        with open(path, "a") as f:
            f.write("x\n")
        print("wrote", path)
    except OSError as e:
        print("refused", path, e.errno)
"""


@USERS
def test_the_kernel_alone_enforces_the_class(request, user):
    """With --no-trap (Landlock alone, no supervisor to ask), a repository's config and a new hook, the
    project's .mcp.json and a member in ~ stay refused: the kernel is the enforcer, not the checker. A
    file in a subdirectory is written (twin: bare writes all)."""
    home = _home(request, user)
    repo = _repo(home, home.work / "app")
    (home.work / "src").mkdir()
    _own(home, home.work)
    refused = [repo / ".git" / "config", repo / ".git" / "hooks" / "pre-commit", home.work / ".mcp.json"]
    refused.append(home.home / ".bash_logout")
    paths = [*map(str, refused), str(home.work / "src" / "main.py")]
    result = _sandboxed(home, KERNEL, *paths, flags=("--no-trap", "--allow", "~"), user=user)
    assert result.stdout.count("refused") == len(refused) and f"wrote {paths[-1]}" in result.stdout, (
        result.stdout + result.stderr
    )
    twin = _bare(home, KERNEL, *paths, user=user)
    assert twin.stdout.count("wrote") == len(paths), twin.stdout


def test_a_toolchain_that_path_resolves_into_is_a_member(home):
    """~/.local/bin/tool is pipx's link into its venv: the venv (its interpreter, its site-packages, where
    a .pth line runs at every start) runs later as much as the PATH directory does (twin: bare plants)."""
    venv = home.home / ".local" / "share" / "pipx" / "venvs" / "tool"
    (venv / "bin").mkdir(parents=True)
    (venv / "lib").mkdir()
    (venv / "bin" / "tool").write_text("#!/bin/sh\necho tool\n")
    (venv / "bin" / "tool").chmod(0o755)
    local_bin = home.home / ".local" / "bin"
    local_bin.mkdir(parents=True)
    (local_bin / "tool").symlink_to(venv / "bin" / "tool")
    env = {**_env(home), "PATH": f"{local_bin}:{home.env['PATH']}"}
    pth = str(venv / "lib" / "evil.pth")
    argv = [SUPERVISOR, "exec", "--allow", "~", "--", sys.executable, "-c", PLANT_EACH, pth]
    result = home.run(argv, env=env)
    shown = "~" + pth[len(str(home.home)) :]
    assert (
        f"refused {pth}" in result.stdout and f"nono: denied create {shown} [{RUNS_LATER}]" in result.stderr
    )
    assert f"wrote {pth}" in home.run([sys.executable, "-c", PLANT_EACH, pth], env=env).stdout


# A command repoints a submodule's checkout at a git directory of its own, whose fsmonitor the human's
# next `git status` in the superproject runs (git status runs git in each submodule to see it is clean).
REPOINT = r"""
import os, subprocess, sys
work, checkout = sys.argv[1], sys.argv[2]
subprocess.run(["git", "clone", "-q", "--no-checkout", "upstream", "evil"], check=True)
subprocess.run(["git", "config", "core.fsmonitor", f"touch {work}/pwned; false"], cwd="evil", check=True)
try:
    with open(os.path.join(checkout, ".git"), "w") as f:
        f.write(f"gitdir: {work}/evil/.git\n")
    print("repointed")
except OSError:
    print("refused")
"""


@USERS
def test_a_submodule_inside_a_package_cannot_be_repointed_at_a_git_directory_of_the_commands(request, user):
    """A submodule checked out inside an installed package, below its root (node_modules/foo/vendor/sub):
    discovery does not walk there, but its git directory under .git/modules names its checkout
    (core.worktree), whose ``.git`` file is held as any checkout's. Rewriting it is refused, and the
    human's later ``git status`` in the project runs nothing of the command's. Twin: bare, it is
    rewritten and that git status runs the command's fsmonitor."""
    home = _home(request, user)
    _repo(home, home.work / "upstream", own=False)
    _repo(home, home.work, own=False)
    path = "node_modules/foo/vendor/sub"
    _setup_git(
        home, home.work, "-c", "protocol.file.allow=always", "submodule", "add", "-q", "./upstream", path
    )
    _setup_git(home, home.work, "commit", "-q", "-m", "sub")
    _own(home, home.work)
    args = (str(home.work), str(home.work / path))
    result = _sandboxed(home, REPOINT, *args, flags=(), user=user, cwd=home.work)
    assert "refused" in result.stdout and f"[{RUNS_LATER}]" in result.stderr, result.stdout + result.stderr
    _human(home, "git", "status", cwd=home.work, user=user)
    assert not (home.work / "pwned").exists()
    shutil.rmtree(home.work / "evil")
    assert "repointed" in _bare(home, REPOINT, *args, user=user, cwd=home.work).stdout
    _human(home, "git", "status", cwd=home.work, user=user)
    assert (home.work / "pwned").exists()


# A command sets core.fsmonitor in the git directory a submodule keeps in its checkout (`git submodule add`
# of a repository already there keeps its .git a directory), which git status in the superproject runs.
@USERS
def test_a_submodule_kept_in_its_checkout_inside_a_package_is_protected(request, user):
    """A submodule whose git directory is its checkout's own ``.git`` (added where a clone already was),
    inside an installed package below its root (node_modules/foo/vendor/sub): the walk does not go there,
    the superproject's .gitmodules names it, and its config is held as any repository's. Writing its
    core.fsmonitor is refused, and the human's later ``git status`` in the project runs nothing of the
    command's. Twin: bare, it is written and that git status runs it."""
    home = _home(request, user)
    _repo(home, home.work / "upstream", own=False)
    _repo(home, home.work, own=False)
    path = "node_modules/foo/vendor/sub"
    (home.work / path).parent.mkdir(parents=True)
    _setup_git(home, home.work, "clone", "-q", "upstream", path)
    _setup_git(home, home.work, "submodule", "add", "-q", "./upstream", path)
    _setup_git(home, home.work, "commit", "-q", "-m", "sub")
    assert (home.work / path / ".git").is_dir()
    _own(home, home.work)
    args = (
        str(home.work / path / ".git" / "config"),
        "a",
        f"[core]\n\tfsmonitor = touch {home.work}/pwned; false\n",
    )
    result = _sandboxed(home, WRITE, *args, flags=(), user=user)
    assert "refused" in result.stdout and f"[{RUNS_LATER}]" in result.stderr, result.stdout + result.stderr
    _human(home, "git", "status", cwd=home.work, user=user)
    assert not (home.work / "pwned").exists()
    assert "planted" in _bare(home, WRITE, *args, user=user).stdout
    _human(home, "git", "status", cwd=home.work, user=user)
    assert (home.work / "pwned").exists()


@USERS
def test_the_refusal_line_shows_a_held_name_inside_escaped(request, user):
    """A repository a command made in an earlier session, named with a terminal escape (OSC 0 sets the
    window title), is protected in this one; moving the directory holding it is refused, and the line
    that names what is inside prints the escape as text, as every string shown (DESIGN invariant 9).
    Twin: bare, the directory moves."""
    home = _home(request, user)
    holder = home.work / "a\x1b]0;pwned\x07b"
    _repo(home, holder / "tool")
    _own(home, holder)
    result = _sandboxed(home, MOVE, str(holder), str(home.work / "moved"), flags=(), user=user)
    assert "refused" in result.stdout and "(inside: " in result.stderr, result.stdout + result.stderr
    assert "\x1b" not in result.stderr and "\x07" not in result.stderr, repr(result.stderr)
    assert "a\\x1b]0;pwned\\x07b" in result.stderr, repr(result.stderr)
    assert "moved" in _bare(home, MOVE, str(holder), str(home.work / "moved"), user=user).stdout


# ---- hook frameworks: what an installed hook runs from the worktree --------------------------------------

# As pre-commit's installed hook is (its marks: the generated-by line, ``hook-impl --config=``), with the
# framework itself reduced to what matters here: it runs each ``entry:`` of the worktree's config.
PRE_COMMIT_HOOK = """#!/usr/bin/env bash
# File generated by pre-commit: https://pre-commit.com
ARGS=(hook-impl --config=.pre-commit-config.yaml --hook-type=pre-commit)
sed -n 's/^ *entry: *//p' .pre-commit-config.yaml | while read -r entry; do sh -c "$entry"; done
"""


@USERS
@pytest.mark.parametrize("framework", [True, False], ids=["pre-commit-installed", "sample-hooks-only"])
def test_a_hook_frameworks_config_is_what_its_installed_hook_runs(request, user, framework):
    """Where pre-commit's hook is installed, ``.pre-commit-config.yaml`` is what the human's next ``git
    commit`` runs, outside any sandbox: a command cannot write it (runs later, one line), and the commit
    runs nothing planted. Twin: bare, the planted entry runs at the commit. Where only git's sample hooks
    are, the config runs nothing and is an ordinary project file: written as bare."""
    home = _home(request, user)
    repo = _repo(home, home.work, own=False)
    config, marker = repo / ".pre-commit-config.yaml", home.home / "ran-at-commit"
    if framework:
        hook = repo / ".git" / "hooks" / "pre-commit"
        hook.write_text(PRE_COMMIT_HOOK)
        hook.chmod(0o755)
    _own(home, repo)
    local_hook = f"repos:\n- repo: local\n  hooks:\n  - id: x\n    entry: touch {marker}\n"
    result = _sandboxed(home, WRITE, str(config), "w", local_hook, flags=(), user=user)
    if not framework:
        assert "planted" in result.stdout, result.stdout + result.stderr
        return
    assert "refused" in result.stdout and f"[{RUNS_LATER}]" in result.stderr, result.stdout + result.stderr
    (repo / "change").write_text("x\n")
    _own(home, repo)
    _human(home, "git", "add", "-A", cwd=repo, user=user)
    _human(home, "git", "commit", "-q", "-m", "two", cwd=repo, user=user)
    assert not marker.exists()
    twin = _bare(home, WRITE, str(config), "w", local_hook, user=user)
    assert "planted" in twin.stdout, twin.stdout + twin.stderr
    _human(home, "git", "add", "-A", cwd=repo, user=user)
    _human(home, "git", "commit", "-q", "-m", "three", cwd=repo, user=user)
    assert marker.exists()
