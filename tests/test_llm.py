"""The LLM layer against the scripted server on loopback: real HTTP, the real openai client."""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import structlog

import actors.llm
from actors.llm import (
    BudgetExhausted,
    Completion,
    ErrorReply,
    KeyFileRefused,
    LLMTimeout,
    MissingApiKey,
    OpenAICompatLLM,
    ProviderError,
    Reply,
    ScriptedLLMServer,
    ScriptedToolCall,
    StepBudget,
    TokenBudget,
    ToolCallRequest,
    Usage,
    build_llm,
    resolve,
)
from entityd.config import LlmSection
from entityd.errors import ConfigError

SECRET = "sk-test-5ecr3t-never-shown"
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "write_file",
            "description": "write a file",
            "parameters": {"type": "object", "properties": {"path": {"type": "string"}}},
        },
    }
]
USER = [{"role": "user", "content": "write hello.py"}]


class Events:
    def __init__(self) -> None:
        self.seen: list[tuple[str, dict[str, Any]]] = []

    async def __call__(self, typ: str, data: dict[str, Any]) -> None:
        self.seen.append((typ, data))

    def of(self, typ: str) -> list[dict[str, Any]]:
        return [data for kind, data in self.seen if kind == typ]


def make_llm(
    server: ScriptedLLMServer,
    *,
    provider: str = "scripted",
    environ: Mapping[str, str] | None = None,
    budget: TokenBudget | None = None,
    events: Events | None = None,
    timeout: float = 5.0,
    max_retries: int = 3,
) -> OpenAICompatLLM:
    settings = LlmSection(
        provider=provider, base_url=server.base_url, timeout=timeout, max_retries=max_retries
    )
    llm = build_llm(settings, environ=environ or {}, workspace=None, budget=budget, on_event=events)
    llm.backoff_initial = 0.01  # keep backoff waits short; Retry-After tests set their own
    return llm


def test_public_names_are_exported() -> None:
    assert set(actors.llm.__all__) == {
        *("LLM", "Completion", "ToolCallRequest", "Usage", "OpenAICompatLLM", "build_llm"),
        *("EventSink", "TokenBudget", "StepBudget", "PRESETS", "Preset", "ApiKey"),
        *("ResolvedProvider", "resolve", "LLMError", "MissingApiKey", "KeyFileRefused"),
        *("ProviderError", "BudgetExhausted", "LLMTimeout"),
        *("ScriptedLLMServer", "Reply", "ErrorReply", "ScriptedToolCall"),
    }
    assert len(actors.llm.__all__) == len(set(actors.llm.__all__))
    for name in actors.llm.__all__:
        assert hasattr(actors.llm, name), name


# retries


async def test_429_then_success_is_retried() -> None:
    events = Events()
    script = [ErrorReply(429, retry_after=0), Reply(content="hello")]
    async with ScriptedLLMServer(script) as server, make_llm(server, events=events) as llm:
        completion = await llm.generate(USER)
    assert completion.content == "hello"
    assert server.steps_used == 2
    [retry] = events.of("llm_retry")
    assert retry["status"] == 429 and retry["attempt"] == 1 and retry["delay_s"] == 0
    [call] = events.of("llm_call")
    assert call["attempts"] == 2 and call["model"] == "scripted"


async def test_500_twice_then_success() -> None:
    events = Events()
    script = [ErrorReply(500), ErrorReply(503), Reply(content="third time")]
    async with ScriptedLLMServer(script) as server, make_llm(server, events=events) as llm:
        completion = await llm.generate(USER)
    assert completion.content == "third time"
    assert [r["status"] for r in events.of("llm_retry")] == [500, 503]
    assert events.of("llm_call")[0]["attempts"] == 3


