"""Terminals (DESIGN.md invariant 11): a command reaches the terminal it was handed and the ptys it made,
never another /dev/pts/N: the agent's, another session's (a second tmux window where a sudo password is
typed), a sibling command's, or a closed terminal's number given to another one.

The "other terminal" is a pty this test opens and holds the master of; as uid 65534 its node is given to
that uid, as a user's own terminal is. Every refusal has its bare twin: the same open, unsandboxed, reaches
that terminal (and what it wrote arrives on the master).
"""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
from contextlib import contextmanager

import pexpect
import pytest

from conftest import NOBODY, SUPERVISOR, Home, as_nobody, syscall_numbers, wait_until

USERS = pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])

# Opens argv[1] by one of several routes and writes a fake prompt into it.
ATTACK = (
    syscall_numbers("openat")
    + r"""
import ctypes, errno, os, sys
path, how = sys.argv[1], sys.argv[2]
flags = os.O_RDWR | os.O_NOCTTY
try:
    if how == "name":
        fd = os.open(path, flags)
    elif how == "symlink":  # a link planted in the workdir
        os.symlink(path, "innocent-file")
        fd = os.open("innocent-file", flags)
    elif how == "o_path":  # Landlock grants no right to O_PATH: any node can be located so
        fd = os.open(f"/proc/self/fd/{os.open(path, os.O_PATH)}", flags)
    else:  # a raw syscall, as a static binary makes it: no library in the way
        libc = ctypes.CDLL(None, use_errno=True)
        how_flags = {"raw": flags, "raw_rdwr": os.O_RDWR, "raw_read": os.O_RDONLY}[how]
        fd = libc.syscall(NR["openat"], -100, path.encode(), how_flags, 0)
        if fd < 0:
            raise OSError(ctypes.get_errno(), "openat")
    if how != "raw_read":  # a reader takes what the human types next; a writer prompts for it
        os.write(fd, b"Password: (a fake prompt)\n")
    print("opened")
except OSError as e:
    print("refused", errno.errorcode[e.errno])
"""
)
# raw: O_RDWR|O_NOCTTY, a terminal's open, trapped (seccomp.TRAPPED_TERMINAL_OPEN); raw_rdwr (and
# raw_read, below): left to Landlock, whose bare EACCES no library asks again
ROUTES = ("name", "symlink", "o_path", "raw", "raw_rdwr")


@contextmanager
def other_terminal(user: bool):
    """A pty standing for another terminal of the same user: (its /dev/pts name, its master)."""
    master, slave = os.openpty()
    name = os.ttyname(slave)
    if user:
        os.chown(name, NOBODY, -1)  # the user's own terminal, as login and terminal emulators make it
    try:
        yield name, master
    finally:
        os.close(slave)
        os.close(master)


def _written(master: int) -> bytes:
    """What reached the other terminal (a tty hands it over from a worker: waited for a moment)."""
    ready, _, _ = select.select([master], [], [], 0.5)
    return os.read(master, 4096) if ready else b""


def _on_a_terminal(home: Home, argv: list[str], user: bool, timeout: int = 60) -> tuple[int, str]:
    """``argv`` with a pty as its terminal: (exit status, what it printed there). As uid 65534 the pty is
    given to that uid first, as login does with a user's terminal."""
    if user:
        argv = ["/bin/sh", "-c", f'chown {NOBODY} "$(tty)" && exec "$@"', "sh", *as_nobody(argv)]
    child = pexpect.spawn(
        argv[0], argv[1:], cwd=str(home.work), env=home.env, encoding="utf-8", timeout=timeout
    )
    child.expect(pexpect.EOF)
    child.close()
    return child.exitstatus, child.before


@USERS
@pytest.mark.parametrize("how", ROUTES)
def test_a_command_cannot_open_another_terminal(request, user, how):
    home: Home = request.getfixturevalue("nobody_home" if user else "home")
    attack = [sys.executable, "-c", ATTACK]
    with other_terminal(user) as (name, master):
        bare = home.run([*attack, name, how], user=user)
        assert bare.stdout == "opened\n", bare.stderr  # the twin: bare, the other terminal is reachable
        assert b"fake prompt" in _written(master)
        (home.work / "innocent-file").unlink(missing_ok=True)
        boxed = home.run([SUPERVISOR, "exec", "--prompt", "never", "--", *attack, name, how], user=user)
        assert boxed.stdout == "refused EACCES\n", boxed.stdout + boxed.stderr
        assert _written(master) == b""
    if how != "raw_rdwr":
        line = f"nono: denied read {name} [a terminal it was not given]; never grantable"
        assert line in boxed.stderr, boxed.stderr


