"""Sound mediation (DESIGN.md invariant 7): every handled syscall acts only on the object that was checked.

Each test is an attack from inside a sandboxed command, named after what it tries, with its twin: the same
program without the sandbox reaches what the attack wants (so the test proves something). Key scenarios
run as root and as uid 65534, under the default profile and under ``--allow ~``.
"""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import FAKE_KEY, SUPERVISOR, Home, as_nobody, wait_until

USERS = pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
PROFILES = pytest.mark.parametrize("flags", [(), ("--allow", "~")], ids=["default", "allow-home"])
MARKER = "nono-test-secret-7f3a9c"


def _home(request, user: bool) -> Home:
    return request.getfixturevalue("nobody_home" if user else "home")


def _sandboxed(home: Home, code: str, *args: str, flags: tuple[str, ...] = (), user: bool = False):
    return home.run([SUPERVISOR, "exec", *flags, "--", sys.executable, "-c", code, *args], user=user)


def _bare(home: Home, code: str, *args: str, user: bool = False):
    return home.run([sys.executable, "-c", code, *args], user=user)


def _fields(text: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in text.split() if "=" in item)


def _snapshot(path: Path, content: bool = True) -> tuple | None:
    """Everything about a file an attack could change: content, mode, owner, times, xattrs (None: gone).
    Without ``content``: mode, owner and xattrs only (a log the supervisor itself appends to)."""
    if not path.exists():
        return None
    if not content:
        st = os.lstat(path)
        return (st.st_mode, st.st_uid, st.st_gid, sorted(os.listxattr(path, follow_symlinks=False)))
    data = path.read_bytes()  # first: the read itself may move the access time (relatime)
    st = os.lstat(path)
    try:
        xattrs = sorted(os.listxattr(path, follow_symlinks=False))
    except OSError:
        xattrs = []
    return (data, st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, st.st_atime_ns, xattrs)


# ---- the chdir flip against every emulated operation -----------------------------------------------------

FLIP = r"""
import ctypes, os, sys, threading
op, home, ssh = sys.argv[1], sys.argv[2], sys.argv[3]
libc = ctypes.CDLL(None, use_errno=True)
def decoy():
    if not os.path.exists(os.path.join(home, "id_rsa")):
        with open(os.path.join(home, "id_rsa"), "w") as f:
            f.write("decoy\n")
decoy()
stop = False
def flip():
    while not stop:
        try:
            os.chdir(ssh)
        except OSError:
            pass
        os.chdir(home)
ops = {
    "rename": lambda i: os.rename("id_rsa", f"stolen-{i}"),
    "unlink": lambda i: os.unlink("id_rsa"),
    "truncate": lambda i: os.truncate("id_rsa", 0),
    "open-trunc": lambda i: os.close(os.open("id_rsa", os.O_WRONLY | os.O_TRUNC)),
    "chmod": lambda i: os.chmod("id_rsa", 0o666),
    "utime": lambda i: os.utime("id_rsa", (0, 0)),
    "setxattr": lambda i: os.setxattr("id_rsa", "user.nono", b"1"),
    "link": lambda i: os.link("id_rsa", f"stolen-{i}"),
    "symlink": lambda i: os.symlink("/", f"stolen-{i}"),
    "mkdir": lambda i: os.mkdir(f"stolen-{i}"),
    "mkfifo": lambda i: os.mkfifo(f"stolen-{i}"),
    "create": lambda i: os.close(os.open(f"stolen-{i}", os.O_CREAT | os.O_WRONLY, 0o600)),
}
t = threading.Thread(target=flip)
t.start()
done = 0
for i in range(int(sys.argv[4])):
    try:
        ops[op](i)
        done += 1
    except OSError:
        pass
    decoy()
stop = True
t.join()
print(f"done={done}")
"""
FLIP_OPS = [
    "rename",
    "unlink",
    "truncate",
    "open-trunc",
    "chmod",
    "utime",
    "setxattr",
    "link",
    "symlink",
    "mkdir",
    "mkfifo",
    "create",
]


