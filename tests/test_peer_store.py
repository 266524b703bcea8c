"""The peer actor's SQLite file (actors/peer/store.py) on a real file: the directory, the
outbox, handled commands and tasks, and that all of it survives closing and reopening."""

from __future__ import annotations

import json
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from types import SimpleNamespace

import aiosqlite
import pytest

from actors.peer import store as store_mod
from actors.peer.store import KEEP_S, SCHEMA, OutboxRow, PeerStore, TaskRow

KEY_1 = bytes(range(32))
KEY_2 = bytes(range(32, 64))


@pytest.fixture
def db_path(tmp_path: Path) -> Path:
    return tmp_path / "data" / "peers.sqlite3"  # the parent does not exist yet


@pytest.fixture
async def store(db_path: Path) -> AsyncIterator[PeerStore]:
    opened = await PeerStore.open(db_path)
    try:
        yield opened
    finally:
        await opened.close()


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> Callable[[float], None]:
    """Set the store's wall clock (only the store module's view of `time`)."""
    now = {"t": time.time()}
    monkeypatch.setattr(store_mod, "time", SimpleNamespace(time=lambda: now["t"]))

    def set_to(value: float) -> None:
        now["t"] = value

    return set_to


def outbox_row(msg_id: bytes | None = None, *, peer: str = "entity-b", created: float = 1.0,
               corr: bytes | None = None) -> OutboxRow:
    return OutboxRow(msg_id or os.urandom(16), peer, "report", "report", b"\x81\xa4text\xa2hi",
                     corr, created, attempts=0, last_error="", landed=None)


def task_row(task_id: str = "t1", *, direction: str = "out", state: str = "offered",
             created: float = 10.0, **changes: object) -> TaskRow:
    fields: dict[str, object] = dict(
        task_id=task_id, direction=direction, peer="entity-b", title="Fix the parser",
        description="It crashes on empty input.", deliverables="a branch", deadline=99.5,
        capabilities=["code"], state=state, note="", branch="", goal_id="",
        created=created, updated=created,
    )
    fields.update(changes)
    return TaskRow(**fields)  # type: ignore[arg-type]


# -- the directory ------------------------------------------------------------------------------


async def test_pin_adds_a_peer_with_no_heartbeat_yet(store: PeerStore) -> None:
    before = time.time()
    await store.pin("entity-b", KEY_1, "first-sight")
    peer = await store.peer("entity-b")
    assert peer is not None
    assert (peer.name, peer.public_key, peer.pinned_by) == ("entity-b", KEY_1, "first-sight")
    assert peer.capabilities == [] and peer.last_seen == 0
    assert before <= peer.first_seen <= time.time()
    assert await store.peer("entity-c") is None


async def test_config_pin_replaces_a_first_sight_pin_and_keeps_first_seen(
    store: PeerStore, clock: Callable[[float], None]
) -> None:
    clock(1000.0)
    await store.pin("entity-b", KEY_1, "first-sight")
    clock(2000.0)
    await store.pin("entity-b", KEY_2, "config")
    peer = await store.peer("entity-b")
    assert peer is not None
    assert (peer.public_key, peer.pinned_by) == (KEY_2, "config")
    assert peer.first_seen == 1000.0
    assert [p.name for p in await store.peers()] == ["entity-b"]


async def test_peers_are_listed_by_name(store: PeerStore) -> None:
    for name in ("entity-c", "entity-a", "entity-b"):
        await store.pin(name, os.urandom(32), "first-sight")
    assert [p.name for p in await store.peers()] == ["entity-a", "entity-b", "entity-c"]


async def test_seen_updates_last_seen_and_capabilities(store: PeerStore) -> None:
    await store.pin("entity-b", KEY_1, "first-sight")
    await store.seen("entity-b", ["chat", "code"], 1234.5)
    peer = await store.peer("entity-b")
    assert peer is not None
    assert (peer.last_seen, peer.capabilities) == (1234.5, ["chat", "code"])
    await store.seen("entity-b", ["chat"], 1240.0)
    peer = await store.peer("entity-b")
    assert peer is not None
    assert (peer.last_seen, peer.capabilities) == (1240.0, ["chat"])
    assert peer.public_key == KEY_1 and peer.pinned_by == "first-sight"


