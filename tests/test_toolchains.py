"""Issue 20, part B: toolchains quiet for real. What the user types into ``run -- bash`` runs in the agent
(bash), under its baseline, not routed: it must get what the agent's commands get (the per-project caches,
the token-free npmrc, TMPDIR), so that ``npm install``, ``npx`` and ``pip install`` ask nothing on a pty with
``--prompt tty``. Each scenario has its bare twin (the same lines typed into bash with no nono), root and
uid 65534.
"""

from __future__ import annotations

import io
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pexpect
import pytest
from test_toolchain_home import SECRET_WORDS, developer_home, toolchain_tree  # noqa: F401 - a fixture

from conftest import NOBODY, SUPERVISOR, Home, as_nobody, require_nobody

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Landlock is Linux")

PROMPT = "nono-test$ "


def _wheel(directory: Path) -> Path:
    """A minimal pure-python wheel (PEP 427), so that pip installs with no index and no network."""
    name = directory / "hello_wheel-1.0-py3-none-any.whl"
    info = "hello_wheel-1.0.dist-info"
    files = {
        "hello_wheel.py": "GREETING = 'hello from a wheel'\n",
        f"{info}/METADATA": "Metadata-Version: 2.1\nName: hello-wheel\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = "".join(f"{path},,\n" for path in files) + f"{info}/RECORD,,\n"
    with zipfile.ZipFile(name, "w") as whl:
        for path, text in {**files, f"{info}/RECORD": record}.items():
            whl.writestr(path, text)
    return name


def _tool_home(python: Path, owner: int = 0) -> Home:
    """The developer home, with an npm package (with a bin, for npx) packed and a wheel in the workdir, and
    npm's update notifier and pip's version check left on, as on a user's machine."""
    home = developer_home(python)
    package = home.work / "hello-pkg"
    (package / "package.json").write_text(
        '{"name": "hello-pkg", "version": "1.0.0", "main": "index.js", "bin": {"hello-pkg": "cli.js"}}\n'
    )
    (package / "cli.js").write_text("#!/usr/bin/env node\nconsole.log('hello from npx');\n")
    (package / "cli.js").chmod(0o755)
    scratch = {**os.environ, "npm_config_cache": str(home.root / "pack-cache")}
    subprocess.run(
        ["npm", "pack", "./hello-pkg"], cwd=home.work, env=scratch, capture_output=True, check=True
    )
    shutil.rmtree(home.root / "pack-cache", ignore_errors=True)
    _wheel(home.work)
    for name in ("npm_config_update_notifier", "PIP_DISABLE_PIP_VERSION_CHECK"):
        home.env.pop(name, None)
    home.env["PS1"] = PROMPT
    home.env["HISTFILE"] = "/dev/null"  # bash's history at exit: the shells' own files are issue 20's part A
    if owner:
        for path in [home.root, *home.root.rglob("*")]:
            os.lchown(path, owner, owner)
        home.owner = owner
    return home


@pytest.fixture
def tool_home(request, toolchain_tree):  # noqa: F811 - the fixture imported above
    user = getattr(request, "param", False)
    if user:
        require_nobody()
    h = _tool_home(toolchain_tree, NOBODY if user else 0)
    yield h
    shutil.rmtree(h.root, ignore_errors=True)


TYPED = [
    "npm install --no-audit --no-fund ./hello-pkg-1.0.0.tgz >/dev/null",
    "node -p 'require(\"hello-pkg\")'",
    "npx hello-pkg",
    "python3 -m venv .venv",
    ".venv/bin/python -m pip install --no-index ./hello_wheel-1.0-py3-none-any.whl >/dev/null",
    ".venv/bin/python -c 'import hello_wheel; print(hello_wheel.GREETING)'",
]


def _typed(home: Home, argv: list[str], user: bool) -> str:
    """Type each line of TYPED into ``argv`` (an interactive bash) on a pty, its status printed after it: a
    question would wait for its answer and time out as a deny, so the status arrives either way."""
    if user:
        argv = as_nobody(argv)
    log = io.StringIO()
    child = pexpect.spawn(
        argv[0],
        argv[1:],
        env=home.env,
        cwd=str(home.work),
        encoding="utf-8",
        timeout=120,
        dimensions=(50, 250),
    )
    child.logfile_read = log
    try:
        child.expect_exact(PROMPT)
        for number, line in enumerate(TYPED):
            child.sendline(f'{line}; echo "@@ $? {number}"')
            child.expect(r"@@ \d+ ")
            child.expect_exact(PROMPT)
        child.sendline("exit")
        child.expect(pexpect.EOF)
    finally:
        child.close(force=True)
    return log.getvalue().replace("\r\n", "\n")


def _statuses(out: str) -> list[int]:
    return [int(m) for m in re.findall(r"^@@ (\d+) ", out, re.M)]


@pytest.mark.parametrize("tool_home", [False, True], ids=["root", "nobody"], indirect=True)
def test_npm_npx_and_pip_typed_into_run_bash_ask_nothing(tool_home):
    home, user = tool_home, bool(tool_home.owner)
    out = _typed(home, [SUPERVISOR, "run", "--prompt", "tty", "--", "bash", "--norc"], user)
    assert _statuses(out) == [0] * len(TYPED), out
    assert "[o]nce" not in out and "nono:" not in out, out
    assert "hello from npx" in out and "hello from a wheel" in out and "\nhello\n" in out, out
    assert not SECRET_WORDS.search(out), out
    # The caches went to nono's per-project cache, never the user's own (which unsandboxed tools trust).
    h = home.home
    assert not (h / ".npm").exists() and not (h / ".cache" / "pip").exists(), list(h.rglob("*"))[:30]
    assert any((h / ".cache" / "nono-shell" / "projects").glob("*/npm/_cacache"))
    assert [r for r in home.audit() if r.get("decision") == "deny" and "/.npm" in r.get("path", "")] == []


@pytest.mark.parametrize("tool_home", [False, True], ids=["root", "nobody"], indirect=True)
def test_bare_twin_npm_npx_and_pip_typed_into_bash(tool_home):
    home, user = tool_home, bool(tool_home.owner)
    out = _typed(home, ["bash", "--norc"], user)
    assert _statuses(out) == [0] * len(TYPED), out
    assert "hello from npx" in out and "hello from a wheel" in out, out
