"""A deny holds for the life of the session (DESIGN.md invariant 12; issue 24 part C).

A denied node that moves into what a running sandbox grants after its plan was compiled (the human's
``stow`` of ``~/.config/gh`` into the project, a symlinked ``~/.cache/huggingface``) stops a command
already running, with its line, and is refused to the agent and to new commands; a command cannot make a
name (symlink, rename, link) on the way to a denied node. Each case has its bare twin; the key ones run as
root and as uid 65534. The human's moves are made by the test itself, unsandboxed, as the human would.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import NOBODY, SUPERVISOR, Home, as_nobody, pid_alive, wait_until

TOKEN = "gho_nono-test-gh-token-5be1"
HF_TOKEN = "hf_nono-test-hf-token-90ad"
# Waits for the test's go file, then reads what the human's login wrote through the moved node.
WAIT_THEN = 'touch flags/started; while [ ! -e flags/go ]; do sleep 0.05; done; cat {path}; echo "rc=$?"'
STOP_SECONDS = 20  # generous under load: the test then lets the command read, and fails on what it read


def _as_owner(home: Home, *paths: Path) -> None:
    """What the test (root) makes in a uid 65534 home belongs to that user, as the human's own files."""
    if home.owner:
        for path in paths:
            os.lchown(path, home.owner, home.owner)


def _stow_gh(home: Home) -> Path:
    """``stow`` from a dotfiles package in the project: ~/.config/gh becomes a link into the project, and
    ``gh auth login`` then writes its token there. Returns the token's path in the project."""
    package = home.work / "dotfiles" / "gh"
    config = home.home / ".config"
    config.mkdir(exist_ok=True)
    (config / "gh").symlink_to(package)
    (package / "hosts.yml").write_text(f"github.com:\n    oauth_token: {TOKEN}\n")
    _as_owner(home, config, config / "gh", package / "hosts.yml")
    return package / "hosts.yml"


def _link_hf_cache(home: Home) -> Path:
    """``~/.cache/huggingface`` made a link to ``./x`` (the attack's shape, here made by the human, outside
    any sandbox), then ``huggingface-cli login`` writes the token through it."""
    cache = home.home / ".cache"
    cache.mkdir(exist_ok=True)
    (cache / "huggingface").symlink_to(home.work / "x")
    (home.work / "x" / "token").write_text(HF_TOKEN + "\n")
    _as_owner(home, cache, cache / "huggingface", home.work / "x" / "token")
    return home.work / "x" / "token"


def _prepare(home: Home) -> None:
    """The project before the session: a stow package with no token yet, and an empty ./x."""
    made = [home.work / "dotfiles", home.work / "dotfiles" / "gh", home.work / "x"]
    for directory in made:
        directory.mkdir()
    _as_owner(home, *made)


