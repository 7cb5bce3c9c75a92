"""The session split into its parts (issue 22, finding 2): the policy state, the session's files and the
runtime services, each built alone and given to the next at construction.

- The policy state is built over a fake home with no audit log and no prompter, decides alone, and no
  runtime service is reachable from it; a session assembled by hand from the parts enforces under the
  kernel (the key denied by Landlock, the workdir read, the key read bare), as root and as uid 65534.
- Nothing is assigned onto a session from outside ``supervisor/session/`` (the services were set from
  cli, launcher and server after construction).
- A start that fails (a grant store granting ``/``) leaves none of the session's directories behind.
"""

from __future__ import annotations

import json
import os
import re
import sys
import tempfile
from pathlib import Path

import pytest

from conftest import FAKE_KEY, as_nobody

ROOT = Path(__file__).resolve().parent.parent

# Run as the test's user (root, or uid 65534 through conftest.as_nobody): the parts built alone, then a
# session assembled by hand from them, and each read under the kernel's sandbox and bare.
PARTS = r"""
import gc, json, os, subprocess, sys, types

from nono_supervisor import paths
from nono_supervisor.audit import AuditLog
from nono_supervisor import backend
from nono_supervisor.linux.latedeny import LateDenies
from nono_supervisor.netproxy import NetProxy
from nono_supervisor.policy.profile import PolicyOptions
from nono_supervisor.session import PolicyState, Services, Session, SessionFiles
from nono_supervisor.terminal.prompt import Prompter
from nono_supervisor.undo import Store

SERVICES = (Services, AuditLog, Prompter, NetProxy, LateDenies, Store)
work, key, readme = sys.argv[1:4]
env = dict(os.environ)


def services_reachable(root):
    # Every object reachable from root through instances, containers and closures; not through modules,
    # classes or a function's globals (every object is reachable through those).
    skip = {id(vars(m)) for m in list(sys.modules.values()) if m is not None}
    seen, stack, found = set(), [root], set()
    while stack:
        obj = stack.pop()
        if id(obj) in seen or id(obj) in skip or isinstance(obj, (type, types.ModuleType)):
            continue
        seen.add(id(obj))
        if isinstance(obj, SERVICES):
            found.add(type(obj).__name__)
        stack.extend(gc.get_referents(obj))
    return sorted(found)


def sandboxed(session, path):
    read, write = os.pipe()
    launch = backend.Launch("/bin/cat", ["cat", path], env, work, (0, write, write))
    process = backend.start(session, launch, backend.Hooks())
    os.close(write)
    with os.fdopen(read, "rb") as f:
        out = f.read().decode(errors="replace")
    code = os.waitstatus_to_exitcode(process.wait())
    backend.current().finish(process)
    return code, out


files = SessionFiles.create(env, work)
state = PolicyState(PolicyOptions(), files)
access = state.access_index(state.policy)
report = {
    "key_allowed": access.verdict(key, "read").allowed,
    "readme_allowed": access.verdict(readme, "read").allowed,
    "audit_log_made": paths.audit_log_path(env).exists(),
    "from_state": services_reachable(state),
}
services = Services("hand", state, files, AuditLog(paths.audit_log_path(env), "hand"), None)
session = Session("hand", state, files, services)
try:
    report["from_state_beside_services"] = services_reachable(state)  # they exist now: none is reached
    report["from_session"] = services_reachable(session)
    report["prompt_mode"] = services.prompt_mode()
    report["key_sandboxed"] = sandboxed(session, key)
    report["readme_sandboxed"] = sandboxed(session, readme)
    bare = subprocess.run(["cat", key], capture_output=True, text=True)
    report["key_bare"] = [bare.returncode, bare.stdout]
finally:
    session.close()
report["dirs_left"] = [str(p) for p in (files.runtime_dir, files.tmpdir) if p.exists()]
print(json.dumps(report))
"""


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_the_policy_state_is_built_alone_and_reaches_no_service(request, user):
    """The policy state decides over a fake home with no audit log and no prompter, and no service is
    reachable from it; the parts assembled by hand enforce under Landlock. Twins: the same walk from the
    session finds the services (the walk is not blind), and the key is read bare."""
    home = request.getfixturevalue("nobody_home" if user else "home")
    argv = [sys.executable, "-c", PARTS, str(home.work), str(home.key), str(home.work / "README")]
    result = home.run(argv, user=user)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["key_allowed"] is False and report["readme_allowed"] is True
    assert report["audit_log_made"] is False  # the policy state alone wrote no audit log
    assert report["from_state"] == [] and report["from_state_beside_services"] == []
    assert {"Services", "AuditLog"} <= set(report["from_session"])  # the twin: the walk finds them
    assert report["prompt_mode"] == "never"  # no prompter given: nothing is asked
    code, out = report["key_sandboxed"]
    assert code != 0 and FAKE_KEY not in out and "Permission denied" in out
    assert report["readme_sandboxed"] == [0, "a file in the workdir\n"]
    assert report["key_bare"] == [0, FAKE_KEY + "\n"]
    assert report["dirs_left"] == []


# An assignment onto a session object outside its package ("session.prompter = ...", as cli, launcher
# and server did, and "session.late_denies = ..." in latedeny).
_ASSIGNED = re.compile(r"\bsession\.[A-Za-z_][\w.]*\s*(?<![=!<>])=(?!=)")


