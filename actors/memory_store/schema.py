"""The memory file's layout: its tables, FTS5 index and triggers, and the migrations that
bring a file of any earlier version up to this one."""

from __future__ import annotations

from pathlib import Path

import aiosqlite

from .records import SchemaTooNew

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

# Memories get their origin (see records.py). Rows stored before origins existed are
# the operator's, except a peer's reports, which always named the peer as their source.
_SCHEMA_V2 = """
ALTER TABLE memories ADD COLUMN origin TEXT NOT NULL DEFAULT 'operator'
    CHECK (length(origin) > 0);
UPDATE memories SET origin = source WHERE source GLOB 'peer:?*';
CREATE INDEX memories_by_origin ON memories (origin, id);
DROP INDEX memories_by_norm;
CREATE INDEX memories_by_norm ON memories (kind, norm, origin);
"""

# Token use and estimated cost, one row per LLM call (usage.py); cost_micros is NULL when
# the model had no known price. Rows older than the retention are pruned as rows are added.
_SCHEMA_V3 = """
CREATE TABLE llm_usage (
    id INTEGER PRIMARY KEY,
    ts INTEGER NOT NULL,
    task_id TEXT NOT NULL,
    payer TEXT NOT NULL DEFAULT '',
    provider TEXT NOT NULL CHECK (length(provider) > 0),
    model TEXT NOT NULL CHECK (length(model) > 0),
    prompt_tokens INTEGER NOT NULL CHECK (prompt_tokens >= 0),
    completion_tokens INTEGER NOT NULL CHECK (completion_tokens >= 0),
    cost_micros INTEGER CHECK (cost_micros IS NULL OR cost_micros >= 0)
);
CREATE INDEX llm_usage_by_ts ON llm_usage (ts);
"""

# Migration N (1-based) brings a file from user_version N-1 to N. Append, never edit.
MIGRATIONS: tuple[str, ...] = (_SCHEMA_V1, _SCHEMA_V2, _SCHEMA_V3)
SCHEMA_VERSION = len(MIGRATIONS)


async def schema_version(db: aiosqlite.Connection) -> int:
    row = await (await db.execute("PRAGMA user_version")).fetchone()
    return int(row[0]) if row else 0


async def migrate(db: aiosqlite.Connection, path: Path) -> None:
    """Run the migrations `db` (the file at `path`) lacks, each in its own transaction."""
    version = await schema_version(db)
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"{path} has schema version {version}; this entityd knows up to "
            f"{SCHEMA_VERSION}"
        )
    for number in range(version + 1, SCHEMA_VERSION + 1):
        script = MIGRATIONS[number - 1]
        try:
            await db.executescript(
                f"BEGIN IMMEDIATE;\n{script}\nPRAGMA user_version = {number};\nCOMMIT;"
            )
        except BaseException:
            if db.in_transaction:
                await db.rollback()
            raise