async def test_retries_exhausted_raise_provider_error_with_status() -> None:
    events = Events()
    script = [ErrorReply(502), ErrorReply(502), ErrorReply(502), Reply(content="too late")]
    async with ScriptedLLMServer(script) as server:
        async with make_llm(server, events=events, max_retries=2) as llm:
            with pytest.raises(ProviderError) as caught:
                await llm.generate(USER)
    assert caught.value.status == 502
    assert caught.value.attempts == 3
    assert server.steps_used == 3
    assert len(events.of("llm_retry")) == 2
    assert not events.of("llm_call")


async def test_400_is_not_retried() -> None:
    body = {"error": {"message": "tools[0] is not a valid schema", "type": "invalid_request"}}
    script = [ErrorReply(400, body=body), Reply(content="never sent")]
    events = Events()
    async with ScriptedLLMServer(script) as server, make_llm(server, events=events) as llm:
        with pytest.raises(ProviderError) as caught:
            await llm.generate(USER)
    assert caught.value.status == 400
    assert "tools[0] is not a valid schema" in str(caught.value)
    assert server.steps_used == 1
    assert not events.of("llm_retry")


async def test_retry_after_is_honoured_over_backoff() -> None:
    events = Events()
    script = [ErrorReply(429, retry_after=0.2), Reply(content="ok")]
    async with ScriptedLLMServer(script) as server, make_llm(server, events=events) as llm:
        llm.backoff_initial = 30.0  # would time the test out if Retry-After were ignored
        started = time.monotonic()
        await llm.generate(USER)
        elapsed = time.monotonic() - started
    assert events.of("llm_retry")[0]["delay_s"] == 0.2
    assert 0.2 <= elapsed < 5


async def test_retry_after_longer_than_we_wait_fails_at_once() -> None:
    script = [ErrorReply(429, retry_after=3600), Reply(content="an hour later")]
    async with ScriptedLLMServer(script) as server, make_llm(server) as llm:
        with pytest.raises(ProviderError) as caught:
            await llm.generate(USER)
    assert caught.value.status == 429
    assert "3600" in str(caught.value)
    assert server.steps_used == 1


async def test_connection_errors_are_retried_then_reported_without_status() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = LlmSection(provider="custom", model="m", base_url=f"http://127.0.0.1:{port}/v1")
    events = Events()
    llm = build_llm(settings, environ={}, workspace=None, budget=None, on_event=events)
    llm.backoff_initial = 0.01
    llm.max_retries = 1
    async with llm:
        with pytest.raises(ProviderError) as caught:
            await llm.generate(USER)
    assert caught.value.status is None
    assert caught.value.attempts == 2
    [retry] = events.of("llm_retry")
    assert retry["status"] is None and retry["reason"].startswith("connection error")


async def test_timeout_raises_llm_timeout() -> None:
    script = [Reply(content="too slow", delay=3.0)]
    async with ScriptedLLMServer(script) as server, make_llm(server, timeout=0.2) as llm:
        started = time.monotonic()
        with pytest.raises(LLMTimeout) as caught:
            await llm.generate(USER)
        assert time.monotonic() - started < 2
    assert caught.value.timeout == 0.2
    assert server.steps_used == 1  # a timeout is not retried


# completions, tool calls and reasoning_content


async def test_tool_calls_parse_into_requests() -> None:
    script = [
        Reply(
            content="writing it",
            tool_calls=[
                {"name": "write_file", "arguments": {"path": "hello.py"}, "id": "call_1"},
                ScriptedToolCall("run_tests", '{"args": '),  # malformed JSON stays raw
            ],
        )
    ]
    async with ScriptedLLMServer(script) as server, make_llm(server) as llm:
        completion = await llm.generate(USER, TOOLS)
    assert completion.tool_calls == [
        ToolCallRequest("call_1", "write_file", '{"path": "hello.py"}'),
        ToolCallRequest("call_scripted_0_1", "run_tests", '{"args": '),
    ]
    assert completion.content == "writing it"
    assert completion.finish_reason == "tool_calls"
    assert completion.model == "scripted"
    assert server.bodies[0]["tools"] == TOOLS
    assert server.bodies[0]["messages"] == USER


