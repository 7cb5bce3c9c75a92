"""The git repositories of a workdir, found once at session start: what in each runs code later.

git reads a repository's ``config`` (core.fsmonitor, core.hooksPath, core.pager, aliases, filters,
include.path) at every command run in it and runs its ``hooks`` at commit, merge, checkout, rebase and
push: a command that wrote them would run code at the human's next plain ``git status``, outside any
sandbox (issue 24, finding 2). These paths become runs-later entries of the session's policy
(``policy.RunsLater``), so the Landlock plan carves them read-only like any other entry.

Only the repositories that exist when the session starts are found: one walk of the workdir, not one per
command (the plan is compiled per command and cached on the stamps of what it read, and a walk's stamps
would be every directory of the tree). A repository a command creates later is that command's own (README,
"Runs later"). A directory is a git directory where git's own test (``is_git_directory``: HEAD, objects
and refs) says so, which finds ``.git`` directories, bare repositories (a local remote: its hooks run when
the human pushes to it) and submodules' directories under ``.git/modules`` alike.
"""

from __future__ import annotations

import os
import re
import stat

from nono_supervisor.paths import under
from nono_supervisor.policy.profile import RunsLater

__all__ = ["GIT_DIR_MARKS", "repository_entries"]

GIT_DIR_MARKS = frozenset({"HEAD", "objects", "refs"})  # git's is_git_directory()
_CONFIG = "git: the repository's config (core.fsmonitor, hooksPath, aliases, filters) at every command in it"
_HOOKS = "git: this repository's hooks at commit, merge, checkout, rebase and push"
_WORKTREE_CONFIG = "git: worktree config (extensions.worktreeConfig) at every git command in the worktree"
_COMMONDIR = "git: which repository's config and hooks a linked worktree uses"
_HOOKS_PATH = "git: hooks where core.hooksPath points (husky's .husky) at commit, merge, checkout and push"
_INCLUDED = "git: a file the repository's config includes (include.path), at every command in it"
_GITFILE = "git: which git directory (its config and hooks) git uses in this checkout"
_FRAMEWORK = "git: what this repository's {name} hook runs, read from the worktree at commit and push"
# Hook frameworks: a hook they install runs what a file in the worktree lists (pre-commit's `repo: local`
# `entry:`, lefthook's `run:`), so that file runs later as the hook does. Found by what the installed hook
# says of itself (a sample hook names neither); pre-commit's hook names its config (``--config=``).
_FRAMEWORKS = {
    b"pre-commit.com": ("pre-commit", (".pre-commit-config.yaml", ".pre-commit-config.yml")),
    b"lefthook": (
        "lefthook",
        tuple(
            f"{dot}lefthook{local}.{ext}"
            for dot in ("", ".")
            for local in ("", "-local")
            for ext in ("yml", "yaml", "json", "jsonc", "toml")
        ),
    ),
    b"overcommit": ("overcommit", (".overcommit.yml",)),
}
_PRE_COMMIT_CONFIG = re.compile(rb"--config[= ]([^\s\"')]+)")


def repository_entries(workdir: str) -> tuple[RunsLater, ...]:
    """The runs-later entries of every repository at any depth of ``workdir`` (of an installed package's,
    only at its root: ``_DEPENDENCY_DIRS``) and of the one that holds it."""
    gitdirs: list[str] = []
    gitfiles: list[str] = []
    _walk(os.path.realpath(workdir), gitdirs, gitfiles, _kernel_mounts())
    _above(os.path.realpath(workdir), gitdirs, gitfiles)
    entries: list[RunsLater] = []
    for dotgit in [*(g for g in gitdirs if os.path.basename(g) == ".git"), *gitfiles]:
        _submodules(os.path.dirname(dotgit), gitdirs, gitfiles)
    for gitfile in gitfiles:
        entries.append(RunsLater(gitfile, _GITFILE))
        target = _gitfile_target(gitfile)
        if target is not None and target not in gitdirs:
            gitdirs.append(target)
    for gitdir in gitdirs:
        entries.extend(_gitdir_entries(gitdir))
    return tuple(dict.fromkeys(entries))


