"""The entity's memory on disk: conversation log, memories with FTS5 recall, and todos.

One SQLite file per entity, opened through aiosqlite. Durability: WAL mode with
`synchronous=NORMAL` by default. A transaction is in the WAL file (the OS page cache)
when COMMIT returns, so it survives the process being SIGKILLed; only a power loss or
kernel crash before the next checkpoint can lose the last few transactions (never
corrupt the file). `synchronous="FULL"` fsyncs every commit and closes that window too,
at the cost of one fsync per write (and per recall, which records its use).

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

Every memory has an origin: whose words it holds. `operator` for what the entity's own
turns wrote (entityctl, autonomy, its todo list), `peer:<name>` for what a peer's turn
wrote (its talk, its report, its delegated task), and a comma-joined list of both kinds
when one turn held several (`operator,peer:entity-c`). Recall can be limited to one
origin exactly (a peer's turn recalls only `peer:<its name>`), and a fact or lesson
merges only into a memory of the same origin, so one origin can neither rewrite another's
memories nor learn, from a merge, that they exist.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import re
import sqlite3
import time
import unicodedata
from collections.abc import AsyncIterator, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

MEMORY_KINDS = ("fact", "lesson", "reflection", "episode")
OPERATOR = "operator"  # the origin of what the entity's own turns wrote
TODO_STATUSES = ("open", "doing", "done", "dropped")

HALF_LIFE_DAYS = 30.0
RECENCY_WEIGHT = 0.5
IMPORTANCE_WEIGHT = 0.5
SCAN_LIMIT = 1000  # newest matches ranked by BM25 per pool (see the module doc)
MMAP_BYTES = 256 << 20  # reads through mmap: about 15% faster recall at 100k memories
CANDIDATES = 50  # BM25 candidates re-scored per recall (at least 4x the limit)
MAX_QUERY_TERMS = 32
MAX_RECALL = 100

LESSON_MERGE_JACCARD = 0.8  # word-set overlap at which a new lesson merges into an old one
MERGE_CANDIDATES = 20
MERGE_IMPORTANCE_BUMP = 0.05

# Left out of search queries (they match nearly everything and slow BM25 down) and out of
# the word sets that decide whether two lessons are the same. Negations stay in: "never
# push to main" must not merge with "push to main".
STOPWORDS = frozenset(
    """a an and are as at be been by for from has have i in is it its of on or so that the
    their then there these this to was were will with you your we our can could should
    would do does did if when which who what how about into than also just any all""".split()
)

NEGATIONS = frozenset(
    """not no never none nothing nobody nowhere neither nor without avoid stop don dont
    doesn didn isn aren wasn weren won wouldn shouldn couldn cannot mustn t""".split()
)

_SCHEMA_V1 = """
CREATE TABLE conversation_log (
    id INTEGER PRIMARY KEY,
    conversation TEXT NOT NULL,
    role TEXT NOT NULL,
    content TEXT NOT NULL,
    data TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL
);
CREATE INDEX conversation_log_by_conversation ON conversation_log (conversation, id);

CREATE TABLE memories (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('fact', 'lesson', 'reflection', 'episode')),
    text TEXT NOT NULL CHECK (length(text) > 0),
    norm TEXT NOT NULL,
    importance REAL NOT NULL CHECK (importance >= 0 AND importance <= 1),
    uses INTEGER NOT NULL DEFAULT 0,
    source TEXT NOT NULL DEFAULT '',
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    last_used_at REAL,
    superseded_by INTEGER REFERENCES memories (id) ON DELETE SET NULL
);
CREATE INDEX memories_by_norm ON memories (kind, norm);
CREATE INDEX memories_by_superseded ON memories (superseded_by) WHERE superseded_by IS NOT NULL;

-- The FTS index holds live (not superseded) memories only: its external content is a
-- view, so 'rebuild' and 'integrity-check' agree with what the triggers maintain.
CREATE VIEW live_memories AS
    SELECT id, text, kind FROM memories WHERE superseded_by IS NULL;