def test_no_module_assigns_onto_a_session_from_outside():
    """The services are given at construction: no module outside supervisor/session/ sets an attribute
    of a session (its parts included). The twin: the pattern finds the assignments the split removed."""
    assert _ASSIGNED.search("        session.prompter = Prompter.for_terminal(timeout)")
    assert _ASSIGNED.search("            session.late_denies = LateDenies(session)")
    assert not _ASSIGNED.search("    if session.state.trap == other:")
    found = []
    for path in sorted((ROOT / "supervisor").rglob("*.py")):
        if "session" in path.relative_to(ROOT / "supervisor").parts[:1]:
            continue
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if _ASSIGNED.search(line.split("#", 1)[0]):
                found.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert found == []


_GRANT = """[[grant]]
id = "abcd1234"
path = "{path}"
access = "read"
kind = "dir"
created = "2024-01-01T00:00:00Z"
command = "ls"
"""


def _leftovers(parent: Path) -> list[str]:
    return sorted(p.name for p in parent.iterdir() if p.name.startswith("nono-shell-"))


def test_a_start_that_fails_leaves_none_of_its_directories(home, monkeypatch):
    """A grant store granting ``/`` refuses the session at start (a usage error naming the entry): its
    runtime and temp directories, made before the store is read, go with it. The twin: a good store."""
    from nono_supervisor import paths
    from nono_supervisor.errors import UsageError
    from nono_supervisor.policy.profile import PolicyOptions
    from nono_supervisor.session import Session

    runtime, temp = home.root / "run", home.root / "tmp"
    runtime.mkdir(mode=0o700)
    temp.mkdir(mode=0o700)
    env = {**home.env, "XDG_RUNTIME_DIR": str(runtime)}
    monkeypatch.setattr(tempfile, "tempdir", str(temp))
    store = paths.grants_path(env)
    store.parent.mkdir(parents=True, exist_ok=True)
    store.write_text(_GRANT.format(path="/"))
    with pytest.raises(UsageError):
        Session.create(PolicyOptions(), env=env, workdir=str(home.work))
    assert _leftovers(runtime) == [] and _leftovers(temp) == []

    store.write_text(
        _GRANT.format(path="/srv/x")
    )  # the twin: the session starts, and its directories are there until close
    session = Session.create(PolicyOptions(), env=env, workdir=str(home.work))
    try:
        assert len(_leftovers(runtime)) == 1 and len(_leftovers(temp)) == 1
        assert os.stat(session.files.runtime_dir).st_mode & 0o777 == 0o700
    finally:
        session.close()
    assert _leftovers(runtime) == [] and _leftovers(temp) == []


# A session in a process of its own that prints its directories and is then killed: nothing removes them.
_KILLED = r"""
import os, signal, sys
from nono_supervisor.policy.profile import PolicyOptions
from nono_supervisor.session import Session
session = Session.create(PolicyOptions(), env=dict(os.environ), workdir=sys.argv[1])
print(session.files.runtime_dir, session.files.tmpdir, flush=True)
if sys.argv[2] == "kill":
    os.kill(os.getpid(), signal.SIGKILL)
sys.stdin.read()  # held until the test closes stdin
session.close()
"""


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_what_a_killed_session_left_is_swept_at_the_next_start_and_a_live_ones_never(request, user):
    """A supervisor killed with SIGKILL cannot remove its runtime and temp directories (the twin: they are
    still there after it died); the next session's start removes them. A live session's, as old, stays:
    it holds them (a shared flock). A symlink named like one is not followed, and another user's
    directory, or a fresh one, is left alone."""
    import subprocess

    home = request.getfixturevalue("nobody_home" if user else "home")
    parent = home.root / "tmp"
    parent.mkdir(mode=0o700)
    os.chown(parent, home.owner, home.owner)
    env = {**home.env, "TMPDIR": str(parent), "XDG_RUNTIME_DIR": str(parent)}

    def session(mode: str):
        argv = [sys.executable, "-c", _KILLED, str(home.work), mode]
        argv = as_nobody(argv) if user else argv
        return subprocess.Popen(
            argv, cwd=home.work, env=env, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )

    dead = session("kill")
    left = dead.stdout.readline().split()
    dead.wait()
    assert dead.returncode == -9 and all(os.path.isdir(p) for p in left)  # the twin: nothing removed them
    live = session("hold")
    held = live.stdout.readline().split()
    try:
        kept = parent / "kept"
        kept.mkdir()
        (kept / "file").write_text("x")
        os.symlink(kept, parent / "nono-shell-session-tmp-link")
        for path in (*left, *held, parent / "nono-shell-session-tmp-link"):  # unchanged for an hour
            os.utime(path, (0, os.lstat(path).st_mtime - 3600), follow_symlinks=False)
        fresh = session("kill")
        made = fresh.stdout.readline().split()
        fresh.wait()
        assert not any(os.path.exists(p) for p in left), "a killed session's directories were not swept"
        assert all(os.path.isdir(p) for p in held), "a live session's directories were swept"
        assert (kept / "file").exists() and os.path.islink(parent / "nono-shell-session-tmp-link")
        assert all(os.path.isdir(p) for p in made)  # fresh: younger than a minute
    finally:
        live.stdin.close()
        live.wait()
    assert not any(os.path.exists(p) for p in held)  # it closed: removed by its own close
