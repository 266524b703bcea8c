"""Goals for the entity's own orchestrator on a peer's behalf, and their answers.

The orchestrator accepts a goal at once and publishes an `answer` event when its turn
ends; the peer actor listens to its own entity's signed orchestrator events to learn
how the turns it asked for ended (a talk's reply, a delegated task's outcome).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from entityd.actor import Context
from entityd.bus import barrier
from protocol import Event, ProtocolError, subjects

from ..messages import Goal, GoalAccepted

Listener = Callable[[str, dict[str, Any]], Awaitable[None]]


class Turns:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._transport = ctx.transport
        self._guard = self._transport.new_replay_guard()
        self._waiting: dict[str, asyncio.Future[dict[str, Any]]] = {}
        self._listeners: list[Listener] = []
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self._transport.nc.subscribe(
            subjects.event(self.ctx.entity, "orchestrator", "*"), cb=self._on_event)
        await barrier(self._transport.nc)

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception:  # the connection may be gone already
                pass
        for future in self._waiting.values():
            future.cancel()

    def listen(self, listener: Listener) -> None:
        """Call `listener(type, data)` for every turn_started and answer event."""
        self._listeners.append(listener)

    def expect(self, task_id: str) -> asyncio.Future[dict[str, Any]]:
        """A future for the answer event of `task_id` (register before submitting)."""
        future = self._waiting.get(task_id)
        if future is None or future.done():
            future = asyncio.get_running_loop().create_future()
            self._waiting[task_id] = future
        return future

    async def submit(self, goal: Goal) -> GoalAccepted:
        accepted: GoalAccepted = await self.ctx.ask(f"{self.ctx.entity}/orchestrator", goal)
        return accepted

    async def run(self, goal: Goal, timeout: float) -> dict[str, Any]:
        """Give the orchestrator `goal` and wait for its answer event's data."""
        future = self.expect(goal.task_id)
        try:
            await self.submit(goal)
            async with asyncio.timeout(timeout):
                return await asyncio.shield(future)
        finally:
            if self._waiting.get(goal.task_id) is future:
                del self._waiting[goal.task_id]

    async def _on_event(self, msg: Msg) -> None:
        try:
            env = self._transport.open(msg.data, subject=msg.subject, local=self.ctx.entity,
                                       replay=self._guard)
        except ProtocolError:
            return
        event = env.message
        if not isinstance(event, Event) or env.src_entity != self.ctx.entity:
            return
        task_id = str(event.data.get("task_id", ""))
        if event.type == "answer":
            future = self._waiting.pop(task_id, None)
            if future is not None and not future.done():
                future.set_result(event.data)
        if event.type in ("turn_started", "answer"):
            for listener in self._listeners:
                try:
                    await listener(event.type, event.data)
                except Exception as exc:  # a listener's bug must not stop the others
                    self.ctx.log.error("turn_listener_failed", error=repr(exc))