CREATE VIRTUAL TABLE memories_fts USING fts5 (
    text, kind,
    content = 'live_memories', content_rowid = 'id',
    tokenize = 'porter unicode61 remove_diacritics 2',
    detail = full
);
-- `kind` is searchable only to filter by kind; it adds nothing to the BM25 score.
INSERT INTO memories_fts (memories_fts, rank) VALUES ('rank', 'bm25(1.0, 0.0)');

CREATE TRIGGER memories_fts_insert AFTER INSERT ON memories
WHEN new.superseded_by IS NULL BEGIN
    INSERT INTO memories_fts (rowid, text, kind) VALUES (new.id, new.text, new.kind);
END;
CREATE TRIGGER memories_fts_delete AFTER DELETE ON memories
WHEN old.superseded_by IS NULL BEGIN
    INSERT INTO memories_fts (memories_fts, rowid, text, kind)
        VALUES ('delete', old.id, old.text, old.kind);
END;
CREATE TRIGGER memories_fts_update AFTER UPDATE OF text, kind, superseded_by ON memories BEGIN
    INSERT INTO memories_fts (memories_fts, rowid, text, kind)
        SELECT 'delete', old.id, old.text, old.kind WHERE old.superseded_by IS NULL;
    INSERT INTO memories_fts (rowid, text, kind)
        SELECT new.id, new.text, new.kind WHERE new.superseded_by IS NULL;
END;

CREATE TABLE todos (
    id INTEGER PRIMARY KEY,
    text TEXT NOT NULL CHECK (length(text) > 0),
    status TEXT NOT NULL DEFAULT 'open'
        CHECK (status IN ('open', 'doing', 'done', 'dropped')),
    priority INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL,
    closed_at REAL
);
CREATE INDEX todos_by_status ON todos (status, priority DESC, id);
"""

# Memories get their origin (see the module doc). Rows stored before origins existed are
# the operator's, except a peer's reports, which always named the peer as their source.
_SCHEMA_V2 = """
ALTER TABLE memories ADD COLUMN origin TEXT NOT NULL DEFAULT 'operator'
    CHECK (length(origin) > 0);
UPDATE memories SET origin = source WHERE source GLOB 'peer:?*';
CREATE INDEX memories_by_origin ON memories (origin, id);
DROP INDEX memories_by_norm;
CREATE INDEX memories_by_norm ON memories (kind, norm, origin);
"""

# Migration N (1-based) brings a file from user_version N-1 to N. Append, never edit.
MIGRATIONS: tuple[str, ...] = (_SCHEMA_V1, _SCHEMA_V2)
SCHEMA_VERSION = len(MIGRATIONS)

_MEMORY_COLUMNS = (
    "id, kind, text, importance, uses, source, created_at, updated_at, last_used_at, "
    "superseded_by, origin"
)
_MEMORY_COLUMNS_M = ", ".join("m." + c.strip() for c in _MEMORY_COLUMNS.split(","))
_TODO_COLUMNS = "id, text, status, priority, created_at, updated_at, closed_at"
_WORD = re.compile(r"[^\W_]+")


# ---- errors ----------------------------------------------------------------------------


class MemoryStoreError(Exception):
    """Base of the store's errors.

    MemoryStoreError
    ├── InvalidInput   a caller's value is unacceptable (kind, empty text, status, ...)
    ├── NotFound       no memory or todo with that id
    └── SchemaTooNew   the file was written by a newer entityd
    """


class InvalidInput(MemoryStoreError, ValueError):
    pass


class NotFound(MemoryStoreError, LookupError):
    pass


class SchemaTooNew(MemoryStoreError):
    pass


# ---- records ---------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class Memory:
    id: int
    kind: str
    text: str
    importance: float
    uses: int
    source: str
    created_at: float
    updated_at: float
    last_used_at: float | None
    superseded_by: int | None
    origin: str = OPERATOR


@dataclass(frozen=True, slots=True)
class Recalled:
    """One recall result; `score` orders them, the parts show why (see the module doc)."""

    memory: Memory
    score: float
    relevance: float
    recency: float
    bm25: float  # raw, positive: higher matches better


@dataclass(frozen=True, slots=True)
class Added:
    id: int
    merged: bool  # an existing memory absorbed this one instead of a new row


@dataclass(frozen=True, slots=True)
class NewMemory:
    """A memory to import with `import_memories`."""

    kind: str
    text: str
    importance: float = 0.5
    source: str = ""
    origin: str = OPERATOR


@dataclass(frozen=True, slots=True)
class Todo:
    id: int
    text: str
    status: str
    priority: int
    created_at: float
    updated_at: float
    closed_at: float | None


@dataclass(frozen=True, slots=True)
class LogEntry:
    id: int
    conversation: str
    role: str
    content: str
    data: dict[str, Any]
    created_at: float


# ---- text helpers ----------------------------------------------------------------------


def words(text: str) -> list[str]:
    """Lower-case letter/digit runs: the words of `text` as the store compares them."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


