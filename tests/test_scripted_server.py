"""The scripted chat-completions server speaks HTTP and the OpenAI API correctly: checked
with raw httpx2 requests and with the real openai client, streaming included."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam

from actors.llm import ErrorReply, Reply, ScriptedLLMServer
from actors.llm.scripted import step_from_json

USER: list[ChatCompletionMessageParam] = [{"role": "user", "content": "hello"}]


def client_for(server: ScriptedLLMServer) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(base_url=server.base_url, api_key="scripted", max_retries=0)


async def test_non_streaming_completion_over_raw_http() -> None:
    async with ScriptedLLMServer([Reply(content="hi there")]) as server:
        async with httpx2.AsyncClient() as http:
            response = await http.post(
                f"{server.base_url}/chat/completions",
                json={"model": "anything", "messages": USER},
                headers={"X-Probe": "1"},
            )
    assert response.status_code == 200
    assert "scripted" in response.headers["server"]
    data = response.json()
    assert data["object"] == "chat.completion"
    assert data["model"] == "scripted"
    assert data["choices"][0]["message"] == {"role": "assistant", "content": "hi there"}
    assert data["choices"][0]["finish_reason"] == "stop"
    usage = data["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"] > 0
    [request] = server.requests
    assert (request.method, request.path) == ("POST", "/v1/chat/completions")
    assert request.headers["x-probe"] == "1"
    assert request.body == {"model": "anything", "messages": USER}


async def test_streaming_with_the_openai_client() -> None:
    reply = Reply(
        content="Here is the file you asked for, written in full.",
        reasoning_content="Think first, then call the tool.",
        tool_calls=[
            {"name": "write_file", "arguments": {"path": "a.py", "content": "print(1)\n" * 5}},
            {"name": "run_tests", "arguments": {}},
        ],
        usage={"prompt_tokens": 7, "completion_tokens": 9},
    )
    async with ScriptedLLMServer([reply]) as server, client_for(server) as client:
        stream = await client.chat.completions.create(
            model="scripted",
            messages=USER,
            stream=True,
            stream_options={"include_usage": True},
        )
        content, reasoning, finish = "", "", None
        calls: dict[int, dict[str, str]] = {}
        usage = None
        async for chunk in stream:
            assert chunk.model == "scripted"
            usage = chunk.usage or usage
            for choice in chunk.choices:
                delta = choice.delta
                content += delta.content or ""
                reasoning += getattr(delta, "reasoning_content", None) or ""
                finish = choice.finish_reason or finish
                for call in delta.tool_calls or []:
                    entry = calls.setdefault(call.index, {"id": "", "name": "", "arguments": ""})
                    entry["id"] += call.id or ""
                    if call.function is not None:
                        entry["name"] += call.function.name or ""
                        entry["arguments"] += call.function.arguments or ""
    assert content == reply.content
    assert reasoning == reply.reasoning_content
    assert finish == "tool_calls"
    assert [c["name"] for c in calls.values()] == ["write_file", "run_tests"]
    assert json.loads(calls[0]["arguments"]) == {"path": "a.py", "content": "print(1)\n" * 5}
    assert json.loads(calls[1]["arguments"]) == {}
    assert calls[0]["id"] == "call_scripted_0_0"
    assert usage is not None and usage.total_tokens == 16
    assert server.bodies[0]["stream"] is True


async def test_streaming_wire_format_ends_with_done() -> None:
    async with ScriptedLLMServer([Reply(content="abc")]) as server:
        async with httpx2.AsyncClient() as http:
            body = {"model": "scripted", "messages": USER, "stream": True}
            async with http.stream("POST", f"{server.base_url}/chat/completions", json=body) as r:
                assert r.status_code == 200
                assert r.headers["content-type"].startswith("text/event-stream")
                lines = [line async for line in r.aiter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert all(c["object"] == "chat.completion.chunk" for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


async def test_models_list() -> None:
    async with ScriptedLLMServer([]) as server, client_for(server) as client:
        models = await client.models.list()
    assert [m.id for m in models.data] == ["scripted"]


async def test_exhausted_script_answers_500() -> None:
    async with ScriptedLLMServer([Reply(content="only one")]) as server:
        async with httpx2.AsyncClient() as http:
            url = f"{server.base_url}/chat/completions"
            first = await http.post(url, json={"model": "m", "messages": USER})
            second = await http.post(url, json={"model": "m", "messages": USER})
    assert first.status_code == 200
    assert second.status_code == 500
    assert "script exhausted" in second.json()["error"]["message"]
    assert len(server.bodies) == 2


async def test_error_steps_with_retry_after_and_text_bodies() -> None:
    script = [
        ErrorReply(429, retry_after=7),
        ErrorReply(503, body="upstream overloaded"),
        ErrorReply(400, body={"error": {"message": "bad", "type": "invalid_request_error"}}),
    ]
    async with ScriptedLLMServer(script) as server:
        async with httpx2.AsyncClient() as http:
            url = f"{server.base_url}/chat/completions"
            answers = [await http.post(url, json={"messages": USER}) for _ in script]
    limited, overloaded, bad = answers
    assert limited.status_code == 429 and limited.headers["retry-after"] == "7"
    assert limited.json()["error"]["message"] == "scripted error 429"
    assert overloaded.status_code == 503 and overloaded.text == "upstream overloaded"
    assert bad.status_code == 400 and bad.json()["error"]["message"] == "bad"


async def test_openai_client_sees_scripted_errors_as_api_errors() -> None:
    async with ScriptedLLMServer([ErrorReply(429, retry_after=0)]) as server:
        async with client_for(server) as client:
            with pytest.raises(openai.RateLimitError) as caught:
                await client.chat.completions.create(model="scripted", messages=USER)
    assert caught.value.response.headers["retry-after"] == "0"


async def test_callable_steps_answer_from_the_request() -> None:
    def echo(request: dict[str, Any]) -> Reply:
        return Reply(content="you said: " + request["messages"][-1]["content"])

    script = [echo, lambda request: {"status": 503}]
    async with ScriptedLLMServer(script) as server, client_for(server) as client:
        completion = await client.chat.completions.create(model="scripted", messages=USER)
        with pytest.raises(openai.InternalServerError):
            await client.chat.completions.create(model="scripted", messages=USER)
    assert completion.choices[0].message.content == "you said: hello"


async def test_one_callable_answers_every_request() -> None:
    turns = iter(range(100))
    async with ScriptedLLMServer(lambda request: Reply(content=str(next(turns)))) as server:
        async with client_for(server) as client:
            answers = [
                (await client.chat.completions.create(model="s", messages=USER))
                .choices[0]
                .message.content
                for _ in range(3)
            ]
    assert answers == ["0", "1", "2"]
    assert server.steps_used == 3


async def test_chunked_request_bodies_unknown_routes_and_bad_json() -> None:
    async def body() -> AsyncIterator[bytes]:
        yield b'{"model": "m", '
        yield b'"messages": [{"role": "user", "content": "chunked"}]}'

    async with ScriptedLLMServer([Reply(content="ok")]) as server:
        async with httpx2.AsyncClient() as http:
            url = f"{server.base_url}/chat/completions"
            chunked = await http.post(url, content=body())
            missing = await http.get(f"{server.base_url}/embeddings")
            broken = await http.post(url, content=b"{not json")
    assert chunked.status_code == 200
    assert server.bodies[0]["messages"][0]["content"] == "chunked"
    assert missing.status_code == 404
    assert broken.status_code == 400
    assert server.steps_used == 1  # neither the 404 nor the 400 used a step


def test_json_steps_are_checked() -> None:
    assert step_from_json({"status": 429, "retry_after": 1}) == ErrorReply(429, retry_after=1)
    assert step_from_json({"content": "x"}) == Reply(content="x")
    with pytest.raises(ValueError, match="unknown key 'contnet'"):
        step_from_json({"contnet": "typo"})
    with pytest.raises(ValueError, match="unknown key"):
        ScriptedLLMServer([{"content": "ok"}, {"stauts": 500}])


def test_offline_demo_command(tmp_path: Path) -> None:
    script = tmp_path / "script.json"
    script.write_text(json.dumps([{"content": "offline hello"}]))
    process = subprocess.Popen(
        [sys.executable, "-m", "actors.llm.scripted", "--port", "0", "--script", str(script)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("scripted LLM server (not a model) on http://127.0.0.1:"), line
        base_url = line.rsplit(" ", 1)[1].strip()
        with httpx2.Client() as http:
            answer = http.post(f"{base_url}/chat/completions", json={"messages": USER})
        assert answer.json()["choices"][0]["message"]["content"] == "offline hello"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()
