"""Seatbelt profile generation: golden profiles, SBPL well-formedness, rule order and escaping.

Regenerate the goldens after a reviewed change with ``NONO_UPDATE_GOLDEN=1 pytest tests/test_seatbelt.py``
and read the diff before committing it.
"""

from __future__ import annotations

import ast
import re
from dataclasses import replace
from pathlib import Path

import pytest

from conftest import GOLDEN, matches_golden
from nono_supervisor.errors import UsageError
from nono_supervisor.macos.seatbelt import FORBIDDEN_OPERATIONS, generate_profile, sbpl_string
from nono_supervisor.policy.profile import Context, Deny, Grant, Policy, PolicyOptions, resolve_policy

HERE = Path(__file__).parent
DATA = HERE / "data" / "macos"

CTX = Context(
    workdir="/Users/alice/project",
    home="/Users/alice",
    tmpdir="/private/var/folders/xy/nono-abc",
    platform="macos",
    config_dir="/Users/alice/.config/nono-shell",
    protected=(
        "/Users/alice/.config/nono-shell",
        "/Users/alice/.local/state/nono-shell",
        "/tmp/nono-shell-501",
        "/opt/homebrew/lib/python3.11/site-packages/supervisor",
        "/opt/homebrew/lib/python3.11/site-packages/nono_shell",
        "/Users/alice/.local/share/nono-shell/shims",
    ),
)
SOCKET = "/tmp/nono-shell-501/supervisor.sock"


# --------------------------------------------------------------------------------------------------------
# A tiny SBPL reader: enough Scheme to prove the profile is well formed and to look at its rules.
# --------------------------------------------------------------------------------------------------------


class Str(str):
    """A string literal, as opposed to a symbol."""


class SbplSyntaxError(ValueError):
    pass


def tokenize(text: str) -> list[str | Str]:
    tokens: list[str | Str] = []
    i, n = 0, len(text)
    while i < n:
        c = text[i]
        if c in " \t\r\n":
            i += 1
        elif c == ";":
            while i < n and text[i] != "\n":
                i += 1
        elif c in "()":
            tokens.append(c)
            i += 1
        elif c == '"' or text.startswith('#"', i):
            raw = c == "#"
            i += 2 if raw else 1
            out: list[str] = []
            while True:
                if i >= n:
                    raise SbplSyntaxError("unterminated string")
                c = text[i]
                if c == '"':
                    i += 1
                    break
                if c == "\\" and not raw:
                    if i + 1 >= n or text[i + 1] not in '"\\':
                        raise SbplSyntaxError(f"unexpected escape at {i}: {text[i : i + 2]!r}")
                    out.append(text[i + 1])
                    i += 2
                    continue
                if c == "\n":
                    raise SbplSyntaxError("newline inside a string")
                out.append(c)
                i += 1
            tokens.append(Str("".join(out)))
        else:
            start = i
            while i < n and text[i] not in ' \t\r\n();"':
                i += 1
            tokens.append(text[start:i])
    return tokens


def parse(text: str) -> list:
    """Top-level forms as nested lists; raises on unbalanced parentheses."""
    stack: list[list] = [[]]
    for tok in tokenize(text):
        if tok == "(" and not isinstance(tok, Str):
            stack.append([])
        elif tok == ")" and not isinstance(tok, Str):
            if len(stack) == 1:
                raise SbplSyntaxError("unbalanced ')'")
            done = stack.pop()
            stack[-1].append(done)
        else:
            stack[-1].append(tok)
    if len(stack) != 1:
        raise SbplSyntaxError("unbalanced '('")
    return stack[0]


def rules(text: str) -> list[tuple[str, tuple[str, ...], list]]:
    """(action, operations, filters) for every allow/deny form, in order."""
    out = []
    for form in parse(text):
        if form and form[0] in ("allow", "deny"):
            ops = tuple(x for x in form[1:] if isinstance(x, str) and not isinstance(x, Str))
            filters = [x for x in form[1:] if isinstance(x, list)]
            out.append((form[0], ops, filters))
    return out


def path_filters(filters: list) -> list[tuple[str, str]]:
    return [(f[0], str(f[1])) for f in filters if f and f[0] in ("literal", "subpath")]