def normalise(text: str) -> str:
    return " ".join(words(text))


def query_terms(text: str, max_terms: int = MAX_QUERY_TERMS) -> list[str]:
    """The distinct words of `text` a search uses: stopwords dropped unless nothing else
    is left, at most `max_terms`."""
    terms = list(dict.fromkeys(words(text)))
    content = [t for t in terms if t not in STOPWORDS]
    return (content or terms)[:max_terms]


def match_expression(terms: Sequence[str], operator: str) -> str:
    """A safe FTS5 MATCH expression: the terms double-quoted (a quote inside doubled,
    though words never hold one) and joined by AND or OR, so operators, parentheses,
    colons and stray quotes in a user's text are plain words or dropped."""
    if operator not in ("AND", "OR"):
        raise ValueError(f"operator must be AND or OR, not {operator!r}")
    return f" {operator} ".join(_quote(t) for t in terms)


def _quote(term: str) -> str:
    return '"' + term.replace('"', '""') + '"'


def _stem(word: str) -> str:
    """A crude English stemmer, enough to see "runs the tests" and "running tests" alike."""
    if len(word) <= 3 or not word.isalpha():
        return word
    if word.endswith("ies") and len(word) > 4:
        word = word[:-3] + "y"
    elif word.endswith(("sses", "xes", "zes", "ches", "shes")):
        word = word[:-2]
    elif word.endswith("s") and not word.endswith(("ss", "us", "is")):
        word = word[:-1]
    for suffix in ("ing", "ed"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 3:
            word = word[: -len(suffix)]
            if len(word) > 3 and word[-1] == word[-2] and word[-1] not in "lsz":
                word = word[:-1]  # running -> run, committed -> commit
            break
    if word.endswith("e") and len(word) > 3:
        word = word[:-1]  # make, makes, making -> mak
    return word


def _signature(text: str) -> frozenset[str]:
    """The word set two lessons are compared on: stopwords out, crude stemming."""
    ws = words(text)
    return frozenset(_stem(w) for w in ws if w not in STOPWORDS) or frozenset(ws)


def near_duplicates(a: str, b: str) -> bool:
    """Whether two lessons say the same: word sets overlapping by Jaccard >=
    LESSON_MERGE_JACCARD and the same negations ("never push to main" is not a copy of
    "push to main", however much else they share)."""
    wa, wb = set(words(a)), set(words(b))
    if wa & NEGATIONS != wb & NEGATIONS:
        return False
    return jaccard(_signature(a), _signature(b)) >= LESSON_MERGE_JACCARD


def jaccard(a: frozenset[str], b: frozenset[str]) -> float:
    if not a and not b:
        return 1.0
    return len(a & b) / len(a | b)


def _better_text(old: str, new: str) -> str:
    """The more specific of two near-identical lessons: more words wins, a tie the newer."""
    return old if len(words(old)) > len(words(new)) else new


def _check_kind(kind: str) -> None:
    if kind not in MEMORY_KINDS:
        raise InvalidInput(f"unknown memory kind {kind!r} (one of {', '.join(MEMORY_KINDS)})")


def _check_text(text: str, what: str) -> str:
    text = text.strip()
    if not text:
        raise InvalidInput(f"{what} text is empty")
    return text


def _check_importance(importance: float) -> float:
    if not isinstance(importance, int | float) or not 0.0 <= importance <= 1.0:
        raise InvalidInput(f"importance must be within 0..1, got {importance!r}")
    return float(importance)


_ORIGIN_PART = re.compile(r"operator|peer:[a-z0-9-]{1,32}")
MAX_ORIGIN = 4096


def _check_origin(origin: str) -> str:
    """`operator`, `peer:<name>` or a comma-joined list of them (module doc)."""
    if not origin or len(origin) > MAX_ORIGIN or not all(
            _ORIGIN_PART.fullmatch(part) for part in origin.split(",")):
        raise InvalidInput(f"origin {origin[:80]!r} is not operator, peer:<name> or a "
                           "comma-joined list of them")
    return origin


def _check_status(status: str) -> None:
    if status not in TODO_STATUSES:
        raise InvalidInput(f"unknown todo status {status!r} (one of {', '.join(TODO_STATUSES)})")


# ---- the store -------------------------------------------------------------------------


class MemoryStore:
    """Async access to one entity's memory file. `await MemoryStore.open(path)`, then
    `await store.close()`; or `async with await MemoryStore.open(path) as store`."""

    def __init__(
        self,
        db: aiosqlite.Connection,
        path: Path,
        clock: Callable[[], float],
        scan_limit: int = SCAN_LIMIT,
    ) -> None:
        self._db = db
        self.path = path
        self._clock = clock
        self.scan_limit = scan_limit
        self._write = asyncio.Lock()  # one connection: write transactions must not interleave
        self._closed = False

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

        `synchronous` is NORMAL or FULL (see the module doc); `scan_limit` bounds the
        matches ranked per recall pool (a very large value ranks every match)."""
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
            store = cls(db, path, clock, scan_limit)
            await store._migrate()
        except BaseException:
            await db.close()
            raise
        return store

    async def close(self) -> None:
        async with self._write:
            if self._closed:
                return
            self._closed = True
            try:
                await self._db.execute("PRAGMA optimize")
            finally:
                await self._db.close()

    async def __aenter__(self) -> MemoryStore:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def schema_version(self) -> int:
        row = await (await self._db.execute("PRAGMA user_version")).fetchone()
        return int(row[0]) if row else 0

    async def _migrate(self) -> None:
        async with self._write:
            version = await self.schema_version()
            if version > SCHEMA_VERSION:
                raise SchemaTooNew(
                    f"{self.path} has schema version {version}; this entityd knows up to "
                    f"{SCHEMA_VERSION}"
                )
            for number in range(version + 1, SCHEMA_VERSION + 1):
                script = MIGRATIONS[number - 1]
                try:
                    await self._db.executescript(
                        f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;"
                    )
                except BaseException:
                    if self._db.in_transaction:
                        await self._db.rollback()
                    raise

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

    # ---- memories ----------------------------------------------------------------------

    async def add_memory(
        self, kind: str, text: str, importance: float = 0.5, source: str = "",
        origin: str = OPERATOR,
    ) -> Added:
        """Store a memory. A fact or lesson whose normalised text equals a live one of the
        same kind and origin, or a lesson that `near_duplicates` a live lesson of its
        origin among its BM25 candidates, merges into it: importance max(old, new) + a
        small bump, uses + 1, updated_at now, and the more specific text kept."""
        _check_kind(kind)
        text = _check_text(text, "memory")
        importance = _check_importance(importance)
        origin = _check_origin(origin)
        norm = normalise(text)
        now = self._clock()
        async with self._transaction() as db:
            existing = await self._duplicate_of(db, kind, text, norm, origin)
            if existing is not None:
                kept = _better_text(existing.text, text)
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
        mine = _signature(text)
        for candidate in rows:
            if not near_duplicates(text, candidate["text"]):
                continue
            similarity = jaccard(mine, _signature(candidate["text"]))
            if best is None or similarity > best[0]:
                best = (similarity, _memory(candidate))
        return best[1] if best else None

    async def import_memories(self, memories: Iterable[NewMemory]) -> int:
        """Insert many memories in one transaction, without duplicate merging (for imports
        and benchmarks). All or nothing; returns how many were stored."""
        now = self._clock()
        rows = []
        for m in memories:
            _check_kind(m.kind)
            text = _check_text(m.text, "memory")
            rows.append(
                (m.kind, text, normalise(text), _check_importance(m.importance), m.source,
                 now, now, _check_origin(m.origin))
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
            _check_kind(k)
        if origin:
            _check_origin(origin)
        if limit <= 0:
            return []
        limit = min(limit, MAX_RECALL)
        async with self._write:  # never read another coroutine's uncommitted transaction
            return await self._recall(query, limit, kinds, origin, touch)

    async def _recall(
        self, query: str, limit: int, kinds: Sequence[str], origin: str, touch: bool
    ) -> list[Recalled]:
        rows = await self._candidates(self._db, query, kinds, max(CANDIDATES, 4 * limit),
                                      origin)
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
        self, db: aiosqlite.Connection, text: str, kinds: Sequence[str], count: int,
        origin: str = "",
    ) -> list[sqlite3.Row]:
        """The `count` best live memories by BM25 from the two bounded pools (module doc),
        each row with its `rank` (negated BM25: lower is better); with `origin`, the
        pools hold only memories of that origin (so another origin's many matches cannot
        crowd them out)."""
        terms = query_terms(text)
        if not terms:
            return []
        restrict = ""
        if kinds:
            restrict = " AND kind : (" + " OR ".join(_quote(k) for k in dict.fromkeys(kinds)) + ")"
        if origin:
            pool = (
                "SELECT * FROM (SELECT memories_fts.rowid AS id, memories_fts.rank AS r"
                " FROM memories_fts JOIN memories AS o ON o.id = memories_fts.rowid"
                " WHERE memories_fts MATCH ? AND o.origin = ?"
                " ORDER BY memories_fts.rowid DESC LIMIT ?)"
            )
            scope: list[Any] = [origin, self.scan_limit]
        else:
            pool = (
                "SELECT * FROM (SELECT rowid AS id, rank AS r FROM memories_fts"
                " WHERE memories_fts MATCH ? ORDER BY rowid DESC LIMIT ?)"
            )
            scope = [self.scan_limit]
        every = f"text : ({match_expression(terms, 'AND')}){restrict}"
        args: list[Any] = [every, *scope]
        pools = pool
        if len(terms) > 1:
            pools += " UNION ALL " + pool
            args += [f"text : ({match_expression(terms, 'OR')}){restrict}", *scope]
        return list(
            await db.execute_fetchall(
                f"SELECT {_MEMORY_COLUMNS_M}, top.rank AS rank FROM"
                f" (SELECT id, min(r) AS rank FROM ({pools}) GROUP BY id ORDER BY rank LIMIT ?)"
                " AS top JOIN memories AS m ON m.id = top.id",
                (*args, count),
            )
        )

    async def check_index(self) -> None:
        """Raise sqlite3.DatabaseError if the FTS index disagrees with the live memories."""
        async with self._write:
            await self._db.execute(
                "INSERT INTO memories_fts (memories_fts, rank) VALUES ('integrity-check', 1)"
            )

    # ---- todos -------------------------------------------------------------------------

    async def add_todo(self, text: str, priority: int = 0) -> Todo:
        text = _check_text(text, "todo")
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
            _check_status(status)
        if text is not None:
            text = _check_text(text, "todo")
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

    # ---- conversation log --------------------------------------------------------------

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
