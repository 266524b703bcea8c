"""The entity's memories: storing them (merging a fact or lesson into the same one already
stored), superseding, and recall ranked by relevance, recency and importance.

Recall works in three steps. FTS5 computes BM25 for every row it returns, at about
1.5 us a row here, so a query word found in thousands of memories would make recall slow;
the scan is bounded instead. (1) Two pools, each ranked by BM25 over all the query's
words: the newest SCAN_LIMIT live memories that contain every query word, and the newest
SCAN_LIMIT that contain any of them (stopwords are dropped from the query). Below
SCAN_LIMIT matches this is plain BM25 over every match; above it, an old memory that
shares only some of the words with a very common query is not considered. (2) The
CANDIDATES best by BM25 are joined with their rows. (3) They are re-scored:

    score = relevance + RECENCY_WEIGHT * recency + IMPORTANCE_WEIGHT * importance
    relevance = bm25 / best bm25 among the candidates           (0..1]
    recency   = 0.5 ** (days since last touched / HALF_LIFE_DAYS) (0..1]
    importance as stored                                          [0..1]

"Last touched" is the later of the last update (creation, merge) and the last recall.

A memory's origin (records.py) bounds both: recall can be limited to one origin exactly
(a peer's turn recalls only `peer:<its name>`), and a fact or lesson merges only into a
memory of the same origin, so one origin can neither rewrite another's memories nor learn,
from a merge, that they exist.
"""

from __future__ import annotations

import asyncio
import dataclasses
import math
import sqlite3
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path

import aiosqlite

from .database import MMAP_BYTES, connect, connect_reader
from .log import ConversationLog
from .pools import Pools
from .records import (
    OPERATOR,
    Added,
    InvalidInput,
    Memory,
    NewMemory,
    NotFound,
    Recalled,
    check_importance,
    check_kind,
    check_origin,
    check_text,
)
from .text import (
    better_text,
    jaccard,
    near_duplicates,
    normalise,
    query_terms,
    signature,
)
from .todos import Todos
from .usage import UsageLog

HALF_LIFE_DAYS = 30.0
RECENCY_WEIGHT = 0.5
IMPORTANCE_WEIGHT = 0.5
SCAN_LIMIT = 1000  # newest matches ranked by BM25 per pool (see the module doc)
CANDIDATES = 50  # BM25 candidates re-scored per recall (at least 4x the limit)
MAX_RECALL = 100

MERGE_CANDIDATES = 20
MERGE_IMPORTANCE_BUMP = 0.05

_MEMORY_COLUMNS = (
    "id, kind, text, importance, uses, source, created_at, updated_at, last_used_at, "
    "superseded_by, origin"
)
_MEMORY_COLUMNS_M = ", ".join("m." + c.strip() for c in _MEMORY_COLUMNS.split(","))


