"""The agent loop over the real LLM client and the scripted server (not a model)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import pytest

from actors.agent import AgentLoop, ObservationStep, Step, TaskStep, Tool, Toolbox
from actors.agent.loop import summarize
from actors.agent.toolbox import ToolFailed, schema
from actors.llm import (
    OpenAICompatLLM,
    Reply,
    ScriptedLLMServer,
    ScriptedToolCall,
    TokenBudget,
    build_llm,
)
from entityd.config import LlmSection


async def llm_for(server: ScriptedLLMServer, budget: TokenBudget | None = None
                  ) -> OpenAICompatLLM:
    settings = LlmSection(provider="scripted", base_url=server.base_url, max_retries=0)
    return build_llm(settings, environ={}, workspace=None, budget=budget)


def echo_toolbox(calls: list[dict[str, Any]]) -> Toolbox:
    async def echo(args: dict[str, Any]) -> str:
        calls.append(args)
        if args["text"] == "fail":
            raise ToolFailed("asked to fail")
        return f"echo: {args['text']}"

    return Toolbox([Tool("echo", "Echo text back.", schema({"text": "what to echo"}), echo)])


@pytest.fixture
async def steps() -> AsyncIterator[list[Step]]:
    yield []


async def test_tool_calls_run_and_the_final_answer_ends_the_turn(steps: list[Step]) -> None:
    script = [
        Reply(tool_calls=[ScriptedToolCall("echo", {"text": "hi"})]),
        Reply(content="all done"),
    ]
    calls: list[dict[str, Any]] = []

    async def record(step: Step) -> None:
        steps.append(step)

    async with ScriptedLLMServer(script) as server:
        llm = await llm_for(server)
        loop = AgentLoop(llm, echo_toolbox(calls), "system", 5, record)
        outcome = await loop.run(TaskStep("say hi"))
        await llm.aclose()
        second = server.requests[1].body["messages"]
    assert outcome.ok and outcome.answer == "all done" and outcome.steps == 2
    assert calls == [{"text": "hi"}]
    assert {"role": "tool", "tool_call_id": second[-1]["tool_call_id"],
            "content": "echo: hi"} == second[-1]
    assert [type(s).__name__ for s in steps] == ["ActionStep", "ObservationStep",
                                                "FinalAnswerStep"]


@pytest.mark.parametrize(
    ("call", "expected"),
    [
        (ScriptedToolCall("echo", "{not json"), "not valid JSON"),
        (ScriptedToolCall("echo", "[1, 2]"), "must be a JSON object"),
        (ScriptedToolCall("echo", {}), "echo needs text"),
        (ScriptedToolCall("launch_rockets", {}), "there is no tool 'launch_rockets'"),
        (ScriptedToolCall("echo", {"text": "fail"}), "asked to fail"),
    ],
)
async def test_model_mistakes_become_observations(call: ScriptedToolCall, expected: str,
                                                  steps: list[Step]) -> None:
    script = [Reply(tool_calls=[call]), Reply(content="recovered")]

    async def record(step: Step) -> None:
        steps.append(step)

    async with ScriptedLLMServer(script) as server:
        llm = await llm_for(server)
        outcome = await AgentLoop(llm, echo_toolbox([]), "system", 5, record).run(
            TaskStep("try")
        )
        await llm.aclose()
        fed_back = server.requests[1].body["messages"][-1]["content"]
    assert outcome.ok and outcome.answer == "recovered"
    observation = next(s for s in steps if isinstance(s, ObservationStep))
    assert not observation.ok
    assert expected in observation.output and expected in fed_back


async def test_step_budget_stops_a_runaway_loop() -> None:
    script = [Reply(tool_calls=[ScriptedToolCall("echo", {"text": str(i)})]) for i in range(10)]
    async with ScriptedLLMServer(script) as server:
        llm = await llm_for(server)
        outcome = await AgentLoop(llm, echo_toolbox([]), "system", 3).run(TaskStep("loop"))
        await llm.aclose()
        asked = len(server.requests)
    assert not outcome.ok and outcome.stopped == "budget" and outcome.steps == 3
    assert asked == 3
    assert "3 steps" in outcome.answer


async def test_token_budget_stops_the_turn_cleanly() -> None:
    usage = {"prompt_tokens": 600, "completion_tokens": 500, "total_tokens": 1100}
    script = [Reply(tool_calls=[ScriptedToolCall("echo", {"text": "x"})], usage=usage)] * 5
    async with ScriptedLLMServer(script) as server:
        llm = await llm_for(server, TokenBudget(1000))
        outcome = await AgentLoop(llm, echo_toolbox([]), "system", 10).run(TaskStep("spend"))
        await llm.aclose()
        asked = len(server.requests)
    assert not outcome.ok and outcome.stopped == "budget"
    assert asked == 1  # the second call was refused before it was made


def test_a_dm_read_is_kept_out_of_the_step_event_and_other_output_is_cut() -> None:
    """Events cross the hub: a Moltbook DM's words never go into one; other tools'
    output goes in cut to the limit."""
    words = "a stranger's words to this entity alone " * 20
    dms = summarize(ObservationStep("c1", "moltbook_read_dms", words, True))
    assert words[:40] not in str(dms) and dms["output"].endswith("kept out of events)")
    shell = summarize(ObservationStep("c2", "shell", words, True), limit=50)
    assert shell["output"] == words[:50]
