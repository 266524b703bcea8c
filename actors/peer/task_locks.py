"""One decision at a time per task.

A task's row is read, something slow is done (a deliverable landed with git, the ledger
asked to post or void its escrow), and the row is saved again. Two such decisions on one
task at once (the delegate's delivery landing while the operator rejects it, the
deadline's void while an accept posts) would each save the row as it read it, and the
second would undo what the first recorded: a task saying `held` when the ledger says
voided. So every decision on a task holds the task's lock from its read to its save, and
reads the row inside it; decisions on different tasks do not wait for each other.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

TaskKey = tuple[str, str, str]  # (task id, direction, peer): a task's row


class TaskLocks:
    def __init__(self) -> None:
        self._locks: dict[TaskKey, asyncio.Lock] = {}
        self._users: dict[TaskKey, int] = {}

    @contextlib.asynccontextmanager
    async def hold(self, task_id: str, direction: str, peer: str) -> AsyncIterator[None]:
        """The task's lock for the block; a lock no one holds or waits for is dropped."""
        key = (task_id, direction, peer)
        lock = self._locks.setdefault(key, asyncio.Lock())
        self._users[key] = self._users.get(key, 0) + 1
        try:
            async with lock:
                yield
        finally:
            self._users[key] -= 1
            if not self._users[key]:
                del self._users[key], self._locks[key]

    def __len__(self) -> int:
        return len(self._locks)
