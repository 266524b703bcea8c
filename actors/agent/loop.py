"""The agent loop: ask the model, run the tools it calls, feed back what they returned.

A turn ends with a final answer (a reply with no tool calls), or stops cleanly when the
step or token budget is spent.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from actors.llm import LLM, BudgetExhausted, LLMError

from .steps import ActionStep, FinalAnswerStep, ObservationStep, Step, TaskStep, Transcript
from .toolbox import Toolbox

OnStep = Callable[[Step], Awaitable[None]]


@dataclass(frozen=True)
class TurnOutcome:
    ok: bool
    answer: str
    steps: int
    stopped: str = ""  # why the turn stopped early: "budget", "llm_error"


class AgentLoop:
    def __init__(self, llm: LLM, toolbox: Toolbox, system_prompt: str, max_steps: int,
                 on_step: OnStep | None = None) -> None:
        self.llm = llm
        self.toolbox = toolbox
        self.system_prompt = system_prompt
        self.max_steps = max_steps
        self.on_step = on_step

    async def run(self, task: TaskStep, history: list[Step] | None = None) -> TurnOutcome:
        transcript = Transcript(self.system_prompt, [*(history or []), task])
        tools = self.toolbox.specs() or None
        for step_number in range(1, self.max_steps + 1):
            try:
                completion = await self.llm.generate(transcript.messages(), tools)
            except BudgetExhausted as exc:
                return TurnOutcome(False, f"stopped: {exc}", step_number - 1, "budget")
            except LLMError as exc:
                return TurnOutcome(False, f"stopped: the model failed: {exc}",
                                   step_number - 1, "llm_error")
            if not completion.tool_calls:
                final = FinalAnswerStep(completion.content or "")
                transcript.steps.append(final)
                await self._report(final)
                return TurnOutcome(True, final.text, step_number)
            action = ActionStep(completion)
            transcript.steps.append(action)
            await self._report(action)
            for call in completion.tool_calls:
                outcome = await self.toolbox.call(call.name, call.arguments)
                observation = ObservationStep(call.id, call.name, outcome.output, outcome.ok)
                transcript.steps.append(observation)
                await self._report(observation)
        return TurnOutcome(
            False,
            f"stopped: the turn used all {self.max_steps} steps without a final answer",
            self.max_steps,
            "budget",
        )

    async def _report(self, step: Step) -> None:
        if self.on_step is not None:
            await self.on_step(step)


PRIVATE_KEYS = ("text", "output")
# Tools whose output is never put in an event (events cross the hub): Moltbook DMs are
# strangers' words to this entity alone, however public Moltbook lets them become.
OUTPUT_NOT_IN_EVENTS = frozenset({"moltbook_read_dms"})


def summarize(step: Step, limit: int = 300, private: bool = False) -> dict[str, Any]:
    """A short, event-sized description of a step (never whole file contents); without
    any content when `private` (a peer's encrypted task: events cross the hub)."""
    summary = _summary(step, limit)
    if private:
        for key in PRIVATE_KEYS:
            summary.pop(key, None)
    return summary


def _summary(step: Step, limit: int) -> dict[str, Any]:
    match step:
        case ActionStep(completion):
            return {
                "kind": "action",
                "text": (completion.content or "")[:limit],
                "tools": [call.name for call in completion.tool_calls],
            }
        case ObservationStep(_, tool, output, ok):
            if tool in OUTPUT_NOT_IN_EVENTS:
                output = f"({len(output)} characters, kept out of events)"
            return {"kind": "observation", "tool": tool, "ok": ok, "output": output[:limit]}
        case FinalAnswerStep(text):
            return {"kind": "answer", "text": text[:limit]}
        case TaskStep(text):
            return {"kind": "task", "text": text[:limit]}
    raise TypeError(f"not a step: {step!r}")
