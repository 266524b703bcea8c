"""Opening one entity's memory file, and the connection every part of the store shares.

One SQLite file per entity, opened through aiosqlite. Durability: WAL mode with
`synchronous=NORMAL` by default. A transaction is in the WAL file (the OS page cache)
when COMMIT returns, so it survives the process being SIGKILLed; only a power loss or
kernel crash before the next checkpoint can lose the last few transactions (never
corrupt the file). `synchronous="FULL"` fsyncs every commit and closes that window too,
at the cost of one fsync per write (and per recall, which records its use).

Besides that connection, a store holds a second, read-only one: recall runs its two FTS
pools at once, one on each connection (sqlite3 releases the GIL while a statement runs),
so a recall takes about as long as its slower pool rather than both (store.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Self

import aiosqlite

from . import schema
from .records import InvalidInput, MemoryStoreError

# Reads through mmap: about 15% faster recall at 100k memories than through read(), and
# 5-8% less CPU per ranked recall at a million (a 480 MB file) than mapping its first
# 256 MB only. Address space, not memory: the kernel keeps the pages in its cache either way.
MMAP_BYTES = 1 << 30


async def connect(
    path: str | Path, *, synchronous: str, busy_timeout_ms: int, mmap_bytes: int
) -> aiosqlite.Connection:
    """A connection to the file at `path` (created and migrated as needed) in WAL mode,
    rows as sqlite3.Row, in autocommit mode (transactions are explicit)."""
    if synchronous not in ("NORMAL", "FULL"):
        raise InvalidInput(f"synchronous must be NORMAL or FULL, got {synchronous!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    db = await aiosqlite.connect(path, isolation_level=None, timeout=busy_timeout_ms / 1000)
    try:
        db.row_factory = sqlite3.Row
        await db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        mode = await (await db.execute("PRAGMA journal_mode = WAL")).fetchone()
        if mode is None or str(mode[0]).lower() != "wal":
            raise MemoryStoreError(f"{path}: cannot switch to WAL mode (got {mode!r})")
        await db.execute(f"PRAGMA synchronous = {synchronous}")
        await db.execute("PRAGMA foreign_keys = ON")
        await db.execute(f"PRAGMA mmap_size = {int(mmap_bytes)}")
        await schema.migrate(db, path)
    except BaseException:
        await db.close()
        raise
    return db


async def connect_reader(path: str | Path, *, busy_timeout_ms: int, mmap_bytes: int
                         ) -> aiosqlite.Connection:
    """A second, read-only connection to the (already created and migrated) file at
    `path`. It sees what the main connection has committed, never its open transaction."""
    db = await aiosqlite.connect(path, isolation_level=None, timeout=busy_timeout_ms / 1000)
    try:
        db.row_factory = sqlite3.Row
        await db.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
        await db.execute("PRAGMA query_only = ON")
        await db.execute(f"PRAGMA mmap_size = {int(mmap_bytes)}")
    except BaseException:
        await db.close()
        raise
    return db


class Database:
    """One open memory file: its connection, the clock its timestamps come from, and its
    write lock. The memories, todos and log of MemoryStore are built on it."""

    def __init__(
        self,
        db: aiosqlite.Connection,
        path: Path,
        clock: Callable[[], float],
        reader: aiosqlite.Connection | None = None,
    ) -> None:
        self._db = db
        self._reader = reader  # read-only; None: every read goes through `db`
        self.path = path
        self._clock = clock
        self._write = asyncio.Lock()  # one connection: write transactions must not interleave
        self._closed = False

    async def close(self) -> None:
        async with self._write:
            if self._closed:
                return
            self._closed = True
            try:
                if self._reader is not None:
                    await self._reader.close()
            finally:
                try:  # a hint for the planner, best effort: a full disk refuses it
                    with contextlib.suppress(sqlite3.Error):
                        await self._db.execute("PRAGMA optimize")
                finally:
                    await self._db.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def schema_version(self) -> int:
        return await schema.schema_version(self._db)

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[aiosqlite.Connection]:
        async with self._write:
            await self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                await self._db.rollback()
                raise
            await self._db.commit()