def _state(protected: Path) -> tuple:
    key = protected / "id_rsa"
    return sorted(os.listdir(protected)), _snapshot(key)


# Where the supervisor carries operations out (Landlock alone cannot express them), and the denied
# directory next to it: under --allow ~, directly in ~ beside ~/.ssh; under the default profile with a
# --deny inside the workdir, directly in the workdir beside the denied directory.
FLIP_SETUPS = {
    "allow-home": lambda home: (home.home, home.key.parent, ("--allow", "~")),
    "default-deny": lambda home: (home.work, home.work / "secret", ("--deny", str(home.work / "secret"))),
}


@pytest.mark.parametrize("op", FLIP_OPS)
@pytest.mark.parametrize("setup", list(FLIP_SETUPS))
@USERS
def test_chdir_flip_never_redirects_an_emulated_operation_into_a_denied_tree(request, user, setup, op):
    """The check and the act are one resolution from one pinned cwd: a thread flipping the cwd between the
    directory where the supervisor acts and a denied one next to it cannot move the act into the latter."""
    home = _home(request, user)
    allowed, denied, flags = FLIP_SETUPS[setup](home)
    if not denied.exists():
        denied.mkdir()
        (denied / "id_rsa").write_text(FAKE_KEY + "\n")
        for path in (denied, denied / "id_rsa"):
            os.lchown(path, home.owner, home.owner)
    before = _state(denied)
    args = (op, str(allowed), str(denied), "600")
    result = _sandboxed(home, FLIP, *args, flags=flags, user=user)
    assert result.returncode == 0, result.stderr
    assert int(_fields(result.stdout)["done"]) > 0, result.stderr  # the operation itself is allowed there
    assert _state(denied) == before
    # The twin: bare, the same flip lands the operation in the denied directory (scheduling decides how
    # often: retry).
    for _attempt in range(30):  # bare runs are cheap; a loaded machine may schedule the flip badly
        _bare(home, FLIP, *args, user=user)
        if _state(denied) != before:
            return
    pytest.fail("the flip never reached the denied directory even without the sandbox: it proves nothing")


# ---- the dup2 swap against every socket call -------------------------------------------------------------

SWAP = r"""
import ctypes, os, socket, struct, sys, threading
call, target, tries = sys.argv[1], sys.argv[2], int(sys.argv[3])
libc = ctypes.CDLL(None, use_errno=True)
kind = socket.SOCK_STREAM if call == "connect" else socket.SOCK_DGRAM
address = struct.pack("=H", socket.AF_UNIX) + target.encode() + b"\0"
N = 100
class Iov(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]
class Msg(ctypes.Structure):
    _fields_ = [("name", ctypes.c_char_p), ("namelen", ctypes.c_uint32), ("iov", ctypes.POINTER(Iov)),
                ("iovlen", ctypes.c_size_t), ("control", ctypes.c_void_p), ("controllen", ctypes.c_size_t),
                ("flags", ctypes.c_int)]
class MMsg(ctypes.Structure):
    _fields_ = [("hdr", Msg), ("len", ctypes.c_uint)]
data = ctypes.create_string_buffer(b"x")
iov = Iov(ctypes.addressof(data), 1)
msg = Msg(address, len(address), ctypes.pointer(iov), 1, None, 0, 0)
mmsg = MMsg(msg, 0)
def attempt():
    if call == "connect":
        return libc.connect(N, address, len(address))
    if call == "sendto":
        return libc.sendto(N, b"x", 1, 0, address, len(address))
    if call == "sendmsg":
        return libc.sendmsg(N, ctypes.byref(msg), 0)
    return libc.sendmmsg(N, ctypes.byref(mmsg), 1, 0)
sockets = {}
def fresh():
    sockets["inet"] = socket.socket(socket.AF_INET, kind)
    sockets["unix"] = socket.socket(socket.AF_UNIX, kind)
fresh()
stop = False
def swap():
    while not stop:
        try:
            os.dup2(sockets["unix"].fileno(), N)
            os.dup2(sockets["inet"].fileno(), N)
        except OSError:
            pass
t = threading.Thread(target=swap)
t.start()
ok = 0
for _ in range(tries):
    os.dup2(sockets["inet"].fileno(), N)
    ok += attempt() >= 0
    fresh()
stop = True
t.join()
print(f"ok={ok}")
"""


