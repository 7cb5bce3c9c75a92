"""Issue 12: a developer's machine out of the box. A realistic fake home (a pyenv-like toolchain on PATH
whose version is a real python install tree, a cargo-like bin dir, a pipx-like venv behind ~/.local/bin,
~/.gitconfig, ~/.npmrc with a token, an agent's state, credential files of every kind), and an agent under
``run`` with the default profile, on a real pty (so any denial could become a question).

git, the toolchain's python (through its shim), ``python -m venv``, pip and npm (both writing their caches)
run with zero questions, zero ``nono:`` lines and zero denials in the audit log; every credential file stays
denied; ~/.npmrc's settings reach npm but not its token; the agent's state is writable by the agent and not
by its commands; and the caches went to nono's per-project cache, not the user's. Root and uid 65534.
"""

from __future__ import annotations

import functools
import json
import os
import pwd
import re
import shutil
import subprocess
import sys
import tempfile
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pexpect
import pytest

from conftest import (
    BIN,
    FAKE_KEY,
    NOBODY,
    SUPERVISOR,
    Home,
    as_nobody,
    for_one_test,
    make_home,
)

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Landlock is Linux")

NPM_TOKEN = "npm-secret-token-5c1e"
SECRETS = {  # every credential file the fake home holds: path under ~ -> its content
    ".ssh/id_rsa": FAKE_KEY,
    ".aws/credentials": "[default]\naws_secret_access_key = aws-secret-77a1\n",
    ".npmrc": f"//registry.npmjs.org/:_authToken={NPM_TOKEN}\ninit-license=ISC-nono\nfund=false\n",
    ".docker/config.json": '{"auths": {"ghcr.io": {"auth": "docker-secret-1f2e"}}}\n',
    ".config/gh/hosts.yml": "github.com:\n  oauth_token: gh-secret-9b8c\n",
    ".git-credentials": "https://user:git-secret-3d4e@github.com\n",
    ".config/git/credentials": "https://user:gitx-secret-8e7f@example.com\n",
    ".env": "OPENAI_API_KEY=env-secret-2a3b\n",
    ".cargo/credentials.toml": '[registry]\ntoken = "cargo-secret-6d5c"\n',
    ".claude/.credentials.json": '{"claudeAiOauth": {"accessToken": "claude-secret-4f3e"}}\n',
    ".codex/auth.json": '{"OPENAI_API_KEY": "codex-secret-0a9b"}\n',
}
SECRET_WORDS = re.compile(r"[a-z]+-secret-[0-9a-f]{4}|" + NPM_TOKEN + "|nono-test-secret")


def _python_tree() -> Path:
    """A real python install tree other than the one running the tests, preferably (a pyenv build)."""
    base = Path(sys.base_prefix)
    candidates = sorted(p for p in base.parent.iterdir() if p != base and (p / "bin").is_dir())
    for candidate in candidates:
        if any(re.fullmatch(r"python3\.\d+", f.name) for f in (candidate / "bin").iterdir()):
            return candidate
    return base


@pytest.fixture(scope="module")
def toolchain_tree() -> Path:
    """A copy (hard links where the filesystem allows) of a real python install tree in a temp dir that
    uid 65534 can reach, its interpreter's RUNPATH pointed at the copy's own lib/."""
    source = _python_tree()
    root = Path(tempfile.mkdtemp(prefix="nono-toolchain-"))
    root.chmod(0o755)
    target = root / source.name
    linked = subprocess.run(["cp", "-al", str(source), str(target)], capture_output=True)
    if linked.returncode != 0:
        shutil.rmtree(target, ignore_errors=True)
        shutil.copytree(source, target, symlinks=True)
    python = next(f for f in sorted((target / "bin").iterdir()) if re.fullmatch(r"python3\.\d+", f.name))
    data = python.read_bytes()
    old = os.fsencode(str(source / "lib")) + b"\0"
    if old in data:  # an absolute RUNPATH to the original: the copy must load its own libpython
        new = b"$ORIGIN/../lib\0"
        data = data.replace(old, new + b"\0" * (len(old) - len(new)))
    python.unlink()  # the hard link: the copy gets a file of its own
    python.write_bytes(data)
    python.chmod(0o755)
    yield python
    shutil.rmtree(root, ignore_errors=True)


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


