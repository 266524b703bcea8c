"""Recording token use: an LLM that tells the tokens and estimated cost of each of its
calls to the entity's memory actor, which keeps them and sums them (usage_get).

Told, not asked: a turn never waits on memory for this, and a record that cannot be sent
is logged and lost (the tokens still count against the budgets, which do not read it).
"""

from __future__ import annotations

import time
from typing import Any

from entityd import Context, EntitydError

from .client import LLM, Completion
from .cost import ModelCost
from .messages import UsageAdd


class UsageMeter:
    """`llm` whose calls are recorded as made for `task_id`, paid by `payer` ("" the
    operator, else a peer), at the prices of `cost`."""

    def __init__(self, llm: LLM, ctx: Context, task_id: str, cost: ModelCost,
                 payer: str = "") -> None:
        self.llm = llm
        self.ctx = ctx
        self.task_id = task_id
        self.cost = cost
        self.payer = payer

    async def generate(self, messages: list[dict[str, Any]],
                       tools: list[dict[str, Any]] | None = None) -> Completion:
        completion = await self.llm.generate(messages, tools)
        await self._record(completion)
        return completion

    async def _record(self, completion: Completion) -> None:
        prompt = completion.usage.prompt_tokens
        output = completion.usage.completion_tokens
        record = UsageAdd(self.task_id, self.cost.provider, self.cost.model, prompt, output,
                          self.cost.micros(prompt, output), time.time_ns() // 1_000_000,
                          self.payer)
        try:
            await self.ctx.tell(f"{self.ctx.entity}/memory", record)
        except EntitydError as exc:
            self.ctx.log.warning("usage_lost", task_id=self.task_id, tokens=prompt + output,
                                 error=str(exc))