class _Receiver:
    """A unix socket outside every sandbox (an ssh-agent, a docker.sock) that counts what reaches it."""

    def __init__(self, path: Path, kind: int, owner: int) -> None:
        self.path = path
        self.count = 0
        self.sock = socket.socket(socket.AF_UNIX, kind)
        self.sock.bind(str(path))
        os.chmod(path, 0o777)
        if owner:
            os.chown(path, owner, owner)
        if kind == socket.SOCK_STREAM:
            self.sock.listen(64)
        self.sock.settimeout(0.2)
        self.kind = kind
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            try:
                if self.kind == socket.SOCK_STREAM:
                    conn, _ = self.sock.accept()
                    conn.close()
                else:
                    self.sock.recv(16)
                self.count += 1
            except OSError:
                continue

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.sock.close()
        self.path.unlink(missing_ok=True)


@pytest.mark.parametrize("call", ["connect", "sendto", "sendmsg", "sendmmsg"])
@PROFILES
@USERS
def test_dup2_swap_never_reaches_a_denied_unix_socket(request, user, flags, call):
    """The socket's family was checked on one object, the call ran on another: now the supervisor performs
    the call on its own copy of the socket it checked, so a swapped-in unix socket reaches nothing."""
    home = _home(request, user)
    kind = socket.SOCK_STREAM if call == "connect" else socket.SOCK_DGRAM
    receiver = _Receiver(home.key.parent / "agent.sock", kind, home.owner)
    try:
        result = _sandboxed(home, SWAP, call, str(receiver.path), "1500", flags=flags, user=user)
        assert result.returncode == 0, result.stderr
        time.sleep(0.3)
        assert receiver.count == 0
        assert f"{call if call == 'connect' else 'connect'} ~/.ssh/agent.sock" in result.stderr
        for _attempt in range(30):  # the twin: bare, the swap reaches the socket (retry: scheduling)
            _bare(home, SWAP, call, str(receiver.path), "1500", user=user)
            time.sleep(0.3)
            if receiver.count:
                break
        assert receiver.count > 0, "the swap never reached the socket even without the sandbox"
    finally:
        receiver.close()


# ---- metadata ---------------------------------------------------------------------------------------------

META = r"""
import os, sys
path, op = sys.argv[1], sys.argv[2]
ops = {
    "chmod-0644": lambda: os.chmod(path, 0o644),
    "chmod-4755": lambda: os.chmod(path, 0o4755),
    "chmod-0666": lambda: os.chmod(path, 0o666),
    "chmod-0000": lambda: os.chmod(path, 0),
    "chown": lambda: os.chown(path, os.getuid(), os.getgid()),
    "utime": lambda: os.utime(path, (0, 0)),
    "setxattr": lambda: os.setxattr(path, "user.nono", b"1"),
    "acl": lambda: os.setxattr(path, "system.posix_acl_access",
                               bytes.fromhex("02000000010006000000ffff04000400ffffffff20000400ffffffff")),
    "fchmod": lambda: os.chmod(os.open(path, os.O_RDONLY), 0o4755),
}
try:
    ops[op]()
    print("result=ok")
except OSError as e:
    print(f"result={e.errno}")
"""
META_OPS = ["chmod-0644", "chmod-4755", "chmod-0666", "chmod-0000", "chown", "utime", "setxattr", "acl"]


