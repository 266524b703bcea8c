"""The demo model, served by the scripted server and called with the real openai client:
each kind of request gets its answer, always marked as not coming from a model."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from typing import Any

import httpx2
import openai
import pytest

from actors.llm import ScriptedLLMServer
from actors.llm.demo import demo_reply

ORCHESTRATOR_SYSTEM = (
    "You are entity-a, an autonomous software entity run by entityd. You plan and decide."
)
LESSONS_SYSTEM = (
    "A task just finished. Write down what is worth remembering for future tasks: lessons. "
    "Answer with a JSON array of at most 3 short strings."
)


def tools(*names: str) -> list[Any]:
    return [
        {"type": "function",
         "function": {"name": name, "description": name,
                      "parameters": {"type": "object", "properties": {}}}}
        for name in names
    ]


ORCHESTRATOR_TOOLS = tools("delegate_to_coder", "remember", "check_peer_alive", "write_file")


async def complete(messages: list[Any], tool_specs: list[Any] | None = None) -> Any:
    async with ScriptedLLMServer(demo_reply) as server:
        client = openai.AsyncOpenAI(base_url=server.base_url, api_key="demo", max_retries=0)
        async with client:
            extra: dict[str, Any] = {"tools": tool_specs} if tool_specs else {}
            completion = await client.chat.completions.create(
                model="scripted", messages=messages, **extra
            )
    return completion.choices[0].message


async def test_a_tool_result_is_summarised_as_the_final_answer() -> None:
    output = "entity-b is alive: last heartbeat 1.2 s ago. " + "x" * 400
    message = await complete(
        [
            {"role": "system", "content": ORCHESTRATOR_SYSTEM},
            {"role": "user", "content": "is entity-b alive?"},
            {"role": "assistant", "content": None, "tool_calls": [
                {"id": "c1", "type": "function",
                 "function": {"name": "check_peer_alive", "arguments": '{"peer": "entity-b"}'}},
            ]},
            {"role": "tool", "tool_call_id": "c1", "content": output},
        ],
        ORCHESTRATOR_TOOLS,
    )
    assert message.content == "(demo model) " + output[:300]
    assert not message.tool_calls


async def test_a_peer_named_by_the_user_is_checked_with_check_peer_alive() -> None:
    message = await complete(
        [
            {"role": "system", "content": ORCHESTRATOR_SYSTEM},
            {"role": "user", "content": "Hello entity-a. Is entity-b up? Ask entity-c too."},
        ],
        ORCHESTRATOR_TOOLS,
    )
    assert message.content.startswith("(demo model) ")
    [call] = message.tool_calls
    assert call.function.name == "check_peer_alive"
    assert json.loads(call.function.arguments) == {"peer": "entity-b"}


async def test_no_peer_call_about_itself_or_without_the_peer_tool() -> None:
    about_itself = await complete(
        [{"role": "system", "content": ORCHESTRATOR_SYSTEM},
         {"role": "user", "content": "entity-a, how are you?"}],
        ORCHESTRATOR_TOOLS,
    )
    assert not about_itself.tool_calls
    assert about_itself.content == "(demo model) I received: entity-a, how are you?"
    no_tool = await complete(
        [{"role": "system", "content": ORCHESTRATOR_SYSTEM},
         {"role": "user", "content": "is entity-b up?"}],
        tools("remember", "recall"),
    )
    assert not no_tool.tool_calls
    assert no_tool.content == "(demo model) I received: is entity-b up?"


async def test_without_its_own_name_any_peer_name_counts() -> None:
    message = await complete(
        [{"role": "user", "content": "ping entity-b-2."}], tools("check_peer_alive")
    )
    [call] = message.tool_calls
    assert json.loads(call.function.arguments) == {"peer": "entity-b-2"}


async def test_the_coder_says_it_writes_no_code() -> None:
    message = await complete(
        [{"role": "system", "content": "You are the coder of entity-a, an autonomous entity."},
         {"role": "user", "content": "Write hello.py and test it with entity-b's help."}],
        tools("read_file", "write_file", "shell"),
    )
    assert message.content == "(demo model) I would write code here, but I am a demo model."
    assert not message.tool_calls


async def test_the_lessons_call_gets_an_empty_json_array() -> None:
    message = await complete(
        [{"role": "system", "content": LESSONS_SYSTEM},
         {"role": "user", "content": "Goal: hi\n\nOutcome (done): hello"}],
    )
    assert message.content == "(demo model) []"


async def test_anything_else_is_echoed_and_cut() -> None:
    long_text = "hello " * 100
    message = await complete(
        [{"role": "system", "content": ORCHESTRATOR_SYSTEM},
         {"role": "user", "content": [{"type": "text", "text": long_text}]}],
        tools("remember", "delegate_to_coder", "write_file"),
    )
    assert message.content == "(demo model) I received: " + long_text[:200]


@pytest.mark.parametrize(
    "request_body",
    [{}, {"messages": []}, {"messages": [{"role": "tool"}]}, {"messages": "junk", "tools": 3}],
)
def test_odd_requests_still_get_a_marked_answer(request_body: dict[str, Any]) -> None:
    reply = demo_reply(request_body)
    assert reply.content is not None and reply.content.startswith("(demo model) ")


def test_the_demo_command_serves_the_demo_model() -> None:
    process = subprocess.Popen(
        [sys.executable, "-m", "actors.llm.scripted", "--port", "0", "--demo"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline()
        assert line.startswith("scripted LLM server (not a model) on http://127.0.0.1:"), line
        base_url = line.rsplit(" ", 1)[1].strip()
        with httpx2.Client() as http:
            body = {"messages": [{"role": "user", "content": "hi"}]}
            answer = http.post(f"{base_url}/chat/completions", json=body)
        assert answer.json()["choices"][0]["message"]["content"] == "(demo model) I received: hi"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


def test_script_and_demo_are_exclusive_and_one_is_required() -> None:
    for args in ([], ["--demo", "--script", "steps.json"]):
        result = subprocess.run(
            [sys.executable, "-m", "actors.llm.scripted", *args],
            capture_output=True, text=True, timeout=30,
        )
        assert result.returncode == 2
        assert "--script" in result.stderr and "--demo" in result.stderr
