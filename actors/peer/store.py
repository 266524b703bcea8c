"""The peer actor's SQLite file: the directory of peers, the outbox of durable commands,
the ids of commands handled, and delegated tasks both ways.

Everything the federation must not lose lives here, so either side can restart at any
moment: a command stays in the outbox until the peer's JetStream INBOX acknowledged it,
a handled command's id is kept so a redelivery is recognised, and a task's state is
written before the message announcing it is queued.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiosqlite

SCHEMA = """
CREATE TABLE IF NOT EXISTS peers (
    name TEXT PRIMARY KEY,
    public_key BLOB NOT NULL,
    pinned_by TEXT NOT NULL,
    capabilities TEXT NOT NULL DEFAULT '[]',
    first_seen REAL NOT NULL,
    last_seen REAL NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS outbox (
    id BLOB PRIMARY KEY,
    peer TEXT NOT NULL,
    op TEXT NOT NULL,
    typ TEXT NOT NULL,
    payload BLOB NOT NULL,
    corr BLOB,
    created REAL NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    last_error TEXT NOT NULL DEFAULT '',
    landed REAL
);
CREATE INDEX IF NOT EXISTS outbox_pending ON outbox (landed, created);
CREATE INDEX IF NOT EXISTS outbox_peer ON outbox (peer, landed, created);
CREATE TABLE IF NOT EXISTS inbound (
    id BLOB PRIMARY KEY,
    peer TEXT NOT NULL,
    op TEXT NOT NULL,
    received REAL NOT NULL,
    state TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS tasks (
    task_id TEXT NOT NULL,
    direction TEXT NOT NULL,
    peer TEXT NOT NULL,
    title TEXT NOT NULL,
    description TEXT NOT NULL,
    deliverables TEXT NOT NULL DEFAULT '',
    deadline REAL NOT NULL DEFAULT 0,
    capabilities TEXT NOT NULL DEFAULT '[]',
    state TEXT NOT NULL,
    note TEXT NOT NULL DEFAULT '',
    branch TEXT NOT NULL DEFAULT '',
    goal_id TEXT NOT NULL DEFAULT '',
    created REAL NOT NULL,
    updated REAL NOT NULL,
    price INTEGER NOT NULL DEFAULT 0,
    hold BLOB NOT NULL DEFAULT x'',
    money TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (task_id, direction, peer)
);
"""
TASK_COLUMNS = ("task_id, direction, peer, title, description, deliverables, deadline, "
                "capabilities, state, note, branch, goal_id, created, updated")
# Paid delegation added these to the tasks table.
MONEY_COLUMNS = {"price": "INTEGER NOT NULL DEFAULT 0", "hold": "BLOB NOT NULL DEFAULT x''",
                 "money": "TEXT NOT NULL DEFAULT ''"}
# Before tasks were keyed by peer too, another member could take a task id first (ids
# are public in events) and leave the real delegator's offer looking like a repeat.
MIGRATE_TASKS = """
ALTER TABLE tasks RENAME TO tasks_by_id;
{create}
INSERT INTO tasks ({columns}) SELECT {columns} FROM tasks_by_id;
DROP TABLE tasks_by_id;
"""

# Landed outbox rows and handled ids are kept this long: long past JetStream's duplicate
# window and any redelivery, so a late duplicate is still recognised.
KEEP_S = 7 * 24 * 3600.0
# A peer that takes nothing (its INBOX full or gone, on purpose or not) must not grow the
# outbox without end, nor make every retry round read all it is owed: each round reads
# at most the first HEAD_PER_PEER of a peer's rows (a round stops at a peer's first
# failure), and past UNDELIVERED_MAX a peer's oldest undelivered rows are dropped.
HEAD_PER_PEER = 64
# What is kept of capabilities a member names (its heartbeat, an offer): the peers list
# answers in one message, so a member's words in it stay small whatever it sent.
CAPABILITIES_KEPT = 32
CAPABILITY_CHARS = 64
UNDELIVERED_MAX = 10_000


@dataclass(frozen=True)
class PeerRow:
    name: str
    public_key: bytes
    pinned_by: str
    capabilities: list[str]
    first_seen: float
    last_seen: float


@dataclass(frozen=True)
class OutboxRow:
    id: bytes
    peer: str
    op: str
    typ: str
    payload: bytes  # msgpack of the kind's payload map, encrypted only when sent
    corr: bytes | None
    created: float
    attempts: int
    last_error: str
    landed: float | None


@dataclass(frozen=True)
class TaskRow:
    task_id: str
    direction: str
    peer: str
    title: str
    description: str
    deliverables: str
    deadline: float
    capabilities: list[str]
    state: str
    note: str
    branch: str
    goal_id: str
    created: float
    updated: float
    price: int = 0  # escrowed for the delegate (0: unpaid)
    hold: bytes = b""  # the escrow's entry id on the delegator's chain
    money: str = ""  # the delegator's record of it: held | posted | voided


class PeerStore:
    def __init__(self, db: aiosqlite.Connection) -> None:
        self._db = db
        self._last_seen: dict[str, float] = {}  # read on every check: kept in memory too

    @classmethod
    async def open(cls, path: Path) -> PeerStore:
        path.parent.mkdir(parents=True, exist_ok=True)
        db = await aiosqlite.connect(path, isolation_level=None)
        try:
            await db.execute("PRAGMA journal_mode = WAL")
            await db.execute("PRAGMA synchronous = FULL")
            await db.execute("PRAGMA busy_timeout = 5000")
            await db.executescript(SCHEMA)
            await _migrate(db)
        except BaseException:
            await db.close()
            raise
        db.row_factory = aiosqlite.Row
        store = cls(db)
        await store.prune()
        store._last_seen = {p.name: p.last_seen for p in await store.peers()}
        return store

    async def close(self) -> None:
        await self._db.close()

    async def _one(self, sql: str, args: Sequence[Any] = ()) -> aiosqlite.Row | None:
        return await (await self._db.execute(sql, args)).fetchone()

    async def _all(self, sql: str, args: Sequence[Any] = ()) -> list[aiosqlite.Row]:
        return list(await (await self._db.execute(sql, args)).fetchall())

    async def prune(self) -> None:
        horizon = time.time() - KEEP_S
        await self._db.execute("DELETE FROM outbox WHERE landed IS NOT NULL AND landed < ?",
                               (horizon,))
        await self._db.execute("DELETE FROM inbound WHERE received < ?", (horizon,))

    # ---- the directory ----------------------------------------------------------------

    async def peers(self) -> list[PeerRow]:
        return [_peer(r) for r in await self._all("SELECT * FROM peers ORDER BY name")]

    async def peer(self, name: str) -> PeerRow | None:
        row = await self._one("SELECT * FROM peers WHERE name = ?", (name,))
        return _peer(row) if row else None

    async def pin(self, name: str, key: bytes, pinned_by: str) -> None:
        """Bind `name` to `key` (a config pin replaces an older first-sight pin)."""
        await self._db.execute(
            "INSERT INTO peers (name, public_key, pinned_by, first_seen) VALUES (?, ?, ?, ?)"
            " ON CONFLICT (name) DO UPDATE SET public_key = excluded.public_key,"
            " pinned_by = excluded.pinned_by",
            (name, key, pinned_by, time.time()),
        )

    def last_seen(self, name: str) -> float:
        """When `name`'s last heartbeat came (epoch seconds); 0: never."""
        return self._last_seen.get(name, 0.0)

    async def seen(self, name: str, capabilities: list[str], when: float) -> None:
        self._last_seen[name] = when
        await self._db.execute(
            "UPDATE peers SET last_seen = ?, capabilities = ? WHERE name = ?",
            (when, json.dumps(kept_capabilities(capabilities)), name),
        )

    # ---- the outbox -------------------------------------------------------------------

    async def enqueue(self, row: OutboxRow, *, keep: int = UNDELIVERED_MAX) -> int:
        """Keep `row` to send; returns how many of the peer's oldest undelivered rows
        were dropped to keep at most `keep` of them."""
        await self._db.execute(
            "INSERT OR IGNORE INTO outbox (id, peer, op, typ, payload, corr, created)"
            " VALUES (?, ?, ?, ?, ?, ?, ?)",
            (row.id, row.peer, row.op, row.typ, row.payload, row.corr, row.created),
        )
        count = await self._one("SELECT count(*) AS n FROM outbox"
                                " WHERE peer = ? AND landed IS NULL", (row.peer,))
        over = int(count["n"]) - keep if count else 0
        if over <= 0:
            return 0
        await self._db.execute(
            "DELETE FROM outbox WHERE id IN (SELECT id FROM outbox WHERE peer = ?"
            " AND landed IS NULL ORDER BY created, rowid LIMIT ?)", (row.peer, over))
        return over

    async def pending(self, per_peer: int = HEAD_PER_PEER) -> list[OutboxRow]:
        """Undelivered rows oldest first, at most the first `per_peer` of each peer."""
        rows = await self._all(
            "SELECT * FROM (SELECT *, row_number() OVER (PARTITION BY peer"
            " ORDER BY created, rowid) AS n FROM outbox WHERE landed IS NULL)"
            " WHERE n <= ? ORDER BY created", (per_peer,))
        return [_outbox(r) for r in rows]

    async def outbox_row(self, msg_id: bytes) -> OutboxRow | None:
        row = await self._one("SELECT * FROM outbox WHERE id = ?", (msg_id,))
        return _outbox(row) if row else None

    async def landed(self, msg_id: bytes) -> None:
        await self._db.execute("UPDATE outbox SET landed = ?, attempts = attempts + 1,"
                               " last_error = '' WHERE id = ?", (time.time(), msg_id))

    async def failed_attempt(self, msg_id: bytes, error: str) -> None:
        await self._db.execute("UPDATE outbox SET attempts = attempts + 1, last_error = ?"
                               " WHERE id = ?", (error[:500], msg_id))

    # ---- handled commands -------------------------------------------------------------

    async def inbound_state(self, msg_id: bytes) -> str | None:
        row = await self._one("SELECT state FROM inbound WHERE id = ?", (msg_id,))
        return None if row is None else str(row["state"])

    async def set_inbound(self, msg_id: bytes, peer: str, op: str, state: str) -> None:
        await self._db.execute(
            "INSERT INTO inbound (id, peer, op, received, state) VALUES (?, ?, ?, ?, ?)"
            " ON CONFLICT (id) DO UPDATE SET state = excluded.state",
            (msg_id, peer, op, time.time(), state),
        )

    # ---- tasks ------------------------------------------------------------------------

    async def save_task(self, task: TaskRow) -> None:
        await self._db.execute(
            f"INSERT INTO tasks ({TASK_COLUMNS}, price, hold, money)"
            " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (task_id, direction, peer) DO UPDATE SET state = excluded.state,"
            " note = excluded.note, branch = excluded.branch, goal_id = excluded.goal_id,"
            " updated = excluded.updated, money = excluded.money",
            (task.task_id, task.direction, task.peer, task.title, task.description,
             task.deliverables, task.deadline, json.dumps(task.capabilities), task.state,
             task.note, task.branch, task.goal_id, task.created, task.updated, task.price,
             task.hold, task.money),
        )

    async def task(self, task_id: str, direction: str, peer: str) -> TaskRow | None:
        """The task `task_id` with `peer`: ids are unique only per peer."""
        row = await self._one(
            "SELECT * FROM tasks WHERE task_id = ? AND direction = ? AND peer = ?",
            (task_id, direction, peer))
        return _task(row) if row else None

    async def task_by_goal(self, goal_id: str) -> TaskRow | None:
        row = await self._one("SELECT * FROM tasks WHERE goal_id = ? AND direction = 'in'",
                              (goal_id,))
        return _task(row) if row else None

    async def tasks(self, states: Sequence[str] = (), *, newest: int = 0) -> list[TaskRow]:
        """Tasks oldest first: those in `states` (any state if none), with `newest` only the
        last that many."""
        where, args = "", list(states)
        if states:
            where = f"WHERE state IN ({', '.join('?' * len(states))})"
        if newest:
            rows = await self._all(
                f"SELECT * FROM (SELECT rowid AS r, * FROM tasks {where}"
                " ORDER BY created DESC, r DESC LIMIT ?) ORDER BY created, r", [*args, newest])
        else:
            rows = await self._all(f"SELECT * FROM tasks {where} ORDER BY created", args)
        return [_task(r) for r in rows]

    async def forget_refused(self, peer: str, keep: int) -> None:
        """Keep only the newest `keep` of the offers from `peer` refused when they came
        (nothing was done for them, no money held)."""
        await self._db.execute(
            "DELETE FROM tasks WHERE direction = 'in' AND peer = ? AND state = 'rejected'"
            " AND goal_id = '' AND money = '' AND rowid NOT IN (SELECT rowid FROM tasks"
            " WHERE direction = 'in' AND peer = ? AND state = 'rejected' AND goal_id = ''"
            " AND money = '' ORDER BY created DESC, rowid DESC LIMIT ?)", (peer, peer, keep))


def _peer(row: aiosqlite.Row) -> PeerRow:
    # Clipped on reading too: a row an older entityd kept whole stays answerable.
    return PeerRow(row["name"], bytes(row["public_key"]), row["pinned_by"],
                   kept_capabilities(json.loads(row["capabilities"])), row["first_seen"],
                   row["last_seen"])


def kept_capabilities(named: list[str]) -> list[str]:
    """The first CAPABILITIES_KEPT of the capabilities a member named, each cut to
    CAPABILITY_CHARS characters."""
    return [str(c)[:CAPABILITY_CHARS] for c in named[:CAPABILITIES_KEPT]]


def _outbox(row: aiosqlite.Row) -> OutboxRow:
    corr = row["corr"]
    return OutboxRow(bytes(row["id"]), row["peer"], row["op"], row["typ"],
                     bytes(row["payload"]), bytes(corr) if corr is not None else None,
                     row["created"], row["attempts"], row["last_error"], row["landed"])


async def _migrate(db: aiosqlite.Connection) -> None:
    keyed = await _columns(db)
    if not keyed.get("peer"):
        start = SCHEMA.index("CREATE TABLE IF NOT EXISTS tasks")
        create = SCHEMA[start:SCHEMA.index(");", start) + 2]
        await db.executescript("BEGIN;" + MIGRATE_TASKS.format(create=create,
                                                               columns=TASK_COLUMNS)
                               + "COMMIT;")
        keyed = await _columns(db)
    for column, declared in MONEY_COLUMNS.items():
        if column not in keyed:
            await db.execute(f"ALTER TABLE tasks ADD COLUMN {column} {declared}")


async def _columns(db: aiosqlite.Connection) -> dict[str, int]:
    """The tasks table's columns: name -> position in its primary key (0: not in it)."""
    async with db.execute("PRAGMA table_info(tasks)") as cursor:
        return {row[1]: row[5] for row in await cursor.fetchall()}


def _task(row: aiosqlite.Row) -> TaskRow:
    return TaskRow(row["task_id"], row["direction"], row["peer"], row["title"],
                   row["description"], row["deliverables"], row["deadline"],
                   json.loads(row["capabilities"]), row["state"], row["note"], row["branch"],
                   row["goal_id"], row["created"], row["updated"], row["price"],
                   bytes(row["hold"]), row["money"])
