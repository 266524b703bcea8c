"""A small SQLite store whose every write is on disk once it returns: one aiosqlite
connection in autocommit, WAL with synchronous = FULL (a write acknowledged survives a
power loss). Subclasses name their schema and what they hold."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import aiosqlite

from .state_file import opened


class DurableStore:
    schema: ClassVar[str] = ""  # one statement run at every open: CREATE ... IF NOT EXISTS
    holds: ClassVar[str] = "store"  # what it holds, for the error of a store not open

    def __init__(self, path: Path | str) -> None:
        self.path = path
        self._db: aiosqlite.Connection | None = None

    async def open(self) -> None:
        """Open the file (made if missing); a damaged one is DamagedFile (state_file)."""
        self._db = await opened(self.path, self._connect)

    async def _connect(self) -> aiosqlite.Connection:
        db = await aiosqlite.connect(self.path, isolation_level=None)
        try:
            await db.execute("PRAGMA journal_mode=WAL")
            await db.execute("PRAGMA synchronous=FULL")
            await db.execute(self.schema)
        except BaseException:
            await db.close()
            raise
        return db

    async def close(self) -> None:
        db, self._db = self._db, None
        if db is not None:
            await db.close()

    @property
    def db(self) -> aiosqlite.Connection:
        if self._db is None:
            raise RuntimeError(f"the {self.holds} is not open")
        return self._db
