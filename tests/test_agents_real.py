"""Issue 12, opt-in (``pytest -m agents``): real agents, installed from the registries into a temp prefix,
each driven through one turn under ``nono-supervisor run`` against a fake model server on 127.0.0.1 that
answers the first request with one shell tool call and the next with "All done."

The shapes: Anthropic messages (SSE, tool_use) for Claude Code via ANTHROPIC_BASE_URL; OpenAI responses
(SSE, function_call) for Codex via a model provider in ~/.codex/config.toml; OpenAI chat completions (tool
calls) for opencode via opencode.json; Gemini generateContent/streamGenerateContent (functionCall) via
GOOGLE_GEMINI_BASE_URL; chat completions with a fenced shell block for aider (no tool calling: aider asks
"Run shell command?", answered on a pty).

Each agent must finish its turn; its shell command must reach the supervisor (an ``event: start`` audit
record), be denied the fake key and the agent's own state, and the denial must be what the model sees.
Skipped with the reason when the registries cannot be reached. NONO_TEST_AGENTS_PREFIX (an npm prefix with
the four npm agents) and NONO_TEST_AIDER_VENV (a venv with aider-chat) reuse an installation instead.
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pexpect
import pytest

from conftest import FAKE_KEY, SUPERVISOR, Home, make_home

pytestmark = [
    pytest.mark.agents,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="run's sandbox is Linux here"),
]

NPM_AGENTS = ("@anthropic-ai/claude-code", "@openai/codex", "@google/gemini-cli", "opencode-ai")
TIMEOUT = 240


def command_for(state: str) -> str:
    """The shell command every model asks for: a marker, the fake key, a write into the agent's state."""
    return f"echo nono-tool-ran; cat ~/.ssh/id_rsa; echo evil > {state}/nono-evil"


# --- The fake model ----------------------------------------------------------------------------------------


def _sse(events: list[tuple[str | None, dict]]) -> bytes:
    out = b""
    for event, data in events:
        if event:
            out += f"event: {event}\n".encode()
        out += f"data: {json.dumps(data)}\n\n".encode()
    return out