async def test_a_members_capabilities_are_kept_clipped_even_from_an_older_row(
        db_path: Path) -> None:
    """A heartbeat's capabilities are a member's words: kept to the first 32, each of 64
    characters; a row an older entityd kept whole (1 MiB) reads back clipped too."""
    store = await PeerStore.open(db_path)
    try:
        await store.pin("entity-b", KEY_1, "first-sight")
        await store.pin("entity-c", KEY_2, "first-sight")
        await store.seen("entity-b", ["x" * 1000] * 1000, 5.0)
        peer = await store.peer("entity-b")
        assert peer is not None and peer.capabilities == ["x" * 64] * 32
    finally:
        await store.close()
    async with aiosqlite.connect(db_path) as db:  # as an older entityd left it
        await db.execute("UPDATE peers SET capabilities = ? WHERE name = 'entity-c'",
                         (json.dumps(["c" * 1000] * 1000),))
        await db.commit()
    store = await PeerStore.open(db_path)
    try:
        listed = {p.name: p.capabilities for p in await store.peers()}
        assert listed["entity-c"] == ["c" * 64] * 32
    finally:
        await store.close()


async def test_seen_of_an_unpinned_peer_adds_nothing(store: PeerStore) -> None:
    await store.seen("entity-x", ["chat"], 5.0)
    assert await store.peer("entity-x") is None
    assert await store.peers() == []


# -- the outbox ---------------------------------------------------------------------------------


async def test_enqueue_is_idempotent_by_id(store: PeerStore) -> None:
    row = outbox_row(corr=os.urandom(16))
    await store.enqueue(row)
    await store.enqueue(row)
    # Even a different row under the same id does not replace the first.
    await store.enqueue(outbox_row(row.id, peer="entity-z", created=99.0))
    assert await store.pending() == [row]
    assert await store.outbox_row(row.id) == row


async def test_pending_is_oldest_first_and_excludes_landed_rows(store: PeerStore) -> None:
    late, early, middle = outbox_row(created=30.0), outbox_row(created=10.0), outbox_row(
        created=20.0)
    for row in (late, early, middle):
        await store.enqueue(row)
    assert [r.id for r in await store.pending()] == [early.id, middle.id, late.id]
    await store.landed(middle.id)
    assert [r.id for r in await store.pending()] == [early.id, late.id]
    landed = await store.outbox_row(middle.id)
    assert landed is not None and landed.landed is not None
    assert landed.attempts == 1


async def test_failed_attempts_are_counted_until_landed(store: PeerStore) -> None:
    row = outbox_row()
    await store.enqueue(row)
    await store.failed_attempt(row.id, "no responders")
    await store.failed_attempt(row.id, "timeout " + "x" * 1000)
    (pending,) = await store.pending()
    assert pending.attempts == 2
    assert pending.last_error.startswith("timeout ") and len(pending.last_error) == 500
    await store.landed(row.id)
    done = await store.outbox_row(row.id)
    assert done is not None
    assert done.attempts == 3 and done.last_error == ""
    assert await store.pending() == []


async def test_outbox_row_of_an_unknown_id(store: PeerStore) -> None:
    assert await store.outbox_row(os.urandom(16)) is None


# -- handled commands ---------------------------------------------------------------------------


async def test_inbound_state_moves_from_received_to_done(store: PeerStore) -> None:
    msg_id = os.urandom(16)
    assert await store.inbound_state(msg_id) is None
    await store.set_inbound(msg_id, "entity-b", "restart", "received")
    assert await store.inbound_state(msg_id) == "received"
    await store.set_inbound(msg_id, "entity-b", "restart", "done")
    assert await store.inbound_state(msg_id) == "done"
    assert await store.inbound_state(os.urandom(16)) is None


# -- tasks --------------------------------------------------------------------------------------


async def test_save_task_then_read_it_back(store: PeerStore) -> None:
    task = task_row()
    await store.save_task(task)
    assert await store.task("t1", "out", "entity-b") == task
    assert await store.task("t1", "in", "entity-b") is None
    assert await store.task("t2", "out", "entity-b") is None
    assert await store.task("t1", "out", "entity-c") is None


async def test_the_same_task_id_from_two_peers_is_two_tasks(store: PeerStore) -> None:
    """Task ids are public in events: another member offering one first must not take
    the real delegator's task."""
    squatted = task_row(direction="in", peer="entity-c", state="rejected", note="squat")
    real = task_row(direction="in", peer="entity-a", state="accepted",
                    goal_id="dlg-entity-a-t1")
    await store.save_task(squatted)
    await store.save_task(real)
    assert await store.task("t1", "in", "entity-c") == squatted
    assert await store.task("t1", "in", "entity-a") == real
    assert await store.task_by_goal("dlg-entity-a-t1") == real