def message(filters: list) -> str | None:
    for f in filters:
        if f[:2] == ["with", "message"]:
            return str(f[2])
    return None


def index_of(rs, action: str, op: str, kind: str, path: str, *, last: bool = False) -> int:
    found = [
        i
        for i, (a, ops, filters) in enumerate(rs)
        if a == action and op in ops and (kind, path) in path_filters(filters)
    ]
    if not found:
        raise AssertionError(f"no ({action} {op} ({kind} {path!r}))")
    return found[-1] if last else found[0]


def _op_matches(pattern: str, op: str) -> bool:
    return pattern == op or pattern == "default" or (pattern.endswith("*") and op.startswith(pattern[:-1]))


def _filter_matches(f: list, path: str) -> bool | None:
    """True/False for a path filter, None for a filter that is not about paths (target, global-name...)."""
    if f[0] == "literal":
        return path == f[1]
    if f[0] == "subpath":
        return path == f[1] or path.startswith(f[1].rstrip("/") + "/")
    if f[0] == "regex":
        return re.search(f[1], path) is not None
    if f[:2] == ["with", "message"]:
        return True
    return None


def decide(text: str, op: str, path: str) -> str:
    """Seatbelt's answer for ``op`` on ``path`` under last-match-wins: "allow" or "deny"."""
    decision = "deny"
    for action, ops, filters in rules(text):
        if not any(_op_matches(o, op) for o in ops):
            continue
        matches = [_filter_matches(f, path) for f in filters if f[:2] != ["with", "message"]]
        if None in matches or (matches and not any(matches)):
            continue
        decision = action
    return decision


# --------------------------------------------------------------------------------------------------------
# Golden profiles
# --------------------------------------------------------------------------------------------------------


def policy_for(profile: str, **options) -> Policy:
    if profile.endswith(".toml"):
        profile = str(DATA / profile)
    return resolve_policy(PolicyOptions(profile=profile, **options), CTX)


CASES = {
    # name: (profile, options, marker, supervisor_socket)
    "default": ("default", {}, None, None),
    "default-marked": ("default", {"read_file": ("~/.aws/credentials",)}, "s1-c42", None),
    "file-exception": ("file-exception.toml", {}, "s1-c1", None),
    "net-blocked": ("net-blocked.toml", {}, "s1-c2", SOCKET),
    "odd-paths": ("odd-paths.toml", {}, "s1-c3", None),
    "extends": ("extends.toml", {}, "s1-c4", SOCKET),
    "strict-flags": ("strict", {"allow": ("~/src/lib",), "deny": ("lib/vendor",)}, "s1-c5", None),
}


def render(name: str) -> str:
    profile, options, marker, socket = CASES[name]
    return generate_profile(policy_for(profile, **options), marker, supervisor_socket=socket)


@pytest.mark.parametrize("name", sorted(CASES))
def test_profile_matches_golden(name: str) -> None:
    matches_golden(render(name), GOLDEN / "seatbelt" / f"{name}.sb")


@pytest.mark.parametrize("name", sorted(CASES))
def test_profile_is_deterministic_and_balanced(name: str) -> None:
    text = render(name)
    assert text == render(name)
    forms = parse(text)
    assert forms[0] == ["version", "1"]
    assert forms[1][:2] == ["deny", "default"]


@pytest.mark.parametrize("name", sorted(CASES))
def test_forbidden_operations_are_never_allowed(name: str) -> None:
    for action, ops, _ in rules(render(name)):
        if action == "allow":
            assert "default" not in ops
            for op in ops:
                assert op not in FORBIDDEN_OPERATIONS
                assert not (op.endswith("*") and any(f.startswith(op[:-1]) for f in FORBIDDEN_OPERATIONS)), op


@pytest.mark.parametrize("name", sorted(CASES))
def test_every_deny_carries_the_command_marker(name: str) -> None:
    _, _, marker, _ = CASES[name]
    for action, _, filters in rules(render(name)):
        if action == "deny":
            assert message(filters) == (f"nono:{marker}" if marker else None)
        else:
            assert message(filters) is None


# --------------------------------------------------------------------------------------------------------
# Order: exceptions after their deny, protected paths last
# --------------------------------------------------------------------------------------------------------


