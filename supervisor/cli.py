"""``nono-supervisor``: parse, validate everything, then act. Exit codes are decided here and only here."""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import sys
from pathlib import Path
from typing import Any

from nono_supervisor import __version__, backend, paths
from nono_supervisor.audit import MAX_BYTES, ROTATED_KEPT, log_files
from nono_supervisor.backend import NO_STDIO, command_gets
from nono_supervisor.errors import NonoError, SandboxError, UsageError
from nono_supervisor.policy.access import hint_for
from nono_supervisor.policy.profile import (
    GRANT_LISTS,
    NET_MODES,
    PROMPT_MODES,
    Policy,
    PolicyOptions,
    display,
)
from nono_supervisor.report import collapsed
from nono_supervisor.session import Session
from nono_supervisor.terminal.prompt import GUARD_SECONDS, TtyGuard, shown

__all__ = ["main"]


ANSWER_FORM = (
    "A question is answered by one letter and Enter: o (once: this command), s (session), a (always: "
    "stored in grants.toml; on a path of a deny group or --deny, confirmed by typing the word always), "
    "d (deny). Enter alone, Ctrl-C or no answer within the timeout denies; keys typed within "
    f"{GUARD_SECONDS:g} s of the question appearing and terminal replies are ignored; anything else asks "
    "again."
)


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # one line, exit 2 (CONTRACT)
        raise UsageError(message)


def _add_policy_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--profile", default="default", help="built-in profile name or a TOML file")
    for key, (access, kind) in GRANT_LISTS.items():
        flag = "--" + key.replace("_", "-")
        parser.add_argument(
            flag,
            dest=key,
            action="append",
            default=[],
            metavar="PATH",
            help=f"grant {access} on a {'file' if kind == 'file' else 'directory tree'}",
        )
    parser.add_argument(
        "--deny", action="append", default=[], metavar="PATH", help="deny inside an allowed tree"
    )
    parser.add_argument("--net-block", action="store_true", help="no network for sandboxed commands")
    parser.add_argument(
        "--allow-domain",
        dest="allow_domains",
        action="append",
        default=[],
        metavar="PATTERN",
        help="network by domain: commands may reach this host (*.example.com: its subdomains; HOST:PORT:"
        " that port) through the supervisor's proxy, and nothing else not allowed",
    )
    parser.add_argument(
        "--deny-domain",
        dest="deny_domains",
        action="append",
        default=[],
        metavar="PATTERN",
        help="never this host (beats a less specific --allow-domain); not asked about",
    )
    parser.add_argument(
        "--net-mode",
        choices=NET_MODES,
        default=None,
        help="open (default), domains (only allowed hosts, through the proxy), block (as --net-block)",
    )
    parser.add_argument(
        "--prompt",
        choices=PROMPT_MODES,
        default=None,
        help="when a denial may become a question on the supervisor's terminal. " + ANSWER_FORM,
    )
    parser.add_argument("--audit-log", type=Path, default=None, metavar="PATH")
    parser.add_argument(
        "--audit-log-max",
        type=_size,
        default=MAX_BYTES,
        metavar="SIZE",
        help=f"rotate the audit log once it would grow past SIZE (bytes; K, M, G suffixes; 0: never);"
        f" {ROTATED_KEPT} rotated files are kept (default: {MAX_BYTES >> 20}M)",
    )
    parser.add_argument(
        "--no-trap",
        action="store_true",
        help="Landlock only: no seccomp notification (no denial reports, no dynamic grants)",
    )
    parser.add_argument("--dry-run", action="store_true", help="print the effective policy and run nothing")
    parser.add_argument("--no-undo", action="store_true", help="do not record what commands change (no undo)")
    parser.add_argument("-v", "--verbose", action="count", default=0)
    parser.add_argument(
        "-q", "--quiet", action="store_true", help="no line of nono-supervisor's own at start (run, serve)"
    )


def _size(text: str) -> int:
    """``--audit-log-max``: a byte count, with an optional K, M or G (powers of 1024)."""
    units = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30}
    match = re.fullmatch(r"(\d+)(?:([KMG])(?:i?B)?|B?)", text.strip(), re.IGNORECASE)
    if not match:
        raise argparse.ArgumentTypeError(f"not a size: {text!r} (e.g. 65536, 512K, 64M)")
    return int(match.group(1)) * units[(match.group(2) or "").upper()]