def _protected_targets(home: Home) -> dict[str, Path]:
    config = home.home / ".config" / "nono-shell"
    config.mkdir(parents=True, exist_ok=True)
    grants = config / "grants.toml"
    grants.write_text("")
    audit = home.audit_log
    audit.parent.mkdir(parents=True, exist_ok=True)
    audit.write_text("")
    targets = {"key": home.key, "grants": grants, "audit": audit}
    for path in [config, grants, audit.parent, audit]:
        os.chown(path, home.owner, home.owner)
    if not home.owner:  # a root-owned program outside every grant: a setuid backdoor for later
        outside = home.root / "outside"
        outside.mkdir(exist_ok=True)
        tool = outside / "tool"
        tool.write_bytes(Path("/bin/true").read_bytes())
        tool.chmod(0o755)
        targets["root-binary"] = tool
    return targets


@pytest.mark.parametrize("op", META_OPS)
@PROFILES
@USERS
def test_metadata_of_denied_and_never_grantable_files_cannot_change(request, user, flags, op):
    """Landlock has no right for mode, owner, times or xattrs: each call is decided as a write of the file
    it resolves to and carried out by the supervisor, so denied and never-grantable files stay as they are."""
    home = _home(request, user)
    for name, target in _protected_targets(home).items():
        whole = name != "audit"
        before = _snapshot(target, whole)
        result = _sandboxed(home, META, str(target), op, flags=flags, user=user)
        assert _fields(result.stdout).get("result") != "ok", (name, result.stdout, result.stderr)
        assert _snapshot(target, whole) == before, name
        twin = _bare(home, META, str(target), op, user=user)  # bare, the change goes through
        if op == "acl" and "95" in twin.stdout:
            pytest.skip("this filesystem has no POSIX ACLs")
        assert _fields(twin.stdout)["result"] == "ok", (name, twin.stdout, twin.stderr)
        if op.startswith("chmod"):
            os.chmod(target, 0o600)


@USERS
def test_setuid_bits_are_never_set_even_where_writing_is_allowed(request, user):
    home = _home(request, user)
    tool = home.work / "tool"
    tool.write_bytes(b"#!/bin/sh\n")
    os.chown(tool, home.owner, home.owner)
    for op in ("chmod-4755", "fchmod"):
        result = _sandboxed(home, META, str(tool), op, user=user)
        assert _fields(result.stdout)["result"] == "1", result.stdout  # EPERM
        assert not os.stat(tool).st_mode & (stat.S_ISUID | stat.S_ISGID)
        assert "setuid/setgid" in result.stderr
    plain = _sandboxed(home, META, str(tool), "chmod-0644", user=user)  # the twin: an ordinary chmod works
    assert _fields(plain.stdout)["result"] == "ok" and stat.S_IMODE(os.stat(tool).st_mode) == 0o644


@USERS
def test_fchmod_on_a_read_only_grant_cannot_make_a_setuid_program(request, user):
    """An fd opened for reading (allowed) is no licence to change the file's mode."""
    home = _home(request, user)
    shared = home.root / "shared"
    shared.mkdir(exist_ok=True)
    tool = shared / "tool"
    tool.write_bytes(b"#!/bin/sh\n")
    tool.chmod(0o755)
    for path in (shared, tool):
        os.chown(path, home.owner, home.owner)
    before = _snapshot(tool)
    result = _sandboxed(home, META, str(tool), "fchmod", flags=("--read", str(shared)), user=user)
    assert _fields(result.stdout)["result"] != "ok" and _snapshot(tool) == before
    assert _fields(_bare(home, META, str(tool), "fchmod", user=user).stdout)["result"] == "ok"


# ---- --net-block ------------------------------------------------------------------------------------------

NET = r"""
import ctypes, socket, sys
what, port = sys.argv[1], int(sys.argv[2])
libc = ctypes.CDLL(None, use_errno=True)
try:
    if what == "udp":
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.sendto(b"x", ("127.0.0.1", port))
    elif what == "mptcp":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM, 262)
        s.connect(("127.0.0.1", port))
    elif what == "fastopen":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.sendto(b"x", 0x20000000, ("127.0.0.1", port))
    elif what == "fastopen-connect":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.IPPROTO_TCP, 30, 1)
        s.connect(("127.0.0.1", port))
    elif what == "listen":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.listen(1)
        print("listening-on", s.getsockname()[1])
    elif what == "tcp":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.connect(("127.0.0.1", port))
    print("result=ok")
except OSError as e:
    print(f"result={e.errno}")
"""