def _submodules(worktree: str, gitdirs: list[str], gitfiles: list[str]) -> None:
    """The checkouts a worktree's ``.gitmodules`` names (``path = ...``), wherever they lie, and theirs in
    turn: git status there runs git in each one, and the walk does not look inside a package (a submodule
    added where a clone already was keeps its git directory in its checkout; an absorbed one has a ``.git``
    file). Each is found once (a cycle of names ends there)."""
    for line in _read(os.path.join(worktree, ".gitmodules")).decode(errors="replace").splitlines():
        key, _, value = line.partition("=")
        if key.strip().lower() != "path" or not value.strip():
            continue
        dotgit = os.path.normpath(os.path.join(worktree, value.strip().strip('"'), ".git"))
        if not under(dotgit, worktree):
            continue  # git refuses a submodule path outside its worktree
        if dotgit in gitdirs or dotgit in gitfiles or not os.path.lexists(dotgit):
            continue
        kept = os.path.isdir(dotgit) and not os.path.islink(dotgit)
        (gitdirs if kept else gitfiles).append(dotgit)
        _submodules(os.path.dirname(dotgit), gitdirs, gitfiles)  # its own submodules in turn


# Where a package manager installs packages: each entry is a package (an npm @scope and pnpm's .pnpm hold
# packages in turn). The inside of a package is the package manager's: npm strips .git from every package
# it installs, so a repository there is a dependency's test fixture, or one the human would have to cd
# deep into a dependency's files to run git in. A package root is looked at (a clone of the human's:
# `node_modules/foo/.git`) and its own dependency directory walked the same way; nothing else of it
# (README, "Runs later": why, and a 50,000-file node_modules in 81-87 -> 11-22 ms).
_DEPENDENCY_DIRS = frozenset({"node_modules", "site-packages", "dist-packages"})
_PACKAGE_GROUPS = ("@", ".pnpm")
_TREE, _DEPENDENCIES, _PACKAGE = range(3)


def _walk(
    top: str, gitdirs: list[str], gitfiles: list[str], skip: frozenset[str] = frozenset(), whole: bool = False
) -> None:
    """Depth first, without following links: git directories are recorded and not descended into, nor
    is anything in ``skip``, nor the inside of an installed package (``_DEPENDENCY_DIRS``) unless
    ``whole`` (a git directory's ``modules/``, whose directories are named after the submodules' paths)."""
    stack = [(top, _TREE)]
    while stack:
        directory, kind = stack.pop()
        if directory in skip:
            continue
        names: set[str] = set()
        below: list[tuple[str, int | None]] = []
        try:
            with os.scandir(directory) as listing:
                for entry in listing:
                    names.add(entry.name)
                    try:
                        is_dir = entry.is_dir(follow_symlinks=False)
                    except OSError:
                        continue  # gone since it was listed
                    if entry.name == ".git":
                        if is_dir:
                            gitdirs.append(entry.path)
                        elif entry.is_symlink() or entry.is_file(follow_symlinks=False):
                            gitfiles.append(entry.path)  # names a git directory elsewhere
                    elif is_dir:
                        below.append((entry.path, _TREE if whole else _kind(kind, entry.name)))
        except OSError:
            # Unreadable to the user, wholly or part way through (/proc/1/map_files fails at the first
            # entry): nothing git run by the user reads there either. What was listed is still walked.
            pass
        if GIT_DIR_MARKS <= names:
            gitdirs.append(directory)  # a bare repository: its own hooks and config
        else:
            stack.extend((path, kind) for path, kind in below if kind is not None)


def _kind(parent: int, name: str) -> int | None:
    """What a subdirectory named ``name`` of a directory of kind ``parent`` is; None: not walked."""
    if name in _DEPENDENCY_DIRS:
        return _DEPENDENCIES
    if parent == _TREE:
        return _TREE
    if parent == _DEPENDENCIES:
        return _DEPENDENCIES if name.startswith(_PACKAGE_GROUPS) else _PACKAGE
    return None  # inside a package: only its own dependency directory