def _options(args: argparse.Namespace) -> PolicyOptions:
    return PolicyOptions(
        profile=args.profile,
        net_block=args.net_block,
        net_mode=args.net_mode,
        allow_domains=tuple(args.allow_domains),
        deny_domains=tuple(args.deny_domains),
        prompt=args.prompt,
        no_undo=args.no_undo,
        **{key: tuple(getattr(args, key)) for key in (*GRANT_LISTS, "deny")},
    )


def _build_parser() -> _Parser:
    parser = _Parser(
        prog="nono-supervisor",
        description="Per-command OS sandboxes for an agent's shell commands.",
        epilog="Questions (--prompt tty|after): " + ANSWER_FORM,
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)
    run = sub.add_parser("run", help="start a supervisor and the agent CMD under it")
    _add_policy_options(run)
    _add_agent_option(run)
    run.add_argument("--no-interpose", action="store_true", help="do not preload the interposition library")
    run.add_argument(
        "--no-namespace",
        action="store_true",
        help="no routing namespace for the agent (real shells bound with the shim): a static binary's"
        " /bin/bash is then not routed, only recorded",
    )
    serve = sub.add_parser("serve", help="a foreground supervisor with no agent")
    serve.add_argument("--socket", type=Path, required=True)
    serve.add_argument(
        "--shims",
        type=Path,
        default=None,
        metavar="DIR",
        help="write the shims here and let sandboxed commands run them (nested routing)",
    )
    _add_policy_options(serve)
    exec_ = sub.add_parser("exec", help="run one command in a per-command sandbox")
    _add_policy_options(exec_)
    policy = sub.add_parser("policy", help="print the effective policy")
    _add_policy_options(policy)
    _add_agent_option(policy)
    policy.add_argument("--format", choices=("text", "json", "landlock", "seatbelt"), default="text")
    log = sub.add_parser("log", help="read the audit log")
    log.add_argument("--denials", action="store_true")
    log.add_argument("--json", action="store_true")
    log.add_argument("--command", dest="command_id", metavar="ID")
    log.add_argument("--session", dest="session_id", metavar="ID", help="only this session's records")
    log.add_argument("--audit-log", type=Path, default=None, metavar="PATH")
    grants = sub.add_parser("grants", help="show or remove persistent grants")
    grants.add_argument("action", nargs="?", choices=("list", "revoke"), default="list")
    grants.add_argument("id", nargs="?")
    shims = sub.add_parser("shims", help="create the bash-named shims in DIR")
    shims.add_argument("dir", type=Path)
    sub.add_parser("doctor", help="report what this machine can enforce")
    _add_undo_commands(sub)
    return parser


def _add_agent_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--agent",
        default=None,
        metavar="NAME|PATH|none",
        help="the agent's profile (claude-code, codex, gemini, opencode, aider, or a profile file with an"
        " [agent] section): its state and install tree for the agent alone, never its commands."
        " Default: picked from the resolved program of `run`; none: the agent gets the commands' policy",
    )


def _agent(args: argparse.Namespace, command: list[str]):
    """The agent profile of ``run``/``policy`` (``policy.agents``): ``--agent``, else detected from the
    resolved program; None for ``--agent none`` or an agent no profile knows."""
    choice = getattr(args, "agent", None)
    if choice is None and not command:
        return None
    from nono_supervisor.launcher import resolve_program
    from nono_supervisor.policy import agents
    from nono_supervisor.policy.profile import Context

    env = dict(os.environ)
    home = env.get("HOME") or os.path.expanduser("~")
    ctx = Context(workdir=os.getcwd(), home=home, tmpdir="", config_dir=str(paths.config_dir(env)))
    try:
        program = resolve_program(command[0], env)[0] if command else None
    except NonoError:
        program = None  # run reports "command not found" itself
    return agents.pick_agent(choice, program, ctx, env)


def _split_command(argv: list[str]) -> tuple[list[str], list[str]]:
    """``run``/``exec`` take ``[OPTIONS] -- CMD [ARGS]``: everything after the first ``--`` is the command."""
    if "--" in argv:
        i = argv.index("--")
        return argv[:i], argv[i + 1 :]
    return argv, []


def _session(args: argparse.Namespace, **kw: Any) -> Session:
    return Session.create(
        _options(args), audit_path=args.audit_log, audit_max=args.audit_log_max, trap=not args.no_trap, **kw
    )