class _LocalPeer:
    """A TCP listener and a UDP socket on loopback that count what reaches them."""

    def __init__(self) -> None:
        self.tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.tcp.setsockopt(socket.IPPROTO_TCP, 23, 5)  # TCP_FASTOPEN server side
        self.tcp.bind(("127.0.0.1", 0))
        self.tcp.listen(16)
        self.port = self.tcp.getsockname()[1]
        self.udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.udp.bind(("127.0.0.1", self.port))
        self.tcp.settimeout(0.1)
        self.udp.settimeout(0.1)
        self.count = 0
        self._stop = False
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop:
            for sock in (self.tcp, self.udp):
                try:
                    if sock is self.tcp:
                        sock.accept()[0].close()
                    else:
                        sock.recv(16)
                    self.count += 1
                except OSError:
                    pass

    def close(self) -> None:
        self._stop = True
        self._thread.join()
        self.tcp.close()
        self.udp.close()


def _mptcp_enabled() -> bool:
    try:
        return Path("/proc/sys/net/mptcp/enabled").read_text().strip() == "1"
    except OSError:
        return False


@pytest.mark.parametrize("what", ["udp", "mptcp", "fastopen", "fastopen-connect", "listen", "tcp"])
@USERS
def test_net_block_means_no_network(request, user, what):
    """UDP, MPTCP, TCP fast open and listen's auto-bind step around Landlock's TCP rules: refused."""
    if what == "mptcp" and not _mptcp_enabled():
        pytest.skip("MPTCP is disabled on this kernel (net.mptcp.enabled = 0)")
    home = _home(request, user)
    peer = _LocalPeer()
    try:
        result = _sandboxed(home, NET, what, str(peer.port), flags=("--net-block",), user=user)
        time.sleep(0.3)
        assert _fields(result.stdout).get("result") != "ok", result.stdout + result.stderr
        assert "listening-on" not in result.stdout
        assert peer.count == 0
        assert "[--net-block]" in result.stderr
        twin = _sandboxed(home, NET, what, str(peer.port), user=user)  # without --net-block it works
        time.sleep(0.3)
        assert _fields(twin.stdout)["result"] == "ok", twin.stdout + twin.stderr
        assert peer.count > 0 or what == "listen"
    finally:
        peer.close()


# ---- watches and second names ----------------------------------------------------------------------

WATCH = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
fd = libc.inotify_init1(0)
wd = libc.inotify_add_watch(fd, sys.argv[1].encode(), 0x100 | 0x200 | 0x2)  # create, delete, modify
print(f"result={'ok' if wd >= 0 else ctypes.get_errno()}")
"""


@PROFILES
@USERS
def test_inotify_watch_on_a_denied_directory_is_refused(request, user, flags):
    """A watch reveals the names and timing of what happens in ~/.ssh: decided as a read of it."""
    home = _home(request, user)
    result = _sandboxed(home, WATCH, str(home.key.parent), flags=flags, user=user)
    assert _fields(result.stdout)["result"] == "13", result.stdout + result.stderr
    assert "denied read ~/.ssh" in result.stderr
    assert _fields(_bare(home, WATCH, str(home.key.parent), user=user).stdout)["result"] == "ok"
    allowed = _sandboxed(home, WATCH, str(home.work), flags=flags, user=user)  # the workdir may be watched
    assert _fields(allowed.stdout)["result"] == "ok", allowed.stderr


READ = r"""
import sys
try:
    print(open(sys.argv[1]).read())
except OSError as e:
    print(f"result={e.errno}")
"""

LINK_FLIP = r"""
import os, sys, threading
marker, tries = sys.argv[1], int(sys.argv[2])
stop = False
def flip():
    while not stop:
        os.rename("a", "t"); os.rename("b", "a"); os.rename("t", "b")
t = threading.Thread(target=flip)
t.start()
leaked = 0
for _ in range(tries):
    try:
        with open("a") as f:
            leaked += marker in f.read()
    except OSError:
        pass
