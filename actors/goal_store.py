"""The orchestrator's accepted goals, kept on disk until their answer is out.

A goal is stored before the orchestrator acknowledges it, marked running when its turn
starts and removed once its answer is published, so after a stop or a crash every goal
left here was accepted and never answered: one still queued is run, one whose turn was
cut short is answered with the reason (its steps may have taken effect already).
"""

from __future__ import annotations

import dataclasses
import json
from enum import StrEnum

from .durable import DurableStore
from .messages import Goal

SCHEMA = """
CREATE TABLE IF NOT EXISTS goals (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    task_id TEXT NOT NULL UNIQUE,
    goal TEXT NOT NULL,          -- the Goal as JSON
    state TEXT NOT NULL          -- queued | running
)
"""


class GoalState(StrEnum):
    QUEUED = "queued"
    RUNNING = "running"


class GoalStore(DurableStore):
    """Accepted, unanswered goals in one SQLite file (":memory:" keeps them only for the
    actor's life: the tests' orchestrators)."""
    schema = SCHEMA
    holds = "goal store"

    async def add(self, goal: Goal) -> None:
        await self.db.execute(
            "INSERT OR IGNORE INTO goals (task_id, goal, state) VALUES (?, ?, ?)",
            (goal.task_id, json.dumps(dataclasses.asdict(goal)), GoalState.QUEUED.value),
        )

    async def running(self, task_id: str) -> None:
        await self.db.execute("UPDATE goals SET state = ? WHERE task_id = ?",
                              (GoalState.RUNNING.value, task_id))

    async def answered(self, task_id: str) -> None:
        await self.db.execute("DELETE FROM goals WHERE task_id = ?", (task_id,))

    async def pending(self) -> list[tuple[Goal, GoalState]]:
        """The goals accepted and not answered, in the order they were accepted."""
        async with self.db.execute("SELECT goal, state FROM goals ORDER BY seq") as rows:
            return [(Goal(**json.loads(goal)), GoalState(state)) async for goal, state in rows]