def _say_no_trap(session: Session) -> None:
    """run, exec and serve with --no-trap say at start the widest thing it gives up, in policy's words: a
    command may then connect to any socket file of the user's (issue 24, finding 6)."""
    if not session.state.trap:
        from nono_supervisor.backend import NO_TRAP_UNIX_SOCKETS

        print(f"nono-supervisor: not enforced with --no-trap: {NO_TRAP_UNIX_SOCKETS}", file=sys.stderr)


def _print_agent(session: Session) -> None:
    """The second policy of the session: what the agent's baseline adds to the commands' (DESIGN: two
    policies per session)."""
    agent = session.state.agent
    if agent is None:
        print("agent baseline: the commands' policy above (no agent profile; --agent NAME picks one)")
        return
    policy = session.state.agent_policy()
    print(f"agent baseline: {agent.name} ({agent.label}): the commands' policy above, and to the agent only:")
    commands = set(session.state.policy.grants)
    for grant in policy.grants:
        if grant in commands:
            continue
        if grant.source.endswith(": list only"):  # a pattern naming one directory (agents.list_only)
            name = re.sub(r"\[(.)\]", r"\1", os.path.basename(grant.path))
            listed = os.path.join(os.path.dirname(grant.path), name)
            print(f"  list       {policy.display(listed)}  [{grant.source}: its names, nothing in it]")
        else:
            print(f"  {grant.access:5} {grant.kind:4} {policy.display(grant.path)}  [{grant.source}]")
    for key, value in agent.env.items():
        print(f"  env        {key}={value}")
    print("  (its state is sealed from its commands: never grantable to them)")


def _print_policy(policy: Policy, fmt: str, session: Session) -> None:
    if fmt == "json":
        data = policy.to_json()
        if session.state.agent is not None:
            agent = session.state.agent
            data["agent"] = {
                "profile": agent.name,
                "grants": [g.__dict__ for g in agent.policy_grants()],
                "sealed_from_commands": list(agent.state_paths()),
            }
        print(json.dumps(data, indent=2))
    elif fmt == "seatbelt":  # on any OS: the profile a Mac would apply, with what every command gets
        from nono_supervisor.macos.launch import profile_policy
        from nono_supervisor.macos.seatbelt import generate_profile

        print(generate_profile(profile_policy(command_gets(session, NO_STDIO))), end="")
    elif fmt == "landlock":
        gets = command_gets(session, NO_STDIO)
        print(json.dumps(backend.current().landlock_plan(gets).to_json(), indent=2))
    else:
        print(f"profile: {policy.profile} ({', '.join(policy.sources)})")
        print(f"workdir: {policy.workdir}\ntmpdir:  {policy.tmpdir}")
        for grant in policy.grants:
            print(f"  {grant.access:5} {grant.kind:4} {policy.display(grant.path)}  [{grant.source}]")
        for deny in policy.denies:
            print(f"  deny       {policy.display(deny.path)}  [{deny.rule}]")
        for path in policy.protected:
            print(f"  no-write   {policy.display(path)}  [never-grantable]")
        for entry in policy.runs_later:
            print(f"  no-write   {policy.display(entry.path)}  [runs-later: {entry.why}]")
        for probe in policy.probes:
            print(f"  probe      {policy.display(probe.pattern)}  [{probe.rule}]")
        _print_network(policy)
        print(f"prompt:  {policy.prompt} (now: {session.services.prompt_mode()})")
        print(f"enforced by: {backend.current().enforcement(session.state.trap)}")
        for note in backend.current().policy_notes(command_gets(session, NO_STDIO)):
            print(note)
        _print_agent(session)


def _start_line(session: Session) -> str:
    """``run``'s one line at start (CONTRACT): the profile, the agent profile, what the commands are
    granted beyond the workdir (groups by name, flags and the grant store's entries by path), and the
    network mode. ``policy`` lists every path."""
    from nono_supervisor.policy.grants import SOURCE as STORED

    policy = session.state.policy
    beyond: dict[str, list[str]] = {"allow": [], "write": [], "read": []}
    for grant in policy.grants:
        if grant.path == policy.workdir:
            continue
        if grant.source.startswith("group:"):
            name = grant.source.removeprefix("group:")
        elif grant.path == policy.tmpdir:
            name = "$TMPDIR"
        elif grant.source == STORED:
            name = f"{policy.display(grant.path)} (stored)"
        else:
            name = policy.display(grant.path)
        if name not in beyond[grant.access]:
            beyond[grant.access].append(name)
    granted = "; ".join(
        f"{label} {', '.join(beyond[access])}"
        for access, label in (("allow", "read+write"), ("write", "write"), ("read", "read"))
        if beyond[access]
    )
    network = policy.net_mode
    if network == "domains":
        network += f" ({len(policy.allow_domains)} hosts allowed)"
    agent = session.state.agent.name if session.state.agent is not None else "none"
    return (
        f"nono-supervisor: profile {policy.profile}, agent profile {agent};"
        f" beyond the workdir: {granted or 'nothing'}; network {network}"
        " ('nono-supervisor policy' lists every path; -q hides this line)"
    )