async def test_reasoning_content_round_trips_on_tool_call_turns() -> None:
    script = [
        Reply(
            reasoning_content="The user wants a file; write it first.",
            tool_calls=[{"name": "write_file", "arguments": {"path": "hello.py"}}],
        ),
        Reply(content="done"),
    ]
    async with ScriptedLLMServer(script) as server, make_llm(server) as llm:
        first = await llm.generate(USER, TOOLS)
        assert first.reasoning_content == "The user wants a file; write it first."
        call = first.tool_calls[0]
        messages = [
            *USER,
            first.assistant_message(),
            {"role": "tool", "tool_call_id": call.id, "content": "wrote 12 bytes"},
        ]
        second = await llm.generate(messages, TOOLS)
    assert second.content == "done"
    sent = server.bodies[1]["messages"][1]
    assert sent["role"] == "assistant"
    assert sent["reasoning_content"] == "The user wants a file; write it first."
    assert sent["tool_calls"][0]["id"] == call.id
    assert sent["tool_calls"][0]["function"] == {
        "name": "write_file",
        "arguments": '{"path": "hello.py"}',
    }


def test_assistant_message_shapes() -> None:
    plain = Completion(content="hi", reasoning_content="thought", usage=Usage(1, 1, 2))
    assert plain.assistant_message() == {"role": "assistant", "content": "hi"}
    calls = Completion(
        content=None,
        tool_calls=[ToolCallRequest("c1", "f", "{}")],
        reasoning_content="thought",
    )
    assert calls.assistant_message() == {
        "role": "assistant",
        "content": "",
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "f", "arguments": "{}"}}
        ],
        "reasoning_content": "thought",
    }


# budgets


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_usage_is_counted_and_an_exhausted_budget_stops_with_an_event() -> None:
    clock = FakeClock()
    budget = TokenBudget(100, clock=clock)
    events = Events()
    usage = {"prompt_tokens": 60, "completion_tokens": 50}
    script = [Reply(content="one", usage=usage), Reply(content="two")]
    async with ScriptedLLMServer(script) as server:
        async with make_llm(server, budget=budget, events=events) as llm:
            completion = await llm.generate(USER)
            assert completion.usage == Usage(60, 50, 110)
            assert budget.used() == 110 and budget.remaining() == 0
            [call] = events.of("llm_call")
            assert call["total_tokens"] == 110 and call["budget_remaining"] == 0
            with pytest.raises(BudgetExhausted) as caught:
                await llm.generate(USER)
    assert server.steps_used == 1  # the exhausted call never reached the server
    assert caught.value.kind == "tokens"
    assert "frees up in 60 min" in str(caught.value)
    [event] = events.of("budget_exhausted")
    assert event["kind"] == "tokens" and event["limit"] == 100 and event["frees_in"] == 3600
    clock.now += 3600
    assert budget.remaining() == 100


def test_token_budget_window_slides() -> None:
    clock = FakeClock()
    budget = TokenBudget(100, clock=clock)
    budget.spend(60)
    clock.now += 1800
    budget.spend(50)
    with pytest.raises(BudgetExhausted) as caught:
        budget.check()
    assert caught.value.frees_in == 1800  # when the first 60 leave the window
    clock.now += 1800
    assert budget.remaining() == 50
    budget.check()


def test_token_budget_memory_is_bounded_and_never_frees_early() -> None:
    """A call every second for two hours: the budget keeps a record per 10 s at most
    (one hour's worth), counts every token, and lets a token leave the window no sooner
    than an hour after it was spent (at most 10 s later)."""
    from actors.llm.budget import BUCKET_S, WINDOW_S

    clock = FakeClock()
    budget = TokenBudget(10**9, clock=clock)
    spent_at = []
    for _ in range(7200):
        budget.spend(3)
        spent_at.append(clock.now)
        clock.now += 1.0
        assert len(budget._spent) <= WINDOW_S / BUCKET_S + 1
    exact = 3 * sum(1 for t in spent_at if t > clock.now - WINDOW_S)
    assert exact <= budget.used() <= exact + 3 * BUCKET_S  # never less: never freed early
    last = spent_at[-1]
    clock.now = last + WINDOW_S - 0.5
    assert budget.used() >= 3  # the last spend is still in its hour
    clock.now = last + WINDOW_S
    assert budget.used() == 0