# Filesystems the kernel makes up (cgroup, proc, sys, debug, bpf...), where no one can create a git
# repository: a workdir of `/` walks past them (their listings fail part way, or never end: /proc/PID/task).
_KERNEL_FILESYSTEMS = frozenset(
    "proc sysfs cgroup cgroup2 devpts debugfs tracefs securityfs bpf configfs pstore fusectl mqueue "
    "binfmt_misc efivarfs nsfs hugetlbfs rpc_pipefs".split()
)


def _kernel_mounts() -> frozenset[str]:
    """The mount points of kernel filesystems (``/proc/self/mountinfo``; none where there is none)."""
    try:
        with open("/proc/self/mountinfo", "rb") as mountinfo:
            lines = mountinfo.read().decode(errors="surrogateescape").splitlines()
    except OSError:
        return frozenset()
    found = set()
    for line in lines:
        fields, _, rest = line.partition(" - ")
        point = fields.split(" ")[4] if fields.count(" ") >= 4 else ""
        if rest.split(" ")[0] in _KERNEL_FILESYSTEMS:
            # mountinfo writes a space, tab, newline or backslash as a backslash and three octal digits
            found.add(re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), point))
    return frozenset(found)


def _above(workdir: str, gitdirs: list[str], gitfiles: list[str]) -> None:
    """The repository that holds the workdir (git walks up from the human's cwd as well)."""
    parent = os.path.dirname(workdir)
    while True:
        dotgit = os.path.join(parent, ".git")
        if os.path.isdir(dotgit) and not os.path.islink(dotgit):
            gitdirs.append(dotgit)
            return
        if os.path.islink(dotgit) or os.path.isfile(dotgit):
            gitfiles.append(dotgit)
            return
        if parent == "/":
            return
        parent = os.path.dirname(parent)


def _gitfile_target(path: str) -> str | None:
    """The git directory a ``.git`` file names (``gitdir: PATH``, relative to the file's directory), or
    a ``.git`` symlink leads to."""
    if os.path.islink(path):
        target = os.path.realpath(path)
        return target if os.path.isdir(target) else None
    line = _read(path, 4096).decode(errors="replace").partition("\n")[0].strip()
    if not line.startswith("gitdir:"):
        return None
    target = os.path.join(os.path.dirname(path), line[len("gitdir:") :].strip())
    return os.path.realpath(target) if os.path.isdir(target) else None


def _gitdir_entries(gitdir: str) -> list[RunsLater]:
    """A git directory's config, hooks and worktree config; those of its linked worktrees (their
    ``commondir`` says whose config and hooks they use) and of its submodules (``modules/``)."""
    join = os.path.join
    entries = [RunsLater(join(gitdir, "config"), _CONFIG), RunsLater(join(gitdir, "hooks"), _HOOKS)]
    references = _config_references(join(gitdir, "config"), gitdir)
    entries += references
    worktree = os.path.dirname(gitdir) if os.path.basename(gitdir) == ".git" else None
    if worktree is not None:
        hook_dirs = [join(gitdir, "hooks"), *(r.path for r in references if r.why == _HOOKS_PATH)]
        entries += _framework_configs(worktree, hook_dirs)
    common = gitdir
    if os.path.isfile(join(gitdir, "commondir")):  # a linked worktree's own git directory
        entries.append(RunsLater(join(gitdir, "commondir"), _COMMONDIR))
        common = _commondir(gitdir) or gitdir
        entries += [RunsLater(join(common, "config"), _CONFIG), RunsLater(join(common, "hooks"), _HOOKS)]
    # git reads config.worktree only where the (protected) config sets extensions.worktreeConfig; a name
    # that does not exist is carved by listing its directory, which git rewrites at every command
    # (landlock.NotedFs: the plan would be compiled again after each): only then, or where it exists.
    worktree_config = _mentions(join(common, "config"), b"worktreeconfig")
    for place in (gitdir, *_listed(join(gitdir, "worktrees"), dirs=True)):
        if worktree_config or os.path.lexists(join(place, "config.worktree")):
            entries.append(RunsLater(join(place, "config.worktree"), _WORKTREE_CONFIG))
        if place != gitdir:
            entries.append(RunsLater(join(place, "commondir"), _COMMONDIR))
    modules: list[str] = []
    _walk(join(gitdir, "modules"), modules, [], whole=True)
    for module in modules:
        entries += _gitdir_entries(module)
    return entries