# The columns paid delegation added to the tasks table.
UNPAID = ("    price INTEGER NOT NULL DEFAULT 0,\n    hold BLOB NOT NULL DEFAULT x'',\n"
          "    money TEXT NOT NULL DEFAULT '',\n")


async def test_a_store_keyed_by_id_alone_is_migrated(tmp_path: Path) -> None:
    path = tmp_path / "peers.sqlite3"
    old = SCHEMA.replace("PRIMARY KEY (task_id, direction, peer)",
                         "PRIMARY KEY (task_id, direction)").replace(UNPAID, "")
    async with aiosqlite.connect(path) as db:
        await db.executescript(old)
        await db.execute(
            "INSERT INTO tasks VALUES ('t1', 'in', 'entity-a', 'T', 'D', '', 0, '[]', "
            "'working', '', '', 'dlg-t1', 1.0, 2.0)")
        await db.commit()
    store = await PeerStore.open(path)
    try:
        kept = await store.task("t1", "in", "entity-a")
        assert kept is not None and kept.goal_id == "dlg-t1"
        await store.save_task(task_row(direction="in", peer="entity-c"))
        assert len(await store.tasks()) == 2
    finally:
        await store.close()


async def test_a_store_from_before_paid_tasks_gains_their_columns(tmp_path: Path) -> None:
    path = tmp_path / "peers.sqlite3"
    async with aiosqlite.connect(path) as db:
        await db.executescript(SCHEMA.replace(UNPAID, ""))
        await db.execute(
            "INSERT INTO tasks VALUES ('t1', 'out', 'entity-b', 'T', 'D', '', 0, '[]', "
            "'working', '', '', '', 1.0, 2.0)")
        await db.commit()
    store = await PeerStore.open(path)
    try:
        kept = await store.task("t1", "out", "entity-b")
        assert kept is not None and (kept.state, kept.price, kept.hold, kept.money) == (
            "working", 0, b"", "")
        paid = task_row(task_id="t2", price=40, hold=b"h" * 16, money="held")
        await store.save_task(paid)
        assert await store.task("t2", "out", paid.peer) == paid
    finally:
        await store.close()


async def test_same_task_id_both_ways_are_two_tasks(store: PeerStore) -> None:
    await store.save_task(task_row(direction="out", created=1.0))
    await store.save_task(task_row(direction="in", state="accepted", created=2.0))
    out, inbound = await store.tasks()
    assert (out.direction, out.state) == ("out", "offered")
    assert (inbound.direction, inbound.state) == ("in", "accepted")


async def test_saving_again_updates_state_note_branch_goal_and_updated_only(
    store: PeerStore,
) -> None:
    await store.save_task(task_row())
    await store.save_task(task_row(state="completed", note="all green", branch="peer/t1",
                                   goal_id="g-7", updated=50.0, title="changed title",
                                   description="changed", deadline=1.0, capabilities=["x"],
                                   created=40.0))
    task = await store.task("t1", "out", "entity-b")
    assert task is not None
    assert (task.state, task.note, task.branch, task.goal_id, task.updated) == (
        "completed", "all green", "peer/t1", "g-7", 50.0)
    # What was offered does not change.
    assert (task.title, task.description, task.deadline, task.capabilities, task.created) == (
        "Fix the parser", "It crashes on empty input.", 99.5, ["code"], 10.0)


async def test_tasks_lists_by_creation_and_filters_by_state(store: PeerStore) -> None:
    await store.save_task(task_row("t3", state="working", created=3.0))
    await store.save_task(task_row("t1", state="offered", created=1.0))
    await store.save_task(task_row("t2", state="completed", created=2.0))
    await store.save_task(task_row("t4", state="accepted", created=4.0))
    assert [t.task_id for t in await store.tasks()] == ["t1", "t2", "t3", "t4"]
    assert [t.task_id for t in await store.tasks(("offered", "accepted", "working"))] == [
        "t1", "t3", "t4"]
    assert [t.task_id for t in await store.tasks(["completed"])] == ["t2"]
    assert await store.tasks(("failed",)) == []


# -- durability ---------------------------------------------------------------------------------


