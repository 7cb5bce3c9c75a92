"""``nono-supervisor exec``: one command in a real Landlock per-command sandbox, each denial with its twin."""

from __future__ import annotations

import pytest

from conftest import FAKE_AWS, FAKE_KEY, SUPERVISOR

SECRETS = [(".ssh/id_rsa", FAKE_KEY), (".aws/credentials", "nono-test-aws-secret-41d2")]


@pytest.mark.parametrize(("relative", "secret"), SECRETS)
@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_exec_cannot_read_credentials(request, relative, secret, user):
    home = request.getfixturevalue("nobody_home" if user else "home")
    result = home.run([SUPERVISOR, "exec", "--", "cat", str(home.home / relative)], user=user)
    assert result.returncode == 1
    assert "Permission denied" in result.stderr
    assert secret not in result.stdout + result.stderr


@pytest.mark.parametrize(("relative", "secret"), SECRETS)
@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_twin_without_sandbox_reads_credentials(request, relative, secret, user):
    home = request.getfixturevalue("nobody_home" if user else "home")
    result = home.run(["cat", str(home.home / relative)], user=user)
    assert result.returncode == 0
    assert secret in result.stdout


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_writes_inside_workdir_succeed_and_outside_fail(request, user):
    home = request.getfixturevalue("nobody_home" if user else "home")
    outside = home.home / "outside.txt"
    script = f"echo inside > inside.txt && cat inside.txt; echo outside > {outside}; echo rc=$?"
    result = home.run([SUPERVISOR, "exec", "--", "bash", "-c", script], user=user)
    assert "inside" in result.stdout
    assert "rc=1" in result.stdout
    assert (home.work / "inside.txt").read_text() == "inside\n"
    assert not outside.exists()
    twin = home.run(["bash", "-c", script], user=user)
    assert "rc=0" in twin.stdout and outside.exists()


def test_private_tmpdir_is_writable_but_tmp_is_not(home):
    script = 'echo x > "$TMPDIR/f" && echo tmpdir-ok; echo y > /tmp/nono-test-escape-$$ ; echo rc=$?'
    result = home.run([SUPERVISOR, "exec", "--", "bash", "-c", script])
    assert "tmpdir-ok" in result.stdout and "rc=1" in result.stdout
    twin = home.run(
        ["bash", "-c", "echo y > /tmp/nono-test-twin-$$ && echo rc=$? && rm /tmp/nono-test-twin-$$"]
    )
    assert "rc=0" in twin.stdout


def test_deny_inside_allowed_home_is_enforced_by_siblings(home):
    (home.home / "notes.txt").write_text("my notes\n")
    script = f"cat {home.home}/notes.txt; cat {home.key}; echo rc=$?; ls {home.home}/.ssh; echo ls=$?"
    result = home.run([SUPERVISOR, "exec", "--allow", "~", "--", "bash", "-c", script])
    assert "my notes" in result.stdout
    assert FAKE_KEY not in result.stdout and "rc=1" in result.stdout and "ls=2" in result.stdout


def test_explicit_file_grant_overrides_the_group(home):
    result = home.run([SUPERVISOR, "exec", "--read-file", str(home.aws), "--", "cat", str(home.aws)])
    assert result.returncode == 0
    assert result.stdout == FAKE_AWS


def test_never_grantable_state_dir_stays_read_only(home):
    state = home.home / ".local" / "state" / "nono-shell"
    state.mkdir(parents=True)
    target = state / "audit.jsonl"
    result = home.run([SUPERVISOR, "exec", "--allow", "~", "--", "bash", "-c", f"echo forged >> {target}"])
    assert result.returncode == 1
    assert "forged" not in (target.read_text().splitlines() if target.exists() else [])


def test_net_block_denies_tcp_connect(home):
    import socket

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    port = listener.getsockname()[1]
    code = f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5); print('connected')"
    try:
        blocked = home.run([SUPERVISOR, "exec", "--net-block", "--", "python3", "-c", code])
        assert blocked.returncode != 0 and "connected" not in blocked.stdout
        assert "PermissionError" in blocked.stderr
        allowed = home.run([SUPERVISOR, "exec", "--", "python3", "-c", code])
        assert "connected" in allowed.stdout
    finally:
        listener.close()


def test_signal_scoping_stops_commands_from_signalling_outside(home):
    import subprocess

    victim = subprocess.Popen(["sleep", "30"])
    try:
        result = home.run([SUPERVISOR, "exec", "--", "kill", "-TERM", str(victim.pid)])
        assert result.returncode != 0
        assert victim.poll() is None
        twin = home.run(["kill", "-TERM", str(victim.pid)])
        assert twin.returncode == 0
        assert victim.wait(5) == -15
    finally:
        victim.kill()
        victim.wait()


def test_command_not_found_is_127(home):
    result = home.run([SUPERVISOR, "exec", "--", "no-such-command-xyz"])
    assert result.returncode == 127