class MemoryStore(Todos, ConversationLog, UsageLog):
    """Async access to one entity's memory file. `await MemoryStore.open(path)`, then
    `await store.close()`; or `async with await MemoryStore.open(path) as store`."""

    def __init__(
        self,
        db: aiosqlite.Connection,
        path: Path,
        clock: Callable[[], float],
        scan_limit: int = SCAN_LIMIT,
        reader: aiosqlite.Connection | None = None,
    ) -> None:
        super().__init__(db, path, clock, reader)
        self.scan_limit = scan_limit

    @classmethod
    async def open(
        cls,
        path: str | Path,
        *,
        synchronous: str = "NORMAL",
        busy_timeout_ms: int = 5000,
        mmap_bytes: int = MMAP_BYTES,
        scan_limit: int = SCAN_LIMIT,
        clock: Callable[[], float] = time.time,
    ) -> MemoryStore:
        """Open (creating and migrating as needed) the store at `path`.

        `synchronous` is NORMAL or FULL (see database.py); `scan_limit` bounds the
        matches ranked per recall pool (a very large value ranks every match)."""
        db = await connect(path, synchronous=synchronous, busy_timeout_ms=busy_timeout_ms,
                           mmap_bytes=mmap_bytes)
        try:
            reader = await connect_reader(path, busy_timeout_ms=busy_timeout_ms,
                                          mmap_bytes=mmap_bytes)
        except BaseException:
            await db.close()
            raise
        return cls(db, Path(path), clock, scan_limit, reader)

    async def add_memory(
        self, kind: str, text: str, importance: float = 0.5, source: str = "",
        origin: str = OPERATOR,
    ) -> Added:
        """Store a memory. A fact or lesson whose normalised text equals a live one of the
        same kind and origin, or a lesson that `near_duplicates` a live lesson of its
        origin among its BM25 candidates, merges into it: importance max(old, new) + a
        small bump, uses + 1, updated_at now, and the more specific text kept."""
        check_kind(kind)
        text = check_text(text, "memory")
        importance = check_importance(importance)
        origin = check_origin(origin)
        norm = normalise(text)
        now = self._clock()
        async with self._transaction() as db:
            existing = await self._duplicate_of(db, kind, text, norm, origin)
            if existing is not None:
                kept = better_text(existing.text, text)
                await db.execute(
                    "UPDATE memories SET text = ?, norm = ?, importance = ?, uses = uses + 1,"
                    " updated_at = ? WHERE id = ?",
                    (
                        kept,
                        normalise(kept),
                        min(1.0, max(existing.importance, importance) + MERGE_IMPORTANCE_BUMP),
                        now,
                        existing.id,
                    ),
                )
                return Added(existing.id, merged=True)
            cursor = await db.execute(
                "INSERT INTO memories (kind, text, norm, importance, source, created_at,"
                " updated_at, origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (kind, text, norm, importance, source, now, now, origin),
            )
            assert cursor.lastrowid is not None
            return Added(cursor.lastrowid, merged=False)

    async def _duplicate_of(
        self, db: aiosqlite.Connection, kind: str, text: str, norm: str, origin: str
    ) -> Memory | None:
        if kind not in ("fact", "lesson"):
            return None  # reflections and episodes are events: two alike are two
        row = await (
            await db.execute(
                f"SELECT {_MEMORY_COLUMNS} FROM memories WHERE kind = ? AND norm = ?"
                " AND origin = ? AND superseded_by IS NULL LIMIT 1",
                (kind, norm, origin),
            )
        ).fetchone()
        if row is not None:
            return _memory(row)
        if kind != "lesson":
            return None
        rows = await self._candidates(db, text, ("lesson",), MERGE_CANDIDATES, origin)
        best: tuple[float, Memory] | None = None
        mine = signature(text)
        for candidate in rows:
            if not near_duplicates(text, candidate["text"]):
                continue
            similarity = jaccard(mine, signature(candidate["text"]))
            if best is None or similarity > best[0]:
                best = (similarity, _memory(candidate))
        return best[1] if best else None

    async def import_memories(self, memories: Iterable[NewMemory]) -> int:
        """Insert many memories in one transaction, without duplicate merging (for imports
        and benchmarks). All or nothing; returns how many were stored."""
        now = self._clock()
        rows = []
        for m in memories:
            check_kind(m.kind)
            text = check_text(m.text, "memory")
            rows.append(
                (m.kind, text, normalise(text), check_importance(m.importance), m.source,
                 now, now, check_origin(m.origin))
            )
        async with self._transaction() as db:
            await db.executemany(
                "INSERT INTO memories (kind, text, norm, importance, source, created_at,"
                " updated_at, origin) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                rows,
            )
        return len(rows)

    async def supersede(self, old_id: int, new_id: int) -> None:
        """Mark memory `old_id` as replaced by live memory `new_id`; recall skips it."""
        if old_id == new_id:
            raise InvalidInput(f"memory {old_id} cannot supersede itself")
        async with self._transaction() as db:
            await self._get_memory(db, old_id)  # NotFound if there is none
            new = await self._get_memory(db, new_id)
            if new.superseded_by is not None:
                raise InvalidInput(
                    f"memory {new_id} is itself superseded by {new.superseded_by}"
                )
            # Whatever old replaced now points at its successor, so chains stay flat.
            await db.execute(
                "UPDATE memories SET superseded_by = ? WHERE superseded_by = ?",
                (new_id, old_id),
            )
            await db.execute(
                "UPDATE memories SET superseded_by = ?, updated_at = ? WHERE id = ?",
                (new_id, self._clock(), old_id),
            )

    async def get_memory(self, memory_id: int) -> Memory:
        return await self._get_memory(self._db, memory_id)

    async def _get_memory(self, db: aiosqlite.Connection, memory_id: int) -> Memory:
        row = await (
            await db.execute(f"SELECT {_MEMORY_COLUMNS} FROM memories WHERE id = ?", (memory_id,))
        ).fetchone()
        if row is None:
            raise NotFound(f"no memory {memory_id}")
        return _memory(row)

    async def delete_memory(self, memory_id: int) -> None:
        async with self._transaction() as db:
            cursor = await db.execute("DELETE FROM memories WHERE id = ?", (memory_id,))
            if cursor.rowcount == 0:
                raise NotFound(f"no memory {memory_id}")

    async def count_memories(self, *, include_superseded: bool = False) -> int:
        where = "" if include_superseded else " WHERE superseded_by IS NULL"
        row = await (await self._db.execute(f"SELECT count(*) FROM memories{where}")).fetchone()
        return int(row[0]) if row else 0

    async def recall(
        self,
        query: str,
        limit: int = 10,
        kinds: Sequence[str] = (),
        *,
        origin: str = "",
        touch: bool = True,
    ) -> list[Recalled]:
        """The live memories that best match `query` (see the module doc for the score),
        best first; only those of exactly `origin` when one is given. With `touch` (the
        default) each returned memory gets uses + 1 and last_used_at now. A query
        without words recalls nothing."""
        for k in kinds:
            check_kind(k)
        if origin:
            check_origin(origin)
        if limit <= 0:
            return []
        limit = min(limit, MAX_RECALL)
        async with self._write:  # never read another coroutine's uncommitted transaction
            return await self._recall(query, limit, kinds, origin, touch)

    async def _recall(
        self, query: str, limit: int, kinds: Sequence[str], origin: str, touch: bool
    ) -> list[Recalled]:
        rows = await self._candidates(None, query, kinds, max(CANDIDATES, 4 * limit), origin)
        if not rows:
            return []
        now = self._clock()
        best_bm25 = max(-row["rank"] for row in rows)
        scored = []
        for row in rows:
            memory = _memory(row)
            bm25 = -row["rank"]
            relevance = bm25 / best_bm25 if best_bm25 > 0 else 1.0
            touched = max(memory.updated_at, memory.last_used_at or 0.0)
            age_days = max(0.0, now - touched) / 86400.0
            recency = math.pow(0.5, age_days / HALF_LIFE_DAYS)
            score = (
                relevance + RECENCY_WEIGHT * recency + IMPORTANCE_WEIGHT * memory.importance
            )
            scored.append(Recalled(memory, score, relevance, recency, bm25))
        scored.sort(key=lambda r: (-r.score, -r.memory.id))
        hits = scored[:limit]
        if touch:
            ids = [h.memory.id for h in hits]
            # One statement in autocommit mode: its own transaction, one thread hop.
            await self._db.execute(
                "UPDATE memories SET uses = uses + 1, last_used_at = ?"
                f" WHERE id IN ({', '.join('?' * len(ids))})",
                (now, *ids),
            )
            hits = [
                dataclasses.replace(
                    h, memory=dataclasses.replace(h.memory, uses=h.memory.uses + 1,
                                                  last_used_at=now)
                )
                for h in hits
            ]
        return hits

    async def _candidates(
        self, db: aiosqlite.Connection | None, text: str, kinds: Sequence[str], count: int,
        origin: str = "",
    ) -> list[sqlite3.Row]:
        """The `count` best live memories by BM25 from the two bounded pools (module doc),
        each row with its `rank` (negated BM25: lower is better); with `origin`, the
        pools hold only memories of that origin (so another origin's many matches cannot
        crowd them out). With `db` (a connection in a transaction) the pools are ranked
        on it, one after the other; with None, at once, one on each of the store's
        connections (pools.py)."""
        terms = query_terms(text)
        if not terms:
            return []
        pools = Pools(terms, kinds, origin, self.scan_limit, _MEMORY_COLUMNS_M)
        statements = pools.statements(count)
        conn = db or self._db
        if len(statements) == 1:
            return list(await conn.execute_fetchall(*statements[0]))
        if db is None and self._reader is not None:
            async with asyncio.TaskGroup() as tg:
                tasks = [
                    tg.create_task(c.execute_fetchall(*statement))
                    for c, statement in zip((self._db, self._reader), statements, strict=True)
                ]
            results = [t.result() for t in tasks]
        else:
            results = [await conn.execute_fetchall(*statement) for statement in statements]
        merged = {row["id"]: row for result in results for row in result}
        # Equal BM25 (common among short, alike memories): the older first, as one
        # statement over both pools had it.
        return sorted(merged.values(), key=lambda row: (row["rank"], row["id"]))[:count]

    async def check_index(self) -> None:
        """Raise sqlite3.DatabaseError if the FTS index disagrees with the live memories."""
        async with self._write:
            await self._db.execute(
                "INSERT INTO memories_fts (memories_fts, rank) VALUES ('integrity-check', 1)"
            )


def _memory(row: sqlite3.Row) -> Memory:
    return Memory(
        id=row["id"],
        kind=row["kind"],
        text=row["text"],
        importance=row["importance"],
        uses=row["uses"],
        source=row["source"],
        created_at=row["created_at"],
        updated_at=row["updated_at"],
        last_used_at=row["last_used_at"],
        superseded_by=row["superseded_by"],
        origin=row["origin"],
    )
