"""Goals for the entity's own orchestrator on a peer's behalf, and their outcomes.

The orchestrator accepts a goal at once and runs it later; a peer's goal is private
(its events carry no content, since events cross the hub) and names the peer actor to
tell when the turn ends, with a `turn_done` message that stays on the entity's own bus.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Awaitable, Callable

from entityd import Context, RemoteError
from protocol import reasons

from ..messages import Goal, GoalAccepted, GoalCancel, TurnDone

Listener = Callable[[TurnDone], Awaitable[None]]


class Turns:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._waiting: dict[str, asyncio.Future[TurnDone]] = {}
        self._listeners: list[Listener] = []

    def stop(self) -> None:
        for future in self._waiting.values():
            future.cancel()

    def listen(self, listener: Listener) -> None:
        """Call `listener(done)` for every turn that ends without a waiter."""
        self._listeners.append(listener)

    async def submit(self, goal: Goal) -> GoalAccepted:
        goal = dataclasses.replace(goal, private=True, notify=f"{self.ctx.entity}/peer")
        accepted: GoalAccepted = await self.ctx.ask(f"{self.ctx.entity}/orchestrator", goal)
        return accepted

    async def cancel(self, task_id: str, reason: str) -> None:
        """Stop the goal `task_id` this actor submitted (queued or running); nothing if it
        was answered already."""
        try:
            await self.ctx.ask(f"{self.ctx.entity}/orchestrator", GoalCancel(task_id, reason))
        except RemoteError as exc:
            if exc.code != reasons.NOT_FOUND:
                raise

    async def run(self, goal: Goal, timeout: float) -> TurnDone:
        """Give the orchestrator `goal` and wait for its outcome."""
        future: asyncio.Future[TurnDone] = asyncio.get_running_loop().create_future()
        self._waiting[goal.task_id] = future
        try:
            await self.submit(goal)
            async with asyncio.timeout(timeout):
                return await future
        finally:
            if self._waiting.get(goal.task_id) is future:
                del self._waiting[goal.task_id]

    async def done(self, done: TurnDone) -> None:
        future = self._waiting.pop(done.task_id, None)
        if future is not None:
            if not future.done():
                future.set_result(done)
            return
        for listener in self._listeners:
            await listener(done)