def test_file_exception_comes_after_the_deny_it_overrides() -> None:
    rs = rules(render("file-exception"))
    creds = "/Users/alice/.aws/credentials"
    known = "/Users/alice/.ssh/known_hosts"
    assert index_of(rs, "allow", "file-read-data", "literal", creds, last=True) > index_of(
        rs, "deny", "file-read-data", "subpath", "/Users/alice/.aws"
    )
    assert index_of(rs, "allow", "file-write*", "literal", known, last=True) > index_of(
        rs, "deny", "file-write*", "subpath", "/Users/alice/.ssh"
    )
    # A write-only exception does not re-open reading.
    with pytest.raises(AssertionError):
        index_of(rs, "allow", "file-read-data", "literal", known)


def test_nested_deny_inside_a_directory_exception_still_holds() -> None:
    """`--read ~/.aws` re-opens ~/.aws, but a deny of ~/.aws/sso inside it must come after the re-open."""
    rs = rules(render("file-exception"))
    reopen = index_of(rs, "allow", "file-read-data", "subpath", "/Users/alice/.aws")
    assert reopen > index_of(rs, "deny", "file-read-data", "subpath", "/Users/alice/.aws")
    last_sso_deny = max(
        i
        for i, (a, ops, f) in enumerate(rs)
        if a == "deny" and "file-read-data" in ops and ("subpath", "/Users/alice/.aws/sso") in path_filters(f)
    )
    assert last_sso_deny > reopen


@pytest.mark.parametrize(
    ("op", "path", "expected"),
    [
        ("file-read-data", "/Users/alice/.aws/credentials", "allow"),
        ("file-read-data", "/Users/alice/.aws/config", "allow"),
        ("file-write-data", "/Users/alice/.aws/config", "deny"),
        ("file-read-data", "/Users/alice/.aws/sso/cache/token.json", "deny"),
        ("file-read-metadata", "/Users/alice/.aws/sso/cache/token.json", "allow"),
        ("file-write-data", "/Users/alice/.ssh/known_hosts", "allow"),
        ("file-read-data", "/Users/alice/.ssh/known_hosts", "deny"),
        ("file-read-data", "/Users/alice/.ssh/id_ed25519", "deny"),
        ("file-read-metadata", "/Users/alice/.ssh/id_ed25519", "allow"),
        ("file-read-data", "/Users/alice/project/src/main.py", "allow"),
        ("file-write-create", "/Users/alice/project/src/new.py", "allow"),
        ("file-read-data", "/Users/alice/project/.env", "deny"),
        ("file-write-data", "/Users/alice/project/deploy/keys/prod.pem", "deny"),
        ("file-write-unlink", "/Users/alice/project/deploy", "deny"),
        ("file-write-unlink", "/Users/alice/project/deploy/README", "allow"),
        ("file-read-data", "/Users/alice/Documents/taxes.pdf", "deny"),
        ("file-write-data", "/usr/bin/env", "deny"),
        ("file-read-data", "/usr/bin/env", "allow"),
        ("file-write-data", "/Users/alice/.config/nono-shell/grants.toml", "deny"),
        ("file-write-data", "/private/tmp/nono-shell-501/supervisor.sock", "deny"),
        ("file-read-data", "/private/tmp/other-users-socket", "deny"),
        ("file-write-data", "/private/var/folders/xy/nono-abc/build.o", "allow"),
        ("file-ioctl", "/dev/ttys003", "allow"),
        ("file-read-data", "/dev/ttys003", "deny"),
        ("system-audit", "", "deny"),
    ],
)
def test_effective_decisions_of_the_file_exception_profile(op: str, path: str, expected: str) -> None:
    assert decide(render("file-exception"), op, path) == expected


def test_every_exception_in_every_profile_follows_its_deny() -> None:
    for name, (profile, options, marker, socket) in CASES.items():
        policy = policy_for(profile, **options)
        rs = rules(generate_profile(policy, marker, supervisor_socket=socket))
        for grant in policy.grants:
            for deny in policy.denies:
                inside = grant.path == deny.path or grant.path.startswith(deny.path + "/")
                if not inside or grant.source.startswith("group:"):
                    continue
                kind = "literal" if grant.kind == "file" else "subpath"
                op = "file-read-data" if grant.access != "write" else "file-write*"
                deny_op = "file-read-data" if op == "file-read-data" else "file-write*"
                assert index_of(rs, "allow", op, kind, grant.path, last=True) > index_of(
                    rs, "deny", deny_op, "subpath", deny.path, last=True
                ), (name, grant, deny)


