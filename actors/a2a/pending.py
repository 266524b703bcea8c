"""The A2A tasks handed to the orchestrator and not yet answered, kept on disk so that,
after a restart, each is given to the orchestrator again (a goal it still holds is one
goal; one whose answer was lost in the restart runs again) and its answer still reaches
the task."""

from __future__ import annotations

from dataclasses import dataclass

from ..durable import DurableStore

SCHEMA = """
CREATE TABLE IF NOT EXISTS pending (
    goal_id TEXT PRIMARY KEY,
    client TEXT NOT NULL,
    task_id TEXT NOT NULL,
    context_id TEXT NOT NULL,
    text TEXT NOT NULL
)
"""


@dataclass(frozen=True)
class Pending:
    goal_id: str
    client: str
    task_id: str
    context_id: str
    text: str


class PendingGoals(DurableStore):
    schema = SCHEMA
    holds = "A2A pending store"

    async def add(self, item: Pending) -> None:
        await self.db.execute("INSERT OR REPLACE INTO pending VALUES (?, ?, ?, ?, ?)",
                              (item.goal_id, item.client, item.task_id, item.context_id,
                               item.text))

    async def get(self, goal_id: str) -> Pending | None:
        async with self.db.execute("SELECT * FROM pending WHERE goal_id = ?",
                                   (goal_id,)) as rows:
            row = await rows.fetchone()
        return None if row is None else Pending(*row)

    async def remove(self, goal_id: str) -> None:
        await self.db.execute("DELETE FROM pending WHERE goal_id = ?", (goal_id,))

    async def all(self) -> list[Pending]:
        async with self.db.execute("SELECT * FROM pending") as rows:
            return [Pending(*row) async for row in rows]