AGENT = r"""
import os, pty, sys
for label, path in (("own", os.ttyname(0)), ("other", sys.argv[1]), ("supervisor's", sys.argv[2])):
    try:
        fd = os.open(path, os.O_RDWR | os.O_NOCTTY)
        os.write(fd, b"Password: (a fake prompt)\n")
        print(label, "opened")
    except OSError as e:
        print(label, "refused", e.errno)
master, slave = pty.openpty()
os.write(slave, b"new\n")
got = b""
while not got.endswith(b"\n"):
    got += os.read(master, 16)
print("made", got.strip().decode())
"""


@USERS
def test_the_agent_keeps_its_own_pty_and_no_other(request, user):
    """Under ``run`` on a real terminal the agent's own reads are trapped: it reopens its pty by name and
    makes new ones; another terminal of the user, and the terminal the supervisor runs on (the human's),
    are refused and reported."""
    home: Home = request.getfixturevalue("nobody_home" if user else "home")
    on_its_terminal = ["/bin/sh", "-c", 'exec "$@" "$(tty)"', "sh"]  # the last argument: that terminal
    agent = [sys.executable, "-c", AGENT]
    with other_terminal(user) as (name, master):
        status, out = _on_a_terminal(home, [*on_its_terminal, *agent, name], user)
        assert status == 0 and "own opened" in out and "other opened" in out, out  # the twin, bare
        assert "supervisor's opened" in out, out  # bare, the same terminal as its own
        assert b"fake prompt" in _written(master)
        run = [SUPERVISOR, "run", "--no-interpose", "--", *agent, name]
        status, out = _on_a_terminal(home, [*on_its_terminal, *run], user)
        assert status == 0, out
        assert "own opened" in out and "other refused 13" in out and "made new" in out, out
        assert "supervisor's refused 13" in out, out
        assert f"nono: denied read {name} [a terminal it was not given]" in out, out
        assert _written(master) == b""


OWN_PTYS = (
    syscall_numbers("openat")
    + r"""
import ctypes, fcntl, os, pty, termios
libc = ctypes.CDLL(None, use_errno=True)
libc.ptsname.restype = ctypes.c_char_p
def line(master):  # what reached the master, to the end of the line (a tty delivers it when it can)
    got = b""
    while not got.endswith(b"\n"):
        got += os.read(master, 64)
    return got.decode().strip()
# posix_openpt, grantpt, unlockpt, ptsname and an open by name (Go's creack/pty, expect, APUE's pty_fork)
master = libc.posix_openpt(os.O_RDWR | os.O_NOCTTY)
assert libc.grantpt(master) == 0 and libc.unlockpt(master) == 0
name = libc.ptsname(master).decode()
slave = os.open(name, os.O_RDWR | os.O_NOCTTY)
os.write(slave, b"by-name\n")
print(line(master), os.ttyname(slave) == name)
# a child holding the inherited master opens the node after setsid and takes it as its terminal
pid = os.fork()
if pid == 0:
    os.setsid()
    own = os.open(name, os.O_RDWR)
    fcntl.ioctl(own, termios.TIOCSCTTY, 0)
    os.write(os.open("/dev/tty", os.O_WRONLY), b"child-tty\n")
    os._exit(0)
os.waitpid(pid, 0)
print(line(master))
# pty.fork (forkpty): the child's stdio reopened by every name a shell uses
pid, fd = pty.fork()
if pid == 0:
    names = "echo std >/dev/stdout; echo proc >/proc/self/fd/1; echo tty >/dev/tty; echo name >$(tty)"
    os.execvp("sh", ["sh", "-c", names])
out = b""
while True:
    try:
        chunk = os.read(fd, 1024)
    except OSError:
        break
    if not chunk:
        break
    out += chunk
print(out.decode().replace("\r\n", " ").strip())
# a static binary (musl's openpty, Go's creack/pty): raw syscalls, the node opened by name O_RDWR|O_NOCTTY
def raw_open(path):
    fd = libc.syscall(NR["openat"], -100, path.encode(), os.O_RDWR | os.O_NOCTTY, 0)
    assert fd >= 0, os.strerror(ctypes.get_errno())
    return fd
master = raw_open("/dev/ptmx")
fcntl.ioctl(master, 0x40045431, bytes(4))  # TIOCSPTLCK to 0: unlockpt
index = int.from_bytes(fcntl.ioctl(master, 0x80045430, bytes(4)), "little")  # TIOCGPTN: ptsname
os.write(raw_open(f"/dev/pts/{index}"), b"static\n")
print(line(master))
"""
)