def developer_home(python: Path, owner: int = 0) -> Home:
    """make_home's fake user, with a developer's toolchain, configuration, credentials and agent state."""
    home = make_home()
    h = home.home
    version = python.parent.parent
    (h / ".pyenv" / "versions").mkdir(parents=True)
    (h / ".pyenv" / "versions" / version.name).symlink_to(version)  # pyenv users link builds in
    _write(h / ".pyenv" / "version", version.name + "\n")
    shim = "#!/usr/bin/env bash\n# pyenv-like shim\n"
    shim += f'exec "$HOME/.pyenv/versions/{version.name}/bin/{python.name}" "$@"\n'
    for name in ("python", "python3"):
        _write(h / ".pyenv" / "shims" / name, shim, 0o755)
    _write(
        h / ".cargo" / "bin" / "cargo",
        '#!/bin/sh\necho "cargo 1.99.0-fake"; cat "$HOME/.cargo/config.toml"\n',
        0o755,
    )
    _write(h / ".cargo" / "config.toml", "[build]\njobs = 2\n")
    venv = h / ".local" / "share" / "pipx" / "venvs" / "greeter"
    _write(venv / "pyvenv.cfg", f"home = {python.parent}\n")
    _write(venv / "bin" / "greeter", "#!/bin/sh\necho greetings from a pipx venv\n", 0o755)
    (h / ".local" / "bin").mkdir(parents=True, exist_ok=True)
    (h / ".local" / "bin" / "greeter").symlink_to(venv / "bin" / "greeter")
    _write(
        h / ".gitconfig",
        "[user]\n\tname = Nono Tester\n\temail = tester@example.invalid\n[init]\n\tdefaultBranch = trunk\n",
    )
    _write(h / ".config" / "git" / "ignore", "*.log\n")
    for relative, content in SECRETS.items():
        _write(h / relative, content, 0o600)
    _write(h / ".claude" / "settings.json", '{"permissions": {"allow": []}}\n')
    package = home.work / "hello-pkg"
    _write(package / "package.json", '{"name": "hello-pkg", "version": "1.0.0", "main": "index.js"}\n')
    _write(package / "index.js", "module.exports = 'hello';\n")
    home.env["PATH"] = f"{h}/.pyenv/shims:{h}/.cargo/bin:{h}/.local/bin:{BIN}:/usr/local/bin:/usr/bin:/bin"
    home.env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    home.env.update({"TERM": "dumb", "PAGER": "cat", "GIT_PAGER": "cat"})
    home.env["npm_config_update_notifier"] = "false"
    return home.give_to(owner)


@pytest.fixture
def dev_home(toolchain_tree: Path) -> Iterator[Home]:
    yield from for_one_test(functools.partial(developer_home, toolchain_tree))


@pytest.fixture
def nobody_dev_home(toolchain_tree: Path) -> Iterator[Home]:
    yield from for_one_test(functools.partial(developer_home, toolchain_tree), NOBODY)


# The agent: runs each command through sh -c (routed), prints a marker line per command with its status.
AGENT = textwrap.dedent(
    """
    import json, subprocess, sys
    for command in json.loads(sys.argv[1]):
        done = subprocess.run(command, shell=True, stdin=subprocess.DEVNULL)
        print(f"@@ {done.returncode} {command}", flush=True)
    """
)

TOOLCHAIN = [
    "git init -q . && git config user.name && git config init.defaultBranch",
    "echo x > a.txt && echo y > debug.log && git add -A && git commit -qm first && git log --format=%an && "
    "git status --porcelain --ignored",
    "python -c 'import sys; print(sys.prefix)'",
    "python3 -m venv .venv && .venv/bin/python -m pip --version",
    "python -m pip cache dir",
    "cargo --version",
    "greeter",
    "npm init -y >/dev/null && npm config get init-license && node -p 'require(\"./package.json\").license'",
    "npm pack ./hello-pkg >/dev/null && npm install --offline --no-audit --no-fund ./hello-pkg-1.0.0.tgz "
    ">/dev/null && node -p 'require(\"hello-pkg\")'",
    "npm config get cache",
    'cat "$npm_config_userconfig"',
]


def _run_agent_on_a_pty(home: Home, commands: list[str], *flags: str, user: bool = False) -> str:
    argv = [
        SUPERVISOR,
        "run",
        "--prompt",
        "tty",
        *flags,
        "--",
        sys.executable,
        "-c",
        AGENT,
        json.dumps(commands),
    ]
    child = on_a_pty(home, argv, user, timeout=150)
    child.expect(pexpect.EOF)
    child.close()
    out = child.before.replace("\r\n", "\n")
    assert child.exitstatus == 0, out
    return out