class FakeModel:
    """One shell tool call, then "All done.", in whichever API shape the agent speaks."""

    def __init__(self, command: str) -> None:
        self.command = command
        self.requests: list[tuple[str, dict]] = []
        model = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's naming
                model.requests.append((self.path, {}))
                if self.path.rstrip("/").endswith("/models"):
                    return self._send(
                        200, {"object": "list", "data": [{"id": "gpt-test", "object": "model"}]}
                    )
                self._send(404, {})

            def do_POST(self) -> None:  # noqa: N802
                size = int(self.headers.get("content-length") or 0)
                try:
                    body = json.loads(self.rfile.read(size) or b"{}")
                except ValueError:
                    body = {}
                model.requests.append((self.path, body))
                path = self.path.split("?")[0]
                if path.endswith("/messages/count_tokens"):
                    return self._send(200, {"input_tokens": 10})
                if path.endswith("/messages"):
                    return self._reply(body, model.anthropic(body))
                if path.endswith("/responses"):
                    return self._reply(body, model.responses(body))
                if path.endswith("/chat/completions"):
                    return self._reply(body, model.chat(body))
                if ":generateContent" in path or ":streamGenerateContent" in path:
                    body["stream"] = ":stream" in path
                    return self._reply(body, model.gemini(body))
                self._send(404, {})

            def _reply(self, body: dict, shapes: tuple[dict, bytes]) -> None:
                whole, stream = shapes
                if body.get("stream"):
                    return self._send(200, stream, "text/event-stream")
                self._send(200, whole)

            def _send(self, code: int, data, kind: str = "application/json") -> None:
                raw = data if isinstance(data, bytes) else json.dumps(data).encode()
                self.send_response(code)
                self.send_header("content-type", kind)
                self.send_header("content-length", str(len(raw)))
                self.end_headers()
                self.wfile.write(raw)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def results(self) -> str:
        """What the agents sent back as the command's result (every request after the tool call)."""
        return "\n".join(json.dumps(body) for _path, body in self.requests)

    # Anthropic messages: tool_use of Bash.
    def anthropic(self, body: dict) -> tuple[dict, bytes]:
        results = [
            block
            for message in body.get("messages", [])
            if isinstance(message.get("content"), list)
            for block in message["content"]
            if isinstance(block, dict) and block.get("type") == "tool_result"
        ]
        done = bool(results) or "Bash" not in [t.get("name") for t in body.get("tools", [])]
        if done:
            content, stop = [{"type": "text", "text": "All done."}], "end_turn"
        else:
            tool = {"command": self.command, "description": "run it"}
            content, stop = (
                [{"type": "tool_use", "id": "toolu_01", "name": "Bash", "input": tool}],
                "tool_use",
            )
        usage = {"input_tokens": 10, "output_tokens": 5}
        message = {
            "id": "msg_01",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", "m"),
            "content": content,
            "stop_reason": stop,
            "stop_sequence": None,
            "usage": usage,
        }
        events = [("message_start", {"type": "message_start", "message": {**message, "content": []}})]
        for i, block in enumerate(content):
            if block["type"] == "text":
                start = {"type": "text", "text": ""}
                delta = {"type": "text_delta", "text": block["text"]}
            else:
                start = {**block, "input": {}}
                delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
            events += [
                ("content_block_start", {"type": "content_block_start", "index": i, "content_block": start}),
                ("content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta}),
                ("content_block_stop", {"type": "content_block_stop", "index": i}),
            ]
        events += [
            ("message_delta", {"type": "message_delta", "delta": {"stop_reason": stop}, "usage": usage}),
            ("message_stop", {"type": "message_stop"}),
        ]
        return message, _sse(events)

    # OpenAI responses: a function_call of Codex's shell tool.
    def responses(self, body: dict) -> tuple[dict, bytes]:
        outputs = ("function_call_output", "custom_tool_call_output", "local_shell_call_output")
        done = any(isinstance(i, dict) and i.get("type") in outputs for i in body.get("input", []))
        if done:
            text = {"type": "output_text", "text": "All done.", "annotations": []}
            item = {
                "type": "message",
                "id": "m1",
                "role": "assistant",
                "status": "completed",
                "content": [text],
            }
        else:
            names = [t.get("name") or t.get("type") for t in body.get("tools", [])]
            name = next((n for n in ("shell_command", "exec_command", "shell") if n in names), "shell")
            args = {"shell_command": {"command": self.command}, "exec_command": {"cmd": self.command}}.get(
                name, {"command": ["bash", "-lc", self.command]}
            )
            item = {
                "type": "function_call",
                "id": "fc_1",
                "call_id": "call_1",
                "name": name,
                "arguments": json.dumps(args),
                "status": "completed",
            }
        usage = {
            "input_tokens": 10,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": 5,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": 15,
        }
        response = {
            "id": "resp_1",
            "object": "response",
            "status": "completed",
            "output": [item],
            "usage": usage,
        }
        events = [
            ("response.created", {"type": "response.created", "response": {**response, "output": []}}),
            (
                "response.output_item.added",
                {"type": "response.output_item.added", "output_index": 0, "item": item},
            ),
            (
                "response.output_item.done",
                {"type": "response.output_item.done", "output_index": 0, "item": item},
            ),
            ("response.completed", {"type": "response.completed", "response": response}),
        ]
        return response, _sse(events)

    # OpenAI chat completions: a tool call (opencode), or a fenced shell block for aider (no tools sent).
    def chat(self, body: dict) -> tuple[dict, bytes]:
        messages = body.get("messages", [])
        tools = [t.get("function", {}).get("name") for t in body.get("tools") or []]
        message: dict = {"role": "assistant", "content": "All done."}
        finish = "stop"
        if not tools:
            said = any(
                self.command in str(m.get("content")) for m in messages if m.get("role") == "assistant"
            )
            if not said:
                message["content"] = f"Run this:\n\n```bash\n{self.command}\n```\n"
        elif not any(m.get("role") == "tool" for m in messages):
            name = next((n for n in tools if n and ("bash" in n or "shell" in n)), tools[0])
            function = {
                "name": name,
                "arguments": json.dumps({"command": self.command, "description": "run it"}),
            }
            message = {
                "role": "assistant",
                "content": None,
                "tool_calls": [{"id": "c1", "type": "function", "function": function}],
            }
            finish = "tool_calls"
        base = {"id": "chatcmpl-1", "created": 0, "model": body.get("model", "m")}
        usage = {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
        delta = dict(message)
        if "tool_calls" in delta:
            delta["tool_calls"] = [{"index": 0, **call} for call in delta["tool_calls"]]
        chunks = [
            (None, {**base, "object": "chat.completion.chunk", "choices": [{"index": 0, "delta": delta}]}),
            (
                None,
                {
                    **base,
                    "object": "chat.completion.chunk",
                    "choices": [{"index": 0, "delta": {}, "finish_reason": finish}],
                    "usage": usage,
                },
            ),
        ]
        whole = {
            **base,
            "object": "chat.completion",
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": usage,
        }
        return whole, _sse(chunks) + b"data: [DONE]\n\n"

    # Gemini: a functionCall of run_shell_command; JSON for its router's structured requests.
    def gemini(self, body: dict) -> tuple[dict, bytes]:
        contents = body.get("contents", [])
        done = any("functionResponse" in part for c in contents for part in c.get("parts", []))
        names = [f.get("name") for t in body.get("tools", []) for f in t.get("functionDeclarations", [])]
        config = body.get("generationConfig", {})
        if config.get("responseMimeType") == "application/json":
            schema = config.get("responseJsonSchema") or config.get("responseSchema") or {}
            values = {"STRING": "simple", "INTEGER": 1, "NUMBER": 1, "BOOLEAN": False}
            fields = schema.get("properties", {}).items()
            part = {"text": json.dumps({k: values.get(str(v.get("type")).upper(), "x") for k, v in fields})}
        elif done or not names:
            part = {"text": "All done."}
        else:
            name = next((n for n in names if "shell" in n), names[0])
            part = {
                "functionCall": {"name": name, "args": {"command": self.command, "description": "run it"}}
            }
        response = {
            "candidates": [
                {"content": {"role": "model", "parts": [part]}, "finishReason": "STOP", "index": 0}
            ],
            "usageMetadata": {"promptTokenCount": 10, "candidatesTokenCount": 5, "totalTokenCount": 15},
        }
        return response, _sse([(None, response)])


# --- Installing the agents -----------------------------------------------------------------------------


@functools.cache
def _unreachable() -> str | None:
    npm = shutil.which("npm")
    if npm is None:
        return "npm is not installed"
    try:
        probe = subprocess.run(
            [npm, "view", NPM_AGENTS[0], "version"], capture_output=True, text=True, timeout=60
        )
    except subprocess.TimeoutExpired:
        return "the npm registry did not answer within 60 s"
    if probe.returncode != 0:
        return f"the npm registry cannot be reached: {probe.stderr.strip().splitlines()[-1:]}"
    return None


@pytest.fixture(scope="module")
def npm_prefix() -> Path:
    given = os.environ.get("NONO_TEST_AGENTS_PREFIX")
    if given:
        yield Path(given)
        return
    reason = _unreachable()
    if reason:
        pytest.skip(reason)
    prefix = Path(tempfile.mkdtemp(prefix="nono-agents-"))
    prefix.chmod(0o755)
    install = subprocess.run(
        ["npm", "install", "-g", "--no-audit", "--no-fund", "--prefix", str(prefix), *NPM_AGENTS],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "npm_config_cache": str(prefix / ".npm-cache")},
    )
    if install.returncode != 0:
        pytest.skip(f"npm install of the agents failed: {install.stderr[-500:]}")
    yield prefix
    shutil.rmtree(prefix, ignore_errors=True)


@pytest.fixture(scope="module")
def aider_venv() -> Path:
    given = os.environ.get("NONO_TEST_AIDER_VENV")
    if given:
        yield Path(given)
        return
    venv = Path(tempfile.mkdtemp(prefix="nono-aider-")) / "aider"
    base = Path(sys.base_prefix) / "bin" / "python3"
    made = subprocess.run([str(base), "-m", "venv", str(venv)], capture_output=True, text=True, timeout=300)
    if made.returncode != 0:
        pytest.skip(f"cannot make a venv for aider: {made.stderr[-300:]}")
    install = subprocess.run(
        [str(venv / "bin" / "pip"), "install", "-q", "aider-chat"],
        capture_output=True,
        text=True,
        timeout=1800,
    )
    if install.returncode != 0:
        pytest.skip(f"PyPI cannot be reached or aider-chat does not install here: {install.stderr[-300:]}")
    yield venv
    shutil.rmtree(venv.parent, ignore_errors=True)


# --- The turns -----------------------------------------------------------------------------------------


@pytest.fixture
def model(request):
    state = request.param
    fake = FakeModel(command_for(state))
    yield fake
    fake.close()


def _run(home: Home, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    return home.run(
        [SUPERVISOR, "run", "--prompt", "never", "--", *argv],
        env=env,
        stdin=subprocess.DEVNULL,
        timeout=TIMEOUT,
    )


def _assert_turn(home: Home, model: FakeModel, state: Path, out: str, status: int) -> None:
    assert status == 0, out
    assert "All done." in out, out
    starts = [r for r in home.audit() if r.get("event") == "start" and "nono-tool-ran" in " ".join(r["argv"])]
    assert len(starts) == 1, (starts, out)
    assert FAKE_KEY not in out and FAKE_KEY not in model.results()
    sent = model.results()
    assert "nono-tool-ran" in sent and "Permission denied" in sent, sent[-2000:]
    assert not (state / "nono-evil").exists()
    denials = {(r["path"], r["rule"]) for r in home.audit() if r.get("decision") == "deny"}
    assert (str(home.key), "group:deny_credentials") in denials, denials
    assert (str(state / "nono-evil"), "never-grantable") in denials, denials


def _claude_code(home: Home, model: FakeModel, prefix: Path) -> tuple[list[str], dict[str, str]]:
    env = {
        **home.env,
        "PATH": f"{prefix / 'bin'}:{home.env['PATH']}",
        "ANTHROPIC_BASE_URL": model.url,
        "ANTHROPIC_API_KEY": "sk-ant-fake",
        "CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC": "1",
        "IS_SANDBOX": "1",  # root may skip Claude Code's own permission prompts inside a sandbox
    }
    return ["claude", "-p", "run the command", "--dangerously-skip-permissions"], env


def _codex(home: Home, model: FakeModel, prefix: Path) -> tuple[list[str], dict[str, str]]:
    config = home.home / ".codex" / "config.toml"
    config.parent.mkdir(exist_ok=True)
    config.write_text(
        'model = "gpt-test"\nmodel_provider = "fake"\n[model_providers.fake]\nname = "fake"\n'
        f'base_url = "{model.url}/v1"\nenv_key = "OPENAI_API_KEY"\nwire_api = "responses"\n'
        "supports_websockets = false\n"
    )
    env = {**home.env, "PATH": f"{prefix / 'bin'}:{home.env['PATH']}", "OPENAI_API_KEY": "sk-fake"}
    argv = ["codex", "exec", "--skip-git-repo-check", "--sandbox", "danger-full-access"]
    return [*argv, "-c", "features.shell_snapshot=false", "run the command"], env


def _gemini(home: Home, model: FakeModel, prefix: Path) -> tuple[list[str], dict[str, str]]:
    settings = home.home / ".gemini" / "settings.json"
    settings.parent.mkdir(exist_ok=True)
    settings.write_text(
        json.dumps(
            {
                "security": {"auth": {"selectedType": "gemini-api-key"}, "folderTrust": {"enabled": False}},
                "general": {"disableAutoUpdate": True},
                "privacy": {"usageStatisticsEnabled": False},
            }
        )
    )
    env = {
        **home.env,
        "PATH": f"{prefix / 'bin'}:{home.env['PATH']}",
        "GEMINI_API_KEY": "fake",
        "GOOGLE_GEMINI_BASE_URL": model.url,
    }
    return ["gemini", "-p", "run the command", "--yolo"], env


def _opencode(home: Home, model: FakeModel, prefix: Path) -> tuple[list[str], dict[str, str]]:
    provider = {
        "npm": "@ai-sdk/openai-compatible",  # fetched from the npm registry by opencode at first use
        "name": "fake",
        "options": {"baseURL": f"{model.url}/v1", "apiKey": "fake"},
        "models": {"gpt-test": {"name": "gpt-test", "tool_call": True}},
    }
    config = {
        "provider": {"fake": provider},
        "model": "fake/gpt-test",
        "autoupdate": False,
        "share": "disabled",
        "permission": {"bash": "allow", "external_directory": "allow", "edit": "allow"},
    }
    (home.work / "opencode.json").write_text(json.dumps(config))
    env = {**home.env, "PATH": f"{prefix / 'bin'}:{home.env['PATH']}"}
    return ["opencode", "run", "run the command"], env


@pytest.mark.parametrize("model", ["~/.claude"], indirect=True)
def test_claude_code_one_turn(home, npm_prefix, model):
    result = _run(home, *_claude_code(home, model, npm_prefix))
    _assert_turn(home, model, home.home / ".claude", result.stdout + result.stderr, result.returncode)
    assert (home.home / ".claude.json").is_file()  # its atomic write into ~ went through the supervisor
    assert "nono:" not in result.stdout + result.stderr.replace("nono: denied read ~/.ssh", "")


@pytest.mark.parametrize("model", ["~/.codex"], indirect=True)
def test_codex_one_turn(home, npm_prefix, model):
    result = _run(home, *_codex(home, model, npm_prefix))
    out = result.stdout + result.stderr
    _assert_turn(home, model, home.home / ".codex", out, result.returncode)
    # Codex is a static binary that runs /bin/bash by path: routed by the namespace, not the library.
    (start,) = [
        r for r in home.audit() if r.get("event") == "start" and "nono-tool-ran" in " ".join(r["argv"])
    ]
    assert start["argv"][:2] == ["bash", "-lc"], start


@pytest.mark.parametrize("model", ["~/.gemini"], indirect=True)
def test_gemini_cli_one_turn(home, npm_prefix, model):
    result = _run(home, *_gemini(home, model, npm_prefix))
    _assert_turn(home, model, home.home / ".gemini", result.stdout + result.stderr, result.returncode)


@pytest.mark.parametrize("model", ["~/.local/share/opencode"], indirect=True)
def test_opencode_one_turn(home, npm_prefix, model):
    result = _run(home, *_opencode(home, model, npm_prefix))
    _assert_turn(
        home,
        model,
        home.home / ".local" / "share" / "opencode",
        result.stdout + result.stderr,
        result.returncode,
    )


# --- Quiet on a stock home (issue 20) ----------------------------------------------------------------------

ORDINARY = "git status --short; ls"
NPM_SETUPS = {"claude-code": _claude_code, "codex": _codex, "gemini": _gemini, "opencode": _opencode}


@pytest.fixture
def skel_home():
    """A home as a distribution makes it (/etc/skel: .profile, .bashrc, .bash_logout), a ~/.gitconfig, a
    git project with one commit, and the fake key."""
    h = make_home()
    for entry in Path("/etc/skel").iterdir():
        if entry.is_file():
            shutil.copy2(entry, h.home / entry.name)
    (h.home / ".gitconfig").write_text("[user]\n\tname = Nono Tester\n\temail = tester@example.invalid\n")
    env = {**h.env, "GIT_CONFIG_NOSYSTEM": "1"}
    for git in (["init", "-q"], ["add", "README"], ["commit", "-qm", "first"]):
        subprocess.run(["git", *git], cwd=h.work, env=env, check=True, capture_output=True)
    yield h
    shutil.rmtree(h.root, ignore_errors=True)


def _assert_quiet(home: Home, model: FakeModel, out: str, status: int) -> None:
    """The ordinary command ran routed, its output reached the model, and neither the agent's output nor
    what it sent back holds a nono line (ordinary work on a stock home says nothing, asks nothing)."""
    assert status == 0, out
    starts = [r for r in home.audit() if r.get("event") == "start" and ORDINARY in " ".join(r["argv"])]
    assert starts, (out, [r.get("argv") for r in home.audit() if r.get("event") == "start"])
    assert "README" in model.results(), model.results()[-2000:]
    lines = re.findall(r"nono: [^\n\"\\\\]*", out + "\n" + model.results())  # results are JSON-quoted
    assert lines == [], lines


@pytest.mark.parametrize("agent", sorted(NPM_SETUPS))
def test_ordinary_tool_calls_print_no_nono_line_on_a_stock_home(skel_home, npm_prefix, agent):
    model = FakeModel(ORDINARY)
    try:
        argv, env = NPM_SETUPS[agent](skel_home, model, npm_prefix)
        for _ in range(2):  # a second start too: opencode's npm cache was denied from its second run
            result = _run(skel_home, argv, env)
            _assert_quiet(skel_home, model, result.stdout + result.stderr, result.returncode)
    finally:
        model.close()


def _aider_turn(home: Home, venv: Path, model: FakeModel) -> tuple[str, int]:
    """aider on a pty (it asks before it runs the block, and before it adds the output to the chat)."""
    env = {**home.env, "PATH": f"{venv / 'bin'}:{home.env['PATH']}", "TERM": "dumb"}
    argv = [
        SUPERVISOR, "run", "--prompt", "never", "--", "aider", "--no-git", "--no-check-update",
        "--no-show-model-warnings", "--no-analytics", "--no-pretty", "--no-fancy-input",
        "--edit-format", "diff",
        "--model", "openai/gpt-test", "--openai-api-base", f"{model.url}/v1", "--openai-api-key", "fake",
        "--message", "run the command",
    ]  # fmt: skip
    child = pexpect.spawn(argv[0], argv[1:], env=env, cwd=str(home.work), encoding="utf-8", timeout=TIMEOUT)
    out = ""
    while True:
        questions = [r"Run shell command\?", r"Add command output to the chat\?", r"what's new", pexpect.EOF]
        found = child.expect(questions)
        out += child.before + (child.after if isinstance(child.after, str) else "")
        if found == 3:
            break
        child.send("y\r" if found < 2 else "n\r")
    child.close()
    return out, child.exitstatus


@pytest.mark.parametrize("model", ["~/.aider"], indirect=True)
def test_aider_one_turn(home, aider_venv, model):
    out, status = _aider_turn(home, aider_venv, model)
    assert "nono-tool-ran" in out and "Permission denied" in out, out
    assert FAKE_KEY not in out and FAKE_KEY not in model.results()
    # (aider adds the output to the chat for the next message; --message sends none, so the model's second
    # request never comes: the turn is the reply and the command.)
    denials = {(r["path"], r["rule"]) for r in home.audit() if r.get("decision") == "deny"}
    assert (str(home.key), "group:deny_credentials") in denials, denials
    assert (str(home.home / ".aider" / "nono-evil"), "never-grantable") in denials, denials
    starts = [r for r in home.audit() if r.get("event") == "start" and "nono-tool-ran" in " ".join(r["argv"])]
    assert len(starts) == 1, out
    assert status == 0, out


def test_aiders_ordinary_tool_call_prints_no_nono_line_on_a_stock_home(skel_home, aider_venv):
    model = FakeModel(ORDINARY)
    try:
        out, status = _aider_turn(skel_home, aider_venv, model)
    finally:
        model.close()
    assert status == 0 and "README" in out, out  # aider shows the command's output on its terminal
    starts = [r for r in skel_home.audit() if r.get("event") == "start" and ORDINARY in " ".join(r["argv"])]
    assert starts, out
    assert [line for line in out.splitlines() if "nono:" in line] == []
