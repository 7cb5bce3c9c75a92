"""Issue 12: agent profiles, two policies per session, the toolchain and caches computed at start.

Detection and install trees are computed from fake install layouts (an npm prefix, a pipx venv, a native
installer's versions dir) built in a temp dir; the policies are checked through ``policy`` and the
Session itself, and end to end through ``run`` with a real program standing in for the agent.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import SUPERVISOR, Home
from nono_supervisor.policy import agents
from nono_supervisor.policy.profile import NEVER_GRANTABLE, Context, PolicyOptions
from nono_supervisor.report import CommandReport
from nono_supervisor.session import Session
from nono_supervisor.terminal.consent import Consent

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="Linux sessions")


def _ctx(home: Home) -> Context:
    return Context(
        workdir=str(home.work), home=str(home.home), tmpdir="/tmp", config_dir=str(home.root / "c")
    )


def _script(path: Path, text: str = "#!/bin/sh\nexit 0\n") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)
    return path


def _npm_prefix(root: Path, package: str, entry: str, bin_name: str) -> tuple[Path, Path]:
    """An `npm install -g --prefix root package` layout: bin/NAME -> ../lib/node_modules/PKG/ENTRY."""
    pkg = root / "lib" / "node_modules" / package
    target = _script(pkg / entry, "#!/usr/bin/env node\n")
    (pkg / "node_modules").mkdir(parents=True)
    (pkg / "package.json").write_text(json.dumps({"name": package}))
    link = root / "bin" / bin_name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(os.path.relpath(target, link.parent))
    return link, pkg


# --- Detection and install trees -------------------------------------------------------------------------


@pytest.mark.parametrize(
    "package,entry,name,profile",
    [
        ("@anthropic-ai/claude-code", "bin/claude.exe", "claude", "claude-code"),
        ("@openai/codex", "bin/codex.js", "codex", "codex"),
        ("@google/gemini-cli", "bundle/gemini.js", "gemini", "gemini"),
        ("opencode-ai", "bin/opencode.exe", "opencode", "opencode"),
    ],
)
def test_an_npm_installed_agent_is_detected_and_its_package_is_its_install_tree(
    home, package, entry, name, profile
):
    link, pkg = _npm_prefix(home.root / "prefix", package, entry, name)
    assert agents.detect(str(link), _ctx(home)) == profile
    roots = agents.install_roots(str(link), {"PATH": "/usr/bin:/bin"}, str(home.home))
    assert roots[0] == str(pkg)
    assert "/usr/bin" in roots  # its #! interpreter (node, found on PATH) and that one's tree
    # Renamed, it is still found by the package on its real path.
    other = home.root / "elsewhere" / "my-agent"
    other.parent.mkdir()
    other.symlink_to(os.path.realpath(link))
    assert agents.detect(str(other), _ctx(home)) == profile


def test_a_venv_agent_gets_its_venv_and_the_base_interpreter(home):
    base = Path(sys.base_prefix)
    venv = home.home / ".local" / "share" / "pipx" / "venvs" / "aider-chat"
    (venv / "pyvenv.cfg").parent.mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text(f"home = {base / 'bin'}\n")
    python = venv / "bin" / "python"
    python.parent.mkdir()
    python.symlink_to(sys.executable)
    aider = _script(venv / "bin" / "aider", f"#!{python}\nimport aider\n")
    link = home.home / ".local" / "bin" / "aider"
    link.parent.mkdir(parents=True)
    link.symlink_to(aider)
    assert agents.detect(str(link), _ctx(home)) == "aider"
    roots = agents.install_roots(str(link), {"PATH": "/usr/bin"}, str(home.home))
    assert roots[0] == str(venv)
    assert os.path.realpath(sys.base_prefix) in roots or os.path.realpath(sys.executable).startswith(
        tuple(roots[1:])
    ), roots


def test_a_native_installer_layout_never_grants_home_itself(home):
    version = _script(home.home / ".local" / "share" / "claude" / "versions" / "2.1.0", "\x7fELF")
    link = home.home / ".local" / "bin" / "claude"
    link.parent.mkdir(parents=True)
    link.symlink_to(version)
    assert agents.detect(str(link), _ctx(home)) == "claude-code"
    roots = agents.install_roots(str(link), {}, str(home.home))
    assert roots == [str(version.parent)]
    for program in (_script(home.home / "bin" / "tool"), _script(home.home / "tool2")):
        root = agents.install_roots(str(program), {}, str(home.home))[0]
        assert root != str(home.home) and not str(home.home).startswith(root + "/"), root


def test_an_unknown_program_has_no_agent_profile(home):
    assert agents.detect("/usr/bin/python3", _ctx(home)) is None
    assert agents.pick_agent(None, "/usr/bin/python3", _ctx(home), {}) is None
    assert agents.pick_agent("none", str(_script(home.root / "claude")), _ctx(home), {}) is None
    assert agents.pick_agent("codex", "/usr/bin/python3", _ctx(home), {}).name == "codex"


def test_a_version_managers_shim_resolves_to_the_program_it_runs(home):
    root = home.home / ".pyenv"
    real = _script(root / "versions" / "3.99" / "bin" / "aider")
    _script(root / "libexec" / "pyenv", f'#!/bin/sh\n[ "$1" = which ] && echo {real}\n')
    shim = _script(
        root / "shims" / "aider", f'#!/usr/bin/env bash\nexec "{root}/libexec/pyenv" exec "$program" "$@"\n'
    )
    assert agents.resolve_version_shim(str(shim), {"PATH": "/usr/bin:/bin"}).program == str(real)
    assert agents.resolve_version_shim("/bin/sh", {}) is None


def test_shell_scripts_are_recognised_as_the_kernel_would_run_them(tmp_path):
    cases = {
        "#!/bin/sh\n": ("sh", []),
        "#!/bin/bash -e -x\n": ("bash", ["-e -x"]),
        "#!/usr/bin/env bash\n": ("bash", []),
        "#!/usr/bin/env -S bash -e\n": ("bash", ["-e"]),
        "#!/usr/bin/env node\n": None,
        "no shebang\n": None,
    }
    for text, expected in cases.items():
        path = _script(tmp_path / "s", text)
        assert agents.shell_of_script(str(path)) == expected, text


# --- The toolchain -----------------------------------------------------------------------------------------


def test_the_toolchain_is_what_path_resolves_into(home):
    h = home.home
    _script(h / ".pyenv" / "shims" / "python")
    _script(h / ".pyenv" / "libexec" / "pyenv")
    outside = home.root / "opt-python"
    (outside / "bin").mkdir(parents=True)
    (h / ".pyenv" / "versions").mkdir()
    (h / ".pyenv" / "versions" / "3.12").symlink_to(outside)
    _script(h / ".cargo" / "bin" / "rustup")
    (h / ".rustup" / "toolchains").mkdir(parents=True)
    venv = h / ".local" / "share" / "pipx" / "venvs" / "black"
    (venv / "bin").mkdir(parents=True)
    (venv / "pyvenv.cfg").write_text("home = /usr/bin\n")
    _script(venv / "bin" / "black")
    (h / ".local" / "bin").mkdir(parents=True)
    (h / ".local" / "bin" / "black").symlink_to(venv / "bin" / "black")
    for sub in ("bin", "pkg/mod", "src/github.com/someone/other-project"):
        (h / "go" / sub).mkdir(parents=True)
    project_venv = home.work / ".venv" / "bin"
    project_venv.mkdir(parents=True)
    (project_venv / "python").symlink_to(sys.executable)
    dirs = [
        h / ".pyenv/shims",
        h / ".cargo/bin",
        h / ".local/bin",
        h / "go/bin",
        project_venv,
        "/usr/bin",
        "/bin",
    ]
    path = ":".join(map(str, dirs)) + ":relative/bin:"
    found = agents.toolchain({"PATH": path}, str(h), skip=(str(home.work),))
    read = set(found.read)
    assert {str(h / ".pyenv"), str(outside), str(h / ".cargo"), str(h / ".rustup"), str(venv)} <= read, read
    assert {str(h / ".local" / "bin"), str(h / "go" / "bin"), str(h / "go" / "pkg" / "mod")} <= read, read
    assert str(h / "go") not in read and str(h) not in read and str(h / ".local") not in read, read
    assert not any(r.startswith(str(home.work)) for r in read), read  # the workdir is granted anyway
    assert os.path.realpath(sys.base_prefix) in read or any(
        os.path.realpath(sys.executable).startswith(r + "/") for r in read
    ), read  # the project venv's python leads into its base interpreter's tree
    assert not any(r in ("/usr", "/usr/bin", "/bin") for r in read), read  # the system is system_read's
    assert set(found.path_dirs) == {
        str(h / ".pyenv/shims"),
        str(h / ".cargo/bin"),
        str(h / ".local/bin"),
        str(h / "go/bin"),
    }


def test_the_path_directories_are_never_writable_by_a_command_but_named(home):
    tools = home.home / ".local" / "bin"
    tools.mkdir(parents=True)
    env = {**home.env, "PATH": f"{tools}:{home.env['PATH']}"}
    result = home.run(
        [SUPERVISOR, "exec", "--allow", "~", "--", "sh", "-c", f"echo x > {tools}/git"], env=env
    )
    assert result.returncode != 0
    assert "nono: denied create ~/.local/bin/git [runs-later]; to allow: --write-file ~/.local/bin/git" in (
        result.stderr
    )
    assert not (tools / "git").exists()
    gitconfig = home.run([SUPERVISOR, "exec", "--allow", "~", "--", "sh", "-c", "echo '[x]' >> ~/.gitconfig"])
    assert "~/.gitconfig [runs-later]" in gitconfig.stderr, gitconfig.stderr
    # The hint is a flag that, passed, makes it succeed (the human's explicit grant of that one path).
    named_tool = home.run(
        [SUPERVISOR, "exec", "--write-file", f"{tools}/git", "--", "sh", "-c", f"echo x > {tools}/git"],
        env=env,
    )
    assert named_tool.returncode == 0 and (tools / "git").read_text() == "x\n", named_tool.stderr
    # Shell rc files stay a deny group: unwritable under --allow ~, writable when named (CONTRACT).
    wide = home.run([SUPERVISOR, "exec", "--allow", "~", "--", "sh", "-c", "echo x >> ~/.bashrc"])
    assert wide.returncode != 0 and "[group:deny_shell_configs]" in wide.stderr, wide.stderr
    named = home.run(
        [SUPERVISOR, "exec", "--allow-file", "~/.bashrc", "--", "sh", "-c", "echo x >> ~/.bashrc"]
    )
    assert named.returncode == 0, named.stderr


# --- Caches, npmrc, probes -------------------------------------------------------------------------------


def _session(home: Home, agent=None, **kw) -> Session:
    return Session.create(PolicyOptions(), dict(home.env), workdir=str(home.work), agent=agent, **kw)


def test_commands_and_a_profileless_agent_cache_in_nonos_own_per_project_cache(home):
    session = _session(home)
    try:
        env = session.services.command_env(home.env)
        cache = Path(env["XDG_CACHE_HOME"])
        assert cache.parent == home.home / ".cache" / "nono-shell" / "projects" and cache.is_dir()
        assert cache.name.startswith("project-") and oct(cache.stat().st_mode & 0o777) == "0o700"
        for name, sub in [("PIP_CACHE_DIR", "pip"), ("npm_config_cache", "npm"), ("GOCACHE", "go-build")]:
            assert env[name] == str(cache / sub)
        assert (
            session.state.access_index(session.state.policy)
            .verdict(str(cache / "pip" / "x"), "create")
            .allowed
        )
        assert (
            not session.state.access_index(session.state.policy)
            .verdict(str(home.home / ".cache" / "pip"), "create")
            .allowed
        )
        # `run -- bash`: what the user types runs in the agent, and gets what the agent's commands get
        assert session.services.command_env(home.env, agent=True)["PIP_CACHE_DIR"] == env["PIP_CACHE_DIR"]
    finally:
        session.close()
    profiled = _session(home, agent=agents.load_agent("claude-code", _ctx(home)))
    try:
        # An agent with a profile loads nothing from caches its commands can write (it holds credentials)
        agent_env = profiled.services.command_env(home.env, agent=True)
        assert "PIP_CACHE_DIR" not in agent_env and "XDG_CACHE_HOME" not in agent_env
    finally:
        profiled.close()
    other = home.root / "other-project"
    other.mkdir()
    second = Session.create(PolicyOptions(), dict(home.env), workdir=str(other))
    try:
        assert second.services.command_env(home.env)["XDG_CACHE_HOME"] != str(cache)  # one cache per project
    finally:
        second.close()


def test_npmrc_settings_reach_commands_its_tokens_do_not(home):
    (home.home / ".npmrc").write_text(
        "registry=https://registry.example.invalid/\n//registry.npmjs.org/:_authToken=npm_SECRET\n"
        "_auth=c2VjcmV0\nemail=me@example.invalid\nsave-exact=true\n"
    )
    session = _session(home)
    try:
        env = session.services.command_env(home.env)
        copy = Path(env["npm_config_userconfig"])
        text = copy.read_text()
        assert "registry=https://registry.example.invalid/" in text and "save-exact=true" in text
        assert "SECRET" not in text and "c2VjcmV0" not in text and "email" not in text
        index = session.state.access_index(session.state.policy)
        assert index.verdict(str(copy), "read").allowed and not index.verdict(str(copy), "write").allowed
        assert index.verdict(str(home.home / ".npmrc"), "read").rule == "group:deny_credentials"
    finally:
        session.close()


def test_trace_marker_probes_are_denied_without_a_question_or_a_line(home):
    session = _session(home)
    try:
        policy = session.state.policy
        verdict = session.state.access_index(policy).verdict("/sys/kernel/tracing/trace_marker", "write")
        assert not verdict.allowed and verdict.rule == "group:deny_probes"
        assert not Consent(session, "c", "bun", None).askable(verdict.rule)
        report = CommandReport(session.services.audit, policy, "c", ["bun"], str(home.work))

        class Denial:
            op, path, rule, is_dir, pid = "write", "/sys/kernel/tracing/trace_marker", verdict.rule, False, 0

        report.record("deny", Denial)
        assert report.lines() == []  # silent: not on the command's stderr
        assert any(r.get("path") == Denial.path for r in home.audit())  # the audit log has it
    finally:
        session.close()


def test_the_jvms_perf_data_is_a_silent_probe_that_a_grant_still_grants(home):
    """/tmp/hsperfdata_$USER (filesystem.probes): not granted, so refused, attributed to its group (never
    asked, no line); it is no deny, so a grant of /tmp grants it, and Landlock gets no rule for it."""
    perf_data = "/tmp/hsperfdata_nono-test"
    session = _session(home)
    try:
        policy = session.state.policy
        index = session.state.access_index(policy)
        for op in ("read", "write"):
            verdict = index.verdict(f"{perf_data}/4242", op)
            assert not verdict.allowed and verdict.rule == "group:ungranted_probes"
        assert index.verdict("/tmp/other", "read").rule == "not granted"  # the twin: only the probe is
        assert not Consent(session, "c", "java", None).askable("group:ungranted_probes")
        report = CommandReport(session.services.audit, policy, "c", ["java"], str(home.work))

        class Denial:
            op, path, rule, is_dir, pid = "read", perf_data, "group:ungranted_probes", True, 0

        report.record("deny", Denial)
        assert report.lines() == []
        assert any(r.get("rule") == "group:ungranted_probes" for r in home.audit())
    finally:
        session.close()
    granted = Session.create(PolicyOptions(allow=("/tmp",)), dict(home.env), workdir=str(home.work))
    try:
        assert granted.state.access_index(granted.state.policy).verdict(f"{perf_data}/4242", "write").allowed
        if sys.platform.startswith("linux"):
            from nono_supervisor.linux.landlock import abi_version, compile_plan

            policy = granted.state.policy
            assert policy.probes  # the probes add no Landlock rule and carve nothing out of /tmp
            without = replace(policy, probes=())
            # /tmp is shared: compare on a moment it held still (the plans before and after agree)
            for _attempt in range(20):
                before = compile_plan(without, abi_version())
                probed = compile_plan(policy, abi_version())
                if compile_plan(without, abi_version()) == before:
                    break
            assert probed == before
    finally:
        granted.close()


# --- Two policies -----------------------------------------------------------------------------------------


def test_the_agents_state_is_its_own_and_sealed_from_commands(home):
    claude = agents.load_agent("claude-code", _ctx(home))
    session = _session(home, agent=claude)
    try:
        state = home.home / ".claude" / "settings.json"
        commands = session.state.access_index(session.state.policy)
        agent = session.state.access_index(session.state.agent_policy())
        for op in ("read", "write"):
            assert agent.verdict(str(state), op).allowed
            assert commands.verdict(str(state), op).rule == NEVER_GRANTABLE
        credentials = str(home.home / ".claude" / ".credentials.json")
        assert (
            agent.verdict(credentials, "read").allowed and not commands.verdict(credentials, "read").allowed
        )
        tmp = str(
            home.home / ".claude.json.tmp.123.abcdef"
        )  # its atomic write, carried out by the supervisor
        assert agent.verdict(tmp, "create").allowed and not commands.verdict(tmp, "create").allowed
        assert not agent.verdict(str(home.home / ".claude.jsonX"), "create").allowed
        assert agent.verdict(str(home.home), "read").allowed  # listing ~ (its names only)
        assert not agent.verdict(str(home.home / "notes.txt"), "read").allowed
        assert not agent.verdict(str(home.key), "read").allowed
    finally:
        session.close()
    # Naming its credentials explicitly lifts the deny group inside the sealed state for nobody.
    explicit = Session.create(
        PolicyOptions(read_file=("~/.claude/.credentials.json",)),
        dict(home.env),
        workdir=str(home.work),
        agent=claude,
    )
    try:
        verdict = explicit.state.access_index(explicit.state.policy).verdict(credentials, "read")
        assert verdict.rule == NEVER_GRANTABLE and not verdict.allowed
    finally:
        explicit.close()
    # Without an agent profile, the agent's credential files are a deny group like any other.
    plain = _session(home)
    try:
        assert (
            plain.state.access_index(plain.state.policy).verdict(credentials, "read").rule
            == "group:deny_credentials"
        )
    finally:
        plain.close()


def test_policy_prints_both_policies(home):
    out = home.run([SUPERVISOR, "policy", "--agent", "claude-code"]).stdout
    assert "agent baseline: claude-code (built-in claude-code)" in out, out
    assert "  allow dir  ~/.claude  [agent claude-code]" in out, out
    assert "  deny       ~/.claude  [never-grantable]" in out, out  # in the commands' policy
    assert "DISABLE_AUTOUPDATER=1" in out
    plain = home.run([SUPERVISOR, "policy"]).stdout
    assert "agent baseline: the commands' policy above (no agent profile" in plain
    data = json.loads(home.run([SUPERVISOR, "policy", "--agent", "codex", "--format", "json"]).stdout)
    assert (
        data["agent"]["profile"] == "codex"
        and str(home.home / ".codex") in data["agent"]["sealed_from_commands"]
    )
    bad = home.run([SUPERVISOR, "policy", "--agent", "no-such-agent"])
    assert bad.returncode == 2 and "no profile named 'no-such-agent'" in bad.stderr
    nosection = home.run([SUPERVISOR, "policy", "--agent", "strict"])
    assert nosection.returncode == 2 and "has no [agent] section" in nosection.stderr


def test_run_picks_the_profile_from_the_resolved_program(home):
    link, pkg = _npm_prefix(home.root / "prefix", "@openai/codex", "bin/codex.js", "codex")
    env = {**home.env, "PATH": f"{link.parent}:{home.env['PATH']}"}
    out = home.run([SUPERVISOR, "run", "--dry-run", "--", "codex", "exec", "hi"], env=env).stdout
    assert "agent baseline: codex" in out and f"read  dir  {pkg}  [agent codex: install tree]" in out, out
    none = home.run([SUPERVISOR, "run", "--dry-run", "--agent", "none", "--", "codex"], env=env).stdout
    assert "no agent profile" in none


AGENT = textwrap.dedent(
    """
    import json, os, pathlib, subprocess, sys
    home = pathlib.Path(os.environ["HOME"])
    state = home / ".claude" / "projects.json"
    state.write_text("by the agent")
    package = pathlib.Path(sys.argv[1])
    out = {
        "agent_state": state.read_text(),
        "agent_reads_its_package": (package / "package.json").read_text() != "",
        "command": subprocess.run(
            f"cat ~/.claude/projects.json; echo no >> ~/.claude/settings.json; cat {package}/package.json",
            shell=True, capture_output=True, text=True,
        ).__dict__,
    }
    print(json.dumps(out, default=str))
    """
)


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_end_to_end_the_agent_gets_its_state_and_tree_its_commands_neither(request, user):
    home = request.getfixturevalue("nobody_home" if user else "home")
    pkg = home.root / "prefix" / "lib" / "node_modules" / "@anthropic-ai" / "claude-code"
    program = _script(pkg / "bin" / "claude", f"#!{sys.executable}\n" + AGENT)
    (pkg / "package.json").write_text('{"name": "@anthropic-ai/claude-code"}')
    (pkg / "node_modules").mkdir()
    if home.owner:
        for path in [home.root / "prefix", *(home.root / "prefix").rglob("*")]:
            os.lchown(path, home.owner, home.owner)
    result = home.run([SUPERVISOR, "run", "--", str(program), str(pkg)], user=user, stdin=subprocess.DEVNULL)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out["agent_state"] == "by the agent" and out["agent_reads_its_package"]
    command = out["command"]
    assert command["returncode"] != 0 and "by the agent" not in command["stdout"]
    assert "~/.claude/projects.json [never-grantable]; never grantable" in command["stderr"], command
    assert "~/.claude/settings.json [never-grantable]" in command["stderr"], command
    assert "claude-code/package.json [not granted]" in command["stderr"], command
    assert (home.home / ".claude").is_dir() and oct((home.home / ".claude").stat().st_mode & 0o777) == "0o700"


def test_run_says_what_codex_needs_under_nono(home):
    # The first lines of run: Codex's own sandbox cannot start inside nono, so it is told how to run it.
    link, _pkg = _npm_prefix(home.root / "prefix", "@openai/codex", "bin/codex.js", "codex")
    os.unlink(link.resolve())
    _script(link.resolve(), "#!/bin/sh\nexit 0\n")
    env = {**home.env, "PATH": f"{link.parent}:{home.env['PATH']}"}
    told = home.run([SUPERVISOR, "run", "--", "codex", "exec", "hi"], env=env, stdin=subprocess.DEVNULL)
    assert told.returncode == 0, told.stderr
    assert "run it with --sandbox danger-full-access" in told.stderr.lower(), told.stderr
    quiet = home.run(
        [SUPERVISOR, "run", "--", "codex", "exec", "--sandbox", "danger-full-access", "hi"],
        env=env,
        stdin=subprocess.DEVNULL,
    )
    assert quiet.returncode == 0 and "danger-full-access" not in quiet.stderr, quiet.stderr


def test_opencodes_npm_cache_is_its_own_state_not_the_users_or_its_commands(home):
    """Issue 20: opencode installs provider packages with npm at first use, into ~/.npm (the user's cache,
    denied) from its second run. Its profile points npm's cache into its own state, sealed from commands."""
    opencode = agents.load_agent("opencode", _ctx(home))
    cache = opencode.env["npm_config_cache"]
    assert cache == str(home.home / ".cache" / "opencode" / "npm")
    assert any(cache.startswith(state + "/") for state in opencode.state_paths())
    session = _session(home, agent=opencode)
    try:
        index = session.state.access_index(session.state.policy)
        assert not index.verdict(os.path.join(cache, "_cacache", "x"), "create").allowed  # not its commands'
        assert (
            session.state.access_index(session.state.agent_policy())
            .verdict(cache + "/_cacache/x", "create")
            .allowed
        )
    finally:
        session.close()