def test_grant_that_contains_a_denied_path_does_not_override_it() -> None:
    """`--allow ~` must not re-open ~/.ssh: the deny comes after the grant."""
    rs = rules(generate_profile(policy_for("default", allow=("~",))))
    assert index_of(rs, "deny", "file-read-data", "subpath", "/Users/alice/.ssh") > index_of(
        rs, "allow", "file-read*", "subpath", "/Users/alice"
    )
    assert not any(a == "allow" and "file-read-data" in ops for a, ops, _ in rs)


@pytest.mark.parametrize("name", sorted(CASES))
def test_nothing_overrides_the_protected_paths(name: str) -> None:
    policy = policy_for(CASES[name][0], **CASES[name][1])
    rs = rules(render(name))
    first = min(index_of(rs, "deny", "file-write*", "subpath", p) for p in policy.protected)
    assert all(a == "deny" for a, _, _ in rs[first:])
    for path in policy.protected:
        index_of(rs, "deny", "file-link", "subpath", path)


def test_protected_path_inside_the_workdir_stays_unwritable_even_when_granted() -> None:
    ctx = replace(CTX, protected=CTX.protected + ("/Users/alice/project/.nono-shell.toml",))
    policy = resolve_policy(PolicyOptions(allow_file=("/Users/alice/project/.nono-shell.toml",)), ctx)
    rs = rules(generate_profile(policy))
    deny = index_of(rs, "deny", "file-write*", "subpath", "/Users/alice/project/.nono-shell.toml")
    assert deny > index_of(rs, "allow", "file-write*", "literal", "/Users/alice/project/.nono-shell.toml")
    assert deny > index_of(rs, "allow", "file-write*", "subpath", "/Users/alice/project")


def test_rename_of_a_directory_holding_a_denied_path_is_blocked() -> None:
    """mv deploy d2; cat d2/keys/id: Seatbelt rules name paths, so the ancestors may not move."""
    rs = rules(render("file-exception"))
    for ancestor in ("/Users/alice/project", "/Users/alice/project/deploy"):
        index_of(rs, "deny", "file-write-unlink", "literal", ancestor)
    # Outside any writable tree an ancestor needs no rule: it cannot be renamed anyway.
    with pytest.raises(AssertionError):
        index_of(rs, "deny", "file-write-unlink", "literal", "/Users/alice")


def test_hard_link_of_a_denied_file_is_blocked() -> None:
    rs = rules(render("default"))
    index_of(rs, "deny", "file-link", "subpath", "/Users/alice/.ssh")


def test_denied_trees_allow_discovery_but_not_content() -> None:
    rs = rules(render("default"))
    for action, op in (("allow", "file-read-metadata"), ("deny", "file-read-data"), ("deny", "file-write*")):
        index_of(rs, action, op, "subpath", "/Users/alice/.ssh")


# --------------------------------------------------------------------------------------------------------
# Network, system rules, twins
# --------------------------------------------------------------------------------------------------------


def test_network_blocked_denies_everything_but_the_supervisor_socket() -> None:
    rs = rules(render("net-blocked"))
    assert not any(a == "allow" and "network*" in ops for a, ops, _ in rs)
    deny = next(i for i, (a, ops, _) in enumerate(rs) if a == "deny" and ops == ("network*",))
    assert index_of(rs, "allow", "network-outbound", "literal", "/private" + SOCKET) > deny


def test_network_allowed_still_denies_sockets_in_denied_trees() -> None:
    rs = rules(render("default"))
    allow = next(i for i, (a, ops, _) in enumerate(rs) if a == "allow" and ops == ("network*",))
    assert index_of(rs, "deny", "network-outbound", "subpath", "/Users/alice/.gnupg") > allow


def test_process_rules_are_narrowed() -> None:
    forms = parse(render("default"))
    assert ["allow", "process-info*", ["target", "self"]] in forms
    assert ["allow", "signal", ["target", "same-sandbox"]] in forms
    assert ["allow", "file-read*", ["literal", "/"]] in forms
    assert not any(f[:2] == ["allow", "process-info*"] and len(f) == 2 for f in forms)
    assert not any(f[:2] == ["allow", "signal"] and len(f) == 2 for f in forms)


