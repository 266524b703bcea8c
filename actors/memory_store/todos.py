"""The entity's todo list: todos with a status and a priority, listed work in hand first."""

from __future__ import annotations

import sqlite3

import aiosqlite

from .database import Database
from .records import NotFound, Todo, check_status, check_text

_TODO_COLUMNS = "id, text, status, priority, created_at, updated_at, closed_at"


class Todos(Database):
    """The todo list methods of MemoryStore."""

    async def add_todo(self, text: str, priority: int = 0) -> Todo:
        text = check_text(text, "todo")
        now = self._clock()
        async with self._transaction() as db:
            cursor = await db.execute(
                "INSERT INTO todos (text, priority, created_at, updated_at) VALUES (?, ?, ?, ?)",
                (text, int(priority), now, now),
            )
            assert cursor.lastrowid is not None
            return await self._get_todo(db, cursor.lastrowid)

    async def update_todo(
        self,
        todo_id: int,
        *,
        status: str | None = None,
        text: str | None = None,
        priority: int | None = None,
    ) -> Todo:
        """Change a todo's status, text or priority; closed_at is set when it becomes done
        or dropped and cleared when it is reopened."""
        if status is not None:
            check_status(status)
        if text is not None:
            text = check_text(text, "todo")
        now = self._clock()
        async with self._transaction() as db:
            todo = await self._get_todo(db, todo_id)
            new_status = todo.status if status is None else status
            closed_at = todo.closed_at
            if new_status in ("done", "dropped"):
                closed_at = closed_at if todo.status == new_status else now
            else:
                closed_at = None
            await db.execute(
                "UPDATE todos SET text = ?, status = ?, priority = ?, updated_at = ?,"
                " closed_at = ? WHERE id = ?",
                (
                    todo.text if text is None else text,
                    new_status,
                    todo.priority if priority is None else int(priority),
                    now,
                    closed_at,
                    todo_id,
                ),
            )
            return await self._get_todo(db, todo_id)

    async def get_todo(self, todo_id: int) -> Todo:
        return await self._get_todo(self._db, todo_id)

    async def _get_todo(self, db: aiosqlite.Connection, todo_id: int) -> Todo:
        row = await (
            await db.execute(f"SELECT {_TODO_COLUMNS} FROM todos WHERE id = ?", (todo_id,))
        ).fetchone()
        if row is None:
            raise NotFound(f"no todo {todo_id}")
        return _todo(row)

    async def list_todos(self, *, include_done: bool = False) -> list[Todo]:
        """Work in hand first (doing, then open), each by priority (highest first), then
        age; with `include_done`, done and dropped ones follow."""
        where = "" if include_done else " WHERE status IN ('open', 'doing')"
        rows = await self._db.execute_fetchall(
            f"SELECT {_TODO_COLUMNS} FROM todos{where} ORDER BY"
            " CASE status WHEN 'doing' THEN 0 WHEN 'open' THEN 1 WHEN 'done' THEN 2 ELSE 3 END,"
            " priority DESC, id"
        )
        return [_todo(r) for r in rows]


def _todo(row: sqlite3.Row) -> Todo:
    return Todo(
        id=row["id"],
        text=row["text"],
        status=row["status"],
        priority=row["priority"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        closed_at=row["closed_at"],
    )