stop = True
t.join()
print(f"leaked={leaked}")
"""


@PROFILES
@USERS
def test_a_pre_made_hard_link_to_the_key_does_not_read_through(request, user, flags):
    """Landlock follows names: a second name of ~/.ssh/id_rsa in the workdir (made outside the sandbox
    beforehand) would read through. Opens of the key's inode are refused whatever name they use, and a
    thread renaming the link over an innocent file between check and open gains nothing."""
    home = _home(request, user)
    link = home.work / "innocent"
    os.link(home.key, link)
    result = _sandboxed(home, READ, str(link), flags=flags, user=user)
    assert FAKE_KEY not in result.stdout and _fields(result.stdout)["result"] == "13"
    assert "hard link to a denied file" in result.stderr
    assert FAKE_KEY in _bare(home, READ, str(link), user=user).stdout  # the twin
    (home.work / "a").write_text("benign\n")
    os.rename(link, home.work / "b")
    for name in ("a", "b"):
        os.lchown(home.work / name, home.owner, home.owner)
    raced = _sandboxed(home, LINK_FLIP, MARKER, "1500", flags=flags, user=user)
    assert _fields(raced.stdout)["leaked"] == "0", raced.stderr
    # The sandboxed flip may have stopped halfway (a rename of the key's second name is refused where the
    # supervisor carries renames out: the workdir's root, whose own entries are runs-later): start again.
    for name in ("a", "b", "t"):
        (home.work / name).unlink(missing_ok=True)
    (home.work / "a").write_text("benign\n")
    os.link(home.key, home.work / "b")
    for name in ("a", "b"):
        os.lchown(home.work / name, home.owner, home.owner)
    for _attempt in range(5):
        if int(_fields(_bare(home, LINK_FLIP, MARKER, "1500", user=user).stdout)["leaked"]) > 0:
            break
    else:
        pytest.fail("the flip never read the key even without the sandbox")


# ---- the kernel's own answers (errno before permission), the target's own fds ---------------------------

ERRNO = r"""
import errno, os, sys
home = sys.argv[1]
def code(f):
    try:
        f()
        return "ok"
    except OSError as e:
        return errno.errorcode[e.errno]
print("missing-read=" + code(lambda: open(home + "/.config/nothing/here")))
print("missing-in-denied=" + code(lambda: open(home + "/.ssh/missing")))
print("mkdir-existing=" + code(lambda: os.mkdir(home + "/.ssh")))
print("notdir=" + code(lambda: open(home + "/.ssh/id_rsa/x")))
print("loop=" + code(lambda: open("loop")))
print("stdout=" + code(lambda: open("/dev/stdout", "w").write("via-dev-stdout\n")))
print("fd1=" + code(lambda: open("/proc/self/fd/1", "w").write("via-proc-self-fd\n")))
"""


@USERS
def test_answers_before_any_permission_check_are_the_kernels(request, user):
    """ENOENT for a missing path, EEXIST for an existing one, ENOTDIR, ELOOP: never EACCES, never reported;
    /dev/stdout and /proc/self/fd/1 are the command's own stdout (a pipe), not the supervisor's."""
    home = _home(request, user)
    os.symlink("loop", home.work / "loop")
    result = _sandboxed(home, ERRNO, str(home.home), flags=("--allow", "~"), user=user)
    fields = _fields(result.stdout)
    assert fields["missing-read"] == "ENOENT"
    assert fields["missing-in-denied"] == "ENOENT"
    assert fields["mkdir-existing"] == "EEXIST"
    assert fields["notdir"] in ("ENOTDIR", "EACCES")  # under a denied tree the kernel may check first
    assert fields["loop"] == "ELOOP"
    if not user:  # as uid 65534 the kernel itself refuses to reopen root's pipe (its mode): the twin says so
        assert fields["stdout"] == "ok" and fields["fd1"] == "ok", result.stderr
        assert "via-dev-stdout" in result.stdout and "via-proc-self-fd" in result.stdout
    assert "nono: denied" not in result.stderr, result.stderr
    bare = _fields(_bare(home, ERRNO, str(home.home), user=user).stdout)  # the twin: the kernel's own answers
    assert {k: bare[k] for k in ("missing-read", "mkdir-existing", "loop", "stdout", "fd1")} == {
        k: fields[k] for k in ("missing-read", "mkdir-existing", "loop", "stdout", "fd1")
    }


THREADED_CONNECT = r"""
import socket, sys, threading
port = int(sys.argv[1])
out = {}
def worker():
    try:
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
        out["r"] = "ok"
    except OSError as e:
        out["r"] = str(e.errno)