def _start(home: Home, argv: list[str], env: dict[str, str]) -> subprocess.Popen:
    user = home.owner == NOBODY
    return subprocess.Popen(
        as_nobody(argv) if user else argv,
        cwd=home.work,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _wait_then_read(home: Home, argv: list[str], env: dict[str, str], move, ended) -> tuple[int, str, str]:
    """Start ``argv`` (it waits for ``go`` and then reads); once it has started, make the human's
    ``move``; wait until ``ended()`` says the supervisor acted (or STOP_SECONDS), then let it read."""
    # The markers live in a directory of their own: under --no-trap nothing is created in the workdir's
    # root, which holds runs-later names (.mcp.json...) that Landlock alone can only keep by refusing all.
    flags = home.work / "flags"
    flags.mkdir(exist_ok=True)
    _as_owner(home, flags)
    process = _start(home, argv, env)
    try:
        assert wait_until(lambda: (flags / "started").exists(), 30), process.stderr
        move(home)
        wait_until(lambda: process.poll() is not None or ended(), STOP_SECONDS)
        (flags / "go").touch()
        out, err = process.communicate(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    return process.returncode, out, err


def _late(home: Home, action: str) -> list[dict]:
    return [r for r in home.audit() if r.get("event") == "late-deny" and r.get("action") == action]


CASES = {
    "stow": (_stow_gh, "dotfiles/gh/hosts.yml", TOKEN, "~/.config/gh"),
    "symlinked-ancestor": (_link_hf_cache, "x/token", HF_TOKEN, "~/.cache/huggingface/token"),
}


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_moved_denied_node_stops_a_command_already_running(request, user, case):
    sup = request.getfixturevalue("nobody_supervisor" if user else "supervisor")
    home = sup.home
    move, path, secret, denied = CASES[case]
    _prepare(home)
    script = WAIT_THEN.format(path=path)
    code, out, err = _wait_then_read(
        home, [str(sup.shims / "bash"), "-c", script], sup.env, move, lambda: False
    )
    assert secret not in out + err
    assert code == 128 + 9, (code, out, err)  # the keeper's SIGKILL, whoever reaps it (test_lifetime)
    assert f"nono: stopped: {denied} [" in err and "inside what this command's sandbox grants" in err, err
    stopped = _late(home, "stopped")
    assert stopped and stopped[0]["path"].endswith(denied.removeprefix("~")), stopped
    # A new command is refused it too, on the ask-again path (the supervisor's decisions moved with it).
    again = sup.shell("-c", f"cat {path}; echo rc=$?")
    assert secret not in again.stdout + again.stderr and "rc=1" in again.stdout
    assert "nono: denied read ~/project/" + path in again.stderr, again.stderr


@pytest.mark.parametrize("case", CASES)
def test_moved_denied_node_twin_bare_reads_it(home, case):
    move, path, secret, _denied = CASES[case]
    _prepare(home)
    code, out, _err = _wait_then_read(
        home, ["bash", "-c", WAIT_THEN.format(path=path)], home.env, move, lambda: True
    )
    assert code == 0 and secret in out and "rc=0" in out


AGENT = """
import errno, os, time
open("flags/started", "w").close()
while not os.path.exists("flags/go"):
    time.sleep(0.05)
try:
    with open(os.sys.argv[1]) as f:
        print("read:", f.read())
except OSError as e:
    print("refused:", errno.errorcode[e.errno])
"""


@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_moved_denied_node_is_refused_to_the_running_agent(request, user, case):
    """The agent lives as long as the session and is not stopped: its loop sees every call, and from the
    move on decides each open on where the denied node is now (its fast path stops)."""
    home = request.getfixturevalue("nobody_home" if user else "home")
    move, path, secret, denied = CASES[case]
    _prepare(home)
    (home.work / "agent.py").write_text(AGENT)
    argv = [SUPERVISOR, "run", "--no-interpose", "--agent", "none", "--", sys.executable, "agent.py", path]
    code, out, err = _wait_then_read(home, argv, home.env, move, lambda: bool(_late(home, "guarded")))
    assert secret not in out + err
    assert "refused: EACCES" in out, (out, err)
    guarded = _late(home, "guarded")
    assert guarded and guarded[0]["path"].endswith(denied.removeprefix("~")), guarded


@pytest.mark.parametrize("case", CASES)
def test_moved_denied_node_twin_bare_agent_reads_it(home, case):
    move, path, secret, _denied = CASES[case]
    _prepare(home)
    (home.work / "agent.py").write_text(AGENT)
    code, out, _err = _wait_then_read(home, [sys.executable, "agent.py", path], home.env, move, lambda: True)
    assert code == 0 and "read:" in out and secret in out


def _elsewhere(home: Home) -> None:
    """The stow package lives outside anything the commands are granted."""
    package = home.root / "elsewhere" / "gh"
    package.mkdir(parents=True)
    (home.home / ".config").mkdir(exist_ok=True)
    (home.home / ".config" / "gh").symlink_to(package)
    (package / "hosts.yml").write_text(f"oauth_token: {TOKEN}\n")
    _as_owner(home, package.parent, package, home.home / ".config", home.home / ".config" / "gh")


def test_a_command_that_cannot_reach_the_moved_node_is_not_stopped(supervisor):
    home = supervisor.home
    script = 'touch flags/started; while [ ! -e flags/go ]; do sleep 0.05; done; echo "finished"'
    code, out, err = _wait_then_read(
        home, [str(supervisor.shims / "bash"), "-c", script], supervisor.env, _elsewhere, lambda: False
    )
    assert code == 0 and out == "finished\n" and "nono: stopped" not in err, (out, err)
    assert not _late(home, "stopped")


NAMES = {
    "symlink": "ln -s {work}/x ~/.cache/huggingface",
    "rename": "mv {work}/x ~/.cache/huggingface",
    "link": "touch {work}/file && ln {work}/file ~/.cache/huggingface",
}


@pytest.mark.parametrize("how", NAMES)
@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_a_command_cannot_make_a_name_on_the_way_to_a_denied_node(request, user, how):
    """Under ``--allow ~`` a command may write ~/.cache, never make ~/.cache/huggingface (the way to the
    denied token) a symlink, a moved directory or a link. Twin: bare, each succeeds."""
    home = request.getfixturevalue("nobody_home" if user else "home")
    _prepare(home)
    (home.home / ".cache").mkdir()
    _as_owner(home, home.home / ".cache")
    script = NAMES[how].format(work=home.work) + "; echo rc=$?; ls -A ~/.cache"
    sandboxed = home.run(
        [SUPERVISOR, "exec", "--allow", str(home.home), "--", "bash", "-c", script], user=user
    )
    assert "rc=1" in sandboxed.stdout and "huggingface" not in sandboxed.stdout.split("rc=1", 1)[1]
    assert "nono: denied create ~/.cache/huggingface [a name on the way to a denied path" in sandboxed.stderr
    assert "to allow:" not in sandboxed.stderr.split("~/.cache/huggingface [", 1)[1].splitlines()[0]
    twin = home.run(["bash", "-c", script], user=user)
    assert "rc=0" in twin.stdout and "huggingface" in twin.stdout


def test_a_command_still_makes_other_names_beside_a_denied_node(home):
    """Fidelity: only names on the way are refused: a symlink beside them is made as bare."""
    _prepare(home)
    (home.home / ".cache").mkdir()
    script = f"ln -s {home.work}/x ~/.cache/other && mkdir ~/.cache/pip; echo rc=$?"
    result = home.run([SUPERVISOR, "exec", "--allow", str(home.home), "--", "bash", "-c", script])
    assert "rc=0" in result.stdout and "nono:" not in result.stderr, result.stderr
    assert (home.home / ".cache" / "other").is_symlink()


# renameat2(a, b, RENAME_EXCHANGE): mv --exchange is too new for every runner's coreutils
EXCHANGE = """
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
done = libc.renameat2(-100, os.fsencode(sys.argv[1]), -100, os.fsencode(sys.argv[2]), 2) == 0
print("rc=0" if done else f"rc=1 {os.strerror(ctypes.get_errno())}")
"""


@pytest.mark.parametrize("end", ["target", "source"])
@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_an_exchange_cannot_put_a_name_on_the_way_from_either_end(request, user, end):
    """An exchange makes a name at both ends: with ~/.cache/huggingface at either one, ./x would take its
    place on the way to the denied token. Refused with the on-the-way line whichever end it is (one name
    check for both ends, ``NotifyLoop._decide_name``). Twin: bare, the two are exchanged."""
    home = request.getfixturevalue("nobody_home" if user else "home")
    _prepare(home)
    way = home.home / ".cache" / "huggingface"
    way.mkdir(parents=True)
    _as_owner(home, way.parent, way)
    ends = [str(home.work / "x"), str(way)] if end == "target" else [str(way), str(home.work / "x")]
    argv = [sys.executable, "-c", EXCHANGE, *ends]
    sandboxed = home.run([SUPERVISOR, "exec", "--allow", str(home.home), "--", *argv], user=user)
    assert "rc=1 Permission denied" in sandboxed.stdout, (sandboxed.stdout, sandboxed.stderr)
    assert "nono: denied create ~/.cache/huggingface [a name on the way to a denied path" in sandboxed.stderr
    twin = home.run(argv, user=user)
    assert "rc=0" in twin.stdout, (twin.stdout, twin.stderr)


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_a_directory_holding_a_denied_node_is_not_moved_away(request, user):
    """``mv ~/.cache/huggingface ./hf`` would carry the token out from under its rule, into the project:
    refused, the line names the node inside. Twin: bare, it moves and the token is read there."""
    home = request.getfixturevalue("nobody_home" if user else "home")
    _prepare(home)
    way = home.home / ".cache" / "huggingface"
    way.mkdir(parents=True)
    (way / "token").write_text(HF_TOKEN + "\n")
    _as_owner(home, way.parent, way, way / "token")
    script = f"mv ~/.cache/huggingface {home.work}/hf; echo rc=$?; cat {home.work}/hf/token"
    sandboxed = home.run(
        [SUPERVISOR, "exec", "--allow", str(home.home), "--", "bash", "-c", script], user=user
    )
    assert "rc=1" in sandboxed.stdout and HF_TOKEN not in sandboxed.stdout, sandboxed.stdout
    assert "nono: denied delete ~/.cache/huggingface [" in sandboxed.stderr, sandboxed.stderr
    assert f"(inside: {way / 'token'})" in sandboxed.stderr, sandboxed.stderr
    assert (way / "token").exists()
    twin = home.run(["bash", "-c", script], user=user)
    assert "rc=0" in twin.stdout and HF_TOKEN in twin.stdout


def test_a_directory_made_on_the_way_moves_nothing_and_is_made(home):
    """Fidelity: mkdir on the way to the denied token is made as bare (the token's path leads where it
    led), and the token in it stays denied. Twin: bare, both are made."""
    _prepare(home)
    (home.home / ".cache").mkdir()
    script = "mkdir ~/.cache/huggingface; echo rc=$?; echo t > ~/.cache/huggingface/token; echo rc=$?"
    sandboxed = home.run([SUPERVISOR, "exec", "--allow", str(home.home), "--", "bash", "-c", script])
    assert sandboxed.stdout.split() == ["rc=0", "rc=1"], (sandboxed.stdout, sandboxed.stderr)
    assert (home.home / ".cache" / "huggingface").is_dir()
    assert not (home.home / ".cache" / "huggingface" / "token").exists()
    assert "nono: denied create ~/.cache/huggingface/token" in sandboxed.stderr, sandboxed.stderr
    (home.home / ".cache" / "huggingface").rmdir()
    twin = home.run(["bash", "-c", script])
    assert twin.stdout.split() == ["rc=0", "rc=0"]


def test_what_a_command_left_running_is_stopped_too(supervisor):
    """Its main process has ended and the keeper with it; a background job it left behind keeps the
    domain (and its loop): its process group is killed. Twin: bare, the job reads the token."""
    home = supervisor.home
    _prepare(home)
    wait = f"while [ ! -e go ]; do sleep 0.05; done; cat {CASES['stow'][1]} > leaked"
    job = f"({wait}) >/dev/null 2>&1 & echo $! > job; touch started"
    started = supervisor.shell("-c", job)
    assert started.returncode == 0, started.stderr
    pid = int((home.work / "job").read_text())
    _stow_gh(home)
    assert wait_until(lambda: not pid_alive(pid), STOP_SECONDS), "the job left running was not stopped"
    (home.work / "go").touch()
    assert not (home.work / "leaked").exists()
    assert _late(home, "stopped")
    (home.work / "go").unlink()
    (home.work / "dotfiles" / "gh" / "hosts.yml").unlink()
    (home.home / ".config" / "gh").unlink()
    bare = home.run(["bash", "-c", job])
    _stow_gh(home)
    (home.work / "go").touch()
    assert wait_until(lambda: (home.work / "leaked").exists() and TOKEN in (home.work / "leaked").read_text())
    assert bare.returncode == 0


def test_a_command_whose_every_open_is_trapped_is_refused_not_stopped(supervisor):
    """While a denied file has several names (here a hard link of the key outside every grant), a
    command's every open is trapped, so its loop can refuse the moved node instead of being stopped: it
    is guarded, and its read after the stow is refused with the usual line (twin: the bare stow case)."""
    home = supervisor.home
    _prepare(home)
    (home.root / "elsewhere").mkdir()
    os.link(home.key, home.root / "elsewhere" / "key")
    script = WAIT_THEN.format(path=CASES["stow"][1])
    argv = [str(supervisor.shims / "bash"), "-c", script]
    code, out, err = _wait_then_read(
        home, argv, supervisor.env, _stow_gh, lambda: bool(_late(home, "guarded"))
    )
    assert TOKEN not in out + err
    assert code == 0 and "rc=1" in out, (out, err)
    assert "nono: denied read ~/project/dotfiles/gh/hosts.yml [" in err, err
    assert _late(home, "guarded") and not _late(home, "stopped")


def test_a_guarded_loop_continues_nothing(tmp_path):
    """The guard reaches the C fast path and the Python one: an open the baseline grants is CONTINUEd
    before it, and goes to the pinned, decided path after it."""
    import ctypes
    import threading

    import pyseccomp

    from nono_supervisor.linux import notify
    from nono_supervisor.linux.landlock import READ, LandlockPlan, RightsIndex, Rule, handled_fs
    from nono_supervisor.policy.profile import PolicyOptions
    from nono_supervisor.session import Session

    session = Session.create(PolicyOptions(), workdir=str(tmp_path))
    try:
        access = session.state.access_index(session.state.policy)
    finally:
        session.close()
    plan = LandlockPlan(7, handled_fs(7), 0, 0, (Rule(str(tmp_path), READ, "test"),))
    dummy = os.open("/dev/null", os.O_RDONLY)
    loop = notify.NotifyLoop(dummy, RightsIndex(plan), access, lambda *_: None)
    os.close(dummy)
    path = ctypes.create_string_buffer(f"{tmp_path}/f".encode())
    args = (0xFFFFFF9C, ctypes.addressof(path), os.O_RDONLY, 0, 0, 0)
    openat = pyseccomp.resolve_syscall(pyseccomp.Arch.NATIVE, "openat")
    tid = threading.get_native_id()
    assert loop._native.fast(openat, tid, args)
    assert loop._continue(f"{tmp_path}/f", READ)
    loop.guard()
    assert not loop._native.fast(openat, tid, args)
    assert loop._continue(f"{tmp_path}/f", READ) is None


def test_without_the_seccomp_layer_a_running_command_is_still_stopped(home):
    """--no-trap: Landlock alone, no loop; the watch is the supervisor's own, and the keeper still kills."""
    from conftest import start_supervisor

    sup = start_supervisor(home, "--no-trap")
    try:
        _prepare(home)
        script = WAIT_THEN.format(path=CASES["stow"][1])
        code, out, err = _wait_then_read(
            home, [str(sup.shims / "bash"), "-c", script], sup.env, _stow_gh, lambda: False
        )
    finally:
        sup.stop()
    assert TOKEN not in out + err
    assert code == 128 + 9 and "nono: stopped: ~/.config/gh [" in err, (out, err)


def test_without_the_seccomp_layer_the_agent_is_stopped_and_the_human_told(home):
    """--no-trap: the agent has no loop to guard; it is stopped (the session ends) with a line."""
    _prepare(home)
    (home.work / "agent.py").write_text(AGENT)
    argv = [SUPERVISOR, "run", "--no-trap", "--no-interpose", "--agent", "none", "--"]
    argv += [sys.executable, "agent.py", CASES["stow"][1]]
    code, out, err = _wait_then_read(home, argv, home.env, _stow_gh, lambda: bool(_late(home, "stopped")))
    assert TOKEN not in out + err and "read:" not in out
    assert code == 128 + 9 and "nono-supervisor: the agent was stopped: ~/.config/gh [" in err, err


SPELLINGS = {
    "real-parent": "ln -s {work}/x ~/real-cache/huggingface",
    "own-link": "ln -s ~/real-cache {work}/mine && ln -s {work}/x {work}/mine/huggingface",
}


@pytest.mark.parametrize("spelling", SPELLINGS)
def test_a_name_on_the_way_is_refused_under_any_spelling(home, spelling):
    """~/.cache is itself a link (to ~/real-cache): the way to ~/.cache/huggingface/token is then
    ~/real-cache/huggingface, and a symlink made there directly, or through a link of the command's own
    to it, is refused the same (there by the kernel: ~/real-cache has no rule of its own, and a refused
    symlink is not asked again, so it has no line). Twin: bare, it is made."""
    _prepare(home)
    (home.home / "real-cache").mkdir()
    (home.home / ".cache").symlink_to(home.home / "real-cache")
    script = SPELLINGS[spelling].format(work=home.work) + "; echo rc=$?"
    sandboxed = home.run([SUPERVISOR, "exec", "--allow", str(home.home), "--", "bash", "-c", script])
    assert "rc=1" in sandboxed.stdout, (sandboxed.stdout, sandboxed.stderr)
    assert not (home.home / "real-cache" / "huggingface").is_symlink()
    if spelling == "real-parent":  # through its own link the lexical fast path CONTINUEs: Landlock refuses
        line = "nono: denied create ~/real-cache/huggingface [a name on the way to a denied path"
        assert line in sandboxed.stderr, sandboxed.stderr
    (home.work / "mine").unlink(missing_ok=True)
    twin = home.run(["bash", "-c", script])
    assert "rc=0" in twin.stdout and (home.home / "real-cache" / "huggingface").is_symlink()


# Taking away a name on the way to a stowed token (~/.config/gh -> ./dotfiles/gh): before the fix Landlock
# and the checker let each through, and the next command read the token. {work} is the project.
TAKE_AWAY = {
    "rm-link": "rm ~/.config/gh",
    "mv-link": "mv ~/.config/gh ~/.config/gh.old",
    "mv-parent": "mv ~/.config ~/.config.old",
    "rm-r-parent": "rm -rf ~/.config",
    "rename-over": "ln -s {work}/x {work}/c && mv -T {work}/c ~/.config/gh",
    "exchange": f"{sys.executable} -c '{EXCHANGE}' {{work}}/x ~/.config/gh | grep -q ^rc=0",
    "exchange-source": f"{sys.executable} -c '{EXCHANGE}' ~/.config/gh {{work}}/x | grep -q ^rc=0",
    "after-chdir": "cd ~/.config && rm gh",
    "link-to-parent": "ln -s ~/.config {work}/c && rm {work}/c/gh",
}
READ_TOKEN = "cat ~/.config/gh/hosts.yml dotfiles/gh/hosts.yml"


def _exec(home: Home, user: bool, script: str, *flags: str) -> subprocess.CompletedProcess:
    argv = [SUPERVISOR, "exec", *flags, "--allow", str(home.home), "--", "bash", "-c", script]
    return home.run(argv, user=user)


def _stowed(home: Home) -> None:
    _prepare(home)
    _stow_gh(home)
    (home.work / "x" / "hosts.yml").write_text("github.com:\n    oauth_token: the command's own\n")
    _as_owner(home, home.work / "x" / "hosts.yml")


@pytest.mark.parametrize("how", TAKE_AWAY)
@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_a_command_cannot_take_away_a_stowed_name_on_the_way_to_a_denied_node(request, user, how):
    """--allow ~ with ~/.config/gh a link into the project: no removal, move, rename over or exchange of
    the link, or of ~/.config that holds it, under any spelling (a chdir, a link of the command's own to
    the parent) takes the name away, so the token stays unreadable in the command and in the next one.
    Refused with the on-the-way line where the checker sees it (through the command's own link the
    lexical fast path CONTINUEs and Landlock refuses). Twin: bare, it is taken away and the next sandboxed
    command reads the token."""
    home = request.getfixturevalue("nobody_home" if user else "home")
    _stowed(home)
    script = TAKE_AWAY[how].replace("{work}", str(home.work)) + f"; echo rc=$?; {READ_TOKEN}"
    sandboxed = _exec(home, user, script)
    assert "rc=0" not in sandboxed.stdout and TOKEN not in sandboxed.stdout, sandboxed.stdout
    assert (home.home / ".config" / "gh").is_symlink() and (home.work / "dotfiles" / "gh").is_dir()
    if how != "link-to-parent":
        lines = [
            line for line in sandboxed.stderr.splitlines() if "[a name on the way to a denied path: " in line
        ]
        assert lines and "to allow:" not in lines[0], sandboxed.stderr  # no flag lifts it
    later = _exec(home, user, READ_TOKEN)
    assert TOKEN not in later.stdout and "nono: denied read ~/project/dotfiles/gh/hosts.yml" in later.stderr
    (home.work / "c").unlink(missing_ok=True)
    twin = home.run(["bash", "-c", script], user=user)
    assert "rc=0" in twin.stdout, (twin.stdout, twin.stderr)
    assert TOKEN in _exec(home, user, READ_TOKEN).stdout  # the deny named nothing any more


def _stow_own(home: Home) -> list[str]:
    """A deny of the user's own (``--deny ~/stow/tok``) whose name is a link into the project, in a
    directory nothing else the policy names lies in: before the fix, its rule there had every right over
    names (~/.config is carved anyway by the security list's other entries in it). The flags to pass."""
    vault = home.work / "vault"
    vault.mkdir()
    (vault / "token").write_text(TOKEN + "\n")
    (home.home / "stow").mkdir()
    (home.home / "stow" / "tok").symlink_to(vault)
    _as_owner(home, vault, vault / "token", home.home / "stow", home.home / "stow" / "tok")
    return ["--deny", str(home.home / "stow" / "tok")]


@pytest.mark.parametrize("trap", [True, False], ids=["trapped", "no-trap"])
@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_landlock_gives_no_right_to_take_away_a_stowed_name(request, user, trap):
    """The plan: the directory holding a link on the way to a denied node keeps no right over names, so
    neither the fast path (it CONTINUEd the rm, and Landlock let it through) nor Landlock alone
    (--no-trap: rm and mv fail with EACCES) takes it away; trapped, the checker says why. The token stays
    denied to the next command. Twin: bare, both are taken away and the next command reads it."""
    home = request.getfixturevalue("nobody_home" if user else "home")
    _prepare(home)
    flags = _stow_own(home) + ([] if trap else ["--no-trap"])
    script = "rm ~/stow/tok; echo rc=$?; mv ~/stow/tok ~/stow/old; echo rc=$?; cat vault/token"
    sandboxed = _exec(home, user, script, *flags)
    assert sandboxed.stdout.split() == ["rc=1", "rc=1"], (sandboxed.stdout, sandboxed.stderr)
    assert (home.home / "stow" / "tok").is_symlink()
    if trap:
        assert "nono: denied delete ~/stow/tok [a name on the way to a denied path: " in sandboxed.stderr
    assert TOKEN not in _exec(home, user, "cat vault/token", *flags).stdout
    twin = home.run(["bash", "-c", script], user=user)
    assert twin.stdout.split()[:2] == ["rc=0", "rc=1"], (twin.stdout, twin.stderr)  # the mv finds it gone
    assert TOKEN in _exec(home, user, "cat vault/token", *flags).stdout


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_a_hard_link_of_a_stowed_name_takes_nothing_away(request, user):
    """A hard link of the link is a second name for it: the first stays, and the token stays denied
    through both. Made as bare (twin: bare, the same link is made)."""
    home = request.getfixturevalue("nobody_home" if user else "home")
    _stowed(home)
    script = f"ln ~/.config/gh {home.work}/gh2; echo rc=$?; cat {home.work}/gh2/hosts.yml"
    sandboxed = _exec(home, user, script)
    assert "rc=0" in sandboxed.stdout and TOKEN not in sandboxed.stdout, (sandboxed.stdout, sandboxed.stderr)
    assert (home.work / "gh2").is_symlink() and (home.home / ".config" / "gh").is_symlink()
    assert TOKEN not in _exec(home, user, READ_TOKEN).stdout
    (home.work / "gh2").unlink()
    twin = home.run(["bash", "-c", script], user=user)
    assert "rc=0" in twin.stdout and TOKEN in twin.stdout


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_ordinary_work_beside_a_stowed_name_goes_on_through_the_route(request, user):
    """Fidelity: ~/.config is carved (its names go through the supervisor), and writing, reading and
    removing ~/.config/other/x there works as bare. Twin: bare, the same output."""
    from conftest import start_supervisor

    home = request.getfixturevalue("nobody_home" if user else "home")
    _stowed(home)
    script = (
        "mkdir -p ~/.config/other && echo made > ~/.config/other/x && cat ~/.config/other/x"
        " && mv ~/.config/other/x ~/.config/other/y && rm ~/.config/other/y && rmdir ~/.config/other"
        " && ln -s x ~/.config/z && rm ~/.config/z; echo rc=$?"
    )
    sup = start_supervisor(home, "--allow", str(home.home))
    try:
        routed = sup.shell("-c", script)
    finally:
        sup.stop()
    twin = home.run(["bash", "-c", script], user=user)
    assert routed.stdout == "made\nrc=0\n" and "nono:" not in routed.stderr, (routed.stdout, routed.stderr)
    assert twin.stdout == "made\nrc=0\n"


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_a_stowed_runs_later_file_is_not_replaced_by_taking_its_name_away(request, user):
    """Invariant 10 through a link: ~/.gitconfig is stowed (a link to ./dotfiles/gitconfig). Removing the
    link and writing a new ~/.gitconfig would hand git's pager to the command: the removal is refused
    with the on-the-way line and the file stays the human's. Twin: bare, it is replaced."""
    home = request.getfixturevalue("nobody_home" if user else "home")
    _prepare(home)
    real = home.work / "dotfiles" / "gitconfig"
    real.write_text("[user]\n\tname = Human\n")
    (home.home / ".gitconfig").symlink_to(real)
    _as_owner(home, real, home.home / ".gitconfig")
    script = "rm ~/.gitconfig && printf '[core]\\n\\tpager = evil\\n' > ~/.gitconfig; echo rc=$?"
    sandboxed = _exec(home, user, script)
    assert "rc=1" in sandboxed.stdout, (sandboxed.stdout, sandboxed.stderr)
    line = "nono: denied delete ~/.gitconfig [a name on the way to a denied path: ~/.gitconfig (runs-later)]"
    assert line in sandboxed.stderr, sandboxed.stderr
    assert (home.home / ".gitconfig").is_symlink() and "evil" not in real.read_text()
    twin = home.run(["bash", "-c", script], user=user)
    assert "rc=0" in twin.stdout and "evil" in (home.home / ".gitconfig").read_text()


# ~/.config/gh is stowed through a link of its own (stow's relative ../src/dotfiles/gh, ~/src/dotfiles a
# link to the project's dotfiles): the spelling passes one link, its target another. Before the fix only
# the first was held, and taking the second away (or ~/src that holds it) made the deny name nothing: the
# next command read the token.
THROUGH = {
    "rm": "rm ~/src/dotfiles",
    "mv": "mv ~/src/dotfiles ~/src/dotfiles.old",
    "rename-over": "ln -s {work}/x ~/src/d2 && mv -T ~/src/d2 ~/src/dotfiles",
    "mv-parent": "mv ~/src ~/src.old",
}


def _stowed_through_a_link(home: Home) -> None:
    _prepare(home)
    (home.home / "src").mkdir()
    (home.home / "src" / "dotfiles").symlink_to(home.work / "dotfiles")
    config = home.home / ".config"
    config.mkdir(exist_ok=True)
    (config / "gh").symlink_to("../src/dotfiles/gh")
    token = home.work / "dotfiles" / "gh" / "hosts.yml"
    token.write_text(f"github.com:\n    oauth_token: {TOKEN}\n")
    _as_owner(home, home.home / "src", home.home / "src" / "dotfiles", config, config / "gh", token)


@pytest.mark.parametrize("trap", [True, False], ids=["trapped", "no-trap"])
@pytest.mark.parametrize("how", THROUGH)
@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_a_command_cannot_take_away_a_link_the_stowed_link_leads_through(request, user, how, trap):
    """--allow ~ with ~/.config/gh -> ../src/dotfiles/gh and ~/src/dotfiles -> ./dotfiles: removing, moving
    or renaming over ~/src/dotfiles, or moving ~/src, is refused (trapped: the on-the-way line; --no-trap:
    Landlock gives the directories holding it no right over names), and the token stays denied to the next
    command. Twin: bare, the name is taken away and the next sandboxed command reads the token."""
    home = request.getfixturevalue("nobody_home" if user else "home")
    _stowed_through_a_link(home)
    flags = [] if trap else ["--no-trap"]
    script = THROUGH[how].replace("{work}", str(home.work)) + f"; echo rc=$?; {READ_TOKEN}"
    sandboxed = _exec(home, user, script, *flags)
    assert "rc=0" not in sandboxed.stdout and TOKEN not in sandboxed.stdout, sandboxed.stdout
    assert os.readlink(home.home / "src" / "dotfiles") == str(home.work / "dotfiles")
    if trap:
        assert "[a name on the way to a denied path: ~/.config/gh " in sandboxed.stderr, sandboxed.stderr
    later = _exec(home, user, READ_TOKEN)
    assert TOKEN not in later.stdout and "nono: denied read ~/project/dotfiles/gh/hosts.yml" in later.stderr
    twin = home.run(["bash", "-c", script], user=user)
    assert "rc=0" in twin.stdout, (twin.stdout, twin.stderr)
    assert TOKEN in _exec(home, user, READ_TOKEN).stdout  # the deny named nothing any more


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_a_runs_later_file_stowed_through_a_link_is_not_replaced_by_taking_that_link_away(request, user):
    """Invariant 10 through two links: ~/.gitconfig -> src/dotfiles/gitconfig with ~/src/dotfiles ->
    ./dotfiles. Removing ~/src/dotfiles and making a directory of the command's own there would hand git's
    pager to the command: the removal is refused with the on-the-way line and git's config stays the
    human's. Twin: bare, ~/.gitconfig then leads to the command's file."""
    home = request.getfixturevalue("nobody_home" if user else "home")
    _prepare(home)
    real = home.work / "dotfiles" / "gitconfig"
    real.write_text("[user]\n\tname = Human\n")
    (home.home / "src").mkdir()
    (home.home / "src" / "dotfiles").symlink_to(home.work / "dotfiles")
    (home.home / ".gitconfig").symlink_to("src/dotfiles/gitconfig")
    _as_owner(home, real, home.home / "src", home.home / "src" / "dotfiles", home.home / ".gitconfig")
    script = (
        "rm ~/src/dotfiles && mkdir ~/src/dotfiles"
        " && printf '[core]\\n\\tpager = evil\\n' > ~/src/dotfiles/gitconfig; echo rc=$?"
    )
    sandboxed = _exec(home, user, script)
    assert "rc=1" in sandboxed.stdout, (sandboxed.stdout, sandboxed.stderr)
    line = (
        "nono: denied delete ~/src/dotfiles [a name on the way to a denied path: ~/.gitconfig (runs-later)]"
    )
    assert line in sandboxed.stderr, sandboxed.stderr
    assert "evil" not in (home.home / ".gitconfig").read_text()
    twin = home.run(["bash", "-c", script], user=user)
    assert "rc=0" in twin.stdout and "evil" in (home.home / ".gitconfig").read_text()


ESCAPED = "e\x1b]0;t\x07e"  # a directory of the project named with a terminal escape (OSC 0: the title)


def _link_hf_cache_to_escaped(home: Home) -> None:
    cache = home.home / ".cache"
    cache.mkdir(exist_ok=True)
    (cache / "huggingface").symlink_to(home.work / ESCAPED)
    (home.work / ESCAPED / "token").write_text(HF_TOKEN + "\n")
    _as_owner(home, cache, cache / "huggingface", home.work / ESCAPED / "token")


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_the_stop_line_shows_where_the_node_is_now_escaped(request, user):
    """The late-deny line names where the denied node now is, any name of the project: a terminal escape
    in it is printed as text (DESIGN invariant 9). Twin: bare, the command reads the token."""
    sup = request.getfixturevalue("nobody_supervisor" if user else "supervisor")
    home = sup.home
    _prepare(home)
    (home.work / ESCAPED).mkdir()
    _as_owner(home, home.work / ESCAPED)
    script = WAIT_THEN.format(path=f"'{ESCAPED}/token'")
    code, out, err = _wait_then_read(
        home, [str(sup.shims / "bash"), "-c", script], sup.env, _link_hf_cache_to_escaped, lambda: False
    )
    assert HF_TOKEN not in out + err and code == 128 + 9, (code, out, err)
    assert "nono: stopped: ~/.cache/huggingface/token [" in err, err
    assert "\x1b" not in err and "\x07" not in err and "e\\x1b]0;t\\x07e" in err, repr(err)
    twin = home.run(["bash", "-c", f"cat '{ESCAPED}/token'"], user=user)
    assert HF_TOKEN in twin.stdout, (twin.stdout, twin.stderr)