def test_step_budget_stops_past_the_limit() -> None:
    steps = StepBudget(2)
    steps.step()
    steps.step()
    assert steps.remaining() == 0
    with pytest.raises(BudgetExhausted) as caught:
        steps.step()
    assert caught.value.kind == "steps" and caught.value.limit == 2
    assert "llm.max_steps_per_turn" in str(caught.value)


# providers and keys


@pytest.mark.parametrize(
    ("provider", "environ", "base_url", "model"),
    [
        ("moonshot", {"MOONSHOT_API_KEY": SECRET}, "https://api.moonshot.ai/v1", "kimi-k2.5"),
        (
            "openrouter",
            {"OPENROUTER_API_KEY": SECRET},
            "https://openrouter.ai/api/v1",
            "moonshotai/kimi-k2",
        ),
        ("openai", {"OPENAI_API_KEY": SECRET}, "https://api.openai.com/v1", "gpt-4o-mini"),
        ("ollama", {}, "http://localhost:11434/v1", "llama3.1"),
    ],
)
def test_presets(provider: str, environ: dict[str, str], base_url: str, model: str) -> None:
    resolved = resolve(LlmSection(provider=provider), environ=environ, workspace=None)
    assert (resolved.base_url, resolved.model) == (base_url, model)
    assert (resolved.api_key is None) == (not environ)
    if resolved.api_key is not None:
        assert resolved.api_key.reveal() == SECRET


def test_custom_and_scripted_need_a_base_url() -> None:
    for provider in ("custom", "scripted"):
        with pytest.raises(ConfigError, match=r"llm\.base_url"):
            resolve(LlmSection(provider=provider, model="m"), environ={}, workspace=None)


def test_missing_key_names_the_variable_and_the_config_keys() -> None:
    with pytest.raises(MissingApiKey) as caught:
        resolve(LlmSection(provider="moonshot"), environ={}, workspace=None)
    message = str(caught.value)
    assert "MOONSHOT_API_KEY" in message
    assert "llm.api_key_env" in message and "llm.api_key_file" in message


def test_api_key_env_overrides_the_preset_variable() -> None:
    settings = LlmSection(provider="moonshot", api_key_env="KIMI_KEY")
    with pytest.raises(MissingApiKey, match="KIMI_KEY"):
        resolve(settings, environ={"MOONSHOT_API_KEY": "other"}, workspace=None)
    resolved = resolve(settings, environ={"KIMI_KEY": SECRET}, workspace=None)
    assert resolved.api_key is not None and resolved.api_key.reveal() == SECRET
    assert resolved.key_source == "env KIMI_KEY"


def write_key(path: Path, mode: int) -> Path:
    path.write_text(SECRET + "\n")
    os.chmod(path, mode)
    return path


def test_key_file_0600_is_read(tmp_path: Path) -> None:
    key = write_key(tmp_path / "moonshot.key", 0o600)
    settings = LlmSection(provider="moonshot", api_key_file=str(key))
    resolved = resolve(settings, environ={}, workspace=tmp_path / "workspace")
    assert resolved.api_key is not None and resolved.api_key.reveal() == SECRET


def test_key_file_readable_by_others_is_refused(tmp_path: Path) -> None:
    key = write_key(tmp_path / "moonshot.key", 0o644)
    settings = LlmSection(provider="moonshot", api_key_file=str(key))
    with pytest.raises(KeyFileRefused) as caught:
        resolve(settings, environ={}, workspace=None)
    assert f"chmod 600 {key}" in str(caught.value)
    assert SECRET not in str(caught.value)