def test_private_twins_of_var_etc_tmp() -> None:
    rs = rules(render("odd-paths"))
    index_of(rs, "allow", "file-write*", "subpath", "/tmp/nono build cache")
    index_of(rs, "allow", "file-write*", "subpath", "/private/tmp/nono build cache")
    index_of(rs, "allow", "file-read*", "subpath", "/private/etc")
    # A protected path under /tmp is protected under /private/tmp too.
    index_of(rs, "deny", "file-write*", "subpath", "/private/tmp/nono-shell-501")


def test_system_read_paths_are_read_only() -> None:
    rs = rules(render("default"))
    index_of(rs, "allow", "file-read*", "subpath", "/usr")
    with pytest.raises(AssertionError):
        index_of(rs, "allow", "file-write*", "subpath", "/usr")


def test_keychain_daemons_are_denied_with_the_keychain_group() -> None:
    forms = parse(render("default"))
    assert any(f[:2] == ["deny", "mach-lookup"] and ["global-name", "com.apple.secd"] in f for f in forms)


def test_explicit_keychain_grant_lifts_the_keychain_daemon_deny() -> None:
    policy = policy_for("default", read_file=("~/Library/Keychains/login.keychain-db",))
    assert "com.apple.secd" not in generate_profile(policy)


def test_group_grant_inside_a_denied_tree_is_not_an_exception() -> None:
    policy = Policy(
        profile="hand",
        grants=(Grant("/Users/alice/.ssh/config", "read", "file", "group:system_read"),),
        denies=(Deny("/Users/alice/.ssh", "group:deny_credentials"),),
        protected=(),
        net_block=False,
        prompt="auto",
        prompt_timeout=60.0,
        workdir="/Users/alice/project",
        home="/Users/alice",
        tmpdir="/private/var/folders/xy/nono-abc",
        platform="macos",
    )
    assert not any(a == "allow" and "file-read-data" in ops for a, ops, _ in rules(generate_profile(policy)))


# --------------------------------------------------------------------------------------------------------
# Escaping and markers
# --------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    ["plain", 'with "quotes"', "back\\slash", "trailing\\", '\\"', "café ☃ Документы 日本", 'a;b (c) #"d'],
)
def test_string_escaping_round_trips(value: str) -> None:
    (token,) = tokenize(sbpl_string(value))
    assert isinstance(token, Str) and token == value


def test_odd_paths_round_trip_through_the_profile() -> None:
    policy = policy_for("odd-paths.toml")
    paths = {str(p) for _, _, f in rules(generate_profile(policy, "m")) for _, p in path_filters(f)}
    for grant in policy.grants:
        assert grant.path in paths
    assert '/Users/alice/project/My "quoted" dir/secret ✓' in paths
    assert "/Volumes/Data\\backup" in paths
    assert "/Users/alice/Документы/café" in paths


@pytest.mark.parametrize("bad", ["new\nline", "nul\x00byte", "tab\there", "del\x7f"])
def test_control_characters_in_paths_are_refused(bad: str) -> None:
    with pytest.raises(UsageError):
        generate_profile(policy_for("default", read=("/x/" + bad,)))


@pytest.mark.parametrize("marker", ["", 'a"b', "a b", "x" * 65, "nono:x", "ü"])
def test_unsafe_markers_are_refused(marker: str) -> None:
    with pytest.raises(UsageError):
        generate_profile(policy_for("default"), marker)


def test_comments_cannot_smuggle_rules() -> None:
    """A profile file name is echoed in a comment; a newline in it must not start a new rule."""
    policy = replace(policy_for("default"), profile="evil\n(allow default)")
    assert not any(a == "allow" and "default" in ops for a, ops, _ in rules(generate_profile(policy)))


# --------------------------------------------------------------------------------------------------------
# Layering
# --------------------------------------------------------------------------------------------------------


def test_macos_backend_never_imports_the_linux_backend() -> None:
    for path in (HERE.parent / "supervisor" / "macos").glob("*.py"):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            assert not any(n.startswith("nono_supervisor.linux") for n in names), path