TMUX = r"""
tmux -L inside new-session -d -s s 'exec cat' || exit 3
tmux -L inside send-keys -t s 'typed-into-a-pane' Enter
for i in $(seq 100); do  # the typed line, then cat's copy of it
    [ "$(tmux -L inside capture-pane -p -t s | grep -c typed-into-a-pane)" = 2 ] && break; sleep 0.1
done
tmux -L inside capture-pane -p -t s | grep -c typed-into-a-pane
tmux -L inside kill-server
"""


@USERS
def test_ptys_a_command_makes_work_as_bare(request, user):
    """Fidelity: every way of making a pty and opening its terminal end, and tmux, give what they give
    bare, with no denial line."""
    home: Home = request.getfixturevalue("nobody_home" if user else "home")
    tmux_dir = home.root / "tmux-bare"  # the twin's TMUX_TMPDIR (commands get the session's)
    tmux_dir.mkdir(mode=0o700)
    if user:
        os.chown(tmux_dir, NOBODY, NOBODY)
    # SHELL: tmux runs a pane's command with it, else with the passwd shell (uid 65534's is nologin)
    env = {**home.env, "TMUX_TMPDIR": str(tmux_dir), "SHELL": "/bin/sh"}
    programs = [[sys.executable, "-c", OWN_PTYS], ["bash", "-c", TMUX]]
    expected = ["by-name True\nchild-tty\nstd proc tty name\nstatic\n", "2\n"]
    for argv, wanted in zip(programs, expected, strict=True):
        bare = home.run(argv, user=user, env=env)
        assert bare.stdout == wanted, bare.stdout + bare.stderr  # the twin
        boxed = home.run([SUPERVISOR, "exec", "--prompt", "never", "--", *argv], user=user, env=env)
        assert boxed.stdout == wanted, boxed.stdout + boxed.stderr
        assert "nono: denied" not in boxed.stderr, boxed.stderr


EXPECT = r"""
spawn sh -c {read line; echo "got:$line"; echo name >$(tty)}
send "typed-by-expect\r"
expect "got:typed-by-expect"
expect "name"
puts "\nexpect-ok"
"""


@USERS
def test_expect_and_a_listing_of_dev_pts_work_as_bare(request, user):
    """expect opens its pty's node by name in the child (without O_NOCTTY, then TIOCSCTTY), and /dev/pts
    is listed (names only: security.toml's pattern naming exactly it), with no denial line."""
    home: Home = request.getfixturevalue("nobody_home" if user else "home")
    programs = [["ls", "/dev/pts"]]
    if shutil.which("expect"):
        programs.append(["expect", "-c", EXPECT])
    for argv in programs:
        bare = home.run(argv, user=user)
        assert bare.returncode == 0, bare.stderr  # the twin
        boxed = home.run([SUPERVISOR, "exec", "--prompt", "never", "--", *argv], user=user)
        assert boxed.returncode == 0 and "nono: denied" not in boxed.stderr, boxed.stdout + boxed.stderr
        assert ("ptmx" in boxed.stdout) if argv[0] == "ls" else ("expect-ok" in boxed.stdout), boxed.stdout


REOPEN = (
    "echo std >/dev/stdout; echo proc >/proc/self/fd/1; echo tty >/dev/tty; echo name >$(tty);"
    " script -qec 'echo in-script >/dev/stdout; echo again >$(tty)' /dev/null"
)


@USERS
def test_a_command_reopens_the_terminal_it_was_handed_as_bare(request, user):
    """On a terminal the command is handed a pty of the supervisor's: its stdio reopened by /dev/stdout,
    /proc/self/fd/1, /dev/tty and its name works as bare, and so inside ``script`` on a pty it made."""
    home: Home = request.getfixturevalue("nobody_home" if user else "home")
    status, bare = _on_a_terminal(home, ["bash", "-c", REOPEN], user)
    words = ["std", "proc", "tty", "name", "in-script", "again"]
    assert status == 0 and bare.split() == words, bare  # the twin
    status, out = _on_a_terminal(
        home, [SUPERVISOR, "exec", "--prompt", "never", "--", "bash", "-c", REOPEN], user
    )
    assert status == 0 and out.split() == words, out


HOLDER = r"""
import os, pty, time
master, slave = pty.openpty()
name = os.ttyname(slave)
os.close(slave)
open("sibling-pty", "w").write(name)
deadline = time.time() + 30
while not os.path.exists("done") and time.time() < deadline:
    time.sleep(0.05)
"""