def _config_references(config: str, gitdir: str) -> list[RunsLater]:
    """What a repository's config points git at, outside its git directory: core.hooksPath (relative to
    the worktree, where hooks run: husky's ``.husky``, often tracked in the project), include.path
    (relative to the config file) and core.worktree's ``.git`` file (relative to the git directory: a
    submodule's checkout, which the walk misses inside a package, and which the superproject's ``git
    status`` runs git in). A plain reading of git-config(1)'s syntax: sections, ``key = value``."""
    lines = _read(config).decode(errors="replace").splitlines()
    found, section = [], ""
    worktree = os.path.dirname(gitdir) if os.path.basename(gitdir) == ".git" else gitdir
    for line in (raw.strip() for raw in lines):
        if line.startswith("["):
            section = line.strip("[]").split(" ", 1)[0].split(".", 1)[0].lower()
            continue
        key, _, value = line.partition("=")
        key, value = key.strip().lower(), os.path.expanduser(value.strip().strip('"'))
        if section == "core" and key == "hookspath" and value:
            found.append(RunsLater(os.path.normpath(os.path.join(worktree, value)), _HOOKS_PATH))
        elif section == "core" and key == "worktree" and value:
            found.append(RunsLater(os.path.normpath(os.path.join(gitdir, value, ".git")), _GITFILE))
        elif section in ("include", "includeif") and key == "path" and value:
            found.append(RunsLater(os.path.normpath(os.path.join(os.path.dirname(config), value)), _INCLUDED))
    return found


def _framework_configs(worktree: str, hook_dirs: list[str]) -> list[RunsLater]:
    """The worktree files that the repository's installed hooks run (``_FRAMEWORKS``), named or not yet
    made: a command that wrote ``.pre-commit-config.yaml`` with a local hook would run it at the human's
    next ``git commit``, outside any sandbox, through a hook that is itself protected."""
    found: list[RunsLater] = []
    for directory in hook_dirs:
        for hook in _listed(directory, dirs=False):
            if hook.endswith(".sample"):
                continue
            text = _read(hook, 64 << 10)
            for mark, (name, configs) in _FRAMEWORKS.items():
                if mark not in text:
                    continue
                named = [m.decode(errors="replace") for m in _PRE_COMMIT_CONFIG.findall(text)]
                for config in (*configs, *named) if name == "pre-commit" else configs:
                    path = os.path.normpath(os.path.join(worktree, config))
                    found.append(RunsLater(path, _FRAMEWORK.format(name=name)))
    return found


def _read(path: str, limit: int = 1 << 20) -> bytes:
    """At most ``limit`` bytes of a regular file, b"" otherwise. Never blocks: a repository a command made
    in an earlier session may hold a FIFO where git keeps a file, and this runs before the session starts."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError:
        return b""
    try:
        return os.read(fd, limit) if stat.S_ISREG(os.fstat(fd).st_mode) else b""
    except OSError:
        return b""
    finally:
        os.close(fd)


def _mentions(path: str, word: bytes) -> bool:
    return word in _read(path).lower()


def _commondir(gitdir: str) -> str | None:
    common = _read(os.path.join(gitdir, "commondir"), 4096).decode(errors="replace").strip()
    return os.path.realpath(os.path.join(gitdir, common)) if common else None


def _listed(path: str, *, dirs: bool) -> list[str]:
    """The directories (``dirs``) or the regular files of ``path``, no symlink followed; [] if unreadable."""
    try:
        with os.scandir(path) as listing:
            return [
                e.path
                for e in listing
                if (e.is_dir(follow_symlinks=False) if dirs else e.is_file(follow_symlinks=False))
            ]
    except OSError:
        return []