def _print_network(policy: Policy) -> None:
    if policy.net_mode == "block":
        print("network: blocked")
    elif policy.net_mode == "open":
        print("network: allowed")
    else:
        print(
            "network: domains (the allowed hosts only, through the supervisor's proxy on 127.0.0.1; a new"
            " host is asked about while its connection waits)"
        )
        for pattern in policy.allow_domains:
            print(f"  allow-domain   {pattern.text()}  [{pattern.source}]")
        for pattern in policy.deny_domains:
            print(f"  deny-domain    {pattern.text()}  [{pattern.source}]")
        for pattern in policy.agent_domains:
            print(f"  agent only     {pattern.text()}  [{pattern.source}]")
        if not policy.allow_domains:
            print("  (no host allowed to commands)")
    if policy.net_mode != "domains" and (policy.allow_domains or policy.deny_domains):
        print(f"note: allow_domains/deny_domains have no effect in network mode {policy.net_mode}")


def _cmd_policy(args: argparse.Namespace, command: list[str] | None = None) -> int:
    session = _session(args, agent=_agent(args, command or []))
    try:
        _print_policy(session.state.policy, args.format, session)
    finally:
        session.close()
    return 0


def _require_command(command: list[str], name: str) -> None:
    if not command:
        raise UsageError(f"{name}: missing '-- CMD [ARGS]'")


def _cmd_exec(args: argparse.Namespace, command: list[str]) -> int:
    from nono_supervisor.backend import Hooks, Launch
    from nono_supervisor.launcher import status_code
    from nono_supervisor.report import CommandReport
    from nono_supervisor.server import exit_parts
    from nono_supervisor.terminal.consent import Consent
    from nono_supervisor.terminal.proxy import TerminalLease

    session = _session(args, prompter=not args.dry_run)
    state, services = session.state, session.services
    try:
        if args.dry_run:
            _print_policy(state.policy, "text", session)
            return 0
        _require_command(command, "exec")
        _say_no_trap(session)
        env = services.command_env(state.env)
        path = command[0] if "/" in command[0] else _which(command[0], env)
        if path is None:
            print(f"nono-supervisor: {command[0]}: command not found", file=sys.stderr)
            return 127
        command_id = session.next_command_id()
        report = CommandReport(services.audit, state.policy, command_id, command, os.getcwd())
        asker = services.prompter if services.prompt_mode() in ("tty", "after") else None
        consent = Consent(session, command_id, " ".join(command), asker, argv=command)
        consent.report = report
        # The terminal belongs to the prompter: the command gets a pty of ours in its place (CONTRACT).
        lease = TerminalLease.for_stdio(session, (0, 1, 2))
        try:
            stdio = lease.stdio if lease else (0, 1, 2)
            ctty = bool(lease and lease.ctty)
            # A command: opens and execve are Landlock's (linux.backend).
            launch = Launch(path, command, env, os.getcwd(), stdio, ctty=ctty, leave_to_kernel=True)
            undo = services.undo_log(command_id)
            hooks = Hooks(
                on_decision=report.record, consent=consent.allows, on_late_deny=report.late_deny, undo=undo
            )
            process = backend.start(session, launch, hooks)
        except BaseException:
            if lease:
                lease.hangup()
            raise
        report.pid = process.pid
        forward = lambda signo, _frame: process.signal(signo)  # noqa: E731
        for signo in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(signo, forward)
        services.audit.write(
            command=command_id, event="start", argv=command, cwd=os.getcwd(), pid=process.pid
        )
        if lease:
            lease.run(process)  # until the command's main process exits; then the pty is hung up
        status = process.wait()
        backend.current().finish(process)
        report.write_to(2)
        code, signo = exit_parts(status)  # as a routed command's: log folds its decisions up to here
        services.audit.write(command=command_id, event="exit", pid=process.pid, code=code, signal=signo)
        return status_code(status)
    finally:
        session.close()


