"""The conversation log: entries (role, content, JSON data) by conversation, read back
oldest first."""

from __future__ import annotations

import json
from typing import Any

from .database import Database
from .records import InvalidInput, LogEntry


class ConversationLog(Database):
    """The conversation log methods of MemoryStore."""

    async def append_log(
        self, conversation: str, role: str, content: str, data: dict[str, Any] | None = None
    ) -> int:
        if not conversation:
            raise InvalidInput("conversation is empty")
        if not role:
            raise InvalidInput("role is empty")
        try:
            encoded = json.dumps(data or {}, ensure_ascii=False)
        except (TypeError, ValueError) as exc:
            raise InvalidInput(f"log data is not JSON: {exc}") from None
        async with self._transaction() as db:
            cursor = await db.execute(
                "INSERT INTO conversation_log (conversation, role, content, data, created_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (conversation, role, content, encoded, self._clock()),
            )
            assert cursor.lastrowid is not None
            return cursor.lastrowid

    async def history(self, conversation: str = "", limit: int = 50) -> list[LogEntry]:
        """The last `limit` entries of one conversation (or of all), oldest first."""
        if limit <= 0:
            return []
        where, args = ("WHERE conversation = ?", [conversation]) if conversation else ("", [])
        rows = await self._db.execute_fetchall(
            "SELECT * FROM (SELECT id, conversation, role, content, data, created_at"
            f" FROM conversation_log {where} ORDER BY id DESC LIMIT ?) ORDER BY id",
            (*args, limit),
        )
        return [
            LogEntry(r["id"], r["conversation"], r["role"], r["content"], json.loads(r["data"]),
                     r["created_at"])
            for r in rows
        ]