t = threading.Thread(target=worker)
t.start()
t.join()
print("result=" + out["r"])
"""


@USERS
def test_a_connect_from_a_worker_thread_works(request, user):
    """Sockets from any thread but the main one failed with ENOENT (pidfd_open of a non-leader tid)."""
    home = _home(request, user)
    peer = _LocalPeer()
    try:
        result = _sandboxed(home, THREADED_CONNECT, str(peer.port), user=user)
        assert _fields(result.stdout)["result"] == "ok", result.stdout + result.stderr
    finally:
        peer.close()


def test_curl_from_the_resolver_thread_reaches_a_local_server(home):
    """curl resolves names on a thread; the connect it then makes is performed by the supervisor."""
    if not os.path.exists("/usr/bin/curl"):
        pytest.skip("curl is not installed")
    server = subprocess.Popen(
        [sys.executable, "-m", "http.server", "0", "--bind", "127.0.0.1"],
        cwd=home.work,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        line = server.stdout.readline()
        port = line.split("port ")[1].split()[0]
        result = home.run([SUPERVISOR, "exec", "--", "curl", "-sS", f"http://localhost:{port}/README"])
        assert result.returncode == 0, result.stderr
        assert "a file in the workdir" in result.stdout
    finally:
        server.terminate()
        server.wait()


TMPFILE = r"""
import ctypes, os, sys
where = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
fd = os.open(where, os.O_TMPFILE | os.O_WRONLY, 0o600)
os.write(fd, b"made anonymously\n")
AT_FDCWD, AT_SYMLINK_FOLLOW = -100, 0x400
name = os.path.join(where, "named").encode()
if libc.linkat(AT_FDCWD, f"/proc/self/fd/{fd}".encode(), AT_FDCWD, name, AT_SYMLINK_FOLLOW) != 0:
    raise OSError(ctypes.get_errno(), "linkat")
print(open(name).read().strip())
"""


@PROFILES
def test_an_o_tmpfile_is_given_a_name_through_proc_self_fd(home, flags):
    """The kernel's pattern for atomic files: linkat("/proc/self/fd/N", name, AT_SYMLINK_FOLLOW). Where the
    supervisor carries the link out (--allow ~: directly in ~), it links the command's own object."""
    for where in (home.work, home.home):
        result = _sandboxed(home, TMPFILE, str(where), flags=("--allow", "~"))
        assert result.returncode == 0 and "made anonymously" in result.stdout, result.stderr
        assert (where / "named").read_text() == "made anonymously\n"
        (where / "named").unlink()
    denied = _sandboxed(home, TMPFILE, str(home.key.parent), flags=flags)  # the twin: not into ~/.ssh
    assert denied.returncode != 0 and not (home.key.parent / "named").exists()
    assert _bare(home, TMPFILE, str(home.key.parent)).returncode == 0


BIND = r"""
import socket, sys
try:
    socket.socket(socket.AF_UNIX).bind(sys.argv[1])
    print("result=ok")
except OSError as e:
    print(f"result={e.errno}")
"""