def test_unknown_flag_and_bad_profile_are_usage_errors_on_one_line(home, tmp_path):
    bad = home.root / "bad.toml"
    bad.write_text('[filesystem]\nallow = ["/tmp"]\nfrobnicate = true\n')
    for argv in (["exec", "--frob", "--", "true"], ["exec", "--profile", str(bad), "--", "true"]):
        result = home.run([SUPERVISOR, *argv])
        assert result.returncode == 2
        assert len(result.stderr.strip().splitlines()) == 1
    result = home.run([SUPERVISOR, "exec", "--profile", str(bad), "--", "true"])
    assert str(bad) in result.stderr and "filesystem.frobnicate" in result.stderr


def test_log_reads_denials_by_command_and_as_json(home):
    home.run([SUPERVISOR, "exec", "--", "cat", str(home.key)])
    home.run([SUPERVISOR, "exec", "--", "true"])
    import json

    lines = home.run([SUPERVISOR, "log", "--denials", "--json"]).stdout.splitlines()
    records = [json.loads(line) for line in lines]
    assert [r["path"] for r in records] == [str(home.key)] and records[0]["decision"] == "deny"
    command = records[0]["command"]
    text = home.run([SUPERVISOR, "log", "--command", command]).stdout
    assert "~/.ssh/id_rsa [group:deny_credentials]; to allow: --read-file ~/.ssh/id_rsa" in text, text
    assert "start" in text
    assert home.run([SUPERVISOR, "log"]).stdout.count("start") == 2


def test_policy_says_what_enforces_it(home):
    assert "seccomp" in home.run([SUPERVISOR, "policy"]).stdout
    no_trap = home.run([SUPERVISOR, "policy", "--no-trap"]).stdout
    assert "Landlock only" in no_trap
    lost = [line for line in no_trap.splitlines() if line.startswith("not enforced with --no-trap: ")]
    for what in ("unix sockets", "metadata", "hard links", "inotify", "UDP"):  # says what it gives up
        assert any(what in line for line in lost), what
    assert "not enforced with --no-trap" not in home.run([SUPERVISOR, "policy"]).stdout


def test_allow_home_with_an_empty_home_is_refused_not_widened_to_root(home):
    env = {**home.env, "HOME": ""}
    result = home.run([SUPERVISOR, "exec", "--allow", "~", "--", "cat", "/etc/hostname"], env=env)
    assert result.returncode == 2 and "$HOME" in result.stderr


def test_sandboxed_root_has_no_capabilities_and_cannot_read_the_supervisors_environ(home):
    import os

    if os.geteuid() != 0:
        pytest.skip("only root has capabilities to drop")
    supervisor_pid = 'awk "{print \\$4}" /proc/$PPID/stat'  # the command's parent is the keeper
    script = f"grep CapEff /proc/self/status; cat /proc/$({supervisor_pid})/environ; echo rc=$?"
    env = {**home.env, "NONO_TEST_SUPERVISOR_SECRET": "env-secret-9b1"}
    result = home.run([SUPERVISOR, "exec", "--", "bash", "-c", script], env=env)
    assert "CapEff:\t0000000000000000" in result.stdout
    assert "env-secret-9b1" not in result.stdout and "rc=1" in result.stdout
    # Twin: an unsandboxed process of the same user reads another's environ (here a child's, which holds it).
    twin_script = "grep CapEff /proc/self/status; sleep 5 & sleep 0.2; cat /proc/$!/environ; kill $!"
    twin = home.run(["bash", "-c", twin_script], env=env)
    assert "CapEff:\t0000000000000000" not in twin.stdout and "env-secret-9b1" in twin.stdout


def test_system_secrets_are_denied_even_to_a_sandboxed_root(home):
    import os

    if os.geteuid() != 0 or not os.path.exists("/etc/shadow"):
        pytest.skip("needs root (its owner) and /etc/shadow")
    result = home.run([SUPERVISOR, "exec", "--", "cat", "/etc/shadow"])
    assert result.returncode == 1 and "root:" not in result.stdout
    assert "[group:deny_system_secrets]" in result.stderr
    assert "root:" in home.run(["cat", "/etc/shadow"]).stdout  # the twin
    listing = home.run([SUPERVISOR, "exec", "--", "ls", "/etc"])  # its directory is still listable
    assert listing.returncode == 0 and "passwd" in listing.stdout.split()


@pytest.mark.parametrize("user", [False, True], ids=["root", "nobody"])
def test_a_file_grant_of_a_directory_does_not_open_the_files_beneath_it(request, user):
    """--read-file DIR grants the one path; Landlock would give a directory's file rights to every file
    beneath it (found by the policy core's property test): no rule, and the file stays unreadable. Twin:
    --read DIR reads it, as does bare."""
    home = request.getfixturevalue("nobody_home" if user else "home")
    notes = home.home / "notes"
    notes.mkdir()
    (notes / "todo.txt").write_text("nono-test-private-notes\n")
    cat = ["cat", str(notes / "todo.txt")]
    refused = home.run([SUPERVISOR, "exec", "--read-file", str(notes), "--", *cat], user=user)
    assert refused.returncode == 1 and "nono-test-private-notes" not in refused.stdout, refused.stderr
    granted = home.run([SUPERVISOR, "exec", "--read", str(notes), "--", *cat], user=user)
    assert granted.returncode == 0 and granted.stdout == "nono-test-private-notes\n", granted.stderr
    assert home.run(cat, user=user).stdout == "nono-test-private-notes\n"