def _which(name: str, env: dict[str, str]) -> str | None:
    import shutil

    return shutil.which(name, path=env.get("PATH"))


def _serve(session: Session, verbose: int):
    from nono_supervisor.server import Server

    try:
        return Server(session, verbose)
    except OSError as e:  # a supervisor already listens there, or the directory is gone: one line
        raise SandboxError(f"cannot listen on {session.state.socket_path}: {e.strerror or e}") from None


def _cmd_serve(args: argparse.Namespace) -> int:
    socket_path = args.socket.absolute()
    parent = socket_path.parent
    if not parent.is_dir() or (parent.stat().st_mode & 0o077) or parent.stat().st_uid != os.getuid():
        raise UsageError(f"--socket: {parent} must be an existing directory of yours with mode 0700")
    session = _session(args, shims=args.shims or False, socket=socket_path, prompter=not args.dry_run)
    try:
        if args.dry_run:
            _print_policy(session.state.policy, "text", session)
            return 0
        _say_no_trap(session)  # before the socket exists: a client never meets a server that has not said it
        server = _serve(session, args.verbose)
        for signo in (signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):  # kill, a closed window: end cleanly
            signal.signal(signo, lambda *_: sys.exit(0))
        if not args.quiet:
            print(f"nono-supervisor: serving on {socket_path}", file=sys.stderr, flush=True)
        try:
            server.serve_forever()
        except KeyboardInterrupt:
            pass
        finally:
            server.close()
            socket_path.unlink(missing_ok=True)
        return 0
    finally:
        session.close()


def _interpose_library(args: argparse.Namespace) -> Path | None:
    if args.no_interpose:
        return None
    from nono_supervisor import interpose

    library = interpose.library_path()
    if library is None:
        raise SandboxError(
            "the interposition library is not built. Hint: reinstall with pip, or --no-interpose"
        )
    problem = interpose.check_loadable(library)
    if problem:
        raise SandboxError(f"the interposition library cannot be loaded: {problem}")
    return library


def _cmd_run(args: argparse.Namespace, command: list[str]) -> int:
    from nono_supervisor.launcher import run_agent

    if args.dry_run:
        return _cmd_policy(argparse.Namespace(**vars(args), format="text"), command)
    _require_command(command, "run")
    library = _interpose_library(args)
    session = _session(args, shims=True, socket=True, agent=_agent(args, command), prompter=True)
    try:
        _say_no_trap(session)
        server = _serve(session, args.verbose)
        server.start()
        first = "" if args.quiet else shown(_start_line(session))
        try:
            return run_agent(session, command, library, namespace=not args.no_namespace, start_line=first)
        finally:
            server.close()
    finally:
        session.close()


def _cmd_log(args: argparse.Namespace) -> int:
    """Streams the log, the rotated files first (oldest to newest), one line at a time: a log of any size
    is read in constant memory (``_LogView`` holds only the open commands' folded decisions). A line that
    is not a JSON object is counted and said at the end."""
    path = args.audit_log or paths.audit_log_path()
    view = _LogView(args, os.environ.get("HOME", ""))
    unreadable = 0
    for name in log_files(path):
        try:
            f = open(name, "rb")  # noqa: SIM115 - closed by the with below, after the error is told
        except FileNotFoundError:
            continue
        except OSError as e:
            raise UsageError(f"{name}: cannot read the audit log: {e.strerror}") from None
        with f:
            for line in f:
                try:
                    record = json.loads(line)
                except ValueError:
                    record = None
                if not isinstance(record, dict):
                    unreadable += 1
                    continue
                view.add(record, line)
    view.flush()
    if unreadable:
        print(f"nono-supervisor: {path}: {unreadable} lines are not JSON records (skipped)", file=sys.stderr)
    return 0