@USERS
def test_a_sibling_commands_pty_is_not_anothers(request, user):
    """Two commands of one session: the pty the first made (and still holds) is refused to the second."""
    home: Home = request.getfixturevalue("nobody_home" if user else "home")
    supervisor = request.getfixturevalue("nobody_supervisor" if user else "supervisor")
    (home.work / "holder.py").write_text(HOLDER)
    (home.work / "attack.py").write_text(ATTACK)
    first = supervisor.shell("-c", f"{sys.executable} holder.py >/dev/null 2>&1 </dev/null &")
    try:
        assert first.returncode == 0, first.stderr
        assert wait_until(lambda: (home.work / "sibling-pty").exists(), 20)
        name = (home.work / "sibling-pty").read_text()
        second = supervisor.shell("-c", f"{sys.executable} attack.py {name} name")
        assert second.stdout == "refused EACCES\n", second.stdout + second.stderr
        assert f"nono: denied read {name} [a terminal it was not given]" in second.stderr, second.stderr
        bare = home.run([sys.executable, "attack.py", name, "name"], user=user)
        assert bare.stdout == "opened\n", bare.stderr  # the twin: bare, the sibling's pty is reachable
    finally:
        (home.work / "done").write_text("")


LEFTOVER = r"""
import os, sys, time
null = os.open("/dev/null", os.O_RDWR)
for fd in (0, 1, 2):
    os.dup2(null, fd)  # holds nothing of the terminal it was handed: its number can go to another one
open("ready", "w").close()
while not os.path.exists("go"):
    time.sleep(0.05)
try:
    fd = os.open(sys.argv[1], os.O_RDWR | os.O_NOCTTY)
    os.write(fd, b"Password: (a fake prompt)\n")
    result = "opened"
except OSError as e:
    result = f"refused {e.errno}"
open("left.txt", "w").write(result)
"""


def _reopened_after_reuse(home: Home, shell: list[str], env: dict[str, str], user: bool) -> tuple[str, bytes]:
    """``shell -c`` starts a leftover on a terminal it is handed, which then lets go of it; the terminal
    is closed and its number given to a new pty (another session's); the leftover opens that number by
    name: (what it got, what reached the new pty)."""
    for stale in ("ready", "go", "left.txt"):
        (home.work / stale).unlink(missing_ok=True)
    master, slave = os.openpty()
    handed = os.ttyname(slave)
    if user:
        os.chown(handed, NOBODY, -1)
    try:
        started = home.run(
            [*shell, f"{sys.executable} leftover.py {handed} &"],
            user=user,
            env=env,
            capture_output=False,
            stdin=slave,
            stdout=slave,
            stderr=slave,
        )
        assert started.returncode == 0
        assert wait_until(lambda: (home.work / "ready").exists(), 20)
    finally:
        os.close(slave)
        os.close(master)
    held = []
    try:
        for _ in range(64):  # the kernel gives the lowest free number: soon the handed one's
            held.append(os.openpty())
            if os.ttyname(held[-1][1]) == handed:
                break
        else:
            pytest.skip(f"{handed} was not given to a new pty here (another process holds it)")
        if user:
            os.chown(handed, NOBODY, -1)
        (home.work / "go").write_text("")
        left = home.work / "left.txt"
        assert wait_until(lambda: left.exists() and left.read_text(), 20)
        return left.read_text(), _written(held[-1][0])
    finally:
        for pair in held:
            os.close(pair[0])
            os.close(pair[1])


@USERS
def test_a_handed_terminals_number_given_to_another_terminal_is_not_reopened(request, user):
    """The index reuse: a command handed a terminal leaves a process that lets go of it; the terminal is
    closed and its number goes to the next pty opened (another session's); the leftover opens that number
    by name. Landlock's rule is on the old node, so the kernel refuses; the supervisor, asked again, must
    not take the handed terminal's name for a grant of whatever holds that number now."""
    home: Home = request.getfixturevalue("nobody_home" if user else "home")
    supervisor = request.getfixturevalue("nobody_supervisor" if user else "supervisor")
    (home.work / "leftover.py").write_text(LEFTOVER)
    got, written = _reopened_after_reuse(home, ["bash", "-c"], home.env, user)
    assert got == "opened" and b"fake prompt" in written  # the twin: bare, the new terminal is reached
    got, written = _reopened_after_reuse(home, [str(supervisor.shims / "bash"), "-c"], supervisor.env, user)
    assert got == "refused 13" and written == b""
    assert any(r.get("decision") == "deny" and "not given" in r.get("rule", "") for r in home.audit()), (
        home.audit()
    )


