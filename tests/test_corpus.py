"""A differential corpus of real programs: bare, under ``exec``, routed through the supervisor, and as the
agent under ``run`` give the same exit status and the same stdout, and no ``nono:`` line, on a policy that
allows what they need (DESIGN.md invariant 8; issue 11).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap

import pytest

from conftest import SUPERVISOR, Home, start_supervisor

PYTHON = sys.executable
GIT = "git -c user.email=dev@example.invalid -c user.name=dev"

CORPUS = {
    "git": f"{GIT} init -q repo && cd repo && echo a > f && git add f && {GIT} commit -qm first"
    " && echo b >> f && git status --short && git diff --stat && git log --format=%s",
    "make+gcc": "make -s && ./hello",
    "tar": "tar czf a.tgz hello.c && tar tzf a.tgz",
    "find": "find . -name '*.c' | sort",
    "grep -r": "grep -rn 'hello' --include=*.c . | sort",
    "sed -i": "printf 'a\\n' > s && sed -i s/a/b/ s && cat s",
    "mkdir -p": "mkdir -p tree/deep && mkdir -p tree/deep && echo made",
    "tee /dev/stderr": "echo through-tee | tee /dev/stderr",
    "/dev/fd/1": "echo through-fd > /dev/fd/1",
    "less -F": "echo paged | LESSHISTFILE=- less -F",
    "python -m venv": f"{PYTHON} -m venv --without-pip v && v/bin/python -c 'print(42)'",
    "pytest": f"{PYTHON} -m pytest -q -p no:cacheprovider test_one.py | tail -1 | cut -d' ' -f1,2",
    "pexpect": f"{PYTHON} -c \"import pexpect; c = pexpect.spawn('/bin/echo', ['pty-ok']);"
    " c.expect('pty-ok'); print('spawned')\"",
    "script": "script -qc 'echo in-script' /dev/null",
    "python thread": f'{PYTHON} -c "import threading, socket; t = threading.Thread(target=lambda:'
    " print(socket.getaddrinfo('localhost', 80)[0][0].name)); t.start(); t.join()\"",
    "node dns.lookup": "node -e \"require('dns').lookup('localhost',"
    " (e, a) => console.log(e ? e.code : 'ok'))\"",
    "npm pkg get": "npm pkg get name --prefix pkg",
}


def _lay_out(home: Home) -> None:
    (home.home / ".gitconfig").write_text("[core]\n\tpager = cat\n[init]\n\tdefaultBranch = main\n")
    (home.work / "hello.c").write_text('#include <stdio.h>\nint main(void){puts("hello");return 0;}\n')
    (home.work / "Makefile").write_text("hello: hello.c\n\tcc -o hello hello.c\n")
    (home.work / "test_one.py").write_text("def test_one():\n    assert 1\n")
    (home.work / "pkg").mkdir()
    (home.work / "pkg" / "package.json").write_text('{"name": "corpus-pkg", "version": "1.0.0"}\n')
    (home.home / ".npm").mkdir()
    for path in [home.home / ".gitconfig", home.home / ".npm", *home.work.rglob("*")]:
        os.lchown(path, home.owner, home.owner)


def _clean(home: Home) -> None:
    for name in ("repo", "hello", "a.tgz", "s", "tree", "v", "__pycache__"):
        path = home.work / name
        shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)


FLAGS = ("--read-file", "~/.gitconfig", "--allow", "~/.npm")


def _variants(home: Home, script: str):
    """(name, completed process) for each way of running ``script``."""
    env = {**home.env, "npm_config_update_notifier": "false"}
    yield "bare", home.run(["sh", "-c", script], env=env)
    _clean(home)
    yield "exec", home.run([SUPERVISOR, "exec", *FLAGS, "--", "sh", "-c", script], env=env)
    _clean(home)
    supervisor = start_supervisor(home, *FLAGS)
    try:
        yield "routed", supervisor.shell("-c", script, env={**supervisor.env, **env})
    finally:
        supervisor.stop()
        shutil.rmtree(supervisor.socket.parent, ignore_errors=True)
        shutil.rmtree(supervisor.shims, ignore_errors=True)
    _clean(home)
    yield (
        "agent",
        home.run([SUPERVISOR, "run", *FLAGS, "--", "bash", "-c", script], env=env, stdin=subprocess.DEVNULL),
    )


@pytest.mark.parametrize("name", list(CORPUS))
def test_real_programs_behave_as_they_do_bare(home, name):
    if name.startswith("node") or name.startswith("npm"):
        if not shutil.which("node"):
            pytest.skip("node is not installed")
    _lay_out(home)
    results = dict(_variants(home, CORPUS[name]))
    bare = results["bare"]
    assert bare.returncode == 0, bare.stderr  # the corpus itself works on this machine
    for variant, result in results.items():
        assert (result.returncode, result.stdout) == (bare.returncode, bare.stdout), textwrap.shorten(
            f"{variant}: {result.stderr}", 2000
        )
        assert "nono:" not in result.stderr, f"{variant}: {result.stderr}"


def test_appending_to_dev_stderr_reaches_a_log_file_outside_the_grants(home):
    """How CI and many agents run: stderr is a file the policy does not grant. ``>> /dev/stderr`` is the
    command's own fd 2 reopened, not a path to decide."""
    outside = home.root / "logs"
    outside.mkdir()
    for variant in ("bare", "exec"):
        log = outside / f"{variant}.log"
        argv = ["sh", "-c", "echo to-the-log >> /dev/stderr"]
        with open(log, "wb") as stderr:
            subprocess.run(
                argv if variant == "bare" else [SUPERVISOR, "exec", "--", *argv],
                cwd=home.work,
                env=home.env,
                stderr=stderr,
                timeout=60,
                check=True,
            )
        assert log.read_text() == "to-the-log\n", variant


def test_every_variant_of_the_corpus_is_really_sandboxed(home):
    """The control for the corpus: the same four ways of running refuse the key, which bare reads."""
    _lay_out(home)
    for variant, result in _variants(home, f"cat {home.key}"):
        if variant == "bare":
            assert result.returncode == 0 and "FAKE OPENSSH KEY" in result.stdout
        else:
            assert result.returncode != 0 and "FAKE OPENSSH KEY" not in result.stdout, variant
            assert "nono: denied read ~/.ssh/id_rsa" in result.stderr, (variant, result.stderr)