class _LogView:
    """``log``'s text form: one line per event, and per decision the operation, the path (``~``, another
    process's /proc as ``/proc/<pid>``), the rule and the hint a denial line would give, every field shown
    escaped (a path can hold escape sequences: it must not redraw the reader's terminal). A command's
    repeated decisions (the same operation, path and rule) fold into one line with their count, printed
    when the command ends (or the log does); ``--json`` prints the records as they are."""

    _OPEN_MAX = 4096  # folded decisions held at once; past it the oldest command's are printed

    def __init__(self, args: argparse.Namespace, home: str) -> None:
        self.args = args
        self.home = home
        self._open: dict[str, dict[tuple, list]] = {}  # command -> folding key -> [record, count]
        self._held = 0

    def add(self, record: dict, line: bytes) -> None:
        args = self.args
        if record.get("event") == "exit":
            self._print_command(str(record.get("command")))  # the command's folded decisions, then its end
        if args.denials and record.get("decision") != "deny":
            return
        if args.command_id and record.get("command") != args.command_id:
            return
        if args.session_id and record.get("session") != args.session_id:
            return
        if args.json:
            sys.stdout.buffer.write(line if line.endswith(b"\n") else line + b"\n")
            return
        command = str(record.get("command"))
        if "decision" not in record:
            print(self._event(record))
            return
        path = collapsed(str(record.get("path")))
        key = (record.get("decision"), record.get("op"), path, record.get("rule"))
        folded = self._open.setdefault(command, {})
        if key in folded:
            folded[key][1] += 1
            return
        folded[key] = [record, 1]
        self._held += 1
        if self._held > self._OPEN_MAX:
            self._print_command(next(iter(self._open)))

    def flush(self) -> None:
        for command in list(self._open):
            self._print_command(command)

    def _print_command(self, command: str) -> None:
        folded = self._open.pop(command, {})
        self._held -= len(folded)
        for (decision, op, path, rule), (record, count) in folded.items():
            shown_path = display(path, self.home)
            hint = hint_for(str(op), shown_path, os.path.isdir(path), str(rule)) if decision == "deny" else ""
            times = f" ({count} times)" if count > 1 else ""
            argv = " ".join(record.get("argv") or [])
            print(
                shown(
                    f"{record.get('time')} {command} {decision} {op} {shown_path} [{rule}]"
                    f"{hint}{times} :: {argv}"
                )
            )

    @staticmethod
    def _event(record: dict) -> str:
        event = record.get("event")
        if event == "audit-lost":
            what = f"audit-lost: {record.get('records')} records could not be written"
        elif event == "exit":
            signo = record.get("signal")
            what = f"exit {record.get('code')}" + (f" (signal {signo})" if signo else "")
        else:
            what = str(event)
        argv = " ".join(record.get("argv") or [])
        return shown(f"{record.get('time')} {record.get('command')} {what}" + (f" :: {argv}" if argv else ""))


def _cmd_grants(args: argparse.Namespace) -> int:
    from nono_supervisor.policy.grants import GrantStore

    store = GrantStore(paths.grants_path())
    if args.action == "revoke":
        if not args.id:
            raise UsageError("grants revoke: missing ID")
        if not store.revoke(args.id):
            raise UsageError(f"grants revoke: no grant with id {args.id!r}")
        print(f"revoked {args.id}")
        return 0
    stored = store.load()
    if not stored:
        print(f"no persistent grants (answers 'always' are stored in {store.path})")
    for g in stored:
        kind = "host" if g.kind == "domain" else g.kind  # a domain grant: host:port, asked at the proxy
        print(f"{g.id}  {g.access:5} {kind:4} {g.path!r}  expires {g.expires or 'never'}  ({g.command!r})")
    return 0


def _cmd_shims(args: argparse.Namespace) -> int:
    from nono_supervisor.shims import write_shims

    for path in write_shims(args.dir.absolute()):
        print(path)
    return 0


def _cmd_doctor(_args: argparse.Namespace) -> int:
    from nono_supervisor.doctor import report

    return report()


# The subcommands whose policy grants the current directory as the workdir.
_IN_WORKDIR = ("run", "exec", "serve", "policy")


def _check_workdir() -> None:
    try:
        os.getcwd()
    except OSError as e:  # deleted under the shell that started us: there is no workdir to grant
        raise SandboxError(f"the current directory is gone ({e.strerror}); cd to one that exists") from None


# ---- changes and undo (issue 25; supervisor/undo.py) -------------------------------------------------


