"""The kernel as oracle (DESIGN.md invariant 8): where Landlock alone can express the policy, the seccomp
layer gives exactly the results of ``--no-trap``: same return values, same errno. It only adds reports,
and only where Landlock itself denied.

Table-driven: every trapped path family x (allowed, read-only, denied zone) x (an existing file, a missing
one, a directory, a path through a file, a dangling symlink, a symlink to a file, a symlink out of the
zone, a path through a symlinked directory).
"""

from __future__ import annotations

import os
import re
import shutil
import sys

import pytest

from conftest import SUPERVISOR, Home, syscall_numbers

PROBE = (
    syscall_numbers("openat")
    + r"""
import ctypes, errno, json, os, socket, sys
root = sys.argv[1]
libc = ctypes.CDLL(None, use_errno=True)
def raw_listing(path):  # the openat syscall itself, as libc's scandir and static binaries make it
    fd = libc.syscall(NR["openat"], -100, path.encode(), os.O_RDONLY | os.O_DIRECTORY, 0)
    if fd < 0:
        raise OSError(ctypes.get_errno(), path)
    os.close(fd)
def spawn(path):
    pid = os.posix_spawn(path, [path], {})
    os.waitpid(pid, 0)
FAMILIES = {
    "read": lambda p: os.close(os.open(p, os.O_RDONLY)),
    "write": lambda p: os.close(os.open(p, os.O_WRONLY)),
    "create": lambda p: os.close(os.open(p, os.O_WRONLY | os.O_CREAT, 0o644)),
    "excl": lambda p: os.close(os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)),
    "trunc": lambda p: os.close(os.open(p, os.O_WRONLY | os.O_TRUNC)),
    "nofollow": lambda p: os.close(os.open(p, os.O_RDONLY | os.O_NOFOLLOW)),
    "opendir": lambda p: os.close(os.open(p, os.O_RDONLY | os.O_DIRECTORY)),
    "listdir": lambda p: os.listdir(p),
    "rawdir": raw_listing,
    "mkdir": lambda p: os.mkdir(p),
    "rmdir": lambda p: os.rmdir(p),
    "unlink": lambda p: os.unlink(p),
    "rename": lambda p: os.rename(p, p + ".renamed"),
    "link": lambda p: os.link(p, p + ".linked"),
    "symlink": lambda p: os.symlink("target", p),
    "truncate": lambda p: os.truncate(p, 0),
    "mkfifo": lambda p: os.mkfifo(p),
    "exec": spawn,
    "bind": lambda p: socket.socket(socket.AF_UNIX).bind(p),
}
TARGETS = {
    "file": "{f}-file", "missing": "{f}-missing", "dir": "{f}-dir", "notdir": "{f}-file/x",
    "dangling": "{f}-dangling", "link": "{f}-link", "outlink": "{f}-outlink", "viadir": "{f}-linkdir/inner",
}
results = {}
for zone in ("work", "ro", "none"):
    for family, op in FAMILIES.items():
        for target, pattern in TARGETS.items():
            path = os.path.join(root, zone, pattern.format(f=family))
            try:
                op(path)
                results[f"{zone}:{family}:{target}"] = "ok"
            except OSError as e:
                results[f"{zone}:{family}:{target}"] = errno.errorcode.get(e.errno, str(e.errno))
print(json.dumps(results))
"""
)
FAMILY_NAMES = re.findall(r'^    "(\w+)": ', PROBE.split("FAMILIES = {")[1].split("}\n")[0], re.M)


def _lay_out(home: Home) -> str:
    """Three zones (read+write, read-only, nothing), each with the same set of objects per family."""
    root = home.root / "oracle"
    shutil.rmtree(root, ignore_errors=True)
    for zone in ("work", "ro", "none"):
        base = root / zone
        base.mkdir(parents=True)
        for family in FAMILY_NAMES:
            (base / f"{family}-file").write_text("#!/bin/sh\nexit 0\n")
            (base / f"{family}-file").chmod(0o755)
            (base / f"{family}-dir").mkdir()
            (base / f"{family}-dir" / "inner").write_text("inner\n")
            os.symlink("nowhere", base / f"{family}-dangling")
            os.symlink(f"{family}-file", base / f"{family}-link")
            os.symlink(f"../none/{family}-file", base / f"{family}-outlink")
            os.symlink(f"{family}-dir", base / f"{family}-linkdir")
    for path in [root, *root.rglob("*")]:
        os.lchown(path, home.owner, home.owner)
    return str(root)


def _probe(home: Home, root: str, trap: bool, user: bool):
    flags = ["--allow", f"{root}/work", "--read", f"{root}/ro"] + ([] if trap else ["--no-trap"])
    result = home.run([SUPERVISOR, "exec", *flags, "--", sys.executable, "-c", PROBE, root], user=user)
    assert result.returncode == 0, result.stderr[-2000:]
    import json

    return json.loads(result.stdout), result.stderr


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_the_seccomp_layer_answers_exactly_as_landlock_alone(request, user):
    home: Home = request.getfixturevalue("nobody_home" if user else "home")
    root = _lay_out(home)
    landlock, _ = _probe(home, root, trap=False, user=user)
    root = _lay_out(home)
    trapped, stderr = _probe(home, root, trap=True, user=user)
    differences = {k: (landlock[k], trapped[k]) for k in landlock if landlock[k] != trapped[k]}
    assert not differences, differences
    # The table means something: each zone answers differently, and the kernel's own errors are there.
    assert landlock["work:create:missing"] == "ok" and landlock["none:create:missing"] == "EACCES"
    assert landlock["ro:read:file"] == "ok" and landlock["ro:write:file"] == "EACCES"
    for expected in ("ENOENT", "ENOTDIR", "ELOOP", "EEXIST", "EISDIR"):
        assert expected in landlock.values(), expected
    # Reports only where Landlock itself denied: paths are real ones, so none lies in the read+write zone,
    # and in the read-only zone only operations that write are reported.
    reports = [line for line in stderr.splitlines() if line.startswith("nono: denied")]
    assert reports, stderr
    for line in reports:
        op, path = line.split(" ")[2], line.split(" ", 3)[3].split(" [")[0]
        assert "/oracle/work/" not in path, line
        if "/oracle/ro/" in path:
            assert op in ("write", "create", "delete", "bind"), line