async def test_everything_survives_close_and_reopen(db_path: Path) -> None:
    first = await PeerStore.open(db_path)
    await first.pin("entity-b", KEY_1, "config")
    await first.seen("entity-b", ["code"], time.time())
    pending, landed = outbox_row(created=1.0), outbox_row(created=2.0)
    await first.enqueue(pending)
    await first.enqueue(landed)
    await first.failed_attempt(pending.id, "down")
    await first.landed(landed.id)
    handled = os.urandom(16)
    await first.set_inbound(handled, "entity-b", "wake", "done")
    await first.save_task(task_row(state="working", branch="peer/t1"))
    peers, tasks = await first.peers(), await first.tasks()
    await first.close()

    again = await PeerStore.open(db_path)
    try:
        assert await again.peers() == peers
        (still_pending,) = await again.pending()
        assert still_pending.id == pending.id
        assert (still_pending.attempts, still_pending.last_error) == (1, "down")
        assert (await again.outbox_row(landed.id)) is not None  # recent: not pruned
        assert await again.inbound_state(handled) == "done"
        assert await again.tasks() == tasks
    finally:
        await again.close()


async def test_prune_drops_only_old_landed_rows_and_old_handled_ids(
    store: PeerStore, clock: Callable[[float], None]
) -> None:
    now = 10_000_000.0
    old = now - KEEP_S - 60
    recent = now - KEEP_S + 60
    rows = {name: outbox_row(created=1.0) for name in ("old_landed", "recent_landed",
                                                       "old_pending")}
    for row in rows.values():
        await store.enqueue(row)
    clock(old)
    await store.landed(rows["old_landed"].id)
    await store.set_inbound(b"o" * 16, "entity-b", "wake", "done")
    clock(recent)
    await store.landed(rows["recent_landed"].id)
    await store.set_inbound(b"r" * 16, "entity-b", "wake", "done")
    clock(now)
    await store.prune()
    assert await store.outbox_row(rows["old_landed"].id) is None
    assert await store.outbox_row(rows["recent_landed"].id) is not None
    # Never landed, however old: it is still owed to the peer.
    assert [r.id for r in await store.pending()] == [rows["old_pending"].id]
    assert await store.inbound_state(b"o" * 16) is None
    assert await store.inbound_state(b"r" * 16) == "done"


async def test_open_prunes(db_path: Path, clock: Callable[[float], None]) -> None:
    clock(1_000_000.0)
    first = await PeerStore.open(db_path)
    row = outbox_row()
    await first.enqueue(row)
    await first.landed(row.id)
    await first.close()
    clock(1_000_000.0 + KEEP_S + 1)
    again = await PeerStore.open(db_path)
    try:
        assert await again.outbox_row(row.id) is None
    finally:
        await again.close()


async def test_a_members_refused_offers_are_kept_only_newest_first(store: PeerStore) -> None:
    """A member's offers refused when they came (no work, no money) are kept to the newest
    `keep`: a member sending offers without end cannot grow the store."""
    for n in range(8):
        await store.save_task(task_row(f"r{n}", direction="in", state="rejected",
                                       created=float(n)))
    kept = [task_row("work", direction="in", state="rejected", created=0.5, goal_id="dlg-1"),
            task_row("paid", direction="in", state="rejected", created=0.6, money="voided"),
            task_row("other", direction="in", state="rejected", created=0.7, peer="entity-c"),
            task_row("mine", direction="out", state="rejected", created=0.8)]
    for row in kept:
        await store.save_task(row)
    await store.forget_refused("entity-b", 3)
    ids = [t.task_id for t in await store.tasks()]
    assert ids == ["work", "paid", "other", "mine", "r5", "r6", "r7"]


async def test_the_newest_tasks_come_oldest_first(store: PeerStore) -> None:
    for n in (3, 1, 2, 5, 4):
        await store.save_task(task_row(f"t{n}", created=float(n)))
    assert [t.task_id for t in await store.tasks(newest=3)] == ["t3", "t4", "t5"]
    assert [t.task_id for t in await store.tasks(("offered",), newest=2)] == ["t4", "t5"]
    assert len(await store.tasks()) == 5


async def test_a_peer_that_takes_nothing_neither_grows_the_outbox_nor_each_round(
        store: PeerStore) -> None:
    """Each retry round reads only the head of each peer's queue, and past its bound a
    peer's oldest undelivered rows go (the newest kept, other peers untouched)."""
    rows = [outbox_row(peer="entity-b", created=float(n)) for n in range(10)]
    other = outbox_row(peer="entity-c", created=3.5)
    dropped = [await store.enqueue(row, keep=6) for row in rows[:5]]
    await store.enqueue(other, keep=6)
    dropped += [await store.enqueue(row, keep=6) for row in rows[5:]]
    assert dropped == [0] * 6 + [1] * 4
    assert [r.id for r in await store.pending(per_peer=3)] == [
        other.id, rows[4].id, rows[5].id, rows[6].id]
    assert [r.id for r in await store.pending()] == [other.id, *(r.id for r in rows[4:])]