def _add_undo_commands(sub) -> None:
    changes = sub.add_parser("changes", help="what a command created, modified, deleted, renamed or re-moded")
    changes.add_argument(
        "id", nargs="?", metavar="COMMAND-ID", help="default: the last that changed anything"
    )
    changes.add_argument("--json", action="store_true")
    changes.add_argument("--session", default=None, help="default: the command id's, else the newest")
    undo = sub.add_parser("undo", help="put back what a command changed (undoing an undo redoes)")
    undo.add_argument("id", nargs="?", metavar="COMMAND-ID", help="default: the last that changed anything")
    undo.add_argument("--force", action="store_true", help="take the older state where it changed since")
    undo.add_argument("--session", default=None, help="default: the command id's, else the newest")


def _cmd_changes(args: argparse.Namespace) -> int:
    from nono_supervisor import undo

    journal = undo.Journal.for_command(args.id, args.session)
    command = journal.pick(args.id)
    listed = undo.changes(journal, command)
    state = "running" if journal.running(command) else "ended"
    if args.json:
        print(json.dumps({"command": command.id, "state": state, "changes": [c.to_json() for c in listed]}))
        return 0
    print(f"{command.id} ({state}{', undo of ' + command.of if command.of else ''}): {len(listed)} changed")
    for change in listed:
        to = f" -> {change.to}" if change.to else ""
        lost = f"  (not kept: {change.lost})" if change.lost else ""
        print(f"  {change.change:9} {change.path}{to}{lost}")
    return 0


def _cmd_undo(args: argparse.Namespace) -> int:
    from nono_supervisor import undo
    from nono_supervisor.audit import AuditLog

    journal = undo.Journal.for_command(args.id, args.session)
    command = journal.pick(args.id)
    meta = journal.meta
    protected = [*meta.get("protected", []), str(paths.config_dir()), str(paths.state_dir())]
    protected += [str(p) for p in paths.package_dirs()]
    limits = undo.Limits(
        int(meta.get("max_mb", 1024)) * undo.MiB, float(meta.get("max_age_hours", 24)) * 3600
    )
    audit = AuditLog(Path(meta.get("audit_log") or paths.audit_log_path()), journal.session)
    try:
        outcome = undo.undo(journal, command, force=args.force, protected=protected, limits=limits)
    except undo.UndoRefused as e:
        audit.write(command=command.id, event="undo-refused", reason=str(e))
        raise
    audit.write(
        command=outcome.undo_id,
        event="undo",
        of=command.id,
        forced=args.force,
        restored=outcome.restored,
        not_restored=[f"{path}: {why}" for path, why in outcome.not_restored],
    )
    print(f"undid {command.id} as {outcome.undo_id}: {len(outcome.restored)} restored")
    for path, why in outcome.not_restored:
        print(f"  not restored: {path} ({why})")
    return 1 if outcome.not_restored else 0


def main(argv: list[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    options, command = _split_command(argv)
    try:
        args = _build_parser().parse_args(options)
        handler = {
            "run": lambda: _cmd_run(args, command),
            "exec": lambda: _cmd_exec(args, command),
            "serve": lambda: _cmd_serve(args),
            "policy": lambda: _cmd_policy(args),
            "log": lambda: _cmd_log(args),
            "shims": lambda: _cmd_shims(args),
            "grants": lambda: _cmd_grants(args),
            "doctor": lambda: _cmd_doctor(args),
            "changes": lambda: _cmd_changes(args),
            "undo": lambda: _cmd_undo(args),
        }[args.command]
        if command and args.command not in ("run", "exec"):
            raise UsageError(f"{args.command}: unexpected command after '--'")
        if args.command in _IN_WORKDIR:
            _check_workdir()
        status = handler()
        sys.stdout.flush()  # here, not at exit: a reader that went away is the BrokenPipeError below
    except NonoError as e:
        print(f"nono-supervisor: {e}", file=sys.stderr)
        status = e.exit_code
    except BrokenPipeError:
        # `policy | head`: stop quietly, as a shell tool would. (SIGPIPE stays ignored: the supervisor
        # writes to sockets whose clients may be gone.)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        status = 128 + signal.SIGPIPE
    except OSError as e:  # one line at the edge for what no check foresaw (CONTRACT); nothing was run
        where = f"{e.filename}: " if e.filename else ""
        print(f"nono-supervisor: {where}{e.strerror or e}", file=sys.stderr)
        status = SandboxError.exit_code
    except KeyboardInterrupt:
        status = 128 + signal.SIGINT
    finally:
        # However the subcommand ended, no terminal it held stays raw: a command's pty proxy under serve
        # or exec, or a question, hold it from threads that die with the process (issue 23, finding 3).
        TtyGuard.release_all()
    sys.exit(status)