def on_a_pty(home: Home, argv: list[str], user: bool, timeout: float) -> pexpect.spawn:
    """``argv`` (as uid 65534 for ``user``) in the workdir, on a pty of the test's wide enough for a
    command's line and its status on one row."""
    argv = as_nobody(argv) if user else argv
    return pexpect.spawn(
        argv[0],
        argv[1:],
        env=home.env,
        cwd=str(home.work),
        encoding="utf-8",
        timeout=timeout,
        dimensions=(50, 250),
    )


def _statuses(out: str) -> dict[str, int]:
    return {m.group(2): int(m.group(1)) for m in re.finditer(r"^@@ (\d+) (.*)$", out, re.M)}


def _denials(home: Home) -> list[dict]:
    return [r for r in home.audit() if r.get("decision") == "deny"]


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_toolchain_runs_with_no_question_and_no_denial(request, user):
    home = request.getfixturevalue("nobody_dev_home" if user else "dev_home")
    out = _run_agent_on_a_pty(home, TOOLCHAIN, user=user)
    statuses = _statuses(out)
    assert statuses == {c: 0 for c in TOOLCHAIN}, out
    assert "[o]nce" not in out and "nono:" not in out, out
    assert _denials(home) == [], _denials(home)
    assert not SECRET_WORDS.search(out), out
    h = home.home
    # git read ~/.gitconfig (identity, default branch) and ~/.config/git/ignore (debug.log is ignored).
    assert "Nono Tester" in out and "\ntrunk\n" in out and "!! debug.log" in out, out
    # The toolchain's python is the pyenv-like version, reached through its shim.
    version = os.readlink(next((h / ".pyenv" / "versions").iterdir()))
    assert f"\n{version}\n" in out or f"{h}/.pyenv/versions/" in out, out
    # ~/.npmrc's settings reached npm (init-license), its token did not (npm prints "undefined" or nothing).
    assert out.count("ISC-nono") == 3 and "\ninit-license=ISC-nono\nfund=false\n" in out, out
    # The caches: nono's per-project cache, never the user's own (which unsandboxed tools trust).
    cache = h / ".cache" / "nono-shell" / "projects"
    assert f"{cache}/" in out, out
    assert not (h / ".npm").exists() and not (h / ".cache" / "pip").exists()
    assert any(cache.glob("*/npm/_cacache")), list(cache.rglob("*"))[:20]
    assert (home.work / ".venv" / "bin" / "python").exists()
    assert (home.work / "node_modules" / "hello-pkg" / "index.js").exists()


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_every_credential_file_stays_denied(request, user):
    home = request.getfixturevalue("nobody_dev_home" if user else "dev_home")
    commands = [f"cat ~/{relative}" for relative in SECRETS]
    out = _run_agent_on_a_pty(home, commands, "--prompt", "never", user=user)
    statuses = _statuses(out)
    assert set(statuses) == set(commands) and all(code != 0 for code in statuses.values()), out
    assert not SECRET_WORDS.search(out), out
    denied = {r["path"] for r in _denials(home)}
    assert {str(home.home / relative) for relative in SECRETS} <= denied, denied
    # The twin: bare, every one of them reads.
    for relative, content in SECRETS.items():
        bare = home.run(["cat", str(home.home / relative)], user=user)
        assert bare.returncode == 0 and content.strip() in bare.stdout, relative


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_the_agents_state_is_the_agents_not_its_commands(request, user):
    # The agent (claude-code's profile, named explicitly: the agent here is a python script) writes and reads
    # its state; the command it runs can do neither, nor read its credentials.
    home = request.getfixturevalue("nobody_dev_home" if user else "dev_home")
    settings = home.home / ".claude" / "settings.json"
    agent = textwrap.dedent(
        f"""
        import pathlib, subprocess, sys
        p = pathlib.Path({str(settings)!r})
        p.write_text('{{"permissions": {{"allow": ["Bash(*)"]}}}}')
        print("agent-wrote", p.read_text())
        print("agent-read-credentials", "claude-secret" in (p.parent / ".credentials.json").read_text())
        command = "echo '{{}}' > ~/.claude/settings.json; cat ~/.claude/.credentials.json"
        r = subprocess.run(command, shell=True)
        print("command-status", r.returncode)
        """
    )
    argv = [SUPERVISOR, "run", "--agent", "claude-code", "--", sys.executable, "-c", agent]
    result = home.run(argv, user=user, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    assert "agent-wrote" in result.stdout and "agent-read-credentials True" in result.stdout, result.stdout
    assert "command-status 1" in result.stdout, result.stdout
    assert settings.read_text() == '{"permissions": {"allow": ["Bash(*)"]}}'
    assert "claude-secret" not in result.stdout.replace("agent-read-credentials True", "")
    lines = [line for line in result.stderr.splitlines() if line.startswith("nono: denied")]
    assert any("~/.claude/settings.json [never-grantable]; never grantable" in line for line in lines), lines
    assert any("~/.claude/.credentials.json [never-grantable]" in line for line in lines), lines


@pytest.mark.skipif(shutil.which("java") is None, reason="no java on this machine")
@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_java_runs_with_no_question_and_no_line(request, user):
    """Every JVM start lists and writes its perf data in /tmp/hsperfdata_$USER, which the default profile
    does not grant (it would show a command every JVM of the user): refused as a silent probe
    (filesystem.probes), so neither asked about on the pty nor reported; the audit log has it."""
    home = request.getfixturevalue("nobody_dev_home" if user else "dev_home")
    source = home.work / "Hello.java"
    main = 'public static void main(String[] a) { System.out.println("hello-" + 42); }'
    _write(source, f"class Hello {{ {main} }}\n")
    if user:
        os.chown(source, NOBODY, NOBODY)
    # The twin: bare, the JVM makes (or finds) its perf data directory and lists it.
    bare = home.run(["java", "-version"], user=user)
    assert bare.returncode == 0, bare.stderr
    perf_data = Path("/tmp") / f"hsperfdata_{pwd.getpwuid(NOBODY if user else os.getuid()).pw_name}"
    assert perf_data.is_dir()
    out = _run_agent_on_a_pty(home, ["java Hello.java"], user=user)
    assert _statuses(out) == {"java Hello.java": 0} and "hello-42" in out, out
    assert "[o]nce" not in out and "nono:" not in out, out
    denials = _denials(home)
    assert denials and {r["rule"] for r in denials} == {"group:ungranted_probes"}, denials
    assert all(perf_data in (Path(r["path"]), *Path(r["path"]).parents) for r in denials), denials


@pytest.mark.skipif(shutil.which("tmux") is None, reason="no tmux on this machine")
@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_tmux_serves_the_sessions_commands_from_its_private_temp_dir(request, user):
    """tmux puts its server socket in $TMUX_TMPDIR/tmux-UID, else in /tmp beside the user's own server, which
    no command may create in (or reach). The command's environment points it at the session's temp dir: a
    server one command starts, the next one lists and stops."""
    home = request.getfixturevalue("nobody_dev_home" if user else "dev_home")
    start = 'tmux -L nono-test new-session -d "sleep 60" && ls "$TMUX_TMPDIR"/tmux-*/'
    stop = "tmux -L nono-test ls | cut -c1-2 && tmux -L nono-test kill-server"
    out = _run_agent_on_a_pty(home, [start, stop], user=user)
    assert _statuses(out) == {start: 0, stop: 0}, out
    lines = out.splitlines()
    assert "nono-test" in lines and "0:" in lines, out  # the socket, then the session listed
    assert "[o]nce" not in out and "nono:" not in out and _denials(home) == [], out


SYSTEM_CACHES = [  # (program, command): each reads a system cache, and as root tries to rewrite it
    ("fc-match", "fc-match sans"),
    ("whatis", "whatis ls"),
    ("man", "MANPAGER=cat man ls | head -3"),
]


@pytest.mark.parametrize("program,command", SYSTEM_CACHES, ids=[p for p, _ in SYSTEM_CACHES])
def test_system_caches_are_read_and_their_rewrites_refused_silently(dev_home, program, command):
    """fontconfig's font cache and man-db's index are read (system_read); as root both also try to write
    them and do without (filesystem.probes): the output is the bare one, with no line and no question."""
    if shutil.which(program) is None:
        pytest.skip(f"no {program} on this machine")
    bare = dev_home.run(["bash", "-c", command])
    out = _run_agent_on_a_pty(dev_home, [command])
    assert _statuses(out) == {command: bare.returncode}, out
    assert bare.stdout.strip() and bare.stdout.strip().splitlines()[0] in out, (bare.stdout, out)
    assert "[o]nce" not in out and "nono:" not in out, out
    assert {r["rule"] for r in _denials(dev_home)} <= {"group:ungranted_probes"}, _denials(dev_home)