@USERS
def test_bind_directly_in_home_is_carried_out_and_into_a_denied_tree_refused(request, user):
    """Under --allow ~ the policy allows a socket file directly in ~ although Landlock cannot (~ itself only
    has its siblings' rules): the supervisor binds the command's socket in the pinned directory."""
    home = _home(request, user)
    made = _sandboxed(home, BIND, str(home.home / "app.sock"), flags=("--allow", "~"), user=user)
    assert _fields(made.stdout)["result"] == "ok", made.stderr
    assert stat.S_ISSOCK(os.lstat(home.home / "app.sock").st_mode)
    denied = _sandboxed(home, BIND, str(home.key.parent / "agent.sock"), flags=("--allow", "~"), user=user)
    assert _fields(denied.stdout)["result"] == "13" and not (home.key.parent / "agent.sock").exists()
    assert "denied create ~/.ssh/agent.sock" in denied.stderr
    twin = _bare(home, BIND, str(home.key.parent / "agent.sock"), user=user)
    assert _fields(twin.stdout)["result"] == "ok"


CLIMB = r"""
import os, sys
home, project = sys.argv[1], sys.argv[2]
nofollow = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
down = os.open(project, nofollow)
up = os.open("..", nofollow, dir_fd=down)  # gnulib's fts climbing back (du, grep -r, find)
print("up=" + ",".join(sorted(os.listdir(up))))
os.chdir(home)
here = os.open(".", os.O_RDONLY | os.O_NOFOLLOW)  # tar -C ~ .
print("here=" + ",".join(sorted(os.listdir(here))))
"""


@USERS
def test_an_emulated_open_of_dot_or_dotdot_with_o_nofollow_opens_the_directory(request, user):
    """~ holds the denied ~/.ssh, so opening ~ for a listing is carried out by the supervisor on the pinned
    directory: "." and ".." are never links, and O_NOFOLLOW must not turn them into ENOTDIR or ELOOP (du
    and grep -r over ~ failed on the first directory they climbed out of; tar -C ~ on ".")."""
    home = _home(request, user)
    args = (str(home.home), str(home.work))
    result = _sandboxed(home, CLIMB, *args, flags=("--allow", "~"), user=user)
    bare = _bare(home, CLIMB, *args, user=user)  # the twin
    assert result.returncode == 0 and result.stdout == bare.stdout, result.stderr
    assert ".ssh" in _fields(result.stdout)["up"] and "nono: denied" not in result.stderr


OWN_SETTINGS = r"""
import sys, threading
def write(path, value):
    try:
        with open(path, "w") as f:
            f.write(value)
        with open(path) as f:
            return f.read().strip()
    except OSError as e:
        return f"errno={e.errno}"
print("filter=" + write("/proc/self/coredump_filter", "0x33"))
named = {}
def name_me():
    named["comm"] = write(f"/proc/self/task/{threading.get_native_id()}/comm", "worker-x")
thread = threading.Thread(target=name_me)
thread.start()
thread.join()
print("thread=" + named["comm"])
print("other=" + write(f"/proc/{sys.argv[1]}/coredump_filter", "0x33"))
"""


@USERS
def test_a_process_writes_its_own_coredump_filter_and_thread_names_never_anothers(request, user):
    """Landlock cannot name a process that does not exist yet, so the supervisor opens a command's own
    /proc/<pid>/coredump_filter and task/<tid>/comm for it (the JVM writes the first at every start: a
    question for each java run). Another process's stay refused: its /proc is never the supervisor's."""
    home = _home(request, user)
    other = subprocess.Popen(as_nobody(["sleep", "60"]) if user else ["sleep", "60"])
    try:
        assert wait_until(lambda: open(f"/proc/{other.pid}/comm").read().strip() == "sleep")
        result = _sandboxed(home, OWN_SETTINGS, str(other.pid), user=user)
        bare = _bare(home, OWN_SETTINGS, str(other.pid), user=user)  # the twin
    finally:
        other.kill()
        other.wait()
    fields = _fields(result.stdout)
    assert fields["filter"] == "00000033" and fields["thread"] == "worker-x", result.stderr
    assert fields["other"] == "errno=13" and "nono:" not in result.stderr, result.stderr  # silent
    assert any("another process's /proc" in entry.get("rule", "") for entry in home.audit())
    assert _fields(bare.stdout) == {**fields, "other": "00000033"}
