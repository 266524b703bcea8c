"""What the orchestrator keeps from a finished turn: lessons the model draws from it and an
episode of what was done, stored under the turn's origin (actors/turn_scope.py), so that
what a peer's words taught is recalled only into turns entitled to those words."""

from __future__ import annotations

import json

from entityd import Context, EntitydError

from . import prompts
from .agent.loop import TurnOutcome
from .llm import LLM, LLMError
from .messages import Goal, MemoryAdd, MemoryRef
from .turn_scope import TurnScope
from .untrusted import json_loads

MAX_LESSONS = 3


async def learn(ctx: Context, llm: LLM, goal: Goal, outcome: TurnOutcome,
                scope: TurnScope) -> None:
    """Ask the model for lessons from the finished task and keep them (merged)."""
    if outcome.stopped == "llm_error":
        return
    messages = [
        {"role": "system", "content": prompts.load("lessons")},
        {"role": "user", "content": f"Goal: {goal.text}\n\nOutcome "
         f"({'done' if outcome.ok else 'not done'}): {outcome.answer}"},
    ]
    try:
        completion = await llm.generate(messages, None)
    except LLMError as exc:
        ctx.log.warning("lessons_failed", task_id=goal.task_id, error=str(exc))
        return
    lessons = parse_lessons(completion.content or "")
    memory = f"{ctx.entity}/memory"
    source = f"task {goal.task_id}"
    stored = []
    for lesson in lessons:
        try:
            ref: MemoryRef = await ctx.ask(memory, MemoryAdd("lesson", lesson, 0.6, source,
                                                             scope.origin))
            stored.append({"id": ref.id, "merged": ref.merged})
        except EntitydError as exc:
            ctx.log.warning("lesson_not_stored", error=str(exc))
    await ctx.ask(memory, MemoryAdd("episode", f"{goal.text[:300]} -> {outcome.answer[:300]}",
                                    0.3, source, scope.origin))
    await ctx.emit("lessons", task_id=goal.task_id, stored=stored,
                   **({} if scope.private else {"lessons": lessons}))


def parse_lessons(text: str) -> list[str]:
    """The model's JSON array of lessons; anything else means none (and is not an error)."""
    start, end = text.find("["), text.rfind("]")
    if start < 0 or end <= start:
        return []
    try:
        parsed = json_loads(text[start : end + 1])
    except json.JSONDecodeError:
        return []
    if not isinstance(parsed, list):
        return []
    return [item.strip() for item in parsed
            if isinstance(item, str) and item.strip()][:MAX_LESSONS]