RACE = r"""
import os, sys, threading, pty
other = sys.argv[1]
master, slave = pty.openpty()  # its own pty: a master the supervisor finds in its descriptors
victim_path = os.open(other, os.O_PATH)
number = 100
stop = False
def flip():
    while not stop:
        os.dup2(victim_path, number)
        os.dup2(master, number)
flipper = threading.Thread(target=flip)
flipper.start()
reached = 0
for _ in range(300):
    try:
        os.close(os.open(other, os.O_RDWR | os.O_NOCTTY))
        reached += 1
    except OSError:
        pass
stop = True
flipper.join()
print("reached", reached)
"""


@USERS
def test_a_descriptor_swapped_under_the_check_never_opens_another_terminal(request, user):
    """A thread swaps one descriptor number between its own master and an O_PATH fd of the other terminal
    while another opens that terminal by name: the supervisor decides on its copy of what it found, and
    an O_PATH fd holds nothing."""
    home: Home = request.getfixturevalue("nobody_home" if user else "home")
    race = [sys.executable, "-c", RACE]
    with other_terminal(user) as (name, _master):
        bare = home.run([*race, name], user=user)
        assert bare.stdout == "reached 300\n", bare.stderr  # the twin
        boxed = home.run([SUPERVISOR, "exec", "--prompt", "never", "--", *race, name], user=user)
        assert boxed.stdout == "reached 0\n", boxed.stdout + boxed.stderr


@USERS
@pytest.mark.parametrize(
    "grant",
    [["--allow", "/dev"], ["--read", "/dev/pts"], ["--allow-file", "TERMINAL"]],
    ids=["allow-dev", "read-dev-pts", "allow-file-terminal"],
)
def test_no_grant_reaches_another_terminal(request, user, grant):
    """Not even an explicit grant (or a session answer, which becomes one) of /dev, /dev/pts or the
    terminal's own name: Landlock gets no rule into /dev/pts but the handed terminal's node, and the
    supervisor opens no pty the command does not hold."""
    home: Home = request.getfixturevalue("nobody_home" if user else "home")
    attack = [sys.executable, "-c", ATTACK]
    with other_terminal(user) as (name, master):
        flags = [name if part == "TERMINAL" else part for part in grant]
        for how in ("raw_read", "raw_rdwr", "name"):
            boxed = home.run(
                [SUPERVISOR, "exec", "--prompt", "never", *flags, "--", *attack, name, how], user=user
            )
            assert boxed.stdout == "refused EACCES\n", how + boxed.stdout + boxed.stderr
            bare = home.run([*attack, name, how], user=user)
            assert bare.stdout == "opened\n", bare.stderr  # the twin
        assert _written(master).count(b"fake prompt") == 2  # the twins' two writes only


def test_the_landlock_plan_has_no_rule_into_dev_pts_but_the_handed_terminal(home):
    from nono_supervisor.linux.landlock import abi_version, compile_plan
    from nono_supervisor.policy.profile import HANDED_TERMINAL, Grant, PolicyOptions
    from nono_supervisor.session import Session

    with other_terminal(False) as (other, _master), other_terminal(False) as (handed, _):
        options = PolicyOptions(allow=("/dev",), allow_file=(other,))
        session = Session.create(options, env=home.env, workdir=str(home.work))
        try:
            policy = session.state.policy
            plan = compile_plan(policy, abi_version(), [Grant(handed, "allow", "file", HANDED_TERMINAL)])
        finally:
            session.close()
    inside = [rule.path for rule in plan.rules if rule.path.startswith("/dev/pts")]
    assert inside == [handed]
    assert any(rule.path == "/dev/null" for rule in plan.rules)  # the twin: the rest of /dev is granted


def test_held_is_decided_on_the_descriptor_not_on_its_name():
    """terminals.held, on a process holding its own master and an O_PATH fd of another pty: only its own
    pty is held, and what is returned opens exactly that pty."""
    from nono_supervisor.linux import terminals

    own_master, own_slave = os.openpty()
    other_master, other_slave = os.openpty()
    located = os.open(os.ttyname(other_slave), os.O_PATH)
    holder = subprocess.Popen(["sleep", "30"], pass_fds=(own_master, located))
    try:
        own, other = os.ttyname(own_slave), os.ttyname(other_slave)
        assert terminals.held(holder.pid, os.stat(other), other) is None  # O_PATH holds nothing
        copy = terminals.held(holder.pid, os.stat(own), own)
        assert copy is not None
        peer = terminals.open_through(copy, os.O_RDWR)
        try:
            assert os.fstat(peer).st_rdev == os.stat(own).st_rdev
        finally:
            os.close(peer)
            os.close(copy)
    finally:
        holder.kill()
        holder.wait()
        for fd in (own_master, own_slave, other_master, other_slave, located):
            os.close(fd)