def test_key_file_inside_the_workspace_is_refused(tmp_path: Path) -> None:
    workspace = tmp_path / "workspace"
    (workspace / "sub").mkdir(parents=True)
    inside = write_key(workspace / "sub" / "moonshot.key", 0o600)
    outside = write_key(tmp_path / "outside.key", 0o600)
    link_in_workspace = workspace / "link.key"
    link_in_workspace.symlink_to(outside)
    link_to_workspace = tmp_path / "points-in.key"
    link_to_workspace.symlink_to(inside)
    for path in (inside, link_in_workspace, link_to_workspace):
        settings = LlmSection(provider="moonshot", api_key_file=str(path))
        with pytest.raises(KeyFileRefused, match="inside the entity's workspace"):
            resolve(settings, environ={}, workspace=workspace)


def test_missing_and_empty_key_files_are_refused(tmp_path: Path) -> None:
    empty = write_key(tmp_path / "empty.key", 0o600)
    empty.write_text("\n")
    for path, problem in ((tmp_path / "nope.key", "no such file"), (empty, "is empty")):
        settings = LlmSection(provider="moonshot", api_key_file=str(path))
        with pytest.raises(KeyFileRefused, match=problem):
            resolve(settings, environ={}, workspace=None)


async def test_openrouter_sends_attribution_headers_and_its_key() -> None:
    async with ScriptedLLMServer([Reply(content="hi")]) as server:
        environ = {"OPENROUTER_API_KEY": SECRET}
        async with make_llm(server, provider="openrouter", environ=environ) as llm:
            await llm.generate(USER)
    [request] = server.requests
    assert request.headers["x-title"] == "entityd"
    assert request.headers["http-referer"].startswith("https://")
    assert request.headers["authorization"] == f"Bearer {SECRET}"
    assert request.body["model"] == "moonshotai/kimi-k2"


async def test_keyless_provider_never_sends_the_daemons_openai_key(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    monkeypatch.setenv("OPENAI_ORG_ID", "org-private")
    async with ScriptedLLMServer([Reply(content="hi")]) as server, make_llm(server) as llm:
        await llm.generate(USER)
    headers = server.requests[0].headers
    assert SECRET not in str(headers)
    assert "openai-organization" not in headers


async def test_the_key_never_appears_in_repr_errors_or_logs() -> None:
    echo = {"error": {"message": f"Incorrect API key provided: {SECRET}", "type": "auth"}}
    script = [ErrorReply(500, body=echo), ErrorReply(401, body=echo)]
    environ = {"MOONSHOT_API_KEY": SECRET}
    async with ScriptedLLMServer(script) as server:
        llm = make_llm(server, provider="moonshot", environ=environ)
        async with llm:
            with structlog.testing.capture_logs() as logs, pytest.raises(ProviderError) as caught:
                await llm.generate(USER)
    assert server.requests[0].headers["authorization"] == f"Bearer {SECRET}"  # it was used
    error = caught.value
    assert error.status == 401
    texts = [repr(llm), str(llm), repr(llm.provider), str(error), repr(error), repr(logs)]
    texts += [repr(llm.provider.api_key), str(llm.provider.api_key), str(error.args)]
    for text in texts:
        assert SECRET not in text
    assert "<hidden>" in str(error)
    assert error.__context__ is None and error.__cause__ is None
    assert logs and logs[0]["event"] == "llm_retry"


def test_build_llm_checks_the_key_file_against_the_workspace(tmp_path: Path) -> None:
    workspace = tmp_path / "ws"
    workspace.mkdir()
    key = write_key(workspace / "openai.key", 0o600)
    settings = LlmSection(provider="openai", api_key_file=str(key))
    with pytest.raises(KeyFileRefused):
        build_llm(settings, environ={}, workspace=workspace, budget=None)
